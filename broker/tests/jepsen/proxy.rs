//! A controllable TCP proxy: one per directed link (node i → node j), so that a link
//! can be cut, blackholed or slowed in one direction only.
//!
//! Modes:
//! - `Pass`: bytes flow (after `delay` per chunk, if set);
//! - `Cut`: every open connection is closed and new ones are accepted and closed at
//!   once (the sender sees a reset and reconnects with backoff);
//! - `Blackhole`: connections stay open but bytes are read and thrown away, as when
//!   packets are lost and nothing says so. Leaving a blackhole closes the connections
//!   that lost bytes, since a byte stream with a hole in it is not a frame stream.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Largest chunk moved at once.
const CHUNK_BYTES: usize = 64 * 1024;
/// Longest wait to connect to the target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What a link does with bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    /// Forward.
    Pass,
    /// Close and refuse.
    Cut,
    /// Accept and discard.
    Blackhole,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LinkState {
    mode: LinkMode,
    delay: Duration,
    /// Connections opened in an older epoch close themselves.
    epoch: u64,
}

/// A running proxy. Dropping it stops the listener and every connection.
#[derive(Debug)]
pub struct Proxy {
    /// Where senders connect.
    pub listen: SocketAddr,
    /// Where bytes go.
    pub target: SocketAddr,
    state: watch::Sender<LinkState>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Binds an ephemeral loopback port and forwards to `target`. Needs a tokio runtime.
    pub async fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let listen = listener.local_addr()?;
        let (state, rx) = watch::channel(LinkState {
            mode: LinkMode::Pass,
            delay: Duration::ZERO,
            epoch: 0,
        });
        let accept = tokio::spawn(accept_loop(listener, target, rx));
        Ok(Proxy {
            listen,
            target,
            state,
            accept,
        })
    }

    /// The current mode.
    pub fn mode(&self) -> LinkMode {
        self.state.borrow().mode
    }

    /// Sets the mode; see the module doc for what each does to open connections.
    pub fn set_mode(&self, mode: LinkMode) {
        self.state.send_modify(|s| {
            let close_open = mode == LinkMode::Cut || s.mode == LinkMode::Blackhole;
            if close_open && s.mode != mode {
                s.epoch += 1;
            }
            s.mode = mode;
        });
    }

    /// Adds `delay` before each forwarded chunk (zero: none).
    pub fn set_delay(&self, delay: Duration) {
        self.state.send_modify(|s| s.delay = delay);
    }

    /// Back to `Pass` with no delay.
    pub fn heal(&self) {
        self.set_mode(LinkMode::Pass);
        self.set_delay(Duration::ZERO);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The accept task owns the connection tasks; aborting it drops them all.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, rx: watch::Receiver<LinkState>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        while connections.try_join_next().is_some() {}
        let state = *rx.borrow();
        if state.mode == LinkMode::Cut {
            drop(inbound);
            continue;
        }
        connections.spawn(serve(inbound, target, rx.clone(), state.epoch));
    }
}

async fn serve(inbound: TcpStream, target: SocketAddr, rx: watch::Receiver<LinkState>, epoch: u64) {
    let _ = inbound.set_nodelay(true);
    let outbound = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(s)) => s,
        _ => return,
    };
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    // Either direction ending ends both: both streams are dropped here.
    tokio::select! {
        _ = pump(in_read, out_write, rx.clone(), epoch) => {}
        _ = pump(out_read, in_write, rx, epoch) => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut rx: watch::Receiver<LinkState>,
    epoch: u64,
) {
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
                let s = *rx.borrow_and_update();
                if s.epoch != epoch || s.mode == LinkMode::Cut {
                    return;
                }
                continue;
            }
        };
        let s = *rx.borrow();
        if s.epoch != epoch || s.mode == LinkMode::Cut {
            return;
        }
        if s.mode == LinkMode::Blackhole {
            continue;
        }
        if !s.delay.is_zero() {
            tokio::time::sleep(s.delay).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
