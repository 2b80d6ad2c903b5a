//! raftmq client library: producer, consumer and admin.
#![deny(missing_docs)]
