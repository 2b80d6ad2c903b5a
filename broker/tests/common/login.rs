//! Logging in on a raw protocol connection.

use raftmq_proto::pb::{self, request::Body as Req, response::Body as Resp, ErrorCode};
use raftmq_proto::scram::{Mechanism, ScramClient};

use super::raw::{code, Conn};

/// A SCRAM-SHA-256 login on a raw connection: the broker's answer to the proof.
pub async fn raw_login(conn: &mut Conn, user: &str, password: &str) -> pb::Response {
    let mut scram = ScramClient::new(Mechanism::ScramSha256, user, password).unwrap();
    let handshake = conn
        .call(Req::SaslHandshake(pb::SaslHandshakeRequest {
            mechanism: "SCRAM-SHA-256".into(),
        }))
        .await;
    assert_eq!(code(&handshake), ErrorCode::None);
    let first = conn
        .call(Req::SaslAuthenticate(pb::SaslAuthenticateRequest {
            auth_bytes: scram.client_first().into(),
        }))
        .await;
    if first.error.is_some() {
        // Refused before the proof (a node still catching up answers NOT_READY).
        return first;
    }
    let Some(Resp::SaslAuthenticate(first)) = first.body else {
        panic!("no server-first message: {first:?}");
    };
    let proof = scram.client_final(&first.auth_bytes).unwrap();
    let last = conn
        .call(Req::SaslAuthenticate(pb::SaslAuthenticateRequest {
            auth_bytes: proof.into(),
        }))
        .await;
    if let Some(Resp::SaslAuthenticate(done)) = &last.body {
        assert!(done.complete);
        scram
            .verify_server_final(&done.auth_bytes)
            .expect("the broker proves it holds the credential");
    }
    last
}
