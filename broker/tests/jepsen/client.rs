//! A request router for the harness: follows the leader by node id and talks to
//! every broker on its direct address, never through a link proxy (brokers name
//! each other by proxy addresses; [`Router`] maps those back to node ids).
//!
//! Built on `raftmq_client::Client` for its pipelined connections, but with its own
//! leader tracking, so that a client is never caught in a partition meant for peers.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use raftmq_client::pb::{self, request::Body as Req, response::Body as Resp};
use raftmq_client::{Client, ClientConfig, ClientError, ServerError};

use super::cluster::Cluster;

/// Pause between attempts at the leader.
const RETRY_BACKOFF: Duration = Duration::from_millis(50);

/// Routes requests to nodes by id and to the current leader.
#[derive(Debug)]
pub struct Router {
    client: Client,
    direct: BTreeMap<u64, String>,
    aliases: HashMap<String, u64>,
    /// The leader as last learned, 0 when unknown.
    leader: AtomicU64,
    /// Next node to try when the leader is unknown.
    rotate: AtomicU64,
}

impl Router {
    /// A router for `cluster`; `request_timeout` bounds every single request.
    pub async fn new(cluster: &Cluster, request_timeout: Duration) -> Router {
        let direct = cluster.client_addrs();
        let config = ClientConfig {
            request_timeout,
            connect_timeout: Duration::from_secs(1),
            max_retries: 0,
            ..ClientConfig::default()
        };
        let bootstrap: Vec<String> = direct.values().cloned().collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            match Client::connect_with(&bootstrap, config.clone()).await {
                Ok(c) => break c,
                Err(e) => {
                    assert!(Instant::now() < deadline, "no broker answers: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        Router {
            client,
            direct,
            aliases: cluster.aliases(),
            leader: AtomicU64::new(0),
            rotate: AtomicU64::new(0),
        }
    }

    /// Node ids.
    pub fn ids(&self) -> Vec<u64> {
        self.direct.keys().copied().collect()
    }

    /// One request to node `id`, no retry.
    pub async fn call_node(&self, id: u64, body: Req) -> Result<Resp, ClientError> {
        self.client.call_address(&self.direct[&id], body).await
    }

    /// The node believed to lead, or the next one in turn.
    fn target(&self) -> u64 {
        match self.leader.load(Ordering::Relaxed) {
            0 => {
                let n = self.direct.len() as u64;
                self.rotate.fetch_add(1, Ordering::Relaxed) % n + 1
            }
            id => id,
        }
    }

    /// One attempt at the leader; learns from `NotLeader` redirects and failures.
    /// Returns the node asked with the result.
    pub async fn call_leader_once(&self, body: Req) -> (u64, Result<Resp, ClientError>) {
        let id = self.target();
        let result = self.call_node(id, body).await;
        match &result {
            Err(ClientError::Server(ServerError::NotLeader { leader_address, .. })) => {
                let next = leader_address
                    .as_ref()
                    .and_then(|a| self.aliases.get(a).copied())
                    .filter(|&l| l != id)
                    .unwrap_or(0);
                self.leader.store(next, Ordering::Relaxed);
            }
            Err(e) if e.server_error().is_none() => {
                // Transport failure or timeout: try another node next.
                let _ = self
                    .leader
                    .compare_exchange(id, 0, Ordering::Relaxed, Ordering::Relaxed);
            }
            _ => {}
        }
        (id, result)
    }

    /// Retries retriable failures at the leader until `deadline`.
    pub async fn call_leader(&self, body: Req, deadline: Instant) -> Result<Resp, ClientError> {
        loop {
            let (_, result) = self.call_leader_once(body.clone()).await;
            match result {
                Err(e) if e.is_retriable() && Instant::now() < deadline => {
                    tokio::time::sleep(RETRY_BACKOFF).await;
                }
                other => return other,
            }
        }
    }

    /// Node `id`'s Raft status, if it answers.
    pub async fn status(&self, id: u64) -> Option<pb::ClusterStatusResponse> {
        match self
            .call_node(id, Req::ClusterStatus(pb::ClusterStatusRequest {}))
            .await
        {
            Ok(Resp::ClusterStatus(s)) => Some(s),
            _ => None,
        }
    }

    /// The node that says it leads, among those that answer (the highest term wins).
    pub async fn find_leader(&self) -> Option<(u64, u64)> {
        let mut best: Option<(u64, u64)> = None;
        for id in self.ids() {
            if let Some(s) = self.status(id).await {
                if s.role == "leader" && best.is_none_or(|(_, term)| s.term > term) {
                    best = Some((id, s.term));
                }
            }
        }
        if let Some((id, _)) = best {
            self.leader.store(id, Ordering::Relaxed);
        }
        best
    }

    /// Waits until one node leads and every node in `ids` has the same commit,
    /// applied and last index, which the leader's log also ends at. Returns the
    /// statuses, or `Err` with the last ones seen after `timeout`.
    pub async fn wait_converged(
        &self,
        ids: &[u64],
        timeout: Duration,
    ) -> Result<Vec<pb::ClusterStatusResponse>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut statuses = Vec::new();
            for &id in ids {
                if let Some(s) = self.status(id).await {
                    statuses.push(s);
                }
            }
            let leaders = statuses.iter().filter(|s| s.role == "leader").count();
            let agreed = statuses.len() == ids.len()
                && leaders == 1
                && statuses.iter().all(|s| {
                    s.commit_index == statuses[0].commit_index
                        && s.applied_index == s.commit_index
                        && s.last_index == s.commit_index
                        && s.leader_id == statuses[0].leader_id
                        && s.leader_id != 0
                });
            if agreed {
                return Ok(statuses);
            }
            let last = statuses
                .iter()
                .map(|s| {
                    format!(
                        "node {} {} term {} leader {} last {} commit {} applied {}",
                        s.node_id,
                        s.role,
                        s.term,
                        s.leader_id,
                        s.last_index,
                        s.commit_index,
                        s.applied_index
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            if Instant::now() > deadline {
                return Err(last);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Creates `topic` with `queues` queues (retrying until `deadline`).
    pub async fn create_topic(&self, topic: &str, queues: u32, deadline: Instant) {
        let body = Req::CreateTopic(pb::CreateTopicRequest {
            name: topic.into(),
            queues,
            ..Default::default()
        });
        match self.call_leader(body, deadline).await {
            Ok(_) => {}
            Err(ClientError::Server(ServerError::TopicExists { .. })) => {}
            Err(e) => panic!("cannot create topic {topic}: {e}"),
        }
        let _ = self.client.refresh_metadata().await;
    }
}
