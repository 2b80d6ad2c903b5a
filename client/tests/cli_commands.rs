//! The `raftmq` command-line tool against the in-process fake cluster.

mod support;

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use support::FakeCluster;

/// Runs `raftmq --brokers <addr> args...` feeding it `stdin`; the process is killed
/// if it runs over 30 s.
async fn raftmq(address: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
    raftmq_bytes(address, args, stdin.as_bytes()).await
}

/// [`raftmq`] with any bytes on stdin.
async fn raftmq_bytes(address: &str, args: &[&str], stdin: &[u8]) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_raftmq"))
        .arg("--brokers")
        .arg(address)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn raftmq");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).await.expect("write stdin");
    drop(input);
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("raftmq finished in time")
        .expect("wait");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn topic_produce_consume_and_status_commands_work_end_to_end() {
    let cluster = FakeCluster::start(2).await;
    let address = cluster.address(1);

    let (ok, out, err) = raftmq(&address, &["topic", "create", "logs", "--queues", "2"], "").await;
    assert!(ok, "{err}");
    assert!(out.contains("created topic logs"), "{out}");

    let (ok, out, _) = raftmq(&address, &["topic", "list"], "").await;
    assert!(ok);
    assert_eq!(out.trim(), "topic\tqueues\nlogs\t2");

    let lines: String = (0..50).map(|i| format!("line {i}\n")).collect();
    let (ok, out, err) = raftmq(&address, &["produce", "logs", "--queue", "1"], &lines).await;
    assert!(ok, "{err}");
    assert_eq!(out, "", "the summary stays off stdout");
    assert_eq!(err.trim(), "50 of 50 messages acknowledged");

    let (ok, out, err) = raftmq(
        &address,
        &[
            "consume", "logs", "--queue", "1", "--from", "10", "--count", "5",
        ],
        "",
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, "line 10\nline 11\nline 12\nline 13\nline 14\n");

    let (ok, out, _) = raftmq(&address, &["topic", "describe", "logs"], "").await;
    assert!(ok);
    assert!(out.contains("1\t0\t50\t50"), "{out}");

    let (ok, out, _) = raftmq(&address, &["cluster", "status"], "").await;
    assert!(ok);
    assert!(
        out.contains("\tleader\t") && out.contains("\tfollower\t"),
        "{out}"
    );

    let (ok, _, err) = raftmq(&address, &["topic", "create", "logs"], "").await;
    assert!(!ok, "creating an existing topic fails");
    assert!(err.contains("topic \"logs\" already exists"), "{err}");
    assert_eq!(err.matches("exists").count(), 1, "said once: {err}");
    assert_eq!(err.lines().count(), 1, "one error line: {err}");
    assert!(err.starts_with("raftmq: error: "), "{err}");

    let args = ["topic", "create", "logs", "--if-not-exists"];
    let (ok, _, err) = raftmq(&address, &args, "").await;
    assert!(ok, "--if-not-exists accepts an existing topic: {err}");
}

#[tokio::test]
async fn produce_takes_any_bytes_and_consume_never_rewinds() {
    let cluster = FakeCluster::start(1).await;
    cluster.create_topic("bin", 1);
    let address = cluster.address(0);
    // Not UTF-8, separated by NUL: every message goes through as bytes.
    let input = "caf\u{e9}\0second\0third";
    let mut raw = input.as_bytes().to_vec();
    raw[3] = 0xff; // an invalid UTF-8 byte
    let args = ["produce", "bin", "--delimiter", "\\0"];
    let (ok, _, err) = raftmq_bytes(&address, &args, &raw).await;
    assert!(ok, "{err}");
    assert_eq!(err.trim(), "3 of 3 messages acknowledged");

    // A message larger than a batch (256 KiB) goes in a batch of its own.
    let big = format!("{}\n", "x".repeat(300_000));
    let (ok, _, err) = raftmq(&address, &["produce", "bin"], &big).await;
    assert!(ok, "{err}");
    assert_eq!(err.trim(), "1 of 1 message acknowledged");
    let (ok, out, err) = raftmq(&address, &["consume", "bin", "-o", "-1", "-e"], "").await;
    assert!(ok, "{err}");
    assert_eq!(out.len(), 300_001);

    // -e: exit once at the end; -N: the last N.
    let (ok, out, err) = raftmq(&address, &["consume", "bin", "-o", "-3", "-e"], "").await;
    assert!(ok, "{err}");
    assert!(out.starts_with("second\nthird\nxxx"), "{}", &out[..20]);
    let (ok, out, err) = raftmq(&address, &["consume", "bin", "-e"], "").await;
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 4);

    // Past the end: refused, never rewound to offset 0.
    let (ok, out, err) = raftmq(&address, &["consume", "bin", "--from", "99"], "").await;
    assert!(!ok);
    assert_eq!(out, "");
    assert!(
        err.contains("offset 99 is past the end of bin/0 (4)"),
        "{err}"
    );

    // One message over the limit fails alone, named; the others are stored.
    let huge = "y".repeat(9 << 20);
    let input = format!("before\n{huge}\nafter\n");
    let (ok, _, err) = raftmq(&address, &["produce", "bin"], &input).await;
    assert!(!ok);
    assert!(err.contains("message 2 (input record 2) refused"), "{err}");
    assert!(
        err.contains("2 of 3 messages acknowledged, 1 failed (not stored)"),
        "{err}"
    );
    let (ok, out, err) = raftmq(&address, &["consume", "bin", "-o", "-2", "-e"], "").await;
    assert!(ok, "{err}");
    assert_eq!(out, "before\nafter\n");

    // A misspelled group is not created by a reset.
    let args = [
        "group", "reset", "nosuch", "--topic", "bin", "--to", "earliest",
    ];
    let (ok, _, err) = raftmq(&address, &args, "").await;
    assert!(!ok);
    assert!(err.contains("does not exist"), "{err}");
}

#[tokio::test]
async fn consume_as_a_group_commits_only_what_it_printed() {
    let cluster = FakeCluster::start(1).await;
    cluster.create_topic("logs", 1);
    let address = cluster.address(0);
    let lines: String = (0..10).map(|i| format!("m{i}\n")).collect();
    let (ok, _, err) = raftmq(&address, &["produce", "logs"], &lines).await;
    assert!(ok, "{err}");
    let args = ["consume", "logs", "--group", "readers", "--count", "4"];
    let (ok, out, err) = raftmq(&address, &args, "").await;
    assert!(ok, "{err}");
    assert_eq!(out, "m0\nm1\nm2\nm3\n");
    let (ok, out, err) = raftmq(&address, &args, "").await;
    assert!(ok, "{err}");
    assert_eq!(
        out, "m4\nm5\nm6\nm7\n",
        "the second run resumes after the first"
    );
    // -e: the rest, then exit (committed: a further run has nothing to print).
    let to_end = ["consume", "logs", "--group", "readers", "-e"];
    let (ok, out, err) = raftmq(&address, &to_end, "").await;
    assert!(ok, "{err}");
    assert_eq!(out, "m8\nm9\n");
    let (ok, out, err) = raftmq(&address, &to_end, "").await;
    assert!(ok, "{err}");
    assert_eq!(out, "", "everything was committed");
}

#[tokio::test]
async fn a_group_consumer_stopped_by_ctrl_c_commits_leaves_and_exits_zero() {
    use tokio::io::AsyncBufReadExt;
    let cluster = FakeCluster::start(1).await;
    cluster.create_topic("logs", 1);
    let address = cluster.address(0);
    let lines: String = (0..10).map(|i| format!("m{i}\n")).collect();
    let (ok, _, err) = raftmq(&address, &["produce", "logs"], &lines).await;
    assert!(ok, "{err}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_raftmq"))
        .args(["--brokers", &address, "consume", "logs", "--group", "g"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    for i in 0..10 {
        let line = tokio::time::timeout(Duration::from_secs(10), out.next_line())
            .await
            .expect("a line in time")
            .unwrap();
        assert_eq!(line.as_deref(), Some(format!("m{i}").as_str()));
    }
    // SAFETY: signalling a child process this test started.
    unsafe {
        libc::kill(child.id().unwrap() as libc::pid_t, libc::SIGINT);
    }
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits after Ctrl-C")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let (ok, out, err) = raftmq(&address, &["group", "describe", "g"], "").await;
    assert!(ok, "{err}");
    assert!(
        out.contains("logs\t0\t10\t"),
        "the printed messages are committed: {out}"
    );
}

#[tokio::test]
async fn keys_headers_and_kcat_formats_round_trip() {
    let cluster = FakeCluster::start(1).await;
    cluster.create_topic("kv", 1);
    let address = cluster.address(0);
    let args = [
        "produce", "kv", "-K", ":", "-H", "trace=t1", "-H", "app=cli",
    ];
    let (ok, _, err) = raftmq(&address, &args, "user-1:hello\nno key here\n").await;
    assert!(ok, "{err}");
    let args = ["consume", "kv", "-e", "-f", "%o %k=%s [%h]\\n"];
    let (ok, out, err) = raftmq(&address, &args, "").await;
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "0 user-1=hello [trace=t1,app=cli]\n1 =no key here [trace=t1,app=cli]\n"
    );
    let (ok, out, err) = raftmq(&address, &["consume", "kv", "-e", "--json"], "").await;
    assert!(ok, "{err}");
    let first = out.lines().next().expect("a line");
    assert!(
        first.starts_with("{\"topic\":\"kv\",\"queue\":0,\"offset\":0,"),
        "{first}"
    );
    assert!(
        first.ends_with("\"key\":\"user-1\",\"value\":\"hello\",\"headers\":{\"trace\":\"t1\",\"app\":\"cli\"}}"),
        "{first}"
    );
    let (ok, _, err) = raftmq(&address, &["consume", "kv", "-e", "-f", "%q"], "").await;
    assert!(!ok);
    assert!(err.contains("unknown format token %q"), "{err}");
}

#[tokio::test]
async fn cluster_add_data_groups_prints_the_new_groups_and_refusals_as_errors() {
    let cluster = FakeCluster::start(3).await;
    // Asked of a follower: the tool finds the leader.
    let address = cluster.address(2);

    let (ok, out, err) = raftmq(&address, &["cluster", "add-data-groups", "2"], "").await;
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "2 data groups added\ngroup 1 -> replicas 1,2,3\ngroup 2 -> replicas 2,3,1\n"
    );
    let (ok, out, _) = raftmq(&address, &["cluster", "add-data-groups", "1"], "").await;
    assert!(ok);
    assert_eq!(out, "1 data group added\ngroup 3 -> replicas 3,1,2\n");

    let (ok, out, err) = raftmq(&address, &["cluster", "add-data-groups", "0"], "").await;
    assert!(!ok, "a refusal fails the command: {out}");
    assert!(err.contains("add at least one data group"), "{err}");
    let (ok, _, err) = raftmq(&address, &["cluster", "add-data-groups", "many"], "").await;
    assert!(!ok);
    assert!(err.contains("invalid value"), "{err}");
}

/// The `messages` column of `topic describe`, per queue.
fn queue_counts(describe: &str) -> Vec<u64> {
    describe
        .lines()
        .skip_while(|line| !line.starts_with("queue\t"))
        .skip(1)
        .map(|line| line.split('\t').nth(3).expect("a messages column"))
        .map(|n| n.parse().expect("a count"))
        .collect()
}

#[tokio::test]
async fn produce_sticks_to_one_queue_by_default_and_spreads_every_line_on_request() {
    let cluster = FakeCluster::start(1).await;
    let address = cluster.address(0);
    let (ok, _, err) = raftmq(
        &address,
        &["topic", "create", "spread", "--queues", "4"],
        "",
    )
    .await;
    assert!(ok, "{err}");

    let lines: String = (0..40).map(|i| format!("line {i}\n")).collect();
    let (ok, _, err) = raftmq(&address, &["produce", "spread"], &lines).await;
    assert!(ok, "{err}");
    let (ok, out, err) = raftmq(&address, &["topic", "describe", "spread"], "").await;
    assert!(ok, "{err}");
    let mut counts = queue_counts(&out);
    counts.sort_unstable();
    assert_eq!(
        counts,
        [0, 0, 0, 40],
        "40 short lines stay on one queue: {out}"
    );

    let (ok, _, err) = raftmq(
        &address,
        &["produce", "spread", "--partitioner", "round-robin"],
        &lines,
    )
    .await;
    assert!(ok, "{err}");
    let (ok, out, err) = raftmq(&address, &["topic", "describe", "spread"], "").await;
    assert!(ok, "{err}");
    let counts = queue_counts(&out);
    assert_eq!(counts.iter().sum::<u64>(), 80, "{out}");
    assert!(
        counts.iter().all(|&n| n == 10 || n == 50),
        "round robin gives each queue 10 more: {out}"
    );
}

#[tokio::test]
async fn produce_to_a_topic_that_does_not_exist_says_so_once_with_the_command_that_creates_it() {
    let cluster = FakeCluster::start(1).await;
    let address = cluster.address(0);
    let lines: String = (0..100).map(|i| format!("m{i}\n")).collect();
    let (ok, _, err) = raftmq(&address, &["produce", "nosuch"], &lines).await;
    assert!(!ok, "producing to a missing topic fails");
    assert_eq!(
        err.lines().count(),
        1,
        "one error line, not one per input line: {err}"
    );
    assert!(
        err.contains("topic \"nosuch\" does not exist")
            && err.contains("raftmq topic create nosuch"),
        "{err}"
    );
}
