//! Application-trigger arguments end to end through the C ABI: the input (up to its first NUL, as
//! a C string) goes to `btb_application_trigger_request`, which checks UTF-8, parses the JSON,
//! requires an object, fires the registration (persisting the pending details in the store) and
//! runs it; the run's handler reads its trigger details back with `btb_instance_trigger_details`.
//! Checked: the status agrees with an independent parse, an accepted request runs exactly once,
//! its details text is the serialized arguments, and that text (the form btb persists) parses back
//! to the same value, floats included (serde_json's `float_roundtrip`).
//! One system (in-memory store, manual clock, simulated source) is opened once and reused.
#![no_main]

use std::ffi::{CStr, CString, c_char, c_void};
use std::sync::{Mutex, OnceLock};

use btb::btb_status::{self, *};
use btb::builder::{
    btb_builder, btb_new, btb_register_in, btb_set_name, btb_set_task_entry_point, btb_set_trigger,
};
use btb::instance::{btb_instance, btb_instance_trigger_details};
use btb::system::*;
use btb::trigger::{btb_application_trigger_new, btb_trigger};
use libfuzzer_sys::fuzz_target;

/// What the handler saw: one entry per run (`None`: no details).
static SEEN: Mutex<Vec<Option<String>>> = Mutex::new(Vec::new());

struct Fixture {
    system: *mut btb_system,
    trigger: *mut btb_trigger,
}
// SAFETY: btb handles are table keys, usable from any thread.
unsafe impl Send for Fixture {}
unsafe impl Sync for Fixture {}

fn ok(st: btb_status, what: &str) {
    if st != BTB_OK {
        let msg = unsafe { CStr::from_ptr(btb::error::btb_last_error_message()) };
        panic!("{what}: {st:?}: {msg:?}");
    }
}

unsafe extern "C" fn run(instance: *mut btb_instance, _: *mut c_void) {
    let mut details: *const c_char = std::ptr::null();
    // SAFETY: `details` is a live local.
    ok(
        unsafe { btb_instance_trigger_details(instance, &mut details) },
        "trigger details",
    );
    let text = (!details.is_null()).then(|| {
        unsafe { CStr::from_ptr(details) }
            .to_str()
            .expect("details are UTF-8")
            .to_owned()
    });
    SEEN.lock().unwrap().push(text);
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // SAFETY: every pointer passed is a live local or a C string literal.
        unsafe {
            let toml = c"app_id = \"org.example.fuzz\"\n[[task]]\nentry_point = \"fuzz.Run\"\ntypes = [\"general\"]\n";
            let mut manifest = std::ptr::null_mut();
            ok(btb_manifest_from_toml(toml.as_ptr(), &mut manifest), "manifest");
            let mut options = std::ptr::null_mut();
            ok(btb_system_options_new(&mut options), "options");
            ok(btb_system_options_set_manifest(options, manifest), "set manifest");
            ok(btb_system_options_set_store(options, c":memory:".as_ptr()), "set store");
            ok(btb_system_options_set_manual_clock(options, 1_700_000_000_000), "set clock");
            ok(btb_system_options_set_simulated(options, true), "set simulated");
            let mut system = std::ptr::null_mut();
            ok(btb_system_open(options, &mut system), "open");
            ok(btb_system_options_free(options), "free options");
            ok(btb_manifest_free(manifest), "free manifest");
            ok(btb_system_register_entry_point(system, c"fuzz.Run".as_ptr(), Some(run), std::ptr::null_mut(), None), "handler");
            let mut trigger = std::ptr::null_mut();
            ok(btb_application_trigger_new(&mut trigger), "trigger");
            let mut builder: *mut btb_builder = std::ptr::null_mut();
            ok(btb_new(&mut builder), "builder");
            ok(btb_set_name(builder, c"fuzz".as_ptr()), "name");
            ok(btb_set_task_entry_point(builder, c"fuzz.Run".as_ptr()), "entry point");
            ok(btb_set_trigger(builder, trigger), "set trigger");
            let mut registration = std::ptr::null_mut();
            ok(btb_register_in(system, builder, &mut registration), "register");
            Fixture { system, trigger }
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    // A C string: the input up to its first NUL.
    let text = CString::new(data.split(|&b| b == 0).next().unwrap_or_default()).unwrap();
    let expected: Result<serde_json::Value, btb_status> = match text.to_str() {
        Err(_) => Err(BTB_ERROR_INVALID_UTF8),
        Ok(s) => match serde_json::from_str::<serde_json::Value>(s) {
            Ok(v) if v.is_object() => Ok(v),
            _ => Err(BTB_ERROR_INVALID_ARGUMENT),
        },
    };
    let mut out = u32::MAX;
    // SAFETY: `text` and `out` are live locals.
    let st =
        unsafe { btb_application_trigger_request(f.system, f.trigger, text.as_ptr(), &mut out) };
    match expected {
        Err(want) => {
            assert_eq!(st, want);
            assert_eq!(out, u32::MAX, "nothing written on error");
        }
        Ok(value) => {
            ok(st, "request");
            assert_eq!(out, 0, "BTB_APPLICATION_TRIGGER_ALLOWED");
            let mut idle = false;
            // SAFETY: `idle` is a live local.
            ok(
                unsafe { btb_system_wait_idle(f.system, 10_000, &mut idle) },
                "wait idle",
            );
            assert!(idle, "the run finished");
            let seen = std::mem::take(&mut *SEEN.lock().unwrap());
            assert_eq!(seen.len(), 1, "exactly one run");
            let details = seen[0]
                .as_deref()
                .expect("an application trigger run has details");
            // btb hands the run exactly what it parsed…
            assert_eq!(
                details,
                value.to_string(),
                "details differ from the arguments"
            );
            // …and its text (what the store keeps for a latched fire and the run history) parses
            // back to the same value, floats to the bit (found by this target: without
            // serde_json's `float_roundtrip` a float came back 1 ULP off).
            let back: serde_json::Value = serde_json::from_str(details).expect("details reparse");
            assert_eq!(back, value, "details {details:?} reparse differently");
        }
    }
});
