//! What `btbctl` shows (SPEC §10): a registration as a row (`TaskView`), its runs (`RunView`), the
//! machine's states (`StateView`), and the one sentence that says why a task is not running — the
//! question every WorkManager and systemd user asks first. Serialized as the JSON of SPEC §10;
//! built by a live broker (which knows the states and what runs) or from the store alone.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, ErrorKind, Result};
use crate::model::{RunRecord, SystemConditionType, TaskOutcome, TaskRecord, TaskTrigger};

/// The registration TASK names among `records`: a task id, or a unique name (a name used in
/// several groups is `CONFLICT`, naming their ids); `NOT_FOUND` naming the app otherwise.
pub fn find_task<'a>(
    records: impl Iterator<Item = &'a TaskRecord>,
    app_id: &str,
    task: &str,
) -> Result<Uuid> {
    let id = Uuid::parse_str(task).ok();
    let mut named: Vec<&TaskRecord> = Vec::new();
    for r in records {
        if Some(r.task_id) == id {
            return Ok(r.task_id);
        }
        if r.name == task {
            named.push(r);
        }
    }
    match named.len() {
        0 => Err(Error::new(
            ErrorKind::NotFound,
            format!("no task named or numbered {task:?} in app {app_id:?}"),
        )),
        1 => Ok(named[0].task_id),
        n => {
            named.sort_by_key(|r| r.seq);
            Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "{n} tasks are named {task:?}: name one by its id: {}",
                    named
                        .iter()
                        .map(|r| {
                            let scope = match &r.task_group {
                                Some(g) => format!("group {:?}", g.id),
                                None => "no group".to_owned(),
                            };
                            format!("{} ({}, {scope})", r.task_id, trigger_text(&r.trigger))
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            ))
        }
    }
}

/// RFC 3339 in UTC, to the second (`2026-12-01T09:15:00Z`).
pub fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.round(jiff::Unit::Second).unwrap_or(t).to_string())
        .unwrap_or_else(|_| ms.to_string())
}

/// A registration as listed (`btbctl list`, `show`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    pub task_id: Uuid,
    pub name: String,
    pub group: Option<String>,
    pub entry_point: Option<String>,
    /// The trigger as the app described it (`{"kind": "time", "freshness_minutes": 15, …}`).
    pub trigger: serde_json::Value,
    /// The same in words (`every 15 min`, `system event INTERNET_AVAILABLE`).
    pub trigger_text: String,
    pub conditions: Vec<String>,
    /// When a time, maintenance or calendar trigger fires next (RFC 3339), or null.
    pub next_due: Option<String>,
    /// A latched fire waits for its conditions.
    pub pending: bool,
    /// A one-shot trigger that has fired: it never fires again.
    pub spent: bool,
    /// The start of the running instance (RFC 3339), or null.
    pub running_since: Option<String>,
    /// `SUCCEEDED`, `FAILED` or `CANCELED` of the last recorded run, or null.
    pub last_outcome: Option<String>,
    /// `show` only: the conditions that do not hold now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<Vec<String>>,
    /// `show` only: why the task is not running (or that it is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// What is known of a task beyond its record.
#[derive(Debug, Clone, Default)]
pub struct TaskFacts {
    pub next_due_ms: Option<i64>,
    pub pending: bool,
    pub spent: bool,
    pub running_since_ms: Option<i64>,
    pub last_outcome: Option<TaskOutcome>,
    /// `None`: the states are not known (no broker runs); else the conditions that do not hold.
    pub waiting_for: Option<Vec<SystemConditionType>>,
    /// Of `waiting_for`, the conditions whose state is unknown on this machine (no source reports
    /// them): they do not hold until one does.
    pub unknown: Vec<SystemConditionType>,
    /// A timed trigger's window: it runs within `[due, due + window]` (SPEC §3).
    pub window_ms: Option<i64>,
    /// A retry waits (SPEC §12): its attempt and when it is due.
    pub retry: Option<(u32, i64)>,
    /// The message of the last recorded run (`show` only).
    pub last_message: Option<String>,
    /// Its fire waits for a process of the app that has its handler (SPEC §12): the sentence
    /// that says which, and whether the app is being started.
    pub waiting_for_handler: Option<String>,
}

/// One run (`btbctl history`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunView {
    pub instance_id: Uuid,
    pub started: String,
    pub ended: String,
    pub status: String,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub last_progress: u32,
    /// Which attempt (1-based, SPEC §12).
    #[serde(default = "crate::model::first_attempt")]
    pub attempt: u32,
    /// With status `RETRY`: when the next attempt is due (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<String>,
    /// What the run handed back (a JSON object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    /// The end of an `exec` host's stdout and stderr (the last 64 KiB of each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
}

impl From<&RunRecord> for RunView {
    fn from(run: &RunRecord) -> RunView {
        RunView {
            instance_id: run.instance_id,
            started: rfc3339(run.started_ms),
            ended: rfc3339(run.ended_ms),
            status: run.outcome.name().to_owned(),
            reason: run.reason.map(|r| r.name().to_owned()),
            message: run.message.clone(),
            last_progress: run.last_progress,
            attempt: run.attempt,
            retry_at: run.retry_at_ms.map(rfc3339),
            output: run
                .output
                .as_deref()
                .and_then(|o| serde_json::from_str(o).ok()),
            stdout: run.stdout.clone(),
            stderr: run.stderr.clone(),
        }
    }
}

/// One state of the machine (`btbctl doctor`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateView {
    pub state: Option<bool>,
    pub source: String,
}

/// The trigger in words.
pub fn trigger_text(trigger: &TaskTrigger) -> String {
    let once = |one_shot: bool| if one_shot { ", once" } else { "" };
    match trigger {
        TaskTrigger::Time {
            freshness_minutes,
            one_shot,
        } => format!("every {freshness_minutes} min{}", once(*one_shot)),
        TaskTrigger::Maintenance {
            freshness_minutes,
            one_shot,
        } => format!(
            "maintenance every {freshness_minutes} min on AC power{}",
            once(*one_shot)
        ),
        TaskTrigger::System {
            trigger_type,
            one_shot,
        } => format!("system event {}{}", trigger_type.name(), once(*one_shot)),
        TaskTrigger::Application { .. } => "application trigger".to_owned(),
        TaskTrigger::CustomEvent { trigger_id, .. } => format!("custom event {trigger_id:?}"),
        // As written, and as systemd would normalize it when that differs.
        TaskTrigger::Calendar { expression, spec } => {
            let normalized = spec.normalized();
            if normalized == *expression {
                format!("calendar {expression}")
            } else {
                format!("calendar {expression} (normalized: {normalized})")
            }
        }
    }
}

/// Why the task is not running now, in one sentence (or since when it is).
pub fn why(record: &TaskRecord, facts: &TaskFacts, now_ms: i64) -> String {
    let sentence = why_live(record, facts, now_ms);
    if facts.waiting_for.is_none() {
        return format!("{sentence} (no broker runs for this app: nothing runs until one does)");
    }
    sentence
}

fn why_live(record: &TaskRecord, facts: &TaskFacts, now_ms: i64) -> String {
    if let Some(since) = facts.running_since_ms {
        return format!("running since {}", rfc3339(since));
    }
    if let Some(sentence) = &facts.waiting_for_handler {
        return sentence.clone();
    }
    if let Some((attempt, at)) = facts.retry {
        let of = record
            .retry_policy
            .and_then(|p| p.max_attempts)
            .map_or(String::new(), |max| format!(" of {max}"));
        let last = facts
            .last_message
            .as_deref()
            .map_or(String::new(), |m| format!(" (last: {m})"));
        return format!("retrying: attempt {attempt}{of} at {}{last}", rfc3339(at));
    }
    if facts.spent {
        return "spent: its one-shot trigger has fired, and it never fires again".to_owned();
    }
    let waiting = facts
        .waiting_for
        .as_ref()
        .map(|w| w.iter().map(|c| c.name()).collect::<Vec<_>>().join(" and "));
    let unknown = if facts.unknown.is_empty() {
        String::new()
    } else {
        let names: Vec<&str> = facts.unknown.iter().map(|c| c.name()).collect();
        format!(
            " ({} unknown on this machine: no source reports it, so it does not hold)",
            names.join(" and ")
        )
    };
    if facts.pending {
        return match waiting {
            Some(w) if !w.is_empty() => format!("fired; waiting for {w}{unknown}"),
            Some(_) => "fired; about to run".to_owned(),
            None => "fired; waiting for its conditions (no broker runs to check them)".to_owned(),
        };
    }
    let after = match facts.waiting_for.as_deref() {
        Some([]) | None => String::new(),
        Some(_) => format!(", then for {}{unknown}", waiting.unwrap_or_default()),
    };
    match (&record.trigger, facts.next_due_ms) {
        (_, Some(due)) if due > now_ms => match facts.window_ms.filter(|w| *w > 0) {
            Some(window) => format!(
                "not due until {} (will run by {}){after}",
                rfc3339(due),
                rfc3339(due + window)
            ),
            None => format!("not due until {}{after}", rfc3339(due)),
        },
        (_, Some(due)) => format!("due since {}{after}", rfc3339(due)),
        (TaskTrigger::Application { .. }, None) => {
            format!("waiting for a request of its application trigger{after}")
        }
        (TaskTrigger::System { trigger_type, .. }, None) => {
            format!("waiting for system event {}{after}", trigger_type.name())
        }
        (TaskTrigger::CustomEvent { trigger_id, .. }, None) => {
            format!("waiting for custom event {trigger_id:?}{after}")
        }
        (_, None) => "not scheduled: no next due time".to_owned(),
    }
}

impl TaskView {
    /// The row of a registration; `explain`: with `waiting_for` and `why` (for `show`).
    pub fn new(record: &TaskRecord, facts: &TaskFacts, now_ms: i64, explain: bool) -> TaskView {
        let described = record.trigger.described();
        TaskView {
            task_id: record.task_id,
            name: record.name.clone(),
            group: record.task_group.as_ref().map(|g| g.id.clone()),
            entry_point: record.task_entry_point.clone(),
            trigger: serde_json::to_value(&described).unwrap_or(serde_json::Value::Null),
            trigger_text: trigger_text(&record.trigger),
            conditions: record
                .conditions
                .iter()
                .map(|c| c.name().to_owned())
                .collect(),
            // A spent one-shot is never due again, whatever its record still says.
            next_due: facts.next_due_ms.filter(|_| !facts.spent).map(rfc3339),
            pending: facts.pending,
            spent: facts.spent,
            running_since: facts.running_since_ms.map(rfc3339),
            last_outcome: facts.last_outcome.map(|o| o.name().to_owned()),
            // Without a broker no state is known, and an unknown state does not hold: all of them.
            waiting_for: explain.then(|| {
                facts
                    .waiting_for
                    .as_ref()
                    .unwrap_or(&record.conditions)
                    .iter()
                    .map(|c| c.name().to_owned())
                    .collect()
            }),
            why: explain.then(|| why(record, facts, now_ms)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SystemTriggerType;

    fn record(trigger: TaskTrigger) -> TaskRecord {
        TaskRecord {
            task_id: Uuid::nil(),
            name: "sync".into(),
            task_entry_point: Some("app.Sync".into()),
            task_group: None,
            cancel_on_condition_loss: false,
            is_network_requested: false,
            trigger,
            conditions: vec![SystemConditionType::InternetAvailable],
            registered_at_ms: 0,
            next_due_ms: None,
            seq: 1,
            retry_policy: None,
        }
    }

    #[test]
    fn one_sentence_says_why() {
        let time = record(TaskTrigger::Time {
            freshness_minutes: 15,
            one_shot: false,
        });
        let nine = 1_764_580_500_000; // 2025-12-01T09:15:00Z
        let mut facts = TaskFacts {
            next_due_ms: Some(nine),
            waiting_for: Some(vec![]),
            ..TaskFacts::default()
        };
        assert_eq!(
            why(&time, &facts, nine - 1),
            "not due until 2025-12-01T09:15:00Z"
        );
        facts.waiting_for = Some(vec![SystemConditionType::InternetAvailable]);
        assert_eq!(
            why(&time, &facts, nine - 1),
            "not due until 2025-12-01T09:15:00Z, then for INTERNET_AVAILABLE"
        );
        // A window: by when it runs; an unknown state: that it does not hold.
        facts.window_ms = Some(900_000);
        facts.unknown = vec![SystemConditionType::InternetAvailable];
        assert_eq!(
            why(&time, &facts, nine - 1),
            "not due until 2025-12-01T09:15:00Z (will run by 2025-12-01T09:30:00Z), then for \
             INTERNET_AVAILABLE (INTERNET_AVAILABLE unknown on this machine: no source reports it, \
             so it does not hold)"
        );
        facts.pending = true;
        assert_eq!(
            why(&time, &facts, nine),
            "fired; waiting for INTERNET_AVAILABLE (INTERNET_AVAILABLE unknown on this machine: no \
             source reports it, so it does not hold)"
        );
        facts.unknown.clear();
        facts.window_ms = None;
        assert_eq!(
            why(&time, &facts, nine),
            "fired; waiting for INTERNET_AVAILABLE"
        );
        facts.running_since_ms = Some(nine + 1000);
        assert_eq!(
            why(&time, &facts, nine),
            "running since 2025-12-01T09:15:01Z"
        );
        let spent = TaskFacts {
            spent: true,
            waiting_for: Some(vec![]),
            ..TaskFacts::default()
        };
        assert!(why(&time, &spent, nine).starts_with("spent"));
        let system = record(TaskTrigger::System {
            trigger_type: SystemTriggerType::InternetAvailable,
            one_shot: false,
        });
        assert_eq!(
            why(&system, &TaskFacts::default(), nine),
            "waiting for system event INTERNET_AVAILABLE (no broker runs for this app: nothing \
             runs until one does)"
        );
        let view = TaskView::new(&system, &TaskFacts::default(), nine, true);
        assert_eq!(
            view.waiting_for,
            Some(vec!["INTERNET_AVAILABLE".to_owned()])
        );
        assert_eq!(
            TaskView::new(&system, &TaskFacts::default(), nine, false).trigger_text,
            "system event INTERNET_AVAILABLE"
        );
    }
}
