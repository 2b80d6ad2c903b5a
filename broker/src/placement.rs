//! Where data-group replicas live: pure functions from the current assignment and
//! the nodes to the next one, with no I/O and no clock, so that they are tested on
//! clusters far larger than any test machine holds (see the tests: 100 nodes and
//! 10,000 groups).
//!
//! An assignment gives each data group its replicas; the first replica is the
//! group's **preferred leader**, which its leader hands leadership to (leadership
//! balancing). Every function keeps replicas of one group on distinct nodes, moves a
//! replica only when that lowers the spread, and keeps the preferred leaders spread
//! as evenly as the replicas allow.
//!
//! **Failure domains.** A node may name its rack (`--rack`: a rack, a zone, a
//! power feed: whatever fails together). A group's replicas go to as many
//! distinct racks as there are (up to its replication factor) before any rack
//! holds two, as Kafka's rack-aware assignment does, so losing a whole rack costs
//! each group at most the replicas it had to put there twice. Load comes second:
//! with racks of unequal size, nodes of the smaller racks hold more replicas. A
//! node without a rack is a domain of its own. No move ever lowers the number of
//! racks a group spans, and [`rebalance`] first spreads groups that span fewer
//! racks than they could (racks named after the groups were placed).

use std::collections::{BTreeMap, BTreeSet};

use crate::directory::GroupId;

/// Each data group's replicas (node ids), preferred leader first.
pub type Assignment = BTreeMap<GroupId, Vec<u64>>;

/// Each node's rack (failure domain), for the nodes that named one.
pub type Racks = BTreeMap<u64, String>;

/// Whether `a` and `b` fail together: the same node, or two nodes of one rack.
fn same_domain(racks: &Racks, a: u64, b: u64) -> bool {
    a == b || racks.get(&a).is_some_and(|r| racks.get(&b) == Some(r))
}

/// How many failure domains `replicas` span.
fn domains_spanned(racks: &Racks, replicas: &[u64]) -> usize {
    replicas
        .iter()
        .enumerate()
        .filter(|(i, &r)| !replicas[..*i].iter().any(|&p| same_domain(racks, p, r)))
        .count()
}

/// How many failure domains `nodes` form.
fn domain_count(racks: &Racks, nodes: &[u64]) -> usize {
    domains_spanned(racks, nodes)
}

/// Whether `replicas` with `from` replaced by `to` span as many domains as before.
fn keeps_domains(racks: &Racks, replicas: &[u64], from: u64, to: u64) -> bool {
    let after: Vec<u64> = replicas
        .iter()
        .map(|&r| if r == from { to } else { r })
        .collect();
    domains_spanned(racks, &after) >= domains_spanned(racks, replicas)
}

/// Replicas per node (nodes without any count 0).
fn loads(assignment: &Assignment, nodes: &[u64]) -> BTreeMap<u64, usize> {
    let mut loads: BTreeMap<u64, usize> = nodes.iter().map(|&n| (n, 0)).collect();
    for replicas in assignment.values() {
        for r in replicas {
            if let Some(load) = loads.get_mut(r) {
                *load += 1;
            }
        }
    }
    loads
}

/// The replicas of `groups` new data groups over `nodes`, `rf` each (at most one
/// per node), each on the least-loaded nodes of distinct racks, preferred leaders
/// spread.
pub fn initial(groups: &[GroupId], nodes: &[u64], racks: &Racks, rf: usize) -> Assignment {
    add(&Assignment::new(), groups, nodes, racks, rf)
}

/// The replicas of `groups`, data groups added to those of `current`: `rf` each
/// (at most one per node) on the least-loaded of `nodes` counting what they hold
/// already, one per rack while racks remain, each led by the replica that leads the
/// fewest groups so far. The groups of `current` are left as they are.
pub fn add(
    current: &Assignment,
    groups: &[GroupId],
    nodes: &[u64],
    racks: &Racks,
    rf: usize,
) -> Assignment {
    let rf = rf.min(nodes.len());
    let mut load = loads(current, nodes);
    let mut led: BTreeMap<u64, usize> = nodes.iter().map(|&n| (n, 0)).collect();
    for replicas in current.values() {
        if let Some(count) = replicas.first().and_then(|p| led.get_mut(p)) {
            *count += 1;
        }
    }
    let mut added = Assignment::new();
    for (i, &group) in groups.iter().enumerate() {
        // Least loaded first; ties go round the nodes so that groups start on
        // different nodes.
        let n = nodes.len().max(1);
        let mut candidates: Vec<(usize, usize, u64)> = nodes
            .iter()
            .enumerate()
            .map(|(at, &node)| (load[&node], (at + n - i % n) % n, node))
            .collect();
        candidates.sort_unstable();
        // A new rack for each replica while there is one, then the least loaded.
        let mut replicas: Vec<u64> = Vec::with_capacity(rf);
        for &(_, _, node) in &candidates {
            if replicas.len() < rf && !replicas.iter().any(|&r| same_domain(racks, r, node)) {
                replicas.push(node);
            }
        }
        for &(_, _, node) in &candidates {
            if replicas.len() < rf && !replicas.contains(&node) {
                replicas.push(node);
            }
        }
        if let Some(pick) = replicas
            .iter()
            .enumerate()
            .min_by_key(|(at, node)| (led[*node], *at))
            .map(|(at, _)| at)
        {
            replicas.swap(0, pick);
            *led.get_mut(&replicas[0]).expect("a node") += 1;
        }
        for r in &replicas {
            *load.get_mut(r).expect("a node") += 1;
        }
        added.insert(group, replicas);
    }
    added
}

/// Reorders each group's replicas so that every node is the preferred leader of
/// about as many groups as any other (only the order changes, never the replicas).
pub fn spread_preferred(assignment: &mut Assignment) {
    let mut led: BTreeMap<u64, usize> = BTreeMap::new();
    for replicas in assignment.values_mut() {
        let Some(pick) = replicas
            .iter()
            .enumerate()
            .min_by_key(|(i, n)| (led.get(*n).copied().unwrap_or(0), *i))
            .map(|(i, _)| i)
        else {
            continue;
        };
        replicas.swap(0, pick);
        *led.entry(replicas[0]).or_default() += 1;
    }
}

/// The groups whose replicas change to move every replica off `leaving` (a node
/// being decommissioned) onto the least-loaded of `nodes` that do not hold the
/// group yet, in a rack the group's other replicas are not in if there is one,
/// each replaced in place (a preferred leader's replacement is preferred in its
/// stead). A group that has no node to move to keeps the replica (and its
/// replication factor) until one exists.
pub fn evacuate(assignment: &Assignment, leaving: u64, nodes: &[u64], racks: &Racks) -> Assignment {
    let eligible: Vec<u64> = nodes.iter().copied().filter(|&n| n != leaving).collect();
    let mut load = loads(assignment, &eligible);
    let mut changed = Assignment::new();
    for (&group, replicas) in assignment {
        let Some(at) = replicas.iter().position(|&r| r == leaving) else {
            continue;
        };
        let shares_rack = |n: u64| {
            replicas
                .iter()
                .any(|&r| r != leaving && same_domain(racks, r, n))
        };
        let target = load
            .iter()
            .filter(|(n, _)| !replicas.contains(n))
            .min_by_key(|(n, l)| (shares_rack(**n), **l, **n))
            .map(|(n, _)| *n);
        if let Some(target) = target {
            let mut next = replicas.clone();
            next[at] = target;
            *load.get_mut(&target).expect("eligible") += 1;
            changed.insert(group, next);
        }
    }
    changed
}

/// Up to `max_moves` single-replica moves: first each group that spans fewer racks
/// than it could gets a replica moved from a rack it has twice to the least-loaded
/// node of a rack it lacks ([`spread_racks`]); then moves from a most-loaded node
/// to a least-loaded one that does not hold that group (and whose rack the group
/// does not lose by it), while the two differ by more than one replica. Returns the
/// groups whose replicas change, with their new replicas. Replicas on nodes not in
/// `nodes` are left alone (see [`evacuate`]).
pub fn rebalance(
    assignment: &Assignment,
    nodes: &[u64],
    racks: &Racks,
    max_moves: usize,
) -> Assignment {
    let mut current = assignment.clone();
    let (mut changed, moves) = spread_racks(&mut current, nodes, racks, max_moves);
    let max_moves = max_moves - moves;
    let mut load = loads(&current, nodes);
    // Groups per node, to find one the target does not hold.
    let mut held: BTreeMap<u64, BTreeSet<GroupId>> =
        nodes.iter().map(|&n| (n, BTreeSet::new())).collect();
    for (&group, replicas) in &current {
        for r in replicas {
            if let Some(set) = held.get_mut(r) {
                set.insert(group);
            }
        }
    }
    // Ordered by (load, node): the ends are the most and least loaded.
    let mut by_load: BTreeSet<(usize, u64)> = load.iter().map(|(&n, &l)| (l, n)).collect();
    for _ in 0..max_moves {
        let (Some(&(low, to)), Some(&(high, _))) = (by_load.first(), by_load.last()) else {
            break;
        };
        if high <= low + 1 {
            break;
        }
        // The most-loaded node with a group the least-loaded one lacks (the most
        // loaded of all nearly always has one).
        let mut pick = None;
        for &(l, from) in by_load.iter().rev() {
            if l <= low + 1 {
                break;
            }
            let to_held = &held[&to];
            if let Some(&group) = held[&from]
                .iter()
                .find(|g| !to_held.contains(g) && keeps_domains(racks, &current[g], from, to))
            {
                pick = Some((from, group));
                break;
            }
        }
        let Some((from, group)) = pick else {
            break;
        };
        let replicas = current.get_mut(&group).expect("held groups exist");
        let at = replicas.iter().position(|&r| r == from).expect("held");
        replicas[at] = to;
        held.get_mut(&from).expect("node").remove(&group);
        held.get_mut(&to).expect("node").insert(group);
        for (node, delta) in [(from, -1isize), (to, 1)] {
            let l = load[&node];
            by_load.remove(&(l, node));
            let l = l.checked_add_signed(delta).expect("load stays positive");
            load.insert(node, l);
            by_load.insert((l, node));
        }
        changed.insert(group);
    }
    let mut next: Assignment = changed
        .into_iter()
        .map(|g| (g, current[&g].clone()))
        .collect();
    // Preferred leaders over the whole new assignment, then keep the changed ones
    // and those whose order changed.
    let mut whole = assignment.clone();
    whole.extend(next.clone());
    spread_preferred(&mut whole);
    for (g, replicas) in whole {
        if assignment.get(&g) != Some(&replicas) {
            next.insert(g, replicas);
        }
    }
    next
}

/// Moves, up to `max_moves`, that make groups span more racks: while a group
/// spans fewer racks than its replicas and the nodes allow, the replica on the
/// most-loaded node of a rack the group holds twice goes to the least-loaded node
/// of a rack it lacks. Returns the groups changed (their replicas in `current`)
/// and the number of moves.
fn spread_racks(
    current: &mut Assignment,
    nodes: &[u64],
    racks: &Racks,
    max_moves: usize,
) -> (BTreeSet<GroupId>, usize) {
    let mut changed = BTreeSet::new();
    let mut moves = 0;
    if racks.is_empty() {
        return (changed, moves);
    }
    let available = domain_count(racks, nodes);
    let mut load = loads(current, nodes);
    for (&group, replicas) in current.iter_mut() {
        while moves < max_moves && domains_spanned(racks, replicas) < replicas.len().min(available)
        {
            // A replica sharing its rack with another one, on the most-loaded node.
            let from = replicas
                .iter()
                .copied()
                .filter(|&r| {
                    load.contains_key(&r)
                        && replicas.iter().any(|&o| o != r && same_domain(racks, o, r))
                })
                .max_by_key(|r| (load[r], *r));
            let to = load
                .iter()
                .filter(|(n, _)| !replicas.iter().any(|&r| same_domain(racks, r, **n)))
                .min_by_key(|(n, l)| (**l, **n))
                .map(|(n, _)| *n);
            let (Some(from), Some(to)) = (from, to) else {
                break;
            };
            let at = replicas.iter().position(|&r| r == from).expect("held");
            replicas[at] = to;
            *load.get_mut(&from).expect("a node") -= 1;
            *load.get_mut(&to).expect("a node") += 1;
            changed.insert(group);
            moves += 1;
        }
    }
    (changed, moves)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn none() -> Racks {
        Racks::new()
    }

    fn nodes(n: u64) -> Vec<u64> {
        (1..=n).collect()
    }

    fn groups(n: u32) -> Vec<GroupId> {
        (1..=n).collect()
    }

    fn check_distinct(assignment: &Assignment) {
        for (g, replicas) in assignment {
            let set: BTreeSet<_> = replicas.iter().collect();
            assert_eq!(
                set.len(),
                replicas.len(),
                "group {g} repeats a node: {replicas:?}"
            );
        }
    }

    fn spread(assignment: &Assignment, nodes: &[u64]) -> (usize, usize) {
        let l = loads(assignment, nodes);
        (*l.values().min().unwrap(), *l.values().max().unwrap())
    }

    fn preferred_spread(assignment: &Assignment) -> (usize, usize) {
        let mut led: BTreeMap<u64, usize> = BTreeMap::new();
        for r in assignment.values() {
            *led.entry(r[0]).or_default() += 1;
        }
        (*led.values().min().unwrap(), *led.values().max().unwrap())
    }

    #[test]
    fn added_groups_go_to_the_least_loaded_nodes_and_spread_their_leaders() {
        for (n, had, more) in [(3u64, 3u32, 3u32), (5, 5, 5), (5, 3, 4), (10, 100, 20)] {
            let nodes = nodes(n);
            let mut current = initial(&groups(had), &nodes, &none(), 3);
            let before = current.clone();
            let ids: Vec<GroupId> = (had + 1..=had + more).collect();
            let added = add(&current, &ids, &nodes, &none(), 3);
            assert_eq!(added.keys().copied().collect::<Vec<_>>(), ids);
            check_distinct(&added);
            assert!(added.values().all(|r| r.len() == 3));
            current.extend(added);
            // The groups there were are untouched; replicas and leaders spread.
            assert!(before.iter().all(|(g, r)| current[g] == *r));
            let (min, max) = spread(&current, &nodes);
            assert!(max - min <= 1, "{n} nodes: replicas {min}..{max}");
            let (min, max) = preferred_spread(&current);
            assert!(max - min <= 1, "{n} nodes: leaders {min}..{max}");
        }
    }

    fn moved_replicas(before: &Assignment, changes: &Assignment) -> usize {
        changes
            .iter()
            .map(|(g, after)| after.iter().filter(|n| !before[g].contains(n)).count())
            .sum()
    }

    #[test]
    fn new_groups_spread_replicas_and_leaders_evenly() {
        let a = initial(&groups(5), &nodes(5), &none(), 3);
        check_distinct(&a);
        assert!(a.values().all(|r| r.len() == 3));
        assert_eq!(spread(&a, &nodes(5)), (3, 3));
        assert_eq!(preferred_spread(&a), (1, 1));
        // Fewer nodes than the replication factor: one replica per node.
        let small = initial(&groups(2), &nodes(2), &none(), 3);
        assert!(small.values().all(|r| r.len() == 2));
        // Three groups over three nodes: one leader each.
        let three = initial(&groups(3), &nodes(3), &none(), 3);
        assert_eq!(preferred_spread(&three), (1, 1));
    }

    #[test]
    fn evacuating_a_node_moves_each_of_its_replicas_once() {
        let a = initial(&groups(10), &nodes(5), &none(), 3);
        let changes = evacuate(&a, 5, &nodes(5), &none());
        let on_five = a.values().filter(|r| r.contains(&5)).count();
        assert_eq!(changes.len(), on_five);
        let mut after = a.clone();
        after.extend(changes.clone());
        check_distinct(&after);
        assert!(after.values().all(|r| !r.contains(&5) && r.len() == 3));
        assert_eq!(moved_replicas(&a, &changes), on_five);
        let (min, max) = spread(&after, &nodes(4));
        assert!(max - min <= 2, "{min}..{max}");
        // A rebalance after it evens the rest out.
        after.extend(rebalance(&after, &nodes(4), &none(), 100));
        check_distinct(&after);
        let (min, max) = spread(&after, &nodes(4));
        assert!(max - min <= 1, "{min}..{max}");
        // Nowhere to go (3 nodes, factor 3): nothing changes.
        let full = initial(&groups(3), &nodes(3), &none(), 3);
        assert!(evacuate(&full, 3, &nodes(3), &none()).is_empty());
    }

    #[test]
    fn a_new_node_receives_its_share_and_nothing_else_moves() {
        let a = initial(&groups(6), &nodes(3), &none(), 3);
        let mut with_four = nodes(3);
        with_four.push(4);
        let changes = rebalance(&a, &with_four, &none(), 100);
        let mut after = a.clone();
        after.extend(changes.clone());
        check_distinct(&after);
        // 18 replicas over 4 nodes: 4 or 5 each; node 4 gets 4 (the minimum).
        assert_eq!(spread(&after, &with_four), (4, 5));
        assert_eq!(moved_replicas(&a, &changes), 4);
        // Balanced already: no move.
        assert!(rebalance(&after, &with_four, &none(), 100)
            .iter()
            .all(|(g, r)| after[g].iter().collect::<BTreeSet<_>>() == r.iter().collect()));
    }

    /// The scale the design is for, on paper: 100 nodes, 10,000 groups of 3
    /// replicas, then 10 more nodes. Placement and rebalancing finish within a
    /// second, leave max/min replicas per node ≤ 1.1 and move at most 1.2 × the
    /// minimum number of replicas needed.
    #[test]
    fn a_hundred_nodes_and_ten_thousand_groups_balance_within_bounds() {
        let started = Instant::now();
        let a = initial(&groups(10_000), &nodes(100), &none(), 3);
        check_distinct(&a);
        let (min, max) = spread(&a, &nodes(100));
        assert!(max as f64 / min as f64 <= 1.1, "{min}..{max}");
        let all = nodes(110);
        let changes = rebalance(&a, &all, &none(), usize::MAX);
        let elapsed = started.elapsed();
        let mut after = a.clone();
        after.extend(changes.clone());
        check_distinct(&after);
        let (min, max) = spread(&after, &all);
        assert!(max as f64 / min as f64 <= 1.1, "{min}..{max}");
        // Each new node must reach the floor of the average: fewer moves cannot do.
        let needed = 10 * (30_000 / 110);
        let moved = moved_replicas(&a, &changes);
        assert!(
            moved as f64 <= 1.2 * needed as f64,
            "moved {moved}, at least {needed} needed"
        );
        let (lmin, lmax) = preferred_spread(&after);
        assert!(lmax - lmin <= 2, "preferred leaders {lmin}..{lmax}");
        assert!(elapsed.as_secs_f64() < 1.0, "took {elapsed:?}");
        eprintln!(
            "100 → 110 nodes, 10,000 groups: {moved} replicas moved ({needed} needed), \
             replicas per node {min}..{max}, preferred leaders per node {lmin}..{lmax}, {elapsed:?}"
        );
    }

    /// Nodes 1..=n in racks of `sizes` nodes each, named "r0", "r1", ….
    fn racked(sizes: &[u64]) -> (Vec<u64>, Racks) {
        let mut racks = Racks::new();
        let mut next = 1;
        for (i, &size) in sizes.iter().enumerate() {
            for _ in 0..size {
                racks.insert(next, format!("r{i}"));
                next += 1;
            }
        }
        ((1..next).collect(), racks)
    }

    fn check_racks(assignment: &Assignment, racks: &Racks, want: usize) {
        for (g, replicas) in assignment {
            assert_eq!(
                domains_spanned(racks, replicas),
                want.min(replicas.len()),
                "group {g} on {replicas:?} spans too few racks ({racks:?})"
            );
        }
    }

    #[test]
    fn a_groups_replicas_go_to_distinct_racks_first() {
        // Three racks of 3, 2 and 1 nodes: every group has a replica in each.
        let (nodes, racks) = racked(&[3, 2, 1]);
        let a = initial(&groups(12), &nodes, &racks, 3);
        check_distinct(&a);
        check_racks(&a, &racks, 3);
        // The lone node of rack r2 holds every group; the others share the rest.
        assert!(a.values().all(|r| r.contains(&6)));
        // Two racks, factor 3: both racks, then the least loaded.
        let (nodes, racks) = racked(&[2, 2]);
        let a = initial(&groups(8), &nodes, &racks, 3);
        check_racks(&a, &racks, 2);
        let (min, max) = spread(&a, &nodes);
        assert!(max - min <= 1, "{min}..{max}");
        // Without racks, as before: nothing but load decides.
        assert_eq!(
            initial(&groups(8), &nodes, &none(), 3),
            initial(&groups(8), &nodes, &Racks::new(), 3)
        );
    }

    #[test]
    fn an_evacuated_replica_goes_to_a_rack_its_group_lacks() {
        let (nodes, racks) = racked(&[2, 2, 2]);
        let a = initial(&groups(12), &nodes, &racks, 3);
        check_racks(&a, &racks, 3);
        // Node 1 leaves: its replicas go to node 2, the other node of rack r0.
        let changes = evacuate(&a, 1, &nodes, &racks);
        assert!(!changes.is_empty());
        let mut after = a.clone();
        after.extend(changes);
        check_distinct(&after);
        check_racks(&after, &racks, 3);
        assert!(after.values().all(|r| !r.contains(&1)));
        // Rebalancing never costs a group a rack either.
        let rest: Vec<u64> = nodes.iter().copied().filter(|&n| n != 1).collect();
        after.extend(rebalance(&after, &rest, &racks, 100));
        check_racks(&after, &racks, 3);
    }

    #[test]
    fn racks_named_after_placement_are_spread_by_a_rebalance() {
        // Placed without racks; then nodes 1-3 turn out to share a rack.
        let nodes = nodes(6);
        let a = initial(&groups(10), &nodes, &none(), 3);
        let racks: Racks = nodes
            .iter()
            .map(|&n| (n, if n <= 3 { "a" } else { "b" }.to_string()))
            .collect();
        let changes = rebalance(&a, &nodes, &racks, 100);
        let mut after = a.clone();
        after.extend(changes.clone());
        check_distinct(&after);
        check_racks(&after, &racks, 2);
        let (min, max) = spread(&after, &nodes);
        assert!(max - min <= 1, "{min}..{max}");
        // Only the groups that needed it moved, one replica each at most beyond
        // balancing; and a second rebalance has nothing left to do.
        let again = rebalance(&after, &nodes, &racks, 100);
        assert!(again
            .iter()
            .all(|(g, r)| after[g].iter().collect::<BTreeSet<_>>() == r.iter().collect()));
        // Bounded: one move at a time.
        let one = rebalance(&a, &nodes, &racks, 1);
        assert_eq!(moved_replicas(&a, &one), 1);
    }
}
