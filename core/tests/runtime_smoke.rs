//! First end-to-end checks of the broker: a time trigger under the manual clock, an application
//! trigger with arguments, a latched fire released by a condition, completion and history.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use btb_core::*;

const T0: i64 = 1_900_000_000_000;

fn system() -> (System, ManualClock) {
    let mut m = Manifest::new("org.example.rt", "1").unwrap();
    m.declare(TaskDeclaration::new("t.Timer", &["timer"]).unwrap())
        .unwrap();
    m.declare(TaskDeclaration::new("t.App", &["general"]).unwrap())
        .unwrap();
    let clock = ManualClock::new(T0).unwrap();
    let policy = Policy {
        min_freshness_minutes: 1,
        timer_window_seconds: 0,
        ..Policy::default()
    };
    let s = System::open(SystemOptions {
        manifest: Some(m),
        store: StoreLocation::Memory,
        clock: Clock::Manual(clock.clone()),
        simulated: true,
        policy,
        paused: false,
        ..SystemOptions::default()
    })
    .unwrap();
    (s, clock)
}

#[test]
fn time_trigger_runs_when_the_clock_passes_its_due_time() {
    let (s, clock) = system();
    let runs = Arc::new(Mutex::new(Vec::new()));
    let r2 = Arc::clone(&runs);
    s.register_entry_point(
        "t.Timer",
        Some(Handler::Call(Arc::new(move |i: &Instance| {
            r2.lock().unwrap().push(i.instance_id())
        }))),
    )
    .unwrap();
    let mut b = Builder::new();
    b.name = Some("tick".into());
    b.task_entry_point = Some("t.Timer".into());
    b.set_trigger(Trigger::Time {
        freshness_minutes: 5,
        one_shot: false,
    });
    let reg = s.register(&b).unwrap();
    let done = Arc::new(Mutex::new(Vec::new()));
    let d2 = Arc::clone(&done);
    reg.add_completed(Arc::new(move |_r: &Registration, c: &Completion| {
        d2.lock().unwrap().push(c.clone())
    }))
    .unwrap();

    clock.advance_ms(4 * 60_000).unwrap();
    assert!(s.wait_idle(Duration::from_secs(5)).unwrap());
    assert_eq!(runs.lock().unwrap().len(), 0);
    clock.advance_ms(60_000).unwrap();
    assert!(s.wait_idle(Duration::from_secs(5)).unwrap());
    assert_eq!(runs.lock().unwrap().len(), 1);
    // Three periods at once: one catch-up run, not three.
    clock.advance_ms(15 * 60_000).unwrap();
    assert!(s.wait_idle(Duration::from_secs(5)).unwrap());
    assert_eq!(runs.lock().unwrap().len(), 2);
    let done = done.lock().unwrap();
    assert_eq!(done.len(), 2);
    assert!(done.iter().all(|c| c.outcome == TaskOutcome::Succeeded));
    let history = reg.history().unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].trigger_kind, TriggerKind::Time);
    // Drift-free: the next due time stays on the 5-minute grid from registration.
    assert_eq!(reg.next_due_ms(), Some(T0 + 25 * 60_000));
}

#[test]
fn application_trigger_with_arguments_latches_until_conditions_hold() {
    let (s, _clock) = system();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = Arc::clone(&seen);
    s.register_entry_point(
        "t.App",
        Some(Handler::Call(Arc::new(move |i: &Instance| {
            s2.lock().unwrap().push(i.trigger_details().cloned());
            i.set_progress(50);
        }))),
    )
    .unwrap();
    let trigger = Trigger::application();
    let Trigger::Application { id } = trigger else {
        unreachable!()
    };
    let mut b = Builder::new();
    b.name = Some("upload".into());
    b.task_entry_point = Some("t.App".into());
    b.set_trigger(trigger);
    b.add_condition(SystemConditionType::InternetAvailable as u32);
    let reg = s.register(&b).unwrap();
    let progress = Arc::new(Mutex::new(Vec::new()));
    let p2 = Arc::clone(&progress);
    reg.add_progress(Arc::new(move |_r: &Registration, _i, v| {
        p2.lock().unwrap().push(v)
    }))
    .unwrap();

    let args = serde_json::json!({"file": "a.txt"});
    assert_eq!(
        s.request(&id, Some(args.clone())).unwrap(),
        ApplicationTriggerResult::Allowed
    );
    assert!(s.wait_idle(Duration::from_secs(5)).unwrap());
    assert!(seen.lock().unwrap().is_empty(), "latched: no internet yet");
    s.set_state(SystemConditionType::InternetAvailable, true)
        .unwrap();
    assert!(s.wait_idle(Duration::from_secs(5)).unwrap());
    assert_eq!(*seen.lock().unwrap(), vec![Some(args)]);
    assert_eq!(*progress.lock().unwrap(), vec![50]);
    assert_eq!(reg.history().unwrap()[0].last_progress, 50);
}
