//! Membership changes with real broker processes, under a running idempotent
//! producer: grow a 3-node cluster to 5 (`--join`, then add-node), lose a node
//! for good and remove it, put a fresh node in its place, shrink back to 3. Every
//! acknowledged message is then readable, exactly once, from every remaining node.
//! And a node whose data directory was wiped cannot come back under its old
//! membership: it is refused until removed and joined again.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::raw::Conn;
use common::Cluster;
use raftmq_client::{Admin, Client, Consumer, Message, Producer, SeekTo};
use raftmq_proto::pb::{self, request::Body as Req, response::Body as Resp};

const TOPIC: &str = "grow";

/// Retries `add_node` while the learner catches up (bounded).
async fn promote(admin: &Admin, node: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match admin.add_node(node).await {
            Ok(_) => return,
            Err(e) if Instant::now() < deadline => {
                let text = e.to_string();
                assert!(
                    text.contains("not a learner") || text.contains("behind"),
                    "add-node {node}: {text}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("node {node} was never promoted: {e}"),
        }
    }
}

/// The membership as the leader reports it: (voters, learners).
async fn membership(client: &Client) -> (Vec<u64>, Vec<u64>) {
    let statuses = Admin::new(client).cluster_status().await.expect("status");
    let s = statuses
        .iter()
        .filter_map(|n| n.status.as_ref().ok())
        .find(|s| s.role == "leader")
        .expect("a leader answers");
    let pick = |voter: bool| {
        s.members
            .iter()
            .filter(|m| m.voter == voter)
            .map(|m| m.node_id)
            .collect()
    };
    (pick(true), pick(false))
}

/// Every message of the topic's only queue, read from node `addr` itself, until
/// it serves at least `want` (a follower's high watermark trails the leader's by a
/// heartbeat) or 30 s pass.
async fn read_from(addr: std::net::SocketAddr, want: usize) -> Vec<String> {
    let mut conn = Conn::connect_addr(addr).await.expect("connect");
    let mut out = Vec::new();
    let mut offset = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "reading from {addr} did not finish"
        );
        let response = conn
            .call(Req::Fetch(pb::FetchRequest {
                topic: TOPIC.into(),
                queue: 0,
                offset,
                max_bytes: 1 << 20,
                ..pb::FetchRequest::default()
            }))
            .await;
        let Some(Resp::Fetch(fetch)) = response.body else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        for b in &fetch.batches {
            for m in raftmq_proto::batch::decode_records(&b.batch, b.base_offset) {
                let m = m.expect("stored batches decode");
                if m.offset >= offset {
                    out.push(String::from_utf8(m.value.to_vec()).unwrap());
                    offset = m.offset + 1;
                }
            }
        }
        if offset >= fetch.high_watermark {
            if out.len() >= want || Instant::now() + Duration::from_millis(100) >= deadline {
                return out;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Prints the last lines of every node's log (on a failure).
fn dump_logs(cluster: &Cluster) {
    for n in &cluster.nodes {
        let text = std::fs::read_to_string(cluster.log_path(n.id)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        eprintln!("----- node {} -----", n.id);
        for l in &lines[lines.len().saturating_sub(25)..] {
            eprintln!("{l}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grow_replace_and_shrink_under_load_loses_nothing() {
    let mut cluster = Cluster::start(3);
    let client = Client::connect(&cluster.addrs()).await.expect("connect");
    let admin = Admin::new(&client);
    admin.create_topic(TOPIC, 1).await.expect("create topic");

    // An idempotent producer acknowledges each message; every ack is recorded.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let producer = {
        let (client, stop, acked, errors) =
            (client.clone(), stop.clone(), acked.clone(), errors.clone());
        tokio::spawn(async move {
            let producer = Producer::builder(&client).build().await.expect("producer");
            let mut i = 0u64;
            // One message in flight at a time, so the acknowledged order is the
            // stored order.
            while !stop.load(Ordering::Relaxed) && i < 100_000 {
                let value = format!("m{i}");
                i += 1;
                let ack = producer.send(Message::new(TOPIC, value.clone())).await;
                match ack {
                    Ok(ack) => match ack.await {
                        Ok(_) => acked.lock().unwrap().push(value),
                        Err(e) => errors.lock().unwrap().push(e.to_string()),
                    },
                    Err(e) => errors.lock().unwrap().push(e.to_string()),
                }
            }
            producer.close().await;
        })
    };
    // A consumer reads along the whole time; it must never see an error, a gap or
    // a message twice.
    let consumed = Arc::new(Mutex::new(Vec::<String>::new()));
    let consumer = {
        let (client, stop, consumed, errors) = (
            client.clone(),
            stop.clone(),
            consumed.clone(),
            errors.clone(),
        );
        tokio::spawn(async move {
            let mut consumer = Consumer::new(&client);
            let start = async {
                consumer.assign(TOPIC, &[0]).await?;
                consumer.seek(0, SeekTo::Earliest).await
            };
            if let Err(e) = start.await {
                errors.lock().unwrap().push(format!("consumer start: {e}"));
                return;
            }
            while !stop.load(Ordering::Relaxed) {
                match consumer.poll().await {
                    Ok(messages) => consumed.lock().unwrap().extend(
                        messages
                            .into_iter()
                            .map(|m| String::from_utf8_lossy(&m.value).into_owned()),
                    ),
                    Err(e) => {
                        errors.lock().unwrap().push(format!("consumer: {e}"));
                        return;
                    }
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Grow to five.
    let n4 = cluster.add_joining_node();
    promote(&admin, n4).await;
    let n5 = cluster.add_joining_node();
    promote(&admin, n5).await;
    assert_eq!(membership(&client).await, (vec![1, 2, 3, 4, 5], vec![]));

    // Node 2 dies for good: remove it, and put a fresh node in its place.
    cluster.kill(2);
    if let Err(e) = admin.remove_node(2).await {
        dump_logs(&cluster);
        panic!("remove a dead node: {e}");
    }
    let n6 = cluster.add_joining_node();
    promote(&admin, n6).await;
    assert_eq!(membership(&client).await, (vec![1, 3, 4, 5, 6], vec![]));

    // Shrink back to three (whoever leads hands over if it is removed).
    admin.remove_node(n4).await.expect("remove 4");
    admin.remove_node(n5).await.expect("remove 5");
    assert_eq!(membership(&client).await, (vec![1, 3, 6], vec![]));
    cluster.terminate(n4);
    cluster.terminate(n5);

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    producer.await.expect("producer task");
    consumer.await.expect("consumer task");
    let errors = errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "the application saw errors: {errors:?}");
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "too few messages: {}", acked.len());

    let consumed = consumed.lock().unwrap().clone();
    assert!(!consumed.is_empty(), "the consumer read nothing");
    assert!(
        consumed.len() <= acked.len(),
        "the consumer read {} messages, only {} were acknowledged",
        consumed.len(),
        acked.len()
    );
    assert_eq!(
        consumed[..],
        acked[..consumed.len()],
        "the consumer saw a gap, a duplicate or a reordering"
    );

    // Every acknowledged message, once, in order, on every remaining node.
    for id in [1, 3, n6] {
        let addr = cluster.nodes[(id - 1) as usize].addr;
        let stored = read_from(addr, acked.len()).await;
        assert_eq!(
            stored.len(),
            acked.len(),
            "node {id}: messages stored vs acknowledged"
        );
        assert_eq!(
            stored, acked,
            "node {id} differs from what was acknowledged"
        );
    }
}

/// Waits (at most 20 s) until the log file at `path` contains every one of `needles`.
async fn wait_for_log(path: &str, needles: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if needles.iter().all(|n| text.contains(n)) {
            return;
        }
        assert!(Instant::now() < deadline, "{path} never said {needles:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the leader has recorded every member's incarnation.
async fn incarnations_recorded(admin: &Admin, members: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let statuses = admin.cluster_status().await.expect("status");
        let recorded = statuses
            .iter()
            .filter_map(|n| n.status.as_ref().ok())
            .find(|s| s.role == "leader")
            .is_some_and(|s| {
                s.members.len() == members && s.members.iter().all(|m| m.incarnation != 0)
            });
        if recorded {
            return;
        }
        assert!(Instant::now() < deadline, "incarnations never recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node that rejoins replays the whole log, memberships that recorded other
/// members' *earlier* incarnations included: it must still take the appends of a
/// leader that was itself replaced since (and so catch up and be promoted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejoining_node_catches_up_from_a_leader_replaced_before_it() {
    let mut cluster = Cluster::start(3);
    let client = Client::connect(&cluster.addrs()).await.expect("connect");
    let admin = Admin::new(&client);
    admin.create_topic(TOPIC, 1).await.expect("create topic");
    incarnations_recorded(&admin, 3).await;
    // About 11 MiB after the entry that recorded the first incarnations: a node
    // that replays the log gets it in many appends (each at most 1 MiB), and sits
    // on that old membership for a while.
    let producer = Producer::builder(&client).build().await.expect("producer");
    let mut acks = Vec::new();
    for i in 0..700u32 {
        let value = vec![(i % 251) as u8; 16 << 10];
        acks.push(
            producer
                .send(Message::new(TOPIC, value))
                .await
                .expect("send"),
        );
    }
    for ack in acks {
        ack.await.expect("acknowledged");
    }
    producer.close().await;
    let leader = common::find_leader(&cluster, Duration::from_secs(10)).await;
    let x = (1..=3).find(|&id| id != leader).unwrap();
    // Replace x under its own id, then make it the leader.
    cluster.kill(x);
    admin.remove_node(x).await.expect("remove x");
    cluster.rejoin(x);
    promote(&admin, x).await;
    incarnations_recorded(&admin, 3).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while common::find_leader(&cluster, Duration::from_secs(10)).await != x {
        let _ = admin.transfer_leader(x).await;
        assert!(Instant::now() < deadline, "leadership never moved to {x}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Now replace another node: it replays memberships naming x's old incarnation.
    let y = (1..=3).find(|&id| id != x).unwrap();
    cluster.kill(y);
    admin.remove_node(y).await.expect("remove y");
    cluster.rejoin(y);
    promote(&admin, y).await;
    let (voters, learners) = membership(&client).await;
    assert_eq!((voters, learners), (vec![1, 2, 3], vec![]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_is_refused_until_removed_and_joined_again() {
    let (mut cluster, client, victim) = three_nodes_with_a_follower_killed().await;
    let admin = Admin::new(&client);
    let leader = common::find_leader(&cluster, Duration::from_secs(10)).await;
    cluster.wipe(victim);
    cluster.restart(victim);
    // The leader refuses it: it never becomes a working member again.
    wait_for_log(&cluster.log_path(leader), &["wiped or replaced"]).await;
    // And the wiped node's own log says why it is stuck.
    wait_for_log(
        &cluster.log_path(victim),
        &["a peer refuses this node", "wiped or replaced"],
    )
    .await;
    let victim_addr = cluster.nodes[(victim - 1) as usize].addr;
    let mut conn = Conn::connect_addr(victim_addr).await.expect("connect");
    let status = conn
        .call(Req::ClusterStatus(pb::ClusterStatusRequest {}))
        .await;
    let Some(Resp::ClusterStatus(s)) = status.body else {
        panic!("status: {status:?}")
    };
    assert_ne!(s.role, "leader");
    assert_eq!(s.commit_index, 0, "the wiped node received nothing");

    // Remove it and join it again as a new member: it then gets everything.
    cluster.kill(victim);
    admin
        .remove_node(victim)
        .await
        .expect("remove the wiped node");
    let fresh = cluster.add_joining_node();
    promote(&admin, fresh).await;
    let (voters, _) = membership(&client).await;
    assert_eq!(voters.len(), 3);
    assert!(!voters.contains(&victim) && voters.contains(&fresh));
}

/// Three nodes with a topic, every member's incarnation recorded by the leader,
/// and one follower killed: the cluster, a client and the killed node's id.
async fn three_nodes_with_a_follower_killed() -> (Cluster, Client, u64) {
    let mut cluster = Cluster::start(3);
    let client = Client::connect(&cluster.addrs()).await.expect("connect");
    let admin = Admin::new(&client);
    admin.create_topic(TOPIC, 1).await.expect("create topic");
    // Wait until the first leader has recorded every member's incarnation.
    incarnations_recorded(&admin, 3).await;
    let leader = common::find_leader(&cluster, Duration::from_secs(10)).await;
    let victim = (1..=3).find(|&id| id != leader).unwrap();
    cluster.kill(victim);
    (cluster, client, victim)
}

/// A wiped node started again with `--join` under its old id, without being
/// removed first: the cluster refuses it for good, and it stops and says why (it
/// used to run on, a member of nothing, until someone noticed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_the_cluster_refuses_to_add_stops_and_says_why() {
    let (mut cluster, _client, victim) = three_nodes_with_a_follower_killed().await;
    cluster.rejoin_unchecked(victim);
    let status = cluster.wait_exit(victim, Duration::from_secs(30));
    let log = std::fs::read_to_string(cluster.log_path(victim)).unwrap_or_default();
    assert!(
        status.is_some_and(|s| !s.success()),
        "the refused node should stop with an error, status {status:?}:\n{log}"
    );
    assert!(
        log.contains("refused to add this node") && log.contains("wrong --data-dir"),
        "the node's log says why:\n{log}"
    );
}

/// A voter restarted with `--join` (kept in its service's command line) stays a
/// voter, and its log says so rather than "joined as a learner".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_restarted_with_join_says_it_still_is_a_voter() {
    let (mut cluster, client, victim) = three_nodes_with_a_follower_killed().await;
    cluster.restart_joining(victim);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut log = String::new();
    while Instant::now() < deadline {
        log = std::fs::read_to_string(cluster.log_path(victim)).unwrap_or_default();
        if log.contains("already is a voter") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        log.contains("already is a voter") && !log.contains("joined the cluster as a learner"),
        "the node's log says it still is a voter:\n{log}"
    );
    reach_membership(
        &cluster,
        &client,
        (vec![1, 2, 3], vec![]),
        "the restarted voter stays a voter",
    )
    .await;
}

/// Polls the leader's view of the membership until it is `(voters, learners)`
/// (sorted), for at most `limit`; the last view seen on failure.
/// [`wait_membership`] within 30 s, or the nodes' last log lines and a panic
/// saying `failure` and what was seen.
async fn reach_membership(
    cluster: &Cluster,
    client: &Client,
    want: (Vec<u64>, Vec<u64>),
    failure: &str,
) {
    if let Err(seen) = wait_membership(client, want, Duration::from_secs(30)).await {
        dump_logs(cluster);
        panic!("{failure}: {seen}");
    }
}

async fn wait_membership(
    client: &Client,
    want: (Vec<u64>, Vec<u64>),
    limit: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let mut seen = String::from("no leader answered");
    while Instant::now() < deadline {
        if let Ok(statuses) = Admin::new(client).cluster_status().await {
            let leader = statuses
                .iter()
                .filter_map(|n| n.status.as_ref().ok())
                .find(|s| s.role == "leader");
            if let Some(s) = leader {
                let pick = |voter: bool| -> Vec<u64> {
                    let mut ids: Vec<u64> = s
                        .members
                        .iter()
                        .filter(|m| m.voter == voter)
                        .map(|m| m.node_id)
                        .collect();
                    ids.sort_unstable();
                    ids
                };
                let got = (pick(true), pick(false));
                if got == want {
                    return Ok(());
                }
                seen = format!("{got:?}");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(seen)
}

/// A metadata voter lost for good (killed, silent past `dead_node_timeout_ms`) is
/// replaced by the learner that joined: the learner is promoted, the lost voter
/// demoted. The cluster then survives a second failure that would have cost the
/// old voters their quorum (two of {1, 2, 3} gone).
/// Joins a 4th node to a 3-voter cluster and waits until it is a learner (3 voters
/// are `metadata_voters`: it is not promoted); returns its id.
async fn join_a_spare(cluster: &mut Cluster, client: &Client) -> u64 {
    let four = cluster.add_joining_node();
    let learner = (vec![1, 2, 3], vec![four]);
    if let Err(seen) = wait_membership(client, learner, Duration::from_secs(20)).await {
        dump_logs(cluster);
        panic!("node {four} did not join as a learner: {seen}");
    }
    four
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metadata_voter_lost_for_good_is_replaced_by_a_learner() {
    let mut cluster = Cluster::start_with(3, &["--dead-node-timeout-ms", "1500"]);
    let client = Client::connect(&cluster.addrs()).await.expect("connect");
    let admin = Admin::new(&client);
    admin.create_topic("before", 1).await.expect("create topic");
    let four = join_a_spare(&mut cluster, &client).await;
    cluster.kill(3);
    if let Err(seen) = wait_membership(
        &client,
        (vec![1, 2, four], vec![3]),
        Duration::from_secs(30),
    )
    .await
    {
        dump_logs(&cluster);
        panic!("node 3 was not replaced by node {four}: {seen}");
    }
    // Of the old voters only node 1 is left: the metadata group still has a quorum
    // (nodes 1 and 4 of {1, 2, 4}), so a topic can still be created and written.
    cluster.kill(2);
    let client = Client::connect(&[cluster.nodes[0].addr.to_string()])
        .await
        .expect("connect to node 1");
    let admin = Admin::new(&client);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match admin.create_topic("after", 1).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                dump_logs(&cluster);
                panic!("no metadata quorum after the second failure: {e}");
            }
        }
    }
    let producer = Producer::builder(&client).build().await.expect("producer");
    producer
        .send(Message::new("after", "written"))
        .await
        .expect("send")
        .await
        .expect("acknowledged by nodes 1 and 4");
    producer.close().await;
}

/// A decommissioned metadata voter is replaced the same way, at once (no timeout),
/// and can then be removed; its id can then be reused by a new data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decommissioned_metadata_voter_is_replaced_then_removable_and_its_id_reusable() {
    let mut cluster = Cluster::start_with(3, &["--data-groups", "3"]);
    let client = Client::connect(&cluster.addrs()).await.expect("connect");
    let admin = Admin::new(&client);
    admin.create_topic(TOPIC, 3).await.expect("create topic");
    let four = join_a_spare(&mut cluster, &client).await;
    // The metadata leader itself, running, is decommissioned: its data-group
    // replicas move to node 4, it hands leadership over, and its vote goes to
    // node 4 too.
    let leaving = common::find_leader(&cluster, Duration::from_secs(10)).await;
    admin
        .move_replicas(Some(leaving), 0)
        .await
        .expect("decommission");
    let mut stay: Vec<u64> = (1..=3).filter(|&n| n != leaving).collect();
    stay.push(four);
    let replaced = format!("node {leaving} was not replaced by node {four}");
    reach_membership(&cluster, &client, (stay.clone(), vec![leaving]), &replaced).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match admin.remove_node(leaving).await {
            Ok(_) => break,
            // Still placed in a data group while its replicas move.
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "retrying");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => {
                dump_logs(&cluster);
                panic!("remove the decommissioned node: {e}");
            }
        }
    }
    let removed = format!("node {leaving} was not removed");
    reach_membership(&cluster, &client, (stay.clone(), vec![]), &removed).await;

    // Its id is reused by a new data directory (a machine replaced with its disk,
    // a StatefulSet's pod): it joins and, after a rebalance, holds replicas again.
    cluster.kill(leaving);
    cluster.rejoin(leaving);
    let rejoined = format!("node {leaving} did not join again with its old id");
    reach_membership(&cluster, &client, (stay.clone(), vec![leaving]), &rejoined).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = admin.move_replicas(None, 64).await;
        let placed = client
            .refresh_metadata()
            .await
            .map(|m| m.group_replicas.values().any(|r| r.contains(&leaving)))
            .unwrap_or(false);
        if placed {
            break;
        }
        if Instant::now() >= deadline {
            dump_logs(&cluster);
            panic!("no replica placed on node {leaving} once it joined again");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A cluster grown from one node by `--join` reaches `metadata_voters` (3) voters
/// by itself, never through a lasting 2-voter group: the first node to join stays a
/// learner until a second one can be promoted with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_grown_from_one_node_promotes_its_learners_to_three_voters() {
    let mut cluster = Cluster::start(1);
    let client = Client::connect(&cluster.addrs()).await.expect("connect");
    Admin::new(&client)
        .create_topic(TOPIC, 1)
        .await
        .expect("create topic");
    let two = cluster.add_joining_node();
    if let Err(seen) = wait_membership(&client, (vec![1], vec![two]), Duration::from_secs(20)).await
    {
        dump_logs(&cluster);
        panic!("node {two} did not join as a learner: {seen}");
    }
    // Many upkeeps later it is still a learner: 2 voters would be worse than 1.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(membership(&client).await, (vec![1], vec![two]));
    let three = cluster.add_joining_node();
    if let Err(seen) = wait_membership(
        &client,
        (vec![1, two, three], vec![]),
        Duration::from_secs(20),
    )
    .await
    {
        dump_logs(&cluster);
        panic!("the learners were not promoted: {seen}");
    }
}

/// Three metadata voters all in rack `a`: a rack failure would take the whole
/// metadata quorum. Nodes joining from racks `b` and `c` each take the vote of a
/// follower of rack `a`, one at a time, until the voters span three racks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_voters_move_to_racks_that_have_none() {
    let mut cluster = Cluster::start_with_racks(&["a", "a", "a"], &[]);
    let client = Client::connect(&cluster.addrs()).await.expect("connect");
    Admin::new(&client)
        .create_topic(TOPIC, 1)
        .await
        .expect("create topic");
    cluster.set_rack(4, "b");
    cluster.set_rack(5, "c");
    let four = cluster.add_joining_node();
    let five = cluster.add_joining_node();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (voters, learners) = membership(&client).await;
        if voters.len() == 3 && voters.contains(&four) && voters.contains(&five) {
            assert_eq!(
                learners.len(),
                2,
                "the two voters of rack a left: {learners:?}"
            );
            break;
        }
        if Instant::now() >= deadline {
            dump_logs(&cluster);
            panic!("voters {voters:?} (learners {learners:?}) never spanned racks a, b and c");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The metadata group works with its new voters.
    Admin::new(&client)
        .create_topic("after-the-move", 1)
        .await
        .expect("create topic with the new voters");
}

/// Retries `what` (a membership or placement request refused while the cluster
/// moves, or sent to a leader that hands over) for up to 60 s.
async fn retry<T, F, Fut>(cluster: &Cluster, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, raftmq_client::ClientError>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "{what}: retrying");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => {
                dump_logs(cluster);
                panic!("{what}: {e}");
            }
        }
    }
}

/// Waits until the metadata places data group 1 on `want`.
async fn placed_on(cluster: &Cluster, client: &Client, want: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let placed = client
            .refresh_metadata()
            .await
            .ok()
            .and_then(|m| m.group_replicas.get(&1).cloned())
            .map(|mut r| {
                r.sort_unstable();
                r
            });
        if placed.as_deref() == Some(want) {
            return;
        }
        if Instant::now() >= deadline {
            dump_logs(cluster);
            panic!("data group 1 is placed on {placed:?}, not {want:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Produces `count` messages to the topic's only queue, each acknowledged by a
/// quorum of its data group; returns their values.
async fn produce_acknowledged(client: &Client, from: u32, count: u32) -> Vec<String> {
    let producer = Producer::builder(client).build().await.expect("producer");
    let mut acks = Vec::new();
    let mut values = Vec::new();
    for i in from..from + count {
        let value = format!("m{i}");
        acks.push(
            producer
                .send(Message::new(TOPIC, value.clone()))
                .await
                .expect("send"),
        );
        values.push(value);
    }
    for ack in acks {
        ack.await.expect("acknowledged");
    }
    producer.close().await;
    values
}

/// A node removed from the cluster while a data group was still moving off it,
/// wiped and joined again under its id, then placed in that group again: the
/// group still listed its old data directory as a voter, which looked settled
/// (the ids match) but could never vote again (the new directory is refused as
/// not the one that acknowledged). The group's leader drops the old directory,
/// then adds the new one as a learner and promotes it: node 3 ends up holding
/// every acknowledged message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_placed_again_in_a_group_that_still_lists_it_replaces_its_old_self() {
    let mut cluster = Cluster::start_with(3, &["--data-groups", "1"]);
    let client = Client::connect(&cluster.addrs()).await.expect("connect");
    let admin = Admin::new(&client);
    retry(&cluster, "create topic", || admin.create_topic(TOPIC, 1)).await;
    placed_on(&cluster, &client, &[1, 2, 3]).await;
    let mut values = produce_acknowledged(&client, 0, 50).await;
    // Let data group 1 record its members' data directories.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let four = join_a_spare(&mut cluster, &client).await;

    // Node 4 is down, so the move of node 3's replica onto it cannot finish: group
    // 1 keeps node 3 as a voter while the placement has already left it.
    cluster.kill(four);
    retry(&cluster, "decommission node 3", || {
        admin.move_replicas(Some(3), 0)
    })
    .await;
    placed_on(&cluster, &client, &[1, 2, four]).await;
    retry(&cluster, "remove node 3", || admin.remove_node(3)).await;

    // Node 3 comes back as a new data directory under its old id.
    cluster.kill(3);
    cluster.rejoin(3);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (voters, learners) = membership(&client).await;
        if voters.contains(&3) || learners.contains(&3) {
            break;
        }
        if Instant::now() >= deadline {
            dump_logs(&cluster);
            panic!("node 3 did not join again: {voters:?} {learners:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Node 4 leaves for good: node 3 is the only node group 1 can go back to.
    retry(&cluster, "decommission node 4", || {
        admin.move_replicas(Some(four), 0)
    })
    .await;
    placed_on(&cluster, &client, &[1, 2, 3]).await;
    values.extend(produce_acknowledged(&client, 50, 50).await);

    // The new node 3 holds group 1's log: it was added and caught up.
    let addr = cluster.nodes[2].addr;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let read = read_from(addr, values.len()).await;
        if read == values {
            break;
        }
        if Instant::now() >= deadline {
            dump_logs(&cluster);
            panic!(
                "node 3 serves {} of {} acknowledged messages: it was never made a replica \
                 of group 1 again",
                read.len(),
                values.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
