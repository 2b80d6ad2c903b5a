//! The exclusive lock a broker holds on its data directory for its whole life.
//!
//! Two brokers writing one data directory corrupt it beyond repair: both append to
//! the same segments and hard state, both may lead, and on the next start recovery
//! cuts the log at the first entry they interleaved, losing acknowledged messages.
//! The hard state's node id only stops a broker with a *different* id; this lock
//! stops the second broker whatever its id.
//!
//! The lock is `flock(LOCK_EX | LOCK_NB)` on `<data dir>/LOCK`. The kernel releases it
//! when the holder's file is closed or the process dies (even by `SIGKILL`), so a
//! crash never leaves a stale lock behind and no clean-up is needed. The file holds
//! the holder's PID, written after the lock is taken, so the refusal can name the
//! process that holds it. A `flock` belongs to the open file description: a second
//! open in the same process conflicts too, which is what in-process tests need.
//!
//! Not a protection on network file systems whose `flock` is local to one client
//! (old NFS): a data directory belongs on a local disk anyway (its `fsync` and mmap
//! guarantees are local ones).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock file's name inside the data directory.
pub const LOCK_FILE_NAME: &str = "LOCK";

/// Why the data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum DataDirLockError {
    /// Another process (or another broker in this process) holds the lock.
    #[error(
        "data directory {dir} is in use by another broker{holder}; stop it or pick another --data-dir",
        holder = match pid { Some(pid) => format!(" (pid {pid})"), None => String::new() }
    )]
    InUse {
        /// The data directory.
        dir: PathBuf,
        /// The PID recorded by the holder, when readable.
        pid: Option<u32>,
    },
    /// The lock file could not be opened, locked or written.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The lock file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// A held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct DataDirLock {
    // Never read: holding the open file is what holds the lock.
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Takes the lock on `dir` (which must exist) without waiting.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, DataDirLockError> {
        let path = dir.join(LOCK_FILE_NAME);
        let io_error = |op, source| DataDirLockError::Io {
            op,
            path: path.clone(),
            source,
        };
        // Not truncated on open: the holder's PID must stay readable to a loser.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_error("open", e))?;
        // SAFETY: flock on a file descriptor we own, valid for the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(DataDirLockError::InUse {
                    dir: dir.to_path_buf(),
                    pid: read_pid(&mut file),
                });
            }
            return Err(io_error("lock", err));
        }
        let pid = std::process::id();
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{pid}"))
            .map_err(|e| io_error("write", e))?;
        // Not synced: the PID only informs a concurrent loser; after a crash the
        // lock is gone with the process and a stale PID means nothing.
        Ok(DataDirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_a_held_lock_when_a_second_broker_locks_should_refuse_naming_dir_and_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let err = DataDirLock::acquire(dir.path()).unwrap_err();
        match &err {
            DataDirLockError::InUse { dir: d, pid } => {
                assert_eq!(d, dir.path());
                assert_eq!(*pid, Some(std::process::id()));
            }
            other => panic!("expected InUse, got {other:?}"),
        }
        let text = err.to_string();
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        drop(first);
    }

    #[test]
    fn given_a_released_lock_when_locking_again_should_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        assert_eq!(first.path(), dir.path().join(LOCK_FILE_NAME));
        drop(first);
        let second = DataDirLock::acquire(dir.path()).unwrap();
        drop(second);
    }

    #[test]
    fn given_a_stale_lock_file_from_a_dead_process_should_lock() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOCK_FILE_NAME), "999999\n").unwrap();
        let lock = DataDirLock::acquire(dir.path()).unwrap();
        let pid = std::fs::read_to_string(lock.path()).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
    }
}
