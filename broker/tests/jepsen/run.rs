//! One fault-injection run, start to finish: cluster, workload, schedule, heal,
//! convergence, final drains, checks, and a byte comparison of the stopped logs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::checker::{self, Report};
use super::client::Router;
use super::cluster::{Cluster, ClusterOptions};
use super::nemesis::{self, Profile};
use super::rng::Rng;
use super::workload::{self, Workload, WorkloadConfig};

/// Longest single request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for the healed cluster to agree.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long producers may keep retrying their batch in flight after the schedule.
pub const FINISH_GRACE: Duration = Duration::from_secs(45);

/// A run to make.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Printed with every line.
    pub name: &'static str,
    /// The cluster.
    pub cluster: ClusterOptions,
    /// The workload.
    pub workload: WorkloadConfig,
    /// Which faults.
    pub profile: Profile,
    /// About how long the fault phase lasts.
    pub duration: Duration,
}

/// What a run did and found.
#[derive(Debug)]
pub struct Outcome {
    /// The checks.
    pub report: Report,
    /// Faults applied.
    pub faults: usize,
    /// Wall time.
    pub elapsed: Duration,
    /// Retried client errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// Leader snapshots installed by followers (from the nodes' logs).
    pub snapshot_installs: usize,
}

/// Runs `scenario` with `seed` and returns its outcome; anomalies are in the report
/// (the caller asserts).
pub async fn run(scenario: Scenario, seed: u64) -> Outcome {
    let name = scenario.name;
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let mut steps = nemesis::schedule(
        scenario.profile,
        scenario.cluster.nodes,
        scenario.duration,
        &mut rng.fork(1),
    );
    if scenario
        .cluster
        .extra_args
        .iter()
        .any(|a| a == "--data-groups")
    {
        // A node still placed in a data group cannot be removed (it must be
        // decommissioned first, which this nemesis does not do): kill it instead.
        for step in &mut steps {
            if let nemesis::Fault::Replace(target) = step.fault {
                step.fault = nemesis::Fault::Kill(target);
            }
        }
    }
    nemesis::print(name, &steps);

    let mut cluster = Cluster::start(scenario.cluster.clone()).await;
    let router = Arc::new(Router::new(&cluster, REQUEST_TIMEOUT).await);
    let setup_deadline = Instant::now() + Duration::from_secs(30);
    router
        .create_topic(
            &scenario.workload.topic,
            scenario.workload.queues,
            setup_deadline,
        )
        .await;
    let hard_deadline = Instant::now() + scenario.duration * 2 + FINISH_GRACE;
    let workload = Workload::start(
        router.clone(),
        scenario.workload.clone(),
        &mut rng.fork(2),
        hard_deadline,
    );

    let faults = nemesis::run(name, &steps, &mut cluster, &router).await;
    cluster.heal_all().await;
    let membership_problems = nemesis::restore_voters(&cluster, &router).await;
    // A healed cluster takes a moment to elect; let the workload see it working.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let history = workload.stop().await;
    let (mut report, _) = finish(name, &mut cluster, &router, &scenario, &history).await;
    report.anomalies.extend(membership_problems);
    if !report.anomalies.is_empty() {
        cluster.keep_files();
    }
    let snapshot_installs = cluster
        .ids()
        .iter()
        .map(|&id| {
            cluster
                .log_text(id)
                .matches("installed the leader's snapshot")
                .count()
        })
        .sum();
    let outcome = Outcome {
        report,
        faults,
        elapsed: started.elapsed(),
        errors: history.errors(),
        snapshot_installs,
    };
    eprintln!(
        "[{name}] seed {seed}: {} faults in {:.1}s; {}; snapshots installed {}; \
         retried errors {:?}",
        outcome.faults,
        outcome.elapsed.as_secs_f64(),
        outcome.report.summary(),
        outcome.snapshot_installs,
        outcome.errors
    );
    for a in &outcome.report.anomalies {
        eprintln!("[{name}] ANOMALY: {a}");
    }
    outcome
}

/// After healing: waits for convergence, drains every node, checks, stops the
/// nodes and compares their logs byte for byte. Returns the report and the commit
/// index the replicas agreed on.
pub async fn finish(
    name: &str,
    cluster: &mut Cluster,
    router: &Router,
    scenario: &Scenario,
    history: &workload::History,
) -> (Report, u64) {
    let ids = cluster.ids();
    let statuses = match router.wait_converged(&ids, CONVERGE_TIMEOUT).await {
        Ok(s) => s,
        Err(last) => {
            for id in &ids {
                eprintln!(
                    "[{name}] node {id} log tail:\n{}",
                    cluster.log_tail(*id, 30)
                );
            }
            panic!("[{name}] replicas did not converge after healing: {last}");
        }
    };
    let commit = statuses[0].commit_index;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut drains: checker::Drains = BTreeMap::new();
    for &id in &ids {
        let mut queues = BTreeMap::new();
        for queue in 0..scenario.workload.queues {
            let log = workload::drain(router, id, &scenario.workload.topic, queue, deadline)
                .await
                .unwrap_or_else(|e| panic!("[{name}] final drain failed: {e}"));
            queues.insert(queue, log);
        }
        drains.insert(id, queues);
    }
    let mut commits = BTreeMap::new();
    for i in 0..scenario.workload.consumers {
        let group = format!("g{i}");
        let offsets = workload::committed_offsets(router, &group, deadline)
            .await
            .unwrap_or_else(|e| panic!("[{name}] {e}"));
        commits.insert(group, offsets);
    }
    let retention = scenario
        .cluster
        .extra_args
        .iter()
        .any(|a| a.starts_with("--retention"));
    let mut report = checker::check(
        &history.events(),
        &history.reads(),
        &drains,
        &commits,
        retention,
    );

    cluster.stop_all();
    let dirs: BTreeMap<u64, std::path::PathBuf> = cluster
        .nodes
        .iter()
        .map(|n| (n.id, n.data_dir.clone()))
        .collect();
    let config = checker::log_config(
        scenario.cluster.segment_bytes,
        scenario.cluster.max_batch_bytes,
    );
    report
        .anomalies
        .extend(checker::compare_logs(&dirs, commit, &config));
    (report, commit)
}

/// Runs a scenario with the seed from the environment and fails on any anomaly.
pub async fn run_and_check(scenario: Scenario) -> Outcome {
    let seed = super::seed(scenario.name);
    let name = scenario.name;
    let outcome = run(scenario, seed).await;
    assert!(
        outcome.report.anomalies.is_empty(),
        "[{name}] {} anomalies with seed {seed} (replay with RAFTMQ_FAULT_SEED={seed}): {:#?}",
        outcome.report.anomalies.len(),
        outcome.report.anomalies
    );
    assert!(outcome.report.acks > 0, "[{name}] nothing was acknowledged");
    outcome
}
