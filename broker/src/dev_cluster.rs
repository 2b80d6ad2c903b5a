//! `raftmq-broker dev`: a local cluster of N child brokers, watched.
//!
//! - Each node is this binary with `--node-id`, `--peers` and its own data dir under
//!   `--data-dir`; their log lines share this terminal and start with `node=N`.
//! - Start-up fails fast: if a node exits before it listens (a port in use, a bad
//!   data dir), `dev` stops the others and exits non-zero.
//! - A node that exits later (killed, crashed) is logged with its status and
//!   restarted after a second: the cluster heals, as a supervisor (systemd,
//!   Kubernetes) would do it. A node that dies again within a few seconds of each
//!   of its last three starts is given up on: `dev` stops the cluster and exits 1.
//! - Ctrl-C or SIGTERM stops every node cleanly (SIGTERM, then waits).
//! - Segments are 64 MiB (`--segment-bytes`), not the 1 GiB default, so an empty
//!   3-node cluster preallocates about 200 MiB, not 3 GiB.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use raftmq_broker::config::Durability;

/// `dev`'s options.
pub struct DevOptions {
    /// How many nodes.
    pub nodes: u64,
    /// Port of node 1.
    pub base_port: u16,
    /// Metrics port of node 1.
    pub metrics_base_port: u16,
    /// Kafka port of node 1.
    pub kafka_base_port: u16,
    /// Parent of the nodes' data dirs.
    pub data_dir: PathBuf,
    /// Durability of every node.
    pub durability: Durability,
    /// Delete `data_dir` first.
    pub clean: bool,
    /// Segment size of every node.
    pub segment_bytes: u64,
    /// Data groups of the cluster.
    pub data_groups: u32,
    /// Racks the nodes are spread over, round robin (0: none).
    pub racks: u64,
}

/// A node dying within this long of its start counts as failing to start.
const QUICK_EXIT: Duration = Duration::from_secs(5);
/// Quick exits in a row before `dev` gives up on a node.
const QUICK_EXITS_MAX: u32 = 3;
/// How long a node may take to listen at start-up.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);

struct Node {
    id: u64,
    addr: String,
    args: Vec<String>,
    child: Child,
    started: Instant,
    quick_exits: u32,
    /// The broker's first stdout line (`... listening on ...`), or nothing if it
    /// exited first: the proof that *this* process holds its port.
    listening: mpsc::Receiver<String>,
}

/// Runs the cluster until Ctrl-C/SIGTERM (`Ok`) or a node that keeps failing (`Err`).
pub fn run(opts: DevOptions) -> anyhow::Result<()> {
    let DevOptions {
        nodes,
        base_port,
        metrics_base_port,
        kafka_base_port,
        ref data_dir,
        durability,
        clean,
        segment_bytes,
        data_groups,
        racks,
    } = opts;
    anyhow::ensure!((1..=9).contains(&nodes), "--nodes must be between 1 and 9");
    anyhow::ensure!(
        u64::from(base_port) + nodes <= 65_536
            && u64::from(metrics_base_port) + nodes <= 65_536
            && u64::from(kafka_base_port) + nodes <= 65_536,
        "--base-port, --metrics-base-port and --kafka-base-port leave no room for {nodes} nodes"
    );
    prepare_data_dir(data_dir, clean)?;
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let addrs: Vec<String> = (0..nodes)
        .map(|i| format!("127.0.0.1:{}", u64::from(base_port) + i))
        .collect();
    let peers = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let durability = match durability {
        Durability::Fsync => "fsync",
        Durability::Async => "async",
    };
    let mut running: Vec<Node> = Vec::new();
    let mut lines = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let id = i as u64 + 1;
        let dir = data_dir.join(format!("node{id}"));
        let metrics = format!("127.0.0.1:{}", u64::from(metrics_base_port) + i as u64);
        let kafka = format!("127.0.0.1:{}", u64::from(kafka_base_port) + i as u64);
        let mut args: Vec<String> = vec![
            "--node-id".into(),
            id.to_string(),
            "--listen".into(),
            addr.clone(),
            "--peers".into(),
            peers.clone(),
            "--durability".into(),
            durability.into(),
            "--metrics-listen".into(),
            metrics.clone(),
            "--kafka-listen".into(),
            kafka.clone(),
            "--segment-bytes".into(),
            segment_bytes.to_string(),
            "--data-groups".into(),
            data_groups.to_string(),
            "--data-dir".into(),
            dir.display().to_string(),
        ];
        if racks > 0 {
            args.extend(["--rack".into(), format!("rack{}", i as u64 % racks + 1)]);
        }
        let (child, listening) = match spawn(&exe, &args) {
            Ok(c) => c,
            Err(e) => {
                stop_all(&mut running);
                return Err(e.context(format!("cannot start node {id}")));
            }
        };
        lines.push(format!(
            "node {id}: {addr}  kafka {kafka}  pid {}  metrics http://{metrics}/metrics  data {}",
            child.id(),
            dir.display()
        ));
        running.push(Node {
            id,
            addr: addr.clone(),
            args,
            child,
            started: Instant::now(),
            quick_exits: 0,
            listening,
        });
    }
    if let Err(e) = wait_all_listening(&mut running) {
        stop_all(&mut running);
        return Err(e);
    }
    for line in lines {
        println!("{line}");
    }
    println!("brokers: {}", addrs.join(","));
    println!(
        "a node that exits is restarted; Ctrl-C stops the cluster (`raftmq --brokers {} cluster status` shows who leads)",
        addrs.join(",")
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let outcome = runtime.block_on(watch(&exe, &mut running));
    stop_all(&mut running);
    println!("cluster stopped");
    outcome
}

/// `--clean` empties the directory; otherwise says when an earlier run's data is
/// reused (its topics and messages are still there).
fn prepare_data_dir(dir: &Path, clean: bool) -> anyhow::Result<()> {
    let exists = dir.exists();
    if exists && clean {
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("cannot remove {} (--clean)", dir.display()))?;
        println!("removed {} (--clean)", dir.display());
        return Ok(());
    }
    let used = exists
        && std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_some();
    if used {
        println!(
            "reusing the data in {} from an earlier run (--clean starts empty)",
            dir.display()
        );
    }
    Ok(())
}

/// Starts a node; its stdout is read by a thread that hands over the first line (the
/// broker prints `... listening on ...` once bound) and drops the rest.
fn spawn(exe: &Path, args: &[String]) -> anyhow::Result<(Child, mpsc::Receiver<String>)> {
    let mut child = Command::new(exe)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot run the broker binary")?;
    let stdout = child.stdout.take().context("the node's stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        if let Some(Ok(first)) = lines.next() {
            let _ = tx.send(first);
        }
        for _ in lines {}
    });
    Ok((child, rx))
}

/// Waits until every node says it listens; a node that exits first fails it. (A
/// probe of the port would be fooled by another process holding it.)
fn wait_all_listening(nodes: &mut [Node]) -> anyhow::Result<()> {
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    for node in nodes.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        match node.listening.recv_timeout(left) {
            Ok(line) if line.contains("listening on") => {}
            Ok(_) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Its stdout closed without the line: it exited (or is exiting).
                let status = node.child.wait().context("waiting for a node")?;
                bail!(
                    "node {} exited at start-up ({}); its error is above",
                    node.id,
                    describe(status)
                );
            }
            Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                "node {} did not listen on {} within {LISTEN_TIMEOUT:?}",
                node.id,
                node.addr
            ),
        }
    }
    Ok(())
}

/// Watches the nodes until a signal (`Ok`) or a node that keeps failing (`Err`).
async fn watch(exe: &Path, nodes: &mut [Node]) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
            _ = tick.tick() => {}
        }
        for node in nodes.iter_mut() {
            let Some(status) = node.child.try_wait().context("waiting for a node")? else {
                continue;
            };
            let quick = node.started.elapsed() < QUICK_EXIT;
            node.quick_exits = if quick { node.quick_exits + 1 } else { 0 };
            if node.quick_exits >= QUICK_EXITS_MAX {
                bail!(
                    "node {} exited {} times in a row within {QUICK_EXIT:?} of starting (last: {}); stopping the cluster",
                    node.id,
                    node.quick_exits,
                    describe(status)
                );
            }
            tracing::warn!(
                node = node.id,
                pid = node.child.id(),
                status = %describe(status),
                "node exited; restarting it in 1 s"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
            (node.child, node.listening) = spawn(exe, &node.args)?;
            node.started = Instant::now();
            tracing::info!(node = node.id, pid = node.child.id(), "node restarted");
        }
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

/// SIGTERM to every node still running, then waits for each (10 s, then SIGKILL).
fn stop_all(nodes: &mut [Node]) {
    for node in nodes.iter() {
        // SAFETY: signalling our own child processes.
        unsafe {
            libc::kill(node.child.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    for node in nodes.iter_mut() {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match node.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = node.child.kill();
                    let _ = node.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}
