//! Limits that keep one client from starving the others: byte-rate quotas per
//! principal, and connection counts per client address and in all.
//!
//! Quotas work as Kafka's: a request is never refused for its size; a principal
//! that overdraws its rate is *throttled*: its connection is muted (no further
//! request read, no further answer written) for as long as it takes the rate to
//! pay the debt back. A flood therefore runs at the quota while other principals'
//! requests go on unhindered. Each principal has a bucket of one second's worth of
//! bytes, so bursts up to the rate pass at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Principal;

/// Longest a single throttle lasts (a huge request does not mute a connection
/// for minutes; the rest of its debt is forgotten).
const MAX_THROTTLE: Duration = Duration::from_secs(30);

/// A byte rate per principal.
#[derive(Debug)]
pub struct ByteRate {
    bytes_per_second: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl ByteRate {
    /// `bytes_per_second` for each principal.
    pub fn new(bytes_per_second: u64) -> ByteRate {
        ByteRate {
            bytes_per_second: bytes_per_second.max(1) as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Charges `bytes` to `principal` at `now`; returns how long its connection
    /// must stay muted (zero while within the rate).
    pub fn charge(&self, principal: &str, bytes: u64, now: Instant) -> Duration {
        let rate = self.bytes_per_second;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, at) = buckets.entry(principal.to_owned()).or_insert((rate, now));
        let refill = now.saturating_duration_since(*at).as_secs_f64() * rate;
        *tokens = (*tokens + refill).min(rate) - bytes as f64;
        *at = now;
        if *tokens >= 0.0 {
            return Duration::ZERO;
        }
        let pause = Duration::from_secs_f64(-*tokens / rate);
        if pause > MAX_THROTTLE {
            *tokens = -rate * MAX_THROTTLE.as_secs_f64();
            return MAX_THROTTLE;
        }
        pause
    }
}

/// Produce and fetch rates (none: unlimited). Other nodes are never throttled.
#[derive(Debug, Default)]
pub struct Quotas {
    produce: Option<ByteRate>,
    fetch: Option<ByteRate>,
}

impl Quotas {
    /// Per-principal produce and fetch byte rates (0: unlimited).
    pub fn new(produce_bytes_per_second: u64, fetch_bytes_per_second: u64) -> Quotas {
        let rate = |r: u64| (r > 0).then(|| ByteRate::new(r));
        Quotas {
            produce: rate(produce_bytes_per_second),
            fetch: rate(fetch_bytes_per_second),
        }
    }

    fn charge(rate: &Option<ByteRate>, principal: &Principal, bytes: u64) -> Duration {
        match (rate, principal) {
            (_, Principal::Node(_)) | (None, _) => Duration::ZERO,
            (Some(rate), p) => rate.charge(&p.acl_name(), bytes, Instant::now()),
        }
    }

    /// `principal` produced `bytes`: how long to mute its connection.
    pub fn charge_produce(&self, principal: &Principal, bytes: u64) -> Duration {
        Self::charge(&self.produce, principal, bytes)
    }

    /// `principal` was sent `bytes` of fetched data: how long to hold its answers.
    pub fn charge_fetch(&self, principal: &Principal, bytes: u64) -> Duration {
        Self::charge(&self.fetch, principal, bytes)
    }
}

/// Open connections, in all and per client address.
#[derive(Debug)]
pub struct ConnectionLimits {
    max_total: u32,
    max_per_address: u32,
    total: AtomicU32,
    per_address: Mutex<HashMap<IpAddr, u32>>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct ConnectionSlot {
    limits: Arc<ConnectionLimits>,
    address: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.limits.total.fetch_sub(1, Ordering::AcqRel);
        let mut per = self
            .limits
            .per_address
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.address);
            }
        }
    }
}

impl ConnectionLimits {
    /// At most `max_total` connections, `max_per_address` from one address.
    pub fn new(max_total: u32, max_per_address: u32) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits {
            max_total,
            max_per_address,
            total: AtomicU32::new(0),
            per_address: Mutex::new(HashMap::new()),
        })
    }

    /// A place for a connection from `address`, or why there is none.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Result<ConnectionSlot, String> {
        let mut per = self.per_address.lock().unwrap_or_else(|e| e.into_inner());
        let from_address = per.get(&address).copied().unwrap_or(0);
        if from_address >= self.max_per_address {
            return Err(format!(
                "{address} already has {from_address} connections: raise \
                 --max-connections-per-ip or close idle clients"
            ));
        }
        if self.total.load(Ordering::Acquire) >= self.max_total {
            return Err(format!(
                "{} connections are open: raise --max-connections or close idle clients",
                self.max_total
            ));
        }
        self.total.fetch_add(1, Ordering::AcqRel);
        *per.entry(address).or_insert(0) += 1;
        Ok(ConnectionSlot {
            limits: self.clone(),
            address,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_passes_a_burst_then_throttles_by_the_debt() {
        let rate = ByteRate::new(1_000);
        let t0 = Instant::now();
        assert_eq!(
            rate.charge("a", 1_000, t0),
            Duration::ZERO,
            "a second's burst"
        );
        assert_eq!(rate.charge("a", 500, t0), Duration::from_millis(500));
        assert_eq!(rate.charge("b", 500, t0), Duration::ZERO, "per principal");
        // Half a second later the debt is paid back.
        assert_eq!(
            rate.charge("a", 100, t0 + Duration::from_millis(500)),
            Duration::from_millis(100)
        );
        // Sustained: over 10 s at 10× the rate, the throttles add up to ~10× the time.
        let rate = ByteRate::new(1_000);
        let mut now = t0;
        let mut sent = 0;
        while now < t0 + Duration::from_secs(10) {
            sent += 1_000;
            now += rate.charge("flood", 1_000, now);
        }
        assert!((10_000..=11_000).contains(&sent), "{sent}");
        assert_eq!(rate.charge("x", u64::MAX / 2, t0), MAX_THROTTLE);
    }

    #[test]
    fn connections_are_limited_per_address_and_in_all() {
        let limits = ConnectionLimits::new(3, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let a1 = limits.admit(a).unwrap();
        let _a2 = limits.admit(a).unwrap();
        assert!(limits
            .admit(a)
            .unwrap_err()
            .contains("--max-connections-per-ip"));
        let _b1 = limits.admit(b).unwrap();
        assert!(limits.admit(b).unwrap_err().contains("--max-connections "));
        drop(a1);
        assert!(limits.admit(b).is_ok(), "a place freed");
    }
}
