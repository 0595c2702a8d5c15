//! btbd as a child subreaper (`PR_SET_CHILD_SUBREAPER`): a process orphaned below it — a
//! descendant of an exec host whose parent exited, a daemon's double fork — becomes its child
//! instead of init's.
//!
//! Which children are orphans: the kernel gives an orphan to the subreaper's first live thread,
//! the main thread, and btbd's main thread starts no process (hosts and the activated app are
//! started, supervised and reaped through their pidfds by btb's worker threads). So the main
//! thread's children are orphans and nothing else, and waiting with `__WNOTHREAD` (only the
//! calling thread's children) never reaps a host that a worker waits on. (A thread's children go
//! to the main thread when that thread ends; btb's workers end only in `close`, after which the
//! main thread reaps again only once btb's threads are joined and have reaped theirs.)

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use rustix::process::{Pid, PidfdFlags, Signal};

/// Reaps the orphans that exited (on SIGCHLD: one may stand for several).
pub fn reap() {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::__WNOTHREAD;
    loop {
        match waitid(Id::All, flags) {
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return,
            Ok(status) => {
                log::debug!(target: "btbd", "reaped an orphan: {status:?}");
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                log::error!(target: "btbd", "reaping orphans: {e}");
                return;
            }
        }
    }
}

/// The orphans alive now (the main thread's children, from /proc), as pidfds. A pid listed
/// there is an unreaped child of this thread, which only this thread reaps: it names that
/// child until then.
fn alive() -> Vec<OwnedFd> {
    let me = std::process::id();
    std::fs::read_to_string(format!("/proc/{me}/task/{me}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| Pid::from_raw(p.parse().ok()?))
        .filter_map(|pid| rustix::process::pidfd_open(pid, PidfdFlags::empty()).ok())
        .filter(|fd| !exited(fd, None))
        .collect()
}

/// Whether the process of a pidfd has exited, waiting until `deadline` at most.
fn exited(fd: &OwnedFd, deadline: Option<Instant>) -> bool {
    let left = deadline.map_or(Duration::ZERO, |d| {
        d.saturating_duration_since(Instant::now())
    });
    let timeout = rustix::time::Timespec {
        tv_sec: left.as_secs() as i64,
        tv_nsec: i64::from(left.subsec_nanos()),
    };
    let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
    loop {
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(n) => return n > 0,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return true,
        }
    }
}

/// At exit (after close): the orphans still alive get SIGTERM, and SIGKILL after `grace`;
/// then all are reaped. Nothing an exec host orphaned outlives btbd.
pub fn stop(grace: Duration) {
    for signal in [Signal::TERM, Signal::KILL] {
        let alive = alive();
        if alive.is_empty() {
            break;
        }
        log::info!(target: "btbd", "{} process(es) orphaned by exec hosts still run: {signal:?}", alive.len());
        for fd in &alive {
            let _ = rustix::process::pidfd_send_signal(fd, signal);
        }
        let deadline = Instant::now() + grace;
        for fd in &alive {
            exited(fd, Some(deadline));
        }
    }
    reap();
}
