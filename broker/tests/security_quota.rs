//! Produce quotas with a real broker process: one user flooding far beyond its
//! byte rate is held to it (its connection muted while in debt), and another
//! user's produce latency is not hurt by the flood.

mod common;

use std::time::{Duration, Instant};

use common::login::raw_login;
use common::raw::{code, Conn};
use common::Cluster;
use raftmq_client::pb::{AclBinding, AclOperation, AclPatternType, AclResourceType};
use raftmq_client::{Admin, Client, ClientConfig, Credentials};
use raftmq_proto::batch::BatchBuilder;
use raftmq_proto::pb::{self, request::Body as Req, ErrorCode};

const QUOTA: u64 = 1_000_000;
const FLOOD_BATCH: usize = 50_000;

fn produce(queue: u32, bytes: usize) -> Req {
    let mut b = BatchBuilder::with_capacity(bytes + 128);
    b.push(None, &vec![b'x'; bytes], &[], 1);
    Req::Produce(pb::ProduceRequest {
        topic: "q".into(),
        queue,
        acks: pb::Acks::Quorum as i32,
        batch: b.finish(),
    })
}

async fn logged_in(addr: std::net::SocketAddr, user: &str) -> Conn {
    let mut conn = Conn::connect_addr(addr).await.unwrap();
    assert_eq!(
        code(&raw_login(&mut conn, user, "pw").await),
        ErrorCode::None
    );
    conn
}

/// The p99 of `n` sequential 100-byte produces, in microseconds.
async fn p99_us(conn: &mut Conn, n: usize) -> u128 {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        assert_eq!(code(&conn.call(produce(1, 100)).await), ErrorCode::None);
        samples.push(started.elapsed().as_micros());
    }
    samples.sort_unstable();
    samples[(n * 99 / 100).min(n - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_at_ten_times_its_quota_is_held_to_it_and_others_go_on() {
    let cluster = Cluster::start_with_env(
        1,
        &[
            "--require-login",
            "--superusers",
            "admin",
            "--produce-quota-bytes",
            &QUOTA.to_string(),
        ],
        false,
        &[("RAFTMQ_BOOTSTRAP_USER", "admin:pw")],
    );
    let config = ClientConfig {
        credentials: Some(Credentials::new("admin", "pw")),
        ..ClientConfig::default()
    };
    let mut admin = None;
    for _ in 0..300 {
        if let Ok(c) = Client::connect_with(&cluster.addrs(), config.clone()).await {
            admin = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let admin = Admin::new(&admin.expect("admin logs in"));
    admin.create_topic("q", 2).await.unwrap();
    for user in ["flood", "calm"] {
        admin.upsert_user(user, "pw").await.unwrap();
    }
    admin
        .create_acls(vec![AclBinding {
            principal: "User:*".into(),
            resource_type: AclResourceType::Topic as i32,
            resource_name: "q".into(),
            pattern_type: AclPatternType::Literal as i32,
            operation: AclOperation::Produce as i32,
            deny: false,
        }])
        .await
        .unwrap();

    let addr = cluster.nodes[0].addr;
    let mut calm = logged_in(addr, "calm").await;
    let unloaded = p99_us(&mut calm, 300).await;

    // The flood: 50 kB batches back to back, for 4 s (unthrottled, one connection
    // stores well over ten times the quota).
    let mut flood = logged_in(addr, "flood").await;
    let flooding = tokio::spawn(async move {
        let started = Instant::now();
        let mut acknowledged = Vec::new();
        while started.elapsed() < Duration::from_secs(4) {
            assert_eq!(
                code(&flood.call(produce(0, FLOOD_BATCH)).await),
                ErrorCode::None
            );
            acknowledged.push(started.elapsed());
        }
        acknowledged
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loaded = p99_us(&mut calm, 300).await;
    let acknowledged = flooding.await.unwrap();

    // After the first second (the burst allowance), the flood runs at the quota.
    let in_window = acknowledged
        .iter()
        .filter(|&&t| (Duration::from_secs(1)..Duration::from_secs(4)).contains(&t))
        .count() as f64;
    let rate = in_window * FLOOD_BATCH as f64 / 3.0;
    let error = (rate - QUOTA as f64).abs() / QUOTA as f64;
    assert!(
        error <= 0.10,
        "flood held to {rate:.0} B/s against a quota of {QUOTA} ({:.1}% off)",
        error * 100.0
    );
    // The other user is not starved: its p99 stays within twice its unloaded
    // value (plus a few milliseconds of slack for a shared test machine).
    eprintln!(
        "calm p99: unloaded {unloaded} µs, during the flood {loaded} µs; flood {rate:.0} B/s"
    );
    assert!(
        loaded <= (2 * unloaded).max(unloaded + 5_000),
        "calm p99 went from {unloaded} µs to {loaded} µs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_per_address_limit_are_closed_and_the_others_go_on() {
    let cluster = Cluster::start_with(1, &["--max-connections-per-ip", "3"]);
    let addr = cluster.nodes[0].addr;
    let metadata = || Req::Metadata(pb::MetadataRequest::default());
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut conn = Conn::connect_addr(addr).await.unwrap();
        let answer = conn.try_call(metadata(), Duration::from_secs(10)).await;
        assert!(answer.is_ok(), "within the limit");
        open.push(conn);
    }
    let mut extra = Conn::connect_addr(addr).await.unwrap();
    assert!(
        extra
            .try_call(metadata(), Duration::from_secs(5))
            .await
            .is_err(),
        "the fourth connection from one address is closed"
    );
    for conn in &mut open {
        assert!(conn
            .try_call(metadata(), Duration::from_secs(10))
            .await
            .is_ok());
    }
    // A place frees when a connection closes.
    open.pop();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = Conn::connect_addr(addr).await.unwrap();
        if again
            .try_call(metadata(), Duration::from_secs(2))
            .await
            .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "the freed place was not reused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads queue 0 of "q" from the start to `end` on a raw connection; returns the
/// bytes of record data received.
async fn read_to_end(conn: &mut Conn, end: u64) -> usize {
    let mut offset = 0;
    let mut bytes = 0;
    while offset < end {
        let answer = conn
            .call(Req::Fetch(pb::FetchRequest {
                topic: "q".into(),
                queue: 0,
                offset,
                max_bytes: 256 << 10,
                ..Default::default()
            }))
            .await;
        let Some(pb::response::Body::Fetch(f)) = answer.body else {
            panic!("{answer:?}");
        };
        for b in &f.batches {
            bytes += b.batch.len();
            offset = offset.max(
                b.base_offset + u64::from(u32::from_le_bytes(b.batch[20..24].try_into().unwrap())),
            );
        }
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_over_its_fetch_quota_is_slowed_to_it_on_both_ports() {
    const FETCH_QUOTA: u64 = 1_000_000;
    let cluster = Cluster::start_with_env(
        1,
        &["--fetch-quota-bytes", &FETCH_QUOTA.to_string()],
        true,
        &[],
    );
    let addr = cluster.nodes[0].addr;
    let mut conn = Conn::connect_addr(addr).await.unwrap();
    let created = conn
        .call_when_leader(Req::CreateTopic(pb::CreateTopicRequest {
            name: "q".into(),
            queues: 1,
            ..Default::default()
        }))
        .await;
    assert_eq!(code(&created), ErrorCode::None);
    // 5 MB stored. Unthrottled they are read in well under a second; at 1 MB/s,
    // with one second of burst and the last answer's debt never waited for, it
    // takes at least 5 − 1 − (one answer) seconds.
    for _ in 0..100 {
        assert_eq!(
            code(&conn.call(produce(0, FLOOD_BATCH)).await),
            ErrorCode::None
        );
    }
    let started = Instant::now();
    let read = read_to_end(&mut Conn::connect_addr(addr).await.unwrap(), 100).await;
    let native = started.elapsed();
    assert!(read >= 100 * FLOOD_BATCH);
    assert!(
        native >= Duration::from_millis(3_200),
        "5 MB read in {native:?} against a 1 MB/s fetch quota"
    );

    // kcat through the Kafka port: the same quota holds its answers back.
    common::external::require_kcat();
    let started = Instant::now();
    let mut kcat = common::external::client_command("kcat");
    kcat.args([
        "-b",
        &format!("127.0.0.1:{}", cluster.kafka_port(1)),
        "-C",
        "-t",
        "q",
        "-e",
        "-o",
        "beginning",
        "-q",
    ]);
    let out = common::external::run(kcat, None, Duration::from_secs(60));
    let kafka = started.elapsed();
    assert_eq!(out.lines().count(), 100);
    assert!(
        kafka >= Duration::from_millis(2_500),
        "5 MB read by kcat in {kafka:?} against a 1 MB/s fetch quota"
    );
    eprintln!("5 MB read at a 1 MB/s fetch quota: native {native:?}, kcat {kafka:?}");
}
