//! The README shows `examples/quickstart.rs` (which the test suite compiles); this
//! keeps the two from drifting apart.

#[test]
fn the_readme_shows_the_compiled_quickstart_example() {
    let readme = include_str!("../../README.md");
    let example = include_str!("../examples/quickstart.rs");
    let code = &example[example.find("use raftmq_client").expect("example imports")..];
    assert!(
        readme.contains(code.trim_end()),
        "README.md's Rust example differs from client/examples/quickstart.rs"
    );
}
