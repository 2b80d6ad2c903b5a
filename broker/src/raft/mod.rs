//! The Raft consensus core: a pure, deterministic state machine with no I/O.
//!
//! (Tutorial below.)

mod config;
mod election;
mod error;
mod log;
mod message;
mod progress;
mod raw_node;
mod ready;
mod replication;
mod rng;
mod types;

pub use config::{Config, FaultVariant, VOTERS_MAX};
pub use error::{ConfigError, LogError, ProposeError, RaftError, TransferError};
pub use log::{MemLog, RaftLog};
pub use message::{Message, MessageBody};
pub use progress::ProgressState;
pub use raw_node::RawNode;
pub use ready::{PeerStatus, Ready, Status};
pub use types::{Entry, EntryKind, HardState, LogIndex, NodeId, Role, Term};

#[cfg(test)]
mod tests;
