//! What the broker tells `btbctl` (SPEC §10): registrations with what is known of them (next due,
//! latched, running, spent, last outcome, the conditions that do not hold), and firing a task by
//! hand. The control socket (`control.rs`) calls these through `System`.

use std::collections::HashMap;
use std::sync::Arc;

use uuid::Uuid;

use super::{Broker, State};
use crate::error::{Error, Result};
use crate::model::{SystemConditionType, TaskOutcome, TaskRecord, TaskTrigger};
use crate::view::{TaskFacts, TaskView};

impl Broker {
    /// The registration TASK names (an id, or a unique name).
    pub(crate) fn find_task(&self, st: &State, task: &str) -> Result<Uuid> {
        crate::view::find_task(
            st.registry.records().map(|r| &**r),
            self.app_id.as_str(),
            task,
        )
    }

    /// What is known of one registration now.
    fn facts(
        &self,
        st: &State,
        record: &TaskRecord,
        last: &HashMap<Uuid, TaskOutcome>,
    ) -> TaskFacts {
        let id = &record.task_id;
        let mut waiting: Vec<SystemConditionType> = record
            .conditions
            .iter()
            .copied()
            .filter(|c| !self.holds(st, *c))
            .collect();
        if matches!(record.trigger, TaskTrigger::Maintenance { .. })
            && !self.holds(st, SystemConditionType::OnAcPower)
        {
            waiting.insert(0, SystemConditionType::OnAcPower);
        }
        TaskFacts {
            next_due_ms: st.next_due(id),
            pending: st.pending.contains_key(id),
            spent: st.registry.is_spent(id),
            running_since_ms: st
                .running
                .get(id)
                .map(|r| r.instance.started_ms())
                .or_else(|| st.elsewhere_since(id)),
            last_outcome: last.get(id).copied(),
            // The machine's sources left these unknown (a simulated system's app sets its own).
            unknown: waiting
                .iter()
                .copied()
                .filter(|c| !self.simulated && self.state_of(st, *c).is_none())
                .collect(),
            window_ms: matches!(
                record.trigger,
                TaskTrigger::Time { .. } | TaskTrigger::Maintenance { .. } | TaskTrigger::Calendar { .. }
            )
            .then(|| self.window_ms()),
            waiting_for: Some(waiting),
            retry: st
                .pending
                .get(id)
                .and_then(|p| p.not_before.map(|at| (p.attempt, at))),
            last_message: None,
            waiting_for_handler: st.pending.get(id).and_then(|p| {
                let handler = p.needs_handler.as_deref()?;
                Some(match (self.manifest().activate(), &st.activation) {
                    (None, _) => format!(
                        "waiting for a process of the app that runs {handler} (no `activate` in the manifest)"
                    ),
                    (Some(_), Some(a)) if a.pid != 0 => format!(
                        "waiting for the app started for background work (pid {}) to offer {handler}",
                        a.pid
                    ),
                    (Some(_), _) => format!("waiting for the app to start and offer {handler}"),
                })
            }),
        }
    }

    /// Every registration in registration order, or (`task`) the one it names with the sentence
    /// that says why it is not running.
    pub(crate) fn task_views(&self, task: Option<&str>) -> Result<Vec<TaskView>> {
        // Store (lock 0) before state (lock 1).
        let store = self.store();
        let Some(stored) = store.as_ref() else {
            return Err(super::closed());
        };
        let last = stored.last_outcomes()?;
        // `show`: the last run's message too (one task's history, from the store).
        let last_message = match task {
            Some(task) => {
                let st = self.open_state()?;
                let id = self.find_task(&st, task)?;
                drop(st);
                stored.history(&id)?.pop().and_then(|r| r.message)
            }
            None => None,
        };
        drop(store);
        let st = self.open_state()?;
        let now = self.clock.now_ms();
        let mut records: Vec<&Arc<TaskRecord>> = match task {
            Some(task) => {
                let id = self.find_task(&st, task)?;
                st.registry.get(&id).into_iter().collect()
            }
            None => st.registry.records().collect(),
        };
        records.sort_by_key(|r| r.seq);
        Ok(records
            .into_iter()
            .map(|r| {
                let mut facts = self.facts(&st, r, &last);
                facts.last_message.clone_from(&last_message);
                TaskView::new(r, &facts, now, task.is_some())
            })
            .collect())
    }

    /// How many runs a process that offers `offer` is still to serve: those that wait for a
    /// handler it offers (or waited, and wait for a free slot now), and those of such tasks going
    /// now (a run of a broker that died, still going on in a client, included).
    pub(crate) fn waiting_for(&self, offer: &crate::control::Offer) -> Result<usize> {
        let st = self.open_state()?;
        let covered = |r: &TaskRecord| {
            offer.covers(
                r.task_entry_point.as_deref(),
                r.task_group.as_ref().map(|g| g.id.as_str()),
            ) > 0
        };
        // Waiting for a handler, or found one and not dispatched yet (no free slot).
        let parked = st
            .pending
            .iter()
            .filter(|(_, p)| p.needs_handler.is_some() || p.parked_run.is_some())
            .filter(|(id, _)| st.registry.get(id).is_some_and(|r| covered(r)))
            .count();
        let running = st
            .running
            .values()
            .filter(|r| covered(r.instance.task().record()))
            .count();
        // Runs of a broker that died, still going on in a client (this one, perhaps).
        let elsewhere = st
            .elsewhere
            .keys()
            .filter(|id| st.registry.get(id).is_some_and(|r| covered(r)))
            .count();
        Ok(parked + running + elsewhere)
    }

    /// Fires a task as if its trigger fired (`btbctl run`), with `details` as its trigger details;
    /// with `ignore_conditions` it runs even if they do not hold. `STATE` for a spent one-shot,
    /// unless `keep`: then it runs without spending it (spent or not).
    pub(crate) fn run_now(
        self: &Arc<Self>,
        task: &str,
        ignore_conditions: bool,
        details: Option<serde_json::Value>,
        keep: bool,
    ) -> Result<()> {
        self.check_writable("the run")?;
        let mut st = self.open_state()?;
        let id = self.find_task(&st, task)?;
        if !keep && st.registry.is_spent(&id) {
            return Err(Error::state(format!(
                "task {task:?} is spent: its one-shot trigger fired already"
            )));
        }
        let now = self.clock.now_ms();
        let mut changes = Vec::new();
        self.fire_as(&mut st, id, details, !keep, &mut changes);
        if ignore_conditions && let Some(pending) = st.pending.get_mut(&id) {
            pending.forced = true;
        }
        self.commit(&mut st, changes);
        self.dispatch(&mut st, now);
        Ok(())
    }
}
