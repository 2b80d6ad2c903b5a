//! Snapshots and retention in the node.
//!
//! - **One snapshot per segment**: when the state machine has applied exactly the
//!   last entry of a sealed segment, its state is saved as the snapshot at that
//!   index (as Kafka writes a producer-state snapshot at every segment roll). The
//!   snapshot is small (topics, producer sessions, group offsets, per-queue next
//!   offsets; not the per-queue index of batches, which is rebuilt by replaying the
//!   retained log).
//! - **Retention** deletes whole sealed segments, oldest first, by age and by total
//!   size, only up to a segment base whose predecessor has a snapshot, never past
//!   the commit or applied index, and (on the leader) not past a live follower's
//!   match index for up to `retention_follower_grace_ms`. The snapshot at
//!   `first_index - 1` is then the base the log starts after.
//! - **InstallSnapshot**: a follower whose next index is below the leader's log start
//!   receives the base snapshot file in chunks; once whole and CRC-checked it is
//!   saved (only if the core will install it), the core resets the log to it, and the
//!   state machine is restored from it. The follower then gets the log from there
//!   by ordinary appends: it holds every message the leader still retains.
//! - **Start-up** ([`recover`]) reconciles the log with the snapshots.
//!
//! A segment-boundary snapshot is encoded on the node task (the state at exactly
//! that index) and written on a thread of its own: the file write, its fsync, the
//! rename and the directory fsync take milliseconds for a small state and far more
//! for one with many producer sessions and group offsets, and the group would stall
//! for all of it. It counts as on disk (a place retention may cut) only once
//! durable. Since they remove snapshot files, retention skips a round while a write
//! runs, and installing a leader's snapshot (rare) and shutdown wait for it. A snapshot received from the leader
//! is saved on the node task: the core may not reset the log to it before it is
//! durable.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use raftmq_store::{CommitLog, LogIndex, Term};

use super::Node;
use crate::log_adapter::RaftStore;
use crate::raft::{Message, MessageBody, NodeId, RaftLog, Role};
use crate::raft_wire::SnapshotChunk;
use crate::snapshot::{self, SnapshotDir, SnapshotError, SnapshotMeta};
use crate::state_machine::StateMachine;

/// Bytes per chunk of a snapshot transfer (well below the frame limit).
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Largest snapshot a follower accepts from a leader.
const SNAPSHOT_MAX_BYTES: u64 = 1 << 32;

/// A snapshot being received from the leader.
pub(super) struct Incoming {
    from: NodeId,
    term: Term,
    index: LogIndex,
    snapshot_term: Term,
    total: u64,
    buf: BytesMut,
}

/// Snapshot and retention state of the node.
pub(super) struct Snapshots {
    dir: SnapshotDir,
    /// Indexes of the snapshot files on disk.
    on_disk: BTreeSet<LogIndex>,
    incoming: Option<Incoming>,
    /// A received snapshot handed to the core, until its Ready restores it.
    installing: Option<(LogIndex, StateMachine)>,
    last_retention: Instant,
    /// Boundary snapshots being written off the node task.
    saves: Arc<BackgroundSaves>,
    /// When each peer was last heard from.
    peer_heard: BTreeMap<NodeId, Instant>,
    /// Since when each follower has been holding retention back.
    holding_since: BTreeMap<NodeId, Instant>,
}

/// Snapshot writes running on their own threads, and their outcomes until the
/// node collects them.
#[derive(Default)]
struct BackgroundSaves {
    state: Mutex<SavesState>,
    finished: Condvar,
}

#[derive(Default)]
struct SavesState {
    /// Indexes being written.
    running: BTreeSet<LogIndex>,
    /// Written (or failed), not collected yet.
    done: Vec<(LogIndex, Result<usize, SnapshotError>)>,
}

impl BackgroundSaves {
    fn lock(&self) -> MutexGuard<'_, SavesState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `payload` as the snapshot `meta` on a thread of its own, unless that
    /// index is being written already.
    fn start(self: &Arc<Self>, dir: &SnapshotDir, meta: SnapshotMeta, payload: Bytes) {
        if !self.lock().running.insert(meta.index) {
            return;
        }
        let saves = Arc::clone(self);
        let dir = dir.clone();
        let write = move || {
            let outcome = dir.save(meta, &payload).map(|()| payload.len());
            let mut state = saves.lock();
            state.running.remove(&meta.index);
            state.done.push((meta.index, outcome));
            drop(state);
            saves.finished.notify_all();
        };
        if let Err(e) = std::thread::Builder::new()
            .name("raftmq-snapshot".into())
            .spawn(write)
        {
            self.lock().running.remove(&meta.index);
            tracing::warn!(index = meta.index.0, error = %e, "cannot start a snapshot writer");
        }
    }

    /// Waits until no write runs.
    fn wait_idle(&self) {
        let mut state = self.lock();
        while !state.running.is_empty() {
            state = self.finished.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn take_done(&self) -> Vec<(LogIndex, Result<usize, SnapshotError>)> {
        std::mem::take(&mut self.lock().done)
    }

    fn is_running(&self, index: LogIndex) -> bool {
        self.lock().running.contains(&index)
    }

    fn any_running(&self) -> bool {
        !self.lock().running.is_empty()
    }
}

impl Snapshots {
    pub(super) fn new(dir: SnapshotDir, on_disk: BTreeSet<LogIndex>) -> Snapshots {
        Snapshots {
            dir,
            on_disk,
            incoming: None,
            installing: None,
            last_retention: Instant::now(),
            saves: Arc::new(BackgroundSaves::default()),
            peer_heard: BTreeMap::new(),
            holding_since: BTreeMap::new(),
        }
    }

    pub(super) fn heard_from(&mut self, peer: NodeId, now: Instant) {
        self.peer_heard.insert(peer, now);
    }

    /// A new leadership starts its own grace periods: right after an election every
    /// follower's match is unknown, and old timestamps must not count against it.
    pub(super) fn role_changed(&mut self) {
        self.holding_since.clear();
    }
}

/// Why the log and the snapshots could not be reconciled at start-up.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// A snapshot file could not be read or written.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The log could not be reset or trimmed.
    #[error("commit log: {0}")]
    Store(#[from] raftmq_store::StoreError),
    /// Retention deleted the log up to a snapshot that is now unreadable.
    #[error(
        "the log starts after index {index}, but no valid snapshot covers it ({detail}); \
         remove the data directory to rejoin the cluster as an empty node"
    )]
    MissingBase {
        /// The log's first index minus one.
        index: u64,
        /// What was wrong.
        detail: String,
    },
}

/// Start-up: reconciles the log with the snapshot files and restores the state
/// machine.
///
/// - The state machine starts from the snapshot the log starts after (none for a
///   log starting at 1); the driver replays the rest of the log.
/// - Snapshots the log does not hold (an install a crash interrupted before the log
///   was reset, or snapshots beyond a log that damage cut short) are deleted: the
///   node rejoins with the log it has, and the leader repairs it with appends or
///   sends its snapshot again. Resetting the log to such a snapshot instead would
///   drop the retained messages below it from this node.
/// - A damaged base snapshot falls back to a later one that the log still holds (the
///   segments before it are deleted: this node then retains less, the cluster loses
///   nothing).
pub fn recover(
    log: CommitLog,
    dir: &SnapshotDir,
) -> Result<(RaftStore, StateMachine, BTreeSet<LogIndex>), RecoverError> {
    let base = log.first_index().prev();
    let (store, state) = if base == LogIndex::ZERO {
        (
            RaftStore::new(log, (LogIndex::ZERO, Term(0))),
            StateMachine::new(),
        )
    } else {
        match dir.load(base) {
            Ok((meta, payload)) => {
                let state =
                    state_from(meta, &payload).map_err(|detail| RecoverError::MissingBase {
                        index: base.0,
                        detail,
                    })?;
                (RaftStore::new(log, (meta.index, meta.term)), state)
            }
            Err(e) => fall_back(log, dir, base, e)?,
        }
    };
    let base = store.first_index().prev();
    dir.remove_below(base)?;
    let mut on_disk = BTreeSet::new();
    for index in dir.list()? {
        let held = index == base
            || dir
                .load(index)
                .is_ok_and(|(meta, _)| RaftLog::term_at(&store, index) == Some(meta.term));
        if held {
            on_disk.insert(index);
        } else {
            tracing::warn!(
                snapshot_index = index.0,
                log_first = store.first_index().0,
                log_last = store.last_index().0,
                "deleting a snapshot the log does not hold"
            );
            let path = dir.file_path(index);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot delete it");
            }
        }
    }
    if on_disk.is_empty() && base.0 == 0 {
        tracing::info!("no state-machine snapshot yet; replaying the log from the start");
    } else {
        tracing::info!(
            snapshot_index = base.0,
            snapshots = on_disk.len(),
            "state machine restored from its snapshot; replaying the log after it"
        );
    }
    Ok((store, state, on_disk))
}

/// The state machine a snapshot holds, which must be the state after exactly the
/// snapshot's index (anything else would skip entries or apply one twice).
fn state_from(meta: SnapshotMeta, payload: &[u8]) -> Result<StateMachine, String> {
    let state = StateMachine::from_snapshot(payload).map_err(|e| e.to_string())?;
    if state.applied() != meta.index {
        return Err(format!(
            "the snapshot at index {} holds the state after index {}",
            meta.index.0,
            state.applied().0
        ));
    }
    Ok(state)
}

/// The base snapshot is unreadable: use the oldest later one the log holds at a
/// segment boundary, deleting the segments before it.
fn fall_back(
    mut log: CommitLog,
    dir: &SnapshotDir,
    base: LogIndex,
    cause: SnapshotError,
) -> Result<(RaftStore, StateMachine), RecoverError> {
    tracing::error!(index = base.0, error = %cause, "the base snapshot is unreadable");
    for index in dir.list()? {
        if index <= base {
            continue;
        }
        let Ok((meta, payload)) = dir.load(index) else {
            continue;
        };
        let at_boundary = log
            .segment_bases_in(index.next(), index.next())
            .next()
            .is_some();
        if !at_boundary || log.term_at(index) != Some(meta.term) {
            continue;
        }
        let Ok(state) = state_from(meta, &payload) else {
            continue;
        };
        log.delete_segments_before(index.next())?;
        tracing::warn!(
            snapshot_index = index.0,
            "fell back to a later snapshot; the segments before it were deleted"
        );
        return Ok((RaftStore::new(log, (meta.index, meta.term)), state));
    }
    Err(RecoverError::MissingBase {
        index: base.0,
        detail: cause.to_string(),
    })
}

impl Node {
    // ----- One snapshot per segment ----------------------------------------------------

    /// Segment bases in `from..=to`: before applying the entry at such a base, the
    /// state is exactly that of the end of the previous segment.
    pub(super) fn segment_boundaries(&self, from: LogIndex, to: LogIndex) -> Vec<LogIndex> {
        self.raft
            .log()
            .segment_bases_in(from, to)
            .filter(|&b| b > LogIndex(1))
            .collect()
    }

    /// Starts saving the state (which has applied exactly `index`) as a snapshot,
    /// once; it counts once written (see [`collect_saved_snapshots`](Self::collect_saved_snapshots)).
    pub(super) fn save_boundary_snapshot(&mut self, index: LogIndex) {
        debug_assert_eq!(self.state.applied(), index);
        if self.snapshots.on_disk.contains(&index) {
            return;
        }
        let Some(term) = RaftLog::term_at(self.raft.log(), index) else {
            return;
        };
        if self.snapshots.saves.is_running(index) {
            return;
        }
        let payload = self.state.encode_snapshot();
        let meta = SnapshotMeta { index, term };
        self.snapshots
            .saves
            .start(&self.snapshots.dir, meta, payload);
    }

    /// Takes in the boundary snapshots written since the last call: each is a place
    /// retention may cut from now on.
    pub(super) fn collect_saved_snapshots(&mut self) {
        for (index, outcome) in self.snapshots.saves.take_done() {
            match outcome {
                Ok(bytes) => {
                    self.snapshots.on_disk.insert(index);
                    tracing::debug!(
                        index = index.0,
                        bytes,
                        "state snapshot saved at a segment boundary"
                    );
                }
                // Not fatal: retention cannot cut here until a later boundary.
                Err(e) => {
                    tracing::warn!(index = index.0, error = %e, "could not save a state snapshot")
                }
            }
        }
    }

    /// Waits for the snapshot writes still running (before snapshot files are
    /// removed, and at shutdown) and takes them in.
    pub(super) fn finish_snapshot_saves(&mut self) {
        self.snapshots.saves.wait_idle();
        self.collect_saved_snapshots();
    }

    // ----- Retention -------------------------------------------------------------------

    /// Runs retention if its interval has passed.
    pub(super) fn maybe_run_retention(&mut self, now: Instant) {
        let interval = Duration::from_millis(self.config.retention_check_interval_ms);
        if now.duration_since(self.snapshots.last_retention) < interval {
            return;
        }
        self.snapshots.last_retention = now;
        self.collect_saved_snapshots();
        if self.storage_failed {
            return;
        }
        self.run_retention(now);
    }

    fn run_retention(&mut self, now: Instant) {
        let infos = match self.raft.log().segments_info() {
            Ok(infos) => infos,
            Err(e) => {
                tracing::warn!(error = %e, "retention cannot list the segments");
                return;
            }
        };
        // Topics' own retention first (also with a single segment): it moves queue
        // starts, and segments wholly below every queue's first stored batch hold
        // nothing left to read.
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let expired = self.state.expire(now_ms);
        if expired > 0 {
            tracing::debug!(batches = expired, "topic retention expired batches");
        }
        if infos.len() < 2 {
            return;
        }
        // What the policy would delete: a prefix of the sealed segments.
        let total: u64 = infos.iter().map(|s| s.file_bytes).sum();
        let age_limit = (self.config.retention_ms > 0).then(|| {
            SystemTime::now()
                .checked_sub(Duration::from_millis(self.config.retention_ms))
                .unwrap_or(SystemTime::UNIX_EPOCH)
        });
        let needed_from = self
            .state
            .first_retained_entry()
            .unwrap_or(LogIndex(u64::MAX));
        let mut remaining = total;
        let mut wanted = 0;
        for seg in &infos[..infos.len() - 1] {
            let by_age = age_limit.is_some_and(|limit| seg.modified < limit);
            let by_size =
                self.config.retention_bytes > 0 && remaining > self.config.retention_bytes;
            let unread = seg.last_index < needed_from;
            if !by_age && !by_size && !unread {
                break;
            }
            remaining -= seg.file_bytes;
            wanted += 1;
        }
        if wanted == 0 {
            self.snapshots.holding_since.clear();
            return;
        }
        // Never past what is committed and applied (the snapshot must exist).
        let mut limit = self.raft.commit_index().min(self.state.applied()).next();
        let wanted_cut = infos[wanted].base;
        if self.raft.role() == Role::Leader {
            limit = limit.min(self.follower_limit(now, wanted_cut));
        }
        // The largest segment base within both, with a snapshot just before it.
        let cut = (1..=wanted)
            .rev()
            .map(|k| infos[k].base)
            .find(|&base| base <= limit && self.snapshots.on_disk.contains(&base.prev()));
        let Some(cut) = cut else {
            return;
        };
        self.compact_log(cut);
    }

    /// The lowest `match + 1` of the followers that still need what retention wants
    /// to delete, ignoring those not heard from, or holding it back, for longer than
    /// the grace period (they catch up from a snapshot).
    fn follower_limit(&mut self, now: Instant, wanted_cut: LogIndex) -> LogIndex {
        let grace = Duration::from_millis(self.config.retention_follower_grace_ms);
        let mut limit = LogIndex(u64::MAX);
        for peer in self.raft.status().progress {
            let needs = peer.match_index.next() < wanted_cut;
            if !needs {
                self.snapshots.holding_since.remove(&peer.id);
                continue;
            }
            let alive = self
                .snapshots
                .peer_heard
                .get(&peer.id)
                .is_some_and(|&t| now.duration_since(t) <= grace);
            let since = *self.snapshots.holding_since.entry(peer.id).or_insert(now);
            if alive && now.duration_since(since) <= grace {
                limit = limit.min(peer.match_index.next());
            } else {
                tracing::info!(
                    peer = peer.id.0,
                    match_index = peer.match_index.0,
                    "retention passes a follower's match index after the grace period; \
                     it will catch up from a snapshot"
                );
            }
        }
        limit
    }

    /// Deletes the segments before `cut` (a segment base with a snapshot just before).
    fn compact_log(&mut self, cut: LogIndex) {
        // Old snapshot files are removed below: none may be half written. Rather
        // than wait for a write (tens of milliseconds for a large state), retention
        // tries again at its next round.
        if self.snapshots.saves.any_running() {
            return;
        }
        let base = cut.prev();
        let term = match self.snapshots.dir.load(base) {
            Ok((meta, _)) => meta.term,
            Err(e) => {
                tracing::warn!(index = base.0, error = %e, "snapshot unreadable: retention skipped");
                self.snapshots.on_disk.remove(&base);
                return;
            }
        };
        let bytes_before = self.raft.log().disk_bytes();
        let first_before = self.raft.log().first_index();
        let result = self.raft.log_mut().compact(cut, term);
        // Whatever was deleted (all, or some before an error) is gone from the queues.
        let first = self.raft.log().first_index();
        if first > first_before {
            self.state.drop_before(first);
            if let Err(e) = self.snapshots.dir.remove_below(first.prev()) {
                tracing::warn!(error = %e, "could not remove old snapshots");
            }
            self.snapshots.on_disk = self.snapshots.on_disk.split_off(&first.prev());
        }
        match result {
            Ok(deleted) => {
                tracing::info!(
                    segments = deleted,
                    freed_bytes = bytes_before.saturating_sub(self.raft.log().disk_bytes()),
                    first_index = first.0,
                    "retention deleted old segments"
                );
                self.metrics.retention_deleted(deleted);
            }
            Err(e) => {
                tracing::error!(error = %e, first_index = first.0, "retention could not delete segments");
            }
        }
    }

    // ----- InstallSnapshot: the leader's side -----------------------------------------

    /// Sends the snapshot the log starts after to `to`, in chunks.
    pub(super) fn send_snapshot(&mut self, to: NodeId, term: Term, index: LogIndex) {
        let bytes = match self.snapshots.dir.read_encoded(index) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!(index = index.0, error = %e, "cannot read the snapshot to send");
                return;
            }
        };
        let snapshot_term = match snapshot::decode_file(&bytes) {
            Ok((meta, _)) => meta.term,
            Err(e) => {
                tracing::error!(index = index.0, error = %e, "the snapshot to send is damaged");
                return;
            }
        };
        tracing::info!(
            peer = to.0,
            index = index.0,
            bytes = bytes.len(),
            "sending a snapshot to a follower behind the log start"
        );
        let total = bytes.len() as u64;
        let mut offset = 0;
        while offset < bytes.len() {
            let end = (offset + SNAPSHOT_CHUNK_BYTES).min(bytes.len());
            self.transport.send_snapshot_chunk(SnapshotChunk {
                from: self.config.node_id,
                to,
                term,
                index,
                snapshot_term,
                offset: offset as u64,
                total_bytes: total,
                data: bytes.slice(offset..end),
            });
            offset = end;
        }
        self.metrics.snapshot_sent();
    }

    // ----- InstallSnapshot: the follower's side ---------------------------------------

    /// A piece of a snapshot from the leader; the last one hands it to the core.
    pub(super) fn receive_snapshot_chunk(&mut self, c: SnapshotChunk) {
        if c.to != self.config.node_id
            || c.total_bytes == 0
            || c.from == self.config.node_id
            || !self.config.peers.contains_key(&c.from)
        {
            return;
        }
        if c.total_bytes > SNAPSHOT_MAX_BYTES {
            tracing::warn!(bytes = c.total_bytes, "refusing an oversized snapshot");
            return;
        }
        if c.offset == 0 {
            self.snapshots.incoming = Some(Incoming {
                from: c.from,
                term: c.term,
                index: c.index,
                snapshot_term: c.snapshot_term,
                total: c.total_bytes,
                buf: BytesMut::with_capacity(c.total_bytes.min(64 << 20) as usize),
            });
        }
        let Some(inc) = self.snapshots.incoming.as_mut() else {
            return;
        };
        let same = (inc.from, inc.term, inc.index, inc.snapshot_term, inc.total)
            == (c.from, c.term, c.index, c.snapshot_term, c.total_bytes);
        let fits = inc.buf.len() as u64 + c.data.len() as u64 <= inc.total;
        if !same || c.offset != inc.buf.len() as u64 || !fits {
            // A gap (a chunk was dropped) or another transfer: start over when the
            // leader retries.
            self.snapshots.incoming = None;
            return;
        }
        inc.buf.extend_from_slice(&c.data);
        if (inc.buf.len() as u64) < inc.total {
            return;
        }
        let inc = self.snapshots.incoming.take().expect("checked above");
        self.snapshot_received(inc);
    }

    fn snapshot_received(&mut self, inc: Incoming) {
        let bytes = inc.buf.freeze();
        let state = match snapshot::decode_file(&bytes) {
            Ok((meta, payload)) if meta.index == inc.index && meta.term == inc.snapshot_term => {
                match state_from(meta, &payload) {
                    Ok(state) => state,
                    Err(e) => {
                        tracing::warn!(error = %e, "received snapshot does not decode");
                        return;
                    }
                }
            }
            Ok((meta, _)) => {
                tracing::warn!(
                    index = meta.index.0,
                    "received snapshot is not the one announced"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "received snapshot is damaged");
                return;
            }
        };
        let state_membership = state.membership_only();
        if self
            .raft
            .accepts_snapshot(inc.term, inc.index, inc.snapshot_term)
        {
            // Durable before the core resets the log to it.
            if let Err(e) = self.snapshots.dir.save_encoded(&bytes) {
                tracing::error!(error = %e, "cannot save the received snapshot");
                return;
            }
            self.snapshots.on_disk.insert(inc.index);
            self.snapshots.installing = Some((inc.index, state));
        }
        let membership = crate::cluster::entry_from_state(&state_membership, &self.bootstrap);
        let msg = Message {
            from: inc.from,
            to: self.config.node_id,
            term: inc.term,
            body: MessageBody::InstallSnapshot {
                index: inc.index,
                snapshot_term: inc.snapshot_term,
                membership,
            },
        };
        if let Err(e) = self.raft.step(msg) {
            tracing::warn!(error = %e, "snapshot install failed");
        }
    }

    /// The core reset the log to the snapshot at `index`: the state machine follows.
    pub(super) fn restore_installed_snapshot(&mut self, index: LogIndex) {
        let state = match self.snapshots.installing.take() {
            Some((i, state)) if i == index => state,
            _ => match self
                .snapshots
                .dir
                .load(index)
                .map_err(|e| e.to_string())
                .and_then(|(meta, p)| state_from(meta, &p))
            {
                Ok(state) => state,
                Err(e) => {
                    tracing::error!(index = index.0, error = %e, "installed snapshot unreadable");
                    self.storage_failure();
                    return;
                }
            },
        };
        self.state = state;
        self.users_replaced();
        self.placement_changed();
        self.fail_pending_after_reset();
        // Every other snapshot is removed: none may be written after that.
        self.finish_snapshot_saves();
        let dir = &self.snapshots.dir;
        if let Err(e) = dir
            .remove_below(index)
            .and_then(|_| dir.remove_above(index))
        {
            tracing::warn!(error = %e, "could not remove superseded snapshots");
        }
        self.snapshots.on_disk = BTreeSet::from([index]);
        tracing::info!(
            index = index.0,
            "installed the leader's snapshot; catching up from the log after it"
        );
        self.metrics.snapshot_installed();
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use raftmq_store::{Entry, EntryKind, LogConfig};

    use super::*;
    use crate::command::{Command, TopicRetention};

    fn config() -> LogConfig {
        LogConfig {
            segment_bytes: 16 * 1024,
            max_entry_bytes: 4 * 1024,
            ..LogConfig::default()
        }
    }

    /// Entry `i` of the test logs: a topic creation, then 3 KB no-ops (about five
    /// per segment).
    fn entry(i: u64) -> Entry {
        let (kind, body) = if i == 1 {
            let create = Command::CreateTopic {
                name: "t".into(),
                queues: 1,
                retention: TopicRetention::default(),
            };
            (EntryKind::Command, create.encode())
        } else {
            (EntryKind::Noop, Bytes::from(vec![0u8; 3000]))
        };
        Entry {
            index: LogIndex(i),
            term: Term(1),
            kind,
            body,
        }
    }

    #[test]
    fn background_saves_are_durable_once_collected_and_never_run_twice_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(&tmp.path().join("snapshots")).unwrap();
        let saves = Arc::new(BackgroundSaves::default());
        let state = state_at(3);
        let meta = |index: u64| SnapshotMeta {
            index: LogIndex(index),
            term: Term(1),
        };
        saves.start(&dir, meta(3), state.encode_snapshot());
        saves.start(&dir, meta(3), state.encode_snapshot());
        saves.start(&dir, meta(7), state.encode_snapshot());
        saves.wait_idle();
        let mut done: Vec<u64> = saves
            .take_done()
            .into_iter()
            .map(|(index, outcome)| {
                outcome.expect("written");
                index.0
            })
            .collect();
        done.sort_unstable();
        // The second start of index 3 found it running, or ran after it finished.
        done.dedup();
        assert_eq!(done, vec![3, 7]);
        assert!(!saves.is_running(LogIndex(3)));
        for index in [3, 7] {
            let (read, payload) = dir.load(LogIndex(index)).unwrap();
            assert_eq!(read, meta(index));
            assert_eq!(payload, state.encode_snapshot());
        }
        assert!(saves.take_done().is_empty(), "each outcome is taken once");
    }

    /// The state machine after entries `1..=n`.
    fn state_at(n: u64) -> StateMachine {
        let mut state = StateMachine::new();
        for i in 1..=n {
            state.apply(&entry(i));
        }
        state
    }

    /// A synced log of entries `1..=n` in `dir/log`.
    fn log_with(dir: &std::path::Path, n: u64) -> CommitLog {
        let (mut log, _) = CommitLog::open(&dir.join("log"), config()).unwrap();
        for i in 1..=n {
            log.append(&[entry(i)]).unwrap();
        }
        log.sync().unwrap();
        log
    }

    fn save(dir: &SnapshotDir, state: &StateMachine) {
        let meta = SnapshotMeta {
            index: state.applied(),
            term: Term(1),
        };
        dir.save(meta, &state.encode_snapshot()).unwrap();
    }

    #[test]
    fn the_state_comes_from_the_snapshot_the_log_starts_after() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = log_with(tmp.path(), 40);
        let dir = SnapshotDir::open(&tmp.path().join("snapshots")).unwrap();
        let cut = log
            .segment_bases_in(LogIndex(2), LogIndex(40))
            .nth(1)
            .unwrap();
        save(&dir, &state_at(cut.0 - 1));
        log.delete_segments_before(cut).unwrap();

        let (store, restored, on_disk) = recover(log, &dir).unwrap();
        assert_eq!(store.first_index(), cut);
        assert_eq!(RaftLog::term_at(&store, cut.prev()), Some(Term(1)));
        assert_eq!(restored.applied(), cut.prev());
        assert!(
            restored.topic("t").is_some(),
            "the topic came with the snapshot"
        );
        assert_eq!(on_disk, BTreeSet::from([cut.prev()]));
    }

    #[test]
    fn a_snapshot_the_log_does_not_hold_is_deleted_and_the_log_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let log = log_with(tmp.path(), 12);
        let dir = SnapshotDir::open(&tmp.path().join("snapshots")).unwrap();
        // An install a crash interrupted: the leader's snapshot at 30, our log ends at 12.
        save(&dir, &state_at(30));

        let (store, restored, on_disk) = recover(log, &dir).unwrap();
        assert_eq!(
            (store.first_index(), store.last_index()),
            (LogIndex(1), LogIndex(12))
        );
        assert_eq!(
            restored.applied(),
            LogIndex::ZERO,
            "replayed from the start"
        );
        assert!(on_disk.is_empty());
        assert!(dir.list().unwrap().is_empty());
    }

    #[test]
    fn a_damaged_base_snapshot_falls_back_to_a_later_boundary_or_refuses_to_start() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = log_with(tmp.path(), 40);
        let dir = SnapshotDir::open(&tmp.path().join("snapshots")).unwrap();
        let bases: Vec<LogIndex> = log.segment_bases_in(LogIndex(2), LogIndex(40)).collect();
        let (first_cut, later) = (bases[0], bases[1]);
        for b in [first_cut, later] {
            save(&dir, &state_at(b.0 - 1));
        }
        log.delete_segments_before(first_cut).unwrap();
        // Damage the base snapshot.
        let path = dir.file_path(first_cut.prev());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();

        let (store, restored, _) = recover(log, &dir).unwrap();
        assert_eq!(
            store.first_index(),
            later,
            "segments before the later boundary go"
        );
        assert_eq!(restored.applied(), later.prev());

        // With no usable snapshot at all, the node refuses to start and says why.
        let tmp = tempfile::tempdir().unwrap();
        let mut log = log_with(tmp.path(), 40);
        let dir = SnapshotDir::open(&tmp.path().join("snapshots")).unwrap();
        log.delete_segments_before(first_cut).unwrap();
        let err = recover(log, &dir).expect_err("refused");
        assert!(err.to_string().contains("rejoin"), "{err}");
    }
}
