//! The metadata group's voters follow the cluster: its leader keeps
//! `metadata_voters` voters on live nodes, as Kafka's controller quorum or
//! Redpanda's controller group must be kept by hand or by the operator.
//!
//! Why: a metadata group that lost a voter for good (a dead machine, a
//! decommissioned node) runs with one voter fewer until someone changes it by
//! hand, and the next failure can then cost the whole cluster its quorum: no
//! topic, no leader change of any data group, no consumer-group offset can be
//! written. A node that joined as a learner is a ready replacement: it holds the
//! metadata log already.
//!
//! One step per upkeep, each an ordinary single-server membership change of the
//! metadata group (the Raft core checks it), and never one that lowers the number
//! of healthy voters below 3:
//! 1. a voter is *lost* when it was decommissioned or the leader has not heard
//!    from it for `dead_node_timeout_ms`; while one is lost and the healthy voters
//!    are fewer than `metadata_voters`, a caught-up learner (not lost itself) is
//!    promoted first;
//! 2. then the lost voter is demoted to learner once at least 3 healthy voters
//!    remain (a decommissioned leader hands over first). It stays a member:
//!    `raftmq cluster remove-node` still removes it, and if it comes back it
//!    follows the metadata as the learner it now is;
//! 3. with nothing lost, caught-up learners are promoted while the group has fewer
//!    than `metadata_voters` voters (a cluster grown from one node by `--join`),
//!    two at a time from an odd number (1 → 3, not 1 → 2: two voters fail with
//!    either node, four tolerate no more failures than three).
//!
//! A healthy voter is never demoted, so a cluster started with 5 voters keeps them.

use std::time::{Duration, Instant};

use super::Node;
use crate::raft::NodeId;

impl Node {
    /// Metadata leader, every group upkeep: one step towards `metadata_voters`
    /// healthy voters (see the module docs).
    pub(super) fn metadata_voter_upkeep(&mut self, now: Instant) {
        let wanted = self.config.metadata_voters as usize;
        if wanted == 0 || !self.leader_ready() {
            self.members.silent_since.clear();
            return;
        }
        let status = self.raft.status();
        for p in &status.progress {
            if p.id == self.config.node_id || p.recent_active {
                self.members.silent_since.remove(&p.id);
            } else {
                self.members.silent_since.entry(p.id).or_insert(now);
            }
        }
        if self.raft.membership_change_pending().is_some() {
            return;
        }
        let timeout = self.config.dead_node_timeout_ms;
        let lost = |node: &Node, id: NodeId| {
            node.state.decommissioned().contains(&id.0)
                || (timeout > 0
                    && node.members.silent_since.get(&id).is_some_and(|since| {
                        now.duration_since(*since) >= Duration::from_millis(timeout)
                    }))
        };
        let membership = self.raft.membership().clone();
        let index = self.members.view.index;
        let lost_voter = membership.voters.iter().copied().find(|v| lost(self, *v));
        let healthy = membership
            .voters
            .iter()
            .filter(|v| !lost(self, **v))
            .count();
        let spares: Vec<NodeId> = membership
            .learners
            .iter()
            .copied()
            .filter(|l| !lost(self, *l) && self.caught_up(*l, index))
            .collect();
        let spare = spares.first().copied();
        let members = self.members.view.recorded.clone();
        let mut next = membership.clone();
        let step = match (lost_voter, spare) {
            (Some(gone), Some(spare)) if healthy < wanted => {
                next.learners.retain(|l| *l != spare);
                next.voters.push(spare);
                next.voters.sort_unstable();
                format!(
                    "metadata voter {} is lost (decommissioned or silent): promoting node {} \
                     in its place",
                    gone.0, spare.0
                )
            }
            (Some(gone), _) if healthy >= 3 => {
                if gone == self.config.node_id {
                    self.hand_over_metadata_leadership();
                    return;
                }
                next.voters.retain(|v| *v != gone);
                next.learners.push(gone);
                next.learners.sort_unstable();
                format!(
                    "metadata voter {} is lost (decommissioned or silent): demoting it to \
                     learner",
                    gone.0
                )
            }
            // Growing from an odd number takes two spares: an even group of voters
            // tolerates no more failures than one voter fewer, and two voters fail
            // with either node.
            (None, Some(spare))
                if membership.voters.len() < wanted
                    && (membership.voters.len() % 2 == 0 || spares.len() >= 2) =>
            {
                next.learners.retain(|l| *l != spare);
                next.voters.push(spare);
                next.voters.sort_unstable();
                format!(
                    "the metadata group has {} of {wanted} voters: promoting node {}",
                    membership.voters.len(),
                    spare.0
                )
            }
            _ => return,
        };
        self.propose_group_membership(next, members, step);
    }

    /// A decommissioned metadata leader hands over to the healthy voter most caught
    /// up; the new leader demotes this node.
    fn hand_over_metadata_leadership(&mut self) {
        let status = self.raft.status();
        let decommissioned = self.state.decommissioned();
        let target = status
            .progress
            .iter()
            .filter(|p| {
                p.voter
                    && p.recent_active
                    && p.id != self.config.node_id
                    && !decommissioned.contains(&p.id.0)
            })
            .max_by_key(|p| p.match_index)
            .map(|p| p.id);
        if let Some(target) = target {
            if self.raft.transfer_leadership(target).is_ok() {
                tracing::info!(
                    to = target.0,
                    "this node is decommissioned: handing metadata leadership over"
                );
            }
        }
    }
}
