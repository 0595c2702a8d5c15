//! SPEC §3: latched fires, coalescing, one run per registration at a time, application trigger
//! results, system events, custom events and the maintenance trigger's AC rule.

mod common;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use btb_core::*;
use common::rt::*;

fn with_condition(mut b: Builder, c: SystemConditionType) -> Builder {
    b.add_condition(c as u32);
    b
}

#[test]
fn a_fire_with_a_condition_unmet_runs_when_the_condition_holds() {
    let rig = Rig::open(policy());
    let b = with_condition(
        task("latched", system(SystemTriggerType::UserPresent, false)),
        SystemConditionType::InternetAvailable,
    );
    let reg = rig.register(&b);
    let done = completions(&reg);

    // Unknown state does not hold.
    assert_eq!(
        rig.sys.raise_event(SystemTriggerType::UserPresent).unwrap(),
        1
    );
    rig.idle();
    rig.no_start();
    // Known and false does not hold either.
    rig.sys
        .set_state(SystemConditionType::InternetAvailable, false)
        .unwrap();
    rig.idle();
    rig.no_start();
    // An unrelated state changes nothing.
    rig.sys
        .set_state(SystemConditionType::OnAcPower, true)
        .unwrap();
    rig.idle();
    rig.no_start();

    rig.sys
        .set_state(SystemConditionType::InternetAvailable, true)
        .unwrap();
    let run = rig.next_start();
    assert_eq!(run.task_id, reg.task_id());
    rig.idle();
    assert_eq!(recv(&done, "completion").outcome, TaskOutcome::Succeeded);
    rig.no_start();
    // The latch was consumed: toggling the condition does not run it again.
    rig.sys
        .set_state(SystemConditionType::InternetAvailable, false)
        .unwrap();
    rig.sys
        .set_state(SystemConditionType::InternetAvailable, true)
        .unwrap();
    rig.idle();
    rig.no_start();
    assert_eq!(reg.history().unwrap().len(), 1);
}

#[test]
fn several_fires_while_pending_coalesce_into_one_run() {
    let rig = Rig::open(policy());
    let sys_b = with_condition(
        task(
            "coalesce-sys",
            system(SystemTriggerType::NetworkStateChange, false),
        ),
        SystemConditionType::UserPresent,
    );
    let sys_reg = rig.register(&sys_b);
    let custom_b = with_condition(
        task("coalesce-custom", custom("poke", CustomRecurrence::Always)),
        SystemConditionType::UserPresent,
    );
    let custom_reg = rig.register(&custom_b);
    let (b, trigger_id) = app_task("coalesce-app");
    let app_reg = rig.register(&with_condition(b, SystemConditionType::UserPresent));

    assert_eq!(
        rig.sys
            .request(&trigger_id, Some(serde_json::json!({ "n": 0 })))
            .unwrap(),
        ApplicationTriggerResult::Allowed
    );
    for n in 1..5 {
        assert_eq!(
            rig.sys
                .raise_event(SystemTriggerType::NetworkStateChange)
                .unwrap(),
            1
        );
        assert_eq!(rig.sys.signal_event("poke").unwrap(), 1);
        // An application request never coalesces: with a run pending it is refused, so that each
        // ALLOWED answer means exactly one run.
        assert_eq!(
            rig.sys
                .request(&trigger_id, Some(serde_json::json!({ "n": n })))
                .unwrap(),
            ApplicationTriggerResult::CurrentlyRunning,
            "request {n} while a run is pending"
        );
        rig.clock.advance_ms(SEC).unwrap();
    }
    rig.idle();
    rig.no_start();

    rig.sys
        .set_state(SystemConditionType::UserPresent, true)
        .unwrap();
    rig.idle();
    let runs = rig.router.runs();
    assert_eq!(runs.len(), 3, "one run per registration: {runs:?}");
    assert_eq!(rig.router.count("coalesce-sys"), 1);
    assert_eq!(rig.router.count("coalesce-custom"), 1);
    assert_eq!(rig.router.count("coalesce-app"), 1);
    assert_eq!(
        rig.router.runs_of("coalesce-app")[0].details,
        Some(serde_json::json!({ "n": 0 }))
    );
    for r in [&sys_reg, &custom_reg, &app_reg] {
        assert_eq!(r.history().unwrap().len(), 1, "{}", r.name());
    }
}

#[test]
fn a_fire_while_running_stays_pending_and_runs_after() {
    let rig = Rig::open(policy());
    let reg = rig.register(&task(
        "serial",
        system(SystemTriggerType::SessionConnected, false),
    ));
    let gate = Gate::new();
    let g = gate.clone();
    let first = Arc::new(Mutex::new(true));
    rig.router.on("serial", move |_i| {
        let is_first = std::mem::replace(&mut *first.lock().unwrap(), false);
        if is_first {
            assert!(g.wait());
        }
    });

    assert_eq!(
        rig.sys
            .raise_event(SystemTriggerType::SessionConnected)
            .unwrap(),
        1
    );
    let run1 = rig.next_start();
    assert_eq!(run1.started_ms, T0);
    // Three more fires while it runs: they coalesce into one pending fire.
    for _ in 0..3 {
        rig.sys
            .raise_event(SystemTriggerType::SessionConnected)
            .unwrap();
    }
    rig.advance(MIN);
    gate.open();
    let run2 = rig.next_start();
    rig.idle();
    rig.no_start();
    let history = reg.history().unwrap();
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(history[0].instance_id, run1.instance_id);
    assert_eq!(history[1].instance_id, run2.instance_id);
    // The second run started when the first ended, not when it was fired.
    assert_eq!(history[0].ended_ms, T0 + MIN);
    assert_eq!(run2.started_ms, T0 + MIN);
    assert!(history[1].started_ms >= history[0].ended_ms);
}

#[test]
fn request_while_running_answers_currently_running_and_is_not_queued() {
    let rig = Rig::open(policy());
    let (b, trigger_id) = app_task("busy");
    let reg = rig.register(&b);
    let gate = Gate::new();
    rig.router.on("busy", blocking(&gate));
    let done = completions(&reg);

    assert_eq!(
        reg.request(Some(serde_json::json!({"n": 1}))).unwrap(),
        ApplicationTriggerResult::Allowed
    );
    rig.next_start();
    for n in 2..5 {
        assert_eq!(
            rig.sys
                .request(&trigger_id, Some(serde_json::json!({ "n": n })))
                .unwrap(),
            ApplicationTriggerResult::CurrentlyRunning
        );
    }
    gate.open();
    rig.idle();
    assert_eq!(recv(&done, "completion").outcome, TaskOutcome::Succeeded);
    rig.no_start();
    none(&done, "completion");
    assert_eq!(
        rig.router.count("busy"),
        1,
        "CURRENTLY_RUNNING queued nothing"
    );

    // Once it ended, a request is allowed again and its arguments reach the instance.
    assert_eq!(
        reg.request(Some(serde_json::json!({"n": 9}))).unwrap(),
        ApplicationTriggerResult::Allowed
    );
    let run = rig.next_start();
    assert_eq!(run.details, Some(serde_json::json!({"n": 9})));
    rig.idle();
    let history = reg.history().unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[1].trigger_details.as_deref(), Some(r#"{"n":9}"#));
}

#[test]
fn request_results_for_policy_unknown_triggers_and_bad_arguments() {
    let rig = Rig::open(Policy {
        allow_application_triggers: false,
        ..policy()
    });
    let (b, trigger_id) = app_task("disabled");
    let reg = rig.register(&b);
    assert_eq!(
        rig.sys.request(&trigger_id, None).unwrap(),
        ApplicationTriggerResult::DisabledByPolicy
    );
    rig.idle();
    rig.no_start();
    drop(reg);

    let rig = Rig::open(policy());
    assert_eq!(
        rig.sys.request(&uuid::Uuid::new_v4(), None).unwrap(),
        ApplicationTriggerResult::UnknownError
    );
    let (b, trigger_id) = app_task("args");
    rig.register(&b);
    let err = rig
        .sys
        .request(&trigger_id, Some(serde_json::json!([1, 2])))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    let timer = rig.register(&task("timer", time(5, false)));
    assert_eq!(
        timer.request(None).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    rig.idle();
    rig.no_start();
}

#[test]
fn raise_event_fires_exactly_the_registrations_of_that_type() {
    let rig = Rig::open(policy());
    let present = rig.register(&task(
        "present",
        system(SystemTriggerType::UserPresent, false),
    ));
    let away = rig.register(&task("away", system(SystemTriggerType::UserAway, false)));
    let sms = rig.register(&task("sms", system(SystemTriggerType::SmsReceived, true)));
    let present2 = rig.register(&task(
        "present2",
        system(SystemTriggerType::UserPresent, false),
    ));

    assert_eq!(
        rig.sys.raise_event(SystemTriggerType::UserPresent).unwrap(),
        2
    );
    rig.idle();
    assert_eq!(rig.router.count("present"), 1);
    assert_eq!(rig.router.count("present2"), 1);
    assert_eq!(rig.router.count("away"), 0);
    assert_eq!(rig.router.count("sms"), 0);

    assert_eq!(
        rig.sys
            .raise_event(SystemTriggerType::TimeZoneChange)
            .unwrap(),
        0
    );
    assert_eq!(rig.sys.raise_event(SystemTriggerType::UserAway).unwrap(), 1);
    // A type btb never produces on Linux can still be raised by the app.
    assert_eq!(
        rig.sys.raise_event(SystemTriggerType::SmsReceived).unwrap(),
        1
    );
    rig.idle();
    assert_eq!(rig.router.count("away"), 1);
    assert_eq!(rig.router.count("sms"), 1);
    // A one-shot system trigger fires once, then stays registered and spent.
    assert!(sms.is_spent());
    assert!(!away.is_spent());
    assert_eq!(
        rig.sys.raise_event(SystemTriggerType::SmsReceived).unwrap(),
        0
    );
    rig.idle();
    assert_eq!(rig.router.count("sms"), 1);
    assert!(rig.sys.find(&sms.task_id()).is_ok());
    for r in [&present, &away, &sms, &present2] {
        let h = r.history().unwrap();
        assert_eq!(h.len(), 1, "{}", r.name());
        assert_eq!(h[0].trigger_kind, TriggerKind::System);
        assert_eq!(h[0].outcome, TaskOutcome::Succeeded);
    }
}

fn custom(id: &str, recurrence: CustomRecurrence) -> Trigger {
    Trigger::CustomEvent {
        trigger_id: id.to_owned(),
        recurrence: recurrence as u32,
    }
}

#[test]
fn custom_event_once_fires_once_per_broker_run_and_always_every_time() {
    let rig = Rig::open(policy());
    let once = rig.register(&task("once", custom("sync-now", CustomRecurrence::Once)));
    let always = rig.register(&task(
        "always",
        custom("sync-now", CustomRecurrence::Always),
    ));
    let other = rig.register(&task("other", custom("other", CustomRecurrence::Always)));

    for round in 0..3 {
        let fired = rig.sys.signal_event("sync-now").unwrap();
        assert_eq!(fired, if round == 0 { 2 } else { 1 }, "round {round}");
        rig.idle();
    }
    assert_eq!(rig.router.count("once"), 1);
    assert_eq!(rig.router.count("always"), 3);
    assert_eq!(rig.router.count("other"), 0);
    assert!(!once.is_spent(), "ONCE is per broker run, not one-shot");
    assert_eq!(once.history().unwrap().len(), 1);
    assert_eq!(always.history().unwrap().len(), 3);
    assert_eq!(other.history().unwrap().len(), 0);
    assert_eq!(rig.sys.signal_event("nobody").unwrap(), 0);
}

#[test]
fn maintenance_trigger_runs_only_on_ac_power_and_is_aborted_when_ac_is_lost() {
    let rig = Rig::open(policy());
    let reg = rig.register(&task(
        "maint",
        Trigger::Maintenance {
            freshness_minutes: 10,
            one_shot: false,
        },
    ));
    let done = completions(&reg);
    let (itx, irx) = mpsc::channel();
    let itx = Mutex::new(itx);
    let gate = Gate::new();
    let g = gate.clone();
    rig.router.on("maint", move |i| {
        itx.lock().unwrap().send(i.clone()).unwrap();
        assert!(g.wait());
    });

    // Due with the power state unknown, then on battery: it waits for AC.
    rig.advance_idle(10 * MIN);
    rig.no_start();
    rig.sys
        .set_state(SystemConditionType::OnAcPower, false)
        .unwrap();
    rig.advance_idle(10 * MIN);
    rig.no_start();

    rig.clock.advance_ms(MIN).unwrap();
    rig.sys
        .set_state(SystemConditionType::OnAcPower, true)
        .unwrap();
    let run = rig.next_start();
    assert_eq!(
        run.started_ms,
        T0 + 21 * MIN,
        "one run for the two missed periods"
    );
    let instance = recv(&irx, "the instance");
    let canceled = on_canceled(&instance);
    assert!(!instance.canceled());

    // Leaving AC power cancels it at once with ABORT.
    rig.sys
        .set_state(SystemConditionType::OnAcPower, false)
        .unwrap();
    assert_eq!(
        instance.cancellation_reason(),
        Some(CancellationReason::Abort)
    );
    assert_eq!(
        recv(&canceled, "the canceled handler"),
        (instance.instance_id(), CancellationReason::Abort)
    );
    gate.open();
    rig.idle();
    let c = recv(&done, "completion");
    assert_eq!(c.outcome, TaskOutcome::Canceled);
    assert_eq!(c.reason, Some(CancellationReason::Abort));
    assert!(c.check_result().is_err());
    let h = reg.history().unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].trigger_kind, TriggerKind::Maintenance);
    assert_eq!(h[0].outcome, TaskOutcome::Canceled);
    assert_eq!(h[0].reason, Some(CancellationReason::Abort));

    // On AC from the start, it runs at its due time (drift-free grid from registration).
    rig.sys
        .set_state(SystemConditionType::OnAcPower, true)
        .unwrap();
    rig.idle();
    rig.no_start();
    assert_eq!(reg.next_due_ms(), Some(T0 + 30 * MIN));
    rig.advance_idle(9 * MIN - 1);
    rig.no_start();
    rig.advance(1);
    let run = rig.next_start();
    assert_eq!(run.started_ms, T0 + 30 * MIN);
    rig.idle();
}

#[test]
fn in_process_event_names_follow_the_socket_rule() {
    // Regression: the in-process path accepted a 1 MB or NUL-containing name (and fired nothing)
    // while the control socket refused it. One rule for both: 1-256 bytes, no control character.
    let rig = Rig::open(policy());
    for bad in ["", "a\0b", "a\nb", &"x".repeat(257), &"x".repeat(1 << 20)] {
        let err = rig.sys.signal_event(bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad:.20?}");
    }
    assert_eq!(rig.sys.signal_event(&"x".repeat(256)).unwrap(), 0);
}

#[test]
fn trigger_details_keep_every_float_bit() {
    // Found by fuzzing (fuzz target `trigger_json`): without serde_json's `float_roundtrip`, a
    // float in the arguments reached the run, and came back from the store, 1 ULP off.
    let rig = Rig::open(policy());
    let (b, _) = app_task("floats");
    let reg = rig.register(&b);
    let args = serde_json::json!({ "n": 1.7976931348623157, "m": 5e-324, "k": 0.1 });
    assert_eq!(
        reg.request(Some(args.clone())).unwrap(),
        ApplicationTriggerResult::Allowed
    );
    let run = rig.next_start();
    assert_eq!(run.details.as_ref(), Some(&args));
    rig.idle();
    let text = reg.history().unwrap()[0].trigger_details.clone().unwrap();
    let back: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(back, args, "the stored text {text}");
}
