//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use bytes::Bytes;
use raftmq_store::{CommitLog, Entry, EntryKind, LogConfig, LogIndex, RecoveryReport, Term};

/// Small segments so tests roll often.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        max_entry_bytes: 1024,
        ..LogConfig::default()
    }
}

/// A deterministic entry: the body repeats a pattern derived from the index.
pub fn entry(index: u64, term: u64, body_len: usize) -> Entry {
    let kind = match index % 3 {
        0 => EntryKind::Messages,
        1 => EntryKind::Command,
        _ => EntryKind::Noop,
    };
    let body: Vec<u8> = (0..body_len)
        .map(|k| (index as usize * 31 + k) as u8)
        .collect();
    Entry {
        index: LogIndex(index),
        term: Term(term),
        kind,
        body: Bytes::from(body),
    }
}

/// Entries `from..=to` in term `term`, bodies of `len` bytes.
pub fn entries(from: u64, to: u64, term: u64, len: usize) -> Vec<Entry> {
    (from..=to).map(|i| entry(i, term, len)).collect()
}

pub fn open(dir: &Path, config: LogConfig) -> (CommitLog, RecoveryReport) {
    CommitLog::open(dir, config).expect("open")
}

/// Every stored entry, in order.
pub fn all(log: &CommitLog) -> Vec<Entry> {
    if log.is_empty() {
        return Vec::new();
    }
    (log.first_index().0..=log.last_index().0)
        .map(|i| log.entry(LogIndex(i)).expect("read"))
        .collect()
}

/// The bytes of every file in `dir`, by name.
pub fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for item in fs::read_dir(dir).unwrap() {
        let item = item.unwrap();
        out.insert(
            item.file_name().to_string_lossy().into_owned(),
            fs::read(item.path()).unwrap(),
        );
    }
    out
}

/// Replaces the content of `dir` with `files`.
pub fn restore(dir: &Path, files: &BTreeMap<String, Vec<u8>>) {
    for item in fs::read_dir(dir).unwrap() {
        fs::remove_file(item.unwrap().path()).unwrap();
    }
    for (name, bytes) in files {
        fs::write(dir.join(name), bytes).unwrap();
    }
}

/// The only segment file's name in `dir` with the given base.
pub fn segment_name(base: u64) -> String {
    format!("{base:020}.log")
}
