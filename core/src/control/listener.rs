//! Binding the control socket, and the listener that owns its serving thread.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::answer::Answerers;
use super::routing::{Broadcast, locked};
use super::server::Server;
use super::socket::{connect_with_timeout, ensure_private_dir, socket_dir, socket_path};
use super::wire::{Reply, Request};
use crate::protocol;
use crate::{Error, Result};

/// Answers one request (called on one of the listener's answering threads, several at once; a
/// panic is answered as `INTERNAL`).
pub type Handler = Arc<dyn Fn(Request) -> Reply + Send + Sync>;
/// Listens on one app's control socket and serves it until dropped: one thread moves the bytes of
/// every connection, a few others answer requests (`answer.rs`); `Drop` joins them all.
///
/// The handler runs on the answering threads, up to [`super::MAX_ANSWERERS`] requests at once, one at
/// a time per connection: a slow answer delays only its own connection. It may drop the
/// listener (its own thread is then not joined; it ends right after).
pub struct ControlListener {
    path: PathBuf,
    app_id: String,
    /// Wakes the serving thread to stop.
    stop: Arc<OwnedFd>,
    broadcast: Arc<Broadcast>,
    thread: Option<JoinHandle<()>>,
    /// The threads that answer requests, joined after the serving thread.
    answerers: Arc<Answerers>,
    /// Device and inode of the socket file we bound, so `Drop` removes only our own file.
    socket_id: (u64, u64),
    /// Holds the exclusive `flock` on `<app_id>.sock.lock`; released (closed) last in `Drop`.
    _lock: crate::lockfile::FileLock,
}

impl std::fmt::Debug for ControlListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlListener")
            .field("app_id", &self.app_id)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ControlListener {
    /// Binds `socket_path(app_id)` and starts the listener thread.
    ///
    /// Errors: a bad app id → `InvalidArgument`; a socket directory that is not ours or is
    /// group/other-accessible → `Policy`; another live broker for the app → `State`; any other
    /// failure to create, lock or bind → `State`, naming the path.
    pub fn bind(app_id: &str, handler: Handler) -> Result<ControlListener> {
        Self::bind_for_store(app_id, None, handler)
    }

    /// As [`ControlListener::bind`], for the broker of a store: its hello names `store` (a
    /// canonical path), so that a client checks it reached the broker of its own store.
    pub fn bind_for_store(
        app_id: &str,
        store: Option<String>,
        handler: Handler,
    ) -> Result<ControlListener> {
        let path = socket_path(app_id)?;
        let dir = path.parent().expect("a socket path always has a directory");
        if socket_dir()?.1
            && let Some(parent) = dir.parent()
        {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| Error::state(format!("cannot create {}: {e}", parent.display())))?;
        }
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
            Err(e @ crate::lockfile::LockError::Held { .. }) => {
                return Err(Error::state(format!(
                    "another btb broker{} for app {app_id:?} is already listening on {}",
                    e.holder(),
                    path.display()
                )));
            }
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
                    // A broker that is dying (its store lock and this lock already released)
                    // still answers until the kernel closes its socket: it is stale then.
                    Ok(s) if !super::socket::exiting(&s) => return Err(already()),
                    Ok(_) => {
                        fs::remove_file(&path)
                            .or_else(ignore_not_found)
                            .map_err(|e| {
                                Error::state(format!(
                                    "cannot remove the stale socket {}: {e}",
                                    path.display()
                                ))
                            })?;
                    }
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
        listener.set_nonblocking(true).map_err(|e| {
            cleanup(Error::state(format!(
                "cannot make {} non-blocking: {e}",
                path.display()
            )))
        })?;
        let stop = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .map(Arc::new)
        .map_err(|e| cleanup(Error::state(format!("cannot create an eventfd: {e}"))))?;
        let broadcast = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .map(|wake| Arc::new(Broadcast::new(wake)))
        .map_err(|e| cleanup(Error::state(format!("cannot create an eventfd: {e}"))))?;

        let answerers = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .map(|wake| Answerers::new(handler, app_id.to_owned(), wake))
        .map_err(|e| cleanup(Error::state(format!("cannot create an eventfd: {e}"))))?;
        let thread = {
            let stop = Arc::clone(&stop);
            let hello = Reply::Hello {
                version: protocol::VERSION,
                pid: std::process::id(),
                app_id: app_id.to_owned(),
                store,
            };
            let server = Server::new(listener, Arc::clone(&answerers), hello, &broadcast);
            std::thread::Builder::new()
                .name("btb-control".to_owned())
                .spawn(move || server.run(&stop))
                .map_err(|e| {
                    cleanup(Error::state(format!(
                        "cannot start the listener thread for {}: {e}",
                        path.display()
                    )))
                })?
        };

        Ok(ControlListener {
            path,
            app_id: app_id.to_owned(),
            stop,
            broadcast,
            thread: Some(thread),
            answerers,
            socket_id,
            _lock: lock,
        })
    }

    /// The socket this listener is bound to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where notices for subscribed clients go.
    pub fn broadcast(&self) -> Arc<Broadcast> {
        Arc::clone(&self.broadcast)
    }
}

impl Drop for ControlListener {
    fn drop(&mut self) {
        let _ = rustix::io::write(&*self.stop, &1u64.to_ne_bytes());
        // Clients waiting on a ready connection hear the end.
        drop(std::mem::take(&mut *locked(&self.broadcast.ready)));
        // The serving thread calls no broker or app code, so it never drops us itself.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // An answerer may drop us (its answer held the last reference to the broker): it is
        // not joined by itself, and ends right after.
        self.answerers.stop();
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
