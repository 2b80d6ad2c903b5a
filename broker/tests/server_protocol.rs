//! The broker at the protocol level: a single in-process node on a loopback
//! ephemeral port, spoken to with raw frames. Covers the error codes, pipelining,
//! long polls, and hostile input (random bytes, oversize lengths, bad CRCs).

use std::time::Duration;

use bytes::Bytes;
use futures::SinkExt;
use raftmq_broker::config::BrokerConfig;
use raftmq_broker::raft::NodeId;
use raftmq_broker::Broker;
use raftmq_proto::batch::BatchBuilder;
use raftmq_proto::pb::{self, request::Body as Req, response::Body as Resp, ErrorCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

mod common;

use common::raw::{batch, code, Conn};

async fn start_broker(dir: &std::path::Path) -> Broker {
    let config = BrokerConfig {
        node_id: NodeId(1),
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        segment_bytes: 8 << 20,
        max_batch_bytes: 1 << 20,
        max_frame_bytes: 2 << 20,
        election_timeout_ticks: 5,
        heartbeat_interval_ticks: 1,
        ..BrokerConfig::default()
    };
    let mut config = config;
    config.peers.clear();
    config.peers.insert(NodeId(1), config.listen);
    Broker::start(config).await.expect("broker starts")
}

fn produce(topic: &str, queue: u32, batch: Bytes) -> Req {
    Req::Produce(pb::ProduceRequest {
        topic: topic.into(),
        queue,
        acks: pb::Acks::Quorum as i32,
        batch,
    })
}

fn fetch(topic: &str, queue: u32, offset: u64, max_wait_ms: u32) -> Req {
    Req::Fetch(pb::FetchRequest {
        topic: topic.into(),
        queue,
        offset,
        max_bytes: 1 << 20,
        max_wait_ms,
        min_bytes: 1,
        ..pb::FetchRequest::default()
    })
}

async fn create_topic(conn: &mut Conn, name: &str, queues: u32) {
    let response = conn
        .call_when_leader(Req::CreateTopic(pb::CreateTopicRequest {
            name: name.into(),
            queues,
            ..Default::default()
        }))
        .await;
    assert_eq!(code(&response), ErrorCode::None, "{response:?}");
}

fn values_of(response: &pb::Response) -> Vec<(u64, String)> {
    let Some(Resp::Fetch(fetch)) = &response.body else {
        panic!("not a fetch response: {response:?}");
    };
    fetch
        .batches
        .iter()
        .flat_map(|b| raftmq_proto::batch::decode_records(&b.batch, b.base_offset))
        .map(|m| {
            let m = m.unwrap();
            (m.offset, String::from_utf8(m.value.to_vec()).unwrap())
        })
        .collect()
}

#[tokio::test]
async fn produced_batches_are_fetched_with_their_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path()).await;
    let mut conn = Conn::connect(&broker).await;
    create_topic(&mut conn, "orders", 2).await;

    let first = conn.call(produce("orders", 1, batch(&["a", "b"]))).await;
    assert_eq!(code(&first), ErrorCode::None, "{first:?}");
    let second = conn.call(produce("orders", 1, batch(&["c"]))).await;
    match (&first.body, &second.body) {
        (Some(Resp::Produce(a)), Some(Resp::Produce(b))) => {
            assert_eq!((a.base_offset, a.count), (0, 2));
            assert_eq!((b.base_offset, b.count), (2, 1));
        }
        other => panic!("{other:?}"),
    }
    let fetched = conn.call(fetch("orders", 1, 1, 0)).await;
    assert_eq!(
        values_of(&fetched),
        vec![(0, "a".into()), (1, "b".into()), (2, "c".into())],
        "a fetch from the middle of a batch returns the whole batch"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_long_poll_wakes_when_data_commits() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path()).await;
    let mut consumer = Conn::connect(&broker).await;
    let mut producer = Conn::connect(&broker).await;
    create_topic(&mut consumer, "t", 1).await;

    let waiting = consumer.send(fetch("t", 0, 0, 10_000)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    producer.call(produce("t", 0, batch(&["late"]))).await;
    let response = consumer.recv().await;
    assert_eq!(response.correlation_id, waiting);
    assert_eq!(values_of(&response), vec![(0, "late".into())]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "woken by the commit, not the timeout"
    );
    broker.stop().await;
}

#[tokio::test]
async fn every_request_error_has_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path()).await;
    let mut conn = Conn::connect(&broker).await;
    create_topic(&mut conn, "t", 2).await;

    let cases: Vec<(Req, ErrorCode)> = vec![
        (
            produce("missing", 0, batch(&["x"])),
            ErrorCode::UnknownTopic,
        ),
        (produce("t", 9, batch(&["x"])), ErrorCode::InvalidQueue),
        (
            Req::CreateTopic(pb::CreateTopicRequest {
                name: "t".into(),
                queues: 1,
                ..Default::default()
            }),
            ErrorCode::TopicExists,
        ),
        (
            produce("t", 0, Bytes::from_static(&[0u8; 80])),
            ErrorCode::CorruptBatch,
        ),
        (
            produce("t", 0, Bytes::from(vec![0u8; 1 << 20 | 1])),
            ErrorCode::MessageTooLarge,
        ),
        (fetch("t", 0, 5, 0), ErrorCode::OffsetOutOfRange),
        (produce("", 0, batch(&["x"])), ErrorCode::InvalidRequest),
        (
            produce("bad name!", 0, batch(&["x"])),
            ErrorCode::InvalidRequest,
        ),
    ];
    for (request, expected) in cases {
        let response = conn.call(request.clone()).await;
        assert_eq!(code(&response), expected, "{request:?} → {response:?}");
    }

    // A corrupted CRC is refused.
    let mut bytes = batch(&["hello"]).to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let response = conn.call(produce("t", 0, Bytes::from(bytes))).await;
    assert_eq!(code(&response), ErrorCode::CorruptBatch);

    // Out of range tells the valid range.
    let response = conn.call(fetch("t", 0, 5, 0)).await;
    let e = response.error.unwrap();
    assert_eq!((e.log_start, e.log_end), (0, 0));

    // A newer API version is refused with its own code.
    let request = pb::Request {
        correlation_id: 99,
        api_version: 7,
        on_behalf_of: String::new(),
        body: Some(Req::Metadata(pb::MetadataRequest::default())),
    };
    conn.framed
        .send(raftmq_proto::frame::encode_request(&request))
        .await
        .unwrap();
    assert_eq!(code(&conn.recv().await), ErrorCode::UnsupportedVersion);
    broker.stop().await;
}

#[tokio::test]
async fn idempotent_retries_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path()).await;
    let mut conn = Conn::connect(&broker).await;
    create_topic(&mut conn, "t", 1).await;
    let init = conn
        .call(Req::InitProducer(pb::InitProducerRequest {}))
        .await;
    let Some(Resp::InitProducer(p)) = init.body else {
        panic!("{init:?}")
    };
    let make = |seq: u32, v: &str| {
        let mut b = BatchBuilder::with_capacity(256);
        b.set_producer(p.producer_id, p.producer_epoch as u16, seq);
        b.push(None, v.as_bytes(), &[], 1);
        b.finish()
    };
    let first = conn.call(produce("t", 0, make(0, "a"))).await;
    assert_eq!(code(&first), ErrorCode::None);
    let retry = conn.call(produce("t", 0, make(0, "a"))).await;
    assert_eq!(code(&retry), ErrorCode::DuplicateSequence);
    let Some(Resp::Produce(r)) = retry.body else {
        panic!("{retry:?}")
    };
    assert_eq!(r.base_offset, 0, "the duplicate names the original offset");
    let gap = conn.call(produce("t", 0, make(5, "z"))).await;
    assert_eq!(code(&gap), ErrorCode::OutOfOrderSequence);
    let next = conn.call(produce("t", 0, make(1, "b"))).await;
    assert_eq!(code(&next), ErrorCode::None);
    let fetched = conn.call(fetch("t", 0, 0, 0)).await;
    assert_eq!(values_of(&fetched), vec![(0, "a".into()), (1, "b".into())]);
    broker.stop().await;
}

#[tokio::test]
async fn hostile_bytes_close_only_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path()).await;
    let mut good = Conn::connect(&broker).await;
    create_topic(&mut good, "t", 1).await;

    // Random bytes, a 2 GiB declared length, a truncated frame, garbage protobuf.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut attacks: Vec<Vec<u8>> = (0..20)
        .map(|i| {
            (0..(i * 37 + 1))
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect()
        })
        .collect();
    attacks.push(vec![0x7F, 0xFF, 0xFF, 0xFF, 1, 2, 3]);
    attacks.push(vec![0, 0, 0, 10, 1, 2]);
    attacks.push(vec![0, 0, 0, 3, 0xFF, 0xFF, 0xFF]);
    for attack in attacks {
        let mut stream = TcpStream::connect(broker.local_addr).await.unwrap();
        let _ = stream.write_all(&attack).await;
        let _ = stream.shutdown().await;
    }
    // The broker still serves the well-behaved client.
    let response = good.call(produce("t", 0, batch(&["still here"]))).await;
    assert_eq!(code(&response), ErrorCode::None, "{response:?}");
    broker.stop().await;
}

#[tokio::test]
async fn acknowledged_data_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path()).await;
    let mut conn = Conn::connect(&broker).await;
    create_topic(&mut conn, "t", 1).await;
    for i in 0..20 {
        let r = conn.call(produce("t", 0, batch(&[&format!("m{i}")]))).await;
        assert_eq!(code(&r), ErrorCode::None);
    }
    drop(conn);
    broker.stop().await;

    let broker = start_broker(dir.path()).await;
    let mut conn = Conn::connect(&broker).await;
    // Right after the restart the state machine has not replayed the log yet: the
    // broker must say "not ready" (retriable), never "unknown topic".
    let fetched = conn.call_when_leader(fetch("t", 0, 0, 0)).await;
    assert_eq!(code(&fetched), ErrorCode::None, "{fetched:?}");
    let values = values_of(&fetched);
    assert_eq!(values.len(), 20);
    assert_eq!(values[19], (19, "m19".into()));
    broker.stop().await;
}

#[tokio::test]
async fn acks_leader_answers_before_the_commit_with_the_offsets_the_batches_get() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path()).await;
    let mut conn = Conn::connect(&broker).await;
    create_topic(&mut conn, "t", 1).await;
    let quick = |batch: Bytes| {
        Req::Produce(pb::ProduceRequest {
            topic: "t".into(),
            queue: 0,
            acks: pb::Acks::Leader as i32,
            batch,
        })
    };
    // Pipelined: the second is appended before the first is applied.
    let first = conn.send(quick(batch(&["quick", "ack"]))).await;
    let second = conn.send(quick(batch(&["and", "two", "more"]))).await;
    let mut answers = std::collections::HashMap::new();
    for _ in 0..2 {
        let r = conn.recv().await;
        answers.insert(r.correlation_id, r);
    }
    for (id, expected) in [(first, (0, 2)), (second, (2, 3))] {
        match &answers[&id].body {
            Some(Resp::Produce(p)) => assert_eq!((p.base_offset, p.count), expected),
            other => panic!("{other:?}"),
        }
    }
    // An idempotent producer's batch may still be refused when applied: its offset
    // is not promised.
    let init = conn
        .call(Req::InitProducer(pb::InitProducerRequest {}))
        .await;
    let Some(Resp::InitProducer(p)) = init.body else {
        panic!("{init:?}")
    };
    let mut b = BatchBuilder::with_capacity(256);
    b.set_producer(p.producer_id, p.producer_epoch as u16, 0);
    b.push(None, b"sequenced", &[], 1);
    let idempotent = conn.call(quick(b.finish())).await;
    match &idempotent.body {
        Some(Resp::Produce(p)) => {
            assert_eq!(p.base_offset, raftmq_broker::node::UNKNOWN_OFFSET)
        }
        other => panic!("{other:?}"),
    }
    // The batches commit where the answers said: a long poll sees them.
    let mut values = Vec::new();
    for _ in 0..50 {
        let fetched = conn.call(fetch("t", 0, values.len() as u64, 5_000)).await;
        let have = values.len() as u64;
        values.extend(values_of(&fetched).into_iter().filter(|(o, _)| *o >= have));
        if values.len() >= 6 {
            break;
        }
    }
    assert_eq!(
        values,
        vec![
            (0, "quick".into()),
            (1, "ack".into()),
            (2, "and".into()),
            (3, "two".into()),
            (4, "more".into()),
            (5, "sequenced".into())
        ]
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_multi_queue_produce_answers_each_part_as_a_produce_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path()).await;
    let mut conn = Conn::connect(&broker).await;
    create_topic(&mut conn, "t", 3).await;
    let part = |topic: &str, queue: u32, batch: Bytes| pb::ProduceRequest {
        topic: topic.into(),
        queue,
        acks: pb::Acks::Quorum as i32,
        batch,
    };
    let mut corrupt = batch(&["bad"]).to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    let response = conn
        .call(Req::ProduceMany(pb::ProduceManyRequest {
            parts: vec![
                part("t", 0, batch(&["a", "b"])),
                part("t", 2, batch(&["x"])),
                part("missing", 0, batch(&["lost"])),
                part("t", 0, batch(&["c"])),
                part("t", 1, Bytes::from(corrupt)),
                part("t", 9, batch(&["nowhere"])),
                part("t", 2, batch(&["y", "z"])),
            ],
        }))
        .await;
    assert_eq!(code(&response), ErrorCode::None, "{response:?}");
    let Some(Resp::ProduceMany(many)) = response.body else {
        panic!("{response:?}")
    };
    let outcomes: Vec<(ErrorCode, u64, u32)> = many
        .results
        .iter()
        .map(|r| {
            let code = r.error.as_ref().map_or(ErrorCode::None, |e| {
                ErrorCode::try_from(e.code).unwrap_or(ErrorCode::None)
            });
            (code, r.base_offset, r.count)
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (ErrorCode::None, 0, 2),
            (ErrorCode::None, 0, 1),
            (ErrorCode::UnknownTopic, 0, 0),
            (ErrorCode::None, 2, 1),
            (ErrorCode::CorruptBatch, 0, 0),
            (ErrorCode::InvalidQueue, 0, 0),
            (ErrorCode::None, 1, 2),
        ],
        "each part is answered as a produce alone, in order"
    );
    let queue0 = conn.call(fetch("t", 0, 0, 0)).await;
    assert_eq!(
        values_of(&queue0),
        vec![(0, "a".into()), (1, "b".into()), (2, "c".into())]
    );
    let queue2 = conn.call(fetch("t", 2, 0, 0)).await;
    assert_eq!(
        values_of(&queue2),
        vec![(0, "x".into()), (1, "y".into()), (2, "z".into())]
    );
    let queue1 = conn.call(fetch("t", 1, 0, 0)).await;
    assert_eq!(values_of(&queue1), vec![], "nothing stored");

    // No parts: an empty answer.
    let empty = conn
        .call(Req::ProduceMany(pb::ProduceManyRequest { parts: vec![] }))
        .await;
    match empty.body {
        Some(Resp::ProduceMany(m)) => assert!(m.results.is_empty()),
        other => panic!("{other:?}"),
    }
    broker.stop().await;
}

fn fetch_part(topic: &str, queue: u32, offset: u64) -> pb::FetchRequest {
    pb::FetchRequest {
        topic: topic.into(),
        queue,
        offset,
        max_bytes: 1 << 20,
        ..pb::FetchRequest::default()
    }
}

/// (error code, values) of each part of a multi-queue fetch answer.
fn parts_of(response: &pb::Response) -> Vec<(ErrorCode, Vec<(u64, String)>)> {
    let Some(Resp::FetchMany(many)) = &response.body else {
        panic!("not a multi-queue fetch answer: {response:?}");
    };
    many.results
        .iter()
        .map(|r| {
            let code = r.error.as_ref().map_or(ErrorCode::None, |e| {
                ErrorCode::try_from(e.code).unwrap_or(ErrorCode::None)
            });
            let values = r.fetch.as_ref().map_or_else(Vec::new, |f| {
                values_of(&pb::Response {
                    body: Some(Resp::Fetch(f.clone())),
                    ..pb::Response::default()
                })
            });
            (code, values)
        })
        .collect()
}

#[tokio::test]
async fn a_multi_queue_fetch_reads_every_part_and_shares_one_long_poll() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path()).await;
    let mut conn = Conn::connect(&broker).await;
    let mut producer = Conn::connect(&broker).await;
    create_topic(&mut conn, "t", 3).await;
    for (queue, values) in [(0, &["a", "b"][..]), (2, &["x"][..])] {
        let r = producer.call(produce("t", queue, batch(values))).await;
        assert_eq!(code(&r), ErrorCode::None, "{r:?}");
    }
    let many = |parts: Vec<pb::FetchRequest>, max_wait_ms: u32, max_bytes: u32| {
        Req::FetchMany(pb::FetchManyRequest {
            parts,
            max_wait_ms,
            min_bytes: 1,
            max_bytes,
        })
    };
    // Data at once: every part answered, in order, errors alone.
    let response = conn
        .call(many(
            vec![
                fetch_part("t", 0, 1),
                fetch_part("t", 1, 0),
                fetch_part("missing", 0, 0),
                fetch_part("t", 2, 0),
                fetch_part("t", 7, 0),
            ],
            10_000,
            1 << 20,
        ))
        .await;
    assert_eq!(code(&response), ErrorCode::None, "{response:?}");
    assert_eq!(
        parts_of(&response),
        vec![
            // Whole batches: the one holding offset 1 starts at 0.
            (ErrorCode::None, vec![(0, "a".into()), (1, "b".into())]),
            (ErrorCode::None, vec![]),
            (ErrorCode::UnknownTopic, vec![]),
            (ErrorCode::None, vec![(0, "x".into())]),
            (ErrorCode::InvalidQueue, vec![]),
        ]
    );

    // A byte budget: the first part with data is served, later ones wait for the
    // next request.
    let response = conn
        .call(many(
            vec![fetch_part("t", 0, 0), fetch_part("t", 2, 0)],
            0,
            1,
        ))
        .await;
    assert_eq!(
        parts_of(&response),
        vec![
            (ErrorCode::None, vec![(0, "a".into()), (1, "b".into())]),
            (ErrorCode::None, vec![]),
        ]
    );

    // Nothing new anywhere: one long poll over every part, woken by a write to any.
    let waiting = conn
        .send(many(
            vec![
                fetch_part("t", 0, 2),
                fetch_part("t", 1, 0),
                fetch_part("t", 2, 1),
            ],
            10_000,
            1 << 20,
        ))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let r = producer.call(produce("t", 1, batch(&["late"]))).await;
    assert_eq!(code(&r), ErrorCode::None, "{r:?}");
    let response = conn.recv().await;
    assert_eq!(response.correlation_id, waiting);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "woken by the write, not the end of the wait"
    );
    assert_eq!(
        parts_of(&response),
        vec![
            (ErrorCode::None, vec![]),
            (ErrorCode::None, vec![(0, "late".into())]),
            (ErrorCode::None, vec![]),
        ]
    );

    // Nothing at all: answered empty at the end of the wait.
    let started = std::time::Instant::now();
    let response = conn
        .call(many(vec![fetch_part("t", 2, 1)], 200, 1 << 20))
        .await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(parts_of(&response), vec![(ErrorCode::None, vec![])]);

    // Less than `min_bytes` arrives: the poll goes on until the wait is over.
    let waiting = conn
        .send(Req::FetchMany(pb::FetchManyRequest {
            parts: vec![fetch_part("t", 2, 1)],
            max_wait_ms: 600,
            min_bytes: 1 << 20,
            max_bytes: 1 << 20,
        }))
        .await;
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = producer.call(produce("t", 2, batch(&["small"]))).await;
    assert_eq!(code(&r), ErrorCode::None, "{r:?}");
    let response = conn.recv().await;
    assert_eq!(response.correlation_id, waiting);
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "answered after {:?}, before min_bytes or the end of the wait",
        started.elapsed()
    );
    assert_eq!(
        parts_of(&response),
        vec![(ErrorCode::None, vec![(1, "small".into())])]
    );
    broker.stop().await;
}
