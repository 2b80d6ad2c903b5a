//! The raftmq broker: drives a Raft group whose log is the commit log, applies
//! committed entries to the state machine (topics, queue offsets, producer
//! sessions, consumer groups), and serves clients over framed TCP.

pub mod raft;
