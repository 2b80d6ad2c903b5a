//! The Raft consensus core: a pure, deterministic state machine with no I/O.
//!
//! [`RawNode`] owns the Raft state and writes entries through a [`RaftLog`] (the
//! broker's commit log, or [`MemLog`] in tests). It never sleeps, reads a clock,
//! touches a socket or file, or spawns a thread; randomness comes from a PRNG seeded
//! by [`Config::seed`]. A driver feeds it ticks, messages and proposals and carries
//! out what it asks for in a [`Ready`].
//!
//! # Driving a node
//!
//! ```no_run
//! use raftmq_broker::raft::*;
//! # fn sync_log(_: &mut MemLog, _: LogIndex) {}
//! # fn persist_hard_state(_: &HardState) {}
//! # fn send(_: Message) {}
//! # fn apply(_: &Entry) {}
//! let voters = vec![NodeId(1), NodeId(2), NodeId(3)];
//! let mut node = RawNode::new(Config::new(NodeId(1), voters), MemLog::new(), HardState::default());
//! loop {
//!     // Inputs: node.tick() every tick (e.g. 100 ms), node.step(msg) for each message
//!     // received, node.propose(kind, body) for client writes (leader only).
//!     node.tick();
//!     if !node.has_ready() {
//!         continue;
//!     }
//!     let rd = node.ready();
//!     // 1. Messages that depend on nothing unsynced: send now (in parallel with the
//!     //    disk write: the leader's appends to followers go out before its own sync).
//!     for m in rd.messages {
//!         send(m);
//!     }
//!     // 2. The core already wrote entries through RaftLog::append/truncate_suffix;
//!     //    make them durable up to `unsynced`.
//!     if let Some((index, _)) = rd.unsynced {
//!         sync_log(node.log_mut(), index);
//!     }
//!     // 3. Then the hard state (term, vote, recovery mark), atomically and durably.
//!     if let Some(hs) = &rd.hard_state {
//!         persist_hard_state(hs);
//!     }
//!     // 4. Only now the messages that claim durability: votes granted, follower
//!     //    acks, and the leader's acknowledgement to itself, which is stepped back in.
//!     for m in rd.persisted_messages {
//!         if m.to == node.id() {
//!             node.step(m).expect("self acknowledgement");
//!         } else {
//!             send(m);
//!         }
//!     }
//!     // 5. Report the sync (this also confirms the hard state of this Ready).
//!     if let Some((index, term)) = rd.unsynced {
//!         node.persisted(index, term);
//!     }
//!     // 6. Apply newly committed entries, read from the log.
//!     if let Some((from, to)) = rd.to_apply {
//!         for e in node.log().entries(from, usize::MAX, usize::MAX).unwrap() {
//!             if e.index > to { break; }
//!             apply(&e);
//!         }
//!         node.applied(to);
//!     }
//! }
//! ```
//!
//! A driver may pipeline (take the next Ready before the previous one is durable) as
//! long as it completes steps 2–5 of each Ready in order.
//!
//! The broker and the simulator do not write this loop themselves: they implement
//! [`Driver`] (their I/O) and call [`handle_ready`] and [`write_done`], so the order
//! above is one piece of code that the simulator checks.
//!
//! # Rules the core keeps
//!
//! - Commit = the highest index a quorum holds *durably*, and only if that entry is
//!   of the leader's current term (a new leader appends a `Noop`). The leader counts
//!   itself through its self-addressed `AppendResponse`, sent only after its sync.
//! - Votes and acknowledgements are `persisted_messages`; term and vote are in the
//!   `hard_state` of the same Ready.
//! - Protocol-aware recovery: `HardState::acked_index` is the highest index this node
//!   ever acknowledged. It is raised in the same Ready as the acknowledgement and
//!   lowered only when a leader overwrites acknowledged (hence uncommitted) entries —
//!   and then durably *before* the truncation happens. A node that restarts with
//!   `log.last_index() < acked_index` lost acknowledged data: it neither votes
//!   (pre-votes included) nor campaigns until a leader has replicated past the mark.
//! - Followers never truncate at or below their commit index, and their commit never
//!   passes the last index known to match the leader.
//!
//! See `docs/raft.md` for the design and the simulator.

mod config;
mod driver;
mod election;
mod error;
mod log;
mod membership;
mod message;
mod progress;
mod quiesce;
mod raw_node;
mod read_index;
mod ready;
mod replication;
mod rng;
mod types;

pub use config::{Config, FaultVariant, VOTERS_MAX};
pub use driver::{handle_ready, write_done, Driver, Flow, PersistWork, Persistence};
pub use error::{ConfigError, LogError, ProposeError, RaftError, ReadError, TransferError};
pub use log::{MemLog, RaftLog};
pub use membership::{ChangeError, Membership, MembershipEntry};
pub use message::{Message, MessageBody};
pub use progress::ProgressState;
pub use raw_node::RawNode;
pub use read_index::ReadState;
pub use ready::{PeerStatus, Ready, Status};
pub use types::{Entry, EntryKind, HardState, LogIndex, NodeId, Role, Term};

#[cfg(test)]
mod tests;
