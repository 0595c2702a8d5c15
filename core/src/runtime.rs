//! The broker at work (SPEC §3–§4): fires triggers, latches them until their conditions hold,
//! runs instances on a bounded worker pool (or hands them to a host through the pull queue),
//! enforces time limits and grace, records runs and delivers progress and completion.
//!
//! Threads: one broker thread (timers and deadlines; it sleeps until the next due time or a
//! change, never polls), workers (spawned on demand, at most `max_concurrent` busy with live
//! instances), one notifier thread (calls progress, completed and canceled handlers in order).
//! One mutex (`Shared::state`) guards everything; no user code runs while it is held.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::calendar::CalendarSpec;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::instance::{CanceledFn, Completion, Handler, Instance};
use crate::model::{
    CancellationReason, CustomRecurrence, RunRecord, SystemConditionType, SystemTriggerType,
    TaskOutcome, TaskRecord, Trigger, TriggerKind,
};
use crate::store::ScheduleChange;
use crate::system::{EventKey, Registration, Shared, State};

/// A latched fire waiting for its conditions, a free slot, or the end of the running instance.
pub(crate) struct Pending {
    pub(crate) seq: u64,
    pub(crate) details: Option<serde_json::Value>,
    /// Written to the store (so it survives a restart).
    pub(crate) persisted: bool,
}

/// A live instance and its deadlines (clock milliseconds).
pub(crate) struct Running {
    pub(crate) instance: Instance,
    pub(crate) limit_at: Option<i64>,
    pub(crate) grace_at: Option<i64>,
}

/// Work for the notifier thread.
pub(crate) enum Note {
    Progress(Registration, Uuid, u32),
    /// With the completed handlers registered when the run ended.
    Completed(
        Registration,
        Completion,
        Vec<(u64, crate::system::CompletedFn)>,
    ),
    Canceled(Instance, Vec<CanceledFn>, CancellationReason),
}

/// An entry of the pull queue (`System::next_event`).
#[derive(Debug, Clone)]
pub enum Event {
    /// Run this instance on the host's thread, then call `Instance::finish_run`.
    Run(Instance),
    /// A queued instance was canceled: stop it and finish the run.
    Canceled(Instance, CancellationReason),
}

thread_local! {
    /// Set on btb's own threads (notifier and workers): waits for the system to go idle from one
    /// of them would wait for themselves.
    static ON_BTB_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

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
    fn latch(&mut self, task_id: Uuid, details: Option<serde_json::Value>, persisted: bool) {
        self.fire_seq += 1;
        let seq = self.fire_seq;
        self.pending_order.insert(seq, task_id);
        self.pending.insert(
            task_id,
            Pending {
                seq,
                details,
                persisted,
            },
        );
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

fn conditions_hold(st: &State, record: &TaskRecord) -> bool {
    let ac_ok = !matches!(record.trigger, Trigger::Maintenance { .. })
        || st.states.holds(SystemConditionType::OnAcPower);
    ac_ok && record.conditions.iter().all(|c| st.states.holds(*c))
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn check_pid(&self) -> Result<()> {
        let pid = std::process::id();
        if pid != self.pid {
            return Err(Error::state(format!(
                "this btb system was opened by process {} and cannot be used in a forked child \
                 (pid {pid}); open a new system in the child",
                self.pid
            )));
        }
        Ok(())
    }

    pub(crate) fn open_state(&self) -> Result<MutexGuard<'_, State>> {
        self.check_pid()?;
        let st = self.lock();
        if st.store.is_none() || st.closing {
            return Err(Error::state("the btb system is closed"));
        }
        Ok(st)
    }

    fn window_ms(&self) -> i64 {
        i64::from(self.policy.timer_window_seconds) * 1000
    }

    /// The first due time of a trigger registered at `now`.
    pub(crate) fn first_due(&self, trigger: &Trigger, now: i64) -> Option<i64> {
        match trigger {
            Trigger::Time {
                freshness_minutes, ..
            }
            | Trigger::Maintenance {
                freshness_minutes, ..
            } => Some(now + i64::from(*freshness_minutes) * 60_000),
            Trigger::Calendar { expression } => CalendarSpec::parse(expression)
                .ok()
                .and_then(|spec| spec.next_after(now, &self.tz)),
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
    fn next_due(&self, record: &TaskRecord, due: i64, now: i64) -> Option<i64> {
        // Due times at or before `missed` can no longer run in their window.
        let missed = now - self.window_ms();
        match &record.trigger {
            Trigger::Time {
                freshness_minutes,
                one_shot: false,
            }
            | Trigger::Maintenance {
                freshness_minutes,
                one_shot: false,
            } => {
                let period = i64::from(*freshness_minutes).max(1) * 60_000;
                // Both bounded instants: no overflow. Past the last instant there is no next.
                Some(due + period * ((missed - due).max(0) / period + 1))
                    .and_then(crate::clock::in_range)
            }
            Trigger::Calendar { expression } => {
                let spec = CalendarSpec::parse(expression).ok()?;
                spec.next_after(due, &self.tz)
                    .and_then(|next| {
                        if next > missed {
                            Some(next)
                        } else {
                            spec.next_after(missed, &self.tz)
                        }
                    })
                    .and_then(crate::clock::in_range)
            }
            _ => None,
        }
    }

    /// After opening: re-latch persisted fires, plan timers, catch up on missed time once, raise
    /// SERVICING_COMPLETE when the manifest version changed.
    pub(crate) fn restore(
        self: &Arc<Self>,
        st: &mut State,
        latched: Vec<(Uuid, Option<String>)>,
        serviced: bool,
    ) -> Result<()> {
        for (task_id, details) in latched {
            let details = details.and_then(|d| serde_json::from_str(&d).ok());
            st.latch(task_id, details, true);
        }
        let now = self.clock.now_ms();
        let mut changes = Vec::new();
        let timed: Vec<(Uuid, Option<i64>)> = st
            .tasks
            .values()
            .filter(|t| !st.spent.contains(&t.task_id))
            .filter(|t| {
                matches!(
                    t.trigger.kind(),
                    TriggerKind::Time | TriggerKind::Maintenance | TriggerKind::Calendar
                )
            })
            .map(|t| (t.task_id, t.next_due_ms))
            .collect();
        for (task_id, due) in timed {
            let record = Arc::clone(&st.tasks[&task_id]);
            let due = match due {
                // A store written by hand (or by a clock gone wrong): no instant to wait for.
                Some(d) if crate::clock::in_range(d).is_none() => {
                    eprintln!(
                        "btb: task {task_id} has a stored due time of {d} ms, outside years \
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
                &EventKey::System(SystemTriggerType::ServicingComplete as u32),
                now,
                &mut changes,
            );
        }
        if let Some(store) = st.store.as_mut() {
            store.update_schedule(&changes)?;
        }
        // Start what can run now, before `open` returns: a runnable fire left pending for the
        // broker's first pass would be invisible to `wait_idle` (it waits for runs, not fires).
        self.dispatch(st, now);
        Ok(())
    }

    pub(crate) fn start_threads(self: &Arc<Self>) -> Result<()> {
        let mut threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        for (name, body) in [
            ("btb-broker", Self::broker_loop as fn(&Arc<Shared>)),
            ("btb-notifier", Self::notifier_loop as fn(&Arc<Shared>)),
        ] {
            let shared = Arc::clone(self);
            let handle = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || body(&shared))
                .map_err(|e| {
                    Error::new(
                        crate::ErrorKind::Internal,
                        format!("cannot start the {name} thread: {e}"),
                    )
                })?;
            threads.push(handle);
        }
        Ok(())
    }

    /// Latches a fire of one registration (one pending fire at most; further fires coalesce).
    pub(crate) fn fire(
        &self,
        st: &mut State,
        task_id: Uuid,
        details: Option<serde_json::Value>,
        _now: i64,
        changes: &mut Vec<ScheduleChange>,
    ) {
        let Some(record) = st.tasks.get(&task_id).cloned() else {
            return;
        };
        if st.spent.contains(&task_id) {
            return;
        }
        if record.trigger.one_shot() {
            st.spent.insert(task_id);
            st.unschedule(&task_id);
            changes.push(ScheduleChange::Spent(task_id));
        }
        if st.pending.contains_key(&task_id) {
            return; // coalesces with the fire already pending
        }
        st.latch(task_id, details, false);
        st.unpersisted.push(task_id);
    }

    /// Fires every registration listening to `key`; returns how many fired.
    pub(crate) fn fire_key(self: &Arc<Self>, st: &mut State, key: &EventKey) -> usize {
        let now = self.clock.now_ms();
        let mut changes = Vec::new();
        let n = self.fire_key_into(st, key, now, &mut changes);
        self.commit(st, changes);
        self.dispatch(st, now);
        n
    }

    fn fire_key_into(
        &self,
        st: &mut State,
        key: &EventKey,
        now: i64,
        changes: &mut Vec<ScheduleChange>,
    ) -> usize {
        let ids: Vec<Uuid> = st.by_event.get(key).map(|s| s.to_vec()).unwrap_or_default();
        let mut n = 0;
        for id in ids {
            if st.spent.contains(&id) {
                continue;
            }
            if let Some(Trigger::CustomEvent { recurrence, .. }) =
                st.tasks.get(&id).map(|t| &t.trigger)
                && *recurrence == CustomRecurrence::Once as u32
                && !st.once_fired.insert(id)
            {
                continue;
            }
            self.fire(st, id, None, now, changes);
            n += 1;
        }
        n
    }

    /// Writes scheduling changes; a store failure is reported on stderr and the broker carries on
    /// with its in-memory state (it is retried with the next change of the same registration).
    pub(crate) fn commit(&self, st: &mut State, changes: Vec<ScheduleChange>) {
        if let Some(store) = st.store.as_mut()
            && let Err(e) = store.update_schedule(&changes)
        {
            eprintln!("btb: {e}");
        }
    }

    /// Starts every pending fire that can run now: not already running, conditions hold, a slot
    /// is free. Latches the others durably.
    pub(crate) fn dispatch(self: &Arc<Self>, st: &mut State, now: i64) {
        if st.closing || st.paused {
            return;
        }
        let mut changes = Vec::new();
        let max = self.policy.max_concurrent as usize;
        let mut started = Vec::new();
        // Oldest fire first; stop as soon as every slot is taken (the rest stay latched).
        for (&seq, &task_id) in &st.pending_order {
            if st.running.len() + started.len() >= max {
                break;
            }
            let runnable = !st.running.contains_key(&task_id)
                && st
                    .tasks
                    .get(&task_id)
                    .is_some_and(|r| conditions_hold(st, r));
            if runnable {
                started.push((seq, task_id));
            }
        }
        for (seq, task_id) in started {
            let record = Arc::clone(&st.tasks[&task_id]);
            st.pending_order.remove(&seq);
            let pending = st.pending.remove(&task_id).expect("pending");
            if pending.persisted {
                changes.push(ScheduleChange::Pending(task_id, None));
            }
            let instance = Instance::new(
                Registration::new(Arc::clone(self), record.clone()),
                pending.details,
                now,
            );
            let limit = self.policy.time_limit(record.trigger.kind());
            let limit_at = (limit > 0).then(|| now + i64::from(limit) * 1000);
            if let Some(at) = limit_at {
                st.wake_broker_by(at, &self.waker);
            }
            st.running.insert(
                task_id,
                Running {
                    instance: instance.clone(),
                    limit_at,
                    grace_at: None,
                },
            );
            st.jobs.push_back(instance);
            // Every queued job needs a worker of its own: an idle worker woken for an earlier job
            // of this dispatch still counts as idle until it takes that job.
            if st.jobs.len() > st.idle_workers {
                self.spawn_worker();
            } else {
                self.work_cv.notify_one();
            }
        }
        // Latches that did not start are made durable, each once.
        for task_id in std::mem::take(&mut st.unpersisted) {
            if let Some(pending) = st.pending.get_mut(&task_id)
                && !pending.persisted
            {
                pending.persisted = true;
                let details = pending.details.as_ref().map(|d| d.to_string());
                changes.push(ScheduleChange::Pending(task_id, Some(details)));
            }
        }
        self.commit(st, changes);
        self.change_cv.notify_all();
    }

    fn spawn_worker(self: &Arc<Self>) {
        let shared = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("btb-worker".into())
            .spawn(move || shared.worker_loop());
        if let Err(e) = spawned {
            eprintln!("btb: cannot start a worker thread: {e}");
        }
    }

    fn worker_loop(self: &Arc<Self>) {
        ON_BTB_THREAD.with(|f| f.set(true));
        loop {
            let mut st = self.lock();
            let instance = loop {
                if st.stopping {
                    return;
                }
                if let Some(i) = st.jobs.pop_front() {
                    break i;
                }
                st.idle_workers += 1;
                st = self.work_cv.wait(st).unwrap_or_else(|p| p.into_inner());
                st.idle_workers -= 1;
            };
            drop(st);
            match self.resolve(&instance) {
                Ok(Handler::Call(run)) => {
                    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| run(&instance))) {
                        instance.report_failure(format!(
                            "the run function panicked: {}",
                            panic_message(&panic)
                        ));
                    }
                    let _ = instance.finish_run();
                }
                Ok(Handler::Queued) => {
                    // Under the state lock, like `cancel_task`: RUN always precedes CANCELED.
                    let mut st = self.lock();
                    let mut life = instance.life();
                    life.queued = true;
                    let canceled = life.canceled;
                    drop(life);
                    st.events.push_back(Event::Run(instance.clone()));
                    if let Some(reason) = canceled {
                        st.events.push_back(Event::Canceled(instance, reason));
                    }
                    self.change_cv.notify_all();
                }
                Err(message) => {
                    instance.report_failure(message);
                    let _ = instance.finish_run();
                }
            }
        }
    }

    /// Entry point resolution, SPEC §4 order (out-of-process hosts arrive with a later release).
    fn resolve(&self, instance: &Instance) -> std::result::Result<Handler, String> {
        let record = instance.task().record();
        let handlers = self.handlers.read().unwrap_or_else(|p| p.into_inner());
        match &record.task_entry_point {
            Some(ep) => {
                if let Some(h) = handlers.entry_points.get(ep) {
                    return Ok(h.clone());
                }
                let resolver = handlers.resolver.clone();
                drop(handlers);
                let has_resolver = resolver.is_some();
                if let Some(found) = resolver.and_then(|r| r(ep)) {
                    return Ok(found);
                }
                let exec = self.manifest.find(ep).is_some_and(|d| d.exec.is_some());
                Err(format!(
                    "no handler for entry point {ep:?}: looked for an in-process handler registered under \
                     that name{}{}",
                    if exec {
                        " (its manifest exec host is not supported by this release)"
                    } else {
                        ""
                    },
                    if has_resolver {
                        " and an importable module path"
                    } else {
                        ""
                    }
                ))
            }
            None => {
                let group = record.task_group.as_ref().map(|g| g.id.clone());
                if let Some(h) = group
                    .clone()
                    .and_then(|g| handlers.activation.get(&Some(g)).cloned())
                {
                    return Ok(h);
                }
                // The group's own handlers, wherever they were added (objects bound by use).
                if let Some(h) = group.as_deref().and_then(crate::groups::handler) {
                    return Ok(Handler::Call(h));
                }
                if let Some(h) = handlers.activation.get(&None) {
                    return Ok(h.clone());
                }
                Err(format!(
                    "task {:?} has no entry point and no background-activated handler is set{}",
                    record.name,
                    group
                        .map(|g| format!(" for task group {g:?} or the system"))
                        .unwrap_or_else(|| " for the system".into())
                ))
            }
        }
    }

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
            let handlers: Vec<CanceledFn> = life
                .canceled_handlers
                .iter()
                .map(|(_, h)| Arc::clone(h))
                .collect();
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
            self.change_cv.notify_all();
        }
    }

    pub(crate) fn notify_canceled(
        &self,
        instance: &Instance,
        handlers: Vec<CanceledFn>,
        reason: CancellationReason,
    ) {
        let mut st = self.lock();
        st.notes
            .push_back(Note::Canceled(instance.clone(), handlers, reason));
        self.notify_cv.notify_one();
    }

    pub(crate) fn progress_changed(&self, instance: &Instance, value: u32) {
        let mut st = self.lock();
        st.notes.push_back(Note::Progress(
            instance.task().clone(),
            instance.instance_id(),
            value,
        ));
        self.notify_cv.notify_one();
    }

    /// A state of the machine changed: run what it unblocks, cancel what it strands.
    pub(crate) fn state_changed(
        self: &Arc<Self>,
        st: &mut State,
        condition: SystemConditionType,
        value: bool,
    ) {
        if !st.states.set(condition, value) {
            return;
        }
        let now = self.clock.now_ms();
        let stranded: Vec<(Uuid, CancellationReason)> = st
            .running
            .iter()
            .filter_map(|(id, r)| {
                let record = r.instance.task().record();
                if matches!(record.trigger, Trigger::Maintenance { .. })
                    && !st.states.holds(SystemConditionType::OnAcPower)
                {
                    Some((*id, CancellationReason::Abort)) // Windows: maintenance task off AC
                } else if record.cancel_on_condition_loss && !conditions_hold(st, record) {
                    Some((*id, CancellationReason::ConditionLoss))
                } else {
                    None
                }
            })
            .collect();
        for (id, reason) in stranded {
            self.cancel_task(st, &id, reason, now);
        }
        self.dispatch(st, now);
    }

    /// Ends an instance: records the run, frees its slot, queues the completed handlers and runs
    /// what was waiting. A late end of an abandoned instance is ignored.
    pub(crate) fn complete(self: &Arc<Self>, instance: &Instance) {
        let mut st = self.lock();
        self.finish(&mut st, instance, None);
    }

    /// `abandon_reason`: the grace period ran out (the instance is recorded as canceled).
    fn finish(
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
        let reason = life.canceled.or(abandon_reason);
        let (outcome, message) = match (reason, life.failure.take()) {
            (Some(r), _) => (
                TaskOutcome::Canceled,
                Some(format!("canceled: {}", r.name())),
            ),
            (None, Some(m)) => (TaskOutcome::Failed, Some(m)),
            (None, None) => (TaskOutcome::Succeeded, None),
        };
        drop(life);
        st.running.remove(&task_id);
        // Pull-queue events about it that the host never took are stale now.
        st.events.retain(|e| match e {
            Event::Run(i) | Event::Canceled(i, _) => i != instance,
        });
        let now = self.clock.now_ms();
        let completion = Completion {
            instance_id: instance.instance_id(),
            outcome,
            message,
            reason,
            last_progress: instance.progress(),
        };
        if st.tasks.contains_key(&task_id) {
            let run = RunRecord {
                instance_id: completion.instance_id,
                task_id,
                trigger_kind: instance.task().trigger().kind(),
                trigger_details: instance.trigger_details().map(|d| d.to_string()),
                started_ms: instance.started_ms(),
                ended_ms: now,
                outcome,
                reason,
                message: completion.message.clone(),
                last_progress: completion.last_progress,
            };
            if let Some(store) = st.store.as_mut()
                && let Err(e) = store.insert_run(&run, self.policy.history_limit)
            {
                eprintln!("btb: {e}");
            }
        }
        // The handlers registered now hear of it, even if the task was unregistered meanwhile
        // (then they are dropped: nothing of the task remains).
        let handlers = {
            let mut h = self.handlers.write().unwrap_or_else(|p| p.into_inner());
            if st.tasks.contains_key(&task_id) {
                h.completed.get(&task_id).cloned()
            } else {
                h.progress.remove(&task_id);
                h.completed.remove(&task_id)
            }
        };
        if let Some(handlers) = handlers {
            st.notes.push_back(Note::Completed(
                instance.task().clone(),
                completion,
                handlers,
            ));
            self.notify_cv.notify_one();
        }
        // `close` and `wait_idle` wait for this: with no handler to call, nothing else tells them.
        self.change_cv.notify_all();
        self.dispatch(st, now);
    }

    /// Fires due timers, enforces limits and grace; returns the next instant that needs the broker.
    pub(crate) fn tick(self: &Arc<Self>, st: &mut State, now: i64) -> Option<i64> {
        let window = self.window_ms();
        let mut changes = Vec::new();
        if st
            .timers
            .first()
            .is_some_and(|(due, _)| due + window <= now)
        {
            let due_now: Vec<(i64, Uuid)> = st
                .timers
                .iter()
                .take_while(|(d, _)| *d <= now)
                .copied()
                .collect();
            for (due, task_id) in due_now {
                st.unschedule(&task_id);
                let record = Arc::clone(&st.tasks[&task_id]);
                self.fire(st, task_id, None, now, &mut changes);
                let next = self.next_due(&record, due, now);
                if let Some(next) = next {
                    st.schedule(task_id, next);
                }
                changes.push(ScheduleChange::NextDue(task_id, next));
            }
        }
        self.commit(st, changes);
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
        let abandoned: Vec<Instance> = st
            .running
            .values()
            .filter(|r| r.grace_at.is_some_and(|t| t <= now))
            .map(|r| r.instance.clone())
            .collect();
        for instance in abandoned {
            self.finish(st, &instance, Some(CancellationReason::Terminating));
        }
        self.dispatch(st, now);
        let timer = st.timers.first().map(|(due, _)| due + window);
        let deadlines = st
            .running
            .values()
            .filter_map(|r| r.grace_at.or(r.limit_at))
            .min();
        [timer, deadlines].into_iter().flatten().min()
    }

    fn broker_loop(self: &Arc<Self>) {
        let mut jumped = false;
        loop {
            let mut st = self.lock();
            if st.stopping {
                return;
            }
            let now = self.clock.now_ms();
            if jumped {
                self.replan_calendars(&mut st, now);
            }
            let next = self.tick(&mut st, now);
            st.planned_wake = match &self.clock {
                Clock::Manual(_) => Some(i64::MIN), // woken by `advance`: no deadline needs a wake
                Clock::Real => next,
            };
            self.change_cv.notify_all();
            drop(st);
            // A wake between the unlock and the wait is kept by the eventfd, never lost.
            let until = match &self.clock {
                Clock::Manual(_) => None, // manual time moves only by `advance`, which wakes us
                Clock::Real => next,
            };
            jumped = self.waker.wait(until) == crate::wake::Woke::ClockJump;
        }
    }

    /// After the wall clock was set: a calendar trigger's next matching time may now come sooner
    /// than the instant planned before the jump (a backward jump); re-plan those. Forward jumps
    /// need nothing: what became due fires at the next tick, once.
    fn replan_calendars(&self, st: &mut State, now: i64) {
        let mut changes = Vec::new();
        let planned: Vec<(Uuid, i64)> = st.due.iter().map(|(id, due)| (*id, *due)).collect();
        for (task_id, due) in planned {
            let Some(Trigger::Calendar { expression }) = st.tasks.get(&task_id).map(|t| &t.trigger)
            else {
                continue;
            };
            let sooner = CalendarSpec::parse(expression)
                .ok()
                .and_then(|spec| spec.next_after(now, &self.tz))
                .filter(|next| *next < due);
            if let Some(next) = sooner {
                st.schedule(task_id, next);
                changes.push(ScheduleChange::NextDue(task_id, Some(next)));
            }
        }
        self.commit(st, changes);
    }

    fn notifier_loop(self: &Arc<Self>) {
        ON_BTB_THREAD.with(|f| f.set(true));
        let mut st = self.lock();
        loop {
            let Some(note) = st.notes.pop_front() else {
                if st.stopping {
                    return;
                }
                st = self.notify_cv.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            };
            st.notifying = true;
            drop(st);
            self.deliver(note);
            st = self.lock();
            st.notifying = false;
            self.change_cv.notify_all();
        }
    }

    fn deliver(&self, note: Note) {
        let call = |f: &dyn Fn()| {
            if let Err(panic) = catch_unwind(AssertUnwindSafe(f)) {
                eprintln!("btb: a handler panicked: {}", panic_message(&panic));
            }
        };
        match note {
            Note::Progress(registration, instance_id, value) => {
                let list = self.handlers_for(|h| h.progress.get(&registration.task_id()).cloned());
                for (_, handler) in list {
                    call(&|| handler(&registration, instance_id, value));
                }
            }
            Note::Completed(registration, completion, handlers) => {
                for (_, handler) in handlers {
                    call(&|| handler(&registration, &completion));
                }
            }
            Note::Canceled(instance, handlers, reason) => {
                for handler in handlers {
                    call(&|| handler(&instance, reason));
                }
            }
        }
    }

    fn handlers_for<T>(
        &self,
        pick: impl FnOnce(&crate::system::Handlers) -> Option<Vec<T>>,
    ) -> Vec<T> {
        pick(&self.handlers.read().unwrap_or_else(|p| p.into_inner())).unwrap_or_default()
    }

    fn is_idle(&self, st: &State, now: i64) -> bool {
        st.running.is_empty()
            && st.jobs.is_empty()
            && st.notes.is_empty()
            && !st.notifying
            && st.events.is_empty()
            && st
                .timers
                .first()
                .is_none_or(|(due, _)| due + self.window_ms() > now)
    }

    pub(crate) fn wait_idle(&self, timeout: Duration) -> Result<bool> {
        if ON_BTB_THREAD.with(|f| f.get()) {
            return Err(Error::state(
                "wait_idle cannot be called from a btb handler (it would wait for itself)",
            ));
        }
        let deadline = Instant::now() + timeout;
        let mut st = self.open_state()?;
        loop {
            if self.is_idle(&st, self.clock.now_ms()) {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            st = self
                .change_cv
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            if st.store.is_none() {
                return Err(Error::state("the btb system is closed"));
            }
        }
    }

    pub(crate) fn next_event(&self, timeout: Duration) -> Result<Option<Event>> {
        let deadline = Instant::now() + timeout;
        let mut st = self.open_state()?;
        loop {
            if let Some(e) = st.events.pop_front() {
                self.change_cv.notify_all();
                return Ok(Some(e));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || st.store.is_none() {
                return Ok(None);
            }
            st = self
                .change_cv
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    pub(crate) fn close(self: &Arc<Self>) -> Result<()> {
        self.check_pid()?;
        let grace = Duration::from_millis(u64::from(self.policy.grace_ms));
        let deadline = Instant::now() + grace;
        let mut st = self.lock();
        if st.store.is_none() || st.closing {
            return Ok(());
        }
        st.closing = true;
        let now = self.clock.now_ms();
        let running: Vec<Uuid> = st.running.keys().copied().collect();
        for id in running {
            self.cancel_task(&mut st, &id, CancellationReason::Terminating, now);
        }
        // Wait (real time) for running instances to end and handlers to be called.
        while !(st.running.is_empty() && st.notes.is_empty() && !st.notifying) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || ON_BTB_THREAD.with(|f| f.get()) {
                break;
            }
            st = self
                .change_cv
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let stuck: Vec<Instance> = st.running.values().map(|r| r.instance.clone()).collect();
        for instance in stuck {
            self.finish(&mut st, &instance, Some(CancellationReason::Terminating));
        }
        st.stopping = true;
        let store = st.store.take();
        st.jobs.clear();
        self.waker.wake();
        self.work_cv.notify_all();
        self.notify_cv.notify_all();
        self.change_cv.notify_all();
        drop(st);
        drop(store);
        let listener = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(listener);
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        let me = std::thread::current().id();
        for t in threads {
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
        // Drop handlers (they may hold references back to this system) outside every lock.
        let handlers =
            std::mem::take(&mut *self.handlers.write().unwrap_or_else(|p| p.into_inner()));
        drop(handlers);
        Ok(())
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
