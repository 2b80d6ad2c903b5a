//! Certificates for the security tests, made on the fly: a cluster CA, a client CA,
//! node and client certificates (for 127.0.0.1), and bad ones (another CA's, an
//! expired one).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

/// A certificate and key written as PEM files.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The CAs of one test, and the files they sign.
pub struct Pki {
    dir: PathBuf,
    cluster_ca: CertifiedIssuer<'static, KeyPair>,
    client_ca: CertifiedIssuer<'static, KeyPair>,
    pub cluster_ca_file: PathBuf,
    pub client_ca_file: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA")
}

impl Pki {
    /// A cluster CA and a client CA, written under `dir`.
    pub fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).expect("pki dir");
        let cluster_ca = ca("raftmq test cluster CA");
        let client_ca = ca("raftmq test client CA");
        let cluster_ca_file = dir.join("cluster-ca.pem");
        let client_ca_file = dir.join("client-ca.pem");
        std::fs::write(&cluster_ca_file, cluster_ca.pem()).expect("write CA");
        std::fs::write(&client_ca_file, client_ca.pem()).expect("write CA");
        Pki {
            dir: dir.to_owned(),
            cluster_ca,
            client_ca,
            cluster_ca_file,
            client_ca_file,
        }
    }

    fn write(
        &self,
        file: &str,
        cn: &str,
        issuer: &CertifiedIssuer<'static, KeyPair>,
        expired: bool,
    ) -> Identity {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, issuer).expect("sign");
        let identity = Identity {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&identity.cert, cert.pem()).expect("write cert");
        std::fs::write(&identity.key, key.serialize_pem()).expect("write key");
        identity
    }

    /// A node certificate from the cluster CA.
    pub fn node(&self, name: &str) -> Identity {
        self.write(name, name, &self.cluster_ca, false)
    }

    /// A client certificate from the client CA, logged in as `cn`.
    pub fn client(&self, cn: &str) -> Identity {
        self.write(&format!("client-{cn}"), cn, &self.client_ca, false)
    }

    /// A client certificate from the client CA that expired in 2021.
    pub fn expired_client(&self, cn: &str) -> Identity {
        self.write(&format!("expired-{cn}"), cn, &self.client_ca, true)
    }

    /// A certificate from a CA nobody here trusts.
    pub fn untrusted(&self, name: &str) -> Identity {
        let rogue = ca("rogue CA");
        self.write(&format!("rogue-{name}"), name, &rogue, false)
    }

    /// The broker flags for TLS with `node`'s certificate.
    pub fn broker_args(&self, node: &Identity) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            node.cert.display().to_string(),
            "--tls-key".into(),
            node.key.display().to_string(),
            "--tls-cluster-ca".into(),
            self.cluster_ca_file.display().to_string(),
            "--tls-client-ca".into(),
            self.client_ca_file.display().to_string(),
        ]
    }
}
