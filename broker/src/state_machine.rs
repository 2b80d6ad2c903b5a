//! The replicated state machine: what committed log entries mean.
//!
//! Every node applies the same committed entries in the same order and so reaches the
//! same state: topics and their ids, each queue's index (which log entry holds which
//! offsets), producer sessions (for idempotent produce) and consumer-group offsets.
//! Deterministic by construction: no clock, no randomness, `BTreeMap` everywhere.
//!
//! On start it is rebuilt from the base snapshot (the one just before the first entry
//! retention kept, see [`crate::snapshot`]) by replaying the retained log; with no
//! snapshot, from the empty state by replaying the whole log. The snapshot holds
//! everything except the queue slots: those only point into the log, and replaying the
//! retained log recreates exactly the ones whose entries still exist.
//!
//! ## Snapshot payload (version 1, little-endian)
//!
//! Written by [`StateMachine::encode_snapshot`], in map order, so one state always
//! encodes to the same bytes (every node's snapshot at an index is identical).
//! Strings are a `u32` byte length then UTF-8; counts are `u32`.
//!
//! | field | size | notes |
//! |-------|-----:|-------|
//! | version | 1 | `1` |
//! | applied | 8 | the last entry applied (the snapshot's index) |
//! | next_topic_id | 4 | |
//! | next_producer_id | 8 | |
//! | topic count, then per topic by id | 4 | `id` (4), `name` (string), `retention_ms` (8), `retention_bytes` (8), queue count (4), per queue `next_offset` (8) |
//! | session count, then per session by key | 4 | `producer_id` (8), `topic_id` (4), `queue` (4), `epoch` (2), `next_sequence` (4), recent count (4), per recent batch `base_sequence` (4), `count` (4), `base_offset` (8), oldest first |
//! | group count, then per group by name | 4 | `name` (string), offset count (4), per offset by key `topic` (string), `queue` (4), `offset` (8) |
//! | membership (version 2) | 8 + 4 + n | index of the last membership entry applied (0: none), its body's length and the body |
//! | data groups (version 3) | 4 + per group | the number of data groups, then per group by id: `id` (4), replica count (4) and ids (8 each), first-replica count (4) and ids (8 each) |
//! | decommissioned (version 3) | 4 + 8n | the count of decommissioned nodes and their ids |
//! | placement (version 3) | per topic by id: 4 + 4n | the count of queue groups, then the group of each queue (0 entries: all in group 0) |
//! | listeners (version 4) | 4 + per node | the count of nodes that advertised a Kafka address, then per node by id: `id` (8), address (string) |
//! | users (version 5) | 4 + per user | the count of users, then per user by name: `name` (string), its SCRAM credentials |
//! | ACLs (version 6) | | the access control lists, in order |
//! | racks (version 7) | 4 + per node | the count of nodes that named a rack, then per node by id: `id` (8), rack (string) |
//!
//! Versions 1 (no membership field), 2 (no data groups), 3 (no listeners), 5 and
//! 6 (no racks) are still read: a version 1 membership is the bootstrap
//! configuration; without data groups every queue is in group 0; without listeners
//! or racks no node has advertised one.
//!
//! The name → id map of topics is not stored: it is exactly the topics' names, and
//! rebuilding it cannot let the two disagree.

use std::collections::{BTreeMap, VecDeque};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use raftmq_proto::pb::ErrorCode;
use raftmq_store::{Entry, EntryKind, LogIndex};

use crate::command::{decode_messages, Command, CommittedOffset, TopicRetention};
use crate::snapshot::PayloadError;

/// Version byte of the snapshot payload layout (module docs).
const SNAPSHOT_VERSION: u8 = 7;

/// Batches remembered per (producer, queue) to answer retries with their offset.
const RECENT_BATCHES_PER_PRODUCER_QUEUE: usize = 8;

/// Where a run of offsets lives in the log: RocketMQ's ConsumeQueue slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSlot {
    /// Offset of the batch's first message.
    pub base_offset: u64,
    /// The log entry that holds the batch.
    pub entry_index: LogIndex,
    /// Messages in the batch.
    pub count: u32,
    /// Bytes of the batch.
    pub bytes: u32,
    /// Largest timestamp in the batch (ms).
    pub max_timestamp_ms: i64,
}

/// One queue: its index of batches, in offset order.
///
/// The slots are contiguous and cover exactly `start_offset..next_offset`: the
/// first slot (if any) starts at `start_offset`, each next one where the previous
/// ends. Entry indexes rise with offsets, which is what lets retention cut a prefix.
#[derive(Debug, Default, Clone)]
pub struct QueueState {
    slots: Vec<QueueSlot>,
    /// First offset still stored: 0 until retention deletes entries (see
    /// [`StateMachine::drop_before`]); after a restore from a snapshot, the
    /// snapshot's `next_offset` until replay adds slots after it.
    pub start_offset: u64,
    /// Offset the next committed message gets (the high watermark).
    pub next_offset: u64,
    /// Bytes of the batches still stored (the sum over `slots`).
    pub retained_bytes: u64,
}

impl QueueState {
    /// Forgets the `n` oldest batches (deleted by retention); returns how many went.
    fn drop_front(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let gone: u64 = self.slots[..n].iter().map(|s| u64::from(s.bytes)).sum();
        self.slots.drain(..n);
        self.retained_bytes -= gone;
        // A large prefix went: give the memory back rather than keep the queue's
        // peak size for good.
        if self.slots.capacity() > 4 * self.slots.len() + 64 {
            self.slots.shrink_to_fit();
        }
        self.start_offset = self
            .slots
            .first()
            .map_or(self.next_offset, |s| s.base_offset);
        n
    }

    /// Slots holding offsets at or after `offset`, starting with the one containing it.
    /// Offsets below `start_offset` are gone: for them this starts at `start_offset`
    /// (callers that must refuse such offsets check `start_offset` first).
    pub fn slots_from(&self, offset: u64) -> &[QueueSlot] {
        // First slot whose end is beyond `offset`.
        let i = self
            .slots
            .partition_point(|s| s.base_offset + u64::from(s.count) <= offset);
        &self.slots[i..]
    }

    /// The first offset whose batch has a timestamp at or after `ts_ms` (or the end).
    /// Only stored batches count, so the answer is never below `start_offset`.
    pub fn offset_for_timestamp(&self, ts_ms: i64) -> u64 {
        // Timestamps are not monotone across batches: scan for the first batch whose
        // max timestamp reaches `ts_ms` (the queue index keeps this cheap).
        self.slots
            .iter()
            .find(|s| s.max_timestamp_ms >= ts_ms)
            .map_or(self.next_offset, |s| s.base_offset)
    }
}

/// A topic.
#[derive(Debug, Clone)]
pub struct Topic {
    /// Stable id, never reused.
    pub id: u32,
    /// Name.
    pub name: String,
    /// Its queues.
    pub queues: Vec<QueueState>,
    /// Its own retention, on top of the broker's.
    pub retention: TopicRetention,
    /// The Raft group holding each queue (metadata group only; empty: all in group
    /// 0, the metadata group itself).
    pub groups: Vec<u32>,
}

impl Topic {
    /// The Raft group holding `queue` (0 when the topic's queues are not spread).
    pub fn group_of(&self, queue: u32) -> u32 {
        self.groups.get(queue as usize).copied().unwrap_or(0)
    }
}

#[derive(Debug, Default, Clone)]
struct SequenceState {
    epoch: u16,
    next_sequence: u32,
    /// (base sequence, count, base offset) of the latest batches.
    recent: VecDeque<(u32, u32, u64)>,
}

/// A data group as the metadata group records it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataGroup {
    /// Where it is to live (node ids), preferred leader first.
    pub replicas: Vec<u64>,
    /// The replicas it started with: those start from this configuration, later
    /// ones join its leader.
    pub initial: Vec<u64>,
}

/// What applying one entry produced, for the request that proposed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Nothing to report (a Noop, or an entry nobody waits for).
    None,
    /// A topic was created.
    TopicCreated,
    /// A topic was deleted.
    TopicDeleted,
    /// A producer id was allocated.
    ProducerId(u64),
    /// A batch was stored at these offsets.
    Produced {
        /// First offset.
        base_offset: u64,
        /// Messages.
        count: u32,
    },
    /// The batch had been stored before (an idempotent retry): where it is.
    Duplicate {
        /// First offset of the earlier copy, when still remembered.
        base_offset: Option<u64>,
        /// Messages.
        count: u32,
    },
    /// Offsets stored.
    OffsetsCommitted,
    /// A membership entry was applied.
    MembershipChanged,
    /// The data groups were set (metadata group).
    DataGroupsSet,
    /// A node's advertised listeners or rack were recorded.
    ListenersSet,
    /// A user was created (true) or its credentials replaced (false).
    UserUpserted(bool),
    /// A user was deleted.
    UserDeleted,
    /// ACLs were added.
    AclsCreated,
    /// This many of the given ACLs existed and were removed.
    AclsDeleted(u32),
    /// A topic of the metadata group is now held by this data group.
    TopicMirrored,
    /// The entry was refused; the log keeps it but no queue does.
    Rejected(ErrorCode, String),
}

/// Topics, queues, producer sessions and group offsets.
#[derive(Debug, Default)]
pub struct StateMachine {
    topic_ids: BTreeMap<String, u32>,
    topics: BTreeMap<u32, Topic>,
    next_topic_id: u32,
    next_producer_id: u64,
    sequences: BTreeMap<(u64, u32, u32), SequenceState>,
    group_offsets: BTreeMap<String, BTreeMap<(String, u32), u64>>,
    /// The last membership entry applied: (index, body). Kept in snapshots, so a
    /// node that starts from one knows the group's members at that point.
    membership: Option<(LogIndex, Bytes)>,
    /// Metadata group: the data groups new topics spread over, by id (1..=N).
    data_groups: BTreeMap<u32, DataGroup>,
    /// Metadata group: nodes no replica is placed on any more.
    decommissioned: std::collections::BTreeSet<u64>,
    /// Metadata group: each node's advertised Kafka address.
    kafka_listeners: BTreeMap<u64, String>,
    /// Metadata group: each node's rack (failure domain), for those that named one.
    racks: BTreeMap<u64, String>,
    /// Metadata group: users and their SCRAM credentials.
    users: crate::security::users::UserTable,
    /// Metadata group: access control lists.
    acls: crate::security::acl::AclTable,
    /// Bumped whenever `users` or `acls` change (not persisted: a restored state
    /// starts a new count, and its node publishes it anew).
    users_changes: u64,
    applied: LogIndex,
}

impl StateMachine {
    /// An empty state (before the first entry).
    pub fn new() -> Self {
        StateMachine {
            next_topic_id: 1,
            next_producer_id: 1,
            ..StateMachine::default()
        }
    }

    /// The last entry applied.
    pub fn applied(&self) -> LogIndex {
        self.applied
    }

    /// The last membership entry applied, as (index, body), if any was.
    pub fn membership(&self) -> Option<&(LogIndex, Bytes)> {
        self.membership.as_ref()
    }

    /// An empty state that holds only this one's applied index and membership
    /// (what the Raft core needs of a snapshot).
    pub fn membership_only(&self) -> StateMachine {
        StateMachine {
            membership: self.membership.clone(),
            applied: self.applied,
            ..StateMachine::new()
        }
    }

    /// The data groups by id (none: every queue lives in the metadata group).
    pub fn data_groups(&self) -> &BTreeMap<u32, DataGroup> {
        &self.data_groups
    }

    /// Nodes no replica is placed on any more.
    pub fn decommissioned(&self) -> &std::collections::BTreeSet<u64> {
        &self.decommissioned
    }

    /// The Kafka address each node advertised (nodes without one are absent).
    pub fn kafka_listeners(&self) -> &BTreeMap<u64, String> {
        &self.kafka_listeners
    }

    /// The rack each node named (nodes without one are absent).
    pub fn racks(&self) -> &BTreeMap<u64, String> {
        &self.racks
    }

    /// Users and their credentials.
    pub fn users(&self) -> &crate::security::users::UserTable {
        &self.users
    }

    /// The access control lists.
    pub fn acls(&self) -> &crate::security::acl::AclTable {
        &self.acls
    }

    /// How many times the users or ACLs changed since this state was built.
    pub fn users_changes(&self) -> u64 {
        self.users_changes
    }

    /// The next topic id to be assigned: every topic id below it was created once.
    pub fn next_topic_id(&self) -> u32 {
        self.next_topic_id
    }

    /// A topic by name.
    pub fn topic(&self, name: &str) -> Option<&Topic> {
        self.topic_ids.get(name).and_then(|id| self.topics.get(id))
    }

    /// A topic by id.
    pub fn topic_by_id(&self, id: u32) -> Option<&Topic> {
        self.topics.get(&id)
    }

    /// Every topic, by name.
    pub fn topics(&self) -> impl Iterator<Item = &Topic> {
        self.topic_ids.values().filter_map(|id| self.topics.get(id))
    }

    /// Committed offsets of a group.
    pub fn group_offsets(&self, group: &str) -> Option<&BTreeMap<(String, u32), u64>> {
        self.group_offsets.get(group)
    }

    /// Names of every group with committed offsets.
    pub fn groups(&self) -> impl Iterator<Item = &String> {
        self.group_offsets.keys()
    }

    /// Applies the next committed entry. Entries must come in index order, each once.
    pub fn apply(&mut self, entry: &Entry) -> ApplyOutcome {
        assert_eq!(
            entry.index,
            self.applied.next(),
            "entries are applied in order, each once"
        );
        self.applied = entry.index;
        match entry.kind {
            EntryKind::Noop => ApplyOutcome::None,
            EntryKind::Membership => {
                self.membership = Some((entry.index, entry.body.clone()));
                ApplyOutcome::MembershipChanged
            }
            EntryKind::Messages => self.apply_messages(entry.index, &entry.body),
            EntryKind::Command => match Command::decode(&entry.body) {
                Ok(command) => self.apply_command(command),
                Err(e) => ApplyOutcome::Rejected(ErrorCode::InvalidRequest, e.to_string()),
            },
        }
    }

    fn apply_command(&mut self, command: Command) -> ApplyOutcome {
        match command {
            Command::CreateTopic {
                name,
                queues,
                retention,
            } => {
                if self.topic_ids.contains_key(&name) {
                    return ApplyOutcome::Rejected(
                        ErrorCode::TopicExists,
                        format!("topic {name:?} already exists"),
                    );
                }
                let id = self.next_topic_id;
                // Queues go round the data groups, each topic starting one further
                // on, so that topics of few queues still spread.
                let groups = match self.data_groups.len() as u32 {
                    0 => Vec::new(),
                    n => (0..queues).map(|q| 1 + (id + q) % n).collect(),
                };
                self.insert_topic(id, name, queues, retention, groups);
                ApplyOutcome::TopicCreated
            }
            Command::MirrorTopic {
                id,
                name,
                queues,
                retention,
            } => {
                if self.topics.contains_key(&id) {
                    return ApplyOutcome::None;
                }
                if let Some(old) = self.topic_ids.remove(&name) {
                    // The metadata group deleted the old topic and made a new one of
                    // the same name.
                    self.topics.remove(&old);
                    self.sequences.retain(|(_, topic, _), _| *topic != old);
                }
                self.insert_topic(id, name, queues, retention, Vec::new());
                ApplyOutcome::TopicMirrored
            }
            Command::SetDataGroups { groups } => {
                if !self.data_groups.is_empty() || groups.is_empty() {
                    return ApplyOutcome::Rejected(
                        ErrorCode::InvalidRequest,
                        format!(
                            "the cluster has {} data groups; changing that is not supported",
                            self.data_groups.len()
                        ),
                    );
                }
                if let Some(why) = groups.iter().find_map(|r| replicas_invalid(r)) {
                    return ApplyOutcome::Rejected(ErrorCode::InvalidRequest, why);
                }
                for (i, replicas) in groups.into_iter().enumerate() {
                    let group = DataGroup {
                        initial: replicas.clone(),
                        replicas,
                    };
                    self.data_groups.insert(i as u32 + 1, group);
                }
                ApplyOutcome::DataGroupsSet
            }
            Command::AddDataGroups { groups } => {
                if self.data_groups.is_empty() {
                    return ApplyOutcome::Rejected(
                        ErrorCode::InvalidRequest,
                        "this cluster runs without data groups (started without --data-groups); \
                         they are set when it starts"
                            .to_string(),
                    );
                }
                if groups.is_empty() {
                    return ApplyOutcome::Rejected(
                        ErrorCode::InvalidRequest,
                        "no data group to add".to_string(),
                    );
                }
                if let Some(why) = groups.iter().find_map(|r| replicas_invalid(r)) {
                    return ApplyOutcome::Rejected(ErrorCode::InvalidRequest, why);
                }
                let last = self.data_groups.keys().next_back().copied().unwrap_or(0);
                for (id, replicas) in (last + 1..).zip(groups) {
                    let group = DataGroup {
                        initial: replicas.clone(),
                        replicas,
                    };
                    self.data_groups.insert(id, group);
                }
                ApplyOutcome::DataGroupsSet
            }
            Command::AssignReplicas { group, replicas } => {
                if let Some(why) = replicas_invalid(&replicas) {
                    return ApplyOutcome::Rejected(ErrorCode::InvalidRequest, why);
                }
                match self.data_groups.get_mut(&group) {
                    Some(g) => {
                        g.replicas = replicas;
                        ApplyOutcome::DataGroupsSet
                    }
                    None => ApplyOutcome::Rejected(
                        ErrorCode::InvalidRequest,
                        format!("there is no data group {group}"),
                    ),
                }
            }
            Command::Decommission { node } => {
                self.decommissioned.insert(node);
                ApplyOutcome::DataGroupsSet
            }
            Command::Recommission { node } => {
                self.decommissioned.remove(&node);
                ApplyOutcome::DataGroupsSet
            }
            Command::UpsertUser { name, credentials } => {
                self.users_changes += 1;
                let created = self.users.insert(name, credentials).is_none();
                ApplyOutcome::UserUpserted(created)
            }
            Command::DeleteUser { name } => {
                if self.users.remove(&name).is_none() {
                    return ApplyOutcome::Rejected(
                        ErrorCode::InvalidRequest,
                        format!("there is no user {name:?}"),
                    );
                }
                self.users_changes += 1;
                ApplyOutcome::UserDeleted
            }
            Command::CreateAcls { bindings } => {
                self.users_changes += 1;
                self.acls.extend(bindings);
                ApplyOutcome::AclsCreated
            }
            Command::DeleteAcls { bindings } => {
                self.users_changes += 1;
                let deleted = bindings.iter().filter(|b| self.acls.remove(b)).count();
                ApplyOutcome::AclsDeleted(deleted as u32)
            }
            Command::SetListeners {
                node,
                kafka_address,
            } => {
                if kafka_address.is_empty() {
                    self.kafka_listeners.remove(&node);
                } else {
                    self.kafka_listeners.insert(node, kafka_address);
                }
                ApplyOutcome::ListenersSet
            }
            Command::SetRack { node, rack } => {
                if rack.is_empty() {
                    self.racks.remove(&node);
                } else {
                    self.racks.insert(node, rack);
                }
                ApplyOutcome::ListenersSet
            }
            Command::DeleteTopic { name, drop_offsets } => match self.topic_ids.remove(&name) {
                Some(id) => {
                    self.topics.remove(&id);
                    self.sequences.retain(|(_, topic, _), _| *topic != id);
                    if drop_offsets {
                        // Groups left with nothing by this deletion go; others
                        // (with offsets elsewhere, or none to begin with) stay.
                        self.group_offsets.retain(|_, offsets| {
                            let before = offsets.len();
                            offsets.retain(|(topic, _), _| *topic != name);
                            !(before > 0 && offsets.is_empty())
                        });
                    }
                    ApplyOutcome::TopicDeleted
                }
                None => ApplyOutcome::Rejected(
                    ErrorCode::UnknownTopic,
                    format!("unknown topic {name:?}"),
                ),
            },
            Command::InitProducer => {
                let id = self.next_producer_id;
                self.next_producer_id += 1;
                ApplyOutcome::ProducerId(id)
            }
            Command::CommitOffsets { group, offsets } => self.commit_offsets(group, offsets),
        }
    }

    /// Adds topic `id` with empty queues (ids are never reused: the next one is
    /// above it).
    fn insert_topic(
        &mut self,
        id: u32,
        name: String,
        queues: u32,
        retention: TopicRetention,
        groups: Vec<u32>,
    ) {
        self.next_topic_id = self.next_topic_id.max(id.saturating_add(1));
        self.topic_ids.insert(name.clone(), id);
        let queues = (0..queues).map(|_| QueueState::default()).collect();
        let topic = Topic {
            id,
            name,
            queues,
            retention,
            groups,
        };
        self.topics.insert(id, topic);
    }

    fn commit_offsets(&mut self, group: String, offsets: Vec<CommittedOffset>) -> ApplyOutcome {
        // Validate all before changing any: a commit is all or nothing.
        for o in &offsets {
            let Some(topic) = self.topic(&o.topic) else {
                return ApplyOutcome::Rejected(
                    ErrorCode::UnknownTopic,
                    format!("unknown topic {:?}", o.topic),
                );
            };
            let Some(queue) = topic.queues.get(o.queue as usize) else {
                return ApplyOutcome::Rejected(
                    ErrorCode::InvalidQueue,
                    format!("topic {:?} has no queue {}", o.topic, o.queue),
                );
            };
            // A queue of a data group: this group does not see its high watermark.
            if topic.group_of(o.queue) == 0 && o.offset > queue.next_offset {
                return ApplyOutcome::Rejected(
                    ErrorCode::OffsetOutOfRange,
                    format!(
                        "offset {} is beyond the high watermark {} of {}/{}",
                        o.offset, queue.next_offset, o.topic, o.queue
                    ),
                );
            }
        }
        let stored = self.group_offsets.entry(group).or_default();
        for o in offsets {
            stored.insert((o.topic, o.queue), o.offset);
        }
        ApplyOutcome::OffsetsCommitted
    }

    fn apply_messages(&mut self, index: LogIndex, body: &Bytes) -> ApplyOutcome {
        let entry = match decode_messages(body) {
            Ok(entry) => entry,
            Err(e) => return ApplyOutcome::Rejected(ErrorCode::CorruptBatch, e.to_string()),
        };
        let header = match raftmq_proto::batch::parse_stored(&entry.batch) {
            Ok(header) => header,
            Err(e) => return ApplyOutcome::Rejected(ErrorCode::CorruptBatch, e.to_string()),
        };
        let Some(topic) = self.topics.get_mut(&entry.topic_id) else {
            return ApplyOutcome::Rejected(
                ErrorCode::UnknownTopic,
                "the topic was deleted".to_string(),
            );
        };
        let Some(queue) = topic.queues.get_mut(entry.queue as usize) else {
            return ApplyOutcome::Rejected(ErrorCode::InvalidQueue, "no such queue".to_string());
        };
        let count = header.record_count;
        if header.producer_id != 0 {
            let key = (header.producer_id, entry.topic_id, entry.queue);
            let fresh = !self.sequences.contains_key(&key);
            let session = self.sequences.entry(key).or_default();
            if header.producer_epoch < session.epoch {
                return ApplyOutcome::Rejected(
                    ErrorCode::FencedProducer,
                    format!(
                        "producer epoch {} is older than {}",
                        header.producer_epoch, session.epoch
                    ),
                );
            }
            if header.producer_epoch > session.epoch {
                // A new epoch starts its sequences again.
                *session = SequenceState {
                    epoch: header.producer_epoch,
                    ..SequenceState::default()
                };
            }
            // A producer new to this queue (or in a new epoch) starts at 0, like any
            // other batch it must be the next sequence: a batch that arrives ahead
            // of one refused or lost before it was stored must not be stored
            // first, or the earlier batch's retry would then look like a duplicate
            // and be acknowledged without ever being stored.
            let modulus = sequence_modulus(&entry.batch);
            if header.base_sequence != session.next_sequence {
                if !session.recent.is_empty()
                    && sequence_before(header.base_sequence, session.next_sequence, modulus)
                {
                    let base_offset = session
                        .recent
                        .iter()
                        .find(|(seq, n, _)| *seq == header.base_sequence && *n == count)
                        .map(|(_, _, offset)| *offset);
                    return ApplyOutcome::Duplicate { base_offset, count };
                }
                let why = if fresh {
                    format!(
                        "producer {} has no session on this queue, so its first batch must \
                         have sequence 0, not {}",
                        header.producer_id, header.base_sequence
                    )
                } else {
                    format!(
                        "expected sequence {}, got {}: a batch before this one is not stored; \
                         resend from it",
                        session.next_sequence, header.base_sequence
                    )
                };
                return ApplyOutcome::Rejected(ErrorCode::OutOfOrderSequence, why);
            }
            session.next_sequence =
                ((u64::from(header.base_sequence) + u64::from(count)) % modulus) as u32;
            session
                .recent
                .push_back((header.base_sequence, count, queue.next_offset));
            if session.recent.len() > RECENT_BATCHES_PER_PRODUCER_QUEUE {
                session.recent.pop_front();
            }
        }
        let base_offset = queue.next_offset;
        queue.slots.push(QueueSlot {
            base_offset,
            entry_index: index,
            count,
            bytes: entry.batch.len() as u32,
            max_timestamp_ms: header.max_timestamp,
        });
        queue.next_offset += u64::from(count);
        queue.retained_bytes += entry.batch.len() as u64;
        ApplyOutcome::Produced { base_offset, count }
    }
}

/// How many sequence numbers a batch's producer counts through before wrapping to
/// 0: Kafka's are non-negative `i32`s (after 2^31 - 1 comes 0), raftmq's `u32`s.
fn sequence_modulus(batch: &[u8]) -> u64 {
    match raftmq_proto::batch::format_of(batch) {
        Some(raftmq_proto::batch::BatchFormat::Kafka) => 1 << 31,
        _ => 1 << 32,
    }
}

/// Whether `sequence` comes before `next` in a sequence space that wraps at
/// `modulus` (less than half of it behind): a batch already stored, retried.
fn sequence_before(sequence: u32, next: u32, modulus: u64) -> bool {
    let behind = (u64::from(next) + modulus - u64::from(sequence) % modulus) % modulus;
    behind != 0 && behind <= modulus / 2
}

/// Why a replica list cannot be a data group's: empty or naming a node twice.
fn replicas_invalid(replicas: &[u64]) -> Option<String> {
    let distinct: std::collections::BTreeSet<_> = replicas.iter().collect();
    (replicas.is_empty() || distinct.len() != replicas.len() || distinct.contains(&0))
        .then(|| format!("invalid replicas {replicas:?}: one or more distinct node ids"))
}

/// Snapshots and retention.
impl StateMachine {
    /// Encodes the replicated state for a snapshot at [`applied`](StateMachine::applied)
    /// (layout in the module docs). The queue slots are left out: they point into
    /// the log, and replaying the log after the snapshot rebuilds the ones that still
    /// exist. Deterministic: equal states encode to equal bytes.
    pub fn encode_snapshot(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(64 + 32 * self.topics.len());
        buf.put_u8(SNAPSHOT_VERSION);
        buf.put_u64_le(self.applied.0);
        buf.put_u32_le(self.next_topic_id);
        buf.put_u64_le(self.next_producer_id);

        put_count(&mut buf, self.topics.len());
        for topic in self.topics.values() {
            buf.put_u32_le(topic.id);
            put_string(&mut buf, &topic.name);
            buf.put_u64_le(topic.retention.ms);
            buf.put_u64_le(topic.retention.bytes);
            put_count(&mut buf, topic.queues.len());
            for queue in &topic.queues {
                buf.put_u64_le(queue.next_offset);
            }
        }

        put_count(&mut buf, self.sequences.len());
        for (&(producer_id, topic_id, queue), session) in &self.sequences {
            buf.put_u64_le(producer_id);
            buf.put_u32_le(topic_id);
            buf.put_u32_le(queue);
            buf.put_u16_le(session.epoch);
            buf.put_u32_le(session.next_sequence);
            put_count(&mut buf, session.recent.len());
            for &(base_sequence, count, base_offset) in &session.recent {
                buf.put_u32_le(base_sequence);
                buf.put_u32_le(count);
                buf.put_u64_le(base_offset);
            }
        }

        put_count(&mut buf, self.group_offsets.len());
        for (group, offsets) in &self.group_offsets {
            put_string(&mut buf, group);
            put_count(&mut buf, offsets.len());
            for ((topic, queue), offset) in offsets {
                put_string(&mut buf, topic);
                buf.put_u32_le(*queue);
                buf.put_u64_le(*offset);
            }
        }
        let (index, body) = self
            .membership
            .clone()
            .unwrap_or((LogIndex::ZERO, Bytes::new()));
        buf.put_u64_le(index.0);
        buf.put_u32_le(body.len() as u32);
        buf.put_slice(&body);

        put_count(&mut buf, self.data_groups.len());
        for (id, group) in &self.data_groups {
            buf.put_u32_le(*id);
            for ids in [&group.replicas, &group.initial] {
                put_count(&mut buf, ids.len());
                for n in ids {
                    buf.put_u64_le(*n);
                }
            }
        }
        put_count(&mut buf, self.decommissioned.len());
        for n in &self.decommissioned {
            buf.put_u64_le(*n);
        }
        for topic in self.topics.values() {
            put_count(&mut buf, topic.groups.len());
            for g in &topic.groups {
                buf.put_u32_le(*g);
            }
        }
        put_count(&mut buf, self.kafka_listeners.len());
        for (node, address) in &self.kafka_listeners {
            buf.put_u64_le(*node);
            put_string(&mut buf, address);
        }
        put_count(&mut buf, self.users.len());
        for (name, credentials) in &self.users {
            put_string(&mut buf, name);
            crate::security::users::encode_credentials(&mut buf, credentials);
        }
        crate::security::acl::encode_bindings(&mut buf, self.acls.iter());
        put_count(&mut buf, self.racks.len());
        for (node, rack) in &self.racks {
            buf.put_u64_le(*node);
            put_string(&mut buf, rack);
        }
        buf.freeze()
    }

    /// Restores the state a snapshot payload holds. Each queue comes back with no
    /// slots and `start_offset == next_offset`: replaying the log after the snapshot
    /// adds the slots. [`applied`](StateMachine::applied) is the payload's, which the
    /// caller checks against the snapshot's index.
    ///
    /// Every length is checked against the bytes left before anything is allocated,
    /// so damaged input is an error, never a panic or a huge allocation; keys must be
    /// in the order `encode_snapshot` writes them, so a decoded state encodes back to
    /// the same bytes.
    pub fn from_snapshot(payload: &[u8]) -> Result<StateMachine, PayloadError> {
        let mut r = Reader(payload);
        let version = r.u8("version")?;
        if !(1..=SNAPSHOT_VERSION).contains(&version) {
            return Err(PayloadError::UnknownVersion(version));
        }
        let applied = LogIndex(r.u64("applied index")?);
        let next_topic_id = r.u32("next topic id")?;
        let next_producer_id = r.u64("next producer id")?;
        if next_topic_id == 0 || next_producer_id == 0 {
            return Err(PayloadError::Inconsistent(
                "id counters start at 1".to_string(),
            ));
        }

        let mut topics = BTreeMap::new();
        let mut topic_ids = BTreeMap::new();
        let topic_count = r.count("topics", 12)?;
        for _ in 0..topic_count {
            let id = r.u32("topic id")?;
            let name = r.string("topic name")?;
            if id == 0 || id >= next_topic_id {
                return Err(PayloadError::Inconsistent(format!(
                    "topic id {id} is outside 1..{next_topic_id}"
                )));
            }
            if topics.last_key_value().is_some_and(|(&last, _)| last >= id) {
                return Err(PayloadError::Inconsistent(format!(
                    "topic id {id} out of order"
                )));
            }
            if topic_ids.insert(name.clone(), id).is_some() {
                return Err(PayloadError::Inconsistent(format!(
                    "two topics named {name:?}"
                )));
            }
            let retention = TopicRetention {
                ms: r.u64("topic retention ms")?,
                bytes: r.u64("topic retention bytes")?,
            };
            let queue_count = r.count("queues", 8)?;
            let mut queues = Vec::with_capacity(queue_count);
            for _ in 0..queue_count {
                let next_offset = r.u64("queue next offset")?;
                queues.push(QueueState {
                    slots: Vec::new(),
                    start_offset: next_offset,
                    next_offset,
                    retained_bytes: 0,
                });
            }
            topics.insert(
                id,
                Topic {
                    id,
                    name,
                    queues,
                    retention,
                    groups: Vec::new(),
                },
            );
        }

        let mut sequences = BTreeMap::new();
        let session_count = r.count("producer sessions", 26)?;
        for _ in 0..session_count {
            let key = (
                r.u64("producer id")?,
                r.u32("session topic id")?,
                r.u32("session queue")?,
            );
            let epoch = r.u16("producer epoch")?;
            let next_sequence = r.u32("next sequence")?;
            let recent_count = r.count("recent batches", 16)?;
            let mut recent = VecDeque::with_capacity(recent_count);
            for _ in 0..recent_count {
                recent.push_back((
                    r.u32("recent base sequence")?,
                    r.u32("recent count")?,
                    r.u64("recent base offset")?,
                ));
            }
            if sequences
                .last_key_value()
                .is_some_and(|(last, _)| *last >= key)
            {
                return Err(PayloadError::Inconsistent(format!(
                    "producer session {key:?} out of order"
                )));
            }
            sequences.insert(
                key,
                SequenceState {
                    epoch,
                    next_sequence,
                    recent,
                },
            );
        }

        let mut group_offsets = BTreeMap::new();
        let group_count = r.count("groups", 8)?;
        for _ in 0..group_count {
            let group = r.string("group name")?;
            let mut offsets = BTreeMap::new();
            let offset_count = r.count("group offsets", 16)?;
            for _ in 0..offset_count {
                let key = (r.string("offset topic")?, r.u32("offset queue")?);
                let offset = r.u64("offset")?;
                if offsets
                    .last_key_value()
                    .is_some_and(|(last, _)| *last >= key)
                {
                    return Err(PayloadError::Inconsistent(format!(
                        "offset of {}/{} in group {group:?} out of order",
                        key.0, key.1
                    )));
                }
                offsets.insert(key, offset);
            }
            if group_offsets
                .last_key_value()
                .is_some_and(|(last, _): (&String, _)| *last >= group)
            {
                return Err(PayloadError::Inconsistent(format!(
                    "group {group:?} out of order"
                )));
            }
            group_offsets.insert(group, offsets);
        }

        let mut membership = None;
        if version >= 2 {
            let index = LogIndex(r.u64("membership index")?);
            let len = r.count("membership body", 1)?;
            let body = Bytes::copy_from_slice(r.bytes(len, "membership body")?);
            if index > applied || (index == LogIndex::ZERO) != body.is_empty() {
                return Err(PayloadError::Inconsistent(format!(
                    "membership entry {index} with {len} bytes"
                )));
            }
            if index > LogIndex::ZERO {
                membership = Some((index, body));
            }
        }
        let mut data_groups = BTreeMap::new();
        let mut decommissioned = std::collections::BTreeSet::new();
        if version >= 3 {
            let count = r.count("data groups", 12)?;
            for _ in 0..count {
                let id = r.u32("data group id")?;
                let mut lists = [Vec::new(), Vec::new()];
                for list in &mut lists {
                    let n = r.count("data group replicas", 8)?;
                    for _ in 0..n {
                        list.push(r.u64("data group replica")?);
                    }
                }
                let [replicas, initial] = lists;
                if id != data_groups.len() as u32 + 1 {
                    return Err(PayloadError::Inconsistent(format!(
                        "data group {id} out of order"
                    )));
                }
                data_groups.insert(id, DataGroup { replicas, initial });
            }
            let count = r.count("decommissioned nodes", 8)?;
            for _ in 0..count {
                decommissioned.insert(r.u64("decommissioned node")?);
            }
            let group_count = data_groups.len() as u32;
            for topic in topics.values_mut() {
                let n = r.count("queue groups", 4)?;
                if n != 0 && n != topic.queues.len() {
                    return Err(PayloadError::Inconsistent(format!(
                        "topic {:?} has {} queues and {n} queue groups",
                        topic.name,
                        topic.queues.len()
                    )));
                }
                for _ in 0..n {
                    let g = r.u32("queue group")?;
                    if g == 0 || g > group_count {
                        return Err(PayloadError::Inconsistent(format!(
                            "queue group {g} is outside 1..={group_count}"
                        )));
                    }
                    topic.groups.push(g);
                }
            }
        }
        let mut kafka_listeners = BTreeMap::new();
        if version >= 4 {
            let count = r.count("listeners", 12)?;
            for _ in 0..count {
                let node = r.u64("listener node")?;
                let address = r.string("listener address")?;
                if address.is_empty()
                    || kafka_listeners
                        .keys()
                        .next_back()
                        .is_some_and(|&last| last >= node)
                {
                    return Err(PayloadError::Inconsistent(format!(
                        "listener of node {node} out of order or empty"
                    )));
                }
                kafka_listeners.insert(node, address);
            }
        }
        let mut users = crate::security::users::UserTable::new();
        if version >= 5 {
            let count = r.count("users", 3)?;
            for _ in 0..count {
                let name = r.string("user name")?;
                let credentials =
                    crate::security::users::decode_credentials(&mut r.0).ok_or_else(|| {
                        PayloadError::Inconsistent(format!("credentials of user {name:?}"))
                    })?;
                if users
                    .keys()
                    .next_back()
                    .is_some_and(|last: &String| *last >= name)
                {
                    return Err(PayloadError::Inconsistent(format!(
                        "user {name:?} out of order"
                    )));
                }
                users.insert(name, credentials);
            }
        }
        let mut acls = crate::security::acl::AclTable::new();
        if version >= 6 {
            let bindings = crate::security::acl::decode_bindings(&mut r.0)
                .ok_or_else(|| PayloadError::Inconsistent("ACLs".into()))?;
            for b in bindings {
                if acls.last().is_some_and(|last| *last >= b) {
                    return Err(PayloadError::Inconsistent(format!(
                        "ACL {b:?} out of order"
                    )));
                }
                acls.insert(b);
            }
        }
        let mut racks = BTreeMap::new();
        if version >= 7 {
            let count = r.count("racks", 12)?;
            for _ in 0..count {
                let node = r.u64("rack node")?;
                let rack = r.string("rack")?;
                if rack.is_empty() || racks.keys().next_back().is_some_and(|&last| last >= node) {
                    return Err(PayloadError::Inconsistent(format!(
                        "rack of node {node} out of order or empty"
                    )));
                }
                racks.insert(node, rack);
            }
        }
        if !r.0.is_empty() {
            return Err(PayloadError::TrailingBytes(r.0.len()));
        }
        Ok(StateMachine {
            membership,
            data_groups,
            decommissioned,
            kafka_listeners,
            racks,
            users,
            acls,
            users_changes: 0,
            topic_ids,
            topics,
            next_topic_id,
            next_producer_id,
            sequences,
            group_offsets,
            applied,
        })
    }

    /// Forgets the batches of log entries below `first_kept`, which retention deleted:
    /// their slots go and each queue's `start_offset` moves to its first remaining
    /// batch (to `next_offset` when none remains). Only the queue index changes;
    /// offsets, producer sessions and group offsets are untouched, so every node
    /// still applies later entries the same way whatever it has retained.
    ///
    /// Cost: a binary search per queue plus moving the slots that remain.
    pub fn drop_before(&mut self, first_kept: LogIndex) {
        for topic in self.topics.values_mut() {
            for queue in &mut topic.queues {
                // Slots are in entry-index order (entries are applied in order).
                let gone = queue.slots.partition_point(|s| s.entry_index < first_kept);
                queue.drop_front(gone);
            }
        }
    }

    /// A topic's own retention, applied by each node on its own (like the deletion
    /// of segments, it is not replicated: it only moves queue starts forward): the
    /// oldest batches of each queue of a topic with a retention go while they are
    /// older than `retention.ms` (by their largest timestamp, compared with
    /// `now_ms`) or while the queue holds more than `retention.bytes`. Returns how
    /// many batches went.
    pub fn expire(&mut self, now_ms: i64) -> usize {
        let mut dropped = 0;
        for topic in self.topics.values_mut() {
            let r = topic.retention;
            if !r.is_set() {
                continue;
            }
            let oldest_kept = (r.ms > 0).then(|| now_ms.saturating_sub(r.ms as i64));
            for queue in &mut topic.queues {
                let mut n = 0;
                let mut bytes = queue.retained_bytes;
                for slot in &queue.slots {
                    let too_old = oldest_kept.is_some_and(|t| slot.max_timestamp_ms < t);
                    let too_big = r.bytes > 0 && bytes > r.bytes;
                    if !too_old && !too_big {
                        break;
                    }
                    bytes -= u64::from(slot.bytes);
                    n += 1;
                }
                dropped += queue.drop_front(n);
            }
        }
        dropped
    }

    /// The oldest log entry that still holds a stored batch of any queue; `None`
    /// when no queue holds one. Segments wholly below it hold only what the
    /// snapshot covers.
    pub fn first_retained_entry(&self) -> Option<LogIndex> {
        self.topics
            .values()
            .flat_map(|t| &t.queues)
            .filter_map(|q| q.slots.first().map(|s| s.entry_index))
            .min()
    }
}

/// Writes a count as the `u32` of the payload layout. Counts of in-memory maps and
/// lists cannot exceed it: a queue count came from a `u32`, and four billion topics,
/// sessions or groups would not fit in memory first.
fn put_count(buf: &mut BytesMut, count: usize) {
    let count = u32::try_from(count).expect("state counts fit in u32");
    buf.put_u32_le(count);
}

/// Writes a string as a `u32` length then UTF-8 (names came from commands, whose
/// strings have `u16` lengths).
fn put_string(buf: &mut BytesMut, s: &str) {
    put_count(buf, s.len());
    buf.put_slice(s.as_bytes());
}

/// Reads the snapshot payload, checking each length against the bytes left; errors
/// name the field that was cut short.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn need(&self, n: usize, what: &'static str) -> Result<(), PayloadError> {
        if self.0.remaining() < n {
            return Err(PayloadError::Truncated(what));
        }
        Ok(())
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, PayloadError> {
        self.need(1, what)?;
        Ok(self.0.get_u8())
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, PayloadError> {
        self.need(2, what)?;
        Ok(self.0.get_u16_le())
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, PayloadError> {
        self.need(4, what)?;
        Ok(self.0.get_u32_le())
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, PayloadError> {
        self.need(8, what)?;
        Ok(self.0.get_u64_le())
    }

    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&[u8], PayloadError> {
        self.need(n, what)?;
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// A count of items that each take at least `min_item_bytes`: refused at once if
    /// the bytes left cannot hold that many, so a damaged count can neither make the
    /// caller preallocate a huge collection nor loop long before failing.
    fn count(&mut self, what: &'static str, min_item_bytes: usize) -> Result<usize, PayloadError> {
        let count = self.u32(what)? as usize;
        if count.saturating_mul(min_item_bytes) > self.0.remaining() {
            return Err(PayloadError::Truncated(what));
        }
        Ok(count)
    }

    fn string(&mut self, what: &'static str) -> Result<String, PayloadError> {
        let len = self.u32(what)? as usize;
        self.need(len, what)?;
        let s = std::str::from_utf8(&self.0[..len])
            .map_err(|_| PayloadError::NotUtf8(what))?
            .to_string();
        self.0.advance(len);
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use raftmq_proto::batch::BatchBuilder;
    use raftmq_store::Term;

    use super::*;
    use crate::command::encode_messages;

    /// A producer stamp: (producer id, epoch, base sequence).
    type Stamp = Option<(u64, u16, u32)>;

    fn batch(records: u32, timestamp_ms: i64, stamp: Stamp) -> Bytes {
        let mut b = BatchBuilder::with_capacity(256);
        if let Some((id, epoch, sequence)) = stamp {
            b.set_producer(id, epoch, sequence);
        }
        for i in 0..records {
            b.push(None, format!("m{i}").as_bytes(), &[], timestamp_ms);
        }
        b.finish()
    }

    fn produce(
        topic_id: u32,
        queue: u32,
        records: u32,
        ts: i64,
        stamp: Stamp,
    ) -> (EntryKind, Bytes) {
        let body = encode_messages(topic_id, queue, &batch(records, ts, stamp));
        (EntryKind::Messages, body)
    }

    fn cmd(command: Command) -> (EntryKind, Bytes) {
        (EntryKind::Command, command.encode())
    }

    fn create(name: &str, queues: u32) -> (EntryKind, Bytes) {
        cmd(Command::CreateTopic {
            name: name.into(),
            queues,
            retention: TopicRetention::default(),
        })
    }

    fn commit(group: &str, offsets: &[(&str, u32, u64)]) -> (EntryKind, Bytes) {
        cmd(Command::CommitOffsets {
            group: group.into(),
            offsets: offsets
                .iter()
                .map(|&(topic, queue, offset)| CommittedOffset {
                    topic: topic.into(),
                    queue,
                    offset,
                })
                .collect(),
        })
    }

    fn apply(sm: &mut StateMachine, (kind, body): (EntryKind, Bytes)) -> ApplyOutcome {
        let entry = Entry {
            index: sm.applied().next(),
            term: Term(1),
            kind,
            body,
        };
        sm.apply(&entry)
    }

    fn apply_all(
        sm: &mut StateMachine,
        entries: impl IntoIterator<Item = (EntryKind, Bytes)>,
    ) -> Vec<ApplyOutcome> {
        entries.into_iter().map(|e| apply(sm, e)).collect()
    }

    /// Topics "a" (id 1, two queues) and "b" (id 2); "gone" (id 3) was deleted after
    /// use. Producer 1 (epoch 0) wrote to a/0 and nine batches to a/1 (more than the
    /// sessions remember); producer 2 is at epoch 1 on b/0; groups committed,
    /// including an offset of the deleted topic.
    fn history() -> Vec<(EntryKind, Bytes)> {
        let mut entries = vec![
            create("a", 2),
            create("b", 1),
            create("gone", 1),
            cmd(Command::InitProducer),
            cmd(Command::InitProducer),
            produce(1, 0, 3, 1_000, Some((1, 0, 0))),
            produce(1, 0, 2, 2_000, Some((1, 0, 3))),
            produce(1, 0, 4, 3_000, None),
            produce(3, 0, 1, 1_000, Some((2, 0, 0))),
            produce(2, 0, 2, 1_500, Some((2, 1, 0))),
            (EntryKind::Noop, Bytes::new()),
        ];
        for i in 0..9 {
            entries.push(produce(1, 1, 1, 4_000 + i64::from(i), Some((1, 0, i))));
        }
        entries.extend([
            commit("g1", &[("a", 0, 2), ("b", 0, 1)]),
            commit("g2", &[("gone", 0, 1)]),
            commit("empty", &[]),
            cmd(Command::DeleteTopic {
                name: "gone".into(),
                drop_offsets: false,
            }),
            cmd(Command::SetListeners {
                node: 2,
                kafka_address: "10.0.0.2:9092".into(),
            }),
            cmd(Command::SetListeners {
                node: 1,
                kafka_address: "10.0.0.1:9092".into(),
            }),
            cmd(Command::SetRack {
                node: 3,
                rack: "zone-c".into(),
            }),
            cmd(Command::SetRack {
                node: 1,
                rack: "zone-a".into(),
            }),
            cmd(Command::UpsertUser {
                name: "bob".into(),
                credentials: fixed_credentials("b"),
            }),
            cmd(Command::UpsertUser {
                name: "alice".into(),
                credentials: fixed_credentials("a"),
            }),
            cmd(Command::UpsertUser {
                name: "carol".into(),
                credentials: fixed_credentials("c"),
            }),
            cmd(Command::DeleteUser {
                name: "carol".into(),
            }),
            cmd(Command::CreateAcls {
                bindings: vec![
                    crate::security::acl::AclBinding {
                        principal: "User:bob".into(),
                        resource: crate::security::acl::ResourceType::Topic,
                        name: "a".into(),
                        prefixed: false,
                        operation: crate::security::acl::Operation::Consume,
                        deny: false,
                    },
                    crate::security::acl::AclBinding {
                        principal: "User:*".into(),
                        resource: crate::security::acl::ResourceType::Group,
                        name: "g".into(),
                        prefixed: true,
                        operation: crate::security::acl::Operation::All,
                        deny: true,
                    },
                ],
            }),
        ]);
        entries
    }

    /// Credentials with a fixed salt, so a history encodes the same every time.
    fn fixed_credentials(password: &str) -> Vec<raftmq_proto::scram::ScramCredential> {
        raftmq_proto::scram::Mechanism::ALL
            .into_iter()
            .map(|m| raftmq_proto::scram::ScramCredential::derive(m, password, b"salt", 4096))
            .collect()
    }

    /// Entries applied after the snapshot: retries, new batches, fencing, topics and
    /// commits, each exercising a piece of the restored state.
    fn future() -> Vec<(EntryKind, Bytes)> {
        vec![
            produce(1, 0, 2, 5_000, Some((1, 0, 3))), // retry, still in `recent`
            produce(1, 1, 1, 5_000, Some((1, 0, 0))), // retry, evicted from `recent`
            produce(1, 0, 1, 5_000, Some((1, 0, 5))), // next in sequence
            produce(1, 0, 1, 5_000, Some((1, 0, 100))), // gap
            produce(2, 0, 1, 5_000, Some((2, 0, 2))), // old epoch
            produce(2, 0, 1, 5_000, Some((2, 1, 2))), // next in sequence
            produce(3, 0, 1, 5_000, None),            // deleted topic
            cmd(Command::InitProducer),
            create("a", 1),
            create("gone", 1),
            produce(4, 0, 2, 5_000, Some((3, 0, 0))),
            commit("g1", &[("a", 0, 1_000)]),
            commit("g1", &[("a", 0, 10), ("gone", 0, 2)]),
            produce(1, 1, 3, 6_000, None),
        ]
    }

    /// Everything a client can observe of a queue, for comparisons.
    fn queues(sm: &StateMachine) -> Vec<(String, u64, u64, Vec<QueueSlot>)> {
        sm.topics()
            .flat_map(|t| {
                t.queues.iter().map(|q| {
                    (
                        t.name.clone(),
                        q.start_offset,
                        q.next_offset,
                        q.slots_from(0).to_vec(),
                    )
                })
            })
            .collect()
    }

    fn history_state() -> StateMachine {
        let mut sm = StateMachine::new();
        for (i, outcome) in apply_all(&mut sm, history()).into_iter().enumerate() {
            assert!(
                !matches!(outcome, ApplyOutcome::Rejected(..)),
                "history entry {i}: {outcome:?}"
            );
        }
        sm
    }

    #[test]
    fn a_snapshot_decodes_and_encodes_back_to_the_same_bytes() {
        let empty = StateMachine::new().encode_snapshot();
        assert_eq!(
            StateMachine::from_snapshot(&empty)
                .unwrap()
                .encode_snapshot(),
            empty
        );

        let sm = history_state();
        let payload = sm.encode_snapshot();
        let restored = StateMachine::from_snapshot(&payload).unwrap();
        assert_eq!(restored.encode_snapshot(), payload);
        assert_eq!(restored.applied(), sm.applied());
        assert_eq!(history_state().encode_snapshot(), payload, "deterministic");
        assert_eq!(
            restored
                .users()
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            ["alice", "bob"],
            "users survive a snapshot"
        );
        assert_eq!(restored.acls().len(), 2, "ACLs survive a snapshot");
        assert_eq!(
            restored.kafka_listeners().get(&2).map(String::as_str),
            Some("10.0.0.2:9092")
        );
        assert_eq!(
            restored
                .racks()
                .values()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            ["zone-a", "zone-c"],
            "racks survive a snapshot"
        );
    }

    #[test]
    fn a_restored_state_has_empty_queues_starting_at_their_end() {
        let sm = history_state();
        let restored = StateMachine::from_snapshot(&sm.encode_snapshot()).unwrap();
        let names: Vec<_> = restored.topics().map(|t| (t.name.as_str(), t.id)).collect();
        assert_eq!(names, vec![("a", 1), ("b", 2)]);
        assert!(restored.topic("gone").is_none());
        for (name, start, next, slots) in queues(&restored) {
            assert_eq!(start, next, "{name}");
            assert!(slots.is_empty(), "{name}");
        }
        assert_eq!(restored.topic("a").unwrap().queues[0].next_offset, 9);
        assert_eq!(restored.topic("a").unwrap().queues[1].next_offset, 9);
        assert_eq!(
            restored.group_offsets("g2").unwrap()[&("gone".to_string(), 0)],
            1
        );
        assert_eq!(restored.groups().count(), 3);
    }

    /// A producer's batch that overtakes an earlier one (refused before it was
    /// proposed, say, by a leader not ready yet) is refused too: stored first, it
    /// would make the earlier batch's retry look like a duplicate, acknowledged but
    /// never stored.
    #[test]
    fn deleting_a_topic_forgets_its_committed_offsets_unless_the_entry_predates_that() {
        let mut sm = StateMachine::new();
        apply_all(&mut sm, [create("t", 2), create("u", 1)]);
        apply_all(
            &mut sm,
            [
                commit("both", &[("t", 0, 0), ("t", 1, 0), ("u", 0, 0)]),
                commit("only-t", &[("t", 1, 0)]),
                commit("none", &[]),
            ],
        );
        apply(
            &mut sm,
            cmd(Command::DeleteTopic {
                name: "t".into(),
                drop_offsets: true,
            }),
        );
        assert!(
            sm.group_offsets("none").is_some(),
            "a group with none to lose stays"
        );
        let both = sm.group_offsets("both").expect("offsets of u are kept");
        assert_eq!(both.keys().collect::<Vec<_>>(), [&("u".to_string(), 0)]);
        assert!(
            sm.group_offsets("only-t").is_none(),
            "a group left with none"
        );
        // Created again, the topic is read from its start by every group.
        apply(&mut sm, create("t", 1));
        assert!(!sm
            .group_offsets("both")
            .unwrap()
            .contains_key(&("t".to_string(), 0)));

        // An entry written before deletions dropped offsets applies as it did then.
        apply(&mut sm, commit("old", &[("t", 0, 0)]));
        apply(
            &mut sm,
            cmd(Command::DeleteTopic {
                name: "t".into(),
                drop_offsets: false,
            }),
        );
        assert!(sm
            .group_offsets("old")
            .unwrap()
            .contains_key(&("t".to_string(), 0)));
    }

    #[test]
    fn a_batch_ahead_of_its_producers_next_sequence_is_refused_even_as_the_first() {
        let mut sm = StateMachine::new();
        apply(&mut sm, create("a", 1));
        apply(&mut sm, cmd(Command::InitProducer));
        let overtaking = produce(1, 0, 2, 1_000, Some((1, 0, 3)));
        assert!(matches!(
            apply(&mut sm, overtaking.clone()),
            ApplyOutcome::Rejected(ErrorCode::OutOfOrderSequence, _)
        ));
        assert_eq!(
            apply(&mut sm, produce(1, 0, 3, 1_000, Some((1, 0, 0)))),
            ApplyOutcome::Produced {
                base_offset: 0,
                count: 3
            }
        );
        assert_eq!(
            apply(&mut sm, overtaking),
            ApplyOutcome::Produced {
                base_offset: 3,
                count: 2
            }
        );
        // A new epoch starts again at 0, and only there.
        assert!(matches!(
            apply(&mut sm, produce(1, 0, 1, 1_000, Some((1, 1, 5)))),
            ApplyOutcome::Rejected(ErrorCode::OutOfOrderSequence, _)
        ));
        assert_eq!(
            apply(&mut sm, produce(1, 0, 1, 1_000, Some((1, 1, 0)))),
            ApplyOutcome::Produced {
                base_offset: 5,
                count: 1
            }
        );
    }

    /// A Kafka-format batch header (the records are not read by the state machine).
    fn kafka_produce(records: u32, producer: u64, base_sequence: i32) -> (EntryKind, Bytes) {
        let mut b = vec![0u8; raftmq_proto::kafka_batch::HEADER_BYTES];
        let batch_length = (b.len() - 12) as i32;
        b[8..12].copy_from_slice(&batch_length.to_be_bytes());
        b[16] = raftmq_proto::kafka_batch::MAGIC;
        b[23..27].copy_from_slice(&(records as i32 - 1).to_be_bytes());
        b[43..51].copy_from_slice(&(producer as i64).to_be_bytes());
        b[53..57].copy_from_slice(&base_sequence.to_be_bytes());
        b[57..61].copy_from_slice(&(records as i32).to_be_bytes());
        let body = encode_messages(1, 0, &Bytes::from(b));
        (EntryKind::Messages, body)
    }

    /// Sequences wrap: a Kafka producer's after 2^31 - 1 (to 0), a native one's
    /// after 2^32 - 1. The batch after the wrap is the next one, not a duplicate;
    /// a retry from just before the wrap is still recognised as a duplicate.
    #[test]
    fn producer_sequences_wrap_around_as_each_protocol_counts() {
        let mut sm = StateMachine::new();
        apply(&mut sm, create("a", 1));
        apply(&mut sm, cmd(Command::InitProducer));
        let produced = |o: &ApplyOutcome| matches!(o, ApplyOutcome::Produced { .. });
        // Kafka: 0.., then a batch ending at i32::MAX, then 0 again.
        assert!(produced(&apply(&mut sm, kafka_produce(5, 1, 0))));
        let sm_near = &mut sm;
        let session = sm_near.sequences.get_mut(&(1, 1, 0)).unwrap();
        session.next_sequence = i32::MAX as u32 - 9;
        let before_wrap = kafka_produce(10, 1, i32::MAX - 9);
        assert!(produced(&apply(sm_near, before_wrap.clone())));
        assert_eq!(sm_near.sequences[&(1, 1, 0)].next_sequence, 0);
        assert!(produced(&apply(sm_near, kafka_produce(3, 1, 0))));
        assert!(matches!(
            apply(sm_near, before_wrap),
            ApplyOutcome::Duplicate { .. }
        ));
        assert!(matches!(
            apply(sm_near, kafka_produce(1, 1, 7)),
            ApplyOutcome::Rejected(ErrorCode::OutOfOrderSequence, _)
        ));
        // Native: wraps at u32::MAX.
        let mut native = StateMachine::new();
        apply(&mut native, create("a", 1));
        apply(&mut native, cmd(Command::InitProducer));
        assert!(produced(&apply(
            &mut native,
            produce(1, 0, 2, 1_000, Some((1, 0, 0)))
        )));
        native.sequences.get_mut(&(1, 1, 0)).unwrap().next_sequence = u32::MAX - 1;
        let before_wrap = produce(1, 0, 4, 1_000, Some((1, 0, u32::MAX - 1)));
        assert!(produced(&apply(&mut native, before_wrap.clone())));
        assert_eq!(native.sequences[&(1, 1, 0)].next_sequence, 2);
        assert!(produced(&apply(
            &mut native,
            produce(1, 0, 1, 1_000, Some((1, 0, 2)))
        )));
        assert!(matches!(
            apply(&mut native, before_wrap),
            ApplyOutcome::Duplicate { .. }
        ));
    }

    #[test]
    fn sequence_order_is_wrap_aware() {
        let kafka = 1u64 << 31;
        assert!(sequence_before(5, 6, kafka));
        assert!(!sequence_before(6, 6, kafka));
        assert!(!sequence_before(7, 6, kafka));
        assert!(sequence_before(i32::MAX as u32, 0, kafka));
        assert!(sequence_before(i32::MAX as u32 - 3, 2, kafka));
        assert!(!sequence_before(2, i32::MAX as u32 - 3, kafka));
        let native = 1u64 << 32;
        assert!(sequence_before(u32::MAX, 0, native));
        assert!(!sequence_before(1, 0, native));
    }

    #[test]
    fn a_restored_state_applies_later_entries_exactly_like_the_original() {
        let mut original = history_state();
        let mut restored = StateMachine::from_snapshot(&original.encode_snapshot()).unwrap();
        let snapshot_index = original.applied();

        let from_original = apply_all(&mut original, future());
        let from_restored = apply_all(&mut restored, future());
        assert_eq!(from_original, from_restored);
        // The outcomes are the interesting ones, not a run of rejections.
        assert_eq!(
            from_original[0],
            ApplyOutcome::Duplicate {
                base_offset: Some(3),
                count: 2
            }
        );
        assert_eq!(
            from_original[1],
            ApplyOutcome::Duplicate {
                base_offset: None,
                count: 1
            }
        );
        assert_eq!(
            from_original[2],
            ApplyOutcome::Produced {
                base_offset: 9,
                count: 1
            }
        );
        assert!(matches!(
            from_original[3],
            ApplyOutcome::Rejected(ErrorCode::OutOfOrderSequence, _)
        ));
        assert!(matches!(
            from_original[4],
            ApplyOutcome::Rejected(ErrorCode::FencedProducer, _)
        ));
        assert_eq!(
            from_original[5],
            ApplyOutcome::Produced {
                base_offset: 2,
                count: 1
            }
        );
        assert!(matches!(
            from_original[6],
            ApplyOutcome::Rejected(ErrorCode::UnknownTopic, _)
        ));
        assert_eq!(from_original[7], ApplyOutcome::ProducerId(3));
        assert!(matches!(
            from_original[8],
            ApplyOutcome::Rejected(ErrorCode::TopicExists, _)
        ));
        assert_eq!(from_original[9], ApplyOutcome::TopicCreated);
        assert_eq!(restored.topic("gone").unwrap().id, 4, "ids are not reused");
        assert!(matches!(
            from_original[11],
            ApplyOutcome::Rejected(ErrorCode::OffsetOutOfRange, _)
        ));
        assert_eq!(from_original[12], ApplyOutcome::OffsetsCommitted);

        // Same replicated state; the same queue index wherever both have it (the
        // original also still indexes the entries before the snapshot).
        assert_eq!(original.encode_snapshot(), restored.encode_snapshot());
        original.drop_before(snapshot_index.next());
        assert_eq!(queues(&original), queues(&restored));
        for (group, offsets) in original.group_offsets.iter() {
            assert_eq!(restored.group_offsets(group), Some(offsets));
        }
    }

    #[test]
    fn restarting_from_a_base_snapshot_rebuilds_the_retained_queue_index() {
        // What a restart after retention does: restore the base snapshot at i, replay
        // i+1..; the result must be what the running node has after dropping ..=i.
        let entries: Vec<_> = history().into_iter().chain(future()).collect();
        for base in [0, 1, 6, 11, 15, entries.len() - 1, entries.len()] {
            let mut running = StateMachine::new();
            let mut snapshot = StateMachine::new().encode_snapshot();
            for (i, e) in entries.iter().cloned().enumerate() {
                apply(&mut running, e);
                if i + 1 == base {
                    snapshot = running.encode_snapshot();
                }
            }
            let mut restarted = StateMachine::from_snapshot(&snapshot).unwrap();
            assert_eq!(restarted.applied(), LogIndex(base as u64));
            apply_all(&mut restarted, entries[base..].iter().cloned());
            running.drop_before(LogIndex(base as u64 + 1));
            assert_eq!(queues(&running), queues(&restarted), "base {base}");
            assert_eq!(running.encode_snapshot(), restarted.encode_snapshot());
        }
    }

    #[test]
    fn every_truncation_of_a_payload_is_an_error() {
        let payload = history_state().encode_snapshot();
        for cut in 0..payload.len() {
            assert!(
                StateMachine::from_snapshot(&payload[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = payload.to_vec();
        longer.push(0);
        assert_eq!(
            StateMachine::from_snapshot(&longer).unwrap_err(),
            PayloadError::TrailingBytes(1)
        );
    }

    #[test]
    fn damaged_payloads_never_panic() {
        let payload = history_state().encode_snapshot();
        for at in 0..payload.len() {
            for flip in [0x01, 0x80, 0xFF] {
                let mut damaged = payload.to_vec();
                damaged[at] ^= flip;
                // Either an error or some state; what matters is no panic and, when
                // it decodes, a state that encodes canonically.
                if let Ok(sm) = StateMachine::from_snapshot(&damaged) {
                    assert_eq!(sm.encode_snapshot(), damaged, "flip {flip:#x} at {at}");
                }
            }
        }
    }

    #[test]
    fn huge_counts_fail_without_allocating() {
        let mut payload = BytesMut::new();
        payload.put_u8(SNAPSHOT_VERSION);
        payload.put_u64_le(7);
        payload.put_u32_le(2);
        payload.put_u64_le(1);
        payload.put_u32_le(u32::MAX); // topics
        assert_eq!(
            StateMachine::from_snapshot(&payload).unwrap_err(),
            PayloadError::Truncated("topics")
        );
        payload.truncate(payload.len() - 4);
        payload.put_u32_le(1);
        payload.put_u32_le(1); // topic id
        payload.put_u32_le(u32::MAX); // name length
        payload.put_bytes(0, 16); // enough for the topic count to pass
        assert_eq!(
            StateMachine::from_snapshot(&payload).unwrap_err(),
            PayloadError::Truncated("topic name")
        );
    }

    #[test]
    fn inconsistent_payloads_are_refused() {
        let mut two_named_alike = StateMachine::new();
        apply_all(&mut two_named_alike, [create("x", 1), create("y", 1)]);
        let payload = two_named_alike.encode_snapshot();
        let mut renamed = payload.to_vec();
        let at = renamed.iter().rposition(|&b| b == b'y').unwrap();
        renamed[at] = b'x';
        assert!(matches!(
            StateMachine::from_snapshot(&renamed),
            Err(PayloadError::Inconsistent(_))
        ));
        let mut other_version = payload.to_vec();
        other_version[0] = SNAPSHOT_VERSION + 1;
        assert_eq!(
            StateMachine::from_snapshot(&other_version).unwrap_err(),
            PayloadError::UnknownVersion(SNAPSHOT_VERSION + 1)
        );
    }

    #[test]
    fn topics_spread_over_the_data_groups_and_keep_their_placement_in_snapshots() {
        let mut sm = StateMachine::new();
        let set = Command::SetDataGroups {
            groups: vec![vec![1, 2, 3], vec![2, 3, 1], vec![3, 1, 2]],
        };
        apply_all(&mut sm, [create("before", 2), cmd(set.clone())]);
        assert_eq!(sm.data_groups().len(), 3);
        // A second setting is refused: the number of groups is fixed.
        assert!(matches!(
            apply(&mut sm, cmd(set)),
            ApplyOutcome::Rejected(ErrorCode::InvalidRequest, _)
        ));
        apply_all(&mut sm, [create("after", 4), create("one", 1)]);
        // Topics of before the data groups keep every queue in group 0.
        assert!(sm.topic("before").unwrap().groups.is_empty());
        // Queues go round the groups, each topic one group further on.
        assert_eq!(sm.topic("after").unwrap().groups, vec![3, 1, 2, 3]);
        assert_eq!(sm.topic("one").unwrap().groups, vec![1]);
        // A committed offset of a data-group queue is not checked against this
        // group's (empty) queue; one of group 0 still is.
        assert_eq!(
            apply(&mut sm, commit("g", &[("after", 1, 500)])),
            ApplyOutcome::OffsetsCommitted
        );
        assert!(matches!(
            apply(&mut sm, commit("g", &[("before", 0, 500)])),
            ApplyOutcome::Rejected(ErrorCode::OffsetOutOfRange, _)
        ));
        let payload = sm.encode_snapshot();
        let restored = StateMachine::from_snapshot(&payload).unwrap();
        assert_eq!(restored.encode_snapshot(), payload);
        apply_all(
            &mut sm,
            [
                cmd(Command::AssignReplicas {
                    group: 2,
                    replicas: vec![4, 3, 1],
                }),
                cmd(Command::Decommission { node: 2 }),
            ],
        );
        assert!(matches!(
            apply(
                &mut sm,
                cmd(Command::AssignReplicas {
                    group: 2,
                    replicas: vec![4, 4],
                })
            ),
            ApplyOutcome::Rejected(ErrorCode::InvalidRequest, _)
        ));
        let payload = sm.encode_snapshot();
        let restored = StateMachine::from_snapshot(&payload).unwrap();
        assert_eq!(restored.encode_snapshot(), payload);
        assert_eq!(restored.data_groups().len(), 3);
        let two = &restored.data_groups()[&2];
        assert_eq!(
            (two.replicas.clone(), two.initial.clone()),
            (vec![4, 3, 1], vec![2, 3, 1])
        );
        assert!(restored.decommissioned().contains(&2));
        assert_eq!(restored.topic("after").unwrap().groups, vec![3, 1, 2, 3]);
        assert!(restored.topic("before").unwrap().groups.is_empty());

        // Groups are added after the last one; topics created from then on spread
        // over all of them, and those of before keep their queues where they are.
        let mut sm = restored;
        let add = |groups: Vec<Vec<u64>>| cmd(Command::AddDataGroups { groups });
        assert_eq!(
            apply(&mut sm, add(vec![vec![1, 3, 4], vec![3, 4, 1]])),
            ApplyOutcome::DataGroupsSet
        );
        assert_eq!(sm.data_groups().len(), 5);
        assert_eq!(sm.data_groups()[&5].initial, vec![3, 4, 1]);
        assert_eq!(sm.data_groups()[&5].replicas, vec![3, 4, 1]);
        for bad in [vec![], vec![vec![1, 1]], vec![vec![]]] {
            assert!(matches!(
                apply(&mut sm, add(bad)),
                ApplyOutcome::Rejected(ErrorCode::InvalidRequest, _)
            ));
        }
        apply_all(&mut sm, [create("wide", 5)]);
        let mut wide = sm.topic("wide").unwrap().groups.clone();
        wide.sort_unstable();
        assert_eq!(wide, vec![1, 2, 3, 4, 5]);
        assert_eq!(sm.topic("after").unwrap().groups, vec![3, 1, 2, 3]);
        let payload = sm.encode_snapshot();
        let restored = StateMachine::from_snapshot(&payload).unwrap();
        assert_eq!(restored.encode_snapshot(), payload);
        // A cluster without data groups gets none this way.
        let mut plain = StateMachine::new();
        assert!(matches!(
            apply(&mut plain, add(vec![vec![1, 2, 3]])),
            ApplyOutcome::Rejected(ErrorCode::InvalidRequest, _)
        ));
    }

    #[test]
    fn a_data_group_mirrors_topics_under_the_metadata_groups_ids() {
        let mirror = |id: u32, name: &str, queues: u32| {
            cmd(Command::MirrorTopic {
                id,
                name: name.into(),
                queues,
                retention: TopicRetention::default(),
            })
        };
        let mut sm = StateMachine::new();
        assert_eq!(
            apply(&mut sm, mirror(5, "t", 2)),
            ApplyOutcome::TopicMirrored
        );
        assert_eq!(sm.topic("t").unwrap().id, 5);
        assert_eq!(sm.next_topic_id(), 6);
        // Idempotent: a second mirror of the same id changes nothing.
        assert_eq!(apply(&mut sm, mirror(5, "t", 2)), ApplyOutcome::None);
        apply(&mut sm, produce(5, 1, 3, 0, None));
        assert_eq!(sm.topic("t").unwrap().queues[1].next_offset, 3);
        // The metadata group deleted "t" and created it again: the new id replaces
        // the old topic and its queues start empty.
        assert_eq!(
            apply(&mut sm, mirror(9, "t", 1)),
            ApplyOutcome::TopicMirrored
        );
        let t = sm.topic("t").unwrap();
        assert_eq!((t.id, t.queues.len()), (9, 1));
        assert_eq!(t.queues[0].next_offset, 0);
        assert!(sm.topic_by_id(5).is_none());
        let payload = sm.encode_snapshot();
        let restored = StateMachine::from_snapshot(&payload).unwrap();
        assert_eq!(restored.encode_snapshot(), payload);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            body in prop::collection::vec(any::<u8>(), 0..600),
            versioned in any::<bool>(),
        ) {
            let mut payload = body;
            if versioned {
                payload.insert(0, SNAPSHOT_VERSION);
            }
            if let Ok(sm) = StateMachine::from_snapshot(&payload) {
                prop_assert_eq!(&sm.encode_snapshot()[..], &payload[..]);
            }
        }
    }

    #[test]
    fn drop_before_forgets_the_deleted_entries_batches() {
        let mut sm = StateMachine::new();
        apply_all(
            &mut sm,
            [
                create("t", 2),              // 1
                produce(1, 0, 3, 100, None), // 2: offsets 0..3
                produce(1, 0, 2, 200, None), // 3: offsets 3..5
                cmd(Command::InitProducer),  // 4
                produce(1, 0, 1, 300, None), // 5: offset 5
                produce(1, 1, 4, 50, None),  // 6: queue 1, offsets 0..4
            ],
        );
        let q = |sm: &StateMachine, i: usize| sm.topic("t").unwrap().queues[i].clone();

        sm.drop_before(LogIndex(3));
        let q0 = q(&sm, 0);
        assert_eq!((q0.start_offset, q0.next_offset), (3, 6));
        assert_eq!(
            q0.slots_from(0)[0].base_offset,
            3,
            "gone offsets start at the start"
        );
        assert_eq!(q0.slots_from(4)[0].base_offset, 3);
        assert_eq!(q0.offset_for_timestamp(0), 3);
        assert_eq!(q0.offset_for_timestamp(250), 5);
        assert_eq!(q(&sm, 1).start_offset, 0, "queue 1 keeps everything");

        // Dropping less than before changes nothing.
        sm.drop_before(LogIndex(2));
        assert_eq!(q(&sm, 0).start_offset, 3);

        sm.drop_before(LogIndex(6));
        let q0 = q(&sm, 0);
        assert_eq!((q0.start_offset, q0.next_offset), (6, 6));
        assert!(q0.slots_from(0).is_empty());
        assert_eq!(q0.offset_for_timestamp(0), 6);
        assert_eq!(q(&sm, 1).start_offset, 0);

        sm.drop_before(LogIndex(7));
        assert_eq!((q(&sm, 1).start_offset, q(&sm, 1).next_offset), (4, 4));

        // New batches continue after the dropped ones; the start stays.
        assert_eq!(
            apply(&mut sm, produce(1, 0, 2, 400, None)),
            ApplyOutcome::Produced {
                base_offset: 6,
                count: 2
            }
        );
        let q0 = q(&sm, 0);
        assert_eq!((q0.start_offset, q0.next_offset), (6, 8));
        assert_eq!(q0.slots_from(6)[0].entry_index, LogIndex(7));
    }

    #[test]
    fn drop_before_returns_the_memory_of_a_large_prefix() {
        let mut sm = StateMachine::new();
        apply(&mut sm, create("t", 1));
        let entries: Vec<_> = (0..1_000).map(|_| produce(1, 0, 1, 0, None)).collect();
        apply_all(&mut sm, entries);
        sm.drop_before(LogIndex(995));
        let q = &sm.topic("t").unwrap().queues[0];
        assert_eq!(q.slots.len(), 7);
        assert!(q.slots.capacity() < 100);
        assert_eq!((q.start_offset, q.next_offset), (993, 1_000));
    }

    #[test]
    fn topic_retention_expires_old_and_excess_batches_and_survives_a_snapshot() {
        let mut sm = StateMachine::new();
        apply_all(
            &mut sm,
            [
                cmd(Command::CreateTopic {
                    name: "short".into(),
                    queues: 1,
                    retention: TopicRetention {
                        ms: 1_000,
                        bytes: 0,
                    },
                }), // 1
                create("long", 1),              // 2
                produce(1, 0, 2, 1_000, None),  // 3: short 0..2, old
                produce(2, 0, 2, 1_000, None),  // 4: long 0..2, old
                produce(1, 0, 2, 10_000, None), // 5: short 2..4, recent
            ],
        );
        assert_eq!(sm.first_retained_entry(), Some(LogIndex(3)));
        assert_eq!(sm.expire(10_500), 1, "only the short topic's old batch");
        let short = &sm.topic("short").unwrap().queues[0];
        assert_eq!((short.start_offset, short.next_offset), (2, 4));
        assert_eq!(sm.topic("long").unwrap().queues[0].start_offset, 0);
        // The long topic's batch at entry 4 is now the oldest stored.
        assert_eq!(sm.first_retained_entry(), Some(LogIndex(4)));

        // By size: keep at most one batch's worth.
        let one_batch = sm.topic("short").unwrap().queues[0].retained_bytes;
        let restored = StateMachine::from_snapshot(&sm.encode_snapshot()).unwrap();
        assert_eq!(
            restored.topic("short").unwrap().retention,
            TopicRetention {
                ms: 1_000,
                bytes: 0
            }
        );
        let mut sm2 = StateMachine::new();
        apply_all(
            &mut sm2,
            [
                cmd(Command::CreateTopic {
                    name: "small".into(),
                    queues: 1,
                    retention: TopicRetention {
                        ms: 0,
                        bytes: one_batch,
                    },
                }),
                produce(1, 0, 2, 10_000, None),
                produce(1, 0, 2, 10_000, None),
                produce(1, 0, 2, 10_000, None),
            ],
        );
        assert_eq!(sm2.expire(0), 2);
        let small = &sm2.topic("small").unwrap().queues[0];
        assert_eq!((small.start_offset, small.next_offset), (4, 6));
        assert_eq!(small.retained_bytes, one_batch);
        assert_eq!(sm2.expire(0), 0, "nothing more while within the limit");
    }
}
