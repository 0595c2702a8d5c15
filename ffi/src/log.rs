//! The log hook: btb's `log` records (target `btb`) forwarded to a C callback.
//!
//! `log::set_logger` works once per process, so one static forwarding logger is installed at the
//! first `btb_set_log_callback`; the callback it forwards to is swapped under a `RwLock`. A record
//! clones the current callback (an `Arc`) and drops the lock before calling it, so a replaced
//! callback's `user_data` is freed once the last call in flight returns, and no lock of this
//! module is held during a call (the core's own locks may be: it logs under them).

use std::ffi::{CString, c_char, c_void};
use std::sync::{Arc, Mutex, RwLock};

use btb_core::{Error, Result};

use crate::btb_status;
use crate::handle::UserData;
use crate::instance::btb_free_fn;

/// A log callback: `level` is a `BTB_LOG_*` value, `target` the record's target (`"btb"` for btb's
/// own lines), `message` the line; both strings are NUL-terminated UTF-8 borrowed for the call (a
/// message with an interior NUL is cut there). Called on any thread — the caller's or a btb thread,
/// possibly several at once — and possibly while btb holds its own locks (records are emitted from
/// deep inside btb): it must return soon and must not call btb functions (that may deadlock or
/// recurse). Hand the line to your own logging, or queue it.
pub type btb_log_fn = Option<
    unsafe extern "C" fn(
        level: u32,
        target: *const c_char,
        message: *const c_char,
        user_data: *mut c_void,
    ),
>;

struct Sink {
    f: unsafe extern "C" fn(u32, *const c_char, *const c_char, *mut c_void),
    level: log::LevelFilter,
    user_data: Arc<UserData>,
}

/// The callback records go to; `None` when removed.
static SINK: RwLock<Option<Arc<Sink>>> = RwLock::new(None);

/// Whether the forwarding logger is this process's logger: `None` until the first call tries.
static INSTALLED: Mutex<Option<bool>> = Mutex::new(None);

struct Forward;

static FORWARD: Forward = Forward;

fn current() -> Option<Arc<Sink>> {
    SINK.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// `text` up to its first NUL, as a C string.
fn c_text(text: &str) -> CString {
    let cut = text.split('\0').next().unwrap_or_default();
    CString::new(cut).unwrap_or_default()
}

impl log::Log for Forward {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        current().is_some_and(|s| metadata.level() <= s.level)
    }

    fn log(&self, record: &log::Record) {
        let Some(sink) = current() else { return };
        if record.level() > sink.level {
            return;
        }
        let target = c_text(record.target());
        let message = c_text(&record.args().to_string());
        // SAFETY: the C caller gave `f` for exactly this call shape (`btb_log_fn`); the strings
        // live until it returns; `user_data` is passed back as given.
        unsafe {
            (sink.f)(
                record.level() as u32,
                target.as_ptr(),
                message.as_ptr(),
                sink.user_data.ptr(),
            )
        };
    }

    fn flush(&self) {}
}

fn set(f: btb_log_fn, level: u32, user_data: Arc<UserData>) -> Result<()> {
    let filter = match level {
        1 => log::LevelFilter::Error,
        2 => log::LevelFilter::Warn,
        3 => log::LevelFilter::Info,
        4 => log::LevelFilter::Debug,
        5 => log::LevelFilter::Trace,
        _ if f.is_none() => log::LevelFilter::Off,
        _ => {
            return Err(Error::invalid(format!(
                "log level {level} is not a BTB_LOG_* value (1..5)"
            )));
        }
    };
    let mut installed = INSTALLED.lock().unwrap_or_else(|p| p.into_inner());
    let ours = *installed.get_or_insert_with(|| log::set_logger(&FORWARD).is_ok());
    if !ours {
        return Err(Error::state(
            "another logger is installed in this process (the `log` crate allows one): \
             btb logs through it, not to a C callback",
        ));
    }
    let sink = f.map(|f| {
        Arc::new(Sink {
            f,
            level: filter,
            user_data,
        })
    });
    let filter = sink.as_ref().map_or(log::LevelFilter::Off, |s| s.level);
    let old = std::mem::replace(&mut *SINK.write().unwrap_or_else(|p| p.into_inner()), sink);
    log::set_max_level(filter);
    drop(installed);
    // The old callback's user data is freed here, or when its last call in flight returns.
    drop(old);
    Ok(())
}

/// Sends btb's log lines at `level` (a `BTB_LOG_*` value) or more severe to `callback`, with `user_data`.
///
/// Replaces the callback set before, whose `free_user_data` is called for its `user_data` once no
/// call of it is in flight (see `btb_free_fn`); `callback = NULL` removes the callback (`level` is then
/// ignored, and `user_data` is freed at once if `free_user_data` is given). The callback may be
/// called on any thread, during any btb call or from btb's own threads, possibly with btb locks
/// held: it must not call btb functions (see `btb_log_fn`). Process-wide, thread-safe.
///
/// Errors: `BTB_ERROR_INVALID_ARGUMENT` for a level not in 1..5; `BTB_ERROR_STATE` when btb's copy of
/// the `log` crate already has another logger — only possible when btb is linked into a Rust
/// program as a crate that installed one (as the Python binding installs pyo3-log; libbtb.so has
/// its own copy, so a C program, or a C library beside that binding, never sees this). On an error
/// nothing changes and the caller keeps `user_data`.
///
/// # Safety
///
/// `callback` and `free_user_data` must be safe to call with `user_data` from any thread, as
/// documented above.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_set_log_callback(
    callback: btb_log_fn,
    level: u32,
    user_data: *mut c_void,
    free_user_data: btb_free_fn,
) -> btb_status {
    crate::error::guard(|| {
        let user_data = UserData::new(user_data, free_user_data);
        let result = set(callback, level, Arc::clone(&user_data));
        user_data.kept_on_error(result)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_message_with_an_interior_nul_is_cut_there() {
        assert_eq!(super::c_text("before\0after").as_bytes(), b"before");
        assert_eq!(super::c_text("whole").as_bytes(), b"whole");
        assert_eq!(super::c_text("").as_bytes(), b"");
    }
}
