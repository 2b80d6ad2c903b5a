//! raftmq client library: producer, consumer and admin.
//!
//! ```no_run
//! # async fn demo() -> Result<(), raftmq_client::ClientError> {
//! use raftmq_client::{Admin, Client, Consumer, Message, Producer, SeekTo};
//!
//! let client = Client::connect(&["127.0.0.1:7070"]).await?;
//! Admin::new(&client).create_topic("orders", 4).await?;
//!
//! let producer = Producer::builder(&client).build().await?;
//! let ack = producer.send(Message::new("orders", "hello").with_key("user-1")).await?;
//! let stored = ack.await?; // queue and offset
//!
//! let mut consumer = Consumer::new(&client);
//! consumer.assign("orders", &[stored.queue]).await?;
//! consumer.seek(stored.queue, SeekTo::Offset(stored.offset)).await?;
//! let messages = consumer.poll().await?;
//! # let _ = messages;
//! # Ok(()) }
//! ```
//!
//! - [`Client`]: connections (one multiplexed, pipelined TCP connection per broker),
//!   metadata, leader discovery, redirects and retries. Cheap to clone.
//! - [`Producer`]: per-queue batching with linger and a size bound, pipelined
//!   produce requests, idempotent in-order retries.
//! - [`Consumer`]: assigned queues, seek, long-poll fetch, reset policy, a `Stream`.
//! - [`GroupConsumer`]: a consumer-group member (join, heartbeat, rebalance,
//!   committed offsets) reading one topic.
//! - [`Admin`]: topics, cluster status, leadership transfer.
#![deny(missing_docs)]

mod accumulator;
mod admin;
mod client;
mod conn;
mod consumer;
mod error;
mod group;
mod lane;
mod partitioner;
mod producer;
mod retry;
mod settings;

pub use admin::{Admin, NodeStatus, QueuePlacement, TopicDescription, TopicRetention};
pub use client::{Client, ClientConfig, ClientTls, ClusterMetadata, Credentials, Target};
pub use consumer::{ConsumedMessage, Consumer, ConsumerConfig, OffsetReset, SeekTo};
pub use error::ClientError;
pub use group::{GroupConfig, GroupConsumer, Rebalance};
pub use partitioner::{key_queue, murmur2, Partitioner};
pub use producer::{
    Acks, DeliveryFuture, Message, Producer, ProducerBuilder, ProducerConfig, RecordMetadata,
};
pub use raftmq_proto::batch::Compression;
pub use raftmq_proto::scram::Mechanism as ScramMechanism;
pub use raftmq_proto::{pb, ServerError};
pub use settings::ClientSettings;
