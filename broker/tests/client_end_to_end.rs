//! The client library against real brokers: producer and consumer round trips on
//! one node, the producer's retries across a leader kill on three nodes, and consumer
//! groups (assignment, rebalance, committed offsets, fencing, reset).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use raftmq_broker::config::BrokerConfig;
use raftmq_broker::raft::NodeId;
use raftmq_broker::Broker;
use raftmq_client::{
    Admin, Client, Consumer, GroupConfig, GroupConsumer, Message, Partitioner, Producer, SeekTo,
};
use raftmq_proto::pb::ErrorCode;

async fn single_node(dir: &std::path::Path) -> Broker {
    let mut config = BrokerConfig {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        segment_bytes: 16 << 20,
        max_batch_bytes: 1 << 20,
        max_frame_bytes: 4 << 20,
        election_timeout_ticks: 5,
        heartbeat_interval_ticks: 1,
        ..BrokerConfig::default()
    };
    config.peers = BTreeMap::from([(NodeId(1), config.listen)]);
    Broker::start(config).await.expect("broker starts")
}

async fn create_topic(client: &Client, name: &str, queues: u32) {
    let admin = Admin::new(client);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match admin.create_topic(name, queues).await {
            Ok(()) => return,
            Err(e) if Instant::now() < deadline => {
                eprintln!("create topic: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("create topic {name}: {e}"),
        }
    }
}

/// Reads every queue of `topic` from the start up to its end.
async fn drain(
    client: &Client,
    topic: &str,
    queues: u32,
    expected: usize,
) -> Vec<(u32, u64, String)> {
    let mut consumer = Consumer::new(client);
    let all: Vec<u32> = (0..queues).collect();
    consumer.assign(topic, &all).await.unwrap();
    for q in &all {
        consumer.seek(*q, SeekTo::Earliest).await.unwrap();
    }
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.len() < expected {
        assert!(
            Instant::now() < deadline,
            "read {} of {expected}",
            out.len()
        );
        for m in consumer.poll().await.unwrap() {
            out.push((
                m.queue,
                m.offset,
                String::from_utf8(m.value.to_vec()).unwrap(),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_round_trip_through_producer_and_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let broker = single_node(dir.path()).await;
    let client = Client::connect(&[broker.local_addr.to_string()])
        .await
        .unwrap();
    create_topic(&client, "orders", 4).await;
    let producer = Producer::builder(&client).build().await.unwrap();
    let mut acks = Vec::new();
    for i in 0..10_000u32 {
        let message = Message::new("orders", format!("v{i}")).with_key(format!("k{}", i % 50));
        acks.push(producer.send(message).await.unwrap());
    }
    let mut per_key_queue = BTreeMap::new();
    for (i, ack) in acks.into_iter().enumerate() {
        let meta = ack.await.unwrap();
        let queue = *per_key_queue.entry(i % 50).or_insert(meta.queue);
        assert_eq!(queue, meta.queue, "one key, one queue");
    }
    producer.close().await;

    let read = drain(&client, "orders", 4, 10_000).await;
    assert_eq!(read.len(), 10_000);
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    let mut values = BTreeSet::new();
    for (queue, offset, value) in read {
        if let Some(prev) = last.insert(queue, offset) {
            assert_eq!(offset, prev + 1, "offsets contiguous in queue {queue}");
        }
        assert!(values.insert(value), "no duplicates");
    }
    let description = Admin::new(&client).describe_topic("orders").await.unwrap();
    assert_eq!(description.queues.len(), 4);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_batches_are_stored_compressed_and_read_back_exactly() {
    use raftmq_client::pb::{request::Body as Req, response::Body as Resp};
    use raftmq_client::{Compression, Target};
    let dir = tempfile::tempdir().unwrap();
    let broker = single_node(dir.path()).await;
    let client = Client::connect(&[broker.local_addr.to_string()])
        .await
        .unwrap();
    for (topic, compression) in [("lz4", Compression::Lz4), ("zstd", Compression::Zstd)] {
        create_topic(&client, topic, 2).await;
        let producer = Producer::builder(&client)
            .compression(compression)
            .partitioner(Partitioner::RoundRobin)
            .build()
            .await
            .unwrap();
        let mut acks = Vec::new();
        for i in 0..5_000u32 {
            let value = format!(r#"{{"level":"INFO","service":"checkout","order":{i}}}"#);
            acks.push(producer.send(Message::new(topic, value)).await.unwrap());
        }
        for ack in acks {
            ack.await.unwrap();
        }
        producer.close().await;
        let read = drain(&client, topic, 2, 5_000).await;
        let values: BTreeSet<String> = read.into_iter().map(|(_, _, v)| v).collect();
        assert_eq!(values.len(), 5_000, "{topic}: every message once");
        assert!(values.contains(r#"{"level":"INFO","service":"checkout","order":4999}"#));
        // The broker stored (and serves) the producer's compressed bytes.
        let body = Req::Fetch(raftmq_client::pb::FetchRequest {
            topic: topic.into(),
            queue: 0,
            offset: 0,
            max_bytes: 1 << 20,
            ..Default::default()
        });
        let Resp::Fetch(f) = client.request(Target::Leader, body).await.unwrap() else {
            panic!("not a fetch answer");
        };
        assert!(!f.batches.is_empty());
        // A batch that compression would not shrink (a lone record sent while nothing
        // else was waiting) is sent as it is; every batch of several records shrinks.
        let mut compressed_records = 0;
        for b in &f.batches {
            let records = u32::from_le_bytes(b.batch[20..24].try_into().unwrap());
            if b.batch[17] == compression as u8 {
                compressed_records += records;
            } else {
                assert_eq!(b.batch[17], 0, "{topic}: an unknown codec");
                assert!(
                    records <= 2,
                    "{topic}: {records} records stored uncompressed"
                );
            }
        }
        assert!(compressed_records > 0, "{topic}: nothing stored compressed");
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_retries_across_a_leader_kill_without_loss_or_duplicates() {
    let mut cluster = common::Cluster::start(3);
    let client = Client::connect(&cluster.addrs()).await.unwrap();
    create_topic(&client, "t", 2).await;
    let producer = Producer::builder(&client)
        .partitioner(Partitioner::RoundRobin)
        .build()
        .await
        .unwrap();
    let total = 20_000u32;
    let mut acks = Vec::new();
    for i in 0..total {
        if i == total / 2 {
            // Let some of the first half commit, then kill whoever leads.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let status = Admin::new(&client).cluster_status().await.unwrap();
            let leader = status
                .iter()
                .find(|n| n.status.as_ref().is_ok_and(|s| s.role == "leader"))
                .map(|n| n.node_id)
                .expect("a leader");
            cluster.kill(leader);
        }
        acks.push(
            producer
                .send(Message::new("t", format!("m{i}")))
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await
            .expect("every message is acknowledged after the failover");
    }
    producer.close().await;
    let read = drain(&client, "t", 2, total as usize).await;
    let values: BTreeSet<String> = read.iter().map(|(_, _, v)| v.clone()).collect();
    assert_eq!(read.len(), total as usize, "no duplicates");
    assert_eq!(values.len(), total as usize, "no loss");
}

fn group_config() -> GroupConfig {
    GroupConfig {
        session_timeout: Duration::from_millis(1500),
        ..GroupConfig::default()
    }
}

/// A member's name, its assignment after a poll, and the (queue, offset)s it read.
type Observation = (&'static str, Vec<u32>, Vec<(u32, u64)>);

/// Runs a member that polls until `stop`, reporting what it read and its assignment.
fn spawn_member(
    client: Client,
    name: &'static str,
    stop: tokio::sync::watch::Receiver<bool>,
    seen: tokio::sync::mpsc::UnboundedSender<Observation>,
    leave: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut member = GroupConsumer::join(&client, "g", "t", group_config())
            .await
            .unwrap();
        while !*stop.borrow() {
            let messages = member.poll().await.unwrap();
            let read = messages.iter().map(|m| (m.queue, m.offset)).collect();
            let _ = seen.send((name, member.assignment(), read));
        }
        // Every queue this member held was announced as assigned, in order.
        let mut held: BTreeSet<u32> = BTreeSet::new();
        for event in member.take_rebalances() {
            for q in &event.revoked {
                assert!(held.remove(q), "{name}: revoked {q} it did not hold");
            }
            held.extend(event.assigned.iter().copied());
        }
        let now: BTreeSet<u32> = member.assignment().into_iter().collect();
        assert_eq!(
            held, now,
            "{name}: rebalance events add up to the assignment"
        );
        if leave {
            member.leave().await.unwrap();
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_shares_queues_rebalances_and_commits_every_offset() {
    let dir = tempfile::tempdir().unwrap();
    let broker = single_node(dir.path()).await;
    let client = Client::connect(&[broker.local_addr.to_string()])
        .await
        .unwrap();
    create_topic(&client, "t", 8).await;
    let producer = Producer::builder(&client)
        .partitioner(Partitioner::RoundRobin)
        .build()
        .await
        .unwrap();
    let mut acks = Vec::new();
    for i in 0..8_000u32 {
        acks.push(
            producer
                .send(Message::new("t", format!("m{i}")))
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }

    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop_a, stop_a_rx) = tokio::sync::watch::channel(false);
    let (stop_b, stop_b_rx) = tokio::sync::watch::channel(false);
    let (_stop_c, stop_c_rx) = tokio::sync::watch::channel(false);
    let a = spawn_member(client.clone(), "a", stop_a_rx, seen_tx.clone(), true);
    let b = spawn_member(client.clone(), "b", stop_b_rx, seen_tx.clone(), true);
    let c = spawn_member(client.clone(), "c", stop_c_rx, seen_tx.clone(), false);

    // Phase 1: three members; assignments become disjoint and cover the 8 queues.
    let mut latest: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    let mut read: BTreeSet<(u32, u64)> = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    // Balanced (8 queues over 3 members: 2 or 3 each), disjoint and covering.
    let covered = |latest: &BTreeMap<&str, Vec<u32>>, members: &[&str]| {
        let mut all = Vec::new();
        for m in members {
            let mine = latest.get(m).cloned().unwrap_or_default();
            if mine.len() < 8 / members.len() {
                return false;
            }
            all.extend(mine);
        }
        let unique: BTreeSet<u32> = all.iter().copied().collect();
        unique.len() == 8 && all.len() == 8
    };
    while !(covered(&latest, &["a", "b", "c"]) && read.len() == 8_000) {
        assert!(
            Instant::now() < deadline,
            "phase 1: {latest:?}, read {}",
            read.len()
        );
        let (name, assignment, got) = seen_rx.recv().await.unwrap();
        latest.insert(name, assignment);
        read.extend(got);
    }

    // Phase 2: b leaves cleanly, c dies silently; a covers everything again.
    stop_b.send(true).unwrap();
    b.await.unwrap();
    c.abort();
    let _ = c.await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "phase 2: {latest:?}");
        let (name, assignment, got) = seen_rx.recv().await.unwrap();
        read.extend(got);
        latest.insert(name, assignment);
        if covered(&latest, &["a"]) {
            break;
        }
    }
    let admin = Admin::new(&client);
    // A reset is refused while the group has a live member.
    let refused = admin.reset_group_offsets("g", "t", SeekTo::Earliest).await;
    let code = refused.unwrap_err().server_error().map(|e| e.code());
    assert_eq!(code, Some(ErrorCode::GroupNotEmpty));

    stop_a.send(true).unwrap();
    a.await.unwrap();
    drop(seen_tx);
    while let Some((_, _, got)) = seen_rx.recv().await {
        read.extend(got);
    }
    assert_eq!(read.len(), 8_000, "every message consumed at least once");

    // Every queue's committed offset reached its end: lag 0.
    let described = admin.describe_group("g").await.unwrap();
    assert_eq!(described.queues.len(), 8);
    for q in &described.queues {
        assert!(q.has_committed, "{q:?}");
        assert_eq!(q.lag, 0, "{q:?}");
    }
    // With no members left, a reset goes through.
    assert!(described.members.is_empty(), "{:?}", described.members);
    let offsets = admin
        .reset_group_offsets("g", "t", SeekTo::Earliest)
        .await
        .unwrap();
    assert!(offsets.iter().all(|o| o.offset == 0));
    broker.stop().await;
}

/// Waits until `client`'s metadata names a cluster id (the first leader writes it).
async fn cluster_id_of(client: &Client) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(m) = client.refresh_metadata().await {
            if m.cluster_id != 0 {
                return m.cluster_id;
            }
        }
        assert!(Instant::now() < deadline, "no cluster id in the metadata");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_client_refuses_brokers_of_another_cluster() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let a = single_node(dir_a.path()).await;
    let b = single_node(dir_b.path()).await;
    let (addr_a, addr_b) = (a.local_addr.to_string(), b.local_addr.to_string());
    // Each single node is its own cluster, with its own id.
    let id_b = cluster_id_of(&Client::connect(&[addr_b.as_str()]).await.unwrap()).await;
    // A first on its own, so that A is up before the client that knows both
    // binds to the first to answer (else it may be B, if A is still electing).
    let id_a = cluster_id_of(&Client::connect(&[addr_a.as_str()]).await.unwrap()).await;
    assert_ne!(id_a, id_b);
    let client = Client::connect(&[addr_a.as_str(), addr_b.as_str()])
        .await
        .expect("connect");
    assert_eq!(cluster_id_of(&client).await, id_a);
    // With A gone, B answers: the client says it is another cluster instead of
    // talking to it.
    a.stop().await;
    let err = client
        .refresh_metadata()
        .await
        .expect_err("B is another cluster");
    assert!(
        matches!(err, raftmq_client::ClientError::WrongCluster(_)),
        "{err}"
    );
    assert!(err.to_string().contains(&addr_b), "{err}");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_of_several_queues_returns_what_it_read_and_the_error_of_one_queue_next() {
    let dir = tempfile::tempdir().unwrap();
    let broker = single_node(dir.path()).await;
    let client = Client::connect(&[broker.local_addr.to_string()])
        .await
        .unwrap();
    create_topic(&client, "mixed", 3).await;
    let producer = Producer::builder(&client).build().await.unwrap();
    for i in 0..3 {
        producer
            .send_and_wait(Message::new("mixed", format!("v{i}")).with_queue(0))
            .await
            .unwrap();
    }
    let config = raftmq_client::ConsumerConfig {
        reset: raftmq_client::OffsetReset::Error,
        max_wait: Duration::from_millis(200),
        ..raftmq_client::ConsumerConfig::default()
    };
    let mut consumer = Consumer::with_config(&client, config);
    consumer.assign("mixed", &[0, 1, 2]).await.unwrap();
    consumer.seek(0, SeekTo::Earliest).await.unwrap();
    consumer.seek(1, SeekTo::Earliest).await.unwrap();
    // Past the end of queue 2: out of range, and the policy is to fail.
    consumer.seek(2, SeekTo::Offset(1_000)).await.unwrap();
    let mut read = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let error = loop {
        assert!(Instant::now() < deadline, "read {read:?}, no error");
        match consumer.poll().await {
            Ok(messages) => read.extend(messages.into_iter().map(|m| {
                (
                    m.queue,
                    m.offset,
                    String::from_utf8(m.value.to_vec()).unwrap(),
                )
            })),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(
            error.server_error(),
            Some(raftmq_proto::ServerError::OffsetOutOfRange { .. })
        ),
        "{error}"
    );
    assert_eq!(
        read,
        vec![
            (0, 0, "v0".to_string()),
            (0, 1, "v1".to_string()),
            (0, 2, "v2".to_string())
        ],
        "what was read before the error is returned, not skipped"
    );
    assert_eq!(consumer.positions().get(&0), Some(&Some(3)));
    broker.stop().await;
}
