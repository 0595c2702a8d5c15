//! SPEC §10 servicing and uninstalling, in the broker's process, on real store files:
//! `System::service` (a new manifest version cancels runs with SERVICING_UPDATE, takes the new
//! manifest and fires SERVICING_COMPLETE once) and `System::uninstall` (runs canceled with
//! UNINSTALL, every task unregistered, the store and the control socket removed). btbd's side
//! (SIGHUP, the manifest file changing, `btbctl uninstall`) is in `tools/tests/btbd_reasons.rs`.

mod common;

use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};

use btb_core::*;
use common::rt::*;

/// `XDG_RUNTIME_DIR` is process-global: each test holds this while it points at its own.
static ENV: Mutex<()> = Mutex::new(());

struct Scratch {
    dir: tempfile::TempDir,
    _env: std::sync::MutexGuard<'static, ()>,
}

impl Scratch {
    fn new() -> Scratch {
        let env = ENV.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("run")).unwrap();
        // SAFETY: every test of this binary sets it under `ENV`, and reads it only then.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", dir.path().join("run")) };
        Scratch { dir, _env: env }
    }

    fn store(&self) -> std::path::PathBuf {
        self.dir.path().join("btb.sqlite3")
    }

    fn open(&self, app_id: &str, version: &str) -> Rig {
        let clock = ManualClock::new(T0).unwrap();
        Rig::attach(
            open_file(&self.store(), app_id, version, &clock, policy()),
            clock,
        )
    }
}

/// A requested application task whose run blocks until canceled; returns once it runs.
fn running(rig: &Rig, name: &str) -> Receiver<Completion> {
    let (started_tx, started) = mpsc::channel();
    rig.router.on(name, move |i| {
        let gate = Gate::new();
        let opened = gate.clone();
        i.add_canceled(Arc::new(move |_, _| opened.open()));
        started_tx.send(()).unwrap();
        assert!(gate.wait(), "never canceled");
    });
    let (b, id) = app_task(name);
    let done = completions(&rig.register(&b));
    rig.sys.request(&id, None).unwrap();
    recv(&started, &format!("{name} to start"));
    done
}

/// A task on SERVICING_COMPLETE: each run is one message.
fn on_serviced(rig: &Rig) -> Receiver<()> {
    let (tx, rx) = mpsc::channel();
    rig.router.on("serviced", move |_| {
        let _ = tx.send(());
    });
    rx
}

#[test]
fn a_new_manifest_version_cancels_runs_and_fires_servicing_complete_once() {
    let s = Scratch::new();
    let app = "org.example.servicing";
    let rig = s.open(app, "1");
    let serviced = on_serviced(&rig);
    rig.register(&task(
        "serviced",
        system(SystemTriggerType::ServicingComplete, false),
    ));

    // The same version: nothing happens.
    assert!(!rig.sys.service(manifest(app, "1")).unwrap());
    rig.idle();
    none(&serviced, "SERVICING_COMPLETE for the same version");
    let long = running(&rig, "long");
    // Another app's manifest is refused.
    let err = rig
        .sys
        .service(manifest("org.example.other", "2"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");

    // A new version: canceled, taken, SERVICING_COMPLETE.
    assert!(rig.sys.service(manifest(app, "2")).unwrap());
    let end = recv(&long, "the run to end");
    assert_eq!(end.outcome, TaskOutcome::Canceled);
    assert_eq!(end.reason, Some(CancellationReason::ServicingUpdate));
    recv(&serviced, "SERVICING_COMPLETE");
    assert_eq!(rig.sys.manifest().version(), "2");
    rig.sys.close().unwrap();

    // Recorded: reopened at the new version, nothing is raised again.
    let rig = s.open(app, "2");
    let serviced = on_serviced(&rig);
    rig.idle();
    none(&serviced, "a second SERVICING_COMPLETE at reopen");
    let history = rig
        .sys
        .all_tasks()
        .unwrap()
        .into_iter()
        .find(|r| r.name() == "long")
        .unwrap()
        .history()
        .unwrap();
    assert_eq!(
        history.last().unwrap().reason,
        Some(CancellationReason::ServicingUpdate)
    );
    rig.sys.close().unwrap();
}

#[test]
fn uninstall_cancels_runs_unregisters_every_task_and_removes_the_store() {
    let s = Scratch::new();
    let app = "org.example.uninstall";
    let rig = s.open(app, "1");
    rig.register(&task("idle", time(60, false)));
    let long = running(&rig, "long");
    let socket = rig.sys.control_socket().unwrap();
    assert!(socket.exists());
    assert!(s.store().exists());

    assert_eq!(rig.sys.uninstall().unwrap(), 2);
    let end = recv(&long, "the run to end");
    assert_eq!(end.outcome, TaskOutcome::Canceled);
    assert_eq!(end.reason, Some(CancellationReason::Uninstall));
    assert!(rig.sys.all_tasks().unwrap().is_empty());
    let left: Vec<_> = std::fs::read_dir(s.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "run")
        .collect();
    assert!(left.is_empty(), "left of the store: {left:?}");
    assert!(!socket.exists(), "the control socket stays");
    rig.sys.close().unwrap();
    assert!(!s.store().exists(), "closing wrote the store again");
}
