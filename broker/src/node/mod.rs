//! The node task: the one owner of the Raft group, its commit log and the state
//! machine. Connections send it requests over a bounded channel; it drives the pure
//! Raft core, persists in the order the core requires, replicates through the peer
//! transport, applies committed entries and answers.
//!
//! Persistence follows the core's contract ([`crate::raft::Ready`]):
//! 1. entries are written into the log by the core itself (a copy into the mapping);
//! 2. one *persist job* at a time runs on a blocking thread: it syncs the log (group
//!    commit: everything written so far) and then writes the hard state; the
//!    acknowledged-index mark is therefore never ahead of the durable log;
//! 3. when the job is done the node reports `persisted(index, term)` and only then
//!    sends the messages that depended on it (votes, append acknowledgements, the
//!    leader's own acknowledgement).
//!
//! Readies that arrive while a job runs wait for the next job, which covers all of
//! them at once: the slower the disk, the bigger the group commit.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftmq_proto::pb::{self, ErrorCode};
use raftmq_store::{EntryKind, LogIndex, SyncJob, Term};
use tokio::sync::mpsc;

use crate::command;
use crate::config::{BrokerConfig, Durability};
use crate::consumer_group::Coordinator;
use crate::hard_state::HardStateFile;
use crate::log_adapter::RaftStore;
use crate::raft::{
    self, Flow, HardState, Message, MessageBody, NodeId, PersistWork, Persistence, RawNode,
    ReadState, Role,
};
use crate::raft_wire::{PeerIdentity, PeerMessage};
use crate::response::Responder;
use crate::snapshot::SnapshotDir;
use crate::state_machine::{ApplyOutcome, StateMachine};
use crate::transport::PeerTransport;

mod fetch;
mod membership;
mod metadata_voters;
mod observe;
mod raft_groups;
mod reads;
mod replica_moves;
mod requests;
mod snapshots;
mod users;

pub use requests::{MAX_TOPIC_QUEUES, UNKNOWN_OFFSET};
pub use snapshots::{recover, RecoverError};

/// Entries read from the log per apply step.
const APPLY_CHUNK_ENTRIES: usize = 1024;
/// Bytes read from the log per apply step.
const APPLY_CHUNK_BYTES: usize = 8 << 20;
/// Readies handled back to back before the node looks at its inputs again.
const READY_ROUNDS_MAX: usize = 16;
/// Inputs handled before the node processes a `Ready`.
const INPUTS_PER_ROUND: usize = 512;
/// A data group that wrote and applied nothing this long (its leader: twice this
/// long) ticks slower.
const IDLE_AFTER: Duration = Duration::from_secs(1);
/// How often a resting (quiesced, idle) group's task still wakes for its upkeep:
/// status, placement checks, leader balance, retention, metrics.
const RESTING_TICK: Duration = Duration::from_secs(5);
/// How often the node checks the file system's use against `max_disk_use_ratio`.
const DISK_USE_CHECK_INTERVAL: Duration = Duration::from_millis(200);
/// Batches a single fetch response may hold.
const FETCH_MAX_BATCHES: usize = 4096;

/// A request for the node task.
pub enum NodeInput {
    /// A client request (already checked by the connection: sizes, CRCs, names).
    Client {
        /// The request body.
        body: pb::request::Body,
        /// Where the answer goes.
        reply: Responder,
    },
    /// Several client requests for this group, handed over at once and handled
    /// in order (the parts of a multi-queue produce).
    Clients(Vec<(pb::request::Body, Responder)>),
    /// A message from a peer (a Raft message or a piece of a snapshot), with who
    /// sent it.
    Peer((PeerMessage, PeerIdentity)),
    /// A connection on which `NodeId` sent Raft messages closed (its process
    /// stopped, or the link broke): if it leads this group, the group stops idling
    /// (and wakes if quiesced), so that a dead leader is replaced at full speed.
    PeerLinkClosed(crate::raft::NodeId),
    /// The process's failure detector has not heard from this node for a while
    /// (see `crate::liveness`): a quiesced group it leads wakes and elects another.
    PeerUnreachable(crate::raft::NodeId),
    /// The failure detector hears from this node again after reporting it (or
    /// after a connection from it closed): a quiesced group it belongs to wakes to
    /// bring it up to date.
    PeerReachable(crate::raft::NodeId),
    /// The metadata group published a new placement (topics, data groups): the
    /// group checks it now rather than at its next (maybe slow) tick.
    PlacementChanged,
    /// The process is stopping: a group led here hands its leadership to another
    /// replica first (see `GroupDirectory::hand_over`).
    HandOver,
}

/// What a proposal waits for.
enum PendingKind {
    Produce,
    /// Answered as soon as the leader has written the entry (`acks=leader`); never
    /// stored as pending.
    ProduceLeaderAck {
        count: u32,
        /// The offset its first record will get, when the leader can tell.
        base_offset: Option<u64>,
    },
    CreateTopic,
    DeleteTopic,
    InitProducer,
    /// The group's generation when the commit was asked, for the answer.
    CommitOffsets {
        generation: u64,
    },
    OffsetReset(Vec<pb::QueueOffset>),
    Membership(membership::MembershipOp),
    /// The groups whose replicas a `MoveReplicas` request changed.
    MoveReplicas(Vec<pb::GroupReplicas>),
    /// The groups an `AddDataGroups` request adds.
    AddDataGroups(Vec<pb::GroupReplicas>),
    /// A node's advertised listeners.
    Listeners,
    /// A user created, changed or deleted.
    User,
    /// ACLs added or removed.
    Acls,
}

struct Pending {
    term: Term,
    kind: PendingKind,
    reply: Responder,
    deadline: Instant,
}

struct FetchWaiter {
    request: pb::FetchRequest,
    reply: Responder,
    deadline: Instant,
}

/// The result of a persist job, back from the blocking thread.
struct PersistDone {
    sync: Option<Result<raftmq_store::SyncDone, raftmq_store::StoreError>>,
    hard_state_file: HardStateFile,
    hard_state_result: Result<(), crate::hard_state::HardStateError>,
    /// What this job made durable (its hard state already stored), for
    /// [`raft::write_done`].
    work: PersistWork,
}

/// The node task's state.
pub struct Node {
    config: Arc<BrokerConfig>,
    raft: RawNode<RaftStore>,
    state: StateMachine,
    snapshots: snapshots::Snapshots,
    /// Appends would take the disk above `max_disk_use_ratio` (checked every
    /// [`DISK_USE_CHECK_INTERVAL`]).
    disk_use_limited: Option<String>,
    disk_checked_at: Option<Instant>,
    /// The last write, command or applied entry: a data group idle for a while
    /// ticks slower (see [`Node::tick_period`]).
    last_activity: Instant,
    /// Tick at once (something a slow-ticking group must see now happened).
    tick_soon: bool,
    transport: PeerTransport,
    pending: BTreeMap<LogIndex, Pending>,
    fetch_waiters: BTreeMap<(u32, u32), Vec<FetchWaiter>>,
    fetch_deadlines: VecDeque<(Instant, u32, u32)>,
    /// Taken by the persist job while it runs.
    hard_state_file: Option<HardStateFile>,
    last_hard_state: HardState,
    /// What waits to be made durable, and whether a persist job runs.
    persistence: Persistence,
    persist_tx: mpsc::UnboundedSender<PersistDone>,
    persist_rx: mpsc::UnboundedReceiver<PersistDone>,
    storage_failed: bool,
    groups: Coordinator,
    started: Instant,
    /// Index of the first entry of this node's current leadership (its Noop): until
    /// it is applied the state machine may lag what earlier leaders committed, so
    /// the leader answers "not ready" instead of stale state.
    term_start: LogIndex,
    /// Per (topic id, queue): where the batches this leader has appended but not
    /// yet applied end, so that `acks=leader` answers carry their offsets (see
    /// `requests.rs`). Cleared when the role changes.
    projected: std::collections::HashMap<(u32, u32), requests::Projection>,
    /// Requests waiting for a read index or for the state machine to catch up.
    waiting: reads::WaitingRequests,
    metrics: observe::NodeMetrics,
    /// The configuration a new cluster starts from (no members for a joining node).
    bootstrap: crate::raft::MembershipEntry,
    /// This data directory's identity (incarnation, cluster id).
    identity: crate::cluster::NodeIdentity,
    /// The membership in effect and the peers heard from.
    members: membership::MembershipState,
    /// Which Raft group this task drives, and its part in the process's groups.
    raft_groups: raft_groups::RaftGroups,
    /// Users (metadata group).
    users: users::UserState,
}

impl Node {
    /// Builds the node around an opened log, hard state and the state machine
    /// restored by [`recover`] (with the snapshot files it found).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Arc<BrokerConfig>,
        identity: crate::cluster::NodeIdentity,
        bootstrap: crate::raft::MembershipEntry,
        raft: RawNode<RaftStore>,
        hard_state_file: HardStateFile,
        hard_state: HardState,
        transport: PeerTransport,
        restored: (
            StateMachine,
            SnapshotDir,
            std::collections::BTreeSet<LogIndex>,
        ),
    ) -> Node {
        let (persist_tx, persist_rx) = mpsc::unbounded_channel();
        let (state, snapshot_dir, on_disk) = restored;
        let entry = raft.membership_entry().clone();
        let view = crate::cluster::ClusterView::from_entry(&entry, &config.peers);
        let mut node = Node {
            raft,
            state,
            snapshots: snapshots::Snapshots::new(snapshot_dir, on_disk),
            disk_use_limited: None,
            users: users::UserState::default(),
            disk_checked_at: None,
            last_activity: Instant::now(),
            tick_soon: false,
            transport,
            pending: BTreeMap::new(),
            fetch_waiters: BTreeMap::new(),
            fetch_deadlines: VecDeque::new(),
            hard_state_file: Some(hard_state_file),
            last_hard_state: hard_state,
            persistence: Persistence::default(),
            persist_tx,
            persist_rx,
            storage_failed: false,
            groups: Coordinator::new(),
            started: Instant::now(),
            term_start: LogIndex(u64::MAX),
            projected: std::collections::HashMap::new(),
            waiting: reads::WaitingRequests::default(),
            metrics: observe::NodeMetrics::disabled(),
            bootstrap,
            identity,
            members: membership::MembershipState::new(view),
            raft_groups: raft_groups::RaftGroups::new(
                crate::directory::METADATA_GROUP,
                crate::directory::GroupDirectory::new().0,
            ),
            config,
        };
        node.membership_changed(&entry);
        node
    }

    /// The time to the next tick. A data group that has written and applied
    /// nothing for a while (a follower after 1 s, its leader after 2 s, so the
    /// leader slows down last) ticks `idle_tick_factor` times slower: its heartbeats
    /// and election timeouts stretch alike, so an idle group costs that much less,
    /// and fails over that much slower. Raft's safety does not depend on timing;
    /// a write makes the leader fast at once, and its followers as they apply it.
    /// The metadata group always ticks at full speed.
    ///
    /// A quiesced group (see `raft/quiesce.rs`) with no request waiting rests:
    /// its Raft core needs no ticks at all, so the task wakes only for its upkeep
    /// every [`RESTING_TICK`], or for the next long-poll fetch's deadline. Any input
    /// that wakes the core re-arms the short period (see [`Node::run`]).
    fn tick_period(&self, now: Instant) -> Duration {
        let tick = Duration::from_millis(self.config.tick_ms);
        if self.resting() {
            let mut period = RESTING_TICK;
            if let Some(&(deadline, _, _)) = self.fetch_deadlines.front() {
                period = period.min(deadline.saturating_duration_since(now).max(tick));
            }
            return period;
        }
        let factor = self.config.idle_tick_factor.max(1);
        if factor == 1 || self.group_id() == crate::directory::METADATA_GROUP {
            return tick;
        }
        let quiet = if self.raft.role() == Role::Leader {
            IDLE_AFTER * 2
        } else {
            IDLE_AFTER
        };
        if now.duration_since(self.last_activity) >= quiet {
            tick * factor
        } else {
            tick
        }
    }

    /// Quiesced, with no proposal or read waiting, and not leading where another
    /// node should (leader balancing runs on ticks: a group that rested before
    /// handing its leadership over would hand it over seconds later, in the middle
    /// of whatever load has come since).
    fn resting(&self) -> bool {
        self.raft.is_quiesced()
            && self.pending.is_empty()
            && self.waiting.len() == 0
            && !self.leading_in_place_of_preferred()
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn queue_counts(&self) -> BTreeMap<String, u32> {
        self.state
            .topics()
            .map(|t| (t.name.clone(), t.queues.len() as u32))
            .collect()
    }

    /// Runs until `inbox` closes (every connection and the listener are gone), then
    /// makes everything written durable and returns.
    pub async fn run(mut self, mut inbox: mpsc::Receiver<NodeInput>) -> NodeExit {
        let tick = Duration::from_millis(self.config.tick_ms);
        let ticker = tokio::time::sleep(tick);
        tokio::pin!(ticker);
        // The ticker is armed for a resting period (see `tick_period`), until then.
        let mut resting_until: Option<Instant> = None;
        let mut async_sync =
            tokio::time::interval(Duration::from_millis(self.config.async_sync_interval_ms));
        async_sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let async_mode = self.config.durability == Durability::Async;
        loop {
            tokio::select! {
                input = inbox.recv() => {
                    let Some(input) = input else { break };
                    self.handle(input);
                    for _ in 1..INPUTS_PER_ROUND {
                        match inbox.try_recv() {
                            Ok(input) => self.handle(input),
                            Err(_) => break,
                        }
                    }
                }
                done = self.persist_rx.recv() => {
                    let done = done.expect("the node holds a sender");
                    self.persist_done(done);
                }
                _ = &mut ticker => {
                    self.raft.tick();
                    if self.raft_groups.directory.handing_over() {
                        self.hand_over_leadership();
                    }
                    let now = Instant::now();
                    let next = now + self.tick_period(now);
                    ticker.as_mut().reset(tokio::time::Instant::from_std(next));
                    resting_until = (next > now + tick * self.config.idle_tick_factor.max(1))
                        .then_some(next);
                    self.membership_upkeep(now);
                    self.raft_groups_upkeep(now);
                    self.expire(now);
                    self.expire_waiting(now);
                    self.observe(now);
                    if self.raft.role() == Role::Leader
                        && now.duration_since(self.last_activity) < IDLE_AFTER
                    {
                        // Only produce requests read it (they check too): idle
                        // groups and followers spare the file-system call.
                        self.check_disk_use(now);
                    }
                    self.maybe_run_retention(now);
                    let counts = self.queue_counts();
                    for (group, member) in self.groups.expire(self.now_ms(), &counts) {
                        tracing::info!(%group, %member, "member session timed out");
                    }
                }
                _ = async_sync.tick(), if async_mode => {
                    self.background_sync();
                }
            }
            self.process_ready();
            if self.retiring() {
                break;
            }
            if std::mem::take(&mut self.tick_soon) {
                ticker.as_mut().reset(tokio::time::Instant::now());
                resting_until = None;
            } else if let Some(until) = resting_until {
                // Woken (a message, a request, a new long poll): tick sooner.
                let now = Instant::now();
                let next = now + self.tick_period(now);
                if next < until {
                    ticker.as_mut().reset(tokio::time::Instant::from_std(next));
                    resting_until = self.resting().then_some(next);
                }
            }
        }
        if self.retiring() {
            self.raft_groups.directory.forget(self.group_id());
            self.shutdown().await;
            return NodeExit::Retired;
        }
        self.shutdown().await;
        NodeExit::Stopped
    }

    fn handle(&mut self, input: NodeInput) {
        match input {
            NodeInput::Peer(_) if self.storage_failed => {}
            NodeInput::Peer((msg, identity)) => {
                let (from, kind) = match &msg {
                    PeerMessage::Raft(m) => (m.from, membership::PeerKind::of(&m.body)),
                    PeerMessage::SnapshotChunk(c) => (c.from, membership::PeerKind::Other),
                    PeerMessage::Refused {
                        from,
                        reason,
                        removed_at,
                    } => {
                        return self.refused_by(*from, reason, *removed_at);
                    }
                    // Noted by the connection (node-level liveness); nothing for a group.
                    PeerMessage::Ping { .. } => return,
                };
                if !self.admit_peer(from, identity, kind) {
                    return;
                }
                match msg {
                    PeerMessage::Raft(msg) => {
                        self.snapshots.heard_from(msg.from, Instant::now());
                        if let Err(e) = self.raft.step(msg) {
                            tracing::debug!(error = %e, "raft message refused");
                            self.check_log_usable();
                        }
                    }
                    PeerMessage::SnapshotChunk(chunk) => self.receive_snapshot_chunk(chunk),
                    PeerMessage::Refused { .. } | PeerMessage::Ping { .. } => {
                        unreachable!("handled above")
                    }
                }
            }
            NodeInput::PeerLinkClosed(peer) => {
                if self.raft.leader() == Some(peer) && self.raft.role() != Role::Leader {
                    tracing::debug!(
                        leader = peer.0,
                        "link from the leader closed: ticking at full speed"
                    );
                    self.last_activity = Instant::now();
                }
                self.raft.peer_unreachable(peer);
            }
            NodeInput::PeerUnreachable(peer) => {
                if self.raft.leader() == Some(peer) && self.raft.role() != Role::Leader {
                    tracing::debug!(leader = peer.0, "the leader's node is silent");
                    self.last_activity = Instant::now();
                }
                self.raft.peer_unreachable(peer);
            }
            NodeInput::PeerReachable(peer) => self.raft.peer_reachable(peer),
            NodeInput::PlacementChanged => self.placement_published(),
            NodeInput::HandOver => {
                self.tick_soon = true;
                self.hand_over_leadership();
            }
            NodeInput::Client { body, reply } => {
                if !matches!(body, pb::request::Body::Fetch(_)) {
                    self.last_activity = Instant::now();
                }
                self.handle_client(body, reply)
            }
            NodeInput::Clients(requests) => {
                for (body, reply) in requests {
                    self.handle(NodeInput::Client { body, reply });
                }
            }
        }
    }

    fn not_leader(&self) -> pb::Error {
        let leader = self.raft.leader();
        let address = leader
            .and_then(|id| self.member_address(id))
            .map(|a| a.to_string())
            .unwrap_or_default();
        pb::Error {
            code: ErrorCode::NotLeader as i32,
            message: match leader {
                Some(id) => format!("node {} is the leader", id.0),
                None => "no leader is known yet".to_string(),
            },
            leader_address: address,
            ..pb::Error::default()
        }
    }

    /// A leader whose state machine has caught up with everything committed before
    /// its term.
    fn leader_ready(&self) -> bool {
        self.raft.role() == Role::Leader && self.state.applied() >= self.term_start
    }

    /// Handles readies until the core has nothing more (bounded): handling one can
    /// produce the next at once (a self-acknowledgement once the log is persisted, in
    /// `async` durability), which must not wait for the next input or tick.
    fn process_ready(&mut self) {
        for _ in 0..READY_ROUNDS_MAX {
            if !self.raft.has_ready() {
                return;
            }
            let Ok(()) = raft::handle_ready(self);
        }
    }

    /// A leader that steps down cannot tell whether its uncommitted proposals will
    /// commit (a new leader may keep them): it answers them now, as "retry", instead
    /// of holding them until their timeout. Idempotent producers retry with the same
    /// sequence, so a batch that did commit is not stored twice.
    fn fail_pending_on_step_down(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        for (_, p) in pending {
            // TIMEOUT is the code that says "outcome unknown"; the retry finds the
            // new leader through this node's NOT_LEADER answer.
            p.reply.error(pb::Error::new(
                ErrorCode::Timeout,
                "leadership was lost before the request committed: its outcome is unknown; \
                 retry (idempotent producers are deduplicated)",
            ));
        }
    }

    fn send(&mut self, msg: Message) {
        if self.storage_failed {
            return;
        }
        if msg.to == self.config.node_id {
            if let Err(e) = self.raft.step(msg) {
                tracing::debug!(error = %e, "self message refused");
            }
        } else if let MessageBody::InstallSnapshot { index, .. } = msg.body {
            self.send_snapshot(msg.to, msg.term, index);
        } else {
            self.transport.send(msg);
        }
    }

    /// A log that failed a write or a sync must not be acknowledged from: the node
    /// isolates itself.
    fn check_log_usable(&mut self) {
        if self.raft.log().is_poisoned() {
            self.storage_failure();
        }
    }

    /// Starts a persist job if none runs and something is queued.
    fn start_persist_job(&mut self) {
        if self.persistence.is_idle() {
            return;
        }
        self.check_log_usable();
        if self.storage_failed {
            // Nothing may be acknowledged from a log that cannot be synced.
            self.persistence.drop_queued();
            return;
        }
        if self.hard_state_file.is_none() {
            return; // a job is running; the queue waits for the next one
        }
        let Some(mut work) = self.persistence.start() else {
            return;
        };
        let mut hard_state_file = self.hard_state_file.take().expect("checked above");
        let sync_job: Option<SyncJob> = if work.unsynced.is_some() {
            self.raft.log_mut().begin_sync()
        } else {
            None
        };
        let hard_state = work.hard_state.take();
        if let Some(hs) = hard_state {
            self.last_hard_state = hs;
        }
        let tx = self.persist_tx.clone();
        let (fsync_log, fsync_hard_state) = self.metrics.fsync_histograms();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let sync = sync_job.map(SyncJob::run);
            if sync.is_some() {
                fsync_log.record(started.elapsed());
            }
            let sync_ok = !matches!(sync, Some(Err(_)));
            // The hard state goes after the log: the acknowledged mark in it must
            // never be ahead of what is durable.
            let started = Instant::now();
            let hard_state_result = match hard_state {
                Some(hs) if sync_ok => hard_state_file.store(&hs),
                _ => Ok(()),
            };
            if hard_state.is_some() && sync_ok {
                fsync_hard_state.record(started.elapsed());
            }
            let _ = tx.send(PersistDone {
                sync,
                hard_state_file,
                hard_state_result,
                work,
            });
        });
    }

    fn persist_done(&mut self, done: PersistDone) {
        self.hard_state_file = Some(done.hard_state_file);
        let mut failed = false;
        if let Some(sync) = done.sync {
            match sync {
                Ok(sync) => self.raft.log_mut().finish_sync(sync),
                Err(e) => {
                    tracing::error!(error = %e, "log sync failed");
                    failed = true;
                }
            }
        }
        if let Err(e) = done.hard_state_result {
            tracing::error!(error = %e, "hard state write failed");
            failed = true;
        }
        if failed {
            self.storage_failure();
            return;
        }
        // A truncation meanwhile lowers what the job covered.
        let synced = self.raft.log().synced_index();
        let Ok(()) = raft::write_done(self, done.work, synced);
        self.start_persist_job();
        self.process_ready();
    }

    /// In `async` durability the log counts as persisted once written; only term and
    /// vote changes, and a lowered recovery mark, are synced before the messages that
    /// depend on them.
    fn persist_async_mode(&mut self) {
        let Some(mut work) = self.persistence.start() else {
            return;
        };
        if let Some(mut hs) = work.hard_state.take() {
            // The acknowledged mark may only name what is on disk.
            hs.acked_index = hs.acked_index.min(self.raft.log().synced_index());
            // A lowered mark (entries truncated, or discarded by a snapshot install)
            // is written too: a crash must not bring back a mark above the log.
            let changed = hs.term != self.last_hard_state.term
                || hs.vote != self.last_hard_state.vote
                || hs.acked_index < self.last_hard_state.acked_index;
            if changed {
                if let Some(file) = self.hard_state_file.as_mut() {
                    if let Err(e) = file.store(&hs) {
                        tracing::error!(error = %e, "hard state write failed");
                        self.storage_failure();
                        return;
                    }
                }
                self.last_hard_state = hs;
            }
        }
        // What was written counts as persisted.
        let Ok(()) = raft::write_done(self, work, LogIndex(u64::MAX));
    }

    fn background_sync(&mut self) {
        if let Err(e) = self.raft.log_mut().sync() {
            tracing::error!(error = %e, "periodic log sync failed");
            self.storage_failure();
        }
    }

    /// The log cannot be written: the node isolates itself (drops all Raft traffic, so a
    /// leader loses its quorum and steps down through check-quorum, and the others
    /// elect a new leader) and refuses writes. Acknowledged data is on the other
    /// replicas; the node rejoins when restarted on a repaired disk.
    fn storage_failure(&mut self) {
        if !self.storage_failed {
            tracing::error!("storage failed: this node stops accepting writes");
        }
        self.storage_failed = true;
        self.persistence.drop_queued();
    }

    fn apply(&mut self, from: LogIndex, to: LogIndex) {
        let mut next = from;
        let mut touched: Vec<(u32, u32)> = Vec::new();
        let boundaries = self.segment_boundaries(from, to);
        while next <= to {
            let want = (to.0 - next.0 + 1) as usize;
            let entries = match self.raft.log().entries(
                next,
                want.min(APPLY_CHUNK_ENTRIES),
                APPLY_CHUNK_BYTES,
            ) {
                Ok(entries) => entries,
                Err(e) => {
                    // Committed entries are in the log by construction; failing to read
                    // them means the disk is failing under us.
                    tracing::error!(index = next.0, error = %e, "cannot read committed entries");
                    self.storage_failure();
                    return;
                }
            };
            assert!(!entries.is_empty(), "committed entries exist");
            for entry in entries {
                if entry.index > to {
                    break;
                }
                if entry.index <= self.state.applied() {
                    next = entry.index.next();
                    continue;
                }
                if boundaries.binary_search(&entry.index).is_ok() {
                    self.save_boundary_snapshot(entry.index.prev());
                }
                let outcome = self.state.apply(&entry);
                if matches!(
                    outcome,
                    ApplyOutcome::TopicCreated
                        | ApplyOutcome::TopicDeleted
                        | ApplyOutcome::DataGroupsSet
                ) {
                    self.placement_changed();
                }
                if entry.kind == EntryKind::Membership {
                    self.membership_applied(&entry.body);
                }
                if entry.kind == EntryKind::Messages {
                    if let ApplyOutcome::Produced { .. } = outcome {
                        if let Ok(m) = command::decode_messages(&entry.body) {
                            if !touched.contains(&(m.topic_id, m.queue)) {
                                touched.push((m.topic_id, m.queue));
                            }
                        }
                    }
                }
                self.answer(entry.index, entry.term, outcome);
                next = entry.index.next();
            }
        }
        self.raft.applied(to);
        for (topic_id, queue) in touched {
            self.wake_fetchers(topic_id, queue);
        }
        self.publish_users();
    }

    /// The log was reset to an installed snapshot: nothing waiting can be answered
    /// from the discarded log.
    fn fail_pending_after_reset(&mut self) {
        for (_, pending) in std::mem::take(&mut self.pending) {
            pending.reply.error(self.not_leader());
        }
        self.groups.clear();
    }

    /// Refreshes whether appends would take the disk above the configured limit;
    /// produce requests are refused meanwhile (retention may free space).
    pub(super) fn check_disk_use(&mut self, now: Instant) {
        // A file-system call: a few times a second is enough (the store checks
        // again before it creates a segment), and a node may run many groups.
        if !due(&mut self.disk_checked_at, now, DISK_USE_CHECK_INTERVAL) {
            return;
        }
        let limited = match self.raft.log().check_disk_use_limit() {
            Ok(()) => None,
            Err(e) if e.is_disk_use_limit() => Some(e.to_string()),
            Err(e) => {
                tracing::debug!(error = %e, "disk use unknown");
                None
            }
        };
        if limited.is_some() != self.disk_use_limited.is_some() {
            match &limited {
                Some(why) => tracing::warn!(reason = %why, "refusing produce requests"),
                None => tracing::info!("disk use back below the limit: accepting produce requests"),
            }
        }
        self.disk_use_limited = limited;
    }

    fn answer(&mut self, index: LogIndex, term: Term, outcome: ApplyOutcome) {
        // Proposals below this index that are still waiting were replaced by another
        // leader's entries; their entries were never committed.
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() >= index {
                break;
            }
            let pending = entry.remove();
            pending.reply.error(self.not_leader());
        }
        let Some(pending) = self.pending.remove(&index) else {
            return;
        };
        if pending.term != term {
            return pending.reply.error(self.not_leader());
        }
        use pb::response::Body as R;
        let reply = pending.reply;
        match (pending.kind, outcome) {
            (_, ApplyOutcome::Rejected(code, message)) => {
                reply.error(pb::Error::new(code, message))
            }
            (PendingKind::Produce, ApplyOutcome::Produced { base_offset, count }) => {
                reply.ok(R::Produce(pb::ProduceResponse { base_offset, count }))
            }
            (PendingKind::Produce, ApplyOutcome::Duplicate { base_offset, count }) => reply
                .error_with_body(
                    pb::Error::new(
                        ErrorCode::DuplicateSequence,
                        "batch already stored (idempotent retry)",
                    ),
                    R::Produce(pb::ProduceResponse {
                        base_offset: base_offset.unwrap_or(u64::MAX),
                        count,
                    }),
                ),
            (PendingKind::CreateTopic, ApplyOutcome::TopicCreated) => {
                reply.ok(R::CreateTopic(pb::CreateTopicResponse {}))
            }
            (PendingKind::DeleteTopic, ApplyOutcome::TopicDeleted) => {
                reply.ok(R::DeleteTopic(pb::DeleteTopicResponse {}))
            }
            (PendingKind::InitProducer, ApplyOutcome::ProducerId(id)) => {
                reply.ok(R::InitProducer(pb::InitProducerResponse {
                    producer_id: id,
                    producer_epoch: 0,
                }))
            }
            (PendingKind::CommitOffsets { generation }, ApplyOutcome::OffsetsCommitted) => {
                reply.ok(R::OffsetCommit(pb::OffsetCommitResponse { generation }))
            }
            (PendingKind::OffsetReset(offsets), ApplyOutcome::OffsetsCommitted) => {
                reply.ok(R::OffsetReset(pb::OffsetResetResponse { offsets }))
            }
            (PendingKind::Membership(op), ApplyOutcome::MembershipChanged) => {
                reply.ok(self.membership_answer(op, index.0))
            }
            (PendingKind::MoveReplicas(moved), ApplyOutcome::DataGroupsSet) => {
                reply.ok(R::MoveReplicas(pb::MoveReplicasResponse { moved }))
            }
            (PendingKind::AddDataGroups(added), ApplyOutcome::DataGroupsSet) => {
                reply.ok(R::AddDataGroups(pb::AddDataGroupsResponse { added }))
            }
            (PendingKind::Listeners, ApplyOutcome::ListenersSet) => {
                reply.ok(R::AdvertiseListeners(pb::AdvertiseListenersResponse {}))
            }
            (PendingKind::User, ApplyOutcome::UserUpserted(created)) => {
                reply.ok(R::UpsertUser(pb::UpsertUserResponse { created }))
            }
            (PendingKind::User, ApplyOutcome::UserDeleted) => {
                reply.ok(R::DeleteUser(pb::DeleteUserResponse {}))
            }
            (PendingKind::Acls, ApplyOutcome::AclsCreated) => {
                reply.ok(R::CreateAcls(pb::CreateAclsResponse {}))
            }
            (PendingKind::Acls, ApplyOutcome::AclsDeleted(deleted)) => {
                reply.ok(R::DeleteAcls(pb::DeleteAclsResponse { deleted }))
            }
            (_, other) => {
                tracing::error!(?other, index = index.0, "unexpected apply outcome");
                reply.error(pb::Error::new(
                    ErrorCode::InvalidRequest,
                    format!(
                        "internal error: log entry {} applied with an outcome this request \
                         does not expect; the change may have taken effect (check before \
                         retrying) and the broker's log has the details",
                        index.0
                    ),
                ))
            }
        }
    }

    async fn shutdown(mut self) {
        // Let a running persist job finish, then sync whatever is left.
        if self.hard_state_file.is_none() {
            if let Some(done) = self.persist_rx.recv().await {
                self.hard_state_file = Some(done.hard_state_file);
                if let Some(Ok(sync)) = done.sync {
                    self.raft.log_mut().finish_sync(sync);
                }
            }
        }
        if let Err(e) = self.raft.log_mut().sync() {
            tracing::error!(error = %e, "final sync failed");
        }
        self.finish_snapshot_saves();
        for (_, pending) in std::mem::take(&mut self.pending) {
            pending.reply.error(pb::Error::new(
                ErrorCode::ShuttingDown,
                "broker is shutting down",
            ));
        }
        self.fail_waiting();
        tracing::info!(
            last_index = self.raft.log().last_index().0,
            "node stopped, log synced"
        );
    }
}

/// Why a node task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeExit {
    /// The process shuts down (or the directory dropped the group's inbox).
    Stopped,
    /// The replica was moved to other nodes: its files are to be deleted.
    Retired,
}

/// The group task is the broker's driver of its replica's Ready loop.
impl raft::Driver for Node {
    type Log = RaftStore;
    type Error = std::convert::Infallible;

    fn raft(&mut self) -> &mut RawNode<RaftStore> {
        &mut self.raft
    }

    fn persistence(&mut self) -> &mut Persistence {
        &mut self.persistence
    }

    fn isolated(&self) -> bool {
        self.storage_failed
    }

    fn role_changed(
        &mut self,
        role: Role,
        term: Term,
        leader: Option<NodeId>,
    ) -> Result<(), Self::Error> {
        let leader = leader.map_or_else(|| "none".to_string(), |l| l.0.to_string());
        tracing::info!(role = %role_name(role), term = term.0, %leader, "raft role changed");
        self.snapshots.role_changed();
        self.metrics.role_changed(role, term);
        self.projected.clear();
        if role == Role::Leader {
            self.term_start = self.raft.log().last_index();
            self.groups
                .lead(format!("n{}t{}", self.config.node_id.0, term.0));
        } else {
            // Members rejoin the new leader; their committed offsets are in the log.
            self.groups.clear();
            self.term_start = LogIndex(u64::MAX);
            self.fail_pending_on_step_down();
        }
        self.leadership_changed();
        // Metadata answers name the new leader at once.
        self.publish_status();
        Ok(())
    }

    fn membership_changed(
        &mut self,
        entry: &crate::raft::MembershipEntry,
    ) -> Result<(), Self::Error> {
        Node::membership_changed(self, entry);
        // Members' addresses are part of the placement the data groups use.
        self.placement_changed();
        Ok(())
    }

    fn send(&mut self, msg: Message) -> Result<(), Self::Error> {
        Node::send(self, msg);
        Ok(())
    }

    fn restore_snapshot(&mut self, index: LogIndex, _term: Term) -> Result<Flow, Self::Error> {
        self.restore_installed_snapshot(index);
        Ok(if self.storage_failed {
            Flow::Stop
        } else {
            Flow::Continue
        })
    }

    fn persist(&mut self) -> Result<Flow, Self::Error> {
        if self.config.durability == Durability::Async {
            self.persist_async_mode();
        } else {
            self.start_persist_job();
        }
        Ok(Flow::Continue)
    }

    fn apply(&mut self, from: LogIndex, to: LogIndex) -> Result<(), Self::Error> {
        self.last_activity = Instant::now();
        Node::apply(self, from, to);
        Ok(())
    }

    fn read_states(&mut self, states: Vec<ReadState>) -> Result<(), Self::Error> {
        Node::read_states(self, states);
        self.release_applied();
        Ok(())
    }
}

/// The role as `cluster status` shows it.
/// Whether periodic work last done at `at` is due again at `now` (every `every`);
/// if so, records `now` as its last run.
fn due(at: &mut Option<Instant>, now: Instant, every: Duration) -> bool {
    if at.is_some_and(|t| now.duration_since(t) < every) {
        return false;
    }
    *at = Some(now);
    true
}

pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::PreCandidate => "pre-candidate",
    }
}
