//! A simulated disk: what was written vs what was synced, crashes that keep only the
//! synced state plus any prefix of the later writes (the last one maybe torn), and
//! media damage (the recovered log is the valid prefix before the damage).

use raftmq_broker::raft::{Entry, LogError, LogIndex, RaftLog, Term};

use super::rng::Rng;

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<Entry>),
    Truncate(LogIndex),
}

/// A log whose writes become durable only on `sync`.
#[derive(Debug, Default)]
pub struct SimLog {
    written: Vec<Entry>,
    durable: Vec<Entry>,
    ops: Vec<Op>,
    /// Entries appended since the checker last looked, with the term before each.
    pub appended: Vec<(Entry, Term)>,
    pub fail_writes: bool,
}

impl SimLog {
    pub fn from_durable(durable: Vec<Entry>) -> Self {
        SimLog {
            written: durable.clone(),
            durable,
            ..SimLog::default()
        }
    }

    pub fn all(&self) -> &[Entry] {
        &self.written
    }

    /// The term at `index` in the synced log.
    pub fn durable_term_at(&self, index: LogIndex) -> Option<Term> {
        self.durable
            .get((index.0 as usize).checked_sub(1)?)
            .map(|e| e.term)
    }

    /// (last term, last index) of the synced log.
    pub fn durable_last(&self) -> (Term, LogIndex) {
        self.durable
            .last()
            .map_or((Term(0), LogIndex(0)), |e| (e.term, e.index))
    }

    /// Makes every write so far durable.
    pub fn sync(&mut self) {
        for op in self.ops.drain(..) {
            apply(&mut self.durable, op, usize::MAX);
        }
        debug_assert_eq!(self.durable.len(), self.written.len());
    }

    /// The log as found after a crash now: the synced state, then some prefix of the
    /// later writes; the last applied write may be torn.
    pub fn crash(mut self, rng: &mut Rng) -> Vec<Entry> {
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
                    apply(&mut self.durable, op, n);
                }
                break;
            }
            apply(&mut self.durable, op, usize::MAX);
        }
        self.durable
    }
}

fn apply(log: &mut Vec<Entry>, op: Op, limit: usize) {
    match op {
        Op::Append(entries) => {
            for e in entries.into_iter().take(limit) {
                assert_eq!(e.index.0, log.len() as u64 + 1);
                log.push(e);
            }
        }
        Op::Truncate(from) => log.truncate(from.0 as usize - 1),
    }
}

impl RaftLog for SimLog {
    fn first_index(&self) -> LogIndex {
        LogIndex(1)
    }

    fn last_index(&self) -> LogIndex {
        LogIndex(self.written.len() as u64)
    }

    fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index.0 == 0 {
            return Some(Term(0));
        }
        self.written.get(index.0 as usize - 1).map(|e| e.term)
    }

    fn entries(
        &self,
        from: LogIndex,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, LogError> {
        if from.0 == 0 || from.0 as usize > self.written.len() {
            return Err(LogError::Unavailable(from.0));
        }
        let start = from.0 as usize - 1;
        let mut end = start;
        let mut bytes = 0;
        while end < self.written.len() && end - start < max {
            bytes += self.written[end].body.len();
            if end > start && bytes > max_bytes {
                break;
            }
            end += 1;
        }
        Ok(self.written[start..end].to_vec())
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), LogError> {
        if self.fail_writes {
            return Err(LogError::Write("simulated full disk".into()));
        }
        for e in entries {
            assert_eq!(e.index.0, self.written.len() as u64 + 1, "append gap");
            let prev = self.written.last().map_or(Term(0), |p| p.term);
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
        assert!(from.0 >= 1);
        self.written.truncate(from.0 as usize - 1);
        self.ops.push(Op::Truncate(from));
        Ok(())
    }
}
