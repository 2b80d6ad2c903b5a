//! Truncation: durable, never undone by a crash or a reopen.

mod common;

use common::*;
use raftmq_store::{LogIndex, StoreError, Term};

#[test]
fn truncated_entries_never_come_back_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    log.append(&entries(1, 40, 1, 300)).unwrap();
    log.sync().unwrap();
    log.truncate_suffix(LogIndex(15)).unwrap();
    assert_eq!(log.last_index(), LogIndex(14));
    assert_eq!(log.synced_index(), LogIndex(14));
    // Crash right after the truncation: nothing else happens before the reopen.
    drop(log);
    let (mut log, report) = open(dir.path(), small_config());
    assert_eq!(report.cut_at, None, "{report}");
    assert_eq!(all(&log), entries(1, 14, 1, 300));
    log.append(&entries(15, 20, 2, 17)).unwrap();
    log.close().unwrap();
    let (log, _) = open(dir.path(), small_config());
    assert_eq!(
        all(&log),
        [entries(1, 14, 1, 300), entries(15, 20, 2, 17)].concat()
    );
}

#[test]
fn truncating_at_a_segment_boundary_removes_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    log.append(&entries(1, 40, 1, 300)).unwrap();
    log.close().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    let second = (1..40)
        .find(|&i| dir.path().join(segment_name(i)).exists() && i > 1)
        .unwrap();
    log.truncate_suffix(LogIndex(second)).unwrap();
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.last_index(), LogIndex(second - 1));
    drop(log);
    let (log, _) = open(dir.path(), small_config());
    assert_eq!(log.last_index(), LogIndex(second - 1));
    assert!(!dir.path().join(segment_name(second)).exists());
}

#[test]
fn truncating_everything_keeps_the_first_index() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    log.append(&entries(7, 30, 1, 300)).unwrap();
    log.truncate_suffix(LogIndex(7)).unwrap();
    assert!(log.is_empty());
    assert_eq!(
        (log.first_index(), log.last_index()),
        (LogIndex(7), LogIndex(6))
    );
    drop(log);
    let (mut log, _) = open(dir.path(), small_config());
    assert_eq!(
        (log.first_index(), log.last_index()),
        (LogIndex(7), LogIndex(6))
    );
    // An empty log may restart anywhere; the old empty segment goes away.
    log.append(&entries(3, 4, 2, 5)).unwrap();
    assert_eq!(log.first_index(), LogIndex(3));
    assert_eq!(log.segment_count(), 1);
    drop(log);
    let (log, _) = open(dir.path(), small_config());
    assert_eq!(all(&log), entries(3, 4, 2, 5));
}

#[test]
fn truncation_bounds_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    log.append(&entries(5, 9, 1, 5)).unwrap();
    log.truncate_suffix(LogIndex(10)).unwrap();
    assert_eq!(log.last_index(), LogIndex(9));
    assert!(matches!(
        log.truncate_suffix(LogIndex(4)),
        Err(StoreError::OutOfRange { .. })
    ));
    log.truncate_suffix(LogIndex(8)).unwrap();
    assert_eq!(log.term_at(LogIndex(8)), None);
    assert_eq!(log.last_term(), Term(1));
}

#[test]
fn a_view_of_a_truncated_entry_reads_zeros_and_never_faults() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    log.append(&entries(1, 3, 1, 64)).unwrap();
    let view = log.entry(LogIndex(3)).unwrap();
    log.truncate_suffix(LogIndex(2)).unwrap();
    assert!(view.body.iter().all(|&b| b == 0));
}
