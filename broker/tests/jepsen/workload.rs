//! The workload: idempotent producers (acks = quorum) and consumers on one topic,
//! recording every send, acknowledgement, read and offset commit in a [`History`].
//!
//! Every value is unique (`p{producer}-q{queue}-{sequence}`), so a read names the
//! send it came from. A producer has one batch in flight and retries it with the
//! same sequence numbers until it is acknowledged, so its batches are stored in
//! order and a retry can only ever be a duplicate the broker must drop.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftmq_client::pb::{self, request::Body as Req, response::Body as Resp};
use raftmq_client::{ClientError, ServerError};
use raftmq_proto::batch::BatchBuilder;

use super::client::Router;
use super::rng::Rng;

/// What the workload does. `Default`: topic `jepsen` with 3 queues, 3 producers,
/// 2 consumers, batches of 1-4 messages, up to 20 ms between batches.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// The topic.
    pub topic: String,
    /// Its queues.
    pub queues: u32,
    /// Concurrent idempotent producers.
    pub producers: u32,
    /// Concurrent consumers (each reads every queue and commits its own group).
    pub consumers: u32,
    /// Largest batch, in messages.
    pub batch_messages_max: u32,
    /// Longest pause between two batches of one producer.
    pub pause_ms_max: u64,
    /// Bytes of key on every message (padding, to fill a disk quickly).
    pub key_bytes: usize,
    /// Tasks reading queues' latest offsets from random nodes (the linearizable-read
    /// check: no read below a write acknowledged, or a read completed, before it).
    pub offset_readers: u32,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            topic: "jepsen".into(),
            queues: 3,
            producers: 3,
            consumers: 2,
            batch_messages_max: 4,
            pause_ms_max: 20,
            key_bytes: 0,
            offset_readers: 2,
        }
    }
}

/// One recorded operation.
#[derive(Debug, Clone)]
pub enum Event {
    /// A batch's first attempt.
    Send {
        /// Producer id.
        producer: u64,
        /// Queue.
        queue: u32,
        /// The values, in order.
        values: Vec<String>,
    },
    /// The batch is stored (`base_offset` unknown when the broker answered that it
    /// was a duplicate of a batch too old to remember where).
    Ack {
        /// Producer id.
        producer: u64,
        /// Queue.
        queue: u32,
        /// The values, in order.
        values: Vec<String>,
        /// Offset of the first value.
        base_offset: Option<u64>,
    },
    /// Gave up at the end of the run: it may or may not be stored.
    Indeterminate {
        /// Producer id.
        producer: u64,
        /// Queue.
        queue: u32,
        /// The values.
        values: Vec<String>,
    },
    /// A non-retriable refusal; the producer stops.
    Refused {
        /// Producer id.
        producer: u64,
        /// Queue.
        queue: u32,
        /// The values.
        values: Vec<String>,
        /// What the broker said.
        error: String,
    },
    /// A group offset commit, acknowledged.
    CommitAck {
        /// Group.
        group: String,
        /// Queue.
        queue: u32,
        /// The committed next offset.
        offset: u64,
    },
    /// A group offset commit without a definite answer.
    CommitIndeterminate {
        /// Group.
        group: String,
        /// Queue.
        queue: u32,
        /// The offset sent.
        offset: u64,
    },
}

/// Every event of a run, in the order recorded, with error counts. Reads are kept
/// as one value per (queue, offset) plus every conflicting read, so that a long
/// soak's memory grows with the log, not with the number of reads.
#[derive(Debug, Default)]
pub struct History {
    events: Mutex<Vec<Event>>,
    errors: Mutex<BTreeMap<String, u64>>,
    reads: Mutex<Reads>,
}

/// A timed operation on a queue's end offset, for the linearizable-read check: an
/// acknowledged write (`end` = its last offset + 1) or a read of the latest offset
/// (`end` = what the broker answered).
#[derive(Debug, Clone, Copy)]
pub struct EndOp {
    /// The queue.
    pub queue: u32,
    /// When the request was sent.
    pub invoked: Instant,
    /// When its answer came.
    pub completed: Instant,
    /// The end offset it wrote or read.
    pub end: u64,
    /// A read (else an acknowledged write).
    pub read: bool,
    /// The node that answered.
    pub node: u64,
}

/// What consumers read.
#[derive(Debug, Default, Clone)]
pub struct Reads {
    /// Latest-offset reads and acknowledged writes with their times (bounded).
    pub end_ops: Vec<EndOp>,
    /// Messages read (repeats included).
    pub count: u64,
    /// The first value read at each (queue, offset), with the node that served it.
    pub values: BTreeMap<(u32, u64), (String, u64)>,
    /// Reads that found another value at an offset already read: (queue, offset,
    /// first value, first node, this value, this node).
    pub conflicts: Vec<(u32, u64, String, u64, String, u64)>,
}

impl History {
    /// Records `event`.
    pub fn push(&self, event: Event) {
        self.events.lock().expect("history lock").push(event);
    }

    /// Counts a retried failure by kind.
    pub fn count_error(&self, error: &ClientError) {
        let kind = match error {
            ClientError::Server(e) => format!("{:?}", e.code()),
            ClientError::Timeout(_) => "ClientTimeout".into(),
            ClientError::Io(_)
            | ClientError::Connect { .. }
            | ClientError::ConnectionClosed(_)
            | ClientError::ClosedUnanswered(_) => "Transport".into(),
            other => format!("{other}").chars().take(40).collect(),
        };
        *self
            .errors
            .lock()
            .expect("errors lock")
            .entry(kind)
            .or_default() += 1;
    }

    /// Records that `node` returned `value` at `offset` of `queue`.
    pub fn record_read(&self, node: u64, queue: u32, offset: u64, value: String) {
        let mut reads = self.reads.lock().expect("reads lock");
        reads.count += 1;
        match reads.values.get(&(queue, offset)) {
            None => {
                reads.values.insert((queue, offset), (value, node));
            }
            Some((first, first_node)) if *first != value => {
                let conflict = (queue, offset, first.clone(), *first_node, value, node);
                if reads.conflicts.len() < 1000 {
                    reads.conflicts.push(conflict);
                }
            }
            Some(_) => {}
        }
    }

    /// Records a timed write or latest-offset read (the first million are kept).
    pub fn record_end_op(&self, op: EndOp) {
        let mut reads = self.reads.lock().expect("reads lock");
        if reads.end_ops.len() < 1_000_000 {
            reads.end_ops.push(op);
        }
    }

    /// A copy of the reads.
    pub fn reads(&self) -> Reads {
        self.reads.lock().expect("reads lock").clone()
    }

    /// Acknowledged batches so far.
    pub fn acks(&self) -> usize {
        self.events
            .lock()
            .expect("history lock")
            .iter()
            .filter(|e| matches!(e, Event::Ack { .. }))
            .count()
    }

    /// A copy of the events.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().expect("history lock").clone()
    }

    /// Retried failures by kind.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().expect("errors lock").clone()
    }
}

/// A running workload.
pub struct Workload {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// What happened.
    pub history: Arc<History>,
    /// The configuration.
    pub config: WorkloadConfig,
}

impl Workload {
    /// Starts the producers and consumers. No task runs past `hard_deadline`.
    pub fn start(
        router: Arc<Router>,
        config: WorkloadConfig,
        rng: &mut Rng,
        hard_deadline: Instant,
    ) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let history = Arc::new(History::default());
        let mut tasks = Vec::new();
        for i in 0..config.producers {
            tasks.push(tokio::spawn(producer(
                router.clone(),
                history.clone(),
                config.clone(),
                rng.fork(u64::from(i)),
                stop.clone(),
                hard_deadline,
            )));
        }
        for i in 0..config.offset_readers {
            tasks.push(tokio::spawn(offset_reader(
                router.clone(),
                history.clone(),
                config.clone(),
                rng.fork(2000 + u64::from(i)),
                stop.clone(),
                hard_deadline,
            )));
        }
        for i in 0..config.consumers {
            tasks.push(tokio::spawn(consumer(
                router.clone(),
                history.clone(),
                config.clone(),
                format!("g{i}"),
                rng.fork(1000 + u64::from(i)),
                stop.clone(),
                hard_deadline,
            )));
        }
        Workload {
            stop,
            tasks,
            history,
            config,
        }
    }

    /// Asks every task to finish its operation in flight, and waits for them.
    pub async fn stop(self) -> Arc<History> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("workload task panicked");
        }
        self.history
    }
}

async fn producer(
    router: Arc<Router>,
    history: Arc<History>,
    config: WorkloadConfig,
    mut rng: Rng,
    stop: Arc<AtomicBool>,
    hard_deadline: Instant,
) {
    let (producer, epoch) = loop {
        let body = Req::InitProducer(pb::InitProducerRequest {});
        match router.call_leader(body, hard_deadline).await {
            Ok(Resp::InitProducer(p)) => break (p.producer_id, p.producer_epoch as u16),
            Ok(other) => panic!("unexpected answer to InitProducer: {other:?}"),
            Err(e) if Instant::now() < hard_deadline => history.count_error(&e),
            Err(_) => return,
        }
    };
    let mut next_sequence = vec![0u32; config.queues as usize];
    while !stop.load(Ordering::Relaxed) {
        let queue = rng.below(u64::from(config.queues)) as u32;
        let count = rng.between(1, u64::from(config.batch_messages_max)) as u32;
        let base = next_sequence[queue as usize];
        let values: Vec<String> = (0..count)
            .map(|i| format!("p{producer}-q{queue}-{}", base + i))
            .collect();
        let mut builder = BatchBuilder::with_capacity(256 + config.key_bytes * values.len());
        builder.set_producer(producer, epoch, base);
        let key = vec![b'k'; config.key_bytes];
        for v in &values {
            let key = (!key.is_empty()).then_some(&key[..]);
            builder.push(key, v.as_bytes(), &[], 1_700_000_000_000);
        }
        let batch = builder.finish();
        history.push(Event::Send {
            producer,
            queue,
            values: values.clone(),
        });
        loop {
            if Instant::now() > hard_deadline {
                history.push(Event::Indeterminate {
                    producer,
                    queue,
                    values,
                });
                return;
            }
            let body = Req::Produce(pb::ProduceRequest {
                topic: config.topic.clone(),
                queue,
                acks: pb::Acks::Quorum as i32,
                batch: batch.clone(),
            });
            let invoked = Instant::now();
            let (node, result) = router.call_leader_once(body).await;
            match result {
                Ok(Resp::Produce(p)) => {
                    assert_eq!(p.count, count, "acknowledged count");
                    history.record_end_op(EndOp {
                        queue,
                        invoked,
                        completed: Instant::now(),
                        end: p.base_offset + u64::from(count),
                        read: false,
                        node,
                    });
                    history.push(Event::Ack {
                        producer,
                        queue,
                        values,
                        base_offset: Some(p.base_offset),
                    });
                    break;
                }
                Ok(other) => panic!("unexpected answer to Produce: {other:?}"),
                Err(ClientError::Server(ServerError::DuplicateSequence { .. })) => {
                    history.push(Event::Ack {
                        producer,
                        queue,
                        values,
                        base_offset: None,
                    });
                    break;
                }
                Err(e) if e.is_retriable() => {
                    history.count_error(&e);
                    tokio::time::sleep(Duration::from_millis(rng.between(10, 60))).await;
                }
                Err(e) => {
                    history.push(Event::Refused {
                        producer,
                        queue,
                        values,
                        error: e.to_string(),
                    });
                    return;
                }
            }
        }
        next_sequence[queue as usize] = base + count;
        tokio::time::sleep(Duration::from_millis(rng.below(config.pause_ms_max + 1))).await;
    }
}

async fn consumer(
    router: Arc<Router>,
    history: Arc<History>,
    config: WorkloadConfig,
    group: String,
    mut rng: Rng,
    stop: Arc<AtomicBool>,
    hard_deadline: Instant,
) {
    let ids = router.ids();
    let mut position = vec![0u64; config.queues as usize];
    let mut committed = vec![0u64; config.queues as usize];
    while !stop.load(Ordering::Relaxed) && Instant::now() < hard_deadline {
        let queue = rng.below(u64::from(config.queues)) as u32;
        let q = queue as usize;
        let body = Req::Fetch(pb::FetchRequest {
            topic: config.topic.clone(),
            queue,
            offset: position[q],
            max_bytes: 16 * 1024,
            max_wait_ms: 50,
            min_bytes: 1,
            ..pb::FetchRequest::default()
        });
        // Half the reads at the leader, half at any node (followers serve committed
        // data too, possibly stale, never uncommitted).
        let (node, result) = if rng.percent(50) {
            router.call_leader_once(body).await
        } else {
            let node = *rng.pick(&ids);
            (node, router.call_node(node, body).await)
        };
        match result {
            Ok(Resp::Fetch(fetch)) => {
                for b in &fetch.batches {
                    for m in raftmq_proto::batch::decode_records(&b.batch, b.base_offset) {
                        let m = m.expect("a stored batch decodes");
                        if m.offset < position[q] {
                            continue;
                        }
                        let value = String::from_utf8_lossy(&m.value).into_owned();
                        history.record_read(node, queue, m.offset, value);
                        position[q] = m.offset + 1;
                    }
                }
            }
            Ok(other) => panic!("unexpected answer to Fetch: {other:?}"),
            Err(ClientError::Server(ServerError::OffsetOutOfRange { log_start, .. }))
                if position[q] < log_start =>
            {
                // Retention deleted what comes next: go on from the log start, as
                // a consumer with `OffsetReset::Earliest` does.
                position[q] = log_start;
            }
            Err(e) => {
                history.count_error(&e);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if rng.percent(10) && position[q] > committed[q] {
            let offset = position[q];
            let body = Req::OffsetCommit(pb::OffsetCommitRequest {
                group: group.clone(),
                member_id: String::new(),
                generation: 0,
                offsets: vec![pb::QueueOffset {
                    topic: config.topic.clone(),
                    queue,
                    offset,
                }],
            });
            let (_, result) = router.call_leader_once(body).await;
            match result {
                Ok(_) => history.push(Event::CommitAck {
                    group: group.clone(),
                    queue,
                    offset,
                }),
                Err(e) => {
                    history.count_error(&e);
                    history.push(Event::CommitIndeterminate {
                        group: group.clone(),
                        queue,
                        offset,
                    });
                }
            }
            committed[q] = offset;
        }
        // Re-read from an earlier offset now and then: the same offset read again,
        // perhaps from another node after a leader change, must hold the same value.
        if rng.percent(5) {
            position[q] = rng.below(position[q] + 1);
        }
        tokio::time::sleep(Duration::from_millis(rng.below(10))).await;
    }
}

/// Asks random nodes for random queues' latest offsets, timing each answer.
async fn offset_reader(
    router: Arc<Router>,
    history: Arc<History>,
    config: WorkloadConfig,
    mut rng: Rng,
    stop: Arc<AtomicBool>,
    hard_deadline: Instant,
) {
    let ids = router.ids();
    while !stop.load(Ordering::Relaxed) && Instant::now() < hard_deadline {
        let queue = rng.below(u64::from(config.queues)) as u32;
        let node = *rng.pick(&ids);
        let body = Req::ListOffsets(pb::ListOffsetsRequest {
            topic: config.topic.clone(),
            queue,
            spec: pb::OffsetSpec::Latest as i32,
            timestamp_ms: 0,
        });
        let invoked = Instant::now();
        match router.call_node(node, body).await {
            Ok(Resp::ListOffsets(r)) => history.record_end_op(EndOp {
                queue,
                invoked,
                completed: Instant::now(),
                end: r.offset,
                read: true,
                node,
            }),
            Ok(other) => panic!("unexpected answer to ListOffsets: {other:?}"),
            Err(e) => {
                history.count_error(&e);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.below(20))).await;
    }
}

/// Reads queue `queue` of `topic` from node `node` alone, from offset 0 to its high
/// watermark. Bounded by `deadline`.
pub async fn drain(
    router: &Router,
    node: u64,
    topic: &str,
    queue: u32,
    deadline: Instant,
) -> Result<Vec<(u64, String)>, String> {
    let mut out = Vec::new();
    let mut offset = 0u64;
    loop {
        if Instant::now() > deadline {
            return Err(format!(
                "node {node} queue {queue}: drain timed out at {offset}"
            ));
        }
        let body = Req::Fetch(pb::FetchRequest {
            topic: topic.into(),
            queue,
            offset,
            max_bytes: 1 << 20,
            ..pb::FetchRequest::default()
        });
        let fetch = match router.call_node(node, body).await {
            Ok(Resp::Fetch(f)) => f,
            Ok(other) => return Err(format!("unexpected answer to Fetch: {other:?}")),
            Err(ClientError::Server(ServerError::OffsetOutOfRange { log_start, .. }))
                if out.is_empty() && offset < log_start =>
            {
                // Retention deleted the beginning: the drain starts at the log start
                // (the checker knows whether the scenario deletes anything).
                offset = log_start;
                continue;
            }
            Err(e) => {
                if e.is_retriable() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                return Err(format!("node {node} queue {queue} at {offset}: {e}"));
            }
        };
        for b in &fetch.batches {
            for m in raftmq_proto::batch::decode_records(&b.batch, b.base_offset) {
                let m = m.map_err(|e| format!("node {node} queue {queue}: bad batch: {e}"))?;
                if m.offset >= offset {
                    out.push((m.offset, String::from_utf8_lossy(&m.value).into_owned()));
                }
            }
        }
        offset = out.last().map_or(offset, |(o, _)| o + 1);
        if offset >= fetch.high_watermark {
            return Ok(out);
        }
        if fetch.batches.is_empty() {
            return Err(format!(
                "node {node} queue {queue}: empty fetch at {offset} below the high watermark {}",
                fetch.high_watermark
            ));
        }
    }
}

/// The group's committed offsets by queue, from the leader.
pub async fn committed_offsets(
    router: &Router,
    group: &str,
    deadline: Instant,
) -> Result<BTreeMap<u32, u64>, String> {
    let body = Req::OffsetFetch(pb::OffsetFetchRequest {
        group: group.into(),
        queues: Vec::new(),
    });
    match router.call_leader(body, deadline).await {
        Ok(Resp::OffsetFetch(f)) => {
            Ok(f.offsets.into_iter().map(|o| (o.queue, o.offset)).collect())
        }
        Ok(other) => Err(format!("unexpected answer to OffsetFetch: {other:?}")),
        Err(ClientError::Server(ServerError::UnknownGroup { .. })) => Ok(BTreeMap::new()),
        Err(e) => Err(format!("offset fetch for {group}: {e}")),
    }
}
