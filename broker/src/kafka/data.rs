//! Produce, Fetch, ListOffsets and InitProducerId on the Kafka port. A Kafka record
//! batch is validated here and stored as sent; fetches serve stored Kafka batches
//! as they are (their base offset written in) and convert raftmq batches.

use bytes::BytesMut;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    FetchRequest, FetchResponse, InitProducerIdRequest, InitProducerIdResponse, ListOffsetsRequest,
    ListOffsetsResponse, ProduceRequest, ProduceResponse, ProducerId,
};
use kafka_protocol::protocol::StrBytes;
use raftmq_proto::{kafka_batch, pb};

use super::convert;
use super::errors::{code, kafka_code};
use super::KafkaContext;
use crate::service::Answer;

/// The answer for one partition of a produce.
struct Produced {
    error_code: i16,
    base_offset: i64,
    message: Option<String>,
}

impl Produced {
    fn error(error_code: i16, message: impl Into<String>) -> Produced {
        Produced {
            error_code,
            base_offset: -1,
            message: Some(message.into()),
        }
    }
}

/// Checks one partition's batch and hands it to its queue's group; the answer is
/// awaited later ([`finish_one`]), so a connection's batches reach each queue in
/// the order they came.
async fn begin_one(
    context: &KafkaContext,
    topic: String,
    partition: i32,
    records: Option<bytes::Bytes>,
    acks: pb::Acks,
) -> Result<Answer, Produced> {
    let Some(batch) = records.filter(|r| !r.is_empty()) else {
        return Err(Produced::error(code::INVALID_RECORD, "no record batch"));
    };
    let Ok(queue) = u32::try_from(partition) else {
        return Err(Produced::error(
            code::UNKNOWN_TOPIC_OR_PARTITION,
            "negative partition",
        ));
    };
    if let Err(e) = raftmq_proto::frame::validate_name(&topic) {
        return Err(Produced::error(
            code::INVALID_TOPIC_EXCEPTION,
            e.to_string(),
        ));
    }
    let max = context.service.config().max_batch_bytes;
    if batch.len() > max {
        return Err(Produced::error(
            code::MESSAGE_TOO_LARGE,
            format!(
                "batch of {} bytes exceeds the broker's limit of {max} bytes: lower the \
                 producer's batch.size or raise the brokers' --max-batch-bytes",
                batch.len()
            ),
        ));
    }
    if raftmq_proto::batch::format_of(&batch) != Some(raftmq_proto::batch::BatchFormat::Kafka) {
        return Err(Produced::error(
            code::UNSUPPORTED_FOR_MESSAGE_FORMAT,
            "only record batches of magic 2 are accepted",
        ));
    }
    if let Some(why) = kafka_batch::unsupported_feature(&batch) {
        return Err(Produced::error(code::UNSUPPORTED_FOR_MESSAGE_FORMAT, why));
    }
    if let Err(e) = kafka_batch::validate(&batch) {
        return Err(Produced::error(code::CORRUPT_MESSAGE, e.to_string()));
    }
    let body = pb::request::Body::Produce(pb::ProduceRequest {
        topic,
        queue,
        acks: acks as i32,
        batch,
    });
    Ok(context.service.begin(body).await)
}

async fn finish_one(begun: Result<Answer, Produced>) -> Produced {
    let answer = match begun {
        Ok(answer) => answer.answer().await,
        Err(refused) => return refused,
    };
    match answer {
        Ok(pb::response::Body::Produce(p)) => Produced {
            error_code: code::NONE,
            // Leader acks: the offset is not known yet.
            base_offset: if p.base_offset == u64::MAX {
                -1
            } else {
                p.base_offset as i64
            },
            message: None,
        },
        Ok(_) => Produced::error(code::INVALID_REQUEST, "unexpected answer"),
        Err(f) => match (f.code(), f.body) {
            // Already stored: a success for the client, at the first copy's offset.
            (pb::ErrorCode::DuplicateSequence, Some(pb::response::Body::Produce(p))) => Produced {
                error_code: code::NONE,
                base_offset: p.base_offset as i64,
                message: None,
            },
            (code_, _) => Produced::error(kafka_code(code_), f.error.message),
        },
    }
}

/// A produce whose batches were handed to their groups; [`ProduceInFlight::finish`]
/// waits for the answers.
pub(super) struct ProduceInFlight {
    request: ProduceRequest,
    version: i16,
    begun: Vec<Result<Answer, Produced>>,
}

/// Checks and hands over every partition's batch, in the request's order. Called
/// by the connection's reader before it reads the next request.
pub(super) async fn produce_begin(
    context: &KafkaContext,
    request: ProduceRequest,
    version: i16,
) -> ProduceInFlight {
    let acks = match request.acks {
        -1 => pb::Acks::Quorum,
        _ => pb::Acks::Leader,
    };
    let mut begun = Vec::new();
    if request.transactional_id.is_none() {
        for topic in &request.topic_data {
            for p in &topic.partition_data {
                let name = topic.name.0.as_str().to_owned();
                begun.push(begin_one(context, name, p.index, p.records.clone(), acks).await);
            }
        }
    }
    ProduceInFlight {
        request,
        version,
        begun,
    }
}

impl ProduceInFlight {
    /// The answer (`None` for acks=0).
    pub(super) async fn finish(self) -> Option<ProduceResponse> {
        produce(self.request, self.version, self.begun).await
    }
}

/// Waits for every partition's answer. `None` for acks=0 (no answer).
async fn produce(
    request: ProduceRequest,
    version: i16,
    begun: Vec<Result<Answer, Produced>>,
) -> Option<ProduceResponse> {
    if request.transactional_id.is_some() {
        let mut response = ProduceResponse::default();
        for topic in request.topic_data {
            let mut t = TopicProduceResponse::default();
            t.name = topic.name;
            for p in topic.partition_data {
                let mut r = PartitionProduceResponse::default();
                r.index = p.index;
                r.error_code = code::UNSUPPORTED_FOR_MESSAGE_FORMAT;
                t.partition_responses.push(r);
            }
            response.responses.push(t);
        }
        return Some(response);
    }
    let mut results = futures::future::join_all(begun.into_iter().map(finish_one))
        .await
        .into_iter();
    if request.acks == 0 {
        return None;
    }
    let mut response = ProduceResponse::default();
    for topic in request.topic_data {
        let mut t = TopicProduceResponse::default();
        t.name = topic.name;
        for p in topic.partition_data {
            let produced = results.next().expect("one result per partition");
            let mut r = PartitionProduceResponse::default();
            r.index = p.index;
            r.error_code = produced.error_code;
            r.base_offset = produced.base_offset;
            r.log_append_time_ms = -1;
            r.log_start_offset = -1;
            if version >= 8 {
                r.error_message = produced.message.map(StrBytes::from_string);
            }
            t.partition_responses.push(r);
        }
        response.responses.push(t);
    }
    Some(response)
}

/// One partition's fetch, as the broker answered it.
struct Fetched {
    topic: usize,
    partition: i32,
    result: Result<pb::FetchResponse, pb::Error>,
}

impl Fetched {
    fn bytes(&self) -> usize {
        match &self.result {
            Ok(f) => f.batches.iter().map(|b| b.batch.len()).sum(),
            Err(_) => 0,
        }
    }
}

/// A partition's fetch as a native part, or why it cannot be one.
fn fetch_part(
    topic: &str,
    partition: i32,
    offset: i64,
    max_bytes: i32,
) -> Result<pb::FetchRequest, pb::Error> {
    match (u32::try_from(partition), u64::try_from(offset)) {
        (Ok(queue), Ok(offset)) => Ok(pb::FetchRequest {
            topic: topic.to_owned(),
            queue,
            offset,
            max_bytes: max_bytes.max(1) as u32,
            ..pb::FetchRequest::default()
        }),
        (Err(_), _) => Err(pb::Error::new(
            pb::ErrorCode::InvalidQueue,
            "negative partition",
        )),
        (_, Err(_)) => Err(pb::Error::new(
            pb::ErrorCode::OffsetOutOfRange,
            "negative offset",
        )),
    }
}

/// Reads every partition at once without waiting; if that finds less than
/// `min_bytes`, long-polls them all and answers as soon as one has data (or the
/// wait ends), re-reading the others without waiting (`crate::fetch_many`, shared
/// with the native `FetchMany`).
pub(super) async fn fetch(context: &KafkaContext, request: FetchRequest) -> FetchResponse {
    let max_wait =
        (request.max_wait_ms.max(0) as u64).min(context.service.config().max_fetch_wait_ms) as u32;
    let slots: Vec<(usize, i32, Result<pb::FetchRequest, pb::Error>)> = request
        .topics
        .iter()
        .enumerate()
        .flat_map(|(i, t)| {
            t.partitions.iter().map(move |p| {
                let part = fetch_part(
                    t.topic.0.as_str(),
                    p.partition,
                    p.fetch_offset,
                    p.partition_max_bytes,
                );
                (i, p.partition, part)
            })
        })
        .collect();
    let parts: Vec<pb::FetchRequest> = slots
        .iter()
        .filter_map(|(_, _, part)| part.as_ref().ok().cloned())
        .collect();
    let min_bytes = request.min_bytes.max(1) as u32;
    let mut answers = crate::fetch_many::fetch_many(&context.service, &parts, max_wait, min_bytes)
        .await
        .into_iter();
    let mut fetched: Vec<Fetched> = slots
        .into_iter()
        .map(|(topic, partition, part)| Fetched {
            topic,
            partition,
            result: part.and_then(|_| {
                answers
                    .next()
                    .unwrap_or_else(|| Err(pb::Error::new(pb::ErrorCode::NotReady, "no answer")))
            }),
        })
        .collect();
    fetched.sort_by_key(|f| (f.topic, f.partition));
    let mut response = FetchResponse::default();
    let mut budget = request.max_bytes.max(1) as usize;
    let mut first = true;
    for (i, topic) in request.topics.iter().enumerate() {
        let mut t = FetchableTopicResponse::default();
        t.topic = topic.topic.clone();
        for f in fetched.iter().filter(|f| f.topic == i) {
            let mut p = PartitionData::default();
            p.partition_index = f.partition;
            p.aborted_transactions = Some(Vec::new());
            p.preferred_read_replica = kafka_protocol::messages::BrokerId(-1);
            match &f.result {
                Ok(data) => {
                    p.high_watermark = data.high_watermark as i64;
                    p.last_stable_offset = data.high_watermark as i64;
                    p.log_start_offset = data.log_start as i64;
                    let size = f.bytes();
                    if size > 0 && (first || size <= budget) {
                        first = false;
                        budget = budget.saturating_sub(size);
                        let mut out = BytesMut::with_capacity(size + 64);
                        let mut failed = None;
                        for b in &data.batches {
                            if let Err(e) =
                                convert::append_as_kafka(&b.batch, b.base_offset, &mut out)
                            {
                                failed = Some(e);
                                break;
                            }
                        }
                        match failed {
                            None => p.records = Some(out.freeze()),
                            Some(e) => {
                                tracing::error!(topic = %topic.topic.0.as_str(), partition = f.partition, error = %e, "stored batch cannot be served to a Kafka consumer");
                                p.error_code = code::CORRUPT_MESSAGE;
                            }
                        }
                    } else {
                        p.records = Some(bytes::Bytes::new());
                    }
                }
                Err(e) => {
                    p.error_code = kafka_code(
                        pb::ErrorCode::try_from(e.code).unwrap_or(pb::ErrorCode::NotReady),
                    );
                    p.high_watermark = -1;
                    p.last_stable_offset = -1;
                    p.log_start_offset = -1;
                    p.records = Some(bytes::Bytes::new());
                }
            }
            t.partitions.push(p);
        }
        response.responses.push(t);
    }
    response
}

pub(super) async fn list_offsets(
    context: &KafkaContext,
    request: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let mut work = Vec::new();
    for topic in &request.topics {
        for p in &topic.partitions {
            let name = topic.name.0.as_str().to_owned();
            let (partition, timestamp) = (p.partition_index, p.timestamp);
            work.push(async move {
                let (spec, timestamp_ms) = match timestamp {
                    -2 | -4 => (pb::OffsetSpec::Earliest, 0),
                    -1 => (pb::OffsetSpec::Latest, 0),
                    t if t >= 0 => (pb::OffsetSpec::Timestamp, t),
                    _ => return Err(code::INVALID_REQUEST),
                };
                let queue =
                    u32::try_from(partition).map_err(|_| code::UNKNOWN_TOPIC_OR_PARTITION)?;
                let body = pb::request::Body::ListOffsets(pb::ListOffsetsRequest {
                    topic: name,
                    queue,
                    spec: spec as i32,
                    timestamp_ms,
                });
                match context.service.call(body).await {
                    Ok(pb::response::Body::ListOffsets(l)) => Ok(l.offset as i64),
                    Ok(_) => Err(code::INVALID_REQUEST),
                    Err(f) => Err(kafka_code(f.code())),
                }
            });
        }
    }
    let mut results = futures::future::join_all(work).await.into_iter();
    let mut response = ListOffsetsResponse::default();
    for topic in request.topics {
        let mut t = ListOffsetsTopicResponse::default();
        t.name = topic.name;
        for p in topic.partitions {
            let mut r = ListOffsetsPartitionResponse::default();
            r.partition_index = p.partition_index;
            r.timestamp = -1;
            r.leader_epoch = -1;
            match results.next().expect("one result per partition") {
                Ok(offset) => r.offset = offset,
                Err(error_code) => {
                    r.error_code = error_code;
                    r.offset = -1;
                }
            }
            t.partitions.push(r);
        }
        response.topics.push(t);
    }
    response
}

/// A producer id for an idempotent producer: a raftmq producer session.
/// Transactions are not supported.
pub(super) async fn init_producer_id(
    context: &KafkaContext,
    request: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let mut response = InitProducerIdResponse::default();
    response.producer_id = ProducerId(-1);
    response.producer_epoch = -1;
    if let Some(id) = &request.transactional_id {
        tracing::warn!(
            transactional_id = %id.as_str(),
            "a Kafka client asked for a transactional producer: raftmq does not support \
             transactions; unset transactional.id (idempotence works without it)"
        );
        response.error_code = code::INVALID_REQUEST;
        return response;
    }
    let body = pb::request::Body::InitProducer(pb::InitProducerRequest {});
    match context.service.call_at_leader(body).await {
        Ok(pb::response::Body::InitProducer(p)) => {
            match (
                i64::try_from(p.producer_id),
                i16::try_from(p.producer_epoch),
            ) {
                (Ok(id), Ok(epoch)) => {
                    response.producer_id = ProducerId(id);
                    response.producer_epoch = epoch;
                }
                _ => response.error_code = code::INVALID_REQUEST,
            }
        }
        Ok(_) => response.error_code = code::INVALID_REQUEST,
        Err(f) => {
            response.error_code = match f.code() {
                pb::ErrorCode::NotLeader
                | pb::ErrorCode::NotReady
                | pb::ErrorCode::ShuttingDown => code::NOT_COORDINATOR,
                other => kafka_code(other),
            }
        }
    }
    response
}
