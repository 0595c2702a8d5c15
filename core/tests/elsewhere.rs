//! A run handed to a client process outlives its broker (SPEC §11, issue 16): when the broker
//! process is SIGKILLed while a client runs one of its runs, the process that takes the store
//! over counts the task as running until that run ends, records the run as the client ended it,
//! and never starts the task again meanwhile — whether the runner itself takes over or another
//! process does, and whether the runner finishes or dies too. A run that waits for a handler
//! (SPEC §12) when its broker dies keeps waiting, and runs once when a handler comes.
//!
//! Real processes: this binary run again as the broker (`bare_broker_child`) and as a runner
//! (`runner_child`), talking through stdin/stdout under deadlines. No sleeps.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};

use btb_core::{
    ApplicationTriggerResult, Builder, Handler, Registration, RetryPolicy, System, TaskOutcome,
    Trigger,
};
use common::child::*;
use common::*;

const STORE_VAR: &str = "BTB_TEST_ELSEWHERE_STORE";
const APP_VAR: &str = "BTB_TEST_ELSEWHERE_APP";

fn spawn(name: &str, path: &Path, app_id: &str) -> Proc {
    Proc::role(
        name,
        &[(STORE_VAR, path.as_os_str()), (APP_VAR, app_id.as_ref())],
    )
}

fn child_env() -> Option<(std::path::PathBuf, String)> {
    let path = std::env::var_os(STORE_VAR)?;
    Some((path.into(), std::env::var(APP_VAR).unwrap()))
}

fn wait_for_stdin_line() -> String {
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    line.trim().to_owned()
}

fn slow_task(system: &System, retry: bool) -> Registration {
    let mut b: Builder = builder("slow");
    b.set_trigger(Trigger::application());
    if retry {
        b.retry_policy = Some(RetryPolicy {
            initial_delay_ms: 10_000,
            max_attempts: Some(3),
            ..RetryPolicy::default()
        });
    }
    system.register(&b).unwrap()
}

/// The outcomes of `task`'s runs, as its completed handler hears them.
fn completions(system: &System, task: &Registration) -> mpsc::Receiver<TaskOutcome> {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    system
        .add_completed(
            &task.task_id(),
            Arc::new(move |_, completion| {
                let _ = tx.lock().unwrap().send(completion.outcome);
            }),
        )
        .unwrap();
    rx
}

#[test]
#[ignore = "the broker process of the tests in this file"]
fn bare_broker_child() {
    let Some((path, app_id)) = child_env() else {
        return;
    };
    // No handlers: every run it starts is handed to a client process.
    let system = open_real_clock(&path, &app_id);
    assert!(system.is_broker());
    say("READY");
    wait_for_stdin_line(); // serve until killed
}

#[test]
#[ignore = "the runner process of another_process_takes_over_while_the_runner_goes_on"]
fn runner_child() {
    let Some((path, app_id)) = child_env() else {
        return;
    };
    let system = open_real_clock(&path, &app_id);
    assert!(!system.is_broker());
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    system
        .register_entry_point(
            "app.All",
            Some(Handler::Call(Arc::new(move |instance| {
                say(&format!("STARTED {}", instance.attempt()));
                let _ = go_rx.lock().unwrap().recv_timeout(DEADLINE);
                instance
                    .set_output(&serde_json::json!({"ran_in": std::process::id()}))
                    .unwrap();
                say("ENDING");
            }))),
        )
        .unwrap();
    say("READY");
    loop {
        match wait_for_stdin_line().as_str() {
            "go" => go_tx.send(()).unwrap(),
            _ => return,
        }
    }
}

/// A store in a new directory, a broker process of `app` that holds it, and this process's system:
/// its client.
fn client_of_bare_broker(app: &str) -> (tempfile::TempDir, Proc, System) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("btb.sqlite3");
    let broker = spawn("bare_broker_child", &path, app);
    broker.expect("READY");
    let system = open_real_clock(&path, app);
    assert!(!system.is_broker());
    (dir, broker, system)
}

/// The runner itself takes the store over when its broker dies: its own run goes on, counts as
/// running (a request is `CURRENTLY_RUNNING`), and is recorded as it ended — once.
#[test]
fn the_runner_takes_over_and_its_run_goes_on_once() {
    let (_dir, mut broker, system) = client_of_bare_broker("org.example.elsewhere.self");
    let (started_tx, started) = mpsc::channel::<u32>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    let running = Arc::new(Mutex::new(0u32));
    let overlaps = Arc::new(Mutex::new(0u32));
    let (r, o) = (Arc::clone(&running), Arc::clone(&overlaps));
    system
        .register_entry_point(
            "app.All",
            Some(Handler::Call(Arc::new(move |instance| {
                {
                    let mut n = r.lock().unwrap();
                    *n += 1;
                    if *n > 1 {
                        *o.lock().unwrap() += 1;
                    }
                }
                started_tx.send(instance.attempt()).unwrap();
                let _ = go_rx.lock().unwrap().recv_timeout(DEADLINE);
                instance
                    .set_output(&serde_json::json!({"finished": true}))
                    .unwrap();
                *r.lock().unwrap() -= 1;
            }))),
        )
        .unwrap();
    let task = slow_task(&system, false);
    assert_eq!(
        task.request(None).unwrap(),
        ApplicationTriggerResult::Allowed
    );
    assert_eq!(started.recv_timeout(DEADLINE).unwrap(), 1);

    broker.sigkill();
    // This call takes the store over: the run handed to this process still goes on here.
    assert_eq!(
        task.request(None).unwrap(),
        ApplicationTriggerResult::CurrentlyRunning
    );
    assert!(system.is_broker());
    go_tx.send(()).unwrap();
    assert!(system.wait_idle(DEADLINE).unwrap());
    let history = task.history().unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].outcome, TaskOutcome::Succeeded, "{history:?}");
    assert_eq!(history[0].output.as_deref(), Some(r#"{"finished":true}"#));

    // Ended: the task runs again.
    assert_eq!(
        task.request(None).unwrap(),
        ApplicationTriggerResult::Allowed
    );
    assert_eq!(started.recv_timeout(DEADLINE).unwrap(), 1);
    go_tx.send(()).unwrap();
    assert!(system.wait_idle(DEADLINE).unwrap());
    assert_eq!(task.history().unwrap().len(), 2);
    assert_eq!(*overlaps.lock().unwrap(), 0);
    system.close().unwrap();
}

/// An activated app serving its runs (`serve_activation`) when its broker dies: it takes the store
/// over and goes on serving with the broker it became, returning once its run has ended —
/// before, it waited for a notice on the feed that had ended with the broker, until its timeout.
#[test]
fn serve_activation_goes_on_in_the_broker_a_client_becomes() {
    let (_dir, mut broker, system) = client_of_bare_broker("org.example.elsewhere.serve");
    let (started_tx, started) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    system
        .register_entry_point(
            "app.All",
            Some(Handler::Call(Arc::new(move |_| {
                started_tx.send(()).unwrap();
                let _ = go_rx.lock().unwrap().recv_timeout(DEADLINE);
            }))),
        )
        .unwrap();
    let task = slow_task(&system, false);
    task.request(None).unwrap();
    started.recv_timeout(DEADLINE).unwrap();
    std::thread::scope(|scope| {
        let served = scope.spawn(|| system.serve_activation(DEADLINE));
        broker.sigkill(); // the feed ends; this process takes the store over
        go_tx.send(()).unwrap();
        assert!(
            served.join().unwrap().unwrap(),
            "served until nothing was left, not until the timeout"
        );
    });
    assert!(system.is_broker());
    let history = task.history().unwrap();
    assert_eq!(history.len(), 1, "the run had ended: {history:?}");
    assert_eq!(history[0].outcome, TaskOutcome::Succeeded);
    system.close().unwrap();
}

/// A run that goes on in `runner_child` after its broker was SIGKILLed: the store (in `_dir`), the
/// runner, this process's system (a client, or the broker if it took the store over), the task
/// (`retry`: with a retry policy) and its completions.
struct RunnerGoesOn {
    _dir: tempfile::TempDir,
    runner: Proc,
    system: System,
    task: Registration,
    ended: mpsc::Receiver<TaskOutcome>,
}

fn runner_goes_on(app: &str, retry: bool) -> RunnerGoesOn {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("btb.sqlite3");
    let mut broker = spawn("bare_broker_child", &path, app);
    broker.expect("READY");
    let runner = spawn("runner_child", &path, app);
    runner.expect("READY");

    let system = open_real_clock(&path, app); // a client with no handler: runs go to the runner
    let task = slow_task(&system, retry);
    let ended = completions(&system, &task);
    assert_eq!(
        task.request(None).unwrap(),
        ApplicationTriggerResult::Allowed
    );
    assert_eq!(runner.expect("STARTED"), "STARTED 1");

    broker.sigkill();
    // Whichever process takes the store over (this one, or the runner), the task is running.
    assert_eq!(
        task.request(None).unwrap(),
        ApplicationTriggerResult::CurrentlyRunning
    );
    RunnerGoesOn {
        _dir: dir,
        runner,
        system,
        task,
        ended,
    }
}

/// Another process takes the store over while a third still runs the dead broker's run: the
/// task waits for that run, which is recorded as the runner ended it (its output too).
#[test]
fn another_process_takes_over_while_the_runner_goes_on() {
    const APP: &str = "org.example.elsewhere.other";
    let RunnerGoesOn {
        _dir,
        mut runner,
        system,
        task,
        ended,
    } = runner_goes_on(APP, false);
    runner.tell("go");
    runner.expect("ENDING");
    // Heard by whichever process is the broker now (the runner, or this one).
    assert_eq!(
        ended.recv_timeout(DEADLINE).unwrap(),
        TaskOutcome::Succeeded
    );
    let history = task.history().unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].outcome, TaskOutcome::Succeeded, "{history:?}");
    assert_eq!(
        history[0].output.as_deref(),
        Some(format!(r#"{{"ran_in":{}}}"#, runner.child.id()).as_str())
    );
    system.close().unwrap();
}

/// The runner dies too (SIGKILL) while the process that took over waits for it: the run is
/// recorded as cut off and retried under its policy — after the runner is gone, not before.
#[test]
fn a_runner_that_dies_after_its_broker_is_recorded_and_retried() {
    const APP: &str = "org.example.elsewhere.dies";
    let RunnerGoesOn {
        _dir,
        mut runner,
        system,
        task,
        ended,
    } = runner_goes_on(APP, true);
    runner.sigkill();
    // Recorded once the runner is gone (heard through its run file), with the next attempt due.
    assert_eq!(ended.recv_timeout(DEADLINE).unwrap(), TaskOutcome::Retry);
    let history = task.history().unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].outcome, TaskOutcome::Retry, "{history:?}");
    assert!(
        history[0]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("broker died")),
        "{history:?}"
    );
    assert!(history[0].retry_at_ms.is_some());
    system.close().unwrap();
}

/// A run waits for a handler — no process has one — when its broker is SIGKILLed: its start
/// marker, kept marked parked, is dropped by the process that takes the store over (no run file:
/// it was never handed), its fire still waits, and it runs once, in the runner that comes later.
#[test]
fn a_parked_run_keeps_waiting_across_its_brokers_death_and_runs_once() {
    const APP: &str = "org.example.elsewhere.parked";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("btb.sqlite3");
    let mut broker = spawn("bare_broker_child", &path, APP);
    broker.expect("READY");
    let system = open_real_clock(&path, APP); // a client with no handler: the run waits
    let task = slow_task(&system, false);
    let ended = completions(&system, &task);
    assert_eq!(
        task.request(None).unwrap(),
        ApplicationTriggerResult::Allowed
    );
    let parked = wait_parked_on_disk(&path);

    broker.sigkill();
    // This call takes the store over: the fire still waits.
    assert_eq!(
        task.request(None).unwrap(),
        ApplicationTriggerResult::CurrentlyRunning
    );
    assert!(system.is_broker());
    // It started again here and waits again, under a marker of this broker's.
    let again = wait_parked_on_disk(&path);
    assert_ne!(again.instance_id, parked.instance_id);
    assert_eq!(
        on_disk(&path).0,
        vec![again],
        "the dead broker's marker is dropped"
    );
    assert!(task.history().unwrap().is_empty(), "nothing recorded");

    let mut runner = spawn("runner_child", &path, APP);
    runner.expect("READY");
    assert_eq!(runner.expect("STARTED"), "STARTED 1");
    runner.tell("go");
    runner.expect("ENDING");
    assert_eq!(
        ended.recv_timeout(DEADLINE).unwrap(),
        TaskOutcome::Succeeded
    );
    assert!(system.wait_idle(DEADLINE).unwrap());
    let history = task.history().unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    runner.ends_without("stop", "STARTED"); // one run
    assert_eq!(on_disk(&path), (Vec::new(), 0), "nothing left to run");
    system.close().unwrap();
}
