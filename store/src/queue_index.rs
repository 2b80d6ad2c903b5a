//! The queue index (RocketMQ's ConsumeQueue): for one (topic, queue), fixed-width
//! slots mapping message offsets to the log entry holding them.
//!
//! Built by the broker from committed entries only, so it is derived data: a damaged
//! file is reported ([`QueueRecovery::discarded`]) and emptied, never trusted, and the
//! broker rebuilds it by replaying the log ([`QueueIndex::append`] is idempotent for
//! slots it already holds).
//!
//! Files in the queue's directory:
//!
//! `slots` — append-only array of 40-byte slots, little-endian:
//!
//! | offset | size | field              | meaning                                       |
//! |-------:|-----:|--------------------|-----------------------------------------------|
//! | 0      | 8    | `base_offset`      | offset of the first message of the batch      |
//! | 8      | 8    | `entry_index`      | [`LogIndex`] of the log entry holding it      |
//! | 16     | 4    | `count`            | messages in the batch (> 0)                   |
//! | 20     | 4    | `bytes`            | size of the batch                             |
//! | 24     | 8    | `max_timestamp_ms` | largest message timestamp in the batch        |
//! | 32     | 4    | `crc`              | CRC-32 of bytes 0..32 and 36..40              |
//! | 36     | 4    | `magic`            | `0x51514D52` (`R`, `M`, `Q`, `Q`)             |
//!
//! `checkpoint` — 40 bytes, replaced atomically by [`QueueIndex::checkpoint`]:
//! magic `u32` (`0x43514D52`), version `u32` (1), `start_offset u64` (first offset
//! still indexed), `synced_next_offset u64` (every slot below it was synced when the
//! checkpoint was written), `floor_entry u64` (last entry index dropped by retention),
//! CRC-32 `u32` of the other bytes, reserved `u32`.
//!
//! On open, slots are validated one by one (CRC, magic, contiguous offsets, increasing
//! entry indexes). An invalid slot past `synced_next_offset` is a torn tail: the file
//! is cut there durably. An invalid slot (or a missing one) below it means the file is
//! damaged: everything is discarded.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::durability;
use crate::error::StoreError;
use crate::le::{u32_at, u64_at};
use crate::types::LogIndex;

const SLOTS_FILE: &str = "slots";
const CHECKPOINT_FILE: &str = "checkpoint";
const SLOT_MAGIC: u32 = 0x5151_4D52;
const CHECKPOINT_MAGIC: u32 = 0x4351_4D52;
const CHECKPOINT_VERSION: u32 = 1;
/// Size of one persisted slot.
pub const QUEUE_SLOT_BYTES: usize = 40;
const CHECKPOINT_BYTES: usize = 40;

/// One batch of messages of a queue, as indexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSlot {
    /// Offset of the batch's first message.
    pub base_offset: u64,
    /// The log entry holding the batch.
    pub entry_index: LogIndex,
    /// Number of messages (at least 1).
    pub count: u32,
    /// Size of the batch in bytes.
    pub bytes: u32,
    /// Largest message timestamp in the batch (milliseconds since the epoch).
    pub max_timestamp_ms: i64,
}

impl QueueSlot {
    /// Offset just past the batch.
    pub fn end_offset(&self) -> u64 {
        self.base_offset + u64::from(self.count)
    }

    fn encode(&self) -> [u8; QUEUE_SLOT_BYTES] {
        let mut b = [0u8; QUEUE_SLOT_BYTES];
        b[0..8].copy_from_slice(&self.base_offset.to_le_bytes());
        b[8..16].copy_from_slice(&self.entry_index.0.to_le_bytes());
        b[16..20].copy_from_slice(&self.count.to_le_bytes());
        b[20..24].copy_from_slice(&self.bytes.to_le_bytes());
        b[24..32].copy_from_slice(&self.max_timestamp_ms.to_le_bytes());
        b[36..40].copy_from_slice(&SLOT_MAGIC.to_le_bytes());
        let crc = slot_crc(&b);
        b[32..36].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<QueueSlot> {
        if b.len() < QUEUE_SLOT_BYTES || u32_at(b, 36) != SLOT_MAGIC || u32_at(b, 32) != slot_crc(b)
        {
            return None;
        }
        let slot = QueueSlot {
            base_offset: u64_at(b, 0),
            entry_index: LogIndex(u64_at(b, 8)),
            count: u32_at(b, 16),
            bytes: u32_at(b, 20),
            max_timestamp_ms: u64_at(b, 24) as i64,
        };
        (slot.count > 0).then_some(slot)
    }
}

fn slot_crc(b: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&b[0..32]);
    h.update(&b[36..40]);
    h.finalize()
}

/// The checkpoint's content.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Checkpoint {
    start_offset: u64,
    synced_next_offset: u64,
    floor_entry: LogIndex,
}

impl Checkpoint {
    fn encode(&self) -> [u8; CHECKPOINT_BYTES] {
        let mut b = [0u8; CHECKPOINT_BYTES];
        b[0..4].copy_from_slice(&CHECKPOINT_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&CHECKPOINT_VERSION.to_le_bytes());
        b[8..16].copy_from_slice(&self.start_offset.to_le_bytes());
        b[16..24].copy_from_slice(&self.synced_next_offset.to_le_bytes());
        b[24..32].copy_from_slice(&self.floor_entry.0.to_le_bytes());
        let crc = crc32fast::hash(&b[0..32]);
        b[32..36].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Checkpoint> {
        if b.len() != CHECKPOINT_BYTES
            || u32_at(b, 0) != CHECKPOINT_MAGIC
            || u32_at(b, 4) != CHECKPOINT_VERSION
            || u32_at(b, 32) != crc32fast::hash(&b[0..32])
        {
            return None;
        }
        Some(Checkpoint {
            start_offset: u64_at(b, 8),
            synced_next_offset: u64_at(b, 16),
            floor_entry: LogIndex(u64_at(b, 24)),
        })
    }
}

/// What opening a queue index found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueRecovery {
    /// Valid slots loaded.
    pub slots: usize,
    /// Bytes of a torn tail cut from the slots file.
    pub torn_bytes_cut: u64,
    /// Set when the files were damaged and everything was discarded: the broker must
    /// rebuild this queue from the log.
    pub discarded: Option<String>,
}

/// One (topic, queue)'s index. See the module documentation.
#[derive(Debug)]
pub struct QueueIndex {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    /// Live slots, contiguous in offsets, increasing in entry index.
    slots: Vec<QueueSlot>,
    /// `prefix_max_ts[k]` = max of `max_timestamp_ms` over `slots[..=k]` (monotone,
    /// so seeking by time is a binary search even if timestamps go backwards).
    prefix_max_ts: Vec<i64>,
    checkpoint: Checkpoint,
    recovery: QueueRecovery,
}

impl QueueIndex {
    /// Opens (or creates) the queue index in `dir`, validating it (see
    /// [`QueueIndex::recovery`] for what was found).
    pub fn open(dir: &Path) -> Result<QueueIndex, StoreError> {
        fs::create_dir_all(dir).map_err(|e| StoreError::io("create directory", dir, e))?;
        let path = dir.join(SLOTS_FILE);
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::io("open queue index", &path, e))?;
        if !existed {
            durability::sync_dir(dir)?;
        }
        let mut index = QueueIndex {
            dir: dir.to_path_buf(),
            path,
            file,
            slots: Vec::new(),
            prefix_max_ts: Vec::new(),
            checkpoint: Checkpoint::default(),
            recovery: QueueRecovery::default(),
        };
        index.load()?;
        Ok(index)
    }

    fn load(&mut self) -> Result<(), StoreError> {
        let checkpoint = match fs::read(self.dir.join(CHECKPOINT_FILE)) {
            Ok(bytes) => Checkpoint::decode(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(Checkpoint::default()),
            Err(e) => return Err(StoreError::io("read", self.dir.join(CHECKPOINT_FILE), e)),
        };
        let Some(checkpoint) = checkpoint else {
            return self.discard("checkpoint damaged");
        };
        self.checkpoint = checkpoint;
        let bytes = fs::read(&self.path).map_err(|e| StoreError::io("read", &self.path, e))?;
        let mut valid_len = 0usize;
        for raw in bytes.chunks(QUEUE_SLOT_BYTES) {
            let Some(slot) = QueueSlot::decode(raw) else {
                break;
            };
            if let Some(prev) = self.slots.last() {
                if slot.base_offset != prev.end_offset() || slot.entry_index <= prev.entry_index {
                    break;
                }
            }
            self.push(slot);
            valid_len += QUEUE_SLOT_BYTES;
        }
        let next = self.next_offset();
        if next < checkpoint.synced_next_offset || self.start_offset() < checkpoint.start_offset {
            return self.discard("slots below the checkpoint are missing or damaged");
        }
        if valid_len < bytes.len() {
            self.recovery.torn_bytes_cut = (bytes.len() - valid_len) as u64;
            tracing::warn!(path = %self.path.display(), bytes = bytes.len() - valid_len, "cut torn queue index tail");
            durability::set_len(&self.file, &self.path, valid_len as u64)?;
        }
        self.recovery.slots = self.slots.len();
        Ok(())
    }

    /// Empties both files durably and records why.
    fn discard(&mut self, reason: &str) -> Result<(), StoreError> {
        tracing::error!(path = %self.path.display(), reason, "discarding damaged queue index");
        self.slots.clear();
        self.prefix_max_ts.clear();
        self.checkpoint = Checkpoint::default();
        durability::write_file_atomic(&self.dir, CHECKPOINT_FILE, &self.checkpoint.encode())?;
        durability::set_len(&self.file, &self.path, 0)?;
        self.recovery = QueueRecovery {
            discarded: Some(reason.to_string()),
            ..QueueRecovery::default()
        };
        Ok(())
    }

    fn push(&mut self, slot: QueueSlot) {
        let max = self
            .prefix_max_ts
            .last()
            .map_or(slot.max_timestamp_ms, |&m| m.max(slot.max_timestamp_ms));
        self.slots.push(slot);
        self.prefix_max_ts.push(max);
    }

    /// What opening found.
    pub fn recovery(&self) -> &QueueRecovery {
        &self.recovery
    }

    /// The first offset still indexed.
    pub fn start_offset(&self) -> u64 {
        self.slots
            .first()
            .map_or(self.checkpoint.start_offset, |s| s.base_offset)
    }

    /// The offset the next appended slot must start at.
    pub fn next_offset(&self) -> u64 {
        self.slots
            .last()
            .map_or(self.checkpoint.start_offset, QueueSlot::end_offset)
    }

    /// The entry index of the last slot (or of the last one dropped by retention).
    pub fn last_entry_index(&self) -> LogIndex {
        self.slots
            .last()
            .map_or(self.checkpoint.floor_entry, |s| s.entry_index)
    }

    /// Number of live slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when no slot is indexed.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Appends a slot. It must start at [`QueueIndex::next_offset`] (an empty queue
    /// accepts any offset at or past it). A slot whose entry index is not past
    /// [`QueueIndex::last_entry_index`] is a replay: a no-op that asserts the slot is
    /// identical to the one already held.
    pub fn append(&mut self, slot: QueueSlot) -> Result<(), StoreError> {
        if slot.entry_index <= self.last_entry_index() {
            if let Ok(k) = self
                .slots
                .binary_search_by_key(&slot.entry_index, |s| s.entry_index)
            {
                assert_eq!(
                    self.slots[k], slot,
                    "replayed queue slot differs from the indexed one"
                );
            } else {
                assert!(
                    slot.entry_index
                        < self
                            .slots
                            .first()
                            .map_or(LogIndex(u64::MAX), |s| s.entry_index),
                    "replayed queue slot {slot:?} matches no indexed slot"
                );
            }
            return Ok(());
        }
        let next = self.next_offset();
        let ok = if self.slots.is_empty() {
            slot.base_offset >= next
        } else {
            slot.base_offset == next
        };
        if !ok {
            return Err(StoreError::QueueGap {
                expected: next,
                got: slot.base_offset,
            });
        }
        assert!(slot.count > 0, "a queue slot holds at least one message");
        let at = (self.slots.len() * QUEUE_SLOT_BYTES) as u64;
        self.file
            .write_all_at(&slot.encode(), at)
            .map_err(|e| StoreError::io("pwrite", &self.path, e))?;
        if self.slots.is_empty() {
            self.checkpoint.start_offset = slot.base_offset;
        }
        self.push(slot);
        Ok(())
    }

    fn position(&self, offset: u64) -> Option<usize> {
        if offset < self.start_offset() || offset >= self.next_offset() {
            return None;
        }
        Some(self.slots.partition_point(|s| s.end_offset() <= offset))
    }

    /// The slot holding message `offset`.
    pub fn lookup(&self, offset: u64) -> Option<QueueSlot> {
        self.position(offset).map(|k| self.slots[k])
    }

    /// The first slot whose `max_timestamp_ms >= ts_ms`.
    pub fn seek_timestamp(&self, ts_ms: i64) -> Option<QueueSlot> {
        let k = self.prefix_max_ts.partition_point(|&m| m < ts_ms);
        self.slots.get(k).copied()
    }

    /// Up to `max` slots starting with the one holding `offset`.
    pub fn slots_from(&self, offset: u64, max: usize) -> Vec<QueueSlot> {
        match self.position(offset) {
            Some(k) => self.slots[k..(k + max).min(self.slots.len())].to_vec(),
            None => Vec::new(),
        }
    }

    /// `fdatasync` of the slots file: every appended slot survives a crash.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        durability::sync_data(&self.file, &self.path)
    }

    /// Syncs, then records the synced extent in the checkpoint, so a later loss of
    /// those slots is reported as damage rather than taken for a torn tail.
    pub fn checkpoint(&mut self) -> Result<(), StoreError> {
        self.sync()?;
        let cp = Checkpoint {
            start_offset: self.start_offset(),
            synced_next_offset: self.next_offset(),
            floor_entry: self.checkpoint.floor_entry,
        };
        durability::write_file_atomic(&self.dir, CHECKPOINT_FILE, &cp.encode())?;
        self.checkpoint = cp;
        Ok(())
    }

    /// Durably drops every slot whose entry index is `>= index` (the log was truncated
    /// there).
    pub fn truncate_from_entry(&mut self, index: LogIndex) -> Result<(), StoreError> {
        let keep = self.slots.partition_point(|s| s.entry_index < index);
        if keep == self.slots.len() {
            return Ok(());
        }
        let next = self.slots[keep].base_offset;
        // Lower the checkpoint first so the shorter file is not taken for damage.
        let cp = Checkpoint {
            start_offset: self.start_offset().min(next),
            synced_next_offset: self.checkpoint.synced_next_offset.min(next),
            floor_entry: self.checkpoint.floor_entry.min(index.prev()),
        };
        durability::write_file_atomic(&self.dir, CHECKPOINT_FILE, &cp.encode())?;
        self.checkpoint = cp;
        durability::set_len(&self.file, &self.path, (keep * QUEUE_SLOT_BYTES) as u64)?;
        self.slots.truncate(keep);
        self.prefix_max_ts.truncate(keep);
        Ok(())
    }

    /// Retention: durably drops leading slots whose entry index is `< index`.
    pub fn delete_before_entry(&mut self, index: LogIndex) -> Result<(), StoreError> {
        let drop = self.slots.partition_point(|s| s.entry_index < index);
        if drop == 0 {
            return Ok(());
        }
        let floor = self.slots[drop - 1].entry_index;
        let start = self
            .slots
            .get(drop)
            .map_or(self.next_offset(), |s| s.base_offset);
        let live = &self.slots[drop..];
        let mut bytes = Vec::with_capacity(live.len() * QUEUE_SLOT_BYTES);
        for s in live {
            bytes.extend_from_slice(&s.encode());
        }
        // New slots file first, then the checkpoint that moves the start.
        durability::write_file_atomic(&self.dir, SLOTS_FILE, &bytes)?;
        self.file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .map_err(|e| StoreError::io("open queue index", &self.path, e))?;
        let next = self.next_offset();
        let cp = Checkpoint {
            start_offset: start,
            synced_next_offset: next,
            floor_entry: floor,
        };
        durability::write_file_atomic(&self.dir, CHECKPOINT_FILE, &cp.encode())?;
        self.checkpoint = cp;
        let kept: Vec<QueueSlot> = self.slots.drain(drop..).collect();
        self.slots.clear();
        self.prefix_max_ts.clear();
        for s in kept {
            self.push(s);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> QueueSlot {
        QueueSlot {
            base_offset: 1 << 40,
            entry_index: LogIndex(77),
            count: 12,
            bytes: 4096,
            max_timestamp_ms: -5,
        }
    }

    #[test]
    fn slots_round_trip_and_reject_every_flipped_bit() {
        let bytes = sample().encode();
        assert_eq!(QueueSlot::decode(&bytes), Some(sample()));
        for bit in 0..QUEUE_SLOT_BYTES * 8 {
            let mut bad = bytes;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(QueueSlot::decode(&bad), None, "bit {bit}");
        }
        assert_eq!(QueueSlot::decode(&[0u8; QUEUE_SLOT_BYTES]), None);
        assert_eq!(QueueSlot::decode(&bytes[..39]), None);
    }

    #[test]
    fn checkpoints_round_trip_and_reject_every_flipped_bit() {
        let cp = Checkpoint {
            start_offset: 3,
            synced_next_offset: 99,
            floor_entry: LogIndex(4),
        };
        let bytes = cp.encode();
        assert_eq!(Checkpoint::decode(&bytes), Some(cp));
        for bit in 0..36 * 8 {
            let mut bad = bytes;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(Checkpoint::decode(&bad), None, "bit {bit}");
        }
    }
}
