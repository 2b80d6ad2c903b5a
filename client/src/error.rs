//! [`ClientError`]: everything a client call can fail with.

use std::sync::Arc;
use std::time::Duration;

use raftmq_proto::batch::BatchError;
use raftmq_proto::{ProtoError, ServerError};

/// What can go wrong in the client. Cheap to clone: one failed batch fails every
/// message in it with the same error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The broker answered with an error.
    #[error("broker error: {0}")]
    Server(ServerError),
    /// A socket failed (read or write).
    #[error("I/O error: {0}")]
    Io(Arc<std::io::Error>),
    /// A broker could not be connected to.
    #[error("cannot connect to {address}: {error}{}", connect_hint(.error))]
    Connect {
        /// The address tried (host:port).
        address: String,
        /// Why.
        error: Arc<std::io::Error>,
    },
    /// No answer within the request timeout (the outcome is unknown).
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    /// The connection closed before the answer came.
    #[error("connection to {0} closed")]
    ConnectionClosed(String),
    /// A connection closed before it carried any answer: most often not a raftmq
    /// client port (the Kafka or metrics port), TLS on one side only, or a
    /// connection limit (the broker's log says which).
    #[error(
        "connection to {0} closed before any answer: is it a raftmq broker's client port \
         (not its Kafka or metrics port), and does it use TLS (--tls-ca)? the broker's \
         log says why it closed"
    )]
    ClosedUnanswered(String),
    /// The broker's answer breaks the protocol (wrong body, bad frame).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A frame or batch could not be decoded.
    #[error("decode error: {0}")]
    Decode(Arc<ProtoError>),
    /// A fetched record batch is corrupt.
    #[error("corrupt batch from broker: {0}")]
    CorruptBatch(BatchError),
    /// No broker could be reached, or none knows a leader.
    #[error("no broker available: {0}")]
    NoBroker(String),
    /// The request was retried as often as allowed; the last error is kept.
    #[error("gave up after {attempts} attempts: {last}{}", exhausted_hint(.last))]
    RetriesExhausted {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: Box<ClientError>,
    },
    /// A produce was retried until the budget ran out, and some attempt may have
    /// stored it (a timeout, or a connection lost after sending): it may be in the
    /// log. An idempotent producer never stores it twice, but retrying it by hand
    /// (with a new producer) could.
    #[error("outcome unknown after {attempts} attempts (it may have been stored): {last}")]
    OutcomeUnknown {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: Box<ClientError>,
    },
    /// The argument is invalid (bad name, queue out of range, message too large...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The producer or consumer was closed.
    #[error("closed")]
    Closed,
    /// The brokers answering belong to another cluster than the one this client
    /// first talked to (a wrong address list, or a cluster rebuilt under the same
    /// addresses).
    #[error("wrong cluster: {0}")]
    WrongCluster(String),
    /// TLS could not be set up: an unreadable certificate or key file, or a
    /// handshake the broker or this client refused (an untrusted certificate, a
    /// certificate for another host, an expired one).
    #[error("TLS: {0}")]
    Tls(String),
}

// By hand, not `#[from]`: the message already holds the inner error, which must
// not also be its `source` (a chain would print it twice).
impl From<ServerError> for ClientError {
    fn from(e: ServerError) -> Self {
        ClientError::Server(e)
    }
}

impl From<BatchError> for ClientError {
    fn from(e: BatchError) -> Self {
        ClientError::CorruptBatch(e)
    }
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(Arc::new(e))
    }
}

impl From<ProtoError> for ClientError {
    fn from(e: ProtoError) -> Self {
        match e {
            ProtoError::InvalidName { .. } => ClientError::InvalidArgument(e.to_string()),
            e => ClientError::Decode(Arc::new(e)),
        }
    }
}

/// What a user can do when retries ran out on a leader that never answered.
fn exhausted_hint(last: &ClientError) -> &'static str {
    match last.server_error() {
        Some(ServerError::NotLeader { .. } | ServerError::NotReady { .. }) => {
            " (no leader took the request for the whole retry budget: is a majority of \
             the cluster's nodes up and connected? `raftmq cluster status` shows each \
             node's view; the client's retry_timeout (`raftmq --retry-timeout-ms`) bounds the wait)"
        }
        Some(ServerError::Busy { .. }) => {
            " (the brokers stayed overloaded for the whole retry budget: send less, or \
             raise the client's retry_timeout)"
        }
        _ => "",
    }
}

/// What a user can do about a failed connection.
fn connect_hint(error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::ConnectionRefused => {
            " (nothing listens there: is raftmq-broker running, and is this its client \
             port? check --brokers)"
        }
        std::io::ErrorKind::InvalidInput => " (a broker address is HOST:PORT)",
        _ => "",
    }
}

impl ClientError {
    /// Whether sending the same request again (after a backoff, maybe to another
    /// broker) can succeed: transport failures, timeouts, and retriable broker errors.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Server(e) => e.is_retriable(),
            // An address that cannot be one (no port, a bad number) never will be.
            ClientError::Connect { error, .. } => error.kind() != std::io::ErrorKind::InvalidInput,
            ClientError::Io(_)
            | ClientError::Timeout(_)
            | ClientError::ConnectionClosed(_)
            | ClientError::ClosedUnanswered(_)
            | ClientError::NoBroker(_) => true,
            _ => false,
        }
    }

    /// The broker's error, if this is one (looking through `RetriesExhausted`).
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            ClientError::Server(e) => Some(e),
            ClientError::RetriesExhausted { last, .. }
            | ClientError::OutcomeUnknown { last, .. } => last.server_error(),
            _ => None,
        }
    }

    /// Whether a request that failed this way may still have taken effect: it was
    /// sent and no answer says what happened (a timeout, a lost connection, a
    /// broker timeout, a leader that stepped down before committing).
    pub fn outcome_unknown(&self) -> bool {
        match self {
            ClientError::Timeout(_)
            | ClientError::ConnectionClosed(_)
            | ClientError::ClosedUnanswered(_)
            | ClientError::OutcomeUnknown { .. } => true,
            ClientError::Server(ServerError::Timeout { .. }) => true,
            ClientError::RetriesExhausted { last, .. } => last.outcome_unknown(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_run_out_on_no_leader_with_what_to_check() {
        let e = ClientError::RetriesExhausted {
            attempts: 12,
            last: Box::new(ClientError::Server(ServerError::NotReady {
                leader_address: None,
                message: "no leader is known yet".into(),
            })),
        };
        let text = e.to_string();
        assert!(text.starts_with("gave up after 12 attempts: "), "{text}");
        assert!(text.contains("raftmq cluster status"), "{text}");
        let plain = ClientError::RetriesExhausted {
            attempts: 3,
            last: Box::new(ClientError::Timeout(Duration::from_secs(1))),
        };
        assert_eq!(
            plain.to_string(),
            "gave up after 3 attempts: request timed out after 1s"
        );
    }
}
