//! Test harness: real `raftmq-broker` processes on loopback ephemeral ports, each
//! with its own data directory, stopped (SIGKILL) when the harness is dropped.

#![allow(dead_code)]

pub mod external;
pub mod kafka_wire;
pub mod login;
pub mod pki;
pub mod ports;
pub mod raw;

use raftmq_proto::pb::{self, request::Body as Req, response::Body as Resp, ErrorCode};
use raw::{code, Conn};

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One broker process.
pub struct BrokerProcess {
    pub id: u64,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    child: Option<Child>,
    /// Started with `--join` (these addresses) instead of `--peers`.
    join: Option<String>,
}

/// A cluster of broker processes sharing one temporary directory.
pub struct Cluster {
    pub nodes: Vec<BrokerProcess>,
    peers: String,
    extra_args: Vec<String>,
    /// Every node also serves the Kafka protocol on its port + 1 (or the port set
    /// with [`Cluster::set_kafka_port`]).
    kafka: bool,
    kafka_ports: std::collections::BTreeMap<u64, u16>,
    /// Environment variables of every broker started from now on.
    env: Vec<(String, String)>,
    /// Each node's `--rack`, for those given one.
    racks: std::collections::BTreeMap<u64, String>,
    _dir: tempfile::TempDir,
}

fn free_port() -> SocketAddr {
    ports::free_port()
}

/// A free port whose successor is free too (the Kafka port of a node is its port
/// + 1: every node uses the same offset).
fn free_port_pair() -> SocketAddr {
    ports::free_consecutive(2)
}

impl Cluster {
    /// Starts `n` brokers and waits until each accepts connections.
    pub fn start(n: usize) -> Cluster {
        Self::start_with(n, &[])
    }

    /// Same, with extra command-line flags for every broker.
    pub fn start_with(n: usize, extra_args: &[&str]) -> Cluster {
        Self::start_inner(n, extra_args, false)
    }

    /// Same, every node also serving the Kafka protocol (see [`Cluster::kafka_addrs`]).
    pub fn start_with_kafka(n: usize, extra_args: &[&str]) -> Cluster {
        Self::start_inner(n, extra_args, true)
    }

    /// Same, with environment variables for every broker (and the Kafka
    /// listener when `kafka`).
    pub fn start_with_env(
        n: usize,
        extra_args: &[&str],
        kafka: bool,
        env: &[(&str, &str)],
    ) -> Cluster {
        Self::start_inner_env(n, extra_args, kafka, env)
    }

    /// Starts one broker per entry of `racks`, node `i + 1` with `--rack racks[i]`.
    pub fn start_with_racks(racks: &[&str], extra_args: &[&str]) -> Cluster {
        Self::start_inner_full(racks.len(), extra_args, false, &[], racks)
    }

    fn start_inner(n: usize, extra_args: &[&str], kafka: bool) -> Cluster {
        Self::start_inner_env(n, extra_args, kafka, &[])
    }

    fn start_inner_env(
        n: usize,
        extra_args: &[&str],
        kafka: bool,
        env: &[(&str, &str)],
    ) -> Cluster {
        Self::start_inner_full(n, extra_args, kafka, env, &[])
    }

    fn start_inner_full(
        n: usize,
        extra_args: &[&str],
        kafka: bool,
        env: &[(&str, &str)],
        racks: &[&str],
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let addrs: Vec<SocketAddr> = (0..n)
            .map(|_| if kafka { free_port_pair() } else { free_port() })
            .collect();
        let peers = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={}", i + 1, a))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = addrs
            .iter()
            .enumerate()
            .map(|(i, &addr)| BrokerProcess {
                id: i as u64 + 1,
                addr,
                data_dir: dir.path().join(format!("node{}", i + 1)),
                child: None,
                join: None,
            })
            .collect();
        let mut cluster = Cluster {
            nodes,
            peers,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            kafka,
            kafka_ports: std::collections::BTreeMap::new(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            racks: racks
                .iter()
                .enumerate()
                .map(|(i, r)| (i as u64 + 1, r.to_string()))
                .collect(),
            _dir: dir,
        };
        for id in 1..=n as u64 {
            cluster.spawn(id);
        }
        for id in 1..=n as u64 {
            cluster.wait_listening(id);
        }
        cluster
    }

    /// The extra flags of every broker started from now on (restarts included).
    pub fn set_extra_args(&mut self, extra_args: &[&str]) {
        self.extra_args = extra_args.iter().map(|s| s.to_string()).collect();
    }

    /// The directory every node's data and log live under.
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Client bootstrap addresses.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.to_string()).collect()
    }

    /// Kafka bootstrap addresses, comma-separated.
    pub fn kafka_addrs(&self) -> String {
        assert!(self.kafka, "started without the Kafka listener");
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", self.kafka_port(n.id)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `id`'s Kafka port: its port + 1 unless set otherwise.
    pub fn kafka_port(&self, id: u64) -> u16 {
        self.kafka_ports
            .get(&id)
            .copied()
            .unwrap_or(self.nodes[(id - 1) as usize].addr.port() + 1)
    }

    /// Node `id` serves Kafka on `port` from its next start; returns a free port
    /// when given 0.
    pub fn set_kafka_port(&mut self, id: u64, port: u16) -> u16 {
        let port = if port == 0 { free_port().port() } else { port };
        self.kafka_ports.insert(id, port);
        port
    }

    fn node(&mut self, id: u64) -> &mut BrokerProcess {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Starts (or restarts) node `id`.
    pub fn spawn(&mut self, id: u64) {
        let peers = self.peers.clone();
        let extra = self.extra_args.clone();
        let env = self.env.clone();
        // 64 MiB segments unless the test picks its own.
        let segment_flag: Vec<String> = if extra.iter().any(|a| a == "--segment-bytes") {
            Vec::new()
        } else {
            vec!["--segment-bytes".into(), (64u64 << 20).to_string()]
        };
        let kafka_flag: Vec<String> = if self.kafka {
            let port = self.kafka_port(id);
            vec!["--kafka-listen".into(), format!("127.0.0.1:{port}")]
        } else {
            Vec::new()
        };
        let rack_flag: Vec<String> = match self.racks.get(&id) {
            Some(rack) => vec!["--rack".into(), rack.clone()],
            None => Vec::new(),
        };
        let node = self.node(id);
        assert!(node.child.is_none(), "node {id} is already running");
        let (membership_flag, membership_value) = match &node.join {
            Some(join) => ("--join", join.clone()),
            None => ("--peers", peers),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.data_dir.with_extension("log"))
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_raftmq-broker"))
            .arg("--node-id")
            .arg(id.to_string())
            .arg("--data-dir")
            .arg(&node.data_dir)
            .arg("--listen")
            .arg(node.addr.to_string())
            .arg(membership_flag)
            .arg(&membership_value)
            .args(segment_flag)
            .args(kafka_flag)
            .args(rack_flag)
            .args(&extra)
            .envs(env)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start raftmq-broker");
        node.child = Some(child);
    }

    /// Waits until node `id` accepts TCP connections (at most 10 s).
    pub fn wait_listening(&mut self, id: u64) {
        let addr = self.node(id).addr;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            if let Some(child) = self.node(id).child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "node {id} exited early: {status}; see {}",
                        self.log_path(id)
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "node {id} did not start listening"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The addresses of the running nodes, comma-separated (for `--join`).
    fn running_addrs(&self) -> String {
        self.running()
            .iter()
            .map(|&r| self.nodes[(r - 1) as usize].addr.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The `--rack` node `id` starts with from now on (a node added later too).
    pub fn set_rack(&mut self, id: u64, rack: &str) {
        self.racks.insert(id, rack.to_string());
    }

    /// Starts a new node (the next id, an empty data directory) with `--join`
    /// naming the running nodes; returns its id once it listens.
    pub fn add_joining_node(&mut self) -> u64 {
        let id = self.nodes.len() as u64 + 1;
        let join = self.running_addrs();
        self.nodes.push(BrokerProcess {
            id,
            addr: free_port(),
            data_dir: self._dir.path().join(format!("node{id}")),
            child: None,
            join: Some(join),
        });
        self.restart(id);
        id
    }

    /// Restarts stopped node `id` with an empty data directory and `--join` (a
    /// replaced machine under its old id, after it was removed).
    pub fn rejoin(&mut self, id: u64) {
        let join = self.running_addrs();
        self.wipe(id);
        self.node(id).join = Some(join);
        self.restart(id);
    }

    /// Restarts stopped node `id` with its data and `--join` naming the running
    /// nodes (an operator who keeps `--join` in the service's command line).
    pub fn restart_joining(&mut self, id: u64) {
        let join = self.running_addrs();
        self.node(id).join = Some(join);
        self.restart(id);
    }

    /// Like [`rejoin`](Self::rejoin), without waiting for the node to listen: the
    /// cluster may refuse it, and it then stops at once.
    pub fn rejoin_unchecked(&mut self, id: u64) {
        let join = self.running_addrs();
        self.wipe(id);
        self.node(id).join = Some(join);
        self.spawn(id);
    }

    /// Waits at most `limit` for node `id` to exit by itself; its exit status.
    pub fn wait_exit(&mut self, id: u64, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            let child = self.node(id).child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.node(id).child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Deletes a stopped node's data directory (a disk that died).
    pub fn wipe(&mut self, id: u64) {
        let node = self.node(id);
        assert!(node.child.is_none(), "wipe a stopped node");
        let _ = std::fs::remove_dir_all(&node.data_dir);
    }

    /// Where node `id` writes its log lines.
    pub fn log_path(&self, id: u64) -> String {
        self.nodes[(id - 1) as usize]
            .data_dir
            .with_extension("log")
            .display()
            .to_string()
    }

    /// SIGKILL: a crash, nothing flushed.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.node(id).child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait (at most 10 s, then SIGKILL). Returns whether it exited 0.
    pub fn terminate(&mut self, id: u64) -> bool {
        let Some(mut child) = self.node(id).child.take() else {
            return false;
        };
        // SAFETY: sending a signal to a child process we own; no memory is involved.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to running node `id`.
    pub fn signal(&mut self, id: u64, signal: i32) {
        let child = self.node(id).child.as_ref().expect("node is running");
        // SAFETY: sending a signal to a child process we own; no memory is involved.
        unsafe {
            libc::kill(child.id() as libc::pid_t, signal);
        }
    }

    /// Restarts a stopped node and waits for it to listen.
    pub fn restart(&mut self, id: u64) {
        self.spawn(id);
        self.wait_listening(id);
    }

    /// Ids of the nodes that are running.
    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            // The nodes' logs go with the temporary directory: show what they said
            // about leadership and connections, which most failures come down to.
            for id in 1..=self.nodes.len() as u64 {
                let Ok(log) = std::fs::read_to_string(self.log_path(id)) else {
                    continue;
                };
                let notable: Vec<&str> = log
                    .lines()
                    .filter(|l| {
                        l.contains("WARN")
                            || l.contains("ERROR")
                            || l.contains("role changed")
                            || l.contains("leadership")
                            || l.contains("closing connection")
                    })
                    .collect();
                let from = notable.len().saturating_sub(60);
                eprintln!("--- node {id}: last notable log lines ---");
                for line in &notable[from..] {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// Asks every running node for its status; returns the id of the one that leads.
pub async fn find_leader(cluster: &Cluster, deadline: Duration) -> u64 {
    let until = Instant::now() + deadline;
    loop {
        for id in cluster.running() {
            let addr = cluster.nodes[(id - 1) as usize].addr;
            let Ok(mut conn) = Conn::connect_addr(addr).await else {
                continue;
            };
            let request = Req::ClusterStatus(pb::ClusterStatusRequest {});
            if let Ok(response) = conn.try_call(request, Duration::from_secs(2)).await {
                if let Some(Resp::ClusterStatus(s)) = response.body {
                    if s.role == "leader" {
                        return id;
                    }
                }
            }
        }
        assert!(Instant::now() < until, "no leader within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends one request to the leader, following leader changes, until it gets an
/// answer that is not "try elsewhere". Bounded by `deadline`.
pub async fn call_leader(cluster: &Cluster, body: Req, deadline: Duration) -> pb::Response {
    let until = Instant::now() + deadline;
    loop {
        let leader = find_leader(cluster, until.saturating_duration_since(Instant::now())).await;
        let addr = cluster.nodes[(leader - 1) as usize].addr;
        if let Ok(mut conn) = Conn::connect_addr(addr).await {
            if let Ok(response) = conn.try_call(body.clone(), Duration::from_secs(5)).await {
                match code(&response) {
                    ErrorCode::NotLeader
                    | ErrorCode::NotReady
                    | ErrorCode::Timeout
                    | ErrorCode::ShuttingDown => {}
                    _ => return response,
                }
            }
        }
        assert!(Instant::now() < until, "no answer within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The metadata the leader answers with (nodes with their racks, data groups,
/// queue placement), asked through a client.
pub async fn metadata(client: &raftmq_client::Client) -> pb::MetadataResponse {
    let body = Req::Metadata(pb::MetadataRequest::default());
    match client
        .request(raftmq_client::Target::Leader, body)
        .await
        .expect("metadata")
    {
        Resp::Metadata(m) => m,
        other => panic!("unexpected answer {}", other.api_key()),
    }
}

/// Creates a topic through the leader; panics on any error.
pub async fn create_topic(cluster: &Cluster, name: &str, queues: u32) {
    let request = Req::CreateTopic(pb::CreateTopicRequest {
        name: name.into(),
        queues,
        ..Default::default()
    });
    let response = call_leader(cluster, request, Duration::from_secs(30)).await;
    assert_eq!(code(&response), ErrorCode::None, "{response:?}");
}

/// Allocates an idempotent producer id through the leader.
pub async fn init_producer(cluster: &Cluster) -> u64 {
    let request = Req::InitProducer(pb::InitProducerRequest {});
    let response = call_leader(cluster, request, Duration::from_secs(30)).await;
    match response.body {
        Some(Resp::InitProducer(p)) => p.producer_id,
        _ => panic!("{response:?}"),
    }
}

/// Every message of every queue of `topic` (queue → values in offset order).
pub async fn read_all(
    client: &raftmq_client::Client,
    topic: &str,
    queues: u32,
) -> std::collections::BTreeMap<u32, Vec<String>> {
    let mut consumer = raftmq_client::Consumer::new(client);
    let all: Vec<u32> = (0..queues).collect();
    consumer.assign(topic, &all).await.expect("assign");
    let mut ends = std::collections::BTreeMap::new();
    for q in 0..queues {
        ends.insert(
            q,
            consumer
                .seek(q, raftmq_client::SeekTo::Latest)
                .await
                .expect("end"),
        );
        consumer
            .seek(q, raftmq_client::SeekTo::Earliest)
            .await
            .expect("seek");
    }
    let mut out: std::collections::BTreeMap<u32, Vec<String>> = std::collections::BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if ends
            .iter()
            .all(|(q, end)| out.get(q).map_or(0, Vec::len) as u64 >= *end)
        {
            return out;
        }
        assert!(Instant::now() < deadline, "reading back did not finish");
        for m in consumer.poll().await.expect("poll") {
            let list = out.entry(m.queue).or_default();
            assert_eq!(
                list.len() as u64,
                m.offset,
                "queue {} skipped an offset",
                m.queue
            );
            list.push(String::from_utf8(m.value.to_vec()).expect("utf-8"));
        }
    }
}
