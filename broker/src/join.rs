//! Joining an existing cluster: a node started with `--join` asks the cluster's
//! leader to add it as a learner, then receives the log like any follower.
//!
//! The request goes to each given address in turn and follows `NOT_LEADER`
//! redirects; it repeats (harmless: the leader answers at once for a member it
//! knows) with a growing pause until the leader has committed the change or the
//! broker stops. A refusal that retrying cannot fix (a node id the cluster knows
//! with another data directory, an address another member listens on) stops the
//! broker with that reason: a node the cluster will never add has nothing to do.

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use prost::Message as _;
use raftmq_proto::pb::{self, ErrorCode};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::raft::NodeId;

const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const PAUSE_MIN: Duration = Duration::from_millis(200);
const PAUSE_MAX: Duration = Duration::from_secs(5);

/// What this node says about itself when it joins.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// Its node id.
    pub node_id: NodeId,
    /// Where it listens.
    pub address: SocketAddr,
    /// Its data directory's incarnation.
    pub incarnation: u64,
}

/// Asks `seeds` until the cluster has added this node; `Err` when it refused it
/// for good (the reason, for the operator).
pub async fn run(
    seeds: Vec<SocketAddr>,
    me: JoinRequest,
    security: std::sync::Arc<crate::security::Security>,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let mut pause = PAUSE_MIN;
    let mut said_waiting = false;
    loop {
        // Each round asks every seed once, jumping to a leader named on the way.
        let mut queue: std::collections::VecDeque<SocketAddr> = seeds.iter().copied().collect();
        let mut attempts = 0;
        while let Some(target) = queue.pop_front() {
            attempts += 1;
            if attempts > seeds.len() + 8 {
                break;
            }
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = tokio::time::timeout(ATTEMPT_TIMEOUT, ask(&security, target, &me)) => r,
            };
            match outcome {
                Ok(Ok(done)) if done.voter => {
                    tracing::info!(
                        via = %target,
                        cluster_id = %format!("{:016x}", done.cluster_id),
                        membership_index = done.membership_index,
                        "this node already is a voter of the cluster; --join changed nothing"
                    );
                    return Ok(());
                }
                Ok(Ok(done)) => {
                    tracing::info!(
                        via = %target,
                        cluster_id = %format!("{:016x}", done.cluster_id),
                        membership_index = done.membership_index,
                        "joined the cluster as a learner; `raftmq cluster add-node {}` makes it a voter",
                        me.node_id.0
                    );
                    return Ok(());
                }
                Ok(Err(e)) if e.code == ErrorCode::NotLeader as i32 => {
                    if let Ok(leader) = e.leader_address.parse() {
                        queue.push_front(leader);
                    }
                }
                // Certificates can be fixed and reloaded without a restart: keep asking.
                Ok(Err(e)) if e.code == ErrorCode::ClusterAuthorizationFailed as i32 => {
                    tracing::warn!(via = %target, error = %e.message, "cannot join yet");
                }
                Ok(Err(e)) if !retriable(&e) => {
                    tracing::error!(
                        via = %target,
                        error = %e.message,
                        "the cluster refused to add this node; stopping"
                    );
                    return Err(format!(
                        "the cluster (via {target}) refused to add this node: {}",
                        e.message
                    ));
                }
                Ok(Err(e)) => tracing::debug!(via = %target, error = %e.message, "join deferred"),
                Err(_) => tracing::debug!(via = %target, "join request timed out"),
            }
        }
        if !said_waiting {
            said_waiting = true;
            tracing::info!(seeds = ?seeds, "waiting for the cluster to add this node");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(PAUSE_MAX);
    }
}

fn retriable(e: &pb::Error) -> bool {
    matches!(
        ErrorCode::try_from(e.code),
        Ok(ErrorCode::NotLeader
            | ErrorCode::NotReady
            | ErrorCode::Busy
            | ErrorCode::Timeout
            | ErrorCode::ShuttingDown
            | ErrorCode::MembershipChangeInProgress
            | ErrorCode::StorageError)
    )
}

/// One JoinCluster request; `Err` carries the broker's error (or a made-up
/// NOT_READY for a connection failure, which is retried).
async fn ask(
    security: &crate::security::Security,
    target: SocketAddr,
    me: &JoinRequest,
) -> Result<pb::JoinClusterResponse, pb::Error> {
    let io = |e: std::io::Error| match crate::security::tls_failure(&e) {
        Some(tls) => pb::Error::new(
            ErrorCode::ClusterAuthorizationFailed,
            format!(
                "TLS with {target} failed: {tls} (a node needs a certificate signed by the \
                 cluster CA, for its own address)"
            ),
        ),
        None => pb::Error::new(ErrorCode::NotReady, e.to_string()),
    };
    let stream = security.connect_addr(target).await.map_err(io)?;
    let mut framed = Framed::new(stream, raftmq_proto::frame::codec(16 << 20));
    let request = pb::Request {
        correlation_id: 1,
        api_version: 1,
        on_behalf_of: String::new(),
        body: Some(pb::request::Body::JoinCluster(pb::JoinClusterRequest {
            node_id: me.node_id.0,
            address: me.address.to_string(),
            incarnation: me.incarnation,
        })),
    };
    framed
        .send(bytes::Bytes::from(request.encode_to_vec()))
        .await
        .map_err(io)?;
    let frame = framed
        .next()
        .await
        .ok_or_else(|| pb::Error::new(ErrorCode::NotReady, "connection closed"))?
        .map_err(io)?;
    let response = pb::Response::decode(frame.freeze())
        .map_err(|e| pb::Error::new(ErrorCode::NotReady, e.to_string()))?;
    if let Some(error) = response.error {
        return Err(error);
    }
    match response.body {
        Some(pb::response::Body::JoinCluster(done)) => Ok(done),
        _ => Err(pb::Error::new(ErrorCode::NotReady, "unexpected answer")),
    }
}
