//! The system handle (the façade every face calls): opens a system — its own broker, or as a
//! client of another process's broker when that one holds the store — and delegates every call
//! to that one [`Backend`] (`broker/backend.rs`). Registering, running and answering requests
//! live in `broker/`; talking to another process's broker in `client.rs`.

use std::sync::{Arc, Mutex, Weak};

use uuid::Uuid;

use crate::broker::{Backend, Broker, Event, Handler, Instance};
use crate::client::Remote;
use crate::clock::Clock;
use crate::control::Filter;
use crate::error::{Error, ErrorKind, Result};
use crate::manifest::Manifest;
use crate::model::{
    ApplicationTriggerResult, Builder, RunRecord, SystemConditionType, SystemTriggerType,
    TaskGroup, TaskRecord,
};
use crate::policy::Policy;
use crate::store::{Store, StoreLocation};

pub use crate::broker::{CompletedFn, ProgressFn, Registration, Resolver};
pub use crate::options::SystemOptions;

/// Closes the system when the last user handle goes away.
struct Owner(Weak<dyn Backend>);

impl Drop for Owner {
    fn drop(&mut self) {
        if let Some(home) = self.0.upgrade() {
            let _ = home.close();
        }
    }
}

/// A handle to an open system. Clones share one system; when the last handle returned by
/// [`System::open`] (and its clones) is dropped, the system closes.
#[derive(Clone)]
pub struct System {
    home: Arc<dyn Backend>,
    _owner: Option<Arc<Owner>>,
}

impl std::fmt::Debug for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("System")
            .field("app_id", &self.app_id())
            .field("store", &self.store_path())
            .field("is_broker", &self.is_broker())
            .finish()
    }
}

impl System {
    /// A handle that does not keep the system open (what a registration's `system()` returns).
    pub(crate) fn view(home: Arc<dyn Backend>) -> System {
        System { home, _owner: None }
    }

    fn owning(home: Arc<dyn Backend>) -> System {
        {
            let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
            open.retain(|w| w.upgrade().is_some());
            open.push(Arc::downgrade(&home));
        }
        let owner = Arc::new(Owner(Arc::downgrade(&home)));
        System {
            home,
            _owner: Some(owner),
        }
    }

    /// Where calls go now (a client that took the store over: its own broker).
    fn backend(&self) -> Arc<dyn Backend> {
        Arc::clone(&self.home).current()
    }
}

impl PartialEq for System {
    fn eq(&self, other: &Self) -> bool {
        crate::broker::registration::same_home(&self.home, &other.home)
    }
}

impl Registration {
    /// The system this registration lives in (a handle that does not keep it open).
    pub fn system(&self) -> System {
        System::view(Arc::clone(&self.home))
    }
}

impl System {
    /// Opens a system: checks the policy, opens (and migrates) the store, loads its registrations,
    /// catches up on time that passed while nothing ran, and starts the broker. When another
    /// process's broker holds the store, the system is its client instead ([`System::is_broker`]
    /// is false); when that broker goes away, this process takes the store over.
    pub fn open(options: SystemOptions) -> Result<System> {
        let manifest = options.manifest.clone().ok_or_else(|| {
            Error::invalid(
                "no manifest: a system needs one (a TOML file or declarations made in code)",
            )
        })?;
        options.policy.validate()?;
        // Started by its broker for background work (SPEC §12): that broker is asked first, and
        // the store is probed only if it does not answer (`Remote::connect`).
        let probed = match Remote::held_by_activator(&manifest, &options) {
            Some(held) => Err(held),
            None => Store::try_open(&options.store, manifest.app_id(), options.policy.durability)?,
        };
        let store = match probed {
            Ok(store) => store,
            Err(held) => match Remote::connect(manifest.clone(), options.clone(), held)? {
                Ok(remote) => return Ok(System::owning(remote)),
                Err(store) => store, // its holder went away meanwhile
            },
        };
        let broker = Broker::open(manifest, &options, store, Default::default())?;
        Ok(System::owning(broker))
    }

    /// Whether this system runs the broker of its store (`false`: a client of another process's
    /// broker; a client becomes the broker when it takes the store over).
    pub fn is_broker(&self) -> bool {
        self.backend().is_broker()
    }

    /// The control socket through which other processes of the app reach this broker (SPEC §10);
    /// the error that kept it from listening (none for an in-memory store: `STATE`). A client
    /// reaches its broker through the broker's socket.
    pub fn control_socket(&self) -> Result<std::path::PathBuf> {
        self.backend().control_socket()
    }

    /// The process id of the broker this system uses (this process's when it is the broker).
    pub fn broker_pid(&self) -> u32 {
        self.backend().broker_pid()
    }

    /// Starts running tasks in a system opened with `paused` (what latched meanwhile runs now).
    /// Starting a running system changes nothing; nor does starting a client (its broker runs).
    pub fn start(&self) -> Result<()> {
        self.backend().start()
    }

    /// The manifest in force: the one opened with, or the one the app was serviced with since
    /// (`service`).
    pub fn manifest(&self) -> Arc<Manifest> {
        self.home.manifest()
    }

    pub fn app_id(&self) -> &str {
        self.home.app_id()
    }

    /// Services the app (SPEC §10): when `manifest`'s version differs from the one in force,
    /// cancels every run with `SERVICING_UPDATE`, takes `manifest` and fires
    /// `SERVICING_COMPLETE`; `false`, changing nothing, for the same version. For the broker
    /// (btbd re-reads its manifest on SIGHUP and when the file changes); `UNSUPPORTED` in a
    /// client.
    pub fn service(&self, manifest: Manifest) -> Result<bool> {
        self.backend().service(manifest)
    }

    /// Uninstalls the app (SPEC §10): cancels every run with `UNINSTALL`, unregisters every
    /// task, and removes the store and the control socket; in a client, its broker does. The
    /// system stays open, holding nothing, until closed. Returns how many tasks were registered.
    pub fn uninstall(&self) -> Result<usize> {
        self.backend().uninstall()
    }

    /// The policy this system was opened with (a client's broker applies its own).
    pub fn policy(&self) -> &Policy {
        self.home.policy()
    }

    pub fn clock(&self) -> &Clock {
        self.home.clock()
    }

    pub fn is_simulated(&self) -> bool {
        self.home.is_simulated()
    }

    /// The store's path (`":memory:"` for an ephemeral store).
    pub fn store_path(&self) -> &str {
        self.home.store_path()
    }

    pub fn is_closed(&self) -> bool {
        self.backend().is_closed()
    }

    /// Sets (or with `None` removes) the background-activated handler of the system
    /// (`group = None`) or of a task group: it runs the tasks that have no entry point.
    pub fn set_background_activated(
        &self,
        group: Option<&str>,
        handler: Option<Handler>,
    ) -> Result<()> {
        let backend = self.backend();
        backend.check()?;
        let key = group.map(str::to_owned);
        let old = match handler {
            Some(h) => backend.handlers_mut().activation.insert(key, h),
            None => backend.handlers_mut().activation.remove(&key),
        };
        drop(old); // a handler may hold references that call back into btb: drop it unlocked
        backend.offer();
        Ok(())
    }

    /// Registers (or with `None` removes) the in-process handler of a declared entry point.
    pub fn register_entry_point(&self, entry_point: &str, handler: Option<Handler>) -> Result<()> {
        let backend = self.backend();
        backend.check()?;
        if self.manifest().find(entry_point).is_none() {
            return Err(Error::new(
                ErrorKind::NotDeclared,
                format!(
                    "entry point {entry_point:?} is not declared in the manifest of {:?}",
                    self.app_id()
                ),
            ));
        }
        let old = match handler {
            Some(h) => backend
                .handlers_mut()
                .entry_points
                .insert(entry_point.to_owned(), h),
            None => backend.handlers_mut().entry_points.remove(entry_point),
        };
        drop(old);
        backend.offer();
        Ok(())
    }

    /// Sets the resolver asked for entry points without a registered handler.
    pub fn set_entry_point_resolver(&self, resolver: Option<Resolver>) -> Result<()> {
        let backend = self.backend();
        backend.check()?;
        let old = std::mem::replace(&mut backend.handlers_mut().resolver, resolver);
        drop(old);
        backend.offer();
        Ok(())
    }

    /// Validates and registers a task (SPEC §2); returns once the registration is committed.
    /// The builder is borrowed: on an error, fix it and call again. In a client, the broker
    /// validates and commits it, with the same errors.
    pub fn register(&self, builder: &Builder) -> Result<Registration> {
        let record = self.backend().register(builder)?;
        Ok(self.registration(record))
    }

    fn registration(&self, record: Arc<TaskRecord>) -> Registration {
        Registration::new(Arc::clone(&self.home), record)
    }

    /// Removes a registration durably. `cancel_task` cancels a running instance with `ABORT`;
    /// otherwise it finishes.
    pub fn unregister(&self, task_id: &Uuid, cancel_task: bool) -> Result<()> {
        self.backend().unregister(task_id, cancel_task)
    }

    fn list(&self, filter: Filter) -> Result<Vec<Registration>> {
        let records = self.backend().list(filter)?;
        Ok(records.into_iter().map(|r| self.registration(r)).collect())
    }

    /// Registrations outside any task group, in registration order (Windows `AllTasks`).
    pub fn all_tasks(&self) -> Result<Vec<Registration>> {
        self.list(Filter::Ungrouped)
    }

    /// The registrations of one task group, in registration order.
    pub fn group_tasks(&self, group_id: &str) -> Result<Vec<Registration>> {
        self.list(Filter::Group {
            id: group_id.to_owned(),
        })
    }

    /// Groups that hold at least one registration, by id (Windows `AllTaskGroups`).
    pub fn all_task_groups(&self) -> Result<Vec<TaskGroup>> {
        self.backend().all_task_groups()
    }

    /// One group by id (Windows `GetTaskGroup`).
    pub fn task_group(&self, group_id: &str) -> Result<TaskGroup> {
        self.all_task_groups()?
            .into_iter()
            .find(|g| g.id == group_id)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("task group {group_id:?} has no registrations"),
                )
            })
    }

    /// Any registration by task id, grouped or not.
    pub fn find(&self, task_id: &Uuid) -> Result<Registration> {
        self.list(Filter::Task { task_id: *task_id })?
            .pop()
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("task {task_id} is not registered"),
                )
            })
    }

    /// Fires the registrations made with application trigger `trigger_id` (Windows
    /// `ApplicationTrigger.RequestAsync`). `arguments` (a JSON object) reach the instance as its
    /// trigger details. `CURRENTLY_RUNNING` when one of them runs or already has a run pending
    /// (nothing is queued: each `ALLOWED` answer causes exactly one run),
    /// `DISABLED_BY_POLICY` when the policy disallows application triggers, `UNKNOWN_ERROR` when no
    /// registration holds the trigger.
    pub fn request(
        &self,
        trigger_id: &Uuid,
        arguments: Option<serde_json::Value>,
    ) -> Result<ApplicationTriggerResult> {
        self.backend().request(trigger_id, arguments)
    }

    /// Raises a system event (the platform source does this for the events it sees; apps with a
    /// source of their own feed theirs). Returns how many registrations fired.
    pub fn raise_event(&self, event: SystemTriggerType) -> Result<usize> {
        self.backend().raise_event(event)
    }

    /// Signals a custom event in this system (other processes use [`crate::control::signal_event`]).
    /// The name follows the rule of the control socket (1–256 bytes, no control character), so a
    /// name is accepted or refused alike in-process and from another process.
    pub fn signal_event(&self, trigger_id: &str) -> Result<usize> {
        crate::control::check_name(trigger_id).map_err(Error::invalid)?;
        self.backend().signal_event(trigger_id)
    }

    /// Sets a state of the simulated source; `STATE` on a system using the platform sources.
    pub fn set_state(&self, condition: SystemConditionType, value: bool) -> Result<()> {
        self.backend().set_state(condition, value)
    }

    /// The current state of a condition: `Some(holds)`, or `None` while unknown (which does not
    /// hold). SPEC §6: from the simulated source, or read from the machine (by the broker).
    pub fn state(&self, condition: SystemConditionType) -> Result<Option<bool>> {
        self.backend().state(condition)
    }

    /// What a condition's state is read from: `simulated`, `statvfs`, … or `unknown` (SPEC §6).
    pub fn state_source(&self, condition: SystemConditionType) -> Result<&'static str> {
        self.backend().state_source(condition)
    }

    /// Every condition's state and source (`btbctl doctor`).
    pub fn doctor(&self) -> Result<std::collections::BTreeMap<String, crate::view::StateView>> {
        self.backend().doctor()
    }

    /// Windows `BackgroundWorkCost.CurrentBackgroundWorkCost` (`None` while unknown).
    pub fn background_work_cost(&self) -> Result<Option<crate::BackgroundWorkCostValue>> {
        self.backend().background_work_cost()
    }

    /// For an app started for background work (`activate` in the manifest, `BTB_ACTIVATION=1`
    /// in its environment; SPEC §12): serves the runs its broker hands it, and returns once none
    /// is left for it — no run waits for a handler it offers, and none of those runs is going —
    /// `true`; or `false` at `timeout`. Register the handlers first. A process that holds the
    /// store itself (no broker ran) waits for its own runs, as `wait_idle`.
    pub fn serve_activation(&self, timeout: std::time::Duration) -> Result<bool> {
        self.backend().serve_activation(timeout)
    }

    /// Waits until nothing runs or is runnable and every handler has been called: `true`, or
    /// `false` after `timeout` — the store error (`STORE`) instead when the work is held because
    /// the store cannot be written (SPEC §7). Not from a btb handler thread (`STATE`). In a client, which runs
    /// nothing itself, `UNSUPPORTED` (wait for a completed handler instead).
    pub fn wait_idle(&self, timeout: std::time::Duration) -> Result<bool> {
        self.backend().wait_idle(timeout)
    }

    /// Takes the next event of the pull queue (runs of tasks whose handler is `Handler::Queued`,
    /// and their cancellations), waiting at most `timeout`; `None` on timeout. `UNSUPPORTED` in a
    /// client (its broker runs the tasks).
    pub fn next_event(&self, timeout: std::time::Duration) -> Result<Option<Event>> {
        self.backend().next_event(timeout)
    }

    /// Adds a completed handler for a registration; returns its token. In a client it is called
    /// in this process, when the broker reports the end of a run.
    pub fn add_completed(&self, task_id: &Uuid, handler: CompletedFn) -> Result<u64> {
        self.backend().add_completed(task_id, handler)
    }

    /// Adds a progress handler for a registration; returns its token.
    pub fn add_progress(&self, task_id: &Uuid, handler: ProgressFn) -> Result<u64> {
        self.backend().add_progress(task_id, handler)
    }

    /// Removes a completed or progress handler; `false` if the token is unknown.
    pub fn remove_handler(&self, token: u64) -> bool {
        self.backend().remove_handler(token)
    }

    /// Whether the completed or progress handler with this token is still held — `false` once it
    /// was removed, or dropped with its registration (unregistered or replaced, last run ended).
    /// Bindings that mirror handlers (for their garbage collector) release theirs then.
    pub fn holds_handler(&self, token: u64) -> bool {
        let backend = self.backend();
        let table = backend.handler_table();
        table.read().unwrap_or_else(|p| p.into_inner()).holds(token)
    }

    /// The recorded runs of a registration, oldest first.
    pub fn history(&self, task_id: &Uuid) -> Result<Vec<RunRecord>> {
        self.backend().history(task_id)
    }

    /// Closes the system: cancels running instances with `TERMINATING`, waits at most the policy's
    /// grace for them, records the rest as canceled, stops the broker and releases the store.
    /// Later calls fail with `STATE`. Closing twice is harmless. A client closes its connections
    /// (and, if it took the store over, its broker).
    pub fn close(&self) -> Result<()> {
        Arc::clone(&self.home).close()
    }
}

static DEFAULT: Mutex<Option<System>> = Mutex::new(None);

/// The systems opened in this process (an application trigger finds its registrations here).
static OPEN: Mutex<Vec<Weak<dyn Backend>>> = Mutex::new(Vec::new());

/// Fires application trigger `trigger_id` wherever its registrations live (WinRT
/// `ApplicationTrigger.RequestAsync`; SPEC §9, objects are bound by use): in every open system of
/// this process that holds a registration made with it. When none does, the default system is
/// asked if one is set or configured (`BTB_MANIFEST`); otherwise the answer is `UNKNOWN_ERROR`
/// (no registration holds the trigger).
///
/// With several systems: `ALLOWED` if it fired in any, else the first of `CURRENTLY_RUNNING`,
/// `DISABLED_BY_POLICY`, `UNKNOWN_ERROR` that one of them answered; an error only if every system
/// failed (the first error).
pub fn request_application_trigger(
    trigger_id: &Uuid,
    arguments: Option<serde_json::Value>,
) -> Result<ApplicationTriggerResult> {
    let holders: Vec<System> = {
        let open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
        open.iter().filter_map(Weak::upgrade).collect::<Vec<_>>()
    }
    .into_iter()
    .filter(|home| {
        Arc::clone(home)
            .current()
            .holds_application_trigger(trigger_id)
    })
    .map(System::view)
    .collect();
    if holders.is_empty() {
        let configured = DEFAULT.lock().unwrap_or_else(|p| p.into_inner()).is_some()
            || std::env::var_os("BTB_MANIFEST").is_some_and(|v| !v.is_empty());
        return if configured {
            default_system()?.request(trigger_id, arguments)
        } else {
            log::debug!(
                target: "btb",
                "request of application trigger {trigger_id}: no open system of this process holds it, and there is no default system (UNKNOWN_ERROR)"
            );
            Ok(ApplicationTriggerResult::UnknownError)
        };
    }
    use ApplicationTriggerResult as R;
    let mut answers = Vec::new();
    let mut first_error = None;
    for system in holders {
        match system.request(trigger_id, arguments.clone()) {
            Ok(answer) => answers.push(answer),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    for wanted in [
        R::Allowed,
        R::CurrentlyRunning,
        R::DisabledByPolicy,
        R::UnknownError,
    ] {
        if answers.contains(&wanted) {
            return Ok(wanted);
        }
    }
    Err(first_error.expect("every holder answered or failed"))
}

/// Sets (or clears) the default system used by `register` without a system.
pub fn set_default_system(system: Option<System>) {
    let old = std::mem::replace(
        &mut *DEFAULT.lock().unwrap_or_else(|p| p.into_inner()),
        system,
    );
    drop(old);
}

/// The default system: the one set with [`set_default_system`], else one opened on first use from
/// `BTB_MANIFEST` (a manifest path) and `BTB_STORE` (a store path or `:memory:`; default: the
/// per-app file under `$XDG_STATE_HOME`). A failed open is retried on the next call.
pub fn default_system() -> Result<System> {
    let mut slot = DEFAULT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(system) = slot.as_ref() {
        return Ok(system.clone());
    }
    let manifest_path = std::env::var_os("BTB_MANIFEST")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            Error::state(
                "no default btb system: set BTB_MANIFEST to the path of your btb.toml manifest \
             (and optionally BTB_STORE), or open a system and make it the default \
             (btb_system_set_default / btb.set_default_system)",
            )
        })?;
    let manifest = Manifest::load(&manifest_path)?;
    let store = match std::env::var("BTB_STORE") {
        Ok(s) if !s.is_empty() => StoreLocation::parse(&s),
        _ => StoreLocation::Default,
    };
    let system = System::open(SystemOptions {
        manifest: Some(manifest),
        store,
        ..SystemOptions::default()
    })?;
    *slot = Some(system.clone());
    Ok(system)
}

#[allow(unused)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<System>();
    is::<Registration>();
    is::<Instance>();
}
