//! The system handle: one broker with an app identity and manifest, a store, a clock, a policy and
//! the state of the machine. Registration lives here; running tasks lives in `runtime.rs`.

use std::sync::{Arc, Mutex, Weak};

use uuid::Uuid;

use crate::broker::{Broker, Event, Handler, Instance, Locked, State};
use crate::clock::Clock;
use crate::error::{Error, ErrorKind, Result};
use crate::manifest::Manifest;
use crate::model::{
    ApplicationTriggerResult, Builder, NamePolicy, RunRecord, SystemConditionType,
    SystemTriggerType, TaskGroup, TaskRecord,
};
use crate::policy::Policy;
use crate::registry::{EventKey, Registry};
use crate::store::{Store, StoreLocation};
use crate::validate::validate;

pub use crate::broker::{CompletedFn, ProgressFn, Resolver};
pub use crate::registration::Registration;

/// Everything needed to open a system.
#[derive(Debug, Clone, Default)]
pub struct SystemOptions {
    pub manifest: Option<Manifest>,
    pub store: StoreLocation,
    pub clock: Clock,
    /// Use the simulated source (states and events set by the app) instead of the Linux sources.
    pub simulated: bool,
    /// Where the Linux sources look (ignored with `simulated`).
    pub platform: crate::platform::PlatformOptions,
    pub policy: Policy,
    /// Open without running anything until [`System::start`]: fires (including the catch-up of
    /// missed time at open) latch meanwhile. Lets an app install its handlers first, so runs due
    /// at open find them.
    pub paused: bool,
}

/// Closes the system when the last user handle goes away.
struct Owner(Weak<Broker>);

impl Drop for Owner {
    fn drop(&mut self) {
        if let Some(shared) = self.0.upgrade() {
            let _ = shared.close();
        }
    }
}

/// A handle to an open system. Clones share one system; when the last handle returned by
/// [`System::open`] (and its clones) is dropped, the system closes.
#[derive(Clone)]
pub struct System {
    pub(crate) shared: Arc<Broker>,
    _owner: Option<Arc<Owner>>,
}

impl std::fmt::Debug for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("System")
            .field("app_id", &self.shared.manifest.app_id())
            .field("store", &self.shared.store_path)
            .finish()
    }
}

impl System {
    /// A handle to an open broker that does not keep it open (what a registration's `system()`
    /// returns).
    pub(crate) fn view(shared: Arc<Broker>) -> System {
        System {
            shared,
            _owner: None,
        }
    }
}

impl PartialEq for System {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl System {
    /// Opens a system: checks the policy, opens (and migrates) the store, loads its registrations,
    /// catches up on time that passed while nothing ran, and starts the broker.
    pub fn open(options: SystemOptions) -> Result<System> {
        let manifest = options.manifest.ok_or_else(|| {
            Error::invalid(
                "no manifest: a system needs one (a TOML file or declarations made in code)",
            )
        })?;
        options.policy.validate()?;
        let mut store = Store::open(&options.store, manifest.app_id(), options.policy.durability)?;
        let stored = store.load()?;
        let servicing = store.get_meta("manifest_version")?;
        if servicing.as_deref() != Some(manifest.version()) {
            store.set_meta("manifest_version", manifest.version())?;
        }
        let mut registry = Registry::with_capacity(stored.len());
        let mut latched = Vec::new();
        for t in stored {
            if t.spent {
                registry.mark_spent(t.record.task_id);
            }
            if let Some(details) = t.pending {
                latched.push((t.record.task_id, details));
            }
            registry.add(Arc::new(t.record));
        }
        let store_path = store.path().to_owned();
        // STORAGE_NOT_LOW measures the store's file system; an in-memory store, the state directory.
        let storage_dir = match &options.store {
            StoreLocation::Memory => StoreLocation::default_path(manifest.app_id()).ok(),
            _ => Some(std::path::PathBuf::from(&store_path)),
        }
        .and_then(|p| p.parent().map(std::path::Path::to_path_buf))
        .unwrap_or_else(std::env::temp_dir);
        let shared = Arc::new(Broker::new(
            manifest,
            options.clock,
            options.simulated,
            options.platform,
            options.policy,
            storage_dir,
            store,
            State::new(registry, options.paused),
        )?);
        {
            let mut st = shared.lock();
            shared.restore(
                &mut st,
                latched,
                servicing.is_some() && servicing.as_deref() != Some(shared.manifest.version()),
            )?;
        }
        shared.start_threads()?;
        if !shared.simulated {
            shared.start_platform();
        }
        if let Clock::Manual(clock) = &shared.clock {
            let weak = Arc::downgrade(&shared);
            clock.subscribe(Arc::new(move || {
                let Some(shared) = weak.upgrade() else {
                    return false; // the system is gone: unsubscribe
                };
                shared.clock_advanced();
                true
            }));
        }
        if options.store != StoreLocation::Memory {
            let weak = Arc::downgrade(&shared);
            let handler: crate::control::Handler = Arc::new(move |request| match weak.upgrade() {
                Some(shared) => System::view(shared).answer(request),
                None => crate::control::Reply::error(&crate::broker::closed()),
            });
            match crate::control::ControlListener::bind(shared.manifest.app_id(), handler) {
                Ok(l) => *shared.listener.lock().unwrap_or_else(|p| p.into_inner()) = Some(l),
                Err(e) => {
                    log::warn!(target: "btb", "other processes (btbctl, signal_event) will not reach this system: {e}")
                }
            }
        }
        {
            let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
            open.retain(|w| w.strong_count() > 0);
            open.push(Arc::downgrade(&shared));
        }
        let owner = Arc::new(Owner(Arc::downgrade(&shared)));
        Ok(System {
            shared,
            _owner: Some(owner),
        })
    }

    /// Starts running tasks in a system opened with `paused` (what latched meanwhile runs now).
    /// Starting a running system changes nothing.
    pub fn start(&self) -> Result<()> {
        let mut st = self.locked()?;
        self.shared.start(&mut st);
        Ok(())
    }

    /// Locks the state after checking the process (a forked child must not touch the parent's
    /// threads or locks) and that the system is open.
    pub(crate) fn locked(&self) -> Result<Locked<'_>> {
        self.shared.open_state()
    }

    /// Locks the store (lock 0: before the state, never under it) after the same checks.
    fn store(&self) -> Result<std::sync::MutexGuard<'_, Option<Store>>> {
        self.shared.check_pid()?;
        let store = self.shared.store();
        if store.is_none() {
            return Err(crate::broker::closed());
        }
        Ok(store)
    }

    pub fn manifest(&self) -> &Manifest {
        &self.shared.manifest
    }

    pub fn app_id(&self) -> &str {
        self.shared.manifest.app_id()
    }

    pub fn policy(&self) -> &Policy {
        &self.shared.policy
    }

    pub fn clock(&self) -> &Clock {
        &self.shared.clock
    }

    pub fn is_simulated(&self) -> bool {
        self.shared.simulated
    }

    /// The store's path (`":memory:"` for an ephemeral store).
    pub fn store_path(&self) -> &str {
        &self.shared.store_path
    }

    pub fn is_closed(&self) -> bool {
        !self.shared.lock().is_open()
    }

    fn handlers(&self) -> std::sync::RwLockWriteGuard<'_, crate::registry::Handlers> {
        self.shared.handlers_mut()
    }

    /// Sets (or with `None` removes) the background-activated handler of the system
    /// (`group = None`) or of a task group: it runs the tasks that have no entry point.
    pub fn set_background_activated(
        &self,
        group: Option<&str>,
        handler: Option<Handler>,
    ) -> Result<()> {
        drop(self.locked()?);
        let key = group.map(str::to_owned);
        let old = match handler {
            Some(h) => self.handlers().activation.insert(key, h),
            None => self.handlers().activation.remove(&key),
        };
        drop(old); // a handler may hold references that call back into btb: drop it unlocked
        Ok(())
    }

    /// Registers (or with `None` removes) the in-process handler of a declared entry point.
    pub fn register_entry_point(&self, entry_point: &str, handler: Option<Handler>) -> Result<()> {
        drop(self.locked()?);
        if self.shared.manifest.find(entry_point).is_none() {
            return Err(Error::new(
                ErrorKind::NotDeclared,
                format!(
                    "entry point {entry_point:?} is not declared in the manifest of {:?}",
                    self.app_id()
                ),
            ));
        }
        let old = match handler {
            Some(h) => self
                .handlers()
                .entry_points
                .insert(entry_point.to_owned(), h),
            None => self.handlers().entry_points.remove(entry_point),
        };
        drop(old);
        Ok(())
    }

    /// Sets the resolver asked for entry points without a registered handler.
    pub fn set_entry_point_resolver(&self, resolver: Option<Resolver>) -> Result<()> {
        drop(self.locked()?);
        let old = std::mem::replace(&mut self.handlers().resolver, resolver);
        drop(old);
        Ok(())
    }

    /// Validates and registers a task (SPEC §2); returns once the registration is committed.
    /// The builder is borrowed: on an error, fix it and call again.
    pub fn register(&self, builder: &Builder) -> Result<Registration> {
        // The store first (lock 0), held to the end: registrations commit one at a time, in the
        // order their name policies were decided; the state lock is not held during the commit.
        let mut store = self.store()?;
        let state = self.shared.lock_open()?;
        let valid = {
            let handlers = self.shared.handlers();
            validate(builder, &self.shared.manifest, &self.shared.policy, |g| {
                handlers.activation.contains_key(&g.map(str::to_owned))
                    || g.is_some_and(crate::groups::has_handler)
            })?
        };
        let group_id = builder.task_group.as_ref().map(|g| g.id.as_str());
        let same_name: Vec<Uuid> = match valid.name_policy {
            NamePolicy::Allow => Vec::new(),
            _ => state.registry.named(group_id, &valid.name),
        };
        let mut replaced = Vec::new();
        match valid.name_policy {
            NamePolicy::Allow => {}
            NamePolicy::Keep => {
                if let Some(existing) = same_name.first() {
                    let record = Arc::clone(state.registry.get(existing).expect("indexed"));
                    return Ok(self.registration(record));
                }
            }
            NamePolicy::Fail => {
                if let Some(existing) = same_name.first() {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        format!(
                            "a task named {:?} is already registered{} (task id {existing}) and the name policy is FAIL",
                            valid.name,
                            group_id
                                .map(|g| format!(" in task group {g:?}"))
                                .unwrap_or_default(),
                        ),
                    ));
                }
            }
            NamePolicy::Replace => replaced = same_name,
        }
        let now = self.shared.clock.now_ms();
        let next_due_ms = self.shared.first_due(&valid.trigger, now);
        // A group keeps the name it was created with; naming it again with another name joins it.
        let task_group = builder.task_group.as_ref().map(|g| {
            state
                .registry
                .group(&g.id)
                .map_or_else(|| g.clone(), Clone::clone)
        });
        let record = Arc::new(TaskRecord {
            task_id: Uuid::new_v4(),
            name: valid.name,
            task_entry_point: valid.task_entry_point,
            task_group,
            cancel_on_condition_loss: builder.cancel_on_condition_loss,
            is_network_requested: builder.is_network_requested,
            trigger: valid.trigger,
            conditions: valid.conditions,
            registered_at_ms: now,
            next_due_ms,
            seq: state.registry.next_seq(),
        });
        drop(state);
        store
            .as_mut()
            .expect("checked open")
            .insert(&record, &replaced)?;
        // Durable now: publish it (even if a close began meanwhile — it is registered).
        let mut state = self.shared.lock();
        self.shared
            .registered(&mut state, Arc::clone(&record), &replaced, now);
        // The store first: the state guard then drops what the replaced registrations held
        // (their handlers), which may call back into btb and register again.
        drop(store);
        drop(state);
        Ok(self.registration(record))
    }

    fn registration(&self, record: Arc<TaskRecord>) -> Registration {
        Registration::new(Arc::clone(&self.shared), record)
    }

    /// Removes a registration durably. `cancel_task` cancels a running instance with `ABORT`;
    /// otherwise it finishes.
    pub fn unregister(&self, task_id: &Uuid, cancel_task: bool) -> Result<()> {
        let mut store = self.store()?; // as in `register`: the commit holds no state lock
        if !self.shared.lock_open()?.registry.contains(task_id) {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("task {task_id} is not registered (already unregistered?)"),
            ));
        }
        store.as_mut().expect("checked open").delete(task_id)?;
        let mut state = self.shared.lock();
        self.shared.unregistered(&mut state, task_id, cancel_task);
        drop(store); // first: see `register`
        drop(state);
        Ok(())
    }

    fn list(&self, keep: impl Fn(&TaskRecord) -> bool) -> Result<Vec<Registration>> {
        let state = self.locked()?;
        let mut records: Vec<Arc<TaskRecord>> = state
            .registry
            .records()
            .filter(|t| keep(t))
            .cloned()
            .collect();
        drop(state);
        records.sort_by_key(|t| t.seq);
        Ok(records.into_iter().map(|r| self.registration(r)).collect())
    }

    /// Registrations outside any task group, in registration order (Windows `AllTasks`).
    pub fn all_tasks(&self) -> Result<Vec<Registration>> {
        self.list(|t| t.task_group.is_none())
    }

    /// The registrations of one task group, in registration order.
    pub fn group_tasks(&self, group_id: &str) -> Result<Vec<Registration>> {
        self.list(|t| t.task_group.as_ref().is_some_and(|g| g.id == group_id))
    }

    /// Groups that hold at least one registration, by id (Windows `AllTaskGroups`).
    pub fn all_task_groups(&self) -> Result<Vec<TaskGroup>> {
        Ok(self.locked()?.registry.groups().cloned().collect())
    }

    /// One group by id (Windows `GetTaskGroup`).
    pub fn task_group(&self, group_id: &str) -> Result<TaskGroup> {
        self.locked()?
            .registry
            .group(group_id)
            .cloned()
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("task group {group_id:?} has no registrations"),
                )
            })
    }

    /// Any registration by task id, grouped or not.
    pub fn find(&self, task_id: &Uuid) -> Result<Registration> {
        let record = self
            .locked()?
            .registry
            .get(task_id)
            .cloned()
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("task {task_id} is not registered"),
                )
            })?;
        Ok(self.registration(record))
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
        if let Some(args) = &arguments
            && !args.is_object()
        {
            return Err(Error::invalid(format!(
                "application trigger arguments must be a JSON object, not {args}"
            )));
        }
        let mut st = self.locked()?;
        if !self.shared.policy.allow_application_triggers {
            return Ok(ApplicationTriggerResult::DisabledByPolicy);
        }
        Ok(self.shared.request(&mut st, trigger_id, arguments))
    }

    /// Raises a system event (the platform source does this for the events it sees; apps with a
    /// source of their own feed theirs). Returns how many registrations fired.
    pub fn raise_event(&self, event: SystemTriggerType) -> Result<usize> {
        self.fire_event(&EventKey::System(event))
    }

    /// Signals a custom event in this system (other processes use [`crate::control::signal_event`]).
    /// The name follows the rule of the control socket (1–256 bytes, no control character), so a
    /// name is accepted or refused alike in-process and from another process.
    pub fn signal_event(&self, trigger_id: &str) -> Result<usize> {
        crate::control::check_name(trigger_id).map_err(Error::invalid)?;
        self.fire_event(&EventKey::Custom(trigger_id.to_owned()))
    }

    fn fire_event(&self, key: &EventKey) -> Result<usize> {
        let mut st = self.locked()?;
        Ok(self.shared.fire_key(&mut st, key))
    }

    /// Sets a state of the simulated source; `STATE` on a system using the platform sources.
    pub fn set_state(&self, condition: SystemConditionType, value: bool) -> Result<()> {
        if !self.shared.simulated {
            return Err(Error::state(
                "set_state needs a system opened with the simulated source; this one reads the platform",
            ));
        }
        let mut st = self.locked()?;
        self.shared.heard(
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

    /// The current state of a condition: `Some(holds)`, or `None` while unknown (which does not
    /// hold). SPEC §6: from the simulated source, or read from the machine.
    pub fn state(&self, condition: SystemConditionType) -> Result<Option<bool>> {
        let st = self.locked()?;
        Ok(self.shared.state_of(&st, condition))
    }

    /// What a condition's state is read from: `simulated`, `statvfs`, … or `unknown` (SPEC §6).
    pub fn state_source(&self, condition: SystemConditionType) -> Result<&'static str> {
        let st = self.locked()?;
        if self.shared.simulated {
            return Ok(crate::platform::Source::Simulated.name());
        }
        Ok(st.states().source(condition).map_or_else(
            || crate::platform::unreported_source(condition),
            crate::platform::Source::name,
        ))
    }

    /// Windows `BackgroundWorkCost.CurrentBackgroundWorkCost` (`None` while unknown).
    pub fn background_work_cost(&self) -> Result<Option<crate::BackgroundWorkCostValue>> {
        Ok(self.locked()?.states().background_work_cost())
    }

    /// Waits until nothing runs or is runnable and every handler has been called: `true`, or
    /// `false` after `timeout`. Not from a btb handler thread (`STATE`).
    pub fn wait_idle(&self, timeout: std::time::Duration) -> Result<bool> {
        self.shared.wait_idle(timeout)
    }

    /// Takes the next event of the pull queue (runs of tasks whose handler is `Handler::Queued`,
    /// and their cancellations), waiting at most `timeout`; `None` on timeout.
    pub fn next_event(&self, timeout: std::time::Duration) -> Result<Option<Event>> {
        self.shared.next_event(timeout)
    }

    /// Adds a completed handler for a registration; returns its token.
    pub fn add_completed(&self, task_id: &Uuid, handler: CompletedFn) -> Result<u64> {
        drop(self.locked()?);
        Ok(self.handlers().add_completed(*task_id, handler))
    }

    /// Adds a progress handler for a registration; returns its token.
    pub fn add_progress(&self, task_id: &Uuid, handler: ProgressFn) -> Result<u64> {
        drop(self.locked()?);
        Ok(self.handlers().add_progress(*task_id, handler))
    }

    /// Removes a completed or progress handler; `false` if the token is unknown.
    pub fn remove_handler(&self, token: u64) -> bool {
        let removed = self.handlers().remove(token);
        let found = removed.is_some();
        drop(removed); // with no lock held: a handler may hold references that call back into btb
        found
    }

    /// Whether the completed or progress handler with this token is still held — `false` once it
    /// was removed, or dropped with its registration (unregistered or replaced, last run ended).
    /// Bindings that mirror handlers (for their garbage collector) release theirs then.
    pub fn holds_handler(&self, token: u64) -> bool {
        self.shared.handlers().holds(token)
    }

    /// The recorded runs of a registration, oldest first.
    pub fn history(&self, task_id: &Uuid) -> Result<Vec<RunRecord>> {
        drop(self.locked()?);
        self.shared.flush(); // the runs recorded so far are committed
        self.store()?
            .as_ref()
            .expect("checked open")
            .history(task_id)
    }

    /// Closes the system: cancels running instances with `TERMINATING`, waits at most the policy's
    /// grace for them, records the rest as canceled, stops the broker and releases the store.
    /// Later calls fail with `STATE`. Closing twice is harmless.
    pub fn close(&self) -> Result<()> {
        self.shared.close()
    }
}

static DEFAULT: Mutex<Option<System>> = Mutex::new(None);

/// The systems opened in this process (an application trigger finds its registrations here).
static OPEN: Mutex<Vec<Weak<Broker>>> = Mutex::new(Vec::new());

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
    let key = EventKey::Application(*trigger_id);
    let holders: Vec<System> = {
        let open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
        open.iter().filter_map(Weak::upgrade).collect::<Vec<_>>()
    }
    .into_iter()
    .filter(|shared| {
        shared
            .open_state()
            .is_ok_and(|st| !st.registry.listeners(&key).is_empty())
    })
    .map(|shared| System {
        shared,
        _owner: None,
    })
    .collect();
    if holders.is_empty() {
        let configured = DEFAULT.lock().unwrap_or_else(|p| p.into_inner()).is_some()
            || std::env::var_os("BTB_MANIFEST").is_some_and(|v| !v.is_empty());
        return if configured {
            default_system()?.request(trigger_id, arguments)
        } else {
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

impl System {
    /// Answers a request of the control socket (SPEC §10: `btbctl`, `signal_event`).
    fn answer(&self, request: crate::control::Request) -> crate::control::Reply {
        use crate::control::{Reply, Request};
        let result = match request {
            Request::Hello { .. } => Ok(Reply::Done),
            Request::Signal { name } => self
                .fire_event(&EventKey::Custom(name))
                .map(|count| Reply::Fired { count }),
            Request::List => self
                .shared
                .task_views(None)
                .map(|tasks| Reply::Tasks { tasks }),
            Request::Show { task } => {
                self.shared
                    .task_views(Some(&task))
                    .map(|mut v| Reply::Task {
                        task: Box::new(v.remove(0)),
                    })
            }
            Request::History { task } => self.task_id_of(&task).and_then(|id| {
                Ok(Reply::Runs {
                    runs: self.history(&id)?.iter().map(Into::into).collect(),
                })
            }),
            Request::Run {
                task,
                ignore_conditions,
            } => self
                .shared
                .run_now(&task, ignore_conditions)
                .map(|()| Reply::Done),
            Request::Unregister { task } => self
                .task_id_of(&task)
                .and_then(|id| self.unregister(&id, true))
                .map(|()| Reply::Done),
            Request::Doctor => self.doctor().map(|states| Reply::Doctor {
                states,
                broker: Some(std::process::id()),
            }),
        };
        result.unwrap_or_else(|e| Reply::error(&e))
    }

    fn task_id_of(&self, task: &str) -> Result<Uuid> {
        let st = self.locked()?;
        self.shared.find_task(&st, task)
    }

    /// Every condition's state and source (`btbctl doctor`).
    pub fn doctor(&self) -> Result<std::collections::BTreeMap<String, crate::view::StateView>> {
        SystemConditionType::ALL
            .iter()
            .map(|&c| {
                Ok((
                    c.name().to_owned(),
                    crate::view::StateView {
                        state: self.state(c)?,
                        source: self.state_source(c)?.to_owned(),
                    },
                ))
            })
            .collect()
    }
}
