//! The log storage interface the core writes through, and an in-memory log.
//!
//! The core calls [`RaftLog::append`] and [`RaftLog::truncate_suffix`] while it
//! handles messages and proposals; those writes need not be durable. The driver makes
//! them durable later (`Ready::unsynced`) and reports back with
//! [`super::RawNode::persisted`].
//!
//! Compaction: the log may start after index 1. Everything below
//! [`RaftLog::first_index`] is covered by a state-machine snapshot whose (index, term)
//! is `(first_index - 1, term_at(first_index - 1))`: the log must keep answering
//! `term_at` for that one index. The driver compacts (never past the applied index)
//! through its own log type; the core only ever *installs* a snapshot received from a
//! leader, through [`RaftLog::install_snapshot`].

use super::error::LogError;
use super::types::{Entry, LogIndex, Term};

/// The log as the core sees it. Implemented by [`MemLog`] (tests, benchmarks) and by
/// the broker over `raftmq_store::CommitLog`.
pub trait RaftLog {
    /// The index of the first entry held (1 for a log that was never compacted).
    /// `first_index() - 1` is the index of the snapshot the log starts after.
    fn first_index(&self) -> LogIndex;
    /// The index of the last written entry (maybe not yet durable); `first - 1` when
    /// empty.
    fn last_index(&self) -> LogIndex;
    /// The term of the entry at `index`: at `first_index() - 1` the snapshot's term
    /// (`Term(0)` at index 0 of a log starting at 1), `None` when out of range.
    fn term_at(&self, index: LogIndex) -> Option<Term>;
    /// Up to `max_entries` entries from `from`, stopping before `max_bytes` of bodies
    /// would be exceeded, but at least one entry when `from <= last_index()`.
    fn entries(
        &self,
        from: LogIndex,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, LogError>;
    /// Appends consecutive entries right after `last_index()` (written, not durable).
    /// On `Err` the log is unchanged.
    fn append(&mut self, entries: &[Entry]) -> Result<(), LogError>;
    /// Removes every entry at `from` and after. On `Err` the log is unchanged.
    fn truncate_suffix(&mut self, from: LogIndex) -> Result<(), LogError>;
    /// Discards every entry: the log becomes empty, starting right after the snapshot
    /// `(index, term)` (afterwards `first_index() == index + 1`,
    /// `term_at(index) == Some(term)`). The driver made the snapshot itself durable
    /// before stepping the message; the reset may become durable later, like any
    /// write: on start the driver resets a log that does not hold the newest
    /// snapshot's `(index, term)`. On `Err` the log is unchanged.
    fn install_snapshot(&mut self, index: LogIndex, term: Term) -> Result<(), LogError>;
}

/// An in-memory log: a `Vec` of entries whose bodies share their buffers (`Bytes`),
/// starting after a snapshot point (index 0 until compacted). Used by unit tests and
/// the benchmark.
#[derive(Debug, Clone, Default)]
pub struct MemLog {
    entries: Vec<Entry>,
    /// (index, term) of the snapshot the log starts after.
    snapshot: (LogIndex, Term),
    fail_writes: bool,
}

impl MemLog {
    /// An empty log.
    pub fn new() -> Self {
        MemLog::default()
    }

    /// A log holding `entries`, which must be consecutive from index 1.
    pub fn from_entries(entries: Vec<Entry>) -> Self {
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.index, LogIndex(i as u64 + 1), "entries not consecutive");
        }
        MemLog {
            entries,
            ..MemLog::default()
        }
    }

    /// Drops the entries up to `upto` (which must be held): the log then starts
    /// after the snapshot `(upto, term_at(upto))`.
    pub fn compact(&mut self, upto: LogIndex) {
        let term = self
            .term_at(upto)
            .expect("compact to an index the log holds");
        let drop = (upto.0 - self.snapshot.0 .0) as usize;
        self.entries.drain(..drop);
        self.snapshot = (upto, term);
    }

    /// All entries held (after the snapshot point).
    pub fn all(&self) -> &[Entry] {
        &self.entries
    }

    /// Test hook: make every following write fail (until turned off).
    pub fn set_fail_writes(&mut self, fail: bool) {
        self.fail_writes = fail;
    }

    fn position(&self, index: LogIndex) -> Option<usize> {
        let pos = index.0.checked_sub(self.snapshot.0 .0 + 1)? as usize;
        (pos < self.entries.len()).then_some(pos)
    }
}

impl RaftLog for MemLog {
    fn first_index(&self) -> LogIndex {
        self.snapshot.0.next()
    }

    fn last_index(&self) -> LogIndex {
        LogIndex(self.snapshot.0 .0 + self.entries.len() as u64)
    }

    fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.snapshot.0 {
            return Some(self.snapshot.1);
        }
        self.position(index).map(|p| self.entries[p].term)
    }

    fn entries(
        &self,
        from: LogIndex,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, LogError> {
        let start = self.position(from).ok_or(LogError::Unavailable(from.0))?;
        let mut end = start;
        let mut bytes = 0usize;
        let limit = (start + max_entries.max(1)).min(self.entries.len());
        while end < limit {
            bytes += self.entries[end].body.len();
            if end > start && bytes > max_bytes {
                break;
            }
            end += 1;
        }
        Ok(self.entries[start..end].to_vec())
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), LogError> {
        if self.fail_writes {
            return Err(LogError::Write("injected write failure".into()));
        }
        let mut expected = self.last_index().next();
        for e in entries {
            assert_eq!(e.index, expected, "append leaves a gap or overlaps");
            expected = expected.next();
        }
        self.entries.extend_from_slice(entries);
        Ok(())
    }

    fn truncate_suffix(&mut self, from: LogIndex) -> Result<(), LogError> {
        if self.fail_writes {
            return Err(LogError::Write("injected truncate failure".into()));
        }
        assert!(from > self.snapshot.0, "cannot truncate into the snapshot");
        self.entries
            .truncate((from.0 - self.snapshot.0 .0) as usize - 1);
        Ok(())
    }

    fn install_snapshot(&mut self, index: LogIndex, term: Term) -> Result<(), LogError> {
        if self.fail_writes {
            return Err(LogError::Write("injected install failure".into()));
        }
        self.entries.clear();
        self.snapshot = (index, term);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::EntryKind;
    use bytes::Bytes;

    fn entry(index: u64, term: u64, body: &'static [u8]) -> Entry {
        Entry {
            index: LogIndex(index),
            term: Term(term),
            kind: EntryKind::Messages,
            body: Bytes::from_static(body),
        }
    }

    #[test]
    fn test_memlog_append_read_truncate() {
        let mut log = MemLog::new();
        assert_eq!(log.term_at(LogIndex(0)), Some(Term(0)));
        assert_eq!(log.term_at(LogIndex(1)), None);
        log.append(&[
            entry(1, 1, b"aaaa"),
            entry(2, 1, b"bbbb"),
            entry(3, 2, b"cc"),
        ])
        .unwrap();
        assert_eq!(log.last_index(), LogIndex(3));
        assert_eq!(log.term_at(LogIndex(3)), Some(Term(2)));
        // Bounded by bytes, but never empty.
        assert_eq!(log.entries(LogIndex(1), 10, 5).unwrap().len(), 1);
        assert_eq!(log.entries(LogIndex(1), 10, 8).unwrap().len(), 2);
        assert_eq!(log.entries(LogIndex(2), 1, 100).unwrap().len(), 1);
        assert!(log.entries(LogIndex(4), 1, 100).is_err());
        log.truncate_suffix(LogIndex(2)).unwrap();
        assert_eq!(log.last_index(), LogIndex(1));
    }

    #[test]
    fn test_memlog_compact_and_install_keep_the_snapshot_term() {
        let mut log = MemLog::new();
        log.append(&[entry(1, 1, b"a"), entry(2, 2, b"b"), entry(3, 2, b"c")])
            .unwrap();
        log.compact(LogIndex(2));
        assert_eq!(log.first_index(), LogIndex(3));
        assert_eq!(log.term_at(LogIndex(2)), Some(Term(2)));
        assert_eq!(log.term_at(LogIndex(1)), None);
        assert!(log.entries(LogIndex(2), 10, 100).is_err());
        assert_eq!(log.entries(LogIndex(3), 10, 100).unwrap().len(), 1);
        log.install_snapshot(LogIndex(9), Term(4)).unwrap();
        assert_eq!(log.first_index(), LogIndex(10));
        assert_eq!(log.last_index(), LogIndex(9));
        assert_eq!(log.term_at(LogIndex(9)), Some(Term(4)));
        log.append(&[entry(10, 4, b"d")]).unwrap();
        log.truncate_suffix(LogIndex(10)).unwrap();
        assert_eq!(log.last_index(), LogIndex(9));
    }

    #[test]
    fn test_memlog_failed_write_leaves_log_unchanged() {
        let mut log = MemLog::new();
        log.set_fail_writes(true);
        assert!(log.append(&[entry(1, 1, b"x")]).is_err());
        assert_eq!(log.last_index(), LogIndex(0));
    }
}
