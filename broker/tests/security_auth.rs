//! Logins with real broker processes: SCRAM users created once and known by every
//! node, wrong passwords refused with nothing written, deleted users refused on
//! every node (their open connections too), cluster operations kept for
//! superusers, and real Kafka clients logging in with SCRAM-SHA-512 over TLS.

mod common;

use std::time::{Duration, Instant};

use common::external::{client_command, require_kcat, require_python_module, wait_output, SCRIPTS};
use common::login::raw_login;
use common::pki::Pki;
use common::raw::{batch, code, Conn};
use common::Cluster;
use raftmq_client::{Admin, Client, ClientConfig, ClientError, ClientTls, Credentials};
use raftmq_proto::pb::{self, request::Body as Req, ErrorCode};
use raftmq_proto::ServerError;

const ADMIN: (&str, &str) = ("admin", "admin-secret");
const ALLOW_TOPIC: pb::AclResourceType = pb::AclResourceType::Topic;
const ALLOW_GROUP: pb::AclResourceType = pb::AclResourceType::Group;
const PRODUCE: pb::AclOperation = pb::AclOperation::Produce;
const CONSUME: pb::AclOperation = pb::AclOperation::Consume;

/// An ACL allowing `user` `op` on the resource named `name`.
fn allow(
    user: &str,
    resource: pb::AclResourceType,
    name: &str,
    op: pb::AclOperation,
) -> pb::AclBinding {
    pb::AclBinding {
        principal: format!("User:{user}"),
        resource_type: resource as i32,
        resource_name: name.into(),
        pattern_type: pb::AclPatternType::Literal as i32,
        operation: op as i32,
        deny: false,
    }
}

fn secured_cluster(n: usize, extra: &[&str], kafka: bool) -> Cluster {
    let bootstrap = format!("{}:{}", ADMIN.0, ADMIN.1);
    let mut args = vec!["--require-login", "--superusers", ADMIN.0];
    args.extend_from_slice(extra);
    Cluster::start_with_env(n, &args, kafka, &[("RAFTMQ_BOOTSTRAP_USER", &bootstrap)])
}

fn login_config(user: &str, password: &str) -> ClientConfig {
    ClientConfig {
        credentials: Some(Credentials::new(user, password)),
        retry_timeout: Duration::from_secs(30),
        ..ClientConfig::default()
    }
}

/// The admin's client, once the bootstrap user exists (the first leader creates it).
async fn admin_client(cluster: &Cluster) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Client::connect_with(&cluster.addrs(), login_config(ADMIN.0, ADMIN.1)).await {
            Ok(client) => return client,
            Err(e) => assert!(
                Instant::now() < deadline,
                "the bootstrap admin cannot log in: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn authentication_failed(e: &ClientError) -> bool {
    matches!(
        e.server_error(),
        Some(ServerError::AuthenticationFailed { .. })
    )
}

/// Waits until every node has applied what the metadata leader has committed (so
/// users and ACLs just written are in force on every node).
async fn wait_applied_everywhere(admin: &Client) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let statuses = Admin::new(admin).cluster_status().await.unwrap();
        let committed = statuses
            .iter()
            .filter_map(|n| n.status.as_ref().ok())
            .find(|s| s.role == "leader")
            .map(|s| s.commit_index);
        let applied: Vec<u64> = statuses
            .iter()
            .filter_map(|n| n.status.as_ref().ok().map(|s| s.applied_index))
            .collect();
        if let Some(committed) = committed {
            if applied.len() == statuses.len() && applied.iter().all(|&a| a >= committed) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "nodes did not catch up: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Messages stored in `topic` (the sum of its queues' end offsets).
async fn stored(client: &Client, topic: &str, queues: u32) -> u64 {
    let mut consumer = raftmq_client::Consumer::new(client);
    let all: Vec<u32> = (0..queues).collect();
    consumer.assign(topic, &all).await.expect("assign");
    let mut total = 0;
    for q in all {
        total += consumer
            .seek(q, raftmq_client::SeekTo::Latest)
            .await
            .expect("end offset");
    }
    total
}

/// Whether the broker closed the connection (no answer, end of stream).
async fn closed(conn: &mut Conn) -> bool {
    conn.try_recv(Duration::from_secs(5)).await.is_err()
}

fn produce_request(topic: &str) -> Req {
    Req::Produce(pb::ProduceRequest {
        topic: topic.into(),
        queue: 0,
        acks: pb::Acks::Quorum as i32,
        batch: batch(&["intruder"]),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_are_required_and_refused_logins_write_nothing() {
    let cluster = secured_cluster(1, &[], false);
    let admin = admin_client(&cluster).await;
    Admin::new(&admin).create_topic("t", 1).await.unwrap();
    assert!(Admin::new(&admin)
        .upsert_user("alice", "alice-pw")
        .await
        .unwrap());

    // No login, a wrong password, an unknown user: refused, with a typed error.
    let anonymous = ClientConfig {
        retry_timeout: Duration::from_secs(2),
        ..ClientConfig::default()
    };
    let err = Client::connect_with(&cluster.addrs(), anonymous)
        .await
        .expect_err("a login is required");
    assert!(authentication_failed(&err), "{err}");
    for (user, password) in [("alice", "wrong"), ("mallory", "alice-pw")] {
        let err = Client::connect_with(&cluster.addrs(), login_config(user, password))
            .await
            .expect_err("refused");
        assert!(authentication_failed(&err), "{err}");
        assert!(
            err.to_string().contains("invalid user name or password"),
            "{err}"
        );
    }

    // On the wire: a produce without a login is answered AUTHENTICATION_FAILED and
    // the connection closed; so is a wrong proof.
    let addr = cluster.nodes[0].addr;
    let mut conn = Conn::connect_addr(addr).await.unwrap();
    let answer = conn.call(produce_request("t")).await;
    assert_eq!(code(&answer), ErrorCode::AuthenticationFailed);
    assert!(closed(&mut conn).await);
    let mut conn = Conn::connect_addr(addr).await.unwrap();
    let answer = raw_login(&mut conn, "alice", "wrong").await;
    assert_eq!(code(&answer), ErrorCode::AuthenticationFailed);
    assert!(closed(&mut conn).await);

    // Nothing was written by any of them.
    assert_eq!(stored(&admin, "t", 1).await, 0);

    // Alice logs in and, given an ACL, may produce; managing users stays for
    // superusers.
    Admin::new(&admin)
        .create_acls(vec![allow("alice", ALLOW_TOPIC, "t", PRODUCE)])
        .await
        .unwrap();
    let mut conn = Conn::connect_addr(addr).await.unwrap();
    let answer = raw_login(&mut conn, "alice", "alice-pw").await;
    assert_eq!(code(&answer), ErrorCode::None, "{answer:?}");
    let stored = conn.call(produce_request("t")).await;
    assert_eq!(code(&stored), ErrorCode::None, "{stored:?}");
    let alice = Client::connect_with(&cluster.addrs(), login_config("alice", "alice-pw"))
        .await
        .unwrap();
    let err = Admin::new(&alice).list_users().await.unwrap_err();
    assert!(
        matches!(
            err.server_error(),
            Some(ServerError::ClusterAuthorizationFailed { .. })
        ),
        "{err}"
    );
    let err = Admin::new(&alice)
        .upsert_user("alice", "new")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("not authorized to alter the cluster"),
        "{err}"
    );
    let users = Admin::new(&admin).list_users().await.unwrap();
    let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["admin", "alice"]);
    assert_eq!(users[1].mechanisms, ["SCRAM-SHA-256", "SCRAM-SHA-512"]);
}

/// Waits until a SCRAM login of `user` at `addr` gets `expected`.
async fn wait_login(addr: std::net::SocketAddr, user: &str, password: &str, expected: ErrorCode) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut conn = Conn::connect_addr(addr).await.unwrap();
        let answer = raw_login(&mut conn, user, password).await;
        if code(&answer) == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "login of {user} at {addr}: {answer:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_reach_every_node_survive_restarts_and_deletion_is_refused_everywhere() {
    let mut cluster = secured_cluster(3, &[], false);
    let admin = admin_client(&cluster).await;
    Admin::new(&admin).create_topic("t", 1).await.unwrap();
    Admin::new(&admin)
        .upsert_user("alice", "pw-1")
        .await
        .unwrap();
    for node in &cluster.nodes {
        wait_login(node.addr, "alice", "pw-1", ErrorCode::None).await;
    }
    // A password change reaches every node.
    assert!(!Admin::new(&admin)
        .upsert_user("alice", "pw-2")
        .await
        .unwrap());
    for node in &cluster.nodes {
        wait_login(node.addr, "alice", "pw-2", ErrorCode::None).await;
    }

    // Every node restarted: the users come back from the log and snapshots.
    for id in 1..=3 {
        assert!(cluster.terminate(id), "node {id} stops cleanly");
    }
    for id in 1..=3 {
        cluster.restart(id);
    }
    for node in &cluster.nodes {
        wait_login(node.addr, "alice", "pw-2", ErrorCode::None).await;
    }

    // One connection per node logged in as alice, then alice is deleted: new logins
    // and the open connections are refused on every node.
    let mut open = Vec::new();
    for node in &cluster.nodes {
        let mut conn = Conn::connect_addr(node.addr).await.unwrap();
        assert_eq!(
            code(&raw_login(&mut conn, "alice", "pw-2").await),
            ErrorCode::None
        );
        open.push(conn);
    }
    let admin = admin_client(&cluster).await;
    Admin::new(&admin).delete_user("alice").await.unwrap();
    for node in &cluster.nodes {
        wait_login(node.addr, "alice", "pw-2", ErrorCode::AuthenticationFailed).await;
    }
    for conn in &mut open {
        let answer = conn
            .call(Req::Metadata(pb::MetadataRequest::default()))
            .await;
        assert_eq!(code(&answer), ErrorCode::AuthenticationFailed, "{answer:?}");
        assert!(answer
            .error
            .as_ref()
            .is_some_and(|e| e.message.contains("no longer exists")));
    }
}

/// Runs `command` for at most `limit`: (success, stdout, stderr).
fn outcome(mut command: std::process::Command, limit: Duration) -> (bool, String, String) {
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    wait_output(command.spawn().expect("start the client"), limit)
}

#[test]
fn kcat_and_confluent_kafka_log_in_with_scram_over_tls_and_bad_credentials_are_refused() {
    require_kcat();
    require_python_module("confluent_kafka", "confluent-kafka");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let node = pki.node("raftmq-node");
    let tls = pki.broker_args(&node);
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
    let cluster = secured_cluster(3, &tls, true);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = ClientConfig {
        tls: Some(ClientTls {
            ca: pki.cluster_ca_file.clone(),
            identity: None,
        }),
        ..login_config(ADMIN.0, ADMIN.1)
    };
    let admin = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Client::connect_with(&cluster.addrs(), config.clone()).await {
                Ok(c) => break c,
                Err(e) => assert!(Instant::now() < deadline, "{e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    rt.block_on(async {
        Admin::new(&admin).create_topic("lines", 3).await.unwrap();
        Admin::new(&admin).create_topic("py", 2).await.unwrap();
        Admin::new(&admin)
            .upsert_user("alice", "alice-pw")
            .await
            .unwrap();
        let mut acls = Vec::new();
        for topic in ["lines", "py"] {
            acls.push(allow("alice", ALLOW_TOPIC, topic, PRODUCE));
            acls.push(allow("alice", ALLOW_TOPIC, topic, CONSUME));
        }
        acls.push(allow("alice", ALLOW_GROUP, "sasl-readers", CONSUME));
        Admin::new(&admin).create_acls(acls).await.unwrap();
        wait_applied_everywhere(&admin).await;
    });
    let brokers = cluster.kafka_addrs();
    let ca = pki.cluster_ca_file.display().to_string();
    let kcat = |password: &str| {
        let mut command = client_command("kcat");
        command.args([
            "-b",
            &brokers,
            "-X",
            "security.protocol=SASL_SSL",
            "-X",
            "sasl.mechanisms=SCRAM-SHA-512",
            "-X",
            "sasl.username=alice",
            "-X",
            &format!("sasl.password={password}"),
            "-X",
            &format!("ssl.ca.location={ca}"),
        ]);
        command
    };

    // kcat: 1,000 lines in, the same 1,000 out.
    let input: String = (0..1_000).map(|i| format!("line-{i}\n")).collect();
    let mut produce = kcat("alice-pw");
    produce.args(["-P", "-t", "lines", "-X", "acks=all"]);
    common::external::run(produce, Some(input.into_bytes()), Duration::from_secs(60));
    let mut consume = kcat("alice-pw");
    consume.args(["-C", "-t", "lines", "-e", "-o", "beginning"]);
    let out = common::external::run(consume, None, Duration::from_secs(60));
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort_unstable();
    let mut expected: Vec<String> = (0..1_000).map(|i| format!("line-{i}")).collect();
    expected.sort_unstable();
    assert_eq!(lines, expected);

    // kcat with a wrong password: no metadata, an authentication error.
    let mut refused = kcat("wrong");
    refused.args(["-L", "-m", "10"]);
    let (ok, stdout, stderr) = outcome(refused, Duration::from_secs(30));
    assert!(!ok, "listed with a wrong password: {stdout}");
    assert!(
        stderr.to_ascii_lowercase().contains("authentication"),
        "{stderr}"
    );

    // confluent-kafka: produce with acks=all and read back as a group.
    let script = format!("{SCRIPTS}/sasl_roundtrip.py");
    let python = |password: &str| {
        let mut command = client_command("python3");
        command.args([
            &script,
            &brokers,
            &ca,
            "SCRAM-SHA-512",
            "alice",
            password,
            "py",
            "2000",
        ]);
        command
    };
    let (ok, stdout, stderr) = outcome(python("alice-pw"), Duration::from_secs(120));
    assert!(ok, "confluent-kafka round trip failed: {stdout} {stderr}");
    assert_eq!(stdout.trim(), "2000");
    let mut refused = python("wrong");
    refused.env("PYTHONUNBUFFERED", "1");
    let (ok, _, stderr) = outcome(refused, Duration::from_secs(90));
    assert!(!ok);
    assert!(stderr.contains("refused"), "{stderr}");

    // The refused clients wrote nothing.
    assert_eq!(rt.block_on(stored(&admin, "py", 2)), 2000);
}

/// Without TLS a node cannot prove it is one, so logins required on the client
/// port must not lock the nodes out of each other: each follower's Kafka address
/// still reaches the metadata leader (forwarded), and a request a node forwards
/// for a user is authorized at the leader as that user.
#[test]
fn without_tls_nodes_still_forward_and_forwarded_requests_are_authorized_as_their_user() {
    let cluster = secured_cluster(3, &[], true);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let admin = rt.block_on(admin_client(&cluster));
    rt.block_on(async {
        Admin::new(&admin)
            .upsert_user("bob", "bob-pw")
            .await
            .unwrap();
        wait_applied_everywhere(&admin).await;
        let create = |name: &str| {
            Req::CreateTopic(pb::CreateTopicRequest {
                name: name.into(),
                queues: 1,
                ..Default::default()
            })
        };
        // Bob may create nothing: refused wherever it lands, nothing created.
        for addr in cluster.addrs() {
            let mut conn = Conn::connect_addr(addr.parse().unwrap()).await.unwrap();
            let id = conn.try_send_for(create("for-bob"), "bob").await.unwrap();
            let response = conn.recv().await;
            assert_eq!(response.correlation_id, id);
            assert_eq!(
                code(&response),
                ErrorCode::TopicAuthorizationFailed,
                "{response:?}"
            );
        }
        // The admin may: the leader creates it.
        let mut created = 0;
        for addr in cluster.addrs() {
            let mut conn = Conn::connect_addr(addr.parse().unwrap()).await.unwrap();
            conn.try_send_for(create("for-admin"), ADMIN.0)
                .await
                .unwrap();
            let response = conn.recv().await;
            match code(&response) {
                ErrorCode::None => created += 1,
                // A follower that has already applied the creation.
                ErrorCode::NotLeader | ErrorCode::NotReady | ErrorCode::TopicExists => {}
                other => panic!("{other:?}: {response:?}"),
            }
        }
        assert_eq!(created, 1);
        let topics = Admin::new(&admin).list_topics().await.unwrap();
        let names: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
        assert!(names.contains(&"for-admin"), "{names:?}");
        assert!(!names.contains(&"for-bob"), "{names:?}");
    });

    // Every node's Kafka address reached the metadata leader.
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in 1..=3 {
        loop {
            let log = std::fs::read_to_string(cluster.log_path(id)).unwrap_or_default();
            if log.contains("advertised to the cluster kafka_address=127.0.0.1") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} never advertised its Kafka address:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A connection that never logs in is closed after the login timeout, and an
/// address that keeps failing has its parallel login attempts taken one after
/// the other (so more connections do not buy more guesses), while the right
/// password still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_and_repeated_failures_slow_an_address_down() {
    let cluster = secured_cluster(1, &[], false);
    let admin = admin_client(&cluster).await;
    let addr: std::net::SocketAddr = cluster.addrs()[0].parse().unwrap();

    let silent = tokio::spawn(async move {
        let mut conn = Conn::connect_addr(addr).await.unwrap();
        let opened = Instant::now();
        let outcome = conn.try_recv(Duration::from_secs(30)).await;
        (outcome.map(|_| ()), opened.elapsed())
    });

    // Six wrong passwords, one after the other.
    for _ in 0..6 {
        let mut conn = Conn::connect_addr(addr).await.unwrap();
        let answer = raw_login(&mut conn, "admin", "wrong").await;
        assert_eq!(code(&answer), ErrorCode::AuthenticationFailed);
    }
    // Four more at once: they take turns.
    let started = Instant::now();
    let attempts: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                let mut conn = Conn::connect_addr(addr).await.unwrap();
                let answer = raw_login(&mut conn, "admin", "wrong").await;
                assert_eq!(code(&answer), ErrorCode::AuthenticationFailed);
                started.elapsed()
            })
        })
        .collect();
    let mut took = Vec::new();
    for attempt in attempts {
        took.push(attempt.await.unwrap());
    }
    let slowest = took.iter().max().unwrap();
    assert!(
        *slowest >= Duration::from_millis(1_500),
        "parallel failing logins were not spaced out: {took:?}"
    );
    // The right password still logs in (after its turn).
    let mut conn = Conn::connect_addr(addr).await.unwrap();
    assert_eq!(
        code(&raw_login(&mut conn, ADMIN.0, ADMIN.1).await),
        ErrorCode::None
    );
    drop(admin);

    let (outcome, after) = silent.await.unwrap();
    let error = outcome.expect_err("a silent connection gets no answer");
    assert_ne!(
        error.kind(),
        std::io::ErrorKind::TimedOut,
        "a connection that never logged in is still open after {after:?}"
    );
    assert!(after >= Duration::from_secs(9), "closed after {after:?}");
}
