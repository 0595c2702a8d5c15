//! What the store does at the I/O level, observed through a SQLite VFS shim that this test binary
//! installs as the process's default VFS (the core opens its connections with the default VFS, and
//! the core and this test link one bundled SQLite). The shim counts `xSync` calls and injects
//! write or sync failures for files under a watched directory, so:
//! - `synchronous=FULL` (default) is checked by behaviour: every commit syncs; `NORMAL` does not;
//! - a store that cannot be written is simulated in a way that also fails for root (permissions
//!   do not stop root; a full disk is not available in a test).
//!
//! Watches are per directory, so the tests of this binary can run in parallel.

mod common;

use std::collections::HashMap;
use std::ffi::{CStr, OsStr, c_int, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock};

use btb_core::{Durability, ErrorKind, ManualClock, NamePolicy, Policy, StoreLocation, System};
use common::rt::{EP, recv};
use common::*;
use rusqlite::ffi;

#[derive(Default)]
struct Watch {
    dir: PathBuf,
    syncs: AtomicU64,
    writes: AtomicU64,
    fail_writes: AtomicBool,
    fail_syncs: AtomicBool,
}

/// Raw pointers as integers, so the tables are `Send`.
static ORIGINAL_VFS: OnceLock<usize> = OnceLock::new();
static WATCHES: Mutex<Vec<Arc<Watch>>> = Mutex::new(Vec::new());
/// Open `sqlite3_file`s under a watched directory → their watch.
static FILES: Mutex<Option<HashMap<usize, Arc<Watch>>>> = Mutex::new(None);
/// Original `sqlite3_io_methods` → our wrapped copy (leaked: a handful per process).
static WRAPPED: Mutex<Option<HashMap<usize, usize>>> = Mutex::new(None);

#[repr(C)]
struct WrappedMethods {
    methods: ffi::sqlite3_io_methods,
    original: *const ffi::sqlite3_io_methods,
}

fn install_shim() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // SAFETY: sqlite3_vfs_find/register are thread-safe; the shim is leaked, so it lives as
        // long as the process, as SQLite requires of a registered VFS.
        unsafe {
            let original = ffi::sqlite3_vfs_find(std::ptr::null());
            assert!(!original.is_null(), "no default SQLite VFS");
            let mut shim: ffi::sqlite3_vfs = *original;
            shim.zName = c"btb-test-shim".as_ptr();
            shim.pNext = std::ptr::null_mut();
            shim.xOpen = Some(shim_open);
            ORIGINAL_VFS.set(original as usize).unwrap();
            let rc = ffi::sqlite3_vfs_register(Box::leak(Box::new(shim)), 1);
            assert_eq!(rc, ffi::SQLITE_OK, "cannot register the VFS shim");
        }
    });
}

/// Watches every SQLite file opened under `dir` from now on.
fn watch(dir: &Path) -> Arc<Watch> {
    install_shim();
    let w = Arc::new(Watch {
        dir: dir.canonicalize().unwrap(),
        ..Watch::default()
    });
    WATCHES.lock().unwrap().push(Arc::clone(&w));
    w
}

fn watch_of(file: *mut ffi::sqlite3_file) -> Option<Arc<Watch>> {
    FILES
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|m| m.get(&(file as usize)).cloned())
}

/// # Safety
/// `file` must be a file whose methods were replaced by [`wrap_methods`].
unsafe fn original_methods(file: *mut ffi::sqlite3_file) -> *const ffi::sqlite3_io_methods {
    // SAFETY: pMethods points at the first field of a WrappedMethods (repr(C)).
    unsafe { (*((*file).pMethods as *const WrappedMethods)).original }
}

fn wrap_methods(original: *const ffi::sqlite3_io_methods) -> *const ffi::sqlite3_io_methods {
    let mut table = WRAPPED.lock().unwrap();
    let table = table.get_or_insert_with(HashMap::new);
    *table.entry(original as usize).or_insert_with(|| {
        // SAFETY: `original` is a live, static method table of the unix VFS.
        let mut methods = unsafe { *original };
        methods.xClose = Some(shim_close);
        methods.xWrite = Some(shim_write);
        methods.xSync = Some(shim_sync);
        Box::leak(Box::new(WrappedMethods { methods, original })) as *const WrappedMethods as usize
    }) as *const ffi::sqlite3_io_methods
}

unsafe extern "C" fn shim_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let original = *ORIGINAL_VFS.get().unwrap() as *mut ffi::sqlite3_vfs;
    // SAFETY: forwarding SQLite's own arguments to the VFS we copied.
    unsafe {
        let rc = ((*original).xOpen.unwrap())(original, name, file, flags, out_flags);
        if rc != ffi::SQLITE_OK || name.is_null() || (*file).pMethods.is_null() {
            return rc;
        }
        let path = Path::new(OsStr::from_bytes(CStr::from_ptr(name).to_bytes()));
        let found = WATCHES
            .lock()
            .unwrap()
            .iter()
            .find(|w| path.starts_with(&w.dir))
            .cloned();
        if let Some(w) = found {
            FILES
                .lock()
                .unwrap()
                .get_or_insert_with(HashMap::new)
                .insert(file as usize, w);
            (*file).pMethods = wrap_methods((*file).pMethods);
        }
        rc
    }
}

unsafe extern "C" fn shim_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: only installed on wrapped files.
    unsafe {
        let original = original_methods(file);
        if let Some(m) = FILES.lock().unwrap().as_mut() {
            m.remove(&(file as usize));
        }
        ((*original).xClose.unwrap())(file)
    }
}

unsafe extern "C" fn shim_write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    if let Some(w) = watch_of(file) {
        if w.fail_writes.load(Ordering::SeqCst) {
            return ffi::SQLITE_FULL;
        }
        w.writes.fetch_add(1, Ordering::SeqCst);
    }
    // SAFETY: only installed on wrapped files.
    unsafe { ((*original_methods(file)).xWrite.unwrap())(file, data, amount, offset) }
}

unsafe extern "C" fn shim_sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    if let Some(w) = watch_of(file) {
        if w.fail_syncs.load(Ordering::SeqCst) {
            return ffi::SQLITE_IOERR_FSYNC;
        }
        w.syncs.fetch_add(1, Ordering::SeqCst);
    }
    // SAFETY: only installed on wrapped files.
    unsafe { ((*original_methods(file)).xSync.unwrap())(file, flags) }
}

fn open(path: &Path, durability: Durability) -> btb_core::Result<System> {
    let clock = ManualClock::new(T0).unwrap();
    let policy = Policy {
        durability,
        ..Policy::default()
    };
    System::open(options(
        StoreLocation::File(path.to_owned()),
        &clock,
        policy,
    ))
}

/// Syncs made while registering `n` tasks.
fn syncs_for(durability: Durability, n: usize) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let w = watch(dir.path());
    let system = open(&dir.path().join("btb.sqlite3"), durability).unwrap();
    let (syncs, writes) = (
        w.syncs.load(Ordering::SeqCst),
        w.writes.load(Ordering::SeqCst),
    );
    for i in 0..n {
        system.register(&builder(&format!("t{i}"))).unwrap();
    }
    let result = (
        w.syncs.load(Ordering::SeqCst) - syncs,
        w.writes.load(Ordering::SeqCst) - writes,
    );
    system.close().unwrap();
    result
}

#[test]
fn the_shim_sees_the_stores_io() {
    // Guards the tests below: if the shim were not in the path, "no syncs" would prove nothing.
    let (_, writes) = syncs_for(Durability::Normal, 5);
    assert!(
        writes >= 5,
        "the shim saw only {writes} writes for 5 registrations"
    );
}

#[test]
fn synchronous_full_by_default_syncs_every_commit() {
    assert_eq!(Policy::default().durability, Durability::Full);
    let n = 20;
    let (syncs, _) = syncs_for(Policy::default().durability, n);
    assert!(
        syncs >= n as u64,
        "{syncs} syncs for {n} durable registrations: register returned before its commit was synced"
    );
}

#[test]
fn synchronous_normal_does_not_sync_each_commit() {
    let n = 20;
    let (syncs, writes) = syncs_for(Durability::Normal, n);
    assert!(writes >= n as u64);
    assert!(
        syncs < n as u64 / 2,
        "{syncs} syncs for {n} registrations with Durability::Normal: synchronous is not NORMAL"
    );
}

#[test]
fn a_store_that_cannot_be_written_fails_register_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let w = watch(dir.path());
    let path = dir.path().join("btb.sqlite3");
    let shown = path.display().to_string();
    let system = open(&path, Durability::Full).unwrap();
    let a = system.register(&builder("a")).unwrap();

    w.fail_writes.store(true, Ordering::SeqCst);
    let mut grouped = builder("b");
    grouped.task_group = Some(group("g", "G"));
    let err = expect_err(
        system.register(&grouped),
        ErrorKind::Store,
        &[&shown, "cannot write registration"],
    );
    assert!(err.message().contains("full"), "{}", err.message());
    assert_eq!(system.all_tasks().unwrap(), vec![a.clone()]);
    assert!(
        system.all_task_groups().unwrap().is_empty(),
        "a failed register created its group"
    );

    // REPLACE that cannot be written leaves the old registration in place.
    let mut replace = builder("a");
    replace.name_policy = NamePolicy::Replace as u32;
    expect_err(system.register(&replace), ErrorKind::Store, &[&shown]);
    assert_eq!(system.all_tasks().unwrap(), vec![a.clone()]);

    // So does an unregister that cannot be written.
    expect_err(
        a.unregister(true),
        ErrorKind::Store,
        &[&shown, "cannot remove registration"],
    );
    assert_eq!(system.find(&a.task_id()).unwrap(), a);

    // The disk has room again: the same builder registers.
    w.fail_writes.store(false, Ordering::SeqCst);
    let b = system.register(&grouped).unwrap();
    assert_eq!(system.group_tasks("g").unwrap(), vec![b.clone()]);
    let expected: Vec<_> = everything(&system)
        .iter()
        .map(|r| r.record().clone())
        .collect();
    assert_eq!(expected.len(), 2);
    system.close().unwrap();

    // On disk: exactly what succeeded.
    let reopened = open(&path, Durability::Full).unwrap();
    let found: Vec<_> = everything(&reopened)
        .iter()
        .map(|r| r.record().clone())
        .collect();
    assert_eq!(found, expected);
}

#[test]
fn a_store_that_cannot_be_created_fails_open_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let w = watch(dir.path());
    let path = dir.path().join("btb.sqlite3");
    w.fail_writes.store(true, Ordering::SeqCst);
    expect_err(
        open(&path, Durability::Full),
        ErrorKind::Store,
        &[&path.display().to_string()],
    );
    w.fail_writes.store(false, Ordering::SeqCst);
    // Nothing half-made is left that would stop a later open.
    let system = open(&path, Durability::Full).unwrap();
    system.register(&builder("x")).unwrap();
}

#[test]
fn a_failed_sync_fails_register() {
    let dir = tempfile::tempdir().unwrap();
    let w = watch(dir.path());
    let path = dir.path().join("btb.sqlite3");
    let system = open(&path, Durability::Full).unwrap();
    let a = system.register(&builder("a")).unwrap();
    w.fail_syncs.store(true, Ordering::SeqCst);
    expect_err(
        system.register(&builder("b")),
        ErrorKind::Store,
        &[&path.display().to_string()],
    );
    assert_eq!(system.all_tasks().unwrap(), vec![a.clone()]);
    w.fail_syncs.store(false, Ordering::SeqCst);
    // Reopened right away (the failed commit's frames are still in the WAL): not there.
    system.close().unwrap();
    let reopened = open(&path, Durability::Full).unwrap();
    assert_eq!(names(&reopened), ["a"]);
    reopened.register(&builder("c")).unwrap();
    reopened.close().unwrap();
    assert_eq!(names(&open(&path, Durability::Full).unwrap()), ["a", "c"]);
}

fn names(system: &System) -> Vec<String> {
    system
        .all_tasks()
        .unwrap()
        .iter()
        .map(|r| r.name().to_owned())
        .collect()
}

/// The app that `the_app_starts_while_…` activates (active only with `BTB_ACTIVATION=1`): opens
/// its system as a client, says so in `<store dir>/opened`, offers its run function, serves, and
/// writes what it ran to `<store dir>/served`.
#[test]
#[ignore = "the app process that the_app_starts_while_… starts"]
fn activated_app() {
    if std::env::var("BTB_ACTIVATION").as_deref() != Ok("1") {
        return;
    }
    let store = PathBuf::from(std::env::var("BTB_STORE").unwrap());
    let app_id = std::env::var("BTB_APP_ID").unwrap();
    let sys = System::open(btb_core::SystemOptions {
        manifest: Some(manifest_for(&app_id)),
        store: StoreLocation::File(store.clone()),
        simulated: true,
        ..btb_core::SystemOptions::default()
    })
    .unwrap();
    std::fs::write(store.with_file_name("opened"), "").unwrap();
    let runs = Arc::new(AtomicU64::new(0));
    let ran = Arc::clone(&runs);
    sys.register_entry_point(
        EP,
        Some(btb_core::Handler::Call(Arc::new(move |_| {
            ran.fetch_add(1, Ordering::SeqCst);
        }))),
    )
    .unwrap();
    let served = sys.serve_activation(common::rt::DEADLINE * 3).unwrap();
    let report = format!("served={served} runs={}", runs.load(Ordering::SeqCst));
    sys.close().unwrap();
    std::fs::write(store.with_file_name("served"), report).unwrap();
}

/// SPEC §12 with §11: a run that no process can take starts the app while its start is being
/// committed, and is handed to the app only once that start is on disk. Here the commit cannot
/// be made (the store's writes fail): the app is started all the same — before, it started only
/// after the commit — and offers its handler, and the run does not go to it; once the store can
/// be written again, the run is handed and runs once.
#[test]
fn the_app_starts_while_the_runs_start_is_committed_and_gets_the_run_once_it_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let w = watch(dir.path());
    let path = dir.path().join("btb.sqlite3");
    let app_id = format!("org.example.storeio.p{}", std::process::id());
    let app = vec![
        std::env::current_exe().unwrap().display().to_string(),
        "--exact".into(),
        "activated_app".into(),
        "--ignored".into(),
        "--test-threads=1".into(),
    ];
    let clock = ManualClock::new(T0).unwrap();
    let system = System::open(btb_core::SystemOptions {
        manifest: Some(manifest_for(&app_id).with_activate(app).unwrap()),
        ..options(StoreLocation::File(path.clone()), &clock, Policy::default())
    })
    .unwrap();
    let mut b = builder("sync");
    b.set_trigger(btb_core::Trigger::application());
    let reg = system.register(&b).unwrap();

    let opened = fifo(&dir.path().join("opened"));
    let served = fifo(&dir.path().join("served"));
    w.fail_writes.store(true, Ordering::SeqCst);
    // The fire is taken but cannot be made durable: the run waits for its commit.
    expect_err(reg.request(None), ErrorKind::Store, &["durable"]);
    recv(
        &opened,
        "the app, started while the run's start could not be committed",
    );

    w.fail_writes.store(false, Ordering::SeqCst);
    assert_eq!(
        served
            .recv_timeout(common::rt::DEADLINE * 4)
            .expect("the app to serve the run once the store can be written"),
        "served=true runs=1"
    );
    assert!(system.wait_idle(common::rt::DEADLINE).unwrap());
    let history = reg.history().unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].outcome, btb_core::TaskOutcome::Succeeded);
    system.close().unwrap();
}

/// What is written to a new fifo at `path`, read on a thread.
fn fifo(path: &Path) -> std::sync::mpsc::Receiver<String> {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let path = path.to_owned();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read_to_string(path).unwrap());
    });
    rx
}

const STORE_VAR: &str = "BTB_TEST_STOREIO_STORE";
const APP_VAR: &str = "BTB_TEST_STOREIO_APP";

fn role(name: &str, path: &Path, app_id: &str) -> common::child::Proc {
    common::child::Proc::role(
        name,
        &[(STORE_VAR, path.as_os_str()), (APP_VAR, app_id.as_ref())],
    )
}

fn role_env() -> Option<(PathBuf, String)> {
    let path = std::env::var_os(STORE_VAR)?;
    Some((path.into(), std::env::var(APP_VAR).unwrap()))
}

fn stdin_line() -> String {
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    line.trim().to_owned()
}

/// A broker process with no handler (every run goes to a client), its store watched by the
/// shim: told `fail`, its store's writes fail from then on. It serves until killed.
#[test]
#[ignore = "the broker process of a_parked_run_is_handed_…"]
fn shimmed_broker_child() {
    let Some((path, app_id)) = role_env() else {
        return;
    };
    let w = watch(path.parent().unwrap());
    let system = open_real_clock(&path, &app_id);
    assert!(system.is_broker());
    common::child::say("READY");
    while stdin_line() == "fail" {
        w.fail_writes.store(true, Ordering::SeqCst);
        common::child::say("FAILING");
    }
}

/// A client process that runs `app.All`: says `STARTED <attempt>`, waits for `go`, says `ENDING`.
#[test]
#[ignore = "the runner process of a_parked_run_is_handed_…"]
fn runner_child() {
    let Some((path, app_id)) = role_env() else {
        return;
    };
    let system = open_real_clock(&path, &app_id);
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    system
        .register_entry_point(
            EP,
            Some(btb_core::Handler::Call(Arc::new(move |instance| {
                common::child::say(&format!("STARTED {}", instance.attempt()));
                let _ = go_rx.lock().unwrap().recv_timeout(common::child::DEADLINE);
                common::child::say("ENDING");
            }))),
        )
        .unwrap();
    common::child::say("READY");
    while stdin_line() == "go" {
        go_tx.send(()).unwrap();
    }
}

/// A run that waited for a handler (parked), handed to `runner_child` after the broker process's
/// store writes began to fail: the store (in `_dir`), the broker and the runner, this process's
/// system (a client with no handler), the task and its completions, and the parked marker.
struct Handed {
    _dir: tempfile::TempDir,
    path: PathBuf,
    broker: common::child::Proc,
    system: System,
    task: btb_core::Registration,
    ended: std::sync::mpsc::Receiver<btb_core::TaskOutcome>,
    parked: btb_core::store::RunStart,
    runner: common::child::Proc,
}

fn handed_while_the_broker_cannot_write(app: &str) -> Handed {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("btb.sqlite3");
    let app_id = format!("org.example.storeio.{app}.p{}", std::process::id());
    let mut broker = role("shimmed_broker_child", &path, &app_id);
    broker.expect("READY");
    let system = open_real_clock(&path, &app_id); // a client with no handler: the run waits
    assert!(!system.is_broker());
    let mut b = builder("parked");
    b.set_trigger(btb_core::Trigger::application());
    let task = system.register(&b).unwrap();
    let (tx, ended) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    system
        .add_completed(
            &task.task_id(),
            Arc::new(move |_, c| {
                let _ = tx.lock().unwrap().send(c.outcome);
            }),
        )
        .unwrap();
    assert_eq!(
        task.request(None).unwrap(),
        btb_core::ApplicationTriggerResult::Allowed
    );
    let parked = wait_parked_on_disk(&path);

    broker.tell("fail");
    broker.expect("FAILING");
    let runner = role("runner_child", &path, &app_id);
    runner.expect("READY");
    assert_eq!(
        runner.expect("STARTED"),
        "STARTED 1",
        "handed with nothing more committed"
    );
    Handed {
        _dir: dir,
        path,
        broker,
        system,
        task,
        ended,
        parked,
        runner,
    }
}

/// SPEC §11 with §12, the hand-over of a run that waited for a handler: it is handed under the
/// start marker kept since it parked, and waits for no further commit. Here the broker's store
/// cannot be written once the run is parked: the runner that comes is handed the run all the
/// same (before, the hand-over waited for the commit of a new start). Its broker SIGKILLed then,
/// the store still says "parked, fire latched"; the process that takes it over finds the run
/// file held — the run was handed — and neither records it as cut off nor runs it again.
#[test]
fn a_parked_run_is_handed_without_a_second_commit_and_never_runs_twice_after_its_brokers_death() {
    let Handed {
        _dir,
        path,
        mut broker,
        system,
        task,
        ended,
        parked,
        mut runner,
    } = handed_while_the_broker_cannot_write("parked");
    assert_eq!(
        on_disk(&path),
        (vec![parked], 1),
        "the hand-over is not written"
    );
    broker.sigkill();

    // Whichever process takes the store over (this one, or the runner), the run goes on.
    assert_eq!(
        task.request(None).unwrap(),
        btb_core::ApplicationTriggerResult::CurrentlyRunning
    );
    runner.tell("go");
    runner.expect("ENDING");
    assert_eq!(
        ended.recv_timeout(common::child::DEADLINE).unwrap(),
        btb_core::TaskOutcome::Succeeded
    );
    runner.ends_without("stop", "STARTED"); // one run
    // This process is the broker now: a fire left latched would start here.
    let history = task.history().unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    assert!(system.is_broker());
    assert!(system.wait_idle(common::child::DEADLINE).unwrap());
    assert_eq!(on_disk(&path), (Vec::new(), 0), "nothing left to run");
    system.close().unwrap();
}

/// The end of that run, heard while the broker still cannot write: the runner's run file stays
/// until the run's record is committed. Its broker SIGKILLed after it heard the end, the process
/// that takes the store over finds the file with the run's last word and records the run as it
/// ended — before, the file went at once, and the next broker took the parked marker with no
/// file for a run never handed, and latched its fire to run it again.
#[test]
fn a_parked_run_that_ended_before_its_brokers_death_is_recorded_once_and_not_run_again() {
    let Handed {
        _dir,
        path,
        mut broker,
        system,
        task,
        ended,
        parked,
        mut runner,
    } = handed_while_the_broker_cannot_write("ended");
    runner.tell("go");
    runner.expect("ENDING");
    assert_eq!(
        ended.recv_timeout(common::child::DEADLINE).unwrap(),
        btb_core::TaskOutcome::Succeeded,
        "the broker heard the end"
    );
    runner.tell("stop");
    runner.wait_success();
    assert_eq!(on_disk(&path), (vec![parked], 1), "nothing of it written");
    broker.sigkill();

    // This process takes the store over (its next call reaches no broker), and recovers.
    let history = task.history().unwrap();
    assert!(system.is_broker());
    assert!(system.wait_idle(common::child::DEADLINE).unwrap());
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].outcome, btb_core::TaskOutcome::Succeeded);
    assert_eq!(on_disk(&path), (Vec::new(), 0), "no fire left to run again");
    system.close().unwrap();
}

/// The other side of the parked hand-over: a parked run that a handler of the broker's own
/// process takes still starts only once the writes of its hand-over are on disk (no run file
/// would tell a later broker that it started). The store's writes fail once the run parked: the
/// handler registered then does not run until they succeed again, and then runs once.
#[test]
fn a_parked_run_taken_in_process_waits_for_its_hand_over_to_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let w = watch(dir.path());
    let path = dir.path().join("btb.sqlite3");
    let app_id = format!("org.example.storeio.inprocess.p{}", std::process::id());
    let system = open_real_clock(&path, &app_id);
    assert!(system.is_broker());
    let mut b = builder("parked");
    b.set_trigger(btb_core::Trigger::application());
    let task = system.register(&b).unwrap();
    assert_eq!(
        task.request(None).unwrap(),
        btb_core::ApplicationTriggerResult::Allowed
    );
    wait_parked_on_disk(&path);

    w.fail_writes.store(true, Ordering::SeqCst);
    let (tx, ran) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    system
        .register_entry_point(
            EP,
            Some(btb_core::Handler::Call(Arc::new(move |_| {
                tx.lock().unwrap().send(()).unwrap();
            }))),
        )
        .unwrap();
    assert!(
        ran.recv_timeout(std::time::Duration::from_millis(300))
            .is_err(),
        "it does not run before its hand-over is written"
    );
    w.fail_writes.store(false, Ordering::SeqCst);
    recv(&ran, "the run, once the store can be written");
    assert!(system.wait_idle(common::rt::DEADLINE).unwrap());
    assert_eq!(task.history().unwrap().len(), 1);
    assert!(ran.try_recv().is_err(), "once");
    assert_eq!(on_disk(&path), (Vec::new(), 0));
    system.close().unwrap();
}
