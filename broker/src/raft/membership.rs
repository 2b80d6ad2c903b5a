//! Membership: who votes, who only receives the log, and how that changes.
//!
//! A change is an ordinary log entry of kind [`EntryKind::Membership`] whose body
//! holds the whole new membership (voters and learners) followed by bytes the driver
//! attaches (the broker puts member addresses there). Every node uses the **latest
//! membership in its log, committed or not** (Raft thesis §4.1): a change takes
//! effect where it is appended, and a truncation that removes it reverts to the one
//! before. Changes are *single-server*: the voters of two consecutive memberships
//! differ by at most one node, so any majority of the old voters overlaps any
//! majority of the new ones and two leaders can never be elected in one term.
//! Learners may change freely: they never count.
//!
//! The rules that keep single-server changes safe (thesis §4.1 and its 2015 errata):
//! - a leader proposes a change only after it committed an entry of its own term
//!   (otherwise a change of an earlier, uncommitted leader and this one could
//!   combine into a two-server change);
//! - at most one change is uncommitted at a time;
//! - a leader never removes itself (the driver hands leadership over first).
//!
//! [`MembershipHistory`] keeps every membership the log may still need: the one in
//! effect at the log's start (the snapshot's) and every change after it, so a
//! truncation or a snapshot sent to a follower finds the right one.

use bytes::{BufMut, Bytes, BytesMut};

use super::config::VOTERS_MAX;
use super::types::{EntryKind, LogIndex, NodeId};

/// Version byte of the encoded body.
const ENCODING_VERSION: u8 = 1;

/// The members of the group: voters (counted in every quorum) and learners (sent
/// the log, never counted, never campaign). Both sorted, disjoint.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct Membership {
    /// Voting members, sorted.
    pub voters: Vec<NodeId>,
    /// Non-voting members that receive the log, sorted.
    pub learners: Vec<NodeId>,
}

/// A membership as written at one index, with the driver's attached bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipEntry {
    /// The index of the entry (or of the snapshot it came from; 0 for the bootstrap
    /// configuration).
    pub index: LogIndex,
    /// Who is a member.
    pub membership: Membership,
    /// The driver's bytes (addresses, identities), opaque to the core.
    pub context: Bytes,
}

/// Why a proposed membership change is refused. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// An earlier change is not committed yet.
    #[error("membership change at index {0} is not committed yet")]
    InProgress(LogIndex),
    /// This leader has not committed an entry of its own term yet.
    #[error("the new leader has not committed an entry of its term yet")]
    TermNotCommitted,
    /// The voters would change by more than one node.
    #[error("voters may change by one node at a time ({0} would change)")]
    TooManyVoterChanges(usize),
    /// The leader would stop being a voter.
    #[error("the leader cannot remove itself; transfer leadership first")]
    RemovesLeader,
    /// A node is both voter and learner, or listed twice.
    #[error("node {0} is listed twice")]
    Duplicate(NodeId),
    /// No voter would remain.
    #[error("a group needs at least one voter")]
    NoVoters,
    /// More voters than the core supports.
    #[error("{0} voters, at most {max} supported", max = VOTERS_MAX)]
    TooManyVoters(usize),
}

/// A membership body that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed membership entry: {0}")]
pub struct DecodeError(&'static str);

impl Membership {
    /// A membership with the given voters and learners (sorted here).
    pub fn new(mut voters: Vec<NodeId>, mut learners: Vec<NodeId>) -> Membership {
        voters.sort_unstable();
        learners.sort_unstable();
        Membership { voters, learners }
    }

    /// Whether `id` votes.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.binary_search(&id).is_ok()
    }

    /// Whether `id` is a learner.
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.binary_search(&id).is_ok()
    }

    /// Whether `id` is a voter or a learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.is_learner(id)
    }

    /// Votes needed to win an election or commit an entry.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Voters and learners, voters first.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }

    /// Checks the membership on its own: sorted lists, no duplicates, within limits.
    pub fn validate(&self) -> Result<(), ChangeError> {
        if self.voters.len() > VOTERS_MAX {
            return Err(ChangeError::TooManyVoters(self.voters.len()));
        }
        let mut all: Vec<NodeId> = self.members().collect();
        all.sort_unstable();
        if let Some(w) = all.windows(2).find(|w| w[0] == w[1]) {
            return Err(ChangeError::Duplicate(w[0]));
        }
        Ok(())
    }

    /// Checks that going from `self` to `next` is a valid single-server change
    /// proposed by `leader`.
    pub fn check_change(&self, next: &Membership, leader: NodeId) -> Result<(), ChangeError> {
        // The same members are allowed: the driver may update its context bytes.
        next.validate()?;
        if next.voters.is_empty() {
            return Err(ChangeError::NoVoters);
        }
        if !next.is_voter(leader) {
            return Err(ChangeError::RemovesLeader);
        }
        let added = next.voters.iter().filter(|v| !self.is_voter(**v)).count();
        let removed = self.voters.iter().filter(|v| !next.is_voter(**v)).count();
        if added + removed > 1 {
            return Err(ChangeError::TooManyVoterChanges(added + removed));
        }
        Ok(())
    }

    /// The entry body: this membership, then `context` (the driver's bytes).
    pub fn encode(&self, context: &[u8]) -> Bytes {
        let mut b = BytesMut::with_capacity(
            3 + 8 * (self.voters.len() + self.learners.len()) + context.len(),
        );
        b.put_u8(ENCODING_VERSION);
        for list in [&self.voters, &self.learners] {
            b.put_u8(list.len() as u8);
            for id in list {
                b.put_u64_le(id.0);
            }
        }
        b.put_slice(context);
        b.freeze()
    }

    /// Reads an entry body written by [`Membership::encode`]: the membership and the
    /// driver's bytes.
    pub fn decode(body: &Bytes) -> Result<(Membership, Bytes), DecodeError> {
        let mut at = 0usize;
        let byte = |at: &mut usize| -> Result<u8, DecodeError> {
            let b = *body.get(*at).ok_or(DecodeError("truncated"))?;
            *at += 1;
            Ok(b)
        };
        if byte(&mut at)? != ENCODING_VERSION {
            return Err(DecodeError("unknown version"));
        }
        let mut lists = [Vec::new(), Vec::new()];
        for list in &mut lists {
            let n = byte(&mut at)? as usize;
            let end = at + 8 * n;
            let raw = body.get(at..end).ok_or(DecodeError("truncated"))?;
            list.extend(
                raw.chunks_exact(8)
                    .map(|c| NodeId(u64::from_le_bytes(c.try_into().expect("8 bytes")))),
            );
            at = end;
        }
        let [voters, learners] = lists;
        let m = Membership { voters, learners };
        if !m.voters.windows(2).all(|w| w[0] < w[1]) || !m.learners.windows(2).all(|w| w[0] < w[1])
        {
            return Err(DecodeError("members not sorted"));
        }
        m.validate()
            .map_err(|_| DecodeError("invalid membership"))?;
        Ok((m, body.slice(at..)))
    }
}

impl std::fmt::Display for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |ids: &[NodeId]| {
            ids.iter()
                .map(|i| i.0.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        write!(
            f,
            "voters [{}] learners [{}]",
            list(&self.voters),
            list(&self.learners)
        )
    }
}

/// The memberships the log may still need, oldest first. The first one is in effect
/// at the log's start (at or below the commit index); the last one is in effect now.
#[derive(Debug, Clone)]
pub(super) struct MembershipHistory {
    entries: Vec<MembershipEntry>,
}

impl MembershipHistory {
    /// A history starting with `base` (the bootstrap configuration or a snapshot's).
    pub(super) fn new(base: MembershipEntry) -> Self {
        MembershipHistory {
            entries: vec![base],
        }
    }

    /// The membership in effect.
    pub(super) fn current(&self) -> &MembershipEntry {
        self.entries.last().expect("a history is never empty")
    }

    /// The membership in effect at `index` (`None` below the history's start).
    pub(super) fn at(&self, index: LogIndex) -> Option<&MembershipEntry> {
        self.entries.iter().rev().find(|e| e.index <= index)
    }

    /// Records a change appended at `entry.index` (above every recorded one).
    pub(super) fn push(&mut self, entry: MembershipEntry) {
        assert!(
            entry.index > self.current().index,
            "membership entry {} below {}",
            entry.index,
            self.current().index
        );
        self.entries.push(entry);
    }

    /// The log lost its entries from `from`: forgets the changes among them. Returns
    /// whether the membership in effect changed.
    pub(super) fn truncate(&mut self, from: LogIndex) -> bool {
        let before = self.entries.len();
        while self.entries.len() > 1 && self.current().index >= from {
            self.entries.pop();
        }
        assert!(
            self.entries[0].index < from,
            "truncation at {from} below the membership base {}",
            self.entries[0].index
        );
        self.entries.len() != before
    }

    /// Drops what no truncation or snapshot can need any more: changes superseded
    /// by a later one at or below `floor` (the lower of the commit index and the
    /// log's snapshot point).
    pub(super) fn compact(&mut self, floor: LogIndex) {
        let keep_from = self
            .entries
            .iter()
            .rposition(|e| e.index <= floor)
            .unwrap_or(0);
        if keep_from > 0 {
            self.entries.drain(..keep_from);
        }
    }

    /// How many recorded changes lie above `index`.
    pub(super) fn entries_above(&self, index: LogIndex) -> usize {
        self.entries.iter().filter(|e| e.index > index).count()
    }

    /// Restarts the history at a snapshot.
    pub(super) fn reset(&mut self, base: MembershipEntry) {
        self.entries.clear();
        self.entries.push(base);
    }

    /// Whether a change above `commit` is still uncommitted.
    pub(super) fn uncommitted(&self, commit: LogIndex) -> Option<LogIndex> {
        let current = self.current().index;
        (current > commit).then_some(current)
    }
}

/// The membership changes among `entries`, in order.
pub(super) fn changes_in(
    entries: &[super::types::Entry],
) -> impl Iterator<Item = MembershipEntry> + '_ {
    entries
        .iter()
        .filter(|e| e.kind == EntryKind::Membership)
        .map(|e| match Membership::decode(&e.body) {
            Ok((membership, context)) => MembershipEntry {
                index: e.index,
                membership,
                context,
            },
            // The entry passed the leader's checks and the store's CRC: an unreadable
            // one is a bug, and running on with a guessed membership is unsafe.
            Err(err) => panic!("membership entry {}: {err}", e.index),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(voters: &[u64], learners: &[u64]) -> Membership {
        Membership::new(
            voters.iter().map(|&i| NodeId(i)).collect(),
            learners.iter().map(|&i| NodeId(i)).collect(),
        )
    }

    #[test]
    fn test_membership_round_trips_with_context() {
        let a = m(&[3, 1, 2], &[7]);
        let body = a.encode(b"ctx");
        let (b, ctx) = Membership::decode(&body).unwrap();
        assert_eq!(a, b);
        assert_eq!(&ctx[..], b"ctx");
        assert!(Membership::decode(&body.slice(..5)).is_err());
        assert!(Membership::decode(&Bytes::from_static(&[9])).is_err());
    }

    #[test]
    fn test_single_server_change_rules() {
        let three = m(&[1, 2, 3], &[]);
        let n1 = NodeId(1);
        assert_eq!(three.check_change(&m(&[1, 2, 3], &[4]), n1), Ok(()));
        assert_eq!(three.check_change(&m(&[1, 2, 3, 4], &[]), n1), Ok(()));
        assert_eq!(three.check_change(&m(&[1, 2], &[]), n1), Ok(()));
        assert_eq!(three.check_change(&m(&[1, 2], &[3]), n1), Ok(()));
        assert_eq!(
            three.check_change(&m(&[1, 2, 4, 5], &[]), n1),
            Err(ChangeError::TooManyVoterChanges(3))
        );
        assert_eq!(
            three.check_change(&m(&[1, 2, 4], &[]), n1),
            Err(ChangeError::TooManyVoterChanges(2))
        );
        assert_eq!(
            three.check_change(&m(&[2, 3], &[]), n1),
            Err(ChangeError::RemovesLeader)
        );
        assert_eq!(
            three.check_change(&m(&[1, 2, 3], &[3]), n1),
            Err(ChangeError::Duplicate(NodeId(3)))
        );
        assert_eq!(
            three.check_change(&three, n1),
            Ok(()),
            "context-only update"
        );
    }

    #[test]
    fn test_history_reverts_on_truncation_and_compacts() {
        let base = MembershipEntry {
            index: LogIndex(0),
            membership: m(&[1, 2, 3], &[]),
            context: Bytes::new(),
        };
        let mut h = MembershipHistory::new(base);
        for (i, voters) in [(5, &[1, 2, 3, 4][..]), (9, &[1, 2, 3, 4, 5][..])] {
            h.push(MembershipEntry {
                index: LogIndex(i),
                membership: m(voters, &[]),
                context: Bytes::new(),
            });
        }
        assert_eq!(h.at(LogIndex(6)).unwrap().index, LogIndex(5));
        assert!(h.truncate(LogIndex(9)));
        assert_eq!(h.current().index, LogIndex(5));
        assert!(!h.truncate(LogIndex(7)));
        h.compact(LogIndex(6));
        assert_eq!(h.at(LogIndex(5)).unwrap().index, LogIndex(5));
        assert!(h.at(LogIndex(4)).is_none());
        assert_eq!(h.uncommitted(LogIndex(4)), Some(LogIndex(5)));
        assert_eq!(h.uncommitted(LogIndex(5)), None);
    }
}
