//! The system handle: one broker with an app identity and manifest, a store, a clock, a policy and
//! the state of the machine. Registration lives here; running tasks lives in `broker/`.
//!
//! A system is at home in one of two places ([`Home`]): the broker it runs itself, or — when
//! another process's broker holds the store — that broker, reached as a client (`client.rs`). A
//! client that takes the store over (its broker went away) answers from its own broker from then
//! on, through the same handles.

use std::sync::{Arc, Mutex, Weak};

use uuid::Uuid;

use crate::broker::{Broker, Event, Handler, Instance, Locked, State};
use crate::client::Remote;
use crate::clock::Clock;
use crate::control::{Filter, Reply, Request};
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

/// Where a system lives: its own broker, or another process's (client mode).
#[derive(Clone)]
pub(crate) enum Home {
    Broker(Arc<Broker>),
    Client(Arc<Remote>),
}

/// Where a call goes now.
pub(crate) enum Route<'a> {
    Local(&'a Arc<Broker>),
    Remote(&'a Arc<Remote>),
}

impl Home {
    /// A client that took the store over goes to its own broker.
    pub(crate) fn route(&self) -> Route<'_> {
        match self {
            Home::Broker(b) => Route::Local(b),
            Home::Client(r) => match r.taken.get() {
                Some(b) => Route::Local(b),
                None => Route::Remote(r),
            },
        }
    }

    fn same(&self, other: &Home) -> bool {
        match (self, other) {
            (Home::Broker(a), Home::Broker(b)) => Arc::ptr_eq(a, b),
            (Home::Client(a), Home::Client(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    fn downgrade(&self) -> WeakHome {
        match self {
            Home::Broker(b) => WeakHome::Broker(Arc::downgrade(b)),
            Home::Client(r) => WeakHome::Client(Arc::downgrade(r)),
        }
    }

    fn close(&self) -> Result<()> {
        match self {
            Home::Broker(b) => b.close(),
            Home::Client(r) => r.close(),
        }
    }
}

#[derive(Clone)]
enum WeakHome {
    Broker(Weak<Broker>),
    Client(Weak<Remote>),
}

impl WeakHome {
    fn upgrade(&self) -> Option<Home> {
        match self {
            WeakHome::Broker(b) => b.upgrade().map(Home::Broker),
            WeakHome::Client(r) => r.upgrade().map(Home::Client),
        }
    }
}

/// Closes the system when the last user handle goes away.
struct Owner(WeakHome);

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
    pub(crate) home: Home,
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
    pub(crate) fn view(home: Home) -> System {
        System { home, _owner: None }
    }

    fn owning(home: Home) -> System {
        {
            let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
            open.retain(|w| w.upgrade().is_some());
            open.push(home.downgrade());
        }
        let owner = Arc::new(Owner(home.downgrade()));
        System {
            home,
            _owner: Some(owner),
        }
    }
}

impl PartialEq for System {
    fn eq(&self, other: &Self) -> bool {
        self.home.same(&other.home)
    }
}

/// Opens a broker on a store this process holds: loads its registrations, catches up on time
/// that passed while nothing ran, starts the broker's threads and sources and its control socket.
/// `handlers` are those a client had before it took the store over.
pub(crate) fn start_broker(
    manifest: Manifest,
    options: &SystemOptions,
    mut store: Store,
    handlers: crate::registry::Handlers,
) -> Result<Arc<Broker>> {
    let stored = store.load()?;
    // Until this broker binds its socket, no note says where it listens (a client waits). After
    // the load: a store refused at open is left as it was.
    if let Ok(canonical) = std::fs::canonicalize(store.path()) {
        crate::socket_note::write(&canonical.to_string_lossy(), None);
    }
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
    // Before anything runs: no registration starts again while a host of a broker of this
    // store that died still runs it.
    let now = options.clock.now_ms();
    let mut retries = crate::broker::stop_orphans(&mut store, &registry, &options.policy, now);
    // Runs cut off by the death of the broker that started them: recorded, retried under a
    // policy (SPEC §11, §12). A fire already latched for the task runs instead of its retry.
    let recovered =
        crate::broker::recover_cut_off(&mut store, &registry, options.policy.history_limit, now)?;
    retries.extend(recovered.retries);
    for (task_id, retry) in retries {
        if !latched.iter().any(|(id, _)| *id == task_id) {
            latched.push((task_id, retry));
        }
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
        options.clock.clone(),
        options.simulated,
        options.platform.clone(),
        options.policy.clone(),
        storage_dir,
        store,
        State::new(registry, options.paused),
    )?);
    *shared.handlers_mut() = handlers;
    {
        let mut st = shared.lock();
        for run in &recovered.recorded {
            shared.announce(&mut st, run);
        }
    }
    // Before anything runs: a task whose run goes on in a client counts as running.
    if let Some(dir) = shared.run_files.clone() {
        shared.watch_elsewhere(dir, recovered.elsewhere);
    }
    {
        let mut st = shared.lock();
        shared.restore(
            &mut st,
            latched,
            servicing.is_some() && servicing.as_deref() != Some(shared.manifest().version()),
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
            Some(shared) => System::view(Home::Broker(shared)).answer(request),
            None => crate::control::Reply::error(&crate::broker::closed()),
        });
        // Clients check that they reached the broker of their store by its canonical path.
        let canonical = std::fs::canonicalize(&shared.store_path)
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        let noted = canonical.clone();
        let bound = crate::control::ControlListener::bind_for_store(
            shared.app_id.as_str(),
            canonical,
            handler,
        );
        if let Some(store) = &noted {
            crate::socket_note::write(store, bound.as_ref().ok().map(|l| l.path()));
        }
        match bound {
            Ok(l) => {
                let weak = Arc::downgrade(&shared);
                l.broadcast().set_on_offer(Box::new(move || {
                    if let Some(shared) = weak.upgrade() {
                        shared.handlers_changed();
                    }
                }));
                let _ = shared.broadcast.set(l.broadcast());
                *shared.listener.lock().unwrap_or_else(|p| p.into_inner()) = Some(l);
            }
            Err(e) => {
                log::warn!(target: "btb", "other processes (clients, btbctl, signal_event) will not reach this system: {e}");
                let _ = shared.unreachable.set(e);
            }
        }
    }
    Ok(shared)
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
        let store =
            match Store::try_open(&options.store, manifest.app_id(), options.policy.durability)? {
                Ok(store) => store,
                Err(held) => match Remote::connect(manifest.clone(), options.clone(), held)? {
                    Ok(remote) => return Ok(System::owning(Home::Client(remote))),
                    Err(store) => store, // its holder went away meanwhile
                },
            };
        let broker = start_broker(manifest, &options, store, Default::default())?;
        Ok(System::owning(Home::Broker(broker)))
    }

    /// Whether this system runs the broker of its store (`false`: a client of another process's
    /// broker; a client becomes the broker when it takes the store over).
    pub fn is_broker(&self) -> bool {
        matches!(self.home.route(), Route::Local(_))
    }

    /// The control socket through which other processes of the app reach this broker (SPEC §10);
    /// the error that kept it from listening (none for an in-memory store: `STATE`). A client
    /// reaches its broker through the broker's socket.
    pub fn control_socket(&self) -> Result<std::path::PathBuf> {
        match self.home.route() {
            Route::Local(b) => {
                if let Some(e) = b.unreachable.get() {
                    return Err(e.clone());
                }
                match b
                    .listener
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                {
                    Some(l) => Ok(l.path().to_owned()),
                    None => Err(Error::state(
                        "this system does not listen (an in-memory store, or closed)",
                    )),
                }
            }
            Route::Remote(_) => crate::control::socket_path(self.manifest().app_id()),
        }
    }

    /// The process id of the broker this system uses (this process's when it is the broker).
    pub fn broker_pid(&self) -> u32 {
        match self.home.route() {
            Route::Local(b) => b.pid,
            Route::Remote(r) => r.broker_pid(),
        }
    }

    /// Starts running tasks in a system opened with `paused` (what latched meanwhile runs now).
    /// Starting a running system changes nothing; nor does starting a client (its broker runs).
    pub fn start(&self) -> Result<()> {
        match self.home.route() {
            Route::Local(b) => {
                let mut st = b.open_state()?;
                b.start(&mut st);
                Ok(())
            }
            Route::Remote(r) => r.check_open(),
        }
    }

    /// The broker, when this system runs it; `None` for a client.
    fn local(&self) -> Option<&Arc<Broker>> {
        match self.home.route() {
            Route::Local(b) => Some(b),
            Route::Remote(_) => None,
        }
    }

    /// Locks the state after checking the process (a forked child must not touch the parent's
    /// threads or locks) and that the system is open. `STATE` for a client.
    pub(crate) fn locked(&self) -> Result<Locked<'_>> {
        match self.home.route() {
            Route::Local(b) => b.open_state(),
            Route::Remote(r) => {
                r.check_open()?;
                Err(Error::state(format!(
                    "this system is a client of the btb broker in pid {}: it has no broker state of its own",
                    r.broker_pid()
                )))
            }
        }
    }

    /// The manifest in force: the one opened with, or the one the app was serviced with since
    /// (`service`).
    pub fn manifest(&self) -> Arc<Manifest> {
        match &self.home {
            Home::Broker(b) => b.manifest(),
            Home::Client(r) => Arc::new(r.manifest.clone()),
        }
    }

    pub fn app_id(&self) -> &str {
        match &self.home {
            Home::Broker(b) => &b.app_id,
            Home::Client(r) => r.manifest.app_id(),
        }
    }

    /// The policy this system was opened with (a client's broker applies its own).
    pub fn policy(&self) -> &Policy {
        match &self.home {
            Home::Broker(b) => &b.policy,
            Home::Client(r) => &r.options.policy,
        }
    }

    pub fn clock(&self) -> &Clock {
        match &self.home {
            Home::Broker(b) => &b.clock,
            Home::Client(r) => &r.options.clock,
        }
    }

    pub fn is_simulated(&self) -> bool {
        match &self.home {
            Home::Broker(b) => b.simulated,
            Home::Client(r) => r.options.simulated,
        }
    }

    /// The store's path (`":memory:"` for an ephemeral store).
    pub fn store_path(&self) -> &str {
        match &self.home {
            Home::Broker(b) => &b.store_path,
            Home::Client(r) => r.store_path(),
        }
    }

    pub fn is_closed(&self) -> bool {
        match self.home.route() {
            Route::Local(b) => !b.lock().is_open(),
            Route::Remote(r) => r.is_closed(),
        }
    }

    /// Checks that the system is open and usable from this process.
    fn check(&self) -> Result<()> {
        match self.home.route() {
            Route::Local(b) => b.open_state().map(drop),
            Route::Remote(r) => r.check_open(),
        }
    }

    /// This process's handler tables (a client keeps its own; its broker calls none of them).
    fn handlers(&self) -> std::sync::RwLockWriteGuard<'_, crate::registry::Handlers> {
        match self.home.route() {
            Route::Local(b) => b.handlers_mut(),
            Route::Remote(r) => r.handlers_mut(),
        }
    }

    /// Sets (or with `None` removes) the background-activated handler of the system
    /// (`group = None`) or of a task group: it runs the tasks that have no entry point.
    pub fn set_background_activated(
        &self,
        group: Option<&str>,
        handler: Option<Handler>,
    ) -> Result<()> {
        self.check()?;
        let key = group.map(str::to_owned);
        let old = match handler {
            Some(h) => self.handlers().activation.insert(key, h),
            None => self.handlers().activation.remove(&key),
        };
        drop(old); // a handler may hold references that call back into btb: drop it unlocked
        self.offer();
        Ok(())
    }

    /// Registers (or with `None` removes) the in-process handler of a declared entry point.
    pub fn register_entry_point(&self, entry_point: &str, handler: Option<Handler>) -> Result<()> {
        self.check()?;
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
            Some(h) => self
                .handlers()
                .entry_points
                .insert(entry_point.to_owned(), h),
            None => self.handlers().entry_points.remove(entry_point),
        };
        drop(old);
        self.offer();
        Ok(())
    }

    /// Sets the resolver asked for entry points without a registered handler.
    pub fn set_entry_point_resolver(&self, resolver: Option<Resolver>) -> Result<()> {
        self.check()?;
        let old = std::mem::replace(&mut self.handlers().resolver, resolver);
        drop(old);
        self.offer();
        Ok(())
    }

    /// A client tells its broker what it can run now; a broker tries the runs that wait for a
    /// handler again.
    fn offer(&self) {
        match self.home.route() {
            Route::Remote(r) => r.offer(),
            Route::Local(b) => b.handlers_changed(),
        }
    }

    /// Whether this process has a background-activated handler for `group` (or the system's).
    fn has_activation(&self, group: Option<&str>) -> bool {
        let key = group.map(str::to_owned);
        let here = match self.home.route() {
            Route::Local(b) => b.handlers().activation.contains_key(&key),
            Route::Remote(r) => r.handlers().activation.contains_key(&key),
        };
        here || group.is_some_and(crate::groups::has_handler)
    }

    /// Validates and registers a task (SPEC §2); returns once the registration is committed.
    /// The builder is borrowed: on an error, fix it and call again. In a client, the broker
    /// validates and commits it, with the same errors.
    pub fn register(&self, builder: &Builder) -> Result<Registration> {
        let shared = match self.home.route() {
            Route::Local(b) => b,
            Route::Remote(r) => {
                let activation =
                    self.has_activation(builder.task_group.as_ref().map(|g| g.id.as_str()));
                return match r.ask(&Request::Register {
                    builder: builder.clone(),
                    activation,
                })? {
                    Reply::Registered { record } => Ok(self.registration(r.remember(record))),
                    other => Err(unexpected(&other)),
                };
            }
        };
        self.register_with(shared, builder, |g| self.has_activation(g))
    }

    /// Registers in this process's broker; `activation` says whether a group (or the system)
    /// has a background-activated handler (in the registering process).
    fn register_with(
        &self,
        shared: &Arc<Broker>,
        builder: &Builder,
        activation: impl Fn(Option<&str>) -> bool,
    ) -> Result<Registration> {
        // The store first (lock 0), held to the end: registrations commit one at a time, in the
        // order their name policies were decided; the state lock is not held during the commit.
        shared.check_pid()?;
        let mut store = shared.store();
        if store.is_none() {
            return Err(crate::broker::closed());
        }
        let state = shared.lock_open()?;
        let valid = validate(builder, &shared.manifest(), &shared.policy, activation)?;
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
        let now = shared.clock.now_ms();
        let next_due_ms = shared.first_due(&valid.trigger, now);
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
            retry_policy: builder.retry_policy,
        });
        drop(state);
        store
            .as_mut()
            .expect("checked open")
            .insert(&record, &replaced)?;
        // Durable now: publish it (even if a close began meanwhile — it is registered).
        let mut state = shared.lock();
        shared.registered(&mut state, Arc::clone(&record), &replaced, now);
        // The store first: the state guard then drops what the replaced registrations held
        // (their handlers), which may call back into btb and register again.
        drop(store);
        drop(state);
        shared.refresh_storage(); // a write: the space left may have changed (off the locks)
        Ok(self.registration(record))
    }

    fn registration(&self, record: Arc<TaskRecord>) -> Registration {
        Registration::new(self.home.clone(), record)
    }

    fn registrations(&self, r: &Arc<Remote>, filter: Filter) -> Result<Vec<Registration>> {
        match r.ask(&Request::Registrations { filter })? {
            Reply::Registrations { records } => Ok(records
                .into_iter()
                .map(|record| self.registration(r.remember(record)))
                .collect()),
            other => Err(unexpected(&other)),
        }
    }

    /// Services the app (SPEC §10): when `manifest`'s version differs from the one in force,
    /// cancels every run with `SERVICING_UPDATE`, takes `manifest` and fires
    /// `SERVICING_COMPLETE`; `false`, changing nothing, for the same version. For the broker
    /// (btbd re-reads its manifest on SIGHUP and when the file changes); `UNSUPPORTED` in a
    /// client.
    pub fn service(&self, manifest: Manifest) -> Result<bool> {
        match self.home.route() {
            Route::Local(b) => b.service(manifest),
            Route::Remote(r) => Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "servicing is for the broker; this system is a client of the btb broker in pid {}",
                    r.broker_pid()
                ),
            )),
        }
    }

    /// Uninstalls the app (SPEC §10): cancels every run with `UNINSTALL`, unregisters every
    /// task, and removes the store and the control socket; in a client, its broker does. The
    /// system stays open, holding nothing, until closed. Returns how many tasks were registered.
    pub fn uninstall(&self) -> Result<usize> {
        match self.home.route() {
            Route::Local(b) => b.uninstall(),
            Route::Remote(r) => match r.ask(&Request::Uninstall)? {
                Reply::Uninstalled { tasks } => Ok(tasks),
                other => Err(unexpected(&other)),
            },
        }
    }

    /// Removes a registration durably. `cancel_task` cancels a running instance with `ABORT`;
    /// otherwise it finishes.
    pub fn unregister(&self, task_id: &Uuid, cancel_task: bool) -> Result<()> {
        let shared = match self.home.route() {
            Route::Local(b) => b,
            Route::Remote(r) => {
                r.ask(&Request::Unregister {
                    task: task_id.to_string(),
                    cancel_task,
                })?;
                r.forget(task_id);
                return Ok(());
            }
        };
        shared.check_pid()?;
        let mut store = shared.store(); // as in `register`: the commit holds no state lock
        if store.is_none() {
            return Err(crate::broker::closed());
        }
        if !shared.lock_open()?.registry.contains(task_id) {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("task {task_id} is not registered (already unregistered?)"),
            ));
        }
        store.as_mut().expect("checked open").delete(task_id)?;
        let mut state = shared.lock();
        shared.unregistered(&mut state, task_id, cancel_task);
        drop(store); // first: see `register`
        drop(state);
        Ok(())
    }

    fn list(&self, filter: Filter) -> Result<Vec<Registration>> {
        let shared = match self.home.route() {
            Route::Local(b) => b,
            Route::Remote(r) => return self.registrations(r, filter),
        };
        let state = shared.open_state()?;
        let keep = |t: &TaskRecord| match &filter {
            Filter::Ungrouped => t.task_group.is_none(),
            Filter::Group { id } => t.task_group.as_ref().is_some_and(|g| &g.id == id),
            Filter::Task { task_id } => t.task_id == *task_id,
        };
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
        match self.home.route() {
            Route::Local(b) => Ok(b.open_state()?.registry.groups().cloned().collect()),
            Route::Remote(r) => match r.ask(&Request::Groups)? {
                Reply::Groups { groups } => Ok(groups),
                other => Err(unexpected(&other)),
            },
        }
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
        if let Some(args) = &arguments
            && !args.is_object()
        {
            return Err(Error::invalid(format!(
                "application trigger arguments must be a JSON object, not {args}"
            )));
        }
        let shared = match self.home.route() {
            Route::Local(b) => b,
            Route::Remote(r) => {
                return match r.ask(&Request::Request {
                    trigger_id: *trigger_id,
                    arguments,
                })? {
                    Reply::Requested { result } => Ok(result),
                    other => Err(unexpected(&other)),
                };
            }
        };
        shared.check_writable("the request")?;
        let mut st = shared.open_state()?;
        if !shared.policy.allow_application_triggers {
            return Ok(ApplicationTriggerResult::DisabledByPolicy);
        }
        let result = shared.request(&mut st, trigger_id, arguments);
        // ALLOWED is said once the fire is on disk (latched, or its run's start marker).
        shared.acknowledge(st)?;
        Ok(result)
    }

    /// Raises a system event (the platform source does this for the events it sees; apps with a
    /// source of their own feed theirs). Returns how many registrations fired.
    pub fn raise_event(&self, event: SystemTriggerType) -> Result<usize> {
        match self.home.route() {
            Route::Local(b) => Self::fire_event(b, &EventKey::System(event)),
            Route::Remote(r) => fired(r.ask(&Request::Raise { event })?),
        }
    }

    /// Signals a custom event in this system (other processes use [`crate::control::signal_event`]).
    /// The name follows the rule of the control socket (1–256 bytes, no control character), so a
    /// name is accepted or refused alike in-process and from another process.
    pub fn signal_event(&self, trigger_id: &str) -> Result<usize> {
        crate::control::check_name(trigger_id).map_err(Error::invalid)?;
        match self.home.route() {
            Route::Local(b) => Self::fire_event(b, &EventKey::Custom(trigger_id.to_owned())),
            Route::Remote(r) => fired(r.ask(&Request::Signal {
                name: trigger_id.to_owned(),
            })?),
        }
    }

    fn fire_event(shared: &Arc<Broker>, key: &EventKey) -> Result<usize> {
        shared.check_writable("the event")?;
        let mut st = shared.open_state()?;
        let fired = shared.fire_key(&mut st, key);
        shared.acknowledge(st)?;
        Ok(fired)
    }

    /// Sets a state of the simulated source; `STATE` on a system using the platform sources.
    pub fn set_state(&self, condition: SystemConditionType, value: bool) -> Result<()> {
        let shared = match self.home.route() {
            Route::Local(b) => b,
            Route::Remote(r) => {
                return r.ask(&Request::SetState { condition, value }).map(drop);
            }
        };
        if !shared.simulated {
            return Err(Error::state(
                "set_state needs a system opened with the simulated source; this one reads the platform",
            ));
        }
        let mut st = shared.open_state()?;
        shared.heard(
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

    /// A condition's state and the name of its source, from the broker of a client.
    fn remote_state(
        r: &Arc<Remote>,
        condition: SystemConditionType,
    ) -> Result<(Option<bool>, &'static str)> {
        match r.ask(&Request::StateOf { condition })? {
            Reply::StateOf { state, source } => Ok((state, crate::platform::source_named(&source))),
            other => Err(unexpected(&other)),
        }
    }

    /// The current state of a condition: `Some(holds)`, or `None` while unknown (which does not
    /// hold). SPEC §6: from the simulated source, or read from the machine (by the broker).
    pub fn state(&self, condition: SystemConditionType) -> Result<Option<bool>> {
        match self.home.route() {
            Route::Local(b) => {
                if condition == SystemConditionType::StorageNotLow {
                    b.refresh_storage(); // read now, off the locks
                }
                let st = b.open_state()?;
                Ok(b.state_of(&st, condition))
            }
            Route::Remote(r) => Ok(Self::remote_state(r, condition)?.0),
        }
    }

    /// What a condition's state is read from: `simulated`, `statvfs`, … or `unknown` (SPEC §6).
    pub fn state_source(&self, condition: SystemConditionType) -> Result<&'static str> {
        let shared = match self.home.route() {
            Route::Local(b) => b,
            Route::Remote(r) => return Ok(Self::remote_state(r, condition)?.1),
        };
        let st = shared.open_state()?;
        if shared.simulated {
            return Ok(crate::platform::Source::Simulated.name());
        }
        Ok(st.states().source(condition).map_or_else(
            || crate::platform::unreported_source(condition),
            crate::platform::Source::name,
        ))
    }

    /// Windows `BackgroundWorkCost.CurrentBackgroundWorkCost` (`None` while unknown).
    pub fn background_work_cost(&self) -> Result<Option<crate::BackgroundWorkCostValue>> {
        match self.home.route() {
            Route::Local(b) => Ok(b.open_state()?.states().background_work_cost()),
            Route::Remote(r) => match r.ask(&Request::WorkCost)? {
                Reply::WorkCost { cost } => Ok(cost),
                other => Err(unexpected(&other)),
            },
        }
    }

    /// For an app started for background work (`activate` in the manifest, `BTB_ACTIVATION=1`
    /// in its environment; SPEC §12): serves the runs its broker hands it, and returns once none
    /// is left for it — no run waits for a handler it offers, and none of those runs is going —
    /// `true`; or `false` at `timeout`. Register the handlers first. A process that holds the
    /// store itself (no broker ran) waits for its own runs, as `wait_idle`.
    pub fn serve_activation(&self, timeout: std::time::Duration) -> Result<bool> {
        let deadline = std::time::Instant::now() + timeout;
        let r = match self.home.route() {
            Route::Local(_) => return self.wait_idle(timeout),
            Route::Remote(r) => r,
        };
        // Asked again after each pause: the runs are handed on the feed, and end in the runs'
        // own threads; a short pause, doubling, bounds the questions a busy app asks.
        let mut pause = std::time::Duration::from_millis(20);
        loop {
            let offer = r.current_offer();
            match r.ask(&Request::Waiting { offer })? {
                Reply::Waiting { runs: 0 } => return Ok(true),
                Reply::Waiting { .. } => {}
                other => return Err(unexpected(&other)),
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            std::thread::sleep(pause.min(left));
            pause = (pause * 2).min(std::time::Duration::from_millis(500));
        }
    }

    /// Waits until nothing runs or is runnable and every handler has been called: `true`, or
    /// `false` after `timeout` — the store error (`STORE`) instead when the work is held because
    /// the store cannot be written (SPEC §7). Not from a btb handler thread (`STATE`). In a client, which runs
    /// nothing itself, `UNSUPPORTED` (wait for a completed handler instead).
    pub fn wait_idle(&self, timeout: std::time::Duration) -> Result<bool> {
        match self.home.route() {
            Route::Local(b) => b.wait_idle(timeout),
            Route::Remote(r) => Err(client_only_broker(r, "wait_idle")),
        }
    }

    /// Takes the next event of the pull queue (runs of tasks whose handler is `Handler::Queued`,
    /// and their cancellations), waiting at most `timeout`; `None` on timeout. `UNSUPPORTED` in a
    /// client (its broker runs the tasks).
    pub fn next_event(&self, timeout: std::time::Duration) -> Result<Option<Event>> {
        match self.home.route() {
            Route::Local(b) => b.next_event(timeout),
            Route::Remote(r) => Err(client_only_broker(r, "next_event")),
        }
    }

    /// Adds a completed handler for a registration; returns its token. In a client it is called
    /// in this process, when the broker reports the end of a run.
    pub fn add_completed(&self, task_id: &Uuid, handler: CompletedFn) -> Result<u64> {
        self.check()?;
        Ok(self.handlers().add_completed(*task_id, handler))
    }

    /// Adds a progress handler for a registration; returns its token.
    pub fn add_progress(&self, task_id: &Uuid, handler: ProgressFn) -> Result<u64> {
        self.check()?;
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
        match self.home.route() {
            Route::Local(b) => b.handlers().holds(token),
            Route::Remote(r) => r.handlers().holds(token),
        }
    }

    /// The recorded runs of a registration, oldest first.
    pub fn history(&self, task_id: &Uuid) -> Result<Vec<RunRecord>> {
        let shared = match self.home.route() {
            Route::Local(b) => b,
            Route::Remote(r) => {
                return match r.ask(&Request::RunHistory { task_id: *task_id })? {
                    Reply::History { runs } => Ok(runs),
                    other => Err(unexpected(&other)),
                };
            }
        };
        drop(shared.open_state()?);
        shared.flush()?; // the runs recorded so far are committed
        shared.check_pid()?;
        let store = shared.store();
        store
            .as_ref()
            .ok_or_else(crate::broker::closed)?
            .history(task_id)
    }

    /// When a registration is next due and whether it is spent (for a client's registrations).
    pub(crate) fn due(&self, task_id: &Uuid) -> Result<(Option<i64>, bool)> {
        match self.home.route() {
            Route::Local(b) => {
                let st = b.lock();
                Ok((st.next_due(task_id), st.registry.is_spent(task_id)))
            }
            Route::Remote(r) => match r.ask(&Request::Due { task_id: *task_id })? {
                Reply::Due { next_due_ms, spent } => Ok((next_due_ms, spent)),
                other => Err(unexpected(&other)),
            },
        }
    }

    /// Closes the system: cancels running instances with `TERMINATING`, waits at most the policy's
    /// grace for them, records the rest as canceled, stops the broker and releases the store.
    /// Later calls fail with `STATE`. Closing twice is harmless. A client closes its connections
    /// (and, if it took the store over, its broker).
    pub fn close(&self) -> Result<()> {
        self.home.close()
    }
}

/// What `wait_idle` and `next_event` say in a client.
fn client_only_broker(r: &Remote, what: &str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!(
            "{what} is for the process that runs the broker; this system is a client of the btb \
             broker in pid {} (add a completed handler to hear of runs)",
            r.broker_pid()
        ),
    )
}

fn unexpected(reply: &Reply) -> Error {
    Error::state(format!("the btb broker answered {reply:?}"))
}

fn fired(reply: Reply) -> Result<usize> {
    match reply {
        Reply::Fired { count } => Ok(count),
        other => Err(unexpected(&other)),
    }
}

static DEFAULT: Mutex<Option<System>> = Mutex::new(None);

/// The systems opened in this process (an application trigger finds its registrations here).
static OPEN: Mutex<Vec<WeakHome>> = Mutex::new(Vec::new());

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
        open.iter()
            .filter_map(WeakHome::upgrade)
            .collect::<Vec<_>>()
    }
    .into_iter()
    .filter(|home| match home.route() {
        Route::Local(b) => b
            .open_state()
            .is_ok_and(|st| !st.registry.listeners(&key).is_empty()),
        // A client holds what it registered or listed.
        Route::Remote(r) => !r.is_closed() && r.knows_application_trigger(trigger_id),
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

/// Every client system of this process tells its broker again what it can run (task-group
/// handlers, which are process-wide, changed).
pub(crate) fn refresh_offers() {
    let clients: Vec<Home> = OPEN
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter_map(WeakHome::upgrade)
        .collect();
    for home in clients {
        System::view(home).offer();
    }
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
    /// Answers a request of the control socket (SPEC §10: `btbctl`, `signal_event`, clients).
    /// Only a broker answers (a client never listens).
    pub(crate) fn answer(&self, request: Request) -> Reply {
        let Some(shared) = self.local() else {
            return Reply::error(&Error::state("a client does not answer requests"));
        };
        let result = match request {
            // The control server answers these itself.
            Request::Hello { .. }
            | Request::Subscribe
            | Request::Offer { .. }
            | Request::Attach { .. }
            | Request::Ready
            | Request::Unknown => Ok(Reply::Done),
            Request::Signal { name } => Self::fire_event(shared, &EventKey::Custom(name))
                .map(|count| Reply::Fired { count }),
            Request::List => shared.task_views(None).map(|tasks| Reply::Tasks { tasks }),
            Request::Show { task } => shared.task_views(Some(&task)).map(|mut v| Reply::Task {
                task: Box::new(v.remove(0)),
            }),
            Request::History { task } => self.task_id_of(&task).and_then(|id| {
                Ok(Reply::Runs {
                    runs: self.history(&id)?.iter().map(Into::into).collect(),
                })
            }),
            Request::Run {
                task,
                ignore_conditions,
                details,
                keep,
            } => shared
                .run_now(&task, ignore_conditions, details, keep)
                .map(|()| Reply::Done),
            Request::Unregister { task, cancel_task } => self
                .task_id_of(&task)
                .and_then(|id| self.unregister(&id, cancel_task))
                .map(|()| Reply::Done),
            Request::Uninstall => shared.uninstall().map(|tasks| Reply::Uninstalled { tasks }),
            Request::Waiting { offer } => shared
                .waiting_for(&offer)
                .map(|runs| Reply::Waiting { runs }),
            Request::Doctor => self.doctor().map(|states| Reply::Doctor {
                states,
                broker: Some(std::process::id()),
                store_error: shared.store_failure().map(|e| e.message().to_owned()),
            }),
            Request::Register {
                builder,
                activation,
            } => self
                .register_with(shared, &builder, |g| activation || self.has_activation(g))
                .map(|r| Reply::Registered {
                    record: r.record().clone(),
                }),
            Request::Registrations { filter } => {
                self.list(filter).map(|list| Reply::Registrations {
                    records: list.iter().map(|r| r.record().clone()).collect(),
                })
            }
            Request::Groups => self
                .all_task_groups()
                .map(|groups| Reply::Groups { groups }),
            Request::RunHistory { task_id } => {
                self.history(&task_id).map(|runs| Reply::History { runs })
            }
            Request::Request {
                trigger_id,
                arguments,
            } => self
                .request(&trigger_id, arguments)
                .map(|result| Reply::Requested { result }),
            Request::Raise { event } => self.raise_event(event).map(|count| Reply::Fired { count }),
            Request::SetState { condition, value } => {
                self.set_state(condition, value).map(|()| Reply::Done)
            }
            Request::StateOf { condition } => self.state(condition).and_then(|state| {
                Ok(Reply::StateOf {
                    state,
                    source: self.state_source(condition)?.to_owned(),
                })
            }),
            Request::WorkCost => self
                .background_work_cost()
                .map(|cost| Reply::WorkCost { cost }),
            Request::Due { task_id } => self
                .due(&task_id)
                .map(|(next_due_ms, spent)| Reply::Due { next_due_ms, spent }),
        };
        result.unwrap_or_else(|e| Reply::error(&e))
    }

    fn task_id_of(&self, task: &str) -> Result<Uuid> {
        let st = self.locked()?;
        self.local().expect("locked").find_task(&st, task)
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
