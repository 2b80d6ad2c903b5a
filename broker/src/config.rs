//! Broker configuration: one documented struct with defaults, filled from an optional
//! TOML file and then from command-line flags (flags win).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::raft::NodeId;

/// The address a broker listens on when none is given: clients and peers alike.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";

/// The data directory used when none is given.
pub const DEFAULT_DATA_DIR: &str = "raftmq-data";

/// The longest rack name a node may give (it is stored in the cluster metadata and
/// shown in every metadata answer).
pub const MAX_RACK_BYTES: usize = 64;

/// When an acknowledgement is sent, relative to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Acknowledge only after a quorum has synced the entry (fdatasync/msync). Default.
    Fsync,
    /// Acknowledge once a quorum has written the entry to its page cache; sync every
    /// `async_sync_interval_ms`. A simultaneous power loss of a quorum can lose up to
    /// that window of acknowledged writes.
    Async,
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fsync" => Ok(Durability::Fsync),
            "async" => Ok(Durability::Async),
            other => Err(format!(
                "unknown durability {other:?} (expected fsync or async)"
            )),
        }
    }
}

/// Everything a broker needs to run. Every field has a documented default.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// This node's id (default 1). Must appear in `peers`.
    pub node_id: NodeId,
    /// Where the commit log and metadata live (default `./raftmq-data`).
    pub data_dir: PathBuf,
    /// Address for clients and peers (default `127.0.0.1:7070`).
    pub listen: SocketAddr,
    /// Every voter of the Raft group, this node included, by id. Default: this node alone.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Default: `fsync`.
    pub durability: Durability,
    /// Sync period in `async` durability (default 50 ms).
    pub async_sync_interval_ms: u64,
    /// Size of each preallocated segment file (default 1 GiB).
    pub segment_bytes: u64,
    /// Largest record batch accepted (default 8 MiB).
    pub max_batch_bytes: usize,
    /// Largest frame accepted on a connection (default 16 MiB).
    pub max_frame_bytes: usize,
    /// Raft tick period (default 10 ms).
    pub tick_ms: u64,
    /// Election timeout in ticks, randomized up to twice this (default 30).
    pub election_timeout_ticks: u32,
    /// Heartbeat period in ticks (default 5).
    pub heartbeat_interval_ticks: u32,
    /// Proposals not yet committed before `Busy` (default 65 536).
    pub max_pending_proposals: usize,
    /// Requests a connection may have in flight before the broker stops reading from
    /// it (default 1024).
    pub max_inflight_per_connection: usize,
    /// How long a produce may wait for its commit before `Timeout` (default 10 s).
    pub request_timeout_ms: u64,
    /// Longest long-poll a fetch may ask for (default 30 s).
    pub max_fetch_wait_ms: u64,
    /// Address of the Prometheus `/metrics` endpoint (default: none, metrics off).
    pub metrics_listen: Option<SocketAddr>,
    /// Address of the Kafka-protocol listener (default: none, off). The node
    /// advertises it to the cluster (see `kafka_advertise`).
    pub kafka_listen: Option<SocketAddr>,
    /// The Kafka address other nodes and clients are told for this node (default:
    /// the Kafka listener's port on this node's own address). Needed behind NAT or
    /// when `kafka_listen` is a wildcard address and `listen` is too.
    pub kafka_advertise: Option<String>,
    /// The node's rack or zone: its failure domain (default: none, a domain of its
    /// own). Data-group replicas and metadata voters spread over racks first.
    pub rack: Option<String>,
    /// Retention by age: sealed segments whose last write is older than this are
    /// deleted (default 7 days; 0 keeps segments forever).
    pub retention_ms: u64,
    /// Retention by size: the oldest segments are deleted while the log is larger
    /// than this (default 0: no size limit).
    pub retention_bytes: u64,
    /// How often retention runs (default 10 s).
    pub retention_check_interval_ms: u64,
    /// A live follower's match index holds retention back for at most this long
    /// before the leader deletes what it still needs (it then catches up from a
    /// snapshot). Default 10 minutes.
    pub retention_follower_grace_ms: u64,
    /// Appends that would take the file system above this fraction in use are
    /// refused with a clear error, before the disk is actually full (default 0.95;
    /// 1.0 turns the check off).
    pub max_disk_use_ratio: f64,
    /// Reads of replicated state (metadata, offsets, groups) and "does not exist"
    /// answers wait for a read index confirmed by a quorum, so they never go back
    /// in time (default true). `false` answers from the node's own state at once:
    /// a node that lags or was deposed may then answer stale (kept for measuring
    /// the cost of the confirmation; not for production).
    pub linearizable_reads: bool,
    /// Members of an existing cluster to ask for admission (default none). A node
    /// started with `join` is not a bootstrap member: it asks the leader to add it
    /// as a learner and receives the log; `raftmq cluster add-node` then makes it a
    /// voter. `peers` is ignored for it (members' addresses come from the log).
    pub join: Vec<SocketAddr>,
    /// A learner is promoted to voter only once its log is within this many
    /// entries of the leader's (default 1000).
    pub max_learner_lag: u64,
    /// Voters the metadata group keeps (default 3): its leader promotes caught-up
    /// learners while it has fewer, and replaces a voter that was decommissioned or
    /// not heard from for `dead_node_timeout_ms` by a learner (promote first, then
    /// demote the lost voter to learner). A healthy voter is demoted only to move
    /// a vote to a rack without one (one voter over `metadata_voters`, never below
    /// 3), so a cluster started with more voters keeps them. 0 turns all of this
    /// off.
    pub metadata_voters: u32,
    /// Data groups a new cluster spreads its queues over (0, the default: every
    /// queue in the metadata group, one Raft group in all). Written into the
    /// metadata log by the first leader that has it set; fixed from then on.
    pub data_groups: u32,
    /// Replicas of each data group a new cluster creates (default 3; at most the
    /// number of nodes).
    pub replication_factor: u32,
    /// A node the metadata leader has not heard from for this long has its
    /// data-group replicas re-created on other nodes (0: never; default 5 min).
    pub dead_node_timeout_ms: u64,
    /// A data group idle for a second or two ticks this many times slower (its
    /// heartbeats and election timeout stretch alike: an idle group costs that much
    /// less and fails over that much slower). 1 turns this off; default 10.
    pub idle_tick_factor: u32,
    /// A data group with nothing to do for an election timeout quiesces: no
    /// heartbeats, no election timers, until a write, a read or the node-level
    /// failure detector wakes it (see docs/architecture.md). Default true.
    pub quiesce_idle_groups: bool,
    /// TLS on the client port, the Kafka port and the links between nodes (default:
    /// none, plaintext). See docs/security.md.
    pub tls: Option<crate::security::TlsFiles>,
    /// Allows listening on a non-loopback address without TLS and logins (default
    /// false): such a broker is open to anyone who can reach it, so it must be
    /// asked for.
    pub insecure: bool,
    /// Every client must log in: SCRAM-SHA-256/512 (PLAIN too over TLS) or a
    /// client certificate (default false).
    pub require_login: bool,
    /// Users who may do anything, managing users and the cluster included
    /// (default none).
    pub superusers: Vec<String>,
    /// A user the cluster creates while it has none: the first admin. From the
    /// environment variable `RAFTMQ_BOOTSTRAP_USER=NAME:PASSWORD` only, so the
    /// password is in no file and no process listing.
    pub bootstrap_user: Option<BootstrapUser>,
    /// Bytes per second each principal may produce before its connections are
    /// throttled (default 0: unlimited).
    pub produce_quota_bytes: u64,
    /// Bytes per second of fetched data each principal may receive before its
    /// answers are held back (default 0: unlimited).
    pub fetch_quota_bytes: u64,
    /// Connections open at once on the client and Kafka ports, in all (default
    /// 10 000) and from one client address (default 1 000); beyond, new ones are
    /// closed at once.
    pub max_connections: u32,
    /// See [`BrokerConfig::max_connections`].
    pub max_connections_per_ip: u32,
}

/// The first admin's name and password (the password is never printed).
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapUser {
    /// User name.
    pub name: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for BootstrapUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapUser")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl std::str::FromStr for BootstrapUser {
    type Err = ConfigError;
    /// `NAME:PASSWORD`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some((name, password)) if !name.is_empty() && !password.is_empty() => {
                Ok(BootstrapUser {
                    name: name.to_owned(),
                    password: password.to_owned(),
                })
            }
            _ => Err(ConfigError::OutOfRange(
                "RAFTMQ_BOOTSTRAP_USER must be NAME:PASSWORD".into(),
            )),
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        let listen: SocketAddr = DEFAULT_LISTEN.parse().expect("default address parses");
        BrokerConfig {
            node_id: NodeId(1),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            listen,
            peers: BTreeMap::from([(NodeId(1), listen)]),
            durability: Durability::Fsync,
            async_sync_interval_ms: 50,
            segment_bytes: 1 << 30,
            max_batch_bytes: 8 << 20,
            max_frame_bytes: 16 << 20,
            tick_ms: 10,
            election_timeout_ticks: 30,
            heartbeat_interval_ticks: 5,
            max_pending_proposals: 65_536,
            max_inflight_per_connection: 1024,
            request_timeout_ms: 10_000,
            max_fetch_wait_ms: 30_000,
            metrics_listen: None,
            kafka_listen: None,
            kafka_advertise: None,
            rack: None,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: 0,
            retention_check_interval_ms: 10_000,
            retention_follower_grace_ms: 600_000,
            max_disk_use_ratio: 0.95,
            linearizable_reads: true,
            join: Vec::new(),
            max_learner_lag: 1000,
            metadata_voters: 3,
            data_groups: 0,
            replication_factor: 3,
            dead_node_timeout_ms: 300_000,
            idle_tick_factor: 10,
            quiesce_idle_groups: true,
            tls: None,
            insecure: false,
            require_login: false,
            superusers: Vec::new(),
            bootstrap_user: None,
            produce_quota_bytes: 0,
            fetch_quota_bytes: 0,
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// The config file is not valid TOML or has an unknown key or a wrong type.
    #[error("invalid config file {path}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// What the parser said.
        reason: String,
    },
    /// An address did not parse.
    #[error("bad address {0:?}: expected HOST:PORT with a numeric IP")]
    BadAddress(String),
    /// A `--peers` element is not `ID=HOST:PORT`.
    #[error("bad peer {0:?}: expected ID=HOST:PORT")]
    BadPeer(String),
    /// The same node id appears twice in the peer list.
    #[error("duplicate node id {0} in peers")]
    DuplicateNodeId(u64),
    /// Node id 0 is reserved for "no node".
    #[error("node id must be at least 1")]
    ZeroNodeId,
    /// The peer list does not contain this node.
    #[error("peers do not include this node (id {0})")]
    SelfNotInPeers(u64),
    /// A numeric option is out of its range.
    #[error("{0}")]
    OutOfRange(String),
    /// Some TLS files are given but not all that TLS needs.
    #[error("TLS needs tls_cert, tls_key and tls_cluster_ca together (missing: {0})")]
    IncompleteTls(String),
    /// A non-loopback listener without TLS and logins, and `insecure` not set.
    #[error(
        "{what} {addr} is not a loopback address and {missing} off: anyone who can \
         reach it could read, write and delete everything. Configure TLS (--tls-cert, \
         --tls-key, --tls-cluster-ca) and logins (--require-login), or pass --insecure \
         to accept that"
    )]
    Insecure {
        /// Which listener.
        what: &'static str,
        /// Its address.
        addr: SocketAddr,
        /// "TLS is", "logins are" or "TLS and logins are".
        missing: &'static str,
    },
    /// The metrics endpoint would share the broker's own port.
    #[error("metrics_listen {0} is the broker's listen address; give metrics a port of its own")]
    MetricsOnBrokerPort(SocketAddr),
}

/// The subset of options a TOML file may set (all optional; unknown keys refused).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See [`BrokerConfig::node_id`].
    pub node_id: Option<u64>,
    /// See [`BrokerConfig::data_dir`].
    pub data_dir: Option<PathBuf>,
    /// See [`BrokerConfig::listen`].
    pub listen: Option<String>,
    /// `["1=127.0.0.1:7071", ...]`.
    pub peers: Option<Vec<String>>,
    /// `"fsync"` or `"async"`.
    pub durability: Option<Durability>,
    /// See [`BrokerConfig::async_sync_interval_ms`].
    pub async_sync_interval_ms: Option<u64>,
    /// See [`BrokerConfig::segment_bytes`].
    pub segment_bytes: Option<u64>,
    /// See [`BrokerConfig::max_batch_bytes`].
    pub max_batch_bytes: Option<usize>,
    /// See [`BrokerConfig::max_frame_bytes`].
    pub max_frame_bytes: Option<usize>,
    /// See [`BrokerConfig::tick_ms`].
    pub tick_ms: Option<u64>,
    /// See [`BrokerConfig::election_timeout_ticks`].
    pub election_timeout_ticks: Option<u32>,
    /// See [`BrokerConfig::heartbeat_interval_ticks`].
    pub heartbeat_interval_ticks: Option<u32>,
    /// See [`BrokerConfig::request_timeout_ms`].
    pub request_timeout_ms: Option<u64>,
    /// See [`BrokerConfig::metrics_listen`].
    pub metrics_listen: Option<String>,
    /// See [`BrokerConfig::kafka_listen`].
    pub kafka_listen: Option<String>,
    /// See [`BrokerConfig::kafka_advertise`].
    pub kafka_advertise: Option<String>,
    /// See [`BrokerConfig::rack`].
    pub rack: Option<String>,
    /// See [`BrokerConfig::retention_ms`].
    pub retention_ms: Option<u64>,
    /// See [`BrokerConfig::retention_bytes`].
    pub retention_bytes: Option<u64>,
    /// See [`BrokerConfig::retention_check_interval_ms`].
    pub retention_check_interval_ms: Option<u64>,
    /// See [`BrokerConfig::retention_follower_grace_ms`].
    pub retention_follower_grace_ms: Option<u64>,
    /// See [`BrokerConfig::max_disk_use_ratio`].
    pub max_disk_use_ratio: Option<f64>,
    /// See [`BrokerConfig::linearizable_reads`].
    pub linearizable_reads: Option<bool>,
    /// `["HOST:PORT", ...]`: see [`BrokerConfig::join`].
    pub join: Option<Vec<String>>,
    /// See [`BrokerConfig::max_learner_lag`].
    pub max_learner_lag: Option<u64>,
    /// See [`BrokerConfig::metadata_voters`].
    pub metadata_voters: Option<u32>,
    /// See [`BrokerConfig::data_groups`].
    pub data_groups: Option<u32>,
    /// See [`BrokerConfig::replication_factor`].
    pub replication_factor: Option<u32>,
    /// See [`BrokerConfig::dead_node_timeout_ms`].
    pub dead_node_timeout_ms: Option<u64>,
    /// See [`BrokerConfig::idle_tick_factor`].
    pub idle_tick_factor: Option<u32>,
    /// See [`BrokerConfig::quiesce_idle_groups`].
    pub quiesce_idle_groups: Option<bool>,
    /// The node's certificate chain (PEM): see [`BrokerConfig::tls`].
    pub tls_cert: Option<PathBuf>,
    /// The node's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// The cluster CA (PEM): node certificates chain to it.
    pub tls_cluster_ca: Option<PathBuf>,
    /// The client CA (PEM), when clients may log in with certificates.
    pub tls_client_ca: Option<PathBuf>,
    /// See [`BrokerConfig::insecure`].
    pub insecure: Option<bool>,
    /// See [`BrokerConfig::require_login`].
    pub require_login: Option<bool>,
    /// See [`BrokerConfig::superusers`].
    pub superusers: Option<Vec<String>>,
    /// See [`BrokerConfig::produce_quota_bytes`].
    pub produce_quota_bytes: Option<u64>,
    /// See [`BrokerConfig::fetch_quota_bytes`].
    pub fetch_quota_bytes: Option<u64>,
    /// See [`BrokerConfig::max_connections`].
    pub max_connections: Option<u32>,
    /// See [`BrokerConfig::max_connections_per_ip`].
    pub max_connections_per_ip: Option<u32>,
}

/// TLS file settings from any source, merged before they become [`TlsFiles`]
/// (`crate::security::TlsFiles`).
#[derive(Debug, Default, Clone)]
pub struct TlsPaths {
    /// See [`FileConfig::tls_cert`].
    pub cert: Option<PathBuf>,
    /// See [`FileConfig::tls_key`].
    pub key: Option<PathBuf>,
    /// See [`FileConfig::tls_cluster_ca`].
    pub cluster_ca: Option<PathBuf>,
    /// See [`FileConfig::tls_client_ca`].
    pub client_ca: Option<PathBuf>,
}

impl TlsPaths {
    /// Each path given in `other` replaces this one's.
    pub fn merge(&mut self, other: TlsPaths) {
        self.cert = other.cert.or(self.cert.take());
        self.key = other.key.or(self.key.take());
        self.cluster_ca = other.cluster_ca.or(self.cluster_ca.take());
        self.client_ca = other.client_ca.or(self.client_ca.take());
    }

    /// No TLS when nothing is given; the files when the three required ones are.
    pub fn into_files(self) -> Result<Option<crate::security::TlsFiles>, ConfigError> {
        match (self.cert, self.key, self.cluster_ca) {
            (None, None, None) if self.client_ca.is_none() => Ok(None),
            (Some(cert), Some(key), Some(cluster_ca)) => Ok(Some(crate::security::TlsFiles {
                cert,
                key,
                cluster_ca,
                client_ca: self.client_ca,
            })),
            (cert, key, ca) => {
                let missing: Vec<&str> = [
                    (cert.is_none(), "tls_cert"),
                    (key.is_none(), "tls_key"),
                    (ca.is_none(), "tls_cluster_ca"),
                ]
                .into_iter()
                .filter_map(|(absent, name)| absent.then_some(name))
                .collect();
                Err(ConfigError::IncompleteTls(missing.join(", ")))
            }
        }
    }
}

/// Parses `HOST:PORT`; names are resolved with the system resolver (for `localhost`).
pub fn parse_addr(s: &str) -> Result<SocketAddr, ConfigError> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    s.to_socket_addrs()
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| ConfigError::BadAddress(s.to_string()))
}

/// Parses `1=HOST:PORT,2=HOST:PORT` (or the same as separate list items).
pub fn parse_peers<S: AsRef<str>>(
    items: &[S],
) -> Result<BTreeMap<NodeId, SocketAddr>, ConfigError> {
    let mut peers = BTreeMap::new();
    for item in items
        .iter()
        .flat_map(|s| s.as_ref().split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| ConfigError::BadPeer(item.to_string()))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| ConfigError::BadPeer(item.to_string()))?;
        if id == 0 {
            return Err(ConfigError::ZeroNodeId);
        }
        let addr = parse_addr(addr.trim())?;
        if peers.insert(NodeId(id), addr).is_some() {
            return Err(ConfigError::DuplicateNodeId(id));
        }
    }
    Ok(peers)
}

/// The parser's message with the line it is about: `line 3 (segment_bytes = "big"):
/// invalid type: string "big", expected u64`, on one line.
fn parse_reason(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    let Some(span) = e.span() else {
        return message;
    };
    let start = span.start.min(text.len());
    let line_number = text[..start].matches('\n').count() + 1;
    let line = text.lines().nth(line_number - 1).unwrap_or("").trim();
    format!("line {line_number} ({line}): {message}")
}

impl FileConfig {
    /// Reads and parses a TOML file.
    pub fn load(path: &std::path::Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            reason: parse_reason(&text, &e),
        })
    }
}

impl BrokerConfig {
    /// Applies a file's settings over `self`.
    pub fn apply_file(&mut self, file: FileConfig) -> Result<(), ConfigError> {
        if let Some(id) = file.node_id {
            self.node_id = NodeId(id);
        }
        if let Some(dir) = file.data_dir {
            self.data_dir = dir;
        }
        if let Some(listen) = file.listen {
            self.listen = parse_addr(&listen)?;
        }
        if let Some(peers) = file.peers {
            self.peers = parse_peers(&peers)?;
        }
        if let Some(join) = file.join {
            self.join = join
                .iter()
                .map(|a| parse_addr(a))
                .collect::<Result<_, _>>()?;
        }
        if let Some(metrics) = file.metrics_listen {
            self.metrics_listen = Some(parse_addr(&metrics)?);
        }
        if let Some(kafka) = file.kafka_listen {
            self.kafka_listen = Some(parse_addr(&kafka)?);
        }
        if let Some(advertise) = file.kafka_advertise {
            self.kafka_advertise = Some(advertise);
        }
        if let Some(rack) = file.rack {
            self.rack = Some(rack);
        }
        let mut tls = self.tls_paths();
        tls.merge(TlsPaths {
            cert: file.tls_cert,
            key: file.tls_key,
            cluster_ca: file.tls_cluster_ca,
            client_ca: file.tls_client_ca,
        });
        self.tls = tls.into_files()?;
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = file.$field { self.$field = v; } )* };
        }
        set!(
            durability,
            async_sync_interval_ms,
            segment_bytes,
            max_batch_bytes,
            max_frame_bytes,
            tick_ms,
            election_timeout_ticks,
            heartbeat_interval_ticks,
            request_timeout_ms,
            retention_ms,
            retention_bytes,
            retention_check_interval_ms,
            retention_follower_grace_ms,
            max_disk_use_ratio,
            linearizable_reads,
            max_learner_lag,
            metadata_voters,
            data_groups,
            replication_factor,
            dead_node_timeout_ms,
            idle_tick_factor,
            quiesce_idle_groups,
            insecure,
            require_login,
            superusers,
            produce_quota_bytes,
            fetch_quota_bytes,
            max_connections,
            max_connections_per_ip
        );
        Ok(())
    }

    /// The TLS paths in effect, to merge more sources into.
    pub fn tls_paths(&self) -> TlsPaths {
        match &self.tls {
            Some(files) => TlsPaths {
                cert: Some(files.cert.clone()),
                key: Some(files.key.clone()),
                cluster_ca: Some(files.cluster_ca.clone()),
                client_ca: files.client_ca.clone(),
            },
            None => TlsPaths::default(),
        }
    }

    /// Refuses a listener reachable from other hosts without TLS unless `insecure`.
    fn check_exposure(&self) -> Result<(), ConfigError> {
        let missing = match (self.tls.is_some(), self.require_login) {
            _ if self.insecure => return Ok(()),
            (true, true) => return Ok(()),
            (false, true) => "TLS is",
            (true, false) => "logins are",
            (false, false) => "TLS and logins are",
        };
        let listeners = [
            ("listen", Some(self.listen)),
            ("kafka_listen", self.kafka_listen),
        ];
        for (what, addr) in listeners {
            if let Some(addr) = addr {
                if !addr.ip().is_loopback() {
                    return Err(ConfigError::Insecure {
                        what,
                        addr,
                        missing,
                    });
                }
            }
        }
        Ok(())
    }

    /// Checks the whole configuration; run after all sources are applied.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        if self.node_id.0 == 0 {
            return Err(ConfigError::ZeroNodeId);
        }
        if self.peers.is_empty() {
            self.peers.insert(self.node_id, self.listen);
        }
        if !self.peers.contains_key(&self.node_id) {
            return Err(ConfigError::SelfNotInPeers(self.node_id.0));
        }
        self.check_exposure()?;
        if self.segment_bytes < 64 * 1024 {
            return Err(ConfigError::OutOfRange(format!(
                "segment_bytes {} is below the minimum of 65536 (--segment-bytes)",
                self.segment_bytes
            )));
        }
        if self.max_batch_bytes as u64 + 4096 > self.segment_bytes {
            return Err(ConfigError::OutOfRange(format!(
                "max_batch_bytes {} does not fit in a segment of {} bytes with its \
                     4096-byte header: raise --segment-bytes to at least {} or lower \
                     --max-batch-bytes",
                self.max_batch_bytes,
                self.segment_bytes,
                self.max_batch_bytes as u64 + 4096
            )));
        }
        if self.max_frame_bytes < self.max_batch_bytes + 1024 {
            return Err(ConfigError::OutOfRange(format!(
                "max_batch_bytes {} needs max_frame_bytes of at least {} (now {}): set \
                     max_frame_bytes in the --config file or lower --max-batch-bytes",
                self.max_batch_bytes,
                self.max_batch_bytes + 1024,
                self.max_frame_bytes
            )));
        }
        if self.tick_ms == 0
            || self.election_timeout_ticks < 3
            || self.heartbeat_interval_ticks == 0
        {
            return Err(ConfigError::OutOfRange(
                "tick_ms must be >= 1, election_timeout_ticks >= 3, heartbeat_interval_ticks >= 1"
                    .into(),
            ));
        }
        if let Some(metrics) = self.metrics_listen {
            if metrics == self.listen && metrics.port() != 0 {
                return Err(ConfigError::MetricsOnBrokerPort(metrics));
            }
        }
        if let Some(advertise) = &self.kafka_advertise {
            let port = advertise.rsplit_once(':').and_then(|(h, p)| {
                (!h.is_empty()).then_some(())?;
                p.parse::<u16>().ok()
            });
            if port.is_none() || self.kafka_listen.is_none() {
                return Err(ConfigError::OutOfRange(format!(
                    "kafka_advertise {advertise:?} must be HOST:PORT and needs kafka_listen"
                )));
            }
        }
        if let Some(rack) = &self.rack {
            let printable = rack.chars().all(|c| c.is_ascii_graphic());
            if rack.is_empty() || rack.len() > MAX_RACK_BYTES || !printable {
                return Err(ConfigError::OutOfRange(format!(
                    "rack {rack:?} must be 1 to {MAX_RACK_BYTES} printable ASCII characters \
                     without spaces"
                )));
            }
        }
        if let Some(kafka) = self.kafka_listen {
            if kafka.port() != 0 && (kafka == self.listen || Some(kafka) == self.metrics_listen) {
                return Err(ConfigError::OutOfRange(format!(
                    "kafka_listen {kafka} is another listener's address; give it a port of its own"
                )));
            }
        }
        if !(self.max_disk_use_ratio > 0.0 && self.max_disk_use_ratio <= 1.0) {
            return Err(ConfigError::OutOfRange(
                "max_disk_use_ratio must be above 0 and at most 1".into(),
            ));
        }
        if self.retention_check_interval_ms == 0 {
            return Err(ConfigError::OutOfRange(
                "retention_check_interval_ms must be at least 1".into(),
            ));
        }
        if self.heartbeat_interval_ticks >= self.election_timeout_ticks {
            return Err(ConfigError::OutOfRange(
                "heartbeat_interval_ticks must be below election_timeout_ticks".into(),
            ));
        }
        Ok(())
    }

    /// The client-facing address of a node, as sent in `NotLeader` and `Metadata`.
    pub fn address_of(&self, id: NodeId) -> Option<SocketAddr> {
        self.peers.get(&id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_from_one_comma_list() {
        let peers = parse_peers(&["1=127.0.0.1:1,2=127.0.0.1:2"]).unwrap();
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[&NodeId(2)], "127.0.0.1:2".parse().unwrap());
    }

    #[test]
    fn duplicate_node_ids_are_refused() {
        assert_eq!(
            parse_peers(&["1=127.0.0.1:1", "1=127.0.0.1:2"]),
            Err(ConfigError::DuplicateNodeId(1))
        );
    }

    #[test]
    fn peers_without_this_node_are_refused() {
        let mut config = BrokerConfig {
            node_id: NodeId(3),
            ..BrokerConfig::default()
        };
        assert_eq!(config.validate(), Err(ConfigError::SelfNotInPeers(3)));
    }

    #[test]
    fn unknown_keys_in_a_file_are_refused() {
        let err = toml::from_str::<FileConfig>("node_idd = 1").unwrap_err();
        assert!(err.message().contains("unknown field"), "{err}");
    }

    #[test]
    fn the_example_config_file_parses_and_matches_the_defaults() {
        let file: FileConfig =
            toml::from_str(include_str!("../../raftmq.example.toml")).expect("example parses");
        let mut config = BrokerConfig::default();
        config.apply_file(file).unwrap();
        config.validate().unwrap();
        let defaults = BrokerConfig::default();
        assert_eq!(config.listen, defaults.listen);
        assert_eq!(config.segment_bytes, defaults.segment_bytes);
        assert_eq!(config.durability, defaults.durability);
        assert_eq!(
            config.election_timeout_ticks,
            defaults.election_timeout_ticks
        );
        assert_eq!(config.metrics_listen, defaults.metrics_listen);
        assert_eq!(config.require_login, defaults.require_login);
        assert_eq!(config.superusers, defaults.superusers);
        assert_eq!(config.insecure, defaults.insecure);
        assert!(config.tls.is_none());
    }

    #[test]
    fn metrics_on_the_broker_port_are_refused() {
        let mut config = BrokerConfig::default();
        config.metrics_listen = Some(config.listen);
        assert_eq!(
            config.validate(),
            Err(ConfigError::MetricsOnBrokerPort(config.listen))
        );
    }

    #[test]
    fn a_bad_peer_is_refused_with_its_text() {
        assert_eq!(
            parse_peers(&["x=127.0.0.1:1"]),
            Err(ConfigError::BadPeer("x=127.0.0.1:1".into()))
        );
    }

    #[test]
    fn a_listener_beyond_loopback_needs_tls_or_insecure() {
        let mut config = BrokerConfig {
            listen: "0.0.0.0:7070".parse().unwrap(),
            ..BrokerConfig::default()
        };
        config.peers.clear();
        let err = config.clone().validate().unwrap_err();
        assert!(matches!(err, ConfigError::Insecure { what: "listen", .. }));
        assert!(err.to_string().contains("--insecure"), "{err}");
        let mut insecure = BrokerConfig {
            insecure: true,
            ..config.clone()
        };
        assert_eq!(insecure.validate(), Ok(()));
        let mut kafka = BrokerConfig {
            kafka_listen: Some("10.1.2.3:9092".parse().unwrap()),
            ..BrokerConfig::default()
        };
        assert!(matches!(
            kafka.validate(),
            Err(ConfigError::Insecure {
                what: "kafka_listen",
                ..
            })
        ));
        config.tls = Some(crate::security::TlsFiles {
            cert: "node.pem".into(),
            key: "node.key".into(),
            cluster_ca: "ca.pem".into(),
            client_ca: None,
        });
        let err = config.clone().validate().unwrap_err();
        assert!(err.to_string().contains("logins are off"), "{err}");
        config.require_login = true;
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn tls_files_come_as_a_set() {
        let partial = TlsPaths {
            cert: Some("node.pem".into()),
            ..TlsPaths::default()
        };
        assert_eq!(
            partial.into_files(),
            Err(ConfigError::IncompleteTls("tls_key, tls_cluster_ca".into()))
        );
        assert_eq!(TlsPaths::default().into_files(), Ok(None));
    }
}
