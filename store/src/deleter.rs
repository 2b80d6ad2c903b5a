//! One thread per process that frees the files of segments retention took out of
//! a log, for every log of the process (a broker with 1,000 data groups has 1,000
//! logs, and they need not each keep a thread).
//!
//! Why a thread: unlinking a 1 GiB segment frees its blocks and page cache and
//! takes 85–90 ms on this project's machine (a rename and a directory fsync take
//! 0.2 ms); done on the caller's thread it would stall everything the log serves.
//! Why gradually: freed in one go, the blocks and page cache of a large segment
//! still hold up the other logs' syncs for tens of milliseconds, so each file is
//! shrunk [`STEP_BYTES`] at a time with [`STEP_PAUSE`] between steps, then
//! unlinked. A file is shrunk only once its mapping is gone (the segment and every
//! view of it dropped): shrinking a mapped file under a reader would make the
//! reader fault. A file whose mapping outlives [`MAPPING_WAIT`] is unlinked whole
//! (safe: the mapping keeps the blocks until it goes). Waiting for one file's
//! readers does not hold up the others.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::segment::Segment;

/// How long the thread waits for the last view of a retired segment before it
/// unlinks the file whole instead of shrinking it first.
const MAPPING_WAIT: Duration = Duration::from_secs(2);
/// How much of a retired segment file is freed at a time.
const STEP_BYTES: u64 = 16 << 20;
/// The pause between two steps: a 1 GiB segment takes about 0.3 s to go.
const STEP_PAUSE: Duration = Duration::from_millis(5);
/// How often files waiting for their mapping to go are looked at again.
const POLL: Duration = Duration::from_millis(10);

/// A segment retention took out of its log, with its renamed files.
pub(crate) struct Retired {
    /// Dropped on the thread: unmapping a large segment takes time too.
    pub segment: Segment,
    /// Its renamed files.
    pub paths: Vec<PathBuf>,
    /// The owning log's count of files not deleted yet (decremented per file).
    pub pending: Arc<AtomicUsize>,
}

/// A retired segment's files once the segment itself is dropped.
struct Files {
    /// Set once the segment's mapping (every view of it) is gone.
    released: Arc<AtomicBool>,
    paths: Vec<PathBuf>,
    pending: Arc<AtomicUsize>,
}

impl From<Retired> for Files {
    fn from(r: Retired) -> Files {
        let released = r.segment.released();
        drop(r.segment);
        Files {
            released,
            paths: r.paths,
            pending: r.pending,
        }
    }
}

/// Queues `retired` for deletion, counting their files in their logs' `pending`
/// first. Deletes here if the thread cannot run.
pub(crate) fn delete(retired: Vec<Retired>) {
    for r in &retired {
        r.pending.fetch_add(r.paths.len(), Ordering::Release);
    }
    let sender = SENDER.get_or_init(start);
    let unsent = match sender {
        Some(sender) => match sender.send(retired) {
            Ok(()) => return,
            Err(mpsc::SendError(retired)) => retired,
        },
        None => retired,
    };
    for r in unsent {
        free(r.into(), false);
    }
}

static SENDER: OnceLock<Option<Sender<Vec<Retired>>>> = OnceLock::new();

fn start() -> Option<Sender<Vec<Retired>>> {
    let (sender, jobs) = mpsc::channel::<Vec<Retired>>();
    let spawned = std::thread::Builder::new()
        .name("raftmq-segment-deleter".into())
        .spawn(move || run(jobs));
    match spawned {
        Ok(_) => Some(sender),
        Err(e) => {
            tracing::warn!(error = %e, "no segment-deleter thread: deleting inline");
            None
        }
    }
}

fn run(jobs: mpsc::Receiver<Vec<Retired>>) {
    // Files whose mapping is still in use, with when to stop waiting.
    let mut waiting: Vec<(Files, Instant)> = Vec::new();
    loop {
        let next = if waiting.is_empty() {
            jobs.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            jobs.recv_timeout(POLL)
        };
        match next {
            Ok(batch) => {
                let until = Instant::now() + MAPPING_WAIT;
                waiting.extend(batch.into_iter().map(|r| (Files::from(r), until)));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) if waiting.is_empty() => return,
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(POLL),
        }
        let now = Instant::now();
        let mut i = 0;
        while i < waiting.len() {
            let (r, until) = &waiting[i];
            let released = r.released.load(Ordering::Acquire);
            if released || now >= *until {
                let (r, _) = waiting.remove(i);
                free(r, released);
            } else {
                i += 1;
            }
        }
    }
}

/// Deletes a retired segment's files, shrinking them step by step first when its
/// mapping is gone.
fn free(r: Files, shrink: bool) {
    for path in r.paths {
        if shrink {
            shrink_gradually(&path);
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // Out of the log already: the next open removes it.
            Err(e) => tracing::warn!(
                path = %path.display(),
                error = %e,
                "could not delete a retired segment file"
            ),
        }
        r.pending.fetch_sub(1, Ordering::Release);
    }
}

fn shrink_gradually(path: &std::path::Path) {
    let Ok(file) = std::fs::OpenOptions::new().write(true).open(path) else {
        return;
    };
    let Ok(mut len) = file.metadata().map(|m| m.len()) else {
        return;
    };
    while len > STEP_BYTES {
        len -= STEP_BYTES;
        if file.set_len(len).is_err() {
            return;
        }
        std::thread::sleep(STEP_PAUSE);
    }
}
