//! Users: their SCRAM credentials as the metadata group replicates them, and the
//! copy every connection of this node checks logins against.
//!
//! The metadata group's state machine holds the authoritative table (written by
//! `UpsertUser`/`DeleteUser` commands, kept in snapshots); its node task publishes
//! each new version into [`UserDirectory`], which connections read without going
//! through the node. A user deleted anywhere is gone from every node's directory
//! once that node applies the deletion, and connections logged in as that user are
//! refused from their next request.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::{Buf, BufMut, BytesMut};
use raftmq_proto::pb;
use raftmq_proto::scram::{Mechanism, ScramCredential};

/// Every user's credentials, one per mechanism, by user name.
pub type UserTable = BTreeMap<String, Vec<ScramCredential>>;

/// The iteration count of credentials derived by the broker.
pub const DEFAULT_ITERATIONS: u32 = raftmq_proto::scram::MIN_ITERATIONS;

/// Longest user name accepted.
pub const MAX_NAME_BYTES: usize = 255;

/// Why a user operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// A name that cannot be a user's.
    #[error("invalid user name {0:?}: 1 to 255 bytes, no control characters")]
    BadName(String),
    /// No password and no credentials, or malformed credentials.
    #[error("{0}")]
    BadCredentials(String),
}

/// Checks a user name.
pub fn validate_name(name: &str) -> Result<(), UserError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
        return Err(UserError::BadName(name.to_owned()));
    }
    Ok(())
}

/// The credentials of `password` for every mechanism (PBKDF2: a few milliseconds;
/// run off the async workers).
pub fn derive_all(password: &str, iterations: u32) -> Result<Vec<ScramCredential>, UserError> {
    if password.is_empty() {
        return Err(UserError::BadCredentials("an empty password".into()));
    }
    let iterations = if iterations == 0 {
        DEFAULT_ITERATIONS
    } else {
        iterations
    };
    if !(raftmq_proto::scram::MIN_ITERATIONS..=raftmq_proto::scram::MAX_ITERATIONS)
        .contains(&iterations)
    {
        return Err(UserError::BadCredentials(format!(
            "iterations must be within {}..={}",
            raftmq_proto::scram::MIN_ITERATIONS,
            raftmq_proto::scram::MAX_ITERATIONS
        )));
    }
    Mechanism::ALL
        .into_iter()
        .map(|m| {
            ScramCredential::generate(m, password, iterations)
                .map_err(|e| UserError::BadCredentials(e.to_string()))
        })
        .collect()
}

fn mechanism_code(m: Mechanism) -> u8 {
    match m {
        Mechanism::ScramSha256 => 1,
        Mechanism::ScramSha512 => 2,
    }
}

fn mechanism_of(code: u8) -> Option<Mechanism> {
    match code {
        1 => Some(Mechanism::ScramSha256),
        2 => Some(Mechanism::ScramSha512),
        _ => None,
    }
}

fn put_bytes(buf: &mut BytesMut, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).expect("credential fields are at most 64 bytes");
    buf.put_u16_le(len);
    buf.put_slice(bytes);
}

/// Appends `credentials` in the command and snapshot encoding: a count, then per
/// credential its mechanism, iterations, salt, StoredKey and ServerKey.
pub fn encode_credentials(buf: &mut BytesMut, credentials: &[ScramCredential]) {
    buf.put_u8(credentials.len() as u8);
    for c in credentials {
        buf.put_u8(mechanism_code(c.mechanism));
        buf.put_u32_le(c.iterations);
        put_bytes(buf, &c.salt);
        put_bytes(buf, &c.stored_key);
        put_bytes(buf, &c.server_key);
    }
}

/// Reads what [`encode_credentials`] wrote; `None` if it is damaged.
pub fn decode_credentials(buf: &mut &[u8]) -> Option<Vec<ScramCredential>> {
    fn bytes(buf: &mut &[u8]) -> Option<Vec<u8>> {
        if buf.remaining() < 2 {
            return None;
        }
        let len = buf.get_u16_le() as usize;
        if buf.remaining() < len || len > 128 {
            return None;
        }
        let out = buf[..len].to_vec();
        buf.advance(len);
        Some(out)
    }
    if buf.remaining() < 1 {
        return None;
    }
    let count = buf.get_u8() as usize;
    if count > Mechanism::ALL.len() {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        if buf.remaining() < 5 {
            return None;
        }
        let mechanism = mechanism_of(buf.get_u8())?;
        let iterations = buf.get_u32_le();
        out.push(ScramCredential {
            mechanism,
            iterations,
            salt: bytes(buf)?,
            stored_key: bytes(buf)?,
            server_key: bytes(buf)?,
        });
    }
    Some(out)
}

/// Credentials a client sent in an `UpsertUserRequest`, checked.
pub fn credentials_from_pb(
    credentials: &[pb::StoredCredential],
) -> Result<Vec<ScramCredential>, UserError> {
    let bad = |why: &str| UserError::BadCredentials(why.to_owned());
    let mut out: Vec<ScramCredential> = Vec::new();
    for c in credentials {
        let mechanism = Mechanism::from_name(&c.mechanism)
            .ok_or_else(|| bad("unknown SCRAM mechanism in credentials"))?;
        let key_len = match mechanism {
            Mechanism::ScramSha256 => 32,
            _ => 64,
        };
        if c.stored_key.len() != key_len || c.server_key.len() != key_len {
            return Err(bad("a StoredKey or ServerKey of the wrong length"));
        }
        if c.salt.is_empty() || c.salt.len() > 64 {
            return Err(bad("a salt of 1 to 64 bytes"));
        }
        if !(raftmq_proto::scram::MIN_ITERATIONS..=raftmq_proto::scram::MAX_ITERATIONS)
            .contains(&c.iterations)
        {
            return Err(bad("iterations outside 4096..=16384"));
        }
        if out.iter().any(|o| o.mechanism == mechanism) {
            return Err(bad("two credentials for one mechanism"));
        }
        out.push(ScramCredential {
            mechanism,
            salt: c.salt.to_vec(),
            iterations: c.iterations,
            stored_key: c.stored_key.to_vec(),
            server_key: c.server_key.to_vec(),
        });
    }
    if out.is_empty() {
        return Err(bad("no credentials"));
    }
    out.sort_by_key(|c| c.mechanism);
    Ok(out)
}

/// Credentials in their wire form.
pub fn credentials_to_pb(credentials: &[ScramCredential]) -> Vec<pb::StoredCredential> {
    credentials
        .iter()
        .map(|c| pb::StoredCredential {
            mechanism: c.mechanism.name().to_owned(),
            salt: c.salt.clone().into(),
            iterations: c.iterations,
            stored_key: c.stored_key.clone().into(),
            server_key: c.server_key.clone().into(),
        })
        .collect()
}

/// This node's copy of the user table, for logins.
#[derive(Default)]
pub struct UserDirectory {
    table: RwLock<Arc<UserTable>>,
    /// Bumped on every replacement: a connection re-checks its user only when it
    /// changed.
    version: AtomicU64,
    /// Whether the table is the cluster's as of the last commit this node heard of
    /// from a leader (false on a node that just started and may still be replaying).
    current: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for UserDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: the keys stay out of logs.
        f.debug_struct("UserDirectory")
            .field("version", &self.version())
            .finish_non_exhaustive()
    }
}

impl UserDirectory {
    /// Publishes a new table.
    pub fn replace(&self, table: UserTable) {
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        self.version.fetch_add(1, Ordering::Release);
    }

    /// Says whether the table is up to date with the cluster.
    pub fn set_current(&self, current: bool) {
        self.current.store(current, Ordering::Release);
    }

    /// Whether the table is up to date with the cluster: an unknown user is then
    /// really unknown.
    pub fn is_current(&self) -> bool {
        self.current.load(Ordering::Acquire)
    }

    /// The table's version (changes whenever it is replaced).
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// `user`'s credential for `mechanism`.
    pub fn credential(&self, user: &str, mechanism: Mechanism) -> Option<ScramCredential> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        table
            .get(user)?
            .iter()
            .find(|c| c.mechanism == mechanism)
            .cloned()
    }

    /// Whether `user` exists.
    pub fn exists(&self, user: &str) -> bool {
        self.table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(user)
    }

    /// Whether no user exists yet.
    pub fn is_empty(&self) -> bool {
        self.table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_round_trip_and_damage_is_refused() {
        let creds = derive_all("pw", 0).unwrap();
        assert_eq!(creds.len(), 2);
        let mut buf = BytesMut::new();
        encode_credentials(&mut buf, &creds);
        let bytes = buf.freeze();
        assert_eq!(decode_credentials(&mut &bytes[..]), Some(creds.clone()));
        for cut in 0..bytes.len() {
            assert_eq!(decode_credentials(&mut &bytes[..cut]), None, "cut at {cut}");
        }
        assert_eq!(
            credentials_from_pb(&credentials_to_pb(&creds)).unwrap(),
            creds
        );
        assert!(credentials_from_pb(&[]).is_err());
        assert!(derive_all("", 0).is_err());
        assert!(derive_all("pw", 10).is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("alice").is_ok());
        assert!(validate_name("CN=alice,O=acme").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a\nb").is_err());
        assert!(validate_name(&"x".repeat(256)).is_err());
    }
}
