//! How full the file system holding the log is, and the disk-use limit
//! ([`LogConfig::max_disk_use_ratio`](crate::LogConfig::max_disk_use_ratio)).
//!
//! The limit is checked only when the log is about to create a segment (a roll on
//! append, a restart of an empty log, a reset): segments are preallocated, so an
//! append inside an existing segment consumes no new space and cannot push the disk
//! fuller. A refused creation leaves the log unchanged and usable, unlike a failed
//! fsync: once retention (or anything else) frees space, the same append succeeds.
//!
//! "Used" is what `df` calls it: blocks in use, `f_blocks - f_bfree`. "Total" is what
//! an unprivileged process can fill, `used + f_bavail`: it leaves out the blocks the
//! file system keeps back for root (5% of an ext4 file system by default, sometimes far
//! more). So `used / total` is `df`'s `Use%`, and it reaches 100% exactly when an
//! unprivileged write starts failing with `ENOSPC`. Measuring against the raw size
//! (`f_blocks`) instead would make a file system with a large reserve look emptier
//! than `df` says, while `size - available` would make it look fuller (both differ
//! from the figure operators read). A broker running as root can also fill the
//! reserve, so for it the limit is conservative.

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::StoreError;

/// Space on the file system holding a directory, from `statvfs`, in bytes.
/// `used_bytes + available_bytes == total_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUse {
    /// Space an unprivileged process can use: `used_bytes + available_bytes`
    /// (the file system's size minus the blocks reserved for root).
    pub total_bytes: u64,
    /// Free space an unprivileged process can still fill (`f_bavail`, `df`'s `Avail`).
    pub available_bytes: u64,
    /// Space in use (`f_blocks - f_bfree`, `df`'s `Used`).
    pub used_bytes: u64,
}

impl DiskUse {
    /// `used_bytes / total_bytes` (`df`'s `Use%` as a fraction); 0 for a file system
    /// that reports no blocks.
    pub fn used_ratio(&self) -> f64 {
        ratio(self.used_bytes, self.total_bytes)
    }
}

/// How full the file system holding `dir` is (`statvfs(dir)`).
pub fn disk_use(dir: &Path) -> Result<DiskUse, StoreError> {
    let path = CString::new(dir.as_os_str().as_bytes()).map_err(|_| {
        StoreError::io(
            "statvfs",
            dir,
            io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"),
        )
    })?;
    let mut raw = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string alive for the whole call and `raw`
    // points to writable memory the size of a `statvfs`; the call only writes there.
    let rc = unsafe { libc::statvfs(path.as_ptr(), raw.as_mut_ptr()) };
    if rc != 0 {
        return Err(StoreError::io("statvfs", dir, io::Error::last_os_error()));
    }
    // SAFETY: statvfs returned 0, so it filled in the whole structure.
    let st = unsafe { raw.assume_init() };
    Ok(from_statvfs(&st))
}

/// The figures of a `statvfs` result, in bytes.
// The field types are platform aliases (`c_ulong` is 32 bits on 32-bit targets), so
// the casts are needed even where they are `u64` already.
#[allow(clippy::unnecessary_cast)]
fn from_statvfs(st: &libc::statvfs) -> DiskUse {
    // `f_blocks`, `f_bfree` and `f_bavail` count fragments of `f_frsize` bytes
    // (`f_bsize` is only the preferred I/O size); very old systems leave it 0.
    let unit = if st.f_frsize != 0 {
        st.f_frsize
    } else {
        st.f_bsize
    } as u64;
    let bytes = |blocks: libc::fsblkcnt_t| (blocks as u64).saturating_mul(unit);
    let used_bytes = bytes(st.f_blocks.saturating_sub(st.f_bfree));
    let available_bytes = bytes(st.f_bavail);
    DiskUse {
        total_bytes: used_bytes.saturating_add(available_bytes),
        available_bytes,
        used_bytes,
    }
}

/// Whether disk use may grow by `needed` bytes (new segments) after `freed` bytes
/// (segments the same operation deletes) are returned, without going above `limit`
/// (a fraction of `usage.total_bytes`). `path` names the log directory in the error.
pub(crate) fn check_limit(
    path: &Path,
    usage: &DiskUse,
    needed: u64,
    freed: u64,
    limit: f64,
) -> Result<(), StoreError> {
    if limit >= 1.0 || usage.total_bytes == 0 {
        // 1.0 disables the limit (ENOSPC still reports a full disk); a file system
        // that reports no blocks gives nothing to judge by.
        return Ok(());
    }
    let would_use = usage
        .used_bytes
        .saturating_sub(freed)
        .saturating_add(needed);
    if ratio(would_use, usage.total_bytes) > limit {
        return Err(StoreError::DiskUseLimit {
            path: path.to_path_buf(),
            used_bytes: usage.used_bytes,
            would_use_bytes: would_use,
            total_bytes: usage.total_bytes,
            limit_ratio: limit,
        });
    }
    Ok(())
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// A ratio as a percentage for messages: one decimal (`96.1%`, `95%`), more digits
/// only for limits too small to show that way (as in tests).
pub(crate) fn percent(ratio: f64) -> String {
    let p = ratio * 100.0;
    if p != 0.0 && p.abs() < 0.05 {
        return format!("{p:.1e}%");
    }
    let s = format!("{p:.1}");
    format!("{}%", s.strip_suffix(".0").unwrap_or(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(used: u64, available: u64) -> DiskUse {
        DiskUse {
            total_bytes: used + available,
            available_bytes: available,
            used_bytes: used,
        }
    }

    #[test]
    fn the_limit_counts_the_new_segment_and_what_the_operation_frees() {
        let path = Path::new("/data/log");
        let u = usage(940, 60);
        assert!(check_limit(path, &u, 10, 0, 0.95).is_ok(), "950 of 1000");
        let err = check_limit(path, &u, 21, 0, 0.95).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::DiskUseLimit {
                    used_bytes: 940,
                    would_use_bytes: 961,
                    total_bytes: 1000,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "disk use would reach 96.1% of the file system holding /data/log, above the \
             limit of 95%: appends are refused until retention frees space"
        );
        assert!(err.is_disk_use_limit() && !err.is_disk_full());
        // A reset deleting 100 bytes of segments to create a 21-byte one.
        assert!(check_limit(path, &u, 21, 100, 0.95).is_ok());
        // 1.0 disables the check even on a full disk (ENOSPC speaks then).
        assert!(check_limit(path, &usage(1000, 0), 1 << 30, 0, 1.0).is_ok());
        assert!(check_limit(path, &usage(0, 0), 10, 0, 0.5).is_ok());
    }

    #[test]
    fn percentages_read_naturally() {
        assert_eq!(percent(0.95), "95%");
        assert_eq!(percent(0.961), "96.1%");
        assert_eq!(percent(1.0), "100%");
        assert_eq!(percent(1e-9), "1.0e-7%");
    }

    #[test]
    fn used_plus_available_is_the_total_and_the_ratio_matches() {
        let dir = tempfile::tempdir().unwrap();
        let u = disk_use(dir.path()).unwrap();
        assert!(u.total_bytes > 0);
        assert_eq!(u.used_bytes + u.available_bytes, u.total_bytes);
        assert!(u.used_ratio() > 0.0 && u.used_ratio() <= 1.0);
        assert!(disk_use(&dir.path().join("missing")).is_err());
    }
}
