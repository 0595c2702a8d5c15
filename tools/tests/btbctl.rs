//! `btbctl` as a user runs it: the real binary, in another process, against a broker running in
//! this test process (its control socket) and against the store alone; `--json` parsed.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::Duration;

use btb_core::*;
use serde_json::Value;

const APP: &str = "org.example.btbctl";
const DEADLINE: Duration = Duration::from_secs(10);

/// `XDG_RUNTIME_DIR` is process-wide: one test at a time sets it.
static ENV: Mutex<()> = Mutex::new(());

struct Env {
    dir: tempfile::TempDir,
    _guard: MutexGuard<'static, ()>,
}

impl Env {
    fn new() -> Env {
        let guard = ENV.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("run")).unwrap();
        // SAFETY: every test of this binary holds `ENV` while it uses the environment.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", dir.path().join("run")) };
        Env { dir, _guard: guard }
    }

    fn store(&self) -> std::path::PathBuf {
        self.dir.path().join("btb.sqlite3")
    }

    /// Runs btbctl with `args` against this app and store.
    fn btbctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_btbctl"))
            .args(["--app", APP, "--store"])
            .arg(self.store())
            .args(args)
            .env("XDG_RUNTIME_DIR", self.dir.path().join("run"))
            .output()
            .unwrap()
    }

    /// Runs btbctl and parses its `--json` output (it must succeed).
    fn json(&self, args: &[&str]) -> Value {
        let out = self.btbctl(args);
        assert!(
            out.status.success(),
            "btbctl {args:?}: {}",
            text(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "btbctl {args:?} printed no JSON ({e}): {}",
                text(&out.stdout)
            )
        })
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn open(store: &Path) -> System {
    let mut m = Manifest::new(APP, "1").unwrap();
    m.declare(TaskDeclaration::new("app.Run", &["general", "timer", "systemEvent"]).unwrap())
        .unwrap();
    System::open(SystemOptions {
        manifest: Some(m),
        store: StoreLocation::File(store.to_owned()),
        simulated: true,
        policy: Policy {
            durability: Durability::Normal,
            ..Policy::default()
        },
        ..SystemOptions::default()
    })
    .unwrap()
}

fn register(
    sys: &System,
    name: &str,
    trigger: Trigger,
    condition: Option<SystemConditionType>,
) -> Registration {
    let mut b = Builder::new();
    b.name = Some(name.into());
    b.task_entry_point = Some("app.Run".into());
    b.set_trigger(trigger);
    if let Some(c) = condition {
        b.add_condition(c as u32);
    }
    sys.register(&b).unwrap()
}

#[test]
fn against_a_running_broker() {
    let env = Env::new();
    let sys = open(&env.store());
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    sys.register_entry_point(
        "app.Run",
        Some(Handler::Call(Arc::new(move |i: &Instance| {
            tx.lock().unwrap().send(i.task().name().to_owned()).unwrap();
        }))),
    )
    .unwrap();
    let sync = register(
        &sys,
        "sync",
        Trigger::Time {
            freshness_minutes: 15,
            one_shot: false,
        },
        None,
    );
    let upload = register(
        &sys,
        "upload",
        Trigger::application(),
        Some(SystemConditionType::InternetAvailable),
    );
    register(
        &sys,
        "on-event",
        Trigger::CustomEvent {
            trigger_id: "refresh".into(),
            recurrence: 1,
        },
        None,
    );

    let list = env.json(&["list", "--json"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sync", "upload", "on-event"]);
    assert_eq!(list[0]["task_id"], sync.task_id().to_string());
    assert_eq!(list[0]["trigger"]["kind"], "time");
    assert!(list[0]["next_due"].as_str().unwrap().ends_with('Z'));
    assert_eq!(list[1]["next_due"], Value::Null);
    assert_eq!(
        list[1]["conditions"],
        serde_json::json!(["INTERNET_AVAILABLE"])
    );

    // A request while offline latches; `show` says why it does not run.
    upload.request(None).unwrap();
    let show = env.json(&["show", "upload", "--json"]);
    assert_eq!(show["pending"], true);
    assert_eq!(
        show["waiting_for"],
        serde_json::json!(["INTERNET_AVAILABLE"])
    );
    assert_eq!(show["why"], "fired; waiting for INTERNET_AVAILABLE");
    let by_id = env.json(&["show", &sync.task_id().to_string(), "--json"]);
    assert!(
        by_id["why"].as_str().unwrap().starts_with("not due until "),
        "{by_id}"
    );

    // `run --ignore-conditions` runs it now; its history has the run.
    let out = env.btbctl(&["run", "upload", "--ignore-conditions"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), "upload");
    assert!(sys.wait_idle(DEADLINE).unwrap());
    let history = env.json(&["history", "upload", "--json"]);
    assert_eq!(history.as_array().unwrap().len(), 1);
    assert_eq!(history[0]["status"], "SUCCEEDED");
    assert_eq!(
        env.json(&["list", "--json"])[1]["last_outcome"],
        "SUCCEEDED"
    );

    // `signal` fires custom events; `unregister` removes.
    let out = env.btbctl(&["signal", "refresh"]);
    assert_eq!(
        text(&out.stdout),
        "signalled \"refresh\": 1 task(s) fired\n"
    );
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), "on-event");
    assert!(env.btbctl(&["unregister", "on-event"]).status.success());
    assert_eq!(sys.all_tasks().unwrap().len(), 2);

    // `doctor` names the broker and each state's source.
    sys.set_state(SystemConditionType::OnAcPower, true).unwrap();
    let doctor = env.json(&["doctor", "--json"]);
    assert_eq!(doctor["broker"], std::process::id());
    assert_eq!(
        doctor["ON_AC_POWER"],
        serde_json::json!({"state": true, "source": "simulated"})
    );
    assert_eq!(doctor["INTERNET_AVAILABLE"]["state"], Value::Null);

    // Human output: an aligned table.
    let out = env.btbctl(&["list"]);
    let table = text(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME    TRIGGER"), "{table}");
    let column = lines[0].find("TASK ID").unwrap();
    assert!(
        lines[1..].iter().all(|l| l
            .find(&sync.task_id().to_string()[..8])
            .is_none_or(|c| c == column)),
        "{table}"
    );

    // Errors: exit 1 with the reason; usage errors exit 2.
    let out = env.btbctl(&["show", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "btbctl: no task named or numbered \"nope\" in app \"org.example.btbctl\"\n"
    );
    assert_eq!(env.btbctl(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(env.btbctl(&["run"]).status.code(), Some(2));
    sys.close().unwrap();
}

#[test]
fn against_the_store_alone() {
    let env = Env::new();
    let sys = open(&env.store());
    register(
        &sys,
        "nightly",
        Trigger::Calendar {
            expression: "*-*-* 03:00:00".into(),
        },
        Some(SystemConditionType::OnAcPower),
    );
    register(&sys, "upload", Trigger::application(), None);
    sys.close().unwrap();

    let list = env.json(&["list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["trigger"]["kind"], "calendar");
    let show = env.json(&["show", "nightly", "--json"]);
    assert_eq!(show["waiting_for"], serde_json::json!(["ON_AC_POWER"]));
    assert!(
        show["why"]
            .as_str()
            .unwrap()
            .ends_with("(no broker runs for this app: nothing runs until one does)"),
        "{show}"
    );
    assert_eq!(
        env.json(&["history", "upload", "--json"]),
        serde_json::json!([])
    );

    // What needs a broker says so; unregister works on the store itself.
    let out = env.btbctl(&["run", "upload"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no broker runs for app \"org.example.btbctl\": run needs one")
    );
    assert!(env.btbctl(&["unregister", "upload"]).status.success());
    let sys = open(&env.store());
    let names: Vec<String> = sys
        .all_tasks()
        .unwrap()
        .iter()
        .map(|r| r.name().to_owned())
        .collect();
    assert_eq!(names, ["nightly"], "the unregistration is in the store");
    sys.close().unwrap();

    // A store that is not there is named.
    let out = Command::new(env!("CARGO_BIN_EXE_btbctl"))
        .args(["--app", APP, "--store", "/nonexistent/btb.sqlite3", "list"])
        .env("XDG_RUNTIME_DIR", env.dir.path().join("run"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no btb store at /nonexistent/btb.sqlite3"));
}

#[test]
fn another_store_of_the_app_is_never_acted_on_through_its_running_broker() {
    let env = Env::new();
    // Store B, with its own task, closed: no broker holds it.
    let b = env.dir.path().join("b.sqlite3");
    let sys_b = open(&b);
    register(&sys_b, "only-in-b", Trigger::application(), None);
    sys_b.close().unwrap();
    // The app's running broker holds store A (`env.store()`).
    let sys_a = open(&env.store());
    register(&sys_a, "only-in-a", Trigger::application(), None);
    let on_b = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_btbctl"))
            .args(["--app", APP, "--store"])
            .arg(&b)
            .args(args)
            .env("XDG_RUNTIME_DIR", env.dir.path().join("run"))
            .output()
            .unwrap()
    };
    let out = on_b(&["list", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["name"], "only-in-b", "B's tasks, not the broker's");
    assert!(
        text(&out.stderr).contains(&format!(
            "the broker of app \"{APP}\" (pid {}) holds store",
            std::process::id()
        )),
        "{}",
        text(&out.stderr)
    );
    // Unregistering a name of A's through --store B touches neither.
    let out = on_b(&["unregister", "only-in-a"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        sys_a.all_tasks().unwrap().len(),
        1,
        "A's task is still there"
    );
    let out = on_b(&["run", "only-in-b"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("run needs the broker of this store"),
        "{}",
        text(&out.stderr)
    );
    assert!(on_b(&["unregister", "only-in-b"]).status.success());
    sys_a.close().unwrap();
    let sys_b = open(&b);
    assert!(
        sys_b.all_tasks().unwrap().is_empty(),
        "the unregistration went to B"
    );
    sys_b.close().unwrap();
}

#[test]
fn completions_come_from_clap() {
    let out = Command::new(env!("CARGO_BIN_EXE_btbctl"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let script = text(&out.stdout);
    assert!(
        script.contains("btbctl")
            && script.contains("unregister")
            && script.contains("--ignore-conditions")
    );
}

/// `btbctl calendar` prints what `systemd-analyze calendar` prints (without "From now"), and needs
/// no app.
#[test]
fn calendar_prints_normal_forms_and_next_elapses() {
    let out = Command::new(env!("CARGO_BIN_EXE_btbctl"))
        .env("TZ", "Europe/Berlin")
        .args([
            "calendar",
            "--base-time=@1704067200", // 2024-01-01T00:00:00Z
            "--iterations=2",
            "Mon-Wed 12-10-15 17:48",
            "*-*~05,3",
            "daily Asia/Kolkata",
            "*-*-* 00:00:00",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "  Original form: Mon-Wed 12-10-15 17:48
Normalized form: Mon..Wed 2012-10-15 17:48:00
    Next elapse: never

  Original form: *-*~05,3
Normalized form: *-*~03,05 00:00:00
    Next elapse: Sat 2024-01-27 00:00:00 CET
       (in UTC): Fri 2024-01-26 23:00:00 UTC
       Iter. #2: Mon 2024-01-29 00:00:00 CET
       (in UTC): Sun 2024-01-28 23:00:00 UTC

  Original form: daily Asia/Kolkata
Normalized form: *-*-* 00:00:00 Asia/Kolkata
    Next elapse: Mon 2024-01-01 19:30:00 CET
       (in UTC): Mon 2024-01-01 18:30:00 UTC
       Iter. #2: Tue 2024-01-02 19:30:00 CET
       (in UTC): Tue 2024-01-02 18:30:00 UTC

Normalized form: *-*-* 00:00:00
    Next elapse: Tue 2024-01-02 00:00:00 CET
       (in UTC): Mon 2024-01-01 23:00:00 UTC
       Iter. #2: Wed 2024-01-03 00:00:00 CET
       (in UTC): Tue 2024-01-02 23:00:00 UTC
"
    );
    // A refused expression: named on stderr, exit status 1, the others still printed.
    let out = Command::new(env!("CARGO_BIN_EXE_btbctl"))
        .env("TZ", "UTC")
        .args(["calendar", "--base-time=@0", "12:61", "daily"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("bad calendar expression \"12:61\": minute 61 is out of range"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        text(&out.stdout),
        "\n  Original form: daily\nNormalized form: *-*-* 00:00:00\n    Next elapse: Fri 1970-01-02 00:00:00 UTC\n"
    );
}

#[test]
fn man_pages_come_from_clap() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_btbctl"))
        .arg("generate-man")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = Command::new(env!("CARGO_BIN_EXE_btbd"))
        .arg("--generate-man")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    let page = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    let btbctl = page("btbctl.1");
    for part in [
        ".TH btbctl 1",
        "EXIT STATUS",
        "btbctl\\-enable(1)",
        "btbd\\fR(8)",
    ] {
        assert!(btbctl.contains(part), "{part:?} not in btbctl.1:\n{btbctl}");
    }
    assert!(
        !btbctl.contains("generate"),
        "the hidden command is not documented"
    );
    // Each command btbctl.1 lists has its page.
    for command in [
        "list", "show", "history", "run", "enable", "disable", "doctor",
    ] {
        assert!(page(&format!("btbctl-{command}.1")).contains(&format!(".TH btbctl-{command} 1")));
    }
    let btbd = page("btbd.8");
    for part in [
        ".TH btbd 8",
        "\\-\\-manifest",
        "SIGTERM",
        "EXIT STATUS",
        "btbctl\\fR(1)",
    ] {
        assert!(btbd.contains(part), "{part:?} not in btbd.8:\n{btbd}");
    }
    assert!(
        !btbd.contains("generate"),
        "the hidden option is not documented"
    );
}

/// `enable` where no systemd user manager runs (this test hides systemctl from PATH, so also on a
/// machine with systemd): the manifest lands where btbd@.service reads it, exit status 3, and the
/// printed command starts btbd by hand. `disable` removes the manifest. The systemctl branch
/// (`systemctl --user enable --now btbd@APP.service`) needs a systemd user session: not run here.
#[test]
fn enable_installs_the_manifest_and_says_how_to_start_btbd_without_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let empty_path = dir.path().join("bin");
    for d in [&home, &empty_path, &dir.path().join("run")] {
        std::fs::create_dir(d).unwrap();
    }
    let source = dir.path().join("app.toml");
    std::fs::write(
        &source,
        format!(
            "app_id = \"{APP}\"\nversion = \"1\"\n\n[[task]]\nentry_point = \"app.Run\"\n\
             types = [\"general\"]\nexec = [\"/bin/true\"]\n"
        ),
    )
    .unwrap();
    let btbctl = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_btbctl"))
            .args(args)
            .env_clear()
            .env("HOME", &home)
            .env("PATH", &empty_path)
            .env("XDG_RUNTIME_DIR", dir.path().join("run"))
            .env("XDG_STATE_HOME", dir.path().join("state"))
            .output()
            .unwrap()
    };

    let out = btbctl(&["enable", "--manifest", source.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let installed = home
        .join(".local/share/btb")
        .join(APP)
        .join("manifest.toml");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(&source).unwrap()
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "btbd@{APP}.service is not enabled; start btbd by hand with:"
        )),
        "{stderr}"
    );
    let stdout = text(&out.stdout);
    let command = stdout.lines().last().unwrap();
    let expected = format!(
        "{} --manifest {}",
        env!("CARGO_BIN_EXE_btbd"),
        installed.display()
    );
    assert_eq!(command, expected, "{stdout}");

    // The printed command starts the app's broker, which btbctl then reaches.
    let words: Vec<&str> = command.split(' ').collect();
    let mut btbd = Command::new(words[0])
        .args(&words[1..])
        .env("XDG_RUNTIME_DIR", dir.path().join("run"))
        .env("XDG_STATE_HOME", dir.path().join("state"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = btbd.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let _ = tx.send(line);
    });
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), "btbd: ready\n");
    let out = btbctl(&["--app", APP, "doctor", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doctor: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doctor["broker"], btbd.id());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(btbd.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(btbd.wait().unwrap());
    });
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap().code(), Some(0));

    // disable removes the manifest (and its directory); again, it says nothing is installed.
    let out = btbctl(&["--app", APP, "disable"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("removed {}\n", installed.display())
    );
    assert!(!installed.parent().unwrap().exists());
    let out = btbctl(&["--app", APP, "disable"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).starts_with("no manifest installed at "));

    // enable needs the manifest itself; disable takes an app id, not a path.
    let out = btbctl(&["--app", APP, "enable"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("pass --manifest PATH"));
    let out = btbctl(&["--app", "../../etc", "disable"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("is not a reverse-DNS name"));
}

/// `btbctl` run as a real process: with no app named it is a usage error.
#[test]
fn no_app_named_is_a_usage_error() {
    let env = Env::new();
    let out = Command::new(env!("CARGO_BIN_EXE_btbctl"))
        .arg("list")
        .env("XDG_RUNTIME_DIR", env.dir.path().join("run"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("name the app: --manifest PATH"), "{stderr}");
    assert!(stderr.contains("Usage:"), "{stderr}");
}

#[test]
fn run_passes_arguments_and_spends_a_one_shot_only_when_told() {
    let env = Env::new();
    let sys = open(&env.store());
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    sys.register_entry_point(
        "app.Run",
        Some(Handler::Call(Arc::new(move |i: &Instance| {
            let details = i.trigger_details().cloned();
            tx.lock()
                .unwrap()
                .send((i.task().name().to_owned(), details))
                .unwrap();
        }))),
    )
    .unwrap();
    register(&sys, "upload", Trigger::application(), None);
    let once = register(
        &sys,
        "once",
        Trigger::Time {
            freshness_minutes: 15,
            one_shot: true,
        },
        None,
    );

    // --args: a JSON object becomes the run's trigger details; anything else is a usage error.
    let out = env.btbctl(&["run", "upload", "--args", r#"{"file":"a.txt"}"#]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (name, details) = rx.recv_timeout(DEADLINE).unwrap();
    assert_eq!(name, "upload");
    assert_eq!(details, Some(serde_json::json!({"file": "a.txt"})));
    assert!(sys.wait_idle(DEADLINE).unwrap());
    for (bad, says) in [("[1, 2]", "not a JSON object"), ("{nope", "not JSON")] {
        let out = env.btbctl(&["run", "upload", "--args", bad]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("--args") && stderr.contains(says),
            "{stderr}"
        );
    }

    // A one-shot: `run` says it spends it and wants --yes.
    let due = |env: &Env| {
        let list = env.json(&["list", "--json"]);
        (list[1]["spent"].clone(), list[1]["next_due"].clone())
    };
    assert!(due(&env).1.is_string(), "a one-shot time trigger is due");
    let out = env.btbctl(&["run", "once"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("\"once\" has a one-shot trigger: this run spends it")
            && stderr.contains("--yes")
            && stderr.contains("--keep"),
        "{stderr}"
    );
    assert_eq!(due(&env).0, false, "not run, not spent");

    // --keep runs it and leaves it unspent and due.
    let out = env.btbctl(&["run", "once", "--keep"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "fired \"once\"\n");
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap().0, "once");
    assert!(sys.wait_idle(DEADLINE).unwrap());
    let (spent, next_due) = due(&env);
    assert_eq!(spent, false);
    assert!(next_due.is_string(), "{next_due}");

    // --yes runs and spends it: no next due any more.
    let out = env.btbctl(&["run", "once", "--yes"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "fired \"once\" (now spent)\n");
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap().0, "once");
    assert!(sys.wait_idle(DEADLINE).unwrap());
    assert_eq!(due(&env), (Value::Bool(true), Value::Null));
    let out = env.btbctl(&["list"]);
    let row = text(&out.stdout)
        .lines()
        .find(|l| l.starts_with("once "))
        .unwrap()
        .to_owned();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert!(
        cells.contains(&"spent") && !cells.iter().any(|c| c.ends_with('Z')),
        "{row}"
    );

    // Spent: --yes is refused by the broker; --keep still runs it, unspent as it was.
    let out = env.btbctl(&["run", "once", "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is spent"),
        "{}",
        text(&out.stderr)
    );
    let out = env.btbctl(&["run", "once", "--keep"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap().0, "once");
    assert!(sys.wait_idle(DEADLINE).unwrap());
    assert_eq!(due(&env).0, true);
    sys.close().unwrap();

    // The store alone shows no next due for the spent task either.
    let list = env.json(&["list", "--json"]);
    assert_eq!(list[1]["task_id"], once.task_id().to_string());
    assert_eq!(list[1]["spent"], true);
    assert_eq!(list[1]["next_due"], Value::Null);
}

#[test]
fn show_of_a_shared_name_lists_the_tasks() {
    let env = Env::new();
    let sys = open(&env.store());
    let a = register(&sys, "dup", Trigger::application(), None);
    let b = register(
        &sys,
        "dup",
        Trigger::CustomEvent {
            trigger_id: "refresh".into(),
            recurrence: 1,
        },
        None,
    );
    sys.close().unwrap();
    let out = env.btbctl(&["show", "dup"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("different groups"), "{stderr}");
    assert!(
        stderr.contains("2 tasks are named \"dup\": name one by its id: ")
            && stderr.contains(&format!("{} (application trigger, no group)", a.task_id()))
            && stderr.contains(&b.task_id().to_string()),
        "{stderr}"
    );
    let by_id = env.json(&["show", &b.task_id().to_string(), "--json"]);
    assert_eq!(by_id["name"], "dup");
}
