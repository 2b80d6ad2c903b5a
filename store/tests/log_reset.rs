//! Reset: discarding the whole log to continue at a later (or earlier) index, as a
//! follower does when it installs a snapshot; crashes part-way leave a prefix.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use raftmq_store::{CommitLog, Fault, LogIndex, StoreError, Term};

/// Names of the segment and index files in `dir`.
fn log_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".log") || n.ends_with(".idx"))
        .collect();
    names.sort();
    names
}

fn index_name(base: u64) -> String {
    format!("{base:020}.idx")
}

/// A log of `1..=60` (300-byte bodies, about 12 per segment), synced and
/// checkpointed (so every segment has its `.idx`), reopened; returns its bases.
fn several_segments(dir: &Path) -> (CommitLog, Vec<u64>) {
    let (mut log, _) = open(dir, small_config());
    log.append(&entries(1, 60, 1, 300)).unwrap();
    log.close().unwrap();
    let (log, _) = open(dir, small_config());
    let bases: Vec<u64> = log
        .segments_info()
        .unwrap()
        .iter()
        .map(|s| s.base.0)
        .collect();
    assert!(bases.len() >= 4, "{bases:?}");
    (log, bases)
}

fn assert_empty_at(log: &CommitLog, start: u64) {
    assert!(log.is_empty());
    assert_eq!(log.first_index(), LogIndex(start));
    assert_eq!(log.last_index(), LogIndex(start - 1));
    assert_eq!(log.synced_index(), LogIndex(start - 1));
}

#[test]
fn a_reset_log_is_empty_at_its_start_and_continues_there_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = several_segments(dir.path());
    let view = log.entry(LogIndex(3)).unwrap();
    log.reset(LogIndex(100)).unwrap();
    assert_empty_at(&log, 100);
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.last_term(), Term(0));
    for i in [0, 1, 30, 60, 99, 100, 101] {
        assert_eq!(log.term_at(LogIndex(i)), None, "term_at({i})");
    }
    assert!(matches!(
        log.entry(LogIndex(60)),
        Err(StoreError::OutOfRange { .. })
    ));
    assert!(log
        .entries(LogIndex(100), 10, usize::MAX)
        .unwrap()
        .is_empty());
    assert_eq!(log_files(dir.path()), vec![segment_name(100)]);
    assert_eq!(view, entries(3, 3, 1, 300)[0], "views outlive the reset");
    assert!(log.begin_sync().is_none(), "nothing to sync");

    // A crash right after the reset: the empty log at 100 is what is on disk.
    drop(log);
    let (mut log, report) = open(dir.path(), small_config());
    assert_eq!(report.cut_at, None, "{report}");
    assert_eq!(report.entries, 0);
    assert_empty_at(&log, 100);

    log.append(&entries(100, 110, 7, 100)).unwrap();
    assert_eq!(log.first_index(), LogIndex(100));
    assert_eq!(
        log.segment_count(),
        1,
        "the reset segment takes the entries"
    );
    assert_eq!(log.term_at(LogIndex(100)), Some(Term(7)));
    log.sync().unwrap();
    drop(log);
    let (log, _) = open(dir.path(), small_config());
    assert_eq!(all(&log), entries(100, 110, 7, 100));
}

#[test]
fn a_reset_below_the_end_discards_everything_too() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = several_segments(dir.path());
    log.reset(LogIndex(10)).unwrap();
    assert_empty_at(&log, 10);
    assert_eq!(log_files(dir.path()), vec![segment_name(10)]);
    // The leader's entries from 10 on, in a lower term than the discarded ones.
    log.append(&entries(10, 15, 1, 5)).unwrap();
    log.close().unwrap();
    let (log, _) = open(dir.path(), small_config());
    assert_eq!(all(&log), entries(10, 15, 1, 5));
}

#[test]
fn resetting_a_fresh_log_creates_its_first_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    log.reset(LogIndex(5)).unwrap();
    assert_empty_at(&log, 5);
    assert_eq!(log_files(dir.path()), vec![segment_name(5)]);
    drop(log);
    let (mut log, _) = open(dir.path(), small_config());
    assert_empty_at(&log, 5);

    // Resetting an empty log to its own start keeps its segment as it is.
    let ino = |dir: &Path| {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(dir.join(segment_name(5))).unwrap().ino()
    };
    let before = ino(dir.path());
    log.reset(LogIndex(5)).unwrap();
    assert_eq!(ino(dir.path()), before);
    assert_empty_at(&log, 5);

    // Reset to 1: a log like a new one (index 0 has term 0 again).
    log.reset(LogIndex(1)).unwrap();
    assert_empty_at(&log, 1);
    assert_eq!(log.term_at(LogIndex::ZERO), Some(Term(0)));
    assert_eq!(log_files(dir.path()), vec![segment_name(1)]);
}

#[test]
fn resetting_to_zero_or_a_poisoned_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    log.append(&entries(1, 5, 1, 10)).unwrap();
    assert!(matches!(
        log.reset(LogIndex::ZERO),
        Err(StoreError::OutOfRange { .. })
    ));
    assert_eq!(all(&log), entries(1, 5, 1, 10));
    log.inject_fault(Some(Fault::SyncFails));
    assert!(log.sync().is_err());
    assert!(matches!(log.reset(LogIndex(10)), Err(StoreError::Poisoned)));
    assert_eq!(log.last_index(), LogIndex(5));
}

#[test]
fn a_sync_job_overtaken_by_a_reset_marks_nothing_synced() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    log.append(&entries(1, 40, 1, 300)).unwrap();
    let job = log.begin_sync().unwrap();
    assert_eq!(job.upto(), LogIndex(40));
    let worker = std::thread::spawn(move || job.run());
    log.reset(LogIndex(30)).unwrap();
    assert_empty_at(&log, 30);
    log.append(&entries(30, 35, 2, 300)).unwrap();
    assert!(log.begin_sync().is_none(), "the voided job still runs");
    log.finish_sync(worker.join().unwrap().unwrap());
    // The job synced the old files, not the entries appended after the reset.
    assert_eq!(log.synced_index(), LogIndex(29));
    let job = log.begin_sync().unwrap();
    log.finish_sync(job.run().unwrap());
    assert_eq!(log.synced_index(), LogIndex(35));
    drop(log);
    let (log, _) = open(dir.path(), small_config());
    assert_eq!(all(&log), entries(30, 35, 2, 300));
}

#[test]
fn a_sync_job_overtaken_by_a_reset_stays_voided_past_a_later_reset() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    log.append(&entries(1, 10, 1, 300)).unwrap();
    let job = log.begin_sync().unwrap();
    log.reset(LogIndex(500)).unwrap();
    log.append(&entries(500, 510, 1, 300)).unwrap();
    log.reset(LogIndex(5)).unwrap();
    log.finish_sync(job.run().unwrap());
    assert_empty_at(&log, 5);
}

#[test]
fn a_failed_sync_job_overtaken_by_a_reset_does_not_poison_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    log.append(&entries(1, 10, 1, 10)).unwrap();
    log.inject_fault(Some(Fault::SyncFails));
    let job = log.begin_sync().unwrap();
    log.inject_fault(None);
    log.reset(LogIndex(20)).unwrap();
    assert!(job.run().is_err());
    log.abort_sync();
    log.append(&entries(20, 21, 1, 10)).unwrap();
    assert_eq!(log.sync().unwrap(), LogIndex(21));

    // Without the reset, the same failure poisons the log.
    log.append(&entries(22, 22, 1, 10)).unwrap();
    log.inject_fault(Some(Fault::SyncFails));
    let job = log.begin_sync().unwrap();
    assert!(job.run().is_err());
    log.abort_sync();
    assert!(matches!(
        log.append(&entries(23, 23, 1, 10)),
        Err(StoreError::Poisoned)
    ));
}

#[test]
fn a_reset_stopped_after_any_number_of_removals_reopens_as_a_prefix() {
    let pristine_dir = tempfile::tempdir().unwrap();
    let (log, bases) = several_segments(pristine_dir.path());
    drop(log);
    let pristine = snapshot(pristine_dir.path());
    let everything = entries(1, 60, 1, 300);
    let dir = tempfile::tempdir().unwrap();
    for removals in 0..bases.len() {
        restore(dir.path(), &pristine);
        let (mut log, _) = open(dir.path(), small_config());
        log.inject_fault(Some(Fault::ResetStopsAfter { removals }));
        assert!(log.reset(LogIndex(1000)).is_err());
        assert!(matches!(
            log.append(&entries(61, 61, 1, 1)),
            Err(StoreError::Poisoned)
        ));
        drop(log);
        let (log, report) = open(dir.path(), small_config());
        let kept = bases.len() - removals;
        let last = if kept == bases.len() {
            60
        } else {
            bases[kept] - 1
        };
        assert_eq!(report.cut_at, None, "{removals} removed: {report}");
        assert_eq!(report.corruption, None);
        assert_eq!(log.first_index(), LogIndex(1));
        assert_eq!(all(&log), everything[..last as usize].to_vec());
        assert_eq!(log.segment_count(), kept);
        for &base in &bases[kept..] {
            assert!(!dir.path().join(segment_name(base)).exists());
            assert!(!dir.path().join(index_name(base)).exists());
        }
    }
}

#[test]
fn deleting_the_newest_segments_by_hand_leaves_a_log_that_opens_as_a_prefix() {
    // What a crash part-way through a reset leaves, made without the reset code.
    let pristine_dir = tempfile::tempdir().unwrap();
    let (log, bases) = several_segments(pristine_dir.path());
    drop(log);
    let pristine = snapshot(pristine_dir.path());
    let dir = tempfile::tempdir().unwrap();
    for kept in 1..bases.len() {
        restore(dir.path(), &pristine);
        for &base in &bases[kept..] {
            fs::remove_file(dir.path().join(segment_name(base))).unwrap();
            // The last one removed may have lost only its segment, not its index.
            if base != bases[kept] {
                fs::remove_file(dir.path().join(index_name(base))).unwrap();
            }
        }
        let (mut log, report) = open(dir.path(), small_config());
        let last = bases[kept] - 1;
        assert_eq!(report.cut_at, None, "{report}");
        assert_eq!(all(&log), entries(1, last, 1, 300));
        assert!(
            !dir.path().join(index_name(bases[kept])).exists(),
            "orphan index removed"
        );
        // The broker sees a log behind its snapshot and resets again.
        log.reset(LogIndex(1000)).unwrap();
        drop(log);
        let (log, _) = open(dir.path(), small_config());
        assert_empty_at(&log, 1000);
        assert_eq!(log_files(dir.path()), vec![segment_name(1000)]);
    }
}

#[test]
fn a_reset_that_cannot_create_its_segment_leaves_an_empty_usable_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = several_segments(dir.path());
    log.inject_fault(Some(Fault::DiskFullOnNewSegment));
    let err = log.reset(LogIndex(100)).unwrap_err();
    assert!(err.is_disk_full(), "{err}");
    // Every old segment is gone; no segment yet: a new log, as a crash here leaves.
    assert!(log.is_empty());
    assert_eq!(log.first_index(), LogIndex(1));
    assert_eq!(log.synced_index(), LogIndex::ZERO);
    assert!(log_files(dir.path()).is_empty());
    log.inject_fault(None);
    log.reset(LogIndex(100)).unwrap();
    assert_empty_at(&log, 100);
    log.append(&entries(100, 101, 3, 10)).unwrap();
    drop(log);
    let (log, _) = open(dir.path(), small_config());
    assert_eq!(all(&log), entries(100, 101, 3, 10));
}

#[test]
fn an_empty_segment_with_a_later_base_opens_as_an_empty_log_starting_there() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(segment_name(42)), vec![0u8; 4096]).unwrap();
    let (mut log, report) = open(dir.path(), small_config());
    assert_eq!(report.cut_at, None, "{report}");
    assert_eq!(
        (report.first_index, report.last_index),
        (LogIndex(42), LogIndex(41))
    );
    assert_empty_at(&log, 42);
    assert_eq!(log.term_at(LogIndex(41)), None);
    log.append(&entries(42, 50, 2, 100)).unwrap();
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log_files(dir.path()), vec![segment_name(42)]);
    log.close().unwrap();
    let (log, _) = open(dir.path(), small_config());
    assert_eq!(all(&log), entries(42, 50, 2, 100));
}
