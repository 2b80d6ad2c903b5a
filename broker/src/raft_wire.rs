//! Raft messages on the wire: conversion between the core's [`Message`] and the
//! protobuf `RaftMessage`. Entry bodies are `Bytes` on both sides, so a decoded
//! append shares the frame's memory instead of copying each entry.

use raftmq_proto::pb;
use raftmq_store::{Entry, EntryKind, LogIndex, Term};

use crate::raft::{Message, MessageBody, NodeId};

/// Why a peer's message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The oneof body is missing (unknown message type).
    #[error("raft message without a body")]
    MissingBody,
    /// An entry kind this broker does not know.
    #[error("unknown entry kind {0}")]
    UnknownEntryKind(u32),
}

/// Who sent a peer message: the cluster it believes it belongs to (0: not known
/// yet) and its data directory's incarnation. The node checks both against the
/// membership in effect (see `crate::cluster`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerIdentity {
    /// The sender's cluster id, 0 when it does not know it yet.
    pub cluster_id: u64,
    /// The sender's data-directory incarnation.
    pub incarnation: u64,
    /// The sender's listen address (where answers go when the membership does not
    /// name it yet).
    pub address: Option<std::net::SocketAddr>,
}

fn entry_to_pb(entry: Entry) -> pb::RaftEntry {
    pb::RaftEntry {
        index: entry.index.0,
        term: entry.term.0,
        kind: u32::from(entry.kind as u8),
        body: entry.body,
    }
}

fn entry_from_pb(entry: pb::RaftEntry) -> Result<Entry, WireError> {
    let kind = u8::try_from(entry.kind)
        .ok()
        .and_then(EntryKind::from_u8)
        .ok_or(WireError::UnknownEntryKind(entry.kind))?;
    Ok(Entry {
        index: LogIndex(entry.index),
        term: Term(entry.term),
        kind,
        body: entry.body,
    })
}

/// Encodes a core message for a peer.
pub fn to_pb(msg: Message, identity: PeerIdentity) -> pb::RaftMessage {
    use pb::raft_message::Body;
    let body = match msg.body {
        MessageBody::Vote {
            pre_vote,
            last_log_index,
            last_log_term,
            transfer,
        } => Body::Vote(pb::VoteRequest {
            pre_vote,
            last_log_index: last_log_index.0,
            last_log_term: last_log_term.0,
            transfer,
        }),
        MessageBody::VoteResponse { pre_vote, granted } => {
            Body::VoteResponse(pb::VoteResponse { pre_vote, granted })
        }
        MessageBody::Append {
            prev_log_index,
            prev_log_term,
            entries,
            commit_index,
        } => Body::Append(pb::AppendRequest {
            prev_log_index: prev_log_index.0,
            prev_log_term: prev_log_term.0,
            entries: entries.into_iter().map(entry_to_pb).collect(),
            commit_index: commit_index.0,
            heartbeat: false,
            read_round: 0,
            quiesce: false,
        }),
        MessageBody::AppendResponse {
            success,
            match_index,
            reject_index,
            conflict,
            last_log_index,
        } => Body::AppendResponse(pb::AppendResponse {
            success,
            match_index: match_index.0,
            reject_index: reject_index.0,
            conflict_term: conflict.map_or(0, |(t, _)| t.0),
            conflict_first_index: conflict.map_or(0, |(_, i)| i.0),
            last_log_index: last_log_index.0,
            heartbeat: false,
            read_round: 0,
            quiesced: false,
        }),
        MessageBody::Heartbeat {
            commit_index,
            read_round,
            quiesce,
        } => Body::Append(pb::AppendRequest {
            commit_index: commit_index.0,
            heartbeat: true,
            read_round,
            quiesce,
            ..pb::AppendRequest::default()
        }),
        MessageBody::HeartbeatResponse {
            read_round,
            quiesced,
        } => Body::AppendResponse(pb::AppendResponse {
            heartbeat: true,
            read_round,
            quiesced,
            ..pb::AppendResponse::default()
        }),
        MessageBody::ReadIndex { id } => Body::ReadIndex(pb::ReadIndexRequest { id }),
        MessageBody::ReadIndexResponse { id, index } => {
            Body::ReadIndexResponse(pb::ReadIndexResponse {
                id,
                ok: index.is_some(),
                index: index.map_or(0, |i| i.0),
            })
        }
        MessageBody::TimeoutNow => Body::TimeoutNow(pb::TimeoutNow {}),
        // The driver sends the snapshot itself as `SnapshotChunk`s (see
        // `snapshot_chunk`); on its own the message is an empty transfer, which
        // the receiver ignores.
        MessageBody::InstallSnapshot {
            index,
            snapshot_term,
            ..
        } => Body::SnapshotChunk(pb::SnapshotChunk {
            index: index.0,
            snapshot_term: snapshot_term.0,
            ..pb::SnapshotChunk::default()
        }),
    };
    pb::RaftMessage {
        from: msg.from.0,
        to: msg.to.0,
        term: msg.term.0,
        cluster_id: identity.cluster_id,
        from_incarnation: identity.incarnation,
        from_address: identity.address.map(|a| a.to_string()).unwrap_or_default(),
        group_id: 0,
        body: Some(body),
    }
}

/// One piece of a snapshot transfer (see `SnapshotChunk` in the protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// The leader.
    pub from: NodeId,
    /// The follower.
    pub to: NodeId,
    /// The leader's term.
    pub term: Term,
    /// The last index the snapshot covers.
    pub index: LogIndex,
    /// The term at `index`.
    pub snapshot_term: Term,
    /// Where `data` starts in the snapshot file.
    pub offset: u64,
    /// The size of the whole file.
    pub total_bytes: u64,
    /// The bytes.
    pub data: bytes::Bytes,
}

/// A peer's message: a core message, or a piece of a snapshot for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerMessage {
    /// For the Raft core.
    Raft(Message),
    /// For the driver's snapshot receiver.
    SnapshotChunk(SnapshotChunk),
    /// The sender ignores this node's messages, for this reason.
    Refused {
        /// The refusing node.
        from: NodeId,
        /// Why.
        reason: String,
        /// The index of the sender's committed membership that has no place for
        /// the receiver (0: not known removed).
        removed_at: u64,
    },
    /// Node-level liveness (see `crate::liveness`): the sender is up.
    Ping {
        /// The sender.
        from: NodeId,
    },
}

impl PeerMessage {
    /// The node that sent it.
    pub fn from(&self) -> NodeId {
        match self {
            PeerMessage::Raft(m) => m.from,
            PeerMessage::SnapshotChunk(c) => c.from,
            PeerMessage::Refused { from, .. } | PeerMessage::Ping { from } => *from,
        }
    }
}

/// A node-level message (not of any Raft term or group) from `from` to `to`.
fn node_message(
    from: NodeId,
    to: NodeId,
    identity: PeerIdentity,
    body: pb::raft_message::Body,
) -> pb::RaftMessage {
    pb::RaftMessage {
        from: from.0,
        to: to.0,
        term: 0,
        cluster_id: identity.cluster_id,
        from_incarnation: identity.incarnation,
        from_address: identity.address.map(|a| a.to_string()).unwrap_or_default(),
        group_id: 0,
        body: Some(body),
    }
}

/// Encodes a refusal notice (see [`PeerMessage::Refused`]).
pub fn refusal_to_pb(
    from: NodeId,
    to: NodeId,
    reason: String,
    removed_at: u64,
    identity: PeerIdentity,
) -> pb::RaftMessage {
    let body = pb::raft_message::Body::Refused(pb::PeerRefused { reason, removed_at });
    node_message(from, to, identity, body)
}

/// Encodes a liveness ping (see [`PeerMessage::Ping`]).
pub fn ping_to_pb(from: NodeId, to: NodeId, identity: PeerIdentity) -> pb::RaftMessage {
    node_message(
        from,
        to,
        identity,
        pb::raft_message::Body::Ping(pb::NodePing {}),
    )
}

/// Encodes a piece of a snapshot transfer.
pub fn snapshot_chunk_to_pb(chunk: SnapshotChunk, identity: PeerIdentity) -> pb::RaftMessage {
    pb::RaftMessage {
        from: chunk.from.0,
        to: chunk.to.0,
        term: chunk.term.0,
        cluster_id: identity.cluster_id,
        from_incarnation: identity.incarnation,
        from_address: identity.address.map(|a| a.to_string()).unwrap_or_default(),
        group_id: 0,
        body: Some(pb::raft_message::Body::SnapshotChunk(pb::SnapshotChunk {
            index: chunk.index.0,
            snapshot_term: chunk.snapshot_term.0,
            offset: chunk.offset,
            total_bytes: chunk.total_bytes,
            data: chunk.data,
        })),
    }
}

/// Decodes a peer's message and who sent it.
pub fn from_pb(msg: pb::RaftMessage) -> Result<(PeerMessage, PeerIdentity), WireError> {
    use pb::raft_message::Body;
    let identity = PeerIdentity {
        cluster_id: msg.cluster_id,
        incarnation: msg.from_incarnation,
        address: msg.from_address.parse().ok(),
    };
    let body = match msg.body.ok_or(WireError::MissingBody)? {
        Body::Ping(_) => {
            return Ok((
                PeerMessage::Ping {
                    from: NodeId(msg.from),
                },
                identity,
            ))
        }
        Body::Refused(r) => {
            return Ok((
                PeerMessage::Refused {
                    from: NodeId(msg.from),
                    reason: r.reason,
                    removed_at: r.removed_at,
                },
                identity,
            ))
        }
        Body::SnapshotChunk(c) => {
            return Ok((
                PeerMessage::SnapshotChunk(SnapshotChunk {
                    from: NodeId(msg.from),
                    to: NodeId(msg.to),
                    term: Term(msg.term),
                    index: LogIndex(c.index),
                    snapshot_term: Term(c.snapshot_term),
                    offset: c.offset,
                    total_bytes: c.total_bytes,
                    data: c.data,
                }),
                identity,
            ))
        }
        Body::Vote(v) => MessageBody::Vote {
            pre_vote: v.pre_vote,
            last_log_index: LogIndex(v.last_log_index),
            last_log_term: Term(v.last_log_term),
            transfer: v.transfer,
        },
        Body::VoteResponse(v) => MessageBody::VoteResponse {
            pre_vote: v.pre_vote,
            granted: v.granted,
        },
        Body::Append(a) if a.heartbeat => MessageBody::Heartbeat {
            commit_index: LogIndex(a.commit_index),
            read_round: a.read_round,
            quiesce: a.quiesce,
        },
        Body::Append(a) => MessageBody::Append {
            prev_log_index: LogIndex(a.prev_log_index),
            prev_log_term: Term(a.prev_log_term),
            entries: a
                .entries
                .into_iter()
                .map(entry_from_pb)
                .collect::<Result<_, _>>()?,
            commit_index: LogIndex(a.commit_index),
        },
        Body::AppendResponse(r) if r.heartbeat => MessageBody::HeartbeatResponse {
            read_round: r.read_round,
            quiesced: r.quiesced,
        },
        Body::ReadIndex(r) => MessageBody::ReadIndex { id: r.id },
        Body::ReadIndexResponse(r) => MessageBody::ReadIndexResponse {
            id: r.id,
            index: r.ok.then_some(LogIndex(r.index)),
        },
        Body::AppendResponse(r) => MessageBody::AppendResponse {
            success: r.success,
            match_index: LogIndex(r.match_index),
            reject_index: LogIndex(r.reject_index),
            conflict: (r.conflict_term != 0 || r.conflict_first_index != 0)
                .then_some((Term(r.conflict_term), LogIndex(r.conflict_first_index))),
            last_log_index: LogIndex(r.last_log_index),
        },
        Body::TimeoutNow(_) => MessageBody::TimeoutNow,
    };
    Ok((
        PeerMessage::Raft(Message {
            from: NodeId(msg.from),
            to: NodeId(msg.to),
            term: Term(msg.term),
            body,
        }),
        identity,
    ))
}
