//! TIME_ZONE_CHANGE (SPEC §6): inotify on the directory of the localtime link. timedated and
//! `ln -sf` replace the link (a new link renamed over the old one), so a watch on the link itself
//! would go deaf after the first change; the directory sees every replacement. A change is
//! reported only when the zone the link names actually differs (an `/etc` full of other writes
//! is no news).

use std::ffi::OsString;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
use rustix::io::Errno;

use super::{FdSource, Heard, Sink};

/// Watches one localtime path.
pub(crate) struct TimeZoneWatch {
    inotify: OwnedFd,
    localtime: PathBuf,
    name: OsString,
    /// What the link named at the last look: its target and the zone file's bytes.
    last: Option<(Option<PathBuf>, Vec<u8>)>,
}

impl TimeZoneWatch {
    pub(crate) fn new(localtime: &Path) -> std::io::Result<TimeZoneWatch> {
        let (Some(dir), Some(name)) = (localtime.parent(), localtime.file_name()) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} names no file in a directory", localtime.display()),
            ));
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let inotify = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        inotify::add_watch(
            &inotify,
            dir,
            WatchFlags::CREATE
                | WatchFlags::MOVED_TO
                | WatchFlags::DELETE
                | WatchFlags::CLOSE_WRITE
                | WatchFlags::ATTRIB,
        )?;
        Ok(TimeZoneWatch {
            inotify,
            localtime: localtime.to_owned(),
            name: name.to_owned(),
            last: read(localtime),
        })
    }
}

fn read(localtime: &Path) -> Option<(Option<PathBuf>, Vec<u8>)> {
    let bytes = crate::files::read_regular(localtime).ok()?;
    Some((std::fs::read_link(localtime).ok(), bytes))
}

impl FdSource for TimeZoneWatch {
    fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    fn start(&mut self, _sink: &Sink) {}

    fn readable(&mut self, sink: &Sink) {
        let mut buf = [MaybeUninit::uninit(); 4096];
        let mut reader = inotify::Reader::new(&self.inotify, &mut buf);
        let mut ours = false;
        loop {
            match reader.next() {
                Ok(event) => {
                    ours |= event
                        .file_name()
                        .is_some_and(|n| n.to_bytes() == self.name.as_encoded_bytes());
                }
                Err(Errno::INTR) => continue,
                Err(_) => break, // EAGAIN: drained
            }
        }
        if !ours {
            return;
        }
        let now = read(&self.localtime);
        // A missing link (between a delete and its replacement) is not a zone: wait for it.
        if now.is_some() && now != self.last {
            self.last = now;
            sink(Heard::TimeZoneChanged);
        }
    }
}
