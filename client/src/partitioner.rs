//! Choosing a queue for a message.

use std::sync::atomic::{AtomicU32, Ordering};

/// How a [`Producer`](crate::Producer) picks the queue of a message that does not
/// name one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Partitioner {
    /// Keyed messages go to `murmur2(key) & 0x7fffffff % queues` (Kafka's default
    /// partitioner hash, so the same key lands on the same queue across clients and
    /// restarts, and on the same partition number Kafka would choose); messages
    /// without a key go round robin.
    #[default]
    KeyHash,
    /// Every message goes round robin, keys ignored.
    RoundRobin,
}

/// Picks queues; shared by all sends of a producer.
#[derive(Debug, Default)]
pub(crate) struct QueueChooser {
    partitioner: Partitioner,
    next: AtomicU32,
}

impl QueueChooser {
    pub(crate) fn new(partitioner: Partitioner) -> Self {
        QueueChooser {
            partitioner,
            next: AtomicU32::new(0),
        }
    }

    /// The queue for a message with `key` in a topic of `queues` queues (> 0).
    pub(crate) fn choose(&self, key: Option<&[u8]>, queues: u32) -> u32 {
        debug_assert!(queues > 0);
        match (self.partitioner, key) {
            (Partitioner::KeyHash, Some(key)) => key_queue(key, queues),
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
            let q = chooser.choose(Some(key.as_bytes()), 8);
            assert_eq!(q, chooser.choose(Some(key.as_bytes()), 8));
            counts[q as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }

    #[test]
    fn unkeyed_messages_go_round_robin() {
        let chooser = QueueChooser::new(Partitioner::KeyHash);
        let queues: Vec<u32> = (0..6).map(|_| chooser.choose(None, 3)).collect();
        assert_eq!(queues, [0, 1, 2, 0, 1, 2]);
        let rr = QueueChooser::new(Partitioner::RoundRobin);
        let queues: Vec<u32> = (0..4).map(|_| rr.choose(Some(b"k"), 2)).collect();
        assert_eq!(queues, [0, 1, 0, 1]);
    }
}
