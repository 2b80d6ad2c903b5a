//! The commit log as the Raft core's log: `raftmq_store::CommitLog` implements
//! [`RaftLog`]. The store knows nothing of Raft; this is the only place they meet.

use raftmq_store::{CommitLog, Entry, LogIndex, StoreError, Term};

use crate::raft::{LogError, RaftLog};

impl RaftLog for CommitLog {
    fn first_index(&self) -> LogIndex {
        CommitLog::first_index(self)
    }

    fn last_index(&self) -> LogIndex {
        CommitLog::last_index(self)
    }

    fn term_at(&self, index: LogIndex) -> Option<Term> {
        CommitLog::term_at(self, index)
    }

    fn entries(
        &self,
        from: LogIndex,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, LogError> {
        CommitLog::entries(self, from, max_entries, max_bytes).map_err(read_error)
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), LogError> {
        CommitLog::append(self, entries).map_err(|e| LogError::Write(e.to_string()))
    }

    fn truncate_suffix(&mut self, from: LogIndex) -> Result<(), LogError> {
        // Rare (a follower dropping a deposed leader's uncommitted tail): worth a line.
        let last = CommitLog::last_index(self);
        if from <= last {
            tracing::info!(
                from = from.0,
                last_index = last.0,
                "log truncated: entries from this index are replaced by the leader's"
            );
        }
        CommitLog::truncate_suffix(self, from).map_err(|e| LogError::Write(e.to_string()))
    }
}

fn read_error(e: StoreError) -> LogError {
    match e {
        StoreError::OutOfRange { index, .. } => LogError::Unavailable(index.0),
        other => LogError::Read(other.to_string()),
    }
}
