//! What a run measured, as text or as one JSON record.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cpu::{self, CpuSample};

/// The configuration of a run, reported with its results.
#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    pub mode: String,
    /// native or kafka.
    pub protocol: String,
    /// kafka: how messages are handed to librdkafka (batch or single).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka_send: Option<String>,
    pub nodes: u64,
    pub durability: String,
    pub acks: String,
    pub topic_queues: u32,
    pub producers: u32,
    pub consumers: u32,
    pub message_size: usize,
    /// fill or json.
    pub payload: String,
    /// none, lz4 or zstd.
    pub compression: String,
    pub batch_bytes: usize,
    pub linger_ms: f64,
    pub window: usize,
    pub rate: Option<u64>,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// The machine the run happened on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_kib: u64,
}

/// One run's results.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub config: RunConfig,
    pub machine: Machine,
    pub git_commit: Option<String>,
    pub messages: u64,
    pub seconds: f64,
    pub messages_per_second: f64,
    pub mb_per_second: f64,
    pub latency: Option<Latency>,
    pub client_cpu_seconds: f64,
    pub server_cpu_seconds: f64,
    pub cpu_us_per_message: f64,
    pub server_cpu_us_per_message: f64,
    pub server_rss_anon_kib_max: Option<u64>,
}

fn machine() -> Machine {
    let memory_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_kib,
    }
}

fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Report {
    /// Builds the report from raw measurements.
    pub fn new(
        config: RunConfig,
        messages: u64,
        elapsed: Duration,
        latency: Option<&Histogram<u64>>,
        before: &CpuSample,
        after: &CpuSample,
        server_pids: &[u32],
    ) -> Report {
        let seconds = elapsed.as_secs_f64();
        let client = after.client - before.client;
        let server: f64 = after
            .servers
            .iter()
            .map(|(pid, t)| t - before.servers.get(pid).copied().unwrap_or(*t))
            .sum();
        let per = |cpu: f64| {
            if messages == 0 {
                0.0
            } else {
                cpu * 1e6 / messages as f64
            }
        };
        let latency = latency.filter(|h| !h.is_empty()).map(|h| Latency {
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        });
        let rss = server_pids
            .iter()
            .filter_map(|p| cpu::rss_anon_kib(*p))
            .max();
        Report {
            machine: machine(),
            git_commit: git_commit(),
            messages,
            seconds,
            messages_per_second: messages as f64 / seconds,
            mb_per_second: messages as f64 * config.message_size as f64 / seconds / 1e6,
            latency,
            client_cpu_seconds: client,
            server_cpu_seconds: server,
            cpu_us_per_message: per(client + server),
            server_cpu_us_per_message: per(server),
            server_rss_anon_kib_max: rss,
            config,
        }
    }

    /// Human-readable lines.
    pub fn print(&self) {
        let c = &self.config;
        println!(
            "mode {}{} | {} node(s), durability {}, acks {} | {} B messages, {} producer(s), {} consumer(s), {} queue(s), window {}, batch {} B, linger {} ms{}",
            c.mode,
            c.kafka_send
                .as_ref()
                .map(|s| format!(" over kafka ({s} send)"))
                .unwrap_or_default(),
            c.nodes,
            c.durability,
            c.acks,
            c.message_size,
            c.producers,
            c.consumers,
            c.topic_queues,
            c.window,
            c.batch_bytes,
            c.linger_ms,
            c.rate.map(|r| format!(", open loop at {r} msg/s")).unwrap_or_default()
        );
        println!(
            "{} messages in {:.2} s: {:.0} msg/s, {:.1} MB/s",
            self.messages, self.seconds, self.messages_per_second, self.mb_per_second
        );
        if let Some(l) = &self.latency {
            println!(
                "latency µs: p50 {} p90 {} p99 {} p99.9 {} max {}",
                l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
            );
        }
        println!(
            "cpu: client {:.2} s, brokers {:.2} s: {:.2} µs/msg in all ({:.2} µs/msg brokers)",
            self.client_cpu_seconds,
            self.server_cpu_seconds,
            self.cpu_us_per_message,
            self.server_cpu_us_per_message
        );
        if let Some(rss) = self.server_rss_anon_kib_max {
            println!("broker RssAnon max: {} MiB", rss / 1024);
        }
    }
}

/// Prints progress once a second on a terminal (stderr), until aborted.
pub fn progress_ticker(
    done: Arc<AtomicU64>,
    total: u64,
    quiet: bool,
) -> tokio::task::JoinHandle<()> {
    let show = !quiet && std::io::stderr().is_terminal();
    tokio::spawn(async move {
        if !show {
            return;
        }
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} msgs {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            bar.set_position(done.load(Ordering::Relaxed));
        }
    })
}
