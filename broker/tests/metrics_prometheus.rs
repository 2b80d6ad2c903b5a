//! The Prometheus endpoint of a live broker: one in-process node with metrics on an
//! ephemeral port, some produce, fetch and group traffic, then a scrape over plain
//! TCP checking that every documented series is there with a live value.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use raftmq_broker::config::BrokerConfig;
use raftmq_broker::raft::NodeId;
use raftmq_broker::Broker;
use raftmq_proto::pb::{self, request::Body as Req, response::Body as Resp, ErrorCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;

use common::raw::{batch, code, Conn};

async fn start_broker(dir: &std::path::Path) -> Broker {
    let mut config = BrokerConfig {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        segment_bytes: 8 << 20,
        max_batch_bytes: 1 << 20,
        max_frame_bytes: 2 << 20,
        election_timeout_ticks: 5,
        heartbeat_interval_ticks: 1,
        ..BrokerConfig::default()
    };
    config.peers = BTreeMap::from([(NodeId(1), config.listen)]);
    Broker::start(config).await.expect("broker starts")
}

/// `GET path` with a hand-written HTTP/1.1 request: (status line, body).
async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect to metrics");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("the endpoint answers and closes")
        .unwrap();
    let response = String::from_utf8(response).expect("text");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.lines().next().unwrap_or_default().to_string();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("a content length")
        .parse()
        .unwrap();
    assert_eq!(length, body.len(), "the body is complete");
    (status, body.to_string())
}

/// Samples of the text format: series (name and labels) → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("series and value");
            (series.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

/// The value of the one series named `name` whose labels include every `labels`.
fn value(samples: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    let found: Vec<f64> = samples
        .iter()
        .filter(|(series, _)| {
            let series_name = series.split('{').next().unwrap();
            series_name == name && labels.iter().all(|l| series.contains(l))
        })
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one series {name} with {labels:?}; the scrape has:\n{}",
        samples.keys().cloned().collect::<Vec<_>>().join("\n")
    );
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_traffic_when_scraped_should_show_every_series_with_live_values() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path()).await;
    let metrics_addr = broker.metrics_addr.expect("metrics are on");
    let mut conn = Conn::connect(&broker).await;

    let created = conn
        .call_when_leader(Req::CreateTopic(pb::CreateTopicRequest {
            name: "orders".into(),
            queues: 2,
            ..Default::default()
        }))
        .await;
    assert_eq!(code(&created), ErrorCode::None, "{created:?}");
    let mut produced_bytes = 0u64;
    for i in 0..10 {
        let batch = batch(&["a", "b", "c"]);
        produced_bytes += batch.len() as u64;
        let response = conn
            .call(Req::Produce(pb::ProduceRequest {
                topic: "orders".into(),
                queue: i % 2,
                acks: pb::Acks::Quorum as i32,
                batch,
            }))
            .await;
        assert_eq!(code(&response), ErrorCode::None, "{response:?}");
    }
    let fetched = conn
        .call(Req::Fetch(pb::FetchRequest {
            topic: "orders".into(),
            queue: 0,
            offset: 0,
            max_bytes: 1 << 20,
            min_bytes: 1,
            ..pb::FetchRequest::default()
        }))
        .await;
    let Some(Resp::Fetch(fetched)) = &fetched.body else {
        panic!("not a fetch answer: {fetched:?}");
    };
    assert_eq!(fetched.batches.len(), 5);
    // A group whose committed offsets are at the start: it lags by every message.
    let reset = conn
        .call(Req::OffsetReset(pb::OffsetResetRequest {
            group: "billing".into(),
            topic: "orders".into(),
            spec: pb::OffsetSpec::Earliest as i32,
            ..pb::OffsetResetRequest::default()
        }))
        .await;
    assert_eq!(code(&reset), ErrorCode::None, "{reset:?}");
    let unknown = conn
        .call(Req::Produce(pb::ProduceRequest {
            topic: "nope".into(),
            queue: 0,
            acks: pb::Acks::Quorum as i32,
            batch: batch(&["x"]),
        }))
        .await;
    assert_eq!(code(&unknown), ErrorCode::UnknownTopic);

    // The node task refreshes its gauges every 100 ms and group lag every second.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (s, scraped) = loop {
        let (status, body) = http_get(metrics_addr, "/metrics").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        let s = samples(&body);
        let lag_ready = s
            .keys()
            .any(|k| k.starts_with("raftmq_group_lag_messages{"));
        let applied = s
            .iter()
            .find(|(k, _)| k.starts_with("raftmq_raft_applied_index"))
            .map_or(0.0, |(_, v)| *v);
        if lag_ready && applied >= 12.0 {
            break (s, body);
        }
        assert!(Instant::now() < deadline, "gauges never refreshed:\n{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Produce and fetch volumes.
    assert_eq!(value(&s, "raftmq_produce_requests_total", &[]), 11.0);
    assert_eq!(value(&s, "raftmq_produce_messages_total", &[]), 30.0);
    assert_eq!(
        value(&s, "raftmq_produce_bytes_total", &[]),
        produced_bytes as f64
    );
    assert_eq!(value(&s, "raftmq_fetch_requests_total", &[]), 1.0);
    assert_eq!(value(&s, "raftmq_fetch_batches_total", &[]), 5.0);
    assert_eq!(value(&s, "raftmq_fetch_messages_total", &[]), 15.0);
    assert!(value(&s, "raftmq_fetch_bytes_total", &[]) > 0.0);
    // Per topic; a refused produce to an unknown topic makes no series.
    let orders = ["topic=\"orders\""];
    assert_eq!(
        value(&s, "raftmq_topic_produce_messages_total", &orders),
        30.0
    );
    assert_eq!(
        value(&s, "raftmq_topic_produce_bytes_total", &orders),
        produced_bytes as f64
    );
    assert_eq!(
        value(&s, "raftmq_topic_fetch_messages_total", &orders),
        15.0
    );
    assert!(value(&s, "raftmq_topic_fetch_bytes_total", &orders) > 0.0);
    assert!(!s.keys().any(|k| k.contains("topic=\"nope\"")), "{s:?}");
    // Latency by API, errors by code, connections.
    assert_eq!(
        value(
            &s,
            "raftmq_request_duration_seconds_count",
            &["api=\"produce\""]
        ),
        11.0
    );
    assert!(
        value(
            &s,
            "raftmq_request_duration_seconds_sum",
            &["api=\"produce\""]
        ) > 0.0
    );
    assert_eq!(
        value(
            &s,
            "raftmq_request_duration_seconds_bucket",
            &["api=\"fetch\"", "le=\"+Inf\""]
        ),
        1.0
    );
    assert_eq!(
        value(&s, "raftmq_errors_total", &["code=\"unknown_topic\""]),
        1.0
    );
    assert!(value(&s, "raftmq_connections_open", &[]) >= 1.0);
    // Raft and the log.
    assert_eq!(value(&s, "raftmq_raft_role", &["role=\"leader\""]), 1.0);
    assert_eq!(value(&s, "raftmq_raft_role", &["role=\"follower\""]), 0.0);
    assert!(value(&s, "raftmq_raft_term", &[]) >= 1.0);
    assert_eq!(value(&s, "raftmq_raft_leader_id", &[]), 1.0);
    let commit = value(&s, "raftmq_raft_commit_index", &[]);
    assert!(commit >= 12.0, "noop, topic, 10 batches, reset: {commit}");
    assert!(value(&s, "raftmq_raft_applied_index", &[]) >= 12.0);
    assert!(value(&s, "raftmq_log_last_index", &[]) >= commit);
    assert!(value(&s, "raftmq_log_synced_index", &[]) >= commit);
    assert_eq!(value(&s, "raftmq_log_first_index", &[]), 1.0);
    assert_eq!(value(&s, "raftmq_log_segments", &[]), 1.0);
    assert_eq!(value(&s, "raftmq_log_disk_bytes", &[]), (8 << 20) as f64);
    assert_eq!(value(&s, "raftmq_storage_failed", &[]), 0.0);
    assert!(value(&s, "raftmq_fsync_duration_seconds_count", &["file=\"log\""]) >= 1.0);
    assert!(
        value(
            &s,
            "raftmq_fsync_duration_seconds_count",
            &["file=\"hard_state\""]
        ) >= 1.0
    );
    assert_eq!(value(&s, "raftmq_raft_elections_started_total", &[]), 1.0);
    assert_eq!(value(&s, "raftmq_raft_elections_won_total", &[]), 1.0);
    // A single node has no followers: the family is there, without samples.
    assert!(!s
        .keys()
        .any(|k| k.starts_with("raftmq_raft_follower_lag_entries{")));
    // Consumer-group lag: 5 batches of 3 messages per queue, committed at offset 0.
    for queue in ["queue=\"0\"", "queue=\"1\""] {
        assert_eq!(
            value(
                &s,
                "raftmq_group_lag_messages",
                &["group=\"billing\"", "topic=\"orders\"", queue]
            ),
            15.0
        );
    }
    assert_eq!(value(&s, "raftmq_group_lag_series_omitted", &[]), 0.0);
    // Every series names its node.
    assert!(s.keys().all(|k| k.contains("node=\"1\"")), "{s:?}");

    // Every series the Grafana dashboard queries is one the broker exports.
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/grafana/raftmq-dashboard.json"
    ))
    .expect("the dashboard file");
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("valid JSON");
    let mut queried = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            queried.extend(series_names(expr));
        }
    }
    assert!(queried.len() >= 10, "{queried:?}");
    for name in &queried {
        let family = name
            .strip_suffix("_bucket")
            .or_else(|| name.strip_suffix("_sum"))
            .or_else(|| name.strip_suffix("_count"))
            .unwrap_or(name);
        assert!(
            scraped.contains(&format!("# TYPE {family} ")),
            "the dashboard queries {name}, which the broker does not export"
        );
    }

    let (status, _) = http_get(metrics_addr, "/nothing").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, body) = http_get(metrics_addr, "/health").await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ok\n")
    );
    let (status, body) = http_get(metrics_addr, "/ready").await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ready\n")
    );
    broker.stop().await;
}

#[tokio::test]
async fn given_metrics_off_the_broker_has_no_metrics_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = BrokerConfig {
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        segment_bytes: 1 << 20,
        max_batch_bytes: 1 << 16,
        max_frame_bytes: 1 << 18,
        ..BrokerConfig::default()
    };
    config.peers = BTreeMap::from([(NodeId(1), config.listen)]);
    let broker = Broker::start(config).await.expect("broker starts");
    assert_eq!(broker.metrics_addr, None);
    broker.stop().await;
}

/// A single node with two data groups: it leads both, and says so per group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_data_groups_each_has_its_own_series() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = BrokerConfig {
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        segment_bytes: 1 << 20,
        max_batch_bytes: 1 << 16,
        max_frame_bytes: 1 << 18,
        election_timeout_ticks: 5,
        heartbeat_interval_ticks: 1,
        data_groups: 2,
        ..BrokerConfig::default()
    };
    config.peers = BTreeMap::from([(NodeId(1), config.listen)]);
    let broker = Broker::start(config).await.expect("broker starts");
    let metrics = broker.metrics_addr.expect("metrics on");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = http_get(metrics, "/metrics").await;
        let s = samples(&body);
        let led = |g: &str| {
            s.iter()
                .find(|(k, _)| {
                    k.starts_with("raftmq_data_group_leader{")
                        && k.contains(&format!("group=\"{g}\""))
                })
                .map(|(_, v)| *v)
        };
        if led("1") == Some(1.0) && led("2") == Some(1.0) {
            assert_eq!(value(&s, "raftmq_data_group_moving", &["group=\"1\""]), 0.0);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no per-group series:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    broker.stop().await;
}

fn free_port() -> SocketAddr {
    common::ports::free_port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_three_nodes_only_the_leader_should_show_follower_lag() {
    let dir = tempfile::tempdir().unwrap();
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_port()).collect();
    let peers: BTreeMap<NodeId, SocketAddr> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| (NodeId(i as u64 + 1), *a))
        .collect();
    let mut brokers = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let config = BrokerConfig {
            node_id: NodeId(i as u64 + 1),
            data_dir: dir.path().join(format!("node{}", i + 1)),
            listen: *addr,
            peers: peers.clone(),
            metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
            segment_bytes: 1 << 20,
            max_batch_bytes: 1 << 16,
            max_frame_bytes: 1 << 18,
            election_timeout_ticks: 10,
            heartbeat_interval_ticks: 2,
            ..BrokerConfig::default()
        };
        brokers.push(Broker::start(config).await.expect("broker starts"));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut leaders = Vec::new();
        let mut lag_series = Vec::new();
        for broker in &brokers {
            let (_, body) = http_get(broker.metrics_addr.unwrap(), "/metrics").await;
            let s = samples(&body);
            let is_leader = s.iter().any(|(k, v)| {
                k.starts_with("raftmq_raft_role{") && k.contains("role=\"leader\"") && *v == 1.0
            });
            leaders.push(is_leader);
            lag_series.push(
                s.keys()
                    .filter(|k| k.starts_with("raftmq_raft_follower_lag_entries{"))
                    .count(),
            );
        }
        let led: Vec<usize> = (0..3).filter(|i| leaders[*i]).collect();
        // The leader reports both followers; followers report none (a former
        // leader drops its series at its next refresh, hence the retries).
        let followers_silent = (0..3).filter(|i| !leaders[*i]).all(|i| lag_series[i] == 0);
        if led.len() == 1 && lag_series[led[0]] == 2 && followers_silent {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no single leader with follower lag: roles {leaders:?}, lag series {lag_series:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for broker in brokers {
        broker.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_no_quorum_the_node_is_live_but_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let me = free_port();
    let mut config = BrokerConfig {
        data_dir: dir.path().to_path_buf(),
        listen: me,
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        segment_bytes: 8 << 20,
        max_batch_bytes: 1 << 20,
        max_frame_bytes: 2 << 20,
        ..BrokerConfig::default()
    };
    // Two peers that never start: no leader can be elected.
    config.peers = BTreeMap::from([
        (NodeId(1), me),
        (NodeId(2), free_port()),
        (NodeId(3), free_port()),
    ]);
    let broker = Broker::start(config).await.expect("broker starts");
    let metrics_addr = broker.metrics_addr.unwrap();
    // The node task publishes readiness with its gauges (every 100 ms).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, body) = http_get(metrics_addr, "/health").await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ok\n")
    );
    let (status, body) = http_get(metrics_addr, "/ready").await;
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(body, "not ready: no leader known\n");
    broker.stop().await;
}

/// The `raftmq_*` identifiers in a PromQL expression.
fn series_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("raftmq_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}
