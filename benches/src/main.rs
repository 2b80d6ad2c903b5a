//! `raftmq-bench`: throughput and latency of a raftmq cluster, measured the way a
//! user of the client library sees it.
//!
//! Modes:
//! - `produce`: producers send `--count` messages (or for `--duration`), each keeping
//!   at most `--window` messages unacknowledged; latency is send → acknowledgement.
//!   With `--rate` the load is open-loop: each message has a scheduled send time and
//!   its latency is measured from that time, so a stall is not hidden (no coordinated
//!   omission).
//! - `consume`: loads `--count` messages untimed, then times consumers reading them.
//! - `e2e`: producers and consumers at once; latency is publish → delivery (the send
//!   instant travels in the first 8 bytes of each value).
//! - `sync`: one message in flight: per-message acknowledgement latency.
//!
//! Every result states the CPU time of the client and of the brokers per message
//! (from /proc), which on a small shared machine is the fairest single number.

mod cluster;
mod cpu;
mod kafka;
mod report;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use raftmq_client::{Acks, Admin, Client, Compression, Consumer, Message, Partitioner, Producer};

use crate::report::{Report, RunConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Produce,
    Consume,
    E2e,
    Sync,
    /// Reads of replicated state, one at a time per reader (`--consumers`
    /// readers): `ListOffsets` (latest) and `Metadata` in turn, to the node
    /// `--read-from` names; `--count` requests in all.
    Reads,
}

/// Which front door of the brokers the clients use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Protocol {
    /// raftmq's own protocol and client.
    Native,
    /// The Kafka port, with librdkafka (`--mode produce` only).
    Kafka,
}

/// How each batch is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum CompressionArg {
    None,
    Lz4,
    Zstd,
}

/// How `--protocol kafka` hands messages to librdkafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum KafkaSendArg {
    /// `rd_kafka_produce_batch`, many messages per call.
    Batch,
    /// `rd_kafka_producev`, one message per call.
    Single,
}

/// What message values hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum PayloadArg {
    /// The same byte repeated (compresses to almost nothing: not for compression figures).
    Fill,
    /// Generated JSON log lines, 512 distinct ones cycled.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum ReadFrom {
    Leader,
    Follower,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum AcksArg {
    Quorum,
    Leader,
}

/// How the producers choose the queue of each message (the benchmark's messages
/// have no key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
enum PartitionerArg {
    /// One message to each queue in turn.
    RoundRobin,
    /// `--sticky-bytes` to a queue, then the next (`Partitioner::Sticky`, the
    /// producer's default).
    Sticky,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum DurabilityArg {
    Fsync,
    Async,
}

/// Throughput and latency benchmark for raftmq.
#[derive(Debug, Parser, Clone)]
#[command(name = "raftmq-bench", version, about)]
struct Args {
    /// What to measure.
    #[arg(long, value_enum, default_value = "produce")]
    mode: Mode,
    /// The protocol the clients speak: native, or kafka (a librdkafka producer
    /// through the brokers' Kafka port; `--mode produce` only).
    #[arg(long, value_enum, default_value = "native")]
    protocol: Protocol,
    /// Kafka addresses of the brokers of `--brokers` (HOST:PORT,...), for
    /// `--protocol kafka` (a `--local-cluster` opens them itself).
    #[arg(long)]
    kafka_brokers: Option<String>,
    /// Brokers of a running cluster (HOST:PORT,...).
    #[arg(long, conflicts_with = "local_cluster")]
    brokers: Option<String>,
    /// Start N raftmq-broker processes of this build on loopback in a temporary
    /// directory, and stop them at the end.
    #[arg(long)]
    local_cluster: Option<u64>,
    /// TLS everywhere: a `--local-cluster` gets certificates made for the run (TLS
    /// on its ports and between its nodes); with `--brokers`, give `--tls-ca`.
    #[arg(long)]
    tls: bool,
    /// The cluster CA of `--brokers` that run TLS (PEM).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// Durability of a `--local-cluster`.
    #[arg(long, value_enum, default_value = "fsync")]
    durability: DurabilityArg,
    /// PIDs of the brokers of `--brokers`, to include their CPU time.
    #[arg(long, value_delimiter = ',')]
    server_pids: Vec<u32>,
    /// Topic (created if missing).
    #[arg(long, default_value = "bench")]
    topic: String,
    /// Queues of the topic when created.
    #[arg(long, default_value_t = 1)]
    queues: u32,
    #[arg(long, default_value_t = 1)]
    producers: u32,
    #[arg(long, default_value_t = 1)]
    consumers: u32,
    /// Bytes per message value.
    #[arg(long, default_value_t = 100)]
    message_size: usize,
    /// What message values hold.
    #[arg(long, value_enum, default_value = "fill")]
    payload: PayloadArg,
    /// Batch compression of the producers (native protocol: raftmq's LZ4 or
    /// Zstandard batches; kafka: librdkafka's `compression.type`).
    #[arg(long, value_enum, default_value = "none")]
    compression: CompressionArg,
    /// Messages in all (split over producers).
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// Run for this many seconds instead of `--count` (produce and e2e).
    #[arg(long)]
    duration: Option<f64>,
    /// Largest batch the producer builds.
    #[arg(long, default_value_t = 256 * 1024)]
    batch_bytes: usize,
    /// Producer linger (ms).
    #[arg(long, default_value_t = 1.0)]
    linger_ms: f64,
    #[arg(long, value_enum, default_value = "quorum")]
    acks: AcksArg,
    /// How producers spread messages over the queues.
    #[arg(long, value_enum, default_value = "sticky")]
    partitioner: PartitionerArg,
    /// `--partitioner sticky`: bytes to one queue before the next.
    #[arg(long, default_value_t = 64 * 1024)]
    sticky_bytes: usize,
    /// Messages in flight per producer, each with its own acknowledgement.
    #[arg(long, default_value_t = 65_536)]
    window: usize,
    /// Open loop: messages per second in all.
    #[arg(long)]
    rate: Option<u64>,
    /// `--protocol kafka`: hand messages to librdkafka in batches
    /// (`rd_kafka_produce_batch`) or one by one (`rd_kafka_producev`).
    #[arg(long, value_enum, default_value = "batch")]
    kafka_send: KafkaSendArg,
    /// Produce requests in flight per queue.
    #[arg(long, default_value_t = 8)]
    max_in_flight: usize,
    /// Messages produced untimed before the measured run (connections, leader,
    /// page cache and allocator warm), as the peers' harness does.
    #[arg(long, default_value_t = 50_000)]
    warmup: u64,
    /// Print one JSON record instead of text.
    #[arg(long)]
    json: bool,
    /// `--mode reads`: ask the leader or a follower.
    #[arg(long, value_enum, default_value = "leader")]
    read_from: ReadFrom,
    /// Extra flag for every broker of a `--local-cluster` (repeat for several),
    /// e.g. `--broker-arg=--local-reads`.
    #[arg(long, allow_hyphen_values = true)]
    broker_arg: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.mode == Mode::Sync {
        // One message in flight: lingering would only add to every latency.
        args.window = 1;
        args.linger_ms = 0.0;
        if args.count == 1_000_000 {
            args.count = 5_000;
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if args.protocol == Protocol::Kafka && args.mode != Mode::Produce {
        bail!("--protocol kafka measures --mode produce only");
    }
    let mut cluster = None;
    let (bootstrap, server_pids) = match (&args.brokers, args.local_cluster) {
        (Some(b), _) => (
            b.split(',').map(str::to_string).collect::<Vec<_>>(),
            args.server_pids.clone(),
        ),
        (None, Some(n)) => {
            let c = cluster::LocalCluster::start(
                n,
                args.durability == DurabilityArg::Async,
                args.protocol == Protocol::Kafka,
                args.tls,
                &args.broker_arg,
            )?;
            if args.tls {
                args.tls_ca = c.tls_ca();
            }
            let out = (c.addrs(), c.pids());
            if args.protocol == Protocol::Kafka {
                args.kafka_brokers = Some(c.kafka_addrs().join(","));
            }
            cluster = Some(c);
            out
        }
        (None, None) => (vec!["127.0.0.1:7070".to_string()], args.server_pids.clone()),
    };
    if args.protocol == Protocol::Kafka && args.kafka_brokers.is_none() {
        bail!("--protocol kafka with --brokers needs --kafka-brokers");
    }
    let result = runtime.block_on(run(args.clone(), bootstrap, server_pids));
    drop(cluster);
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        report.print();
    }
    Ok(())
}

async fn connect(bootstrap: &[String], tls_ca: Option<&std::path::Path>) -> anyhow::Result<Client> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let config = raftmq_client::ClientConfig {
        tls: tls_ca.map(|ca| raftmq_client::ClientTls {
            ca: ca.to_owned(),
            identity: None,
        }),
        ..raftmq_client::ClientConfig::default()
    };
    loop {
        match Client::connect_with(bootstrap, config.clone()).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() < deadline => {
                tracing_like_note(&format!("waiting for the cluster: {e}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => bail!("cannot connect to {bootstrap:?}: {e}"),
        }
    }
}

fn tracing_like_note(msg: &str) {
    eprintln!("raftmq-bench: {msg}");
}

async fn ensure_topic(client: &Client, topic: &str, queues: u32) -> anyhow::Result<()> {
    let admin = Admin::new(client);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if admin.describe_topic(topic).await.is_ok() {
            return Ok(());
        }
        match admin.create_topic(topic, queues).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                tracing_like_note(&format!("creating topic: {e}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => bail!("cannot create topic {topic}: {e}"),
        }
    }
}

async fn run(args: Args, bootstrap: Vec<String>, server_pids: Vec<u32>) -> anyhow::Result<Report> {
    let client = connect(&bootstrap, args.tls_ca.as_deref()).await?;
    ensure_topic(&client, &args.topic, args.queues).await?;
    let queues = client.topic_queues(&args.topic).await?;
    let epoch = Instant::now();
    if args.mode == Mode::Consume {
        // Load the data first, untimed.
        let loader = Args {
            rate: None,
            window: 65_536,
            ..args.clone()
        };
        produce_phase(&loader, &bootstrap, epoch, None).await?;
    }
    if args.warmup > 0 && args.mode != Mode::Consume && args.mode != Mode::Reads {
        let warmup = Args {
            count: args.warmup,
            rate: None,
            duration: None,
            window: args.window.max(1024),
            topic: format!("{}-warmup", args.topic),
            ..args.clone()
        };
        ensure_topic(&client, &warmup.topic, 1).await?;
        produce_any(&warmup, &bootstrap, 1, epoch, None).await?;
    }
    let cpu_before = cpu::sample(&server_pids);
    let started = Instant::now();
    let progress = Arc::new(AtomicU64::new(0));
    let ticker = report::progress_ticker(progress.clone(), args.count, args.json);
    let (messages, latency) = match args.mode {
        Mode::Produce | Mode::Sync => {
            produce_any(&args, &bootstrap, queues, epoch, Some(progress.clone())).await?
        }
        Mode::Reads => reads_phase(&args, &client, &progress).await?,
        Mode::Consume => {
            let expected = Arc::new(AtomicU64::new(args.count));
            consume_phase(&args, &bootstrap, queues, expected, epoch, &progress, false).await?
        }
        Mode::E2e => {
            // With --duration the count is known once the producers stop: until
            // then the consumers read on.
            let expected = Arc::new(AtomicU64::new(if args.duration.is_some() {
                u64::MAX
            } else {
                args.count
            }));
            let consumers = {
                let args = args.clone();
                let bootstrap = bootstrap.clone();
                let progress = progress.clone();
                let expected = expected.clone();
                tokio::spawn(async move {
                    consume_phase(&args, &bootstrap, queues, expected, epoch, &progress, true).await
                })
            };
            let (produced, _) = produce_phase(&args, &bootstrap, epoch, None).await?;
            expected.store(produced, Ordering::Relaxed);
            let (total, latency) = match consumers.await? {
                Ok(n) => n,
                Err(e) => return Err(e),
            };
            (total, latency)
        }
    };
    let elapsed = started.elapsed();
    ticker.abort();
    let cpu_after = cpu::sample(&server_pids);
    let config = RunConfig {
        mode: format!("{:?}", args.mode).to_lowercase(),
        protocol: format!("{:?}", args.protocol).to_lowercase(),
        kafka_send: (args.protocol == Protocol::Kafka)
            .then(|| format!("{:?}", args.kafka_send).to_lowercase()),
        nodes: args.local_cluster.unwrap_or(bootstrap.len() as u64),
        durability: format!("{:?}", args.durability).to_lowercase(),
        acks: format!("{:?}", args.acks).to_lowercase(),
        topic_queues: queues,
        producers: args.producers,
        consumers: args.consumers,
        message_size: args.message_size,
        payload: format!("{:?}", args.payload).to_lowercase(),
        compression: format!("{:?}", args.compression).to_lowercase(),
        batch_bytes: args.batch_bytes,
        linger_ms: args.linger_ms,
        window: args.window,
        rate: args.rate,
    };
    Ok(Report::new(
        config,
        messages,
        elapsed,
        latency.as_ref(),
        &cpu_before,
        &cpu_after,
        &server_pids,
    ))
}

/// Runs the producers over the protocol `args` names.
async fn produce_any(
    args: &Args,
    bootstrap: &[String],
    queues: u32,
    epoch: Instant,
    progress: Option<Arc<AtomicU64>>,
) -> anyhow::Result<(u64, Option<Histogram<u64>>)> {
    match args.protocol {
        Protocol::Native => produce_phase(args, bootstrap, epoch, progress).await,
        Protocol::Kafka => {
            let args = args.clone();
            let kafka = args.kafka_brokers.clone().context("Kafka addresses")?;
            tokio::task::spawn_blocking(move || {
                kafka::produce_phase(&args, &kafka, queues, progress)
            })
            .await?
        }
    }
}

/// Runs the producers; returns messages acknowledged and the latency histogram (µs).
async fn produce_phase(
    args: &Args,
    bootstrap: &[String],
    epoch: Instant,
    progress: Option<Arc<AtomicU64>>,
) -> anyhow::Result<(u64, Option<Histogram<u64>>)> {
    let per_producer = args.count / u64::from(args.producers.max(1));
    let deadline = args
        .duration
        .map(|d| Instant::now() + Duration::from_secs_f64(d));
    let mut tasks = Vec::new();
    for p in 0..args.producers.max(1) {
        let client = connect(bootstrap, args.tls_ca.as_deref()).await?;
        let producer = Producer::builder(&client)
            .linger(Duration::from_secs_f64(args.linger_ms / 1000.0))
            .max_batch_bytes(args.batch_bytes)
            .max_in_flight_per_queue(args.max_in_flight)
            .acks(match args.acks {
                AcksArg::Quorum => Acks::Quorum,
                AcksArg::Leader => Acks::Leader,
            })
            .partitioner(match args.partitioner {
                PartitionerArg::RoundRobin => Partitioner::RoundRobin,
                PartitionerArg::Sticky => Partitioner::Sticky,
            })
            .sticky_bytes(args.sticky_bytes)
            .compression(match args.compression {
                CompressionArg::None => Compression::None,
                CompressionArg::Lz4 => Compression::Lz4,
                CompressionArg::Zstd => Compression::Zstd,
            })
            .build()
            .await
            .context("producer")?;
        let args = args.clone();
        let progress = progress.clone();
        let rate_per_producer = args
            .rate
            .map(|r| r as f64 / f64::from(args.producers.max(1)));
        tasks.push(tokio::spawn(async move {
            produce_loop(
                producer,
                &args,
                per_producer,
                deadline,
                rate_per_producer,
                epoch,
                progress,
                p,
            )
            .await
        }));
    }
    let mut total = 0;
    let mut histogram = new_histogram();
    for t in tasks {
        let (n, h) = t.await??;
        total += n;
        histogram.add(h)?;
    }
    Ok((total, Some(histogram)))
}

/// `--mode reads`: each reader sends one read at a time; latency per request (µs).
async fn reads_phase(
    args: &Args,
    client: &Client,
    progress: &Arc<AtomicU64>,
) -> anyhow::Result<(u64, Option<Histogram<u64>>)> {
    use raftmq_client::pb::{self, request, response};
    use raftmq_client::Target;
    let status = Admin::new(client).cluster_status().await?;
    let leader = status
        .iter()
        .find(|n| n.status.as_ref().is_ok_and(|s| s.role == "leader"))
        .map(|n| n.node_id)
        .context("no leader")?;
    let node = match args.read_from {
        ReadFrom::Leader => leader,
        ReadFrom::Follower => status
            .iter()
            .map(|n| n.node_id)
            .find(|&id| id != leader)
            .context("no follower")?,
    };
    let address = client
        .metadata()
        .nodes
        .get(&node)
        .cloned()
        .context("node address")?;
    let readers = args.consumers.max(1);
    let per_reader = args.count / u64::from(readers);
    let mut tasks = Vec::new();
    for r in 0..readers {
        let client = client.clone();
        let topic = args.topic.clone();
        let address = address.clone();
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            let mut histogram = new_histogram();
            for i in 0..per_reader {
                let body = if (i + u64::from(r)) % 2 == 0 {
                    request::Body::ListOffsets(pb::ListOffsetsRequest {
                        topic: topic.clone(),
                        queue: 0,
                        spec: pb::OffsetSpec::Latest as i32,
                        timestamp_ms: 0,
                    })
                } else {
                    request::Body::Metadata(pb::MetadataRequest {
                        topics: vec![topic.clone()],
                        ..Default::default()
                    })
                };
                let started = Instant::now();
                match client
                    .request(Target::Address(address.clone()), body)
                    .await?
                {
                    response::Body::ListOffsets(_) | response::Body::Metadata(_) => {}
                    other => bail!("unexpected answer {}", other.api_key()),
                }
                histogram.record(started.elapsed().as_micros().max(1) as u64)?;
                progress.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(histogram)
        }));
    }
    let mut histogram = new_histogram();
    for t in tasks {
        histogram.add(t.await??)?;
    }
    Ok((per_reader * u64::from(readers), Some(histogram)))
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// A clock for the produce loop: one read serves up to `uses_max` time stamps, and
/// [`Clock::invalidate`] forces a fresh read (called whenever the loop had to wait,
/// so a stamp is never older than a run of `uses_max` loop turns of pure CPU work,
/// a few µs). Latencies are in µs; reading the clock twice per message cost more
/// than the rest of the loop.
struct Clock {
    now: Instant,
    uses_left: u32,
    uses_max: u32,
}

impl Clock {
    fn new(uses_max: u32) -> Self {
        Clock {
            now: Instant::now(),
            uses_left: 0,
            uses_max: uses_max.max(1),
        }
    }

    fn now(&mut self) -> Instant {
        if self.uses_left == 0 {
            self.now = Instant::now();
            self.uses_left = self.uses_max;
        }
        self.uses_left -= 1;
        self.now
    }

    fn invalidate(&mut self) {
        self.uses_left = 0;
    }
}

/// Awaits `fut`; `true` with the output if it had to wait (was not ready at once).
async fn waited<F: std::future::Future>(fut: F) -> (F::Output, bool) {
    let mut fut = std::pin::pin!(fut);
    let first = fut
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
    match first {
        std::task::Poll::Ready(v) => (v, false),
        std::task::Poll::Pending => (fut.await, true),
    }
}

/// Records latencies into a histogram, equal values in a row at once.
struct Recorder {
    histogram: Histogram<u64>,
    value_us: u64,
    count: u64,
}

impl Recorder {
    fn new() -> Self {
        Recorder {
            histogram: new_histogram(),
            value_us: 0,
            count: 0,
        }
    }

    fn record(&mut self, value_us: u64) {
        let value_us = value_us.max(1);
        if value_us != self.value_us {
            self.flush();
            self.value_us = value_us;
        }
        self.count += 1;
    }

    fn flush(&mut self) {
        if self.count > 0 {
            self.histogram
                .saturating_record_n(self.value_us, std::mem::take(&mut self.count));
        }
    }

    fn finish(mut self) -> Histogram<u64> {
        self.flush();
        self.histogram
    }
}

/// Message values: a payload with the send stamp in its first 8 bytes, written
/// back to back into shared chunks and handed out as `Bytes` slices (no allocation
/// per message). With `--payload json` the payloads cycle through a pool of
/// generated JSON log lines (what compression is measured on, not random bytes).
struct Values {
    payloads: Vec<Vec<u8>>,
    next_payload: usize,
    chunk: bytes::BytesMut,
}

impl Values {
    /// Values per chunk.
    const PER_CHUNK: usize = 1024;
    /// Distinct JSON lines in the pool.
    const JSON_POOL: usize = 512;

    fn new(message_size: usize, payload: PayloadArg) -> Self {
        let size = message_size.max(8);
        let payloads = match payload {
            PayloadArg::Fill => vec![vec![b'x'; size]],
            PayloadArg::Json => (0..Self::JSON_POOL as u64)
                .map(|i| json_log_line(i, size))
                .collect(),
        };
        Values {
            payloads,
            next_payload: 0,
            chunk: bytes::BytesMut::new(),
        }
    }

    fn next(&mut self, stamp: u64) -> bytes::Bytes {
        let payload = &self.payloads[self.next_payload];
        self.next_payload = (self.next_payload + 1) % self.payloads.len();
        let size = payload.len();
        if self.chunk.capacity() < size {
            self.chunk = bytes::BytesMut::with_capacity(size * Self::PER_CHUNK);
        }
        self.chunk.extend_from_slice(&stamp.to_le_bytes());
        self.chunk.extend_from_slice(&payload[8..]);
        self.chunk.split().freeze()
    }
}

/// A JSON log line of exactly `size` bytes (at least its fixed fields), varied by
/// `seed` the way a service's logs vary: timestamps, ids, levels, amounts.
fn json_log_line(seed: u64, size: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    const LEVELS: [&str; 4] = ["INFO", "INFO", "WARN", "DEBUG"];
    const SERVICES: [&str; 5] = ["checkout", "payments", "search", "inventory", "auth"];
    const EVENTS: [&str; 5] = [
        "order paid",
        "cart updated",
        "payment authorised",
        "stock reserved",
        "session refreshed",
    ];
    let mut line = format!(
        "{{\"ts\":\"2026-12-06T{:02}:{:02}:{:02}.{:03}Z\",\"level\":\"{}\",\"service\":\"{}\",\"host\":\"web-{:02}\",\"trace_id\":\"{:016x}{:016x}\",\"user_id\":{},\"order_id\":{},\"amount_cents\":{},\"currency\":\"EUR\",\"event\":\"{}\",\"latency_ms\":{},\"http\":{{\"method\":\"POST\",\"path\":\"/api/v1/orders/{}\",\"status\":{}}}",
        next() % 24,
        next() % 60,
        next() % 60,
        next() % 1000,
        LEVELS[(next() % 4) as usize],
        SERVICES[(next() % 5) as usize],
        next() % 32,
        next(),
        next(),
        next() % 1_000_000,
        next() % 10_000_000,
        next() % 100_000,
        EVENTS[(next() % 5) as usize],
        next() % 2_000,
        next() % 10_000_000,
        [200, 200, 201, 404, 500][(next() % 5) as usize],
    );
    // Fill to size with more fields of the same kind, then close the object.
    let mut i = 0;
    while line.len() + 2 < size {
        line.push_str(&format!(
            ",\"item_{i}\":{{\"sku\":\"SKU-{:06}\",\"qty\":{}}}",
            next() % 1_000_000,
            next() % 5 + 1
        ));
        i += 1;
    }
    line.truncate(size.saturating_sub(1));
    line.push('}');
    let mut bytes = line.into_bytes();
    bytes.resize(size, b' ');
    bytes
}

#[allow(clippy::too_many_arguments)]
async fn produce_loop(
    producer: Producer,
    args: &Args,
    count: u64,
    deadline: Option<Instant>,
    rate: Option<f64>,
    epoch: Instant,
    progress: Option<Arc<AtomicU64>>,
    producer_index: u32,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let mut recorder = Recorder::new();
    let mut in_flight: std::collections::VecDeque<(Instant, raftmq_client::DeliveryFuture)> =
        std::collections::VecDeque::with_capacity(args.window.min(1 << 20));
    let mut values = Values::new(args.message_size, args.payload);
    // Open loop schedules every message: read the clock each time.
    let mut clock = Clock::new(if rate.is_some() { 1 } else { 16 });
    let started = Instant::now();
    let mut sent = 0u64;
    let mut acked = 0u64;
    let mut pending_progress = 0u64;
    let timer = tokio::time::sleep_until(started.into());
    tokio::pin!(timer);
    loop {
        let more = match deadline {
            Some(d) => clock.now() < d,
            None => sent < count,
        };
        if !more && in_flight.is_empty() {
            break;
        }
        if more && in_flight.len() < args.window {
            // Open loop: the message's intended send time.
            let scheduled = match rate {
                Some(r) => {
                    let at = started + Duration::from_secs_f64(sent as f64 / r);
                    let now = Instant::now();
                    if at > now {
                        // Collect acknowledgements while waiting for the next send
                        // time, but never past it: the schedule is the load, whatever
                        // the acknowledgements do. Those already in are taken without
                        // a wait (a batch's messages are acknowledged together), and
                        // one timer serves every wait: a timer armed and dropped per
                        // acknowledgement cost the generator enough to fall behind
                        // its schedule at a million messages a second.
                        let mut collected = false;
                        while let Some((t0, fut)) = in_flight.front_mut() {
                            let std::task::Poll::Ready(result) = std::future::Future::poll(
                                std::pin::Pin::new(fut),
                                &mut std::task::Context::from_waker(std::task::Waker::noop()),
                            ) else {
                                break;
                            };
                            recorder.record(now.saturating_duration_since(*t0).as_micros() as u64);
                            in_flight.pop_front();
                            result.context("produce")?;
                            acked += 1;
                            collected = true;
                        }
                        if collected {
                            continue;
                        }
                        timer.as_mut().reset(at.into());
                        let Some((t0, fut)) = in_flight.front_mut() else {
                            timer.as_mut().await;
                            continue;
                        };
                        let t0 = *t0;
                        tokio::select! {
                            result = fut => {
                                in_flight.pop_front();
                                result.context("produce")?;
                                recorder.record(t0.elapsed().as_micros() as u64);
                                acked += 1;
                            }
                            _ = timer.as_mut() => {}
                        }
                        continue;
                    }
                    at
                }
                None => clock.now(),
            };
            let stamp = scheduled.duration_since(epoch).as_micros() as u64;
            let message = Message::new(args.topic.clone(), values.next(stamp));
            let (fut, blocked) = waited(producer.send(message)).await;
            if blocked {
                clock.invalidate();
            }
            in_flight.push_back((scheduled, fut.context("send")?));
            sent += 1;
            continue;
        }
        let (t0, fut) = in_flight.pop_front().expect("not empty");
        let (result, blocked) = waited(fut).await;
        result.with_context(|| format!("producer {producer_index}: produce failed"))?;
        if blocked {
            clock.invalidate();
        }
        recorder.record(clock.now().saturating_duration_since(t0).as_micros() as u64);
        acked += 1;
        pending_progress += 1;
        if pending_progress >= 1024 {
            if let Some(p) = &progress {
                p.fetch_add(pending_progress, Ordering::Relaxed);
            }
            pending_progress = 0;
        }
    }
    producer.close().await;
    Ok((acked, recorder.finish()))
}

/// Consumers split the queues; returns messages read and (e2e) delivery latency.
async fn consume_phase(
    args: &Args,
    bootstrap: &[String],
    queues: u32,
    expected: Arc<AtomicU64>,
    epoch: Instant,
    progress: &Arc<AtomicU64>,
    measure_latency: bool,
) -> anyhow::Result<(u64, Option<Histogram<u64>>)> {
    let consumers = args.consumers.clamp(1, queues);
    let read = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..consumers {
        let client = connect(bootstrap, args.tls_ca.as_deref()).await?;
        let mine: Vec<u32> = (0..queues).filter(|q| q % consumers == c).collect();
        let topic = args.topic.clone();
        let read = read.clone();
        let progress = progress.clone();
        let expected = expected.clone();
        let deadline =
            Instant::now() + Duration::from_secs_f64(args.duration.unwrap_or(300.0) + 60.0);
        tasks.push(tokio::spawn(async move {
            let mut consumer = Consumer::new(&client);
            consumer.assign(&topic, &mine).await?;
            for q in &mine {
                consumer.seek(*q, raftmq_client::SeekTo::Earliest).await?;
            }
            let mut histogram = new_histogram();
            while read.load(Ordering::Relaxed) < expected.load(Ordering::Relaxed)
                && Instant::now() < deadline
            {
                let messages = consumer.poll().await?;
                if measure_latency {
                    let now = epoch.elapsed().as_micros() as u64;
                    for m in &messages {
                        if m.value.len() >= 8 {
                            let sent = u64::from_le_bytes(m.value[..8].try_into().expect("8"));
                            histogram.saturating_record(now.saturating_sub(sent).max(1));
                        }
                    }
                }
                let n = messages.len() as u64;
                read.fetch_add(n, Ordering::Relaxed);
                progress.fetch_add(n, Ordering::Relaxed);
            }
            anyhow::Ok(histogram)
        }));
    }
    let mut histogram = new_histogram();
    for t in tasks {
        histogram.add(t.await??)?;
    }
    let total = read.load(Ordering::Relaxed);
    Ok((total, measure_latency.then_some(histogram)))
}
