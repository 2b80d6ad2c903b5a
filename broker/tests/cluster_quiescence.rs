//! Quiesced data groups with real broker processes: idle data groups stop
//! heartbeating on every replica, a write wakes its group and is served at once,
//! and a node that freezes (SIGSTOP: no connection closes, so only the node-level
//! failure detector can tell) while leading quiesced groups has them taken over by
//! the other nodes; nothing acknowledged is lost.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{read_all, Cluster};
use raftmq_client::{Admin, Client, ClientConfig, Message, Producer};
use raftmq_proto::pb;

const TOPIC: &str = "idle";
const QUEUES: u32 = 6;
const GROUPS: u32 = 3;

/// Every node's view of every data group (nodes that do not answer are skipped).
async fn replica_views(client: &Client) -> Vec<(u64, pb::GroupInfo)> {
    let Ok(statuses) = Admin::new(client).cluster_status().await else {
        return Vec::new();
    };
    statuses
        .into_iter()
        .filter_map(|n| n.status.ok().map(|s| (n.node_id, s)))
        .flat_map(|(node, s)| {
            s.groups
                .into_iter()
                .filter(|g| g.group_id != 0)
                .map(move |g| (node, g))
        })
        .collect()
}

/// Waits (bounded) until every replica of every data group on `nodes` is quiesced
/// under one leader.
async fn wait_quiesced(client: &Client, nodes: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let views = replica_views(client).await;
        let quiesced = views.len() == nodes * GROUPS as usize
            && views.iter().all(|(_, g)| g.quiesced && g.leader_id != 0);
        if quiesced {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "idle data groups did not quiesce within {within:?}: {:?}",
            views
                .iter()
                .map(|(n, g)| (n, g.group_id, &g.role, g.leader_id, g.quiesced))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends one message to every queue and waits for every acknowledgement.
async fn produce_round(producer: &Producer, round: u32) -> Vec<(u32, String)> {
    let mut pending = Vec::new();
    for q in 0..QUEUES {
        let value = format!("r{round}-q{q}");
        let delivery = producer
            .send(Message::new(TOPIC, value.clone()).with_queue(q))
            .await
            .expect("send");
        pending.push((q, value, delivery));
    }
    let mut acked = Vec::new();
    for (q, value, delivery) in pending {
        delivery.await.expect("acknowledged");
        acked.push((q, value));
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_groups_quiesce_and_a_frozen_leader_of_quiesced_groups_is_replaced() {
    let mut cluster = Cluster::start_with(3, &["--data-groups", &GROUPS.to_string()]);
    let client = Client::connect(&cluster.addrs()).await.expect("connect");
    Admin::new(&client)
        .create_topic(TOPIC, QUEUES)
        .await
        .expect("create topic");
    let producer = Producer::builder(&client).build().await.expect("producer");
    let mut acked = produce_round(&producer, 0).await;

    // Idle: every replica of every data group quiesces.
    wait_quiesced(&client, 3, Duration::from_secs(30)).await;

    // A write wakes its group and is served (and the group quiesces again).
    let started = Instant::now();
    acked.extend(produce_round(&producer, 1).await);
    let woke_in = started.elapsed();
    assert!(
        woke_in < Duration::from_secs(5),
        "a write to quiesced groups took {woke_in:?}"
    );
    wait_quiesced(&client, 3, Duration::from_secs(30)).await;

    // Freeze a node that leads a data group: its connections stay open, so only
    // the failure detector (silence for two election timeouts) can wake the
    // followers of its quiesced groups.
    let views = replica_views(&client).await;
    let leaders: BTreeMap<u32, u64> = views
        .iter()
        .map(|(_, g)| (g.group_id, g.leader_id))
        .collect();
    let frozen = *leaders.values().next().expect("a data group leader");
    eprintln!("data-group leaders {leaders:?}: freezing node {frozen}");
    cluster.signal(frozen, libc::SIGSTOP);
    let others: Vec<String> = (1..=3u64)
        .filter(|&n| n != frozen)
        .map(|n| cluster.nodes[(n - 1) as usize].addr.to_string())
        .collect();
    let config = ClientConfig {
        // A request to the frozen node is given up on quickly and retried.
        request_timeout: Duration::from_secs(2),
        ..ClientConfig::default()
    };
    let survivor = Client::connect_with(&others, config)
        .await
        .expect("connect to the running nodes");
    let survivor_producer = Producer::builder(&survivor)
        .build()
        .await
        .expect("producer");
    let started = Instant::now();
    acked.extend(produce_round(&survivor_producer, 2).await);
    let failover = started.elapsed();
    eprintln!("writes to the frozen node's quiesced groups served after {failover:?}");
    assert!(
        failover < Duration::from_secs(20),
        "new leaders took {failover:?}"
    );
    for (_, g) in replica_views(&survivor).await {
        assert_ne!(
            g.leader_id, frozen,
            "group {} still led by the frozen node",
            g.group_id
        );
    }

    // Thawed, the node rejoins; every acknowledged message is there exactly once.
    cluster.signal(frozen, libc::SIGCONT);
    producer.close().await;
    survivor_producer.close().await;
    let stored = read_all(&client, TOPIC, QUEUES).await;
    for (q, value) in &acked {
        let copies = stored
            .get(q)
            .map_or(0, |vs| vs.iter().filter(|v| *v == value).count());
        assert_eq!(copies, 1, "{value} in queue {q}: {:?}", stored.get(q));
    }
    let total: usize = stored.values().map(Vec::len).sum();
    assert_eq!(total, acked.len(), "{stored:?}");
}
