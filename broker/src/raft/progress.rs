//! The leader's view of one follower: how far its log matches, what to send next,
//! and how many appends are in flight.

use std::collections::VecDeque;

use super::types::LogIndex;

/// How the leader replicates to a follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressState {
    /// The match point is unknown: send one append at a time and wait for the answer.
    Probe,
    /// The follower matches up to `match_index`: stream appends optimistically, up to
    /// `max_inflight_appends` unacknowledged ones.
    Replicate,
    /// The follower needs entries below the leader's log start: a snapshot up to
    /// `pending_snapshot` was sent; nothing else is sent until it is acknowledged (or
    /// the transfer stalls for an election timeout and the leader probes again).
    Snapshot,
}

/// Per-follower replication state kept by the leader.
#[derive(Debug, Clone)]
pub struct Progress {
    /// The follower's log is durable and matches the leader's up to here.
    pub match_index: LogIndex,
    /// The next index to send.
    pub next_index: LogIndex,
    /// Probe or Replicate.
    pub state: ProgressState,
    /// Probe: an append was sent and is not answered yet (retried on heartbeat).
    pub probe_sent: bool,
    /// Heard from the follower since the last check-quorum round.
    pub recent_active: bool,
    /// The last index of each append in flight (Replicate), oldest first.
    inflight: VecDeque<LogIndex>,
    inflight_max: usize,
    /// The commit index last sent to this follower.
    pub commit_sent: LogIndex,
    /// Ticks since the follower last made progress while appends were in flight.
    pub stalled_ticks: u32,
    /// Snapshot: the index the snapshot sent covers.
    pub pending_snapshot: LogIndex,
    /// The highest heartbeat round of this term the follower answered (ReadIndex).
    pub read_round_acked: u64,
    /// The follower answered a quiescing heartbeat of the current attempt.
    pub quiesced: bool,
}

impl Progress {
    /// A follower about which nothing is known: probe from `next_index`.
    pub fn new(next_index: LogIndex, inflight_max: usize) -> Self {
        assert!(inflight_max >= 1);
        Progress {
            match_index: LogIndex::ZERO,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            recent_active: false,
            inflight: VecDeque::with_capacity(inflight_max.min(1024)),
            inflight_max,
            commit_sent: LogIndex::ZERO,
            stalled_ticks: 0,
            pending_snapshot: LogIndex::ZERO,
            read_round_acked: 0,
            quiesced: false,
        }
    }

    /// Switches to Snapshot: a snapshot covering up to `index` is on its way.
    pub fn become_snapshot(&mut self, index: LogIndex) {
        self.state = ProgressState::Snapshot;
        self.pending_snapshot = index;
        self.probe_sent = false;
        self.inflight.clear();
        self.stalled_ticks = 0;
    }

    /// Switches to Probe, sending from `next_index` next.
    pub fn become_probe(&mut self, next_index: LogIndex) {
        assert!(
            next_index > self.match_index,
            "probe from {next_index} at or below match {}",
            self.match_index
        );
        self.state = ProgressState::Probe;
        self.next_index = next_index;
        self.probe_sent = false;
        self.inflight.clear();
        self.stalled_ticks = 0;
    }

    /// Switches to Replicate right after the match point.
    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index.next();
        self.probe_sent = false;
        self.inflight.clear();
        self.stalled_ticks = 0;
    }

    /// Records an acknowledged match; returns whether it advanced.
    pub fn on_ack(&mut self, match_index: LogIndex) -> bool {
        if match_index <= self.match_index {
            return false;
        }
        self.match_index = match_index;
        if self.next_index <= match_index {
            self.next_index = match_index.next();
        }
        while self.inflight.front().is_some_and(|&i| i <= match_index) {
            self.inflight.pop_front();
        }
        self.stalled_ticks = 0;
        true
    }

    /// The follower lost durable entries (restarted with a damaged log): its match
    /// point drops and the leader probes again.
    pub fn on_regression(&mut self, last_log_index: LogIndex) {
        assert!(last_log_index < self.match_index);
        self.match_index = last_log_index;
        self.become_probe(last_log_index.next());
    }

    /// Whether the leader must wait before sending entries.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflight.len() >= self.inflight_max,
            ProgressState::Snapshot => true,
        }
    }

    /// Records an append that carried entries up to `last`.
    pub fn on_sent(&mut self, last: LogIndex) {
        match self.state {
            ProgressState::Probe | ProgressState::Snapshot => self.probe_sent = true,
            ProgressState::Replicate => {
                assert!(!self.is_paused());
                self.next_index = last.next();
                self.inflight.push_back(last);
            }
        }
    }

    /// Appends in flight.
    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_progress_replicate_window_bounds_inflight() {
        let mut p = Progress::new(LogIndex(1), 2);
        assert!(!p.is_paused());
        p.on_sent(LogIndex(5));
        assert!(p.is_paused(), "probe waits for an answer");
        assert!(p.on_ack(LogIndex(5)));
        p.become_replicate();
        assert_eq!(p.next_index, LogIndex(6));
        p.on_sent(LogIndex(7));
        p.on_sent(LogIndex(9));
        assert!(p.is_paused());
        assert_eq!(p.next_index, LogIndex(10));
        assert!(p.on_ack(LogIndex(7)));
        assert!(!p.is_paused());
        assert!(!p.on_ack(LogIndex(6)), "stale ack");
        p.on_regression(LogIndex(3));
        assert_eq!(p.state, ProgressState::Probe);
        assert_eq!(p.next_index, LogIndex(4));
    }
}
