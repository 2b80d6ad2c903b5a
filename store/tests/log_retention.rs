//! Retention: what `delete_segments_before` deletes, what a reopen makes of it, and the
//! segment information retention decisions are made from.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use raftmq_store::{CommitLog, LogIndex, SegmentInfo};

/// `1..=60`, 300-byte bodies (about 12 entries per 4 KiB segment), closed and reopened.
fn sixty(dir: &Path) -> CommitLog {
    let (mut log, _) = open(dir, small_config());
    log.append(&entries(1, 60, 1, 300)).unwrap();
    log.close().unwrap();
    open(dir, small_config()).0
}

fn bases(log: &CommitLog) -> Vec<u64> {
    log.segments_info()
        .unwrap()
        .iter()
        .map(|s| s.base.0)
        .collect()
}

#[test]
fn delete_segments_before_deletes_exactly_the_segments_wholly_below_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = sixty(dir.path());
    let b = bases(&log);
    assert!(b.len() >= 5, "{b:?}");
    let reopen = |log: CommitLog| {
        let first = log.first_index();
        drop(log);
        let (log, report) = open(dir.path(), small_config());
        assert_eq!(report.cut_at, None, "{report}");
        assert_eq!(log.first_index(), first, "reopen keeps the first index");
        assert_eq!(all(&log), entries(first.0, 60, 1, 300));
        log
    };

    // The first segment ends at b[1] - 1: an index inside it or at its end keeps it.
    assert_eq!(log.delete_segments_before(LogIndex(b[1] - 1)).unwrap(), 0);
    assert_eq!(log.first_index(), LogIndex(1));
    // At the next segment's base, it goes (with its index checkpoint).
    assert_eq!(log.delete_segments_before(LogIndex(b[1])).unwrap(), 1);
    assert_eq!(log.first_index(), LogIndex(b[1]));
    assert!(!dir.path().join(segment_name(1)).exists());
    assert!(!dir.path().join(format!("{:020}.idx", 1)).exists());
    let mut log = reopen(log);

    // Inside a later segment: everything before that segment goes, it stays.
    assert_eq!(log.delete_segments_before(LogIndex(b[3] + 1)).unwrap(), 2);
    assert_eq!(log.first_index(), LogIndex(b[3]));
    let mut log = reopen(log);

    // Past the end: every segment but the last.
    let last_base = *b.last().unwrap();
    assert_eq!(
        log.delete_segments_before(LogIndex(1000)).unwrap(),
        b.len() - 4
    );
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.first_index(), LogIndex(last_base));
    assert_eq!(log.last_index(), LogIndex(60));
    let mut log = reopen(log);
    assert_eq!(log.delete_segments_before(LogIndex(1000)).unwrap(), 0);
    log.append(&entries(61, 62, 1, 300)).unwrap();
}

/// The names of the files in `dir`, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Retention takes segments out of the log at once (renamed, the directory
/// synced) and unlinks them on a background thread: a large segment's unlink takes
/// tens of milliseconds the log's users would otherwise wait. Files renamed away
/// but not unlinked before a crash are removed by the next open, and never read
/// back as part of the log.
#[test]
fn deleted_segments_leave_the_log_at_once_and_their_files_soon_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = sixty(dir.path());
    let b = bases(&log);
    assert_eq!(log.delete_segments_before(LogIndex(b[2])).unwrap(), 2);
    assert_eq!(log.first_index(), LogIndex(b[2]));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log.pending_deletions() > 0 {
        assert!(std::time::Instant::now() < deadline, "files never deleted");
        std::thread::sleep(Duration::from_millis(5));
    }
    let left = files(dir.path());
    assert!(
        left.iter().all(|f| !f.ends_with(".deleted")
            && !f.starts_with(&format!("{:020}", b[0]))
            && !f.starts_with(&format!("{:020}", b[1]))),
        "{left:?}"
    );
    log.close().unwrap();

    // A crash between the rename and the unlink: the renamed files stay behind.
    let segment = format!("{:020}.log", b[2]);
    let stray = format!("{segment}.deleted");
    std::fs::copy(dir.path().join(&segment), dir.path().join(&stray)).unwrap();
    let (log, _) = open(dir.path(), small_config());
    assert_eq!(
        log.first_index(),
        LogIndex(b[2]),
        "a renamed file is not the log's"
    );
    assert!(
        !files(dir.path()).contains(&stray),
        "removed when the log opens"
    );
    assert_eq!(log.last_index(), LogIndex(60));
}

#[test]
fn segments_info_describes_every_segment_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = sixty(dir.path());
    let info = log.segments_info().unwrap();
    assert_eq!(info.len(), log.segment_count());
    assert_eq!(info[0].base, LogIndex(1));
    for pair in info.windows(2) {
        assert_eq!(pair[0].last_index.next(), pair[1].base, "{info:?}");
        assert!(
            pair[0].last_index >= pair[0].base,
            "sealed segments hold entries"
        );
        assert!(pair[0].modified <= pair[1].modified, "{info:?}");
    }
    assert_eq!(info.last().unwrap().last_index, LogIndex(60));
    assert!(info.iter().all(|s| s.file_bytes == 4096));
    for s in &info {
        let entry = log.entry(s.last_index).unwrap();
        assert_eq!(entry.index, s.last_index);
    }

    // Later appends and reopens do not touch a sealed segment's time; an append into
    // the active segment moves its time (so the pause is long enough to see a change).
    std::thread::sleep(Duration::from_millis(50));
    let active_before = info.last().unwrap().clone();
    log.append(&entries(61, 61, 1, 10)).unwrap();
    log.close().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    let after = log.segments_info().unwrap();
    assert_eq!(after[..info.len() - 1], info[..info.len() - 1]);
    let active: &SegmentInfo = &after[info.len() - 1];
    assert_eq!(active.last_index, LogIndex(61));
    assert!(active.modified > active_before.modified);

    // After a reset: one empty segment.
    log.reset(LogIndex(200)).unwrap();
    let info = log.segments_info().unwrap();
    assert_eq!(info.len(), 1);
    assert_eq!(
        (info[0].base, info[0].last_index),
        (LogIndex(200), LogIndex(199))
    );
    assert_eq!(info[0].file_bytes, 4096);
}

#[test]
fn segment_bases_in_lists_the_bases_of_a_range_inclusive() {
    let dir = tempfile::tempdir().unwrap();
    let log = sixty(dir.path());
    let b = bases(&log);
    for from in 0..=65 {
        for to in 0..=65 {
            let expected: Vec<LogIndex> = b
                .iter()
                .filter(|&&base| from <= base && base <= to)
                .map(|&base| LogIndex(base))
                .collect();
            let got: Vec<LogIndex> = log.segment_bases_in(LogIndex(from), LogIndex(to)).collect();
            assert_eq!(got, expected, "{from}..={to} of {b:?}");
        }
    }
    assert_eq!(
        log.segment_bases_in(LogIndex(b[2]), LogIndex(b[2]))
            .collect::<Vec<_>>(),
        vec![LogIndex(b[2])]
    );
    let fresh = tempfile::tempdir().unwrap();
    let (empty, _) = open(fresh.path(), small_config());
    assert_eq!(
        empty
            .segment_bases_in(LogIndex(0), LogIndex(u64::MAX))
            .count(),
        0
    );
}
