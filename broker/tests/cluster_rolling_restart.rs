//! A rolling restart of a 3-node cluster is invisible to applications: every node is
//! stopped and started again in turn (SIGTERM in one run, SIGKILL in the other)
//! while a producer, a plain consumer, a 3-member consumer group and a loop of
//! metadata and list-offsets calls against every node run. Checked:
//! - no error reaches the application (the client retries what is retriable);
//! - every acknowledged message is stored exactly once (idempotent retries);
//! - the plain consumer's offsets only move forward, with no gap;
//! - metadata always knows the topic, and every "latest offset" read (from any node,
//!   one after the other) is at least the previous one: reads never go back in time.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Cluster;
use raftmq_client::pb::{self, request, response};
use raftmq_client::{
    Admin, Client, ClientConfig, ClientTls, Consumer, Credentials, GroupConfig, GroupConsumer,
    Message, Partitioner, Producer, SeekTo, Target,
};

const TOPIC: &str = "roll";
const QUEUES: u32 = 3;
const GROUP: &str = "roll-group";

#[derive(Clone, Copy, Debug)]
enum Stop {
    Term,
    Kill,
}

#[derive(Default)]
struct Seen {
    errors: Vec<String>,
    /// Per queue: (offset, value) read by the plain consumer, in order.
    plain: BTreeMap<u32, Vec<(u64, String)>>,
    reads: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn given_a_rolling_restart_with_sigterm_should_show_no_error_and_lose_nothing() {
    rolling_restart(Stop::Term, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn given_a_rolling_restart_with_sigkill_should_show_no_error_and_lose_nothing() {
    rolling_restart(Stop::Kill, &[]).await;
}

/// The same with the queues in three data groups, each led by another node: every
/// restart moves the leadership of a data group and of the metadata group.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn given_data_groups_a_rolling_restart_with_sigkill_should_show_no_error_and_lose_nothing() {
    rolling_restart(Stop::Kill, &["--data-groups", "3"]).await;
}

/// The same on a secured cluster: TLS on every link, logins required, and the
/// application a user allowed its topic and group by ACLs (not a superuser). A
/// node that has just restarted does not know the users and ACLs yet: it must
/// answer "retry" (never "refused") until it has caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn given_tls_and_logins_a_rolling_restart_should_show_no_error_and_lose_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = common::pki::Pki::new(dir.path());
    let node = pki.node("raftmq-node");
    let mut args = pki.broker_args(&node);
    args.extend(
        [
            "--require-login",
            "--superusers",
            "admin",
            "--data-groups",
            "3",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cluster = Cluster::start_with_env(
        3,
        &args,
        false,
        &[("RAFTMQ_BOOTSTRAP_USER", "admin:admin-pw")],
    );
    let tls = Some(ClientTls {
        ca: pki.cluster_ca_file.clone(),
        identity: None,
    });
    let admin_config = ClientConfig {
        tls: tls.clone(),
        credentials: Some(Credentials::new("admin", "admin-pw")),
        ..ClientConfig::default()
    };
    // The bootstrap admin exists once the first metadata leader has created it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let admin = loop {
        match Client::connect_with(&cluster.addrs(), admin_config.clone()).await {
            Ok(client) => break client,
            Err(e) => assert!(Instant::now() < deadline, "the admin cannot log in: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let admin = Admin::new(&admin);
    admin
        .create_topic(TOPIC, QUEUES)
        .await
        .expect("create topic");
    admin.upsert_user("app", "app-pw").await.expect("user");
    let allow = |resource: pb::AclResourceType, name: &str, op: pb::AclOperation| pb::AclBinding {
        principal: "User:app".into(),
        resource_type: resource as i32,
        resource_name: name.into(),
        pattern_type: pb::AclPatternType::Literal as i32,
        operation: op as i32,
        deny: false,
    };
    admin
        .create_acls(vec![
            allow(pb::AclResourceType::Topic, TOPIC, pb::AclOperation::Produce),
            allow(pb::AclResourceType::Topic, TOPIC, pb::AclOperation::Consume),
            allow(pb::AclResourceType::Group, GROUP, pb::AclOperation::Consume),
        ])
        .await
        .expect("acls");
    let app = ClientConfig {
        tls,
        credentials: Some(Credentials::new("app", "app-pw")),
        ..ClientConfig::default()
    };
    // Known on every node before the restarts begin (each node answers a login).
    for addr in cluster.addrs() {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Client::connect_with(&[addr.as_str()], app.clone())
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "app cannot log in at {addr}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    run_rolling_restart(Stop::Term, cluster, app).await;
}

async fn rolling_restart(how: Stop, extra_args: &[&str]) {
    let cluster = Cluster::start_with(3, extra_args);
    let client = Client::connect(&cluster.addrs()).await.expect("connect");
    Admin::new(&client)
        .create_topic(TOPIC, QUEUES)
        .await
        .expect("create topic");
    run_rolling_restart(how, cluster, ClientConfig::default()).await;
}

/// Restarts every node of `cluster` (whose topic exists) in turn under load from
/// clients made with `config`, and checks what the module says.
async fn run_rolling_restart(how: Stop, mut cluster: Cluster, config: ClientConfig) {
    let addrs = cluster.addrs();
    let client = Client::connect_with(&addrs, config).await.expect("connect");
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));

    let producer = tokio::spawn(run_producer(client.clone(), stop.clone()));
    let plain = tokio::spawn(run_plain_consumer(
        client.clone(),
        stop.clone(),
        seen.clone(),
    ));
    let members: Vec<_> = (0..3)
        .map(|_| tokio::spawn(run_member(client.clone(), stop.clone(), seen.clone())))
        .collect();
    let reader = tokio::spawn(run_reads(
        client.clone(),
        addrs.clone(),
        stop.clone(),
        seen.clone(),
    ));

    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in 1..=3 {
        match how {
            Stop::Term => assert!(cluster.terminate(id), "node {id} stops cleanly"),
            Stop::Kill => cluster.kill(id),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.restart(id);
        // Time to catch up before the next node goes.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);

    let acknowledged = producer.await.expect("producer task");
    plain.await.expect("plain consumer task");
    for m in members {
        m.await.expect("member task");
    }
    reader.await.expect("reader task");

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(
        seen.errors.is_empty(),
        "{how:?}: errors reached the application: {:#?}",
        seen.errors
    );
    assert!(seen.reads > 20, "the read loop ran ({} reads)", seen.reads);
    assert!(
        acknowledged.len() > 100,
        "{} acknowledged",
        acknowledged.len()
    );

    // Everything stored, read back from the start: each acknowledged value once.
    let stored = drain(&client, acknowledged.len()).await;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, _, v) in &stored {
        *counts.entry(v.as_str()).or_default() += 1;
    }
    let duplicates: Vec<_> = counts.iter().filter(|(_, &n)| n > 1).collect();
    assert!(duplicates.is_empty(), "{how:?}: duplicates {duplicates:?}");
    let missing: Vec<_> = acknowledged
        .iter()
        .filter(|v| !counts.contains_key(v.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{how:?}: lost {} acknowledged",
        missing.len()
    );

    // The plain consumer read a gapless, forward-only prefix of each queue.
    let by_offset: BTreeMap<(u32, u64), &str> = stored
        .iter()
        .map(|(q, o, v)| ((*q, *o), v.as_str()))
        .collect();
    for (queue, read) in &seen.plain {
        for (i, (offset, value)) in read.iter().enumerate() {
            assert_eq!(
                *offset, i as u64,
                "{how:?}: queue {queue} offsets went {i} -> {offset}"
            );
            assert_eq!(by_offset.get(&(*queue, *offset)), Some(&value.as_str()));
        }
    }
}

/// Sends until stopped; returns the values acknowledged. Any failed send is an
/// error reaching the application.
async fn run_producer(client: Client, stop: Arc<AtomicBool>) -> Vec<String> {
    let producer = Producer::builder(&client)
        .partitioner(Partitioner::RoundRobin)
        .build()
        .await
        .expect("producer");
    let mut pending = Vec::new();
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        for _ in 0..5 {
            let value = format!("v{i}");
            i += 1;
            let ack = producer
                .send(Message::new(TOPIC, value.clone()))
                .await
                .expect("send accepted");
            pending.push((value, ack));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut acknowledged = Vec::new();
    for (value, ack) in pending {
        match ack.await {
            Ok(_) => acknowledged.push(value),
            Err(e) => panic!("message {value} failed: {e}"),
        }
    }
    producer.close().await;
    acknowledged
}

async fn run_plain_consumer(client: Client, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
    let mut consumer = Consumer::new(&client);
    let queues: Vec<u32> = (0..QUEUES).collect();
    if let Err(e) = consumer.assign(TOPIC, &queues).await {
        seen.lock().unwrap().errors.push(format!("assign: {e}"));
        return;
    }
    for q in &queues {
        if let Err(e) = consumer.seek(*q, SeekTo::Earliest).await {
            seen.lock().unwrap().errors.push(format!("seek: {e}"));
            return;
        }
    }
    while !stop.load(Ordering::SeqCst) {
        match consumer.poll().await {
            Ok(messages) => {
                let mut seen = seen.lock().unwrap();
                for m in messages {
                    let value = String::from_utf8_lossy(&m.value).into_owned();
                    seen.plain
                        .entry(m.queue)
                        .or_default()
                        .push((m.offset, value));
                }
            }
            Err(e) => {
                seen.lock().unwrap().errors.push(format!("plain poll: {e}"));
                return;
            }
        }
    }
}

async fn run_member(client: Client, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
    let config = GroupConfig {
        session_timeout: Duration::from_millis(3000),
        ..GroupConfig::default()
    };
    let mut member = match GroupConsumer::join(&client, GROUP, TOPIC, config).await {
        Ok(m) => m,
        Err(e) => {
            seen.lock().unwrap().errors.push(format!("join: {e}"));
            return;
        }
    };
    // Auto-commit (the default) in every poll, and an explicit commit after it, as
    // an application that commits what it processed does.
    while !stop.load(Ordering::SeqCst) {
        let result = match member.poll().await {
            Ok(_) => member.commit().await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            seen.lock().unwrap().errors.push(format!("member: {e}"));
            return;
        }
    }
    if let Err(e) = member.leave().await {
        seen.lock().unwrap().errors.push(format!("leave: {e}"));
    }
}

/// Every 50 ms: metadata and the latest offset of every queue from each node in
/// turn. The topic never vanishes and no latest offset goes back.
async fn run_reads(
    client: Client,
    addrs: Vec<String>,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) {
    let mut latest = [0u64; QUEUES as usize];
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        for addr in &addrs {
            let target = Target::Address(addr.clone());
            let body = request::Body::Metadata(pb::MetadataRequest::default());
            match client.request(target.clone(), body).await {
                Ok(response::Body::Metadata(m)) => {
                    if !m.topics.iter().any(|t| t.name == TOPIC) {
                        let e = format!("metadata from {addr} lacks the topic");
                        seen.lock().unwrap().errors.push(e);
                    }
                }
                other => {
                    let e = format!("metadata from {addr}: {other:?}");
                    seen.lock().unwrap().errors.push(e);
                }
            }
            for queue in 0..QUEUES {
                let body = request::Body::ListOffsets(pb::ListOffsetsRequest {
                    topic: TOPIC.into(),
                    queue,
                    spec: pb::OffsetSpec::Latest as i32,
                    timestamp_ms: 0,
                });
                match client.request(target.clone(), body).await {
                    Ok(response::Body::ListOffsets(r)) => {
                        let previous = &mut latest[queue as usize];
                        if r.offset < *previous {
                            let e = format!(
                                "latest offset of queue {queue} went back from {previous} to {} at {addr}",
                                r.offset
                            );
                            seen.lock().unwrap().errors.push(e);
                        }
                        *previous = r.offset.max(*previous);
                    }
                    other => {
                        let e = format!("list offsets from {addr}: {other:?}");
                        seen.lock().unwrap().errors.push(e);
                    }
                }
            }
            seen.lock().unwrap().reads += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads every queue from the start until `expected` messages (bounded in time).
async fn drain(client: &Client, expected: usize) -> Vec<(u32, u64, String)> {
    let mut consumer = Consumer::new(client);
    let queues: Vec<u32> = (0..QUEUES).collect();
    consumer.assign(TOPIC, &queues).await.expect("assign");
    for q in &queues {
        consumer.seek(*q, SeekTo::Earliest).await.expect("seek");
    }
    let mut out = Vec::new();
    let mut values = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while values.len() < expected && Instant::now() < deadline {
        for m in consumer.poll().await.expect("poll") {
            let value = String::from_utf8_lossy(&m.value).into_owned();
            values.insert(value.clone());
            out.push((m.queue, m.offset, value));
        }
    }
    // Anything past the acknowledged ones (there is none: the producer awaited all).
    out
}

/// A node stopped with SIGTERM hands the leadership of every group it leads to
/// another replica before it stops, so that no group waits out an election
/// timeout without a leader (producers saw gaps of 1.2–1.8 s after a SIGTERM,
/// longer than after a SIGKILL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_with_sigterm_hands_its_leaderships_over_first() {
    let mut cluster = Cluster::start_with(3, &["--data-groups", "3"]);
    let client = Client::connect(&cluster.addrs()).await.expect("connect");
    let admin = Admin::new(&client);
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = admin.create_topic(TOPIC, 6).await {
        assert!(Instant::now() < deadline, "create topic: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let leader = common::find_leader(&cluster, Duration::from_secs(10)).await;
    assert!(cluster.terminate(leader), "a clean stop");
    let log = std::fs::read_to_string(cluster.log_path(leader)).unwrap_or_default();
    assert!(
        log.contains("stopping: handing leadership over"),
        "the metadata group's leader handed it over:\n{log}"
    );
    assert!(
        !log.contains("stopping while still leading groups"),
        "every group was handed over before the node stopped:\n{log}"
    );
    // The others have a leader at once, not after an election timeout.
    let next = common::find_leader(&cluster, Duration::from_secs(10)).await;
    assert_ne!(next, leader);
}
