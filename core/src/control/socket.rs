//! Where the control socket lives and who may use it: its path, its private directory, a bounded
//! connect, and the peer's uid.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType, sockopt};

use crate::manifest::check_app_id;
use crate::{Error, ErrorKind, Result};

/// `sockaddr_un.sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// `$XDG_RUNTIME_DIR/btb/<app_id>.sock`. Without XDG_RUNTIME_DIR: `/run/user/<uid>/btb/` when
/// that runtime directory exists and is ours, else `$XDG_STATE_HOME/btb/run/` (by default
/// `~/.local/state/btb/run/`) — places no other user can create first, never a guessable name in
/// a shared directory such as `/tmp` (SPEC §10).
///
/// An empty or relative `XDG_RUNTIME_DIR` counts as unset (the XDG base directory spec requires an
/// absolute path). The app id must be a reverse-DNS name (as the manifest requires) and the whole
/// path must fit a Unix socket address (107 bytes).
pub fn socket_path(app_id: &str) -> Result<PathBuf> {
    check_app_id(app_id)?;
    let path = socket_dir()?.0.join(format!("{app_id}.sock"));
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(Error::invalid(format!(
            "control socket path {} for app {app_id:?} is {len} bytes long; a Unix socket path holds at most {MAX_SOCKET_PATH} bytes (use a shorter XDG_RUNTIME_DIR)",
            path.display()
        )));
    }
    Ok(path)
}

/// The directory holding the sockets (not created here), and whether its parents may be created
/// with it (in the state directory, which a fresh account may not have yet).
pub(super) fn socket_dir() -> Result<(PathBuf, bool)> {
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|dir| dir.is_absolute())
    };
    if let Some(dir) = absolute("XDG_RUNTIME_DIR") {
        return Ok((dir.join("btb"), false));
    }
    // logind's runtime directory, when this user has one: made by root for us alone.
    let run_user = PathBuf::from(format!("/run/user/{}", our_uid()));
    if fs::symlink_metadata(&run_user).is_ok_and(|m| m.is_dir() && m.uid() == our_uid()) {
        return Ok((run_user.join("btb"), false));
    }
    let state = match absolute("XDG_STATE_HOME") {
        Some(dir) => dir,
        None => match absolute("HOME") {
            Some(home) => home.join(".local/state"),
            None => {
                return Err(Error::state(
                    "no place for the control socket: none of XDG_RUNTIME_DIR, /run/user/<uid>, XDG_STATE_HOME or HOME is there",
                ));
            }
        },
    };
    Ok((state.join("btb").join("run"), true))
}

pub(super) fn our_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// Creates the socket directory `0700` if missing; refuses one that is not a real directory, not
/// ours, or accessible to group or others.
pub(super) fn ensure_private_dir(dir: &Path) -> Result<()> {
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {
            // The umask may have taken bits away; make it exactly 0700.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::state(format!("cannot chmod 0700 {}: {e}", dir.display())))?;
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Error::state(format!(
                "cannot create the control socket directory {}: its parent does not exist (is XDG_RUNTIME_DIR set to a real directory?)",
                dir.display()
            )));
        }
        Err(e) => {
            return Err(Error::state(format!(
                "cannot create the control socket directory {}: {e}",
                dir.display()
            )));
        }
    }
    let meta = fs::symlink_metadata(dir)
        .map_err(|e| Error::state(format!("cannot inspect {}: {e}", dir.display())))?;
    if !meta.file_type().is_dir() {
        return Err(Error::new(
            ErrorKind::Policy,
            format!(
                "control socket directory {} is not a directory (a symlink or a file): refusing it",
                dir.display()
            ),
        ));
    }
    let uid = our_uid();
    if meta.uid() != uid {
        return Err(Error::new(
            ErrorKind::Policy,
            format!(
                "control socket directory {} belongs to uid {}, not to us (uid {uid}): refusing it",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(Error::new(
            ErrorKind::Policy,
            format!(
                "control socket directory {} has mode {mode:04o}; it must not be accessible to group or others (chmod 0700 it): refusing it",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Connects with a bound wait: a Unix `connect` blocks while the listener's backlog is full, for at
/// most the socket's send timeout.
pub(super) fn connect_with_timeout(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let fd: OwnedFd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    sockopt::set_socket_timeout(&fd, sockopt::Timeout::Send, Some(timeout))?;
    let addr = SocketAddrUnix::new(path)?;
    rustix::net::connect(&fd, &addr)?;
    Ok(UnixStream::from(fd))
}

/// Whether the process that listens at the other end of `stream` is exiting: it ends within
/// [`EXIT_WAIT`] (waited for through a pidfd, not by polling).
pub(super) fn exiting(stream: &UnixStream) -> bool {
    let Ok(cred) = sockopt::socket_peercred(stream) else {
        return false;
    };
    match rustix::process::pidfd_open(cred.pid, rustix::process::PidfdFlags::empty()) {
        Ok(pidfd) => {
            let by = std::time::Instant::now() + EXIT_WAIT;
            crate::pidfd::ended_by(&pidfd, Some(by)).unwrap_or(false)
        }
        Err(e) => e == rustix::io::Errno::SRCH,
    }
}

/// How long a broker that binds the control socket waits for the previous one to finish dying.
const EXIT_WAIT: Duration = Duration::from_millis(500);

/// The uid of the process at the other end of a connected Unix socket.
pub(super) fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    Ok(sockopt::socket_peercred(stream)?.uid.as_raw())
}
