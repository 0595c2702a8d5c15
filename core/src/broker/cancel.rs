//! Cancellation and the end of a run (SPEC §4): reasons, canceled handlers, time limits and the
//! grace after them, abandoning an instance whose grace ran out, and recording how a run ended.

use std::sync::Arc;

use uuid::Uuid;

use super::{Broker, Completion, Event, Instance, Note, State};
use crate::model::{CancellationReason, RunRecord, SystemConditionType, TaskRecord, TaskTrigger};

/// A live instance and its deadlines (clock milliseconds).
pub(crate) struct Running {
    pub(crate) instance: Instance,
    pub(crate) limit_at: Option<i64>,
    pub(crate) grace_at: Option<i64>,
    /// A host process's group got SIGTERM when the grace ran out; SIGKILL follows after another.
    pub(crate) terminated: bool,
    /// A grace that ran out while the run's host process was still starting: it has no process
    /// to signal yet, and is not abandoned as an in-process run would be. It is due again once
    /// the process is there (`Broker::host_started`).
    pub(crate) grace_for_host: Option<i64>,
}

impl Broker {
    /// Cancels the running instance of a task, if any.
    pub(crate) fn cancel_task(
        &self,
        st: &mut State,
        task_id: &Uuid,
        reason: CancellationReason,
        now: i64,
    ) {
        if let Some(running) = st.running.get_mut(task_id) {
            let instance = running.instance.clone();
            let mut life = instance.life();
            if life.done || life.canceled.is_some() {
                return;
            }
            life.canceled = Some(reason);
            if let Some(child) = life.child.as_ref().filter(|c| c.greeted) {
                child.send(&crate::protocol::ToHost::Canceled {
                    reason: reason as u32,
                });
            }
            let handlers = life.canceled_handler_list();
            drop(life);
            let grace_at = now + i64::from(self.policy.grace_ms);
            running.grace_at = Some(grace_at);
            if !handlers.is_empty() {
                st.notes
                    .push_back(Note::Canceled(instance.clone(), handlers, reason));
                self.notify_cv.notify_one();
            }
            if instance.life().queued {
                st.events.push_back(Event::Canceled(instance, reason));
            }
            st.wake_broker_by(grace_at, &self.waker);
            self.changed();
        }
    }

    /// Cancels every running instance with `reason`: the user logs off (LOGGING_OFF), the app is
    /// uninstalled (UNINSTALL) or its manifest's version changed (SERVICING_UPDATE).
    pub(crate) fn cancel_all(&self, st: &mut State, reason: CancellationReason, now: i64) {
        let running: Vec<Uuid> = st.running.keys().copied().collect();
        if !running.is_empty() {
            log::info!(target: "btb", "canceling {} run(s): {}", running.len(), reason.name());
        }
        for id in running {
            self.cancel_task(st, &id, reason, now);
        }
    }

    /// Whether the energy saver strands a run of `record` (ENERGY_SAVER, as Windows' battery
    /// saver): it is on while the machine is on battery, and the task needs power — a condition
    /// ON_AC_POWER or BATTERY_NOT_LOW, or a maintenance trigger.
    pub(crate) fn saves_energy_from(&self, st: &State, record: &TaskRecord) -> bool {
        st.energy_saver
            && st.states.get(SystemConditionType::OnAcPower) == Some(false)
            && (matches!(record.trigger, TaskTrigger::Maintenance { .. })
                || record.conditions.iter().any(|c| {
                    matches!(
                        c,
                        SystemConditionType::OnAcPower | SystemConditionType::BatteryNotLow
                    )
                }))
    }

    /// Ends an instance: records the run, frees its slot, queues the completed handlers and runs
    /// what was waiting. A late end of an abandoned instance is ignored.
    pub(crate) fn complete(self: &Arc<Self>, instance: &Instance) {
        let mut st = self.lock();
        self.finish(&mut st, instance, None);
    }

    /// `abandon_reason`: the grace period ran out (the instance is recorded as canceled).
    pub(super) fn finish(
        self: &Arc<Self>,
        st: &mut State,
        instance: &Instance,
        abandon_reason: Option<CancellationReason>,
    ) {
        let task_id = instance.task().task_id();
        if !st
            .running
            .get(&task_id)
            .is_some_and(|r| r.instance == *instance)
        {
            return;
        }
        let mut life = instance.life();
        if life.done {
            return;
        }
        life.done = true;
        // Released now, before anyone hears that the run ended (a close is no app code).
        drop(life.inhibitor.take());
        if abandon_reason.is_some()
            && let Some(child) = &life.child
        {
            // Closing: no host process outlives its system; a client process hears the end.
            child.signal(rustix::process::Signal::KILL);
            child.hang_up();
        }
        if abandon_reason.is_some() && std::mem::take(&mut life.on_worker) {
            // Abandoned: its worker may never come back; it no longer counts for `wait_idle`.
            st.busy_workers -= 1;
        }
        let reason = life.canceled.or(abandon_reason);
        let failure = life.failure.take();
        let retry = life.retry.take();
        let output = life.result.take();
        let (stdout, stderr) = life.output.take().unwrap_or_default();
        drop(life);
        st.running.remove(&task_id);
        let now = self.clock.now_ms();
        let end = self.end_of_run(st, instance, reason, failure, retry, now);
        // Pull-queue events about it that the host never took are stale now.
        st.events.retain(|e| match e {
            Event::Run(i) | Event::Canceled(i, _) => i != instance,
        });
        log::info!(
            target: "btb",
            "run {} of {:?} ended {} after {} ms (attempt {}){}{}",
            instance.instance_id(),
            instance.task().name(),
            end.outcome.name(),
            now.saturating_sub(instance.started_ms()),
            instance.attempt(),
            end.message.as_deref().map_or(String::new(), |m| format!(": {m}")),
            end.retry_at_ms
                .map_or(String::new(), |at| format!("; next attempt at {}", crate::view::rfc3339(at)))
        );
        let completion = Completion {
            instance_id: instance.instance_id(),
            outcome: end.outcome,
            message: end.message,
            reason,
            last_progress: instance.progress(),
            attempt: instance.attempt(),
            retry_at_ms: end.retry_at_ms,
            output: output.as_deref().and_then(|t| serde_json::from_str(t).ok()),
        };
        if st.registry.contains(&task_id) {
            let run = RunRecord {
                instance_id: completion.instance_id,
                task_id,
                trigger_kind: instance.task().trigger().kind(),
                trigger_details: instance.trigger_details().map(|d| d.to_string()),
                started_ms: instance.started_ms(),
                ended_ms: now,
                outcome: completion.outcome,
                reason,
                message: completion.message.clone(),
                last_progress: completion.last_progress,
                stdout,
                stderr,
                attempt: completion.attempt,
                retry_at_ms: completion.retry_at_ms,
                output,
            };
            self.writer
                .enqueue(super::writer::Write::Run(run, self.policy.history_limit));
        }
        // The handlers registered now hear of it, even if the task was unregistered meanwhile
        // (then they are dropped: nothing of the task remains).
        let handlers = {
            let mut h = self.handlers_mut();
            if st.registry.contains(&task_id) {
                h.completed.get(&task_id).cloned()
            } else {
                st.defer_drop(h.progress.remove(&task_id));
                h.completed.remove(&task_id)
            }
        };
        if handlers.is_some() || self.has_subscribers() {
            st.notes.push_back(Note::Completed(
                instance.task().clone(),
                completion,
                handlers.unwrap_or_default(),
            ));
            self.notify_cv.notify_one();
        }
        // `close` and `wait_idle` wait for this: with no handler to call, nothing else tells them.
        self.changed();
        self.dispatch(st, now);
    }
}
