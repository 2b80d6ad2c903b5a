//! TLS with real broker processes: a cluster whose links and ports all speak TLS,
//! nodes without a cluster certificate kept out, client certificates checked, and
//! certificates reloaded under load without losing an acknowledged message.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::pki::{Identity, Pki};
use common::Cluster;
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use raftmq_client::{
    Admin, Client, ClientConfig, ClientError, ClientTls, Message, Partitioner, Producer,
};
use raftmq_proto::pb::{self, request::Body as Req, ErrorCode};

fn tls_cluster(n: usize, pki: &Pki) -> Cluster {
    let node = pki.node("raftmq-node");
    let args = pki.broker_args(&node);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Cluster::start_with(n, &args)
}

fn tls_config(pki: &Pki, identity: Option<&Identity>) -> ClientConfig {
    ClientConfig {
        tls: Some(ClientTls {
            ca: pki.cluster_ca_file.clone(),
            identity: identity.map(|i| (i.cert.clone(), i.key.clone())),
        }),
        retry_timeout: Duration::from_secs(30),
        ..ClientConfig::default()
    }
}

async fn produce(client: &Client, topic: &str, from: u32, count: u32) {
    let producer = Producer::builder(client)
        .partitioner(Partitioner::RoundRobin)
        .build()
        .await
        .expect("producer");
    let mut acks = Vec::new();
    for i in from..from + count {
        acks.push(
            producer
                .send(Message::new(topic, format!("m{i}")))
                .await
                .expect("send"),
        );
    }
    for ack in acks {
        ack.await.expect("acknowledged");
    }
    producer.close().await;
}

/// The leader, as the cluster reports it over TLS.
async fn find_leader(client: &Client) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(nodes) = Admin::new(client).cluster_status().await {
            for node in nodes {
                if matches!(&node.status, Ok(s) if s.role == "leader") {
                    return node.node_id;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn values(read: std::collections::BTreeMap<u32, Vec<String>>) -> BTreeSet<String> {
    read.into_values().flatten().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_replicates_fails_over_and_refuses_plaintext_clients() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let mut cluster = tls_cluster(3, &pki);
    let client = Client::connect_with(&cluster.addrs(), tls_config(&pki, None))
        .await
        .expect("a TLS client connects");
    Admin::new(&client)
        .create_topic("t", 2)
        .await
        .expect("create");
    produce(&client, "t", 0, 2_000).await;

    // Replication runs over the TLS links: the cluster survives its leader.
    let leader = find_leader(&client).await;
    cluster.kill(leader);
    produce(&client, "t", 2_000, 2_000).await;
    let read = values(common::read_all(&client, "t", 2).await);
    assert_eq!(read.len(), 4_000, "every acknowledged message, once");

    // A plaintext client gets nowhere (and says why it gave up).
    let plain = ClientConfig {
        retry_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(1),
        ..ClientConfig::default()
    };
    let refused = Client::connect_with(&cluster.addrs(), plain).await;
    assert!(refused.is_err(), "plaintext must not reach a TLS broker");

    // A client that trusts another CA refuses the brokers' certificates at once.
    let other = Pki::new(&dir.path().join("other"));
    let err = Client::connect_with(&cluster.addrs(), tls_config(&other, None))
        .await
        .expect_err("an untrusted broker certificate is refused");
    assert!(matches!(err, ClientError::Tls(_)), "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
}

/// A raw TLS connection presenting `identity`, for requests the client library
/// never sends.
async fn raw_tls(
    pki: &Pki,
    identity: &Identity,
    addr: std::net::SocketAddr,
) -> tokio_util::codec::Framed<
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    tokio_util::codec::LengthDelimitedCodec,
> {
    let config = raftmq_proto::tls::client_config(
        &pki.cluster_ca_file,
        Some((&identity.cert, &identity.key)),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(
            raftmq_proto::tls::server_name(&addr.to_string()).unwrap(),
            tcp,
        )
        .await
        .unwrap();
    tokio_util::codec::Framed::new(tls, raftmq_proto::frame::codec(16 << 20))
}

/// Sends `request` on `conn` and returns the error it is refused with.
async fn refusal(
    conn: &mut tokio_util::codec::Framed<
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        tokio_util::codec::LengthDelimitedCodec,
    >,
    request: &pb::Request,
) -> pb::Error {
    conn.send(raftmq_proto::frame::encode_request(request))
        .await
        .unwrap();
    let answer = conn.next().await.expect("an answer").unwrap();
    let answer = pb::Response::decode(answer.freeze()).unwrap();
    answer.error.expect("refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_cluster_certificate_cannot_join_replicate_or_vote() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let mut cluster = tls_cluster(3, &pki);
    let client = Client::connect_with(&cluster.addrs(), tls_config(&pki, None))
        .await
        .unwrap();
    Admin::new(&client).create_topic("t", 1).await.unwrap();

    // 1. A node whose certificate no one here signed: its TLS handshakes fail, so it
    //    can neither join nor send a vote.
    let rogue = pki.untrusted("raftmq-node");
    let rogue_args = pki.broker_args(&rogue);
    cluster.set_extra_args(&rogue_args.iter().map(String::as_str).collect::<Vec<_>>());
    let rogue_id = cluster.add_joining_node();

    // 2. A client certificate is not a node certificate: TLS succeeds, but joining
    //    is refused with a typed error and a Raft message closes the connection.
    let alice = pki.client("alice");
    let leader = find_leader(&client).await;
    let leader_addr = cluster.nodes[(leader - 1) as usize].addr;
    let mut conn = raw_tls(&pki, &alice, leader_addr).await;
    let join = pb::Request::new(
        1,
        Req::JoinCluster(pb::JoinClusterRequest {
            node_id: 9,
            address: "127.0.0.1:1".into(),
            incarnation: 7,
        }),
    );
    let error = refusal(&mut conn, &join).await;
    assert_eq!(error.code, ErrorCode::ClusterAuthorizationFailed as i32);
    assert!(error.message.contains("cluster CA"), "{}", error.message);
    // Nor may it pass a request off as forwarded for another user.
    let mut forwarded = pb::Request::new(
        2,
        Req::DeleteTopic(pb::DeleteTopicRequest { name: "t".into() }),
    );
    forwarded.on_behalf_of = "admin".into();
    let error = refusal(&mut conn, &forwarded).await;
    assert_eq!(error.code, ErrorCode::ClusterAuthorizationFailed as i32);
    let vote = pb::Request::new(
        0,
        Req::Raft(pb::RaftMessage {
            from: 9,
            to: leader,
            term: 1_000,
            group_id: 0,
            ..Default::default()
        }),
    );
    conn.send(raftmq_proto::frame::encode_request(&vote))
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.next())
        .await
        .expect("the broker closes the connection");
    assert!(
        !matches!(closed, Some(Ok(_))),
        "no answer to a Raft message"
    );

    // The cluster goes on, with its three members and its leader's term unchanged
    // by the rogue's attempts.
    produce(&client, "t", 0, 500).await;
    assert_eq!(values(common::read_all(&client, "t", 1).await).len(), 500);
    let status = Admin::new(&client).cluster_status().await.unwrap();
    let members: BTreeSet<u64> = status.iter().map(|n| n.node_id).collect();
    assert!(
        !members.contains(&rogue_id),
        "the rogue node joined: {status:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(cluster.log_path(rogue_id)).unwrap();
        if log.contains("cannot join yet") && log.contains("cluster CA") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rogue node's log does not say why it cannot join: {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leader_log = std::fs::read_to_string(cluster.log_path(leader)).unwrap();
    assert!(
        leader_log.contains("without a cluster certificate"),
        "the leader logs the refused Raft message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_and_expired_client_certificates_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let cluster = tls_cluster(1, &pki);
    let alice = pki.client("alice");
    let client = Client::connect_with(&cluster.addrs(), tls_config(&pki, Some(&alice)))
        .await
        .expect("a trusted client certificate is accepted");
    Admin::new(&client).create_topic("t", 1).await.unwrap();

    for (what, identity) in [
        ("untrusted", pki.untrusted("mallory")),
        ("expired", pki.expired_client("alice")),
    ] {
        let mut config = tls_config(&pki, Some(&identity));
        config.retry_timeout = Duration::from_secs(2);
        let started = Instant::now();
        let refused = Client::connect_with(&cluster.addrs(), config).await;
        assert!(refused.is_err(), "{what} client certificate accepted");
        assert!(started.elapsed() < Duration::from_secs(20));
    }
    let topics = Admin::new(&client).list_topics().await.unwrap();
    assert_eq!(topics.len(), 1, "nothing was created by refused clients");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_on_sighup_under_load_without_losing_acknowledged_messages() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let mut cluster = tls_cluster(3, &pki);
    let client = Client::connect_with(&cluster.addrs(), tls_config(&pki, None))
        .await
        .unwrap();
    Admin::new(&client).create_topic("t", 2).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let client = client.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut sent = 0;
            // Bounded: at most 200 rounds even if the stop never comes.
            while sent < 200_000 && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                produce(&client, "t", sent, 1_000).await;
                sent += 1_000;
            }
            sent
        })
    };
    // New certificates (same CA) in place of the old files, then SIGHUP everyone,
    // while the producer runs.
    tokio::time::sleep(Duration::from_millis(300)).await;
    pki.node("raftmq-node");
    for id in 1..=3 {
        cluster.signal(id, libc::SIGHUP);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for id in 1..=3 {
        while !std::fs::read_to_string(cluster.log_path(id))
            .unwrap()
            .contains("TLS certificates reloaded")
        {
            assert!(Instant::now() < deadline, "node {id} did not reload");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = load
        .await
        .expect("every send acknowledged across the reload");
    assert!(load_ran_across(sent));
    // New connections use the new certificate: a fresh client still gets in.
    let fresh = Client::connect_with(&cluster.addrs(), tls_config(&pki, None))
        .await
        .expect("connects after the reload");
    let read = values(common::read_all(&fresh, "t", 2).await);
    assert_eq!(read.len(), sent as usize);
}

/// The producer was still sending after the reload (it ran more than one round).
fn load_ran_across(sent: u32) -> bool {
    sent >= 2_000
}

#[test]
fn a_client_ca_that_is_the_cluster_ca_under_another_name_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let node = pki.node("raftmq-node");
    let copy = dir.path().join("copy-of-cluster-ca.pem");
    std::fs::copy(&pki.cluster_ca_file, &copy).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_raftmq-broker"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(&node.cert)
        .arg("--tls-key")
        .arg(&node.key)
        .arg("--tls-cluster-ca")
        .arg(&pki.cluster_ca_file)
        .arg("--tls-client-ca")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("client CA must differ from the cluster CA"),
        "{stderr}"
    );
}
