//! TLS pieces both ends share: reading PEM files and building rustls configurations
//! (the ring provider, TLS 1.2 and 1.3).
//!
//! Brokers use these for their listeners and for the links they open to other nodes
//! (where they present their node certificate); clients use
//! [`client_config`] to trust the cluster's CA and, optionally, to present a client
//! certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

pub use rustls;
pub use tokio_rustls;

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM.
    #[error("{what} {path}: {reason}")]
    File {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it is unusable.
        reason: String,
    },
    /// rustls refused the material (a key that does not match its certificate, ...).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// A certificate verifier could not be built (no usable CA certificate).
    #[error("TLS client verifier: {0}")]
    Verifier(String),
    /// A host name or address that cannot be checked against a certificate.
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
}

/// The crypto provider every configuration uses: ring, which builds with a C
/// compiler alone (rustls marks it deprecated for lacking post-quantum key exchange;
/// aws-lc-rs would add that at the cost of a much heavier build).
///
/// AES-128-GCM comes first: it is the cheapest suite per byte with AES
/// instructions (10 rounds against AES-256's 14) and 128-bit security is what
/// TLS 1.3 requires; servers pick by their own order ([`prefer_own_order`]), so
/// Kafka clients that list AES-256 first get it too. AES-256-GCM and
/// ChaCha20-Poly1305 stay on offer for peers that want them.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as suite;
    let mut provider = rustls::crypto::ring::default_provider();
    let rank = |s: &rustls::SupportedCipherSuite| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 1,
        _ => 2,
    };
    // A stable sort: the rest keep ring's order.
    provider.cipher_suites.sort_by_key(rank);
    debug_assert_eq!(provider.cipher_suites[0], suite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// Makes a server choose the cipher suite by its own order of preference
/// ([`provider`]) rather than the client's.
pub fn prefer_own_order(config: &mut rustls::ServerConfig) {
    config.ignore_client_order = true;
}

/// Every certificate in a PEM file (a chain: leaf first).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |reason: String| TlsError::File {
        what: "certificate file",
        path: path.to_owned(),
        reason,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_error("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        what: "private key file",
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// A root store holding every certificate of a PEM file.
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::File {
            what: "CA file",
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// A client configuration trusting the CAs in `ca` and presenting the certificate
/// chain and key of `identity` when given (a node's certificate on links to other
/// nodes, a client certificate for clients that log in with one).
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let roots = load_roots(ca)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder.with_client_auth_cert(load_certs(cert)?, load_key(key)?)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The name a server's certificate must carry when reached at `address`
/// (`host:port`, `[v6]:port` or a bare host): its IP address or DNS name.
pub fn server_name(address: &str) -> Result<ServerName<'static>, TlsError> {
    let host = match address.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => address,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|_| TlsError::ServerName(address.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_of_addresses() {
        assert_eq!(
            server_name("127.0.0.1:7070").unwrap(),
            ServerName::try_from("127.0.0.1").unwrap()
        );
        assert_eq!(
            server_name("[::1]:7070").unwrap(),
            ServerName::try_from("::1").unwrap()
        );
        assert_eq!(
            server_name("broker-1.example:9093").unwrap(),
            ServerName::try_from("broker-1.example").unwrap()
        );
        assert!(server_name("bad name:1").is_err());
    }

    #[test]
    fn missing_and_empty_files_name_the_file() {
        let dir = std::env::temp_dir().join(format!("raftmq-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = load_certs(&empty).unwrap_err().to_string();
        assert!(
            e.contains("empty.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = load_key(&dir.join("missing.pem")).unwrap_err().to_string();
        assert!(e.contains("missing.pem"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
