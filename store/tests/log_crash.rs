//! Crash recovery: torn tails, flipped bits, mid-log corruption, rebuilt indexes.
//!
//! A "crash" here is simulated by editing the files of a closed log (zeroing a torn
//! tail, flipping bits) before reopening; see docs/store.md for what this can and
//! cannot show.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;

use common::*;
use raftmq_store::{LogConfig, LogIndex};

/// One segment big enough for every entry of these tests.
fn one_segment() -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        max_entry_bytes: 1024,
        ..LogConfig::default()
    }
}

/// Byte offset of entry `index` in a single-segment log of `entries(1, _, _, len)`.
fn position(index: u64, len: usize) -> usize {
    (index as usize - 1) * (32 + len)
}

#[test]
fn a_last_entry_torn_at_any_byte_leaves_exactly_the_valid_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), one_segment());
    let batch = entries(1, 6, 1, 40);
    log.append(&batch).unwrap();
    log.sync().unwrap();
    drop(log);
    let pristine = snapshot(dir.path());
    let seg = segment_name(1);
    let last = position(6, 40);
    for cut in last..last + 72 {
        restore(dir.path(), &pristine);
        let file = fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join(&seg))
            .unwrap();
        file.write_all_at(&vec![0u8; last + 72 - cut], cut as u64)
            .unwrap();
        drop(file);
        let (mut log, report) = open(dir.path(), one_segment());
        assert_eq!(all(&log), batch[..5].to_vec(), "cut at byte {cut}");
        assert_eq!(report.corruption, None, "cut at byte {cut}: {report}");
        let expect_cut = if cut == last { None } else { Some(LogIndex(6)) };
        assert_eq!(report.cut_at, expect_cut, "cut at byte {cut}");
        // The log continues: the same index with a new term and a different body.
        log.append(&entries(6, 7, 2, 3)).unwrap();
        drop(log);
        let (log, report) = open(dir.path(), one_segment());
        assert_eq!(report.cut_at, None);
        assert_eq!(log.last_index(), LogIndex(7));
        assert_eq!(log.entry(LogIndex(6)).unwrap(), entries(6, 6, 2, 3)[0]);
    }
}

#[test]
fn a_segment_file_cut_short_recovers_its_valid_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), one_segment());
    let batch = entries(1, 6, 1, 40);
    log.append(&batch).unwrap();
    drop(log);
    let file = fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join(segment_name(1)))
        .unwrap();
    file.set_len(position(6, 40) as u64 + 50).unwrap();
    drop(file);
    let (mut log, report) = open(dir.path(), one_segment());
    assert_eq!(report.cut_at, Some(LogIndex(6)));
    assert_eq!(all(&log), batch[..5].to_vec());
    log.append(&entries(6, 6, 1, 40)).unwrap();
    log.append(&entries(7, 20, 1, 40)).unwrap();
    assert!(log.segment_count() >= 2, "the short segment rolled");
    drop(log);
    let (log, _) = open(dir.path(), one_segment());
    assert_eq!(all(&log), entries(1, 20, 1, 40));
}

#[test]
fn a_flipped_bit_anywhere_in_a_middle_entry_is_reported_as_mid_log_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), one_segment());
    let batch = entries(1, 5, 1, 8);
    log.append(&batch).unwrap();
    log.sync().unwrap();
    drop(log);
    let pristine = snapshot(dir.path());
    let seg = segment_name(1);
    let at = position(3, 8);
    for bit in 0..(32 + 8) * 8 {
        let mut files = pristine.clone();
        files.get_mut(&seg).unwrap()[at + bit / 8] ^= 1 << (bit % 8);
        restore(dir.path(), &files);
        let (mut log, report) = open(dir.path(), one_segment());
        assert_eq!(all(&log), batch[..2].to_vec(), "bit {bit}");
        assert_eq!(report.cut_at, Some(LogIndex(3)), "bit {bit}");
        let corruption = report
            .corruption
            .as_ref()
            .unwrap_or_else(|| panic!("bit {bit}: {report}"));
        assert_eq!(corruption.index, LogIndex(3));
        assert_eq!(corruption.offset, at as u64);
        assert!(report.to_string().contains("MID-LOG CORRUPTION"));
        if bit % 64 == 0 {
            log.append(&entries(3, 4, 2, 8)).unwrap();
            drop(log);
            let (log, report) = open(dir.path(), one_segment());
            assert_eq!(report.corruption, None);
            assert_eq!(log.last_index(), LogIndex(4));
        }
    }
}

#[test]
fn corruption_in_an_earlier_segment_drops_later_segments_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    log.append(&entries(1, 40, 1, 300)).unwrap();
    log.sync().unwrap();
    let segments = log.segment_count();
    drop(log);
    // Damage the last entry of the first segment (no entry follows it there).
    fs::remove_file(dir.path().join(format!("{:020}.idx", 1))).unwrap();
    let seg = dir.path().join(segment_name(1));
    let mut bytes = fs::read(&seg).unwrap();
    let per_segment = 4096 / 332;
    bytes[(per_segment - 1) * 332 + 40] ^= 0xFF;
    fs::write(&seg, &bytes).unwrap();
    let (log, report) = open(dir.path(), small_config());
    assert_eq!(log.last_index(), LogIndex(per_segment as u64 - 1));
    assert_eq!(log.segment_count(), 1);
    assert_eq!(report.segments_removed, segments - 1);
    assert!(report.corruption.is_some(), "{report}");
}

#[test]
fn garbage_after_the_last_entry_is_cut_durably() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), one_segment());
    log.append(&entries(1, 3, 1, 10)).unwrap();
    drop(log);
    let seg = dir.path().join(segment_name(1));
    let file = fs::OpenOptions::new().write(true).open(&seg).unwrap();
    file.write_all_at(b"junk", 1000).unwrap();
    drop(file);
    let (_, report) = open(dir.path(), one_segment());
    assert_eq!(report.cut_at, Some(LogIndex(4)));
    assert_eq!(report.bytes_cut, 1004 - position(4, 10) as u64);
    assert!(fs::read(&seg).unwrap()[position(4, 10)..]
        .iter()
        .all(|&b| b == 0));
}

#[test]
fn deleted_index_files_are_rebuilt_identically() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    log.append(&entries(1, 50, 1, 200)).unwrap();
    log.append(&entries(51, 60, 2, 0)).unwrap();
    log.close().unwrap();
    let before = snapshot(dir.path());
    let indexes: Vec<&String> = before.keys().filter(|n| n.ends_with(".idx")).collect();
    assert!(indexes.len() >= 3);
    for name in &indexes {
        fs::remove_file(dir.path().join(name)).unwrap();
    }
    let (log, report) = open(dir.path(), small_config());
    assert_eq!(report.indexes_rebuilt, indexes.len());
    assert_eq!(report.cut_at, None);
    assert_eq!(
        all(&log),
        [entries(1, 50, 1, 200), entries(51, 60, 2, 0)].concat()
    );
    log.close().unwrap();
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn damaged_index_files_are_ignored_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    log.append(&entries(1, 30, 1, 200)).unwrap();
    log.close().unwrap();
    let before = snapshot(dir.path());
    let idx = dir.path().join(format!("{:020}.idx", 1));
    let mut bytes = fs::read(&idx).unwrap();
    bytes[40] ^= 1;
    fs::write(&idx, bytes).unwrap();
    let (log, report) = open(dir.path(), small_config());
    assert_eq!(report.indexes_rebuilt, 1);
    assert_eq!(all(&log), entries(1, 30, 1, 200));
    log.close().unwrap();
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn an_index_checkpoint_behind_its_segment_is_completed_by_scanning() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), one_segment());
    log.append(&entries(1, 10, 1, 20)).unwrap();
    log.checkpoint().unwrap();
    log.append(&entries(11, 15, 1, 20)).unwrap();
    drop(log);
    let (log, report) = open(dir.path(), one_segment());
    assert_eq!(report.entries_scanned, 5, "{report}");
    assert_eq!(all(&log), entries(1, 15, 1, 20));
}

#[test]
fn a_flipped_bit_in_a_sealed_checkpointed_segment_is_found_on_open() {
    let dir = tempfile::tempdir().unwrap();
    // Segments of 4 KiB hold 26 entries of 120 bytes: 100 entries fill four of them.
    let config = LogConfig {
        segment_bytes: 4096,
        max_entry_bytes: 1024,
        ..LogConfig::default()
    };
    let (mut log, _) = open(dir.path(), config.clone());
    let batch = entries(1, 100, 1, 120);
    log.append(&batch).unwrap();
    log.checkpoint().unwrap();
    assert!(log.segment_count() >= 3, "several sealed segments");
    drop(log);
    // Damage entry 10, deep inside the first (sealed, checkpointed) segment.
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.path().join(segment_name(1)))
        .unwrap();
    let at = (position(10, 120) + 40) as u64;
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x10], at).unwrap();
    drop(file);
    let damaged = snapshot(dir.path());

    // Checking only the last entry of each checkpoint trusts the damaged segment.
    let quick = LogConfig {
        verify_on_open: false,
        ..config.clone()
    };
    let (log, report) = open(dir.path(), quick);
    assert_eq!(report.corruption, None);
    assert_eq!(log.last_index(), LogIndex(100));
    drop(log);

    restore(dir.path(), &damaged);
    let (log, report) = open(dir.path(), config);
    assert!(
        report.corruption.is_some(),
        "reported as corruption: {report}"
    );
    assert_eq!(report.cut_at, Some(LogIndex(10)), "{report}");
    assert_eq!(log.last_index(), LogIndex(9), "exactly the valid prefix");
    assert_eq!(all(&log), batch[..9].to_vec());
}
