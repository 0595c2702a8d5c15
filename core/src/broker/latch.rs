//! Fires and latches (SPEC §3): a fire is latched until every condition holds, at most one per
//! registration (further fires coalesce); dispatch starts the oldest runnable fires while slots are
//! free; a change of the machine's state runs what it unblocks and cancels what it strands.

use std::sync::Arc;

use uuid::Uuid;

use super::{Broker, Instance, Running, State};
use crate::model::{
    CancellationReason, CustomRecurrence, SystemConditionType, SystemTriggerType, TaskRecord,
    TaskTrigger,
};
use crate::platform::Heard;
use crate::registry::EventKey;
use crate::store::ScheduleChange;

/// A latched fire waiting for its conditions, a free slot, or the end of the running instance.
pub(crate) struct Pending {
    pub(crate) seq: u64,
    pub(crate) details: Option<serde_json::Value>,
    /// Written to the store (so it survives a restart).
    pub(crate) persisted: bool,
    /// Run without waiting for the conditions (`btbctl run --ignore-conditions`; not persisted).
    pub(crate) forced: bool,
    /// Which attempt it starts (1 for a fire; later for a retry, `retry.rs`).
    pub(crate) attempt: u32,
    /// A retry: not before this instant (ms).
    pub(crate) not_before: Option<i64>,
    /// It started, but no process of the app has its handler: it waits for one (`park`).
    pub(crate) needs_handler: Option<String>,
    /// With `activate` in the manifest: it fails unless a handler appears by then.
    pub(crate) park_deadline: Option<i64>,
    /// The run that parked (`park`), whose start marker the store keeps marked parked: the
    /// instance id that this fire runs under, and the number of the park's write.
    pub(crate) parked_run: Option<(Uuid, u64)>,
}

impl Pending {
    /// This latched fire as the store keeps it.
    pub(crate) fn stored(&self) -> crate::store::Latched {
        crate::store::Latched {
            details: self.details.as_ref().map(|d| d.to_string()),
            attempt: self.attempt,
            not_before: self.not_before,
        }
    }
}

impl State {
    /// The writes that make the latches not yet on disk durable (each once).
    pub(super) fn persist_latches(&mut self, changes: &mut Vec<ScheduleChange>) {
        // Taken and given back, so that its allocation serves the next fires.
        let mut unpersisted = std::mem::take(&mut self.unpersisted);
        for task_id in unpersisted.drain(..) {
            if let Some(pending) = self.pending.get_mut(&task_id)
                && !pending.persisted
            {
                log::debug!(
                    target: "btb",
                    "a fire of task {task_id} is latched: it waits for its conditions, a free slot, its retry time or a handler"
                );
                pending.persisted = true;
                changes.push(ScheduleChange::Pending(task_id, Some(pending.stored())));
            }
        }
        self.unpersisted = unpersisted;
    }
}

impl Broker {
    /// A run whose handler is nowhere — no `exec` host, none in this process, none offered by a
    /// client — waits for one instead of failing (SPEC §12): its fire is latched again (the same
    /// details and attempt), persisted, and not dispatched until a handler appears
    /// (`handlers_changed`). `false` when it cannot wait (canceled, or ended meanwhile).
    pub(super) fn park(self: &Arc<Self>, instance: &Instance, why: &str) -> bool {
        let mut st = self.lock();
        let task_id = instance.task().task_id();
        let mut life = instance.life();
        if life.done || life.canceled.is_some() || !st.registry.contains(&task_id) {
            return false;
        }
        life.done = true;
        drop(life.inhibitor.take());
        drop(life);
        if st
            .running
            .get(&task_id)
            .is_some_and(|r| r.instance == *instance)
        {
            st.running.remove(&task_id);
        }
        let what = instance.task().task_entry_point().map_or_else(
            || "its background-activated handler".to_owned(),
            str::to_owned,
        );
        log::info!(
            target: "btb",
            "run of {:?} waits for a process of the app that runs {what}{}: {why}",
            instance.task().name(),
            if self.manifest().activate().is_some() {
                " (starting the app: `activate`)"
            } else {
                " (no `activate` in the manifest)"
            }
        );
        let now = self.clock.now_ms();
        // With `activate`, the app is started for it and has a while to offer the handler.
        let deadline = self
            .manifest()
            .activate()
            .map(|_| now.saturating_add(i64::from(self.policy.activation_timeout_ms)));
        // Its start marker is kept, marked parked: the run is handed later under the same id
        // with no new marker to commit (`dispatch`). Unless a fire latched meanwhile runs
        // instead: then this run never ran, and its marker goes.
        let id = instance.instance_id();
        let mut changes = Vec::new();
        let resumes = !st.pending.contains_key(&task_id);
        if resumes {
            st.latch(
                task_id,
                instance.trigger_details().cloned(),
                false,
                instance.attempt(),
                None,
            );
            // A handler offered since the worker looked (`handlers_changed` found nothing parked
            // then): the fire is dispatched below at once instead of waiting for another offer.
            let offered = self.has_handler(instance.task().record());
            if !offered && let Some(p) = st.pending.get_mut(&task_id) {
                p.needs_handler = Some(what);
                p.park_deadline = deadline;
            }
            st.unpersisted.push(task_id);
            changes.push(ScheduleChange::Parked(id, true));
        } else {
            changes.push(ScheduleChange::Unstarted(id));
        }
        if let Some(at) = deadline {
            st.wake_broker_by(at, &self.waker);
        }
        // Persisted here, not by the dispatch below: a closing broker dispatches nothing. The
        // marker and the latch in one write: recovery finds both or neither.
        st.persist_latches(&mut changes);
        self.commit(&mut st, changes);
        let written = st.schedule_written;
        if resumes && let Some(p) = st.pending.get_mut(&task_id) {
            p.parked_run = Some((id, written));
        }
        self.changed();
        self.dispatch(&mut st, now); // its slot is free for others
        true
    }

    /// A handler appeared (registered here, or offered by a client process): the runs that wait
    /// for it are tried again. Only theirs: a waiting run keeps waiting — and its activation
    /// deadline stands — while the handlers that change are others'.
    pub(crate) fn handlers_changed(self: &Arc<Self>) {
        let Ok(mut st) = self.open_state() else {
            return;
        };
        let parked: Vec<Uuid> = st
            .pending
            .iter()
            .filter(|(_, p)| p.needs_handler.is_some())
            .map(|(id, _)| *id)
            .collect();
        let mut any = false;
        let mut presumed = false;
        for task_id in parked {
            let source = st
                .registry
                .get(&task_id)
                .and_then(|record| self.handler_source(record));
            // On presumption one run at a time (`Broadcast::presume`): the others keep waiting
            // for the app's offer of their handlers.
            let found = match source {
                Some(false) => true,
                Some(true) => !std::mem::replace(&mut presumed, true),
                None => false,
            };
            if found && let Some(p) = st.pending.get_mut(&task_id) {
                p.needs_handler = None;
                p.park_deadline = None;
                any = true;
            }
        }
        if any {
            let now = self.clock.now_ms();
            self.dispatch(&mut st, now);
        }
    }

    /// Whether some process can run a task now: a handler of this process by name (no resolver:
    /// a broker with one never lets a run wait), or a client process's offer.
    pub(super) fn has_handler(&self, record: &TaskRecord) -> bool {
        self.handler_source(record).is_some()
    }

    /// Who can run a task now: `Some(false)` a handler of this process by name or a client
    /// process's offer, `Some(true)` only the app started for background work, on presumption
    /// (`Offer::activated`), `None` nobody.
    fn handler_source(&self, record: &TaskRecord) -> Option<bool> {
        if super::resolve(&self.handlers, record, false).is_ok() {
            return Some(false);
        }
        let (picked, _) = self.broadcast.get()?.pick(
            record.task_entry_point.as_deref(),
            record.task_group.as_ref().map(|g| g.id.as_str()),
            1,
            &[],
        );
        picked.map(|p| p.presumed)
    }

    /// Whether every condition of a registration holds now (a maintenance trigger also needs AC).
    fn conditions_hold(&self, st: &State, record: &TaskRecord) -> bool {
        let ac_ok = !matches!(record.trigger, TaskTrigger::Maintenance { .. })
            || self.holds(st, SystemConditionType::OnAcPower);
        ac_ok && record.conditions.iter().all(|c| self.holds(st, *c))
    }

    /// Latches a fire of one registration (one pending fire at most; further fires coalesce).
    pub(super) fn fire(
        &self,
        st: &mut State,
        task_id: Uuid,
        details: Option<serde_json::Value>,
        _now: i64,
        changes: &mut Vec<ScheduleChange>,
    ) {
        self.fire_as(st, task_id, details, true, changes);
    }

    /// [`Self::fire`]; without `spend` a one-shot is neither spent by it nor refused as spent
    /// (`btbctl run --keep`).
    pub(super) fn fire_as(
        &self,
        st: &mut State,
        task_id: Uuid,
        details: Option<serde_json::Value>,
        spend: bool,
        changes: &mut Vec<ScheduleChange>,
    ) {
        let Some(record) = st.registry.get(&task_id).cloned() else {
            return;
        };
        if spend && st.registry.is_spent(&task_id) {
            return;
        }
        if spend && record.trigger.one_shot() {
            st.registry.mark_spent(task_id);
            st.unschedule(&task_id);
            changes.push(ScheduleChange::Spent(task_id));
        }
        if let Some(p) = st.pending.get(&task_id) {
            if p.attempt == 1 && p.not_before.is_none() {
                log::debug!(target: "btb", "a fire of {:?} coalesces with the one already latched", record.name);
                return; // coalesces with the fire already pending
            }
            // A retry waits: this fire replaces it, as attempt 1 with its own details. A parked
            // run it replaces never ran: its marker goes with it, in the same write as the new
            // latch, which replaces the stored one there (else a dispatch that starts it at once
            // would not clear the old one, and a next open would run it again).
            let replaced = st.unlatch(&task_id).expect("pending");
            if let Some((parked, _)) = replaced.parked_run {
                changes.push(ScheduleChange::Unstarted(parked));
            }
            st.latch(task_id, details, false, 1, None);
            if let Some(p) = st.pending.get_mut(&task_id)
                && replaced.persisted
            {
                p.persisted = true;
                changes.push(ScheduleChange::Pending(task_id, Some(p.stored())));
            } else {
                st.unpersisted.push(task_id);
            }
            return;
        }
        st.latch(task_id, details, false, 1, None);
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

    pub(super) fn fire_key_into(
        &self,
        st: &mut State,
        key: &EventKey,
        now: i64,
        changes: &mut Vec<ScheduleChange>,
    ) -> usize {
        let ids: Vec<Uuid> = st.registry.listeners(key).to_vec();
        let mut n = 0;
        for id in ids {
            if st.registry.is_spent(&id) {
                continue;
            }
            if let Some(TaskTrigger::CustomEvent { recurrence, .. }) =
                st.registry.get(&id).map(|t| &t.trigger)
                && *recurrence == CustomRecurrence::Once
                && !st.once_fired.insert(id)
            {
                continue;
            }
            self.fire(st, id, None, now, changes);
            n += 1;
        }
        n
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
        let mut jobs = 0;
        // Oldest fire first; stop as soon as every slot is taken (the rest stay latched).
        for (&seq, &task_id) in &st.pending_order {
            if st.running.len() + started.len() >= max {
                break;
            }
            let Some(pending) = st.pending.get(&task_id) else {
                continue;
            };
            let forced = pending.forced;
            let waits = pending.not_before.is_some_and(|t| t > now);
            let parked = pending.needs_handler.is_some();
            let runnable = !waits
                && !parked
                && !st.running.contains_key(&task_id)
                && !st.runs_elsewhere(&task_id)
                && st
                    .registry
                    .get(&task_id)
                    .is_some_and(|r| forced || self.conditions_hold(st, r));
            if runnable {
                started.push((seq, task_id));
            }
        }
        for (seq, task_id) in started {
            let record = Arc::clone(st.registry.get(&task_id).expect("registered"));
            debug_assert_eq!(st.pending.get(&task_id).map(|p| p.seq), Some(seq));
            let pending = st.unlatch(&task_id).expect("pending");
            if pending.persisted {
                changes.push(ScheduleChange::Pending(task_id, None));
            }
            // A run that parked resumes under its id: its marker, kept since its first start, is
            // marked handed in the writes below, which its hand-over to a client need not wait
            // for (`pool::Job`). Others start anew, their marker written below.
            let (instance, handed_after) = match pending.parked_run {
                Some((id, parked)) => (
                    Instance::with_id(
                        self,
                        id,
                        record.clone(),
                        pending.details,
                        now,
                        pending.attempt,
                    ),
                    Some(parked),
                ),
                None => (
                    Instance::new(self, record.clone(), pending.details, now, pending.attempt),
                    None,
                ),
            };
            log::info!(
                target: "btb",
                "run {} of {:?} {} (attempt {}, {})",
                instance.instance_id(),
                record.name,
                if handed_after.is_some() { "resumes" } else { "starts" },
                pending.attempt,
                crate::view::trigger_text(&record.trigger)
            );
            if handed_after.is_some() {
                if self.durable() {
                    changes.push(ScheduleChange::Parked(instance.instance_id(), false));
                }
            } else if self.durable() {
                // Until its record is written: a run cut off by the broker's death is found at
                // the next open (and retried under a policy), never lost without a trace.
                changes.push(ScheduleChange::Started(crate::store::RunStart {
                    instance_id: instance.instance_id(),
                    task_id,
                    attempt: pending.attempt,
                    started_ms: now,
                    trigger_kind: record.trigger.kind(),
                    trigger_details: instance.trigger_details().map(|d| d.to_string()),
                    parked: false,
                }));
            }
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
                    terminated: false,
                    grace_for_host: None,
                },
            );
            // Its commit is known below: `after` is set then, before the lock is released.
            st.jobs.push_back(super::pool::Job {
                instance,
                handed_after: handed_after.unwrap_or(u64::MAX),
                after: u64::MAX,
            });
            jobs += 1;
        }
        // Latches that did not start are made durable, each once.
        st.persist_latches(&mut changes);
        self.commit(st, changes);
        // A run starts once the schedule writes queued so far are committed (its one-shot spent,
        // its latch taken): a crash can then never run it a second time after a restart. An
        // in-memory store keeps nothing across a crash: its runs need not wait.
        let after = if self.durable() {
            st.schedule_written
        } else {
            0
        };
        for job in st.jobs.iter_mut().rev().take(jobs) {
            job.after = after;
            if !self.durable() || job.handed_after == u64::MAX {
                job.handed_after = after;
            }
        }
        for queued in st.jobs.len() - jobs + 1..=st.jobs.len() {
            // Every queued job needs a worker of its own: an idle worker woken for an earlier job
            // of this dispatch still counts as idle until it takes that job.
            if queued > st.idle_workers {
                self.spawn_worker();
            } else {
                st.wake_worker();
            }
        }
        self.changed();
    }

    /// A source reported: apply its states, fire the system triggers the change means, run what
    /// it unblocks, cancel what it strands (SPEC §3, §6).
    pub(crate) fn heard(self: &Arc<Self>, st: &mut State, heard: Heard) {
        let now = self.clock.now_ms();
        let fires = match heard {
            Heard::Report {
                source,
                states,
                fires,
                initial,
            } => {
                let before = st.states.snapshot();
                for (condition, value) in states {
                    st.states.report(source, condition, value);
                }
                let mut all = if initial {
                    Vec::new()
                } else {
                    before.fires(&st.states.snapshot())
                };
                for f in fires {
                    if !all.contains(&f) {
                        all.push(f);
                    }
                }
                self.conditions_changed(st);
                all
            }
            Heard::TimeZoneChanged => {
                // The zone was re-read by the sink, off this lock (`start_platform`).
                self.replan_calendars(st, now, true);
                vec![SystemTriggerType::TimeZoneChange]
            }
            Heard::Resumed => {
                // The machine is awake now anyway: what came due during the sleep runs now, not
                // at the end of its window (one wake-up instead of two). Then the broker re-plans.
                self.fire_due(st, now);
                self.waker.wake();
                Vec::new()
            }
            Heard::LoggingOff => {
                self.cancel_all(st, CancellationReason::LoggingOff, now);
                Vec::new()
            }
            Heard::EnergySaver(on) => {
                st.energy_saver = on;
                self.conditions_changed(st);
                Vec::new()
            }
        };
        for t in fires {
            self.fire_key(st, &EventKey::System(t));
        }
        self.dispatch(st, now);
    }

    /// The conditions may hold differently now: cancel the runs they strand (Windows: a
    /// maintenance task off AC power is aborted; `cancel_on_condition_loss`).
    pub(super) fn conditions_changed(self: &Arc<Self>, st: &mut State) {
        let now = self.clock.now_ms();
        let stranded: Vec<(Uuid, CancellationReason)> = st
            .running
            .iter()
            .filter_map(|(id, r)| {
                let record = r.instance.task().record();
                if self.saves_energy_from(st, record) {
                    Some((*id, CancellationReason::EnergySaver))
                } else if matches!(record.trigger, TaskTrigger::Maintenance { .. })
                    && !st.states.holds(SystemConditionType::OnAcPower)
                {
                    Some((*id, CancellationReason::Abort)) // Windows: maintenance task off AC
                } else if record.cancel_on_condition_loss && !self.conditions_hold(st, record) {
                    Some((*id, CancellationReason::ConditionLoss))
                } else {
                    None
                }
            })
            .collect();
        for (id, reason) in stranded {
            self.cancel_task(st, &id, reason, now);
        }
    }
}
