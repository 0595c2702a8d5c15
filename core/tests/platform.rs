//! SPEC §6, reading the machine's state: `System::state` / `state_source`. So far the real
//! machine answers for STORAGE_NOT_LOW (`statvfs` on the store's file system, on each decision);
//! a simulated system answers from what the app set.

mod common;

use btb_core::*;
use common::rt::*;

fn open_real(dir: &std::path::Path, storage_low_percent: u8) -> Rig {
    let clock = ManualClock::new(T0).unwrap();
    let mut opts = options(
        "org.example.platform",
        "1",
        StoreLocation::File(dir.join("btb.sqlite3")),
        &clock,
        Policy {
            storage_low_percent,
            ..policy()
        },
    );
    opts.simulated = false;
    // No system bus, whatever the machine has: the D-Bus sources are `platform_dbus.rs`'s.
    opts.platform.system_bus = Some(format!("unix:path={}", dir.join("no-bus").display()));
    Rig::attach(System::open(opts).unwrap(), clock)
}

#[test]
fn storage_not_low_is_read_from_the_store_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let rig = open_real(dir.path(), 0); // any free space counts as not low
    let c = SystemConditionType::StorageNotLow;
    assert_eq!(rig.sys.state(c).unwrap(), Some(true));
    assert_eq!(rig.sys.state_source(c).unwrap(), "statvfs");
    // States with no real source yet read unknown, and say so.
    assert_eq!(
        rig.sys
            .state(SystemConditionType::InternetAvailable)
            .unwrap(),
        None
    );
    assert_eq!(
        rig.sys
            .state_source(SystemConditionType::InternetAvailable)
            .unwrap(),
        "unknown"
    );
    let (mut b, id) = app_task("needs-space");
    b.add_condition(c as u32);
    rig.register(&b);
    assert_eq!(
        rig.sys.request(&id, None).unwrap(),
        ApplicationTriggerResult::Allowed
    );
    rig.next_start();
    rig.idle();
}

#[test]
fn storage_low_latches_a_task_that_needs_space() {
    let dir = tempfile::tempdir().unwrap();
    let rig = open_real(dir.path(), 100); // never more than all of it: always low
    let c = SystemConditionType::StorageNotLow;
    assert_eq!(rig.sys.state(c).unwrap(), Some(false));
    let (mut b, id) = app_task("needs-space");
    b.add_condition(c as u32);
    rig.register(&b);
    rig.sys.request(&id, None).unwrap();
    rig.idle();
    rig.no_start();
}

#[test]
fn a_simulated_system_answers_from_what_the_app_set() {
    let rig = Rig::open(policy());
    let c = SystemConditionType::StorageNotLow;
    assert_eq!(rig.sys.state_source(c).unwrap(), "simulated");
    assert_eq!(rig.sys.state(c).unwrap(), None);
    rig.sys.set_state(c, false).unwrap();
    assert_eq!(rig.sys.state(c).unwrap(), Some(false));
}

#[test]
fn a_storage_threshold_above_100_is_refused() {
    let err = Policy {
        storage_low_percent: 101,
        ..Policy::default()
    }
    .validate()
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}
