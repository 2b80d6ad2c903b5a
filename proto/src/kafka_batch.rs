//! Kafka's record-batch format (RecordBatch v2, "magic 2"), as stored by a broker
//! that took it from a Kafka client: validated here and kept byte for byte.
//!
//! Both formats put their version byte at offset 16, so a stored batch says which
//! it is: 1 = raftmq's own format ([`crate::batch`]), 2 = Kafka's. The broker's
//! state machine reads either through [`crate::batch::parse_stored`]; only a reader
//! of the other protocol pays for a conversion (`docs/protocol.md`).
//!
//! # Layout (all integers big-endian)
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 8 | `baseOffset` (written by the broker when serving; not covered by the CRC) |
//! | 8  | 4 | `batchLength`: bytes after this field |
//! | 12 | 4 | `partitionLeaderEpoch` (not covered by the CRC) |
//! | 16 | 1 | `magic` = 2 |
//! | 17 | 4 | `crc`: CRC-32C of bytes `[21, end)` |
//! | 21 | 2 | `attributes`: bits 0-2 compression, 3 timestamp type, 4 transactional, 5 control |
//! | 23 | 4 | `lastOffsetDelta` = `recordCount` − 1 |
//! | 27 | 8 | `baseTimestamp` |
//! | 35 | 8 | `maxTimestamp` |
//! | 43 | 8 | `producerId` (−1 = none) |
//! | 51 | 2 | `producerEpoch` |
//! | 53 | 4 | `baseSequence` |
//! | 57 | 4 | `recordCount` |
//! | 61 | .. | records (compressed as a whole when the compression bits are set) |
//!
//! A record: `length` (zigzag varint), `attributes` (i8, 0), `timestampDelta`
//! (zigzag varlong), `offsetDelta` (zigzag varint), key (zigzag length, −1 = null),
//! value (same), header count (zigzag varint), headers (key length + UTF-8 key,
//! value length (−1 = null) + value).

use crate::batch::{BatchError, BatchHeader, NO_PRODUCER_ID};
use crate::varint::{decode_uvarint, unzigzag};

/// The Kafka format's version byte.
pub const MAGIC: u8 = 2;
/// Size of the fixed header.
pub const HEADER_BYTES: usize = 61;
/// The CRC covers the batch from this byte to its end.
pub const CRC_START: usize = 21;
/// Mask of the compression bits in `attributes` (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
pub const COMPRESSION_MASK: u16 = 0b0111;
/// The highest compression codec Kafka defines (zstd).
pub const MAX_COMPRESSION: u16 = 4;
/// Attribute bit of a transactional batch.
pub const TRANSACTIONAL: u16 = 1 << 4;
/// Attribute bit of a control batch (transaction markers).
pub const CONTROL: u16 = 1 << 5;

mod field {
    pub const BATCH_LENGTH: usize = 8;
    pub const CRC: usize = 17;
    pub const ATTRIBUTES: usize = 21;
    pub const LAST_OFFSET_DELTA: usize = 23;
    pub const BASE_TIMESTAMP: usize = 27;
    pub const MAX_TIMESTAMP: usize = 35;
    pub const PRODUCER_ID: usize = 43;
    pub const PRODUCER_EPOCH: usize = 51;
    pub const BASE_SEQUENCE: usize = 53;
    pub const RECORD_COUNT: usize = 57;
}

fn be<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    let mut b = [0u8; N];
    b.copy_from_slice(&buf[at..at + N]);
    b
}

/// The batch's 16-bit `attributes` (compression, transactional, control bits).
pub fn attributes(buf: &[u8]) -> u16 {
    u16::from_be_bytes(be(buf, field::ATTRIBUTES))
}

/// Reads the header of a Kafka batch into the broker's [`BatchHeader`] (the fields
/// the state machine needs: record count, timestamps, producer id, epoch and
/// sequence). `length` is the whole batch's size; a producer id of −1 becomes
/// [`NO_PRODUCER_ID`]. `buf` may be a prefix of the batch.
pub fn parse_header(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    if buf.len() < HEADER_BYTES {
        return Err(BatchError::TooShort { len: buf.len() });
    }
    if buf[16] != MAGIC {
        return Err(BatchError::BadMagic(buf[16]));
    }
    let batch_length = i32::from_be_bytes(be(buf, field::BATCH_LENGTH));
    let length = i64::from(batch_length) + 12;
    if length < HEADER_BYTES as i64 || length > i64::from(u32::MAX) {
        return Err(BatchError::LengthTooSmall {
            declared: batch_length.max(0) as u32,
        });
    }
    let producer_id = i64::from_be_bytes(be(buf, field::PRODUCER_ID));
    let record_count = i32::from_be_bytes(be(buf, field::RECORD_COUNT));
    Ok(BatchHeader {
        base_offset: u64::from_be_bytes(be(buf, 0)),
        length: length as u32,
        crc: u32::from_be_bytes(be(buf, field::CRC)),
        magic: MAGIC,
        attributes: (attributes(buf) & COMPRESSION_MASK) as u8,
        record_count: record_count.max(0) as u32,
        first_timestamp: i64::from_be_bytes(be(buf, field::BASE_TIMESTAMP)),
        max_timestamp: i64::from_be_bytes(be(buf, field::MAX_TIMESTAMP)),
        producer_id: if producer_id < 0 {
            NO_PRODUCER_ID
        } else {
            producer_id as u64
        },
        producer_epoch: i16::from_be_bytes(be(buf, field::PRODUCER_EPOCH)) as u16,
        base_sequence: i32::from_be_bytes(be(buf, field::BASE_SEQUENCE)) as u32,
    })
}

/// Why a Kafka batch is refused beyond the structural [`BatchError`]s: features this
/// broker does not implement.
pub fn unsupported_feature(buf: &[u8]) -> Option<&'static str> {
    let attributes = attributes(buf);
    if attributes & TRANSACTIONAL != 0 {
        return Some("transactional batches are not supported");
    }
    if attributes & CONTROL != 0 {
        return Some("control batches are not supported");
    }
    None
}

/// What a broker checks before it stores a batch a Kafka client produced: exactly
/// one whole batch, magic 2, the CRC-32C, a known codec, `lastOffsetDelta` agreeing
/// with `recordCount`, and, for an uncompressed batch, a walk over every record
/// (lengths in bounds, offset deltas 0, 1, 2, ..., records filling the batch
/// exactly). A compressed batch is checked by its CRC and header only: its records
/// are not decompressed on the produce path (a reader of the other protocol
/// decompresses them when it converts).
pub fn validate(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = parse_header(buf)?;
    if header.length as usize != buf.len() {
        return Err(BatchError::LengthMismatch {
            declared: header.length,
            actual: buf.len(),
        });
    }
    let computed = crc32c::crc32c(&buf[CRC_START..]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    let attributes = attributes(buf);
    if attributes & COMPRESSION_MASK > MAX_COMPRESSION {
        return Err(BatchError::UnsupportedCompression(
            (attributes & COMPRESSION_MASK) as u8,
        ));
    }
    let record_count = i32::from_be_bytes(be(buf, field::RECORD_COUNT));
    if record_count <= 0 {
        return Err(BatchError::Empty);
    }
    let last_delta = i32::from_be_bytes(be(buf, field::LAST_OFFSET_DELTA));
    if last_delta != record_count - 1 {
        return Err(BatchError::TrailingBytes {
            record_count: record_count as u32,
            remaining: 0,
        });
    }
    if attributes & COMPRESSION_MASK == 0 {
        walk_records(buf, record_count as u32)?;
    }
    Ok(header)
}

/// Checks every record of an uncompressed batch.
fn walk_records(buf: &[u8], record_count: u32) -> Result<(), BatchError> {
    let end = buf.len();
    let mut pos = HEADER_BYTES;
    for index in 0..record_count {
        let signed = |pos: &mut usize| -> Result<i64, BatchError> {
            let at = *pos;
            decode_uvarint(buf, pos, end)
                .map(unzigzag)
                .ok_or(BatchError::BadVarint { index, at })
        };
        let at = pos;
        let length = signed(&mut pos)?;
        if length < 0 || length as u64 > (end - pos) as u64 {
            return Err(BatchError::InvalidLength {
                index,
                at,
                len: length,
            });
        }
        let record_end = pos + length as usize;
        let field = |pos: &mut usize| -> Result<i64, BatchError> {
            let at = *pos;
            decode_uvarint(buf, pos, record_end)
                .map(unzigzag)
                .ok_or(BatchError::Truncated { index, at })
        };
        let skip = |pos: &mut usize, nullable: bool| -> Result<(), BatchError> {
            let at = *pos;
            let len = field(pos)?;
            if len == -1 && nullable {
                return Ok(());
            }
            if len < 0 || len as u64 > (record_end - *pos) as u64 {
                return Err(BatchError::InvalidLength { index, at, len });
            }
            *pos += len as usize;
            Ok(())
        };
        if pos >= record_end {
            return Err(BatchError::Truncated { index, at: pos });
        }
        pos += 1; // record attributes
        field(&mut pos)?; // timestamp delta
        let delta_at = pos;
        let offset_delta = field(&mut pos)?;
        if offset_delta != i64::from(index) {
            return Err(BatchError::InvalidLength {
                index,
                at: delta_at,
                len: offset_delta,
            });
        }
        skip(&mut pos, true)?; // key
        skip(&mut pos, true)?; // value
        let count_at = pos;
        let headers = field(&mut pos)?;
        if headers < 0 {
            return Err(BatchError::InvalidLength {
                index,
                at: count_at,
                len: headers,
            });
        }
        for _ in 0..headers {
            let key_at = pos;
            let key_len = field(&mut pos)?;
            if key_len < 0 || key_len as u64 > (record_end - pos) as u64 {
                return Err(BatchError::InvalidLength {
                    index,
                    at: key_at,
                    len: key_len,
                });
            }
            if std::str::from_utf8(&buf[pos..pos + key_len as usize]).is_err() {
                return Err(BatchError::HeaderKeyNotUtf8 { index, at: pos });
            }
            pos += key_len as usize;
            skip(&mut pos, true)?;
        }
        if pos != record_end {
            return Err(BatchError::RecordLengthMismatch {
                index,
                declared: length as u64,
                used: (pos - (record_end - length as usize)) as u64,
            });
        }
    }
    if pos != end {
        return Err(BatchError::TrailingBytes {
            record_count,
            remaining: end - pos,
        });
    }
    Ok(())
}

/// Writes `base_offset` into a stored batch's header (outside the CRC), as a broker
/// does when it serves the batch to a Kafka consumer.
pub fn set_base_offset(buf: &mut [u8], base_offset: u64) {
    buf[..8].copy_from_slice(&base_offset.to_be_bytes());
}
