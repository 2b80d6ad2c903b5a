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
//! A healthy voter is demoted only by step 4 below, so a cluster started with 5
//! voters keeps them.
//!
//! Among the learners that could be promoted, one in a rack (`--rack`) that no
//! healthy voter is in goes first, then one in the rack with the fewest voters, so
//! that losing a rack costs the group as few voters as the nodes allow.
//! 4. With nothing lost and exactly `metadata_voters` voters, two of them in one
//!    rack, a caught-up learner in a rack without a voter is promoted, and then
//!    (one voter over) a follower of the most crowded rack is demoted: voters move
//!    to racks that have none, one at a time and never below `metadata_voters`.
//!    This is the one case where a healthy voter is demoted; a group of more than
//!    `metadata_voters + 1` voters is left alone.

use std::time::{Duration, Instant};

use super::Node;
use crate::raft::NodeId;

/// The metadata leader's next change to its voters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VoterStep {
    /// Promote this learner, in place of the lost voter `replacing` if any.
    Promote {
        node: NodeId,
        replacing: Option<NodeId>,
    },
    /// Demote this lost voter to learner.
    Demote(NodeId),
    /// Promote this learner: its rack has no voter, another rack has two.
    PromoteToSpread(NodeId),
    /// Demote this healthy voter: its rack has another voter, and a voter in a
    /// rack that had none was just added.
    DemoteToSpread(NodeId),
}

/// The next step towards `wanted` healthy voters (see the module docs), or none.
/// `lost` says which members were decommissioned or are silent; `caught_up` which
/// learners could vote at once; `same_rack` which two nodes share a rack.
fn next_step(
    voters: &[NodeId],
    learners: &[NodeId],
    lost: impl Fn(NodeId) -> bool,
    caught_up: impl Fn(NodeId) -> bool,
    same_rack: impl Fn(NodeId, NodeId) -> bool,
    leader: NodeId,
    wanted: usize,
) -> Option<VoterStep> {
    if wanted == 0 {
        return None;
    }
    let lost_voter = voters.iter().copied().find(|v| lost(*v));
    let healthy = voters.iter().filter(|v| !lost(**v)).count();
    let mut spares: Vec<NodeId> = learners
        .iter()
        .copied()
        .filter(|l| !lost(*l) && caught_up(*l))
        .collect();
    // The spare whose rack holds the fewest healthy voters first.
    let sharing = |node: NodeId| {
        voters
            .iter()
            .filter(|&&v| v != node && !lost(v) && same_rack(v, node))
            .count()
    };
    spares.sort_by_key(|&spare| (sharing(spare), spare));
    match (lost_voter, spares.first().copied()) {
        // A replacement first, so the group never has fewer voters than before.
        (Some(gone), Some(spare)) if healthy < wanted => Some(VoterStep::Promote {
            node: spare,
            replacing: Some(gone),
        }),
        // Then the lost voter goes, while at least 3 healthy voters stay.
        (Some(gone), _) if healthy >= 3 => Some(VoterStep::Demote(gone)),
        // Growing from an odd number takes two spares: an even group of voters
        // tolerates no more failures than one voter fewer, and two voters fail
        // with either node.
        (None, Some(spare))
            if voters.len() < wanted && (voters.len() % 2 == 0 || spares.len() >= 2) =>
        {
            Some(VoterStep::Promote {
                node: spare,
                replacing: None,
            })
        }
        (None, _) => spread_over_racks(voters, &spares, sharing, leader, wanted),
        _ => None,
    }
}

/// Step 4 of the module docs: with nothing lost, a voter moves from a rack that
/// has two to one that has none (promote first, then demote), or none.
fn spread_over_racks(
    voters: &[NodeId],
    spares: &[NodeId],
    sharing: impl Fn(NodeId) -> usize,
    leader: NodeId,
    wanted: usize,
) -> Option<VoterStep> {
    let crowded = voters.iter().any(|&v| sharing(v) > 0);
    if !crowded {
        return None;
    }
    if voters.len() == wanted {
        let spare = spares.first().copied().filter(|&s| sharing(s) == 0)?;
        return Some(VoterStep::PromoteToSpread(spare));
    }
    // Never below 3 voters (a `metadata_voters` of 2 or less).
    if voters.len() == wanted + 1 && voters.len() > 3 {
        let gone = voters
            .iter()
            .copied()
            .filter(|&v| v != leader && sharing(v) > 0)
            .max_by_key(|&v| (sharing(v), v))?;
        return Some(VoterStep::DemoteToSpread(gone));
    }
    None
}

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
        let lost = |id: NodeId| {
            self.state.decommissioned().contains(&id.0)
                || (timeout > 0
                    && self.members.silent_since.get(&id).is_some_and(|since| {
                        now.duration_since(*since) >= Duration::from_millis(timeout)
                    }))
        };
        let membership = self.raft.membership().clone();
        let index = self.members.view.index;
        let racks = self.state.racks();
        let step = next_step(
            &membership.voters,
            &membership.learners,
            lost,
            |id| self.caught_up(id, index),
            |a, b| racks.get(&a.0).is_some_and(|r| racks.get(&b.0) == Some(r)),
            self.config.node_id,
            wanted,
        );
        let members = self.members.view.recorded.clone();
        let mut next = membership.clone();
        let step = match step {
            None => return,
            Some(VoterStep::Promote { node, replacing }) => {
                next.learners.retain(|l| *l != node);
                next.voters.push(node);
                next.voters.sort_unstable();
                match replacing {
                    Some(gone) => format!(
                        "metadata voter {} is lost (decommissioned or silent): promoting node {} \
                         in its place",
                        gone.0, node.0
                    ),
                    None => format!(
                        "the metadata group has {} of {wanted} voters: promoting node {}",
                        membership.voters.len(),
                        node.0
                    ),
                }
            }
            Some(VoterStep::PromoteToSpread(node)) => {
                next.learners.retain(|l| *l != node);
                next.voters.push(node);
                next.voters.sort_unstable();
                format!(
                    "two metadata voters share a rack and node {} is in a rack without one: \
                     promoting it (a voter of the crowded rack steps down next)",
                    node.0
                )
            }
            Some(VoterStep::DemoteToSpread(gone)) => {
                next.voters.retain(|v| *v != gone);
                next.learners.push(gone);
                next.learners.sort_unstable();
                format!(
                    "metadata voter {} shares its rack with another voter: demoting it to \
                     learner (a voter in another rack took its place)",
                    gone.0
                )
            }
            Some(VoterStep::Demote(gone)) => {
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
        };
        self.propose_group_membership(next, members, step);
    }

    /// A decommissioned metadata leader hands over to the healthy voter most caught
    /// up; the new leader demotes this node.
    fn hand_over_metadata_leadership(&mut self) {
        let me = self.config.node_id;
        let decommissioned = self.state.decommissioned();
        let target = self.handover_target(|id| id != me && !decommissioned.contains(&id.0));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> Vec<NodeId> {
        v.iter().map(|&n| NodeId(n)).collect()
    }

    /// `next_step` with the members in `lost` lost and every learner caught up
    /// except those in `behind`.
    fn step(
        voters: &[u64],
        learners: &[u64],
        lost: &[u64],
        behind: &[u64],
        wanted: usize,
    ) -> Option<VoterStep> {
        next_step(
            &ids(voters),
            &ids(learners),
            |n| lost.contains(&n.0),
            |n| !behind.contains(&n.0),
            |_, _| false,
            NodeId(1),
            wanted,
        )
    }

    fn promote(node: u64, replacing: Option<u64>) -> Option<VoterStep> {
        Some(VoterStep::Promote {
            node: NodeId(node),
            replacing: replacing.map(NodeId),
        })
    }

    #[test]
    fn enough_healthy_voters_change_nothing() {
        assert_eq!(step(&[1, 2, 3], &[4], &[], &[], 3), None);
        assert_eq!(
            step(&[1, 2, 3, 4, 5], &[6], &[], &[], 3),
            None,
            "never shrinks"
        );
        assert_eq!(step(&[1, 2, 3], &[4], &[3], &[], 0), None, "0 turns it off");
    }

    #[test]
    fn a_lost_voter_is_replaced_then_demoted() {
        assert_eq!(step(&[1, 2, 3], &[4], &[3], &[], 3), promote(4, Some(3)));
        assert_eq!(
            step(&[1, 2, 3, 4], &[], &[3], &[], 3),
            Some(VoterStep::Demote(NodeId(3)))
        );
        assert_eq!(step(&[1, 2, 4], &[3], &[3], &[], 3), None, "done");
    }

    #[test]
    fn a_lost_voter_stays_while_it_would_leave_fewer_than_three() {
        assert_eq!(step(&[1, 2, 3], &[], &[3], &[], 3), None);
        assert_eq!(
            step(&[1, 2, 3], &[4], &[3], &[4], 3),
            None,
            "the spare lags"
        );
        assert_eq!(
            step(&[1, 2, 3], &[4], &[3, 4], &[], 3),
            None,
            "the spare is lost too"
        );
        assert_eq!(
            step(&[1, 2, 3, 4, 5], &[], &[5], &[], 3),
            Some(VoterStep::Demote(NodeId(5))),
            "five voters can lose one"
        );
    }

    #[test]
    fn growth_from_an_odd_count_waits_for_two_spares() {
        assert_eq!(step(&[1], &[2], &[], &[], 3), None);
        assert_eq!(step(&[1], &[2, 3], &[], &[], 3), promote(2, None));
        assert_eq!(step(&[1, 2], &[3], &[], &[], 3), promote(3, None));
        assert_eq!(step(&[1], &[2, 3], &[], &[3], 3), None, "one spare lags");
        assert_eq!(step(&[1, 2, 3], &[4, 5], &[], &[], 5), promote(4, None));
        assert_eq!(step(&[1, 2, 3, 4], &[5], &[], &[], 5), promote(5, None));
    }

    #[test]
    fn a_spare_in_a_rack_without_voters_is_promoted_first() {
        // Racks: a = {1, 4}, b = {2}, c = {3, 5}, d = {6}.
        let rack = |n: NodeId| match n.0 {
            1 | 4 => 'a',
            2 => 'b',
            3 | 5 => 'c',
            _ => 'd',
        };
        let step = |voters: &[u64], learners: &[u64], lost: &[u64], wanted| {
            next_step(
                &ids(voters),
                &ids(learners),
                |n| lost.contains(&n.0),
                |_| true,
                |x, y| rack(x) == rack(y),
                NodeId(1),
                wanted,
            )
        };
        // Voter 3 (rack c) is lost: node 5 (rack c, now without a healthy voter)
        // goes before node 4 (rack a, which has voter 1).
        assert_eq!(step(&[1, 2, 3], &[4, 5], &[3], 3), promote(5, Some(3)));
        // Growing to 5: node 6 (rack d, no voter) before 4 and 5.
        assert_eq!(step(&[1, 2, 3], &[4, 5, 6], &[], 5), promote(6, None));
    }

    #[test]
    fn voters_sharing_a_rack_move_to_racks_without_one() {
        // Racks: a = {1, 2, 3}, b = {4}, c = {5}, d = {6, 7}; node 1 leads.
        let rack = |n: NodeId| match n.0 {
            1..=3 => 'a',
            4 => 'b',
            5 => 'c',
            _ => 'd',
        };
        let step = |voters: &[u64], learners: &[u64], wanted| {
            next_step(
                &ids(voters),
                &ids(learners),
                |_| false,
                |_| true,
                |x, y| rack(x) == rack(y),
                NodeId(1),
                wanted,
            )
        };
        let spread = |n| Some(VoterStep::PromoteToSpread(NodeId(n)));
        let demote = |n| Some(VoterStep::DemoteToSpread(NodeId(n)));
        // All three voters in rack a: node 4 (rack b) is promoted, then a
        // follower of rack a (not the leader) steps down; then node 5 (rack c).
        assert_eq!(step(&[1, 2, 3], &[4, 5], 3), spread(4));
        assert_eq!(step(&[1, 2, 3, 4], &[5], 3), demote(3));
        assert_eq!(step(&[1, 2, 4], &[3, 5], 3), spread(5));
        assert_eq!(step(&[1, 2, 4, 5], &[3], 3), demote(2));
        assert_eq!(step(&[1, 4, 5], &[2, 3], 3), None, "one voter per rack");
        // No learner in a rack without a voter: nothing to do.
        assert_eq!(step(&[1, 2, 4], &[3], 3), None);
        // Five voters, two in rack d, learners only in rack a: nothing better.
        assert_eq!(step(&[1, 4, 5, 6, 7], &[2, 3], 5), None);
        // A larger group than wanted is left alone.
        assert_eq!(step(&[1, 2, 3, 4, 5], &[6], 3), None);
        // Never below 3 voters, whatever `metadata_voters` says.
        assert_eq!(step(&[1, 2, 3], &[4], 2), None);
        // Without racks nobody shares one: nothing moves.
        assert_eq!(
            next_step(
                &ids(&[1, 2, 3]),
                &ids(&[4]),
                |_| false,
                |_| true,
                |_, _| false,
                NodeId(1),
                3
            ),
            None
        );
    }
}
