//! [`Client`]: connections to the brokers, a metadata cache, and request routing to
//! the leader with redirects and bounded retries.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftmq_proto::pb::ErrorCode;
use raftmq_proto::pb::{self, request, response};
use raftmq_proto::{frame, ServerError};

use crate::conn::Connection;
use crate::retry::{names_leader, RetryState};
use crate::ClientError;

/// Connection and retry settings, shared by everything built on a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Longest wait for one answer. Default 30 s (a quorum produce on a slow disk
    /// or a leader election must fit; long-poll fetches add their `max_wait`).
    pub request_timeout: Duration,
    /// Longest wait for a TCP connection. Default 5 s.
    pub connect_timeout: Duration,
    /// How long a request (or a produce batch) keeps retrying retriable failures
    /// (not leader, not ready, connection refused or reset, timeouts, busy) before
    /// giving up: longer than an election under load or a node restart, so a
    /// rolling restart of the cluster is invisible. Default 30 s.
    pub retry_timeout: Duration,
    /// An extra cap on attempts after the first. Default: none (`u32::MAX`), the
    /// `retry_timeout` deadline decides.
    pub max_retries: u32,
    /// First backoff between retries; doubled each time up to `retry_backoff_max`,
    /// each wait drawn from the upper half of its value (jitter). Default 50 ms.
    pub retry_backoff: Duration,
    /// Largest backoff. Default 1 s.
    pub retry_backoff_max: Duration,
    /// Largest frame accepted from a broker or sent to one. Default 16 MiB.
    pub max_frame_bytes: usize,
    /// Connect over TLS (default: plaintext).
    pub tls: Option<ClientTls>,
    /// Log in with a user name and password (default: no login).
    pub credentials: Option<Credentials>,
}

/// A user name and password, and the SCRAM mechanism to log in with.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub user: String,
    /// Password (never sent: SCRAM proves it).
    pub password: String,
    /// SCRAM-SHA-512 unless chosen otherwise.
    pub mechanism: raftmq_proto::scram::Mechanism,
}

impl Credentials {
    /// SCRAM-SHA-512 credentials.
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials {
            user: user.into(),
            password: password.into(),
            mechanism: raftmq_proto::scram::Mechanism::ScramSha512,
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("mechanism", &self.mechanism)
            .finish_non_exhaustive()
    }
}

/// TLS settings of a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// The CA that signed the brokers' certificates (the cluster CA), PEM.
    pub ca: std::path::PathBuf,
    /// A client certificate chain (PEM) to log in with, and its key.
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            retry_timeout: Duration::from_secs(30),
            max_retries: u32::MAX,
            retry_backoff: Duration::from_millis(50),
            retry_backoff_max: Duration::from_secs(1),
            max_frame_bytes: frame::DEFAULT_MAX_FRAME_BYTES,
            tls: None,
            credentials: None,
        }
    }
}

impl ClientConfig {
    /// The backoff before retry number `attempt` (0-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.min(16);
        self.retry_backoff
            .saturating_mul(factor)
            .min(self.retry_backoff_max)
    }
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The leader of the metadata group (topics, consumer groups, offsets, the
    /// cluster), found through metadata and `NotLeader` redirects.
    Leader,
    /// The leader of a data group (the queues placed on it): see
    /// [`Client::queue_target`].
    Group(u32),
    /// A node by id (its address from metadata).
    Node(u64),
    /// A broker by address (host:port).
    Address(String),
}

/// Where a retried request goes: a fixed target, or the leader of a queue's group
/// (looked up again before each attempt).
enum Route<'a> {
    Fixed(Target),
    Queue(&'a str, u32),
}

/// What the client knows about the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterMetadata {
    /// Node id to client address.
    pub nodes: BTreeMap<u64, String>,
    /// Node id to the rack (failure domain) the node named, for those that did.
    pub racks: BTreeMap<u64, String>,
    /// The leader's id, when known.
    pub leader_id: Option<u64>,
    /// Topic name to queue count.
    pub topics: BTreeMap<String, u32>,
    /// The cluster's id.
    pub cluster_id: u64,
    /// Topic name to the Raft group of each queue (absent or empty: every queue is
    /// in the metadata group).
    pub queue_groups: BTreeMap<String, Vec<u32>>,
    /// Data group to its leader's node id, as the answering broker saw it.
    pub group_leaders: BTreeMap<u32, u64>,
    /// Data group to its placed replicas (preferred leader first).
    pub group_replicas: BTreeMap<u32, Vec<u64>>,
}

impl ClusterMetadata {
    /// The Raft group holding `queue` of `topic` (0, the metadata group, when the
    /// topic's queues are not spread or the topic is unknown).
    pub fn group_of(&self, topic: &str, queue: u32) -> u32 {
        self.queue_groups
            .get(topic)
            .and_then(|g| g.get(queue as usize).copied())
            .unwrap_or(0)
    }
}

struct Cache {
    metadata: ClusterMetadata,
    /// Each group's leader address (group 0: the metadata leader): from metadata or
    /// a `NotLeader` redirect.
    leaders: BTreeMap<u32, String>,
    /// A broker said a queue is not where the cached metadata puts it: look again
    /// before the next queue request.
    stale: bool,
}

struct Inner {
    config: ClientConfig,
    /// Built once from `config.tls`.
    tls: Option<Arc<raftmq_proto::tls::rustls::ClientConfig>>,
    bootstrap: Vec<String>,
    /// One slot per broker address; each slot's lock is held while connecting, so a
    /// slow connect to one broker never delays requests to another.
    connections: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Connection>>>>>,
    cache: Mutex<Cache>,
    /// Bumped on every metadata update, so that holders of derived facts (the
    /// producer's queue counts) know when to look again.
    metadata_generation: AtomicU64,
    /// The cluster id of the first metadata answer that carried one (0: none yet).
    cluster_id: AtomicU64,
    /// Turns over the replicas asked for a group whose leader is unknown.
    turn: AtomicU64,
    /// One produce lane per broker address and group (see `lane.rs`).
    lanes: Mutex<HashMap<(String, u32), Arc<crate::lane::ProduceLane>>>,
}

/// A handle to a raftmq cluster. Cheap to clone; clones share connections and
/// metadata. Holds one multiplexed, pipelined connection per broker, opened on first
/// use and reopened after a failure.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("bootstrap", &self.inner.bootstrap)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects with the default [`ClientConfig`]: asks the bootstrap brokers
    /// (host:port) for metadata until one answers (retrying, within
    /// [`retry_timeout`](ClientConfig::retry_timeout), while none can: a cluster
    /// that is starting or electing a leader).
    pub async fn connect(bootstrap: &[impl ToString]) -> Result<Client, ClientError> {
        Self::connect_with(bootstrap, ClientConfig::default()).await
    }

    /// Connects with `config`.
    pub async fn connect_with(
        bootstrap: &[impl ToString],
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        let bootstrap: Vec<String> = bootstrap.iter().map(ToString::to_string).collect();
        if bootstrap.is_empty() {
            return Err(ClientError::InvalidArgument(
                "no bootstrap broker given".into(),
            ));
        }
        let tls = match &config.tls {
            Some(tls) => Some(
                raftmq_proto::tls::client_config(
                    &tls.ca,
                    tls.identity
                        .as_ref()
                        .map(|(c, k)| (c.as_path(), k.as_path())),
                )
                .map_err(|e| ClientError::Tls(e.to_string()))?,
            ),
            None => None,
        };
        let client = Client {
            inner: Arc::new(Inner {
                tls,
                config,
                bootstrap,
                connections: Mutex::new(HashMap::new()),
                cache: Mutex::new(Cache {
                    metadata: ClusterMetadata::default(),
                    leaders: BTreeMap::new(),
                    stale: false,
                }),
                metadata_generation: AtomicU64::new(0),
                cluster_id: AtomicU64::new(0),
                turn: AtomicU64::new(0),
                lanes: Mutex::new(HashMap::new()),
            }),
        };
        let mut retry = RetryState::start();
        loop {
            let err = match client.refresh_metadata().await {
                Ok(_) => return Ok(client),
                Err(e) => e,
            };
            if !err.is_retriable() {
                return Err(err);
            }
            let Some(delay) = retry.next_delay(&client.inner.config, false) else {
                return Err(err);
            };
            if retry.failures() == 1 {
                // Said once: a user who forgot to start a broker sees why it waits.
                tracing::warn!(
                    "no broker answered yet ({err}); retrying for up to {:?}",
                    client.inner.config.retry_timeout
                );
            }
            tracing::debug!(error = %err, ?delay, "no broker answered yet; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The cached metadata.
    pub fn metadata(&self) -> ClusterMetadata {
        self.cache(|c| c.metadata.clone())
    }

    fn cache<T>(&self, f: impl FnOnce(&mut Cache) -> T) -> T {
        let mut guard = match self.inner.cache.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// The metadata leader's address as cached, if known.
    pub fn leader_address(&self) -> Option<String> {
        self.group_leader_address(0)
    }

    /// A group's leader address as cached, if known (group 0: the metadata leader).
    pub fn group_leader_address(&self, group: u32) -> Option<String> {
        self.cache(|c| c.leaders.get(&group).cloned())
    }

    /// Forgets a group's leader (after it failed), so the next request looks it up.
    fn forget_leader(&self, group: u32, address: &str) {
        self.cache(|c| {
            if c.leaders.get(&group).map(String::as_str) == Some(address) {
                c.leaders.remove(&group);
            }
        });
    }

    /// Where requests for `queue` of `topic` go (produce, fetch, offset lookups):
    /// the leader of the group holding it, from cached metadata (refreshed first
    /// when a broker said the cache is wrong, or the topic is not in it).
    pub async fn queue_target(&self, topic: &str, queue: u32) -> Target {
        let (stale, known) = self.cache(|c| (c.stale, c.metadata.topics.contains_key(topic)));
        if stale || !known {
            if let Err(e) = self.refresh_metadata().await {
                tracing::debug!(error = %e, "metadata refresh failed");
            }
        }
        match self.cache(|c| c.metadata.group_of(topic, queue)) {
            0 => Target::Leader,
            g => Target::Group(g),
        }
    }

    /// Sends a request for `queue` of `topic` to the leader of its group, with the
    /// retries of [`request`](Self::request) (the group is looked up again before
    /// each attempt).
    pub async fn request_queue(
        &self,
        topic: &str,
        queue: u32,
        body: request::Body,
    ) -> Result<response::Body, ClientError> {
        self.send_retrying(Route::Queue(topic, queue), body).await
    }

    /// Whether the leader `target` stands for is known (a redirect was taken).
    pub fn has_leader(&self, target: &Target) -> bool {
        match target {
            Target::Leader => self.group_leader_address(0).is_some(),
            Target::Group(g) => self.group_leader_address(*g).is_some(),
            _ => false,
        }
    }

    /// Asks the known brokers, then the bootstrap list, for metadata (every topic)
    /// and updates the cache. Brokers answer metadata only from state confirmed
    /// with the leader (else `NOT_READY`), so the first answer that names a leader
    /// is taken; a broker that answers without one (or fails) does not stop the
    /// client from asking the others. Fails only when none answers; when answers
    /// came but none knows a leader, the last is kept (and the leader stays unknown).
    pub async fn refresh_metadata(&self) -> Result<ClusterMetadata, ClientError> {
        let mut candidates: Vec<String> = Vec::new();
        let (leader, known) = self.cache(|c| {
            (
                c.leaders.get(&0).cloned(),
                c.metadata.nodes.values().cloned().collect::<Vec<_>>(),
            )
        });
        candidates.extend(leader);
        candidates.extend(known);
        candidates.extend(self.inner.bootstrap.iter().cloned());
        let mut seen = std::collections::HashSet::new();
        candidates.retain(|a| seen.insert(a.clone()));

        let mut last = ClientError::NoBroker("no broker to ask".into());
        let mut leaderless = None;
        let mut wrong_cluster = None;
        // A broker that refused this client (TLS, login) says more than one that was
        // down: that error is the one to report.
        let mut refused = None;
        for address in candidates {
            let body = request::Body::Metadata(pb::MetadataRequest::default());
            let answer = self.call_address(&address, body).await;
            if let Ok(response::Body::Metadata(m)) = &answer {
                if let Err(e) = self.check_cluster(&address, m.cluster_id) {
                    tracing::warn!(%address, error = %e, "ignoring a broker of another cluster");
                    wrong_cluster = Some(e);
                    continue;
                }
            }
            match answer {
                Ok(response::Body::Metadata(m)) if m.leader_id != 0 => {
                    return Ok(self.apply_metadata(m))
                }
                Ok(response::Body::Metadata(m)) => {
                    tracing::debug!(%address, "metadata without a leader; asking the others");
                    leaderless = Some(m);
                }
                Ok(other) => {
                    last = unexpected("metadata", &other);
                }
                Err(e) if !e.is_retriable() => {
                    tracing::debug!(%address, error = %e, "refused by a broker");
                    refused = Some(e);
                }
                Err(e) => {
                    tracing::debug!(%address, error = %e, "metadata request failed");
                    last = e;
                }
            }
        }
        if let Some(m) = leaderless {
            return Ok(self.apply_metadata(m));
        }
        if let Some(e) = wrong_cluster.or(refused) {
            return Err(e);
        }
        Err(ClientError::NoBroker(format!(
            "no broker answered a metadata request: {last}"
        )))
    }

    /// Accepts a broker of the cluster this client first talked to (a broker that
    /// does not know its cluster yet, id 0, is accepted).
    fn check_cluster(&self, address: &str, cluster_id: u64) -> Result<(), ClientError> {
        if cluster_id == 0 {
            return Ok(());
        }
        let known = self.inner.cluster_id.compare_exchange(
            0,
            cluster_id,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        match known {
            Ok(_) => Ok(()),
            Err(known) if known == cluster_id => Ok(()),
            Err(known) => Err(ClientError::WrongCluster(format!(
                "{address} belongs to cluster {cluster_id:016x}, this client to cluster \
                 {known:016x}; check the broker addresses"
            ))),
        }
    }

    fn apply_metadata(&self, m: pb::MetadataResponse) -> ClusterMetadata {
        let metadata = ClusterMetadata {
            racks: m
                .nodes
                .iter()
                .filter(|n| !n.rack.is_empty())
                .map(|n| (n.node_id, n.rack.clone()))
                .collect(),
            nodes: m
                .nodes
                .into_iter()
                .map(|n| (n.node_id, n.address))
                .collect(),
            leader_id: (m.leader_id != 0).then_some(m.leader_id),
            queue_groups: m
                .topics
                .iter()
                .filter(|t| !t.queue_groups.is_empty())
                .map(|t| (t.name.clone(), t.queue_groups.clone()))
                .collect(),
            group_replicas: m
                .groups
                .iter()
                .map(|g| (g.group_id, g.replicas.clone()))
                .collect(),
            group_leaders: m
                .groups
                .iter()
                .filter(|g| g.leader_id != 0)
                .map(|g| (g.group_id, g.leader_id))
                .collect(),
            topics: m.topics.into_iter().map(|t| (t.name, t.queues)).collect(),
            cluster_id: m.cluster_id,
        };
        self.cache(|c| {
            c.leaders.clear();
            let leaders = metadata
                .leader_id
                .map(|id| (0, id))
                .into_iter()
                .chain(metadata.group_leaders.iter().map(|(g, id)| (*g, *id)));
            for (group, id) in leaders {
                if let Some(address) = metadata.nodes.get(&id) {
                    c.leaders.insert(group, address.clone());
                }
            }
            c.metadata = metadata.clone();
            c.stale = false;
        });
        self.inner
            .metadata_generation
            .fetch_add(1, Ordering::Release);
        metadata
    }

    /// A number that changes whenever the cached metadata is replaced.
    pub(crate) fn metadata_generation(&self) -> u64 {
        self.inner.metadata_generation.load(Ordering::Acquire)
    }

    /// Queue count of `topic`, from the cache or (when unknown) fresh metadata.
    pub async fn topic_queues(&self, topic: &str) -> Result<u32, ClientError> {
        if let Some(n) = self.cache(|c| c.metadata.topics.get(topic).copied()) {
            return Ok(n);
        }
        let m = self.refresh_metadata().await?;
        m.topics.get(topic).copied().ok_or_else(|| {
            ClientError::Server(ServerError::UnknownTopic {
                message: format!("unknown topic {topic:?}"),
            })
        })
    }

    pub(crate) async fn connection(&self, address: &str) -> Result<Connection, ClientError> {
        let slot = {
            let mut slots = match self.inner.connections.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            Arc::clone(slots.entry(address.to_owned()).or_default())
        };
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        *slot = None;
        let config = &self.inner.config;
        let conn = Connection::connect(
            address,
            config.connect_timeout,
            config.max_frame_bytes,
            self.inner.tls.as_ref(),
        )
        .await?;
        if let Some(credentials) = &config.credentials {
            conn.login(credentials, config.request_timeout).await?;
        }
        tracing::debug!(address = conn.address(), "connected");
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// One request to one address, no retry: the raw response.
    async fn call_raw(
        &self,
        address: &str,
        body: request::Body,
    ) -> Result<pb::Response, ClientError> {
        let conn = self.connection(address).await?;
        let timeout = self.inner.config.request_timeout + extra_wait(&body);
        conn.call(body, timeout).await
    }

    /// One request to one address, no retry; a broker error becomes `Err(Server)`.
    /// A `DuplicateSequence` answer that carries a body is a success (the batch was
    /// stored before; the body says where).
    pub async fn call_address(
        &self,
        address: &str,
        body: request::Body,
    ) -> Result<response::Body, ClientError> {
        let response = self.call_raw(address, body).await?;
        into_result(response)
    }

    /// One attempt at `target`, no retry. On `NotLeader` the cached leader is
    /// updated from the redirect (or forgotten), so the next attempt goes to the
    /// right broker; on a transport failure to the leader it is forgotten too.
    pub async fn request_once(
        &self,
        target: &Target,
        body: request::Body,
    ) -> Result<response::Body, ClientError> {
        let address = self.resolve(target).await?;
        let result = self.call_address(&address, body).await;
        self.note_outcome(target, &address, &result);
        result
    }

    /// One produce of a batch at `target`, no retry, through the produce lane of
    /// the target's broker (it may leave in one request with other queues'
    /// batches); redirects and failures are noted as by
    /// [`request_once`](Self::request_once).
    pub(crate) async fn produce_once(
        &self,
        target: &Target,
        request: pb::ProduceRequest,
    ) -> Result<response::Body, ClientError> {
        let address = self.resolve(target).await?;
        let group = match target {
            Target::Group(g) => *g,
            _ => 0,
        };
        let lane = {
            let mut lanes = self.inner.lanes.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(
                lanes
                    .entry((address.clone(), group))
                    .or_insert_with(|| Arc::new(crate::lane::ProduceLane::new(address.clone()))),
            )
        };
        let result = match lane.submit(self, request).await {
            Ok(answer) => answer.and_then(into_result),
            Err(_) => Err(ClientError::ConnectionClosed(address.clone())),
        };
        self.note_outcome(target, &address, &result);
        result
    }

    /// The request timeout of this client.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.config.request_timeout
    }

    /// The largest frame this client sends or reads.
    pub(crate) fn max_frame_bytes(&self) -> usize {
        self.inner.config.max_frame_bytes
    }

    /// Follows what an answer from `address` for `target` says of its leader: on
    /// `NotLeader` the cached leader is updated from the redirect (or forgotten);
    /// on a transport failure to the leader it is forgotten too.
    fn note_outcome(
        &self,
        target: &Target,
        address: &str,
        result: &Result<response::Body, ClientError>,
    ) {
        let group = match target {
            Target::Leader => 0,
            Target::Group(g) => *g,
            _ => return,
        };
        match result {
            Err(ClientError::Server(
                ServerError::NotLeader { leader_address, .. }
                | ServerError::NotReady { leader_address, .. },
            )) => self.note_redirect(group, address, leader_address.as_ref()),
            Err(e) if e.is_retriable() && e.server_error().is_none() => {
                self.forget_leader(group, address);
            }
            _ => {}
        }
    }

    /// A `NotLeader` or `NotReady` answer about `group` from the broker at
    /// `address`: a leader it names is used from now on; a broker naming itself
    /// (or nobody) sends the client back to metadata, which asks every node.
    fn note_redirect(&self, group: u32, address: &str, leader_address: Option<&String>) {
        let redirect = leader_address.filter(|a| *a != address).cloned();
        let unnamed = redirect.is_none();
        self.cache(|c| {
            match redirect {
                Some(a) => c.leaders.insert(group, a),
                None => c.leaders.remove(&group),
            };
            // Nobody named: the queue may have moved, or its topic be new.
            c.stale |= unnamed;
        });
    }

    /// Notes a failure one queue met inside a multi-queue request sent to
    /// `target` (at the group's known leader): redirects as for a whole request;
    /// other failures (busy, a timeout, a failed disk) leave the queue where it was.
    pub(crate) fn note_part_failure(&self, target: &Target, error: &ClientError) {
        let group = match target {
            Target::Leader => 0,
            Target::Group(g) => *g,
            _ => return,
        };
        if let ClientError::Server(
            ServerError::NotLeader { leader_address, .. }
            | ServerError::NotReady { leader_address, .. },
        ) = error
        {
            let asked = self.group_leader_address(group).unwrap_or_default();
            self.note_redirect(group, &asked, leader_address.as_ref());
        }
    }

    /// Sends `body` to `target`, following `NotLeader` redirects and retrying
    /// retriable failures with jittered exponential backoff until
    /// [`retry_timeout`](ClientConfig::retry_timeout) (see `retry.rs`). A redirect
    /// to a named leader is followed at once; other retries wait the backoff first.
    pub async fn request(
        &self,
        target: Target,
        body: request::Body,
    ) -> Result<response::Body, ClientError> {
        self.send_retrying(Route::Fixed(target), body).await
    }

    /// The retry loop of [`request`](Self::request) and
    /// [`request_queue`](Self::request_queue).
    async fn send_retrying(
        &self,
        route: Route<'_>,
        body: request::Body,
    ) -> Result<response::Body, ClientError> {
        let mut retry = RetryState::start();
        loop {
            let target = match &route {
                Route::Fixed(target) => target.clone(),
                Route::Queue(topic, queue) => self.queue_target(topic, *queue).await,
            };
            let err = match self.request_once(&target, body.clone()).await {
                Ok(b) => return Ok(b),
                Err(e) => e,
            };
            // Only leader targets follow redirects; a named node stays wrong.
            let misdirected = matches!(target, Target::Node(_) | Target::Address(_))
                && matches!(err, ClientError::Server(ServerError::NotLeader { .. }));
            if !err.is_retriable() || misdirected {
                return Err(err);
            }
            let redirected = names_leader(&err) && self.has_leader(&target);
            let Some(delay) = retry.next_delay(&self.inner.config, redirected) else {
                return Err(ClientError::RetriesExhausted {
                    attempts: retry.failures(),
                    last: Box::new(err),
                });
            };
            tracing::debug!(attempt = retry.failures(), error = %err, ?delay, "retrying request");
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
    }

    /// The address of `target`; for the leader, fresh metadata when none is cached.
    async fn resolve(&self, target: &Target) -> Result<String, ClientError> {
        match target {
            Target::Address(a) => Ok(a.clone()),
            Target::Node(id) => {
                if let Some(a) = self.cache(|c| c.metadata.nodes.get(id).cloned()) {
                    return Ok(a);
                }
                self.refresh_metadata()
                    .await?
                    .nodes
                    .get(id)
                    .cloned()
                    .ok_or_else(|| ClientError::InvalidArgument(format!("unknown node {id}")))
            }
            Target::Leader | Target::Group(_) => {
                let group = match target {
                    Target::Group(g) => *g,
                    _ => 0,
                };
                if let Some(a) = self.group_leader_address(group) {
                    return Ok(a);
                }
                self.refresh_metadata().await?;
                match self.group_leader_address(group) {
                    Some(a) => Ok(a),
                    // A data group's leader unknown to the answering broker: one of
                    // its replicas (a different one each time) names it.
                    None if group != 0 => self
                        .cache(|c| {
                            let m = &c.metadata;
                            let replicas: Vec<&String> = m
                                .group_replicas
                                .get(&group)
                                .into_iter()
                                .flatten()
                                .filter_map(|id| m.nodes.get(id))
                                .collect();
                            let any: Vec<&String> = m.nodes.values().collect();
                            let pool = if replicas.is_empty() { any } else { replicas };
                            let turn = self.inner.turn.fetch_add(1, Ordering::Relaxed) as usize;
                            pool.get(turn % pool.len().max(1)).map(|a| (*a).clone())
                        })
                        .ok_or_else(|| ClientError::NoBroker("no broker known".into())),
                    None => Err(ClientError::NoBroker("no leader known".into())),
                }
            }
        }
    }
}

/// A long-poll fetch may legitimately wait `max_wait_ms` before answering.
fn extra_wait(body: &request::Body) -> Duration {
    match body {
        request::Body::Fetch(f) => Duration::from_millis(u64::from(f.max_wait_ms)),
        request::Body::FetchMany(f) => Duration::from_millis(u64::from(f.max_wait_ms)),
        _ => Duration::ZERO,
    }
}

/// Turns a raw response into the body or the typed broker error.
pub(crate) fn into_result(response: pb::Response) -> Result<response::Body, ClientError> {
    match (response.error, response.body) {
        (None, Some(body)) => Ok(body),
        (None, None) => Err(ClientError::Protocol(
            "response has neither body nor error".into(),
        )),
        (Some(e), Some(body)) if e.code == ErrorCode::DuplicateSequence as i32 => Ok(body),
        (Some(e), _) => Err(ClientError::Server(ServerError::from(e))),
    }
}

/// The error for a response body of the wrong API.
pub(crate) fn unexpected(wanted: &str, got: &response::Body) -> ClientError {
    ClientError::Protocol(format!(
        "expected a {wanted} response, got {}",
        got.api_key()
    ))
}
