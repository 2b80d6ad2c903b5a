//! Server-side queue assignment strategies (the client never computes assignments,
//! as in Kafka's KIP-848).
//!
//! Every strategy is a pure function of the members (sorted by id), what each
//! subscribes to, and the queue counts, so the same inputs always give the same
//! assignment.

use std::collections::{BTreeMap, BTreeSet};

/// A queue of a topic.
pub type TopicQueue = (String, u32);

/// How queues are spread over members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Per topic, contiguous ranges of queues to members in id order (Kafka's range).
    Range,
    /// All subscribed queues dealt one by one to the members subscribed to them.
    RoundRobin,
    /// Balanced like round-robin, but a member keeps what it had where the balance
    /// allows: as few queues as possible move between generations.
    Sticky,
}

/// The members subscribed to `topic`, in id order.
fn subscribers_of<'a>(
    members: &'a BTreeMap<String, BTreeSet<String>>,
    topic: &str,
) -> Vec<&'a String> {
    members
        .iter()
        .filter(|(_, topics)| topics.contains(topic))
        .map(|(m, _)| m)
        .collect()
}

/// Members (id → subscribed topics), queue counts per topic, and (for `Sticky`) the
/// previous assignment. Returns member id → queues, with every member present.
pub fn assign(
    strategy: Strategy,
    members: &BTreeMap<String, BTreeSet<String>>,
    queue_counts: &BTreeMap<String, u32>,
    previous: &BTreeMap<String, BTreeSet<TopicQueue>>,
) -> BTreeMap<String, BTreeSet<TopicQueue>> {
    let mut result: BTreeMap<String, BTreeSet<TopicQueue>> = members
        .keys()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    match strategy {
        Strategy::Range => {
            for (topic, &count) in queue_counts {
                let subscribers = subscribers_of(members, topic);
                if subscribers.is_empty() {
                    continue;
                }
                let n = subscribers.len() as u32;
                let (per, extra) = (count / n, count % n);
                let mut next = 0;
                for (i, member) in subscribers.iter().enumerate() {
                    let take = per + u32::from((i as u32) < extra);
                    let set = result.get_mut(*member).expect("member present");
                    for q in next..next + take {
                        set.insert((topic.clone(), q));
                    }
                    next += take;
                }
            }
        }
        Strategy::RoundRobin => {
            let mut turn = 0usize;
            for (topic, &count) in queue_counts {
                let subscribers = subscribers_of(members, topic);
                if subscribers.is_empty() {
                    continue;
                }
                for q in 0..count {
                    let member = subscribers[turn % subscribers.len()];
                    turn += 1;
                    result
                        .get_mut(member)
                        .expect("member present")
                        .insert((topic.clone(), q));
                }
            }
        }
        Strategy::Sticky => sticky(members, queue_counts, previous, &mut result),
    }
    result
}

fn sticky(
    members: &BTreeMap<String, BTreeSet<String>>,
    queue_counts: &BTreeMap<String, u32>,
    previous: &BTreeMap<String, BTreeSet<TopicQueue>>,
    result: &mut BTreeMap<String, BTreeSet<TopicQueue>>,
) {
    // Per topic: the subscribers share its queues evenly (each gets floor or ceil).
    // Members keep previous queues up to their quota; the rest go to whoever is
    // furthest below quota, in id order.
    for (topic, &count) in queue_counts {
        let subscribers = subscribers_of(members, topic);
        if subscribers.is_empty() {
            continue;
        }
        let n = subscribers.len() as u32;
        let (per, extra) = (count / n, count % n);
        // Members that already held the most of this topic get the `ceil` quotas,
        // so fewer queues move.
        let held = |m: &String| {
            previous.get(m).map_or(0, |s| {
                s.iter().filter(|(t, q)| t == topic && *q < count).count()
            })
        };
        let mut by_held: Vec<&String> = subscribers.clone();
        by_held.sort_by(|a, b| held(b).cmp(&held(a)).then(a.cmp(b)));
        let quota: BTreeMap<&String, u32> = by_held
            .iter()
            .enumerate()
            .map(|(i, m)| (*m, per + u32::from((i as u32) < extra)))
            .collect();
        let mut unassigned: BTreeSet<u32> = (0..count).collect();
        for member in &subscribers {
            let keep: Vec<u32> = previous
                .get(*member)
                .into_iter()
                .flatten()
                .filter(|(t, q)| t == topic && *q < count)
                .map(|(_, q)| *q)
                .collect();
            let set = result.get_mut(*member).expect("member present");
            for q in keep.into_iter().take(quota[member] as usize) {
                if unassigned.remove(&q) {
                    set.insert((topic.clone(), q));
                }
            }
        }
        for q in unassigned {
            let member = subscribers
                .iter()
                .filter(|m| {
                    let have = result[**m].iter().filter(|(t, _)| t == topic).count() as u32;
                    have < quota[*m]
                })
                .min_by_key(|m| {
                    let have = result[**m].iter().filter(|(t, _)| t == topic).count();
                    (have, (**m).clone())
                })
                .expect("quotas add up to the queue count");
            result
                .get_mut(*member)
                .expect("member present")
                .insert((topic.clone(), q));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(ids: &[&str], topics: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
        ids.iter()
            .map(|m| {
                (
                    m.to_string(),
                    topics.iter().map(|t| t.to_string()).collect(),
                )
            })
            .collect()
    }

    fn counts(topics: &[(&str, u32)]) -> BTreeMap<String, u32> {
        topics.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    fn check_disjoint_and_covering(
        result: &BTreeMap<String, BTreeSet<TopicQueue>>,
        queue_counts: &BTreeMap<String, u32>,
    ) {
        let mut seen = BTreeSet::new();
        for set in result.values() {
            for tq in set {
                assert!(seen.insert(tq.clone()), "{tq:?} assigned twice");
            }
        }
        let all: BTreeSet<TopicQueue> = queue_counts
            .iter()
            .flat_map(|(t, n)| (0..*n).map(move |q| (t.clone(), q)))
            .collect();
        assert_eq!(seen, all, "every queue assigned exactly once");
    }

    #[test]
    fn three_members_over_eight_queues_are_disjoint_and_cover_every_queue() {
        let m = members(&["a", "b", "c"], &["t"]);
        let c = counts(&[("t", 8)]);
        for strategy in [Strategy::Range, Strategy::RoundRobin, Strategy::Sticky] {
            let result = assign(strategy, &m, &c, &BTreeMap::new());
            check_disjoint_and_covering(&result, &c);
            let sizes: Vec<usize> = result.values().map(BTreeSet::len).collect();
            assert!(
                sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
                "{strategy:?} unbalanced: {sizes:?}"
            );
        }
    }

    #[test]
    fn range_gives_contiguous_queues_in_member_order() {
        let result = assign(
            Strategy::Range,
            &members(&["a", "b"], &["t"]),
            &counts(&[("t", 5)]),
            &BTreeMap::new(),
        );
        let a: Vec<u32> = result["a"].iter().map(|(_, q)| *q).collect();
        assert_eq!(a, vec![0, 1, 2]);
    }

    #[test]
    fn sticky_moves_only_the_departed_members_queues() {
        let c = counts(&[("t", 9)]);
        let before = assign(
            Strategy::Sticky,
            &members(&["a", "b", "c"], &["t"]),
            &c,
            &BTreeMap::new(),
        );
        let after = assign(Strategy::Sticky, &members(&["a", "b"], &["t"]), &c, &before);
        check_disjoint_and_covering(&after, &c);
        assert!(before["a"].is_subset(&after["a"]));
        assert!(before["b"].is_subset(&after["b"]));
    }

    #[test]
    fn members_subscribe_to_several_topics() {
        let mut m = members(&["a"], &["x", "y"]);
        m.insert("b".into(), ["y".to_string()].into());
        let c = counts(&[("x", 2), ("y", 4)]);
        for strategy in [Strategy::Range, Strategy::RoundRobin, Strategy::Sticky] {
            let result = assign(strategy, &m, &c, &BTreeMap::new());
            check_disjoint_and_covering(&result, &c);
            assert!(result["b"].iter().all(|(t, _)| t == "y"));
        }
    }
}
