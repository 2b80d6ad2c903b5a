//! One produce lane per broker address: the batches every queue worker of a client
//! sends to that broker go out together, one `ProduceMany` request carrying the
//! batches of many queues, with at most [`LANE_REQUESTS_IN_FLIGHT`] requests out at
//! once.
//!
//! A producer writing to thousands of queues otherwise sends one request per
//! batch, each a handful of records: the request, its answer and the broker's
//! handling of them cost more than the records. While the lane's requests are out,
//! the batches handed to it wait and leave together in the next request, and the
//! queue workers (whose in-flight window the waiting batches fill) let their open
//! batches grow meanwhile: the busier the broker, the bigger the requests and the
//! batches, as Kafka's sender does with `max.in.flight.requests.per.connection`.
//!
//! Order: a queue's batches are handed to the lane in order, leave in that order
//! (the requests of one connection are read in order by the broker, and the parts
//! of a request are handed to their groups in order), so the broker sees them in
//! the order the worker sent them. A single batch goes as a plain `Produce`, and a
//! broker that does not know `ProduceMany` (an older version during a rolling
//! upgrade) gets plain produces from then on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use raftmq_proto::pb::ErrorCode;
use raftmq_proto::pb::{self, request, response};
use tokio::sync::{oneshot, Notify};

use crate::{Client, ClientError};

/// Requests a lane keeps out at once (Kafka's default per connection).
pub(crate) const LANE_REQUESTS_IN_FLIGHT: usize = 5;

type PartAnswer = Result<pb::Response, ClientError>;

/// A batch waiting for its request, with where its answer goes.
struct Part {
    request: pb::ProduceRequest,
    answer: oneshot::Sender<PartAnswer>,
}

/// The produce lane of one broker address.
pub(crate) struct ProduceLane {
    address: String,
    state: Mutex<LaneState>,
    /// Wakes the lane's task for new batches.
    work: Notify,
    /// The broker answered `ProduceMany` as an unknown request: plain produces.
    single_flag: Arc<AtomicBool>,
}

#[derive(Default)]
struct LaneState {
    waiting: Vec<Part>,
    /// Whether the lane's task runs (it stops once nothing waits or is out).
    running: bool,
}

impl ProduceLane {
    pub(crate) fn new(address: String) -> ProduceLane {
        ProduceLane {
            address,
            state: Mutex::new(LaneState::default()),
            work: Notify::new(),
            single_flag: Arc::new(AtomicBool::new(false)),
        }
    }

    fn state(&self) -> MutexGuard<'_, LaneState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
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
        let mut out = FuturesUnordered::new();
        loop {
            let parts = {
                let mut state = self.state();
                if state.waiting.is_empty() && out.is_empty() {
                    state.running = false;
                    return;
                }
                if out.len() < LANE_REQUESTS_IN_FLIGHT && !state.waiting.is_empty() {
                    Some(std::mem::take(&mut state.waiting))
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
                for part in parts {
                    let _ = part.answer.send(Err(e.clone()));
                }
                return Vec::new();
            }
        };
        if parts.len() == 1 || self.single_flag.load(Ordering::Relaxed) {
            let mut answers = Vec::with_capacity(parts.len());
            for part in parts {
                let body = request::Body::Produce(part.request);
                match conn.send(body, timeout).await {
                    Ok(pending) => answers.push(
                        async move {
                            let _ = part.answer.send(pending.answer(started + timeout).await);
                        }
                        .boxed(),
                    ),
                    Err(e) => {
                        let _ = part.answer.send(Err(e));
                    }
                }
            }
            return answers;
        }
        let (requests, answers): (Vec<_>, Vec<_>) =
            parts.into_iter().map(|p| (p.request, p.answer)).unzip();
        let body = request::Body::ProduceMany(pb::ProduceManyRequest { parts: requests });
        let pending = match conn.send(body, timeout).await {
            Ok(pending) => pending,
            Err(e) => {
                for answer in answers {
                    let _ = answer.send(Err(e.clone()));
                }
                return Vec::new();
            }
        };
        let single = Arc::clone(&self.single_flag);
        let address = self.address.clone();
        vec![async move {
            let outcome = pending.answer(started + timeout).await;
            hand_out(answers, outcome, &single, &address);
        }
        .boxed()]
    }
}

/// Gives each part of a multi-queue produce its answer from the envelope's.
fn hand_out(
    answers: Vec<oneshot::Sender<PartAnswer>>,
    outcome: PartAnswer,
    single: &AtomicBool,
    address: &str,
) {
    let response = match outcome {
        Ok(response) => response,
        Err(e) => {
            for answer in answers {
                let _ = answer.send(Err(e.clone()));
            }
            return;
        }
    };
    match (response.error, response.body) {
        (None, Some(response::Body::ProduceMany(many))) if many.results.len() == answers.len() => {
            for (answer, result) in answers.into_iter().zip(many.results) {
                let _ = answer.send(Ok(part_response(result)));
            }
        }
        (Some(e), None)
            if e.code == ErrorCode::InvalidRequest as i32
                || e.code == ErrorCode::UnsupportedVersion as i32 =>
        {
            // An older broker: nothing was stored. The batches are refused as
            // busy, so their workers resend them, in order, one per request.
            if !single.swap(true, Ordering::Relaxed) {
                tracing::info!(
                    %address, error = %e.message,
                    "the broker does not take multi-queue produce requests; sending one batch per request"
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
            for answer in answers {
                let _ = answer.send(Err(e.clone()));
            }
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
