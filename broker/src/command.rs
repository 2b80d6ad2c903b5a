//! The bodies of the broker's own log entries: the header in front of a record batch
//! (`EntryKind::Messages`) and the state-machine commands (`EntryKind::Command`).
//!
//! Both are small hand-written little-endian layouts with a version byte, so that the
//! record batch the producer sent is stored byte for byte right after a fixed header
//! and can be handed to consumers as a slice.
//!
//! ## Messages entry body
//!
//! | offset | size | field    | notes                                   |
//! |-------:|-----:|----------|-----------------------------------------|
//! | 0      | 1    | version  | `1`                                     |
//! | 1      | 4    | topic_id | stable id assigned when the topic was created |
//! | 5      | 4    | queue    | queue number within the topic           |
//! | 9      | ..   | batch    | the record batch, exactly as produced   |
//!
//! ## Command entry body
//!
//! | offset | size | field   | notes |
//! |-------:|-----:|---------|-------|
//! | 0      | 1    | version | `1` |
//! | 1      | 1    | op      | see [`Command`] |
//! | 2      | ..   | payload | strings are `u16` length + UTF-8; numbers little-endian |

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Version byte of both layouts.
const VERSION: u8 = 1;

/// Bytes in front of the record batch in a `Messages` entry.
pub const MESSAGES_HEADER_BYTES: usize = 9;

/// Builds the body of a `Messages` entry: header, then the batch as it came.
pub fn encode_messages(topic_id: u32, queue: u32, batch: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(MESSAGES_HEADER_BYTES + batch.len());
    buf.put_u8(VERSION);
    buf.put_u32_le(topic_id);
    buf.put_u32_le(queue);
    buf.put_slice(batch);
    buf.freeze()
}

/// A `Messages` entry body split into its header fields and the batch (zero-copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessagesEntry {
    /// The topic's stable id.
    pub topic_id: u32,
    /// The queue within the topic.
    pub queue: u32,
    /// The record batch, a slice of the entry body.
    pub batch: Bytes,
}

/// Why an entry body could not be decoded. Entries passed Raft's CRC checks, so this
/// means a bug or a newer version wrote them.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    /// Fewer bytes than the layout needs.
    #[error("entry body truncated")]
    Truncated,
    /// A version byte this broker does not know.
    #[error("unknown entry body version {0}")]
    UnknownVersion(u8),
    /// An op code this broker does not know.
    #[error("unknown command op {0}")]
    UnknownOp(u8),
    /// A string field is not UTF-8.
    #[error("command string is not UTF-8")]
    NotUtf8,
}

/// Splits a `Messages` entry body.
pub fn decode_messages(body: &Bytes) -> Result<MessagesEntry, CommandError> {
    if body.len() < MESSAGES_HEADER_BYTES {
        return Err(CommandError::Truncated);
    }
    if body[0] != VERSION {
        return Err(CommandError::UnknownVersion(body[0]));
    }
    let mut header = &body[1..MESSAGES_HEADER_BYTES];
    let topic_id = header.get_u32_le();
    let queue = header.get_u32_le();
    Ok(MessagesEntry {
        topic_id,
        queue,
        batch: body.slice(MESSAGES_HEADER_BYTES..),
    })
}

/// One committed offset of a consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    /// Topic name.
    pub topic: String,
    /// Queue within the topic.
    pub queue: u32,
    /// The next offset the group will consume.
    pub offset: u64,
}

/// A topic's own retention, on top of the broker's (0: not set). Shorter than the
/// broker's to matter: the shared log keeps nothing longer than the broker-wide
/// policy allows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicRetention {
    /// Messages older than this (by their batch's largest timestamp) are deleted.
    pub ms: u64,
    /// The oldest batches of a queue are deleted while it holds more than this.
    pub bytes: u64,
}

impl TopicRetention {
    /// Whether either limit is set.
    pub fn is_set(&self) -> bool {
        self.ms > 0 || self.bytes > 0
    }
}

/// A state-machine command, replicated as a `Command` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// op 1: create a topic (its id is assigned when applied).
    CreateTopic {
        /// Topic name.
        name: String,
        /// Number of queues.
        queues: u32,
        /// The topic's own retention (encoded after `queues`; absent in entries
        /// written before it existed, which decode as no topic retention).
        retention: TopicRetention,
    },
    /// op 2: delete a topic and its queues.
    DeleteTopic {
        /// Topic name.
        name: String,
        /// Also forget every consumer group's committed offsets of the topic, so
        /// that a topic created again under the name is read from its start (as
        /// Kafka does). Encoded after `name` as one byte; entries written before it
        /// existed decode as `false` and replay as they applied then.
        drop_offsets: bool,
    },
    /// op 3: allocate a producer id for an idempotent producer.
    InitProducer,
    /// op 4: store a consumer group's offsets (several queues at once).
    CommitOffsets {
        /// Group name.
        group: String,
        /// What to store.
        offsets: Vec<CommittedOffset>,
    },
    /// op 5 (metadata group): the cluster runs data groups 1..=N with these replicas
    /// (preferred leader first); topics created from now on spread their queues over
    /// them. Set once.
    SetDataGroups {
        /// Each group's first replicas (node ids), group 1 first.
        groups: Vec<Vec<u64>>,
    },
    /// op 14 (metadata group): the cluster adds data groups after its last one
    /// (N+1, N+2, ...) with these replicas (preferred leader first); topics created
    /// from then on spread their queues over every group. Topics that exist keep
    /// their queues where they are.
    AddDataGroups {
        /// Each new group's first replicas (node ids), in group-id order.
        groups: Vec<Vec<u64>>,
    },
    /// op 7 (metadata group): data group `group` is to live on these replicas
    /// (preferred leader first); its leader moves its membership there.
    AssignReplicas {
        /// The data group.
        group: u32,
        /// Its replicas (node ids).
        replicas: Vec<u64>,
    },
    /// op 8 (metadata group): no data-group replica is placed on `node` any more;
    /// those it holds move away.
    Decommission {
        /// The node.
        node: u64,
    },
    /// op 16 (metadata group): `node` is no longer decommissioned: a new data
    /// directory joins with its id, and replicas may be placed on it again.
    Recommission {
        /// The node.
        node: u64,
    },
    /// op 9 (metadata group): `node` serves the Kafka protocol at `kafka_address`.
    SetListeners {
        /// The node.
        node: u64,
        /// HOST:PORT.
        kafka_address: String,
    },
    /// op 15 (metadata group): `node` is in failure domain `rack` (empty: none);
    /// data-group replicas and metadata voters spread over racks.
    SetRack {
        /// The node.
        node: u64,
        /// The rack (or zone) it named with `--rack`.
        rack: String,
    },
    /// op 10 (metadata group): creates user `name` or replaces its credentials.
    UpsertUser {
        /// The user.
        name: String,
        /// One SCRAM credential per mechanism (never a password).
        credentials: Vec<raftmq_proto::scram::ScramCredential>,
    },
    /// op 11 (metadata group): deletes user `name`.
    DeleteUser {
        /// The user.
        name: String,
    },
    /// op 12 (metadata group): adds ACLs.
    CreateAcls {
        /// The bindings.
        bindings: Vec<crate::security::acl::AclBinding>,
    },
    /// op 13 (metadata group): removes ACLs (those that exist).
    DeleteAcls {
        /// The bindings.
        bindings: Vec<crate::security::acl::AclBinding>,
    },
    /// op 6 (data group): the metadata group holds topic `id`; this group takes its
    /// batches from now on. Replaces an older topic of the same name; does nothing
    /// if the topic is already there.
    MirrorTopic {
        /// The id the metadata group assigned.
        id: u32,
        /// Topic name.
        name: String,
        /// Number of queues.
        queues: u32,
        /// The topic's own retention.
        retention: TopicRetention,
    },
}

fn put_str(buf: &mut BytesMut, s: &str) {
    let len = u16::try_from(s.len()).expect("command strings are validated to fit u16");
    buf.put_u16_le(len);
    buf.put_slice(s.as_bytes());
}

fn get_str(buf: &mut &[u8]) -> Result<String, CommandError> {
    if buf.remaining() < 2 {
        return Err(CommandError::Truncated);
    }
    let len = buf.get_u16_le() as usize;
    if buf.remaining() < len {
        return Err(CommandError::Truncated);
    }
    let s = std::str::from_utf8(&buf[..len])
        .map_err(|_| CommandError::NotUtf8)?
        .to_string();
    buf.advance(len);
    Ok(s)
}

fn get_u32(buf: &mut &[u8]) -> Result<u32, CommandError> {
    if buf.remaining() < 4 {
        return Err(CommandError::Truncated);
    }
    Ok(buf.get_u32_le())
}

fn get_u64(buf: &mut &[u8]) -> Result<u64, CommandError> {
    if buf.remaining() < 8 {
        return Err(CommandError::Truncated);
    }
    Ok(buf.get_u64_le())
}

fn put_ids(buf: &mut BytesMut, ids: &[u64]) {
    buf.put_u32_le(ids.len() as u32);
    for id in ids {
        buf.put_u64_le(*id);
    }
}

fn get_ids(buf: &mut &[u8]) -> Result<Vec<u64>, CommandError> {
    let n = get_u32(buf)? as usize;
    let mut ids = Vec::with_capacity(n.min(buf.remaining() / 8));
    for _ in 0..n {
        ids.push(get_u64(buf)?);
    }
    Ok(ids)
}

impl Command {
    /// Encodes the command as an entry body.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(64);
        buf.put_u8(VERSION);
        match self {
            Command::CreateTopic {
                name,
                queues,
                retention,
            } => {
                buf.put_u8(1);
                put_str(&mut buf, name);
                buf.put_u32_le(*queues);
                buf.put_u64_le(retention.ms);
                buf.put_u64_le(retention.bytes);
            }
            Command::DeleteTopic { name, drop_offsets } => {
                buf.put_u8(2);
                put_str(&mut buf, name);
                buf.put_u8(u8::from(*drop_offsets));
            }
            Command::InitProducer => buf.put_u8(3),
            Command::CommitOffsets { group, offsets } => {
                buf.put_u8(4);
                put_str(&mut buf, group);
                buf.put_u32_le(offsets.len() as u32);
                for o in offsets {
                    put_str(&mut buf, &o.topic);
                    buf.put_u32_le(o.queue);
                    buf.put_u64_le(o.offset);
                }
            }
            Command::SetDataGroups { groups } => {
                buf.put_u8(5);
                buf.put_u32_le(groups.len() as u32);
                for replicas in groups {
                    put_ids(&mut buf, replicas);
                }
            }
            Command::AddDataGroups { groups } => {
                buf.put_u8(14);
                buf.put_u32_le(groups.len() as u32);
                for replicas in groups {
                    put_ids(&mut buf, replicas);
                }
            }
            Command::AssignReplicas { group, replicas } => {
                buf.put_u8(7);
                buf.put_u32_le(*group);
                put_ids(&mut buf, replicas);
            }
            Command::Decommission { node } => {
                buf.put_u8(8);
                buf.put_u64_le(*node);
            }
            Command::SetListeners {
                node,
                kafka_address,
            } => {
                buf.put_u8(9);
                buf.put_u64_le(*node);
                put_str(&mut buf, kafka_address);
            }
            Command::Recommission { node } => {
                buf.put_u8(16);
                buf.put_u64_le(*node);
            }
            Command::SetRack { node, rack } => {
                buf.put_u8(15);
                buf.put_u64_le(*node);
                put_str(&mut buf, rack);
            }
            Command::UpsertUser { name, credentials } => {
                buf.put_u8(10);
                put_str(&mut buf, name);
                crate::security::users::encode_credentials(&mut buf, credentials);
            }
            Command::DeleteUser { name } => {
                buf.put_u8(11);
                put_str(&mut buf, name);
            }
            Command::CreateAcls { bindings } => {
                buf.put_u8(12);
                crate::security::acl::encode_bindings(&mut buf, bindings.iter());
            }
            Command::DeleteAcls { bindings } => {
                buf.put_u8(13);
                crate::security::acl::encode_bindings(&mut buf, bindings.iter());
            }
            Command::MirrorTopic {
                id,
                name,
                queues,
                retention,
            } => {
                buf.put_u8(6);
                buf.put_u32_le(*id);
                put_str(&mut buf, name);
                buf.put_u32_le(*queues);
                buf.put_u64_le(retention.ms);
                buf.put_u64_le(retention.bytes);
            }
        }
        buf.freeze()
    }

    /// Decodes an entry body.
    pub fn decode(body: &[u8]) -> Result<Command, CommandError> {
        let mut buf = body;
        if buf.remaining() < 2 {
            return Err(CommandError::Truncated);
        }
        let version = buf.get_u8();
        if version != VERSION {
            return Err(CommandError::UnknownVersion(version));
        }
        let op = buf.get_u8();
        let command = match op {
            1 => {
                let name = get_str(&mut buf)?;
                let queues = get_u32(&mut buf)?;
                let retention = if buf.has_remaining() {
                    TopicRetention {
                        ms: get_u64(&mut buf)?,
                        bytes: get_u64(&mut buf)?,
                    }
                } else {
                    TopicRetention::default()
                };
                Command::CreateTopic {
                    name,
                    queues,
                    retention,
                }
            }
            2 => Command::DeleteTopic {
                name: get_str(&mut buf)?,
                drop_offsets: buf.has_remaining() && buf.get_u8() != 0,
            },
            3 => Command::InitProducer,
            4 => {
                let group = get_str(&mut buf)?;
                let count = get_u32(&mut buf)? as usize;
                // Each offset takes at least 14 bytes: bound the allocation by the input.
                let mut offsets = Vec::with_capacity(count.min(buf.remaining() / 14));
                for _ in 0..count {
                    offsets.push(CommittedOffset {
                        topic: get_str(&mut buf)?,
                        queue: get_u32(&mut buf)?,
                        offset: get_u64(&mut buf)?,
                    });
                }
                Command::CommitOffsets { group, offsets }
            }
            5 | 14 => {
                let n = get_u32(&mut buf)? as usize;
                let mut groups = Vec::with_capacity(n.min(buf.remaining() / 4));
                for _ in 0..n {
                    groups.push(get_ids(&mut buf)?);
                }
                if op == 5 {
                    Command::SetDataGroups { groups }
                } else {
                    Command::AddDataGroups { groups }
                }
            }
            7 => Command::AssignReplicas {
                group: get_u32(&mut buf)?,
                replicas: get_ids(&mut buf)?,
            },
            8 => Command::Decommission {
                node: get_u64(&mut buf)?,
            },
            9 => Command::SetListeners {
                node: get_u64(&mut buf)?,
                kafka_address: get_str(&mut buf)?,
            },
            16 => Command::Recommission {
                node: get_u64(&mut buf)?,
            },
            15 => Command::SetRack {
                node: get_u64(&mut buf)?,
                rack: get_str(&mut buf)?,
            },
            6 => Command::MirrorTopic {
                id: get_u32(&mut buf)?,
                name: get_str(&mut buf)?,
                queues: get_u32(&mut buf)?,
                retention: TopicRetention {
                    ms: get_u64(&mut buf)?,
                    bytes: get_u64(&mut buf)?,
                },
            },
            10 => Command::UpsertUser {
                name: get_str(&mut buf)?,
                credentials: crate::security::users::decode_credentials(&mut buf)
                    .ok_or(CommandError::Truncated)?,
            },
            11 => Command::DeleteUser {
                name: get_str(&mut buf)?,
            },
            12 => Command::CreateAcls {
                bindings: crate::security::acl::decode_bindings(&mut buf)
                    .ok_or(CommandError::Truncated)?,
            },
            13 => Command::DeleteAcls {
                bindings: crate::security::acl::decode_bindings(&mut buf)
                    .ok_or(CommandError::Truncated)?,
            },
            op => return Err(CommandError::UnknownOp(op)),
        };
        Ok(command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_round_trips() {
        let commands = [
            Command::CreateTopic {
                name: "orders".into(),
                queues: 8,
                retention: TopicRetention {
                    ms: 60_000,
                    bytes: 1 << 20,
                },
            },
            Command::CreateTopic {
                name: "plain".into(),
                queues: 1,
                retention: TopicRetention::default(),
            },
            Command::DeleteTopic {
                name: "orders".into(),
                drop_offsets: true,
            },
            Command::DeleteTopic {
                name: "kept".into(),
                drop_offsets: false,
            },
            Command::InitProducer,
            Command::SetDataGroups {
                groups: vec![vec![1, 2, 3], vec![2, 3, 1]],
            },
            Command::AddDataGroups {
                groups: vec![vec![3, 1, 2]],
            },
            Command::AssignReplicas {
                group: 2,
                replicas: vec![4, 3, 1],
            },
            Command::Decommission { node: 2 },
            Command::Recommission { node: 2 },
            Command::SetListeners {
                node: 3,
                kafka_address: "10.0.0.3:9092".into(),
            },
            Command::SetRack {
                node: 3,
                rack: "eu-west-1b".into(),
            },
            Command::UpsertUser {
                name: "alice".into(),
                credentials: crate::security::users::derive_all("pw", 0).unwrap(),
            },
            Command::DeleteUser {
                name: "alice".into(),
            },
            Command::CreateAcls {
                bindings: vec![crate::security::acl::AclBinding {
                    principal: "User:alice".into(),
                    resource: crate::security::acl::ResourceType::Topic,
                    name: "orders".into(),
                    prefixed: true,
                    operation: crate::security::acl::Operation::Produce,
                    deny: false,
                }],
            },
            Command::DeleteAcls { bindings: vec![] },
            Command::MirrorTopic {
                id: 7,
                name: "orders".into(),
                queues: 16,
                retention: TopicRetention { ms: 5, bytes: 6 },
            },
            Command::CommitOffsets {
                group: "g".into(),
                offsets: vec![CommittedOffset {
                    topic: "orders".into(),
                    queue: 3,
                    offset: 42,
                }],
            },
        ];
        for command in commands {
            assert_eq!(Command::decode(&command.encode()), Ok(command));
        }
    }

    #[test]
    fn a_create_topic_written_without_retention_decodes_with_none() {
        let mut body = Command::CreateTopic {
            name: "old".into(),
            queues: 2,
            retention: TopicRetention::default(),
        }
        .encode()
        .to_vec();
        body.truncate(body.len() - 16);
        let Command::CreateTopic { retention, .. } = Command::decode(&body).unwrap() else {
            panic!("not a create");
        };
        assert!(!retention.is_set());
    }

    #[test]
    fn a_delete_topic_written_before_offsets_were_dropped_decodes_keeping_them() {
        let mut body = Command::DeleteTopic {
            name: "old".into(),
            drop_offsets: true,
        }
        .encode()
        .to_vec();
        body.truncate(body.len() - 1);
        assert_eq!(
            Command::decode(&body).unwrap(),
            Command::DeleteTopic {
                name: "old".into(),
                drop_offsets: false
            }
        );
    }

    #[test]
    fn every_truncation_of_a_command_is_an_error_not_a_panic() {
        let body = Command::CommitOffsets {
            group: "group".into(),
            offsets: vec![CommittedOffset {
                topic: "t".into(),
                queue: 1,
                offset: 2,
            }],
        }
        .encode();
        for cut in 0..body.len() {
            assert!(Command::decode(&body[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn messages_header_keeps_the_batch_bytes_as_they_came() {
        let body = encode_messages(7, 3, b"batch-bytes");
        let entry = decode_messages(&body).unwrap();
        assert_eq!((entry.topic_id, entry.queue), (7, 3));
        assert_eq!(&entry.batch[..], b"batch-bytes");
    }
}
