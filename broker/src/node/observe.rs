//! What the node task tells the metrics and the logs: its gauges, refreshed from the
//! tick at most every [`NODE_GAUGES_INTERVAL`] (group lag every
//! [`GROUP_LAG_INTERVAL`]), and a line per election started or won.

use std::sync::Arc;
use std::time::Instant;

use super::Node;
use crate::directory::METADATA_GROUP;
use crate::metrics::{
    BrokerMetrics, FamilyWriter, GROUP_LAG_INTERVAL, GROUP_LAG_SERIES_MAX, NODE_GAUGES_INTERVAL,
};
use crate::raft::{Role, Term};
use crate::state_machine::StateMachine;

/// The node's link to the metrics: the handles and when each family was refreshed.
pub(super) struct NodeMetrics {
    pub(super) handles: Arc<BrokerMetrics>,
    gauges_at: Option<Instant>,
    group_lag_at: Option<Instant>,
    /// Whether the follower-lag text currently holds samples (cleared on stepping down).
    followers_published: bool,
    /// The term of the last election this node was seen to start.
    election_term: Option<Term>,
}

impl NodeMetrics {
    /// Metrics off.
    pub(super) fn disabled() -> NodeMetrics {
        NodeMetrics::new(Arc::new(BrokerMetrics::disabled()))
    }

    fn new(handles: Arc<BrokerMetrics>) -> NodeMetrics {
        NodeMetrics {
            handles,
            gauges_at: None,
            group_lag_at: None,
            followers_published: false,
            election_term: None,
        }
    }

    /// Handles for timing a persist job's log sync and hard-state write, to move
    /// into the blocking closure.
    pub(super) fn fsync_histograms(&self) -> (metrics::Histogram, metrics::Histogram) {
        let raft = &self.handles.raft;
        (raft.fsync_log.clone(), raft.fsync_hard_state.clone())
    }

    /// Logs and counts an election this node started or won. A node can become
    /// candidate and leader between two `Ready`s (a single node, or votes answered
    /// at once): its win then stands for the start as well.
    pub(super) fn role_changed(&mut self, role: Role, term: Term) {
        let started = |this: &mut NodeMetrics| {
            if this.election_term != Some(term) {
                this.election_term = Some(term);
                tracing::info!(term = term.0, "election started");
                this.handles.raft.elections_started.increment(1);
            }
        };
        match role {
            Role::Candidate => started(self),
            Role::Leader => {
                started(self);
                tracing::info!(term = term.0, "election won");
                self.handles.raft.elections_won.increment(1);
            }
            Role::Follower | Role::PreCandidate => {}
        }
    }
}

impl NodeMetrics {
    pub(super) fn retention_deleted(&self, segments: usize) {
        self.handles
            .raft
            .segments_deleted
            .increment(segments as u64);
    }

    pub(super) fn snapshot_sent(&self) {
        self.handles.raft.snapshots_sent.increment(1);
    }

    pub(super) fn snapshot_installed(&self) {
        self.handles.raft.snapshots_installed.increment(1);
    }
}

impl Node {
    /// Records metrics in `metrics` (see [`crate::metrics`]).
    pub fn with_metrics(mut self, metrics: Arc<BrokerMetrics>) -> Node {
        self.metrics = NodeMetrics::new(metrics);
        self
    }

    /// Refreshes the gauges when they are due; called on every tick.
    pub(super) fn observe(&mut self, now: Instant) {
        if !self.metrics.handles.enabled() {
            return;
        }
        let due = |at: Option<Instant>, every| at.is_none_or(|at| now.duration_since(at) >= every);
        if due(self.metrics.gauges_at, NODE_GAUGES_INTERVAL) {
            self.metrics.gauges_at = Some(now);
            self.observe_gauges();
        }
        if due(self.metrics.group_lag_at, GROUP_LAG_INTERVAL) {
            self.metrics.group_lag_at = Some(now);
            self.observe_group_lag();
        }
    }

    fn observe_gauges(&mut self) {
        let status = self.raft.status();
        let log = self.raft.log();
        let m = &self.metrics.handles;
        let g = &m.node;
        g.set_role(status.role);
        g.term.set(status.term.0 as f64);
        g.leader_id.set(status.leader.map_or(0, |l| l.0) as f64);
        g.commit_index.set(status.commit_index.0 as f64);
        g.applied_index.set(self.state.applied().0 as f64);
        g.first_index.set(log.first_index().0 as f64);
        g.last_index.set(log.last_index().0 as f64);
        g.synced_index.set(log.synced_index().0 as f64);
        g.segments.set(log.segment_count() as f64);
        g.disk_bytes.set(log.disk_bytes() as f64);
        g.pending_proposals.set(self.pending.len() as f64);
        g.fetch_waiters
            .set(self.fetch_waiters.values().map(Vec::len).sum::<usize>() as f64);
        g.storage_failed
            .set(if self.storage_failed { 1.0 } else { 0.0 });
        let applied = self.state.applied();
        let not_ready = if self.storage_failed {
            Some("storage failed".to_string())
        } else if status.leader.is_none() {
            Some("no leader known".to_string())
        } else if status.role == Role::Leader && !self.leader_ready() {
            Some("the new leader is applying earlier entries".to_string())
        } else if applied < status.commit_index {
            Some(format!(
                "applying committed entries ({} behind)",
                status.commit_index.0 - applied.0
            ))
        } else {
            None
        };
        m.set_readiness(not_ready.as_deref());
        if self.group_id() == METADATA_GROUP {
            let text = data_groups_text(&self.data_group_infos(), &node_label(self));
            self.metrics.handles.publish_data_groups(text);
        }

        if status.role == Role::Leader {
            let last = log.last_index();
            let name = "raftmq_raft_follower_lag_entries";
            let mut w = FamilyWriter::gauge(
                name,
                "Leader only: entries the follower's durable log is behind the leader's last index.",
            );
            for p in status.progress.iter().filter(|p| p.id != status.id) {
                let peer = p.id.0.to_string();
                w.sample(
                    name,
                    &[("node", &node_label(self)), ("peer", &peer)],
                    last.0.saturating_sub(p.match_index.0),
                );
            }
            m.publish_followers(w.finish());
            self.metrics.followers_published = true;
        } else if self.metrics.followers_published {
            m.publish_followers(String::new());
            self.metrics.followers_published = false;
        }
    }

    /// Consumer-group lag from the committed offsets and the queues' ends. Each
    /// queue's series comes from the node leading the group that holds it: that
    /// node knows the queue's end (the metadata leader knows the ends only of the
    /// queues whose data group has a replica on its node), and one copy keeps sums
    /// right. The committed offsets are this node's copy of the metadata group's.
    fn observe_group_lag(&mut self) {
        let me = self.config.node_id.0;
        let led: std::collections::BTreeSet<u32> = self
            .raft_groups
            .directory
            .statuses()
            .into_iter()
            .filter(|g| g.group_id != METADATA_GROUP && g.role == "leader" && g.leader_id == me)
            .map(|g| g.group_id)
            .collect();
        let leads_metadata = self.raft.role() == Role::Leader;
        let m = &self.metrics.handles;
        if !leads_metadata && led.is_empty() {
            m.publish_groups(String::new());
            return;
        }
        let bounds = |topic: &str, queue: u32| {
            let group = self.state.topic(topic)?.group_of(queue);
            let here = match group {
                METADATA_GROUP => leads_metadata,
                g => led.contains(&g),
            };
            if here {
                self.queue_bounds(topic, queue)
            } else {
                None
            }
        };
        m.publish_groups(group_lag_text(
            &self.state,
            &bounds,
            &node_label(self),
            GROUP_LAG_SERIES_MAX,
        ));
    }
}

/// A queue's (first offset stored, next offset) by topic name and queue.
type QueueBounds<'a> = dyn Fn(&str, u32) -> Option<(u64, u64)> + 'a;

/// The `raftmq_group_lag_messages` family, at most `series_max` series, and
/// `raftmq_group_lag_series_omitted` counting the rest. Only queues a group has
/// committed an offset for, and whose topic still exists.
fn group_lag_text(
    state: &StateMachine,
    bounds: &QueueBounds<'_>,
    node: &str,
    series_max: usize,
) -> String {
    let name = "raftmq_group_lag_messages";
    let mut w = FamilyWriter::gauge(
        name,
        "Messages between a group's committed offset and the queue's end, from the node leading the queue's group.",
    );
    let mut series = 0usize;
    let mut omitted = 0u64;
    for group in state.groups() {
        let Some(offsets) = state.group_offsets(group) else {
            continue;
        };
        for ((topic, queue), committed) in offsets {
            let Some((start, end)) = bounds(topic, *queue) else {
                continue; // the topic was deleted after the commit
            };
            if series == series_max {
                omitted += 1;
                continue;
            }
            series += 1;
            let queue = queue.to_string();
            w.sample(
                name,
                &[
                    ("node", node),
                    ("group", group),
                    ("topic", topic),
                    ("queue", &queue),
                ],
                // Deleted messages are not lag.
                end.saturating_sub((*committed).max(start)),
            );
        }
    }
    let mut text = w.finish();
    let omitted_name = "raftmq_group_lag_series_omitted";
    let mut w = FamilyWriter::gauge(
        omitted_name,
        "Group-lag series left out beyond the bound of 10000.",
    );
    w.sample(omitted_name, &[("node", node)], omitted);
    text.push_str(&w.finish());
    text
}

/// The `node` label every series carries.
/// The per-data-group families: one series per data-group replica this node runs.
fn data_groups_text(groups: &[raftmq_proto::pb::GroupInfo], node: &str) -> String {
    if groups.is_empty() {
        return String::new();
    }
    type Value = fn(&raftmq_proto::pb::GroupInfo) -> u64;
    let families: [(&str, &str, Value); 5] = [
        (
            "raftmq_data_group_leader",
            "1 when this node leads the data group.",
            |g| u64::from(g.role == "leader"),
        ),
        (
            "raftmq_data_group_term",
            "The data group's Raft term on this node.",
            |g| g.term,
        ),
        (
            "raftmq_data_group_commit_index",
            "The data group's commit index on this node.",
            |g| g.commit_index,
        ),
        (
            "raftmq_data_group_last_index",
            "The last index of this node's replica of the data group.",
            |g| g.last_index,
        ),
        (
            "raftmq_data_group_moving",
            "1 while the data group's members (as this replica sees them) differ from \
             its placement.",
            |g| {
                let mut placed = g.replicas.clone();
                placed.sort_unstable();
                u64::from(!g.learners.is_empty() || placed != g.voters)
            },
        ),
    ];
    let mut text = String::new();
    for (name, help, value) in families {
        let mut w = FamilyWriter::gauge(name, help);
        for g in groups {
            let group = g.group_id.to_string();
            w.sample(name, &[("node", node), ("group", &group)], value(g));
        }
        text.push_str(&w.finish());
    }
    text
}

fn node_label(node: &Node) -> String {
    node.config.node_id.0.to_string()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use raftmq_proto::batch::BatchBuilder;
    use raftmq_store::{Entry, EntryKind, LogIndex};

    use super::*;

    /// Queue bounds from the state itself (no data groups).
    fn own(state: &StateMachine) -> impl Fn(&str, u32) -> Option<(u64, u64)> + '_ {
        |topic, queue| {
            state
                .topic(topic)
                .and_then(|t| t.queues.get(queue as usize))
                .map(|q| (q.start_offset, q.next_offset))
        }
    }
    use crate::command::{self, Command, CommittedOffset};

    struct Applier {
        state: StateMachine,
        next: u64,
    }

    impl Applier {
        fn apply(&mut self, kind: EntryKind, body: Bytes) {
            self.next += 1;
            let entry = Entry {
                index: LogIndex(self.next),
                term: Term(1),
                kind,
                body,
            };
            self.state.apply(&entry);
        }

        fn command(&mut self, command: Command) {
            self.apply(EntryKind::Command, command.encode());
        }
    }

    fn lines_of<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .collect()
    }

    #[test]
    fn group_lag_is_the_queue_end_minus_the_committed_offset_within_a_bound() {
        let mut a = Applier {
            state: StateMachine::new(),
            next: 0,
        };
        a.command(Command::CreateTopic {
            name: "t".into(),
            queues: 2,
            retention: Default::default(),
        });
        let mut batch = BatchBuilder::with_capacity(256);
        for v in ["a", "b", "c", "d"] {
            batch.push(None, v.as_bytes(), &[], 0);
        }
        let batch = batch.finish();
        a.apply(EntryKind::Messages, command::encode_messages(1, 0, &batch));
        for group in ["g1", "g2"] {
            a.command(Command::CommitOffsets {
                group: group.into(),
                offsets: vec![
                    CommittedOffset {
                        topic: "t".into(),
                        queue: 0,
                        offset: 1,
                    },
                    CommittedOffset {
                        topic: "t".into(),
                        queue: 1,
                        offset: 0,
                    },
                ],
            });
        }

        let text = group_lag_text(&a.state, &own(&a.state), "1", 10);
        let lags = lines_of(&text, "raftmq_group_lag_messages");
        assert_eq!(lags.len(), 4, "{text}");
        assert!(
            lags.contains(
                &"raftmq_group_lag_messages{node=\"1\",group=\"g1\",topic=\"t\",queue=\"0\"} 3"
            ),
            "{text}"
        );
        assert!(
            lags.contains(
                &"raftmq_group_lag_messages{node=\"1\",group=\"g2\",topic=\"t\",queue=\"1\"} 0"
            ),
            "{text}"
        );
        assert!(
            text.contains("raftmq_group_lag_series_omitted{node=\"1\"} 0\n"),
            "{text}"
        );

        let bounded = group_lag_text(&a.state, &own(&a.state), "1", 3);
        assert_eq!(lines_of(&bounded, "raftmq_group_lag_messages").len(), 3);
        assert!(
            bounded.contains("raftmq_group_lag_series_omitted{node=\"1\"} 1\n"),
            "{bounded}"
        );

        // A deleted topic's offsets leave no series behind.
        a.command(Command::DeleteTopic {
            name: "t".into(),
            drop_offsets: true,
        });
        let text = group_lag_text(&a.state, &own(&a.state), "1", 10);
        assert!(
            lines_of(&text, "raftmq_group_lag_messages").is_empty(),
            "{text}"
        );
    }
}
