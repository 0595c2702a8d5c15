//! The background-activated handlers of task groups (WinRT
//! `BackgroundTaskRegistrationGroup.BackgroundActivated`), kept for the whole process.
//!
//! Objects are bound by use, as in WinRT: a group is named by its id, and its handlers apply in
//! every system of this process where a registration names that group — whether they were added
//! before or after the registration, and whichever system the app had at hand when it added them.
//! Several handlers per group are called in the order they were added, with one instance; the
//! first that reports a failure ends the run. A token removes one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

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

/// Told that the group handlers changed; `false` once it no longer wants to hear (its system is
/// gone).
pub(crate) type Observer = Arc<dyn Fn() -> bool + Send + Sync>;

static OBSERVERS: Mutex<Vec<Observer>> = Mutex::new(Vec::new());

/// Adds an observer of changes (a broker tries the runs that wait for a handler again; a client
/// tells its broker what it can run now).
pub(crate) fn observe(observer: Observer) {
    OBSERVERS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(observer);
}

/// Tells every observer that the handlers changed (with no lock held: an observer talks to a
/// broker) and forgets those that are gone.
fn announce() {
    let observers = OBSERVERS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let gone: Vec<Observer> = observers.into_iter().filter(|o| !o()).collect();
    if !gone.is_empty() {
        OBSERVERS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|o| !gone.iter().any(|g| Arc::ptr_eq(g, o)));
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
