//! raftmq's commit log: preallocated, memory-mapped segment files holding
//! CRC-checked entries, with the indexes built from them.

pub mod types;

pub use types::{Entry, EntryKind, LogIndex, Term};
