//! The store writer. The broker's own writes — schedule changes (due times, spent one-shots,
//! latched fires) and run records — are queued under the state lock and committed in order by
//! this thread, so nothing that holds the state lock waits on a disk flush: `request`,
//! `set_progress` and the broker thread go on while a registration or a run record is fsynced.
//!
//! What depended on a write being durable still waits for it, without a lock: a run starts only
//! after the schedule writes queued before it (its one-shot is spent on disk before it runs),
//! `history` reads its own writes (so a completed handler that reads it sees its run), and
//! `wait_idle` counts a queued write as work. Each write gets a sequence number; waiters wait for
//! `done >= n`.
//!
//! Fail-stop (SPEC §7): a batch that cannot be committed (a full disk, an I/O error) is kept, in
//! order, and tried again — at once when another write is queued, else after a delay that doubles
//! from [`RETRY_FIRST`] to [`RETRY_MAX`] — and `done` does not move past it, so no run that
//! depends on it starts. Meanwhile [`Writer::failure`] says why (the broker refuses new fires and
//! reports it); the first success clears it and the held runs start. A writer told to stop while
//! failing makes one last attempt; if that fails too, what it held is lost, which it logs, and
//! every waiter is told ([`Writer::wait_done`] returns `false`).
//!
//! Locks: the queue, `done`'s waiters and the failure are leaves (nothing is taken while holding
//! one). The thread takes the store lock to apply a write and the state lock only to signal
//! `change_cv`, never both.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use super::Broker;
use crate::error::{Error, Result};
use crate::model::RunRecord;
use crate::store::ScheduleChange;

/// The first retry of a batch that failed comes after this long…
pub(crate) const RETRY_FIRST: Duration = Duration::from_millis(100);
/// …and the delay doubles up to this.
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(5);

/// One queued write.
pub(crate) enum Write {
    Schedule(Vec<ScheduleChange>),
    /// A run record and the history limit of its registration.
    Run(RunRecord, u32),
    /// A file to remove once every write queued before it is committed: the run file of a run
    /// that ended in a client process (`runfile.rs`), which a next broker reads until then.
    Forget(std::path::PathBuf),
}

#[derive(Default)]
struct Queue {
    writes: VecDeque<(u64, Write)>,
    /// The number of the last write queued.
    last: u64,
    stopping: bool,
    /// The writer thread waits for work (only then does `enqueue` wake it).
    waiting: bool,
}

#[derive(Default)]
struct Done {
    waiters: usize,
}

/// What the writer holds to commit in one transaction: every write up to `last`.
#[derive(Default)]
struct Batch {
    schedule: Vec<ScheduleChange>,
    runs: Vec<(RunRecord, u32)>,
    /// Removed once the batch is committed.
    forget: Vec<std::path::PathBuf>,
    last: u64,
}

impl Batch {
    fn add(&mut self, n: u64, write: Write) {
        match write {
            Write::Schedule(changes) => self.schedule.extend(changes),
            Write::Run(run, limit) => self.runs.push((run, limit)),
            Write::Forget(path) => self.forget.push(path),
        }
        self.last = n;
    }

    fn is_empty(&self) -> bool {
        self.schedule.is_empty() && self.runs.is_empty() && self.forget.is_empty()
    }
}

#[derive(Default)]
pub(crate) struct Writer {
    queue: Mutex<Queue>,
    /// Wakes the writer thread.
    queued: Condvar,
    /// The number of the last write committed.
    done: AtomicU64,
    /// How many threads wait for `done` to grow (only then is `done_cv` signalled: a signal is a
    /// system call).
    waiters: Mutex<Done>,
    done_cv: Condvar,
    /// Why the writes held could not be committed; `None` while writes succeed.
    failure: Mutex<Option<Error>>,
    /// The writer stopped holding writes it could not commit: they never will be.
    abandoned: AtomicBool,
}

impl Writer {
    /// Queues a write; returns its number. Writes queued while the writer is busy go in its next
    /// batch (one transaction).
    pub(crate) fn enqueue(&self, write: Write) -> u64 {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        q.last += 1;
        let n = q.last;
        q.writes.push_back((n, write));
        if q.waiting {
            self.queued.notify_one();
        }
        n
    }

    /// The number of the last write queued (0: none yet).
    pub(crate) fn last(&self) -> u64 {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last
    }

    /// Whether every write up to `n` is committed.
    pub(crate) fn is_done(&self, n: u64) -> bool {
        self.done.load(Ordering::Acquire) >= n
    }

    /// Why the writer cannot commit what it holds (the store error), while that lasts.
    pub(crate) fn failure(&self) -> Option<Error> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until every write up to `n` is committed — through failures, which it outwaits:
    /// `false` only when the writer stopped without committing them (they never will be). Never
    /// call it holding a btb lock.
    pub(crate) fn wait_done(&self, n: u64) -> bool {
        self.wait(n, false).is_ok()
    }

    /// Waits until every write up to `n` is committed; the store error as soon as the writer
    /// cannot commit (it does not outwait a failure). Never call it holding a btb lock.
    pub(crate) fn wait_committed(&self, n: u64) -> Result<()> {
        self.wait(n, true)
    }

    fn wait(&self, n: u64, fail_fast: bool) -> Result<()> {
        let mut w = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if self.is_done(n) {
                return Ok(());
            }
            if self.abandoned.load(Ordering::Acquire) {
                return Err(self.failure().unwrap_or_else(|| {
                    Error::state("the store writer stopped before committing this write")
                }));
            }
            if fail_fast && let Some(e) = self.failure() {
                return Err(e);
            }
            w.waiters += 1;
            w = self.done_cv.wait(w).unwrap_or_else(PoisonError::into_inner);
            w.waiters -= 1;
        }
    }

    /// Wakes the threads waiting in `wait`. Under the waiters' lock: a waiter between its check
    /// and its wait cannot miss this.
    fn wake_waiters(&self) {
        let w = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        if w.waiters > 0 {
            self.done_cv.notify_all();
        }
    }

    /// Asks the thread to commit what is queued and stop.
    pub(crate) fn stop(&self) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stopping = true;
        self.queued.notify_one();
    }

    /// Takes what was queued into `batch`; waits first — for work, or while failing for `retry`
    /// (a new write or `stop` ends the wait early). Returns whether the writer is stopping.
    fn take(&self, batch: &mut Batch, retry: Option<Duration>) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        match retry {
            None => {
                while q.writes.is_empty() && !q.stopping {
                    q.waiting = true;
                    q = self.queued.wait(q).unwrap_or_else(PoisonError::into_inner);
                    q.waiting = false;
                }
            }
            Some(delay) => {
                if q.writes.is_empty() && !q.stopping {
                    q.waiting = true;
                    q = self
                        .queued
                        .wait_timeout(q, delay)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                    q.waiting = false;
                }
            }
        }
        for (n, write) in q.writes.drain(..) {
            batch.add(n, write);
        }
        q.stopping
    }

    fn drained(&self) -> bool {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .writes
            .is_empty()
    }
}

impl Broker {
    /// The writer thread: commits queued writes in order until stopped and drained.
    pub(super) fn writer_loop(self: &Arc<Self>) {
        let writer = &self.writer;
        let mut batch = Batch::default();
        let mut retry: Option<Duration> = None;
        loop {
            let stopping = writer.take(&mut batch, retry);
            if batch.is_empty() {
                if stopping {
                    return; // drained
                }
                continue;
            }
            // One transaction for the whole batch (group commit: one flush for many writes).
            let result = match self.store().as_mut() {
                Some(store) => store.write_batch(&batch.schedule, &batch.runs),
                None => Ok(()),
            };
            match result {
                Ok(()) => {
                    let recovered = writer
                        .failure
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .take();
                    if recovered.is_some() {
                        log::warn!(target: "btb", "the store is written again; held runs start");
                    }
                    retry = None;
                    for path in &batch.forget {
                        let _ = std::fs::remove_file(path);
                    }
                    writer.done.store(batch.last, Ordering::Release);
                    batch = Batch::default();
                    // Writes are what fill the disk: read its space again (off the locks).
                    self.refresh_storage();
                }
                Err(e) if stopping => {
                    log::error!(
                        target: "btb",
                        "{e}; closing with {} schedule change(s) and {} run record(s) not written",
                        batch.schedule.len(),
                        batch.runs.len()
                    );
                    *writer
                        .failure
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(e);
                    writer.abandoned.store(true, Ordering::Release);
                    writer.wake_waiters();
                    self.signal_changed();
                    return;
                }
                Err(e) => {
                    let mut failure = writer
                        .failure
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    if failure.is_none() {
                        // Once per failure, not once per attempt.
                        log::error!(
                            target: "btb",
                            "{e}; runs that depend on it are held and no fire is taken until it can be written"
                        );
                    }
                    *failure = Some(e);
                    drop(failure);
                    retry = Some(retry.map_or(RETRY_FIRST, |d| (d * 2).min(RETRY_MAX)));
                }
            }
            writer.wake_waiters();
            // Only once drained (a waiter for idleness cares for nothing less), or to tell a
            // waiter that the store failed.
            if retry.is_some() || writer.drained() {
                self.signal_changed();
            }
        }
    }

    /// Signals `change_cv` under the state lock, so that a `wait_idle` between its check and its
    /// wait cannot miss it; only when one waits (it counts itself in before its check).
    fn signal_changed(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            let _st = self.lock();
            self.changed();
        }
    }
}
