//! Three real broker processes on loopback: replication, leader failover during
//! produce, and restarts, checked from the outside like a Jepsen workload: every
//! acknowledged message is read back exactly once, in order, with no gaps.

mod common;

use std::time::{Duration, Instant};

use common::raw::{code, Conn};
use common::{call_leader, create_topic, find_leader, init_producer, Cluster};
use raftmq_proto::batch::BatchBuilder;
use raftmq_proto::pb::{self, request::Body as Req, response::Body as Resp, ErrorCode};

const MESSAGES_PER_BATCH: u32 = 10;

fn batch_of(producer_id: u64, seq: u32) -> bytes::Bytes {
    let mut b = BatchBuilder::with_capacity(1024);
    b.set_producer(producer_id, 0, seq * MESSAGES_PER_BATCH);
    for i in 0..MESSAGES_PER_BATCH {
        b.push(
            None,
            format!("m{}", seq * MESSAGES_PER_BATCH + i).as_bytes(),
            &[],
            1,
        );
    }
    b.finish()
}

async fn read_all(cluster: &Cluster, topic: &str, queue: u32) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let request = Req::Fetch(pb::FetchRequest {
            topic: topic.into(),
            queue,
            offset,
            max_bytes: 1 << 20,
            ..pb::FetchRequest::default()
        });
        let response = call_leader(cluster, request, Duration::from_secs(30)).await;
        let Some(Resp::Fetch(fetch)) = response.body else {
            panic!("fetch failed: {response:?}");
        };
        for b in &fetch.batches {
            for m in raftmq_proto::batch::decode_records(&b.batch, b.base_offset) {
                let m = m.expect("stored batches decode");
                if m.offset >= offset {
                    out.push((m.offset, String::from_utf8(m.value.to_vec()).unwrap()));
                }
            }
        }
        offset = out.last().map_or(0, |(o, _)| o + 1);
        if offset >= fetch.high_watermark {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_during_produce_loses_no_acknowledged_message() {
    let mut cluster = Cluster::start(3);
    create_topic(&cluster, "t", 1).await;
    let producer_id = init_producer(&cluster).await;

    let batches = 120u32;
    let mut killed = None;
    for seq in 0..batches {
        if seq == batches / 2 {
            let leader = find_leader(&cluster, Duration::from_secs(10)).await;
            cluster.kill(leader);
            killed = Some(leader);
        }
        let request = Req::Produce(pb::ProduceRequest {
            topic: "t".into(),
            queue: 0,
            acks: pb::Acks::Quorum as i32,
            batch: batch_of(producer_id, seq),
        });
        let response = call_leader(&cluster, request, Duration::from_secs(30)).await;
        match code(&response) {
            ErrorCode::None | ErrorCode::DuplicateSequence => {}
            other => panic!("batch {seq}: {other:?} {response:?}"),
        }
    }

    let values = read_all(&cluster, "t", 0).await;
    let expected: Vec<(u64, String)> = (0..u64::from(batches * MESSAGES_PER_BATCH))
        .map(|i| (i, format!("m{i}")))
        .collect();
    assert_eq!(values.len(), expected.len(), "exactly once");
    assert_eq!(values, expected, "in order, no gaps, no duplicates");

    // The killed node comes back and catches up to the same commit index.
    let killed = killed.expect("a leader was killed");
    cluster.restart(killed);
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let mut commits = Vec::new();
        for id in cluster.running() {
            let addr = cluster.nodes[(id - 1) as usize].addr;
            let mut conn = Conn::connect_addr(addr).await.expect("connect");
            let response = conn
                .call(Req::ClusterStatus(pb::ClusterStatusRequest {}))
                .await;
            let Some(Resp::ClusterStatus(s)) = response.body else {
                panic!("{response:?}")
            };
            commits.push((s.commit_index, s.applied_index, s.last_index));
        }
        if commits.windows(2).all(|w| w[0] == w[1]) {
            break;
        }
        assert!(
            Instant::now() < until,
            "replicas did not converge: {commits:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_nodes_restarted_keep_every_acknowledged_message() {
    let mut cluster = Cluster::start(3);
    let create = Req::CreateTopic(pb::CreateTopicRequest {
        name: "t".into(),
        queues: 2,
        ..Default::default()
    });
    let response = call_leader(&cluster, create, Duration::from_secs(30)).await;
    assert_eq!(code(&response), ErrorCode::None, "{response:?}");
    for seq in 0..20u32 {
        let request = Req::Produce(pb::ProduceRequest {
            topic: "t".into(),
            queue: seq % 2,
            acks: pb::Acks::Quorum as i32,
            batch: batch_of(0, seq),
        });
        let response = call_leader(&cluster, request, Duration::from_secs(30)).await;
        assert_eq!(code(&response), ErrorCode::None, "{response:?}");
    }
    for id in 1..=3 {
        cluster.kill(id);
    }
    for id in 1..=3 {
        cluster.restart(id);
    }
    for queue in 0..2 {
        let values = read_all(&cluster, "t", queue).await;
        assert_eq!(values.len(), 100, "queue {queue} after a full restart");
    }
}
