//! cgroup v2 containment of exec hosts (SPEC §5), where the broker's process can make one.
//!
//! When the broker's own cgroup v2 (`0::<path>` in `/proc/self/cgroup`, under the cgroup2 mount
//! of `/proc/self/mountinfo`) lets it create a child — root, or a systemd service with
//! `Delegate=yes` — each exec host runs in a fresh cgroup `<own>/btb-<instance id>`: the child
//! moves itself in between fork and exec (`confine` writes `0` to the `cgroup.procs` descriptor
//! opened here), so the host is in it before it can fork, and so is everything it ever forks,
//! whatever it does with process groups, sessions, parents or its environment.
//!
//! At the run's end ([`Cgroup::end`]) what is left in it gets SIGTERM (each member listed in
//! `cgroup.procs`), then, after the grace, SIGKILL to all of it at once (`cgroup.kill`); the
//! broker waits for `populated 0` in `cgroup.events` (poll on a kernfs file wakes with POLLPRI
//! when it changes: no polling loop), then removes the cgroup. The cgroup's path is recorded with
//! the host (`<store>.hosts/`), so the next broker of the store stops and removes it when this
//! one dies (`stop_orphans`).
//!
//! Where no cgroup can be made (no cgroup2 mount, no write access, a kernel without
//! `cgroup.kill`), hosts run without one, as before; this is logged once, at debug level.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, poll};
use rustix::fs::{Access, Mode, OFlags};
use rustix::process::{Pid, PidfdFlags, Signal};

/// The lowest descriptor number the `cgroup.procs` descriptor may have: above the ones a child
/// is given (stdio, the instance socket on fd 3).
const FIRST_PROCS_FD: rustix::fd::RawFd = 10;

/// The cgroup of one exec host.
pub(crate) struct Cgroup {
    dir: PathBuf,
    /// `cgroup.procs`, opened for writing: the child writes `0` to it to move itself in. `None`
    /// for a cgroup found by the next broker (nothing moves in any more).
    procs: Option<OwnedFd>,
    /// `cgroup.events`, read to see whether anything is left in it, and polled for its change.
    events: OwnedFd,
}

/// The broker process's own cgroup v2 directory, if it may create children in it (found once).
fn parent() -> Option<&'static Path> {
    static PARENT: OnceLock<Option<PathBuf>> = OnceLock::new();
    PARENT
        .get_or_init(|| match own_dir() {
            Ok(dir) => Some(dir),
            Err(why) => {
                unavailable(&why);
                None
            }
        })
        .as_deref()
}

/// Logs once per process that exec hosts run without a cgroup, and why.
fn unavailable(why: &str) {
    static SAID: AtomicBool = AtomicBool::new(false);
    if !SAID.swap(true, Ordering::Relaxed) {
        log::debug!(target: "btb", "exec hosts run without a cgroup of their own: {why}");
    }
}

/// Where this process's cgroup v2 is, and whether it can make children there.
fn own_dir() -> Result<PathBuf, String> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("/proc/self/cgroup: {e}"))?;
    let own = cgroups
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("the process is in no cgroup v2 hierarchy")?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    // mountinfo: id parent major:minor root mount-point options... - fstype source super-options
    let (root, mount_point) = mounts
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            if right.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            let mut f = left.split_whitespace();
            let root = f.nth(3)?;
            let mount_point = f.next()?;
            Some((unescape(root), unescape(mount_point)))
        })
        .ok_or("no cgroup2 file system is mounted")?;
    let relative = Path::new(own)
        .strip_prefix(&root)
        .map_err(|_| format!("its cgroup {own} is outside the cgroup2 mount (root {root})"))?;
    let dir = Path::new(&mount_point).join(relative);
    for (path, what) in [
        (dir.clone(), "create a cgroup in"),
        (dir.join("cgroup.procs"), "move a process out of"),
    ] {
        rustix::fs::access(&path, Access::WRITE_OK)
            .map_err(|e| format!("cannot {what} {} ({e})", dir.display()))?;
    }
    Ok(dir)
}

/// A mountinfo field with its octal escapes (`\040` for a space) undone.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|o| std::str::from_utf8(o).ok())
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        if bytes[i] == b'\\'
            && let Some(b) = octal
        {
            out.push(b);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Cgroup {
    /// A fresh cgroup for the host of `instance_id`, or `None` where none can be made (the host
    /// then runs without one).
    pub(crate) fn prepare(instance_id: uuid::Uuid) -> Option<Cgroup> {
        let dir = parent()?.join(format!("btb-{instance_id}"));
        let made = rustix::fs::mkdir(&dir, Mode::from_raw_mode(0o755))
            .map_err(|e| format!("cannot create {}: {e}", dir.display()));
        let opened = made.and_then(|()| {
            if rustix::fs::access(dir.join("cgroup.kill"), Access::EXISTS).is_err() {
                return Err("this kernel has no cgroup.kill (Linux 5.14)".to_owned());
            }
            let procs = rustix::fs::open(
                dir.join("cgroup.procs"),
                OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| format!("cannot open {}/cgroup.procs: {e}", dir.display()))?;
            // Above the descriptors the child places before it enters (the instance socket is
            // dup2'ed onto fd 3): a lower number could be replaced by the socket, and the `0`
            // meant for the cgroup would go to the broker.
            let procs = rustix::io::fcntl_dupfd_cloexec(&procs, FIRST_PROCS_FD)
                .map_err(|e| format!("cannot open {}/cgroup.procs: {e}", dir.display()))?;
            let mut cgroup = Cgroup::open(&dir)
                .ok_or_else(|| format!("cannot open {}/cgroup.events", dir.display()))?;
            cgroup.procs = Some(procs);
            Ok(cgroup)
        });
        match opened {
            Ok(cgroup) => Some(cgroup),
            Err(why) => {
                let _ = rustix::fs::rmdir(&dir);
                unavailable(&why);
                None
            }
        }
    }

    /// An existing cgroup (a dead broker's host's), or `None` if it is gone.
    pub(crate) fn open(dir: &Path) -> Option<Cgroup> {
        let events = rustix::fs::open(
            dir.join("cgroup.events"),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        Some(Cgroup {
            dir: dir.to_owned(),
            procs: None,
            events,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// The descriptor to which the child writes `0` to move itself in (`confine`).
    pub(crate) fn procs_fd(&self) -> Option<RawFd> {
        self.procs.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Whether nothing is left in it (`populated 0`; a zombie is not counted).
    pub(crate) fn is_empty(&self) -> bool {
        let mut buf = [0u8; 256];
        let Ok(n) = rustix::io::pread(&self.events, &mut buf, 0) else {
            return true; // removed
        };
        let text = String::from_utf8_lossy(&buf[..n]);
        !text.lines().any(|l| l == "populated 1")
    }

    /// Waits until nothing is left in it, until `deadline` at most; whether it is empty.
    pub(crate) fn wait_empty(&self, deadline: Instant) -> bool {
        loop {
            // Read before each wait: a change after the read wakes the poll.
            if self.is_empty() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let timeout = rustix::time::Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: i64::from(left.subsec_nanos()),
            };
            let mut fds = [PollFd::new(&self.events, PollFlags::PRI)];
            match poll(&mut fds, Some(&timeout)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(_) => return self.is_empty(),
            }
        }
    }

    /// Sends `signal` to everything in it: SIGKILL to all of it at once (`cgroup.kill`, which
    /// also reaches what forks meanwhile), another signal to each member listed now.
    pub(crate) fn signal(&self, signal: Signal) {
        if signal == Signal::KILL {
            if let Err(e) = std::fs::write(self.dir.join("cgroup.kill"), b"1")
                && e.kind() != std::io::ErrorKind::NotFound
            {
                log::warn!(target: "btb", "cannot kill {}: {e}", self.dir.display());
            }
            return;
        }
        // Each listed pid becomes a pidfd, then the list is read again: a pid still listed names
        // the member the pidfd holds, not a process that got a reused pid elsewhere.
        let fds: Vec<(i32, OwnedFd)> = self
            .members()
            .into_iter()
            .filter_map(|pid| {
                let fd = rustix::process::pidfd_open(Pid::from_raw(pid)?, PidfdFlags::empty());
                Some((pid, fd.ok()?))
            })
            .collect();
        let still = self.members();
        for (pid, fd) in fds {
            if still.contains(&pid) {
                let _ = rustix::process::pidfd_send_signal(fd.as_fd(), signal);
            }
        }
    }

    /// The pids in it now.
    fn members(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Ends what is left in it: SIGTERM, and SIGKILL after `grace`; waits (up to another grace:
    /// a process stuck in the kernel) until it is empty. Whether anything was left.
    pub(crate) fn end(&self, grace: Duration) -> bool {
        if self.is_empty() {
            return false;
        }
        self.signal(Signal::TERM);
        if !self.wait_empty(Instant::now() + grace) {
            self.signal(Signal::KILL);
            self.wait_empty(Instant::now() + grace);
        }
        true
    }

    /// Removes it (it must be empty: what cannot be removed, a process stuck in the kernel, is
    /// logged).
    pub(crate) fn remove(&self) {
        match rustix::fs::rmdir(&self.dir) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => log::warn!(target: "btb", "cannot remove {}: {e}", self.dir.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::unescape;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/sys/fs/a\040b"), "/sys/fs/a b");
        assert_eq!(unescape("/"), "/");
        assert_eq!(unescape(r"x\"), r"x\");
    }
}
