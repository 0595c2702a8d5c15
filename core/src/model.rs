//! The data model of SPEC §1: enums with their Windows values, triggers, conditions, task groups,
//! the builder and the registered task record.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};

/// Declares a `u32`-valued enum with `from_u32` (fallible, message names the value), `name`
/// and `ALL`.
macro_rules! value_enum {
    ($(#[$m:meta])* $name:ident, $what:literal { $($(#[$vm:meta])* $variant:ident = $value:literal => $text:literal,)+ }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u32)]
        pub enum $name { $($(#[$vm])* $variant = $value,)+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// Converts a raw value; an unknown value is `InvalidArgument` naming it.
            pub fn from_u32(value: u32) -> Result<Self> {
                match value {
                    $($value => Ok($name::$variant),)+
                    other => Err(Error::invalid(format!(concat!("unknown ", $what, " value {}"), other))),
                }
            }

            /// The SCREAMING_CASE name used by the C header and Python.
            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }
        }

        // On the wire (the control protocol) as the number, checked like any raw value.
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_u32(*self as u32)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                $name::from_u32(u32::deserialize(d)?).map_err(|e| serde::de::Error::custom(e.message()))
            }
        }
    };
}

value_enum!(
    /// Windows `SystemTriggerType`.
    SystemTriggerType, "system trigger type" {
        SmsReceived = 1 => "SMS_RECEIVED",
        UserPresent = 2 => "USER_PRESENT",
        UserAway = 3 => "USER_AWAY",
        NetworkStateChange = 4 => "NETWORK_STATE_CHANGE",
        ControlChannelReset = 5 => "CONTROL_CHANNEL_RESET",
        InternetAvailable = 6 => "INTERNET_AVAILABLE",
        SessionConnected = 7 => "SESSION_CONNECTED",
        ServicingComplete = 8 => "SERVICING_COMPLETE",
        LockScreenApplicationAdded = 9 => "LOCK_SCREEN_APPLICATION_ADDED",
        LockScreenApplicationRemoved = 10 => "LOCK_SCREEN_APPLICATION_REMOVED",
        TimeZoneChange = 11 => "TIME_ZONE_CHANGE",
        OnlineIdConnectedStateChange = 12 => "ONLINE_ID_CONNECTED_STATE_CHANGE",
        BackgroundWorkCostChange = 13 => "BACKGROUND_WORK_COST_CHANGE",
        PowerStateChange = 14 => "POWER_STATE_CHANGE",
        DefaultSignInAccountChange = 15 => "DEFAULT_SIGN_IN_ACCOUNT_CHANGE",
    }
);

value_enum!(
    /// Windows `SystemConditionType`, plus btb's own from 100.
    SystemConditionType, "system condition type" {
        UserPresent = 1 => "USER_PRESENT",
        UserNotPresent = 2 => "USER_NOT_PRESENT",
        InternetAvailable = 3 => "INTERNET_AVAILABLE",
        InternetNotAvailable = 4 => "INTERNET_NOT_AVAILABLE",
        SessionConnected = 5 => "SESSION_CONNECTED",
        SessionDisconnected = 6 => "SESSION_DISCONNECTED",
        FreeNetworkAvailable = 7 => "FREE_NETWORK_AVAILABLE",
        BackgroundWorkCostNotHigh = 8 => "BACKGROUND_WORK_COST_NOT_HIGH",
        OnAcPower = 100 => "ON_AC_POWER",
        BatteryNotLow = 101 => "BATTERY_NOT_LOW",
        StorageNotLow = 102 => "STORAGE_NOT_LOW",
        DeviceIdle = 103 => "DEVICE_IDLE",
    }
);

value_enum!(
    /// Windows `BackgroundTaskCancellationReason`.
    CancellationReason, "cancellation reason" {
        Abort = 0 => "ABORT",
        Terminating = 1 => "TERMINATING",
        LoggingOff = 2 => "LOGGING_OFF",
        ServicingUpdate = 3 => "SERVICING_UPDATE",
        IdleTask = 4 => "IDLE_TASK",
        Uninstall = 5 => "UNINSTALL",
        ConditionLoss = 6 => "CONDITION_LOSS",
        SystemPolicy = 7 => "SYSTEM_POLICY",
        QuietHoursEntered = 8 => "QUIET_HOURS_ENTERED",
        ExecutionTimeExceeded = 9 => "EXECUTION_TIME_EXCEEDED",
        ResourceRevocation = 10 => "RESOURCE_REVOCATION",
        EnergySaver = 11 => "ENERGY_SAVER",
    }
);

value_enum!(
    /// Windows `ApplicationTriggerResult`.
    ApplicationTriggerResult, "application trigger result" {
        Allowed = 0 => "ALLOWED",
        CurrentlyRunning = 1 => "CURRENTLY_RUNNING",
        DisabledByPolicy = 2 => "DISABLED_BY_POLICY",
        UnknownError = 3 => "UNKNOWN_ERROR",
    }
);

value_enum!(
    /// Windows `CustomSystemEventTriggerRecurrence`.
    CustomRecurrence, "custom system event trigger recurrence" {
        Once = 0 => "ONCE",
        Always = 1 => "ALWAYS",
    }
);

value_enum!(
    /// Windows `BackgroundWorkCostValue`.
    BackgroundWorkCostValue, "background work cost value" {
        Low = 0 => "LOW",
        Medium = 1 => "MEDIUM",
        High = 2 => "HIGH",
    }
);

value_enum!(
    /// What `register` does when a registration with the same name exists in the same scope
    /// (the same task group, or no group). Beyond Windows, after WorkManager's unique work.
    NamePolicy, "name policy" {
        Allow = 0 => "ALLOW",
        Keep = 1 => "KEEP",
        Replace = 2 => "REPLACE",
        Fail = 3 => "FAIL",
    }
);

value_enum!(
    /// The outcome of one run.
    TaskOutcome, "task outcome" {
        Succeeded = 0 => "SUCCEEDED",
        Failed = 1 => "FAILED",
        Canceled = 2 => "CANCELED",
        /// The run asked for another attempt (or failed or was cut off, under a retry policy
        /// that retries it): the next attempt waits for its delay, then for its conditions.
        Retry = 3 => "RETRY",
    }
);

value_enum!(
    /// How the delay between attempts grows (WorkManager's `BackoffPolicy`).
    BackoffPolicy, "backoff policy" {
        Exponential = 0 => "EXPONENTIAL",
        Linear = 1 => "LINEAR",
    }
);

/// The shortest first delay between attempts (WorkManager's `MIN_BACKOFF_MILLIS`).
pub const MIN_BACKOFF_MS: u64 = 10_000;
/// The longest delay between attempts (WorkManager's `MAX_BACKOFF_MILLIS`): 5 hours.
pub const MAX_BACKOFF_MS: u64 = 5 * 60 * 60 * 1000;

/// When and how often a run is tried again (beyond Windows; WorkManager's backoff criteria and
/// systemd's `Restart=`). Without one on the builder nothing is retried on its own; a run that
/// asks for a retry gets the default policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub backoff: BackoffPolicy,
    /// The delay after the first attempt: 10 s – 5 h.
    pub initial_delay_ms: u64,
    /// No delay is longer: from `initial_delay_ms` to 5 h.
    pub max_delay_ms: u64,
    /// At most this many attempts in all; `None`: no limit.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Failed runs are retried too, not only those that ask (or are cut off).
    #[serde(default)]
    pub retry_on_failure: bool,
    /// Each delay moves by up to this fraction of it, at random, in thousandths (0–1000).
    #[serde(default)]
    pub jitter_permille: u32,
}

impl Default for RetryPolicy {
    /// Exponential from 30 s, capped at 5 h, no limit on attempts (WorkManager's default).
    fn default() -> RetryPolicy {
        RetryPolicy {
            backoff: BackoffPolicy::Exponential,
            initial_delay_ms: 30_000,
            max_delay_ms: MAX_BACKOFF_MS,
            max_attempts: None,
            retry_on_failure: false,
            jitter_permille: 0,
        }
    }
}

impl RetryPolicy {
    /// Checks the bounds, naming the value out of them.
    pub fn check(&self) -> Result<()> {
        if !(MIN_BACKOFF_MS..=MAX_BACKOFF_MS).contains(&self.initial_delay_ms) {
            return Err(Error::invalid(format!(
                "retry policy: initial delay {} ms is outside 10 s – 5 h ({MIN_BACKOFF_MS}–{MAX_BACKOFF_MS} ms)",
                self.initial_delay_ms
            )));
        }
        if !(self.initial_delay_ms..=MAX_BACKOFF_MS).contains(&self.max_delay_ms) {
            return Err(Error::invalid(format!(
                "retry policy: max delay {} ms is outside the initial delay – 5 h ({}–{MAX_BACKOFF_MS} ms)",
                self.max_delay_ms, self.initial_delay_ms
            )));
        }
        if self.max_attempts == Some(0) {
            return Err(Error::invalid(
                "retry policy: max attempts is 0; it counts the first attempt, so at least 1",
            ));
        }
        if self.jitter_permille > 1000 {
            return Err(Error::invalid(format!(
                "retry policy: jitter {} is outside 0–1 (a fraction of the delay)",
                f64::from(self.jitter_permille) / 1000.0
            )));
        }
        Ok(())
    }

    /// The delay before the attempt after attempt `attempt` (1-based), before jitter: linear
    /// `d·n`, exponential `d·2^(n−1)`, capped at `max_delay_ms`.
    pub fn delay_ms(&self, attempt: u32) -> u64 {
        let n = u64::from(attempt.max(1));
        let d = self.initial_delay_ms;
        let raw = match self.backoff {
            BackoffPolicy::Linear => d.saturating_mul(n),
            BackoffPolicy::Exponential => d.saturating_mul(1u64 << (n - 1).min(40)),
        };
        raw.min(self.max_delay_ms)
    }

    /// [`RetryPolicy::delay_ms`] moved by the jitter: `unit` is uniform in [0, 1) and maps onto
    /// [−jitter, +jitter] of the delay.
    pub fn jittered_ms(&self, attempt: u32, unit: f64) -> u64 {
        let delay = self.delay_ms(attempt) as f64;
        let jitter = f64::from(self.jitter_permille) / 1000.0;
        (delay * (1.0 + jitter * (2.0 * unit - 1.0))).max(0.0) as u64
    }
}

value_enum!(
    /// The kind of a trigger, also the key of per-kind policy limits.
    TriggerKind, "trigger kind" {
        Time = 0 => "TIME",
        Maintenance = 1 => "MAINTENANCE",
        System = 2 => "SYSTEM",
        Application = 3 => "APPLICATION",
        CustomEvent = 4 => "CUSTOM_EVENT",
        Calendar = 5 => "CALENDAR",
    }
);

value_enum!(
    /// Windows manifest background task types (`<Task Type="…"/>`).
    TaskType, "task type" {
        General = 0 => "general",
        Audio = 1 => "audio",
        ControlChannel = 2 => "controlChannel",
        SystemEvent = 3 => "systemEvent",
        Timer = 4 => "timer",
        PushNotification = 5 => "pushNotification",
        Location = 6 => "location",
        DeviceUse = 7 => "deviceUse",
        DeviceServicing = 8 => "deviceServicing",
        DeviceConnectionChange = 9 => "deviceConnectionChange",
        Bluetooth = 10 => "bluetooth",
    }
);

impl TaskType {
    /// Parses the manifest spelling (case-sensitive, as in an AppX manifest).
    pub fn parse(text: &str) -> Option<TaskType> {
        TaskType::ALL.iter().copied().find(|t| t.name() == text)
    }
}

/// A trigger as described by the app. Enum-typed fields hold the raw value so that an unknown
/// value is reported at registration, in the order of SPEC §2, like every other mistake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Trigger {
    Time {
        freshness_minutes: u32,
        one_shot: bool,
    },
    Maintenance {
        freshness_minutes: u32,
        one_shot: bool,
    },
    System {
        trigger_type: u32,
        one_shot: bool,
    },
    /// `id` identifies this trigger object: `request` on it (or on a registration holding it)
    /// fires the registrations made with it, also after a restart.
    Application {
        id: Uuid,
    },
    CustomEvent {
        trigger_id: String,
        recurrence: u32,
    },
    Calendar {
        expression: String,
    },
}

impl Trigger {
    pub fn application() -> Trigger {
        Trigger::Application { id: Uuid::new_v4() }
    }

    pub fn kind(&self) -> TriggerKind {
        match self {
            Trigger::Time { .. } => TriggerKind::Time,
            Trigger::Maintenance { .. } => TriggerKind::Maintenance,
            Trigger::System { .. } => TriggerKind::System,
            Trigger::Application { .. } => TriggerKind::Application,
            Trigger::CustomEvent { .. } => TriggerKind::CustomEvent,
            Trigger::Calendar { .. } => TriggerKind::Calendar,
        }
    }

    /// The manifest task type the trigger needs (SPEC §5).
    pub fn required_task_type(&self) -> TaskType {
        match self.kind() {
            TriggerKind::Time | TriggerKind::Calendar => TaskType::Timer,
            TriggerKind::Maintenance | TriggerKind::Application => TaskType::General,
            TriggerKind::System | TriggerKind::CustomEvent => TaskType::SystemEvent,
        }
    }

    pub fn one_shot(&self) -> bool {
        match self {
            Trigger::Time { one_shot, .. }
            | Trigger::Maintenance { one_shot, .. }
            | Trigger::System { one_shot, .. } => *one_shot,
            _ => false,
        }
    }

    pub fn freshness_minutes(&self) -> Option<u32> {
        match self {
            Trigger::Time {
                freshness_minutes, ..
            }
            | Trigger::Maintenance {
                freshness_minutes, ..
            } => Some(*freshness_minutes),
            _ => None,
        }
    }
}

/// A trigger as a registration holds it, after validation: every enum value is known and a
/// calendar expression is parsed once. [`TaskTrigger::described`] gives back the app's
/// description (what bindings show and the store keeps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskTrigger {
    Time {
        freshness_minutes: u32,
        one_shot: bool,
    },
    Maintenance {
        freshness_minutes: u32,
        one_shot: bool,
    },
    System {
        trigger_type: SystemTriggerType,
        one_shot: bool,
    },
    Application {
        id: Uuid,
    },
    CustomEvent {
        trigger_id: String,
        recurrence: CustomRecurrence,
    },
    Calendar {
        expression: String,
        /// Boxed: a registration holds one trigger, and the other kinds stay small.
        spec: Box<crate::calendar::CalendarSpec>,
    },
}

impl TaskTrigger {
    /// Types the values of a described trigger: an unknown enum value or a bad calendar
    /// expression is `InvalidArgument` (range checks are `validate`'s).
    pub fn from_trigger(trigger: &Trigger) -> Result<TaskTrigger> {
        Ok(match trigger {
            Trigger::Time {
                freshness_minutes,
                one_shot,
            } => TaskTrigger::Time {
                freshness_minutes: *freshness_minutes,
                one_shot: *one_shot,
            },
            Trigger::Maintenance {
                freshness_minutes,
                one_shot,
            } => TaskTrigger::Maintenance {
                freshness_minutes: *freshness_minutes,
                one_shot: *one_shot,
            },
            Trigger::System {
                trigger_type,
                one_shot,
            } => TaskTrigger::System {
                trigger_type: SystemTriggerType::from_u32(*trigger_type)?,
                one_shot: *one_shot,
            },
            Trigger::Application { id } => TaskTrigger::Application { id: *id },
            Trigger::CustomEvent {
                trigger_id,
                recurrence,
            } => TaskTrigger::CustomEvent {
                trigger_id: trigger_id.clone(),
                recurrence: CustomRecurrence::from_u32(*recurrence)?,
            },
            Trigger::Calendar { expression } => TaskTrigger::Calendar {
                expression: expression.clone(),
                spec: Box::new(crate::calendar::CalendarSpec::parse(expression)?),
            },
        })
    }

    /// The trigger as the app describes it.
    pub fn described(&self) -> Trigger {
        match self {
            TaskTrigger::Time {
                freshness_minutes,
                one_shot,
            } => Trigger::Time {
                freshness_minutes: *freshness_minutes,
                one_shot: *one_shot,
            },
            TaskTrigger::Maintenance {
                freshness_minutes,
                one_shot,
            } => Trigger::Maintenance {
                freshness_minutes: *freshness_minutes,
                one_shot: *one_shot,
            },
            TaskTrigger::System {
                trigger_type,
                one_shot,
            } => Trigger::System {
                trigger_type: *trigger_type as u32,
                one_shot: *one_shot,
            },
            TaskTrigger::Application { id } => Trigger::Application { id: *id },
            TaskTrigger::CustomEvent {
                trigger_id,
                recurrence,
            } => Trigger::CustomEvent {
                trigger_id: trigger_id.clone(),
                recurrence: *recurrence as u32,
            },
            TaskTrigger::Calendar { expression, .. } => Trigger::Calendar {
                expression: expression.clone(),
            },
        }
    }

    pub fn kind(&self) -> TriggerKind {
        match self {
            TaskTrigger::Time { .. } => TriggerKind::Time,
            TaskTrigger::Maintenance { .. } => TriggerKind::Maintenance,
            TaskTrigger::System { .. } => TriggerKind::System,
            TaskTrigger::Application { .. } => TriggerKind::Application,
            TaskTrigger::CustomEvent { .. } => TriggerKind::CustomEvent,
            TaskTrigger::Calendar { .. } => TriggerKind::Calendar,
        }
    }

    pub fn one_shot(&self) -> bool {
        match self {
            TaskTrigger::Time { one_shot, .. }
            | TaskTrigger::Maintenance { one_shot, .. }
            | TaskTrigger::System { one_shot, .. } => *one_shot,
            _ => false,
        }
    }
}

/// A task group: `(id, name)`. Naming it in a builder creates it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskGroup {
    pub id: String,
    pub name: String,
}

impl TaskGroup {
    /// A group; without a name the name is the id (as Windows' one-argument constructor).
    pub fn new(id: impl Into<String>, name: Option<String>) -> Result<TaskGroup> {
        let id = id.into();
        check_text("task group id", &id, 256)?;
        let name = name.unwrap_or_else(|| id.clone());
        if name.contains('\0') {
            return Err(Error::invalid(format!(
                "task group name {name:?} contains a NUL byte"
            )));
        }
        Ok(TaskGroup { id, name })
    }
}

/// Checks a required identifier-like string: 1..=max bytes, no NUL.
pub(crate) fn check_text(what: &str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(format!("{what} is empty")));
    }
    if value.len() > max {
        return Err(Error::invalid(format!(
            "{what} is {} bytes long; the limit is {max} bytes",
            value.len()
        )));
    }
    if value.contains('\0') {
        return Err(Error::invalid(format!(
            "{what} {value:?} contains a NUL byte"
        )));
    }
    Ok(())
}

/// `BackgroundTaskBuilder`: a mutable description of one task before registration. Every field is
/// public: the builder is plain data, validated only by `register` (a client sends it as it is,
/// and its broker validates it).
///
/// On the wire (a client's `Register`) it is the one strict type: a field this build does not
/// know is refused, naming it, rather than ignored — ignoring it would register another task than
/// the app described (SPEC §5).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Builder {
    pub name: Option<String>,
    pub task_entry_point: Option<String>,
    pub task_group: Option<TaskGroup>,
    pub cancel_on_condition_loss: bool,
    pub is_network_requested: bool,
    /// Raw `NamePolicy` value (validated at registration); default `ALLOW`.
    pub name_policy: u32,
    pub trigger: Option<Trigger>,
    /// Raw `SystemConditionType` values in the order added; duplicates collapse.
    pub conditions: Vec<u32>,
    /// Retries (beyond Windows); `None`: none but those a run asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicy>,
}

impl Builder {
    pub fn new() -> Builder {
        Builder::default()
    }

    pub fn set_trigger(&mut self, trigger: Trigger) {
        self.trigger = Some(trigger);
    }

    /// Appends a condition; adding one already present changes nothing.
    pub fn add_condition(&mut self, condition: u32) {
        if !self.conditions.contains(&condition) {
            self.conditions.push(condition);
        }
    }
}

/// A registered task, as persisted. Immutable once registered except `spent`, which the system
/// tracks separately. On the wire its trigger travels as described and is typed again on arrival.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "RecordWire", try_from = "RecordWire")]
pub struct TaskRecord {
    pub task_id: Uuid,
    pub name: String,
    pub task_entry_point: Option<String>,
    pub task_group: Option<TaskGroup>,
    pub cancel_on_condition_loss: bool,
    pub is_network_requested: bool,
    pub trigger: TaskTrigger,
    pub conditions: Vec<SystemConditionType>,
    /// Registration instant, milliseconds since the Unix epoch (system clock).
    pub registered_at_ms: i64,
    /// The next due instant of a time or maintenance trigger (ms since the epoch).
    pub next_due_ms: Option<i64>,
    /// Insertion order, so listings are stable.
    pub seq: i64,
    pub retry_policy: Option<RetryPolicy>,
}

/// One finished run of a registration, as kept in the run history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub instance_id: Uuid,
    pub task_id: Uuid,
    pub trigger_kind: TriggerKind,
    /// What fired it, as JSON (application trigger arguments), if anything.
    pub trigger_details: Option<String>,
    pub started_ms: i64,
    pub ended_ms: i64,
    pub outcome: TaskOutcome,
    pub reason: Option<CancellationReason>,
    pub message: Option<String>,
    pub last_progress: u32,
    /// The ends of a host process's stdout and stderr (the last 64 KiB of each), for `exec` runs.
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    /// Which attempt this was (1-based; SPEC §12).
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// With outcome `RETRY`: when the next attempt is due (ms since the epoch).
    #[serde(default)]
    pub retry_at_ms: Option<i64>,
    /// What the run handed back: a JSON object, as text (SPEC §12).
    #[serde(default)]
    pub output: Option<String>,
}

/// The attempt of a record that does not say (written before retries existed).
pub(crate) fn first_attempt() -> u32 {
    1
}

/// [`TaskRecord`] on the wire (fields a newer broker adds are ignored, SPEC §5).
#[derive(Serialize, Deserialize)]
struct RecordWire {
    task_id: Uuid,
    name: String,
    task_entry_point: Option<String>,
    task_group: Option<TaskGroup>,
    cancel_on_condition_loss: bool,
    is_network_requested: bool,
    trigger: Trigger,
    conditions: Vec<SystemConditionType>,
    registered_at_ms: i64,
    next_due_ms: Option<i64>,
    seq: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry_policy: Option<RetryPolicy>,
}

impl From<TaskRecord> for RecordWire {
    fn from(r: TaskRecord) -> RecordWire {
        RecordWire {
            task_id: r.task_id,
            name: r.name,
            task_entry_point: r.task_entry_point,
            task_group: r.task_group,
            cancel_on_condition_loss: r.cancel_on_condition_loss,
            is_network_requested: r.is_network_requested,
            trigger: r.trigger.described(),
            conditions: r.conditions,
            registered_at_ms: r.registered_at_ms,
            next_due_ms: r.next_due_ms,
            seq: r.seq,
            retry_policy: r.retry_policy,
        }
    }
}

impl TryFrom<RecordWire> for TaskRecord {
    type Error = String;
    fn try_from(r: RecordWire) -> std::result::Result<TaskRecord, String> {
        Ok(TaskRecord {
            task_id: r.task_id,
            name: r.name,
            task_entry_point: r.task_entry_point,
            task_group: r.task_group,
            cancel_on_condition_loss: r.cancel_on_condition_loss,
            is_network_requested: r.is_network_requested,
            trigger: TaskTrigger::from_trigger(&r.trigger).map_err(|e| e.message().to_owned())?,
            conditions: r.conditions,
            registered_at_ms: r.registered_at_ms,
            next_due_ms: r.next_due_ms,
            seq: r.seq,
            retry_policy: r.retry_policy,
        })
    }
}
