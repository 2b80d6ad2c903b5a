//! Answering a request: a [`Responder`] carries the correlation id and the
//! connection's response queue, plus the in-flight permit that bounds how many
//! requests one connection may have outstanding.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use raftmq_proto::pb;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};

use crate::metrics::{Api, BrokerMetrics};

/// A response on its way to the connection's writer, with the permit it releases
/// once written.
pub type Outgoing = (pb::Response, Option<OwnedSemaphorePermit>);

/// Where one request's answer goes. Dropping it without answering would leave the
/// client waiting, so every path answers (the node's shutdown answers what is left).
#[derive(Debug)]
pub struct Responder {
    correlation_id: u64,
    sink: Sink,
    permit: Option<OwnedSemaphorePermit>,
    /// Set when metrics are on: recorded once, when the answer is sent.
    observed: Option<Observed>,
}

/// Where the answer goes: a native connection's writer, or the task of a protocol
/// adapter (the Kafka listener) waiting for this one answer.
#[derive(Debug)]
enum Sink {
    Connection(mpsc::UnboundedSender<Outgoing>),
    Caller(oneshot::Sender<pb::Response>),
    /// One part of a multi-queue produce: its slot in the envelope's answer.
    Part(Arc<PartsGather>, usize),
}

/// The answers of a multi-queue produce's parts, gathered into the one answer of
/// the envelope. The envelope is answered when the last part's responder is gone
/// (answered or dropped), so it is answered however its parts end; a part dropped
/// unanswered (the broker shutting down) is answered `TIMEOUT` (outcome unknown).
#[derive(Debug)]
pub struct PartsGather {
    results: Mutex<Vec<Option<pb::ProducePartResult>>>,
    envelope: Option<Responder>,
}

impl Drop for PartsGather {
    fn drop(&mut self) {
        let Some(envelope) = self.envelope.take() else {
            return;
        };
        let results = std::mem::take(self.results.get_mut().unwrap_or_else(|e| e.into_inner()));
        let results = results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| pb::ProducePartResult {
                    error: Some(pb::Error::new(
                        pb::ErrorCode::Timeout,
                        "the broker stopped before this batch was answered",
                    )),
                    ..Default::default()
                })
            })
            .collect();
        envelope.ok(pb::response::Body::ProduceMany(pb::ProduceManyResponse {
            results,
        }));
    }
}

/// What the metrics need to know about a request when it is answered.
#[derive(Debug)]
struct Observed {
    metrics: Arc<BrokerMetrics>,
    api: Api,
    started: Instant,
    request_bytes: u64,
    /// The topic of a produce or fetch, for the per-topic series (resolved only
    /// when the answer is a success, so unknown topics make no series).
    topic: Option<String>,
}

impl Responder {
    /// A responder for one request.
    pub fn new(
        correlation_id: u64,
        tx: mpsc::UnboundedSender<Outgoing>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Responder {
        Responder {
            correlation_id,
            sink: Sink::Connection(tx),
            permit,
            observed: None,
        }
    }

    /// A responder whose answer is handed to the caller through `tx` (a protocol
    /// adapter translating the answer into its own wire format).
    pub fn to_caller(tx: oneshot::Sender<pb::Response>) -> Responder {
        Responder {
            correlation_id: 0,
            sink: Sink::Caller(tx),
            permit: None,
            observed: None,
        }
    }

    /// One responder per part of a multi-queue produce answered by `envelope`
    /// (see [`PartsGather`]).
    pub fn parts(envelope: Responder, parts: usize) -> Vec<Responder> {
        let gather = Arc::new(PartsGather {
            results: Mutex::new(vec![None; parts]),
            envelope: Some(envelope),
        });
        (0..parts)
            .map(|index| Responder {
                correlation_id: 0,
                sink: Sink::Part(Arc::clone(&gather), index),
                permit: None,
                observed: None,
            })
            .collect()
    }

    /// Records the request's latency, error code and volume in `metrics` when it is
    /// answered (nothing is attached when metrics are off). `request_bytes` is the
    /// produce batch size (0 for other requests).
    pub fn observed(
        mut self,
        metrics: &Arc<BrokerMetrics>,
        api: Api,
        started: Instant,
        request_bytes: u64,
    ) -> Responder {
        if metrics.enabled() {
            self.observed = Some(Observed {
                metrics: metrics.clone(),
                api,
                started,
                request_bytes,
                topic: None,
            });
        }
        self
    }

    /// Also counts the answer in the per-topic series of `topic` (produce, fetch).
    pub fn for_topic(mut self, topic: &str) -> Responder {
        if let Some(o) = &mut self.observed {
            o.topic = Some(topic.to_owned());
        }
        self
    }

    fn send(self, error: Option<pb::Error>, body: Option<pb::response::Body>) {
        if let Some(o) = &self.observed {
            o.metrics.on_response(
                o.api,
                o.started,
                o.request_bytes,
                error.as_ref(),
                body.as_ref(),
                o.topic.as_deref(),
            );
        }
        let response = pb::Response {
            correlation_id: self.correlation_id,
            error,
            body,
        };
        // The connection may be gone; its client will retry elsewhere.
        match self.sink {
            Sink::Connection(tx) => {
                let _ = tx.send((response, self.permit));
            }
            Sink::Caller(tx) => {
                let _ = tx.send(response);
            }
            Sink::Part(gather, index) => {
                let (base_offset, count) = match &response.body {
                    Some(pb::response::Body::Produce(r)) => (r.base_offset, r.count),
                    _ => (0, 0),
                };
                let result = pb::ProducePartResult {
                    base_offset,
                    count,
                    error: response.error,
                };
                let mut results = gather.results.lock().unwrap_or_else(|e| e.into_inner());
                results[index] = Some(result);
            }
        }
    }

    /// Whether nobody waits for this answer any more: an adapter's caller that
    /// stopped waiting (a multi-queue fetch whose long poll another queue ended).
    /// Parked fetches with closed responders are dropped instead of re-read.
    pub fn is_closed(&self) -> bool {
        match &self.sink {
            Sink::Caller(tx) => tx.is_closed(),
            Sink::Connection(tx) => tx.is_closed(),
            Sink::Part(..) => false,
        }
    }

    /// Answers with a success body.
    pub fn ok(self, body: pb::response::Body) {
        self.send(None, Some(body));
    }

    /// Answers with an error.
    pub fn error(self, error: pb::Error) {
        self.send(Some(error), None);
    }

    /// Answers with an error and a body (a duplicate produce tells where the batch is).
    pub fn error_with_body(self, error: pb::Error, body: pb::response::Body) {
        self.send(Some(error), Some(body));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_responder_whose_caller_stopped_waiting_is_closed() {
        let (tx, rx) = oneshot::channel();
        let reply = Responder::to_caller(tx);
        assert!(!reply.is_closed());
        drop(rx);
        assert!(reply.is_closed(), "nobody waits: a parked fetch is dropped");
        let (tx, _rx) = mpsc::unbounded_channel();
        assert!(!Responder::new(1, tx, None).is_closed());
    }
}
