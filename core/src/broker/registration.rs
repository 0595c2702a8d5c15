//! A registered task (`BackgroundTaskRegistration`): the public handle of one registration — an
//! immutable snapshot of what was registered plus the backend it lives in (this process's broker,
//! or another's reached as a client). The broker hands these to run functions and handlers; the
//! façade (`system.rs`) hands them to the app, and adds `Registration::system`.

use std::sync::Arc;

use uuid::Uuid;

use super::backend::Backend;
use super::handlers::{CompletedFn, ProgressFn};
use crate::error::{Error, Result};
use crate::model::{
    ApplicationTriggerResult, RunRecord, SystemConditionType, TaskGroup, TaskRecord, TaskTrigger,
    Trigger,
};

/// A registered task (`BackgroundTaskRegistration`): an immutable snapshot of what was registered
/// plus the system it lives in.
#[derive(Clone)]
pub struct Registration {
    pub(crate) home: Arc<dyn Backend>,
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
        self.record.task_id == other.record.task_id && same_home(&self.home, &other.home)
    }
}

impl Registration {
    pub(crate) fn new(home: Arc<dyn Backend>, record: Arc<TaskRecord>) -> Registration {
        Registration { home, record }
    }
    /// Where calls for it go now (see `Backend::current`).
    fn backend(&self) -> Arc<dyn Backend> {
        Arc::clone(&self.home).current()
    }
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
    /// The trigger as the app described it.
    pub fn trigger(&self) -> Trigger {
        self.record.trigger.described()
    }
    /// The trigger with typed values (as validated).
    pub fn task_trigger(&self) -> &TaskTrigger {
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
    /// When its time, maintenance or calendar trigger is next due (ms since the epoch), as the
    /// broker plans it now; `None` for other triggers and spent ones.
    pub fn next_due_ms(&self) -> Option<i64> {
        self.backend()
            .due(&self.record.task_id)
            .ok()
            .and_then(|d| d.0)
    }
    /// A one-shot trigger that has fired: the registration stays but never fires again.
    pub fn is_spent(&self) -> bool {
        self.backend().due(&self.record.task_id).is_ok_and(|d| d.1)
    }
    /// Unregisters this task (see [`System::unregister`](crate::System::unregister)).
    pub fn unregister(&self, cancel_task: bool) -> Result<()> {
        self.backend().unregister(&self.record.task_id, cancel_task)
    }
    /// Requests a run through this registration's application trigger (`INVALID_ARGUMENT` for
    /// another kind of trigger).
    pub fn request(
        &self,
        arguments: Option<serde_json::Value>,
    ) -> Result<ApplicationTriggerResult> {
        match &self.record.trigger {
            TaskTrigger::Application { id } => self.backend().request(id, arguments),
            other => Err(Error::invalid(format!(
                "task {:?} has a {} trigger, not an application trigger",
                self.record.name,
                other.kind().name().to_ascii_lowercase().replace('_', " ")
            ))),
        }
    }
    pub fn add_completed(&self, handler: CompletedFn) -> Result<u64> {
        self.backend().add_completed(&self.record.task_id, handler)
    }
    pub fn add_progress(&self, handler: ProgressFn) -> Result<u64> {
        self.backend().add_progress(&self.record.task_id, handler)
    }
    pub fn remove_handler(&self, token: u64) -> bool {
        self.backend().remove_handler(token)
    }
    /// The recorded runs, oldest first.
    pub fn history(&self) -> Result<Vec<RunRecord>> {
        self.backend().history(&self.record.task_id)
    }
}

/// Whether two handles lead to the same backend (the same system).
pub(crate) fn same_home(a: &Arc<dyn Backend>, b: &Arc<dyn Backend>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}
