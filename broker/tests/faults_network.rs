//! Network faults on real broker processes: every peer link goes through a proxy
//! that the schedule cuts (both ways or one way), blackholes or slows; partitions
//! split majorities from minorities, bridge two halves through one node, form a
//! ring, isolate or mute the leader. A workload of idempotent producers and
//! consumers runs throughout; after healing, the history and every replica are
//! checked (see `docs/reliability.md`).
//!
//! `RAFTMQ_FAULT_SEED` replays a schedule; `RAFTMQ_SOAK_SECS` lengthens the fault
//! phase of every test here.

#[path = "jepsen/mod.rs"]
mod jepsen;

use std::time::Duration;

use jepsen::cluster::ClusterOptions;
use jepsen::nemesis::Profile;
use jepsen::run::{run_and_check, Scenario};
use jepsen::workload::WorkloadConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_partitions_on_three_nodes_no_acknowledged_message_is_lost() {
    let _serial = jepsen::serial().await;
    run_and_check(Scenario {
        name: "network-3",
        cluster: ClusterOptions::default(),
        workload: WorkloadConfig::default(),
        profile: Profile::Network,
        duration: jepsen::fault_duration(Duration::from_secs(20)),
    })
    .await;
}

/// The same faults with the queues spread over three data groups (each its own
/// Raft group and leader, their peer links through the same proxies): every node's
/// copy of every queue is drained and checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_partitions_with_data_groups_no_acknowledged_message_is_lost() {
    let _serial = jepsen::serial().await;
    run_and_check(Scenario {
        name: "network-3-data-groups",
        cluster: ClusterOptions {
            extra_args: vec!["--data-groups".into(), "3".into()],
            ..ClusterOptions::default()
        },
        workload: WorkloadConfig::default(),
        profile: Profile::Network,
        duration: jepsen::fault_duration(Duration::from_secs(20)),
    })
    .await;
}

/// Partitions while the data groups keep going quiet (producers pause up to 1.5 s
/// between batches, nothing else reads the data groups): a cut, blackholed or
/// muted link closes nothing, so the followers of a quiesced group cut off from
/// its leader depend on the node-level failure detector (silence) to elect another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_partitions_of_quiescing_data_groups_no_acknowledged_message_is_lost() {
    let _serial = jepsen::serial().await;
    run_and_check(jepsen::quiescing_scenario(
        "network-3-quiescing",
        Profile::Network,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_bridges_and_rings_on_five_nodes_replicas_stay_identical() {
    let _serial = jepsen::serial().await;
    run_and_check(Scenario {
        name: "network-5",
        cluster: ClusterOptions {
            nodes: 5,
            ..ClusterOptions::default()
        },
        workload: WorkloadConfig::default(),
        profile: Profile::Network,
        duration: jepsen::fault_duration(Duration::from_secs(20)),
    })
    .await;
}
