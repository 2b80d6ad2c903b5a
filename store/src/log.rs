//! [`CommitLog`]: the segmented, CRC-checked, replicated log's local storage.
//!
//! Appends are written (`pwrite`) into the active segment and become durable only
//! through [`CommitLog::sync`] or the pipelined [`CommitLog::begin_sync`] /
//! [`SyncJob::run`] / [`CommitLog::finish_sync`]. Only the synced index may be
//! counted by Raft. Reads return zero-copy views of the segment mappings.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::disk_space::{self, DiskUse};
use crate::durability;
use crate::entry::{self, HEADER_BYTES};
use crate::entry_index::{self, Slot};
use crate::error::StoreError;
use crate::recovery::{self, RecoveryReport};
use crate::segment::{self, Segment};
use crate::types::{Entry, LogIndex, Term};

/// Bodies at least this large are written straight from the caller's buffer; smaller
/// entries are coalesced into one write buffer (fewer system calls).
const DIRECT_WRITE_BYTES: usize = 256 * 1024;
/// The coalescing buffer is flushed when it reaches this size.
const FLUSH_BYTES: usize = 1024 * 1024;
/// A group commit of at most this many bytes prewrites the active segment ahead of
/// it (see [`Segment::prewrite`]); larger ones convert their blocks themselves, and
/// writing zeros ahead of them would double the bytes written.
const PREWRITE_WINDOW_MAX: u64 = 32 * 1024;
/// How much is prewritten at a time.
const PREWRITE_CHUNK: usize = crate::segment::MAX_PREWRITE_BYTES;
/// A chunk is prewritten when less than this is left prewritten past the entries.
const PREWRITE_LOW: u64 = 128 * 1024;
/// Smallest accepted segment.
const MIN_SEGMENT_BYTES: u64 = 4096;

/// Settings of a [`CommitLog`].
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// Size of each preallocated segment file. Default 1 GiB.
    pub segment_bytes: u64,
    /// Largest entry body accepted; header plus body must fit in a segment.
    /// Default 64 MiB.
    pub max_entry_bytes: u32,
    /// Check the CRC of every entry of the sealed segments on open, not only the last
    /// one of each checkpoint. Bit rot in an old segment is then found at start-up,
    /// where the log is cut to its valid prefix and Raft repairs the rest from the
    /// peers, instead of on a later read. Costs one read of the log per start
    /// (about one second per GB from disk). Default on.
    pub verify_on_open: bool,
    /// Creating a segment is refused with [`StoreError::DiskUseLimit`] when it would
    /// take the file system holding the log above this fraction of its usable space
    /// (`df`'s `Use%`; see [`crate::disk_space`]). Checked only when a segment is
    /// created: appends into a preallocated segment need no new space. Refusing early
    /// leaves room for retention, snapshots and the rest of the node, where a truly
    /// full disk fails every write. `0 < ratio <= 1`; 1.0 disables the check.
    /// Default 0.95.
    pub max_disk_use_ratio: f64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            max_entry_bytes: 64 << 20,
            verify_on_open: true,
            max_disk_use_ratio: 0.95,
        }
    }
}

impl LogConfig {
    /// Checks that the limits are consistent.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.segment_bytes < MIN_SEGMENT_BYTES {
            return Err(StoreError::InvalidConfig(format!(
                "segment_bytes {} is below the minimum of {MIN_SEGMENT_BYTES}",
                self.segment_bytes
            )));
        }
        if entry::encoded_len(self.max_entry_bytes as usize) > self.segment_bytes {
            return Err(StoreError::InvalidConfig(format!(
                "max_entry_bytes {} plus a {HEADER_BYTES}-byte header does not fit in a \
                 {}-byte segment",
                self.max_entry_bytes, self.segment_bytes
            )));
        }
        validate_disk_use_ratio(self.max_disk_use_ratio)
    }
}

fn validate_disk_use_ratio(ratio: f64) -> Result<(), StoreError> {
    // Written so that NaN fails too.
    if !(ratio > 0.0 && ratio <= 1.0) {
        return Err(StoreError::InvalidConfig(format!(
            "max_disk_use_ratio {ratio} is not in (0, 1] (1.0 disables the limit)"
        )));
    }
    Ok(())
}

/// A fault to inject, for tests of error paths (not part of the supported API).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Segment writes succeed for this many more bytes, then fail with `ENOSPC`
    /// (after writing the part that still fits, like a real full disk).
    DiskFullAfter {
        /// Bytes that may still be written.
        bytes: u64,
    },
    /// Creating (preallocating) a new segment fails with `ENOSPC`.
    DiskFullOnNewSegment,
    /// The next sync fails with `EIO`.
    SyncFails,
    /// [`CommitLog::reset`] stops after removing this many segments, as if the process
    /// died there (the log is poisoned; reopen it to see what a crash leaves).
    ResetStopsAfter {
        /// Segments removed before stopping.
        removals: usize,
    },
    /// The disk-use limit is checked against these figures instead of `statvfs`.
    DiskUse(DiskUse),
}

/// One segment file, for retention decisions; see [`CommitLog::segments_info`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Index of its first entry (the number in its file name).
    pub base: LogIndex,
    /// Index of its last entry; `base - 1` if it holds none.
    pub last_index: LogIndex,
    /// Length of the file (preallocated: its disk use, whatever it holds).
    pub file_bytes: u64,
    /// The file's modification time. Every entry is written with `pwrite`, so for a
    /// sealed segment this is when its last entry was written (or when a truncation
    /// zeroed part of it, while it was the active segment). The active segment's also
    /// moves on every open (recovery zeroes its tail). Best effort after a power
    /// loss: `fdatasync` does not persist timestamps, so a crash can leave an older
    /// mtime (the file system's own write-back bounds by how much).
    pub modified: SystemTime,
}

/// What a pipelined sync must flush; see [`CommitLog::begin_sync`].
#[derive(Debug)]
#[must_use = "a SyncJob does nothing until run"]
pub struct SyncJob {
    id: u64,
    upto: LogIndex,
    files: Vec<(Arc<File>, PathBuf)>,
    fail: bool,
}

/// The outcome of a [`SyncJob`], handed back to [`CommitLog::finish_sync`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncDone {
    id: u64,
    upto: LogIndex,
}

impl SyncDone {
    /// The index the job made durable (before any truncation that happened meanwhile).
    pub fn upto(&self) -> LogIndex {
        self.upto
    }
}

impl SyncJob {
    /// The last index this job makes durable.
    pub fn upto(&self) -> LogIndex {
        self.upto
    }

    /// `fdatasync`s every segment holding entries appended since the last sync. Runs
    /// on any thread; the log keeps accepting appends meanwhile. On error hand the
    /// failure to [`CommitLog::abort_sync`].
    pub fn run(self) -> Result<SyncDone, StoreError> {
        if self.fail {
            return Err(StoreError::io(
                "fdatasync",
                self.files.first().map(|f| f.1.clone()).unwrap_or_default(),
                std::io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        for (file, path) in &self.files {
            durability::sync_data(file, path)?;
        }
        Ok(SyncDone {
            id: self.id,
            upto: self.upto,
        })
    }
}

/// The sync job currently running elsewhere.
#[derive(Debug)]
struct InFlight {
    id: u64,
    /// Highest index the job may mark synced: lowered by truncations meanwhile.
    cap: LogIndex,
    /// A reset deleted every file the job syncs: its outcome, success or failure,
    /// says nothing about the log any more.
    voided: bool,
}

/// The commit log. See the crate documentation for the on-disk layout and guarantees.
#[derive(Debug)]
pub struct CommitLog {
    dir: PathBuf,
    config: LogConfig,
    /// Sorted by base; contiguous; empty only for a log never written.
    segments: Vec<Segment>,
    synced: LogIndex,
    in_flight: Option<InFlight>,
    next_job_id: u64,
    poisoned: bool,
    scratch: Vec<u8>,
    fault: Option<Fault>,
    /// Files of segments retention took out of the log and not deleted yet
    /// (see [`crate::deleter`]).
    pending_deletions: Arc<std::sync::atomic::AtomicUsize>,
}

impl CommitLog {
    /// Opens (or creates) the log in `dir`, recovering it (see [`RecoveryReport`]).
    /// Everything recovered is durable when this returns.
    pub fn open(dir: &Path, config: LogConfig) -> Result<(CommitLog, RecoveryReport), StoreError> {
        config.validate()?;
        let (segments, report) = recovery::recover(dir, &config)?;
        let mut log = CommitLog {
            dir: dir.to_path_buf(),
            config,
            segments,
            synced: LogIndex::ZERO,
            in_flight: None,
            next_job_id: 1,
            poisoned: false,
            scratch: Vec::new(),
            fault: None,
            pending_deletions: Arc::default(),
        };
        log.synced = log.last_index();
        log.check_invariants();
        tracing::info!(dir = %dir.display(), "{report}");
        Ok((log, report))
    }

    /// The configuration the log was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// The first stored entry's index (`last_index() + 1` when empty; 1 for a new log).
    pub fn first_index(&self) -> LogIndex {
        self.segments.first().map_or(LogIndex(1), |s| s.base)
    }

    /// The last written entry's index (`LogIndex::ZERO` for a new log).
    pub fn last_index(&self) -> LogIndex {
        self.segments
            .last()
            .map_or(LogIndex::ZERO, Segment::last_index)
    }

    /// Whether a failed write, sync or reset left the log unusable (appends and syncs
    /// are refused; reopen it to recover what is on disk).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// The last durable entry's index: what Raft may count.
    pub fn synced_index(&self) -> LogIndex {
        self.synced
    }

    /// The last entry's term (`Term(0)` when empty).
    pub fn last_term(&self) -> Term {
        self.segments
            .iter()
            .rev()
            .find_map(Segment::last_term)
            .unwrap_or(Term(0))
    }

    /// The term of entry `index`; `Some(Term(0))` for index 0 of a log starting at 1;
    /// `None` when not stored.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == LogIndex::ZERO && self.first_index() == LogIndex(1) {
            return Some(Term(0));
        }
        self.segment_of(index)?.slot(index).map(|s| s.term)
    }

    /// True if the log holds no entries.
    pub fn is_empty(&self) -> bool {
        self.last_index() < self.first_index()
    }

    /// Bytes of segment files on disk (preallocated size).
    pub fn disk_bytes(&self) -> u64 {
        self.segments.iter().map(Segment::capacity).sum()
    }

    /// Bytes of written zeros known to lie just past the active segment's last entry
    /// (kept ahead of small group commits; see [`CommitLog::begin_sync`]).
    pub fn prewritten_ahead(&self) -> u64 {
        self.segments
            .last()
            .map_or(0, |s| s.prewritten_to() - s.write_pos())
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    fn segment_of(&self, index: LogIndex) -> Option<&Segment> {
        let k = self.segments.partition_point(|s| s.base <= index);
        let seg = self.segments.get(k.checked_sub(1)?)?;
        (index <= seg.last_index()).then_some(seg)
    }

    fn out_of_range(&self, index: LogIndex) -> StoreError {
        StoreError::OutOfRange {
            index,
            first: self.first_index(),
            last: self.last_index(),
        }
    }

    /// Entry `index`, fully validated (CRC included); the body is a zero-copy view.
    pub fn entry(&self, index: LogIndex) -> Result<Entry, StoreError> {
        let seg = self
            .segment_of(index)
            .ok_or_else(|| self.out_of_range(index))?;
        seg.read(index, self.config.max_entry_bytes)
    }

    /// Entries from `from` on: at most `max_entries`, stopping before the bodies would
    /// exceed `max_bytes`, but always at least one entry if `from <= last_index()`.
    /// `from == last_index() + 1` gives an empty vector.
    pub fn entries(
        &self,
        from: LogIndex,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let last = self.last_index();
        if from < self.first_index() || from > last.next() {
            return Err(self.out_of_range(from));
        }
        let wanted = max_entries.max(1).min((last.0 + 1 - from.0) as usize);
        let mut out = Vec::with_capacity(wanted.min(1024));
        let mut bytes = 0usize;
        let mut index = from;
        let mut k = self
            .segments
            .partition_point(|s| s.base <= from)
            .saturating_sub(1);
        while out.len() < wanted {
            let mut seg = &self.segments[k];
            if index > seg.last_index() {
                k += 1;
                seg = &self.segments[k];
            }
            let slot = seg.slot(index).ok_or_else(|| self.out_of_range(index))?;
            let len = slot.body_len as usize;
            if !out.is_empty() && bytes + len > max_bytes {
                break;
            }
            out.push(seg.read(index, self.config.max_entry_bytes)?);
            bytes += len;
            index = index.next();
        }
        Ok(out)
    }

    /// Appends `entries`, whose indexes must continue the log (the first one is
    /// `last_index() + 1`; an empty log accepts any first index >= 1) and whose terms
    /// must not decrease. Written, not yet durable. On error (full disk, I/O) the log is exactly
    /// as before the call.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        if self.poisoned {
            return Err(StoreError::Poisoned);
        }
        let Some(first) = entries.first() else {
            return Ok(());
        };
        self.validate_append(entries)?;

        // Where the batch starts: the active segment, unless the log is empty and
        // restarts at another index. Then the empty segment is removed first (durably),
        // so a crash can only leave an empty log, never two disconnected segments.
        let restart = self.is_empty() && self.segments.last().is_none_or(|s| s.base != first.index);

        // Plan: the segments the batch needs, checked against the disk-use limit and
        // all created before writing a byte, so a full disk fails the call before
        // anything changes.
        let new_bases = self.plan_new_segments(entries, restart);
        if !new_bases.is_empty() {
            let freed = if restart { self.disk_bytes() } else { 0 };
            self.check_disk_limit(new_bases.len() as u64, freed)?;
        }
        if restart {
            if let Some(old) = self.segments.pop() {
                assert!(old.slots.is_empty() && self.segments.is_empty());
                if let Err(e) = self.remove_segment_files(old.base) {
                    self.segments.push(old);
                    return Err(e);
                }
            }
            self.synced = self.synced.min(first.index.prev());
        }
        let old_count = self.segments.len();
        let old_slots = self.segments.last().map_or(0, |s| s.slots.len());
        let old_end = self.segments.last().map_or(0, Segment::write_pos);

        let mut created = 0usize;
        let result = (|| {
            for &base in &new_bases {
                self.segments.push(self.create_segment(base)?);
                created += 1;
            }
            let start = if restart { old_count } else { old_count - 1 };
            self.write_batch(start, entries)
        })();

        match result {
            Ok(()) => {
                self.check_invariants();
                Ok(())
            }
            Err(err) => {
                // Undo: drop slots and new segments, scrub bytes written past the old
                // end (never synced, never acknowledged).
                let new_segments: Vec<Segment> = self.segments.drain(old_count..).collect();
                if let Some(seg) = self.segments.last_mut() {
                    let written = seg.write_pos();
                    seg.slots.truncate(old_slots);
                    if let Err(e) = seg.scrub(old_end, written) {
                        tracing::warn!(error = %e, "could not scrub a failed append");
                    }
                }
                for seg in new_segments.iter().take(created) {
                    if let Err(e) = self.remove_segment_files(seg.base) {
                        tracing::warn!(error = %e, "could not remove a segment of a failed append");
                    }
                }
                self.check_invariants();
                Err(err)
            }
        }
    }

    /// Bases of the segments `entries` need beyond the active one (the active one is
    /// not used when `restart`). Allocates only when a segment rolls.
    fn plan_new_segments(&self, entries: &[Entry], restart: bool) -> Vec<LogIndex> {
        let mut bases = Vec::new();
        let mut pos = if restart {
            None
        } else {
            self.segments.last().map(Segment::write_pos)
        };
        let mut capacity = self.segments.last().map_or(0, Segment::capacity);
        for e in entries {
            let end = pos.map(|p| p + entry::encoded_len(e.body.len()));
            if end.is_some_and(|end| end <= capacity) {
                pos = end;
            } else {
                bases.push(e.index);
                capacity = self.config.segment_bytes;
                pos = Some(entry::encoded_len(e.body.len()));
            }
        }
        bases
    }

    /// Creates (durably, preallocated) the empty segment starting at `base`,
    /// honouring an injected fault.
    fn create_segment(&self, base: LogIndex) -> Result<Segment, StoreError> {
        if self.fault == Some(Fault::DiskFullOnNewSegment) {
            return Err(StoreError::DiskFull {
                op: "posix_fallocate",
                path: self.dir.join(segment::file_name(base)),
            });
        }
        Segment::create(&self.dir, base, self.config.segment_bytes)
    }

    fn validate_append(&self, entries: &[Entry]) -> Result<(), StoreError> {
        let empty = self.is_empty();
        let mut expected = if empty {
            LogIndex(entries[0].index.0.max(1))
        } else {
            self.last_index().next()
        };
        let mut term = if empty { Term(0) } else { self.last_term() };
        for e in entries {
            if e.index != expected {
                return Err(StoreError::NonContiguous {
                    expected,
                    got: e.index,
                });
            }
            if e.term < term {
                return Err(StoreError::TermRegression {
                    index: e.index,
                    term: e.term.0,
                    previous: term.0,
                });
            }
            if e.body.len() > self.config.max_entry_bytes as usize {
                return Err(StoreError::EntryTooLarge {
                    len: e.body.len(),
                    max: self.config.max_entry_bytes,
                });
            }
            expected = expected.next();
            term = e.term;
        }
        Ok(())
    }

    /// Writes `entries` starting at the end of `segments[start]`, rolling into the
    /// segments the plan created, pushing a slot per entry.
    fn write_batch(&mut self, start: usize, entries: &[Entry]) -> Result<(), StoreError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let mut k = start;
        let mut pos = self.segments[k].write_pos();
        let mut pending_at = pos;
        let result = (|| {
            for e in entries {
                let len = e.body.len();
                if !self.segments[k].fits(pos, len) {
                    self.flush(k, pending_at, &mut scratch)?;
                    k += 1;
                    assert!(self.segments[k].slots.is_empty() && self.segments[k].base == e.index);
                    pos = 0;
                    pending_at = 0;
                }
                let header = entry::encode_header(e);
                scratch.extend_from_slice(&header);
                if len >= DIRECT_WRITE_BYTES {
                    self.flush(k, pending_at, &mut scratch)?;
                    self.write(k, pos + HEADER_BYTES as u64, &e.body)?;
                    pending_at = pos + entry::encoded_len(len);
                } else {
                    scratch.extend_from_slice(&e.body);
                    if scratch.len() >= FLUSH_BYTES {
                        self.flush(k, pending_at, &mut scratch)?;
                        pending_at = pos + entry::encoded_len(len);
                    }
                }
                self.segments[k].slots.push(Slot {
                    position: pos,
                    body_len: len as u32,
                    term: e.term,
                });
                pos += entry::encoded_len(len);
            }
            self.flush(k, pending_at, &mut scratch)
        })();
        scratch.clear();
        if scratch.capacity() <= 2 * FLUSH_BYTES {
            self.scratch = scratch;
        }
        result
    }

    fn flush(&mut self, k: usize, at: u64, scratch: &mut Vec<u8>) -> Result<(), StoreError> {
        if scratch.is_empty() {
            return Ok(());
        }
        self.write(k, at, scratch)?;
        scratch.clear();
        Ok(())
    }

    /// One `pwrite` into segment `k`, honouring an injected fault.
    fn write(&mut self, k: usize, at: u64, bytes: &[u8]) -> Result<(), StoreError> {
        if let Some(Fault::DiskFullAfter { bytes: budget }) = self.fault {
            if bytes.len() as u64 > budget {
                self.segments[k].write_at(at, &bytes[..budget as usize])?;
                self.fault = Some(Fault::DiskFullAfter { bytes: 0 });
                return Err(StoreError::io(
                    "pwrite",
                    &self.segments[k].path,
                    std::io::Error::from_raw_os_error(libc::ENOSPC),
                ));
            }
            self.fault = Some(Fault::DiskFullAfter {
                bytes: budget - bytes.len() as u64,
            });
        }
        self.segments[k].write_at(at, bytes)
    }

    /// Segments holding entries past the synced index (the ones a sync must flush).
    fn unsynced_segments(&self) -> impl Iterator<Item = &Segment> {
        let synced = self.synced;
        self.segments
            .iter()
            .rev()
            .take_while(move |s| s.last_index() > synced || s.slots.is_empty())
            .filter(move |s| s.last_index() > synced)
    }

    /// Group commit: makes everything appended so far durable and returns the new
    /// synced index. A failure poisons the log (see [`StoreError::Poisoned`]).
    pub fn sync(&mut self) -> Result<LogIndex, StoreError> {
        if self.poisoned {
            return Err(StoreError::Poisoned);
        }
        let last = self.last_index();
        if self.synced >= last {
            return Ok(self.synced);
        }
        if self.fault == Some(Fault::SyncFails) {
            self.poisoned = true;
            return Err(StoreError::io(
                "fdatasync",
                &self.dir,
                std::io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        self.prewrite_ahead();
        let result: Result<(), StoreError> = self.unsynced_segments().try_for_each(Segment::sync);
        if let Err(e) = result {
            self.poisoned = true;
            return Err(e);
        }
        self.mark_synced(last);
        Ok(self.synced)
    }

    /// Starts a pipelined group commit: captures the files to flush and the index they
    /// cover. `None` if nothing is unsynced, a job is already running, or the log is
    /// poisoned. Run the job anywhere, then call [`CommitLog::finish_sync`] (or
    /// [`CommitLog::abort_sync`] if it failed).
    ///
    /// Before a small group commit (at most 32 KiB since the last sync) this also
    /// writes zeros ahead of the entries, 512 KiB at a time, so that most syncs flush
    /// bytes over blocks that already hold data: on ext4 a sync that converts
    /// preallocated blocks also commits the journal, which costs about as much again.
    pub fn begin_sync(&mut self) -> Option<SyncJob> {
        let last = self.last_index();
        if self.poisoned || self.in_flight.is_some() || self.synced >= last {
            return None;
        }
        self.prewrite_ahead();
        let files: Vec<(Arc<File>, PathBuf)> = self
            .unsynced_segments()
            .map(|s| (Arc::clone(s.file()), s.path.clone()))
            .collect();
        assert!(!files.is_empty(), "unsynced entries live in some segment");
        let id = self.next_job_id;
        self.next_job_id += 1;
        self.in_flight = Some(InFlight {
            id,
            cap: last,
            voided: false,
        });
        Some(SyncJob {
            id,
            upto: last,
            files,
            fail: self.fault == Some(Fault::SyncFails),
        })
    }

    /// Records a finished [`SyncJob`]. Entries truncated while it ran are never
    /// reported as synced (the synced index is capped at the lowest truncation point);
    /// a job that a [`CommitLog::reset`] overtook changes nothing.
    pub fn finish_sync(&mut self, done: SyncDone) {
        let Some(job) = self.in_flight.take() else {
            panic!("finish_sync without a sync in flight");
        };
        assert_eq!(job.id, done.id, "finish_sync for another job");
        if self.poisoned || job.voided {
            return;
        }
        self.mark_synced(done.upto.min(job.cap));
    }

    /// Records that a [`SyncJob`] failed: the log is poisoned (no more appends or
    /// syncs; reopen it to recover from what is on disk). Not if a
    /// [`CommitLog::reset`] overtook the job: the files it failed to sync are gone.
    pub fn abort_sync(&mut self) {
        if let Some(job) = self.in_flight.take() {
            if job.voided {
                return;
            }
        }
        self.poisoned = true;
    }

    /// Before a small group commit: keeps written zeros ahead of the active
    /// segment's entries (see [`Segment::prewrite`]), so the sync flushes data over
    /// blocks that already hold data. Best effort: a failure only stops it.
    fn prewrite_ahead(&mut self) {
        let synced = self.synced;
        let Some(seg) = self.segments.last_mut() else {
            return;
        };
        let end = seg.write_pos();
        // The window starts at the first unsynced entry, or at the segment's start if
        // that entry lives in an earlier segment.
        let window_start = seg.slot(synced.next()).map_or(0, |s| s.position);
        if end.saturating_sub(window_start) > PREWRITE_WINDOW_MAX
            || seg.prewritten_to() >= end + PREWRITE_LOW
        {
            return;
        }
        if let Err(e) = seg.prewrite(PREWRITE_CHUNK) {
            tracing::warn!(error = %e, "could not prewrite the active segment; not trying again");
            seg.forget_prewritten_from(seg.capacity());
        }
    }

    fn mark_synced(&mut self, upto: LogIndex) {
        let upto = upto.min(self.last_index());
        if upto > self.synced {
            self.synced = upto;
        }
        // Sealed segments that are now fully synced get their index checkpoint.
        let count = self.segments.len();
        for k in 0..count.saturating_sub(1) {
            let seg = &self.segments[k];
            if seg.persisted_slots < seg.slots.len() && seg.last_index() <= self.synced {
                if let Err(e) = self.segments[k].write_index(&self.dir) {
                    // Not fatal: the index is rebuilt from the segment on open.
                    tracing::warn!(error = %e, "could not write an index checkpoint");
                }
            }
        }
    }

    /// Syncs and writes index checkpoints for every segment (the active one included),
    /// so the next open scans nothing. Call before a clean shutdown.
    pub fn checkpoint(&mut self) -> Result<(), StoreError> {
        self.sync()?;
        for seg in &mut self.segments {
            if seg.persisted_slots != seg.slots.len() {
                seg.write_index(&self.dir)?;
            }
        }
        Ok(())
    }

    /// Checkpoints and closes the log.
    pub fn close(mut self) -> Result<(), StoreError> {
        self.checkpoint()
    }

    /// Durably removes `from..=last_index()` (entries and index slots). Truncated
    /// entries never come back after a crash. Views of truncated entries handed out
    /// earlier read zeros afterwards. `from > last_index()` is a no-op; `from` below
    /// `first_index()` is [`StoreError::OutOfRange`]. A failure poisons the log.
    pub fn truncate_suffix(&mut self, from: LogIndex) -> Result<(), StoreError> {
        if self.poisoned {
            return Err(StoreError::Poisoned);
        }
        if from > self.last_index() {
            return Ok(());
        }
        if from < self.first_index() || from == LogIndex::ZERO {
            return Err(self.out_of_range(from));
        }
        let result = self.truncate_inner(from);
        if result.is_err() {
            self.poisoned = true;
        }
        let keep = from.prev();
        self.synced = self.synced.min(keep);
        if let Some(job) = &mut self.in_flight {
            job.cap = job.cap.min(keep);
        }
        self.check_invariants();
        result
    }

    fn truncate_inner(&mut self, from: LogIndex) -> Result<(), StoreError> {
        // Whole segments first, last one first, each unlink made durable, so a crash
        // in between leaves a prefix of the old log.
        while self.segments.len() > 1 && self.segments.last().is_some_and(|s| s.base >= from) {
            let base = self.segments[self.segments.len() - 1].base;
            self.remove_segment_files(base)?;
            self.segments.pop();
        }
        let dir = self.dir.clone();
        let seg = self
            .segments
            .last_mut()
            .ok_or_else(|| StoreError::InvalidConfig("no segment".into()))?;
        let keep = (from.0.max(seg.base.0) - seg.base.0) as usize;
        if keep < seg.slots.len() {
            if seg.persisted_slots > keep {
                seg.remove_index(&dir)?;
            }
            let cut = seg.slots[keep].position;
            let end = seg.write_pos();
            durability_zero(seg, cut, end)?;
            seg.slots.truncate(keep);
            seg.forget_prewritten_from(cut);
        }
        Ok(())
    }

    /// Retention: deletes whole segments whose entries all lie below `index`, that is
    /// every segment, oldest first, whose last index is `< index`, stopping at the
    /// first one that holds `index` or a later entry, and never the last segment (the
    /// log keeps its last entry and term, and the active segment). Returns how many
    /// were deleted. Entries are never removed from a segment that is kept, so
    /// afterwards `first_index()` is the base of the first segment kept: `<= index`
    /// if anything was deleted, and exactly `index` when `index` is a segment base
    /// (see [`CommitLog::segment_bases_in`]). Deleting ignores the synced index: the
    /// caller must hold the entries below `index` elsewhere (a snapshot).
    ///
    /// Each segment's files are renamed to `<name>.deleted`, oldest first, and the
    /// directory fsynced before this returns: a crash leaves a contiguous suffix of
    /// the segments, and the reopened log starts at the base of the oldest segment
    /// left (it removes `.deleted` files it finds). The unlinking itself, tens of
    /// milliseconds for a large segment, happens on a background thread (see
    /// [`CommitLog::pending_deletions`]). Views of deleted entries stay readable
    /// (the mapping outlives the file); their disk space is returned when the last
    /// view is dropped.
    pub fn delete_segments_before(&mut self, index: LogIndex) -> Result<usize, StoreError> {
        let mut retired = Vec::new();
        let mut result = Ok(());
        while self.segments.len() > 1 && self.segments[0].last_index() < index {
            let base = self.segments[0].base;
            let mut paths = Vec::new();
            let renamed = self.rename_segment_files_away(base, &mut paths);
            if !paths.is_empty() || renamed.is_ok() {
                retired.push(crate::deleter::Retired {
                    segment: self.segments.remove(0),
                    paths,
                    pending: self.pending_deletions.clone(),
                });
            }
            if let Err(e) = renamed {
                result = Err(e);
                break;
            }
        }
        let deleted = retired.len();
        if deleted > 0 {
            if let Err(e) = durability::sync_dir(&self.dir) {
                result = result.and(Err(e));
            }
            crate::deleter::delete(retired);
        }
        self.check_invariants();
        result.map(|()| deleted)
    }

    /// Files renamed away by retention and not unlinked yet.
    pub fn pending_deletions(&self) -> usize {
        self.pending_deletions
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Renames a segment's files (the `.idx` checkpoint if it has one) to
    /// `<name>.deleted`, adding the new paths to `paths`.
    fn rename_segment_files_away(
        &self,
        base: LogIndex,
        paths: &mut Vec<PathBuf>,
    ) -> Result<(), StoreError> {
        for name in [segment::file_name(base), entry_index::file_name(base)] {
            let from = self.dir.join(&name);
            let to = self
                .dir
                .join(format!("{name}{}", durability::DELETED_SUFFIX));
            match std::fs::rename(&from, &to) {
                Ok(()) => paths.push(to),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("rename", &from, e)),
            }
        }
        Ok(())
    }

    /// Discards every entry: afterwards the log is empty and continues at `start`
    /// (`first_index() == start`, `last_index() == synced_index() == start - 1`, no
    /// `term_at`, except the usual `Some(Term(0))` at 0 when `start` is 1), as when a
    /// follower installs a snapshot ending at `start - 1`. Durable when it returns.
    ///
    /// Steps, each durable before the next: the segment files and their `.idx`
    /// checkpoints are removed newest first, then a new, preallocated, empty segment
    /// with base `start` is created (temp file, rename, directory fsync). A crash
    /// part-way leaves a contiguous prefix of the old log (possibly empty, then
    /// `first_index()` is 1), or the new empty log; the caller detects the prefix
    /// against its snapshot and resets again. An error leaves one of those same states.
    ///
    /// Like any empty log, the reset log takes its next entry at `start` into the new
    /// segment; an append at another index would restart it there (see
    /// [`CommitLog::append`]), so the caller must continue at `start`.
    ///
    /// The disk-use limit is checked first, counting the old segments as freed: a
    /// refusal ([`StoreError::DiskUseLimit`]) changes nothing. A sync job running
    /// meanwhile is voided: finishing it changes nothing, and its failure no longer
    /// poisons the log (the files it syncs are deleted). `start == 0` is
    /// [`StoreError::OutOfRange`]. A failure to remove a file poisons the log (as in
    /// [`CommitLog::truncate_suffix`]); a failure to create the new segment does not
    /// (the log is empty; call `reset` again).
    pub fn reset(&mut self, start: LogIndex) -> Result<(), StoreError> {
        if self.poisoned {
            return Err(StoreError::Poisoned);
        }
        if start == LogIndex::ZERO {
            return Err(self.out_of_range(start));
        }
        let already = self.segments.len() == 1
            && self.segments[0].slots.is_empty()
            && self.segments[0].base == start;
        if !already {
            self.check_disk_limit(1, self.disk_bytes())?;
            if let Some(job) = &mut self.in_flight {
                job.voided = true;
            }
            let result = self.reset_inner(start);
            self.synced = self.synced.min(self.last_index());
            if result.is_err() {
                self.check_invariants();
                return result;
            }
        }
        self.synced = start.prev();
        self.check_invariants();
        Ok(())
    }

    fn reset_inner(&mut self, start: LogIndex) -> Result<(), StoreError> {
        let mut removed = 0usize;
        while let Some(seg) = self.segments.last() {
            if let Some(Fault::ResetStopsAfter { removals }) = self.fault {
                if removed == removals {
                    self.poisoned = true;
                    return Err(StoreError::io(
                        "reset (injected stop)",
                        &self.dir,
                        std::io::Error::from_raw_os_error(libc::EINTR),
                    ));
                }
            }
            let base = seg.base;
            if let Err(e) = self.remove_segment_files(base) {
                self.poisoned = true;
                return Err(e);
            }
            self.segments.pop();
            removed += 1;
        }
        match self.create_segment(start) {
            Ok(seg) => {
                self.segments.push(seg);
                Ok(())
            }
            Err(e) => {
                // The file may exist if only the directory fsync failed: remove it, as
                // a failed append does, so no segment the log does not know survives.
                if let Err(e) = self.remove_segment_files(start) {
                    tracing::warn!(error = %e, "could not remove the segment of a failed reset");
                }
                Err(e)
            }
        }
    }

    /// The segments, oldest first; the last one is the active segment. One `fstat` per
    /// segment (for the modification time).
    pub fn segments_info(&self) -> Result<Vec<SegmentInfo>, StoreError> {
        self.segments
            .iter()
            .map(|seg| {
                let meta = seg
                    .file()
                    .metadata()
                    .map_err(|e| StoreError::io("fstat", &seg.path, e))?;
                let modified = meta
                    .modified()
                    .map_err(|e| StoreError::io("fstat", &seg.path, e))?;
                Ok(SegmentInfo {
                    base: seg.base,
                    last_index: seg.last_index(),
                    file_bytes: meta.len(),
                    modified,
                })
            })
            .collect()
    }

    /// The bases of the segments with `from <= base <= to`, in order (a binary
    /// search, then a walk over those segments only). A segment base `b` is where
    /// retention can cut: a snapshot of the state after applying `b - 1` lets
    /// [`CommitLog::delete_segments_before`]`(b)` delete every segment before it.
    pub fn segment_bases_in(
        &self,
        from: LogIndex,
        to: LogIndex,
    ) -> impl Iterator<Item = LogIndex> + '_ {
        let k = self.segments.partition_point(|s| s.base < from);
        self.segments[k..]
            .iter()
            .map(|s| s.base)
            .take_while(move |&base| base <= to)
    }

    /// How full the file system holding the log is (one `statvfs`), for metrics.
    pub fn disk_use(&self) -> Result<DiskUse, StoreError> {
        disk_space::disk_use(&self.dir)
    }

    /// `Ok` if the log may create its next segment now; the
    /// [`StoreError::DiskUseLimit`] an append would get when it rolls otherwise, so
    /// the broker can refuse writes early with that message. Appends that fit in the
    /// active segment still succeed while this fails. One `statvfs` (none when the
    /// limit is disabled).
    pub fn check_disk_use_limit(&self) -> Result<(), StoreError> {
        self.check_disk_limit(1, 0)
    }

    /// Changes [`LogConfig::max_disk_use_ratio`] of the open log (for example after
    /// an operator raised it); validated like the configuration.
    pub fn set_max_disk_use_ratio(&mut self, ratio: f64) -> Result<(), StoreError> {
        validate_disk_use_ratio(ratio)?;
        self.config.max_disk_use_ratio = ratio;
        Ok(())
    }

    /// Checks the disk-use limit for creating `segments` new segments while deleting
    /// `freed` bytes of old ones.
    fn check_disk_limit(&self, segments: u64, freed: u64) -> Result<(), StoreError> {
        let limit = self.config.max_disk_use_ratio;
        if limit >= 1.0 {
            return Ok(());
        }
        let usage = match self.fault {
            Some(Fault::DiskUse(usage)) => usage,
            _ => disk_space::disk_use(&self.dir)?,
        };
        let needed = segments.saturating_mul(self.config.segment_bytes);
        disk_space::check_limit(&self.dir, &usage, needed, freed, limit)
    }

    fn remove_segment_files(&self, base: LogIndex) -> Result<(), StoreError> {
        durability::remove_file(&self.dir, &segment::file_name(base))?;
        durability::remove_file(&self.dir, &entry_index::file_name(base))
    }

    /// Injects a fault for tests of error paths; `None` clears it.
    #[doc(hidden)]
    pub fn inject_fault(&mut self, fault: Option<Fault>) {
        self.fault = fault;
    }

    /// Structural invariants, checked after every change (kept in release builds).
    fn check_invariants(&self) {
        for pair in self.segments.windows(2) {
            assert_eq!(
                pair[0].next_index(),
                pair[1].base,
                "segments are contiguous"
            );
            assert!(!pair[0].slots.is_empty() || pair[0].base == pair[1].base);
        }
        assert!(
            self.synced <= self.last_index(),
            "never synced past the end"
        );
        if let Some(seg) = self.segments.last() {
            assert!(seg.write_pos() <= seg.capacity());
        }
    }
}

/// Durably zeroes `from..to` of a segment (truncation).
fn durability_zero(seg: &Segment, from: u64, to: u64) -> Result<(), StoreError> {
    assert!(from <= to && to <= seg.capacity());
    durability::zero_range(seg.file(), &seg.path, from, to - from)
}
