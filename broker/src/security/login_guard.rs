//! Slows down password guessing. Every failed login costs its connection
//! [`FAILED_LOGIN_DELAY`] and the connection itself; an address that keeps
//! failing has its further login attempts spaced out, more the more it fails, so
//! opening many connections in parallel does not multiply its guesses. The record
//! of an address is forgotten a while after its last failure.
//!
//! Keyed by address, not by user: a lock-out per user would let anyone lock a
//! user out. A successful login does not clear the record (one valid account
//! must not buy an attacker more guesses at the others).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a failed login waits before its answer (and the connection's close).
pub const FAILED_LOGIN_DELAY: Duration = Duration::from_millis(500);
/// How long a connection to a broker that requires logins may stay without one
/// (a connection that sends node messages is exempt).
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Failures an address may have before its attempts are spaced out.
const FREE_FAILURES: u32 = 5;
/// The spacing after the first failure beyond the free ones; doubles with each
/// further failure up to [`MAX_SPACING`].
const FIRST_SPACING: Duration = Duration::from_millis(200);
const MAX_SPACING: Duration = Duration::from_secs(2);
/// An address's record is forgotten this long after its last failure.
const FORGET_AFTER: Duration = Duration::from_secs(60);
/// Addresses remembered at most (a bound on memory; the stalest go first).
const MAX_ADDRESSES: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    last_failure: Instant,
    /// The earliest time the next login attempt from the address may proceed.
    next_attempt: Instant,
}

/// Failed logins per client address.
#[derive(Debug, Default)]
pub struct LoginGuard {
    records: Mutex<HashMap<IpAddr, Record>>,
}

impl LoginGuard {
    /// How long a login attempt from `address` starting at `now` must wait first
    /// (zero unless the address has failed often lately). Reserves the attempt's
    /// turn: parallel attempts from one address wait one after the other.
    pub fn wait_before_attempt(&self, address: IpAddr, now: Instant) -> Duration {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let Some(record) = records.get_mut(&address) else {
            return Duration::ZERO;
        };
        if now.saturating_duration_since(record.last_failure) > FORGET_AFTER {
            records.remove(&address);
            return Duration::ZERO;
        }
        if record.failures < FREE_FAILURES {
            return Duration::ZERO;
        }
        let turn = record.next_attempt.max(now);
        record.next_attempt = turn + spacing(record.failures);
        turn - now
    }

    /// A login from `address` failed at `now`.
    pub fn failed(&self, address: IpAddr, now: Instant) {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() >= MAX_ADDRESSES && !records.contains_key(&address) {
            records.retain(|_, r| now.saturating_duration_since(r.last_failure) <= FORGET_AFTER);
            if records.len() >= MAX_ADDRESSES {
                let stalest = records
                    .iter()
                    .min_by_key(|(_, r)| r.last_failure)
                    .map(|(a, _)| *a);
                if let Some(a) = stalest {
                    records.remove(&a);
                }
            }
        }
        let record = records.entry(address).or_insert(Record {
            failures: 0,
            last_failure: now,
            next_attempt: now,
        });
        if now.saturating_duration_since(record.last_failure) > FORGET_AFTER {
            record.failures = 0;
        }
        record.failures = record.failures.saturating_add(1);
        record.last_failure = now;
    }

    /// Addresses currently remembered.
    pub fn addresses(&self) -> usize {
        self.records.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl LoginGuard {
    /// Waits until a login attempt from `address` may proceed.
    pub async fn take_turn(&self, address: IpAddr) {
        let wait = self.wait_before_attempt(address, Instant::now());
        if !wait.is_zero() {
            tracing::debug!(%address, ?wait, "login attempt held back after failed logins");
            tokio::time::sleep(wait).await;
        }
    }

    /// Records a failed login from `address` and makes its connection wait
    /// [`FAILED_LOGIN_DELAY`].
    pub async fn penalize(&self, address: IpAddr) {
        self.failed(address, Instant::now());
        tokio::time::sleep(FAILED_LOGIN_DELAY).await;
    }
}

/// The spacing between attempts of an address with `failures` recent failures.
fn spacing(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(FREE_FAILURES).min(16);
    FIRST_SPACING
        .saturating_mul(1 << doublings)
        .min(MAX_SPACING)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_few_failures_cost_nothing_more_than_their_delay() {
        let guard = LoginGuard::default();
        let t = Instant::now();
        for _ in 0..FREE_FAILURES - 1 {
            guard.failed(ip(1), t);
        }
        assert_eq!(guard.wait_before_attempt(ip(1), t), Duration::ZERO);
        assert_eq!(guard.wait_before_attempt(ip(2), t), Duration::ZERO);
    }

    #[test]
    fn parallel_attempts_from_a_failing_address_take_turns() {
        let guard = LoginGuard::default();
        let t = Instant::now();
        for _ in 0..FREE_FAILURES {
            guard.failed(ip(1), t);
        }
        let waits: Vec<Duration> = (0..4)
            .map(|_| guard.wait_before_attempt(ip(1), t))
            .collect();
        let step = spacing(FREE_FAILURES);
        assert_eq!(waits, vec![Duration::ZERO, step, step * 2, step * 3]);
        // Another address is not held up.
        assert_eq!(guard.wait_before_attempt(ip(2), t), Duration::ZERO);
    }

    #[test]
    fn spacing_grows_with_failures_up_to_a_bound() {
        assert_eq!(spacing(FREE_FAILURES), FIRST_SPACING);
        assert_eq!(spacing(FREE_FAILURES + 1), FIRST_SPACING * 2);
        assert!(spacing(FREE_FAILURES + 2) > spacing(FREE_FAILURES + 1));
        assert_eq!(spacing(u32::MAX), MAX_SPACING);
    }

    #[test]
    fn an_address_is_forgotten_a_while_after_its_last_failure() {
        let guard = LoginGuard::default();
        let t = Instant::now();
        for _ in 0..FREE_FAILURES + 3 {
            guard.failed(ip(1), t);
        }
        assert_eq!(guard.wait_before_attempt(ip(1), t), Duration::ZERO);
        assert!(guard.wait_before_attempt(ip(1), t) > Duration::ZERO);
        let later = t + FORGET_AFTER + Duration::from_secs(1);
        assert_eq!(guard.wait_before_attempt(ip(1), later), Duration::ZERO);
        assert_eq!(guard.addresses(), 0);
        // And a failure after that starts the count again.
        guard.failed(ip(1), later);
        assert_eq!(guard.wait_before_attempt(ip(1), later), Duration::ZERO);
    }

    #[test]
    fn memory_is_bounded_by_dropping_the_stalest_address() {
        let guard = LoginGuard::default();
        let t = Instant::now();
        for i in 0..MAX_ADDRESSES + 10 {
            let address = IpAddr::from(std::net::Ipv6Addr::from(i as u128));
            guard.failed(address, t + Duration::from_millis(i as u64));
        }
        assert!(guard.addresses() <= MAX_ADDRESSES);
    }
}
