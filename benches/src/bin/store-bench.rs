//! `store-bench`: throughput of the commit log on the local disk, compared with fio.
//!
//! Measures (a) 64 KiB appends each followed by a sync, (b) 1 MiB group commits
//! (256 entries of 4 KiB, then one sync), (c) reads of the committed range through
//! `CommitLog::entries` (zero-copy views, CRC-checked). With `--fio` it also runs
//! fio's equivalents in the same directory and prints the ratios.
//!
//! Run in release, in a directory on the disk under test (not tmpfs):
//! `cargo run --release -p raftmq-benches --bin store-bench -- --fio`

use std::collections::VecDeque;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use raftmq_store::{CommitLog, Entry, EntryKind, LogConfig, LogIndex, SyncDone, SyncJob, Term};

#[derive(Parser, Debug)]
#[command(about = "Commit-log throughput benchmark")]
struct Args {
    /// Directory to create the temporary benchmark data in.
    #[arg(long, default_value = ".")]
    dir: String,
    /// Bytes written by each write test.
    #[arg(long, default_value_t = 1 << 30)]
    bytes: u64,
    /// Segment size.
    #[arg(long, default_value_t = 1 << 30)]
    segment_bytes: u64,
    /// Also run fio in the same directory and compare.
    #[arg(long)]
    fio: bool,
    /// Which tests to run: any of `a`, `b` (with `c`, its read test) and `p` (b').
    #[arg(long, default_value = "abp")]
    tests: String,
}

fn batch(next: &mut u64, count: usize, body: &Bytes) -> Vec<Entry> {
    (0..count)
        .map(|_| {
            let e = Entry {
                index: LogIndex(*next),
                term: Term(1),
                kind: EntryKind::Messages,
                body: body.clone(),
            };
            *next += 1;
            e
        })
        .collect()
}

struct Outcome {
    mb_per_s: f64,
    latency: Histogram<u64>,
}

/// Appends `total` bytes in batches of `count` entries of `body_len` bytes, syncing
/// after each batch.
fn write_test(dir: &Path, args: &Args, count: usize, body_len: usize) -> Result<Outcome> {
    let config = LogConfig {
        segment_bytes: args.segment_bytes,
        ..LogConfig::default()
    };
    let (mut log, _) = CommitLog::open(dir, config)?;
    let body = Bytes::from(vec![0xA5u8; body_len]);
    let batches = (args.bytes / (count * body_len) as u64).max(1);
    let mut next = 1u64;
    let prepared: Vec<Vec<Entry>> = (0..batches)
        .map(|_| batch(&mut next, count, &body))
        .collect();
    let mut latency = Histogram::<u64>::new(3)?;
    let started = Instant::now();
    for b in &prepared {
        let t = Instant::now();
        log.append(b)?;
        log.sync()?;
        latency.record(t.elapsed().as_micros() as u64)?;
    }
    let elapsed = started.elapsed();
    log.close()?;
    let bytes = batches as f64 * (count * body_len) as f64;
    Ok(Outcome {
        mb_per_s: bytes / elapsed.as_secs_f64() / 1e6,
        latency,
    })
}

/// Records a finished sync job and the latency of every batch it made durable.
fn settle(
    log: &mut CommitLog,
    done: SyncDone,
    waiting: &mut VecDeque<(LogIndex, Instant)>,
    latency: &mut Histogram<u64>,
) -> Result<()> {
    log.finish_sync(done);
    while let Some(&(index, started)) = waiting.front() {
        if index > log.synced_index() {
            break;
        }
        latency.record(started.elapsed().as_micros() as u64)?;
        waiting.pop_front();
    }
    Ok(())
}

/// Appends `total` bytes in 1 MiB batches (256 x 4 KiB) while a second thread runs
/// the log's pipelined sync jobs back to back (`begin_sync` / `SyncJob::run` /
/// `finish_sync`): a server's group commit. Latency is from the start of an append to
/// the moment the synced index covers it.
fn pipelined_test(dir: &Path, args: &Args) -> Result<Outcome> {
    let config = LogConfig {
        segment_bytes: args.segment_bytes,
        ..LogConfig::default()
    };
    let (mut log, _) = CommitLog::open(dir, config)?;
    let (count, body_len) = (256usize, 4096usize);
    let body = Bytes::from(vec![0x5Au8; body_len]);
    let batches = (args.bytes / (count * body_len) as u64).max(1);
    let mut next = 1u64;
    let prepared: Vec<Vec<Entry>> = (0..batches)
        .map(|_| batch(&mut next, count, &body))
        .collect();
    let (job_tx, job_rx) = mpsc::channel::<SyncJob>();
    let (done_tx, done_rx) = mpsc::channel();
    let syncer = std::thread::spawn(move || {
        for job in job_rx {
            if done_tx.send(job.run()).is_err() {
                break;
            }
        }
    });
    let mut latency = Histogram::<u64>::new(3)?;
    let mut waiting: VecDeque<(LogIndex, Instant)> = VecDeque::new();
    let mut in_flight = false;
    let started = Instant::now();
    for b in &prepared {
        let t = Instant::now();
        log.append(b)?;
        waiting.push_back((log.last_index(), t));
        if in_flight {
            if let Ok(done) = done_rx.try_recv() {
                settle(&mut log, done?, &mut waiting, &mut latency)?;
                in_flight = false;
            }
        }
        if !in_flight {
            if let Some(job) = log.begin_sync() {
                job_tx.send(job)?;
                in_flight = true;
            }
        }
    }
    while log.synced_index() < log.last_index() {
        if !in_flight {
            if let Some(job) = log.begin_sync() {
                job_tx.send(job)?;
            }
        }
        let done = done_rx.recv()??;
        settle(&mut log, done, &mut waiting, &mut latency)?;
        in_flight = false;
    }
    let elapsed = started.elapsed();
    drop(job_tx);
    let _ = syncer.join();
    log.close()?;
    let bytes = batches as f64 * (count * body_len) as f64;
    Ok(Outcome {
        mb_per_s: bytes / elapsed.as_secs_f64() / 1e6,
        latency,
    })
}

/// Reads the whole log written by the last write test, 1 MiB per call.
fn read_test(dir: &Path, args: &Args) -> Result<(f64, f64, f64)> {
    let config = LogConfig {
        segment_bytes: args.segment_bytes,
        ..LogConfig::default()
    };
    let (log, _) = CommitLog::open(dir, config)?;
    let mut best = (0.0f64, 0.0f64);
    let mut first = 0.0f64;
    for pass in 0..3 {
        let started = Instant::now();
        let mut bytes = 0usize;
        let mut entries = 0usize;
        let mut from = log.first_index();
        while from <= log.last_index() {
            let got = log.entries(from, 4096, 1 << 20)?;
            for e in &got {
                bytes += e.body.len();
            }
            entries += got.len();
            from = LogIndex(from.0 + got.len() as u64);
        }
        let secs = started.elapsed().as_secs_f64();
        let run = (bytes as f64 / secs / 1e9, entries as f64 / secs);
        if pass == 0 {
            first = run.0;
        }
        if run.0 > best.0 {
            best = run;
        }
    }
    Ok((first, best.0, best.1))
}

fn fio(dir: &Path, args: &[&str]) -> Result<f64> {
    let out = Command::new("fio")
        .args(args)
        .arg(format!("--directory={}", dir.display()))
        .arg("--output-format=json")
        .output()
        .context("running fio")?;
    if !out.status.success() {
        bail!("fio failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let bw = json["jobs"][0]["write"]["bw_bytes"]
        .as_f64()
        .context("fio output without write.bw_bytes")?;
    Ok(bw / 1e6)
}

fn print(name: &str, o: &Outcome) {
    println!(
        "{name:<38} {:>8.1} MB/s   latency p50 {:>6} us  p99 {:>6} us  max {:>6} us",
        o.mb_per_s,
        o.latency.value_at_quantile(0.5),
        o.latency.value_at_quantile(0.99),
        o.latency.max()
    );
}

fn main() -> Result<()> {
    let args = Args::parse();
    let base = tempfile::Builder::new()
        .prefix("store-bench-")
        .tempdir_in(&args.dir)
        .context("creating the benchmark directory")?;
    println!(
        "store-bench: {} MiB per write test, {} MiB segments, in {}",
        args.bytes >> 20,
        args.segment_bytes >> 20,
        base.path().display()
    );

    let run = |t: char| args.tests.contains(t);
    let mut a = None;
    let mut b = None;
    let mut p = None;
    if run('a') {
        let dir = base.path().join("a");
        let o = write_test(&dir, &args, 1, 64 * 1024)?;
        print("(a) 64 KiB append + sync", &o);
        std::fs::remove_dir_all(&dir)?;
        a = Some(o.mb_per_s);
    }
    if run('b') {
        let dir = base.path().join("b");
        let o = write_test(&dir, &args, 256, 4 * 1024)?;
        print("(b) 1 MiB group commit (256 x 4 KiB)", &o);
        b = Some(o.mb_per_s);
        let (cold, gb_per_s, entries_per_s) = read_test(&dir, &args)?;
        println!(
            "{:<38} {:>8.2} GB/s   ({:.2} M entries/s, CRC-checked zero-copy views; first pass {:.2} GB/s)",
            "(c) read committed range, 1 MiB calls",
            gb_per_s,
            entries_per_s / 1e6,
            cold
        );
        std::fs::remove_dir_all(&dir)?;
    }
    if run('p') {
        let dir = base.path().join("p");
        let o = pipelined_test(&dir, &args)?;
        print("(b') 1 MiB appends, pipelined syncs", &o);
        std::fs::remove_dir_all(&dir)?;
        p = Some(o.mb_per_s);
    }
    let pct =
        |x: Option<f64>, of: f64| x.map_or("-".to_string(), |x| format!("{:.0}%", 100.0 * x / of));

    if args.fio {
        let size = format!("--size={}", args.bytes);
        let fio_dir = base.path().join("fio");
        std::fs::create_dir_all(&fio_dir)?;
        let fresh = || -> Result<()> {
            let _ = std::fs::remove_dir_all(&fio_dir);
            std::fs::create_dir_all(&fio_dir)?;
            Ok(())
        };
        if run('a') {
            fresh()?;
            let fa = fio(
                &fio_dir,
                &["--name=w", "--rw=write", "--bs=64k", &size, "--fdatasync=1"],
            )?;
            println!(
                "fio 64k write, fdatasync=1:              {fa:>8.1} MB/s   store (a) = {}",
                pct(a, fa)
            );
        }
        if run('b') || run('p') {
            fresh()?;
            let fb = fio(
                &fio_dir,
                &["--name=w", "--rw=write", "--bs=1m", &size, "--end_fsync=1"],
            )?;
            println!(
                "fio 1m write, end_fsync=1:              {fb:>8.1} MB/s   store (b') = {}, (b) = {}",
                pct(p, fb),
                pct(b, fb)
            );
        }
        if run('b') {
            fresh()?;
            let fc = fio(
                &fio_dir,
                &["--name=w", "--rw=write", "--bs=1m", &size, "--fdatasync=1"],
            )?;
            println!(
                "fio 1m write, fdatasync=1:              {fc:>8.1} MB/s   store (b) = {}",
                pct(b, fc)
            );
        }
        let _ = std::fs::remove_dir_all(&fio_dir);
    }
    Ok(())
}
