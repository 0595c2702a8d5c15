//! The background-activated handlers of task groups (WinRT
//! `BackgroundTaskRegistrationGroup.BackgroundActivated`), kept for the whole process.
//!
//! Objects are bound by use, as in WinRT: a group is named by its id, and its handlers apply in
//! every system of this process where a registration names that group — whether they were added
//! before or after the registration, and whichever system the app had at hand when it added them.
//! Several handlers per group are called in the order they were added, with one instance; the
//! first that reports a failure ends the run. A token removes one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::instance::{Instance, RunFn};

struct Registry {
    next_token: u64,
    /// Group id → handlers in the order added.
    by_group: BTreeMap<String, Vec<(u64, RunFn)>>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next_token: 0,
    by_group: BTreeMap::new(),
});

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Adds a handler for the tasks of group `group_id` that have no entry point; returns its token
/// (never 0).
pub fn add_background_activated(group_id: &str, handler: RunFn) -> u64 {
    let mut r = registry();
    r.next_token += 1;
    let token = r.next_token;
    r.by_group
        .entry(group_id.to_owned())
        .or_default()
        .push((token, handler));
    drop(r);
    announce(); // client processes offer the group's tasks to their broker
    token
}

/// Removes the handler with `token` and returns it (`None` if no handler has it), for the caller
/// to drop where it may: with no btb lock held (it may hold references that call back into btb).
pub fn remove_background_activated(token: u64) -> Option<RunFn> {
    let mut r = registry();
    let mut removed = None;
    r.by_group.retain(|_, list| {
        if let Some(i) = list.iter().position(|(t, _)| *t == token) {
            removed = Some(list.remove(i).1);
        }
        !list.is_empty()
    });
    drop(r);
    announce();
    removed
}

/// Told when the group handlers change: a broker tries the runs that wait for a handler again; a
/// client tells its broker what it can run now.
pub(crate) trait GroupObserver: Send + Sync {
    fn groups_changed(self: Arc<Self>);
}

/// The observers, one per open system of this process (those gone are pruned at each change).
static OBSERVERS: Mutex<Vec<Weak<dyn GroupObserver>>> = Mutex::new(Vec::new());

fn observers() -> MutexGuard<'static, Vec<Weak<dyn GroupObserver>>> {
    OBSERVERS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Adds an observer for as long as it lives.
pub(crate) fn observe(observer: Weak<dyn GroupObserver>) {
    let mut list = observers();
    list.retain(|o| o.strong_count() > 0);
    list.push(observer);
}

/// Tells every observer that the handlers changed, with no lock held (an observer talks to a
/// broker).
fn announce() {
    let live: Vec<Arc<dyn GroupObserver>> = {
        let mut list = observers();
        list.retain(|o| o.strong_count() > 0);
        list.iter().filter_map(Weak::upgrade).collect()
    };
    for observer in live {
        observer.groups_changed();
    }
}

impl GroupObserver for super::Broker {
    fn groups_changed(self: Arc<Self>) {
        self.handlers_changed();
    }
}

/// The groups that have a handler now.
pub(crate) fn with_handlers() -> Vec<String> {
    registry().by_group.keys().cloned().collect()
}

/// Whether group `group_id` has a handler now.
pub(crate) fn has_handler(group_id: &str) -> bool {
    registry().by_group.contains_key(group_id)
}

/// The handlers of `group_id` as one run function, if it has any.
pub(crate) fn handler(group_id: &str) -> Option<RunFn> {
    let handlers: Vec<RunFn> = registry()
        .by_group
        .get(group_id)?
        .iter()
        .map(|(_, h)| h.clone())
        .collect();
    Some(Arc::new(move |instance: &Instance| {
        for handler in &handlers {
            handler(instance);
            if instance.failed() {
                break;
            }
        }
    }))
}
