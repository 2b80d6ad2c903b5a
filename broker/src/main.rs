//! `raftmq-broker`: the server binary.
//!
//! With no arguments it runs a single-node broker on 127.0.0.1:7070 with its data in
//! `./raftmq-data`. A cluster is the same binary with `--node-id` and `--peers`.
//!
//! Any error (a refused configuration, a port in use, another node's data dir) is
//! printed as one line on stderr and the process exits with status 1.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use raftmq_broker::config::{parse_addr, parse_peers, BrokerConfig, Durability, FileConfig};
use raftmq_broker::logging::{self, LogFormat};
use raftmq_broker::raft::NodeId;
use raftmq_broker::Broker;

mod dev_cluster;

/// Huge reservations from decoders of untrusted input cost address space, not an
/// abort (see `alloc_guard`).
#[global_allocator]
static ALLOCATOR: raftmq_broker::alloc_guard::GuardedAlloc =
    raftmq_broker::alloc_guard::GuardedAlloc;

/// A Raft-replicated message-queue broker.
#[derive(Debug, Parser)]
#[command(name = "raftmq-broker", version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// TOML configuration file; flags given here override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// This node's id (default 1).
    #[arg(long)]
    node_id: Option<u64>,
    /// Data directory (default ./raftmq-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address for clients and peers (default 127.0.0.1:7070).
    #[arg(long)]
    listen: Option<String>,
    /// Every node of the cluster, this one included: 1=HOST:PORT,2=HOST:PORT,...
    #[arg(long)]
    peers: Option<String>,
    /// Join an existing cluster through any of its members (HOST:PORT[,...]): this
    /// node (empty data directory) asks to be added as a learner and receives the
    /// log; `raftmq cluster add-node ID` then makes it a voter. With --join,
    /// --peers only says at which address to reach a member (optional; members'
    /// addresses come from the log).
    #[arg(long, value_name = "HOST:PORT[,...]")]
    join: Option<String>,
    /// A learner is promoted only within this many entries of the leader's log
    /// (default 1000).
    #[arg(long)]
    max_learner_lag: Option<u64>,
    /// Voters the metadata group keeps: caught-up learners are promoted while it
    /// has fewer, and a decommissioned or long-silent voter is replaced by a
    /// learner (default 3; 0: never automatically).
    #[arg(long)]
    metadata_voters: Option<u32>,
    /// Data groups a new cluster spreads its queues over (default 0: one Raft group
    /// for everything). Fixed once the cluster has written it.
    #[arg(long)]
    data_groups: Option<u32>,
    /// Replicas of each data group (default 3, at most the number of nodes).
    #[arg(long)]
    replication_factor: Option<u32>,
    /// Re-create the data-group replicas of a node not heard from for this long
    /// (ms, default 300000; 0: never).
    #[arg(long)]
    dead_node_timeout_ms: Option<u64>,
    /// An idle data group ticks this many times slower (default 10; 1: never).
    #[arg(long)]
    idle_tick_factor: Option<u32>,
    /// Keep idle data groups heartbeating instead of quiescing them (for
    /// measuring what quiescence saves).
    #[arg(long)]
    no_quiesce: bool,
    /// fsync (default: acknowledge after a quorum synced) or async.
    #[arg(long)]
    durability: Option<Durability>,
    /// Segment file size in bytes (default 1 GiB).
    #[arg(long)]
    segment_bytes: Option<u64>,
    /// Largest record batch a producer may send, in bytes (default 8 MiB).
    #[arg(long)]
    max_batch_bytes: Option<usize>,
    /// Delete sealed segments older than this many ms (default 7 days; 0 = never).
    #[arg(long)]
    retention_ms: Option<u64>,
    /// Delete the oldest segments while the log is larger than this (default 0 = no
    /// limit).
    #[arg(long)]
    retention_bytes: Option<u64>,
    /// How often retention runs, in ms (default 10000).
    #[arg(long)]
    retention_check_interval_ms: Option<u64>,
    /// How long a follower may hold retention back, in ms (default 600000).
    #[arg(long)]
    retention_follower_grace_ms: Option<u64>,
    /// Refuse appends above this fraction of the disk in use (default 0.95).
    #[arg(long)]
    max_disk_use_ratio: Option<f64>,
    /// Answer reads of replicated state from this node's own state, without
    /// confirming with the leader (stale reads possible; for measurement only).
    #[arg(long)]
    local_reads: bool,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (default: off).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
    /// Serve the Kafka protocol at HOST:PORT (default: off).
    #[arg(long, value_name = "HOST:PORT")]
    kafka_listen: Option<String>,
    /// The Kafka address clients are told for this node (default: the Kafka port
    /// on this node's --listen host).
    #[arg(long, value_name = "HOST:PORT")]
    kafka_advertise: Option<String>,
    /// The node's rack or zone, its failure domain: each data group's replicas and
    /// the metadata voters go to distinct racks first (default: none).
    #[arg(long, value_name = "NAME")]
    rack: Option<String>,
    /// The node's certificate chain (PEM, leaf first; signed by the cluster CA).
    /// With --tls-key and --tls-cluster-ca: TLS on every port and link.
    #[arg(long, value_name = "FILE", env = "RAFTMQ_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The node's private key (PEM).
    #[arg(long, value_name = "FILE", env = "RAFTMQ_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// The cluster CA (PEM): only connections with a certificate it signed may
    /// replicate, vote or join; clients check node certificates against it.
    #[arg(long, value_name = "FILE", env = "RAFTMQ_TLS_CLUSTER_CA")]
    tls_cluster_ca: Option<PathBuf>,
    /// The CA of client certificates (PEM, must differ from the cluster CA): a
    /// client presenting one is logged in as the certificate's common name.
    #[arg(long, value_name = "FILE", env = "RAFTMQ_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// Allow a non-loopback listener without TLS and logins (anyone who can reach
    /// it can do anything).
    #[arg(long)]
    insecure: bool,
    /// Every client must log in (SCRAM-SHA-256/512, PLAIN over TLS, or a client
    /// certificate). The first admin comes from RAFTMQ_BOOTSTRAP_USER=NAME:PASSWORD.
    #[arg(long)]
    require_login: bool,
    /// Bytes per second each user may produce before being throttled (0: no limit).
    #[arg(long, value_name = "BYTES")]
    produce_quota_bytes: Option<u64>,
    /// Bytes per second of fetched data each user may receive (0: no limit).
    #[arg(long, value_name = "BYTES")]
    fetch_quota_bytes: Option<u64>,
    /// Connections open at once (default 10000).
    #[arg(long)]
    max_connections: Option<u32>,
    /// Connections open at once from one client address (default 1000).
    #[arg(long)]
    max_connections_per_ip: Option<u32>,
    /// Users who may do anything (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "USER[,...]")]
    superusers: Option<Vec<String>>,
    /// Log line format: text (coloured only on a terminal, unless NO_COLOR is set)
    /// or json (one object per line).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Same as `--log-format json`.
    #[arg(long, hide = true)]
    log_json: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Runs a local cluster of N brokers (child processes of this binary) on
    /// consecutive loopback ports: restarts a node that exits, fails fast if one
    /// cannot start; Ctrl-C stops all of them cleanly.
    Dev {
        /// How many nodes.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Port of node 1; node N listens on base-port + N - 1.
        #[arg(long, default_value_t = 7071)]
        base_port: u16,
        /// Parent directory of the nodes' data dirs.
        #[arg(long, default_value = "raftmq-dev")]
        data_dir: PathBuf,
        /// fsync (default) or async.
        #[arg(long, default_value = "fsync")]
        durability: Durability,
        /// Metrics port of node 1; node N serves http://127.0.0.1:(this + N - 1)/metrics.
        #[arg(long, default_value_t = 9464)]
        metrics_base_port: u16,
        /// Kafka port of node 1; node N serves the Kafka protocol on this + N - 1.
        #[arg(long, default_value_t = 9092)]
        kafka_base_port: u16,
        /// Delete the data dir first (else an earlier run's data is reused).
        #[arg(long)]
        clean: bool,
        /// Segment size of every group of every node (default 32 MiB: an empty
        /// 3-node cluster with its 3 data groups preallocates about 400 MiB, not
        /// 12 GiB).
        #[arg(long, default_value_t = 32 << 20)]
        segment_bytes: u64,
        /// Data groups the queues spread over (default: one per node, so that every
        /// node leads some; 0 keeps every queue in the metadata group).
        #[arg(long)]
        data_groups: Option<u32>,
        /// Spread the nodes over this many racks, round robin (`rack1`, `rack2`,
        /// ...), to try rack-aware placement (default: no racks).
        #[arg(long, default_value_t = 0)]
        racks: u64,
    },
}

fn build_config(args: &Args) -> anyhow::Result<BrokerConfig> {
    let mut config = BrokerConfig::default();
    if let Some(path) = &args.config {
        config.apply_file(FileConfig::load(path)?)?;
    }
    if let Some(id) = args.node_id {
        config.node_id = NodeId(id);
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    let listen_given = args.listen.is_some();
    if let Some(listen) = &args.listen {
        config.listen = parse_addr(listen)?;
    }
    if let Some(peers) = &args.peers {
        config.peers = parse_peers(&[peers])?;
    } else if args.config.is_none() {
        // A single node: its own entry follows its listen address and id.
        config.peers.clear();
        config.peers.insert(config.node_id, config.listen);
    }
    if !listen_given && args.config.is_none() {
        if let Some(addr) = config.peers.get(&config.node_id) {
            config.listen = *addr;
        }
    }
    if let Some(d) = args.durability {
        config.durability = d;
    }
    if let Some(bytes) = args.segment_bytes {
        config.segment_bytes = bytes;
    }
    if let Some(bytes) = args.max_batch_bytes {
        config.max_batch_bytes = bytes;
    }
    if let Some(ms) = args.retention_ms {
        config.retention_ms = ms;
    }
    if let Some(bytes) = args.retention_bytes {
        config.retention_bytes = bytes;
    }
    if let Some(ms) = args.retention_check_interval_ms {
        config.retention_check_interval_ms = ms;
    }
    if let Some(ms) = args.retention_follower_grace_ms {
        config.retention_follower_grace_ms = ms;
    }
    if let Some(ratio) = args.max_disk_use_ratio {
        config.max_disk_use_ratio = ratio;
    }
    if let Some(join) = &args.join {
        config.join = join
            .split(',')
            .map(|a| parse_addr(a.trim()))
            .collect::<Result<_, _>>()?;
    }
    if let Some(lag) = args.max_learner_lag {
        config.max_learner_lag = lag;
    }
    if let Some(n) = args.metadata_voters {
        config.metadata_voters = n;
    }
    if let Some(n) = args.data_groups {
        config.data_groups = n;
    }
    if let Some(n) = args.replication_factor {
        config.replication_factor = n;
    }
    if let Some(ms) = args.dead_node_timeout_ms {
        config.dead_node_timeout_ms = ms;
    }
    if let Some(n) = args.idle_tick_factor {
        config.idle_tick_factor = n;
    }
    if args.no_quiesce {
        config.quiesce_idle_groups = false;
    }
    if args.local_reads {
        config.linearizable_reads = false;
    }
    if let Some(metrics) = &args.metrics_listen {
        config.metrics_listen = Some(parse_addr(metrics)?);
    }
    if let Some(kafka) = &args.kafka_listen {
        config.kafka_listen = Some(parse_addr(kafka)?);
    }
    if let Some(advertise) = &args.kafka_advertise {
        config.kafka_advertise = Some(advertise.clone());
    }
    if let Some(rack) = &args.rack {
        config.rack = Some(rack.clone());
    }
    let mut tls = config.tls_paths();
    tls.merge(raftmq_broker::config::TlsPaths {
        cert: args.tls_cert.clone(),
        key: args.tls_key.clone(),
        cluster_ca: args.tls_cluster_ca.clone(),
        client_ca: args.tls_client_ca.clone(),
    });
    config.tls = tls.into_files()?;
    if args.insecure {
        config.insecure = true;
    }
    if args.require_login {
        config.require_login = true;
    }
    if let Some(superusers) = &args.superusers {
        config.superusers = superusers.clone();
    }
    if let Some(n) = args.produce_quota_bytes {
        config.produce_quota_bytes = n;
    }
    if let Some(n) = args.fetch_quota_bytes {
        config.fetch_quota_bytes = n;
    }
    if let Some(n) = args.max_connections {
        config.max_connections = n;
    }
    if let Some(n) = args.max_connections_per_ip {
        config.max_connections_per_ip = n;
    }
    if let Ok(bootstrap) = std::env::var("RAFTMQ_BOOTSTRAP_USER") {
        config.bootstrap_user = Some(bootstrap.parse()?);
    }
    config.validate()?;
    Ok(config)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raftmq-broker: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line (see [`raftmq_proto::error::one_line`]).
fn one_line(e: &anyhow::Error) -> String {
    raftmq_proto::error::one_line(e.as_ref())
}

fn run(args: Args) -> anyhow::Result<()> {
    let log_format = if args.log_json {
        LogFormat::Json
    } else {
        args.log_format
    };
    if let Some(Sub::Dev {
        nodes,
        base_port,
        data_dir,
        durability,
        metrics_base_port,
        kafka_base_port,
        clean,
        segment_bytes,
        data_groups,
        racks,
    }) = &args.command
    {
        logging::init(log_format, None);
        return dev_cluster::run(dev_cluster::DevOptions {
            nodes: *nodes,
            base_port: *base_port,
            metrics_base_port: *metrics_base_port,
            kafka_base_port: *kafka_base_port,
            data_dir: data_dir.clone(),
            durability: *durability,
            clean: *clean,
            segment_bytes: *segment_bytes,
            data_groups: data_groups.unwrap_or(if *nodes > 1 { *nodes as u32 } else { 0 }),
            racks: *racks,
        });
    }
    let config = build_config(&args).context("invalid configuration")?;
    logging::init(log_format, Some(config.node_id.0));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async move {
        let data_dir = config.data_dir.clone();
        let node_id = config.node_id;
        let broker = Broker::start(config).await.with_context(|| {
            format!(
                "cannot start node {} with data dir {}",
                node_id.0,
                data_dir.display()
            )
        })?;
        println!(
            "raftmq-broker node {} listening on {} (data in {})",
            node_id.0,
            broker.local_addr,
            data_dir.display()
        );
        if let Some(addr) = broker.metrics_addr {
            println!("metrics: http://{addr}/metrics");
        }
        if let Some(addr) = broker.kafka_addr {
            println!("kafka protocol: {addr}");
        }
        let token = broker.shutdown_token();
        let security = broker.security();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hangup) = signal(SignalKind::hangup()) else {
                return;
            };
            while hangup.recv().await.is_some() {
                if let Some(tls) = security.tls() {
                    match tls.reload() {
                        Ok(()) => tracing::info!("SIGHUP: TLS certificates reloaded"),
                        Err(e) => tracing::error!(
                            error = %e,
                            "SIGHUP: TLS certificates not reloaded; the previous ones stay in use"
                        ),
                    }
                }
            }
        });
        let groups = broker.groups();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received: handing leadership over, then stopping");
            // A second signal stops at once.
            tokio::select! {
                _ = groups.hand_over(HAND_OVER_LIMIT) => {}
                _ = wait_for_signal() => {}
            }
            tracing::info!("shutting down");
            token.cancel();
        });
        let stopped = broker.wait().await;
        tracing::info!("stopped");
        stopped.map_err(|reason| anyhow::anyhow!(reason))
    })
}

/// How long a stopping broker waits for the groups it leads to take another
/// leader (a round trip and an election each, when a caught-up voter is up).
const HAND_OVER_LIMIT: std::time::Duration = std::time::Duration::from_secs(3);

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
