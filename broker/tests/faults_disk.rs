//! Disk faults on real broker processes.
//!
//! - A stopped follower's log is damaged (bits flipped in an entry in the middle,
//!   an entry zeroed in the middle, the tail cut): on start it must detect the
//!   damage, and the cluster must repair it from its peers without losing anything.
//! - Protocol-aware recovery: a node that acknowledged entries and then lost them
//!   to damage must not vote or lead until a leader has caught it up. The scenario
//!   is the one that loses data in a plain Raft: a follower B is cut off, the leader
//!   L and follower C acknowledge more writes, C's log is damaged back to or below
//!   B's, L dies; B and C together must not elect anyone. Then L returns.
//! - A full disk: one node's data dir on a small tmpfs. Its producers get errors,
//!   it stops leading, the others carry on, nothing is corrupted; after space is
//!   freed and the node restarted, it catches up.
//!
//! `RAFTMQ_FAULT_SEED` replays the choices made here.

#[path = "jepsen/mod.rs"]
mod jepsen;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jepsen::client::Router;
use jepsen::cluster::{Cluster, ClusterOptions};
use jepsen::disk;
use jepsen::nemesis::Profile;
use jepsen::rng::Rng;
use jepsen::run::{finish, Scenario, REQUEST_TIMEOUT};
use jepsen::workload::{Workload, WorkloadConfig};
use raftmq_client::pb::{self, request::Body as Req};

/// A cluster with the default workload running on it.
struct Setup {
    cluster: Cluster,
    router: Arc<Router>,
    workload: Option<Workload>,
    scenario: Scenario,
}

async fn setup(
    name: &'static str,
    cluster: ClusterOptions,
    workload: WorkloadConfig,
    rng: &mut Rng,
) -> Setup {
    let scenario = Scenario {
        name,
        cluster,
        workload,
        profile: Profile::Process,
        duration: Duration::from_secs(30),
    };
    let cluster = Cluster::start(scenario.cluster.clone()).await;
    let router = Arc::new(Router::new(&cluster, REQUEST_TIMEOUT).await);
    router
        .create_topic(
            &scenario.workload.topic,
            scenario.workload.queues,
            Instant::now() + Duration::from_secs(30),
        )
        .await;
    let workload = Workload::start(
        router.clone(),
        scenario.workload.clone(),
        rng,
        Instant::now() + Duration::from_secs(150),
    );
    Setup {
        cluster,
        router,
        workload: Some(workload),
        scenario,
    }
}

impl Setup {
    async fn leader(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((id, _)) = self.router.find_leader().await {
                if self.cluster.is_up(id) {
                    return id;
                }
            }
            assert!(Instant::now() < deadline, "no leader within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn status(&self, id: u64) -> pb::ClusterStatusResponse {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.router.status(id).await {
                return s;
            }
            assert!(Instant::now() < deadline, "node {id} does not answer");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Heals everything, stops the workload, runs every check; panics on anomalies.
    async fn finish_and_check(mut self) {
        let name = self.scenario.name;
        self.cluster.heal_all().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let history = self.workload.take().expect("workload").stop().await;
        let (report, commit) = finish(
            name,
            &mut self.cluster,
            &self.router,
            &self.scenario,
            &history,
        )
        .await;
        eprintln!("[{name}] commit index {commit}; {}", report.summary());
        for a in &report.anomalies {
            eprintln!("[{name}] ANOMALY: {a}");
        }
        assert!(
            report.anomalies.is_empty(),
            "[{name}] anomalies: {:#?}",
            report.anomalies
        );
        assert!(report.acks > 0, "[{name}] nothing was acknowledged");
    }
}

/// The last "commit log recovered" line node `id` logged.
fn recovery_line(cluster: &Cluster, id: u64) -> String {
    cluster
        .log_text(id)
        .lines()
        .rev()
        .find(|l| l.contains("commit log recovered"))
        .unwrap_or_default()
        .to_string()
}

/// Ways to damage a log at one entry.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// Flip bits in the entry's body.
    FlipBits,
    /// Zero the whole entry (a write that never reached the disk, with later ones
    /// that did).
    ZeroEntry,
    /// Cut the log from this entry on.
    CutTail,
}

fn damage(data_dir: &std::path::Path, at: &disk::EntryLocation, how: Damage, rng: &mut Rng) {
    match how {
        Damage::FlipBits => {
            let byte = at.offset + 32 + rng.below((at.len - 32).max(1));
            let mask = 1u8 << rng.below(8);
            disk::flip_bits(&at.path, byte.min(at.offset + at.len - 1), mask);
        }
        Damage::ZeroEntry => disk::zero(&at.path, at.offset, at.len),
        Damage::CutTail => disk::cut_tail(data_dir, at),
    }
}

/// Damages stopped followers one after another (bit flips, a zeroed entry, a cut
/// tail) in the segment being written, restarts each, and checks everything after
/// healing. With `sealed`, the bit flip goes into a sealed segment instead.
async fn damaged_follower_logs(name: &'static str, kinds: &[Damage], sealed: bool) {
    let seed = jepsen::seed(name);
    let mut rng = Rng::new(seed);
    let mut s = setup(
        name,
        ClusterOptions::default(),
        WorkloadConfig::default(),
        &mut rng.fork(1),
    )
    .await;
    for &how in kinds {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let leader = s.leader().await;
        let followers: Vec<u64> = s
            .cluster
            .ids()
            .into_iter()
            .filter(|&id| id != leader)
            .collect();
        let victim = *rng.pick(&followers);
        s.cluster.kill(victim);
        let dir = s.cluster.node(victim).data_dir.clone();
        let entries = disk::entries(&dir);
        assert!(
            entries.len() > 10,
            "node {victim} has only {} entries",
            entries.len()
        );
        let last_segment = entries[entries.len() - 1].path.clone();
        let pool: Vec<&disk::EntryLocation> = if sealed {
            entries.iter().filter(|e| e.path != last_segment).collect()
        } else {
            entries.iter().filter(|e| e.path == last_segment).collect()
        };
        assert!(
            pool.len() > 4,
            "node {victim}: too few entries to choose from"
        );
        let at = match how {
            Damage::CutTail => pool[pool.len() * 3 / 4],
            _ => pool[pool.len() / 2],
        };
        eprintln!(
            "[{name}] {how:?} on stopped follower {victim} at entry {} of {}..={} ({} byte {})",
            at.index,
            entries[0].index,
            entries[entries.len() - 1].index,
            at.path.display(),
            at.offset
        );
        damage(&dir, at, how, &mut rng);
        s.cluster.restart(victim).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let recovered = recovery_line(&s.cluster, victim);
        eprintln!("[{name}] node {victim} on start: {recovered}");
        if !sealed && !matches!(how, Damage::CutTail) {
            assert!(
                recovered.contains("MID-LOG CORRUPTION"),
                "[{name}] node {victim} did not report the damage: {recovered}"
            );
        }
    }
    s.finish_and_check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_damaged_follower_log_it_is_detected_on_start_and_repaired_from_peers() {
    let _serial = jepsen::serial().await;
    let kinds = [Damage::FlipBits, Damage::ZeroEntry, Damage::CutTail];
    damaged_follower_logs("disk-follower", &kinds, false).await;
}

/// Known bug: a sealed segment's index checkpoint is trusted on open, so a flipped
/// bit in it is found only when the node replays its committed entries; the node
/// then declares a storage failure and isolates itself for good instead of being
/// repaired from its peers. Two such nodes in a 3-node cluster stop it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_bit_flip_in_a_sealed_segment_the_follower_is_repaired_from_peers() {
    let _serial = jepsen::serial().await;
    damaged_follower_logs("disk-sealed", &[Damage::FlipBits], true).await;
}

/// The plain-Raft data-loss scenario; see the module doc.
async fn quorum_member_loses_acknowledged_entries(name: &'static str, how: Damage) {
    let seed = jepsen::seed(name);
    let mut rng = Rng::new(seed);
    // One segment holds the whole run, so that the damage is in the part of the log
    // scanned on open (see the sealed-segment test for the other part).
    let options = ClusterOptions {
        segment_bytes: 4 << 20,
        ..ClusterOptions::default()
    };
    let mut s = setup(name, options, WorkloadConfig::default(), &mut rng.fork(1)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let l = s.leader().await;
    let mut followers: Vec<u64> = s.cluster.ids().into_iter().filter(|&id| id != l).collect();
    rng.shuffle(&mut followers);
    let (b, c) = (followers[0], followers[1]);
    for other in [l, c] {
        s.cluster.cut_both(b, other);
    }
    eprintln!("[{name}] leader {l}; follower {b} cut off; {c} keeps acknowledging");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let b_last = s.status(b).await.last_index;
    let c_status = s.status(c).await;
    s.cluster.kill(c);
    assert!(
        c_status.commit_index > b_last + 5,
        "the leader and {c} committed too little past {b}'s log: {} vs {b_last}",
        c_status.commit_index
    );
    // Damage C at or before B's last entry: afterwards C's log is no longer than
    // B's, so a plain Raft C would vote for B, which lacks acknowledged entries.
    let dir = s.cluster.node(c).data_dir.clone();
    let entries = disk::entries(&dir);
    let target = b_last
        .saturating_sub(rng.below(5))
        .max(entries[0].index + 1);
    let at = entries
        .iter()
        .find(|e| e.index == target)
        .expect("the entry to damage is on disk")
        .clone();
    eprintln!(
        "[{name}] {how:?} on {c} at entry {target}; {b} ends at {b_last}; {c} had committed {}",
        c_status.commit_index
    );
    damage(&dir, &at, how, &mut rng);
    s.cluster.kill(l);
    s.cluster.heal_network();
    s.cluster.restart(c).await;

    // B and C alone: neither may lead.
    let until = Instant::now() + Duration::from_secs(5);
    let mut seen = BTreeMap::new();
    while Instant::now() < until {
        for id in [b, c] {
            if let Some(st) = s.router.status(id).await {
                *seen.entry((id, st.role.clone())).or_insert(0u32) += 1;
                assert!(
                    st.role != "leader" || st.last_index >= c_status.commit_index,
                    "[{name}] node {id} leads without the acknowledged entries up to {} \
                     (its log ends at {}); seed {seed}",
                    c_status.commit_index,
                    st.last_index
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered = recovery_line(&s.cluster, c);
    eprintln!("[{name}] roles seen without {l}: {seen:?}; {c} on start: {recovered}");
    s.cluster.restart(l).await;
    s.finish_and_check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_quorum_member_whose_log_tail_was_cut_no_one_leads_without_its_entries() {
    let _serial = jepsen::serial().await;
    quorum_member_loses_acknowledged_entries("disk-quorum-cut", Damage::CutTail).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_quorum_member_with_flipped_bits_no_one_leads_without_its_entries() {
    let _serial = jepsen::serial().await;
    quorum_member_loses_acknowledged_entries("disk-quorum-flip", Damage::FlipBits).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_full_disk_on_the_leader_it_steps_down_and_rejoins_once_freed() {
    let _serial = jepsen::serial().await;
    let name = "disk-full";
    let seed = jepsen::seed(name);
    let mut rng = Rng::new(seed);
    let fs = match disk::SmallFs::mount(4 << 20) {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("[{name}] SKIPPED: cannot mount a small filesystem here: {why}");
            return;
        }
    };
    let full_node = 3;
    let options = ClusterOptions {
        data_dirs: BTreeMap::from([(full_node, fs.path.join("node3"))]),
        // The file system really fills (the disk-use limit would refuse earlier).
        extra_args: vec!["--max-disk-use-ratio".into(), "1.0".into()],
        ..ClusterOptions::default()
    };
    let workload = WorkloadConfig {
        key_bytes: 2048,
        pause_ms_max: 5,
        ..WorkloadConfig::default()
    };
    let mut s = setup(name, options, workload, &mut rng.fork(1)).await;

    // Node 3 leads.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leader = s.leader().await;
        if leader == full_node {
            break;
        }
        let body = Req::TransferLeader(pb::TransferLeaderRequest {
            to_node_id: full_node,
        });
        let _ = s.router.call_node(leader, body).await;
        assert!(
            Instant::now() < deadline,
            "node {full_node} never took the lead"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("[{name}] node {full_node} leads on a 4 MiB filesystem");

    // Its disk fills.
    let deadline = Instant::now() + Duration::from_secs(60);
    let marker = loop {
        let text = s.cluster.log_text(full_node);
        if let Some(line) = text.lines().find(|l| {
            l.contains("storage failed") || l.contains("append failed") || l.contains("No space")
        }) {
            break line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "node {full_node}'s disk never filled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("[{name}] node {full_node}: {marker}");
    let acks_when_full = s.workload.as_ref().expect("workload").history.acks();

    // The others carry on under another leader.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let acks = s.workload.as_ref().expect("workload").history.acks();
        let leader = s.router.find_leader().await.map(|(id, _)| id);
        if acks > acks_when_full + 20 && leader.is_some_and(|l| l != full_node) {
            eprintln!("[{name}] leader now {leader:?}; acknowledged {acks_when_full} -> {acks}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no progress after node {full_node}'s disk filled: leader {leader:?}, acks \
             {acks_when_full} -> {acks}\n{}",
            s.cluster.log_tail(full_node, 20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let st = s.status(full_node).await;
    assert_ne!(
        st.role, "leader",
        "node {full_node} still leads with a full disk"
    );

    // Space freed; the node is restarted and catches up.
    fs.resize(512 << 20);
    s.cluster.terminate(full_node);
    s.cluster.restart(full_node).await;
    s.finish_and_check().await;
    drop(fs);
}
