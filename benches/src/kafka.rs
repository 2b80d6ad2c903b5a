//! `--protocol kafka`: the produce workload through the broker's Kafka port with a
//! real Kafka client (librdkafka, through the `rdkafka` crate), so the same run
//! shape measures both protocols.
//!
//! Each producer is a librdkafka producer with its own background threads. One
//! thread per producer sends value after value to partition `i mod queues` (as
//! the native round-robin partitioner spreads them), keeping at most `--window`
//! messages unacknowledged, and serves librdkafka's delivery reports itself
//! between sends, as librdkafka's `rdkafka_performance` does: no extra thread
//! takes turns on the cores, and a report's latency is stamped once per report
//! (the answer to one produce request), which is when its messages were
//! acknowledged.
//!
//! Messages are handed to librdkafka with `rd_kafka_produce_batch`, up to
//! [`HANDOFF`] at a time (`--kafka-send batch`, the default): librdkafka's own API
//! for a producer that has many messages ready, which takes the partition queue's
//! lock once per call instead of once per message. `--kafka-send single` uses the
//! per-message `rd_kafka_producev` (the `rdkafka` crate's `send`), as most
//! applications do; both go through the same librdkafka batching, request and
//! acknowledgement path to the broker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use rdkafka::bindings as rd;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use crate::{new_histogram, AcksArg, Args, CompressionArg, KafkaSendArg};

/// Messages handed to librdkafka per `rd_kafka_produce_batch` call.
const HANDOFF: usize = 1024;

/// The producer's context. Delivery reports never reach it: [`Deliveries`]
/// takes them from librdkafka's queue itself. It fixes the delivery opaque's type
/// (the send time, so a message costs no allocation of ours).
struct Quiet;

impl ClientContext for Quiet {}

impl ProducerContext for Quiet {
    type DeliveryOpaque = usize;

    fn delivery(&self, _: &DeliveryResult<'_>, _: usize) {}
}

/// Takes delivery reports from the producer's main queue, counts and times them.
struct Deliveries {
    queue: *mut rd::rd_kafka_queue_t,
    /// Send times are nanoseconds since this instant (each message's opaque).
    epoch: Instant,
    in_flight: u64,
    acked: u64,
    failed: u64,
    /// The first failure's reason (a delivery error or a fatal client error).
    failure: Option<String>,
    latency: Histogram<u64>,
    progress: Option<Arc<AtomicU64>>,
}

impl Deliveries {
    fn new(producer: &BaseProducer<Quiet>, progress: Option<Arc<AtomicU64>>) -> Self {
        // SAFETY: the client pointer is live while `producer` is, and the queue
        // handle is destroyed in `Drop`, which runs before the producer's.
        let queue = unsafe { rd::rd_kafka_queue_get_main(producer.client().native_ptr()) };
        Deliveries {
            queue,
            epoch: Instant::now(),
            in_flight: 0,
            acked: 0,
            failed: 0,
            failure: None,
            latency: new_histogram(),
            progress,
        }
    }

    /// Serves every report ready, first waiting up to `wait` for one.
    fn serve(&mut self, wait: Duration) {
        let mut timeout_ms = wait.as_millis().min(i32::MAX as u128) as i32;
        loop {
            // SAFETY: `queue` is live (see `new`); an event returned is ours until
            // destroyed below, and its messages are read before that.
            let event = unsafe { rd::rd_kafka_queue_poll(self.queue, timeout_ms) };
            if event.is_null() {
                return;
            }
            timeout_ms = 0;
            // SAFETY: as above.
            match unsafe { rd::rd_kafka_event_type(event) } {
                rd::RD_KAFKA_EVENT_DR => self.on_reports(event),
                rd::RD_KAFKA_EVENT_ERROR => {
                    // SAFETY: as above; the string lives as long as the event.
                    let (fatal, reason) = unsafe {
                        (
                            rd::rd_kafka_event_error_is_fatal(event) != 0,
                            std::ffi::CStr::from_ptr(rd::rd_kafka_event_error_string(event))
                                .to_string_lossy()
                                .into_owned(),
                        )
                    };
                    if fatal {
                        self.failure.get_or_insert(reason);
                    }
                }
                _ => {}
            }
            // SAFETY: the event came from `rd_kafka_queue_poll` and is destroyed once.
            unsafe { rd::rd_kafka_event_destroy(event) };
        }
    }

    /// One produce request's answer: every message in it was acknowledged (or
    /// failed) now.
    fn on_reports(&mut self, event: *mut rd::rd_kafka_event_t) {
        let now = self.epoch.elapsed().as_nanos() as u64;
        let mut acked = 0;
        loop {
            // SAFETY: `event` is a live delivery-report event (see `serve`).
            let message = unsafe { rd::rd_kafka_event_message_next(event) };
            if message.is_null() {
                break;
            }
            // SAFETY: a non-null message of a live event.
            let message = unsafe { &*message };
            self.in_flight -= 1;
            if message.err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                acked += 1;
                let sent_ns = message._private as u64;
                let us = (now.saturating_sub(sent_ns) / 1000).max(1);
                let _ = self.latency.record(us);
            } else {
                self.failed += 1;
                self.failure
                    .get_or_insert_with(|| format!("a message failed: {:?}", message.err));
            }
        }
        self.acked += acked;
        if let Some(p) = &self.progress {
            p.fetch_add(acked, Ordering::Relaxed);
        }
    }
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        // SAFETY: the handle came from `rd_kafka_queue_get_main` and is destroyed
        // once, before the producer (declared before `Deliveries` in
        // `produce_loop`, so dropped after it).
        unsafe { rd::rd_kafka_queue_destroy(self.queue) };
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
    let producer: BaseProducer<Quiet> = ClientConfig::new()
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
        .create_with_context(Quiet)
        .context("a librdkafka producer")?;
    let mut deliveries = Deliveries::new(&producer, progress);
    let topic = match args.kafka_send {
        KafkaSendArg::Batch => Some(BatchTopic::new(&producer, &args.topic)?),
        KafkaSendArg::Single => None,
    };
    let mut values = crate::Values::new(args.message_size, args.payload);
    let window = args.window.max(1) as u64;
    let mut sent = 0u64;
    let mut values_held = Vec::with_capacity(HANDOFF);
    let mut messages = Vec::with_capacity(HANDOFF);
    while sent < count && deadline.is_none_or(|d| Instant::now() < d) {
        if let Some(reason) = &deliveries.failure {
            bail!("{reason}");
        }
        let room = window
            .saturating_sub(deliveries.in_flight)
            .min(count - sent);
        if room == 0 {
            deliveries.serve(Duration::from_millis(100));
            continue;
        }
        let n = room.min(HANDOFF as u64);
        let sent_ns = deliveries.epoch.elapsed().as_nanos() as usize;
        let taken = match &topic {
            Some(topic) => {
                values_held.clear();
                for _ in 0..n {
                    values_held.push(values.next(sent_ns as u64));
                }
                topic.produce(&mut messages, &values_held, sent, queues, sent_ns)?
            }
            None => {
                let mut taken = 0;
                while taken < n {
                    let partition = ((sent + taken) % u64::from(queues.max(1))) as i32;
                    let value = values.next(sent_ns as u64);
                    let record = BaseRecord::with_opaque_to(&args.topic, sent_ns)
                        .payload(&value[..])
                        .partition(partition);
                    match producer.send::<(), [u8]>(record) {
                        Ok(()) => taken += 1,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                            break
                        }
                        Err((e, _)) => bail!("send failed: {e}"),
                    }
                }
                taken
            }
        };
        sent += taken;
        deliveries.in_flight += taken;
        // A full local queue refused the rest: wait for reports to make room.
        let wait = if taken < n {
            Duration::from_millis(1)
        } else {
            Duration::ZERO
        };
        deliveries.serve(wait);
    }
    drop(topic);
    let flush_deadline = Instant::now() + Duration::from_secs(120);
    while deliveries.in_flight > 0 && Instant::now() < flush_deadline {
        if let Some(reason) = &deliveries.failure {
            bail!("{reason}");
        }
        deliveries.serve(Duration::from_millis(100));
    }
    if deliveries.in_flight > 0 {
        bail!(
            "{} messages were still unacknowledged after 120 s",
            deliveries.in_flight
        );
    }
    if deliveries.failed > 0 {
        bail!(
            "{} messages were not acknowledged ({})",
            deliveries.failed,
            deliveries.failure.as_deref().unwrap_or("no reason given")
        );
    }
    Ok((deliveries.acked, deliveries.latency.clone()))
}

/// A librdkafka topic handle for `rd_kafka_produce_batch`, destroyed on drop
/// (before its producer, which outlives it by borrow).
struct BatchTopic<'a> {
    handle: *mut rd::rd_kafka_topic_t,
    _producer: &'a BaseProducer<Quiet>,
}

impl<'a> BatchTopic<'a> {
    fn new(producer: &'a BaseProducer<Quiet>, topic: &str) -> anyhow::Result<Self> {
        let name = std::ffi::CString::new(topic).context("a topic name without NUL")?;
        // SAFETY: the client pointer is live for as long as `producer`, which this
        // handle borrows; a null configuration takes the producer's defaults.
        let handle = unsafe {
            rd::rd_kafka_topic_new(
                producer.client().native_ptr(),
                name.as_ptr(),
                std::ptr::null_mut(),
            )
        };
        if handle.is_null() {
            bail!("librdkafka refused a handle for topic {topic}");
        }
        Ok(BatchTopic {
            handle,
            _producer: producer,
        })
    }

    /// Hands `values` to librdkafka, message `i` to partition `(first + i) mod
    /// queues`, each with `sent_ns` as its delivery opaque; returns how many were
    /// taken (a full local queue refuses the rest, which are not sent).
    fn produce(
        &self,
        messages: &mut Vec<rd::rd_kafka_message_t>,
        values: &[bytes::Bytes],
        first: u64,
        queues: u32,
        sent_ns: usize,
    ) -> anyhow::Result<u64> {
        messages.clear();
        for (i, value) in values.iter().enumerate() {
            messages.push(rd::rd_kafka_message_t {
                err: rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR,
                rkt: std::ptr::null_mut(),
                partition: ((first + i as u64) % u64::from(queues.max(1))) as i32,
                payload: value.as_ptr() as *mut std::ffi::c_void,
                len: value.len(),
                key: std::ptr::null_mut(),
                key_len: 0,
                offset: 0,
                _private: sent_ns as *mut std::ffi::c_void,
            });
        }
        // SAFETY: `messages` holds `values.len()` initialized entries whose
        // payloads live in `values` for the whole call; with `F_COPY` librdkafka
        // copies each payload before returning and keeps no pointer into them.
        let taken = unsafe {
            rd::rd_kafka_produce_batch(
                self.handle,
                0,
                rd::RD_KAFKA_MSG_F_COPY | rd::RD_KAFKA_MSG_F_PARTITION,
                messages.as_mut_ptr(),
                messages.len() as i32,
            )
        };
        let taken = u64::try_from(taken).unwrap_or(0);
        if taken < messages.len() as u64 {
            let refusal = messages
                .iter()
                .find(|m| m.err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR)
                .map(|m| m.err);
            match refusal {
                Some(rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__QUEUE_FULL) | None => {}
                Some(e) => bail!("librdkafka refused a message: {e:?}"),
            }
        }
        Ok(taken)
    }
}

impl Drop for BatchTopic<'_> {
    fn drop(&mut self) {
        // SAFETY: the handle came from `rd_kafka_topic_new` and is destroyed once.
        unsafe { rd::rd_kafka_topic_destroy(self.handle) };
    }
}
