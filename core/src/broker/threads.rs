//! The broker's threads, owned (docs/threading.md): every thread of a broker — the broker loop,
//! the notifier, the writer and each worker — is started through [`ThreadSet::spawn`] and joined
//! by `close` through [`ThreadSet::join_until`], which waits for each to end up to a deadline and
//! then abandons (detaches) those still inside app code, naming them: a run function that ignores
//! its cancellation, or a handler that blocks, past the grace. A thread marks itself ended as its
//! last act, so `close` never waits on one that has finished and never guesses.
//!
//! Locks: `inner` is a leaf (spawning holds it only across the `clone` system call, so that a
//! thread that ends at once cannot report before it is known).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{JoinHandle, ThreadId};
use std::time::Instant;

#[derive(Default)]
struct Inner {
    /// Threads not joined yet: their name and handle.
    live: HashMap<ThreadId, (&'static str, JoinHandle<()>)>,
    /// Threads past their body, waiting to be joined (their OS thread is on its way out).
    ended: Vec<ThreadId>,
}

#[derive(Default)]
pub(crate) struct ThreadSet {
    inner: Mutex<Inner>,
    ended_cv: Condvar,
}

/// Marks its thread ended when dropped: the last thing the thread does.
struct Ending(Arc<ThreadSet>);

impl Drop for Ending {
    fn drop(&mut self) {
        let mut inner = self.0.lock();
        inner.ended.push(std::thread::current().id());
        self.0.ended_cv.notify_all();
    }
}

impl ThreadSet {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a thread named `name` that this set owns. Joins those that ended meanwhile first:
    /// a long-lived set (a client's, whose connections come and go) keeps no ended thread.
    pub(crate) fn spawn(
        self: &Arc<Self>,
        name: &'static str,
        body: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<()> {
        let mut inner = self.lock();
        for id in std::mem::take(&mut inner.ended) {
            if let Some((_, handle)) = inner.live.remove(&id) {
                let _ = handle.join(); // past its body: only its exit is waited for
            }
        }
        let ending = Ending(Arc::clone(self));
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _ending = ending;
                body();
            })?;
        inner.live.insert(handle.thread().id(), (name, handle));
        Ok(())
    }

    /// Waits until every thread but the caller has ended, or `deadline`; joins those that ended
    /// and abandons the rest, returning their names (the caller's own thread is neither waited
    /// for nor named: a handler may close its system). An abandoned thread's handle stays here,
    /// and is dropped (detached) with the set.
    pub(crate) fn join_until(&self, deadline: Instant) -> Vec<&'static str> {
        let me = std::thread::current().id();
        let mut inner = self.lock();
        loop {
            for id in std::mem::take(&mut inner.ended) {
                if let Some((_, handle)) = inner.live.remove(&id) {
                    // Past its body (it marked itself ended): this waits only for its exit. Under
                    // the lock, which the thread no longer takes.
                    let _ = handle.join();
                }
            }
            let waiting = inner.live.keys().filter(|id| **id != me).count();
            let left = deadline.saturating_duration_since(Instant::now());
            if waiting == 0 || left.is_zero() {
                break;
            }
            inner = self
                .ended_cv
                .wait_timeout(inner, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        inner
            .live
            .iter()
            .filter(|(id, _)| **id != me)
            .map(|(_, (name, _))| *name)
            .collect()
    }
}
