//! Messages exchanged by Raft nodes. Plain scalar fields and [`Entry`]s, so the broker
//! can map them one to one onto its protobuf wire types.

use super::membership::MembershipEntry;
use super::types::{Entry, LogIndex, NodeId, Term};

/// A message between two nodes of the group (or from a node to itself: the leader's
/// self-acknowledgement, see [`MessageBody::AppendResponse`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The sender.
    pub from: NodeId,
    /// The addressee.
    pub to: NodeId,
    /// The sender's term (for a pre-vote request: the term it would campaign in).
    pub term: Term,
    /// What it says.
    pub body: MessageBody,
}

/// The message kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageBody {
    /// A (pre-)candidate asks for a vote.
    Vote {
        /// A pre-vote: the receiver changes no state.
        pre_vote: bool,
        /// The candidate's last log index.
        last_log_index: LogIndex,
        /// The term of the candidate's last entry.
        last_log_term: Term,
        /// Sent on behalf of a leadership transfer: overrides leader stickiness.
        transfer: bool,
    },
    /// The answer to `Vote`.
    VoteResponse {
        /// Answers a pre-vote.
        pre_vote: bool,
        /// The vote is granted.
        granted: bool,
    },
    /// The leader replicates entries (possibly none, to carry the commit index).
    Append {
        /// The index just before `entries`.
        prev_log_index: LogIndex,
        /// The term at `prev_log_index` in the leader's log.
        prev_log_term: Term,
        /// Consecutive entries starting at `prev_log_index + 1`.
        entries: Vec<Entry>,
        /// The leader's commit index.
        commit_index: LogIndex,
    },
    /// The answer to `Append`. A successful one is only sent once the entries up to
    /// `match_index` are durable on the sender. The leader sends one to itself (in
    /// `Ready::persisted_messages`) to count its own durable log.
    AppendResponse {
        /// The entries were accepted.
        success: bool,
        /// On success: the sender's log matches the leader's up to here (durable).
        match_index: LogIndex,
        /// On rejection: the `prev_log_index` that did not match.
        reject_index: LogIndex,
        /// On rejection: the term at `reject_index` in the sender's log and the first
        /// index of that term, for fast backtracking. `None` if the log is too short.
        conflict: Option<(Term, LogIndex)>,
        /// The sender's last log index.
        last_log_index: LogIndex,
    },
    /// The leader is alive; carries `min(commit, follower's match)`.
    Heartbeat {
        /// The commit index the follower may adopt.
        commit_index: LogIndex,
        /// The leader's heartbeat round, echoed in the response: a quorum echoing a
        /// round confirms the leader was still leading when it sent that round, which
        /// releases the reads registered before it (ReadIndex).
        read_round: u64,
        /// The group is idle: the follower may stop its election timer until the
        /// next message or its failure detector wakes it (see `quiesce.rs`).
        quiesce: bool,
    },
    /// The answer to `Heartbeat`.
    HeartbeatResponse {
        /// The round of the heartbeat answered.
        read_round: u64,
        /// The follower quiesced on that heartbeat.
        quiesced: bool,
    },
    /// A follower asks the leader for a read index on behalf of one of its reads.
    ReadIndex {
        /// Chosen by the follower; echoed in the answer.
        id: u64,
    },
    /// The answer to `ReadIndex`: once the asking node has applied up to `index`, its
    /// state reflects every write committed before the read was asked. `None`: the
    /// addressee could not confirm its leadership (retry).
    ReadIndexResponse {
        /// The follower's id for the read.
        id: u64,
        /// The read index, or `None` on failure.
        index: Option<LogIndex>,
    },
    /// The leader asks the target of a leadership transfer to campaign now.
    TimeoutNow,
    /// The follower needs entries the leader compacted away: install the leader's
    /// snapshot, which covers the log up to `index`. The driver carries the snapshot
    /// itself (in chunks) and steps this message only once it holds all of it; the
    /// answer is an `AppendResponse` matching up to `index`.
    InstallSnapshot {
        /// The last index the snapshot covers.
        index: LogIndex,
        /// The term of the entry at `index`.
        snapshot_term: Term,
        /// The membership in effect at `index`.
        membership: MembershipEntry,
    },
}

impl MessageBody {
    /// A short name for traces and metrics.
    pub fn kind_name(&self) -> &'static str {
        match self {
            MessageBody::Vote { pre_vote: true, .. } => "PreVote",
            MessageBody::Vote { .. } => "Vote",
            MessageBody::VoteResponse { pre_vote: true, .. } => "PreVoteResponse",
            MessageBody::VoteResponse { .. } => "VoteResponse",
            MessageBody::Append { .. } => "Append",
            MessageBody::AppendResponse { .. } => "AppendResponse",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResponse { .. } => "HeartbeatResponse",
            MessageBody::ReadIndex { .. } => "ReadIndex",
            MessageBody::ReadIndexResponse { .. } => "ReadIndexResponse",
            MessageBody::TimeoutNow => "TimeoutNow",
            MessageBody::InstallSnapshot { .. } => "InstallSnapshot",
        }
    }
}
