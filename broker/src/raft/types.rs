//! Small types shared by the whole core: node ids, roles and the hard state.

use std::fmt;

pub use raftmq_store::{Entry, EntryKind, LogIndex, Term};

/// The id of a Raft node (a broker in the group). Stable across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// What a node currently is. `PreCandidate` only exists with `Config::pre_vote`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asks for pre-votes without raising its term.
    PreCandidate,
    /// Raised its term, voted for itself and asks for votes.
    Candidate,
    /// Won the election of the current term.
    Leader,
}

/// The state that must be durable before any message that depends on it is sent.
///
/// The driver persists it atomically (write temp, fsync, rename, fsync directory) when
/// `Ready::hard_state` is `Some`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: Term,
    /// Whom this node voted for in `term`.
    pub vote: Option<NodeId>,
    /// Protocol-aware recovery mark: the highest log index this node has ever
    /// acknowledged as durable (follower ack or leader self-count). A node that
    /// restarts with `log.last_index() < acked_index` lost acknowledged data and does
    /// not vote or campaign until a leader has brought its log past the mark.
    pub acked_index: LogIndex,
}
