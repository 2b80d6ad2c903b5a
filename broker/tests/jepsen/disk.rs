//! Disk faults: damage to a stopped node's commit log (bit flips, a zeroed entry in
//! the middle, a cut tail), and a small tmpfs on which a node's disk fills up.
//!
//! The entry layout walked here is the one documented in `store/src/entry.rs`:
//! a 32-byte little-endian header (magic `0x4D52` at 0, `body_len` at 8, `index` at
//! 24) and the body, packed back to back; zeros after the last entry.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

const HEADER_BYTES: u64 = 32;
const MAGIC: u16 = 0x4D52;

/// Where one entry sits on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryLocation {
    /// Its segment file.
    pub path: PathBuf,
    /// Byte offset of its header in the file.
    pub offset: u64,
    /// Header plus body bytes.
    pub len: u64,
    /// Its log index.
    pub index: u64,
}

/// The segment files of a node's log, oldest first.
pub fn segments(data_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir.join("log"))
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Every entry of a stopped node's log, in order, found by walking the headers
/// (no CRC check: this is where damage goes, not a reader).
pub fn entries(data_dir: &Path) -> Vec<EntryLocation> {
    let mut out = Vec::new();
    for path in segments(data_dir) {
        let bytes = std::fs::read(&path).expect("read a segment");
        let mut at = 0u64;
        while at + HEADER_BYTES <= bytes.len() as u64 {
            let h = &bytes[at as usize..(at + HEADER_BYTES) as usize];
            let magic = u16::from_le_bytes([h[0], h[1]]);
            if magic != MAGIC {
                break;
            }
            let body_len = u64::from(u32::from_le_bytes(h[8..12].try_into().expect("4 bytes")));
            let index = u64::from_le_bytes(h[24..32].try_into().expect("8 bytes"));
            let len = HEADER_BYTES + body_len;
            if at + len > bytes.len() as u64 {
                break;
            }
            out.push(EntryLocation {
                path: path.clone(),
                offset: at,
                len,
                index,
            });
            at += len;
        }
    }
    out
}

/// XORs `mask` into the byte at `offset` of `path`.
pub fn flip_bits(path: &Path, offset: u64, mask: u8) {
    assert_ne!(mask, 0, "a flip must change something");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open a segment");
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset)).expect("seek");
    f.read_exact(&mut b).expect("read");
    b[0] ^= mask;
    f.seek(SeekFrom::Start(offset)).expect("seek");
    f.write_all(&b).expect("write");
    f.sync_all().expect("sync");
}

/// Writes `len` zero bytes at `offset` of `path` (an entry that never reached the
/// disk, or everything after a cut).
pub fn zero(path: &Path, offset: u64, len: u64) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open a segment");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    let chunk = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n]).expect("write zeros");
        left -= n as u64;
    }
    f.sync_all().expect("sync");
}

/// Cuts the log at entry `from` (inclusive): zeroes the rest of its segment and
/// removes later segments and every index checkpoint after it, as a disk that lost
/// the tail would leave it.
pub fn cut_tail(data_dir: &Path, from: &EntryLocation) {
    let size = std::fs::metadata(&from.path).expect("segment").len();
    zero(&from.path, from.offset, size - from.offset);
    for path in segments(data_dir) {
        if path > from.path {
            std::fs::remove_file(&path).expect("remove a later segment");
        }
    }
    let _ = std::fs::remove_file(from.path.with_extension("idx"));
    for path in segments(data_dir) {
        if path > from.path {
            let _ = std::fs::remove_file(path.with_extension("idx"));
        }
    }
}

/// A tmpfs of a given size, unmounted on drop. Needs root (CAP_SYS_ADMIN).
#[derive(Debug)]
pub struct SmallFs {
    /// The mount point.
    pub path: PathBuf,
    _parent: tempfile::TempDir,
}

impl SmallFs {
    /// Mounts a tmpfs of `bytes`, or says why it cannot.
    pub fn mount(bytes: u64) -> Result<SmallFs, String> {
        let parent = tempfile::Builder::new()
            .prefix("raftmq-smallfs-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let path = parent.path().join("mnt");
        std::fs::create_dir(&path).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(SmallFs {
            path,
            _parent: parent,
        })
    }

    /// Grows (or shrinks) the filesystem in place.
    pub fn resize(&self, bytes: u64) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(&self.path)
            .status()
            .expect("run mount");
        assert!(status.success(), "remount the small filesystem");
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
