//! The raftmq broker: drives a Raft group whose log is the commit log, applies
//! committed entries to the state machine (topics, queue offsets, producer
//! sessions, consumer-group offsets), and serves clients over framed TCP.
//!
//! - [`raft`]: the pure consensus core (no I/O);
//! - [`node`]: the task that owns one Raft group, its log and its state machine;
//! - [`directory`]: the groups of this process (metadata group, data groups) and
//!   where each request goes;
//! - [`consumer_group`]: the consumer-group coordinator (members, assignments);
//! - [`service`]: the protocol-neutral operations every adapter calls;
//! - [`server`]: the native listener and connections; [`kafka`]: the Kafka listener; [`transport`]: links to peers;
//! - [`state_machine`] and [`command`]: what committed entries mean;
//! - [`data_dir_lock`]: one broker per data directory;
//! - [`hard_state`]: term, vote and the acknowledged mark on disk;
//! - [`snapshot`]: state-machine snapshots, as files and as the bytes sent to peers;
//! - [`security`]: TLS on ports and links, who counts as a node;
//! - [`config`]: every option with its default;
//! - [`metrics`]: the Prometheus series and their `/metrics` endpoint.

pub mod alloc_guard;
pub mod cluster;
pub mod command;
pub mod config;
pub mod consumer_group;
pub mod data_dir_lock;
pub mod directory;
pub mod fetch_many;
pub mod hard_state;
pub mod host;
pub mod join;
pub mod kafka;
pub mod liveness;
pub mod log_adapter;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod placement;
pub mod raft;
pub mod raft_wire;
pub mod response;
pub mod security;
pub mod server;
pub mod service;
pub mod snapshot;
pub mod state_machine;
pub mod transport;

pub use config::BrokerConfig;
pub use server::Broker;
