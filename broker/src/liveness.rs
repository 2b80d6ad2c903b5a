//! Node-level liveness: which other nodes this process has heard from lately.
//!
//! Quiesced Raft groups send nothing (see `raft/quiesce.rs`), so a follower of an
//! idle group cannot notice by itself that its leader's node died or was cut off.
//! One detector per process does it for every group: each node pings every other
//! node a few times per election timeout (the metadata group's task sends the
//! pings, over its links), every message from a node counts as hearing from it,
//! and a node silent for longer than [`Liveness::silence`] is reported once to
//! every group of the process (`NodeInput::PeerUnreachable`); groups whose leader it
//! is wake up and elect another. A closed connection is reported sooner, per group
//! (`NodeInput::PeerLinkClosed`). The cost is one tiny message per pair of nodes
//! per ping interval, whatever the number of groups.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::raft::NodeId;

/// What the detector knows of one peer.
#[derive(Debug, Clone, Copy)]
struct PeerState {
    heard: Instant,
    /// Reported silent, and not heard from since.
    reported: bool,
}

/// The process's record of when each peer node was last heard from.
#[derive(Debug, Default)]
pub struct Liveness {
    peers: Mutex<BTreeMap<NodeId, PeerState>>,
}

impl Liveness {
    /// How long a node may be silent before it is reported, for a group timing:
    /// two election timeouts (at least a few pings missed in a row, so a busy
    /// process is not taken for a dead one).
    pub fn silence(tick: Duration, election_timeout_ticks: u32) -> Duration {
        tick * election_timeout_ticks * 2
    }

    /// A message from `from` arrived. True if `from` had been reported silent or
    /// lost (the caller tells the groups it is back).
    pub fn heard(&self, from: NodeId, now: Instant) -> bool {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let previous = peers.insert(
            from,
            PeerState {
                heard: now,
                reported: false,
            },
        );
        previous.is_some_and(|p| p.reported)
    }

    /// A connection from `from` closed (its groups were told): the next message
    /// from it counts as coming back.
    pub fn lost(&self, from: NodeId) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = peers.get_mut(&from) {
            state.reported = true;
        }
    }

    /// The nodes among `members` not heard from for `silence` and not reported
    /// since they were last heard from (each silence is reported once). A member
    /// never heard from counts from the first time it is asked about.
    pub fn newly_silent(
        &self,
        members: impl IntoIterator<Item = NodeId>,
        now: Instant,
        silence: Duration,
    ) -> Vec<NodeId> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let mut silent = Vec::new();
        for id in members {
            let state = peers.entry(id).or_insert(PeerState {
                heard: now,
                reported: false,
            });
            if !state.reported && now.saturating_duration_since(state.heard) >= silence {
                state.reported = true;
                silent.push(id);
            }
        }
        silent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_peer_is_reported_once_per_silence() {
        let liveness = Liveness::default();
        let t0 = Instant::now();
        let silence = Duration::from_millis(600);
        let (a, b) = (NodeId(2), NodeId(3));
        assert!(liveness.newly_silent([a, b], t0, silence).is_empty());
        assert!(!liveness.heard(a, t0 + Duration::from_millis(500)));
        assert_eq!(
            liveness.newly_silent([a, b], t0 + Duration::from_millis(700), silence),
            vec![b],
            "b was never heard from since it was first asked about"
        );
        assert!(
            liveness
                .newly_silent([a, b], t0 + Duration::from_millis(900), silence)
                .is_empty(),
            "b is reported once; a was heard 400 ms ago"
        );
        assert_eq!(
            liveness.newly_silent([a, b], t0 + Duration::from_millis(1200), silence),
            vec![a]
        );
        assert!(
            liveness.heard(b, t0 + Duration::from_millis(1300)),
            "b was reported: it is back"
        );
        assert_eq!(
            liveness.newly_silent([a, b], t0 + Duration::from_millis(2000), silence),
            vec![b],
            "heard again, then silent again: a new silence"
        );
        liveness.lost(a);
        assert!(
            liveness.heard(a, t0 + Duration::from_millis(2100)),
            "back after a lost link"
        );
        assert!(!liveness.heard(a, t0 + Duration::from_millis(2200)));
    }
}
