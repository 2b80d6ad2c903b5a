//! The Ready loop, written once: the order in which a replica carries out what
//! its core hands it, shared by the broker's group task and the simulator.
//!
//! A [`Ready`] mixes work that may happen at once (messages that claim nothing
//! durable, applying what is committed) with work that must wait for the disk
//! (votes, acknowledgements, the leader's count of itself). Getting that order
//! wrong loses acknowledged data without any test noticing, unless the code that
//! does it is the code the simulator runs. So the order lives here, and a driver
//! supplies only the I/O ([`Driver`]):
//!
//! 1. role and membership changes are reported first (links to new members must
//!    exist before the messages for them are sent);
//! 2. `messages` are sent (a message to this node itself is stepped back in);
//! 3. an installed snapshot is restored;
//! 4. the Ready's durable part (log sync target, hard state, `persisted_messages`)
//!    is queued in [`Persistence`] and the driver is asked to write it
//!    ([`Driver::persist`]): at most one write is in flight, and what queues
//!    meanwhile is merged into the next one (a group commit);
//! 5. committed entries are applied and decided reads handed over.
//!
//! When a write is durable (log first, then hard state: the recovery mark in the
//! hard state must never be ahead of the log), the driver calls [`write_done`],
//! which sends the messages that waited for it and reports the sync to the core.

use super::log::RaftLog;
use super::message::Message;
use super::read_index::ReadState;
use super::ready::Ready;
use super::types::{HardState, LogIndex, NodeId, Role, Term};
use super::{FaultVariant, MembershipEntry, RawNode};

/// Whether the rest of a Ready is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Go on.
    Continue,
    /// The replica stopped (its storage failed, its process crashed): the rest of
    /// this Ready is dropped, as the process would drop it.
    Stop,
}

/// One durable write: sync the log up to `unsynced`, then store `hard_state`, then
/// hand the write back to [`write_done`].
#[derive(Debug, Default)]
pub struct PersistWork {
    /// The hard state to store after the log sync (the newest queued).
    pub hard_state: Option<HardState>,
    /// The newest (index, term) written to the log and not yet synced.
    pub unsynced: Option<(LogIndex, Term)>,
    /// Sent only once the write is durable, in the order the core made them.
    pub messages: Vec<Message>,
}

impl PersistWork {
    /// Nothing to write or send.
    pub fn is_empty(&self) -> bool {
        self.hard_state.is_none() && self.unsynced.is_none() && self.messages.is_empty()
    }

    /// Folds a later Ready's durable part into this one: its hard state and sync
    /// target supersede, its messages follow.
    fn merge(&mut self, ready: &mut Ready, keep_oldest_hard_state: bool) {
        if let Some(hs) = ready.hard_state.take() {
            if !(keep_oldest_hard_state && self.hard_state.is_some()) {
                self.hard_state = Some(hs);
            }
        }
        if let Some(unsynced) = ready.unsynced.take() {
            self.unsynced = Some(unsynced);
        }
        self.messages.append(&mut ready.persisted_messages);
    }
}

/// The durable writes of one replica: what is queued, and whether one is in flight.
#[derive(Debug, Default)]
pub struct Persistence {
    queued: PersistWork,
    in_flight: bool,
}

impl Persistence {
    /// The next write, if none is in flight and something is queued; it stays in
    /// flight until [`write_done`] (or [`Persistence::reset`]).
    pub fn start(&mut self) -> Option<PersistWork> {
        if self.in_flight || self.queued.is_empty() {
            return None;
        }
        self.in_flight = true;
        Some(std::mem::take(&mut self.queued))
    }

    /// A write is in flight.
    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// Nothing is queued or in flight.
    pub fn is_idle(&self) -> bool {
        !self.in_flight && self.queued.is_empty()
    }

    /// Forgets everything queued and in flight: the process crashed.
    pub fn reset(&mut self) {
        *self = Persistence::default();
    }

    /// Forgets what is queued, not the write in flight (which still ends with
    /// [`write_done`]): the storage failed and nothing more may be written.
    pub fn drop_queued(&mut self) {
        self.queued = PersistWork::default();
    }
}

/// The I/O side of one replica: what the Ready loop asks of the broker's group
/// task or of the simulator.
pub trait Driver {
    /// The log the core writes through.
    type Log: RaftLog;
    /// What stops the loop with an error (the simulator's invariant failures).
    type Error;

    /// The replica's Raft core.
    fn raft(&mut self) -> &mut RawNode<Self::Log>;
    /// Its durable writes.
    fn persistence(&mut self) -> &mut Persistence;
    /// Sees each Ready before it is carried out (traces, metrics).
    fn observe(&mut self, _ready: &Ready) {}
    /// The replica sends and steps no message at all (its storage failed: it
    /// isolates itself so that the others replace it).
    fn isolated(&self) -> bool {
        false
    }
    /// The role, term or known leader changed.
    fn role_changed(
        &mut self,
        _role: Role,
        _term: Term,
        _leader: Option<NodeId>,
    ) -> Result<(), Self::Error> {
        Ok(())
    }
    /// The membership in effect changed; called before any message is sent.
    fn membership_changed(&mut self, _entry: &MembershipEntry) -> Result<(), Self::Error> {
        Ok(())
    }
    /// Sends a message to another node.
    fn send(&mut self, msg: Message) -> Result<(), Self::Error>;
    /// Steps a message addressed to this node back into its core (the leader's
    /// acknowledgement of its own durable log).
    fn step_self(&mut self, msg: Message) -> Result<(), Self::Error> {
        if let Err(e) = self.raft().step(msg) {
            tracing::debug!(error = %e, "message to self refused");
        }
        Ok(())
    }
    /// Restores the state machine from the snapshot the log was reset to.
    fn restore_snapshot(&mut self, index: LogIndex, term: Term) -> Result<Flow, Self::Error>;
    /// Something was queued in [`Driver::persistence`]: start the next write (see
    /// [`Persistence::start`]) now, or later, or complete it at once.
    fn persist(&mut self) -> Result<Flow, Self::Error>;
    /// Applies the committed entries `from..=to` (read from the log) and reports
    /// them with [`RawNode::applied`].
    fn apply(&mut self, from: LogIndex, to: LogIndex) -> Result<(), Self::Error>;
    /// Reads whose index is decided (after this Ready's entries were applied).
    fn read_states(&mut self, states: Vec<ReadState>) -> Result<(), Self::Error>;
}

/// Takes one Ready from the core, if it has one, and carries it out.
pub fn handle_ready<D: Driver>(d: &mut D) -> Result<(), D::Error> {
    if !d.raft().has_ready() {
        return Ok(());
    }
    let mut ready = d.raft().ready();
    d.observe(&ready);
    if let Some((role, term, leader)) = ready.role_change {
        d.role_changed(role, term, leader)?;
    }
    if let Some(entry) = &ready.membership {
        d.membership_changed(entry)?;
    }
    for msg in std::mem::take(&mut ready.messages) {
        route(d, msg)?;
    }
    if let Some((index, term)) = ready.snapshot {
        if d.restore_snapshot(index, term)? == Flow::Stop {
            return Ok(());
        }
    }
    if d.raft().fault_is(FaultVariant::AcknowledgeBeforeSync) {
        for msg in std::mem::take(&mut ready.persisted_messages) {
            route(d, msg)?;
        }
    }
    let keep_oldest = d.raft().fault_is(FaultVariant::MergeKeepsOldestHardState);
    d.persistence().queued.merge(&mut ready, keep_oldest);
    if d.persist()? == Flow::Stop {
        return Ok(());
    }
    if let Some((from, to)) = ready.to_apply {
        d.apply(from, to)?;
    }
    d.read_states(ready.read_states)
}

/// The write `work` is durable: the log up to `synced` (which a truncation since
/// the write started may have lowered) and its hard state. Sends the messages
/// that waited for it and reports the sync to the core.
pub fn write_done<D: Driver>(
    d: &mut D,
    work: PersistWork,
    synced: LogIndex,
) -> Result<(), D::Error> {
    d.persistence().in_flight = false;
    for msg in work.messages {
        route(d, msg)?;
    }
    if let Some((index, term)) = work.unsynced {
        // The core ignores an (index, term) pair its log no longer holds.
        d.raft().persisted(index.min(synced), term);
    }
    Ok(())
}

/// Sends `msg`, or steps it back into the core if it is addressed to this node
/// (the leader's acknowledgement of its own durable log).
fn route<D: Driver>(d: &mut D, msg: Message) -> Result<(), D::Error> {
    if d.isolated() {
        return Ok(());
    }
    if msg.to == d.raft().id() {
        d.step_self(msg)
    } else {
        d.send(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Config, EntryKind, MemLog, MessageBody};
    use bytes::Bytes;

    /// A driver that records what it was asked, and completes writes only when told.
    struct Recorder {
        raft: RawNode<MemLog>,
        persistence: Persistence,
        sent: Vec<Message>,
        writes: Vec<PersistWork>,
        applied: Vec<(LogIndex, LogIndex)>,
        events: Vec<&'static str>,
    }

    impl Driver for Recorder {
        type Log = MemLog;
        type Error = String;
        fn raft(&mut self) -> &mut RawNode<MemLog> {
            &mut self.raft
        }
        fn persistence(&mut self) -> &mut Persistence {
            &mut self.persistence
        }
        fn role_changed(&mut self, _: Role, _: Term, _: Option<NodeId>) -> Result<(), String> {
            self.events.push("role");
            Ok(())
        }
        fn send(&mut self, msg: Message) -> Result<(), String> {
            self.events.push("send");
            self.sent.push(msg);
            Ok(())
        }
        fn restore_snapshot(&mut self, _: LogIndex, _: Term) -> Result<Flow, String> {
            Err("no snapshot expected".into())
        }
        fn persist(&mut self) -> Result<Flow, String> {
            self.events.push("persist");
            if let Some(work) = self.persistence.start() {
                self.writes.push(work);
            }
            Ok(Flow::Continue)
        }
        fn apply(&mut self, from: LogIndex, to: LogIndex) -> Result<(), String> {
            self.events.push("apply");
            self.applied.push((from, to));
            self.raft.applied(to);
            Ok(())
        }
        fn read_states(&mut self, _: Vec<ReadState>) -> Result<(), String> {
            Ok(())
        }
    }

    fn single_node() -> Recorder {
        let config = Config::new(NodeId(1), vec![NodeId(1)]);
        let mut raft = RawNode::new(config, MemLog::new(), HardState::default());
        raft.campaign_within(1);
        let mut d = Recorder {
            raft,
            persistence: Persistence::default(),
            sent: Vec::new(),
            writes: Vec::new(),
            applied: Vec::new(),
            events: Vec::new(),
        };
        // Elected through the same loop: its vote for itself waits for its write.
        for _ in 0..20 {
            if d.raft.role() == Role::Leader {
                break;
            }
            d.raft.tick();
            handle_ready(&mut d).unwrap();
            while !d.writes.is_empty() && d.raft.role() != Role::Leader {
                finish_oldest(&mut d);
                handle_ready(&mut d).unwrap();
            }
        }
        assert_eq!(d.raft.role(), Role::Leader);
        d
    }

    fn finish_oldest(d: &mut Recorder) {
        let work = d.writes.remove(0);
        let synced = d.raft.log().last_index();
        write_done(d, work, synced).unwrap();
        // The driver starts the next write once one is done.
        d.persist().unwrap();
    }

    #[test]
    fn nothing_commits_before_its_write_is_done_and_later_readies_wait_for_the_next_write() {
        let mut d = single_node();
        assert!(d.events.contains(&"role"));
        assert_eq!(
            d.writes.len(),
            1,
            "the leader's first entry is being written"
        );
        let first = d.writes[0].unsynced.expect("the noop is written").0;

        // Two more proposals while the first write is in flight: queued, not started.
        for body in [&b"a"[..], &b"b"[..]] {
            d.raft
                .propose(EntryKind::Command, Bytes::from_static(body))
                .unwrap();
            handle_ready(&mut d).unwrap();
        }
        assert_eq!(d.writes.len(), 1, "one write in flight at a time");
        assert!(d.applied.is_empty(), "nothing is committed before its sync");

        finish_oldest(&mut d);
        handle_ready(&mut d).unwrap();
        assert_eq!(d.applied, vec![(first, first)], "the noop commits alone");
        assert_eq!(d.writes.len(), 1, "the queued readies form the next write");
        let next = &d.writes[0];
        assert_eq!(next.unsynced.unwrap().0, LogIndex(first.0 + 2));
        assert_eq!(
            next.messages.len(),
            2,
            "both self-acknowledgements wait for it"
        );

        finish_oldest(&mut d);
        handle_ready(&mut d).unwrap();
        assert_eq!(
            d.applied.last(),
            Some(&(LogIndex(first.0 + 1), LogIndex(first.0 + 2)))
        );
        assert!(d.persistence.is_idle());
    }

    #[test]
    fn a_sync_is_reported_no_further_than_the_synced_end() {
        let mut d = single_node();
        let work = d.writes.remove(0);
        let (index, _) = work.unsynced.unwrap();
        // As if a truncation lowered the synced end while the write ran.
        write_done(&mut d, work, LogIndex(index.0 - 1)).unwrap();
        assert_eq!(d.raft.status().persisted_index, LogIndex(index.0 - 1));
    }

    #[test]
    fn reset_forgets_queued_and_in_flight_writes() {
        let mut d = single_node();
        d.raft
            .propose(EntryKind::Command, Bytes::from_static(b"x"))
            .unwrap();
        handle_ready(&mut d).unwrap();
        assert!(d.persistence.in_flight());
        d.persistence.reset();
        assert!(d.persistence.is_idle());
        assert!(d.persistence.start().is_none());
        assert!(d
            .sent
            .iter()
            .all(|m| !matches!(m.body, MessageBody::AppendResponse { .. })));
    }
}
