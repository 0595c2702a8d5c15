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
//! Locks: the queue and `done` are leaves (nothing is taken while holding them). The thread takes
//! the store lock to apply a write and the state lock only to signal `change_cv`, never both.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use super::Broker;
use crate::model::RunRecord;
use crate::store::ScheduleChange;

/// One queued write.
pub(crate) enum Write {
    Schedule(Vec<ScheduleChange>),
    /// A run record and the history limit of its registration.
    Run(RunRecord, u32),
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

#[derive(Default)]
pub(crate) struct Writer {
    queue: Mutex<Queue>,
    /// Wakes the writer thread.
    queued: Condvar,
    /// The number of the last write committed (or failed: a failure is logged, never retried).
    done: AtomicU64,
    /// How many threads wait for `done` to grow (only then is `done_cv` signalled: a signal is a
    /// system call).
    waiters: Mutex<Done>,
    done_cv: Condvar,
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

    /// Waits until every write up to `n` is committed. Never call it holding a btb lock.
    pub(crate) fn wait_done(&self, n: u64) {
        if self.is_done(n) {
            return;
        }
        let mut w = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        while !self.is_done(n) {
            w.waiters += 1;
            w = self.done_cv.wait(w).unwrap_or_else(PoisonError::into_inner);
            w.waiters -= 1;
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
}

impl Broker {
    /// The writer thread: commits queued writes in order until stopped and drained.
    pub(super) fn writer_loop(self: &Arc<Self>) {
        loop {
            let batch: Vec<(u64, Write)> = {
                let mut q = self
                    .writer
                    .queue
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                while q.writes.is_empty() && !q.stopping {
                    q.waiting = true;
                    q = self
                        .writer
                        .queued
                        .wait(q)
                        .unwrap_or_else(PoisonError::into_inner);
                    q.waiting = false;
                }
                if q.writes.is_empty() {
                    return; // stopping, and drained
                }
                q.writes.drain(..).collect()
            };
            let last = batch.last().map_or(0, |(n, _)| *n);
            let mut schedule = Vec::new();
            let mut runs = Vec::new();
            for (_, write) in batch {
                match write {
                    Write::Schedule(changes) => schedule.extend(changes),
                    Write::Run(run, limit) => runs.push((run, limit)),
                }
            }
            // One transaction for the whole batch (group commit: one flush for many writes).
            if let Some(store) = self.store().as_mut()
                && let Err(e) = store.write_batch(&schedule, &runs)
            {
                // The in-memory state stays right; a row catches up with its next change.
                log::error!(target: "btb", "{e}");
            }
            self.writer.done.store(last, Ordering::Release);
            // Under the waiters' lock: a waiter between its check and its wait cannot miss this.
            let w = self
                .writer
                .waiters
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if w.waiters > 0 {
                self.writer.done_cv.notify_all();
            }
            drop(w);
            let drained = self
                .writer
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .writes
                .is_empty();
            // Under the state lock, so that a `wait_idle` between its check and its wait cannot
            // miss this; only when one waits (it counts itself in before its check), and only
            // once drained (a waiter for idleness cares for nothing less).
            if drained && self.waiting.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                let _st = self.lock();
                self.changed();
            }
        }
    }
}
