//! Throughput of the Raft core alone: three nodes wired together in one thread over
//! the in-memory log, 100-byte entries proposed in batches between readies (the
//! driver's natural batching). Storage sync and network are free, so this measures
//! the core's per-entry cost (appending, building appends, acking, committing).
//!
//! Run: `cargo bench -p raftmq-broker --bench raft_core`
//! (`RAFT_BENCH_ENTRIES`, `RAFT_BENCH_BATCH`, `RAFT_BENCH_RUNS` adjust it).

use std::time::Instant;

use bytes::Bytes;
use raftmq_broker::raft::{
    Config, EntryKind, HardState, LogIndex, MemLog, Message, NodeId, RawNode, Role,
};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

struct Cluster {
    nodes: Vec<RawNode<MemLog>>,
    inbox: Vec<Message>,
    messages: u64,
}

impl Cluster {
    fn new() -> Self {
        let voters: Vec<NodeId> = (1..=3).map(NodeId).collect();
        let nodes = voters
            .iter()
            .map(|&id| {
                let mut c = Config::new(id, voters.clone());
                c.seed = 7;
                c.max_append_entries = 4096;
                c.max_inflight_appends = 64;
                c.max_pending_proposals = 1 << 20;
                RawNode::new(c, MemLog::new(), HardState::default())
            })
            .collect();
        Cluster {
            nodes,
            inbox: Vec::new(),
            messages: 0,
        }
    }

    /// One round of the driver loop on every node: take the Ready, "sync" (free in
    /// memory), hand out messages; then deliver everything sent.
    fn pump(&mut self) {
        for node in &mut self.nodes {
            if !node.has_ready() {
                continue;
            }
            let rd = node.ready();
            self.inbox.extend(rd.messages);
            if let Some((index, term)) = rd.unsynced {
                node.persisted(index, term);
            }
            for m in rd.persisted_messages {
                if m.to == m.from {
                    node.step(m).expect("self ack");
                } else {
                    self.inbox.push(m);
                }
            }
            if let Some((_, to)) = rd.to_apply {
                node.applied(to);
            }
        }
        self.messages += self.inbox.len() as u64;
        for m in std::mem::take(&mut self.inbox) {
            let to = m.to.0 as usize - 1;
            self.nodes[to].step(m).expect("step");
        }
    }

    fn elect(&mut self) {
        while self.nodes[0].role() != Role::Leader {
            self.nodes[0].tick();
            self.pump();
        }
        for _ in 0..5 {
            self.pump();
        }
    }
}

fn run(entries: u64, batch: u64, body: &Bytes) -> (f64, u64, u64) {
    let mut c = Cluster::new();
    c.elect();
    let start_commit = c.nodes[0].commit_index();
    let target = LogIndex(start_commit.0 + entries);
    let mut proposed = 0;
    let mut rounds = 0;
    let started = Instant::now();
    while c.nodes[0].commit_index() < target {
        let n = batch.min(entries - proposed);
        for _ in 0..n {
            c.nodes[0]
                .propose(EntryKind::Messages, body.clone())
                .expect("propose");
        }
        proposed += n;
        c.pump();
        rounds += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    (entries as f64 / secs, rounds, c.messages)
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let entries = env("RAFT_BENCH_ENTRIES", if quick { 20_000 } else { 1_000_000 });
    let batch = env("RAFT_BENCH_BATCH", 1024);
    let runs = env("RAFT_BENCH_RUNS", if quick { 1 } else { 5 });
    let body = Bytes::from(vec![0xabu8; 100]);
    let mut rates = Vec::new();
    for run_no in 0..runs {
        let (rate, rounds, messages) = run(entries, batch, &body);
        println!(
            "run {run_no}: {entries} entries x 100 B, {batch} proposals per ready: \
             {rate:.0} committed entries/s ({rounds} rounds, {messages} messages)"
        );
        rates.push(rate);
    }
    rates.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = rates[rates.len() / 2];
    println!(
        "raft_core: 3 nodes, in-memory log, 100-byte entries, batch {batch}: median {median:.0} \
         committed entries/s ({:.1} MB/s of bodies)",
        median * 100.0 / 1e6
    );
}
