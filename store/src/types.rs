//! Numbers that name things in the log. Newtypes so a term is never passed where an
//! index is expected (both are `u64` on disk).

use std::fmt;

/// Position of an entry in the commit log. The first entry ever written has index 1;
/// `LogIndex(0)` means "no entry" (an empty log's last index), as in the Raft paper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LogIndex(pub u64);

/// A Raft term. `Term(0)` is the term of the empty prefix (index 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Term(pub u64);

impl LogIndex {
    /// The index before the first entry.
    pub const ZERO: LogIndex = LogIndex(0);

    /// The next index.
    #[must_use]
    pub fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }

    /// The previous index, saturating at zero.
    #[must_use]
    pub fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }
}

impl fmt::Display for LogIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What an entry's body holds. The store treats every body as opaque bytes; the kind
/// tells the layers above how to read it. Stored as one byte (the discriminant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntryKind {
    /// A record batch for one (topic, queue), as the producer encoded it.
    Messages = 1,
    /// A state-machine command (topic changes, offset commits, ...).
    Command = 2,
    /// A new leader's first entry: commits the entries of earlier terms.
    Noop = 3,
    /// A change of the Raft group's members (voters and learners).
    Membership = 4,
}

impl EntryKind {
    /// Parses the on-disk byte; `None` for an unknown kind (a corrupt entry).
    pub fn from_u8(byte: u8) -> Option<EntryKind> {
        match byte {
            1 => Some(EntryKind::Messages),
            2 => Some(EntryKind::Command),
            3 => Some(EntryKind::Noop),
            4 => Some(EntryKind::Membership),
            _ => None,
        }
    }
}

/// One entry of the commit log. `body` is a zero-copy view when read from the log
/// (it keeps the segment's mapping alive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its position in the log.
    pub index: LogIndex,
    /// The term of the leader that created it.
    pub term: Term,
    /// How to read the body.
    pub kind: EntryKind,
    /// The payload, opaque to the store.
    pub body: bytes::Bytes,
}
