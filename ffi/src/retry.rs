//! `btb_retry_policy`: when and how often a run is tried again (SPEC §12; WorkManager's backoff
//! criteria, beyond Windows). A small mutable value: made with `btb_retry_policy_new`, adjusted with
//! setters, copied into a builder by `btb_set_retry_policy`. Values a setter can check on its own
//! (an unknown backoff, a negative delay, a jitter outside 0–1) are refused there; the bounds of
//! SPEC §12 (delays 10 s – 5 h, the max delay not below the initial one) are checked by
//! `btb_register`, in the order of the registration checks.

use std::sync::{Arc, Mutex, MutexGuard};

use btb_core::{BackoffPolicy, Error, RetryPolicy};

use crate::error::{btb_status, guard};
use crate::handle::{self, Out, handle_type, read, required};

/// A retry policy (WorkManager's backoff criteria): backoff, initial and max delay, max attempts,
/// whether failures are retried, jitter. Thread-safe (calls on one policy are serialised). Free with
/// `btb_retry_policy_free`; a builder keeps its own copy.
pub struct btb_retry_policy {
    _private: [u8; 0],
}

pub(crate) type RetryPolicyRef = Arc<Mutex<RetryPolicy>>;
handle_type!(btb_retry_policy, "policy", 14, RetryPolicy, RetryPolicyRef);

pub(crate) fn lock(p: &RetryPolicyRef) -> MutexGuard<'_, RetryPolicy> {
    p.lock().unwrap_or_else(|p| p.into_inner())
}

/// Makes a policy handle holding a copy of `policy` (also used by the builder and registration
/// getters).
pub(crate) fn new_retry_policy(policy: RetryPolicy) -> *mut btb_retry_policy {
    handle::insert::<btb_retry_policy>(Arc::new(Mutex::new(policy)))
}

fn delay(value: i64, what: &str) -> Result<u64, Error> {
    u64::try_from(value)
        .map_err(|_| Error::invalid(format!("retry policy: {what} {value} ms is negative")))
}

fn edit(
    policy: *mut btb_retry_policy,
    f: impl FnOnce(&mut RetryPolicy) -> Result<(), Error>,
) -> btb_status {
    guard(|| {
        let p = handle::get(policy as *const btb_retry_policy, "policy")?;
        f(&mut lock(&p))
    })
}

/// Creates a retry policy (WorkManager's `setBackoffCriteria`): `backoff` is a `BTB_BACKOFF_*`
/// value; the delay after attempt n is `initial_delay_ms·2^(n−1)` (exponential) or
/// `initial_delay_ms·n` (linear), capped at `max_delay_ms`. No limit on attempts, failures not
/// retried, no jitter until set. The defaults of SPEC §12 are `BTB_BACKOFF_EXPONENTIAL`, 30000,
/// 18000000. The delays' bounds (10 s – 5 h; the max not below the initial delay) are checked by
/// `btb_register`.
///
/// On success `*out` is a new policy the caller frees with `btb_retry_policy_free`.
/// Errors: `BTB_ERROR_NULL_ARGUMENT` (`out`), `BTB_ERROR_INVALID_ARGUMENT` (an unknown backoff, a
/// negative delay). Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_retry_policy_new(
    backoff: u32,
    initial_delay_ms: i64,
    max_delay_ms: i64,
    out: *mut *mut btb_retry_policy,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        let out = required(out, "out")?;
        let policy = RetryPolicy {
            backoff: BackoffPolicy::from_u32(backoff)?,
            initial_delay_ms: delay(initial_delay_ms, "initial delay")?,
            max_delay_ms: delay(max_delay_ms, "max delay")?,
            ..RetryPolicy::default()
        };
        out.write(new_retry_policy(policy));
        Ok(())
    })
}

/// Frees a retry policy. NULL is a no-op. Errors: `BTB_ERROR_INVALID_HANDLE` (freed, foreign,
/// another type, double free). Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_retry_policy_free(policy: *mut btb_retry_policy) -> btb_status {
    guard(|| handle::free(policy).map(drop))
}

/// Sets the most attempts in all, the first included (0: no limit, the default). Once the last one
/// asks for a retry or fails, it is recorded `BTB_TASK_OUTCOME_FAILED` ("gave up after N
/// attempts: …"). Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_retry_policy_set_max_attempts(
    policy: *mut btb_retry_policy,
    max_attempts: u32,
) -> btb_status {
    edit(policy, |p| {
        p.max_attempts = (max_attempts != 0).then_some(max_attempts);
        Ok(())
    })
}

/// Sets whether a failed run (`BTB_TASK_OUTCOME_FAILED`) is retried too, not only one that asks or
/// is cut off (default false; systemd's `Restart=on-failure`). Errors: `BTB_ERROR_NULL_ARGUMENT`,
/// `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_retry_policy_set_retry_on_failure(
    policy: *mut btb_retry_policy,
    retry_on_failure: bool,
) -> btb_status {
    edit(policy, |p| {
        p.retry_on_failure = retry_on_failure;
        Ok(())
    })
}

/// Sets the jitter: each delay moves at random, uniformly, by up to `fraction` of itself either way
/// (0–1, kept to thousandths; default 0). Errors: `BTB_ERROR_NULL_ARGUMENT`,
/// `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_ARGUMENT` (outside 0–1, or NaN; the policy is
/// unchanged). Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_retry_policy_set_jitter(
    policy: *mut btb_retry_policy,
    fraction: f64,
) -> btb_status {
    edit(policy, |p| {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(Error::invalid(format!(
                "retry policy: jitter {fraction} is outside 0–1 (a fraction of the delay)"
            )));
        }
        p.jitter_permille = (fraction * 1000.0).round() as u32;
        Ok(())
    })
}

/// Writes the backoff (`BTB_BACKOFF_*`) to `*out`. Errors: `BTB_ERROR_NULL_ARGUMENT`,
/// `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_retry_policy_backoff(
    policy: *const btb_retry_policy,
    out: *mut u32,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| read(policy, out, |p| Ok(lock(p).backoff as u32)))
}

/// Writes the initial delay (ms) to `*out`. Errors: `BTB_ERROR_NULL_ARGUMENT`,
/// `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_retry_policy_initial_delay_ms(
    policy: *const btb_retry_policy,
    out: *mut i64,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(policy, out, |p| {
            Ok(i64::try_from(lock(p).initial_delay_ms).unwrap_or(i64::MAX))
        })
    })
}

/// Writes the max delay (ms) to `*out`. Errors: `BTB_ERROR_NULL_ARGUMENT`,
/// `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_retry_policy_max_delay_ms(
    policy: *const btb_retry_policy,
    out: *mut i64,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(policy, out, |p| {
            Ok(i64::try_from(lock(p).max_delay_ms).unwrap_or(i64::MAX))
        })
    })
}

/// Writes the most attempts (0: no limit) to `*out`. Errors: `BTB_ERROR_NULL_ARGUMENT`,
/// `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_retry_policy_max_attempts(
    policy: *const btb_retry_policy,
    out: *mut u32,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| read(policy, out, |p| Ok(lock(p).max_attempts.unwrap_or(0))))
}

/// Writes whether failed runs are retried to `*out`. Errors: `BTB_ERROR_NULL_ARGUMENT`,
/// `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_retry_policy_retry_on_failure(
    policy: *const btb_retry_policy,
    out: *mut bool,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| read(policy, out, |p| Ok(lock(p).retry_on_failure)))
}

/// Writes the jitter (a fraction, 0–1) to `*out`. Errors: `BTB_ERROR_NULL_ARGUMENT`,
/// `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_retry_policy_jitter(
    policy: *const btb_retry_policy,
    out: *mut f64,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(policy, out, |p| {
            Ok(f64::from(lock(p).jitter_permille) / 1000.0)
        })
    })
}
