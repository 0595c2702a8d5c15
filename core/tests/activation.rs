//! Activation (SPEC §12): a run whose handler no process has starts the app the manifest's
//! `activate` names — a real process, this test binary in the role of the app — which opens its
//! system as a client of the broker, offers its handler, is handed the run, and returns from
//! `serve_activation` once nothing is left for it; a run fails, saying so, when the app cannot
//! start, or does not offer the handler within the activation timeout (manual clock).

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

use btb_core::*;
use common::rt::{DEADLINE, SEC, T0, recv};

const EP: &str = "app.Sync";

fn manifest(app_id: &str, activate: Vec<String>) -> Manifest {
    let mut m = Manifest::new(app_id, "1").unwrap();
    m.declare(TaskDeclaration::new(EP, &["general"]).unwrap())
        .unwrap();
    m.with_activate(activate).unwrap()
}

fn this_binary_as(name: &str) -> Vec<String> {
    vec![
        std::env::current_exe().unwrap().display().to_string(),
        "--exact".into(),
        name.into(),
        "--ignored".into(),
        "--nocapture".into(),
        "--test-threads=1".into(),
    ]
}

fn open(
    store: &Path,
    app_id: &str,
    activate: Vec<String>,
    clock: Clock,
    timeout_ms: u32,
) -> System {
    open_with(
        store,
        app_id,
        activate,
        clock,
        Policy {
            activation_timeout_ms: timeout_ms,
            ..Policy::default()
        },
    )
}

fn open_with(
    store: &Path,
    app_id: &str,
    activate: Vec<String>,
    clock: Clock,
    policy: Policy,
) -> System {
    System::open(SystemOptions {
        manifest: Some(manifest(app_id, activate)),
        store: StoreLocation::File(store.to_owned()),
        clock,
        simulated: true,
        policy: Policy {
            durability: Durability::Normal,
            ..policy
        },
        ..SystemOptions::default()
    })
    .unwrap()
}

fn request_sync(
    sys: &System,
    details: serde_json::Value,
) -> (Registration, mpsc::Receiver<Completion>) {
    let mut b = Builder::new();
    b.name = Some("sync".into());
    b.task_entry_point = Some(EP.into());
    b.set_trigger(Trigger::application());
    let reg = sys.register(&b).unwrap();
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    reg.add_completed(Arc::new(move |_: &Registration, c: &Completion| {
        let _ = tx.lock().unwrap().send(c.clone());
    }))
    .unwrap();
    assert_eq!(
        reg.request(Some(details)).unwrap(),
        ApplicationTriggerResult::Allowed
    );
    (reg, rx)
}

/// The app's system, opened as an app started by the broker opens it (the store it names in
/// `BTB_STORE`), and that store.
fn open_as_activated() -> (System, PathBuf) {
    let store = PathBuf::from(std::env::var("BTB_STORE").unwrap());
    let app_id = std::env::var("BTB_APP_ID").unwrap();
    let sys = System::open(SystemOptions {
        manifest: Some(manifest(&app_id, vec!["/bin/false".into()])),
        store: StoreLocation::File(store.clone()),
        simulated: true,
        ..SystemOptions::default()
    })
    .unwrap();
    (sys, store)
}

/// The app, as `activate` starts it (active only with `BTB_ACTIVATION=1`): opens its system
/// as a client of the broker, offers its run function, serves, and says how it ended in
/// `<store dir>/app.fifo`.
#[test]
#[ignore = "the app process that activation_starts_the_app_… starts"]
fn activated_app() {
    if std::env::var("BTB_ACTIVATION").as_deref() != Ok("1") {
        return;
    }
    // What it got from the broker: no descriptor but stdio (the test left fd 200 open without
    // close-on-exec), no blocked signal (the test blocked SIGUSR2), its own process group.
    let inherited = Path::new("/proc/self/fd/200").exists();
    // This thread's own mask (libtest's, inherited from the process's start): `/proc/self`
    // would show the main thread's, all blocked for a moment while it creates a thread.
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let blocked = status
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .map(|mask| u64::from_str_radix(mask.trim(), 16).unwrap())
        .unwrap();
    let own_group = rustix::process::getpgrp() == rustix::process::getpid();
    let (sys, store) = open_as_activated();
    let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&runs);
    sys.register_entry_point(
        EP,
        Some(Handler::Call(Arc::new(move |i: &Instance| {
            seen.lock().unwrap().push(i.trigger_details().cloned());
            i.set_output(&serde_json::json!({"served_by": std::process::id()}))
                .unwrap();
        }))),
    )
    .unwrap();
    let served = sys.serve_activation(DEADLINE).unwrap();
    let report = format!(
        "client={} served={served} runs={} fd200={inherited} blocked={blocked:x} own_group={own_group}\n",
        !sys.is_broker(),
        serde_json::to_string(&*runs.lock().unwrap()).unwrap()
    );
    sys.close().unwrap();
    std::fs::write(store.with_file_name("app.fifo"), report).unwrap();
}

#[test]
fn activation_starts_the_app_which_serves_the_run_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("btb.sqlite3");
    let report = app_reports(dir.path());
    let app_id = format!("org.example.activation.p{}", std::process::id());
    // A descriptor without close-on-exec and a blocked signal, which btb's threads (started
    // from this one) inherit: the app must get neither.
    let null = std::fs::File::open("/dev/null").unwrap();
    let leaked = rustix::io::fcntl_dupfd_cloexec(&null, 200).unwrap();
    assert_eq!(
        std::os::fd::AsRawFd::as_raw_fd(&leaked),
        200,
        "fd 200 was free"
    );
    rustix::io::fcntl_setfd(&leaked, rustix::io::FdFlags::empty()).unwrap();
    let mut usr2 = nix::sys::signal::SigSet::empty();
    usr2.add(nix::sys::signal::Signal::SIGUSR2);
    usr2.thread_block().unwrap();
    let sys = open(
        &store,
        &app_id,
        this_binary_as("activated_app"),
        Clock::Real,
        30_000,
    );
    let (reg, done) = request_sync(&sys, serde_json::json!({"note": 7}));
    let c = recv(&done, "the run in the activated app");
    assert_eq!(c.outcome, TaskOutcome::Succeeded, "{c:?}");
    let app_pid = c.output.as_ref().unwrap()["served_by"].as_u64().unwrap();
    assert_ne!(
        app_pid,
        u64::from(std::process::id()),
        "run in another process"
    );
    let report = report
        .recv_timeout(DEADLINE)
        .expect("the activated app to finish serving and exit");
    assert_eq!(
        report,
        "client=true served=true runs=[{\"note\":7}] fd200=false blocked=0 own_group=true\n",
        "it was a client, was handed the run with its details, and returned once none was left; \
         it got only stdio, no blocked signal, its own process group"
    );
    usr2.thread_unblock().unwrap();
    drop(leaked);
    assert!(sys.wait_idle(DEADLINE).unwrap());
    assert_eq!(reg.history().unwrap().len(), 1);
    sys.close().unwrap();
}

#[test]
fn a_run_fails_when_the_app_cannot_start_or_does_not_offer_its_handler_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let app_id = format!("org.example.activation.fail.p{}", std::process::id());
    let sys = open(
        &dir.path().join("a.sqlite3"),
        &app_id,
        vec!["/nonexistent/app".into()],
        Clock::Real,
        30_000,
    );
    let (_, done) = request_sync(&sys, serde_json::json!({}));
    let c = recv(&done, "the failed activation");
    assert_eq!(c.outcome, TaskOutcome::Failed);
    let m = c.message.unwrap();
    assert!(
        m.starts_with("cannot start the app to run it (/nonexistent/app): "),
        "{m}"
    );
    sys.close().unwrap();

    // An app that starts but never offers the handler: the run fails after the timeout.
    let clock = ManualClock::new(T0).unwrap();
    let sys = open(
        &dir.path().join("b.sqlite3"),
        &format!("{app_id}.b"),
        vec!["/bin/sleep".into(), "60".into()],
        Clock::Manual(clock.clone()),
        5_000,
    );
    let (reg, done) = request_sync(&sys, serde_json::json!({}));
    assert!(sys.wait_idle(DEADLINE).unwrap());
    assert!(reg.history().unwrap().is_empty(), "it waits for the app");
    clock.advance_ms(5 * SEC - 1).unwrap();
    assert!(done.try_recv().is_err(), "not before the timeout");
    clock.advance_ms(1).unwrap();
    let c = recv(&done, "the run that no app offered a handler for");
    assert_eq!(c.outcome, TaskOutcome::Failed);
    let m = c.message.unwrap();
    assert!(
        m.starts_with("the activated app (pid ")
            && m.ends_with(") did not offer app.Sync within 5000 ms"),
        "{m}"
    );
    sys.close().unwrap(); // and ends the app it started
}

/// How many run files of this process are beside the store (SPEC §11).
fn own_run_files(store: &Path) -> usize {
    let suffix = format!(".{}", std::process::id());
    std::fs::read_dir(format!("{}.runs", store.display()))
        .map(|dir| {
            dir.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(&suffix))
            })
            .count()
        })
        .unwrap_or(0)
}

/// Waits (up to [`DEADLINE`]) until this process holds the run file of a run handed to it — a
/// file named `<instance>.<pid>` beside the store (SPEC §11), claimed before it says hello.
fn await_own_run_file(store: &Path) -> bool {
    let dir = PathBuf::from(format!("{}.runs", store.display()));
    await_in(&dir, || own_run_files(store) > 0)
}

/// Waits (up to [`DEADLINE`], with inotify on `dir`, made if missing) until `done` holds; `done`
/// is asked again after each file created or moved into `dir`.
fn await_in(dir: &Path, done: impl Fn() -> bool) -> bool {
    use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
    std::fs::create_dir_all(dir).unwrap();
    let watch = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).unwrap();
    inotify::add_watch(&watch, dir, WatchFlags::CREATE | WatchFlags::MOVED_TO).unwrap();
    let until = std::time::Instant::now() + DEADLINE;
    let mut buf = [std::mem::MaybeUninit::uninit(); 1024];
    while !done() {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        let timeout = rustix::event::Timespec::try_from(left).unwrap();
        let mut fds = [rustix::event::PollFd::new(
            &watch,
            rustix::event::PollFlags::IN,
        )];
        let _ = rustix::event::poll(&mut fds, Some(&timeout));
        let mut reader = inotify::Reader::new(&watch, &mut buf);
        while reader.next().is_ok() {}
    }
    true
}

/// An app started for background work that takes its time: it opens its system, waits until
/// the broker has handed it the run (its run file is there: handed during the open, before any
/// handler is registered), then — `register` — registers its run function, or not, and serves.
fn activated_app_registering_late(register: bool) {
    if std::env::var("BTB_ACTIVATION").as_deref() != Ok("1") {
        return;
    }
    let (sys, store) = open_as_activated();
    let handed = await_own_run_file(&store);
    let held = own_run_files(&store);
    if register {
        sys.register_entry_point(
            EP,
            Some(Handler::Call(Arc::new(|i: &Instance| {
                i.set_output(&serde_json::json!({"served_by": std::process::id()}))
                    .unwrap();
            }))),
        )
        .unwrap();
    }
    serve_and_report(
        sys,
        &store,
        &format!("handed_before_registering={handed} held={held}"),
    );
}

/// An app started for a run that is canceled while the app holds it, before it registers its
/// run function: it waits for its run file, then for `<store dir>/go` (the test's, once the run
/// ended), then registers and serves.
#[test]
#[ignore = "the app process that a_run_an_activated_app_holds_before_registering_… starts"]
fn activated_app_registering_after_go() {
    if std::env::var("BTB_ACTIVATION").as_deref() != Ok("1") {
        return;
    }
    let (sys, store) = open_as_activated();
    let handed = await_own_run_file(&store);
    let dir = store.parent().unwrap().join("signals");
    let go = await_in(&dir, || dir.join("go").exists());
    sys.register_entry_point(EP, Some(Handler::Call(Arc::new(|_: &Instance| {}))))
        .unwrap();
    serve_and_report(sys, &store, &format!("handed={handed} go={go}"));
}

/// The activated app's end: serves, closes, and writes `report` and whether it served to
/// `<store dir>/app.fifo` (read by [`app_reports`]).
fn serve_and_report(sys: System, store: &Path, report: &str) {
    let served = sys.serve_activation(DEADLINE).unwrap();
    sys.close().unwrap();
    std::fs::write(
        store.with_file_name("app.fifo"),
        format!("{report} served={served}\n"),
    )
    .unwrap();
}

/// The activated app's report (`<dir>/app.fifo`, a FIFO made here), read on a thread.
fn app_reports(dir: &Path) -> mpsc::Receiver<String> {
    let fifo = dir.join("app.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let (tx, report) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read_to_string(fifo).unwrap());
    });
    report
}

#[test]
fn a_run_an_activated_app_holds_before_registering_its_handler_ends_canceled_when_canceled() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("btb.sqlite3");
    let report = app_reports(dir.path());
    let app_id = format!("org.example.activation.cancel.p{}", std::process::id());
    // A grace longer than the test waits: the run must end because the app heard the
    // cancellation, not because the broker gave up on it.
    let sys = open_with(
        &store,
        &app_id,
        this_binary_as("activated_app_registering_after_go"),
        Clock::Real,
        Policy {
            grace_ms: 60_000,
            ..Policy::default()
        },
    );
    sys.set_state(SystemConditionType::InternetAvailable, true)
        .unwrap();
    let mut b = Builder::new();
    b.name = Some("sync".into());
    b.task_entry_point = Some(EP.into());
    b.set_trigger(Trigger::application());
    b.add_condition(SystemConditionType::InternetAvailable as u32);
    b.cancel_on_condition_loss = true;
    let reg = sys.register(&b).unwrap();
    let (done_tx, done) = mpsc::channel();
    let done_tx = std::sync::Mutex::new(done_tx);
    reg.add_completed(Arc::new(move |_: &Registration, c: &Completion| {
        let _ = done_tx.lock().unwrap().send(c.clone());
    }))
    .unwrap();
    assert_eq!(
        reg.request(None).unwrap(),
        ApplicationTriggerResult::Allowed
    );
    // Handed to the app (its run file is there), which has registered nothing: canceled.
    let runs = PathBuf::from(format!("{}.runs", store.display()));
    assert!(await_in(&runs, || std::fs::read_dir(&runs)
        .unwrap()
        .next()
        .is_some()));
    sys.set_state(SystemConditionType::InternetAvailable, false)
        .unwrap();
    let c = recv(&done, "the canceled run");
    assert_eq!(c.outcome, TaskOutcome::Canceled, "{c:?}");
    assert_eq!(c.reason, Some(CancellationReason::ConditionLoss), "{c:?}");
    let signals = dir.path().join("signals");
    std::fs::create_dir_all(&signals).unwrap();
    std::fs::write(signals.join("go"), "").unwrap();
    let report = report
        .recv_timeout(DEADLINE)
        .expect("the activated app to finish serving and exit");
    assert_eq!(report, "handed=true go=true served=true\n");
    assert!(sys.wait_idle(DEADLINE).unwrap());
    assert_eq!(reg.history().unwrap().len(), 1, "one run, canceled");
    sys.close().unwrap();
}

#[test]
#[ignore = "the app process that an_activated_app_is_handed_its_run_… starts"]
fn activated_app_registering_late_with_handler() {
    activated_app_registering_late(true);
}

#[test]
#[ignore = "the app process that a_run_handed_to_an_activated_app_… starts"]
fn activated_app_registering_late_without_handler() {
    activated_app_registering_late(false);
}

/// Runs the broker with `activate` = `app`, fires, and returns the run's completion and the
/// app's report.
fn activate_late(app: &str, tag: &str) -> (Completion, String) {
    let (mut runs, report) = activate_late_n(app, tag, 1);
    (runs.remove(0), report)
}

/// [`activate_late`] with `n` tasks fired at once: their runs' completions, by task.
fn activate_late_n(app: &str, tag: &str, n: usize) -> (Vec<Completion>, String) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("btb.sqlite3");
    let report = app_reports(dir.path());
    let app_id = format!("org.example.activation.{tag}.p{}", std::process::id());
    let sys = open(&store, &app_id, this_binary_as(app), Clock::Real, 30_000);
    let (tx, done) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let mut regs = Vec::new();
    for i in 0..n {
        let mut b = Builder::new();
        b.name = Some(format!("sync{i}"));
        b.task_entry_point = Some(EP.into());
        b.set_trigger(Trigger::application());
        regs.push(sys.register(&b).unwrap());
    }
    for reg in &regs {
        let tx = tx.lock().unwrap().clone();
        let tx = std::sync::Mutex::new(tx);
        reg.add_completed(Arc::new(move |r: &Registration, c: &Completion| {
            let _ = tx.lock().unwrap().send((r.task_id(), c.clone()));
        }))
        .unwrap();
        assert_eq!(
            reg.request(None).unwrap(),
            ApplicationTriggerResult::Allowed
        );
    }
    let mut runs: Vec<(uuid::Uuid, Completion)> = (0..n)
        .map(|_| recv(&done, "a run in the activated app"))
        .collect();
    let report = report
        .recv_timeout(DEADLINE)
        .expect("the activated app to finish serving and exit");
    assert!(sys.wait_idle(DEADLINE).unwrap());
    for reg in &regs {
        assert_eq!(reg.history().unwrap().len(), 1, "one run each");
    }
    sys.close().unwrap();
    runs.sort_by_key(|(id, _)| regs.iter().position(|r| r.task_id() == *id));
    (runs.into_iter().map(|(_, c)| c).collect(), report)
}

#[test]
fn an_activated_app_is_handed_its_run_during_its_open_and_runs_it_once_it_registers_its_handler() {
    let (c, report) = activate_late("activated_app_registering_late_with_handler", "late");
    assert_eq!(c.outcome, TaskOutcome::Succeeded, "{c:?}");
    assert_ne!(
        c.output.as_ref().unwrap()["served_by"].as_u64().unwrap(),
        u64::from(std::process::id()),
        "it ran in the app"
    );
    assert_eq!(
        report,
        "handed_before_registering=true held=1 served=true\n"
    );
}

#[test]
fn of_several_runs_waiting_for_an_activated_app_one_is_handed_before_it_offers_and_all_run() {
    let (runs, report) = activate_late_n("activated_app_registering_late_with_handler", "many", 3);
    for c in &runs {
        assert_eq!(c.outcome, TaskOutcome::Succeeded, "{c:?}");
    }
    assert_eq!(
        report, "handed_before_registering=true held=1 served=true\n",
        "one run on presumption, the others once the app offered their handler"
    );
}

#[test]
fn a_run_handed_to_an_activated_app_that_serves_without_its_handler_fails_saying_so() {
    let (c, report) = activate_late("activated_app_registering_late_without_handler", "none");
    assert_eq!(c.outcome, TaskOutcome::Failed, "{c:?}");
    let m = c.message.unwrap();
    assert!(
        m.starts_with("no handler for entry point \"app.Sync\"")
            && m.ends_with(
                "which was started for it and called serve_activation without registering one)"
            ),
        "{m}"
    );
    assert_eq!(
        report,
        "handed_before_registering=true held=1 served=true\n"
    );
}
