//! CPU time and memory of processes, from /proc.

use std::collections::BTreeMap;

/// Clock ticks per second of /proc/*/stat times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU seconds (user + system) of a process, or `None` if it is gone.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may contain spaces) start after ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_second())
}

/// Anonymous resident memory (RssAnon, not the mapped files) in KiB.
pub fn rss_anon_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("RssAnon:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU seconds of this process and of each server.
#[derive(Debug, Clone, Default)]
pub struct CpuSample {
    pub client: f64,
    pub servers: BTreeMap<u32, f64>,
}

/// Samples now.
pub fn sample(server_pids: &[u32]) -> CpuSample {
    CpuSample {
        client: cpu_seconds(None).unwrap_or(0.0),
        servers: server_pids
            .iter()
            .filter_map(|&p| Some((p, cpu_seconds(Some(p))?)))
            .collect(),
    }
}
