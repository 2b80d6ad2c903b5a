//! A fake raftmq cluster for client tests: TEST DOUBLE ONLY. A few tokio tasks on
//! 127.0.0.1 speaking the real frame protocol and answering Metadata, CreateTopic,
//! InitProducer, Produce (with idempotent sequence checks), Fetch (long poll),
//! ListOffsets, ClusterStatus and AddDataGroups from memory. Several "nodes" share one state; only
//! the node marked leader serves, the others answer `NotLeader`. Faults can be
//! queued for the next produce requests. Everything stops when the `FakeCluster`
//! is dropped.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use raftmq_proto::batch;
use raftmq_proto::frame::{self, DEFAULT_MAX_FRAME_BYTES};
use raftmq_proto::pb::{self, request::Body as Req, response::Body as Resp};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio_util::codec::{FramedRead, FramedWrite};

/// What the next produce request suffers.
#[derive(Debug, Clone)]
pub enum ProduceFault {
    /// Store the batch, then answer TIMEOUT (the client cannot know it was stored).
    TimeoutAfterStoring,
    /// Drop the batch and answer TIMEOUT.
    TimeoutWithoutStoring,
    /// Answer BUSY without storing.
    Busy,
    /// Never answer this request (the client's own timeout must fire).
    Swallow,
    /// Refuse the batch with this error, storing nothing.
    Refuse(pb::Error),
}

#[derive(Default)]
pub struct QueueLog {
    /// (base offset, batch bytes).
    pub batches: Vec<(u64, Bytes)>,
    pub next_offset: u64,
    pub log_start: u64,
}

/// (producer id, topic, queue).
pub type SessionKey = (u64, String, u32);
/// (next expected sequence, base sequence -> base offset of each stored batch).
pub type Session = (u32, BTreeMap<u32, u64>);

#[derive(Default)]
pub struct State {
    pub addresses: Vec<String>,
    /// Index of the leader in `addresses`; `None` = no leader.
    pub leader: Option<usize>,
    /// Tell redirected clients where the leader is (else an empty leader address).
    pub redirect_with_address: bool,
    pub topics: BTreeMap<String, u32>,
    pub logs: HashMap<(String, u32), QueueLog>,
    pub sessions: HashMap<SessionKey, Session>,
    pub next_producer_id: u64,
    pub produce_faults: VecDeque<ProduceFault>,
    /// Faults for the first produce request carrying a batch with this base sequence.
    pub sequence_faults: HashMap<u32, ProduceFault>,
    /// Every produce request that reached a leader: (queue, base sequence, records).
    pub produce_log: Vec<(u32, u32, u32)>,
    /// Requests answered per node.
    pub requests: Vec<(usize, &'static str)>,
    pub groups: BTreeMap<String, FakeGroup>,
    pub next_member: u64,
    /// Data groups added so far (`AddDataGroups`), numbered from 1.
    pub data_groups: u32,
}

/// A consumer group, range-assigned over members sorted by id.
#[derive(Default)]
pub struct FakeGroup {
    pub generation: u64,
    /// Member id to its topics.
    pub members: BTreeMap<String, Vec<String>>,
    pub assignment: BTreeMap<String, Vec<pb::TopicQueue>>,
    pub offsets: BTreeMap<(String, u32), u64>,
}

impl FakeGroup {
    fn rebalance(&mut self, topics: &BTreeMap<String, u32>) {
        self.generation += 1;
        self.assignment.clear();
        let wanted: std::collections::BTreeSet<&String> = self.members.values().flatten().collect();
        for topic in wanted {
            let queues = topics.get(topic).copied().unwrap_or(0);
            let members: Vec<&String> = self
                .members
                .iter()
                .filter(|(_, t)| t.contains(topic))
                .map(|(m, _)| m)
                .collect();
            let n = members.len() as u32;
            for (i, m) in members.iter().enumerate() {
                let i = i as u32;
                let (from, to) = (queues * i / n, queues * (i + 1) / n);
                self.assignment
                    .entry((*m).clone())
                    .or_default()
                    .extend((from..to).map(|queue| pb::TopicQueue {
                        topic: topic.clone(),
                        queue,
                    }));
            }
        }
    }

    fn check(&self, member_id: &str, generation: u64) -> Result<(), pb::Error> {
        if !self.members.contains_key(member_id) {
            return Err(pb::Error::unknown_member("g", member_id));
        }
        if generation != self.generation {
            return Err(pb::Error::stale_generation(self.generation, generation));
        }
        Ok(())
    }
}

impl State {
    /// Every stored message of a queue as (offset, value), in order.
    pub fn values(&self, topic: &str, queue: u32) -> Vec<(u64, Bytes)> {
        let Some(log) = self.logs.get(&(topic.to_owned(), queue)) else {
            return Vec::new();
        };
        log.batches
            .iter()
            .flat_map(|(base, b)| batch::decode_records(b, *base))
            .map(|m| {
                let m = m.expect("stored batches are valid");
                (m.offset, m.value)
            })
            .collect()
    }
}

pub struct FakeCluster {
    pub state: Arc<Mutex<State>>,
    notify: Arc<Notify>,
    tasks: JoinSet<()>,
    /// Per node: a switch that closes its open connections.
    kill: Vec<Arc<Notify>>,
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

impl FakeCluster {
    /// `nodes` fake nodes; node 0 leads.
    pub async fn start(nodes: usize) -> FakeCluster {
        let state = Arc::new(Mutex::new(State {
            leader: Some(0),
            redirect_with_address: true,
            next_producer_id: 1000,
            ..State::default()
        }));
        let notify = Arc::new(Notify::new());
        let mut tasks = JoinSet::new();
        let mut kill = Vec::new();
        for index in 0..nodes {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let address = listener.local_addr().expect("addr").to_string();
            state.lock().unwrap().addresses.push(address);
            let switch = Arc::new(Notify::new());
            kill.push(Arc::clone(&switch));
            let (state, notify) = (Arc::clone(&state), Arc::clone(&notify));
            tasks.spawn(async move {
                let mut connections = JoinSet::new();
                loop {
                    let Ok((socket, _)) = listener.accept().await else {
                        return;
                    };
                    let (state, notify, switch) =
                        (Arc::clone(&state), Arc::clone(&notify), Arc::clone(&switch));
                    connections.spawn(async move {
                        tokio::select! {
                            _ = serve(index, socket, state, notify) => {}
                            _ = switch.notified() => {}
                        }
                    });
                }
            });
        }
        FakeCluster {
            state,
            notify,
            tasks,
            kill,
        }
    }

    pub fn address(&self, node: usize) -> String {
        self.state.lock().unwrap().addresses[node].clone()
    }

    pub fn set_leader(&self, leader: Option<usize>) {
        self.state.lock().unwrap().leader = leader;
    }

    pub fn create_topic(&self, name: &str, queues: u32) {
        self.state
            .lock()
            .unwrap()
            .topics
            .insert(name.to_owned(), queues);
    }

    pub fn fault(&self, fault: ProduceFault) {
        self.state.lock().unwrap().produce_faults.push_back(fault);
    }

    /// Closes every open connection of `node` (it keeps accepting new ones).
    pub fn drop_connections(&self, node: usize) {
        self.kill[node].notify_waiters();
    }
}

async fn serve(
    index: usize,
    socket: tokio::net::TcpStream,
    state: Arc<Mutex<State>>,
    notify: Arc<Notify>,
) {
    let (r, w) = socket.into_split();
    let mut frames = FramedRead::new(r, frame::codec(DEFAULT_MAX_FRAME_BYTES));
    let mut sink = FramedWrite::new(w, frame::codec(DEFAULT_MAX_FRAME_BYTES));
    let (tx, mut rx) = mpsc::channel::<pb::Response>(256);
    let writer = async move {
        while let Some(response) = rx.recv().await {
            if sink.send(frame::encode_response(&response)).await.is_err() {
                return;
            }
        }
    };
    let reader = async move {
        let mut fetches = JoinSet::new();
        while let Some(Ok(body)) = frames.next().await {
            let request = frame::decode_request(body.freeze()).expect("client sends valid frames");
            let id = request.correlation_id;
            let Some(body) = request.body else { continue };
            // Fetches long-poll in their own task; everything else is answered in
            // order, as a broker appends produce requests in order.
            if let Req::Fetch(f) = body {
                let (state, notify, tx) = (Arc::clone(&state), Arc::clone(&notify), tx.clone());
                fetches.spawn(async move {
                    let r = fetch(index, &state, &notify, id, f).await;
                    let _ = tx.send(r).await;
                });
                continue;
            }
            let answer = handle(index, &state, id, body);
            notify.notify_waiters();
            if let Some(r) = answer {
                if tx.send(r).await.is_err() {
                    return;
                }
            }
        }
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
    }
}

fn not_leader(state: &State) -> pb::Error {
    let address = state
        .leader
        .filter(|_| state.redirect_with_address)
        .map(|l| state.addresses[l].clone());
    pb::Error::not_leader(address.as_deref())
}

fn metadata(state: &State) -> pb::MetadataResponse {
    pb::MetadataResponse {
        nodes: state
            .addresses
            .iter()
            .enumerate()
            .map(|(i, a)| pb::NodeInfo {
                node_id: i as u64 + 1,
                address: a.clone(),
                ..pb::NodeInfo::default()
            })
            .collect(),
        leader_id: state.leader.map_or(0, |l| l as u64 + 1),
        topics: state
            .topics
            .iter()
            .map(|(name, &queues)| pb::TopicInfo {
                retention_ms: 0,
                retention_bytes: 0,
                name: name.clone(),
                queues,
                queue_groups: Vec::new(),
            })
            .collect(),
        cluster_id: 7,
        groups: Vec::new(),
    }
}

fn handle(index: usize, state: &Mutex<State>, id: u64, body: Req) -> Option<pb::Response> {
    let mut s = state.lock().unwrap();
    let key = body.api_key().name();
    s.requests.push((index, key));
    let ok = |b| Some(pb::Response::ok(id, b));
    let err = |e| Some(pb::Response::error(id, e));
    match body {
        Req::Metadata(_) => return ok(Resp::Metadata(metadata(&s))),
        Req::ClusterStatus(_) => {
            return ok(Resp::ClusterStatus(pb::ClusterStatusResponse {
                node_id: index as u64 + 1,
                role: if s.leader == Some(index) {
                    "leader"
                } else {
                    "follower"
                }
                .into(),
                term: 3,
                leader_id: s.leader.map_or(0, |l| l as u64 + 1),
                last_index: 10,
                commit_index: 10,
                ..Default::default()
            }))
        }
        _ => {}
    }
    if s.leader != Some(index) {
        return err(not_leader(&s));
    }
    match body {
        Req::CreateTopic(c) => {
            if s.topics.contains_key(&c.name) {
                return err(pb::Error::topic_exists(&c.name));
            }
            s.topics.insert(c.name, c.queues);
            ok(Resp::CreateTopic(pb::CreateTopicResponse {}))
        }
        Req::DeleteTopic(d) => match s.topics.remove(&d.name) {
            Some(_) => ok(Resp::DeleteTopic(pb::DeleteTopicResponse {})),
            None => err(pb::Error::unknown_topic(&d.name)),
        },
        Req::InitProducer(_) => {
            s.next_producer_id += 1;
            ok(Resp::InitProducer(pb::InitProducerResponse {
                producer_id: s.next_producer_id,
                producer_epoch: 0,
            }))
        }
        Req::Produce(p) => produce(&mut s, id, p),
        Req::AddDataGroups(a) => {
            if a.count == 0 {
                return err(pb::Error::invalid_request("add at least one data group"));
            }
            let nodes = s.addresses.len() as u64;
            let first = s.data_groups + 1;
            s.data_groups += a.count;
            let added = (first..=s.data_groups)
                .map(|g| pb::GroupReplicas {
                    group_id: g,
                    // Rotated so the preferred leaders spread.
                    replicas: (0..nodes)
                        .map(|k| (u64::from(g) - 1 + k) % nodes + 1)
                        .collect(),
                })
                .collect();
            ok(Resp::AddDataGroups(pb::AddDataGroupsResponse { added }))
        }
        Req::JoinGroup(j) => {
            let member_id = if j.member_id.is_empty() {
                s.next_member += 1;
                format!("member-{}", s.next_member)
            } else {
                j.member_id
            };
            let topics = s.topics.clone();
            let g = s.groups.entry(j.group).or_default();
            g.members.insert(member_id.clone(), j.topics);
            g.rebalance(&topics);
            ok(Resp::JoinGroup(pb::JoinGroupResponse {
                assignment: g.assignment.get(&member_id).cloned().unwrap_or_default(),
                member_id,
                generation: g.generation,
                heartbeat_interval_ms: 50,
            }))
        }
        Req::Heartbeat(h) => {
            let Some(g) = s.groups.get(&h.group) else {
                return err(pb::Error::unknown_group(&h.group));
            };
            if !g.members.contains_key(&h.member_id) {
                return err(pb::Error::unknown_member(&h.group, &h.member_id));
            }
            ok(Resp::Heartbeat(pb::HeartbeatResponse {
                generation: g.generation,
                assignment: g.assignment.get(&h.member_id).cloned().unwrap_or_default(),
            }))
        }
        Req::LeaveGroup(l) => {
            let topics = s.topics.clone();
            if let Some(g) = s.groups.get_mut(&l.group) {
                if g.members.remove(&l.member_id).is_some() {
                    g.rebalance(&topics);
                }
            }
            ok(Resp::LeaveGroup(pb::LeaveGroupResponse {}))
        }
        Req::OffsetCommit(c) => {
            let Some(g) = s.groups.get_mut(&c.group) else {
                return err(pb::Error::unknown_group(&c.group));
            };
            if let Err(e) = g.check(&c.member_id, c.generation) {
                return err(e);
            }
            for o in c.offsets {
                g.offsets.insert((o.topic, o.queue), o.offset);
            }
            ok(Resp::OffsetCommit(pb::OffsetCommitResponse::default()))
        }
        Req::DescribeGroup(d) => match s.groups.get(&d.group) {
            None => err(pb::Error::unknown_group(&d.group)),
            Some(g) => ok(Resp::DescribeGroup(pb::DescribeGroupResponse {
                group: d.group.clone(),
                generation: 0,
                members: Vec::new(),
                queues: g
                    .offsets
                    .iter()
                    .map(|((topic, queue), &offset)| pb::GroupQueueLag {
                        topic: topic.clone(),
                        queue: *queue,
                        has_committed: true,
                        committed: offset,
                        log_end: offset,
                        lag: 0,
                        log_end_unknown: false,
                    })
                    .collect(),
            })),
        },
        Req::OffsetFetch(f) => {
            let offsets = s
                .groups
                .get(&f.group)
                .map(|g| {
                    g.offsets
                        .iter()
                        .filter(|((t, q), _)| {
                            f.queues.is_empty()
                                || f.queues.iter().any(|tq| tq.topic == *t && tq.queue == *q)
                        })
                        .map(|((topic, queue), &offset)| pb::QueueOffset {
                            topic: topic.clone(),
                            queue: *queue,
                            offset,
                        })
                        .collect()
                })
                .unwrap_or_default();
            ok(Resp::OffsetFetch(pb::OffsetFetchResponse { offsets }))
        }
        Req::ListOffsets(l) => {
            let Some(&queues) = s.topics.get(&l.topic) else {
                return err(pb::Error::unknown_topic(&l.topic));
            };
            if l.queue >= queues {
                return err(pb::Error::invalid_queue(&l.topic, l.queue, queues));
            }
            let log = s.logs.entry((l.topic, l.queue)).or_default();
            let offset = match pb::OffsetSpec::try_from(l.spec) {
                Ok(pb::OffsetSpec::Earliest) => log.log_start,
                Ok(pb::OffsetSpec::Latest) => log.next_offset,
                _ => {
                    // First batch whose max timestamp reaches the time.
                    let mut at = log.next_offset;
                    for (base, b) in &log.batches {
                        if let Some(m) = batch::decode_records(b, *base)
                            .map(|m| m.expect("valid"))
                            .find(|m| m.timestamp_ms >= l.timestamp_ms)
                        {
                            at = m.offset;
                            break;
                        }
                    }
                    at
                }
            };
            ok(Resp::ListOffsets(pb::ListOffsetsResponse { offset }))
        }
        other => err(pb::Error::invalid_request(format!(
            "the fake broker does not serve {}",
            other.api_key()
        ))),
    }
}

fn produce(s: &mut State, id: u64, p: pb::ProduceRequest) -> Option<pb::Response> {
    let header = match batch::validate(&p.batch) {
        Ok(h) => h,
        Err(e) => return Some(pb::Response::error(id, e.into())),
    };
    let Some(&queues) = s.topics.get(&p.topic) else {
        return Some(pb::Response::error(id, pb::Error::unknown_topic(&p.topic)));
    };
    if p.queue >= queues {
        return Some(pb::Response::error(
            id,
            pb::Error::invalid_queue(&p.topic, p.queue, queues),
        ));
    }
    s.produce_log
        .push((p.queue, header.base_sequence, header.record_count));
    let fault = match s.sequence_faults.remove(&header.base_sequence) {
        Some(f) => Some(f),
        None => s.produce_faults.pop_front(),
    };
    match fault {
        Some(ProduceFault::TimeoutWithoutStoring) => {
            return Some(pb::Response::error(id, pb::Error::timeout("injected")))
        }
        Some(ProduceFault::Busy) => {
            return Some(pb::Response::error(id, pb::Error::busy("injected")))
        }
        Some(ProduceFault::Swallow) => return None,
        Some(ProduceFault::Refuse(e)) => return Some(pb::Response::error(id, e)),
        _ => {}
    }
    let session_key = (header.producer_id, p.topic.clone(), p.queue);
    if header.is_idempotent() {
        let (expected, stored) = s.sessions.entry(session_key.clone()).or_default();
        if header.base_sequence < *expected {
            let base_offset = *stored
                .get(&header.base_sequence)
                .expect("a duplicate matches a stored batch");
            return Some(pb::Response::duplicate_sequence(
                id,
                base_offset,
                header.record_count,
            ));
        }
        if header.base_sequence > *expected {
            return Some(pb::Response::error(
                id,
                pb::Error::out_of_order_sequence(*expected, header.base_sequence),
            ));
        }
    }
    let log = s.logs.entry((p.topic, p.queue)).or_default();
    let base_offset = log.next_offset;
    log.batches.push((base_offset, p.batch));
    log.next_offset += u64::from(header.record_count);
    if header.is_idempotent() {
        let (expected, stored) = s.sessions.get_mut(&session_key).expect("session");
        stored.insert(header.base_sequence, base_offset);
        *expected = header.base_sequence + header.record_count;
    }
    if matches!(fault, Some(ProduceFault::TimeoutAfterStoring)) {
        return Some(pb::Response::error(id, pb::Error::timeout("injected")));
    }
    Some(pb::Response::ok(
        id,
        Resp::Produce(pb::ProduceResponse {
            base_offset,
            count: header.record_count,
        }),
    ))
}

async fn fetch(
    index: usize,
    state: &Mutex<State>,
    notify: &Notify,
    id: u64,
    f: pb::FetchRequest,
) -> pb::Response {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(u64::from(f.max_wait_ms));
    loop {
        let notified = notify.notified();
        {
            let mut s = state.lock().unwrap();
            s.requests.push((index, "fetch"));
            if s.leader != Some(index) {
                return pb::Response::error(id, not_leader(&s));
            }
            if !f.group.is_empty() {
                // As the broker does: a member fetches with the generation it knows
                // until a heartbeat tells it of the next one (an older one is not
                // refused; a strict check made a member that fetched just before
                // its heartbeat rejoin under load).
                let fenced = match s.groups.get(&f.group) {
                    Some(g) => g.check(&f.member_id, f.generation.max(g.generation)),
                    None => Err(pb::Error::unknown_group(&f.group)),
                };
                if let Err(e) = fenced {
                    return pb::Response::error(id, e);
                }
            }
            let Some(&queues) = s.topics.get(&f.topic) else {
                return pb::Response::error(id, pb::Error::unknown_topic(&f.topic));
            };
            if f.queue >= queues {
                return pb::Response::error(
                    id,
                    pb::Error::invalid_queue(&f.topic, f.queue, queues),
                );
            }
            let log = s.logs.entry((f.topic.clone(), f.queue)).or_default();
            if f.offset < log.log_start || f.offset > log.next_offset {
                return pb::Response::error(
                    id,
                    pb::Error::offset_out_of_range(log.log_start, log.next_offset),
                );
            }
            let mut batches = Vec::new();
            let mut bytes = 0usize;
            for (base, b) in &log.batches {
                let count = u64::from(batch::BatchHeader::parse(b).expect("valid").record_count);
                if base + count <= f.offset {
                    continue;
                }
                if !batches.is_empty() && bytes + b.len() > f.max_bytes as usize {
                    break;
                }
                bytes += b.len();
                batches.push(pb::FetchedBatch {
                    base_offset: *base,
                    batch: b.clone(),
                });
            }
            if bytes >= f.min_bytes.max(1) as usize || tokio::time::Instant::now() >= deadline {
                return pb::Response::ok(
                    id,
                    Resp::Fetch(pb::FetchResponse {
                        batches,
                        high_watermark: log.next_offset,
                        log_start: log.log_start,
                    }),
                );
            }
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}
