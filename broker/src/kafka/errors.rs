//! The broker's error codes as Kafka error codes. Each maps to the Kafka code a
//! Kafka client acts on the same way: retriable where raftmq's is retriable (a
//! client refreshes its metadata on `NOT_LEADER_OR_FOLLOWER`), final where it is
//! final.

use raftmq_proto::pb::ErrorCode;

/// Kafka error codes used by the adapter (from the Kafka protocol's error table).
#[allow(missing_docs)]
pub mod code {
    pub const NONE: i16 = 0;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const NOT_COORDINATOR: i16 = 16;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const NOT_ENOUGH_REPLICAS: i16 = 19;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const NOT_CONTROLLER: i16 = 41;
    pub const INVALID_REQUEST: i16 = 42;
    pub const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
    pub const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const INVALID_CONFIG: i16 = 40;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const INVALID_RECORD: i16 = 87;
    pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
    pub const GROUP_AUTHORIZATION_FAILED: i16 = 30;
    pub const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
    pub const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
    pub const ILLEGAL_SASL_STATE: i16 = 34;
    pub const SASL_AUTHENTICATION_FAILED: i16 = 58;
}

/// The Kafka code for a broker error on a partition-level operation (produce,
/// fetch, list offsets) or a topic operation.
pub fn kafka_code(error: ErrorCode) -> i16 {
    use ErrorCode as E;
    match error {
        E::None => code::NONE,
        // A redirect, an election, a group still starting, a broker shutting down:
        // the client refreshes its metadata and retries at the leader.
        E::NotLeader | E::NotReady | E::ShuttingDown => code::NOT_LEADER_OR_FOLLOWER,
        E::UnknownTopic | E::InvalidQueue => code::UNKNOWN_TOPIC_OR_PARTITION,
        E::TopicExists => code::TOPIC_ALREADY_EXISTS,
        E::CorruptBatch => code::CORRUPT_MESSAGE,
        E::MessageTooLarge => code::MESSAGE_TOO_LARGE,
        E::OffsetOutOfRange => code::OFFSET_OUT_OF_RANGE,
        // Too many proposals in flight: retriable, as Kafka's "not enough replicas".
        E::Busy => code::NOT_ENOUGH_REPLICAS,
        E::Timeout => code::REQUEST_TIMED_OUT,
        E::DuplicateSequence => code::DUPLICATE_SEQUENCE_NUMBER,
        // A batch ahead of its producer's next sequence: an earlier one was refused
        // or lost before it was stored, and its retry comes first. Kafka answers
        // OUT_OF_ORDER_SEQUENCE_NUMBER, on which librdkafka bumps the producer
        // epoch and renumbers every unacknowledged message of every partition, so a
        // batch stored whose answer was lost is then stored again (librdkafka issue
        // 4953). A retriable "not stored" answer makes every client resend in order.
        E::OutOfOrderSequence => code::NOT_ENOUGH_REPLICAS,
        E::FencedProducer => code::INVALID_PRODUCER_EPOCH,
        E::StorageError => code::KAFKA_STORAGE_ERROR,
        E::UnknownMember => code::UNKNOWN_MEMBER_ID,
        E::StaleGeneration => code::ILLEGAL_GENERATION,
        E::RebalanceInProgress => code::REBALANCE_IN_PROGRESS,
        E::GroupNotEmpty => code::NON_EMPTY_GROUP,
        E::UnknownGroup => code::GROUP_ID_NOT_FOUND,
        E::UnsupportedVersion => code::UNSUPPORTED_VERSION,
        E::MembershipChangeInProgress => code::REQUEST_TIMED_OUT,
        E::InvalidRequest | E::InvalidMembershipChange | E::WrongCluster => code::INVALID_REQUEST,
        E::AuthenticationFailed => code::SASL_AUTHENTICATION_FAILED,
        E::TopicAuthorizationFailed => code::TOPIC_AUTHORIZATION_FAILED,
        E::GroupAuthorizationFailed => code::GROUP_AUTHORIZATION_FAILED,
        E::ClusterAuthorizationFailed => code::CLUSTER_AUTHORIZATION_FAILED,
    }
}

/// The Kafka code for a broker error on an operation of the controller (topic
/// creation and deletion): a redirect is `NOT_CONTROLLER`.
pub fn controller_code(error: ErrorCode) -> i16 {
    match error {
        ErrorCode::NotLeader | ErrorCode::NotReady | ErrorCode::ShuttingDown => {
            code::NOT_CONTROLLER
        }
        ErrorCode::InvalidRequest => code::INVALID_TOPIC_EXCEPTION,
        other => kafka_code(other),
    }
}

/// The Kafka code for a broker error on a group operation: a redirect is
/// `NOT_COORDINATOR` (the client looks the coordinator up again).
pub fn group_code(error: ErrorCode) -> i16 {
    match error {
        ErrorCode::NotLeader | ErrorCode::ShuttingDown => code::NOT_COORDINATOR,
        ErrorCode::NotReady => code::COORDINATOR_LOAD_IN_PROGRESS,
        other => kafka_code(other),
    }
}
