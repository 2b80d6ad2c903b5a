//! Unit tests of the core, named after the rule they check. A tiny in-process cluster
//! handles every Ready completely (sync, persist, send) unless a test intercepts.

use bytes::Bytes;

use super::*;

struct Cluster {
    nodes: Vec<RawNode<MemLog>>,
    /// Messages sent but not delivered.
    queue: Vec<Message>,
    /// Nodes whose messages (both ways) are dropped.
    isolated: Vec<NodeId>,
    /// Read states reported by each node's Readies, in order.
    reads: Vec<(NodeId, ReadState)>,
}

fn ids(n: u64) -> Vec<NodeId> {
    (1..=n).map(NodeId).collect()
}

fn config(id: u64, n: u64) -> Config {
    let mut c = Config::new(NodeId(id), ids(n));
    c.seed = 42;
    c
}

fn three_voters() -> MembershipEntry {
    MembershipEntry {
        index: LogIndex(0),
        membership: Membership::new(ids(3), vec![]),
        context: Bytes::new(),
    }
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index: LogIndex(index),
        term: Term(term),
        kind: EntryKind::Command,
        body: Bytes::from_static(b"x"),
    }
}

impl Cluster {
    fn new(n: u64) -> Self {
        Self::with(n, |_| {})
    }

    fn with(n: u64, tweak: impl Fn(&mut Config)) -> Self {
        let nodes = (1..=n)
            .map(|id| {
                let mut c = config(id, n);
                tweak(&mut c);
                RawNode::new(c, MemLog::new(), HardState::default())
            })
            .collect();
        Cluster {
            nodes,
            queue: Vec::new(),
            isolated: Vec::new(),
            reads: Vec::new(),
        }
    }

    fn node(&mut self, id: u64) -> &mut RawNode<MemLog> {
        &mut self.nodes[id as usize - 1]
    }

    /// Takes every Ready and moves messages to the queue (self-messages stepped in).
    fn flush(&mut self) {
        for i in 0..self.nodes.len() {
            while self.nodes[i].has_ready() {
                let rd = self.nodes[i].ready();
                let id = self.nodes[i].id();
                self.reads.extend(rd.read_states.iter().map(|r| (id, *r)));
                self.queue.extend(rd.messages);
                if let Some((idx, term)) = rd.unsynced {
                    self.nodes[i].persisted(idx, term);
                }
                for m in rd.persisted_messages {
                    if m.to == m.from {
                        self.nodes[i].step(m).unwrap();
                    } else {
                        self.queue.push(m);
                    }
                }
                if let Some((_, to)) = rd.to_apply {
                    self.nodes[i].applied(to);
                }
            }
        }
    }

    /// Delivers until quiet.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            self.flush();
            if self.queue.is_empty() {
                return;
            }
            let msgs = std::mem::take(&mut self.queue);
            for m in msgs {
                if self.isolated.contains(&m.to) || self.isolated.contains(&m.from) {
                    continue;
                }
                if m.to.0 as usize > self.nodes.len() {
                    continue; // a member the harness does not run
                }
                let _ = self.node(m.to.0).step(m);
            }
        }
        panic!("cluster does not settle");
    }

    fn elect(&mut self, id: u64) {
        for _ in 0..100 {
            if self.node(id).role() == Role::Leader {
                return;
            }
            let timeout = self.node(id).randomized_election_timeout;
            for _ in 0..timeout {
                self.node(id).tick();
            }
            self.settle();
        }
        panic!("n{id} not elected");
    }

    fn tick_all(&mut self, ticks: u32) {
        for _ in 0..ticks {
            for n in &mut self.nodes {
                n.tick();
            }
            self.settle();
        }
    }
}

#[test]
fn test_leader_election_three_nodes() {
    let mut c = Cluster::new(3);
    c.elect(1);
    assert_eq!(c.node(1).role(), Role::Leader);
    for id in 2..=3 {
        assert_eq!(c.node(id).leader(), Some(NodeId(1)));
        assert_eq!(c.node(id).role(), Role::Follower);
    }
    // The Noop of the new term is committed everywhere after a heartbeat.
    c.tick_all(1);
    for id in 1..=3 {
        assert_eq!(c.node(id).commit_index(), LogIndex(1));
        assert_eq!(c.node(id).log().all()[0].kind, EntryKind::Noop);
    }
}

#[test]
fn test_campaign_within_elects_the_chosen_node_within_those_ticks() {
    let mut c = Cluster::new(3);
    c.node(2).campaign_within(3);
    // Every node ticks: node 2 campaigns at its third tick, long before the
    // others' randomized timeouts (at least one election timeout), and wins.
    c.tick_all(3);
    assert_eq!(c.node(2).role(), Role::Leader);
    for id in [1, 3] {
        assert_eq!(c.node(id).leader(), Some(NodeId(2)));
    }
    // Never on a node that knows a leader; never lengthening a timer.
    let term = c.node(2).term();
    c.node(1).campaign_within(1);
    c.tick_all(1);
    assert_eq!(c.node(2).role(), Role::Leader);
    assert_eq!(c.node(1).term(), term);
    let mut d = Cluster::new(3);
    let before = d.node(1).randomized_election_timeout;
    d.node(1).campaign_within(before + 100);
    assert_eq!(d.node(1).randomized_election_timeout, before);
}

#[test]
fn test_leader_election_single_node() {
    let mut c = Cluster::new(1);
    c.elect(1);
    c.settle();
    assert_eq!(c.node(1).commit_index(), LogIndex(1));
}

#[test]
fn test_leader_election_pre_vote_does_not_raise_term_when_partitioned() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let term = c.node(1).term();
    c.isolated.push(NodeId(3));
    for _ in 0..100 {
        c.node(3).tick();
        c.settle();
    }
    assert_eq!(c.node(3).term(), term, "pre-vote kept the term");
    c.isolated.clear();
    c.tick_all(3);
    assert_eq!(c.node(1).role(), Role::Leader, "no disruption on rejoin");
}

#[test]
fn test_candidate_fallback_on_append_from_leader_of_same_term() {
    let mut c = Cluster::with(3, |c| c.pre_vote = false);
    c.elect(1);
    let term = c.node(1).term();
    // n2 campaigns in the next term alone.
    c.node(2).become_candidate(false);
    let _ = c.node(2).ready();
    assert_eq!(c.node(2).role(), Role::Candidate);
    let t2 = c.node(2).term();
    // A leader of that same term appends: the candidate falls back.
    let m = Message {
        from: NodeId(3),
        to: NodeId(2),
        term: t2,
        body: MessageBody::Heartbeat {
            commit_index: LogIndex::ZERO,
            read_round: 1,
            quiesce: false,
        },
    };
    c.node(2).step(m).unwrap();
    assert_eq!(c.node(2).role(), Role::Follower);
    assert_eq!(c.node(2).leader(), Some(NodeId(3)));
    assert!(t2 > term);
}

#[test]
fn test_vote_rejected_for_stale_candidate() {
    let mut c = Cluster::with(3, |c| c.check_quorum = false);
    c.elect(1);
    c.node(1)
        .propose(EntryKind::Command, Bytes::from_static(b"a"))
        .unwrap();
    c.settle();
    let (last, last_term) = c.node(2).last_entry_id();
    assert_eq!(last, LogIndex(2));
    let vote = |term: u64, idx: u64, t: u64| Message {
        from: NodeId(3),
        to: NodeId(2),
        term: Term(term),
        body: MessageBody::Vote {
            pre_vote: false,
            last_log_index: LogIndex(idx),
            last_log_term: Term(t),
            transfer: false,
        },
    };
    c.node(2).step(vote(9, 1, last_term.0)).unwrap();
    let rd = c.node(2).ready();
    assert!(rd.persisted_messages.is_empty());
    assert!(matches!(
        rd.messages[0].body,
        MessageBody::VoteResponse { granted: false, .. }
    ));
    // An up-to-date candidate gets the vote, as a persisted message with the vote
    // in the hard state of the same Ready.
    c.node(2).step(vote(10, 2, last_term.0)).unwrap();
    let rd = c.node(2).ready();
    assert_eq!(rd.hard_state.unwrap().vote, Some(NodeId(3)));
    assert!(matches!(
        rd.persisted_messages[0].body,
        MessageBody::VoteResponse { granted: true, .. }
    ));
}

#[test]
fn test_leader_stickiness_ignores_vote_within_lease() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let term = c.node(2).term();
    let m = Message {
        from: NodeId(3),
        to: NodeId(2),
        term: Term(term.0 + 5),
        body: MessageBody::Vote {
            pre_vote: false,
            last_log_index: LogIndex(100),
            last_log_term: Term(term.0 + 4),
            transfer: false,
        },
    };
    c.node(2).step(m.clone()).unwrap();
    assert_eq!(c.node(2).term(), term, "ignored within the lease");
    let mut t = m;
    t.body = MessageBody::Vote {
        pre_vote: false,
        last_log_index: LogIndex(100),
        last_log_term: Term(term.0 + 4),
        transfer: true,
    };
    c.node(2).step(t).unwrap();
    assert_eq!(
        c.node(2).term(),
        Term(term.0 + 5),
        "a transfer overrides it"
    );
}

#[test]
fn test_check_quorum_leader_steps_down_without_quorum() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolated = vec![NodeId(2), NodeId(3)];
    for _ in 0..(2 * c.node(1).config().election_timeout_ticks) {
        c.node(1).tick();
        c.settle();
    }
    assert_eq!(c.node(1).role(), Role::Follower);
}

#[test]
fn test_leader_counts_itself_only_when_durable() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.tick_all(1);
    c.isolated = vec![NodeId(3)];
    let (idx, _) = c
        .node(1)
        .propose(EntryKind::Command, Bytes::from_static(b"a"))
        .unwrap();
    // n1 builds the Ready but its log is not yet durable; n2 acks.
    let rd = c.node(1).ready();
    assert_eq!(rd.unsynced.map(|u| u.0), Some(idx));
    assert_eq!(rd.hard_state.unwrap().acked_index, idx);
    let self_ack = rd
        .persisted_messages
        .iter()
        .find(|m| m.to == NodeId(1))
        .cloned();
    for m in rd.messages {
        if m.to == NodeId(2) {
            c.node(2).step(m).unwrap();
        }
    }
    let rd2 = c.node(2).ready();
    assert!(rd2
        .messages
        .iter()
        .all(|m| !matches!(m.body, MessageBody::AppendResponse { .. })));
    for m in rd2.persisted_messages {
        c.node(1).step(m).unwrap();
    }
    // Only n2 holds it durably: one of three is not a quorum... with n1 not counted.
    assert!(c.node(1).commit_index() < idx);
    c.node(1).step(self_ack.expect("self ack")).unwrap();
    assert_eq!(c.node(1).commit_index(), idx);
}

/// Figure 8: returns n1's commit index once a majority holds (2, t) but not yet
/// n1's Noop of its later term.
fn figure8_commit_after_old_term_ack(fault: Option<FaultVariant>) -> LogIndex {
    // n1 leads term t with entry (2, t) only on itself.
    let mut c = Cluster::with(3, |c| {
        c.max_append_entries = 1;
        c.fault = fault;
    });
    c.elect(1);
    c.tick_all(1);
    c.isolated = vec![NodeId(1)];
    c.node(1)
        .propose(EntryKind::Command, Bytes::from_static(b"old"))
        .unwrap();
    c.settle();
    let old_term = c.node(1).term();
    // n2 leads a later term, appends (2, t') alone, and is partitioned.
    c.isolated = vec![NodeId(1), NodeId(3)];
    c.node(2).become_follower(old_term, None);
    c.node(2).become_candidate(false);
    c.node(2).vote = Some(NodeId(2));
    // Force leadership without votes (the isolated test harness): count n3's vote.
    c.node(2).votes.push((NodeId(3), true));
    c.node(2).become_leader().unwrap();
    c.settle();
    assert_eq!(c.node(2).log().last_index(), LogIndex(2));
    // n1 comes back and is elected with n3 in a still later term.
    c.isolated = vec![NodeId(2)];
    c.node(1).become_follower(Term(old_term.0 + 2), None);
    c.node(3).become_follower(Term(old_term.0 + 2), None);
    c.node(1).become_candidate(false);
    let rd = c.node(1).ready();
    for m in rd
        .persisted_messages
        .into_iter()
        .filter(|m| m.to == NodeId(3))
    {
        c.node(3).step(m).unwrap();
    }
    let rd = c.node(3).ready();
    for m in rd.persisted_messages {
        c.node(1).step(m).unwrap();
    }
    assert_eq!(c.node(1).role(), Role::Leader);
    // Replicate one entry at a time: (2, t) reaches n3 before the new Noop does.
    let rd = c.node(1).ready();
    let mut appends: Vec<Message> = rd.messages;
    for m in rd.persisted_messages {
        c.node(1).step(m).unwrap();
    }
    appends.retain(|m| m.to == NodeId(3));
    // Probe rejected until prev matches; walk it by hand.
    for _ in 0..10 {
        let mut next = Vec::new();
        for m in appends.drain(..) {
            let to = m.to.0;
            c.node(to).step(m).unwrap();
            let rd = c.node(to).ready();
            next.extend(rd.messages);
            next.extend(rd.persisted_messages);
        }
        for m in next {
            if m.to == NodeId(1) {
                c.node(1).step(m).unwrap();
            }
        }
        let rd = c.node(1).ready();
        for m in rd.persisted_messages {
            c.node(1).step(m).unwrap();
        }
        appends = rd
            .messages
            .into_iter()
            .filter(|m| m.to == NodeId(3))
            .collect();
        if c.node(3).log().term_at(LogIndex(2)) == Some(old_term)
            && c.node(3).log().last_index() == LogIndex(2)
        {
            break;
        }
    }
    assert_eq!(c.node(3).log().term_at(LogIndex(2)), Some(old_term));
    assert_eq!(c.node(3).log().last_index(), LogIndex(2));
    // Deliver n3's ack for index 2: a majority holds (2, t), yet it is not committed.
    for m in appends {
        c.node(3).step(m).unwrap();
    }
    let rd = c.node(3).ready();
    for m in rd.persisted_messages {
        if m.to == NodeId(1) {
            if let MessageBody::AppendResponse { match_index, .. } = m.body {
                if match_index > LogIndex(2) {
                    continue;
                }
            }
            c.node(1).step(m).unwrap();
        }
    }
    c.node(1).commit_index()
}

#[test]
fn test_figure8_old_term_not_committed_by_count() {
    assert!(
        figure8_commit_after_old_term_ack(None) < LogIndex(2),
        "an entry of an older term was committed by counting replicas"
    );
}

#[test]
fn test_figure8_broken_variant_commits_by_count() {
    // The deliberately broken core does commit it: the scenario above is sharp.
    assert_eq!(
        figure8_commit_after_old_term_ack(Some(FaultVariant::CommitOldTermByCount)),
        LogIndex(2)
    );
}

#[test]
fn test_follower_ack_is_a_persisted_message_and_raises_acked_index() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.tick_all(1);
    c.node(1)
        .propose(EntryKind::Command, Bytes::from_static(b"a"))
        .unwrap();
    let rd = c.node(1).ready();
    let m = rd.messages.into_iter().find(|m| m.to == NodeId(2)).unwrap();
    c.node(2).step(m).unwrap();
    let rd = c.node(2).ready();
    assert_eq!(rd.unsynced, Some((LogIndex(2), c.node(1).term())));
    assert_eq!(rd.hard_state.unwrap().acked_index, LogIndex(2));
    assert!(matches!(
        rd.persisted_messages[0].body,
        MessageBody::AppendResponse {
            success: true,
            match_index: LogIndex(2),
            ..
        }
    ));
}

#[test]
fn test_truncation_voids_pending_acks_and_lowers_acked_index() {
    let mut n = RawNode::new(config(2, 3), MemLog::new(), HardState::default());
    let append = |term: u64, prev: u64, prev_term: u64, entries: Vec<Entry>| Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(term),
        body: MessageBody::Append {
            prev_log_index: LogIndex(prev),
            prev_log_term: Term(prev_term),
            entries,
            commit_index: LogIndex(0),
        },
    };
    n.step(append(1, 0, 0, vec![entry(1, 1), entry(2, 1), entry(3, 1)]))
        .unwrap();
    // (Nothing acknowledged is durable yet: the truncation need not wait.)
    // A new leader of term 2 overwrites index 2.. before the Ready was taken.
    let mut m = append(2, 1, 1, vec![entry(2, 2)]);
    m.from = NodeId(3);
    n.step(m).unwrap();
    let rd = n.ready();
    assert_eq!(rd.hard_state.unwrap().acked_index, LogIndex(2));
    let acks: Vec<LogIndex> = rd
        .persisted_messages
        .iter()
        .filter_map(|m| match m.body {
            MessageBody::AppendResponse { match_index, .. } => Some(match_index),
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![LogIndex(2)], "the ack for (3, 1) was voided");
}

#[test]
fn test_truncating_acknowledged_entries_waits_for_lowered_mark() {
    let mut n = RawNode::new(config(2, 3), MemLog::new(), HardState::default());
    let append = |from: u64, term: u64, prev: u64, prev_term: u64, entries: Vec<Entry>| Message {
        from: NodeId(from),
        to: NodeId(2),
        term: Term(term),
        body: MessageBody::Append {
            prev_log_index: LogIndex(prev),
            prev_log_term: Term(prev_term),
            entries,
            commit_index: LogIndex(0),
        },
    };
    n.step(append(
        1,
        1,
        0,
        0,
        vec![entry(1, 1), entry(2, 1), entry(3, 1)],
    ))
    .unwrap();
    let rd = n.ready();
    n.persisted(rd.unsynced.unwrap().0, rd.unsynced.unwrap().1);
    assert_eq!(n.status().acked_index, LogIndex(3));
    // A leader of term 2 overwrites index 2: first the mark comes down durably.
    n.step(append(3, 2, 1, 1, vec![entry(2, 2)])).unwrap();
    assert_eq!(n.log().last_index(), LogIndex(3), "not truncated yet");
    let rd = n.ready();
    assert_eq!(rd.hard_state.unwrap().acked_index, LogIndex(1));
    assert!(rd.persisted_messages.is_empty());
    let (i, t) = rd.unsynced.unwrap();
    n.persisted(i, t);
    n.step(append(3, 2, 1, 1, vec![entry(2, 2)])).unwrap();
    assert_eq!(n.log().last_index(), LogIndex(2));
    assert_eq!(n.log().term_at(LogIndex(2)), Some(Term(2)));
}

#[test]
fn test_damaged_node_does_not_vote_until_caught_up() {
    // The node acknowledged index 5 but restarts with only 2 entries.
    let log = MemLog::from_entries(vec![entry(1, 1), entry(2, 1)]);
    let hs = HardState {
        term: Term(1),
        vote: None,
        acked_index: LogIndex(5),
    };
    let mut n = RawNode::new(config(2, 3), log, hs);
    assert!(n.status().recovering);
    for _ in 0..100 {
        n.tick();
    }
    assert_eq!(n.role(), Role::Follower, "does not campaign");
    let _ = n.ready();
    let vote = Message {
        from: NodeId(3),
        to: NodeId(2),
        term: Term(2),
        body: MessageBody::Vote {
            pre_vote: false,
            last_log_index: LogIndex(2),
            last_log_term: Term(1),
            transfer: false,
        },
    };
    n.step(vote.clone()).unwrap();
    let rd = n.ready();
    assert!(rd.persisted_messages.is_empty(), "no vote granted");
    // A leader brings it past the mark.
    let append = Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(2),
        body: MessageBody::Append {
            prev_log_index: LogIndex(2),
            prev_log_term: Term(1),
            entries: (3..=6).map(|i| entry(i, 1)).collect(),
            commit_index: LogIndex(2),
        },
    };
    n.step(append).unwrap();
    assert!(!n.status().recovering);
}

#[test]
fn test_fast_backtracking_skips_a_conflicting_term_in_one_round() {
    let mut c = Cluster::new(3);
    let hs = HardState {
        term: Term(2),
        vote: None,
        acked_index: LogIndex::ZERO,
    };
    let n1_log = MemLog::from_entries(vec![entry(1, 1), entry(2, 1)]);
    let mut n3_entries = vec![entry(1, 1)];
    n3_entries.extend((2..=50).map(|i| entry(i, 2)));
    c.nodes[0] = RawNode::new(config(1, 3), n1_log, hs);
    c.nodes[2] = RawNode::new(config(3, 3), MemLog::from_entries(n3_entries), hs);
    let mut rejects = 0;
    // n1 campaigns; n2 (empty log) elects it; n3 is more up to date and refuses.
    c.node(1).campaign(false);
    for _ in 0..30 {
        c.flush();
        let msgs = std::mem::take(&mut c.queue);
        for m in msgs {
            if let MessageBody::AppendResponse { success: false, .. } = m.body {
                rejects += 1;
            }
            let _ = c.node(m.to.0).step(m);
        }
    }
    assert_eq!(c.node(1).role(), Role::Leader);
    let leader_log = c.node(1).log().all().to_vec();
    assert_eq!(c.node(3).log().all(), &leader_log[..]);
    assert!(rejects <= 2, "{rejects} rejections");
}

#[test]
fn test_batching_many_proposals_one_append_per_follower() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.tick_all(1);
    for _ in 0..100 {
        c.node(1)
            .propose(EntryKind::Messages, Bytes::from_static(b"m"))
            .unwrap();
    }
    let rd = c.node(1).ready();
    let appends: Vec<&Message> = rd
        .messages
        .iter()
        .filter(|m| matches!(m.body, MessageBody::Append { .. }))
        .collect();
    assert_eq!(appends.len(), 2);
    for m in appends {
        let MessageBody::Append { entries, .. } = &m.body else {
            unreachable!()
        };
        assert_eq!(entries.len(), 100);
    }
}

#[test]
fn test_propose_refused_when_not_leader_or_busy() {
    let mut c = Cluster::with(3, |c| c.max_pending_proposals = 3);
    c.elect(1);
    c.tick_all(1);
    assert_eq!(
        c.node(2).propose(EntryKind::Command, Bytes::new()),
        Err(ProposeError::NotLeader {
            leader: Some(NodeId(1))
        })
    );
    for _ in 0..3 {
        c.node(1).propose(EntryKind::Command, Bytes::new()).unwrap();
    }
    assert_eq!(
        c.node(1).propose(EntryKind::Command, Bytes::new()),
        Err(ProposeError::Busy)
    );
    c.settle();
    c.node(1).propose(EntryKind::Command, Bytes::new()).unwrap();
}

#[test]
fn test_write_failure_leader_steps_down_cleanly() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.tick_all(1);
    let last = c.node(1).log().last_index();
    c.node(1).log_mut().set_fail_writes(true);
    let r = c.node(1).propose(EntryKind::Command, Bytes::new());
    assert!(matches!(r, Err(ProposeError::Storage(_))));
    assert_eq!(c.node(1).role(), Role::Follower);
    assert_eq!(c.node(1).log().last_index(), last);
}

#[test]
fn test_write_failure_on_election_surfaces_and_steps_down() {
    let mut c = Cluster::with(3, |c| c.pre_vote = false);
    c.node(1).log_mut().set_fail_writes(true);
    c.node(1).campaign(false);
    let rd = c.node(1).ready();
    let mut results = Vec::new();
    for m in rd.persisted_messages {
        let to = m.to.0;
        c.node(to).step(m).unwrap();
        let rd = c.node(to).ready();
        for r in rd.persisted_messages {
            results.push(c.node(1).step(r));
        }
    }
    assert!(results
        .iter()
        .any(|r| matches!(r, Err(RaftError::Storage(_)))));
    assert_eq!(c.node(1).role(), Role::Follower);
}

#[test]
fn test_write_failure_follower_rejects_append() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.tick_all(1);
    c.node(2).log_mut().set_fail_writes(true);
    c.node(1).propose(EntryKind::Command, Bytes::new()).unwrap();
    let rd = c.node(1).ready();
    let m = rd.messages.into_iter().find(|m| m.to == NodeId(2)).unwrap();
    assert!(matches!(c.node(2).step(m), Err(RaftError::Storage(_))));
    let rd = c.node(2).ready();
    assert!(rd.persisted_messages.is_empty());
    assert!(matches!(
        rd.messages[0].body,
        MessageBody::AppendResponse { success: false, .. }
    ));
    c.node(2).log_mut().set_fail_writes(false);
    c.tick_all(30);
    assert_eq!(c.node(2).log().last_index(), c.node(1).log().last_index());
}

#[test]
fn test_leadership_transfer_hands_over_and_refuses_proposals() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.tick_all(1);
    c.node(1).transfer_leadership(NodeId(3)).unwrap();
    assert_eq!(
        c.node(1).propose(EntryKind::Command, Bytes::new()),
        Err(ProposeError::TransferInProgress)
    );
    c.settle();
    assert_eq!(c.node(3).role(), Role::Leader);
    assert_eq!(c.node(1).leader(), Some(NodeId(3)));
}

#[test]
fn test_leadership_transfer_abandoned_after_election_timeout() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.tick_all(1);
    c.isolated = vec![NodeId(3)];
    c.node(1).transfer_leadership(NodeId(3)).unwrap();
    let timeout = c.node(1).config().election_timeout_ticks;
    c.tick_all(timeout + 1);
    assert_eq!(c.node(1).role(), Role::Leader);
    assert!(c.node(1).propose(EntryKind::Command, Bytes::new()).is_ok());
}

#[test]
fn test_follower_commit_never_exceeds_matched_prefix() {
    let mut n = RawNode::new(config(2, 3), MemLog::new(), HardState::default());
    // An old suffix of term 1 beyond what the leader of term 2 matched.
    n.step(Message {
        from: NodeId(3),
        to: NodeId(2),
        term: Term(1),
        body: MessageBody::Append {
            prev_log_index: LogIndex(0),
            prev_log_term: Term(0),
            entries: (1..=5).map(|i| entry(i, 1)).collect(),
            commit_index: LogIndex(0),
        },
    })
    .unwrap();
    n.step(Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(2),
        body: MessageBody::Append {
            prev_log_index: LogIndex(0),
            prev_log_term: Term(0),
            entries: vec![entry(1, 1), entry(2, 1)],
            commit_index: LogIndex(10),
        },
    })
    .unwrap();
    assert_eq!(n.commit_index(), LogIndex(2));
}

#[test]
fn test_restart_with_log_ahead_of_hard_state_term_adopts_log_term() {
    let log = MemLog::from_entries(vec![entry(1, 3)]);
    let n = RawNode::new(config(1, 3), log, HardState::default());
    assert_eq!(n.term(), Term(3));
    assert_eq!(n.status().vote, None);
}

fn appends_to(msgs: &[Message], to: u64) -> Vec<&Message> {
    msgs.iter()
        .filter(|m| m.to == NodeId(to) && matches!(m.body, MessageBody::Append { .. }))
        .collect()
}

#[test]
fn test_heartbeat_commit_is_min_of_commit_and_match() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.tick_all(1);
    c.isolated = vec![NodeId(3)];
    c.node(1).propose(EntryKind::Command, Bytes::new()).unwrap();
    c.settle();
    let commit = c.node(1).commit_index();
    assert_eq!(commit, LogIndex(2));
    c.isolated.clear();
    let hb_interval = c.node(1).config().heartbeat_interval_ticks;
    for _ in 0..hb_interval {
        c.node(1).tick();
    }
    let rd = c.node(1).ready();
    let hb = rd
        .messages
        .iter()
        .find(|m| m.to == NodeId(3) && matches!(m.body, MessageBody::Heartbeat { .. }))
        .expect("heartbeat to n3");
    assert!(
        matches!(
            hb.body,
            MessageBody::Heartbeat {
                commit_index: LogIndex(1),
                ..
            }
        ),
        "n3 only matched the Noop: {:?}",
        hb.body
    );
}

#[test]
fn test_probe_sends_one_append_until_answered() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.tick_all(1);
    c.isolated = vec![NodeId(3)];
    // Force n3 into Probe far back: it rejected an append.
    c.node(1)
        .progress
        .get_mut(&NodeId(3))
        .unwrap()
        .become_probe(LogIndex(2));
    for _ in 0..3 {
        c.node(1).propose(EntryKind::Command, Bytes::new()).unwrap();
        let rd = c.node(1).ready();
        c.queue.extend(rd.messages);
    }
    assert_eq!(appends_to(&c.queue, 3).len(), 1, "one probe in flight");
    assert_eq!(appends_to(&c.queue, 2).len(), 3, "n2 replicates freely");
}

#[test]
fn test_replicate_stream_retransmits_after_stall() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.tick_all(1);
    c.node(1).propose(EntryKind::Command, Bytes::new()).unwrap();
    // The append to n3 is lost.
    c.isolated = vec![NodeId(3)];
    c.settle();
    c.isolated.clear();
    assert_eq!(c.node(3).log().last_index(), LogIndex(1));
    let timeout = c.node(1).config().election_timeout_ticks;
    c.tick_all(timeout + 2);
    assert_eq!(
        c.node(3).log().last_index(),
        LogIndex(2),
        "resent after a stall"
    );
    assert_eq!(c.node(3).commit_index(), LogIndex(2));
}

#[test]
fn test_stale_leader_steps_down_on_higher_term_response() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.tick_all(1);
    let term = c.node(1).term();
    c.node(2).become_follower(Term(term.0 + 3), None);
    c.node(1).propose(EntryKind::Command, Bytes::new()).unwrap();
    c.settle();
    assert_eq!(c.node(1).role(), Role::Follower);
    assert_eq!(c.node(1).term(), Term(term.0 + 3));
}

#[test]
fn test_leader_detects_follower_that_lost_acknowledged_entries() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.tick_all(1);
    for _ in 0..5 {
        c.node(1).propose(EntryKind::Command, Bytes::new()).unwrap();
    }
    c.settle();
    assert_eq!(c.node(1).status().progress[1].match_index, LogIndex(6));
    // n3 restarts with its log cut to 2 entries (the recovery mark stays at 6).
    let kept = c.node(3).log().all()[..2].to_vec();
    let hs = c.node(3).hard_state();
    c.nodes[2] = RawNode::new(config(3, 3), MemLog::from_entries(kept), hs);
    assert!(c.node(3).status().recovering);
    c.node(1).propose(EntryKind::Command, Bytes::new()).unwrap();
    c.tick_all(3);
    let leader_log = c.node(1).log().all().to_vec();
    assert_eq!(c.node(3).log().all(), leader_log.as_slice());
    assert!(!c.node(3).status().recovering);
}

#[test]
fn test_to_apply_skips_entries_already_applied() {
    let log = MemLog::from_entries((1..=5).map(|i| entry(i, 1)).collect());
    let hs = HardState {
        term: Term(1),
        vote: None,
        acked_index: LogIndex(5),
    };
    let mut n = RawNode::new(config(2, 3), log, hs);
    n.applied(LogIndex(3));
    n.step(Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(1),
        body: MessageBody::Heartbeat {
            commit_index: LogIndex(5),
            read_round: 1,
            quiesce: false,
        },
    })
    .unwrap();
    let rd = n.ready();
    assert_eq!(rd.to_apply, Some((LogIndex(4), LogIndex(5))));
    assert_eq!(rd.hard_state, None, "nothing durable changed");
}

#[test]
fn test_persisted_ignored_after_truncation() {
    let mut n = RawNode::new(config(2, 3), MemLog::new(), HardState::default());
    let append = |from: u64, term: u64, prev: u64, entries: Vec<Entry>| Message {
        from: NodeId(from),
        to: NodeId(2),
        term: Term(term),
        body: MessageBody::Append {
            prev_log_index: LogIndex(prev),
            prev_log_term: Term(if prev == 0 { 0 } else { 1 }),
            entries,
            commit_index: LogIndex(0),
        },
    };
    n.step(append(1, 1, 0, vec![entry(1, 1), entry(2, 1)]))
        .unwrap();
    let rd = n.ready();
    let (i, t) = rd.unsynced.unwrap();
    // Before the sync completes, a new leader replaces entry 2.
    n.step(append(3, 2, 1, vec![entry(2, 2)])).unwrap();
    n.persisted(i, t);
    assert_eq!(
        n.status().persisted_index,
        LogIndex(0),
        "stale sync ignored"
    );
    n.persisted(LogIndex(2), Term(2));
    assert_eq!(n.status().persisted_index, LogIndex(2));
}

#[test]
fn test_propose_batch_is_all_or_nothing() {
    let mut c = Cluster::with(3, |c| c.max_pending_proposals = 4);
    c.elect(1);
    c.tick_all(1);
    let bodies = vec![Bytes::from_static(b"a"); 5];
    assert_eq!(
        c.node(1).propose_batch(EntryKind::Messages, &bodies),
        Err(ProposeError::Busy)
    );
    let (first, last, _) = c
        .node(1)
        .propose_batch(EntryKind::Messages, &bodies[..3])
        .unwrap();
    assert_eq!((first, last), (LogIndex(2), LogIndex(4)));
}

#[test]
fn test_recovering_node_rejects_pre_vote_and_ignores_timeout_now() {
    let log = MemLog::from_entries(vec![entry(1, 1)]);
    let hs = HardState {
        term: Term(1),
        vote: None,
        acked_index: LogIndex(3),
    };
    let mut n = RawNode::new(config(2, 3), log, hs);
    n.step(Message {
        from: NodeId(3),
        to: NodeId(2),
        term: Term(2),
        body: MessageBody::Vote {
            pre_vote: true,
            last_log_index: LogIndex(9),
            last_log_term: Term(1),
            transfer: false,
        },
    })
    .unwrap();
    let rd = n.ready();
    assert!(matches!(
        rd.messages[0].body,
        MessageBody::VoteResponse {
            pre_vote: true,
            granted: false
        }
    ));
    n.step(Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(1),
        body: MessageBody::TimeoutNow,
    })
    .unwrap();
    assert_eq!(n.role(), Role::Follower);
    assert_eq!(n.term(), Term(1));
}

#[test]
fn test_message_to_another_node_is_refused() {
    let mut n = RawNode::new(config(2, 3), MemLog::new(), HardState::default());
    let m = Message {
        from: NodeId(1),
        to: NodeId(3),
        term: Term(1),
        body: MessageBody::TimeoutNow,
    };
    assert!(matches!(n.step(m), Err(RaftError::WrongRecipient { .. })));
    let m = Message {
        from: NodeId(9),
        to: NodeId(2),
        term: Term(1),
        body: MessageBody::TimeoutNow,
    };
    // A node outside the membership is heard (a joining node hears from a leader
    // before it learns the members); it just cannot win this node's vote count.
    assert_eq!(n.step(m), Ok(()));
}

/// Proposes `count` entries on the leader and settles.
fn propose_n(c: &mut Cluster, leader: u64, count: usize) {
    for _ in 0..count {
        c.node(leader)
            .propose(EntryKind::Command, Bytes::from_static(b"p"))
            .unwrap();
        c.settle();
    }
}

#[test]
fn test_follower_behind_log_start_gets_the_snapshot_then_entries() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolated.push(NodeId(3));
    propose_n(&mut c, 1, 10);
    let commit = c.node(1).commit_index();
    assert!(commit >= LogIndex(10));
    c.node(1).log_mut().compact(LogIndex(8));
    c.isolated.clear();
    // Heartbeats let the probe go; the probe hits the log start; the snapshot follows.
    for _ in 0..100 {
        if c.node(3).log().first_index() == LogIndex(9) {
            break;
        }
        c.tick_all(1);
    }
    c.settle();
    let n3 = c.node(3);
    assert_eq!(n3.log().first_index(), LogIndex(9));
    assert_eq!(n3.commit_index(), commit);
    assert_eq!(n3.log().last_index(), c.node(1).log().last_index());
    let pr = c.node(1).status().progress;
    assert!(pr.iter().all(|p| p.state == ProgressState::Replicate));
}

#[test]
fn test_install_snapshot_reports_it_in_ready_and_discards_conflicting_tail() {
    let mut n = RawNode::new(
        config(2, 3),
        MemLog::from_entries(vec![entry(1, 1), entry(2, 1), entry(3, 1)]),
        HardState {
            term: Term(1),
            vote: None,
            acked_index: LogIndex(0),
        },
    );
    let msg = Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(2),
        body: MessageBody::InstallSnapshot {
            index: LogIndex(5),
            snapshot_term: Term(2),
            membership: three_voters(),
        },
    };
    assert!(n.accepts_snapshot(Term(2), LogIndex(5), Term(2)));
    n.step(msg).unwrap();
    let rd = n.ready();
    assert_eq!(rd.snapshot, Some((LogIndex(5), Term(2))));
    assert_eq!(rd.unsynced, Some((LogIndex(5), Term(2))));
    assert_eq!(rd.to_apply, None, "the snapshot is the state up to 5");
    assert_eq!(n.log().first_index(), LogIndex(6));
    assert_eq!(n.commit_index(), LogIndex(5));
    assert!(matches!(
        rd.persisted_messages[0].body,
        MessageBody::AppendResponse {
            success: true,
            match_index: LogIndex(5),
            ..
        }
    ));
    // A stale copy of the same snapshot is not installed again.
    assert!(!n.accepts_snapshot(Term(2), LogIndex(5), Term(2)));
}

#[test]
fn test_install_that_would_drop_acknowledged_entries_lowers_the_mark_first() {
    let log = MemLog::from_entries((1..=6).map(|i| entry(i, 1)).collect());
    let mut n = RawNode::new(
        config(2, 3),
        log,
        HardState {
            term: Term(1),
            vote: None,
            acked_index: LogIndex(6),
        },
    );
    // The leader's snapshot at 4 has another term: our 4..6 are not committed.
    assert!(!n.accepts_snapshot(Term(3), LogIndex(4), Term(3)));
    let msg = |term| Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(term),
        body: MessageBody::InstallSnapshot {
            index: LogIndex(4),
            snapshot_term: Term(3),
            membership: three_voters(),
        },
    };
    n.step(msg(3)).unwrap();
    assert_eq!(n.log().last_index(), LogIndex(6), "nothing discarded yet");
    let rd = n.ready();
    assert_eq!(rd.hard_state.unwrap().acked_index, LogIndex(4));
    let (i, t) = rd.unsynced.unwrap();
    n.persisted(i, t);
    assert!(n.accepts_snapshot(Term(3), LogIndex(4), Term(3)));
    n.step(msg(3)).unwrap();
    assert_eq!(n.log().first_index(), LogIndex(5));
    assert_eq!(n.log().last_index(), LogIndex(4));
}

#[test]
fn test_restart_on_a_compacted_log_starts_committed_at_the_snapshot() {
    let mut log = MemLog::from_entries((1..=6).map(|i| entry(i, 1)).collect());
    log.compact(LogIndex(4));
    let n = RawNode::new(config(1, 3), log, HardState::default());
    assert_eq!(n.commit_index(), LogIndex(4));
    assert_eq!(n.status().applied_index, LogIndex(4));
}

// ----- ReadIndex ---------------------------------------------------------------------

#[test]
fn test_read_index_leader_answers_after_a_quorum_round_at_its_commit_index() {
    let mut c = Cluster::new(3);
    c.elect(1);
    propose_n(&mut c, 1, 3);
    c.settle();
    let commit = c.node(1).commit_index();
    c.node(1).read_index(7).unwrap();
    // Nothing is answered before the round goes out and comes back.
    assert!(c.reads.is_empty());
    let rd = c.node(1).ready();
    assert!(rd.read_states.is_empty());
    let rounds = rd
        .messages
        .iter()
        .filter(|m| matches!(m.body, MessageBody::Heartbeat { .. }))
        .count();
    assert_eq!(rounds, 2, "one heartbeat round to each follower");
    c.queue.extend(rd.messages);
    c.settle();
    assert_eq!(
        c.reads,
        vec![(
            NodeId(1),
            ReadState {
                id: 7,
                index: Some(commit)
            }
        )]
    );
}

#[test]
fn test_read_index_reads_arriving_together_share_one_round() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.settle();
    for id in 0..50 {
        c.node(1).read_index(id).unwrap();
    }
    let rd = c.node(1).ready();
    let heartbeats = rd
        .messages
        .iter()
        .filter(|m| matches!(m.body, MessageBody::Heartbeat { .. }))
        .count();
    assert_eq!(heartbeats, 2);
    c.queue.extend(rd.messages);
    c.settle();
    assert_eq!(c.reads.len(), 50);
}

#[test]
fn test_read_index_isolated_leader_never_confirms_and_fails_reads_when_it_steps_down() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.settle();
    c.isolated.push(NodeId(1));
    c.node(1).read_index(1).unwrap();
    c.settle();
    assert!(c.reads.is_empty(), "a leader cut off confirms nothing");
    // Check-quorum deposes it; its read fails at once instead of hanging.
    let timeout = c.node(1).config().election_timeout_ticks;
    for _ in 0..timeout * 2 {
        c.node(1).tick();
        c.settle();
    }
    assert_ne!(c.node(1).role(), Role::Leader);
    assert_eq!(c.reads, vec![(NodeId(1), ReadState { id: 1, index: None })]);
}

#[test]
fn test_read_index_follower_gets_the_leaders_index() {
    let mut c = Cluster::new(3);
    c.elect(1);
    propose_n(&mut c, 1, 5);
    c.settle();
    let commit = c.node(1).commit_index();
    c.node(2).read_index(9).unwrap();
    c.settle();
    assert_eq!(
        c.reads,
        vec![(
            NodeId(2),
            ReadState {
                id: 9,
                index: Some(commit)
            }
        )]
    );
}

#[test]
fn test_read_index_without_a_known_leader_is_refused() {
    let mut c = Cluster::new(3);
    assert_eq!(c.node(2).read_index(1), Err(ReadError::NoLeader));
}

#[test]
fn test_read_index_new_leader_answers_no_lower_than_its_term_start() {
    let mut c = Cluster::new(3);
    c.elect(1);
    propose_n(&mut c, 1, 4);
    c.settle();
    let before = c.node(1).commit_index();
    // n2 takes over; until its Noop commits, its commit index may lag.
    c.node(1).transfer_leadership(NodeId(2)).unwrap();
    for _ in 0..1000 {
        if c.node(2).role() == Role::Leader {
            break;
        }
        c.flush();
        if let Some(m) = c.queue.pop() {
            let _ = c.node(m.to.0).step(m);
        }
    }
    assert_eq!(c.node(2).role(), Role::Leader);
    let term_start = c.node(2).log().last_index();
    c.node(2).read_index(3).unwrap();
    c.settle();
    let (_, state) = c.reads.last().copied().expect("answered");
    assert_eq!(state.index, Some(term_start), "answered at the Noop");
    assert!(term_start > before);
}

#[test]
fn test_read_index_single_voter_answers_at_once() {
    let mut c = Cluster::new(1);
    c.elect(1);
    c.settle();
    c.node(1).read_index(4).unwrap();
    c.settle();
    assert_eq!(c.reads.len(), 1);
    assert!(c.reads[0].1.index.is_some());
}

#[test]
fn test_read_index_refused_when_too_many_wait() {
    let mut c = Cluster::with(3, |c| c.max_pending_reads = 2);
    c.elect(1);
    c.settle();
    c.node(1).read_index(1).unwrap();
    c.node(1).read_index(2).unwrap();
    assert_eq!(c.node(1).read_index(3), Err(ReadError::Busy));
}

// ----- Membership changes ---------------------------------------------------------

fn members(voters: &[u64], learners: &[u64]) -> Membership {
    Membership::new(
        voters.iter().map(|&i| NodeId(i)).collect(),
        learners.iter().map(|&i| NodeId(i)).collect(),
    )
}

/// Adds node `id` (the next one) to the harness as a node that knows no members.
fn add_joining_node(c: &mut Cluster, id: u64) {
    assert_eq!(c.nodes.len() as u64 + 1, id);
    let mut config = Config::new(NodeId(id), vec![]);
    config.seed = 42;
    c.nodes
        .push(RawNode::new(config, MemLog::new(), HardState::default()));
}

#[test]
fn test_learner_gets_the_log_but_never_counts() {
    let mut c = Cluster::new(3);
    c.elect(1);
    add_joining_node(&mut c, 4);
    c.node(1)
        .propose_membership(&members(&[1, 2, 3], &[4]), b"ctx")
        .unwrap();
    c.settle();
    propose_n(&mut c, 1, 3);
    let leader_log = c.node(1).log().all().to_vec();
    assert_eq!(
        c.node(4).log().all(),
        &leader_log[..],
        "the learner holds the log"
    );
    assert_eq!(c.node(4).membership(), &members(&[1, 2, 3], &[4]));
    assert_eq!(
        c.node(4).membership_entry().context,
        Bytes::from_static(b"ctx")
    );
    // Leader + learner are not a quorum of the three voters.
    c.isolated = vec![NodeId(2), NodeId(3)];
    let commit = c.node(1).commit_index();
    c.node(1)
        .propose(EntryKind::Command, Bytes::from_static(b"x"))
        .unwrap();
    c.settle();
    assert_eq!(
        c.node(1).commit_index(),
        commit,
        "a learner's ack committed"
    );
    // A learner never campaigns.
    c.isolated = vec![NodeId(1), NodeId(2), NodeId(3)];
    for _ in 0..100 {
        c.node(4).tick();
    }
    assert_eq!(c.node(4).role(), Role::Follower);
}

#[test]
fn test_promote_learner_then_remove_a_voter() {
    let mut c = Cluster::with(3, |c| c.check_quorum = false);
    c.elect(1);
    add_joining_node(&mut c, 4);
    c.node(1)
        .propose_membership(&members(&[1, 2, 3], &[4]), b"")
        .unwrap();
    c.settle();
    c.node(1)
        .propose_membership(&members(&[1, 2, 3, 4], &[]), b"")
        .unwrap();
    c.settle();
    assert_eq!(c.node(1).membership_change_pending(), None);
    // Four voters: the quorum is three, so 1 and 4 alone do not commit.
    c.isolated = vec![NodeId(2), NodeId(3)];
    let commit = c.node(1).commit_index();
    c.node(1)
        .propose(EntryKind::Command, Bytes::from_static(b"x"))
        .unwrap();
    c.settle();
    assert_eq!(c.node(1).commit_index(), commit);
    c.isolated.clear();
    c.tick_all(30);
    assert!(c.node(1).commit_index() > commit);
    // Remove 3 (dead): 1, 2 and 4 go on.
    c.isolated = vec![NodeId(3)];
    c.node(1)
        .propose_membership(&members(&[1, 2, 4], &[]), b"")
        .unwrap();
    c.settle();
    assert_eq!(
        c.node(1).membership_change_pending(),
        None,
        "committed by 1, 2, 4"
    );
    assert!(c
        .node(1)
        .status()
        .progress
        .iter()
        .all(|p| p.id != NodeId(3)));
    // 4 can now lead.
    c.isolated = vec![NodeId(1), NodeId(3)];
    c.elect(4);
    assert_eq!(c.node(4).role(), Role::Leader);
}

#[test]
fn test_membership_change_rules_are_enforced() {
    // No leases: another node can be elected at once.
    let mut c = Cluster::with(3, |c| c.check_quorum = false);
    c.elect(1);
    let n1 = c.node(1);
    assert_eq!(
        n1.propose_membership(&members(&[2, 3], &[]), b""),
        Err(ProposeError::Membership(ChangeError::RemovesLeader))
    );
    assert_eq!(
        n1.propose_membership(&members(&[1, 2, 4, 5], &[]), b""),
        Err(ProposeError::Membership(ChangeError::TooManyVoterChanges(
            3
        )))
    );
    assert!(matches!(
        c.node(2).propose_membership(&members(&[1, 2], &[]), b""),
        Err(ProposeError::NotLeader { .. })
    ));
    // One change at a time: the first cannot commit while the others are cut off.
    c.isolated = vec![NodeId(2), NodeId(3)];
    let (index, _) = c
        .node(1)
        .propose_membership(&members(&[1, 2, 3], &[4]), b"")
        .unwrap();
    c.settle();
    assert_eq!(
        c.node(1)
            .propose_membership(&members(&[1, 2, 3], &[5]), b""),
        Err(ProposeError::Membership(ChangeError::InProgress(index)))
    );
    // A new leader must commit an entry of its term first: deliver only the
    // election's messages, so its Noop is not acknowledged yet.
    c.isolated = vec![NodeId(1)];
    for _ in 0..100 {
        c.node(2).tick();
        for _ in 0..10 {
            c.flush();
            let msgs = std::mem::take(&mut c.queue);
            for m in msgs {
                let election = matches!(
                    m.body,
                    MessageBody::Vote { .. } | MessageBody::VoteResponse { .. }
                );
                if election && m.to != NodeId(1) && m.from != NodeId(1) {
                    let _ = c.node(m.to.0).step(m);
                }
            }
        }
        if c.node(2).role() == Role::Leader {
            break;
        }
    }
    assert_eq!(c.node(2).role(), Role::Leader);
    assert_eq!(
        c.node(2).membership(),
        &members(&[1, 2, 3], &[]),
        "1's change was never sent"
    );
    let r = c
        .node(2)
        .propose_membership(&members(&[1, 2, 3], &[6]), b"");
    assert_eq!(
        r,
        Err(ProposeError::Membership(ChangeError::TermNotCommitted))
    );
    c.tick_all(30);
    assert!(c
        .node(2)
        .propose_membership(&members(&[1, 2, 3], &[6]), b"")
        .is_ok());
}

#[test]
fn test_truncated_change_reverts_the_membership() {
    let mut c = Cluster::with(5, |c| c.check_quorum = false);
    c.elect(1);
    // 1 appends a change that only 2 receives; 2's acknowledgement is lost.
    c.isolated = vec![NodeId(3), NodeId(4), NodeId(5)];
    c.node(1)
        .propose_membership(&members(&[1, 2, 3, 4, 5], &[6]), b"")
        .unwrap();
    c.flush();
    let to_2: Vec<Message> = std::mem::take(&mut c.queue)
        .into_iter()
        .filter(|m| m.to == NodeId(2))
        .collect();
    for m in to_2 {
        c.node(2).step(m).unwrap();
    }
    c.flush();
    c.queue.clear();
    assert_eq!(c.node(2).membership(), &members(&[1, 2, 3, 4, 5], &[6]));
    // 3 leads without it and overwrites it on 2.
    c.isolated = vec![NodeId(1), NodeId(2)];
    c.elect(3);
    propose_n(&mut c, 3, 2);
    c.isolated = vec![NodeId(1)];
    c.tick_all(3);
    assert_eq!(c.nodes[1].log().all(), c.nodes[2].log().all());
    assert_eq!(c.node(2).membership(), &members(&[1, 2, 3, 4, 5], &[]));
    let rd_membership = c.node(2).membership_entry().index;
    assert_eq!(
        rd_membership,
        LogIndex(0),
        "back to the bootstrap configuration"
    );
}

#[test]
fn test_restart_finds_the_membership_in_the_log() {
    let body = members(&[1, 2], &[3]).encode(b"addresses");
    let log = MemLog::from_entries(vec![
        entry(1, 1),
        Entry {
            index: LogIndex(2),
            term: Term(1),
            kind: EntryKind::Membership,
            body,
        },
        entry(3, 1),
    ]);
    let n = RawNode::new(config(1, 3), log, HardState::default());
    assert_eq!(n.membership(), &members(&[1, 2], &[3]));
    assert_eq!(n.membership_entry().index, LogIndex(2));
    assert_eq!(
        n.membership_at(LogIndex(1)).unwrap().membership,
        members(&[1, 2, 3], &[])
    );
}

// ----- Quiescence ------------------------------------------------------------------

fn quiescing_cluster() -> Cluster {
    let mut c = Cluster::with(3, |c| c.quiesce_after_ticks = 5);
    c.elect(1);
    c.tick_all(20);
    c
}

fn all_quiesced(c: &mut Cluster) -> bool {
    (1..=3).all(|id| c.node(id).is_quiesced())
}

#[test]
fn test_quiesce_an_idle_group_stops_heartbeats_and_election_timers() {
    let mut c = quiescing_cluster();
    assert!(
        all_quiesced(&mut c),
        "idle for 20 ticks: every node quiesced"
    );
    let term = c.node(1).term();
    // Far beyond any election timeout: nothing is sent, nobody campaigns.
    for _ in 0..100 {
        for id in 1..=3 {
            c.node(id).tick();
            assert!(
                !c.node(id).has_ready(),
                "n{id} produced output while quiesced"
            );
        }
    }
    assert_eq!(c.node(1).role(), Role::Leader);
    assert_eq!(c.node(2).term(), term);
}

#[test]
fn test_quiesce_a_proposal_wakes_the_group_and_it_quiesces_again() {
    let mut c = quiescing_cluster();
    let (index, _) = c
        .node(1)
        .propose(EntryKind::Command, Bytes::from_static(b"x"))
        .unwrap();
    assert!(!c.node(1).is_quiesced(), "a proposal wakes the leader");
    c.settle();
    for id in 1..=3 {
        assert!(!c.node(id).is_quiesced(), "n{id}: the append woke it");
        assert_eq!(c.node(id).log().last_index(), index);
    }
    c.tick_all(1);
    assert_eq!(c.node(2).commit_index(), index);
    c.tick_all(20);
    assert!(all_quiesced(&mut c), "idle again: quiesced again");
}

#[test]
fn test_quiesce_a_read_wakes_the_leader_and_is_confirmed() {
    let mut c = quiescing_cluster();
    c.node(1).read_index(7).unwrap();
    assert!(!c.node(1).is_quiesced());
    c.settle();
    assert!(
        c.reads
            .iter()
            .any(|(id, r)| *id == NodeId(1) && r.id == 7 && r.index.is_some()),
        "the read was confirmed by a heartbeat round: {:?}",
        c.reads
    );
}

#[test]
fn test_quiesce_followers_elect_a_new_leader_only_once_the_detector_reports_the_old_one() {
    let mut c = quiescing_cluster();
    let term = c.node(1).term();
    c.isolated.push(NodeId(1));
    for _ in 0..200 {
        c.node(2).tick();
        c.node(3).tick();
        c.settle();
    }
    assert_eq!(
        c.node(2).term(),
        term,
        "quiesced followers wait for the detector"
    );
    c.node(2).peer_unreachable(NodeId(1));
    c.node(3).peer_unreachable(NodeId(1));
    for _ in 0..100 {
        c.node(2).tick();
        c.node(3).tick();
        c.settle();
    }
    let leaders: Vec<u64> = (2..=3)
        .filter(|&id| c.node(id).role() == Role::Leader)
        .collect();
    assert_eq!(leaders.len(), 1, "a new leader among n2, n3");
    assert!(c.node(2).term() > term);
}

#[test]
fn test_quiesce_a_restarted_node_cannot_disrupt_a_quiesced_group() {
    let mut c = quiescing_cluster();
    let term = c.node(1).term();
    // n3 restarts with its log: no leader known, it campaigns (pre-vote).
    let log = c.node(3).log().clone();
    let hs = c.node(3).hard_state();
    c.nodes[2] = RawNode::new(
        {
            let mut cfg = config(3, 3);
            cfg.quiesce_after_ticks = 5;
            cfg
        },
        log,
        hs,
    );
    for _ in 0..60 {
        c.node(3).tick();
        c.settle();
    }
    c.tick_all(20);
    assert_eq!(
        c.node(1).role(),
        Role::Leader,
        "the leader woke and kept leading"
    );
    assert_eq!(c.node(1).term(), term);
    assert_eq!(c.node(3).leader(), Some(NodeId(1)), "n3 follows it again");
    assert!(all_quiesced(&mut c));
}

#[test]
fn test_quiesce_not_while_a_member_is_away_and_a_returning_member_wakes_the_leader() {
    let mut c = Cluster::with(3, |c| c.quiesce_after_ticks = 5);
    c.elect(1);
    c.tick_all(2);
    c.isolated.push(NodeId(3));
    c.node(1).peer_unreachable(NodeId(3));
    c.tick_all(40);
    assert!(
        !c.node(1).is_quiesced(),
        "n3 never answered: the leader keeps heartbeating"
    );
    c.isolated.clear();
    c.tick_all(20);
    assert!(all_quiesced(&mut c), "n3 back: all three quiesce");
    // A restarted learner-like member that never speaks first: the detector's
    // word wakes the leader, which heartbeats it.
    c.node(1).peer_reachable(NodeId(3));
    assert!(!c.node(1).is_quiesced());
    c.settle();
    c.tick_all(20);
    assert!(all_quiesced(&mut c));
}

#[test]
fn test_quiesce_off_by_default() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.tick_all(50);
    assert!(!c.node(1).is_quiesced() && !c.node(2).is_quiesced());
}
