//! `btb.BackgroundTaskBuilder`: a mutable description of one task; `register` validates it.

use std::sync::Mutex;

use btb_core::{NamePolicy, Trigger};
use pyo3::PyTraverseError;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::convert::{enum_or_int, opt_utf8, py_repr, uint};
use crate::errors::OrRaise;
use crate::retry::RetryPolicy;
use crate::system::{
    BackgroundTaskRegistration, BackgroundTaskRegistrationGroup, System, default_system, lock,
    try_lock,
};
use crate::trigger::{IBackgroundTrigger, SystemCondition};

#[derive(Default)]
struct State {
    builder: btb_core::Builder,
    /// The group object the app set (the core builder holds its `(id, name)`).
    group: Option<Py<BackgroundTaskRegistrationGroup>>,
}

/// `BackgroundTaskBuilder`: set the properties, then `register`. The builder is only read by
/// `register`: after an error, fix it and register again.
#[pyclass(frozen, module = "btb")]
pub struct BackgroundTaskBuilder {
    state: Mutex<State>,
}

impl BackgroundTaskBuilder {
    fn with<R>(&self, py: Python<'_>, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut lock(py, &self.state))
    }
}

#[pymethods]
impl BackgroundTaskBuilder {
    #[new]
    fn new() -> Self {
        BackgroundTaskBuilder {
            state: Mutex::default(),
        }
    }

    /// The task's name (required at registration: 1–256 bytes of UTF-8, no NUL).
    #[getter]
    fn name(&self, py: Python<'_>) -> Option<String> {
        self.with(py, |s| s.builder.name.clone())
    }

    #[setter]
    fn set_name(&self, py: Python<'_>, value: Option<&Bound<'_, PyString>>) -> PyResult<()> {
        let value = opt_utf8(value, "task name")?;
        self.with(py, |s| s.builder.name = value);
        Ok(())
    }

    /// The entry point, as declared in the manifest; `None` for an in-process task run by a
    /// background-activated handler.
    #[getter]
    fn task_entry_point(&self, py: Python<'_>) -> Option<String> {
        self.with(py, |s| s.builder.task_entry_point.clone())
    }

    #[setter]
    fn set_task_entry_point(
        &self,
        py: Python<'_>,
        value: Option<&Bound<'_, PyString>>,
    ) -> PyResult<()> {
        let value = opt_utf8(value, "entry point")?;
        self.with(py, |s| s.builder.task_entry_point = value);
        Ok(())
    }

    #[getter]
    fn task_group(&self, py: Python<'_>) -> Option<Py<BackgroundTaskRegistrationGroup>> {
        self.with(py, |s| s.group.as_ref().map(|g| g.clone_ref(py)))
    }

    #[setter]
    fn set_task_group(&self, py: Python<'_>, value: Option<Py<BackgroundTaskRegistrationGroup>>) {
        let old = self.with(py, |s| {
            s.builder.task_group = value.as_ref().map(|g| g.get().group.clone());
            std::mem::replace(&mut s.group, value)
        });
        drop(old);
    }

    #[getter]
    fn cancel_on_condition_loss(&self, py: Python<'_>) -> bool {
        self.with(py, |s| s.builder.cancel_on_condition_loss)
    }

    #[setter]
    fn set_cancel_on_condition_loss(&self, py: Python<'_>, value: bool) {
        self.with(py, |s| s.builder.cancel_on_condition_loss = value);
    }

    #[getter]
    fn is_network_requested(&self, py: Python<'_>) -> bool {
        self.with(py, |s| s.builder.is_network_requested)
    }

    #[setter]
    fn set_is_network_requested(&self, py: Python<'_>, value: bool) {
        self.with(py, |s| s.builder.is_network_requested = value);
    }

    /// A `NamePolicy` (or the int given, when unknown): what `register` does when the name is
    /// taken in the same scope.
    #[getter]
    fn name_policy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let value = self.with(py, |s| s.builder.name_policy);
        enum_or_int(py, "NamePolicy", value, NamePolicy::from_u32(value).is_ok())
    }

    #[setter]
    fn set_name_policy(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let value = uint(value, "name policy")?;
        self.with(py, |s| s.builder.name_policy = value);
        Ok(())
    }

    /// The `RetryPolicy` (SPEC §12; WorkManager's `setBackoffCriteria`), or `None`: without one
    /// nothing is retried on its own, and a run that asks for a retry gets the default policy.
    /// Its bounds are checked by `register`.
    #[getter]
    fn retry_policy(&self, py: Python<'_>) -> Option<RetryPolicy> {
        self.with(py, |s| s.builder.retry_policy)
            .map(|inner| RetryPolicy { inner })
    }

    #[setter]
    fn set_retry_policy(&self, py: Python<'_>, value: Option<PyRef<'_, RetryPolicy>>) {
        let value = value.map(|p| p.inner);
        self.with(py, |s| s.builder.retry_policy = value);
    }

    /// The trigger set with `set_trigger`, or `None`.
    #[getter]
    fn trigger<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let trigger: Option<Trigger> = self.with(py, |s| s.builder.trigger.clone());
        trigger
            .map(|t| IBackgroundTrigger::to_object(py, &t))
            .transpose()
    }

    /// The conditions added with `add_condition`, in order.
    #[getter]
    fn conditions(&self, py: Python<'_>) -> Vec<SystemCondition> {
        self.with(py, |s| {
            s.builder
                .conditions
                .iter()
                .map(|&condition_type| SystemCondition { condition_type })
                .collect()
        })
    }

    /// Sets the trigger (replacing any earlier one).
    fn set_trigger(&self, py: Python<'_>, trigger: &Bound<'_, IBackgroundTrigger>) {
        let trigger = trigger.get().trigger.clone();
        self.with(py, |s| s.builder.set_trigger(trigger));
    }

    /// Adds a condition; adding one already present changes nothing.
    fn add_condition(&self, py: Python<'_>, condition: &Bound<'_, SystemCondition>) {
        let condition = condition.get().condition_type;
        self.with(py, |s| s.builder.add_condition(condition));
    }

    /// Validates and registers the task in `system` (default: the default system). Returns once
    /// the registration is durable; on an error nothing is stored and the builder is unchanged.
    #[pyo3(signature = (system = None))]
    fn register(
        &self,
        py: Python<'_>,
        system: Option<Py<System>>,
    ) -> PyResult<BackgroundTaskRegistration> {
        let system = match system {
            Some(system) => system,
            None => default_system(py)?,
        };
        let builder = self.with(py, |s| s.builder.clone());
        let core = system.get().core();
        let registration = py.detach(|| core.register(&builder)).or_raise()?;
        if builder.name_policy == NamePolicy::Replace as u32 {
            system.get().prune_all(py); // the replaced registrations' handlers
        }
        Ok(BackgroundTaskRegistration::new(registration, system))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "BackgroundTaskBuilder(name={}, trigger={})",
            py_repr(py, self.name(py))?,
            py_repr(py, self.trigger(py)?)?
        ))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(state) = try_lock(&self.state) {
            visit.call(&state.group)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        let released = try_lock(&self.state).and_then(|mut s| s.group.take());
        drop(released);
    }
}
