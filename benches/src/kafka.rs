//! `--protocol kafka`: the produce workload through the broker's Kafka port with a
//! real Kafka client (librdkafka, through the `rdkafka` crate), so the same run
//! shape measures both protocols.
//!
//! Each producer is a librdkafka producer with its own background threads; the
//! loop sends value after value to partition `i mod queues` (as the native
//! round-robin partitioner spreads them), keeping at most `--window` messages
//! unacknowledged, and a delivery callback records send → acknowledgement latency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::{new_histogram, AcksArg, Args, CompressionArg};

/// Counts and times deliveries.
struct Deliveries {
    /// Send times are nanoseconds since this instant (the delivery opaque, so a
    /// message costs no allocation of ours).
    epoch: Instant,
    in_flight: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
    latency: Mutex<Histogram<u64>>,
    progress: Option<Arc<AtomicU64>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_ns: usize) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        match result {
            Ok(_) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
                let now = self.epoch.elapsed().as_nanos() as u64;
                let us = (now.saturating_sub(sent_ns as u64) / 1000).max(1);
                if let Ok(mut h) = self.latency.lock() {
                    let _ = h.record(us);
                }
                if let Some(p) = &self.progress {
                    p.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Runs the producers over the Kafka port; returns messages acknowledged and the
/// latency histogram (µs).
pub fn produce_phase(
    args: &Args,
    kafka_bootstrap: &str,
    queues: u32,
    progress: Option<Arc<AtomicU64>>,
) -> anyhow::Result<(u64, Option<Histogram<u64>>)> {
    let producers = args.producers.max(1);
    let per_producer = args.count / u64::from(producers);
    let deadline = args
        .duration
        .map(|d| Instant::now() + Duration::from_secs_f64(d));
    let mut threads = Vec::new();
    for _ in 0..producers {
        let args = args.clone();
        let bootstrap = kafka_bootstrap.to_string();
        let progress = progress.clone();
        threads.push(std::thread::spawn(move || {
            produce_loop(&args, &bootstrap, queues, per_producer, deadline, progress)
        }));
    }
    let mut total = 0;
    let mut histogram = new_histogram();
    for t in threads {
        let (n, h) = t
            .join()
            .map_err(|_| anyhow::anyhow!("a producer thread panicked"))??;
        total += n;
        histogram.add(h)?;
    }
    Ok((total, Some(histogram)))
}

fn produce_loop(
    args: &Args,
    bootstrap: &str,
    queues: u32,
    count: u64,
    deadline: Option<Instant>,
    progress: Option<Arc<AtomicU64>>,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let context = Deliveries {
        epoch: Instant::now(),
        in_flight: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        latency: Mutex::new(new_histogram()),
        progress,
    };
    let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "acks",
            match args.acks {
                AcksArg::Quorum => "all",
                AcksArg::Leader => "1",
            },
        )
        .set("linger.ms", format!("{}", args.linger_ms))
        .set("batch.size", args.batch_bytes.to_string())
        .set("batch.num.messages", "1000000")
        .set("queue.buffering.max.messages", "2000000")
        .set("queue.buffering.max.kbytes", "2097151")
        .set(
            "max.in.flight.requests.per.connection",
            args.max_in_flight.max(1).to_string(),
        )
        .set("enable.idempotence", "false")
        .set(
            "compression.type",
            match args.compression {
                CompressionArg::None => "none",
                CompressionArg::Lz4 => "lz4",
                CompressionArg::Zstd => "zstd",
            },
        )
        .create_with_context(context)
        .context("a librdkafka producer")?;
    let mut values = crate::Values::new(args.message_size, args.payload);
    let window = args.window.max(1) as u64;
    let mut sent = 0u64;
    while sent < count && deadline.is_none_or(|d| Instant::now() < d) {
        if producer.context().in_flight.load(Ordering::Relaxed) >= window {
            producer.poll(Duration::from_micros(100));
            continue;
        }
        let partition = (sent % u64::from(queues.max(1))) as i32;
        producer.context().in_flight.fetch_add(1, Ordering::Relaxed);
        let sent_ns = producer.context().epoch.elapsed().as_nanos() as usize;
        let value = values.next(sent_ns as u64);
        let record = BaseRecord::with_opaque_to(&args.topic, sent_ns)
            .payload(&value[..])
            .partition(partition);
        match producer.send::<(), [u8]>(record) {
            Ok(()) => sent += 1,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                producer.context().in_flight.fetch_sub(1, Ordering::Relaxed);
                producer.poll(Duration::from_millis(1));
            }
            Err((e, _)) => bail!("send failed: {e}"),
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .context("flushing the producer")?;
    let failed = producer.context().failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} messages were not acknowledged");
    }
    let acked = producer.context().acked.load(Ordering::Relaxed);
    let histogram = producer
        .context()
        .latency
        .lock()
        .map_err(|_| anyhow::anyhow!("latency lock poisoned"))?
        .clone();
    Ok((acked, histogram))
}
