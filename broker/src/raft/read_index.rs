//! Linearizable reads without writing to the log: Raft's ReadIndex (thesis §6.4).
//!
//! A read asked at any node gets a *read index*: the leader's commit index when the
//! read reached it, raised to the leader's first entry of its term (a new leader's
//! commit index may lag what earlier leaders committed until its Noop commits). The
//! leader hands the index out only after a quorum has answered a heartbeat round it
//! sent *after* the read arrived: at that moment no other leader can have committed
//! anything, so every write acknowledged before the read is at or below the index.
//! The node that asked serves the read once its state machine has applied up to the
//! index. Reads never go back in time: a later read gets an index at least as high.
//!
//! Rounds are shared: every read that arrives before a round is sent waits for that
//! one round, and the leader's ordinary heartbeats are rounds too, so a burst of reads
//! costs one extra heartbeat. A single voter confirms its reads at once.
//!
//! No clock is involved (no lease), so clock drift cannot make a read stale. A read
//! whose leader steps down is failed at once (`index: None`): the driver answers
//! "retry" instead of holding it until a timeout. A follower's read that is lost on
//! the way is the driver's to time out.

use std::collections::VecDeque;

use super::config::FaultVariant;
use super::error::ReadError;
use super::log::RaftLog;
use super::message::MessageBody;
use super::raw_node::RawNode;
use super::types::{LogIndex, NodeId, Role};

/// A read waiting for its heartbeat round to be confirmed by a quorum (leader only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PendingRead {
    /// The asker's id for the read.
    pub id: u64,
    /// The node that asked (the leader itself, or a follower).
    pub from: NodeId,
    /// The first round sent after the read arrived.
    pub round: u64,
    /// The read index.
    pub index: LogIndex,
}

/// A read this node asked for, now decided (reported in [`super::Ready::read_states`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadState {
    /// The id given to [`RawNode::read_index`].
    pub id: u64,
    /// Serve the read once the state machine has applied up to this index. `None`:
    /// leadership could not be confirmed (the leader stepped down or was unknown to
    /// the node asked); the read must be retried.
    pub index: Option<LogIndex>,
}

impl<L: RaftLog> RawNode<L> {
    /// Asks for a read index for read `id` (chosen by the driver, unique among its
    /// outstanding reads). The answer comes in a later [`super::Ready::read_states`];
    /// a follower forwards the request to the leader, and the driver must time it
    /// out if no answer comes (the message may be lost).
    pub fn read_index(&mut self, id: u64) -> Result<(), ReadError> {
        if self.config.fault_is(FaultVariant::LocalReads) {
            let index = self.commit;
            self.read_states.push(ReadState {
                id,
                index: Some(index),
            });
            return Ok(());
        }
        self.note_activity();
        match self.role {
            Role::Leader => {
                let me = self.config.id;
                self.register_read(id, me)
            }
            Role::Follower => match self.leader {
                Some(leader) => {
                    self.send(leader, MessageBody::ReadIndex { id });
                    Ok(())
                }
                None => Err(ReadError::NoLeader),
            },
            Role::Candidate | Role::PreCandidate => Err(ReadError::NoLeader),
        }
    }

    /// Leader: queues a read for the next round (or answers it at once as a single
    /// voter).
    fn register_read(&mut self, id: u64, from: NodeId) -> Result<(), ReadError> {
        assert_eq!(self.role, Role::Leader);
        if self.pending_reads.len() >= self.config.max_pending_reads {
            return Err(ReadError::Busy);
        }
        let index = if self.config.fault_is(FaultVariant::ReadBeforeTermCommit) {
            self.commit
        } else {
            self.commit.max(self.term_start)
        };
        let read = PendingRead {
            id,
            from,
            round: self.read_round + 1,
            index,
        };
        if self.membership().voters == [self.config.id] {
            self.release_read(read);
            return Ok(());
        }
        self.pending_reads.push_back(read);
        self.read_round_wanted = true;
        Ok(())
    }

    /// A follower's `ReadIndex`: register it if leading, else refuse at once.
    pub(super) fn handle_read_index(&mut self, from: NodeId, id: u64) {
        let refused = self.role != Role::Leader || self.register_read(id, from).is_err();
        if refused {
            self.send(from, MessageBody::ReadIndexResponse { id, index: None });
        }
    }

    /// The leader's answer to one of this node's reads.
    pub(super) fn handle_read_index_response(&mut self, id: u64, index: Option<LogIndex>) {
        self.read_states.push(ReadState { id, index });
    }

    /// Leader: sends a heartbeat round now if reads wait for one (called by `ready()`).
    pub(super) fn send_read_round(&mut self) {
        if !self.read_round_wanted {
            return;
        }
        self.read_round_wanted = false;
        self.read_round += 1;
        let round = self.read_round;
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for to in peers {
            let commit_index = self.commit.min(self.progress[&to].match_index);
            self.send(
                to,
                MessageBody::Heartbeat {
                    commit_index,
                    read_round: round,
                    quiesce: false,
                },
            );
        }
    }

    /// Leader: a follower answered heartbeat round `round` of this term.
    pub(super) fn read_round_acked(&mut self, from: NodeId, round: u64) {
        if let Some(pr) = self.progress.get_mut(&from) {
            pr.read_round_acked = pr.read_round_acked.max(round);
        }
        self.release_confirmed_reads();
    }

    /// Releases the reads whose round a quorum has answered.
    pub(super) fn release_confirmed_reads(&mut self) {
        let confirmed = self.quorum_value(self.read_round, |pr| pr.read_round_acked);
        while let Some(read) = self.pending_reads.front().copied() {
            if read.round > confirmed {
                break;
            }
            self.pending_reads.pop_front();
            self.release_read(read);
        }
    }

    fn release_read(&mut self, read: PendingRead) {
        if read.from == self.config.id {
            self.read_states.push(ReadState {
                id: read.id,
                index: Some(read.index),
            });
        } else {
            self.send(
                read.from,
                MessageBody::ReadIndexResponse {
                    id: read.id,
                    index: Some(read.index),
                },
            );
        }
    }

    /// Leadership ended: every read still waiting fails, so nobody waits for a
    /// timeout (the asker retries, at the new leader).
    pub(super) fn fail_pending_reads(&mut self) {
        let reads: VecDeque<PendingRead> = std::mem::take(&mut self.pending_reads);
        self.read_round_wanted = false;
        for read in reads {
            if read.from == self.config.id {
                self.read_states.push(ReadState {
                    id: read.id,
                    index: None,
                });
            } else {
                self.send(
                    read.from,
                    MessageBody::ReadIndexResponse {
                        id: read.id,
                        index: None,
                    },
                );
            }
        }
    }
}
