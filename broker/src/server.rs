//! Starting a broker and serving its TCP port (clients and peers share it).
//!
//! Each connection has a reader loop and a writer task. The reader decodes frames,
//! checks what can be checked without the node (frame size, protocol version,
//! names, the record batch's CRC and structure: that work spreads over connections
//! instead of weighing on the node task), then hands the request to the node. At most
//! `max_inflight_per_connection` requests per connection are outstanding; beyond that
//! the reader stops reading, and TCP pushes back on the client.
//!
//! Anything malformed closes only that connection, with a logged reason.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use prost::Message as _;
use raftmq_proto::frame_writer::{FrameWriter, OutFrame};
use raftmq_proto::pb::{self, ErrorCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::config::BrokerConfig;
use crate::data_dir_lock::DataDirLock;
use crate::directory::{GroupDirectory, METADATA_GROUP};
use crate::host::GroupOpener;
use crate::metrics::{self, Api, BrokerMetrics};
use crate::node::NodeInput;
use crate::raft_wire;
use crate::response::{Outgoing, Responder};
use crate::security::{CertificateIdentity, Security, Stream};
use crate::service::Service;

/// Responses written before one flush.
const WRITE_BATCH: usize = 256;

/// A client that reads nothing of its answers for this long is disconnected: a
/// queued fetch answer references the mapped log, and would keep a segment that
/// retention deleted on disk for as long as the client stalls. Its requests are
/// retried on a new connection when it reads again.
const WRITE_STALL: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs a write of the answers, failing it once the client has not read for
/// [`WRITE_STALL`].
async fn unless_stalled(
    write: impl std::future::Future<Output = std::io::Result<()>>,
) -> std::io::Result<()> {
    tokio::time::timeout(WRITE_STALL, write)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client read nothing for {WRITE_STALL:?}"),
            ))
        })
}

/// Why a broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be created.
    #[error("cannot create data dir {path}: {error}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// Another broker holds the data directory, or its lock file is unusable.
    #[error(transparent)]
    DataDirLock(#[from] crate::data_dir_lock::DataDirLockError),
    /// The hard state could not be read.
    #[error(transparent)]
    HardState(#[from] crate::hard_state::HardStateError),
    /// The data directory's identity file is unusable or names another node.
    #[error(transparent)]
    Identity(#[from] crate::cluster::IdentityError),
    /// The commit log could not be opened.
    #[error("cannot open the commit log: {0}")]
    Log(#[from] raftmq_store::StoreError),
    /// The log and the state-machine snapshots could not be reconciled.
    #[error("cannot restore the state machine: {0}")]
    Snapshots(#[from] crate::node::RecoverError),
    /// The Raft configuration is invalid.
    #[error("invalid raft configuration: {0}")]
    Raft(String),
    /// The listen address could not be bound.
    #[error(
        "cannot listen on {addr} ({flag}): {error}; stop the process that uses it or \
         choose another address"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The setting that names it (`--listen`, `--kafka-listen`).
        flag: &'static str,
        /// The I/O error.
        error: std::io::Error,
    },
    /// `RAFTMQ_BOOTSTRAP_USER` names an invalid user or password.
    #[error("bootstrap user: {0}")]
    BootstrapUser(#[from] crate::security::users::UserError),
    /// The TLS files are unusable.
    #[error("TLS: {0}")]
    Tls(#[from] raftmq_proto::tls::TlsError),
    /// The metrics address could not be bound.
    #[error("cannot serve metrics on {addr}: {error}")]
    MetricsBind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        error: std::io::Error,
    },
}

/// A running broker.
#[derive(Debug)]
pub struct Broker {
    /// The bound address.
    pub local_addr: SocketAddr,
    /// The bound address of the `/metrics` endpoint, when metrics are on.
    pub metrics_addr: Option<SocketAddr>,
    /// The bound address of the Kafka listener, when it is on.
    pub kafka_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    node: JoinHandle<()>,
    listener: JoinHandle<()>,
    security: Arc<Security>,
    /// Why the broker stopped by itself (a join the cluster refused for good).
    failure: Arc<std::sync::Mutex<Option<String>>>,
    /// The groups running here (to hand their leadership over before stopping).
    groups: Arc<GroupDirectory>,
}

impl Broker {
    /// Opens the data dir, recovers the log, binds the port and starts serving.
    pub async fn start(config: BrokerConfig) -> Result<Broker, StartError> {
        let mut config = config;
        let mut security = match &config.tls {
            Some(files) => Security::with_tls(files.clone())?,
            None => Security::plaintext(),
        };
        if config.require_login {
            // The bootstrap admin is a superuser: it exists to set up the others.
            let bootstrap = config.bootstrap_user.as_ref().map(|u| u.name.clone());
            security = security.requiring_login(config.superusers.iter().cloned().chain(bootstrap));
        }
        let security = Arc::new(security.with_limits(
            crate::security::quota::Quotas::new(
                config.produce_quota_bytes,
                config.fetch_quota_bytes,
            ),
            crate::security::quota::ConnectionLimits::new(
                config.max_connections,
                config.max_connections_per_ip,
            ),
        ));
        // Derived once here (PBKDF2 takes milliseconds): the node only proposes it.
        let bootstrap_user = match &config.bootstrap_user {
            Some(user) => {
                crate::security::users::validate_name(&user.name)?;
                let credentials = crate::security::users::derive_all(&user.password, 0)?;
                Some((user.name.clone(), credentials))
            }
            None => None,
        };
        // An existing data directory is locked before the port is bound: a broker
        // started twice is told the directory is in use (and by which process),
        // which says more than a busy port. A new one is created only once the
        // port is bound, so a broker that cannot listen leaves no empty directory
        // behind.
        let early_lock = if config.data_dir.is_dir() {
            Some(DataDirLock::acquire(&config.data_dir)?)
        } else {
            None
        };
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|error| StartError::Bind {
                    addr: config.listen,
                    flag: "--listen",
                    error,
                })?;
        let local_addr = listener.local_addr().map_err(|error| StartError::Bind {
            addr: config.listen,
            flag: "--listen",
            error,
        })?;
        std::fs::create_dir_all(&config.data_dir).map_err(|error| StartError::DataDir {
            path: config.data_dir.clone(),
            error,
        })?;
        // Before anything in the directory is read or written.
        let data_dir_lock = match early_lock {
            Some(lock) => lock,
            None => DataDirLock::acquire(&config.data_dir)?,
        };
        // Port 0 asks for an ephemeral port: record the real one.
        config.listen = local_addr;
        if config.peers.len() == 1 {
            config.peers.insert(config.node_id, local_addr);
        }
        let kafka_listener = match config.kafka_listen {
            Some(addr) => {
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|error| StartError::Bind {
                            addr,
                            flag: "--kafka-listen",
                            error,
                        })?,
                )
            }
            None => None,
        };
        let metrics_listener = match config.metrics_listen {
            Some(addr) => {
                let listener = metrics::http::bind(addr)
                    .await
                    .map_err(|error| StartError::MetricsBind { addr, error })?;
                let bound = listener
                    .local_addr()
                    .map_err(|error| StartError::MetricsBind { addr, error })?;
                Some((listener, bound))
            }
            None => None,
        };
        let broker_metrics = Arc::new(match metrics_listener {
            Some(_) => BrokerMetrics::enabled_for(config.node_id.0),
            None => BrokerMetrics::disabled(),
        });
        let identity =
            crate::cluster::NodeIdentity::load_or_create(&config.data_dir, config.node_id)?;
        let bootstrap = if config.join.is_empty() {
            crate::cluster::bootstrap_entry(&config.peers)
        } else {
            crate::cluster::bootstrap_entry(&std::collections::BTreeMap::new())
        };
        if security.tls().is_none() {
            let exposed = [Some(config.listen), config.kafka_listen]
                .into_iter()
                .flatten()
                .find(|a| !a.ip().is_loopback());
            if let Some(addr) = exposed {
                tracing::warn!(
                    %addr,
                    "listening beyond loopback without TLS (--insecure): anyone who can \
                     reach this port can read, write and delete everything and join the cluster"
                );
            }
        }
        let config = Arc::new(config);
        let shutdown = CancellationToken::new();
        let (directory, start_requests) = GroupDirectory::new();
        let groups = GroupOpener {
            config: config.clone(),
            local_addr,
            directory: directory.clone(),
            shutdown: shutdown.clone(),
            peer_links: crate::transport::PeerLinks::new(
                config.max_frame_bytes,
                security.clone(),
                shutdown.clone(),
            ),
        };
        let join = config.join.clone();
        // A new cluster's lowest-numbered first voter campaigns at once (the
        // others wait an election timeout), so the cluster has a leader about
        // 50 ms after its nodes start rather than 300-600 ms.
        let first_to_campaign =
            join.is_empty() && bootstrap.membership.voters.iter().min() == Some(&config.node_id);
        let mut metadata = groups
            .open(
                METADATA_GROUP,
                &config.data_dir,
                identity.clone(),
                bootstrap,
            )?
            .with_metrics(broker_metrics.clone())
            .with_users(
                security.users().clone(),
                security.acls().clone(),
                bootstrap_user,
            );
        tracing::info!(
            incarnation = %format!("{:016x}", identity.incarnation),
            cluster_id = %format!("{:016x}", identity.cluster_id),
            "data directory identity"
        );
        if first_to_campaign {
            metadata.campaign_soon_if_new();
        }
        let metadata = groups.spawn(METADATA_GROUP, metadata);
        // The supervisor owns the node tasks and the directory lock: the lock lives
        // as long as any node task, which own every file of the dir.
        let node = tokio::spawn(groups.supervise(start_requests, metadata, data_dir_lock));
        let mut metrics_addr = None;
        if let Some((metrics_listener, bound)) = metrics_listener {
            tracing::info!(addr = %bound, "serving metrics at /metrics");
            metrics_addr = Some(bound);
            tokio::spawn(metrics::http::serve(
                metrics_listener,
                broker_metrics.clone(),
                shutdown.clone(),
            ));
            tokio::spawn(broker_metrics.clone().run_upkeep(shutdown.clone()));
        }
        let failure = Arc::new(std::sync::Mutex::new(None));
        if !join.is_empty() {
            let joining = crate::join::run(
                join,
                crate::join::JoinRequest {
                    node_id: config.node_id,
                    address: local_addr,
                    incarnation: identity.incarnation,
                },
                security.clone(),
                shutdown.clone(),
            );
            let (failure, shutdown) = (failure.clone(), shutdown.clone());
            tokio::spawn(async move {
                // A node the cluster will never add has nothing to do: it stops,
                // and says why, instead of running as a member of nothing.
                if let Err(reason) = joining.await {
                    *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
                    shutdown.cancel();
                }
            });
        }
        let groups = directory.clone();
        let service = Service::new(directory, config, security.clone(), shutdown.clone());
        let mut kafka_addr = None;
        let mut kafka_advertised = None;
        if let Some(kafka_listener) = kafka_listener {
            let bound = kafka_listener
                .local_addr()
                .map_err(|error| StartError::Bind {
                    addr: local_addr,
                    flag: "--kafka-listen",
                    error,
                })?;
            tracing::info!(addr = %bound, "serving the Kafka protocol");
            kafka_addr = Some(bound);
            let context = Arc::new(crate::kafka::KafkaContext::new(
                service.clone(),
                broker_metrics.clone(),
                local_addr,
                bound,
            ));
            tokio::spawn(crate::kafka::serve(
                kafka_listener,
                context,
                shutdown.clone(),
            ));
            kafka_advertised =
                crate::kafka::advertised_address(service.config(), local_addr, bound);
            if kafka_advertised.is_none() {
                tracing::warn!(
                    "the Kafka listener and the broker both listen on a wildcard address: \
                     other nodes will derive this node's Kafka address; set --kafka-advertise"
                )
            }
        }
        tokio::spawn(advertise(
            service.clone(),
            pb::AdvertiseListenersRequest {
                node_id: service.config().node_id.0,
                kafka_address: kafka_advertised.unwrap_or_default(),
                rack: service.config().rack.clone().unwrap_or_default(),
            },
            shutdown.clone(),
        ));
        if security.tls().is_some() {
            tokio::spawn(watch_certificate_expiry(
                security.clone(),
                broker_metrics.clone(),
                shutdown.clone(),
            ));
        }
        let listener = tokio::spawn(accept_loop(
            listener,
            service,
            broker_metrics,
            shutdown.clone(),
        ));
        Ok(Broker {
            local_addr,
            metrics_addr,
            kafka_addr,
            shutdown,
            node,
            listener,
            security,
            failure,
            groups,
        })
    }

    /// The broker's transport security (to reload its certificates).
    pub fn security(&self) -> Arc<Security> {
        self.security.clone()
    }

    /// Stops accepting, closes connections, lets the node sync and stop.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.listener.await;
        let _ = self.node.await;
    }

    /// The groups running here: [`GroupDirectory::hand_over`] before a planned
    /// stop moves their leadership to other nodes first.
    pub fn groups(&self) -> Arc<GroupDirectory> {
        self.groups.clone()
    }

    /// A token that stops the broker when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the broker has stopped (after its token was cancelled, or by
    /// itself); `Err` says why it stopped by itself.
    pub async fn wait(self) -> Result<(), String> {
        let _ = self.listener.await;
        let _ = self.node.await;
        match self
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    service: Service,
    metrics: Arc<BrokerMetrics>,
    shutdown: CancellationToken,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                connections.spawn(accept_connection(
                    stream,
                    peer,
                    service.clone(),
                    metrics.clone(),
                    shutdown.clone(),
                ));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    // Close every group's inbox: each node task answers what it still holds (those
    // answers end the connections' writers) and stops; requests read from now on
    // are answered "shutting down".
    service.directory().close();
    while connections.join_next().await.is_some() {}
}

/// Keeps the certificate-expiry gauge current (certificates reload on SIGHUP).
async fn watch_certificate_expiry(
    security: Arc<Security>,
    metrics: Arc<BrokerMetrics>,
    shutdown: CancellationToken,
) {
    let Some(tls) = security.tls() else { return };
    loop {
        metrics.tls_expiry.set(tls.not_after() as f64);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
        }
    }
}

/// The TLS handshake (in the connection's own task, so a slow one holds up no
/// other), then the connection.
async fn accept_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    service: Service,
    metrics: Arc<BrokerMetrics>,
    shutdown: CancellationToken,
) {
    let _slot = match service.security().admit_connection(peer.ip()) {
        Ok(slot) => slot,
        Err(why) => {
            crate::security::Security::log_refused_connection(peer, "native", &why);
            return;
        }
    };
    let accepted = tokio::select! {
        _ = shutdown.cancelled() => return,
        a = service.security().accept(tcp) => a,
    };
    let (stream, identity) = match accepted {
        Ok(accepted) => accepted,
        Err(e) => {
            tracing::info!(%peer, error = %e, "closing connection: TLS handshake failed");
            return;
        }
    };
    let connection = Connection {
        peer,
        identity,
        service,
        metrics,
        shutdown,
    };
    match stream {
        // The owned halves of a TCP stream need no lock between reader and writer.
        Stream::Plain(tcp) => {
            let (read, write) = tcp.into_split();
            connection.serve(read, write).await
        }
        other => {
            let (read, write) = tokio::io::split(other);
            connection.serve(read, write).await
        }
    }
}

/// One accepted connection and who it is.
struct Connection {
    peer: SocketAddr,
    identity: CertificateIdentity,
    service: Service,
    metrics: Arc<BrokerMetrics>,
    shutdown: CancellationToken,
}

impl Connection {
    async fn serve<R, W>(self, read: R, write: W)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            peer,
            identity,
            service,
            metrics,
            shutdown,
        } = self;
        let config = service.config();
        let directory = service.directory();
        let security = service.security();
        let may_act_as_node = security.is_node(&identity);
        let mut session = security.session(&identity);
        let mut acting = service.for_principal(crate::security::Principal::Anonymous);
        metrics.connection_opened();
        let codec = raftmq_proto::frame::codec(config.max_frame_bytes);
        let mut reader = FramedRead::new(read, codec);
        let (tx, rx) = mpsc::unbounded_channel::<Outgoing>();
        // Who the answers are for, for the fetch quota (set once logged in).
        let reader_principal =
            Arc::new(std::sync::Mutex::new(crate::security::Principal::Anonymous));
        let writer = tokio::spawn(write_responses(
            // Fetched batches are written from the mapped log (vectored writes),
            // not copied into the frame.
            FrameWriter::new(write, config.max_frame_bytes),
            rx,
            FetchQuota {
                security: service.security_arc(),
                principal: reader_principal.clone(),
            },
        ));
        let permits = Arc::new(Semaphore::new(config.max_inflight_per_connection));
        // The nodes whose Raft messages this connection carried (one, normally: a
        // node's groups share its link): every group is told when it closes, so that
        // idle followers notice a dead leader at once.
        let mut peer_nodes: Vec<crate::raft::NodeId> = Vec::new();
        // When this connection last told the failure detector it heard its peer.
        let mut liveness_noted: Option<std::time::Instant> = None;
        // A connection that must log in has LOGIN_TIMEOUT to do it (or to show
        // itself a node by what it sends).
        let mut awaiting_login = session.principal().is_none();
        let login_timer = tokio::time::sleep(crate::security::login_guard::LOGIN_TIMEOUT);
        tokio::pin!(login_timer);
        loop {
            let frame = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = &mut login_timer, if awaiting_login => {
                    tracing::info!(%peer, "closing connection: no login within {:?}",
                        crate::security::login_guard::LOGIN_TIMEOUT);
                    break;
                }
                f = reader.next() => f,
            };
            let frame = match frame {
                None => break,
                Some(Ok(frame)) => frame.freeze(),
                Some(Err(e)) => {
                    tracing::info!(%peer, error = %e, "closing connection: bad frame");
                    break;
                }
            };
            let request = match pb::Request::decode(frame) {
                Ok(request) => request,
                Err(e) => {
                    tracing::info!(%peer, error = %e, "closing connection: undecodable request");
                    break;
                }
            };
            let started = std::time::Instant::now();
            let Some(body) = request.body else {
                let reply = Responder::new(request.correlation_id, tx.clone(), None).observed(
                    &metrics,
                    Api::Unknown,
                    started,
                    0,
                );
                reply.error(pb::Error::new(
                    ErrorCode::InvalidRequest,
                    "unknown or missing API key",
                ));
                continue;
            };
            if let pb::request::Body::Raft(msg) = body {
                if !may_act_as_node {
                    tracing::warn!(
                        %peer, ?identity,
                        "closing connection: a Raft message without a cluster certificate"
                    );
                    break;
                }
                awaiting_login = false;
                let group = msg.group_id;
                match raft_wire::from_pb(msg) {
                    Ok(msg) => {
                        if liveness_noted.is_none_or(|t| {
                            started.saturating_duration_since(t) >= LIVENESS_NOTE_INTERVAL
                        }) {
                            liveness_noted = Some(started);
                            let from = msg.0.from();
                            if directory.liveness().heard(from, started) {
                                tracing::debug!(peer = from.0, "node heard from again");
                                directory.tell_all(|| NodeInput::PeerReachable(from));
                            }
                        }
                        if matches!(msg.0, raft_wire::PeerMessage::Ping { .. }) {
                            continue;
                        }
                        let from = msg.0.from();
                        if !peer_nodes.contains(&from) && peer_nodes.len() < MAX_PEERS_NOTED {
                            peer_nodes.push(from);
                        }
                        // A group not started here yet (its creation not applied by
                        // this node's metadata group): Raft retries.
                        let Some(inbox) = directory.inbox(group) else {
                            tracing::trace!(%peer, group, "message for a group not running here");
                            continue;
                        };
                        if inbox.send(NodeInput::Peer(msg)).await.is_err() {
                            // The group stopped here (shutdown, or a retired replica):
                            // the connection serves the other groups still.
                            tracing::trace!(%peer, group, "message for a group that stopped");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "closing connection: bad raft message");
                        break;
                    }
                }
                continue;
            }
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let request_bytes = match &body {
                pb::request::Body::Produce(req) => req.batch.len() as u64,
                pb::request::Body::ProduceMany(req) => {
                    req.parts.iter().map(|p| p.batch.len() as u64).sum()
                }
                _ => 0,
            };
            let reply = Responder::new(request.correlation_id, tx.clone(), Some(permit)).observed(
                &metrics,
                Api::of(&body),
                started,
                request_bytes,
            );
            let reply = match &body {
                pb::request::Body::Produce(req) => reply.for_topic(&req.topic),
                pb::request::Body::Fetch(req) => reply.for_topic(&req.topic),
                _ => reply,
            };
            if request.api_version > 1 {
                reply.error(pb::Error::new(
                    ErrorCode::UnsupportedVersion,
                    format!(
                        "api version {} is not supported (max 1)",
                        request.api_version
                    ),
                ));
                continue;
            }
            if let Err(e) = precheck(&body, config) {
                reply.error(e);
                continue;
            }
            let body = match body {
                pb::request::Body::SaslHandshake(_) | pb::request::Body::SaslAuthenticate(_) => {
                    if matches!(body, pb::request::Body::SaslHandshake(_)) {
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = security.login_guard().take_turn(peer.ip()) => {}
                        }
                    }
                    match login_step(&mut session, security, body) {
                        Ok(answer) => {
                            awaiting_login = session.principal().is_none();
                            reply.ok(answer)
                        }
                        Err(e) => {
                            tracing::info!(%peer, error = %e, "closing connection: login failed");
                            if !matches!(e, crate::security::SaslError::NotReady) {
                                metrics.login_failures.increment(1);
                                // A failed login costs the client time: guessing is slow.
                                security.login_guard().penalize(peer.ip()).await;
                            }
                            reply.error(e.to_pb());
                            break;
                        }
                    }
                    continue;
                }
                body => body,
            };
            if is_node_only(&body) || !request.on_behalf_of.is_empty() {
                // From another node: its own request, or a client's it forwards to
                // the leader, authorized here as that client's user.
                if !may_act_as_node {
                    reply.error(pb::Error::new(
                        ErrorCode::ClusterAuthorizationFailed,
                        format!(
                            "{} is for cluster nodes: connect with a certificate signed \
                             by the cluster CA",
                            if request.on_behalf_of.is_empty() {
                                body.api_key().to_string()
                            } else {
                                "a forwarded request".to_string()
                            }
                        ),
                    ));
                    continue;
                }
                awaiting_login = false;
                let principal = if !request.on_behalf_of.is_empty() {
                    crate::security::Principal::User(request.on_behalf_of)
                } else {
                    match &identity {
                        crate::security::CertificateIdentity::Node(name) => {
                            crate::security::Principal::Node(name.clone())
                        }
                        // No TLS: a node cannot be told from a client (documented).
                        _ => crate::security::Principal::Node(peer.to_string()),
                    }
                };
                if !service.for_principal(principal).submit(body, reply).await {
                    break;
                }
                continue;
            }
            match session.admit(security.users()) {
                Ok(principal) if acting.principal() != principal => {
                    // Logged in (once): from now on everything runs as that principal.
                    *reader_principal.lock().unwrap_or_else(|e| e.into_inner()) = principal.clone();
                    acting = service.for_principal(principal.clone());
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::info!(%peer, error = %e.message, "closing connection: not logged in");
                    reply.error(e);
                    break;
                }
            }
            let body = match body {
                pb::request::Body::UpsertUser(req) if !req.password.is_empty() => {
                    match credentials_for(req).await {
                        Ok(req) => pb::request::Body::UpsertUser(req),
                        Err(e) => {
                            reply.error(e);
                            continue;
                        }
                    }
                }
                body => body,
            };
            let accepted = match body {
                pb::request::Body::ProduceMany(many) => {
                    submit_parts(&acting, many, reply, config, &metrics, started).await
                }
                pb::request::Body::FetchMany(many) if many.parts.len() > MAX_FETCH_PARTS => {
                    reply.error(pb::Error::new(
                        ErrorCode::InvalidRequest,
                        format!(
                            "a multi-queue fetch of {} queues: at most {MAX_FETCH_PARTS} per request",
                            many.parts.len()
                        ),
                    ));
                    true
                }
                pb::request::Body::FetchMany(mut many) => {
                    // Its own task: the long poll must not hold up the requests
                    // that follow on the connection.
                    let service = acting.clone();
                    let max_wait = u64::from(many.max_wait_ms).min(config.max_fetch_wait_ms) as u32;
                    // The answer fits a frame; no part reads more than it may carry.
                    let budget = many
                        .max_bytes
                        .min(u32::try_from(config.max_frame_bytes / 2).unwrap_or(u32::MAX))
                        .max(1);
                    many.max_bytes = budget;
                    for part in &mut many.parts {
                        part.max_bytes = part.max_bytes.min(budget);
                    }
                    let metrics = Arc::clone(&metrics);
                    tokio::spawn(async move {
                        let results = crate::fetch_many::fetch_many(
                            &service,
                            &many.parts,
                            max_wait,
                            many.min_bytes,
                        )
                        .await;
                        let answer = crate::fetch_many::native_answer(results, many.max_bytes);
                        metrics.on_fetch_many(&many.parts, &answer);
                        reply.ok(pb::response::Body::FetchMany(answer));
                    });
                    true
                }
                body => acting.submit(body, reply).await,
            };
            if !accepted {
                break;
            }
            if request_bytes > 0 {
                // Over its produce quota: the connection is muted (nothing more is
                // read from it) until the principal is back within its rate.
                let pause = security
                    .quotas()
                    .charge_produce(acting.principal(), request_bytes);
                if !pause.is_zero() {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
        for from in peer_nodes {
            // Never waits: a full inbox is a busy group, not an idle one.
            directory.tell_all(|| NodeInput::PeerLinkClosed(from));
            directory.liveness().lost(from);
        }
        // The writer ends once every answer is written: the node tasks hold the
        // responders of what they still work on.
        drop(tx);
        let _ = writer.await;
        metrics.connection_closed();
    }
}

/// A busy peer connection tells the failure detector at most this often.
const LIVENESS_NOTE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);

/// Sending nodes noted per connection (a peer's connection carries its own
/// messages only; the bound keeps a misbehaving one cheap).
const MAX_PEERS_NOTED: usize = 16;

/// One SASL request on the native protocol.
fn login_step(
    session: &mut crate::security::Session,
    security: &Security,
    body: pb::request::Body,
) -> Result<pb::response::Body, crate::security::SaslError> {
    use crate::security::SaslStep;
    match body {
        pb::request::Body::SaslHandshake(req) => {
            let mechanisms = session.mechanisms();
            session.handshake(&req.mechanism)?;
            Ok(pb::response::Body::SaslHandshake(
                pb::SaslHandshakeResponse { mechanisms },
            ))
        }
        pb::request::Body::SaslAuthenticate(req) => {
            let (bytes, complete) = match session.authenticate(security.users(), &req.auth_bytes)? {
                SaslStep::Continue(bytes) => (bytes, false),
                SaslStep::Done(bytes) => (bytes, true),
            };
            let principal = match (complete, session.principal()) {
                (true, Some(p)) => p.to_string(),
                _ => String::new(),
            };
            Ok(pb::response::Body::SaslAuthenticate(
                pb::SaslAuthenticateResponse {
                    auth_bytes: bytes.into(),
                    complete,
                    principal,
                },
            ))
        }
        _ => Err(crate::security::SaslError::IllegalState(
            "not a SASL request",
        )),
    }
}

/// Turns the password of an `UpsertUser` into SCRAM credentials (off the async
/// workers: PBKDF2 takes milliseconds); the password goes no further.
async fn credentials_for(
    mut req: pb::UpsertUserRequest,
) -> Result<pb::UpsertUserRequest, pb::Error> {
    let password = std::mem::take(&mut req.password);
    let iterations = req.iterations;
    let derived = tokio::task::spawn_blocking(move || {
        crate::security::users::derive_all(&password, iterations)
    })
    .await
    .map_err(|e| pb::Error::new(ErrorCode::InvalidRequest, e.to_string()))?
    .map_err(|e| pb::Error::new(ErrorCode::InvalidRequest, e.to_string()))?;
    req.credentials = crate::security::users::credentials_to_pb(&derived);
    Ok(req)
}

/// Requests only another node sends (joining, advertising its listeners).
fn is_node_only(body: &pb::request::Body) -> bool {
    matches!(
        body,
        pb::request::Body::JoinCluster(_) | pb::request::Body::AdvertiseListeners(_)
    )
}

/// Most queues one multi-queue fetch may read.
const MAX_FETCH_PARTS: usize = 100_000;

/// Hands each part of a multi-queue produce over as a produce of its own, in order
/// (so a queue's batches reach its group in the order sent); the envelope is
/// answered once every part is. False once the broker is shutting down.
async fn submit_parts(
    service: &Service,
    many: pb::ProduceManyRequest,
    envelope: Responder,
    config: &BrokerConfig,
    metrics: &Arc<crate::metrics::BrokerMetrics>,
    started: std::time::Instant,
) -> bool {
    let replies = Responder::parts(envelope, many.parts.len());
    let mut checked = Vec::with_capacity(many.parts.len());
    for (part, reply) in many.parts.into_iter().zip(replies) {
        let reply = reply
            .observed(metrics, Api::Produce, started, part.batch.len() as u64)
            .for_topic(&part.topic);
        let body = pb::request::Body::Produce(part);
        match precheck(&body, config) {
            Ok(()) => checked.push((body, reply)),
            Err(e) => reply.error(e),
        }
    }
    service.submit_all(checked).await
}

/// Checks that need no state: names, sizes, the batch's CRC and structure.
fn precheck(body: &pb::request::Body, config: &BrokerConfig) -> Result<(), pb::Error> {
    use pb::request::Body as B;
    let name = |n: &str| {
        raftmq_proto::frame::validate_name(n)
            .map_err(|e| pb::Error::new(ErrorCode::InvalidRequest, e.to_string()))
    };
    match body {
        B::Produce(req) => {
            name(&req.topic)?;
            if req.batch.len() > config.max_batch_bytes {
                return Err(pb::Error::new(
                    ErrorCode::MessageTooLarge,
                    format!(
                        "batch of {} bytes exceeds the broker's limit of {} bytes: send \
                         smaller batches (the producer's max_batch_bytes) or raise the \
                         brokers' --max-batch-bytes",
                        req.batch.len(),
                        config.max_batch_bytes
                    ),
                ));
            }
            raftmq_proto::batch::validate(&req.batch)
                .map_err(|e| pb::Error::new(ErrorCode::CorruptBatch, e.to_string()))?;
        }
        B::Fetch(req) => name(&req.topic)?,
        B::CreateTopic(req) => name(&req.name)?,
        B::DeleteTopic(req) => name(&req.name)?,
        B::ListOffsets(req) => name(&req.topic)?,
        B::OffsetCommit(req) => {
            name(&req.group)?;
            for o in &req.offsets {
                name(&o.topic)?;
            }
        }
        B::OffsetFetch(req) => name(&req.group)?,
        _ => {}
    }
    Ok(())
}

/// What the writer needs to hold back fetched data over the principal's quota.
struct FetchQuota {
    security: Arc<Security>,
    principal: Arc<std::sync::Mutex<crate::security::Principal>>,
}

impl FetchQuota {
    /// Encodes an answer; a fetch's bytes are charged to the principal, and the
    /// pause it owes is added to `pause`.
    fn encode(&self, response: &pb::Response, pause: &mut std::time::Duration) -> OutFrame {
        let frame = OutFrame::encode(response);
        if matches!(
            response.body,
            Some(pb::response::Body::Fetch(_) | pb::response::Body::FetchMany(_))
        ) {
            let principal = self
                .principal
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            *pause += self
                .security
                .quotas()
                .charge_fetch(&principal, frame.body_len() as u64);
        }
        frame
    }
}

async fn write_responses<W: AsyncWrite + Unpin>(
    mut framed: FrameWriter<W>,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    quota: FetchQuota,
) {
    let mut pause = std::time::Duration::ZERO;
    while let Some((mut response, permit)) = rx.recv().await {
        if !pause.is_zero() {
            // Over the fetch quota: hold the next answers back.
            tokio::time::sleep(std::mem::take(&mut pause)).await;
        }
        crate::kafka::fetch_for_native(&mut response);
        let mut result = unless_stalled(framed.feed(quota.encode(&response, &mut pause))).await;
        drop(permit);
        let mut fed = 1;
        while result.is_ok() && fed < WRITE_BATCH && pause.is_zero() {
            match rx.try_recv() {
                Ok((mut response, permit)) => {
                    crate::kafka::fetch_for_native(&mut response);
                    result = unless_stalled(framed.feed(quota.encode(&response, &mut pause))).await;
                    drop(permit);
                    fed += 1;
                }
                Err(_) => break,
            }
        }
        if result.is_ok() {
            result = unless_stalled(framed.flush()).await;
        }
        if let Err(e) = result {
            if e.kind() == std::io::ErrorKind::TimedOut {
                tracing::info!(error = %e, "closing a connection whose client stopped reading");
            }
            break;
        }
    }
}

/// Records what this node says of itself (its Kafka address, its rack; empty for
/// none) in the metadata group through its leader, retrying until it is recorded
/// or the broker stops. Every node does it at start, so a rack or a Kafka listener
/// dropped from the configuration is forgotten too.
async fn advertise(
    service: Service,
    advertised: pb::AdvertiseListenersRequest,
    shutdown: CancellationToken,
) {
    let body = pb::request::Body::AdvertiseListeners(advertised.clone());
    let mut delay = std::time::Duration::from_millis(100);
    loop {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = service.call_at_leader(body.clone()) => r,
        };
        match outcome {
            Ok(_) => {
                tracing::info!(
                    kafka_address = %advertised.kafka_address,
                    rack = %advertised.rack,
                    "advertised to the cluster"
                );
                return;
            }
            Err(f) => {
                tracing::debug!(error = %f.error.message, "advertising this node; retrying")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(std::time::Duration::from_secs(5));
    }
}
