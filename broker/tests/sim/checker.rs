//! The invariants checked after every step, the liveness condition and the final
//! check of client proposals.

use std::collections::BTreeSet;

use raftmq_broker::raft::{EntryKind, LogIndex, RaftLog, RawNode, Role};

use super::disk::SimLog;
use super::{body_id, entry_hash, Check, Slot, World};

impl Slot {
    /// A durable snapshot of this node covers `index`.
    fn snapshot_covers(&self, index: LogIndex) -> bool {
        self.snapshots
            .last_key_value()
            .is_some_and(|(&k, _)| k >= index)
    }
}

impl World {
    /// Safety invariants, after every step.
    pub(super) fn check(&mut self) -> Check {
        let durable_checked = self.committed.len();
        for i in 0..self.slots.len() {
            let Some(node) = self.slots[i].raft.as_mut() else {
                continue;
            };
            let id = node.id();
            // Log matching: (index, term) names one entry with one predecessor term.
            for (e, prev_term) in node.log_mut().appended.drain(..) {
                let key = (e.index.0, e.term.0);
                let value = (entry_hash(&e), prev_term);
                match self.registry.get(&key) {
                    Some(v) if *v != value => {
                        return Err(format!(
                            "log matching: {id} has entry ({}, {}) differing from another node's",
                            e.index, e.term
                        ))
                    }
                    Some(_) => {}
                    None => {
                        self.registry.insert(key, value);
                    }
                }
            }
            // Every membership a node acts on is one its log (or its snapshot, or
            // its start-up configuration) holds.
            let entry = node.membership_entry();
            if entry.index >= node.log().first_index() {
                let held = node.log().entry(entry.index).is_some_and(|e| {
                    e.kind == EntryKind::Membership
                        && raftmq_broker::raft::Membership::decode(&e.body)
                            .is_ok_and(|(m, _)| m == entry.membership)
                });
                if !held {
                    return Err(format!(
                        "{id} acts on membership {} of index {} that its log does not hold",
                        entry.membership, entry.index
                    ));
                }
            }
            // Election safety.
            if node.role() == Role::Leader {
                let term = node.term();
                if let Some(other) = self.leaders.insert(term, id) {
                    if other != id {
                        return Err(format!("two leaders in term {term}: {other} and {id}"));
                    }
                } else {
                    self.stats.elections += 1;
                }
                // Leader completeness, once per leader and term.
                let slot = &mut self.slots[i];
                if slot.leader_term_checked != term {
                    slot.leader_term_checked = term;
                    let node = slot.raft.as_ref().unwrap();
                    // Raft §5.4: an entry committed in term t is in the log of every
                    // leader of a term above t.
                    let newest = self.committed.iter().rposition(|c| c.2 < term);
                    if let Some(pos) = newest {
                        let (t, h, _) = self.committed[pos];
                        let idx = LogIndex(pos as u64 + 1);
                        // Below the log start, the snapshot (checked against every
                        // node's applied state) holds it.
                        let has = idx < node.log().first_index()
                            || node
                                .log()
                                .entry(idx)
                                .is_some_and(|e| e.term == t && entry_hash(e) == h);
                        if !has {
                            return Err(format!(
                                "leader completeness: {id} leads term {term} without committed entry {}",
                                pos + 1
                            ));
                        }
                    }
                }
            }
            // Commit never decreases; committed entries never change.
            let slot = &mut self.slots[i];
            let node = slot.raft.as_ref().unwrap();
            let commit = node.commit_index();
            if commit < slot.commit_seen {
                return Err(format!(
                    "{id}: commit went back from {} to {commit}",
                    slot.commit_seen
                ));
            }
            slot.commit_seen = commit;
            while slot.commit_checked < commit {
                let idx = slot.commit_checked.next();
                let pos = idx.0 as usize - 1;
                let Some(e) = node.log().entry(idx) else {
                    // Compacted: covered by a snapshot of committed state.
                    if pos >= self.committed.len() {
                        return Err(format!(
                            "{id} commits {idx} through a snapshot beyond anything committed"
                        ));
                    }
                    slot.commit_checked = idx;
                    continue;
                };
                let value = (e.term, entry_hash(e));
                if pos < self.committed.len() {
                    if (self.committed[pos].0, self.committed[pos].1) != value {
                        return Err(format!(
                            "committed entry {idx} changed: {id} commits term {} where term {} was committed",
                            e.term, self.committed[pos].0
                        ));
                    }
                } else {
                    assert_eq!(pos, self.committed.len());
                    self.committed.push((value.0, value.1, node.term()));
                    self.committed_voters.push(node.membership().voters.clone());
                    let cmd = (e.kind == EntryKind::Command)
                        .then(|| body_id(&e.body))
                        .flatten();
                    self.committed_cmd.push(cmd);
                }
                slot.commit_checked = idx;
            }
        }
        // A newly committed entry is durable on a quorum (a damaged node, which
        // cannot vote until repaired, counts as holding what it acknowledged).
        if self.committed.len() > durable_checked {
            let c = self.committed.len();
            let t = self.committed[c - 1].0;
            let idx = LogIndex(c as u64);
            let voters = &self.committed_voters[c - 1];
            let holders = voters
                .iter()
                .map(|id| &self.slots[id.0 as usize - 1])
                .filter(|s| {
                    s.damaged
                        || s.snapshot_covers(idx)
                        || match &s.raft {
                            Some(node) => node.log().durable_term_at(idx) == Some(t),
                            None => s.stopped_log.term_at(idx) == Some(t),
                        }
                })
                .count();
            let quorum = voters.len() / 2 + 1;
            if holders < quorum {
                return Err(format!(
                    "entry {c} (term {t}) committed while durable on only {holders} of its \
                     {} voters",
                    voters.len()
                ));
            }
        }
        // A committed entry stays in some log (live, or durable on a stopped node).
        if let Some(&(t, _, _)) = self.committed.last() {
            let c = self.committed.len();
            let idx = LogIndex(c as u64);
            let held = self.slots.iter().any(|s| {
                s.snapshot_covers(idx)
                    || match &s.raft {
                        Some(node) => node.log().term_at(idx) == Some(t),
                        None => s.stopped_log.term_at(idx) == Some(t),
                    }
            });
            if !held {
                return Err(format!(
                    "committed entry {c} (term {t}) vanished from every log"
                ));
            }
        }
        self.check_no_electable_node_lacks_commit()
    }

    /// Leader completeness as a state invariant: no node lacking the newest committed
    /// entry may be at least as up to date as a quorum of (undamaged) voters, judged
    /// on the voters' synced logs (what they would hold after a crash).
    fn check_no_electable_node_lacks_commit(&self) -> Check {
        let Some(&(t, _, _)) = self.committed.last() else {
            return Ok(());
        };
        let c = LogIndex(self.committed.len() as u64);
        // Judged in the membership of the node that leads (or, with none, the
        // bootstrap voters): a node whose own view is older is refused by the
        // members of the newer one (see `deliver_due`).
        let leader_membership = self
            .slots
            .iter()
            .filter_map(|s| s.raft.as_ref())
            .find(|n| n.role() == Role::Leader)
            .map(|n| n.membership().clone());
        // As the core decides: only a member (of its membership in effect or its
        // committed one) votes; a node wiped and started again knows none until added.
        let may_vote = |y: usize, s: &super::Slot| {
            let id = raftmq_broker::raft::NodeId(y as u64 + 1);
            match &s.raft {
                Some(node) => {
                    node.membership().contains(id)
                        || node
                            .membership_at(node.commit_index())
                            .is_some_and(|m| m.membership.contains(id))
                }
                None => !s.joined || s.member_ever,
            }
        };
        let voter_last = |s: &super::Slot| match &s.raft {
            Some(node) => node.log().durable_last(),
            None => s.stopped_log.last(),
        };
        for (x, sx) in self.slots.iter().enumerate() {
            if sx.damaged || sx.retired {
                continue;
            }
            let x_id = raftmq_broker::raft::NodeId(x as u64 + 1);
            let membership = match (&sx.raft, &leader_membership) {
                (Some(node), Some(m)) if node.membership() == m => m.clone(),
                (_, Some(_)) => continue,
                (Some(node), None) => node.membership().clone(),
                (None, None) => continue,
            };
            if !membership.is_voter(x_id) {
                continue;
            }
            let quorum = membership.quorum();
            let (has, x_last) = match &sx.raft {
                Some(node) => {
                    let last = node.log().last_index();
                    (
                        node.log().term_at(c) == Some(t) || c < node.log().first_index(),
                        (node.log().term_at(last).unwrap(), last),
                    )
                }
                None => (
                    sx.stopped_log.term_at(c) == Some(t) || c <= sx.stopped_log.snap.0,
                    voter_last(sx),
                ),
            };
            if has {
                continue;
            }
            let grants = membership
                .voters
                .iter()
                .map(|id| (id.0 as usize - 1, &self.slots[id.0 as usize - 1]))
                .filter(|(y, sy)| {
                    *y == x
                        || (!sy.damaged
                            && !sy.retired
                            && may_vote(*y, sy)
                            && x_last >= voter_last(sy))
                })
                .count();
            if grants >= quorum {
                return Err(format!(
                    "n{} lacks committed entry {c} (term {t}) yet {grants} nodes would elect it",
                    x + 1
                ));
            }
        }
        Ok(())
    }

    pub(super) fn converged(&self) -> bool {
        let leaders: Vec<&RawNode<SimLog>> = self
            .slots
            .iter()
            .filter_map(|s| s.raft.as_ref())
            .filter(|n| n.role() == Role::Leader)
            .collect();
        let [leader] = leaders[..] else { return false };
        // Every member of the leader's membership, and no one else, must converge.
        let membership = leader.membership();
        let nodes: Vec<&RawNode<SimLog>> = membership
            .members()
            .filter_map(|id| self.slots[id.0 as usize - 1].raft.as_ref())
            .collect();
        if nodes.len() != membership.members().count() {
            return false;
        }
        let last = leader.log().last_index();
        let term = leader.term();
        leader.commit_index() == last
            && leader.membership_change_pending().is_none()
            && nodes.iter().all(|n| {
                n.term() == term
                    && n.leader() == Some(leader.id())
                    && n.commit_index() == last
                    && n.log().last_index() == last
                    && n.log().term_at(last) == leader.log().term_at(last)
            })
    }

    /// Every proposal reported committed is in the final log exactly once.
    pub(super) fn final_check(&mut self) -> Check {
        self.check()?;
        let node = self
            .slots
            .iter()
            .filter_map(|s| s.raft.as_ref())
            .find(|n| n.role() == Role::Leader)
            .expect("converged with a leader");
        let commit = node.commit_index().0 as usize;
        let mut seen = BTreeSet::new();
        for id in self.committed_cmd[..commit].iter().flatten() {
            if !seen.insert(*id) {
                return Err(format!("proposal {id} committed twice"));
            }
        }
        if let Some(missing) = self.committed_ids.iter().find(|id| !seen.contains(id)) {
            return Err(format!(
                "proposal {missing} was reported committed but is not in the final log"
            ));
        }
        self.stats.committed = seen.len() as u64;
        Ok(())
    }
}
