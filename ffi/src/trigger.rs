//! Triggers and conditions: immutable values, copied into a builder by `btb_set_trigger` /
//! `btb_add_condition`. Enum-valued arguments are plain integers; an unknown value is reported by
//! `btb_register` (in the order of the registration checks), not here.

use std::ffi::{CString, c_char};
use std::sync::Arc;

use btb_core::{Error, Trigger};

use crate::error::{btb_status, guard};
use crate::handle::{self, Out, handle_type, read, required};
use crate::strings::{arg, c_str, c_string};

/// A trigger: what makes a task due. Immutable; thread-safe. Free with `btb_trigger_free`.
pub struct btb_trigger {
    _private: [u8; 0],
}

/// A system condition: a state that must hold for a task to start. Immutable; thread-safe.
/// Free with `btb_condition_free`.
pub struct btb_condition {
    _private: [u8; 0],
}

pub(crate) struct TriggerData {
    pub(crate) trigger: Trigger,
    /// The custom event id or calendar expression, for borrowed getters.
    text: Option<CString>,
    /// A calendar trigger's normalized expression, when it parses, for a borrowed getter.
    normalized: Option<CString>,
}

pub(crate) type TriggerRef = Arc<TriggerData>;
handle_type!(btb_trigger, "trigger", 2, Trigger, TriggerRef);
handle_type!(btb_condition, "condition", 3, Condition, u32);

/// Makes a trigger handle (also used by registrations' `trigger` getters).
pub(crate) fn new_trigger(trigger: Trigger) -> *mut btb_trigger {
    let text = match &trigger {
        Trigger::CustomEvent { trigger_id, .. } => Some(c_string(trigger_id)),
        Trigger::Calendar { expression } => Some(c_string(expression)),
        _ => None,
    };
    let normalized = match &trigger {
        Trigger::Calendar { expression } => btb_core::calendar::CalendarSpec::parse(expression)
            .ok()
            .map(|spec| c_string(&spec.normalized())),
        _ => None,
    };
    handle::insert::<btb_trigger>(Arc::new(TriggerData {
        trigger,
        text,
        normalized,
    }))
}

fn make(
    out: Option<Out<'_, *mut btb_trigger>>,
    trigger: impl FnOnce() -> Result<Trigger, Error>,
) -> Result<(), Error> {
    let out = required(out, "out")?;
    out.write(new_trigger(trigger()?));
    Ok(())
}

/// Creates a time trigger (`TimeTrigger`): due `freshness_minutes` after registration, then every
/// `freshness_minutes` unless `one_shot`. The freshness is checked by `btb_register` (minimum 15
/// minutes unless the system's policy lowers it; maximum 43,200).
///
/// On success `*out` is a new trigger the caller frees with `btb_trigger_free`.
/// Errors: `BTB_ERROR_NULL_ARGUMENT` (`out`). Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_time_trigger_new(
    freshness_minutes: u32,
    one_shot: bool,
    out: *mut *mut btb_trigger,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        make(out, || {
            Ok(Trigger::Time {
                freshness_minutes,
                one_shot,
            })
        })
    })
}

/// Creates a maintenance trigger (`MaintenanceTrigger`): like a time trigger, but runs only on AC
/// power. On success `*out` is a new trigger (free with `btb_trigger_free`).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_maintenance_trigger_new(
    freshness_minutes: u32,
    one_shot: bool,
    out: *mut *mut btb_trigger,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        make(out, || {
            Ok(Trigger::Maintenance {
                freshness_minutes,
                one_shot,
            })
        })
    })
}

/// Creates a system-event trigger (`SystemTrigger`) for a `BTB_SYSTEM_TRIGGER_*` value.
/// On success `*out` is a new trigger (free with `btb_trigger_free`). An unknown type is reported
/// by `btb_register` as `BTB_ERROR_INVALID_ARGUMENT`. Errors: `BTB_ERROR_NULL_ARGUMENT`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_system_trigger_new(
    trigger_type: u32,
    one_shot: bool,
    out: *mut *mut btb_trigger,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        make(out, || {
            Ok(Trigger::System {
                trigger_type,
                one_shot,
            })
        })
    })
}

/// Creates an application trigger (`ApplicationTrigger`), fired by the app's own request.
/// On success `*out` is a new trigger (free with `btb_trigger_free`).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_application_trigger_new(out: *mut *mut btb_trigger) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| make(out, || Ok(Trigger::application())))
}

/// Creates a custom-event trigger (`CustomSystemEventTrigger`): fires when any process of the same
/// user signals `trigger_id`; `recurrence` is a `BTB_CUSTOM_RECURRENCE_*` value. `trigger_id` is
/// copied. On success `*out` is a new trigger (free with `btb_trigger_free`).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_UTF8`. Thread-safe.
///
/// # Safety
///
/// `trigger_id` is NULL or a NUL-terminated string; `out` is NULL or points to writable storage for
/// one result, each valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_custom_trigger_new(
    trigger_id: *const c_char,
    recurrence: u32,
    out: *mut *mut btb_trigger,
) -> btb_status {
    // SAFETY: the C contract: `trigger_id` is NULL or a NUL-terminated string valid during the
    // call; `out` is NULL or writable storage for the result.
    let (trigger_id, out) = unsafe { (c_str(trigger_id), Out::from_raw(out)) };
    guard(|| {
        make(out, || {
            Ok(Trigger::CustomEvent {
                trigger_id: arg(trigger_id, "trigger_id")?.to_owned(),
                recurrence,
            })
        })
    })
}

/// Creates a calendar trigger (beyond Windows) from a systemd `OnCalendar`-style expression such as
/// `"Mon..Fri *-*-* 09:30"` or `"daily"`; the expression is parsed by `btb_register`.
/// On success `*out` is a new trigger (free with `btb_trigger_free`).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_UTF8`. Thread-safe.
///
/// # Safety
///
/// `expression` is NULL or a NUL-terminated string; `out` is NULL or points to writable storage for
/// one result, each valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_calendar_trigger_new(
    expression: *const c_char,
    out: *mut *mut btb_trigger,
) -> btb_status {
    // SAFETY: the C contract: `expression` is NULL or a NUL-terminated string valid during the
    // call; `out` is NULL or writable storage for the result.
    let (expression, out) = unsafe { (c_str(expression), Out::from_raw(out)) };
    guard(|| {
        make(out, || {
            Ok(Trigger::Calendar {
                expression: arg(expression, "expression")?.to_owned(),
            })
        })
    })
}

/// Frees a trigger. NULL is a no-op. Errors: `BTB_ERROR_INVALID_HANDLE` (freed, foreign or another
/// type — a double free included). Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_trigger_free(trigger: *mut btb_trigger) -> btb_status {
    guard(|| handle::free(trigger).map(drop))
}

fn not_applicable(data: &TriggerData, what: &str) -> Error {
    let kind = data
        .trigger
        .kind()
        .name()
        .to_ascii_lowercase()
        .replace('_', " ");
    let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    Error::invalid(format!("{article} {kind} trigger has no {what}"))
}

/// Writes the trigger's kind (`BTB_TRIGGER_KIND_*`) to `*out`.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_trigger_kind(
    trigger: *const btb_trigger,
    out: *mut u32,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| read(trigger, out, |d| Ok(d.trigger.kind() as u32)))
}

/// Writes the freshness in minutes of a time or maintenance trigger to `*out`.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_ARGUMENT`
/// (another kind of trigger). Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_trigger_freshness_minutes(
    trigger: *const btb_trigger,
    out: *mut u32,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(trigger, out, |d| {
            d.trigger
                .freshness_minutes()
                .ok_or_else(|| not_applicable(d, "freshness"))
        })
    })
}

/// Writes whether the trigger is one-shot to `*out` (always false for application, custom-event
/// and calendar triggers). Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_trigger_one_shot(
    trigger: *const btb_trigger,
    out: *mut bool,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| read(trigger, out, |d| Ok(d.trigger.one_shot())))
}

/// Writes the `BTB_SYSTEM_TRIGGER_*` type of a system trigger to `*out`.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_ARGUMENT`
/// (not a system trigger). Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_trigger_system_type(
    trigger: *const btb_trigger,
    out: *mut u32,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(trigger, out, |d| match d.trigger {
            Trigger::System { trigger_type, .. } => Ok(trigger_type),
            _ => Err(not_applicable(d, "system trigger type")),
        })
    })
}

/// Writes the `BTB_CUSTOM_RECURRENCE_*` value of a custom-event trigger to `*out`.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_ARGUMENT`.
/// Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_trigger_recurrence(
    trigger: *const btb_trigger,
    out: *mut u32,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(trigger, out, |d| match d.trigger {
            Trigger::CustomEvent { recurrence, .. } => Ok(recurrence),
            _ => Err(not_applicable(d, "recurrence")),
        })
    })
}

/// Writes the event id of a custom-event trigger, or the expression of a calendar trigger, to
/// `*out`. The string is borrowed: valid while the trigger handle lives.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_ARGUMENT`
/// (a trigger without text). Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_trigger_text(
    trigger: *const btb_trigger,
    out: *mut *const c_char,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(trigger, out, |d| {
            // The CString lives in the Arc'd data, which lives as long as the handle.
            d.text
                .as_ref()
                .map(|t| t.as_ptr())
                .ok_or_else(|| not_applicable(d, "event id or expression"))
        })
    })
}

/// Writes a calendar trigger's expression in systemd's normalized form (what `systemd-analyze
/// calendar` prints as "Normalized form", e.g. `"Mon..Fri *-*-* 09:30:00"` for
/// `"Mon-Fri 9:30"`) to `*out`. The string is borrowed: valid while the trigger handle lives.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_ARGUMENT` (not
/// a calendar trigger, or an expression that does not parse — the message names the offending
/// part, as `btb_register` would). Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_calendar_trigger_normalized(
    trigger: *const btb_trigger,
    out: *mut *const c_char,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(trigger, out, |d| {
            let Trigger::Calendar { expression } = &d.trigger else {
                return Err(not_applicable(d, "normalized calendar expression"));
            };
            // The CString lives in the Arc'd data, which lives as long as the handle.
            match &d.normalized {
                Some(normalized) => Ok(normalized.as_ptr()),
                None => Err(btb_core::calendar::CalendarSpec::parse(expression)
                    .err()
                    .unwrap_or_else(|| Error::invalid("calendar expression"))),
            }
        })
    })
}

/// Creates a system condition (`SystemCondition`) for a `BTB_CONDITION_*` value; an unknown value is
/// reported by `btb_register`. On success `*out` is a new condition (free with `btb_condition_free`).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_system_condition_new(
    condition_type: u32,
    out: *mut *mut btb_condition,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        let out = required(out, "out")?;
        out.write(handle::insert::<btb_condition>(condition_type));
        Ok(())
    })
}

/// Writes the condition's `BTB_CONDITION_*` type to `*out`.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_condition_type(
    condition: *const btb_condition,
    out: *mut u32,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| read(condition, out, |c| Ok(*c)))
}

/// Frees a condition. NULL is a no-op. Errors: `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_condition_free(condition: *mut btb_condition) -> btb_status {
    guard(|| handle::free(condition).map(drop))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_property_is_named_with_the_right_article() {
        let mut t: *mut btb_trigger = std::ptr::null_mut();
        // SAFETY: `t` and `v` are writable locals.
        assert_eq!(
            unsafe { btb_application_trigger_new(&mut t) },
            btb_status::BTB_OK
        );
        let mut v = 0u32;
        assert_eq!(
            unsafe { btb_trigger_freshness_minutes(t, &mut v) },
            btb_status::BTB_ERROR_INVALID_ARGUMENT
        );
        let msg = unsafe { std::ffi::CStr::from_ptr(crate::error::btb_last_error_message()) };
        assert_eq!(
            msg.to_str().unwrap(),
            "an application trigger has no freshness"
        );
        assert_eq!(btb_trigger_free(t), btb_status::BTB_OK);
    }
}
