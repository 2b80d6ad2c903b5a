//! `raftmq-bench --protocol kafka` runs end to end against a local broker with
//! both ways of handing messages to librdkafka, and counts exactly what was
//! acknowledged.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the benchmark with `extra` flags on a one-node local cluster and returns
/// its JSON report.
fn run_bench(extra: &[&str]) -> serde_json::Value {
    let mut child = Command::new(env!("CARGO_BIN_EXE_raftmq-bench"))
        .args([
            "--local-cluster",
            "1",
            "--protocol",
            "kafka",
            "--queues",
            "3",
            "--warmup",
            "1000",
            "--json",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start raftmq-bench");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("poll raftmq-bench").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("raftmq-bench {extra:?} did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("raftmq-bench output");
    assert!(
        output.status.success(),
        "raftmq-bench {extra:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON report in {stdout:?}"));
    serde_json::from_str(line).expect("a JSON report")
}

#[test]
fn given_either_kafka_send_mode_should_count_every_acknowledged_message() {
    for (mode, window) in [("batch", "5000"), ("single", "5000"), ("batch", "7")] {
        let report = run_bench(&["--kafka-send", mode, "--count", "30000", "--window", window]);
        assert_eq!(
            report["messages"], 30_000,
            "{mode}, window {window}: {report}"
        );
        assert_eq!(report["config"]["protocol"], "kafka");
        assert_eq!(report["config"]["kafka_send"], mode);
        let p50 = report["latency"]["p50_us"].as_u64().expect("a p50");
        assert!(p50 > 0, "{mode}: latency recorded: {report}");
    }
}
