//! A data group's leader moves the group's membership to where the metadata group
//! places it, one single-server change at a time. This module decides the next
//! change from what the leader knows; the node task proposes it.
//!
//! The order keeps the replication factor while replicas move: a placed node that
//! is not a member joins as a **learner**, is **promoted** once caught up, and only
//! when every placed node votes is a voter that left **removed** (a leader that is
//! itself leaving hands over first). Learners that left go at once.
//!
//! One change comes before all of these: a member whose **data directory is not
//! the one the cluster now knows under its id** is dropped. That happens when a
//! node is removed from the cluster while a move off it is still under way (its
//! placement had already changed, so the removal was allowed), its disk is wiped
//! and it joins again under the same id: the group still lists the old data
//! directory, which refuses to count the new one's acknowledgements (it forgot
//! what it acknowledged), and if the node is placed in the group again the
//! membership looks settled with a voter that will never vote. Dropping the old
//! member lets the new data directory be added as a learner and caught up like
//! any new replica. Removing a voter is an ordinary single-server change, and the
//! old directory's acknowledgements are gone with its disk anyway.
//!
//! Both sides must say so: the metadata group records the new incarnation, and
//! this group heard from that very incarnation and refused it. The metadata view
//! alone could be old (a leader whose metadata replica is catching up would see
//! the previous incarnation and drop the current, healthy replica).

use std::collections::BTreeMap;

use crate::cluster::MemberInfo;
use crate::raft::{Membership, NodeId};

/// The leader's next change to the group's membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReplicaStep {
    /// Drop this member: the group records another data directory under its id
    /// (`recorded`) than the cluster does now (`current`).
    DropReplaced {
        node: NodeId,
        recorded: u64,
        current: u64,
    },
    /// Add this placed node as a learner.
    AddLearner(NodeId),
    /// Promote this placed, caught-up learner to voter.
    Promote(NodeId),
    /// Remove this learner: it is no longer placed here.
    RemoveLearner(NodeId),
    /// Remove this voter: it is no longer placed here and every placed node votes.
    RemoveVoter(NodeId),
    /// The leader itself is no longer placed here and every placed node votes:
    /// it hands leadership to a placed voter, which removes it.
    HandOver,
}

/// What the leader knows when it decides.
pub(super) struct GroupView<'a> {
    /// The group's membership in effect.
    pub membership: &'a Membership,
    /// The group's members as its log records them (with incarnations; 0 while
    /// not heard from).
    pub recorded: &'a BTreeMap<NodeId, MemberInfo>,
    /// Where the metadata group places the group (preferred leader first).
    pub placed: &'a [NodeId],
    /// Each cluster member's data-directory incarnation as the metadata group
    /// records it (absent or 0 while unknown).
    pub incarnations: &'a BTreeMap<NodeId, u64>,
    /// Members this group refused to count because they came from another data
    /// directory than the recorded one: the incarnation they came from.
    pub refused: &'a BTreeMap<NodeId, u64>,
    /// This node, the group's leader.
    pub me: NodeId,
}

/// The next change, or `None` when the membership matches the placement (or a
/// placed learner is still catching up). `caught_up` says whether a learner may
/// be promoted.
pub(super) fn next_step(
    view: &GroupView<'_>,
    caught_up: impl Fn(NodeId) -> bool,
) -> Option<ReplicaStep> {
    let membership = view.membership;
    if let Some(step) = replaced_member(view) {
        return Some(step);
    }
    let placed = view.placed;
    if placed.is_empty() {
        return None;
    }
    let settled = membership.learners.is_empty()
        && membership.voters.len() == placed.len()
        && placed.iter().all(|n| membership.is_voter(*n));
    if settled {
        return None;
    }
    if let Some(&new) = placed.iter().find(|n| !membership.contains(**n)) {
        return Some(ReplicaStep::AddLearner(new));
    }
    if let Some(&learner) = membership
        .learners
        .iter()
        .find(|l| placed.contains(l) && caught_up(**l))
    {
        return Some(ReplicaStep::Promote(learner));
    }
    if let Some(&gone) = membership.learners.iter().find(|l| !placed.contains(l)) {
        return Some(ReplicaStep::RemoveLearner(gone));
    }
    if !placed.iter().all(|n| membership.is_voter(*n)) {
        // A placed learner is still catching up.
        return None;
    }
    let gone = *membership.voters.iter().find(|v| !placed.contains(v))?;
    Some(if gone == view.me {
        ReplicaStep::HandOver
    } else {
        ReplicaStep::RemoveVoter(gone)
    })
}

/// A member (never the leader itself) recorded with another data directory than
/// the one the cluster now knows under its id, which this group heard and refused.
fn replaced_member(view: &GroupView<'_>) -> Option<ReplicaStep> {
    view.membership
        .members()
        .filter(|&node| node != view.me)
        .find_map(|node| {
            let recorded = view.recorded.get(&node)?.incarnation;
            let current = view.incarnations.get(&node).copied().unwrap_or(0);
            let heard = view.refused.get(&node).copied().unwrap_or(0);
            (recorded != 0 && current != 0 && recorded != current && heard == current).then_some(
                ReplicaStep::DropReplaced {
                    node,
                    recorded,
                    current,
                },
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> Vec<NodeId> {
        v.iter().map(|&n| NodeId(n)).collect()
    }

    fn recorded(members: &[(u64, u64)]) -> BTreeMap<NodeId, MemberInfo> {
        members
            .iter()
            .map(|&(n, incarnation)| {
                (
                    NodeId(n),
                    MemberInfo {
                        address: format!("127.0.0.1:{}", 9000 + n).parse().unwrap(),
                        incarnation,
                    },
                )
            })
            .collect()
    }

    /// The step for a group of `voters` and `learners` (incarnations `members`)
    /// placed on `placed`, led by node 1, with `caught_up` learners promotable.
    fn step(
        voters: &[u64],
        learners: &[u64],
        members: &[(u64, u64)],
        placed: &[u64],
        cluster: &[(u64, u64)],
        caught_up: &[u64],
    ) -> Option<ReplicaStep> {
        let membership = Membership {
            voters: ids(voters),
            learners: ids(learners),
        };
        let recorded = recorded(members);
        let placed = ids(placed);
        let incarnations: BTreeMap<NodeId, u64> =
            cluster.iter().map(|&(n, i)| (NodeId(n), i)).collect();
        // The group heard every node from the directory the cluster records (a
        // test of the lagging view below takes that away).
        let refused = incarnations.clone();
        let view = GroupView {
            membership: &membership,
            recorded: &recorded,
            placed: &placed,
            incarnations: &incarnations,
            refused: &refused,
            me: NodeId(1),
        };
        next_step(&view, |n| caught_up.contains(&n.0))
    }

    const SAME: &[(u64, u64)] = &[(1, 11), (2, 12), (3, 13), (4, 14)];

    #[test]
    fn a_group_where_it_is_placed_changes_nothing() {
        let members = &[(1, 11), (2, 12), (3, 13)];
        assert_eq!(step(&[1, 2, 3], &[], members, &[1, 2, 3], SAME, &[]), None);
    }

    #[test]
    fn a_move_adds_promotes_then_removes() {
        let members = &[(1, 11), (2, 12), (3, 13)];
        // Node 3 leaves for node 4.
        let placed = &[1, 2, 4];
        assert_eq!(
            step(&[1, 2, 3], &[], members, placed, SAME, &[]),
            Some(ReplicaStep::AddLearner(NodeId(4)))
        );
        let members = &[(1, 11), (2, 12), (3, 13), (4, 0)];
        assert_eq!(step(&[1, 2, 3], &[4], members, placed, SAME, &[]), None);
        assert_eq!(
            step(&[1, 2, 3], &[4], members, placed, SAME, &[4]),
            Some(ReplicaStep::Promote(NodeId(4)))
        );
        assert_eq!(
            step(&[1, 2, 3, 4], &[], members, placed, SAME, &[]),
            Some(ReplicaStep::RemoveVoter(NodeId(3)))
        );
        // The leader leaving hands over instead of removing itself.
        assert_eq!(
            step(&[1, 2, 3, 4], &[], members, &[2, 3, 4], SAME, &[]),
            Some(ReplicaStep::HandOver)
        );
        // A learner no longer placed goes at once.
        assert_eq!(
            step(&[1, 2, 3], &[4], members, &[1, 2, 3], SAME, &[]),
            Some(ReplicaStep::RemoveLearner(NodeId(4)))
        );
    }

    #[test]
    fn a_member_whose_id_now_names_another_data_directory_is_dropped_first() {
        // Node 3 was removed from the cluster before the group moved off it, wiped,
        // and joined again (incarnation 33) and is placed here again: the group
        // looks settled but its voter 3 is the old directory (13).
        let members = &[(1, 11), (2, 12), (3, 13)];
        let cluster = &[(1, 11), (2, 12), (3, 33)];
        assert_eq!(
            step(&[1, 2, 3], &[], members, &[1, 2, 3], cluster, &[]),
            Some(ReplicaStep::DropReplaced {
                node: NodeId(3),
                recorded: 13,
                current: 33
            })
        );
        // Once dropped, the new directory is added as any new replica.
        let members = &[(1, 11), (2, 12)];
        assert_eq!(
            step(&[1, 2], &[], members, &[1, 2, 3], cluster, &[]),
            Some(ReplicaStep::AddLearner(NodeId(3)))
        );
        // A learner recorded with the old directory is dropped too, before any
        // promotion.
        let members = &[(1, 11), (2, 12), (3, 13)];
        assert_eq!(
            step(&[1, 2], &[3], members, &[1, 2, 3], cluster, &[3]),
            Some(ReplicaStep::DropReplaced {
                node: NodeId(3),
                recorded: 13,
                current: 33
            })
        );
    }

    #[test]
    fn an_unknown_incarnation_on_either_side_is_not_a_replacement() {
        // Not yet heard from in the group (0), or not recorded by the cluster
        // (0 or absent: removed and not joined again): the ordinary moves apply.
        let placed = &[1, 2, 3];
        let members = &[(1, 11), (2, 12), (3, 0)];
        assert_eq!(
            step(&[1, 2, 3], &[], members, placed, &[(3, 33)], &[]),
            None
        );
        let members = &[(1, 11), (2, 12), (3, 13)];
        assert_eq!(step(&[1, 2, 3], &[], members, placed, &[(3, 0)], &[]), None);
        assert_eq!(step(&[1, 2, 3], &[], members, placed, &[], &[]), None);
        // The leader never drops itself.
        let cluster = &[(1, 99), (2, 12), (3, 13)];
        assert_eq!(step(&[1, 2, 3], &[], members, placed, cluster, &[]), None);
    }

    #[test]
    fn a_metadata_view_behind_the_group_drops_nobody() {
        // The group recorded node 3's new directory (33) and counts it; this
        // leader's metadata replica still knows the old one (13): nothing was
        // refused, so nothing is dropped.
        let membership = Membership {
            voters: ids(&[1, 2, 3]),
            learners: vec![],
        };
        let recorded = recorded(&[(1, 11), (2, 12), (3, 33)]);
        let placed = ids(&[1, 2, 3]);
        let incarnations: BTreeMap<NodeId, u64> =
            [(NodeId(1), 11), (NodeId(2), 12), (NodeId(3), 13)].into();
        let view = GroupView {
            membership: &membership,
            recorded: &recorded,
            placed: &placed,
            incarnations: &incarnations,
            refused: &BTreeMap::new(),
            me: NodeId(1),
        };
        assert_eq!(next_step(&view, |_| false), None);
    }
}
