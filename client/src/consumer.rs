//! [`Consumer`]: reads assigned queues of one topic with long-poll fetches.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, Stream};
use futures::{FutureExt, StreamExt};
use raftmq_proto::batch;
use raftmq_proto::pb::{self, request, response};
use raftmq_proto::ServerError;

use crate::client::unexpected;
use crate::{Client, ClientError, Target};

/// A message read from a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedMessage {
    /// Its topic.
    pub topic: Arc<str>,
    /// Its queue.
    pub queue: u32,
    /// Its offset in the queue.
    pub offset: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The key, if any (a slice of the fetched frame, not a copy).
    pub key: Option<Bytes>,
    /// The value (a slice of the fetched frame).
    pub value: Bytes,
    /// Headers, in order.
    pub headers: Vec<(String, Bytes)>,
}

/// Where to start or move to in a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekTo {
    /// The first offset still stored.
    Earliest,
    /// The log end: only messages produced from now on.
    Latest,
    /// An exact offset.
    Offset(u64),
    /// The first message at or after this time (ms since the Unix epoch).
    Timestamp(i64),
}

/// What to do when a position is not (or no longer) in the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OffsetReset {
    /// Move to the first offset still stored (default).
    #[default]
    Earliest,
    /// Move to the log end.
    Latest,
    /// Fail the poll with the `OffsetOutOfRange` error.
    Error,
}

/// Consumer settings.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Long-poll wait per fetch. Default 500 ms.
    pub max_wait: Duration,
    /// Bytes a fetch waits for. Default 1.
    pub min_bytes: u32,
    /// Most bytes per fetch and queue (at least one batch comes back). Default 1 MiB.
    pub max_bytes: u32,
    /// What to do with an unknown or out-of-range position. Default earliest.
    pub reset: OffsetReset,
    /// Check every fetched batch's CRC and structure before decoding. Default on.
    pub check_crcs: bool,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            max_wait: Duration::from_millis(500),
            min_bytes: 1,
            max_bytes: 1024 * 1024,
            reset: OffsetReset::Earliest,
            check_crcs: true,
        }
    }
}

/// Reads the queues assigned to it from one topic, tracking a position (the next
/// offset to read) per queue.
#[derive(Debug)]
pub struct Consumer {
    client: Client,
    pub(crate) config: ConsumerConfig,
    topic: Option<Arc<str>>,
    /// Queue to next offset; `None` until resolved by the reset policy.
    positions: BTreeMap<u32, Option<u64>>,
    /// Group membership sent with every fetch, so the broker fences stale members.
    pub(crate) fencing: Option<Fencing>,
    /// Whether the brokers take `FetchMany` (`None` until one answered one): a
    /// consumer of several queues reads all of a leader's queues with one request.
    fetch_many: Option<bool>,
    /// When a broker last refused `FetchMany` (an earlier version): the consumer
    /// asks again after [`FETCH_MANY_RETRY`], so it uses it once an upgrade is over.
    refused_at: Option<std::time::Instant>,
    /// An error met by a multi-queue poll that also returned messages: returned by
    /// the next poll, so that no message is skipped (the positions of the queues
    /// read moved on with the messages returned).
    deferred: Option<ClientError>,
    /// Polls made: where a multi-queue poll starts, so that a byte budget does not
    /// always favour the same queues.
    polls: usize,
}

/// Most queues one `FetchMany` carries.
const FETCH_MANY_MAX_PARTS: usize = 10_000;
/// Pause after a multi-queue poll that met only retriable failures (leaders
/// changing): the next poll goes to metadata first.
const FETCH_MANY_BACKOFF: Duration = Duration::from_millis(50);

/// How long a consumer fetches queue by queue after a broker did not know
/// `FetchMany`.
const FETCH_MANY_RETRY: Duration = Duration::from_secs(60);

/// A consumer-group member's identity, sent with fetches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fencing {
    pub(crate) group: String,
    pub(crate) member_id: String,
    pub(crate) generation: u64,
}

impl Consumer {
    /// A consumer with the default [`ConsumerConfig`].
    pub fn new(client: &Client) -> Self {
        Self::with_config(client, ConsumerConfig::default())
    }

    /// A consumer with `config`.
    pub fn with_config(client: &Client, config: ConsumerConfig) -> Self {
        Consumer {
            client: client.clone(),
            config,
            topic: None,
            positions: BTreeMap::new(),
            fencing: None,
            fetch_many: None,
            refused_at: None,
            deferred: None,
            polls: 0,
        }
    }

    /// Reads `queues` of `topic` (every queue when empty), replacing any earlier
    /// assignment. Positions start per the reset policy unless sought.
    pub async fn assign(&mut self, topic: &str, queues: &[u32]) -> Result<(), ClientError> {
        let count = self.client.topic_queues(topic).await?;
        let queues: Vec<u32> = if queues.is_empty() {
            (0..count).collect()
        } else {
            queues.to_vec()
        };
        if let Some(q) = queues.iter().find(|&&q| q >= count) {
            return Err(ClientError::InvalidArgument(format!(
                "topic {topic:?} has {count} queues, no queue {q}"
            )));
        }
        self.topic = Some(Arc::from(topic));
        self.positions = queues.into_iter().map(|q| (q, None)).collect();
        self.deferred = None;
        Ok(())
    }

    /// Switches to `queues` of `topic`, keeping the positions of queues it already
    /// had (a group rebalance).
    pub(crate) fn reassign(&mut self, topic: &str, queues: &[u32]) {
        if self.topic.as_deref() != Some(topic) {
            self.topic = Some(Arc::from(topic));
            self.positions.clear();
        }
        let old = std::mem::take(&mut self.positions);
        self.positions = queues
            .iter()
            .map(|&q| (q, old.get(&q).copied().flatten()))
            .collect();
    }

    /// Sets a position without asking the broker.
    pub(crate) fn set_position(&mut self, queue: u32, offset: u64) {
        if let Some(p) = self.positions.get_mut(&queue) {
            *p = Some(offset);
        }
    }

    /// The assigned queues and their positions (`None` = not resolved yet).
    pub fn positions(&self) -> &BTreeMap<u32, Option<u64>> {
        &self.positions
    }

    /// Moves `queue`'s position; returns the new position.
    pub async fn seek(&mut self, queue: u32, to: SeekTo) -> Result<u64, ClientError> {
        let topic = self.topic()?;
        if !self.positions.contains_key(&queue) {
            return Err(ClientError::InvalidArgument(format!(
                "queue {queue} is not assigned"
            )));
        }
        let offset = match to {
            SeekTo::Offset(o) => o,
            SeekTo::Earliest => {
                list_offset(&self.client, &topic, queue, pb::OffsetSpec::Earliest, 0).await?
            }
            SeekTo::Latest => {
                list_offset(&self.client, &topic, queue, pb::OffsetSpec::Latest, 0).await?
            }
            SeekTo::Timestamp(ms) => {
                list_offset(&self.client, &topic, queue, pb::OffsetSpec::Timestamp, ms).await?
            }
        };
        self.positions.insert(queue, Some(offset));
        Ok(offset)
    }

    fn topic(&self) -> Result<Arc<str>, ClientError> {
        self.topic
            .clone()
            .ok_or_else(|| ClientError::InvalidArgument("no topic assigned".into()))
    }

    async fn resolve_position(&mut self, queue: u32) -> Result<u64, ClientError> {
        if let Some(Some(p)) = self.positions.get(&queue) {
            return Ok(*p);
        }
        let to = match self.config.reset {
            OffsetReset::Latest => SeekTo::Latest,
            OffsetReset::Earliest | OffsetReset::Error => SeekTo::Earliest,
        };
        self.seek(queue, to).await
    }

    /// Waits (up to about `max_wait`) for messages in any assigned queue and returns
    /// them, in offset order per queue. Empty when nothing arrived in time.
    pub async fn poll(&mut self) -> Result<Vec<ConsumedMessage>, ClientError> {
        let topic = self.topic()?;
        let queues: Vec<u32> = self.positions.keys().copied().collect();
        if queues.is_empty() {
            return Err(ClientError::InvalidArgument("no queue assigned".into()));
        }
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        if self
            .refused_at
            .is_some_and(|at| at.elapsed() >= FETCH_MANY_RETRY)
        {
            self.refused_at = None;
            self.fetch_many = None;
        }
        if queues.len() > 1 && self.fetch_many != Some(false) {
            return self.poll_many(&topic, queues).await;
        }
        let mut fetches = FuturesUnordered::new();
        for queue in queues {
            let offset = self.resolve_position(queue).await?;
            let body = request::Body::Fetch(self.fetch_request(&topic, queue, offset));
            let client = self.client.clone();
            let topic = topic.clone();
            fetches.push(async move {
                let answer = client.request_queue(&topic, queue, body).await;
                (queue, offset, answer)
            });
        }
        let mut out = Vec::new();
        // Take the first answer with data, then whatever else is already answered;
        // the other long polls are dropped (fetches have no side effect).
        while let Some(answer) = fetches.next().await {
            self.absorb(&topic, answer, &mut out).await?;
            if !out.is_empty() {
                while let Some(Some(answer)) = fetches.next().now_or_never() {
                    self.absorb(&topic, answer, &mut out).await?;
                }
                break;
            }
        }
        Ok(out)
    }

    /// One queue's read as this consumer asks for it.
    fn fetch_request(&self, topic: &str, queue: u32, offset: u64) -> pb::FetchRequest {
        pb::FetchRequest {
            topic: topic.to_string(),
            queue,
            offset,
            max_bytes: self.config.max_bytes,
            max_wait_ms: self.max_wait_ms(),
            min_bytes: self.config.min_bytes,
            group: self
                .fencing
                .as_ref()
                .map(|f| f.group.clone())
                .unwrap_or_default(),
            member_id: self
                .fencing
                .as_ref()
                .map(|f| f.member_id.clone())
                .unwrap_or_default(),
            generation: self.fencing.as_ref().map_or(0, |f| f.generation),
        }
    }

    fn max_wait_ms(&self) -> u32 {
        u32::try_from(self.config.max_wait.as_millis()).unwrap_or(u32::MAX)
    }

    /// [`poll`](Consumer::poll) of several queues: one `FetchMany` per leader,
    /// each a single long poll over all of that leader's queues.
    async fn poll_many(
        &mut self,
        topic: &Arc<str>,
        mut queues: Vec<u32>,
    ) -> Result<Vec<ConsumedMessage>, ClientError> {
        self.polls = self.polls.wrapping_add(1);
        let turn = self.polls % queues.len();
        queues.rotate_left(turn);
        let mut by_leader: Vec<(Target, Vec<(u32, u64)>)> = Vec::new();
        for queue in queues {
            let offset = self.resolve_position(queue).await?;
            let target = self.client.queue_target(topic, queue).await;
            match by_leader
                .iter_mut()
                .find(|(t, parts)| *t == target && parts.len() < FETCH_MANY_MAX_PARTS)
            {
                Some((_, parts)) => parts.push((queue, offset)),
                None => by_leader.push((target, vec![(queue, offset)])),
            }
        }
        // What one answer may carry: well inside the frame limit.
        let max_bytes = u32::try_from(self.client.max_frame_bytes() / 2)
            .unwrap_or(u32::MAX)
            .max(1);
        let mut fetches = FuturesUnordered::new();
        for (target, parts) in by_leader {
            let body = request::Body::FetchMany(pb::FetchManyRequest {
                parts: parts
                    .iter()
                    .map(|&(queue, offset)| self.fetch_request(topic, queue, offset))
                    .collect(),
                max_wait_ms: self.max_wait_ms(),
                min_bytes: self.config.min_bytes,
                max_bytes,
            });
            let client = self.client.clone();
            fetches.push(async move {
                let answer = client.request(target.clone(), body).await;
                (target, parts, answer)
            });
        }
        let mut out = Vec::new();
        let mut failed = None;
        let mut moved = false;
        // As `poll`: the first answer with data, then whatever else is answered.
        while let Some(answer) = fetches.next().await {
            self.absorb_many(topic, answer, &mut out, &mut failed, &mut moved)
                .await;
            if !out.is_empty() {
                while let Some(Some(answer)) = fetches.next().now_or_never() {
                    self.absorb_many(topic, answer, &mut out, &mut failed, &mut moved)
                        .await;
                }
                break;
            }
        }
        match failed {
            // Nothing lost: the messages read go out now, the error next time.
            Some(e) if !out.is_empty() => self.deferred = Some(e),
            Some(e) => return Err(e),
            None if out.is_empty() && moved => tokio::time::sleep(FETCH_MANY_BACKOFF).await,
            None => {}
        }
        Ok(out)
    }

    /// Takes one leader's answer: messages into `out`, the first lasting error
    /// into `failed`; `moved` is set when a part met a retriable failure.
    async fn absorb_many(
        &mut self,
        topic: &Arc<str>,
        (target, parts, answer): (Target, Vec<(u32, u64)>, Result<response::Body, ClientError>),
        out: &mut Vec<ConsumedMessage>,
        failed: &mut Option<ClientError>,
        moved: &mut bool,
    ) {
        let many = match answer {
            Ok(response::Body::FetchMany(many)) => many,
            Ok(other) => {
                failed.get_or_insert(unexpected("fetch_many", &other));
                return;
            }
            Err(ClientError::Server(ServerError::InvalidRequest { .. })) => {
                // A broker of an earlier version (during a rolling upgrade, any
                // of them may be): one fetch per queue for a while.
                tracing::info!("a broker does not take multi-queue fetches: one per queue");
                self.fetch_many = Some(false);
                self.refused_at = Some(std::time::Instant::now());
                return;
            }
            Err(e) if e.is_retriable() => {
                tracing::debug!(error = %e, "multi-queue fetch failed, retrying next poll");
                *moved = true;
                return;
            }
            Err(e) => {
                failed.get_or_insert(e);
                return;
            }
        };
        // Never undoes a refusal met in the same poll: that broker's queues would
        // not be read at all.
        self.fetch_many.get_or_insert(true);
        if many.results.len() != parts.len() {
            failed.get_or_insert(ClientError::Protocol(format!(
                "{} results for a fetch of {} queues",
                many.results.len(),
                parts.len()
            )));
            return;
        }
        for ((queue, offset), result) in parts.into_iter().zip(many.results) {
            let result = match (result.error, result.fetch) {
                (Some(e), _) => Err(ClientError::Server(ServerError::from(e))),
                (None, Some(fetch)) => Ok(response::Body::Fetch(fetch)),
                (None, None) => Err(ClientError::Protocol(
                    "a fetch result with neither data nor error".into(),
                )),
            };
            match result {
                Err(e) if e.is_retriable() => {
                    // Moved or not ready: metadata says where it is now.
                    self.client.note_part_failure(&target, &e);
                    *moved = true;
                }
                result => {
                    if let Err(e) = self.absorb(topic, (queue, offset, result), out).await {
                        failed.get_or_insert(e);
                    }
                }
            }
        }
    }

    async fn absorb(
        &mut self,
        topic: &Arc<str>,
        (queue, offset, result): (u32, u64, Result<response::Body, ClientError>),
        out: &mut Vec<ConsumedMessage>,
    ) -> Result<(), ClientError> {
        // A seek while fetching would make this answer stale.
        if self.positions.get(&queue) != Some(&Some(offset)) {
            return Ok(());
        }
        let fetched = match result {
            Ok(response::Body::Fetch(f)) => f,
            Ok(other) => return Err(unexpected("fetch", &other)),
            Err(e) => {
                if let Some(ServerError::OffsetOutOfRange {
                    log_start, log_end, ..
                }) = e.server_error()
                {
                    let to = match self.config.reset {
                        OffsetReset::Earliest => *log_start,
                        OffsetReset::Latest => *log_end,
                        OffsetReset::Error => return Err(e),
                    };
                    tracing::info!(queue, offset, to, "position out of range, reset");
                    self.positions.insert(queue, Some(to));
                    return Ok(());
                }
                return Err(e);
            }
        };
        let mut next = offset;
        for b in fetched.batches {
            if self.config.check_crcs {
                batch::validate(&b.batch)?;
            }
            for m in batch::decode_records(&b.batch, b.base_offset) {
                let m = m?;
                // A batch may start before the position asked for.
                if m.offset < next {
                    continue;
                }
                next = m.offset + 1;
                out.push(ConsumedMessage {
                    topic: Arc::clone(topic),
                    queue,
                    offset: m.offset,
                    timestamp_ms: m.timestamp_ms,
                    key: m.key,
                    value: m.value,
                    headers: m.headers,
                });
            }
        }
        self.positions.insert(queue, Some(next));
        Ok(())
    }

    /// The consumer as an endless stream of messages (polling as needed). The stream
    /// yields an error and goes on; drop it to stop.
    pub fn into_stream(self) -> impl Stream<Item = Result<ConsumedMessage, ClientError>> {
        futures::stream::unfold(
            (self, std::collections::VecDeque::new()),
            |(mut consumer, mut buffer)| async move {
                loop {
                    if let Some(m) = buffer.pop_front() {
                        return Some((Ok(m), (consumer, buffer)));
                    }
                    match consumer.poll().await {
                        Ok(messages) => buffer.extend(messages),
                        Err(e) => return Some((Err(e), (consumer, buffer))),
                    }
                }
            },
        )
    }
}

/// Asks the leader for an offset of `topic`/`queue`.
pub(crate) async fn list_offset(
    client: &Client,
    topic: &str,
    queue: u32,
    spec: pb::OffsetSpec,
    timestamp_ms: i64,
) -> Result<u64, ClientError> {
    let body = request::Body::ListOffsets(pb::ListOffsetsRequest {
        topic: topic.to_owned(),
        queue,
        spec: spec as i32,
        timestamp_ms,
    });
    match client.request_queue(topic, queue, body).await? {
        response::Body::ListOffsets(r) => Ok(r.offset),
        other => Err(unexpected("list_offsets", &other)),
    }
}
