//! The operating-system steps of btb that safe Rust cannot express, each behind a safe function
//! with its safety argument, so that `btb-core` can `forbid(unsafe_code)`:
//! - [`confine`]: what an `exec` host's (or an activated app's) child does between fork and exec;
//! - [`adopt_inherited`]: the descriptor a broker passed to its host (`BTB_HOST_FD`) becomes owned;
//! - [`forks`]: how many forks this process's memory went through, counted in each child.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustix::process::Signal;

/// The `close_range` flag that marks the descriptors close-on-exec instead of closing them
/// (Linux 5.11; `linux/close_range.h`).
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

/// Arranges what the child does between fork and exec (btb SPEC §5): every descriptor above
/// `keep_through` (the instance socket, fd 3, of a host; stderr of the activated app) is closed
/// at exec, whether or not the app opened it with `O_CLOEXEC` (a C library's, Python's
/// inheritable ones) — a host gets stdio and fd 3, nothing else; no signal is blocked.
///
/// Marked close-on-exec rather than closed: std's own error pipe (close-on-exec, above 3) must
/// stay open until the exec, which closes it, so that a failed exec is still reported.
///
/// And the child gets SIGKILL when the thread that started it ends (`PR_SET_PDEATHSIG`): that is
/// the worker that supervises it until it is reaped, so this happens only when the broker's
/// process dies (a broker killed with SIGKILL, a crash). The spawn fails (`ESRCH`) when the
/// calling process died before the death signal was set.
///
/// `into_cgroup`: a descriptor of a cgroup's `cgroup.procs` opened for writing, which the child
/// writes `0` to first, so that it is in that cgroup before it can fork (btb SPEC §5: an exec
/// host's cgroup); the caller keeps it open until the spawn returns. A failure to enter it fails
/// the spawn with its error.
///
/// Call it after any other `pre_exec` step that places descriptors (they must be in place first).
pub fn confine(cmd: &mut Command, keep_through: i32, into_cgroup: Option<RawFd>) {
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the forked child, where only async-signal-safe calls are
    // allowed: it makes system calls and nothing else (no allocation, no lock, no captured value
    // but plain integers; `last_os_error` reads errno and allocates nothing). `into_cgroup` is
    // open in the child: the caller keeps it open until the spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(procs) = into_cgroup
                && libc::write(procs, b"0".as_ptr().cast(), 1) != 1
            {
                return Err(std::io::Error::last_os_error());
            }
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            if rustix::process::getppid() != Some(parent) {
                // The parent died before the death signal was set: no one would supervise it.
                return Err(rustix::io::Errno::SRCH.into());
            }
            // No signal blocked: btbd blocks SIGTERM and SIGINT in its threads (to `sigwait`
            // them), and a blocked mask is inherited across exec — a host would never hear the
            // SIGTERM that ends it.
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
            let first = (keep_through + 1) as libc::c_uint;
            if libc::syscall(
                libc::SYS_close_range,
                first,
                libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC,
            ) != 0
            {
                // A kernel before 5.11: every possible descriptor, one by one.
                let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
                    .current
                    .unwrap_or(1 << 20)
                    .min(1 << 20);
                for fd in first as libc::c_int..limit as libc::c_int {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            Ok(())
        });
    }
}

/// Why [`adopt_inherited`] did not take a descriptor.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// This process already adopted its descriptor.
    Again,
    /// `fd` is not an open socket (what fstat said instead).
    NotSocket(String),
}

/// Takes ownership of the socket a broker passed to this process as descriptor `fd` (from
/// `BTB_HOST_FD`), at most once per process, and only if `fd` is an open socket.
pub fn adopt_inherited(fd: RawFd) -> Result<OwnedFd, Refused> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(Refused::Again);
    }
    // SAFETY: a descriptor number from the environment becomes owned (what `BTB_HOST_FD` is for):
    // the broker sets it to the socket it passed; the guard above makes this happen once per
    // process, and the result is forgotten (never closed) unless fstat says it is a socket. A
    // number that is not open makes fstat fail (EBADF) and nothing is closed.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    match rustix::fs::fstat(&owned) {
        Ok(stat)
            if rustix::fs::FileType::from_raw_mode(stat.st_mode)
                == rustix::fs::FileType::Socket =>
        {
            Ok(owned)
        }
        other => {
            std::mem::forget(owned); // not ours to close
            Err(Refused::NotSocket(other.map_or_else(
                |e| e.to_string(),
                |_| "another kind of file".into(),
            )))
        }
    }
}

static FORKS: AtomicU64 = AtomicU64::new(0);
static COUNT_FORKS: Once = Once::new();

extern "C" fn forked_child() {
    // In the child, right after fork, before `fork` returns there: an atomic add is all it does
    // (async-signal-safe).
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// How many times the memory of this process was forked into the process that calls it: 0 in
/// the process that first called it, 1 in its forked child, and so on. btb compares it with the
/// value seen when a system was opened to refuse the system's use in a forked child (whose
/// parent's threads and connections do not exist there) on every call — a load, where `getpid`
/// is a system call (≈ 0.4 µs on a VM).
///
/// Counted by a `pthread_atfork` child handler, registered at the first call: forks before it are
/// not counted (no system was open then). A child made by `fork()` (libc's, Python's `os.fork`) is
/// counted; one made by a raw `clone` system call without `CLONE_VM` is not — such a child runs no
/// code of the parent's libraries by design.
pub fn forks() -> u64 {
    COUNT_FORKS.call_once(|| {
        // SAFETY: `forked_child` is a plain `extern "C" fn` that only touches a static atomic;
        // registering it has no other precondition. A failure (ENOMEM) leaves the count at 0, so
        // the check it serves falls back to comparing process ids (see btb-core's check_opener).
        let registered = unsafe { libc::pthread_atfork(None, None, Some(forked_child)) };
        if registered != 0 {
            FORKS.store(u64::MAX, Ordering::Relaxed);
        }
    });
    FORKS.load(Ordering::Relaxed)
}
