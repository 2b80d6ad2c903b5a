//! Membership in the node: admitting peers, following the membership in effect,
//! and the requests that change it (join, add-node, remove-node).
//!
//! The Raft core decides what is safe (single-server changes, one at a time, see
//! `raft/membership.rs`); the node adds what an operator needs: addresses and
//! identities of members, the cluster id, refusal of strangers, a bounded learner
//! lag before promotion, and a leader that hands over before removing itself.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use raftmq_proto::pb::{self, ErrorCode};
use raftmq_store::EntryKind;

use super::{Node, PendingKind};
use crate::cluster::{ClusterView, MemberInfo};
use crate::raft::{ChangeError, Membership, MembershipEntry, NodeId, ProposeError, Role};
use crate::raft_wire::PeerIdentity;
use crate::response::Responder;

/// A refused peer is reported at most this often.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(30);
/// How often a leader tells a removed replica that asks for votes.
const REMOVAL_NOTICE_INTERVAL: Duration = Duration::from_secs(1);

/// What a peer message is, for admission (see [`Node::admit_peer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PeerKind {
    /// A (pre-)vote request.
    VoteRequest,
    /// A vote, an append or heartbeat acknowledgement: counted in a quorum.
    Counted,
    /// Anything else (appends, heartbeats, snapshots, reads).
    Other,
}

impl PeerKind {
    pub(super) fn of(body: &crate::raft::MessageBody) -> PeerKind {
        use crate::raft::MessageBody as B;
        match body {
            B::Vote { .. } => PeerKind::VoteRequest,
            B::VoteResponse { .. } | B::AppendResponse { .. } | B::HeartbeatResponse { .. } => {
                PeerKind::Counted
            }
            _ => PeerKind::Other,
        }
    }
}

/// Which request a membership proposal answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MembershipOp {
    Join,
    Add,
    Remove,
}

/// Membership state of the node.
pub(super) struct MembershipState {
    /// The membership in effect, decoded.
    pub view: ClusterView,
    /// Incarnations heard from members the view records without one.
    heard: BTreeMap<NodeId, u64>,
    /// When each refused peer was last reported.
    refused_said: BTreeMap<NodeId, Instant>,
    /// Members whose acknowledgements were refused because they came from another
    /// data directory than the one recorded: the incarnation they came from.
    pub refused_incarnations: BTreeMap<NodeId, u64>,
    /// When the leader last proposed upkeep (not more than once per election
    /// timeout while one is uncommitted).
    last_upkeep: Option<Instant>,
    /// Metadata leader: since when each member has not been heard from (see
    /// `metadata_voters.rs`).
    pub silent_since: BTreeMap<NodeId, Instant>,
}

impl MembershipState {
    pub(super) fn new(view: ClusterView) -> Self {
        MembershipState {
            view,
            heard: BTreeMap::new(),
            refused_said: BTreeMap::new(),
            refused_incarnations: BTreeMap::new(),
            last_upkeep: None,
            silent_since: BTreeMap::new(),
        }
    }
}

impl Node {
    /// Whether a peer message may reach the core. Refused:
    /// - anything from another cluster;
    /// - from a member whose data directory is not the recorded one, the votes and
    ///   acknowledgements this node would count (a wiped node forgot its vote and
    ///   the entries it acknowledged). Its requests are still heard: this node's
    ///   view may be an old one (a node catching up replays old memberships), and
    ///   refusing a legitimately replaced leader's appends would stall it;
    ///
    /// Messages from non-members are heard: this node's view may be old (a voter it
    /// does not know yet may need its vote), or an uncommitted change that a leader
    /// it does not list is about to overwrite. A removed node cannot win an
    /// election anyway (the members that committed its removal hold a newer log),
    /// and pre-vote keeps it from raising terms; the leader tells it that it is not
    /// a member, so its own log says so.
    pub(super) fn admit_peer(
        &mut self,
        from: NodeId,
        identity: PeerIdentity,
        kind: PeerKind,
    ) -> bool {
        let ours = self.identity.cluster_id;
        let refusal = if identity.cluster_id != 0 && ours != 0 && identity.cluster_id != ours {
            Some(format!(
                "it belongs to cluster {:016x}, this node to cluster {ours:016x}: one of the \
                 two was started with another node's --peers or with a data directory that is \
                 not its own (an empty one starts a cluster of its own unless given --join)",
                identity.cluster_id
            ))
        } else if let Some(member) = self.members.view.members.get(&from) {
            if kind == PeerKind::Counted
                && member.incarnation != 0
                && identity.incarnation != 0
                && member.incarnation != identity.incarnation
            {
                self.members
                    .refused_incarnations
                    .insert(from, identity.incarnation);
                Some(format!(
                    "its data directory (incarnation {:016x}) is not the one this group \
                     knows as node {} ({:016x}): it was wiped or replaced; remove it with \
                     `raftmq cluster remove-node {}` and start it with --join to add it again \
                     (a data group then replaces the old directory by itself once the node is \
                     placed in it)",
                    identity.incarnation, from.0, member.incarnation, from.0
                ))
            } else {
                if member.incarnation == 0 && identity.incarnation != 0 {
                    self.members.heard.insert(from, identity.incarnation);
                }
                None
            }
        } else if kind == PeerKind::VoteRequest && self.members.view.index > 0 {
            // Heard (see above), but told: it asks for votes it is not owed. The
            // leader says so; any member whose committed membership leaves it out
            // says its removal is committed (a removed replica may not know the
            // new leader, a member added in its place), and the replica may retire.
            let removed_at = self.removal_committed(from);
            if removed_at > 0 || self.raft.role() == Role::Leader {
                self.notify_refused(
                    from,
                    identity,
                    format!(
                        "node {} is not a member of this group (removed, or not added yet)",
                        from.0
                    ),
                    removed_at,
                );
            }
            None
        } else {
            // This node is not a member yet (it is joining): it hears from the
            // leader before it learns the membership, and answers where it says.
            if let Some(address) = identity.address {
                self.transport.ensure_peer(from, address);
            }
            None
        };
        let Some(reason) = refusal else {
            return true;
        };
        self.metrics.handles.raft.peer_messages_refused.increment(1);
        if kind == PeerKind::Counted && self.raft.role() != Role::Leader {
            // A candidate's view may be old: only the leader's is worth reporting.
            tracing::debug!(peer = from.0, %reason, "vote refused");
            return false;
        }
        self.notify_refused(from, identity, reason, 0);
        false
    }

    /// The index of this node's committed membership when neither it nor the
    /// membership in effect has a place for `from` (0 otherwise, when `from` was
    /// never a member — the group's first configuration has no place for it — and
    /// in the metadata group).
    fn removal_committed(&self, from: NodeId) -> u64 {
        // The metadata group's removed nodes are told by its leader alone, every
        // 30 s (they have nothing to retire: `cluster remove-node` removes a node).
        if self.group_id() == crate::directory::METADATA_GROUP
            || self.raft.membership().contains(from)
        {
            return 0;
        }
        match self.raft.membership_at(self.raft.commit_index()) {
            Some(m) if !m.membership.contains(from) => m.index.0,
            _ => 0,
        }
    }

    /// Logs why `from` is refused, and tells it (both at most every 30 s; a
    /// removal notice every second, so that a moved replica retires promptly).
    fn notify_refused(
        &mut self,
        from: NodeId,
        identity: PeerIdentity,
        reason: String,
        removed_at: u64,
    ) {
        let now = Instant::now();
        let said = self.members.refused_said.get(&from);
        let interval = if removed_at > 0 {
            REMOVAL_NOTICE_INTERVAL
        } else {
            REFUSAL_LOG_INTERVAL
        };
        if said.is_none_or(|t| now.duration_since(*t) >= interval) {
            if removed_at > 0 {
                tracing::info!(peer = from.0, removed_at, "telling a removed replica");
            } else {
                tracing::warn!(peer = from.0, %reason, "peer not admitted");
            }
            self.members.refused_said.insert(from, now);
            // Tell it too, so the refused node's own log says why it is stuck.
            let notice = format!("node {} ignores this node: {reason}", self.config.node_id.0);
            self.transport
                .send_refusal(from, identity.address, notice, removed_at);
        }
    }

    /// A peer says it ignores this node's messages (rate-limited by the sender);
    /// a group's leader may say this replica was removed for good.
    pub(super) fn refused_by(&mut self, from: NodeId, reason: &str, removed_at: u64) {
        if removed_at > 0 {
            self.told_removed(from, removed_at);
            return;
        }
        tracing::error!(peer = from.0, %reason, "a peer refuses this node");
    }

    /// The membership in effect changed (appended, truncated away, or installed
    /// with a snapshot): links follow it.
    pub(super) fn membership_changed(&mut self, entry: &MembershipEntry) {
        let was_member = self.members.view.members.contains_key(&self.config.node_id);
        let view = ClusterView::from_entry(entry, &self.bootstrap_addresses());
        let peers = view
            .members
            .iter()
            .map(|(&id, m)| (id, m.address))
            .collect();
        self.transport.set_peers(&peers);
        tracing::info!(
            index = entry.index.0,
            membership = %entry.membership,
            "membership in effect"
        );
        if entry.index.0 > 0 {
            self.metrics.handles.raft.membership_changes.increment(1);
        }
        let me = self.config.node_id;
        if was_member && !view.membership.contains(me) && entry.index.0 > 0 {
            tracing::warn!(
                "this node was removed from the cluster; it no longer votes or receives the log \
                 (stop it, or start it with an empty data directory and --join to add it again)"
            );
        }
        self.members
            .heard
            .retain(|id, _| view.membership.contains(*id));
        self.members.view = view;
    }

    /// Addresses this node's own configuration gives members (`peers`): they win
    /// over the log's.
    fn bootstrap_addresses(&self) -> BTreeMap<NodeId, std::net::SocketAddr> {
        self.config.peers.clone()
    }

    /// A membership entry was applied (committed): the cluster id it carries is
    /// now this node's for good.
    pub(super) fn membership_applied(&mut self, body: &bytes::Bytes) {
        let Ok((membership, context)) = Membership::decode(body) else {
            return;
        };
        let entry = MembershipEntry {
            index: crate::raft::LogIndex::ZERO,
            membership,
            context,
        };
        let cluster_id = ClusterView::from_entry(&entry, &BTreeMap::new()).cluster_id;
        if cluster_id == 0 || cluster_id == self.identity.cluster_id {
            return;
        }
        self.identity.cluster_id = cluster_id;
        // The identity file is the metadata group's; data groups are born into a
        // known cluster.
        if self.group_id() == crate::directory::METADATA_GROUP {
            if let Err(e) = self.identity.save(&self.config.data_dir) {
                tracing::error!(error = %e, "cannot record the cluster id");
            }
        }
        self.transport.set_identity(PeerIdentity {
            cluster_id,
            incarnation: self.identity.incarnation,
            address: Some(self.config.listen),
        });
        tracing::info!(cluster_id = %format!("{cluster_id:016x}"), "member of cluster");
    }

    /// Leader, every tick: writes the first membership entry of a new cluster (its
    /// id) and records members' incarnations once heard from.
    pub(super) fn membership_upkeep(&mut self, now: Instant) {
        if !self.leader_ready() || self.raft.membership_change_pending().is_some() {
            return;
        }
        if self
            .members
            .last_upkeep
            .is_some_and(|t| now.duration_since(t) < self.election_timeout())
        {
            return;
        }
        let view = &self.members.view;
        let me = self.config.node_id;
        let mut members = view.recorded.clone();
        let mut changed = view.cluster_id == 0;
        for (id, member) in &mut members {
            let heard = if *id == me {
                Some(self.identity.incarnation)
            } else {
                self.members.heard.get(id).copied()
            };
            if let (0, Some(incarnation)) = (member.incarnation, heard) {
                member.incarnation = incarnation;
                changed = true;
            }
        }
        if !changed {
            return;
        }
        // A cluster id this node already applied wins over a new one (defensive: a
        // committed id is in every later leader's log anyway).
        let cluster_id = match (view.cluster_id, self.identity.cluster_id) {
            (0, 0) if self.group_id() != crate::directory::METADATA_GROUP => return,
            (0, 0) => crate::cluster::random_id(),
            (0, known) => known,
            (id, _) => id,
        };
        let membership = view.membership.clone();
        self.members.last_upkeep = Some(now);
        let context = ClusterView::encode_context(cluster_id, &membership, &members);
        match self.raft.propose_membership(&membership, &context) {
            Ok((index, _)) => {
                tracing::info!(
                    index = index.0,
                    "recording cluster identity in the membership"
                )
            }
            Err(e) => tracing::debug!(error = %e, "membership upkeep deferred"),
        }
    }

    pub(super) fn election_timeout(&self) -> Duration {
        Duration::from_millis(self.config.tick_ms * u64::from(self.config.election_timeout_ticks))
    }

    /// `JoinCluster`: adds a new node as a learner.
    pub(super) fn join_cluster(&mut self, req: pb::JoinClusterRequest, reply: Responder) {
        let id = NodeId(req.node_id);
        // Numeric only: a name would need a blocking lookup on the node task.
        let address: std::net::SocketAddr = match req.address.parse() {
            Ok(a) => a,
            Err(_) => {
                return self.refuse_change(
                    reply,
                    ErrorCode::InvalidRequest,
                    format!("{:?} is not an IP address and port", req.address),
                )
            }
        };
        if id.0 == 0 || req.incarnation == 0 {
            return self.refuse_change(
                reply,
                ErrorCode::InvalidRequest,
                "a joining node needs a node id and an incarnation".into(),
            );
        }
        let view = &self.members.view;
        if let Some(member) = view.members.get(&id) {
            if member.incarnation == req.incarnation || member.incarnation == 0 {
                // A retry, or a node that restarted with --join: nothing to change.
                let done = pb::JoinClusterResponse {
                    cluster_id: view.cluster_id,
                    membership_index: view.index,
                    voter: self.raft.membership().is_voter(id),
                };
                return reply.ok(pb::response::Body::JoinCluster(done));
            }
            return self.refuse_change(
                reply,
                ErrorCode::WrongCluster,
                format!(
                    "node id {} is a member with another data directory. If that node still \
                     runs with its data, this one was started with the wrong --data-dir or \
                     --node-id: start it with its own. Only if node {}'s data is lost for good: \
                     `raftmq cluster decommission {}`, then `raftmq cluster remove-node {}`, \
                     then join again",
                    id.0, id.0, id.0, id.0
                ),
            );
        }
        if view.recorded.values().any(|m| m.address == address) {
            return self.refuse_change(
                reply,
                ErrorCode::InvalidMembershipChange,
                format!("another member already listens on {address}"),
            );
        }
        if self.state.decommissioned().contains(&id.0) {
            // Not a member any more (removed): the id is reused by a new data
            // directory (a machine replaced with its disk, a StatefulSet's pod).
            let command = crate::command::Command::Recommission { node: id.0 };
            if let Err(e) = self.raft.propose(EntryKind::Command, command.encode()) {
                return self.refuse_change(reply, ErrorCode::Busy, e.to_string());
            }
            tracing::info!(
                node = id.0,
                "a new data directory joins with a decommissioned node's id: it may hold \
                 replicas again"
            );
        }
        let view = &self.members.view;
        let mut membership = view.membership.clone();
        membership.learners.push(id);
        membership.learners.sort_unstable();
        let mut members = view.recorded.clone();
        members.insert(
            id,
            MemberInfo {
                address,
                incarnation: req.incarnation,
            },
        );
        tracing::info!(node = id.0, %address, "node asks to join; adding it as a learner");
        self.propose_change(membership, members, MembershipOp::Join, reply);
    }

    /// `AddNode`: promotes a learner that has caught up.
    pub(super) fn add_node(&mut self, req: pb::AddNodeRequest, reply: Responder) {
        let id = NodeId(req.node_id);
        let view = &self.members.view;
        if view.membership.is_voter(id) {
            let done = pb::AddNodeResponse {
                membership_index: view.index,
            };
            return reply.ok(pb::response::Body::AddNode(done));
        }
        if !view.membership.is_learner(id) {
            return self.refuse_change(
                reply,
                ErrorCode::InvalidMembershipChange,
                format!(
                    "node {} is not a learner of this cluster: start it with an empty data \
                     directory and --join first",
                    id.0
                ),
            );
        }
        let status = self.raft.status();
        let last = status.last_index.0;
        let progress = status.progress.iter().find(|p| p.id == id);
        let matched = progress.map_or(0, |p| p.match_index.0);
        // Replicating: it answered and its log matches the leader's up to `matched`.
        let replicating = progress
            .is_some_and(|p| p.recent_active && p.state == crate::raft::ProgressState::Replicate);
        let lag = last.saturating_sub(matched);
        // It must also hold the membership that lists it: a node that does not know
        // it is a member does not vote.
        let knows_itself = matched >= view.index;
        if !replicating || !knows_itself || lag > self.config.max_learner_lag {
            return self.refuse_change(
                reply,
                ErrorCode::InvalidMembershipChange,
                format!(
                    "node {} is {lag} entries behind the leader (at most {} allowed): wait \
                     until it has caught up (`raftmq cluster status` shows its lag)",
                    id.0, self.config.max_learner_lag
                ),
            );
        }
        let mut membership = view.membership.clone();
        membership.learners.retain(|l| *l != id);
        membership.voters.push(id);
        membership.voters.sort_unstable();
        let members = view.recorded.clone();
        tracing::info!(node = id.0, lag, "promoting learner to voter");
        self.propose_change(membership, members, MembershipOp::Add, reply);
    }

    /// `RemoveNode`: removes a voter or learner; the leader hands over first if it
    /// is the one removed.
    pub(super) fn remove_node(&mut self, req: pb::RemoveNodeRequest, reply: Responder) {
        if let Some(why) = self.removal_refused(req.node_id) {
            return self.refuse_change(reply, ErrorCode::InvalidMembershipChange, why);
        }
        let id = NodeId(req.node_id);
        let view = &self.members.view;
        if !view.membership.contains(id) {
            return self.refuse_change(
                reply,
                ErrorCode::InvalidMembershipChange,
                format!("node {} is not a member of this cluster", id.0),
            );
        }
        if id == self.config.node_id {
            return self.hand_over_before_removal(reply);
        }
        let mut membership = view.membership.clone();
        membership.voters.retain(|v| *v != id);
        membership.learners.retain(|l| *l != id);
        let members = view.recorded.clone();
        tracing::info!(node = id.0, "removing node");
        self.propose_change(membership, members, MembershipOp::Remove, reply);
    }

    /// Whom a leader that leaves hands over to: the live voter most caught up among
    /// those `eligible` accepts.
    pub(super) fn handover_target(&self, eligible: impl Fn(NodeId) -> bool) -> Option<NodeId> {
        self.raft
            .status()
            .progress
            .iter()
            .filter(|p| p.voter && p.recent_active && eligible(p.id))
            .max_by_key(|p| p.match_index)
            .map(|p| p.id)
    }

    /// The leader was asked to remove itself: it hands leadership to the voter most
    /// caught up and answers NOT_LEADER, so the client retries at the new leader.
    fn hand_over_before_removal(&mut self, reply: Responder) {
        let Some(target) = self.handover_target(|_| true) else {
            return self.refuse_change(
                reply,
                ErrorCode::InvalidMembershipChange,
                "the leader cannot remove itself: no other live voter could take over".into(),
            );
        };
        tracing::info!(
            to = target.0,
            "asked to remove this node: handing leadership over first"
        );
        if let Err(e) = self.raft.transfer_leadership(target) {
            return self.refuse_change(reply, ErrorCode::NotReady, e.to_string());
        }
        let mut error = self.not_leader();
        error.message = format!(
            "this node is the leader and hands leadership to node {} before it is removed; retry",
            target.0
        );
        reply.error(error);
    }

    fn propose_change(
        &mut self,
        membership: Membership,
        members: BTreeMap<NodeId, MemberInfo>,
        op: MembershipOp,
        reply: Responder,
    ) {
        if self.raft.role() != Role::Leader {
            return reply.error(self.not_leader());
        }
        let context =
            ClusterView::encode_context(self.members.view.cluster_id, &membership, &members);
        match self.raft.propose_membership(&membership, &context) {
            Ok((index, term)) => self.await_commit(index, term, PendingKind::Membership(op), reply),
            Err(ProposeError::NotLeader { .. }) => reply.error(self.not_leader()),
            Err(ProposeError::Membership(
                e @ (ChangeError::InProgress(_) | ChangeError::TermNotCommitted),
            )) => self.refuse_change(
                reply,
                ErrorCode::MembershipChangeInProgress,
                format!("{e}; retry shortly"),
            ),
            Err(ProposeError::Membership(e)) => {
                self.refuse_change(reply, ErrorCode::InvalidMembershipChange, e.to_string())
            }
            Err(ProposeError::TransferInProgress) => self.refuse_change(
                reply,
                ErrorCode::MembershipChangeInProgress,
                "a leadership transfer is in progress; retry shortly".into(),
            ),
            Err(e) => self.refuse_change(reply, ErrorCode::Busy, e.to_string()),
        }
    }

    fn refuse_change(&self, reply: Responder, code: ErrorCode, message: String) {
        self.metrics.handles.raft.membership_refusals.increment(1);
        tracing::info!(%message, "membership request refused");
        reply.error(pb::Error::new(code, message));
    }

    /// The answer to a committed membership change.
    pub(super) fn membership_answer(&self, op: MembershipOp, index: u64) -> pb::response::Body {
        use pb::response::Body as R;
        match op {
            MembershipOp::Join => R::JoinCluster(pb::JoinClusterResponse {
                cluster_id: self.members.view.cluster_id,
                membership_index: index,
                voter: false,
            }),
            MembershipOp::Add => R::AddNode(pb::AddNodeResponse {
                membership_index: index,
            }),
            MembershipOp::Remove => R::RemoveNode(pb::RemoveNodeResponse {
                membership_index: index,
            }),
        }
    }

    /// A member's client address, from the membership in effect.
    pub(super) fn member_address(&self, id: NodeId) -> Option<std::net::SocketAddr> {
        self.members
            .view
            .members
            .get(&id)
            .map(|m| m.address)
            .or_else(|| self.config.address_of(id))
    }
}
