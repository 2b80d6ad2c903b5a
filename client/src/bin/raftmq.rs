//! `raftmq`: the command-line tool.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("raftmq: the command-line tool is not built yet")
}
