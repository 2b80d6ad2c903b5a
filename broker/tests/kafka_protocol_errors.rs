//! Bad input on the Kafka port, against a real broker process: a request that
//! declares a 2-billion-element array, undecodable and random requests, versions
//! not offered, corrupt record batches, idempotent batches out of order. Each closes its own connection or gets a
//! Kafka error; the broker keeps running and keeps serving.

mod common;

use common::kafka_wire::{answer, connect, read_frame, request, send_frame};

use bytes::{BufMut, Bytes, BytesMut};
use common::Cluster;
use indexmap::IndexMap;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, InitProducerIdRequest, InitProducerIdResponse,
    ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use raftmq_client::{Admin, Client};

fn kafka_batch(values: &[&str]) -> Bytes {
    idempotent_batch(-1, -1, -1, values)
}

/// A batch of an idempotent producer (`producer_id` -1: a plain batch).
fn idempotent_batch(producer_id: i64, epoch: i16, base_sequence: i32, values: &[&str]) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: base_sequence + i as i32,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from(v.to_string())),
            headers: IndexMap::new(),
        })
        .collect();
    let mut out = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut out, records.iter(), &options).expect("encode");
    out.freeze()
}

fn produce(topic: &str, batch: Bytes) -> ProduceRequest {
    let mut p = PartitionProduceData::default();
    p.index = 0;
    p.records = Some(batch);
    let mut t = TopicProduceData::default();
    t.name = TopicName(StrBytes::from_string(topic.into()));
    t.partition_data = vec![p];
    let mut r = ProduceRequest::default();
    r.acks = -1;
    r.timeout_ms = 5000;
    r.topic_data = vec![t];
    r
}

fn produce_error(cluster: &Cluster, topic: &str, batch: Bytes) -> i16 {
    produce_answer(cluster, topic, batch).0
}

/// The error code, base offset and error message of one partition's produce.
fn produce_answer(cluster: &Cluster, topic: &str, batch: Bytes) -> (i16, i64, String) {
    produce_answer_with_acks(cluster, topic, batch, -1)
}

/// [`produce_answer`] with the given `acks` (-1 all, 1 the leader).
fn produce_answer_with_acks(
    cluster: &Cluster,
    topic: &str,
    batch: Bytes,
    acks: i16,
) -> (i16, i64, String) {
    let mut s = connect(cluster);
    let mut r = produce(topic, batch);
    r.acks = acks;
    send_frame(&mut s, &request(ApiKey::Produce, 8, &r));
    let body = read_frame(&mut s).expect("a produce answer");
    let r: ProduceResponse = answer(ApiKey::Produce, 8, body);
    let p = &r.responses[0].partition_responses[0];
    let message = p.error_message.as_ref().map(|m| m.to_string());
    (p.error_code, p.base_offset, message.unwrap_or_default())
}

/// One broker serving the Kafka protocol, with topic `t` of one queue, and a
/// native client of it.
fn one_node_with_topic_t() -> (Cluster, tokio::runtime::Runtime, Client) {
    let cluster = Cluster::start_with_kafka(1, &[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = rt
        .block_on(Client::connect(&cluster.addrs()))
        .expect("connect");
    rt.block_on(Admin::new(&client).create_topic("t", 1))
        .expect("create");
    (cluster, rt, client)
}

/// A small deterministic generator for the random requests.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn bad_kafka_requests_close_only_their_connection_and_lose_nothing() {
    let (mut cluster, rt, client) = one_node_with_topic_t();

    // A Metadata request declaring 2^31 - 1 topics in 4 bytes.
    let mut s = connect(&cluster);
    let mut body = BytesMut::new();
    body.put_i16(ApiKey::Metadata as i16);
    body.put_i16(4);
    body.put_i32(7);
    body.put_i16(-1);
    body.put_i32(i32::MAX);
    send_frame(&mut s, &body);
    assert!(
        read_frame(&mut s).is_none(),
        "answered an impossible request"
    );

    // Valid requests still work; a newer ApiVersions gets the list, as v0.
    let mut s = connect(&cluster);
    send_frame(
        &mut s,
        &request(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default()),
    );
    let r: ApiVersionsResponse =
        answer(ApiKey::ApiVersions, 3, read_frame(&mut s).expect("answer"));
    assert_eq!(r.error_code, 0);
    assert!(r
        .api_keys
        .iter()
        .any(|k| k.api_key == ApiKey::Produce as i16));
    let mut newer = request(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    newer[3] = 9;
    send_frame(&mut s, &newer);
    let r: ApiVersionsResponse =
        answer(ApiKey::ApiVersions, 0, read_frame(&mut s).expect("answer"));
    assert_eq!(r.error_code, 35, "UNSUPPORTED_VERSION");

    // A version not offered, an API not served: the connection closes.
    for (key, version) in [
        (ApiKey::Fetch, 13),
        (ApiKey::SaslHandshake, 1),
        (ApiKey::EndTxn, 0),
    ] {
        let mut s = connect(&cluster);
        let mut body = BytesMut::new();
        body.put_i16(key as i16);
        body.put_i16(version);
        body.put_i32(7);
        body.put_i16(-1);
        send_frame(&mut s, &body);
        assert!(read_frame(&mut s).is_none(), "{key:?} v{version} answered");
    }

    // Random bodies behind valid headers of every API, and random headers.
    let mut rng = XorShift(0x5eed_0123_4567_89ab);
    for i in 0..400 {
        let mut s = connect(&cluster);
        let mut body = BytesMut::new();
        let (key, version) = if i % 4 == 3 {
            (rng.next() as i16, rng.next() as i16)
        } else {
            let keys = [
                0i16, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 19, 20, 22, 32,
            ];
            let key = keys[(rng.next() % keys.len() as u64) as usize];
            (key, (rng.next() % 13) as i16)
        };
        body.put_i16(key);
        body.put_i16(version);
        body.put_i32(7);
        let len = (rng.next() % 64) as usize;
        for _ in 0..len {
            body.put_u8(rng.next() as u8);
        }
        send_frame(&mut s, &body);
        let _ = read_frame(&mut s);
    }

    // Corrupt batches are refused with Kafka's codes; nothing is stored.
    let good = kafka_batch(&["a", "b", "c"]);
    let mut flipped = good.to_vec();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert_eq!(
        produce_error(&cluster, "t", Bytes::from(flipped)),
        2,
        "CORRUPT_MESSAGE"
    );
    let mut two = good.to_vec();
    two.extend_from_slice(&good);
    assert_eq!(
        produce_error(&cluster, "t", Bytes::from(two)),
        2,
        "two batches in one"
    );
    assert_eq!(
        produce_error(&cluster, "nope", good.clone()),
        3,
        "UNKNOWN_TOPIC_OR_PARTITION"
    );
    assert_eq!(
        produce_error(&cluster, "t", good),
        0,
        "a good batch is stored"
    );

    // The broker is alive, serves natively, and holds exactly the good batch.
    assert_eq!(cluster.running(), vec![1]);
    let mut consumer = raftmq_client::Consumer::new(&client);
    rt.block_on(consumer.assign("t", &[0])).expect("assign");
    let end = rt
        .block_on(consumer.seek(0, raftmq_client::SeekTo::Latest))
        .expect("end");
    assert_eq!(end, 3);
    rt.block_on(consumer.seek(0, raftmq_client::SeekTo::Earliest))
        .expect("seek");
    let read = rt.block_on(consumer.poll()).expect("poll");
    let values: Vec<&[u8]> = read.iter().map(|m| &m.value[..]).collect();
    assert_eq!(values, vec![&b"a"[..], b"b", b"c"]);
    cluster.kill(1);
}

/// An idempotent producer's batch that arrives ahead of its sequence (an earlier
/// batch was refused, say by a busy or new leader, and its retry is behind) must
/// get a retriable "not stored" answer, not OUT_OF_ORDER_SEQUENCE_NUMBER: on that
/// code librdkafka bumps its epoch and renumbers every unacknowledged message, and
/// a batch stored whose answer was lost is then stored twice. Resent in order, the
/// earlier batch and this one are each stored once.
#[test]
fn an_idempotent_batch_ahead_of_its_sequence_is_retriable_and_not_stored() {
    let (mut cluster, rt, client) = one_node_with_topic_t();

    let mut s = connect(&cluster);
    let mut init = InitProducerIdRequest::default();
    init.transactional_id = None;
    init.transaction_timeout_ms = 60_000;
    send_frame(&mut s, &request(ApiKey::InitProducerId, 4, &init));
    let r: InitProducerIdResponse = answer(
        ApiKey::InitProducerId,
        4,
        read_frame(&mut s).expect("an answer"),
    );
    assert_eq!(r.error_code, 0);
    let (pid, epoch) = (r.producer_id.0, r.producer_epoch);

    let first = idempotent_batch(pid, epoch, 0, &["a", "b"]);
    let second = idempotent_batch(pid, epoch, 2, &["c"]);
    let third = idempotent_batch(pid, epoch, 3, &["d", "e"]);
    assert_eq!(produce_answer(&cluster, "t", first.clone()).0, 0);
    // The second batch is lost on its way; the third arrives first.
    let (code, offset, message) = produce_answer(&cluster, "t", third.clone());
    assert_eq!(
        (code, offset),
        (19, -1),
        "NOT_ENOUGH_REPLICAS (retriable, not stored): {message}"
    );
    assert!(
        message.contains("expected sequence 2, got 3"),
        "the answer says why: {message:?}"
    );
    // Resent in order: the second and third are stored, the first is a duplicate.
    assert_eq!(produce_answer(&cluster, "t", second).0, 0);
    let (code, offset, _) = produce_answer(&cluster, "t", third);
    assert_eq!((code, offset), (0, 3));
    let (code, offset, _) = produce_answer(&cluster, "t", first);
    assert_eq!(
        (code, offset),
        (0, 0),
        "a retried batch is acknowledged once"
    );

    let mut consumer = raftmq_client::Consumer::new(&client);
    rt.block_on(consumer.assign("t", &[0])).expect("assign");
    let end = rt
        .block_on(consumer.seek(0, raftmq_client::SeekTo::Latest))
        .expect("end");
    assert_eq!(end, 5, "each message stored once");
    rt.block_on(consumer.seek(0, raftmq_client::SeekTo::Earliest))
        .expect("seek");
    let mut values = Vec::new();
    for _ in 0..20 {
        if values.len() >= 5 {
            break;
        }
        let read = rt.block_on(consumer.poll()).expect("poll");
        values.extend(read.iter().map(|m| m.value.to_vec()));
    }
    assert_eq!(values, [b"a", b"b", b"c", b"d", b"e"].map(|v| v.to_vec()));
    cluster.kill(1);
}

#[test]
fn acks_1_answers_carry_the_offsets_the_batches_get() {
    let (mut cluster, rt, client) = one_node_with_topic_t();
    let first = produce_answer_with_acks(&cluster, "t", kafka_batch(&["a", "b", "c"]), 1);
    let second = produce_answer_with_acks(&cluster, "t", kafka_batch(&["d", "e"]), 1);
    assert_eq!((first.0, first.1), (0, 0), "{first:?}");
    assert_eq!((second.0, second.1), (0, 3), "{second:?}");
    // And they are stored there.
    let mut consumer = raftmq_client::Consumer::new(&client);
    rt.block_on(consumer.assign("t", &[0])).expect("assign");
    let mut got = Vec::new();
    for _ in 0..50 {
        got.extend(rt.block_on(consumer.poll()).expect("poll"));
        if got.len() >= 5 {
            break;
        }
    }
    let stored: Vec<(u64, String)> = got
        .iter()
        .map(|m| (m.offset, String::from_utf8(m.value.to_vec()).unwrap()))
        .collect();
    assert_eq!(
        stored,
        vec![
            (0, "a".into()),
            (1, "b".into()),
            (2, "c".into()),
            (3, "d".into()),
            (4, "e".into())
        ]
    );
    cluster.kill(1);
}
