//! Client requests: topics, produce, metadata, offsets and consumer groups.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftmq_proto::pb::{self, ErrorCode};
use raftmq_store::EntryKind;

use super::{role_name, Node, Pending, PendingKind};
use crate::command::{self, Command, CommittedOffset, TopicRetention};
use crate::consumer_group::{GroupError, Strategy, TopicQueue};
use crate::directory::METADATA_GROUP;
use crate::raft::{ProposeError, Role};
use crate::response::Responder;
use crate::state_machine::QueueState;
use raftmq_store::LogIndex;

/// `ProduceResponse.base_offset` under `acks=leader` when the leader cannot tell
/// the offset yet (offsets are assigned when the batch is applied, after the
/// answer): the batch comes from an idempotent producer (its sequence is checked
/// only then, and a refused batch takes no offsets), or entries of an earlier
/// leader are not applied yet.
pub const UNKNOWN_OFFSET: u64 = u64::MAX;

/// The most queues a topic may have.
pub const MAX_TOPIC_QUEUES: u32 = 4096;

/// Where a queue's batches appended by this leader, and not yet applied, end.
#[derive(Debug, Clone, Copy)]
pub(super) enum Projection {
    /// Its last such batch is at log index `index`; the next batch gets `next`.
    Next { next: u64, index: LogIndex },
    /// A batch at `index` may be refused when applied (an idempotent producer's):
    /// offsets after it are known once it is applied.
    Uncertain { index: LogIndex },
}

impl Projection {
    fn index(self) -> LogIndex {
        match self {
            Projection::Next { index, .. } | Projection::Uncertain { index } => index,
        }
    }
}

impl Node {
    /// Serves a request from this node's state (see `reads.rs` for what waits first).
    pub(super) fn serve_client(&mut self, body: pb::request::Body, reply: Responder) {
        use pb::request::Body as B;
        // Group membership lives in the leader's coordinator only. With linearizable
        // reads off, offsets are read from the leader too (a follower's state may lag).
        let leader_only = match &body {
            B::DescribeGroup(_) | B::ListGroups(_) => true,
            B::OffsetFetch(_) | B::ListOffsets(_) => !self.config.linearizable_reads,
            _ => false,
        };
        if leader_only && self.raft.role() != Role::Leader {
            return reply.error(self.not_leader());
        }
        match body {
            B::Produce(req) => self.produce(req, reply),
            // The connection hands each part over as a produce of its own.
            B::ProduceMany(_) => reply.error(pb::Error::new(
                ErrorCode::InvalidRequest,
                "a multi-queue produce reached a group whole",
            )),
            // The connection reads each part as a fetch of its own.
            B::FetchMany(_) => reply.error(pb::Error::new(
                ErrorCode::InvalidRequest,
                "a multi-queue fetch reached a group whole",
            )),
            B::Fetch(req) => self.fetch(req, reply),
            B::CreateTopic(req) => {
                if self.state.topic(&req.name).is_some() {
                    return reply.error(pb::Error::new(
                        ErrorCode::TopicExists,
                        format!("topic {:?} already exists", req.name),
                    ));
                }
                if req.queues == 0 || req.queues > MAX_TOPIC_QUEUES {
                    return reply.error(pb::Error::new(
                        ErrorCode::InvalidRequest,
                        format!(
                            "{} queues asked for topic {:?}: a topic has 1 to \
                             {MAX_TOPIC_QUEUES} queues",
                            req.queues, req.name
                        ),
                    ));
                }
                if self.config.data_groups > 0 && self.state.data_groups().is_empty() {
                    // A topic created now would keep all its queues in this group.
                    return reply.error(self.not_ready(
                        "the cluster is creating its data groups (its first leader writes \
                         them once the cluster has its id); retry",
                    ));
                }
                let command = Command::CreateTopic {
                    name: req.name,
                    queues: req.queues,
                    retention: TopicRetention {
                        ms: req.retention_ms,
                        bytes: req.retention_bytes,
                    },
                };
                self.propose_command(command, PendingKind::CreateTopic, reply);
            }
            B::DeleteTopic(req) => {
                if self.state.topic(&req.name).is_none() {
                    return reply.error(unknown_topic(&req.name));
                }
                let command = Command::DeleteTopic {
                    name: req.name,
                    drop_offsets: true,
                };
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
                tracing::info!(
                    to = req.to_node_id,
                    term = self.raft.term().0,
                    "leadership transfer requested"
                );
                self.metrics.handles.raft.transfers_requested.increment(1);
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
            B::JoinCluster(_)
            | B::AddNode(_)
            | B::RemoveNode(_)
            | B::MoveReplicas(_)
            | B::AddDataGroups(_)
            | B::AdvertiseListeners(_)
                if self.raft.role() != Role::Leader =>
            {
                reply.error(self.not_leader())
            }
            B::JoinCluster(req) => self.join_cluster(req, reply),
            B::AddNode(req) => self.add_node(req, reply),
            B::RemoveNode(req) => self.remove_node(req, reply),
            B::MoveReplicas(req) => self.move_replicas(req, reply),
            B::AddDataGroups(req) => self.add_data_groups(req, reply),
            B::AdvertiseListeners(req) => self.advertised(req, reply),
            B::SaslHandshake(_) | B::SaslAuthenticate(_) => reply.error(pb::Error::new(
                ErrorCode::InvalidRequest,
                "a login belongs to a connection, not to a Raft group",
            )),
            B::UpsertUser(_) | B::DeleteUser(_) | B::CreateAcls(_) | B::DeleteAcls(_)
                if self.raft.role() != Role::Leader =>
            {
                reply.error(self.not_leader())
            }
            B::CreateAcls(req) => self.create_acls(req, reply),
            B::DeleteAcls(req) => self.delete_acls(req, reply),
            B::ListAcls(_) => reply.ok(pb::response::Body::ListAcls(self.list_acls())),
            B::UpsertUser(req) => self.upsert_user(req, reply),
            B::DeleteUser(req) => self.delete_user(req, reply),
            B::ListUsers(_) => reply.ok(pb::response::Body::ListUsers(self.list_users())),
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

    pub(super) fn propose(
        &mut self,
        kind: EntryKind,
        body: Bytes,
        pending: PendingKind,
        reply: Responder,
    ) -> Option<LogIndex> {
        if self.storage_failed {
            reply.error(pb::Error::new(
                ErrorCode::StorageError,
                "this broker cannot write its log (its own log says why): another node \
                 takes over the group once this one steps down; retry",
            ));
            return None;
        }
        let proposed = self.raft.propose(kind, body);
        let index = proposed.as_ref().ok().map(|(index, _)| *index);
        match proposed {
            Ok((_, _)) if matches!(pending, PendingKind::ProduceLeaderAck { .. }) => {
                // acks=leader: the batch is in the leader's log; it is answered
                // now, with the offset it will get when that is known.
                let PendingKind::ProduceLeaderAck { count, base_offset } = pending else {
                    unreachable!("matched above")
                };
                reply.ok(pb::response::Body::Produce(pb::ProduceResponse {
                    base_offset: base_offset.unwrap_or(UNKNOWN_OFFSET),
                    count,
                }));
            }
            Ok((index, term)) => self.await_commit(index, term, pending, reply),
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
        index
    }

    /// The proposal at `index` waits for its commit (or the request timeout).
    pub(super) fn await_commit(
        &mut self,
        index: crate::raft::LogIndex,
        term: crate::raft::Term,
        kind: PendingKind,
        reply: Responder,
    ) {
        let deadline = Instant::now() + Duration::from_millis(self.config.request_timeout_ms);
        self.pending.insert(
            index,
            Pending {
                term,
                kind,
                reply,
                deadline,
            },
        );
    }

    pub(super) fn propose_command(
        &mut self,
        command: Command,
        pending: PendingKind,
        reply: Responder,
    ) {
        if self.raft.role() != Role::Leader {
            return reply.error(self.not_leader());
        }
        self.propose(EntryKind::Command, command.encode(), pending, reply);
    }

    /// The offset the next batch appended to queue `key` will get, if this leader
    /// can tell: every entry of earlier leaders is applied, and no batch of it
    /// still to be applied may be refused.
    fn projected_offset(&self, key: (u32, u32), applied_next: u64) -> Option<u64> {
        if self.state.applied() < self.term_start {
            return None;
        }
        match self.projected.get(&key) {
            Some(p) if p.index() <= self.state.applied() => Some(applied_next),
            Some(Projection::Next { next, .. }) => Some(*next),
            Some(Projection::Uncertain { .. }) => None,
            None => Some(applied_next),
        }
    }

    pub(super) fn produce(&mut self, req: pb::ProduceRequest, reply: Responder) {
        if self.raft.role() != Role::Leader {
            return reply.error(self.not_leader());
        }
        // Rate-limited (a file-system call at most every DISK_USE_CHECK_INTERVAL):
        // an idle group does not check on its ticks, so its first produce does.
        self.check_disk_use(std::time::Instant::now());
        let topic = match self.topic_holding(&req.topic, req.queue) {
            Ok(topic) => topic,
            Err(e) => return reply.error(e),
        };
        if let Some(why) = &self.disk_use_limited {
            // Commands (offset commits, topic changes) still go through: they are
            // small and keep consumers, which let retention free space, working.
            return reply.error(pb::Error::new(ErrorCode::StorageError, why.clone()));
        }
        let key = (topic.id, req.queue);
        let applied_next = topic.queues[req.queue as usize].next_offset;
        let body = command::encode_messages(topic.id, req.queue, &req.batch);
        let header = raftmq_proto::batch::parse_stored(&req.batch).ok();
        let count = header.as_ref().map_or(0, |h| h.record_count);
        // An idempotent producer's batch may be refused when applied (its sequence
        // is checked then): where it ends is not known before.
        let base_offset = match header {
            Some(h) if h.producer_id == 0 => self.projected_offset(key, applied_next),
            _ => None,
        };
        let pending = if req.acks == pb::Acks::Leader as i32 {
            PendingKind::ProduceLeaderAck { count, base_offset }
        } else {
            PendingKind::Produce
        };
        if let Some(index) = self.propose(EntryKind::Messages, body, pending, reply) {
            let projection = match base_offset {
                Some(base) => Projection::Next {
                    next: base + u64::from(count),
                    index,
                },
                None => Projection::Uncertain { index },
            };
            self.projected.insert(key, projection);
        }
    }

    pub(super) fn offset_commit(&mut self, req: pb::OffsetCommitRequest, reply: Responder) {
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
        // A member's commit never moves the group backwards (only a reset does): a
        // member about to do so works from a stale position (it missed a commit of
        // the member that held the queue before it) and must rejoin to pick up the
        // group's offsets.
        if !req.member_id.is_empty() {
            let stored = self.state.group_offsets(&req.group);
            for o in &req.offsets {
                let current = stored.and_then(|m| m.get(&(o.topic.clone(), o.queue)));
                if let Some(&current) = current {
                    if o.offset < current {
                        return reply.error(pb::Error::new(
                            ErrorCode::StaleGeneration,
                            format!(
                                "{}/{}: committing {} would move the group back from {current}; rejoin",
                                o.topic, o.queue, o.offset
                            ),
                        ));
                    }
                }
            }
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
        let generation = self.groups.generation(&req.group);
        let command = Command::CommitOffsets {
            group: req.group,
            offsets,
        };
        self.propose_command(command, PendingKind::CommitOffsets { generation }, reply);
    }

    pub(super) fn offset_reset(&mut self, req: pb::OffsetResetRequest, reply: Responder) {
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

    pub(super) fn describe_group(&self, req: pb::DescribeGroupRequest, reply: Responder) {
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
                let bounds = self.queue_bounds(&topic, queue);
                let (log_start, log_end) = bounds.unwrap_or((0, 0));
                // Messages retention deleted are not lag: they cannot be consumed.
                let from = committed.unwrap_or(log_start).max(log_start);
                pb::GroupQueueLag {
                    topic,
                    queue,
                    has_committed: committed.is_some(),
                    committed: from,
                    log_end,
                    lag: log_end.saturating_sub(from),
                    log_end_unknown: bounds.is_none(),
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

    pub(super) fn metadata(&self, req: &pb::MetadataRequest) -> pb::MetadataResponse {
        let topics = self
            .state
            .topics()
            .filter(|t| req.topics.is_empty() || req.topics.contains(&t.name))
            .map(|t| pb::TopicInfo {
                name: t.name.clone(),
                queues: t.queues.len() as u32,
                retention_ms: t.retention.ms,
                retention_bytes: t.retention.bytes,
                queue_groups: t.groups.clone(),
            })
            .collect();
        pb::MetadataResponse {
            nodes: self.nodes(),
            leader_id: self.raft.leader().map_or(0, |l| l.0),
            topics,
            cluster_id: self.identity.cluster_id,
            groups: self.data_groups_for_metadata(),
        }
    }

    /// `AdvertiseListeners` (metadata leader): records what a node says of itself,
    /// its Kafka address and its rack, where they differ from what is recorded.
    fn advertised(&mut self, req: pb::AdvertiseListenersRequest, reply: Responder) {
        let node = req.node_id;
        let recorded = |map: &BTreeMap<u64, String>| map.get(&node).cloned().unwrap_or_default();
        let mut commands = Vec::new();
        if recorded(self.state.kafka_listeners()) != req.kafka_address {
            commands.push(Command::SetListeners {
                node,
                kafka_address: req.kafka_address,
            });
        }
        if recorded(self.state.racks()) != req.rack {
            commands.push(Command::SetRack {
                node,
                rack: req.rack,
            });
        }
        let Some(last) = commands.pop() else {
            return reply.ok(pb::response::Body::AdvertiseListeners(
                pb::AdvertiseListenersResponse {},
            ));
        };
        for command in commands {
            if let Err(e) = self.raft.propose(EntryKind::Command, command.encode()) {
                return reply.error(pb::Error::new(ErrorCode::Busy, e.to_string()));
            }
        }
        self.propose_command(last, PendingKind::Listeners, reply)
    }

    /// The members of the cluster with their client addresses.
    pub(super) fn nodes(&self) -> Vec<pb::NodeInfo> {
        self.members
            .view
            .members
            .iter()
            .map(|(id, m)| pb::NodeInfo {
                node_id: id.0,
                address: m.address.to_string(),
                kafka_address: self
                    .state
                    .kafka_listeners()
                    .get(&id.0)
                    .cloned()
                    .unwrap_or_default(),
                rack: self.state.racks().get(&id.0).cloned().unwrap_or_default(),
            })
            .collect()
    }

    pub(super) fn cluster_status(&self) -> pb::ClusterStatusResponse {
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
                voter: p.voter,
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
            cluster_id: self.identity.cluster_id,
            members: self.members.view.to_pb(),
            membership_index: self.members.view.index,
            membership_change_pending: self.raft.membership_change_pending().is_some(),
            incarnation: self.identity.incarnation,
            groups: self.data_group_infos(),
        }
    }

    /// A queue's (first offset stored, next offset), wherever it lives: from this
    /// group's state, or for a data-group queue from the replica of its group
    /// running here (unknown when none does).
    pub(super) fn queue_bounds(&self, topic: &str, queue: u32) -> Option<(u64, u64)> {
        let t = self.state.topic(topic)?;
        let q = t.queues.get(queue as usize)?;
        if self.group_id() != METADATA_GROUP || t.group_of(queue) == METADATA_GROUP {
            return Some((q.start_offset, q.next_offset));
        }
        self.raft_groups.directory.queue_bounds(t.id, queue)
    }

    pub(super) fn queue(&self, topic: &str, queue: u32) -> Result<&QueueState, pb::Error> {
        let t = self.topic_holding(topic, queue)?;
        Ok(&t.queues[queue as usize])
    }

    /// The topic of `queue` when this group holds that queue; else why not: an
    /// unknown topic or queue, or (retriable) a queue another group holds or a topic
    /// this data group has not mirrored yet.
    pub(super) fn topic_holding(
        &self,
        topic: &str,
        queue: u32,
    ) -> Result<&crate::state_machine::Topic, pb::Error> {
        let Some(t) = self.state.topic(topic) else {
            if self.group_id() == METADATA_GROUP {
                return Err(unknown_topic(topic));
            }
            return Err(pb::Error::not_ready(
                format!(
                    "topic {topic:?} is not on data group {} yet (just created?); retry",
                    self.group_id()
                ),
                None,
            ));
        };
        if queue as usize >= t.queues.len() {
            return Err(invalid_queue(topic, queue, t.queues.len()));
        }
        let holder = if self.group_id() == METADATA_GROUP {
            t.group_of(queue)
        } else {
            self.raft_groups
                .directory
                .placement()
                .topics
                .get(topic)
                .filter(|p| p.id == t.id)
                .map_or(METADATA_GROUP, |p| p.group_of(queue))
        };
        if holder != self.group_id() {
            return Err(pb::Error::not_ready(
                format!(
                    "queue {topic}/{queue} is held by group {holder}, not group {}; retry",
                    self.group_id()
                ),
                None,
            ));
        }
        Ok(t)
    }

    pub(super) fn list_offsets(&self, req: pb::ListOffsetsRequest, reply: Responder) {
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
}

pub(super) fn to_pb_queues(queues: &[TopicQueue]) -> Vec<pb::TopicQueue> {
    queues
        .iter()
        .map(|(topic, queue)| pb::TopicQueue {
            topic: topic.clone(),
            queue: *queue,
        })
        .collect()
}

pub(super) fn group_error(e: GroupError) -> pb::Error {
    pb::Error::new(e.code, e.message)
}

pub(super) fn unknown_topic(name: &str) -> pb::Error {
    pb::Error::new(ErrorCode::UnknownTopic, format!("unknown topic {name:?}"))
}

pub(super) fn invalid_queue(topic: &str, queue: u32, queues: usize) -> pb::Error {
    pb::Error::new(
        ErrorCode::InvalidQueue,
        format!("topic {topic:?} has {queues} queues, no queue {queue}"),
    )
}
