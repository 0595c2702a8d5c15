//! The broker lock: an exclusive POSIX record lock on a lock file, held while the file stays open.
//! It is what makes one system the one broker of a store (`<canonical store path>.lock`) and of a
//! control socket (`<socket>.lock`).
//!
//! Why a POSIX record lock (`fcntl(F_SETLK)`) and not `flock`:
//! - it belongs to the *process*: a `fork` does not inherit it, so a child of the broker (Python
//!   `multiprocessing`, a shell-out) never keeps a store locked after the broker closed or died;
//! - `F_GETLK` names the holder's pid, so "in use" messages say by whom;
//! - it cannot be left behind: the kernel drops it when the holder exits, however it exits.
//!
//! Two properties of POSIX locks need care, and this module takes it:
//! - locks of one process never conflict with each other, so a second system in the same process
//!   is refused by an in-process table keyed by the file's `(device, inode)`;
//! - closing *any* descriptor of the file in the process drops the lock (and a whole-file unlock
//!   by the same process, as SQLite issues on its database, too), so the lock lives on a file of
//!   its own that only this module opens, once per holder.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;

use nix::fcntl::{FcntlArg, fcntl};

/// The locked byte of a lock file (any byte would do; the file stays empty).
const LOCK_BYTE: i64 = 0;

/// Files this process has locked, by `(device, inode)` → the locking pid (a forked child inherits
/// this table but not the locks: entries of another pid are stale).
static HELD: Mutex<Option<HashMap<(u64, u64), u32>>> = Mutex::new(None);

/// Why [`FileLock::open`] failed.
#[derive(Debug)]
pub(crate) enum LockError {
    /// Another system holds the lock: in this process (`in_process`), or in process `pid`
    /// (`None` when the kernel did not say, e.g. across some network file systems).
    Held {
        pid: Option<u32>,
        in_process: bool,
    },
    Io(std::io::Error),
}

impl LockError {
    /// " (pid N)" / " in this process (pid N)" / "", for messages.
    pub(crate) fn holder(&self) -> String {
        match self {
            LockError::Held {
                in_process: true, ..
            } => format!(" in this process (pid {})", std::process::id()),
            LockError::Held { pid: Some(pid), .. } => format!(" (pid {pid})"),
            _ => String::new(),
        }
    }
}

/// A held lock; dropping it (closing the file) releases it.
#[derive(Debug)]
pub(crate) struct FileLock {
    /// Open for as long as the lock is held: closing it releases the lock.
    _file: File,
    key: (u64, u64),
}

type Short = nix::libc::c_short;

fn range(l_type: Short) -> nix::libc::flock {
    nix::libc::flock {
        l_type,
        l_whence: nix::libc::SEEK_SET as Short,
        l_start: LOCK_BYTE,
        l_len: 1,
        l_pid: 0,
    }
}

impl FileLock {
    /// Opens `path` for reading and writing (creating it 0600 if missing) and locks it without
    /// waiting. The in-process table is checked before the file is opened: opening and closing a
    /// second descriptor of a file this process has locked would drop that lock.
    pub(crate) fn open(path: &Path) -> Result<FileLock, LockError> {
        let me = std::process::id();
        let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
        let held = held.get_or_insert_with(HashMap::new);
        let in_process = |key: &(u64, u64)| held.get(key) == Some(&me);
        if let Ok(meta) = std::fs::metadata(path)
            && in_process(&(meta.dev(), meta.ino()))
        {
            return Err(LockError::Held {
                pid: Some(me),
                in_process: true,
            });
        }
        let file = open_private(path).map_err(LockError::Io)?;
        let meta = file.metadata().map_err(LockError::Io)?;
        let key = (meta.dev(), meta.ino());
        if in_process(&key) {
            // Replaced between the stat and the open by a file this process holds: `file` is a
            // second descriptor of it, and closing it would drop the lock. Keep it open for the
            // life of the process (one descriptor, once in a blue moon) rather than lose the lock.
            std::mem::forget(file);
            return Err(LockError::Held {
                pid: Some(me),
                in_process: true,
            });
        }
        match fcntl(
            &file,
            FcntlArg::F_SETLK(&range(nix::libc::F_WRLCK as Short)),
        ) {
            Ok(_) => {
                held.insert(key, me);
                Ok(FileLock { _file: file, key })
            }
            Err(nix::errno::Errno::EACCES | nix::errno::Errno::EAGAIN) => Err(LockError::Held {
                pid: holder(&file, LOCK_BYTE, 1),
                in_process: false,
            }),
            Err(e) => Err(LockError::Io(e.into())),
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Closing `file` (after this) releases the kernel lock.
        let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = held.as_mut() {
            held.remove(&self.key);
        }
    }
}

/// Opens `path` for reading and writing, creating it mode 0600 if missing (never truncating).
pub(crate) fn open_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

/// The pid of a process holding a POSIX lock that conflicts with a write lock on
/// `start..start+len` (`len` 0: to the end of the file), if the kernel names one.
pub(crate) fn holder(file: &File, start: i64, len: i64) -> Option<u32> {
    let mut probe = range(nix::libc::F_WRLCK as Short);
    probe.l_start = start;
    probe.l_len = len;
    fcntl(file, FcntlArg::F_GETLK(&mut probe)).ok()?;
    (probe.l_type != nix::libc::F_UNLCK as Short && probe.l_pid > 0).then_some(probe.l_pid as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_per_lock_file_in_a_process_through_any_path() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let first = FileLock::open(&a).unwrap();
        std::fs::hard_link(&a, dir.path().join("b")).unwrap();
        std::os::unix::fs::symlink(&a, dir.path().join("c")).unwrap();
        for alias in ["a", "b", "c"] {
            match FileLock::open(&dir.path().join(alias)) {
                Err(LockError::Held {
                    in_process: true, ..
                }) => {}
                other => panic!("{alias}: {other:?}"),
            }
        }
        drop(first);
        FileLock::open(&dir.path().join("b")).unwrap();
    }
}
