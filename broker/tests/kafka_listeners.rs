//! Each node advertises its Kafka address in the metadata group: a node whose Kafka
//! port is not at the cluster's usual offset from its own port is still found by
//! Kafka clients (Metadata and FindCoordinator name it where it listens).

mod common;

use std::time::{Duration, Instant};

use common::kafka_wire::{answer, connect, read_frame, request, send_frame};
use common::Cluster;
use kafka_protocol::messages::{ApiKey, MetadataRequest, MetadataResponse};

/// (node id, port) of every broker in node 1's Kafka Metadata answer.
fn brokers(cluster: &Cluster) -> Vec<(i32, i32)> {
    let mut s = connect(cluster);
    send_frame(
        &mut s,
        &request(ApiKey::Metadata, 9, &MetadataRequest::default()),
    );
    let Some(body) = read_frame(&mut s) else {
        return Vec::new();
    };
    let m: MetadataResponse = answer(ApiKey::Metadata, 9, body);
    let mut out: Vec<(i32, i32)> = m.brokers.iter().map(|b| (b.node_id.0, b.port)).collect();
    out.sort_unstable();
    out
}

#[test]
fn a_node_with_its_own_kafka_port_is_advertised_to_kafka_clients() {
    let mut cluster = Cluster::start_with_kafka(3, &[]);
    // Node 2 moves its Kafka listener to an unrelated port.
    cluster.terminate(2);
    let moved = cluster.set_kafka_port(2, 0);
    cluster.restart(2);
    let expected: Vec<(i32, i32)> = (1..=3)
        .map(|id| (id as i32, i32::from(cluster.kafka_port(id))))
        .collect();
    assert_eq!(expected[1].1, i32::from(moved));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = brokers(&cluster);
        if seen == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Metadata names {seen:?}, expected {expected:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // And again once every node has restarted (each advertises again at start;
    // the recorded addresses are replayed from the log or a snapshot meanwhile).
    for id in 1..=3 {
        cluster.terminate(id);
    }
    for id in 1..=3 {
        cluster.spawn(id);
    }
    for id in 1..=3 {
        cluster.wait_listening(id);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = brokers(&cluster);
        if seen == expected {
            break;
        }
        assert!(Instant::now() < deadline, "after the restart: {seen:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// While the metadata group elects a new leader (its leader just stopped), Kafka
/// Metadata answers still name the brokers: an answer without brokers made
/// librdkafka forget them all, the group coordinator with them, and its consumer
/// groups hung for 45 s and more across a rolling restart.
#[test]
fn metadata_names_the_brokers_while_the_metadata_leader_is_replaced() {
    let mut cluster = Cluster::start_with_kafka(3, &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while brokers(&cluster).len() != 3 {
        assert!(Instant::now() < deadline, "3 brokers never advertised");
        std::thread::sleep(Duration::from_millis(100));
    }
    let leader = rt.block_on(common::find_leader(&cluster, Duration::from_secs(10)));
    let other = (1..=3).find(|&id| id != leader).unwrap();
    let addr = format!("127.0.0.1:{}", cluster.kafka_port(other));
    let mut s = std::net::TcpStream::connect(&addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    cluster.terminate(leader);
    // The election takes about half a second; ask throughout it and beyond.
    let until = Instant::now() + Duration::from_millis(1500);
    let mut answers = 0;
    while Instant::now() < until {
        send_frame(
            &mut s,
            &request(ApiKey::Metadata, 9, &MetadataRequest::default()),
        );
        let body = read_frame(&mut s).expect("an answer");
        let m: MetadataResponse = answer(ApiKey::Metadata, 9, body);
        assert!(
            !m.brokers.is_empty(),
            "answer {answers} after the leader stopped names no broker"
        );
        answers += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(answers > 10, "only {answers} answers");
}
