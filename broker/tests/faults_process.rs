//! Process faults on real broker processes: SIGKILL and SIGSTOP/SIGCONT of the
//! leader or of a random node, restarts, and crashes of the whole cluster at once,
//! while idempotent producers and consumers run; then the history and every
//! replica are checked (see `docs/reliability.md`).
//!
//! With retention on, nodes killed or paused fall behind the log start and come
//! back through a snapshot install.
//!
//! `RAFTMQ_FAULT_SEED` replays a schedule; `RAFTMQ_SOAK_SECS` lengthens the fault
//! phase of every test here (the mixed test is the soak).

#[path = "jepsen/mod.rs"]
mod jepsen;

use std::time::Duration;

use jepsen::cluster::ClusterOptions;
use jepsen::nemesis::Profile;
use jepsen::run::{run_and_check, Scenario};
use jepsen::workload::WorkloadConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_leader_kills_and_pauses_no_acknowledged_message_is_lost() {
    let _serial = jepsen::serial().await;
    run_and_check(Scenario {
        name: "process-3",
        cluster: ClusterOptions::default(),
        workload: WorkloadConfig::default(),
        profile: Profile::Process,
        duration: jepsen::fault_duration(Duration::from_secs(20)),
    })
    .await;
}

/// Kills and pauses with the queues spread over three data groups: the leader
/// killed is the metadata group's, and every node leads a data group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_kills_and_pauses_with_data_groups_no_acknowledged_message_is_lost() {
    let _serial = jepsen::serial().await;
    run_and_check(Scenario {
        name: "process-3-data-groups",
        cluster: ClusterOptions {
            extra_args: vec!["--data-groups".into(), "3".into()],
            ..ClusterOptions::default()
        },
        workload: WorkloadConfig::default(),
        profile: Profile::Process,
        duration: jepsen::fault_duration(Duration::from_secs(20)),
    })
    .await;
}

/// Kills and pauses while the data groups keep going quiet: producers pause up to
/// 1.5 s between batches and nothing else reads the data groups, so groups
/// quiesce (after 300 ms idle) and wake again all the time; a frozen or killed
/// leader of a quiesced group is found by the node-level failure detector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_kills_and_pauses_of_quiescing_data_groups_no_acknowledged_message_is_lost() {
    let _serial = jepsen::serial().await;
    run_and_check(jepsen::quiescing_scenario(
        "process-3-quiescing",
        Profile::Process,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_mixed_process_and_network_faults_on_five_nodes_the_history_checks_out() {
    let _serial = jepsen::serial().await;
    run_and_check(Scenario {
        name: "mixed-5",
        cluster: ClusterOptions {
            nodes: 5,
            ..ClusterOptions::default()
        },
        workload: WorkloadConfig::default(),
        profile: Profile::Mixed,
        duration: jepsen::fault_duration(Duration::from_secs(20)),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_retention_nodes_stopped_past_the_log_start_rejoin_from_snapshots() {
    let _serial = jepsen::serial().await;
    // 64 KiB segments, 4 kept, retention every 100 ms, and a follower holds it back
    // for 300 ms at most: a node down for a second is behind the log start.
    let retention = [
        "--retention-bytes",
        "262144",
        "--retention-check-interval-ms",
        "100",
        "--retention-follower-grace-ms",
        "300",
    ];
    let outcome = run_and_check(Scenario {
        name: "retention-process-3",
        cluster: ClusterOptions {
            extra_args: retention.iter().map(|s| s.to_string()).collect(),
            ..ClusterOptions::default()
        },
        workload: WorkloadConfig {
            key_bytes: 2048,
            ..WorkloadConfig::default()
        },
        profile: Profile::Process,
        duration: jepsen::fault_duration(Duration::from_secs(20)),
    })
    .await;
    assert!(
        outcome.report.deleted > 0,
        "retention deleted nothing: the scenario tests nothing"
    );
}
