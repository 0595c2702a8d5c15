//! `btb_builder`: `BackgroundTaskBuilder`. Setters copy their arguments; `btb_register*` borrows
//! the builder, so after a validation error the caller fixes it and calls again.

use std::ffi::{CString, c_char};
use std::sync::{Arc, Mutex, MutexGuard};

use btb_core::{Builder, Error, ErrorKind};

use crate::error::{btb_status, guard};
use crate::handle::{self, Out, OutArray, handle_type, read, required};
use crate::registration::{btb_registration, btb_task_group, new_group, new_registration};
use crate::retry::{self, btb_retry_policy, new_retry_policy};
use crate::strings::{arg, c_str, c_string, opt_arg};
use crate::system::btb_system;
use crate::trigger::{btb_condition, btb_trigger, new_trigger};

/// A mutable description of one task before registration (`BackgroundTaskBuilder`).
/// Thread-safe (calls on one builder are serialised). Free with `btb_free`.
pub struct btb_builder {
    _private: [u8; 0],
}

/// A builder and the C copies of its strings that the getters lend out.
pub(crate) struct BuilderData {
    builder: Mutex<Builder>,
    lent: Mutex<Lent>,
}

/// The strings `btb_get_name` and `btb_get_task_entry_point` lent. A copy is replaced only when
/// its value changed, so a pointer stays valid until the builder changes or is freed.
#[derive(Default)]
struct Lent {
    name: Option<CString>,
    entry_point: Option<CString>,
}

pub(crate) type BuilderRef = Arc<BuilderData>;
handle_type!(btb_builder, "builder", 1, Builder, BuilderRef);

fn lock(b: &BuilderRef) -> MutexGuard<'_, Builder> {
    b.builder.lock().unwrap_or_else(|p| p.into_inner())
}

/// A pointer to the C copy of `value` kept in `slot` (NULL for `None`); the copy is made anew only
/// when `value` differs from it.
fn lend(slot: &mut Option<CString>, value: Option<&str>) -> *const c_char {
    match value {
        None => std::ptr::null(),
        Some(v) => {
            if slot.as_ref().is_none_or(|c| c.as_bytes() != v.as_bytes()) {
                *slot = Some(c_string(v));
            }
            slot.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())
        }
    }
}

fn lent(b: &BuilderRef) -> MutexGuard<'_, Lent> {
    b.lent.lock().unwrap_or_else(|p| p.into_inner())
}

fn edit(
    builder: *mut btb_builder,
    f: impl FnOnce(&mut Builder) -> Result<(), Error>,
) -> btb_status {
    guard(|| {
        let b = handle::get(builder as *const btb_builder, "builder")?;
        f(&mut lock(&b))
    })
}

/// Creates an empty builder: no name, no trigger, no conditions, name policy `BTB_NAME_POLICY_ALLOW`.
/// On success `*out` is a new builder the caller frees with `btb_free`.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_new(out: *mut *mut btb_builder) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        let out = required(out, "out")?;
        out.write(handle::insert::<btb_builder>(Arc::new(BuilderData {
            builder: Mutex::new(Builder::new()),
            lent: Mutex::new(Lent::default()),
        })));
        Ok(())
    })
}

/// Frees a builder. NULL is a no-op. Errors: `BTB_ERROR_INVALID_HANDLE` (freed, foreign, another
/// type, double free). Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_free(builder: *mut btb_builder) -> btb_status {
    guard(|| handle::free(builder).map(drop))
}

/// Sets the task name (copied). Its length (1–256 bytes) is checked by `btb_register`.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_UTF8`. Thread-safe.
///
/// # Safety
///
/// `name` is NULL or a NUL-terminated string, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_set_name(
    builder: *mut btb_builder,
    name: *const c_char,
) -> btb_status {
    edit(builder, |b| {
        // SAFETY: the C contract: `name` is NULL or a NUL-terminated string valid during the call.
        let name = unsafe { c_str(name) };
        b.name = Some(arg(name, "name")?.to_owned());
        Ok(())
    })
}

/// Sets (copied) or, with NULL or `""`, clears the entry point: a name declared in the manifest.
/// Errors: `BTB_ERROR_NULL_ARGUMENT` (builder), `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_UTF8`.
/// Thread-safe.
///
/// # Safety
///
/// `entry_point` is NULL or a NUL-terminated string, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_set_task_entry_point(
    builder: *mut btb_builder,
    entry_point: *const c_char,
) -> btb_status {
    edit(builder, |b| {
        // SAFETY: the C contract: `entry_point` is NULL or a NUL-terminated string valid during the
        // call.
        let entry_point = unsafe { c_str(entry_point) };
        b.task_entry_point = opt_arg(entry_point, "entry_point")?
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        Ok(())
    })
}

/// Sets (copied) or, with NULL, clears the task group. Naming a group creates it at registration.
/// Errors: `BTB_ERROR_NULL_ARGUMENT` (builder), `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_set_task_group(
    builder: *mut btb_builder,
    group: *const btb_task_group,
) -> btb_status {
    edit(builder, |b| {
        b.task_group = if group.is_null() {
            None
        } else {
            Some(handle::get(group, "group")?.group.clone())
        };
        Ok(())
    })
}

/// Sets `cancel_on_condition_loss` (default false). Errors: `BTB_ERROR_NULL_ARGUMENT`,
/// `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_set_cancel_on_condition_loss(
    builder: *mut btb_builder,
    value: bool,
) -> btb_status {
    edit(builder, |b| {
        b.cancel_on_condition_loss = value;
        Ok(())
    })
}

/// Sets `is_network_requested` (default false). Errors: `BTB_ERROR_NULL_ARGUMENT`,
/// `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_set_is_network_requested(
    builder: *mut btb_builder,
    value: bool,
) -> btb_status {
    edit(builder, |b| {
        b.is_network_requested = value;
        Ok(())
    })
}

/// Sets the name policy (`BTB_NAME_POLICY_*`); an unknown value is reported by `btb_register`.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_set_name_policy(builder: *mut btb_builder, policy: u32) -> btb_status {
    edit(builder, |b| {
        b.name_policy = policy;
        Ok(())
    })
}

/// Sets the trigger (copied; replaces any previous one). The caller still owns and frees `trigger`.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_set_trigger(
    builder: *mut btb_builder,
    trigger: *const btb_trigger,
) -> btb_status {
    edit(builder, |b| {
        b.set_trigger(handle::get(trigger, "trigger")?.trigger.clone());
        Ok(())
    })
}

/// Appends a condition (copied); adding one already present changes nothing. The caller still owns
/// `condition`. Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_add_condition(
    builder: *mut btb_builder,
    condition: *const btb_condition,
) -> btb_status {
    edit(builder, |b| {
        b.add_condition(handle::get(condition, "condition")?);
        Ok(())
    })
}

/// Sets the retry policy (copied; SPEC §12) or, with NULL, clears it: without one nothing is retried
/// on its own, and a run that asks for a retry gets the default policy. The caller still owns and
/// frees `policy`. Its bounds are checked by `btb_register` (`BTB_ERROR_INVALID_ARGUMENT`).
/// Errors: `BTB_ERROR_NULL_ARGUMENT` (builder), `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_set_retry_policy(
    builder: *mut btb_builder,
    policy: *const btb_retry_policy,
) -> btb_status {
    edit(builder, |b| {
        b.retry_policy = if policy.is_null() {
            None
        } else {
            Some(*retry::lock(&handle::get(policy, "policy")?))
        };
        Ok(())
    })
}

/// Writes the name to `*out` (NULL when unset), borrowed: valid until the builder's name changes
/// or the builder is freed. Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`.
/// Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_get_name(
    builder: *const btb_builder,
    out: *mut *const c_char,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(builder, out, |b| {
            let name = lock(b).name.clone();
            Ok(lend(&mut lent(b).name, name.as_deref()))
        })
    })
}

/// Writes the entry point to `*out` (NULL when unset), borrowed: valid until the builder's entry
/// point changes or the builder is freed. Errors: `BTB_ERROR_NULL_ARGUMENT`,
/// `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_get_task_entry_point(
    builder: *const btb_builder,
    out: *mut *const c_char,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(builder, out, |b| {
            let entry_point = lock(b).task_entry_point.clone();
            Ok(lend(&mut lent(b).entry_point, entry_point.as_deref()))
        })
    })
}

/// Writes a new handle to the builder's task group to `*out` (NULL when unset); free it with
/// `btb_task_group_free`. Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_get_task_group(
    builder: *const btb_builder,
    out: *mut *mut btb_task_group,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(builder, out, |b| {
            Ok(lock(b)
                .task_group
                .clone()
                .map_or(std::ptr::null_mut(), new_group))
        })
    })
}

/// Writes `cancel_on_condition_loss` to `*out`. Errors: `BTB_ERROR_NULL_ARGUMENT`,
/// `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_get_cancel_on_condition_loss(
    builder: *const btb_builder,
    out: *mut bool,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| read(builder, out, |b| Ok(lock(b).cancel_on_condition_loss)))
}

/// Writes `is_network_requested` to `*out`. Errors: `BTB_ERROR_NULL_ARGUMENT`,
/// `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_get_is_network_requested(
    builder: *const btb_builder,
    out: *mut bool,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| read(builder, out, |b| Ok(lock(b).is_network_requested)))
}

/// Writes the name policy (`BTB_NAME_POLICY_*`) to `*out`. Errors: `BTB_ERROR_NULL_ARGUMENT`,
/// `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_get_name_policy(
    builder: *const btb_builder,
    out: *mut u32,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| read(builder, out, |b| Ok(lock(b).name_policy)))
}

/// Writes a new handle to a copy of the trigger to `*out` (free with `btb_trigger_free`).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_NOT_FOUND` (no trigger
/// set). Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_get_trigger(
    builder: *const btb_builder,
    out: *mut *mut btb_trigger,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(builder, out, |b| {
            lock(b)
                .trigger
                .clone()
                .map(new_trigger)
                .ok_or_else(|| Error::new(ErrorKind::NotFound, "the builder has no trigger"))
        })
    })
}

/// Writes a new handle to a copy of the retry policy to `*out` (free with `btb_retry_policy_free`;
/// changing it does not change the builder's). Errors: `BTB_ERROR_NULL_ARGUMENT`,
/// `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_NOT_FOUND` (no retry policy set). Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_get_retry_policy(
    builder: *const btb_builder,
    out: *mut *mut btb_retry_policy,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(builder, out, |b| {
            lock(b)
                .retry_policy
                .map(new_retry_policy)
                .ok_or_else(|| Error::new(ErrorKind::NotFound, "the builder has no retry policy"))
        })
    })
}

/// Copies up to `capacity` condition types (`BTB_CONDITION_*`, in the order added) to `conditions`
/// and writes their total number to `*out_len` (call with `capacity` 0 to learn it).
/// `conditions` may be NULL when `capacity` is 0.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `conditions` is NULL or points to `capacity` writable elements; `out_len` is NULL or points to
/// writable storage for one result, each valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_get_conditions(
    builder: *const btb_builder,
    conditions: *mut u32,
    capacity: usize,
    out_len: *mut usize,
) -> btb_status {
    // SAFETY: the C contract: `out_len` is NULL or writable storage for the result; `conditions` is
    // NULL or `capacity` writable elements.
    let (out_len, conditions) = unsafe {
        (
            Out::from_raw(out_len),
            OutArray::from_raw(conditions, capacity),
        )
    };
    guard(|| {
        let out_len = required(out_len, "out_len")?;
        let conditions = required(conditions, "conditions")?;
        let b = handle::get(builder, "builder")?;
        let b = lock(&b);
        conditions.fill(&b.conditions);
        out_len.write(b.conditions.len());
        Ok(())
    })
}

fn register(
    system: Option<*mut btb_system>,
    builder: *const btb_builder,
    out: Option<Out<'_, *mut btb_registration>>,
) -> Result<(), Error> {
    let out = required(out, "out")?;
    let system = match system {
        Some(s) => handle::get(s as *const btb_system, "system")?
            .system
            .clone(),
        None => btb_core::default_system()?,
    };
    let b = handle::get(builder, "builder")?;
    // Validate and store a snapshot so that the builder lock is not held while committing.
    let snapshot = lock(&b).clone();
    let registration = system.register(&snapshot)?;
    out.write(new_registration(registration));
    Ok(())
}

/// Registers the task described by `builder` with the default system (opened on first use from
/// `BTB_MANIFEST` and `BTB_STORE`, or set with `btb_system_set_default`). Same contract as
/// `btb_register_in`; without a default system it fails with `BTB_ERROR_STATE` and a message that
/// says how to provide a manifest.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_register(
    builder: *const btb_builder,
    out: *mut *mut btb_registration,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| register(None, builder, out))
}

/// Validates and registers the task described by `builder` in `system`, returning only once the
/// registration is committed to the store. The builder is borrowed: after an error, fix it and call
/// again; the caller always frees it.
///
/// On success `*out` is a new registration handle (free with `btb_registration_free`); on failure
/// nothing is stored and `*out` is untouched. Checks, in order: `BTB_ERROR_NULL_ARGUMENT` /
/// `BTB_ERROR_INVALID_HANDLE`; name (`BTB_ERROR_INVALID_ARGUMENT`); `BTB_ERROR_NO_TRIGGER`;
/// `BTB_ERROR_NO_ENTRY_POINT`; `BTB_ERROR_NOT_DECLARED` (entry point, then task type);
/// `BTB_ERROR_INVALID_ARGUMENT` (freshness, enum values, calendar expression, retry policy
/// bounds); `BTB_ERROR_CONFLICT` (contradictory conditions, name taken under
/// `BTB_NAME_POLICY_FAIL`); `BTB_ERROR_STORE`. Also `BTB_ERROR_STATE` (closed system, used after
/// fork). Thread-safe; blocks for the commit.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_register_in(
    system: *mut btb_system,
    builder: *const btb_builder,
    out: *mut *mut btb_registration,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| register(Some(system), builder, out))
}
