//! API keys and envelope helpers. The API key of a request is the field number of
//! its `body` oneof; a response answers with the same key.

use crate::pb::{self, request, response};

/// Version of the request schemas in `raftmq.proto`.
pub const API_VERSION: u32 = 1;

/// Identifies a request type: the field number of `Request.body` (and
/// `Response.body`) in `raftmq.proto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum ApiKey {
    /// Create a topic.
    CreateTopic = 10,
    /// Delete a topic.
    DeleteTopic = 11,
    /// Brokers, leader and topics.
    Metadata = 12,
    /// Append a record batch.
    Produce = 13,
    /// Read committed batches (long poll).
    Fetch = 14,
    /// Earliest, latest or by-timestamp offsets.
    ListOffsets = 15,
    /// A node's Raft status.
    ClusterStatus = 16,
    /// Move leadership to another node.
    TransferLeader = 17,
    /// Get an idempotent producer id.
    InitProducer = 18,
    /// Promote a learner to voter.
    AddNode = 19,
    /// Remove a member.
    RemoveNode = 20,
    /// A new node asks to join as a learner.
    JoinCluster = 21,
    /// See `MoveReplicasRequest`.
    MoveReplicas = 22,
    /// See `AdvertiseListenersRequest`.
    AdvertiseListeners = 23,
    /// See `AddDataGroupsRequest`.
    AddDataGroups = 24,
    /// The batches of several queues (see `ProduceManyRequest`).
    ProduceMany = 25,
    /// Reads of several queues with one long poll (see `FetchManyRequest`).
    FetchMany = 26,
    /// Join a consumer group.
    JoinGroup = 30,
    /// Consumer-group heartbeat.
    Heartbeat = 31,
    /// Leave a consumer group.
    LeaveGroup = 32,
    /// Commit consumer offsets.
    OffsetCommit = 33,
    /// Read committed consumer offsets.
    OffsetFetch = 34,
    /// List consumer groups.
    ListGroups = 35,
    /// Describe a consumer group.
    DescribeGroup = 36,
    /// Reset a group's offsets.
    OffsetReset = 37,
    /// Choose a SASL mechanism.
    SaslHandshake = 40,
    /// One SASL message.
    SaslAuthenticate = 41,
    /// Create a user or change its password.
    UpsertUser = 42,
    /// Delete a user.
    DeleteUser = 43,
    /// List users.
    ListUsers = 44,
    /// Add ACLs.
    CreateAcls = 45,
    /// Remove ACLs.
    DeleteAcls = 46,
    /// List ACLs.
    ListAcls = 47,
    /// Broker-to-broker Raft message (one-way).
    Raft = 100,
}

impl ApiKey {
    /// Every API key, in number order.
    pub const ALL: [ApiKey; 34] = [
        ApiKey::CreateTopic,
        ApiKey::DeleteTopic,
        ApiKey::Metadata,
        ApiKey::Produce,
        ApiKey::Fetch,
        ApiKey::ListOffsets,
        ApiKey::ClusterStatus,
        ApiKey::TransferLeader,
        ApiKey::InitProducer,
        ApiKey::AddNode,
        ApiKey::RemoveNode,
        ApiKey::JoinCluster,
        ApiKey::MoveReplicas,
        ApiKey::AdvertiseListeners,
        ApiKey::AddDataGroups,
        ApiKey::ProduceMany,
        ApiKey::FetchMany,
        ApiKey::JoinGroup,
        ApiKey::Heartbeat,
        ApiKey::LeaveGroup,
        ApiKey::OffsetCommit,
        ApiKey::OffsetFetch,
        ApiKey::ListGroups,
        ApiKey::DescribeGroup,
        ApiKey::OffsetReset,
        ApiKey::SaslHandshake,
        ApiKey::SaslAuthenticate,
        ApiKey::UpsertUser,
        ApiKey::DeleteUser,
        ApiKey::ListUsers,
        ApiKey::CreateAcls,
        ApiKey::DeleteAcls,
        ApiKey::ListAcls,
        ApiKey::Raft,
    ];

    /// The field number.
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// The key with field number `value`, if any.
    pub fn from_u32(value: u32) -> Option<ApiKey> {
        ApiKey::ALL.into_iter().find(|k| k.as_u32() == value)
    }

    /// A short name for logs and metrics, e.g. `"produce"`.
    pub fn name(self) -> &'static str {
        match self {
            ApiKey::CreateTopic => "create_topic",
            ApiKey::DeleteTopic => "delete_topic",
            ApiKey::Metadata => "metadata",
            ApiKey::Produce => "produce",
            ApiKey::Fetch => "fetch",
            ApiKey::ListOffsets => "list_offsets",
            ApiKey::ClusterStatus => "cluster_status",
            ApiKey::TransferLeader => "transfer_leader",
            ApiKey::InitProducer => "init_producer",
            ApiKey::AddNode => "add_node",
            ApiKey::RemoveNode => "remove_node",
            ApiKey::JoinCluster => "join_cluster",
            ApiKey::MoveReplicas => "move_replicas",
            ApiKey::AddDataGroups => "add_data_groups",
            ApiKey::ProduceMany => "produce_many",
            ApiKey::FetchMany => "fetch_many",
            ApiKey::AdvertiseListeners => "advertise_listeners",
            ApiKey::JoinGroup => "join_group",
            ApiKey::Heartbeat => "heartbeat",
            ApiKey::LeaveGroup => "leave_group",
            ApiKey::OffsetCommit => "offset_commit",
            ApiKey::OffsetFetch => "offset_fetch",
            ApiKey::ListGroups => "list_groups",
            ApiKey::DescribeGroup => "describe_group",
            ApiKey::OffsetReset => "offset_reset",
            ApiKey::SaslHandshake => "sasl_handshake",
            ApiKey::SaslAuthenticate => "sasl_authenticate",
            ApiKey::UpsertUser => "upsert_user",
            ApiKey::DeleteUser => "delete_user",
            ApiKey::ListUsers => "list_users",
            ApiKey::CreateAcls => "create_acls",
            ApiKey::DeleteAcls => "delete_acls",
            ApiKey::ListAcls => "list_acls",
            ApiKey::Raft => "raft",
        }
    }
}

impl std::fmt::Display for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl request::Body {
    /// The API key of this request body.
    pub fn api_key(&self) -> ApiKey {
        use request::Body as B;
        match self {
            B::CreateTopic(_) => ApiKey::CreateTopic,
            B::DeleteTopic(_) => ApiKey::DeleteTopic,
            B::Metadata(_) => ApiKey::Metadata,
            B::Produce(_) => ApiKey::Produce,
            B::Fetch(_) => ApiKey::Fetch,
            B::ListOffsets(_) => ApiKey::ListOffsets,
            B::ClusterStatus(_) => ApiKey::ClusterStatus,
            B::TransferLeader(_) => ApiKey::TransferLeader,
            B::InitProducer(_) => ApiKey::InitProducer,
            B::AddNode(_) => ApiKey::AddNode,
            B::RemoveNode(_) => ApiKey::RemoveNode,
            B::JoinCluster(_) => ApiKey::JoinCluster,
            B::MoveReplicas(_) => ApiKey::MoveReplicas,
            B::AddDataGroups(_) => ApiKey::AddDataGroups,
            B::ProduceMany(_) => ApiKey::ProduceMany,
            B::FetchMany(_) => ApiKey::FetchMany,
            B::AdvertiseListeners(_) => ApiKey::AdvertiseListeners,
            B::JoinGroup(_) => ApiKey::JoinGroup,
            B::Heartbeat(_) => ApiKey::Heartbeat,
            B::LeaveGroup(_) => ApiKey::LeaveGroup,
            B::OffsetCommit(_) => ApiKey::OffsetCommit,
            B::OffsetFetch(_) => ApiKey::OffsetFetch,
            B::ListGroups(_) => ApiKey::ListGroups,
            B::DescribeGroup(_) => ApiKey::DescribeGroup,
            B::OffsetReset(_) => ApiKey::OffsetReset,
            B::SaslHandshake(_) => ApiKey::SaslHandshake,
            B::SaslAuthenticate(_) => ApiKey::SaslAuthenticate,
            B::UpsertUser(_) => ApiKey::UpsertUser,
            B::DeleteUser(_) => ApiKey::DeleteUser,
            B::ListUsers(_) => ApiKey::ListUsers,
            B::CreateAcls(_) => ApiKey::CreateAcls,
            B::DeleteAcls(_) => ApiKey::DeleteAcls,
            B::ListAcls(_) => ApiKey::ListAcls,
            B::Raft(_) => ApiKey::Raft,
        }
    }
}

impl response::Body {
    /// The API key this response body answers.
    pub fn api_key(&self) -> ApiKey {
        use response::Body as B;
        match self {
            B::CreateTopic(_) => ApiKey::CreateTopic,
            B::DeleteTopic(_) => ApiKey::DeleteTopic,
            B::Metadata(_) => ApiKey::Metadata,
            B::Produce(_) => ApiKey::Produce,
            B::Fetch(_) => ApiKey::Fetch,
            B::ListOffsets(_) => ApiKey::ListOffsets,
            B::ClusterStatus(_) => ApiKey::ClusterStatus,
            B::TransferLeader(_) => ApiKey::TransferLeader,
            B::InitProducer(_) => ApiKey::InitProducer,
            B::AddNode(_) => ApiKey::AddNode,
            B::RemoveNode(_) => ApiKey::RemoveNode,
            B::JoinCluster(_) => ApiKey::JoinCluster,
            B::MoveReplicas(_) => ApiKey::MoveReplicas,
            B::AddDataGroups(_) => ApiKey::AddDataGroups,
            B::ProduceMany(_) => ApiKey::ProduceMany,
            B::FetchMany(_) => ApiKey::FetchMany,
            B::AdvertiseListeners(_) => ApiKey::AdvertiseListeners,
            B::JoinGroup(_) => ApiKey::JoinGroup,
            B::Heartbeat(_) => ApiKey::Heartbeat,
            B::LeaveGroup(_) => ApiKey::LeaveGroup,
            B::OffsetCommit(_) => ApiKey::OffsetCommit,
            B::OffsetFetch(_) => ApiKey::OffsetFetch,
            B::ListGroups(_) => ApiKey::ListGroups,
            B::DescribeGroup(_) => ApiKey::DescribeGroup,
            B::OffsetReset(_) => ApiKey::OffsetReset,
            B::SaslHandshake(_) => ApiKey::SaslHandshake,
            B::SaslAuthenticate(_) => ApiKey::SaslAuthenticate,
            B::UpsertUser(_) => ApiKey::UpsertUser,
            B::DeleteUser(_) => ApiKey::DeleteUser,
            B::ListUsers(_) => ApiKey::ListUsers,
            B::CreateAcls(_) => ApiKey::CreateAcls,
            B::DeleteAcls(_) => ApiKey::DeleteAcls,
            B::ListAcls(_) => ApiKey::ListAcls,
        }
    }
}

impl pb::Request {
    /// A version-1 request.
    pub fn new(correlation_id: u64, body: request::Body) -> Self {
        pb::Request {
            correlation_id,
            api_version: API_VERSION,
            on_behalf_of: String::new(),
            body: Some(body),
        }
    }

    /// The API key, `None` when the body is absent or of an unknown API.
    pub fn api_key(&self) -> Option<ApiKey> {
        self.body.as_ref().map(request::Body::api_key)
    }
}

impl pb::Response {
    /// A successful response.
    pub fn ok(correlation_id: u64, body: response::Body) -> Self {
        pb::Response {
            correlation_id,
            error: None,
            body: Some(body),
        }
    }

    /// An error response (no body).
    pub fn error(correlation_id: u64, error: pb::Error) -> Self {
        pb::Response {
            correlation_id,
            error: Some(error),
            body: None,
        }
    }

    /// The answer to a produce whose batch was already stored: the one response
    /// that carries both an error (`DUPLICATE_SEQUENCE`) and a body (where the batch
    /// was stored). Clients count it as success.
    pub fn duplicate_sequence(correlation_id: u64, base_offset: u64, count: u32) -> Self {
        pb::Response {
            correlation_id,
            error: Some(pb::Error::duplicate_sequence("batch already stored")),
            body: Some(response::Body::Produce(pb::ProduceResponse {
                base_offset,
                count,
            })),
        }
    }

    /// The API key of the body, `None` when absent.
    pub fn api_key(&self) -> Option<ApiKey> {
        self.body.as_ref().map(response::Body::api_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_round_trip_through_their_numbers() {
        for key in ApiKey::ALL {
            assert_eq!(ApiKey::from_u32(key.as_u32()), Some(key));
        }
        assert_eq!(ApiKey::Produce.as_u32(), 13);
        assert_eq!(ApiKey::Raft.as_u32(), 100);
        assert_eq!(ApiKey::AddNode.as_u32(), 19);
        assert_eq!(ApiKey::from_u32(22), Some(ApiKey::MoveReplicas));
        assert_eq!(ApiKey::from_u32(23), Some(ApiKey::AdvertiseListeners));
        assert_eq!(ApiKey::from_u32(24), Some(ApiKey::AddDataGroups));
        assert_eq!(ApiKey::from_u32(25), Some(ApiKey::ProduceMany));
        assert_eq!(ApiKey::from_u32(26), Some(ApiKey::FetchMany));
        assert_eq!(ApiKey::from_u32(27), None);
    }
}
