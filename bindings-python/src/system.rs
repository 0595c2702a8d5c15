//! `btb.System`, `btb.BackgroundTaskRegistration`, `btb.BackgroundTaskRegistrationGroup` and the
//! default system.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use btb_core::{
    Clock, StoreLocation, SystemConditionType, SystemOptions, SystemTriggerType, TaskGroup, Trigger,
};
use pyo3::PyTraverseError;
use pyo3::exceptions::PyTypeError;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyDict, PyList, PyString, PyTuple};
use uuid::Uuid;

use crate::convert::{datetime_from_ms, member, opt_utf8, py_repr, uint, utf8};
use crate::errors::{OrRaise, invalid};
use crate::manifest::Manifest;
use crate::policy::{ManualClock, Policy};
use crate::runtime::{
    RunRecord, Slot, WeakSystem, check_target, completed_handler, group_run_fn, progress_handler,
    request_in_executor, resolver, run_handler, weak_system,
};
use crate::trigger::{IBackgroundTrigger, SystemCondition};

/// Locks a mutex without holding the interpreter while waiting: another thread may hold it
/// while detached.
pub(crate) fn lock<'a, T>(py: Python<'_>, mutex: &'a Mutex<T>) -> MutexGuard<'a, T> {
    use pyo3::sync::MutexExt;
    mutex
        .lock_py_attached(py)
        .unwrap_or_else(PoisonError::into_inner)
}

/// For `__traverse__`/`__clear__`, which must not block: a contended lock is skipped (not visiting
/// is conservative: the garbage collector then keeps the objects).
pub(crate) fn try_lock<T>(mutex: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match mutex.try_lock() {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum EventKind {
    Progress,
    Completed,
}

/// A progress or completed handler, by its core token.
struct EventEntry {
    kind: EventKind,
    task_id: Uuid,
    slot: Arc<Slot>,
}

/// Every Python callable this system handed to the core, where the garbage collector sees it (see
/// `runtime.rs`). The core's closures hold the same slots.
#[derive(Default)]
struct Registry {
    /// The system's background-activated handler.
    system: Option<Arc<Slot>>,
    entry_points: HashMap<String, Arc<Slot>>,
    events: HashMap<u64, EventEntry>,
    /// The tokens in `events` of each registration.
    events_by_task: HashMap<Uuid, Vec<u64>>,
    /// `events` is pruned when it grows to this size (amortized O(1) per handler added).
    prune_at: usize,
}

impl Registry {
    fn slots(&self) -> impl Iterator<Item = &Arc<Slot>> {
        self.system
            .iter()
            .chain(self.entry_points.values())
            .chain(self.events.values().map(|e| &e.slot))
    }

    fn insert_event(&mut self, token: u64, entry: EventEntry) {
        self.events_by_task
            .entry(entry.task_id)
            .or_default()
            .push(token);
        self.events.insert(token, entry);
    }

    fn remove_event(&mut self, token: u64) -> Option<EventEntry> {
        let entry = self.events.remove(&token)?;
        if let Some(tokens) = self.events_by_task.get_mut(&entry.task_id) {
            tokens.retain(|t| *t != token);
            if tokens.is_empty() {
                self.events_by_task.remove(&entry.task_id);
            }
        }
        Some(entry)
    }

    /// Takes out the progress and completed handlers the core no longer holds (`held` asks it:
    /// their registration was unregistered or replaced, and its last run ended), of one
    /// registration or of all; the caller drops them with no lock held.
    fn prune(&mut self, task_id: Option<Uuid>, held: impl Fn(u64) -> bool) -> Vec<EventEntry> {
        let candidates: Vec<u64> = match task_id {
            Some(id) => self.events_by_task.get(&id).cloned().unwrap_or_default(),
            None => self.events.keys().copied().collect(),
        };
        let dead: Vec<u64> = candidates
            .into_iter()
            .filter(|t| self.events.contains_key(t) && !held(*t))
            .collect();
        if task_id.is_none() {
            self.prune_at = (2 * (self.events.len() - dead.len())).max(64);
        }
        dead.into_iter()
            .filter_map(|t| self.remove_event(t))
            .collect()
    }
}

/// Where a system's coroutines run (`btb._aio`).
enum EventLoop {
    /// None yet: btb starts its own at the first coroutine.
    Unset,
    /// An `AppLoop` (the app's, bound by `async with`) or an `OwnLoop` (btb's).
    Set(Py<PyAny>),
    /// The system closed: a coroutine still delivered runs on a loop of its own.
    Closed,
}

/// One broker: app identity and manifest, store, clock and policy. A context manager, also
/// `async with`.
#[pyclass(frozen, weakref, module = "btb")]
pub struct System {
    /// `None` only while the object is being dropped.
    core: Option<btb_core::System>,
    registry: Mutex<Registry>,
    /// A weak reference to this object, for the closures handed to the core.
    me: OnceLock<WeakSystem>,
    /// Whether this object owns its system (made by `btb.System` or as the default system), or is
    /// a view of one whose object is gone.
    owner: bool,
    event_loop: Mutex<EventLoop>,
}

impl Drop for System {
    fn drop(&mut self) {
        // The last handle of an open system closes it, which waits for running tasks and joins
        // btb threads that may be waiting for the interpreter: drop it detached.
        let mut core = self.core.take();
        if core.as_ref().is_some_and(|c| !c.is_closed()) {
            Python::try_attach(|py| py.detach(|| drop(core.take())));
        }
        drop(core);
        let event_loop = std::mem::replace(
            self.event_loop
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
            EventLoop::Closed,
        );
        if let EventLoop::Set(event_loop) = event_loop {
            Python::try_attach(|py| close_event_loop(py, event_loop));
        }
    }
}

/// Stops btb's own loop and joins its thread (nothing for the app's loop).
fn close_event_loop(py: Python<'_>, event_loop: Py<PyAny>) {
    if let Err(err) = event_loop.bind(py).call_method0("close") {
        crate::runtime::log_error(py, "cannot close btb's event loop", Some(&err));
    }
}

/// The `System` objects that own their systems, so that a handler serving every system (a task
/// group's) finds the object of the system it runs in.
static OWNERS: Mutex<Vec<WeakSystem>> = Mutex::new(Vec::new());

/// Set once Ctrl-C (`KeyboardInterrupt`) interrupted a wait or a close in this process: a close
/// then says what it waits for, the exit hook does not wait a second grace, and the next Ctrl-C
/// during a close exits at once.
static CTRL_C: AtomicBool = AtomicBool::new(false);

/// `btb._btb._interrupted(mark=False)`: whether Ctrl-C interrupted btb in this process; `mark`
/// records that it did (the exit hook, after an unhandled `KeyboardInterrupt`).
#[pyfunction]
#[pyo3(signature = (mark = false))]
pub(crate) fn _interrupted(mark: bool) -> bool {
    if mark {
        CTRL_C.store(true, Ordering::SeqCst);
    }
    CTRL_C.load(Ordering::SeqCst)
}

/// `btb._btb._ctrl_c_while_closing(system)`: Ctrl-C while `system` closes, heard by the SIGINT
/// handler of `btb._aio.AppLoop` (under asyncio the close waits on an executor's thread, where no
/// signal is heard). The first says what the close waits for (as one heard on the main thread
/// does: the Ctrl-C may land after the close began, when no announcement was made yet); a second
/// says what is left behind and ends the process at once.
#[pyfunction]
pub(crate) fn _ctrl_c_while_closing(system: &Bound<'_, System>) -> PyResult<()> {
    let core = system.get().core();
    if CTRL_C.swap(true, Ordering::SeqCst) {
        exit_at_once(system.py(), core)
    }
    announce_wait(system.py(), core)
}

fn is_keyboard_interrupt(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py)
}

/// Whether the calling thread is Python's main thread (where signal handlers run).
fn on_main_thread(py: Python<'_>) -> PyResult<bool> {
    let threading = py.import("threading")?;
    Ok(threading
        .call_method0("current_thread")?
        .is(&threading.call_method0("main_thread")?))
}

impl System {
    pub(crate) fn core(&self) -> &btb_core::System {
        self.core
            .as_ref()
            .expect("a btb.System holds its core system until dropped")
    }

    /// Wraps an open core system, sets the import-path resolver, and hands the system to the
    /// package's exit hook (`btb._OPEN_SYSTEMS`).
    fn wrap(py: Python<'_>, core: btb_core::System) -> PyResult<Py<System>> {
        let system = Py::new(
            py,
            System {
                core: Some(core),
                registry: Mutex::default(),
                me: OnceLock::new(),
                owner: true,
                event_loop: Mutex::new(EventLoop::Unset),
            },
        )?;
        let weak = System::weak(system.bind(py))?;
        {
            let mut owners = lock(py, &OWNERS);
            owners.retain(|w| w.bind(py).upgrade().is_some());
            owners.push(Arc::clone(&weak));
        }
        let core = system.get().core();
        py.detach(|| core.set_entry_point_resolver(Some(resolver(weak))))
            .or_raise()?;
        py.import("btb")?
            .getattr("_OPEN_SYSTEMS")?
            .call_method1("add", (system.clone_ref(py),))?;
        Ok(system)
    }

    /// A `System` object for a core system whose own object is gone (handlers still being
    /// delivered while it closes): it does not own the system, set the resolver or join the exit
    /// hook.
    pub(crate) fn view(py: Python<'_>, core: btb_core::System) -> PyResult<Py<System>> {
        Py::new(
            py,
            System {
                core: Some(core),
                registry: Mutex::default(),
                me: OnceLock::new(),
                owner: false,
                event_loop: Mutex::new(EventLoop::Unset),
            },
        )
    }

    /// The open `System` object that owns `core`, if any.
    pub(crate) fn owner_of(py: Python<'_>, core: &btb_core::System) -> Option<Py<System>> {
        let owners: Vec<WeakSystem> = lock(py, &OWNERS).iter().map(Arc::clone).collect();
        owners.iter().find_map(|weak| {
            let system = weak.bind(py).upgrade_as::<System>().ok().flatten()?;
            (system.get().core() == core).then(|| system.unbind())
        })
    }

    /// Where this system's coroutines run: the loop bound by `async with`, else btb's own, started
    /// now if need be. `None` for a view or a closed system (a coroutine delivered then runs on a
    /// loop of its own).
    pub(crate) fn event_loop(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
        let py = slf.py();
        let this = slf.get();
        if !this.owner {
            return Ok(None);
        }
        let mut event_loop = lock(py, &this.event_loop);
        match &*event_loop {
            EventLoop::Set(l) => return Ok(Some(l.clone_ref(py))),
            EventLoop::Closed => return Ok(None),
            EventLoop::Unset => {}
        }
        let own = crate::aio::aio(py)?
            .getattr("OwnLoop")?
            .call1((this.core().app_id(),))?
            .unbind();
        *event_loop = EventLoop::Set(own.clone_ref(py));
        Ok(Some(own))
    }

    /// Whether the calling thread runs this system's event loop (the app's, bound by `async
    /// with`, or btb's own, in one of its coroutines): a blocking wait there would stop the
    /// coroutines it waits for.
    fn on_own_event_loop(&self, py: Python<'_>) -> PyResult<bool> {
        let event_loop = match &*lock(py, &self.event_loop) {
            EventLoop::Set(l) => l.clone_ref(py),
            _ => return Ok(false),
        };
        let running = py.import("asyncio")?.call_method0("_get_running_loop")?;
        Ok(running.is(&event_loop.bind(py).getattr("loop")?))
    }

    fn refuse_on_bound_loop(&self, py: Python<'_>, what: &str) -> PyResult<()> {
        if self.on_own_event_loop(py)? {
            return Err(crate::errors::raise(btb_core::Error::state(format!(
                "{what} would block the event loop that runs this system's coroutines, and so \
                 wait for itself: use `await system.{what}_async(timeout)`"
            ))));
        }
        Ok(())
    }

    /// Closes the core system. On Python's main thread Ctrl-C is heard while it waits
    /// ([`close_hearing_ctrl_c`]). After a Ctrl-C (on any thread: `aclose` closes on an
    /// executor's), it says what it waits for and what it left behind.
    fn close_core(&self, py: Python<'_>) -> PyResult<()> {
        let core = self.core();
        if py.detach(|| core.is_closed()) {
            return Ok(());
        }
        let mut interrupt: Option<PyErr> = None;
        if CTRL_C.load(Ordering::SeqCst)
            && let Err(err) = announce_wait(py, core)
        {
            heard(py, core, err, &mut interrupt);
        }
        // Off the main thread no signal is heard here: `aclose` under asyncio, whose SIGINT
        // handler (`btb._aio.AppLoop`) hears the second Ctrl-C instead.
        let closed = if on_main_thread(py)? {
            close_hearing_ctrl_c(py, core, &mut interrupt)?
        } else {
            py.detach(|| core.close())
        };
        if CTRL_C.load(Ordering::SeqCst) {
            let left = crate::aio::Going::of(core);
            if !left.is_empty() {
                let said = crate::runtime::warn(
                    py,
                    &format!(
                        "Ctrl-C: waited the grace period ({} s) for {}: it ignored its \
                         cancellation; closed without it",
                        seconds(core.policy().grace_ms),
                        left.join(", ")
                    ),
                );
                if let Err(err) = said {
                    interrupt.get_or_insert(err);
                }
            }
        }
        closed.or_raise()?;
        match interrupt {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    pub(crate) fn weak(slf: &Bound<'_, Self>) -> PyResult<WeakSystem> {
        let me = &slf.get().me;
        if let Some(weak) = me.get() {
            return Ok(Arc::clone(weak));
        }
        let weak = weak_system(slf)?;
        Ok(Arc::clone(me.get_or_init(|| weak)))
    }

    fn registrations<'py>(
        slf: &Bound<'py, Self>,
        list: Vec<btb_core::Registration>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(slf.py());
        for registration in list {
            dict.set_item(
                registration.task_id(),
                BackgroundTaskRegistration::new(registration, slf.clone().unbind()),
            )?;
        }
        Ok(dict)
    }

    fn group_tasks<'py>(slf: &Bound<'py, Self>, group_id: &str) -> PyResult<Bound<'py, PyDict>> {
        let core = slf.get().core();
        let list = slf.py().detach(|| core.group_tasks(group_id)).or_raise()?;
        Self::registrations(slf, list)
    }

    /// Adds a progress or completed handler of one registration; returns the core's token.
    fn add_event_handler(
        slf: &Bound<'_, Self>,
        registration: &btb_core::Registration,
        kind: EventKind,
        handler: Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        let py = slf.py();
        let what = match kind {
            EventKind::Progress => "progress",
            EventKind::Completed => "completed",
        };
        if !handler.is_callable() {
            return Err(PyTypeError::new_err(format!(
                "a {what} handler must be callable, not {}",
                handler.get_type().name()?
            )));
        }
        let weak = System::weak(slf)?;
        let slot = Slot::new(handler.unbind());
        let token = match kind {
            EventKind::Progress => {
                let f = progress_handler(Arc::clone(&slot), weak);
                py.detach(|| registration.add_progress(f))
            }
            EventKind::Completed => {
                let f = completed_handler(Arc::clone(&slot), weak);
                py.detach(|| registration.add_completed(f))
            }
        }
        .or_raise()?;
        let pruned = {
            let mut registry = lock(py, &slf.get().registry);
            let pruned = if registry.events.len() >= registry.prune_at {
                let core = slf.get().core();
                registry.prune(None, |t| core.holds_handler(t))
            } else {
                Vec::new()
            };
            registry.insert_event(
                token,
                EventEntry {
                    kind,
                    task_id: registration.task_id(),
                    slot,
                },
            );
            pruned
        };
        drop(pruned);
        Ok(token)
    }

    /// Removes a handler added by [`System::add_event_handler`] for that registration and kind;
    /// other tokens are ignored.
    fn remove_event_handler(
        &self,
        py: Python<'_>,
        registration: &btb_core::Registration,
        kind: EventKind,
        token: u64,
    ) {
        let removed = {
            let mut registry = lock(py, &self.registry);
            match registry.events.get(&token) {
                Some(e) if e.kind == kind && e.task_id == registration.task_id() => {
                    registry.remove_event(token)
                }
                _ => None,
            }
        };
        if removed.is_some() {
            py.detach(|| registration.remove_handler(token));
        }
        drop(removed);
    }

    /// Releases every handler the core no longer holds (after a `REPLACE` registration).
    pub(crate) fn prune_all(&self, py: Python<'_>) {
        let core = self.core();
        let pruned = lock(py, &self.registry).prune(None, |t| core.holds_handler(t));
        drop(pruned);
    }

    /// Releases the handlers of a registration the core no longer holds (after `unregister`).
    fn prune_task(&self, py: Python<'_>, task_id: Uuid) {
        let core = self.core();
        let pruned = lock(py, &self.registry).prune(Some(task_id), |t| core.holds_handler(t));
        drop(pruned);
    }
}

fn seconds(ms: u32) -> String {
    format!("{}", f64::from(ms) / 1000.0)
}

/// An exception raised while a close waits (by a signal handler, or while btb logs): Ctrl-C a
/// second time exits at once; the first Ctrl-C, or anything else, is raised once the close is
/// done.
fn heard(py: Python<'_>, core: &btb_core::System, err: PyErr, interrupt: &mut Option<PyErr>) {
    if is_keyboard_interrupt(py, &err) {
        if CTRL_C.swap(true, Ordering::SeqCst) {
            exit_at_once(py, core);
        }
        if let Err(again) = announce_wait(py, core) {
            heard(py, core, again, interrupt);
        }
    }
    interrupt.get_or_insert(err);
}

/// Closes `core` on a thread of its own (`btb-close`, joined here) so that the calling main
/// thread hears Ctrl-C while it waits: the first Ctrl-C is kept in `interrupt`, to be raised
/// once the close is done (after at most the grace); a second one exits the process at once.
fn close_hearing_ctrl_c(
    py: Python<'_>,
    core: &btb_core::System,
    interrupt: &mut Option<PyErr>,
) -> PyResult<btb_core::Result<()>> {
    let answer: Mutex<Option<btb_core::Result<()>>> = Mutex::new(None);
    let answered = Condvar::new();
    std::thread::scope(|scope| -> PyResult<btb_core::Result<()>> {
        let spawned = std::thread::Builder::new()
            .name("btb-close".into())
            .spawn_scoped(scope, || {
                let result = core.close();
                *answer.lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
                answered.notify_all();
            });
        if spawned.is_err() {
            return Ok(py.detach(|| core.close()));
        }
        loop {
            let result = py.detach(|| {
                let guard = answer.lock().unwrap_or_else(PoisonError::into_inner);
                let (mut guard, _) = answered
                    .wait_timeout_while(guard, WAIT_SLICE, |a| a.is_none())
                    .unwrap_or_else(PoisonError::into_inner);
                guard.take()
            });
            if let Some(result) = result {
                return Ok(result);
            }
            if let Err(err) = py.check_signals() {
                heard(py, core, err, interrupt);
            }
        }
    })
}

/// After Ctrl-C: says which runs a close waits for, and for how long.
fn announce_wait(py: Python<'_>, core: &btb_core::System) -> PyResult<()> {
    let going = crate::aio::Going::of(core);
    if going.is_empty() {
        return Ok(());
    }
    crate::runtime::warn(
        py,
        &format!(
            "Ctrl-C: closing {}: waiting up to the grace period ({} s) for {} to end after its \
             cancellation (TERMINATING); Ctrl-C again exits at once",
            core.app_id(),
            seconds(core.policy().grace_ms),
            going.join(", ")
        ),
    )
}

/// A second Ctrl-C while a close waits: says what is left behind, and ends the process at once
/// by SIGINT, as an unhandled `KeyboardInterrupt` does (exit status 130 in a shell). What ran
/// is found at the next open as runs with no end (SPEC §11).
fn exit_at_once(py: Python<'_>, core: &btb_core::System) -> ! {
    let going = crate::aio::Going::of(core);
    let what = if going.is_empty() {
        String::new()
    } else {
        format!(", without waiting for {}", going.join(", "))
    };
    // Whatever happens while this is said, the process exits.
    let _ = crate::runtime::warn(py, &format!("Ctrl-C again: exiting at once{what}"));
    let killed = (|| -> PyResult<()> {
        let signal = py.import("signal")?;
        let sigint = signal.getattr("SIGINT")?;
        signal.call_method1("signal", (&sigint, signal.getattr("SIG_DFL")?))?;
        let os = py.import("os")?;
        os.call_method1("kill", (os.call_method0("getpid")?, &sigint))?;
        Ok(())
    })();
    if let Err(err) = killed {
        err.print(py);
    }
    // SIGINT with its default action ends the process before `kill` returns; should it not:
    std::process::exit(130)
}

/// `None` → the per-app default file; `":memory:"` → ephemeral; any other str or path → that file.
fn store_location(store: Option<&Bound<'_, PyAny>>) -> PyResult<StoreLocation> {
    let Some(store) = store else {
        return Ok(StoreLocation::Default);
    };
    if let Ok(text) = store.cast::<PyString>() {
        return Ok(StoreLocation::parse(&utf8(text, "store path")?));
    }
    Ok(StoreLocation::File(store.extract::<PathBuf>()?))
}

fn condition_of(value: &Bound<'_, PyAny>) -> PyResult<SystemConditionType> {
    SystemConditionType::from_u32(uint(value, "system condition type")?).or_raise()
}

/// How long one detached wait lasts before `wait_idle` checks for signals (Ctrl-C).
const WAIT_SLICE: Duration = Duration::from_millis(50);

/// Waits up to `timeout` seconds for `wait` (a core wait given at most one slice) to say `true`,
/// without the GIL, checking for signals between slices so that Ctrl-C interrupts it.
fn wait_in_slices(
    py: Python<'_>,
    timeout: f64,
    what: &str,
    wait: impl Fn(Duration) -> btb_core::Result<bool> + Sync,
) -> PyResult<bool> {
    if !timeout.is_finite() || timeout < 0.0 {
        return Err(invalid(format!(
            "{what} timeout {timeout} is not a number of seconds >= 0"
        )));
    }
    let deadline = Instant::now() + Duration::from_secs_f64(timeout.min(1.0e9));
    loop {
        let slice = deadline
            .saturating_duration_since(Instant::now())
            .min(WAIT_SLICE);
        if py.detach(|| wait(slice)).or_raise()? {
            return Ok(true);
        }
        if let Err(err) = py.check_signals() {
            if is_keyboard_interrupt(py, &err) {
                CTRL_C.store(true, Ordering::SeqCst);
            }
            return Err(err);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
    }
}

#[pymethods]
impl System {
    #[new]
    #[pyo3(signature = (manifest, store = None, *, clock = None, simulated = false, policy = None, start = true, power_supply_root = None, localtime = None))]
    #[expect(clippy::too_many_arguments, reason = "Python keyword arguments")]
    fn new(
        py: Python<'_>,
        manifest: &Bound<'_, Manifest>,
        store: Option<&Bound<'_, PyAny>>,
        clock: Option<&Bound<'_, ManualClock>>,
        simulated: bool,
        policy: Option<&Bound<'_, Policy>>,
        start: bool,
        power_supply_root: Option<PathBuf>,
        localtime: Option<PathBuf>,
    ) -> PyResult<Py<Self>> {
        let defaults = btb_core::PlatformOptions::default();
        let platform = btb_core::PlatformOptions {
            power_supply_root: power_supply_root.unwrap_or(defaults.power_supply_root),
            localtime: localtime.unwrap_or(defaults.localtime),
            ..defaults
        };
        // Opened paused so that the import-path resolver is in place before anything due at open
        // (catch-up of missed time, latched fires) runs; `start=False` leaves it paused until
        // `start()`, for handlers registered in code.
        let options = SystemOptions {
            manifest: Some(manifest.get().inner.clone()),
            store: store_location(store)?,
            clock: clock.map_or(Clock::Real, |c| Clock::Manual(c.get().inner.clone())),
            simulated,
            policy: policy.map(|p| p.get().inner.clone()).unwrap_or_default(),
            paused: true,
            platform,
        };
        let core = py.detach(|| btb_core::System::open(options)).or_raise()?;
        let system = System::wrap(py, core)?;
        if start {
            let core = system.get().core();
            py.detach(|| core.start()).or_raise()?;
        }
        Ok(system)
    }

    /// Starts a system opened with `start=False`: what latched meanwhile runs now.
    fn start(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.core().start()).or_raise()
    }

    /// Closes the system: running tasks are canceled with `TERMINATING` and get the policy's grace
    /// to finish, then the store is released and btb's event loop stopped. Closing twice is
    /// harmless. Ctrl-C while it waits: see SPEC §9 (one grace, then a second Ctrl-C exits).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let closed = self.close_core(py);
        let event_loop = std::mem::replace(&mut *lock(py, &self.event_loop), EventLoop::Closed);
        if let EventLoop::Set(event_loop) = event_loop {
            close_event_loop(py, event_loop);
        }
        let released = std::mem::take(&mut *lock(py, &self.registry));
        drop(released);
        closed
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (exc_type = None, *_exc_info))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<&Bound<'_, PyAny>>,
        _exc_info: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let interrupted = exc_type.is_some_and(|t| {
            t.cast::<pyo3::types::PyType>().is_ok_and(|t| {
                t.is_subclass_of::<pyo3::exceptions::PyKeyboardInterrupt>()
                    .unwrap_or(false)
            })
        });
        if interrupted {
            CTRL_C.store(true, Ordering::SeqCst);
        }
        self.close(py)?;
        Ok(false)
    }

    /// `async with btb.System(...) as system`: the system's `async def` run functions and
    /// handlers run on the running loop (else on a loop btb owns, on a thread of its own).
    /// `StateError` if its coroutines already run on another loop. On the main thread, Ctrl-C
    /// is heard until `aclose` (`btb._aio.AppLoop`, SPEC §9.1).
    fn __aenter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let aio = crate::aio::aio(py)?;
        let running = py.import("asyncio")?.call_method0("get_running_loop")?;
        let mut event_loop = lock(py, &slf.get().event_loop);
        match &*event_loop {
            EventLoop::Unset => {
                let app = aio.getattr("AppLoop")?.call1((&running, slf))?;
                *event_loop = EventLoop::Set(app.unbind());
            }
            EventLoop::Set(l) if l.bind(py).getattr("loop")?.is(&running) => {}
            EventLoop::Set(_) => {
                return Err(crate::errors::raise(btb_core::Error::state(
                    "this system already runs coroutines on another event loop: open it with \
                     `async with` before anything runs",
                )));
            }
            EventLoop::Closed => {
                return Err(crate::errors::raise(btb_core::Error::state(
                    "the btb system is closed",
                )));
            }
        }
        drop(event_loop);
        aio.call_method1("returning", (slf,))
    }

    #[pyo3(signature = (*_exc_info))]
    fn __aexit__<'py>(
        slf: &Bound<'py, Self>,
        _exc_info: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Self::aclose(slf)
    }

    /// `await system.aclose()`: `close` on the loop's default executor, so that the loop keeps
    /// running the coroutines that the close cancels and waits for (`btb._aio.aclose`).
    fn aclose<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let event_loop = match &*lock(py, &slf.get().event_loop) {
            EventLoop::Set(event_loop) => Some(event_loop.clone_ref(py)),
            _ => None,
        };
        crate::aio::aio(py)?.call_method1("aclose", (slf, event_loop))
    }

    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        py.detach(|| self.core().is_closed())
    }

    #[getter]
    fn app_id(&self) -> &str {
        self.core().app_id()
    }

    /// Whether this system runs its store's broker (`False`: a client of another process's
    /// broker, through which every call goes; SPEC §10).
    #[getter]
    fn is_broker(&self) -> bool {
        self.core().is_broker()
    }

    /// The process id of the broker this system uses (this process's own when `is_broker`).
    #[getter]
    fn broker_pid(&self) -> u32 {
        self.core().broker_pid()
    }

    /// The store's path (`":memory:"` for an ephemeral store).
    #[getter]
    fn store_path(&self) -> &str {
        self.core().store_path()
    }

    #[getter]
    fn manifest(&self) -> Manifest {
        Manifest {
            inner: btb_core::Manifest::clone(&self.core().manifest()),
        }
    }

    #[getter]
    fn policy(&self) -> Policy {
        Policy {
            inner: self.core().policy().clone(),
        }
    }

    /// The manual clock the system was opened with, or `None` for the real clock.
    #[getter]
    fn clock(&self) -> Option<ManualClock> {
        match self.core().clock() {
            Clock::Real => None,
            Clock::Manual(clock) => Some(ManualClock {
                inner: clock.clone(),
            }),
        }
    }

    #[getter]
    fn simulated(&self) -> bool {
        self.core().is_simulated()
    }

    /// Registrations outside any task group, task id → registration, in registration order.
    #[getter]
    fn all_tasks<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
        let core = slf.get().core();
        let list = slf.py().detach(|| core.all_tasks()).or_raise()?;
        Self::registrations(slf, list)
    }

    /// Task groups that hold registrations, group id → group.
    #[getter]
    fn all_task_groups<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
        let py = slf.py();
        let core = slf.get().core();
        let groups = py.detach(|| core.all_task_groups()).or_raise()?;
        let dict = PyDict::new(py);
        for group in groups {
            let id = group.id.clone();
            let group = BackgroundTaskRegistrationGroup {
                group,
                system: Some(slf.clone().unbind()),
            };
            dict.set_item(id, group)?;
        }
        Ok(dict)
    }

    /// Sets the system's background-activated handler (the analogue of
    /// `Application.OnBackgroundActivated`), or removes it with `None`: it runs the tasks that have
    /// no entry point (and whose group has no handler), called with the instance on a btb thread.
    fn set_background_activated(
        slf: &Bound<'_, Self>,
        handler: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if let Some(h) = &handler {
            check_target(h, "a background-activated handler")?;
        }
        let weak = System::weak(slf)?;
        let mut registry = lock(py, &this.registry);
        let slot = handler.map(|h| Slot::new(h.unbind()));
        let core_handler = slot.as_ref().map(|s| run_handler(Arc::clone(s), weak));
        py.detach(|| this.core().set_background_activated(None, core_handler))
            .or_raise()?;
        let old = std::mem::replace(&mut registry.system, slot);
        drop(registry);
        drop(old); // unlocked: dropping a callable can run Python code
        Ok(())
    }

    /// Registers `handler` as the in-process handler of a declared entry point (or removes it with
    /// `None`): a function called with the instance, or a class with `run(self, instance)`
    /// instantiated per run. `NotDeclaredError` if the manifest does not declare the entry point.
    #[pyo3(signature = (name, handler))]
    fn register_entry_point(
        slf: &Bound<'_, Self>,
        name: &Bound<'_, PyString>,
        handler: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let name = utf8(name, "entry point")?;
        if let Some(h) = &handler {
            check_target(h, "an entry point handler")?;
        }
        let weak = System::weak(slf)?;
        let mut registry = lock(py, &this.registry);
        let slot = handler.map(|h| Slot::new(h.unbind()));
        let core_handler = slot.as_ref().map(|s| run_handler(Arc::clone(s), weak));
        py.detach(|| this.core().register_entry_point(&name, core_handler))
            .or_raise()?;
        let old = match slot {
            Some(slot) => registry.entry_points.insert(name, slot),
            None => registry.entry_points.remove(&name),
        };
        drop(registry);
        drop(old);
        Ok(())
    }

    /// A decorator registering the decorated function (or class) as the entry point's handler:
    /// `@system.entry_point("notes.Sync")`.
    fn entry_point<'py>(
        slf: &Bound<'py, Self>,
        name: &Bound<'py, PyString>,
    ) -> PyResult<Bound<'py, PyCFunction>> {
        let py = slf.py();
        let system = slf.clone().unbind();
        let name = name.clone().unbind();
        // Checked now, so that a typo fails where the decorator is applied.
        let declared = utf8(name.bind(py), "entry point")?;
        if slf.get().core().manifest().find(&declared).is_none() {
            return Err(crate::errors::raise(btb_core::Error::new(
                btb_core::ErrorKind::NotDeclared,
                format!(
                    "entry point {declared:?} is not declared in the manifest of {:?}",
                    slf.get().core().app_id()
                ),
            )));
        }
        PyCFunction::new_closure(
            py,
            Some(c"entry_point_decorator"),
            None,
            move |args: &Bound<'_, PyTuple>, _kwargs| -> PyResult<Py<PyAny>> {
                let py = args.py();
                let (handler,): (Bound<'_, PyAny>,) = args.extract()?;
                System::register_entry_point(
                    system.bind(py),
                    name.bind(py),
                    Some(handler.clone()),
                )?;
                Ok(handler.unbind())
            },
        )
    }

    /// Raises a system event (as the platform would); returns how many registrations fired.
    fn raise_event(&self, py: Python<'_>, trigger_type: &Bound<'_, PyAny>) -> PyResult<usize> {
        let event =
            SystemTriggerType::from_u32(uint(trigger_type, "system trigger type")?).or_raise()?;
        py.detach(|| self.core().raise_event(event)).or_raise()
    }

    /// Signals a custom event in this system; returns how many registrations fired. Other
    /// processes use `btb.signal_event(app_id, name)`.
    fn signal_event(&self, py: Python<'_>, name: &Bound<'_, PyString>) -> PyResult<usize> {
        let name = utf8(name, "event name")?;
        py.detach(|| self.core().signal_event(&name)).or_raise()
    }

    /// Sets a state of the simulated source (`StateError` for a system reading the platform).
    fn set_state(
        &self,
        py: Python<'_>,
        condition_type: &Bound<'_, PyAny>,
        value: bool,
    ) -> PyResult<()> {
        let condition = condition_of(condition_type)?;
        py.detach(|| self.core().set_state(condition, value))
            .or_raise()
    }

    /// Whether a condition holds now: `True`/`False`, or `None` while its state is unknown (SPEC
    /// §6: from the simulated source, or read from the machine).
    fn state(&self, py: Python<'_>, condition_type: &Bound<'_, PyAny>) -> PyResult<Option<bool>> {
        let condition = condition_of(condition_type)?;
        py.detach(|| self.core().state(condition)).or_raise()
    }

    /// What a condition's state is read from: `"simulated"`, `"statvfs"`, … or `"unknown"`.
    fn state_source(&self, py: Python<'_>, condition_type: &Bound<'_, PyAny>) -> PyResult<String> {
        let condition = condition_of(condition_type)?;
        py.detach(|| self.core().state_source(condition))
            .map(str::to_owned)
            .or_raise()
    }

    /// WinRT `BackgroundWorkCost.CurrentBackgroundWorkCost`: a `BackgroundWorkCostValue`, or
    /// `None` while unknown.
    #[getter]
    fn background_work_cost(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let cost = py
            .detach(|| self.core().background_work_cost())
            .or_raise()?;
        match cost {
            Some(c) => Ok(member(py, "BackgroundWorkCostValue", c as u32)?.unbind()),
            None => Ok(py.None()),
        }
    }

    /// Waits until nothing runs or is runnable and every handler has been called: `True`, or
    /// `False` after `timeout` seconds. Ctrl-C interrupts it. Not from a btb handler
    /// (`StateError`).
    fn wait_idle(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        self.refuse_on_bound_loop(py, "wait_idle")?;
        wait_in_slices(py, timeout, "wait_idle", |slice| {
            self.core().wait_idle(slice)
        })
    }

    /// `await system.wait_idle_async(timeout)`: `wait_idle` without blocking the event loop.
    fn wait_idle_async<'py>(
        slf: &Bound<'py, Self>,
        timeout: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let wait = slf.getattr("wait_idle")?;
        crate::aio::aio(slf.py())?.call_method1("wait", (wait, "wait_idle", timeout))
    }

    /// `await system.serve_activation_async(timeout)`: `serve_activation` without blocking the
    /// event loop.
    fn serve_activation_async<'py>(
        slf: &Bound<'py, Self>,
        timeout: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let serve = slf.getattr("serve_activation")?;
        crate::aio::aio(slf.py())?.call_method1("wait", (serve, "serve_activation", timeout))
    }

    /// For an app the broker started for background work (`activate` in the manifest;
    /// `BTB_ACTIVATION=1` in the environment, `BTB_STORE` the store to open): serves the runs the
    /// broker hands this process — register the run functions first — and returns `True` once
    /// none is left for it, or `False` after `timeout` seconds, so that `main` can exit. Ctrl-C
    /// interrupts it. The analogue of Windows activating an app for `OnBackgroundActivated`.
    fn serve_activation(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        self.refuse_on_bound_loop(py, "serve_activation")?;
        wait_in_slices(py, timeout, "serve_activation", |slice| {
            self.core().serve_activation(slice)
        })
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "System(app_id={}, store={})",
            py_repr(py, self.core().app_id())?,
            py_repr(py, self.core().store_path())?
        ))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(registry) = try_lock(&self.registry) {
            for slot in registry.slots() {
                slot.traverse(&visit)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let released: Vec<_> = try_lock(&self.registry)
            .map(|registry| registry.slots().map(|s| s.take()).collect())
            .unwrap_or_default();
        drop(released);
    }
}

static DEFAULT: Mutex<Option<Py<System>>> = Mutex::new(None);

/// The default system: the one set with `set_default_system`, else the core's, opened on first
/// use from `BTB_MANIFEST`/`BTB_STORE`. One Python object per core system.
pub(crate) fn default_system(py: Python<'_>) -> PyResult<Py<System>> {
    let core = py.detach(btb_core::default_system).or_raise()?;
    if let Some(system) = lock(py, &DEFAULT)
        .as_ref()
        .filter(|s| *s.get().core() == core)
    {
        return Ok(system.clone_ref(py));
    }
    // Wrapped outside the lock: wrapping runs Python code.
    let system = System::wrap(py, core)?;
    let old = lock(py, &DEFAULT).replace(system.clone_ref(py));
    drop(old);
    Ok(system)
}

/// The default system (used by `register()` without a system and by the class attributes
/// `BackgroundTaskRegistration.all_tasks`/`all_task_groups`).
#[pyfunction(name = "default_system")]
pub(crate) fn py_default_system(py: Python<'_>) -> PyResult<Py<System>> {
    default_system(py)
}

/// Makes `system` the default system, or with `None` forgets it (the next use opens one from
/// `BTB_MANIFEST` again).
#[pyfunction]
pub(crate) fn set_default_system(py: Python<'_>, system: Option<Py<System>>) {
    let core = system.as_ref().map(|s| s.get().core().clone());
    // Detached: replacing the last handle of a system closes it.
    py.detach(|| btb_core::set_default_system(core));
    let old = std::mem::replace(&mut *lock(py, &DEFAULT), system);
    drop(old);
}

/// Signals the custom event `name` to the running broker of `app_id`, in any process of this user
/// (through its socket under `$XDG_RUNTIME_DIR/btb/`). `NotFoundError` when no broker runs.
/// In-memory (`":memory:"`) systems have no control socket: signal them with
/// `system.signal_event(name)`.
#[pyfunction]
pub(crate) fn signal_event(
    py: Python<'_>,
    app_id: &Bound<'_, PyString>,
    name: &Bound<'_, PyString>,
) -> PyResult<()> {
    let app_id = utf8(app_id, "app id")?;
    let name = utf8(name, "event name")?;
    py.detach(|| btb_core::control::signal_event(&app_id, &name))
        .or_raise()
}

/// A registered task: an immutable snapshot of what was registered, in the system it lives in.
#[pyclass(frozen, module = "btb")]
pub struct BackgroundTaskRegistration {
    inner: btb_core::Registration,
    pub(crate) system: Py<System>,
}

impl BackgroundTaskRegistration {
    pub(crate) fn new(inner: btb_core::Registration, system: Py<System>) -> Self {
        BackgroundTaskRegistration { inner, system }
    }
}

#[pymethods]
impl BackgroundTaskRegistration {
    #[getter]
    fn task_id(&self) -> Uuid {
        self.inner.task_id()
    }

    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    #[getter]
    fn task_entry_point(&self) -> Option<&str> {
        self.inner.task_entry_point()
    }

    #[getter]
    fn trigger<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        IBackgroundTrigger::to_object(py, &self.inner.trigger())
    }

    #[getter]
    fn task_group(&self, py: Python<'_>) -> Option<BackgroundTaskRegistrationGroup> {
        self.inner
            .task_group()
            .map(|group| BackgroundTaskRegistrationGroup {
                group: group.clone(),
                system: Some(self.system.clone_ref(py)),
            })
    }

    #[getter]
    fn conditions(&self) -> Vec<SystemCondition> {
        self.inner
            .conditions()
            .iter()
            .map(|c| SystemCondition {
                condition_type: *c as u32,
            })
            .collect()
    }

    #[getter]
    fn cancel_on_condition_loss(&self) -> bool {
        self.inner.cancel_on_condition_loss()
    }

    #[getter]
    fn is_network_requested(&self) -> bool {
        self.inner.is_network_requested()
    }

    /// The `RetryPolicy` it was registered with (SPEC §12), or `None`.
    #[getter]
    fn retry_policy(&self) -> Option<crate::retry::RetryPolicy> {
        self.inner
            .record()
            .retry_policy
            .map(|inner| crate::retry::RetryPolicy { inner })
    }

    /// True once a one-shot trigger has fired: the registration stays but never fires again.
    #[getter]
    fn spent(&self, py: Python<'_>) -> bool {
        py.detach(|| self.inner.is_spent())
    }

    /// When its time, maintenance or calendar trigger is next due (aware UTC `datetime`), or
    /// `None` (other triggers, spent one-shots).
    #[getter]
    fn next_due<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        py.detach(|| self.inner.next_due_ms())
            .map(|ms| datetime_from_ms(py, ms))
            .transpose()
    }

    /// The system the registration lives in.
    #[getter]
    fn system(&self, py: Python<'_>) -> Py<System> {
        self.system.clone_ref(py)
    }

    /// Removes the registration durably; `cancel_task` cancels a running instance with `ABORT`.
    fn unregister(&self, py: Python<'_>, cancel_task: bool) -> PyResult<()> {
        py.detach(|| self.inner.unregister(cancel_task))
            .or_raise()?;
        self.system.get().prune_task(py, self.inner.task_id());
        Ok(())
    }

    /// Requests a run through this registration's application trigger (`InvalidArgumentError`
    /// for another kind of trigger); `arguments` (a dict of JSON values) become the instance's
    /// `trigger_details`.
    #[pyo3(signature = (arguments = None))]
    fn request<'py>(
        &self,
        py: Python<'py>,
        arguments: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let arguments = crate::json::arguments(arguments)?;
        let result = py.detach(|| self.inner.request(arguments)).or_raise()?;
        member(py, "ApplicationTriggerResult", result as u32)
    }

    /// `await registration.request_async(arguments)`: `request` on the event loop's default
    /// executor.
    #[pyo3(signature = (arguments = None))]
    fn request_async<'py>(
        &self,
        py: Python<'py>,
        arguments: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let arguments = crate::json::arguments(arguments)?;
        let registration = self.inner.clone();
        request_in_executor(py, move || registration.request(arguments.clone()))
    }

    /// Adds a handler called as `handler(registration, args)` on a btb thread each time a run's
    /// progress changes (`args.instance_id`, `args.progress`); returns a token.
    fn add_progress(&self, py: Python<'_>, handler: Bound<'_, PyAny>) -> PyResult<u64> {
        System::add_event_handler(
            self.system.bind(py),
            &self.inner,
            EventKind::Progress,
            handler,
        )
    }

    /// Removes a progress handler; an unknown token is ignored.
    fn remove_progress(&self, py: Python<'_>, token: u64) {
        self.system
            .get()
            .remove_event_handler(py, &self.inner, EventKind::Progress, token);
    }

    /// Adds a handler called as `handler(registration, args)` on a btb thread when a run
    /// completes (`args.status`, `args.message`, `args.check_result()`); returns a token.
    fn add_completed(&self, py: Python<'_>, handler: Bound<'_, PyAny>) -> PyResult<u64> {
        System::add_event_handler(
            self.system.bind(py),
            &self.inner,
            EventKind::Completed,
            handler,
        )
    }

    /// Removes a completed handler; an unknown token is ignored.
    fn remove_completed(&self, py: Python<'_>, token: u64) {
        self.system
            .get()
            .remove_event_handler(py, &self.inner, EventKind::Completed, token);
    }

    /// The recorded runs, oldest first (at most the policy's `history_limit`).
    #[getter]
    fn history<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let runs = py.detach(|| self.inner.history()).or_raise()?;
        PyList::new(py, runs.into_iter().map(|record| RunRecord { record }))
    }

    fn __eq__(&self, other: &Self) -> bool {
        self.inner == other.inner
    }

    fn __hash__(&self) -> u64 {
        let id = self.inner.task_id().as_u128();
        (id as u64) ^ ((id >> 64) as u64)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "BackgroundTaskRegistration(task_id={}, name={})",
            py_repr(py, self.inner.task_id())?,
            py_repr(py, self.inner.name())?
        ))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.system)
    }
}

/// `ApplicationTrigger.request`: fires the registrations made with the trigger `id`.
pub(crate) fn request_trigger<'py>(
    py: Python<'py>,
    trigger: &Trigger,
    arguments: Option<&Bound<'py, PyAny>>,
    system: Option<Py<System>>,
    asynchronous: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let Trigger::Application { id } = trigger else {
        unreachable!("an ApplicationTrigger holds an application trigger")
    };
    let id = *id;
    let arguments = crate::json::arguments(arguments)?;
    // Bound by use: without `system`, the trigger fires wherever its registrations live.
    let core = system.map(|system| system.get().core().clone());
    let request = move || match &core {
        Some(core) => core.request(&id, arguments.clone()),
        None => btb_core::request_application_trigger(&id, arguments.clone()),
    };
    if asynchronous {
        return request_in_executor(py, request);
    }
    let result = py.detach(request).or_raise()?;
    member(py, "ApplicationTriggerResult", result as u32)
}

/// A task group `(id, name)`. Naming it in a builder creates it; its `all_tasks` lists its own
/// registrations, which the system's `all_tasks` leaves out.
#[pyclass(frozen, module = "btb")]
pub struct BackgroundTaskRegistrationGroup {
    pub(crate) group: TaskGroup,
    /// The system the group came from; `None` for one made by the app (the default system).
    pub(crate) system: Option<Py<System>>,
}

impl BackgroundTaskRegistrationGroup {
    fn system(&self, py: Python<'_>) -> PyResult<Py<System>> {
        match &self.system {
            Some(system) => Ok(system.clone_ref(py)),
            None => default_system(py),
        }
    }
}

#[pymethods]
impl BackgroundTaskRegistrationGroup {
    #[new]
    #[pyo3(signature = (id, name = None))]
    fn new(id: &Bound<'_, PyString>, name: Option<&Bound<'_, PyString>>) -> PyResult<Self> {
        let group = TaskGroup::new(
            utf8(id, "task group id")?,
            opt_utf8(name, "task group name")?,
        )
        .or_raise()?;
        Ok(BackgroundTaskRegistrationGroup {
            group,
            system: None,
        })
    }

    #[getter]
    fn id(&self) -> &str {
        &self.group.id
    }

    #[getter]
    fn name(&self) -> &str {
        &self.group.name
    }

    /// The group's registrations, task id → registration (in the system the group came from,
    /// else the default system).
    #[getter]
    fn all_tasks<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        System::group_tasks(self.system(py)?.bind(py), &self.group.id)
    }

    /// Adds a handler for the group's tasks that have no entry point (WinRT
    /// `BackgroundActivated`): called as `handler(group, args)` on a btb thread, with the run in
    /// `args.task_instance`, in every system where a registration names this group, whether
    /// added before or after the registration (objects are bound by use). Several handlers are
    /// called in the order added. An `async def` handler runs on the system's event loop.
    /// Returns a token for `remove_background_activated`.
    fn add_background_activated(&self, py: Python<'_>, handler: Bound<'_, PyAny>) -> PyResult<u64> {
        if !handler.is_callable() {
            return Err(PyTypeError::new_err(format!(
                "a background-activated handler must be callable as handler(group, args), not {}",
                handler.get_type().name()?
            )));
        }
        let run = group_run_fn(handler.unbind());
        let id = self.group.id.clone();
        Ok(py.detach(|| btb_core::groups::add_background_activated(&id, run)))
    }

    /// Removes a handler added with `add_background_activated`; an unknown token is ignored.
    fn remove_background_activated(&self, py: Python<'_>, token: u64) {
        let removed = py.detach(|| btb_core::groups::remove_background_activated(token));
        drop(removed); // attached: the handler's finalizer runs now, with no btb lock held
    }

    fn __eq__(&self, other: &Self) -> bool {
        self.group == other.group
    }

    fn __hash__(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.group.hash(&mut hasher);
        hasher.finish()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "BackgroundTaskRegistrationGroup({}, {})",
            py_repr(py, &self.group.id)?,
            py_repr(py, &self.group.name)?
        ))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.system)
    }
}
