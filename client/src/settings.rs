//! A client configuration file: where the brokers are and how to reach them
//! (TLS, login), so applications and the `raftmq` tool need no flags.
//!
//! ```toml
//! brokers = ["10.0.0.1:7070", "10.0.0.2:7070"]
//! tls_ca = "/etc/raftmq/cluster-ca.pem"
//! # tls_cert = "alice.pem"            # log in with a client certificate ...
//! # tls_key = "alice.key"
//! user = "alice"                      # ... or with SCRAM
//! password_file = "/etc/raftmq/alice.password"
//! sasl_mechanism = "SCRAM-SHA-512"
//! ```
//!
//! Relative paths are relative to the file's directory. A password is never read
//! from the file itself (files get copied and committed): `password_file` names a
//! file holding it, or the caller supplies it (the tool reads `RAFTMQ_PASSWORD`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{ClientConfig, ClientError, ClientTls, Credentials};

/// What a client configuration file holds (every key optional; unknown keys
/// refused).
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSettings {
    /// Bootstrap brokers, `HOST:PORT`.
    pub brokers: Option<Vec<String>>,
    /// The cluster CA (PEM): connect over TLS.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) to log in with.
    pub tls_cert: Option<PathBuf>,
    /// Its key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Log in with SCRAM as this user.
    pub user: Option<String>,
    /// A file whose first line is the user's password.
    pub password_file: Option<PathBuf>,
    /// `SCRAM-SHA-512` (default) or `SCRAM-SHA-256`.
    pub sasl_mechanism: Option<String>,
}

impl ClientSettings {
    /// Reads and checks a file; relative paths become relative to its directory.
    pub fn load(path: &Path) -> Result<ClientSettings, ClientError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ClientError::InvalidArgument(format!("client config {}: {e}", path.display()))
        })?;
        let mut settings: ClientSettings = toml::from_str(&text).map_err(|e| {
            ClientError::InvalidArgument(format!(
                "client config {}: {}",
                path.display(),
                e.message().trim()
            ))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for file in [
            &mut settings.tls_ca,
            &mut settings.tls_cert,
            &mut settings.tls_key,
            &mut settings.password_file,
        ]
        .into_iter()
        .flatten()
        {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
        Ok(settings)
    }

    /// `config` with these settings' TLS and login applied; `password` (when
    /// given) wins over `password_file`.
    pub fn apply(
        &self,
        mut config: ClientConfig,
        password: Option<String>,
    ) -> Result<ClientConfig, ClientError> {
        if let Some(ca) = &self.tls_ca {
            let identity = match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
                (None, None) => None,
                _ => {
                    return Err(ClientError::InvalidArgument(
                        "tls_cert and tls_key go together".into(),
                    ))
                }
            };
            config.tls = Some(ClientTls {
                ca: ca.clone(),
                identity,
            });
        }
        if let Some(user) = &self.user {
            let password = match (password, &self.password_file) {
                (Some(p), _) => p,
                (None, Some(file)) => std::fs::read_to_string(file)
                    .map_err(|e| {
                        ClientError::InvalidArgument(format!(
                            "password file {}: {e}",
                            file.display()
                        ))
                    })?
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
                (None, None) => {
                    return Err(ClientError::InvalidArgument(format!(
                        "user {user:?} needs a password (password_file, or RAFTMQ_PASSWORD)"
                    )))
                }
            };
            let mechanism = match self.sasl_mechanism.as_deref() {
                None => raftmq_proto::scram::Mechanism::ScramSha512,
                Some(name) => raftmq_proto::scram::Mechanism::from_name(name).ok_or_else(|| {
                    ClientError::InvalidArgument(format!("unknown SASL mechanism {name:?}"))
                })?,
            };
            config.credentials = Some(Credentials {
                user: user.clone(),
                password,
                mechanism,
            });
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_sets_brokers_tls_and_login_with_paths_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "s3cret\n").unwrap();
        let file = dir.path().join("client.toml");
        std::fs::write(
            &file,
            "brokers = [\"10.0.0.1:7070\"]\ntls_ca = \"ca.pem\"\nuser = \"alice\"\n\
             password_file = \"pw\"\nsasl_mechanism = \"SCRAM-SHA-256\"\n",
        )
        .unwrap();
        let settings = ClientSettings::load(&file).unwrap();
        assert_eq!(
            settings.brokers.as_deref(),
            Some(&["10.0.0.1:7070".to_string()][..])
        );
        let config = settings.apply(ClientConfig::default(), None).unwrap();
        assert_eq!(config.tls.unwrap().ca, dir.path().join("ca.pem"));
        let credentials = config.credentials.unwrap();
        assert_eq!(credentials.password, "s3cret");
        assert_eq!(
            credentials.mechanism,
            raftmq_proto::scram::Mechanism::ScramSha256
        );
        let from_env = settings
            .apply(ClientConfig::default(), Some("other".into()))
            .unwrap();
        assert_eq!(from_env.credentials.unwrap().password, "other");

        std::fs::write(&file, "password = \"inline\"\n").unwrap();
        let err = ClientSettings::load(&file).unwrap_err().to_string();
        assert!(err.contains("unknown field"), "{err}");
    }
}
