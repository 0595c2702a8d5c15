//! The store writer. The broker's own writes — schedule changes (due times, spent one-shots,
//! latched fires) and run records — are queued under the state lock and committed in order by
//! this thread, so nothing that holds the state lock waits on a disk flush: `request`,
//! `set_progress` and the broker thread go on while a registration or a run record is fsynced.
//!
//! What depended on a write being durable still waits for it, without a lock: a run starts only
//! after the writes queued before it (its one-shot is spent on disk before it runs), a completed
//! handler is called only after its run record is committed, `history` reads its own writes, and
//! `wait_idle` counts a queued write as work. Each write gets a sequence number; waiters wait for
//! `done >= n`.
//!
//! Locks: the queue and `done` are leaves (nothing is taken while holding them). The thread takes
//! the store lock to apply a write and the state lock only to signal `change_cv`, never both.

use std::collections::VecDeque;
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
}

#[derive(Default)]
pub(crate) struct Writer {
    queue: Mutex<Queue>,
    /// Wakes the writer thread.
    queued: Condvar,
    /// The number of the last write committed (or failed: a failure is logged, never retried).
    done: Mutex<u64>,
    done_cv: Condvar,
}

impl Writer {
    /// Queues a write; returns its number.
    pub(crate) fn enqueue(&self, write: Write) -> u64 {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        q.last += 1;
        let n = q.last;
        q.writes.push_back((n, write));
        self.queued.notify_one();
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
        *self.done.lock().unwrap_or_else(PoisonError::into_inner) >= n
    }

    /// Waits until every write up to `n` is committed. Never call it holding a btb lock.
    pub(crate) fn wait_done(&self, n: u64) {
        let mut done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        while *done < n {
            done = self
                .done_cv
                .wait(done)
                .unwrap_or_else(PoisonError::into_inner);
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
                    q = self
                        .writer
                        .queued
                        .wait(q)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                if q.writes.is_empty() {
                    return; // stopping, and drained
                }
                q.writes.drain(..).collect()
            };
            let last = batch.last().map_or(0, |(n, _)| *n);
            {
                let mut store = self.store();
                if let Some(store) = store.as_mut() {
                    for (_, write) in &batch {
                        let result = match write {
                            Write::Schedule(changes) => store.update_schedule(changes),
                            Write::Run(run, limit) => store.insert_run(run, *limit),
                        };
                        if let Err(e) = result {
                            // The in-memory state stays right; the row catches up with the next
                            // change of the same registration.
                            log::error!(target: "btb", "{e}");
                        }
                    }
                }
            }
            *self
                .writer
                .done
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = last;
            self.writer.done_cv.notify_all();
            // Under the state lock, so that a `wait_idle` between its check and its wait cannot
            // miss this.
            let _st = self.lock();
            self.change_cv.notify_all();
        }
    }
}
