//! `btb.System`, `btb.BackgroundTaskRegistration`, `btb.BackgroundTaskRegistrationGroup` and the
//! default system.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};

use btb_core::{Clock, Handler, StoreLocation, SystemOptions, TaskGroup};
use pyo3::PyTraverseError;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::sync::MutexExt;
use pyo3::types::{PyDict, PyString};

use crate::convert::{opt_utf8, py_repr, utf8};
use crate::errors::OrRaise;
use crate::manifest::Manifest;
use crate::policy::{ManualClock, Policy};
use crate::trigger::{IBackgroundTrigger, SystemCondition};

/// Locks a mutex without holding the interpreter while waiting: another thread may hold it
/// while detached (see [`System::add_group_handler`]).
pub(crate) fn lock<'a, T>(py: Python<'_>, mutex: &'a Mutex<T>) -> MutexGuard<'a, T> {
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

/// The Python callables of a system's background-activated handlers. They live here, where the
/// garbage collector sees them; the core holds only a marker closure per handler slot, which is
/// what registration validates (SPEC §2: no entry point needs a handler). Dispatching runs to
/// these callables comes with the runner.
#[derive(Default)]
struct Handlers {
    system: Option<Py<PyAny>>,
    groups: HashMap<String, Vec<(u64, Py<PyAny>)>>,
    next_token: u64,
}

fn activation_marker() -> Handler {
    Handler::Call(Arc::new(|_instance| {}))
}

/// One broker: app identity and manifest, store, clock and policy. A context manager.
#[pyclass(frozen, weakref, module = "btb")]
pub struct System {
    pub(crate) inner: btb_core::System,
    handlers: Mutex<Handlers>,
}

impl System {
    /// Wraps an open core system and hands it to the package's exit hook (`btb._OPEN_SYSTEMS`).
    fn wrap(py: Python<'_>, inner: btb_core::System) -> PyResult<Py<System>> {
        let system = Py::new(
            py,
            System {
                inner,
                handlers: Mutex::default(),
            },
        )?;
        py.import("btb")?
            .getattr("_OPEN_SYSTEMS")?
            .call_method1("add", (system.clone_ref(py),))?;
        Ok(system)
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
        let inner = &slf.get().inner;
        let list = slf.py().detach(|| inner.group_tasks(group_id)).or_raise()?;
        Self::registrations(slf, list)
    }

    /// Adds a group handler; the first one for a group installs the core's marker.
    fn add_group_handler(
        &self,
        py: Python<'_>,
        group_id: &str,
        handler: Py<PyAny>,
    ) -> PyResult<u64> {
        let mut handlers = lock(py, &self.handlers);
        if handlers.groups.get(group_id).is_none_or(Vec::is_empty) {
            py.detach(|| {
                self.inner
                    .set_background_activated(Some(group_id), Some(activation_marker()))
            })
            .or_raise()?;
        }
        handlers.next_token += 1;
        let token = handlers.next_token;
        handlers
            .groups
            .entry(group_id.to_owned())
            .or_default()
            .push((token, handler));
        Ok(token)
    }

    /// Removes a group handler; removing the last one removes the core's marker.
    fn remove_group_handler(&self, py: Python<'_>, group_id: &str, token: u64) -> PyResult<()> {
        let mut handlers = lock(py, &self.handlers);
        let Some(list) = handlers.groups.get_mut(group_id) else {
            return Ok(());
        };
        let Some(index) = list.iter().position(|(t, _)| *t == token) else {
            return Ok(());
        };
        if list.len() == 1 {
            py.detach(|| self.inner.set_background_activated(Some(group_id), None))
                .or_raise()?;
        }
        let removed = list.remove(index);
        if list.is_empty() {
            handlers.groups.remove(group_id);
        }
        drop(handlers);
        drop(removed); // unlocked: dropping a callable can run Python code that calls back here
        Ok(())
    }
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

#[pymethods]
impl System {
    #[new]
    #[pyo3(signature = (manifest, store = None, *, clock = None, simulated = false, policy = None))]
    fn new(
        py: Python<'_>,
        manifest: &Bound<'_, Manifest>,
        store: Option<&Bound<'_, PyAny>>,
        clock: Option<&Bound<'_, ManualClock>>,
        simulated: bool,
        policy: Option<&Bound<'_, Policy>>,
    ) -> PyResult<Py<Self>> {
        let options = SystemOptions {
            manifest: Some(manifest.get().inner.clone()),
            store: store_location(store)?,
            clock: clock.map_or(Clock::Real, |c| Clock::Manual(c.get().inner.clone())),
            simulated,
            policy: policy.map(|p| p.get().inner.clone()).unwrap_or_default(),
        };
        let inner = py.detach(|| btb_core::System::open(options)).or_raise()?;
        System::wrap(py, inner)
    }

    /// Closes the system and releases its store. Closing twice is harmless.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.close()).or_raise()?;
        let released = std::mem::take(&mut *lock(py, &self.handlers));
        drop(released);
        Ok(())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc_info))]
    fn __exit__(&self, py: Python<'_>, _exc_info: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        py.detach(|| self.inner.is_closed())
    }

    #[getter]
    fn app_id(&self) -> &str {
        self.inner.app_id()
    }

    /// The store's path (`":memory:"` for an ephemeral store).
    #[getter]
    fn store_path(&self) -> &str {
        self.inner.store_path()
    }

    #[getter]
    fn manifest(&self) -> Manifest {
        Manifest {
            inner: self.inner.manifest().clone(),
        }
    }

    #[getter]
    fn policy(&self) -> Policy {
        Policy {
            inner: self.inner.policy().clone(),
        }
    }

    /// The manual clock the system was opened with, or `None` for the real clock.
    #[getter]
    fn clock(&self) -> Option<ManualClock> {
        match self.inner.clock() {
            Clock::Real => None,
            Clock::Manual(clock) => Some(ManualClock {
                inner: clock.clone(),
            }),
        }
    }

    #[getter]
    fn simulated(&self) -> bool {
        self.inner.is_simulated()
    }

    /// Registrations outside any task group, task id → registration, in registration order.
    #[getter]
    fn all_tasks<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
        let inner = &slf.get().inner;
        let list = slf.py().detach(|| inner.all_tasks()).or_raise()?;
        Self::registrations(slf, list)
    }

    /// Task groups that hold registrations, group id → group.
    #[getter]
    fn all_task_groups<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
        let py = slf.py();
        let inner = &slf.get().inner;
        let groups = py.detach(|| inner.all_task_groups()).or_raise()?;
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
    /// `Application.OnBackgroundActivated`), or removes it with `None`. Tasks without an entry
    /// point need it (or their group's).
    fn set_background_activated(
        &self,
        py: Python<'_>,
        handler: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        if let Some(h) = &handler
            && !h.is_callable()
        {
            return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "a background-activated handler must be callable, not {}",
                h.get_type().name()?
            )));
        }
        let mut handlers = lock(py, &self.handlers);
        let marker = handler.as_ref().map(|_| activation_marker());
        py.detach(|| self.inner.set_background_activated(None, marker))
            .or_raise()?;
        let old = std::mem::replace(&mut handlers.system, handler.map(Bound::unbind));
        drop(handlers);
        drop(old);
        Ok(())
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "System(app_id={}, store={})",
            py_repr(py, self.inner.app_id())?,
            py_repr(py, self.inner.store_path())?
        ))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(handlers) = try_lock(&self.handlers) {
            visit.call(&handlers.system)?;
            for (_, handler) in handlers.groups.values().flatten() {
                visit.call(handler)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let released = try_lock(&self.handlers).map(|mut h| std::mem::take(&mut *h));
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
        .filter(|s| s.get().inner == core)
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
    btb_core::set_default_system(system.as_ref().map(|s| s.get().inner.clone()));
    let old = std::mem::replace(&mut *lock(py, &DEFAULT), system);
    drop(old);
}

/// A registered task: an immutable snapshot of what was registered, in the system it lives in.
#[pyclass(frozen, module = "btb")]
pub struct BackgroundTaskRegistration {
    inner: btb_core::Registration,
    system: Py<System>,
}

impl BackgroundTaskRegistration {
    pub(crate) fn new(inner: btb_core::Registration, system: Py<System>) -> Self {
        BackgroundTaskRegistration { inner, system }
    }
}

#[pymethods]
impl BackgroundTaskRegistration {
    #[getter]
    fn task_id(&self) -> uuid::Uuid {
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
        IBackgroundTrigger::to_object(py, self.inner.trigger())
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

    /// True once a one-shot trigger has fired: the registration stays but never fires again.
    #[getter]
    fn spent(&self, py: Python<'_>) -> bool {
        py.detach(|| self.inner.is_spent())
    }

    /// The system the registration lives in.
    #[getter]
    fn system(&self, py: Python<'_>) -> Py<System> {
        self.system.clone_ref(py)
    }

    /// Removes the registration durably; `cancel_task` cancels a running instance with `ABORT`.
    fn unregister(&self, py: Python<'_>, cancel_task: bool) -> PyResult<()> {
        py.detach(|| self.inner.unregister(cancel_task)).or_raise()
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

/// A task group `(id, name)`. Naming it in a builder creates it; its `all_tasks` lists its own
/// registrations, which the system's `all_tasks` leaves out.
#[pyclass(frozen, module = "btb")]
pub struct BackgroundTaskRegistrationGroup {
    pub(crate) group: TaskGroup,
    /// The system the group came from; `None` for one made by the app (the default system).
    system: Option<Py<System>>,
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
    /// `BackgroundActivated`); returns a token for `remove_background_activated`.
    fn add_background_activated(&self, py: Python<'_>, handler: Bound<'_, PyAny>) -> PyResult<u64> {
        if !handler.is_callable() {
            return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "a background-activated handler must be callable, not {}",
                handler.get_type().name()?
            )));
        }
        self.system(py)?
            .get()
            .add_group_handler(py, &self.group.id, handler.unbind())
    }

    /// Removes a handler added with `add_background_activated`; an unknown token is ignored.
    fn remove_background_activated(&self, py: Python<'_>, token: u64) -> PyResult<()> {
        self.system(py)?
            .get()
            .remove_group_handler(py, &self.group.id, token)
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
