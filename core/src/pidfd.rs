//! Waiting for a process to end through its pidfd: `poll` until it is readable (the process
//! ended) or a deadline — no polling loop, no signal handler.

use std::os::fd::AsFd;
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, poll};

/// Whether the process of `pidfd` has ended, waiting until `deadline` at most (`None`: look now,
/// without waiting). `Err` when `poll` itself fails.
pub(crate) fn ended_by(pidfd: impl AsFd, deadline: Option<Instant>) -> rustix::io::Result<bool> {
    let left = deadline.map_or(std::time::Duration::ZERO, |d| {
        d.saturating_duration_since(Instant::now())
    });
    let timeout = rustix::time::Timespec {
        tv_sec: left.as_secs() as i64,
        tv_nsec: i64::from(left.subsec_nanos()),
    };
    let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
    loop {
        match poll(&mut fds, Some(&timeout)) {
            Ok(n) => return Ok(n > 0),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
}
