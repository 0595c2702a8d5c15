//! SPEC §4–§5, out-of-process hosts: an entry point declared with `exec` runs as a real child
//! process. Its exit status is the outcome, its output is kept with the run, cancellation goes over
//! the instance socket and then as SIGTERM and SIGKILL to its process group, and nothing it forked
//! is left behind. The hosts are `/bin/sh` scripts (a host that never connects) and this test
//! binary itself started again as a host (`host_*` functions, ignored in normal runs).

mod common;

use std::sync::mpsc;
use std::time::Duration;

use btb_core::*;
use common::rt::{DEADLINE, MIN, SEC, T0, completions, none, recv};

const APP: &str = "org.example.exec";

/// A manifest with one exec entry point per `(name, argv)`.
fn manifest(hosts: &[(&str, Vec<String>)]) -> Manifest {
    let mut m = Manifest::new(APP, "1").unwrap();
    for (ep, argv) in hosts {
        m.declare(
            TaskDeclaration::new(ep, &["general"])
                .unwrap()
                .with_exec(argv.clone())
                .unwrap(),
        )
        .unwrap();
    }
    m
}

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

/// This test binary, started as a host that runs the ignored test `name`.
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

struct Rig {
    sys: System,
    clock: ManualClock,
    _dir: tempfile::TempDir,
}

fn open(hosts: &[(&str, Vec<String>)], grace_ms: u32) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0).unwrap();
    let sys = System::open(SystemOptions {
        manifest: Some(manifest(hosts)),
        store: StoreLocation::File(dir.path().join("btb.sqlite3")),
        clock: Clock::Manual(clock.clone()),
        simulated: true,
        policy: Policy {
            grace_ms,
            durability: Durability::Normal,
            ..Policy::default()
        },
        ..SystemOptions::default()
    })
    .unwrap();
    Rig {
        sys,
        clock,
        _dir: dir,
    }
}

impl Rig {
    fn register(&self, name: &str, ep: &str) -> (Registration, mpsc::Receiver<Completion>) {
        let mut b = Builder::new();
        b.name = Some(name.into());
        b.task_entry_point = Some(ep.into());
        b.set_trigger(Trigger::application());
        let reg = self.sys.register(&b).unwrap();
        let done = completions(&reg);
        (reg, done)
    }

    fn run(
        &self,
        name: &str,
        ep: &str,
        args: Option<serde_json::Value>,
    ) -> (Registration, Completion) {
        let (reg, done) = self.register(name, ep);
        assert_eq!(
            reg.request(args).unwrap(),
            ApplicationTriggerResult::Allowed
        );
        let c = recv(&done, "the host run to end");
        (reg, c)
    }
}

/// This process's unreaped children that ran `comm` (tests run in parallel: each looks at its
/// own hosts' program).
fn zombies(comm: &str) -> Vec<String> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in text.split_whitespace() {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.contains(&format!("({comm}) Z")) {
                out.push(pid.to_owned());
            }
        }
    }
    out
}

/// A pidfd of a process that is alive now: it names that process and no other, even after its
/// pid is reused (a pid read from /proc later could be another process's).
fn pidfd(pid: i32) -> std::os::fd::OwnedFd {
    let pid = rustix::process::Pid::from_raw(pid).expect("a pid");
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).expect("alive")
}

/// Whether the process of `fd` ends within `timeout` (its pidfd becomes readable when it exits,
/// reaped or not).
fn exits_within(fd: &std::os::fd::OwnedFd, timeout: Duration) -> bool {
    let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
    let timeout = rustix::time::Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    rustix::event::poll(&mut fds, Some(&timeout)).is_ok_and(|n| n == 1)
}

#[test]
fn exit_0_succeeds_with_its_output_and_environment_kept() {
    let rig = open(
        &[(
            "app.Env",
            sh(
                "echo \"task=$BTB_TASK_NAME app=$BTB_APP_ID fd=$BTB_HOST_FD args=$BTB_TRIGGER_DETAILS\"; \
                env | cut -d= -f1 | sort | tr '\\n' ' '; echo; pwd; echo warning >&2",
            ),
        )],
        1000,
    );
    let (reg, c) = rig.run("env", "app.Env", Some(serde_json::json!({"n": 1})));
    assert_eq!(c.outcome, TaskOutcome::Succeeded, "{c:?}");
    let run = &reg.history().unwrap()[0];
    let stdout = run.stdout.as_deref().unwrap();
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next().unwrap(),
        r#"task=env app=org.example.exec fd=3 args={"n":1}"#
    );
    // A clean environment: the BTB_* variables and a few any program expects, nothing else.
    let names: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    for name in &names {
        assert!(
            name.starts_with("BTB_")
                || [
                    "PATH",
                    "HOME",
                    "USER",
                    "LOGNAME",
                    "LANG",
                    "XDG_RUNTIME_DIR",
                    "TZ",
                    "PWD",
                    "SHLVL",
                    "_"
                ]
                .contains(name),
            "{name} leaked into the host's environment: {names:?}"
        );
    }
    for name in [
        "BTB_INSTANCE_ID",
        "BTB_TASK_ID",
        "BTB_TASK_NAME",
        "BTB_ENTRY_POINT",
        "BTB_APP_ID",
        "BTB_HOST_FD",
        "BTB_TRIGGER_DETAILS",
    ] {
        assert!(names.contains(&name), "{name} missing: {names:?}");
    }
    // The working directory: the app's state directory (where the store is).
    assert_eq!(
        std::path::Path::new(lines.next().unwrap()),
        std::path::Path::new(&rig.sys.store_path())
            .parent()
            .unwrap()
    );
    assert_eq!(run.stderr.as_deref(), Some("warning\n"));
    assert!(zombies("sh").is_empty(), "reaped: {:?}", zombies("sh"));
}

#[test]
fn a_failure_names_the_status_or_signal_and_quotes_stderr() {
    let rig = open(
        &[
            ("app.Fail", sh("echo one >&2; echo 'disk full' >&2; exit 3")),
            ("app.Crash", sh("kill -SEGV $$")),
            ("app.Missing", vec!["/nonexistent/host".into()]),
        ],
        1000,
    );
    let (_, c) = rig.run("fail", "app.Fail", None);
    assert_eq!(c.outcome, TaskOutcome::Failed);
    assert_eq!(
        c.message.as_deref(),
        Some("the host process exited with status 3; stderr ends with:\none\ndisk full")
    );
    let (_, c) = rig.run("crash", "app.Crash", None);
    assert_eq!(c.outcome, TaskOutcome::Failed);
    assert_eq!(
        c.message.as_deref(),
        Some("the host process was killed by SIGSEGV (11)")
    );
    let (reg, c) = rig.run("missing", "app.Missing", None);
    assert_eq!(c.outcome, TaskOutcome::Failed);
    assert!(
        c.message
            .as_deref()
            .unwrap()
            .starts_with("cannot start \"/nonexistent/host\""),
        "{c:?}"
    );
    assert!(
        rig.sys
            .all_tasks()
            .unwrap()
            .iter()
            .any(|r| r.task_id() == reg.task_id()),
        "the registration stays"
    );
}

#[test]
fn a_host_that_ignores_sigterm_is_killed_after_two_graces_with_its_grandchildren() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pids");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    // Ignores SIGTERM (and so does the grandchild, which inherits the disposition), tells the
    // test both pids through the fifo, and waits forever.
    let script = format!(
        "trap '' TERM; sleep 1000 & echo \"$$ $!\" > {}; wait; wait",
        fifo.display()
    );
    let rig = open(&[("app.Hang", sh(&script))], 2000);
    let (reg, done) = rig.register("hang", "app.Hang");
    reg.request(None).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read_to_string(&fifo).unwrap());
    });
    let pids = recv(&rx, "the host's pids");
    let pids: Vec<i32> = pids
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    // Both are alive (the host is not reaped before it exits; the grandchild's parent is the
    // host): pidfds taken now follow these two processes, whatever their pids become.
    let processes: Vec<_> = pids.iter().map(|p| pidfd(*p)).collect();
    let alive = |i: usize| !exits_within(&processes[i], Duration::ZERO);
    assert!(alive(0) && alive(1));

    reg.unregister(true).unwrap(); // cancels the run (ABORT): the grace starts
    rig.clock.advance_ms(2 * SEC).unwrap(); // grace over: SIGTERM, ignored
    assert!(alive(0) && alive(1), "SIGTERM is ignored");
    rig.clock.advance_ms(2 * SEC).unwrap(); // second grace over: SIGKILL to the group
    let c = recv(&done, "the killed host's end");
    assert_eq!(c.outcome, TaskOutcome::Canceled);
    assert_eq!(c.reason, Some(CancellationReason::Abort));
    assert!(
        exits_within(&processes[1], DEADLINE),
        "the grandchild is not left behind"
    );
    assert!(!alive(0), "the host was killed");
    assert!(rig.sys.wait_idle(DEADLINE).unwrap());
}

#[test]
fn a_host_over_its_time_limit_is_canceled_then_terminated() {
    // 10 s for application-triggered runs, then a 2 s grace: the host hears the cancellation,
    // ignores it, and gets SIGTERM, which ends it.
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0).unwrap();
    let mut policy = Policy {
        grace_ms: 2000,
        durability: Durability::Normal,
        ..Policy::default()
    };
    policy.set_time_limit(TriggerKind::Application, 10);
    let sys = System::open(SystemOptions {
        manifest: Some(manifest(&[("app.Slow", this_binary_as("host_sleeps"))])),
        store: StoreLocation::File(dir.path().join("btb.sqlite3")),
        clock: Clock::Manual(clock.clone()),
        simulated: true,
        policy,
        ..SystemOptions::default()
    })
    .unwrap();
    let rig = Rig {
        sys,
        clock,
        _dir: dir,
    };
    let (reg, done) = rig.register("slow", "app.Slow");
    let prx = progress_of(&reg);
    reg.request(None).unwrap();
    assert_eq!(recv(&prx, "the host's ready signal"), 1);
    rig.clock.advance_ms(10 * SEC).unwrap(); // the limit: canceled, the grace starts
    none(&done, "an end before the grace");
    rig.clock.advance_ms(2 * SEC).unwrap(); // the grace: SIGTERM to the group
    let c = recv(&done, "the end of the run over its limit");
    assert_eq!(c.outcome, TaskOutcome::Canceled);
    assert_eq!(c.reason, Some(CancellationReason::ExecutionTimeExceeded));
    // The libtest harness of the host prints its own lines around the host's.
    let stdout = reg.history().unwrap()[0].stdout.clone().unwrap();
    assert!(stdout.ends_with("started\n"), "{stdout:?}");
}

#[test]
fn a_thousand_instant_exits_leave_no_zombie() {
    let rig = open(&[("app.True", vec!["/bin/true".into()])], 1000);
    let (reg, done) = rig.register("true", "app.True");
    for _ in 0..1000 {
        reg.request(None).unwrap();
        assert_eq!(recv(&done, "a run").outcome, TaskOutcome::Succeeded);
    }
    assert!(rig.sys.wait_idle(DEADLINE).unwrap());
    assert!(zombies("true").is_empty(), "zombies: {:?}", zombies("true"));
    assert_eq!(
        reg.history().unwrap().len(),
        100,
        "the history keeps the last 100"
    );
}

#[test]
fn a_connected_host_reports_progress_and_failure_and_hears_cancellation() {
    let rig = open(
        &[
            ("app.Progress", this_binary_as("host_progress_then_fail")),
            ("app.Cancel", this_binary_as("host_waits_for_cancellation")),
        ],
        5000,
    );
    let (reg, done) = rig.register("progress", "app.Progress");
    let prx = progress_of(&reg);
    reg.request(None).unwrap();
    assert_eq!(recv(&prx, "progress"), 40);
    assert_eq!(recv(&prx, "progress"), 80);
    let c = recv(&done, "the end");
    assert_eq!(c.outcome, TaskOutcome::Failed, "{c:?}");
    assert_eq!(c.message.as_deref(), Some("reported: bad input"));
    assert_eq!(c.last_progress, 80);

    let (reg, done) = rig.register("cancel", "app.Cancel");
    let prx = progress_of(&reg);
    reg.request(None).unwrap();
    assert_eq!(recv(&prx, "the host's ready signal"), 1);
    reg.unregister(true).unwrap();
    let c = recv(&done, "the canceled host's end");
    // It heard ABORT over the socket and exited at once, well inside the grace.
    assert_eq!(c.outcome, TaskOutcome::Canceled);
    assert_eq!(c.reason, Some(CancellationReason::Abort));
    let _ = MIN;
}

#[test]
fn garbage_on_the_instance_socket_closes_it_and_the_exit_status_still_decides() {
    let rig = open(
        &[
            // Not a frame: a length far over the limit.
            (
                "app.Garbage",
                sh("printf 'not a frame at all' >&3; echo done"),
            ),
            (
                "app.Flood",
                sh("printf 'not a frame at all' >&3; head -c 8000000 /dev/zero >&3; echo done"),
            ),
            (
                "app.OtherVersion",
                this_binary_as("host_speaks_another_version"),
            ),
        ],
        1000,
    );
    let (reg, c) = rig.run("garbage", "app.Garbage", None);
    assert_eq!(c.outcome, TaskOutcome::Succeeded, "{c:?}");
    assert_eq!(reg.history().unwrap()[0].stdout.as_deref(), Some("done\n"));
    // It goes on writing after its bad frame: our end is closed, it gets EPIPE (`head` dies of
    // SIGPIPE) instead of blocking, and its exit status still decides.
    let (reg, c) = rig.run("flood", "app.Flood", None);
    assert_eq!(c.outcome, TaskOutcome::Succeeded, "{c:?}");
    assert_eq!(reg.history().unwrap()[0].stdout.as_deref(), Some("done\n"));
    let (reg, c) = rig.run("other-version", "app.OtherVersion", None);
    assert_eq!(c.outcome, TaskOutcome::Succeeded, "{c:?}");
    let stdout = reg.history().unwrap()[0].stdout.clone().unwrap();
    assert!(
        stdout.contains("refused: instance protocol: no protocol version in common: this build speaks versions 1–2, the peer version 99"),
        "{stdout}"
    );
}

#[test]
fn a_host_inherits_no_descriptor_of_the_app_but_its_socket_and_stdio() {
    // A descriptor the app opened without O_CLOEXEC (as a C library or Python's inheritable
    // descriptors do): SPEC §5 gives the host fd 3 and stdio, nothing else.
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("leak-marker");
    std::fs::write(&marker, b"").unwrap();
    let leaked = rustix::fs::open(
        &marker,
        rustix::fs::OFlags::RDONLY,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    assert!(
        !rustix::io::fcntl_getfd(&leaked)
            .unwrap()
            .contains(rustix::io::FdFlags::CLOEXEC),
        "inheritable"
    );
    let rig = open(&[("app.Fds", sh("ls -l /proc/self/fd"))], 1000);
    let (reg, c) = rig.run("fds", "app.Fds", None);
    assert_eq!(c.outcome, TaskOutcome::Succeeded, "{c:?}");
    let listing = reg.history().unwrap()[0].stdout.clone().unwrap();
    assert!(!listing.contains("leak-marker"), "{listing}");
    // `ls` itself reads /proc/self/fd through one descriptor of its own.
    for line in listing.lines().filter(|l| l.contains(" -> ")) {
        let (name, target) = line.split_once(" -> ").unwrap();
        let fd: i32 = name.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(
            fd <= 3 || target.starts_with("/proc/"),
            "fd {fd} ({target}) leaked into the host: {listing}"
        );
    }
    drop(leaked);
}

/// The pids a host script writes to the fifo `fifo` (see `fifo_script`), once it wrote them.
fn pids_from(fifo: std::path::PathBuf) -> Vec<i32> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read_to_string(&fifo).unwrap());
    });
    let pids: String = recv(&rx, "the host's pids");
    pids.split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

fn fifo_in(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let fifo = dir.path().join("pids");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    fifo
}

#[test]
fn a_host_that_leaves_its_process_group_is_still_terminated() {
    let rig = open(
        &[("app.Leaves", this_binary_as("host_leaves_its_group"))],
        2000,
    );
    let (reg, done) = rig.register("leaves", "app.Leaves");
    let prx = progress_of(&reg);
    reg.request(None).unwrap();
    assert_eq!(recv(&prx, "the host's ready signal"), 1);
    reg.unregister(true).unwrap(); // ABORT, which it ignores: the grace starts
    rig.clock.advance_ms(2 * SEC).unwrap(); // grace over: SIGTERM, to the host itself too
    let c = recv(&done, "the end of the host that left its group");
    assert_eq!(c.outcome, TaskOutcome::Canceled);
    assert_eq!(c.reason, Some(CancellationReason::Abort));
}

#[test]
fn a_grandchild_in_a_session_of_its_own_is_terminated_with_its_host() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = fifo_in(&dir);
    // The grandchild leaves the host's session and process group (setsid), then tells its pid.
    let script = format!(
        "setsid sh -c 'echo $$ > {}; exec sleep 1000' & wait",
        fifo.display()
    );
    let rig = open(&[("app.Daemon", sh(&script))], 2000);
    let (reg, done) = rig.register("daemon", "app.Daemon");
    reg.request(None).unwrap();
    let grandchild = pidfd(pids_from(fifo)[0]);
    reg.unregister(true).unwrap();
    rig.clock.advance_ms(2 * SEC).unwrap(); // grace over: SIGTERM to the host and what it forked
    let c = recv(&done, "the host's end");
    assert_eq!(c.outcome, TaskOutcome::Canceled);
    let survived = !exits_within(&grandchild, DEADLINE);
    if survived {
        let _ = rustix::process::pidfd_send_signal(&grandchild, rustix::process::Signal::KILL);
    }
    assert!(
        !survived,
        "the grandchild in its own session is not left behind"
    );
}

#[test]
fn close_terminates_a_host_before_killing_it_and_keeps_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = fifo_in(&dir);
    // Ignores the cancellation, says so on stdout when SIGTERM comes, and exits 7.
    let script = format!(
        "trap 'echo got TERM; exit 7' TERM; echo started; echo $$ > {}; \
         while :; do sleep 1 & wait $!; done",
        fifo.display()
    );
    let rig = open(&[("app.Stubborn", sh(&script))], 300);
    let (reg, _done) = rig.register("stubborn", "app.Stubborn");
    let task_id = reg.task_id();
    reg.request(None).unwrap();
    let host = pidfd(pids_from(fifo)[0]);
    let store = rig.sys.store_path().to_owned();
    rig.sys.close().unwrap();
    assert!(
        exits_within(&host, Duration::ZERO),
        "no host outlives close"
    );
    let history = Store::open_read_only(std::path::Path::new(&store))
        .unwrap()
        .history(&task_id)
        .unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    let run = &history[0];
    assert_eq!(run.outcome, TaskOutcome::Canceled, "{run:?}");
    assert_eq!(run.reason, Some(CancellationReason::Terminating));
    assert_eq!(
        run.stdout.as_deref(),
        Some("started\ngot TERM\n"),
        "SIGTERM came first, and the output is kept"
    );
}

#[test]
fn close_kills_a_host_that_ignores_sigterm_after_a_second_grace() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = fifo_in(&dir);
    let script = format!(
        "trap 'echo ignored TERM' TERM; echo started; echo $$ > {}; \
         while :; do sleep 1 & wait $!; done",
        fifo.display()
    );
    let rig = open(&[("app.Deaf", sh(&script))], 300);
    let (reg, _done) = rig.register("deaf", "app.Deaf");
    let task_id = reg.task_id();
    reg.request(None).unwrap();
    let host = pidfd(pids_from(fifo)[0]);
    let store = rig.sys.store_path().to_owned();
    rig.sys.close().unwrap();
    assert!(
        exits_within(&host, Duration::ZERO),
        "no host outlives close"
    );
    let history = Store::open_read_only(std::path::Path::new(&store))
        .unwrap()
        .history(&task_id)
        .unwrap();
    let run = &history[0];
    assert_eq!(run.outcome, TaskOutcome::Canceled, "{run:?}");
    let stdout = run.stdout.as_deref().unwrap_or_default();
    assert!(stdout.starts_with("started\nignored TERM\n"), "{stdout:?}");
}

/// The host of `broker_process_runs_a_blocking_host`: it ignores SIGTERM (and so does its
/// grandchild), tells the test both pids through the fifo, and waits forever.
fn orphan_script(fifo: &std::path::Path) -> Vec<String> {
    sh(&format!(
        "trap '' TERM; sleep 1000 & echo \"$$ $!\" > {}; wait; wait",
        fifo.display()
    ))
}

#[test]
fn the_host_of_a_broker_killed_with_sigkill_is_stopped_and_recorded_before_the_store_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = fifo_in(&dir);
    let store = dir.path().join("btb.sqlite3");
    // The broker: this test binary in another process, running a host that never ends.
    let mut broker = std::process::Command::new(std::env::current_exe().unwrap())
        .args(&this_binary_as("broker_process_runs_a_blocking_host")[1..])
        .env("BTB_TEST_STORE", &store)
        .env("BTB_TEST_FIFO", &fifo)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pids = pids_from(fifo.clone());
    let (host, grandchild) = (pidfd(pids[0]), pidfd(pids[1]));
    broker.kill().unwrap(); // SIGKILL: nothing of it runs any more
    broker.wait().unwrap();
    // Its host dies with it (its death signal); the grandchild is an orphan now.
    let host_died = exits_within(&host, DEADLINE);
    if !host_died {
        for fd in [&host, &grandchild] {
            let _ = rustix::process::pidfd_send_signal(fd, rustix::process::Signal::KILL);
        }
    }
    assert!(host_died, "the host outlived its broker");

    // The next broker of the store stops it before anything runs, and records the run.
    let clock = ManualClock::new(T0).unwrap();
    let sys = System::open(SystemOptions {
        manifest: Some(manifest(&[("app.Orphan", orphan_script(&fifo))])),
        store: StoreLocation::File(store),
        clock: Clock::Manual(clock),
        simulated: true,
        policy: Policy {
            grace_ms: 300,
            durability: Durability::Normal,
            ..Policy::default()
        },
        ..SystemOptions::default()
    })
    .unwrap();
    assert!(sys.is_broker());
    let stopped = exits_within(&grandchild, Duration::ZERO);
    if !stopped {
        let _ = rustix::process::pidfd_send_signal(&grandchild, rustix::process::Signal::KILL);
    }
    assert!(
        stopped,
        "what the host forked still runs once the store is open again"
    );
    let reg = sys.all_tasks().unwrap().pop().unwrap();
    let history = reg.history().unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].outcome, TaskOutcome::Failed);
    let message = history[0].message.clone().unwrap();
    // The host's pid is named when the broker recorded it before it died (it records the host
    // before the spawn, then again with its pid: the kill may fall between).
    let named = format!(
        "the broker that ran it (pid {}) died; its host (pid {}) was stopped",
        broker.id(),
        pids[0]
    );
    let unnamed = format!(
        "the broker that ran it (pid {}) died; its host was stopped",
        broker.id()
    );
    assert!(
        message.starts_with(&named) || message.starts_with(&unnamed),
        "{message}"
    );
    assert_eq!(history[0].trigger_details.as_deref(), Some(r#"{"n":2}"#));
}

#[test]
fn trigger_details_too_large_for_the_environment_come_in_the_welcome() {
    let rig = open(
        &[("app.Details", this_binary_as("host_prints_trigger_details"))],
        1000,
    );
    let blob = "x".repeat(300 * 1024); // over the 128 KiB of one environment string
    let (reg, c) = rig.run(
        "details",
        "app.Details",
        Some(serde_json::json!({ "blob": blob })),
    );
    assert_eq!(c.outcome, TaskOutcome::Succeeded, "{c:?}");
    let stdout = reg.history().unwrap()[0].stdout.clone().unwrap();
    assert!(
        stdout.contains(&format!("env: false, blob: {}\n", 300 * 1024)),
        "{stdout}"
    );
    // Small ones still come in the environment.
    let (reg, c) = rig.run(
        "small",
        "app.Details",
        Some(serde_json::json!({ "blob": "abc" })),
    );
    assert_eq!(c.outcome, TaskOutcome::Succeeded, "{c:?}");
    let stdout = reg.history().unwrap()[0].stdout.clone().unwrap();
    assert!(stdout.contains("env: true, blob: 3\n"), "{stdout}");
}

/// A channel of a registration's progress values.
fn progress_of(reg: &Registration) -> mpsc::Receiver<u32> {
    let (tx, rx) = mpsc::channel();
    reg.add_progress(std::sync::Arc::new(
        move |_r: &Registration, _i: uuid::Uuid, p: u32| {
            let _ = tx.send(p);
        },
    ))
    .unwrap();
    rx
}

/// Host: reports progress 40 and 80, then a failure, then exits 0 (the report wins).
#[test]
#[ignore = "a host process started by a_connected_host_…, not a test"]
fn host_progress_then_fail() {
    let instance = btb_core::host::connect().unwrap();
    assert_eq!(instance.task().name(), "progress");
    instance.set_progress(40);
    instance.set_progress(80);
    instance.report_failure("reported: bad input");
}

/// Host: greets the broker in protocol version 99 by hand and prints the answer.
#[test]
#[ignore = "a host process started by garbage_on_the_instance_socket_…, not a test"]
fn host_speaks_another_version() {
    use std::os::fd::FromRawFd;
    let fd: i32 = std::env::var("BTB_HOST_FD").unwrap().parse().unwrap();
    let id = uuid::Uuid::parse_str(&std::env::var("BTB_INSTANCE_ID").unwrap()).unwrap();
    // SAFETY: the broker passed this socket as BTB_HOST_FD; nothing else in this process owns it.
    let mut socket = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
    btb_core::protocol::write_frame(
        &mut socket,
        &btb_core::protocol::ToBroker::Hello {
            version: 99,
            min_version: None,
            instance_id: id,
        },
    )
    .unwrap();
    match btb_core::protocol::read_frame::<btb_core::protocol::ToHost>(&mut socket).unwrap() {
        Some(btb_core::protocol::ToHost::Refused { message }) => println!("refused: {message}"),
        other => println!("unexpected: {other:?}"),
    }
}

/// Host: says it started (stdout) and is ready (progress 1), then sleeps through cancellation.
#[test]
#[ignore = "a host process started by a_host_over_its_time_limit_…, not a test"]
fn host_sleeps() {
    let instance = btb_core::host::connect().unwrap();
    println!("started");
    instance.set_progress(1);
    std::thread::sleep(Duration::from_secs(1000));
}

/// Host: says it is ready (progress 1), waits to be canceled, exits 0 at once.
#[test]
#[ignore = "a host process started by a_connected_host_…, not a test"]
fn host_waits_for_cancellation() {
    let instance = btb_core::host::connect().unwrap();
    instance.set_progress(1);
    let reason = instance.wait_canceled(Duration::from_secs(30));
    assert_eq!(reason, Some(CancellationReason::Abort));
}

/// Host: moves itself into its parent's process group (out of the one the broker signals), says
/// it is ready (progress 1) and sleeps through cancellation.
#[test]
#[ignore = "a host process started by a_host_that_leaves_its_process_group_…, not a test"]
fn host_leaves_its_group() {
    use nix::unistd::{Pid, getpgid, getppid, setpgid};
    let instance = btb_core::host::connect().unwrap();
    let parents = getpgid(Some(getppid())).unwrap();
    setpgid(Pid::from_raw(0), parents).unwrap();
    assert_ne!(getpgid(None).unwrap(), nix::unistd::getpid());
    instance.set_progress(1);
    std::thread::sleep(Duration::from_secs(1000));
}

/// A broker in a process of its own (`BTB_TEST_STORE`), running a host that never ends (it
/// writes its pids to `BTB_TEST_FIFO`), until it is killed.
#[test]
#[ignore = "a broker process started by the_host_of_a_broker_killed_…, not a test"]
fn broker_process_runs_a_blocking_host() {
    let (Some(store), Some(fifo)) = (
        std::env::var_os("BTB_TEST_STORE"),
        std::env::var_os("BTB_TEST_FIFO"),
    ) else {
        return;
    };
    let sys = System::open(SystemOptions {
        manifest: Some(manifest(&[(
            "app.Orphan",
            orphan_script(std::path::Path::new(&fifo)),
        )])),
        store: StoreLocation::File(store.into()),
        clock: Clock::Manual(ManualClock::new(T0).unwrap()),
        simulated: true,
        policy: Policy {
            durability: Durability::Normal,
            ..Policy::default()
        },
        ..SystemOptions::default()
    })
    .unwrap();
    let mut b = Builder::new();
    b.name = Some("orphan".into());
    b.task_entry_point = Some("app.Orphan".into());
    b.set_trigger(Trigger::application());
    let reg = sys.register(&b).unwrap();
    reg.request(Some(serde_json::json!({"n": 2}))).unwrap();
    loop {
        std::thread::park(); // until killed
    }
}

/// Host: prints whether its trigger details came in the environment, and the length of their
/// `blob`.
#[test]
#[ignore = "a host process started by trigger_details_too_large_…, not a test"]
fn host_prints_trigger_details() {
    let in_env = std::env::var_os("BTB_TRIGGER_DETAILS").is_some();
    let instance = btb_core::host::connect().unwrap();
    let blob = instance.trigger_details().unwrap()["blob"]
        .as_str()
        .unwrap()
        .len();
    println!("env: {in_env}, blob: {blob}");
}

#[test]
fn a_host_asks_for_a_retry_by_exit_status_75_or_over_its_socket_and_hands_back_output() {
    let rig = open(
        &[
            ("app.TempFail", sh("echo busy >&2; exit 75")),
            ("app.Output", this_binary_as("host_hands_back_output")),
        ],
        5000,
    );
    let (reg, done) = rig.register("tempfail", "app.TempFail");
    reg.request(None).unwrap();
    let c = recv(&done, "the EX_TEMPFAIL host's end");
    assert_eq!(c.outcome, TaskOutcome::Retry, "{c:?}");
    assert_eq!(
        c.message.as_deref(),
        Some("the host process exited with status 75 (EX_TEMPFAIL)")
    );
    // No policy on the task: a run that asks gets the default one (30 s, exponential).
    assert_eq!(c.retry_at_ms, Some(T0 + 30 * SEC));

    let (reg, done) = rig.register("output", "app.Output");
    reg.request(None).unwrap();
    let c = recv(&done, "attempt 1");
    assert_eq!((c.outcome, c.attempt), (TaskOutcome::Retry, 1), "{c:?}");
    assert_eq!(c.message.as_deref(), Some("try later"));
    assert_eq!(c.retry_at_ms, Some(T0 + 90 * SEC), "the delay it asked for");
    rig.clock.advance_ms(90 * SEC).unwrap();
    let c = recv(&done, "attempt 2");
    assert_eq!((c.outcome, c.attempt), (TaskOutcome::Succeeded, 2), "{c:?}");
    assert_eq!(c.output, Some(serde_json::json!({"attempt": 2})));
    assert!(rig.sys.wait_idle(DEADLINE).unwrap());
    assert_eq!(
        reg.history().unwrap()[1].output.as_deref(),
        Some(r#"{"attempt":2}"#)
    );
}

/// Host: on attempt 1 asks for a retry in 90 s; on attempt 2 hands back its attempt as output.
#[test]
#[ignore = "a host process started by a_host_asks_for_a_retry_…, not a test"]
fn host_hands_back_output() {
    let instance = btb_core::host::connect().unwrap();
    if instance.attempt() == 1 {
        instance
            .request_retry(Some(Duration::from_secs(90)), Some("try later".into()))
            .unwrap();
    } else {
        instance
            .set_output(&serde_json::json!({"attempt": instance.attempt()}))
            .unwrap();
    }
}

/// A host gets the same `Instance` as an in-process run: its registration comes in the welcome
/// (name, entry point, the trigger it was registered with), and what needs the app's system
/// answers `UNSUPPORTED` saying so. Its `finish_run` is `STATE`: the process is the run.
#[test]
fn a_host_gets_its_task_from_the_welcome_and_registration_calls_are_unsupported() {
    let rig = open(
        &[("app.Task", this_binary_as("host_prints_its_task"))],
        5000,
    );
    let (reg, c) = rig.run("described", "app.Task", None);
    assert_eq!(c.outcome, TaskOutcome::Succeeded, "{c:?}");
    let stdout = reg.history().unwrap()[0].stdout.clone().unwrap();
    // (The test harness of the host writes its own text before the first line.)
    let lines: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.find("host ").map(|at| &l[at..]))
        .collect();
    let Trigger::Application { id } = reg.trigger() else {
        panic!("registered with an application trigger");
    };
    assert_eq!(
        lines,
        [
            format!("host task: described app.Task {} {id}", reg.task_id()),
            "host unregister: UNSUPPORTED an exec host cannot unregister a task: it runs one \
             instance of its task; the app's process does"
                .to_owned(),
            "host add_completed: UNSUPPORTED an exec host cannot use the app's system (add \
             handlers, register, request): it runs one instance of its task; the app's process \
             does"
                .to_owned(),
            "host finish_run: STATE".to_owned(),
        ]
        .as_slice(),
        "{stdout}"
    );
}

/// Host: prints its task as its instance tells it, then what registration calls answer.
#[test]
#[ignore = "a host process started by a_host_gets_its_task_…, not a test"]
fn host_prints_its_task() {
    let instance = btb_core::host::connect().unwrap();
    let task = instance.task();
    let Trigger::Application { id } = task.trigger() else {
        panic!("{:?}", task.trigger());
    };
    println!(
        "host task: {} {} {} {id}",
        task.name(),
        task.task_entry_point().unwrap(),
        task.task_id()
    );
    let e = task.unregister(true).unwrap_err();
    println!("host unregister: {} {}", e.kind().name(), e.message());
    let e = task
        .add_completed(std::sync::Arc::new(|_: &Registration, _: &Completion| {}))
        .unwrap_err();
    println!("host add_completed: {} {}", e.kind().name(), e.message());
    let e = instance.finish_run().unwrap_err();
    println!("host finish_run: {}", e.kind().name());
}

/// A broker of protocol version 1 (this test, speaking it by hand over a real socket to a real
/// host process) sends no task in its welcome: the host's task comes from its `BTB_*`
/// environment, `request_retry` and `set_output` are `UNSUPPORTED`, and a failure reaches the
/// broker at once (before the host exits).
#[test]
fn a_host_of_a_version_1_broker_takes_its_task_from_its_environment() {
    use btb_core::protocol::{ToBroker, ToHost, read_frame, write_frame};
    use command_fds::{CommandFdExt, FdMapping};
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let (instance_id, task_id) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let argv = this_binary_as("host_of_a_version_1_broker");
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env("BTB_HOST_FD", "3")
        .env("BTB_INSTANCE_ID", instance_id.to_string())
        .env("BTB_TASK_ID", task_id.to_string())
        .env("BTB_TASK_NAME", "old")
        .env("BTB_ENTRY_POINT", "app.Old")
        .env("BTB_APP_ID", APP)
        .stdout(std::process::Stdio::null());
    cmd.fd_mappings(vec![FdMapping {
        parent_fd: theirs.into(),
        child_fd: 3,
    }])
    .unwrap();
    let mut child = cmd.spawn().unwrap();
    drop(cmd); // our copy of the host's end: the socket ends when the host exits
    let mut reader = &ours;
    match read_frame::<ToBroker>(&mut reader).unwrap() {
        Some(ToBroker::Hello {
            instance_id: id, ..
        }) => assert_eq!(id, instance_id),
        other => panic!("expected a hello, read {other:?}"),
    }
    write_frame(
        &mut &ours,
        &ToHost::Welcome {
            version: 1,
            canceled: None,
            network_granted: false,
            trigger_details: None,
            task: None,
        },
    )
    .unwrap();
    let said = read_frame::<ToBroker>(&mut reader).unwrap();
    assert_eq!(
        said,
        Some(ToBroker::Failure {
            message: format!(
                "old app.Old {task_id} {}; retry: UNSUPPORTED; output: UNSUPPORTED",
                uuid::Uuid::nil()
            )
        })
    );
    assert!(child.wait().unwrap().success());
    assert_eq!(
        read_frame::<ToBroker>(&mut reader).unwrap(),
        None,
        "the end"
    );
}

/// Host: reports as a failure what its instance says of its task, and what a retry request and
/// an output answer.
#[test]
#[ignore = "a host process started by a_host_of_a_version_1_broker_…, not a test"]
fn host_of_a_version_1_broker() {
    let instance = btb_core::host::connect().unwrap();
    let task = instance.task();
    let Trigger::Application { id } = task.trigger() else {
        panic!("{:?}", task.trigger());
    };
    let retry = instance.request_retry(None, None).unwrap_err();
    let output = instance
        .set_output(&serde_json::json!({"a": 1}))
        .unwrap_err();
    assert!(
        instance.output().is_none(),
        "an output not taken is not kept"
    );
    instance.report_failure(format!(
        "{} {} {} {id}; retry: {}; output: {}",
        task.name(),
        task.task_entry_point().unwrap(),
        task.task_id(),
        retry.kind().name(),
        output.kind().name()
    ));
}
