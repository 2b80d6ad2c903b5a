//! Metadata and topic administration on the Kafka port: Metadata, CreateTopics,
//! DeleteTopics, DescribeConfigs.

use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    DescribeConfigsRequest, DescribeConfigsResponse, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use raftmq_proto::pb;
use std::time::Duration;

use super::errors::{code, controller_code, kafka_code};
use super::KafkaContext;

/// Kafka's resource type number for a topic in DescribeConfigs.
const RESOURCE_TOPIC: i8 = 2;
/// The most partitions (queues) a topic may have.
const MAX_PARTITIONS: i32 = crate::node::MAX_TOPIC_QUEUES as i32;

pub(super) fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

/// A metadata answer while the cluster's metadata is unavailable here: no brokers
/// and no topics, so the client retries (it treats a topic missing from the answer
/// as unknown only once brokers are known).
fn unavailable(mut response: MetadataResponse, wanted: Option<Vec<String>>) -> MetadataResponse {
    response.controller_id = BrokerId(-1);
    if let Some(w) = wanted {
        response.topics = w
            .into_iter()
            .map(|t| {
                let mut topic = MetadataResponseTopic::default();
                topic.name = Some(name(&t));
                topic.error_code = code::LEADER_NOT_AVAILABLE;
                topic
            })
            .collect();
    }
    response
}

/// The cluster as the metadata group describes it, with each queue's leader.
pub(super) async fn cluster_metadata(
    context: &KafkaContext,
    topics: Vec<String>,
) -> Result<pb::MetadataResponse, pb::Error> {
    ask_metadata(context, topics, false).await
}

async fn ask_metadata(
    context: &KafkaContext,
    topics: Vec<String>,
    local: bool,
) -> Result<pb::MetadataResponse, pb::Error> {
    let body = pb::request::Body::Metadata(pb::MetadataRequest { topics, local });
    match context.service.call(body).await {
        Ok(pb::response::Body::Metadata(m)) => Ok(m),
        Ok(_) => Err(pb::Error::new(
            pb::ErrorCode::InvalidRequest,
            "unexpected answer",
        )),
        Err(f) => Err(f.error),
    }
}

/// How long a Kafka Metadata request waits for this node to know the cluster's
/// members when it cannot get a confirmed answer (a node still starting).
const LOCAL_METADATA_WAIT: Duration = Duration::from_secs(2);

/// What a Kafka Metadata request is answered from: the metadata group's confirmed
/// view, else (no leader during an election, a node catching up) this node's own
/// view, as Kafka's brokers answer from their metadata cache. Never an answer
/// without brokers while the node knows any: librdkafka forgets every broker
/// missing from an answer, the group coordinator with them, and its consumer
/// groups hung for 45 s and more when the metadata leader restarted.
async fn metadata_for_clients(
    context: &KafkaContext,
    topics: Vec<String>,
) -> Result<pb::MetadataResponse, pb::Error> {
    let error = match ask_metadata(context, topics.clone(), false).await {
        Ok(m) => return Ok(m),
        Err(e) => e,
    };
    tracing::debug!(error = %error.message, "kafka metadata: answering from this node's view");
    let deadline = tokio::time::Instant::now() + LOCAL_METADATA_WAIT;
    loop {
        match ask_metadata(context, topics.clone(), true).await {
            Ok(m) if !m.nodes.is_empty() => return Ok(m),
            _ if tokio::time::Instant::now() >= deadline => return Err(error),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A queue's leader and replicas: its data group's, or the metadata group's when
/// the topic has no data groups.
pub(super) fn queue_leader(
    m: &pb::MetadataResponse,
    topic: &pb::TopicInfo,
    queue: u32,
) -> (u64, Vec<u64>) {
    match topic.queue_groups.get(queue as usize) {
        Some(&group) if group != 0 => match m.groups.iter().find(|g| g.group_id == group) {
            Some(g) => {
                let leader = if g.leader_id != 0 {
                    g.leader_id
                } else {
                    // Not running here: its preferred leader, where leadership is
                    // balanced to (a wrong guess is answered NOT_LEADER and the
                    // client asks again).
                    g.preferred_leader_id
                };
                let replicas = if g.voters.is_empty() {
                    g.replicas.clone()
                } else {
                    g.voters.clone()
                };
                (leader, replicas)
            }
            None => (0, Vec::new()),
        },
        _ => (m.leader_id, m.nodes.iter().map(|n| n.node_id).collect()),
    }
}

pub(super) fn broker_id(node: u64) -> BrokerId {
    BrokerId(i32::try_from(node).unwrap_or(-1))
}

pub(super) async fn metadata(
    context: &KafkaContext,
    request: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    let mut response = MetadataResponse::default();
    // v0: an empty list means every topic; v1+: null means every topic, empty none.
    let wanted: Option<Vec<String>> = match request.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(
            t.into_iter()
                .filter_map(|t| t.name.map(|n| n.0.as_str().to_owned()))
                .collect(),
        ),
    };
    // Topics the principal may not see are answered TOPIC_AUTHORIZATION_FAILED
    // (Kafka's rule), and not asked for.
    let service = &context.service;
    if service.security().checks_acls(service.principal()) && !service.security().acls_current() {
        // A node catching up with the cluster's ACLs cannot tell what the principal
        // may see: it answers as when metadata is unavailable (the client retries).
        return unavailable(response, wanted);
    }
    let (wanted, denied): (Option<Vec<String>>, Vec<String>) = match wanted {
        Some(w) => {
            let (allowed, denied) = w.into_iter().partition(|t| {
                service.security().may(
                    service.principal(),
                    crate::security::acl::ResourceType::Topic,
                    t,
                    crate::security::acl::Operation::Describe,
                )
            });
            (Some(allowed), denied)
        }
        None => (None, Vec::new()),
    };
    let denied_topics = || {
        denied.iter().map(|t| {
            let mut topic = MetadataResponseTopic::default();
            topic.name = Some(name(t));
            topic.error_code = code::TOPIC_AUTHORIZATION_FAILED;
            topic
        })
    };
    // An empty list asks for every topic (those the principal may see): the
    // answer keeps only the ones wanted.
    let asked = match &wanted {
        Some(w) if denied.is_empty() => w.clone(),
        _ => Vec::new(),
    };
    let m = match metadata_for_clients(context, asked).await {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(error = %e.message, "kafka metadata: cluster metadata unavailable");
            return unavailable(response, wanted);
        }
    };
    response.brokers = m
        .nodes
        .iter()
        .filter_map(|n| {
            let (host, port) = context.kafka_address(n)?;
            let mut broker = MetadataResponseBroker::default();
            broker.node_id = broker_id(n.node_id);
            broker.host = StrBytes::from_string(host);
            broker.port = port;
            // Clients with `client.rack` prefer replicas of their own rack.
            broker.rack = (!n.rack.is_empty()).then(|| StrBytes::from_string(n.rack.clone()));
            Some(broker)
        })
        .collect();
    if version >= 2 {
        response.cluster_id = Some(StrBytes::from_string(format!("{:016x}", m.cluster_id)));
    }
    response.controller_id = if m.leader_id == 0 {
        BrokerId(-1)
    } else {
        broker_id(m.leader_id)
    };
    let mut topics: Vec<MetadataResponseTopic> = m
        .topics
        .iter()
        .filter(|t| wanted.as_ref().is_none_or(|w| w.contains(&t.name)))
        .map(|t| {
            let mut topic = MetadataResponseTopic::default();
            topic.name = Some(name(&t.name));
            topic.partitions = (0..t.queues)
                .map(|q| {
                    let (leader, replicas) = queue_leader(&m, t, q);
                    let mut p = MetadataResponsePartition::default();
                    p.partition_index = q as i32;
                    if leader == 0 {
                        p.error_code = code::LEADER_NOT_AVAILABLE;
                        p.leader_id = BrokerId(-1);
                    } else {
                        p.leader_id = broker_id(leader);
                    }
                    p.leader_epoch = -1;
                    p.replica_nodes = replicas.iter().map(|&r| broker_id(r)).collect();
                    p.isr_nodes = p.replica_nodes.clone();
                    p
                })
                .collect();
            topic
        })
        .collect();
    if let Some(wanted) = wanted {
        for t in wanted {
            if !m.topics.iter().any(|known| known.name == t) {
                let mut topic = MetadataResponseTopic::default();
                topic.name = Some(name(&t));
                topic.error_code = code::UNKNOWN_TOPIC_OR_PARTITION;
                topics.push(topic);
            }
        }
    }
    topics.extend(denied_topics());
    response.topics = topics;
    response
}

/// Topic configs a Kafka client may set at creation: retention only (the rest of
/// Kafka's per-topic settings have no raftmq meaning yet and are refused).
fn topic_settings(
    configs: &[kafka_protocol::messages::create_topics_request::CreatableTopicConfig],
) -> Result<(u64, u64), String> {
    let mut retention_ms = 0;
    let mut retention_bytes = 0;
    for c in configs {
        let value = c.value.as_ref().map(|v| v.as_str()).unwrap_or("");
        let number = || -> Result<u64, String> {
            let n: i64 = value
                .parse()
                .map_err(|_| format!("{} must be a number, not {value:?}", c.name.as_str()))?;
            Ok(if n < 0 { 0 } else { n as u64 })
        };
        match c.name.as_str() {
            "retention.ms" => retention_ms = number()?,
            "retention.bytes" => retention_bytes = number()?,
            "cleanup.policy" if value == "delete" => {}
            other => {
                return Err(format!(
                    "topic config {other} is not supported (raftmq topics take retention.ms and retention.bytes)"
                ))
            }
        }
    }
    Ok((retention_ms, retention_bytes))
}

pub(super) async fn create_topics(
    context: &KafkaContext,
    request: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let mut response = CreateTopicsResponse::default();
    for topic in request.topics {
        let mut result = CreatableTopicResult::default();
        result.name = topic.name.clone();
        let topic_name = topic.name.0.as_str().to_owned();
        let outcome: Result<u32, (i16, String)> = async {
            raftmq_proto::frame::validate_name(&topic_name)
                .map_err(|e| (code::INVALID_TOPIC_EXCEPTION, e.to_string()))?;
            if !topic.assignments.is_empty() {
                return Err((
                    code::INVALID_REQUEST,
                    "manual replica assignments are not supported: raftmq places replicas".into(),
                ));
            }
            let queues = match topic.num_partitions {
                -1 => 1,
                n if (1..=MAX_PARTITIONS).contains(&n) => n as u32,
                n => {
                    return Err((
                        code::INVALID_PARTITIONS,
                        format!(
                            "num_partitions {n}: a topic has 1 to {MAX_PARTITIONS} partitions \
                             (-1: one)"
                        ),
                    ))
                }
            };
            let (retention_ms, retention_bytes) =
                topic_settings(&topic.configs).map_err(|e| (code::INVALID_CONFIG, e))?;
            if request.validate_only {
                return Ok(queues);
            }
            let body = pb::request::Body::CreateTopic(pb::CreateTopicRequest {
                name: topic_name.clone(),
                queues,
                retention_ms,
                retention_bytes,
            });
            context
                .service
                .call_at_leader(body)
                .await
                .map(|_| queues)
                .map_err(|f| (controller_code(f.code()), f.error.message))
        }
        .await;
        match outcome {
            Ok(queues) => {
                if version >= 5 {
                    result.num_partitions = queues as i32;
                    result.replication_factor =
                        i16::try_from(context.service.config().replication_factor).unwrap_or(-1);
                    result.configs = Some(Vec::new());
                }
            }
            Err((error_code, message)) => {
                result.error_code = error_code;
                result.error_message = Some(StrBytes::from_string(message));
                if version >= 5 {
                    result.num_partitions = -1;
                    result.replication_factor = -1;
                }
            }
        }
        response.topics.push(result);
    }
    response
}

pub(super) async fn delete_topics(
    context: &KafkaContext,
    request: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    let mut response = DeleteTopicsResponse::default();
    for topic in request.topic_names {
        let mut result = DeletableTopicResult::default();
        let body = pb::request::Body::DeleteTopic(pb::DeleteTopicRequest {
            name: topic.0.as_str().to_owned(),
        });
        if let Err(f) = context.service.call_at_leader(body).await {
            result.error_code = controller_code(f.code());
            result.error_message = Some(StrBytes::from_string(f.error.message));
        }
        result.name = Some(topic);
        response.responses.push(result);
    }
    response
}

/// A topic's settings as Kafka config entries: the retention raftmq applies.
pub(super) async fn describe_configs(
    context: &KafkaContext,
    request: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let mut response = DescribeConfigsResponse::default();
    let names: Vec<String> = request
        .resources
        .iter()
        .filter(|r| r.resource_type == RESOURCE_TOPIC)
        .map(|r| r.resource_name.as_str().to_owned())
        .collect();
    let m = cluster_metadata(context, names).await;
    for resource in request.resources {
        let mut result = DescribeConfigsResult::default();
        result.resource_type = resource.resource_type;
        result.resource_name = resource.resource_name.clone();
        if resource.resource_type != RESOURCE_TOPIC {
            // Broker and other resources: no configs are described.
            response.results.push(result);
            continue;
        }
        let topic = match &m {
            Ok(m) => m
                .topics
                .iter()
                .find(|t| t.name == resource.resource_name.as_str()),
            Err(e) => {
                result.error_code =
                    kafka_code(pb::ErrorCode::try_from(e.code).unwrap_or(pb::ErrorCode::NotReady));
                result.error_message = Some(StrBytes::from_string(e.message.clone()));
                response.results.push(result);
                continue;
            }
        };
        let Some(topic) = topic else {
            result.error_code = code::UNKNOWN_TOPIC_OR_PARTITION;
            response.results.push(result);
            continue;
        };
        let retention_ms = if topic.retention_ms == 0 {
            context.service.config().retention_ms
        } else {
            topic.retention_ms
        };
        let retention_bytes = if topic.retention_bytes == 0 {
            context.service.config().retention_bytes
        } else {
            topic.retention_bytes
        };
        let entry = |name: &'static str, value: String, from_topic: bool| {
            let mut c = DescribeConfigsResourceResult::default();
            c.name = StrBytes::from_static_str(name);
            c.value = Some(StrBytes::from_string(value));
            c.read_only = true;
            // 1 = topic config, 5 = default (Kafka's config source numbers).
            c.config_source = if from_topic { 1 } else { 5 };
            c
        };
        let ms = |n: u64| {
            if n == 0 {
                "-1".to_string()
            } else {
                n.to_string()
            }
        };
        result.configs = vec![
            entry("retention.ms", ms(retention_ms), topic.retention_ms != 0),
            entry(
                "retention.bytes",
                ms(retention_bytes),
                topic.retention_bytes != 0,
            ),
            entry("cleanup.policy", "delete".into(), false),
        ];
        response.results.push(result);
    }
    response
}
