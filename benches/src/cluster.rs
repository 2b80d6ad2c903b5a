//! `--local-cluster N`: broker processes of the same build on loopback ephemeral
//! ports, in a temporary directory under the current one (a real disk, not tmpfs),
//! stopped and removed when dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Running brokers.
pub struct LocalCluster {
    children: Vec<Child>,
    addrs: Vec<String>,
    tls_ca: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

/// A cluster CA and one node certificate (for 127.0.0.1) signed by it, written
/// into `dir`; returns the broker flags and the CA file.
fn make_certificates(dir: &std::path::Path) -> anyhow::Result<(Vec<String>, PathBuf)> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "raftmq-bench cluster CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let mut node = CertificateParams::new(vec!["127.0.0.1".to_string()])?;
    node.distinguished_name
        .push(DnType::CommonName, "raftmq-bench node");
    let key = KeyPair::generate()?;
    let cert = node.signed_by(&key, &ca)?;
    let files = [
        ("cluster-ca.pem", ca.pem()),
        ("node.pem", cert.pem()),
        ("node.key", key.serialize_pem()),
    ];
    for (name, pem) in &files {
        std::fs::write(dir.join(name), pem)?;
    }
    let path = |name: &str| dir.join(name).display().to_string();
    let flags = vec![
        "--tls-cert".into(),
        path("node.pem"),
        "--tls-key".into(),
        path("node.key"),
        "--tls-cluster-ca".into(),
        path("cluster-ca.pem"),
    ];
    Ok((flags, dir.join("cluster-ca.pem")))
}

fn broker_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable has a directory")?;
    let path = dir.join("raftmq-broker");
    if !path.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p raftmq-broker`",
            path.display()
        );
    }
    Ok(path)
}

/// A free loopback port; with `pair`, one whose successor is free too (the node's
/// Kafka port: every node uses the same offset).
fn free_port(pair: bool) -> anyhow::Result<String> {
    for _ in 0..100 {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?;
        if !pair
            || (addr.port() < u16::MAX && TcpListener::bind(("127.0.0.1", addr.port() + 1)).is_ok())
        {
            return Ok(addr.to_string());
        }
    }
    bail!("no two consecutive free ports on loopback")
}

fn kafka_addr(addr: &str) -> Option<String> {
    let addr: std::net::SocketAddr = addr.parse().ok()?;
    Some(format!("{}:{}", addr.ip(), addr.port() + 1))
}

fn kafka_flag(addr: &str, kafka: bool) -> Vec<String> {
    match kafka_addr(addr) {
        Some(k) if kafka => vec!["--kafka-listen".into(), k],
        _ => Vec::new(),
    }
}

impl LocalCluster {
    /// Starts `n` brokers and waits until each listens.
    pub fn start(
        n: u64,
        async_durability: bool,
        kafka: bool,
        tls: bool,
        extra_args: &[String],
    ) -> anyhow::Result<LocalCluster> {
        let binary = broker_binary()?;
        let dir = tempfile::Builder::new()
            .prefix(".raftmq-bench-")
            .tempdir_in(".")
            .context("temp dir in the current directory")?;
        let addrs: Vec<String> = (0..n)
            .map(|_| free_port(kafka))
            .collect::<anyhow::Result<_>>()?;
        let peers = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let (tls_flags, tls_ca) = if tls {
            let (flags, ca) = make_certificates(dir.path())?;
            (flags, Some(ca))
        } else {
            (Vec::new(), None)
        };
        let mut children = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let log = std::fs::File::create(dir.path().join(format!("node{}.log", i + 1)))?;
            let child = Command::new(&binary)
                .args(["--node-id", &(i + 1).to_string(), "--listen", addr])
                .args(["--peers", &peers])
                .args([
                    "--durability",
                    if async_durability { "async" } else { "fsync" },
                ])
                .arg("--data-dir")
                .arg(dir.path().join(format!("node{}", i + 1)))
                .args(kafka_flag(addr, kafka))
                .args(&tls_flags)
                .args(extra_args)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("start raftmq-broker")?;
            children.push(child);
        }
        let cluster = LocalCluster {
            children,
            addrs,
            tls_ca,
            _dir: dir,
        };
        for addr in &cluster.addrs {
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(addr).is_err() {
                if Instant::now() > deadline {
                    bail!("broker {addr} did not start");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(cluster)
    }

    /// The cluster CA, when started with TLS.
    pub fn tls_ca(&self) -> Option<PathBuf> {
        self.tls_ca.clone()
    }

    /// Client addresses.
    pub fn addrs(&self) -> Vec<String> {
        self.addrs.clone()
    }

    /// Kafka addresses (each node's port + 1), when started with the Kafka port.
    pub fn kafka_addrs(&self) -> Vec<String> {
        self.addrs.iter().filter_map(|a| kafka_addr(a)).collect()
    }

    /// Process ids, for CPU accounting.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for child in &mut self.children {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
