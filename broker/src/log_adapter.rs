//! The commit log as the Raft core's log. The store knows nothing of Raft; this is
//! the only place they meet.
//!
//! [`RaftStore`] adds the one thing the store does not keep: the (index, term) of the
//! snapshot the log starts after, which the core needs as the `prev` of the first
//! entry once old segments are deleted (or a leader's snapshot was installed). Every
//! other call goes straight to the [`CommitLog`] (also through `Deref`).

use std::ops::{Deref, DerefMut};

use raftmq_store::{CommitLog, Entry, LogIndex, StoreError, Term};

use crate::raft::{LogError, RaftLog};

/// The commit log plus the snapshot point it starts after.
#[derive(Debug)]
pub struct RaftStore {
    log: CommitLog,
    /// `(first_index - 1, its term)`; `(0, 0)` for a log never compacted.
    snapshot: (LogIndex, Term),
}

impl RaftStore {
    /// Wraps `log`, which must start right after `snapshot` (the driver reconciles
    /// the log with its snapshots before).
    ///
    /// # Panics
    /// If the log does not start at `snapshot.0 + 1`.
    pub fn new(log: CommitLog, snapshot: (LogIndex, Term)) -> RaftStore {
        assert_eq!(
            CommitLog::first_index(&log),
            snapshot.0.next(),
            "the log starts right after its snapshot"
        );
        RaftStore { log, snapshot }
    }

    /// The snapshot the log starts after.
    pub fn snapshot(&self) -> (LogIndex, Term) {
        self.snapshot
    }

    /// Retention: deletes the segments before `first_kept`, which must be the base of
    /// a segment and whose predecessor `(first_kept - 1, term)` a durable snapshot
    /// covers (as does every segment boundary below it).
    ///
    /// If deleting fails part-way the log starts at some earlier segment base; the
    /// snapshot point follows it (the term of each boundary is read before anything
    /// is deleted), so the core never meets a log start it has no term for.
    pub fn compact(&mut self, first_kept: LogIndex, term: Term) -> Result<usize, StoreError> {
        let first = CommitLog::first_index(&self.log);
        let boundaries: Vec<(LogIndex, Term)> = self
            .log
            .segment_bases_in(first.next(), first_kept)
            .filter_map(|b| Some((b, CommitLog::term_at(&self.log, b.prev())?)))
            .collect();
        let result = self.log.delete_segments_before(first_kept);
        let now_first = CommitLog::first_index(&self.log);
        if now_first == first_kept {
            self.snapshot = (first_kept.prev(), term);
        } else if now_first > first {
            let term = boundaries
                .iter()
                .find(|(b, _)| *b == now_first)
                .map(|(_, t)| *t)
                .expect("the log starts at a segment base it had");
            self.snapshot = (now_first.prev(), term);
        }
        result
    }
}

impl Deref for RaftStore {
    type Target = CommitLog;

    fn deref(&self) -> &CommitLog {
        &self.log
    }
}

impl DerefMut for RaftStore {
    fn deref_mut(&mut self) -> &mut CommitLog {
        &mut self.log
    }
}

impl RaftLog for RaftStore {
    fn first_index(&self) -> LogIndex {
        CommitLog::first_index(&self.log)
    }

    fn last_index(&self) -> LogIndex {
        CommitLog::last_index(&self.log)
    }

    fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.snapshot.0 {
            return Some(self.snapshot.1);
        }
        CommitLog::term_at(&self.log, index)
    }

    fn entries(
        &self,
        from: LogIndex,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, LogError> {
        CommitLog::entries(&self.log, from, max_entries, max_bytes).map_err(read_error)
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), LogError> {
        CommitLog::append(&mut self.log, entries).map_err(|e| LogError::Write(e.to_string()))
    }

    fn truncate_suffix(&mut self, from: LogIndex) -> Result<(), LogError> {
        // Rare (a follower dropping a deposed leader's uncommitted tail): worth a line.
        let last = CommitLog::last_index(&self.log);
        if from <= last {
            tracing::info!(
                from = from.0,
                last_index = last.0,
                "log truncated: entries from this index are replaced by the leader's"
            );
        }
        CommitLog::truncate_suffix(&mut self.log, from).map_err(|e| LogError::Write(e.to_string()))
    }

    fn install_snapshot(&mut self, index: LogIndex, term: Term) -> Result<(), LogError> {
        tracing::info!(
            snapshot_index = index.0,
            snapshot_term = term.0,
            discarded_from = CommitLog::first_index(&self.log).0,
            discarded_to = CommitLog::last_index(&self.log).0,
            "log reset to an installed snapshot"
        );
        if let Err(e) = self.log.reset(index.next()) {
            // The old segments may be partly deleted: the log is neither the old one
            // nor the new one, which no part of the node can run on. Start-up
            // recovery reconciles whatever is on disk with the snapshot files.
            tracing::error!(
                error = %e,
                "cannot reset the log to an installed snapshot; exiting so that the \
                 next start recovers the data directory"
            );
            std::process::exit(1);
        }
        self.snapshot = (index, term);
        Ok(())
    }
}

fn read_error(e: StoreError) -> LogError {
    match e {
        StoreError::OutOfRange { index, .. } => LogError::Unavailable(index.0),
        other => LogError::Read(other.to_string()),
    }
}
