//! SPEC §4: entry-point resolution, outcomes, deferrals, progress, completion and history,
//! handlers calling back into btb, removing handlers, the pull queue.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use btb_core::*;
use common::rt::*;

fn call(f: impl Fn(&Instance) + Send + Sync + 'static) -> Handler {
    Handler::Call(Arc::new(f))
}

fn tagged(tx: &mpsc::Sender<&'static str>, tag: &'static str) -> Handler {
    let tx = Mutex::new(tx.clone());
    call(move |_i| {
        let _ = tx.lock().unwrap().send(tag);
    })
}

fn with_ep(name: &str, ep: &str) -> (Builder, uuid::Uuid) {
    let (mut b, id) = app_task(name);
    b.task_entry_point = Some(ep.to_owned());
    (b, id)
}

#[test]
fn a_registered_handler_wins_over_the_resolver_and_the_resolver_serves_the_rest() {
    let rig = Rig::open(policy());
    let (tx, rx) = mpsc::channel();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let (a2, rtx) = (Arc::clone(&asked), Mutex::new(tx.clone()));
    rig.sys
        .set_entry_point_resolver(Some(Arc::new(move |ep: &str| {
            a2.lock().unwrap().push(ep.to_owned());
            let tx = rtx.lock().unwrap().clone();
            Some(tagged(&tx, "resolved"))
        })))
        .unwrap();
    rig.sys
        .register_entry_point(EP_OTHER, Some(tagged(&tx, "registered")))
        .unwrap();
    let (b, _) = with_ep("other", EP_OTHER);
    let other = rig.register(&b);
    let (b, _) = with_ep("unhandled", EP_UNHANDLED);
    let unhandled = rig.register(&b);

    other.request(None).unwrap();
    assert_eq!(recv(&rx, "a run"), "registered");
    rig.idle();
    assert!(
        asked.lock().unwrap().is_empty(),
        "resolver asked: {asked:?}"
    );

    unhandled.request(None).unwrap();
    assert_eq!(recv(&rx, "a run"), "resolved");
    rig.idle();
    assert_eq!(*asked.lock().unwrap(), vec![EP_UNHANDLED.to_owned()]);
    for r in [&other, &unhandled] {
        assert_eq!(r.history().unwrap()[0].outcome, TaskOutcome::Succeeded);
    }
    none(&rx, "run");
}

#[test]
fn tasks_without_entry_point_use_their_group_handler_before_the_system_handler() {
    let rig = Rig::open(policy());
    let (tx, rx) = mpsc::channel();
    rig.sys
        .set_background_activated(None, Some(tagged(&tx, "system")))
        .unwrap();
    rig.sys
        .set_background_activated(Some("g"), Some(tagged(&tx, "group g")))
        .unwrap();
    let mk = |name: &str, group: Option<&str>| {
        let (mut b, _) = app_task(name);
        b.task_entry_point = None;
        b.task_group = group.map(|g| TaskGroup::new(g, None).unwrap());
        rig.register(&b)
    };
    let in_g = mk("in-g", Some("g"));
    let in_h = mk("in-h", Some("h"));
    let loose = mk("loose", None);
    // An entry point never falls back to activation handlers.
    let (b, _) = with_ep("with-ep", EP_UNHANDLED);
    let with_ep = rig.register(&b);

    for (reg, want) in [(&in_g, "group g"), (&in_h, "system"), (&loose, "system")] {
        reg.request(None).unwrap();
        assert_eq!(recv(&rx, "a run"), want, "{}", reg.name());
        rig.idle();
    }
    with_ep.request(None).unwrap();
    rig.idle();
    none(&rx, "run");
    assert!(
        with_ep.history().unwrap().is_empty(),
        "it waits for a handler of its entry point (SPEC §12)"
    );

    // Without the group's handler, the group's task falls back to the system's.
    rig.sys.set_background_activated(Some("g"), None).unwrap();
    in_g.request(None).unwrap();
    assert_eq!(recv(&rx, "a run"), "system");
    rig.idle();
}

#[test]
fn nothing_found_fails_with_a_message_naming_what_was_looked_for_and_the_registration_stays() {
    let rig = Rig::open(policy());
    // A resolver that knows nothing: the run fails, and the message says what was asked.
    rig.sys
        .set_entry_point_resolver(Some(Arc::new(|_ep: &str| None)))
        .unwrap();
    let (b, _) = with_ep("lost", EP_UNHANDLED);
    let lost = rig.register(&b);
    let done = completions(&lost);
    lost.request(None).unwrap();
    rig.idle();
    let c = recv(&done, "completion");
    assert_eq!(c.outcome, TaskOutcome::Failed);
    let msg = c.message.clone().unwrap();
    assert!(msg.contains(EP_UNHANDLED), "{msg}");
    assert!(msg.contains("in-process handler"), "{msg}");
    assert_eq!(c.check_result().unwrap_err().message(), msg);
    assert!(
        rig.sys.find(&lost.task_id()).is_ok(),
        "the registration stays"
    );
    let h = lost.history().unwrap();
    assert_eq!(h[0].outcome, TaskOutcome::Failed);
    assert_eq!(h[0].message.as_deref(), Some(msg.as_str()));

    assert!(msg.contains("importable"), "the resolver was asked: {msg}");

    // No entry point, and the activation handlers went away after registration.
    rig.sys
        .set_background_activated(Some("grp"), Some(call(|_| {})))
        .unwrap();
    let (mut b, _) = app_task("orphan");
    b.task_entry_point = None;
    b.task_group = Some(TaskGroup::new("grp", None).unwrap());
    let orphan = rig.register(&b);
    rig.sys.set_background_activated(Some("grp"), None).unwrap();
    let done = completions(&orphan);
    orphan.request(None).unwrap();
    rig.idle();
    let c = recv(&done, "completion");
    assert_eq!(c.outcome, TaskOutcome::Failed);
    let msg = c.message.unwrap();
    assert!(
        msg.contains("orphan") && msg.contains("background-activated") && msg.contains("grp"),
        "{msg}"
    );
    assert!(rig.sys.find(&orphan.task_id()).is_ok());
}

#[test]
fn outcomes_succeeded_failed_by_report_and_failed_by_panic() {
    let rig = Rig::open(policy());
    let (b, _) = app_task("ok");
    let ok = rig.register(&b);
    let (b, _) = app_task("reported");
    let reported = rig.register(&b);
    let (b, _) = app_task("panics");
    let panics = rig.register(&b);
    rig.router.on("reported", |i| {
        i.report_failure("first");
        i.report_failure("disk full");
    });
    rig.router.on("panics", |i| {
        i.set_progress(7);
        panic!("kaboom {}", 42);
    });
    let want = [
        (&ok, TaskOutcome::Succeeded, None),
        (&reported, TaskOutcome::Failed, Some("disk full")),
        (&panics, TaskOutcome::Failed, Some("kaboom 42")),
    ];
    for (reg, outcome, message) in want {
        let done = completions(reg);
        reg.request(None).unwrap();
        rig.idle();
        let c = recv(&done, "completion");
        assert_eq!(c.outcome, outcome, "{}", reg.name());
        assert_eq!(c.reason, None);
        match message {
            None => {
                assert_eq!(c.message, None);
                assert!(c.check_result().is_ok());
            }
            Some(m) => {
                let got = c.message.clone().unwrap();
                assert!(got.contains(m), "{got}");
                assert!(c.check_result().is_err());
            }
        }
        let h = reg.history().unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].outcome, outcome);
        assert_eq!(h[0].message, c.message);
    }
    assert!(
        panics.history().unwrap()[0]
            .message
            .as_deref()
            .unwrap()
            .contains("panicked")
    );
    assert_eq!(panics.history().unwrap()[0].last_progress, 7);
    // The worker survived the panic: the pool still runs tasks.
    ok.request(None).unwrap();
    rig.next_start();
    rig.next_start();
    rig.next_start();
    assert_eq!(rig.next_start().task_id, ok.task_id());
    rig.idle();
}

#[test]
fn run_functions_run_on_a_btb_worker_thread_and_may_call_into_btb() {
    let rig = Rig::open(policy());
    let (b, _) = app_task("caller");
    let caller = rig.register(&b);
    let (b, _) = app_task("callee");
    let callee = rig.register(&b);
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let callee_id = callee.task_id();
    rig.router.on("caller", move |i| {
        let sys = i.task().system();
        let name = std::thread::current().name().map(str::to_owned);
        let listed = sys.all_tasks().unwrap().len();
        let result = sys.find(&callee_id).unwrap().request(None).unwrap();
        let mut extra = task("made-by-a-task", time(5, false));
        extra.name_policy = NamePolicy::Keep as u32;
        sys.register(&extra).unwrap();
        tx.lock()
            .unwrap()
            .send((std::thread::current().id(), name, listed, result))
            .unwrap();
    });
    caller.request(None).unwrap();
    let (thread, name, listed, result) = recv(&rx, "the caller's report");
    rig.idle();
    assert_ne!(thread, std::thread::current().id());
    assert_eq!(name.as_deref(), Some("btb-worker"));
    assert_eq!(listed, 2);
    assert_eq!(result, ApplicationTriggerResult::Allowed);
    assert_eq!(rig.router.count("callee"), 1);
    assert_eq!(rig.sys.all_tasks().unwrap().len(), 3);
}

#[test]
fn an_instance_with_deferrals_completes_when_the_last_one_completes_on_another_thread() {
    let rig = Rig::open(policy());
    let (b, _) = app_task("deferred");
    let reg = rig.register(&b);
    let done = completions(&reg);
    let progress = Arc::new(Mutex::new(Vec::new()));
    let p2 = Arc::clone(&progress);
    reg.add_progress(Arc::new(move |_r: &Registration, _id, v| {
        p2.lock().unwrap().push(v)
    }))
    .unwrap();
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    rig.router.on("deferred", move |i| {
        let d1 = i.get_deferral().unwrap();
        let d2 = i.get_deferral().unwrap();
        tx.lock().unwrap().send((i.clone(), d1, d2)).unwrap();
    });
    reg.request(None).unwrap();
    let (instance, d1, d2) = recv(&rx, "the deferrals");
    // The run function returned; two deferrals are outstanding.
    assert!(!rig.sys.wait_idle(Duration::from_millis(50)).unwrap());
    none(&done, "completion");

    let t = std::thread::spawn(move || {
        d1.instance().set_progress(50);
        d1.complete().unwrap();
        d1
    });
    let d1 = t.join().unwrap();
    assert_eq!(
        d1.complete().unwrap_err().kind(),
        ErrorKind::State,
        "completing twice"
    );
    assert!(!rig.sys.wait_idle(Duration::from_millis(50)).unwrap());
    none(&done, "completion");
    assert_eq!(
        reg.request(None).unwrap(),
        ApplicationTriggerResult::CurrentlyRunning
    );

    let t = std::thread::spawn(move || {
        d2.instance().set_progress(90);
        d2.complete().unwrap();
    });
    t.join().unwrap();
    rig.idle();
    let c = recv(&done, "completion");
    assert_eq!(c.outcome, TaskOutcome::Succeeded);
    assert_eq!(c.instance_id, instance.instance_id());
    assert_eq!(c.last_progress, 90);
    assert_eq!(*progress.lock().unwrap(), vec![50, 90]);
    assert_eq!(
        instance.get_deferral().err().map(|e| e.kind()),
        Some(ErrorKind::State),
        "no deferral after completion"
    );
    none(&done, "second completion");
    assert_eq!(reg.history().unwrap().len(), 1);
}

#[test]
fn a_deferral_completed_inside_the_run_function_does_not_end_the_run_early() {
    let rig = Rig::open(policy());
    let (b, _) = app_task("inline");
    let reg = rig.register(&b);
    let done = completions(&reg);
    let (tx, rx) = mpsc::channel::<()>();
    let (back_tx, back_rx) = mpsc::channel::<()>();
    let rx = Mutex::new(rx);
    let back_tx = Mutex::new(back_tx);
    rig.router.on("inline", move |i| {
        let d = i.get_deferral().unwrap();
        d.complete().unwrap();
        back_tx.lock().unwrap().send(()).unwrap();
        rx.lock().unwrap().recv_timeout(DEADLINE).unwrap();
        i.report_failure("failed after the deferral");
    });
    reg.request(None).unwrap();
    recv(&back_rx, "the deferral's completion");
    // Still inside the run function: the instance must not have completed.
    assert!(!rig.sys.wait_idle(Duration::from_millis(20)).unwrap());
    none(&done, "a completion before the run function returned");
    tx.send(()).unwrap();
    rig.idle();
    let c = recv(&done, "completion");
    assert_eq!(
        c.outcome,
        TaskOutcome::Failed,
        "the run's own report counts"
    );
}

#[test]
fn each_progress_change_reaches_every_progress_handler_in_order() {
    let rig = Rig::open(policy());
    let (b, _) = app_task("progress");
    let reg = rig.register(&b);
    let seen_a = Arc::new(Mutex::new(Vec::new()));
    let seen_b = Arc::new(Mutex::new(Vec::new()));
    for seen in [&seen_a, &seen_b] {
        let s = Arc::clone(seen);
        reg.add_progress(Arc::new(move |r: &Registration, id, v| {
            s.lock().unwrap().push((r.task_id(), id, v))
        }))
        .unwrap();
    }
    let values: Vec<u32> = (1..=200).map(|k| (k * 7) % 101).collect();
    let vals = values.clone();
    rig.router.on("progress", move |i| {
        for v in &vals {
            i.set_progress(*v);
        }
        i.set_progress(*vals.last().unwrap()); // unchanged: no new report
    });
    let done = completions(&reg);
    reg.request(None).unwrap();
    let run = rig.next_start();
    rig.idle();
    let mut want = Vec::new();
    let mut last = 0;
    for v in values {
        if v != last {
            want.push((reg.task_id(), run.instance_id, v));
            last = v;
        }
    }
    assert_eq!(*seen_a.lock().unwrap(), want);
    assert_eq!(*seen_b.lock().unwrap(), want);
    let c = recv(&done, "completion");
    assert_eq!(c.last_progress, last);
    assert_eq!(reg.history().unwrap()[0].last_progress, last);
}

#[test]
fn completed_handlers_carry_the_outcome_and_the_history_records_the_run() {
    let rig = Rig::open(policy());
    let (b, _) = app_task("recorded");
    let reg = rig.register(&b);
    let (b, _) = app_task("neighbour");
    let neighbour = rig.register(&b);
    let done = completions(&reg);
    let neighbour_done = completions(&neighbour);
    let gate = Gate::new();
    let g = gate.clone();
    rig.router.on("recorded", move |i| {
        i.set_progress(33);
        assert!(g.wait());
        i.report_failure("bad input");
    });
    rig.advance(5 * SEC);
    reg.request(Some(serde_json::json!({"file": "x"}))).unwrap();
    let run = rig.next_start();
    rig.advance(90 * SEC);
    gate.open();
    rig.idle();
    let c = recv(&done, "completion");
    none(&neighbour_done, "a completion of another registration");
    assert_eq!(
        c,
        Completion {
            instance_id: run.instance_id,
            outcome: TaskOutcome::Failed,
            message: Some("bad input".into()),
            reason: None,
            last_progress: 33,
            attempt: 1,
            retry_at_ms: None,
            output: None,
        }
    );
    let h = reg.history().unwrap();
    assert_eq!(
        h,
        vec![RunRecord {
            instance_id: run.instance_id,
            task_id: reg.task_id(),
            trigger_kind: TriggerKind::Application,
            trigger_details: Some(r#"{"file":"x"}"#.into()),
            started_ms: T0 + 5 * SEC,
            ended_ms: T0 + 95 * SEC,
            outcome: TaskOutcome::Failed,
            reason: None,
            message: Some("bad input".into()),
            last_progress: 33,
            stdout: None,
            stderr: None,
            attempt: 1,
            retry_at_ms: None,
            output: None,
        }]
    );
    assert!(neighbour.history().unwrap().is_empty());
}

#[test]
fn the_history_is_bounded_by_the_policy_history_limit() {
    let rig = Rig::open(Policy {
        history_limit: 3,
        ..policy()
    });
    let (b, _) = app_task("bounded");
    let reg = rig.register(&b);
    let mut ids = Vec::new();
    for n in 0..5 {
        reg.request(Some(serde_json::json!({ "n": n }))).unwrap();
        ids.push(rig.next_start().instance_id);
        rig.idle();
    }
    let h = reg.history().unwrap();
    assert_eq!(
        h.iter().map(|r| r.instance_id).collect::<Vec<_>>(),
        ids[2..].to_vec(),
        "the last three, oldest first"
    );
}

#[test]
fn handlers_may_call_back_into_btb_without_deadlock() {
    let rig = Rig::open(policy());
    let (b, _) = app_task("self-removing");
    let first = rig.register(&b);
    let (b, _) = app_task("progressing");
    let second = rig.register(&b);
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);

    // A completed handler that lists, unregisters its own task and tries wait_idle.
    first
        .add_completed(Arc::new(move |r: &Registration, c: &Completion| {
            let sys = r.system();
            let before = sys.all_tasks().unwrap().len();
            r.unregister(true).unwrap();
            let after = sys.all_tasks().unwrap().len();
            let wait = sys.wait_idle(Duration::from_secs(1)).map_err(|e| e.kind());
            tx.lock()
                .unwrap()
                .send((c.outcome, before, after, wait))
                .unwrap();
        }))
        .unwrap();
    // A progress handler that registers a task and requests it.
    let made = Arc::new(Mutex::new(None));
    let m2 = Arc::clone(&made);
    second
        .add_progress(Arc::new(move |r: &Registration, _id, v| {
            let sys = r.system();
            let (b, trigger) = app_task(&format!("made-at-{v}"));
            let reg = sys.register(&b).unwrap();
            assert_eq!(
                sys.request(&trigger, None).unwrap(),
                ApplicationTriggerResult::Allowed
            );
            *m2.lock().unwrap() = Some(reg.task_id());
        }))
        .unwrap();
    rig.router.on("progressing", |i| i.set_progress(5));

    first.request(None).unwrap();
    let (outcome, before, after, wait) = recv(&rx, "the completed handler");
    assert_eq!(outcome, TaskOutcome::Succeeded);
    assert_eq!((before, after), (2, 1));
    assert_eq!(wait, Err(ErrorKind::State), "wait_idle from a handler");
    rig.idle();
    assert!(rig.sys.find(&first.task_id()).is_err());

    second.request(None).unwrap();
    rig.idle();
    let made = made.lock().unwrap().expect("the progress handler ran");
    assert!(rig.sys.find(&made).is_ok());
    assert_eq!(rig.router.count("made-at-5"), 1);
}

#[test]
fn remove_handler_stops_calls() {
    let rig = Rig::open(policy());
    let (b, _) = app_task("watched");
    let reg = rig.register(&b);
    rig.router
        .on("watched", |i| i.set_progress(i.progress() + 1));
    let counts: Vec<Arc<AtomicUsize>> = (0..4).map(|_| Arc::default()).collect();
    let c = |k: usize| Arc::clone(&counts[k]);
    let (c0, c1, c2, c3) = (c(0), c(1), c(2), c(3));
    let done_keep = reg
        .add_completed(Arc::new(move |_r: &Registration, _c: &Completion| {
            c0.fetch_add(1, Ordering::SeqCst);
        }))
        .unwrap();
    let done_drop = reg
        .add_completed(Arc::new(move |_r: &Registration, _c: &Completion| {
            c1.fetch_add(1, Ordering::SeqCst);
        }))
        .unwrap();
    let prog_keep = reg
        .add_progress(Arc::new(move |_r: &Registration, _i, _v| {
            c2.fetch_add(1, Ordering::SeqCst);
        }))
        .unwrap();
    let prog_drop = rig
        .sys
        .add_progress(
            &reg.task_id(),
            Arc::new(move |_r: &Registration, _i, _v| {
                c3.fetch_add(1, Ordering::SeqCst);
            }),
        )
        .unwrap();
    let tokens = [done_keep, done_drop, prog_keep, prog_drop];
    let mut sorted = tokens.to_vec();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 4, "distinct tokens");

    reg.request(None).unwrap();
    rig.idle();
    let now = || {
        counts
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect::<Vec<_>>()
    };
    assert_eq!(now(), vec![1, 1, 1, 1]);
    assert!(reg.remove_handler(done_drop));
    assert!(rig.sys.remove_handler(prog_drop));
    assert!(!rig.sys.remove_handler(prog_drop), "already removed");
    assert!(!rig.sys.remove_handler(987_654_321));
    reg.request(None).unwrap();
    rig.idle();
    assert_eq!(now(), vec![2, 1, 2, 1]);
}

#[test]
fn the_pull_queue_hands_runs_to_the_host_thread() {
    let rig = Rig::open(policy());
    rig.sys
        .register_entry_point(EP_OTHER, Some(Handler::Queued))
        .unwrap();
    let (b, _) = with_ep("pulled", EP_OTHER);
    let reg = rig.register(&b);
    let done = completions(&reg);
    let progress = Arc::new(Mutex::new(Vec::new()));
    let p2 = Arc::clone(&progress);
    reg.add_progress(Arc::new(move |_r: &Registration, _i, v| {
        p2.lock().unwrap().push(v)
    }))
    .unwrap();

    assert!(
        rig.sys
            .next_event(Duration::from_millis(10))
            .unwrap()
            .is_none(),
        "nothing queued yet"
    );
    reg.request(Some(serde_json::json!({"k": 1}))).unwrap();
    let Some(Event::Run(instance)) = rig.sys.next_event(DEADLINE).unwrap() else {
        panic!("expected a run event");
    };
    assert_eq!(instance.task().task_id(), reg.task_id());
    assert_eq!(
        instance.trigger_details(),
        Some(&serde_json::json!({"k": 1}))
    );
    assert!(!rig.sys.wait_idle(Duration::from_millis(20)).unwrap());
    assert_eq!(
        reg.request(None).unwrap(),
        ApplicationTriggerResult::CurrentlyRunning
    );
    // The host runs it here, on the test thread.
    instance.set_progress(10);
    instance.set_progress(20);
    instance.finish_run().unwrap();
    assert_eq!(
        instance.finish_run().unwrap_err().kind(),
        ErrorKind::State,
        "finishing twice"
    );
    rig.idle();
    let c = recv(&done, "completion");
    assert_eq!(c.outcome, TaskOutcome::Succeeded);
    assert_eq!(c.instance_id, instance.instance_id());
    assert_eq!(*progress.lock().unwrap(), vec![10, 20]);
    assert_eq!(rig.router.count("pulled"), 0, "never ran on a worker");

    // A failure reported by the host, with a deferral completed after the run.
    reg.request(None).unwrap();
    let Some(Event::Run(instance)) = rig.sys.next_event(DEADLINE).unwrap() else {
        panic!("expected a run event");
    };
    let d = instance.get_deferral().unwrap();
    instance.report_failure("host says no");
    instance.finish_run().unwrap();
    assert!(!rig.sys.wait_idle(Duration::from_millis(20)).unwrap());
    d.complete().unwrap();
    rig.idle();
    let c = recv(&done, "completion");
    assert_eq!(c.outcome, TaskOutcome::Failed);
    assert_eq!(c.message.as_deref(), Some("host says no"));
    assert_eq!(reg.history().unwrap().len(), 2);
}

#[test]
fn a_progress_flood_is_coalesced_per_instance_and_handlers_see_the_last_value() {
    // Issue 17 (bounded): a run that reports progress 10,000 times while its handler is blocked
    // queues at most 4,096 notes (past that, one per instance), not 10,000; the handler then sees
    // the latest value.
    let rig = Rig::open(policy());
    let gate = Gate::new();
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let (b, trigger) = app_task("chatty");
    let reg = rig.register(&b);
    let g = gate.clone();
    reg.add_progress(Arc::new(move |_: &Registration, _, value: u32| {
        g.wait();
        tx.lock().unwrap().send(value).unwrap();
    }))
    .unwrap();
    let (reported, done) = mpsc::channel();
    let reported = std::sync::Mutex::new(reported);
    rig.router.on("chatty", move |i: &Instance| {
        for v in 1..=10_000 {
            i.set_progress(v % 101); // 0..=100, changing every time
        }
        i.set_progress(100);
        reported.lock().unwrap().send(()).unwrap();
    });
    rig.sys.request(&trigger, None).unwrap();
    recv(&done, "the run to report all its progress");
    gate.open();
    rig.idle();
    let seen: Vec<u32> = rx.try_iter().collect();
    assert!(
        seen.len() <= 4097,
        "{} progress calls for 10,000 reports: not coalesced",
        seen.len()
    );
    assert_eq!(seen.last(), Some(&100), "the latest value: {seen:?}");
}
