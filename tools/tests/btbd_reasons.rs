//! SPEC §4, §10 with a real btbd process running real `exec` tasks: servicing (the manifest file
//! replaced with a new version, or SIGHUP after a change btbd did not see: runs canceled with
//! SERVICING_UPDATE, the new manifest's declarations used, SERVICING_COMPLETE fired) and
//! `btbctl uninstall` (runs canceled with UNINSTALL, the store and the control socket removed,
//! btbd gone).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use btb_core::*;

const APP: &str = "org.example.btbdreasons";
/// Long enough for btbd's grace (5 s) after a cancel the shell script does not hear.
const DEADLINE: Duration = Duration::from_secs(20);

struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        for d in ["run", "app", "elsewhere"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        nix::unistd::mkfifo(&dir.path().join("events"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        Scratch { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn store(&self) -> PathBuf {
        self.path("btb.sqlite3")
    }

    /// The manifest btbd is given.
    fn manifest(&self) -> PathBuf {
        self.path("app/manifest.toml")
    }

    /// A manifest of `version`: `app.Long` writes "long" and waits; `app.Serviced` (run on
    /// SERVICING_COMPLETE) writes which version's declaration ran it.
    fn manifest_text(&self, version: &str) -> String {
        let events = self.path("events").display().to_string();
        format!(
            r#"app_id = "{APP}"
version = "{version}"

[[task]]
entry_point = "app.Long"
types = ["general"]
exec = ["/bin/sh", "-c", "echo long > {events}; exec sleep 1000"]

[[task]]
entry_point = "app.Serviced"
types = ["systemEvent"]
exec = ["/bin/sh", "-c", "echo serviced by {version} > {events}"]
"#
        )
    }

    /// Replaces the manifest whole, as `btbctl enable` and editors do (a rename).
    fn install(&self, version: &str) {
        let partial = self.path("app/.manifest.partial");
        std::fs::write(&partial, self.manifest_text(version)).unwrap();
        std::fs::rename(&partial, self.manifest()).unwrap();
    }

    fn register(&self) {
        self.install("1");
        let sys = System::open(SystemOptions {
            manifest: Some(Manifest::load(self.manifest()).unwrap()),
            store: StoreLocation::File(self.store()),
            simulated: true,
            ..SystemOptions::default()
        })
        .unwrap();
        let mut long = Builder::new();
        long.name = Some("long".into());
        long.task_entry_point = Some("app.Long".into());
        long.set_trigger(Trigger::application());
        sys.register(&long).unwrap();
        let mut serviced = Builder::new();
        serviced.name = Some("serviced".into());
        serviced.task_entry_point = Some("app.Serviced".into());
        serviced.set_trigger(Trigger::System {
            trigger_type: SystemTriggerType::ServicingComplete as u32,
            one_shot: false,
        });
        sys.register(&serviced).unwrap();
        sys.close().unwrap();
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("XDG_RUNTIME_DIR", self.path("run"));
        cmd
    }

    /// Starts btbd on `manifest` (its stderr in `btbd.log`) and waits for its "ready" line.
    fn btbd(&self, manifest: &Path) -> Child {
        let mut child = self
            .command(env!("CARGO_BIN_EXE_btbd"))
            .arg("--manifest")
            .arg(manifest)
            .arg("--store")
            .arg(self.store())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(self.path("btbd.log")).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), "btbd: ready\n");
        child
    }

    fn btbctl(&self, args: &[&str]) -> std::process::Output {
        self.command(env!("CARGO_BIN_EXE_btbctl"))
            .args(["--app", APP, "--store"])
            .arg(self.store())
            .args(args)
            .output()
            .unwrap()
    }

    /// The next line a task wrote to the events fifo.
    fn next_event(&self) -> String {
        let fifo = self.path("events");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(std::fs::read_to_string(fifo).unwrap());
        });
        rx.recv_timeout(DEADLINE).expect("a task to run")
    }

    /// The store's files and directories still there (the database, SQLite's, btb's beside it).
    fn left_of_store(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("btb.sqlite3"))
            .collect()
    }

    fn log(&self) -> String {
        let mut text = String::new();
        std::fs::File::open(self.path("btbd.log"))
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        text
    }
}

#[track_caller]
fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn signal(child: &Child, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let (tx, rx) = mpsc::channel();
    let pid = child.id();
    let mut owned = std::mem::replace(child, Command::new("/bin/true").spawn().unwrap());
    std::thread::spawn(move || {
        let _ = tx.send(owned.wait().unwrap());
    });
    rx.recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("btbd (pid {pid}) did not exit"))
}

fn history(store: &Path, name: &str) -> Vec<RunRecord> {
    let store = Store::open_read_only(store).unwrap();
    let id = store
        .load()
        .unwrap()
        .into_iter()
        .find(|t| t.record.name == name)
        .unwrap()
        .record
        .task_id;
    store.history(&id).unwrap()
}

#[test]
fn a_new_manifest_version_services_the_app_under_btbd() {
    let s = Scratch::new();
    s.register();
    // btbd reads the manifest through a link in a directory it watches; the file the link names
    // is elsewhere: a change there is seen only on SIGHUP.
    let link = s.path("elsewhere/manifest.toml");
    std::os::unix::fs::symlink(s.manifest(), &link).unwrap();
    let mut btbd = s.btbd(&link);

    ok(&s.btbctl(&["run", "long"]));
    assert_eq!(s.next_event(), "long\n");
    // Replaced by a rename in its directory, as `btbctl enable` does — but btbd watches the
    // link's directory: nothing yet. SIGHUP makes btbd read it.
    s.install("2");
    signal(&btbd, nix::sys::signal::Signal::SIGHUP);
    assert_eq!(
        s.next_event(),
        "serviced by 2\n",
        "SERVICING_COMPLETE, run by the new manifest's declaration"
    );

    // The link's target replaced in the watched directory: read without a signal.
    ok(&s.btbctl(&["run", "long"]));
    assert_eq!(s.next_event(), "long\n");
    let partial = s.path("elsewhere/.partial");
    std::fs::write(&partial, s.manifest_text("3")).unwrap();
    std::fs::rename(&partial, &link).unwrap();
    assert_eq!(s.next_event(), "serviced by 3\n");

    signal(&btbd, nix::sys::signal::Signal::SIGTERM);
    assert_eq!(wait_exit(&mut btbd).code(), Some(0));
    let long = history(&s.store(), "long");
    assert_eq!(long.len(), 2, "{long:?}");
    for run in &long {
        assert_eq!(run.outcome, TaskOutcome::Canceled);
        assert_eq!(run.reason, Some(CancellationReason::ServicingUpdate));
    }
    let out = ok(&s.btbctl(&["history", "long"]));
    assert!(out.contains("CANCELED (SERVICING_UPDATE)"), "{out}");
    let log = s.log();
    assert!(log.contains("serviced to version \"2\""), "{log}");
    assert!(log.contains("serviced to version \"3\""), "{log}");
}

#[test]
fn btbctl_uninstall_cancels_runs_and_removes_the_store_under_btbd() {
    let s = Scratch::new();
    s.register();
    let mut btbd = s.btbd(&s.manifest());
    ok(&s.btbctl(&["run", "long"]));
    assert_eq!(s.next_event(), "long\n");

    // Without --yes: a usage error, nothing removed.
    let out = s.btbctl(&["uninstall"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    assert!(s.store().exists());

    let out = ok(&s.btbctl(&["uninstall", "--yes"]));
    assert!(out.contains("2 task(s) unregistered"), "{out}");
    assert!(!s.store().exists());
    assert!(!s.path(&format!("run/btb/{APP}.sock")).exists());
    // btbd saw its store go: it closes (the run's grace first) and exits 0.
    assert_eq!(wait_exit(&mut btbd).code(), Some(0));
    let log = s.log();
    assert!(log.contains("canceled: UNINSTALL"), "{log}");
    assert!(
        log.contains("was removed (the app was uninstalled)"),
        "{log}"
    );
    assert_eq!(
        s.left_of_store(),
        Vec::<String>::new(),
        "btbd wrote beside the store again"
    );
}

#[test]
fn btbctl_uninstall_without_a_broker_removes_the_store_itself() {
    let s = Scratch::new();
    s.register();
    let out = ok(&s.btbctl(&["uninstall", "--yes"]));
    assert!(out.contains("2 task(s) unregistered"), "{out}");
    assert_eq!(s.left_of_store(), Vec::<String>::new());
    let out = ok(&s.btbctl(&["uninstall", "--yes"]));
    assert!(out.contains("nothing to uninstall"), "{out}");
}
