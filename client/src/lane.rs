//! One produce lane per (broker address, Raft group): the batches every queue
//! worker of a client sends to that group's leader go out together, one
//! `ProduceMany` request carrying the batches of many queues, with at most
//! [`LANE_REQUESTS_IN_FLIGHT`] requests out at once.
//!
//! A producer writing to thousands of queues otherwise sends one request per
//! batch, each a handful of records: the request, its answer and the broker's
//! handling of them cost more than the records. While the lane's requests are out,
//! the batches handed to it wait and leave together in the next request (up to half
//! the client's `max_frame_bytes` of batches; the broker's frame limit should be
//! no lower, as for fetch answers), as Kafka's sender does with
//! `max.in.flight.requests.per.connection`. A lane per group, not per broker: the
//! broker answers a request once all its parts are answered, so a group that is
//! slow to commit (a lost quorum, a slow disk) holds up only its own queues.
//!
//! Order: a queue's batches are handed to the lane in order and leave in that order
//! (one task writes the lane's requests; the broker reads a connection's requests
//! in order and hands the parts of a request to their group in order), so the
//! broker sees them in the order the worker sent them. A single batch goes as a
//! plain `Produce`. The first multi-queue request to a broker is a probe: the lane
//! waits for its answer before sending anything else, and a broker that does not
//! know `ProduceMany` (an older version during a rolling upgrade) gets the probe's
//! batches again as plain produces, in order, and plain produces from then on.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use raftmq_proto::pb::ErrorCode;
use raftmq_proto::pb::{self, request, response};
use tokio::sync::{oneshot, Notify};

use crate::conn::Connection;
use crate::{Client, ClientError};

/// Requests a lane keeps out at once (Kafka's default per connection).
pub(crate) const LANE_REQUESTS_IN_FLIGHT: usize = 5;

type PartAnswer = Result<pb::Response, ClientError>;

/// Whether the broker takes `ProduceMany` ([`ProduceLane::support`]).
const SUPPORT_UNKNOWN: u8 = 0;
const SUPPORT_MANY: u8 = 1;
const SUPPORT_SINGLE: u8 = 2;

/// A batch waiting for its request, with where its answer goes.
struct Part {
    request: pb::ProduceRequest,
    answer: oneshot::Sender<PartAnswer>,
}

/// The produce lane of one broker address and group.
pub(crate) struct ProduceLane {
    address: String,
    state: Mutex<LaneState>,
    /// Wakes the lane's task for new batches.
    work: Notify,
    /// Whether the broker takes `ProduceMany` (`SUPPORT_*`).
    support: Arc<AtomicU8>,
    /// Since when this lane sends one batch per request (the broker did not take
    /// `ProduceMany`): after [`REPROBE_AFTER`] it probes again, so that a broker
    /// upgraded meanwhile is used fully without restarting the client.
    single_since: Mutex<Option<std::time::Instant>>,
}

/// How long a lane sends one batch per request before it probes again.
const REPROBE_AFTER: Duration = Duration::from_secs(60);

#[derive(Default)]
struct LaneState {
    waiting: Vec<Part>,
    /// Whether the lane's task runs (it stops once nothing waits or is out).
    running: bool,
}

/// Ends the lane's task however it ends: dropped without finishing (its runtime
/// shutting down), it lets a later batch start a new task and fails the batches
/// waiting, which would otherwise never be answered.
struct LaneExit<'a> {
    lane: &'a ProduceLane,
    finished: bool,
}

impl Drop for LaneExit<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let waiting = {
            let mut state = self.lane.state();
            state.running = false;
            std::mem::take(&mut state.waiting)
        };
        for part in waiting {
            let _ = part.answer.send(Err(ClientError::ConnectionClosed(
                self.lane.address.clone(),
            )));
        }
    }
}

impl ProduceLane {
    pub(crate) fn new(address: String) -> ProduceLane {
        ProduceLane {
            address,
            state: Mutex::new(LaneState::default()),
            work: Notify::new(),
            support: Arc::new(AtomicU8::new(SUPPORT_UNKNOWN)),
            single_since: Mutex::new(None),
        }
    }

    fn state(&self) -> MutexGuard<'_, LaneState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a lane sending one batch per request should probe the broker
    /// again; the first call starts the clock.
    fn reprobe_due(&self) -> bool {
        let mut since = self.single_since.lock().unwrap_or_else(|e| e.into_inner());
        match *since {
            Some(at) if at.elapsed() >= REPROBE_AFTER => {
                *since = None;
                true
            }
            Some(_) => false,
            None => {
                *since = Some(std::time::Instant::now());
                false
            }
        }
    }

    /// Hands one batch over; its answer (the raw response a plain produce would
    /// have got) comes through the returned receiver.
    pub(crate) fn submit(
        self: &Arc<Self>,
        client: &Client,
        request: pb::ProduceRequest,
    ) -> oneshot::Receiver<PartAnswer> {
        let (answer, receiver) = oneshot::channel();
        let start = {
            let mut state = self.state();
            state.waiting.push(Part { request, answer });
            !std::mem::replace(&mut state.running, true)
        };
        if start {
            let lane = Arc::clone(self);
            let client = client.clone();
            tokio::spawn(async move { lane.run(client).await });
        } else {
            self.work.notify_one();
        }
        receiver
    }

    /// The lane's task: writes the waiting batches as one request whenever fewer
    /// than [`LANE_REQUESTS_IN_FLIGHT`] are out (one task, so requests leave in
    /// the order their batches came), and hands the answers out.
    async fn run(self: Arc<Self>, client: Client) {
        let mut exit = LaneExit {
            lane: &self,
            finished: false,
        };
        let max_bytes = client.max_frame_bytes() / 2;
        let mut out = FuturesUnordered::new();
        loop {
            let parts = {
                let mut state = self.state();
                if state.waiting.is_empty() && out.is_empty() {
                    state.running = false;
                    exit.finished = true;
                    return;
                }
                if out.len() < LANE_REQUESTS_IN_FLIGHT && !state.waiting.is_empty() {
                    Some(take_leading(&mut state.waiting, max_bytes))
                } else {
                    None
                }
            };
            match parts {
                Some(parts) => out.extend(self.send(&client, parts).await),
                None => {
                    tokio::select! {
                        _ = out.next(), if !out.is_empty() => {}
                        _ = self.work.notified() => {}
                    }
                }
            }
        }
    }

    /// Writes `parts` (one request, or one per part) and returns the futures that
    /// hand their answers out.
    async fn send(&self, client: &Client, parts: Vec<Part>) -> Vec<BoxFuture<'static, ()>> {
        let timeout = client.request_timeout();
        let started = tokio::time::Instant::now();
        let conn = match client.connection(&self.address).await {
            Ok(conn) => conn,
            Err(e) => {
                fail_all(parts.into_iter().map(|p| p.answer), &e);
                return Vec::new();
            }
        };
        let mut support = self.support.load(Ordering::Relaxed);
        if support == SUPPORT_SINGLE && self.reprobe_due() {
            support = SUPPORT_UNKNOWN;
            self.support.store(support, Ordering::Relaxed);
        }
        if parts.len() == 1 || support == SUPPORT_SINGLE {
            return send_each(&conn, parts, started, timeout).await;
        }
        // The first multi-queue request to this broker keeps copies of its batches
        // to resend them one by one if it is refused.
        let copies: Option<Vec<pb::ProduceRequest>> =
            (support == SUPPORT_UNKNOWN).then(|| parts.iter().map(|p| p.request.clone()).collect());
        let (requests, answers): (Vec<_>, Vec<_>) =
            parts.into_iter().map(|p| (p.request, p.answer)).unzip();
        let body = request::Body::ProduceMany(pb::ProduceManyRequest { parts: requests });
        let pending = match conn.send(body, timeout).await {
            Ok(pending) => pending,
            Err(e) => {
                fail_all(answers, &e);
                return Vec::new();
            }
        };
        let Some(copies) = copies else {
            let support = Arc::clone(&self.support);
            let address = self.address.clone();
            return vec![async move {
                let outcome = pending.answer(started + timeout).await;
                hand_out(answers, outcome, &support, &address);
            }
            .boxed()];
        };
        // The probe: nothing else leaves until it is answered, so that a refusal
        // can resend its batches before any later batch of the same queues.
        let outcome = pending.answer(started + timeout).await;
        match &outcome {
            Ok(r) if refused_as_unknown(r) => {
                self.support.store(SUPPORT_SINGLE, Ordering::Relaxed);
                tracing::info!(
                    address = %self.address,
                    "the broker does not take multi-queue produce requests; sending one batch per request"
                );
                let parts = copies
                    .into_iter()
                    .zip(answers)
                    .map(|(request, answer)| Part { request, answer })
                    .collect();
                send_each(&conn, parts, tokio::time::Instant::now(), timeout).await
            }
            Ok(r) => {
                if matches!(r.body, Some(response::Body::ProduceMany(_))) {
                    self.support.store(SUPPORT_MANY, Ordering::Relaxed);
                }
                hand_out(answers, outcome, &self.support, &self.address);
                Vec::new()
            }
            Err(_) => {
                hand_out(answers, outcome, &self.support, &self.address);
                Vec::new()
            }
        }
    }
}

/// Takes the longest run of waiting batches from the front that stays within
/// `max_bytes` (at least one batch).
fn take_leading(waiting: &mut Vec<Part>, max_bytes: usize) -> Vec<Part> {
    let mut bytes = 0;
    let mut count = 0;
    for part in waiting.iter() {
        let size = part.request.batch.len();
        if count > 0 && bytes + size > max_bytes {
            break;
        }
        bytes += size;
        count += 1;
    }
    if count == waiting.len() {
        std::mem::take(waiting)
    } else {
        waiting.drain(..count).collect()
    }
}

/// One plain produce per part, pipelined in order on `conn`; after a part that
/// cannot be written, the rest are not sent (they fail the same way), so that no
/// batch overtakes an earlier one.
async fn send_each(
    conn: &Connection,
    parts: Vec<Part>,
    started: tokio::time::Instant,
    timeout: std::time::Duration,
) -> Vec<BoxFuture<'static, ()>> {
    let mut answers = Vec::with_capacity(parts.len());
    let mut parts = parts.into_iter();
    while let Some(part) = parts.next() {
        let body = request::Body::Produce(part.request);
        match conn.send(body, timeout).await {
            Ok(pending) => answers.push(
                async move {
                    let _ = part.answer.send(pending.answer(started + timeout).await);
                }
                .boxed(),
            ),
            Err(e) => {
                let _ = part.answer.send(Err(e.clone()));
                fail_all(parts.map(|p| p.answer), &e);
                break;
            }
        }
    }
    answers
}

fn fail_all(answers: impl IntoIterator<Item = oneshot::Sender<PartAnswer>>, e: &ClientError) {
    for answer in answers {
        let _ = answer.send(Err(e.clone()));
    }
}

/// Whether `response` is a broker's answer to a request it does not know.
fn refused_as_unknown(response: &pb::Response) -> bool {
    response.body.is_none()
        && response.error.as_ref().is_some_and(|e| {
            e.code == ErrorCode::InvalidRequest as i32
                || e.code == ErrorCode::UnsupportedVersion as i32
        })
}

/// Gives each part of a multi-queue produce its answer from the envelope's.
fn hand_out(
    answers: Vec<oneshot::Sender<PartAnswer>>,
    outcome: PartAnswer,
    support: &AtomicU8,
    address: &str,
) {
    let response = match outcome {
        Ok(response) => response,
        Err(e) => return fail_all(answers, &e),
    };
    if refused_as_unknown(&response) {
        // A broker that took them before and no longer does (downgraded): nothing
        // was stored. The batches are refused as busy, so their workers resend
        // them, one per request from now on.
        if support.swap(SUPPORT_SINGLE, Ordering::Relaxed) != SUPPORT_SINGLE {
            tracing::info!(
                %address,
                "the broker no longer takes multi-queue produce requests; sending one batch per request"
            );
        }
        for answer in answers {
            let _ = answer.send(Ok(pb::Response {
                correlation_id: 0,
                error: Some(pb::Error::new(
                    ErrorCode::Busy,
                    "the broker does not take multi-queue produce requests; resend one batch per request",
                )),
                body: None,
            }));
        }
        return;
    }
    match (response.error, response.body) {
        (None, Some(response::Body::ProduceMany(many))) if many.results.len() == answers.len() => {
            for (answer, result) in answers.into_iter().zip(many.results) {
                let _ = answer.send(Ok(part_response(result)));
            }
        }
        (Some(e), body) => {
            // The envelope refused whole (not logged in, shutting down): every part
            // gets that answer.
            for answer in answers {
                let _ = answer.send(Ok(pb::Response {
                    correlation_id: 0,
                    error: Some(e.clone()),
                    body: body.clone(),
                }));
            }
        }
        (None, _) => {
            let e = ClientError::Protocol(format!(
                "a multi-queue produce of {} batches was not answered part by part",
                answers.len()
            ));
            fail_all(answers, &e);
        }
    }
}

/// The response a plain produce would have got for one part's result: a body on
/// success and with a duplicate's offset, as the broker answers those.
fn part_response(result: pb::ProducePartResult) -> pb::Response {
    let body = match &result.error {
        Some(e) if e.code != ErrorCode::DuplicateSequence as i32 => None,
        _ => Some(response::Body::Produce(pb::ProduceResponse {
            base_offset: result.base_offset,
            count: result.count,
        })),
    };
    pb::Response {
        correlation_id: 0,
        error: result.error,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(bytes: usize) -> Part {
        Part {
            request: pb::ProduceRequest {
                batch: bytes::Bytes::from(vec![0u8; bytes]),
                ..Default::default()
            },
            answer: oneshot::channel().0,
        }
    }

    #[test]
    fn a_request_takes_the_leading_batches_that_fit_and_at_least_one() {
        let mut waiting: Vec<Part> = [400, 400, 300, 10].into_iter().map(part).collect();
        assert_eq!(
            take_leading(&mut waiting, 1000).len(),
            2,
            "400 + 400; 300 would pass"
        );
        assert_eq!(take_leading(&mut waiting, 1000).len(), 2, "300 + 10");
        assert!(waiting.is_empty());
        let mut big: Vec<Part> = [5000, 10].into_iter().map(part).collect();
        assert_eq!(
            take_leading(&mut big, 1000).len(),
            1,
            "a large batch goes alone"
        );
        assert_eq!(take_leading(&mut big, 1000).len(), 1);
    }
}
