//! Fault schedules: generated from a seed, printed before they run, applied to a
//! [`Cluster`] one step at a time (fault, hold, heal, rest).

use std::time::Duration;

use super::client::Router;
use super::cluster::Cluster;
use super::proxy::LinkMode;
use super::rng::Rng;

/// Which faults a schedule draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Partitions, one-way links, blackholes, delays.
    Network,
    /// SIGKILL, SIGSTOP, restarts, whole-cluster crashes.
    Process,
    /// Both.
    Mixed,
}

/// Who a process fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Whoever leads when the fault starts.
    Leader,
    /// A node chosen when the schedule was made.
    Node(u64),
}

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `side` cannot talk to the other nodes, both ways (a majority/minority split
    /// when `side` is a minority).
    Partition {
        /// One side.
        side: Vec<u64>,
    },
    /// Jepsen's bridge: two halves that cannot see each other, and one node that
    /// sees both.
    Bridge {
        /// The node in the middle.
        bridge: u64,
        /// One half; the other is everyone else.
        left: Vec<u64>,
    },
    /// Each node talks only to its two neighbours in this order.
    Ring {
        /// The ring.
        order: Vec<u64>,
    },
    /// The current leader is cut off both ways.
    IsolateLeader,
    /// The current leader's outgoing links are cut; it still hears everyone.
    MuteLeader,
    /// One direction only.
    OneWay {
        /// Sender.
        from: u64,
        /// Receiver.
        to: u64,
    },
    /// `side`'s links to the others swallow bytes silently, both ways.
    Blackhole {
        /// One side.
        side: Vec<u64>,
    },
    /// Every link waits this long before forwarding each chunk.
    Delay {
        /// Milliseconds per chunk.
        ms: u64,
    },
    /// SIGKILL, restarted at heal.
    Kill(Target),
    /// SIGSTOP, SIGCONT at heal.
    Pause(Target),
    /// SIGKILL every node at once, all restarted at heal.
    KillAll,
    /// A machine replaced: the node is stopped, removed from the cluster, its data
    /// directory wiped; it joins again as a new member (`--join`), and is promoted
    /// to voter once it has caught up.
    Replace(Target),
}

/// One step of a schedule.
#[derive(Debug, Clone)]
pub struct Step {
    /// The fault.
    pub fault: Fault,
    /// How long it lasts.
    pub hold: Duration,
    /// How long the healed cluster then runs before the next step.
    pub rest: Duration,
}

/// Steps whose holds and rests add up to about `duration` (bounded in count).
pub fn schedule(profile: Profile, nodes: usize, duration: Duration, rng: &mut Rng) -> Vec<Step> {
    const STEPS_MAX: usize = 10_000;
    let ids: Vec<u64> = (1..=nodes as u64).collect();
    let mut steps = Vec::new();
    let mut total = Duration::ZERO;
    while total < duration && steps.len() < STEPS_MAX {
        let network = match profile {
            Profile::Network => true,
            Profile::Process => false,
            Profile::Mixed => rng.percent(50),
        };
        let fault = if network {
            network_fault(&ids, rng)
        } else {
            process_fault(&ids, rng)
        };
        let hold = Duration::from_millis(rng.between(600, 3000));
        let rest = Duration::from_millis(rng.between(300, 1500));
        total += hold + rest;
        steps.push(Step { fault, hold, rest });
    }
    steps
}

fn minority(ids: &[u64], rng: &mut Rng) -> Vec<u64> {
    let mut shuffled = ids.to_vec();
    rng.shuffle(&mut shuffled);
    let size = rng.between(1, (ids.len() as u64 - 1) / 2) as usize;
    let mut side = shuffled[..size].to_vec();
    side.sort_unstable();
    side
}

fn network_fault(ids: &[u64], rng: &mut Rng) -> Fault {
    let n = ids.len();
    match rng.below(9) {
        0 | 1 => Fault::Partition {
            side: minority(ids, rng),
        },
        2 => {
            let mut order = ids.to_vec();
            rng.shuffle(&mut order);
            let bridge = order[0];
            let mut left = order[1..=(n - 1) / 2].to_vec();
            left.sort_unstable();
            Fault::Bridge { bridge, left }
        }
        3 if n >= 5 => {
            let mut order = ids.to_vec();
            rng.shuffle(&mut order);
            Fault::Ring { order }
        }
        3 | 4 => Fault::IsolateLeader,
        5 => Fault::MuteLeader,
        6 => {
            let from = *rng.pick(ids);
            let to = loop {
                let to = *rng.pick(ids);
                if to != from {
                    break to;
                }
            };
            Fault::OneWay { from, to }
        }
        7 => Fault::Blackhole {
            side: minority(ids, rng),
        },
        _ => Fault::Delay {
            ms: rng.between(5, 80),
        },
    }
}

fn process_fault(ids: &[u64], rng: &mut Rng) -> Fault {
    match rng.below(12) {
        0..=2 => Fault::Kill(Target::Leader),
        3 | 4 => Fault::Kill(Target::Node(*rng.pick(ids))),
        5 | 6 => Fault::Pause(Target::Leader),
        7 | 8 => Fault::Pause(Target::Node(*rng.pick(ids))),
        9 => Fault::Replace(Target::Leader),
        10 => Fault::Replace(Target::Node(*rng.pick(ids))),
        _ => Fault::KillAll,
    }
}

/// Prints a schedule, one step a line.
pub fn print(name: &str, steps: &[Step]) {
    eprintln!("[{name}] fault schedule, {} steps:", steps.len());
    for (i, s) in steps.iter().enumerate() {
        eprintln!(
            "[{name}]   {i:>3}: {:?} for {} ms, then {} ms healed",
            s.fault,
            s.hold.as_millis(),
            s.rest.as_millis()
        );
    }
}

/// The leader now, if one answers within a few tries.
async fn leader(router: &Router) -> Option<u64> {
    for _ in 0..10 {
        if let Some((id, _)) = router.find_leader().await {
            return Some(id);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

async fn resolve(target: Target, cluster: &Cluster, router: &Router) -> Option<u64> {
    match target {
        Target::Node(id) => Some(id),
        Target::Leader => leader(router).await.filter(|&id| cluster.is_up(id)),
    }
}

fn cut_sides(cluster: &Cluster, side: &[u64], mode: LinkMode) {
    for a in side {
        for b in cluster.ids() {
            if !side.contains(&b) {
                cluster.set_link(*a, b, mode);
                cluster.set_link(b, *a, mode);
            }
        }
    }
}

/// Applies `fault`; returns what was done, with leaders resolved to node ids.
pub async fn apply(fault: &Fault, cluster: &mut Cluster, router: &Router) -> String {
    match fault {
        Fault::Partition { side } => {
            cut_sides(cluster, side, LinkMode::Cut);
            format!("partition {side:?} | rest")
        }
        Fault::Bridge { bridge, left } => {
            let right: Vec<u64> = cluster
                .ids()
                .into_iter()
                .filter(|id| id != bridge && !left.contains(id))
                .collect();
            for a in left {
                for b in &right {
                    cluster.cut_both(*a, *b);
                }
            }
            format!("bridge {left:?} - {bridge} - {right:?}")
        }
        Fault::Ring { order } => {
            let n = order.len();
            for i in 0..n {
                for j in 0..n {
                    let neighbours = (i + 1) % n == j || (j + 1) % n == i;
                    if i != j && !neighbours {
                        cluster.set_link(order[i], order[j], LinkMode::Cut);
                    }
                }
            }
            format!("ring {order:?}")
        }
        Fault::IsolateLeader => match leader(router).await {
            Some(l) => {
                cut_sides(cluster, &[l], LinkMode::Cut);
                format!("isolate leader {l}")
            }
            None => "isolate leader: no leader, nothing done".into(),
        },
        Fault::MuteLeader => match leader(router).await {
            Some(l) => {
                for b in cluster.ids() {
                    if b != l {
                        cluster.set_link(l, b, LinkMode::Cut);
                    }
                }
                format!("mute leader {l} (outbound cut)")
            }
            None => "mute leader: no leader, nothing done".into(),
        },
        Fault::OneWay { from, to } => {
            cluster.set_link(*from, *to, LinkMode::Cut);
            format!("cut {from} -> {to}")
        }
        Fault::Blackhole { side } => {
            cut_sides(cluster, side, LinkMode::Blackhole);
            format!("blackhole {side:?} | rest")
        }
        Fault::Delay { ms } => {
            for proxy in cluster.proxies.values() {
                proxy.set_delay(Duration::from_millis(*ms));
            }
            format!("delay every link {ms} ms")
        }
        Fault::Kill(target) => match resolve(*target, cluster, router).await {
            Some(id) if cluster.is_running(id) => {
                cluster.kill(id);
                format!("SIGKILL node {id}")
            }
            _ => "kill: target not running, nothing done".into(),
        },
        Fault::Pause(target) => match resolve(*target, cluster, router).await {
            Some(id) if cluster.is_up(id) => {
                cluster.pause(id);
                format!("SIGSTOP node {id}")
            }
            _ => "pause: target not up, nothing done".into(),
        },
        Fault::KillAll => {
            for id in cluster.ids() {
                cluster.kill(id);
            }
            "SIGKILL every node".into()
        }
        Fault::Replace(target) => match resolve(*target, cluster, router).await {
            Some(id) if cluster.is_up(id) => replace(id, cluster, router).await,
            _ => "replace: target not up, nothing done".into(),
        },
    }
}

/// How long a replacement may take (removal, then the new node's catch-up).
const REPLACE_TIMEOUT: Duration = Duration::from_secs(20);

async fn replace(id: u64, cluster: &mut Cluster, router: &Router) -> String {
    use raftmq_proto::pb::{self, request::Body as Req};
    cluster.kill(id);
    let deadline = std::time::Instant::now() + REPLACE_TIMEOUT;
    let removed = router
        .call_leader(
            Req::RemoveNode(pb::RemoveNodeRequest { node_id: id }),
            deadline,
        )
        .await;
    if let Err(e) = removed {
        cluster.restart(id).await;
        return format!("replace node {id}: removal failed ({e}), restarted as it was");
    }
    cluster.prepare_replacement(id);
    cluster.restart(id).await;
    match promote(id, router, deadline).await {
        Ok(()) => format!("replace node {id}: removed, wiped, joined again, voter"),
        Err(e) => format!("replace node {id}: removed, wiped, joined again, still a learner ({e})"),
    }
}

/// Asks the leader to make learner `id` a voter until it is one or `deadline`.
pub async fn promote(id: u64, router: &Router, deadline: std::time::Instant) -> Result<(), String> {
    use raftmq_proto::pb::{self, request::Body as Req};
    loop {
        let result = router
            .call_leader(Req::AddNode(pb::AddNodeRequest { node_id: id }), deadline)
            .await;
        match result {
            Ok(_) => return Ok(()),
            Err(e) if std::time::Instant::now() >= deadline => return Err(e.to_string()),
            // Not a learner yet, or still behind: wait for it.
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// After the schedule: every node that a replacement left a learner becomes a
/// voter again, so the final checks see the cluster at full strength.
pub async fn restore_voters(cluster: &Cluster, router: &Router) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut failed = Vec::new();
    for id in cluster.ids() {
        if let Err(e) = promote(id, router, deadline).await {
            failed.push(format!("node {id} is not a voter after the schedule: {e}"));
        }
    }
    failed
}

/// Runs `steps` (each fault, hold, heal, rest) and returns how many faults were
/// applied. Logs each resolved step.
pub async fn run(name: &str, steps: &[Step], cluster: &mut Cluster, router: &Router) -> usize {
    let start = std::time::Instant::now();
    let mut applied = 0;
    for (i, step) in steps.iter().enumerate() {
        let what = apply(&step.fault, cluster, router).await;
        if !what.contains("nothing done") {
            applied += 1;
        }
        eprintln!(
            "[{name}] {:>7.1}s step {i}: {what}",
            start.elapsed().as_secs_f64()
        );
        tokio::time::sleep(step.hold).await;
        cluster.heal_all().await;
        tokio::time::sleep(step.rest).await;
    }
    applied
}
