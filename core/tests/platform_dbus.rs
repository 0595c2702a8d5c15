//! SPEC §6 over the system bus, end to end: a real dbus-daemon with python-dbusmock's
//! NetworkManager, UPower and logind on it (`common/dbus.rs`), a real (non-simulated) system
//! pointed at that bus, and every assertion made through the broker: `state`, `state_source`,
//! tasks that run, latch, get canceled, and system triggers that fire. Also SPEC §4
//! `is_network_requested` (a logind sleep inhibitor held while the run lasts) and resume from
//! sleep (logind `PrepareForSleep(false)`).
//!
//! Skipped, loudly, without dbus-daemon or python-dbusmock (`make test` sets both up).

mod common;

use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};

use btb_core::*;
use common::dbus::*;
use common::rt::*;
use zbus::Variant;

use SystemConditionType as S;
use SystemTriggerType as T;

/// A real system on `bus`: no sysfs power supplies (so power states come from UPower alone), a
/// manual clock, the rig's router.
fn open(bus: &TestBus, app_id: &str, policy: Policy) -> Rig {
    Rig::on_bus(&bus.address, app_id, policy)
}

fn state(rig: &Rig, c: S) -> Option<bool> {
    rig.sys.state(c).unwrap()
}

fn source(rig: &Rig, c: S) -> &'static str {
    rig.sys.state_source(c).unwrap()
}

/// A task on system trigger `t`: each run is one message on the returned channel.
fn probe(rig: &Rig, name: &str, t: T) -> Receiver<()> {
    let (tx, rx) = mpsc::channel();
    rig.router.on(name, move |_| {
        let _ = tx.send(());
    });
    rig.register(&task(name, system(t, false)));
    rx
}

/// An application-trigger task with `conditions`, requested now: it runs once they all hold.
fn latched(rig: &Rig, name: &str, conditions: &[S]) -> Receiver<()> {
    let (tx, rx) = mpsc::channel();
    rig.router.on(name, move |_| {
        let _ = tx.send(());
    });
    let (mut b, id) = app_task(name);
    for c in conditions {
        b.add_condition(*c as u32);
    }
    rig.register(&b);
    assert_eq!(
        rig.sys.request(&id, None).unwrap(),
        ApplicationTriggerResult::Allowed
    );
    rx
}

#[test]
fn network_manager_decides_internet_and_free_network() {
    let Some(mut bus) = TestBus::start("network_manager_decides_internet_and_free_network") else {
        return;
    };
    bus.mock("networkmanager", NM, None); // State 70, Connectivity 4, no Metered
    let rig = open(&bus, "org.example.nm", policy());
    let nm = bus.client();

    // The first reading is in when `open` returns.
    assert_eq!(state(&rig, S::InternetAvailable), Some(true));
    assert_eq!(source(&rig, S::InternetAvailable), "networkmanager");
    assert_eq!(state(&rig, S::InternetNotAvailable), Some(false));
    assert_eq!(
        state(&rig, S::FreeNetworkAvailable),
        Some(false),
        "Metered unknown: not free"
    );
    assert_eq!(source(&rig, S::FreeNetworkAvailable), "networkmanager");
    let changed = probe(&rig, "network-changed", T::NetworkStateChange);
    let online = probe(&rig, "online", T::InternetAvailable);

    // Metered NO: a free network. (The template has no Metered; adding one emits nothing.)
    nm.call(
        NM,
        NM_PATH,
        MOCK,
        "AddProperty",
        &(NM, "Metered", Variant::from(1u32)),
    );
    nm.set(NM, NM_PATH, NM, "Metered", Variant::from(2u32));
    recv(&changed, "NETWORK_STATE_CHANGE (now unmetered)");
    assert_eq!(state(&rig, S::FreeNetworkAvailable), Some(true));

    // A running task that needs internet, canceled when it goes.
    let (started_tx, started) = mpsc::channel();
    rig.router.on("keeper", move |i| {
        let gate = Gate::new();
        let opened = gate.clone();
        i.add_canceled(Arc::new(move |_, _| opened.open()));
        started_tx.send(()).unwrap();
        assert!(gate.wait(), "never canceled");
    });
    let (mut b, keeper) = app_task("keeper");
    b.add_condition(S::InternetAvailable as u32);
    b.cancel_on_condition_loss = true;
    let done = completions(&rig.register(&b));
    rig.sys.request(&keeper, None).unwrap();
    recv(&started, "keeper to start");
    nm.call(NM, NM_PATH, MOCK, "SetConnectivity", &(1u32,)); // NONE
    let end = recv(&done, "keeper to end");
    assert_eq!(end.outcome, TaskOutcome::Canceled);
    assert_eq!(end.reason, Some(CancellationReason::ConditionLoss));
    recv(&changed, "NETWORK_STATE_CHANGE (offline)");
    assert_eq!(state(&rig, S::InternetAvailable), Some(false));
    assert_eq!(state(&rig, S::FreeNetworkAvailable), Some(false));
    assert_eq!(source(&rig, S::InternetNotAvailable), "networkmanager");

    // A task that needs internet waits for it.
    let later = latched(&rig, "later", &[S::InternetAvailable]);
    rig.idle();
    none(&later, "a run without internet");
    none(&online, "INTERNET_AVAILABLE while offline");
    nm.call(NM, NM_PATH, MOCK, "SetConnectivity", &(4u32,)); // FULL
    recv(&later, "the latched task to run once online");
    recv(&online, "INTERNET_AVAILABLE");
    recv(&changed, "NETWORK_STATE_CHANGE (online)");
    assert_eq!(state(&rig, S::InternetAvailable), Some(true));
    assert_eq!(state(&rig, S::FreeNetworkAvailable), Some(true));

    // Metered YES: still online, no longer free.
    nm.set(NM, NM_PATH, NM, "Metered", Variant::from(1u32));
    recv(&changed, "NETWORK_STATE_CHANGE (metered)");
    assert_eq!(state(&rig, S::FreeNetworkAvailable), Some(false));
    assert_eq!(state(&rig, S::InternetAvailable), Some(true));
    // A property btb does not read changes nothing.
    nm.set(NM, NM_PATH, NM, "WirelessEnabled", Variant::from(false));
    nm.call(NM, NM_PATH, MOCK, "SetGlobalConnectionState", &(60u32,)); // site only: offline
    recv(&changed, "NETWORK_STATE_CHANGE (State 60)");
    assert_eq!(state(&rig, S::InternetAvailable), Some(false));
    rig.idle();
    none(&changed, "a NETWORK_STATE_CHANGE for nothing");
    none(&online, "a second INTERNET_AVAILABLE");
}

/// A task that needs a free network and is canceled when it goes: `started` when it runs, its
/// completion on the second channel.
fn free_network_task(rig: &Rig, name: &str) -> (Receiver<()>, Receiver<Completion>) {
    let (started_tx, started) = mpsc::channel();
    rig.router.on(name, move |i| {
        let gate = Gate::new();
        let opened = gate.clone();
        i.add_canceled(Arc::new(move |_, _| opened.open()));
        let _ = started_tx.send(());
        assert!(gate.wait(), "never canceled");
    });
    let (mut b, id) = app_task(name);
    b.add_condition(S::FreeNetworkAvailable as u32);
    b.cancel_on_condition_loss = true;
    let done = completions(&rig.register(&b));
    rig.sys.request(&id, None).unwrap();
    (started, done)
}

#[test]
fn network_manager_coming_and_going() {
    let Some(mut bus) = TestBus::start("network_manager_coming_and_going") else {
        return;
    };
    let rig = open(&bus, "org.example.nm2", policy());
    let nm = bus.client();
    // Not on the bus: NetworkManager reports nothing (unknown, or the netlink fallback).
    assert_ne!(source(&rig, S::InternetAvailable), "networkmanager");
    assert_ne!(source(&rig, S::FreeNetworkAvailable), "networkmanager");
    // Only NetworkManager can say a network is free: this task runs once its reading is in, and
    // is canceled once it is gone.
    let unmetered = |nm: &Client| {
        nm.call(
            NM,
            NM_PATH,
            MOCK,
            "AddProperty",
            &(NM, "Metered", Variant::from(1u32)),
        );
        nm.set(NM, NM_PATH, NM, "Metered", Variant::from(2u32));
    };
    let (started, done) = free_network_task(&rig, "free");
    rig.idle();
    none(&started, "a run without NetworkManager");

    // It starts: read at once.
    bus.mock("networkmanager", NM, None);
    unmetered(&nm);
    recv(&started, "the task needing a free network to run");
    assert_eq!(state(&rig, S::InternetAvailable), Some(true));
    assert_eq!(source(&rig, S::InternetAvailable), "networkmanager");
    assert_eq!(source(&rig, S::FreeNetworkAvailable), "networkmanager");

    // It leaves: its readings are gone.
    bus.kill_mock(NM);
    let end = recv(&done, "the task to be canceled");
    assert_eq!(end.reason, Some(CancellationReason::ConditionLoss));
    assert_ne!(source(&rig, S::InternetAvailable), "networkmanager");
    assert_ne!(source(&rig, S::FreeNetworkAvailable), "networkmanager");
    assert_ne!(state(&rig, S::FreeNetworkAvailable), Some(true));

    // It comes back: read afresh.
    let (started, _done) = free_network_task(&rig, "free-again");
    bus.mock("networkmanager", NM, None);
    unmetered(&nm);
    recv(&started, "the second task needing a free network to run");
    assert_eq!(source(&rig, S::InternetAvailable), "networkmanager");
    assert_eq!(state(&rig, S::FreeNetworkAvailable), Some(true));
}

#[test]
fn upower_decides_power_and_work_cost() {
    let Some(mut bus) = TestBus::start("upower_decides_power_and_work_cost") else {
        return;
    };
    bus.mock("upower", UPOWER, Some(r#"{"OnBattery": true}"#));
    let rig = open(&bus, "org.example.upower", policy());
    let upower = bus.client();
    assert_eq!(state(&rig, S::OnAcPower), Some(false));
    assert_eq!(source(&rig, S::OnAcPower), "upower");
    assert_eq!(
        state(&rig, S::BatteryNotLow),
        Some(true),
        "no battery present"
    );
    assert_eq!(source(&rig, S::BatteryNotLow), "upower");
    assert_eq!(
        rig.sys.background_work_cost().unwrap(),
        Some(BackgroundWorkCostValue::Medium)
    );
    let power = probe(&rig, "power", T::PowerStateChange);
    let cost = probe(&rig, "cost", T::BackgroundWorkCostChange);
    let on_ac = latched(&rig, "on-ac", &[S::OnAcPower]);

    upower.set(
        UPOWER,
        UPOWER_PATH,
        UPOWER,
        "OnBattery",
        Variant::from(false),
    );
    recv(&power, "POWER_STATE_CHANGE (plugged in)");
    recv(&on_ac, "the task waiting for AC to run");
    assert_eq!(state(&rig, S::OnAcPower), Some(true));
    upower.set(
        UPOWER,
        UPOWER_PATH,
        UPOWER,
        "OnBattery",
        Variant::from(true),
    );
    recv(&power, "POWER_STATE_CHANGE (unplugged)");
    assert_eq!(state(&rig, S::OnAcPower), Some(false));
    rig.idle();
    none(
        &cost,
        "a work cost change (MEDIUM either way: no free network is known)",
    );

    // The battery runs low: WarningLevel 3 on the display device.
    upower.call(
        UPOWER,
        UPOWER_PATH,
        MOCK,
        "SetupDisplayDevice",
        &(
            2u32,
            2u32,
            15.0f64,
            10.0f64,
            100.0f64,
            5.0f64,
            900i64,
            0i64,
            true,
            "battery-caution",
            3u32,
        ),
    );
    recv(&power, "POWER_STATE_CHANGE (battery low)");
    recv(&cost, "BACKGROUND_WORK_COST_CHANGE (HIGH)");
    assert_eq!(state(&rig, S::BatteryNotLow), Some(false));
    assert_eq!(state(&rig, S::BackgroundWorkCostNotHigh), Some(false));
    assert_eq!(
        rig.sys.background_work_cost().unwrap(),
        Some(BackgroundWorkCostValue::High)
    );
    rig.idle();
    none(&power, "a second POWER_STATE_CHANGE");
    none(&cost, "a second BACKGROUND_WORK_COST_CHANGE");
}

#[test]
fn logind_decides_session_presence_and_idleness() {
    let Some(mut bus) = TestBus::start("logind_decides_session_presence_and_idleness") else {
        return;
    };
    bus.mock("logind", LOGIND, None);
    let rig = open(&bus, "org.example.logind", policy());
    let logind = bus.client();
    let uid = rustix::process::getuid().as_raw();
    for c in [S::SessionConnected, S::UserPresent, S::DeviceIdle] {
        assert_eq!(state(&rig, c), Some(false), "{c:?} with no session");
        assert_eq!(source(&rig, c), "logind");
    }
    let connected = probe(&rig, "connected", T::SessionConnected);
    let present = probe(&rig, "present", T::UserPresent);
    let away = probe(&rig, "away", T::UserAway);
    let idle = latched(&rig, "idle", &[S::DeviceIdle]);

    // Another user's session is none of ours.
    logind.add_session("c0", uid + 1, true);
    let session = logind.add_session("c1", uid, true);
    recv(&connected, "SESSION_CONNECTED");
    recv(&present, "USER_PRESENT");
    assert_eq!(state(&rig, S::SessionConnected), Some(true));
    assert_eq!(state(&rig, S::UserPresent), Some(true));
    assert_eq!(state(&rig, S::UserNotPresent), Some(false));

    logind.set(
        LOGIND,
        &session,
        LOGIND_SESSION,
        "IdleHint",
        Variant::from(true),
    );
    recv(&away, "USER_AWAY (idle)");
    assert_eq!(state(&rig, S::UserPresent), Some(false));
    assert_eq!(state(&rig, S::SessionConnected), Some(true));
    logind.set(
        LOGIND,
        &session,
        LOGIND_SESSION,
        "IdleHint",
        Variant::from(false),
    );
    recv(&present, "USER_PRESENT (back)");
    logind.call(LOGIND, &session, LOGIND_SESSION, "SetLockedHint", &(true,));
    recv(&away, "USER_AWAY (locked)");
    assert_eq!(state(&rig, S::UserPresent), Some(false));

    rig.idle();
    none(&idle, "a run while the device is busy");
    logind.set(
        LOGIND,
        LOGIND_PATH,
        LOGIND_MANAGER,
        "IdleHint",
        Variant::from(true),
    );
    recv(&idle, "the task waiting for DEVICE_IDLE");
    assert_eq!(state(&rig, S::DeviceIdle), Some(true));

    let disconnected = latched(&rig, "disconnected", &[S::SessionDisconnected]);
    rig.idle();
    none(&disconnected, "a run while connected");
    logind.remove_session("c1", &session);
    recv(&disconnected, "the task waiting for SESSION_DISCONNECTED");
    assert_eq!(state(&rig, S::SessionConnected), Some(false));
    rig.idle();
    none(&connected, "a second SESSION_CONNECTED");
    none(&present, "a third USER_PRESENT");
    none(&away, "a third USER_AWAY");
}

/// What a run saw: whether the network was granted, and logind's inhibitors meanwhile.
type Seen = (bool, Vec<(String, String, String, String, u32, u32)>);

/// A task with `is_network_requested` whose run reports what it saw and then blocks on `gate`;
/// requested at once. Returns the registration, what its run saw, and its completion.
fn network_task(
    rig: &Rig,
    name: &str,
    client: Option<Client>,
    gate: &Gate,
) -> (Registration, Receiver<Seen>, Receiver<Completion>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let gate = gate.clone();
    rig.router.on(name, move |i| {
        let inhibitors = client
            .as_ref()
            .map(Client::list_inhibitors)
            .unwrap_or_default();
        let _ = tx
            .lock()
            .unwrap()
            .send((i.is_network_granted(), inhibitors));
        gate.wait();
    });
    let (mut b, id) = app_task(name);
    b.is_network_requested = true;
    let reg = rig.register(&b);
    let done = completions(&reg);
    rig.sys.request(&id, None).unwrap();
    (reg, rx, done)
}

/// Waits until logind lists no inhibitor. It drops one when it sees the hang-up of the pipe, in
/// its own time, and says so to no one: ask until the list is empty (each ask a round trip).
#[track_caller]
fn released(logind: &Client, when: &str) {
    let deadline = std::time::Instant::now() + DEADLINE;
    while !logind.list_inhibitors().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the inhibitor still held {DEADLINE:?} after the run ended ({when})"
        );
    }
}

#[test]
fn a_network_request_holds_a_sleep_inhibitor_while_the_run_lasts() {
    let Some(mut bus) =
        TestBus::start("a_network_request_holds_a_sleep_inhibitor_while_the_run_lasts")
    else {
        return;
    };
    bus.mock("logind", LOGIND, None);
    let app = "org.example.inhibit";
    let rig = open(&bus, app, policy());
    let logind = bus.client();
    let held = |why: &str| {
        vec![(
            "sleep".to_owned(),
            app.to_owned(),
            why.to_owned(),
            "block".to_owned(),
            1000, // the mock's fixed uid and pid
            123456,
        )]
    };

    // A run that succeeds.
    let gate = Gate::new();
    let (_, seen, done) = network_task(&rig, "sync", Some(logind.clone()), &gate);
    let (granted, inhibitors) = recv(&seen, "the run to start");
    assert!(granted, "is_network_granted with logind on the bus");
    assert_eq!(inhibitors, held("background task sync"));
    gate.open();
    assert_eq!(
        recv(&done, "the run to end").outcome,
        TaskOutcome::Succeeded
    );
    released(&logind, "when the run ended");

    // A run that is canceled and ignores it: abandoned once its grace is over, and released then,
    // while its run function is still blocked.
    let stuck = Gate::new();
    let (reg, seen, done) = network_task(&rig, "stuck", Some(logind.clone()), &stuck);
    let (granted, inhibitors) = recv(&seen, "the stuck run to start");
    assert!(granted);
    assert_eq!(inhibitors, held("background task stuck"));
    rig.sys.unregister(&reg.task_id(), true).unwrap();
    rig.advance(i64::from(Policy::default().grace_ms));
    let end = recv(&done, "the stuck run to be abandoned");
    assert_eq!(end.outcome, TaskOutcome::Canceled);
    released(&logind, "when the run was abandoned");
    stuck.open();
}

#[test]
fn without_logind_a_network_request_is_not_granted_and_the_task_runs() {
    let Some(bus) =
        TestBus::start_bare("without_logind_a_network_request_is_not_granted_and_the_task_runs")
    else {
        return;
    };
    let rig = open(&bus, "org.example.nologind", policy());
    let gate = Gate::new();
    gate.open();
    let (_, seen, done) = network_task(&rig, "sync", None, &gate);
    let (granted, _) = recv(&seen, "the run to start");
    assert!(!granted, "no logind: no inhibitor");
    assert_eq!(
        recv(&done, "the run to end").outcome,
        TaskOutcome::Succeeded
    );
}

#[test]
fn resume_from_sleep_runs_what_came_due_at_once() {
    let Some(mut bus) = TestBus::start("resume_from_sleep_runs_what_came_due_at_once") else {
        return;
    };
    bus.mock("logind", LOGIND, None);
    // Timers may run up to 15 minutes after they are due (Windows' window): the broker waits for
    // the window's end to batch wake-ups, unless the machine just woke up anyway.
    let rig = open(
        &bus,
        "org.example.resume",
        Policy {
            timer_window_seconds: 15 * 60,
            ..policy()
        },
    );
    let logind = bus.client();
    let (tx, ran) = mpsc::channel();
    rig.router.on("hourly", move |_| {
        let _ = tx.send(());
    });
    rig.register(&task("hourly", time(60, false)));
    rig.advance_idle(60 * MIN + SEC);
    none(&ran, "a run before its window ends");

    let sleep = |start: bool| {
        logind.emit(
            LOGIND,
            LOGIND_PATH,
            LOGIND_MANAGER,
            "PrepareForSleep",
            "b",
            vec![Variant::from(start)],
        )
    };
    // Going to sleep is no resume. (The DEVICE_IDLE change after it, heard in order, tells when
    // btb has handled the signal.)
    let idle = latched(&rig, "idle", &[S::DeviceIdle]);
    sleep(true);
    logind.set(
        LOGIND,
        LOGIND_PATH,
        LOGIND_MANAGER,
        "IdleHint",
        Variant::from(true),
    );
    recv(&idle, "DEVICE_IDLE after PrepareForSleep(true)");
    rig.idle();
    none(&ran, "a run on PrepareForSleep(true)");

    sleep(false);
    recv(&ran, "the due timer to run on resume");
}
