//! Outbound links to the other brokers.
//!
//! One task per peer *node* owns a TCP connection and a bounded queue, shared by
//! every Raft group of the process ([`PeerLinks`]): a node with 1,000 groups opens
//! one connection to each other node, not 1,000 (which would also run into the
//! per-address connection limit), and the messages of all groups to a peer are
//! written together. Each group's [`PeerTransport`] holds handles to the links of
//! its members ([`PeerTransport::set_peers`] follows the membership in effect); a
//! link stops when no group holds it any more.
//!
//! Sending never blocks the Raft task: when a queue is full or the peer is down the
//! message is dropped, which Raft tolerates (it retries appends and heartbeats).
//! While disconnected the task reconnects with exponential backoff and discards
//! what was queued, since stale appends would only be rejected.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Mutex, Weak};
use std::time::Duration;

use raftmq_proto::frame_writer::{FrameWriter, OutFrame};
use raftmq_proto::pb;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::raft::{Message, NodeId};
use crate::raft_wire::{self, PeerIdentity};

/// Messages queued per peer (all groups together) before new ones are dropped.
const PEER_QUEUE_MESSAGES: usize = 16384;
/// Messages written to the socket before one flush.
const PEER_FLUSH_MESSAGES: usize = 256;
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(1000);
/// How often a peer that stays unreachable is reported.
const UNREACHABLE_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// One peer node's sender task, shared by the groups that hold this handle; the
/// task stops when the last handle is dropped.
#[derive(Debug)]
struct SharedLink {
    /// Frames already encoded (see [`PeerTransport::send`]).
    tx: mpsc::Sender<OutFrame>,
    stop: CancellationToken,
}

impl Drop for SharedLink {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The process's links to other nodes, one per (node, address), shared by every
/// group of the process.
#[derive(Debug)]
pub struct PeerLinks {
    links: Mutex<HashMap<(NodeId, SocketAddr), Weak<SharedLink>>>,
    max_frame_bytes: usize,
    security: Arc<crate::security::Security>,
    shutdown: CancellationToken,
}

impl PeerLinks {
    /// No link yet; each starts when a group first needs it.
    pub fn new(
        max_frame_bytes: usize,
        security: Arc<crate::security::Security>,
        shutdown: CancellationToken,
    ) -> Arc<PeerLinks> {
        Arc::new(PeerLinks {
            links: Mutex::new(HashMap::new()),
            max_frame_bytes,
            security,
            shutdown,
        })
    }

    /// The link to `id` at `addr`, started if no group holds it.
    fn get(&self, id: NodeId, addr: SocketAddr) -> Arc<SharedLink> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(link) = links.get(&(id, addr)).and_then(Weak::upgrade) {
            return link;
        }
        links.retain(|_, link| link.strong_count() > 0);
        let (tx, rx) = mpsc::channel(PEER_QUEUE_MESSAGES);
        let stop = self.shutdown.child_token();
        tokio::spawn(peer_link(
            id,
            addr,
            rx,
            self.max_frame_bytes,
            self.security.clone(),
            stop.clone(),
        ));
        let link = Arc::new(SharedLink { tx, stop });
        links.insert((id, addr), Arc::downgrade(&link));
        link
    }
}

/// One group's handle on a peer's link.
#[derive(Debug)]
struct Link {
    addr: SocketAddr,
    shared: Arc<SharedLink>,
}

/// One group's handles to the links of its peers.
#[derive(Debug)]
pub struct PeerTransport {
    self_id: NodeId,
    links: BTreeMap<NodeId, Link>,
    identity: PeerIdentity,
    shared: Arc<PeerLinks>,
    /// The Raft group every message is stamped with.
    group: crate::directory::GroupId,
}

impl PeerTransport {
    /// Links to every peer other than `self_id`, through the process's `shared`
    /// links.
    pub fn start(
        self_id: NodeId,
        peers: &BTreeMap<NodeId, SocketAddr>,
        identity: PeerIdentity,
        shared: Arc<PeerLinks>,
    ) -> PeerTransport {
        let mut transport = PeerTransport {
            self_id,
            links: BTreeMap::new(),
            identity,
            shared,
            group: crate::directory::METADATA_GROUP,
        };
        transport.set_peers(peers);
        transport
    }

    /// Links to exactly these peers (this node is skipped): new ones start, removed
    /// ones stop, a peer whose address changed is reconnected.
    pub fn set_peers(&mut self, peers: &BTreeMap<NodeId, SocketAddr>) {
        self.links
            .retain(|id, link| peers.get(id) == Some(&link.addr));
        for (&id, &addr) in peers {
            self.ensure_peer(id, addr);
        }
    }

    /// Links to `id` at `addr` unless a link to it exists (a node that does not
    /// know the membership yet answers whoever writes to it).
    pub fn ensure_peer(&mut self, id: NodeId, addr: SocketAddr) {
        if id == self.self_id || self.links.contains_key(&id) {
            return;
        }
        let shared = self.shared.get(id, addr);
        self.links.insert(id, Link { addr, shared });
    }

    /// Stamps every message with `group` (before the first peer is linked).
    pub fn for_group(mut self, group: crate::directory::GroupId) -> PeerTransport {
        self.group = group;
        self
    }

    /// The identity carried by every message sent from now on.
    pub fn set_identity(&mut self, identity: PeerIdentity) {
        self.identity = identity;
    }

    /// Queues a message for its peer; drops it if the queue is full.
    pub fn send(&self, msg: Message) {
        let to = msg.to;
        self.send_pb(to, raft_wire::to_pb(msg, self.identity));
    }

    /// Queues a piece of a snapshot transfer; drops it if the queue is full (the
    /// follower then sees a gap and the leader retries the whole transfer).
    pub fn send_snapshot_chunk(&self, chunk: raft_wire::SnapshotChunk) {
        let to = chunk.to;
        self.send_pb(to, raft_wire::snapshot_chunk_to_pb(chunk, self.identity));
    }

    /// Pings every linked peer (node-level liveness, see `crate::liveness`).
    pub fn ping_all(&self) {
        for &to in self.links.keys() {
            self.send_pb(to, raft_wire::ping_to_pb(self.self_id, to, self.identity));
        }
    }

    /// Tells `to` (at `addr` when it is not linked) why its messages are ignored.
    pub fn send_refusal(
        &mut self,
        to: NodeId,
        addr: Option<SocketAddr>,
        reason: String,
        removed_at: u64,
    ) {
        if let Some(addr) = addr {
            self.ensure_peer(to, addr);
        }
        let msg = raft_wire::refusal_to_pb(self.self_id, to, reason, removed_at, self.identity);
        self.send_pb(to, msg);
    }

    /// Encodes `msg` now, on the group's task, and queues the frame. An append's
    /// entries are views of the mapped log, whose uncommitted tail a truncation
    /// zeroes and the next append overwrites; encoded later, by the link's task
    /// behind a slow socket, a deposed leader's queued append could carry other
    /// bytes than the entries it names, and a follower would store them under
    /// their (index, term).
    fn send_pb(&self, to: NodeId, mut msg: pb::RaftMessage) {
        msg.group_id = self.group;
        if let Some(link) = self.links.get(&to) {
            if link.shared.tx.try_send(encode(msg)).is_err() {
                tracing::trace!(peer = to.0, "peer queue full, message dropped");
            }
        }
    }
}

async fn peer_link(
    id: NodeId,
    addr: SocketAddr,
    mut rx: mpsc::Receiver<OutFrame>,
    max_frame_bytes: usize,
    security: Arc<crate::security::Security>,
    shutdown: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    let mut connected_once = false;
    // While the link is down: since when, and when that was last said (a peer that
    // stays away is reported every UNREACHABLE_LOG_INTERVAL, not at every retry).
    let mut down_since: Option<std::time::Instant> = None;
    let mut last_said = std::time::Instant::now();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            s = security.connect_addr(addr) => s,
        };
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                if let Some(since) = down_since {
                    if last_said.elapsed() >= UNREACHABLE_LOG_INTERVAL {
                        last_said = std::time::Instant::now();
                        tracing::warn!(
                            peer = id.0, %addr, error = %e,
                            down_for = ?since.elapsed(),
                            "peer still unreachable"
                        );
                    }
                }
                // Drop what queued up while the peer was unreachable.
                while rx.try_recv().is_ok() {}
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        if !connected_once {
            tracing::info!(peer = id.0, %addr, "connected to peer");
        } else if let Some(since) = down_since.take() {
            tracing::info!(peer = id.0, %addr, down_for = ?since.elapsed(), "reconnected to peer");
        }
        connected_once = true;
        backoff = BACKOFF_MIN;
        // Frames are copied once (`encode_copied`) and written without a second
        // copy into a codec buffer.
        let mut framed = FrameWriter::new(stream, max_frame_bytes);
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = rx.recv() => m,
            };
            let Some(first) = first else { return };
            let mut result = framed.feed(first).await;
            let mut fed = 1;
            while result.is_ok() && fed < PEER_FLUSH_MESSAGES {
                match rx.try_recv() {
                    Ok(msg) => {
                        result = framed.feed(msg).await;
                        fed += 1;
                    }
                    Err(_) => break,
                }
            }
            if result.is_ok() {
                result = framed.flush().await;
            }
            if let Err(e) = result {
                tracing::info!(peer = id.0, %addr, error = %e, "lost the link to peer; reconnecting");
                down_since = Some(std::time::Instant::now());
                last_said = std::time::Instant::now();
                break;
            }
        }
    }
}

fn encode(msg: pb::RaftMessage) -> OutFrame {
    let request = pb::Request {
        correlation_id: 0,
        api_version: 1,
        on_behalf_of: String::new(),
        body: Some(pb::request::Body::Raft(msg)),
    };
    // Entries are copied, not referenced, for the reason `send_pb` gives.
    OutFrame::encode_copied(&request)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use futures::StreamExt;
    use raftmq_store::{CommitLog, Entry, EntryKind, LogConfig, LogIndex, Term};
    use tokio_util::codec::FramedRead;

    use super::*;
    use crate::raft::MessageBody;

    fn append(entries: Vec<Entry>) -> Message {
        Message {
            from: NodeId(1),
            to: NodeId(2),
            term: Term(1),
            body: MessageBody::Append {
                prev_log_index: LogIndex(0),
                prev_log_term: Term(0),
                entries,
                commit_index: LogIndex(0),
            },
        }
    }

    fn entry(index: u64, term: u64, body: Bytes) -> Entry {
        Entry {
            index: LogIndex(index),
            term: Term(term),
            kind: EntryKind::Command,
            body,
        }
    }

    /// A deposed leader's append, queued behind a slow socket, must carry the
    /// entry as it was when the append was made, not what its log holds at that
    /// index by the time the socket takes it.
    #[tokio::test]
    async fn a_queued_append_keeps_its_entries_when_the_log_is_truncated_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            segment_bytes: 4 << 20,
            max_entry_bytes: 1 << 20,
            verify_on_open: false,
            ..LogConfig::default()
        };
        let (mut log, _) = CommitLog::open(dir.path(), config).unwrap();
        let original = Bytes::from(vec![0x5A; 3000]);
        log.append(&[entry(1, 1, original.clone())]).unwrap();
        let views = log.entries(LogIndex(1), 1, usize::MAX).unwrap();

        // The peer takes nothing until the end: a 32 MiB append fills the socket's
        // buffers and the link's task waits on it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let max_frame = 64 << 20;
        let links = PeerLinks::new(
            max_frame,
            Arc::new(crate::security::Security::plaintext()),
            CancellationToken::new(),
        );
        let peers = BTreeMap::from([(NodeId(2), addr)]);
        let transport = PeerTransport::start(NodeId(1), &peers, PeerIdentity::default(), links);
        let filler = Bytes::from(vec![1u8; 32 << 20]);
        transport.send(append(vec![entry(1, 1, filler)]));
        transport.send(append(views));

        // The leader is deposed: its uncommitted entry is truncated and the new
        // leader's entry written in its place.
        log.truncate_suffix(LogIndex(1)).unwrap();
        log.append(&[entry(1, 2, Bytes::from(vec![0xEE; 3000]))])
            .unwrap();

        let (socket, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("the link connects")
            .unwrap();
        let mut frames = FramedRead::new(socket, raftmq_proto::frame::codec(max_frame));
        let mut bodies = Vec::new();
        for _ in 0..2 {
            let frame = tokio::time::timeout(Duration::from_secs(10), frames.next())
                .await
                .expect("a frame within 10 s")
                .expect("the link stays open")
                .unwrap();
            let request = raftmq_proto::frame::decode_request(frame.freeze()).unwrap();
            let Some(pb::request::Body::Raft(msg)) = request.body else {
                panic!("not a raft message: {request:?}");
            };
            let Some(pb::raft_message::Body::Append(append)) = msg.body else {
                panic!("not an append");
            };
            bodies.push(append.entries[0].body.clone());
        }
        assert_eq!(bodies[0].len(), 32 << 20);
        assert!(
            bodies[1] == original,
            "the queued append carried other bytes than its entry (first byte {:#x})",
            bodies[1][0]
        );
    }
}
