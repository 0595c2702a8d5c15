//! Fail-stop storage (SPEC §7) on a real full file system: a small tmpfs mounted for the test (root
//! only; skipped with a message otherwise). A write the broker cannot commit holds every run that
//! depends on it, refuses new fires with the store error, loses no run record, and the broker
//! resumes by itself once space returns — so a one-shot never runs twice.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use btb_core::*;
use common::rt::*;

/// A tmpfs of a few MiB on a temporary directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(tag: &str) -> Option<Tmpfs> {
        if !rustix::process::geteuid().is_root() {
            eprintln!(
                "*** SKIPPED {tag}: mounting a small tmpfs needs root (run the suite as root to fill a real file system)"
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "btb-full"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t tmpfs failed: {status}");
        Some(Tmpfs { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Fills the file system to the last byte (a file that keeps growing until ENOSPC).
    fn fill(&self) {
        let mut filler = std::fs::File::create(self.path("filler")).unwrap();
        for chunk in [64 * 1024, 4096, 512, 1] {
            let buf = vec![0u8; chunk];
            loop {
                match filler.write(&buf) {
                    Ok(n) if n == chunk => continue,
                    Ok(_) => break,
                    Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) => {
                        break;
                    }
                    Err(e) => panic!("filling the tmpfs: {e}"),
                }
            }
        }
        filler.sync_all().unwrap();
    }

    fn free(&self) {
        std::fs::remove_file(self.path("filler")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// How long `wait_idle` waits before it says why the work is held (the writer tries at once).
const HELD: std::time::Duration = std::time::Duration::from_secs(2);

fn open(path: &Path, clock: &ManualClock) -> Rig {
    Rig::attach(
        open_file(
            path,
            &format!("org.example.full.p{}", std::process::id()),
            "1",
            clock,
            policy(),
        ),
        clock.clone(),
    )
}

#[track_caller]
fn assert_store_error<T: std::fmt::Debug>(result: Result<T>, what: &str) -> Error {
    match result {
        Err(e) if e.kind() == ErrorKind::Store => e,
        other => panic!("{what}: expected a STORE error, got {other:?}"),
    }
}

#[test]
fn a_full_disk_holds_a_one_shot_until_it_is_spent_on_disk_and_it_never_runs_twice() {
    let Some(fs) = Tmpfs::mount("a_full_disk_holds_a_one_shot…") else {
        return;
    };
    let clock = ManualClock::new(T0).unwrap();
    let store = fs.path("btb.sqlite3");
    let rig = open(&store, &clock);
    let once = rig.register(&task("once", time(5, true)));
    let (app, trigger) = app_task("app");
    rig.register(&app);

    fs.fill();
    rig.advance(5 * MIN); // the one-shot fires: spending it on disk fails
    let e = assert_store_error(rig.sys.wait_idle(HELD), "wait_idle on a full disk");
    assert!(
        e.message().contains("full"),
        "the error says why: {}",
        e.message()
    );
    rig.no_start(); // held: it would run again after a restart
    // btbctl doctor hears it from the broker.
    let mut ctl = btb_core::control::Client::connect(rig.sys.app_id()).unwrap();
    match ctl.call(&btb_core::control::Request::Doctor).unwrap() {
        btb_core::control::Reply::Doctor { store_error, .. } => assert!(
            store_error.as_deref().is_some_and(|e| e.contains("full")),
            "{store_error:?}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(rig.sys.find(&once.task_id()).unwrap().is_spent()); // in memory it is spent
    let e = assert_store_error(
        rig.sys.request(&trigger, None),
        "a request while the store cannot be written",
    );
    assert!(
        e.message().starts_with("the request was not taken"),
        "{}",
        e.message()
    );
    assert_store_error(
        rig.sys.history(&once.task_id()),
        "history while the store cannot be written",
    );
    assert_store_error(
        rig.sys.register(&task("later", time(5, false))),
        "a registration on a full disk",
    );

    fs.free(); // the broker retries by itself
    let run = rig.next_start();
    assert_eq!(run.task_id, once.task_id());
    rig.idle();
    assert_eq!(rig.sys.history(&once.task_id()).unwrap().len(), 1);
    assert_eq!(
        rig.sys.request(&trigger, None).unwrap(),
        ApplicationTriggerResult::Allowed,
        "fires are taken again"
    );
    rig.next_start();
    rig.idle();
    assert_eq!(
        rig.sys.all_tasks().unwrap().len(),
        2,
        "the refused registration is not there"
    );
    rig.sys.close().unwrap();
    drop(rig);

    // Reopened, the one-shot is spent on disk: it does not run again.
    clock.advance_ms(60 * MIN).unwrap();
    let rig = open(&store, &clock);
    rig.idle();
    rig.no_start();
    let h = rig.sys.history(&once.task_id()).unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].outcome, TaskOutcome::Succeeded);
    rig.sys.close().unwrap();
}

#[test]
fn a_run_that_ends_on_a_full_disk_keeps_its_record_until_it_can_be_written() {
    let Some(fs) = Tmpfs::mount("a_run_that_ends_on_a_full_disk…") else {
        return;
    };
    let clock = ManualClock::new(T0).unwrap();
    let store = fs.path("btb.sqlite3");
    let rig = open(&store, &clock);
    let gate = Gate::new();
    rig.router.on("long", blocking(&gate));
    let (b, trigger) = app_task("long");
    let long = rig.register(&b);
    assert_eq!(
        rig.sys.request(&trigger, None).unwrap(),
        ApplicationTriggerResult::Allowed
    );
    rig.next_start();

    fs.fill();
    gate.open(); // it ends now; its record cannot be written
    assert_store_error(rig.sys.wait_idle(HELD), "wait_idle on a full disk");
    assert_store_error(rig.sys.history(&long.task_id()), "history on a full disk");

    fs.free();
    rig.idle();
    let h = rig.sys.history(&long.task_id()).unwrap();
    assert_eq!(
        h.len(),
        1,
        "the record was kept and written once space returned"
    );
    assert_eq!(h[0].outcome, TaskOutcome::Succeeded);
    rig.sys.close().unwrap();
    drop(rig);
    let rig = open(&store, &clock);
    assert_eq!(rig.sys.history(&long.task_id()).unwrap().len(), 1);
    rig.sys.close().unwrap();
}

/// STORAGE_NOT_LOW follows the store's file system (SPEC §6): read off the broker's locks after
/// each store write (and when the broker wakes), a change starts the fires that waited for space.
#[test]
fn storage_not_low_is_read_again_after_each_store_write() {
    let Some(fs) = Tmpfs::mount("storage_not_low_is_read_again…") else {
        return;
    };
    let clock = ManualClock::new(T0).unwrap();
    let mut opts = options(
        &format!("org.example.space.p{}", std::process::id()),
        "1",
        StoreLocation::File(fs.path("btb.sqlite3")),
        &clock,
        Policy {
            storage_low_percent: 50,
            ..policy()
        },
    );
    opts.simulated = false;
    opts.platform = btb_core::PlatformOptions {
        power_supply_root: fs.path("power_supply"),
        localtime: fs.path("etc/localtime"),
        accept_user_uevents: true,
        system_bus: Some(format!("unix:path={}", fs.path("no-bus").display())),
    };
    let rig = Rig::attach(System::open(opts).unwrap(), clock);
    let c = SystemConditionType::StorageNotLow;
    assert_eq!(rig.sys.state(c).unwrap(), Some(true));

    // Three quarters of the file system taken by another writer: low once read again.
    std::fs::write(fs.path("filler"), vec![0u8; 3 << 20]).unwrap();
    let (mut b, trigger) = app_task("needs-space");
    b.add_condition(c as u32);
    rig.register(&b); // a store write: the broker reads the space again
    assert_eq!(rig.sys.state(c).unwrap(), Some(false));
    rig.sys.request(&trigger, None).unwrap();
    rig.idle();
    rig.no_start(); // latched: storage is low

    fs.free();
    rig.register(&app_task("another").0); // the next write finds the space back
    assert_eq!(rig.next_start().name, "needs-space");
}
