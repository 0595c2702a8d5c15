//! Retries (SPEC §12): when a run ends, whether it is tried again and when — it asked
//! (`Instance::request_retry`, an `exec` host's exit status 75), it failed under a policy with
//! `retry_on_failure`, or it was cut off (closed with `TERMINATING`, or found at open as a run
//! whose broker died) under a policy. A retry is a latched fire of attempt `n + 1` that may not
//! run before its delay is over (`Pending::not_before`, `State::retry_timers`); then it waits for
//! its conditions like any fire. It is persisted like any latched fire, so it survives a close,
//! a crash and a takeover; a new fire of the task replaces it (`latch.rs`).

use uuid::Uuid;

use super::instance::RetryRequest;
use super::{Broker, Instance, State};
use crate::model::{CancellationReason, RetryPolicy, TaskOutcome};
use crate::registry::Registry;
use crate::runfile::Found;
use crate::store::{Latched, RunStart, ScheduleChange, Store};

/// How a run ends: its outcome and message, and when its next attempt is due (a retry).
pub(super) struct End {
    pub(super) outcome: TaskOutcome,
    pub(super) message: Option<String>,
    pub(super) retry_at_ms: Option<i64>,
}

/// A uniform value in [0, 1) for jitter, from the system's random source (as `Uuid::new_v4`).
fn unit() -> f64 {
    (Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
}

/// "gave up after N attempts", with the last attempt's word.
pub(super) fn gave_up(attempt: u32, why: Option<&str>) -> String {
    let plural = if attempt == 1 { "" } else { "s" };
    match why {
        Some(why) => format!("gave up after {attempt} attempt{plural}: {why}"),
        None => format!("gave up after {attempt} attempt{plural}"),
    }
}

/// When attempt `attempt + 1` is due under `policy` — after `after_ms` (the run's own delay) or
/// the policy's jittered delay — or `None` when `attempt` was the last the policy allows.
pub(super) fn next_attempt_at(
    policy: &RetryPolicy,
    attempt: u32,
    after_ms: Option<u64>,
    now: i64,
) -> Option<i64> {
    if policy.max_attempts.is_some_and(|max| attempt >= max) {
        return None;
    }
    let delay = after_ms.unwrap_or_else(|| policy.jittered_ms(attempt, unit()));
    Some(now.saturating_add(i64::try_from(delay).unwrap_or(i64::MAX)))
}

impl Broker {
    /// How `instance` ends (SPEC §12): canceled, failed or succeeded — or `RETRY`, with its next
    /// attempt latched to run after the delay. Called by `finish` under the state lock.
    pub(super) fn end_of_run(
        &self,
        st: &mut State,
        instance: &Instance,
        reason: Option<CancellationReason>,
        failure: Option<String>,
        retry: Option<RetryRequest>,
        now: i64,
    ) -> End {
        let (outcome, message) = match (reason, failure) {
            (Some(r), _) => (
                TaskOutcome::Canceled,
                Some(format!("canceled: {}", r.name())),
            ),
            (None, Some(m)) => (TaskOutcome::Failed, Some(m)),
            (None, None) => (TaskOutcome::Succeeded, None),
        };
        let plain = End {
            outcome,
            message: message.clone(),
            retry_at_ms: None,
        };
        let record = instance.task().record();
        let task_id = record.task_id;
        let policy = record.retry_policy;
        let wanted = retry.is_some()
            || (outcome == TaskOutcome::Failed && policy.is_some_and(|p| p.retry_on_failure))
            || (reason == Some(CancellationReason::Terminating) && policy.is_some());
        // Unregistered (nothing to retry), or a new fire already waits (it runs instead).
        if !wanted || !st.registry.contains(&task_id) || st.pending.contains_key(&task_id) {
            return plain;
        }
        // A run that asks for a retry of a task without a policy gets the default one.
        let policy = policy.unwrap_or_default();
        let attempt = instance.attempt();
        let why = retry.as_ref().and_then(|r| r.message.clone()).or(message);
        let Some(at) = next_attempt_at(&policy, attempt, retry.and_then(|r| r.after_ms), now)
        else {
            return End {
                outcome: TaskOutcome::Failed,
                message: Some(gave_up(attempt, why.as_deref())),
                retry_at_ms: None,
            };
        };
        // Persisted at once, not at the next dispatch: a closing broker dispatches no more.
        st.latch(
            task_id,
            instance.trigger_details().cloned(),
            false,
            attempt + 1,
            Some(at),
        );
        st.unpersisted.push(task_id);
        let mut changes = Vec::new();
        st.persist_latches(&mut changes);
        self.commit(st, changes);
        st.wake_broker_by(at, &self.waker);
        End {
            outcome: TaskOutcome::Retry,
            message: why,
            retry_at_ms: Some(at),
        }
    }
}

/// How a run cut off by its broker's death is recorded — `RETRY` with the next attempt to latch
/// when its policy allows one more, else `FAILED` — saying `why`.
pub(crate) fn cut_off(
    policy: Option<RetryPolicy>,
    attempt: u32,
    details: Option<String>,
    now: i64,
    why: &str,
) -> (TaskOutcome, String, Option<i64>, Option<Latched>) {
    let Some(policy) = policy else {
        return (TaskOutcome::Failed, why.to_owned(), None, None);
    };
    match next_attempt_at(&policy, attempt, None, now) {
        Some(at) => {
            let next = Latched {
                details,
                attempt: attempt + 1,
                not_before: Some(at),
            };
            (TaskOutcome::Retry, why.to_owned(), Some(at), Some(next))
        }
        None => (TaskOutcome::Failed, gave_up(attempt, Some(why)), None, None),
    }
}

/// What a broker found at open of the runs that a broker of this store started and never
/// recorded: the retries to latch, and the runs that go on in client processes (`elsewhere.rs`).
#[derive(Default)]
pub(crate) struct Recovered {
    pub(crate) retries: Vec<(Uuid, Latched)>,
    pub(crate) elsewhere: Vec<RunStart>,
    /// The runs recorded, for their completed handlers to hear of.
    pub(crate) recorded: Vec<crate::model::RunRecord>,
    /// Tasks whose latched fire was a parked run that a client was handed: that fire is gone.
    pub(crate) handed: Vec<Uuid>,
}

/// Records the runs that a broker of this store started and never recorded — it died during
/// them — and returns the retries their policies ask for, to latch (SPEC §11, §12). Called at
/// open, before anything runs; a run whose host was already stopped and recorded (`exec.rs`
/// `stop_orphans`) has no marker left. A run handed to a client process that still runs it (its
/// run file is held, `runfile.rs`) is not recorded: it is returned in `elsewhere`; one that the
/// client finished is recorded as the client said it ended.
pub(crate) fn recover_cut_off(
    store: &mut Store,
    registry: &Registry,
    history_limit: u32,
    now: i64,
) -> crate::Result<Recovered> {
    let mut recovered = Recovered::default();
    let dir = run_files(store);
    let started = store.started_runs()?;
    for start in &started {
        let found = dir.as_deref().map_or(Found::Nothing, |d| {
            crate::runfile::probe(d, start.instance_id)
        });
        // A run that waited for a handler (SPEC §12) has its fire latched again, and its marker
        // kept, marked parked, until it is handed (`latch.rs` `park`, `dispatch`). The broker
        // died before the hand-over was written: no run file means it was never handed — it
        // keeps waiting, its latch as it was, its marker gone; a run file means a client took
        // it: its latch goes, and the run is what any run of a client is (SPEC §11).
        let mut latch = Vec::new();
        if start.parked {
            if found == Found::Nothing {
                log::info!(
                    target: "btb",
                    "instance {} of task {} was never handed: its fire waits for a handler again",
                    start.instance_id,
                    start.task_id
                );
                store.write_batch(&[ScheduleChange::Unstarted(start.instance_id)], &[])?;
                continue;
            }
            latch.push(ScheduleChange::Pending(start.task_id, None));
            recovered.handed.push(start.task_id);
        }
        if found == Found::Running {
            latch.push(ScheduleChange::Parked(start.instance_id, false));
            if start.parked {
                store.write_batch(&latch, &[])?;
            }
            recovered.elsewhere.push(start.clone());
            continue;
        }
        let policy: Option<RetryPolicy> = registry.get(&start.task_id).and_then(|r| r.retry_policy);
        let (run, retry) = super::elsewhere::record_of(start, &found, policy, now);
        // The retry's latch is written with the record, in one transaction: a broker that dies
        // before the retry runs leaves it on disk for the next one (SPEC §11, §12).
        latch.extend(
            retry
                .iter()
                .map(|next| ScheduleChange::RetryUnlessPending(start.task_id, next.clone())),
        );
        if let Some(latched) = retry {
            recovered.retries.push((start.task_id, latched));
        }
        log::warn!(
            target: "btb",
            "instance {} of task {}: {} {}",
            start.instance_id,
            start.task_id,
            run.outcome.name(),
            run.message.as_deref().unwrap_or_default()
        );
        // Also drops the marker (or only that, for a task unregistered since).
        store.write_batch(&latch, &[(run.clone(), history_limit)])?;
        recovered.recorded.push(run);
    }
    // Files of runs whose ends were recorded (or that never started) and that no one holds.
    if let Some(d) = &dir {
        let live: std::collections::HashSet<Uuid> =
            recovered.elsewhere.iter().map(|s| s.instance_id).collect();
        crate::runfile::sweep(d, &|id| live.contains(&id));
    }
    Ok(recovered)
}

/// The directory of the store's run files (none for a store in memory).
pub(crate) fn run_files(store: &Store) -> Option<std::path::PathBuf> {
    if store.path() == ":memory:" {
        return None;
    }
    let canonical = std::fs::canonicalize(store.path()).ok()?;
    Some(crate::runfile::dir(&canonical.to_string_lossy()))
}
