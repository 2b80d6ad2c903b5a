//! Appending and reading: round trips, roll-over, reopen, byte bounds, validation.

mod common;

use common::*;
use raftmq_store::{CommitLog, EntryKind, LogConfig, LogIndex, StoreError, Term};

#[test]
fn entries_of_every_kind_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, report) = open(dir.path(), small_config());
    assert_eq!(report.entries, 0);
    assert_eq!(
        (log.first_index(), log.last_index()),
        (LogIndex(1), LogIndex::ZERO)
    );
    let batch = entries(1, 9, 1, 50);
    let kinds: Vec<EntryKind> = batch.iter().map(|e| e.kind).collect();
    assert!(
        kinds.contains(&EntryKind::Messages)
            && kinds.contains(&EntryKind::Command)
            && kinds.contains(&EntryKind::Noop)
    );
    log.append(&batch).unwrap();
    assert_eq!(log.last_index(), LogIndex(9));
    assert_eq!(log.synced_index(), LogIndex::ZERO);
    assert_eq!(all(&log), batch);
    assert_eq!(log.sync().unwrap(), LogIndex(9));
    assert_eq!(log.last_term(), Term(1));
}

#[test]
fn a_full_segment_rolls_over_and_reads_cross_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    let batch = entries(1, 40, 2, 300);
    log.append(&batch).unwrap();
    assert!(log.segment_count() >= 3, "{} segments", log.segment_count());
    assert!(dir.path().join(segment_name(1)).exists());
    assert_eq!(all(&log), batch);
    let read = log.entries(LogIndex(5), 100, usize::MAX).unwrap();
    assert_eq!(read, batch[4..].to_vec());
    assert_eq!(log.disk_bytes(), log.segment_count() as u64 * 4096);
}

#[test]
fn a_log_reopened_after_a_clean_close_is_unchanged_and_scans_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    let batch = entries(1, 30, 3, 200);
    log.append(&batch).unwrap();
    log.close().unwrap();
    let (mut log, report) = open(dir.path(), small_config());
    assert_eq!(report.entries, 30);
    assert_eq!(report.entries_scanned, 0, "{report}");
    assert_eq!(report.cut_at, None);
    assert_eq!(log.synced_index(), LogIndex(30));
    assert_eq!(all(&log), batch);
    log.append(&entries(31, 35, 4, 10)).unwrap();
    assert_eq!(log.last_term(), Term(4));
    assert_eq!(log.term_at(LogIndex(30)), Some(Term(3)));
}

#[test]
fn a_log_reopened_without_close_scans_and_keeps_everything_written() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    let batch = entries(1, 30, 3, 200);
    log.append(&batch).unwrap();
    drop(log);
    let (log, report) = open(dir.path(), small_config());
    assert!(report.entries_scanned > 0);
    assert_eq!(all(&log), batch);
}

#[test]
fn entries_stop_before_the_byte_limit_but_return_at_least_one() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    log.append(&entries(1, 10, 1, 100)).unwrap();
    assert_eq!(log.entries(LogIndex(1), 10, 250).unwrap().len(), 2);
    assert_eq!(log.entries(LogIndex(1), 10, 300).unwrap().len(), 3);
    assert_eq!(log.entries(LogIndex(1), 10, 10).unwrap().len(), 1);
    assert_eq!(log.entries(LogIndex(1), 4, usize::MAX).unwrap().len(), 4);
    assert_eq!(log.entries(LogIndex(8), 10, usize::MAX).unwrap().len(), 3);
    assert!(log.entries(LogIndex(11), 10, 10).unwrap().is_empty());
    assert!(matches!(
        log.entries(LogIndex(12), 1, 1),
        Err(StoreError::OutOfRange { .. })
    ));
    assert!(matches!(
        log.entry(LogIndex(0)),
        Err(StoreError::OutOfRange { .. })
    ));
}

#[test]
fn appends_that_do_not_continue_the_log_are_rejected_without_change() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    log.append(&entries(1, 3, 2, 10)).unwrap();
    assert!(matches!(
        log.append(&entries(5, 5, 2, 10)),
        Err(StoreError::NonContiguous { .. })
    ));
    assert!(matches!(
        log.append(&entries(3, 3, 2, 10)),
        Err(StoreError::NonContiguous { .. })
    ));
    assert!(matches!(
        log.append(&entries(4, 4, 1, 10)),
        Err(StoreError::TermRegression { .. })
    ));
    let mut gap = entries(4, 6, 2, 10);
    gap.remove(1);
    assert!(matches!(
        log.append(&gap),
        Err(StoreError::NonContiguous { .. })
    ));
    assert!(matches!(
        log.append(&entries(4, 4, 2, 1025)),
        Err(StoreError::EntryTooLarge { .. })
    ));
    assert_eq!(log.last_index(), LogIndex(3));
    log.append(&entries(4, 4, 2, 1024)).unwrap();
}

#[test]
fn a_fresh_log_may_start_at_any_index() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    assert_eq!(log.term_at(LogIndex(0)), Some(Term(0)));
    log.append(&entries(100, 102, 5, 10)).unwrap();
    assert_eq!(log.first_index(), LogIndex(100));
    assert_eq!(log.term_at(LogIndex(0)), None);
    assert_eq!(log.term_at(LogIndex(99)), None);
    assert_eq!(log.term_at(LogIndex(101)), Some(Term(5)));
    assert_eq!(log.term_at(LogIndex(103)), None);
    drop(log);
    let (log, _) = open(dir.path(), small_config());
    assert_eq!(
        (log.first_index(), log.last_index()),
        (LogIndex(100), LogIndex(102))
    );
}

#[test]
fn reads_are_zero_copy_views_of_the_segment_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    log.append(&entries(1, 2, 1, 100)).unwrap();
    let a = log.entry(LogIndex(2)).unwrap();
    let b = log.entry(LogIndex(2)).unwrap();
    assert_eq!(
        a.body.as_ptr(),
        b.body.as_ptr(),
        "both views alias the mapping"
    );
    let first = log.entry(LogIndex(1)).unwrap();
    // Entry 2 starts right after entry 1 (32-byte header) in the same mapping.
    assert_eq!(
        unsafe { first.body.as_ptr().add(100 + 32) },
        a.body.as_ptr()
    );
}

#[test]
fn views_stay_readable_after_their_segment_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    let batch = entries(1, 40, 1, 300);
    log.append(&batch).unwrap();
    log.sync().unwrap();
    let view = log.entry(LogIndex(1)).unwrap();
    let deleted = log.delete_segments_before(LogIndex(20)).unwrap();
    assert!(deleted >= 1);
    assert!(!dir.path().join(segment_name(1)).exists());
    assert_eq!(view, batch[0]);
    // Still readable once the files are gone from the disk too.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while log.pending_deletions() > 0 {
        assert!(std::time::Instant::now() < deadline, "files never deleted");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(view, batch[0]);
    assert!(log.first_index() > LogIndex(1) && log.first_index() <= LogIndex(20));
    assert!(matches!(
        log.entry(LogIndex(1)),
        Err(StoreError::OutOfRange { .. })
    ));
    let first = log.first_index();
    drop(log);
    let (log, _) = open(dir.path(), small_config());
    assert_eq!(log.first_index(), first);
    assert_eq!(all(&log), batch[first.0 as usize - 1..].to_vec());
}

#[test]
fn retention_never_deletes_the_last_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    log.append(&entries(1, 40, 1, 300)).unwrap();
    log.delete_segments_before(LogIndex(1000)).unwrap();
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.last_index(), LogIndex(40));
    log.append(&entries(41, 41, 1, 3)).unwrap();
}

#[test]
fn invalid_configurations_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 4096,
        max_entry_bytes: 4096,
        ..LogConfig::default()
    };
    assert!(matches!(
        CommitLog::open(dir.path(), config),
        Err(StoreError::InvalidConfig(_))
    ));
    assert_eq!(LogConfig::default().segment_bytes, 1 << 30);
}

#[test]
fn the_recovery_report_reads_as_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    log.append(&entries(1, 3, 1, 10)).unwrap();
    drop(log);
    let (_, report) = open(dir.path(), small_config());
    let line = report.to_string();
    assert!(
        line.starts_with("recovered 3 entries (1..=3) in 1 segments"),
        "{line}"
    );
    assert!(!line.contains('\n'));
}
