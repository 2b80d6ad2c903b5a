//! Reading several queues with one long poll: what a native `FetchMany` and a
//! Kafka `Fetch` (many partitions) both are. Each part is handed to its queue's
//! group as a fetch of its own (authorized and fenced there, as a single fetch
//! is); the long poll is shared, so a consumer of thousands of queues holds one
//! request per leader instead of one per queue.

use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use raftmq_proto::pb;

use crate::service::Service;

/// Grace beyond `max_wait` before the long poll gives up on the groups' answers
/// (each part's own wait ends at `max_wait`; this only covers a stuck group).
const ANSWER_GRACE: Duration = Duration::from_millis(100);

/// One part's answer.
pub type PartResult = Result<pb::FetchResponse, pb::Error>;

/// Bytes of batches in a part's answer.
pub fn part_bytes(result: &PartResult) -> usize {
    match result {
        Ok(f) => f.batches.iter().map(|b| b.batch.len()).sum(),
        Err(_) => 0,
    }
}

/// Reads every part at once without waiting; when that finds fewer than
/// `min_bytes` in all and `max_wait_ms` > 0, long-polls every part and, as soon as
/// one has data (or the wait ends), reads them all again without waiting. The
/// answers are in the order of `parts`. Each part's own `max_wait_ms` and
/// `min_bytes` are replaced.
pub async fn fetch_many(
    service: &Service,
    parts: &[pb::FetchRequest],
    max_wait_ms: u32,
    min_bytes: u32,
) -> Vec<PartResult> {
    let min_bytes = min_bytes.max(1) as usize;
    let started = tokio::time::Instant::now();
    let wait = Duration::from_millis(u64::from(max_wait_ms));
    let mut results = read_all(service, parts, 0).await;
    // Until `min_bytes` are there or the wait is over: wait for any part to get
    // data, then read them all again.
    while results.iter().map(part_bytes).sum::<usize>() < min_bytes && !parts.is_empty() {
        let left = wait.saturating_sub(started.elapsed());
        if left.is_zero() {
            break;
        }
        let left_ms = u32::try_from(left.as_millis()).unwrap_or(u32::MAX).max(1);
        let mut polls: FuturesUnordered<_> = parts
            .iter()
            .map(|p| read_one(service, p, left_ms, 1))
            .collect();
        let deadline = tokio::time::sleep(left + ANSWER_GRACE);
        tokio::pin!(deadline);
        let woken = loop {
            tokio::select! {
                _ = &mut deadline => break false,
                next = polls.next() => match next {
                    None => break false,
                    Some(result) if part_bytes(&result) > 0 => break true,
                    Some(_) => {}
                },
            }
        };
        // The others stop waiting: their groups drop them (closed responders).
        drop(polls);
        if !woken {
            break;
        }
        results = read_all(service, parts, 0).await;
    }
    results
}

/// Every part read at once without waiting, in order.
async fn read_all(service: &Service, parts: &[pb::FetchRequest], wait_ms: u32) -> Vec<PartResult> {
    futures::future::join_all(parts.iter().map(|p| read_one(service, p, wait_ms, 1))).await
}

async fn read_one(
    service: &Service,
    part: &pb::FetchRequest,
    max_wait_ms: u32,
    min_bytes: u32,
) -> PartResult {
    let body = pb::request::Body::Fetch(pb::FetchRequest {
        max_wait_ms,
        min_bytes,
        ..part.clone()
    });
    match service.call(body).await {
        Ok(pb::response::Body::Fetch(f)) => Ok(f),
        Ok(_) => Err(pb::Error::new(
            pb::ErrorCode::InvalidRequest,
            "unexpected answer to a fetch",
        )),
        Err(failure) => Err(failure.error),
    }
}

/// The native answer: each part's result, with batches past `max_bytes` in all
/// left out (that part answered empty, with its queue's marks, to be read by the
/// next request); the first part with data is kept whatever its size. Batches a
/// Kafka producer stored are converted to the native format.
pub fn native_answer(results: Vec<PartResult>, max_bytes: u32) -> pb::FetchManyResponse {
    let mut budget = max_bytes.max(1) as usize;
    let mut first = true;
    let results = results
        .into_iter()
        .map(|result| {
            let size = part_bytes(&result);
            match result {
                Ok(mut fetch) => {
                    if size > 0 {
                        if first || size <= budget {
                            first = false;
                            budget = budget.saturating_sub(size);
                        } else {
                            fetch.batches.clear();
                        }
                    }
                    match crate::kafka::batches_for_native(&mut fetch) {
                        Ok(()) => pb::FetchPartResult {
                            fetch: Some(fetch),
                            error: None,
                        },
                        Err(error) => pb::FetchPartResult {
                            fetch: None,
                            error: Some(error),
                        },
                    }
                }
                Err(error) => pb::FetchPartResult {
                    fetch: None,
                    error: Some(error),
                },
            }
        })
        .collect();
    pb::FetchManyResponse { results }
}
