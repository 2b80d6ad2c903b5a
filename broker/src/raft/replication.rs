//! Log replication: the leader's appends and heartbeats, the follower's checks, the
//! leader's commit rule.

use super::config::FaultVariant;
use super::error::RaftError;
use super::log::RaftLog;
use super::membership::MembershipEntry;
use super::message::MessageBody;
use super::progress::ProgressState;
use super::raw_node::RawNode;
use super::types::{Entry, LogIndex, NodeId, Role, Term};

/// Longest backwards scan for fast backtracking; a bounded hint is still correct,
/// it only takes more rounds.
const CONFLICT_SCAN_MAX: u64 = 4096;

impl<L: RaftLog> RawNode<L> {
    // ----- Leader side --------------------------------------------------------------

    /// Builds appends for every follower that can take some (called by `ready()`).
    pub(super) fn send_appends(&mut self) {
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for to in peers {
            self.send_appends_to(to);
        }
    }

    pub(super) fn any_append_pending(&self) -> bool {
        self.progress.keys().any(|&to| self.append_pending(to))
    }

    fn append_pending(&self, to: NodeId) -> bool {
        let pr = &self.progress[&to];
        if pr.is_paused() {
            return false;
        }
        match pr.state {
            ProgressState::Probe => true,
            ProgressState::Replicate => {
                pr.next_index <= self.log.last_index() || pr.commit_sent < self.commit
            }
            ProgressState::Snapshot => false,
        }
    }

    fn send_appends_to(&mut self, to: NodeId) {
        while self.append_pending(to) {
            let pr = &self.progress[&to];
            let next = pr.next_index;
            let state = pr.state;
            if next < self.log.first_index() {
                self.send_snapshot(to);
                return;
            }
            let prev = next.prev();
            let prev_term = self
                .log
                .term_at(prev)
                .expect("the log holds the term just before its first entry");
            let entries = if next <= self.log.last_index() {
                match self.log.entries(
                    next,
                    self.config.max_append_entries,
                    self.config.max_append_bytes,
                ) {
                    Ok(entries) => entries,
                    // A read failure: retry on the next ready or heartbeat.
                    Err(_) => return,
                }
            } else {
                Vec::new()
            };
            let last_sent = LogIndex(prev.0 + entries.len() as u64);
            let empty = entries.is_empty();
            let commit_index = self.commit;
            self.send(
                to,
                MessageBody::Append {
                    prev_log_index: prev,
                    prev_log_term: prev_term,
                    entries,
                    commit_index,
                },
            );
            let pr = self.progress.get_mut(&to).expect("peer progress");
            pr.commit_sent = commit_index;
            if state == ProgressState::Probe {
                pr.probe_sent = true;
                return;
            }
            if empty {
                return;
            }
            pr.on_sent(last_sent);
        }
    }

    /// The follower needs entries below the log start: send the snapshot the log
    /// starts after (the driver attaches its contents).
    fn send_snapshot(&mut self, to: NodeId) {
        let index = self.log.first_index().prev();
        let snapshot_term = self
            .log
            .term_at(index)
            .expect("the log holds the snapshot term");
        let membership = self
            .memberships
            .at(index)
            .expect("the membership history covers the log's snapshot point")
            .clone();
        self.send(
            to,
            MessageBody::InstallSnapshot {
                index,
                snapshot_term,
                membership,
            },
        );
        let pr = self.progress.get_mut(&to).expect("peer progress");
        pr.become_snapshot(index);
    }

    pub(super) fn broadcast_heartbeat(&mut self) {
        // An idle group's leader asks its followers to quiesce (see `quiesce.rs`).
        let quiesce = self.may_quiesce();
        // Every heartbeat is a read round: reads registered before it wait for it.
        self.read_round += 1;
        self.read_round_wanted = false;
        let round = self.read_round;
        if quiesce && self.quiesce_round.is_none() {
            self.quiesce_round = Some(round);
        }
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        let interval = self.config.heartbeat_interval_ticks;
        let timeout = self.config.election_timeout_ticks;
        for to in peers {
            let pr = self.progress.get_mut(&to).expect("peer progress");
            // Retransmission: a Replicate stream that made no progress for an
            // election timeout lost a message; probe again from the match point.
            // A snapshot transfer that was not acknowledged within an election
            // timeout is retried the same way (the probe finds the log start again).
            let waiting = match pr.state {
                ProgressState::Replicate => pr.inflight_len() > 0,
                ProgressState::Snapshot => true,
                ProgressState::Probe => false,
            };
            if waiting {
                pr.stalled_ticks += interval;
                if pr.stalled_ticks >= timeout {
                    let next = pr.match_index.next();
                    pr.become_probe(next);
                }
            }
            let commit_index = self.commit.min(pr.match_index);
            // Only a follower holding the whole log is asked to quiesce.
            let quiesce = quiesce
                && (pr.match_index == self.self_match
                    || self
                        .config
                        .fault_is(FaultVariant::QuiesceWithLaggingFollower));
            self.send(
                to,
                MessageBody::Heartbeat {
                    commit_index,
                    read_round: round,
                    quiesce,
                },
            );
        }
    }

    pub(super) fn handle_append_response(
        &mut self,
        from: NodeId,
        success: bool,
        match_index: LogIndex,
        reject_index: LogIndex,
        conflict: Option<(Term, LogIndex)>,
        last_log_index: LogIndex,
    ) {
        if self.role != Role::Leader {
            return;
        }
        if from == self.config.id {
            // The leader's own log is durable up to `match_index`.
            assert!(success && match_index <= self.log.last_index());
            if match_index > self.self_match {
                self.self_match = match_index;
                self.maybe_commit();
            }
            return;
        }
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        if success {
            assert!(
                match_index <= self.log.last_index(),
                "{from} acked {match_index} beyond the leader's log"
            );
            let advanced = pr.on_ack(match_index);
            let caught_up = match pr.state {
                ProgressState::Probe => true,
                ProgressState::Snapshot => pr.match_index >= pr.pending_snapshot,
                ProgressState::Replicate => false,
            };
            if caught_up {
                pr.become_replicate();
            }
            if advanced {
                self.maybe_commit();
                self.maybe_send_timeout_now();
            }
            return;
        }
        if last_log_index < pr.match_index {
            // The follower lost entries it had acknowledged (a damaged log). Its
            // acknowledgement was counted already; start over from what it has.
            pr.on_regression(last_log_index);
            return;
        }
        let stale = match pr.state {
            ProgressState::Replicate => reject_index <= pr.match_index,
            ProgressState::Probe => reject_index.next() != pr.next_index,
            // An answer to an append sent before the snapshot.
            ProgressState::Snapshot => true,
        };
        if stale {
            return;
        }
        let hint = match conflict {
            None => last_log_index.next(),
            Some((term, first)) => match self.last_index_of_term(term, reject_index) {
                Some(i) => i.next(),
                None => first,
            },
        };
        let pr = self.progress.get_mut(&from).expect("peer progress");
        let next = hint.min(reject_index).max(pr.match_index.next());
        pr.become_probe(next);
    }

    /// The last index at or below `at` holding `term` in the leader's log, if any
    /// (bounded scan).
    fn last_index_of_term(&self, term: Term, at: LogIndex) -> Option<LogIndex> {
        let mut i = at.min(self.log.last_index());
        let stop = LogIndex(i.0.saturating_sub(CONFLICT_SCAN_MAX));
        while i > stop {
            match self.log.term_at(i) {
                Some(t) if t == term => return Some(i),
                Some(t) if t < term => return None,
                Some(_) => i = i.prev(),
                None => return None,
            }
        }
        None
    }

    pub(super) fn handle_heartbeat_response(
        &mut self,
        from: NodeId,
        read_round: u64,
        quiesced: bool,
    ) {
        if self.role != Role::Leader {
            return;
        }
        if let Some(pr) = self.progress.get_mut(&from) {
            pr.recent_active = true;
            // Let a probe that may have been lost go again.
            pr.probe_sent = false;
        }
        self.read_round_acked(from, read_round);
        if quiesced {
            self.follower_quiesced(from, read_round);
        }
    }

    /// Commits the highest index a quorum holds durably, if it is of the current term
    /// (Raft §5.4.2: older entries are committed only indirectly).
    pub(super) fn maybe_commit(&mut self) {
        let quorum_index = LogIndex(self.quorum_value(self.self_match.0, |pr| pr.match_index.0));
        if quorum_index <= self.commit {
            return;
        }
        let current_term = self.log.term_at(quorum_index) == Some(self.term);
        if current_term || self.config.fault_is(FaultVariant::CommitOldTermByCount) {
            self.set_commit(quorum_index);
            let me = self.config.id;
            if !self.membership().is_voter(me) && self.membership_change_pending().is_none() {
                // The change that dropped this leader committed: the others elect one.
                self.become_follower(self.term, None);
            }
        }
    }

    // ----- Follower side ------------------------------------------------------------

    fn follow(&mut self, leader: NodeId) {
        if self.role != Role::Follower {
            assert!(
                self.role != Role::Leader,
                "two leaders in term {}",
                self.term
            );
            self.become_follower(self.term, Some(leader));
        }
        self.leader = Some(leader);
        self.election_elapsed = 0;
    }

    pub(super) fn handle_heartbeat(
        &mut self,
        from: NodeId,
        commit_index: LogIndex,
        read_round: u64,
        quiesce: bool,
    ) {
        self.follow(from);
        // The leader sends min(commit, our durable match), so our log matches it up to
        // there (a damaged log may be shorter: cap at our end).
        let last = self.log.last_index();
        let commit = commit_index.min(last);
        if commit > self.commit {
            self.set_commit(commit);
        }
        if commit_index > last {
            // The leader believes we hold entries we lost (a damaged log): say so,
            // or an idle leader would never send them again.
            self.send(
                from,
                MessageBody::AppendResponse {
                    success: false,
                    match_index: LogIndex::ZERO,
                    reject_index: commit_index,
                    conflict: None,
                    last_log_index: last,
                },
            );
        } else if quiesce && self.config.quiesce_after_ticks > 0 {
            self.quiesced = true;
        }
        self.send(
            from,
            MessageBody::HeartbeatResponse {
                read_round,
                quiesced: self.quiesced,
            },
        );
    }

    pub(super) fn handle_append(
        &mut self,
        from: NodeId,
        prev_log_index: LogIndex,
        prev_log_term: Term,
        entries: &[Entry],
        leader_commit: LogIndex,
    ) -> Result<(), RaftError> {
        self.follow(from);
        let snapshot_index = self.log.first_index().prev();
        if prev_log_index < snapshot_index {
            // Entries our snapshot covers (committed, so equal to the leader's): skip
            // them and go on from the snapshot point.
            let skip = (snapshot_index.0 - prev_log_index.0) as usize;
            if skip >= entries.len() {
                let match_index = LogIndex(prev_log_index.0 + entries.len() as u64);
                self.ack_when_persisted(from, match_index);
                return Ok(());
            }
            let snapshot_term = self.log.term_at(snapshot_index);
            assert_eq!(
                snapshot_term,
                Some(entries[skip - 1].term),
                "the leader's entry {snapshot_index} differs from this node's snapshot"
            );
            return self.handle_append(
                from,
                snapshot_index,
                entries[skip - 1].term,
                &entries[skip..],
                leader_commit,
            );
        }
        let last = self.log.last_index();
        if prev_log_index > last {
            self.reject_append(from, prev_log_index, None);
            return Ok(());
        }
        let local_term = self.log.term_at(prev_log_index);
        if local_term != Some(prev_log_term) {
            assert!(
                prev_log_index > self.commit,
                "committed entry {prev_log_index} conflicts with the leader"
            );
            let conflict = local_term.map(|t| (t, self.first_index_of_term(t, prev_log_index)));
            self.reject_append(from, prev_log_index, conflict);
            return Ok(());
        }
        // Skip what we already have; truncate at the first conflict.
        let mut start = entries.len();
        for (k, e) in entries.iter().enumerate() {
            assert_eq!(e.index, LogIndex(prev_log_index.0 + 1 + k as u64));
            if e.index > last {
                start = k;
                break;
            }
            if self.log.term_at(e.index) != Some(e.term) {
                assert!(
                    e.index > self.commit,
                    "truncating committed entry {} (commit {})",
                    e.index,
                    self.commit
                );
                if e.index <= self.acked_durable {
                    // Entries we acknowledged are overwritten: lower the recovery mark
                    // durably first (the next Ready carries it; `persisted` confirms
                    // it), so a crash amid the truncation cannot look like a damaged
                    // log. Until then, drop the append; the leader probes again.
                    self.void_acks_from(e.index);
                    self.log_dirty = true;
                    return Ok(());
                }
                if let Err(err) = self.log.truncate_suffix(e.index) {
                    self.reject_append(from, prev_log_index, None);
                    return Err(err.into());
                }
                self.on_truncated(e.index);
                if self.memberships.truncate(e.index) {
                    self.membership_changed();
                }
                start = k;
                break;
            }
        }
        if start < entries.len() {
            if let Err(err) = self.log.append(&entries[start..]) {
                self.reject_append(from, prev_log_index, None);
                return Err(err.into());
            }
            self.log_dirty = true;
            self.record_memberships(&entries[start..]);
        }
        let match_index = LogIndex(prev_log_index.0 + entries.len() as u64);
        let commit = leader_commit.min(match_index);
        if commit > self.commit {
            self.set_commit(commit);
        }
        // The acknowledgement leaves only once the log is durable up to match_index,
        // and the recovery mark is in the same Ready's hard state.
        self.acknowledge_match(from, match_index);
        Ok(())
    }

    /// Whether stepping `InstallSnapshot { index, snapshot_term }` from the leader
    /// of `term` would reset the log to the snapshot. The driver asks first and makes
    /// the snapshot durable only then, so a snapshot the core refuses never lands on
    /// disk (where the start-up reconciliation would otherwise adopt it).
    pub fn accepts_snapshot(&self, term: Term, index: LogIndex, snapshot_term: Term) -> bool {
        term >= self.term
            && !(self.role == Role::Leader && term == self.term)
            && index > self.commit
            && self.log.term_at(index) != Some(snapshot_term)
            && !self.install_would_drop_acked(index)
    }

    /// Installing a snapshot at `index` discards our entries after it: if some of
    /// them are under the durable recovery mark, the mark must come down first.
    fn install_would_drop_acked(&self, index: LogIndex) -> bool {
        // Every mark that is or may yet become durable (a Ready not yet persisted
        // carries one).
        let pending = self.awaiting_persist.map_or(LogIndex::ZERO, |(_, _, m)| m);
        let mark = self.acked_durable.max(self.acked_index).max(pending);
        self.log.last_index() > index && mark > index
    }

    pub(super) fn handle_install_snapshot(
        &mut self,
        from: NodeId,
        index: LogIndex,
        snapshot_term: Term,
        membership: MembershipEntry,
    ) -> Result<(), RaftError> {
        self.follow(from);
        if index <= self.commit || self.log.term_at(index) == Some(snapshot_term) {
            // We hold the log up to `index` already (maybe not yet known committed).
            if index > self.commit {
                self.set_commit(index);
            }
            self.acknowledge_match(from, index);
            return Ok(());
        }
        if self.install_would_drop_acked(index) {
            // As for a truncation: lower the recovery mark durably first; the leader
            // sends the snapshot again after the stall timeout.
            self.void_acks_from(index.next());
            self.log_dirty = true;
            return Ok(());
        }
        if let Err(err) = self.log.install_snapshot(index, snapshot_term) {
            self.reject_append(from, index, None);
            return Err(err.into());
        }
        // No acknowledgement of a discarded entry may leave (there are none unless
        // the recovery mark is above `index`, which the check above rules out). The
        // mark itself stays: a damaged node remains damaged until past it.
        self.drop_pending_acks_from(index.next());
        if self.config.fault_is(FaultVariant::SnapshotForgetsDamage) {
            self.acked_index = index;
            self.acked_durable = index;
        }
        self.commit = index;
        self.applied = index;
        self.apply_cursor = index;
        self.persisted_index = index;
        self.installed_snapshot = Some((index, snapshot_term));
        self.log_dirty = true;
        self.memberships.reset(MembershipEntry {
            index,
            ..membership
        });
        self.membership_changed();
        self.acknowledge_match(from, index);
        Ok(())
    }

    /// Our log matches the leader's up to `match_index`: raise the recovery mark (in
    /// the same Ready's hard state), leave recovery once past the mark, and
    /// acknowledge once the log is durable.
    fn acknowledge_match(&mut self, leader: NodeId, match_index: LogIndex) {
        self.raise_acked_index(match_index);
        if self.recovering && match_index >= self.acked_index {
            self.recovering = false;
        }
        self.ack_when_persisted(leader, match_index);
    }

    /// Acknowledges a match up to `match_index` once the log is durable.
    fn ack_when_persisted(&mut self, to: NodeId, match_index: LogIndex) {
        let last_log_index = self.log.last_index();
        self.send_persisted(
            to,
            MessageBody::AppendResponse {
                success: true,
                match_index,
                reject_index: LogIndex::ZERO,
                conflict: None,
                last_log_index,
            },
        );
    }

    fn reject_append(
        &mut self,
        to: NodeId,
        reject_index: LogIndex,
        conflict: Option<(Term, LogIndex)>,
    ) {
        let last_log_index = self.log.last_index();
        self.send(
            to,
            MessageBody::AppendResponse {
                success: false,
                match_index: LogIndex::ZERO,
                reject_index,
                conflict,
                last_log_index,
            },
        );
    }

    /// The first index of the run of `term` that ends at `at` (bounded scan, never
    /// below the commit index).
    fn first_index_of_term(&self, term: Term, at: LogIndex) -> LogIndex {
        let floor = self
            .commit
            .next()
            .max(LogIndex(at.0.saturating_sub(CONFLICT_SCAN_MAX)));
        let mut i = at;
        while i > floor && self.log.term_at(i.prev()) == Some(term) {
            i = i.prev();
        }
        i
    }

    /// Drops the acknowledgements not yet sent that match at `from` or beyond.
    fn drop_pending_acks_from(&mut self, from: LogIndex) {
        self.persisted_msgs.retain(|m| {
            !matches!(
                m.body,
                MessageBody::AppendResponse {
                    success: true,
                    match_index,
                    ..
                } if match_index >= from
            )
        });
    }

    /// Acknowledgements not yet sent for entries at `from` and after are void; the
    /// recovery mark comes down below `from`.
    fn void_acks_from(&mut self, from: LogIndex) {
        self.drop_pending_acks_from(from);
        let kept = from.prev();
        if self.acked_index > kept {
            self.acked_index = kept;
        }
    }

    /// The log lost its suffix from `from`: acknowledgements not yet sent for those
    /// entries are void, and the recovery mark comes down (a leader overwrote them,
    /// so they were not committed).
    fn on_truncated(&mut self, from: LogIndex) {
        assert!(from > self.commit);
        assert!(
            from > self.acked_durable,
            "truncating below the durable mark"
        );
        self.void_acks_from(from);
        let kept = from.prev();
        if self.persisted_index > kept {
            self.persisted_index = kept;
        }
        self.log_dirty = true;
    }
}
