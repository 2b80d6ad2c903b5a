//! Client behaviour against an in-process fake cluster (see `support/`): redirects,
//! produce and consume, in-order idempotent retries, resets, timeouts and
//! reconnects. Real end-to-end tests against the broker live with the broker.

mod support;

use std::time::Duration;

use bytes::Bytes;
use raftmq_client::{
    Admin, Client, ClientConfig, ClientError, Consumer, ConsumerConfig, Message, OffsetReset,
    Producer, SeekTo, ServerError,
};
use support::{FakeCluster, ProduceFault};

/// Every test finishes well within this, or fails.
const TEST_LIMIT: Duration = Duration::from_secs(30);

fn fast_config() -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        max_retries: 8,
        retry_backoff: Duration::from_millis(5),
        retry_backoff_max: Duration::from_millis(50),
        ..ClientConfig::default()
    }
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TEST_LIMIT, f)
        .await
        .expect("test took too long")
}

#[tokio::test]
async fn given_a_follower_as_bootstrap_when_creating_a_topic_should_follow_the_redirect() {
    within(async {
        let cluster = FakeCluster::start(3).await;
        cluster.set_leader(Some(2));
        // Metadata names node 3 the leader, but the client is told a stale leader
        // first: ask node 1 directly, it redirects.
        let client = Client::connect_with(&[cluster.address(0)], fast_config())
            .await
            .expect("connect");
        assert_eq!(client.leader_address(), Some(cluster.address(2)));
        cluster.set_leader(Some(1));
        Admin::new(&client)
            .create_topic("orders", 3)
            .await
            .expect("create via redirect");
        assert_eq!(client.leader_address(), Some(cluster.address(1)));
        let s = cluster.state.lock().unwrap();
        assert_eq!(s.topics.get("orders"), Some(&3));
        // Node index 2 (the stale leader) refused, node index 1 served.
        assert!(s.requests.contains(&(2, "create_topic")));
        assert!(s.requests.contains(&(1, "create_topic")));
    })
    .await;
}

#[tokio::test]
async fn given_a_redirect_without_address_when_requesting_should_refresh_metadata_and_retry() {
    within(async {
        let cluster = FakeCluster::start(2).await;
        let client = Client::connect_with(&[cluster.address(0)], fast_config())
            .await
            .expect("connect");
        {
            let mut s = cluster.state.lock().unwrap();
            s.leader = Some(1);
            s.redirect_with_address = false;
        }
        let topics = Admin::new(&client).create_topic("t", 1).await;
        assert!(topics.is_ok(), "{topics:?}");
        assert_eq!(client.leader_address(), Some(cluster.address(1)));
    })
    .await;
}

#[tokio::test]
async fn given_no_leader_when_requesting_should_give_up_after_bounded_retries() {
    within(async {
        let cluster = FakeCluster::start(1).await;
        let client = Client::connect_with(&[cluster.address(0)], fast_config())
            .await
            .expect("connect");
        cluster.set_leader(None);
        let err = Admin::new(&client)
            .create_topic("t", 1)
            .await
            .expect_err("no leader");
        assert!(
            matches!(err, ClientError::RetriesExhausted { attempts: 9, .. }),
            "{err}"
        );
    })
    .await;
}

#[tokio::test]
async fn produced_messages_are_consumed_in_order_with_keys_and_headers() {
    within(async {
        let cluster = FakeCluster::start(1).await;
        cluster.create_topic("orders", 2);
        let client = Client::connect_with(&[cluster.address(0)], fast_config())
            .await
            .expect("connect");
        let producer = Producer::builder(&client)
            .max_batch_bytes(1024)
            .build()
            .await
            .expect("producer");
        assert!(producer.identity().is_some(), "idempotent by default");
        let mut acks = Vec::new();
        for i in 0..100u32 {
            let m = Message::new("orders", format!("value-{i}"))
                .with_key(format!("key-{}", i % 7))
                .with_header("i", i.to_string())
                .with_timestamp(1_000 + i64::from(i));
            acks.push(producer.send(m).await.expect("queued"));
        }
        let mut stored = Vec::new();
        for a in acks {
            stored.push(a.await.expect("acknowledged"));
        }
        // Per queue, offsets are dense and in send order.
        for q in 0..2 {
            let offsets: Vec<u64> = stored
                .iter()
                .filter(|m| m.queue == q)
                .map(|m| m.offset)
                .collect();
            assert_eq!(offsets, (0..offsets.len() as u64).collect::<Vec<_>>());
        }
        // Same key, same queue.
        for (i, m) in stored.iter().enumerate() {
            assert_eq!(m.queue, stored[i % 7].queue);
        }

        let mut consumer = Consumer::with_config(
            &client,
            ConsumerConfig {
                max_wait: Duration::from_millis(50),
                ..ConsumerConfig::default()
            },
        );
        consumer.assign("orders", &[]).await.expect("assign");
        let mut got = Vec::new();
        while got.len() < 100 {
            got.extend(consumer.poll().await.expect("poll"));
        }
        assert_eq!(got.len(), 100);
        for m in &got {
            let i: u32 = std::str::from_utf8(&m.headers[0].1)
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(m.value, Bytes::from(format!("value-{i}")));
            assert_eq!(m.key.as_deref(), Some(format!("key-{}", i % 7).as_bytes()));
            assert_eq!(m.timestamp_ms, 1_000 + i64::from(i));
            assert_eq!(
                (m.queue, m.offset),
                (stored[i as usize].queue, stored[i as usize].offset)
            );
        }
        producer.close().await;
    })
    .await;
}

#[tokio::test]
async fn given_a_seek_inside_a_batch_when_polling_should_skip_the_records_below_it() {
    within(async {
        let cluster = FakeCluster::start(1).await;
        cluster.create_topic("t", 1);
        let client = Client::connect_with(&[cluster.address(0)], fast_config())
            .await
            .expect("connect");
        let producer = Producer::builder(&client)
            .linger(Duration::from_millis(50))
            .build()
            .await
            .expect("producer");
        let acks = producer
            .send_batch((0..10).map(|i| Message::new("t", format!("{i}"))))
            .await
            .expect("queued");
        for a in acks {
            a.await.expect("acked");
        }
        assert_eq!(
            cluster.state.lock().unwrap().logs[&("t".into(), 0)]
                .batches
                .len(),
            1
        );
        let mut consumer = Consumer::new(&client);
        consumer.assign("t", &[0]).await.expect("assign");
        assert_eq!(consumer.seek(0, SeekTo::Offset(7)).await.expect("seek"), 7);
        let got = consumer.poll().await.expect("poll");
        let offsets: Vec<u64> = got.iter().map(|m| m.offset).collect();
        assert_eq!(offsets, [7, 8, 9]);
        assert_eq!(consumer.positions()[&0], Some(10));
        assert_eq!(consumer.seek(0, SeekTo::Latest).await.expect("seek"), 10);
        assert_eq!(consumer.seek(0, SeekTo::Earliest).await.expect("seek"), 0);
    })
    .await;
}

#[tokio::test]
async fn given_retriable_failures_when_producing_should_store_every_message_once_in_order() {
    within(async {
        let cluster = FakeCluster::start(1).await;
        cluster.create_topic("t", 1);
        let client = Client::connect_with(&[cluster.address(0)], fast_config())
            .await
            .expect("connect");
        // Batches close only when full (23 records of 10 bytes in 300 bytes) or on
        // flush, so their sequences are 0, 23, 46, ...
        let producer = Producer::builder(&client)
            .max_batch_bytes(300)
            .max_in_flight_per_queue(5)
            .linger(Duration::from_secs(3600))
            .build()
            .await
            .expect("producer");
        {
            let mut s = cluster.state.lock().unwrap();
            // Stored, but the answer is lost: the retry is answered as a duplicate.
            s.sequence_faults
                .insert(23, ProduceFault::TimeoutAfterStoring);
            // Lost: the batches pipelined behind it are answered out of order and are
            // resent after it, in order.
            s.sequence_faults
                .insert(115, ProduceFault::TimeoutWithoutStoring);
            s.sequence_faults.insert(207, ProduceFault::Busy);
        }
        let mut acks = Vec::new();
        for i in 0..300u32 {
            let m = Message::new("t", format!("m{i:04}"))
                .with_queue(0)
                .with_timestamp(1_000);
            acks.push(producer.send(m).await.expect("queued"));
        }
        producer.flush().await;
        let mut offsets = Vec::new();
        for a in acks {
            offsets.push(a.await.expect("acknowledged despite faults").offset);
        }
        assert_eq!(
            offsets,
            (0..300).collect::<Vec<u64>>(),
            "offsets match send order"
        );
        let s = cluster.state.lock().unwrap();
        let values: Vec<Bytes> = s.values("t", 0).into_iter().map(|(_, v)| v).collect();
        let expected: Vec<Bytes> = (0..300).map(|i| Bytes::from(format!("m{i:04}"))).collect();
        assert_eq!(values, expected, "every message stored once, in order");
        assert!(s.sequence_faults.is_empty(), "every fault was hit");
        // Retries resent the same sequences (never renumbered): every attempt's
        // sequence is one of the batch boundaries, and the faulted ones repeat.
        let sequences: Vec<u32> = s.produce_log.iter().map(|&(_, seq, _)| seq).collect();
        assert!(sequences.iter().all(|seq| seq % 23 == 0), "{sequences:?}");
        for faulted in [23, 115, 207] {
            let tries = sequences.iter().filter(|&&q| q == faulted).count();
            assert!(tries >= 2, "sequence {faulted} retried: {sequences:?}");
        }
        // Stored batches are exactly the 14 sealed ones, in sequence order.
        let stored: Vec<u32> = s.logs[&("t".into(), 0)]
            .batches
            .iter()
            .map(|(_, b)| {
                raftmq_proto::batch::BatchHeader::parse(b)
                    .unwrap()
                    .base_sequence
            })
            .collect();
        assert_eq!(stored, (0..14).map(|i| i * 23).collect::<Vec<u32>>());
    })
    .await;
}

#[tokio::test]
async fn given_a_refused_batch_when_producing_should_fail_only_its_messages_and_close_the_gap() {
    within(async {
        let cluster = FakeCluster::start(1).await;
        cluster.create_topic("t", 1);
        let client = Client::connect_with(&[cluster.address(0)], fast_config())
            .await
            .expect("connect");
        let producer = Producer::builder(&client)
            .max_batch_bytes(300)
            .linger(Duration::from_secs(3600))
            .build()
            .await
            .expect("producer");
        cluster.state.lock().unwrap().sequence_faults.insert(
            23,
            ProduceFault::Refuse(raftmq_proto::pb::Error::message_too_large(300, 200)),
        );
        let mut acks = Vec::new();
        for i in 0..100u32 {
            let m = Message::new("t", format!("m{i:04}")).with_timestamp(1_000);
            acks.push(producer.send(m).await.expect("queued"));
        }
        producer.flush().await;
        let mut results = Vec::new();
        for a in acks {
            results.push(a.await);
        }
        for (i, r) in results.iter().enumerate() {
            if (23..46).contains(&i) {
                let e = r.as_ref().expect_err("refused batch fails");
                assert!(
                    matches!(e.server_error(), Some(ServerError::MessageTooLarge { .. })),
                    "{e}"
                );
            } else {
                let offset = r.as_ref().expect("stored").offset as usize;
                assert_eq!(offset, if i < 23 { i } else { i - 23 });
            }
        }
        let s = cluster.state.lock().unwrap();
        assert_eq!(s.values("t", 0).len(), 77);
        let stored: Vec<u32> = s.logs[&("t".into(), 0)]
            .batches
            .iter()
            .map(|(_, b)| {
                raftmq_proto::batch::BatchHeader::parse(b)
                    .unwrap()
                    .base_sequence
            })
            .collect();
        assert_eq!(stored, [0, 23, 46, 69], "renumbered without a gap");
    })
    .await;
}

#[tokio::test]
async fn given_a_leader_change_when_producing_should_redirect_and_keep_order() {
    within(async {
        let cluster = FakeCluster::start(2).await;
        cluster.create_topic("t", 1);
        let client = Client::connect_with(&[cluster.address(0)], fast_config())
            .await
            .expect("connect");
        let producer = Producer::builder(&client)
            .max_batch_bytes(200)
            .build()
            .await
            .expect("producer");
        let mut acks = Vec::new();
        for i in 0..200u32 {
            if i == 100 {
                cluster.set_leader(Some(1));
            }
            acks.push(
                producer
                    .send(Message::new("t", format!("{i}")))
                    .await
                    .expect("queued"),
            );
        }
        for (i, a) in acks.into_iter().enumerate() {
            assert_eq!(a.await.expect("acked").offset, i as u64);
        }
        let s = cluster.state.lock().unwrap();
        assert!(s.requests.contains(&(1, "produce")));
        assert_eq!(s.values("t", 0).len(), 200);
    })
    .await;
}

#[tokio::test]
async fn given_an_out_of_range_position_when_polling_should_apply_the_reset_policy() {
    within(async {
        let cluster = FakeCluster::start(1).await;
        cluster.create_topic("t", 1);
        let client = Client::connect_with(&[cluster.address(0)], fast_config())
            .await
            .expect("connect");
        let producer = Producer::builder(&client).build().await.expect("producer");
        producer
            .send_and_wait(Message::new("t", "only"))
            .await
            .expect("acked");

        let config = ConsumerConfig {
            max_wait: Duration::from_millis(20),
            ..ConsumerConfig::default()
        };
        let mut consumer = Consumer::with_config(&client, config.clone());
        consumer.assign("t", &[0]).await.expect("assign");
        consumer.seek(0, SeekTo::Offset(1000)).await.expect("seek");
        assert!(consumer.poll().await.expect("reset").is_empty());
        assert_eq!(consumer.positions()[&0], Some(0), "reset to earliest");
        let got = consumer.poll().await.expect("poll");
        assert_eq!(got[0].value, Bytes::from_static(b"only"));

        let mut strict = Consumer::with_config(
            &client,
            ConsumerConfig {
                reset: OffsetReset::Error,
                ..config
            },
        );
        strict.assign("t", &[0]).await.expect("assign");
        strict.seek(0, SeekTo::Offset(1000)).await.expect("seek");
        let err = strict.poll().await.expect_err("out of range");
        assert!(
            matches!(
                err.server_error(),
                Some(&ServerError::OffsetOutOfRange {
                    log_start: 0,
                    log_end: 1,
                    ..
                })
            ),
            "{err:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn long_poll_returns_empty_after_max_wait_and_wakes_on_new_data() {
    within(async {
        let cluster = FakeCluster::start(1).await;
        cluster.create_topic("t", 1);
        let client = Client::connect_with(&[cluster.address(0)], fast_config())
            .await
            .expect("connect");
        let mut consumer = Consumer::with_config(
            &client,
            ConsumerConfig {
                max_wait: Duration::from_millis(100),
                ..ConsumerConfig::default()
            },
        );
        consumer.assign("t", &[0]).await.expect("assign");
        let started = std::time::Instant::now();
        assert!(consumer.poll().await.expect("poll").is_empty());
        assert!(started.elapsed() >= Duration::from_millis(90));

        let producer = Producer::builder(&client).build().await.expect("producer");
        let mut slow = Consumer::with_config(
            &client,
            ConsumerConfig {
                max_wait: Duration::from_secs(10),
                ..ConsumerConfig::default()
            },
        );
        slow.assign("t", &[0]).await.expect("assign");
        let poll = tokio::spawn(async move { slow.poll().await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        producer
            .send_and_wait(Message::new("t", "wake"))
            .await
            .expect("acked");
        let got = poll.await.expect("task").expect("poll");
        assert_eq!(got.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn given_an_unanswered_request_when_waiting_should_time_out() {
    within(async {
        let cluster = FakeCluster::start(1).await;
        cluster.create_topic("t", 1);
        let config = ClientConfig {
            request_timeout: Duration::from_millis(200),
            ..fast_config()
        };
        let client = Client::connect_with(&[cluster.address(0)], config)
            .await
            .expect("connect");
        let producer = Producer::builder(&client)
            .max_retries(0)
            .build()
            .await
            .expect("producer");
        cluster.fault(ProduceFault::Swallow);
        let err = producer
            .send_and_wait(Message::new("t", "lost"))
            .await
            .expect_err("timed out");
        // Sent and never answered: it may have been stored.
        assert!(
            matches!(&err, ClientError::OutcomeUnknown { last, .. } if matches!(**last, ClientError::Timeout(_))),
            "{err}"
        );
        assert!(err.outcome_unknown());
    })
    .await;
}

#[tokio::test]
async fn given_a_dropped_connection_when_requesting_again_should_reconnect() {
    within(async {
        let cluster = FakeCluster::start(1).await;
        cluster.create_topic("t", 1);
        let client = Client::connect_with(&[cluster.address(0)], fast_config())
            .await
            .expect("connect");
        let admin = Admin::new(&client);
        assert_eq!(admin.list_topics().await.expect("list").len(), 1);
        cluster.drop_connections(0);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(admin.list_topics().await.expect("list again").len(), 1);
    })
    .await;
}

#[tokio::test]
async fn admin_reports_cluster_status_of_every_node_and_topic_ranges() {
    within(async {
        let cluster = FakeCluster::start(3).await;
        cluster.create_topic("t", 2);
        let client = Client::connect_with(&[cluster.address(1)], fast_config())
            .await
            .expect("connect");
        let statuses = Admin::new(&client).cluster_status().await.expect("status");
        assert_eq!(statuses.len(), 3);
        let roles: Vec<String> = statuses
            .iter()
            .map(|n| n.status.as_ref().expect("answered").role.clone())
            .collect();
        assert_eq!(roles, ["leader", "follower", "follower"]);
        let producer = Producer::builder(&client).build().await.expect("producer");
        producer
            .send_and_wait(Message::new("t", "x").with_queue(1))
            .await
            .expect("acked");
        let d = Admin::new(&client)
            .describe_topic("t")
            .await
            .expect("describe");
        assert_eq!(d.queues, [(0, 0), (0, 1)]);
        let err = Admin::new(&client)
            .create_topic("t", 1)
            .await
            .expect_err("exists");
        assert!(matches!(
            err.server_error(),
            Some(ServerError::TopicExists { .. })
        ));
        let err = Admin::new(&client)
            .create_topic("bad name", 1)
            .await
            .expect_err("invalid");
        assert!(matches!(err, ClientError::InvalidArgument(_)), "{err}");
    })
    .await;
}

#[tokio::test]
async fn consumer_stream_yields_messages_in_order() {
    use futures::StreamExt;
    within(async {
        let cluster = FakeCluster::start(1).await;
        cluster.create_topic("t", 1);
        let client = Client::connect_with(&[cluster.address(0)], fast_config())
            .await
            .expect("connect");
        let producer = Producer::builder(&client).build().await.expect("producer");
        for a in producer
            .send_batch((0..20).map(|i| Message::new("t", format!("{i}"))))
            .await
            .expect("queued")
        {
            a.await.expect("acked");
        }
        let mut consumer = Consumer::new(&client);
        consumer.assign("t", &[0]).await.expect("assign");
        let offsets: Vec<u64> = consumer
            .into_stream()
            .take(20)
            .map(|m| m.expect("message").offset)
            .collect()
            .await;
        assert_eq!(offsets, (0..20).collect::<Vec<u64>>());
    })
    .await;
}

#[tokio::test]
async fn given_a_broker_without_multi_queue_produce_should_send_one_batch_per_request() {
    within(async {
        // The fake broker answers `ProduceMany` as an unknown request, as a broker
        // of the previous version does.
        let cluster = FakeCluster::start(1).await;
        cluster.create_topic("wide", 16);
        let client = Client::connect_with(&[cluster.address(0)], fast_config())
            .await
            .expect("connect");
        // Not idempotent: no sequence check would catch a batch stored out of order.
        let producer = Producer::builder(&client)
            .max_batch_bytes(256)
            .idempotent(false)
            .build()
            .await
            .expect("producer");
        let mut acks = Vec::new();
        for i in 0..4_000u32 {
            let m = Message::new("wide", format!("value-{i}")).with_queue(i % 16);
            acks.push(producer.send(m).await.expect("queued"));
        }
        let mut stored = Vec::new();
        for a in acks {
            stored.push(a.await.expect("acknowledged"));
        }
        for q in 0..16 {
            let offsets: Vec<u64> = stored
                .iter()
                .filter(|m| m.queue == q)
                .map(|m| m.offset)
                .collect();
            assert_eq!(offsets, (0..250).collect::<Vec<u64>>(), "queue {q}");
        }
        let s = cluster.state.lock().unwrap();
        let tried = s.requests.iter().filter(|r| r.1 == "produce_many").count();
        assert_eq!(tried, 1, "multi-queue produce tried once, then given up");
        for q in 0..16u32 {
            let log = &s.logs[&("wide".to_string(), q)];
            assert_eq!(log.next_offset, 250, "queue {q} stored each message once");
        }
    })
    .await;
}
