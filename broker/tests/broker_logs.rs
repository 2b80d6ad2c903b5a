//! The broker's log lines as a file or a pipe sees them: no colour escapes, the node
//! id on every line, and one JSON object per line with `--log-format json`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs a single-node broker on an ephemeral port for a moment with `args`, stderr
/// to a pipe (not a terminal), then stops it (SIGTERM) and returns its stderr.
fn broker_stderr(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_raftmq-broker"))
        .args(["--node-id", "7", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--segment-bytes",
            "16777216",
            "--max-batch-bytes",
            "1048576",
        ])
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the broker starts");
    // Long enough to recover the log and win its election.
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: signalling a child process we own.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stderr).expect("utf-8 log lines")
}

#[test]
fn given_stderr_is_a_pipe_log_lines_have_no_colour_and_name_the_node() {
    let text = broker_stderr(&[]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3, "too few lines:\n{text}");
    assert!(!text.contains('\x1b'), "ANSI escapes in a pipe:\n{text}");
    for line in &lines {
        assert!(line.starts_with("node=7 "), "line without the node: {line}");
    }
    assert!(text.contains("raft role changed"), "{text}");
    assert!(!text.contains("Some("), "Debug formatting leaked:\n{text}");
}

#[test]
fn given_log_format_json_every_line_is_an_object_with_the_node() {
    let text = broker_stderr(&["--log-format", "json"]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3, "too few lines:\n{text}");
    for line in lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(value["node"], 7, "{line}");
        assert!(value["level"].is_string(), "{line}");
    }
}
