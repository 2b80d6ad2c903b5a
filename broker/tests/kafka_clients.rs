//! Real Kafka clients nobody on this project wrote, against a 3-node raftmq cluster
//! (three data groups) on loopback: kcat (librdkafka, C), confluent-kafka
//! (librdkafka through Python) and kafka-python (an independent pure-Python
//! implementation). `.ci/test` installs them; a test fails with what to install
//! when one is missing.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::external::{
    client_command, require_kcat, require_python_module, run, wait_output, SCRIPTS,
};
use common::{read_all, Cluster};
use raftmq_client::{Admin, Client, Consumer, SeekTo, Target};
use raftmq_proto::pb::{self, request::Body as Req, response::Body as Resp};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn create_topic(client: &Client, name: &str, queues: u32) {
    let admin = Admin::new(client);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match admin.create_topic(name, queues).await {
            Ok(()) => return,
            Err(e) => {
                assert!(Instant::now() < deadline, "create {name}: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The offsets `group` committed, as raftmq's own API reports them.
async fn committed(client: &Client, group: &str) -> BTreeMap<(String, u32), u64> {
    let body = Req::OffsetFetch(pb::OffsetFetchRequest {
        group: group.into(),
        queues: Vec::new(),
    });
    match client
        .request(Target::Leader, body)
        .await
        .expect("offset fetch")
    {
        Resp::OffsetFetch(f) => f
            .offsets
            .into_iter()
            .map(|o| ((o.topic, o.queue), o.offset))
            .collect(),
        other => panic!("unexpected answer {}", other.api_key()),
    }
}

/// Runs a command to completion within `limit`, returning its stdout; panics with
/// its output when it fails or overruns.
#[test]
fn kcat_lists_produces_and_consumes_with_keys_and_as_a_group() {
    require_kcat();
    let cluster = Cluster::start_with_kafka(3, &["--data-groups", "3"]);
    let rt = runtime();
    let client = rt
        .block_on(Client::connect(&cluster.addrs()))
        .expect("connect");
    rt.block_on(create_topic(&client, "lines", 4));
    let brokers = cluster.kafka_addrs();

    let mut list = client_command("kcat");
    list.args(["-b", &brokers, "-L", "-m", "20"]);
    let listing = run(list, None, Duration::from_secs(30));
    assert!(listing.contains(" 3 brokers:"), "{listing}");
    assert!(
        listing.contains("topic \"lines\" with 4 partitions:"),
        "{listing}"
    );

    const N: usize = 100_000;
    let input: String = (0..N).map(|i| format!("key{}:{i}\n", i % 100)).collect();
    let mut produce = client_command("kcat");
    // Order per partition is checked below. Kafka keeps a partition's order
    // across a retried request only for an idempotent producer: without it,
    // librdkafka sends the batch it built while the first was in flight before
    // it retries the first (seen when a partition's first batch was answered
    // "not leader" while its data group was still electing).
    produce.args([
        "-b",
        &brokers,
        "-P",
        "-t",
        "lines",
        "-K:",
        "-X",
        "acks=all",
        "-X",
        "enable.idempotence=true",
    ]);
    run(produce, Some(input.into_bytes()), Duration::from_secs(120));

    let mut consume = client_command("kcat");
    consume.args([
        "-b",
        &brokers,
        "-C",
        "-t",
        "lines",
        "-e",
        "-o",
        "beginning",
        "-q",
        "-f",
        "%k %s %p %o\n",
    ]);
    let lines = run(consume, None, Duration::from_secs(120));
    let mut values = Vec::with_capacity(N);
    let mut key_partition: BTreeMap<String, u32> = BTreeMap::new();
    let mut per_partition: BTreeMap<u32, Vec<(u64, usize)>> = BTreeMap::new();
    for line in lines.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 4, "unexpected line {line:?}");
        let value: usize = f[1].parse().expect("a number");
        let partition: u32 = f[2].parse().expect("partition");
        let offset: u64 = f[3].parse().expect("offset");
        assert_eq!(f[0], format!("key{}", value % 100), "key of {value}");
        let p = *key_partition.entry(f[0].to_owned()).or_insert(partition);
        assert_eq!(p, partition, "key {} in two partitions", f[0]);
        per_partition
            .entry(partition)
            .or_default()
            .push((offset, value));
        values.push(value);
    }
    values.sort_unstable();
    assert_eq!(
        values,
        (0..N).collect::<Vec<_>>(),
        "every line exactly once"
    );
    for (p, read) in &per_partition {
        for (i, w) in read.windows(2).enumerate() {
            assert_eq!(
                w[1].0,
                w[0].0 + 1,
                "partition {p}: offsets not consecutive at {i}"
            );
            assert!(w[1].1 > w[0].1, "partition {p}: out of order at {i}");
        }
    }

    // Compressed by librdkafka with every Kafka codec: stored as sent, read back
    // by Kafka readers and (converted) by raftmq's own consumer.
    for codec in ["gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("z-{codec}");
        rt.block_on(create_topic(&client, &topic, 1));
        let input: String = (0..1000).map(|i| format!("{codec}-{i}\n")).collect();
        let mut produce = client_command("kcat");
        produce.args(["-b", &brokers, "-P", "-t", &topic, "-z", codec]);
        run(produce, Some(input.into_bytes()), Duration::from_secs(60));
        let native = rt.block_on(read_all(&client, &topic, 1));
        let expected: Vec<String> = (0..1000).map(|i| format!("{codec}-{i}")).collect();
        assert_eq!(native.get(&0), Some(&expected), "{codec}: native reader");
        let mut consume = client_command("kcat");
        consume.args([
            "-b",
            &brokers,
            "-C",
            "-t",
            &topic,
            "-e",
            "-o",
            "beginning",
            "-q",
        ]);
        let read = run(consume, None, Duration::from_secs(60));
        assert_eq!(read.lines().count(), 1000, "{codec}: Kafka reader");
    }

    // A consumer group: everything read, and the offsets it commits are raftmq's.
    let mut group = client_command("kcat");
    group.args([
        "-b",
        &brokers,
        "-G",
        "kcat-group",
        "lines",
        "-X",
        "auto.offset.reset=earliest",
        "-e",
        "-q",
        "-f",
        "%s\n",
    ]);
    let read = run(group, None, Duration::from_secs(120));
    assert_eq!(read.lines().count(), N, "the group read every line once");
    let offsets = rt.block_on(committed(&client, "kcat-group"));
    let total: u64 = offsets.values().sum();
    assert_eq!(total, N as u64, "committed offsets {offsets:?}");
}

#[test]
fn kafka_python_round_trip_shares_offsets_with_native_clients() {
    require_python_module("kafka", "kafka-python");
    let cluster = Cluster::start_with_kafka(3, &["--data-groups", "3"]);
    let rt = runtime();
    let client = rt
        .block_on(Client::connect(&cluster.addrs()))
        .expect("connect");
    let mut script = client_command("python3");
    script.args([
        &format!("{SCRIPTS}/kafka_python_roundtrip.py"),
        &cluster.kafka_addrs(),
        "py-topic",
        "py-group",
    ]);
    let out = run(script, None, Duration::from_secs(180));
    assert!(out.starts_with("ok"), "{out}");
    // The Kafka consumer's commits, as raftmq's own API sees them.
    let offsets = rt.block_on(committed(&client, "py-group"));
    let total: u64 = offsets
        .iter()
        .filter(|((t, _), _)| t == "py-topic")
        .map(|(_, o)| o)
        .sum();
    assert_eq!(total, 1000, "{offsets:?}");
    // A raftmq group consumer in the same group starts where the Kafka consumer
    // committed: it reads only what is produced after.
    rt.block_on(async {
        let mut group = raftmq_client::GroupConsumer::join(
            &client,
            "py-group",
            "py-topic",
            raftmq_client::GroupConfig::default(),
        )
        .await
        .expect("join");
        produce_numbers(&client, "py-topic", 3, 5000..5030).await;
        let mut read = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while read.len() < 30 && Instant::now() < deadline {
            for m in group.poll().await.expect("poll") {
                read.push(String::from_utf8(m.value.to_vec()).expect("utf-8"));
            }
        }
        read.sort();
        let expected: Vec<String> = (5000..5030).map(|v| v.to_string()).collect();
        assert_eq!(
            read, expected,
            "the native member read the Kafka commits' remainder"
        );
        group.commit().await.expect("commit");
        group.leave().await.expect("leave");
    });
    // The topic it deleted is gone for native clients too.
    let body = Req::Metadata(pb::MetadataRequest::default());
    let Resp::Metadata(m) = rt
        .block_on(client.request(Target::Leader, body))
        .expect("metadata")
    else {
        panic!("not metadata")
    };
    let names: Vec<&str> = m.topics.iter().map(|t| t.name.as_str()).collect();
    assert!(names.contains(&"py-topic"), "{names:?}");
    assert!(!names.contains(&"py-topic-doomed"), "{names:?}");
}

#[test]
fn confluent_idempotent_producer_loses_and_repeats_nothing_across_a_leader_kill() {
    idempotent_producer_across(Disruption::LeaderKill);
}

#[test]
fn confluent_idempotent_producer_sees_a_rolling_restart_of_every_node_as_nothing() {
    idempotent_producer_across(Disruption::RollingRestart);
}

/// An offset as the Python client reports it: `None` when the broker answered a
/// retried batch as a duplicate without knowing the first copy's offset (-1).
fn acked_offset(text: &str) -> i64 {
    match text {
        "None" => -1,
        n => n.parse().unwrap_or_else(|e| panic!("offset {text:?}: {e}")),
    }
}

/// What happens to the cluster while the producer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disruption {
    /// SIGKILL the metadata leader, restart it 3 s later.
    LeaderKill,
    /// SIGTERM and restart every node in turn, as an upgrade does: every message
    /// must be acknowledged, none lost or repeated.
    RollingRestart,
}

fn idempotent_producer_across(disruption: Disruption) {
    require_python_module("confluent_kafka", "confluent-kafka");
    const QUEUES: u32 = 6;
    let count: usize = std::env::var("RAFTMQ_KAFKA_IDEMPOTENT_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(match disruption {
            Disruption::LeaderKill => 1_000_000,
            // Long enough to still be running when the last node restarts.
            Disruption::RollingRestart => 2_000_000,
        });
    let mut cluster = Cluster::start_with_kafka(3, &["--data-groups", "3"]);
    let rt = runtime();
    let client = rt
        .block_on(Client::connect(&cluster.addrs()))
        .expect("connect");
    rt.block_on(create_topic(&client, "idem", QUEUES));
    let dir = tempfile::tempdir().expect("temp dir");
    let acked_path = dir.path().join("acked.txt");
    let mut producer = client_command("python3");
    producer
        .args([
            &format!("{SCRIPTS}/idempotent_producer.py"),
            &cluster.kafka_addrs(),
            "idem",
            &count.to_string(),
            &QUEUES.to_string(),
            acked_path.to_str().expect("utf-8 path"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = producer.spawn().expect("start the producer");
    // Once a twentieth is stored, kill the node leading the metadata group and one
    // data group while the producer is still writing, and bring it back. (Early:
    // on a loaded machine the whole run can take only a few seconds.)
    let mut ends = Consumer::new(&client);
    let all: Vec<u32> = (0..QUEUES).collect();
    rt.block_on(ends.assign("idem", &all)).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(60);
    while rt.block_on(stored_count(&mut ends, QUEUES)) < count as u64 / 20 {
        assert!(Instant::now() < deadline, "the producer did not get going");
        assert!(
            child.try_wait().expect("poll").is_none(),
            "the producer exited early"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let Resp::Metadata(m) = rt
        .block_on(client.request(
            Target::Leader,
            Req::Metadata(pb::MetadataRequest::default()),
        ))
        .expect("metadata")
    else {
        panic!("not metadata")
    };
    let victim = if m.leader_id == 0 { 1 } else { m.leader_id };
    match disruption {
        Disruption::LeaderKill => {
            cluster.kill(victim);
            assert!(
                child.try_wait().expect("poll").is_none(),
                "the producer finished before the kill: nothing was tested"
            );
            std::thread::sleep(Duration::from_secs(3));
            cluster.restart(victim);
        }
        Disruption::RollingRestart => {
            // The leader last, as operators do.
            let mut order: Vec<u64> = (1..=3).filter(|&n| n != victim).collect();
            order.push(victim);
            for node in order {
                assert!(
                    child.try_wait().expect("poll").is_none(),
                    "the producer finished before node {node} restarted: nothing was tested"
                );
                assert!(cluster.terminate(node), "node {node} stops cleanly");
                cluster.restart(node);
                // Let it catch up before the next one goes down.
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    let (ok, stdout, stderr) = wait_output(child, Duration::from_secs(240));
    let out = (ok, format!("{stdout}{stderr}"));
    assert!(out.0, "producer failed: {}", out.1);

    let acked = std::fs::read_to_string(&acked_path).expect("acked file");
    let stored = rt.block_on(read_all(&client, "idem", QUEUES));
    let mut n = 0;
    for line in acked.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split(' ').collect();
        let (q, offset, value): (u32, i64, &str) =
            (f[0].parse().expect("q"), acked_offset(f[1]), f[2]);
        let queue = stored.get(&q).map(Vec::as_slice).unwrap_or_default();
        if offset >= 0 {
            assert_eq!(
                queue.get(offset as usize).map(String::as_str),
                Some(value),
                "acknowledged message {value} is not at queue {q} offset {offset}"
            );
        } else {
            // Acknowledged as a duplicate of a copy whose offset the broker no
            // longer knew: it must be stored all the same.
            assert!(
                queue.iter().any(|v| v == value),
                "acknowledged message {value} (as a duplicate of unknown offset) is not in \
                 queue {q}: the queue holds {} messages, first {:?}; in other queues: {:?}; \
                 producer: {}",
                queue.len(),
                &queue[..queue.len().min(5)],
                stored
                    .iter()
                    .filter(|(_, vs)| vs.iter().any(|v| v == value))
                    .map(|(q, _)| q)
                    .collect::<Vec<_>>(),
                out.1
            );
        }
        n += 1;
    }
    match disruption {
        Disruption::LeaderKill => {
            assert!(n > count / 2, "only {n} of {count} acknowledged: {}", out.1)
        }
        Disruption::RollingRestart => assert_eq!(
            n, count,
            "a rolling restart must be invisible: every message acknowledged; {}",
            out.1
        ),
    }
    for (q, values) in &stored {
        let numbers: Vec<usize> = values.iter().map(|v| v.parse().expect("number")).collect();
        for w in numbers.windows(2) {
            assert!(
                w[1] > w[0],
                "queue {q}: {} stored after {} (a duplicate or reordering); producer: {}",
                w[1],
                w[0],
                out.1
            );
        }
        for v in &numbers {
            assert_eq!(*v as u32 % QUEUES, *q, "value {v} in the wrong queue");
        }
    }
}

/// Messages stored in the topic `consumer` is assigned (the sum of its queues' ends).
async fn stored_count(consumer: &mut Consumer, queues: u32) -> u64 {
    let mut total = 0;
    for q in 0..queues {
        total += consumer.seek(q, SeekTo::Latest).await.expect("end");
    }
    total
}

/// Produces `values` with raftmq's own producer, value `v` to queue `v mod queues`.
async fn produce_numbers(
    client: &Client,
    topic: &str,
    queues: u32,
    values: std::ops::Range<usize>,
) {
    let producer = raftmq_client::Producer::builder(client)
        .build()
        .await
        .expect("producer");
    let mut deliveries = Vec::new();
    for v in values {
        let message =
            raftmq_client::Message::new(topic, v.to_string()).with_queue(v as u32 % queues);
        deliveries.push(producer.send(message).await.expect("send"));
    }
    for d in deliveries {
        d.await.expect("acknowledged");
    }
}

/// Values consumed so far by the members writing to `files`.
fn consumed(files: &[std::path::PathBuf]) -> std::collections::BTreeSet<usize> {
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.split(' ').nth(2)?.parse().ok())
                .collect::<Vec<usize>>()
        })
        .collect()
}

#[test]
fn confluent_consumer_group_survives_a_member_kill_and_a_join_and_keeps_offsets_across_a_restart() {
    require_python_module("confluent_kafka", "confluent-kafka");
    const QUEUES: u32 = 8;
    const PER_PHASE: usize = 8_000;
    let mut cluster = Cluster::start_with_kafka(3, &["--data-groups", "3"]);
    let rt = runtime();
    let client = rt
        .block_on(Client::connect(&cluster.addrs()))
        .expect("connect");
    rt.block_on(create_topic(&client, "grp", QUEUES));
    rt.block_on(produce_numbers(&client, "grp", QUEUES, 0..PER_PHASE));

    let dir = tempfile::tempdir().expect("temp dir");
    let stop = dir.path().join("stop");
    let brokers = cluster.kafka_addrs();
    let start_member = |i: usize| {
        let out = dir.path().join(format!("member{i}.txt"));
        let child = client_command("python3")
            .args([
                &format!("{SCRIPTS}/group_member.py"),
                &brokers,
                "grp",
                "kafka-group",
                out.to_str().expect("utf-8"),
                stop.to_str().expect("utf-8"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start a member");
        (child, out)
    };
    let mut members: Vec<(std::process::Child, std::path::PathBuf)> =
        (1..=3).map(start_member).collect();
    let files = |members: &[(std::process::Child, std::path::PathBuf)]| {
        members.iter().map(|(_, f)| f.clone()).collect::<Vec<_>>()
    };
    let mut all_files = files(&members);
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumed(&all_files).len() < PER_PHASE / 4 {
        assert!(
            Instant::now() < deadline,
            "the group did not start consuming"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A member dies without leaving; another joins; more messages arrive.
    let (mut killed, _) = members.remove(0);
    let _ = killed.kill();
    let _ = killed.wait();
    members.push(start_member(4));
    all_files = files(&members);
    all_files.push(dir.path().join("member1.txt"));
    rt.block_on(produce_numbers(
        &client,
        "grp",
        QUEUES,
        PER_PHASE..2 * PER_PHASE,
    ));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let seen = consumed(&all_files);
        if seen.len() == 2 * PER_PHASE {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the group consumed {} of {} messages",
            seen.len(),
            2 * PER_PHASE
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::fs::write(&stop, b"").expect("stop file");
    for (child, out) in members {
        let (ok, _, stderr) = wait_output(child, Duration::from_secs(60));
        assert!(ok, "member writing {} failed: {stderr}", out.display());
    }
    let expected: BTreeMap<(String, u32), u64> = (0..QUEUES)
        .map(|q| {
            (
                ("grp".to_string(), q),
                (2 * PER_PHASE / QUEUES as usize) as u64,
            )
        })
        .collect();
    assert_eq!(rt.block_on(committed(&client, "kafka-group")), expected);

    // The commits survive a restart of the metadata group's leader.
    let Resp::Metadata(m) = rt
        .block_on(client.request(
            Target::Leader,
            Req::Metadata(pb::MetadataRequest::default()),
        ))
        .expect("metadata")
    else {
        panic!("not metadata")
    };
    let leader = if m.leader_id == 0 { 1 } else { m.leader_id };
    cluster.kill(leader);
    cluster.restart(leader);
    assert_eq!(rt.block_on(committed(&client, "kafka-group")), expected);
}
