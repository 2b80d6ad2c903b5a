//! Consumer groups against the in-process fake cluster: assignment, rebalance on
//! join and leave, committed offsets carried over, fencing of stale members.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use raftmq_client::{
    Client, ClientConfig, ConsumerConfig, GroupConfig, GroupConsumer, Message, Producer,
};
use support::FakeCluster;

const TEST_LIMIT: Duration = Duration::from_secs(30);

fn group_config() -> GroupConfig {
    GroupConfig {
        consumer: ConsumerConfig {
            max_wait: Duration::from_millis(20),
            ..ConsumerConfig::default()
        },
        ..GroupConfig::default()
    }
}

async fn produce(client: &Client, per_queue: u32, tag: &str) {
    let producer = Producer::builder(client).build().await.expect("producer");
    let mut acks = Vec::new();
    for q in 0..4 {
        for i in 0..per_queue {
            let m = Message::new("t", format!("{tag}-{q}-{i}")).with_queue(q);
            acks.push(producer.send(m).await.expect("queued"));
        }
    }
    for a in acks {
        a.await.expect("acked");
    }
}

/// Polls until `n` messages arrived; returns their values.
async fn take(member: &mut GroupConsumer, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        for m in member.poll().await.expect("poll") {
            got.push(String::from_utf8(m.value.to_vec()).expect("utf8"));
        }
    }
    got
}

#[tokio::test]
async fn group_members_split_queues_and_resume_from_committed_offsets() {
    tokio::time::timeout(TEST_LIMIT, async {
        let cluster = FakeCluster::start(1).await;
        cluster.create_topic("t", 4);
        let config = ClientConfig {
            retry_backoff: Duration::from_millis(5),
            ..ClientConfig::default()
        };
        let client = Client::connect_with(&[cluster.address(0)], config)
            .await
            .expect("connect");
        produce(&client, 5, "a").await;

        let mut first = GroupConsumer::join(&client, "g", "t", group_config())
            .await
            .expect("join");
        assert_eq!(first.assignment(), [0, 1, 2, 3]);
        assert_eq!(take(&mut first, 20).await.len(), 20);
        first.commit().await.expect("commit");

        // A second member: queues split, the first learns it by heartbeat.
        let mut second = GroupConsumer::join(&client, "g", "t", group_config())
            .await
            .expect("join");
        assert_eq!(second.assignment(), [2, 3]);
        assert_eq!(
            second.positions().values().copied().collect::<Vec<_>>(),
            [Some(5), Some(5)],
            "starts from the group's committed offsets"
        );
        while first.assignment() != [0, 1] {
            assert!(first.poll().await.expect("poll").is_empty());
        }
        assert_eq!(first.generation(), second.generation());

        produce(&client, 3, "b").await;
        let a: BTreeSet<String> = take(&mut first, 6).await.into_iter().collect();
        let b: BTreeSet<String> = take(&mut second, 6).await.into_iter().collect();
        assert!(
            a.iter()
                .all(|v| v.starts_with("b-0-") || v.starts_with("b-1-")),
            "{a:?}"
        );
        assert!(
            b.iter()
                .all(|v| v.starts_with("b-2-") || v.starts_with("b-3-")),
            "{b:?}"
        );

        // The second leaves (committing): the first takes every queue back and
        // resumes where the second stopped.
        second.leave().await.expect("leave");
        while first.assignment() != [0, 1, 2, 3] {
            assert!(first.poll().await.expect("poll").is_empty());
        }
        assert_eq!(
            first.positions().values().copied().collect::<Vec<_>>(),
            [Some(8), Some(8), Some(8), Some(8)]
        );
    })
    .await
    .expect("test took too long");
}

#[tokio::test]
async fn given_a_member_forgotten_by_the_group_when_polling_should_rejoin() {
    tokio::time::timeout(TEST_LIMIT, async {
        let cluster = FakeCluster::start(1).await;
        cluster.create_topic("t", 4);
        let client = Client::connect(&[cluster.address(0)])
            .await
            .expect("connect");
        let mut member = GroupConsumer::join(&client, "g", "t", group_config())
            .await
            .expect("join");
        let old_id = member.member_id().to_owned();
        cluster
            .state
            .lock()
            .unwrap()
            .groups
            .get_mut("g")
            .expect("group")
            .members
            .clear();
        // The fenced fetch (or heartbeat) fails with UnknownMember: the member joins
        // again under a new id.
        for _ in 0..20 {
            member.poll().await.expect("poll");
            if member.member_id() != old_id {
                break;
            }
        }
        assert_ne!(member.member_id(), old_id);
        assert_eq!(member.assignment(), [0, 1, 2, 3]);
    })
    .await
    .expect("test took too long");
}
