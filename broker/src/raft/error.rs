//! Error values of the core. A broken invariant is an `assert!`, never one of these.

use super::types::NodeId;

/// A failure of the log storage behind [`super::RaftLog`]. On `Err` the log must be
/// unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The storage could not write (disk full, I/O error, ...).
    #[error("log write failed: {0}")]
    Write(String),
    /// The requested range is not in the log (compacted or beyond the end).
    #[error("log index {0} is unavailable")]
    Unavailable(u64),
    /// Reading failed or found damaged data.
    #[error("log read failed: {0}")]
    Read(String),
}

/// Why [`super::RawNode::step`] failed. The node is in a clean state afterwards.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaftError {
    /// The log failed; a leader has stepped down, a follower rejected the append.
    #[error("storage: {0}")]
    Storage(#[from] LogError),
    /// The message is addressed to another node.
    #[error("message for {to} delivered to {me}")]
    WrongRecipient {
        /// This node.
        me: NodeId,
        /// The addressee.
        to: NodeId,
    },
}

/// Why a proposal was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Only the leader takes proposals; `leader` is the one this node knows, if any.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The current leader, if known.
        leader: Option<NodeId>,
    },
    /// Too many proposals are not yet committed (`Config::max_pending_proposals`).
    #[error("too many uncommitted proposals")]
    Busy,
    /// A leadership transfer is in progress.
    #[error("leadership transfer in progress")]
    TransferInProgress,
    /// Writing to the log failed; the leader stepped down.
    #[error("storage: {0}")]
    Storage(#[from] LogError),
    /// A membership change breaks the rules of single-server changes.
    #[error("membership change refused: {0}")]
    Membership(#[from] super::membership::ChangeError),
}

/// Why [`super::RawNode::read_index`] could not take a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// No leader is known (an election is under way, or the node is cut off).
    #[error("no leader is known")]
    NoLeader,
    /// Too many reads wait for a leadership confirmation
    /// (`Config::max_pending_reads`).
    #[error("too many reads waiting")]
    Busy,
}

/// Why a leadership transfer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// Only the leader transfers leadership.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The current leader, if known.
        leader: Option<NodeId>,
    },
    /// The target is not a voter of this group.
    #[error("unknown transfer target {0}")]
    UnknownPeer(NodeId),
    /// The target is this node, which already leads.
    #[error("already the leader")]
    AlreadyLeader,
}

/// An invalid [`super::Config`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `voters` and `learners` list a node twice.
    #[error("member {0} listed twice")]
    DuplicateVoter(NodeId),
    /// More voters than the core supports.
    #[error("{0} voters, at most {max} supported", max = super::config::VOTERS_MAX)]
    TooManyVoters(usize),
    /// A numeric limit is out of range.
    #[error("invalid {name}: {reason}")]
    Invalid {
        /// The field.
        name: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}
