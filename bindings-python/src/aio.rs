//! Coroutines (SPEC §9.1): an `async def` run function or handler runs on its system's event loop
//! (`btb._aio`: the app's, bound by `async with`, or the one btb owns). A run's coroutine is a
//! task that a deferral keeps going; a handler's coroutine is awaited by the btb thread calling
//! handlers. Also the runs going in this process, which a close after Ctrl-C names.

use std::sync::{Mutex, PoisonError};

use btb_core::{Deferral, Instance};
use pyo3::PyTraverseError;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyModule, PyTuple};
use uuid::Uuid;

use crate::errors::OrRaise;
use crate::runtime::{
    BackgroundTaskInstance, call_unwinding, describe, fail, log_error, module, returned, task_label,
};
use crate::system::{System, lock};

/// Whether a call returned a coroutine (an `async def` run function or handler).
pub(crate) fn is_coroutine(value: &Bound<'_, PyAny>) -> PyResult<bool> {
    static INSPECT: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    if value.is_none() {
        return Ok(false);
    }
    module(value.py(), &INSPECT, "inspect")?
        .call_method1(intern!(value.py(), "iscoroutine"), (value,))?
        .is_truthy()
}

/// Runs a handler's coroutine to its end on the system's event loop (SPEC §9.1), from the
/// btb thread that calls handlers, which waits for it: handlers stay one at a time, in order.
/// Returns what the coroutine returned, or raises what it raised.
pub(crate) fn await_handler<'py>(
    system: &Bound<'py, System>,
    coroutine: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = system.py();
    let call = match System::event_loop(system)? {
        Some(event_loop) => event_loop.bind(py).getattr(intern!(py, "call"))?,
        None => aio(py)?.getattr(intern!(py, "run_here"))?,
    };
    call_unwinding(&call, PyTuple::new(py, [coroutine])?)
}

/// `btb._aio`, where the event loops live.
pub(crate) fn aio(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    static AIO: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    module(py, &AIO, "btb._aio")
}

/// An `async def` run: its coroutine runs as a task on the system's event loop, and a deferral
/// keeps the run going until it ends — no worker waits for it. Cancellation reaches it as
/// `CancelledError` once the canceled handlers have run (`BackgroundTaskInstance::on_canceled`).
pub(crate) fn start_coroutine(
    system: &Bound<'_, System>,
    python_instance: &Bound<'_, BackgroundTaskInstance>,
    coroutine: Bound<'_, PyAny>,
    going: Going,
) {
    let py = system.py();
    let instance = &python_instance.get().inner;
    let event_loop = match System::event_loop(system) {
        Ok(Some(event_loop)) => event_loop,
        Ok(None) => {
            // The system's object is gone (it closes): run it here, on a loop of its own.
            let ran = aio(py)
                .and_then(|aio| aio.getattr(intern!(py, "run_here")))
                .and_then(|run_here| call_unwinding(&run_here, PyTuple::new(py, [coroutine])?))
                .and_then(|result| returned(py, instance, &result));
            if let Err(err) = ran {
                fail(py, instance, &err);
            }
            return;
        }
        Err(err) => {
            close_coroutine(&coroutine);
            return fail(py, instance, &err);
        }
    };
    let made = Py::new(
        py,
        AsyncRun {
            instance: python_instance.clone().unbind(),
            end: Mutex::new(None),
        },
    );
    // The deferral is taken once nothing can fail before `end` is set to complete it.
    let run = made.and_then(|run| {
        let deferral = py.detach(|| instance.get_deferral()).or_raise()?;
        *lock(py, &run.get().end) = Some((deferral, going));
        Ok(run)
    });
    let run = match run {
        Ok(run) => run,
        Err(err) => {
            close_coroutine(&coroutine);
            return fail(py, instance, &err);
        }
    };
    // On failure, `start` has closed the coroutine.
    let started = event_loop
        .bind(py)
        .call_method1(intern!(py, "start"), (coroutine, run.clone_ref(py)));
    if let Err(err) = started {
        fail(py, instance, &err);
        run.get().end(py);
    }
}

/// Closes a coroutine that will not run (no "never awaited" warning).
fn close_coroutine(coroutine: &Bound<'_, PyAny>) {
    if let Err(err) = coroutine.call_method0(intern!(coroutine.py(), "close")) {
        log_error(
            coroutine.py(),
            &format!(
                "closing a coroutine that could not run raised {}",
                describe(coroutine.py(), &err)
            ),
            Some(&err),
        );
    }
}

/// The run of an `async def` run function, while its coroutine runs on an event loop
/// (`btb._aio` calls `attach` when its task is made, `done` when it ends).
#[pyclass(frozen, name = "_AsyncRun", module = "btb")]
pub struct AsyncRun {
    instance: Py<BackgroundTaskInstance>,
    /// The deferral that keeps the run going, and its entry among the runs going; taken when
    /// the coroutine ends.
    end: Mutex<Option<(Deferral, Going)>>,
}

impl AsyncRun {
    /// Ends the run: completes its deferral (the run then ends as the core decides: canceled
    /// if it was, else failed or succeeded).
    fn end(&self, py: Python<'_>) {
        let end = lock(py, &self.end).take();
        if let Some((deferral, going)) = end {
            py.detach(|| {
                let _ = deferral.complete();
            });
            drop(going);
        }
        self.instance.get().forget_coroutine(py);
    }
}

#[pymethods]
impl AsyncRun {
    /// The task running the coroutine on `loop`: canceled once the run is (after its canceled
    /// handlers).
    fn attach(&self, py: Python<'_>, event_loop: Py<PyAny>, task: Py<PyAny>) -> PyResult<()> {
        self.instance.get().attach_coroutine(py, event_loop, task)
    }

    /// The task ended: its result is the run's output (a dict, or None), its exception fails
    /// the run; cancelled by btb, the run is canceled — by anything else (the loop ending), it
    /// fails saying so.
    fn done(&self, py: Python<'_>, task: &Bound<'_, PyAny>) -> PyResult<()> {
        let instance = &self.instance.get().inner;
        if task.call_method0(intern!(py, "cancelled"))?.is_truthy()? {
            if !py.detach(|| instance.canceled()) {
                instance.report_failure(
                    "its coroutine was cancelled, not by btb (did its event loop end while it ran?)",
                );
            }
        } else {
            match task.call_method0(intern!(py, "result")) {
                Ok(result) => {
                    if let Err(err) = returned(py, instance, &result) {
                        fail(py, instance, &err);
                    }
                }
                Err(err) => fail(py, instance, &err),
            }
        }
        self.end(py);
        Ok(())
    }

    /// The run's task, as the logs name it (`task "name" (instance …)`).
    #[getter]
    fn label(&self) -> String {
        task_label(&self.instance.get().inner)
    }

    /// The task could not even be made: the run fails with `error`.
    fn failed(&self, py: Python<'_>, error: &Bound<'_, PyAny>) {
        fail(
            py,
            &self.instance.get().inner,
            &PyErr::from_value(error.clone()),
        );
        self.end(py);
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.instance)
    }
}

/// The runs of this process whose Python code is going — a run function on a worker, or its
/// coroutine on an event loop: what a close interrupted by Ctrl-C says it waits for.
static GOING: Mutex<Vec<(Uuid, btb_core::System, String)>> = Mutex::new(Vec::new());

/// One entry of [`GOING`], removed when dropped.
pub(crate) struct Going(Uuid);

impl Going {
    pub(crate) fn enter(instance: &Instance) -> Going {
        let id = instance.instance_id();
        let entry = (id, instance.task().system(), task_label(instance));
        GOING
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(entry);
        Going(id)
    }

    /// The runs of `system` going now, named.
    pub(crate) fn of(system: &btb_core::System) -> Vec<String> {
        GOING
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, s, _)| s == system)
            .map(|(_, _, label)| label.clone())
            .collect()
    }
}

impl Drop for Going {
    fn drop(&mut self) {
        let mut going = GOING.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = going.iter().position(|(id, _, _)| *id == self.0) {
            going.swap_remove(i);
        }
    }
}
