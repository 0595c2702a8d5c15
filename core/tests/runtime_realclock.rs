//! The real clock path (monotonic waits against wall-clock due times) with short real timers. Every
//! wait is a channel receive with a deadline; nothing sleeps.

mod common;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use btb_core::*;
use common::rt::*;

const REAL_DEADLINE: Duration = Duration::from_secs(5);

fn open_real(policy: Policy) -> (System, Router, mpsc::Receiver<Run>) {
    let sys = System::open(SystemOptions {
        manifest: Some(manifest("org.example.rt.real", "1")),
        store: StoreLocation::Memory,
        clock: Clock::Real,
        simulated: true,
        policy,
        paused: false,
        ..SystemOptions::default()
    })
    .unwrap();
    let (router, starts) = Router::new();
    sys.register_entry_point(EP, Some(router.handler()))
        .unwrap();
    (sys, router, starts)
}

fn real_now_ms() -> i64 {
    Clock::Real.now_ms()
}

#[track_caller]
fn recv_real<T>(rx: &mpsc::Receiver<T>, what: &str) -> T {
    rx.recv_timeout(REAL_DEADLINE)
        .unwrap_or_else(|e| panic!("no {what} within {REAL_DEADLINE:?}: {e}"))
}

#[test]
fn an_every_second_calendar_trigger_runs_on_time() {
    let (sys, _router, starts) = open_real(policy());
    // A far-off timer first: the broker plans to sleep until next year and must be woken early.
    sys.register(&task(
        "yearly",
        Trigger::Calendar {
            expression: "yearly".into(),
        },
    ))
    .unwrap();
    let before = real_now_ms();
    let reg = sys
        .register(&task(
            "every-second",
            Trigger::Calendar {
                expression: "*:*:0/1".into(),
            },
        ))
        .unwrap();
    let due = reg.next_due_ms().unwrap();
    assert!(
        due > before && due <= before + 1_000 + 1,
        "due {due}, now {before}"
    );
    assert_eq!(due % 1_000, 0, "whole seconds");

    let first = recv_real(&starts, "first run");
    assert_eq!(first.task_id, reg.task_id());
    assert!(
        first.started_ms >= due,
        "ran {} ms early",
        due - first.started_ms
    );
    let second = recv_real(&starts, "second run");
    assert_eq!(second.task_id, reg.task_id());
    assert!(
        second.started_ms >= first.started_ms.div_euclid(1_000) * 1_000 + 1_000,
        "the next second's run: {} then {}",
        first.started_ms,
        second.started_ms
    );
    reg.unregister(false).unwrap();
    assert!(sys.wait_idle(REAL_DEADLINE).unwrap());
    let h = sys.history(&reg.task_id());
    assert!(h.is_ok());
    sys.close().unwrap();
}

#[test]
fn a_one_second_real_time_limit_cancels_with_execution_time_exceeded() {
    let mut p = policy();
    p.set_time_limit(TriggerKind::Application, 1);
    let (sys, router, _starts) = open_real(p);
    sys.register(&task(
        "yearly",
        Trigger::Calendar {
            expression: "yearly".into(),
        },
    ))
    .unwrap();
    let (b, _) = app_task("slow");
    let reg = sys.register(&b).unwrap();
    let (ctx, crx) = mpsc::channel();
    let ctx = Mutex::new(ctx);
    router.on("slow", move |i| {
        let gate = Gate::new();
        let g = gate.clone();
        let tx = Mutex::new(ctx.lock().unwrap().clone());
        i.add_canceled(Arc::new(move |_i: &Instance, reason| {
            tx.lock().unwrap().send((reason, Instant::now())).unwrap();
            g.open();
        }));
        assert!(gate.wait());
    });
    let done = completions(&reg);
    let started = Instant::now();
    reg.request(None).unwrap();
    let (reason, at) = recv_real(&crx, "cancellation");
    assert_eq!(reason, CancellationReason::ExecutionTimeExceeded);
    let after = at - started;
    assert!(
        after >= Duration::from_millis(900),
        "canceled after {after:?}, before its 1 s limit"
    );
    let c = recv_real(&done, "completion");
    assert_eq!(c.outcome, TaskOutcome::Canceled);
    assert_eq!(c.reason, Some(CancellationReason::ExecutionTimeExceeded));
    assert!(sys.wait_idle(REAL_DEADLINE).unwrap());
    sys.close().unwrap();
}

#[test]
fn a_real_clock_grace_abandons_a_task_that_ignores_its_cancellation() {
    let mut p = Policy {
        grace_ms: 300,
        ..policy()
    };
    p.set_time_limit(TriggerKind::Application, 1);
    let (sys, router, _starts) = open_real(p);
    let (b, _) = app_task("deaf");
    let reg = sys.register(&b).unwrap();
    let gate = Gate::new();
    router.on("deaf", blocking(&gate));
    let done = completions(&reg);
    let started = Instant::now();
    reg.request(None).unwrap();
    let c = recv_real(&done, "the abandoned completion");
    let took = started.elapsed();
    assert_eq!(c.outcome, TaskOutcome::Canceled);
    assert_eq!(c.reason, Some(CancellationReason::ExecutionTimeExceeded));
    assert!(
        took >= Duration::from_millis(1_200),
        "abandoned after {took:?}: limit 1 s + grace 300 ms"
    );
    assert!(!gate.is_open(), "abandoned while its thread still runs");
    assert!(sys.wait_idle(REAL_DEADLINE).unwrap());
    gate.open();
    assert!(sys.wait_idle(REAL_DEADLINE).unwrap());
    assert_eq!(reg.history().unwrap().len(), 1);
    sys.close().unwrap();
}
