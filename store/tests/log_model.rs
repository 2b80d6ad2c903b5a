//! Random append / sync / truncate / retention / reset / reopen / crash sequences checked
//! against a simple in-memory model of the log.
//!
//! Crash simulation: after every operation that makes data durable (sync, truncation,
//! open) the test copies the segment files ("the disk"). A simulated power loss then
//! rebuilds each segment file sector by sector (512 bytes) from either that copy or
//! the current bytes: all old (every unsynced write lost), all new (a process crash:
//! the page cache survived), or a random mix (unsynced pages written back in any
//! order, torn within the batch). Segment files created since the copy exist (their
//! creation is made durable) with their sectors mixed against zeros. Index
//! checkpoints are always taken as current: they are replaced atomically and only
//! describe synced entries. What this cannot show: a kernel or device that loses
//! fsynced data or reorders metadata, or page-cache behaviour of a real power cut; the
//! copy is taken through the same page cache.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use common::*;
use proptest::prelude::*;
use raftmq_store::{CommitLog, Entry, LogIndex};

#[derive(Debug, Clone)]
enum Op {
    Append {
        count: usize,
        len: usize,
        new_term: bool,
    },
    Sync,
    PipelinedSync {
        append_meanwhile: usize,
        truncate_back: Option<usize>,
    },
    Truncate {
        back: usize,
    },
    Retain {
        percent: u64,
    },
    /// Reset to `last + 1 + ahead` (at least 1), as when installing a snapshot.
    Reset {
        ahead: i64,
    },
    Checkpoint,
    Reopen,
    Crash {
        mode: u8,
        seed: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..6, 0usize..700, any::<bool>())
            .prop_map(|(count, len, new_term)| Op::Append { count, len, new_term }),
        3 => Just(Op::Sync),
        2 => (0usize..4, proptest::option::of(0usize..6))
            .prop_map(|(append_meanwhile, truncate_back)| Op::PipelinedSync { append_meanwhile, truncate_back }),
        2 => (0usize..8).prop_map(|back| Op::Truncate { back }),
        1 => (0u64..=100).prop_map(|percent| Op::Retain { percent }),
        1 => (-12i64..=12).prop_map(|ahead| Op::Reset { ahead }),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Reopen),
        2 => (0u8..3, any::<u64>()).prop_map(|(mode, seed)| Op::Crash { mode, seed }),
    ]
}

/// The expected log: `entries[k]` has index `first + k`; `synced` is an index.
struct Model {
    first: u64,
    entries: Vec<Entry>,
    synced: u64,
    term: u64,
}

impl Model {
    fn last(&self) -> u64 {
        self.first + self.entries.len() as u64 - 1
    }

    fn next_batch(&mut self, count: usize, len: usize, new_term: bool) -> Vec<Entry> {
        if new_term {
            self.term += 1;
        }
        let next = self.last() + 1;
        entries(next, next + count as u64 - 1, self.term, len)
    }

    /// Truncates from `back` entries before the end (never below the first index).
    fn truncate_back(&mut self, back: usize) -> u64 {
        let from = (self.last() + 1)
            .saturating_sub(back as u64)
            .max(self.first);
        self.entries.truncate((from - self.first) as usize);
        self.synced = self.synced.min(from - 1);
        from
    }
}

fn disk(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    snapshot(dir)
        .into_iter()
        .filter(|(n, _)| n.ends_with(".log"))
        .collect()
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Rewrites the segment files as a power loss might leave them.
fn power_loss(dir: &Path, durable: &BTreeMap<String, Vec<u8>>, mode: u8, seed: u64) {
    let mut rng = seed | 1;
    for (name, current) in disk(dir) {
        let zeros;
        let old = match durable.get(&name) {
            Some(old) => old,
            None => {
                zeros = vec![0u8; current.len()];
                &zeros
            }
        };
        let mut out = current.clone();
        for (k, chunk) in out.chunks_mut(512).enumerate() {
            let keep_new = match mode {
                0 => false,
                1 => true,
                _ => xorshift(&mut rng) % 2 == 0,
            };
            let from = k * 512;
            if !keep_new && from < old.len() {
                let n = chunk.len().min(old.len() - from);
                chunk[..n].copy_from_slice(&old[from..from + n]);
            }
        }
        fs::write(dir.join(&name), out).unwrap();
    }
}

fn check(log: &CommitLog, model: &Model) {
    assert_eq!(log.first_index(), LogIndex(model.first));
    assert_eq!(log.last_index(), LogIndex(model.last()));
    assert_eq!(log.synced_index(), LogIndex(model.synced));
    assert_eq!(all(log), model.entries);
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config();
    let (mut log, _) = open(dir.path(), config.clone());
    let mut model = Model {
        first: 1,
        entries: Vec::new(),
        synced: 0,
        term: 1,
    };
    let mut durable = disk(dir.path());
    for op in ops {
        match op {
            Op::Append {
                count,
                len,
                new_term,
            } => {
                let batch = model.next_batch(count, len, new_term);
                log.append(&batch).unwrap();
                model.entries.extend(batch);
            }
            Op::Sync => {
                log.sync().unwrap();
                model.synced = model.last();
                durable = disk(dir.path());
            }
            Op::PipelinedSync {
                append_meanwhile,
                truncate_back,
            } => {
                let Some(job) = log.begin_sync() else {
                    continue;
                };
                let mut cap = model.last();
                let worker = std::thread::spawn(move || job.run());
                if append_meanwhile > 0 {
                    let batch = model.next_batch(append_meanwhile, 100, false);
                    log.append(&batch).unwrap();
                    model.entries.extend(batch);
                }
                if let Some(back) = truncate_back {
                    let from = model.truncate_back(back);
                    log.truncate_suffix(LogIndex(from)).unwrap();
                    cap = cap.min(from - 1);
                }
                log.finish_sync(worker.join().unwrap().unwrap());
                model.synced = model.synced.max(cap);
                durable = disk(dir.path());
            }
            Op::Truncate { back } => {
                let from = model.truncate_back(back);
                log.truncate_suffix(LogIndex(from)).unwrap();
                durable = disk(dir.path());
            }
            Op::Retain { percent } => {
                // Like Raft: never past what is synced.
                let span = model.synced + 1 - model.first.min(model.synced + 1);
                let index = model.first + span * percent / 100;
                let deleted = log.delete_segments_before(LogIndex(index)).unwrap();
                let first = log.first_index().0;
                assert!(first >= model.first && first <= index.max(model.first));
                assert_eq!(deleted == 0, first == model.first);
                model.entries.drain(..(first - model.first) as usize);
                model.first = first;
                // The renamed files go on a background thread: let it finish, so
                // the picture of the disk is not taken while a file disappears.
                while log.pending_deletions() > 0 {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                durable = disk(dir.path());
            }
            Op::Reset { ahead } => {
                let start = (model.last() as i64 + 1 + ahead).max(1) as u64;
                log.reset(LogIndex(start)).unwrap();
                model.first = start;
                model.entries.clear();
                model.synced = start - 1;
                durable = disk(dir.path());
            }
            Op::Checkpoint => {
                log.checkpoint().unwrap();
                model.synced = model.last();
                durable = disk(dir.path());
            }
            Op::Reopen => {
                drop(log);
                let (reopened, report) = open(dir.path(), config.clone());
                log = reopened;
                assert_eq!(report.corruption, None);
                model.synced = model.last();
                durable = disk(dir.path());
            }
            Op::Crash { mode, seed } => {
                drop(log);
                power_loss(dir.path(), &durable, mode, seed);
                let (reopened, report) = open(dir.path(), config.clone());
                log = reopened;
                let recovered = all(&log);
                let n = recovered.len();
                assert_eq!(log.first_index(), LogIndex(model.first), "{report}");
                let last = model.first + n as u64 - 1;
                assert!(
                    last >= model.synced,
                    "lost synced entries: last {last} < synced {} ({report})",
                    model.synced
                );
                assert!(
                    n <= model.entries.len(),
                    "entries appeared from nowhere ({report})"
                );
                assert_eq!(
                    recovered,
                    model.entries[..n].to_vec(),
                    "not a prefix ({report})"
                );
                model.entries.truncate(n);
                model.synced = last;
                durable = disk(dir.path());
            }
        }
        check(&log, &model);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_and_crashes_match_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops);
    }
}

#[test]
fn truncation_then_power_loss_never_resurrects_entries() {
    run(vec![
        Op::Append {
            count: 5,
            len: 300,
            new_term: false,
        },
        Op::Sync,
        Op::Append {
            count: 5,
            len: 300,
            new_term: false,
        },
        Op::Truncate { back: 7 },
        Op::Crash { mode: 1, seed: 1 },
        Op::Append {
            count: 4,
            len: 10,
            new_term: true,
        },
        Op::Crash { mode: 2, seed: 7 },
    ]);
}

#[test]
fn reset_then_power_loss_keeps_the_new_start() {
    run(vec![
        Op::Append {
            count: 5,
            len: 600,
            new_term: false,
        },
        Op::Append {
            count: 5,
            len: 600,
            new_term: false,
        },
        Op::Reset { ahead: 3 },
        Op::Crash { mode: 2, seed: 5 },
        Op::Append {
            count: 3,
            len: 10,
            new_term: true,
        },
        Op::Sync,
        Op::Reset { ahead: -2 },
        Op::Crash { mode: 0, seed: 11 },
        Op::Append {
            count: 2,
            len: 10,
            new_term: false,
        },
        Op::Crash { mode: 1, seed: 2 },
    ]);
}

#[test]
fn retention_then_power_loss_keeps_the_new_first_index() {
    run(vec![
        Op::Append {
            count: 5,
            len: 600,
            new_term: false,
        },
        Op::Append {
            count: 5,
            len: 600,
            new_term: false,
        },
        Op::Sync,
        Op::Append {
            count: 5,
            len: 600,
            new_term: true,
        },
        Op::Retain { percent: 100 },
        Op::Crash { mode: 0, seed: 3 },
        Op::Append {
            count: 2,
            len: 10,
            new_term: false,
        },
        Op::Retain { percent: 100 },
        Op::Crash { mode: 2, seed: 9 },
    ]);
}
