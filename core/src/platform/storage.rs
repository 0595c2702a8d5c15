//! `STORAGE_NOT_LOW` (SPEC §6): `statvfs` on the file system of the store, read off the broker's
//! locks after each write and each wake (`broker/storage.rs`; no events: free space changes with
//! every write). The store's directory for a file store; the
//! per-app state directory for an in-memory one. Low means at most the policy's
//! `storage_low_percent` of the blocks are available to the app (default 10).

use std::path::{Path, PathBuf};

/// The source's name.
pub(crate) const SOURCE: &str = "statvfs";

/// Where to measure: the nearest existing ancestor of `dir` (a store's directory is created at
/// open; the state directory of an in-memory system may not exist).
pub(crate) fn existing(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .find(|d| !d.as_os_str().is_empty() && d.exists())
        .map(Path::to_path_buf)
}

/// Whether more than `low_percent` % of the file system holding `dir` is available; `None` when
/// it cannot be read.
pub(crate) fn not_low(dir: &Path, low_percent: u8) -> Option<bool> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    if stat.f_blocks == 0 {
        return None;
    }
    // Both in blocks of `f_frsize`; u128: no overflow for any size.
    let available = u128::from(stat.f_bavail);
    let total = u128::from(stat.f_blocks);
    Some(available * 100 > total * u128::from(low_percent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_of_a_real_file_system() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            not_low(dir.path(), 0),
            Some(true),
            "some space is available"
        );
        assert_eq!(
            not_low(dir.path(), 100),
            Some(false),
            "never more than all of it"
        );
        assert_eq!(not_low(&dir.path().join("missing"), 10), None);
        assert_eq!(
            existing(&dir.path().join("a/b/c")).as_deref(),
            Some(dir.path())
        );
    }
}
