//! Errors: [`ProtoError`] for this crate's own failures, constructors for the wire
//! [`pb::Error`] (one per [`pb::ErrorCode`], for the broker), and [`ServerError`],
//! the typed view of a wire error (for clients).

use crate::batch::BatchError;
use crate::pb::{self, ErrorCode};

/// What can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// A frame body is not a valid protobuf message.
    #[error("malformed message: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A topic or group name breaks the naming rules.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name (cut at 249 characters).
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A record batch is malformed.
    #[error("invalid record batch: {0}")]
    Batch(#[from] BatchError),
}

impl pb::Error {
    /// An error with `code` and a human-readable `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        pb::Error {
            code: code as i32,
            message: message.into(),
            ..Default::default()
        }
    }

    /// This broker is not the leader; `leader_address` (host:port for clients) is the
    /// leader when known.
    pub fn not_leader(leader_address: Option<&str>) -> Self {
        pb::Error {
            leader_address: leader_address.unwrap_or_default().to_owned(),
            ..Self::new(ErrorCode::NotLeader, "not the leader")
        }
    }

    /// No such topic.
    pub fn unknown_topic(topic: &str) -> Self {
        Self::new(ErrorCode::UnknownTopic, format!("unknown topic {topic:?}"))
    }

    /// `queue` is not below the topic's `queues`.
    pub fn invalid_queue(topic: &str, queue: u32, queues: u32) -> Self {
        Self::new(
            ErrorCode::InvalidQueue,
            format!("topic {topic:?} has {queues} queues, no queue {queue}"),
        )
    }

    /// The topic already exists.
    pub fn topic_exists(topic: &str) -> Self {
        Self::new(
            ErrorCode::TopicExists,
            format!("topic {topic:?} already exists"),
        )
    }

    /// A record batch failed its checks.
    pub fn corrupt_batch(detail: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::CorruptBatch, detail.to_string())
    }

    /// A batch or request is over a size limit.
    pub fn message_too_large(bytes: usize, max_bytes: usize) -> Self {
        Self::new(
            ErrorCode::MessageTooLarge,
            format!("{bytes} bytes is over the limit of {max_bytes}"),
        )
    }

    /// The offset asked for is outside `[log_start, log_end]`.
    pub fn offset_out_of_range(log_start: u64, log_end: u64) -> Self {
        pb::Error {
            log_start,
            log_end,
            ..Self::new(
                ErrorCode::OffsetOutOfRange,
                format!("offset out of range [{log_start}, {log_end}]"),
            )
        }
    }

    /// A bounded queue is full; retry after a short backoff.
    pub fn busy(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::Busy, detail)
    }

    /// The request did not complete in time (its outcome is unknown).
    pub fn timeout(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::Timeout, detail)
    }

    /// The batch was already stored (the response's `base_offset` says where).
    pub fn duplicate_sequence(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::DuplicateSequence, detail)
    }

    /// The batch's sequence is not the next one expected.
    pub fn out_of_order_sequence(expected: u32, got: u32) -> Self {
        Self::new(
            ErrorCode::OutOfOrderSequence,
            format!("expected sequence {expected}, got {got}"),
        )
    }

    /// The request is malformed or breaks a rule.
    pub fn invalid_request(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, detail)
    }

    /// The request's API or version is not supported.
    pub fn unsupported_version(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::UnsupportedVersion, detail)
    }

    /// The broker could not write its log.
    pub fn storage_error(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::StorageError, detail)
    }

    /// The member is not in the group.
    pub fn unknown_member(group: &str, member_id: &str) -> Self {
        Self::new(
            ErrorCode::UnknownMember,
            format!("member {member_id:?} is not in group {group:?}"),
        )
    }

    /// The request's generation is not the group's current one.
    pub fn stale_generation(current: u64, got: u64) -> Self {
        Self::new(
            ErrorCode::StaleGeneration,
            format!("generation {got} is stale, the group is at {current}"),
        )
    }

    /// The group is rebalancing; rejoin.
    pub fn rebalance_in_progress(group: &str) -> Self {
        Self::new(
            ErrorCode::RebalanceInProgress,
            format!("group {group:?} is rebalancing"),
        )
    }

    /// The group still has members.
    pub fn group_not_empty(group: &str) -> Self {
        Self::new(
            ErrorCode::GroupNotEmpty,
            format!("group {group:?} has members"),
        )
    }

    /// No such group.
    pub fn unknown_group(group: &str) -> Self {
        Self::new(ErrorCode::UnknownGroup, format!("unknown group {group:?}"))
    }

    /// The producer's epoch is older than the broker's.
    pub fn fenced_producer(producer_id: u64, epoch: u32, current_epoch: u32) -> Self {
        Self::new(
            ErrorCode::FencedProducer,
            format!("producer {producer_id} epoch {epoch} is fenced by epoch {current_epoch}"),
        )
    }

    /// The broker is shutting down.
    pub fn shutting_down() -> Self {
        Self::new(ErrorCode::ShuttingDown, "the broker is shutting down")
    }

    /// The broker cannot answer from up-to-date state yet (retry); `leader_address`
    /// is the leader when known.
    pub fn not_ready(detail: impl Into<String>, leader_address: Option<&str>) -> Self {
        pb::Error {
            leader_address: leader_address.unwrap_or_default().to_owned(),
            ..Self::new(ErrorCode::NotReady, detail)
        }
    }
}

impl From<BatchError> for pb::Error {
    fn from(e: BatchError) -> Self {
        pb::Error::corrupt_batch(e)
    }
}

/// A broker's error answer, typed. Every variant keeps the broker's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    /// The broker is not the leader; `leader_address` is the leader when it knows.
    #[error("not the leader (leader: {}): {message}", leader_address.as_deref().unwrap_or("unknown"))]
    NotLeader {
        /// The leader's client address (host:port).
        leader_address: Option<String>,
        /// The broker's message.
        message: String,
    },
    /// No such topic.
    #[error("{}", tidy("unknown topic", .message))]
    UnknownTopic {
        /// The broker's message.
        message: String,
    },
    /// The queue number is not below the topic's queue count.
    #[error("{}", tidy("invalid queue", .message))]
    InvalidQueue {
        /// The broker's message.
        message: String,
    },
    /// The topic already exists.
    #[error("{}", if .message.contains("exists") { .message.clone() } else { tidy("topic exists", .message) })]
    TopicExists {
        /// The broker's message.
        message: String,
    },
    /// A record batch failed its CRC or structural checks.
    #[error("{}", tidy("corrupt batch", .message))]
    CorruptBatch {
        /// The broker's message.
        message: String,
    },
    /// A batch or request is over a size limit.
    #[error("{}", tidy("message too large", .message))]
    MessageTooLarge {
        /// The broker's message.
        message: String,
    },
    /// The offset is outside `[log_start, log_end]`.
    #[error("{}", out_of_range(*.log_start, *.log_end, .message))]
    OffsetOutOfRange {
        /// First offset still stored.
        log_start: u64,
        /// Next offset to be written.
        log_end: u64,
        /// The broker's message (which offset, which queue).
        message: String,
    },
    /// A bounded queue is full; retry after a short backoff.
    #[error("{}", tidy("broker busy", .message))]
    Busy {
        /// The broker's message.
        message: String,
    },
    /// The request timed out on the broker; its outcome is unknown.
    #[error("{}", tidy("broker timeout", .message))]
    Timeout {
        /// The broker's message.
        message: String,
    },
    /// The batch was already stored.
    #[error("{}", tidy("duplicate sequence", .message))]
    DuplicateSequence {
        /// The broker's message.
        message: String,
    },
    /// The batch's sequence is not the next one expected.
    #[error("{}", tidy("out-of-order sequence", .message))]
    OutOfOrderSequence {
        /// The broker's message.
        message: String,
    },
    /// The request is malformed or breaks a rule.
    #[error("{}", tidy("invalid request", .message))]
    InvalidRequest {
        /// The broker's message.
        message: String,
    },
    /// The API or version is not supported.
    #[error("{}", tidy("unsupported version", .message))]
    UnsupportedVersion {
        /// The broker's message.
        message: String,
    },
    /// The broker could not write its log.
    #[error("{}", tidy("storage error", .message))]
    StorageError {
        /// The broker's message.
        message: String,
    },
    /// The member is not in the group.
    #[error("{}", tidy("unknown member", .message))]
    UnknownMember {
        /// The broker's message.
        message: String,
    },
    /// The generation is not the group's current one.
    #[error("{}", tidy("stale generation", .message))]
    StaleGeneration {
        /// The broker's message.
        message: String,
    },
    /// The group is rebalancing.
    #[error("{}", tidy("rebalance in progress", .message))]
    RebalanceInProgress {
        /// The broker's message.
        message: String,
    },
    /// The group still has members.
    #[error("{}", tidy("group not empty", .message))]
    GroupNotEmpty {
        /// The broker's message.
        message: String,
    },
    /// No such group.
    #[error("{}", tidy("unknown group", .message))]
    UnknownGroup {
        /// The broker's message.
        message: String,
    },
    /// The producer's epoch is older than the broker's.
    #[error("{}", tidy("fenced producer", .message))]
    FencedProducer {
        /// The broker's message.
        message: String,
    },
    /// The broker is shutting down.
    #[error("{}", tidy("broker shutting down", .message))]
    ShuttingDown {
        /// The broker's message.
        message: String,
    },
    /// The broker cannot answer from up-to-date state yet (no leader known, or the
    /// read could not be confirmed); retry after a backoff.
    #[error("{}", tidy("broker not ready", .message))]
    NotReady {
        /// The leader's client address, when the broker knows it.
        leader_address: Option<String>,
        /// The broker's message.
        message: String,
    },
    /// Another membership change is still uncommitted; retry shortly.
    #[error("{}", tidy("membership change in progress", .message))]
    MembershipChangeInProgress {
        /// The broker's message.
        message: String,
    },
    /// The membership change is not allowed (the message says why).
    #[error("{}", tidy("invalid membership change", .message))]
    InvalidMembershipChange {
        /// The broker's message.
        message: String,
    },
    /// The request came from another cluster or from a replaced data directory.
    #[error("{}", tidy("wrong cluster", .message))]
    WrongCluster {
        /// The broker's message.
        message: String,
    },
    /// The connection is not logged in, or the login failed.
    #[error("{}", tidy("authentication failed", .message))]
    AuthenticationFailed {
        /// The broker's message.
        message: String,
    },
    /// The principal may not do this to this topic.
    #[error("{}", tidy("not authorized", .message))]
    TopicAuthorizationFailed {
        /// The broker's message.
        message: String,
    },
    /// The principal may not do this to this consumer group.
    #[error("{}", tidy("not authorized", .message))]
    GroupAuthorizationFailed {
        /// The broker's message.
        message: String,
    },
    /// The principal may not do this to the cluster.
    #[error("{}", tidy("not authorized", .message))]
    ClusterAuthorizationFailed {
        /// The broker's message.
        message: String,
    },
    /// A code this client does not know (a newer broker), or `NONE` with an error.
    #[error("error code {code}: {message}")]
    Unknown {
        /// The raw code.
        code: i32,
        /// The broker's message.
        message: String,
    },
}

/// `prefix: message`, unless the broker's message already says what `prefix` says
/// (`unknown topic "orders"` needs no `unknown topic: ` in front).
/// The broker's message (it names the offset and the queue), else the range.
fn out_of_range(log_start: u64, log_end: u64, message: &str) -> String {
    if message.is_empty() {
        format!("offset out of range [{log_start}, {log_end}]")
    } else {
        tidy("offset out of range", message)
    }
}

fn tidy(prefix: &str, message: &str) -> String {
    if message.to_ascii_lowercase().contains(prefix) {
        message.to_owned()
    } else {
        format!("{prefix}: {message}")
    }
}

impl ServerError {
    /// Whether trying again (after a backoff, maybe on another broker) can succeed.
    /// True for a leader change, overload, timeouts, shutdown and storage failure
    /// (a node that cannot write stops leading).
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            ServerError::NotLeader { .. }
                | ServerError::Busy { .. }
                | ServerError::Timeout { .. }
                | ServerError::ShuttingDown { .. }
                | ServerError::StorageError { .. }
                | ServerError::NotReady { .. }
                | ServerError::MembershipChangeInProgress { .. }
        )
    }

    /// The wire code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ServerError::NotLeader { .. } => ErrorCode::NotLeader,
            ServerError::UnknownTopic { .. } => ErrorCode::UnknownTopic,
            ServerError::InvalidQueue { .. } => ErrorCode::InvalidQueue,
            ServerError::TopicExists { .. } => ErrorCode::TopicExists,
            ServerError::CorruptBatch { .. } => ErrorCode::CorruptBatch,
            ServerError::MessageTooLarge { .. } => ErrorCode::MessageTooLarge,
            ServerError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            ServerError::Busy { .. } => ErrorCode::Busy,
            ServerError::Timeout { .. } => ErrorCode::Timeout,
            ServerError::DuplicateSequence { .. } => ErrorCode::DuplicateSequence,
            ServerError::OutOfOrderSequence { .. } => ErrorCode::OutOfOrderSequence,
            ServerError::InvalidRequest { .. } => ErrorCode::InvalidRequest,
            ServerError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            ServerError::StorageError { .. } => ErrorCode::StorageError,
            ServerError::UnknownMember { .. } => ErrorCode::UnknownMember,
            ServerError::StaleGeneration { .. } => ErrorCode::StaleGeneration,
            ServerError::RebalanceInProgress { .. } => ErrorCode::RebalanceInProgress,
            ServerError::GroupNotEmpty { .. } => ErrorCode::GroupNotEmpty,
            ServerError::UnknownGroup { .. } => ErrorCode::UnknownGroup,
            ServerError::FencedProducer { .. } => ErrorCode::FencedProducer,
            ServerError::ShuttingDown { .. } => ErrorCode::ShuttingDown,
            ServerError::NotReady { .. } => ErrorCode::NotReady,
            ServerError::MembershipChangeInProgress { .. } => ErrorCode::MembershipChangeInProgress,
            ServerError::InvalidMembershipChange { .. } => ErrorCode::InvalidMembershipChange,
            ServerError::WrongCluster { .. } => ErrorCode::WrongCluster,
            ServerError::AuthenticationFailed { .. } => ErrorCode::AuthenticationFailed,
            ServerError::TopicAuthorizationFailed { .. } => ErrorCode::TopicAuthorizationFailed,
            ServerError::GroupAuthorizationFailed { .. } => ErrorCode::GroupAuthorizationFailed,
            ServerError::ClusterAuthorizationFailed { .. } => ErrorCode::ClusterAuthorizationFailed,
            ServerError::Unknown { .. } => ErrorCode::None,
        }
    }
}

impl From<pb::Error> for ServerError {
    fn from(e: pb::Error) -> Self {
        let message = e.message;
        match ErrorCode::try_from(e.code) {
            Ok(ErrorCode::NotLeader) => ServerError::NotLeader {
                leader_address: (!e.leader_address.is_empty()).then_some(e.leader_address),
                message,
            },
            Ok(ErrorCode::UnknownTopic) => ServerError::UnknownTopic { message },
            Ok(ErrorCode::InvalidQueue) => ServerError::InvalidQueue { message },
            Ok(ErrorCode::TopicExists) => ServerError::TopicExists { message },
            Ok(ErrorCode::CorruptBatch) => ServerError::CorruptBatch { message },
            Ok(ErrorCode::MessageTooLarge) => ServerError::MessageTooLarge { message },
            Ok(ErrorCode::OffsetOutOfRange) => ServerError::OffsetOutOfRange {
                log_start: e.log_start,
                log_end: e.log_end,
                message,
            },
            Ok(ErrorCode::Busy) => ServerError::Busy { message },
            Ok(ErrorCode::Timeout) => ServerError::Timeout { message },
            Ok(ErrorCode::DuplicateSequence) => ServerError::DuplicateSequence { message },
            Ok(ErrorCode::OutOfOrderSequence) => ServerError::OutOfOrderSequence { message },
            Ok(ErrorCode::InvalidRequest) => ServerError::InvalidRequest { message },
            Ok(ErrorCode::UnsupportedVersion) => ServerError::UnsupportedVersion { message },
            Ok(ErrorCode::StorageError) => ServerError::StorageError { message },
            Ok(ErrorCode::UnknownMember) => ServerError::UnknownMember { message },
            Ok(ErrorCode::StaleGeneration) => ServerError::StaleGeneration { message },
            Ok(ErrorCode::RebalanceInProgress) => ServerError::RebalanceInProgress { message },
            Ok(ErrorCode::GroupNotEmpty) => ServerError::GroupNotEmpty { message },
            Ok(ErrorCode::UnknownGroup) => ServerError::UnknownGroup { message },
            Ok(ErrorCode::FencedProducer) => ServerError::FencedProducer { message },
            Ok(ErrorCode::ShuttingDown) => ServerError::ShuttingDown { message },
            Ok(ErrorCode::NotReady) => ServerError::NotReady {
                leader_address: (!e.leader_address.is_empty()).then_some(e.leader_address),
                message,
            },
            Ok(ErrorCode::MembershipChangeInProgress) => {
                ServerError::MembershipChangeInProgress { message }
            }
            Ok(ErrorCode::InvalidMembershipChange) => {
                ServerError::InvalidMembershipChange { message }
            }
            Ok(ErrorCode::WrongCluster) => ServerError::WrongCluster { message },
            Ok(ErrorCode::AuthenticationFailed) => ServerError::AuthenticationFailed { message },
            Ok(ErrorCode::TopicAuthorizationFailed) => {
                ServerError::TopicAuthorizationFailed { message }
            }
            Ok(ErrorCode::GroupAuthorizationFailed) => {
                ServerError::GroupAuthorizationFailed { message }
            }
            Ok(ErrorCode::ClusterAuthorizationFailed) => {
                ServerError::ClusterAuthorizationFailed { message }
            }
            Ok(ErrorCode::None) | Err(_) => ServerError::Unknown {
                code: e.code,
                message,
            },
        }
    }
}

/// An error and its causes on one line, joined by ": ", skipping a cause whose text
/// is already there (many errors quote their source in their own message). What the
/// binaries print for a failure.
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut next = Some(e);
    while let Some(cause) = next {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        next = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_maps_to_its_own_server_error() {
        for code in 1..=25 {
            let code = ErrorCode::try_from(code).expect("known code");
            let server = ServerError::from(pb::Error::new(code, "x"));
            assert_eq!(server.code(), code, "{server}");
        }
    }

    #[test]
    fn not_leader_carries_the_leader_address() {
        let e = ServerError::from(pb::Error::not_leader(Some("10.0.0.2:7070")));
        assert_eq!(
            e,
            ServerError::NotLeader {
                leader_address: Some("10.0.0.2:7070".into()),
                message: "not the leader".into()
            }
        );
        assert!(e.is_retriable());
        let unknown = ServerError::from(pb::Error::not_leader(None));
        assert!(matches!(
            unknown,
            ServerError::NotLeader {
                leader_address: None,
                ..
            }
        ));
    }

    #[test]
    fn offset_out_of_range_carries_the_range() {
        let e = ServerError::from(pb::Error::offset_out_of_range(5, 9));
        assert_eq!(
            e,
            ServerError::OffsetOutOfRange {
                log_start: 5,
                log_end: 9,
                message: "offset out of range [5, 9]".into(),
            }
        );
        assert!(!e.is_retriable());
        let e = ServerError::from(pb::Error {
            message: "offset 7 is outside [120, 500] of orders/0".into(),
            ..pb::Error::offset_out_of_range(120, 500)
        });
        assert_eq!(
            e.to_string(),
            "offset out of range: offset 7 is outside [120, 500] of orders/0"
        );
    }

    #[test]
    fn unknown_codes_are_kept() {
        let e = ServerError::from(pb::Error {
            code: 999,
            message: "new".into(),
            ..Default::default()
        });
        assert!(matches!(e, ServerError::Unknown { code: 999, .. }));
    }
}
