//! A leftover empty segment (a segment creation that failed after its rename) in
//! front of the log does not make recovery cut the log.

use bytes::Bytes;
use raftmq_store::{CommitLog, Entry, EntryKind, LogConfig, LogIndex, Term};

fn entry(i: u64) -> Entry {
    Entry {
        index: LogIndex(i),
        term: Term(2),
        kind: EntryKind::Messages,
        body: Bytes::from(vec![7u8; 3000]),
    }
}

#[test]
fn an_empty_leftover_segment_before_the_log_is_removed_not_taken_for_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 64 * 1024,
        max_entry_bytes: 32 * 1024,
        ..LogConfig::default()
    };
    let (mut log, _) = CommitLog::open(dir.path(), config.clone()).unwrap();
    for i in 1..=10 {
        log.append(&[entry(i)]).unwrap();
    }
    log.reset(LogIndex(47)).unwrap();
    for i in 47..=120 {
        log.append(&[entry(i)]).unwrap();
    }
    log.sync().unwrap();
    drop(log);
    // A preallocated, never written segment at base 1.
    let leftover = dir.path().join("00000000000000000001.log");
    std::fs::File::create(&leftover)
        .unwrap()
        .set_len(64 * 1024)
        .unwrap();

    let (log, report) = CommitLog::open(dir.path(), config).unwrap();
    assert_eq!(
        (log.first_index(), log.last_index()),
        (LogIndex(47), LogIndex(120)),
        "{report}"
    );
    assert!(!leftover.exists());
    assert_eq!(log.entry(LogIndex(100)).unwrap().body.len(), 3000);
}
