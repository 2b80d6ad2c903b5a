//! [`RawNode`]: the state, the entry points (tick, step, propose, ready) and the
//! invariants. Elections live in `election.rs`, replication in `replication.rs`.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use super::config::{Config, FaultVariant};
use super::error::{ProposeError, RaftError, TransferError};
use super::log::RaftLog;
use super::membership::{self, ChangeError, Membership, MembershipEntry, MembershipHistory};
use super::message::{Message, MessageBody};
use super::progress::Progress;
use super::read_index::{PendingRead, ReadState};
use super::ready::{PeerStatus, Ready, Status};
use super::rng::SplitMix64;
use super::types::{Entry, EntryKind, HardState, LogIndex, NodeId, Role, Term};

/// One Raft node: a deterministic state machine over a [`RaftLog`]. See the module
/// documentation for how to drive it.
pub struct RawNode<L: RaftLog> {
    pub(super) config: Config,
    pub(super) log: L,
    pub(super) rng: SplitMix64,

    // Persistent state (reported through `Ready::hard_state`).
    pub(super) term: Term,
    pub(super) vote: Option<NodeId>,
    pub(super) acked_index: LogIndex,
    /// The recovery mark known durable: a truncation at or below it waits until a
    /// lowered mark is durable, so a crash can never leave the log below the mark.
    pub(super) acked_durable: LogIndex,
    /// The last Ready that carried `unsynced`: (index, term, its acked mark).
    pub(super) awaiting_persist: Option<(LogIndex, Term, LogIndex)>,

    /// The memberships the log may still need; the last is in effect.
    pub(super) memberships: MembershipHistory,

    // Volatile state.
    pub(super) role: Role,
    pub(super) leader: Option<NodeId>,
    pub(super) commit: LogIndex,
    pub(super) applied: LogIndex,
    /// The last index handed out in `Ready::to_apply`.
    pub(super) apply_cursor: LogIndex,
    pub(super) persisted_index: LogIndex,
    /// Protocol-aware recovery: the log lost acknowledged entries.
    pub(super) recovering: bool,

    // Timers, in ticks.
    pub(super) election_elapsed: u32,
    pub(super) heartbeat_elapsed: u32,
    pub(super) randomized_election_timeout: u32,
    pub(super) transfer_elapsed: u32,

    // Quiescence (see `quiesce.rs`).
    /// Ticks do nothing: the group is idle and every member agreed.
    pub(super) quiesced: bool,
    /// Leader: ticks since the group last did anything.
    pub(super) idle_ticks: u32,
    /// Leader: the first heartbeat round of the current attempt to quiesce.
    pub(super) quiesce_round: Option<u64>,

    // Candidate state: (voter, granted), one per voter.
    pub(super) votes: Vec<(NodeId, bool)>,
    // Leader state.
    pub(super) progress: BTreeMap<NodeId, Progress>,
    /// The leader's own durable match, learned from its self-acknowledgement.
    pub(super) self_match: LogIndex,
    pub(super) transferee: Option<NodeId>,
    /// Leader: the index of its term's first entry (the Noop); reads are answered at
    /// no lower index (see `read_index.rs`).
    pub(super) term_start: LogIndex,
    /// Leader: the last heartbeat round sent (rounds only grow, across terms too).
    pub(super) read_round: u64,
    /// Leader: reads wait for a round not sent yet.
    pub(super) read_round_wanted: bool,
    /// Leader: reads waiting for a quorum to answer their round, oldest first.
    pub(super) pending_reads: VecDeque<PendingRead>,

    // Output not yet taken by `ready()`.
    pub(super) msgs: Vec<Message>,
    pub(super) persisted_msgs: Vec<Message>,
    pub(super) log_dirty: bool,
    pub(super) reported_hard_state: HardState,
    pub(super) reported_soft: (Role, Term, Option<NodeId>),
    pub(super) scratch_entries: Vec<Entry>,
    /// A snapshot installed since the last Ready (reported in `Ready::snapshot`).
    pub(super) installed_snapshot: Option<(LogIndex, Term)>,
    /// This node's reads decided since the last Ready.
    pub(super) read_states: Vec<ReadState>,
    /// The membership last reported in `Ready::membership`.
    pub(super) reported_membership: (LogIndex, Membership),
}

impl<L: RaftLog> RawNode<L> {
    /// A node over `log` (as recovered from disk) and the last durable `hard_state`.
    ///
    /// # Panics
    /// If the configuration is invalid (see [`Config::validate`]; use
    /// [`RawNode::try_new`] to get the error instead).
    pub fn new(config: Config, log: L, hard_state: HardState) -> Self {
        match Self::try_new(config, log, hard_state) {
            Ok(node) => node,
            Err(e) => panic!("invalid raft config: {e}"),
        }
    }

    /// Like [`RawNode::new`], returning a configuration error instead of panicking.
    pub fn try_new(
        config: Config,
        log: L,
        hard_state: HardState,
    ) -> Result<Self, super::error::ConfigError> {
        config.validate()?;
        let last = log.last_index();
        let last_term = log.term_at(last).expect("term of the last entry");
        // A crash may keep entries of a term whose hard state was not yet durable:
        // never run with log terms above the current term.
        let (term, vote) = if last_term > hard_state.term {
            (last_term, None)
        } else {
            (hard_state.term, hard_state.vote)
        };
        let recovering = last < hard_state.acked_index;
        // The snapshot the log starts after is committed and applied (the driver
        // restored the state machine from it).
        let snapshot_index = log.first_index().prev();
        let mut rng = SplitMix64::new(config.seed ^ config.id.0.wrapping_mul(0x9e37_79b9));
        let randomized_election_timeout = rng.range_u32(
            config.election_timeout_ticks,
            2 * config.election_timeout_ticks,
        );
        let n_voters = config.voters.len();
        let base = MembershipEntry {
            index: snapshot_index,
            membership: Membership::new(config.voters.clone(), config.learners.clone()),
            context: config.membership_context.clone(),
        };
        let reported_membership = (base.index, base.membership.clone());
        let mut memberships = MembershipHistory::new(base);
        scan_memberships(&log, &mut memberships);
        let mut node = RawNode {
            rng,
            log,
            term,
            vote,
            acked_index: hard_state.acked_index,
            acked_durable: hard_state.acked_index,
            awaiting_persist: None,
            role: Role::Follower,
            leader: None,
            commit: snapshot_index,
            applied: snapshot_index,
            apply_cursor: snapshot_index,
            persisted_index: last,
            recovering,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout,
            transfer_elapsed: 0,
            quiesced: false,
            idle_ticks: 0,
            quiesce_round: None,
            votes: Vec::with_capacity(n_voters),
            progress: BTreeMap::new(),
            self_match: LogIndex::ZERO,
            transferee: None,
            term_start: LogIndex::ZERO,
            read_round: 0,
            read_round_wanted: false,
            pending_reads: VecDeque::new(),
            msgs: Vec::new(),
            persisted_msgs: Vec::new(),
            log_dirty: false,
            reported_hard_state: hard_state,
            reported_soft: (Role::Follower, term, None),
            scratch_entries: Vec::new(),
            installed_snapshot: None,
            read_states: Vec::new(),
            memberships,
            reported_membership,
            config,
        };
        node.membership_changed();
        Ok(node)
    }

    // ----- Inputs -------------------------------------------------------------------

    /// Advances the logical clock by one tick.
    pub fn tick(&mut self) {
        if self.quiesced {
            return;
        }
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.tick_election();
        }
        self.check_invariants();
    }

    /// Handles a message from another node (or this node's own self-acknowledgement).
    pub fn step(&mut self, msg: Message) -> Result<(), RaftError> {
        if msg.to != self.config.id {
            return Err(RaftError::WrongRecipient {
                me: self.config.id,
                to: msg.to,
            });
        }
        // Messages from nodes outside the membership are taken: a joining node
        // hears from a leader before it learns the membership from the log, and a
        // learner may be asked to vote by a candidate whose log already promoted it.
        self.heard_from(&msg.body);
        let result = self.step_inner(msg);
        self.check_invariants();
        result
    }

    fn step_inner(&mut self, msg: Message) -> Result<(), RaftError> {
        if msg.term > self.term {
            if let MessageBody::Vote { transfer, .. } = msg.body {
                if self.in_lease() && !transfer {
                    // Leader stickiness: a leader was heard from recently, so this
                    // candidate is disruptive (or partitioned). Ignore it.
                    return Ok(());
                }
            }
            let keeps_term = matches!(
                msg.body,
                MessageBody::Vote { pre_vote: true, .. }
                    | MessageBody::VoteResponse {
                        pre_vote: true,
                        granted: true
                    }
            );
            if !keeps_term {
                let leader = match msg.body {
                    MessageBody::Append { .. }
                    | MessageBody::Heartbeat { .. }
                    | MessageBody::InstallSnapshot { .. }
                    | MessageBody::TimeoutNow => Some(msg.from),
                    _ => None,
                };
                self.become_follower(msg.term, leader);
            }
        } else if msg.term < self.term {
            match msg.body {
                MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. } => {
                    // A stale leader: tell it about the newer term so it steps down.
                    self.send(
                        msg.from,
                        MessageBody::AppendResponse {
                            success: false,
                            match_index: LogIndex::ZERO,
                            reject_index: LogIndex::ZERO,
                            conflict: None,
                            last_log_index: self.log.last_index(),
                        },
                    );
                }
                MessageBody::Vote { pre_vote, .. } => {
                    // Refused in our term, so that the candidate learns it: a
                    // candidate that no node sends anything to (a learner in the
                    // older membership the others still run on, promoted in its
                    // own log) would otherwise campaign in terms that stay below
                    // theirs for ever, one election timeout behind them each time.
                    self.send(
                        msg.from,
                        MessageBody::VoteResponse {
                            pre_vote,
                            granted: false,
                        },
                    );
                }
                _ => {}
            }
            return Ok(());
        }

        let from = msg.from;
        let term = msg.term;
        match msg.body {
            MessageBody::Vote {
                pre_vote,
                last_log_index,
                last_log_term,
                transfer: _,
            } => {
                self.handle_vote(from, term, pre_vote, last_log_index, last_log_term);
                Ok(())
            }
            MessageBody::VoteResponse { pre_vote, granted } => {
                self.handle_vote_response(from, term, pre_vote, granted)
            }
            MessageBody::Append {
                prev_log_index,
                prev_log_term,
                entries,
                commit_index,
            } => self.handle_append(from, prev_log_index, prev_log_term, &entries, commit_index),
            MessageBody::AppendResponse {
                success,
                match_index,
                reject_index,
                conflict,
                last_log_index,
            } => {
                self.handle_append_response(
                    from,
                    success,
                    match_index,
                    reject_index,
                    conflict,
                    last_log_index,
                );
                Ok(())
            }
            MessageBody::Heartbeat {
                commit_index,
                read_round,
                quiesce,
            } => {
                self.handle_heartbeat(from, commit_index, read_round, quiesce);
                Ok(())
            }
            MessageBody::HeartbeatResponse {
                read_round,
                quiesced,
            } => {
                self.handle_heartbeat_response(from, read_round, quiesced);
                Ok(())
            }
            MessageBody::ReadIndex { id } => {
                self.handle_read_index(from, id);
                Ok(())
            }
            MessageBody::ReadIndexResponse { id, index } => {
                self.handle_read_index_response(id, index);
                Ok(())
            }
            MessageBody::TimeoutNow => self.handle_timeout_now(from),
            MessageBody::InstallSnapshot {
                index,
                snapshot_term,
                membership,
            } => self.handle_install_snapshot(from, index, snapshot_term, membership),
        }
    }

    /// Leader only: appends an entry of the current term and returns its (index, term).
    /// Replication messages are built by the next [`RawNode::ready`], so proposals
    /// between two readies travel as one append per follower.
    pub fn propose(
        &mut self,
        kind: EntryKind,
        body: Bytes,
    ) -> Result<(LogIndex, Term), ProposeError> {
        assert!(
            kind != EntryKind::Membership,
            "membership changes go through propose_membership"
        );
        self.check_can_propose(1)?;
        let index = self.log.last_index().next();
        self.scratch_entries.clear();
        self.scratch_entries.push(Entry {
            index,
            term: self.term,
            kind,
            body,
        });
        self.append_as_leader()?;
        Ok((index, self.term))
    }

    /// Leader only: appends one entry per body, all of `kind`, all or none. Returns
    /// the first and last index and the term.
    pub fn propose_batch(
        &mut self,
        kind: EntryKind,
        bodies: &[Bytes],
    ) -> Result<(LogIndex, LogIndex, Term), ProposeError> {
        assert!(!bodies.is_empty(), "empty proposal batch");
        assert!(
            kind != EntryKind::Membership,
            "membership changes go through propose_membership"
        );
        self.check_can_propose(bodies.len())?;
        let first = self.log.last_index().next();
        self.scratch_entries.clear();
        let mut index = first;
        for body in bodies {
            self.scratch_entries.push(Entry {
                index,
                term: self.term,
                kind,
                body: body.clone(),
            });
            index = index.next();
        }
        self.append_as_leader()?;
        Ok((first, self.log.last_index(), self.term))
    }

    /// Leader only: proposes `next` as the group's membership, with the driver's
    /// `context` bytes. Refused unless it is a single-server change (see
    /// `membership.rs`) and no other change is uncommitted; the leader must have
    /// committed an entry of its own term. The change takes effect at once (on
    /// append), on every node as it appends it.
    pub fn propose_membership(
        &mut self,
        next: &Membership,
        context: &[u8],
    ) -> Result<(LogIndex, Term), ProposeError> {
        self.check_can_propose(1)?;
        if self
            .config
            .fault_is(FaultVariant::UncheckedMembershipChanges)
        {
            next.validate()?;
        } else if self
            .config
            .fault_is(FaultVariant::ConcurrentMembershipChanges)
        {
            self.membership().check_change(next, self.config.id)?;
        } else {
            if self.commit < self.term_start {
                return Err(ChangeError::TermNotCommitted.into());
            }
            if let Some(index) = self.memberships.uncommitted(self.commit) {
                return Err(ChangeError::InProgress(index).into());
            }
            self.membership().check_change(next, self.config.id)?;
        }
        let index = self.log.last_index().next();
        self.scratch_entries.clear();
        self.scratch_entries.push(Entry {
            index,
            term: self.term,
            kind: EntryKind::Membership,
            body: next.encode(context),
        });
        self.append_as_leader()?;
        Ok((index, self.term))
    }

    fn check_can_propose(&self, count: usize) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if self.transferee.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        let pending = self.log.last_index().0 - self.commit.0;
        if pending + count as u64 > self.config.max_pending_proposals as u64 {
            return Err(ProposeError::Busy);
        }
        Ok(())
    }

    /// Appends `scratch_entries` to the leader's log; a failed write steps down.
    fn append_as_leader(&mut self) -> Result<(), ProposeError> {
        self.note_activity();
        let entries = std::mem::take(&mut self.scratch_entries);
        let result = self.log.append(&entries);
        if result.is_ok() {
            self.record_memberships(&entries);
        }
        self.scratch_entries = entries;
        self.scratch_entries.clear();
        match result {
            Ok(()) => {
                self.log_dirty = true;
                if self.config.fault_is(FaultVariant::CountLeaderUnsynced) {
                    self.self_match = self.log.last_index();
                    self.maybe_commit();
                }
                self.check_invariants();
                Ok(())
            }
            Err(e) => {
                self.become_follower(self.term, None);
                Err(ProposeError::Storage(e))
            }
        }
    }

    /// The driver made the log durable up to (index, term). Ignored if the entry at
    /// `index` changed meanwhile.
    pub fn persisted(&mut self, index: LogIndex, term: Term) {
        if index > self.persisted_index && self.log.term_at(index) == Some(term) {
            self.persisted_index = index;
        }
        if let Some((i, t, acked)) = self.awaiting_persist {
            if (i, t) == (index, term) {
                // That Ready's hard state is durable too.
                self.acked_durable = acked;
                self.awaiting_persist = None;
            }
        }
    }

    /// A follower that knows no leader campaigns within `ticks` (at least one)
    /// instead of after its randomized election timeout; the timer is never
    /// lengthened, and a node that hears from a leader meanwhile does not
    /// campaign. For a group just created: its preferred leader calls it so the
    /// group can take writes within a few ticks instead of one to two election
    /// timeouts after its creation. Safe at any time: the election it starts
    /// early is an ordinary one (pre-vote first), and if its peers have not
    /// started yet it fails and the next one waits a full randomized timeout.
    pub fn campaign_within(&mut self, ticks: u32) {
        if self.role != Role::Follower || self.leader.is_some() {
            return;
        }
        let at = self.election_elapsed.saturating_add(ticks.max(1));
        self.randomized_election_timeout = self.randomized_election_timeout.min(at);
    }

    /// Leader only: hands leadership to `to` once it has caught up; proposals are
    /// refused until the transfer ends (or is abandoned after an election timeout).
    pub fn transfer_leadership(&mut self, to: NodeId) -> Result<(), TransferError> {
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader {
                leader: self.leader,
            });
        }
        if to == self.config.id {
            return Err(TransferError::AlreadyLeader);
        }
        if !self.membership().is_voter(to) {
            return Err(TransferError::UnknownPeer(to));
        }
        self.note_activity();
        self.transferee = Some(to);
        self.transfer_elapsed = 0;
        self.maybe_send_timeout_now();
        Ok(())
    }

    /// The driver applied committed entries up to `index`.
    pub fn applied(&mut self, index: LogIndex) {
        if index > self.applied {
            self.applied = index;
        }
    }

    // ----- Outputs ------------------------------------------------------------------

    /// Whether [`RawNode::ready`] has anything to hand out.
    pub fn has_ready(&self) -> bool {
        self.log_dirty
            || self.installed_snapshot.is_some()
            || self.read_round_wanted
            || !self.read_states.is_empty()
            || !self.msgs.is_empty()
            || !self.persisted_msgs.is_empty()
            || self.hard_state() != self.reported_hard_state
            || self.soft_state() != self.reported_soft
            || self.membership_unreported()
            || self.commit > self.apply_cursor.max(self.applied)
            || (self.role == Role::Leader && self.any_append_pending())
    }

    /// Takes everything pending; see [`Ready`] for what the driver must do with it.
    pub fn ready(&mut self) -> Ready {
        if self.role == Role::Leader {
            self.send_appends();
            self.send_read_round();
        }
        let mut rd = Ready {
            snapshot: self.installed_snapshot.take(),
            read_states: std::mem::take(&mut self.read_states),
            ..Ready::default()
        };
        if self.log_dirty {
            self.log_dirty = false;
            let last = self.log.last_index();
            let last_term = self.log.term_at(last).expect("term of the last entry");
            rd.unsynced = Some((last, last_term));
            if self.role == Role::Leader {
                // The leader counts itself once its log is durable: it acknowledges to
                // itself through the same path as followers.
                self.raise_acked_index(last);
                let me = self.config.id;
                self.persisted_msgs.push(Message {
                    from: me,
                    to: me,
                    term: self.term,
                    body: MessageBody::AppendResponse {
                        success: true,
                        match_index: last,
                        reject_index: LogIndex::ZERO,
                        conflict: None,
                        last_log_index: last,
                    },
                });
            }
        }
        let hs = self.hard_state();
        if let Some((index, term)) = rd.unsynced {
            self.awaiting_persist = Some((index, term, hs.acked_index));
        }
        if hs != self.reported_hard_state {
            rd.hard_state = Some(hs);
            self.reported_hard_state = hs;
        }
        let soft = self.soft_state();
        if soft != self.reported_soft {
            rd.role_change = Some(soft);
            self.reported_soft = soft;
        }
        if self.membership_unreported() {
            let current = self.memberships.current().clone();
            self.reported_membership = (current.index, current.membership.clone());
            rd.membership = Some(current);
        }
        rd.messages = std::mem::take(&mut self.msgs);
        rd.persisted_messages = std::mem::take(&mut self.persisted_msgs);
        rd.commit_index = self.commit;
        let from = self.apply_cursor.max(self.applied).next();
        if self.commit >= from {
            rd.to_apply = Some((from, self.commit));
            self.apply_cursor = self.commit;
        }
        rd
    }

    /// The state to persist.
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            acked_index: self.acked_index,
        }
    }

    fn soft_state(&self) -> (Role, Term, Option<NodeId>) {
        (self.role, self.term, self.leader)
    }

    /// A snapshot for monitoring.
    pub fn status(&self) -> Status {
        let progress = self
            .progress
            .iter()
            .map(|(&id, pr)| PeerStatus {
                id,
                voter: self.membership().is_voter(id),
                match_index: pr.match_index,
                next_index: pr.next_index,
                state: pr.state,
                recent_active: pr.recent_active,
                inflight: pr.inflight_len(),
            })
            .collect();
        Status {
            id: self.config.id,
            role: self.role,
            term: self.term,
            vote: self.vote,
            leader: self.leader,
            commit_index: self.commit,
            applied_index: self.applied,
            last_index: self.log.last_index(),
            persisted_index: self.persisted_index,
            acked_index: self.acked_index,
            recovering: self.recovering,
            transferee: self.transferee,
            quiesced: self.quiesced,
            progress,
            membership: self.memberships.current().clone(),
        }
    }

    /// The membership in effect (the latest in the log, committed or not).
    pub fn membership(&self) -> &Membership {
        &self.memberships.current().membership
    }

    /// The membership in effect with the index of its entry and its context.
    pub fn membership_entry(&self) -> &MembershipEntry {
        self.memberships.current()
    }

    /// The membership in effect at `index`, if the history still holds it (it
    /// does for every index from the log's snapshot point on).
    pub fn membership_at(&self, index: LogIndex) -> Option<&MembershipEntry> {
        self.memberships.at(index)
    }

    /// Index of the membership change not committed yet, if one is.
    pub fn membership_change_pending(&self) -> Option<LogIndex> {
        self.memberships.uncommitted(self.commit)
    }

    /// The log (the driver syncs it and reads committed entries through it).
    pub fn log(&self) -> &L {
        &self.log
    }

    /// The log, mutably (for syncing). The driver must not append or truncate.
    pub fn log_mut(&mut self) -> &mut L {
        &mut self.log
    }

    /// Consumes the node, returning its log (shutdown, tests).
    pub fn into_log(self) -> L {
        self.log
    }

    /// Whether this node runs the broken `fault` (tests of the simulator only).
    pub(crate) fn fault_is(&self, fault: super::FaultVariant) -> bool {
        self.config.fault_is(fault)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// Its role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The leader it knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// Its current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// Its commit index.
    pub fn commit_index(&self) -> LogIndex {
        self.commit
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    // ----- Helpers shared by election.rs and replication.rs -------------------------

    pub(super) fn send(&mut self, to: NodeId, body: MessageBody) {
        self.msgs.push(Message {
            from: self.config.id,
            to,
            term: self.term,
            body,
        });
    }

    pub(super) fn send_persisted(&mut self, to: NodeId, body: MessageBody) {
        self.persisted_msgs.push(Message {
            from: self.config.id,
            to,
            term: self.term,
            body,
        });
    }

    /// The other voters (whom a candidate asks for votes).
    pub(super) fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        let me = self.config.id;
        self.membership()
            .voters
            .iter()
            .copied()
            .filter(move |&v| v != me)
    }

    /// The `quorum`-th highest value among the voters' (`own` for this node,
    /// `of(progress)` for the others, 0 for a voter without progress): what a quorum
    /// of voters has reached.
    pub(super) fn quorum_value(&self, own: u64, of: impl Fn(&Progress) -> u64) -> u64 {
        let me = self.config.id;
        let membership = self.membership();
        let mut values = [0u64; super::config::VOTERS_MAX];
        let n = membership.voters.len();
        for (slot, v) in values.iter_mut().zip(&membership.voters) {
            *slot = if *v == me {
                own
            } else {
                self.progress.get(v).map_or(0, &of)
            };
        }
        let values = &mut values[..n];
        values.sort_unstable_by(|a, b| b.cmp(a));
        values[membership.quorum() - 1]
    }

    fn membership_unreported(&self) -> bool {
        let current = self.memberships.current();
        (current.index, &current.membership)
            != (self.reported_membership.0, &self.reported_membership.1)
    }

    /// Records the membership changes among `entries`, just appended, and applies
    /// them.
    pub(super) fn record_memberships(&mut self, entries: &[Entry]) {
        let mut changed = false;
        for entry in membership::changes_in(entries) {
            self.memberships.push(entry);
            changed = true;
        }
        if changed {
            self.membership_changed();
        }
    }

    /// Brings role, progress and quorums in line with the membership in effect.
    pub(super) fn membership_changed(&mut self) {
        let me = self.config.id;
        let membership = self.membership().clone();
        match self.role {
            Role::Leader => {
                assert!(
                    self.is_voter_now_or_committed(me),
                    "leader {me} is not a voter of {membership}"
                );
                self.progress.retain(|id, _| membership.contains(*id));
                let next = self.log.last_index().next();
                let inflight_max = self.config.max_inflight_appends;
                for id in membership.members().filter(|&id| id != me) {
                    self.progress.entry(id).or_insert_with(|| {
                        let mut pr = Progress::new(next, inflight_max);
                        // A new member is not held against check-quorum at once.
                        pr.recent_active = true;
                        pr
                    });
                }
                if self.transferee.is_some_and(|t| !membership.is_voter(t)) {
                    self.transferee = None;
                }
                // A smaller quorum may commit more, or confirm waiting reads.
                self.maybe_commit();
                self.release_confirmed_reads();
            }
            Role::Candidate | Role::PreCandidate if !self.is_voter_now_or_committed(me) => {
                self.become_follower(self.term, None);
            }
            _ => {}
        }
    }

    pub(super) fn set_term(&mut self, term: Term) {
        assert!(term >= self.term, "term went back {} -> {term}", self.term);
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
    }

    pub(super) fn set_commit(&mut self, commit: LogIndex) {
        assert!(
            commit >= self.commit,
            "commit went back {} -> {commit}",
            self.commit
        );
        assert!(
            commit <= self.log.last_index(),
            "commit {commit} beyond the log end {}",
            self.log.last_index()
        );
        self.commit = commit;
        // Nothing at or below the snapshot point is ever truncated or sent again.
        let floor = self.log.first_index().prev().min(commit);
        self.memberships.compact(floor);
    }

    /// Raises the recovery mark to `index` (durable by the time the Ready carrying
    /// it is persisted).
    pub(super) fn raise_acked_index(&mut self, index: LogIndex) {
        if index > self.acked_index {
            self.acked_index = index;
        }
    }

    pub(super) fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        self.randomized_election_timeout = self.rng.range_u32(
            self.config.election_timeout_ticks,
            2 * self.config.election_timeout_ticks,
        );
    }

    /// Check-quorum lease: a leader was heard from within the minimum timeout.
    pub(super) fn in_lease(&self) -> bool {
        self.config.check_quorum
            && self.leader.is_some()
            && self.election_elapsed < self.config.election_timeout_ticks
    }

    pub(super) fn check_invariants(&self) {
        let last = self.log.last_index();
        assert!(self.commit <= last, "commit {} > last {last}", self.commit);
        let snapshot_index = self.log.first_index().prev();
        assert!(
            snapshot_index <= self.applied.max(self.apply_cursor) && snapshot_index <= self.commit,
            "the log starts after {snapshot_index}, beyond what was applied ({}) or committed ({})",
            self.applied,
            self.commit
        );
        let last_term = self.log.term_at(last).expect("term of the last entry");
        assert!(
            last_term <= self.term,
            "log term {last_term} above current term {}",
            self.term
        );
        if self.role == Role::Leader {
            assert_eq!(self.leader, Some(self.config.id));
            assert_eq!(self.vote, Some(self.config.id), "a leader voted for itself");
        }
        if self.role != Role::Leader {
            assert!(self.progress.is_empty() && self.transferee.is_none());
            assert!(
                self.pending_reads.is_empty() && !self.read_round_wanted,
                "reads wait for a round of a node that does not lead"
            );
        }
        // Reads wait in the order of their rounds, each for a round not yet answered
        // by a quorum, and no read is answered below what earlier leaders committed.
        let mut previous_round = 0;
        for read in &self.pending_reads {
            assert!(read.round >= previous_round, "reads out of round order");
            assert!(
                read.round <= self.read_round + 1,
                "read waits for a future round"
            );
            previous_round = read.round;
        }
        if self.role == Role::Leader {
            assert!(self.is_voter_now_or_committed(self.config.id));
            if self.commit >= self.term_start
                && !self
                    .config
                    .fault_is(FaultVariant::UncheckedMembershipChanges)
                && !self
                    .config
                    .fault_is(FaultVariant::ConcurrentMembershipChanges)
            {
                // Single-server changes: at most one change is ever uncommitted.
                let above = self.memberships.entries_above(self.commit);
                assert!(above <= 1, "{above} membership changes uncommitted");
            }
        }
        if !self.recovering || self.config.fault_is(FaultVariant::DamagedNodeVotes) {
            return;
        }
        assert!(self.role != Role::Leader, "a recovering node leads");
    }
}

impl<L: RaftLog> std::fmt::Debug for RawNode<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawNode")
            .field("id", &self.config.id)
            .field("role", &self.role)
            .field("term", &self.term)
            .field("commit", &self.commit)
            .field("last", &self.log.last_index())
            .finish_non_exhaustive()
    }
}

/// Records every membership change in `log` (start-up). The bodies are shared with
/// the log (the broker's are views of its mapped segments), so the scan costs about
/// one entry header per entry.
fn scan_memberships<L: RaftLog>(log: &L, history: &mut MembershipHistory) {
    const CHUNK: usize = 4096;
    let mut from = log.first_index();
    while from <= log.last_index() {
        let entries = log
            .entries(from, CHUNK, usize::MAX)
            .expect("reading the log at start-up");
        let Some(last) = entries.last() else { break };
        from = last.index.next();
        for entry in membership::changes_in(&entries) {
            history.push(entry);
        }
    }
}
