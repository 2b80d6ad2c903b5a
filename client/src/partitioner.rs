//! Choosing a queue for a message.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// How a [`Producer`](crate::Producer) picks the queue of a message that does not
/// name one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Partitioner {
    /// Keyed messages go to `murmur2(key) & 0x7fffffff % queues` (Kafka's default
    /// partitioner hash, so the same key lands on the same queue across clients and
    /// restarts, and on the same partition number Kafka would choose); messages
    /// without a key go round robin.
    KeyHash,
    /// Every message goes round robin, keys ignored.
    RoundRobin,
    /// The default. Keyed messages as [`KeyHash`](Partitioner::KeyHash); messages
    /// without a key stay on one queue until `sticky_bytes` of them (64 KiB by
    /// default) went there, then move to the next queue (Kafka's "uniform sticky"
    /// partitioner, KIP-794, its default since 3.3). Over time every queue gets the
    /// same share, and a producer writing to thousands of queues sends a few large
    /// batches instead of one small batch per queue: with 2,048 queues about 3×
    /// the messages per second of round robin, and a hundredth of its latency under
    /// a steady load (docs/performance.md). A few messages, though, all land on
    /// one queue; [`RoundRobin`](Partitioner::RoundRobin) or
    /// [`KeyHash`](Partitioner::KeyHash) spread every message.
    #[default]
    Sticky,
}

/// Picks queues; shared by all sends of a producer.
#[derive(Debug)]
pub(crate) struct QueueChooser {
    partitioner: Partitioner,
    next: AtomicU32,
    /// [`Partitioner::Sticky`]: bytes sent to the current queue (`next`), and how
    /// many before moving on.
    sticky_bytes: AtomicUsize,
    sticky_limit: usize,
}

impl QueueChooser {
    #[cfg(test)]
    pub(crate) fn new(partitioner: Partitioner) -> Self {
        Self::with_sticky_limit(partitioner, 256 * 1024)
    }

    /// A chooser whose [`Partitioner::Sticky`] moves on after `sticky_limit` bytes.
    pub(crate) fn with_sticky_limit(partitioner: Partitioner, sticky_limit: usize) -> Self {
        // Sticky producers start at a random queue, so that several of them do
        // not fill the same queues in step.
        let first = match partitioner {
            Partitioner::Sticky => {
                use std::hash::{BuildHasher, Hasher};
                std::collections::hash_map::RandomState::new()
                    .build_hasher()
                    .finish() as u32
            }
            _ => 0,
        };
        QueueChooser {
            partitioner,
            next: AtomicU32::new(first),
            sticky_bytes: AtomicUsize::new(0),
            sticky_limit: sticky_limit.max(1),
        }
    }

    /// The queue for a message with `key`, of `record_bytes` encoded, in a topic of
    /// `queues` queues (> 0).
    pub(crate) fn choose(&self, key: Option<&[u8]>, record_bytes: usize, queues: u32) -> u32 {
        debug_assert!(queues > 0);
        match (self.partitioner, key) {
            (Partitioner::KeyHash | Partitioner::Sticky, Some(key)) => key_queue(key, queues),
            (Partitioner::Sticky, None) => {
                // Concurrent senders may both see the limit passed and move on
                // twice: the share stays even, which is all that matters here.
                let queue = self.next.load(Ordering::Relaxed) % queues;
                let sent = self.sticky_bytes.fetch_add(record_bytes, Ordering::Relaxed);
                if sent + record_bytes >= self.sticky_limit {
                    self.sticky_bytes.store(0, Ordering::Relaxed);
                    self.next.fetch_add(1, Ordering::Relaxed);
                }
                queue
            }
            _ => self.next.fetch_add(1, Ordering::Relaxed) % queues,
        }
    }
}

/// The queue of `key` in a topic of `queues` queues under [`Partitioner::KeyHash`].
pub fn key_queue(key: &[u8], queues: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) % queues.max(1)
}

/// MurmurHash2, 32-bit, seed `0x9747b28c`, as Kafka's `Utils.murmur2` (the bytes
/// read little-endian in 4-byte groups, the tail mixed in the same order).
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = SEED ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas_test_vectors() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, expected) in cases {
            assert_eq!(
                murmur2(key) as i32,
                expected,
                "{:?}",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn same_key_same_queue_and_keys_spread() {
        let chooser = QueueChooser::new(Partitioner::KeyHash);
        let mut counts = [0u32; 8];
        for i in 0..8000u32 {
            let key = format!("user-{i}");
            let q = chooser.choose(Some(key.as_bytes()), 10, 8);
            assert_eq!(q, chooser.choose(Some(key.as_bytes()), 10, 8));
            counts[q as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }

    #[test]
    fn unkeyed_messages_go_round_robin() {
        let chooser = QueueChooser::new(Partitioner::KeyHash);
        let queues: Vec<u32> = (0..6).map(|_| chooser.choose(None, 10, 3)).collect();
        assert_eq!(queues, [0, 1, 2, 0, 1, 2]);
        let rr = QueueChooser::new(Partitioner::RoundRobin);
        let queues: Vec<u32> = (0..4).map(|_| rr.choose(Some(b"k"), 10, 2)).collect();
        assert_eq!(queues, [0, 1, 0, 1]);
    }

    #[test]
    fn sticky_keeps_unkeyed_messages_together_for_a_batch_and_keys_where_they_hash() {
        let chooser = QueueChooser::with_sticky_limit(Partitioner::Sticky, 100);
        // 30-byte records: four fill the 100 bytes, then the next queue (from a
        // random first one).
        let queues: Vec<u32> = (0..12).map(|_| chooser.choose(None, 30, 3)).collect();
        let first = queues[0];
        let expected: Vec<u32> = (0..12).map(|i| (first + i / 4) % 3).collect();
        assert_eq!(queues, expected);
        assert_eq!(chooser.choose(None, 30, 3), first, "round the queues");
        // Keys still choose by hash, and do not move the sticky queue on.
        for i in 0..100u32 {
            let key = format!("user-{i}");
            assert_eq!(
                chooser.choose(Some(key.as_bytes()), 30, 8),
                key_queue(key.as_bytes(), 8)
            );
        }
        assert_eq!(chooser.choose(None, 30, 3), first);
        // Every queue gets the same share over time.
        let mut counts = [0u32; 4];
        let even = QueueChooser::with_sticky_limit(Partitioner::Sticky, 1000);
        for _ in 0..40_000 {
            counts[even.choose(None, 100, 4) as usize] += 1;
        }
        assert_eq!(counts, [10_000; 4]);
    }
}
