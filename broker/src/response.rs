//! Answering a request: a [`Responder`] carries the correlation id and the
//! connection's response queue, plus the in-flight permit that bounds how many
//! requests one connection may have outstanding.

use raftmq_proto::pb;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

/// A response on its way to the connection's writer, with the permit it releases
/// once written.
pub type Outgoing = (pb::Response, Option<OwnedSemaphorePermit>);

/// Where one request's answer goes. Dropping it without answering would leave the
/// client waiting, so every path answers (the node's shutdown answers what is left).
#[derive(Debug)]
pub struct Responder {
    correlation_id: u64,
    tx: mpsc::UnboundedSender<Outgoing>,
    permit: Option<OwnedSemaphorePermit>,
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
            tx,
            permit,
        }
    }

    fn send(self, error: Option<pb::Error>, body: Option<pb::response::Body>) {
        let response = pb::Response {
            correlation_id: self.correlation_id,
            error,
            body,
        };
        // The connection may be gone; its client will retry elsewhere.
        let _ = self.tx.send((response, self.permit));
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
