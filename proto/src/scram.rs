//! SCRAM (RFC 5802, RFC 7677): salted challenge–response authentication, both ends.
//!
//! The broker keeps only a [`ScramCredential`] per user and mechanism (salt,
//! iteration count, `StoredKey`, `ServerKey`): enough to check a client's proof and
//! to prove itself to the client, never enough to log in as the user. The native
//! protocol and the Kafka port (SASL `SCRAM-SHA-256` / `SCRAM-SHA-512`) run the same
//! exchange:
//!
//! ```text
//! client-first  n,,n=USER,r=CNONCE
//! server-first  r=CNONCE+SNONCE,s=SALT,i=ITERATIONS
//! client-final  c=biws,r=CNONCE+SNONCE,p=PROOF
//! server-final  v=SERVER_SIGNATURE   (or e=invalid-proof)
//! ```
//!
//! Not supported: channel binding (`p=` in the GS2 header is refused; TLS already
//! binds the connection), authorization identities different from the user, and
//! SASLprep of non-ASCII passwords (passwords are used as their UTF-8 bytes, which
//! equals SASLprep for ASCII).
//!
//! An unknown user gets a well-formed challenge built from a per-process secret, and
//! fails only at the proof: the exchange does not tell who exists.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::{digest, hmac, pbkdf2, rand::SecureRandom};
use std::num::NonZeroU32;

/// The fewest PBKDF2 iterations accepted (Kafka's minimum, RFC 7677's default).
pub const MIN_ITERATIONS: u32 = 4096;
/// The most accepted: a server asking for more would make the client spin.
pub const MAX_ITERATIONS: u32 = 16_384;
/// Client nonce bytes (before base64).
const NONCE_BYTES: usize = 24;
/// Salt bytes of a new credential.
const SALT_BYTES: usize = 16;
/// Longest SCRAM message accepted.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// A SCRAM mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mechanism {
    /// SCRAM-SHA-256 (RFC 7677).
    ScramSha256,
    /// SCRAM-SHA-512.
    ScramSha512,
    /// SCRAM-SHA-1, only to check the algorithm against RFC 5802's vectors.
    #[cfg(test)]
    ScramSha1,
}

impl Mechanism {
    /// Every mechanism a broker offers.
    pub const ALL: [Mechanism; 2] = [Mechanism::ScramSha256, Mechanism::ScramSha512];

    /// The SASL name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
            #[cfg(test)]
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
        }
    }

    /// The mechanism of a SASL name (case-insensitive).
    pub fn from_name(name: &str) -> Option<Mechanism> {
        Mechanism::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    fn hmac(self) -> hmac::Algorithm {
        match self {
            Mechanism::ScramSha256 => hmac::HMAC_SHA256,
            Mechanism::ScramSha512 => hmac::HMAC_SHA512,
            #[cfg(test)]
            Mechanism::ScramSha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        }
    }

    fn pbkdf2(self) -> pbkdf2::Algorithm {
        match self {
            Mechanism::ScramSha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            Mechanism::ScramSha512 => pbkdf2::PBKDF2_HMAC_SHA512,
            #[cfg(test)]
            Mechanism::ScramSha1 => pbkdf2::PBKDF2_HMAC_SHA1,
        }
    }

    fn digest(self) -> &'static digest::Algorithm {
        match self {
            Mechanism::ScramSha256 => &digest::SHA256,
            Mechanism::ScramSha512 => &digest::SHA512,
            #[cfg(test)]
            Mechanism::ScramSha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
        }
    }

    fn key_len(self) -> usize {
        self.digest().output_len()
    }

    fn mac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        hmac::sign(&hmac::Key::new(self.hmac(), key), data)
            .as_ref()
            .to_vec()
    }

    fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0u8; self.key_len()];
        let iterations = NonZeroU32::new(iterations.max(1)).unwrap_or(NonZeroU32::MIN);
        pbkdf2::derive(self.pbkdf2(), iterations, salt, password, &mut out);
        out
    }
}

/// Why a SCRAM exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A message is not what SCRAM allows at this step.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client asked for channel binding, which is not supported.
    #[error("SCRAM channel binding is not supported")]
    ChannelBinding,
    /// The nonce does not continue the client's.
    #[error("SCRAM nonce mismatch")]
    NonceMismatch,
    /// The server asked for too few or too many iterations.
    #[error("SCRAM iteration count {0} is outside {MIN_ITERATIONS}..={MAX_ITERATIONS}")]
    Iterations(u32),
    /// Wrong user name or password (the server does not say which).
    #[error("authentication failed: invalid user name or password")]
    InvalidProof,
    /// The server's signature is wrong: it does not hold this user's credential.
    #[error("the server failed to prove it knows the credential (server signature mismatch)")]
    ServerSignature,
    /// The server refused (its `e=` attribute).
    #[error("the server refused the authentication: {0}")]
    Server(String),
    /// The system's random source failed.
    #[error("no randomness available")]
    Random,
}

/// What a broker stores for one user and mechanism.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramCredential {
    /// The mechanism.
    pub mechanism: Mechanism,
    /// PBKDF2 salt.
    pub salt: Vec<u8>,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// `H(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: Vec<u8>,
}

impl ScramCredential {
    /// The credential of `password` with this salt and iteration count.
    pub fn derive(
        mechanism: Mechanism,
        password: &str,
        salt: &[u8],
        iterations: u32,
    ) -> ScramCredential {
        let salted = mechanism.salted_password(password.as_bytes(), salt, iterations);
        let client_key = mechanism.mac(&salted, b"Client Key");
        ScramCredential {
            mechanism,
            salt: salt.to_vec(),
            iterations,
            stored_key: digest::digest(mechanism.digest(), &client_key)
                .as_ref()
                .to_vec(),
            server_key: mechanism.mac(&salted, b"Server Key"),
        }
    }

    /// A credential of `password` with a fresh random salt.
    pub fn generate(
        mechanism: Mechanism,
        password: &str,
        iterations: u32,
    ) -> Result<ScramCredential, ScramError> {
        let mut salt = [0u8; SALT_BYTES];
        ring::rand::SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| ScramError::Random)?;
        Ok(ScramCredential::derive(
            mechanism, password, &salt, iterations,
        ))
    }
}

/// A random printable nonce.
pub fn random_nonce() -> Result<String, ScramError> {
    let mut bytes = [0u8; NONCE_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ScramError::Random)?;
    Ok(B64.encode(bytes))
}

/// `=` and `,` in a user name, escaped as SCRAM requires.
fn escape_name(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

fn unescape_name(name: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("=3D") => out.push('='),
            Some("=2C") => out.push(','),
            _ => return Err(ScramError::Malformed("bad escape in the user name")),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The value of attribute `key` (`k=value`) in a comma-separated part.
fn attribute(part: Option<&str>, key: char) -> Result<&str, ScramError> {
    let part = part.ok_or(ScramError::Malformed("missing attribute"))?;
    let mut chars = part.chars();
    if chars.next() == Some(key) && chars.next() == Some('=') {
        Ok(&part[2..])
    } else {
        Err(ScramError::Malformed("unexpected attribute"))
    }
}

fn text(message: &[u8]) -> Result<&str, ScramError> {
    if message.len() > MAX_MESSAGE_BYTES {
        return Err(ScramError::Malformed("message too long"));
    }
    std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))
}

fn printable_nonce(nonce: &str) -> Result<(), ScramError> {
    if nonce.is_empty()
        || !nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
    {
        return Err(ScramError::Malformed("bad nonce"));
    }
    Ok(())
}

/// The client's side of one exchange.
#[derive(Debug)]
pub struct ScramClient {
    mechanism: Mechanism,
    password: String,
    nonce: String,
    first_bare: String,
    /// Set after the server-first message: the signature the server must send.
    expected_server_signature: Option<Vec<u8>>,
}

impl ScramClient {
    /// Starts an exchange for `user` with a random nonce.
    pub fn new(mechanism: Mechanism, user: &str, password: &str) -> Result<Self, ScramError> {
        Ok(Self::with_nonce(
            mechanism,
            user,
            password,
            &random_nonce()?,
        ))
    }

    /// Starts an exchange with a given nonce (test vectors).
    pub fn with_nonce(mechanism: Mechanism, user: &str, password: &str, nonce: &str) -> Self {
        ScramClient {
            mechanism,
            password: password.to_owned(),
            nonce: nonce.to_owned(),
            first_bare: format!("n={},r={nonce}", escape_name(user)),
            expected_server_signature: None,
        }
    }

    /// The client-first message.
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.first_bare).into_bytes()
    }

    /// Answers the server-first message with the client-final message (the proof).
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, ScramError> {
        let server_first = text(server_first)?;
        if let Some(error) = server_first.strip_prefix("e=") {
            return Err(ScramError::Server(error.to_owned()));
        }
        let mut parts = server_first.split(',');
        let nonce = attribute(parts.next(), 'r')?;
        let salt = B64
            .decode(attribute(parts.next(), 's')?)
            .map_err(|_| ScramError::Malformed("salt is not base64"))?;
        let iterations: u32 = attribute(parts.next(), 'i')?
            .parse()
            .map_err(|_| ScramError::Malformed("bad iteration count"))?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::NonceMismatch);
        }
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(ScramError::Iterations(iterations));
        }
        let m = self.mechanism;
        let salted = m.salted_password(self.password.as_bytes(), &salt, iterations);
        let client_key = m.mac(&salted, b"Client Key");
        let stored_key = digest::digest(m.digest(), &client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.first_bare);
        let signature = m.mac(stored_key.as_ref(), auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = m.mac(&salted, b"Server Key");
        self.expected_server_signature = Some(m.mac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks the server-final message: the server proved it holds the credential.
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let server_final = text(server_final)?;
        if let Some(error) = server_final.strip_prefix("e=") {
            return Err(ScramError::Server(error.to_owned()));
        }
        let signature = B64
            .decode(attribute(server_final.split(',').next(), 'v')?)
            .map_err(|_| ScramError::Malformed("signature is not base64"))?;
        match &self.expected_server_signature {
            Some(expected) if equal_in_constant_time(expected, &signature) => Ok(()),
            Some(_) => Err(ScramError::ServerSignature),
            None => Err(ScramError::Malformed("server-final before server-first")),
        }
    }
}

/// The server's side after the client-first message: waiting for the proof.
#[derive(Debug)]
pub struct ScramServer {
    user: String,
    credential: ScramCredential,
    /// False when the user is unknown: the proof is then refused whatever it is.
    known: bool,
    client_nonce: String,
    nonce: String,
    auth_prefix: String,
}

impl ScramServer {
    /// Reads the client-first message; `lookup` finds the user's credential. Returns
    /// the exchange and the server-first message.
    pub fn start(
        mechanism: Mechanism,
        client_first: &[u8],
        lookup: impl FnOnce(&str) -> Option<ScramCredential>,
    ) -> Result<(ScramServer, Vec<u8>), ScramError> {
        Self::start_with_nonce(mechanism, client_first, lookup, &random_nonce()?)
    }

    /// Like [`start`](ScramServer::start) with a given server nonce (test vectors).
    pub fn start_with_nonce(
        mechanism: Mechanism,
        client_first: &[u8],
        lookup: impl FnOnce(&str) -> Option<ScramCredential>,
        server_nonce: &str,
    ) -> Result<(ScramServer, Vec<u8>), ScramError> {
        let client_first = text(client_first)?;
        let mut gs2 = client_first.splitn(3, ',');
        match gs2.next() {
            Some("n") | Some("y") => {}
            Some(p) if p.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("bad GS2 header")),
        }
        if gs2.next() != Some("") {
            return Err(ScramError::Malformed(
                "an authorization identity is not supported",
            ));
        }
        let bare = gs2.next().ok_or(ScramError::Malformed("no user name"))?;
        let mut parts = bare.split(',');
        let user = unescape_name(attribute(parts.next(), 'n')?)?;
        let client_nonce = attribute(parts.next(), 'r')?;
        printable_nonce(client_nonce)?;
        // Extensions (Kafka's tokenauth=true) are not supported: refuse them.
        if parts.next().is_some() {
            return Err(ScramError::Malformed("SCRAM extensions are not supported"));
        }
        if user.is_empty() {
            return Err(ScramError::Malformed("empty user name"));
        }
        let (credential, known) = match lookup(&user) {
            Some(c) if c.mechanism == mechanism => (c, true),
            _ => (decoy_credential(mechanism, &user), false),
        };
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&credential.salt),
            credential.iterations
        );
        let auth_prefix = format!("{bare},{server_first}");
        Ok((
            ScramServer {
                user,
                credential,
                known,
                client_nonce: client_nonce.to_owned(),
                nonce,
                auth_prefix,
            },
            server_first.into_bytes(),
        ))
    }

    /// The user this exchange is for (not yet authenticated).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Checks the client's proof. On success returns the authenticated user and
    /// the server-final message.
    pub fn finish(self, client_final: &[u8]) -> Result<(String, Vec<u8>), ScramError> {
        let client_final = text(client_final)?;
        let (without_proof, proof) = client_final
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut parts = without_proof.split(',');
        let binding = attribute(parts.next(), 'c')?;
        // "n,," and "y,," base64-encoded: no channel binding.
        if binding != "biws" && binding != "eSws" {
            return Err(ScramError::ChannelBinding);
        }
        // librdkafka before 2.6.1 sends the client nonce once more in front of the
        // combined one (its issue 4895; Kafka accepts it too). The server's part is
        // there either way, which is what keeps a proof from being replayed.
        let echoed = attribute(parts.next(), 'r')?;
        let doubled = echoed
            .strip_prefix(self.client_nonce.as_str())
            .is_some_and(|rest| rest == self.nonce);
        if echoed != self.nonce && !doubled {
            return Err(ScramError::NonceMismatch);
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        let m = self.credential.mechanism;
        if proof.len() != m.key_len() {
            return Err(ScramError::InvalidProof);
        }
        let auth_message = format!("{},{without_proof}", self.auth_prefix);
        let signature = m.mac(&self.credential.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
        let stored_key = digest::digest(m.digest(), &client_key);
        let matches = equal_in_constant_time(stored_key.as_ref(), &self.credential.stored_key);
        if !matches || !self.known {
            return Err(ScramError::InvalidProof);
        }
        let server_signature = m.mac(&self.credential.server_key, auth_message.as_bytes());
        Ok((
            self.user,
            format!("v={}", B64.encode(server_signature)).into_bytes(),
        ))
    }
}

/// Whether two byte strings are equal, in a time that depends only on their lengths
/// (a proof compared byte by byte with an early exit would leak how much matched).
fn equal_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A stable made-up credential for an unknown user, so the challenge looks the same
/// as a real one (same salt every time for the same name within this process).
fn decoy_credential(mechanism: Mechanism, user: &str) -> ScramCredential {
    static SECRET: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    let secret = SECRET.get_or_init(|| {
        let mut s = [0u8; 32];
        let _ = ring::rand::SystemRandom::new().fill(&mut s);
        s
    });
    let salt = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), user.as_bytes());
    ScramCredential {
        mechanism,
        salt: salt.as_ref()[..SALT_BYTES].to_vec(),
        iterations: MIN_ITERATIONS,
        stored_key: vec![0; mechanism.key_len()],
        server_key: vec![0; mechanism.key_len()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run_vector(
        mechanism: Mechanism,
        client_nonce: &str,
        server_nonce: &str,
        salt_b64: &str,
        client_final: &str,
        server_final: &str,
    ) {
        let salt = B64.decode(salt_b64).unwrap();
        let credential = ScramCredential::derive(mechanism, "pencil", &salt, 4096);
        let mut client = ScramClient::with_nonce(mechanism, "user", "pencil", client_nonce);
        let first = client.client_first();
        assert_eq!(first, format!("n,,n=user,r={client_nonce}").into_bytes());
        let (server, server_first) = ScramServer::start_with_nonce(
            mechanism,
            &first,
            |u| (u == "user").then(|| credential.clone()),
            server_nonce,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(server_first.clone()).unwrap(),
            format!("r={client_nonce}{server_nonce},s={salt_b64},i=4096")
        );
        let final_message = client.client_final(&server_first).unwrap();
        assert_eq!(
            String::from_utf8(final_message.clone()).unwrap(),
            client_final
        );
        let (user, answer) = server.finish(&final_message).unwrap();
        assert_eq!(user, "user");
        assert_eq!(String::from_utf8(answer.clone()).unwrap(), server_final);
        client.verify_server_final(&answer).unwrap();
    }

    #[test]
    fn rfc_5802_sha1_vector() {
        run_vector(
            Mechanism::ScramSha1,
            "fyko+d2lbbFgONRv9qkxdawL",
            "3rfcNHYJY1ZVvWVs7j",
            "QSXCR+Q6sek8bf92",
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
            "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
        );
    }

    #[test]
    fn rfc_7677_sha256_vector() {
        run_vector(
            Mechanism::ScramSha256,
            "rOprNGfwEbeRWgbNEkqO",
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            "W22ZaJ0SNY7soEsUEjb6gQ==",
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
        );
    }

    fn exchange(
        mechanism: Mechanism,
        stored: &ScramCredential,
        user: &str,
        password: &str,
    ) -> Result<String, ScramError> {
        let mut client = ScramClient::new(mechanism, user, password)?;
        let (server, first) = ScramServer::start(mechanism, &client.client_first(), |u| {
            (u == "alice,=admin").then(|| stored.clone())
        })?;
        let last = client.client_final(&first)?;
        let (user, answer) = server.finish(&last)?;
        client.verify_server_final(&answer)?;
        Ok(user)
    }

    #[test]
    fn sha512_round_trip_and_refusals() {
        let m = Mechanism::ScramSha512;
        let stored = ScramCredential::generate(m, "s3cret", 4096).unwrap();
        assert_eq!(stored.stored_key.len(), 64);
        assert_eq!(
            exchange(m, &stored, "alice,=admin", "s3cret").unwrap(),
            "alice,=admin"
        );
        assert_eq!(
            exchange(m, &stored, "alice,=admin", "wrong"),
            Err(ScramError::InvalidProof)
        );
        assert_eq!(
            exchange(m, &stored, "mallory", "s3cret"),
            Err(ScramError::InvalidProof),
            "an unknown user fails at the proof, like a wrong password"
        );
        // A SHA-256 exchange against a SHA-512 credential is refused.
        assert_eq!(
            exchange(Mechanism::ScramSha256, &stored, "alice,=admin", "s3cret"),
            Err(ScramError::InvalidProof)
        );
    }

    /// librdkafka before 2.6.1 repeats its nonce in front of the combined one and
    /// signs that; accepted. Any other nonce is not.
    #[test]
    fn the_old_librdkafka_nonce_is_accepted_and_others_are_not() {
        let m = Mechanism::ScramSha256;
        let stored = ScramCredential::derive(m, "pencil", b"salt-salt", 4096);
        let sign = |echoed: &str| {
            let (server, first) = ScramServer::start_with_nonce(
                m,
                b"n,,n=user,r=abc",
                |_| Some(stored.clone()),
                "XYZ",
            )
            .unwrap();
            assert_eq!(&first[..10], b"r=abcXYZ,s");
            // The proof as a client computes it over the message it sends.
            let salted = m.salted_password(b"pencil", b"salt-salt", 4096);
            let client_key = m.mac(&salted, b"Client Key");
            let stored_key = digest::digest(m.digest(), &client_key);
            let without_proof = format!("c=biws,r={echoed}");
            let auth = format!(
                "n=user,r=abc,{},{without_proof}",
                String::from_utf8(first).unwrap()
            );
            let signature = m.mac(stored_key.as_ref(), auth.as_bytes());
            let proof: Vec<u8> = client_key
                .iter()
                .zip(&signature)
                .map(|(k, s)| k ^ s)
                .collect();
            server.finish(format!("{without_proof},p={}", B64.encode(proof)).as_bytes())
        };
        assert!(sign("abcXYZ").is_ok());
        assert!(sign("abcabcXYZ").is_ok());
        assert_eq!(sign("abcXY"), Err(ScramError::NonceMismatch));
        assert_eq!(sign("xxxabcXYZ"), Err(ScramError::NonceMismatch));
    }

    #[test]
    fn a_server_that_does_not_hold_the_credential_is_caught() {
        let m = Mechanism::ScramSha256;
        let mut client = ScramClient::new(m, "u", "pw").unwrap();
        let real = ScramCredential::generate(m, "pw", 4096).unwrap();
        let (_server, first) =
            ScramServer::start(m, &client.client_first(), |_| Some(real.clone())).unwrap();
        client.client_final(&first).unwrap();
        assert_eq!(
            client.verify_server_final(b"v=AAAA"),
            Err(ScramError::ServerSignature)
        );
        assert_eq!(
            client.verify_server_final(b"e=invalid-proof"),
            Err(ScramError::Server("invalid-proof".into()))
        );
    }

    #[test]
    fn malformed_client_messages_are_errors() {
        let m = Mechanism::ScramSha256;
        let c = ScramCredential::generate(m, "pw", 4096).unwrap();
        for bad in [
            &b""[..],
            b"n,,",
            b"x,,n=u,r=abc",
            b"p=tls-unique,,n=u,r=abc",
            b"n,a=admin,n=u,r=abc",
            b"n,,n=u",
            b"n,,n=u=ZZ,r=abc",
            b"n,,n=,r=abc",
            b"n,,n=u,r=a,b",
            b"n,,n=u,r=abc,tokenauth=true",
            b"n,,r=abc,n=u",
            b"\xff\xfe",
        ] {
            assert!(
                ScramServer::start(m, bad, |_| Some(c.clone())).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let (server, _) = ScramServer::start(m, b"n,,n=u,r=abc", |_| Some(c.clone())).unwrap();
        assert!(server.finish(b"c=biws,r=other,p=AAAA").is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever a client sends, the server answers with an error or a message,
        /// never a panic.
        #[test]
        fn arbitrary_client_messages_never_panic(
            first in proptest::collection::vec(any::<u8>(), 0..200),
            last in proptest::collection::vec(any::<u8>(), 0..200),
            prefix in "n,,n=[a-z=,]{0,8},r=[!-~]{0,12}",
        ) {
            let m = Mechanism::ScramSha256;
            let c = ScramCredential::derive(m, "pw", b"salt", 4096);
            let _ = ScramServer::start(m, &first, |_| Some(c.clone()));
            if let Ok((server, _)) = ScramServer::start(m, prefix.as_bytes(), |_| Some(c.clone())) {
                let _ = server.finish(&last);
            }
        }

        /// Whatever a server sends, the client answers with an error or a message.
        #[test]
        fn arbitrary_server_messages_never_panic(
            first in proptest::collection::vec(any::<u8>(), 0..200),
            last in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut client = ScramClient::with_nonce(Mechanism::ScramSha256, "u", "pw", "abc");
            let _ = client.client_final(&first);
            let _ = client.verify_server_final(&last);
        }
    }
}
