//! Frames: a `u32` big-endian length, then one protobuf [`pb::Request`] or
//! [`pb::Response`]. A frame whose declared length is over the limit is refused as
//! soon as its 4-byte length is read, before any of its body is buffered.
//!
//! ```text
//! +----------------+------------------------------------+
//! | length: u32 BE | body: `length` bytes of protobuf   |
//! +----------------+------------------------------------+
//! ```
//!
//! Use [`codec`] with `tokio_util::codec::Framed` to get a stream of frame bodies
//! (`BytesMut`) and a sink of `Bytes`; [`encode_request`] / [`decode_request`] and
//! their `Response` twins convert bodies to and from messages.

use bytes::Bytes;
use prost::Message as _;
use tokio_util::codec::LengthDelimitedCodec;

use crate::pb;
use crate::ProtoError;

/// Default largest frame body: 16 MiB. Bounds the memory one connection can make a
/// peer buffer, and so the largest record batch that fits in a produce request.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Bytes of the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Longest topic or group name, in bytes.
pub const MAX_NAME_BYTES: usize = 249;

/// The frame codec: `u32` big-endian length prefix (not counting itself), bodies of
/// at most `max_frame_bytes`. Decoding a larger declared length fails at once with an
/// `io::ErrorKind::InvalidData` error, and so does encoding a larger body.
pub fn codec(max_frame_bytes: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_type::<u32>()
        .big_endian()
        .max_frame_length(max_frame_bytes)
        .new_codec()
}

/// Encodes a request as a frame body.
pub fn encode_request(request: &pb::Request) -> Bytes {
    Bytes::from(request.encode_to_vec())
}

/// Decodes a frame body as a request. `bytes` fields (record batches, Raft entry
/// bodies) come out as slices of `body`, not copies. A request whose body is absent
/// (or of an API this version does not know) decodes with `body: None`, so the
/// receiver can still answer its correlation id.
pub fn decode_request(body: Bytes) -> Result<pb::Request, ProtoError> {
    Ok(pb::Request::decode(body)?)
}

/// Encodes a response as a frame body.
pub fn encode_response(response: &pb::Response) -> Bytes {
    Bytes::from(response.encode_to_vec())
}

/// Decodes a frame body as a response (zero copy for `bytes` fields).
pub fn decode_response(body: Bytes) -> Result<pb::Response, ProtoError> {
    Ok(pb::Response::decode(body)?)
}

/// Checks a topic or consumer-group name: 1 to 249 bytes of `[A-Za-z0-9._-]`, and
/// not `.` or `..` (names may become file or directory names).
pub fn validate_name(name: &str) -> Result<(), ProtoError> {
    let invalid = |reason: &'static str| ProtoError::InvalidName {
        name: name.chars().take(MAX_NAME_BYTES).collect(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(invalid("longer than 249 bytes"));
    }
    if name == "." || name == ".." {
        return Err(invalid("'.' and '..' are reserved"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(invalid(
            "only ASCII letters, digits, '.', '_' and '-' are allowed",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names_pass() {
        for name in ["a", "orders", "orders.v2", "A-b_c.9", &"x".repeat(249)] {
            assert!(validate_name(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn invalid_names_are_refused() {
        for name in ["", ".", "..", "a b", "a/b", "é", "a\0", &"x".repeat(250)] {
            assert!(
                matches!(validate_name(name), Err(ProtoError::InvalidName { .. })),
                "{name:?}"
            );
        }
    }
}
