//! Generates the Rust types from `proto/raftmq.proto` with protox (a protobuf compiler
//! in pure Rust), so no `protoc` is needed on any machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["raftmq.proto"], ["proto"])?;
    prost_build::Config::new()
        // Every `bytes` field decodes as a `bytes::Bytes` slice of the frame: record
        // batches and Raft entry bodies are never copied on the way in.
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
