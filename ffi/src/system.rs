//! `btb_manifest`, `btb_system_options` and `btb_system`: opening, configuring and closing a system.

use std::ffi::{CStr, CString, c_char};

use crate::constants::btb_state;
use std::sync::{Arc, Mutex};

use std::ffi::c_void;
use std::time::Duration;

use btb_core::{
    Clock, Durability, Error, ErrorKind, Event, Handler, Manifest, ManualClock, PlatformOptions,
    StoreLocation, System, SystemConditionType, SystemOptions, SystemTriggerType, TaskDeclaration,
    TriggerKind,
};

use crate::handle::UserData;
use crate::instance::{btb_free_fn, btb_instance, btb_run_fn, new_instance, run_handler};
use crate::trigger::btb_trigger;

use crate::error::{btb_status, guard};
use crate::handle::{self, Out, handle_type, read, required};
use crate::registration::{
    btb_registration, btb_registration_list, btb_task_group, btb_task_group_list, new_group,
    new_registration,
};
use crate::strings::{arg, arg_array, c_str, c_string, opt_arg};

/// An app manifest: app id, version and declared entry points. Thread-safe. Free with
/// `btb_manifest_free`.
pub struct btb_manifest {
    _private: [u8; 0],
}

/// Options for `btb_system_open`. Thread-safe. Free with `btb_system_options_free`.
pub struct btb_system_options {
    _private: [u8; 0],
}

/// One broker: app identity and manifest, store, clock and policy. Thread-safe. Close (and free)
/// with `btb_system_close`. Registrations obtained from it stay valid handles after it closes, but
/// calls that need the system then fail with `BTB_ERROR_STATE`.
pub struct btb_system {
    _private: [u8; 0],
}

/// A manifest and the C copy of its app id that `btb_manifest_app_id` lends out (the app id never
/// changes after creation).
pub(crate) struct ManifestData {
    manifest: Mutex<Manifest>,
    app_id: CString,
}

impl ManifestData {
    fn lock(&self) -> std::sync::MutexGuard<'_, Manifest> {
        self.manifest.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) type ManifestRef = Arc<ManifestData>;
pub(crate) type OptionsRef = Arc<Mutex<SystemOptions>>;

pub(crate) struct SystemData {
    pub(crate) system: System,
    app_id: CString,
    store_path: CString,
}
pub(crate) type SystemRef = Arc<SystemData>;

handle_type!(btb_manifest, "manifest", 5, Manifest, ManifestRef);
handle_type!(btb_system_options, "options", 4, Options, OptionsRef);
handle_type!(btb_system, "system", 6, System, SystemRef);

fn new_manifest(
    out: Option<Out<'_, *mut btb_manifest>>,
    make: impl FnOnce() -> Result<Manifest, Error>,
) -> Result<(), Error> {
    let out = required(out, "out")?;
    let manifest = make()?;
    out.write(handle::insert::<btb_manifest>(Arc::new(ManifestData {
        app_id: c_string(manifest.app_id()),
        manifest: Mutex::new(manifest),
    })));
    Ok(())
}

/// Creates an empty manifest declared in code. `app_id` is reverse-DNS (it names the store and the
/// control socket); `version` may be NULL or empty (= "0"). Both are copied.
/// On success `*out` is a new manifest (free with `btb_manifest_free`).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_UTF8`, `BTB_ERROR_INVALID_ARGUMENT`
/// (app id not reverse-DNS). Thread-safe.
///
/// # Safety
///
/// `app_id` is NULL or a NUL-terminated string; `version` is NULL or a NUL-terminated string; `out`
/// is NULL or points to writable storage for one result, each valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_manifest_new(
    app_id: *const c_char,
    version: *const c_char,
    out: *mut *mut btb_manifest,
) -> btb_status {
    // SAFETY: the C contract: `app_id` and `version` are NULL or NUL-terminated strings valid
    // during the call; `out` is NULL or writable storage for the result.
    let (app_id, version, out) = unsafe { (c_str(app_id), c_str(version), Out::from_raw(out)) };
    guard(|| {
        new_manifest(out, || {
            Manifest::new(
                arg(app_id, "app_id")?,
                opt_arg(version, "version")?.unwrap_or(""),
            )
        })
    })
}

/// Loads a TOML manifest file. On success `*out` is a new manifest (free with `btb_manifest_free`).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_UTF8`, `BTB_ERROR_INVALID_ARGUMENT` (cannot
/// read, bad TOML, unknown key or task type — the message names the line). Thread-safe.
///
/// # Safety
///
/// `path` is NULL or a NUL-terminated string; `out` is NULL or points to writable storage for one
/// result, each valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_manifest_load(
    path: *const c_char,
    out: *mut *mut btb_manifest,
) -> btb_status {
    // SAFETY: the C contract: `path` is NULL or a NUL-terminated string valid during the call;
    // `out` is NULL or writable storage for the result.
    let (path, out) = unsafe { (c_str(path), Out::from_raw(out)) };
    guard(|| new_manifest(out, || Manifest::load(arg(path, "path")?)))
}

/// Parses a TOML manifest from text. Same contract as `btb_manifest_load`.
///
/// # Safety
///
/// `toml` is NULL or a NUL-terminated string; `out` is NULL or points to writable storage for one
/// result, each valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_manifest_from_toml(
    toml: *const c_char,
    out: *mut *mut btb_manifest,
) -> btb_status {
    // SAFETY: the C contract: `toml` is NULL or a NUL-terminated string valid during the call;
    // `out` is NULL or writable storage for the result.
    let (toml, out) = unsafe { (c_str(toml), Out::from_raw(out)) };
    guard(|| new_manifest(out, || Manifest::from_toml(arg(toml, "toml")?)))
}

/// Declares an entry point with `n_types` task types as a manifest spells them (`"timer"`,
/// `"systemEvent"`, `"general"`, …) and, optionally, an out-of-process host command (`exec`,
/// `n_exec` strings, `exec[0]` an absolute path; NULL/0 for none). Everything is copied.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_UTF8`,
/// `BTB_ERROR_INVALID_ARGUMENT` (unknown type, entry point declared twice, relative exec path).
/// Thread-safe.
///
/// # Safety
///
/// `entry_point` is NULL or a NUL-terminated string; `types` is NULL or points to `n_types`
/// readable pointers, each NULL or a NUL-terminated string; `exec` is NULL or points to `n_exec`
/// readable pointers, each NULL or a NUL-terminated string, each valid for the duration of the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_manifest_declare(
    manifest: *mut btb_manifest,
    entry_point: *const c_char,
    types: *const *const c_char,
    n_types: usize,
    exec: *const *const c_char,
    n_exec: usize,
) -> btb_status {
    // SAFETY: the C contract: `entry_point` is NULL or a NUL-terminated string valid during the
    // call.
    let entry_point = unsafe { c_str(entry_point) };
    guard(|| {
        let m = handle::get(manifest as *const btb_manifest, "manifest")?;
        let entry_point = arg(entry_point, "entry_point")?;
        // SAFETY: the C contract: `types` is NULL or `n_types` strings valid during the call.
        let types = unsafe { arg_array(types, n_types, "types") }?;
        let mut decl = TaskDeclaration::new(entry_point, &types)?;
        if n_exec > 0 {
            // SAFETY: the C contract: `exec` is NULL or `n_exec` strings valid during the call.
            decl = decl.with_exec(unsafe { arg_array(exec, n_exec, "exec") }?)?;
        }
        m.lock().declare(decl)
    })
}

/// Writes the manifest's app id to `*out` (borrowed: valid while the manifest handle lives).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_manifest_app_id(
    manifest: *const btb_manifest,
    out: *mut *const c_char,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| read(manifest, out, |m| Ok(m.app_id.as_ptr())))
}

/// Frees a manifest. NULL is a no-op. Errors: `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_manifest_free(manifest: *mut btb_manifest) -> btb_status {
    guard(|| handle::free(manifest).map(drop))
}

/// Creates system options with the defaults: no manifest (one must be set), the per-app store under
/// `$XDG_STATE_HOME/btb/<app_id>/`, the real clock, the real platform sources, and the Windows
/// policy (15-minute minimum freshness, 15-minute timer window, 5 s grace, 25 s / 10 min limits,
/// `max_concurrent` = 0, one per CPU, `synchronous=FULL`). On success `*out` is new options (free with
/// `btb_system_options_free`). Errors: `BTB_ERROR_NULL_ARGUMENT`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_system_options_new(out: *mut *mut btb_system_options) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        let out = required(out, "out")?;
        out.write(handle::insert::<btb_system_options>(Arc::new(Mutex::new(
            SystemOptions::default(),
        ))));
        Ok(())
    })
}

/// Frees options. NULL is a no-op. Errors: `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_system_options_free(options: *mut btb_system_options) -> btb_status {
    guard(|| handle::free(options).map(drop))
}

fn edit(
    options: *mut btb_system_options,
    f: impl FnOnce(&mut SystemOptions) -> Result<(), Error>,
) -> btb_status {
    guard(|| {
        let o = handle::get(options as *const btb_system_options, "options")?;
        f(&mut o.lock().unwrap_or_else(|p| p.into_inner()))
    })
}

/// Sets the manifest (copied; the caller still frees `manifest`).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_system_options_set_manifest(
    options: *mut btb_system_options,
    manifest: *const btb_manifest,
) -> btb_status {
    edit(options, |o| {
        let m = handle::get(manifest, "manifest")?;
        o.manifest = Some(m.lock().clone());
        Ok(())
    })
}

/// Sets the store: a file path (created 0600 in a 0700 directory if missing) or `":memory:"`;
/// NULL restores the per-app default. Copied.
/// Errors: `BTB_ERROR_NULL_ARGUMENT` (options), `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_UTF8`.
/// Thread-safe.
///
/// # Safety
///
/// `store` is NULL or a NUL-terminated string, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_system_options_set_store(
    options: *mut btb_system_options,
    store: *const c_char,
) -> btb_status {
    edit(options, |o| {
        // SAFETY: the C contract: `store` is NULL or a NUL-terminated string valid during the call.
        let store = unsafe { c_str(store) };
        o.store = opt_arg(store, "store")?.map_or(StoreLocation::Default, StoreLocation::parse);
        Ok(())
    })
}

/// Uses a manual clock standing at `start_unix_ms` (milliseconds since the Unix epoch, UTC) instead
/// of the real clock: time then moves only by `btb_system_advance_clock`.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_ARGUMENT`
/// (`start_unix_ms` outside years 1–9999 UTC). Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_system_options_set_manual_clock(
    options: *mut btb_system_options,
    start_unix_ms: i64,
) -> btb_status {
    edit(options, |o| {
        o.clock = Clock::Manual(ManualClock::new(start_unix_ms)?);
        Ok(())
    })
}

/// Uses the simulated state source (states and events set by the app) instead of the platform's.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_system_options_set_simulated(
    options: *mut btb_system_options,
    simulated: bool,
) -> btb_status {
    edit(options, |o| {
        o.simulated = simulated;
        Ok(())
    })
}

/// Where the platform source reads power supplies (default `/sys/class/power_supply`); NULL
/// restores the default. Copied. For tests and for hosts whose sysfs lives elsewhere (SPEC §6).
/// Errors: `BTB_ERROR_NULL_ARGUMENT` (options), `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_UTF8`.
/// Thread-safe.
///
/// # Safety
///
/// `path` is NULL or a NUL-terminated string, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_system_options_set_power_supply_root(
    options: *mut btb_system_options,
    path: *const c_char,
) -> btb_status {
    edit(options, |o| {
        // SAFETY: the C contract: `path` is NULL or a NUL-terminated string valid during the call.
        let path = unsafe { c_str(path) };
        o.platform.power_supply_root = opt_arg(path, "path")?.map_or_else(
            || PlatformOptions::default().power_supply_root,
            std::path::PathBuf::from,
        );
        Ok(())
    })
}

/// The local time zone link whose directory the platform source watches for TIME_ZONE_CHANGE and
/// which calendar triggers follow (default `/etc/localtime`; `TZ` in the environment still wins);
/// NULL restores the default. Copied.
/// Errors: `BTB_ERROR_NULL_ARGUMENT` (options), `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_UTF8`.
/// Thread-safe.
///
/// # Safety
///
/// `path` is NULL or a NUL-terminated string, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_system_options_set_localtime_path(
    options: *mut btb_system_options,
    path: *const c_char,
) -> btb_status {
    edit(options, |o| {
        // SAFETY: the C contract: `path` is NULL or a NUL-terminated string valid during the call.
        let path = unsafe { c_str(path) };
        o.platform.localtime = opt_arg(path, "path")?.map_or_else(
            || PlatformOptions::default().localtime,
            std::path::PathBuf::from,
        );
        Ok(())
    })
}

/// Opens the system paused: nothing runs until `btb_system_start`, and fires (including the
/// catch-up of time missed while nothing ran) latch meanwhile. Use it to register run functions
/// before anything due at open runs. Default false.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_system_options_set_paused(
    options: *mut btb_system_options,
    paused: bool,
) -> btb_status {
    edit(options, |o| {
        o.paused = paused;
        Ok(())
    })
}

/// Policy: the lowest accepted freshness of time and maintenance triggers (default 15; range
/// 1–43,200, checked by `btb_system_open`). A visible test option, never applied silently.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_system_options_set_min_freshness_minutes(
    options: *mut btb_system_options,
    minutes: u32,
) -> btb_status {
    edit(options, |o| {
        o.policy.min_freshness_minutes = minutes;
        Ok(())
    })
}

/// Policy: the timer window in seconds (default 900; 0 = exact; at most 86,400).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_system_options_set_timer_window_seconds(
    options: *mut btb_system_options,
    seconds: u32,
) -> btb_status {
    edit(options, |o| {
        o.policy.timer_window_seconds = seconds;
        Ok(())
    })
}

/// Policy: the grace period after cancellation in milliseconds (default 5,000).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_system_options_set_grace_ms(
    options: *mut btb_system_options,
    ms: u32,
) -> btb_status {
    edit(options, |o| {
        o.policy.grace_ms = ms;
        Ok(())
    })
}

/// Policy: the run-time limit in seconds for tasks with a trigger of `trigger_kind`
/// (`BTB_TRIGGER_KIND_*`); 0 = none. Defaults: 25 s, and 600 s for application and maintenance.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_ARGUMENT`
/// (unknown kind). Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_system_options_set_time_limit_seconds(
    options: *mut btb_system_options,
    trigger_kind: u32,
    seconds: u32,
) -> btb_status {
    edit(options, |o| {
        o.policy
            .set_time_limit(TriggerKind::from_u32(trigger_kind)?, seconds);
        Ok(())
    })
}

/// Policy: the most task instances running at once (range 0–4,096; 0, the default: one per CPU,
/// counted by the broker when it opens).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_system_options_set_max_concurrent(
    options: *mut btb_system_options,
    max: u32,
) -> btb_status {
    edit(options, |o| {
        o.policy.max_concurrent = max;
        Ok(())
    })
}

/// Policy: whether application triggers may run tasks (default true). False makes every request
/// answer `BTB_APPLICATION_TRIGGER_DISABLED_BY_POLICY`, as Windows does under the user's
/// background-activity policy. Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`.
/// Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_system_options_set_allow_application_triggers(
    options: *mut btb_system_options,
    allow: bool,
) -> btb_status {
    edit(options, |o| {
        o.policy.allow_application_triggers = allow;
        Ok(())
    })
}

/// Policy: `BTB_CONDITION_STORAGE_NOT_LOW` holds while more than `percent` % of the store's file
/// system is available (default 10). Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`,
/// `BTB_ERROR_INVALID_ARGUMENT` (above 100). Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_system_options_set_storage_low_percent(
    options: *mut btb_system_options,
    percent: u32,
) -> btb_status {
    edit(options, |o| {
        o.policy.storage_low_percent = u8::try_from(percent)
            .ok()
            .filter(|p| *p <= 100)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "storage_low_percent {percent} is out of range 0..=100"
                ))
            })?;
        Ok(())
    })
}

/// Policy: durability of registrations, `BTB_DURABILITY_FULL` (default, `synchronous=FULL`) or
/// `BTB_DURABILITY_NORMAL` (`synchronous=NORMAL`: survives a crash, not necessarily power loss).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_ARGUMENT`.
/// Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_system_options_set_durability(
    options: *mut btb_system_options,
    durability: u32,
) -> btb_status {
    edit(options, |o| {
        o.policy.durability = Durability::from_u32(durability)?;
        Ok(())
    })
}

fn new_system(system: System) -> *mut btb_system {
    let data = SystemData {
        app_id: c_string(system.app_id()),
        store_path: c_string(system.store_path()),
        system,
    };
    handle::insert::<btb_system>(Arc::new(data))
}

/// Opens a system: checks the policy, opens (creating or migrating) the store and loads its
/// registrations. When another process's broker holds the store, the system is its client
/// instead (`btb_system_is_broker`). `options` is read, not consumed. On success `*out` is a new
/// system; close it with `btb_system_close`. Errors: `BTB_ERROR_NULL_ARGUMENT`,
/// `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_ARGUMENT` (no manifest, policy out of range),
/// `BTB_ERROR_STORE` (corrupt or newer-schema file, left untouched; store in use by a system whose
/// broker cannot be reached; the message names the path). Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_system_open(
    options: *const btb_system_options,
    out: *mut *mut btb_system,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        let out = required(out, "out")?;
        let o = handle::get(options, "options")?;
        let options = o.lock().unwrap_or_else(|p| p.into_inner()).clone();
        out.write(new_system(System::open(options)?));
        Ok(())
    })
}

/// Closes a system and frees its handle: cancels running instances with
/// `BTB_CANCELLATION_TERMINATING`, waits for them to end and for the handlers being called — at
/// most the grace period (`btb_system_options_set_grace_ms`, default 5 s) — records the rest as
/// canceled, stops btb's threads, and releases the store and its lock. A run function that ignores
/// cancellation past its grace is abandoned, not killed: it may still be running when this returns,
/// and its `user_data` stays in use until it returns — pass a `free_user_data` to learn when btb is
/// done with it. NULL is a no-op.
/// Errors: `BTB_ERROR_INVALID_HANDLE` (freed, foreign, another type, closed twice),
/// `BTB_ERROR_STATE` (called in a forked child; the handle stays valid). Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_system_close(system: *mut btb_system) -> btb_status {
    guard(|| {
        if system.is_null() {
            return Ok(());
        }
        handle::get(system as *const btb_system, "system")?
            .system
            .close()?;
        handle::free(system).map(drop)
    })
}

/// Starts a system opened paused (`btb_system_options_set_paused`): what latched meanwhile runs
/// now. Starting a running system changes nothing.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_STATE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_system_start(system: *mut btb_system) -> btb_status {
    guard(|| {
        handle::get(system as *const btb_system, "system")?
            .system
            .start()
    })
}

/// Makes `system` the default system used by `btb_register` (NULL clears it, so the next
/// `btb_register` opens one from `BTB_MANIFEST` again). The default holds its own reference: closing
/// `system` later makes the default fail with `BTB_ERROR_STATE`.
/// Errors: `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_system_set_default(system: *mut btb_system) -> btb_status {
    guard(|| {
        let s = if system.is_null() {
            None
        } else {
            Some(
                handle::get(system as *const btb_system, "system")?
                    .system
                    .clone(),
            )
        };
        btb_core::set_default_system(s);
        Ok(())
    })
}

/// Writes the system's app id to `*out` (borrowed: valid while the system handle lives).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_system_app_id(
    system: *const btb_system,
    out: *mut *const c_char,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| read(system, out, |s| Ok(s.app_id.as_ptr())))
}

/// Writes the store's path (`":memory:"` for an ephemeral store) to `*out` (borrowed: valid while
/// the system handle lives). Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_system_store_path(
    system: *const btb_system,
    out: *mut *const c_char,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| read(system, out, |s| Ok(s.store_path.as_ptr())))
}

/// Writes whether this system is the broker of its store to `*out`: `false` when another
/// process's broker held the store at open, so that this system is its client (every call goes
/// through that broker; SPEC §10). A client becomes the broker when that broker goes away.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_system_is_broker(
    system: *const btb_system,
    out: *mut bool,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| read(system, out, |s| Ok(s.system.is_broker())))
}

/// Writes the process id of the broker this system uses to `*out` (this process's own when
/// `btb_system_is_broker` says so). Errors: `BTB_ERROR_NULL_ARGUMENT`,
/// `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_system_broker_pid(
    system: *const btb_system,
    out: *mut u32,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| read(system, out, |s| Ok(s.system.broker_pid())))
}

/// Writes the system clock's time (ms since the Unix epoch) to `*out`.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_system_now_ms(system: *const btb_system, out: *mut i64) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| read(system, out, |s| Ok(s.system.clock().now_ms())))
}

/// Moves a manual clock forward by `ms` milliseconds.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_ARGUMENT`
/// (negative `ms`: time never runs backwards; or a move past year 9999, which leaves the clock
/// where it was), `BTB_ERROR_STATE` (the system uses the real clock). Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_system_advance_clock(system: *mut btb_system, ms: i64) -> btb_status {
    guard(|| {
        match handle::get(system as *const btb_system, "system")?
            .system
            .clock()
        {
            Clock::Manual(clock) => clock.advance_ms(ms),
            Clock::Real => Err(Error::state(
                "this system uses the real clock; open it with a manual clock to advance time",
            )),
        }
    })
}

/// Sets (or, with `handler` NULL, removes) the background-activated handler of the system
/// (`group_id` NULL) or of the task group `group_id` (Windows `OnBackgroundActivated` /
/// `BackgroundTaskRegistrationGroup.BackgroundActivated`): it runs registered tasks that have no
/// entry point, a group's own before the system's. `handler` runs on a btb worker thread with a
/// borrowed instance; `user_data` is passed back as given (btb never dereferences it).
/// `free_user_data` (may be NULL) is called once btb is done with `user_data` (see `btb_free_fn`).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_UTF8`,
/// `BTB_ERROR_STATE`. Thread-safe.
///
/// # Safety
///
/// `group_id` is NULL or a NUL-terminated string, valid for the duration of the call. `handler` and
/// `free_user_data` must be safe to call with `user_data` from btb's threads, as documented above.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_system_set_background_activated(
    system: *mut btb_system,
    group_id: *const c_char,
    handler: btb_run_fn,
    user_data: *mut c_void,
    free_user_data: btb_free_fn,
) -> btb_status {
    // SAFETY: the C contract: `group_id` is NULL or a NUL-terminated string valid during the call.
    let group_id = unsafe { c_str(group_id) };
    guard(|| {
        let s = handle::get(system as *const btb_system, "system")?;
        let group = opt_arg(group_id, "group_id")?;
        let user_data = UserData::new(user_data, free_user_data);
        let set = s
            .system
            .set_background_activated(group, handler.map(|f| run_handler(f, &user_data)));
        user_data.kept_on_error(set)
    })
}

/// Like `btb_system_set_background_activated`, but the runs go to the pull queue
/// (`btb_system_next_event`) instead of a callback, so a host runs them on its own thread.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_UTF8`,
/// `BTB_ERROR_STATE`. Thread-safe.
///
/// # Safety
///
/// `group_id` is NULL or a NUL-terminated string, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_system_set_background_activated_queued(
    system: *mut btb_system,
    group_id: *const c_char,
) -> btb_status {
    // SAFETY: the C contract: `group_id` is NULL or a NUL-terminated string valid during the call.
    let group_id = unsafe { c_str(group_id) };
    guard(|| {
        let s = handle::get(system as *const btb_system, "system")?;
        s.system
            .set_background_activated(opt_arg(group_id, "group_id")?, Some(Handler::Queued))
    })
}

/// Registers the in-process run function of a declared entry point (replacing any previous one).
/// It runs on a btb thread with a borrowed instance — also when this system is a client
/// (`btb_system_is_broker` false): the broker hands the runs it has no function for to a client
/// process that has one.
/// `free_user_data` (may be NULL) is called once btb is done with `user_data` (see `btb_free_fn`).
/// Errors: `BTB_ERROR_NULL_ARGUMENT` (system, entry point or handler), `BTB_ERROR_INVALID_HANDLE`,
/// `BTB_ERROR_INVALID_UTF8`, `BTB_ERROR_NOT_DECLARED` (not in the manifest), `BTB_ERROR_STATE`.
/// Thread-safe.
///
/// # Safety
///
/// `entry_point` is NULL or a NUL-terminated string, valid for the duration of the call. `handler`
/// and `free_user_data` must be safe to call with `user_data` from btb's threads, as documented
/// above.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_system_register_entry_point(
    system: *mut btb_system,
    entry_point: *const c_char,
    handler: btb_run_fn,
    user_data: *mut c_void,
    free_user_data: btb_free_fn,
) -> btb_status {
    // SAFETY: the C contract: `entry_point` is NULL or a NUL-terminated string valid during the
    // call.
    let entry_point = unsafe { c_str(entry_point) };
    guard(|| {
        let s = handle::get(system as *const btb_system, "system")?;
        let ep = arg(entry_point, "entry_point")?;
        let f = handler.ok_or_else(|| Error::new(ErrorKind::NullArgument, "handler is NULL"))?;
        let user_data = UserData::new(user_data, free_user_data);
        let registered = s
            .system
            .register_entry_point(ep, Some(run_handler(f, &user_data)));
        user_data.kept_on_error(registered)
    })
}

/// Routes the runs of a declared entry point to the pull queue (`btb_system_next_event`), so a host
/// runtime runs them on its own thread. Errors: as `btb_system_register_entry_point`. Thread-safe.
///
/// # Safety
///
/// `entry_point` is NULL or a NUL-terminated string, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_system_register_entry_point_queued(
    system: *mut btb_system,
    entry_point: *const c_char,
) -> btb_status {
    // SAFETY: the C contract: `entry_point` is NULL or a NUL-terminated string valid during the
    // call.
    let entry_point = unsafe { c_str(entry_point) };
    guard(|| {
        let s = handle::get(system as *const btb_system, "system")?;
        s.system
            .register_entry_point(arg(entry_point, "entry_point")?, Some(Handler::Queued))
    })
}

/// Removes the handler of an entry point (its tasks then fail when they fire, saying so).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_UTF8`,
/// `BTB_ERROR_NOT_DECLARED`, `BTB_ERROR_STATE`. Thread-safe.
///
/// # Safety
///
/// `entry_point` is NULL or a NUL-terminated string, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_system_unregister_entry_point(
    system: *mut btb_system,
    entry_point: *const c_char,
) -> btb_status {
    // SAFETY: the C contract: `entry_point` is NULL or a NUL-terminated string valid during the
    // call.
    let entry_point = unsafe { c_str(entry_point) };
    guard(|| {
        let s = handle::get(system as *const btb_system, "system")?;
        s.system
            .register_entry_point(arg(entry_point, "entry_point")?, None)
    })
}

/// Raises a system event (`BTB_SYSTEM_TRIGGER_*`): every registration with a system trigger of that
/// type fires. The platform source raises the events it sees; a host with its own source feeds its
/// events here. Writes how many registrations fired to `*out_fired` (may be NULL).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_ARGUMENT`
/// (unknown type), `BTB_ERROR_STATE`. Thread-safe.
///
/// # Safety
///
/// `out_fired` is NULL or points to writable storage for one result, valid for the duration of the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_system_raise_event(
    system: *mut btb_system,
    event: u32,
    out_fired: *mut usize,
) -> btb_status {
    // SAFETY: the C contract: `out_fired` is NULL or writable storage for the result.
    let out_fired = unsafe { Out::from_raw(out_fired) };
    guard(|| {
        let s = handle::get(system as *const btb_system, "system")?;
        let n = s.system.raise_event(SystemTriggerType::from_u32(event)?)?;
        if let Some(out_fired) = out_fired {
            out_fired.write(n);
        }
        Ok(())
    })
}

/// Signals the custom event `name` in this system (custom-event triggers with that id fire).
/// Other processes use `btb_signal_event`; `name` follows the same rule here as there (1–256
/// bytes, no control character). Writes how many registrations fired to `*out_fired` (may be
/// NULL). Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_UTF8`,
/// `BTB_ERROR_INVALID_ARGUMENT` (empty, too long or with a control character),
/// `BTB_ERROR_STATE`. Thread-safe.
///
/// # Safety
///
/// `name` is NULL or a NUL-terminated string; `out_fired` is NULL or points to writable storage for
/// one result, each valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_system_signal_event(
    system: *mut btb_system,
    name: *const c_char,
    out_fired: *mut usize,
) -> btb_status {
    // SAFETY: the C contract: `name` is NULL or a NUL-terminated string valid during the call;
    // `out_fired` is NULL or writable storage for the result.
    let (name, out_fired) = unsafe { (c_str(name), Out::from_raw(out_fired)) };
    guard(|| {
        let s = handle::get(system as *const btb_system, "system")?;
        let n = s.system.signal_event(arg(name, "name")?)?;
        if let Some(out_fired) = out_fired {
            out_fired.write(n);
        }
        Ok(())
    })
}

/// Signals the custom event `name` to the running broker of app `app_id`, from any process of the
/// same user, through its socket under `$XDG_RUNTIME_DIR/btb/`. Returns once the broker has it.
/// Only systems with a file store listen there: an in-memory (`:memory:`) system has no control
/// socket, so its custom events come only from `btb_system_signal_event`.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_UTF8`, `BTB_ERROR_INVALID_ARGUMENT` (bad app
/// id or name), `BTB_ERROR_NOT_FOUND` (no broker of that app runs), `BTB_ERROR_POLICY` (the socket
/// belongs to another user), `BTB_ERROR_STATE` (no answer). Thread-safe.
///
/// # Safety
///
/// `app_id` is NULL or a NUL-terminated string; `name` is NULL or a NUL-terminated string, each
/// valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_signal_event(
    app_id: *const c_char,
    name: *const c_char,
) -> btb_status {
    // SAFETY: the C contract: `app_id` and `name` are NULL or NUL-terminated strings valid during
    // the call.
    let (app_id, name) = unsafe { (c_str(app_id), c_str(name)) };
    guard(|| btb_core::control::signal_event(arg(app_id, "app_id")?, arg(name, "name")?))
}

/// Sets a state of the simulated source (`BTB_CONDITION_*`, true = holds). Tasks whose conditions
/// now hold run; running instances with `cancel_on_condition_loss` whose conditions stop holding are
/// canceled with `BTB_CANCELLATION_CONDITION_LOSS`.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_ARGUMENT`
/// (unknown condition), `BTB_ERROR_STATE` (the system reads the platform, not the simulated
/// source; closed). Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn btb_system_set_state(
    system: *mut btb_system,
    condition: u32,
    value: bool,
) -> btb_status {
    guard(|| {
        let s = handle::get(system as *const btb_system, "system")?;
        s.system
            .set_state(SystemConditionType::from_u32(condition)?, value)
    })
}

/// Writes the state of a condition now to `*out` (SPEC §6): `BTB_STATE_TRUE` (1) holds,
/// `BTB_STATE_FALSE` (0) does not, `BTB_STATE_UNKNOWN` (-1) unknown — which does not hold. From the
/// simulated source, or read from the machine (`btb_system_state_source` says which).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_ARGUMENT`,
/// `BTB_ERROR_STATE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_system_state(
    system: *const btb_system,
    condition: u32,
    out: *mut i32,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(system, out, |s| {
            Ok(
                match s.system.state(SystemConditionType::from_u32(condition)?)? {
                    Some(true) => btb_state::BTB_STATE_TRUE as i32,
                    Some(false) => btb_state::BTB_STATE_FALSE as i32,
                    None => btb_state::BTB_STATE_UNKNOWN as i32,
                },
            )
        })
    })
}

/// Writes to `*out` what a condition's state is read from: a static string, one of
/// `"simulated"`, `"networkmanager"`, `"netlink"`, `"upower"`, `"sysfs"`, `"logind"`,
/// `"statvfs"`, `"unknown"` (SPEC §6: the source of highest rank that knows the state; `"unknown"`
/// when none does).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_ARGUMENT`
/// (unknown condition), `BTB_ERROR_STATE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_system_state_source(
    system: *const btb_system,
    condition: u32,
    out: *mut *const c_char,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(system, out, |s| {
            let name = s
                .system
                .state_source(SystemConditionType::from_u32(condition)?)?;
            Ok(source_c_str(name).as_ptr())
        })
    })
}

/// The static C string of a source name.
fn source_c_str(name: &str) -> &'static std::ffi::CStr {
    match name {
        "simulated" => c"simulated",
        "networkmanager" => c"networkmanager",
        "netlink" => c"netlink",
        "upower" => c"upower",
        "sysfs" => c"sysfs",
        "logind" => c"logind",
        "statvfs" => c"statvfs",
        _ => c"unknown",
    }
}

/// Writes Windows' background work cost (`BTB_BACKGROUND_WORK_COST_*`) to `*out`: LOW on AC power
/// and a free network, HIGH when the battery is low, MEDIUM otherwise.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_NOT_FOUND` (the power
/// state is unknown), `BTB_ERROR_STATE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_system_background_work_cost(
    system: *const btb_system,
    out: *mut u32,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(system, out, |s| {
            s.system
                .background_work_cost()?
                .map(|c| c as u32)
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::NotFound,
                        "the background work cost is unknown (no power state yet)",
                    )
                })
        })
    })
}

/// Waits at most `timeout_ms` until nothing runs or is runnable and every handler has been called;
/// writes whether that happened to `*out_idle`. Not from a btb handler (`BTB_ERROR_STATE`).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_STATE`,
/// `BTB_ERROR_UNSUPPORTED` in a client (its broker runs the tasks: use a completed handler).
/// Thread-safe; blocks.
///
/// # Safety
///
/// `out_idle` is NULL or points to writable storage for one result, valid for the duration of the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_system_wait_idle(
    system: *mut btb_system,
    timeout_ms: u32,
    out_idle: *mut bool,
) -> btb_status {
    // SAFETY: the C contract: `out_idle` is NULL or writable storage for the result.
    let out_idle = unsafe { Out::from_raw(out_idle) };
    guard(|| {
        read(system, out_idle, |s| {
            s.system
                .wait_idle(Duration::from_millis(u64::from(timeout_ms)))
        })
    })
}

/// For an app the broker started for background work (`activate` in the manifest;
/// `BTB_ACTIVATION=1` in its environment, `BTB_STORE` the store to open): serves the runs its
/// broker hands it — register the run functions first — and returns once none is left for it
/// (no run waits for a handler it offers, and none of those runs is going), writing `true` to
/// `*out_done`; `false` at `timeout_ms`. Then `main` can close the system and exit. A system that
/// holds its store itself waits as `btb_system_wait_idle` does. Errors: `BTB_ERROR_NULL_ARGUMENT`,
/// `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_STATE` (closed, or the broker went away). Thread-safe;
/// blocks.
///
/// # Safety
///
/// `out_done` is NULL or points to writable storage for one result, valid for the duration of the
/// call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_system_serve_activation(
    system: *mut btb_system,
    timeout_ms: u32,
    out_done: *mut bool,
) -> btb_status {
    // SAFETY: the C contract: `out_done` is NULL or writable storage for the result.
    let out_done = unsafe { Out::from_raw(out_done) };
    guard(|| {
        read(system, out_done, |s| {
            s.system
                .serve_activation(Duration::from_millis(u64::from(timeout_ms)))
        })
    })
}

/// An entry of the pull queue.
#[repr(C)]
pub struct btb_event {
    /// `BTB_EVENT_*`.
    pub kind: u32,
    /// The instance (owned: free with `btb_instance_free`); NULL for `BTB_EVENT_NONE`.
    pub instance: *mut btb_instance,
    /// `BTB_CANCELLATION_*` for `BTB_EVENT_CANCELED`, else 0.
    pub reason: u32,
}

/// Takes the next event of the pull queue, waiting at most `timeout_ms`: `BTB_EVENT_RUN` (run the
/// instance on this thread, then call `btb_instance_finish_run`), `BTB_EVENT_CANCELED` (a queued
/// instance was canceled: stop it and finish its run), or `BTB_EVENT_NONE` on timeout. Only runs of
/// entry points and groups set up with the `*_queued` functions arrive here.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_STATE`,
/// `BTB_ERROR_UNSUPPORTED` in a client (the pull queue is the broker process's). Thread-safe;
/// blocks.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_system_next_event(
    system: *mut btb_system,
    timeout_ms: u32,
    out: *mut btb_event,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(system, out, |s| {
            Ok(
                match s
                    .system
                    .next_event(Duration::from_millis(u64::from(timeout_ms)))?
                {
                    None => btb_event {
                        kind: crate::constants::btb_event_kind::BTB_EVENT_NONE as u32,
                        instance: std::ptr::null_mut(),
                        reason: 0,
                    },
                    Some(Event::Run(i)) => btb_event {
                        kind: crate::constants::btb_event_kind::BTB_EVENT_RUN as u32,
                        instance: new_instance(i),
                        reason: 0,
                    },
                    Some(Event::Canceled(i, r)) => btb_event {
                        kind: crate::constants::btb_event_kind::BTB_EVENT_CANCELED as u32,
                        instance: new_instance(i),
                        reason: r as u32,
                    },
                },
            )
        })
    })
}

/// Fires the registrations made with application trigger `trigger` (Windows
/// `ApplicationTrigger.RequestAsync`), with `arguments` (a JSON object text, or NULL) as their
/// trigger details. With `system` NULL, the trigger fires wherever its registrations live: in every
/// open system of this process that holds one (objects are bound by use; the default system is
/// asked only when none does). A non-NULL `system` narrows the request to that system. Writes a `BTB_APPLICATION_TRIGGER_*` result
/// to `*out`: ALLOWED (exactly one run follows), CURRENTLY_RUNNING (a run is going or pending; nothing is
/// queued), DISABLED_BY_POLICY, or UNKNOWN_ERROR (no registration holds the trigger:
/// `btb_last_error_message()` then says so, although the status is `BTB_OK`).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_UTF8`,
/// `BTB_ERROR_INVALID_ARGUMENT` (not an application trigger; arguments not a JSON object),
/// `BTB_ERROR_STATE`. Thread-safe.
///
/// # Safety
///
/// `arguments` is NULL or a NUL-terminated string; `out` is NULL or points to writable storage for
/// one result, each valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_application_trigger_request(
    system: *mut btb_system,
    trigger: *const btb_trigger,
    arguments: *const c_char,
    out: *mut u32,
) -> btb_status {
    // SAFETY: the C contract: `arguments` is NULL or a NUL-terminated string valid during the call;
    // `out` is NULL or writable storage for the result.
    let (arguments, out) = unsafe { (c_str(arguments), Out::from_raw(out)) };
    guard(|| {
        let out = required(out, "out")?;
        let t = handle::get(trigger, "trigger")?;
        let btb_core::Trigger::Application { id } = t.trigger else {
            return Err(Error::invalid("the trigger is not an application trigger"));
        };
        let args = parse_arguments(arguments)?;
        let result = if system.is_null() {
            btb_core::request_application_trigger(&id, args)?
        } else {
            handle::get(system as *const btb_system, "system")?
                .system
                .request(&id, args)?
        };
        if result == btb_core::ApplicationTriggerResult::UnknownError {
            let place = if system.is_null() {
                "in any open system of this process"
            } else {
                "in this system"
            };
            explain_unheld(&format!(
                "no registration holds application trigger {id} {place}"
            ));
        }
        out.write(result as u32);
        Ok(())
    })
}

/// Says why a request answered `UNKNOWN_ERROR` (`btb_last_error_message`).
pub(crate) fn explain_unheld(what: &str) {
    crate::error::explain(&format!(
        "{what}: register a task with the trigger first, or keep it registered \
         (BTB_APPLICATION_TRIGGER_UNKNOWN_ERROR)"
    ));
}

/// Parses optional application trigger arguments (a JSON object text).
pub(crate) fn parse_arguments(
    arguments: Option<&CStr>,
) -> Result<Option<serde_json::Value>, Error> {
    opt_arg(arguments, "arguments")?
        .map(|text| {
            serde_json::from_str::<serde_json::Value>(text)
                .map_err(|e| Error::invalid(format!("arguments are not valid JSON: {e}")))
        })
        .transpose()
}

/// Writes a new list of the registrations outside any task group, in registration order, to
/// `*out` (Windows `AllTasks`); free it with `btb_registration_list_free`.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_STATE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_system_all_tasks(
    system: *const btb_system,
    out: *mut *mut btb_registration_list,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(system, out, |s| {
            Ok(crate::registration::new_registration_list(
                s.system.all_tasks()?,
            ))
        })
    })
}

/// Writes a new list of the registrations in task group `group_id` to `*out` (empty if none);
/// free it with `btb_registration_list_free`.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_UTF8`,
/// `BTB_ERROR_STATE`. Thread-safe.
///
/// # Safety
///
/// `group_id` is NULL or a NUL-terminated string; `out` is NULL or points to writable storage for
/// one result, each valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_system_group_tasks(
    system: *const btb_system,
    group_id: *const c_char,
    out: *mut *mut btb_registration_list,
) -> btb_status {
    // SAFETY: the C contract: `group_id` is NULL or a NUL-terminated string valid during the call;
    // `out` is NULL or writable storage for the result.
    let (group_id, out) = unsafe { (c_str(group_id), Out::from_raw(out)) };
    guard(|| {
        read(system, out, |s| {
            let gid = arg(group_id, "group_id")?;
            Ok(crate::registration::new_registration_list(
                s.system.group_tasks(gid)?,
            ))
        })
    })
}

/// Writes a new list of the task groups that hold registrations, ordered by id, to `*out`
/// (Windows `AllTaskGroups`); free it with `btb_task_group_list_free`.
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_STATE`. Thread-safe.
///
/// # Safety
///
/// `out` is NULL or points to writable storage for one result, valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_system_all_task_groups(
    system: *const btb_system,
    out: *mut *mut btb_task_group_list,
) -> btb_status {
    // SAFETY: the C contract: `out` is NULL or writable storage for the result.
    let out = unsafe { Out::from_raw(out) };
    guard(|| {
        read(system, out, |s| {
            Ok(crate::registration::new_group_list(
                s.system.all_task_groups()?,
            ))
        })
    })
}

/// Writes a new handle to the task group `group_id` to `*out` (free with `btb_task_group_free`).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_INVALID_UTF8`,
/// `BTB_ERROR_NOT_FOUND` (no registration in that group), `BTB_ERROR_STATE`. Thread-safe.
///
/// # Safety
///
/// `group_id` is NULL or a NUL-terminated string; `out` is NULL or points to writable storage for
/// one result, each valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_system_get_task_group(
    system: *const btb_system,
    group_id: *const c_char,
    out: *mut *mut btb_task_group,
) -> btb_status {
    // SAFETY: the C contract: `group_id` is NULL or a NUL-terminated string valid during the call;
    // `out` is NULL or writable storage for the result.
    let (group_id, out) = unsafe { (c_str(group_id), Out::from_raw(out)) };
    guard(|| {
        read(system, out, |s| {
            Ok(new_group(s.system.task_group(arg(group_id, "group_id")?)?))
        })
    })
}

/// Writes a new handle to the registration with task id `task_id` (grouped or not) to `*out`
/// (free with `btb_registration_free`).
/// Errors: `BTB_ERROR_NULL_ARGUMENT`, `BTB_ERROR_INVALID_HANDLE`, `BTB_ERROR_NOT_FOUND`,
/// `BTB_ERROR_STATE`. Thread-safe.
///
/// # Safety
///
/// `task_id` is NULL or points to a readable `btb_uuid`; `out` is NULL or points to writable
/// storage for one result, each valid for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn btb_system_find_task(
    system: *const btb_system,
    task_id: *const crate::registration::btb_uuid,
    out: *mut *mut btb_registration,
) -> btb_status {
    // SAFETY: the C contract: `task_id` is NULL or points to a readable `btb_uuid`; `out` is NULL
    // or writable storage for the result.
    let (task_id, out) = unsafe { (task_id.as_ref(), Out::from_raw(out)) };
    guard(|| {
        read(system, out, |s| {
            let id = uuid::Uuid::from_bytes(required(task_id, "task_id")?.bytes);
            Ok(new_registration(s.system.find(&id)?))
        })
    })
}
