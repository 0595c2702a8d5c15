//! The handler tables of one process (entry points, background-activated handlers, the
//! resolver, completed and progress handlers with their tokens): a broker's, or a client's
//! (which its broker never calls). The types of the handlers live here too.

use foldhash::HashMap;
use std::sync::Arc;

use uuid::Uuid;

use super::instance::{Completion, Handler};
use super::registration::Registration;

/// A completed handler: `(registration, completion)`.
pub type CompletedFn = Arc<dyn Fn(&Registration, &Completion) + Send + Sync>;
/// A progress handler: `(registration, instance id, progress)`.
pub type ProgressFn = Arc<dyn Fn(&Registration, Uuid, u32) + Send + Sync>;
/// Resolves an entry point that has no registered handler (the Python layer imports
/// `package.module:function` or `package.module.Class`). Called on a worker thread, no lock held.
pub type Resolver = Arc<dyn Fn(&str) -> Option<Handler> + Send + Sync>;

/// The handlers a system calls, and the tokens that remove them.
#[derive(Default)]
pub(crate) struct Handlers {
    pub(crate) entry_points: HashMap<String, Handler>,
    /// Background-activated handlers: `None` = the system's, `Some(id)` = a group's.
    pub(crate) activation: HashMap<Option<String>, Handler>,
    pub(crate) resolver: Option<Resolver>,
    pub(crate) completed: HashMap<Uuid, Vec<(u64, CompletedFn)>>,
    pub(crate) progress: HashMap<Uuid, Vec<(u64, ProgressFn)>>,
    next_token: u64,
}

impl Handlers {
    pub(crate) fn add_completed(&mut self, task_id: Uuid, handler: CompletedFn) -> u64 {
        self.next_token += 1;
        let token = self.next_token;
        self.completed
            .entry(task_id)
            .or_default()
            .push((token, handler));
        token
    }

    pub(crate) fn add_progress(&mut self, task_id: Uuid, handler: ProgressFn) -> u64 {
        self.next_token += 1;
        let token = self.next_token;
        self.progress
            .entry(task_id)
            .or_default()
            .push((token, handler));
        token
    }

    /// Removes a completed or progress handler; returns it to be dropped unlocked.
    pub(crate) fn remove(&mut self, token: u64) -> Option<Box<dyn std::any::Any + Send>> {
        for list in self.completed.values_mut() {
            if let Some(i) = list.iter().position(|(t, _)| *t == token) {
                return Some(Box::new(list.remove(i)));
            }
        }
        for list in self.progress.values_mut() {
            if let Some(i) = list.iter().position(|(t, _)| *t == token) {
                return Some(Box::new(list.remove(i)));
            }
        }
        None
    }

    /// Whether a completed or progress handler with this token is still held.
    pub(crate) fn holds(&self, token: u64) -> bool {
        let completed = self.completed.values().flatten().any(|(t, _)| *t == token);
        completed || self.progress.values().flatten().any(|(t, _)| *t == token)
    }

    /// Takes every handler of a registration that is gone (to be dropped unlocked).
    pub(crate) fn forget(&mut self, task_id: &Uuid) -> Box<dyn std::any::Any + Send> {
        Box::new((
            self.completed.remove(task_id),
            self.progress.remove(task_id),
        ))
    }
}
