//! One multiplexed connection to one broker: a writer task and a reader task over a
//! framed TCP stream, and a map from correlation id to the caller waiting for that
//! answer. Many requests can be in flight at once; answers may come in any order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use raftmq_proto::frame_writer::{FrameWriter, OutFrame};
use raftmq_proto::tls::{rustls, tokio_rustls};
use raftmq_proto::{frame, pb};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;

use crate::ClientError;

type Waiter = oneshot::Sender<Result<pb::Response, ClientError>>;

/// Requests queued for the writer task before callers wait for room.
const WRITE_QUEUE_FRAMES: usize = 1024;

struct Shared {
    address: String,
    pending: Mutex<HashMap<u64, Waiter>>,
    next_correlation_id: AtomicU64,
    closed: AtomicBool,
    /// An answer came on this connection (else its closing is reported with
    /// what usually causes that).
    answered: AtomicBool,
}

impl Shared {
    /// Fails every waiter and refuses new requests.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let waiters: Vec<Waiter> = match self.pending.lock() {
            Ok(mut p) => p.drain().map(|(_, w)| w).collect(),
            Err(_) => Vec::new(),
        };
        let answered = self.answered.load(Ordering::Acquire);
        for w in waiters {
            let address = self.address.clone();
            let _ = w.send(Err(if answered {
                ClientError::ConnectionClosed(address)
            } else {
                ClientError::ClosedUnanswered(address)
            }));
        }
    }

    fn take(&self, correlation_id: u64) -> Option<Waiter> {
        self.pending.lock().ok()?.remove(&correlation_id)
    }
}

/// A cheap handle to a connection; clones share it.
#[derive(Clone)]
pub(crate) struct Connection {
    shared: Arc<Shared>,
    writer: mpsc::Sender<OutFrame>,
}

impl Connection {
    /// Connects to `address` (host:port) with TCP_NODELAY, over TLS when `tls` is
    /// given, and starts its tasks.
    pub(crate) async fn connect(
        address: &str,
        connect_timeout: Duration,
        max_frame_bytes: usize,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> Result<Connection, ClientError> {
        // Nothing was sent yet: a connection that does not come is a failed
        // connect (its outcome is known), not a request timeout.
        let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(address))
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {connect_timeout:?}"),
                ))
            })
            .map_err(|error| ClientError::Connect {
                address: address.to_owned(),
                error: Arc::new(error),
            })?;
        stream.set_nodelay(true)?;
        let Some(tls) = tls else {
            let (read_half, write_half) = stream.into_split();
            return Ok(Self::start(address, read_half, write_half, max_frame_bytes));
        };
        let name =
            raftmq_proto::tls::server_name(address).map_err(|e| ClientError::Tls(e.to_string()))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(tls));
        let stream = tokio::time::timeout(connect_timeout, connector.connect(name, stream))
            .await
            .map_err(|_| ClientError::Timeout(connect_timeout))?
            .map_err(|e| tls_failure(address, e))?;
        let (read_half, write_half) = tokio::io::split(stream);
        Ok(Self::start(address, read_half, write_half, max_frame_bytes))
    }

    fn start<R, W>(address: &str, read_half: R, write_half: W, max_frame_bytes: usize) -> Connection
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let shared = Arc::new(Shared {
            address: address.to_owned(),
            pending: Mutex::new(HashMap::new()),
            next_correlation_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            answered: AtomicBool::new(false),
        });
        let (writer, mut frames_rx) = mpsc::channel::<OutFrame>(WRITE_QUEUE_FRAMES);

        // Batches are written from the producer's buffers (vectored writes), not
        // copied into the frame.
        let mut sink = FrameWriter::new(write_half, max_frame_bytes);
        let write_shared = Arc::clone(&shared);
        tokio::spawn(async move {
            // Feed every frame already queued, then flush once: one syscall for a
            // burst of pipelined requests.
            while let Some(first) = frames_rx.recv().await {
                let mut result = sink.feed(first).await;
                while result.is_ok() {
                    match frames_rx.try_recv() {
                        Ok(next) => result = sink.feed(next).await,
                        Err(_) => break,
                    }
                }
                if result.is_ok() {
                    result = sink.flush().await;
                }
                if let Err(e) = result {
                    tracing::debug!(address = %write_shared.address, error = %e, "write failed");
                    break;
                }
            }
            write_shared.close();
        });

        let mut stream = FramedRead::new(read_half, frame::codec(max_frame_bytes));
        let read_shared = Arc::clone(&shared);
        tokio::spawn(async move {
            while let Some(item) = stream.next().await {
                let body = match item {
                    Ok(body) => body.freeze(),
                    Err(e) => {
                        tracing::debug!(address = %read_shared.address, error = %e, "read failed");
                        break;
                    }
                };
                let response = match frame::decode_response(body) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(address = %read_shared.address, error = %e, "bad response frame");
                        break;
                    }
                };
                read_shared.answered.store(true, Ordering::Release);
                match read_shared.take(response.correlation_id) {
                    Some(waiter) => {
                        let _ = waiter.send(Ok(response));
                    }
                    None => tracing::debug!(
                        correlation_id = response.correlation_id,
                        "answer to a request nobody waits for"
                    ),
                }
            }
            read_shared.close();
        });

        Connection { shared, writer }
    }

    /// Whether the connection has failed (a new one is needed).
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire) || self.writer.is_closed()
    }

    /// The broker's address.
    pub(crate) fn address(&self) -> &str {
        &self.shared.address
    }

    /// Logs in with SCRAM before the connection is used; a refusal is a
    /// `Server(AuthenticationFailed)` error (not retried), as is a broker that
    /// cannot prove it knows the credential.
    pub(crate) async fn login(
        &self,
        credentials: &crate::Credentials,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        use raftmq_proto::scram::ScramClient;
        let refused = |message: String| {
            ClientError::Server(raftmq_proto::ServerError::AuthenticationFailed { message })
        };
        let answer = |response: pb::Response| match (response.error, response.body) {
            (Some(e), _) => Err(ClientError::Server(e.into())),
            (None, Some(body)) => Ok(body),
            (None, None) => Err(ClientError::Protocol("an empty SASL answer".into())),
        };
        let handshake = pb::request::Body::SaslHandshake(pb::SaslHandshakeRequest {
            mechanism: credentials.mechanism.name().into(),
        });
        answer(self.call(handshake, timeout).await?)?;
        let mut scram = ScramClient::new(
            credentials.mechanism,
            &credentials.user,
            &credentials.password,
        )
        .map_err(|e| refused(e.to_string()))?;
        let mut message = scram.client_first();
        let mut first_done = false;
        loop {
            let request = pb::request::Body::SaslAuthenticate(pb::SaslAuthenticateRequest {
                auth_bytes: message.into(),
            });
            let pb::response::Body::SaslAuthenticate(step) =
                answer(self.call(request, timeout).await?)?
            else {
                return Err(ClientError::Protocol("not a SASL answer".into()));
            };
            if step.complete {
                return scram
                    .verify_server_final(&step.auth_bytes)
                    .map_err(|e| refused(e.to_string()));
            }
            if first_done {
                return Err(ClientError::Protocol(
                    "a SCRAM exchange of more than two steps".into(),
                ));
            }
            message = scram
                .client_final(&step.auth_bytes)
                .map_err(|e| refused(e.to_string()))?;
            first_done = true;
        }
    }

    /// Sends `body` and waits up to `timeout` for the answer (the raw response, with
    /// its error if any).
    pub(crate) async fn call(
        &self,
        body: pb::request::Body,
        timeout: Duration,
    ) -> Result<pb::Response, ClientError> {
        let started = tokio::time::Instant::now();
        let pending = self.send(body, timeout).await?;
        pending.answer(started + timeout).await
    }

    /// Queues `body` for the writer (waiting up to `timeout` for room) and returns
    /// the answer to come: requests sent one after another leave in that order.
    pub(crate) async fn send(
        &self,
        body: pb::request::Body,
        timeout: Duration,
    ) -> Result<PendingAnswer, ClientError> {
        let closed = || ClientError::ConnectionClosed(self.shared.address.clone());
        if self.is_closed() {
            return Err(closed());
        }
        let correlation_id = self
            .shared
            .next_correlation_id
            .fetch_add(1, Ordering::Relaxed);
        let frame = OutFrame::encode(&pb::Request::new(correlation_id, body));
        let (tx, rx) = oneshot::channel();
        self.shared
            .pending
            .lock()
            .map_err(|_| closed())?
            .insert(correlation_id, tx);
        let pending = PendingAnswer {
            shared: Arc::clone(&self.shared),
            correlation_id,
            rx,
            timeout,
        };
        // Closed between the check and the insert: close() may have run already.
        if self.is_closed() {
            return Err(closed());
        }
        tokio::time::timeout(timeout, self.writer.send(frame))
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
            .map_err(|_| closed())?;
        Ok(pending)
    }
}

/// The answer to a request written (or queued to be written) on a connection. Its
/// waiter is removed when it is dropped unanswered (a timeout, a caller gone).
pub(crate) struct PendingAnswer {
    shared: Arc<Shared>,
    correlation_id: u64,
    rx: oneshot::Receiver<Result<pb::Response, ClientError>>,
    /// The request's timeout, reported when `deadline` passes.
    timeout: Duration,
}

impl PendingAnswer {
    /// Waits for the answer until `deadline`.
    pub(crate) async fn answer(
        mut self,
        deadline: tokio::time::Instant,
    ) -> Result<pb::Response, ClientError> {
        let closed = ClientError::ConnectionClosed(self.shared.address.clone());
        match tokio::time::timeout_at(deadline, &mut self.rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(closed),
            Err(_) => Err(ClientError::Timeout(self.timeout)),
        }
    }
}

impl Drop for PendingAnswer {
    fn drop(&mut self) {
        let _ = self.shared.take(self.correlation_id);
    }
}

/// A failed TLS handshake: a certificate problem is not retriable and says so; a
/// connection reset during the handshake is an ordinary I/O error (retried).
fn tls_failure(address: &str, e: std::io::Error) -> ClientError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => ClientError::Tls(format!("TLS handshake with {address} failed: {tls}")),
        None => ClientError::from(e),
    }
}
