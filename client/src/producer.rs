//! [`Producer`]: batching, lingering, pipelining and idempotent retries.
//!
//! Each (topic, queue) gets a worker task that owns its [`Accumulator`], its sealed
//! batches and its window of in-flight produce requests. Answers are handled in send
//! order. When a batch fails with a retriable error the worker stops sending, lets
//! the in-flight ones finish, then resends every failed batch, the same bytes with
//! the same sequence numbers, in order and one at a time, before opening the window
//! again. So batch *n + 1* never overtakes batch *n*: the broker's sequence checks
//! accept the retries and turn a batch it already stored into `DuplicateSequence`,
//! which counts as success. A batch the broker refuses for good (too large,
//! corrupt, unknown queue) fails its messages; the batches after it are renumbered
//! down (header rewritten, CRC recomputed) so the sequence has no gap. A batch whose
//! outcome stays unknown after every retry (timeouts) is not renumbered around:
//! it may have been stored.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use raftmq_proto::pb::{self, request, response};
use raftmq_proto::ServerError;
use tokio::sync::{mpsc, oneshot};

use crate::accumulator::{Accumulator, RecordRef, SealedBatch};
use crate::client::unexpected;
use crate::partitioner::QueueChooser;
use crate::{Client, ClientError, Partitioner, Target};

/// A message to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic.
    pub topic: String,
    /// Optional key (chooses the queue under [`Partitioner::KeyHash`]).
    pub key: Option<Bytes>,
    /// The value.
    pub value: Bytes,
    /// Headers, in order.
    pub headers: Vec<(String, Bytes)>,
    /// Milliseconds since the Unix epoch; `None` = the time of `send`.
    pub timestamp_ms: Option<i64>,
    /// An explicit queue; `None` = the partitioner chooses.
    pub queue: Option<u32>,
}

impl Message {
    /// A message with a value and nothing else.
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> Self {
        Message {
            topic: topic.into(),
            key: None,
            value: value.into(),
            headers: Vec::new(),
            timestamp_ms: None,
            queue: None,
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((key.into(), value.into()));
        self
    }

    /// Sends to this queue.
    pub fn with_queue(mut self, queue: u32) -> Self {
        self.queue = Some(queue);
        self
    }

    /// Sets the timestamp.
    pub fn with_timestamp(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }
}

/// Where an acknowledged message was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Its queue.
    pub queue: u32,
    /// Its offset in the queue.
    pub offset: u64,
    /// Its timestamp.
    pub timestamp_ms: i64,
}

/// Which acknowledgement a produce waits for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Acks {
    /// Once a quorum holds the batch (durably, in the default durability mode).
    #[default]
    Quorum,
    /// Once the leader has written it to its own log (not replicated, not synced).
    /// Offsets are assigned when the batch commits, after this answer: the
    /// [`RecordMetadata::offset`] is then `u64::MAX` (unknown).
    Leader,
}

impl Acks {
    fn to_pb(self) -> pb::Acks {
        match self {
            Acks::Quorum => pb::Acks::Quorum,
            Acks::Leader => pb::Acks::Leader,
        }
    }
}

/// Producer settings. See [`ProducerBuilder`] for the defaults.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// How long an open batch waits for more records before it is sent while nothing
    /// else is waiting to be sent. Default 1 ms: under load batches grow anyway
    /// because a batch stays open while earlier ones wait for the in-flight window.
    pub linger: Duration,
    /// Largest batch, header included. Default 256 KiB. A single message larger than
    /// this is refused.
    pub max_batch_bytes: usize,
    /// Produce requests in flight per queue. Default 5 (as Kafka's idempotent
    /// producer); 1 gives strict order even without idempotence.
    pub max_in_flight_per_queue: usize,
    /// Messages buffered per queue before `send` waits for room. Default 8192.
    pub queue_buffer_messages: usize,
    /// Acknowledgement level. Default quorum.
    pub acks: Acks,
    /// Whether batches carry producer id, epoch and sequences so that the broker
    /// drops duplicates from retries. Default on.
    pub idempotent: bool,
    /// How queues are chosen. Default key hash.
    pub partitioner: Partitioner,
    /// Attempts after the first for one batch. Default: the client's `max_retries`.
    pub max_retries: Option<u32>,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            linger: Duration::from_millis(1),
            max_batch_bytes: 256 * 1024,
            max_in_flight_per_queue: 5,
            queue_buffer_messages: 8192,
            acks: Acks::Quorum,
            idempotent: true,
            partitioner: Partitioner::KeyHash,
            max_retries: None,
        }
    }
}

/// Builds a [`Producer`].
#[derive(Debug, Clone)]
pub struct ProducerBuilder {
    client: Client,
    config: ProducerConfig,
}

impl ProducerBuilder {
    /// Sets [`ProducerConfig::linger`].
    pub fn linger(mut self, linger: Duration) -> Self {
        self.config.linger = linger;
        self
    }
    /// Sets [`ProducerConfig::max_batch_bytes`].
    pub fn max_batch_bytes(mut self, bytes: usize) -> Self {
        self.config.max_batch_bytes = bytes;
        self
    }
    /// Sets [`ProducerConfig::max_in_flight_per_queue`] (at least 1).
    pub fn max_in_flight_per_queue(mut self, n: usize) -> Self {
        self.config.max_in_flight_per_queue = n.max(1);
        self
    }
    /// Sets [`ProducerConfig::queue_buffer_messages`] (at least 1).
    pub fn queue_buffer_messages(mut self, n: usize) -> Self {
        self.config.queue_buffer_messages = n.max(1);
        self
    }
    /// Sets [`ProducerConfig::acks`].
    pub fn acks(mut self, acks: Acks) -> Self {
        self.config.acks = acks;
        self
    }
    /// Sets [`ProducerConfig::idempotent`].
    pub fn idempotent(mut self, on: bool) -> Self {
        self.config.idempotent = on;
        self
    }
    /// Sets [`ProducerConfig::partitioner`].
    pub fn partitioner(mut self, partitioner: Partitioner) -> Self {
        self.config.partitioner = partitioner;
        self
    }
    /// Sets [`ProducerConfig::max_retries`].
    pub fn max_retries(mut self, n: u32) -> Self {
        self.config.max_retries = Some(n);
        self
    }
    /// Replaces the whole configuration.
    pub fn config(mut self, config: ProducerConfig) -> Self {
        self.config = config;
        self
    }

    /// Creates the producer; with idempotence, asks the leader for a producer id.
    pub async fn build(self) -> Result<Producer, ClientError> {
        Producer::new(self.client, self.config).await
    }
}

/// The future of one message's acknowledgement.
#[derive(Debug)]
pub struct DeliveryFuture {
    rx: oneshot::Receiver<Result<RecordMetadata, ClientError>>,
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClientError::Closed)))
    }
}

type Reply = oneshot::Sender<Result<RecordMetadata, ClientError>>;

enum Command {
    Send(Message, Reply),
    Flush(oneshot::Sender<()>),
}

struct ProducerInner {
    client: Client,
    config: Arc<ProducerConfig>,
    identity: Option<(u64, u16)>,
    chooser: QueueChooser,
    /// Topic to per-queue workers (index = queue), started on first use.
    workers: Mutex<HashMap<String, Vec<Option<mpsc::Sender<Command>>>>>,
    closed: AtomicBool,
}

/// Sends messages in batches. Cheap to clone; clones share batches and workers.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<ProducerInner>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("identity", &self.inner.identity)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Producer {
    /// A builder with the default [`ProducerConfig`].
    pub fn builder(client: &Client) -> ProducerBuilder {
        ProducerBuilder {
            client: client.clone(),
            config: ProducerConfig::default(),
        }
    }

    /// Creates a producer; with idempotence, asks the leader for a producer id.
    pub async fn new(client: Client, config: ProducerConfig) -> Result<Producer, ClientError> {
        let identity = if config.idempotent {
            let body = request::Body::InitProducer(pb::InitProducerRequest {});
            match client.request(Target::Leader, body).await? {
                response::Body::InitProducer(r) => {
                    let epoch = u16::try_from(r.producer_epoch).map_err(|_| {
                        ClientError::Protocol(format!(
                            "producer epoch {} does not fit the batch header",
                            r.producer_epoch
                        ))
                    })?;
                    if r.producer_id == 0 {
                        return Err(ClientError::Protocol("producer id 0".into()));
                    }
                    Some((r.producer_id, epoch))
                }
                other => return Err(unexpected("init_producer", &other)),
            }
        } else {
            None
        };
        Ok(Producer {
            inner: Arc::new(ProducerInner {
                chooser: QueueChooser::new(config.partitioner),
                client,
                config: Arc::new(config),
                identity,
                workers: Mutex::new(HashMap::new()),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// The idempotent identity `(producer id, epoch)`, if any.
    pub fn identity(&self) -> Option<(u64, u16)> {
        self.inner.identity
    }

    /// Queues `message` and returns the future of its acknowledgement. Waits only
    /// when the queue's buffer is full. Messages sent to one queue are stored in the
    /// order of their `send` calls.
    pub async fn send(&self, mut message: Message) -> Result<DeliveryFuture, ClientError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(ClientError::Closed);
        }
        let record = RecordRef {
            key: message.key.as_deref(),
            value: &message.value,
            headers: &message.headers,
            timestamp_ms: 0,
        };
        let bytes = record.encoded_bytes();
        if !Accumulator::<()>::fits_alone(self.inner.config.max_batch_bytes, bytes) {
            return Err(ClientError::InvalidArgument(format!(
                "message of {bytes} bytes does not fit in a batch of {} bytes",
                self.inner.config.max_batch_bytes
            )));
        }
        let queues = self.inner.client.topic_queues(&message.topic).await?;
        if queues == 0 {
            return Err(ClientError::Protocol(format!(
                "topic {:?} has no queues",
                message.topic
            )));
        }
        let queue = match message.queue {
            Some(q) if q >= queues => {
                return Err(ClientError::InvalidArgument(format!(
                    "topic {:?} has {queues} queues, no queue {q}",
                    message.topic
                )))
            }
            Some(q) => q,
            None => self.inner.chooser.choose(message.key.as_deref(), queues),
        };
        message.queue = Some(queue);
        message.timestamp_ms.get_or_insert_with(now_ms);
        let worker = self.worker(&message.topic, queue)?;
        let (tx, rx) = oneshot::channel();
        worker
            .send(Command::Send(message, tx))
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(DeliveryFuture { rx })
    }

    /// Sends and waits for the acknowledgement.
    pub async fn send_and_wait(&self, message: Message) -> Result<RecordMetadata, ClientError> {
        self.send(message).await?.await
    }

    /// Queues every message (in order) and returns their acknowledgement futures.
    pub async fn send_batch(
        &self,
        messages: impl IntoIterator<Item = Message>,
    ) -> Result<Vec<DeliveryFuture>, ClientError> {
        let mut futures = Vec::new();
        for m in messages {
            futures.push(self.send(m).await?);
        }
        Ok(futures)
    }

    /// Sends every open batch now and waits until every message queued before this
    /// call is acknowledged or failed.
    pub async fn flush(&self) {
        let workers: Vec<mpsc::Sender<Command>> = match self.inner.workers.lock() {
            Ok(w) => w.values().flatten().flatten().cloned().collect(),
            Err(_) => return,
        };
        let mut waits = Vec::new();
        for w in workers {
            let (tx, rx) = oneshot::channel();
            if w.send(Command::Flush(tx)).await.is_ok() {
                waits.push(rx);
            }
        }
        for rx in waits {
            let _ = rx.await;
        }
    }

    /// Flushes, then stops the workers. Later sends fail with [`ClientError::Closed`].
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.flush().await;
        if let Ok(mut w) = self.inner.workers.lock() {
            w.clear();
        }
    }

    fn worker(&self, topic: &str, queue: u32) -> Result<mpsc::Sender<Command>, ClientError> {
        let mut workers = self.inner.workers.lock().map_err(|_| ClientError::Closed)?;
        if let Some(Some(w)) = workers.get(topic).and_then(|q| q.get(queue as usize)) {
            if !w.is_closed() {
                return Ok(w.clone());
            }
        }
        let (tx, rx) = mpsc::channel(self.inner.config.queue_buffer_messages);
        let config = &self.inner.config;
        let worker = QueueWorker {
            client: self.inner.client.clone(),
            topic: topic.to_owned(),
            queue,
            acks: config.acks.to_pb() as i32,
            max_retries: config
                .max_retries
                .unwrap_or(self.inner.client.config().max_retries),
            window: config.max_in_flight_per_queue.max(1),
            acc: Accumulator::new(config.max_batch_bytes, config.linger, self.inner.identity),
            identity: self.inner.identity,
            holes: Vec::new(),
            pending: VecDeque::new(),
            in_flight: FuturesOrdered::new(),
            failed: Vec::new(),
            recovering: false,
            retry_at: None,
            flush_waiters: Vec::new(),
        };
        tokio::spawn(worker.run(rx));
        let slots = workers.entry(topic.to_owned()).or_default();
        if slots.len() <= queue as usize {
            slots.resize(queue as usize + 1, None);
        }
        slots[queue as usize] = Some(tx.clone());
        Ok(tx)
    }
}

type Batch = SealedBatch<Reply>;
type Attempt = (Batch, Result<response::Body, ClientError>);

/// Owns one (topic, queue): accumulates, sends in order, retries in order.
struct QueueWorker {
    client: Client,
    topic: String,
    queue: u32,
    acks: i32,
    max_retries: u32,
    window: usize,
    /// Idempotent producer id and epoch.
    identity: Option<(u64, u16)>,
    /// Sequence ranges `(sealed sequence, records)` of batches the broker refused
    /// for good: later batches are renumbered down past them before they are sent.
    holes: Vec<(u32, u32)>,
    acc: Accumulator<Reply>,
    /// Sealed batches waiting to be sent, oldest first (retries go to the front).
    pending: VecDeque<Batch>,
    /// Sent batches; answers are taken in send order.
    in_flight: FuturesOrdered<BoxFuture<'static, Attempt>>,
    /// Failed batches to resend once the in-flight ones are all answered.
    failed: Vec<Batch>,
    /// Resending failed batches one at a time.
    recovering: bool,
    /// No send before this (backoff).
    retry_at: Option<tokio::time::Instant>,
    flush_waiters: Vec<oneshot::Sender<()>>,
}

impl QueueWorker {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut open = true;
        loop {
            self.dispatch();
            if self.is_idle() {
                for w in self.flush_waiters.drain(..) {
                    let _ = w.send(());
                }
                if !open {
                    return;
                }
            }
            // Take more records only while the sealed backlog is short: beyond it the
            // channel fills and `send` waits (backpressure).
            let accepting = open && self.pending.len() < self.window;
            let linger_at = if self.pending.is_empty() {
                self.acc.deadline().map(tokio::time::Instant::from_std)
            } else {
                None
            };
            let retry_at = self.retry_at;
            tokio::select! {
                command = rx.recv(), if accepting => match command {
                    Some(command) => {
                        self.handle(command);
                        // Drain what is already queued without going back to select.
                        while self.pending.len() < self.window {
                            match rx.try_recv() {
                                Ok(c) => self.handle(c),
                                Err(_) => break,
                            }
                        }
                    }
                    None => {
                        open = false;
                        self.seal();
                    }
                },
                Some(attempt) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.complete(attempt);
                }
                _ = sleep_until(linger_at), if linger_at.is_some() => self.seal(),
                _ = sleep_until(retry_at), if retry_at.is_some() => self.retry_at = None,
            }
        }
    }

    fn is_idle(&self) -> bool {
        self.acc.is_empty()
            && self.pending.is_empty()
            && self.in_flight.is_empty()
            && self.failed.is_empty()
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Send(m, reply) => {
                let record = RecordRef {
                    key: m.key.as_deref(),
                    value: &m.value,
                    headers: &m.headers,
                    timestamp_ms: m.timestamp_ms.unwrap_or_else(now_ms),
                };
                if let Some(b) = self.acc.push(&record, reply, Instant::now()) {
                    self.pending.push_back(b);
                }
                if self.acc.is_full() {
                    self.seal();
                }
            }
            Command::Flush(done) => {
                self.seal();
                self.flush_waiters.push(done);
            }
        }
    }

    fn seal(&mut self) {
        if let Some(b) = self.acc.seal() {
            self.pending.push_back(b);
        }
    }

    /// Sends pending batches while the window allows.
    fn dispatch(&mut self) {
        if self.retry_at.is_some() || !self.failed.is_empty() {
            return;
        }
        let window = if self.recovering { 1 } else { self.window };
        while self.in_flight.len() < window {
            let Some(mut batch) = self.pending.pop_front() else {
                return;
            };
            batch.attempts += 1;
            self.renumber(&mut batch);
            let client = self.client.clone();
            let body = request::Body::Produce(pb::ProduceRequest {
                topic: self.topic.clone(),
                queue: self.queue,
                acks: self.acks,
                batch: batch.bytes.clone(),
            });
            self.in_flight.push_back(Box::pin(async move {
                let result = client.request_once(&Target::Leader, body).await;
                (batch, result)
            }));
        }
    }

    /// Closes the sequence gaps left by refused batches: the broker expects the
    /// sequence right after the last batch it stored.
    fn renumber(&self, batch: &mut Batch) {
        let Some((id, epoch)) = self.identity else {
            return;
        };
        let shift: u32 = self
            .holes
            .iter()
            .filter(|(sequence, _)| *sequence < batch.sealed_sequence)
            .map(|(_, count)| count)
            .sum();
        let wanted = batch.sealed_sequence.wrapping_sub(shift);
        if wanted == batch.base_sequence {
            return;
        }
        let mut bytes = bytes::BytesMut::from(&batch.bytes[..]);
        match raftmq_proto::batch::set_producer(&mut bytes, id, epoch, wanted) {
            Ok(()) => {
                batch.bytes = bytes.freeze();
                batch.base_sequence = wanted;
            }
            Err(e) => tracing::error!(error = %e, "cannot renumber a batch this producer built"),
        }
    }

    /// Whether the broker refused a batch for good, so it stored nothing and its
    /// sequences are free again.
    fn refused(e: &ClientError) -> bool {
        matches!(
            e,
            ClientError::Server(
                ServerError::CorruptBatch { .. }
                    | ServerError::MessageTooLarge { .. }
                    | ServerError::UnknownTopic { .. }
                    | ServerError::InvalidQueue { .. }
                    | ServerError::InvalidRequest { .. }
                    | ServerError::UnsupportedVersion { .. }
            )
        )
    }

    fn retriable(&self, e: &ClientError) -> bool {
        // With idempotence an out-of-order answer follows an earlier batch's failure:
        // resending in order fixes it (a real gap fails again and runs out of tries).
        e.is_retriable()
            || (self.identity.is_some()
                && matches!(
                    e,
                    ClientError::Server(ServerError::OutOfOrderSequence { .. })
                ))
    }

    fn complete(&mut self, (batch, result): Attempt) {
        match result {
            Ok(response::Body::Produce(r)) => {
                if r.count != 0 && r.count != batch.record_count {
                    tracing::warn!(
                        expected = batch.record_count,
                        got = r.count,
                        "produce answer counts a different number of records"
                    );
                }
                for (i, (reply, timestamp_ms)) in batch.waiters.into_iter().enumerate() {
                    let _ = reply.send(Ok(RecordMetadata {
                        queue: self.queue,
                        // `acks=leader` answers before offsets exist: u64::MAX stays "unknown".
                        offset: r.base_offset.saturating_add(i as u64),
                        timestamp_ms,
                    }));
                }
                if self.failed.is_empty() {
                    self.recovering = false;
                }
            }
            Ok(other) => fail(batch, unexpected("produce", &other)),
            Err(e) if self.retriable(&e) && batch.attempts <= self.max_retries => {
                tracing::debug!(
                    topic = %self.topic, queue = self.queue, sequence = batch.base_sequence,
                    attempt = batch.attempts, error = %e, "produce failed, will retry"
                );
                let redirected = matches!(
                    &e,
                    ClientError::Server(ServerError::NotLeader {
                        leader_address: Some(_),
                        ..
                    })
                );
                if !redirected {
                    let backoff = self
                        .client
                        .config()
                        .backoff(batch.attempts.saturating_sub(1));
                    let at = tokio::time::Instant::now() + backoff;
                    self.retry_at = Some(self.retry_at.map_or(at, |r| r.max(at)));
                }
                self.failed.push(batch);
            }
            Err(e) => {
                if self.identity.is_some() && Self::refused(&e) {
                    self.holes.push((batch.sealed_sequence, batch.record_count));
                }
                let attempts = batch.attempts;
                let e = if self.retriable(&e) {
                    ClientError::RetriesExhausted {
                        attempts,
                        last: Box::new(e),
                    }
                } else {
                    e
                };
                fail(batch, e);
            }
        }
        if self.in_flight.is_empty() && !self.failed.is_empty() {
            // Everything sent is answered: resend the failures first, in order.
            for b in self.failed.drain(..).rev() {
                self.pending.push_front(b);
            }
            self.recovering = true;
        }
    }
}

fn fail(batch: Batch, e: ClientError) {
    for (reply, _) in batch.waiters {
        let _ = reply.send(Err(e.clone()));
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
