//! Loopback ports for test brokers, chosen below the kernel's ephemeral range.
//!
//! Why: a port taken with `bind("127.0.0.1:0")` comes from the ephemeral range,
//! the range the kernel also draws the source ports of outgoing connections from.
//! A node stopped and restarted on its port could find it taken by a client
//! connection of another test running at the same time ("Address already in
//! use"), which failed a fault-injection run. Below the range, a port is only
//! ever taken by a bind, and a random pick makes two tests choosing the same one
//! unlikely.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};

/// Lowest port the picks use.
const LOWEST: u16 = 20_000;

/// A free loopback port.
pub fn free_port() -> SocketAddr {
    free_consecutive(1)
}

/// The first of `count` consecutive free loopback ports.
pub fn free_consecutive(count: u16) -> SocketAddr {
    let top = ephemeral_low();
    if top > LOWEST + count + 100 {
        for _ in 0..1_000 {
            let port = LOWEST + (next_random() % u64::from(top - count - LOWEST)) as u16;
            if (0..count).all(|i| TcpListener::bind(("127.0.0.1", port + i)).is_ok()) {
                return SocketAddr::from(([127, 0, 0, 1], port));
            }
        }
    }
    // No room below the ephemeral range: let the kernel choose.
    for _ in 0..100 {
        let first = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind an ephemeral port");
        let port = first.port();
        if u32::from(port) + u32::from(count) <= u32::from(u16::MAX)
            && (1..count).all(|i| TcpListener::bind(("127.0.0.1", port + i)).is_ok())
        {
            return first;
        }
    }
    panic!("no {count} consecutive free ports on loopback");
}

/// The first port of the kernel's ephemeral range (32768 unless configured).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// xorshift64*, seeded per process from the clock and the pid.
fn next_random() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        x = nanos ^ (u64::from(std::process::id()) << 32) | 1;
    }
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    STATE.store(x, Ordering::Relaxed);
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}
