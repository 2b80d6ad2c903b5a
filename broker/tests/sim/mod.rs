//! A deterministic cluster simulator for the Raft core (in the spirit of
//! TigerBeetle's VOPR): one thread, one seed, simulated disks and network, faults,
//! and safety checks after every step.

mod checker;
pub mod disk;
pub mod rng;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::Bytes;
use raftmq_broker::raft::{
    self, Config, Driver, Entry, EntryKind, FaultVariant, Flow, HardState, LogIndex, Membership,
    MembershipEntry, Message, MessageBody, NodeId, PersistWork, Persistence, ProposeError, RaftLog,
    RawNode, ReadState, Ready, Role, Term,
};

use disk::{DiskLog, SimLog};
use rng::Rng;

/// How long to run and which core to run.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub fault: Option<FaultVariant>,
    /// Ticks with faults and client load.
    pub fault_ticks: u64,
    /// Ticks allowed after faults stop for a leader to be elected and logs converge.
    pub liveness_ticks: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fault: None,
            fault_ticks: 1000,
            liveness_ticks: 1000,
        }
    }
}

/// A failed seed: what broke and the last events before it.
#[derive(Debug)]
pub struct Failure {
    pub seed: u64,
    /// Groups sharing the nodes (1: a single-group run).
    pub groups: usize,
    pub reason: String,
    pub trace: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "raft simulation failed: seed {}: {}",
            self.seed, self.reason
        )?;
        if self.groups > 1 {
            writeln!(
                f,
                "replay: RAFTMQ_SIM_GROUPS_SEED={} RAFTMQ_SIM_GROUPS={} cargo test -p raftmq-broker \
                 --test raft_sim sim_groups -- --nocapture",
                self.seed, self.groups
            )?;
        } else {
            writeln!(
                f,
                "replay: RAFTMQ_SIM_SEED={} cargo test -p raftmq-broker --test raft_sim -- --nocapture",
                self.seed
            )?;
        }
        writeln!(f, "last {} events:", self.trace.len())?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// What a seed did (for reporting).
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub ticks: u64,
    pub events: u64,
    pub committed: u64,
    pub crashes: u64,
    pub damages: u64,
    pub elections: u64,
    pub compactions: u64,
    pub installs: u64,
    /// Linearizable reads served (each checked).
    pub reads: u64,
    /// Membership changes proposed and accepted by a leader.
    pub membership_changes: u64,
}

/// Events kept for the failure report; `RAFTMQ_SIM_TRACE=N` keeps more.
fn trace_len() -> usize {
    std::env::var("RAFTMQ_SIM_TRACE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50)
}

#[derive(Debug, Clone, Copy)]
struct Ev {
    now: u64,
    what: &'static str,
    node: u64,
    a: u64,
    b: u64,
    c: u64,
    d: u64,
    e: u64,
}

impl Ev {
    fn render(&self) -> String {
        let Ev { a, b, c, d, e, .. } = *self;
        let detail = match self.what {
            "Append" => format!("from n{a} term {b} prev {c} entries {d} commit {e}"),
            "AppendResponse" => format!("from n{a} term {b} success {c} match {d} reject {e}"),
            "Vote" | "PreVote" => format!("from n{a} term {b} last_index {c} last_term {d}"),
            "VoteResponse" | "PreVoteResponse" => format!("from n{a} term {b} granted {c}"),
            "Heartbeat" => format!("from n{a} term {b} commit {c} round {d}"),
            "HeartbeatResponse" => format!("from n{a} term {b} round {c}"),
            "TimeoutNow" => format!("from n{a} term {b}"),
            "ReadIndex" => format!("from n{a} term {b} read {c}"),
            "ReadIndexResponse" => format!("from n{a} term {b} read {c} index {d} ok {e}"),
            "read" => format!("id {a} required {b}"),
            "read-index" => format!("id {a} index {b} ok {c}"),
            "read-served" => format!("id {a} value {b} required {c}"),
            "ready" => format!("unsynced {a} hard_state_term {b} commit {c} persisted_msgs {d}"),
            "synced" => format!("log durable up to {a}"),
            "propose" => format!("id {a} index {b} term {c} entries {d}"),
            "crashed" => format!("durable log keeps {a} entries"),
            "damage-log" => format!("log cut to {a} entries, recovery mark {b}"),
            "partition" => format!("side mask {a:#b} one_way {b} heal at t={c}"),
            "pause" | "fail-writes" => format!("until t={a}"),
            "transfer" => format!("to n{a}"),
            "restart" => format!("log {a} entries, recovery mark {b}"),
            "InstallSnapshot" => format!("from n{a} term {b} index {c} snapshot_term {d}"),
            "compact" => format!("log starts after {a}"),
            "install" => format!("state machine restored at {a}"),
            "membership" => format!("index {a} voters {b:#b} learners {c:#b}"),
            _ => String::new(),
        };
        format!(
            "t={:<5} n{} {:<18} {detail}",
            self.now, self.node, self.what
        )
    }
}

/// Per-seed knobs: cluster shape, core limits and fault intensities.
#[derive(Debug, Clone)]
struct Knobs {
    nodes: u64,
    election_timeout: u32,
    heartbeat: u32,
    /// Probability that a node skips a tick or takes two (clock drift).
    p_tick_skew: f64,
    max_append_entries: usize,
    max_inflight: usize,
    max_pending: usize,
    pre_vote: bool,
    check_quorum: bool,
    p_drop: f64,
    p_dup: f64,
    max_delay: u64,
    p_crash: f64,
    p_damage: f64,
    p_partition: f64,
    p_pause: f64,
    p_transfer: f64,
    p_fail_writes: f64,
    p_crash_mid_ready: f64,
    proposals_per_tick: u64,
    /// Probability that a Ready's writes are synced right away (else later, while
    /// the node goes on: asynchronous storage writes).
    p_sync_now: f64,
    /// Probability that a node with synced writes snapshots and compacts its log.
    p_compact: f64,
    /// Reads asked per tick (at a random node).
    reads_per_tick: u64,
    /// Probability per tick that the leader proposes a membership change.
    p_member_change: f64,
    /// Leaders quiesce idle groups after this many ticks (0: never).
    quiesce_after: u32,
    /// Probability per tick that clients go quiet for a while (no proposals, reads
    /// or membership changes), so that groups quiesce while faults go on.
    p_quiet: f64,
    /// Probability per tick that a node's failure detector wrongly reports a live,
    /// reachable peer.
    p_false_suspect: f64,
    /// A node told at the start to campaign within this many ticks (as a new
    /// group's preferred leader is), or none.
    first_campaign: Option<(u64, u32)>,
}

impl Knobs {
    fn draw(rng: &mut Rng, seed: u64) -> Self {
        Knobs {
            nodes: if seed % 2 == 0 { 3 } else { 5 },
            heartbeat: rng.pick(&[1, 2, 3]),
            max_append_entries: rng.pick(&[1, 2, 8, 64]),
            max_inflight: rng.pick(&[1, 2, 8]),
            max_pending: rng.pick(&[4, 32, 128]),
            pre_vote: rng.chance(0.75),
            check_quorum: rng.chance(0.75),
            p_drop: rng.pick(&[0.0, 0.01, 0.05, 0.15]),
            p_dup: rng.pick(&[0.0, 0.02, 0.1]),
            max_delay: rng.pick(&[0, 1, 2, 4, 15]),
            election_timeout: rng.pick(&[5, 10, 20]),
            p_tick_skew: rng.pick(&[0.0, 0.0, 0.1]),
            p_crash: rng.pick(&[0.003, 0.01, 0.03]),
            p_damage: rng.pick(&[0.0, 0.2, 0.6]),
            p_partition: rng.pick(&[0.0, 0.01, 0.03]),
            p_pause: rng.pick(&[0.0, 0.01, 0.03]),
            p_transfer: rng.pick(&[0.0, 0.005, 0.02]),
            p_fail_writes: rng.pick(&[0.0, 0.0, 0.005]),
            p_crash_mid_ready: rng.pick(&[0.0, 0.002, 0.01]),
            proposals_per_tick: rng.pick(&[1, 2, 4]),
            p_sync_now: rng.pick(&[1.0, 0.7, 0.3]),
            p_compact: rng.pick(&[0.02, 0.1, 0.4]),
            reads_per_tick: rng.pick(&[0, 1, 3]),
            p_member_change: rng.pick(&[0.0, 0.01, 0.04]),
            quiesce_after: rng.pick(&[0, 2, 5, 15]),
            p_quiet: rng.pick(&[0.0, 0.02, 0.05]),
            p_false_suspect: rng.pick(&[0.0, 0.0, 0.002]),
            first_campaign: None,
        }
    }
}

/// A state-machine snapshot: the chain hash of every entry applied up to `index`.
#[derive(Debug, Clone)]
struct SimSnap {
    index: LogIndex,
    term: Term,
    chain: u64,
    /// The membership in effect at `index` (`None`: the bootstrap configuration).
    membership: Option<MembershipEntry>,
}

/// Chain hash of the applied sequence: equal chains at an index mean equal states.
fn chain_next(chain: u64, e: &Entry) -> u64 {
    let x = chain ^ entry_hash(e) ^ (e.term.0 << 40) ^ e.index.0;
    x.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29)
}

/// Recent applied points kept per node, for compaction targets.
const CHAIN_HISTORY: usize = 64;

struct Slot {
    raft: Option<RawNode<SimLog>>,
    /// The durable log while stopped.
    stopped_log: DiskLog,
    /// Durable snapshots by index (survive crashes).
    snapshots: BTreeMap<LogIndex, SimSnap>,
    /// The state machine: last applied index and its chain hash.
    sm: (LogIndex, u64),
    /// Recent (applied index, chain) points.
    chain_hist: VecDeque<(LogIndex, u64)>,
    /// The durable hard state.
    hs: HardState,
    paused_until: u64,
    restart_at: u64,
    fail_writes_until: u64,
    /// Damaged while stopped and not yet caught up.
    damaged: bool,
    commit_seen: LogIndex,
    commit_checked: LogIndex,
    leader_term_checked: Term,
    incarnation: u64,
    /// Readies whose messages went out but whose writes are not yet synced: the
    /// broker's own bookkeeping ([`Persistence`]), so the simulator checks it.
    persist: Persistence,
    /// The write in flight, with how many log writes it syncs (those made before it
    /// started, as the broker's sync job).
    write: Option<(PersistWork, usize)>,
    /// Reads with a read index, waiting for the state machine to apply up to it:
    /// (read id, read index).
    reads_ready: Vec<(u64, LogIndex)>,
    /// Was proposed as a member at some point (a spare is then no longer offered).
    member_ever: bool,
    /// The highest index of a committed membership that lists this node
    /// (`Some(0)`: a bootstrap voter).
    member_at: Option<LogIndex>,
    /// Removed by a committed membership change and stopped (as an operator stops
    /// a removed broker); restarted only after its disk is wiped (`rejoin`).
    retired: bool,
    /// Wiped and started again as a new, empty node that knows no members.
    joined: bool,
    /// Memberships at or below this index are about the node's earlier self (it
    /// was wiped after them).
    wiped_after: LogIndex,
}

struct Flight {
    at: u64,
    msg: Message,
    /// The snapshot an InstallSnapshot carries.
    snap: Option<SimSnap>,
}

struct World {
    seed: u64,
    opts: Options,
    rng: Rng,
    k: Knobs,
    slots: Vec<Slot>,
    net: Vec<Flight>,
    /// (from, to) links that drop messages.
    blocked: BTreeSet<(u64, u64)>,
    heal_at: u64,
    /// Clients propose, read and change nothing until then.
    quiet_until: u64,
    /// (node, peer) pairs whose failure detector reported the peer and has not
    /// heard from it since.
    suspected: BTreeSet<(usize, usize)>,
    /// (node, crashed peer, when): a crash closes the peer's connections, which
    /// every node notices (always, soon): reported then, even if it has restarted.
    crash_reports: Vec<(usize, usize, u64)>,
    now: u64,
    faults_on: bool,
    // Checker state.
    leaders: BTreeMap<Term, NodeId>,
    registry: HashMap<(u64, u64), (u64, Term)>,
    /// Per committed index: (entry term, entry hash, term of the node that first
    /// reported it committed, at least the term it was committed in).
    committed: Vec<(Term, u64, Term)>,
    /// Per committed index: the proposal id of a Command entry.
    committed_cmd: Vec<Option<u64>>,
    /// Per committed index: the voters of the node that first reported it
    /// committed (the leader that committed it), whose majority must hold it.
    committed_voters: Vec<Vec<NodeId>>,
    /// Per applied index: the chain hash of the state machine after it.
    chains: Vec<u64>,
    committed_ids: BTreeSet<u64>,
    next_id: u64,
    /// Reads asked and not yet served: id -> the committed index every node knew
    /// of when the read was asked (a linearizable read must see at least that).
    reads: HashMap<u64, u64>,
    next_read_id: u64,
    trace: VecDeque<Ev>,
    trace_len: usize,
    stats: Stats,
    /// A leader asked to hand over so that it can be removed (the broker's way of
    /// removing the leader): the next leader removes it.
    to_remove: Option<NodeId>,
    /// The index of the newest membership entry any live node knew committed.
    newest_committed_membership: LogIndex,
    /// Other groups run on the same nodes (`run_groups_seed`): a process crash,
    /// pause or failing disk, a partition and the node-level failure detector's
    /// reports hit every group at once. The node-level faults this group causes
    /// are recorded in `node_events` for the driver to apply to the others.
    shared_nodes: bool,
    /// This group draws the node-level faults (crashes, partitions, pauses,
    /// failing disks, failure-detector reports); in a shared run only one does.
    decides_node_faults: bool,
    node_events: Vec<NodeEvent>,
}

/// A fault of a node (its process, disk or links) rather than of one group.
#[derive(Debug, Clone)]
enum NodeEvent {
    Crash {
        node: usize,
        restart_at: u64,
    },
    Partition {
        blocked: BTreeSet<(u64, u64)>,
        heal_at: u64,
    },
    Pause {
        node: usize,
        until: u64,
    },
    FailWrites {
        node: usize,
        until: u64,
    },
    Suspect {
        node: usize,
        peer: usize,
    },
    HeardAgain {
        node: usize,
        peer: usize,
    },
}

fn entry_hash(e: &Entry) -> u64 {
    let id = body_id(&e.body).unwrap_or(0);
    ((e.kind as u64) << 56) ^ id
}

fn body_id(body: &Bytes) -> Option<u64> {
    (body.len() >= 8).then(|| u64::from_le_bytes(body[..8].try_into().unwrap()))
}

/// Spare nodes beyond the bootstrap voters: they start knowing no members and
/// join when a leader adds them (only in seeds with membership changes).
fn spares(k: &Knobs) -> u64 {
    if k.p_member_change > 0.0 {
        2
    } else {
        0
    }
}

fn config(k: &Knobs, id: u64, seed: u64, fault: Option<FaultVariant>) -> Config {
    let voters = if id <= k.nodes {
        (1..=k.nodes).map(NodeId).collect()
    } else {
        Vec::new()
    };
    let mut c = Config::new(NodeId(id), voters);
    c.election_timeout_ticks = k.election_timeout;
    c.heartbeat_interval_ticks = k.heartbeat.min(k.election_timeout - 1);
    c.max_append_entries = k.max_append_entries;
    c.max_append_bytes = 64 * 1024;
    c.max_inflight_appends = k.max_inflight;
    c.max_pending_proposals = k.max_pending;
    c.pre_vote = k.pre_vote;
    c.check_quorum = k.check_quorum;
    c.quiesce_after_ticks = k.quiesce_after;
    c.seed = seed;
    c.fault = fault;
    c
}

/// Runs one seed; `Err` describes the first violation (or core panic).
pub fn run_seed(seed: u64, opts: Options) -> Result<Stats, Failure> {
    let mut rng = Rng::new(seed);
    let mut k = Knobs::draw(&mut rng, seed);
    if matches!(
        opts.fault,
        Some(FaultVariant::UncheckedMembershipChanges | FaultVariant::ConcurrentMembershipChanges)
    ) {
        // The broken variant only shows under changes.
        k.p_member_change = 0.05;
    }
    let mut world = new_world(seed, opts, rng, k);
    let result = catch_unwind(AssertUnwindSafe(|| world.run()));
    let outcome = match result {
        Ok(Ok(())) => return Ok(world.stats),
        Ok(Err(reason)) => reason,
        Err(panic) => panic_reason(panic),
    };
    Err(Failure {
        seed,
        groups: 1,
        reason: format!("{outcome} (knobs: {:?})", world.k),
        trace: world.trace.iter().map(Ev::render).collect(),
    })
}

/// Runs one seed of `groups` Raft groups on the same nodes, as a broker runs its
/// metadata group and data groups. Each group has its own logs, hard states,
/// proposals, reads and messages (delayed, lost, duplicated and reordered on its
/// own); what the groups share is what the nodes share: a process crash (also in
/// the middle of one group's sync) stops every group on the node and each loses
/// its unsynced writes, a paused process or failing disk holds up all of them, a
/// partition cuts every group's links, a closed connection is reported to every
/// group after everything sent on it, and the node-level failure detector's
/// reports reach all groups at once. Every group is checked after every step, as
/// in a single-group run, and all must converge once faults stop. Membership stays
/// fixed: replica moves are one group's membership changes, which the
/// single-group runs cover.
pub fn run_groups_seed(seed: u64, groups: usize, opts: Options) -> Result<Stats, Failure> {
    const SALT: u64 = 0x6a09_e667_f3bc_c908;
    let mut rng = Rng::new(seed ^ SALT);
    let mut k = Knobs::draw(&mut rng, seed);
    k.p_member_change = 0.0;
    let mut worlds: Vec<World> = (0..groups)
        .map(|g| {
            let group_seed = (seed ^ SALT).wrapping_add((g as u64 + 1).wrapping_mul(0x9e37_79b9));
            let mut world = new_world(group_seed, opts, Rng::new(group_seed), k.clone());
            world.shared_nodes = groups > 1;
            world.decides_node_faults = g == 0;
            world
        })
        .collect();
    let current = std::cell::Cell::new(0usize);
    let total = opts.fault_ticks + opts.liveness_ticks;
    let result = catch_unwind(AssertUnwindSafe(|| -> Check {
        for now in 0..total {
            if now < opts.fault_ticks {
                // Before any group draws this tick's faults: a process restarts
                // with all its groups.
                for (g, world) in worlds.iter_mut().enumerate() {
                    current.set(g);
                    world.now = now;
                    world.restart_due()?;
                }
            }
            let mut converged = true;
            for g in 0..groups {
                current.set(g);
                converged &= worlds[g].tick(now)?;
                for event in std::mem::take(&mut worlds[g].node_events) {
                    for h in (0..groups).filter(|&h| h != g) {
                        current.set(h);
                        worlds[h].replay(&event)?;
                    }
                    if let NodeEvent::Crash { node, .. } = event {
                        report_closed_links(&mut worlds, node, now, &mut rng);
                    }
                }
            }
            // The sharing itself: a node's process is up, and not paused, in every
            // group or in none.
            for i in 0..worlds[0].slots.len() {
                let up = |w: &World| (w.live(i), w.slots[i].paused_until.max(now) - now);
                if let Some(g) = (1..groups).find(|&g| up(&worlds[g]) != up(&worlds[0])) {
                    current.set(g);
                    return Err(format!(
                        "simulator: n{} is (live, paused for) {:?} in group 1 but {:?} in group {}",
                        i + 1,
                        up(&worlds[0]),
                        up(&worlds[g]),
                        g + 1
                    ));
                }
            }
            if converged {
                for (g, world) in worlds.iter_mut().enumerate() {
                    current.set(g);
                    world.final_check()?;
                }
                return Ok(());
            }
        }
        let g = (0..groups).find(|&g| !worlds[g].converged()).unwrap_or(0);
        current.set(g);
        Err(worlds[g].liveness_failure())
    }));
    let outcome = match result {
        Ok(Ok(())) => {
            let mut stats = Stats::default();
            for w in &worlds {
                let s = w.stats;
                stats.ticks = stats.ticks.max(s.ticks);
                stats.events += s.events;
                stats.committed += s.committed;
                stats.crashes += s.crashes;
                stats.damages += s.damages;
                stats.elections += s.elections;
                stats.compactions += s.compactions;
                stats.installs += s.installs;
                stats.reads += s.reads;
                stats.membership_changes += s.membership_changes;
            }
            return Ok(stats);
        }
        Ok(Err(reason)) => reason,
        Err(panic) => panic_reason(panic),
    };
    let g = current.get();
    Err(Failure {
        seed,
        groups,
        reason: format!(
            "group {} of {groups}: {outcome} (knobs: {:?})",
            g + 1,
            worlds[g].k
        ),
        trace: worlds[g].trace.iter().map(Ev::render).collect(),
    })
}

/// A crashed node's connections close: every other node notices, in every group
/// at once, after everything the crashed node had sent on them (in any group).
fn report_closed_links(worlds: &mut [World], node: usize, now: u64, rng: &mut Rng) {
    if worlds[0].k.quiesce_after == 0 {
        return;
    }
    for peer in (0..worlds[0].slots.len()).filter(|&p| p != node) {
        let last_sent = worlds
            .iter()
            .map(|w| w.last_sent(node, peer))
            .max()
            .unwrap_or(0);
        let at = (now + rng.below(5)).max(last_sent);
        for w in worlds.iter_mut() {
            w.crash_reports.push((peer, node, at));
        }
    }
}

fn panic_reason(panic: Box<dyn std::any::Any + Send>) -> String {
    let msg = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into());
    format!("core panicked: {msg}")
}

/// A group's world: its nodes started, its first campaign drawn from a stream of
/// its own (so that the rest of a seed's run is drawn as before that knob existed).
fn new_world(seed: u64, opts: Options, rng: Rng, k: Knobs) -> World {
    let mut world = World {
        seed,
        opts,
        slots: Vec::new(),
        net: Vec::new(),
        blocked: BTreeSet::new(),
        heal_at: 0,
        quiet_until: 0,
        suspected: BTreeSet::new(),
        crash_reports: Vec::new(),
        now: 0,
        faults_on: true,
        leaders: BTreeMap::new(),
        registry: HashMap::new(),
        committed: Vec::new(),
        committed_cmd: Vec::new(),
        committed_voters: Vec::new(),
        chains: Vec::new(),
        committed_ids: BTreeSet::new(),
        next_id: 1,
        reads: HashMap::new(),
        next_read_id: 1,
        trace: VecDeque::new(),
        trace_len: trace_len(),
        stats: Stats::default(),
        to_remove: None,
        newest_committed_membership: LogIndex::ZERO,
        shared_nodes: false,
        decides_node_faults: true,
        node_events: Vec::new(),
        rng,
        k,
    };
    for id in 1..=world.k.nodes + spares(&world.k) {
        let cfg = config(&world.k, id, seed, opts.fault);
        world.slots.push(Slot {
            raft: Some(RawNode::new(cfg, SimLog::default(), HardState::default())),
            stopped_log: DiskLog::default(),
            snapshots: BTreeMap::new(),
            sm: (LogIndex::ZERO, 0),
            chain_hist: VecDeque::new(),
            hs: HardState::default(),
            paused_until: 0,
            restart_at: 0,
            fail_writes_until: 0,
            damaged: false,
            commit_seen: LogIndex::ZERO,
            commit_checked: LogIndex::ZERO,
            leader_term_checked: Term(0),
            incarnation: 0,
            persist: Persistence::default(),
            write: None,
            reads_ready: Vec::new(),
            member_ever: id <= world.k.nodes,
            member_at: (id <= world.k.nodes).then_some(LogIndex::ZERO),
            retired: false,
            joined: false,
            wiped_after: LogIndex::ZERO,
        });
    }
    // Drawn from a stream of its own so that the rest of a seed's run is drawn
    // as before this knob existed.
    let mut first = Rng::new(seed ^ 0x5eed_f125_7ca3_0001);
    if first.chance(0.5) {
        let node = 1 + first.below(world.k.nodes);
        let ticks = 1 + first.below(5) as u32;
        world.k.first_campaign = Some((node, ticks));
        if let Some(raft) = world.slots[node as usize - 1].raft.as_mut() {
            raft.campaign_within(ticks);
        }
    }
    world
}

type Check = Result<(), String>;

impl World {
    fn ev(&mut self, what: &'static str, node: u64, a: u64, b: u64, c: u64, d: u64) {
        self.ev5(what, node, [a, b, c, d, 0]);
    }

    fn ev5(&mut self, what: &'static str, node: u64, [a, b, c, d, e]: [u64; 5]) {
        if self.trace.len() == self.trace_len {
            self.trace.pop_front();
        }
        self.trace.push_back(Ev {
            now: self.now,
            what,
            node,
            a,
            b,
            c,
            d,
            e,
        });
        self.stats.events += 1;
    }

    fn live(&self, i: usize) -> bool {
        self.slots[i].raft.is_some()
    }

    fn active(&self, i: usize) -> bool {
        self.live(i) && self.slots[i].paused_until <= self.now
    }

    fn run(&mut self) -> Check {
        let total = self.opts.fault_ticks + self.opts.liveness_ticks;
        for now in 0..total {
            if self.tick(now)? {
                return self.final_check();
            }
        }
        Err(self.liveness_failure())
    }

    /// One tick of everything: faults, timers, the network, clients, the drivers.
    /// `true` once faults have stopped and the group has converged.
    fn tick(&mut self, now: u64) -> Result<bool, String> {
        let n = self.slots.len();
        self.now = now;
        self.stats.ticks = now;
        if now == self.opts.fault_ticks {
            self.stop_faults()?;
        }
        if self.faults_on {
            self.inject_faults()?;
        }
        self.detect_failures()?;
        for i in 0..n {
            if self.active(i) {
                let ticks = if self.faults_on && self.rng.chance(self.k.p_tick_skew) {
                    self.rng.below(3)
                } else {
                    1
                };
                for _ in 0..ticks {
                    self.slots[i].raft.as_mut().unwrap().tick();
                }
                self.ev("tick", i as u64 + 1, 0, 0, 0, 0);
                self.check()?;
            }
        }
        self.deliver_due()?;
        if self.faults_on && self.rng.chance(self.k.p_quiet) {
            self.quiet_until = now + 10 + self.rng.below(150);
            self.ev("quiet", 0, self.quiet_until, 0, 0, 0);
        }
        if self.faults_on {
            let quiet = now < self.quiet_until;
            for _ in 0..self.k.proposals_per_tick {
                if !quiet {
                    self.propose()?;
                }
            }
            for _ in 0..self.k.reads_per_tick {
                if !quiet {
                    self.read()?;
                }
            }
            if spares(&self.k) > 0 {
                self.record_bootstrap_membership()?;
            }
            if self.rng.chance(self.k.p_member_change) {
                self.change_membership()?;
            }
            if self.rng.chance(self.k.p_member_change / 4.0) {
                self.wipe_retired();
            }
        }
        self.retire_removed()?;
        for i in 0..n {
            if self.active(i) && (!self.faults_on || self.rng.chance(0.7)) {
                self.process_ready(i)?;
            }
            if self.active(i) && (!self.faults_on || self.rng.chance(0.5)) {
                self.complete_writes(i)?;
            }
        }
        Ok(!self.faults_on && self.converged())
    }

    fn liveness_failure(&self) -> String {
        let states: Vec<String> = self
            .slots
            .iter()
            .filter_map(|s| s.raft.as_ref())
            .map(|n| format!("{:?}", n.status()))
            .collect();
        format!(
            "liveness: no convergence within {} ticks after faults stopped; nodes: {}",
            self.opts.liveness_ticks,
            states.join("; ")
        )
    }

    // ----- Network -------------------------------------------------------------------

    fn send(&mut self, mut msg: Message) {
        let (from, to) = (msg.from.0, msg.to.0);
        let mut snap = None;
        if let MessageBody::InstallSnapshot { index, .. } = msg.body {
            // The driver attaches the snapshot the log starts after, and the
            // membership recorded with it.
            let Some(s) = self.slots[from as usize - 1].snapshots.get(&index).cloned() else {
                return;
            };
            let Some(membership) = s.membership.clone() else {
                return;
            };
            msg.body = MessageBody::InstallSnapshot {
                index: s.index,
                snapshot_term: s.term,
                membership,
            };
            snap = Some(s);
        }
        if self.faults_on && (self.rng.chance(self.k.p_drop) || self.blocked.contains(&(from, to)))
        {
            return;
        }
        // Once faults stop, delays stay well below the election timeout.
        let max_delay = if self.faults_on {
            self.k.max_delay
        } else {
            self.k.max_delay.min(2)
        };
        let delay = self.rng.below(max_delay + 1);
        if self.faults_on && self.rng.chance(self.k.p_dup) {
            let extra = self.rng.below(max_delay + 2);
            self.net.push(Flight {
                at: self.now + extra,
                msg: msg.clone(),
                snap: snap.clone(),
            });
        }
        self.net.push(Flight {
            at: self.now + delay,
            msg,
            snap,
        });
    }

    fn deliver_due(&mut self) -> Check {
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.net.len() {
            if self.net[i].at <= self.now {
                due.push(self.net.swap_remove(i));
            } else {
                i += 1;
            }
        }
        // Reorder: deliver in a random order.
        for j in (1..due.len()).rev() {
            let r = self.rng.below(j as u64 + 1) as usize;
            due.swap(j, r);
        }
        for flight in due {
            let to = flight.msg.to.0 as usize - 1;
            if !self.live(to) {
                continue;
            }
            if !self.active(to) {
                self.net.push(Flight {
                    at: self.now + 1,
                    ..flight
                });
                continue;
            }
            if self.faults_on && self.blocked.contains(&(flight.msg.from.0, flight.msg.to.0)) {
                continue;
            }
            if let (Some(snap), MessageBody::InstallSnapshot { .. }) =
                (flight.snap, &flight.msg.body)
            {
                // Received whole: made durable only if the core will install it.
                let node = self.slots[to].raft.as_ref().unwrap();
                if node.accepts_snapshot(flight.msg.term, snap.index, snap.term) {
                    self.slots[to].snapshots.insert(snap.index, snap.clone());
                }
            }
            self.step(to, flight.msg)?;
            if self.rng.chance(0.5) {
                self.process_ready(to)?;
            }
        }
        Ok(())
    }

    fn step(&mut self, i: usize, msg: Message) -> Check {
        let t = msg.term.0;
        let f = msg.from.0;
        let fields = match &msg.body {
            MessageBody::Append {
                prev_log_index,
                entries,
                commit_index,
                ..
            } => [f, t, prev_log_index.0, entries.len() as u64, commit_index.0],
            MessageBody::AppendResponse {
                success,
                match_index,
                reject_index,
                ..
            } => [f, t, *success as u64, match_index.0, reject_index.0],
            MessageBody::Vote {
                last_log_index,
                last_log_term,
                ..
            } => [f, t, last_log_index.0, last_log_term.0, 0],
            MessageBody::VoteResponse { granted, .. } => [f, t, *granted as u64, 0, 0],
            MessageBody::Heartbeat {
                commit_index,
                read_round,
                quiesce,
            } => [f, t, commit_index.0, *read_round, *quiesce as u64],
            MessageBody::HeartbeatResponse {
                read_round,
                quiesced,
            } => [f, t, *read_round, *quiesced as u64, 0],
            MessageBody::ReadIndex { id } => [f, t, *id, 0, 0],
            MessageBody::ReadIndexResponse { id, index } => {
                [f, t, *id, index.map_or(0, |i| i.0), index.is_some() as u64]
            }
            MessageBody::InstallSnapshot {
                index,
                snapshot_term,
                ..
            } => [f, t, index.0, snapshot_term.0, 0],
            _ => [f, t, 0, 0, 0],
        };
        self.ev5(msg.body.kind_name(), i as u64 + 1, fields);
        let node = self.slots[i].raft.as_mut().unwrap();
        // Storage errors are expected while writes fail; the core stays consistent.
        let _ = node.step(msg);
        self.check()
    }

    // ----- The driver ----------------------------------------------------------------

    /// Carries out node `i`'s next Ready through the broker's own Ready loop
    /// ([`raft::handle_ready`]), with this world as its I/O.
    fn process_ready(&mut self, i: usize) -> Check {
        raft::handle_ready(&mut Replica { world: self, i })?;
        self.check()
    }

    /// Starts node `i`'s next write if none is in flight, and completes it at once
    /// with `p_sync_now` (else at a later tick, with more readies queued behind it).
    fn start_write(&mut self, i: usize) -> Check {
        let slot = &mut self.slots[i];
        if slot.write.is_none() {
            if let Some(work) = slot.persist.start() {
                let ops = slot.raft.as_ref().unwrap().log().begin_sync();
                slot.write = Some((work, ops));
            }
        }
        if !self.faults_on || self.rng.chance(self.k.p_sync_now) {
            self.complete_writes(i)?;
        }
        Ok(())
    }

    /// The state machine applies one committed entry; its state must equal every
    /// other node's at that index.
    fn apply_entry(&mut self, i: usize, e: &Entry) -> Check {
        let slot = &mut self.slots[i];
        if e.index != slot.sm.0.next() {
            return Err(format!(
                "n{} applies {} right after {}",
                i + 1,
                e.index,
                slot.sm.0
            ));
        }
        let chain = chain_next(slot.sm.1, e);
        slot.sm = (e.index, chain);
        if slot.chain_hist.len() == CHAIN_HISTORY {
            slot.chain_hist.pop_front();
        }
        slot.chain_hist.push_back(slot.sm);
        let pos = e.index.0 as usize - 1;
        if pos < self.chains.len() {
            if self.chains[pos] != chain {
                return Err(format!(
                    "state machine safety: n{} applied a different sequence up to {}",
                    i + 1,
                    e.index
                ));
            }
        } else {
            assert_eq!(pos, self.chains.len(), "applied past the first gap");
            self.chains.push(chain);
        }
        if e.kind == EntryKind::Command {
            if let Some(id) = body_id(&e.body) {
                self.committed_ids.insert(id);
            }
        }
        Ok(())
    }

    /// Restores a node's state machine from one of its snapshots.
    fn restore_state(&mut self, i: usize, snap: SimSnap) -> Check {
        if snap.index > LogIndex::ZERO {
            let pos = snap.index.0 as usize - 1;
            if self.chains.get(pos) != Some(&snap.chain) {
                return Err(format!(
                    "n{}: snapshot at {} does not hold the state every node applied",
                    i + 1,
                    snap.index
                ));
            }
        }
        let slot = &mut self.slots[i];
        slot.sm = (snap.index, snap.chain);
        slot.chain_hist.clear();
        slot.chain_hist.push_back(slot.sm);
        Ok(())
    }

    /// Sometimes snapshots the state at a recent applied point and compacts the log
    /// up to it (only with every write synced: the broker deletes whole, long-synced
    /// segments).
    fn maybe_compact(&mut self, i: usize) {
        if !self.faults_on || !self.rng.chance(self.k.p_compact) {
            return;
        }
        let slot = &self.slots[i];
        let Some(node) = slot.raft.as_ref() else {
            return;
        };
        if !slot.persist.is_idle() || !node.log().is_synced() {
            return;
        }
        let first = node.log().disk().first_index();
        let candidates: Vec<(LogIndex, u64)> = slot
            .chain_hist
            .iter()
            .copied()
            .filter(|(idx, _)| *idx >= first && *idx <= node.log().last_index())
            .collect();
        if candidates.is_empty() {
            return;
        }
        let (index, chain) = candidates[self.rng.below(candidates.len() as u64) as usize];
        let term = node.log().term_at(index).expect("held");
        let id = i as u64 + 1;
        let membership = node.membership_at(index).cloned();
        let slot = &mut self.slots[i];
        slot.snapshots.insert(
            index,
            SimSnap {
                index,
                term,
                chain,
                membership,
            },
        );
        slot.raft.as_mut().unwrap().log_mut().compact(index);
        slot.snapshots.retain(|&k, _| k >= index);
        self.ev("compact", id, index.0, 0, 0, 0);
        self.stats.compactions += 1;
    }

    /// Completes node `i`'s write in flight: syncs the log writes it covers, then
    /// stores its hard state, then hands it back to the Ready loop
    /// ([`raft::write_done`]), and starts the next one.
    fn complete_writes(&mut self, i: usize) -> Check {
        if self.slots[i].write.is_none() {
            return Ok(());
        }
        let id = i as u64 + 1;
        if self.faults_on && self.rng.chance(self.k.p_crash_mid_ready) {
            self.ev("crash-before-sync", id, 0, 0, 0, 0);
            return self.crash_process(i);
        }
        let (work, ops) = self.slots[i].write.take().unwrap();
        let log = self.slots[i].raft.as_mut().unwrap().log_mut();
        log.finish_sync(ops);
        let synced = log.durable_last().1;
        if self.faults_on && self.rng.chance(self.k.p_crash_mid_ready) {
            self.ev("crash-after-sync", id, 0, 0, 0, 0);
            return self.crash_process(i);
        }
        if let Some(hs) = work.hard_state {
            self.slots[i].hs = hs;
        }
        self.ev(
            "synced",
            id,
            work.unsynced.map_or(0, |u| u.0 .0),
            synced.0,
            0,
            0,
        );
        raft::write_done(&mut Replica { world: self, i }, work, synced)?;
        if self.slots[i].raft.is_none() {
            return self.check();
        }
        // The next write starts at once, as the broker's does; it completes later.
        let slot = &mut self.slots[i];
        if let Some(work) = slot.persist.start() {
            let ops = slot.raft.as_ref().unwrap().log().begin_sync();
            slot.write = Some((work, ops));
        }
        self.maybe_compact(i);
        self.check()
    }

    /// Asks a read at a random node; it is served once its read index is applied.
    fn read(&mut self) -> Check {
        let n = self.slots.len();
        let target = self.rng.below(n as u64) as usize;
        if !self.active(target) {
            return Ok(());
        }
        let id = self.next_read_id;
        self.next_read_id += 1;
        // Any entry some node knows committed may have been acknowledged already.
        let required = self.committed.len() as u64;
        let node = self.slots[target].raft.as_mut().unwrap();
        if node.read_index(id).is_ok() {
            self.reads.insert(id, required);
            self.ev("read", target as u64 + 1, id, required, 0, 0);
        }
        self.check()
    }

    /// Linearizable reads: a read served at node `i` must reflect every entry
    /// committed (anywhere) before it was asked. Reads in real-time order then never
    /// go back: an earlier read saw at most what was committed when it ended.
    fn serve_reads(&mut self, i: usize) -> Check {
        let applied = self.slots[i].sm.0;
        let mut k = 0;
        while k < self.slots[i].reads_ready.len() {
            let (read_id, index) = self.slots[i].reads_ready[k];
            if index > applied {
                k += 1;
                continue;
            }
            self.slots[i].reads_ready.swap_remove(k);
            let Some(required) = self.reads.remove(&read_id) else {
                continue;
            };
            self.ev("read-served", i as u64 + 1, read_id, applied.0, required, 0);
            self.stats.reads += 1;
            if applied.0 < required {
                return Err(format!(
                    "linearizability: n{} served read {read_id} at applied index {applied}, \
                     but index {required} was committed before the read was asked",
                    i + 1
                ));
            }
        }
        Ok(())
    }

    fn propose(&mut self) -> Check {
        let n = self.slots.len();
        let leader = (0..n).find(|&i| {
            self.active(i) && self.slots[i].raft.as_ref().unwrap().role() == Role::Leader
        });
        let target = match leader {
            Some(l) if self.rng.chance(0.9) => l,
            _ => self.rng.below(n as u64) as usize,
        };
        if !self.active(target) {
            return Ok(());
        }
        let id = self.next_id;
        let mut body = Vec::with_capacity(16);
        body.extend_from_slice(&id.to_le_bytes());
        body.extend_from_slice(&(id ^ self.seed).to_le_bytes());
        let node = self.slots[target].raft.as_mut().unwrap();
        let batch = self.rng.chance(0.2);
        let result = if batch {
            let second = (id + 1).to_le_bytes().repeat(2);
            node.propose_batch(
                EntryKind::Command,
                &[Bytes::from(body), Bytes::from(second)],
            )
            .map(|(first, last, term)| (first, term, last.0 - first.0 + 1))
        } else {
            node.propose(EntryKind::Command, Bytes::from(body))
                .map(|(idx, term)| (idx, term, 1))
        };
        match result {
            Ok((idx, term, count)) => {
                self.next_id += count;
                self.ev("propose", target as u64 + 1, id, idx.0, term.0, count);
            }
            Err(ProposeError::NotLeader { .. })
            | Err(ProposeError::Busy)
            | Err(ProposeError::TransferInProgress)
            | Err(ProposeError::Storage(_))
            | Err(ProposeError::Membership(_)) => {
                self.next_id += 2;
            }
        }
        self.check()
    }

    // ----- Faults --------------------------------------------------------------------

    /// Restarts the crashed nodes whose time has come; ends write failures.
    fn restart_due(&mut self) -> Check {
        for i in 0..self.slots.len() {
            if !self.live(i) && !self.slots[i].retired && self.slots[i].restart_at <= self.now {
                self.restart(i)?;
            }
            if self.slots[i].fail_writes_until == self.now {
                if let Some(node) = self.slots[i].raft.as_mut() {
                    node.log_mut().fail_writes = false;
                }
            }
        }
        Ok(())
    }

    fn inject_faults(&mut self) -> Check {
        let n = self.slots.len();
        self.restart_due()?;
        if self.decides_node_faults && self.rng.chance(self.k.p_crash) {
            // Leaders are the most interesting victims.
            let leader = (0..n).find(|&i| {
                self.live(i) && self.slots[i].raft.as_ref().unwrap().role() == Role::Leader
            });
            let i = match leader {
                Some(l) if self.rng.chance(0.5) => l,
                _ => self.rng.below(n as u64) as usize,
            };
            if self.live(i) {
                self.ev("crash", i as u64 + 1, 0, 0, 0, 0);
                self.crash_process(i)?;
                self.maybe_damage(i);
            }
        }
        if self.heal_at <= self.now && !self.blocked.is_empty() {
            self.blocked.clear();
            self.ev("heal", 0, 0, 0, 0, 0);
        }
        if self.decides_node_faults && self.rng.chance(self.k.p_partition) {
            let mask = self.rng.below((1 << n) - 2) + 1;
            let one_way = self.rng.chance(0.3);
            for a in 0..n as u64 {
                for b in 0..n as u64 {
                    let in_a = mask & (1 << a) != 0;
                    let in_b = mask & (1 << b) != 0;
                    if in_a && !in_b {
                        self.blocked.insert((a + 1, b + 1));
                        if !one_way {
                            self.blocked.insert((b + 1, a + 1));
                        }
                    }
                }
            }
            self.heal_at = self.now + 10 + self.rng.below(60);
            self.ev("partition", 0, mask, one_way as u64, self.heal_at, 0);
            self.node_event(NodeEvent::Partition {
                blocked: self.blocked.clone(),
                heal_at: self.heal_at,
            });
        }
        if self.decides_node_faults && self.rng.chance(self.k.p_pause) {
            let i = self.rng.below(n as u64) as usize;
            self.slots[i].paused_until = self.now + 1 + self.rng.below(30);
            self.ev("pause", i as u64 + 1, self.slots[i].paused_until, 0, 0, 0);
            self.node_event(NodeEvent::Pause {
                node: i,
                until: self.slots[i].paused_until,
            });
        }
        if self.rng.chance(self.k.p_transfer) {
            let to = NodeId(self.rng.below(n as u64) + 1);
            for i in 0..n {
                if self.active(i) && self.slots[i].raft.as_ref().unwrap().role() == Role::Leader {
                    let _ = self.slots[i].raft.as_mut().unwrap().transfer_leadership(to);
                    self.ev("transfer", i as u64 + 1, to.0, 0, 0, 0);
                }
            }
        }
        if self.decides_node_faults && self.rng.chance(self.k.p_fail_writes) {
            let i = self.rng.below(n as u64) as usize;
            if let Some(node) = self.slots[i].raft.as_mut() {
                node.log_mut().fail_writes = true;
                self.slots[i].fail_writes_until = self.now + 1 + self.rng.below(10);
                self.node_event(NodeEvent::FailWrites {
                    node: i,
                    until: self.slots[i].fail_writes_until,
                });
                self.ev(
                    "fail-writes",
                    i as u64 + 1,
                    self.slots[i].fail_writes_until,
                    0,
                    0,
                    0,
                );
            }
        }
        self.check()
    }

    /// The leader proposes a random single-server change: add a spare as a
    /// learner, promote a learner, demote or remove a voter (never below three
    /// voters, never above five), or remove a learner.
    fn change_membership(&mut self) -> Check {
        let n = self.slots.len();
        let Some(l) = (0..n).find(|&i| {
            self.active(i) && self.slots[i].raft.as_ref().unwrap().role() == Role::Leader
        }) else {
            return Ok(());
        };
        let leader = NodeId(l as u64 + 1);
        let current = self.slots[l].raft.as_ref().unwrap().membership().clone();
        let mut next = current.clone();
        let max_voters = (self.k.nodes as usize + 1).min(5);
        let spare = (0..n)
            .filter(|&i| !self.slots[i].member_ever && !self.slots[i].retired)
            .map(|i| NodeId(i as u64 + 1))
            .find(|id| !current.contains(*id));
        let removable: Vec<NodeId> = current
            .voters
            .iter()
            .copied()
            .filter(|v| *v != leader)
            .collect();
        // Removing the leader: it hands over first; the next leader removes it.
        if let Some(old) = self.to_remove.filter(|old| *old != leader) {
            self.to_remove = None;
            if current.is_voter(old) && current.voters.len() > 3 {
                next.voters.retain(|v| *v != old);
                return self.propose_change(l, next);
            }
        }
        if current.voters.len() > 3 && self.rng.chance(0.1) && !removable.is_empty() {
            let to = removable[self.rng.below(removable.len() as u64) as usize];
            let node = self.slots[l].raft.as_mut().unwrap();
            if node.transfer_leadership(to).is_ok() {
                self.to_remove = Some(leader);
                self.ev("transfer", leader.0, to.0, 0, 0, 0);
            }
            return self.check();
        }
        let unchecked = self.opts.fault == Some(FaultVariant::UncheckedMembershipChanges);
        match self.rng.below(if unchecked { 7 } else { 5 }) {
            // Broken variant only: swap a voter for a learner or a spare in one
            // change (two voters change at once).
            5 | 6 if !removable.is_empty() => {
                let out = removable[self.rng.below(removable.len() as u64) as usize];
                let incoming = current.learners.first().copied().or(spare);
                let Some(incoming) = incoming else {
                    return Ok(());
                };
                next.voters.retain(|v| *v != out);
                next.learners.retain(|l| *l != incoming);
                next.voters.push(incoming);
            }
            0 => match spare {
                Some(id) => next.learners.push(id),
                None => return Ok(()),
            },
            1 if !current.learners.is_empty() && current.voters.len() < max_voters => {
                let id = current.learners[self.rng.below(current.learners.len() as u64) as usize];
                // As the broker does: only a learner that holds the entry that added
                // it (it knows it is a member, so it may vote) is promoted.
                let node = self.slots[l].raft.as_ref().unwrap();
                let added_at = node.membership_entry().index;
                let caught_up = node
                    .status()
                    .progress
                    .iter()
                    .any(|p| p.id == id && p.match_index >= added_at);
                if !caught_up {
                    return Ok(());
                }
                next.learners.retain(|l| *l != id);
                next.voters.push(id);
            }
            2 | 3 if current.voters.len() > 3 && !removable.is_empty() => {
                let id = removable[self.rng.below(removable.len() as u64) as usize];
                next.voters.retain(|v| *v != id);
                if self.rng.chance(0.5) {
                    next.learners.push(id);
                }
            }
            4 if !current.learners.is_empty() => {
                let id = current.learners[self.rng.below(current.learners.len() as u64) as usize];
                next.learners.retain(|l| *l != id);
            }
            _ => return Ok(()),
        }
        self.propose_change(l, next)
    }

    /// Leader `l` proposes `next`; the broken `ConcurrentMembershipChanges` variant
    /// sometimes follows up with a second change at once.
    fn propose_change(&mut self, l: usize, mut next: Membership) -> Check {
        next.voters.sort_unstable();
        next.learners.sort_unstable();
        let leader = NodeId(l as u64 + 1);
        if self.opts.fault == Some(FaultVariant::ConcurrentMembershipChanges)
            && self.rng.chance(0.5)
        {
            self.propose_one(l, leader, next.clone())?;
            // A second single-server change on top, before the first commits.
            if next.voters.len() > 3 {
                if let Some(v) = next.voters.iter().copied().find(|v| *v != leader) {
                    next.voters.retain(|x| *x != v);
                }
            } else if let Some(s) = next.learners.first().copied() {
                next.learners.retain(|x| *x != s);
                next.voters.push(s);
                next.voters.sort_unstable();
            }
        }
        self.propose_one(l, leader, next)
    }

    fn propose_one(&mut self, l: usize, leader: NodeId, next: Membership) -> Check {
        let node = self.slots[l].raft.as_mut().unwrap();
        if let Ok((index, _)) = node.propose_membership(&next, b"") {
            for id in next.members() {
                self.slots[id.0 as usize - 1].member_ever = true;
            }
            self.stats.membership_changes += 1;
            self.ev5(
                "membership",
                leader.0,
                [
                    index.0,
                    ids_mask(&next.voters),
                    ids_mask(&next.learners),
                    0,
                    0,
                ],
            );
        }
        self.check()
    }

    /// A removed node's machine comes back with an empty disk: it restarts as a new
    /// node under its old id, knowing no members, and may be added again.
    fn wipe_retired(&mut self) {
        let Some(i) = (0..self.slots.len()).find(|&i| self.slots[i].retired) else {
            return;
        };
        let slot = &mut self.slots[i];
        slot.stopped_log = DiskLog::default();
        slot.snapshots.clear();
        slot.hs = HardState::default();
        slot.sm = (LogIndex::ZERO, 0);
        slot.chain_hist.clear();
        slot.damaged = false;
        slot.retired = false;
        slot.joined = true;
        slot.member_ever = false;
        slot.member_at = None;
        slot.wiped_after = self.newest_committed_membership;
        slot.restart_at = self.now;
        self.ev("wipe-rejoin", i as u64 + 1, 0, 0, 0, 0);
    }

    /// As the broker's first leader does: writes the bootstrap membership into the
    /// log, so nodes that join later (knowing no members) learn it from there.
    fn record_bootstrap_membership(&mut self) -> Check {
        let n = self.slots.len();
        let Some(l) = (0..n).find(|&i| {
            self.active(i) && self.slots[i].raft.as_ref().unwrap().role() == Role::Leader
        }) else {
            return Ok(());
        };
        let node = self.slots[l].raft.as_mut().unwrap();
        if node.membership_entry().index > LogIndex::ZERO {
            return Ok(());
        }
        let membership = node.membership().clone();
        if let Ok((index, _)) = node.propose_membership(&membership, b"bootstrap") {
            self.ev(
                "membership",
                l as u64 + 1,
                index.0,
                ids_mask(&membership.voters),
                0,
                0,
            );
        }
        self.check()
    }

    /// Stops for good the nodes the newest committed membership no longer lists
    /// (what an operator does with a removed broker). "Newest": the highest-index
    /// membership entry any live node knows committed, so a deposed leader's older
    /// view never retires a node added since.
    fn retire_removed(&mut self) -> Check {
        let n = self.slots.len();
        // Committed memberships are ordered by index: note, for every node, the
        // newest committed one listing it.
        let committed: Vec<MembershipEntry> = (0..n)
            .filter_map(|i| self.slots[i].raft.as_ref())
            .filter(|node| node.membership_change_pending().is_none())
            .map(|node| node.membership_entry().clone())
            .filter(|e| e.index > LogIndex::ZERO)
            .collect();
        for e in &committed {
            for id in e.membership.members() {
                let slot = &mut self.slots[id.0 as usize - 1];
                if e.index > slot.wiped_after {
                    slot.member_at = Some(slot.member_at.map_or(e.index, |at| at.max(e.index)));
                }
            }
        }
        let Some(newest) = committed.iter().max_by_key(|e| e.index) else {
            return Ok(());
        };
        self.newest_committed_membership = newest.index;
        for i in 0..n {
            let id = NodeId(i as u64 + 1);
            let slot = &self.slots[i];
            let removed = slot
                .member_at
                .is_some_and(|at| at < newest.index && !newest.membership.contains(id));
            if removed && !slot.retired {
                self.slots[i].retired = true;
                self.ev("retire", id.0, newest.index.0, 0, 0, 0);
                if self.live(i) {
                    self.crash(i)?;
                }
            }
        }
        Ok(())
    }

    /// Damages a stopped node's disk, keeping at most f nodes damaged.
    fn maybe_damage(&mut self, i: usize) {
        // Membership changes never take the voters below three: one damaged node at
        // most then, or acknowledged entries may be lost legitimately.
        let f = if self.k.p_member_change > 0.0 {
            1
        } else {
            (self.slots.len() - 1) / 2
        };
        let damaged = self.slots.iter().filter(|s| s.damaged).count();
        if damaged < f && self.rng.chance(self.k.p_damage) {
            let len = self.slots[i].stopped_log.entries.len() as u64;
            if len > 0 {
                let cut = self.rng.below(len) as usize;
                self.slots[i].stopped_log.entries.truncate(cut);
                self.slots[i].damaged = true;
                self.stats.damages += 1;
                let mark = self.slots[i].hs.acked_index.0;
                self.ev("damage-log", i as u64 + 1, cut as u64, mark, 0, 0);
            }
        }
    }

    /// A node's process crashes: in a shared run, with every group on it.
    fn crash_process(&mut self, i: usize) -> Check {
        self.crash(i)?;
        self.node_event(NodeEvent::Crash {
            node: i,
            restart_at: self.slots[i].restart_at,
        });
        Ok(())
    }

    fn node_event(&mut self, event: NodeEvent) {
        if self.shared_nodes {
            self.node_events.push(event);
        }
    }

    /// Applies a node-level fault another group of the same nodes drew.
    fn replay(&mut self, event: &NodeEvent) -> Check {
        match *event {
            NodeEvent::Crash { node, restart_at } => {
                if self.live(node) {
                    self.ev("crash", node as u64 + 1, 0, 0, 0, 0);
                    self.crash(node)?;
                    self.maybe_damage(node);
                }
                self.slots[node].restart_at = restart_at;
            }
            NodeEvent::Partition {
                ref blocked,
                heal_at,
            } => {
                self.blocked = blocked.clone();
                self.heal_at = heal_at;
                self.ev("partition", 0, 0, 0, heal_at, 0);
            }
            NodeEvent::Pause { node, until } => {
                self.slots[node].paused_until = until;
                self.ev("pause", node as u64 + 1, until, 0, 0, 0);
            }
            NodeEvent::FailWrites { node, until } => {
                if let Some(raft) = self.slots[node].raft.as_mut() {
                    raft.log_mut().fail_writes = true;
                    self.slots[node].fail_writes_until = until;
                    self.ev("fail-writes", node as u64 + 1, until, 0, 0, 0);
                }
            }
            NodeEvent::Suspect { node, peer } => {
                if let Some(raft) = self.slots[node].raft.as_mut() {
                    raft.peer_unreachable(NodeId(peer as u64 + 1));
                    self.suspected.insert((node, peer));
                    self.ev("suspect", node as u64 + 1, peer as u64 + 1, 0, 0, 0);
                }
            }
            NodeEvent::HeardAgain { node, peer } => {
                if let Some(raft) = self.slots[node].raft.as_mut() {
                    raft.peer_reachable(NodeId(peer as u64 + 1));
                    self.suspected.remove(&(node, peer));
                    self.ev("heard-again", node as u64 + 1, peer as u64 + 1, 0, 0, 0);
                }
            }
        }
        self.check()
    }

    /// The tick after which everything `from` sent to `to` has been delivered.
    fn last_sent(&self, from: usize, to: usize) -> u64 {
        let (from, to) = (from as u64 + 1, to as u64 + 1);
        self.net
            .iter()
            .filter(|f| f.msg.from.0 == from && f.msg.to.0 == to)
            .map(|f| f.at + 1)
            .max()
            .unwrap_or(0)
    }

    fn crash(&mut self, i: usize) -> Check {
        let node = self.slots[i].raft.take().expect("crash a live node");
        // In a shared run the driver reports the closed connections to every group.
        if self.k.quiesce_after > 0 && !self.shared_nodes {
            for peer in (0..self.slots.len()).filter(|&p| p != i) {
                // A closed connection is noticed after everything sent on it.
                let last_sent = self.last_sent(i, peer);
                let at = (self.now + self.rng.below(5)).max(last_sent);
                self.crash_reports.push((peer, i, at));
            }
        }
        self.slots[i].persist.reset();
        self.slots[i].write = None;
        // Reads waiting there are lost with the process (their clients retry).
        for (read_id, _) in std::mem::take(&mut self.slots[i].reads_ready) {
            self.reads.remove(&read_id);
        }
        let (_, _, log) = into_parts(node);
        let durable = log.crash(&mut self.rng);
        self.ev("crashed", i as u64 + 1, durable.last_index().0, 0, 0, 0);
        // Damage is repaired once the durable log is back above the durable mark.
        if durable.last_index() >= self.slots[i].hs.acked_index {
            self.slots[i].damaged = false;
        }
        self.slots[i].stopped_log = durable;
        self.slots[i].restart_at = self.now + 3 + self.rng.below(40);
        self.stats.crashes += 1;
        self.check()
    }

    fn restart(&mut self, i: usize) -> Check {
        let slot = &mut self.slots[i];
        slot.incarnation += 1;
        let disk = std::mem::take(&mut slot.stopped_log);
        // Start-up reconciliation, as the broker does it: snapshots the log does
        // not hold (an install the crash interrupted before the log reset was
        // durable) are dropped; the state machine starts from the snapshot the log
        // starts after.
        slot.snapshots
            .retain(|&k, snap| k == disk.snap.0 || disk.term_at(k) == Some(snap.term));
        let base_index = disk.snap.0;
        let base = if base_index == LogIndex::ZERO {
            SimSnap {
                index: LogIndex::ZERO,
                term: Term(0),
                chain: 0,
                membership: None,
            }
        } else {
            match slot.snapshots.get(&base_index) {
                Some(s) => s.clone(),
                None => {
                    return Err(format!(
                        "n{}: the log starts after {base_index} but no snapshot is there",
                        i + 1
                    ))
                }
            }
        };
        slot.snapshots.retain(|&k, _| k >= base_index);
        let base_membership = base.membership.clone();
        self.restore_state(i, base)?;
        let slot = &mut self.slots[i];
        let log = SimLog::from_durable(disk);
        let mut cfg = config(
            &self.k,
            i as u64 + 1,
            self.seed.wrapping_add(slot.incarnation * 7919),
            self.opts.fault,
        );
        if slot.joined {
            // A new node under an old id: it knows no members until added.
            cfg.voters.clear();
        }
        if let Some(m) = base_membership {
            // The membership at the log's start is the snapshot's.
            cfg.voters = m.membership.voters.clone();
            cfg.learners = m.membership.learners.clone();
            cfg.membership_context = m.context;
        }
        let node = RawNode::new(cfg, log, slot.hs);
        let recovering = node.status().recovering;
        let last = node.log().last_index().0;
        if recovering && !slot.damaged {
            return Err(format!(
                "n{} restarted below its recovery mark without disk damage (last {last}, mark {})",
                i + 1,
                slot.hs.acked_index
            ));
        }
        slot.raft = Some(node);
        slot.commit_seen = LogIndex::ZERO;
        slot.commit_checked = LogIndex::ZERO;
        slot.leader_term_checked = Term(0);
        slot.paused_until = 0;
        self.ev(
            "restart",
            i as u64 + 1,
            last,
            self.slots[i].hs.acked_index.0,
            0,
            0,
        );
        self.check()
    }

    /// Each node's failure detector: a peer that is down, paused or cut off from
    /// it is reported, after a random delay (a chance per tick); with
    /// `p_false_suspect`, a live and reachable one is too.
    fn detect_failures(&mut self) -> Check {
        if self.k.quiesce_after == 0 {
            return Ok(());
        }
        let n = self.slots.len();
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.crash_reports)
            .into_iter()
            .partition(|r| r.2 <= now);
        self.crash_reports = later;
        for (i, j, _) in due {
            if self.live(i) {
                self.ev("link-closed", i as u64 + 1, j as u64 + 1, 0, 0, 0);
                self.suspected.insert((i, j));
                let node = self.slots[i].raft.as_mut().unwrap();
                node.peer_unreachable(NodeId(j as u64 + 1));
                self.check()?;
            }
        }
        if !self.decides_node_faults {
            return Ok(());
        }
        for i in 0..n {
            if !self.active(i) {
                continue;
            }
            for j in 0..n {
                if i == j {
                    continue;
                }
                let cut = !self.active(j)
                    || (self.faults_on && self.blocked.contains(&(j as u64 + 1, i as u64 + 1)));
                let report = if cut {
                    !self.suspected.contains(&(i, j)) && self.rng.chance(0.25)
                } else {
                    self.faults_on && self.rng.chance(self.k.p_false_suspect)
                };
                if report {
                    self.ev("suspect", i as u64 + 1, j as u64 + 1, cut as u64, 0, 0);
                    self.node_event(NodeEvent::Suspect { node: i, peer: j });
                    self.suspected.insert((i, j));
                    let node = self.slots[i].raft.as_mut().unwrap();
                    node.peer_unreachable(NodeId(j as u64 + 1));
                    self.check()?;
                } else if !cut && self.suspected.contains(&(i, j)) && self.rng.chance(0.25) {
                    self.ev("heard-again", i as u64 + 1, j as u64 + 1, 0, 0, 0);
                    self.node_event(NodeEvent::HeardAgain { node: i, peer: j });
                    self.suspected.remove(&(i, j));
                    let node = self.slots[i].raft.as_mut().unwrap();
                    node.peer_reachable(NodeId(j as u64 + 1));
                    self.check()?;
                }
            }
        }
        Ok(())
    }

    fn stop_faults(&mut self) -> Check {
        self.faults_on = false;
        self.blocked.clear();
        for i in 0..self.slots.len() {
            self.slots[i].paused_until = 0;
            if self.slots[i].retired {
                continue;
            }
            if !self.live(i) {
                self.restart(i)?;
            }
            self.slots[i].raft.as_mut().unwrap().log_mut().fail_writes = false;
        }
        self.ev("faults-stop", 0, 0, 0, 0, 0);
        Ok(())
    }
}

/// A bit per node id (for the trace).
fn ids_mask(ids: &[NodeId]) -> u64 {
    ids.iter().fold(0, |m, id| m | 1 << id.0)
}

fn into_parts(node: RawNode<SimLog>) -> ((), (), SimLog) {
    ((), (), node.into_log())
}

/// One node of the world as the Ready loop's driver: the simulated network, disk
/// and state machine, with the checks.
struct Replica<'a> {
    world: &'a mut World,
    i: usize,
}

impl Driver for Replica<'_> {
    type Log = SimLog;
    type Error = String;

    fn raft(&mut self) -> &mut RawNode<SimLog> {
        self.world.slots[self.i]
            .raft
            .as_mut()
            .expect("a running node's Ready")
    }

    fn persistence(&mut self) -> &mut Persistence {
        &mut self.world.slots[self.i].persist
    }

    fn observe(&mut self, rd: &Ready) {
        self.world.ev(
            "ready",
            self.i as u64 + 1,
            rd.unsynced.map_or(0, |u| u.0 .0),
            rd.hard_state.map_or(0, |h| h.term.0),
            rd.commit_index.0,
            rd.persisted_messages.len() as u64,
        );
    }

    fn send(&mut self, msg: Message) -> Check {
        self.world.send(msg);
        Ok(())
    }

    fn step_self(&mut self, msg: Message) -> Check {
        self.world.step(self.i, msg)
    }

    fn restore_snapshot(&mut self, index: LogIndex, term: Term) -> Result<Flow, String> {
        let (w, i) = (&mut *self.world, self.i);
        let id = i as u64 + 1;
        let Some(snap) = w.slots[i].snapshots.get(&index).cloned() else {
            return Err(format!("n{id} installed snapshot {index} it never saved"));
        };
        if snap.term != term {
            return Err(format!(
                "n{id} installed snapshot {index} with the wrong term"
            ));
        }
        w.ev("install", id, index.0, 0, 0, 0);
        w.stats.installs += 1;
        w.restore_state(i, snap)?;
        Ok(Flow::Continue)
    }

    fn persist(&mut self) -> Result<Flow, String> {
        self.world.start_write(self.i)?;
        // A crash in the middle of the write ends the Ready with the process.
        Ok(if self.world.slots[self.i].raft.is_some() {
            Flow::Continue
        } else {
            Flow::Stop
        })
    }

    fn apply(&mut self, from: LogIndex, to: LogIndex) -> Check {
        let (w, i) = (&mut *self.world, self.i);
        for idx in from.0..=to.0 {
            let node = w.slots[i].raft.as_ref().unwrap();
            let Some(e) = node.log().entry(LogIndex(idx)) else {
                return Err(format!(
                    "n{} asked to apply {idx}, which its log lacks",
                    i + 1
                ));
            };
            let e = e.clone();
            w.apply_entry(i, &e)?;
        }
        w.slots[i].raft.as_mut().unwrap().applied(to);
        Ok(())
    }

    fn read_states(&mut self, states: Vec<ReadState>) -> Check {
        let (w, i) = (&mut *self.world, self.i);
        for state in states {
            w.ev(
                "read-index",
                i as u64 + 1,
                state.id,
                state.index.map_or(0, |x| x.0),
                state.index.is_some() as u64,
                0,
            );
            match state.index {
                Some(index) => w.slots[i].reads_ready.push((state.id, index)),
                None => {
                    w.reads.remove(&state.id);
                }
            }
        }
        w.serve_reads(i)
    }
}
