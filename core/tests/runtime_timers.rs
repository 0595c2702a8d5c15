//! SPEC §3 timers under the manual clock: the timer window, shared wake-ups, drift-free periodic
//! due times, one-shot timers, calendar triggers, timers gated by conditions.

mod common;

use btb_core::*;
use common::rt::*;

/// Advances in `step` increments until a run starts or `limit` is passed; returns the start.
fn step_until_start(rig: &Rig, step: i64, limit: i64) -> Run {
    loop {
        assert!(
            rig.clock.now_ms() <= limit,
            "nothing ran by {} ms after T0",
            limit - T0
        );
        rig.advance_idle(step);
        if let Ok(run) = rig.starts.try_recv() {
            return run;
        }
    }
}

#[test]
fn with_window_zero_a_timer_runs_exactly_at_its_due_time() {
    let rig = Rig::open(policy());
    let reg = rig.register(&task("exact", time(7, true)));
    assert_eq!(reg.next_due_ms(), Some(T0 + 7 * MIN));
    rig.advance_idle(7 * MIN - 1);
    rig.no_start();
    rig.advance(1);
    let run = rig.next_start();
    assert_eq!(run.started_ms, T0 + 7 * MIN);
    rig.idle();
}

#[test]
fn a_due_timer_runs_no_earlier_than_due_and_no_later_than_due_plus_window() {
    let rig = Rig::open(Policy {
        timer_window_seconds: 600,
        ..policy()
    });
    let reg = rig.register(&task("windowed", time(5, true)));
    let run = step_until_start(&rig, 30 * SEC, T0 + 20 * MIN);
    assert!(
        run.started_ms >= T0 + 5 * MIN && run.started_ms <= T0 + 15 * MIN,
        "started {} ms after T0; window is [5 min, 15 min]",
        run.started_ms - T0
    );
    assert_eq!(run.task_id, reg.task_id());
    assert!(reg.is_spent());
    rig.advance_idle(60 * MIN);
    rig.no_start();
}

#[test]
fn due_timers_inside_one_window_share_one_wake_up() {
    let rig = Rig::open(Policy {
        timer_window_seconds: 600,
        ..policy()
    });
    let a = rig.register(&task("a", time(5, true)));
    let b = rig.register(&task("b", time(8, true)));
    // Due after a's window closes: it gets its own wake-up.
    let c = rig.register(&task("c", time(20, true)));

    let first = step_until_start(&rig, 30 * SEC, T0 + 30 * MIN);
    rig.idle();
    let runs = rig.router.runs();
    assert_eq!(runs.len(), 2, "a and b together: {runs:?}");
    let start_of = |name: &str| {
        rig.router
            .runs_of(name)
            .first()
            .map(|r| r.started_ms)
            .unwrap_or_else(|| panic!("{name} did not run"))
    };
    let (sa, sb) = (start_of("a"), start_of("b"));
    assert_eq!(sa, sb, "one wake-up for both");
    assert_eq!(first.started_ms, sa);
    assert!(
        (T0 + 5 * MIN..=T0 + 15 * MIN).contains(&sa),
        "a in its window"
    );
    assert!(
        (T0 + 8 * MIN..=T0 + 18 * MIN).contains(&sb),
        "b in its window"
    );

    let _ = rig.starts.try_recv();
    let third = step_until_start(&rig, 30 * SEC, T0 + 40 * MIN);
    assert_eq!(third.task_id, c.task_id());
    assert!(
        (T0 + 20 * MIN..=T0 + 30 * MIN).contains(&third.started_ms),
        "c in its window"
    );
    assert!(third.started_ms > sa);
    for r in [&a, &b, &c] {
        assert_eq!(r.history().unwrap().len(), 1, "{}", r.name());
    }
}

#[test]
fn periodic_due_times_advance_from_the_previous_due_time_even_when_runs_end_late() {
    let rig = Rig::open(policy());
    let reg = rig.register(&task("periodic", time(5, false)));
    let gate = Gate::new();
    let g = gate.clone();
    let first = std::sync::atomic::AtomicBool::new(true);
    rig.router.on("periodic", move |_i| {
        if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
            assert!(g.wait());
        }
    });

    rig.advance(5 * MIN);
    let run1 = rig.next_start();
    assert_eq!(run1.started_ms, T0 + 5 * MIN);
    // The first run ends 3 minutes late.
    rig.advance(3 * MIN);
    gate.open();
    rig.idle();
    assert_eq!(reg.history().unwrap()[0].ended_ms, T0 + 8 * MIN);
    assert_eq!(reg.next_due_ms(), Some(T0 + 10 * MIN), "not 8 + 5 = 13");

    rig.advance_idle(2 * MIN - 1);
    rig.no_start();
    rig.advance(1);
    assert_eq!(rig.next_start().started_ms, T0 + 10 * MIN);
    rig.idle();
    rig.advance_idle(5 * MIN);
    assert_eq!(rig.next_start().started_ms, T0 + 15 * MIN);
    assert_eq!(reg.next_due_ms(), Some(T0 + 20 * MIN));
    assert_eq!(reg.history().unwrap().len(), 3);
}

#[test]
fn periodic_due_times_stay_on_their_grid_when_a_window_delays_the_run() {
    let rig = Rig::open(Policy {
        timer_window_seconds: 120,
        ..policy()
    });
    let reg = rig.register(&task("grid", time(10, false)));
    let mut starts = Vec::new();
    for _ in 0..4 {
        starts.push(step_until_start(&rig, 30 * SEC, T0 + 60 * MIN).started_ms);
    }
    for (k, s) in starts.iter().enumerate() {
        let due = T0 + (k as i64 + 1) * 10 * MIN;
        assert!(
            (due..=due + 2 * MIN).contains(s),
            "run {k} at {} min, due at {} min",
            (s - T0) as f64 / MIN as f64,
            (due - T0) / MIN
        );
    }
    assert_eq!(reg.next_due_ms(), Some(T0 + 50 * MIN));
}

#[test]
fn a_periodic_timer_that_missed_many_periods_runs_once_and_keeps_its_grid() {
    let rig = Rig::open(policy());
    let reg = rig.register(&task("missed", time(5, false)));
    rig.advance_idle(5 * MIN * 12 + 2 * MIN);
    assert_eq!(rig.router.count("missed"), 1);
    assert_eq!(reg.next_due_ms(), Some(T0 + 65 * MIN));
}

#[test]
fn a_one_shot_timer_fires_once_and_stays_registered_as_spent() {
    let rig = Rig::open(policy());
    let reg = rig.register(&task("once", time(3, true)));
    assert!(!reg.is_spent());
    rig.advance_idle(3 * MIN);
    assert_eq!(rig.next_start().started_ms, T0 + 3 * MIN);
    assert!(reg.is_spent());
    assert_eq!(reg.next_due_ms(), None);
    rig.advance_idle(24 * 60 * MIN);
    rig.no_start();
    let listed = rig.sys.all_tasks().unwrap();
    assert!(
        listed
            .iter()
            .any(|r| r.task_id() == reg.task_id() && r.is_spent())
    );
    assert_eq!(reg.history().unwrap().len(), 1);
}

#[test]
fn a_timer_due_while_its_condition_fails_runs_when_it_holds_and_keeps_its_grid() {
    let rig = Rig::open(policy());
    let mut b = task("gated", time(5, false));
    b.add_condition(SystemConditionType::FreeNetworkAvailable as u32);
    let reg = rig.register(&b);
    rig.advance_idle(12 * MIN);
    rig.no_start();
    rig.sys
        .set_state(SystemConditionType::FreeNetworkAvailable, true)
        .unwrap();
    assert_eq!(rig.next_start().started_ms, T0 + 12 * MIN);
    rig.idle();
    rig.no_start();
    assert_eq!(reg.next_due_ms(), Some(T0 + 15 * MIN));
}

#[test]
fn calendar_trigger_fires_at_its_next_matching_time() {
    let rig = Rig::open(policy());
    let reg = rig.register(&task(
        "nightly",
        Trigger::Calendar {
            expression: "*-*-* 03:00:00 UTC".into(),
        },
    ));
    // T0 is 2023-11-14T22:13:20Z; the next 03:00 UTC is 2023-11-15T03:00:00Z.
    let due = T0 + 17_200 * SEC;
    assert_eq!(reg.next_due_ms(), Some(due));
    rig.advance_idle(due - T0 - 1);
    rig.no_start();
    rig.advance(1);
    let run = rig.next_start();
    assert_eq!(run.started_ms, due);
    rig.idle();
    assert_eq!(reg.next_due_ms(), Some(due + 24 * 60 * MIN));
    assert!(!reg.is_spent());
    let h = reg.history().unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].trigger_kind, TriggerKind::Calendar);

    // A week passes at once: one catch-up run, then back on the 03:00 grid.
    rig.advance_idle(7 * 24 * 60 * MIN);
    assert_eq!(rig.router.count("nightly"), 2);
    assert_eq!(reg.next_due_ms(), Some(due + 8 * 24 * 60 * MIN));
}

#[test]
fn an_unregistered_timer_never_fires() {
    let rig = Rig::open(policy());
    let reg = rig.register(&task("gone", time(5, false)));
    reg.unregister(false).unwrap();
    rig.advance_idle(60 * MIN);
    rig.no_start();
}

/// Windows' defaults (15-minute trigger, 15-minute window) run the task once every period: a due
/// time whose window is still open is not a missed one, so coalescing never halves the rate.
#[test]
fn a_window_as_long_as_the_period_still_runs_every_period() {
    let rig = Rig::open(Policy {
        min_freshness_minutes: 15,
        timer_window_seconds: 15 * 60,
        ..policy()
    });
    rig.register(&task("quarter-hour", time(15, false)));
    for _ in 0..120 {
        rig.advance_idle(MIN);
    }
    let starts: Vec<i64> = rig
        .router
        .runs()
        .iter()
        .map(|r| (r.started_ms - T0) / MIN)
        .collect();
    // Due at 15, 30, …, 105 (the one due at 120 may wait until 135): each within its window.
    assert_eq!(
        starts,
        vec![30, 45, 60, 75, 90, 105, 120],
        "minutes after registration"
    );
}

/// Opens a rig on a manual clock standing at `start_ms`.
fn rig_at(start_ms: i64, store: StoreLocation) -> Rig {
    let clock = ManualClock::new(start_ms).unwrap();
    let sys = System::open(options("org.example.rt.end", "1", store, &clock, policy())).unwrap();
    Rig::attach(sys, clock)
}

#[test]
fn at_the_end_of_time_a_periodic_timer_fires_once_and_then_never() {
    // Regression: due times near i64::MAX wrapped negative and a task ran twice without time
    // moving. Instants are bounded to years 1-9999; a next due time past that is none.
    let rig = rig_at(clock::MAX_INSTANT_MS - MIN, StoreLocation::Memory);
    let reg = rig.register(&task("last", time(1, false)));
    assert_eq!(reg.next_due_ms(), Some(clock::MAX_INSTANT_MS));
    rig.advance_idle(MIN);
    rig.next_start();
    assert_eq!(reg.next_due_ms(), None);
    rig.advance_idle(0);
    rig.no_start();
    let err = rig.clock.advance_ms(1).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert_eq!(rig.clock.now_ms(), clock::MAX_INSTANT_MS);
    // A timer registered now has no due time at all.
    let late = rig.register(&task("later", time(1, true)));
    assert_eq!(late.next_due_ms(), None);
}

#[test]
fn a_stored_due_time_past_the_end_of_time_is_never_planned() {
    // Regression: a hand-edited next_due_ms = i64::MAX overflowed the wake-up computation and the
    // broker spun at ~95 % CPU. Such a due time is dropped at load (with a message).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("end.sqlite3");
    let rig = rig_at(T0, StoreLocation::File(path.clone()));
    let id = rig.register(&task("edited", time(15, false))).task_id();
    rig.sys.close().unwrap();
    drop(rig);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let changed = conn
        .execute("UPDATE registrations SET next_due_ms = ?1", [i64::MAX])
        .unwrap();
    assert_eq!(changed, 1);
    drop(conn);
    let rig = rig_at(T0, StoreLocation::File(path));
    let reg = rig.sys.find(&id).unwrap();
    assert_eq!(reg.next_due_ms(), None);
    rig.advance_idle(60 * MIN);
    rig.no_start();
}
