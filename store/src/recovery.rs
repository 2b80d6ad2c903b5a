//! Recovery on open: rebuild the in-memory log from the segment files.
//!
//! For each segment, in index order:
//! 1. Load its `.idx` checkpoint if it is valid and its entries check out on disk
//!    (full CRC of every entry with `LogConfig::verify_on_open`, the default; of the
//!    last one otherwise); otherwise start from the segment's first byte.
//! 2. Scan every entry after the checkpoint: header, length, CRC, the expected index
//!    (contiguous) and a non-decreasing term.
//! 3. At the first bad entry stop: every later byte and segment is discarded.
//!
//! A cut is made durable before the log is used: the `.idx` checkpoint that might
//! describe cut entries is removed, the rest of the segment is zeroed and fsynced, and
//! later segments are unlinked (last first, each followed by a directory fsync). So a
//! torn entry can never reappear after another crash. The tail of the last segment is
//! zeroed on every open for the same reason (pages of unsynced writes may have reached
//! the disk in any order).
//!
//! A bad entry followed by valid data is reported as [`Corruption`]: the node may have
//! lost entries it acknowledged and Raft must repair it from its peers. A crash that
//! wrote back pages of *unsynced* entries out of order can look the same; the report
//! errs on the side of calling it corruption.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::durability::{self, TMP_SUFFIX};
use crate::entry::{self, DecodeError, HEADER_BYTES, MAGIC};
use crate::entry_index::{self, Slot};
use crate::error::StoreError;
use crate::log::LogConfig;
use crate::segment::{self, Segment};
use crate::types::{LogIndex, Term};

/// Mid-log corruption found on open: a bad entry with valid entries after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    /// The first index that was discarded.
    pub index: LogIndex,
    /// The segment holding the bad entry.
    pub segment: PathBuf,
    /// Byte offset of the bad entry in that segment.
    pub offset: u64,
    /// Which check failed.
    pub reason: String,
}

/// What recovery found and did; `Display` gives one log line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecoveryReport {
    /// Entries in the log after recovery.
    pub entries: u64,
    /// Segment files in the log after recovery.
    pub segments: usize,
    /// First index after recovery (`last_index + 1` when empty).
    pub first_index: LogIndex,
    /// Last index after recovery.
    pub last_index: LogIndex,
    /// Entries validated by scanning (the others came from index checkpoints).
    pub entries_scanned: u64,
    /// Bytes of entries validated by scanning.
    pub bytes_scanned: u64,
    /// Bytes discarded: from the cut to the last non-zero byte seen after it, plus
    /// the sizes of removed later segment files.
    pub bytes_cut: u64,
    /// The first index discarded, if anything was cut.
    pub cut_at: Option<LogIndex>,
    /// Set when the bad entry was followed by valid data (not a torn tail).
    pub corruption: Option<Corruption>,
    /// Segment files removed because they came after a cut.
    pub segments_removed: usize,
    /// Segments whose index checkpoint was missing, damaged or behind.
    pub indexes_rebuilt: usize,
    /// Wall time spent opening.
    pub elapsed: Duration,
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "recovered {} entries ({}..={}) in {} segments; scanned {} entries / {} bytes, \
             rebuilt {} indexes in {:?}",
            self.entries,
            self.first_index,
            self.last_index,
            self.segments,
            self.entries_scanned,
            self.bytes_scanned,
            self.indexes_rebuilt,
            self.elapsed
        )?;
        match (&self.corruption, self.cut_at) {
            (Some(c), _) => write!(
                f,
                "; MID-LOG CORRUPTION at index {} ({} byte {}: {}), cut {} bytes and {} segments",
                c.index,
                c.segment.display(),
                c.offset,
                c.reason,
                self.bytes_cut,
                self.segments_removed
            ),
            (None, Some(at)) => write!(
                f,
                "; torn tail cut at index {at} ({} bytes, {} segments removed)",
                self.bytes_cut, self.segments_removed
            ),
            (None, None) => Ok(()),
        }
    }
}

/// Where scanning stopped on a bad entry.
struct Bad {
    /// Position of the segment (in `bases`) holding the bad entry.
    segment: usize,
    /// Offset of the bad entry.
    offset: u64,
    /// The index that was expected there.
    index: LogIndex,
    reason: &'static str,
}

/// Opens (creating if needed) the log directory and rebuilds its segments.
pub(crate) fn recover(
    dir: &Path,
    config: &LogConfig,
) -> Result<(Vec<Segment>, RecoveryReport), StoreError> {
    let started = Instant::now();
    let mut report = RecoveryReport::default();
    fs::create_dir_all(dir).map_err(|e| StoreError::io("create directory", dir, e))?;

    let (mut bases, index_files) = list(dir)?;
    let window = config.max_entry_bytes as u64 + HEADER_BYTES as u64;
    // A leading segment without a single entry that another segment follows is a
    // leftover of a segment creation that failed after its rename (a reset or a
    // roll): a sealed segment is never empty. Taken for the start of the log, it
    // would make everything after it look like a gap and be cut.
    while bases.len() >= 2 {
        let holds_data = |base: LogIndex| -> Result<bool, StoreError> {
            let seg = Segment::open(dir.join(segment::file_name(base)), base)?;
            Ok(last_nonzero(seg.bytes(), 0, seg.bytes().len() as u64).is_some())
        };
        let starts_with_entry = |base: LogIndex| -> Result<bool, StoreError> {
            let seg = Segment::open(dir.join(segment::file_name(base)), base)?;
            Ok(entry::check_at(seg.bytes(), 0, config.max_entry_bytes, Some(base)).is_ok())
        };
        // Only when the log does go on after it, from a valid first entry: two empty
        // segments are an empty log either way, and a next segment holding only
        // garbage (unsynced blocks of a power loss) does not make the log start
        // later; the lower base is kept.
        if holds_data(bases[0])? || !starts_with_entry(bases[1])? {
            break;
        }
        // Its index file, if any, is removed with the other orphans below.
        durability::remove_file(dir, &segment::file_name(bases[0]))?;
        report.segments_removed += 1;
        bases.remove(0);
    }
    let mut segments: Vec<Segment> = Vec::new();
    let mut bad: Option<Bad> = None;
    let mut expected: Option<LogIndex> = None;
    let mut last_term = Term(0);

    for (i, &base) in bases.iter().enumerate() {
        let mut seg = Segment::open(dir.join(segment::file_name(base)), base)?;
        if let Some(want) = expected {
            if base != want {
                // A gap or overlap: this segment cannot continue the log.
                let prev = segments.last().map_or(0, Segment::write_pos);
                bad = Some(Bad {
                    segment: i - 1,
                    offset: prev,
                    index: want,
                    reason: "next segment does not continue the log",
                });
                break;
            }
        }
        let (loaded, trusted) = load_index(dir, &seg, config, last_term);
        if !trusted {
            report.indexes_rebuilt += 1;
        }
        seg.persisted_slots = if trusted { loaded.len() } else { 0 };
        seg.slots = loaded;
        if let Some(t) = seg.last_term() {
            last_term = t;
        }
        let mut pos = seg.write_pos();
        let scan_start = pos;
        let mut next = seg.next_index();
        loop {
            match entry::check_at(
                seg.bytes(),
                pos as usize,
                config.max_entry_bytes,
                Some(next),
            ) {
                Ok(h) if h.term >= last_term => {
                    seg.slots.push(Slot {
                        position: pos,
                        body_len: h.body_len,
                        term: h.term,
                    });
                    report.entries_scanned += 1;
                    pos += entry::encoded_len(h.body_len as usize);
                    next = next.next();
                    last_term = h.term;
                }
                Ok(_) => {
                    bad = Some(Bad {
                        segment: i,
                        offset: pos,
                        index: next,
                        reason: "term decreases",
                    });
                    break;
                }
                Err(DecodeError::Unwritten) => {
                    if last_nonzero(seg.bytes(), pos, window).is_some() {
                        bad = Some(Bad {
                            segment: i,
                            offset: pos,
                            index: next,
                            reason: "data after the last entry",
                        });
                    }
                    break;
                }
                Err(e) => {
                    bad = Some(Bad {
                        segment: i,
                        offset: pos,
                        index: next,
                        reason: e.reason(),
                    });
                    break;
                }
            }
        }
        report.bytes_scanned += pos - scan_start;
        expected = Some(next);
        segments.push(seg);
        if bad.is_some() {
            break;
        }
    }

    if let Some(bad) = bad {
        cut(
            dir,
            config,
            &bases,
            &mut segments,
            &bad,
            window,
            &mut report,
        )?;
    }
    finish(dir, &mut segments, &index_files, &mut report)?;
    report.elapsed = started.elapsed();
    Ok((segments, report))
}

/// Lists segment bases (sorted) and index file names; removes temporary leftovers.
fn list(dir: &Path) -> Result<(Vec<LogIndex>, BTreeSet<String>), StoreError> {
    let mut bases = Vec::new();
    let mut index_files = BTreeSet::new();
    let mut removed_tmp = false;
    let listing = fs::read_dir(dir).map_err(|e| StoreError::io("read directory", dir, e))?;
    for item in listing {
        let item = item.map_err(|e| StoreError::io("read directory", dir, e))?;
        let name = item.file_name().to_string_lossy().into_owned();
        if name.ends_with(TMP_SUFFIX) || name.ends_with(durability::DELETED_SUFFIX) {
            // A log closed just before may still be deleting its retired files.
            match fs::remove_file(item.path()) {
                Ok(()) => removed_tmp = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("unlink", item.path(), e)),
            }
        } else if let Some(base) = segment::parse_file_name(&name) {
            if base.0 > 0 {
                bases.push(base);
            }
        } else if name.ends_with(".idx") {
            index_files.insert(name);
        }
    }
    if removed_tmp {
        durability::sync_dir(dir)?;
    }
    bases.sort();
    Ok((bases, index_files))
}

/// Loads a segment's checkpoint; returns its slots and whether it was trusted.
fn load_index(dir: &Path, seg: &Segment, config: &LogConfig, prev_term: Term) -> (Vec<Slot>, bool) {
    let Ok(bytes) = fs::read(dir.join(entry_index::file_name(seg.base))) else {
        return (Vec::new(), false);
    };
    let slots = match entry_index::decode_file(&bytes, seg.base, seg.capacity()) {
        Ok(s) => s,
        Err(reason) => {
            tracing::warn!(segment = %seg.path.display(), reason, "ignoring index checkpoint");
            return (Vec::new(), false);
        }
    };
    let Some(last) = slots.last() else {
        return (slots, true);
    };
    let check = |k: usize, slot: &Slot| {
        entry::check_at(
            seg.bytes(),
            slot.position as usize,
            config.max_entry_bytes,
            Some(LogIndex(seg.base.0 + k as u64)),
        )
        .is_ok_and(|h| h.term == slot.term && h.body_len == slot.body_len)
    };
    let checks = slots[0].term >= prev_term
        && if config.verify_on_open {
            // Every entry: a damaged one makes the checkpoint untrusted, and the scan
            // from the segment's start then stops (and cuts) at the damage.
            slots.iter().enumerate().all(|(k, slot)| check(k, slot))
        } else {
            check(slots.len() - 1, last)
        };
    if !checks {
        tracing::warn!(segment = %seg.path.display(), "index checkpoint disagrees with the segment");
        return (Vec::new(), false);
    }
    (slots, true)
}

/// Offset of the last non-zero byte in `data[from..from + window]`.
fn last_nonzero(data: &[u8], from: u64, window: u64) -> Option<u64> {
    let start = (from as usize).min(data.len());
    let end = (from.saturating_add(window) as usize).min(data.len());
    data[start..end]
        .iter()
        .rposition(|&b| b != 0)
        .map(|k| (start + k) as u64)
}

/// Whether a valid entry with an index at or past `index` starts in `data` after the
/// bad entry at `from` (looking `window` bytes ahead).
fn valid_entry_after(data: &[u8], from: u64, index: LogIndex, window: u64, max_body: u32) -> bool {
    // The bad entry's header may be intact (a damaged body): try right after it.
    if let Ok(h) = entry::decode_header(&data[(from as usize).min(data.len())..], max_body) {
        let after = from + entry::encoded_len(h.body_len as usize);
        if entry::check_at(data, after as usize, max_body, Some(index.next())).is_ok() {
            return true;
        }
    }
    let start = (from as usize + 1).min(data.len());
    let end = (from.saturating_add(window) as usize).min(data.len());
    let magic = MAGIC.to_le_bytes();
    let mut k = start;
    while k + HEADER_BYTES <= end {
        match data[k..end].iter().position(|&b| b == magic[0]) {
            None => break,
            Some(off) => {
                let at = k + off;
                if data.get(at + 1) == Some(&magic[1])
                    && entry::check_at(data, at, max_body, None).is_ok_and(|h| h.index >= index)
                {
                    return true;
                }
                k = at + 1;
            }
        }
    }
    false
}

/// Makes a cut at `bad` durable and fills in the report.
fn cut(
    dir: &Path,
    config: &LogConfig,
    bases: &[LogIndex],
    segments: &mut [Segment],
    bad: &Bad,
    window: u64,
    report: &mut RecoveryReport,
) -> Result<(), StoreError> {
    let max_body = config.max_entry_bytes;
    let seg = &mut segments[bad.segment];
    let mut followed = valid_entry_after(seg.bytes(), bad.offset, bad.index, window, max_body);
    if let Some(end) = last_nonzero(seg.bytes(), bad.offset, window) {
        report.bytes_cut += end + 1 - bad.offset;
    }
    // Later segments: data there after a bad entry means mid-log corruption.
    let later = &bases[bad.segment + 1..];
    for &base in later {
        let path = dir.join(segment::file_name(base));
        let other = Segment::open(path, base)?;
        followed |=
            entry::check_at(other.bytes(), 0, max_body, None).is_ok_and(|h| h.index >= bad.index);
        report.bytes_cut += other.capacity();
    }
    // Durable order: forget the checkpoint, zero the tail, then unlink later segments
    // from the last one backwards.
    let seg = &mut segments[bad.segment];
    seg.remove_index(dir)?;
    seg.zero_from(bad.offset)?;
    for &base in later.iter().rev() {
        durability::remove_file(dir, &segment::file_name(base))?;
        durability::remove_file(dir, &entry_index::file_name(base))?;
        report.segments_removed += 1;
    }
    report.cut_at = Some(bad.index);
    if followed {
        report.corruption = Some(Corruption {
            index: bad.index,
            segment: seg.path.clone(),
            offset: bad.offset,
            reason: bad.reason.to_string(),
        });
        tracing::error!(index = %bad.index, segment = %seg.path.display(), offset = bad.offset,
            reason = bad.reason, "mid-log corruption: this replica must be repaired from its peers");
    } else {
        tracing::warn!(index = %bad.index, segment = %seg.path.display(), offset = bad.offset,
            reason = bad.reason, "cut torn tail");
    }
    Ok(())
}

/// Zeroes the last segment's tail, syncs what was scanned, rewrites missing
/// checkpoints of sealed segments, removes orphan index files, fills in the totals.
fn finish(
    dir: &Path,
    segments: &mut [Segment],
    index_files: &BTreeSet<String>,
    report: &mut RecoveryReport,
) -> Result<(), StoreError> {
    let count = segments.len();
    for (i, seg) in segments.iter_mut().enumerate() {
        let sealed = i + 1 < count;
        if !sealed {
            // Unsynced pages of an earlier life may lie past the end; make them zero.
            seg.zero_from(seg.write_pos())?;
        }
        if seg.persisted_slots < seg.slots.len() {
            // Entries found by scanning may still sit only in the page cache (a
            // process crash keeps it): make them durable before counting them synced.
            seg.sync()?;
            if sealed {
                seg.write_index(dir)?;
            }
        }
    }
    let live: BTreeSet<String> = segments
        .iter()
        .map(|s| entry_index::file_name(s.base))
        .collect();
    for orphan in index_files.difference(&live) {
        durability::remove_file(dir, orphan)?;
    }
    report.segments = count;
    report.entries = segments.iter().map(|s| s.slots.len() as u64).sum();
    report.first_index = segments.first().map_or(LogIndex(1), |s| s.base);
    report.last_index = segments.last().map_or(LogIndex::ZERO, Segment::last_index);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Entry, EntryKind};

    fn encoded(index: u64, body: &'static [u8]) -> Vec<u8> {
        let e = Entry {
            index: LogIndex(index),
            term: Term(1),
            kind: EntryKind::Command,
            body: bytes::Bytes::from_static(body),
        };
        let mut v = entry::encode_header(&e).to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn a_valid_entry_after_a_bad_one_is_found_even_at_an_odd_offset() {
        let mut data = vec![0u8; 300];
        data[10..20].copy_from_slice(&[0xEE; 10]);
        let later = encoded(8, b"later");
        data[101..101 + later.len()].copy_from_slice(&later);
        assert!(valid_entry_after(&data, 10, LogIndex(7), 290, 64));
        assert!(
            !valid_entry_after(&data, 10, LogIndex(9), 290, 64),
            "older entries do not count"
        );
        assert!(
            !valid_entry_after(&data, 10, LogIndex(7), 80, 64),
            "outside the window"
        );
    }

    #[test]
    fn the_last_nonzero_byte_bounds_what_was_cut() {
        let mut data = vec![0u8; 100];
        data[40] = 1;
        assert_eq!(last_nonzero(&data, 10, 90), Some(40));
        assert_eq!(last_nonzero(&data, 41, 90), None);
        assert_eq!(last_nonzero(&data, 10, 20), None);
    }
}
