//! SPEC §4 cancellation: unregister, REPLACE, time limits and grace, deferrals and budgets,
//! cancel_on_condition_loss, close(), and cancellation through the pull queue.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use btb_core::*;
use common::rt::*;

/// A run body that sends its instance, then blocks on `gate`.
fn report_and_block(
    gate: &Gate,
) -> (
    impl Fn(&Instance) + Send + Sync + 'static,
    mpsc::Receiver<Instance>,
) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let gate = gate.clone();
    (
        move |i: &Instance| {
            tx.lock().unwrap().send(i.clone()).unwrap();
            assert!(gate.wait());
        },
        rx,
    )
}

/// A run body that sends its instance and returns as soon as it is canceled (the cooperative task
/// of Windows' samples: a canceled handler sets the flag the work loop watches).
fn report_and_wait_for_cancel() -> (
    impl Fn(&Instance) + Send + Sync + 'static,
    mpsc::Receiver<Instance>,
) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    (
        move |i: &Instance| {
            let gate = Gate::new();
            let g = gate.clone();
            i.add_canceled(Arc::new(move |_i: &Instance, _r| g.open()));
            tx.lock().unwrap().send(i.clone()).unwrap();
            assert!(gate.wait());
        },
        rx,
    )
}

fn limits(kind: TriggerKind, seconds: u32, grace_ms: u32) -> Policy {
    let mut p = Policy {
        grace_ms,
        ..policy()
    };
    p.set_time_limit(kind, seconds);
    p
}

/// A periodic 1-minute timer whose runs prove that the broker has processed each minute (its due
/// timers, limits and grace are handled in one pass, under one lock, before it starts runs).
fn metronome(rig: &Rig) -> Registration {
    rig.register(&task("metronome", time(1, false)))
}

/// Advances one minute and waits for the metronome's run of that minute.
#[track_caller]
fn tick(rig: &Rig, metronome: &Registration) {
    rig.advance(MIN);
    let want = rig.clock.now_ms();
    loop {
        let run = rig.next_start();
        if run.task_id == metronome.task_id() && run.started_ms == want {
            return;
        }
    }
}

#[test]
fn default_limits_follow_windows() {
    let p = Policy::default();
    for (kind, secs) in [
        (TriggerKind::Time, 25),
        (TriggerKind::System, 25),
        (TriggerKind::CustomEvent, 25),
        (TriggerKind::Calendar, 25),
        (TriggerKind::Maintenance, 600),
        (TriggerKind::Application, 600),
    ] {
        assert_eq!(p.time_limit(kind), secs, "{kind:?}");
    }
    assert_eq!(p.grace_ms, 5_000);
}

#[test]
fn unregister_with_cancel_task_aborts_the_running_instance() {
    let rig = Rig::open(policy());
    let (b, trigger) = app_task("victim");
    let reg = rig.register(&b);
    let (body, instances) = report_and_wait_for_cancel();
    rig.router.on("victim", body);
    reg.request(None).unwrap();
    let instance = recv(&instances, "the instance");
    let canceled = on_canceled(&instance);
    assert!(!instance.canceled());

    reg.unregister(true).unwrap();
    assert_eq!(
        instance.cancellation_reason(),
        Some(CancellationReason::Abort)
    );
    assert_eq!(
        recv(&canceled, "canceled handler"),
        (instance.instance_id(), CancellationReason::Abort)
    );
    rig.idle();
    assert!(rig.sys.find(&reg.task_id()).is_err());
    assert_eq!(
        rig.sys.request(&trigger, None).unwrap(),
        ApplicationTriggerResult::UnknownError
    );
    none(&canceled, "second cancellation");
}

#[test]
fn unregister_without_cancel_task_lets_the_instance_finish() {
    let rig = Rig::open(policy());
    let (b, _) = app_task("survivor");
    let reg = rig.register(&b);
    let gate = Gate::new();
    let (body, instances) = report_and_block(&gate);
    rig.router.on("survivor", body);
    reg.request(None).unwrap();
    let instance = recv(&instances, "the instance");
    let canceled = on_canceled(&instance);
    reg.unregister(false).unwrap();
    assert!(rig.sys.find(&reg.task_id()).is_err());
    assert!(!instance.canceled());
    assert!(
        !rig.sys.wait_idle(Duration::from_millis(50)).unwrap(),
        "it still runs"
    );
    gate.open();
    rig.idle();
    assert!(!instance.canceled());
    none(&canceled, "cancellation");
    assert_eq!(
        instance.get_deferral().err().map(|e| e.kind()),
        Some(ErrorKind::State),
        "it completed"
    );
}

#[test]
fn name_policy_replace_cancels_the_old_running_instance_with_abort() {
    let rig = Rig::open(policy());
    let (b, _) = app_task("dup");
    let old = rig.register(&b);
    let (body, instances) = report_and_wait_for_cancel();
    rig.router.on("dup", body);
    old.request(None).unwrap();
    let instance = recv(&instances, "the old instance");
    let canceled = on_canceled(&instance);

    let (mut b, _) = app_task("dup");
    b.name_policy = NamePolicy::Replace as u32;
    let new = rig.register(&b);
    assert_ne!(new.task_id(), old.task_id());
    assert_eq!(
        recv(&canceled, "canceled handler"),
        (instance.instance_id(), CancellationReason::Abort)
    );
    assert!(rig.sys.find(&old.task_id()).is_err());
    rig.idle();
    let names: Vec<_> = rig
        .sys
        .all_tasks()
        .unwrap()
        .iter()
        .map(|r| r.task_id())
        .collect();
    assert_eq!(names, vec![new.task_id()]);
}

#[test]
fn a_time_limit_cancels_then_grace_abandons_and_the_late_result_is_ignored() {
    let rig = Rig::open(limits(TriggerKind::Application, 120, 60_000));
    let (b, _) = app_task("stuck");
    let stuck = rig.register(&b);
    let done = completions(&stuck);
    let gate = Gate::new();
    let (itx, irx) = mpsc::channel();
    let (dtx, drx) = mpsc::channel();
    let (itx, dtx) = (Mutex::new(itx), Mutex::new(dtx));
    let g = gate.clone();
    let runs = AtomicUsize::new(0);
    rig.router.on("stuck", move |i| {
        if runs.fetch_add(1, Ordering::SeqCst) > 0 {
            return; // later runs are quick
        }
        let deferral = i.get_deferral().unwrap();
        itx.lock().unwrap().send(i.clone()).unwrap();
        assert!(g.wait()); // ignores cancellation
        i.set_progress(99);
        i.report_failure("too late to matter");
        dtx.lock().unwrap().send(deferral).unwrap();
    });
    let metronome = metronome(&rig);

    stuck.request(None).unwrap();
    let instance = recv(&irx, "the instance");
    let canceled = on_canceled(&instance);
    tick(&rig, &metronome); // T0 + 1 min: within the limit
    assert!(!instance.canceled());
    none(&canceled, "cancellation before the limit");

    tick(&rig, &metronome); // T0 + 2 min: the limit
    assert_eq!(
        recv(&canceled, "canceled handler"),
        (
            instance.instance_id(),
            CancellationReason::ExecutionTimeExceeded
        )
    );
    assert!(stuck.history().unwrap().is_empty(), "within grace");

    tick(&rig, &metronome); // T0 + 3 min: grace over, abandoned
    let c = recv(&done, "the abandoned completion");
    assert_eq!(c.outcome, TaskOutcome::Canceled);
    assert_eq!(c.reason, Some(CancellationReason::ExecutionTimeExceeded));
    assert_eq!(c.instance_id, instance.instance_id());
    let h = stuck.history().unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].outcome, TaskOutcome::Canceled);
    assert_eq!(h[0].reason, Some(CancellationReason::ExecutionTimeExceeded));
    assert_eq!(h[0].ended_ms, T0 + 3 * MIN);
    metronome.unregister(false).unwrap();
    rig.idle(); // nothing counts as running, although its thread is still blocked
    assert!(!gate.is_open());

    // Its slot and its registration are free again while the thread is still blocked.
    assert_eq!(
        stuck.request(None).unwrap(),
        ApplicationTriggerResult::Allowed
    );
    let again = rig.next_start();
    assert_ne!(again.instance_id, instance.instance_id());
    rig.idle();

    // The late result changes nothing.
    gate.open();
    let deferral = recv(&drx, "the late deferral");
    assert_eq!(deferral.instance().instance_id(), instance.instance_id());
    let _ = deferral.complete();
    rig.idle();
    let h = stuck.history().unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(h[0].instance_id, instance.instance_id());
    assert_eq!(h[0].outcome, TaskOutcome::Canceled);
    assert_eq!(h[0].last_progress, 0);
    assert_eq!(h[1].outcome, TaskOutcome::Succeeded);
    assert_eq!(recv(&done, "the new run").outcome, TaskOutcome::Succeeded);
    none(&done, "a completion of the late result");
}

#[test]
fn one_advance_past_limit_and_grace_cancels_and_abandons() {
    // Regression: the grace used to start when the broker noticed the limit, so a manual clock
    // moved past limit + grace in one step (or in two steps the broker saw as one) left the
    // instance canceled but never abandoned. The grace now runs from the limit: 65 s in all.
    let rig = Rig::open(limits(TriggerKind::Application, 60, 5_000));
    let (b, _) = app_task("stuck");
    let reg = rig.register(&b);
    let done = completions(&reg);
    let gate = Gate::new();
    let (body, rx) = report_and_block(&gate);
    rig.router.on("stuck", body);
    reg.request(None).unwrap();
    let instance = recv(&rx, "instance");
    let canceled = on_canceled(&instance);
    rig.advance(65 * SEC);
    assert_eq!(
        recv(&canceled, "canceled handler").1,
        CancellationReason::ExecutionTimeExceeded
    );
    let c = recv(&done, "the abandoned completion");
    assert_eq!(c.outcome, TaskOutcome::Canceled);
    assert_eq!(c.reason, Some(CancellationReason::ExecutionTimeExceeded));
    rig.idle();
    assert_eq!(reg.history().unwrap()[0].ended_ms, T0 + 65 * SEC);
    gate.open();
    rig.idle();
}

#[test]
fn an_abandoned_instance_frees_its_pool_slot() {
    let rig = Rig::open(Policy {
        max_concurrent: 1,
        ..limits(TriggerKind::Application, 60, 1_000)
    });
    let gate = Gate::new();
    let (b, _) = app_task("stuck");
    let stuck = rig.register(&b);
    let (body, instances) = report_and_block(&gate);
    rig.router.on("stuck", body);
    let (b, _) = app_task("next");
    let next = rig.register(&b);
    let done = completions(&stuck);

    stuck.request(None).unwrap();
    let instance = recv(&instances, "the instance");
    assert_eq!(rig.next_start().task_id, stuck.task_id());
    next.request(None).unwrap(); // waits for the only slot
    rig.advance(60 * SEC);
    rig.advance(SEC);
    let c = recv(&done, "the abandoned completion");
    assert_eq!(c.reason, Some(CancellationReason::ExecutionTimeExceeded));
    let run = rig.next_start();
    assert_eq!(
        run.task_id,
        next.task_id(),
        "the slot went to the waiting run"
    );
    assert_eq!(run.started_ms, T0 + 61 * SEC);
    rig.idle();
    assert!(instance.canceled());
    gate.open();
    rig.idle();
}

#[test]
fn deferrals_do_not_extend_a_time_limit() {
    let rig = Rig::open(limits(TriggerKind::Application, 60, 5_000));
    let (b, _) = app_task("deferring");
    let reg = rig.register(&b);
    let done = completions(&reg);
    rig.router.on("deferring", |i| {
        let d = Mutex::new(Some(i.get_deferral().unwrap()));
        // Completes its deferral when canceled.
        i.add_canceled(Arc::new(move |_i: &Instance, _r| {
            if let Some(d) = d.lock().unwrap().take() {
                d.complete().unwrap();
            }
        }));
    });
    reg.request(None).unwrap();
    rig.next_start();
    assert!(!rig.sys.wait_idle(Duration::from_millis(20)).unwrap());
    rig.advance(60 * SEC);
    let c = recv(&done, "completion");
    assert_eq!(c.outcome, TaskOutcome::Canceled);
    assert_eq!(c.reason, Some(CancellationReason::ExecutionTimeExceeded));
    rig.idle();
    assert_eq!(reg.history().unwrap()[0].ended_ms, T0 + 60 * SEC);
}

#[test]
fn the_budget_starts_afresh_at_each_run() {
    let rig = Rig::open(limits(TriggerKind::Application, 120, 5_000));
    let (b, _) = app_task("budget");
    let reg = rig.register(&b);
    let gates = [Gate::new(), Gate::new()];
    let (itx, irx) = mpsc::channel();
    let itx = Mutex::new(itx);
    let gs = gates.clone();
    let runs = AtomicUsize::new(0);
    rig.router.on("budget", move |i| {
        let k = runs.fetch_add(1, Ordering::SeqCst);
        itx.lock().unwrap().send(i.clone()).unwrap();
        assert!(gs[k.min(1)].wait());
    });
    let metronome = metronome(&rig);

    let c = completions(&reg);
    reg.request(None).unwrap();
    let first = recv(&irx, "first instance");
    tick(&rig, &metronome); // T0 + 1 min
    gates[0].open();
    assert_eq!(recv(&c, "first completion").outcome, TaskOutcome::Succeeded);
    metronome.unregister(false).unwrap();
    rig.idle();
    assert_eq!(reg.history().unwrap()[0].outcome, TaskOutcome::Succeeded);
    assert!(!first.canceled());
    let metronome = rig.register(&task("metronome", time(1, false)));

    reg.request(None).unwrap(); // T0 + 1 min: a fresh 2-minute budget
    let second = recv(&irx, "second instance");
    let canceled = on_canceled(&second);
    tick(&rig, &metronome); // T0 + 2 min: 2 min after the first start, 1 min into this run
    assert!(
        !second.canceled(),
        "the first run's budget does not carry over"
    );
    tick(&rig, &metronome); // T0 + 3 min: 2 min into this run
    assert_eq!(
        recv(&canceled, "canceled handler").1,
        CancellationReason::ExecutionTimeExceeded
    );
    gates[1].open();
    assert_eq!(recv(&c, "completion").outcome, TaskOutcome::Canceled);
    metronome.unregister(false).unwrap();
    rig.idle();
}

#[test]
fn time_limits_are_per_trigger_kind_and_zero_means_none() {
    let mut p = policy();
    p.set_time_limit(TriggerKind::System, 60);
    p.set_time_limit(TriggerKind::CustomEvent, 180);
    p.set_time_limit(TriggerKind::Application, 0);
    let rig = Rig::open(p);
    let sys_reg = rig.register(&task("sys", system(SystemTriggerType::UserAway, false)));
    let custom_reg = rig.register(&task(
        "custom",
        Trigger::CustomEvent {
            trigger_id: "c".into(),
            recurrence: CustomRecurrence::Always as u32,
        },
    ));
    let (b, _) = app_task("app");
    let app_reg = rig.register(&b);
    let mut instances = Vec::new();
    for (name, fire) in [
        (
            "sys",
            Box::new(|| {
                rig.sys.raise_event(SystemTriggerType::UserAway).unwrap();
            }) as Box<dyn Fn()>,
        ),
        (
            "custom",
            Box::new(|| {
                rig.sys.signal_event("c").unwrap();
            }),
        ),
        (
            "app",
            Box::new(|| {
                app_reg.request(None).unwrap();
            }),
        ),
    ] {
        let (body, rx) = report_and_wait_for_cancel();
        rig.router.on(name, body);
        fire();
        let i = recv(&rx, name);
        let c = on_canceled(&i);
        instances.push((i, c));
    }
    let metronome = metronome(&rig);
    tick(&rig, &metronome); // T0 + 1 min
    assert_eq!(
        recv(&instances[0].1, "sys canceled").1,
        CancellationReason::ExecutionTimeExceeded
    );
    tick(&rig, &metronome); // T0 + 2 min
    assert!(!instances[1].0.canceled());
    tick(&rig, &metronome); // T0 + 3 min
    assert_eq!(
        recv(&instances[1].1, "custom canceled").1,
        CancellationReason::ExecutionTimeExceeded
    );
    for _ in 0..3 {
        rig.advance(20 * MIN);
    }
    tick(&rig, &metronome); // an hour later
    assert!(!instances[2].0.canceled(), "limit 0 = none");
    for reg in [&sys_reg, &custom_reg] {
        assert_eq!(
            reg.history().unwrap()[0].reason,
            Some(CancellationReason::ExecutionTimeExceeded)
        );
    }
    app_reg.unregister(true).unwrap();
    metronome.unregister(false).unwrap();
    rig.idle();
}

#[test]
fn condition_loss_cancels_with_condition_loss_and_the_fire_is_not_relatched() {
    let rig = Rig::open(policy());
    let mut b = task("fragile", system(SystemTriggerType::UserPresent, false));
    b.add_condition(SystemConditionType::InternetAvailable as u32);
    b.cancel_on_condition_loss = true;
    let fragile = rig.register(&b);
    let mut b = task("sturdy", system(SystemTriggerType::UserPresent, false));
    b.add_condition(SystemConditionType::InternetAvailable as u32);
    let sturdy = rig.register(&b);
    let fragile_done = completions(&fragile);
    let sturdy_done = completions(&sturdy);
    let (body, fragile_rx) = report_and_wait_for_cancel();
    rig.router.on("fragile", body);
    let gate = Gate::new();
    let (body, sturdy_rx) = report_and_block(&gate);
    rig.router.on("sturdy", body);

    rig.sys
        .set_state(SystemConditionType::InternetAvailable, true)
        .unwrap();
    rig.sys.raise_event(SystemTriggerType::UserPresent).unwrap();
    let fragile_i = recv(&fragile_rx, "fragile instance");
    let sturdy_i = recv(&sturdy_rx, "sturdy instance");

    rig.sys
        .set_state(SystemConditionType::InternetAvailable, false)
        .unwrap();
    assert_eq!(
        fragile_i.cancellation_reason(),
        Some(CancellationReason::ConditionLoss)
    );
    assert!(
        !sturdy_i.canceled(),
        "without cancel_on_condition_loss it runs on"
    );
    let c = recv(&fragile_done, "fragile completion");
    assert_eq!(c.outcome, TaskOutcome::Canceled);
    assert_eq!(c.reason, Some(CancellationReason::ConditionLoss));

    // The condition comes back: the canceled fire is not re-latched.
    rig.sys
        .set_state(SystemConditionType::InternetAvailable, true)
        .unwrap();
    gate.open();
    rig.idle();
    assert_eq!(
        recv(&sturdy_done, "sturdy completion").outcome,
        TaskOutcome::Succeeded
    );
    assert_eq!(rig.router.count("fragile"), 1);
    assert_eq!(rig.router.count("sturdy"), 1);
    assert_eq!(fragile.history().unwrap().len(), 1);
    none(&fragile_done, "a re-run");
}

#[test]
fn a_canceled_handler_added_after_the_cancellation_is_called_at_once_and_can_be_removed() {
    let rig = Rig::open(policy());
    let (b, _) = app_task("late-listener");
    let reg = rig.register(&b);
    let gate = Gate::new();
    let (body, rx) = report_and_block(&gate);
    rig.router.on("late-listener", body);
    reg.request(None).unwrap();
    let instance = recv(&rx, "instance");
    let removed = Arc::new(AtomicUsize::new(0));
    let r2 = Arc::clone(&removed);
    let token = instance.add_canceled(Arc::new(move |_i: &Instance, _r| {
        r2.fetch_add(1, Ordering::SeqCst);
    }));
    assert!(instance.remove_canceled(token));
    assert!(!instance.remove_canceled(token));
    reg.unregister(true).unwrap();
    let late = on_canceled(&instance);
    assert_eq!(recv(&late, "late handler").1, CancellationReason::Abort);
    gate.open();
    rig.idle();
    assert_eq!(removed.load(Ordering::SeqCst), 0);
}

#[test]
fn close_cancels_with_terminating_waits_at_most_grace_and_records_canceled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("close.sqlite3");
    let clock = ManualClock::new(T0).unwrap();
    let app_id = "org.example.rt.close";
    let pol = Policy {
        grace_ms: 200,
        ..policy()
    };
    let rig = Rig::attach(
        open_file(&path, app_id, "1", &clock, pol.clone()),
        clock.clone(),
    );
    let (b, _) = app_task("polite");
    let polite = rig.register(&b);
    let (b, _) = app_task("stuck");
    let stuck = rig.register(&b);
    let (body, polite_rx) = report_and_wait_for_cancel();
    rig.router.on("polite", body);
    let gate = Gate::new();
    let (body, stuck_rx) = report_and_block(&gate);
    rig.router.on("stuck", body);
    let polite_done = completions(&polite);
    let stuck_done = completions(&stuck);
    polite.request(None).unwrap();
    stuck.request(None).unwrap();
    let pi = recv(&polite_rx, "polite instance");
    let si = recv(&stuck_rx, "stuck instance");
    let pc = on_canceled(&pi);
    let sc = on_canceled(&si);

    let started = Instant::now();
    rig.sys.close().unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(150),
        "close waited for the stuck task's grace: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "close took {took:?}");
    assert!(rig.sys.is_closed());
    for (rx, what) in [(&pc, "polite"), (&sc, "stuck")] {
        assert_eq!(recv(rx, what).1, CancellationReason::Terminating);
    }
    for (rx, what) in [(&polite_done, "polite"), (&stuck_done, "stuck")] {
        let c = recv(rx, what);
        assert_eq!(c.outcome, TaskOutcome::Canceled, "{what}");
        assert_eq!(c.reason, Some(CancellationReason::Terminating), "{what}");
    }
    assert_eq!(
        rig.sys.wait_idle(DEADLINE).unwrap_err().kind(),
        ErrorKind::State
    );
    assert_eq!(polite.request(None).unwrap_err().kind(), ErrorKind::State);
    gate.open(); // the abandoned thread ends on a closed system
    drop(rig);

    let sys = open_file(&path, app_id, "1", &clock, pol);
    for reg in [&polite, &stuck] {
        let h = sys.history(&reg.task_id()).unwrap();
        assert_eq!(h.len(), 1, "{}", reg.name());
        assert_eq!(h[0].outcome, TaskOutcome::Canceled);
        assert_eq!(h[0].reason, Some(CancellationReason::Terminating));
    }
    sys.close().unwrap();
    // Closing an idle system returns at once and twice is harmless.
    let started = Instant::now();
    sys.close().unwrap();
    assert!(started.elapsed() < Duration::from_millis(150));
}

#[test]
fn a_queued_instance_hears_its_cancellation_through_the_pull_queue() {
    let rig = Rig::open(limits(TriggerKind::Application, 60, 5_000));
    rig.sys
        .register_entry_point(EP_OTHER, Some(Handler::Queued))
        .unwrap();
    let (mut b, _) = app_task("pulled");
    b.task_entry_point = Some(EP_OTHER.into());
    let reg = rig.register(&b);
    let done = completions(&reg);

    reg.request(None).unwrap();
    let Some(Event::Run(instance)) = rig.sys.next_event(DEADLINE).unwrap() else {
        panic!("expected a run");
    };
    rig.advance(60 * SEC);
    match rig.sys.next_event(DEADLINE).unwrap() {
        Some(Event::Canceled(i, reason)) => {
            assert_eq!(i, instance);
            assert_eq!(reason, CancellationReason::ExecutionTimeExceeded);
        }
        other => panic!("expected a cancellation, got {other:?}"),
    }
    assert!(instance.canceled());
    instance.finish_run().unwrap();
    let c = recv(&done, "completion");
    assert_eq!(c.outcome, TaskOutcome::Canceled);
    assert_eq!(c.reason, Some(CancellationReason::ExecutionTimeExceeded));
    rig.idle();

    // unregister(cancel_task) reaches a queued instance the same way.
    reg.request(None).unwrap();
    let Some(Event::Run(instance)) = rig.sys.next_event(DEADLINE).unwrap() else {
        panic!("expected a run");
    };
    reg.unregister(true).unwrap();
    match rig.sys.next_event(DEADLINE).unwrap() {
        Some(Event::Canceled(i, reason)) => {
            assert_eq!(i, instance);
            assert_eq!(reason, CancellationReason::Abort);
        }
        other => panic!("expected a cancellation, got {other:?}"),
    }
    instance.finish_run().unwrap();
    rig.idle();
    assert!(
        rig.sys
            .next_event(Duration::from_millis(10))
            .unwrap()
            .is_none()
    );
}

#[test]
fn close_returns_once_the_canceled_tasks_end_without_completed_handlers() {
    // Regression: with no completed handler to call, the end of a run woke nothing, so close
    // waited out the whole grace (5 s by default) for a task that stopped at once.
    let rig = Rig::open(Policy {
        grace_ms: 600_000, // ten minutes: waiting it out would miss DEADLINE by far
        ..policy()
    });
    let (b, _) = app_task("polite");
    let polite = rig.register(&b);
    let (body, polite_rx) = report_and_wait_for_cancel();
    rig.router.on("polite", body);
    polite.request(None).unwrap();
    recv(&polite_rx, "polite instance");
    let (tx, closed) = mpsc::channel();
    let sys = rig.sys.clone();
    std::thread::spawn(move || tx.send(sys.close()).unwrap());
    recv(&closed, "close to return once the task ended").unwrap();
}
