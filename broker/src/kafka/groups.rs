//! Kafka consumer groups over raftmq's coordinator. raftmq assigns queues on the
//! broker (incrementally, a queue handed over only once its previous owner let it
//! go); Kafka clients expect a leader member to assign. The adapter keeps the
//! broker's assignment: no member is named leader, so every member sends an empty
//! SyncGroup and receives the assignment raftmq computed for it. A Kafka heartbeat
//! asks raftmq's coordinator; when the generation moved on, or the member's
//! assignment differs from what it was last given, the member is told
//! `REBALANCE_IN_PROGRESS` and rejoins, which is how it picks its new assignment up.
//! Offsets are the same committed offsets raftmq clients use.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, ConsumerProtocolAssignment, ConsumerProtocolSubscription, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest,
    SyncGroupResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use raftmq_proto::pb;

use super::errors::{code, group_code};
use super::topics::{broker_id, cluster_metadata, name};
use super::KafkaContext;

/// Assignments handed to members in SyncGroup, to tell a heartbeat whether the
/// member's assignment changed since. Soft state: a member not found here (after a
/// coordinator failover) is simply asked to rejoin.
#[derive(Debug, Default)]
pub(super) struct GivenAssignments {
    given: std::sync::Mutex<HashMap<GroupMember, Assignment>>,
}

/// (group, member id).
type GroupMember = (String, String);
/// (topic, queue) pairs, sorted.
type Assignment = Vec<(String, u32)>;

/// At most this many members are remembered; beyond it the table starts over (the
/// members then rejoin once).
const MAX_REMEMBERED_MEMBERS: usize = 100_000;

impl GivenAssignments {
    fn set(&self, group: &str, member: &str, assignment: Vec<(String, u32)>) {
        let mut given = self.given.lock().expect("not poisoned");
        if given.len() >= MAX_REMEMBERED_MEMBERS {
            given.clear();
        }
        given.insert((group.to_owned(), member.to_owned()), assignment);
    }

    fn matches(&self, group: &str, member: &str, assignment: &[(String, u32)]) -> bool {
        let given = self.given.lock().expect("not poisoned");
        given
            .get(&(group.to_owned(), member.to_owned()))
            .is_some_and(|a| a == assignment)
    }

    fn forget(&self, group: &str, member: &str) {
        let mut given = self.given.lock().expect("not poisoned");
        given.remove(&(group.to_owned(), member.to_owned()));
    }
}

fn sorted(assignment: &[pb::TopicQueue]) -> Vec<(String, u32)> {
    let mut v: Vec<(String, u32)> = assignment
        .iter()
        .map(|tq| (tq.topic.clone(), tq.queue))
        .collect();
    v.sort();
    v
}

/// The consumer protocol's assignment bytes (version 0) for `assignment`.
fn encode_assignment(assignment: &[(String, u32)]) -> Bytes {
    let mut by_topic: Vec<TopicPartition> = Vec::new();
    for (topic, queue) in assignment {
        match by_topic.last_mut() {
            Some(t) if t.topic.0.as_str() == topic => t.partitions.push(*queue as i32),
            _ => {
                let mut t = TopicPartition::default();
                t.topic = name(topic);
                t.partitions = vec![*queue as i32];
                by_topic.push(t);
            }
        }
    }
    let mut message = ConsumerProtocolAssignment::default();
    message.assigned_partitions = by_topic;
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    if message.encode(&mut buf, 0).is_err() {
        return Bytes::new();
    }
    buf.freeze()
}

/// The topics a member subscribes to, from its consumer-protocol metadata.
fn subscription(metadata: &Bytes) -> Option<Vec<String>> {
    let mut buf = metadata.clone();
    if buf.len() < 2 {
        return None;
    }
    let version = i16::from_be_bytes([buf[0], buf[1]]);
    let _ = bytes::Buf::get_i16(&mut buf);
    let s = ConsumerProtocolSubscription::decode(&mut buf, version.clamp(0, 3)).ok()?;
    Some(s.topics.iter().map(|t| t.as_str().to_owned()).collect())
}

fn strategy(protocol: &str) -> pb::AssignmentStrategy {
    match protocol {
        "roundrobin" => pb::AssignmentStrategy::RoundRobin,
        "cooperative-sticky" | "sticky" => pb::AssignmentStrategy::Sticky,
        _ => pb::AssignmentStrategy::Range,
    }
}

/// The coordinator of every group is the metadata group's leader.
pub(super) async fn find_coordinator(
    context: &KafkaContext,
    request: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let mut response = FindCoordinatorResponse::default();
    let found: Result<(i32, String, i32), (i16, String)> = async {
        if request.key_type != 0 {
            return Err((
                code::INVALID_REQUEST,
                "transaction coordinators are not supported".to_owned(),
            ));
        }
        let m = cluster_metadata(context, Vec::new())
            .await
            .map_err(|e| (code::COORDINATOR_NOT_AVAILABLE, e.message))?;
        let leader = m
            .nodes
            .iter()
            .find(|n| n.node_id == m.leader_id && m.leader_id != 0)
            .ok_or((
                code::COORDINATOR_NOT_AVAILABLE,
                "no leader known".to_owned(),
            ))?;
        let (host, port) = context.kafka_address(leader).ok_or((
            code::COORDINATOR_NOT_AVAILABLE,
            "leader address unusable".to_owned(),
        ))?;
        Ok((broker_id(leader.node_id).0, host, port))
    }
    .await;
    if version >= 4 {
        let keys = if request.coordinator_keys.is_empty() {
            vec![request.key.clone()]
        } else {
            request.coordinator_keys.clone()
        };
        response.coordinators = keys
            .into_iter()
            .map(|key| {
                let mut c = Coordinator::default();
                c.key = key;
                match &found {
                    Ok((id, host, port)) => {
                        c.node_id = BrokerId(*id);
                        c.host = StrBytes::from_string(host.clone());
                        c.port = *port;
                    }
                    Err((error_code, message)) => {
                        c.error_code = *error_code;
                        c.error_message = Some(StrBytes::from_string(message.clone()));
                        c.node_id = BrokerId(-1);
                        c.port = -1;
                    }
                }
                c
            })
            .collect();
        return response;
    }
    match found {
        Ok((id, host, port)) => {
            response.node_id = BrokerId(id);
            response.host = StrBytes::from_string(host);
            response.port = port;
        }
        Err((error_code, message)) => {
            response.error_code = error_code;
            if version >= 1 {
                response.error_message = Some(StrBytes::from_string(message));
            }
            response.node_id = BrokerId(-1);
            response.port = -1;
        }
    }
    response
}

pub(super) async fn join_group(
    context: &KafkaContext,
    request: JoinGroupRequest,
) -> JoinGroupResponse {
    let mut response = JoinGroupResponse::default();
    response.generation_id = -1;
    response.member_id = request.member_id.clone();
    if request.protocol_type.as_str() != "consumer" {
        response.error_code = code::INCONSISTENT_GROUP_PROTOCOL;
        return response;
    }
    // Prefer an eager protocol (the broker's assignment is handed over whole).
    let protocol = request
        .protocols
        .iter()
        .find(|p| matches!(p.name.as_str(), "range" | "roundrobin"))
        .or_else(|| request.protocols.first());
    let Some(protocol) = protocol else {
        response.error_code = code::INCONSISTENT_GROUP_PROTOCOL;
        return response;
    };
    let Some(topics) = subscription(&protocol.metadata) else {
        response.error_code = code::INCONSISTENT_GROUP_PROTOCOL;
        return response;
    };
    let group = request.group_id.0.as_str().to_owned();
    let body = pb::request::Body::JoinGroup(pb::JoinGroupRequest {
        group: group.clone(),
        member_id: request.member_id.as_str().to_owned(),
        topics,
        session_timeout_ms: request.session_timeout_ms.max(0) as u32,
        strategy: strategy(protocol.name.as_str()) as i32,
        client_id: String::new(),
    });
    match context.service.call(body).await {
        Ok(pb::response::Body::JoinGroup(joined)) => {
            response.generation_id = i32::try_from(joined.generation).unwrap_or(i32::MAX);
            response.member_id = StrBytes::from_string(joined.member_id);
            response.protocol_name = Some(protocol.name.clone());
            response.protocol_type = Some(StrBytes::from_static_str("consumer"));
            // No member is the leader: the broker has assigned already.
            response.leader = StrBytes::from_static_str("");
        }
        Ok(_) => response.error_code = code::INVALID_REQUEST,
        Err(f) => response.error_code = group_code(f.code()),
    }
    response
}

/// The member's assignment in the group's current generation, from the
/// coordinator's view of the group.
pub(super) async fn sync_group(
    context: &KafkaContext,
    request: SyncGroupRequest,
) -> SyncGroupResponse {
    let mut response = SyncGroupResponse::default();
    response.protocol_type = request.protocol_type.clone();
    response.protocol_name = request.protocol_name.clone();
    let group = request.group_id.0.as_str().to_owned();
    let member = request.member_id.as_str().to_owned();
    let body = pb::request::Body::Heartbeat(pb::HeartbeatRequest {
        group: group.clone(),
        member_id: member.clone(),
        generation: request.generation_id.max(0) as u64,
    });
    match context.service.call(body).await {
        Ok(pb::response::Body::Heartbeat(h)) => {
            if h.generation != request.generation_id.max(0) as u64 {
                response.error_code = code::REBALANCE_IN_PROGRESS;
                return response;
            }
            let assignment = sorted(&h.assignment);
            response.assignment = encode_assignment(&assignment);
            context.assignments.set(&group, &member, assignment);
        }
        Ok(_) => response.error_code = code::INVALID_REQUEST,
        Err(f) => response.error_code = group_code(f.code()),
    }
    response
}

pub(super) async fn heartbeat(
    context: &KafkaContext,
    request: HeartbeatRequest,
) -> HeartbeatResponse {
    let mut response = HeartbeatResponse::default();
    let group = request.group_id.0.as_str().to_owned();
    let member = request.member_id.as_str().to_owned();
    let generation = request.generation_id.max(0) as u64;
    let body = pb::request::Body::Heartbeat(pb::HeartbeatRequest {
        group: group.clone(),
        member_id: member.clone(),
        generation,
    });
    match context.service.call(body).await {
        Ok(pb::response::Body::Heartbeat(h)) => {
            if h.generation != generation
                || !context
                    .assignments
                    .matches(&group, &member, &sorted(&h.assignment))
            {
                response.error_code = code::REBALANCE_IN_PROGRESS;
            }
        }
        Ok(_) => response.error_code = code::INVALID_REQUEST,
        Err(f) => response.error_code = group_code(f.code()),
    }
    response
}

pub(super) async fn leave_group(
    context: &KafkaContext,
    request: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let mut response = LeaveGroupResponse::default();
    let group = request.group_id.0.as_str().to_owned();
    let members: Vec<String> = if version >= 3 {
        request
            .members
            .iter()
            .map(|m| m.member_id.as_str().to_owned())
            .collect()
    } else {
        vec![request.member_id.as_str().to_owned()]
    };
    for member in members {
        let body = pb::request::Body::LeaveGroup(pb::LeaveGroupRequest {
            group: group.clone(),
            member_id: member.clone(),
        });
        let error_code = match context.service.call(body).await {
            Ok(_) => code::NONE,
            Err(f) => group_code(f.code()),
        };
        context.assignments.forget(&group, &member);
        if version >= 3 {
            let mut m = MemberResponse::default();
            m.member_id = StrBytes::from_string(member);
            m.error_code = error_code;
            response.members.push(m);
        } else {
            response.error_code = error_code;
        }
    }
    response
}

pub(super) async fn offset_commit(
    context: &KafkaContext,
    request: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let mut offsets = Vec::new();
    let mut refused: HashMap<(String, i32), i16> = HashMap::new();
    for topic in &request.topics {
        for p in &topic.partitions {
            let t = topic.name.0.as_str().to_owned();
            match (
                u32::try_from(p.partition_index),
                u64::try_from(p.committed_offset),
            ) {
                (Ok(queue), Ok(offset)) => offsets.push(pb::QueueOffset {
                    topic: t,
                    queue,
                    offset,
                }),
                _ => {
                    refused.insert((t, p.partition_index), code::INVALID_REQUEST);
                }
            }
        }
    }
    let generation = request.generation_id_or_member_epoch.max(0) as u64;
    let body = pb::request::Body::OffsetCommit(pb::OffsetCommitRequest {
        group: request.group_id.0.as_str().to_owned(),
        member_id: request.member_id.as_str().to_owned(),
        generation,
        offsets,
    });
    let total: usize = request.topics.iter().map(|t| t.partitions.len()).sum();
    let outcome = if refused.len() == total {
        code::NONE
    } else {
        match context.service.call(body).await {
            Ok(_) => code::NONE,
            Err(f) => group_code(f.code()),
        }
    };
    let mut response = OffsetCommitResponse::default();
    for topic in request.topics {
        let mut t = OffsetCommitResponseTopic::default();
        for p in topic.partitions {
            let mut r = OffsetCommitResponsePartition::default();
            r.partition_index = p.partition_index;
            r.error_code = refused
                .get(&(topic.name.0.as_str().to_owned(), p.partition_index))
                .copied()
                .unwrap_or(outcome);
            t.partitions.push(r);
        }
        t.name = topic.name;
        response.topics.push(t);
    }
    response
}

pub(super) async fn offset_fetch(
    context: &KafkaContext,
    request: OffsetFetchRequest,
) -> OffsetFetchResponse {
    let mut response = OffsetFetchResponse::default();
    let group = request.group_id.0.as_str().to_owned();
    let queues: Vec<pb::TopicQueue> = request
        .topics
        .iter()
        .flatten()
        .flat_map(|t| {
            t.partition_indexes.iter().map(|&p| pb::TopicQueue {
                topic: t.name.0.as_str().to_owned(),
                queue: p.max(0) as u32,
            })
        })
        .collect();
    let body = pb::request::Body::OffsetFetch(pb::OffsetFetchRequest {
        group,
        queues: queues.clone(),
    });
    let committed = match context.service.call(body).await {
        Ok(pb::response::Body::OffsetFetch(f)) => f.offsets,
        Ok(_) => {
            response.error_code = code::INVALID_REQUEST;
            return response;
        }
        Err(f) => {
            response.error_code = group_code(f.code());
            return response;
        }
    };
    let lookup = |topic: &str, queue: u32| {
        committed
            .iter()
            .find(|o| o.topic == topic && o.queue == queue)
            .map_or(-1, |o| o.offset as i64)
    };
    let wanted: Vec<(String, Vec<u32>)> = match &request.topics {
        Some(topics) => topics
            .iter()
            .map(|t| {
                (
                    t.name.0.as_str().to_owned(),
                    t.partition_indexes
                        .iter()
                        .map(|&p| p.max(0) as u32)
                        .collect(),
                )
            })
            .collect(),
        None => {
            let mut by_topic: Vec<(String, Vec<u32>)> = Vec::new();
            for o in &committed {
                match by_topic.iter_mut().find(|(t, _)| *t == o.topic) {
                    Some((_, qs)) => qs.push(o.queue),
                    None => by_topic.push((o.topic.clone(), vec![o.queue])),
                }
            }
            by_topic
        }
    };
    for (topic, partitions) in wanted {
        let mut t = OffsetFetchResponseTopic::default();
        for queue in partitions {
            let mut p = OffsetFetchResponsePartition::default();
            p.partition_index = queue as i32;
            p.committed_offset = lookup(&topic, queue);
            p.committed_leader_epoch = -1;
            p.metadata = Some(StrBytes::from_static_str(""));
            t.partitions.push(p);
        }
        t.name = name(&topic);
        response.topics.push(t);
    }
    response
}

pub(super) async fn list_groups(
    context: &KafkaContext,
    _request: ListGroupsRequest,
) -> ListGroupsResponse {
    let mut response = ListGroupsResponse::default();
    match context
        .service
        .call(pb::request::Body::ListGroups(pb::ListGroupsRequest {}))
        .await
    {
        Ok(pb::response::Body::ListGroups(l)) => {
            response.groups = l
                .groups
                .into_iter()
                .map(|g| {
                    let mut listed = ListedGroup::default();
                    listed.group_id = GroupId(StrBytes::from_string(g));
                    listed.protocol_type = StrBytes::from_static_str("consumer");
                    listed.group_state = StrBytes::from_static_str("Stable");
                    listed.group_type = StrBytes::from_static_str("classic");
                    listed
                })
                .collect();
        }
        Ok(_) => response.error_code = code::INVALID_REQUEST,
        Err(f) => response.error_code = group_code(f.code()),
    }
    response
}

pub(super) async fn describe_groups(
    context: &KafkaContext,
    request: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let mut response = DescribeGroupsResponse::default();
    for group in request.groups {
        let mut d = DescribedGroup::default();
        d.protocol_type = StrBytes::from_static_str("consumer");
        let body = pb::request::Body::DescribeGroup(pb::DescribeGroupRequest {
            group: group.0.as_str().to_owned(),
        });
        match context.service.call(body).await {
            Ok(pb::response::Body::DescribeGroup(g)) => {
                d.group_state = StrBytes::from_static_str(if g.members.is_empty() {
                    "Empty"
                } else {
                    "Stable"
                });
                d.members = g
                    .members
                    .iter()
                    .map(|m| {
                        let mut member = DescribedGroupMember::default();
                        member.member_id = StrBytes::from_string(m.member_id.clone());
                        member.client_id = StrBytes::from_string(m.client_id.clone());
                        member.member_assignment = encode_assignment(&sorted(&m.assignment));
                        member
                    })
                    .collect();
            }
            Ok(_) => d.error_code = code::INVALID_REQUEST,
            Err(f) if f.code() == pb::ErrorCode::UnknownGroup => {
                d.group_state = StrBytes::from_static_str("Dead");
            }
            Err(f) => {
                d.error_code = group_code(f.code());
                d.error_message = Some(StrBytes::from_string(f.error.message));
            }
        }
        d.group_id = group;
        response.groups.push(d);
    }
    response
}
