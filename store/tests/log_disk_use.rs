//! The disk-use limit: checked when a segment would be created, refusing without
//! changing or poisoning the log.
//!
//! A real file system cannot be filled here; a tiny limit (1e-9: every file system
//! in use is above it) makes every segment creation exceed it instead.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use raftmq_store::{disk_use, CommitLog, DiskUse, Fault, LogConfig, LogIndex, StoreError};

const TINY: f64 = 1e-9;

fn log_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = snapshot(dir).into_keys().collect();
    names.sort();
    names
}

#[test]
fn a_roll_above_the_limit_is_refused_without_changing_or_poisoning_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    // 300-byte bodies: 12 entries fill most of the first 4 KiB segment.
    log.append(&entries(1, 10, 1, 300)).unwrap();
    log.set_max_disk_use_ratio(TINY).unwrap();
    let files = log_files(dir.path());

    // Fits in the preallocated active segment: no new space, no check.
    log.append(&entries(11, 11, 1, 300)).unwrap();
    assert!(log.check_disk_use_limit().unwrap_err().is_disk_use_limit());

    // Needs a new segment: refused, with the numbers and a readable reason.
    let err = log.append(&entries(12, 30, 1, 300)).unwrap_err();
    match &err {
        StoreError::DiskUseLimit {
            path,
            used_bytes,
            would_use_bytes,
            total_bytes,
            limit_ratio,
        } => {
            assert_eq!(path, dir.path());
            assert!(*used_bytes > 0 && *total_bytes > 0);
            assert!(
                *would_use_bytes >= used_bytes + 4096,
                "counts the new segments"
            );
            assert_eq!(*limit_ratio, TINY);
        }
        other => panic!("expected DiskUseLimit, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.starts_with("disk use would reach ")
            && message.contains(&dir.path().display().to_string())
            && message.ends_with("appends are refused until retention frees space"),
        "{message}"
    );
    assert!(!err.is_disk_full());

    // Unchanged: same entries, no new file, nothing synced that was not.
    assert_eq!(log.last_index(), LogIndex(11));
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log_files(dir.path()), files);
    assert_eq!(all(&log), entries(1, 11, 1, 300));
    assert!(matches!(
        log.entry(LogIndex(12)),
        Err(StoreError::OutOfRange { .. })
    ));

    // Not poisoned: syncs work, the same append is refused the same way again...
    assert_eq!(log.sync().unwrap(), LogIndex(11));
    assert!(log
        .append(&entries(12, 30, 1, 300))
        .unwrap_err()
        .is_disk_use_limit());

    // ...and succeeds once there is room under the limit.
    log.set_max_disk_use_ratio(1.0).unwrap();
    log.check_disk_use_limit().unwrap();
    log.append(&entries(12, 30, 1, 300)).unwrap();
    assert!(log.segment_count() > 1);
    log.sync().unwrap();
    drop(log);
    let (log, report) = open(dir.path(), small_config());
    assert_eq!(report.cut_at, None, "{report}");
    assert_eq!(all(&log), entries(1, 30, 1, 300));
}

#[test]
fn a_new_log_above_the_limit_refuses_its_first_segment() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        max_disk_use_ratio: TINY,
        ..small_config()
    };
    let (mut log, _) = open(dir.path(), config.clone());
    assert!(log
        .append(&entries(1, 1, 1, 10))
        .unwrap_err()
        .is_disk_use_limit());
    assert!(log.is_empty());
    assert!(log_files(dir.path()).is_empty());
    // An empty log restarting elsewhere frees its segment but still needs one.
    log.set_max_disk_use_ratio(1.0).unwrap();
    log.append(&entries(5, 5, 1, 10)).unwrap();
    log.truncate_suffix(LogIndex(5)).unwrap();
    log.set_max_disk_use_ratio(TINY).unwrap();
    assert!(log
        .append(&entries(9, 9, 1, 10))
        .unwrap_err()
        .is_disk_use_limit());
    assert_eq!(log.first_index(), LogIndex(5), "the empty segment is kept");
    assert_eq!(log_files(dir.path()), vec![segment_name(5)]);
    // Continuing at the empty segment's base needs no new segment.
    log.append(&entries(5, 6, 1, 10)).unwrap();
    drop(log);
    let (log, _) = open(dir.path(), config);
    assert_eq!(all(&log), entries(5, 6, 1, 10));
}

#[test]
fn a_reset_above_the_limit_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    log.append(&entries(1, 40, 1, 300)).unwrap();
    log.sync().unwrap();
    let files = log_files(dir.path());
    log.set_max_disk_use_ratio(TINY).unwrap();
    let err = log.reset(LogIndex(100)).unwrap_err();
    assert!(err.is_disk_use_limit(), "{err}");
    match err {
        StoreError::DiskUseLimit {
            used_bytes,
            would_use_bytes,
            ..
        } => assert!(
            would_use_bytes < used_bytes,
            "the reset frees more segments than it creates"
        ),
        _ => unreachable!(),
    }
    assert_eq!(log_files(dir.path()), files);
    assert_eq!(all(&log), entries(1, 40, 1, 300));
    assert_eq!(log.synced_index(), LogIndex(40));
    log.set_max_disk_use_ratio(1.0).unwrap();
    log.reset(LogIndex(100)).unwrap();
    assert_eq!(log.first_index(), LogIndex(100));
}

#[test]
fn ratios_outside_zero_to_one_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(LogConfig::default().max_disk_use_ratio, 0.95);
    for bad in [0.0, -0.5, 1.000_001, 2.0, f64::NAN, f64::INFINITY] {
        let config = LogConfig {
            max_disk_use_ratio: bad,
            ..small_config()
        };
        assert!(
            matches!(
                CommitLog::open(dir.path(), config),
                Err(StoreError::InvalidConfig(_))
            ),
            "{bad}"
        );
    }
    let (mut log, _) = open(dir.path(), small_config());
    for bad in [0.0, 1.5, f64::NAN] {
        assert!(log.set_max_disk_use_ratio(bad).is_err(), "{bad}");
    }
    assert_eq!(log.config().max_disk_use_ratio, 0.95);
    log.set_max_disk_use_ratio(1.0).unwrap();
    log.set_max_disk_use_ratio(f64::MIN_POSITIVE).unwrap();
    assert_eq!(log.config().max_disk_use_ratio, f64::MIN_POSITIVE);
}

/// `df -B1 --output=used,avail DIR` as numbers, if `df` is there.
fn df(dir: &Path) -> Option<(u64, u64)> {
    let out = Command::new("df")
        .args(["-B1", "--output=used,avail"])
        .arg(dir)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let mut numbers = text.lines().nth(1)?.split_whitespace();
    Some((numbers.next()?.parse().ok()?, numbers.next()?.parse().ok()?))
}

#[test]
fn used_and_available_are_what_df_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), small_config());
    let before = log.disk_use().unwrap();
    let Some((df_used, df_avail)) = df(dir.path()) else {
        eprintln!("df not available: skipped");
        return;
    };
    let after = disk_use(dir.path()).unwrap();
    assert_eq!(
        before.used_bytes + before.available_bytes,
        before.total_bytes
    );
    // Other processes write meanwhile: allow 0.5% of the file system.
    let slack = before.total_bytes / 200;
    let near = |ours_a: u64, ours_b: u64, theirs: u64| {
        theirs + slack >= ours_a.min(ours_b) && theirs <= ours_a.max(ours_b) + slack
    };
    assert!(
        near(before.used_bytes, after.used_bytes, df_used),
        "used: ours {before:?} / {after:?}, df {df_used}"
    );
    assert!(
        near(before.available_bytes, after.available_bytes, df_avail),
        "available: ours {before:?} / {after:?}, df {df_avail}"
    );
}

/// A file system of 100 segments' worth of space with `used` segments in use.
fn fake_disk(used: u64) -> Fault {
    Fault::DiskUse(DiskUse {
        total_bytes: 100 * 4096,
        available_bytes: (100 - used) * 4096,
        used_bytes: used * 4096,
    })
}

#[test]
fn the_limit_counts_every_segment_a_batch_needs_and_every_one_it_frees() {
    let dir = tempfile::tempdir().unwrap();
    // 95.5%: 95 segments in use are fine, 96 are not.
    let config = LogConfig {
        max_disk_use_ratio: 0.955,
        ..small_config()
    };
    let (mut log, _) = open(dir.path(), config);
    log.inject_fault(Some(fake_disk(90)));
    // 12 entries of 300 bytes fill a 4 KiB segment: 61 entries need 6 segments.
    assert!(log
        .append(&entries(1, 61, 1, 300))
        .unwrap_err()
        .is_disk_use_limit());
    assert!(log.is_empty() && log.segment_count() == 0);
    log.append(&entries(1, 60, 1, 300)).unwrap();
    assert_eq!(log.segment_count(), 5);

    // 60 entries fill the 5 segments exactly: 61..=120 needs 5 more, 61..=121 six.
    assert!(log
        .append(&entries(61, 121, 1, 300))
        .unwrap_err()
        .is_disk_use_limit());
    assert_eq!((log.last_index(), log.segment_count()), (LogIndex(60), 5));
    log.append(&entries(61, 120, 1, 300)).unwrap();
    assert_eq!(log.segment_count(), 10);

    // An empty log restarting at another index deletes its empty segment first:
    // 90 - 1 + 6 = 95 segments.
    log.reset(LogIndex(500)).unwrap();
    log.append(&entries(1000, 1060, 1, 300)).unwrap();
    assert_eq!(log.first_index(), LogIndex(1000));
    assert_eq!(log.segment_count(), 6);

    // A reset of 6 segments to one: 96 - 6 + 1 = 91 in use afterwards.
    log.inject_fault(Some(fake_disk(96)));
    assert!(log.check_disk_use_limit().unwrap_err().is_disk_use_limit());
    log.reset(LogIndex(2000)).unwrap();
    assert_eq!(log.segment_count(), 1);
    // Every segment on a file system that is full anyway: 100 - 1 + 1.
    log.inject_fault(Some(fake_disk(100)));
    assert!(log.reset(LogIndex(3000)).unwrap_err().is_disk_use_limit());
    assert_eq!(log.first_index(), LogIndex(2000));
    // 1.0 disables the check.
    log.set_max_disk_use_ratio(1.0).unwrap();
    log.reset(LogIndex(3000)).unwrap();
    log.append(&entries(3000, 3100, 1, 300)).unwrap();
}
