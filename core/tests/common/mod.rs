//! Helpers shared by the integration tests. Each test binary uses a different subset: the
//! registration and store tests these, the runtime tests `rt` (a system with a run-function
//! router, gates and deadline waits).
#![allow(dead_code)]

pub mod child;
pub mod dbus;
pub mod netns;
pub mod rt;

use std::path::Path;
use std::sync::Arc;

use btb_core::{
    Builder, Clock, Error, ErrorKind, Manifest, ManualClock, Policy, Registration, Result,
    StoreLocation, System, SystemOptions, TaskDeclaration, TaskGroup, Trigger,
};

/// The manual clock's start: 2023-11-14T22:13:20Z.
pub const T0: i64 = 1_700_000_000_000;

pub const APP_ID: &str = "org.example.btbtest";

/// A manifest declaring:
/// - `app.All`: every task type a trigger can need (general, systemEvent, timer);
/// - `app.Timer`, `app.General`, `app.SystemEvent`: one type each;
/// - `app.Bluetooth`: a type no btb trigger needs.
pub fn manifest() -> Manifest {
    manifest_for(APP_ID)
}

/// [`manifest`] under another app id: tests that share a store between two systems each take
/// their own app id, so that their brokers' control sockets (one per app id) do not meet.
pub fn manifest_for(app_id: &str) -> Manifest {
    let mut m = Manifest::new(app_id, "1.0").unwrap();
    for (ep, types) in [
        ("app.All", &["general", "systemEvent", "timer"][..]),
        ("app.Timer", &["timer"][..]),
        ("app.General", &["general"][..]),
        ("app.SystemEvent", &["systemEvent"][..]),
        ("app.Bluetooth", &["bluetooth"][..]),
    ] {
        m.declare(TaskDeclaration::new(ep, types).unwrap()).unwrap();
    }
    m
}

pub fn options(store: StoreLocation, clock: &ManualClock, policy: Policy) -> SystemOptions {
    SystemOptions {
        manifest: Some(manifest()),
        store,
        clock: Clock::Manual(clock.clone()),
        simulated: true,
        policy,
        paused: false,
        ..SystemOptions::default()
    }
}

/// An ephemeral system with a manual clock standing at [`T0`].
pub fn memory_system() -> (System, ManualClock) {
    memory_system_with(Policy::default())
}

pub fn memory_system_with(policy: Policy) -> (System, ManualClock) {
    let clock = ManualClock::new(T0).unwrap();
    let system = System::open(options(StoreLocation::Memory, &clock, policy)).unwrap();
    (system, clock)
}

/// A system on a store file, manual clock at [`T0`], default policy.
pub fn file_system(path: &Path) -> Result<System> {
    file_system_as(APP_ID, path)
}

/// [`file_system`] under another app id (see [`manifest_for`]).
pub fn file_system_as(app_id: &str, path: &Path) -> Result<System> {
    let clock = ManualClock::new(T0).unwrap();
    System::open(SystemOptions {
        manifest: Some(manifest_for(app_id)),
        ..options(
            StoreLocation::File(path.to_owned()),
            &clock,
            Policy::default(),
        )
    })
}

/// A real-clock, simulated-source system on the store file `path` under `app_id` (so that the
/// states are the test's to set), for tests whose processes share the store.
pub fn open_real_clock(path: &Path, app_id: &str) -> System {
    System::open(SystemOptions {
        manifest: Some(manifest_for(app_id)),
        store: StoreLocation::File(path.to_owned()),
        clock: Clock::Real,
        simulated: true,
        policy: Policy::default(),
        ..SystemOptions::default()
    })
    .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
}

pub fn time(freshness_minutes: u32) -> Trigger {
    Trigger::Time {
        freshness_minutes,
        one_shot: false,
    }
}

/// A valid builder: `name`, entry point `app.All`, a 30-minute time trigger.
pub fn builder(name: &str) -> Builder {
    let mut b = Builder::new();
    b.name = Some(name.to_owned());
    b.task_entry_point = Some("app.All".to_owned());
    b.set_trigger(time(30));
    b
}

pub fn group(id: &str, name: &str) -> TaskGroup {
    TaskGroup::new(id, Some(name.to_owned())).unwrap()
}

pub fn noop_handler() -> btb_core::Handler {
    btb_core::Handler::Call(Arc::new(|_| {}))
}

/// Asserts that `result` failed with `kind` and a message containing every needle.
#[track_caller]
pub fn expect_err<T: std::fmt::Debug>(
    result: Result<T>,
    kind: ErrorKind,
    needles: &[&str],
) -> Error {
    let err = match result {
        Ok(v) => panic!("expected {kind:?} containing {needles:?}, got Ok({v:?})"),
        Err(e) => e,
    };
    assert_eq!(
        err.kind(),
        kind,
        "wrong kind for message {:?} (wanted {kind:?})",
        err.message()
    );
    for needle in needles {
        assert!(
            err.message().contains(needle),
            "message {:?} lacks {needle:?}",
            err.message()
        );
    }
    err
}

/// Every registration of a system, grouped or not, in registration order.
pub fn everything(system: &System) -> Vec<Registration> {
    let mut all = system.all_tasks().unwrap();
    for g in system.all_task_groups().unwrap() {
        all.extend(system.group_tasks(&g.id).unwrap());
    }
    all.sort_by_key(|r| r.record().seq);
    all
}

/// What another process's store holds on disk, read without its lock: the runs started and not
/// recorded, and how many tasks have a latched fire.
pub fn on_disk(path: &Path) -> (Vec<btb_core::store::RunStart>, usize) {
    let store = btb_core::Store::open_read_only(path).unwrap();
    let latched = store
        .load()
        .unwrap()
        .iter()
        .filter(|t| t.pending.is_some())
        .count();
    (store.started_runs().unwrap(), latched)
}

/// Waits until another process's store holds a run marked parked with its latched fire (SPEC
/// §12): it re-reads the file, as no event says when another process committed.
pub fn wait_parked_on_disk(path: &Path) -> btb_core::store::RunStart {
    let end = std::time::Instant::now() + child::DEADLINE;
    loop {
        let (started, latched) = on_disk(path);
        if latched == 1
            && let Some(parked) = started.into_iter().find(|s| s.parked)
        {
            return parked;
        }
        assert!(
            std::time::Instant::now() < end,
            "no parked run in {}",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(2)); // re-read, not wait for an event
    }
}
