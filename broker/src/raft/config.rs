//! The core's configuration, with documented defaults, and its validation.

use super::error::ConfigError;
use super::types::NodeId;

/// The most voters a group may have (quorum arithmetic uses small fixed buffers).
pub const VOTERS_MAX: usize = 9;

/// Deliberately broken variants of the core. They exist only so the simulator can
/// prove that it catches each bug; never set one outside tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultVariant {
    /// The leader commits entries of earlier terms by counting replicas (Figure 8).
    CommitOldTermByCount,
    /// The leader counts its own log as soon as it is written, not when durable.
    CountLeaderUnsynced,
    /// Votes are granted without checking that the candidate is up to date.
    VoteForStaleCandidate,
    /// A node that lost acknowledged entries still votes and campaigns.
    DamagedNodeVotes,
    /// Installing a snapshot resets the recovery mark to the snapshot index, so a
    /// damaged node forgets it lost acknowledged entries.
    SnapshotForgetsDamage,
    /// Reads are answered from the node's own commit index at once, without asking
    /// the leader or confirming leadership with a quorum (a stale read).
    LocalReads,
    /// The leader answers reads at its commit index without checking that it has
    /// committed an entry of its own term (a new leader's commit index may lag what
    /// earlier leaders committed).
    ReadBeforeTermCommit,
    /// Membership changes skip the single-server rules: several voters may change
    /// at once, several changes may be uncommitted, and a new leader need not have
    /// committed an entry of its term first.
    UncheckedMembershipChanges,
    /// Single-server changes, but a new one may be proposed while another is
    /// uncommitted (and before the leader committed an entry of its term).
    ConcurrentMembershipChanges,
    /// The leader quiesces the group while a follower still lacks entries (and
    /// asks that follower to quiesce too): it never catches up while idle.
    QuiesceWithLaggingFollower,
    /// The Ready loop (`driver.rs`, the broker's own) sends the messages that
    /// claim durability (votes, acknowledgements) before the write is done.
    AcknowledgeBeforeSync,
    /// The Ready loop merges queued readies keeping the oldest hard state instead
    /// of the newest, so a later term or vote is not made durable.
    MergeKeepsOldestHardState,
}

/// Configuration of one [`super::RawNode`]. Build it with [`Config::new`] and adjust
/// the public fields; [`Config::validate`] (called by `RawNode::new`) checks them.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node.
    pub id: NodeId,
    /// The voters in effect at the log's start (the bootstrap configuration, or the
    /// membership of the snapshot the log starts after). At most [`VOTERS_MAX`].
    /// Membership entries in the log override it (see `membership.rs`). A node
    /// that joins an existing group starts with none and learns them from the log.
    pub voters: Vec<NodeId>,
    /// The learners in effect at the log's start. Default none.
    pub learners: Vec<NodeId>,
    /// The driver's bytes attached to that membership (see
    /// [`super::MembershipEntry::context`]). Default empty.
    pub membership_context: bytes::Bytes,
    /// Base election timeout; each timeout is drawn from `[t, 2t)`. Default 10.
    pub election_timeout_ticks: u32,
    /// The leader sends heartbeats this often. Default 1; must be below the election
    /// timeout.
    pub heartbeat_interval_ticks: u32,
    /// Appends in flight per follower in the Replicate state. Default 256.
    pub max_inflight_appends: usize,
    /// Upper bound on the body bytes of one append (at least one entry is always
    /// sent). Default 1 MiB.
    pub max_append_bytes: usize,
    /// Upper bound on the entries of one append. Default 4096.
    pub max_append_entries: usize,
    /// Proposals the leader accepts beyond its commit index before answering `Busy`.
    /// Default 65536.
    pub max_pending_proposals: usize,
    /// Reads waiting for a leadership confirmation the leader accepts (its own and
    /// its followers') before refusing more with [`super::ReadError::Busy`]. Default
    /// 65536.
    pub max_pending_reads: usize,
    /// Run a pre-vote round before raising the term. Default true.
    pub pre_vote: bool,
    /// The leader steps down when it has not heard from a quorum within an election
    /// timeout, and followers that heard from a leader recently ignore vote requests.
    /// Default true.
    pub check_quorum: bool,
    /// A leader whose group has done nothing for this many ticks (no proposal, no
    /// read, every follower holding the whole log) asks its followers to quiesce:
    /// they stop their election timers and it stops its heartbeats, until the next
    /// message or the driver's failure detector (`RawNode::peer_unreachable`)
    /// wakes them. Must be paired with such a detector. 0 (default): never.
    pub quiesce_after_ticks: u32,
    /// Seed of the election-timeout PRNG (mixed with `id`). Default 0.
    pub seed: u64,
    /// Test only: run a deliberately broken variant. Default `None`.
    #[doc(hidden)]
    pub fault: Option<FaultVariant>,
}

impl Config {
    /// A configuration with the documented defaults.
    pub fn new(id: NodeId, voters: Vec<NodeId>) -> Self {
        Config {
            id,
            voters,
            learners: Vec::new(),
            membership_context: bytes::Bytes::new(),
            election_timeout_ticks: 10,
            heartbeat_interval_ticks: 1,
            max_inflight_appends: 256,
            max_append_bytes: 1024 * 1024,
            max_append_entries: 4096,
            max_pending_proposals: 65536,
            max_pending_reads: 65536,
            pre_vote: true,
            check_quorum: true,
            quiesce_after_ticks: 0,
            seed: 0,
            fault: None,
        }
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.voters.len() > VOTERS_MAX {
            return Err(ConfigError::TooManyVoters(self.voters.len()));
        }
        let members: Vec<NodeId> = self.voters.iter().chain(&self.learners).copied().collect();
        for (i, v) in members.iter().enumerate() {
            if members[..i].contains(v) {
                return Err(ConfigError::DuplicateVoter(*v));
            }
        }
        let invalid = |name, reason| Err(ConfigError::Invalid { name, reason });
        if self.election_timeout_ticks < 2 {
            return invalid("election_timeout_ticks", "must be at least 2");
        }
        if self.heartbeat_interval_ticks == 0 {
            return invalid("heartbeat_interval_ticks", "must be at least 1");
        }
        if self.heartbeat_interval_ticks >= self.election_timeout_ticks {
            return invalid(
                "heartbeat_interval_ticks",
                "must be below election_timeout_ticks",
            );
        }
        if self.max_inflight_appends == 0 {
            return invalid("max_inflight_appends", "must be at least 1");
        }
        if self.max_append_bytes == 0 {
            return invalid("max_append_bytes", "must be at least 1");
        }
        if self.max_append_entries == 0 {
            return invalid("max_append_entries", "must be at least 1");
        }
        if self.max_pending_reads == 0 {
            return invalid("max_pending_reads", "must be at least 1");
        }
        if self.max_pending_proposals == 0 {
            return invalid("max_pending_proposals", "must be at least 1");
        }
        Ok(())
    }

    pub(crate) fn fault_is(&self, fault: FaultVariant) -> bool {
        self.fault == Some(fault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_config_validation_rejects_bad_fields() {
        let ok = Config::new(NodeId(1), vec![NodeId(1), NodeId(2), NodeId(3)]);
        assert_eq!(ok.validate(), Ok(()));
        let mut c = ok.clone();
        c.voters = vec![];
        assert_eq!(c.validate(), Ok(()), "a joining node knows no members yet");
        let mut c = ok.clone();
        c.learners = vec![NodeId(3)];
        assert_eq!(c.validate(), Err(ConfigError::DuplicateVoter(NodeId(3))));
        let mut c = ok.clone();
        c.voters.push(NodeId(2));
        assert_eq!(c.validate(), Err(ConfigError::DuplicateVoter(NodeId(2))));
        let mut c = ok.clone();
        c.heartbeat_interval_ticks = 10;
        assert!(c.validate().is_err());
        let mut c = ok;
        c.max_inflight_appends = 0;
        assert!(c.validate().is_err());
    }
}
