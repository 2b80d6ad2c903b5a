//! `raftmq-bench`: throughput and latency benchmarks.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("raftmq-bench: no benchmark is built yet")
}
