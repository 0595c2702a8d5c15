//! What is registered: the registrations by task id with their indexes (name scope for the name
//! policies, the events each listens to, spent one-shots, task groups).
//!
//! It lives inside the broker's state and changes only through these methods, which keep the
//! indexes consistent with the registrations. It knows nothing of running (the handler tables
//! are the broker's: `broker/handlers.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt, HashSet};
use uuid::Uuid;

use crate::model::{SystemTriggerType, TaskGroup, TaskRecord, TaskTrigger};

/// What an event-style trigger listens to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum EventKey {
    Application(Uuid),
    System(SystemTriggerType),
    Custom(String),
}

impl EventKey {
    /// The event a trigger listens to; `None` for time, maintenance and calendar triggers.
    pub(crate) fn of(trigger: &TaskTrigger) -> Option<EventKey> {
        match trigger {
            TaskTrigger::Application { id } => Some(EventKey::Application(*id)),
            TaskTrigger::System { trigger_type, .. } => Some(EventKey::System(*trigger_type)),
            TaskTrigger::CustomEvent { trigger_id, .. } => {
                Some(EventKey::Custom(trigger_id.clone()))
            }
            _ => None,
        }
    }
}

/// Registrations are looked up by name scope `(group id, name)` for the name policy.
type NameKey = (Option<String>, String);

fn name_key(record: &TaskRecord) -> NameKey {
    (
        record.task_group.as_ref().map(|g| g.id.clone()),
        record.name.clone(),
    )
}

/// The registrations of one system.
#[derive(Default)]
pub(crate) struct Registry {
    tasks: HashMap<Uuid, Arc<TaskRecord>>,
    /// Per name scope, the registrations by `seq` (oldest first).
    /// (Small vectors: one entry per name is the rule, and a map per name would cost ~300 bytes.)
    by_name: HashMap<NameKey, Vec<(i64, Uuid)>>,
    /// Event-style triggers: who listens to what.
    by_event: HashMap<EventKey, Vec<Uuid>>,
    /// One-shot triggers that fired: the registration stays, it never fires again.
    spent: HashSet<Uuid>,
    /// Groups with the number of registrations in each.
    groups: BTreeMap<String, (TaskGroup, usize)>,
    next_seq: i64,
}

impl Registry {
    pub(crate) fn with_capacity(n: usize) -> Registry {
        Registry {
            tasks: HashMap::with_capacity(n),
            next_seq: 1,
            ..Registry::default()
        }
    }

    pub(crate) fn add(&mut self, record: Arc<TaskRecord>) {
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
            .push((record.seq, record.task_id)); // seq only grows: the vector stays sorted
        if let Some(key) = EventKey::of(&record.trigger) {
            self.by_event.entry(key).or_default().push(record.task_id);
        }
        self.tasks.insert(record.task_id, record);
    }

    pub(crate) fn remove(&mut self, task_id: &Uuid) -> Option<Arc<TaskRecord>> {
        let record = self.tasks.remove(task_id)?;
        self.spent.remove(task_id);
        let key = name_key(&record);
        if let Some(ids) = self.by_name.get_mut(&key) {
            ids.retain(|(seq, _)| *seq != record.seq);
            if ids.is_empty() {
                self.by_name.remove(&key);
            }
        }
        if let Some(key) = EventKey::of(&record.trigger)
            && let Some(ids) = self.by_event.get_mut(&key)
        {
            ids.retain(|id| id != task_id);
            if ids.is_empty() {
                self.by_event.remove(&key);
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

    pub(crate) fn get(&self, task_id: &Uuid) -> Option<&Arc<TaskRecord>> {
        self.tasks.get(task_id)
    }

    pub(crate) fn contains(&self, task_id: &Uuid) -> bool {
        self.tasks.contains_key(task_id)
    }

    pub(crate) fn records(&self) -> impl Iterator<Item = &Arc<TaskRecord>> {
        self.tasks.values()
    }

    /// The registrations named `name` in `group` (or outside any group), oldest first.
    pub(crate) fn named(&self, group: Option<&str>, name: &str) -> Vec<Uuid> {
        self.by_name
            .get(&(group.map(str::to_owned), name.to_owned()))
            .map(|ids| ids.iter().map(|(_, id)| *id).collect())
            .unwrap_or_default()
    }

    /// The registrations listening to `key`.
    pub(crate) fn listeners(&self, key: &EventKey) -> &[Uuid] {
        self.by_event.get(key).map_or(&[], Vec::as_slice)
    }

    pub(crate) fn is_spent(&self, task_id: &Uuid) -> bool {
        self.spent.contains(task_id)
    }

    /// Marks a one-shot registration spent; `false` if it already was.
    pub(crate) fn mark_spent(&mut self, task_id: Uuid) -> bool {
        self.spent.insert(task_id)
    }

    pub(crate) fn group(&self, group_id: &str) -> Option<&TaskGroup> {
        self.groups.get(group_id).map(|(g, _)| g)
    }

    /// Groups that hold at least one registration, by id.
    pub(crate) fn groups(&self) -> impl Iterator<Item = &TaskGroup> {
        self.groups.values().map(|(g, _)| g)
    }

    /// The sequence number the next registration gets.
    pub(crate) fn next_seq(&self) -> i64 {
        self.next_seq
    }
}
