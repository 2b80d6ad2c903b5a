//! The queue index: append, lookup, seek by time, torn tails, replay, truncation,
//! retention and rebuild.

use std::fs;
use std::os::unix::fs::FileExt;

use raftmq_store::{LogIndex, QueueIndex, QueueSlot, StoreError};

fn slot(base_offset: u64, entry: u64, count: u32, ts: i64) -> QueueSlot {
    QueueSlot {
        base_offset,
        entry_index: LogIndex(entry),
        count,
        bytes: count * 100,
        max_timestamp_ms: ts,
    }
}

/// Ten batches of 10 messages in entries 2, 4, .., 20, timestamps 1000, 1100, ...
fn filled(dir: &std::path::Path) -> QueueIndex {
    let mut q = QueueIndex::open(dir).unwrap();
    for k in 0..10u64 {
        q.append(slot(k * 10, 2 + 2 * k, 10, 1000 + 100 * k as i64))
            .unwrap();
    }
    q
}

#[test]
fn slots_are_found_by_offset_and_by_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let q = filled(dir.path());
    assert_eq!((q.start_offset(), q.next_offset()), (0, 100));
    assert_eq!(q.lookup(0), Some(slot(0, 2, 10, 1000)));
    assert_eq!(q.lookup(9), Some(slot(0, 2, 10, 1000)));
    assert_eq!(q.lookup(55).unwrap().base_offset, 50);
    assert_eq!(q.lookup(100), None);
    assert_eq!(q.seek_timestamp(0).unwrap().base_offset, 0);
    assert_eq!(q.seek_timestamp(1150).unwrap().base_offset, 20);
    assert_eq!(q.seek_timestamp(1900).unwrap().base_offset, 90);
    assert_eq!(q.seek_timestamp(1901), None);
    let from = q.slots_from(35, 3);
    assert_eq!(
        from.iter().map(|s| s.base_offset).collect::<Vec<_>>(),
        vec![30, 40, 50]
    );
    assert_eq!(q.last_entry_index(), LogIndex(20));
}

#[test]
fn seeking_by_time_tolerates_timestamps_that_go_backwards() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = QueueIndex::open(dir.path()).unwrap();
    q.append(slot(0, 1, 1, 500)).unwrap();
    q.append(slot(1, 2, 1, 300)).unwrap();
    q.append(slot(2, 3, 1, 800)).unwrap();
    assert_eq!(q.seek_timestamp(400).unwrap().base_offset, 0);
    assert_eq!(q.seek_timestamp(600).unwrap().base_offset, 2);
}

#[test]
fn gaps_are_rejected_and_replays_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = filled(dir.path());
    assert!(matches!(
        q.append(slot(101, 30, 1, 0)),
        Err(StoreError::QueueGap { .. })
    ));
    q.append(slot(30, 8, 10, 1300)).unwrap();
    assert_eq!(q.len(), 10);
    assert_eq!(q.next_offset(), 100);
}

#[test]
#[should_panic(expected = "replayed queue slot differs")]
fn a_replayed_slot_that_differs_is_a_broken_invariant() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = filled(dir.path());
    let _ = q.append(slot(30, 8, 11, 1300));
}

#[test]
fn slots_survive_reopen_and_a_torn_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = filled(dir.path());
    q.checkpoint().unwrap();
    q.append(slot(100, 22, 5, 3000)).unwrap();
    drop(q);
    let slots_file = dir.path().join("slots");
    // Tear the last slot at every byte.
    let pristine = fs::read(&slots_file).unwrap();
    for cut in 400..440 {
        fs::write(&slots_file, &pristine[..cut]).unwrap();
        let mut q = QueueIndex::open(dir.path()).unwrap();
        assert_eq!(q.recovery().discarded, None);
        assert_eq!(q.recovery().torn_bytes_cut, (cut - 400) as u64);
        assert_eq!(q.next_offset(), 100, "cut {cut}");
        q.append(slot(100, 22, 5, 3000)).unwrap();
        drop(q);
        assert_eq!(fs::read(&slots_file).unwrap(), pristine);
    }
    // A flipped bit in an unsynced slot is a torn tail too.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&slots_file)
        .unwrap();
    f.write_all_at(&[pristine[405] ^ 4], 405).unwrap();
    drop(f);
    let q = QueueIndex::open(dir.path()).unwrap();
    assert_eq!(q.next_offset(), 100);
    assert_eq!(q.recovery().slots, 10);
}

#[test]
fn damage_below_the_checkpoint_discards_the_index_for_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = filled(dir.path());
    q.checkpoint().unwrap();
    drop(q);
    let slots_file = dir.path().join("slots");
    let mut bytes = fs::read(&slots_file).unwrap();
    bytes[45] ^= 1;
    fs::write(&slots_file, &bytes).unwrap();
    let mut q = QueueIndex::open(dir.path()).unwrap();
    assert!(q.recovery().discarded.is_some());
    assert!(q.is_empty());
    // The broker rebuilds it by replaying the log.
    for k in 0..10u64 {
        q.append(slot(k * 10, 2 + 2 * k, 10, 1000 + 100 * k as i64))
            .unwrap();
    }
    q.checkpoint().unwrap();
    drop(q);
    let q = QueueIndex::open(dir.path()).unwrap();
    assert_eq!(q.recovery().discarded, None);
    assert_eq!(q.len(), 10);
}

#[test]
fn truncation_by_entry_is_durable_and_the_queue_continues() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = filled(dir.path());
    q.checkpoint().unwrap();
    q.truncate_from_entry(LogIndex(9)).unwrap();
    assert_eq!(q.next_offset(), 40);
    assert_eq!(q.last_entry_index(), LogIndex(8));
    drop(q);
    let mut q = QueueIndex::open(dir.path()).unwrap();
    assert_eq!(q.recovery().discarded, None);
    assert_eq!(q.next_offset(), 40);
    q.append(slot(40, 9, 3, 5000)).unwrap();
    assert_eq!(q.lookup(42).unwrap().entry_index, LogIndex(9));
}

#[test]
fn retention_drops_leading_slots_and_remembers_where_the_queue_is() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = filled(dir.path());
    q.delete_before_entry(LogIndex(7)).unwrap();
    assert_eq!(q.start_offset(), 30);
    assert_eq!(q.lookup(29), None);
    // Replaying a slot retention already dropped is a no-op.
    q.append(slot(0, 2, 10, 1000)).unwrap();
    drop(q);
    let mut q = QueueIndex::open(dir.path()).unwrap();
    assert_eq!((q.start_offset(), q.next_offset()), (30, 100));
    q.delete_before_entry(LogIndex(100)).unwrap();
    assert!(q.is_empty());
    assert_eq!((q.start_offset(), q.next_offset()), (100, 100));
    assert_eq!(q.last_entry_index(), LogIndex(20));
    drop(q);
    let mut q = QueueIndex::open(dir.path()).unwrap();
    assert_eq!(q.next_offset(), 100);
    q.append(slot(100, 21, 1, 0)).unwrap();
}

#[test]
fn a_fresh_queue_may_start_at_any_offset_for_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = QueueIndex::open(dir.path()).unwrap();
    q.append(slot(5000, 77, 2, 0)).unwrap();
    assert_eq!((q.start_offset(), q.next_offset()), (5000, 5002));
    drop(q);
    let q = QueueIndex::open(dir.path()).unwrap();
    assert_eq!((q.start_offset(), q.next_offset()), (5000, 5002));
}
