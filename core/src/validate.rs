//! Registration checks, in the order of SPEC §2. Each failure has its own kind and a message that
//! names the offending value. Pure: the caller supplies the manifest, the policy and which
//! activation handlers exist.

use crate::error::{Error, ErrorKind, Result};
use crate::manifest::Manifest;
use crate::model::{
    Builder, CustomRecurrence, NamePolicy, SystemConditionType, SystemTriggerType, TaskTrigger,
    Trigger, check_text,
};
use crate::policy::{MAX_FRESHNESS_MINUTES, Policy};

/// A builder that passed every check.
#[derive(Debug, Clone)]
pub struct Validated {
    pub name: String,
    pub task_entry_point: Option<String>,
    pub trigger: TaskTrigger,
    pub conditions: Vec<SystemConditionType>,
    pub name_policy: NamePolicy,
}

/// Maximum name length in bytes.
pub const MAX_NAME_BYTES: usize = 256;

const CONTRADICTIONS: [(SystemConditionType, SystemConditionType); 3] = [
    (
        SystemConditionType::InternetAvailable,
        SystemConditionType::InternetNotAvailable,
    ),
    (
        SystemConditionType::UserPresent,
        SystemConditionType::UserNotPresent,
    ),
    (
        SystemConditionType::SessionConnected,
        SystemConditionType::SessionDisconnected,
    ),
];

/// Runs every check but the name policy and the store (which need the system's state).
/// `has_activation_handler` answers for the builder's group (`Some(id)`) or the system (`None`).
pub fn validate(
    builder: &Builder,
    manifest: &Manifest,
    policy: &Policy,
    has_activation_handler: impl Fn(Option<&str>) -> bool,
) -> Result<Validated> {
    // 1. name
    let name = builder.name.as_deref().ok_or_else(|| {
        Error::invalid("the task has no name: set one (1-256 bytes of UTF-8) before registering")
    })?;
    check_text("task name", name, MAX_NAME_BYTES)?;

    if let Some(group) = &builder.task_group {
        check_text("task group id", &group.id, 256)?;
        if group.name.contains('\0') {
            return Err(Error::invalid(format!(
                "task group name {:?} contains a NUL byte",
                group.name
            )));
        }
    }

    // 2. trigger
    let trigger = builder.trigger.as_ref().ok_or_else(|| {
        Error::new(
            ErrorKind::NoTrigger,
            format!("task {name:?} has no trigger: call set_trigger before registering"),
        )
    })?;

    // 3-5. entry point, its declaration, the trigger's task type
    let entry_point = builder
        .task_entry_point
        .as_deref()
        .filter(|e| !e.is_empty());
    match entry_point {
        None => {
            let group = builder.task_group.as_ref().map(|g| g.id.as_str());
            if !(group.is_some_and(|g| has_activation_handler(Some(g)))
                || has_activation_handler(None))
            {
                let whose = match group {
                    Some(g) => format!("neither its task group {g:?} nor the system has"),
                    None => "the system has no".to_owned(),
                };
                return Err(Error::new(
                    ErrorKind::NoEntryPoint,
                    format!(
                        "task {name:?} has no entry point, and {whose} a background-activated handler: \
                         set task_entry_point or add a background-activated handler"
                    ),
                ));
            }
        }
        Some(ep) => {
            let decl = manifest.find(ep).ok_or_else(|| {
                let declared: Vec<&str> = manifest.tasks().iter().map(|t| t.entry_point.as_str()).collect();
                Error::new(
                    ErrorKind::NotDeclared,
                    format!(
                        "entry point {ep:?} of task {name:?} is not declared in the manifest of {:?} \
                         (declared: {})",
                        manifest.app_id(),
                        if declared.is_empty() { "none".to_owned() } else { declared.join(", ") }
                    ),
                )
            })?;
            let needed = trigger.required_task_type();
            if !decl.types.contains(&needed) {
                let types: Vec<&str> = decl.types.iter().map(|t| t.name()).collect();
                return Err(Error::new(
                    ErrorKind::NotDeclared,
                    format!(
                        "entry point {ep:?} is declared with types [{}], but a {} trigger needs task type {:?}",
                        types.join(", "),
                        trigger.kind().name().to_ascii_lowercase().replace('_', " "),
                        needed.name()
                    ),
                ));
            }
        }
    }

    // 6. values: freshness, enums, calendar expression, Windows' own rules
    let trigger = check_trigger(trigger, policy)?;
    let mut conditions = Vec::with_capacity(builder.conditions.len());
    for &raw in &builder.conditions {
        let c = SystemConditionType::from_u32(raw)?;
        if !conditions.contains(&c) {
            conditions.push(c);
        }
    }
    let name_policy = NamePolicy::from_u32(builder.name_policy)?;
    if let Some(retry) = &builder.retry_policy {
        retry.check()?;
    }

    // 7. contradictions (the name-policy conflict is checked by the system)
    for (a, b) in CONTRADICTIONS {
        if conditions.contains(&a) && conditions.contains(&b) {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "task {name:?} has contradictory conditions {} and {}: it could never run",
                    a.name(),
                    b.name()
                ),
            ));
        }
    }

    Ok(Validated {
        name: name.to_owned(),
        task_entry_point: entry_point.map(str::to_owned),
        trigger,
        conditions,
        name_policy,
    })
}

/// Checks a trigger and types it (enum values, the calendar expression parsed once).
fn check_trigger(trigger: &Trigger, policy: &Policy) -> Result<TaskTrigger> {
    match trigger {
        Trigger::Time {
            freshness_minutes, ..
        }
        | Trigger::Maintenance {
            freshness_minutes, ..
        } => {
            let kind = trigger.kind().name().to_ascii_lowercase();
            if *freshness_minutes < policy.min_freshness_minutes {
                return Err(Error::invalid(format!(
                    "{kind} trigger freshness {freshness_minutes} minutes is below the minimum of {} minutes{}",
                    policy.min_freshness_minutes,
                    if policy.min_freshness_minutes == crate::policy::WINDOWS_MIN_FRESHNESS_MINUTES
                    {
                        " (as on Windows; a test policy may lower it with min_freshness_minutes)"
                    } else {
                        " (policy min_freshness_minutes)"
                    }
                )));
            }
            if *freshness_minutes > MAX_FRESHNESS_MINUTES {
                return Err(Error::invalid(format!(
                    "{kind} trigger freshness {freshness_minutes} minutes is above the maximum of \
                     {MAX_FRESHNESS_MINUTES} minutes (30 days)"
                )));
            }
        }
        Trigger::System {
            trigger_type,
            one_shot,
        } => {
            if SystemTriggerType::from_u32(*trigger_type)? == SystemTriggerType::ControlChannelReset
                && *one_shot
            {
                return Err(Error::invalid(
                    "a CONTROL_CHANNEL_RESET system trigger cannot be one-shot (Windows requires one_shot = false)",
                ));
            }
        }
        Trigger::Application { .. } => {}
        Trigger::CustomEvent {
            trigger_id,
            recurrence,
        } => {
            check_text("custom event trigger id", trigger_id, 256)?;
            if trigger_id.chars().any(char::is_control) {
                return Err(Error::invalid(format!(
                    "custom event trigger id {trigger_id:?} contains a control character"
                )));
            }
            CustomRecurrence::from_u32(*recurrence)?;
        }
        Trigger::Calendar { .. } => {} // parsed by `from_trigger`, once
    }
    TaskTrigger::from_trigger(trigger)
}
