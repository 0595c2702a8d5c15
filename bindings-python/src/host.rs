//! `btb.host`: the child's side of an out-of-process host (SPEC §5). A program started by a broker
//! for an `exec` entry point calls `btb.host.connect()` and gets a `HostInstance` with the surface
//! of `BackgroundTaskInstance`, so a run function written for in-process use runs unchanged.

use std::sync::Arc;
use std::time::Duration;

use btb_core::CancellationReason;
use btb_core::host::{HostDeferral, HostInstance as CoreHost};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple, PyWeakrefMethods, PyWeakrefReference};
use uuid::Uuid;

use crate::convert::{member, uint};
use crate::errors::OrRaise;
use crate::runtime::{attach, call_unwinding, describe, log_error, reason_value};

/// The instance a host process runs (`btb.host.connect()`): the surface of
/// `BackgroundTaskInstance`. Its run ends when the process exits: exit status 0 is `SUCCEEDED`
/// unless a failure was reported.
#[pyclass(frozen, weakref, module = "btb.host")]
pub struct HostInstance {
    inner: CoreHost,
    /// The last output sent to the broker, for the getter.
    output: std::sync::Mutex<Option<serde_json::Value>>,
}

/// A deferral taken in a host process (`HostInstance.get_deferral()`).
#[pyclass(frozen, module = "btb.host")]
pub struct HostInstanceDeferral {
    inner: HostDeferral,
}

#[pymethods]
impl HostInstanceDeferral {
    /// Completes it; `StateError` when completed already.
    fn complete(&self) -> PyResult<()> {
        self.inner.complete().or_raise()
    }
}

/// Connects to the instance this process was started for (through `BTB_HOST_FD`). Once per
/// process; `StateError` when not started by a btb broker.
#[pyfunction(name = "_host_connect")]
pub(crate) fn connect(py: Python<'_>) -> PyResult<HostInstance> {
    let inner = py.detach(btb_core::host::connect).or_raise()?;
    Ok(HostInstance {
        inner,
        output: std::sync::Mutex::default(),
    })
}

#[pymethods]
impl HostInstance {
    #[getter]
    fn instance_id(&self) -> Uuid {
        self.inner.instance_id()
    }

    #[getter]
    fn task_id(&self) -> Uuid {
        self.inner.task_id()
    }

    /// The registration's name.
    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    #[getter]
    fn entry_point(&self) -> &str {
        self.inner.entry_point()
    }

    #[getter]
    fn app_id(&self) -> &str {
        self.inner.app_id()
    }

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
            .map(|d| crate::json::to_python(py, d))
            .transpose()
    }

    /// btb never suspends a task: always 0.
    #[getter]
    fn suspended_count(&self) -> u32 {
        0
    }

    /// Whether the broker holds a sleep inhibitor for this run (`is_network_requested`).
    #[getter]
    fn is_network_granted(&self) -> bool {
        self.inner.is_network_granted()
    }

    #[getter]
    fn canceled(&self) -> bool {
        self.inner.canceled()
    }

    /// A `BackgroundTaskCancellationReason`, or `None` while not canceled.
    #[getter]
    fn cancellation_reason(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        reason_value(py, self.inner.cancellation_reason())
    }

    /// Which attempt this run is (`BTB_ATTEMPT`: 1, then 2, 3… for retries; SPEC §12;
    /// WorkManager's `runAttemptCount + 1`).
    #[getter]
    fn attempt(&self) -> u32 {
        self.inner.attempt()
    }

    /// Asks for another attempt (SPEC §12; WorkManager's `Result.retry()`), as exiting with status
    /// 75 (`EX_TEMPFAIL`) does: `after` (a `timedelta`, or seconds) instead of the retry policy's
    /// delay, `message` kept with the run. `UnsupportedError` with a broker of protocol version 1.
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

    /// What the run hands back (SPEC §12; WorkManager's output `Data`): a `dict` of JSON values,
    /// at most 64 KiB as JSON, sent to the broker when set (anything else raises
    /// `InvalidArgumentError`); the broker keeps it with the run (`RunRecord.output`). Reads the
    /// last one set by this process, or `None`.
    #[getter]
    fn output<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let output = crate::system::lock(py, &self.output).clone();
        output
            .map(|value| crate::json::to_python(py, &value))
            .transpose()
    }

    #[setter]
    fn set_output(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let output = crate::json::output(value)?;
        py.detach(|| self.inner.set_output(&output)).or_raise()?;
        *crate::system::lock(py, &self.output) = Some(output);
        Ok(())
    }

    /// Marks the run as failed with `message`, whatever the exit status.
    fn report_failure(&self, py: Python<'_>, message: &str) {
        py.detach(|| self.inner.report_failure(message));
    }

    /// For code written against `BackgroundTaskInstance`: the process is the run (it ends when
    /// the process exits), so a deferral keeps nothing alive.
    fn get_deferral(&self, py: Python<'_>) -> HostInstanceDeferral {
        HostInstanceDeferral {
            inner: py.detach(|| self.inner.get_deferral()),
        }
    }

    /// Waits (without the GIL) until the run is canceled or `timeout` seconds pass; returns the
    /// `BackgroundTaskCancellationReason`, or `None` on timeout.
    fn wait_canceled(&self, py: Python<'_>, timeout: f64) -> PyResult<Py<PyAny>> {
        let timeout = Duration::try_from_secs_f64(timeout.max(0.0))
            .map_err(|e| pyo3::exceptions::PyValueError::new_err(format!("timeout: {e}")))?;
        let reason = py.detach(|| self.inner.wait_canceled(timeout));
        reason_value(py, reason)
    }

    /// Adds a handler called as `handler(instance, reason)` on a btb thread when the broker
    /// cancels the run (at once if it already did); returns a token for `remove_canceled`.
    fn add_canceled(slf: &Bound<'_, Self>, handler: Bound<'_, PyAny>) -> PyResult<u64> {
        if !handler.is_callable() {
            return Err(PyTypeError::new_err(format!(
                "a canceled handler must be callable, not {}",
                handler.get_type().name()?
            )));
        }
        let this = slf.get();
        let weak = Arc::new(PyWeakrefReference::new(slf)?.unbind());
        let handler = Arc::new(handler.unbind());
        let closure = Arc::new(move |_: &CoreHost, reason: CancellationReason| {
            attach(|py| {
                let Some(owner) = weak.bind(py).upgrade_as::<HostInstance>().ok().flatten() else {
                    return;
                };
                let called = member(py, "BackgroundTaskCancellationReason", reason as u32)
                    .and_then(|reason| PyTuple::new(py, [owner.as_any(), &reason]))
                    .and_then(|args| call_unwinding(handler.bind(py), args));
                if let Err(err) = called {
                    log_error(
                        py,
                        &format!(
                            "a canceled handler of host instance {} raised {}",
                            owner.get().inner.instance_id(),
                            describe(py, &err)
                        ),
                        Some(&err),
                    );
                }
            });
        });
        Ok(slf.py().detach(|| this.inner.add_canceled(closure)))
    }

    /// Removes a canceled handler; `NotFoundError` for an unknown token.
    fn remove_canceled(&self, token: u64) -> PyResult<()> {
        if self.inner.remove_canceled(token) {
            Ok(())
        } else {
            Err(btb_core::Error::new(
                btb_core::ErrorKind::NotFound,
                format!("no canceled handler with token {token}"),
            ))
            .or_raise()
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "HostInstance(instance_id={}, name={:?})",
            self.inner.instance_id(),
            self.inner.name()
        )
    }
}
