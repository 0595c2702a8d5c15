//! Registering and unregistering (SPEC §2): the store first (lock 0), then the state — each
//! registration is validated, decided by its name policy, committed and published here; listing
//! what is registered; firing an event for a caller.

use std::sync::Arc;

use uuid::Uuid;

use super::Broker;
use crate::control::Filter;
use crate::error::{Error, ErrorKind, Result};
use crate::model::{Builder, NamePolicy, TaskRecord};
use crate::registry::EventKey;
use crate::validate::validate;

impl Broker {
    /// Registers in this process's broker; `activation` says whether a group (or the system)
    /// has a background-activated handler (in the registering process).
    pub(crate) fn register_with(
        self: &Arc<Self>,
        builder: &Builder,
        activation: impl Fn(Option<&str>) -> bool,
    ) -> Result<Arc<TaskRecord>> {
        // The store first (lock 0), held to the end: registrations commit one at a time, in the
        // order their name policies were decided; the state lock is not held during the commit.
        self.check_pid()?;
        let mut store = self.store();
        if store.is_none() {
            return Err(super::closed());
        }
        let state = self.lock_open()?;
        let valid = validate(builder, &self.manifest(), &self.policy, activation)?;
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
                    return Ok(record);
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
        let now = self.clock.now_ms();
        let next_due_ms = self.first_due(&valid.trigger, now);
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
        let mut state = self.lock();
        self.registered(&mut state, Arc::clone(&record), &replaced, now);
        // The store first: the state guard then drops what the replaced registrations held
        // (their handlers), which may call back into btb and register again.
        drop(store);
        drop(state);
        self.refresh_storage(); // a write: the space left may have changed (off the locks)
        Ok(record)
    }

    /// Removes a registration durably. `cancel_task` cancels a running instance with `ABORT`;
    /// otherwise it finishes.
    pub(crate) fn unregister_task(
        self: &Arc<Self>,
        task_id: &Uuid,
        cancel_task: bool,
    ) -> Result<()> {
        self.check_pid()?;
        let mut store = self.store(); // as in `register`: the commit holds no state lock
        if store.is_none() {
            return Err(super::closed());
        }
        if !self.lock_open()?.registry.contains(task_id) {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("task {task_id} is not registered (already unregistered?)"),
            ));
        }
        store.as_mut().expect("checked open").delete(task_id)?;
        let mut state = self.lock();
        self.unregistered(&mut state, task_id, cancel_task);
        drop(store); // first: see `register`
        drop(state);
        Ok(())
    }

    /// The registrations `filter` keeps, in registration order.
    pub(crate) fn records(&self, filter: &Filter) -> Result<Vec<Arc<TaskRecord>>> {
        let state = self.open_state()?;
        let keep = |t: &TaskRecord| match filter {
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
        Ok(records)
    }

    /// Fires the registrations listening to `key` (an event raised or signaled by a caller);
    /// returns how many fired, once their fires are on disk.
    pub(crate) fn fire_event(self: &Arc<Self>, key: &EventKey) -> Result<usize> {
        self.check_writable("the event")?;
        let mut st = self.open_state()?;
        let fired = self.fire_key(&mut st, key);
        self.acknowledge(st)?;
        Ok(fired)
    }
}
