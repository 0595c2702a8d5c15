//! The default store location (`$XDG_STATE_HOME/btb/<app_id>/btb.sqlite3`, else `~/.local/state`)
//! and the default system (`BTB_MANIFEST`, `BTB_STORE`). These read process-global environment
//! variables, so they live in their own test binary and every test holds [`ENV`] while it runs.

mod common;

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use btb_core::{
    ErrorKind, ManualClock, Policy, StoreLocation, System, default_system, set_default_system,
};
use common::*;

static ENV: Mutex<()> = Mutex::new(());

const VARS: [&str; 4] = ["XDG_STATE_HOME", "HOME", "BTB_MANIFEST", "BTB_STORE"];

/// Holds the environment lock and restores the variables on drop.
struct Env {
    saved: Vec<(&'static str, Option<OsString>)>,
    _lock: MutexGuard<'static, ()>,
}

impl Env {
    fn take() -> Env {
        let lock = ENV.lock().unwrap_or_else(|p| p.into_inner());
        let saved = VARS.iter().map(|k| (*k, std::env::var_os(k))).collect();
        Env { saved, _lock: lock }
    }

    fn set(&self, key: &str, value: Option<&Path>) {
        // SAFETY: every test of this binary that touches the environment holds ENV, and nothing
        // else in the process reads these variables concurrently.
        unsafe {
            match value {
                Some(v) => std::env::set_var(key, v),
                None => std::env::remove_var(key),
            }
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for (k, v) in &self.saved {
            // SAFETY: as in `set`; the lock is still held (fields drop after this body).
            unsafe {
                match v {
                    Some(v) => std::env::set_var(k, v),
                    None => std::env::remove_var(k),
                }
            }
        }
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn open_default(app_id_manifest: btb_core::Manifest) -> btb_core::Result<System> {
    let clock = ManualClock::new(T0).unwrap();
    let mut opts = options(StoreLocation::Default, &clock, Policy::default());
    opts.manifest = Some(app_id_manifest);
    System::open(opts)
}

#[test]
fn the_default_store_lives_under_xdg_state_home_privately() {
    let env = Env::take();
    let state = tempfile::tempdir().unwrap();
    env.set("XDG_STATE_HOME", Some(state.path()));
    let system = open_default(manifest()).unwrap();
    let expected = state.path().join("btb").join(APP_ID).join("btb.sqlite3");
    assert_eq!(system.store_path(), expected.display().to_string());
    assert_eq!(
        StoreLocation::default_path(APP_ID).unwrap(),
        expected,
        "default_path and the opened store disagree"
    );
    let r = system.register(&builder("persisted")).unwrap();
    assert_eq!(mode(&state.path().join("btb")), 0o700);
    assert_eq!(mode(&state.path().join("btb").join(APP_ID)), 0o700);
    assert_eq!(mode(&expected), 0o600);
    system.close().unwrap();

    // Reopened through the default location, it is there.
    let again = open_default(manifest()).unwrap();
    assert_eq!(again.all_tasks().unwrap().len(), 1);
    assert_eq!(again.find(&r.task_id()).unwrap().record(), r.record());

    // Another app id gets another store.
    let other = open_default(btb_core::Manifest::new("org.example.other", "1").unwrap()).unwrap();
    assert_eq!(
        other.store_path(),
        state
            .path()
            .join("btb/org.example.other/btb.sqlite3")
            .display()
            .to_string()
    );
    assert!(other.all_tasks().unwrap().is_empty());
}

#[test]
fn without_xdg_state_home_the_store_goes_under_home() {
    let env = Env::take();
    let home = tempfile::tempdir().unwrap();
    env.set("HOME", Some(home.path()));
    for xdg in [None, Some(Path::new(""))] {
        env.set("XDG_STATE_HOME", xdg);
        let system = open_default(manifest()).unwrap();
        let expected = home
            .path()
            .join(".local/state/btb")
            .join(APP_ID)
            .join("btb.sqlite3");
        assert_eq!(system.store_path(), expected.display().to_string());
        assert_eq!(mode(&expected), 0o600);
        for dir in [".local", ".local/state", ".local/state/btb"] {
            assert_eq!(mode(&home.path().join(dir)), 0o700, "{dir}");
        }
        system.close().unwrap();
    }
}

#[test]
fn without_xdg_state_home_or_home_the_default_store_is_a_store_error() {
    let env = Env::take();
    env.set("XDG_STATE_HOME", None);
    env.set("HOME", None);
    expect_err(
        open_default(manifest()),
        ErrorKind::Store,
        &["XDG_STATE_HOME", "HOME"],
    );
    // An explicit store still works.
    let (system, _) = memory_system();
    system.register(&builder("fine")).unwrap();
}

#[test]
fn the_default_system_comes_from_btb_manifest_and_btb_store() {
    let env = Env::take();
    set_default_system(None);
    env.set("BTB_MANIFEST", None);
    expect_err(default_system(), ErrorKind::State, &["BTB_MANIFEST"]);

    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("btb.toml");
    std::fs::write(
        &manifest,
        "app_id = \"org.example.envtest\"\nversion = \"2\"\n\n[[task]]\nentry_point = \"env.Task\"\ntypes = [\"timer\"]\n",
    )
    .unwrap();
    let store = dir.path().join("store").join("env.sqlite3");
    env.set("BTB_MANIFEST", Some(&manifest));
    env.set("BTB_STORE", Some(&store));
    let system = default_system().unwrap();
    assert_eq!(system.app_id(), "org.example.envtest");
    assert_eq!(system.store_path(), store.display().to_string());
    assert_eq!(
        default_system().unwrap(),
        system,
        "opened once, then shared"
    );
    let mut b = builder("from-env");
    b.task_entry_point = Some("env.Task".to_owned());
    system.register(&b).unwrap();
    system.close().unwrap();
    set_default_system(None);

    // ":memory:" gives an ephemeral one; a bad manifest path is reported with its path.
    env.set("BTB_STORE", Some(Path::new(":memory:")));
    let memory = default_system().unwrap();
    assert_eq!(memory.store_path(), ":memory:");
    assert!(memory.all_tasks().unwrap().is_empty());
    set_default_system(None);
    let missing = dir.path().join("missing.toml");
    env.set("BTB_MANIFEST", Some(&missing));
    expect_err(
        default_system(),
        ErrorKind::InvalidArgument,
        &[&missing.display().to_string()],
    );
    // A failed open is retried on the next call.
    env.set("BTB_MANIFEST", Some(&manifest));
    env.set("BTB_STORE", Some(&store));
    let reopened = default_system().unwrap();
    assert_eq!(reopened.all_tasks().unwrap().len(), 1);
    reopened.close().unwrap();
    set_default_system(None);
}

#[test]
fn a_relative_xdg_state_home_is_ignored() {
    // The XDG Base Directory spec: relative paths are invalid and must be ignored — else the store
    // would move with the working directory.
    let env = Env::take();
    let home = tempfile::tempdir().unwrap();
    env.set("HOME", Some(home.path()));
    env.set("XDG_STATE_HOME", Some(Path::new("relative/state")));
    assert_eq!(
        StoreLocation::default_path(APP_ID).unwrap(),
        home.path()
            .join(".local/state/btb")
            .join(APP_ID)
            .join("btb.sqlite3")
    );
}
