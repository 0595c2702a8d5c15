//! `btb_registration`, `btb_task_group` and the list types returned by the system's listings.

use std::ffi::{CString, c_char, c_void};
use std::sync::Arc;

use btb_core::{Completion, Error, ErrorKind, Registration, RunRecord, TaskGroup};

use crate::error::{btb_status, guard};
use crate::handle::{self, Handle, Out, OutArray, UserData, handle_type, read, required};
use crate::instance::btb_free_fn;
use crate::retry::{btb_retry_policy, new_retry_policy};
use crate::strings::{arg, c_str, c_string, opt_arg};
use crate::trigger::{btb_trigger, new_trigger};

/// A 128-bit task or instance id, in RFC 9562 byte order.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct btb_uuid {
    /// The 16 bytes (`btb_uuid_to_string` gives the text form).
    pub bytes: [u8; 16],
}

/// A registered task (`BackgroundTaskRegistration`): an immutable snapshot of what was registered,
/// tied to its system. Thread-safe. Free with `btb_registration_free` (freeing the handle does not
/// unregister the task).
pub struct btb_registration {
    _private: [u8; 0],
}

/// A task group (`BackgroundTaskRegistrationGroup`): `(id, name)`. Immutable; thread-safe.
/// Free with `btb_task_group_free`.
pub struct btb_task_group {
    _private: [u8; 0],
}

/// A snapshot list of registrations. Immutable; thread-safe. Free with `btb_registration_list_free`.
pub struct btb_registration_list {
    _private: [u8; 0],
}

/// A snapshot list of task groups. Immutable; thread-safe. Free with `btb_task_group_list_free`.
pub struct btb_task_group_list {
    _private: [u8; 0],
}

pub(crate) struct RegistrationData {
    registration: Registration,
    name: CString,
    entry_point: Option<CString>,
}

pub(crate) struct GroupData {
    pub(crate) group: TaskGroup,
    id: CString,
    name: CString,
}

pub(crate) type RegistrationRef = Arc<RegistrationData>;
pub(crate) type GroupRef = Arc<GroupData>;
pub(crate) type RegistrationListRef = Arc<Vec<Registration>>;
pub(crate) type GroupListRef = Arc<Vec<TaskGroup>>;

handle_type!(
    btb_registration,
    "registration",
    7,
    Registration,
    RegistrationRef
);
handle_type!(btb_task_group, "group", 8, TaskGroup, GroupRef);
handle_type!(
    btb_registration_list,
    "list",
    9,
    RegistrationList,
    RegistrationListRef
);
handle_type!(btb_task_group_list, "list", 10, TaskGroupList, GroupListRef);

/// `*out` = the number of items of any list handle.
fn list_len<H: Handle<Inner = Arc<Vec<T>>>, T>(
    list: *const H,
    out: Option<Out<'_, usize>>,
) -> Result<(), Error> {
    read(list, out, |l| Ok(l.len()))
}

/// `*out` = `make(item at index)` for any list handle; an index past the end names the length.
fn list_get<H: Handle<Inner = Arc<Vec<T>>>, T, O>(
    list: *const H,
    index: usize,
    out: Option<Out<'_, O>>,
    what: &str,
    make: impl FnOnce(&T) -> O,
) -> Result<(), Error> {
    read(list, out, |l| {
        let item = l.get(index).ok_or_else(|| {
            Error::invalid(format!(
                "index {index} is out of range for a list of {} {what}",
                l.len()
            ))
        })?;
        Ok(make(item))
    })
}

pub(crate) fn new_registration(registration: Registration) -> *mut btb_registration {
    let data = RegistrationData {
        name: c_string(registration.name()),
        entry_point: registration.task_entry_point().map(c_string),
        registration,
    };
    handle::insert::<btb_registration>(Arc::new(data))
}

pub(crate) fn new_group(group: TaskGroup) -> *mut btb_task_group {
    let data = GroupData {
        id: c_string(&group.id),
        name: c_string(&group.name),
        group,
    };
    handle::insert::<btb_task_group>(Arc::new(data))
}

pub(crate) fn new_registration_list(list: Vec<Registration>) -> *mut btb_registration_list {
    handle::insert::<btb_registration_list>(Arc::new(list))
}

pub(crate) fn new_group_list(list: Vec<TaskGroup>) -> *mut btb_task_group_list {
    handle::insert::<btb_task_group_list>(Arc::new(list))
}

/// Writes the task id to `*out`. Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`.
/// Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_registration_task_id(
    registration: *const btb_registration,
    out: *mut btb_uuid,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(registration, out, |r| {
            Ok(btb_uuid {
                bytes: *r.registration.task_id().as_bytes(),
            })
        })
    })
}

/// The size of a uuid's text form with its terminating NUL (36 characters + 1): the capacity that
/// `btb_uuid_to_string` needs.
pub const BTB_UUID_STRING_SIZE: usize = 37;

/// Writes the canonical text form of a uuid (36 characters, lowercase, hyphenated) and a NUL to the
/// caller's buffer `out` of `capacity` bytes, as libgit2's `git_oid_tostr` does: there is no string
/// to free. `char text[BTB_UUID_STRING_SIZE]` is enough. Errors: `BTB_ERROR_NULL_ARGUMENT`,
/// `BTB_ERROR_INVALID_ARGUMENT` (`capacity` below `BTB_UUID_STRING_SIZE`; nothing is written).
/// Thread-safe.
///
/// # Safety
///
/// `id` is NULL or points to a readable `btb_uuid`; `out` is NULL or points to `capacity` writable
/// bytes, each valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_uuid_to_string(
    id: *const btb_uuid,
    out: *mut c_char,
    capacity: usize,
) -> btb_status {
    // SAFETY: the C contract: `id` is NULL or points to a readable `btb_uuid`; `out` is NULL or
    // `capacity` writable bytes.
    let (id, out) = unsafe { (id.as_ref(), OutArray::from_raw(out, capacity)) };
    guard(|| {
        let bytes = required(id, "id")?.bytes;
        let out = required(out, "out")?;
        if capacity < BTB_UUID_STRING_SIZE {
            return Err(Error::invalid(format!(
                "capacity {capacity} is too small for a uuid: it needs BTB_UUID_STRING_SIZE ({BTB_UUID_STRING_SIZE})"
            )));
        }
        let text = uuid::Uuid::from_bytes(bytes).to_string();
        let with_nul: Vec<c_char> = text.bytes().chain([0]).map(|b| b as c_char).collect();
        out.fill(&with_nul);
        Ok(())
    })
}

/// Writes the task name to `*out` (borrowed: valid while the registration handle lives).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_registration_name(
    registration: *const btb_registration,
    out: *mut *const c_char,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| read(registration, out, |r| Ok(r.name.as_ptr())))
}

/// Writes the entry point to `*out`, or NULL for a task without one (borrowed: valid while the
/// registration handle lives). Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`.
/// Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_registration_task_entry_point(
    registration: *const btb_registration,
    out: *mut *const c_char,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(registration, out, |r| {
            Ok(r.entry_point
                .as_ref()
                .map_or(std::ptr::null(), |c| c.as_ptr()))
        })
    })
}

/// Writes a new handle to the registration's task group to `*out`, or NULL if it has none (free with
/// `btb_task_group_free`). Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_registration_task_group(
    registration: *const btb_registration,
    out: *mut *mut btb_task_group,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(registration, out, |r| {
            Ok(r.registration
                .task_group()
                .cloned()
                .map_or(std::ptr::null_mut(), new_group))
        })
    })
}

/// Writes a new handle to a copy of the registration's trigger to `*out` (free with
/// `btb_trigger_free`). Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_registration_trigger(
    registration: *const btb_registration,
    out: *mut *mut btb_trigger,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(registration, out, |r| {
            Ok(new_trigger(r.registration.trigger()))
        })
    })
}

/// Writes a new handle to a copy of the registration's retry policy to `*out` (free with
/// `btb_retry_policy_free`). Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`,
/// `BTB_ERROR_NOT_FOUND` (registered without one). Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_registration_retry_policy(
    registration: *const btb_registration,
    out: *mut *mut btb_retry_policy,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(registration, out, |r| {
            r.registration
                .record()
                .retry_policy
                .map(new_retry_policy)
                .ok_or_else(|| {
                    Error::new(ErrorKind::NotFound, "the registration has no retry policy")
                })
        })
    })
}

/// Copies up to `capacity` condition types (`BTB_CONDITION_*`) to `conditions` and writes their total
/// number to `*out_len`. `conditions` may be NULL when `capacity` is 0.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `conditions` is NULL or points to `capacity` writable elements; `out_len` is NULL or points to
/// writable storage for one result, each valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_registration_conditions(
    registration: *const btb_registration,
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
        let r = handle::get(registration, "registration")?;
        let values: Vec<u32> = r
            .registration
            .conditions()
            .iter()
            .map(|c| *c as u32)
            .collect();
        conditions.fill(&values);
        out_len.write(values.len());
        Ok(())
    })
}

/// Writes `cancel_on_condition_loss` to `*out`. Errors: `BTB_ERROR_NULL_ARGUMENT`,
/// `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_registration_cancel_on_condition_loss(
    registration: *const btb_registration,
    out: *mut bool,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(registration, out, |r| {
            Ok(r.registration.cancel_on_condition_loss())
        })
    })
}

/// Writes `is_network_requested` to `*out`. Errors: `BTB_ERROR_NULL_ARGUMENT`,
/// `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_registration_is_network_requested(
    registration: *const btb_registration,
    out: *mut bool,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(registration, out, |r| {
            Ok(r.registration.is_network_requested())
        })
    })
}

/// Writes whether the registration is spent (its one-shot trigger fired; it never fires again) to
/// `*out`. Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_registration_is_spent(
    registration: *const btb_registration,
    out: *mut bool,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| read(registration, out, |r| Ok(r.registration.is_spent())))
}

/// Unregisters the task durably. With `cancel_task`, a running instance is canceled with
/// `BTB_CANCELLATION_ABORT`; otherwise it finishes. The handle stays valid (free it as usual).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_NOT_FOUND` (already
/// unregistered), `BTB_ERROR_STORE`, `BTB_ERROR_STATE` (closed system, forked child). Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_registration_unregister(
    registration: *mut btb_registration,
    cancel_task: bool,
) -> btb_status {
    guard(|| {
        handle::get(registration as *const btb_registration, "registration")?
            .registration
            .unregister(cancel_task)
    })
}

/// Frees a registration handle (the task stays registered). NULL is a no-op.
/// Errors: `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_registration_free(registration: *mut btb_registration) -> btb_status {
    guard(|| handle::free(registration).map(drop))
}

/// Creates a task group `(id, name)`; `name` NULL means the id. Both copied. Use it with
/// `btb_set_task_group`; naming a group in a builder creates it at registration.
/// On success `*out` is a new group (free with `btb_task_group_free`).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_UTF8`, `BTB_ERROR_INVALID_ARGUMENT`
/// (empty or longer than 256 bytes). Thread-safe.
///
/// # Safety
///
/// `id` is NULL or a NUL-terminated string; `name` is NULL or a NUL-terminated string; `out` is
/// NULL or points to writable storage for one result, each valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_task_group_new(
    id: *const c_char,
    name: *const c_char,
    out: *mut *mut btb_task_group,
) -> btb_status {
    // SAFETY: the C contract: `id` and `name` are NULL or NUL-terminated strings valid during the
    // call; `out` is NULL or writable storage for the result.
    let (id, name, out) = unsafe { (c_str(id), c_str(name), Out::from_raw(out)) };
    guard(|| {
        let out = required(out, "out")?;
        let group = TaskGroup::new(arg(id, "id")?, opt_arg(name, "name")?.map(str::to_owned))?;
        out.write(new_group(group));
        Ok(())
    })
}

/// A task group's background-activated handler, called as WinRT calls
/// `BackgroundTaskRegistrationGroup.BackgroundActivated` (sender, args) and with the same shape as
/// the completed and progress handlers: the group (the one the handler was added to), then the
/// instance, both borrowed for the call (`btb_instance_clone` keeps the instance longer). It runs
/// on a btb worker thread with no btb lock held; report failure with `btb_instance_report_failure`,
/// take a deferral to finish later.
pub type btb_group_activated_fn = Option<
    unsafe extern "C" fn(
        group: *mut btb_task_group,
        instance: *mut crate::instance::btb_instance,
        user_data: *mut c_void,
    ),
>;

/// Adds a background-activated handler to the task group (WinRT
/// `BackgroundTaskRegistrationGroup.BackgroundActivated`): it runs the group's registered tasks
/// that have no entry point, in every system of this process where a registration names the group —
/// whether added before or after the registration (objects are bound by use). Several handlers of
/// one group run in the order added, with one instance; the first to report a failure ends the run.
/// A system's own handler for the group (`btb_system_set_background_activated` with the group id)
/// is asked first. `handler` runs on a btb worker thread with the group and the instance, both
/// borrowed (see `btb_group_activated_fn`); `user_data` is passed back as given (btb never
/// dereferences it) until `free_user_data` (may be NULL) is called for it (see `btb_free_fn`).
/// On success `*out_token` (may be NULL) names the handler for
/// `btb_task_group_remove_background_activated`.
/// Errors: `BTB_ERROR_NULL_ARGUMENT` (group or handler), `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out_token` is NULL or points to writable storage for one result, valid for the duration of the
/// call. `handler` and `free_user_data` must be safe to call with `user_data` from btb's threads, as
/// documented above.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_task_group_add_background_activated(
    group: *const btb_task_group,
    handler: btb_group_activated_fn,
    user_data: *mut c_void,
    free_user_data: btb_free_fn,
    out_token: *mut u64,
) -> btb_status {
    // SAFETY: the C contract: `out_token` is NULL or writable storage for the result.
    let out_token = unsafe { Out::from_raw(out_token) };
    guard(|| {
        let g = handle::get(group, "group")?;
        let f = handler.ok_or_else(|| Error::new(ErrorKind::NullArgument, "handler is NULL"))?;
        let user_data = UserData::new(user_data, free_user_data);
        let id = g.group.id.clone();
        let run: btb_core::RunFn = Arc::new(move |instance: &btb_core::Instance| {
            // A handle of its own for each call, freed when the call returns (as for completed
            // and progress handlers), so that the handler's `btb_task_group_free` cannot take the
            // group from a later call.
            let group = handle::insert::<btb_task_group>(Arc::clone(&g));
            crate::instance::with_borrowed(instance, |instance| {
                // SAFETY: the C caller promised `f` accepts these arguments (documented).
                unsafe { f(group, instance, user_data.ptr()) }
            });
            let _ = handle::free(group);
        });
        let token = btb_core::groups::add_background_activated(&id, run);
        if let Some(out_token) = out_token {
            out_token.write(token);
        }
        Ok(())
    })
}

/// Removes a handler added with `btb_task_group_add_background_activated`; once this returns,
/// runs that had not started no longer call it (a run already going finishes).
/// Errors: `BTB_ERROR_NOT_FOUND` (no handler has that token). Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_task_group_remove_background_activated(token: u64) -> btb_status {
    guard(|| {
        if btb_core::groups::remove_background_activated(token).is_some() {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::NotFound,
                format!("no background-activated handler has token {token}"),
            ))
        }
    })
}

/// Writes the group id to `*out` (borrowed: valid while the group handle lives).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_task_group_id(
    group: *const btb_task_group,
    out: *mut *const c_char,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| read(group, out, |g| Ok(g.id.as_ptr())))
}

/// Writes the group's friendly name to `*out` (borrowed: valid while the group handle lives).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_task_group_name(
    group: *const btb_task_group,
    out: *mut *const c_char,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| read(group, out, |g| Ok(g.name.as_ptr())))
}

/// Frees a task group handle. NULL is a no-op. Errors: `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_task_group_free(group: *mut btb_task_group) -> btb_status {
    guard(|| handle::free(group).map(drop))
}

/// Writes the number of registrations in the list to `*out`.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_registration_list_len(
    list: *const btb_registration_list,
    out: *mut usize,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| list_len(list, out))
}

/// Writes a new handle to the registration at `index` to `*out` (free with `btb_registration_free`).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_ARGUMENT`
/// (index out of range). Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_registration_list_get(
    list: *const btb_registration_list,
    index: usize,
    out: *mut *mut btb_registration,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        list_get(list, index, out, "registrations", |r| {
            new_registration(r.clone())
        })
    })
}

/// Frees a registration list. NULL is a no-op. Errors: `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_registration_list_free(list: *mut btb_registration_list) -> btb_status {
    guard(|| handle::free(list).map(drop))
}

/// Writes the number of groups in the list to `*out`.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_task_group_list_len(
    list: *const btb_task_group_list,
    out: *mut usize,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| list_len(list, out))
}

/// Writes a new handle to the group at `index` to `*out` (free with `btb_task_group_free`).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_ARGUMENT`
/// (index out of range). Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_task_group_list_get(
    list: *const btb_task_group_list,
    index: usize,
    out: *mut *mut btb_task_group,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| list_get(list, index, out, "task groups", |g| new_group(g.clone())))
}

/// Frees a task group list. NULL is a no-op. Errors: `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_task_group_list_free(list: *mut btb_task_group_list) -> btb_status {
    guard(|| handle::free(list).map(drop))
}

/// How a run ended, as completed handlers see it. Borrowed for the duration of the callback.
#[repr(C)]
pub struct btb_completion {
    /// The run (`IBackgroundTaskInstance.InstanceId`).
    pub instance_id: btb_uuid,
    /// `BTB_TASK_OUTCOME_*`.
    pub outcome: u32,
    /// `BTB_CANCELLATION_*` when the outcome is CANCELED, else -1.
    pub reason: i32,
    /// The failure message, or a description of the cancellation; NULL on success.
    pub message: *const c_char,
    /// The last progress the run reported.
    pub last_progress: u32,
    /// Which attempt ended (1-based; SPEC §12).
    pub attempt: u32,
    /// With outcome `BTB_TASK_OUTCOME_RETRY`: when the next attempt is due (ms since the epoch),
    /// else -1.
    pub retry_at_ms: i64,
    /// What the run handed back (`btb_instance_set_output`) as JSON object text, or NULL.
    pub output: *const c_char,
}

/// A completed handler (`BackgroundTaskCompletedEventHandler`): called on a btb thread with no btb
/// lock held, with the registration and completion borrowed for the call. It may call any btb
/// function, including unregistering.
pub type btb_completed_fn = Option<
    unsafe extern "C" fn(
        registration: *mut btb_registration,
        completion: *const btb_completion,
        user_data: *mut c_void,
    ),
>;

/// A progress handler (`BackgroundTaskProgressEventHandler`): called on a btb thread, in order,
/// for each change of an instance's progress.
pub type btb_progress_fn = Option<
    unsafe extern "C" fn(
        registration: *mut btb_registration,
        instance_id: *const btb_uuid,
        progress: u32,
        user_data: *mut c_void,
    ),
>;

fn borrowed_registration(registration: &Registration, f: impl FnOnce(*mut btb_registration)) {
    let h = new_registration(registration.clone());
    f(h);
    let _ = handle::free(h);
}

/// Adds a completed handler; writes its token (for `btb_registration_remove_handler`) to
/// `*out_token` (may be NULL).
/// `free_user_data` (may be NULL) is called once btb is done with `user_data` (see `btb_free_fn`).
/// Errors: `BTB_ERROR_NULL_ARGUMENT` (registration or handler),
/// `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_STATE`. Thread-safe.
///
/// # Safety
///
/// `out_token` is NULL or points to writable storage for one result, valid for the duration of the
/// call. `handler` and `free_user_data` must be safe to call with `user_data` from btb's threads,
/// as documented above.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_registration_add_completed(
    registration: *mut btb_registration,
    handler: btb_completed_fn,
    user_data: *mut c_void,
    free_user_data: btb_free_fn,
    out_token: *mut u64,
) -> btb_status {
    // SAFETY: the C contract: `out_token` is NULL or writable storage for the result.
    let out_token = unsafe { Out::from_raw(out_token) };
    guard(|| {
        let r = handle::get(registration as *const btb_registration, "registration")?;
        let f = handler.ok_or_else(|| Error::new(ErrorKind::NullArgument, "handler is NULL"))?;
        let user_data = UserData::new(user_data, free_user_data);
        let held = Arc::clone(&user_data);
        let added =
            r.registration
                .add_completed(Arc::new(move |reg: &Registration, c: &Completion| {
                    let message = c.message.as_deref().map(c_string);
                    let output = c.output.as_ref().map(|o| c_string(&o.to_string()));
                    let completion = btb_completion {
                        instance_id: btb_uuid {
                            bytes: *c.instance_id.as_bytes(),
                        },
                        outcome: c.outcome as u32,
                        reason: c.reason.map_or(-1, |r| r as i32),
                        message: message.as_ref().map_or(std::ptr::null(), |m| m.as_ptr()),
                        last_progress: c.last_progress,
                        attempt: c.attempt,
                        retry_at_ms: c.retry_at_ms.unwrap_or(-1),
                        output: output.as_ref().map_or(std::ptr::null(), |o| o.as_ptr()),
                    };
                    // SAFETY: the C caller promised `f` accepts these arguments.
                    borrowed_registration(reg, |h| unsafe { f(h, &completion, held.ptr()) });
                }));
        let token = user_data.kept_on_error(added)?;
        if let Some(out_token) = out_token {
            out_token.write(token);
        }
        Ok(())
    })
}

/// Adds a progress handler; writes its token to `*out_token` (may be NULL).
/// `free_user_data` (may be NULL) is called once btb is done with `user_data` (see `btb_free_fn`).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_STATE`. Thread-safe.
///
/// # Safety
///
/// `out_token` is NULL or points to writable storage for one result, valid for the duration of the
/// call. `handler` and `free_user_data` must be safe to call with `user_data` from btb's threads,
/// as documented above.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_registration_add_progress(
    registration: *mut btb_registration,
    handler: btb_progress_fn,
    user_data: *mut c_void,
    free_user_data: btb_free_fn,
    out_token: *mut u64,
) -> btb_status {
    // SAFETY: the C contract: `out_token` is NULL or writable storage for the result.
    let out_token = unsafe { Out::from_raw(out_token) };
    guard(|| {
        let r = handle::get(registration as *const btb_registration, "registration")?;
        let f = handler.ok_or_else(|| Error::new(ErrorKind::NullArgument, "handler is NULL"))?;
        let user_data = UserData::new(user_data, free_user_data);
        let held = Arc::clone(&user_data);
        let added =
            r.registration
                .add_progress(Arc::new(move |reg: &Registration, id, progress| {
                    let id = btb_uuid {
                        bytes: *id.as_bytes(),
                    };
                    // SAFETY: the C caller promised `f` accepts these arguments.
                    borrowed_registration(reg, |h| unsafe { f(h, &id, progress, held.ptr()) });
                }));
        let token = user_data.kept_on_error(added)?;
        if let Some(out_token) = out_token {
            out_token.write(token);
        }
        Ok(())
    })
}

/// Removes a completed or progress handler by token. A handler being called when it is removed
/// finishes that call. Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`,
/// `BTB_ERROR_NOT_FOUND` (unknown token). Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_registration_remove_handler(
    registration: *mut btb_registration,
    token: u64,
) -> btb_status {
    guard(|| {
        let r = handle::get(registration as *const btb_registration, "registration")?;
        if r.registration.remove_handler(token) {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::NotFound,
                format!("no handler with token {token}"),
            ))
        }
    })
}

/// Requests a run through the registration's application trigger, with `arguments` (a JSON object
/// text, or NULL); writes a `BTB_APPLICATION_TRIGGER_*` result to `*out`. Works after a restart.
/// UNKNOWN_ERROR (the task was unregistered) comes with `BTB_OK`, and `btb_last_error_message()`
/// says why.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_UTF8`,
/// `BTB_ERROR_INVALID_ARGUMENT` (not an application trigger; bad arguments), `BTB_ERROR_STATE`.
/// Thread-safe.
///
/// # Safety
///
/// `arguments` is NULL or a NUL-terminated string; `out` is NULL or points to writable storage for
/// one result, each valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_registration_request(
    registration: *mut btb_registration,
    arguments: *const c_char,
    out: *mut u32,
) -> btb_status {
    // SAFETY: the C contract: `arguments` is NULL or a NUL-terminated string valid during the call;
    // `out` is NULL or writable storage for the result.
    let (arguments, out) = unsafe { (c_str(arguments), Out::from_raw(out)) };
    guard(|| {
        let out = required(out, "out")?;
        let r = handle::get(registration as *const btb_registration, "registration")?;
        let args = crate::system::parse_arguments(arguments)?;
        let result = r.registration.request(args)?;
        if result == btb_core::ApplicationTriggerResult::UnknownError {
            crate::system::explain_unheld(&format!(
                "no registration holds the application trigger of task \"{}\" (it was unregistered)",
                r.registration.name()
            ));
        }
        out.write(result as u32);
        Ok(())
    })
}

/// Writes when the registration's time, maintenance or calendar trigger is next due (ms since the
/// Unix epoch) to `*out`. Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`,
/// `BTB_ERROR_NOT_FOUND` (another kind of trigger, or spent). Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_registration_next_due_ms(
    registration: *const btb_registration,
    out: *mut i64,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(registration, out, |r| {
            r.registration
                .next_due_ms()
                .ok_or_else(|| Error::new(ErrorKind::NotFound, "the registration has no due time"))
        })
    })
}

/// A snapshot of a registration's run history. Immutable; thread-safe. Free with
/// `btb_run_list_free`.
pub struct btb_run_list {
    _private: [u8; 0],
}

/// One recorded run. Its strings are borrowed from the list (valid while the list lives).
#[repr(C)]
pub struct btb_run {
    /// The run (`IBackgroundTaskInstance.InstanceId`).
    pub instance_id: btb_uuid,
    /// `BTB_TRIGGER_KIND_*`.
    pub trigger_kind: u32,
    /// What fired it as JSON (application trigger arguments), or NULL.
    pub trigger_details: *const c_char,
    /// When it started, in milliseconds since the Unix epoch (UTC).
    pub started_ms: i64,
    /// When it ended, in milliseconds since the Unix epoch (UTC).
    pub ended_ms: i64,
    /// `BTB_TASK_OUTCOME_*`.
    pub outcome: u32,
    /// `BTB_CANCELLATION_*` when canceled, else -1.
    pub reason: i32,
    /// Failure or cancellation message, or NULL.
    pub message: *const c_char,
    /// The last progress the run reported.
    pub last_progress: u32,
    /// The end (last 64 KiB) of an exec host's stdout, or NULL (in-process runs, no output).
    pub stdout_tail: *const c_char,
    /// The end (last 64 KiB) of an exec host's stderr, or NULL.
    pub stderr_tail: *const c_char,
    /// Which attempt this was (1-based; SPEC §12).
    pub attempt: u32,
    /// With outcome `BTB_TASK_OUTCOME_RETRY`: when the next attempt is due (ms since the epoch),
    /// else -1.
    pub retry_at_ms: i64,
    /// What the run handed back, as JSON object text, or NULL.
    pub output: *const c_char,
}

pub(crate) struct RunRow {
    run: RunRecord,
    details: Option<CString>,
    message: Option<CString>,
    stdout: Option<CString>,
    stderr: Option<CString>,
    output: Option<CString>,
}
pub(crate) type RunListRef = Arc<Vec<RunRow>>;
handle_type!(btb_run_list, "list", 13, RunList, RunListRef);

/// Writes a new list of the registration's recorded runs (oldest first; the last 100 by default) to
/// `*out`; free it with `btb_run_list_free`. Errors: `BTB_ERROR_NULL_ARGUMENT`,
/// `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_STORE`, `BTB_ERROR_STATE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_registration_history(
    registration: *const btb_registration,
    out: *mut *mut btb_run_list,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(registration, out, |r| {
            let rows = r
                .registration
                .history()?
                .into_iter()
                .map(|run| RunRow {
                    details: run.trigger_details.as_deref().map(c_string),
                    message: run.message.as_deref().map(c_string),
                    stdout: run.stdout.as_deref().map(c_string),
                    stderr: run.stderr.as_deref().map(c_string),
                    output: run.output.as_deref().map(c_string),
                    run,
                })
                .collect();
            Ok(handle::insert::<btb_run_list>(Arc::new(rows)))
        })
    })
}

/// Writes the number of runs in the list to `*out`. Errors: `BTB_ERROR_NULL_ARGUMENT`,
/// `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_run_list_len(
    list: *const btb_run_list,
    out: *mut usize,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| list_len(list, out))
}

/// Writes the run at `index` to `*out` (strings borrowed from the list).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_ARGUMENT`
/// (index out of range). Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_run_list_get(
    list: *const btb_run_list,
    index: usize,
    out: *mut btb_run,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        list_get(list, index, out, "runs", |row| btb_run {
            instance_id: btb_uuid {
                bytes: *row.run.instance_id.as_bytes(),
            },
            trigger_kind: row.run.trigger_kind as u32,
            // The CStrings live in the Arc'd list, which lives as long as the handle.
            trigger_details: row
                .details
                .as_ref()
                .map_or(std::ptr::null(), |c| c.as_ptr()),
            started_ms: row.run.started_ms,
            ended_ms: row.run.ended_ms,
            outcome: row.run.outcome as u32,
            reason: row.run.reason.map_or(-1, |r| r as i32),
            message: row
                .message
                .as_ref()
                .map_or(std::ptr::null(), |c| c.as_ptr()),
            last_progress: row.run.last_progress,
            stdout_tail: row.stdout.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            stderr_tail: row.stderr.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            attempt: row.run.attempt,
            retry_at_ms: row.run.retry_at_ms.unwrap_or(-1),
            output: row.output.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
        })
    })
}

/// Frees a run list. NULL is a no-op. Errors: `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_run_list_free(list: *mut btb_run_list) -> btb_status {
    guard(|| handle::free(list).map(drop))
}
