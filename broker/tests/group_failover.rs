//! A consumer group across a leader kill, on three real broker processes: the group
//! continues from its committed offsets, nothing is skipped, and committed offsets
//! never move backwards (watched throughout with `OffsetFetch`); and members stay
//! distinct members across leadership moves.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftmq_client::{
    pb, Admin, Client, GroupConfig, GroupConsumer, Message, Partitioner, Producer, Target,
};

const QUEUES: u32 = 8;
const MESSAGES: u32 = 40_000;

async fn leader_id(client: &Client) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(status) = Admin::new(client).cluster_status().await {
            if let Some(n) = status
                .iter()
                .find(|n| n.status.as_ref().is_ok_and(|s| s.role == "leader"))
            {
                return n.node_id;
            }
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn committed(client: &Client) -> BTreeMap<u32, u64> {
    let body = pb::request::Body::OffsetFetch(pb::OffsetFetchRequest {
        group: "g".into(),
        queues: Vec::new(),
    });
    match client.request(Target::Leader, body).await {
        Ok(pb::response::Body::OffsetFetch(f)) => {
            f.offsets.into_iter().map(|o| (o.queue, o.offset)).collect()
        }
        _ => BTreeMap::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_continues_from_committed_offsets_across_a_leader_kill() {
    let mut cluster = common::Cluster::start(3);
    let client = Client::connect(&cluster.addrs()).await.unwrap();
    let admin = Admin::new(&client);
    let deadline = Instant::now() + Duration::from_secs(20);
    while admin.create_topic("t", QUEUES).await.is_err() {
        assert!(Instant::now() < deadline, "topic not created");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Small batches, read one at a time: consumption spans the failover.
    let producer = Producer::builder(&client)
        .max_batch_bytes(4096)
        .partitioner(Partitioner::RoundRobin)
        .build()
        .await
        .unwrap();
    let mut acks = Vec::new();
    for i in 0..MESSAGES {
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
    producer.close().await;

    let stop = Arc::new(AtomicBool::new(false));
    let (read_tx, mut read_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<String>>();
    let mut members = Vec::new();
    for _ in 0..3 {
        let client = client.clone();
        let stop = stop.clone();
        let read_tx = read_tx.clone();
        members.push(tokio::spawn(async move {
            let mut config = GroupConfig {
                session_timeout: Duration::from_millis(2000),
                ..GroupConfig::default()
            };
            config.consumer.max_bytes = 4096;
            let mut member = GroupConsumer::join(&client, "g", "t", config).await?;
            while !stop.load(Ordering::Relaxed) {
                match member.poll().await {
                    Ok(messages) => {
                        let values = messages
                            .iter()
                            .map(|m| String::from_utf8_lossy(&m.value).into_owned())
                            .collect();
                        let _ = read_tx.send(values);
                        // Processing takes a while: consumption spans the failover.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    // Across the failover a poll may fail; the member carries on.
                    Err(e) => {
                        eprintln!("poll: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            let _ = member.leave().await;
            anyhow::Ok(())
        }));
    }
    drop(read_tx);

    // Watch committed offsets; kill the leader once the group is under way.
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut watermark: BTreeMap<u32, u64> = BTreeMap::new();
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            Instant::now() < deadline,
            "consumed {} of {MESSAGES}",
            seen.len()
        );
        while let Ok(values) = read_rx.try_recv() {
            seen.extend(values);
        }
        for (queue, offset) in committed(&client).await {
            let before = watermark.insert(queue, offset).unwrap_or(0);
            assert!(
                offset >= before,
                "queue {queue}: committed {offset} after {before}"
            );
        }
        if !killed && !seen.is_empty() {
            let leader = leader_id(&client).await;
            eprintln!("killing leader {leader} after {} messages read", seen.len());
            assert!(
                seen.len() < MESSAGES as usize,
                "the kill comes during consumption"
            );
            cluster.kill(leader);
            killed = true;
        }
        let all_committed = watermark.len() == QUEUES as usize
            && watermark.values().sum::<u64>() == u64::from(MESSAGES);
        if killed && seen.len() == MESSAGES as usize && all_committed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for m in members {
        m.await.unwrap().unwrap();
    }
    assert_eq!(
        seen.len(),
        MESSAGES as usize,
        "every message consumed at least once"
    );
    let described = admin.describe_group("g").await.unwrap();
    assert!(described.queues.iter().all(|q| q.lag == 0), "{described:?}");
}

/// After every move of the metadata leadership the members rejoin the new leader,
/// some with the id the old leader gave them and some as new members: they must
/// end as distinct members splitting the queues, never two processes under one id
/// (each of which would read every queue of that member).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_stay_distinct_across_leadership_moves() {
    const MEMBERS: usize = 3;
    const TOPIC_QUEUES: u32 = 6;
    let cluster = common::Cluster::start(3);
    let client = Client::connect(&cluster.addrs()).await.unwrap();
    let admin = Admin::new(&client);
    let deadline = Instant::now() + Duration::from_secs(20);
    while admin.create_topic("moves", TOPIC_QUEUES).await.is_err() {
        assert!(Instant::now() < deadline, "topic not created");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    type Views = Arc<std::sync::Mutex<BTreeMap<usize, (String, Vec<u32>)>>>;
    let views: Views = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut members = Vec::new();
    for index in 0..MEMBERS {
        let client = client.clone();
        let stop = stop.clone();
        let views = views.clone();
        members.push(tokio::spawn(async move {
            let config = GroupConfig {
                session_timeout: Duration::from_millis(2000),
                ..GroupConfig::default()
            };
            let mut member = GroupConsumer::join(&client, "movers", "moves", config).await?;
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = member.poll().await {
                    eprintln!("member {index}: poll: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let view = (member.member_id().to_string(), member.assignment());
                views.lock().unwrap().insert(index, view);
            }
            let _ = member.leave().await;
            anyhow::Ok(())
        }));
    }
    // Settled: distinct ids, and the queues split between them with no overlap.
    let settled = |views: &Views| {
        let views = views.lock().unwrap();
        let ids: BTreeSet<&String> = views.values().map(|(id, _)| id).collect();
        let mut queues: Vec<u32> = views.values().flat_map(|(_, q)| q.clone()).collect();
        queues.sort_unstable();
        let split: Vec<u32> = (0..TOPIC_QUEUES).collect();
        (
            views.len() == MEMBERS && ids.len() == MEMBERS && queues == split,
            format!("{views:?}"),
        )
    };
    let wait_settled = |what: String| {
        let views = views.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let (ok, seen) = settled(&views);
                if ok {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "{what}: members never settled: {seen}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_settled("at the start".into()).await;
    // Each move goes to a node that has not led yet: its member ids start afresh.
    for _ in 0..2 {
        let leader = leader_id(&client).await;
        let to = (1..=3u64).find(|n| *n > leader).unwrap_or(1);
        let deadline = Instant::now() + Duration::from_secs(20);
        while leader_id(&client).await != to {
            let _ = admin.transfer_leader(to).await;
            assert!(Instant::now() < deadline, "leadership did not move to {to}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!("metadata leadership moved from node {leader} to node {to}");
        // Let every member notice the move before checking.
        tokio::time::sleep(Duration::from_secs(3)).await;
        wait_settled(format!("after the move to node {to}")).await;
    }
    stop.store(true, Ordering::Relaxed);
    for m in members {
        m.await.unwrap().unwrap();
    }
    drop(cluster);
}

/// A member that joins gets its share within moments of the queues' owner
/// confirming the new generation. Each step of a handover is a heartbeat, and at
/// the regular interval (3.3 s for the default 10 s session) a queue moved one
/// interval after its owner learned of the new generation, and up to three after
/// the join.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_member_gets_its_share_soon_after_the_owner_confirms() {
    let (cluster, client) = three_nodes_with_topic("handover", 4).await;
    let admin = Admin::new(&client);
    let stop = Arc::new(AtomicBool::new(false));
    // When the first member moved past its first generation, and when the second
    // first held a queue.
    let owner_moved: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let newcomer_served: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let owner = {
        let (client, stop, moved) = (client.clone(), stop.clone(), owner_moved.clone());
        tokio::spawn(async move {
            let mut member =
                GroupConsumer::join(&client, "handover", "handover", GroupConfig::default())
                    .await?;
            let first = member.generation();
            while !stop.load(Ordering::Relaxed) {
                member.poll().await?;
                let mut moved = moved.lock().unwrap();
                if member.generation() != first && moved.is_none() {
                    *moved = Some(Instant::now());
                }
            }
            member.leave().await?;
            anyhow::Ok(())
        })
    };
    // The first member holds all four queues before the second joins.
    wait_for_sole_owner(&admin, "handover", 4).await;
    let newcomer = {
        let (client, stop, served) = (client.clone(), stop.clone(), newcomer_served.clone());
        tokio::spawn(async move {
            let mut member =
                GroupConsumer::join(&client, "handover", "handover", GroupConfig::default())
                    .await?;
            while !stop.load(Ordering::Relaxed) {
                member.poll().await?;
                let mut served = served.lock().unwrap();
                if !member.assignment().is_empty() && served.is_none() {
                    *served = Some(Instant::now());
                }
            }
            member.leave().await?;
            anyhow::Ok(())
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (moved, served) = loop {
        let moved = *owner_moved.lock().unwrap();
        let served = *newcomer_served.lock().unwrap();
        if let (Some(moved), Some(served)) = (moved, served) {
            break (moved, served);
        }
        assert!(
            Instant::now() < deadline,
            "no handover: owner moved {moved:?}, newcomer served {served:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.store(true, Ordering::Relaxed);
    owner.await.unwrap().unwrap();
    newcomer.await.unwrap().unwrap();
    let gap = served.saturating_duration_since(moved);
    assert!(
        gap < Duration::from_secs(2),
        "the newcomer got its queues {gap:?} after their owner learned of the new \
         generation (a heartbeat interval is 3.3 s)"
    );
    drop(cluster);
}

/// An owner learns of a rebalance from its next offset commit (whose answer
/// carries the group's generation), not only at its next heartbeat: with a 30 s
/// session (a heartbeat every 10 s) a member joining a busy group got its queues
/// up to 10 s later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_owner_learns_of_a_rebalance_from_its_commits() {
    let (cluster, client) = three_nodes_with_topic("busy", 4).await;
    let admin = Admin::new(&client);
    let config = GroupConfig {
        session_timeout: Duration::from_secs(30),
        ..GroupConfig::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    // A steady trickle to every queue, so that every poll of the owner commits.
    let producing = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let producer = Producer::builder(&client).build().await?;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 10_000 {
                let ack = producer
                    .send(Message::new("busy", format!("m{i}")).with_queue((i % 4) as u32))
                    .await?;
                ack.await?;
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            producer.close().await;
            anyhow::Ok(())
        })
    };
    let owner_joined = Instant::now();
    let owner = {
        let (client, stop, config) = (client.clone(), stop.clone(), config.clone());
        tokio::spawn(async move {
            let mut member = GroupConsumer::join(&client, "busy", "busy", config).await?;
            while !stop.load(Ordering::Relaxed) {
                member.poll().await?;
            }
            member.leave().await?;
            anyhow::Ok(())
        })
    };
    wait_for_sole_owner(&admin, "busy", 4).await;
    // A member heartbeats every 250 ms for two intervals (20 s) after its
    // generation changed, its own join included: join after that, so that the
    // owner's next heartbeat is a whole interval (10 s) away.
    tokio::time::sleep_until((owner_joined + Duration::from_secs(21)).into()).await;
    let joined = Instant::now();
    let mut newcomer = GroupConsumer::join(&client, "busy", "busy", config)
        .await
        .expect("join");
    let deadline = Instant::now() + Duration::from_secs(30);
    while newcomer.assignment().is_empty() {
        assert!(Instant::now() < deadline, "the newcomer never got a queue");
        newcomer.poll().await.expect("poll");
    }
    let waited = joined.elapsed();
    eprintln!("the newcomer got a queue {waited:?} after joining");
    stop.store(true, Ordering::Relaxed);
    newcomer.leave().await.expect("leave");
    owner.await.unwrap().unwrap();
    producing.await.unwrap().unwrap();
    assert!(
        waited < Duration::from_secs(4),
        "the newcomer got its queues {waited:?} after joining (the owner heartbeats \
         every 10 s)"
    );
    drop(cluster);
}

/// A 3-node cluster with topic `name` of `queues` queues.
async fn three_nodes_with_topic(name: &str, queues: u32) -> (common::Cluster, Client) {
    let cluster = common::Cluster::start(3);
    let client = Client::connect(&cluster.addrs()).await.unwrap();
    let admin = Admin::new(&client);
    let deadline = Instant::now() + Duration::from_secs(20);
    while admin.create_topic(name, queues).await.is_err() {
        assert!(Instant::now() < deadline, "topic not created");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (cluster, client)
}

/// Waits (20 s at most) until group `group` has one member holding `queues` queues.
async fn wait_for_sole_owner(admin: &Admin, group: &str, queues: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let described = admin.describe_group(group).await;
        if described.is_ok_and(|d| d.members.len() == 1 && d.members[0].assignment.len() == queues)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the first member never held the queues"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
