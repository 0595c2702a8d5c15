//! What btbd waits for besides its running broker: signals (SIGTERM and SIGINT stop it, SIGHUP
//! re-reads the manifest, SIGCHLD reaps orphans), the manifest file changing, and the store being removed (the app was
//! uninstalled). One `poll` over a signalfd and an inotify descriptor, with no timeout: an idle
//! btbd makes no system calls.

use std::ffi::OsString;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use rustix::event::{PollFd, PollFlags, poll};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::io::Errno;

/// What woke btbd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// SIGTERM or SIGINT: close and exit.
    Stop(Signal),
    /// SIGHUP: re-read the manifest.
    Reload,
    /// SIGCHLD: a child exited (an orphan to reap, `orphans.rs`).
    ChildExited,
    /// The manifest file was written or replaced.
    ManifestChanged,
    /// The store file was removed or moved away.
    StoreRemoved,
}

/// The file btbd follows in a directory.
struct Watched {
    dir: i32,
    name: OsString,
}

pub struct Watch {
    signals: SignalFd,
    inotify: OwnedFd,
    manifest: Watched,
    store: Watched,
    /// Wakes read but not yet returned (one inotify read may hold several).
    queued: Vec<Wake>,
}

/// The signals btbd handles; block them (before any thread starts, so that every thread
/// inherits the mask) and pass them to [`Watch::new`].
pub fn signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set.add(Signal::SIGCHLD);
    set
}

/// The directory (`.` for a bare name) and the name of `path`.
fn split(path: &Path) -> std::io::Result<(&Path, OsString)> {
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Ok((dir, name.to_owned()))
}

impl Watch {
    /// Follows `manifest` (written in place, or replaced by a rename as editors and `btbctl
    /// enable` do) and `store` (removed), and the blocked `signals`.
    pub fn new(signals: &SigSet, manifest: &Path, store: &Path) -> std::io::Result<Watch> {
        let signals =
            SignalFd::with_flags(signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
        let inotify = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        let (dir, name) = split(manifest)?;
        let manifest = Watched {
            dir: inotify::add_watch(
                &inotify,
                dir,
                WatchFlags::CLOSE_WRITE | WatchFlags::MOVED_TO,
            )?,
            name,
        };
        let (dir, name) = split(store)?;
        // The same directory for both gives one watch with both masks (inotify merges them
        // only with MASK_ADD).
        let store = Watched {
            dir: inotify::add_watch(
                &inotify,
                dir,
                WatchFlags::DELETE
                    | WatchFlags::MOVED_FROM
                    | WatchFlags::CLOSE_WRITE
                    | WatchFlags::MOVED_TO
                    | WatchFlags::MASK_ADD,
            )?,
            name,
        };
        Ok(Watch {
            signals,
            inotify,
            manifest,
            store,
            queued: Vec::new(),
        })
    }

    /// Waits for the next wake (blocking, no timeout).
    pub fn next(&mut self) -> std::io::Result<Wake> {
        loop {
            if !self.queued.is_empty() {
                return Ok(self.queued.remove(0));
            }
            let mut fds = [
                PollFd::new(&self.signals, PollFlags::IN),
                PollFd::from_borrowed_fd(self.inotify.as_fd(), PollFlags::IN),
            ];
            match poll(&mut fds, None) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            while let Some(info) = self.signals.read_signal()? {
                let wake = match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGHUP) => Wake::Reload,
                    Ok(Signal::SIGCHLD) => Wake::ChildExited,
                    Ok(s) => Wake::Stop(s),
                    Err(_) => continue,
                };
                // One reap takes every orphan that exited: a SIGCHLD is queued once.
                if wake != Wake::ChildExited || !self.queued.contains(&wake) {
                    self.queued.push(wake);
                }
            }
            self.read_files();
        }
    }

    /// Drains the inotify descriptor into `queued` (once per kind of wake).
    fn read_files(&mut self) {
        let mut buf = [MaybeUninit::uninit(); 4096];
        let mut reader = inotify::Reader::new(&self.inotify, &mut buf);
        loop {
            let event = match reader.next() {
                Ok(event) => event,
                Err(Errno::INTR) => continue,
                Err(_) => break, // EAGAIN: drained
            };
            let Some(name) = event.file_name() else {
                continue;
            };
            let name = name.to_bytes();
            let is = |w: &Watched| event.wd() == w.dir && name == w.name.as_encoded_bytes();
            let removed = event
                .events()
                .intersects(ReadFlags::DELETE | ReadFlags::MOVED_FROM);
            let written = event
                .events()
                .intersects(ReadFlags::CLOSE_WRITE | ReadFlags::MOVED_TO);
            let wake = if is(&self.store) && removed {
                Wake::StoreRemoved
            } else if is(&self.manifest) && written {
                Wake::ManifestChanged
            } else {
                continue;
            };
            if !self.queued.contains(&wake) {
                self.queued.push(wake);
            }
        }
    }
}
