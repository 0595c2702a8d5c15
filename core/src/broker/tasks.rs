//! What registering, unregistering and requesting mean for the broker. A new registration (already
//! committed to the store) is planned and the broker woken if it must wake sooner; a replaced or
//! unregistered one is canceled with `ABORT` when asked and forgotten by every queue; a request
//! fires the registrations that hold an application trigger.

use std::sync::Arc;

use uuid::Uuid;

use super::{Broker, State};
use crate::model::{ApplicationTriggerResult, CancellationReason, TaskRecord};
use crate::registry::EventKey;

impl Broker {
    /// Takes in a registration just committed to the store, and drops the ones it `replaced`
    /// (name policy `REPLACE`): their running instances are canceled with `ABORT`.
    pub(crate) fn registered(
        self: &Arc<Self>,
        st: &mut State,
        record: Arc<TaskRecord>,
        replaced: &[Uuid],
        now: i64,
    ) {
        for id in replaced {
            self.cancel_task(st, id, CancellationReason::Abort, now);
            self.forget(st, id);
        }
        st.registry.add(Arc::clone(&record));
        if let Some(due) = record.next_due_ms {
            st.schedule(record.task_id, due);
            st.wake_broker_by(due + self.window_ms(), &self.waker);
        }
    }

    /// Drops a registration already deleted from the store. With `cancel_task`, its running
    /// instance is canceled with `ABORT`; otherwise it finishes.
    pub(crate) fn unregistered(
        self: &Arc<Self>,
        st: &mut State,
        task_id: &Uuid,
        cancel_task: bool,
    ) {
        if cancel_task {
            let now = self.clock.now_ms();
            self.cancel_task(st, task_id, CancellationReason::Abort, now);
        }
        self.forget(st, task_id);
    }

    /// Removes a registration from the registry and every queue. A running instance still
    /// reports its end to the handlers (`finish` drops them then); otherwise they go now.
    fn forget(&self, st: &mut State, task_id: &Uuid) {
        st.registry.remove(task_id);
        st.unschedule(task_id);
        st.unlatch(task_id);
        st.once_fired.remove(task_id);
        if !st.running.contains_key(task_id) {
            let handlers = self.handlers_mut().forget(task_id);
            st.defer_drop(handlers);
        }
    }

    /// Fires the registrations holding application trigger `trigger_id` (`arguments`: their
    /// trigger details). `CURRENTLY_RUNNING` when one of them runs or has a run pending (nothing
    /// is queued: each `ALLOWED` causes exactly one run), `UNKNOWN_ERROR` when none holds it.
    pub(crate) fn request(
        self: &Arc<Self>,
        st: &mut State,
        trigger_id: &Uuid,
        arguments: Option<serde_json::Value>,
    ) -> ApplicationTriggerResult {
        let holders = st
            .registry
            .listeners(&EventKey::Application(*trigger_id))
            .to_vec();
        if holders.is_empty() {
            log::debug!(
                target: "btb",
                "request of application trigger {trigger_id}: no registration of this system holds it (UNKNOWN_ERROR)"
            );
            return ApplicationTriggerResult::UnknownError;
        }
        // Each ALLOWED request causes exactly one run: while a run is going or already pending,
        // a request would only coalesce with it, so it is refused as Windows refuses it.
        // A retry waiting for its delay is no run going: this request replaces it (SPEC §12).
        if holders.iter().any(|id| {
            st.running.contains_key(id)
                || st.runs_elsewhere(id)
                || st.pending.get(id).is_some_and(|p| p.not_before.is_none())
        }) {
            return ApplicationTriggerResult::CurrentlyRunning;
        }
        let now = self.clock.now_ms();
        let mut changes = Vec::new();
        for id in holders {
            self.fire(st, id, arguments.clone(), now, &mut changes);
        }
        self.commit(st, changes);
        self.dispatch(st, now);
        ApplicationTriggerResult::Allowed
    }

    /// Starts a broker opened paused: what latched meanwhile runs now.
    pub(crate) fn start(self: &Arc<Self>, st: &mut State) {
        if st.paused {
            st.paused = false;
            let now = self.clock.now_ms();
            self.dispatch(st, now);
        }
    }
}
