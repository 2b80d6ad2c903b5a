//! State-machine snapshots on disk and on the wire.
//!
//! The broker saves a snapshot each time the state machine has applied exactly up to
//! the last entry of a sealed commit-log segment, so that retention can delete whole
//! segments: the snapshot at (first retained index − 1) is the *base* a node restarts
//! from (then replaying the retained log) and the one a leader sends to a follower
//! that fell behind its log start (InstallSnapshot, in chunks of the encoded file).
//!
//! One encoding serves both uses: the file's bytes are what the leader sends, and the
//! receiver checks them with [`decode_file`] before trusting or storing them. So the
//! frame is self-contained (magic, version, index, term, length) and covered end to
//! end by one CRC, and nothing about it depends on the file name.
//!
//! ## File layout (little-endian)
//!
//! | offset    | size | field          | notes |
//! |----------:|-----:|----------------|-------|
//! | 0         | 8    | magic          | `b"RMQSNAP1"` |
//! | 8         | 4    | format version | `1` |
//! | 12        | 8    | index          | last log index the state covers |
//! | 20        | 8    | term           | term of the entry at `index` |
//! | 28        | 8    | payload_len    | `n` |
//! | 36        | n    | payload        | the state ([`StateMachine::encode_snapshot`](crate::state_machine::StateMachine::encode_snapshot)) |
//! | 36 + n    | 4    | crc            | CRC32 of bytes `[0, 36 + n)` |
//!
//! Files are named `snapshot-{index:020}.snap` (zero-padded, so names sort as
//! indexes do) and are written crash-safely: temp file, fdatasync, rename, directory
//! fsync. A crash leaves either no file or a complete one, plus perhaps a temp file
//! that [`SnapshotDir::open`] removes.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use raftmq_store::{durability, LogIndex, StoreError, Term};

/// First bytes of every snapshot: tells a snapshot apart from any other file (or a
/// stray network message) before anything else is parsed.
pub const MAGIC: &[u8; 8] = b"RMQSNAP1";

/// The frame layout described in the module docs. A reader refuses other versions
/// rather than guessing at their layout.
pub const FORMAT_VERSION: u32 = 1;

/// Bytes in front of the payload.
const HEADER_BYTES: usize = 36;

/// Bytes of the trailing CRC.
const CRC_BYTES: usize = 4;

/// Bytes an encoded snapshot adds around its payload (header and CRC).
pub const FRAME_BYTES: usize = HEADER_BYTES + CRC_BYTES;

const FILE_PREFIX: &str = "snapshot-";
const FILE_SUFFIX: &str = ".snap";
const TMP_SUFFIX: &str = ".tmp";

/// Makes temp names unique within the process, so two saves can never write through
/// the same temp file even if a caller saves from more than one thread.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Which state a snapshot holds: everything applied up to and including `index`,
/// whose entry had term `term` (Raft needs the term to check the entry after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SnapshotMeta {
    /// The last log index the state covers.
    pub index: LogIndex,
    /// The term of the entry at `index`.
    pub term: Term,
}

/// Which check the bytes of a snapshot failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    /// Shorter than an empty snapshot.
    #[error("{len} bytes is shorter than the {FRAME_BYTES}-byte frame")]
    TooShort {
        /// Bytes present.
        len: usize,
    },
    /// The first eight bytes are not [`MAGIC`].
    #[error("bad magic (not a snapshot)")]
    BadMagic,
    /// A format version this broker cannot read.
    #[error("unknown snapshot format version {0}")]
    UnknownVersion(u32),
    /// The declared payload length does not account for the bytes present.
    #[error("header declares a {declared}-byte payload but {actual} bytes are present")]
    LengthMismatch {
        /// Payload length in the header.
        declared: u64,
        /// Payload bytes actually between header and CRC.
        actual: u64,
    },
    /// The CRC does not match the content.
    #[error("CRC mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    CrcMismatch {
        /// CRC in the file.
        stored: u32,
        /// CRC of the bytes read.
        computed: u32,
    },
    /// A valid snapshot stored under another index's name (a misplaced file).
    #[error("file name says index {named} but the snapshot is at index {found}")]
    NameMismatch {
        /// Index in the file name.
        named: LogIndex,
        /// Index in the content.
        found: LogIndex,
    },
}

/// Why a snapshot payload (the encoded state) could not be decoded. The payload
/// passed its CRC, so this means a bug or a newer broker wrote it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The payload ended inside the named field.
    #[error("state truncated in {0}")]
    Truncated(&'static str),
    /// A state version this broker does not know.
    #[error("unknown state version {0}")]
    UnknownVersion(u8),
    /// The named string field is not UTF-8.
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
    /// Bytes left over after the whole state was read.
    #[error("{0} bytes after the end of the state")]
    TrailingBytes(usize),
    /// The fields decode but contradict each other (for example keys out of order).
    #[error("inconsistent state: {0}")]
    Inconsistent(String),
}

/// Everything that can go wrong with snapshots. Messages are one line and name the
/// file involved, so callers can log them as they are.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file-system call failed.
    #[error("snapshot I/O error during {op} on {}: {source}", path.display())]
    Io {
        /// What was being done (`"read"`, `"rename"`, ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file system is full (`ENOSPC` or `EDQUOT`); the save left nothing behind.
    #[error("disk full during snapshot {op} on {}", path.display())]
    DiskFull {
        /// What was being done.
        op: &'static str,
        /// The file involved.
        path: PathBuf,
    },
    /// An fsync through the store's durability helpers failed.
    #[error("snapshot sync failed: {0}")]
    Sync(#[from] StoreError),
    /// A snapshot file failed a check.
    #[error("snapshot file {} is corrupt: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The check it failed.
        reason: Damage,
    },
    /// Encoded snapshot bytes not read from a file (received from a peer) failed a
    /// check.
    #[error("snapshot bytes are invalid: {0}")]
    Invalid(Damage),
    /// No snapshot file for this index.
    #[error("no snapshot at index {0}")]
    NotFound(LogIndex),
    /// A valid snapshot already exists at this index with another term: two
    /// different states claim to be the committed state at one index, which Raft
    /// rules out, so neither is overwritten.
    #[error(
        "snapshot at index {index} exists with term {existing}, refusing one with term {offered}"
    )]
    Conflict {
        /// The index.
        index: LogIndex,
        /// Term of the stored snapshot.
        existing: Term,
        /// Term of the one offered.
        offered: Term,
    },
    /// The payload could not be decoded into a state.
    #[error("snapshot state cannot be decoded: {0}")]
    Payload(#[from] PayloadError),
}

impl SnapshotError {
    /// Wraps an I/O error, reporting a full disk as [`SnapshotError::DiskFull`] (as the
    /// store does) so the caller can tell it from a failing disk.
    fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> SnapshotError {
        let path = path.into();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => SnapshotError::DiskFull { op, path },
            _ => SnapshotError::Io { op, path, source },
        }
    }

    /// True when the disk (or quota) is full, here or in a sync.
    pub fn is_disk_full(&self) -> bool {
        match self {
            SnapshotError::DiskFull { .. } => true,
            SnapshotError::Sync(e) => e.is_disk_full(),
            _ => false,
        }
    }
}

/// Encodes a snapshot: the frame of the module docs around `payload`. These bytes are
/// both the file content and what a leader sends to a follower.
pub fn encode_file(meta: SnapshotMeta, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(FRAME_BYTES + payload.len());
    buf.put_slice(MAGIC);
    buf.put_u32_le(FORMAT_VERSION);
    buf.put_u64_le(meta.index.0);
    buf.put_u64_le(meta.term.0);
    buf.put_u64_le(payload.len() as u64);
    buf.put_slice(payload);
    let crc = crc32fast::hash(&buf);
    buf.put_u32_le(crc);
    buf.freeze()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Checks the frame and CRC of `bytes` and returns the meta and the payload.
fn check_frame(bytes: &Bytes) -> Result<(SnapshotMeta, Bytes), Damage> {
    let len = bytes.len();
    if len < FRAME_BYTES {
        return Err(Damage::TooShort { len });
    }
    if &bytes[..8] != MAGIC {
        return Err(Damage::BadMagic);
    }
    let version = u32_at(bytes, 8);
    if version != FORMAT_VERSION {
        return Err(Damage::UnknownVersion(version));
    }
    let declared = u64_at(bytes, 28);
    let actual = (len - FRAME_BYTES) as u64;
    if declared != actual {
        return Err(Damage::LengthMismatch { declared, actual });
    }
    let body_end = len - CRC_BYTES;
    let stored = u32_at(bytes, body_end);
    let computed = crc32fast::hash(&bytes[..body_end]);
    if stored != computed {
        return Err(Damage::CrcMismatch { stored, computed });
    }
    let meta = SnapshotMeta {
        index: LogIndex(u64_at(bytes, 12)),
        term: Term(u64_at(bytes, 20)),
    };
    Ok((meta, bytes.slice(HEADER_BYTES..body_end)))
}

/// Verifies encoded snapshot bytes (from a file or a peer) and splits them into the
/// meta and the payload (a zero-copy slice of `bytes`). Every byte is covered: a
/// damaged or truncated snapshot is an error ([`SnapshotError::Invalid`]), never a
/// panic or a wrong state.
pub fn decode_file(bytes: &Bytes) -> Result<(SnapshotMeta, Bytes), SnapshotError> {
    check_frame(bytes).map_err(SnapshotError::Invalid)
}

/// The file name of the snapshot at `index`.
pub fn file_name(index: LogIndex) -> String {
    format!("{FILE_PREFIX}{:020}{FILE_SUFFIX}", index.0)
}

/// The index a snapshot file name stands for; `None` for any other name (temp files
/// included), which the directory then ignores.
fn parse_file_name(name: &str) -> Option<LogIndex> {
    let digits = name.strip_prefix(FILE_PREFIX)?.strip_suffix(FILE_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(LogIndex)
}

/// Whether `name` is a temp file a save of ours left behind.
fn is_tmp_name(name: &str) -> bool {
    name.starts_with(FILE_PREFIX) && name.ends_with(TMP_SUFFIX)
}

/// The result of [`SnapshotDir::newest_valid`].
#[derive(Debug)]
pub struct NewestValid {
    /// The newest snapshot that passed every check, with its payload.
    pub snapshot: Option<(SnapshotMeta, Bytes)>,
    /// Newer snapshot files that failed their checks, newest first: each a
    /// [`SnapshotError::Corrupt`] naming its file, for the caller to log.
    pub skipped: Vec<SnapshotError>,
}

/// The snapshot directory of a data dir (`<data>/snapshots/`).
///
/// Holds no open files: every call works from the directory as it is on disk, so the
/// directory is the single source of truth after a crash. Saves and removals are
/// meant to come from one owner (the node); reads may come from anywhere.
#[derive(Debug, Clone)]
pub struct SnapshotDir {
    dir: PathBuf,
}

impl SnapshotDir {
    /// Opens `dir`, creating it if missing, and removes temp files left by saves that
    /// a crash interrupted (they were never renamed into place, so nothing refers to
    /// them).
    pub fn open(dir: &Path) -> Result<SnapshotDir, SnapshotError> {
        if !dir.is_dir() {
            fs::create_dir_all(dir).map_err(|e| SnapshotError::io("create directory", dir, e))?;
            // Make the new directory's entry durable, or a crash could lose it along
            // with every snapshot later saved in it.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                durability::sync_dir(parent)?;
            }
        }
        let this = SnapshotDir {
            dir: dir.to_path_buf(),
        };
        let mut removed = false;
        for name in this.names()? {
            if is_tmp_name(&name) {
                let path = this.dir.join(&name);
                match fs::remove_file(&path) {
                    Ok(()) => removed = true,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(SnapshotError::io("unlink", path, e)),
                }
            }
        }
        if removed {
            durability::sync_dir(&this.dir)?;
        }
        Ok(this)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The path the snapshot at `index` has (whether or not it exists).
    pub fn file_path(&self, index: LogIndex) -> PathBuf {
        self.dir.join(file_name(index))
    }

    /// Saves `payload` as the snapshot `meta`, crash-safely. Idempotent: if a valid
    /// snapshot with the same meta exists it is kept as is; a corrupt one is replaced.
    pub fn save(&self, meta: SnapshotMeta, payload: &[u8]) -> Result<(), SnapshotError> {
        self.write(meta, &encode_file(meta, payload))
    }

    /// Saves an encoded snapshot (as received from a leader) after verifying it, and
    /// returns its meta. Bytes that fail [`decode_file`] are refused and nothing is
    /// written. Idempotent like [`save`](SnapshotDir::save).
    pub fn save_encoded(&self, bytes: &Bytes) -> Result<SnapshotMeta, SnapshotError> {
        let (meta, _) = decode_file(bytes)?;
        self.write(meta, bytes)?;
        Ok(meta)
    }

    fn write(&self, meta: SnapshotMeta, encoded: &[u8]) -> Result<(), SnapshotError> {
        match self.load(meta.index) {
            Ok((existing, _)) if existing == meta => return Ok(()),
            Ok((existing, _)) => {
                return Err(SnapshotError::Conflict {
                    index: meta.index,
                    existing: existing.term,
                    offered: meta.term,
                })
            }
            // Missing or damaged: write (a damaged file is replaced by the rename).
            Err(SnapshotError::NotFound(_)) | Err(SnapshotError::Corrupt { .. }) => {}
            Err(e) => return Err(e),
        }
        let name = file_name(meta.index);
        let path = self.dir.join(&name);
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!("{name}.{n}{TMP_SUFFIX}"));
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(|e| SnapshotError::io("create", &tmp, e))?;
            file.write_all(encoded)
                .map_err(|e| SnapshotError::io("write", &tmp, e))?;
            durability::sync_data(&file, &tmp)?;
            fs::rename(&tmp, &path).map_err(|e| SnapshotError::io("rename", &tmp, e))?;
            durability::sync_dir(&self.dir)?;
            Ok(())
        })();
        if result.is_err() {
            // Best effort: `open` removes leftovers too.
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Indexes of the snapshot files present, ascending, by name only: the files are
    /// not read, so a listed snapshot may still fail [`load`](SnapshotDir::load).
    pub fn list(&self) -> Result<Vec<LogIndex>, SnapshotError> {
        let mut indexes: Vec<LogIndex> = self
            .names()?
            .iter()
            .filter_map(|name| parse_file_name(name))
            .collect();
        indexes.sort_unstable();
        Ok(indexes)
    }

    /// Reads and verifies the snapshot at `index` and returns the whole encoded file
    /// with its meta and payload (a slice of it).
    fn read_checked(&self, index: LogIndex) -> Result<(Bytes, SnapshotMeta, Bytes), SnapshotError> {
        let path = self.file_path(index);
        let bytes = match fs::read(&path) {
            Ok(bytes) => Bytes::from(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SnapshotError::NotFound(index))
            }
            Err(e) => return Err(SnapshotError::io("read", path, e)),
        };
        let corrupt = |reason| SnapshotError::Corrupt {
            path: path.clone(),
            reason,
        };
        let (meta, payload) = check_frame(&bytes).map_err(corrupt)?;
        if meta.index != index {
            return Err(corrupt(Damage::NameMismatch {
                named: index,
                found: meta.index,
            }));
        }
        Ok((bytes, meta, payload))
    }

    /// Loads the snapshot at `index`: checks the frame, the CRC and that the content
    /// is the snapshot its name says; returns the meta and the payload.
    pub fn load(&self, index: LogIndex) -> Result<(SnapshotMeta, Bytes), SnapshotError> {
        let (_, meta, payload) = self.read_checked(index)?;
        Ok((meta, payload))
    }

    /// The encoded file of the snapshot at `index`, to send to a follower. Verified
    /// like [`load`](SnapshotDir::load) first, so a leader notices a damaged file
    /// itself instead of having every follower refuse it.
    pub fn read_encoded(&self, index: LogIndex) -> Result<Bytes, SnapshotError> {
        let (bytes, _, _) = self.read_checked(index)?;
        Ok(bytes)
    }

    /// Deletes every snapshot with an index below `index` (retention moved the base
    /// past them); returns how many were deleted. One directory fsync covers them all.
    pub fn remove_below(&self, index: LogIndex) -> Result<usize, SnapshotError> {
        self.remove_where(|i| i < index)
    }

    /// Deletes every snapshot with an index above `index` (orphans: snapshots of
    /// entries that are no longer in the log, for example after the log was reset to
    /// an older base); returns how many were deleted.
    pub fn remove_above(&self, index: LogIndex) -> Result<usize, SnapshotError> {
        self.remove_where(|i| i > index)
    }

    fn remove_where(&self, doomed: impl Fn(LogIndex) -> bool) -> Result<usize, SnapshotError> {
        let mut removed = 0;
        for index in self.list()?.into_iter().filter(|&i| doomed(i)) {
            let path = self.file_path(index);
            match fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(SnapshotError::io("unlink", path, e)),
            }
        }
        if removed > 0 {
            durability::sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// The newest snapshot that passes every check, skipping (and reporting) newer
    /// ones that do not. I/O errors other than a corrupt file are returned: a disk
    /// that cannot be read is not a reason to fall back to an older state silently.
    pub fn newest_valid(&self) -> Result<NewestValid, SnapshotError> {
        let mut skipped = Vec::new();
        for index in self.list()?.into_iter().rev() {
            match self.load(index) {
                Ok(snapshot) => {
                    return Ok(NewestValid {
                        snapshot: Some(snapshot),
                        skipped,
                    })
                }
                Err(e @ SnapshotError::Corrupt { .. }) => skipped.push(e),
                // Removed between listing and reading: it is simply not there.
                Err(SnapshotError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(NewestValid {
            snapshot: None,
            skipped,
        })
    }

    /// Names of the directory's entries (non-UTF-8 names cannot be ours: skipped).
    fn names(&self) -> Result<Vec<String>, SnapshotError> {
        let entries = fs::read_dir(&self.dir)
            .map_err(|e| SnapshotError::io("read directory", &self.dir, e))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| SnapshotError::io("read directory", &self.dir, e))?;
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(index: u64, term: u64) -> SnapshotMeta {
        SnapshotMeta {
            index: LogIndex(index),
            term: Term(term),
        }
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + 7) as u8).collect()
    }

    #[test]
    fn encoded_snapshots_round_trip_and_have_the_documented_layout() {
        for len in [0, 1, 100, 70_000] {
            let p = payload(len);
            let bytes = encode_file(meta(42, 7), &p);
            assert_eq!(bytes.len(), FRAME_BYTES + len);
            assert_eq!(&bytes[..8], b"RMQSNAP1");
            assert_eq!(u32_at(&bytes, 8), 1);
            assert_eq!(u64_at(&bytes, 12), 42);
            assert_eq!(u64_at(&bytes, 20), 7);
            assert_eq!(u64_at(&bytes, 28), len as u64);
            assert_eq!(
                u32_at(&bytes, 36 + len),
                crc32fast::hash(&bytes[..36 + len])
            );
            let (m, decoded) = decode_file(&bytes).unwrap();
            assert_eq!(m, meta(42, 7));
            assert_eq!(&decoded[..], &p[..]);
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_is_detected() {
        let bytes = encode_file(meta(9, 3), &payload(64));
        for byte in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.to_vec();
                damaged[byte] ^= 1 << bit;
                assert!(
                    decode_file(&Bytes::from(damaged)).is_err(),
                    "flip of bit {bit} of byte {byte} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn a_truncated_or_extended_snapshot_is_detected() {
        let bytes = encode_file(meta(9, 3), &payload(64));
        for cut in 0..bytes.len() {
            assert!(decode_file(&bytes.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(matches!(
            decode_file(&Bytes::from(longer)),
            Err(SnapshotError::Invalid(Damage::LengthMismatch {
                declared: 64,
                actual: 65
            }))
        ));
    }

    #[test]
    fn file_names_sort_as_indexes_and_only_ours_parse() {
        assert_eq!(
            file_name(LogIndex(42)),
            "snapshot-00000000000000000042.snap"
        );
        assert_eq!(
            parse_file_name(&file_name(LogIndex(u64::MAX))),
            Some(LogIndex(u64::MAX))
        );
        for other in [
            "snapshot-42.snap",
            "snapshot-0000000000000000004x.snap",
            "snapshot-00000000000000000042.snap.3.tmp",
            "snapshot-99999999999999999999.snap",
            "hardstate",
        ] {
            assert_eq!(parse_file_name(other), None, "{other}");
        }
    }

    #[test]
    fn saved_snapshots_load_list_and_read_back_as_encoded() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(&tmp.path().join("snapshots")).unwrap();
        assert_eq!(dir.list().unwrap(), vec![]);
        for index in [30, 10, 20] {
            dir.save(meta(index, index / 10), &payload(index as usize))
                .unwrap();
        }
        assert_eq!(
            dir.list().unwrap(),
            vec![LogIndex(10), LogIndex(20), LogIndex(30)]
        );
        let (m, p) = dir.load(LogIndex(20)).unwrap();
        assert_eq!(m, meta(20, 2));
        assert_eq!(&p[..], &payload(20)[..]);
        assert_eq!(
            dir.read_encoded(LogIndex(20)).unwrap(),
            encode_file(meta(20, 2), &payload(20))
        );
        assert!(matches!(
            dir.load(LogIndex(25)),
            Err(SnapshotError::NotFound(LogIndex(25)))
        ));
        // Reopening finds the same files.
        let dir = SnapshotDir::open(dir.path()).unwrap();
        assert_eq!(dir.list().unwrap().len(), 3);
    }

    #[test]
    fn saving_is_idempotent_refuses_a_conflicting_term_and_replaces_a_corrupt_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(tmp.path()).unwrap();
        dir.save(meta(5, 2), b"state").unwrap();
        dir.save(meta(5, 2), b"state").unwrap();
        assert!(matches!(
            dir.save(meta(5, 3), b"other"),
            Err(SnapshotError::Conflict {
                index: LogIndex(5),
                existing: Term(2),
                offered: Term(3)
            })
        ));
        assert_eq!(&dir.load(LogIndex(5)).unwrap().1[..], b"state");

        fs::write(dir.file_path(LogIndex(5)), b"garbage").unwrap();
        dir.save(meta(5, 2), b"state").unwrap();
        assert_eq!(&dir.load(LogIndex(5)).unwrap().1[..], b"state");
        assert_eq!(
            fs::read_dir(tmp.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn received_bytes_are_verified_before_they_are_stored() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(tmp.path()).unwrap();
        let bytes = encode_file(meta(8, 1), b"from the leader");
        assert_eq!(dir.save_encoded(&bytes).unwrap(), meta(8, 1));
        assert_eq!(dir.read_encoded(LogIndex(8)).unwrap(), bytes);

        let mut damaged = encode_file(meta(9, 1), b"from the leader").to_vec();
        damaged[40] ^= 0x10;
        assert!(matches!(
            dir.save_encoded(&Bytes::from(damaged)),
            Err(SnapshotError::Invalid(Damage::CrcMismatch { .. }))
        ));
        assert_eq!(dir.list().unwrap(), vec![LogIndex(8)]);
    }

    #[test]
    fn crash_leftovers_are_ignored_and_removed_on_open() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(tmp.path()).unwrap();
        dir.save(meta(10, 1), b"ok").unwrap();
        // A save interrupted before its rename: a partial temp file.
        let leftover = tmp
            .path()
            .join(format!("{}.17{TMP_SUFFIX}", file_name(LogIndex(20))));
        fs::write(&leftover, &encode_file(meta(20, 1), b"partial")[..10]).unwrap();
        fs::write(tmp.path().join("unrelated"), b"x").unwrap();
        assert_eq!(dir.list().unwrap(), vec![LogIndex(10)]);

        let dir = SnapshotDir::open(tmp.path()).unwrap();
        assert!(!leftover.exists());
        assert!(
            tmp.path().join("unrelated").exists(),
            "only our temp files go"
        );
        assert_eq!(dir.list().unwrap(), vec![LogIndex(10)]);
    }

    #[test]
    fn a_snapshot_under_another_index_name_is_corrupt() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(tmp.path()).unwrap();
        dir.save(meta(5, 1), b"five").unwrap();
        fs::copy(dir.file_path(LogIndex(5)), dir.file_path(LogIndex(6))).unwrap();
        match dir.load(LogIndex(6)) {
            Err(SnapshotError::Corrupt { path, reason }) => {
                assert_eq!(path, dir.file_path(LogIndex(6)));
                assert_eq!(
                    reason,
                    Damage::NameMismatch {
                        named: LogIndex(6),
                        found: LogIndex(5)
                    }
                );
            }
            other => panic!("expected a name mismatch, got {other:?}"),
        }
    }

    #[test]
    fn remove_below_and_above_delete_exactly_the_outer_snapshots() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(tmp.path()).unwrap();
        for index in [10, 20, 30, 40, 50] {
            dir.save(meta(index, 1), b"s").unwrap();
        }
        assert_eq!(dir.remove_below(LogIndex(30)).unwrap(), 2);
        assert_eq!(dir.remove_below(LogIndex(30)).unwrap(), 0);
        assert_eq!(dir.remove_above(LogIndex(40)).unwrap(), 1);
        assert_eq!(dir.list().unwrap(), vec![LogIndex(30), LogIndex(40)]);
    }

    #[test]
    fn newest_valid_skips_corrupt_newer_snapshots_and_reports_them() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(tmp.path()).unwrap();
        let empty = dir.newest_valid().unwrap();
        assert!(empty.snapshot.is_none() && empty.skipped.is_empty());

        for index in [10, 20, 30] {
            dir.save(meta(index, 1), format!("state {index}").as_bytes())
                .unwrap();
        }
        // Bit rot in the newest, a torn write in the one before.
        let newest = dir.file_path(LogIndex(30));
        let mut bytes = fs::read(&newest).unwrap();
        bytes[38] ^= 1;
        fs::write(&newest, bytes).unwrap();
        let torn = dir.file_path(LogIndex(20));
        let len = fs::metadata(&torn).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(&torn)
            .unwrap()
            .set_len(len - 3)
            .unwrap();

        let found = dir.newest_valid().unwrap();
        let (m, payload) = found.snapshot.unwrap();
        assert_eq!(m, meta(10, 1));
        assert_eq!(&payload[..], b"state 10");
        let skipped: Vec<_> = found
            .skipped
            .iter()
            .map(|e| match e {
                SnapshotError::Corrupt { path, .. } => path.clone(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(skipped, vec![newest, torn]);
    }

    #[test]
    fn error_messages_are_one_line_and_name_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(tmp.path()).unwrap();
        fs::write(dir.file_path(LogIndex(3)), [b'x'; 64]).unwrap();
        let err = dir.load(LogIndex(3)).unwrap_err();
        let text = err.to_string();
        assert!(!text.contains('\n'), "{text}");
        assert!(
            text.contains("snapshot-00000000000000000003.snap"),
            "{text}"
        );
        assert!(text.contains("bad magic"), "{text}");
        assert_eq!(
            SnapshotError::NotFound(LogIndex(4)).to_string(),
            "no snapshot at index 4"
        );
    }
}
