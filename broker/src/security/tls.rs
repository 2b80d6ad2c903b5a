//! TLS on a node's ports and on the links it opens to other nodes.
//!
//! One certificate and key per node serve both directions: clients and other nodes
//! check it against the cluster CA, and the node presents it when it connects to
//! another node. A connection that presents a certificate signed by the **cluster
//! CA** is a node (it may replicate, vote and join); one signed by the **client CA**
//! is a client whose identity is the certificate's common name; one without a
//! certificate is anonymous until it logs in. The two CAs must differ, or every
//! client with a certificate would count as a node.
//!
//! The loaded material sits behind a lock so [`NodeTls::reload`] (SIGHUP) swaps it
//! without a restart: connections accepted or opened afterwards use the new files,
//! established ones keep theirs.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use raftmq_proto::tls::{self as shared, rustls, TlsError};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpStream;

use super::Stream;

/// Longest a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The files a node's TLS is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The node's certificate chain (PEM, leaf first), signed by the cluster CA.
    pub cert: PathBuf,
    /// The node's private key (PEM).
    pub key: PathBuf,
    /// The cluster CA: other nodes' certificates chain to it.
    pub cluster_ca: PathBuf,
    /// The CA of client certificates, when clients may log in with one.
    pub client_ca: Option<PathBuf>,
}

/// Who is on the other end, as far as TLS can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateIdentity {
    /// No certificate (or no TLS).
    None,
    /// Another node of the cluster (a certificate from the cluster CA), by its
    /// certificate's common name.
    Node(String),
    /// A client with a certificate from the client CA, by common name.
    Client(String),
}

struct Loaded {
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
    node_verifier: Arc<dyn ClientCertVerifier>,
    /// When this node's certificate expires (Unix seconds).
    not_after: i64,
}

/// A node's TLS state.
pub struct NodeTls {
    files: TlsFiles,
    loaded: RwLock<Arc<Loaded>>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl NodeTls {
    /// Reads the files; fails with what is wrong with which file.
    pub fn load(files: TlsFiles) -> Result<NodeTls, TlsError> {
        let loaded = load(&files)?;
        Ok(NodeTls {
            files,
            loaded: RwLock::new(Arc::new(loaded)),
        })
    }

    /// Reads the files again; on failure the previous material stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = Arc::new(load(&self.files)?);
        let not_after = loaded.not_after;
        *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = loaded;
        tracing::info!(not_after, "TLS certificates reloaded");
        Ok(())
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// When this node's certificate expires, in Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.current().not_after
    }

    /// Completes the handshake of an accepted connection and says who it is.
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<(Stream, CertificateIdentity)> {
        let loaded = self.current();
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, loaded.acceptor.accept(tcp))
            .await
            .map_err(|_| std::io::Error::other("TLS handshake timed out"))??;
        let identity = match tls.get_ref().1.peer_certificates() {
            Some([leaf, intermediates @ ..]) => {
                let name = common_name(leaf).unwrap_or_default();
                let node = loaded
                    .node_verifier
                    .verify_client_cert(leaf, intermediates, UnixTime::now())
                    .is_ok();
                if node {
                    CertificateIdentity::Node(name)
                } else if name.is_empty() {
                    return Err(std::io::Error::other(
                        "client certificate without a common name",
                    ));
                } else {
                    CertificateIdentity::Client(name)
                }
            }
            _ => CertificateIdentity::None,
        };
        Ok((Stream::Server(Box::new(tls)), identity))
    }

    /// Opens TLS to another node at `address`, presenting this node's certificate
    /// and checking the other's against the cluster CA.
    pub async fn connect(&self, tcp: TcpStream, address: &str) -> std::io::Result<Stream> {
        let name = shared::server_name(address).map_err(std::io::Error::other)?;
        let connector = self.current().connector.clone();
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| std::io::Error::other("TLS handshake timed out"))??;
        Ok(Stream::Client(Box::new(tls)))
    }
}

fn load(files: &TlsFiles) -> Result<Loaded, TlsError> {
    let provider = shared::provider();
    let chain = shared::load_certs(&files.cert)?;
    let key = shared::load_key(&files.key)?;
    let not_after = expiry(&chain[0]).ok_or_else(|| TlsError::File {
        what: "certificate file",
        path: files.cert.clone(),
        reason: "the certificate does not parse as X.509".into(),
    })?;
    let cluster_roots = Arc::new(shared::load_roots(&files.cluster_ca)?);
    let mut all_roots = (*cluster_roots).clone();
    if let Some(client_ca) = &files.client_ca {
        // Compared by content, not by path: a copy of the cluster CA under another
        // name would make every client certificate a node's.
        let cluster_certs = shared::load_certs(&files.cluster_ca)?;
        let client_certs = shared::load_certs(client_ca)?;
        if client_certs.iter().any(|c| cluster_certs.contains(c)) {
            return Err(TlsError::Verifier(
                "the client CA must differ from the cluster CA (a client certificate \
                 would otherwise count as a node's)"
                    .into(),
            ));
        }
        for cert in client_certs {
            all_roots.add(cert).map_err(|e| TlsError::File {
                what: "client CA file",
                path: client_ca.clone(),
                reason: e.to_string(),
            })?;
        }
    }
    let verifier = |roots: Arc<rustls::RootCertStore>, optional: bool| {
        let builder = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
        let builder = if optional {
            builder.allow_unauthenticated()
        } else {
            builder
        };
        builder
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))
    };
    let node_verifier = verifier(cluster_roots.clone(), false)?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier(Arc::new(all_roots), true)?)
        .with_single_cert(chain.clone(), key.clone_key())?;
    raftmq_proto::tls::prefer_own_order(&mut server);
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(cluster_roots)
        .with_client_auth_cert(chain, key)?;
    Ok(Loaded {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        node_verifier,
        not_after,
    })
}

/// A certificate's subject common name.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// A certificate's expiry, in Unix seconds.
fn expiry(cert: &CertificateDer<'_>) -> Option<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.validity().not_after.timestamp())
}
