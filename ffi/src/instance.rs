//! `btb_instance` and `btb_deferral`: one run of a task as a run function sees it, and the
//! deferrals that keep it alive after the run function returns. The same handle type, wrapping
//! the same core `Instance`, serves an out-of-process host (`btb_host_connect`): code written
//! against `btb_instance_*` runs in either place, as Windows' `IBackgroundTaskInstance` does
//! in-process and out-of-process.
//!
//! Handles passed *to* callbacks are borrowed: valid until the callback returns (btb frees them
//! then; a later use is `BTB_ERROR_INVALID_HANDLE`, never undefined behaviour). Keep an instance
//! beyond a callback with `btb_instance_clone`, which returns a handle the caller frees.

use std::ffi::{CString, c_char, c_void};
use std::sync::Arc;

use btb_core::{Deferral, Error, ErrorKind, Handler, Instance};

use crate::error::{btb_status, guard};
use crate::handle::{self, Out, UserData, handle_type, read};
use crate::registration::{btb_registration, btb_uuid, new_registration};
use crate::strings::{arg, c_str, opt_arg};

/// One run of a registered task (`IBackgroundTaskInstance`). Thread-safe. A handle passed to a
/// callback is borrowed (valid until the callback returns); handles from `btb_instance_clone` and
/// `btb_system_next_event` are owned: free them with `btb_instance_free`.
pub struct btb_instance {
    _private: [u8; 0],
}

/// A deferral (`BackgroundTaskDeferral`): the instance completes only once every deferral is
/// completed. Thread-safe; complete it from any thread. Free with `btb_deferral_free` (freeing does
/// not complete it).
pub struct btb_deferral {
    _private: [u8; 0],
}

/// A run function: runs one instance on a btb worker thread (never the caller's thread, never with
/// a btb lock held). `instance` is borrowed for the call. Report failure with
/// `btb_instance_report_failure`; take a deferral to finish later from another thread.
pub type btb_run_fn =
    Option<unsafe extern "C" fn(instance: *mut btb_instance, user_data: *mut c_void)>;

/// A finalizer for a callback's `user_data` (may be NULL where accepted): btb calls it exactly once,
/// when it will never pass `user_data` again — after the handler was removed or replaced, or its
/// system closed, *and* no call of the handler is still going (a run function abandoned after its
/// grace keeps its `user_data` until it returns). It runs on whichever thread lets go last (the one
/// that removed the handler or closed the system, or a btb thread), with no btb lock held. It is
/// not called when the function that received it fails: the caller keeps `user_data` then.
pub type btb_free_fn = Option<unsafe extern "C" fn(user_data: *mut c_void)>;

/// A canceled handler: called on a btb thread with the (borrowed) instance and a
/// `BTB_CANCELLATION_*` reason, as soon as the instance is canceled.
pub type btb_canceled_fn =
    Option<unsafe extern "C" fn(instance: *mut btb_instance, reason: u32, user_data: *mut c_void)>;

pub(crate) struct InstanceData {
    pub(crate) instance: Instance,
    details: Option<CString>,
}

pub(crate) type InstanceRef = Arc<InstanceData>;
pub(crate) type DeferralRef = Arc<Deferral>;
handle_type!(btb_instance, "instance", 11, Instance, InstanceRef);
handle_type!(btb_deferral, "deferral", 12, Deferral, DeferralRef);

/// A new (owned) handle for an instance.
pub(crate) fn new_instance(instance: Instance) -> *mut btb_instance {
    let details = instance
        .trigger_details()
        .map(|d| CString::new(d.to_string()).unwrap_or_default());
    handle::insert::<btb_instance>(Arc::new(InstanceData { instance, details }))
}

/// Calls `f` with a handle to `instance` that is freed when `f` returns.
pub(crate) fn with_borrowed(instance: &Instance, f: impl FnOnce(*mut btb_instance)) {
    let h = new_instance(instance.clone());
    f(h);
    let _ = handle::free(h);
}

/// A core handler that calls a C run function.
pub(crate) fn run_handler(
    f: unsafe extern "C" fn(*mut btb_instance, *mut c_void),
    user_data: &Arc<UserData>,
) -> Handler {
    let user_data = Arc::clone(user_data);
    Handler::Call(Arc::new(move |instance: &Instance| {
        // SAFETY: the C caller promised `f` accepts these arguments (documented).
        with_borrowed(instance, |h| unsafe { f(h, user_data.ptr()) });
    }))
}

fn act(instance: *mut btb_instance, f: impl FnOnce(&Instance) -> Result<(), Error>) -> btb_status {
    guard(|| f(&handle::get(instance as *const btb_instance, "instance")?.instance))
}

/// Writes a new owned handle to the same instance to `*out` (free with `btb_instance_free`), to keep
/// it beyond the callback that lent it. Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`.
/// Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_instance_clone(
    instance: *const btb_instance,
    out: *mut *mut btb_instance,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| read(instance, out, |i| Ok(new_instance(i.instance.clone()))))
}

/// Frees an owned instance handle (from `btb_instance_clone` or `btb_system_next_event`). NULL is a
/// no-op. Errors: `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_instance_free(instance: *mut btb_instance) -> btb_status {
    guard(|| handle::free(instance).map(drop))
}

/// Writes the instance id (new for every run) to `*out`. Errors: `BTB_ERROR_NULL_ARGUMENT`,
/// `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_instance_id(
    instance: *const btb_instance,
    out: *mut btb_uuid,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(instance, out, |i| {
            Ok(btb_uuid {
                bytes: *i.instance.instance_id().as_bytes(),
            })
        })
    })
}

/// Writes a new handle to the registration this is a run of to `*out` (free with
/// `btb_registration_free`). In an exec host it describes the task the broker started it for;
/// the calls on it that need the app's system (unregister, request, handlers, history) are
/// `BTB_ERROR_UNSUPPORTED` there. Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`.
/// Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_instance_task(
    instance: *const btb_instance,
    out: *mut *mut btb_registration,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(instance, out, |i| {
            Ok(new_registration(i.instance.task().clone()))
        })
    })
}

/// Writes the trigger details to `*out`: the application trigger's arguments as a JSON object text,
/// or NULL for other triggers. Borrowed: valid while this instance handle lives.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_instance_trigger_details(
    instance: *const btb_instance,
    out: *mut *const c_char,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(instance, out, |i| {
            Ok(i.details.as_ref().map_or(std::ptr::null(), |d| d.as_ptr()))
        })
    })
}

/// Writes the current progress to `*out`. Errors: `BTB_ERROR_NULL_ARGUMENT`,
/// `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_instance_progress(
    instance: *const btb_instance,
    out: *mut u32,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| read(instance, out, |i| Ok(i.instance.progress())))
}

/// Sets the progress; each change reaches the registration's progress handlers (on a btb thread).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_instance_set_progress(
    instance: *mut btb_instance,
    progress: u32,
) -> btb_status {
    act(instance, |i| {
        i.set_progress(progress);
        Ok(())
    })
}

/// Writes the suspended count to `*out` (btb never suspends a task: always 0).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_instance_suspended_count(
    instance: *const btb_instance,
    out: *mut u32,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| read(instance, out, |_| Ok(0)))
}

/// Writes whether the instance has been canceled to `*out`. Errors: `BTB_ERROR_NULL_ARGUMENT`,
/// `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_instance_canceled(
    instance: *const btb_instance,
    out: *mut bool,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(instance, out, |i| {
            Ok(i.instance.cancellation_reason().is_some())
        })
    })
}

/// Writes the `BTB_CANCELLATION_*` reason to `*out`. Errors: `BTB_ERROR_NULL_ARGUMENT`,
/// `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_NOT_FOUND` (not canceled). Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_instance_cancellation_reason(
    instance: *const btb_instance,
    out: *mut u32,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(instance, out, |i| {
            i.instance
                .cancellation_reason()
                .map(|r| r as u32)
                .ok_or_else(|| {
                    Error::new(ErrorKind::NotFound, "the instance has not been canceled")
                })
        })
    })
}

/// Writes whether the broker holds a sleep inhibitor for this run (`is_network_requested`) to
/// `*out`. Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_instance_is_network_granted(
    instance: *const btb_instance,
    out: *mut bool,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| read(instance, out, |i| Ok(i.instance.is_network_granted())))
}

/// Marks the run as failed with `message` (copied): its outcome is `BTB_TASK_OUTCOME_FAILED` once
/// it ends. The last report wins. Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`,
/// `BTB_ERROR_INVALID_UTF8`. Thread-safe.
///
/// # Safety
///
/// `message` is NULL or a NUL-terminated string, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_instance_report_failure(
    instance: *mut btb_instance,
    message: *const c_char,
) -> btb_status {
    act(instance, |i| {
        // SAFETY: the C contract: `message` is NULL or a NUL-terminated string valid during the
        // call.
        let message = unsafe { c_str(message) };
        i.report_failure(arg(message, "message")?);
        Ok(())
    })
}

/// Writes which attempt this run is to `*out` (1, then 2, 3… for retries; SPEC §12; WorkManager's
/// `getRunAttemptCount() + 1`; `BTB_ATTEMPT` in an exec host). Errors: `BTB_ERROR_NULL_ARGUMENT`,
/// `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_instance_attempt(
    instance: *const btb_instance,
    out: *mut u32,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| read(instance, out, |i| Ok(i.instance.attempt())))
}

/// Asks for another attempt when this run ends (SPEC §12; WorkManager's `Result.retry()`): its
/// record says `BTB_TASK_OUTCOME_RETRY`, and the next attempt runs `after_ms` after it ends (0: the
/// delay of the task's retry policy, or of the default policy, exponential from 30 s, when it has
/// none), then waits for its conditions. `message` (copied; may be NULL) is kept with the run. The
/// run still ends as it would (return, complete its deferrals); the last request wins, and once
/// `max_attempts` is reached the run is recorded as failed instead. In an exec host it is sent to
/// the broker (as exiting with status 75 does). Errors: `BTB_ERROR_NULL_ARGUMENT` (instance),
/// `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_ARGUMENT` (negative `after_ms`),
/// `BTB_ERROR_INVALID_UTF8`, `BTB_ERROR_UNSUPPORTED` (a host whose broker speaks protocol version
/// 1). Thread-safe.
///
/// # Safety
///
/// `message` is NULL or a NUL-terminated string, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_instance_request_retry(
    instance: *mut btb_instance,
    after_ms: i64,
    message: *const c_char,
) -> btb_status {
    act(instance, |i| {
        // SAFETY: the C contract: `message` is NULL or a NUL-terminated string valid during the
        // call.
        let message = unsafe { c_str(message) };
        let message = opt_arg(message, "message")?.map(str::to_owned);
        let after = match after_ms {
            0 => None,
            ms => Some(std::time::Duration::from_millis(
                u64::try_from(ms).map_err(|_| {
                    Error::invalid(format!("after_ms is {ms}; it must not be negative"))
                })?,
            )),
        };
        i.request_retry(after, message)
    })
}

/// Sets what the run hands back (SPEC §12; WorkManager's `Result.success(outputData)`): `json`, the
/// text of a JSON object of at most 64 KiB (copied), kept with the run's record
/// (`btb_run.output`) and given to completed handlers (`btb_completion.output`). The last one set
/// wins. In an exec host it is sent to the broker. Errors: `BTB_ERROR_NULL_ARGUMENT`,
/// `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_UTF8`, `BTB_ERROR_INVALID_ARGUMENT` (not JSON,
/// not an object, more than 64 KiB; the output is unchanged), `BTB_ERROR_UNSUPPORTED` (a host whose
/// broker speaks protocol version 1). Thread-safe.
///
/// # Safety
///
/// `json` is NULL or a NUL-terminated string, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_instance_set_output(
    instance: *mut btb_instance,
    json: *const c_char,
) -> btb_status {
    act(instance, |i| {
        // SAFETY: the C contract: `json` is NULL or a NUL-terminated string valid during the call.
        let json = unsafe { c_str(json) };
        let json = arg(json, "json")?;
        let value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| Error::invalid(format!("the output is not valid JSON: {e}")))?;
        i.set_output(&value)
    })
}

/// For instances taken from the pull queue (`btb_system_next_event`): tells btb the run is over on
/// the host's side (as a run function returning). The instance completes once its deferrals do.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_STATE` (already
/// finished; or a host process's instance, whose run ends when the process exits). Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_instance_finish_run(instance: *mut btb_instance) -> btb_status {
    act(instance, Instance::finish_run)
}

/// Adds a canceled handler (called on a btb thread at once if the instance is already canceled);
/// writes a token for `btb_instance_remove_canceled` to `*out_token` (may be NULL).
/// `free_user_data` (may be NULL) is called once btb is done with `user_data` (see `btb_free_fn`).
/// Errors: `BTB_ERROR_NULL_ARGUMENT` (instance or handler), `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out_token` is NULL or points to writable storage for one result, valid for the duration of the
/// call. `handler` and `free_user_data` must be safe to call with `user_data` from btb's threads,
/// as documented above.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_instance_add_canceled(
    instance: *mut btb_instance,
    handler: btb_canceled_fn,
    user_data: *mut c_void,
    free_user_data: btb_free_fn,
    out_token: *mut u64,
) -> btb_status {
    // SAFETY: the C contract: `out_token` is NULL or writable storage for the result.
    let out_token = unsafe { Out::from_raw(out_token) };
    guard(|| {
        let i = handle::get(instance as *const btb_instance, "instance")?;
        let f = handler.ok_or_else(|| Error::new(ErrorKind::NullArgument, "handler is NULL"))?;
        let user_data = UserData::new(user_data, free_user_data);
        let token = i
            .instance
            .add_canceled(Arc::new(move |inst: &Instance, reason| {
                // SAFETY: the C caller promised `f` accepts these arguments.
                with_borrowed(inst, |h| unsafe { f(h, reason as u32, user_data.ptr()) });
            }));
        if let Some(out_token) = out_token {
            out_token.write(token);
        }
        Ok(())
    })
}

/// Removes a canceled handler. Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`,
/// `BTB_ERROR_NOT_FOUND` (unknown token). Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_instance_remove_canceled(
    instance: *mut btb_instance,
    token: u64,
) -> btb_status {
    act(instance, |i| {
        if i.remove_canceled(token) {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::NotFound,
                format!("no canceled handler with token {token}"),
            ))
        }
    })
}

/// Takes a deferral: the instance completes only when every deferral is completed (and the run
/// function has returned). Deferrals do not extend time limits. On success `*out` is a new deferral
/// (free with `btb_deferral_free` after completing it).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_STATE` (the instance
/// already completed). Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_instance_get_deferral(
    instance: *mut btb_instance,
    out: *mut *mut btb_deferral,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(instance, out, |i| {
            let deferral = i.instance.get_deferral()?;
            Ok(handle::insert::<btb_deferral>(Arc::new(deferral)))
        })
    })
}

/// Completes a deferral (from any thread). Errors: `BTB_ERROR_NULL_ARGUMENT`,
/// `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_STATE` (already completed). Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_deferral_complete(deferral: *mut btb_deferral) -> btb_status {
    guard(|| handle::get(deferral as *const btb_deferral, "deferral")?.complete())
}

/// Frees a deferral handle (without completing it). NULL is a no-op.
/// Errors: `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_deferral_free(deferral: *mut btb_deferral) -> btb_status {
    guard(|| handle::free(deferral).map(drop))
}

/// In a process started by a broker for an `exec` entry point (SPEC §5): connects to the
/// instance it runs through the inherited socket (`BTB_HOST_FD`) and writes a new instance handle
/// to `*out` (free with `btb_instance_free`). The `btb_instance_*` functions work on it as on an
/// in-process run: progress, failure, deferrals, canceled handlers (called on a btb thread of this
/// process when the broker cancels the run), `btb_instance_wait_canceled`; the run ends when the
/// process exits, with its exit status (0 = succeeded unless a failure was reported).
/// `btb_instance_task` describes its task (calls on that registration that need the app's system
/// are `BTB_ERROR_UNSUPPORTED`); `btb_instance_finish_run` is `BTB_ERROR_STATE` on it.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_STATE` (not started by a broker: `BTB_HOST_FD`
/// unset; connected already; the broker refused, e.g. another protocol version),
/// `BTB_ERROR_INVALID_ARGUMENT` (a `BTB_*` variable is malformed), `BTB_ERROR_INTERNAL` (the socket
/// failed). Call once per process, from any thread.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_host_connect(out: *mut *mut btb_instance) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        let out = out.ok_or_else(|| Error::new(ErrorKind::NullArgument, "out is NULL"))?;
        let instance = btb_core::host::connect()?;
        out.write(new_instance(instance));
        Ok(())
    })
}

/// Waits until the instance is canceled or `timeout_ms` passes, and writes whether it was to
/// `*out_canceled` (the reason: `btb_instance_cancellation_reason`). For a host process's main
/// loop; in-process run functions can wait the same way. Errors: `BTB_ERROR_NULL_ARGUMENT`,
/// `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out_canceled` is NULL or points to writable storage for one result, valid for the duration of
/// the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_instance_wait_canceled(
    instance: *const btb_instance,
    timeout_ms: u32,
    out_canceled: *mut bool,
) -> btb_status {
    // SAFETY: the C contract: `out_canceled` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out_canceled) };
    guard(|| {
        read(instance, out, |i| {
            let timeout = std::time::Duration::from_millis(u64::from(timeout_ms));
            Ok(i.instance.wait_canceled(timeout).is_some())
        })
    })
}
