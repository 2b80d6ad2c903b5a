//! Frames written without copying their large byte fields.
//!
//! Encoding a message into one buffer copies every record batch and Raft entry
//! body it carries (out of the producer's batch buffer, out of the mapped log),
//! and a framing codec copies the result once more into its write buffer. An
//! [`OutFrame`] is the same bytes as a list of parts instead: the length prefix
//! and the small fields are encoded into a buffer as usual, and every `bytes`
//! field of at least [`ZERO_COPY_MIN_BYTES`] is referenced where it is. A
//! [`FrameWriter`] writes the parts of many frames with vectored writes
//! (`writev`), so the kernel's copy into the socket is the only one.
//!
//! The bytes on the wire are exactly those of [`crate::frame`]: a `u32`
//! big-endian body length, then the protobuf body.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::frame::LENGTH_PREFIX_BYTES;

/// `bytes` fields at least this long are referenced, not copied: below it a copy
/// costs less than another part for `writev` to gather.
pub const ZERO_COPY_MIN_BYTES: usize = 2048;

/// Parts gathered per `writev` call (Linux takes at most 1024).
const PARTS_PER_WRITE: usize = 64;

/// Bytes a [`FrameWriter`] queues before [`FrameWriter::feed`] writes them out.
const WRITE_AHEAD_BYTES: usize = 1 << 20;

/// A frame ready to write: its length prefix and protobuf body as parts.
#[derive(Debug, Clone, Default)]
pub struct OutFrame {
    parts: Vec<Bytes>,
    body_len: usize,
}

impl OutFrame {
    /// Encodes `message` as a frame, referencing its large `bytes` fields.
    pub fn encode(message: &impl prost::Message) -> OutFrame {
        Self::encode_with(message, ZERO_COPY_MIN_BYTES)
    }

    /// Encodes `message` as a frame of its own bytes (one copy, as a codec's
    /// encoder makes): for messages whose `bytes` fields may change while the frame
    /// waits to be written (Raft entries still uncommitted in a mapped log, which a
    /// truncation zeroes).
    pub fn encode_copied(message: &impl prost::Message) -> OutFrame {
        Self::encode_with(message, usize::MAX)
    }

    fn encode_with(message: &impl prost::Message, zero_copy_min: usize) -> OutFrame {
        let body_len = message.encoded_len();
        let mut parts = Parts {
            zero_copy_min,
            done: Vec::new(),
            current: BytesMut::with_capacity(
                LENGTH_PREFIX_BYTES + body_len.min(zero_copy_min.saturating_mul(2)),
            ),
        };
        // A body over `u32::MAX` bytes is refused by the writer (over any limit);
        // its prefix is never written.
        parts
            .current
            .put_u32(u32::try_from(body_len).unwrap_or(u32::MAX));
        message.encode_raw(&mut parts);
        if !parts.current.is_empty() {
            parts.done.push(parts.current.freeze());
        }
        debug_assert_eq!(
            parts.done.iter().map(Bytes::len).sum::<usize>(),
            LENGTH_PREFIX_BYTES + body_len
        );
        OutFrame {
            parts: parts.done,
            body_len,
        }
    }

    /// Bytes of the body (without the length prefix).
    pub fn body_len(&self) -> usize {
        self.body_len
    }

    /// The parts, in order: their concatenation is the frame.
    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    /// The frame in one buffer (a copy; for tests and diagnostics).
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(LENGTH_PREFIX_BYTES + self.body_len);
        for part in &self.parts {
            out.put_slice(part);
        }
        out.freeze()
    }
}

/// The encoding buffer: small fields are copied into `current`, a large `bytes`
/// field closes it and is kept as a part of its own.
struct Parts {
    /// `bytes` fields at least this long are referenced.
    zero_copy_min: usize,
    done: Vec<Bytes>,
    current: BytesMut,
}

// SAFETY: every method that exposes or advances uninitialized memory is
// `BytesMut`'s own, on `current`; `put` and `put_slice` only add parts or
// delegate to `BytesMut`'s safe methods.
unsafe impl BufMut for Parts {
    fn remaining_mut(&self) -> usize {
        self.current.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller initialized `cnt` bytes of the chunk `chunk_mut`
        // returned, which is `current`'s.
        unsafe { self.current.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut bytes::buf::UninitSlice {
        self.current.chunk_mut()
    }

    fn put<T: Buf>(&mut self, mut src: T)
    where
        Self: Sized,
    {
        let len = src.remaining();
        if len < self.zero_copy_min {
            self.current.put(src);
            return;
        }
        if !self.current.is_empty() {
            self.done.push(self.current.split().freeze());
        }
        // A `Bytes` field (prost's `bytes` type here) hands itself over without a
        // copy; any other `Buf` is copied once, as before.
        self.done.push(src.copy_to_bytes(len));
    }

    fn put_slice(&mut self, src: &[u8]) {
        self.current.put_slice(src);
    }
}

/// Writes frames to `io` with vectored writes, in the order fed.
pub struct FrameWriter<W> {
    io: W,
    max_frame_bytes: usize,
    queued: VecDeque<Bytes>,
    queued_bytes: usize,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// A writer refusing frames whose body is over `max_frame_bytes`.
    pub fn new(io: W, max_frame_bytes: usize) -> Self {
        FrameWriter {
            io,
            max_frame_bytes,
            queued: VecDeque::new(),
            queued_bytes: 0,
        }
    }

    /// Queues `frame`, writing out what is queued once it holds about a megabyte.
    /// A frame over the limit is an `InvalidData` error (nothing of it is written),
    /// as the framing codec's.
    pub async fn feed(&mut self, frame: OutFrame) -> io::Result<()> {
        if frame.body_len > self.max_frame_bytes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "a frame of {} bytes is over the frame limit of {} bytes",
                    frame.body_len, self.max_frame_bytes
                ),
            ));
        }
        self.queued_bytes += LENGTH_PREFIX_BYTES + frame.body_len;
        self.queued.extend(frame.parts);
        if self.queued_bytes >= WRITE_AHEAD_BYTES {
            self.write_queued().await?;
        }
        Ok(())
    }

    /// Writes everything queued and flushes `io`.
    pub async fn flush(&mut self) -> io::Result<()> {
        self.write_queued().await?;
        self.io.flush().await
    }

    async fn write_queued(&mut self) -> io::Result<()> {
        while !self.queued.is_empty() {
            let written = {
                let mut slices = [IoSlice::new(&[]); PARTS_PER_WRITE];
                let mut count = 0;
                for (slot, part) in slices.iter_mut().zip(self.queued.iter()) {
                    *slot = IoSlice::new(part);
                    count += 1;
                }
                self.io.write_vectored(&slices[..count]).await?
            };
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.consume(written);
        }
        self.queued_bytes = 0;
        Ok(())
    }

    /// Drops the first `written` bytes of the queue.
    fn consume(&mut self, mut written: usize) {
        while written > 0 {
            let Some(front) = self.queued.front_mut() else {
                return;
            };
            if front.len() <= written {
                written -= front.len();
                self.queued.pop_front();
            } else {
                front.advance(written);
                written = 0;
            }
        }
        while self.queued.front().is_some_and(Bytes::is_empty) {
            self.queued.pop_front();
        }
    }
}
