//! Requests that wait before they are served: reads of replicated state wait for a
//! read index (Raft's ReadIndex, see `raft/read_index.rs`) and for the state machine
//! to apply up to it; everything a new leader receives waits until it has applied
//! what earlier leaders committed.
//!
//! Which requests wait for a read index (the *read barrier*):
//! - every read of replicated state: `Metadata`, `ListOffsets`, `OffsetFetch`,
//!   `DescribeGroup`, `ListGroups`;
//! - any request whose local answer would be a *final* "does not exist" (an unknown
//!   topic or queue, a fetch past the queue's end, a topic that exists already): a
//!   node that is behind must not tell a client a topic is gone or an offset is out
//!   of range. Only the barrier makes such an answer true.
//!
//! A fetch of data the node holds is served at once: every batch a node holds in its
//! queue index is committed, and the consumer asked for that offset.
//!
//! Nothing here is answered from stale state: a node that knows no leader answers
//! `NOT_READY` at once (the client retries, elsewhere if need be); a read whose
//! confirmation is lost or whose leader changes is answered `NOT_READY` too, never
//! left waiting for the request timeout.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use raftmq_proto::pb::{self, ErrorCode};
use raftmq_store::LogIndex;

use super::Node;
use crate::raft::{ReadError, ReadState, Role};
use crate::response::Responder;

/// Why a request is parked until the state machine reaches an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// A read confirmed at this read index: serve it as linearized.
    ReadAt,
    /// A new leader's request waits for the leader's first entry to be applied; it
    /// is handled from the start again (and may still need a read index).
    TermStart,
}

/// A request that waits.
struct Parked {
    body: pb::request::Body,
    reply: Responder,
    deadline: Instant,
}

/// The waiting requests of one node.
#[derive(Default)]
pub(super) struct WaitingRequests {
    next_read_id: u64,
    /// Reads asked of the Raft core, by read id, waiting for their read index.
    awaiting_index: BTreeMap<u64, Parked>,
    /// Requests waiting for the state machine, by (index, arrival) so they are
    /// released in index order.
    awaiting_apply: BTreeMap<(LogIndex, u64), (Wait, Parked)>,
    next_arrival: u64,
}

impl WaitingRequests {
    /// Requests waiting, for metrics and tests.
    pub(super) fn len(&self) -> usize {
        self.awaiting_index.len() + self.awaiting_apply.len()
    }

    fn park_until(&mut self, index: LogIndex, wait: Wait, parked: Parked) {
        self.next_arrival += 1;
        self.awaiting_apply
            .insert((index, self.next_arrival), (wait, parked));
    }
}

impl Node {
    /// Entry point for every client request.
    pub(super) fn handle_client(&mut self, body: pb::request::Body, reply: Responder) {
        self.dispatch(body, reply, false);
    }

    /// Routes a request: park it, send it through the read barrier, or serve it.
    /// `linearized`: the request passed the barrier already (its read index is
    /// applied), so its reads of local state are up to date.
    fn dispatch(&mut self, body: pb::request::Body, reply: Responder, linearized: bool) {
        use pb::request::Body as B;
        if matches!(body, B::ClusterStatus(_)) {
            // A diagnostic view of this node's own state, never of the cluster's.
            return self.serve_client(body, reply);
        }
        if self.raft.role() == Role::Leader && !self.leader_ready() {
            // The state machine lags what earlier leaders committed: wait (briefly)
            // instead of answering from it or making the client retry.
            let deadline = Instant::now() + self.request_timeout();
            let term_start = self.term_start;
            self.waiting.park_until(
                term_start,
                Wait::TermStart,
                Parked {
                    body,
                    reply,
                    deadline,
                },
            );
            return;
        }
        if !linearized && self.config.linearizable_reads && self.needs_read_barrier(&body) {
            return self.read_barrier(body, reply);
        }
        self.serve_client(body, reply);
    }

    /// See the module documentation for the rule.
    fn needs_read_barrier(&self, body: &pb::request::Body) -> bool {
        use pb::request::Body as B;
        let leader = self.raft.role() == Role::Leader;
        match body {
            B::Metadata(req) => !req.local,
            B::ListOffsets(_) | B::OffsetFetch(_) | B::DescribeGroup(_) | B::ListGroups(_) => true,
            B::Fetch(req) => match self.queue(&req.topic, req.queue) {
                Ok(queue) => req.offset > queue.next_offset,
                Err(_) => true,
            },
            // Writes go to the leader; a follower redirects without asking anyone.
            B::Produce(req) => leader && self.queue(&req.topic, req.queue).is_err(),
            B::DeleteTopic(req) => leader && self.state.topic(&req.name).is_none(),
            B::CreateTopic(req) => leader && self.state.topic(&req.name).is_some(),
            B::OffsetReset(req) => leader && self.state.topic(&req.topic).is_none(),
            B::JoinGroup(req) => leader && req.topics.iter().any(|t| self.state.topic(t).is_none()),
            _ => false,
        }
    }

    /// Asks the core for a read index; the request is served once it is applied.
    fn read_barrier(&mut self, body: pb::request::Body, reply: Responder) {
        self.waiting.next_read_id += 1;
        let id = self.waiting.next_read_id;
        match self.raft.read_index(id) {
            Ok(()) => {
                let deadline = Instant::now() + self.read_index_timeout();
                self.waiting.awaiting_index.insert(
                    id,
                    Parked {
                        body,
                        reply,
                        deadline,
                    },
                );
            }
            Err(ReadError::NoLeader) => {
                reply.error(self.not_ready("no leader is known yet (an election is under way)"))
            }
            Err(ReadError::Busy) => reply.error(pb::Error::new(
                ErrorCode::Busy,
                "too many reads waiting for the leader, retry shortly",
            )),
        }
    }

    /// The core decided reads (after the Ready's entries were applied).
    pub(super) fn read_states(&mut self, states: Vec<ReadState>) {
        for state in states {
            let Some(parked) = self.waiting.awaiting_index.remove(&state.id) else {
                continue; // timed out meanwhile
            };
            match state.index {
                Some(index) if index <= self.state.applied() => {
                    self.dispatch(parked.body, parked.reply, true)
                }
                Some(index) => {
                    // Catching up may take a while (a restarted node replaying its log).
                    let parked = Parked {
                        deadline: Instant::now() + self.request_timeout(),
                        ..parked
                    };
                    self.waiting.park_until(index, Wait::ReadAt, parked);
                }
                None => parked
                    .reply
                    .error(self.not_ready("leadership changed while the read waited; retry")),
            }
        }
    }

    /// The state machine applied up to `applied`: release what waited for it.
    pub(super) fn release_applied(&mut self) {
        let applied = self.state.applied();
        while let Some(entry) = self.waiting.awaiting_apply.first_entry() {
            if entry.key().0 > applied {
                break;
            }
            let (wait, parked) = entry.remove();
            self.dispatch(parked.body, parked.reply, wait == Wait::ReadAt);
        }
    }

    /// The role or the known leader changed: reads forwarded to the old leader may
    /// never be answered, and a deposed leader's parked requests cannot be served by
    /// it. Both are answered now (the client retries at once, at the right node).
    pub(super) fn leadership_changed(&mut self) {
        for (_, parked) in std::mem::take(&mut self.waiting.awaiting_index) {
            parked
                .reply
                .error(self.not_ready("leadership changed while the read waited; retry"));
        }
        if self.raft.role() != Role::Leader {
            let term_start: Vec<(LogIndex, u64)> = self
                .waiting
                .awaiting_apply
                .iter()
                .filter(|(_, (wait, _))| *wait == Wait::TermStart)
                .map(|(key, _)| *key)
                .collect();
            for key in term_start {
                let (_, parked) = self
                    .waiting
                    .awaiting_apply
                    .remove(&key)
                    .expect("key just listed");
                // Redirected (or refused) by the usual rules, now that it does not lead.
                self.dispatch(parked.body, parked.reply, false);
            }
        }
    }

    /// Answers `Timeout` to requests that waited too long (called every tick).
    pub(super) fn expire_waiting(&mut self, now: Instant) {
        if self.waiting.len() == 0 {
            return;
        }
        let late: Vec<u64> = self
            .waiting
            .awaiting_index
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            let parked = self.waiting.awaiting_index.remove(&id).expect("listed");
            parked.reply.error(self.not_ready(
                "the leader did not confirm the read in time (it may be unreachable); retry",
            ));
        }
        let late: Vec<(LogIndex, u64)> = self
            .waiting
            .awaiting_apply
            .iter()
            .filter(|(_, (_, p))| p.deadline <= now)
            .map(|(key, _)| *key)
            .collect();
        for key in late {
            let (_, parked) = self.waiting.awaiting_apply.remove(&key).expect("listed");
            parked.reply.error(pb::Error::new(
                ErrorCode::Timeout,
                format!(
                    "this broker has not caught up to index {} in time; retry",
                    key.0 .0
                ),
            ));
        }
    }

    /// Answers everything still waiting (shutdown).
    pub(super) fn fail_waiting(&mut self) {
        for (_, parked) in std::mem::take(&mut self.waiting.awaiting_index) {
            parked.reply.error(pb::Error::shutting_down());
        }
        for (_, (_, parked)) in std::mem::take(&mut self.waiting.awaiting_apply) {
            parked.reply.error(pb::Error::shutting_down());
        }
    }

    /// `NOT_READY`, naming the leader when known.
    pub(super) fn not_ready(&self, why: &str) -> pb::Error {
        let leader = self
            .raft
            .leader()
            .filter(|&l| l != self.config.node_id)
            .and_then(|id| self.config.address_of(id))
            .map(|a| a.to_string());
        pb::Error::not_ready(why, leader.as_deref())
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms)
    }

    /// How long a read may wait for its read index: two election timeouts, by when
    /// a lost message or a dead leader has shown (and a new one was elected).
    fn read_index_timeout(&self) -> Duration {
        Duration::from_millis(
            2 * u64::from(self.config.election_timeout_ticks) * self.config.tick_ms,
        )
    }
}
