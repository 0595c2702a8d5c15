//! SPEC §3 across broker restarts (file stores, one manual clock shared by every open): missed-time
//! catch-up, persisted one-shot spent flags and latched fires, SERVICING_COMPLETE, custom events
//! ONCE per broker run, application triggers after a restart.

mod common;

use std::path::{Path, PathBuf};

use btb_core::*;
use common::rt::*;

struct Store {
    _dir: tempfile::TempDir,
    path: PathBuf,
    app_id: String,
    clock: ManualClock,
}

impl Store {
    fn new(tag: &str) -> Store {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("btb.sqlite3");
        Store {
            _dir: dir,
            path,
            app_id: format!("org.example.rt.{tag}.p{}", std::process::id()),
            clock: ManualClock::new(T0).unwrap(),
        }
    }

    fn open(&self, version: &str) -> Rig {
        Rig::attach(
            open_file(&self.path, &self.app_id, version, &self.clock, policy()),
            self.clock.clone(),
        )
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

#[test]
fn missed_time_on_open_fires_a_periodic_and_a_passed_one_shot_exactly_once() {
    let store = Store::new("missed");
    let rig = store.open("1");
    let periodic = rig.register(&task("periodic", time(5, false)));
    let one_shot = rig.register(&task("one-shot", time(10, true)));
    let future = rig.register(&task("future", time(7 * 24 * 60, true)));
    let nightly = rig.register(&task(
        "nightly",
        Trigger::Calendar {
            expression: "*-*-* 03:00:00 UTC".into(),
        },
    ));
    rig.sys.close().unwrap();
    drop(rig);

    // Ten hours pass with no broker: 120 periods of `periodic`, one 03:00 of `nightly`.
    store.clock.advance_ms(600 * MIN).unwrap();
    let rig = store.open("1");
    rig.idle();
    let count = |r: &Registration| rig.sys.history(&r.task_id()).unwrap().len();
    assert_eq!(count(&periodic), 1, "once, not once per missed period");
    assert_eq!(count(&one_shot), 1);
    assert_eq!(count(&nightly), 1);
    assert_eq!(count(&future), 0);
    for r in [&periodic, &one_shot, &nightly] {
        let h = rig.sys.history(&r.task_id()).unwrap();
        assert_eq!(h[0].started_ms, T0 + 600 * MIN, "{}", r.name());
    }
    let find = |r: &Registration| rig.sys.find(&r.task_id()).unwrap();
    assert!(find(&one_shot).is_spent());
    assert!(!find(&periodic).is_spent());
    // Back on the grids.
    assert_eq!(find(&periodic).next_due_ms(), Some(T0 + 605 * MIN));
    assert_eq!(
        find(&nightly).next_due_ms(),
        Some(T0 + 17_200 * SEC + 24 * 60 * MIN)
    );
    assert_eq!(find(&future).next_due_ms(), Some(T0 + 7 * 24 * 60 * MIN));

    // Reopening at once does not fire anything again.
    rig.sys.close().unwrap();
    drop(rig);
    let rig = store.open("1");
    rig.idle();
    assert_eq!(rig.sys.history(&periodic.task_id()).unwrap().len(), 1);
    assert_eq!(rig.sys.history(&one_shot.task_id()).unwrap().len(), 1);
    rig.no_start();
    // And the periodic timer carries on normally.
    rig.advance_idle(5 * MIN);
    let run = rig.next_start();
    assert_eq!(run.task_id, periodic.task_id());
    assert_eq!(run.started_ms, T0 + 605 * MIN);
    let h = rig.sys.history(&periodic.task_id()).unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(h[1].outcome, TaskOutcome::Succeeded);
}

#[test]
fn a_spent_one_shot_never_fires_again_across_reopen_and_stays_registered() {
    let store = Store::new("spent");
    let rig = store.open("1");
    let timer = rig.register(&task("once-timer", time(5, true)));
    let event = rig.register(&task(
        "once-event",
        system(SystemTriggerType::UserPresent, true),
    ));
    rig.advance_idle(5 * MIN);
    rig.sys.raise_event(SystemTriggerType::UserPresent).unwrap();
    rig.idle();
    assert_eq!(rig.router.runs().len(), 2);
    rig.sys.close().unwrap();
    drop(rig);

    store.clock.advance_ms(30 * 24 * 60 * MIN).unwrap();
    let rig = store.open("1");
    rig.idle();
    assert_eq!(
        rig.sys.raise_event(SystemTriggerType::UserPresent).unwrap(),
        0
    );
    rig.advance_idle(60 * MIN);
    rig.no_start();
    let all = rig.sys.all_tasks().unwrap();
    assert_eq!(all.len(), 2, "spent registrations stay");
    assert!(all.iter().all(|r| r.is_spent()));
    for r in [&timer, &event] {
        assert_eq!(rig.sys.history(&r.task_id()).unwrap().len(), 1);
        assert_eq!(rig.sys.find(&r.task_id()).unwrap().next_due_ms(), None);
    }
}

#[test]
fn a_latched_fire_survives_reopen_with_its_arguments() {
    let store = Store::new("latch");
    let rig = store.open("1");
    let (mut b, trigger) = app_task("latched-app");
    b.add_condition(SystemConditionType::InternetAvailable as u32);
    let app = rig.register(&b);
    let mut b = task("latched-sys", system(SystemTriggerType::UserAway, false));
    b.add_condition(SystemConditionType::InternetAvailable as u32);
    let sys_task = rig.register(&b);
    assert_eq!(
        rig.sys
            .request(&trigger, Some(serde_json::json!({"keep": "me"})))
            .unwrap(),
        ApplicationTriggerResult::Allowed
    );
    rig.sys.raise_event(SystemTriggerType::UserAway).unwrap();
    rig.idle();
    rig.no_start();
    rig.sys.close().unwrap();
    drop(rig);

    let rig = store.open("1");
    rig.idle();
    rig.no_start();
    // Still pending: a new request is refused, a new system fire coalesces.
    assert_eq!(
        rig.sys.request(&trigger, None).unwrap(),
        ApplicationTriggerResult::CurrentlyRunning
    );
    rig.sys.raise_event(SystemTriggerType::UserAway).unwrap();
    rig.sys
        .set_state(SystemConditionType::InternetAvailable, true)
        .unwrap();
    rig.idle();
    let runs = rig.router.runs();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(
        rig.router.runs_of("latched-app")[0].details,
        Some(serde_json::json!({"keep": "me"}))
    );
    assert_eq!(rig.router.count("latched-sys"), 1);
    rig.sys.close().unwrap();
    drop(rig);

    // Consumed durably: nothing runs after another reopen.
    let rig = store.open("1");
    rig.sys
        .set_state(SystemConditionType::InternetAvailable, true)
        .unwrap();
    rig.idle();
    rig.no_start();
    assert_eq!(rig.sys.history(&app.task_id()).unwrap().len(), 1);
    assert_eq!(rig.sys.history(&sys_task.task_id()).unwrap().len(), 1);
}

#[test]
fn servicing_complete_fires_once_when_the_manifest_version_changed() {
    let store = Store::new("servicing");
    let rig = store.open("1.0");
    let reg = rig.register(&task(
        "serviced",
        system(SystemTriggerType::ServicingComplete, false),
    ));
    rig.idle();
    rig.sys.close().unwrap();
    drop(rig);
    let runs = |version: &str| {
        let rig = store.open(version);
        rig.idle();
        let n = rig.sys.history(&reg.task_id()).unwrap().len();
        rig.sys.close().unwrap();
        n
    };
    assert_eq!(runs("1.0"), 0, "same version");
    assert_eq!(runs("1.1"), 1, "upgraded");
    assert_eq!(runs("1.1"), 1, "once, not at every start");
    assert_eq!(runs("1.0"), 2, "a downgrade is a change too");
    let rig = store.open("1.0");
    let h = rig.sys.history(&reg.task_id()).unwrap();
    assert!(h.iter().all(|r| r.trigger_kind == TriggerKind::System));
}

#[test]
fn custom_event_once_fires_again_in_the_next_broker_run() {
    let store = Store::new("once");
    let rig = store.open("1");
    let reg = rig.register(&task(
        "once",
        Trigger::CustomEvent {
            trigger_id: "ping".into(),
            recurrence: CustomRecurrence::Once as u32,
        },
    ));
    for _ in 0..2 {
        rig.sys.signal_event("ping").unwrap();
        rig.idle();
    }
    assert_eq!(rig.router.count("once"), 1);
    rig.sys.close().unwrap();
    drop(rig);
    let rig = store.open("1");
    for _ in 0..2 {
        rig.sys.signal_event("ping").unwrap();
        rig.idle();
    }
    assert_eq!(rig.router.count("once"), 1);
    assert_eq!(rig.sys.history(&reg.task_id()).unwrap().len(), 2);
}

#[test]
fn an_application_trigger_works_after_a_restart() {
    let store = Store::new("app");
    let rig = store.open("1");
    let (b, trigger) = app_task("again");
    let reg = rig.register(&b);
    rig.sys.close().unwrap();
    drop(rig);
    let rig = store.open("1");
    let found = rig.sys.find(&reg.task_id()).unwrap();
    assert_eq!(
        found
            .request(Some(serde_json::json!({"via": "registration"})))
            .unwrap(),
        ApplicationTriggerResult::Allowed
    );
    rig.idle();
    assert_eq!(
        rig.sys
            .request(&trigger, Some(serde_json::json!({"via": "trigger"})))
            .unwrap(),
        ApplicationTriggerResult::Allowed
    );
    rig.idle();
    let details: Vec<_> = rig
        .router
        .runs()
        .into_iter()
        .map(|r| r.details.unwrap()["via"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(details, vec!["registration", "trigger"]);
    assert!(store.path().exists());
}

/// SPEC §3 missed time and §4 handlers: work that is due when a broker opens (catch-up runs,
/// latched fires, SERVICING_COMPLETE) reaches the handlers the app installs after `open` when it
/// opens `paused` and calls `start` (as `Rig` does); 50 rounds, since a race would show rarely.
#[test]
fn catch_up_runs_reach_handlers_installed_right_after_open() {
    let store = Store::new("race");
    let rig = store.open("1");
    let reg = rig.register(&task("periodic", time(1, false)));
    rig.sys.close().unwrap();
    drop(rig);
    for round in 0..50 {
        store.clock.advance_ms(10 * MIN).unwrap();
        let rig = store.open("1");
        rig.idle();
        let h = rig.sys.history(&reg.task_id()).unwrap();
        let last = h.last().unwrap();
        assert_eq!(
            last.outcome,
            TaskOutcome::Succeeded,
            "round {round}: {:?}",
            last.message
        );
        rig.sys.close().unwrap();
    }
}

#[test]
fn a_one_shot_is_spent_on_disk_before_its_run_starts() {
    // The broker commits its schedule writes off its lock (a writer thread); a run still starts
    // only once they are durable, so a crash during the run can never run a one-shot again after a
    // restart. Checked from a second SQLite connection while the run is going.
    let store = Store::new("spent-first");
    let rig = store.open("1");
    let path = store.path().to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    rig.router.on("once", move |i: &Instance| {
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let spent: bool = conn
            .query_row(
                "SELECT spent FROM registrations WHERE task_id = ?1",
                [i.task().task_id().as_bytes().to_vec()],
                |r| r.get(0),
            )
            .unwrap();
        tx.lock().unwrap().send(spent).unwrap();
    });
    rig.register(&task("once", time(5, true)));
    rig.advance(5 * MIN);
    assert!(
        recv(&rx, "the run to read its row"),
        "the run started before its spent flag was committed"
    );
    rig.idle();
}
