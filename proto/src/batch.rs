//! The record-batch format: how messages travel from a producer through the broker's
//! log to a consumer. A producer encodes a batch once; the broker validates it and
//! stores and replicates the same bytes; consumers decode them. Nobody re-encodes.
//!
//! # Layout
//!
//! All fixed-width integers are **little-endian**. The header is 56 bytes:
//!
//! | offset | size | field             | type | meaning |
//! |-------:|-----:|-------------------|------|---------|
//! | 0      | 8    | `base_offset`     | u64  | as written by the producer: 0. The broker does **not** rewrite it; consumers get the real base offset next to the batch (`pb::FetchedBatch.base_offset`). Not covered by the CRC. |
//! | 8      | 4    | `length`          | u32  | total bytes of the batch, header included |
//! | 12     | 4    | `crc`             | u32  | CRC-32 (IEEE, as `crc32fast`) of bytes `[16, length)` |
//! | 16     | 1    | `magic`           | u8   | format version, = 1 |
//! | 17     | 1    | `attributes`      | u8   | bits 0-2: compression (0 none, 3 LZ4, 4 Zstandard; Kafka's numbers); bits 3-7: reserved, 0 |
//! | 18     | 2    | reserved          | u16  | 0 |
//! | 20     | 4    | `record_count`    | u32  | ≥ 1 |
//! | 24     | 8    | `first_timestamp` | i64  | ms since the Unix epoch: the first record's timestamp |
//! | 32     | 8    | `max_timestamp`   | i64  | the largest record timestamp |
//! | 40     | 8    | `producer_id`     | u64  | 0 = not idempotent |
//! | 48     | 2    | `producer_epoch`  | u16  | |
//! | 50     | 2    | reserved          | u16  | 0 |
//! | 52     | 4    | `base_sequence`   | u32  | sequence of the first record (per producer and queue); ignored when `producer_id` = 0 |
//! | 56     | ..   | records           |      | `record_count` records, back to back, filling the batch exactly |
//!
//! Each record (varint = unsigned LEB128 as in protobuf; zigzag = signed zigzag varint):
//!
//! | field             | encoding | meaning |
//! |-------------------|----------|---------|
//! | `length`          | varint   | bytes of the record after this field |
//! | `timestamp_delta` | zigzag   | timestamp − `first_timestamp` (wrapping i64 arithmetic) |
//! | `key_length`      | zigzag   | −1 = no key |
//! | `key`             | bytes    | |
//! | `value_length`    | zigzag   | ≥ 0 |
//! | `value`           | bytes    | |
//! | `header_count`    | varint   | |
//! | per header: `key_length` | varint | |
//! | per header: `key` | UTF-8    | |
//! | per header: `value_length` | zigzag | −1 = null |
//! | per header: `value` | bytes  | |
//!
//! The record with index *i* in a batch stored at base offset *b* has offset *b + i*;
//! with an idempotent producer its sequence number is `base_sequence + i`.
//!
//! # Compression
//!
//! With a codec in `attributes`, everything after the header is
//! `uncompressed_length` (u32, the records' size) followed by the records
//! compressed as one block (LZ4 block format, or one Zstandard frame). The header
//! stays readable (counts, timestamps, producer fields) and the CRC covers the
//! compressed bytes, so a broker validates, stores, replicates and serves a
//! compressed batch without decompressing it; [`decode_records`] decompresses.
//!
//! # Checks
//!
//! [`validate`] is what a broker runs before it stores a batch: exact length, CRC,
//! magic, attributes, reserved fields, and a walk over every record (lengths inside
//! bounds, each record's fields filling exactly its `length`, UTF-8 header keys,
//! `record_count` records exactly filling the batch, `max_timestamp` equal to the
//! largest record timestamp). A batch that passes decodes without error.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use crate::varint::{
    decode_uvarint, encode_uvarint, unzigzag, uvarint_len, zigzag, MAX_VARINT_BYTES,
};

/// Size of the fixed batch header.
pub const HEADER_BYTES: usize = 56;
/// The only format version so far.
pub const MAGIC: u8 = 1;
/// The CRC covers the batch from this byte to its end.
pub const CRC_START: usize = 16;
/// Mask of the compression bits in `attributes`.
pub const COMPRESSION_MASK: u8 = 0b0000_0111;
/// `producer_id` of a batch from a producer that is not idempotent.
pub const NO_PRODUCER_ID: u64 = 0;
/// Largest records section a compressed batch may declare (a consumer allocates
/// this much at most to decompress one batch).
pub const MAX_UNCOMPRESSED_BYTES: u32 = 64 << 20;

/// How a batch's records are compressed (the codec numbers are Kafka's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Stored as written.
    #[default]
    None = 0,
    /// LZ4 block format: fast, for throughput.
    Lz4 = 3,
    /// Zstandard (level 3): smaller, for bandwidth and disk.
    Zstd = 4,
}

impl Compression {
    fn from_code(code: u8) -> Option<Compression> {
        match code {
            0 => Some(Compression::None),
            3 => Some(Compression::Lz4),
            4 => Some(Compression::Zstd),
            _ => None,
        }
    }

    fn compress(self, records: &[u8]) -> Option<Vec<u8>> {
        match self {
            Compression::None => None,
            Compression::Lz4 => Some(lz4_flex::block::compress(records)),
            Compression::Zstd => zstd::bulk::compress(records, 3).ok(),
        }
    }

    fn decompress(self, compressed: &[u8], size: usize) -> Option<Vec<u8>> {
        match self {
            Compression::None => Some(compressed.to_vec()),
            Compression::Lz4 => lz4_flex::block::decompress(compressed, size).ok(),
            Compression::Zstd => zstd::bulk::decompress(compressed, size).ok(),
        }
        .filter(|out| out.len() == size)
    }
}

mod field {
    pub const BASE_OFFSET: usize = 0;
    pub const LENGTH: usize = 8;
    pub const CRC: usize = 12;
    pub const MAGIC: usize = 16;
    pub const ATTRIBUTES: usize = 17;
    pub const RESERVED_1: usize = 18;
    pub const RECORD_COUNT: usize = 20;
    pub const FIRST_TIMESTAMP: usize = 24;
    pub const MAX_TIMESTAMP: usize = 32;
    pub const PRODUCER_ID: usize = 40;
    pub const PRODUCER_EPOCH: usize = 48;
    pub const RESERVED_2: usize = 50;
    pub const BASE_SEQUENCE: usize = 52;
}

/// Why a batch was refused. Positions (`at`) are byte offsets from the batch start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Fewer bytes than a batch header.
    #[error("batch of {len} bytes is shorter than its {HEADER_BYTES}-byte header")]
    TooShort {
        /// Bytes available.
        len: usize,
    },
    /// The `length` field is below the header size.
    #[error("batch length field {declared} is below the header size {HEADER_BYTES}")]
    LengthTooSmall {
        /// The `length` field.
        declared: u32,
    },
    /// The `length` field disagrees with the bytes given.
    #[error("batch length field says {declared} bytes but {actual} were given")]
    LengthMismatch {
        /// The `length` field.
        declared: u32,
        /// Bytes given.
        actual: usize,
    },
    /// Unknown format version.
    #[error("unsupported batch magic {0} (expected {MAGIC})")]
    BadMagic(u8),
    /// A compression codec this version does not support.
    #[error("unsupported compression codec {0}")]
    UnsupportedCompression(u8),
    /// Reserved attribute bits or reserved fields are not zero.
    #[error("reserved batch header bits are set")]
    ReservedBitsSet,
    /// The CRC does not match the bytes: the batch was corrupted.
    #[error("batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// The `crc` field.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// `record_count` is zero.
    #[error("batch has no records")]
    Empty,
    /// A record, or a field of one, runs past its bounds.
    #[error("record {index} is truncated at byte {at}")]
    Truncated {
        /// Index of the record in the batch.
        index: u32,
        /// Where the missing bytes were expected.
        at: usize,
    },
    /// A varint is longer than 10 bytes or overflows 64 bits.
    #[error("record {index}: malformed varint at byte {at}")]
    BadVarint {
        /// Index of the record in the batch.
        index: u32,
        /// Where the varint starts.
        at: usize,
    },
    /// A length field is negative where that is not allowed (only −1 is, and only
    /// for keys and header values).
    #[error("record {index}: invalid length {len} at byte {at}")]
    InvalidLength {
        /// Index of the record in the batch.
        index: u32,
        /// Where the length field starts.
        at: usize,
        /// The decoded length.
        len: i64,
    },
    /// A record's fields do not fill exactly its `length`.
    #[error("record {index}: length says {declared} bytes but its fields take {used}")]
    RecordLengthMismatch {
        /// Index of the record in the batch.
        index: u32,
        /// The record's `length` field.
        declared: u64,
        /// Bytes its fields took.
        used: u64,
    },
    /// A header key is not UTF-8.
    #[error("record {index}: header key at byte {at} is not UTF-8")]
    HeaderKeyNotUtf8 {
        /// Index of the record in the batch.
        index: u32,
        /// Where the key starts.
        at: usize,
    },
    /// Bytes are left after `record_count` records.
    #[error("{remaining} bytes left after the batch's {record_count} records")]
    TrailingBytes {
        /// The `record_count` field.
        record_count: u32,
        /// Bytes left over.
        remaining: usize,
    },
    /// `max_timestamp` is not the largest record timestamp.
    #[error("batch max_timestamp {declared} but the records' largest timestamp is {found}")]
    MaxTimestampMismatch {
        /// The `max_timestamp` field.
        declared: i64,
        /// The largest record timestamp.
        found: i64,
    },
    /// `first_timestamp` is not the first record's timestamp.
    #[error("batch first_timestamp does not match its first record")]
    FirstTimestampMismatch,
    /// A compressed batch's records section is missing, too large, or does not
    /// decompress to its declared size.
    #[error("compressed records are corrupt: {0}")]
    CorruptCompression(&'static str),
}

#[inline]
fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([buf[at], buf[at + 1]])
}

#[inline]
fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

#[inline]
fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// The fixed header of a batch, read without touching the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// As written by the producer (0); not the stored offset.
    pub base_offset: u64,
    /// Total bytes of the batch, header included.
    pub length: u32,
    /// CRC-32 of bytes `[16, length)`.
    pub crc: u32,
    /// Format version.
    pub magic: u8,
    /// Compression (bits 0-2) and reserved bits.
    pub attributes: u8,
    /// Records in the batch, ≥ 1 in a valid batch.
    pub record_count: u32,
    /// Timestamp of the first record, ms since the Unix epoch.
    pub first_timestamp: i64,
    /// Largest record timestamp.
    pub max_timestamp: i64,
    /// Idempotent producer id; [`NO_PRODUCER_ID`] when not idempotent.
    pub producer_id: u64,
    /// The producer's epoch.
    pub producer_epoch: u16,
    /// Sequence number of the first record.
    pub base_sequence: u32,
}

impl BatchHeader {
    /// Reads the header from the start of `buf`. Cheap: checks only that the header
    /// is there, its `length` is at least a header and the magic is known; `buf` may
    /// be just a prefix of the batch (for example when scanning stored batches).
    /// Use [`validate`] before trusting the records.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        if buf.len() < HEADER_BYTES {
            return Err(BatchError::TooShort { len: buf.len() });
        }
        let header = BatchHeader {
            base_offset: u64_at(buf, field::BASE_OFFSET),
            length: u32_at(buf, field::LENGTH),
            crc: u32_at(buf, field::CRC),
            magic: buf[field::MAGIC],
            attributes: buf[field::ATTRIBUTES],
            record_count: u32_at(buf, field::RECORD_COUNT),
            first_timestamp: u64_at(buf, field::FIRST_TIMESTAMP) as i64,
            max_timestamp: u64_at(buf, field::MAX_TIMESTAMP) as i64,
            producer_id: u64_at(buf, field::PRODUCER_ID),
            producer_epoch: u16_at(buf, field::PRODUCER_EPOCH),
            base_sequence: u32_at(buf, field::BASE_SEQUENCE),
        };
        if (header.length as usize) < HEADER_BYTES {
            return Err(BatchError::LengthTooSmall {
                declared: header.length,
            });
        }
        if header.magic != MAGIC {
            return Err(BatchError::BadMagic(header.magic));
        }
        Ok(header)
    }

    /// The compression codec number (0 = none).
    pub fn compression(&self) -> u8 {
        self.attributes & COMPRESSION_MASK
    }

    /// Whether the batch comes from an idempotent producer.
    pub fn is_idempotent(&self) -> bool {
        self.producer_id != NO_PRODUCER_ID
    }

    /// Sequence number of the last record (`base_sequence + record_count - 1`,
    /// wrapping like Kafka's sequences).
    pub fn last_sequence(&self) -> u32 {
        self.base_sequence
            .wrapping_add(self.record_count.saturating_sub(1))
    }

    /// Offset of the last record when the batch is stored at `base_offset`.
    pub fn last_offset(&self, base_offset: u64) -> u64 {
        base_offset + u64::from(self.record_count.saturating_sub(1))
    }
}

/// Which format a stored batch is in, read from its version byte (offset 16 in
/// both): raftmq's own ([`MAGIC`]) or Kafka's RecordBatch v2
/// ([`crate::kafka_batch::MAGIC`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchFormat {
    /// raftmq's format (this module).
    Native,
    /// Kafka's RecordBatch v2 ([`crate::kafka_batch`]).
    Kafka,
}

/// The format of a stored batch, `None` when too short to say or of neither format.
pub fn format_of(buf: &[u8]) -> Option<BatchFormat> {
    match *buf.get(field::MAGIC)? {
        MAGIC => Some(BatchFormat::Native),
        crate::kafka_batch::MAGIC => Some(BatchFormat::Kafka),
        _ => None,
    }
}

/// Reads the header of a stored batch of either format (as validated when it was
/// produced, by [`validate`] or [`crate::kafka_batch::validate`]): what the broker's
/// state machine uses to assign offsets and check producer sequences.
pub fn parse_stored(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    match format_of(buf) {
        Some(BatchFormat::Kafka) => crate::kafka_batch::parse_header(buf),
        _ => BatchHeader::parse(buf),
    }
}

/// Rewrites the producer fields of an encoded batch and its CRC, leaving the records
/// untouched: how a producer renumbers a batch it has not had stored (for example
/// after an earlier batch was refused for good and left a sequence gap).
pub fn set_producer(
    batch: &mut [u8],
    producer_id: u64,
    producer_epoch: u16,
    base_sequence: u32,
) -> Result<(), BatchError> {
    let header = BatchHeader::parse(batch)?;
    if header.length as usize != batch.len() {
        return Err(BatchError::LengthMismatch {
            declared: header.length,
            actual: batch.len(),
        });
    }
    batch[field::PRODUCER_ID..field::PRODUCER_EPOCH].copy_from_slice(&producer_id.to_le_bytes());
    batch[field::PRODUCER_EPOCH..field::RESERVED_2].copy_from_slice(&producer_epoch.to_le_bytes());
    batch[field::BASE_SEQUENCE..HEADER_BYTES].copy_from_slice(&base_sequence.to_le_bytes());
    let crc = crc32fast::hash(&batch[CRC_START..]);
    batch[field::CRC..field::MAGIC].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Checks a whole batch (exactly one batch, `batch.len()` = its `length`): header,
/// CRC and every record. A batch that passes decodes without error.
pub fn validate(batch: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(batch)?;
    if header.length as usize != batch.len() {
        return Err(BatchError::LengthMismatch {
            declared: header.length,
            actual: batch.len(),
        });
    }
    let Some(compression) = Compression::from_code(header.compression()) else {
        return Err(BatchError::UnsupportedCompression(header.compression()));
    };
    if header.attributes & !COMPRESSION_MASK != 0
        || u16_at(batch, field::RESERVED_1) != 0
        || u16_at(batch, field::RESERVED_2) != 0
    {
        return Err(BatchError::ReservedBitsSet);
    }
    let computed = crc32fast::hash(&batch[CRC_START..]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    if header.record_count == 0 {
        return Err(BatchError::Empty);
    }
    if compression != Compression::None {
        // Checked by size only: the broker does not decompress (consumers do, and
        // a batch that does not decompress is reported to them).
        uncompressed_size(batch)?;
        return Ok(header);
    }
    let mut cursor = RecordCursor::new(batch, &header);
    let mut max_timestamp = i64::MIN;
    while let Some(record) = cursor.next_record(batch, |_, _| {})? {
        if record.index == 0 && record.timestamp_ms != header.first_timestamp {
            return Err(BatchError::FirstTimestampMismatch);
        }
        max_timestamp = max_timestamp.max(record.timestamp_ms);
    }
    cursor.finish()?;
    if max_timestamp != header.max_timestamp {
        return Err(BatchError::MaxTimestampMismatch {
            declared: header.max_timestamp,
            found: max_timestamp,
        });
    }
    Ok(header)
}

/// The declared size of a compressed batch's records section.
fn uncompressed_size(batch: &[u8]) -> Result<u32, BatchError> {
    if batch.len() < HEADER_BYTES + 4 {
        return Err(BatchError::CorruptCompression("no records section"));
    }
    let size = u32_at(batch, HEADER_BYTES);
    if size == 0 || size > MAX_UNCOMPRESSED_BYTES {
        return Err(BatchError::CorruptCompression(
            "declared size out of bounds",
        ));
    }
    Ok(size)
}

/// A compressed batch as the uncompressed batch it was built from (header with the
/// codec cleared and the length adjusted; the CRC is not recomputed: it is the
/// compressed batch's). An uncompressed batch is returned as is, without a copy.
pub fn decompress(batch: &Bytes) -> Result<Bytes, BatchError> {
    let header = BatchHeader::parse(batch)?;
    let compression = Compression::from_code(header.compression())
        .ok_or(BatchError::UnsupportedCompression(header.compression()))?;
    if compression == Compression::None {
        return Ok(batch.clone());
    }
    let end = (header.length as usize).min(batch.len());
    let size = uncompressed_size(&batch[..end])? as usize;
    let records = compression
        .decompress(&batch[HEADER_BYTES + 4..end], size)
        .ok_or(BatchError::CorruptCompression("does not decompress"))?;
    let mut out = BytesMut::with_capacity(HEADER_BYTES + size);
    out.extend_from_slice(&batch[..HEADER_BYTES]);
    out.extend_from_slice(&records);
    out[field::ATTRIBUTES] &= !COMPRESSION_MASK;
    let length = out.len() as u32;
    out[field::LENGTH..field::CRC].copy_from_slice(&length.to_le_bytes());
    Ok(out.freeze())
}

/// `batch` (sealed, uncompressed, as [`BatchBuilder::finish`] makes it) with its
/// records compressed with `compression`: same header fields, a new length, the
/// compression bits set and a new CRC. The batch itself when `compression` is
/// [`Compression::None`], when it is already compressed or not a batch, or when
/// compressing would not make it smaller. Lets a producer seal batches on its
/// sending path and compress them elsewhere (another thread) before they are sent.
pub fn compress(batch: &Bytes, compression: Compression) -> Bytes {
    let Ok(header) = BatchHeader::parse(batch) else {
        return batch.clone();
    };
    let end = header.length as usize;
    if header.compression() != 0 || end != batch.len() || end <= HEADER_BYTES {
        return batch.clone();
    }
    let records = &batch[HEADER_BYTES..end];
    let Some(compressed) = compression.compress(records) else {
        return batch.clone();
    };
    if compressed.len() + 4 >= records.len() {
        return batch.clone();
    }
    let mut out = BytesMut::with_capacity(HEADER_BYTES + 4 + compressed.len());
    out.extend_from_slice(&batch[..HEADER_BYTES]);
    out.put_u32_le(records.len() as u32);
    out.extend_from_slice(&compressed);
    let length = out.len() as u32;
    out[field::LENGTH..field::CRC].copy_from_slice(&length.to_le_bytes());
    out[field::ATTRIBUTES] |= compression as u8;
    let crc = crc32fast::hash(&out[CRC_START..]);
    out[field::CRC..field::MAGIC].copy_from_slice(&crc.to_le_bytes());
    out.freeze()
}

/// Positions of one record's fields inside its batch.
struct RawRecord {
    index: u32,
    timestamp_ms: i64,
    key: Option<Range<usize>>,
    value: Range<usize>,
}

/// Walks the records of a batch, checking their structure. Shared by [`validate`],
/// [`Records`] and [`MessageIter`] so that all three agree on what is valid.
struct RecordCursor {
    pos: usize,
    end: usize,
    next_index: u32,
    record_count: u32,
    first_timestamp: i64,
}

impl RecordCursor {
    /// `end` is the smaller of the declared length and the bytes present, so a
    /// cursor never reads outside `batch`.
    fn new(batch: &[u8], header: &BatchHeader) -> Self {
        RecordCursor {
            pos: HEADER_BYTES,
            end: (header.length as usize).min(batch.len()),
            next_index: 0,
            record_count: header.record_count,
            first_timestamp: header.first_timestamp,
        }
    }

    fn varint(&mut self, buf: &[u8], end: usize, index: u32) -> Result<u64, BatchError> {
        let at = self.pos;
        decode_uvarint(buf, &mut self.pos, end).ok_or(if end - at >= MAX_VARINT_BYTES {
            BatchError::BadVarint { index, at }
        } else {
            // Ran out of bytes, or a varint too long for what is left.
            BatchError::Truncated { index, at }
        })
    }

    /// A length: −1 (`None`) when `nullable`, else 0..; the bytes must fit before `end`.
    fn length_prefixed(
        &mut self,
        buf: &[u8],
        end: usize,
        index: u32,
        nullable: bool,
        zigzagged: bool,
    ) -> Result<Option<Range<usize>>, BatchError> {
        let at = self.pos;
        let raw = self.varint(buf, end, index)?;
        let len = if zigzagged {
            unzigzag(raw)
        } else {
            i64::try_from(raw).unwrap_or(i64::MAX)
        };
        if len == -1 && nullable {
            return Ok(None);
        }
        if len < 0 {
            return Err(BatchError::InvalidLength { index, at, len });
        }
        let len = len as u64;
        if len > (end - self.pos) as u64 {
            return Err(BatchError::Truncated {
                index,
                at: self.pos,
            });
        }
        let start = self.pos;
        self.pos += len as usize;
        Ok(Some(start..self.pos))
    }

    /// The next record, or `None` after `record_count` records. `on_header` sees each
    /// header's key (checked UTF-8) and value positions.
    fn next_record(
        &mut self,
        buf: &[u8],
        mut on_header: impl FnMut(Range<usize>, Option<Range<usize>>),
    ) -> Result<Option<RawRecord>, BatchError> {
        if self.next_index >= self.record_count {
            return Ok(None);
        }
        let index = self.next_index;
        let length = self.varint(buf, self.end, index)?;
        if length > (self.end - self.pos) as u64 {
            return Err(BatchError::Truncated {
                index,
                at: self.pos,
            });
        }
        let start = self.pos;
        let end = start + length as usize;
        let delta = unzigzag(self.varint(buf, end, index)?);
        let timestamp_ms = self.first_timestamp.wrapping_add(delta);
        let key = self.length_prefixed(buf, end, index, true, true)?;
        let value = self
            .length_prefixed(buf, end, index, false, true)?
            .unwrap_or(0..0);
        let header_count = self.varint(buf, end, index)?;
        for _ in 0..header_count {
            let Some(hkey) = self.length_prefixed(buf, end, index, false, false)? else {
                unreachable!("non-nullable lengths are never None")
            };
            if std::str::from_utf8(&buf[hkey.clone()]).is_err() {
                return Err(BatchError::HeaderKeyNotUtf8 {
                    index,
                    at: hkey.start,
                });
            }
            let hvalue = self.length_prefixed(buf, end, index, true, true)?;
            on_header(hkey, hvalue);
        }
        if self.pos != end {
            return Err(BatchError::RecordLengthMismatch {
                index,
                declared: length,
                used: (self.pos - start) as u64,
            });
        }
        self.next_index += 1;
        Ok(Some(RawRecord {
            index,
            timestamp_ms,
            key,
            value,
        }))
    }

    /// After the last record: nothing may be left.
    fn finish(&self) -> Result<(), BatchError> {
        if self.pos != self.end {
            return Err(BatchError::TrailingBytes {
                record_count: self.record_count,
                remaining: self.end - self.pos,
            });
        }
        Ok(())
    }
}

/// One record borrowed from a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// Position in the batch (its offset delta from the batch's base offset).
    pub index: u32,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// `None` when the record has no key.
    pub key: Option<&'a [u8]>,
    /// The value (possibly empty).
    pub value: &'a [u8],
    /// Headers in order; a `None` value is a null header value.
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
}

/// Iterator over the records of a batch, borrowing it. Yields an error at the first
/// structural problem and then stops. Does not check the CRC (see [`validate`]).
pub struct Records<'a> {
    buf: &'a [u8],
    cursor: Option<RecordCursor>,
    pending_error: Option<BatchError>,
}

/// Iterates the records of `batch` without copying them. The header is checked when
/// the iteration starts (an invalid header is the first and only item). A
/// compressed batch is refused here: [`decode_records`] decompresses.
pub fn records(batch: &[u8]) -> Records<'_> {
    match BatchHeader::parse(batch) {
        Ok(header) if header.compression() != 0 => Records {
            buf: batch,
            cursor: None,
            pending_error: Some(BatchError::UnsupportedCompression(header.compression())),
        },
        Ok(header) => Records {
            buf: batch,
            cursor: Some(RecordCursor::new(batch, &header)),
            pending_error: None,
        },
        Err(e) => Records {
            buf: batch,
            cursor: None,
            pending_error: Some(e),
        },
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.pending_error.take() {
            return Some(Err(e));
        }
        let cursor = self.cursor.as_mut()?;
        let buf = self.buf;
        let mut headers = Vec::new();
        let result = cursor.next_record(buf, |k, v| {
            // UTF-8 was checked by the cursor.
            let key = std::str::from_utf8(&buf[k]).unwrap_or_default();
            headers.push((key, v.map(|v| &buf[v])));
        });
        match result {
            Ok(Some(raw)) => Some(Ok(Record {
                index: raw.index,
                timestamp_ms: raw.timestamp_ms,
                key: raw.key.map(|k| &buf[k]),
                value: &buf[raw.value],
                headers,
            })),
            Ok(None) => {
                let end = cursor.finish();
                self.cursor = None;
                end.err().map(Err)
            }
            Err(e) => {
                self.cursor = None;
                Some(Err(e))
            }
        }
    }
}

/// A decoded message whose key and value are slices of the batch's `Bytes` (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Offset in its queue: the batch's stored base offset plus the record's index.
    pub offset: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// `None` when the record has no key.
    pub key: Option<Bytes>,
    /// The value.
    pub value: Bytes,
    /// Headers in order (a null header value decodes as empty).
    pub headers: Vec<(String, Bytes)>,
}

/// Iterator returned by [`decode_records`].
pub struct MessageIter {
    batch: Bytes,
    base_offset: u64,
    cursor: Option<RecordCursor>,
    pending_error: Option<BatchError>,
}

/// Decodes the messages of one stored batch, slicing `batch` (zero copy). Offsets are
/// `base_offset + index`, with `base_offset` as the broker reported it
/// (`pb::FetchedBatch.base_offset`). Does not check the CRC (see [`validate`]); a
/// structural error is yielded once and ends the iteration.
pub fn decode_records(batch: &Bytes, base_offset: u64) -> MessageIter {
    let batch = &match decompress(batch) {
        Ok(plain) => plain,
        Err(e) => {
            return MessageIter {
                batch: batch.clone(),
                base_offset,
                cursor: None,
                pending_error: Some(e),
            }
        }
    };
    match BatchHeader::parse(batch) {
        Ok(header) => MessageIter {
            cursor: Some(RecordCursor::new(batch, &header)),
            batch: batch.clone(),
            base_offset,
            pending_error: None,
        },
        Err(e) => MessageIter {
            batch: batch.clone(),
            base_offset,
            cursor: None,
            pending_error: Some(e),
        },
    }
}

impl Iterator for MessageIter {
    type Item = Result<Message, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.pending_error.take() {
            return Some(Err(e));
        }
        let cursor = self.cursor.as_mut()?;
        let batch = &self.batch;
        let mut headers = Vec::new();
        let result = cursor.next_record(batch, |k, v| {
            let key = String::from_utf8_lossy(&batch[k]).into_owned();
            headers.push((key, v.map(|v| batch.slice(v)).unwrap_or_default()));
        });
        match result {
            Ok(Some(raw)) => Some(Ok(Message {
                offset: self.base_offset + u64::from(raw.index),
                timestamp_ms: raw.timestamp_ms,
                key: raw.key.map(|k| batch.slice(k)),
                value: batch.slice(raw.value),
                headers,
            })),
            Ok(None) => {
                let end = cursor.finish();
                self.cursor = None;
                end.err().map(Err)
            }
            Err(e) => {
                self.cursor = None;
                Some(Err(e))
            }
        }
    }
}

/// The least room a [`BatchBuilder`] reserves for a batch (header included).
pub const MIN_BATCH_RESERVE: usize = 4096;

/// Builds one batch. Reusable: [`finish`](BatchBuilder::finish) hands out the bytes
/// and leaves the builder empty. Records are written straight into one buffer (no
/// allocation per record once the capacity is reserved).
///
/// Each batch reserves room for about twice the previous batch (at least
/// [`MIN_BATCH_RESERVE`], at most the builder's capacity), and small batches are cut
/// one after another from the same allocation: a producer writing to thousands of
/// queues, each batch a few records, does not allocate (and fault in) a full-size
/// buffer per batch, while one busy queue still gets full-size buffers at once.
#[derive(Debug)]
pub struct BatchBuilder {
    buf: BytesMut,
    capacity: usize,
    /// Bytes of the batch finished last (header included); 0 before the first.
    last_len: usize,
    record_count: u32,
    first_timestamp: i64,
    max_timestamp: i64,
    producer_id: u64,
    producer_epoch: u16,
    base_sequence: u32,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl BatchBuilder {
    /// A builder that reserves `capacity` bytes (header included) per batch.
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(HEADER_BYTES);
        let mut buf = BytesMut::with_capacity(capacity.min(MIN_BATCH_RESERVE));
        buf.put_bytes(0, HEADER_BYTES);
        BatchBuilder {
            buf,
            capacity,
            last_len: 0,
            record_count: 0,
            first_timestamp: 0,
            max_timestamp: i64::MIN,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: 0,
            base_sequence: 0,
        }
    }

    /// Stamps the batch as coming from idempotent producer `id` at `epoch`, its first
    /// record having sequence `base_sequence`. May be called any time before
    /// [`finish`](BatchBuilder::finish); [`clear`](BatchBuilder::clear) resets it.
    pub fn set_producer(&mut self, id: u64, epoch: u16, base_sequence: u32) {
        self.producer_id = id;
        self.producer_epoch = epoch;
        self.base_sequence = base_sequence;
    }

    /// Bytes the encoded record takes, its `length` prefix included. Lets a caller
    /// decide whether a record still fits before pushing it.
    pub fn record_bytes(
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&str, &[u8])],
        timestamp_delta: i64,
    ) -> usize {
        let body = Self::record_body_bytes(key, value, headers, timestamp_delta);
        uvarint_len(body as u64) + body
    }

    #[inline]
    fn record_body_bytes(
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&str, &[u8])],
        timestamp_delta: i64,
    ) -> usize {
        let mut n = uvarint_len(zigzag(timestamp_delta));
        n += match key {
            Some(k) => uvarint_len(zigzag(k.len() as i64)) + k.len(),
            None => 1,
        };
        n += uvarint_len(zigzag(value.len() as i64)) + value.len();
        n += uvarint_len(headers.len() as u64);
        for (k, v) in headers {
            n += uvarint_len(k.len() as u64) + k.len();
            n += uvarint_len(zigzag(v.len() as i64)) + v.len();
        }
        n
    }

    #[inline]
    fn put_uvarint(&mut self, value: u64) {
        // Most fields of a small record fit one byte: no copy through `tmp`.
        if value < 0x80 {
            self.buf.put_u8(value as u8);
            return;
        }
        let mut tmp = [0u8; MAX_VARINT_BYTES];
        let n = encode_uvarint(value, &mut tmp);
        self.buf.extend_from_slice(&tmp[..n]);
    }

    /// Appends a record.
    ///
    /// # Panics
    ///
    /// If the batch would exceed `u32::MAX` bytes or records; callers bound batches
    /// far below that (see [`len_bytes`](BatchBuilder::len_bytes)).
    pub fn push(
        &mut self,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&str, &[u8])],
        timestamp_ms: i64,
    ) {
        if self.record_count == 0 {
            self.first_timestamp = timestamp_ms;
            let want = self.batch_reserve();
            if self.buf.capacity() < want {
                self.buf.reserve(want - self.buf.len());
            }
        }
        let delta = timestamp_ms.wrapping_sub(self.first_timestamp);
        let body = Self::record_body_bytes(key, value, headers, delta);
        let total = uvarint_len(body as u64) + body;
        assert!(
            self.buf.len() + total <= u32::MAX as usize && self.record_count < u32::MAX,
            "record batch too large"
        );
        self.buf.reserve(total);
        let before = self.buf.len();
        self.put_uvarint(body as u64);
        self.put_uvarint(zigzag(delta));
        match key {
            Some(k) => {
                self.put_uvarint(zigzag(k.len() as i64));
                self.buf.extend_from_slice(k);
            }
            None => self.put_uvarint(zigzag(-1)),
        }
        self.put_uvarint(zigzag(value.len() as i64));
        self.buf.extend_from_slice(value);
        self.put_uvarint(headers.len() as u64);
        for (k, v) in headers {
            self.put_uvarint(k.len() as u64);
            self.buf.extend_from_slice(k.as_bytes());
            self.put_uvarint(zigzag(v.len() as i64));
            self.buf.extend_from_slice(v);
        }
        debug_assert_eq!(self.buf.len() - before, total);
        self.max_timestamp = self.max_timestamp.max(timestamp_ms);
        self.record_count += 1;
    }

    /// Room a new batch starts with: twice the last one, within
    /// [`MIN_BATCH_RESERVE`] and the capacity.
    fn batch_reserve(&self) -> usize {
        self.last_len
            .saturating_mul(2)
            .clamp(MIN_BATCH_RESERVE.min(self.capacity), self.capacity)
    }

    /// Bytes the batch would take if finished now, header included.
    pub fn len_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Records pushed so far.
    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    /// Whether no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    /// Timestamp of the first record pushed, if any.
    pub fn first_timestamp(&self) -> Option<i64> {
        (self.record_count > 0).then_some(self.first_timestamp)
    }

    /// Writes the header and CRC and returns the batch; the builder is left empty
    /// (producer fields reset) and ready for the next batch.
    ///
    /// # Panics
    ///
    /// If no record was pushed: an empty batch is not valid.
    pub fn finish(&mut self) -> Bytes {
        self.finish_with(Compression::None)
    }

    /// Like [`finish`](BatchBuilder::finish), compressing the records with
    /// `compression` (kept uncompressed when that would not make the batch smaller).
    pub fn finish_with(&mut self, compression: Compression) -> Bytes {
        // The next batch's room follows the records' size, not the compressed one.
        self.last_len = self.buf.len();
        let batch = self.seal(0);
        compress(&batch, compression)
    }

    fn seal(&mut self, attributes: u8) -> Bytes {
        assert!(
            self.record_count > 0,
            "a record batch needs at least one record"
        );
        let length = self.buf.len() as u32;
        let header = &mut self.buf[..HEADER_BYTES];
        header[field::BASE_OFFSET..field::LENGTH].copy_from_slice(&0u64.to_le_bytes());
        header[field::LENGTH..field::CRC].copy_from_slice(&length.to_le_bytes());
        header[field::MAGIC] = MAGIC;
        header[field::ATTRIBUTES] = attributes;
        header[field::RESERVED_1..field::RECORD_COUNT].copy_from_slice(&0u16.to_le_bytes());
        header[field::RECORD_COUNT..field::FIRST_TIMESTAMP]
            .copy_from_slice(&self.record_count.to_le_bytes());
        header[field::FIRST_TIMESTAMP..field::MAX_TIMESTAMP]
            .copy_from_slice(&self.first_timestamp.to_le_bytes());
        header[field::MAX_TIMESTAMP..field::PRODUCER_ID]
            .copy_from_slice(&self.max_timestamp.to_le_bytes());
        header[field::PRODUCER_ID..field::PRODUCER_EPOCH]
            .copy_from_slice(&self.producer_id.to_le_bytes());
        header[field::PRODUCER_EPOCH..field::RESERVED_2]
            .copy_from_slice(&self.producer_epoch.to_le_bytes());
        header[field::RESERVED_2..field::BASE_SEQUENCE].copy_from_slice(&0u16.to_le_bytes());
        header[field::BASE_SEQUENCE..HEADER_BYTES]
            .copy_from_slice(&self.base_sequence.to_le_bytes());
        let crc = crc32fast::hash(&self.buf[CRC_START..]);
        self.buf[field::CRC..field::MAGIC].copy_from_slice(&crc.to_le_bytes());
        let batch = self.buf.split().freeze();
        self.reset();
        batch
    }

    /// Drops the records pushed so far and the producer stamp.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.reset();
    }

    fn reset(&mut self) {
        debug_assert!(self.buf.is_empty());
        self.buf.put_bytes(0, HEADER_BYTES);
        self.record_count = 0;
        self.first_timestamp = 0;
        self.max_timestamp = i64::MIN;
        self.producer_id = NO_PRODUCER_ID;
        self.producer_epoch = 0;
        self.base_sequence = 0;
    }
}
