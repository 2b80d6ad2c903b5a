//! Pipelined group commit: sync jobs run on another thread while appends continue.

mod common;

use common::*;
use raftmq_store::LogIndex;

#[test]
fn a_sync_job_on_another_thread_covers_what_was_appended_before_it_began() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    log.append(&entries(1, 10, 1, 300)).unwrap();
    let job = log.begin_sync().unwrap();
    assert_eq!(job.upto(), LogIndex(10));
    assert!(log.begin_sync().is_none(), "one job at a time");
    let worker = std::thread::spawn(move || job.run());
    log.append(&entries(11, 20, 1, 300)).unwrap();
    let done = worker.join().unwrap().unwrap();
    log.finish_sync(done);
    assert_eq!(log.synced_index(), LogIndex(10));
    let job = log.begin_sync().unwrap();
    log.finish_sync(job.run().unwrap());
    assert_eq!(log.synced_index(), LogIndex(20));
    assert!(log.begin_sync().is_none(), "nothing left to sync");
}

#[test]
fn a_sync_job_never_reports_entries_truncated_while_it_ran() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    log.append(&entries(1, 10, 1, 300)).unwrap();
    log.sync().unwrap();
    log.append(&entries(11, 20, 1, 300)).unwrap();
    let job = log.begin_sync().unwrap();
    let worker = std::thread::spawn(move || job.run());
    log.truncate_suffix(LogIndex(15)).unwrap();
    log.append(&entries(15, 25, 2, 10)).unwrap();
    log.finish_sync(worker.join().unwrap().unwrap());
    assert_eq!(log.synced_index(), LogIndex(14));
    log.sync().unwrap();
    assert_eq!(log.synced_index(), LogIndex(25));
}

#[test]
fn a_sync_job_finishing_after_a_deep_truncation_stays_below_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    log.append(&entries(1, 20, 1, 300)).unwrap();
    let job = log.begin_sync().unwrap();
    log.truncate_suffix(LogIndex(3)).unwrap();
    log.finish_sync(job.run().unwrap());
    assert_eq!(log.synced_index(), LogIndex(2));
    assert_eq!(log.last_index(), LogIndex(2));
}

#[test]
fn sealed_segments_get_their_index_checkpoint_once_synced() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    log.append(&entries(1, 20, 1, 300)).unwrap();
    assert!(!dir.path().join(format!("{:020}.idx", 1)).exists());
    let job = log.begin_sync().unwrap();
    log.finish_sync(job.run().unwrap());
    assert!(dir.path().join(format!("{:020}.idx", 1)).exists());
}

#[test]
fn the_log_and_its_sync_jobs_can_move_between_threads() {
    fn send<T: Send + 'static>() {}
    fn sync<T: Sync>() {}
    send::<raftmq_store::CommitLog>();
    sync::<raftmq_store::CommitLog>();
    send::<raftmq_store::SyncJob>();
    send::<raftmq_store::SyncDone>();
}

#[test]
fn views_read_on_other_threads_stay_valid_while_the_log_appends_rolls_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    let first = entries(1, 30, 1, 300);
    log.append(&first).unwrap();
    log.sync().unwrap();
    let views = log.entries(LogIndex(1), 30, usize::MAX).unwrap();
    let reader = std::thread::spawn(move || {
        for _ in 0..200 {
            for (view, expected) in views.iter().zip(&first) {
                assert_eq!(view, expected);
            }
        }
    });
    for k in 0..20u64 {
        let from = 31 + k * 10;
        log.append(&entries(from, from + 9, 1, 300)).unwrap();
        log.sync().unwrap();
    }
    log.delete_segments_before(LogIndex(100)).unwrap();
    reader.join().unwrap();
}

fn one_big_segment() -> raftmq_store::LogConfig {
    raftmq_store::LogConfig {
        segment_bytes: 8 << 20,
        max_entry_bytes: 256 * 1024,
        ..raftmq_store::LogConfig::default()
    }
}

#[test]
fn small_group_commits_keep_written_zeros_ahead_of_the_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), one_big_segment());
    assert_eq!(log.prewritten_ahead(), 0);
    log.append(&entries(1, 10, 1, 100)).unwrap();
    assert_eq!(log.prewritten_ahead(), 0, "appending alone writes no zeros");
    let job = log.begin_sync().unwrap();
    assert_eq!(log.prewritten_ahead(), 256 * 1024);
    log.finish_sync(job.run().unwrap());
    // Windows of ~20 KiB use it up; a new chunk follows once less than 128 KiB is left.
    let mut next = 11;
    let mut chunks = 1;
    let mut ahead = log.prewritten_ahead();
    for _ in 0..40 {
        log.append(&entries(next, next + 19, 1, 1000)).unwrap();
        next += 20;
        assert!(
            log.prewritten_ahead() < ahead,
            "entries are written over the zeros"
        );
        log.sync().unwrap();
        if log.prewritten_ahead() > ahead {
            chunks += 1;
        }
        ahead = log.prewritten_ahead();
        assert!(ahead >= 128 * 1024, "the zeros stay ahead: {ahead}");
    }
    assert!(
        chunks >= 3,
        "about one chunk per 256 KiB of entries: {chunks}"
    );
    let expected = all(&log);
    drop(log);
    // The zeros read as the end of the log: nothing is lost, nothing is added.
    let (log, report) = open(dir.path(), one_big_segment());
    assert_eq!(all(&log), expected);
    assert!(report.corruption.is_none(), "{report:?}");
}

#[test]
fn large_group_commits_write_no_zeros_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), one_big_segment());
    log.append(&entries(1, 40, 1, 1000)).unwrap();
    log.sync().unwrap();
    assert_eq!(
        log.prewritten_ahead(),
        0,
        "a 40 KiB window converts its own blocks"
    );
}

#[test]
fn zeros_are_never_written_past_the_segment_or_over_truncated_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), small_config());
    log.append(&entries(1, 3, 1, 300)).unwrap();
    log.sync().unwrap();
    assert!(log.prewritten_ahead() > 0);
    assert!(
        log.prewritten_ahead() < 4096 - 3 * 300,
        "capped at the segment's end"
    );
    log.truncate_suffix(LogIndex(2)).unwrap();
    assert_eq!(
        log.prewritten_ahead(),
        0,
        "truncation forgets the zeros past the cut"
    );
    log.append(&entries(2, 4, 2, 300)).unwrap();
    log.sync().unwrap();
    let expected = all(&log);
    drop(log);
    let (log, _) = open(dir.path(), small_config());
    assert_eq!(all(&log), expected);
}
