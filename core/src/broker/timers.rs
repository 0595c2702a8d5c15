//! Due times (SPEC §3): time, maintenance and calendar triggers, the timer window, drift-free
//! periodic due times, catch-up of time missed while nothing ran, re-planning after a clock jump.
//! Every due time is an instant of years 1–9999 (`clock::in_range`): past that there is none.

use std::sync::Arc;

use uuid::Uuid;

use super::{Broker, Instance, Pending, State};
use crate::error::Result;
use crate::model::{CancellationReason, SystemTriggerType, TaskRecord, TaskTrigger, TriggerKind};
use crate::registry::EventKey;
use crate::store::ScheduleChange;

impl State {
    /// Wakes the broker if it planned to sleep past `at` (its plan: `planned_wake`; `None` while it
    /// sleeps with nothing planned). Avoids a wake-up per run for deadlines it already covers.
    pub(crate) fn wake_broker_by(&mut self, at: i64, waker: &crate::wake::Waker) {
        if self.planned_wake.is_none_or(|planned| at < planned) {
            self.planned_wake = Some(at);
            waker.wake();
        }
    }

    /// Adds a pending fire, last in firing order.
    /// `attempt` 1 for a fire; a retry's is later, and waits until `not_before`.
    pub(super) fn latch(
        &mut self,
        task_id: Uuid,
        details: Option<serde_json::Value>,
        persisted: bool,
        attempt: u32,
        not_before: Option<i64>,
    ) {
        self.fire_seq += 1;
        let seq = self.fire_seq;
        self.pending_order.insert(seq, task_id);
        if let Some(at) = not_before {
            self.retry_timers.insert((at, task_id));
        }
        self.pending.insert(
            task_id,
            Pending {
                seq,
                details,
                persisted,
                forced: false,
                attempt,
                not_before,
                needs_handler: None,
                park_deadline: None,
                parked_run: None,
            },
        );
    }

    /// Removes a pending fire (with its retry timer).
    pub(super) fn unlatch(&mut self, task_id: &Uuid) -> Option<Pending> {
        let p = self.pending.remove(task_id)?;
        self.pending_order.remove(&p.seq);
        if let Some(at) = p.not_before {
            self.retry_timers.remove(&(at, *task_id));
        }
        Some(p)
    }

    pub(crate) fn schedule(&mut self, task_id: Uuid, due: i64) {
        self.unschedule(&task_id);
        self.timers.insert((due, task_id));
        self.due.insert(task_id, due);
    }

    pub(crate) fn unschedule(&mut self, task_id: &Uuid) {
        if let Some(due) = self.due.remove(task_id) {
            self.timers.remove(&(due, *task_id));
        }
    }
}

impl Broker {
    pub(super) fn window_ms(&self) -> i64 {
        i64::from(self.policy.timer_window_seconds) * 1000
    }

    /// The first due time of a trigger registered at `now`.
    pub(crate) fn first_due(&self, trigger: &TaskTrigger, now: i64) -> Option<i64> {
        match trigger {
            TaskTrigger::Time {
                freshness_minutes, ..
            }
            | TaskTrigger::Maintenance {
                freshness_minutes, ..
            } => Some(now + i64::from(*freshness_minutes) * 60_000),
            TaskTrigger::Calendar { spec, .. } => spec.next_after(now, &self.tz()),
            _ => None,
        }
        .and_then(crate::clock::in_range)
    }

    /// The due time after `due` for a periodic trigger (drift-free: periodic due times advance
    /// from the previous due time; missed periods are skipped so that a missed run fires once).
    /// `None` for one-shot triggers.
    ///
    /// A due time counts as missed only once its whole window has passed: with a window as long
    /// as the period (Windows' 15 minutes for a 15-minute trigger) every period still runs.
    pub(super) fn next_due(&self, record: &TaskRecord, due: i64, now: i64) -> Option<i64> {
        // Due times at or before `missed` can no longer run in their window.
        let missed = now - self.window_ms();
        match &record.trigger {
            TaskTrigger::Time {
                freshness_minutes,
                one_shot: false,
            }
            | TaskTrigger::Maintenance {
                freshness_minutes,
                one_shot: false,
            } => {
                let period = i64::from(*freshness_minutes).max(1) * 60_000;
                // Both bounded instants: no overflow. Past the last instant there is no next.
                Some(due + period * ((missed - due).max(0) / period + 1))
                    .and_then(crate::clock::in_range)
            }
            TaskTrigger::Calendar { spec, .. } => {
                let tz = self.tz();
                spec.next_after(due, &tz).and_then(|next| {
                    if next > missed {
                        Some(next)
                    } else {
                        spec.next_after(missed, &tz)
                    }
                })
            }
            .and_then(crate::clock::in_range),
            _ => None,
        }
    }

    /// After opening: re-latch persisted fires, plan timers, catch up on missed time once, raise
    /// SERVICING_COMPLETE when the manifest version changed.
    pub(crate) fn restore(
        self: &Arc<Self>,
        st: &mut State,
        latched: Vec<(Uuid, crate::store::Latched)>,
        serviced: bool,
    ) -> Result<()> {
        for (task_id, l) in latched {
            let details = l.details.and_then(|d| serde_json::from_str(&d).ok());
            st.latch(task_id, details, true, l.attempt, l.not_before);
        }
        let now = self.clock.now_ms();
        let mut changes = Vec::new();
        let timed: Vec<(Uuid, Option<i64>)> = st
            .registry
            .records()
            .filter(|t| !st.registry.is_spent(&t.task_id))
            .filter(|t| {
                matches!(
                    t.trigger.kind(),
                    TriggerKind::Time | TriggerKind::Maintenance | TriggerKind::Calendar
                )
            })
            .map(|t| (t.task_id, t.next_due_ms))
            .collect();
        for (task_id, due) in timed {
            let record = Arc::clone(st.registry.get(&task_id).expect("registered"));
            let due = match due {
                // A store written by hand (or by a clock gone wrong): no instant to wait for.
                Some(d) if crate::clock::in_range(d).is_none() => {
                    log::warn!(target: "btb", "task {task_id} has a stored due time of {d} ms, outside years \
                         1-9999: it will not fire until registered again"
                    );
                    None
                }
                Some(d) => Some(d),
                None => self.first_due(&record.trigger, record.registered_at_ms),
            };
            match due {
                Some(due) if due <= now => {
                    // Missed while nothing ran: fire once (systemd Persistent=true).
                    self.fire(st, task_id, None, now, &mut changes);
                    if let Some(next) = self.next_due(&record, due, now) {
                        st.schedule(task_id, next);
                        changes.push(ScheduleChange::NextDue(task_id, Some(next)));
                    }
                }
                Some(due) => st.schedule(task_id, due),
                None => {}
            }
        }
        if serviced {
            self.fire_key_into(
                st,
                &EventKey::System(SystemTriggerType::ServicingComplete),
                now,
                &mut changes,
            );
        }
        self.commit(st, changes);
        // Start what can run now, before `open` returns: a runnable fire left pending for the
        // broker's first pass would be invisible to `wait_idle` (it waits for runs, not fires).
        self.dispatch(st, now);
        Ok(())
    }

    /// Fires due timers, enforces limits and grace; returns the next instant that needs the broker.
    pub(crate) fn tick(self: &Arc<Self>, st: &mut State, now: i64) -> Option<i64> {
        let window = self.window_ms();
        // The first timer's window is over: fire it, and every other one already due with it.
        if st
            .timers
            .first()
            .is_some_and(|(due, _)| due + window <= now)
        {
            self.fire_due(st, now);
        }
        let expired: Vec<(Uuid, i64)> = st
            .running
            .iter()
            .filter(|(_, r)| r.grace_at.is_none())
            .filter_map(|(id, r)| r.limit_at.filter(|t| *t <= now).map(|t| (*id, t)))
            .collect();
        for (id, limit_at) in expired {
            // The grace runs from the limit, not from when the broker noticed it: limit + grace in
            // all, whatever the broker's wake-ups (a manual clock moved far in one step, a suspend).
            self.cancel_task(st, &id, CancellationReason::ExecutionTimeExceeded, limit_at);
        }
        let graceless: Vec<Uuid> = st
            .running
            .iter()
            .filter(|(_, r)| r.grace_at.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in graceless {
            let running = st.running.get_mut(&id).expect("listed");
            let instance = running.instance.clone();
            let life = instance.life();
            if life.child.is_none() && life.starting_host {
                // Its host process is still starting: the grace is due again once it is there
                // (`host_started`), and nothing is recorded before that process ends.
                running.grace_for_host = running.grace_at.take();
                running.limit_at = None; // canceled already: no deadline of its own is left
                continue;
            }
            if let Some(child) = life.child.as_ref().filter(|c| c.is_process()) {
                // A host process: SIGTERM, and SIGKILL after a second grace. It ends when the
                // process exits (its worker records it), not before.
                let grace_at = running.grace_at.take().expect("listed");
                if !running.terminated {
                    child.signal(rustix::process::Signal::TERM);
                    running.terminated = true;
                    let kill_at = grace_at + i64::from(self.policy.grace_ms);
                    if kill_at > now {
                        running.grace_at = Some(kill_at);
                        continue;
                    }
                    // Both graces are over already (the clock moved past them in one step, or
                    // the process came late): SIGKILL follows at once.
                }
                child.signal(rustix::process::Signal::KILL);
                running.limit_at = None;
                continue;
            }
            drop(life);
            // In-process: abandoned (its thread cannot be killed), recorded as canceled.
            self.finish(st, &instance, Some(CancellationReason::Terminating));
        }
        // Retries whose delay is over are runnable now: dispatch takes them.
        while st.retry_timers.first().is_some_and(|(at, _)| *at <= now) {
            st.retry_timers.pop_first();
        }
        // Runs that waited for the activated app's handler longer than the policy allows.
        if st
            .pending
            .values()
            .any(|p| p.park_deadline.is_some_and(|d| d <= now))
        {
            let who = st.activation.as_ref().map_or_else(
                || "the activated app".to_owned(),
                |a| format!("the activated app (pid {})", a.pid),
            );
            let limit = self.policy.activation_timeout_ms;
            self.fail_parked(
                st,
                now,
                |p| p.park_deadline.is_some_and(|d| d <= now),
                |handler| format!("{who} did not offer {handler} within {limit} ms"),
            );
        }
        self.dispatch(st, now);
        let timer = st.timers.first().map(|(due, _)| due + window);
        let retry = [
            st.retry_timers.first().map(|(at, _)| *at),
            st.pending.values().filter_map(|p| p.park_deadline).min(),
        ]
        .into_iter()
        .flatten()
        .min();
        let deadlines = st
            .running
            .values()
            .filter_map(|r| r.grace_at.or(r.limit_at))
            .min();
        [timer, retry, deadlines].into_iter().flatten().min()
    }

    /// The host process of `instance` is there now: a grace that ran out while it started is due
    /// again, and the broker looks at it at once (SIGTERM, or SIGKILL when both graces are over).
    pub(super) fn host_started(&self, instance: &Instance) {
        let mut st = self.lock();
        let Some(running) = st
            .running
            .get_mut(&instance.task().task_id())
            .filter(|r| r.instance == *instance)
        else {
            return;
        };
        if let Some(at) = running.grace_for_host.take() {
            running.grace_at = Some(at);
            self.waker.wake(); // a tick now, whatever the clock (a manual one included)
        }
    }

    /// Fires every timer due by `now`, even those whose window is still open.
    pub(super) fn fire_due(&self, st: &mut State, now: i64) {
        let mut changes = Vec::new();
        let due_now: Vec<(i64, Uuid)> = st
            .timers
            .iter()
            .take_while(|(d, _)| *d <= now)
            .copied()
            .collect();
        for (due, task_id) in due_now {
            st.unschedule(&task_id);
            let record = Arc::clone(st.registry.get(&task_id).expect("registered"));
            self.fire(st, task_id, None, now, &mut changes);
            let next = self.next_due(&record, due, now);
            if let Some(next) = next {
                st.schedule(task_id, next);
            }
            changes.push(ScheduleChange::NextDue(task_id, next));
        }
        self.commit(st, changes);
    }

    /// After the wall clock was set: a calendar trigger's next matching time may now come sooner
    /// than the instant planned before the jump (a backward jump); re-plan those. Forward jumps
    /// need nothing: what became due fires at the next tick, once. After a time zone change
    /// (`all`), every calendar trigger's next time moves, later ones too.
    pub(super) fn replan_calendars(&self, st: &mut State, now: i64, all: bool) {
        let tz = self.tz();
        let mut changes = Vec::new();
        let planned: Vec<(Uuid, i64)> = st.due.iter().map(|(id, due)| (*id, *due)).collect();
        for (task_id, due) in planned {
            let Some(TaskTrigger::Calendar { spec, .. }) =
                st.registry.get(&task_id).map(|t| &t.trigger)
            else {
                continue;
            };
            let next = spec
                .next_after(now, &tz)
                .filter(|next| all || *next < due)
                .and_then(crate::clock::in_range);
            if let Some(next) = next
                && next != due
            {
                st.schedule(task_id, next);
                changes.push(ScheduleChange::NextDue(task_id, Some(next)));
            }
        }
        self.commit(st, changes);
    }
}
