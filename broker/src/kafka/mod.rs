//! The Kafka listener: a second front door onto the same broker, for Kafka clients
//! and tools. Kafka topic = raftmq topic, partition = queue, offsets = queue
//! offsets, consumer groups = raftmq consumer groups, idempotent producers =
//! raftmq producer sessions. Every request becomes the same broker operations the
//! native port runs ([`crate::service`]); this module only translates wire types
//! and error codes (`docs/protocol.md`, "Kafka protocol").
//!
//! A connection reads requests in order, runs them concurrently and writes the
//! answers in request order (as Kafka clients require). An unknown API, a version
//! not advertised in `ApiVersions` or an undecodable request closes only that
//! connection, as a Kafka broker does.

mod convert;
mod data;
mod errors;
mod groups;
mod topics;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, RequestHeader, RequestKind, ResponseHeader, ResponseKind,
};
use kafka_protocol::protocol::{Decodable, Encodable};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use crate::metrics::BrokerMetrics;
use crate::service::Service;

pub use convert::{batches_for_native, fetch_for_native};

/// Requests one connection may have in flight (their answers queue in order).
const MAX_INFLIGHT_PER_CONNECTION: usize = 64;

/// The APIs served and their version ranges, as advertised by `ApiVersions`. Kept
/// below the versions that address topics by id (Fetch 13+, Produce 13) since
/// raftmq names topics.
/// Its name in metrics follows each range.
pub const SUPPORTED: &[(ApiKey, i16, i16, &str)] = &[
    (ApiKey::Produce, 3, 9, "produce"),
    (ApiKey::Fetch, 4, 12, "fetch"),
    (ApiKey::ListOffsets, 1, 7, "list_offsets"),
    (ApiKey::Metadata, 0, 12, "metadata"),
    (ApiKey::OffsetCommit, 2, 8, "offset_commit"),
    (ApiKey::OffsetFetch, 1, 7, "offset_fetch"),
    (ApiKey::FindCoordinator, 0, 4, "find_coordinator"),
    (ApiKey::JoinGroup, 0, 7, "join_group"),
    (ApiKey::Heartbeat, 0, 4, "heartbeat"),
    (ApiKey::LeaveGroup, 0, 4, "leave_group"),
    (ApiKey::SyncGroup, 0, 5, "sync_group"),
    (ApiKey::DescribeGroups, 0, 5, "describe_groups"),
    (ApiKey::ListGroups, 0, 4, "list_groups"),
    (ApiKey::ApiVersions, 0, 4, "api_versions"),
    (ApiKey::CreateTopics, 2, 7, "create_topics"),
    (ApiKey::DeleteTopics, 1, 5, "delete_topics"),
    (ApiKey::InitProducerId, 0, 4, "init_producer_id"),
    (ApiKey::DescribeConfigs, 1, 4, "describe_configs"),
    // After a v0 handshake the SASL messages come as bare frames, without a Kafka
    // request header (librdkafka requires v0 to be offered).
    (ApiKey::SaslHandshake, 0, 1, "sasl_handshake"),
    (ApiKey::SaslAuthenticate, 0, 2, "sasl_authenticate"),
];

fn supported(key: ApiKey, version: i16) -> bool {
    SUPPORTED
        .iter()
        .any(|&(k, min, max, _)| k == key && (min..=max).contains(&version))
}

/// The metrics name of a served API.
fn api_name(key: i16) -> &'static str {
    SUPPORTED
        .iter()
        .find(|(k, ..)| *k as i16 == key)
        .map_or("unknown", |(.., name)| name)
}

/// What every Kafka request handler shares.
#[derive(Debug)]
pub struct KafkaContext {
    service: Service,
    metrics: Arc<BrokerMetrics>,
    /// This node's Kafka port minus its native port: how a node that has not
    /// advertised its Kafka address yet is named (as if it used the same offset).
    port_offset: i32,
    /// What each group member was last given in SyncGroup (shared by every
    /// connection).
    assignments: Arc<groups::GivenAssignments>,
}

impl KafkaContext {
    /// A context over `service`, with this node's Kafka address `kafka` and native
    /// address `native`.
    pub fn new(
        service: Service,
        metrics: Arc<BrokerMetrics>,
        native: SocketAddr,
        kafka: SocketAddr,
    ) -> KafkaContext {
        KafkaContext {
            service,
            metrics,
            port_offset: i32::from(kafka.port()) - i32::from(native.port()),
            assignments: Arc::new(groups::GivenAssignments::default()),
        }
    }

    /// The same context, its operations acting for `principal`.
    fn for_principal(&self, principal: crate::security::Principal) -> KafkaContext {
        KafkaContext {
            service: self.service.for_principal(principal),
            metrics: self.metrics.clone(),
            port_offset: self.port_offset,
            assignments: self.assignments.clone(),
        }
    }

    /// The Kafka address (host, port) of `node`: the one it advertised, else its
    /// native address with this node's port offset (a node that has not
    /// advertised yet, or an older version).
    fn kafka_address(&self, node: &raftmq_proto::pb::NodeInfo) -> Option<(String, i32)> {
        if let Some((host, port)) = node.kafka_address.rsplit_once(':') {
            if let Ok(port) = port.parse::<u16>() {
                let host = host.trim_start_matches('[').trim_end_matches(']');
                return Some((host.to_owned(), i32::from(port)));
            }
        }
        let addr: SocketAddr = node.address.parse().ok()?;
        Some((
            addr.ip().to_string(),
            i32::from(addr.port()) + self.port_offset,
        ))
    }
}

/// The Kafka address this node advertises: `kafka_advertise`, else the Kafka port
/// on the first specific address of the Kafka listener or the native listener.
/// `None` when both are wildcards.
pub fn advertised_address(
    config: &crate::config::BrokerConfig,
    native: SocketAddr,
    kafka: SocketAddr,
) -> Option<String> {
    if let Some(advertise) = &config.kafka_advertise {
        return Some(advertise.clone());
    }
    let ip = [kafka.ip(), native.ip()]
        .into_iter()
        .find(|ip| !ip.is_unspecified())?;
    Some(SocketAddr::new(ip, kafka.port()).to_string())
}

/// Accepts Kafka connections until `shutdown`.
pub async fn serve(listener: TcpListener, context: Arc<KafkaContext>, shutdown: CancellationToken) {
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
                    context.clone(),
                    shutdown.clone(),
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "kafka accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// An answer on its way: `None` for a request that gets none (produce with acks=0);
/// a dropped sender closes the connection.
type Pending = oneshot::Receiver<Option<Bytes>>;

/// The TLS handshake (in the connection's own task), then the connection.
async fn accept_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    context: Arc<KafkaContext>,
    shutdown: CancellationToken,
) {
    let _slot = match context.service.security().admit_connection(peer.ip()) {
        Ok(slot) => slot,
        Err(why) => {
            crate::security::Security::log_refused_connection(peer, "kafka", &why);
            return;
        }
    };
    let accepted = tokio::select! {
        _ = shutdown.cancelled() => return,
        a = context.service.security().accept(tcp) => a,
    };
    let (stream, identity) = match accepted {
        Ok(accepted) => accepted,
        Err(e) => {
            tracing::info!(%peer, error = %e, "closing kafka connection: TLS handshake failed");
            return;
        }
    };
    match stream {
        crate::security::Stream::Plain(tcp) => {
            let (read, write) = tcp.into_split();
            serve_connection(read, write, peer, identity, context, shutdown).await
        }
        other => {
            let (read, write) = tokio::io::split(other);
            serve_connection(read, write, peer, identity, context, shutdown).await
        }
    }
}

async fn serve_connection<R, W>(
    read: R,
    write: W,
    peer: SocketAddr,
    identity: crate::security::CertificateIdentity,
    context: Arc<KafkaContext>,
    shutdown: CancellationToken,
) where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    context.metrics.connection_opened();
    let security = context.service.security();
    let mut session = security.session(&identity);
    let mut bare_sasl_frames = false;
    let mut acting = Arc::new(context.for_principal(crate::security::Principal::Anonymous));
    let codec = LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(context.service.config().max_frame_bytes)
        .new_codec();
    let mut reader = FramedRead::new(read, codec.clone());
    let (tx, rx) = mpsc::channel::<Pending>(MAX_INFLIGHT_PER_CONNECTION);
    let closed = CancellationToken::new();
    let writer = tokio::spawn(write_answers(
        FramedWrite::new(write, codec),
        rx,
        closed.clone(),
    ));
    // A connection that must log in has LOGIN_TIMEOUT to do it.
    let mut awaiting_login = session.principal().is_none();
    let login_timer = tokio::time::sleep(crate::security::login_guard::LOGIN_TIMEOUT);
    tokio::pin!(login_timer);
    loop {
        let frame = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = closed.cancelled() => break,
            _ = &mut login_timer, if awaiting_login => {
                tracing::info!(%peer, "closing kafka connection: no login within {:?}",
                    crate::security::login_guard::LOGIN_TIMEOUT);
                break;
            }
            f = reader.next() => f,
        };
        let frame = match frame {
            None => break,
            Some(Ok(frame)) => frame.freeze(),
            Some(Err(e)) => {
                tracing::info!(%peer, error = %e, "closing kafka connection: bad frame");
                break;
            }
        };
        let (answer, pending) = oneshot::channel();
        if tx.send(pending).await.is_err() {
            break;
        }
        if bare_sasl_frames {
            // A v0 handshake: this frame is a bare SASL message, and so is the answer.
            match session.authenticate(security.users(), &frame) {
                Ok(crate::security::SaslStep::Continue(bytes)) => {
                    let _ = answer.send(Some(Bytes::from(bytes)));
                }
                Ok(crate::security::SaslStep::Done(bytes)) => {
                    bare_sasl_frames = false;
                    awaiting_login = session.principal().is_none();
                    let _ = answer.send(Some(Bytes::from(bytes)));
                }
                Err(e) => {
                    tracing::info!(%peer, error = %e, "closing kafka connection: login failed");
                    if !matches!(e, crate::security::SaslError::NotReady) {
                        context.metrics.login_failures.increment(1);
                        security.login_guard().penalize(peer.ip()).await;
                    }
                    break;
                }
            }
            continue;
        }
        match decode(frame) {
            Ok((header, RequestKind::SaslHandshake(r))) => {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = security.login_guard().take_turn(peer.ip()) => {}
                }
                let key = Some(ApiKey::SaslHandshake);
                let mechanisms = session.mechanisms();
                let outcome = session.handshake(&r.mechanism);
                let mut response = kafka_protocol::messages::SaslHandshakeResponse::default();
                response.mechanisms = mechanisms.into_iter().map(|m| m.into()).collect();
                response.error_code = match &outcome {
                    Ok(()) => errors::code::NONE,
                    Err(crate::security::SaslError::UnsupportedMechanism(..)) => {
                        errors::code::UNSUPPORTED_SASL_MECHANISM
                    }
                    Err(_) => errors::code::ILLEGAL_SASL_STATE,
                };
                let bytes = encode(key, &header, ResponseKind::SaslHandshake(response)).ok();
                let _ = answer.send(bytes);
                bare_sasl_frames = outcome.is_ok() && header.request_api_version == 0;
                if let Err(e) = outcome {
                    tracing::info!(%peer, error = %e, "closing kafka connection: SASL handshake refused");
                    break;
                }
            }
            Ok((header, RequestKind::SaslAuthenticate(r))) => {
                let key = Some(ApiKey::SaslAuthenticate);
                let mut response = kafka_protocol::messages::SaslAuthenticateResponse::default();
                let outcome = session.authenticate(security.users(), &r.auth_bytes);
                match &outcome {
                    Ok(
                        crate::security::SaslStep::Continue(bytes)
                        | crate::security::SaslStep::Done(bytes),
                    ) => {
                        response.auth_bytes = Bytes::from(bytes.clone());
                    }
                    Err(e) => {
                        tracing::info!(%peer, error = %e, "closing kafka connection: login failed");
                        if !matches!(e, crate::security::SaslError::NotReady) {
                            context.metrics.login_failures.increment(1);
                            security.login_guard().penalize(peer.ip()).await;
                        }
                        response.error_code = match e {
                            crate::security::SaslError::IllegalState(_) => {
                                errors::code::ILLEGAL_SASL_STATE
                            }
                            _ => errors::code::SASL_AUTHENTICATION_FAILED,
                        };
                        response.error_message = Some(e.to_string().into());
                    }
                }
                let bytes = encode(key, &header, ResponseKind::SaslAuthenticate(response)).ok();
                let _ = answer.send(bytes);
                if outcome.is_err() {
                    break;
                }
                awaiting_login = session.principal().is_none();
            }
            Ok((header, request)) => {
                // ApiVersions comes before a login; anything else needs one (and a
                // user deleted since is refused).
                if !matches!(request, RequestKind::ApiVersions(_)) {
                    match session.admit(security.users()) {
                        Ok(principal) if acting.service.principal() != principal => {
                            // Logged in (once): from now on everything runs as that
                            // principal.
                            acting = Arc::new(context.for_principal(principal.clone()));
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::info!(%peer, error = %e.message, "closing kafka connection: not logged in");
                            break;
                        }
                    }
                }
                let context = &acting;
                let started = std::time::Instant::now();
                // A produce's batches are handed to their queues here, in the order
                // the requests came; only the answers are awaited concurrently.
                let mut throttle = std::time::Duration::ZERO;
                let request = match request {
                    RequestKind::Produce(r) => {
                        let bytes: u64 = r
                            .topic_data
                            .iter()
                            .flat_map(|t| &t.partition_data)
                            .map(|p| p.records.as_ref().map_or(0, |b| b.len() as u64))
                            .sum();
                        throttle = security
                            .quotas()
                            .charge_produce(context.service.principal(), bytes);
                        Begun::Produce(
                            data::produce_begin(context, r, header.request_api_version).await,
                        )
                    }
                    other => Begun::Other(other),
                };
                let context = context.clone();
                tokio::spawn(async move {
                    let key = ApiKey::try_from(header.request_api_key).ok();
                    let response = match request {
                        Begun::Produce(inflight) => Ok(inflight.finish().await.map(|mut r| {
                            // Kafka's quota signal: how long this client is muted.
                            r.throttle_time_ms =
                                i32::try_from(throttle.as_millis()).unwrap_or(i32::MAX);
                            ResponseKind::Produce(r)
                        })),
                        Begun::Other(request) => handle(&context, &header, request).await,
                    };
                    context.metrics.on_kafka_response(
                        header.request_api_key,
                        api_name(header.request_api_key),
                        started,
                    );
                    match response.map(|r| r.map(|r| encode(key, &header, r))) {
                        Ok(Some(Ok(bytes))) => {
                            if key == Some(ApiKey::Fetch) {
                                // Over the fetch quota: this answer, and with it
                                // every later one of the connection (they are written
                                // in order), waits until the principal is back
                                // within its rate.
                                let pause = context
                                    .service
                                    .security()
                                    .quotas()
                                    .charge_fetch(context.service.principal(), bytes.len() as u64);
                                if !pause.is_zero() {
                                    tokio::time::sleep(pause).await;
                                }
                            }
                            let _ = answer.send(Some(bytes));
                        }
                        Ok(None) => {
                            let _ = answer.send(None);
                        }
                        Ok(Some(Err(e))) => {
                            tracing::warn!(%peer, error = %e, "closing kafka connection: answer does not encode");
                        }
                        Err(why) => {
                            tracing::info!(%peer, api = header.request_api_key, version = header.request_api_version, "closing kafka connection: {why}");
                        }
                    }
                });
                if !throttle.is_zero() {
                    // Over its produce quota: nothing more is read from this client
                    // until it is back within its rate.
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(throttle) => {}
                    }
                }
            }
            Err(Undecodable::UnsupportedApiVersions(header)) => {
                // Kafka's rule: an ApiVersions request of a newer version than the
                // broker knows gets UNSUPPORTED_VERSION with the supported list, as v0.
                let mut response = api_versions();
                response.error_code = errors::code::UNSUPPORTED_VERSION;
                let mut header = header;
                header.request_api_version = 0;
                let _ = answer.send(
                    encode(
                        Some(ApiKey::ApiVersions),
                        &header,
                        ResponseKind::ApiVersions(response),
                    )
                    .ok(),
                );
            }
            Err(Undecodable::Other(why)) => {
                tracing::info!(%peer, "closing kafka connection: {why}");
                break;
            }
        }
    }
    drop(tx);
    let _ = writer.await;
    context.metrics.connection_closed();
}

/// A request as the reader hands it to its task.
enum Begun {
    Produce(data::ProduceInFlight),
    Other(RequestKind),
}

enum Undecodable {
    UnsupportedApiVersions(RequestHeader),
    Other(String),
}

fn decode(mut frame: Bytes) -> Result<(RequestHeader, RequestKind), Undecodable> {
    if frame.len() < 4 {
        return Err(Undecodable::Other("request shorter than its header".into()));
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let Ok(api) = ApiKey::try_from(key) else {
        return Err(Undecodable::Other(format!("unknown API key {key}")));
    };
    if api == ApiKey::ApiVersions && version > 4 {
        let header = RequestHeader::decode(&mut frame, 1)
            .map_err(|e| Undecodable::Other(format!("undecodable ApiVersions header: {e}")))?;
        return Err(Undecodable::UnsupportedApiVersions(header));
    }
    if !supported(api, version) {
        return Err(Undecodable::Other(format!(
            "{api:?} v{version} is not supported (see ApiVersions)"
        )));
    }
    let header = RequestHeader::decode(&mut frame, api.request_header_version(version))
        .map_err(|e| Undecodable::Other(format!("undecodable {api:?} header: {e}")))?;
    let request = RequestKind::decode(api, &mut frame, version)
        .map_err(|e| Undecodable::Other(format!("undecodable {api:?} v{version}: {e}")))?;
    Ok((header, request))
}

fn encode(
    key: Option<ApiKey>,
    header: &RequestHeader,
    response: ResponseKind,
) -> anyhow::Result<Bytes> {
    let key = key.ok_or_else(|| anyhow::anyhow!("unknown API key"))?;
    let version = header.request_api_version;
    let mut buf = BytesMut::with_capacity(64);
    let mut response_header = ResponseHeader::default();
    response_header.correlation_id = header.correlation_id;
    response_header.encode(&mut buf, key.response_header_version(version))?;
    response.encode(&mut buf, version)?;
    Ok(buf.freeze())
}

async fn write_answers<W: tokio::io::AsyncWrite + Unpin>(
    mut framed: FramedWrite<W, LengthDelimitedCodec>,
    mut rx: mpsc::Receiver<Pending>,
    closed: CancellationToken,
) {
    while let Some(pending) = rx.recv().await {
        let mut next = Some(pending);
        let mut result = Ok(());
        // Write every answer that is ready, then flush once.
        while let Some(pending) = next.take() {
            match pending.await {
                Ok(Some(bytes)) => result = framed.feed(bytes).await,
                Ok(None) => {}
                Err(_) => result = Err(std::io::Error::other("request refused")),
            }
            if result.is_err() {
                break;
            }
            next = rx.try_recv().ok();
        }
        if result.is_ok() {
            result = SinkExt::<Bytes>::flush(&mut framed).await;
        }
        if result.is_err() {
            break;
        }
    }
    closed.cancel();
}

/// Why a request closes its connection instead of being answered.
type Refusal = String;

async fn handle(
    context: &KafkaContext,
    header: &RequestHeader,
    request: RequestKind,
) -> Result<Option<ResponseKind>, Refusal> {
    let version = header.request_api_version;
    Ok(Some(match request {
        RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(api_versions()),
        RequestKind::Metadata(r) => {
            ResponseKind::Metadata(topics::metadata(context, r, version).await)
        }
        RequestKind::CreateTopics(r) => {
            ResponseKind::CreateTopics(topics::create_topics(context, r, version).await)
        }
        RequestKind::DeleteTopics(r) => {
            ResponseKind::DeleteTopics(topics::delete_topics(context, r).await)
        }
        RequestKind::DescribeConfigs(r) => {
            ResponseKind::DescribeConfigs(topics::describe_configs(context, r).await)
        }
        RequestKind::Fetch(r) => ResponseKind::Fetch(data::fetch(context, r).await),
        RequestKind::ListOffsets(r) => {
            ResponseKind::ListOffsets(data::list_offsets(context, r).await)
        }
        RequestKind::InitProducerId(r) => {
            ResponseKind::InitProducerId(data::init_producer_id(context, r).await)
        }
        RequestKind::FindCoordinator(r) => {
            ResponseKind::FindCoordinator(groups::find_coordinator(context, r, version).await)
        }
        RequestKind::JoinGroup(r) => ResponseKind::JoinGroup(groups::join_group(context, r).await),
        RequestKind::SyncGroup(r) => ResponseKind::SyncGroup(groups::sync_group(context, r).await),
        RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(groups::heartbeat(context, r).await),
        RequestKind::LeaveGroup(r) => {
            ResponseKind::LeaveGroup(groups::leave_group(context, r, version).await)
        }
        RequestKind::OffsetCommit(r) => {
            ResponseKind::OffsetCommit(groups::offset_commit(context, r).await)
        }
        RequestKind::OffsetFetch(r) => {
            ResponseKind::OffsetFetch(groups::offset_fetch(context, r).await)
        }
        RequestKind::ListGroups(r) => {
            ResponseKind::ListGroups(groups::list_groups(context, r).await)
        }
        RequestKind::DescribeGroups(r) => {
            ResponseKind::DescribeGroups(groups::describe_groups(context, r).await)
        }
        _ => return Err(format!("API key {} is not served", header.request_api_key)),
    }))
}

fn api_versions() -> ApiVersionsResponse {
    let mut response = ApiVersionsResponse::default();
    response.api_keys = SUPPORTED
        .iter()
        .map(|&(key, min, max, _)| {
            let mut v = ApiVersion::default();
            v.api_key = key as i16;
            v.min_version = min;
            v.max_version = max;
            v
        })
        .collect();
    response
}
