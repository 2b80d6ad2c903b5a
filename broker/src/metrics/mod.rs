//! Prometheus metrics: every series the broker exports, as handles created once.
//!
//! [`BrokerMetrics`] owns a Prometheus recorder of its own (not the process-wide
//! `metrics` recorder: several brokers may share a process, as in the tests) and the
//! handles the hot paths update. A handle update is an atomic add; nothing here looks
//! a metric up by name on the request path, and nothing is done per message.
//!
//! Who updates what:
//! - connections answer through [`crate::response::Responder`], which records the
//!   request's latency, its error code, and produce/fetch volumes once per request;
//! - the node task refreshes the Raft and log gauges every
//!   [`NODE_GAUGES_INTERVAL`] and the per-group lag every [`GROUP_LAG_INTERVAL`]
//!   (`node/observe.rs`), and times each persist job's syncs;
//! - [`http`] serves `GET /metrics`.
//!
//! Families whose label sets come and go (per-follower lag, exists only on the
//! leader; per-group lag, follows the groups) are rendered from text the node task
//! publishes ([`BrokerMetrics::publish_dynamic`]), so a deleted group or a former
//! follower leaves no stale series behind.
//!
//! With metrics off ([`BrokerMetrics::disabled`]) every handle is a no-op and
//! responders carry nothing.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use raftmq_proto::pb;

use crate::raft::Role;

pub mod http;

/// How often the node task refreshes its gauges (role, term, indexes, log size,
/// follower lag).
pub const NODE_GAUGES_INTERVAL: Duration = Duration::from_millis(100);
/// How often the node task recomputes consumer-group lag.
pub const GROUP_LAG_INTERVAL: Duration = Duration::from_secs(1);
/// At most this many `raftmq_group_lag_messages` series; the rest are counted in
/// `raftmq_group_lag_series_omitted`.
pub const GROUP_LAG_SERIES_MAX: usize = 10_000;
/// How often recorded histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Histogram buckets (seconds) for every `*_seconds` series: 50 µs to 10 s.
const SECONDS_BUCKETS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// The request kinds, as the `api` label names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Api {
    Produce,
    /// The envelope of several produce parts (each also counted as `Produce`).
    ProduceMany,
    Fetch,
    /// The envelope of several queues' reads with one long poll.
    FetchMany,
    CreateTopic,
    DeleteTopic,
    InitProducer,
    Metadata,
    ListOffsets,
    ClusterStatus,
    TransferLeader,
    OffsetCommit,
    OffsetFetch,
    ListGroups,
    JoinGroup,
    Heartbeat,
    LeaveGroup,
    DescribeGroup,
    OffsetReset,
    AddNode,
    RemoveNode,
    JoinCluster,
    MoveReplicas,
    AddDataGroups,
    AdvertiseListeners,
    SaslHandshake,
    SaslAuthenticate,
    UpsertUser,
    DeleteUser,
    ListUsers,
    CreateAcls,
    DeleteAcls,
    ListAcls,
    /// A request without a known body.
    Unknown,
}

impl Api {
    const COUNT: usize = Api::Unknown as usize + 1;

    /// The kind of a request body. Raft messages are not client requests and are
    /// never answered; they count as `Unknown` if they ever reach here.
    pub fn of(body: &pb::request::Body) -> Api {
        use pb::request::Body as B;
        match body {
            B::Produce(_) => Api::Produce,
            B::ProduceMany(_) => Api::ProduceMany,
            B::FetchMany(_) => Api::FetchMany,
            B::Fetch(_) => Api::Fetch,
            B::CreateTopic(_) => Api::CreateTopic,
            B::DeleteTopic(_) => Api::DeleteTopic,
            B::InitProducer(_) => Api::InitProducer,
            B::Metadata(_) => Api::Metadata,
            B::ListOffsets(_) => Api::ListOffsets,
            B::ClusterStatus(_) => Api::ClusterStatus,
            B::TransferLeader(_) => Api::TransferLeader,
            B::OffsetCommit(_) => Api::OffsetCommit,
            B::OffsetFetch(_) => Api::OffsetFetch,
            B::ListGroups(_) => Api::ListGroups,
            B::JoinGroup(_) => Api::JoinGroup,
            B::Heartbeat(_) => Api::Heartbeat,
            B::LeaveGroup(_) => Api::LeaveGroup,
            B::DescribeGroup(_) => Api::DescribeGroup,
            B::OffsetReset(_) => Api::OffsetReset,
            B::AddNode(_) => Api::AddNode,
            B::RemoveNode(_) => Api::RemoveNode,
            B::JoinCluster(_) => Api::JoinCluster,
            B::MoveReplicas(_) => Api::MoveReplicas,
            B::AddDataGroups(_) => Api::AddDataGroups,
            B::AdvertiseListeners(_) => Api::AdvertiseListeners,
            B::SaslHandshake(_) => Api::SaslHandshake,
            B::SaslAuthenticate(_) => Api::SaslAuthenticate,
            B::UpsertUser(_) => Api::UpsertUser,
            B::DeleteUser(_) => Api::DeleteUser,
            B::ListUsers(_) => Api::ListUsers,
            B::CreateAcls(_) => Api::CreateAcls,
            B::DeleteAcls(_) => Api::DeleteAcls,
            B::ListAcls(_) => Api::ListAcls,
            B::Raft(_) => Api::Unknown,
        }
    }

    /// The `api` label value.
    pub fn name(self) -> &'static str {
        match self {
            Api::Produce => "produce",
            Api::ProduceMany => "produce_many",
            Api::FetchMany => "fetch_many",
            Api::Fetch => "fetch",
            Api::CreateTopic => "create_topic",
            Api::DeleteTopic => "delete_topic",
            Api::InitProducer => "init_producer",
            Api::Metadata => "metadata",
            Api::ListOffsets => "list_offsets",
            Api::ClusterStatus => "cluster_status",
            Api::TransferLeader => "transfer_leader",
            Api::OffsetCommit => "offset_commit",
            Api::OffsetFetch => "offset_fetch",
            Api::ListGroups => "list_groups",
            Api::JoinGroup => "join_group",
            Api::Heartbeat => "heartbeat",
            Api::LeaveGroup => "leave_group",
            Api::DescribeGroup => "describe_group",
            Api::OffsetReset => "offset_reset",
            Api::AddNode => "add_node",
            Api::RemoveNode => "remove_node",
            Api::JoinCluster => "join_cluster",
            Api::MoveReplicas => "move_replicas",
            Api::AddDataGroups => "add_data_groups",
            Api::AdvertiseListeners => "advertise_listeners",
            Api::SaslHandshake => "sasl_handshake",
            Api::SaslAuthenticate => "sasl_authenticate",
            Api::UpsertUser => "upsert_user",
            Api::DeleteUser => "delete_user",
            Api::ListUsers => "list_users",
            Api::CreateAcls => "create_acls",
            Api::DeleteAcls => "delete_acls",
            Api::ListAcls => "list_acls",
            Api::Unknown => "unknown",
        }
    }
}

/// Error codes the `code` label may take: the protocol's, plus one for values
/// outside it.
/// Kafka API keys below this get a latency series (every key the listener serves).
const KAFKA_API_SLOTS: usize = 64;
const ERROR_CODE_SLOTS: usize = 32;

/// The Raft and log gauges the node task sets.
#[derive(Debug)]
pub struct NodeGauges {
    /// `raftmq_raft_role{role}`: 1 for the current role, 0 for the others.
    role: [Gauge; 4],
    /// `raftmq_raft_term`.
    pub term: Gauge,
    /// `raftmq_raft_leader_id` (0: none known).
    pub leader_id: Gauge,
    /// `raftmq_raft_commit_index`.
    pub commit_index: Gauge,
    /// `raftmq_raft_applied_index`.
    pub applied_index: Gauge,
    /// `raftmq_log_first_index`.
    pub first_index: Gauge,
    /// `raftmq_log_last_index`.
    pub last_index: Gauge,
    /// `raftmq_log_synced_index`.
    pub synced_index: Gauge,
    /// `raftmq_log_segments`.
    pub segments: Gauge,
    /// `raftmq_log_disk_bytes`.
    pub disk_bytes: Gauge,
    /// `raftmq_pending_proposals`.
    pub pending_proposals: Gauge,
    /// `raftmq_fetch_waiters`.
    pub fetch_waiters: Gauge,
    /// `raftmq_storage_failed`.
    pub storage_failed: Gauge,
}

impl NodeGauges {
    /// Sets the role gauges: one is 1, the others 0.
    pub fn set_role(&self, role: Role) {
        let current = role_slot(role);
        for (i, gauge) in self.role.iter().enumerate() {
            gauge.set(if i == current { 1.0 } else { 0.0 });
        }
    }
}

const ROLES: [Role; 4] = [
    Role::Leader,
    Role::Follower,
    Role::Candidate,
    Role::PreCandidate,
];

fn role_slot(role: Role) -> usize {
    ROLES
        .iter()
        .position(|r| *r == role)
        .expect("every role has a slot")
}

/// Counters and histograms of Raft events and the persist job.
#[derive(Debug)]
pub struct RaftEvents {
    /// `raftmq_raft_elections_started_total`.
    pub elections_started: Counter,
    /// `raftmq_raft_elections_won_total`.
    pub elections_won: Counter,
    /// `raftmq_raft_leader_transfers_requested_total`.
    pub transfers_requested: Counter,
    /// `raftmq_fsync_duration_seconds{file="log"}`: one persist job's log sync.
    pub fsync_log: Histogram,
    /// `raftmq_fsync_duration_seconds{file="hard_state"}`: one hard-state write+sync.
    pub fsync_hard_state: Histogram,
    /// `raftmq_retention_segments_deleted_total`.
    pub segments_deleted: Counter,
    /// `raftmq_snapshots_sent_total`: InstallSnapshot transfers started.
    pub snapshots_sent: Counter,
    /// `raftmq_snapshots_installed_total`.
    pub snapshots_installed: Counter,
    /// `raftmq_membership_changes_total`: membership entries this node appended
    /// (as leader or follower).
    pub membership_changes: Counter,
    /// `raftmq_membership_refusals_total`: membership requests refused.
    pub membership_refusals: Counter,
    /// `raftmq_peer_messages_refused_total`: peer messages from another cluster, a
    /// replaced data directory or a removed node.
    pub peer_messages_refused: Counter,
}

/// Topics with series of their own; the traffic of any further topic is counted
/// under `topic="_other"`, so a broker with many (or short-lived) topics keeps a
/// bounded number of series.
pub const TOPIC_SERIES_MAX: usize = 256;

/// The label of the shared per-topic series past [`TOPIC_SERIES_MAX`].
pub const OTHER_TOPICS_LABEL: &str = "_other";

/// One topic's produce and fetch counters.
#[derive(Debug)]
pub struct TopicCounters {
    produce_messages: Counter,
    produce_bytes: Counter,
    fetch_messages: Counter,
    fetch_bytes: Counter,
}

/// Every series the broker exports (see `docs/operations.md` for their meaning).
pub struct BrokerMetrics {
    /// `None` when metrics are off.
    exporter: Option<Exporter>,
    produce_requests: Counter,
    produce_messages: Counter,
    produce_bytes: Counter,
    fetch_requests: Counter,
    fetch_batches: Counter,
    fetch_messages: Counter,
    fetch_bytes: Counter,
    connections: Gauge,
    /// `raftmq_tls_certificate_expiry_timestamp_seconds`: when this node's
    /// certificate expires (absent without TLS).
    pub tls_expiry: Gauge,
    /// `raftmq_login_failures_total`: refused logins, both ports.
    pub login_failures: Counter,
    latency: [OnceLock<Histogram>; Api::COUNT],
    errors: [OnceLock<Counter>; ERROR_CODE_SLOTS],
    /// Kafka-protocol requests' latency, by Kafka API key.
    kafka_latency: [OnceLock<Histogram>; KAFKA_API_SLOTS],
    /// Gauges the node task refreshes.
    pub node: NodeGauges,
    /// Raft events and sync timings.
    pub raft: RaftEvents,
}

struct Exporter {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Text for the families with changing label sets, replaced by the node task.
    dynamic: Mutex<DynamicText>,
    /// Per-topic counters, created on a topic's first produce or fetch.
    topics: Mutex<std::collections::HashMap<String, Arc<TopicCounters>>>,
    /// Why the node is not ready (empty: ready), set by the node task (`/ready`).
    not_ready: Mutex<String>,
}

#[derive(Default)]
struct DynamicText {
    followers: String,
    groups: String,
    data_groups: String,
}

impl std::fmt::Debug for BrokerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerMetrics")
            .field("enabled", &self.enabled())
            .finish_non_exhaustive()
    }
}

impl BrokerMetrics {
    /// Metrics off: every handle is a no-op.
    pub fn disabled() -> BrokerMetrics {
        BrokerMetrics {
            exporter: None,
            produce_requests: Counter::noop(),
            produce_messages: Counter::noop(),
            produce_bytes: Counter::noop(),
            fetch_requests: Counter::noop(),
            fetch_batches: Counter::noop(),
            fetch_messages: Counter::noop(),
            fetch_bytes: Counter::noop(),
            connections: Gauge::noop(),
            tls_expiry: Gauge::noop(),
            login_failures: Counter::noop(),
            latency: std::array::from_fn(|_| OnceLock::new()),
            errors: std::array::from_fn(|_| OnceLock::new()),
            kafka_latency: std::array::from_fn(|_| OnceLock::new()),
            node: NodeGauges {
                role: std::array::from_fn(|_| Gauge::noop()),
                term: Gauge::noop(),
                leader_id: Gauge::noop(),
                commit_index: Gauge::noop(),
                applied_index: Gauge::noop(),
                first_index: Gauge::noop(),
                last_index: Gauge::noop(),
                synced_index: Gauge::noop(),
                segments: Gauge::noop(),
                disk_bytes: Gauge::noop(),
                pending_proposals: Gauge::noop(),
                fetch_waiters: Gauge::noop(),
                storage_failed: Gauge::noop(),
            },
            raft: RaftEvents {
                elections_started: Counter::noop(),
                elections_won: Counter::noop(),
                transfers_requested: Counter::noop(),
                fsync_log: Histogram::noop(),
                fsync_hard_state: Histogram::noop(),
                segments_deleted: Counter::noop(),
                snapshots_sent: Counter::noop(),
                snapshots_installed: Counter::noop(),
                membership_changes: Counter::noop(),
                membership_refusals: Counter::noop(),
                peer_messages_refused: Counter::noop(),
            },
        }
    }

    /// Metrics on: a recorder of this broker's own, with every fixed series
    /// registered and described.
    pub fn enabled_for(node_id: u64) -> BrokerMetrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
            .expect("the bucket list is not empty")
            .add_global_label("node", node_id.to_string())
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, describe_all);
        let mut m = metrics::with_local_recorder(&recorder, || {
            use metrics::{counter, gauge, histogram};
            gauge!("raftmq_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            BrokerMetrics {
                exporter: None,
                produce_requests: counter!("raftmq_produce_requests_total"),
                produce_messages: counter!("raftmq_produce_messages_total"),
                produce_bytes: counter!("raftmq_produce_bytes_total"),
                fetch_requests: counter!("raftmq_fetch_requests_total"),
                fetch_batches: counter!("raftmq_fetch_batches_total"),
                fetch_messages: counter!("raftmq_fetch_messages_total"),
                fetch_bytes: counter!("raftmq_fetch_bytes_total"),
                connections: gauge!("raftmq_connections_open"),
                tls_expiry: gauge!("raftmq_tls_certificate_expiry_timestamp_seconds"),
                login_failures: counter!("raftmq_login_failures_total"),
                latency: std::array::from_fn(|_| OnceLock::new()),
                errors: std::array::from_fn(|_| OnceLock::new()),
                kafka_latency: std::array::from_fn(|_| OnceLock::new()),
                node: NodeGauges {
                    role: ROLES.map(|r| gauge!("raftmq_raft_role", "role" => role_label(r))),
                    term: gauge!("raftmq_raft_term"),
                    leader_id: gauge!("raftmq_raft_leader_id"),
                    commit_index: gauge!("raftmq_raft_commit_index"),
                    applied_index: gauge!("raftmq_raft_applied_index"),
                    first_index: gauge!("raftmq_log_first_index"),
                    last_index: gauge!("raftmq_log_last_index"),
                    synced_index: gauge!("raftmq_log_synced_index"),
                    segments: gauge!("raftmq_log_segments"),
                    disk_bytes: gauge!("raftmq_log_disk_bytes"),
                    pending_proposals: gauge!("raftmq_pending_proposals"),
                    fetch_waiters: gauge!("raftmq_fetch_waiters"),
                    storage_failed: gauge!("raftmq_storage_failed"),
                },
                raft: RaftEvents {
                    elections_started: counter!("raftmq_raft_elections_started_total"),
                    elections_won: counter!("raftmq_raft_elections_won_total"),
                    transfers_requested: counter!("raftmq_raft_leader_transfers_requested_total"),
                    fsync_log: histogram!("raftmq_fsync_duration_seconds", "file" => "log"),
                    fsync_hard_state: histogram!(
                        "raftmq_fsync_duration_seconds",
                        "file" => "hard_state"
                    ),
                    segments_deleted: counter!("raftmq_retention_segments_deleted_total"),
                    snapshots_sent: counter!("raftmq_snapshots_sent_total"),
                    snapshots_installed: counter!("raftmq_snapshots_installed_total"),
                    membership_changes: counter!("raftmq_membership_changes_total"),
                    membership_refusals: counter!("raftmq_membership_refusals_total"),
                    peer_messages_refused: counter!("raftmq_peer_messages_refused_total"),
                },
            }
        });
        m.exporter = Some(Exporter {
            recorder,
            handle,
            dynamic: Mutex::new(DynamicText::default()),
            topics: Mutex::new(std::collections::HashMap::new()),
            not_ready: Mutex::new("starting".into()),
        });
        m
    }

    /// Whether anything is recorded.
    pub fn enabled(&self) -> bool {
        self.exporter.is_some()
    }

    /// A connection opened (`+1`) or closed (`-1`).
    pub fn connection_opened(&self) {
        self.connections.increment(1.0);
    }

    /// See [`BrokerMetrics::connection_opened`].
    pub fn connection_closed(&self) {
        self.connections.decrement(1.0);
    }

    /// The counters of `topic` (the shared `_other` ones past [`TOPIC_SERIES_MAX`]
    /// topics). No-op counters when metrics are off.
    pub fn topic_counters(&self, topic: &str) -> Arc<TopicCounters> {
        let Some(exporter) = &self.exporter else {
            return Arc::new(TopicCounters {
                produce_messages: Counter::noop(),
                produce_bytes: Counter::noop(),
                fetch_messages: Counter::noop(),
                fetch_bytes: Counter::noop(),
            });
        };
        let mut topics = match exporter.topics.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(c) = topics.get(topic) {
            return Arc::clone(c);
        }
        let label = if topics.len() < TOPIC_SERIES_MAX {
            topic
        } else {
            OTHER_TOPICS_LABEL
        };
        if let Some(c) = topics.get(label) {
            return Arc::clone(c);
        }
        let label_value = label.to_string();
        let counters = metrics::with_local_recorder(&exporter.recorder, || TopicCounters {
            produce_messages: metrics::counter!("raftmq_topic_produce_messages_total", "topic" => label_value.clone()),
            produce_bytes: metrics::counter!("raftmq_topic_produce_bytes_total", "topic" => label_value.clone()),
            fetch_messages: metrics::counter!("raftmq_topic_fetch_messages_total", "topic" => label_value.clone()),
            fetch_bytes: metrics::counter!("raftmq_topic_fetch_bytes_total", "topic" => label_value.clone()),
        });
        let counters = Arc::new(counters);
        topics.insert(label.to_string(), Arc::clone(&counters));
        counters
    }

    /// Records one answered request: its latency, its error code if any, and what a
    /// produce stored or a fetch returned (in `topic`'s series too, when given).
    /// Called once per request by the responder.
    /// A Kafka-protocol request was answered: its latency under
    /// `raftmq_request_duration_seconds{protocol="kafka", api}` (`api` in snake
    /// case, e.g. `join_group`).
    pub fn on_kafka_response(&self, api_key: i16, api: &'static str, started: Instant) {
        let Some(exporter) = &self.exporter else {
            return;
        };
        let Some(slot) = usize::try_from(api_key)
            .ok()
            .and_then(|k| self.kafka_latency.get(k))
        else {
            return;
        };
        slot.get_or_init(|| {
            metrics::with_local_recorder(&exporter.recorder, || {
                metrics::histogram!(
                    "raftmq_request_duration_seconds",
                    "protocol" => "kafka",
                    "api" => api
                )
            })
        })
        .record(started.elapsed());
    }

    pub fn on_response(
        &self,
        api: Api,
        started: Instant,
        request_bytes: u64,
        error: Option<&pb::Error>,
        body: Option<&pb::response::Body>,
        topic: Option<&str>,
    ) {
        let Some(exporter) = &self.exporter else {
            return;
        };
        self.latency[api as usize]
            .get_or_init(|| {
                metrics::with_local_recorder(&exporter.recorder, || {
                    metrics::histogram!(
                        "raftmq_request_duration_seconds",
                        "protocol" => "native",
                        "api" => api.name()
                    )
                })
            })
            .record(started.elapsed());
        if let Some(error) = error {
            let slot = usize::try_from(error.code)
                .ok()
                .filter(|c| *c < ERROR_CODE_SLOTS - 1)
                .unwrap_or(ERROR_CODE_SLOTS - 1);
            self.errors[slot]
                .get_or_init(|| {
                    let code = error_code_label(error.code);
                    metrics::with_local_recorder(
                        &exporter.recorder,
                        || metrics::counter!("raftmq_errors_total", "code" => code),
                    )
                })
                .increment(1);
        }
        match (api, body) {
            (Api::Produce, body) => {
                self.produce_requests.increment(1);
                if let (None, Some(pb::response::Body::Produce(r))) = (error, body) {
                    self.produce_messages.increment(u64::from(r.count));
                    self.produce_bytes.increment(request_bytes);
                    if let Some(t) = topic.map(|t| self.topic_counters(t)) {
                        t.produce_messages.increment(u64::from(r.count));
                        t.produce_bytes.increment(request_bytes);
                    }
                }
            }
            (Api::Fetch, body) => {
                self.fetch_requests.increment(1);
                if let Some(pb::response::Body::Fetch(r)) = body {
                    self.count_fetched(topic, r);
                }
            }
            _ => {}
        }
    }

    /// Counts what a multi-queue fetch served, part by part (its parts are not
    /// observed one by one): as many fetches as parts, their batches per topic.
    pub fn on_fetch_many(&self, parts: &[pb::FetchRequest], answer: &pb::FetchManyResponse) {
        self.fetch_requests.increment(parts.len() as u64);
        for (part, result) in parts.iter().zip(&answer.results) {
            if let Some(fetch) = &result.fetch {
                self.count_fetched(Some(&part.topic), fetch);
            }
        }
    }

    fn count_fetched(&self, topic: Option<&str>, r: &pb::FetchResponse) {
        // Per batch, not per message: the header holds the count.
        let (mut messages, mut bytes) = (0u64, 0u64);
        for b in &r.batches {
            bytes += b.batch.len() as u64;
            if let Ok(h) = raftmq_proto::batch::parse_stored(&b.batch) {
                messages += u64::from(h.record_count);
            }
        }
        self.fetch_batches.increment(r.batches.len() as u64);
        self.fetch_messages.increment(messages);
        self.fetch_bytes.increment(bytes);
        if let Some(t) = topic.map(|t| self.topic_counters(t)) {
            t.fetch_messages.increment(messages);
            t.fetch_bytes.increment(bytes);
        }
    }

    /// Sets why the node is not ready (`None`: ready), for `/ready`.
    pub fn set_readiness(&self, not_ready: Option<&str>) {
        if let Some(exporter) = &self.exporter {
            let mut reason = match exporter.not_ready.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            reason.clear();
            reason.push_str(not_ready.unwrap_or(""));
        }
    }

    /// `Ok` when the node has a leader and has applied what it knows committed,
    /// else why not.
    pub fn readiness(&self) -> Result<(), String> {
        let Some(exporter) = &self.exporter else {
            return Err("metrics are off".into());
        };
        let reason = match exporter.not_ready.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        if reason.is_empty() {
            Ok(())
        } else {
            Err(reason)
        }
    }

    /// Replaces the text of the per-follower lag family (empty: not a leader).
    pub fn publish_followers(&self, text: String) {
        if let Some(exporter) = &self.exporter {
            lock(&exporter.dynamic).followers = text;
        }
    }

    /// Replaces the text of the group-lag families.
    pub fn publish_groups(&self, text: String) {
        if let Some(exporter) = &self.exporter {
            lock(&exporter.dynamic).groups = text;
        }
    }

    /// Replaces the text of the per-data-group families.
    pub fn publish_data_groups(&self, text: String) {
        if let Some(exporter) = &self.exporter {
            lock(&exporter.dynamic).data_groups = text;
        }
    }

    /// The Prometheus text exposition of every series; empty when metrics are off.
    pub fn render(&self) -> String {
        let Some(exporter) = &self.exporter else {
            return String::new();
        };
        let mut text = exporter.handle.render();
        let dynamic = lock(&exporter.dynamic);
        text.push_str(&dynamic.followers);
        text.push_str(&dynamic.groups);
        text.push_str(&dynamic.data_groups);
        text
    }

    /// Folds recorded histogram samples into buckets; run every [`UPKEEP_INTERVAL`]
    /// so memory stays bounded between scrapes.
    pub async fn run_upkeep(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let Some(exporter) = &self.exporter else {
            return;
        };
        let mut every = tokio::time::interval(UPKEEP_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => exporter.handle.run_upkeep(),
            }
        }
    }
}

/// A poisoned lock only means a panic while replacing a string: the text is whole.
fn lock(m: &Mutex<DynamicText>) -> std::sync::MutexGuard<'_, DynamicText> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn role_label(role: Role) -> &'static str {
    crate::node::role_name(role)
}

/// `ERROR_CODE_NOT_LEADER` → `not_leader`; unknown values → `other`.
fn error_code_label(code: i32) -> String {
    match pb::ErrorCode::try_from(code) {
        Ok(c) => c
            .as_str_name()
            .trim_start_matches("ERROR_CODE_")
            .to_ascii_lowercase(),
        Err(_) => "other".to_string(),
    }
}

/// A writer of one text-format family with a bounded label set.
pub struct FamilyWriter {
    text: String,
}

impl FamilyWriter {
    /// Starts a gauge family with its help line.
    pub fn gauge(name: &str, help: &str) -> FamilyWriter {
        let mut text = String::new();
        let _ = writeln!(text, "# HELP {name} {help}");
        let _ = writeln!(text, "# TYPE {name} gauge");
        FamilyWriter { text }
    }

    /// Adds one sample: `name{labels} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                self.text.push_str(k);
                self.text.push_str("=\"");
                escape_label_value(&mut self.text, v);
                self.text.push('"');
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// The family's text.
    pub fn finish(self) -> String {
        self.text
    }
}

/// Escapes `\`, `"` and newlines as the text format requires.
fn escape_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn describe_all() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "raftmq_build_info",
        "Always 1; the version label names the build."
    );
    describe_counter!(
        "raftmq_produce_requests_total",
        "Produce batches answered (any outcome); each part of a multi-queue request counts."
    );
    describe_counter!(
        "raftmq_produce_messages_total",
        "Messages acknowledged to producers (committed and applied)."
    );
    describe_counter!(
        "raftmq_produce_bytes_total",
        Unit::Bytes,
        "Record-batch bytes acknowledged to producers."
    );
    describe_counter!(
        "raftmq_fetch_requests_total",
        "Fetch requests answered (any outcome)."
    );
    describe_counter!(
        "raftmq_fetch_batches_total",
        "Record batches returned by fetches."
    );
    describe_counter!(
        "raftmq_fetch_messages_total",
        "Messages in the batches returned by fetches."
    );
    describe_counter!(
        "raftmq_fetch_bytes_total",
        Unit::Bytes,
        "Record-batch bytes returned by fetches."
    );
    describe_counter!(
        "raftmq_topic_produce_messages_total",
        "Messages stored by acknowledged produce requests, per topic (at most 256 topics; the rest under topic=\"_other\")."
    );
    describe_counter!(
        "raftmq_topic_produce_bytes_total",
        Unit::Bytes,
        "Record-batch bytes of acknowledged produce requests, per topic."
    );
    describe_counter!(
        "raftmq_topic_fetch_messages_total",
        "Messages returned by fetches, per topic."
    );
    describe_counter!(
        "raftmq_topic_fetch_bytes_total",
        Unit::Bytes,
        "Record-batch bytes returned by fetches, per topic."
    );
    describe_histogram!(
        "raftmq_request_duration_seconds",
        Unit::Seconds,
        "Time from reading a request to queueing its answer, by protocol (native, kafka) and API (fetch includes its long poll)."
    );
    describe_counter!(
        "raftmq_errors_total",
        "Error answers by protocol error code."
    );
    describe_gauge!(
        "raftmq_tls_certificate_expiry_timestamp_seconds",
        "When this node's TLS certificate expires (Unix seconds; follows SIGHUP reloads)."
    );
    describe_counter!(
        "raftmq_login_failures_total",
        "Refused logins (wrong password, unknown user, broken exchange) on the client and Kafka ports; an address that keeps failing has its attempts spaced out."
    );
    describe_gauge!(
        "raftmq_connections_open",
        "Open TCP connections on the broker port (clients and inbound peer links)."
    );
    describe_gauge!(
        "raftmq_raft_role",
        "1 for this node's current Raft role, 0 for the others."
    );
    describe_gauge!("raftmq_raft_term", "Current Raft term.");
    describe_gauge!(
        "raftmq_raft_leader_id",
        "The leader this node knows of (0: none)."
    );
    describe_gauge!(
        "raftmq_raft_commit_index",
        "Highest log index known committed."
    );
    describe_gauge!(
        "raftmq_raft_applied_index",
        "Highest log index applied to the state machine."
    );
    describe_gauge!(
        "raftmq_log_first_index",
        "First index held by the commit log."
    );
    describe_gauge!(
        "raftmq_log_last_index",
        "Last index written to the commit log."
    );
    describe_gauge!(
        "raftmq_log_synced_index",
        "Last index of the commit log known durable."
    );
    describe_gauge!("raftmq_log_segments", "Segment files of the commit log.");
    describe_gauge!(
        "raftmq_log_disk_bytes",
        Unit::Bytes,
        "Bytes of commit-log segment files on disk (preallocated size)."
    );
    describe_gauge!("raftmq_pending_proposals", "Proposals waiting to commit.");
    describe_gauge!("raftmq_fetch_waiters", "Fetches parked in a long poll.");
    describe_gauge!(
        "raftmq_storage_failed",
        "1 once the log could not be written: the node refuses writes until restarted."
    );
    describe_counter!(
        "raftmq_retention_segments_deleted_total",
        "Commit-log segments deleted by retention."
    );
    describe_counter!(
        "raftmq_snapshots_sent_total",
        "Snapshot transfers this node started as leader (followers behind the log start)."
    );
    describe_counter!(
        "raftmq_snapshots_installed_total",
        "Leader snapshots this node installed as follower."
    );
    describe_counter!(
        "raftmq_membership_changes_total",
        "Membership entries (join, add-node, remove-node, identity updates) this node appended."
    );
    describe_counter!(
        "raftmq_membership_refusals_total",
        "Membership requests this node refused (not leader, a change in flight, invalid)."
    );
    describe_counter!(
        "raftmq_peer_messages_refused_total",
        "Peer messages refused: another cluster, a replaced data directory or a removed node."
    );
    describe_counter!(
        "raftmq_raft_elections_started_total",
        "Elections this node started (became candidate)."
    );
    describe_counter!(
        "raftmq_raft_elections_won_total",
        "Elections this node won (became leader)."
    );
    describe_counter!(
        "raftmq_raft_leader_transfers_requested_total",
        "Leadership transfers requested of this node."
    );
    describe_histogram!(
        "raftmq_fsync_duration_seconds",
        Unit::Seconds,
        "Duration of one persist job's log sync (file=log) or hard-state write and sync (file=hard_state)."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_become_short_lowercase_labels() {
        assert_eq!(
            error_code_label(pb::ErrorCode::NotLeader as i32),
            "not_leader"
        );
        assert_eq!(error_code_label(9999), "other");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut w = FamilyWriter::gauge("x", "help");
        w.sample("x", &[("a", "q\"b\\\n")], 3);
        assert!(w.finish().ends_with("x{a=\"q\\\"b\\\\\\n\"} 3\n"));
    }

    #[test]
    fn a_disabled_registry_renders_nothing() {
        let m = BrokerMetrics::disabled();
        m.on_response(Api::Produce, Instant::now(), 10, None, None, None);
        assert!(m.render().is_empty());
    }

    #[test]
    fn an_enabled_registry_renders_its_fixed_series_and_answers() {
        let m = BrokerMetrics::enabled_for(7);
        m.node.set_role(Role::Leader);
        let error = pb::Error::new(pb::ErrorCode::Busy, "busy");
        m.on_response(Api::Produce, Instant::now(), 10, Some(&error), None, None);
        let text = m.render();
        assert!(
            text.contains("raftmq_raft_role{node=\"7\",role=\"leader\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("raftmq_errors_total{node=\"7\",code=\"busy\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "raftmq_request_duration_seconds_count{node=\"7\",protocol=\"native\",api=\"produce\"} 1"
            ),
            "{text}"
        );
    }
}
