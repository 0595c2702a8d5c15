//! Named values for C. Functions take and return these as `uint32_t` (values from C are converted
//! fallibly); the enums exist so the header carries the names. A test checks every core value has
//! its constant here with the same number.
#![allow(dead_code)]

/// Windows `SystemTriggerType` values, for `btb_system_trigger_new`.
#[repr(u32)]
pub enum btb_system_trigger_type {
    BTB_SYSTEM_TRIGGER_SMS_RECEIVED = 1,
    BTB_SYSTEM_TRIGGER_USER_PRESENT = 2,
    BTB_SYSTEM_TRIGGER_USER_AWAY = 3,
    BTB_SYSTEM_TRIGGER_NETWORK_STATE_CHANGE = 4,
    BTB_SYSTEM_TRIGGER_CONTROL_CHANNEL_RESET = 5,
    BTB_SYSTEM_TRIGGER_INTERNET_AVAILABLE = 6,
    BTB_SYSTEM_TRIGGER_SESSION_CONNECTED = 7,
    BTB_SYSTEM_TRIGGER_SERVICING_COMPLETE = 8,
    BTB_SYSTEM_TRIGGER_LOCK_SCREEN_APPLICATION_ADDED = 9,
    BTB_SYSTEM_TRIGGER_LOCK_SCREEN_APPLICATION_REMOVED = 10,
    BTB_SYSTEM_TRIGGER_TIME_ZONE_CHANGE = 11,
    BTB_SYSTEM_TRIGGER_ONLINE_ID_CONNECTED_STATE_CHANGE = 12,
    BTB_SYSTEM_TRIGGER_BACKGROUND_WORK_COST_CHANGE = 13,
    BTB_SYSTEM_TRIGGER_POWER_STATE_CHANGE = 14,
    BTB_SYSTEM_TRIGGER_DEFAULT_SIGN_IN_ACCOUNT_CHANGE = 15,
}

/// A condition's state, as `btb_system_state` writes it.
#[repr(i32)]
pub enum btb_state {
    BTB_STATE_UNKNOWN = -1,
    BTB_STATE_FALSE = 0,
    BTB_STATE_TRUE = 1,
}

/// Windows `SystemConditionType` values (from 100: beyond Windows), for `btb_system_condition_new`.
#[repr(u32)]
pub enum btb_system_condition_type {
    BTB_CONDITION_USER_PRESENT = 1,
    BTB_CONDITION_USER_NOT_PRESENT = 2,
    BTB_CONDITION_INTERNET_AVAILABLE = 3,
    BTB_CONDITION_INTERNET_NOT_AVAILABLE = 4,
    BTB_CONDITION_SESSION_CONNECTED = 5,
    BTB_CONDITION_SESSION_DISCONNECTED = 6,
    BTB_CONDITION_FREE_NETWORK_AVAILABLE = 7,
    BTB_CONDITION_BACKGROUND_WORK_COST_NOT_HIGH = 8,
    BTB_CONDITION_ON_AC_POWER = 100,
    BTB_CONDITION_BATTERY_NOT_LOW = 101,
    BTB_CONDITION_STORAGE_NOT_LOW = 102,
    BTB_CONDITION_DEVICE_IDLE = 103,
}

/// Windows `BackgroundTaskCancellationReason` values.
#[repr(u32)]
pub enum btb_cancellation_reason {
    BTB_CANCELLATION_ABORT = 0,
    BTB_CANCELLATION_TERMINATING = 1,
    BTB_CANCELLATION_LOGGING_OFF = 2,
    BTB_CANCELLATION_SERVICING_UPDATE = 3,
    BTB_CANCELLATION_IDLE_TASK = 4,
    BTB_CANCELLATION_UNINSTALL = 5,
    BTB_CANCELLATION_CONDITION_LOSS = 6,
    BTB_CANCELLATION_SYSTEM_POLICY = 7,
    BTB_CANCELLATION_QUIET_HOURS_ENTERED = 8,
    BTB_CANCELLATION_EXECUTION_TIME_EXCEEDED = 9,
    BTB_CANCELLATION_RESOURCE_REVOCATION = 10,
    BTB_CANCELLATION_ENERGY_SAVER = 11,
}

/// Windows `ApplicationTriggerResult` values.
#[repr(u32)]
pub enum btb_application_trigger_result {
    BTB_APPLICATION_TRIGGER_ALLOWED = 0,
    BTB_APPLICATION_TRIGGER_CURRENTLY_RUNNING = 1,
    BTB_APPLICATION_TRIGGER_DISABLED_BY_POLICY = 2,
    BTB_APPLICATION_TRIGGER_UNKNOWN_ERROR = 3,
}

/// Windows `CustomSystemEventTriggerRecurrence` values, for `btb_custom_trigger_new`.
#[repr(u32)]
pub enum btb_custom_recurrence {
    /// Fires at most once per broker run.
    BTB_CUSTOM_RECURRENCE_ONCE = 0,
    /// Fires on every signal.
    BTB_CUSTOM_RECURRENCE_ALWAYS = 1,
}

/// Windows `BackgroundWorkCostValue` values.
#[repr(u32)]
pub enum btb_background_work_cost {
    BTB_BACKGROUND_WORK_COST_LOW = 0,
    BTB_BACKGROUND_WORK_COST_MEDIUM = 1,
    BTB_BACKGROUND_WORK_COST_HIGH = 2,
}

/// What `btb_register` does when a task of the same name exists in the same scope (the same task
/// group, or no group). Beyond Windows.
#[repr(u32)]
pub enum btb_name_policy {
    /// Register another task with that name (the Windows behaviour; the default).
    BTB_NAME_POLICY_ALLOW = 0,
    /// Return the existing registration instead.
    BTB_NAME_POLICY_KEEP = 1,
    /// Unregister the existing one(s) (canceling a running instance with ABORT) and register anew.
    BTB_NAME_POLICY_REPLACE = 2,
    /// Fail with `BTB_ERROR_CONFLICT`.
    BTB_NAME_POLICY_FAIL = 3,
}

/// The outcome of a run.
#[repr(u32)]
pub enum btb_task_outcome {
    BTB_TASK_OUTCOME_SUCCEEDED = 0,
    BTB_TASK_OUTCOME_FAILED = 1,
    BTB_TASK_OUTCOME_CANCELED = 2,
    /// Another attempt follows (SPEC §12): the run asked for one, or failed or was cut off under a
    /// retry policy. `btb_run.retry_at_ms` says when.
    BTB_TASK_OUTCOME_RETRY = 3,
}

/// How the delay between attempts grows (`btb_retry_policy_new`).
#[repr(u32)]
pub enum btb_backoff_policy {
    /// `d·2^(n−1)` after attempt n.
    BTB_BACKOFF_EXPONENTIAL = 0,
    /// `d·n` after attempt n.
    BTB_BACKOFF_LINEAR = 1,
}

/// Trigger kinds, as returned by `btb_trigger_kind` and used for per-kind time limits.
#[repr(u32)]
pub enum btb_trigger_kind_value {
    BTB_TRIGGER_KIND_TIME = 0,
    BTB_TRIGGER_KIND_MAINTENANCE = 1,
    BTB_TRIGGER_KIND_SYSTEM = 2,
    BTB_TRIGGER_KIND_APPLICATION = 3,
    BTB_TRIGGER_KIND_CUSTOM_EVENT = 4,
    BTB_TRIGGER_KIND_CALENDAR = 5,
}

/// Durability of registrations, for `btb_system_options_set_durability`.
#[repr(u32)]
pub enum btb_durability {
    /// `synchronous=FULL`: a returned registration survives power loss (default).
    BTB_DURABILITY_FULL = 0,
    /// `synchronous=NORMAL`: survives a process crash; recent commits may be lost on power loss.
    BTB_DURABILITY_NORMAL = 1,
}

/// Kinds of pull-queue events (`btb_event.kind`).
#[repr(u32)]
pub enum btb_event_kind {
    /// The wait timed out.
    BTB_EVENT_NONE = 0,
    /// Run the instance on this thread, then call `btb_instance_finish_run`.
    BTB_EVENT_RUN = 1,
    /// A queued instance was canceled (`btb_event.reason`): stop it and finish its run.
    BTB_EVENT_CANCELED = 2,
}

/// Log levels, for `btb_set_log_callback` and `btb_log_fn` (the `log` crate's numbers).
#[repr(u32)]
pub enum btb_log_level {
    /// Something failed.
    BTB_LOG_ERROR = 1,
    /// Something is wrong, and btb carries on.
    BTB_LOG_WARN = 2,
    /// What the broker does: each run's start and end, activation, failover.
    BTB_LOG_INFO = 3,
    /// Details for debugging.
    BTB_LOG_DEBUG = 4,
    /// Everything.
    BTB_LOG_TRACE = 5,
}
