//! A D-Bus daemon that never answers (SPEC §6, issue "A broker you can leave running", item 4):
//! the watcher's calls end at their deadline, so one hung daemon does not freeze the states of the
//! others; a sleep inhibitor that logind never grants delays only the run that asked for it.
//! Real parts: a private `dbus-daemon` with python-dbusmock's `upower` and `logind` templates,
//! logind's method replaced by one that never returns (`Mock.AddMethod`).

mod common;

use std::sync::mpsc;

use btb_core::*;
use common::dbus::*;
use common::rt::*;
use zbus::Variant;

use SystemConditionType as S;

fn open(bus: &TestBus, app_id: &str) -> Rig {
    Rig::on_bus(&bus.address, app_id, policy())
}

/// Replaces logind's `method` by one that never returns (the mock process then answers nothing).
fn hang(logind: &Client, method: &str, in_sig: &str, out_sig: &str) {
    logind.call(
        LOGIND,
        LOGIND_PATH,
        MOCK,
        "AddMethod",
        &(
            LOGIND_MANAGER,
            method,
            in_sig,
            out_sig,
            "__import__('time').sleep(3600)",
        ),
    );
}

#[test]
fn a_hung_logind_does_not_freeze_the_other_states() {
    let Some(mut bus) = TestBus::start("a_hung_logind_does_not_freeze_the_other_states") else {
        return;
    };
    bus.mock("upower", UPOWER, Some(r#"{"OnBattery": true}"#));
    bus.mock("logind", LOGIND, None);
    let client = bus.client();
    hang(&client, "ListSessions", "", "a(susso)");
    // The first reading waits for logind's sessions: until that call's deadline.
    let rig = open(&bus, "org.example.hung.logind");
    let (tx, on_ac) = mpsc::channel();
    rig.router.on("on-ac", move |_| {
        let _ = tx.send(());
    });
    let (mut b, id) = app_task("on-ac");
    b.add_condition(S::OnAcPower as u32);
    rig.register(&b);
    rig.sys.request(&id, None).unwrap();

    // UPower still reports: the watcher gave up on logind's answer and went on.
    client.set(
        UPOWER,
        UPOWER_PATH,
        UPOWER,
        "OnBattery",
        Variant::from(false),
    );
    recv(&on_ac, "the task waiting for AC to run once UPower says so");
    assert_eq!(rig.sys.state(S::OnAcPower).unwrap(), Some(true));
}

#[test]
fn a_sleep_inhibitor_logind_never_grants_delays_only_its_run() {
    let Some(mut bus) = TestBus::start("a_sleep_inhibitor_logind_never_grants_delays_only_its_run")
    else {
        return;
    };
    bus.mock("upower", UPOWER, Some(r#"{"OnBattery": true}"#));
    bus.mock("logind", LOGIND, None);
    let rig = open(&bus, "org.example.hung.inhibit");
    let client = bus.client();
    hang(&client, "Inhibit", "ssss", "h");

    // A run that asks for the network waits for its inhibitor…
    let (tx, networked) = mpsc::channel();
    rig.router.on("sync", move |i| {
        let _ = tx.send(i.is_network_granted());
    });
    let (mut b, sync) = app_task("sync");
    b.is_network_requested = true;
    rig.register(&b);
    rig.sys.request(&sync, None).unwrap();

    // …while other runs start and the states keep coming.
    let (tx, plain) = mpsc::channel();
    rig.router.on("plain", move |_| {
        let _ = tx.send(());
    });
    let (b, id) = app_task("plain");
    rig.register(&b);
    rig.sys.request(&id, None).unwrap();
    recv(&plain, "a run that needs no inhibitor");
    client.set(
        UPOWER,
        UPOWER_PATH,
        UPOWER,
        "OnBattery",
        Variant::from(false),
    );
    let (tx, on_ac) = mpsc::channel();
    rig.router.on("on-ac", move |_| {
        let _ = tx.send(());
    });
    let (mut b, id) = app_task("on-ac");
    b.add_condition(S::OnAcPower as u32);
    rig.register(&b);
    rig.sys.request(&id, None).unwrap();
    recv(&on_ac, "a run whose condition UPower reported meanwhile");

    // The network run starts once logind's deadline passed, without the inhibitor.
    assert!(
        !recv(&networked, "the run that asked for the network"),
        "logind never granted it"
    );
}
