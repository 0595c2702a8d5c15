//! SPEC §4: the bounded worker pool (`max_concurrent`).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use btb_core::*;
use common::rt::*;

/// A counting semaphore the test releases run functions through, one permit at a time.
#[derive(Clone, Default)]
struct Permits(Arc<(Mutex<usize>, Condvar)>);

impl Permits {
    fn release(&self, n: usize) {
        *self.0.0.lock().unwrap() += n;
        self.0.1.notify_all();
    }

    fn take(&self) {
        let guard = self.0.0.lock().unwrap();
        let (mut guard, timeout) = self
            .0
            .1
            .wait_timeout_while(guard, Duration::from_secs(30), |n| *n == 0)
            .unwrap();
        assert!(!timeout.timed_out(), "no permit within 30 s");
        *guard -= 1;
    }
}

/// Counts run functions inside their body and keeps the peak.
#[derive(Clone, Default)]
struct Concurrency {
    active: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl Concurrency {
    fn enter(&self) {
        let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.active.fetch_sub(1, Ordering::SeqCst);
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

#[test]
fn never_more_than_max_concurrent_run_and_every_request_completes() {
    let rig = Rig::open(Policy {
        max_concurrent: 2,
        ..policy()
    });
    let permits = Permits::default();
    let conc = Concurrency::default();
    let mut regs = Vec::new();
    let mut dones = Vec::new();
    let (entered_tx, entered) = mpsc::channel();
    for k in 0..5 {
        let name = format!("job{k}");
        let (b, _) = app_task(&name);
        let reg = rig.register(&b);
        dones.push(completions(&reg));
        regs.push(reg);
        let (p, c) = (permits.clone(), conc.clone());
        let tx = Mutex::new(entered_tx.clone());
        rig.router.on(&name, move |i| {
            c.enter();
            tx.lock().unwrap().send(i.task().name().to_owned()).unwrap();
            p.take();
            c.leave();
        });
    }
    for reg in &regs {
        assert_eq!(
            reg.request(None).unwrap(),
            ApplicationTriggerResult::Allowed
        );
    }
    // Both slots fill at once; the other three wait.
    let mut started = vec![recv(&entered, "first run"), recv(&entered, "second run")];
    assert_eq!(conc.peak(), 2);
    assert!(!rig.sys.wait_idle(Duration::from_millis(50)).unwrap());
    none(&entered, "a third run while both slots are busy");
    // Each released run frees one slot for one waiting request.
    for _ in 0..3 {
        permits.release(1);
        started.push(recv(&entered, "the next run"));
        assert!(conc.peak() <= 2);
    }
    permits.release(2);
    rig.idle();
    none(&entered, "a sixth run");
    started.sort();
    assert_eq!(started, vec!["job0", "job1", "job2", "job3", "job4"]);
    assert_eq!(conc.peak(), 2, "never more than max_concurrent at once");
    for (reg, done) in regs.iter().zip(&dones) {
        assert_eq!(recv(done, "completion").outcome, TaskOutcome::Succeeded);
        assert_eq!(reg.history().unwrap().len(), 1);
    }
}

#[test]
fn fires_released_together_use_every_free_slot_at_once() {
    // Regression: two fires made runnable by one state change, with one worker idle from an
    // earlier run, must both start; before the fix the second waited for the first to end
    // (the idle worker was woken twice, and no second worker was started).
    let rig = Rig::open(Policy {
        max_concurrent: 3,
        ..policy()
    });
    let (b, _) = app_task("warm-up");
    let warm = rig.register(&b);
    warm.request(None).unwrap();
    rig.next_start();
    rig.idle();

    let gate = Gate::new();
    let conc = Concurrency::default();
    let (entered_tx, entered) = mpsc::channel();
    let mut regs = Vec::new();
    for k in 0..3 {
        let name = format!("held{k}");
        let mut b = task(&name, system(SystemTriggerType::UserPresent, false));
        b.add_condition(SystemConditionType::InternetAvailable as u32);
        regs.push(rig.register(&b));
        let (g, c) = (gate.clone(), conc.clone());
        let tx = Mutex::new(entered_tx.clone());
        rig.router.on(&name, move |_i| {
            c.enter();
            tx.lock().unwrap().send(()).unwrap();
            assert!(g.wait());
            c.leave();
        });
    }
    rig.sys.raise_event(SystemTriggerType::UserPresent).unwrap();
    rig.idle();
    rig.no_start();
    rig.sys
        .set_state(SystemConditionType::InternetAvailable, true)
        .unwrap();
    for k in 0..3 {
        recv(&entered, &format!("run {k} inside its run function"));
    }
    assert_eq!(conc.peak(), 3, "all three at once");
    gate.open();
    rig.idle();
    for reg in &regs {
        assert_eq!(reg.history().unwrap().len(), 1);
    }
}

#[test]
fn a_full_pool_latches_timer_fires_until_a_slot_frees() {
    let rig = Rig::open(Policy {
        max_concurrent: 1,
        ..policy()
    });
    // The hog holds the only slot through the pull queue: the test decides when it ends.
    rig.sys
        .register_entry_point(EP_OTHER, Some(Handler::Queued))
        .unwrap();
    let (mut b, _) = app_task("hog");
    b.task_entry_point = Some(EP_OTHER.into());
    let hog = rig.register(&b);
    let timer = rig.register(&task("tick", time(1, false)));
    hog.request(None).unwrap();
    let Some(Event::Run(hog_run)) = rig.sys.next_event(DEADLINE).unwrap() else {
        panic!("expected the hog's run");
    };
    rig.advance(MIN); // due: fired, latched behind the full pool
    assert_eq!(timer.next_due_ms(), Some(T0 + 2 * MIN));
    rig.advance(MIN); // due again: coalesces with the pending fire
    assert_eq!(timer.next_due_ms(), Some(T0 + 3 * MIN));
    rig.advance(30 * SEC);
    assert!(!rig.sys.wait_idle(Duration::from_millis(20)).unwrap());
    rig.no_start();
    hog_run.finish_run().unwrap();
    let run = rig.next_start();
    assert_eq!(run.task_id, timer.task_id());
    assert_eq!(
        run.started_ms,
        T0 + 150 * SEC,
        "started when the slot freed"
    );
    rig.idle();
    assert_eq!(rig.router.count("tick"), 1, "the two fires coalesced");
}

#[test]
fn advance_returns_after_the_broker_has_handled_the_new_time() {
    // Regression: `ManualClock::advance` only woke the broker thread, so what a test saw right
    // after it (a timer fired or not, a limit enforced or not) depended on thread timing.
    let mut p = policy();
    p.set_time_limit(TriggerKind::Application, 60);
    let rig = Rig::open(Policy {
        max_concurrent: 1,
        ..p
    });
    rig.sys
        .register_entry_point(EP_OTHER, Some(Handler::Queued))
        .unwrap();
    let (mut b, _) = app_task("queued");
    b.task_entry_point = Some(EP_OTHER.into());
    let queued = rig.register(&b);
    let timer = rig.register(&task("tick", time(1, false)));
    for k in 1..=100 {
        rig.advance(MIN);
        assert_eq!(
            timer.next_due_ms(),
            Some(T0 + (k + 1) * MIN),
            "after advance {k}"
        );
    }
    rig.idle();
    queued.request(None).unwrap();
    let Some(Event::Run(instance)) = rig.sys.next_event(DEADLINE).unwrap() else {
        panic!("expected a run");
    };
    rig.advance(60 * SEC);
    assert_eq!(
        instance.cancellation_reason(),
        Some(CancellationReason::ExecutionTimeExceeded)
    );
    assert!(matches!(
        rig.sys.next_event(DEADLINE).unwrap(),
        Some(Event::Canceled(
            _,
            CancellationReason::ExecutionTimeExceeded
        ))
    ));
    instance.finish_run().unwrap();
    rig.idle();
}

#[test]
fn the_default_pool_is_one_per_cpu_counted_when_the_broker_opens() {
    // The default (0) leaves the count to the broker: a client never dispatches (SPEC §4).
    assert_eq!(Policy::default().max_concurrent, 0);
    let rig = Rig::open(Policy {
        max_concurrent: 0,
        ..policy()
    });
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    assert_eq!(
        rig.sys.policy().max_concurrent,
        cpus,
        "the broker applies the count"
    );
}
