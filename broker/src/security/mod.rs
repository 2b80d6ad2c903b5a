//! Who may talk to a node, and over what: TLS on its ports and on the links to
//! other nodes ([`tls`]), and the streams both give ([`Stream`]).
//!
//! One [`Security`] per broker, shared by the native port, the Kafka port, the Raft
//! links, the join loop and request forwarding, so every connection a node accepts
//! or opens goes through the same checks. See docs/security.md.

pub mod acl;
pub mod login_guard;
pub mod quota;
pub mod session;
pub mod stream;
pub mod tls;
pub mod users;

use std::net::SocketAddr;

use tokio::net::TcpStream;

pub use session::{Principal, SaslError, SaslStep, Session};
pub use stream::Stream;
pub use tls::{CertificateIdentity, NodeTls, TlsFiles};
pub use users::UserDirectory;

use std::collections::BTreeSet;
use std::sync::Arc;

use raftmq_proto::pb;

/// The TLS error inside an I/O error, when TLS is what failed (a certificate
/// refused by either side, an alert received), as text.
pub fn tls_failure(e: &std::io::Error) -> Option<String> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<raftmq_proto::tls::rustls::Error>())
        .map(ToString::to_string)
}

/// The answer to a request that ACLs would refuse on a node still catching up.
pub fn catching_up() -> pb::Error {
    pb::Error::new(
        pb::ErrorCode::NotReady,
        "this node is catching up with the cluster's users and ACLs; retry",
    )
}

/// A broker's transport security, logins and who may do what.
#[derive(Debug, Default)]
pub struct Security {
    tls: Option<NodeTls>,
    users: Arc<UserDirectory>,
    /// Every client must log in (SCRAM, PLAIN over TLS, or a client certificate).
    require_login: bool,
    /// Users allowed everything, ACLs or not.
    superusers: BTreeSet<String>,
    acls: Arc<acl::AclDirectory>,
    quotas: quota::Quotas,
    connections: Option<Arc<quota::ConnectionLimits>>,
    login_guard: login_guard::LoginGuard,
}

impl Security {
    /// No TLS: plaintext everywhere, every connection may act as a node.
    pub fn plaintext() -> Security {
        Security::default()
    }

    /// TLS with these files (read now; refused with the file at fault).
    pub fn with_tls(files: TlsFiles) -> Result<Security, raftmq_proto::tls::TlsError> {
        Ok(Security {
            tls: Some(NodeTls::load(files)?),
            ..Security::default()
        })
    }

    /// Requires every client to log in; `superusers` may do anything.
    pub fn requiring_login(mut self, superusers: impl IntoIterator<Item = String>) -> Security {
        self.require_login = true;
        self.superusers = superusers.into_iter().collect();
        self
    }

    /// Byte-rate quotas per principal and connection limits.
    pub fn with_limits(
        mut self,
        quotas: quota::Quotas,
        connections: Arc<quota::ConnectionLimits>,
    ) -> Security {
        self.quotas = quotas;
        self.connections = Some(connections);
        self
    }

    /// Failed logins per client address.
    pub fn login_guard(&self) -> &login_guard::LoginGuard {
        &self.login_guard
    }

    /// The byte-rate quotas.
    pub fn quotas(&self) -> &quota::Quotas {
        &self.quotas
    }

    /// A place for a new connection from `address` (always, without limits).
    pub fn admit_connection(
        &self,
        address: std::net::IpAddr,
    ) -> Result<Option<quota::ConnectionSlot>, String> {
        match &self.connections {
            Some(limits) => limits.admit(address).map(Some),
            None => Ok(None),
        }
    }

    /// Logs a connection refused by [`Security::admit_connection`]: as a warning
    /// at most once every 10 s per process (a client retrying in a loop would
    /// flood the log), else at debug level. The client sees only a closed
    /// connection, so the broker's log is where an operator learns why.
    pub fn log_refused_connection(peer: std::net::SocketAddr, listener: &str, why: &str) {
        static LAST_WARNING: std::sync::Mutex<Option<std::time::Instant>> =
            std::sync::Mutex::new(None);
        let now = std::time::Instant::now();
        let warn = {
            let mut last = LAST_WARNING.lock().unwrap_or_else(|e| e.into_inner());
            let due =
                last.is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(10));
            if due {
                *last = Some(now);
            }
            due
        };
        if warn {
            tracing::warn!(%peer, listener, reason = %why, "connection refused");
        } else {
            tracing::debug!(%peer, listener, reason = %why, "connection refused");
        }
    }

    /// Whether clients must log in.
    pub fn require_login(&self) -> bool {
        self.require_login
    }

    /// This node's copy of the user table.
    pub fn users(&self) -> &Arc<UserDirectory> {
        &self.users
    }

    /// A new connection's login state.
    pub fn session(&self, identity: &CertificateIdentity) -> Session {
        Session::new(identity, self.require_login, self.tls.is_some())
    }

    /// Whether `principal` may do anything.
    pub fn is_superuser(&self, principal: &Principal) -> bool {
        match principal {
            Principal::Node(_) => true,
            Principal::User(name) => self.superusers.contains(name),
            Principal::Anonymous => !self.require_login,
        }
    }

    /// This node's copy of the ACLs.
    pub fn acls(&self) -> &Arc<acl::AclDirectory> {
        &self.acls
    }

    /// Whether this node's users and ACLs are those of the cluster: false while it
    /// has just started (no leader heard, or committed entries not yet applied).
    /// A refusal then may be only a change not applied yet, so it is answered
    /// `NOT_READY` (retry) rather than as an authorization failure.
    pub fn acls_current(&self) -> bool {
        self.users.is_current()
    }

    /// Whether ACLs decide what `principal` may do (logins are required and it
    /// is not a superuser or a node).
    pub fn checks_acls(&self, principal: &Principal) -> bool {
        self.require_login && !self.is_superuser(principal)
    }

    /// Whether `principal` may do `op` to a resource (true when ACLs do not apply).
    pub fn may(
        &self,
        principal: &Principal,
        resource: acl::ResourceType,
        name: &str,
        op: acl::Operation,
    ) -> bool {
        if !self.checks_acls(principal) {
            return true;
        }
        acl::allows(
            &self.acls.table(),
            &principal.acl_name(),
            resource,
            name,
            op,
        )
    }

    /// Whether `principal` may send `body`: what each request needs, checked
    /// against the ACLs when they apply. Metadata and group listings pass here
    /// and are filtered to what the principal may see (`Service`).
    pub fn authorize(
        &self,
        principal: &Principal,
        body: &pb::request::Body,
    ) -> Result<(), pb::Error> {
        use acl::{Operation as Op, ResourceType as R};
        use pb::request::Body as B;
        if !self.checks_acls(principal) {
            return Ok(());
        }
        let table = self.acls.table();
        let name = principal.acl_name();
        let check = |resource: R, target: &str, op: Op| -> Result<(), pb::Error> {
            if acl::allows(&table, &name, resource, target, op) {
                Ok(())
            } else if !self.acls_current() {
                Err(catching_up())
            } else {
                Err(acl::refusal(&name, resource, target, op))
            }
        };
        let cluster = |op: Op| check(R::Cluster, acl::CLUSTER_NAME, op);
        match body {
            B::Produce(r) => check(R::Topic, &r.topic, Op::Produce),
            // Each part is authorized again as the produce it becomes.
            B::ProduceMany(r) => r
                .parts
                .iter()
                .try_for_each(|p| check(R::Topic, &p.topic, Op::Produce)),
            B::Fetch(r) => check(R::Topic, &r.topic, Op::Consume),
            // Each part is authorized again as the fetch it becomes.
            B::FetchMany(r) => r
                .parts
                .iter()
                .try_for_each(|p| check(R::Topic, &p.topic, Op::Consume)),
            B::ListOffsets(r) => check(R::Topic, &r.topic, Op::Describe),
            B::CreateTopic(r) => {
                check(R::Topic, &r.name, Op::Create).or_else(|e| cluster(Op::Create).map_err(|_| e))
            }
            B::DeleteTopic(r) => check(R::Topic, &r.name, Op::Delete),
            B::Metadata(r) => r
                .topics
                .iter()
                .try_for_each(|t| check(R::Topic, t, Op::Describe)),
            B::JoinGroup(r) => {
                check(R::Group, &r.group, Op::Consume)?;
                r.topics
                    .iter()
                    .try_for_each(|t| check(R::Topic, t, Op::Consume))
            }
            B::Heartbeat(r) => check(R::Group, &r.group, Op::Consume),
            B::LeaveGroup(r) => check(R::Group, &r.group, Op::Consume),
            B::OffsetCommit(r) => {
                check(R::Group, &r.group, Op::Consume)?;
                r.offsets
                    .iter()
                    .try_for_each(|o| check(R::Topic, &o.topic, Op::Consume))
            }
            B::OffsetFetch(r) => check(R::Group, &r.group, Op::Describe),
            B::OffsetReset(r) => {
                check(R::Group, &r.group, Op::Consume)?;
                check(R::Topic, &r.topic, Op::Consume)
            }
            B::DescribeGroup(r) => check(R::Group, &r.group, Op::Describe),
            B::ListGroups(_) | B::InitProducer(_) => Ok(()),
            B::SaslHandshake(_) | B::SaslAuthenticate(_) => Ok(()),
            B::ClusterStatus(_) | B::ListUsers(_) | B::ListAcls(_) => cluster(Op::Describe),
            B::TransferLeader(_)
            | B::AddNode(_)
            | B::RemoveNode(_)
            | B::MoveReplicas(_)
            | B::AddDataGroups(_)
            | B::UpsertUser(_)
            | B::DeleteUser(_)
            | B::CreateAcls(_)
            | B::DeleteAcls(_)
            | B::JoinCluster(_)
            | B::AdvertiseListeners(_)
            | B::Raft(_) => cluster(Op::Alter),
        }
    }

    /// The TLS state, when TLS is on.
    pub fn tls(&self) -> Option<&NodeTls> {
        self.tls.as_ref()
    }

    /// Whether only connections with a cluster certificate may replicate, vote and
    /// join (true whenever TLS is on).
    pub fn nodes_need_certificates(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether a connection that presented `identity` may act as a node.
    pub fn is_node(&self, identity: &CertificateIdentity) -> bool {
        !self.nodes_need_certificates() || matches!(identity, CertificateIdentity::Node(_))
    }

    /// Finishes accepting a connection: the TLS handshake when TLS is on.
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<(Stream, CertificateIdentity)> {
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            Some(tls) => tls.accept(tcp).await,
            None => Ok((Stream::Plain(tcp), CertificateIdentity::None)),
        }
    }

    /// Opens a connection to another node's client port at `address`
    /// (`HOST:PORT`), over TLS with this node's certificate when TLS is on.
    pub async fn connect(&self, address: &str) -> std::io::Result<Stream> {
        let tcp = TcpStream::connect(address).await?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            Some(tls) => tls.connect(tcp, address).await,
            None => Ok(Stream::Plain(tcp)),
        }
    }

    /// [`connect`](Security::connect) to a socket address.
    pub async fn connect_addr(&self, address: SocketAddr) -> std::io::Result<Stream> {
        self.connect(&address.to_string()).await
    }
}
