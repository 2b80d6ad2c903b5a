//! raftmq's wire protocol: the protobuf messages (generated from
//! `proto/raftmq.proto`, the source of truth), the frame codec and the record-batch
//! format shared by clients and brokers.
//!
//! - [`pb`]: the messages; [`ApiKey`] and envelope helpers ([`pb::Request::new`],
//!   [`pb::Response::ok`], [`pb::Response::error`]).
//! - [`frame`]: length-prefixed frames, encode/decode, name validation.
//! - [`frame_writer`]: frames written without copying their large byte fields.
//! - [`batch`]: the record-batch byte format, builder, validation and decoding.
//! - [`kafka_batch`]: Kafka's RecordBatch v2, validated and stored as sent.
//! - [`scram`]: SCRAM-SHA-256/512 authentication, client and server side.
//! - [`tls`]: PEM loading and rustls configurations shared by clients and brokers.
//! - [`error`]: wire error constructors, the typed [`ServerError`], [`ProtoError`].
//!
//! The layouts are described byte by byte in `docs/protocol.md` and in each module.
#![deny(missing_docs)]

/// Messages generated from `proto/raftmq.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/raftmq.v1.rs"));
}

mod api;
pub mod batch;
pub mod error;
pub mod frame;
pub mod frame_writer;
pub mod kafka_batch;
pub mod scram;
pub mod tls;
mod varint;

pub use api::{ApiKey, API_VERSION};
pub use error::{ProtoError, ServerError};
