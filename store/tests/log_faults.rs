//! Error paths: a full disk or a failed sync changes nothing already stored.

mod common;

use common::*;
use raftmq_store::{Fault, LogIndex, StoreError};

#[test]
fn given_full_disk_when_appending_should_fail_and_keep_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    log.append(&entries(1, 5, 1, 100)).unwrap();
    log.sync().unwrap();
    let segments = log.segment_count();
    // The disk fills up in the middle of a batch that would also roll a segment.
    for budget in [0u64, 1, 100, 131, 500, 1000] {
        log.inject_fault(Some(Fault::DiskFullAfter { bytes: budget }));
        let err = log.append(&entries(6, 20, 1, 100)).unwrap_err();
        assert!(err.is_disk_full(), "{err}");
        assert_eq!(log.last_index(), LogIndex(5));
        assert_eq!(log.synced_index(), LogIndex(5));
        assert_eq!(log.segment_count(), segments);
        assert!(matches!(
            log.entry(LogIndex(6)),
            Err(StoreError::OutOfRange { .. })
        ));
        assert_eq!(all(&log), entries(1, 5, 1, 100));
    }
    log.inject_fault(None);
    log.append(&entries(6, 20, 1, 100)).unwrap();
    log.sync().unwrap();
    drop(log);
    let (log, report) = open(dir.path(), small_config());
    assert_eq!(report.cut_at, None, "{report}");
    assert_eq!(all(&log), entries(1, 20, 1, 100));
}

#[test]
fn given_full_disk_when_rolling_a_segment_should_fail_before_writing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    log.append(&entries(1, 5, 1, 100)).unwrap();
    log.inject_fault(Some(Fault::DiskFullOnNewSegment));
    let err = log.append(&entries(6, 60, 1, 100)).unwrap_err();
    assert!(err.is_disk_full());
    assert_eq!(log.last_index(), LogIndex(5));
    assert_eq!(log.segment_count(), 1);
    // Entries that still fit in the active segment are fine.
    log.append(&entries(6, 6, 1, 100)).unwrap();
    log.inject_fault(None);
    log.append(&entries(7, 60, 1, 100)).unwrap();
    assert_eq!(all(&log), entries(1, 60, 1, 100));
}

#[test]
fn given_a_failed_fsync_the_log_is_poisoned_until_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    log.append(&entries(1, 5, 1, 10)).unwrap();
    log.sync().unwrap();
    log.append(&entries(6, 6, 1, 10)).unwrap();
    log.inject_fault(Some(Fault::SyncFails));
    assert!(matches!(log.sync(), Err(StoreError::Io { .. })));
    assert_eq!(log.synced_index(), LogIndex(5));
    assert!(matches!(
        log.append(&entries(7, 7, 1, 10)),
        Err(StoreError::Poisoned)
    ));
    assert!(matches!(log.sync(), Err(StoreError::Poisoned)));
    assert!(log.begin_sync().is_none());
    assert_eq!(log.entry(LogIndex(5)).unwrap(), entries(5, 5, 1, 10)[0]);
    drop(log);
    let (log, _) = open(dir.path(), small_config());
    assert!(log.last_index() >= LogIndex(5));
}

#[test]
fn given_a_failed_sync_job_the_log_is_poisoned() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    log.append(&entries(1, 5, 1, 10)).unwrap();
    log.inject_fault(Some(Fault::SyncFails));
    let job = log.begin_sync().unwrap();
    assert!(job.run().is_err());
    log.abort_sync();
    assert_eq!(log.synced_index(), LogIndex::ZERO);
    assert!(matches!(
        log.append(&entries(6, 6, 1, 10)),
        Err(StoreError::Poisoned)
    ));
}
