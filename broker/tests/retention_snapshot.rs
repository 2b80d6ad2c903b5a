//! Retention and snapshots with real broker processes: a follower stopped while the
//! cluster produces past several retention cycles comes back, catches up through an
//! InstallSnapshot, and then holds every message the cluster still retains (it is
//! made leader and serves them).

mod common;

use std::time::{Duration, Instant};

use common::raw::{code, Conn};
use common::{call_leader, create_topic, find_leader, init_producer, Cluster};
use raftmq_proto::batch::BatchBuilder;
use raftmq_proto::pb::{self, request::Body as Req, response::Body as Resp, ErrorCode};

const MESSAGES_PER_BATCH: u32 = 10;
const VALUE_BYTES: usize = 1000;

fn value(i: u64) -> Vec<u8> {
    let mut v = format!("m{i}:").into_bytes();
    v.resize(VALUE_BYTES, b'x');
    v
}

fn batch_of(producer_id: u64, seq: u32) -> bytes::Bytes {
    let mut b = BatchBuilder::with_capacity(16 * 1024);
    b.set_producer(producer_id, 0, seq * MESSAGES_PER_BATCH);
    for i in 0..MESSAGES_PER_BATCH {
        b.push(
            None,
            &value(u64::from(seq * MESSAGES_PER_BATCH + i)),
            &[],
            1,
        );
    }
    b.finish()
}

async fn status(cluster: &Cluster, id: u64) -> pb::ClusterStatusResponse {
    let addr = cluster.nodes[(id - 1) as usize].addr;
    let mut conn = Conn::connect_addr(addr).await.expect("connect");
    let response = conn
        .call(Req::ClusterStatus(pb::ClusterStatusRequest {}))
        .await;
    match response.body {
        Some(Resp::ClusterStatus(s)) => s,
        _ => panic!("{response:?}"),
    }
}

async fn produce(cluster: &Cluster, producer_id: u64, seqs: std::ops::Range<u32>) {
    for seq in seqs {
        let request = Req::Produce(pb::ProduceRequest {
            topic: "t".into(),
            queue: 0,
            acks: pb::Acks::Quorum as i32,
            batch: batch_of(producer_id, seq),
        });
        let response = call_leader(cluster, request, Duration::from_secs(30)).await;
        match code(&response) {
            ErrorCode::None | ErrorCode::DuplicateSequence => {}
            other => panic!("batch {seq}: {other:?} {response:?}"),
        }
    }
}

/// A fetch of queue 0 of "t" from `offset`.
fn fetch_t0(offset: u64) -> Req {
    Req::Fetch(pb::FetchRequest {
        topic: "t".into(),
        queue: 0,
        offset,
        max_bytes: 1 << 20,
        ..pb::FetchRequest::default()
    })
}

/// Reads queue 0 of "t" from `addr` (which must lead) from the log start on.
async fn read_retained(addr: std::net::SocketAddr) -> (u64, Vec<(u64, Vec<u8>)>) {
    let mut conn = Conn::connect_addr(addr).await.expect("connect");
    let probe = conn.call(fetch_t0(0)).await;
    assert_eq!(
        code(&probe),
        ErrorCode::OffsetOutOfRange,
        "offset 0 was deleted: {probe:?}"
    );
    let log_start = probe.error.as_ref().expect("error").log_start;
    assert!(log_start > 0);
    let mut out = Vec::new();
    let mut offset = log_start;
    for _ in 0..10_000 {
        let response = conn.call(fetch_t0(offset)).await;
        let Some(Resp::Fetch(fetch)) = response.body else {
            panic!("fetch at {offset}: {response:?}");
        };
        for b in &fetch.batches {
            for m in raftmq_proto::batch::decode_records(&b.batch, b.base_offset) {
                let m = m.expect("stored batches decode");
                if m.offset >= offset {
                    out.push((m.offset, m.value.to_vec()));
                }
            }
        }
        offset = out.last().map_or(offset, |(o, _)| o + 1);
        if offset >= fetch.high_watermark {
            return (log_start, out);
        }
    }
    panic!("read did not finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_stopped_past_several_retention_cycles_rejoins_from_a_snapshot() {
    // 64 KiB segments, at most 4 of them kept: each ~10 KB batch fills a segment in
    // about 6 batches, so 300 batches are about 11 retention cycles of 4 segments.
    let mut cluster = Cluster::start_with(
        3,
        &[
            "--segment-bytes",
            "65536",
            "--max-batch-bytes",
            "32768",
            "--retention-bytes",
            "262144",
            "--retention-check-interval-ms",
            "100",
            "--retention-follower-grace-ms",
            "500",
        ],
    );
    create_topic(&cluster, "t", 1).await;
    let pid = init_producer(&cluster).await;
    produce(&cluster, pid, 0..20).await;

    let leader = find_leader(&cluster, Duration::from_secs(10)).await;
    let stopped = if leader == 3 { 2 } else { 3 };
    let stopped_last = status(&cluster, stopped).await.last_index;
    cluster.kill(stopped);

    let total = 300u32;
    produce(&cluster, pid, 20..total).await;
    // Retention passes the stopped node once its grace period is over.
    let until = Instant::now() + Duration::from_secs(30);
    let first = loop {
        let leader = find_leader(&cluster, Duration::from_secs(10)).await;
        let s = status(&cluster, leader).await;
        if s.first_index > stopped_last + 1 {
            break s.first_index;
        }
        assert!(
            Instant::now() < until,
            "retention did not pass the stopped node's log end {stopped_last}: first index {}",
            s.first_index
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(first > 1);

    cluster.restart(stopped);
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let mut views = Vec::new();
        for id in cluster.running() {
            let s = status(&cluster, id).await;
            views.push((s.commit_index, s.applied_index, s.last_index));
        }
        let rejoined = status(&cluster, stopped).await;
        if views.windows(2).all(|w| w[0] == w[1]) && rejoined.first_index > stopped_last + 1 {
            break;
        }
        assert!(
            Instant::now() < until,
            "the stopped node did not catch up: {views:?}, its first index {}",
            rejoined.first_index
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let log = std::fs::read_to_string(cluster.log_path(stopped)).expect("node log");
    assert!(
        log.contains("installed the leader's snapshot"),
        "n{stopped} caught up without a snapshot install"
    );

    // The rejoined node leads and serves everything retained, contiguous and intact.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let leader = find_leader(&cluster, Duration::from_secs(10)).await;
        if leader == stopped {
            break;
        }
        let addr = cluster.nodes[(leader - 1) as usize].addr;
        if let Ok(mut conn) = Conn::connect_addr(addr).await {
            let _ = conn
                .try_call(
                    Req::TransferLeader(pb::TransferLeaderRequest {
                        to_node_id: stopped,
                    }),
                    Duration::from_secs(5),
                )
                .await;
        }
        assert!(
            Instant::now() < until,
            "leadership did not move to n{stopped}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let addr = cluster.nodes[(stopped - 1) as usize].addr;
    let (log_start, values) = read_retained(addr).await;
    let end = u64::from(total * MESSAGES_PER_BATCH);
    assert_eq!(
        values.len() as u64,
        end - log_start,
        "every retained message, once"
    );
    for (i, (offset, v)) in values.iter().enumerate() {
        assert_eq!(*offset, log_start + i as u64, "contiguous offsets");
        assert_eq!(v, &value(*offset), "message {offset} intact");
    }
    // Producing goes on where it stopped: the producer session came with the snapshot.
    produce(&cluster, pid, total..total + 5).await;
    let s = status(&cluster, stopped).await;
    assert_eq!(s.role, "leader");
}

// ----- One in-process node: retention, OffsetOutOfRange, restart from the snapshot ----

fn single_node_config(dir: &std::path::Path) -> raftmq_broker::config::BrokerConfig {
    use raftmq_broker::config::BrokerConfig;
    use raftmq_broker::raft::NodeId;
    let mut config = BrokerConfig {
        node_id: NodeId(1),
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        segment_bytes: 64 * 1024,
        max_batch_bytes: 32 * 1024,
        max_frame_bytes: 1 << 20,
        election_timeout_ticks: 5,
        heartbeat_interval_ticks: 1,
        retention_bytes: 4 * 64 * 1024,
        retention_check_interval_ms: 20,
        ..BrokerConfig::default()
    };
    config.peers.clear();
    config.peers.insert(NodeId(1), config.listen);
    config
}

async fn call_ok(conn: &mut Conn, body: Req) -> pb::Response {
    let response = conn.call_when_leader(body).await;
    assert_eq!(code(&response), ErrorCode::None, "{response:?}");
    response
}

/// Starts a single node and creates topic "t" with one queue (and a retention of
/// its own of `retention_bytes` per queue, 0 for none).
async fn start_with_topic(
    config: raftmq_broker::config::BrokerConfig,
    retention_bytes: u64,
) -> (raftmq_broker::Broker, Conn) {
    let broker = raftmq_broker::Broker::start(config).await.expect("starts");
    let mut conn = Conn::connect(&broker).await;
    call_ok(
        &mut conn,
        Req::CreateTopic(pb::CreateTopicRequest {
            name: "t".into(),
            queues: 1,
            retention_bytes,
            ..Default::default()
        }),
    )
    .await;
    (broker, conn)
}

fn produce_req(pid: u64, seq: u32) -> Req {
    Req::Produce(pb::ProduceRequest {
        topic: "t".into(),
        queue: 0,
        acks: pb::Acks::Quorum as i32,
        batch: batch_of(pid, seq),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_segments_and_a_restart_restores_the_state_from_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut conn) = start_with_topic(single_node_config(dir.path()), 0).await;
    let Some(Resp::InitProducer(producer)) =
        call_ok(&mut conn, Req::InitProducer(pb::InitProducerRequest {}))
            .await
            .body
    else {
        panic!("no producer id");
    };
    let pid = producer.producer_id;
    let batches = 120u32;
    for seq in 0..batches {
        call_ok(&mut conn, produce_req(pid, seq)).await;
        if seq == 3 {
            call_ok(
                &mut conn,
                Req::OffsetCommit(pb::OffsetCommitRequest {
                    group: "g".into(),
                    offsets: vec![pb::QueueOffset {
                        topic: "t".into(),
                        queue: 0,
                        offset: 25,
                    }],
                    ..pb::OffsetCommitRequest::default()
                }),
            )
            .await;
        }
    }
    let end = u64::from(batches * MESSAGES_PER_BATCH);
    // Retention keeps about 4 segments of the ~19 written.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let response = conn
            .call(Req::ClusterStatus(pb::ClusterStatusRequest {}))
            .await;
        let Some(Resp::ClusterStatus(s)) = response.body else {
            panic!("{response:?}");
        };
        if s.first_index > 1 && s.last_index - s.first_index < 40 {
            break;
        }
        assert!(Instant::now() < until, "retention did not run: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (log_start, values) = read_retained(broker.local_addr).await;
    assert_eq!(values.len() as u64, end - log_start);
    broker.stop().await;

    // Restart: the state machine comes from the snapshot the log starts after.
    let broker = raftmq_broker::Broker::start(single_node_config(dir.path()))
        .await
        .expect("restarts");
    let mut conn = Conn::connect(&broker).await;
    // Leading, with the whole log replayed after the snapshot.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let response = conn
            .call(Req::ClusterStatus(pb::ClusterStatusRequest {}))
            .await;
        let Some(Resp::ClusterStatus(s)) = response.body else {
            panic!("{response:?}");
        };
        if s.role == "leader" && s.applied_index == s.last_index {
            assert!(s.first_index > 1, "the log still starts after its snapshot");
            break;
        }
        assert!(Instant::now() < until, "not ready after the restart: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (log_start_after, values_after) = read_retained(broker.local_addr).await;
    assert!(log_start_after >= log_start);
    assert_eq!(values_after.len() as u64, end - log_start_after);
    assert_eq!(values_after.last(), values.last());
    // Group offsets, producer sessions and offsets continue from the snapshot.
    let response = call_ok(
        &mut conn,
        Req::OffsetFetch(pb::OffsetFetchRequest {
            group: "g".into(),
            queues: vec![],
        }),
    )
    .await;
    let Some(Resp::OffsetFetch(offsets)) = response.body else {
        panic!("{response:?}");
    };
    assert_eq!(offsets.offsets.len(), 1);
    assert_eq!(offsets.offsets[0].offset, 25);
    let retry = conn.call_when_leader(produce_req(pid, batches - 1)).await;
    assert_eq!(code(&retry), ErrorCode::DuplicateSequence, "{retry:?}");
    let next = call_ok(&mut conn, produce_req(pid, batches)).await;
    let Some(Resp::Produce(p)) = next.body else {
        panic!("{next:?}");
    };
    assert_eq!(p.base_offset, end, "offsets continue after the restart");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_is_refused_above_the_disk_use_limit_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = single_node_config(dir.path());
    config.retention_bytes = 0;
    let (broker, mut conn) = start_with_topic(config.clone(), 0).await;
    for seq in 0..3 {
        call_ok(&mut conn, produce_req(0, seq)).await;
    }
    broker.stop().await;

    // Any real file system is above a limit this small.
    config.max_disk_use_ratio = 1e-9;
    let broker = raftmq_broker::Broker::start(config.clone())
        .await
        .expect("starts with a full disk");
    let mut conn = Conn::connect(&broker).await;
    // The node checks the disk every tick.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let until = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let response = conn.call_when_leader(produce_req(0, 3)).await;
        if code(&response) == ErrorCode::StorageError {
            break response;
        }
        assert!(Instant::now() < until, "produce not refused: {response:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let message = refused.error.expect("error").message;
    assert!(message.contains("disk use"), "{message}");
    // What was acknowledged is still there.
    let response = conn.call(fetch_t0(0)).await;
    let Some(Resp::Fetch(fetch)) = response.body else {
        panic!("{response:?}");
    };
    assert!(fetch.high_watermark >= u64::from(3 * MESSAGES_PER_BATCH));
    let stored: usize = fetch
        .batches
        .iter()
        .map(|b| raftmq_proto::batch::decode_records(&b.batch, b.base_offset).count())
        .sum();
    assert_eq!(
        stored as u64, fetch.high_watermark,
        "every acknowledged message"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topics_own_retention_deletes_its_messages_and_frees_their_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = single_node_config(dir.path());
    config.retention_bytes = 0; // the broker alone would keep everything
    let (broker, mut conn) = start_with_topic(config, 100 * 1024).await;
    for seq in 0..120 {
        call_ok(&mut conn, produce_req(0, seq)).await;
    }
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let response = conn
            .call(Req::ClusterStatus(pb::ClusterStatusRequest {}))
            .await;
        let Some(Resp::ClusterStatus(s)) = response.body else {
            panic!("{response:?}");
        };
        if s.first_index > 60 {
            break;
        }
        assert!(Instant::now() < until, "segments were not deleted: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let retention run again after the last produce (every 20 ms here).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (log_start, values) = read_retained(broker.local_addr).await;
    let kept_bytes = values.len() * VALUE_BYTES;
    assert!(
        kept_bytes <= 100 * 1024 + 2 * (MESSAGES_PER_BATCH as usize) * VALUE_BYTES,
        "the topic keeps about its limit: {kept_bytes} bytes from offset {log_start}"
    );
    assert_eq!(
        values.last().map(|(o, _)| *o),
        Some(u64::from(120 * MESSAGES_PER_BATCH) - 1)
    );
    broker.stop().await;
}
