//! The per-queue record accumulator: fills one record batch at a time, seals it
//! when it is full or has lingered long enough, and numbers its records for
//! idempotence. Pure (time is passed in), so its rules are unit-tested directly.

use std::time::{Duration, Instant};

use bytes::Bytes;
use raftmq_proto::batch::{self, BatchBuilder, Compression, HEADER_BYTES};

/// A record as the accumulator takes it.
pub(crate) struct RecordRef<'a> {
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) value: &'a [u8],
    pub(crate) headers: &'a [(String, Bytes)],
    pub(crate) timestamp_ms: i64,
}

impl RecordRef<'_> {
    /// Bytes the record takes in a batch (its first record: timestamp delta 0; a
    /// later delta costs at most 9 more bytes, which is allowed for below).
    pub(crate) fn encoded_bytes(&self) -> usize {
        if self.headers.is_empty() {
            return BatchBuilder::record_bytes(self.key, self.value, &[], 0);
        }
        let headers: Vec<(&str, &[u8])> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_ref()))
            .collect();
        BatchBuilder::record_bytes(self.key, self.value, &headers, 0)
    }
}

/// The smallest record: length, delta, key, value length and header count.
const MIN_RECORD_BYTES: usize = 5;

/// Room left for a timestamp delta longer than the 1 byte `encoded_bytes` assumed.
const TIMESTAMP_SLACK_BYTES: usize = 9;

/// A batch ready to send, with what is needed to answer its records.
#[derive(Debug)]
pub(crate) struct SealedBatch<A> {
    /// The encoded batch: sent as is on every attempt.
    pub(crate) bytes: Bytes,
    /// Sequence of its first record as now encoded (0 when not idempotent).
    pub(crate) base_sequence: u32,
    /// Sequence given at sealing; `base_sequence` is lower once earlier batches
    /// were refused for good and later ones renumbered to close the gap.
    pub(crate) sealed_sequence: u32,
    /// Records in it.
    pub(crate) record_count: u32,
    /// The batch's one acknowledgement handle, shared by all its records (record
    /// *i* of the batch is answered from it with index *i*).
    pub(crate) ack: A,
    /// Attempts made so far.
    pub(crate) attempts: u32,
    /// The retry budget, started at the first attempt.
    pub(crate) retry: Option<crate::retry::RetryState>,
    /// Some failed attempt may have stored the batch (a timeout, a connection lost
    /// after sending): if it finally fails, its outcome is unknown, not "failed".
    pub(crate) outcome_unknown: bool,
    /// The compression still to apply before the first send ([`Compression::None`]
    /// once applied, or when the producer does not compress). Sealing does not
    /// compress: it runs on the sender's path, under the queue's lock, and
    /// compressing a batch of a megabyte takes about a millisecond, which the
    /// producer's worker spends on another thread (see [`SealedBatch::compress`]).
    pub(crate) compression: Compression,
    /// Sealed batches of the queue are numbered in order: a batch taken out to be
    /// compressed goes back in its place by this number.
    pub(crate) seal_number: u64,
}

impl<A> SealedBatch<A> {
    /// Applies the compression still due; the batch stays as is when it does not
    /// shrink.
    pub(crate) fn compress(&mut self) {
        if self.compression != Compression::None {
            self.bytes = batch::compress(&self.bytes, self.compression);
            self.compression = Compression::None;
        }
    }
}

/// How much larger than `max_batch_bytes` the records of a compressed batch may be.
pub(crate) const COMPRESSED_FILL: usize = 4;
/// The records of a compressed batch never exceed this (well under the broker's
/// 8 MiB batch limit even when they do not compress).
pub(crate) const COMPRESSED_FILL_MAX_BYTES: usize = 4 << 20;

/// Accumulates the records of one (topic, queue).
///
/// `A` is the acknowledgement handle of a batch: one is made (`A::default()`) when
/// a batch opens and travels with it when sealed, so a record costs no allocation
/// of its own for its answer.
#[derive(Debug)]
pub(crate) struct Accumulator<A> {
    builder: BatchBuilder,
    /// The open batch's acknowledgement handle (`Some` exactly when a batch is open).
    ack: Option<A>,
    max_batch_bytes: usize,
    linger: Duration,
    /// When the open batch got its first record.
    opened_at: Option<Instant>,
    /// Idempotent producer id and epoch.
    producer: Option<(u64, u16)>,
    /// Sequence of the next record sealed.
    next_sequence: u32,
    /// How sealed batches are compressed.
    compression: Compression,
    /// Number of the next batch sealed.
    next_seal: u64,
}

impl<A: Default> Accumulator<A> {
    pub(crate) fn new(
        max_batch_bytes: usize,
        linger: Duration,
        producer: Option<(u64, u16)>,
    ) -> Self {
        Accumulator {
            builder: BatchBuilder::with_capacity(max_batch_bytes.min(1 << 20)),
            ack: None,
            max_batch_bytes,
            linger,
            opened_at: None,
            producer,
            next_sequence: 0,
            compression: Compression::None,
            next_seal: 0,
        }
    }

    /// Compresses every batch it seals with `compression`. A compressed batch's
    /// records may then fill [`COMPRESSED_FILL`] times `max_batch_bytes` (at most
    /// [`COMPRESSED_FILL_MAX_BYTES`], and never less than `max_batch_bytes`): the
    /// batch on the wire is expected that much smaller, and bigger batches are
    /// what compression needs to pay (fewer requests and fsyncs per message). A
    /// batch that does not compress is sent as is, at most that size.
    pub(crate) fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        if compression != Compression::None {
            self.max_batch_bytes = (self.max_batch_bytes * COMPRESSED_FILL)
                .min(COMPRESSED_FILL_MAX_BYTES)
                .max(self.max_batch_bytes);
        }
        self
    }

    /// Adds a record of `record_bytes` (its [`RecordRef::encoded_bytes`]) and
    /// returns its index in the open batch; when the open batch has no room for it,
    /// that batch is sealed first and returned too. `now` is read only when the
    /// record opens a batch (it starts the linger). A record too large for a batch of
    /// `max_batch_bytes` gets a batch of its own, sized to fit it (the batch is
    /// then full: [`is_full`](Accumulator::is_full) says so and nothing joins it);
    /// the caller checked it against the largest message it allows.
    pub(crate) fn push(
        &mut self,
        record: &RecordRef<'_>,
        record_bytes: usize,
        now: impl FnOnce() -> Instant,
    ) -> (Option<SealedBatch<A>>, u32) {
        let needed = record_bytes + TIMESTAMP_SLACK_BYTES;
        let sealed = if !self.builder.is_empty()
            && self.builder.len_bytes() + needed > self.max_batch_bytes
        {
            self.seal()
        } else {
            None
        };
        if self.builder.is_empty() {
            debug_assert!(self.ack.is_none() && self.opened_at.is_none());
            self.ack = Some(A::default());
            self.opened_at = Some(now());
        }
        let index = self.builder.record_count();
        if record.headers.is_empty() {
            self.builder
                .push(record.key, record.value, &[], record.timestamp_ms);
        } else {
            let headers: Vec<(&str, &[u8])> = record
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_ref()))
                .collect();
            self.builder
                .push(record.key, record.value, &headers, record.timestamp_ms);
        }
        debug_assert!(
            self.builder.len_bytes() <= self.max_batch_bytes || self.builder.record_count() == 1,
            "only a record alone may make a batch larger than the limit"
        );
        (sealed, index)
    }

    /// The open batch's acknowledgement handle, if a batch is open.
    pub(crate) fn open_ack(&self) -> Option<&A> {
        self.ack.as_ref()
    }

    /// Records in the open batch.
    pub(crate) fn open_records(&self) -> u32 {
        self.builder.record_count()
    }

    /// Seals the open batch (if any): stamps producer id, epoch and the next
    /// sequence number, and advances the sequence by its record count.
    pub(crate) fn seal(&mut self) -> Option<SealedBatch<A>> {
        if self.builder.is_empty() {
            return None;
        }
        let record_count = self.builder.record_count();
        let base_sequence = match self.producer {
            Some((id, epoch)) => {
                let base = self.next_sequence;
                self.builder.set_producer(id, epoch, base);
                self.next_sequence = base.wrapping_add(record_count);
                base
            }
            None => 0,
        };
        let bytes = self.builder.finish();
        let seal_number = self.next_seal;
        self.next_seal += 1;
        self.opened_at = None;
        let ack = self.ack.take();
        assert!(
            ack.is_some(),
            "an open batch has its acknowledgement handle"
        );
        Some(SealedBatch {
            bytes,
            base_sequence,
            sealed_sequence: base_sequence,
            record_count,
            ack: ack.unwrap_or_default(),
            attempts: 0,
            retry: None,
            outcome_unknown: false,
            compression: self.compression,
            seal_number,
        })
    }
}

impl<A> Accumulator<A> {
    /// Whether a record of `record_bytes` can ever fit in a batch.
    pub(crate) fn fits_alone(max_batch_bytes: usize, record_bytes: usize) -> bool {
        HEADER_BYTES + record_bytes + TIMESTAMP_SLACK_BYTES <= max_batch_bytes
    }

    /// Whether the open batch is full enough that not even the smallest record
    /// would fit.
    pub(crate) fn is_full(&self) -> bool {
        self.builder.len_bytes() + MIN_RECORD_BYTES + TIMESTAMP_SLACK_BYTES > self.max_batch_bytes
    }

    /// When the open batch's linger ends, if one is open.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.opened_at.map(|t| t + self.linger)
    }

    /// Whether the open batch has lingered long enough at `now`.
    #[cfg(test)]
    pub(crate) fn is_ready(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| now >= d)
    }

    /// Whether no batch is open.
    pub(crate) fn is_empty(&self) -> bool {
        self.builder.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(value: &[u8]) -> RecordRef<'_> {
        RecordRef {
            key: None,
            value,
            headers: &[],
            timestamp_ms: 1_000,
        }
    }

    fn push(acc: &mut Accumulator<()>, r: &RecordRef<'_>, now: Instant) -> Option<SealedBatch<()>> {
        acc.push(r, r.encoded_bytes(), || now).0
    }

    #[test]
    fn a_record_larger_than_a_batch_goes_alone_in_a_batch_of_its_size() {
        let mut acc: Accumulator<()> = Accumulator::new(1024, Duration::from_secs(60), None);
        let now = Instant::now();
        assert!(push(&mut acc, &rec(&[1; 100]), now).is_none());
        let big = vec![7u8; 5000];
        let first = push(&mut acc, &rec(&big), now).expect("the open batch is sealed first");
        assert_eq!(first.record_count, 1);
        assert!(acc.is_full(), "nothing may join the oversized batch");
        let alone = acc.seal().expect("the big record's batch");
        assert_eq!(alone.record_count, 1);
        let header = batch::validate(&alone.bytes).expect("valid");
        assert_eq!(header.record_count, 1);
        let r = batch::records(&alone.bytes).next().unwrap().unwrap();
        assert_eq!(r.value, &big[..]);
        // The next small record opens a normal batch again.
        assert!(push(&mut acc, &rec(&[2; 100]), now).is_none());
        assert!(!acc.is_full());
    }

    #[test]
    fn batch_is_sealed_when_the_next_record_does_not_fit() {
        let mut acc: Accumulator<()> = Accumulator::new(1024, Duration::from_secs(60), None);
        let now = Instant::now();
        let mut sealed = Vec::new();
        let mut indexes = Vec::new();
        for i in 0..30u8 {
            let value = [i; 100];
            let (b, index) = acc.push(&rec(&value), rec(&value).encoded_bytes(), || now);
            sealed.extend(b);
            indexes.push(index);
        }
        sealed.extend(acc.seal());
        assert!(sealed.len() >= 3);
        let mut next = 0u8;
        for b in &sealed {
            assert!(b.bytes.len() <= 1024, "{}", b.bytes.len());
            let header = batch::validate(&b.bytes).expect("valid");
            assert_eq!(header.record_count, b.record_count);
            for (position, r) in batch::records(&b.bytes).enumerate() {
                let r = r.expect("valid record");
                assert_eq!(
                    r.value, [next; 100],
                    "records keep their order across batches"
                );
                assert_eq!(
                    indexes[next as usize], position as u32,
                    "push returns the record's index in its batch"
                );
                next += 1;
            }
        }
        assert_eq!(next, 30);
    }

    #[test]
    fn compressed_batches_fill_four_times_the_limit_and_shrink_below_it() {
        let mut acc: Accumulator<()> = Accumulator::new(1024, Duration::from_secs(60), None)
            .with_compression(Compression::Lz4);
        let now = Instant::now();
        let value = [7u8; 100];
        let mut sealed = Vec::new();
        for _ in 0..60 {
            let (b, _) = acc.push(&rec(&value), rec(&value).encoded_bytes(), || now);
            sealed.extend(b);
        }
        let first = sealed.first_mut().expect("a batch was sealed");
        assert_eq!(first.bytes[17], 0, "sealed uncompressed");
        first.compress();
        assert_eq!(first.compression, Compression::None, "compressed once");
        assert!(
            first.record_count > 30,
            "records of {} B: {}",
            4 * 1024,
            first.record_count
        );
        assert!(
            first.bytes.len() < 1024,
            "compressed to {} B",
            first.bytes.len()
        );
        assert_eq!(first.bytes[17], Compression::Lz4 as u8);
        let header = batch::validate(&first.bytes).expect("valid");
        assert_eq!(header.record_count, first.record_count);
        assert_eq!(
            batch::decode_records(&first.bytes, 0).count(),
            first.record_count as usize
        );
    }

    #[test]
    fn linger_makes_a_batch_ready_only_after_it_elapses() {
        let mut acc = Accumulator::new(1 << 20, Duration::from_millis(5), None);
        let t0 = Instant::now();
        assert_eq!(acc.deadline(), None);
        assert!(
            !acc.is_ready(t0 + Duration::from_secs(1)),
            "empty is never ready"
        );
        push(&mut acc, &rec(b"a"), t0);
        push(&mut acc, &rec(b"b"), t0 + Duration::from_millis(3));
        assert_eq!(acc.deadline(), Some(t0 + Duration::from_millis(5)));
        assert!(!acc.is_ready(t0 + Duration::from_millis(4)));
        assert!(acc.is_ready(t0 + Duration::from_millis(5)));
        let b = acc.seal().expect("a batch");
        assert_eq!(b.record_count, 2);
        assert_eq!(acc.deadline(), None);
    }

    #[test]
    fn each_batch_gets_its_own_acknowledgement_handle() {
        let mut acc: Accumulator<std::sync::Arc<()>> =
            Accumulator::new(1 << 20, Duration::ZERO, None);
        let now = Instant::now();
        assert!(acc.open_ack().is_none(), "no batch, no handle");
        let r = rec(b"x");
        acc.push(&r, r.encoded_bytes(), || now);
        let first = std::sync::Arc::clone(acc.open_ack().expect("open"));
        acc.push(&r, r.encoded_bytes(), || now);
        assert!(std::sync::Arc::ptr_eq(
            &first,
            acc.open_ack().expect("open")
        ));
        let sealed = acc.seal().expect("a batch");
        assert!(std::sync::Arc::ptr_eq(&first, &sealed.ack));
        assert!(acc.open_ack().is_none());
        acc.push(&r, r.encoded_bytes(), || now);
        assert!(!std::sync::Arc::ptr_eq(
            &first,
            acc.open_ack().expect("open")
        ));
    }

    #[test]
    fn sequences_advance_by_record_count_per_batch() {
        let mut acc = Accumulator::new(1 << 20, Duration::ZERO, Some((42, 3)));
        let now = Instant::now();
        let mut seqs = Vec::new();
        for n in [3, 1, 5] {
            for _ in 0..n {
                push(&mut acc, &rec(b"x"), now);
            }
            let b = acc.seal().expect("a batch");
            let h = batch::validate(&b.bytes).expect("valid");
            assert_eq!((h.producer_id, h.producer_epoch), (42, 3));
            assert_eq!(h.base_sequence, b.base_sequence);
            seqs.push((b.base_sequence, h.last_sequence()));
        }
        assert_eq!(seqs, [(0, 2), (3, 3), (4, 8)]);
        assert!(acc.seal().is_none(), "nothing open, nothing sealed");
    }

    #[test]
    fn records_too_large_for_any_batch_are_detected() {
        let big = vec![0u8; 2000];
        let r = rec(&big);
        assert!(!Accumulator::<()>::fits_alone(1024, r.encoded_bytes()));
        assert!(Accumulator::<()>::fits_alone(4096, r.encoded_bytes()));
    }

    #[test]
    fn full_batch_is_reported_full() {
        let mut acc = Accumulator::new(HEADER_BYTES + 40, Duration::ZERO, None);
        let value = [1u8; 25];
        assert!(Accumulator::<()>::fits_alone(
            HEADER_BYTES + 40,
            rec(&value).encoded_bytes()
        ));
        push(&mut acc, &rec(&value), Instant::now());
        assert!(acc.is_full());
    }
}
