//! The store's one error type. Every fallible public function returns
//! [`StoreError`]; `ENOSPC` is always reported as [`StoreError::DiskFull`] so the
//! broker can stop leading instead of retrying blindly. The disk-use limit, hit
//! before the disk is actually full, is [`StoreError::DiskUseLimit`].

use std::io;
use std::path::PathBuf;

use crate::disk_space::percent;
use crate::types::LogIndex;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An operating-system I/O call failed (other than a full disk).
    #[error("I/O error during {op} on {}: {source}", path.display())]
    Io {
        /// What the store was doing (`"fdatasync"`, `"pwrite"`, ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file system has no room left (`ENOSPC`); nothing was changed by the call.
    #[error("disk full during {op} on {}", path.display())]
    DiskFull {
        /// What the store was doing.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
    },
    /// Creating a segment would take the file system holding the log above
    /// `LogConfig::max_disk_use_ratio` (see [`crate::disk_space`]). Nothing was
    /// changed and the log stays usable: the call succeeds once space is freed.
    #[error(
        "disk use would reach {} of the file system holding {}, above the limit of {}: \
         appends are refused until retention frees space",
        percent(*.would_use_bytes as f64 / *.total_bytes as f64),
        .path.display(),
        percent(*.limit_ratio)
    )]
    DiskUseLimit {
        /// The log directory.
        path: PathBuf,
        /// Bytes in use on the file system now.
        used_bytes: u64,
        /// Bytes in use once the refused operation had created (and deleted) its
        /// segments.
        would_use_bytes: u64,
        /// Bytes an unprivileged process can use on the file system (used + available).
        total_bytes: u64,
        /// The configured limit, a fraction of `total_bytes`.
        limit_ratio: f64,
    },
    /// Stored bytes failed validation (magic, kind, length, CRC, index or term order).
    #[error("corrupt data in {} at byte {offset}: {reason}", path.display())]
    Corrupt {
        /// The file holding the bad bytes.
        path: PathBuf,
        /// Byte offset of the bad record in that file.
        offset: u64,
        /// What check failed.
        reason: String,
    },
    /// The requested index is not stored (deleted by retention, truncated or not yet written).
    #[error("index {index} out of range {first}..={last}")]
    OutOfRange {
        /// The index asked for.
        index: LogIndex,
        /// The first stored index.
        first: LogIndex,
        /// The last stored index.
        last: LogIndex,
    },
    /// Appended entries do not continue the log (`first == last_index() + 1`, then +1 each).
    #[error("non-contiguous append: expected index {expected}, got {got}")]
    NonContiguous {
        /// The index the log expects next.
        expected: LogIndex,
        /// The index that was offered.
        got: LogIndex,
    },
    /// An appended entry's term is lower than the term before it (terms never decrease in a log).
    #[error("term regression at index {index}: term {term} after term {previous}")]
    TermRegression {
        /// Index of the offending entry.
        index: LogIndex,
        /// Its term.
        term: u64,
        /// The term of the entry before it.
        previous: u64,
    },
    /// An entry body is larger than `LogConfig::max_entry_bytes`.
    #[error("entry of {len} bytes exceeds the maximum of {max} bytes")]
    EntryTooLarge {
        /// The body length offered.
        len: usize,
        /// The configured maximum.
        max: u32,
    },
    /// A queue-index slot does not continue the queue (`base_offset == next_offset()`).
    #[error("non-contiguous queue slot: expected base offset {expected}, got {got}")]
    QueueGap {
        /// The offset the queue expects next.
        expected: u64,
        /// The offset that was offered.
        got: u64,
    },
    /// The configuration is unusable (for example an entry limit larger than a segment).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// An earlier sync failed: the page cache may have dropped unsynced data, so the log
    /// refuses further writes until it is reopened (and recovered from disk).
    #[error("log is poisoned by an earlier failed sync; reopen it")]
    Poisoned,
}

impl StoreError {
    /// Wraps an I/O error, turning `ENOSPC` (and `EDQUOT`) into [`StoreError::DiskFull`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> StoreError {
        let path = path.into();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StoreError::DiskFull { op, path },
            _ => StoreError::Io { op, path, source },
        }
    }

    /// A validation failure at `offset` of `path`.
    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> StoreError {
        StoreError::Corrupt {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }

    /// True for [`StoreError::DiskFull`].
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::DiskFull { .. })
    }

    /// True for [`StoreError::DiskUseLimit`].
    pub fn is_disk_use_limit(&self) -> bool {
        matches!(self, StoreError::DiskUseLimit { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_maps_to_disk_full() {
        let err = StoreError::io("pwrite", "x", io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(err.is_disk_full());
        let err = StoreError::io("pwrite", "x", io::Error::from_raw_os_error(libc::EIO));
        assert!(matches!(err, StoreError::Io { .. }));
    }
}
