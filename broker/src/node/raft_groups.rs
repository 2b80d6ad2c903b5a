//! This node task's part in a cluster of several Raft groups (see
//! [`crate::directory`]):
//!
//! - every group publishes its status (role, leader, indexes) for metadata answers;
//! - the metadata group publishes the placement it applied, writes the number of
//!   data groups into its log once (from `data_groups` in the first leader's
//!   configuration), and asks the process to start the data groups it applied;
//! - a data group's leader mirrors the metadata group's topics into its own log (a
//!   data group takes batches only for topics it holds: every replica applies the
//!   same entries, whatever its local metadata replica has seen so far), moves its
//!   membership to the replicas the metadata group placed it on (one change at a
//!   time: add a learner, promote it once caught up, remove the replica that left),
//!   and hands its leadership to the group's preferred leader when that node is
//!   caught up, so leaders spread over the nodes and come back after a failure.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftmq_proto::pb::{self, ErrorCode};
use raftmq_store::{EntryKind, LogIndex};

use super::replica_moves::{self, ReplicaStep};
use super::{role_name, Node, PendingKind};
use crate::cluster::{ClusterView, MemberInfo};
use crate::command::Command;
use crate::directory::METADATA_GROUP;
use crate::directory::{GroupDirectory, GroupId, Placement, StartGroups, TopicPlacement};
use crate::placement::{self, Assignment};
use crate::raft::{Membership, NodeId, ProgressState, Role};
use crate::response::Responder;

/// How soon a new group's preferred leader campaigns: long enough for the other
/// replicas, started by the same metadata entry, to be running.
const FIRST_CAMPAIGN_TICKS: u32 = 5;

/// How often a data group's leader checks whether its preferred leader should lead.
const LEADER_BALANCE_INTERVAL: Duration = Duration::from_secs(2);
/// How long a group's preferred replica must have been a voter heard from without
/// a break before leadership moves back to it: a node just restarted is not hit by
/// a second leadership move while clients may still back off from reconnecting to
/// it (librdkafka's producers stalled 2.4–3.0 s when leadership moved back 2 s
/// after the restart). Kafka waits minutes (`leader.imbalance.check.interval`).
const PREFERRED_SETTLE: Duration = Duration::from_secs(5);
/// How often a group publishes its status and a data group's leader checks its
/// topics and membership against the placement.
const GROUP_UPKEEP_INTERVAL: Duration = Duration::from_millis(50);
/// How often a data group publishes its queues' offset ranges.
const QUEUE_BOUNDS_INTERVAL: Duration = Duration::from_secs(1);
/// The most data groups one `AddDataGroups` request adds.
const MAX_ADDED_GROUPS: u32 = 1024;
/// Mirror commands proposed per pass (the rest follow once these are applied).
const MIRROR_BATCH: usize = 64;
/// How long a metadata leader that has a rack waits for every voter's rack before
/// it places the first data groups anyway (a voter started without `--rack`).
const RACKS_WAIT: Duration = Duration::from_secs(10);

/// The node task's state for the above.
pub(super) struct RaftGroups {
    pub(super) group: GroupId,
    pub(super) directory: Arc<GroupDirectory>,
    /// The metadata group's placement changed since it was last published.
    placement_dirty: bool,
    /// The status last published.
    published: Option<pb::GroupInfo>,
    /// When the metadata leader last proposed the data groups.
    proposed_at: Option<Instant>,
    /// Since when the metadata leader waits for the voters' racks.
    racks_awaited_since: Option<Instant>,
    /// The last mirror command proposed (none in flight once it is applied).
    mirror_index: LogIndex,
    /// The membership change last logged (to say each step once).
    logged_change: Option<String>,
    balanced_at: Option<Instant>,
    /// The preferred replica, and since when it has been a voter heard from
    /// without a break (see [`PREFERRED_SETTLE`]).
    preferred_heard_since: Option<(u64, Instant)>,
    bounds_at: Option<Instant>,
    upkeep_at: Option<Instant>,
    /// Metadata leader: since when each member has not been heard from.
    silent_since: BTreeMap<NodeId, Instant>,
    /// A differing `data_groups` setting was reported.
    mismatch_reported: bool,
    /// This replica was moved away: the node task stops and its files go.
    retiring: bool,
}

impl RaftGroups {
    pub(super) fn new(group: GroupId, directory: Arc<GroupDirectory>) -> RaftGroups {
        RaftGroups {
            group,
            directory,
            placement_dirty: true,
            published: None,
            proposed_at: None,
            racks_awaited_since: None,
            mirror_index: LogIndex::ZERO,
            logged_change: None,
            balanced_at: None,
            preferred_heard_since: None,
            bounds_at: None,
            upkeep_at: None,
            silent_since: BTreeMap::new(),
            retiring: false,
            mismatch_reported: false,
        }
    }
}

impl Node {
    /// Makes this node task drive `group` of the process's `directory`.
    pub fn with_group(mut self, group: GroupId, directory: Arc<GroupDirectory>) -> Node {
        self.raft_groups = RaftGroups::new(group, directory);
        self
    }

    /// The group this node task drives.
    pub(super) fn group_id(&self) -> GroupId {
        self.raft_groups.group
    }

    /// A replica of a group that has never had a leader (term 0, empty log) on
    /// the group's preferred leader: campaigns within a few ticks, so a new
    /// cluster's or a new topic's queues take writes at once rather than after
    /// one to two election timeouts (clients would be told "not leader" until
    /// then, and a Kafka producer without idempotence may reorder a retried batch).
    pub(crate) fn campaign_soon_if_new(&mut self) {
        if self.raft.term().0 == 0 && self.raft.log().last_index().0 == 0 {
            self.raft.campaign_within(FIRST_CAMPAIGN_TICKS);
        }
    }

    /// Every tick.
    pub(super) fn raft_groups_upkeep(&mut self, now: Instant) {
        // Every few ticks: a node may run many groups, and none of this is urgent
        // (a role change is published at once, see `leadership_changed`).
        if !super::due(&mut self.raft_groups.upkeep_at, now, GROUP_UPKEEP_INTERVAL) {
            return;
        }
        self.publish_status();
        if self.group_id() == METADATA_GROUP {
            self.detect_silent_peers(now);
            self.publish_users();
            self.create_bootstrap_user(now);
            self.publish_placement();
            self.propose_data_groups(now);
            self.replace_dead_nodes(now);
            self.metadata_voter_upkeep(now);
        } else {
            self.mirror_topics();
            self.reconcile_membership();
            self.balance_leadership(now);
            self.publish_queue_bounds(now);
        }
    }

    /// Metadata group, every upkeep: pings every other node and tells every group
    /// of this process about the nodes that fell silent (see `crate::liveness`).
    /// The metadata group never quiesces, so this runs whatever the others do.
    fn detect_silent_peers(&mut self, now: Instant) {
        self.transport.ping_all();
        let me = self.config.node_id;
        let silence = crate::liveness::Liveness::silence(
            Duration::from_millis(self.config.tick_ms),
            self.config.election_timeout_ticks,
        );
        let members: Vec<NodeId> = self
            .raft
            .membership()
            .members()
            .filter(|&id| id != me)
            .collect();
        let directory = &self.raft_groups.directory;
        for peer in directory.liveness().newly_silent(members, now, silence) {
            tracing::info!(
                peer = peer.0,
                ?silence,
                "node silent: waking the groups it leads"
            );
            directory.tell_all(|| super::NodeInput::PeerUnreachable(peer));
        }
    }

    /// A member of the group says this node's replica was removed for good: its
    /// committed membership (at index `removed_at`) has no place for it. A data
    /// group replica that the metadata group no longer places here retires: the
    /// node task stops and its files are deleted (see `crate::host`), so a move
    /// off a node frees its disk. Nothing else retires: a replica still placed
    /// here is being added back, and the metadata group's replicas go with their
    /// node (`cluster remove-node`). Deleting it cannot lose an acknowledged
    /// message: the group commits with a quorum of its members, and this replica
    /// is none of them.
    pub(super) fn told_removed(&mut self, member: NodeId, removed_at: u64) {
        if self.group_id() == METADATA_GROUP
            || self.raft.role() == Role::Leader
            || self.raft_groups.retiring
        {
            return;
        }
        let me = self.config.node_id.0;
        match self.placed_replicas() {
            Some(placed) if !placed.contains(&me) => {
                tracing::info!(
                    told_by = member.0,
                    removed_at,
                    "this replica was moved to other nodes: retiring it (its files are deleted)"
                );
                self.raft_groups.retiring = true;
            }
            _ => tracing::debug!(
                told_by = member.0,
                removed_at,
                "removed from the group but still placed here: waiting to be added back"
            ),
        }
    }

    /// Whether this replica retires (see [`Node::told_removed`]).
    pub(super) fn retiring(&self) -> bool {
        self.raft_groups.retiring
    }

    /// The metadata group published a new placement: upkeep at once.
    pub(super) fn placement_published(&mut self) {
        self.raft_groups.upkeep_at = None;
        self.tick_soon = true;
    }

    /// Data group, about every second: its queues' offset ranges, for consumer
    /// group lag answered by the metadata group on this node.
    fn publish_queue_bounds(&mut self, now: Instant) {
        if !super::due(&mut self.raft_groups.bounds_at, now, QUEUE_BOUNDS_INTERVAL) {
            return;
        }
        // Only the queues placed in this group: a data group mirrors every queue of
        // the topics it holds, and its (empty) copies of the others would
        // overwrite the bounds their own groups publish.
        let placement = self.raft_groups.directory.placement();
        let group = self.group_id();
        let bounds = self.state.topics().flat_map(|t| {
            let placed = placement
                .topics
                .get(&t.name)
                .filter(|p| p.id == t.id)
                .map(|p| p.groups.clone())
                .unwrap_or_default();
            t.queues
                .iter()
                .enumerate()
                .filter(move |(q, _)| placed.get(*q).copied() == Some(group))
                .map(move |(q, s)| ((t.id, q as u32), (s.start_offset, s.next_offset)))
        });
        self.raft_groups.directory.publish_queue_bounds(bounds);
    }

    /// An applied entry changed topics or data groups (metadata group).
    pub(super) fn placement_changed(&mut self) {
        self.raft_groups.placement_dirty = true;
    }

    /// Where the metadata group places this data group (preferred leader first).
    fn placed_replicas(&self) -> Option<Vec<u64>> {
        let placement = self.raft_groups.directory.placement();
        placement
            .groups
            .get(&self.group_id())
            .map(|g| g.replicas.clone())
    }

    pub(super) fn publish_status(&mut self) {
        let ids = |v: &[NodeId]| v.iter().map(|id| id.0).collect::<Vec<u64>>();
        let membership = self.raft.membership();
        let (voters, learners) = (ids(&membership.voters), ids(&membership.learners));
        let replicas = if self.group_id() == METADATA_GROUP {
            Vec::new()
        } else {
            self.placed_replicas().unwrap_or_default()
        };
        let info = pb::GroupInfo {
            group_id: self.group_id(),
            leader_id: self.raft.leader().map_or(0, |l| l.0),
            term: self.raft.term().0,
            role: role_name(self.raft.role()).to_string(),
            commit_index: self.raft.commit_index().0,
            applied_index: self.state.applied().0,
            last_index: self.raft.log().last_index().0,
            preferred_leader_id: replicas.first().copied().unwrap_or(0),
            voters,
            learners,
            replicas,
            quiesced: self.raft.is_quiesced(),
        };
        if self.raft_groups.published.as_ref() != Some(&info) {
            self.raft_groups.directory.publish_status(info.clone());
            self.raft_groups.published = Some(info);
        }
    }

    /// Metadata group: publishes what it applied, and asks the process to start
    /// the data-group replicas placed here.
    fn publish_placement(&mut self) {
        if !self.raft_groups.placement_dirty {
            return;
        }
        self.raft_groups.placement_dirty = false;
        let topics = self
            .state
            .topics()
            .map(|t| {
                (
                    t.name.clone(),
                    TopicPlacement {
                        id: t.id,
                        queues: t.queues.len() as u32,
                        retention: t.retention,
                        groups: t.groups.clone(),
                    },
                )
            })
            .collect();
        let groups = self.state.data_groups().clone();
        let addresses = self.member_addresses();
        let incarnations = self
            .members
            .view
            .members
            .iter()
            .map(|(id, m)| (*id, m.incarnation))
            .collect();
        self.raft_groups.directory.publish_placement(Placement {
            topics,
            next_topic_id: self.state.next_topic_id(),
            groups: groups.clone(),
            addresses: addresses.clone(),
            incarnations,
        });
        if !groups.is_empty() && self.identity.cluster_id != 0 {
            self.raft_groups.directory.request_start(StartGroups {
                groups: groups.into_iter().collect(),
                identity: self.identity.clone(),
                addresses,
            });
        }
    }

    /// Metadata leader: writes the data groups into the log once the cluster has
    /// its id (so that they are born into a known cluster), placed over the voters.
    fn propose_data_groups(&mut self, now: Instant) {
        let wanted = self.config.data_groups;
        let have = self.state.data_groups().len() as u32;
        if have != 0 {
            // Fewer configured than the cluster has is what `cluster add-data-groups`
            // leaves behind (and `dev` restarts nodes with the first count): not worth
            // a warning. More configured is a setting that has no effect: say so.
            if wanted > have && !self.raft_groups.mismatch_reported {
                self.raft_groups.mismatch_reported = true;
                tracing::warn!(
                    configured = wanted,
                    cluster = have,
                    "data_groups is above the cluster's: using the cluster's (set when the \
                     cluster started; `raftmq cluster add-data-groups N` adds more)"
                );
            }
            return;
        }
        if wanted == 0
            || !self.leader_ready()
            || self.members.view.cluster_id == 0
            || self.raft.membership_change_pending().is_some()
            || !self.raft.membership().learners.is_empty()
        {
            return;
        }
        if self
            .raft_groups
            .proposed_at
            .is_some_and(|t| now.duration_since(t) < self.election_timeout())
        {
            return;
        }
        let voters: Vec<u64> = self.raft.membership().voters.iter().map(|v| v.0).collect();
        if !self.voters_racks_known(&voters, now) {
            return;
        }
        self.raft_groups.proposed_at = Some(now);
        let ids: Vec<GroupId> = (1..=wanted).collect();
        let rf = self.config.replication_factor.max(1) as usize;
        let assignment = placement::initial(&ids, &voters, self.state.racks(), rf);
        let command = Command::SetDataGroups {
            groups: assignment.into_values().collect(),
        };
        match self.raft.propose(EntryKind::Command, command.encode()) {
            Ok((index, _)) => {
                tracing::info!(
                    index = index.0,
                    data_groups = wanted,
                    "creating the data groups"
                )
            }
            Err(e) => tracing::debug!(error = %e, "data groups deferred"),
        }
    }

    /// Whether the first data groups can be placed as far as racks go: this node
    /// names no rack (the cluster does not use them), every voter's rack is
    /// recorded (each node advertises its own as it starts), or [`RACKS_WAIT`]
    /// has passed (with a warning naming the voters without one).
    fn voters_racks_known(&mut self, voters: &[u64], now: Instant) -> bool {
        if self.config.rack.is_none() {
            return true;
        }
        let missing: Vec<u64> = voters
            .iter()
            .copied()
            .filter(|v| !self.state.racks().contains_key(v))
            .collect();
        if missing.is_empty() {
            return true;
        }
        let since = *self.raft_groups.racks_awaited_since.get_or_insert(now);
        if now.duration_since(since) < RACKS_WAIT {
            return false;
        }
        tracing::warn!(
            nodes = ?missing,
            "no rack known for these voters after {RACKS_WAIT:?}: each counts as a \
             failure domain of its own (start every node with --rack)"
        );
        true
    }

    /// Metadata leader: re-creates elsewhere the data-group replicas of a member
    /// silent for `dead_node_timeout_ms` (the node is not decommissioned: a later
    /// rebalance places replicas on it again once it is back).
    fn replace_dead_nodes(&mut self, now: Instant) {
        let timeout = self.config.dead_node_timeout_ms;
        if timeout == 0 || self.state.data_groups().is_empty() {
            return;
        }
        if !self.leader_ready() {
            self.raft_groups.silent_since.clear();
            return;
        }
        let status = self.raft.status();
        for p in &status.progress {
            if p.recent_active {
                self.raft_groups.silent_since.remove(&p.id);
            } else {
                self.raft_groups.silent_since.entry(p.id).or_insert(now);
            }
        }
        let dead: Vec<u64> = self
            .raft_groups
            .silent_since
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= Duration::from_millis(timeout))
            .map(|(id, _)| id.0)
            .collect();
        for node in dead {
            let holds = self
                .state
                .data_groups()
                .values()
                .any(|g| g.replicas.contains(&node));
            if !holds {
                continue;
            }
            let nodes: Vec<u64> = status
                .progress
                .iter()
                .filter(|p| p.recent_active)
                .map(|p| p.id.0)
                .chain(std::iter::once(self.config.node_id.0))
                .filter(|n| !self.state.decommissioned().contains(n))
                .collect();
            let current = self.current_assignment();
            let changes = placement::evacuate(&current, node, &nodes, self.state.racks());
            if changes.is_empty() {
                continue;
            }
            tracing::warn!(
                node,
                silent_ms = timeout,
                groups = changes.len(),
                "node not heard from: re-creating its data-group replicas on other nodes"
            );
            for (group, replicas) in changes {
                let command = Command::AssignReplicas { group, replicas };
                if let Err(e) = self.raft.propose(EntryKind::Command, command.encode()) {
                    tracing::debug!(error = %e, "replica re-creation deferred");
                    return;
                }
            }
            // Once per silence: it starts again if the node comes back and goes.
            self.raft_groups.silent_since.remove(&NodeId(node));
        }
    }

    /// The address of every member this node knows.
    fn member_addresses(&self) -> BTreeMap<NodeId, std::net::SocketAddr> {
        self.members
            .view
            .members
            .iter()
            .map(|(id, m)| (*id, m.address))
            .collect()
    }

    /// Each data group's replicas as the metadata group places them.
    fn current_assignment(&self) -> Assignment {
        self.state
            .data_groups()
            .iter()
            .map(|(g, d)| (*g, d.replicas.clone()))
            .collect()
    }

    /// `AddDataGroups` (metadata leader): `count` more data groups on the
    /// least-loaded nodes (every node's replicas then start them; see
    /// [`placement::add`]).
    pub(super) fn add_data_groups(&mut self, req: pb::AddDataGroupsRequest, reply: Responder) {
        if self.state.data_groups().is_empty() {
            return reply.error(pb::Error::new(
                ErrorCode::InvalidRequest,
                "this cluster runs without data groups (started without --data-groups): \
                 its data stays in the metadata group",
            ));
        }
        if req.count == 0 || req.count > MAX_ADDED_GROUPS {
            return reply.error(pb::Error::new(
                ErrorCode::InvalidRequest,
                format!(
                    "add 1 to {MAX_ADDED_GROUPS} data groups at a time, not {}",
                    req.count
                ),
            ));
        }
        let nodes: Vec<u64> = self
            .raft
            .membership()
            .members()
            .map(|v| v.0)
            .filter(|n| !self.state.decommissioned().contains(n))
            .collect();
        let current = self.current_assignment();
        let last = current.keys().next_back().copied().unwrap_or(0);
        let ids: Vec<GroupId> = (last + 1..=last + req.count).collect();
        let rf = self.config.replication_factor.max(1) as usize;
        let added = placement::add(&current, &ids, &nodes, self.state.racks(), rf);
        tracing::info!(
            groups = ?ids,
            replication_factor = rf,
            "adding data groups"
        );
        let answer = group_replicas(&added);
        let command = Command::AddDataGroups {
            groups: added.into_values().collect(),
        };
        self.propose_command(command, PendingKind::AddDataGroups(answer), reply);
    }

    /// `MoveReplicas` (metadata leader): places no replica on the decommissioned
    /// node any more and moves its replicas away, then evens out the rest.
    pub(super) fn move_replicas(&mut self, req: pb::MoveReplicasRequest, reply: Responder) {
        if self.state.data_groups().is_empty() {
            return reply.error(pb::Error::new(
                ErrorCode::InvalidRequest,
                "this cluster has no data groups to move (started without --data-groups)",
            ));
        }
        let leaving = req.decommission;
        // A typo is refused; a node no longer a member that still holds replicas
        // (removed while a placement onto it was being applied) may be, to move
        // them off.
        let holds = self
            .state
            .data_groups()
            .values()
            .any(|g| g.replicas.contains(&leaving));
        if leaving != 0 && !holds && !self.raft.membership().contains(NodeId(leaving)) {
            let members: Vec<String> = self
                .raft
                .membership()
                .members()
                .map(|n| n.0.to_string())
                .collect();
            return reply.error(pb::Error::new(
                ErrorCode::InvalidRequest,
                format!(
                    "node {leaving} is not a member of this cluster (members: {}): nothing \
                     to decommission",
                    members.join(", ")
                ),
            ));
        }
        // Every member of the metadata group, voter or learner: a cluster larger
        // than its metadata quorum (3 or 5 voters) keeps the other nodes as learners
        // of it, and they hold data-group replicas all the same.
        let nodes: Vec<u64> = self
            .raft
            .membership()
            .members()
            .map(|v| v.0)
            .filter(|n| *n != leaving && !self.state.decommissioned().contains(n))
            .collect();
        let current = self.current_assignment();
        let mut commands = Vec::new();
        let mut changes = Assignment::new();
        if leaving != 0 {
            commands.push(Command::Decommission { node: leaving });
            changes = placement::evacuate(&current, leaving, &nodes, self.state.racks());
        }
        let mut after = current.clone();
        after.extend(changes.clone());
        changes.extend(placement::rebalance(
            &after,
            &nodes,
            self.state.racks(),
            req.max_moves as usize,
        ));
        let moved = group_replicas(&changes);
        for (group, replicas) in changes {
            commands.push(Command::AssignReplicas { group, replicas });
        }
        let Some(last) = commands.pop() else {
            return reply.ok(pb::response::Body::MoveReplicas(
                pb::MoveReplicasResponse::default(),
            ));
        };
        tracing::info!(
            decommission = leaving,
            groups = moved.len(),
            "moving data-group replicas"
        );
        for command in commands {
            if let Err(e) = self.raft.propose(EntryKind::Command, command.encode()) {
                return reply.error(pb::Error::new(ErrorCode::Busy, e.to_string()));
            }
        }
        self.propose_command(last, PendingKind::MoveReplicas(moved), reply);
    }

    /// Data-group leader: proposes the topics the metadata group placed here and
    /// not yet in this group's log, and deletes the ones it deleted.
    fn mirror_topics(&mut self) {
        if !self.leader_ready() || self.state.applied() < self.raft_groups.mirror_index {
            return;
        }
        let placement = self.raft_groups.directory.placement();
        if placement.groups.is_empty() {
            return;
        }
        let group = self.group_id();
        let mut commands = Vec::new();
        for topic in self.state.topics() {
            let current = placement.topics.get(&topic.name).map(|t| t.id);
            // A lower id the metadata group no longer has under this name was
            // deleted there (a higher one is newer than what it applied so far).
            if current != Some(topic.id) && topic.id < placement.next_topic_id {
                // Offsets live in the metadata group, not here.
                commands.push(Command::DeleteTopic {
                    name: topic.name.clone(),
                    drop_offsets: false,
                });
            }
        }
        for (name, topic) in &placement.topics {
            if topic.groups.contains(&group) && self.state.topic_by_id(topic.id).is_none() {
                commands.push(Command::MirrorTopic {
                    id: topic.id,
                    name: name.clone(),
                    queues: topic.queues,
                    retention: topic.retention,
                });
            }
        }
        for command in commands.into_iter().take(MIRROR_BATCH) {
            match self.raft.propose(EntryKind::Command, command.encode()) {
                Ok((index, _)) => self.raft_groups.mirror_index = index,
                Err(e) => {
                    tracing::debug!(error = %e, "topic mirroring deferred");
                    break;
                }
            }
        }
    }

    /// Data-group leader: one step of moving the membership to the placed
    /// replicas ([`replica_moves`]: add a learner, promote it once it holds the
    /// entry that lists it and is within `max_learner_lag`, remove what left once
    /// every placed replica votes; a member recorded with a data directory the
    /// cluster no longer knows under its id goes first).
    fn reconcile_membership(&mut self) {
        if !self.leader_ready() || self.raft.membership_change_pending().is_some() {
            return;
        }
        let placement = self.raft_groups.directory.placement();
        let Some(placed) = placement.groups.get(&self.group_id()) else {
            return;
        };
        let placed: Vec<NodeId> = placed.replicas.iter().map(|&n| NodeId(n)).collect();
        let membership = self.raft.membership().clone();
        let view = &self.members.view;
        let step = replica_moves::next_step(
            &replica_moves::GroupView {
                membership: &membership,
                recorded: &view.recorded,
                placed: &placed,
                incarnations: &placement.incarnations,
                refused: &self.members.refused_incarnations,
                me: self.config.node_id,
            },
            |learner| self.caught_up(learner, view.index),
        );
        let Some(step) = step else {
            return;
        };
        let mut next = membership;
        let mut members = view.recorded.clone();
        let line = match step {
            ReplicaStep::DropReplaced {
                node,
                recorded,
                current,
            } => {
                next.voters.retain(|v| *v != node);
                next.learners.retain(|l| *l != node);
                members.remove(&node);
                format!(
                    "removing node {}'s old data directory (incarnation {recorded:016x}): the \
                     cluster knows node {} as {current:016x} now (wiped and joined again)",
                    node.0, node.0
                )
            }
            ReplicaStep::AddLearner(new) => {
                let Some(&address) = placement.addresses.get(&new) else {
                    return;
                };
                next.learners.push(new);
                next.learners.sort_unstable();
                members.insert(
                    new,
                    MemberInfo {
                        address,
                        incarnation: 0,
                    },
                );
                format!("adding node {} as a learner", new.0)
            }
            ReplicaStep::Promote(learner) => {
                next.learners.retain(|l| *l != learner);
                next.voters.push(learner);
                next.voters.sort_unstable();
                format!("promoting node {} to voter", learner.0)
            }
            ReplicaStep::RemoveLearner(gone) => {
                next.learners.retain(|l| *l != gone);
                members.remove(&gone);
                format!("removing learner {}", gone.0)
            }
            ReplicaStep::RemoveVoter(gone) => {
                next.voters.retain(|v| *v != gone);
                members.remove(&gone);
                format!("removing voter {}", gone.0)
            }
            ReplicaStep::HandOver => {
                // Hand over to the placed voter most caught up; the new leader
                // removes this node.
                let target = self.handover_target(|id| placed.contains(&id));
                if let Some(target) = target {
                    if self.raft.transfer_leadership(target).is_ok() {
                        tracing::info!(to = target.0, "leaving this data group: handing over");
                    }
                }
                return;
            }
        };
        self.propose_group_membership(next, members, line);
    }

    /// Whether `learner` replicates, holds the membership entry at `index` and is
    /// within `max_learner_lag` of this leader.
    pub(super) fn caught_up(&self, learner: NodeId, index: u64) -> bool {
        let status = self.raft.status();
        let last = status.last_index.0;
        status.progress.iter().any(|p| {
            p.id == learner
                && p.recent_active
                && p.state == ProgressState::Replicate
                && p.match_index.0 >= index
                && last.saturating_sub(p.match_index.0) <= self.config.max_learner_lag
        })
    }

    pub(super) fn propose_group_membership(
        &mut self,
        membership: Membership,
        members: BTreeMap<NodeId, MemberInfo>,
        step: String,
    ) {
        let context =
            ClusterView::encode_context(self.members.view.cluster_id, &membership, &members);
        match self.raft.propose_membership(&membership, &context) {
            Ok((index, _)) => {
                tracing::info!(index = index.0, "{step}");
                self.raft_groups.logged_change = None;
            }
            Err(e) => {
                let line = format!("{step}: {e}");
                if self.raft_groups.logged_change.as_ref() != Some(&line) {
                    tracing::info!("deferred: {line}");
                    self.raft_groups.logged_change = Some(line);
                }
            }
        }
    }

    /// Data-group leader: hands over to the preferred leader once it is a caught-up
    /// voter that was heard from.
    fn balance_leadership(&mut self, now: Instant) {
        if self.raft.role() != Role::Leader {
            self.raft_groups.balanced_at = None;
            self.raft_groups.preferred_heard_since = None;
            return;
        }
        let Some(at) = self.raft_groups.balanced_at else {
            // Leading since about now: give the group time to settle first.
            self.raft_groups.balanced_at = Some(now);
            return;
        };
        if now.duration_since(at) < LEADER_BALANCE_INTERVAL
            || !self.leader_ready()
            || self.raft_groups.directory.handing_over()
        {
            return;
        }
        self.raft_groups.balanced_at = Some(now);
        let Some(preferred) = self.placed_replicas().and_then(|r| r.first().copied()) else {
            return;
        };
        if preferred == self.config.node_id.0 || self.raft.membership_change_pending().is_some() {
            return;
        }
        let status = self.raft.status();
        let last = self.raft.log().last_index();
        let Some(p) = status
            .progress
            .iter()
            .find(|p| p.id.0 == preferred && p.voter && p.recent_active)
        else {
            self.raft_groups.preferred_heard_since = None;
            return;
        };
        // Heard from without a break for a while (its catching up does not reset
        // this: under load it is an entry or two behind at any moment).
        let since = match self.raft_groups.preferred_heard_since {
            Some((node, since)) if node == preferred => since,
            _ => {
                self.raft_groups.preferred_heard_since = Some((preferred, now));
                now
            }
        };
        if now.duration_since(since) < PREFERRED_SETTLE || p.match_index < last.prev() {
            return;
        }
        match self.raft.transfer_leadership(NodeId(preferred)) {
            Ok(()) => tracing::info!(to = preferred, "handing leadership to the preferred leader"),
            Err(e) => tracing::debug!(error = %e, "leader balancing deferred"),
        }
    }

    /// The process is stopping: hands the leadership of this group to the voter
    /// best placed to take it (its preferred leader when caught up, else the most
    /// caught-up voter heard from), so that the group has a leader again within a
    /// round trip instead of an election timeout. Called again at every tick until
    /// the process stops: a transfer the core abandoned is retried.
    pub(super) fn hand_over_leadership(&mut self) {
        if self.raft.role() != Role::Leader {
            return;
        }
        let status = self.raft.status();
        if status.transferee.is_some() {
            return;
        }
        let me = self.config.node_id;
        let preferred = self.placed_replicas().and_then(|r| r.first().copied());
        let target = status
            .progress
            .iter()
            .filter(|p| p.voter && p.recent_active && p.id != me)
            .max_by_key(|p| (p.match_index, Some(p.id.0) == preferred))
            .map(|p| p.id);
        let Some(target) = target else {
            return; // no other voter is up: nobody to hand over to
        };
        match self.raft.transfer_leadership(target) {
            Ok(()) => tracing::info!(to = target.0, "stopping: handing leadership over"),
            Err(e) => tracing::debug!(error = %e, "stopping: leadership not handed over yet"),
        }
    }

    /// A data group led here while its placement prefers another node.
    pub(super) fn leading_in_place_of_preferred(&self) -> bool {
        self.raft.role() == Role::Leader
            && self.group_id() != METADATA_GROUP
            && self
                .placed_replicas()
                .and_then(|r| r.first().copied())
                .is_some_and(|preferred| preferred != self.config.node_id.0)
    }

    /// The data groups this node runs, for metadata and status answers.
    pub(super) fn data_group_infos(&self) -> Vec<pb::GroupInfo> {
        let mut infos = self.raft_groups.directory.statuses();
        infos.retain(|g| g.group_id != METADATA_GROUP);
        infos
    }

    /// Every data group for a metadata answer: those running here with their
    /// status, the others with their placed replicas only (leader unknown here: a
    /// client asks one of the replicas, which names the leader).
    pub(super) fn data_groups_for_metadata(&self) -> Vec<pb::GroupInfo> {
        let mut infos: BTreeMap<GroupId, pb::GroupInfo> = self
            .data_group_infos()
            .into_iter()
            .map(|g| (g.group_id, g))
            .collect();
        for (&id, group) in self.state.data_groups() {
            infos.entry(id).or_insert_with(|| pb::GroupInfo {
                group_id: id,
                preferred_leader_id: group.replicas.first().copied().unwrap_or(0),
                replicas: group.replicas.clone(),
                ..pb::GroupInfo::default()
            });
        }
        infos.into_values().collect()
    }

    /// A node the data groups are still placed on cannot leave the cluster.
    pub(super) fn removal_refused(&self, node: u64) -> Option<String> {
        let holding: Vec<u32> = self
            .state
            .data_groups()
            .iter()
            .filter(|(_, g)| g.replicas.contains(&node))
            .map(|(id, _)| *id)
            .collect();
        (!holding.is_empty()).then(|| {
            format!(
                "node {node} still holds replicas of data groups {holding:?}: run `raftmq \
                 cluster decommission {node}`, wait until `raftmq cluster status` shows no \
                 group moving, then remove it"
            )
        })
    }
}

/// An assignment as the wire gives it.
fn group_replicas(assignment: &Assignment) -> Vec<pb::GroupReplicas> {
    assignment
        .iter()
        .map(|(g, r)| pb::GroupReplicas {
            group_id: *g,
            replicas: r.clone(),
        })
        .collect()
}
