//! `raftmq-broker dev`: fails fast (non-zero) when a node cannot start, and restarts
//! a node that dies; Ctrl-C/SIGTERM stops the whole cluster with status 0.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `count` consecutive free loopback ports (checked by binding each).
fn free_ports(count: u16) -> u16 {
    for _ in 0..200 {
        let base = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if base > 65_000 {
            continue;
        }
        let all_free = (0..count).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no {count} consecutive free ports");
}

fn dev(dir: &std::path::Path, base: u16, metrics: u16) -> Child {
    // Its own Kafka ports too: the default (9092) is shared by every test.
    let kafka = free_ports(3);
    Command::new(env!("CARGO_BIN_EXE_raftmq-broker"))
        .args(["dev", "--nodes", "3"])
        .args(["--base-port", &base.to_string()])
        .args(["--metrics-base-port", &metrics.to_string()])
        .args(["--kafka-base-port", &kafka.to_string()])
        .args(["--segment-bytes", &(16u64 << 20).to_string()])
        .arg("--data-dir")
        .arg(dir.join("dev"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dev starts")
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn terminate(child: &mut Child) -> Option<std::process::ExitStatus> {
    // SAFETY: signalling a child process we own.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let status = wait_exit(child, Duration::from_secs(20));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status
}

fn listening(port: u16) -> bool {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
}

#[test]
fn given_a_busy_port_dev_stops_the_cluster_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_ports(3);
    let metrics = free_ports(3);
    let _busy = TcpListener::bind(("127.0.0.1", base + 1)).expect("hold node 2's port");
    let mut child = dev(dir.path(), base, metrics);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let Some(status) = status else {
        let _ = child.kill();
        panic!("dev kept running with a node that cannot start");
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "dev exited 0; stderr:\n{stderr}");
    assert!(stderr.contains("node 2 exited at start-up"), "{stderr}");
    assert!(stderr.contains("cannot listen on"), "{stderr}");
    assert_eq!(
        stderr.matches("(os error 98)").count(),
        1,
        "the OS error is named once: {stderr}"
    );
    // The other nodes were stopped too.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !listening(base) && !listening(base + 2),
        "nodes left running"
    );
}

#[test]
fn given_a_killed_node_dev_restarts_it_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_ports(3);
    let metrics = free_ports(3);
    let mut child = dev(dir.path(), base, metrics);
    // The node lines come once every node listens: take node 2's pid.
    let stdout = child.stdout.take().unwrap();
    let mut reader = BufReader::new(stdout);
    let mut pid = None;
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while pid.is_none() && Instant::now() < deadline {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if line.starts_with("node 2:") {
            pid = line
                .split_whitespace()
                .skip_while(|w| *w != "pid")
                .nth(1)
                .and_then(|p| p.parse::<i32>().ok());
        }
    }
    let Some(pid) = pid else {
        let _ = child.kill();
        panic!("no pid for node 2 in dev's output");
    };
    // SAFETY: killing a grandchild process this test started through dev.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let down = Instant::now() + Duration::from_secs(5);
    while listening(base + 1) && Instant::now() < down {
        std::thread::sleep(Duration::from_millis(20));
    }
    let up = Instant::now() + Duration::from_secs(15);
    let mut back = false;
    while Instant::now() < up {
        std::thread::sleep(Duration::from_millis(100));
        if listening(base + 1) {
            back = true;
            break;
        }
    }
    let status = terminate(&mut child);
    assert!(back, "node 2 was not restarted");
    assert!(status.is_some_and(|s| s.success()), "dev: {status:?}");
    assert!(!listening(base) && !listening(base + 1) && !listening(base + 2));
}
