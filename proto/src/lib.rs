//! raftmq's wire protocol: the protobuf messages (generated from
//! `proto/raftmq.proto`, the source of truth), the frame codec and the record-batch
//! format shared by clients and brokers.

/// Messages generated from `proto/raftmq.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/raftmq.v1.rs"));
}
