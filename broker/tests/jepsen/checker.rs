//! Checks a run's history against what every replica holds at the end, in the way
//! of Jepsen's kafka and total-queue workloads. Each check adds a line to
//! `anomalies`; a correct broker gives none.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use raftmq_store::{CommitLog, LogConfig, LogIndex};

use super::workload::{EndOp, Event, Reads};

/// Per node, per queue: the final drain, `(offset, value)` in offset order.
pub type Drains = BTreeMap<u64, BTreeMap<u32, Vec<(u64, String)>>>;

/// What the checks found.
#[derive(Debug, Default)]
pub struct Report {
    /// Batches sent / acknowledged / left indeterminate / refused.
    pub sends: usize,
    /// Acknowledged batches.
    pub acks: usize,
    /// Batches whose fate was unknown at the end.
    pub indeterminate: usize,
    /// Of the indeterminate messages, how many are in the log.
    pub indeterminate_stored: usize,
    /// Refused batches.
    pub refused: usize,
    /// Messages read by consumers during the run.
    pub reads: usize,
    /// Latest-offset reads checked for linearizability.
    pub offset_reads: usize,
    /// Acknowledged group offset commits.
    pub commits: usize,
    /// Messages in the final log (all queues).
    pub stored: usize,
    /// Acknowledged messages that retention deleted before the final drain.
    pub deleted: usize,
    /// Every violation found, one line each.
    pub anomalies: Vec<String>,
}

impl Report {
    /// Total client operations (sends, reads, commits).
    pub fn operations(&self) -> usize {
        self.sends + self.reads + self.commits
    }

    /// One line for the test output.
    pub fn summary(&self) -> String {
        format!(
            "sends {} acked {} indeterminate {} (stored {}) refused {} reads {} \
             offset reads {} commits {} stored {} deleted by retention {} anomalies {}",
            self.sends,
            self.acks,
            self.indeterminate,
            self.indeterminate_stored,
            self.refused,
            self.reads,
            self.offset_reads,
            self.commits,
            self.stored,
            self.deleted,
            self.anomalies.len()
        )
    }

    fn anomaly(&mut self, line: String) {
        // A broken run can produce thousands of lines; the first ones tell the story.
        if self.anomalies.len() < 200 {
            self.anomalies.push(line);
        }
    }
}

/// Checks the history against the drains of every node (all must be complete and
/// converged) and the groups' final committed offsets.
///
/// With `retention` the drains may start after 0 (each node deletes on its own):
/// they are compared over the offsets all of them still hold, and an acknowledged
/// message or a read below that start counts as deleted, not lost. Without it a
/// drain that does not start at 0 is an anomaly.
pub fn check(
    events: &[Event],
    reads: &Reads,
    drains: &Drains,
    final_commits: &BTreeMap<String, BTreeMap<u32, u64>>,
    retention: bool,
) -> Report {
    let mut r = Report::default();
    check_end_reads(&reads.end_ops, &mut r);
    // Per queue, the first offset every node still holds.
    let mut start: BTreeMap<u32, u64> = BTreeMap::new();
    for queues in drains.values() {
        for (&queue, log) in queues {
            let first = log.first().map_or(0, |(o, _)| *o);
            let s = start.entry(queue).or_insert(first);
            *s = (*s).max(first);
            if first != 0 && !retention {
                r.anomaly(format!(
                    "queue {queue}: a drain starts at offset {first}, not 0, though \
                     nothing is deleted by retention"
                ));
            }
        }
    }
    let trimmed: Drains = drains
        .iter()
        .map(|(&node, queues)| {
            let queues = queues
                .iter()
                .map(|(&queue, log)| {
                    let from = start.get(&queue).copied().unwrap_or(0);
                    let kept = log.iter().filter(|(o, _)| *o >= from).cloned().collect();
                    (queue, kept)
                })
                .collect();
            (node, queues)
        })
        .collect();
    let drains = &trimmed;
    let Some((&reference_node, reference)) = drains.iter().next() else {
        r.anomaly("no drain to check".into());
        return r;
    };
    let start_of = |queue: u32| start.get(&queue).copied().unwrap_or(0);

    // Replicas agree, and each queue's offsets are unique and contiguous from its
    // start.
    for (&node, queues) in drains {
        for (&queue, log) in queues {
            let from = start_of(queue);
            for (i, (offset, _)) in log.iter().enumerate() {
                if *offset != from + i as u64 {
                    r.anomaly(format!(
                        "node {node} queue {queue}: offset {offset} at position {i} \
                         (offsets not unique and contiguous from {from})"
                    ));
                    break;
                }
            }
            let other = reference.get(&queue).map_or(&[][..], |v| &v[..]);
            if log[..] != other[..] {
                let at = log
                    .iter()
                    .zip(other)
                    .position(|(a, b)| a != b)
                    .unwrap_or(log.len().min(other.len()));
                r.anomaly(format!(
                    "node {node} queue {queue} differs from node {reference_node}: lengths \
                     {} vs {}, first difference at position {at}: {:?} vs {:?}",
                    log.len(),
                    other.len(),
                    log.get(at),
                    other.get(at)
                ));
            }
        }
    }

    // Where each value is in the reference log; duplicates.
    let mut position: HashMap<&str, (u32, u64)> = HashMap::new();
    for (&queue, log) in reference {
        r.stored += log.len();
        for (offset, value) in log {
            if let Some(first) = position.insert(value.as_str(), (queue, *offset)) {
                r.anomaly(format!(
                    "duplicate: {value} at queue {queue} offset {offset} and at {first:?}"
                ));
            }
        }
    }
    let at = |queue: u32, offset: u64| -> Option<&str> {
        let from = start_of(queue);
        reference
            .get(&queue)
            .and_then(|log| log.get(offset.checked_sub(from)? as usize))
            .filter(|(o, _)| *o == offset)
            .map(|(_, v)| v.as_str())
    };

    let mut sent: HashMap<&str, u32> = HashMap::new();
    let mut commit_attempts: BTreeMap<(&str, u32), BTreeSet<u64>> = BTreeMap::new();
    let mut commit_acked: BTreeMap<(&str, u32), u64> = BTreeMap::new();
    for event in events {
        match event {
            Event::Send { queue, values, .. } => {
                r.sends += 1;
                for v in values {
                    sent.insert(v, *queue);
                }
            }
            Event::Ack {
                queue,
                values,
                base_offset,
                ..
            } => {
                r.acks += 1;
                for (i, v) in values.iter().enumerate() {
                    let deleted =
                        retention && base_offset.is_none_or(|b| b + (i as u64) < start_of(*queue));
                    match position.get(v.as_str()) {
                        None if deleted => r.deleted += 1,
                        None => r.anomaly(format!("lost: acknowledged {v} is not in the log")),
                        Some(&(q, offset)) => {
                            if q != *queue {
                                r.anomaly(format!("{v} sent to queue {queue} is in queue {q}"));
                            }
                            if let Some(base) = base_offset {
                                if offset != base + i as u64 {
                                    r.anomaly(format!(
                                        "{v} acknowledged at offset {} is at offset {offset}",
                                        base + i as u64
                                    ));
                                }
                            }
                        }
                    }
                }
            }
            Event::Indeterminate { values, .. } => {
                r.indeterminate += 1;
                r.indeterminate_stored += values
                    .iter()
                    .filter(|v| position.contains_key(v.as_str()))
                    .count();
            }
            Event::Refused { values, error, .. } => {
                r.refused += 1;
                r.anomaly(format!("refused batch {values:?}: {error}"));
            }
            Event::CommitAck {
                group,
                queue,
                offset,
            } => {
                r.commits += 1;
                commit_attempts
                    .entry((group, *queue))
                    .or_default()
                    .insert(*offset);
                let best = commit_acked.entry((group, *queue)).or_default();
                *best = (*best).max(*offset);
            }
            Event::CommitIndeterminate {
                group,
                queue,
                offset,
            } => {
                commit_attempts
                    .entry((group, *queue))
                    .or_default()
                    .insert(*offset);
            }
        }
    }

    // Every read is in the final log at the offset it was read from: an offset
    // never holds two values, and nothing read was later lost.
    r.reads = reads.count as usize;
    for (queue, offset, first, first_node, other, node) in &reads.conflicts {
        r.anomaly(format!(
            "queue {queue} offset {offset}: read {first} from node {first_node} and \
             {other} from node {node}"
        ));
    }
    for (&(queue, offset), (value, node)) in &reads.values {
        if retention && offset < start_of(queue) {
            continue; // deleted by retention since
        }
        match at(queue, offset) {
            Some(v) if v == value => {}
            Some(v) => r.anomaly(format!(
                "queue {queue} offset {offset}: read {value} from node {node}, \
                 but the log holds {v}"
            )),
            None => r.anomaly(format!(
                "queue {queue} offset {offset}: read {value} from node {node}, \
                 but the log ends before it (a read of data later lost)"
            )),
        }
    }

    // Nothing stored that was never sent; each producer's values in order.
    let mut last_seq: HashMap<(&str, u32), u64> = HashMap::new();
    for (&queue, log) in reference {
        for (offset, value) in log {
            if !sent.contains_key(value.as_str()) {
                r.anomaly(format!(
                    "phantom: {value} at queue {queue} offset {offset} was never sent"
                ));
                continue;
            }
            let Some((producer, seq)) = value.rsplit_once('-') else {
                continue;
            };
            let seq: u64 = seq.parse().unwrap_or(0);
            let previous = last_seq.insert((producer, queue), seq);
            if let Some(p) = previous {
                if seq <= p {
                    r.anomaly(format!(
                        "queue {queue} offset {offset}: {value} stored after sequence {p} \
                         of the same producer (reordered or duplicated)"
                    ));
                }
            }
        }
    }

    // Group offsets: the final one is at least every acknowledged commit and was
    // itself committed by someone.
    for ((group, queue), acked) in &commit_acked {
        let final_offset = final_commits
            .get(*group)
            .and_then(|g| g.get(queue))
            .copied();
        match final_offset {
            None => r.anomaly(format!(
                "group {group} queue {queue}: committed {acked} acknowledged, now none"
            )),
            Some(f) if f < *acked => r.anomaly(format!(
                "group {group} queue {queue}: went back from acknowledged {acked} to {f}"
            )),
            Some(f) if !commit_attempts[&(*group, *queue)].contains(&f) => r.anomaly(format!(
                "group {group} queue {queue}: final offset {f} was never committed"
            )),
            Some(_) => {}
        }
    }
    r
}

/// Opens each stopped node's commit log and compares entries `1..=commit` byte for
/// byte (index, term, kind, body). `dirs` by node id.
pub fn compare_logs(
    dirs: &BTreeMap<u64, std::path::PathBuf>,
    commit: u64,
    config: &LogConfig,
) -> Vec<String> {
    let mut anomalies = Vec::new();
    let mut logs = Vec::new();
    for (&node, dir) in dirs {
        match CommitLog::open(&dir.join("log"), config.clone()) {
            Ok((log, _)) => logs.push((node, log)),
            Err(e) => anomalies.push(format!("node {node}: cannot open its log: {e}")),
        }
    }
    let Some(((first_node, first), rest)) = logs.split_first() else {
        return anomalies;
    };
    for (node, log) in std::iter::once((first_node, first)).chain(rest.iter().map(|(n, l)| (n, l)))
    {
        if log.last_index().0 < commit {
            anomalies.push(format!(
                "node {node}: log ends at {} below the commit index {commit}",
                log.last_index().0
            ));
        }
    }
    let start = logs
        .iter()
        .map(|(_, l)| l.first_index().0)
        .max()
        .unwrap_or(1);
    for index in start..=commit {
        let expected = match first.entry(LogIndex(index)) {
            Ok(e) => e,
            Err(e) => {
                anomalies.push(format!("node {first_node}: entry {index}: {e}"));
                break;
            }
        };
        for (node, log) in rest {
            match log.entry(LogIndex(index)) {
                Ok(e) => {
                    if e.term != expected.term || e.kind != expected.kind || e.body != expected.body
                    {
                        anomalies.push(format!(
                            "entry {index}: node {node} (term {}) differs from node {first_node} \
                             (term {})",
                            e.term.0, expected.term.0
                        ));
                    }
                }
                Err(e) => anomalies.push(format!("node {node}: entry {index}: {e}")),
            }
        }
        if anomalies.len() > 50 {
            break;
        }
    }
    anomalies
}

/// The store settings matching the cluster's, for opening a stopped node's log.
pub fn log_config(segment_bytes: u64, max_batch_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        max_entry_bytes: (max_batch_bytes + 4096) as u32,
        verify_on_open: true,
        // Reading a stopped node's log never creates a segment.
        max_disk_use_ratio: 1.0,
    }
}

/// Linearizable reads of a queue's end: a read of the latest offset must be at
/// least the end of every write acknowledged, and every read answered, before the
/// read was sent (real-time order). A node answering from a lagging or deposed
/// state machine shows up here as a read that went back in time.
fn check_end_reads(ops: &[EndOp], r: &mut Report) {
    let mut by_completion: Vec<&EndOp> = ops.iter().collect();
    by_completion.sort_by_key(|op| op.completed);
    let mut reads: Vec<&EndOp> = ops.iter().filter(|op| op.read).collect();
    reads.sort_by_key(|op| op.invoked);
    r.offset_reads = reads.len();
    // Per queue: the highest end completed so far, and the operation that set it.
    let mut floor: BTreeMap<u32, &EndOp> = BTreeMap::new();
    let mut next = 0;
    for read in reads {
        while next < by_completion.len() && by_completion[next].completed < read.invoked {
            let op = by_completion[next];
            let best = floor.entry(op.queue).or_insert(op);
            if op.end > best.end {
                *best = op;
            }
            next += 1;
        }
        if let Some(before) = floor.get(&read.queue) {
            if read.end < before.end {
                let what = if before.read {
                    "a read"
                } else {
                    "an acknowledged write"
                };
                r.anomaly(format!(
                    "read went back in time: node {} said queue {} ends at {} after {what} \
                     (answered by node {}) had seen it end at {}",
                    read.node, read.queue, read.end, before.node, before.end
                ));
            }
        }
    }
}
