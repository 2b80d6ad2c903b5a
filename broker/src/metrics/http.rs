//! `GET /metrics` over plain HTTP/1.1: the Prometheus text format, one response per
//! connection (`Connection: close`).
//!
//! Small on purpose: a scraper sends one request line and a few headers, so the
//! endpoint reads at most [`REQUEST_HEAD_BYTES_MAX`] bytes within
//! [`REQUEST_TIMEOUT`], serves at most [`SCRAPES_MAX`] connections at a time, and
//! answers anything but `GET /metrics` (or `GET /`) with a status line of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::BrokerMetrics;

/// Largest request head read (request line and headers).
const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
/// Time a client has to send its request and read the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; further ones wait in the accept backlog.
const SCRAPES_MAX: usize = 16;

/// The Prometheus text format's content type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds the metrics address. Separate from [`serve`] so that a bad address fails
/// the broker's start with a clear error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves scrapes until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<BrokerMetrics>,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(SCRAPES_MAX));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &metrics)).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, metrics: &BrokerMetrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if head.len() >= REQUEST_HEAD_BYTES_MAX {
            return respond(&mut stream, "431 Request Header Fields Too Large", "").await;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => respond(&mut stream, "200 OK", &metrics.render()).await,
        // Liveness: the process answers.
        ("GET", "/health") => respond(&mut stream, "200 OK", "ok\n").await,
        // Readiness: a leader is known and this node has applied what it knows
        // committed (a restarted node is not ready while it replays its log).
        ("GET", "/ready") => match metrics.readiness() {
            Ok(()) => respond(&mut stream, "200 OK", "ready\n").await,
            Err(why) => {
                let body = format!("not ready: {why}\n");
                respond(&mut stream, "503 Service Unavailable", &body).await
            }
        },
        ("GET", "/") => {
            respond(
                &mut stream,
                "200 OK",
                "raftmq-broker: /metrics, /health, /ready\n",
            )
            .await
        }
        ("GET", _) => respond(&mut stream, "404 Not Found", "not found\n").await,
        _ => respond(&mut stream, "405 Method Not Allowed", "only GET\n").await,
    }
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
