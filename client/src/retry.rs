//! When and how long to wait before trying a failed request again.
//!
//! The budget is a *deadline* ([`ClientConfig::retry_timeout`], default 30 s), not a
//! count: an election under load or a node restart takes seconds, and a count of
//! quick retries used to run out long before a new leader was ready. Waits grow
//! exponentially from [`ClientConfig::retry_backoff`] to
//! [`ClientConfig::retry_backoff_max`], each drawn at random from its upper half
//! (jitter), so clients that failed together do not come back together.
//!
//! A `NOT_LEADER` answer that names another broker is followed at once, a few times
//! in a row at most (two nodes naming each other during an election must not make
//! a client spin); everything else waits its backoff.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use raftmq_proto::ServerError;

use crate::{ClientConfig, ClientError};

/// Redirects followed back to back before the client waits a backoff anyway.
const IMMEDIATE_REDIRECTS_MAX: u32 = 3;

/// The retry state of one request (or one produce batch) across its attempts.
#[derive(Debug, Clone)]
pub(crate) struct RetryState {
    started: Instant,
    /// Failed attempts so far.
    failures: u32,
    immediate: u32,
}

impl RetryState {
    /// Starts the clock at the first attempt.
    pub(crate) fn start() -> RetryState {
        RetryState {
            started: Instant::now(),
            failures: 0,
            immediate: 0,
        }
    }

    /// Attempts made so far (failed ones).
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// After a retriable failure: how long to wait before the next attempt, or
    /// `None` when the budget (deadline or `max_retries`) is spent. `redirected`:
    /// the failure named a leader that is not the broker just asked.
    pub(crate) fn next_delay(
        &mut self,
        config: &ClientConfig,
        redirected: bool,
    ) -> Option<Duration> {
        self.failures += 1;
        if self.failures > config.max_retries {
            return None;
        }
        let delay = if redirected && self.immediate < IMMEDIATE_REDIRECTS_MAX {
            self.immediate += 1;
            Duration::ZERO
        } else {
            self.immediate = 0;
            jittered(config.backoff(self.failures - 1))
        };
        if self.started.elapsed() + delay > config.retry_timeout {
            return None;
        }
        Some(delay)
    }
}

/// Whether `err` is a `NOT_LEADER` that names a leader.
pub(crate) fn names_leader(err: &ClientError) -> bool {
    matches!(
        err,
        ClientError::Server(ServerError::NotLeader {
            leader_address: Some(_),
            ..
        })
    )
}

/// A duration drawn uniformly from `[d / 2, d]`.
fn jittered(d: Duration) -> Duration {
    let nanos = d.as_nanos().min(u128::from(u64::MAX)) as u64;
    if nanos < 2 {
        return d;
    }
    let half = nanos / 2;
    Duration::from_nanos(half + next_random() % (nanos - half + 1))
}

/// A small process-wide generator (splitmix64 over a counter seeded by the clock):
/// jitter needs spread, not quality.
fn next_random() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut s = STATE.load(Ordering::Relaxed);
    if s == 0 {
        s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
    }
    let next = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
    STATE.store(next, Ordering::Relaxed);
    let mut z = next;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ClientConfig {
        ClientConfig {
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(1),
            retry_timeout: Duration::from_secs(3),
            ..ClientConfig::default()
        }
    }

    #[test]
    fn backoff_grows_with_jitter_within_its_upper_half() {
        let config = config();
        let mut retry = RetryState::start();
        for n in 0..4u32 {
            let full = config.backoff(n);
            let d = retry.next_delay(&config, false).expect("within budget");
            assert!(
                d >= full / 2 && d <= full,
                "{d:?} outside [{full:?}/2, {full:?}]"
            );
        }
    }

    #[test]
    fn redirects_are_immediate_only_a_few_times_in_a_row() {
        let config = config();
        let mut retry = RetryState::start();
        for _ in 0..IMMEDIATE_REDIRECTS_MAX {
            assert_eq!(retry.next_delay(&config, true), Some(Duration::ZERO));
        }
        assert!(retry.next_delay(&config, true).unwrap() > Duration::ZERO);
    }

    #[test]
    fn the_budget_is_a_deadline() {
        let config = ClientConfig {
            retry_backoff: Duration::from_millis(10),
            retry_backoff_max: Duration::from_millis(40),
            retry_timeout: Duration::from_millis(150),
            ..ClientConfig::default()
        };
        let started = Instant::now();
        let mut retry = RetryState::start();
        let mut attempts = 0;
        while let Some(d) = retry.next_delay(&config, false) {
            std::thread::sleep(d);
            attempts += 1;
            assert!(attempts < 100);
        }
        // No wait ever ends past the deadline; a count would have stopped elsewhere.
        assert!(started.elapsed() <= Duration::from_millis(150) + Duration::from_millis(50));
        assert!(attempts >= 3, "{attempts} attempts");
    }

    #[test]
    fn max_retries_still_caps_the_attempts() {
        let config = ClientConfig {
            max_retries: 2,
            ..config()
        };
        let mut retry = RetryState::start();
        assert!(retry.next_delay(&config, true).is_some());
        assert!(retry.next_delay(&config, true).is_some());
        assert!(retry.next_delay(&config, true).is_none());
    }
}
