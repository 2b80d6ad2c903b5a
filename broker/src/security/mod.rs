//! Who may talk to a node, and over what: TLS on its ports and on the links to
//! other nodes ([`tls`]), and the streams both give ([`Stream`]).
//!
//! One [`Security`] per broker, shared by the native port, the Kafka port, the Raft
//! links, the join loop and request forwarding, so every connection a node accepts
//! or opens goes through the same checks. See docs/security.md.

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

use raftmq_proto::pb::{self, ErrorCode};

/// The TLS error inside an I/O error, when TLS is what failed (a certificate
/// refused by either side, an alert received), as text.
pub fn tls_failure(e: &std::io::Error) -> Option<String> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<raftmq_proto::tls::rustls::Error>())
        .map(ToString::to_string)
}

/// A broker's transport security, logins and who may do what.
#[derive(Debug, Default)]
pub struct Security {
    tls: Option<NodeTls>,
    users: Arc<UserDirectory>,
    /// Every client must log in (SCRAM, PLAIN over TLS, or a client certificate).
    require_login: bool,
    /// Users allowed everything (and the only ones who may manage users and the
    /// cluster while ACLs are not set).
    superusers: BTreeSet<String>,
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

    /// Whether `principal` may send `body`. While logins are not required
    /// everyone may do everything; with logins, managing users and the cluster's
    /// members is for superusers.
    pub fn authorize(
        &self,
        principal: &Principal,
        body: &pb::request::Body,
    ) -> Result<(), pb::Error> {
        use pb::request::Body as B;
        if self.is_superuser(principal) {
            return Ok(());
        }
        let cluster_operation = matches!(
            body,
            B::UpsertUser(_)
                | B::DeleteUser(_)
                | B::ListUsers(_)
                | B::AddNode(_)
                | B::RemoveNode(_)
                | B::MoveReplicas(_)
                | B::TransferLeader(_)
        );
        if cluster_operation {
            return Err(pb::Error::new(
                ErrorCode::ClusterAuthorizationFailed,
                format!("{principal} may not {} (superusers only)", body.api_key()),
            ));
        }
        Ok(())
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
