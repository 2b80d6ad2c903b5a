//! `raftmq-broker`: the server binary.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("raftmq-broker: the server is not built yet")
}
