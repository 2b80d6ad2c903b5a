//! What the core hands to its driver ([`Ready`]) and what it reports ([`Status`]).

use super::message::Message;
use super::progress::ProgressState;
use super::read_index::ReadState;
use super::types::{HardState, LogIndex, NodeId, Role, Term};

/// Everything the driver must do after the core changed state, taken at once by
/// [`super::RawNode::ready`]. Handle it in this order:
///
/// 1. send `messages` (they depend on nothing unsynced);
/// 2. sync the log up to `unsynced` (the core already wrote it through
///    [`super::RaftLog`]);
/// 3. persist `hard_state` durably if `Some`;
/// 4. only then send `persisted_messages`; a message addressed to this node itself is
///    stepped back into it with [`super::RawNode::step`] instead of sent;
/// 5. call [`super::RawNode::persisted`] with `unsynced`;
/// 6. apply `to_apply` (read the entries from the log) and report
///    [`super::RawNode::applied`].
///
/// If `snapshot` is `Some`, the log was reset to a snapshot received from the leader
/// (already durable): restore the state machine from it before applying `to_apply`.
#[derive(Debug, Default)]
pub struct Ready {
    /// Persist durably (atomically) if `Some`, after the log sync and before sending
    /// `persisted_messages`.
    pub hard_state: Option<HardState>,
    /// The log was written (or truncated) up to this (index, term): sync it, then call
    /// `persisted(index, term)`.
    pub unsynced: Option<(LogIndex, Term)>,
    /// Send now.
    pub messages: Vec<Message>,
    /// Send only after the log up to `unsynced` and `hard_state` are durable.
    pub persisted_messages: Vec<Message>,
    /// The current commit index.
    pub commit_index: LogIndex,
    /// Inclusive range of newly committed entries to apply, read from the log.
    pub to_apply: Option<(LogIndex, LogIndex)>,
    /// The role, term or known leader changed (for logs and metrics).
    pub role_change: Option<(Role, Term, Option<NodeId>)>,
    /// The log now starts after this installed snapshot (index, term): restore the
    /// state machine from it first.
    pub snapshot: Option<(LogIndex, Term)>,
    /// Reads asked with [`super::RawNode::read_index`] that are now decided: serve
    /// each once the state machine has applied up to its index (after `to_apply`).
    pub read_states: Vec<ReadState>,
    /// The membership in effect changed (a change was appended, truncated away, or
    /// came with a snapshot): connect to new members, forget removed ones.
    pub membership: Option<super::MembershipEntry>,
}

/// The leader's replication state for one follower, as reported by `status()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The follower.
    pub id: NodeId,
    /// A voter (else a learner).
    pub voter: bool,
    /// Durable match index.
    pub match_index: LogIndex,
    /// Next index to send.
    pub next_index: LogIndex,
    /// Probe or Replicate.
    pub state: ProgressState,
    /// Heard from within the current check-quorum round.
    pub recent_active: bool,
    /// Appends in flight.
    pub inflight: usize,
}

/// A snapshot of the node's state for monitoring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its term.
    pub term: Term,
    /// Its vote in `term`.
    pub vote: Option<NodeId>,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// Commit index.
    pub commit_index: LogIndex,
    /// Applied index reported by the driver.
    pub applied_index: LogIndex,
    /// Last written log index.
    pub last_index: LogIndex,
    /// Last index reported durable with `persisted`.
    pub persisted_index: LogIndex,
    /// Protocol-aware recovery mark.
    pub acked_index: LogIndex,
    /// The log is behind the mark: the node does not vote or campaign.
    pub recovering: bool,
    /// Target of a leadership transfer in progress.
    pub transferee: Option<NodeId>,
    /// The group is quiesced: ticks do nothing (see `RawNode::is_quiesced`).
    pub quiesced: bool,
    /// Leader only: one entry per follower, by id.
    pub progress: Vec<PeerStatus>,
    /// The membership in effect, with the index of its entry.
    pub membership: super::MembershipEntry,
}
