//! A Jepsen-style fault-injection harness over real `raftmq-broker` processes.
//!
//! - [`rng`]: a seeded generator, so that every schedule replays from its seed;
//! - [`proxy`]: a controllable TCP proxy on each directed peer link;
//! - [`cluster`]: 3 or 5 broker processes wired through those proxies, with
//!   process faults (SIGKILL, SIGSTOP/SIGCONT, restart), all stopped on drop;
//! - [`client`]: a leader-following request router that never goes through a proxy;
//! - [`workload`]: idempotent producers and consumers recording a history;
//! - [`nemesis`]: fault schedules (partitions, process faults) and their application;
//! - [`disk`]: damage to a stopped node's commit log, and a small filesystem;
//! - [`checker`]: the history and the replicas against the safety properties;
//! - [`run`]: one run start to finish.
//!
//! See `docs/reliability.md` for what each fault and check means.

#![allow(dead_code)]

pub mod checker;
pub mod client;
pub mod cluster;
pub mod disk;
pub mod nemesis;
#[path = "../common/ports.rs"]
pub mod ports;
pub mod proxy;
pub mod rng;
pub mod run;
pub mod workload;

use std::time::Duration;

/// The seed for this run: `RAFTMQ_FAULT_SEED` when set, else from the clock.
/// Printed so that a failing run can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("RAFTMQ_FAULT_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("[{test}] seed {seed} (replay with RAFTMQ_FAULT_SEED={seed})");
    seed
}

/// How long the fault phase of a test lasts: `default` in CI, or
/// `RAFTMQ_SOAK_SECS` seconds when that is set.
pub fn fault_duration(default: Duration) -> Duration {
    std::env::var("RAFTMQ_SOAK_SECS")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(default, Duration::from_secs)
}

/// Tests in one binary share two cores: one cluster at a time keeps their timing
/// (elections, timeouts) close to what a real deployment sees.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// A scenario whose data groups keep quiescing and waking under faults: three data
/// groups; two producers pausing up to 1.5 s between batches and no offset
/// readers, so nothing else keeps the groups awake.
#[allow(dead_code)] // each test binary uses part of this module
pub fn quiescing_scenario(name: &'static str, profile: nemesis::Profile) -> run::Scenario {
    run::Scenario {
        name,
        cluster: cluster::ClusterOptions {
            extra_args: vec!["--data-groups".into(), "3".into()],
            ..cluster::ClusterOptions::default()
        },
        workload: workload::WorkloadConfig {
            producers: 2,
            pause_ms_max: 1500,
            offset_readers: 0,
            ..workload::WorkloadConfig::default()
        },
        profile,
        duration: fault_duration(Duration::from_secs(20)),
    }
}
