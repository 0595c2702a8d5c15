//! The system handle: one broker with an app identity and manifest, a store, a clock and a policy.
//! This half: open, register, list, unregister, close. Running tasks comes next.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use uuid::Uuid;

use crate::clock::Clock;
use crate::error::{Error, ErrorKind, Result};
use crate::manifest::Manifest;
use crate::model::{Builder, NamePolicy, SystemConditionType, TaskGroup, TaskRecord, Trigger};
use crate::policy::Policy;
use crate::store::{Store, StoreLocation};
use crate::validate::validate;

/// One run of a registration, as handed to a run function or an activation handler.
#[derive(Clone)]
pub struct Instance {
    pub instance_id: Uuid,
    pub task: Registration,
}

/// A background-activated handler (the analogue of `Application.OnBackgroundActivated`, or a
/// group's `BackgroundActivated` event): runs tasks that have no entry point.
pub type ActivationHandler = Arc<dyn Fn(&Instance) + Send + Sync>;

/// Everything needed to open a system.
#[derive(Debug, Clone, Default)]
pub struct SystemOptions {
    pub manifest: Option<Manifest>,
    pub store: StoreLocation,
    pub clock: Clock,
    /// Use the simulated source (states and events set by the app) instead of the Linux sources.
    pub simulated: bool,
    pub policy: Policy,
}

/// Registrations are looked up by name scope `(group id, name)` for the name policy.
type NameKey = (Option<String>, String);

struct State {
    store: Option<Store>,
    tasks: HashMap<Uuid, Arc<TaskRecord>>,
    /// Per name scope, the registrations by `seq` (oldest first).
    by_name: HashMap<NameKey, BTreeMap<i64, Uuid>>,
    spent: std::collections::HashSet<Uuid>,
    /// Groups with the number of registrations in each.
    groups: BTreeMap<String, (TaskGroup, usize)>,
    /// Activation handlers: `None` = the system's, `Some(id)` = a group's.
    activation: HashMap<Option<String>, ActivationHandler>,
    next_seq: i64,
}

struct Shared {
    pid: u32,
    manifest: Manifest,
    clock: Clock,
    simulated: bool,
    policy: Policy,
    store_path: String,
    state: Mutex<State>,
}

/// A handle to an open system. Clones share one system.
#[derive(Clone)]
pub struct System {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("System")
            .field("app_id", &self.shared.manifest.app_id())
            .field("store", &self.shared.store_path)
            .finish()
    }
}

impl PartialEq for System {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

fn name_key(record: &TaskRecord) -> NameKey {
    (
        record.task_group.as_ref().map(|g| g.id.clone()),
        record.name.clone(),
    )
}

impl State {
    fn add(&mut self, record: Arc<TaskRecord>) {
        self.next_seq = self.next_seq.max(record.seq + 1);
        if let Some(g) = &record.task_group {
            self.groups
                .entry(g.id.clone())
                .or_insert_with(|| (g.clone(), 0))
                .1 += 1;
        }
        self.by_name
            .entry(name_key(&record))
            .or_default()
            .insert(record.seq, record.task_id);
        self.tasks.insert(record.task_id, record);
    }

    fn remove(&mut self, task_id: &Uuid) -> Option<Arc<TaskRecord>> {
        let record = self.tasks.remove(task_id)?;
        self.spent.remove(task_id);
        let key = name_key(&record);
        if let Some(ids) = self.by_name.get_mut(&key) {
            ids.remove(&record.seq);
            if ids.is_empty() {
                self.by_name.remove(&key);
            }
        }
        if let Some(g) = &record.task_group
            && let Some(entry) = self.groups.get_mut(&g.id)
        {
            entry.1 -= 1;
            if entry.1 == 0 {
                self.groups.remove(&g.id);
            }
        }
        Some(record)
    }
}

impl System {
    /// Opens a system: checks the policy, opens (and migrates) the store, loads its registrations.
    pub fn open(options: SystemOptions) -> Result<System> {
        let manifest = options.manifest.ok_or_else(|| {
            Error::invalid(
                "no manifest: a system needs one (a TOML file or declarations made in code)",
            )
        })?;
        options.policy.validate()?;
        let store = Store::open(&options.store, manifest.app_id(), options.policy.durability)?;
        let stored = store.load()?;
        let mut state = State {
            store: None,
            tasks: HashMap::with_capacity(stored.len()),
            by_name: HashMap::new(),
            spent: Default::default(),
            groups: BTreeMap::new(),
            activation: HashMap::new(),
            next_seq: 1,
        };
        for t in stored {
            if t.spent {
                state.spent.insert(t.record.task_id);
            }
            state.add(Arc::new(t.record));
        }
        let store_path = store.path().to_owned();
        state.store = Some(store);
        Ok(System {
            shared: Arc::new(Shared {
                pid: std::process::id(),
                manifest,
                clock: options.clock,
                simulated: options.simulated,
                policy: options.policy,
                store_path,
                state: Mutex::new(state),
            }),
        })
    }

    /// Locks the state after checking the process (a forked child must not touch the parent's
    /// threads or locks) and that the system is open.
    fn state(&self) -> Result<MutexGuard<'_, State>> {
        let pid = std::process::id();
        if pid != self.shared.pid {
            return Err(Error::state(format!(
                "this btb system was opened by process {} and cannot be used in a forked child \
                 (pid {pid}); open a new system in the child",
                self.shared.pid
            )));
        }
        let state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.store.is_none() {
            return Err(Error::state("the btb system is closed"));
        }
        Ok(state)
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
        self.shared
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .store
            .is_none()
    }

    /// Sets (or with `None` removes) the background-activated handler of the system
    /// (`group = None`) or of a task group.
    pub fn set_background_activated(
        &self,
        group: Option<&str>,
        handler: Option<ActivationHandler>,
    ) -> Result<()> {
        let mut state = self.state()?;
        let key = group.map(str::to_owned);
        let old = match handler {
            Some(h) => state.activation.insert(key, h),
            None => state.activation.remove(&key),
        };
        drop(state);
        drop(old); // a handler may hold references that call back into btb: drop it unlocked
        Ok(())
    }

    /// Validates and registers a task (SPEC §2); returns once the registration is committed.
    /// The builder is borrowed: on an error, fix it and call again.
    pub fn register(&self, builder: &Builder) -> Result<Registration> {
        let mut state = self.state()?;
        let valid = validate(builder, &self.shared.manifest, &self.shared.policy, |g| {
            state.activation.contains_key(&g.map(str::to_owned))
        })?;
        let group_id = builder.task_group.as_ref().map(|g| g.id.as_str());
        let same_name: Vec<Uuid> = match valid.name_policy {
            NamePolicy::Allow => Vec::new(),
            _ => state
                .by_name
                .get(&(group_id.map(str::to_owned), valid.name.clone()))
                .map(|ids| ids.values().copied().collect())
                .unwrap_or_default(),
        };
        let mut replaced = Vec::new();
        match valid.name_policy {
            NamePolicy::Allow => {}
            NamePolicy::Keep => {
                if let Some(existing) = same_name.first() {
                    let record = Arc::clone(&state.tasks[existing]);
                    return Ok(Registration {
                        system: self.clone(),
                        record,
                    });
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
        let next_due_ms = match &valid.trigger {
            Trigger::Time {
                freshness_minutes, ..
            }
            | Trigger::Maintenance {
                freshness_minutes, ..
            } => Some(now + i64::from(*freshness_minutes) * 60_000),
            _ => None,
        };
        // A group keeps the name it was created with; naming it again with another name joins it.
        let task_group = builder.task_group.as_ref().map(|g| {
            state
                .groups
                .get(&g.id)
                .map_or_else(|| g.clone(), |(existing, _)| existing.clone())
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
            seq: state.next_seq,
        });
        state
            .store
            .as_mut()
            .expect("checked open")
            .insert(&record, &replaced)?;
        for id in &replaced {
            state.remove(id);
        }
        state.add(Arc::clone(&record));
        Ok(Registration {
            system: self.clone(),
            record,
        })
    }

    /// Removes a registration durably. `cancel_task` cancels a running instance with `ABORT`
    /// (instances run from the next issue on; today nothing runs).
    pub fn unregister(&self, task_id: &Uuid, _cancel_task: bool) -> Result<()> {
        let mut state = self.state()?;
        if !state.tasks.contains_key(task_id) {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("task {task_id} is not registered (already unregistered?)"),
            ));
        }
        state
            .store
            .as_mut()
            .expect("checked open")
            .delete(task_id)?;
        state.remove(task_id);
        Ok(())
    }

    fn list(&self, keep: impl Fn(&TaskRecord) -> bool) -> Result<Vec<Registration>> {
        let state = self.state()?;
        let mut records: Vec<Arc<TaskRecord>> =
            state.tasks.values().filter(|t| keep(t)).cloned().collect();
        drop(state);
        records.sort_by_key(|t| t.seq);
        Ok(records
            .into_iter()
            .map(|record| Registration {
                system: self.clone(),
                record,
            })
            .collect())
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
        Ok(self
            .state()?
            .groups
            .values()
            .map(|(g, _)| g.clone())
            .collect())
    }

    /// One group by id (Windows `GetTaskGroup`).
    pub fn task_group(&self, group_id: &str) -> Result<TaskGroup> {
        self.state()?
            .groups
            .get(group_id)
            .map(|(g, _)| g.clone())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("task group {group_id:?} has no registrations"),
                )
            })
    }

    /// Any registration by task id, grouped or not.
    pub fn find(&self, task_id: &Uuid) -> Result<Registration> {
        let record = self.state()?.tasks.get(task_id).cloned().ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("task {task_id} is not registered"),
            )
        })?;
        Ok(Registration {
            system: self.clone(),
            record,
        })
    }

    fn is_spent(&self, task_id: &Uuid) -> bool {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .spent
            .contains(task_id)
    }

    /// Closes the system: releases the store (and its lock). Later calls fail with `STATE`.
    /// Closing twice is harmless.
    pub fn close(&self) -> Result<()> {
        let pid = std::process::id();
        if pid != self.shared.pid {
            return Err(Error::state(format!(
                "this btb system was opened by process {} and cannot be closed from a forked child (pid {pid})",
                self.shared.pid
            )));
        }
        let mut state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        let store = state.store.take();
        let handlers = std::mem::take(&mut state.activation);
        drop(state);
        drop(handlers);
        drop(store);
        Ok(())
    }
}

/// A registered task (`BackgroundTaskRegistration`): an immutable snapshot of what was registered
/// plus the system it lives in.
#[derive(Clone)]
pub struct Registration {
    system: System,
    record: Arc<TaskRecord>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("task_id", &self.record.task_id)
            .field("name", &self.record.name)
            .finish()
    }
}

impl PartialEq for Registration {
    fn eq(&self, other: &Self) -> bool {
        self.record.task_id == other.record.task_id && self.system == other.system
    }
}

impl Registration {
    pub fn task_id(&self) -> Uuid {
        self.record.task_id
    }
    pub fn name(&self) -> &str {
        &self.record.name
    }
    pub fn task_entry_point(&self) -> Option<&str> {
        self.record.task_entry_point.as_deref()
    }
    pub fn task_group(&self) -> Option<&TaskGroup> {
        self.record.task_group.as_ref()
    }
    pub fn trigger(&self) -> &Trigger {
        &self.record.trigger
    }
    pub fn conditions(&self) -> &[SystemConditionType] {
        &self.record.conditions
    }
    pub fn cancel_on_condition_loss(&self) -> bool {
        self.record.cancel_on_condition_loss
    }
    pub fn is_network_requested(&self) -> bool {
        self.record.is_network_requested
    }
    pub fn record(&self) -> &TaskRecord {
        &self.record
    }
    pub fn system(&self) -> &System {
        &self.system
    }
    /// A one-shot trigger that has fired: the registration stays but never fires again.
    pub fn is_spent(&self) -> bool {
        self.system.is_spent(&self.record.task_id)
    }
    /// Unregisters this task (see [`System::unregister`]).
    pub fn unregister(&self, cancel_task: bool) -> Result<()> {
        self.system.unregister(&self.record.task_id, cancel_task)
    }
}

static DEFAULT: Mutex<Option<System>> = Mutex::new(None);

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
