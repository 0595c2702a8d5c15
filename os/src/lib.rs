//! The operating-system steps of btb that safe Rust cannot express, each behind a safe function
//! with its safety argument, so that `btb-core` can `forbid(unsafe_code)`:
//! - [`confine`]: what an `exec` host's child does between fork and exec;
//! - [`spawn_clean`]: an activated app started with `posix_spawn` (no fork of the broker);
//! - [`adopt_inherited`]: the descriptor a broker passed to its host (`BTB_HOST_FD`) becomes owned;
//! - [`forks`]: how many forks this process's memory went through, counted in each child.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use rustix::process::Signal;

/// The `close_range` flag that marks the descriptors close-on-exec instead of closing them
/// (Linux 5.11; `linux/close_range.h`).
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

/// Arranges what the child does between fork and exec (btb SPEC §5): every descriptor above
/// `keep_through` (fd 3, a host's instance socket) is closed at exec, whether or not the app
/// opened it with `O_CLOEXEC` (a C library's, Python's inheritable ones) — a host gets stdio and
/// fd 3, nothing else; no signal is blocked.
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
            close_at_exec_from(keep_through + 1);
            Ok(())
        });
    }
}

/// Marks every descriptor from `first` up close-on-exec, in a forked child: only system calls
/// (async-signal-safe), `close_range` where the kernel has it (5.11), else one by one.
fn close_at_exec_from(first: i32) {
    let first = first as libc::c_uint;
    // SAFETY: system calls on descriptor numbers; nothing is dereferenced.
    let done = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    } == 0;
    if !done {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(1 << 20)
            .min(1 << 20);
        for fd in first as libc::c_int..limit as libc::c_int {
            // SAFETY: as above.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
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
/// 0: the handler is not registered; 1: a thread registers it; 2: registered (or failed to be).
static COUNT_FORKS: AtomicU8 = AtomicU8::new(0);

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
///
/// Never blocks (no `Once`: a child forked while another thread was inside one would wait on it
/// for ever): a thread that calls it while another registers the handler reads the count as it is,
/// and a child forked during that registration may go uncounted.
pub fn forks() -> u64 {
    if COUNT_FORKS.load(Ordering::Acquire) != 2
        && COUNT_FORKS
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    {
        // SAFETY: `forked_child` is a plain `extern "C" fn` that only touches a static atomic;
        // registering it has no other precondition. A failure (ENOMEM) leaves the count at 0, so
        // the check it serves falls back to comparing process ids (see btb-core's check_opener).
        let registered = unsafe { libc::pthread_atfork(None, None, Some(forked_child)) };
        if registered != 0 {
            FORKS.store(u64::MAX, Ordering::Relaxed);
        }
        COUNT_FORKS.store(2, Ordering::Release);
    }
    FORKS.load(Ordering::Relaxed)
}

/// What [`spawn_clean`] starts.
pub struct Clean<'a> {
    /// An absolute path, then the arguments.
    pub argv: &'a [String],
    /// The whole environment (`NAME=value`).
    pub env: &'a [std::ffi::OsString],
    /// The working directory (else the caller's).
    pub cwd: Option<&'a std::path::Path>,
}

/// Starts a process with `posix_spawn` (a vfork: nothing of the caller's memory is copied) that
/// gets stdin from `/dev/null`, the caller's stdout and stderr and no other descriptor (whether or
/// not it was opened with `O_CLOEXEC`), no blocked signal, SIGPIPE at its default, and its own
/// process group. Unlike [`confine`], no parent-death signal: `posix_spawn` has no way to set
/// one, so the process outlives the caller's death (what btb wants of an app it activates, a
/// client that takes the store over, SPEC §10–12). Returns its pid; reaping it is the caller's.
///
/// With a glibc older than 2.34 (no `posix_spawn_file_actions_addclosefrom_np`, looked up at run
/// time so that binaries built for older systems link), the same process state comes from a fork
/// instead ([`spawn_clean_fork`]).
pub fn spawn_clean(what: &Clean) -> std::io::Result<libc::pid_t> {
    match spawn_extensions() {
        Some(ext) if what.cwd.is_none() || ext.addchdir.is_some() => spawn_clean_vfork(what, ext),
        _ => spawn_clean_fork(what),
    }
}

type AddClosefrom =
    unsafe extern "C" fn(*mut libc::posix_spawn_file_actions_t, libc::c_int) -> libc::c_int;
type AddChdir =
    unsafe extern "C" fn(*mut libc::posix_spawn_file_actions_t, *const libc::c_char) -> libc::c_int;

/// The glibc extensions of `posix_spawn` that [`spawn_clean`] needs, looked up at run time:
/// `addclosefrom_np` (glibc 2.34) and `addchdir_np` (2.29). Linking them would tie every binary
/// and the Python wheel (manylinux2014: glibc 2.17) to those versions.
#[derive(Clone, Copy)]
struct SpawnExtensions {
    addclosefrom: AddClosefrom,
    addchdir: Option<AddChdir>,
}

fn spawn_extensions() -> Option<SpawnExtensions> {
    static FOUND: std::sync::OnceLock<Option<SpawnExtensions>> = std::sync::OnceLock::new();
    *FOUND.get_or_init(|| {
        // SAFETY: `dlsym` with RTLD_DEFAULT and a NUL-terminated name; a non-null result is the
        // address of glibc's function of that name, whose C signature the types above spell.
        unsafe {
            let closefrom = libc::dlsym(
                libc::RTLD_DEFAULT,
                c"posix_spawn_file_actions_addclosefrom_np".as_ptr(),
            );
            if closefrom.is_null() {
                return None;
            }
            let chdir = libc::dlsym(
                libc::RTLD_DEFAULT,
                c"posix_spawn_file_actions_addchdir_np".as_ptr(),
            );
            Some(SpawnExtensions {
                addclosefrom: std::mem::transmute::<*mut libc::c_void, AddClosefrom>(closefrom),
                addchdir: (!chdir.is_null())
                    .then(|| std::mem::transmute::<*mut libc::c_void, AddChdir>(chdir)),
            })
        }
    })
}

/// [`spawn_clean`] where glibc lacks the extensions (before 2.34): the same process state through
/// `std::process::Command` — which resets the signal mask and SIGPIPE in the child — and a fork
/// with one `pre_exec` step (descriptors from 3 up closed at exec); still no parent-death signal.
fn spawn_clean_fork(what: &Clean) -> std::io::Result<libc::pid_t> {
    let Some((program, args)) = what.argv.split_first() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "no program to start",
        ));
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .process_group(0);
    for pair in what.env {
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(pair.as_os_str());
        if let Some(eq) = bytes.iter().position(|&b| b == b'=') {
            let (name, value) = (&bytes[..eq], &bytes[eq + 1..]);
            cmd.env(
                <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name),
                <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(value),
            );
        }
    }
    if let Some(dir) = what.cwd {
        cmd.current_dir(dir);
    }
    // SAFETY: the closure runs in the forked child and makes system calls only (see
    // `close_at_exec_from`).
    unsafe {
        cmd.pre_exec(|| {
            close_at_exec_from(3);
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    Ok(child.id() as libc::pid_t)
}

fn spawn_clean_vfork(what: &Clean, ext: SpawnExtensions) -> std::io::Result<libc::pid_t> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let invalid = |e: std::ffi::NulError| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let argv: Vec<CString> = what
        .argv
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()
        .map_err(invalid)?;
    let env: Vec<CString> = what
        .env
        .iter()
        .map(|e| CString::new(e.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(invalid)?;
    let cwd = what
        .cwd
        .map(|d| CString::new(d.as_os_str().as_bytes()))
        .transpose()
        .map_err(invalid)?;
    let Some(path) = argv.first() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "no program to start",
        ));
    };
    let mut argv_ptrs: Vec<*mut libc::c_char> =
        argv.iter().map(|a| a.as_ptr().cast_mut()).collect();
    argv_ptrs.push(std::ptr::null_mut());
    let mut env_ptrs: Vec<*mut libc::c_char> = env.iter().map(|e| e.as_ptr().cast_mut()).collect();
    env_ptrs.push(std::ptr::null_mut());
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::from_raw_os_error(rc))
        }
    };
    // SAFETY: the attribute and file-action objects are initialised before use and destroyed on
    // every path (the guards below); every pointer handed to libc points into a `CString` or a
    // null-terminated pointer array that lives until `posix_spawn` returns; `pid` is written by
    // `posix_spawn` only. No code of ours runs in the child: glibc's `posix_spawn` (a
    // `clone(CLONE_VM | CLONE_VFORK)`) applies the attributes and file actions, then execs.
    unsafe {
        let mut attr = std::mem::MaybeUninit::<libc::posix_spawnattr_t>::uninit();
        check(libc::posix_spawnattr_init(attr.as_mut_ptr()))?;
        let mut attr = Guard(attr.assume_init(), |a| {
            libc::posix_spawnattr_destroy(a);
        });
        let mut actions = std::mem::MaybeUninit::<libc::posix_spawn_file_actions_t>::uninit();
        check(libc::posix_spawn_file_actions_init(actions.as_mut_ptr()))?;
        let mut actions = Guard(actions.assume_init(), |a| {
            libc::posix_spawn_file_actions_destroy(a);
        });
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        let mut pipe: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut pipe);
        libc::sigaddset(&mut pipe, libc::SIGPIPE);
        check(libc::posix_spawnattr_setsigmask(&mut attr.0, &none))?;
        check(libc::posix_spawnattr_setsigdefault(&mut attr.0, &pipe))?;
        check(libc::posix_spawnattr_setpgroup(&mut attr.0, 0))?;
        check(libc::posix_spawnattr_setflags(
            &mut attr.0,
            (libc::POSIX_SPAWN_SETPGROUP
                | libc::POSIX_SPAWN_SETSIGMASK
                | libc::POSIX_SPAWN_SETSIGDEF) as libc::c_short,
        ))?;
        check(libc::posix_spawn_file_actions_addopen(
            &mut actions.0,
            0,
            c"/dev/null".as_ptr(),
            libc::O_RDONLY,
            0,
        ))?;
        if let (Some(cwd), Some(addchdir)) = (&cwd, ext.addchdir) {
            check(addchdir(&mut actions.0, cwd.as_ptr()))?;
        }
        check((ext.addclosefrom)(&mut actions.0, 3))?;
        let mut pid: libc::pid_t = 0;
        check(libc::posix_spawn(
            &mut pid,
            path.as_ptr(),
            &actions.0,
            &attr.0,
            argv_ptrs.as_ptr(),
            env_ptrs.as_ptr(),
        ))?;
        Ok(pid)
    }
}

/// A libc object destroyed when dropped.
struct Guard<T>(T, unsafe fn(*mut T));

impl<T> Drop for Guard<T> {
    fn drop(&mut self) {
        // SAFETY: constructed only around an object its init function initialised, with the
        // matching destroy function, which is called once.
        unsafe { (self.1)(&mut self.0) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `script` under `sh` with `spawn`, a descriptor `leaked` open without close-on-exec
    /// in this process; returns the shell's exit status.
    fn run(
        spawn: fn(&Clean) -> std::io::Result<libc::pid_t>,
        script: &str,
        cwd: &std::path::Path,
    ) -> i32 {
        let argv = ["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()];
        let env = [std::ffi::OsString::from("PATH=/usr/bin:/bin")];
        let pid = spawn(&Clean {
            argv: &argv,
            env: &env,
            cwd: Some(cwd),
        })
        .unwrap();
        let mut status = 0;
        // SAFETY: waits for the child just started; `status` is a valid out pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "the shell did not exit: {status}");
        libc::WEXITSTATUS(status)
    }

    #[test]
    fn both_ways_to_spawn_clean_leave_no_descriptor_and_set_the_directory() {
        // SAFETY: opens /dev/null without O_CLOEXEC, as a C library might; closed below.
        let leaked = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
        assert!(leaked > 2);
        let dir = std::env::temp_dir();
        let dir = std::fs::canonicalize(dir).unwrap();
        let script = format!(
            "[ -e /proc/$$/fd/{leaked} ] && exit 3; [ \"$(pwd -P)\" = {:?} ] || exit 4; exit 0",
            dir.display().to_string()
        );
        let mut ways: Vec<fn(&Clean) -> std::io::Result<libc::pid_t>> = vec![spawn_clean_fork];
        if spawn_extensions().is_some() {
            ways.push(|what| spawn_clean_vfork(what, spawn_extensions().unwrap()));
        }
        for spawn in ways {
            assert_eq!(run(spawn, &script, &dir), 0);
        }
        // SAFETY: closes the descriptor opened above.
        unsafe { libc::close(leaked) };
    }
}
