//! The replicated state machine: what committed log entries mean.
//!
//! Every node applies the same committed entries in the same order and so reaches the
//! same state: topics and their ids, each queue's index (which log entry holds which
//! offsets), producer sessions (for idempotent produce) and consumer-group offsets.
//! Deterministic by construction: no clock, no randomness, `BTreeMap` everywhere.
//! It is rebuilt on start by replaying the committed log.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use raftmq_proto::batch::BatchHeader;
use raftmq_proto::pb::ErrorCode;
use raftmq_store::{Entry, EntryKind, LogIndex};

use crate::command::{decode_messages, Command, CommittedOffset};

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
#[derive(Debug, Default, Clone)]
pub struct QueueState {
    slots: Vec<QueueSlot>,
    /// First offset still stored.
    pub start_offset: u64,
    /// Offset the next committed message gets (the high watermark).
    pub next_offset: u64,
}

impl QueueState {
    /// Slots holding offsets at or after `offset`, starting with the one containing it.
    pub fn slots_from(&self, offset: u64) -> &[QueueSlot] {
        // First slot whose end is beyond `offset`.
        let i = self
            .slots
            .partition_point(|s| s.base_offset + u64::from(s.count) <= offset);
        &self.slots[i..]
    }

    /// The first offset whose batch has a timestamp at or after `ts_ms` (or the end).
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
}

#[derive(Debug, Default, Clone)]
struct SequenceState {
    epoch: u16,
    next_sequence: u32,
    /// (base sequence, count, base offset) of the latest batches.
    recent: VecDeque<(u32, u32, u64)>,
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
            EntryKind::Messages => self.apply_messages(entry.index, &entry.body),
            EntryKind::Command => match Command::decode(&entry.body) {
                Ok(command) => self.apply_command(command),
                Err(e) => ApplyOutcome::Rejected(ErrorCode::InvalidRequest, e.to_string()),
            },
        }
    }

    fn apply_command(&mut self, command: Command) -> ApplyOutcome {
        match command {
            Command::CreateTopic { name, queues } => {
                if self.topic_ids.contains_key(&name) {
                    return ApplyOutcome::Rejected(
                        ErrorCode::TopicExists,
                        format!("topic {name:?} exists"),
                    );
                }
                let id = self.next_topic_id;
                self.next_topic_id += 1;
                self.topic_ids.insert(name.clone(), id);
                let queues = (0..queues).map(|_| QueueState::default()).collect();
                self.topics.insert(id, Topic { id, name, queues });
                ApplyOutcome::TopicCreated
            }
            Command::DeleteTopic { name } => match self.topic_ids.remove(&name) {
                Some(id) => {
                    self.topics.remove(&id);
                    self.sequences.retain(|(_, topic, _), _| *topic != id);
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
            if o.offset > queue.next_offset {
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
        let header = match BatchHeader::parse(&entry.batch) {
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
            let session = self.sequences.entry(key).or_default();
            let fresh = session.recent.is_empty() && session.next_sequence == 0;
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
            } else if !fresh && header.base_sequence != session.next_sequence {
                if header.base_sequence < session.next_sequence {
                    let base_offset = session
                        .recent
                        .iter()
                        .find(|(seq, n, _)| *seq == header.base_sequence && *n == count)
                        .map(|(_, _, offset)| *offset);
                    return ApplyOutcome::Duplicate { base_offset, count };
                }
                return ApplyOutcome::Rejected(
                    ErrorCode::OutOfOrderSequence,
                    format!(
                        "expected sequence {}, got {}",
                        session.next_sequence, header.base_sequence
                    ),
                );
            }
            session.next_sequence = header.base_sequence.wrapping_add(count);
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
        ApplyOutcome::Produced { base_offset, count }
    }
}
