//! Custom events across processes (SPEC §1 custom event trigger, §10 control socket).
//!
//! A running broker listens on a Unix stream socket, `$XDG_RUNTIME_DIR/btb/<app_id>.sock`, and any
//! process of the same user signals a custom event with [`signal_event`]. The protocol is one line
//! each way, one exchange per connection:
//!
//! ```text
//! client → broker   signal <name>\n
//! broker → client   ok\n            (the broker's callback has been called)
//!                   err <text>\n    (refused; the connection is closed)
//! ```
//!
//! Security: the directory is `0700` and must be ours, the socket `0600`; on top of that the broker
//! checks each peer's uid (`SO_PEERCRED`) and answers `err not your broker` to anyone else, and the
//! client checks that the socket is served by its own uid before it sends anything.
//!
//! One listener per app: `bind` takes an exclusive `flock` on `<app_id>.sock.lock` beside the socket
//! for the listener's lifetime, so two brokers starting at once cannot both remove and rebind the
//! socket. The lock file stays after `Drop` (removing a lock file races with its next taker).

use std::fs::{self, DirBuilder};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType, sockopt};

use crate::{Error, ErrorKind, Result};

/// The longest request or reply line, newline included.
pub const MAX_LINE: usize = 1024;
/// The longest event name, in bytes (as a custom event trigger id).
pub const MAX_NAME: usize = 256;
/// How long the broker waits for a client's line before it gives up on that client.
pub const SERVER_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long [`signal_event`] waits for the whole exchange.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// `sockaddr_un.sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Reply to a peer of another uid.
const NOT_YOUR_BROKER: &str = "not your broker";

/// `$XDG_RUNTIME_DIR/btb/<app_id>.sock`; without XDG_RUNTIME_DIR: `/tmp/btb-<uid>/<app_id>.sock`.
///
/// An empty or relative `XDG_RUNTIME_DIR` counts as unset (the XDG base directory spec requires an
/// absolute path). The app id must be a reverse-DNS name (as the manifest requires) and the whole
/// path must fit a Unix socket address (107 bytes).
pub fn socket_path(app_id: &str) -> Result<PathBuf> {
    check_app_id(app_id)?;
    let path = socket_dir().join(format!("{app_id}.sock"));
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(Error::invalid(format!(
            "control socket path {} for app {app_id:?} is {len} bytes long; a Unix socket path holds at most {MAX_SOCKET_PATH} bytes (use a shorter XDG_RUNTIME_DIR)",
            path.display()
        )));
    }
    Ok(path)
}

/// The directory holding the sockets (not created here).
fn socket_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
    {
        Some(dir) => dir.join("btb"),
        None => PathBuf::from(format!("/tmp/btb-{}", our_uid())),
    }
}

fn our_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

use crate::manifest::check_app_id;

/// Event names: 1–256 bytes of UTF-8 without control characters (so one fits one line).
pub(crate) fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("event name is empty".to_owned());
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "event name is {} bytes long; the limit is {MAX_NAME} bytes",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("event name {name:?} contains a control character"));
    }
    Ok(())
}

/// Creates the socket directory `0700` if missing; refuses one that is not a real directory, not
/// ours, or accessible to group or others.
fn ensure_private_dir(dir: &Path) -> Result<()> {
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
fn connect_with_timeout(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
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

/// The uid of the process at the other end of a connected Unix socket.
fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    Ok(sockopt::socket_peercred(stream)?.uid.as_raw())
}

/// How reading one line ended.
enum Line {
    Complete(Vec<u8>),
    TooLong,
    Eof,
    TimedOut,
}

/// Reads up to [`MAX_LINE`] bytes until a newline, all of it before `deadline`. Bytes after the
/// newline are ignored. Returns the line without its newline.
fn read_line(stream: &mut UnixStream, deadline: Instant) -> io::Result<Line> {
    let mut buf = vec![0u8; MAX_LINE];
    let mut len = 0;
    loop {
        if let Some(end) = buf[..len].iter().position(|&b| b == b'\n') {
            buf.truncate(end);
            return Ok(Line::Complete(buf));
        }
        if len == MAX_LINE {
            return Ok(Line::TooLong);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Ok(Line::TimedOut);
        }
        stream.set_read_timeout(Some(remaining))?;
        match stream.read(&mut buf[len..]) {
            Ok(0) => return Ok(Line::Eof),
            Ok(n) => len += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(Line::TimedOut);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Listens for signals of one app: binds its socket and serves it on one thread until dropped.
///
/// The callback runs on the listener's thread, one signal at a time, before the client gets its `ok`:
/// keep it short (hand the event to the broker and return). It must not drop the listener.
pub struct SignalListener {
    path: PathBuf,
    app_id: String,
    /// A handle on the listening socket, kept to shut it down (which wakes the blocked `accept`).
    listener: UnixListener,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Device and inode of the socket file we bound, so `Drop` removes only our own file.
    socket_id: (u64, u64),
    /// Holds the exclusive `flock` on `<app_id>.sock.lock`; released (closed) last in `Drop`.
    _lock: crate::lockfile::FileLock,
}

impl std::fmt::Debug for SignalListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalListener")
            .field("app_id", &self.app_id)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SignalListener {
    /// Binds `socket_path(app_id)` and starts the listener thread.
    ///
    /// Errors: a bad app id → `InvalidArgument`; a socket directory that is not ours or is
    /// group/other-accessible → `Policy`; another live broker for the app → `State`; any other
    /// failure to create, lock or bind → `State`, naming the path.
    pub fn bind(
        app_id: &str,
        on_signal: Arc<dyn Fn(&str) + Send + Sync>,
    ) -> Result<SignalListener> {
        let path = socket_path(app_id)?;
        let dir = path.parent().expect("a socket path always has a directory");
        ensure_private_dir(dir)?;

        let already = || {
            Error::state(format!(
                "another btb broker for app {app_id:?} is already listening on {}",
                path.display()
            ))
        };

        let mut lock_path = path.clone().into_os_string();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let lock = match crate::lockfile::FileLock::open(&lock_path) {
            Ok(lock) => lock,
            Err(crate::lockfile::LockError::Held { .. }) => return Err(already()),
            Err(crate::lockfile::LockError::Io(e)) => {
                return Err(Error::state(format!(
                    "cannot lock {}: {e}",
                    lock_path.display()
                )));
            }
        };

        // Under the lock, a socket file left behind is stale unless something still answers on it
        // (a broker that does not take the lock).
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() => {
                match connect_with_timeout(&path, Duration::from_secs(1)) {
                    Ok(_) => return Err(already()),
                    // Connecting timed out: the backlog is full, so someone is alive there.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(already()),
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        fs::remove_file(&path)
                            .or_else(ignore_not_found)
                            .map_err(|e| {
                                Error::state(format!(
                                    "cannot remove the stale socket {}: {e}",
                                    path.display()
                                ))
                            })?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(Error::state(format!(
                            "cannot probe the existing socket {}: {e}",
                            path.display()
                        )));
                    }
                }
            }
            Ok(_) => {
                return Err(Error::state(format!(
                    "{} exists and is not a socket: refusing to replace it",
                    path.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::state(format!(
                    "cannot inspect {}: {e}",
                    path.display()
                )));
            }
        }

        let listener = UnixListener::bind(&path)
            .map_err(|e| Error::state(format!("cannot bind {}: {e}", path.display())))?;
        let cleanup = |e: Error| {
            let _ = fs::remove_file(&path);
            e
        };
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(|e| {
            cleanup(Error::state(format!(
                "cannot chmod 0600 {}: {e}",
                path.display()
            )))
        })?;
        let meta = fs::symlink_metadata(&path).map_err(|e| {
            cleanup(Error::state(format!(
                "cannot inspect {}: {e}",
                path.display()
            )))
        })?;
        let socket_id = (meta.dev(), meta.ino());
        let serving = listener.try_clone().map_err(|e| {
            cleanup(Error::state(format!(
                "cannot duplicate {}: {e}",
                path.display()
            )))
        })?;

        let stopping = Arc::new(AtomicBool::new(false));
        let thread = {
            let stopping = Arc::clone(&stopping);
            let app_id = app_id.to_owned();
            std::thread::Builder::new()
                .name("btb-signal".to_owned())
                .spawn(move || serve(serving, stopping, on_signal, app_id))
                .map_err(|e| {
                    cleanup(Error::state(format!(
                        "cannot start the listener thread for {}: {e}",
                        path.display()
                    )))
                })?
        };

        Ok(SignalListener {
            path,
            app_id: app_id.to_owned(),
            listener,
            stopping,
            thread: Some(thread),
            socket_id,
            _lock: lock,
        })
    }

    /// The socket this listener is bound to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SignalListener {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Shutting a listening Unix socket down wakes `accept` (Linux: EINVAL). If that ever fails,
        // connect once to wake it instead.
        if rustix::net::shutdown(&self.listener, rustix::net::Shutdown::Both).is_err() {
            let _ = connect_with_timeout(&self.path, Duration::from_secs(1));
        }
        if let Some(thread) = self.thread.take() {
            // Joining from the listener thread itself (the callback dropped us) would deadlock.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
        // Remove the socket file only if it is still the one we bound, while still holding the lock.
        if let Ok(meta) = fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.socket_id
        {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn ignore_not_found(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// The listener thread: blocks in `accept` and serves one connection at a time.
fn serve(
    listener: UnixListener,
    stopping: Arc<AtomicBool>,
    on_signal: Arc<dyn Fn(&str) + Send + Sync>,
    app_id: String,
) {
    let uid = our_uid();
    loop {
        let accepted = listener.accept();
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((stream, _)) => serve_one(stream, uid, &*on_signal, &app_id),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Out of descriptors or memory: back off instead of spinning, then try again.
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// One exchange. Write errors are ignored: the client went away.
fn serve_one(
    mut stream: UnixStream,
    uid: u32,
    on_signal: &(dyn Fn(&str) + Send + Sync),
    app_id: &str,
) {
    let _ = stream.set_write_timeout(Some(SERVER_READ_TIMEOUT));
    let reply = |stream: &mut UnixStream, text: &str| {
        let _ = stream.write_all(format!("{text}\n").as_bytes());
        // Half-close first so the client reads our reply before any reset.
        let _ = stream.shutdown(std::net::Shutdown::Write);
    };
    match peer_uid(&stream) {
        Ok(peer) if peer == uid => {}
        _ => return reply(&mut stream, &format!("err {NOT_YOUR_BROKER}")),
    }
    let deadline = Instant::now() + SERVER_READ_TIMEOUT;
    let line = match read_line(&mut stream, deadline) {
        Ok(Line::Complete(line)) => line,
        Ok(Line::TooLong) => {
            return reply(
                &mut stream,
                &format!("err line too long (the limit is {MAX_LINE} bytes)"),
            );
        }
        Ok(Line::TimedOut) => {
            return reply(
                &mut stream,
                &format!("err no command within {} s", SERVER_READ_TIMEOUT.as_secs()),
            );
        }
        Ok(Line::Eof) => return reply(&mut stream, "err incomplete line (no newline)"),
        Err(_) => return,
    };
    let Ok(line) = std::str::from_utf8(&line) else {
        return reply(&mut stream, "err line is not valid UTF-8");
    };
    let Some(name) = line.strip_prefix("signal ") else {
        return reply(&mut stream, "err unknown command");
    };
    if let Err(why) = check_name(name) {
        return reply(&mut stream, &format!("err {why}"));
    }
    let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| on_signal(name)));
    match called {
        Ok(()) => reply(&mut stream, "ok"),
        Err(_) => reply(
            &mut stream,
            &format!("err internal: the broker of app {app_id:?} failed handling event {name:?}"),
        ),
    }
}

/// Client: connects, sends `signal <name>`, waits (≤ 5 s) for the reply.
///
/// Errors: a bad app id or name → `InvalidArgument`; no broker listening → `NotFound`; a socket not
/// reachable for us or served by another uid, or the broker's `err not your broker` → `Policy`; other
/// `err …` replies → `InvalidArgument` (`Internal` for the broker's internal failures); no answer in
/// time or a broken exchange → `State`.
pub fn signal_event(app_id: &str, name: &str) -> Result<()> {
    check_name(name).map_err(|why| Error::invalid(format!("{why} (app {app_id:?})")))?;
    let path = socket_path(app_id)?;
    let shown = path.display();
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let mut stream = match connect_with_timeout(&path, CLIENT_TIMEOUT) {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("no running btb broker for app {app_id:?} (socket {shown})"),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(Error::new(
                ErrorKind::Policy,
                format!(
                    "cannot reach the btb broker for app {app_id:?}: permission denied on socket {shown} (a broker of another user?)"
                ),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            return Err(Error::state(format!(
                "the btb broker for app {app_id:?} did not accept a connection within {} s (socket {shown})",
                CLIENT_TIMEOUT.as_secs()
            )));
        }
        Err(e) => {
            return Err(Error::state(format!(
                "cannot connect to the btb broker for app {app_id:?} (socket {shown}): {e}"
            )));
        }
    };
    // Send nothing to a socket that someone else serves.
    let uid = our_uid();
    match peer_uid(&stream) {
        Ok(peer) if peer == uid => {}
        Ok(peer) => {
            return Err(Error::new(
                ErrorKind::Policy,
                format!(
                    "socket {shown} for app {app_id:?} is served by uid {peer}, not by us (uid {uid}): not signalling event {name:?}"
                ),
            ));
        }
        Err(e) => {
            return Err(Error::state(format!(
                "cannot check who serves socket {shown} for app {app_id:?}: {e}"
            )));
        }
    }
    let broken = |what: &str| {
        Error::state(format!(
            "signalling event {name:?} to the btb broker for app {app_id:?} (socket {shown}): {what}"
        ))
    };
    let remaining = deadline.saturating_duration_since(Instant::now());
    let sent = stream
        .set_write_timeout(Some(remaining.max(Duration::from_millis(1))))
        .and_then(|()| stream.write_all(format!("signal {name}\n").as_bytes()));
    // Even if sending failed, the broker may have answered (and closed) first: prefer its reply.
    let line = match (read_line(&mut stream, deadline), sent) {
        (Ok(Line::Complete(line)), _) => line,
        (_, Err(e)) => return Err(broken(&format!("cannot send: {e}"))),
        (Ok(Line::TimedOut), Ok(())) => {
            return Err(broken(&format!(
                "no reply within {} s",
                CLIENT_TIMEOUT.as_secs()
            )));
        }
        (Ok(Line::Eof), Ok(())) => {
            return Err(broken("the broker closed the connection without a reply"));
        }
        (Ok(Line::TooLong), Ok(())) => return Err(broken("the reply is too long")),
        (Err(e), Ok(())) => return Err(broken(&format!("cannot read the reply: {e}"))),
    };
    let line = String::from_utf8_lossy(&line);
    if line == "ok" {
        return Ok(());
    }
    let Some(text) = line.strip_prefix("err ") else {
        return Err(broken(&format!("unexpected reply {line:?}")));
    };
    let kind = if text == NOT_YOUR_BROKER {
        ErrorKind::Policy
    } else if text.starts_with("internal") {
        ErrorKind::Internal
    } else {
        ErrorKind::InvalidArgument
    };
    Err(Error::new(
        kind,
        format!("the btb broker for app {app_id:?} refused event {name:?}: {text}"),
    ))
}
