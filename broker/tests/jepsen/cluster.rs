//! A cluster of real `raftmq-broker` processes on loopback, each peer link through
//! its own [`Proxy`], with process faults. Every process is stopped when the
//! [`Cluster`] is dropped, on success and on panic alike; the kernel also kills a
//! broker whose test process dies (`PR_SET_PDEATHSIG`).

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::proxy::{LinkMode, Proxy};

/// Longest wait for a started broker to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for a SIGTERMed broker to exit before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How to build a cluster. `Default`: 3 nodes, fsync, 64 KiB segments (the smallest
/// allowed: many segment rolls and index checkpoints in a short run), 32 KiB batches
/// at most.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Voters.
    pub nodes: usize,
    /// `--segment-bytes`.
    pub segment_bytes: u64,
    /// `max_batch_bytes` in the config file (must fit a segment with its header).
    pub max_batch_bytes: u64,
    /// `--durability`.
    pub durability: &'static str,
    /// Data directories to use instead of one under the cluster's temp dir (for a
    /// node on a small filesystem).
    pub data_dirs: BTreeMap<u64, PathBuf>,
    /// Further flags for every broker (retention settings, the disk-use limit).
    pub extra_args: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            segment_bytes: 64 * 1024,
            max_batch_bytes: 32 * 1024,
            durability: "fsync",
            data_dirs: BTreeMap::new(),
            extra_args: Vec::new(),
        }
    }
}

/// One broker.
#[derive(Debug)]
pub struct Node {
    /// Node id, from 1.
    pub id: u64,
    /// Where it listens (clients and peers).
    pub addr: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its stderr.
    pub log_path: PathBuf,
    /// The `--peers` it is started with: its own address, proxies for the others.
    peers: String,
    /// Started with `--join` these addresses (after it was replaced).
    join: Option<String>,
    child: Option<Child>,
    paused: bool,
}

/// The brokers, their link proxies and their files.
#[derive(Debug)]
pub struct Cluster {
    /// By id - 1.
    pub nodes: Vec<Node>,
    /// `(from, to)` → the proxy that node `from` uses to reach node `to`.
    pub proxies: BTreeMap<(u64, u64), Proxy>,
    options: ClusterOptions,
    config_file: PathBuf,
    dir: Option<tempfile::TempDir>,
    /// Keep the data directories and logs when dropped (a run with anomalies).
    keep: bool,
}

impl Cluster {
    /// Starts every node and waits until each accepts connections.
    pub async fn start(options: ClusterOptions) -> Cluster {
        assert!(
            (1..=9).contains(&options.nodes),
            "1 to 9 nodes, not {}",
            options.nodes
        );
        let dir = tempfile::Builder::new()
            .prefix("raftmq-faults-")
            .tempdir()
            .expect("temp dir");
        let n = options.nodes as u64;
        // The brokers' ports stay bound until the proxies have theirs, so a proxy
        // cannot be handed a port a broker is about to listen on.
        // Below the ephemeral range (see `ports`): a restarted node finds its port
        // free, never taken by some client connection's source port.
        let held: Vec<TcpListener> = (0..n)
            .map(|_| TcpListener::bind(super::ports::free_port()).expect("bind a free port"))
            .collect();
        let addrs: Vec<SocketAddr> = held
            .iter()
            .map(|l| l.local_addr().expect("local addr"))
            .collect();
        let mut proxies = BTreeMap::new();
        for from in 1..=n {
            for to in 1..=n {
                if from != to {
                    let proxy = Proxy::start(addrs[(to - 1) as usize])
                        .await
                        .expect("start a link proxy");
                    proxies.insert((from, to), proxy);
                }
            }
        }
        drop(held);
        let config_file = dir.path().join("broker.toml");
        std::fs::write(
            &config_file,
            format!("max_batch_bytes = {}\n", options.max_batch_bytes),
        )
        .expect("write the broker config");
        let nodes = (1..=n)
            .map(|id| {
                let peers = (1..=n)
                    .map(|to| {
                        let addr = if to == id {
                            addrs[(id - 1) as usize]
                        } else {
                            proxies[&(id, to)].listen
                        };
                        format!("{to}={addr}")
                    })
                    .collect::<Vec<_>>()
                    .join(",");
                let data_dir = options
                    .data_dirs
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| dir.path().join(format!("node{id}")));
                Node {
                    id,
                    addr: addrs[(id - 1) as usize],
                    data_dir,
                    log_path: dir.path().join(format!("node{id}.log")),
                    peers,
                    join: None,
                    child: None,
                    paused: false,
                }
            })
            .collect();
        let mut cluster = Cluster {
            nodes,
            proxies,
            options,
            config_file,
            dir: Some(dir),
            keep: false,
        };
        for id in 1..=n {
            cluster.spawn(id);
        }
        for id in 1..=n {
            cluster.wait_listening(id).await;
        }
        cluster
    }

    /// Node ids, 1..=n.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Node `id`.
    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Direct client addresses by node id (never through a proxy).
    pub fn client_addrs(&self) -> BTreeMap<u64, String> {
        self.nodes
            .iter()
            .map(|n| (n.id, n.addr.to_string()))
            .collect()
    }

    /// Every address a broker may name another by (its own and the proxies'), to
    /// the node it reaches.
    pub fn aliases(&self) -> HashMap<String, u64> {
        let mut map: HashMap<String, u64> = self
            .nodes
            .iter()
            .map(|n| (n.addr.to_string(), n.id))
            .collect();
        for (&(_, to), proxy) in &self.proxies {
            map.insert(proxy.listen.to_string(), to);
        }
        map
    }

    /// Keeps the cluster's files when it is dropped (for a run that found anomalies).
    pub fn keep_files(&mut self) {
        self.keep = true;
    }

    /// Turns stopped node `id` into a new, empty node that joins the others
    /// through `--join` when it next starts (its removed self is gone).
    pub fn prepare_replacement(&mut self, id: u64) {
        assert!(!self.is_running(id), "replace a stopped node");
        let join = self
            .nodes
            .iter()
            .filter(|n| n.id != id)
            .map(|n| n.addr.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let node = self.node_mut(id);
        let _ = std::fs::remove_dir_all(&node.data_dir);
        node.join = Some(join);
    }

    /// Starts node `id` (it must not be running).
    pub fn spawn(&mut self, id: u64) {
        let options = self.options.clone();
        let config_file = self.config_file.clone();
        let node = self.node_mut(id);
        assert!(node.child.is_none(), "node {id} is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .expect("open the node's log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_raftmq-broker"));
        command
            .arg("--config")
            .arg(&config_file)
            .arg("--node-id")
            .arg(id.to_string())
            .arg("--data-dir")
            .arg(&node.data_dir)
            .arg("--listen")
            .arg(node.addr.to_string())
            .arg("--peers")
            .arg(&node.peers)
            .args(
                node.join
                    .iter()
                    .flat_map(|j| ["--join".to_string(), j.clone()]),
            )
            .arg("--segment-bytes")
            .arg(options.segment_bytes.to_string())
            .arg("--durability")
            .arg(options.durability)
            .args(&options.extra_args)
            .env(
                "RUST_LOG",
                std::env::var("RAFTMQ_FAULT_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        // The signal goes when the spawning thread exits: tests spawn from the
        // runtime's threads, which outlive the cluster.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn().expect("start raftmq-broker");
        node.child = Some(child);
        node.paused = false;
    }

    /// Waits until node `id` accepts TCP connections; panics if it exits first.
    pub async fn wait_listening(&mut self, id: u64) {
        let addr = self.node(id).addr;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Ok(_)) = tokio::time::timeout(
                Duration::from_millis(200),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            {
                return;
            }
            let log_path = self.node(id).log_path.clone();
            if let Some(child) = self.node_mut(id).child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "node {id} exited on start: {status}\n{}",
                        tail(&log_path, 20)
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "node {id} did not start listening"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether node `id` has a process (paused or not).
    pub fn is_running(&self, id: u64) -> bool {
        self.node(id).child.is_some()
    }

    /// Whether node `id` is running and not paused.
    pub fn is_up(&self, id: u64) -> bool {
        self.is_running(id) && !self.node(id).paused
    }

    /// Ids of running nodes (paused ones included).
    pub fn running(&self) -> Vec<u64> {
        self.ids()
            .into_iter()
            .filter(|&id| self.is_running(id))
            .collect()
    }

    /// Ids of running, unpaused nodes.
    pub fn up(&self) -> Vec<u64> {
        self.ids()
            .into_iter()
            .filter(|&id| self.is_up(id))
            .collect()
    }

    fn signal(&self, id: u64, signal: libc::c_int) {
        if let Some(child) = &self.node(id).child {
            // SAFETY: signalling a child process this harness started and has not reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
        }
    }

    /// SIGKILL: a crash, nothing flushed by the process (the page cache survives).
    pub fn kill(&mut self, id: u64) {
        self.signal(id, libc::SIGCONT);
        if let Some(mut child) = self.node_mut(id).child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.node_mut(id).paused = false;
    }

    /// SIGTERM and wait (then SIGKILL after a bound). Whether it exited cleanly.
    pub fn terminate(&mut self, id: u64) -> bool {
        self.signal(id, libc::SIGCONT);
        self.signal(id, libc::SIGTERM);
        self.node_mut(id).paused = false;
        let Some(mut child) = self.node_mut(id).child.take() else {
            return false;
        };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGSTOP: the process freezes with its sockets open (a long GC pause, a VM stall).
    pub fn pause(&mut self, id: u64) {
        if self.is_running(id) {
            self.signal(id, libc::SIGSTOP);
            self.node_mut(id).paused = true;
        }
    }

    /// SIGCONT.
    pub fn resume(&mut self, id: u64) {
        if self.is_running(id) {
            self.signal(id, libc::SIGCONT);
            self.node_mut(id).paused = false;
        }
    }

    /// Starts a stopped node again and waits for it to listen.
    pub async fn restart(&mut self, id: u64) {
        self.spawn(id);
        self.wait_listening(id).await;
    }

    /// Sets the mode of the link `from` → `to`.
    pub fn set_link(&self, from: u64, to: u64, mode: LinkMode) {
        self.proxies[&(from, to)].set_mode(mode);
    }

    /// Delays the link `from` → `to`.
    pub fn delay_link(&self, from: u64, to: u64, delay: Duration) {
        self.proxies[&(from, to)].set_delay(delay);
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut_both(&self, a: u64, b: u64) {
        self.set_link(a, b, LinkMode::Cut);
        self.set_link(b, a, LinkMode::Cut);
    }

    /// Every link back to pass, no delay.
    pub fn heal_network(&self) {
        for proxy in self.proxies.values() {
            proxy.heal();
        }
    }

    /// Heals the network, resumes paused nodes, restarts stopped ones.
    pub async fn heal_all(&mut self) {
        self.heal_network();
        for id in self.ids() {
            if self.is_running(id) {
                self.resume(id);
            } else {
                self.restart(id).await;
            }
        }
    }

    /// Stops every node with SIGTERM (the files are then quiet and can be read).
    pub fn stop_all(&mut self) {
        for id in self.ids() {
            if self.is_running(id) {
                self.terminate(id);
            }
        }
    }

    /// The last `lines` lines of node `id`'s stderr.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        tail(&self.node(id).log_path, lines)
    }

    /// Node `id`'s whole stderr.
    pub fn log_text(&self, id: u64) -> String {
        std::fs::read_to_string(&self.node(id).log_path).unwrap_or_default()
    }

    /// The cluster's temp dir (logs, data dirs).
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("temp dir").path()
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                // SAFETY: as in `signal`; a stopped process must be continued to die
                // promptly after SIGKILL on some kernels.
                unsafe {
                    libc::kill(child.id() as libc::pid_t, libc::SIGCONT);
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if self.keep || std::thread::panicking() || std::env::var_os("RAFTMQ_FAULT_KEEP").is_some()
        {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("cluster files kept in {}", kept.display());
            }
        }
    }
}
