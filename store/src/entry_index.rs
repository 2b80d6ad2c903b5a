//! The entry index: where each entry of a segment lives, for O(1) reads by Raft index.
//!
//! Each segment has its own index, held in memory as a `Vec<Slot>` where the slot for
//! index `i` sits at `i - base` (base = the segment's first index), and checkpointed to
//! `<20-digit base>.idx` next to the segment. Checkpoints are written atomically
//! (write-temp-rename) and only ever describe synced entries; a checkpoint that is
//! missing, damaged, or behind the segment is completed or rebuilt from the segment on
//! open, so the index is derived data that never blocks recovery.
//!
//! Index file layout (little-endian):
//!
//! | offset | size | field        | meaning                                            |
//! |-------:|-----:|--------------|----------------------------------------------------|
//! | 0      | 4    | `magic`      | `0x58514D52` (bytes `R`, `M`, `Q`, `X`)            |
//! | 4      | 4    | `version`    | `1`                                                |
//! | 8      | 8    | `base`       | index of the segment's first entry                 |
//! | 16     | 8    | `count`      | number of slots that follow                        |
//! | 24     | 4    | `crc`        | CRC-32 of bytes 0..24, 28..32 and all slots        |
//! | 28     | 4    | `slot_bytes` | `24`                                               |
//! | 32+24k | 8    | `position`   | byte offset of entry `base + k` in the segment     |
//! | +8     | 4    | `body_len`   | its body length                                    |
//! | +12    | 4    | `reserved`   | zero                                               |
//! | +16    | 8    | `term`       | its term                                           |
//!
//! Entries are packed, so a valid index also satisfies `position[0] == 0` and
//! `position[k+1] == position[k] + 32 + body_len[k]`; loading checks this too.

use crate::entry::HEADER_BYTES;
use crate::le::{u32_at, u64_at};
use crate::types::{LogIndex, Term};

/// Magic of an index file.
const MAGIC: u32 = 0x5851_4D52;
const VERSION: u32 = 1;
/// Size of an index-file header.
pub const FILE_HEADER_BYTES: usize = 32;
/// Size of one persisted slot.
pub const SLOT_BYTES: usize = 24;

/// Where one entry lives in its segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Byte offset of the entry header in the segment.
    pub position: u64,
    /// Body length.
    pub body_len: u32,
    /// The entry's term.
    pub term: Term,
}

impl Slot {
    /// Offset just past this entry.
    pub fn end(&self) -> u64 {
        self.position + HEADER_BYTES as u64 + u64::from(self.body_len)
    }
}

/// Name of the index checkpoint of the segment starting at `base`.
pub fn file_name(base: LogIndex) -> String {
    format!("{:020}.idx", base.0)
}

/// Serialises a segment's slots into an index file.
pub fn encode_file(base: LogIndex, slots: &[Slot]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FILE_HEADER_BYTES + slots.len() * SLOT_BYTES);
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&base.0.to_le_bytes());
    out.extend_from_slice(&(slots.len() as u64).to_le_bytes());
    out.extend_from_slice(&[0u8; 4]); // CRC, filled below
    out.extend_from_slice(&(SLOT_BYTES as u32).to_le_bytes());
    for s in slots {
        out.extend_from_slice(&s.position.to_le_bytes());
        out.extend_from_slice(&s.body_len.to_le_bytes());
        out.extend_from_slice(&[0u8; 4]);
        out.extend_from_slice(&s.term.0.to_le_bytes());
    }
    let crc = file_crc(&out);
    out[24..28].copy_from_slice(&crc.to_le_bytes());
    out
}

fn file_crc(bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes[0..24]);
    h.update(&bytes[28..]);
    h.finalize()
}

/// Parses and validates an index file for the segment starting at `base` whose file
/// is `segment_len` bytes long. Any mismatch makes the whole file untrusted.
pub fn decode_file(
    bytes: &[u8],
    base: LogIndex,
    segment_len: u64,
) -> Result<Vec<Slot>, &'static str> {
    if bytes.len() < FILE_HEADER_BYTES {
        return Err("index file shorter than its header");
    }
    if u32_at(bytes, 0) != MAGIC || u32_at(bytes, 4) != VERSION {
        return Err("bad index magic or version");
    }
    if u32_at(bytes, 28) as usize != SLOT_BYTES {
        return Err("bad slot size");
    }
    if u64_at(bytes, 8) != base.0 {
        return Err("index belongs to another segment");
    }
    let count = u64_at(bytes, 16);
    let expected_len = (count as u128) * SLOT_BYTES as u128 + FILE_HEADER_BYTES as u128;
    if expected_len != bytes.len() as u128 {
        return Err("index length does not match its slot count");
    }
    if file_crc(bytes) != u32_at(bytes, 24) {
        return Err("index CRC mismatch");
    }
    let mut slots = Vec::with_capacity(count as usize);
    let mut next_position = 0u64;
    let mut last_term = Term(0);
    for raw in bytes[FILE_HEADER_BYTES..].chunks_exact(SLOT_BYTES) {
        let slot = Slot {
            position: u64_at(raw, 0),
            body_len: u32_at(raw, 8),
            term: Term(u64_at(raw, 16)),
        };
        if u32_at(raw, 12) != 0 {
            return Err("reserved slot bytes not zero");
        }
        if slot.position != next_position {
            return Err("slots are not packed");
        }
        if slot.term < last_term {
            return Err("terms decrease");
        }
        if slot.end() > segment_len {
            return Err("slot past the end of the segment");
        }
        next_position = slot.end();
        last_term = slot.term;
        slots.push(slot);
    }
    Ok(slots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots() -> Vec<Slot> {
        let mut v = Vec::new();
        let mut pos = 0;
        for (i, len) in [10u32, 0, 300, 7].into_iter().enumerate() {
            let s = Slot {
                position: pos,
                body_len: len,
                term: Term(1 + i as u64 / 2),
            };
            pos = s.end();
            v.push(s);
        }
        v
    }

    #[test]
    fn index_files_round_trip() {
        let bytes = encode_file(LogIndex(5), &slots());
        assert_eq!(decode_file(&bytes, LogIndex(5), 1 << 20).unwrap(), slots());
        assert_eq!(
            decode_file(&encode_file(LogIndex(5), &[]), LogIndex(5), 0).unwrap(),
            vec![]
        );
    }

    #[test]
    fn every_corruption_of_an_index_file_is_rejected() {
        let bytes = encode_file(LogIndex(5), &slots());
        for bit in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode_file(&bad, LogIndex(5), 1 << 20).is_err(),
                "bit {bit}"
            );
        }
        for len in 0..bytes.len() {
            assert!(decode_file(&bytes[..len], LogIndex(5), 1 << 20).is_err());
        }
        assert!(decode_file(&bytes, LogIndex(6), 1 << 20).is_err());
        assert!(decode_file(&bytes, LogIndex(5), 100).is_err());
    }
}
