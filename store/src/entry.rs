//! The on-disk entry codec.
//!
//! Every entry is a 32-byte header followed by its body, little-endian:
//!
//! | offset | size | field      | meaning                                                   |
//! |-------:|-----:|------------|-----------------------------------------------------------|
//! | 0      | 2    | `magic`    | `0x4D52` (bytes `R`, `M`); zero marks unwritten space      |
//! | 2      | 1    | `version`  | format version, currently `1`                             |
//! | 3      | 1    | `kind`     | [`EntryKind`] discriminant (1 Messages, 2 Command, 3 Noop) |
//! | 4      | 4    | `crc`      | CRC-32 (IEEE, `crc32fast`) of bytes 0..4, 8..32 and body   |
//! | 8      | 4    | `body_len` | body length in bytes                                      |
//! | 12     | 4    | `reserved` | zero                                                      |
//! | 16     | 8    | `term`     | [`Term`] of the entry                                     |
//! | 24     | 8    | `index`    | [`LogIndex`] of the entry                                 |
//! | 32     | n    | `body`     | opaque payload, `body_len` bytes                          |
//!
//! The CRC covers everything but itself, so a flipped bit anywhere in the header or
//! body is caught. Entries are packed back to back in a segment without padding; the
//! space after the last entry is zero, which is how a reader finds the end.

use bytes::Bytes;

use crate::le::{u32_at, u64_at};
use crate::types::{Entry, EntryKind, LogIndex, Term};

/// Size of the fixed entry header.
pub const HEADER_BYTES: usize = 32;
/// First two bytes of every entry (`R`, `M`).
pub const MAGIC: u16 = 0x4D52;
/// The only format version written and accepted.
pub const VERSION: u8 = 1;

/// A decoded, structurally valid header (its CRC is checked with the body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Entry kind.
    pub kind: EntryKind,
    /// Stored CRC.
    pub crc: u32,
    /// Body length.
    pub body_len: u32,
    /// Term.
    pub term: Term,
    /// Index.
    pub index: LogIndex,
}

/// Why bytes are not a valid entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The header is all zeros: unwritten space (the end of the written log).
    Unwritten,
    /// Fewer bytes remain than a header or the body needs.
    Truncated,
    /// The magic is wrong.
    BadMagic,
    /// Unknown version.
    BadVersion,
    /// Unknown entry kind.
    BadKind,
    /// Reserved bytes are not zero.
    BadReserved,
    /// The body is longer than allowed.
    TooLong,
    /// The CRC does not match.
    BadCrc,
    /// The entry holds another index than the one expected at this place.
    WrongIndex,
}

impl DecodeError {
    /// A short description for error messages and recovery reports.
    pub fn reason(self) -> &'static str {
        match self {
            DecodeError::Unwritten => "unwritten space",
            DecodeError::Truncated => "entry runs past the end of the segment",
            DecodeError::BadMagic => "bad magic",
            DecodeError::BadVersion => "unknown format version",
            DecodeError::BadKind => "unknown entry kind",
            DecodeError::BadReserved => "reserved bytes not zero",
            DecodeError::TooLong => "body longer than max_entry_bytes",
            DecodeError::BadCrc => "CRC mismatch",
            DecodeError::WrongIndex => "unexpected index",
        }
    }
}

/// Total bytes an entry with a body of `body_len` bytes takes in a segment.
pub fn encoded_len(body_len: usize) -> u64 {
    HEADER_BYTES as u64 + body_len as u64
}

/// Encodes `entry`'s header, computing the CRC over header and body in one pass.
/// The caller has checked that the body length fits in a `u32`.
pub fn encode_header(entry: &Entry) -> [u8; HEADER_BYTES] {
    let body_len = u32::try_from(entry.body.len()).unwrap_or(u32::MAX);
    assert_eq!(
        body_len as usize,
        entry.body.len(),
        "body length checked by caller"
    );
    let mut h = [0u8; HEADER_BYTES];
    h[0..2].copy_from_slice(&MAGIC.to_le_bytes());
    h[2] = VERSION;
    h[3] = entry.kind as u8;
    h[8..12].copy_from_slice(&body_len.to_le_bytes());
    h[16..24].copy_from_slice(&entry.term.0.to_le_bytes());
    h[24..32].copy_from_slice(&entry.index.0.to_le_bytes());
    let crc = checksum(&h, &entry.body);
    h[4..8].copy_from_slice(&crc.to_le_bytes());
    h
}

/// CRC of a header (without its CRC field) and a body.
pub fn checksum(header: &[u8; HEADER_BYTES], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[0..4]);
    hasher.update(&header[8..HEADER_BYTES]);
    hasher.update(body);
    hasher.finalize()
}

/// Decodes and checks the header at the start of `bytes` (magic, version, kind,
/// reserved, `body_len <= max_body`). Does not check the CRC.
pub fn decode_header(bytes: &[u8], max_body: u32) -> Result<Header, DecodeError> {
    if bytes.len() < HEADER_BYTES {
        return Err(if bytes.iter().all(|&b| b == 0) {
            DecodeError::Unwritten
        } else {
            DecodeError::Truncated
        });
    }
    let h = &bytes[..HEADER_BYTES];
    if h.iter().all(|&b| b == 0) {
        return Err(DecodeError::Unwritten);
    }
    if u16::from_le_bytes([h[0], h[1]]) != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if h[2] != VERSION {
        return Err(DecodeError::BadVersion);
    }
    let kind = EntryKind::from_u8(h[3]).ok_or(DecodeError::BadKind)?;
    if u32_at(h, 12) != 0 {
        return Err(DecodeError::BadReserved);
    }
    let body_len = u32_at(h, 8);
    if body_len > max_body {
        return Err(DecodeError::TooLong);
    }
    Ok(Header {
        kind,
        crc: u32_at(h, 4),
        body_len,
        term: Term(u64_at(h, 16)),
        index: LogIndex(u64_at(h, 24)),
    })
}

/// Fully validates the entry starting at `pos` of `data` (a segment's bytes): header,
/// length within `data`, CRC, and (if given) the expected index. Returns the header.
pub fn check_at(
    data: &[u8],
    pos: usize,
    max_body: u32,
    expected: Option<LogIndex>,
) -> Result<Header, DecodeError> {
    let rest = data.get(pos..).ok_or(DecodeError::Truncated)?;
    let header = decode_header(rest, max_body)?;
    let end = HEADER_BYTES + header.body_len as usize;
    if rest.len() < end {
        return Err(DecodeError::Truncated);
    }
    let mut raw = [0u8; HEADER_BYTES];
    raw.copy_from_slice(&rest[..HEADER_BYTES]);
    if checksum(&raw, &rest[HEADER_BYTES..end]) != header.crc {
        return Err(DecodeError::BadCrc);
    }
    if let Some(want) = expected {
        if header.index != want {
            return Err(DecodeError::WrongIndex);
        }
    }
    Ok(header)
}

/// Builds the [`Entry`] for a checked header whose body is `body` (a zero-copy slice).
pub fn to_entry(header: &Header, body: Bytes) -> Entry {
    assert_eq!(body.len(), header.body_len as usize);
    Entry {
        index: header.index,
        term: header.term,
        kind: header.kind,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kind: EntryKind, body: &'static [u8]) -> Entry {
        Entry {
            index: LogIndex(42),
            term: Term(7),
            kind,
            body: Bytes::from_static(body),
        }
    }

    fn encode(entry: &Entry) -> Vec<u8> {
        let mut v = encode_header(entry).to_vec();
        v.extend_from_slice(&entry.body);
        v
    }

    #[test]
    fn every_kind_round_trips() {
        for kind in [EntryKind::Messages, EntryKind::Command, EntryKind::Noop] {
            let e = sample(kind, b"hello body");
            let bytes = encode(&e);
            let h = check_at(&bytes, 0, 1024, Some(LogIndex(42))).unwrap();
            let back = to_entry(&h, Bytes::copy_from_slice(&bytes[HEADER_BYTES..]));
            assert_eq!(back, e);
        }
    }

    #[test]
    fn empty_body_round_trips() {
        let e = sample(EntryKind::Noop, b"");
        let bytes = encode(&e);
        assert_eq!(bytes.len(), HEADER_BYTES);
        assert_eq!(check_at(&bytes, 0, 0, None).unwrap().body_len, 0);
    }

    #[test]
    fn every_flipped_bit_is_rejected() {
        let bytes = encode(&sample(EntryKind::Messages, b"some body bytes"));
        for bit in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                check_at(&bad, 0, 1024, Some(LogIndex(42))).is_err(),
                "flip of bit {bit} accepted"
            );
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        let bytes = encode(&sample(EntryKind::Command, b"some body bytes"));
        for len in 0..bytes.len() {
            assert!(check_at(&bytes[..len], 0, 1024, None).is_err());
        }
    }

    #[test]
    fn zeros_read_as_unwritten_and_limits_are_enforced() {
        assert_eq!(
            check_at(&[0u8; 64], 0, 10, None),
            Err(DecodeError::Unwritten)
        );
        let bytes = encode(&sample(EntryKind::Messages, b"0123456789"));
        assert_eq!(check_at(&bytes, 0, 9, None), Err(DecodeError::TooLong));
        assert_eq!(
            check_at(&bytes, 0, 10, Some(LogIndex(41))),
            Err(DecodeError::WrongIndex)
        );
    }
}
