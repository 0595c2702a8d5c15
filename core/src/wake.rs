//! How the broker thread sleeps: until a wall-clock instant (a `timerfd` on CLOCK_REALTIME, armed
//! absolute) or until another thread wakes it (an `eventfd`), whichever comes first. Unlike a
//! monotonic timeout, a realtime timer fires on time after a suspend, and `TFD_TIMER_CANCEL_ON_SET`
//! reports a wall-clock jump so the broker can re-plan calendar triggers (SPEC §3). No polling:
//! with nothing due the broker blocks in `poll` with no timeout.

use std::os::fd::OwnedFd;

use rustix::event::{EventfdFlags, PollFd, PollFlags, eventfd, poll};
use rustix::io::Errno;
use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
};

use crate::error::{Error, ErrorKind, Result};

/// Why `Waker::wait` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woke {
    /// Another thread called `wake`, or the timer expired, or a spurious return.
    Ready,
    /// The wall clock was set (stepped): due times computed from it may need re-planning.
    ClockJump,
}

pub(crate) struct Waker {
    event: OwnedFd,
    timer: OwnedFd,
}

impl Waker {
    pub(crate) fn new() -> Result<Waker> {
        let fail = |what: &str, e: Errno| {
            Error::new(
                ErrorKind::Internal,
                format!("cannot create the broker's {what}: {e}"),
            )
        };
        let event = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| fail("eventfd", e))?;
        let timer = timerfd_create(
            TimerfdClockId::Realtime,
            TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
        )
        .map_err(|e| fail("timerfd", e))?;
        Ok(Waker { event, timer })
    }

    /// Wakes the waiting broker (or makes its next wait return at once).
    pub(crate) fn wake(&self) {
        // EAGAIN only when the counter is saturated: it is non-zero then, which is all we need.
        let _ = rustix::io::write(&self.event, &1u64.to_ne_bytes());
    }

    /// Sleeps until `until_ms` (wall clock, ms since the epoch; `None` = no deadline) or `wake`.
    pub(crate) fn wait(&self, until_ms: Option<i64>) -> Woke {
        let value = match until_ms {
            // An absolute time in the past expires at once, but all-zero would disarm: at least
            // 1 ns after the epoch.
            Some(ms) if ms > 0 => Timespec {
                tv_sec: ms / 1000,
                tv_nsec: (ms % 1000) * 1_000_000,
            },
            Some(_) => Timespec {
                tv_sec: 0,
                tv_nsec: 1,
            },
            None => Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
        };
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: value,
        };
        let flags = TimerfdTimerFlags::ABSTIME | TimerfdTimerFlags::CANCEL_ON_SET;
        if let Err(Errno::CANCELED) = timerfd_settime(&self.timer, flags, &spec) {
            return Woke::ClockJump;
        }
        let mut fds = [
            PollFd::new(&self.event, PollFlags::IN),
            PollFd::new(&self.timer, PollFlags::IN),
        ];
        if poll(&mut fds, None).is_err() {
            return Woke::Ready; // EINTR: the caller re-plans and waits again
        }
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.event, &mut buf); // drain wake-ups
        match rustix::io::read(&self.timer, &mut buf) {
            Err(Errno::CANCELED) => Woke::ClockJump,
            _ => Woke::Ready,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    fn now_ms() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    }

    #[test]
    fn a_wake_before_the_wait_is_not_lost() {
        let w = Waker::new().unwrap();
        w.wake();
        assert_eq!(w.wait(None), Woke::Ready); // returns at once (a lost wake would block forever)
    }

    #[test]
    fn wakes_from_another_thread() {
        let w = Arc::new(Waker::new().unwrap());
        let w2 = Arc::clone(&w);
        let t = std::thread::spawn(move || w2.wake());
        assert_eq!(w.wait(None), Woke::Ready);
        t.join().unwrap();
    }

    /// Held by tests that wait on the wall clock and by the test that sets it: a set during a
    /// wait is (rightly) reported as a jump.
    pub(super) static WALL_CLOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn the_timer_fires_at_a_wall_clock_instant() {
        let _clock = WALL_CLOCK.lock().unwrap_or_else(|p| p.into_inner());
        let w = Waker::new().unwrap();
        let start = Instant::now();
        assert_eq!(w.wait(Some(now_ms() + 30)), Woke::Ready);
        assert!(
            start.elapsed() >= Duration::from_millis(25),
            "{:?}",
            start.elapsed()
        );
        // A deadline in the past returns at once.
        assert_eq!(w.wait(Some(now_ms() - 1000)), Woke::Ready);
        assert_eq!(w.wait(Some(0)), Woke::Ready);
    }
}

/// Needs CAP_SYS_TIME (the project's machines run tests as root). The clock is set to its own
/// current value (compensated with the monotonic clock), so nothing else sees a jump.
#[cfg(test)]
mod clock_set {
    use super::*;
    use rustix::time::{ClockId, clock_gettime, clock_settime};
    use std::sync::{Arc, mpsc};
    use std::time::Duration;

    fn set_clock_to_itself() {
        let rt = clock_gettime(ClockId::Realtime);
        let m0 = clock_gettime(ClockId::Monotonic);
        let m1 = clock_gettime(ClockId::Monotonic);
        let ns = (rt.tv_sec as i128 * 1_000_000_000 + rt.tv_nsec as i128)
            + ((m1.tv_sec - m0.tv_sec) as i128 * 1_000_000_000 + (m1.tv_nsec - m0.tv_nsec) as i128);
        let now = Timespec {
            tv_sec: (ns / 1_000_000_000) as i64,
            tv_nsec: (ns % 1_000_000_000) as i64,
        };
        clock_settime(ClockId::Realtime, now).expect("clock_settime needs CAP_SYS_TIME");
    }

    #[test]
    fn a_wall_clock_set_is_reported_as_a_jump() {
        let _clock = super::tests::WALL_CLOCK
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let w = Arc::new(Waker::new().unwrap());
        let (tx, rx) = mpsc::channel();
        let waiter = {
            let w = Arc::clone(&w);
            std::thread::spawn(move || {
                let far = rustix::time::clock_gettime(ClockId::Realtime).tv_sec * 1000 + 3_600_000;
                tx.send(w.wait(Some(far))).unwrap();
            })
        };
        // The set must come after the waiter armed its timer: set, then give it 200 ms to report.
        let mut woke = None;
        for _ in 0..25 {
            set_clock_to_itself();
            if let Ok(w) = rx.recv_timeout(Duration::from_millis(200)) {
                woke = Some(w);
                break;
            }
        }
        assert_eq!(woke, Some(Woke::ClockJump));
        waiter.join().unwrap();
    }
}
