//! Every operation that makes something durable goes through this module, so that
//! a reader can audit what an acknowledgement means.
//!
//! The rules the store follows:
//! - A byte appended to a segment is durable only after `sync_data` of that file
//!   returned `Ok` *after* the byte was written. The log's `synced_index` only moves
//!   after such a call.
//! - A new file (segment) is created under a temporary name, fully preallocated and
//!   fsynced, renamed into place, and then its directory is fsynced
//!   (`create_preallocated`), so a crash leaves either no segment or a complete one.
//! - Small metadata files (index checkpoints) are replaced with
//!   write-temp-fsync-rename-fsync-directory (`write_file_atomic`): after a crash the
//!   reader sees the old or the new content, never a mix.
//! - Removing a file is followed by a directory fsync (`remove_file`), so a deleted
//!   segment does not come back after a crash.
//! - Cutting or truncating a log zeroes the bytes and fsyncs the file (`zero_range`)
//!   before anything else relies on the cut.
//!
//! A failed `fsync`/`fdatasync` is not retried: after such a failure Linux may have
//! dropped the dirty pages, so a retry could falsely report success. Callers poison
//! themselves instead.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::error::StoreError;

/// Suffix of files being created; leftovers are removed on open.
pub(crate) const TMP_SUFFIX: &str = ".tmp";

/// Suffix of a segment file retention took out of the log, to be unlinked (by a
/// background thread, or when the log is next opened).
pub(crate) const DELETED_SUFFIX: &str = ".deleted";

/// `fdatasync`: every byte written to `file` before this call (through `write`/`pwrite`
/// or through a shared mapping of it) and the metadata needed to read it back (file
/// size, block allocation) is on stable storage when this returns `Ok`.
pub fn sync_data(file: &File, path: &Path) -> Result<(), StoreError> {
    file.sync_data()
        .map_err(|e| StoreError::io("fdatasync", path, e))
}

/// `fsync`: like [`sync_data`] and also all the inode's metadata (used after extent
/// changes such as zeroing a range, where being conservative is cheap).
pub(crate) fn sync_all(file: &File, path: &Path) -> Result<(), StoreError> {
    file.sync_all()
        .map_err(|e| StoreError::io("fsync", path, e))
}

/// `fsync` of a directory: creations, renames and removals of entries in `dir` done
/// before this call survive a crash.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    let handle = File::open(dir).map_err(|e| StoreError::io("open directory", dir, e))?;
    handle
        .sync_all()
        .map_err(|e| StoreError::io("fsync directory", dir, e))
}

/// Reserves `len` bytes of blocks for `file` (`posix_fallocate`), so that later writes
/// inside that range cannot fail with `ENOSPC` (and a mapping of it can never SIGBUS).
/// A full disk shows up here as [`StoreError::DiskFull`].
pub(crate) fn preallocate(file: &File, path: &Path, len: u64) -> Result<(), StoreError> {
    let len = libc::off_t::try_from(len).map_err(|_| {
        StoreError::InvalidConfig(format!("file length {len} does not fit in off_t"))
    })?;
    // SAFETY: `file` owns a valid open descriptor for the duration of the call;
    // posix_fallocate only reads its integer arguments.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    if rc != 0 {
        return Err(StoreError::io(
            "posix_fallocate",
            path,
            io::Error::from_raw_os_error(rc),
        ));
    }
    Ok(())
}

/// Creates `dir/name` holding `len` preallocated zero bytes, durably: written as
/// `name.tmp`, preallocated, fsynced, renamed, directory fsynced. On error the
/// temporary file is removed and no `name` exists.
pub(crate) fn create_preallocated(dir: &Path, name: &str, len: u64) -> Result<File, StoreError> {
    let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
    let path = dir.join(name);
    let result = (|| {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| StoreError::io("create", &tmp, e))?;
        preallocate(&file, &tmp, len)?;
        sync_all(&file, &tmp)?;
        fs::rename(&tmp, &path).map_err(|e| StoreError::io("rename", &tmp, e))?;
        sync_dir(dir)?;
        Ok(file)
    })();
    if result.is_err() {
        // Best effort: the temporary file is also removed on the next open.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Replaces `dir/name` with `bytes` atomically and durably (write `name.tmp`, fsync,
/// rename, fsync the directory). After a crash readers see the old or the new file.
pub(crate) fn write_file_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
    let path = dir.join(name);
    let result = (|| {
        let mut file = File::create(&tmp).map_err(|e| StoreError::io("create", &tmp, e))?;
        file.write_all(bytes)
            .map_err(|e| StoreError::io("write", &tmp, e))?;
        sync_all(&file, &tmp)?;
        fs::rename(&tmp, &path).map_err(|e| StoreError::io("rename", &tmp, e))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes `dir/name` (a missing file is fine) and fsyncs the directory, so the file
/// stays gone after a crash.
pub(crate) fn remove_file(dir: &Path, name: &str) -> Result<(), StoreError> {
    let path = dir.join(name);
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io("unlink", &path, e)),
    }
    sync_dir(dir)
}

/// Shrinks (or grows) `file` to `len` bytes and fsyncs it: bytes past `len` are gone
/// for good, also after a crash.
pub(crate) fn set_len(file: &File, path: &Path, len: u64) -> Result<(), StoreError> {
    file.set_len(len)
        .map_err(|e| StoreError::io("ftruncate", path, e))?;
    sync_all(file, path)
}

/// Makes `offset..offset + len` of `file` read as zeros, durably, keeping the blocks
/// allocated (`FALLOC_FL_ZERO_RANGE`, or plain zero writes where unsupported), then
/// fsyncs. Mappings of the file see the zeros at once.
pub(crate) fn zero_range(
    file: &File,
    path: &Path,
    offset: u64,
    len: u64,
) -> Result<(), StoreError> {
    if len == 0 {
        return Ok(());
    }
    let fast = match (libc::off_t::try_from(offset), libc::off_t::try_from(len)) {
        (Ok(off), Ok(n)) => {
            // SAFETY: valid descriptor owned by `file`; integer arguments only.
            let rc = unsafe {
                libc::fallocate(
                    file.as_raw_fd(),
                    libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                    off,
                    n,
                )
            };
            rc == 0
        }
        _ => false,
    };
    if !fast {
        write_zeros(file, path, offset, len)?;
    }
    sync_all(file, path)
}

/// Writes `len` zero bytes at `offset` in chunks (fallback for [`zero_range`]).
fn write_zeros(file: &File, path: &Path, offset: u64, len: u64) -> Result<(), StoreError> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(len) as usize];
    let mut done = 0u64;
    while done < len {
        let n = CHUNK.min(len - done) as usize;
        file.write_all_at(&zeros[..n], offset + done)
            .map_err(|e| StoreError::io("pwrite zeros", path, e))?;
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_files_are_preallocated_and_zeroed_ranges_read_back_as_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let file = create_preallocated(dir.path(), "a.log", 64 * 1024).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 64 * 1024);
        assert!(!dir.path().join("a.log.tmp").exists());
        file.write_all_at(&[7u8; 10_000], 100).unwrap();
        zero_range(&file, &dir.path().join("a.log"), 5000, 3000).unwrap();
        let mut buf = vec![0u8; 10_100];
        file.read_exact_at(&mut buf, 0).unwrap();
        assert!(buf[100..5000].iter().all(|&b| b == 7));
        assert!(buf[5000..8000].iter().all(|&b| b == 0));
        assert!(buf[8000..10_100].iter().all(|&b| b == 7));
    }

    #[test]
    fn atomic_writes_replace_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        write_file_atomic(dir.path(), "m", b"one").unwrap();
        write_file_atomic(dir.path(), "m", b"second").unwrap();
        assert_eq!(fs::read(dir.path().join("m")).unwrap(), b"second");
        remove_file(dir.path(), "m").unwrap();
        remove_file(dir.path(), "m").unwrap();
        assert!(!dir.path().join("m").exists());
    }
}
