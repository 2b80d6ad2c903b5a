//! Quiescence: an idle group stops ticking.
//!
//! A node runs many Raft groups, most of them idle at any moment; heartbeats and
//! election timers of idle groups would cost a node CPU in proportion to the groups
//! it holds. So, as CockroachDB does, a leader whose group has done nothing for
//! `quiesce_after_ticks` (no proposal, no read, everything committed, every
//! follower holding the whole log) sends its heartbeats marked `quiesce`. A follower
//! receiving one stops its election timer (`quiesced`) and says so in its answer;
//! once every follower has, the leader stops heartbeating too. Ticks then do
//! nothing at all. A group with a member away does not quiesce: it stays an
//! ordinary Raft group (ticking, heartbeating, catching the member up when it
//! returns) until every member answers again.
//!
//! Any other message wakes a node: a proposal or read at the leader (which then
//! heartbeats at once), an append or plain heartbeat at a follower, a vote request
//! anywhere. What no message can report is a leader that died: the driver's failure
//! detector does, through [`RawNode::peer_unreachable`]. A quiesced follower whose
//! leader is reported unreachable restarts its election timer; a quiesced leader
//! with an unreachable member wakes so that check-quorum can judge its quorum, and
//! one whose member is heard from again wakes to bring it up to date.
//!
//! Safety does not depend on any of this (it never depends on timing); liveness
//! depends on the detector reporting a dead or partitioned leader eventually. A
//! follower that was quiesced rejects pre-votes while quiesced (its leader was
//! alive at the last word), so a restarted node cannot disrupt an idle group; the
//! woken followers time out normally and elect a new leader.

use super::config::FaultVariant;
use super::log::RaftLog;
use super::message::MessageBody;
use super::progress::ProgressState;
use super::raw_node::RawNode;
use super::types::{NodeId, Role};

impl<L: RaftLog> RawNode<L> {
    /// Whether this node is quiesced: ticks do nothing until a message, a proposal,
    /// a read or the failure detector wakes it. A driver may stop ticking it.
    pub fn is_quiesced(&self) -> bool {
        self.quiesced
    }

    /// The driver's failure detector: `peer` has not been heard from for a while, or
    /// its connection closed. Wakes a quiesced follower whose leader it is, and a
    /// quiesced leader of which it is a member (check-quorum then judges whether it
    /// still leads; it cannot quiesce again until the member answers).
    pub fn peer_unreachable(&mut self, peer: NodeId) {
        match self.role {
            Role::Leader => {
                if self.quiesced && self.progress.contains_key(&peer) {
                    self.note_activity();
                }
            }
            _ => {
                if self.quiesced && self.leader == Some(peer) {
                    self.note_activity();
                }
            }
        }
        self.check_invariants();
    }

    /// The driver's failure detector hears from `peer` again after reporting it
    /// unreachable. A leader of which it is a member wakes to bring it up to date
    /// and tell it who leads (a restarted learner would never speak first), whatever
    /// it believes of the member: a message the member sent before it went away may
    /// have arrived since.
    pub fn peer_reachable(&mut self, peer: NodeId) {
        if self.role == Role::Leader && self.progress.contains_key(&peer) {
            self.note_activity();
        }
        self.check_invariants();
    }

    /// Every message stepped: anything but the quiescing exchange itself is
    /// activity.
    pub(super) fn heard_from(&mut self, body: &MessageBody) {
        match body {
            MessageBody::Heartbeat { quiesce: true, .. }
            | MessageBody::HeartbeatResponse { .. } => {}
            _ => self.note_activity(),
        }
    }

    /// The group did something: the idle count starts over, and a quiesced (or
    /// quiescing) node wakes. A woken leader heartbeats at once and gives
    /// check-quorum a full timeout (nobody heard from anybody while quiesced); a
    /// woken follower starts its election timer from zero.
    pub(super) fn note_activity(&mut self) {
        self.idle_ticks = 0;
        if !self.quiesced && self.quiesce_round.is_none() {
            return;
        }
        let was_quiesced = self.quiesced;
        self.quiesced = false;
        self.quiesce_round = None;
        if self.role == Role::Leader {
            for pr in self.progress.values_mut() {
                pr.quiesced = false;
                if was_quiesced {
                    pr.recent_active = true;
                }
            }
            if was_quiesced {
                self.election_elapsed = 0;
                self.heartbeat_elapsed = 0;
                self.broadcast_heartbeat();
            }
        } else if was_quiesced {
            self.reset_election_timer();
        }
    }

    /// On every role change.
    pub(super) fn reset_quiescence(&mut self) {
        self.quiesced = false;
        self.idle_ticks = 0;
        self.quiesce_round = None;
    }

    /// Leader: the group has been idle long enough and nothing is under way, so its
    /// heartbeats may ask the followers to quiesce.
    pub(super) fn may_quiesce(&self) -> bool {
        let after = self.config.quiesce_after_ticks;
        if after == 0 || self.role != Role::Leader || self.idle_ticks < after {
            return false;
        }
        let last = self.log.last_index();
        self.transferee.is_none()
            && self.pending_reads.is_empty()
            && !self.read_round_wanted
            && self.commit == last
            && self.self_match == last
            && self.membership_change_pending().is_none()
            && self.progress.values().all(|pr| {
                self.config
                    .fault_is(FaultVariant::QuiesceWithLaggingFollower)
                    || (pr.match_index == last
                        && pr.state == ProgressState::Replicate
                        && pr.inflight_len() == 0)
            })
    }

    /// Leader: `from` quiesced on heartbeat round `round`. Once every follower has,
    /// the leader quiesces too.
    pub(super) fn follower_quiesced(&mut self, from: NodeId, round: u64) {
        let Some(start) = self.quiesce_round else {
            return;
        };
        if round < start {
            return;
        }
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.quiesced = true;
        if !self.may_quiesce() {
            return;
        }
        if self.progress.values().all(|pr| pr.quiesced) {
            self.quiesced = true;
        }
    }
}
