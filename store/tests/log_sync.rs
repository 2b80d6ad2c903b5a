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
