//! A simulated disk: what was written vs what was synced, crashes that keep only the
//! synced state plus any prefix of the later writes (the last one maybe torn), media
//! damage (the recovered log is the valid prefix before the damage), and log
//! compaction behind a durable snapshot.

use raftmq_broker::raft::{Entry, LogError, LogIndex, RaftLog, Term};

use super::rng::Rng;

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<Entry>),
    Truncate(LogIndex),
    Install(LogIndex, Term),
}

/// A log that starts after a snapshot point: `(index, term)` of the snapshot, then
/// consecutive entries.
#[derive(Debug, Clone, Default)]
pub struct DiskLog {
    pub snap: (LogIndex, Term),
    pub entries: Vec<Entry>,
}

impl DiskLog {
    pub fn first_index(&self) -> LogIndex {
        self.snap.0.next()
    }

    pub fn last_index(&self) -> LogIndex {
        LogIndex(self.snap.0 .0 + self.entries.len() as u64)
    }

    /// The entry at `index`, if held (not compacted, not beyond the end).
    pub fn get(&self, index: LogIndex) -> Option<&Entry> {
        let pos = index.0.checked_sub(self.snap.0 .0 + 1)?;
        self.entries.get(pos as usize)
    }

    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.snap.0 {
            return Some(self.snap.1);
        }
        self.get(index).map(|e| e.term)
    }

    /// (last term, last index).
    pub fn last(&self) -> (Term, LogIndex) {
        let last = self.last_index();
        (self.term_at(last).expect("term of the last entry"), last)
    }

    /// Keeps the entries before `from` (and the snapshot).
    pub fn truncate_from(&mut self, from: LogIndex) {
        let keep = from.0.saturating_sub(self.snap.0 .0 + 1) as usize;
        self.entries.truncate(keep);
    }

    fn push(&mut self, e: Entry) {
        if e.index <= self.snap.0 {
            return; // covered by the snapshot
        }
        assert_eq!(e.index, self.last_index().next(), "append gap");
        self.entries.push(e);
    }

    /// Drops the entries up to `upto`, which the snapshot `(upto, term)` covers.
    fn compact(&mut self, upto: LogIndex, term: Term) {
        if upto <= self.snap.0 {
            return;
        }
        if self.last_index() <= upto {
            self.entries.clear();
        } else {
            self.entries.drain(..(upto.0 - self.snap.0 .0) as usize);
        }
        self.snap = (upto, term);
    }

    fn apply(&mut self, op: Op, limit: usize) {
        match op {
            Op::Append(entries) => {
                for e in entries.into_iter().take(limit) {
                    self.push(e);
                }
            }
            Op::Truncate(from) => self.truncate_from(from),
            Op::Install(index, term) => {
                self.entries.clear();
                self.snap = (index, term);
            }
        }
    }
}

/// A log whose writes become durable only on `sync`; compaction (behind a durable
/// snapshot) is durable at once, as the broker deletes whole, long-synced segments.
#[derive(Debug, Default)]
pub struct SimLog {
    written: DiskLog,
    durable: DiskLog,
    ops: Vec<Op>,
    /// Entries appended since the checker last looked, with the term before each.
    pub appended: Vec<(Entry, Term)>,
    pub fail_writes: bool,
}

impl SimLog {
    pub fn from_durable(durable: DiskLog) -> Self {
        SimLog {
            written: durable.clone(),
            durable,
            ..SimLog::default()
        }
    }

    /// The written log.
    pub fn disk(&self) -> &DiskLog {
        &self.written
    }

    /// The entry at `index` in the written log, if held.
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        self.written.get(index)
    }

    /// The term at `index` in the synced log.
    pub fn durable_term_at(&self, index: LogIndex) -> Option<Term> {
        self.durable.term_at(index)
    }

    /// (last term, last index) of the synced log.
    pub fn durable_last(&self) -> (Term, LogIndex) {
        self.durable.last()
    }

    /// Whether every write is synced.
    pub fn is_synced(&self) -> bool {
        self.ops.is_empty()
    }

    /// Where a sync started now would end: the writes made so far (a write made
    /// while it runs is not covered, as with the broker's sync job).
    pub fn begin_sync(&self) -> usize {
        self.ops.len()
    }

    /// Makes the first `ops` writes durable (those a sync job covered); later ones
    /// stay unsynced.
    pub fn finish_sync(&mut self, ops: usize) {
        let n = ops.min(self.ops.len());
        for op in self.ops.drain(..n) {
            self.durable.apply(op, usize::MAX);
        }
    }

    /// Compacts both views up to `upto` (the driver saved a snapshot there first).
    pub fn compact(&mut self, upto: LogIndex) {
        let term = self.written.term_at(upto).expect("compact to a held index");
        self.written.compact(upto, term);
        self.durable.compact(upto, term);
    }

    /// The log as found after a crash now: the synced state, then some prefix of the
    /// later writes; the last applied write may be torn.
    pub fn crash(mut self, rng: &mut Rng) -> DiskLog {
        let keep = rng.below(self.ops.len() as u64 + 1) as usize;
        let ops: Vec<Op> = self.ops.drain(..).collect();
        for (i, op) in ops.into_iter().enumerate() {
            if i > keep {
                break;
            }
            if i == keep {
                // A torn write keeps some prefix of it.
                if let Op::Append(entries) = &op {
                    let n = rng.below(entries.len() as u64 + 1) as usize;
                    self.durable.apply(op, n);
                }
                break;
            }
            self.durable.apply(op, usize::MAX);
        }
        self.durable
    }
}

impl RaftLog for SimLog {
    fn first_index(&self) -> LogIndex {
        self.written.first_index()
    }

    fn last_index(&self) -> LogIndex {
        self.written.last_index()
    }

    fn term_at(&self, index: LogIndex) -> Option<Term> {
        self.written.term_at(index)
    }

    fn entries(
        &self,
        from: LogIndex,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, LogError> {
        if self.written.get(from).is_none() {
            return Err(LogError::Unavailable(from.0));
        }
        let start = (from.0 - self.written.first_index().0) as usize;
        let all = &self.written.entries;
        let mut end = start;
        let mut bytes = 0;
        while end < all.len() && end - start < max {
            bytes += all[end].body.len();
            if end > start && bytes > max_bytes {
                break;
            }
            end += 1;
        }
        Ok(all[start..end].to_vec())
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), LogError> {
        if self.fail_writes {
            return Err(LogError::Write("simulated full disk".into()));
        }
        for e in entries {
            assert_eq!(e.index, self.written.last_index().next(), "append gap");
            let prev = self.written.term_at(e.index.prev()).expect("term before");
            self.appended.push((e.clone(), prev));
            self.written.push(e.clone());
        }
        self.ops.push(Op::Append(entries.to_vec()));
        Ok(())
    }

    fn truncate_suffix(&mut self, from: LogIndex) -> Result<(), LogError> {
        if self.fail_writes {
            return Err(LogError::Write("simulated full disk".into()));
        }
        assert!(from > self.written.snap.0, "truncate into the snapshot");
        self.written.truncate_from(from);
        self.ops.push(Op::Truncate(from));
        Ok(())
    }

    fn install_snapshot(&mut self, index: LogIndex, term: Term) -> Result<(), LogError> {
        if self.fail_writes {
            return Err(LogError::Write("simulated full disk".into()));
        }
        let op = Op::Install(index, term);
        self.written.apply(op.clone(), usize::MAX);
        self.ops.push(op);
        Ok(())
    }
}
