//! Several Raft groups per node, with real broker processes: a 3-node cluster
//! started with `--data-groups 3` spreads a topic's 16 queues over three data
//! groups, each led by its own (preferred) node. An idempotent producer writes to
//! every queue while one node is killed and later restarted: every acknowledged
//! message is then read back exactly once, in order per queue; leadership comes back
//! to the preferred leaders; consumer-group offsets of data-group queues are stored
//! by the metadata group.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Cluster;
use raftmq_client::{Admin, Client, Consumer, GroupConfig, GroupConsumer, Message, Producer};
use raftmq_client::{SeekTo, Target};
use raftmq_proto::pb::{self, request::Body as Req, response::Body as Resp};

const TOPIC: &str = "spread";
const QUEUES: u32 = 16;
const GROUPS: u32 = 3;

/// The metadata a node answers with (data groups and queue placement included).
async fn metadata(client: &Client) -> pb::MetadataResponse {
    let body = Req::Metadata(pb::MetadataRequest::default());
    match client
        .request(Target::Leader, body)
        .await
        .expect("metadata")
    {
        Resp::Metadata(m) => m,
        other => panic!("unexpected answer {}", other.api_key()),
    }
}

/// Waits until every data group is led by its preferred leader (bounded).
async fn wait_balanced(client: &Client, within: Duration) -> pb::MetadataResponse {
    let deadline = Instant::now() + within;
    loop {
        let m = metadata(client).await;
        let balanced = m.groups.len() == GROUPS as usize
            && m.groups
                .iter()
                .all(|g| g.leader_id != 0 && g.leader_id == g.preferred_leader_id);
        if balanced {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "data-group leaders never reached their preferred nodes: {:?}",
            m.groups
                .iter()
                .map(|g| (g.group_id, g.leader_id, g.preferred_leader_id))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every message of every queue, as (queue → values in offset order).
async fn read_all(client: &Client) -> BTreeMap<u32, Vec<String>> {
    let mut consumer = Consumer::new(client);
    let queues: Vec<u32> = (0..QUEUES).collect();
    consumer.assign(TOPIC, &queues).await.expect("assign");
    for q in 0..QUEUES {
        consumer.seek(q, SeekTo::Earliest).await.expect("seek");
    }
    let ends: BTreeMap<u32, u64> = {
        let mut ends = BTreeMap::new();
        for q in 0..QUEUES {
            let end = consumer.seek(q, SeekTo::Latest).await.expect("end");
            ends.insert(q, end);
            consumer.seek(q, SeekTo::Earliest).await.expect("seek");
        }
        ends
    };
    let mut out: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = ends
            .iter()
            .all(|(q, end)| out.get(q).map_or(0, Vec::len) as u64 >= *end);
        if done {
            return out;
        }
        assert!(Instant::now() < deadline, "reading back did not finish");
        for m in consumer.poll().await.expect("poll") {
            let value = String::from_utf8(m.value.to_vec()).expect("utf-8");
            let list = out.entry(m.queue).or_default();
            assert_eq!(
                list.len() as u64,
                m.offset,
                "queue {} skipped or repeated an offset",
                m.queue
            );
            list.push(value);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_spread_over_data_groups_and_survive_a_node_loss() {
    let mut cluster = Cluster::start_with(3, &["--data-groups", &GROUPS.to_string()]);
    let client = Client::connect(&cluster.addrs()).await.expect("connect");
    let admin = Admin::new(&client);
    admin
        .create_topic(TOPIC, QUEUES)
        .await
        .expect("create topic");

    // Placement: every queue in a data group, every data group used.
    let m = wait_balanced(&client, Duration::from_secs(30)).await;
    let topic = m.topics.iter().find(|t| t.name == TOPIC).expect("topic");
    assert_eq!(topic.queue_groups.len(), QUEUES as usize);
    let mut used: Vec<u32> = topic.queue_groups.clone();
    used.sort_unstable();
    used.dedup();
    assert_eq!(used, (1..=GROUPS).collect::<Vec<_>>(), "{topic:?}");
    // One leader per node: each data group on its own preferred node.
    let mut leaders: Vec<u64> = m.groups.iter().map(|g| g.leader_id).collect();
    leaders.sort_unstable();
    leaders.dedup();
    assert_eq!(leaders.len(), GROUPS as usize, "{:?}", m.groups);
    for node in &cluster.nodes {
        for g in 1..=GROUPS {
            let dir = node.data_dir.join("groups").join(g.to_string()).join("log");
            assert!(dir.is_dir(), "{} is missing", dir.display());
        }
    }

    // Produce to every queue; kill node 2 for a while in the middle.
    let producer = Producer::builder(&client)
        .idempotent(true)
        .linger(Duration::from_millis(1))
        .build()
        .await
        .expect("producer");
    let acked: Arc<Mutex<BTreeMap<u32, Vec<String>>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let producer = producer.clone();
        let acked = acked.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let mut waits = Vec::new();
                for q in 0..QUEUES {
                    let value = format!("m{n}-q{q}");
                    let message = Message::new(TOPIC, value.clone()).with_queue(q);
                    let delivery = producer.send(message).await.expect("send");
                    waits.push((q, value, delivery));
                }
                for (q, value, delivery) in waits {
                    if delivery.await.is_ok() {
                        acked.lock().unwrap().entry(q).or_default().push(value);
                    }
                }
                n += 1;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.kill(2);
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.restart(2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let rounds = writer.await.expect("writer");
    producer.flush().await;
    assert!(rounds > 50, "only {rounds} rounds were produced");

    // Every acknowledged message exactly once, in order, per queue.
    let stored = read_all(&client).await;
    let acked = acked.lock().unwrap().clone();
    let mut total = 0;
    for q in 0..QUEUES {
        let want = acked.get(&q).cloned().unwrap_or_default();
        let got = stored.get(&q).cloned().unwrap_or_default();
        let mut seen = std::collections::HashSet::new();
        for v in &got {
            assert!(seen.insert(v), "queue {q}: {v} stored twice");
        }
        let mut position = 0;
        for v in &want {
            let at = got[position..]
                .iter()
                .position(|g| g == v)
                .unwrap_or_else(|| {
                    panic!("queue {q}: acknowledged {v} is missing or out of order")
                });
            position += at + 1;
        }
        total += want.len();
    }
    assert!(total > 50 * QUEUES as usize, "only {total} acknowledged");

    // Leadership comes back to the preferred nodes (node 2 led a group before).
    wait_balanced(&client, Duration::from_secs(30)).await;

    // A consumer group commits offsets of data-group queues in the metadata group.
    let mut group = GroupConsumer::join(&client, "readers", TOPIC, GroupConfig::default())
        .await
        .expect("join");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut consumed = 0usize;
    while consumed < total && Instant::now() < deadline {
        consumed += group.poll().await.expect("group poll").len();
    }
    group.commit().await.expect("commit");
    let offsets = match client
        .request(
            Target::Leader,
            Req::OffsetFetch(pb::OffsetFetchRequest {
                group: "readers".into(),
                ..Default::default()
            }),
        )
        .await
        .expect("offset fetch")
    {
        Resp::OffsetFetch(r) => r,
        other => panic!("unexpected answer {}", other.api_key()),
    };
    let committed: u64 = offsets.offsets.iter().map(|o| o.offset).sum();
    assert_eq!(committed as usize, consumed, "{offsets:?}");
    group.leave().await.expect("leave");
}
