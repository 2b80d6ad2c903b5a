//! ACLs with a real broker process that requires logins: a user without an ACL
//! can neither produce, consume, describe, create nor delete (each checked, and
//! nothing changes in the log); ACLs allow by name and prefix; deny wins; the
//! Kafka port answers with Kafka's authorization error.

mod common;

use std::time::Duration;

use common::external::{client_command, require_kcat, wait_output};
use common::login::raw_login;
use common::raw::{batch, code, Conn};
use common::Cluster;
use raftmq_client::pb::{AclBinding, AclOperation, AclPatternType, AclResourceType};
use raftmq_client::{Admin, Client, ClientConfig, Credentials};
use raftmq_proto::pb::{self, request::Body as Req, response::Body as Resp, ErrorCode};

const ADMIN: (&str, &str) = ("admin", "admin-secret");

fn config(user: &str, password: &str) -> ClientConfig {
    ClientConfig {
        credentials: Some(Credentials::new(user, password)),
        ..ClientConfig::default()
    }
}

fn acl(
    resource: AclResourceType,
    name: &str,
    prefixed: bool,
    op: AclOperation,
    deny: bool,
) -> AclBinding {
    AclBinding {
        principal: "User:alice".into(),
        resource_type: resource as i32,
        resource_name: name.into(),
        pattern_type: if prefixed {
            AclPatternType::Prefixed
        } else {
            AclPatternType::Literal
        } as i32,
        operation: op as i32,
        deny,
    }
}

/// Every request alice might try, with the error it must get without ACLs.
fn attempts() -> Vec<(&'static str, Req, ErrorCode)> {
    use ErrorCode::{GroupAuthorizationFailed as G, TopicAuthorizationFailed as T};
    vec![
        (
            "produce",
            Req::Produce(pb::ProduceRequest {
                topic: "orders".into(),
                queue: 0,
                acks: pb::Acks::Quorum as i32,
                batch: batch(&["from alice"]),
            }),
            T,
        ),
        (
            "consume",
            Req::Fetch(pb::FetchRequest {
                topic: "orders".into(),
                queue: 0,
                offset: 0,
                max_bytes: 1 << 20,
                ..Default::default()
            }),
            T,
        ),
        (
            "describe",
            Req::Metadata(pb::MetadataRequest {
                topics: vec!["orders".into()],
                ..Default::default()
            }),
            T,
        ),
        (
            "list offsets",
            Req::ListOffsets(pb::ListOffsetsRequest {
                topic: "orders".into(),
                queue: 0,
                ..Default::default()
            }),
            T,
        ),
        (
            "create",
            Req::CreateTopic(pb::CreateTopicRequest {
                name: "alice-topic".into(),
                queues: 1,
                ..Default::default()
            }),
            T,
        ),
        (
            "delete",
            Req::DeleteTopic(pb::DeleteTopicRequest {
                name: "orders".into(),
            }),
            T,
        ),
        (
            "join a group",
            Req::JoinGroup(pb::JoinGroupRequest {
                group: "g".into(),
                topics: vec!["orders".into()],
                session_timeout_ms: 10_000,
                ..Default::default()
            }),
            G,
        ),
        (
            "commit offsets",
            Req::OffsetCommit(pb::OffsetCommitRequest {
                group: "g".into(),
                offsets: vec![pb::QueueOffset {
                    topic: "orders".into(),
                    queue: 0,
                    offset: 5,
                }],
                ..Default::default()
            }),
            G,
        ),
    ]
}

/// (topics, end offset of orders/0, groups) as the admin sees them.
async fn visible_state(admin: &Client) -> (Vec<String>, u64, Vec<String>) {
    let a = Admin::new(admin);
    let mut topics: Vec<String> = a
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    topics.sort();
    let mut consumer = raftmq_client::Consumer::new(admin);
    consumer.assign("orders", &[0]).await.unwrap();
    let end = consumer
        .seek(0, raftmq_client::SeekTo::Latest)
        .await
        .unwrap();
    (topics, end, a.list_groups().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_acl_a_user_can_do_nothing_and_acls_allow_by_name_and_prefix_with_deny_winning()
{
    let bootstrap = format!("{}:{}", ADMIN.0, ADMIN.1);
    let cluster = Cluster::start_with_env(
        1,
        &["--require-login", "--superusers", ADMIN.0],
        true,
        &[("RAFTMQ_BOOTSTRAP_USER", &bootstrap)],
    );
    let mut admin = None;
    for _ in 0..300 {
        if let Ok(c) = Client::connect_with(&cluster.addrs(), config(ADMIN.0, ADMIN.1)).await {
            admin = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let admin = admin.expect("the bootstrap admin logs in");
    let a = Admin::new(&admin);
    a.create_topic("orders", 1).await.unwrap();
    a.upsert_user("alice", "alice-pw").await.unwrap();
    let before = visible_state(&admin).await;
    assert_eq!(before, (vec!["orders".to_string()], 0, vec![]));

    // Alice logs in, sees no topic, and is refused everything, each with its error.
    let addr = cluster.nodes[0].addr;
    let mut conn = Conn::connect_addr(addr).await.unwrap();
    assert_eq!(
        code(&raw_login(&mut conn, "alice", "alice-pw").await),
        ErrorCode::None
    );
    for (what, request, expected) in attempts() {
        let answer = conn.call(request).await;
        assert_eq!(code(&answer), expected, "{what}: {answer:?}");
        let message = &answer.error.as_ref().unwrap().message;
        assert!(
            message.contains("User:alice is not authorized"),
            "{what}: {message}"
        );
    }
    let listing = conn
        .call(Req::Metadata(pb::MetadataRequest::default()))
        .await;
    let Some(Resp::Metadata(m)) = listing.body else {
        panic!("{listing:?}");
    };
    assert!(m.topics.is_empty(), "alice sees no topic: {:?}", m.topics);
    assert_eq!(visible_state(&admin).await, before, "nothing changed");
    let alice = Client::connect_with(&cluster.addrs(), config("alice", "alice-pw"))
        .await
        .unwrap();
    assert!(Admin::new(&alice).list_topics().await.unwrap().is_empty());
    let err = Admin::new(&alice).list_acls().await.unwrap_err();
    assert!(err.to_string().contains("not authorized"), "{err}");

    // The Kafka port says so in Kafka's words.
    require_kcat();
    let kafka = format!("127.0.0.1:{}", cluster.kafka_port(1));
    let mut kcat = client_command("kcat");
    kcat.args([
        "-b",
        &kafka,
        "-X",
        "security.protocol=SASL_PLAINTEXT",
        "-X",
        "sasl.mechanisms=SCRAM-SHA-256",
        "-X",
        "sasl.username=alice",
        "-X",
        "sasl.password=alice-pw",
        "-P",
        "-t",
        "orders",
        "-p",
        "0",
    ])
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let mut child = kcat.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"kafka line\n").unwrap();
    }
    let (_, _, stderr) = wait_output(child, Duration::from_secs(30));
    assert!(
        stderr.to_ascii_lowercase().contains("authorization failed"),
        "{stderr}"
    );
    assert_eq!(visible_state(&admin).await, before, "nothing changed");

    // ACLs: produce and consume "orders", every group named alice-*.
    a.create_acls(vec![
        acl(
            AclResourceType::Topic,
            "orders",
            false,
            AclOperation::Produce,
            false,
        ),
        acl(
            AclResourceType::Topic,
            "orders",
            false,
            AclOperation::Consume,
            false,
        ),
        acl(
            AclResourceType::Group,
            "alice-",
            true,
            AclOperation::Consume,
            false,
        ),
    ])
    .await
    .unwrap();
    let produce = || {
        Req::Produce(pb::ProduceRequest {
            topic: "orders".into(),
            queue: 0,
            acks: pb::Acks::Quorum as i32,
            batch: batch(&["from alice"]),
        })
    };
    assert_eq!(code(&conn.call(produce()).await), ErrorCode::None);
    let (_, fetch, _) = attempts().swap_remove(1);
    assert_eq!(code(&conn.call(fetch).await), ErrorCode::None);
    let join = |group: &str| {
        Req::JoinGroup(pb::JoinGroupRequest {
            group: group.into(),
            topics: vec!["orders".into()],
            session_timeout_ms: 10_000,
            ..Default::default()
        })
    };
    assert_eq!(
        code(&conn.call(join("alice-readers")).await),
        ErrorCode::None
    );
    assert_eq!(
        code(&conn.call(join("bobs-group")).await),
        ErrorCode::GroupAuthorizationFailed
    );
    let names: Vec<String> = Admin::new(&alice)
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["orders"], "describe is implied by produce");
    let (_, create, _) = attempts().swap_remove(4);
    assert_eq!(
        code(&conn.call(create).await),
        ErrorCode::TopicAuthorizationFailed,
        "still no create"
    );

    // Deny wins over the allow.
    a.create_acls(vec![acl(
        AclResourceType::Topic,
        "ord",
        true,
        AclOperation::Produce,
        true,
    )])
    .await
    .unwrap();
    assert_eq!(
        code(&conn.call(produce()).await),
        ErrorCode::TopicAuthorizationFailed
    );
    let listed = a.list_acls().await.unwrap();
    assert_eq!(listed.len(), 4);
    assert_eq!(
        a.delete_acls(vec![acl(
            AclResourceType::Topic,
            "ord",
            true,
            AclOperation::Produce,
            true
        )])
        .await
        .unwrap(),
        1
    );
    assert_eq!(code(&conn.call(produce()).await), ErrorCode::None);
    let (_, end, _) = visible_state(&admin).await;
    assert_eq!(end, 2, "exactly the two allowed produces were stored");
}
