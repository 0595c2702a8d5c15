//! What a `System` (the façade, `system.rs`) and a `Registration` delegate to: one [`Backend`],
//! the broker this process runs (here) or another process's broker reached as a client
//! (`client.rs`). A client that took the store over answers from its own broker from then on
//! ([`Backend::current`]), through the same handles.

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock, RwLockWriteGuard};
use std::time::Duration;

use uuid::Uuid;

use super::handlers::{CompletedFn, Handlers, ProgressFn};
use super::{Broker, Event, Instance};
use crate::clock::Clock;
use crate::control::Filter;
use crate::error::{Error, ErrorKind, Result};
use crate::manifest::Manifest;
use crate::model::{
    ApplicationTriggerResult, BackgroundWorkCostValue, Builder, RunRecord, SystemConditionType,
    SystemTriggerType, TaskGroup, TaskRecord,
};
use crate::policy::Policy;
use crate::registry::EventKey;

/// Where a system lives. Methods taking `self: Arc<Self>` are called on [`Backend::current`].
pub(crate) trait Backend: Send + Sync {
    /// Where calls go now: a client that took the store over goes to its own broker.
    fn current(self: Arc<Self>) -> Arc<dyn Backend>;
    /// Whether this is a broker (`false`: a client of another process's broker).
    fn is_broker(&self) -> bool;
    /// Closes it (see `System::close`).
    fn close(self: Arc<Self>) -> Result<()>;

    /// The manifest in force (a broker's is replaced when the app is serviced).
    fn manifest(&self) -> Arc<Manifest>;
    fn app_id(&self) -> &str;
    fn policy(&self) -> &Policy;
    fn clock(&self) -> &Clock;
    fn is_simulated(&self) -> bool;
    fn store_path(&self) -> &str;

    fn control_socket(&self) -> Result<PathBuf>;
    fn broker_pid(&self) -> u32;
    fn is_closed(&self) -> bool;
    /// Checks that it is open and usable from this process.
    fn check(&self) -> Result<()>;
    fn start(self: Arc<Self>) -> Result<()>;

    /// This process's handler tables (a client keeps its own; its broker calls none of them).
    fn handler_table(&self) -> &RwLock<Handlers>;
    /// The handlers changed: a client tells its broker what it can run now; a broker tries the
    /// runs that wait for a handler again.
    fn offer(self: Arc<Self>);

    fn register(self: Arc<Self>, builder: &Builder) -> Result<Arc<TaskRecord>>;
    fn unregister(self: Arc<Self>, task_id: &Uuid, cancel_task: bool) -> Result<()>;
    fn list(self: Arc<Self>, filter: Filter) -> Result<Vec<Arc<TaskRecord>>>;
    fn all_task_groups(self: Arc<Self>) -> Result<Vec<TaskGroup>>;
    fn history(self: Arc<Self>, task_id: &Uuid) -> Result<Vec<RunRecord>>;
    /// When a registration is next due and whether it is spent.
    fn due(self: Arc<Self>, task_id: &Uuid) -> Result<(Option<i64>, bool)>;

    /// Fires application trigger `trigger_id` (see `System::request`).
    fn request(
        self: Arc<Self>,
        trigger_id: &Uuid,
        arguments: Option<serde_json::Value>,
    ) -> Result<ApplicationTriggerResult>;
    /// Whether a registration made with application trigger `id` lives here (a client: one it
    /// registered or listed).
    fn holds_application_trigger(&self, id: &Uuid) -> bool;
    fn raise_event(self: Arc<Self>, event: SystemTriggerType) -> Result<usize>;
    /// Signals a custom event (its name already checked).
    fn signal_event(self: Arc<Self>, name: &str) -> Result<usize>;

    fn set_state(self: Arc<Self>, condition: SystemConditionType, value: bool) -> Result<()>;
    fn state(self: Arc<Self>, condition: SystemConditionType) -> Result<Option<bool>>;
    fn state_source(self: Arc<Self>, condition: SystemConditionType) -> Result<&'static str>;
    fn background_work_cost(self: Arc<Self>) -> Result<Option<BackgroundWorkCostValue>>;

    fn wait_idle(&self, timeout: Duration) -> Result<bool>;
    fn next_event(&self, timeout: Duration) -> Result<Option<Event>>;
    fn serve_activation(self: Arc<Self>, timeout: Duration) -> Result<bool>;
    /// Services the app with `manifest` (see `System::service`).
    fn service(self: Arc<Self>, manifest: Manifest) -> Result<bool>;
    /// Uninstalls the app (see `System::uninstall`).
    fn uninstall(self: Arc<Self>) -> Result<usize>;
}

impl dyn Backend {
    pub(crate) fn handlers_mut(&self) -> RwLockWriteGuard<'_, Handlers> {
        self.handler_table()
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether this process has a background-activated handler for `group` (or the system's).
    pub(crate) fn has_activation(&self, group: Option<&str>) -> bool {
        let key = group.map(str::to_owned);
        let here = self
            .handler_table()
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .activation
            .contains_key(&key);
        here || group.is_some_and(super::groups::has_handler)
    }

    pub(crate) fn add_completed(&self, task_id: &Uuid, handler: CompletedFn) -> Result<u64> {
        self.check()?;
        Ok(self.handlers_mut().add_completed(*task_id, handler))
    }

    pub(crate) fn add_progress(&self, task_id: &Uuid, handler: ProgressFn) -> Result<u64> {
        self.check()?;
        Ok(self.handlers_mut().add_progress(*task_id, handler))
    }

    /// Removes a completed or progress handler; `false` if the token is unknown.
    pub(crate) fn remove_handler(&self, token: u64) -> bool {
        let removed = self.handlers_mut().remove(token);
        let found = removed.is_some();
        drop(removed); // with no lock held: a handler may hold references that call back into btb
        found
    }

    /// Every condition's state and source (`btbctl doctor`).
    pub(crate) fn doctor(
        self: Arc<Self>,
    ) -> Result<std::collections::BTreeMap<String, crate::view::StateView>> {
        SystemConditionType::ALL
            .iter()
            .map(|&c| {
                Ok((
                    c.name().to_owned(),
                    crate::view::StateView {
                        state: Arc::clone(&self).state(c)?,
                        source: Arc::clone(&self).state_source(c)?.to_owned(),
                    },
                ))
            })
            .collect()
    }
}

impl Backend for Broker {
    fn current(self: Arc<Self>) -> Arc<dyn Backend> {
        self
    }

    fn is_broker(&self) -> bool {
        true
    }

    fn close(self: Arc<Self>) -> Result<()> {
        Broker::close(&self)
    }

    fn manifest(&self) -> Arc<Manifest> {
        Broker::manifest(self)
    }

    fn app_id(&self) -> &str {
        &self.app_id
    }

    fn policy(&self) -> &Policy {
        &self.policy
    }

    fn clock(&self) -> &Clock {
        &self.clock
    }

    fn is_simulated(&self) -> bool {
        self.simulated
    }

    fn store_path(&self) -> &str {
        &self.store_path
    }

    fn control_socket(&self) -> Result<PathBuf> {
        if let Some(e) = self.unreachable.get() {
            return Err(e.clone());
        }
        match self
            .listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            Some(l) => Ok(l.path().to_owned()),
            None => Err(Error::state(
                "this system does not listen (an in-memory store, or closed)",
            )),
        }
    }

    fn broker_pid(&self) -> u32 {
        self.pid
    }

    fn is_closed(&self) -> bool {
        !self.lock().is_open()
    }

    fn check(&self) -> Result<()> {
        self.open_state().map(drop)
    }

    fn start(self: Arc<Self>) -> Result<()> {
        let mut st = self.open_state()?;
        Broker::start(&self, &mut st);
        Ok(())
    }

    fn handler_table(&self) -> &RwLock<Handlers> {
        &self.handlers
    }

    fn offer(self: Arc<Self>) {
        self.handlers_changed();
        if let Some(hook) = self.on_handlers.get() {
            hook();
        }
    }

    fn register(self: Arc<Self>, builder: &Builder) -> Result<Arc<TaskRecord>> {
        let this: Arc<dyn Backend> = Arc::clone(&self) as Arc<dyn Backend>;
        self.register_with(builder, |g| this.has_activation(g))
    }

    fn unregister(self: Arc<Self>, task_id: &Uuid, cancel_task: bool) -> Result<()> {
        self.unregister_task(task_id, cancel_task)
    }

    fn list(self: Arc<Self>, filter: Filter) -> Result<Vec<Arc<TaskRecord>>> {
        self.records(&filter)
    }

    fn all_task_groups(self: Arc<Self>) -> Result<Vec<TaskGroup>> {
        Ok(self.open_state()?.registry.groups().cloned().collect())
    }

    fn history(self: Arc<Self>, task_id: &Uuid) -> Result<Vec<RunRecord>> {
        drop(self.open_state()?);
        self.flush()?; // the runs recorded so far are committed
        self.check_pid()?;
        let store = self.store();
        store.as_ref().ok_or_else(super::closed)?.history(task_id)
    }

    fn due(self: Arc<Self>, task_id: &Uuid) -> Result<(Option<i64>, bool)> {
        let st = self.lock();
        Ok((st.next_due(task_id), st.registry.is_spent(task_id)))
    }

    fn request(
        self: Arc<Self>,
        trigger_id: &Uuid,
        arguments: Option<serde_json::Value>,
    ) -> Result<ApplicationTriggerResult> {
        check_arguments(arguments.as_ref())?;
        self.check_writable("the request")?;
        let mut st = self.open_state()?;
        if !self.policy.allow_application_triggers {
            return Ok(ApplicationTriggerResult::DisabledByPolicy);
        }
        let result = Broker::request(&self, &mut st, trigger_id, arguments);
        // A run that only the app `activate` names can take starts it from here, before the
        // worker wakes to the same finding: one thread hop less before the app's start (SPEC §12).
        let activating: Option<(Arc<Manifest>, Vec<Instance>)> =
            if st.activation.is_none() && !st.jobs.is_empty() {
                let manifest = self.manifest();
                manifest.activate().is_some().then(|| {
                    let jobs = st.jobs.iter().map(|job| job.instance.clone()).collect();
                    (manifest, jobs)
                })
            } else {
                None
            };
        let queued = self.writer.last();
        drop(st);
        if let Some((manifest, jobs)) = activating
            && jobs.iter().any(|i| self.activates_for(&manifest, i))
        {
            self.activate();
        }
        // ALLOWED is said once the fire is on disk (latched, or its run's start marker).
        self.acknowledge_written(queued)?;
        Ok(result)
    }

    fn holds_application_trigger(&self, id: &Uuid) -> bool {
        self.open_state().is_ok_and(|st| {
            !st.registry
                .listeners(&EventKey::Application(*id))
                .is_empty()
        })
    }

    fn raise_event(self: Arc<Self>, event: SystemTriggerType) -> Result<usize> {
        self.fire_event(&EventKey::System(event))
    }

    fn signal_event(self: Arc<Self>, name: &str) -> Result<usize> {
        self.fire_event(&EventKey::Custom(name.to_owned()))
    }

    fn set_state(self: Arc<Self>, condition: SystemConditionType, value: bool) -> Result<()> {
        if !self.simulated {
            return Err(Error::state(
                "set_state needs a system opened with the simulated source; this one reads the platform",
            ));
        }
        let mut st = self.open_state()?;
        self.heard(
            &mut st,
            crate::platform::Heard::Report {
                source: crate::platform::Source::Simulated,
                states: vec![(condition, Some(value))],
                fires: Vec::new(),
                initial: false,
            },
        );
        Ok(())
    }

    fn state(self: Arc<Self>, condition: SystemConditionType) -> Result<Option<bool>> {
        if condition == SystemConditionType::StorageNotLow {
            self.refresh_storage(); // read now, off the locks
        }
        let st = self.open_state()?;
        Ok(self.state_of(&st, condition))
    }

    fn state_source(self: Arc<Self>, condition: SystemConditionType) -> Result<&'static str> {
        let st = self.open_state()?;
        if self.simulated {
            return Ok(crate::platform::Source::Simulated.name());
        }
        Ok(st.states().source(condition).map_or_else(
            || crate::platform::unreported_source(condition),
            crate::platform::Source::name,
        ))
    }

    fn background_work_cost(self: Arc<Self>) -> Result<Option<BackgroundWorkCostValue>> {
        Ok(self.open_state()?.states().background_work_cost())
    }

    fn wait_idle(&self, timeout: Duration) -> Result<bool> {
        Broker::wait_idle(self, timeout)
    }

    fn next_event(&self, timeout: Duration) -> Result<Option<Event>> {
        Broker::next_event(self, timeout)
    }

    /// A process that holds the store itself (no broker ran) waits for its own runs.
    fn serve_activation(self: Arc<Self>, timeout: Duration) -> Result<bool> {
        Broker::wait_idle(&self, timeout)
    }

    fn service(self: Arc<Self>, manifest: Manifest) -> Result<bool> {
        Broker::service(&self, manifest)
    }

    fn uninstall(self: Arc<Self>) -> Result<usize> {
        Broker::uninstall(&self)
    }
}

/// What `wait_idle` and `next_event` say in a client (`UNSUPPORTED`).
pub(crate) fn client_only_broker(broker_pid: u32, what: &str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!(
            "{what} is for the process that runs the broker; this system is a client of the btb \
             broker in pid {broker_pid} (add a completed handler to hear of runs)"
        ),
    )
}

/// Application trigger arguments are a JSON object (`INVALID_ARGUMENT` otherwise).
pub(crate) fn check_arguments(arguments: Option<&serde_json::Value>) -> Result<()> {
    match arguments {
        Some(args) if !args.is_object() => Err(Error::invalid(format!(
            "application trigger arguments must be a JSON object, not {args}"
        ))),
        _ => Ok(()),
    }
}
