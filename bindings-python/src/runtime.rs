//! Running tasks in Python (SPEC §4, §9): the closures handed to the core, the instance a run
//! function receives, deferrals, progress and completed event arguments, run records and the
//! import-path resolver.
//!
//! Coroutines (`async def` run functions and handlers) are handed to `aio.rs`.
//!
//! Threads: every closure here is called by the core on one of its threads (a worker for run
//! functions, the notifier for progress, completed and canceled handlers) with no core lock held;
//! it attaches to the interpreter only while Python code runs. Every call back into the core from
//! here is made detached.
//!
//! Garbage collection: the core holds closures, the closures hold an `Arc<Slot>`, and the slot
//! holds the Python callables. The `System` that handed the slot over keeps it too and reports the
//! callables in `__traverse__` (and empties the slot in `__clear__`), so a handler that refers back
//! to its system is collected with it. Closures refer to the system only through a weak reference.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use btb_core::{
    CancellationReason, CompletedFn, Completion, Deferral, Handler, Instance, ProgressFn,
    Registration, Resolver, RunFn, TaskOutcome,
};
use pyo3::PyTraverseError;
use pyo3::exceptions::PyTypeError;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyModule, PyString, PyTuple, PyType, PyWeakrefMethods, PyWeakrefReference};
use uuid::Uuid;

use crate::aio::{Going, await_handler, is_coroutine, start_coroutine};
use crate::convert::{datetime_from_ms, member, py_repr, uint};
use crate::errors::OrRaise;
use crate::system::{
    BackgroundTaskRegistration, BackgroundTaskRegistrationGroup, System, lock, try_lock,
};

/// A weak reference to the Python `System` that made a closure (shared by its closures).
pub(crate) type WeakSystem = Arc<Py<PyWeakrefReference>>;

pub(crate) fn weak_system(system: &Bound<'_, System>) -> PyResult<WeakSystem> {
    Ok(Arc::new(PyWeakrefReference::new(system)?.unbind()))
}

/// The `System` object that made a closure; if it is gone, the `System` object that owns the
/// same core system (a task group's handler, `None` here, serves every system), else a
/// non-owning view of it (dropped while the core still delivers what was queued before it
/// closed).
fn system_for(
    py: Python<'_>,
    system: Option<&WeakSystem>,
    registration: &Registration,
) -> PyResult<Py<System>> {
    if let Some(system) = system.and_then(|s| s.bind(py).upgrade_as::<System>().ok().flatten()) {
        return Ok(system.unbind());
    }
    let core = registration.system();
    match System::owner_of(py, &core) {
        Some(system) => Ok(system),
        None => System::view(py, core),
    }
}

/// The Python callable shared between a core closure and the registry of the `System` that made
/// it (emptied when the system is cleared or closed).
pub(crate) struct Slot {
    callable: Mutex<Option<Py<PyAny>>>,
}

impl Slot {
    pub(crate) fn new(callable: Py<PyAny>) -> Arc<Slot> {
        Arc::new(Slot {
            callable: Mutex::new(Some(callable)),
        })
    }

    /// The callable, unless the slot was emptied.
    fn get<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        lock(py, &self.callable)
            .as_ref()
            .map(|c| c.bind(py).clone())
    }

    /// Empties the slot (`__clear__`, `close`); the caller drops what it returns, unlocked.
    pub(crate) fn take(&self) -> Option<Py<PyAny>> {
        try_lock(&self.callable).and_then(|mut c| c.take())
    }

    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(callable) = try_lock(&self.callable) {
            visit.call(&*callable)?;
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------------
// Python activity on btb threads

/// Attaches a btb thread to the interpreter for `f`; `None` when the interpreter is finalizing
/// (or otherwise not attachable). The core counts the call as app code in flight.
pub(crate) fn attach<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> Option<R> {
    Python::try_attach(f)
}

/// Calls `callable(*args)` from a btb thread, for the calls that run the app's Python code.
///
/// On Python < 3.14 a thread that takes the GIL back while the interpreter finalizes is ended with
/// `pthread_exit`: a forced unwind. A task that ignores cancellation (a CPU-bound loop abandoned
/// by `close` after its grace) is such a thread at interpreter exit. Unwinding through an
/// `extern "C"` call aborts the process (exit status 134), so `PyObject_Call` is declared
/// `"C-unwind"` here and the unwind stops at `HangThread`, which parks the thread for good — what
/// Python 3.14 does itself, and what PyO3 does around the GIL calls it makes. The process then
/// exits normally.
pub(crate) fn call_unwinding<'py>(
    callable: &Bound<'py, PyAny>,
    args: Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyAny>> {
    unsafe extern "C-unwind" {
        fn PyObject_Call(
            callable: *mut pyo3::ffi::PyObject,
            args: *mut pyo3::ffi::PyObject,
            kwargs: *mut pyo3::ffi::PyObject,
        ) -> *mut pyo3::ffi::PyObject;
    }
    struct HangThread;
    impl Drop for HangThread {
        fn drop(&mut self) {
            loop {
                std::thread::park();
            }
        }
    }
    let guard = HangThread;
    // SAFETY: both pointers are live objects this thread holds (attached to the interpreter);
    // `kwargs` may be NULL. The declaration matches CPython's.
    let result = unsafe { PyObject_Call(callable.as_ptr(), args.as_ptr(), std::ptr::null_mut()) };
    std::mem::forget(guard); // returned normally: no forced unwind
    // SAFETY: `PyObject_Call` returns a new reference, or NULL with an exception set.
    unsafe { Bound::from_owned_ptr_or_err(callable.py(), result) }
}

/// Waits, detached, until no btb thread runs app code (the core's count of run functions,
/// handlers and resolvers in flight), at most `timeout` seconds; `True` if none does. The exit hook
/// calls it after closing every system: a run abandoned after its grace period may still be in
/// Python code.
#[pyfunction]
pub(crate) fn _wait_python_idle(py: Python<'_>, timeout: f64) -> bool {
    let timeout = Duration::from_secs_f64(timeout.clamp(0.0, 3600.0));
    py.detach(|| btb_core::wait_app_calls(timeout))
}

// ------------------------------------------------------------------------------------------------
// Logging and failure messages

pub(crate) fn module<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyModule>>,
    name: &str,
) -> PyResult<Bound<'py, PyModule>> {
    Ok(cell
        .get_or_try_init(py, || py.import(name).map(Bound::unbind))?
        .bind(py)
        .clone())
}

/// `"ValueError: boom"`: the exception as the last line of a traceback shows it.
pub(crate) fn describe(py: Python<'_>, err: &PyErr) -> String {
    static TRACEBACK: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let formatted = module(py, &TRACEBACK, "traceback").and_then(|tb| {
        let lines = tb.call_method1(
            "format_exception_only",
            (err.get_type(py), err.value(py).clone()),
        )?;
        let text: String = PyString::new(py, "")
            .call_method1("join", (lines,))?
            .extract()?;
        Ok(text.trim_end().to_owned())
    });
    formatted.unwrap_or_else(|_| err.to_string())
}

/// Logs `message` at WARNING on the `btb` logger; an exception raised meanwhile (a Ctrl-C
/// heard while the logging code runs) is the caller's.
pub(crate) fn warn(py: Python<'_>, message: &str) -> PyResult<()> {
    static LOGGING: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    module(py, &LOGGING, "logging")?
        .call_method1("getLogger", ("btb",))?
        .call_method1("warning", ("%s", message))?;
    Ok(())
}

/// Logs `message` at ERROR on the `btb` logger, with the exception's traceback when there is one.
/// If logging itself fails, the message goes to stderr: a failure is never swallowed silently.
pub(crate) fn log_error(py: Python<'_>, message: &str, err: Option<&PyErr>) {
    static LOGGING: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let logged = module(py, &LOGGING, "logging").and_then(|logging| {
        let logger = logging.call_method1("getLogger", ("btb",))?;
        let kwargs = pyo3::types::PyDict::new(py);
        if let Some(err) = err {
            let info = (err.get_type(py), err.value(py).clone(), err.traceback(py));
            kwargs.set_item("exc_info", info)?;
        }
        logger.call_method("error", ("%s", message), Some(&kwargs))?;
        Ok(())
    });
    if let Err(failure) = logged {
        eprintln!("btb: {message}");
        if let Some(err) = err {
            err.clone_ref(py).print(py);
        }
        failure.print(py);
    }
}

pub(crate) fn task_label(instance: &Instance) -> String {
    format!(
        "task {:?} (instance {})",
        instance.task().name(),
        instance.instance_id()
    )
}

/// A run function raised: the run fails with the exception as its message, and the traceback is
/// logged.
pub(crate) fn fail(py: Python<'_>, instance: &Instance, err: &PyErr) {
    let message = describe(py, err);
    log_error(
        py,
        &format!("{} failed: {message}", task_label(instance)),
        Some(err),
    );
    instance.report_failure(message);
}

const SHUTTING_DOWN: &str = "the Python interpreter is shutting down: the task was not run";

// ------------------------------------------------------------------------------------------------
// Run functions

/// What a run calls: a function (called with the instance), or a class with `run(self, instance)`
/// (instantiated per run, as Windows instantiates the `IBackgroundTask` class). Returns what it
/// returned: for an `async def`, the coroutine, which `run_target` hands to the system's loop.
fn invoke<'py>(
    py: Python<'py>,
    target: &Bound<'py, PyAny>,
    instance: &Bound<'py, BackgroundTaskInstance>,
) -> PyResult<Bound<'py, PyAny>> {
    fn one<'py>(arg: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(arg.py(), [arg])
    }
    if target.is_instance_of::<PyType>() {
        let object = call_unwinding(target, PyTuple::empty(py))?;
        call_unwinding(
            &object.getattr(intern!(py, "run"))?,
            one(instance.as_any())?,
        )
    } else {
        call_unwinding(target, one(instance.as_any())?)
    }
}

/// What a run function returned (SPEC §12): a `dict` is the run's output (WorkManager's
/// `Result.success(outputData)`), `None` changes nothing, anything else fails the run.
pub(crate) fn returned(
    py: Python<'_>,
    instance: &Instance,
    result: &Bound<'_, PyAny>,
) -> PyResult<()> {
    if result.is_none() {
        return Ok(());
    }
    if !result.is_instance_of::<pyo3::types::PyDict>() {
        return Err(PyTypeError::new_err(format!(
            "the run function returned a {}: it may return a dict (the run's output) or None",
            result.get_type().name()?
        )));
    }
    let output = crate::json::output(result)?;
    py.detach(|| instance.set_output(&output)).or_raise()
}

/// Checks what `register_entry_point` and the activation handlers accept.
pub(crate) fn check_target(target: &Bound<'_, PyAny>, what: &str) -> PyResult<()> {
    if target.is_instance_of::<PyType>() {
        if !target.hasattr("run")? {
            return Err(PyTypeError::new_err(format!(
                "{what} class {} has no run(self, instance) method",
                target.cast::<PyType>()?.qualname()?
            )));
        }
        return Ok(());
    }
    if !target.is_callable() {
        return Err(PyTypeError::new_err(format!(
            "{what} must be callable (a function taking the instance, or a class with \
             run(self, instance)), not {}",
            target.get_type().name()?
        )));
    }
    Ok(())
}

/// What a run calls: its run function (an entry point's handler, the system's
/// background-activated handler, an imported entry point), or a task group's
/// background-activated handler, called as WinRT calls it: `handler(group, args)`.
enum Target<'py> {
    Run(Bound<'py, PyAny>),
    Group(Bound<'py, PyAny>),
}

fn run_target(
    py: Python<'_>,
    instance: &Instance,
    system: Option<&WeakSystem>,
    target: Option<Target<'_>>,
) {
    let Some(target) = target else {
        instance.report_failure(
            "its Python handler was removed (released with the btb.System that set it)",
        );
        return;
    };
    let system = match system_for(py, system, instance.task()) {
        Ok(system) => system,
        Err(err) => return fail(py, instance, &err),
    };
    let created = BackgroundTaskInstance::wrap(py, instance.clone(), system.clone_ref(py));
    let python_instance = match created {
        Ok(i) => i,
        Err(err) => return fail(py, instance, &err),
    };
    let going = Going::enter(instance);
    let called = match &target {
        Target::Run(run) => invoke(py, run, &python_instance),
        Target::Group(handler) => {
            BackgroundActivatedEventArgs::call(handler, &system, &python_instance)
        }
    };
    match called {
        Ok(result) => match is_coroutine(&result) {
            Ok(true) => start_coroutine(system.bind(py), &python_instance, result, going),
            Ok(false) => {
                if let Err(err) = returned(py, instance, &result) {
                    fail(py, instance, &err);
                }
            }
            Err(err) => fail(py, instance, &err),
        },
        Err(err) => fail(py, instance, &err),
    }
    // The run function is over: finish it before letting go of what it held. Dropping the last
    // reference to the `System` (the app let go of it; only this run kept it) closes it, and that
    // close must find the run ended, not still going (it would record it as canceled). The core
    // counts this worker busy until it is back from the job, so `wait_idle` returns only once
    // nothing of the app's is held here; its own `finish_run` after this closure reports
    // `STATE`, ignored. (A coroutine's deferral keeps its run going until the coroutine ends.)
    py.detach(|| {
        let _ = instance.finish_run();
    });
    drop(target);
    drop(python_instance);
    drop(system);
}

/// The core handler for an entry point or a background-activated slot: calls the slot's callable
/// with a `BackgroundTaskInstance`; an exception fails the run.
pub(crate) fn run_handler(slot: Arc<Slot>, system: WeakSystem) -> Handler {
    Handler::Call(Arc::new(move |instance: &Instance| {
        let attached = attach(|py| {
            run_target(py, instance, Some(&system), slot.get(py).map(Target::Run));
        });
        if attached.is_none() {
            instance.report_failure(SHUTTING_DOWN);
        }
    }))
}

/// The core run function of one task-group handler (`add_background_activated`): it serves every
/// system where the group is used, so the instance's system is found from its registration.
/// The callable lives as long as the handler stays added (a module-level registration, as
/// `atexit` keeps its functions).
pub(crate) fn group_run_fn(handler: Py<PyAny>) -> RunFn {
    Arc::new(move |instance: &Instance| {
        let attached = attach(|py| {
            let handler = Target::Group(handler.bind(py).clone());
            run_target(py, instance, None, Some(handler));
        });
        if attached.is_none() {
            instance.report_failure(SHUTTING_DOWN);
        }
    })
}

/// The resolver set on every Python system (SPEC §4, last step): an entry point without an
/// in-process handler is imported, `package.module:function` or `package.module.Class`. The
/// import happens at run time, on the worker, so a module is imported only when a task needs it.
pub(crate) fn resolver(system: WeakSystem) -> Resolver {
    Arc::new(move |entry_point: &str| {
        let entry_point = entry_point.to_owned();
        let system = Arc::clone(&system);
        Some(Handler::Call(Arc::new(move |instance: &Instance| {
            let attached = attach(|py| match import_target(py, &entry_point) {
                Ok(target) => run_target(py, instance, Some(&system), Some(Target::Run(target))),
                Err((message, err)) => {
                    log_error(
                        py,
                        &format!("{} failed: {message}", task_label(instance)),
                        err.as_ref(),
                    );
                    instance.report_failure(message);
                }
            });
            if attached.is_none() {
                instance.report_failure(SHUTTING_DOWN);
            }
        })))
    })
}

/// Imports `package.module:attribute.path` or `package.module.Attribute`. The error says what was
/// looked for.
fn import_target<'py>(
    py: Python<'py>,
    entry_point: &str,
) -> Result<Bound<'py, PyAny>, (String, Option<PyErr>)> {
    let looked_for = format!(
        "no handler for entry point {entry_point:?}: looked for an in-process handler registered \
         under that name (none)"
    );
    let split = match entry_point.split_once(':') {
        Some((module, attribute)) => Some((module, attribute, "package.module:function")),
        None => entry_point
            .rsplit_once('.')
            .map(|(module, attribute)| (module, attribute, "package.module.Class")),
    };
    let Some((module_name, attribute, form)) =
        split.filter(|(m, a, _)| !m.is_empty() && !a.is_empty())
    else {
        return Err((
            format!(
                "{looked_for}, and the name is not a Python import path \
                 (package.module:function or package.module.Class)"
            ),
            None,
        ));
    };
    let looked_for = format!(
        "{looked_for}, then for {attribute:?} in Python module {module_name:?} (as {form})"
    );
    let module = py.import(module_name).map_err(|err| {
        (
            format!(
                "{looked_for}: importing {module_name:?} failed: {}",
                describe(py, &err)
            ),
            Some(err),
        )
    })?;
    let mut target = module.into_any();
    for part in attribute.split('.') {
        target = target.getattr(part).map_err(|err| {
            (
                format!(
                    "{looked_for}: module {module_name:?} has no {attribute:?} ({})",
                    describe(py, &err)
                ),
                None,
            )
        })?;
    }
    if let Err(err) = check_target(&target, "an imported entry point") {
        return Err((format!("{looked_for}: {}", describe(py, &err)), None));
    }
    Ok(target)
}

// ------------------------------------------------------------------------------------------------
// Progress and completed handlers

fn call_event_handlers(
    py: Python<'_>,
    slot: &Slot,
    system: Option<&WeakSystem>,
    registration: &Registration,
    args: PyResult<Bound<'_, PyAny>>,
    what: &str,
) {
    let called = system_for(py, system, registration)
        .and_then(|system| {
            Bound::new(
                py,
                BackgroundTaskRegistration::new(registration.clone(), system),
            )
        })
        .and_then(|reg| {
            let args = args?;
            if let Some(handler) = slot.get(py) {
                let call_args = PyTuple::new(py, [reg.as_any(), &args])?;
                let called = call_unwinding(&handler, call_args).and_then(|result| {
                    if is_coroutine(&result)? {
                        await_handler(reg.get().system.bind(py), result)?;
                    }
                    Ok(())
                });
                if let Err(err) = called {
                    log_error(
                        py,
                        &format!(
                            "a {what} handler of task {:?} raised {}",
                            registration.name(),
                            describe(py, &err)
                        ),
                        Some(&err),
                    );
                }
            }
            Ok(())
        });
    if let Err(err) = called {
        log_error(
            py,
            &format!(
                "cannot call the {what} handlers of task {:?}: {}",
                registration.name(),
                describe(py, &err)
            ),
            Some(&err),
        );
    }
}

pub(crate) fn progress_handler(slot: Arc<Slot>, system: WeakSystem) -> ProgressFn {
    Arc::new(
        move |registration: &Registration, instance_id: Uuid, progress: u32| {
            attach(|py| {
                let args = Bound::new(
                    py,
                    BackgroundTaskProgressEventArgs {
                        instance_id,
                        progress,
                    },
                )
                .map(Bound::into_any);
                call_event_handlers(py, &slot, Some(&system), registration, args, "progress");
            });
        },
    )
}

pub(crate) fn completed_handler(slot: Arc<Slot>, system: WeakSystem) -> CompletedFn {
    Arc::new(
        move |registration: &Registration, completion: &Completion| {
            attach(|py| {
                let args = Bound::new(
                    py,
                    BackgroundTaskCompletedEventArgs {
                        completion: completion.clone(),
                    },
                )
                .map(Bound::into_any);
                call_event_handlers(py, &slot, Some(&system), registration, args, "completed");
            });
        },
    )
}

// ------------------------------------------------------------------------------------------------
// The instance

/// An instance's canceled handlers, and the coroutine its cancellation reaches after them.
#[derive(Default)]
struct Cancellation {
    next_token: u64,
    /// `(token, handler)`, in the order added.
    handlers: Vec<(u64, Py<PyAny>)>,
    /// The core called the instance's cancellation: the handlers are being called, or were; one
    /// added now is called at once, on its own.
    called: bool,
    /// Those handlers have returned: the coroutine may be cancelled.
    handlers_done: bool,
    /// The task of an `async def` run, with its event loop, while it runs.
    coroutine: Option<(Py<PyAny>, Py<PyAny>)>,
}

/// One run of a registered task (WinRT `IBackgroundTaskInstance`): what a run function receives.
/// It stays usable after the run function returns (with a deferral, until the run completes).
#[pyclass(frozen, weakref, module = "btb")]
pub struct BackgroundTaskInstance {
    pub(crate) inner: Instance,
    task: Py<BackgroundTaskRegistration>,
    cancellation: Mutex<Cancellation>,
}

impl BackgroundTaskInstance {
    fn new(py: Python<'_>, inner: Instance, system: Py<System>) -> PyResult<Self> {
        let task = Py::new(
            py,
            BackgroundTaskRegistration::new(inner.task().clone(), system),
        )?;
        Ok(BackgroundTaskInstance {
            inner,
            task,
            cancellation: Mutex::default(),
        })
    }

    /// The Python object of a run, with its task's registration in `system`, hearing its
    /// cancellation.
    pub(crate) fn wrap(
        py: Python<'_>,
        inner: Instance,
        system: Py<System>,
    ) -> PyResult<Bound<'_, Self>> {
        let wrapped = Bound::new(py, Self::new(py, inner, system)?)?;
        Self::watch_cancellation(&wrapped)?;
        Ok(wrapped)
    }

    /// Hands the core one canceled handler for this object, which calls the Python handlers in
    /// order and then cancels the coroutine of an `async def` run. It holds the object weakly:
    /// the handlers belong to it.
    fn watch_cancellation(slf: &Bound<'_, Self>) -> PyResult<()> {
        let weak = Arc::new(PyWeakrefReference::new(slf)?.unbind());
        let closure = Arc::new(move |_: &Instance, reason: CancellationReason| {
            attach(|py| {
                if let Some(owner) = weak.bind(py).upgrade_as::<Self>().ok().flatten() {
                    Self::on_canceled(&owner, reason);
                }
            });
        });
        let inner = &slf.get().inner;
        slf.py().detach(|| inner.add_canceled(closure));
        Ok(())
    }

    /// The run was canceled (on a btb thread): its canceled handlers, then its coroutine.
    fn on_canceled(slf: &Bound<'_, Self>, reason: CancellationReason) {
        let py = slf.py();
        let this = slf.get();
        let handlers: Vec<Py<PyAny>> = {
            let mut c = lock(py, &this.cancellation);
            c.called = true;
            c.handlers.iter().map(|(_, h)| h.clone_ref(py)).collect()
        };
        for handler in handlers {
            Self::call_canceled(slf, handler.bind(py), reason);
        }
        let coroutine = {
            let mut c = lock(py, &this.cancellation);
            c.handlers_done = true;
            c.coroutine.take()
        };
        if let Some((event_loop, task)) = coroutine {
            let cancel = task
                .bind(py)
                .getattr(intern!(py, "cancel"))
                .and_then(|cancel| {
                    event_loop
                        .bind(py)
                        .call_method1(intern!(py, "call_soon_threadsafe"), (cancel,))
                });
            // A closed loop runs no coroutine any more: there is nothing left to cancel.
            if let Err(err) = cancel
                && !err.is_instance_of::<pyo3::exceptions::PyRuntimeError>(py)
            {
                log_error(
                    py,
                    &format!(
                        "cannot cancel the coroutine of {}: {}",
                        task_label(&this.inner),
                        describe(py, &err)
                    ),
                    Some(&err),
                );
            }
        }
    }

    /// Calls one canceled handler as `handler(instance, reason)`; an `async def` one runs to its
    /// end on the system's event loop. What it raises is logged.
    fn call_canceled(
        slf: &Bound<'_, Self>,
        handler: &Bound<'_, PyAny>,
        reason: CancellationReason,
    ) {
        let py = slf.py();
        let called = member(py, "BackgroundTaskCancellationReason", reason as u32)
            .and_then(|reason| PyTuple::new(py, [slf.as_any(), &reason]))
            .and_then(|args| call_unwinding(handler, args))
            .and_then(|result| {
                if is_coroutine(&result)? {
                    let system = slf.get().task.get().system.clone_ref(py);
                    await_handler(system.bind(py), result)?;
                }
                Ok(())
            });
        if let Err(err) = called {
            log_error(
                py,
                &format!(
                    "a canceled handler of {} raised {}",
                    task_label(&slf.get().inner),
                    describe(py, &err)
                ),
                Some(&err),
            );
        }
    }

    /// The task of this run's coroutine was made (on its loop's thread): cancelled now if the
    /// run's canceled handlers have already run, else once they have.
    pub(crate) fn attach_coroutine(
        &self,
        py: Python<'_>,
        event_loop: Py<PyAny>,
        task: Py<PyAny>,
    ) -> PyResult<()> {
        let mut c = lock(py, &self.cancellation);
        if c.handlers_done {
            drop(c);
            task.bind(py).call_method0(intern!(py, "cancel"))?;
        } else {
            c.coroutine = Some((event_loop, task));
        }
        Ok(())
    }

    pub(crate) fn forget_coroutine(&self, py: Python<'_>) {
        let task = lock(py, &self.cancellation).coroutine.take();
        drop(task); // unlocked
    }
}

pub(crate) fn reason_value(
    py: Python<'_>,
    reason: Option<CancellationReason>,
) -> PyResult<Py<PyAny>> {
    match reason {
        Some(r) => Ok(member(py, "BackgroundTaskCancellationReason", r as u32)?.unbind()),
        None => Ok(py.None()),
    }
}

#[pymethods]
impl BackgroundTaskInstance {
    #[getter]
    fn instance_id(&self) -> Uuid {
        self.inner.instance_id()
    }

    /// The registration this is a run of.
    #[getter]
    fn task(&self, py: Python<'_>) -> Py<BackgroundTaskRegistration> {
        self.task.clone_ref(py)
    }

    /// The task's progress (0 to 2**32-1); each change reaches the progress handlers.
    #[getter]
    fn progress(&self) -> u32 {
        self.inner.progress()
    }

    #[setter]
    fn set_progress(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let value = uint(value, "progress")?;
        py.detach(|| self.inner.set_progress(value));
        Ok(())
    }

    /// The application trigger's arguments (a new dict each time), or `None`.
    #[getter]
    fn trigger_details<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.inner
            .trigger_details()
            .map(|details| crate::json::to_python(py, details))
            .transpose()
    }

    /// Times resource policy suspended the task: btb never suspends one, so always 0.
    #[getter]
    fn suspended_count(&self) -> u32 {
        self.inner.suspended_count()
    }

    /// Whether the broker holds a sleep inhibitor for this run (`is_network_requested`).
    #[getter]
    fn is_network_granted(&self) -> bool {
        self.inner.is_network_granted()
    }

    #[getter]
    fn canceled(&self, py: Python<'_>) -> bool {
        py.detach(|| self.inner.canceled())
    }

    /// A `BackgroundTaskCancellationReason`, or `None` while not canceled.
    #[getter]
    fn cancellation_reason(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let reason = py.detach(|| self.inner.cancellation_reason());
        reason_value(py, reason)
    }

    /// Takes a deferral: the run completes only once every deferral is completed (and the run
    /// function has returned). `StateError` once the run has completed.
    fn get_deferral(slf: &Bound<'_, Self>) -> PyResult<BackgroundTaskDeferral> {
        let this = slf.get();
        let inner = slf.py().detach(|| this.inner.get_deferral()).or_raise()?;
        Ok(BackgroundTaskDeferral {
            inner,
            instance: slf.clone().unbind(),
        })
    }

    /// Adds a handler called as `handler(instance, reason)` on a btb thread when the run is
    /// canceled (at once if it already is); returns a token for `remove_canceled`. An
    /// `async def` handler runs on the system's event loop; the run's own coroutine gets its
    /// `CancelledError` after the handlers.
    fn add_canceled(slf: &Bound<'_, Self>, handler: Bound<'_, PyAny>) -> PyResult<u64> {
        let py = slf.py();
        if !handler.is_callable() {
            return Err(PyTypeError::new_err(format!(
                "a canceled handler must be callable, not {}",
                handler.get_type().name()?
            )));
        }
        let this = slf.get();
        let (token, late) = {
            let mut c = lock(py, &this.cancellation);
            c.next_token += 1;
            let token = c.next_token;
            c.handlers.push((token, handler.clone().unbind()));
            (token, c.called)
        };
        if late {
            // Canceled already, and its handlers called: this one is called at once, on its own
            // (the core queues it on a btb thread).
            let weak = Arc::new(PyWeakrefReference::new(slf)?.unbind());
            let closure = Arc::new(move |_: &Instance, reason: CancellationReason| {
                attach(|py| {
                    let Some(owner) = weak.bind(py).upgrade_as::<Self>().ok().flatten() else {
                        return;
                    };
                    let handler = lock(py, &owner.get().cancellation)
                        .handlers
                        .iter()
                        .find(|(t, _)| *t == token)
                        .map(|(_, h)| h.clone_ref(py));
                    if let Some(handler) = handler {
                        Self::call_canceled(&owner, handler.bind(py), reason);
                    }
                });
            });
            py.detach(|| this.inner.add_canceled(closure));
        }
        Ok(token)
    }

    /// Removes a canceled handler; an unknown token is ignored.
    fn remove_canceled(&self, py: Python<'_>, token: u64) {
        let removed = {
            let mut c = lock(py, &self.cancellation);
            let index = c.handlers.iter().position(|(t, _)| *t == token);
            index.map(|i| c.handlers.remove(i))
        };
        drop(removed); // unlocked: dropping a callable can run Python code
    }

    /// Which attempt this run is: 1, then 2, 3… for retries (SPEC §12; WorkManager's
    /// `runAttemptCount + 1`).
    #[getter]
    fn attempt(&self) -> u32 {
        self.inner.attempt()
    }

    /// Asks for another attempt when this run ends (SPEC §12; WorkManager's `Result.retry()`):
    /// its record says `TaskOutcome.RETRY`, and the next attempt runs `after` (a `timedelta`, or
    /// seconds) after it ends — by default, the delay of the task's `RetryPolicy`, or of the
    /// default policy (exponential from 30 s) when it has none — then waits for its conditions.
    /// `message` is kept with the run. The run still ends as it would; the last request wins; once
    /// `max_attempts` is reached the run is recorded as failed instead.
    #[pyo3(signature = (after = None, message = None))]
    fn request_retry(
        &self,
        py: Python<'_>,
        after: Option<&Bound<'_, PyAny>>,
        message: Option<&Bound<'_, PyString>>,
    ) -> PyResult<()> {
        let (after, message) = crate::retry::retry_request(after, message)?;
        py.detach(|| self.inner.request_retry(after, message))
            .or_raise()
    }

    /// Waits (without the GIL) until the run is canceled or `timeout` seconds pass; returns the
    /// `BackgroundTaskCancellationReason`, or `None` on timeout. For an exec host's main thread,
    /// or a run function with nothing else to wait for.
    fn wait_canceled(&self, py: Python<'_>, timeout: f64) -> PyResult<Py<PyAny>> {
        let timeout = Duration::try_from_secs_f64(timeout.max(0.0))
            .map_err(|e| pyo3::exceptions::PyValueError::new_err(format!("timeout: {e}")))?;
        let reason = py.detach(|| self.inner.wait_canceled(timeout));
        reason_value(py, reason)
    }

    /// What the run hands back (SPEC §12; WorkManager's output `Data`): a `dict` of JSON values,
    /// at most 64 KiB as JSON, kept with the run's record and given to completed handlers; `None`
    /// until set. Setting anything but such a dict raises `InvalidArgumentError` (values JSON
    /// cannot hold: `TypeError`). Returning a dict from the run function sets it too.
    #[getter]
    fn output<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let output = py.detach(|| self.inner.output());
        output
            .map(|value| crate::json::to_python(py, &value))
            .transpose()
    }

    #[setter]
    fn set_output(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let output = crate::json::output(value)?;
        py.detach(|| self.inner.set_output(&output)).or_raise()
    }

    /// Marks the run as failed with `message` (it still ends when the run function returns and
    /// its deferrals complete); raising from the run function does the same.
    fn report_failure(&self, message: &Bound<'_, PyString>) -> PyResult<()> {
        let message = crate::convert::utf8(message, "failure message")?;
        self.inner.report_failure(message);
        Ok(())
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "BackgroundTaskInstance(instance_id={}, task={})",
            py_repr(py, self.inner.instance_id())?,
            py_repr(py, self.inner.task().name())?
        ))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.task)?;
        if let Some(c) = try_lock(&self.cancellation) {
            for (_, handler) in &c.handlers {
                visit.call(handler)?;
            }
            if let Some((event_loop, task)) = &c.coroutine {
                visit.call(event_loop)?;
                visit.call(task)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let released = try_lock(&self.cancellation)
            .map(|mut c| (std::mem::take(&mut c.handlers), c.coroutine.take()));
        drop(released);
    }
}

/// Keeps an instance running after its run function returns, until `complete()` (WinRT
/// `BackgroundTaskDeferral`). May be completed from any thread.
#[pyclass(frozen, module = "btb")]
pub struct BackgroundTaskDeferral {
    inner: Deferral,
    instance: Py<BackgroundTaskInstance>,
}

#[pymethods]
impl BackgroundTaskDeferral {
    /// Completes the deferral; completing it twice is `StateError`.
    fn complete(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.complete()).or_raise()
    }

    /// The instance the deferral belongs to.
    #[getter]
    fn instance(&self, py: Python<'_>) -> Py<BackgroundTaskInstance> {
        self.instance.clone_ref(py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.instance)
    }
}

// ------------------------------------------------------------------------------------------------
// Event arguments and run records

/// What a task group's background-activated handlers receive, as `handler(group, args)` (WinRT
/// `BackgroundActivatedEventArgs`, with the `BackgroundTaskRegistrationGroup` as the sender).
#[pyclass(frozen, module = "btb")]
pub struct BackgroundActivatedEventArgs {
    task_instance: Py<BackgroundTaskInstance>,
}

impl BackgroundActivatedEventArgs {
    /// Calls a group's handler for the run of `instance`; returns what it returned.
    fn call<'py>(
        handler: &Bound<'py, PyAny>,
        system: &Py<System>,
        instance: &Bound<'py, BackgroundTaskInstance>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = handler.py();
        let Some(group) = instance.get().inner.task().task_group().cloned() else {
            return Err(crate::errors::raise(btb_core::Error::state(
                "a task group's handler was handed a run of a task in no group",
            )));
        };
        let group = Bound::new(
            py,
            BackgroundTaskRegistrationGroup {
                group,
                system: Some(system.clone_ref(py)),
            },
        )?;
        let args = Bound::new(
            py,
            BackgroundActivatedEventArgs {
                task_instance: instance.clone().unbind(),
            },
        )?;
        call_unwinding(handler, PyTuple::new(py, [group.as_any(), args.as_any()])?)
    }
}

#[pymethods]
impl BackgroundActivatedEventArgs {
    /// The run to carry out (WinRT `TaskInstance`).
    #[getter]
    fn task_instance(&self, py: Python<'_>) -> Py<BackgroundTaskInstance> {
        self.task_instance.clone_ref(py)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "BackgroundActivatedEventArgs(task_instance={})",
            self.task_instance.bind(py).repr()?
        ))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.task_instance)
    }
}

/// What progress handlers receive (WinRT `BackgroundTaskProgressEventArgs`).
#[pyclass(frozen, module = "btb")]
pub struct BackgroundTaskProgressEventArgs {
    instance_id: Uuid,
    progress: u32,
}

#[pymethods]
impl BackgroundTaskProgressEventArgs {
    #[getter]
    fn instance_id(&self) -> Uuid {
        self.instance_id
    }

    #[getter]
    fn progress(&self) -> u32 {
        self.progress
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "BackgroundTaskProgressEventArgs(instance_id={}, progress={})",
            py_repr(py, self.instance_id)?,
            self.progress
        ))
    }
}

/// What completed handlers receive (WinRT `BackgroundTaskCompletedEventArgs`).
#[pyclass(frozen, module = "btb")]
pub struct BackgroundTaskCompletedEventArgs {
    completion: Completion,
}

fn outcome_value(py: Python<'_>, outcome: TaskOutcome) -> PyResult<Bound<'_, PyAny>> {
    member(py, "TaskOutcome", outcome as u32)
}

#[pymethods]
impl BackgroundTaskCompletedEventArgs {
    #[getter]
    fn instance_id(&self) -> Uuid {
        self.completion.instance_id
    }

    /// A `TaskOutcome`.
    #[getter]
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        outcome_value(py, self.completion.outcome)
    }

    /// The failure message, or the cancellation spelled out; `None` on success.
    #[getter]
    fn message(&self) -> Option<&str> {
        self.completion.message.as_deref()
    }

    /// A `BackgroundTaskCancellationReason` for a canceled run, else `None`.
    #[getter]
    fn reason(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        reason_value(py, self.completion.reason)
    }

    /// The last progress the run reported.
    #[getter]
    fn last_progress(&self) -> u32 {
        self.completion.last_progress
    }

    /// Which attempt ended (1-based; SPEC §12).
    #[getter]
    fn attempt(&self) -> u32 {
        self.completion.attempt
    }

    /// With status `RETRY`: when the next attempt is due (aware UTC `datetime`), else `None`.
    #[getter]
    fn retry_at<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.completion
            .retry_at_ms
            .map(|ms| datetime_from_ms(py, ms))
            .transpose()
    }

    /// What the run handed back (a new dict each time; SPEC §12), or `None`.
    #[getter]
    fn output<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.completion
            .output
            .as_ref()
            .map(|value| crate::json::to_python(py, value))
            .transpose()
    }

    /// Returns `None` if the run succeeded; raises `btb.TaskFailedError` (failed) or
    /// `btb.TaskCanceledError` (canceled, with `.reason`) otherwise (WinRT `CheckResult`).
    fn check_result(&self, py: Python<'_>) -> PyResult<()> {
        static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
        let c = &self.completion;
        let message = c
            .message
            .clone()
            .unwrap_or_else(|| c.outcome.name().to_owned());
        let error = match c.outcome {
            TaskOutcome::Succeeded => return Ok(()),
            // An attempt that will be retried did not succeed either.
            TaskOutcome::Failed | TaskOutcome::Retry => module(py, &ERRORS, "btb._errors")?
                .getattr("TaskFailedError")?
                .call1((message, c.instance_id))?,
            TaskOutcome::Canceled => module(py, &ERRORS, "btb._errors")?
                .getattr("TaskCanceledError")?
                .call1((message, reason_value(py, c.reason)?, c.instance_id))?,
        };
        Err(PyErr::from_value(error))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "BackgroundTaskCompletedEventArgs(instance_id={}, status={}, message={})",
            py_repr(py, self.completion.instance_id)?,
            outcome_value(py, self.completion.outcome)?.repr()?,
            py_repr(py, self.completion.message.as_deref())?
        ))
    }
}

/// One finished run of a registration, from its history (`registration.history`).
#[pyclass(frozen, module = "btb")]
pub struct RunRecord {
    pub(crate) record: btb_core::RunRecord,
}

#[pymethods]
impl RunRecord {
    #[getter]
    fn instance_id(&self) -> Uuid {
        self.record.instance_id
    }

    #[getter]
    fn task_id(&self) -> Uuid {
        self.record.task_id
    }

    /// The kind of trigger that fired it, as the keys of `Policy.time_limits` spell it
    /// (`"time"`, `"application"`, …).
    #[getter]
    fn trigger_kind(&self) -> String {
        self.record.trigger_kind.name().to_ascii_lowercase()
    }

    /// The application trigger's arguments, or `None`.
    #[getter]
    fn trigger_details<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.record
            .trigger_details
            .as_deref()
            .map(|text| crate::json::text_to_python(py, text))
            .transpose()
    }

    /// When the run started (aware UTC `datetime`, system clock).
    #[getter]
    fn started<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        datetime_from_ms(py, self.record.started_ms)
    }

    #[getter]
    fn ended<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        datetime_from_ms(py, self.record.ended_ms)
    }

    /// A `TaskOutcome`.
    #[getter]
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        outcome_value(py, self.record.outcome)
    }

    #[getter]
    fn reason(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        reason_value(py, self.record.reason)
    }

    #[getter]
    fn message(&self) -> Option<&str> {
        self.record.message.as_deref()
    }

    #[getter]
    fn last_progress(&self) -> u32 {
        self.record.last_progress
    }

    /// The end (last 64 KiB) of an exec host's stdout, or `None`.
    #[getter]
    fn stdout(&self) -> Option<&str> {
        self.record.stdout.as_deref()
    }

    /// The end (last 64 KiB) of an exec host's stderr, or `None`.
    #[getter]
    fn stderr(&self) -> Option<&str> {
        self.record.stderr.as_deref()
    }

    /// Which attempt this was (1-based; SPEC §12).
    #[getter]
    fn attempt(&self) -> u32 {
        self.record.attempt
    }

    /// With status `RETRY`: when the next attempt is due (aware UTC `datetime`), else `None`.
    #[getter]
    fn retry_at<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.record
            .retry_at_ms
            .map(|ms| datetime_from_ms(py, ms))
            .transpose()
    }

    /// What the run handed back (a new dict each time; SPEC §12), or `None`.
    #[getter]
    fn output<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.record
            .output
            .as_deref()
            .map(|text| crate::json::text_to_python(py, text))
            .transpose()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "RunRecord(instance_id={}, trigger_kind={}, status={}, message={})",
            py_repr(py, self.record.instance_id)?,
            py_repr(py, self.trigger_kind())?,
            outcome_value(py, self.record.outcome)?.repr()?,
            py_repr(py, self.record.message.as_deref())?
        ))
    }
}

/// `loop.run_in_executor(None, request)` for `request_async`: the arguments are checked now, the
/// (possibly blocking) request runs on the default executor, the caller awaits the future.
pub(crate) fn request_in_executor<'py>(
    py: Python<'py>,
    request: impl Fn() -> btb_core::Result<btb_core::ApplicationTriggerResult> + Send + Sync + 'static,
) -> PyResult<Bound<'py, PyAny>> {
    static ASYNCIO: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let event_loop = module(py, &ASYNCIO, "asyncio")?.call_method0("get_running_loop")?;
    let call = pyo3::types::PyCFunction::new_closure(
        py,
        Some(c"request"),
        None,
        move |args: &Bound<'_, PyTuple>, _kwargs| -> PyResult<Py<PyAny>> {
            let py = args.py();
            let result = py.detach(&request).or_raise()?;
            Ok(member(py, "ApplicationTriggerResult", result as u32)?.unbind())
        },
    )?;
    event_loop.call_method1("run_in_executor", (py.None(), call))
}
