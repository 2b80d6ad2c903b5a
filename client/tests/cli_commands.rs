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
    input
        .write_all(stdin.as_bytes())
        .await
        .expect("write stdin");
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
    assert_eq!(out.trim(), "logs\t2");

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
    assert!(err.contains("topic exists"), "{err}");
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
}
