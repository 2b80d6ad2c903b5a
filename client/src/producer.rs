//! [`Producer`]: batching, lingering, pipelining and idempotent retries.
//!
//! Each (topic, queue) has a [`QueueShared`]: its [`Accumulator`] and sealed batches
//! behind a short `std::sync::Mutex` (as Kafka's `RecordAccumulator`), and a worker
//! task that owns the window of in-flight produce requests. [`Producer::send`]
//! encodes the record straight into the open batch under that lock, with no channel
//! hop and no allocation of its own: the worker is woken only when a batch opens
//! (linger), is sealed, or the clock cache is refreshed, i.e. per batch, not per
//! message. Every record of a batch is answered from one shared [`BatchAck`].
//!
//! The worker handles answers in send order. When a batch fails with a retriable error the worker stops sending, lets
//! the in-flight ones finish, then resends every failed batch, the same bytes with
//! the same sequence numbers, in order and one at a time, before opening the window
//! again. So batch *n + 1* never overtakes batch *n*: the broker's sequence checks
//! accept the retries and turn a batch it already stored into `DuplicateSequence`,
//! which counts as success. A batch the broker refuses for good (too large,
//! corrupt, unknown queue) fails its messages; the batches after it are renumbered
//! down (header rewritten, CRC recomputed) so the sequence has no gap. A batch whose
//! outcome stays unknown after every retry (timeouts) is not renumbered around:
//! it may have been stored.

use raftmq_proto::batch::Compression;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use raftmq_proto::pb::{self, request, response};
use raftmq_proto::ServerError;
use tokio::sync::{oneshot, Notify};

use crate::accumulator::{Accumulator, RecordRef, SealedBatch};
use crate::client::unexpected;
use crate::partitioner::QueueChooser;
use crate::retry::{names_leader, RetryState};
use crate::{Client, ClientConfig, ClientError, Partitioner, Target};

/// A message to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic.
    pub topic: String,
    /// Optional key (chooses the queue under [`Partitioner::Sticky`] and
    /// [`Partitioner::KeyHash`]).
    pub key: Option<Bytes>,
    /// The value.
    pub value: Bytes,
    /// Headers, in order.
    pub headers: Vec<(String, Bytes)>,
    /// Milliseconds since the Unix epoch; `None` = the time of `send` (the
    /// producer's clock as read at most [`CLOCK_MAX_AGE`] before the call).
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
    /// The leader answers with the offsets the batch will get, except for an
    /// idempotent producer's batches (their sequence is checked when applied, so
    /// the offsets are not promised) and right after a leader change: the
    /// [`RecordMetadata::offset`] is then `u64::MAX` (unknown). The batch may still
    /// be lost if the leader fails before a quorum holds it.
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
    /// With `adaptive_linger` (the default) this is only an upper bound.
    pub linger: Duration,
    /// Send a batch at once when its queue has nothing in flight, or only small
    /// requests (under 32 KiB in all) and room in its window, and let it fill while
    /// larger requests are out (Nagle-like): low per-message latency at low load,
    /// big batches at high load. Default on; off makes every batch wait `linger`
    /// (bigger batches when the load is light).
    pub adaptive_linger: bool,
    /// Largest batch, header included. Default 256 KiB. A single message larger than
    /// this is sent in a batch of its own (up to `max_message_bytes`).
    pub max_batch_bytes: usize,
    /// Largest single message (key, value and headers encoded), refused before it is
    /// sent when larger. Default 8 MiB less 1 KiB, what a broker accepts by default
    /// (its `max_batch_bytes`, 8 MiB, holds the batch header too); a broker with a
    /// lower limit answers `MESSAGE_TOO_LARGE`.
    pub max_message_bytes: usize,
    /// Produce requests in flight per queue. Default 5 (as Kafka's idempotent
    /// producer); 1 gives strict order even without idempotence.
    pub max_in_flight_per_queue: usize,
    /// Messages accepted per queue but not yet sent (the open batch and sealed
    /// batches waiting for the in-flight window) before `send` waits for room.
    /// Default 8192.
    pub queue_buffer_messages: usize,
    /// Acknowledgement level. Default quorum.
    pub acks: Acks,
    /// Whether batches carry producer id, epoch and sequences so that the broker
    /// drops duplicates from retries. Default on.
    pub idempotent: bool,
    /// How queues are chosen. Default [`Partitioner::Sticky`]: keyed messages by
    /// key hash, keyless ones `sticky_bytes` at a time to each queue in turn.
    pub partitioner: Partitioner,
    /// [`Partitioner::Sticky`]: bytes of keyless messages sent to one queue before
    /// the next. Default 64 KiB.
    pub sticky_bytes: usize,
    /// Attempts after the first for one batch. Default: the client's `max_retries`.
    pub max_retries: Option<u32>,
    /// How each batch's records are compressed (stored and replicated compressed,
    /// decompressed by consumers). With compression a batch's records may fill 4
    /// times `max_batch_bytes` (at most 4 MiB). Batches are compressed on a blocking
    /// thread of the runtime (on a current-thread runtime, by the queue's worker
    /// task), not on the task that calls `send`. Default none.
    pub compression: Compression,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            linger: Duration::from_millis(1),
            adaptive_linger: true,
            max_batch_bytes: 256 * 1024,
            max_message_bytes: (8 << 20) - 1024,
            max_in_flight_per_queue: 5,
            queue_buffer_messages: 8192,
            acks: Acks::Quorum,
            idempotent: true,
            partitioner: Partitioner::Sticky,
            sticky_bytes: 64 * 1024,
            max_retries: None,
            compression: Compression::None,
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
    /// Sets [`ProducerConfig::adaptive_linger`].
    pub fn adaptive_linger(mut self, on: bool) -> Self {
        self.config.adaptive_linger = on;
        self
    }

    /// Sets [`ProducerConfig::max_message_bytes`].
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.config.max_message_bytes = bytes;
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
    /// Sets [`ProducerConfig::sticky_bytes`] (at least 1).
    pub fn sticky_bytes(mut self, bytes: usize) -> Self {
        self.config.sticky_bytes = bytes.max(1);
        self
    }
    /// Sets [`ProducerConfig::compression`].
    pub fn compression(mut self, compression: Compression) -> Self {
        self.config.compression = compression;
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

/// How old the clock reading given to messages without a timestamp may get: each
/// queue reads the wall clock when the reading has expired (at most about once per
/// this interval), not once per message.
const CLOCK_MAX_AGE: Duration = Duration::from_millis(1);
/// Adaptive linger: a queue whose requests in flight hold fewer bytes than this
/// (and that has room in its window) sends its open batch at once.
const ADAPTIVE_LIGHT_BYTES: usize = 32 * 1024;

/// Locks `m`; a panic elsewhere while it was held does not stop the producer.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The outcome of one batch, shared by the [`DeliveryFuture`]s of all its records:
/// set once, when the batch is stored or fails for good.
#[derive(Debug, Default)]
struct BatchAck {
    /// The base offset the batch was stored at, or why it failed.
    outcome: OnceLock<Result<u64, ClientError>>,
    /// Tasks waiting for the outcome, one per distinct waker.
    wakers: Mutex<Vec<Waker>>,
}

impl BatchAck {
    /// Sets the outcome (the first one set wins) and wakes every waiting task.
    fn resolve(&self, outcome: Result<u64, ClientError>) {
        let _ = self.outcome.set(outcome);
        let wakers = std::mem::take(&mut *lock(&self.wakers));
        for w in wakers {
            w.wake();
        }
    }

    /// The outcome, or `Pending` with the task's waker registered. Once the outcome
    /// is set no lock is taken and no waker is kept.
    fn poll_outcome(&self, cx: &mut Context<'_>) -> Poll<&Result<u64, ClientError>> {
        if let Some(outcome) = self.outcome.get() {
            return Poll::Ready(outcome);
        }
        let mut wakers = lock(&self.wakers);
        // `resolve` sets the outcome before it takes the lock: seen here, or it will
        // find this waker.
        if let Some(outcome) = self.outcome.get() {
            return Poll::Ready(outcome);
        }
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// The owning handle of a batch's [`BatchAck`]: travels with the batch, and answers
/// its records with [`ClientError::Closed`] if the batch is dropped unanswered.
#[derive(Debug, Default)]
struct Acker(Arc<BatchAck>);

impl Acker {
    fn resolve(&self, outcome: Result<u64, ClientError>) {
        self.0.resolve(outcome);
    }
}

impl Drop for Acker {
    fn drop(&mut self) {
        if self.0.outcome.get().is_none() {
            self.0.resolve(Err(ClientError::Closed));
        }
    }
}

/// The future of one message's acknowledgement: its batch's shared outcome and its
/// index in that batch.
#[derive(Debug)]
pub struct DeliveryFuture {
    ack: Arc<BatchAck>,
    index: u32,
    queue: u32,
    timestamp_ms: i64,
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, ClientError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.ack.poll_outcome(cx).map(|outcome| match outcome {
            Ok(base_offset) => Ok(RecordMetadata {
                queue: this.queue,
                // An unknown offset (`acks=leader`): u64::MAX stays "unknown".
                offset: base_offset.saturating_add(u64::from(this.index)),
                timestamp_ms: this.timestamp_ms,
            }),
            Err(e) => Err(e.clone()),
        })
    }
}

type Batch = SealedBatch<Acker>;
type Attempt = (Batch, Result<response::Body, ClientError>);

/// What `send` and the worker of one (topic, queue) share.
struct QueueShared {
    state: Mutex<QueueState>,
    /// Wakes the worker: a batch opened or was sealed, the clock was read, a flush
    /// or a close.
    work: Notify,
    /// Wakes senders waiting for room.
    room: Notify,
}

/// The state of one (topic, queue) behind its lock; every critical section is
/// short (one record's encoding at most).
struct QueueState {
    acc: Accumulator<Acker>,
    /// Sealed batches waiting to be sent, oldest first (retries go to the front).
    pending: VecDeque<Batch>,
    /// Records in `pending`.
    pending_records: usize,
    /// Largest `pending.len()` before `send` waits.
    pending_batches_max: usize,
    /// Largest count of accepted, unsent records (open batch and `pending`) before
    /// `send` waits.
    unsent_records_max: usize,
    /// The wall clock (ms) given to messages without a timestamp, and when it was
    /// read; the worker expires it after [`CLOCK_MAX_AGE`].
    clock: Option<(i64, Instant)>,
    flush_waiters: Vec<oneshot::Sender<()>>,
    /// No more sends: the producer was closed or dropped. The worker sends what is
    /// left and exits.
    closed: bool,
    /// The worker has exited.
    worker_exited: bool,
}

impl QueueState {
    fn has_room(&self) -> bool {
        self.pending.len() < self.pending_batches_max
            && self.pending_records + (self.acc.open_records() as usize) < self.unsent_records_max
    }

    fn push_pending(&mut self, batch: Batch) {
        self.pending_records += batch.record_count as usize;
        self.pending.push_back(batch);
    }

    /// Seals the open batch, if any, into `pending`; whether one was.
    fn seal(&mut self) -> bool {
        match self.acc.seal() {
            Some(b) => {
                self.push_pending(b);
                true
            }
            None => false,
        }
    }

    /// The clock for a message without a timestamp; `wake` is set when it was read
    /// now (the worker then times its expiry).
    fn clock_ms(&mut self, wake: &mut bool) -> i64 {
        if let Some((ms, _)) = self.clock {
            return ms;
        }
        let ms = now_ms();
        self.clock = Some((ms, Instant::now()));
        *wake = true;
        ms
    }

    /// Encodes `message` into the open batch. Returns its future and whether the
    /// worker has something new to do.
    fn append(
        &mut self,
        message: &Message,
        record_bytes: usize,
        queue: u32,
    ) -> (DeliveryFuture, bool) {
        let mut wake = false;
        let timestamp_ms = match message.timestamp_ms {
            Some(t) => t,
            None => self.clock_ms(&mut wake),
        };
        let record = RecordRef {
            key: message.key.as_deref(),
            value: &message.value,
            headers: &message.headers,
            timestamp_ms,
        };
        // A new batch starts its linger: the worker times it.
        wake |= self.acc.is_empty();
        let (sealed, index) = self.acc.push(&record, record_bytes, Instant::now);
        if let Some(b) = sealed {
            self.push_pending(b);
            wake = true;
        }
        let ack = match self.acc.open_ack() {
            Some(a) => Arc::clone(&a.0),
            None => unreachable!("a batch is open right after a push"),
        };
        if self.acc.is_full() {
            wake |= self.seal();
        }
        let future = DeliveryFuture {
            ack,
            index,
            queue,
            timestamp_ms,
        };
        (future, wake)
    }
}

impl QueueShared {
    /// Stops taking sends; the worker sends what is left, then exits.
    fn close(&self) {
        lock(&self.state).closed = true;
        self.work.notify_one();
        self.room.notify_waiters();
    }
}

/// One topic's queue count, as of a metadata generation, and its queues' state
/// (started on first use).
struct TopicQueues {
    name: String,
    queues: u32,
    metadata_generation: u64,
    /// Index = queue; filled from [`Topics::queues`].
    slots: Vec<OnceLock<Arc<QueueShared>>>,
}

#[derive(Default)]
struct Topics {
    /// The topic of the last lookup: most producers send to one topic, so a send
    /// usually costs one string comparison and no hashing.
    last: Option<Arc<TopicQueues>>,
    by_name: HashMap<String, Arc<TopicQueues>>,
    /// Every started (topic, queue): one state and one worker each.
    queues: HashMap<(String, u32), Arc<QueueShared>>,
}

struct ProducerInner {
    client: Client,
    config: Arc<ProducerConfig>,
    identity: Option<(u64, u16)>,
    chooser: QueueChooser,
    topics: Mutex<Topics>,
    closed: AtomicBool,
}

impl Drop for ProducerInner {
    fn drop(&mut self) {
        // The workers send what was queued, answer it, and exit.
        for q in lock(&self.topics).queues.values() {
            q.close();
        }
    }
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
                chooser: QueueChooser::with_sticky_limit(config.partitioner, config.sticky_bytes),
                client,
                config: Arc::new(config),
                identity,
                topics: Mutex::new(Topics::default()),
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
    pub async fn send(&self, message: Message) -> Result<DeliveryFuture, ClientError> {
        match self.try_append(message)? {
            Ok(future) => Ok(future),
            // Boxed: the cold path's state (metadata requests, waiting for room)
            // would otherwise make every send's future large to move.
            Err((message, queue)) => Box::pin(self.send_slow(message, queue)).await,
        }
    }

    /// The bytes `message` takes in a batch, checked against the batch size.
    fn record_bytes(&self, message: &Message) -> Result<usize, ClientError> {
        let record_bytes = RecordRef {
            key: message.key.as_deref(),
            value: &message.value,
            headers: &message.headers,
            timestamp_ms: 0,
        }
        .encoded_bytes();
        let config = &self.inner.config;
        let limit = config.max_message_bytes.max(config.max_batch_bytes);
        if !Accumulator::<Acker>::fits_alone(limit, record_bytes) {
            return Err(ClientError::InvalidArgument(format!(
                "message of {record_bytes} bytes is over the producer's limit of {limit} \
                 bytes (ProducerConfig::max_message_bytes, at most the brokers' \
                 --max-batch-bytes less 1 KiB)"
            )));
        }
        Ok(record_bytes)
    }

    /// The queue of `message` (`record_bytes` encoded) in `topic`.
    fn choose_queue(
        &self,
        topic: &TopicQueues,
        message: &Message,
        record_bytes: usize,
    ) -> Result<u32, ClientError> {
        let queues = topic.queues;
        match message.queue {
            Some(q) if q >= queues => Err(ClientError::InvalidArgument(format!(
                "topic {:?} has {queues} queues, no queue {q}",
                message.topic
            ))),
            Some(q) => Ok(q),
            None => Ok(self
                .inner
                .chooser
                .choose(message.key.as_deref(), record_bytes, queues)),
        }
    }

    /// The fast path of [`send`](Producer::send), without waiting: appends when the
    /// topic is known and its queue has room; otherwise gives the message back (with
    /// its queue once chosen).
    #[allow(clippy::type_complexity)]
    fn try_append(
        &self,
        message: Message,
    ) -> Result<Result<DeliveryFuture, (Message, Option<u32>)>, ClientError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(ClientError::Closed);
        }
        let record_bytes = self.record_bytes(&message)?;
        let Some(topic) = self.cached_topic(&message.topic) else {
            return Ok(Err((message, None)));
        };
        let queue = self.choose_queue(&topic, &message, record_bytes)?;
        let shared = topic.slots[queue as usize].get_or_init(|| self.start_queue(&topic, queue));
        let mut state = lock(&shared.state);
        if state.closed || state.worker_exited {
            return Err(ClientError::Closed);
        }
        if !state.has_room() {
            return Ok(Err((message, Some(queue))));
        }
        let (future, wake) = state.append(&message, record_bytes, queue);
        drop(state);
        if wake {
            shared.work.notify_one();
        }
        Ok(Ok(future))
    }

    /// [`send`](Producer::send) when the topic must be looked up or the queue is
    /// full.
    async fn send_slow(
        &self,
        message: Message,
        queue: Option<u32>,
    ) -> Result<DeliveryFuture, ClientError> {
        let record_bytes = self.record_bytes(&message)?;
        let topic = self.topic(&message.topic).await?;
        let queue = match queue {
            Some(q) if q < topic.queues => q,
            _ => self.choose_queue(&topic, &message, record_bytes)?,
        };
        let shared = topic.slots[queue as usize].get_or_init(|| self.start_queue(&topic, queue));
        loop {
            // Registered before the check so that a wake-up in between is not lost.
            let mut room = pin!(shared.room.notified());
            room.as_mut().enable();
            {
                let mut state = lock(&shared.state);
                if state.closed || state.worker_exited {
                    return Err(ClientError::Closed);
                }
                if state.has_room() {
                    let (future, wake) = state.append(&message, record_bytes, queue);
                    drop(state);
                    if wake {
                        shared.work.notify_one();
                    }
                    return Ok(future);
                }
                // Full of records in an open batch: send it now rather than at the
                // end of its linger.
                if state.pending.is_empty() && state.seal() {
                    shared.work.notify_one();
                }
            }
            room.await;
        }
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
        let queues: Vec<Arc<QueueShared>> =
            lock(&self.inner.topics).queues.values().cloned().collect();
        let mut waits = Vec::new();
        for q in queues {
            let (tx, rx) = oneshot::channel();
            {
                let mut state = lock(&q.state);
                if state.worker_exited {
                    continue;
                }
                state.seal();
                state.flush_waiters.push(tx);
            }
            q.work.notify_one();
            waits.push(rx);
        }
        for rx in waits {
            let _ = rx.await;
        }
    }

    /// Flushes, then stops the workers. Later sends fail with [`ClientError::Closed`].
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.flush().await;
        let queues: Vec<Arc<QueueShared>> =
            lock(&self.inner.topics).queues.values().cloned().collect();
        for q in queues {
            q.close();
        }
    }

    /// The topic's queues if known as of the client's current metadata: the last
    /// topic used costs one string comparison.
    fn cached_topic(&self, name: &str) -> Option<Arc<TopicQueues>> {
        let generation = self.inner.client.metadata_generation();
        let mut topics = lock(&self.inner.topics);
        if let Some(t) = &topics.last {
            if t.name == name && t.metadata_generation == generation {
                return Some(Arc::clone(t));
            }
        }
        let t = topics.by_name.get(name)?;
        if t.metadata_generation != generation {
            return None;
        }
        let t = Arc::clone(t);
        topics.last = Some(Arc::clone(&t));
        Some(t)
    }

    /// The topic's queues, with the queue count as of the client's current
    /// metadata (looked up again whenever the metadata changes).
    async fn topic(&self, name: &str) -> Result<Arc<TopicQueues>, ClientError> {
        // Read before the queue count: a change in between is seen next time.
        let generation = self.inner.client.metadata_generation();
        if let Some(t) = self.cached_topic(name) {
            return Ok(t);
        }
        let queues = self.inner.client.topic_queues(name).await?;
        if queues == 0 {
            return Err(ClientError::Protocol(format!(
                "topic {name:?} has no queues"
            )));
        }
        let t = Arc::new(TopicQueues {
            name: name.to_owned(),
            queues,
            metadata_generation: generation,
            slots: (0..queues).map(|_| OnceLock::new()).collect(),
        });
        let mut topics = lock(&self.inner.topics);
        topics.by_name.insert(name.to_owned(), Arc::clone(&t));
        topics.last = Some(Arc::clone(&t));
        Ok(t)
    }

    /// The state of (topic, queue), and its worker, started if need be.
    fn start_queue(&self, topic: &TopicQueues, queue: u32) -> Arc<QueueShared> {
        let mut topics = lock(&self.inner.topics);
        let key = (topic.name.clone(), queue);
        if let Some(q) = topics.queues.get(&key) {
            return Arc::clone(q);
        }
        let config = &self.inner.config;
        let window = config.max_in_flight_per_queue.max(1);
        let shared = Arc::new(QueueShared {
            state: Mutex::new(QueueState {
                acc: Accumulator::new(config.max_batch_bytes, config.linger, self.inner.identity)
                    .with_compression(config.compression),
                pending: VecDeque::new(),
                pending_records: 0,
                pending_batches_max: window,
                unsent_records_max: config.queue_buffer_messages.max(1),
                clock: None,
                flush_waiters: Vec::new(),
                closed: false,
                worker_exited: false,
            }),
            work: Notify::new(),
            room: Notify::new(),
        });
        let worker = QueueWorker {
            shared: Arc::clone(&shared),
            client: self.inner.client.clone(),
            topic: topic.name.clone(),
            queue,
            acks: config.acks.to_pb() as i32,
            retry_config: {
                let mut c = self.inner.client.config().clone();
                if let Some(n) = config.max_retries {
                    c.max_retries = n;
                }
                c
            },
            window,
            identity: self.inner.identity,
            holes: Vec::new(),
            in_flight: FuturesOrdered::new(),
            in_flight_bytes: 0,
            failed: Vec::new(),
            recovering: false,
            retry_at: None,
            adaptive: config.adaptive_linger,
            compressing: None,
            compressing_range: (0, 0),
            compress_off_task: tokio::runtime::Handle::current().runtime_flavor()
                != tokio::runtime::RuntimeFlavor::CurrentThread,
        };
        tokio::spawn(worker.run());
        topics.queues.insert(key, Arc::clone(&shared));
        shared
    }
}

/// Sends one (topic, queue)'s sealed batches in order, and retries in order.
struct QueueWorker {
    shared: Arc<QueueShared>,
    client: Client,
    topic: String,
    queue: u32,
    acks: i32,
    /// The client's retry settings, with the producer's own `max_retries`.
    retry_config: ClientConfig,
    window: usize,
    /// Idempotent producer id and epoch.
    identity: Option<(u64, u16)>,
    /// Sequence ranges `(sealed sequence, records)` of batches the broker refused
    /// for good: later batches are renumbered down past them before they are sent.
    holes: Vec<(u32, u32)>,
    /// Sent batches; answers are taken in send order.
    in_flight: FuturesOrdered<BoxFuture<'static, Attempt>>,
    /// Bytes of the batches in `in_flight`.
    in_flight_bytes: usize,
    /// Failed batches to resend once the in-flight ones are all answered.
    failed: Vec<Batch>,
    /// Resending failed batches one at a time.
    recovering: bool,
    /// [`ProducerConfig::adaptive_linger`].
    adaptive: bool,
    /// No send before this (backoff).
    retry_at: Option<tokio::time::Instant>,
    /// The oldest unsent batch, being compressed on a blocking thread: nothing is
    /// sent until it is back (in `pending`, in its place).
    compressing: Option<tokio::task::JoinHandle<Batch>>,
    /// The sequence range `(sealed sequence, records)` of the batch being
    /// compressed: a hole to close should the job fail (its batch is gone).
    compressing_range: (u32, u32),
    /// Compress on a blocking thread (multi-threaded runtimes), so that the
    /// application's task keeps encoding records meanwhile; on a current-thread
    /// runtime the worker compresses itself.
    compress_off_task: bool,
}

/// Marks the worker gone however it ends: senders and flushes stop waiting for it,
/// and whatever it leaves unsent is answered with [`ClientError::Closed`].
struct WorkerExit(Arc<QueueShared>);

impl Drop for WorkerExit {
    fn drop(&mut self) {
        let (left, waiters) = {
            let mut state = lock(&self.0.state);
            state.worker_exited = true;
            state.seal();
            state.pending_records = 0;
            let left: Vec<Batch> = state.pending.drain(..).collect();
            (left, std::mem::take(&mut state.flush_waiters))
        };
        drop(left);
        drop(waiters);
        self.0.room.notify_waiters();
    }
}

impl QueueWorker {
    async fn run(mut self) {
        let shared = Arc::clone(&self.shared);
        let _exit = WorkerExit(Arc::clone(&shared));
        loop {
            let (sent, timer) = {
                let now = Instant::now();
                let mut state = lock(&shared.state);
                if state
                    .clock
                    .is_some_and(|(_, read_at)| now >= read_at + CLOCK_MAX_AGE)
                {
                    state.clock = None;
                }
                // Send the open batch if nothing else waits to be sent (otherwise it
                // keeps filling until it is its turn) and either its linger is over
                // or, adaptively, the queue has little in flight: an idle queue
                // sends at once (per-message latency), a busy one batches while its
                // requests are out (throughput), as Nagle's algorithm does. "Little"
                // is nothing, or small requests with room in the window: a producer
                // waiting on a few messages at a time keeps its window busy.
                let light = self.in_flight.is_empty()
                    || (self.in_flight_bytes < ADAPTIVE_LIGHT_BYTES
                        && self.in_flight.len() < self.window);
                let idle_queue = self.adaptive
                    && light
                    && self.compressing.is_none()
                    && self.failed.is_empty()
                    && self.retry_at.is_none();
                if state.pending.is_empty()
                    && state.acc.deadline().is_some_and(|d| idle_queue || now >= d)
                {
                    state.seal();
                }
                let sent = self.dispatch(&mut state);
                let idle = state.acc.is_empty()
                    && state.pending.is_empty()
                    && self.in_flight.is_empty()
                    && self.compressing.is_none()
                    && self.failed.is_empty();
                if idle {
                    for w in state.flush_waiters.drain(..) {
                        let _ = w.send(());
                    }
                    if state.closed {
                        return;
                    }
                }
                let linger_at = if state.pending.is_empty() {
                    state.acc.deadline()
                } else {
                    None
                };
                let clock_at = state.clock.map(|(_, read_at)| read_at + CLOCK_MAX_AGE);
                let timer = match (linger_at, clock_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                (sent, timer.map(tokio::time::Instant::from_std))
            };
            if sent {
                shared.room.notify_waiters();
            }
            let retry_at = self.retry_at;
            tokio::select! {
                _ = shared.work.notified() => {}
                Some(attempt) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.complete(attempt);
                }
                compressed = join_compression(&mut self.compressing), if self.compressing.is_some() => {
                    self.compressing = None;
                    match compressed {
                        Ok(batch) => {
                            let mut state = lock(&shared.state);
                            Self::put_back(&mut state, batch);
                        }
                        // The batch was dropped with the job (answered `Closed`):
                        // later batches close the gap in the sequence.
                        Err(e) => {
                            tracing::error!(error = %e, "compressing a batch failed");
                            if self.identity.is_some() {
                                self.holes.push(self.compressing_range);
                            }
                        }
                    }
                }
                _ = sleep_until(timer), if timer.is_some() => {}
                _ = sleep_until(retry_at), if retry_at.is_some() => self.retry_at = None,
            }
        }
    }

    /// Sends pending batches while the window allows; whether it sent any.
    fn dispatch(&mut self, state: &mut QueueState) -> bool {
        if self.retry_at.is_some() || !self.failed.is_empty() {
            return false;
        }
        let window = if self.recovering { 1 } else { self.window };
        let mut sent = false;
        while self.in_flight.len() < window && self.compressing.is_none() {
            let Some(mut batch) = state.pending.pop_front() else {
                break;
            };
            state.pending_records -= batch.record_count as usize;
            if batch.compression != Compression::None {
                if self.compress_off_task {
                    self.compressing_range = (batch.sealed_sequence, batch.record_count);
                    self.compressing = Some(tokio::task::spawn_blocking(move || {
                        batch.compress();
                        batch
                    }));
                    break;
                }
                batch.compress();
            }
            sent = true;
            batch.attempts += 1;
            if batch.retry.is_none() {
                batch.retry = Some(RetryState::start());
            }
            self.renumber(&mut batch);
            let client = self.client.clone();
            let request = pb::ProduceRequest {
                topic: self.topic.clone(),
                queue: self.queue,
                acks: self.acks,
                batch: batch.bytes.clone(),
            };
            let (topic, queue) = (self.topic.clone(), self.queue);
            self.in_flight_bytes += batch.bytes.len();
            self.in_flight.push_back(Box::pin(async move {
                let target = client.queue_target(&topic, queue).await;
                let result = client.produce_once(&target, request).await;
                (batch, result)
            }));
        }
        sent
    }

    /// Puts a batch taken out of `pending` back in its place (retries of older
    /// batches may have gone to the front meanwhile).
    fn put_back(state: &mut QueueState, batch: Batch) {
        let at = state
            .pending
            .iter()
            .position(|b| b.seal_number > batch.seal_number)
            .unwrap_or(state.pending.len());
        state.pending_records += batch.record_count as usize;
        state.pending.insert(at, batch);
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
        self.in_flight_bytes = self.in_flight_bytes.saturating_sub(batch.bytes.len());
        match result {
            Ok(response::Body::Produce(r)) => {
                if r.count != 0 && r.count != batch.record_count {
                    tracing::warn!(
                        expected = batch.record_count,
                        got = r.count,
                        "produce answer counts a different number of records"
                    );
                }
                batch.ack.resolve(Ok(r.base_offset));
                if self.failed.is_empty() {
                    self.recovering = false;
                }
            }
            Ok(other) => fail(batch, unexpected("produce", &other)),
            Err(e) if self.retriable(&e) => {
                let mut batch = batch;
                batch.outcome_unknown |= e.outcome_unknown();
                let redirected = names_leader(&e) && self.client.leader_address().is_some();
                let delay = batch
                    .retry
                    .get_or_insert_with(RetryState::start)
                    .next_delay(&self.retry_config, redirected);
                match delay {
                    Some(delay) => {
                        tracing::debug!(
                            topic = %self.topic, queue = self.queue, sequence = batch.base_sequence,
                            attempt = batch.attempts, error = %e, ?delay, "produce failed, will retry"
                        );
                        if !delay.is_zero() {
                            let at = tokio::time::Instant::now() + delay;
                            self.retry_at = Some(self.retry_at.map_or(at, |r| r.max(at)));
                        }
                        self.failed.push(batch);
                    }
                    None => {
                        let attempts = batch.attempts;
                        let e = if batch.outcome_unknown {
                            ClientError::OutcomeUnknown {
                                attempts,
                                last: Box::new(e),
                            }
                        } else {
                            ClientError::RetriesExhausted {
                                attempts,
                                last: Box::new(e),
                            }
                        };
                        fail(batch, e);
                    }
                }
            }
            Err(e) => {
                if self.identity.is_some() && Self::refused(&e) {
                    self.holes.push((batch.sealed_sequence, batch.record_count));
                }
                fail(batch, e);
            }
        }
        if self.in_flight.is_empty() && !self.failed.is_empty() {
            // Everything sent is answered: resend the failures first, in order.
            let mut state = lock(&self.shared.state);
            for b in self.failed.drain(..).rev() {
                state.pending_records += b.record_count as usize;
                state.pending.push_front(b);
            }
            self.recovering = true;
        }
    }
}

fn fail(batch: Batch, e: ClientError) {
    batch.ack.resolve(Err(e));
}

/// The batch a compression job gives back.
async fn join_compression(
    job: &mut Option<tokio::task::JoinHandle<Batch>>,
) -> Result<Batch, tokio::task::JoinError> {
    match job {
        Some(job) => job.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn future(ack: &Acker, index: u32) -> DeliveryFuture {
        DeliveryFuture {
            ack: Arc::clone(&ack.0),
            index,
            queue: 3,
            timestamp_ms: 7,
        }
    }

    #[test]
    fn every_record_of_a_batch_is_answered_from_its_one_outcome() {
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&counter));
        let mut cx = Context::from_waker(&waker);
        let ack = Acker::default();
        let mut first = future(&ack, 0);
        let mut second = future(&ack, 1);
        assert!(Pin::new(&mut first).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut first).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut second).poll(&mut cx).is_pending());
        assert_eq!(
            lock(&ack.0.wakers).len(),
            1,
            "one waker per task, not per poll"
        );
        ack.resolve(Ok(100));
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        let got = |f: &mut DeliveryFuture, cx: &mut Context<'_>| match Pin::new(f).poll(cx) {
            Poll::Ready(r) => r.expect("stored"),
            Poll::Pending => panic!("resolved batch must be ready"),
        };
        assert_eq!(got(&mut second, &mut cx).offset, 101);
        assert_eq!(
            got(&mut first, &mut cx),
            RecordMetadata {
                queue: 3,
                offset: 100,
                timestamp_ms: 7
            }
        );
        // A batch already answered: ready at once, and no waker is kept.
        let mut late = future(&ack, 2);
        assert_eq!(got(&mut late, &mut cx).offset, 102);
        assert!(lock(&ack.0.wakers).is_empty());
    }

    #[test]
    fn a_batch_dropped_unanswered_fails_its_records_as_closed() {
        let waker = Waker::from(Arc::new(CountingWaker(AtomicUsize::new(0))));
        let mut cx = Context::from_waker(&waker);
        let ack = Acker::default();
        let mut f = future(&ack, 0);
        drop(ack);
        match Pin::new(&mut f).poll(&mut cx) {
            Poll::Ready(Err(ClientError::Closed)) => {}
            other => panic!("expected Closed, got {other:?}"),
        }
    }

    #[test]
    fn a_batch_back_from_compression_goes_behind_older_retries_and_before_newer_batches() {
        let mut state = QueueState {
            acc: Accumulator::new(256, Duration::from_secs(60), Some((7, 0)))
                .with_compression(Compression::Lz4),
            pending: VecDeque::new(),
            pending_records: 0,
            pending_batches_max: 8,
            unsent_records_max: 1000,
            clock: None,
            flush_waiters: Vec::new(),
            closed: false,
            worker_exited: false,
        };
        let value = [1u8; 100];
        let record = RecordRef {
            key: None,
            value: &value,
            headers: &[],
            timestamp_ms: 0,
        };
        for _ in 0..4 {
            state
                .acc
                .push(&record, record.encoded_bytes(), Instant::now);
            assert!(state.seal());
        }
        let records = state.pending_records;
        let sent = state.pending.pop_front().expect("batch 0");
        let compressing = state.pending.pop_front().expect("batch 1");
        assert_eq!(
            compressing.compression,
            Compression::Lz4,
            "sealed uncompressed"
        );
        state.pending_records -= sent.record_count as usize + compressing.record_count as usize;
        // Batch 0 failed meanwhile and went back to the front to be resent first.
        state.pending_records += sent.record_count as usize;
        state.pending.push_front(sent);
        QueueWorker::put_back(&mut state, compressing);
        let order: Vec<u64> = state.pending.iter().map(|b| b.seal_number).collect();
        assert_eq!(order, [0, 1, 2, 3]);
        assert_eq!(state.pending_records, records);
        let sequences: Vec<u32> = state.pending.iter().map(|b| b.sealed_sequence).collect();
        assert_eq!(sequences, [0, 1, 2, 3], "in sequence order for the broker");
    }
}
