//! One broker per data directory: a second `raftmq-broker` started on a directory in
//! use (same node id, another port) exits at once with one line naming the directory
//! and the PID that holds it, and every message the first broker acknowledged —
//! before and after the attempt — survives a restart.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Cluster;
use raftmq_client::{Admin, Client, Consumer, Message, Producer, SeekTo};

async fn produce(client: &Client, from: u32, count: u32) {
    let producer = Producer::builder(client).build().await.expect("producer");
    let mut acks = Vec::new();
    for i in from..from + count {
        let ack = producer
            .send(Message::new("locked", format!("m{i}")).with_queue(0))
            .await
            .expect("send");
        acks.push(ack);
    }
    for ack in acks {
        ack.await.expect("acknowledged");
    }
    producer.close().await;
}

async fn read_all(client: &Client, expected: usize) -> Vec<String> {
    let mut consumer = Consumer::new(client);
    consumer.assign("locked", &[0]).await.expect("assign");
    consumer.seek(0, SeekTo::Earliest).await.expect("seek");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < expected && Instant::now() < deadline {
        for m in consumer.poll().await.expect("poll") {
            out.push(String::from_utf8(m.value.to_vec()).expect("utf-8"));
        }
    }
    out
}

/// Runs a broker as node 1 on `data_dir`, listening on `listen`, to its exit.
fn run_node_one(data_dir: &std::path::Path, listen: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_raftmq-broker"))
        .arg("--node-id")
        .arg("1")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--listen")
        .arg(listen)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("the broker runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_running_broker_when_a_second_starts_on_its_data_dir_should_refuse_and_lose_nothing(
) {
    let mut cluster = Cluster::start(1);
    let addrs = cluster.addrs();
    let client = Client::connect(&addrs).await.expect("connect");
    Admin::new(&client)
        .create_topic("locked", 1)
        .await
        .expect("create topic");
    produce(&client, 0, 500).await;

    // The same node id and data dir, another port: the case that used to corrupt.
    let data_dir = cluster.nodes[0].data_dir.clone();
    let second_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let started = Instant::now();
    let out = run_node_one(&data_dir, &second_port.to_string());
    assert!(!out.status.success(), "the second broker started");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refusal took {:?}",
        started.elapsed()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line:\n{stderr}");
    assert!(lines[0].contains("is in use by another broker"), "{stderr}");
    assert!(
        lines[0].contains(&data_dir.display().to_string()),
        "{stderr}"
    );
    let holder = std::fs::read_to_string(data_dir.join("LOCK")).expect("lock file");
    assert!(
        lines[0].contains(&format!("pid {}", holder.trim())),
        "{stderr}"
    );

    // Started exactly as the first (same port too, the usual mistake): the lock
    // is what it is told, not the port.
    let out = run_node_one(&data_dir, &cluster.nodes[0].addr.to_string());
    assert!(!out.status.success(), "the third broker started");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is in use by another broker"), "{stderr}");

    // The first broker goes on acknowledging; a restart keeps everything.
    produce(&client, 500, 500).await;
    drop(client);
    assert!(cluster.terminate(1), "clean stop");
    cluster.restart(1);
    let client = Client::connect(&addrs).await.expect("reconnect");
    let read = read_all(&client, 1000).await;
    let expected: Vec<String> = (0..1000).map(|i| format!("m{i}")).collect();
    assert_eq!(read, expected);
}
