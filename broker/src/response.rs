//! Answering a request: a [`Responder`] carries the correlation id and the
//! connection's response queue, plus the in-flight permit that bounds how many
//! requests one connection may have outstanding.

use std::sync::Arc;
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
