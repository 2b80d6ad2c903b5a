//! Elections: timeouts, pre-vote, votes, check-quorum, leadership transfer.

use super::config::FaultVariant;
use super::error::{LogError, RaftError};
use super::log::RaftLog;
use super::message::MessageBody;
use super::progress::Progress;
use super::raw_node::RawNode;
use super::types::{Entry, EntryKind, LogIndex, NodeId, Role, Term};

impl<L: RaftLog> RawNode<L> {
    /// Followers and candidates: campaign when the randomized timeout expires.
    pub(super) fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.election_elapsed < self.randomized_election_timeout {
            return;
        }
        self.reset_election_timer();
        if self.can_campaign() {
            self.campaign(false);
        }
    }

    /// Leaders: heartbeats, check-quorum, transfer timeout.
    pub(super) fn tick_leader(&mut self) {
        self.idle_ticks = self.idle_ticks.saturating_add(1);
        self.election_elapsed += 1;
        self.heartbeat_elapsed += 1;
        if self.transferee.is_some() {
            self.transfer_elapsed += 1;
            if self.transfer_elapsed >= self.config.election_timeout_ticks {
                // The target did not take over in time: abandon the transfer.
                self.transferee = None;
            }
        }
        if self.election_elapsed >= self.config.election_timeout_ticks {
            self.election_elapsed = 0;
            if self.config.check_quorum {
                let me = self.config.id;
                let membership = self.membership();
                let active = membership
                    .voters
                    .iter()
                    .filter(|&&v| v == me || self.progress.get(&v).is_some_and(|p| p.recent_active))
                    .count();
                if active < membership.quorum() {
                    self.become_follower(self.term, None);
                    return;
                }
                for pr in self.progress.values_mut() {
                    pr.recent_active = false;
                }
            }
        }
        if self.heartbeat_elapsed >= self.config.heartbeat_interval_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    /// Only a voter campaigns, and not one whose log lost acknowledged entries.
    /// A voter of the committed membership still campaigns while an uncommitted
    /// change in its log drops it: its log may be the only up-to-date one, and
    /// the group would otherwise wait for it forever (it then leads without
    /// counting itself, and steps down once the change commits).
    pub(super) fn can_campaign(&self) -> bool {
        self.log_intact() && self.is_voter_now_or_committed(self.config.id)
    }

    /// A voter of the membership in effect or of the last committed one.
    pub(super) fn is_voter_now_or_committed(&self, id: NodeId) -> bool {
        self.membership().is_voter(id)
            || self
                .membership_at(self.commit)
                .is_some_and(|m| m.membership.is_voter(id))
    }

    /// A member (voter or learner) of the membership in effect or of the last
    /// committed one.
    pub(super) fn is_member_now_or_committed(&self) -> bool {
        let me = self.config.id;
        self.membership().contains(me)
            || self
                .membership_at(self.commit)
                .is_some_and(|m| m.membership.contains(me))
    }

    /// A node whose log lost acknowledged entries must neither lead nor vote.
    pub(super) fn log_intact(&self) -> bool {
        !self.recovering || self.config.fault_is(FaultVariant::DamagedNodeVotes)
    }

    /// Starts an election: a pre-vote round first unless `transfer` (or pre-vote is
    /// off).
    pub(super) fn campaign(&mut self, transfer: bool) {
        if self.config.pre_vote && !transfer {
            self.become_pre_candidate();
        } else {
            self.become_candidate(transfer);
        }
    }

    pub(super) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if self.role == Role::Leader {
            self.fail_pending_reads();
        }
        self.set_term(term);
        self.role = Role::Follower;
        self.leader = leader;
        self.reset_quiescence();
        self.votes.clear();
        self.progress.clear();
        self.transferee = None;
        self.self_match = LogIndex::ZERO;
        self.reset_election_timer();
    }

    fn become_pre_candidate(&mut self) {
        assert!(self.role != Role::Leader);
        self.reset_quiescence();
        self.role = Role::PreCandidate;
        self.leader = None;
        self.votes.clear();
        self.votes.push((self.config.id, true));
        if self.votes_granted() >= self.membership().quorum() {
            self.become_candidate(false);
            return;
        }
        let (last_log_index, last_log_term) = self.last_entry_id();
        let next_term = Term(self.term.0 + 1);
        let peers: Vec<NodeId> = self.peers().collect();
        for to in peers {
            self.msgs.push(super::message::Message {
                from: self.config.id,
                to,
                term: next_term,
                body: MessageBody::Vote {
                    pre_vote: true,
                    last_log_index,
                    last_log_term,
                    transfer: false,
                },
            });
        }
    }

    pub(super) fn become_candidate(&mut self, transfer: bool) {
        assert!(self.role != Role::Leader);
        self.reset_quiescence();
        self.set_term(Term(self.term.0 + 1));
        self.vote = Some(self.config.id);
        self.role = Role::Candidate;
        self.leader = None;
        self.reset_election_timer();
        self.votes.clear();
        self.votes.push((self.config.id, true));
        if self.votes_granted() >= self.membership().quorum() {
            // A single voter: a write failure leaves it a follower; it retries on
            // its next election timeout.
            let _ = self.become_leader();
            return;
        }
        let (last_log_index, last_log_term) = self.last_entry_id();
        let peers: Vec<NodeId> = self.peers().collect();
        for to in peers {
            // Depends on the new term and the self-vote: only after they are durable.
            self.send_persisted(
                to,
                MessageBody::Vote {
                    pre_vote: false,
                    last_log_index,
                    last_log_term,
                    transfer,
                },
            );
        }
    }

    /// Takes leadership and appends the Noop; a failed write steps down again.
    pub(super) fn become_leader(&mut self) -> Result<(), LogError> {
        assert_eq!(self.role, Role::Candidate);
        assert_eq!(self.vote, Some(self.config.id));
        self.role = Role::Leader;
        self.leader = Some(self.config.id);
        self.reset_quiescence();
        self.votes.clear();
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.self_match = LogIndex::ZERO;
        let next = self.log.last_index().next();
        let inflight_max = self.config.max_inflight_appends;
        let me = self.config.id;
        let members: Vec<NodeId> = self.membership().members().filter(|&id| id != me).collect();
        for id in members {
            let mut pr = Progress::new(next, inflight_max);
            pr.recent_active = true;
            self.progress.insert(id, pr);
        }
        // A Noop of the new term commits every earlier entry once it is replicated.
        let noop = Entry {
            index: next,
            term: self.term,
            kind: EntryKind::Noop,
            body: bytes::Bytes::new(),
        };
        self.term_start = next;
        match self.log.append(std::slice::from_ref(&noop)) {
            Ok(()) => {
                self.log_dirty = true;
                Ok(())
            }
            Err(e) => {
                // A leader that cannot append is useless: step down cleanly.
                self.become_follower(self.term, None);
                Err(e)
            }
        }
    }

    pub(super) fn last_entry_id(&self) -> (LogIndex, Term) {
        let last = self.log.last_index();
        (
            last,
            self.log.term_at(last).expect("term of the last entry"),
        )
    }

    /// Votes granted by voters of the membership in effect (a candidate that the
    /// membership no longer lists does not count its own).
    fn votes_granted(&self) -> usize {
        self.votes_counted(true)
    }

    /// Votes refused by voters of the membership in effect.
    fn votes_refused(&self) -> usize {
        self.votes_counted(false)
    }

    fn votes_counted(&self, granted: bool) -> usize {
        let membership = self.membership();
        self.votes
            .iter()
            .filter(|(id, g)| *g == granted && membership.is_voter(*id))
            .count()
    }

    pub(super) fn handle_vote(
        &mut self,
        from: NodeId,
        msg_term: Term,
        pre_vote: bool,
        last_log_index: LogIndex,
        last_log_term: Term,
    ) {
        let can_vote = self.vote == Some(from)
            || (self.vote.is_none() && self.leader.is_none())
            || (pre_vote && msg_term > self.term);
        let (my_last_index, my_last_term) = self.last_entry_id();
        let up_to_date = (last_log_term, last_log_index) >= (my_last_term, my_last_index)
            || self.config.fault_is(FaultVariant::VoteForStaleCandidate);
        let intact = self.log_intact();
        // A node that is not a member (a new node joining, or one whose data was
        // wiped and that joins again under its old id) never votes: its empty log
        // would grant any candidate, even one acting on a membership so old that
        // it still counts this node's earlier self.
        let granted = can_vote && up_to_date && intact && self.is_member_now_or_committed();
        if !granted {
            self.send(
                from,
                MessageBody::VoteResponse {
                    pre_vote,
                    granted: false,
                },
            );
            return;
        }
        if pre_vote {
            // No state changes: answer in the candidate's future term.
            self.msgs.push(super::message::Message {
                from: self.config.id,
                to: from,
                term: msg_term,
                body: MessageBody::VoteResponse {
                    pre_vote: true,
                    granted: true,
                },
            });
        } else {
            assert_eq!(msg_term, self.term);
            self.vote = Some(from);
            self.reset_election_timer();
            // The vote must be durable before the candidate hears of it.
            self.send_persisted(
                from,
                MessageBody::VoteResponse {
                    pre_vote: false,
                    granted: true,
                },
            );
        }
    }

    pub(super) fn handle_vote_response(
        &mut self,
        from: NodeId,
        msg_term: Term,
        pre_vote: bool,
        granted: bool,
    ) -> Result<(), RaftError> {
        let expected = if pre_vote {
            Role::PreCandidate
        } else {
            Role::Candidate
        };
        if self.role == Role::Leader {
            if let Some(pr) = self.progress.get_mut(&from) {
                pr.recent_active = true;
            }
        }
        if self.role != expected {
            return Ok(());
        }
        if pre_vote && granted && msg_term != Term(self.term.0 + 1) {
            return Ok(()); // From another round.
        }
        // Only the voters of this node's membership count (a learner may answer).
        if self.membership().is_voter(from) && !self.votes.iter().any(|(id, _)| *id == from) {
            self.votes.push((from, granted));
        }
        let quorum = self.membership().quorum();
        if self.votes_granted() >= quorum {
            if pre_vote {
                self.become_candidate(false);
            } else {
                self.become_leader()?;
            }
        } else if self.votes_refused() >= quorum {
            self.become_follower(self.term, None);
        }
        Ok(())
    }

    pub(super) fn handle_timeout_now(&mut self, _from: NodeId) -> Result<(), RaftError> {
        if self.role != Role::Leader && self.can_campaign() {
            self.campaign(true);
        }
        Ok(())
    }

    /// Sends `TimeoutNow` to the transfer target once its log matches the leader's.
    pub(super) fn maybe_send_timeout_now(&mut self) {
        let Some(to) = self.transferee else { return };
        let last = self.log.last_index();
        if self
            .progress
            .get(&to)
            .is_some_and(|pr| pr.match_index == last)
        {
            self.send(to, MessageBody::TimeoutNow);
        }
    }
}
