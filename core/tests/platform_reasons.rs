//! SPEC §4 cancellation reasons that come from the system bus, end to end: a real dbus-daemon
//! with python-dbusmock's logind, UPower and power-profiles-daemon on it (`common/dbus.rs`), a
//! real (non-simulated) system pointed at that bus, and runs of real tasks that get canceled:
//! LOGGING_OFF (our user's last session closes or is removed; `PrepareForShutdown(true)`) and
//! ENERGY_SAVER (power-saver while on battery, for tasks that need power).
//!
//! Skipped, loudly, without dbus-daemon or python-dbusmock (`make test` sets both up).

mod common;

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver};

use btb_core::*;
use common::dbus::*;
use common::rt::*;
use zbus::Variant;

use SystemConditionType as S;

const PROFILES: &str = "org.freedesktop.UPower.PowerProfiles";
const PROFILES_PATH: &str = "/org/freedesktop/UPower/PowerProfiles";
const HADESS_PROFILES: &str = "net.hadess.PowerProfiles";
const HADESS_PROFILES_PATH: &str = "/net/hadess/PowerProfiles";

/// A real system on `bus`: no sysfs power supplies (so power states come from UPower alone), a
/// manual clock, the rig's router.
fn open(bus: &TestBus, app_id: &str) -> Rig {
    let clock = ManualClock::new(T0).unwrap();
    let mut opts = options(app_id, "1", StoreLocation::Memory, &clock, policy());
    opts.simulated = false;
    opts.platform = PlatformOptions {
        system_bus: Some(bus.address.clone()),
        power_supply_root: "/nonexistent/btb-test/power_supply".into(),
        ..PlatformOptions::default()
    };
    Rig::attach(System::open(opts).unwrap(), clock)
}

/// A running task: its run blocks until canceled (or until `release` is opened).
struct Keeper {
    done: Receiver<Completion>,
    release: Gate,
}

/// Registers `b` (named `name`) with a run that blocks until canceled or released; returns once
/// the run started. `start`: what makes it run (a request, a clock advance).
fn keeper(rig: &Rig, name: &str, b: &Builder, start: impl FnOnce()) -> Keeper {
    let (started_tx, started) = mpsc::channel();
    let release = Gate::new();
    let gate = release.clone();
    rig.router.on(name, move |i| {
        let gate = gate.clone();
        let opened = gate.clone();
        i.add_canceled(Arc::new(move |_, _| opened.open()));
        started_tx.send(()).unwrap();
        assert!(gate.wait(), "never canceled nor released");
    });
    let done = completions(&rig.register(b));
    start();
    recv(&started, &format!("{name} to start"));
    Keeper { done, release }
}

/// An application-trigger task with `conditions`, requested and running.
fn requested(rig: &Rig, name: &str, conditions: &[S]) -> Keeper {
    let (mut b, id) = app_task(name);
    for c in conditions {
        b.add_condition(*c as u32);
    }
    keeper(rig, name, &b, || {
        assert_eq!(
            rig.sys.request(&id, None).unwrap(),
            ApplicationTriggerResult::Allowed
        );
    })
}

#[track_caller]
fn canceled(k: &Keeper, reason: CancellationReason, what: &str) {
    let end = recv(&k.done, what);
    assert_eq!(end.outcome, TaskOutcome::Canceled, "{what}");
    assert_eq!(end.reason, Some(reason), "{what}");
}

/// Ends a run that must not have been canceled, and checks it completed.
#[track_caller]
fn completes(k: &Keeper, what: &str) {
    k.release.open();
    let end = recv(&k.done, what);
    assert_eq!(end.outcome, TaskOutcome::Succeeded, "{what}: {end:?}");
    assert_eq!(end.reason, None, "{what}");
}

/// Waits until btb has handled everything the mocks sent so far: flips logind's manager
/// `IdleHint` and waits (with a deadline) until the broker reads the new DEVICE_IDLE. Signals are
/// heard in the order the bus sent them.
fn sync(rig: &Rig, logind: &Client) {
    let idle = !rig.sys.state(S::DeviceIdle).unwrap().unwrap_or(false);
    logind.set(
        LOGIND,
        LOGIND_PATH,
        LOGIND_MANAGER,
        "IdleHint",
        Variant::from(idle),
    );
    let deadline = std::time::Instant::now() + DEADLINE;
    while rig.sys.state(S::DeviceIdle).unwrap() != Some(idle) {
        assert!(
            std::time::Instant::now() < deadline,
            "btb did not hear DEVICE_IDLE {idle} within {DEADLINE:?}"
        );
        std::thread::yield_now();
    }
}

/// Asserts that a run is still going (call after `sync`).
#[track_caller]
fn running(k: &Keeper, what: &str) {
    if let Ok(end) = k.done.try_recv() {
        panic!("{what} ended: {end:?}");
    }
}

#[test]
fn the_last_session_closing_or_removed_cancels_runs_with_logging_off() {
    let Some(mut bus) =
        TestBus::start("the_last_session_closing_or_removed_cancels_runs_with_logging_off")
    else {
        return;
    };
    bus.mock("logind", LOGIND, None);
    let rig = open(&bus, "org.example.logoff");
    let logind = bus.client();
    let uid = rustix::process::getuid().as_raw();
    let first = logind.add_session("c1", uid, true);
    let second = logind.add_session("c2", uid, false);
    sync(&rig, &logind);

    // One session of two closes, another user's ends: the user is still logged in.
    let a = requested(&rig, "a", &[]);
    let state = |path: &str, value: &str| {
        logind.set(LOGIND, path, LOGIND_SESSION, "State", Variant::from(value))
    };
    state(&first, "closing");
    let other = logind.add_session("c0", uid + 1, true);
    logind.remove_session("c0", &other);
    sync(&rig, &logind);
    running(&a, "a run while a session of the user is open");
    // The last one closes.
    state(&second, "closing");
    canceled(
        &a,
        CancellationReason::LoggingOff,
        "a run as the last session closes",
    );

    // Logging in again, and out by removal (no "closing" first).
    logind.remove_session("c1", &first);
    logind.remove_session("c2", &second);
    let third = logind.add_session("c3", uid, true);
    sync(&rig, &logind);
    let b = requested(&rig, "b", &[]);
    logind.remove_session("c3", &third);
    canceled(
        &b,
        CancellationReason::LoggingOff,
        "a run as the session is removed",
    );

    // The machine shuts down while a session is open.
    logind.add_session("c5", uid, true);
    let c = requested(&rig, "c", &[]);
    let shutdown = |going: bool| {
        logind.emit(
            LOGIND,
            LOGIND_PATH,
            LOGIND_MANAGER,
            "PrepareForShutdown",
            "b",
            vec![Variant::from(going)],
        )
    };
    shutdown(true);
    canceled(&c, CancellationReason::LoggingOff, "a run at shutdown");

    // PrepareForShutdown(false), a shutdown called off, cancels nothing.
    let d = requested(&rig, "d", &[]);
    shutdown(false);
    sync(&rig, &logind);
    running(&d, "a run when the shutdown is called off");
    completes(&d, "a run when the shutdown is called off");
}

fn on_battery(upower: &Client, yes: bool) {
    upower.set(UPOWER, UPOWER_PATH, UPOWER, "OnBattery", Variant::from(yes));
}

fn profile(profiles: &Client, name: &str) {
    profiles.set(
        PROFILES,
        PROFILES_PATH,
        PROFILES,
        "ActiveProfile",
        Variant::from(name),
    );
}

#[test]
fn power_saver_on_battery_cancels_the_runs_that_need_power_with_energy_saver() {
    let Some(mut bus) =
        TestBus::start("power_saver_on_battery_cancels_the_runs_that_need_power_with_energy_saver")
    else {
        return;
    };
    bus.mock("logind", LOGIND, None); // for `sync`
    bus.mock("upower", UPOWER, Some(r#"{"OnBattery": false}"#));
    bus.mock("upower_power_profiles_daemon", PROFILES, None);
    let rig = open(&bus, "org.example.saver");
    let client = bus.client();
    assert_eq!(rig.sys.state(S::OnAcPower).unwrap(), Some(true));

    // First: the clock moves 15 minutes to start it (past the time limit of any run before).
    let maintenance = {
        let b = task(
            "maintenance",
            Trigger::Maintenance {
                freshness_minutes: 15,
                one_shot: true,
            },
        );
        keeper(&rig, "maintenance", &b, || rig.advance(15 * MIN))
    };
    let ac = requested(&rig, "ac", &[S::OnAcPower]);
    let battery = requested(&rig, "battery", &[S::BatteryNotLow]);
    let plain = requested(&rig, "plain", &[]);

    // Power saver on AC: nothing is canceled.
    profile(&client, "power-saver");
    sync(&rig, &client);
    for (k, what) in [
        (&ac, "ac"),
        (&battery, "battery"),
        (&maintenance, "maintenance"),
    ] {
        running(k, &format!("{what} on AC under power saver"));
    }
    // Unplugged under power saver.
    on_battery(&client, true);
    canceled(&ac, CancellationReason::EnergySaver, "ON_AC_POWER's run");
    canceled(
        &battery,
        CancellationReason::EnergySaver,
        "BATTERY_NOT_LOW's run",
    );
    canceled(
        &maintenance,
        CancellationReason::EnergySaver,
        "the maintenance run (energy saver, not the ABORT of a maintenance task off AC)",
    );
    sync(&rig, &client);
    completes(&plain, "a run that needs no power");

    // On battery already, power saver starts.
    profile(&client, "balanced");
    sync(&rig, &client);
    let battery = requested(&rig, "battery-2", &[S::BatteryNotLow]);
    let plain = requested(&rig, "plain-2", &[]);
    profile(&client, "power-saver");
    canceled(
        &battery,
        CancellationReason::EnergySaver,
        "as power saver starts",
    );
    sync(&rig, &client);
    completes(&plain, "a run that needs no power, again");
}

/// power-profiles-daemon before 0.20 has only its own name.
#[test]
fn the_old_power_profiles_name_is_heard_too() {
    let Some(mut bus) = TestBus::start("the_old_power_profiles_name_is_heard_too") else {
        return;
    };
    bus.mock("upower", UPOWER, Some(r#"{"OnBattery": true}"#));
    bus.mock("power_profiles_daemon", HADESS_PROFILES, None);
    let rig = open(&bus, "org.example.hadess");
    let profiles = bus.client();
    let battery = requested(&rig, "battery", &[S::BatteryNotLow]);
    profiles.set(
        HADESS_PROFILES,
        HADESS_PROFILES_PATH,
        HADESS_PROFILES,
        "ActiveProfile",
        Variant::from("power-saver"),
    );
    canceled(
        &battery,
        CancellationReason::EnergySaver,
        "under net.hadess's power saver",
    );
}
