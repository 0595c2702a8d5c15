//! Status codes, the thread-local last-error message, and the panic boundary.

use std::cell::RefCell;
use std::ffi::{CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

use btb_core::{Error, ErrorKind};

/// The result of every fallible btb call. `BTB_OK` is 0; numbers are never reused.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum btb_status {
    /// Success.
    BTB_OK = 0,
    /// A required pointer argument was NULL.
    BTB_ERROR_NULL_ARGUMENT = 1,
    /// A handle was freed, foreign, or of another type.
    BTB_ERROR_INVALID_HANDLE = 2,
    /// A value is out of range or malformed (the message names it).
    BTB_ERROR_INVALID_ARGUMENT = 3,
    /// A string was not valid UTF-8.
    BTB_ERROR_INVALID_UTF8 = 4,
    /// The builder has no trigger.
    BTB_ERROR_NO_TRIGGER = 5,
    /// No entry point, and neither the task group nor the system has an activation handler.
    BTB_ERROR_NO_ENTRY_POINT = 6,
    /// The entry point, or the trigger's task type for it, is not declared in the manifest.
    BTB_ERROR_NOT_DECLARED = 7,
    /// Contradictory conditions, or a name taken under the FAIL name policy.
    BTB_ERROR_CONFLICT = 8,
    /// The store cannot be opened, read or written (the message names the path).
    BTB_ERROR_STORE = 9,
    /// No such registration, group or object.
    BTB_ERROR_NOT_FOUND = 10,
    /// Not valid now: closed system, use after fork(), completed deferral.
    BTB_ERROR_STATE = 11,
    /// Not supported on this platform or in this build.
    BTB_ERROR_UNSUPPORTED = 12,
    /// Refused by policy.
    BTB_ERROR_POLICY = 13,
    /// An internal error (a caught panic); please report it.
    BTB_ERROR_INTERNAL = 14,
}

/// The one error→status table: an exhaustive match, so a new core kind fails to compile here.
pub(crate) fn status_of(kind: ErrorKind) -> btb_status {
    use btb_status::*;
    match kind {
        ErrorKind::NullArgument => BTB_ERROR_NULL_ARGUMENT,
        ErrorKind::InvalidHandle => BTB_ERROR_INVALID_HANDLE,
        ErrorKind::InvalidArgument => BTB_ERROR_INVALID_ARGUMENT,
        ErrorKind::InvalidUtf8 => BTB_ERROR_INVALID_UTF8,
        ErrorKind::NoTrigger => BTB_ERROR_NO_TRIGGER,
        ErrorKind::NoEntryPoint => BTB_ERROR_NO_ENTRY_POINT,
        ErrorKind::NotDeclared => BTB_ERROR_NOT_DECLARED,
        ErrorKind::Conflict => BTB_ERROR_CONFLICT,
        ErrorKind::Store => BTB_ERROR_STORE,
        ErrorKind::NotFound => BTB_ERROR_NOT_FOUND,
        ErrorKind::State => BTB_ERROR_STATE,
        ErrorKind::Unsupported => BTB_ERROR_UNSUPPORTED,
        ErrorKind::Policy => BTB_ERROR_POLICY,
        ErrorKind::Internal => BTB_ERROR_INTERNAL,
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    let c = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|slot| *slot.borrow_mut() = c);
}

/// Explains an answer that is not a failure status but is one for the caller (a request that no
/// registration holds answers `BTB_APPLICATION_TRIGGER_UNKNOWN_ERROR` with `BTB_OK`, as Windows'
/// `RequestAsync` answers `UnknownError`): `btb_last_error_message()` then says why.
pub(crate) fn explain(message: &str) {
    set_last_error(message);
}

/// Runs an entry point's body: catches panics, records the message of a failure, maps it to a status.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), Error>) -> btb_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => btb_status::BTB_OK,
        Ok(Err(e)) => {
            set_last_error(e.message());
            status_of(e.kind())
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!(
                "internal error (a panic inside btb, please report it): {what}"
            ));
            btb_status::BTB_ERROR_INTERNAL
        }
    }
}

/// Runs a body that cannot report a status (getters of static data); a panic yields `fallback`.
pub(crate) fn guard_value<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

/// The message of the calling thread's last failed btb call.
///
/// Never NULL: an empty string when this thread has had no failure. A request answered
/// `BTB_APPLICATION_TRIGGER_UNKNOWN_ERROR` (with `BTB_OK`) sets it too, saying why. The pointer
/// stays valid until this thread's next btb call that sets it. Thread-safe (per-thread storage).
#[unsafe(no_mangle)]
pub extern "C" fn btb_last_error_message() -> *const c_char {
    guard_value(c"".as_ptr(), || {
        LAST_ERROR.with(|slot| slot.borrow().as_ptr())
    })
}

/// The static name of a status, e.g. `"BTB_ERROR_NO_TRIGGER"`; `"BTB_UNKNOWN_STATUS"` for a number
/// that is not a status. Never NULL; the string is static. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_status_name(status: u32) -> *const c_char {
    guard_value(c"BTB_UNKNOWN_STATUS".as_ptr(), || {
        if status == 0 {
            return c"BTB_OK".as_ptr();
        }
        // Built once from the core's names, so no second table can drift from them.
        static NAMES: std::sync::OnceLock<Vec<CString>> = std::sync::OnceLock::new();
        let names = NAMES.get_or_init(|| {
            ErrorKind::ALL
                .iter()
                .map(|k| CString::new(format!("BTB_ERROR_{}", k.name())).expect("no NUL"))
                .collect()
        });
        match ErrorKind::ALL.iter().position(|k| k.code() == status) {
            Some(i) => names[i].as_ptr(),
            None => c"BTB_UNKNOWN_STATUS".as_ptr(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_core() {
        for kind in ErrorKind::ALL {
            let name = unsafe { std::ffi::CStr::from_ptr(btb_status_name(kind.code())) };
            assert_eq!(name.to_str().unwrap(), format!("{:?}", status_of(kind)));
            assert_eq!(status_of(kind) as u32, kind.code());
        }
    }

    #[test]
    fn panics_become_internal() {
        let status = guard(|| panic!("boom"));
        assert_eq!(status, btb_status::BTB_ERROR_INTERNAL);
        let msg = unsafe { std::ffi::CStr::from_ptr(btb_last_error_message()) };
        assert!(msg.to_str().unwrap().contains("boom"));
    }
}
