//! raftmq's commit log: preallocated, memory-mapped segment files holding
//! CRC-checked entries, with the indexes built from them.
//!
//! - [`CommitLog`] stores Raft entries in segments ([`segment`]), encoded by the
//!   [`entry`] codec, located through the [`entry_index`], rebuilt by [`recovery`] on
//!   open; every fsync-like call lives in [`durability`]; [`disk_space`] measures the
//!   file system for the disk-use limit.
//! - [`QueueIndex`] is RocketMQ's ConsumeQueue: per (topic, queue) slots pointing from
//!   message offsets into the log, rebuildable from it.
//!
//! Guarantees: an entry is durable once [`CommitLog::synced_index`] covers it; a
//! truncated entry never reappears, even after a crash; a failed append changes
//! nothing; every read is CRC-checked.

#![deny(missing_docs)]

mod deleter;
pub mod disk_space;
pub mod durability;
pub mod entry;
pub mod entry_index;
pub mod error;
mod le;
pub mod log;
pub mod queue_index;
pub mod recovery;
pub mod segment;
pub mod types;

pub use disk_space::{disk_use, DiskUse};
pub use error::StoreError;
pub use log::{CommitLog, Fault, LogConfig, SegmentInfo, SyncDone, SyncJob};
pub use queue_index::{QueueIndex, QueueRecovery, QueueSlot};
pub use recovery::{Corruption, RecoveryReport};
pub use types::{Entry, EntryKind, LogIndex, Term};
