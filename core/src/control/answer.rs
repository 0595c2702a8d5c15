//! The answering threads (`btb-answer`): the requests that call the broker — they may touch the
//! store, wait for its writer or call app code (a finalizer) — are answered here, never on the
//! serving thread, so a slow request delays only its own connection.
//!
//! A small pool, started on demand up to [`MAX_ANSWERERS`] threads and owned by the listener,
//! which joins them when it is dropped. Each connection has at most one request in flight (the
//! serving thread reads its next one only after the answer), so the queue holds at most one job
//! per connection: it is bounded by the connection cap. Answers go back through a queue and an
//! eventfd that the serving thread polls; an idle pool sleeps on a condition variable (no timer,
//! no system call).

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use super::listener::Handler;
use super::routing::locked;
use super::wire::{Reply, Request};
use crate::{Error, ErrorKind};

/// Requests answered at once: a slow request holds one answerer; up to this many slow requests
/// at once leave every other connection (feeds, handed runs, hellos) unaffected, and further
/// requests wait in line for a free answerer.
pub const MAX_ANSWERERS: usize = 4;

/// What an answerer does.
pub(super) enum Job {
    /// Answer `request` for connection `conn`.
    Answer { conn: u64, request: Request },
    /// A client offered what it can run: call the listener's `on_offer` (unanswered).
    Offered(Arc<dyn Fn() + Send + Sync>),
}

struct Queue {
    jobs: VecDeque<Job>,
    /// Threads waiting for a job.
    idle: usize,
    stopping: bool,
}

/// The state shared by the serving thread and the answerers.
pub(super) struct Answerers {
    queue: Mutex<Queue>,
    more: Condvar,
    /// Answers not yet taken by the serving thread, by connection.
    answers: Mutex<Vec<(u64, Reply)>>,
    /// Wakes the serving thread to take the answers.
    pub(super) wake: OwnedFd,
    handler: Handler,
    app_id: String,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Answerers {
    pub(super) fn new(handler: Handler, app_id: String, wake: OwnedFd) -> Arc<Answerers> {
        Arc::new(Answerers {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                idle: 0,
                stopping: false,
            }),
            more: Condvar::new(),
            answers: Mutex::new(Vec::new()),
            wake,
            handler,
            app_id,
            threads: Mutex::new(Vec::new()),
        })
    }

    /// Queues a job, starting an answerer if none is free and there are fewer than the most.
    pub(super) fn submit(self: &Arc<Self>, job: Job) {
        let start = {
            let mut q = locked(&self.queue);
            if q.stopping {
                return;
            }
            if matches!(job, Job::Offered(_)) && q.jobs.iter().any(|j| matches!(j, Job::Offered(_)))
            {
                return; // one call covers every offer made before it starts
            }
            q.jobs.push_back(job);
            let threads = locked(&self.threads).len();
            q.idle < q.jobs.len() && threads < MAX_ANSWERERS
        };
        self.more.notify_one();
        if start {
            let me = Arc::clone(self);
            match std::thread::Builder::new()
                .name("btb-answer".to_owned())
                .spawn(move || me.work())
            {
                Ok(thread) => locked(&self.threads).push(thread),
                // The threads there are take the job; with none, the connection waits for its
                // idle deadline (logged: the process is out of threads).
                Err(e) => {
                    log::error!(target: "btb", "cannot start a control answering thread: {e}")
                }
            }
        }
    }

    /// The answers that arrived since the last call (after clearing the wake-up).
    pub(super) fn take(&self) -> Vec<(u64, Reply)> {
        let mut count = [0u8; 8];
        let _ = rustix::io::read(&self.wake, &mut count);
        std::mem::take(&mut *locked(&self.answers))
    }

    fn work(&self) {
        loop {
            let job = {
                let mut q = locked(&self.queue);
                loop {
                    if q.stopping {
                        return;
                    }
                    if let Some(job) = q.jobs.pop_front() {
                        break job;
                    }
                    q.idle += 1;
                    q = self.more.wait(q).unwrap_or_else(|p| p.into_inner());
                    q.idle -= 1;
                }
            };
            match job {
                Job::Answer { conn, request } => {
                    let reply = self.answer(request);
                    locked(&self.answers).push((conn, reply));
                    let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
                }
                Job::Offered(on_offer) => {
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| on_offer()));
                }
            }
        }
    }

    /// Calls the handler; a panic is answered `INTERNAL`.
    fn answer(&self, request: Request) -> Reply {
        let describe = format!("{request:?}");
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.handler)(request)))
            .unwrap_or_else(|_| {
                Reply::error(&Error::new(
                    ErrorKind::Internal,
                    format!(
                        "internal: the broker of app {:?} failed handling {describe}",
                        self.app_id
                    ),
                ))
            })
    }

    /// Stops the answerers and joins them (each finishes the request it is answering first).
    /// Called by the listener's `Drop`; a thread that drops the listener itself (its handler
    /// held the last reference to the broker) is not joined — it ends on its own right after.
    pub(super) fn stop(&self) {
        locked(&self.queue).stopping = true;
        self.more.notify_all();
        let threads = std::mem::take(&mut *locked(&self.threads));
        let me = std::thread::current().id();
        for thread in threads {
            if thread.thread().id() != me {
                let _ = thread.join();
            }
        }
    }
}
