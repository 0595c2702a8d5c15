//! Deadlines for the D-Bus calls the `btb-dbus` thread makes (SPEC §6): a daemon that never
//! answers must not freeze the watcher — and with it every D-Bus state, resume included.
//!
//! zbus's own call timeout arms a timer that fires seconds after the call is over, and the idle
//! broker makes no system calls; so the deadline is armed only while a call is outstanding. One
//! thread, `btb-dbus-timer`, owned by the bus and joined when it drops, sleeps on a condition
//! variable until the earliest deadline of the calls in flight — or, with none in flight, until
//! one is armed — and wakes a call whose deadline passed. A call that ends disarms its deadline.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Armed {
    /// The calls in flight: their deadline (with a number, for equal instants) and waker.
    deadlines: BTreeMap<(Instant, u64), Waker>,
    next: u64,
    stopped: bool,
}

#[derive(Default)]
pub(crate) struct CallTimer {
    armed: Mutex<Armed>,
    changed: Condvar,
}

impl CallTimer {
    fn lock(&self) -> MutexGuard<'_, Armed> {
        self.armed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts `btb-dbus-timer`; [`CallTimer::stop`] ends it (the caller joins it).
    pub(crate) fn start(self: &Arc<Self>) -> std::io::Result<std::thread::JoinHandle<()>> {
        let timer = Arc::clone(self);
        std::thread::Builder::new()
            .name("btb-dbus-timer".into())
            .spawn(move || timer.run())
    }

    pub(crate) fn stop(&self) {
        self.lock().stopped = true;
        self.changed.notify_all();
    }

    fn run(&self) {
        let mut armed = self.lock();
        loop {
            if armed.stopped {
                return;
            }
            let now = Instant::now();
            while let Some(entry) = armed.deadlines.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                entry.remove().wake();
            }
            armed = match armed.deadlines.keys().next() {
                // Nothing in flight: no timer at all until a call arms one.
                None => self
                    .changed
                    .wait(armed)
                    .unwrap_or_else(PoisonError::into_inner),
                Some((at, _)) => {
                    let left = at.saturating_duration_since(now);
                    self.changed
                        .wait_timeout(armed, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    fn arm(&self, at: Instant, waker: &Waker) -> u64 {
        let mut armed = self.lock();
        let id = armed.next;
        armed.next += 1;
        let earliest = armed.deadlines.keys().next().is_none_or(|(t, _)| at < *t);
        armed.deadlines.insert((at, id), waker.clone());
        drop(armed);
        if earliest {
            self.changed.notify_one();
        }
        id
    }

    fn disarm(&self, at: Instant, id: u64) {
        let mut armed = self.lock();
        let earliest = armed.deadlines.keys().next() == Some(&(at, id));
        armed.deadlines.remove(&(at, id));
        drop(armed);
        if earliest {
            self.changed.notify_one(); // the thread sleeps on to the next one, or for good
        }
    }

    /// Runs `call` until it is done or `timeout` passed (`None`; `call` is dropped, which
    /// cancels it).
    pub(crate) async fn within<F: Future>(&self, timeout: Duration, call: F) -> Option<F::Output> {
        struct Disarm<'a> {
            timer: &'a CallTimer,
            armed: Option<(Instant, u64)>,
        }
        impl Drop for Disarm<'_> {
            fn drop(&mut self) {
                if let Some((at, id)) = self.armed {
                    self.timer.disarm(at, id);
                }
            }
        }
        let at = Instant::now() + timeout;
        let mut call = pin!(call);
        let mut guard = Disarm {
            timer: self,
            armed: None,
        };
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = call.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            if Instant::now() >= at {
                return Poll::Ready(None);
            }
            // Armed once; a later poll with another waker re-arms with that one.
            match guard.armed {
                Some((t, id))
                    if guard
                        .timer
                        .lock()
                        .deadlines
                        .get(&(t, id))
                        .is_some_and(|w| w.will_wake(cx.waker())) => {}
                Some((t, id)) => {
                    guard.timer.disarm(t, id);
                    guard.armed = Some((at, guard.timer.arm(at, cx.waker())));
                }
                None => guard.armed = Some((at, guard.timer.arm(at, cx.waker()))),
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_that_never_answers_ends_at_its_deadline_and_one_that_answers_disarms() {
        let timer = Arc::new(CallTimer::default());
        let thread = timer.start().unwrap();
        let never = std::future::pending::<()>();
        let started = Instant::now();
        let out = zbus::block_on(timer.within(Duration::from_millis(50), never));
        assert_eq!(out, None);
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(
            zbus::block_on(timer.within(Duration::from_secs(60), async { 7 })),
            Some(7)
        );
        assert!(timer.lock().deadlines.is_empty(), "nothing stays armed");
        timer.stop();
        thread.join().unwrap();
    }
}
