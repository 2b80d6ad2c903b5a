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

use bytes::Bytes;
use raftmq_proto::pb::{self, ErrorCode};
use raftmq_store::{CommitLog, EntryKind, LogIndex, SyncJob, Term};
use tokio::sync::mpsc;

use crate::command::{self, Command, CommittedOffset};
use crate::config::{BrokerConfig, Durability};
use crate::group::{Coordinator, GroupError, Strategy, TopicQueue};
use crate::hard_state::HardStateFile;
use crate::raft::{HardState, Message, ProposeError, RawNode, Role};
use crate::response::Responder;
use crate::state_machine::{ApplyOutcome, QueueState, StateMachine};
use crate::transport::PeerTransport;

/// Entries read from the log per apply step.
const APPLY_CHUNK_ENTRIES: usize = 1024;
/// Bytes read from the log per apply step.
const APPLY_CHUNK_BYTES: usize = 8 << 20;
/// Inputs handled before the node processes a `Ready`.
const INPUTS_PER_ROUND: usize = 512;
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
    /// A message from a peer.
    Raft(Message),
}

/// What a proposal waits for.
enum PendingKind {
    Produce,
    CreateTopic,
    DeleteTopic,
    InitProducer,
    CommitOffsets,
    OffsetReset(Vec<pb::QueueOffset>),
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
    /// What this job made durable, for `persisted`.
    unsynced: Option<(LogIndex, Term)>,
    messages: Vec<Message>,
}

/// Work queued for the next persist job.
#[derive(Default)]
struct PersistQueue {
    hard_state: Option<HardState>,
    unsynced: Option<(LogIndex, Term)>,
    messages: Vec<Message>,
}

impl PersistQueue {
    fn is_empty(&self) -> bool {
        self.hard_state.is_none() && self.unsynced.is_none() && self.messages.is_empty()
    }
}

/// The node task's state.
pub struct Node {
    config: Arc<BrokerConfig>,
    raft: RawNode<CommitLog>,
    state: StateMachine,
    transport: PeerTransport,
    pending: BTreeMap<LogIndex, Pending>,
    fetch_waiters: BTreeMap<(u32, u32), Vec<FetchWaiter>>,
    fetch_deadlines: VecDeque<(Instant, u32, u32)>,
    hard_state_file: Option<HardStateFile>,
    last_hard_state: HardState,
    queued: PersistQueue,
    persist_tx: mpsc::UnboundedSender<PersistDone>,
    persist_rx: mpsc::UnboundedReceiver<PersistDone>,
    storage_failed: bool,
    groups: Coordinator,
    started: Instant,
    /// Index of the first entry of this node's current leadership (its Noop): until
    /// it is applied the state machine may lag what earlier leaders committed, so
    /// the leader answers "not ready" instead of stale state.
    term_start: LogIndex,
}

impl Node {
    /// Builds the node around an opened log and hard state.
    pub fn new(
        config: Arc<BrokerConfig>,
        raft: RawNode<CommitLog>,
        hard_state_file: HardStateFile,
        hard_state: HardState,
        transport: PeerTransport,
    ) -> Node {
        let (persist_tx, persist_rx) = mpsc::unbounded_channel();
        Node {
            config,
            raft,
            state: StateMachine::new(),
            transport,
            pending: BTreeMap::new(),
            fetch_waiters: BTreeMap::new(),
            fetch_deadlines: VecDeque::new(),
            hard_state_file: Some(hard_state_file),
            last_hard_state: hard_state,
            queued: PersistQueue::default(),
            persist_tx,
            persist_rx,
            storage_failed: false,
            groups: Coordinator::new(),
            started: Instant::now(),
            term_start: LogIndex(u64::MAX),
        }
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
    pub async fn run(mut self, mut inbox: mpsc::Receiver<NodeInput>) {
        let mut ticker = tokio::time::interval(Duration::from_millis(self.config.tick_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                _ = ticker.tick() => {
                    self.raft.tick();
                    self.expire(Instant::now());
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
        }
        self.shutdown().await;
    }

    fn handle(&mut self, input: NodeInput) {
        match input {
            NodeInput::Raft(_) if self.storage_failed => {}
            NodeInput::Raft(msg) => {
                if let Err(e) = self.raft.step(msg) {
                    tracing::debug!(error = %e, "raft message refused");
                }
            }
            NodeInput::Client { body, reply } => self.handle_client(body, reply),
        }
    }

    fn not_leader(&self) -> pb::Error {
        let leader = self.raft.leader();
        let address = leader
            .and_then(|id| self.config.address_of(id))
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

    fn handle_client(&mut self, body: pb::request::Body, reply: Responder) {
        use pb::request::Body as B;
        if self.raft.role() == Role::Leader
            && !self.leader_ready()
            && !matches!(body, B::ClusterStatus(_))
        {
            let mut e = self.not_leader();
            e.message = "the new leader is applying earlier entries; retry shortly".into();
            return reply.error(e);
        }
        match body {
            B::Produce(req) => self.produce(req, reply),
            B::Fetch(req) => self.fetch(req, reply),
            B::CreateTopic(req) => {
                if self.state.topic(&req.name).is_some() {
                    return reply.error(pb::Error::new(
                        ErrorCode::TopicExists,
                        format!("topic {:?} exists", req.name),
                    ));
                }
                if req.queues == 0 || req.queues > 4096 {
                    return reply.error(pb::Error::new(
                        ErrorCode::InvalidRequest,
                        "a topic has 1 to 4096 queues",
                    ));
                }
                let command = Command::CreateTopic {
                    name: req.name,
                    queues: req.queues,
                };
                self.propose_command(command, PendingKind::CreateTopic, reply);
            }
            B::DeleteTopic(req) => {
                if self.state.topic(&req.name).is_none() {
                    return reply.error(unknown_topic(&req.name));
                }
                let command = Command::DeleteTopic { name: req.name };
                self.propose_command(command, PendingKind::DeleteTopic, reply);
            }
            B::InitProducer(_) => {
                self.propose_command(Command::InitProducer, PendingKind::InitProducer, reply);
            }
            B::Metadata(req) => reply.ok(pb::response::Body::Metadata(self.metadata(&req))),
            B::ListOffsets(req) => self.list_offsets(req, reply),
            B::ClusterStatus(_) => {
                reply.ok(pb::response::Body::ClusterStatus(self.cluster_status()))
            }
            B::TransferLeader(req) => {
                if self.raft.role() != Role::Leader {
                    return reply.error(self.not_leader());
                }
                match self
                    .raft
                    .transfer_leadership(crate::raft::NodeId(req.to_node_id))
                {
                    Ok(()) => reply.ok(pb::response::Body::TransferLeader(
                        pb::TransferLeaderResponse {},
                    )),
                    Err(e) => reply.error(pb::Error::new(ErrorCode::InvalidRequest, e.to_string())),
                }
            }
            B::OffsetCommit(req) => self.offset_commit(req, reply),
            B::OffsetFetch(req) => {
                let stored = self.state.group_offsets(&req.group);
                let offsets = stored
                    .into_iter()
                    .flat_map(|m| m.iter())
                    .filter(|((topic, queue), _)| {
                        req.queues.is_empty()
                            || req
                                .queues
                                .iter()
                                .any(|q| &q.topic == topic && q.queue == *queue)
                    })
                    .map(|((topic, queue), offset)| pb::QueueOffset {
                        topic: topic.clone(),
                        queue: *queue,
                        offset: *offset,
                    })
                    .collect();
                reply.ok(pb::response::Body::OffsetFetch(pb::OffsetFetchResponse {
                    offsets,
                }))
            }
            B::ListGroups(_) => {
                let mut groups: Vec<String> = self.state.groups().cloned().collect();
                groups.extend(self.groups.group_names().cloned());
                groups.sort();
                groups.dedup();
                reply.ok(pb::response::Body::ListGroups(pb::ListGroupsResponse {
                    groups,
                }))
            }
            B::JoinGroup(req) => {
                if self.raft.role() != Role::Leader {
                    return reply.error(self.not_leader());
                }
                let strategy = match pb::AssignmentStrategy::try_from(req.strategy) {
                    Ok(pb::AssignmentStrategy::Range) => Strategy::Range,
                    Ok(pb::AssignmentStrategy::RoundRobin) => Strategy::RoundRobin,
                    Ok(pb::AssignmentStrategy::Sticky) => Strategy::Sticky,
                    Err(_) => {
                        return reply.error(pb::Error::new(
                            ErrorCode::InvalidRequest,
                            "unknown strategy",
                        ))
                    }
                };
                if let Some(missing) = req.topics.iter().find(|t| self.state.topic(t).is_none()) {
                    return reply.error(unknown_topic(missing));
                }
                let counts = self.queue_counts();
                let now = self.now_ms();
                match self.groups.join(
                    &req.group,
                    &req.member_id,
                    &req.client_id,
                    &req.topics,
                    u64::from(req.session_timeout_ms),
                    strategy,
                    &counts,
                    now,
                ) {
                    Ok(view) => {
                        tracing::info!(group = %req.group, member = %view.member_id, generation = view.generation, "member joined");
                        reply.ok(pb::response::Body::JoinGroup(pb::JoinGroupResponse {
                            member_id: view.member_id,
                            generation: view.generation,
                            assignment: to_pb_queues(&view.assignment),
                            heartbeat_interval_ms: view.heartbeat_interval_ms as u32,
                        }))
                    }
                    Err(e) => reply.error(group_error(e)),
                }
            }
            B::Heartbeat(req) => {
                if self.raft.role() != Role::Leader {
                    return reply.error(self.not_leader());
                }
                let now = self.now_ms();
                match self
                    .groups
                    .heartbeat(&req.group, &req.member_id, req.generation, now)
                {
                    Ok(view) => reply.ok(pb::response::Body::Heartbeat(pb::HeartbeatResponse {
                        generation: view.generation,
                        assignment: to_pb_queues(&view.assignment),
                    })),
                    Err(e) => reply.error(group_error(e)),
                }
            }
            B::LeaveGroup(req) => {
                if self.raft.role() != Role::Leader {
                    return reply.error(self.not_leader());
                }
                let counts = self.queue_counts();
                match self.groups.leave(&req.group, &req.member_id, &counts) {
                    Ok(()) => {
                        tracing::info!(group = %req.group, member = %req.member_id, "member left");
                        reply.ok(pb::response::Body::LeaveGroup(pb::LeaveGroupResponse {}))
                    }
                    Err(e) => reply.error(group_error(e)),
                }
            }
            B::DescribeGroup(req) => self.describe_group(req, reply),
            B::OffsetReset(req) => self.offset_reset(req, reply),
            B::Raft(_) => unreachable!("connections route raft messages as NodeInput::Raft"),
        }
    }

    fn propose(&mut self, kind: EntryKind, body: Bytes, pending: PendingKind, reply: Responder) {
        if self.storage_failed {
            return reply.error(pb::Error::new(
                ErrorCode::StorageError,
                "this broker cannot write its log",
            ));
        }
        match self.raft.propose(kind, body) {
            Ok((index, term)) => {
                let deadline =
                    Instant::now() + Duration::from_millis(self.config.request_timeout_ms);
                self.pending.insert(
                    index,
                    Pending {
                        term,
                        kind: pending,
                        reply,
                        deadline,
                    },
                );
            }
            Err(ProposeError::NotLeader { .. }) => reply.error(self.not_leader()),
            Err(ProposeError::Busy) => reply.error(pb::Error::new(
                ErrorCode::Busy,
                "too many proposals in flight, retry shortly",
            )),
            Err(e @ ProposeError::Storage(_)) => {
                tracing::error!(error = %e, "log append failed");
                reply.error(pb::Error::new(ErrorCode::StorageError, e.to_string()))
            }
            Err(e) => reply.error(pb::Error::new(ErrorCode::Busy, e.to_string())),
        }
    }

    fn propose_command(&mut self, command: Command, pending: PendingKind, reply: Responder) {
        if self.raft.role() != Role::Leader {
            return reply.error(self.not_leader());
        }
        self.propose(EntryKind::Command, command.encode(), pending, reply);
    }

    fn produce(&mut self, req: pb::ProduceRequest, reply: Responder) {
        if self.raft.role() != Role::Leader {
            return reply.error(self.not_leader());
        }
        let Some(topic) = self.state.topic(&req.topic) else {
            return reply.error(unknown_topic(&req.topic));
        };
        if req.queue as usize >= topic.queues.len() {
            return reply.error(invalid_queue(&req.topic, req.queue, topic.queues.len()));
        }
        let body = command::encode_messages(topic.id, req.queue, &req.batch);
        self.propose(EntryKind::Messages, body, PendingKind::Produce, reply);
    }

    fn offset_commit(&mut self, req: pb::OffsetCommitRequest, reply: Responder) {
        if self.raft.role() != Role::Leader {
            return reply.error(self.not_leader());
        }
        let queues: Vec<TopicQueue> = req
            .offsets
            .iter()
            .map(|o| (o.topic.clone(), o.queue))
            .collect();
        if let Err(e) = self
            .groups
            .check_owner(&req.group, &req.member_id, req.generation, &queues)
        {
            return reply.error(group_error(e));
        }
        let offsets = req
            .offsets
            .into_iter()
            .map(|o| CommittedOffset {
                topic: o.topic,
                queue: o.queue,
                offset: o.offset,
            })
            .collect();
        let command = Command::CommitOffsets {
            group: req.group,
            offsets,
        };
        self.propose_command(command, PendingKind::CommitOffsets, reply);
    }

    fn offset_reset(&mut self, req: pb::OffsetResetRequest, reply: Responder) {
        if self.raft.role() != Role::Leader {
            return reply.error(self.not_leader());
        }
        if self.groups.has_members(&req.group) {
            return reply.error(pb::Error::new(
                ErrorCode::GroupNotEmpty,
                format!("group {:?} has live members; stop them first", req.group),
            ));
        }
        let Some(topic) = self.state.topic(&req.topic) else {
            return reply.error(unknown_topic(&req.topic));
        };
        let mut offsets = Vec::with_capacity(topic.queues.len());
        for (queue, state) in topic.queues.iter().enumerate() {
            let offset = if req.to_offset {
                req.offset.clamp(state.start_offset, state.next_offset)
            } else {
                match pb::OffsetSpec::try_from(req.spec) {
                    Ok(pb::OffsetSpec::Earliest) => state.start_offset,
                    Ok(pb::OffsetSpec::Latest) => state.next_offset,
                    Ok(pb::OffsetSpec::Timestamp) => state.offset_for_timestamp(req.timestamp_ms),
                    Err(_) => {
                        return reply.error(pb::Error::new(
                            ErrorCode::InvalidRequest,
                            "unknown offset spec",
                        ))
                    }
                }
            };
            offsets.push(pb::QueueOffset {
                topic: req.topic.clone(),
                queue: queue as u32,
                offset,
            });
        }
        let command = Command::CommitOffsets {
            group: req.group,
            offsets: offsets
                .iter()
                .map(|o| CommittedOffset {
                    topic: o.topic.clone(),
                    queue: o.queue,
                    offset: o.offset,
                })
                .collect(),
        };
        self.propose_command(command, PendingKind::OffsetReset(offsets), reply);
    }

    fn describe_group(&self, req: pb::DescribeGroupRequest, reply: Responder) {
        let (generation, members) = self.groups.describe(&req.group).unwrap_or_default();
        let committed = self.state.group_offsets(&req.group);
        if members.is_empty() && committed.is_none() {
            return reply.error(pb::Error::new(
                ErrorCode::UnknownGroup,
                format!("unknown group {:?}", req.group),
            ));
        }
        let mut queues: BTreeMap<(String, u32), Option<u64>> = BTreeMap::new();
        for m in &members {
            for tq in &m.assignment {
                queues.entry(tq.clone()).or_insert(None);
            }
        }
        for ((topic, queue), offset) in committed.into_iter().flatten() {
            queues.insert((topic.clone(), *queue), Some(*offset));
        }
        let queues = queues
            .into_iter()
            .map(|((topic, queue), committed)| {
                let log_end = self
                    .state
                    .topic(&topic)
                    .and_then(|t| t.queues.get(queue as usize))
                    .map_or(0, |q| q.next_offset);
                let from = committed.unwrap_or(0);
                pb::GroupQueueLag {
                    topic,
                    queue,
                    has_committed: committed.is_some(),
                    committed: from,
                    log_end,
                    lag: log_end.saturating_sub(from),
                }
            })
            .collect();
        let members = members
            .into_iter()
            .map(|m| pb::GroupMember {
                member_id: m.member_id,
                client_id: m.client_id,
                assignment: to_pb_queues(&m.assignment),
            })
            .collect();
        reply.ok(pb::response::Body::DescribeGroup(
            pb::DescribeGroupResponse {
                group: req.group,
                generation,
                members,
                queues,
            },
        ))
    }

    fn metadata(&self, req: &pb::MetadataRequest) -> pb::MetadataResponse {
        let topics = self
            .state
            .topics()
            .filter(|t| req.topics.is_empty() || req.topics.contains(&t.name))
            .map(|t| pb::TopicInfo {
                name: t.name.clone(),
                queues: t.queues.len() as u32,
            })
            .collect();
        pb::MetadataResponse {
            nodes: self.nodes(),
            leader_id: self.raft.leader().map_or(0, |l| l.0),
            topics,
            cluster_id: 0,
        }
    }

    fn nodes(&self) -> Vec<pb::NodeInfo> {
        self.config
            .peers
            .iter()
            .map(|(id, addr)| pb::NodeInfo {
                node_id: id.0,
                address: addr.to_string(),
            })
            .collect()
    }

    fn cluster_status(&self) -> pb::ClusterStatusResponse {
        let status = self.raft.status();
        let log = self.raft.log();
        let last = log.last_index();
        let peers = status
            .progress
            .iter()
            .map(|p| pb::PeerProgress {
                node_id: p.id.0,
                match_index: p.match_index.0,
                next_index: p.next_index.0,
                lag: last.0.saturating_sub(p.match_index.0),
                active: p.recent_active,
            })
            .collect();
        pb::ClusterStatusResponse {
            node_id: self.config.node_id.0,
            role: role_name(status.role).to_string(),
            term: status.term.0,
            leader_id: status.leader.map_or(0, |l| l.0),
            first_index: log.first_index().0,
            last_index: last.0,
            synced_index: log.synced_index().0,
            commit_index: status.commit_index.0,
            applied_index: self.state.applied().0,
            peers,
            nodes: self.nodes(),
        }
    }

    fn queue(&self, topic: &str, queue: u32) -> Result<&QueueState, pb::Error> {
        let t = self
            .state
            .topic(topic)
            .ok_or_else(|| unknown_topic(topic))?;
        t.queues
            .get(queue as usize)
            .ok_or_else(|| invalid_queue(topic, queue, t.queues.len()))
    }

    fn list_offsets(&self, req: pb::ListOffsetsRequest, reply: Responder) {
        let queue = match self.queue(&req.topic, req.queue) {
            Ok(q) => q,
            Err(e) => return reply.error(e),
        };
        let offset = match pb::OffsetSpec::try_from(req.spec) {
            Ok(pb::OffsetSpec::Earliest) => queue.start_offset,
            Ok(pb::OffsetSpec::Latest) => queue.next_offset,
            Ok(pb::OffsetSpec::Timestamp) => queue.offset_for_timestamp(req.timestamp_ms),
            Err(_) => {
                return reply.error(pb::Error::new(
                    ErrorCode::InvalidRequest,
                    "unknown offset spec",
                ))
            }
        };
        reply.ok(pb::response::Body::ListOffsets(pb::ListOffsetsResponse {
            offset,
        }))
    }

    /// Answers a fetch now, or parks it until data commits or its wait ends.
    fn fetch(&mut self, req: pb::FetchRequest, reply: Responder) {
        if !req.group.is_empty() {
            if self.raft.role() != Role::Leader {
                return reply.error(self.not_leader());
            }
            let queue = [(req.topic.clone(), req.queue)];
            if let Err(e) =
                self.groups
                    .check_owner(&req.group, &req.member_id, req.generation, &queue)
            {
                return reply.error(group_error(e));
            }
        }
        match self.try_fetch(&req, false) {
            Ok(Some(response)) => reply.ok(pb::response::Body::Fetch(response)),
            Ok(None) => {
                let topic_id = self.state.topic(&req.topic).map_or(0, |t| t.id);
                let wait = u64::from(req.max_wait_ms).min(self.config.max_fetch_wait_ms);
                let deadline = Instant::now() + Duration::from_millis(wait);
                self.fetch_deadlines
                    .push_back((deadline, topic_id, req.queue));
                self.fetch_waiters
                    .entry((topic_id, req.queue))
                    .or_default()
                    .push(FetchWaiter {
                        request: req,
                        reply,
                        deadline,
                    });
            }
            Err(e) => reply.error(e),
        }
    }

    /// `Ok(None)`: not enough data yet and the request may wait.
    fn try_fetch(
        &self,
        req: &pb::FetchRequest,
        final_attempt: bool,
    ) -> Result<Option<pb::FetchResponse>, pb::Error> {
        let queue = self.queue(&req.topic, req.queue)?;
        if req.offset < queue.start_offset || req.offset > queue.next_offset {
            return Err(pb::Error {
                code: ErrorCode::OffsetOutOfRange as i32,
                message: format!(
                    "offset {} is outside [{}, {}] of {}/{}",
                    req.offset, queue.start_offset, queue.next_offset, req.topic, req.queue
                ),
                log_start: queue.start_offset,
                log_end: queue.next_offset,
                ..pb::Error::default()
            });
        }
        let max_bytes = (req.max_bytes as usize).max(1);
        let mut batches = Vec::new();
        let mut bytes = 0usize;
        for slot in queue.slots_from(req.offset).iter().take(FETCH_MAX_BATCHES) {
            if !batches.is_empty() && bytes + slot.bytes as usize > max_bytes {
                break;
            }
            let entry = self.raft.log().entry(slot.entry_index).map_err(|e| {
                tracing::error!(index = slot.entry_index.0, error = %e, "committed entry unreadable");
                pb::Error::new(ErrorCode::StorageError, e.to_string())
            })?;
            let messages = command::decode_messages(&entry.body)
                .map_err(|e| pb::Error::new(ErrorCode::StorageError, e.to_string()))?;
            bytes += messages.batch.len();
            batches.push(pb::FetchedBatch {
                base_offset: slot.base_offset,
                batch: messages.batch,
            });
        }
        let enough = bytes >= (req.min_bytes as usize).max(1);
        if !enough && !final_attempt && req.max_wait_ms > 0 {
            return Ok(None);
        }
        Ok(Some(pb::FetchResponse {
            batches,
            high_watermark: queue.next_offset,
            log_start: queue.start_offset,
        }))
    }

    fn wake_fetchers(&mut self, topic_id: u32, queue: u32) {
        let Some(waiters) = self.fetch_waiters.remove(&(topic_id, queue)) else {
            return;
        };
        let mut still = Vec::new();
        for waiter in waiters {
            match self.try_fetch(&waiter.request, false) {
                Ok(Some(response)) => waiter.reply.ok(pb::response::Body::Fetch(response)),
                Ok(None) => still.push(waiter),
                Err(e) => waiter.reply.error(e),
            }
        }
        if !still.is_empty() {
            self.fetch_waiters.insert((topic_id, queue), still);
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, topic_id, queue)) = self.fetch_deadlines.front() {
            if deadline > now {
                break;
            }
            self.fetch_deadlines.pop_front();
            let Some(waiters) = self.fetch_waiters.remove(&(topic_id, queue)) else {
                continue;
            };
            let (due, keep): (Vec<_>, Vec<_>) =
                waiters.into_iter().partition(|w| w.deadline <= now);
            for waiter in due {
                match self.try_fetch(&waiter.request, true) {
                    Ok(Some(response)) => waiter.reply.ok(pb::response::Body::Fetch(response)),
                    Ok(None) => unreachable!("a final attempt always answers"),
                    Err(e) => waiter.reply.error(e),
                }
            }
            if !keep.is_empty() {
                self.fetch_waiters.insert((topic_id, queue), keep);
            }
        }
        // Proposals are indexed in the order they were made, so their deadlines are too.
        while let Some(entry) = self.pending.first_entry() {
            if entry.get().deadline > now {
                break;
            }
            let pending = entry.remove();
            pending.reply.error(pb::Error::new(
                ErrorCode::Timeout,
                "not committed in time; retry (idempotent producers are deduplicated)",
            ));
        }
    }

    fn process_ready(&mut self) {
        if !self.raft.has_ready() {
            return;
        }
        let ready = self.raft.ready();
        if let Some((role, term, leader)) = ready.role_change {
            tracing::info!(role = role_name(role), term = term.0, leader = ?leader.map(|l| l.0), "raft role changed");
            if role == Role::Leader {
                self.term_start = self.raft.log().last_index();
            } else {
                // Members rejoin the new leader; their committed offsets are in the log.
                self.groups.clear();
                self.term_start = LogIndex(u64::MAX);
            }
        }
        for msg in ready.messages {
            self.send(msg);
        }
        if let Some(hs) = ready.hard_state {
            self.queued.hard_state = Some(hs);
        }
        if let Some(unsynced) = ready.unsynced {
            self.queued.unsynced = Some(unsynced);
        }
        self.queued.messages.extend(ready.persisted_messages);
        if self.config.durability == Durability::Async {
            self.persist_async_mode();
        } else {
            self.start_persist_job();
        }
        if let Some((from, to)) = ready.to_apply {
            self.apply(from, to);
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
        } else {
            self.transport.send(msg);
        }
    }

    /// Starts a persist job if none runs and something is queued.
    fn start_persist_job(&mut self) {
        if self.queued.is_empty() {
            return;
        }
        let Some(mut hard_state_file) = self.hard_state_file.take() else {
            return; // a job is running; the queue waits for the next one
        };
        let queued = std::mem::take(&mut self.queued);
        let sync_job: Option<SyncJob> = if queued.unsynced.is_some() {
            self.raft.log_mut().begin_sync()
        } else {
            None
        };
        let hard_state = queued.hard_state;
        if let Some(hs) = hard_state {
            self.last_hard_state = hs;
        }
        let tx = self.persist_tx.clone();
        tokio::task::spawn_blocking(move || {
            let sync = sync_job.map(SyncJob::run);
            let sync_ok = !matches!(sync, Some(Err(_)));
            // The hard state goes after the log: the acknowledged mark in it must
            // never be ahead of what is durable.
            let hard_state_result = match hard_state {
                Some(hs) if sync_ok => hard_state_file.store(&hs),
                _ => Ok(()),
            };
            let _ = tx.send(PersistDone {
                sync,
                hard_state_file,
                hard_state_result,
                unsynced: queued.unsynced,
                messages: queued.messages,
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
        for msg in done.messages {
            self.send(msg);
        }
        if let Some((index, term)) = done.unsynced {
            let synced = self.raft.log().synced_index();
            // A truncation meanwhile lowers what the job covered; the core ignores an
            // (index, term) pair that no longer matches its log.
            self.raft.persisted(index.min(synced), term);
        }
        self.start_persist_job();
        self.process_ready();
    }

    /// In `async` durability the log counts as persisted once written; only term and
    /// vote changes are synced before the messages that depend on them.
    fn persist_async_mode(&mut self) {
        let queued = std::mem::take(&mut self.queued);
        if let Some(mut hs) = queued.hard_state {
            // The acknowledged mark may only name what is on disk.
            hs.acked_index = hs.acked_index.min(self.raft.log().synced_index());
            let changed =
                hs.term != self.last_hard_state.term || hs.vote != self.last_hard_state.vote;
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
        for msg in queued.messages {
            self.send(msg);
        }
        if let Some((index, term)) = queued.unsynced {
            self.raft.persisted(index, term);
        }
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
    }

    fn apply(&mut self, from: LogIndex, to: LogIndex) {
        let mut next = from;
        let mut touched: Vec<(u32, u32)> = Vec::new();
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
                let outcome = self.state.apply(&entry);
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
            (PendingKind::CommitOffsets, ApplyOutcome::OffsetsCommitted) => {
                reply.ok(R::OffsetCommit(pb::OffsetCommitResponse {}))
            }
            (PendingKind::OffsetReset(offsets), ApplyOutcome::OffsetsCommitted) => {
                reply.ok(R::OffsetReset(pb::OffsetResetResponse { offsets }))
            }
            (_, other) => {
                tracing::error!(?other, index = index.0, "unexpected apply outcome");
                reply.error(pb::Error::new(
                    ErrorCode::InvalidRequest,
                    "unexpected outcome",
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
        for (_, pending) in std::mem::take(&mut self.pending) {
            pending.reply.error(pb::Error::new(
                ErrorCode::ShuttingDown,
                "broker is shutting down",
            ));
        }
        tracing::info!(
            last_index = self.raft.log().last_index().0,
            "node stopped, log synced"
        );
    }
}

/// The role as `cluster status` shows it.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::PreCandidate => "pre-candidate",
    }
}

fn to_pb_queues(queues: &[TopicQueue]) -> Vec<pb::TopicQueue> {
    queues
        .iter()
        .map(|(topic, queue)| pb::TopicQueue {
            topic: topic.clone(),
            queue: *queue,
        })
        .collect()
}

fn group_error(e: GroupError) -> pb::Error {
    pb::Error::new(e.code, e.message)
}

fn unknown_topic(name: &str) -> pb::Error {
    pb::Error::new(ErrorCode::UnknownTopic, format!("unknown topic {name:?}"))
}

fn invalid_queue(topic: &str, queue: u32, queues: usize) -> pb::Error {
    pb::Error::new(
        ErrorCode::InvalidQueue,
        format!("topic {topic:?} has {queues} queues, no queue {queue}"),
    )
}
