//! Failure domains with real broker processes: four nodes in three racks (`a` holds
//! nodes 1 and 2) start 4 data groups of 3 replicas. Every group must have one
//! replica in each rack, so losing rack `a` costs each group one replica, never
//! two; placed by load alone, two of the groups would sit on both nodes of `a`.
//! Every node's rack is in the metadata, and a rebalance keeps the spread.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{metadata, Cluster};
use raftmq_client::{Admin, Client};
use raftmq_proto::pb;

/// Each group's replicas as the racks they are in.
fn racks_of_groups(m: &pb::MetadataResponse) -> Vec<(u32, Vec<String>)> {
    let rack = |id: &u64| {
        m.nodes
            .iter()
            .find(|n| n.node_id == *id)
            .map(|n| n.rack.clone())
            .unwrap_or_default()
    };
    m.groups
        .iter()
        .map(|g| (g.group_id, g.replicas.iter().map(rack).collect()))
        .collect()
}

fn assert_one_replica_per_rack(m: &pb::MetadataResponse) {
    for (group, racks) in racks_of_groups(m) {
        let distinct: BTreeSet<&String> = racks.iter().collect();
        assert_eq!(
            distinct.len(),
            3,
            "group {group} is on racks {racks:?}, not one replica per rack"
        );
    }
}

#[test]
fn each_data_group_has_a_replica_in_every_rack() {
    let mut cluster = Cluster::start_with_racks(
        &["a", "a", "b", "c"],
        &["--data-groups", "4", "--replication-factor", "3"],
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let client = Client::connect(&cluster.addrs()).await.expect("connect");
        let deadline = Instant::now() + Duration::from_secs(30);
        let m = loop {
            let m = metadata(&client).await;
            let racks_known = m.nodes.len() == 4 && m.nodes.iter().all(|n| !n.rack.is_empty());
            if racks_known && m.groups.len() == 4 {
                break m;
            }
            assert!(
                Instant::now() < deadline,
                "no data groups with every rack known: nodes {:?}, groups {}",
                m.nodes
                    .iter()
                    .map(|n| (n.node_id, n.rack.clone()))
                    .collect::<Vec<_>>(),
                m.groups.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let racks: Vec<(u64, String)> = m
            .nodes
            .iter()
            .map(|n| (n.node_id, n.rack.clone()))
            .collect();
        assert_eq!(
            racks,
            [(1, "a"), (2, "a"), (3, "b"), (4, "c")].map(|(n, r)| (n, r.to_string()))
        );
        assert_one_replica_per_rack(&m);
        // The nodes alone in their racks hold every group.
        assert!(m
            .groups
            .iter()
            .all(|g| g.replicas.contains(&3) && g.replicas.contains(&4)));

        // A rebalance has nothing to fix and must not undo the spread.
        Admin::new(&client)
            .move_replicas(None, 16)
            .await
            .expect("rebalance");
        let m = metadata(&client).await;
        assert_one_replica_per_rack(&m);
    });
    for id in 1..=4 {
        cluster.kill(id);
    }
}
