//! The `raftmq-broker` binary with invalid configurations: each is refused with one
//! clear line on stderr and a non-zero exit, before anything is served.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use raftmq_broker::hard_state::HardStateFile;
use raftmq_broker::raft::NodeId;

/// Runs the broker with `args` in `dir`; it must exit on its own within 20 s.
fn run(dir: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_raftmq-broker"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the broker binary starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "the broker accepted {args:?} and kept running; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// Asserts a non-zero exit and exactly one stderr line, containing every `needles`.
fn assert_refused(dir: &Path, args: &[&str], needles: &[&str]) {
    let out = run(dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{args:?} was accepted; stderr:\n{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: expected one error line, got:\n{stderr}"
    );
    let line = lines[0];
    assert!(line.starts_with("raftmq-broker: error: "), "{line}");
    for needle in needles {
        assert!(
            line.contains(needle),
            "{args:?}: {line:?} does not mention {needle:?}"
        );
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn given_a_peer_with_a_bad_address_should_refuse_it() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(
        dir.path(),
        &["--peers", "1=nonsense"],
        &["bad address", "nonsense"],
    );
}

#[test]
fn given_a_peer_without_an_id_should_refuse_it() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(
        dir.path(),
        &["--peers", "x=127.0.0.1:7001"],
        &["bad peer", "x=127.0.0.1:7001"],
    );
}

#[test]
fn given_a_bad_listen_address_should_refuse_it() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(dir.path(), &["--listen", "7070"], &["bad address", "7070"]);
}

#[test]
fn given_a_bad_metrics_address_should_refuse_it() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(
        dir.path(),
        &["--metrics-listen", "localhost"],
        &["bad address", "localhost"],
    );
}

#[test]
fn given_a_rack_with_spaces_should_refuse_it() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(
        dir.path(),
        &["--rack", "rack one"],
        &["rack", "rack one", "printable"],
    );
}

#[test]
fn given_metrics_on_the_broker_port_should_refuse_them() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(
        dir.path(),
        &[
            "--listen",
            "127.0.0.1:7321",
            "--metrics-listen",
            "127.0.0.1:7321",
        ],
        &["metrics_listen", "127.0.0.1:7321"],
    );
}

#[test]
fn given_a_duplicate_node_id_should_refuse_it() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(
        dir.path(),
        &[
            "--peers",
            "1=127.0.0.1:7001,2=127.0.0.1:7002,2=127.0.0.1:7003",
        ],
        &["duplicate node id 2"],
    );
}

#[test]
fn given_peers_without_this_node_should_refuse_them() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(
        dir.path(),
        &[
            "--node-id",
            "3",
            "--peers",
            "1=127.0.0.1:7001,2=127.0.0.1:7002",
        ],
        &["peers do not include this node", "3"],
    );
}

#[test]
fn given_node_id_zero_should_refuse_it() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(
        dir.path(),
        &["--node-id", "0"],
        &["node id must be at least 1"],
    );
}

#[test]
fn given_an_unknown_key_in_the_config_file_should_name_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "raftmq.toml",
        "node_id = 1\nlisten_addr = \"127.0.0.1:7070\"\n",
    );
    assert_refused(
        dir.path(),
        &["--config", &file],
        &["invalid config file", "unknown field", "listen_addr"],
    );
}

#[test]
fn given_a_wrong_type_in_the_config_file_should_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "raftmq.toml",
        "node_id = 1\nsegment_bytes = \"big\"\n",
    );
    assert_refused(
        dir.path(),
        &["--config", &file],
        &[
            "invalid config file",
            "raftmq.toml",
            "line 2 (segment_bytes = \"big\")",
        ],
    );
}

#[test]
fn given_a_bad_address_in_the_config_file_should_refuse_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "raftmq.toml", "peers = [\"1=127.0.0.1\"]\n");
    assert_refused(
        dir.path(),
        &["--config", &file],
        &["bad address", "127.0.0.1"],
    );
}

#[test]
fn given_a_missing_config_file_should_name_it() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(
        dir.path(),
        &["--config", "does-not-exist.toml"],
        &["cannot read config file", "does-not-exist.toml"],
    );
}

#[test]
fn given_a_data_dir_of_another_node_should_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    drop(HardStateFile::open(&data, NodeId(1)).expect("node 1 claims the dir"));
    assert_refused(
        dir.path(),
        &[
            "--node-id",
            "2",
            "--listen",
            "127.0.0.1:0",
            "--peers",
            "2=127.0.0.1:0",
            "--data-dir",
            "data",
        ],
        &["data dir belongs to node 1, not node 2"],
    );
}

#[test]
fn given_a_segment_size_too_small_should_refuse_it() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(dir.path(), &["--segment-bytes", "1024"], &["segment_bytes"]);
}
