//! Client programs nobody on this project wrote (kcat, Python Kafka clients),
//! started and checked from tests.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The helper scripts' directory.
pub const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kafka");

/// A command for a client program nobody here built: with the system's libraries,
/// not the ones cargo puts on `LD_LIBRARY_PATH` for tests (the benchmark's own
/// librdkafka build, without zlib, would otherwise shadow kcat's and the Python
/// client's).
pub fn client_command(program: &str) -> Command {
    let mut command = Command::new(program);
    command.env_remove("LD_LIBRARY_PATH");
    command
}

/// Panics with what to install unless `program probe...` succeeds.
pub fn require(program: &str, probe: &[&str], install: &str) {
    let ok = client_command(program)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{program} is needed by this test: {install} (.ci/test does)"
    );
}

/// kcat must be installed.
pub fn require_kcat() {
    require("kcat", &["-V"], "apt-get install kcat");
}

/// A Python module must be importable.
pub fn require_python_module(module: &str, package: &str) {
    require(
        "python3",
        &["-c", &format!("import {module}")],
        &format!("python3 -m pip install {package}"),
    );
}

/// Runs `command` (with `stdin` when given) for at most `limit`; panics with its
/// output when it fails; returns its standard output.
pub fn run(mut command: Command, stdin: Option<Vec<u8>>, limit: Duration) -> String {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("start the client");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let (ok, stdout, stderr) = wait_output(child, limit);
    assert!(
        ok,
        "{command:?} failed:\nstdout: {}\nstderr: {}",
        stdout.chars().take(2000).collect::<String>(),
        stderr.chars().take(4000).collect::<String>()
    );
    stdout
}

/// Waits for a child, killing it after `limit`; (success, stdout, stderr).
pub fn wait_output(child: std::process::Child, limit: Duration) -> (bool, String, String) {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let out = child.wait_with_output();
        let _ = tx.send(());
        out
    });
    if rx.recv_timeout(limit).is_err() {
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    }
    let out = waiter.join().expect("waiter").expect("output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
