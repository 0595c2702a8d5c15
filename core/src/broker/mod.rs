//! The broker (SPEC §3–§4): one per open system. It fires triggers, latches them until their
//! conditions hold, runs instances on a bounded worker pool (or hands them to a host through the
//! pull queue), enforces time limits and grace, records runs and delivers progress and completion.
//! `System` (system.rs) is its façade; it calls the broker through one trait, [`Backend`]
//! (`backend.rs`), which a client of another process's broker (`client.rs`) implements too. The
//! broker never names the façade.
//!
//! Where things are:
//! - `mod.rs`: the broker's state and lock, its threads (broker loop, notifier), idle waits, close.
//! - `open.rs`: opening a broker on a store (load, catch-up, threads, sources, control socket).
//! - `backend.rs`: what a `System` or a `Registration` delegates to ([`Backend`]).
//! - `register.rs`: registering and unregistering (store first, then state), listing.
//! - `answer.rs`: answering the requests of the control socket.
//! - `registration.rs`: the handle of one registration (`Registration`).
//! - `handlers.rs`: the handler tables and the types of handlers.
//! - `groups.rs`: the process-wide background-activated handlers of task groups, and the
//!   observers (brokers, clients) told when they change.
//! - `timers.rs`: due times of time, maintenance and calendar triggers; windows; catch-up at open.
//! - `latch.rs`: fires, pending (latched) fires, conditions, dispatch to the pool.
//! - `pool.rs`: worker threads, entry-point resolution, the pull queue.
//! - `exec.rs`: runs in other processes — `exec` hosts, and client processes of this broker that
//!   offer a handler it lacks — supervised by the worker that started them.
//! - `cancel.rs`: cancellation, time limits, grace, and the end of an instance.
//! - `notify.rs`: the notifier thread calling progress, completed and canceled handlers.
//! - `tasks.rs`: what registering, unregistering and requesting mean for the broker.
//! - `writer.rs`: the thread that commits the broker's own store writes, in order.
//! - `instance.rs`: one run (`Instance`), its progress, deferrals and cancellation.
//!
//! Glossary of the broker's queues (fields of [`State`]):
//! - `pending` / `pending_order`: latched fires, at most one per registration, in firing order;
//!   `unpersisted`: those not yet written to the store.
//! - `running`: the live instance of each registration, with its limit and grace deadlines.
//! - `timers` / `due`: the next due time of each timed registration (a set ordered by time, and
//!   its index by task id).
//! - `jobs`: instances waiting for a worker (each with the store writes it waits for);
//!   `idle_workers`: workers waiting for a job; `busy_workers`: workers on a job.
//! - `events`: the pull queue (`System::next_event`): runs and cancellations for a host.
//! - `notes`: calls for the notifier thread (progress, completed, canceled handlers), in order.
//! - `once_fired`: custom-event registrations with recurrence ONCE that fired in this broker run.
//! - `garbage`: values to drop once the lock is released (see [`Locked`]).
//!
//! Threads: one broker thread (timers and deadlines; it sleeps until the next due time or a
//! change, never polls), workers (spawned on demand, at most `max_concurrent` busy with live
//! instances), one notifier thread (calls progress, completed and canceled handlers in order), one
//! writer thread (commits the broker's own store writes, in order; `writer.rs`).
//!
//! Lock order — four locks, always taken in this order, never the reverse, and no app code
//! (run functions, handlers, resolvers) runs while any of them is held:
//! 0. `Broker::store` (the SQLite connection): held across a commit, so never taken under the
//!    state lock — registrations take it first, the broker's own writes go through the writer;
//! 1. `Broker::state` (the mutex of [`State`]: registry and queues);
//! 2. `Broker::handlers` (the `RwLock` of the handler tables);
//! 3. an instance's `life` (`Instance::life`, the mutex of one run's state).
//!
//! The writer's queue and its waiters, and the count of app calls in flight, are leaf locks:
//! nothing is taken while one of them is held.
//!
//! `Broker::platform` is a leaf, held only to take what a worker needs from the platform (the
//! sleep inhibitor's connection, `pool.rs`): the D-Bus call itself waits with no lock held.
//!
//! Dropping a handler can run app code (a Python finalizer, a C `free_user_data`): values that may
//! hold one are never dropped under a lock; [`State::defer_drop`] hands them to the [`Locked`]
//! guard, which drops them right after it releases the state lock.

mod activation;
mod answer;
pub(crate) mod backend;
mod cancel;
mod cgroup;
mod elsewhere;
mod exec;
mod explain;
pub(crate) mod groups;
pub(crate) mod handlers;
pub(crate) mod instance;
mod latch;
mod notify;
mod open;
mod pool;
mod register;
pub(crate) mod registration;
mod retry;
mod servicing;
mod storage;
mod tasks;
pub(crate) mod threads;
mod timers;
mod uninstall;
mod writer;

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use uuid::Uuid;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use crate::model::{CancellationReason, SystemConditionType};
use crate::policy::Policy;
use crate::registry::Registry;
use crate::source::States;
use crate::store::{ScheduleChange, Store};

pub(crate) use backend::Backend;
pub(crate) use cancel::Running;
pub(crate) use exec::stop_orphans;
pub(crate) use handlers::Handlers;
pub use handlers::{CompletedFn, ProgressFn, Resolver};
pub use instance::{CanceledFn, Completion, Deferral, Handler, Instance, RunFn};
pub(crate) use latch::Pending;
pub(crate) use notify::Note;
pub use pool::Event;
pub(crate) use pool::resolve;
pub use registration::Registration;
pub(crate) use retry::recover_cut_off;

/// Everything under the broker's lock.
pub(crate) struct State {
    pub(crate) registry: Registry,
    pending: HashMap<Uuid, Pending>,
    pending_order: BTreeMap<u64, Uuid>,
    unpersisted: Vec<Uuid>,
    fire_seq: u64,
    running: HashMap<Uuid, Running>,
    /// Runs that go on in a client process after the broker that handed them died, by task
    /// (`elsewhere.rs`): their tasks count as running.
    elsewhere: HashMap<Uuid, elsewhere::Elsewhere>,
    /// Ends `btb-elsewhere` (while it runs).
    elsewhere_stop: Option<Arc<std::os::fd::OwnedFd>>,
    timers: BTreeSet<(i64, Uuid)>,
    due: HashMap<Uuid, i64>,
    /// Retries waiting for their delay: `(not before, task)` of pending fires (`retry.rs`).
    retry_timers: BTreeSet<(i64, Uuid)>,
    /// The app process started for background work (`activation.rs`).
    activation: Option<activation::Activation>,
    once_fired: HashSet<Uuid>,
    states: States,
    /// power-profiles-daemon's energy saver is on (`cancel.rs`, ENERGY_SAVER).
    energy_saver: bool,
    /// Runs for the workers, each with the store writes it waits for (`pool::Job`).
    jobs: VecDeque<pool::Job>,
    /// The number of the last schedule write queued (see `writer.rs`).
    schedule_written: u64,
    /// Workers between taking a job and letting go of all it held (`wait_idle` waits for them:
    /// a binding may finish a run before it drops what the run held).
    busy_workers: usize,
    idle_workers: usize,
    notes: VecDeque<Note>,
    notifying: bool,
    events: VecDeque<Event>,
    closing: bool,
    /// The store is released: nothing works any more.
    closed: bool,
    stopping: bool,
    /// Opened paused and not started yet: nothing is dispatched.
    paused: bool,
    /// Once closed: until when `close` waits for the threads (handlers called later are not).
    close_by: Option<Instant>,
    /// When the broker plans to wake next (see `State::wake_broker_by`).
    planned_wake: Option<i64>,
    garbage: Vec<Box<dyn Any + Send>>,
    /// Idle workers to wake once the lock is released (see [`State::wake_worker`]).
    wake_workers: usize,
}

impl State {
    pub(crate) fn new(registry: Registry, paused: bool) -> State {
        State {
            registry,
            pending: HashMap::new(),
            pending_order: BTreeMap::new(),
            unpersisted: Vec::new(),
            fire_seq: 0,
            running: HashMap::new(),
            elsewhere: HashMap::new(),
            elsewhere_stop: None,
            timers: BTreeSet::new(),
            retry_timers: BTreeSet::new(),
            activation: None,
            due: HashMap::new(),
            once_fired: HashSet::new(),
            states: States::default(),
            energy_saver: false,
            jobs: VecDeque::new(),
            schedule_written: 0,
            busy_workers: 0,
            idle_workers: 0,
            notes: VecDeque::new(),
            notifying: false,
            events: VecDeque::new(),
            closing: false,
            closed: false,
            stopping: false,
            paused,
            close_by: None,
            planned_wake: None,
            garbage: Vec::new(),
            wake_workers: 0,
        }
    }

    /// Drops `value` once the state lock is released (by the [`Locked`] guard holding it).
    pub(crate) fn defer_drop(&mut self, value: impl Any + Send) {
        self.garbage.push(Box::new(value));
    }

    /// Wakes an idle worker for a job just queued — once the lock is released (by the
    /// [`Locked`] guard), so that the worker does not wake only to block on the lock still held
    /// by the thread that queued the job: that second sleep and wake-up doubled the latency of a
    /// run's start.
    pub(crate) fn wake_worker(&mut self) {
        self.wake_workers += 1;
    }

    /// When a timed registration is next due (ms since the epoch), as planned now.
    pub(crate) fn next_due(&self, task_id: &Uuid) -> Option<i64> {
        self.due.get(task_id).copied()
    }

    /// The machine's state as the conditions see it.
    pub(crate) fn states(&self) -> &States {
        &self.states
    }

    pub(crate) fn is_open(&self) -> bool {
        !self.closed && !self.closing
    }
}

/// The locked state. Dropping it releases the lock, then drops what was handed to
/// [`State::defer_drop`] meanwhile — so a value that must not be dropped under the lock cannot be
/// forgotten under it.
pub(crate) struct Locked<'a> {
    guard: Option<MutexGuard<'a, State>>,
    /// The workers' condvar, signalled for [`State::wake_worker`] after the unlock.
    work_cv: &'a Condvar,
}

impl Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        self.guard.as_ref().expect("held until dropped")
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.guard.as_mut().expect("held until dropped")
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let (garbage, wake) = match self.guard.as_mut() {
            Some(st) => (
                std::mem::take(&mut st.garbage),
                std::mem::take(&mut st.wake_workers),
            ),
            None => (Vec::new(), 0),
        };
        drop(self.guard.take()); // unlock first
        for _ in 0..wake {
            self.work_cv.notify_one();
        }
        drop(garbage);
    }
}

impl Locked<'_> {
    /// Waits on `cv` (the lock is released while waiting).
    fn wait(mut self, cv: &Condvar) -> Self {
        // Workers owed a wake-up get it now: this thread may wait long.
        for _ in 0..std::mem::take(&mut self.wake_workers) {
            self.work_cv.notify_one();
        }
        let guard = self.guard.take().expect("held until dropped");
        self.guard = Some(cv.wait(guard).unwrap_or_else(PoisonError::into_inner));
        self
    }

    /// Waits on `cv` at most `timeout`.
    fn wait_timeout(mut self, cv: &Condvar, timeout: Duration) -> Self {
        for _ in 0..std::mem::take(&mut self.wake_workers) {
            self.work_cv.notify_one();
        }
        let guard = self.guard.take().expect("held until dropped");
        self.guard = Some(
            cv.wait_timeout(guard, timeout)
                .unwrap_or_else(PoisonError::into_inner)
                .0,
        );
        self
    }
}

/// One open system's broker: its identity, policy and clock, its state, and its threads.
pub(crate) struct Broker {
    pub(crate) pid: u32,
    /// Refuses use in a forked child.
    opener: Opener,
    /// The app id (a serviced manifest keeps it).
    pub(crate) app_id: String,
    /// The manifest, replaced when the app is serviced: read it with `manifest()` (`servicing.rs`).
    manifest: std::sync::RwLock<Arc<Manifest>>,
    pub(crate) clock: Clock,
    pub(crate) simulated: bool,
    pub(crate) policy: Policy,
    pub(crate) store_path: String,
    /// Where client processes keep the run files of runs handed to them (`runfile.rs`).
    pub(crate) run_files: Option<std::path::PathBuf>,
    /// The directory whose file system `STORAGE_NOT_LOW` measures (`platform/storage.rs`).
    storage_dir: std::path::PathBuf,
    /// `STORAGE_NOT_LOW` as last read, off the locks (`storage.rs`).
    storage: storage::Gauge,
    /// Lock 0 of the lock order; `None` once closed.
    store: Mutex<Option<Store>>,
    /// Lock 1 of the lock order.
    state: Mutex<State>,
    /// Commits the broker's own writes (see `writer.rs`).
    writer: writer::Writer,
    /// Threads waiting on `change_cv` (`wait_idle`, `next_event`, `close`): it is signalled only
    /// when there are some — a signal is a system call, and the broker changes state per run.
    waiting: std::sync::atomic::AtomicUsize,
    /// Wakes the broker thread (and times its sleep on the wall clock).
    pub(crate) waker: crate::wake::Waker,
    /// Wakes idle workers.
    work_cv: Condvar,
    /// Wakes the notifier thread.
    notify_cv: Condvar,
    /// Signals any change that `wait_idle`, `next_event` and `close` wait for.
    change_cv: Condvar,
    /// Lock 2 of the lock order.
    pub(crate) handlers: RwLock<Handlers>,
    /// Every thread of this broker, joined by `close` (`threads.rs`).
    threads: Arc<threads::ThreadSet>,
    /// The local time zone of calendar triggers (a leaf lock: re-read when the zone changes).
    tz: RwLock<jiff::tz::TimeZone>,
    /// Where the machine's state comes from (`platform/`).
    pub(crate) platform_options: crate::platform::PlatformOptions,
    /// The running platform sources (none in a simulated system); dropped at close.
    pub(crate) platform: Mutex<Option<crate::platform::Platform>>,
    /// Hears custom events signalled by other processes (file stores only).
    pub(crate) listener: Mutex<Option<crate::control::ControlListener>>,
    /// Why this broker has no control socket (a file store whose socket could not be bound).
    pub(crate) unreachable: std::sync::OnceLock<Error>,
    /// Where progress and completion go for client processes (set once the listener is bound).
    pub(crate) broadcast: std::sync::OnceLock<Arc<crate::control::Broadcast>>,
    /// Called (no lock held) when this process's handlers change: a client that became this
    /// broker wakes the runs it was handed before and that wait for their handler.
    pub(crate) on_handlers: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

/// The process that opened a system: its id and how many forks its memory had gone through
/// ([`btb_os::forks`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Opener {
    pub(crate) pid: u32,
    forks: u64,
}

impl Opener {
    pub(crate) fn this_process() -> Opener {
        Opener {
            pid: std::process::id(),
            forks: btb_os::forks(),
        }
    }

    /// `STATE` in a forked child of the process that opened the system: the parent's threads
    /// and connections do not exist there. Every call checks it, so it compares a fork count
    /// (a load) and reads the process id (a system call) only when the count cannot be kept.
    pub(crate) fn check(&self) -> Result<()> {
        let forked = match self.forks {
            u64::MAX => std::process::id() != self.pid,
            forks => btb_os::forks() != forks,
        };
        if forked {
            let (opener, pid) = (self.pid, std::process::id());
            return Err(Error::state(format!(
                "this btb system was opened by process {opener} and cannot be used in a forked child \
                 (pid {pid}); open a new system in the child"
            )));
        }
        Ok(())
    }
}

/// The error of any call on a closed system.
pub(crate) fn closed() -> Error {
    Error::state(CLOSED)
}

const CLOSED: &str = "the btb system is closed";

/// Whether `e` is [`closed`]'s error (a broker's answer once it began to close).
pub(crate) fn is_closed(e: &Error) -> bool {
    e.kind() == crate::error::ErrorKind::State && e.message() == CLOSED
}

/// Calls into app code (run functions, handlers, resolvers) in progress on btb threads in this
/// process, and the threads waiting for none (told by the condvar, only when there are some: a
/// signal is a system call, and calls end at every run).
static APP_CALLS: Mutex<AppCalls> = Mutex::new(AppCalls {
    calls: 0,
    waiters: 0,
});
static APP_CALLS_DONE: Condvar = Condvar::new();

struct AppCalls {
    calls: usize,
    waiters: usize,
}

/// Counts one call into app code for as long as it lives.
pub(crate) struct AppCall(());

impl AppCall {
    pub(crate) fn enter() -> AppCall {
        APP_CALLS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .calls += 1;
        AppCall(())
    }
}

impl Drop for AppCall {
    fn drop(&mut self) {
        let mut n = APP_CALLS.lock().unwrap_or_else(PoisonError::into_inner);
        n.calls -= 1;
        if n.calls == 0 && n.waiters > 0 {
            APP_CALLS_DONE.notify_all();
        }
    }
}

/// Waits until no btb thread of this process is in app code (a run function, handler or
/// resolver), at most `timeout`; `true` if none is. After `System::close` returns, a run function
/// abandoned after its grace may still be running: an app (or a binding) that must not be unloaded
/// under it waits here.
pub fn wait_app_calls(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut n = APP_CALLS.lock().unwrap_or_else(PoisonError::into_inner);
    while n.calls > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        n.waiters += 1;
        n = APP_CALLS_DONE
            .wait_timeout(n, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        n.waiters -= 1;
    }
    true
}

thread_local! {
    /// Set on btb's own threads (notifier and workers): waits for the system to go idle from one
    /// of them would wait for themselves.
    static ON_BTB_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Broker {
    #[allow(clippy::too_many_arguments)] // one per part of an open system, each named
    pub(crate) fn new(
        manifest: Manifest,
        clock: Clock,
        simulated: bool,
        platform_options: crate::platform::PlatformOptions,
        policy: Policy,
        storage_dir: std::path::PathBuf,
        store: Store,
        state: State,
    ) -> Result<Broker> {
        let storage = storage::Gauge::default();
        if !simulated {
            storage.set(storage::read(&storage_dir, policy.storage_low_percent));
        }
        Ok(Broker {
            store_path: store.path().to_owned(),
            run_files: retry::run_files(&store),
            pid: std::process::id(),
            opener: Opener::this_process(),
            app_id: manifest.app_id().to_owned(),
            manifest: std::sync::RwLock::new(Arc::new(manifest)),
            clock,
            simulated,
            policy,
            storage,
            storage_dir,
            store: Mutex::new(Some(store)),
            state: Mutex::new(state),
            writer: writer::Writer::default(),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            waker: crate::wake::Waker::new()?,
            work_cv: Condvar::new(),
            notify_cv: Condvar::new(),
            change_cv: Condvar::new(),
            handlers: RwLock::new(Handlers::default()),
            threads: Arc::default(),
            tz: RwLock::new(crate::calendar::local_time_zone(
                &platform_options.localtime,
            )),
            platform_options,
            platform: Mutex::new(None),
            listener: Mutex::new(None),
            unreachable: std::sync::OnceLock::new(),
            broadcast: std::sync::OnceLock::new(),
            on_handlers: std::sync::OnceLock::new(),
        })
    }

    /// Whether client processes listen for progress and completion.
    pub(crate) fn has_subscribers(&self) -> bool {
        self.broadcast.get().is_some_and(|b| b.has_subscribers())
    }

    /// The local time zone now.
    pub(crate) fn tz(&self) -> jiff::tz::TimeZone {
        self.tz
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-reads the local time zone (it changed).
    pub(crate) fn reload_time_zone(&self) {
        let tz = crate::calendar::local_time_zone(&self.platform_options.localtime);
        *self.tz.write().unwrap_or_else(PoisonError::into_inner) = tz;
    }

    /// A manual clock moved: handle the new time before `advance` returns (due timers, limits,
    /// grace), so that what follows an advance never depends on when the broker thread runs.
    pub(crate) fn clock_advanced(self: &Arc<Self>) {
        let mut st = self.lock();
        if st.is_open() {
            let now = self.clock.now_ms();
            self.tick(&mut st, now);
        }
        self.waker.wake();
        self.changed();
    }

    /// The store (lock 0): `None` once closed. Never taken under the state lock.
    pub(crate) fn store(&self) -> MutexGuard<'_, Option<Store>> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until the broker's store writes queued so far are committed (read your writes); the
    /// store error while they cannot be. Never call it holding a btb lock.
    pub(crate) fn flush(&self) -> Result<()> {
        self.writer.wait_committed(self.writer.last())
    }

    /// Makes what the caller just did under the state lock durable before it is acknowledged
    /// (SPEC §11): releases the lock, then waits until the writes queued so far are committed
    /// (nothing to wait for with an in-memory store). The store error, if they cannot be.
    pub(crate) fn acknowledge(&self, st: Locked<'_>) -> Result<()> {
        let queued = self.writer.last();
        drop(st);
        self.acknowledge_written(queued)
    }

    /// [`Self::acknowledge`] once the lock is released: waits for the writes queued up to
    /// `queued` (`writer.last()` taken under the lock).
    pub(crate) fn acknowledge_written(&self, queued: u64) -> Result<()> {
        if !self.durable() {
            return Ok(());
        }
        self.writer.wait_committed(queued).map_err(|e| {
            Error::new(
                crate::ErrorKind::Store,
                format!(
                    "taken, but not yet durable: {} (it runs once the store can be written)",
                    e.message()
                ),
            )
        })
    }

    /// The store error while the broker's own writes cannot be committed (SPEC §7: runs are held
    /// and no fire is taken until they can).
    pub(crate) fn store_failure(&self) -> Option<Error> {
        self.writer.failure()
    }

    /// `Ok` while the store takes the broker's writes; else the store error, saying what it means
    /// for the call that asked.
    pub(crate) fn check_writable(&self, what: &str) -> Result<()> {
        match self.writer.failure() {
            None => Ok(()),
            Some(e) => Err(Error::new(
                crate::ErrorKind::Store,
                format!(
                    "{what} was not taken: {} (runs are held until the store can be written again)",
                    e.message()
                ),
            )),
        }
    }

    /// Whether every store write queued so far is committed.
    fn writer_drained(&self) -> bool {
        self.writer.is_done(self.writer.last())
    }

    /// The state of a condition now: reported by the simulated source, or read from the machine
    /// (`platform/`); `None` while unknown.
    pub(crate) fn state_of(&self, st: &State, condition: SystemConditionType) -> Option<bool> {
        if !self.simulated && condition == SystemConditionType::StorageNotLow {
            return self.storage.get();
        }
        st.states.get(condition)
    }

    /// Whether a condition holds now (unknown does not hold).
    pub(crate) fn holds(&self, st: &State, condition: SystemConditionType) -> bool {
        self.state_of(st, condition) == Some(true)
    }

    /// Whether the store outlives the process (a file; not `:memory:`).
    fn durable(&self) -> bool {
        self.store_path != ":memory:"
    }

    /// Signals `change_cv`, if a thread waits on it. Call it holding the state lock (the writer,
    /// which does not, takes it first).
    fn changed(&self) {
        if self.waiting.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            self.change_cv.notify_all();
        }
    }

    /// Counts the calling thread among those waiting on `change_cv` until the guard drops. Take
    /// it holding the state lock, before checking what it waits for.
    fn waiting(&self) -> impl Drop + '_ {
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        self.waiting
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Waiting(&self.waiting)
    }

    /// Read access to the handler tables (lock 2).
    pub(crate) fn handlers(&self) -> std::sync::RwLockReadGuard<'_, Handlers> {
        self.handlers.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Write access to the handler tables (lock 2).
    pub(crate) fn handlers_mut(&self) -> std::sync::RwLockWriteGuard<'_, Handlers> {
        self.handlers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn lock(&self) -> Locked<'_> {
        Locked {
            guard: Some(self.state.lock().unwrap_or_else(PoisonError::into_inner)),
            work_cv: &self.work_cv,
        }
    }

    pub(crate) fn check_pid(&self) -> Result<()> {
        self.opener.check()
    }

    pub(crate) fn open_state(&self) -> Result<Locked<'_>> {
        self.check_pid()?;
        self.lock_open()
    }

    /// Locks the state if the system is open (`STATE` once closed), without the process check
    /// (for callers that made it already).
    pub(crate) fn lock_open(&self) -> Result<Locked<'_>> {
        let st = self.lock();
        if !st.is_open() {
            return Err(closed());
        }
        Ok(st)
    }

    pub(crate) fn start_threads(self: &Arc<Self>) -> Result<()> {
        for (name, body) in [
            ("btb-broker", Self::broker_loop as fn(&Arc<Broker>)),
            ("btb-notifier", Self::notifier_loop as fn(&Arc<Broker>)),
            ("btb-writer", Self::writer_loop as fn(&Arc<Broker>)),
        ] {
            let shared = Arc::clone(self);
            self.threads
                .spawn(name, move || body(&shared))
                .map_err(|e| {
                    Error::new(
                        crate::ErrorKind::Internal,
                        format!("cannot start the {name} thread: {e}"),
                    )
                })?;
        }
        Ok(())
    }

    /// Starts the platform sources (SPEC §6). What they report reaches `heard`; a source that
    /// cannot start is logged and its states read unknown.
    pub(crate) fn start_platform(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let sink: crate::platform::Sink = Arc::new(move |heard| {
            let Some(broker) = weak.upgrade() else { return };
            // Read off the state lock (a file read): the zone the broker re-plans with.
            if heard == crate::platform::Heard::TimeZoneChanged {
                broker.reload_time_zone();
            }
            if let Ok(mut st) = broker.open_state() {
                broker.heard(&mut st, heard);
            }
        });
        match crate::platform::Platform::open(&self.platform_options, sink) {
            Ok(p) => *self.platform.lock().unwrap_or_else(|p| p.into_inner()) = Some(p),
            Err(e) => crate::platform::unavailable("the platform sources", e),
        }
    }

    /// Queues scheduling changes for the writer (committed in order, off the state lock).
    pub(crate) fn commit(&self, st: &mut State, changes: Vec<ScheduleChange>) {
        if !changes.is_empty() {
            st.schedule_written = self.writer.enqueue(writer::Write::Schedule(changes));
        }
    }

    pub(super) fn broker_loop(self: &Arc<Self>) {
        let mut jumped = false;
        loop {
            self.refresh_storage(); // off the lock: a statvfs may block
            let mut st = self.lock();
            if st.stopping {
                return;
            }
            let now = self.clock.now_ms();
            if jumped {
                self.replan_calendars(&mut st, now, false);
            }
            let next = self.tick(&mut st, now);
            st.planned_wake = match &self.clock {
                Clock::Manual(_) => Some(i64::MIN), // woken by `advance`: no deadline needs a wake
                Clock::Real => next,
            };
            self.changed();
            drop(st);
            // A wake between the unlock and the wait is kept by the eventfd, never lost.
            let until = match &self.clock {
                Clock::Manual(_) => None, // manual time moves only by `advance`, which wakes us
                Clock::Real => next,
            };
            jumped = self.waker.wait(until) == crate::wake::Woke::ClockJump;
        }
    }

    pub(super) fn is_idle(&self, st: &State, now: i64) -> bool {
        st.running.is_empty()
            && st.elsewhere.is_empty()
            && st.busy_workers == 0
            && st.jobs.is_empty()
            && st.notes.is_empty()
            && !st.notifying
            && st.events.is_empty()
            && st
                .timers
                .first()
                .is_none_or(|(due, _)| due + self.window_ms() > now)
            && self.writer_drained()
    }

    pub(crate) fn wait_idle(&self, timeout: Duration) -> Result<bool> {
        if ON_BTB_THREAD.with(|f| f.get()) {
            return Err(Error::state(
                "wait_idle cannot be called from a btb handler (it would wait for itself)",
            ));
        }
        let deadline = Instant::now() + timeout;
        let mut st = self.open_state()?;
        let _waiting = self.waiting();
        loop {
            if self.is_idle(&st, self.clock.now_ms()) {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // Not idle in time: because the store cannot be written (the held work waits
                // for it), say so rather than only "not yet".
                return match self.store_failure() {
                    Some(e) => Err(e),
                    None => Ok(false),
                };
            }
            st = st.wait_timeout(&self.change_cv, left);
            if st.closed {
                return Err(closed());
            }
        }
    }

    pub(crate) fn next_event(&self, timeout: Duration) -> Result<Option<Event>> {
        let deadline = Instant::now() + timeout;
        let mut st = self.open_state()?;
        let _waiting = self.waiting();
        loop {
            if let Some(e) = st.events.pop_front() {
                self.changed();
                return Ok(Some(e));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || st.closed {
                return Ok(None);
            }
            st = st.wait_timeout(&self.change_cv, left);
        }
    }

    /// Waits (real time, at most until `deadline`) until `done` and the handlers of what ended
    /// are called; not at all on a btb thread (a handler closing its own system).
    fn wait_closing<'a>(
        &'a self,
        mut st: Locked<'a>,
        deadline: Instant,
        done: impl Fn(&State) -> bool,
    ) -> Locked<'a> {
        let _waiting = self.waiting();
        while !(done(&st) && st.notes.is_empty() && !st.notifying) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || ON_BTB_THREAD.with(|f| f.get()) {
                break;
            }
            st = st.wait_timeout(&self.change_cv, left);
        }
        st
    }

    pub(crate) fn close(self: &Arc<Self>) -> Result<()> {
        self.check_pid()?;
        let grace = Duration::from_millis(u64::from(self.policy.grace_ms));
        let deadline = Instant::now() + grace;
        let mut st = self.lock();
        if !st.is_open() {
            return Ok(());
        }
        st.closing = true;
        let now = self.clock.now_ms();
        let running: Vec<Uuid> = st.running.keys().copied().collect();
        for id in running {
            self.cancel_task(&mut st, &id, CancellationReason::Terminating, now);
        }
        // The app started for background work ends with its broker (SIGKILL below if need be).
        if let Some(a) = &st.activation {
            a.signal(rustix::process::Signal::TERM);
        }
        // Wait (real time) for running instances to end and handlers to be called.
        st = self.wait_closing(st, deadline, |st| st.running.is_empty());
        // Host processes still running: SIGTERM, and SIGKILL after a second grace, as after a
        // time limit (`timers.rs`); their workers record their runs, with their output.
        for signal in [rustix::process::Signal::TERM, rustix::process::Signal::KILL] {
            let hosts: Vec<Instance> = st
                .running
                .values()
                .filter(|r| {
                    r.instance
                        .life()
                        .child
                        .as_ref()
                        .is_some_and(|c| c.is_process())
                })
                .map(|r| r.instance.clone())
                .collect();
            if hosts.is_empty() || ON_BTB_THREAD.with(|f| f.get()) {
                break;
            }
            for instance in &hosts {
                if let Some(child) = &instance.life().child {
                    child.signal(signal);
                }
            }
            // A killed host ends at once; the bound covers one stuck in the kernel.
            st = self.wait_closing(st, Instant::now() + grace, |st| {
                !hosts.iter().any(|i| {
                    st.running
                        .get(&i.task().task_id())
                        .is_some_and(|r| r.instance == *i)
                })
            });
        }
        if let Some(a) = &st.activation {
            a.signal(rustix::process::Signal::KILL);
        }
        let stuck: Vec<Instance> = st.running.values().map(|r| r.instance.clone()).collect();
        for instance in stuck {
            self.finish(&mut st, &instance, Some(CancellationReason::Terminating));
        }
        st.stopping = true;
        st.stop_elsewhere();
        st.closed = true;
        // The margin counts from here: what the stuck runs' ends just queued is still delivered.
        let st_close_by = Instant::now().max(deadline) + CLOSE_MARGIN;
        st.close_by = Some(st_close_by);
        st.jobs.clear();
        self.waker.wake();
        self.work_cv.notify_all();
        self.notify_cv.notify_all();
        self.changed();
        drop(st);
        self.writer.stop(); // commits what is queued (the runs just abandoned), then ends
        let listener = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(listener);
        let platform = self
            .platform
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(platform);
        // Every thread ends now, but one still inside app code past the grace (a run function
        // that ignores its cancellation, a handler that blocks): that one is abandoned, named.
        let abandoned = self.threads.join_until(st_close_by);
        if !abandoned.is_empty() {
            log::warn!(
                target: "btb",
                "closed without waiting for {} thread(s) still in app code past the grace ({}): {}",
                abandoned.len(),
                self.app_id.as_str(),
                abandoned.join(", ")
            );
        }
        // The writer has committed everything and ended: release the store (and its lock).
        drop(self.store().take());
        // Drop handlers (they may hold references back to this system) outside every lock.
        let handlers =
            std::mem::take(&mut *self.handlers.write().unwrap_or_else(|p| p.into_inner()));
        drop(handlers);
        Ok(())
    }
}

/// How long `close` waits, past the grace, for the broker's threads to end before it abandons
/// those still in app code.
pub(crate) const CLOSE_MARGIN: Duration = Duration::from_secs(1);

pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
