//! The error codes a healthy single node never gives: `NotLeader` from a follower
//! (with the leader's address), `Timeout` and `Busy` from a leader that has lost its
//! quorum. Three in-process brokers on loopback ephemeral ports.

mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use common::raw::{batch, code, Conn};
use raftmq_broker::config::BrokerConfig;
use raftmq_broker::raft::NodeId;
use raftmq_broker::Broker;
use raftmq_proto::pb::{self, request::Body as Req, response::Body as Resp, ErrorCode};

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn start_three(dir: &std::path::Path) -> BTreeMap<u64, Broker> {
    let peers: BTreeMap<NodeId, SocketAddr> = (1..=3).map(|i| (NodeId(i), free_addr())).collect();
    let mut brokers = BTreeMap::new();
    for (&id, &addr) in &peers {
        let config = BrokerConfig {
            node_id: id,
            data_dir: dir.join(format!("n{}", id.0)),
            listen: addr,
            peers: peers.clone(),
            segment_bytes: 8 << 20,
            max_batch_bytes: 1 << 20,
            max_frame_bytes: 2 << 20,
            request_timeout_ms: 300,
            max_pending_proposals: 2,
            // A leader cut off from its followers keeps leading for one to two
            // election timeouts (check-quorum): 1 s leaves the test room to fill
            // the pending bound before it steps down, on a loaded machine too.
            election_timeout_ticks: 100,
            ..BrokerConfig::default()
        };
        brokers.insert(id.0, Broker::start(config).await.expect("broker starts"));
    }
    brokers
}

async fn leader_of(brokers: &BTreeMap<u64, Broker>) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for (id, broker) in brokers {
            let mut conn = Conn::connect(broker).await;
            let response = conn
                .call(Req::ClusterStatus(pb::ClusterStatusRequest {}))
                .await;
            if let Some(Resp::ClusterStatus(s)) = response.body {
                if s.role == "leader" {
                    return *id;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn produce(value: &str) -> Req {
    Req::Produce(pb::ProduceRequest {
        topic: "t".into(),
        queue: 0,
        acks: pb::Acks::Quorum as i32,
        batch: batch(&[value]),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_redirect_and_a_leader_without_quorum_times_out_then_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let mut brokers = start_three(dir.path()).await;
    let leader = leader_of(&brokers).await;
    let leader_addr = brokers[&leader].local_addr;
    let mut conn = Conn::connect(&brokers[&leader]).await;
    let created = conn
        .call_when_leader(Req::CreateTopic(pb::CreateTopicRequest {
            name: "t".into(),
            queues: 1,
            ..Default::default()
        }))
        .await;
    assert_eq!(code(&created), ErrorCode::None, "{created:?}");

    // A follower names the leader.
    let follower = *brokers.keys().find(|id| **id != leader).unwrap();
    let mut to_follower = Conn::connect(&brokers[&follower]).await;
    let redirected = to_follower.call(produce("x")).await;
    assert_eq!(code(&redirected), ErrorCode::NotLeader);
    assert_eq!(
        redirected.error.unwrap().leader_address,
        leader_addr.to_string()
    );
    drop(to_follower);

    // The followers stop: nothing can commit any more.
    let followers: Vec<u64> = brokers.keys().copied().filter(|id| *id != leader).collect();
    let stopping = followers
        .iter()
        .map(|id| brokers.remove(id).unwrap().stop());
    futures::future::join_all(stopping).await;
    // Two proposals fill the bound of pending proposals (one of the node's own,
    // proposed meanwhile, may take a place); the next are refused at once with
    // Busy. The pending ones are answered when their time is up (or when the
    // leader, having lost its quorum, steps down): never acknowledged.
    let mut sent = Vec::new();
    for value in ["a", "b", "c", "d"] {
        sent.push(conn.send(produce(value)).await);
    }
    let mut answers = std::collections::BTreeMap::new();
    for _ in 0..sent.len() {
        let response = conn.recv().await;
        answers.insert(response.correlation_id, code(&response));
    }
    assert_eq!(answers.keys().copied().collect::<Vec<_>>(), sent);
    assert!(
        answers.values().any(|c| *c == ErrorCode::Busy),
        "no request refused as busy: {answers:?}"
    );
    assert!(
        answers.values().all(|c| matches!(
            c,
            ErrorCode::Busy | ErrorCode::Timeout | ErrorCode::NotLeader
        )),
        "a produce without quorum was answered otherwise: {answers:?}"
    );
    for (_, broker) in brokers {
        broker.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_that_cannot_commit_in_time_is_answered_with_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut brokers = start_three(dir.path()).await;
    let leader = leader_of(&brokers).await;
    let mut conn = Conn::connect(&brokers[&leader]).await;
    let created = conn
        .call_when_leader(Req::CreateTopic(pb::CreateTopicRequest {
            name: "t".into(),
            queues: 1,
            ..Default::default()
        }))
        .await;
    assert_eq!(code(&created), ErrorCode::None, "{created:?}");
    let followers: Vec<u64> = brokers.keys().copied().filter(|id| *id != leader).collect();
    for id in followers {
        brokers.remove(&id).unwrap().stop().await;
    }
    // The request timeout (300 ms) is shorter than the election timeout after which
    // check-quorum makes the leader step down (300-600 ms of ticks), so the first
    // proposal right after the followers stopped times out.
    let response = conn.call(produce("late")).await;
    assert_eq!(code(&response), ErrorCode::Timeout, "{response:?}");
    for (_, broker) in brokers {
        broker.stop().await;
    }
}
