//! One connection's login: who it is, and the SASL exchange that says so.
//!
//! Both protocols run the same [`Session`]: the native port through its
//! `SaslHandshake`/`SaslAuthenticate` requests, the Kafka port through Kafka's APIs
//! of the same names. A connection with a certificate from the cluster CA is a
//! node, one with a client certificate is the user its common name names; the
//! others log in with SCRAM-SHA-256/512 (or PLAIN, over TLS only) when the broker
//! requires it, and are anonymous when it does not.

use raftmq_proto::pb::{self, ErrorCode};
use raftmq_proto::scram::{Mechanism, ScramError, ScramServer};

use super::users::UserDirectory;
use super::CertificateIdentity;

/// Who a connection acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Nobody logged in, on a broker that does not require it.
    Anonymous,
    /// Another node of the cluster (its certificate's common name).
    Node(String),
    /// A user: logged in with SCRAM or PLAIN, or by a client certificate.
    User(String),
}

impl Principal {
    /// The name ACLs give it: `User:NAME` (`User:ANONYMOUS`, `Node:NAME`).
    pub fn acl_name(&self) -> String {
        match self {
            Principal::Anonymous => "User:ANONYMOUS".into(),
            Principal::Node(name) => format!("Node:{name}"),
            Principal::User(name) => format!("User:{name}"),
        }
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::Anonymous => f.write_str("ANONYMOUS"),
            Principal::Node(name) => write!(f, "node {name:?}"),
            Principal::User(name) => write!(f, "User:{name}"),
        }
    }
}

/// A SASL mechanism a connection chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// SCRAM-SHA-256 or SCRAM-SHA-512.
    Scram(Mechanism),
    /// PLAIN (RFC 4616): the password itself, accepted over TLS only.
    Plain,
}

/// Why a login step failed. After any of these the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// A mechanism the broker does not offer on this connection.
    #[error("unsupported SASL mechanism {0:?} (offered: {1})")]
    UnsupportedMechanism(String, String),
    /// A step out of order (authenticate before handshake, a second login...).
    #[error("illegal SASL state: {0}")]
    IllegalState(&'static str),
    /// Wrong user name or password, or a malformed message.
    #[error("authentication failed: {0}")]
    Failed(String),
    /// The user is unknown here, but this node has not caught up with the
    /// cluster's users yet (just started): try again shortly.
    #[error("this node is still catching up on the cluster's users; retry")]
    NotReady,
}

impl SaslError {
    /// The native protocol's error.
    pub fn to_pb(&self) -> pb::Error {
        match self {
            SaslError::NotReady => pb::Error::not_ready(self.to_string(), None),
            _ => pb::Error::new(ErrorCode::AuthenticationFailed, self.to_string()),
        }
    }
}

/// What one SASL message produced.
#[derive(Debug)]
pub enum SaslStep {
    /// Send these bytes and wait for the client's next message.
    Continue(Vec<u8>),
    /// Logged in: send these bytes (SCRAM's server-final message; empty for PLAIN).
    Done(Vec<u8>),
}

enum Exchange {
    None,
    Chosen(SaslMechanism),
    ScramFirstDone(ScramServer),
}

/// One connection's login state.
pub struct Session {
    principal: Option<Principal>,
    /// Logged in by password: the user must still exist at each request.
    by_password: bool,
    /// The user table version last checked against.
    checked_version: u64,
    exchange: Exchange,
    /// PLAIN is offered (the connection is TLS).
    plain_allowed: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The session of a connection that presented `identity`; `require_login`
    /// when the broker admits no anonymous client.
    pub fn new(identity: &CertificateIdentity, require_login: bool, tls: bool) -> Session {
        let principal = match identity {
            CertificateIdentity::Node(name) => Some(Principal::Node(name.clone())),
            CertificateIdentity::Client(name) => Some(Principal::User(name.clone())),
            CertificateIdentity::None if require_login => None,
            CertificateIdentity::None => Some(Principal::Anonymous),
        };
        Session {
            principal,
            by_password: false,
            checked_version: 0,
            exchange: Exchange::None,
            plain_allowed: tls,
        }
    }

    /// Who the connection is, once known.
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    /// The mechanisms offered on this connection.
    pub fn mechanisms(&self) -> Vec<String> {
        let mut names: Vec<String> = Mechanism::ALL.iter().map(|m| m.name().into()).collect();
        if self.plain_allowed {
            names.push("PLAIN".into());
        }
        names
    }

    /// The client picks a mechanism.
    pub fn handshake(&mut self, mechanism: &str) -> Result<(), SaslError> {
        if self.by_password || !matches!(self.exchange, Exchange::None) {
            return Err(SaslError::IllegalState("a second SASL handshake"));
        }
        let chosen = if mechanism.eq_ignore_ascii_case("PLAIN") && self.plain_allowed {
            SaslMechanism::Plain
        } else if let Some(m) = Mechanism::from_name(mechanism) {
            SaslMechanism::Scram(m)
        } else {
            return Err(SaslError::UnsupportedMechanism(
                mechanism.to_owned(),
                self.mechanisms().join(", "),
            ));
        };
        self.exchange = Exchange::Chosen(chosen);
        Ok(())
    }

    /// One message of the exchange.
    pub fn authenticate(
        &mut self,
        users: &UserDirectory,
        message: &[u8],
    ) -> Result<SaslStep, SaslError> {
        match std::mem::replace(&mut self.exchange, Exchange::None) {
            Exchange::None => Err(SaslError::IllegalState(
                "SaslAuthenticate before SaslHandshake",
            )),
            Exchange::Chosen(SaslMechanism::Scram(m)) => {
                let mut unknown_while_catching_up = false;
                let (server, first) = ScramServer::start(m, message, |user| {
                    let found = users.credential(user, m);
                    unknown_while_catching_up = found.is_none() && !users.is_current();
                    found
                })
                .map_err(scram_failure)?;
                if unknown_while_catching_up {
                    return Err(SaslError::NotReady);
                }
                self.exchange = Exchange::ScramFirstDone(server);
                Ok(SaslStep::Continue(first))
            }
            Exchange::ScramFirstDone(server) => {
                let (user, last) = server.finish(message).map_err(scram_failure)?;
                self.logged_in(users, user);
                Ok(SaslStep::Done(last))
            }
            Exchange::Chosen(SaslMechanism::Plain) => {
                let user = check_plain(users, message)?;
                self.logged_in(users, user);
                Ok(SaslStep::Done(Vec::new()))
            }
        }
    }

    fn logged_in(&mut self, users: &UserDirectory, user: String) {
        self.principal = Some(Principal::User(user));
        self.by_password = true;
        self.checked_version = users.version();
    }

    /// Whether the connection may send requests now: it is logged in (or needs
    /// not), and a user who logged in by password still exists.
    pub fn admit(&mut self, users: &UserDirectory) -> Result<&Principal, pb::Error> {
        let Some(principal) = &self.principal else {
            return Err(pb::Error::new(
                ErrorCode::AuthenticationFailed,
                "this broker requires a login: `raftmq --user NAME` with the password in \
                 RAFTMQ_PASSWORD (SCRAM-SHA-256 or SCRAM-SHA-512), or a client \
                 certificate (--tls-cert and --tls-key); Kafka clients set \
                 sasl.mechanism and security.protocol",
            ));
        };
        if self.by_password {
            let version = users.version();
            if version != self.checked_version {
                if let Principal::User(name) = principal {
                    if !users.exists(name) {
                        return Err(pb::Error::new(
                            ErrorCode::AuthenticationFailed,
                            format!("user {name:?} no longer exists"),
                        ));
                    }
                }
                self.checked_version = version;
            }
        }
        Ok(principal)
    }
}

fn scram_failure(e: ScramError) -> SaslError {
    match e {
        ScramError::InvalidProof => SaslError::Failed("invalid user name or password".into()),
        other => SaslError::Failed(other.to_string()),
    }
}

/// PLAIN: `authzid NUL authcid NUL password`, checked against the user's SCRAM
/// credential (the same derivation, compared without early exit).
fn check_plain(users: &UserDirectory, message: &[u8]) -> Result<String, SaslError> {
    let checked = check_plain_credentials(users, message);
    match checked {
        Err(SaslError::Failed(_)) if !users.is_current() => Err(SaslError::NotReady),
        other => other,
    }
}

fn check_plain_credentials(users: &UserDirectory, message: &[u8]) -> Result<String, SaslError> {
    let malformed = || SaslError::Failed("malformed PLAIN message".into());
    let text = std::str::from_utf8(message).map_err(|_| malformed())?;
    let mut parts = text.split('\0');
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    if !authzid.is_empty() && authzid != user {
        return Err(SaslError::Failed(
            "an authorization identity other than the user is not supported".into(),
        ));
    }
    let invalid = || SaslError::Failed("invalid user name or password".into());
    let stored = users
        .credential(user, Mechanism::ScramSha512)
        .or_else(|| users.credential(user, Mechanism::ScramSha256))
        .ok_or_else(invalid)?;
    let derived = raftmq_proto::scram::ScramCredential::derive(
        stored.mechanism,
        password,
        &stored.salt,
        stored.iterations,
    );
    let same = derived.stored_key.len() == stored.stored_key.len()
        && derived
            .stored_key
            .iter()
            .zip(&stored.stored_key)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(user.to_owned())
    } else {
        Err(invalid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftmq_proto::scram::ScramClient;

    fn directory() -> UserDirectory {
        let users = UserDirectory::default();
        users.set_current(true);
        let mut table = super::super::users::UserTable::new();
        table.insert(
            "alice".into(),
            super::super::users::derive_all("s3cret", 0).unwrap(),
        );
        users.replace(table);
        users
    }

    #[test]
    fn scram_login_then_deletion_refuses_the_next_request() {
        let users = directory();
        let mut session = Session::new(&CertificateIdentity::None, true, false);
        assert!(session.admit(&users).is_err(), "a login is required");
        session.handshake("SCRAM-SHA-512").unwrap();
        let mut client = ScramClient::new(Mechanism::ScramSha512, "alice", "s3cret").unwrap();
        let SaslStep::Continue(first) = session
            .authenticate(&users, &client.client_first())
            .unwrap()
        else {
            panic!("SCRAM has two steps");
        };
        let last = client.client_final(&first).unwrap();
        let SaslStep::Done(verifier) = session.authenticate(&users, &last).unwrap() else {
            panic!("done after the proof");
        };
        client.verify_server_final(&verifier).unwrap();
        assert_eq!(
            session.admit(&users).unwrap(),
            &Principal::User("alice".into())
        );
        assert!(session.handshake("SCRAM-SHA-256").is_err(), "one login");
        users.replace(Default::default());
        let refused = session.admit(&users).unwrap_err();
        assert!(refused.message.contains("no longer exists"));
    }

    #[test]
    fn an_unknown_user_on_a_node_still_catching_up_is_told_to_retry() {
        let users = UserDirectory::default();
        let mut session = Session::new(&CertificateIdentity::None, true, false);
        session.handshake("SCRAM-SHA-256").unwrap();
        let client = ScramClient::new(Mechanism::ScramSha256, "alice", "pw").unwrap();
        let refused = session
            .authenticate(&users, &client.client_first())
            .unwrap_err();
        assert_eq!(refused, SaslError::NotReady);
        assert_eq!(refused.to_pb().code, ErrorCode::NotReady as i32);
        users.set_current(true);
        let mut session = Session::new(&CertificateIdentity::None, true, false);
        session.handshake("SCRAM-SHA-256").unwrap();
        assert!(
            session.authenticate(&users, &client.client_first()).is_ok(),
            "caught up: a decoy challenge, refused only at the proof"
        );
    }

    #[test]
    fn wrong_passwords_and_bad_steps_fail() {
        let users = directory();
        let mut session = Session::new(&CertificateIdentity::None, true, false);
        assert!(matches!(
            session.authenticate(&users, b"x"),
            Err(SaslError::IllegalState(_))
        ));
        assert!(
            matches!(
                session.handshake("PLAIN"),
                Err(SaslError::UnsupportedMechanism(..))
            ),
            "PLAIN only over TLS"
        );
        let mut tls = Session::new(&CertificateIdentity::None, true, true);
        tls.handshake("PLAIN").unwrap();
        assert!(tls.authenticate(&users, b"\0alice\0wrong").is_err());
        let mut tls = Session::new(&CertificateIdentity::None, true, true);
        tls.handshake("plain").unwrap();
        assert!(matches!(
            tls.authenticate(&users, b"\0alice\0s3cret"),
            Ok(SaslStep::Done(_))
        ));
        assert_eq!(tls.principal(), Some(&Principal::User("alice".into())));
        let mut anonymous = Session::new(&CertificateIdentity::None, false, false);
        assert_eq!(anonymous.admit(&users).unwrap(), &Principal::Anonymous);
        let mut node = Session::new(&CertificateIdentity::Node("n1".into()), true, true);
        assert_eq!(node.admit(&users).unwrap(), &Principal::Node("n1".into()));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Any sequence of handshakes and messages a client can send: an answer or
        /// an error, never a panic, and never a login without the password.
        #[test]
        fn arbitrary_login_attempts_never_panic_nor_log_in(
            steps in proptest::collection::vec(
                (proptest::bool::ANY, proptest::collection::vec(proptest::num::u8::ANY, 0..120)),
                0..6,
            ),
            mechanism in proptest::sample::select(vec![
                "SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN", "plain", "GSSAPI", "",
            ]),
            tls in proptest::bool::ANY,
        ) {
            let users = directory();
            let mut session = Session::new(&CertificateIdentity::None, true, tls);
            for (handshake, bytes) in steps {
                let outcome = if handshake {
                    session.handshake(mechanism).map(|()| None)
                } else {
                    session.authenticate(&users, &bytes).map(Some)
                };
                if outcome.is_err() {
                    break;
                }
            }
            proptest::prop_assert!(session.admit(&users).is_err(), "logged in without the password");
        }
    }
}
