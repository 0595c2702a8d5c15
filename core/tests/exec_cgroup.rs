//! SPEC §5, what an exec host may and may not escape: with a cgroup v2 the broker can make (here:
//! root, and a cgroup2 mount), nothing a host forks outlives its run — not even a daemon that
//! double-forks, calls `setsid` and replaces its environment (`env -i`), which escapes everything
//! else (its process group, the search of /proc under the host, the `BTB_INSTANCE_ID` marker).
//! Checked at the three ends of a run: the host exits, the system closes, the broker is killed
//! with SIGKILL and the next broker of the store opens it. Skipped, loudly, without root or
//! cgroup2.

mod common;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use btb_core::*;
use common::rt::{T0, completions, recv};

const APP: &str = "org.example.cgroup";

/// The cgroup2 mount point, when this process (root) can make cgroups under its own; `None`
/// (after saying why) otherwise.
fn cgroup2() -> Option<PathBuf> {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: not root: no cgroup can be made for the hosts");
        return None;
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mount = mounts.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| PathBuf::from(left.split_whitespace().nth(4).unwrap()))
    });
    if mount.is_none() {
        eprintln!("SKIPPED: no cgroup2 file system is mounted");
    }
    mount
}

/// A host that leaves a daemon behind: a subshell starts `setsid env -i sh` in the background and
/// exits (a double fork: the daemon's parent is gone), the daemon is in a session of its own with
/// an empty environment, writes its pid to `fifo` and becomes `sleep 1000`. The host waits for a
/// line on `go` (the test holds a pidfd of the daemon by then), then exits, or (`stay`) sleeps on.
/// A `deaf` daemon ignores SIGTERM (only SIGKILL ends it).
fn daemonizing_host(fifo: &Path, go: &Path, stay: bool, deaf: bool) -> Vec<String> {
    let script = format!(
        "(setsid env -i /bin/sh -c '{}echo $$ > {}; exec sleep 1000' &); read x < {}; {}",
        if deaf { "trap \"\" TERM; " } else { "" },
        fifo.display(),
        go.display(),
        if stay { "exec sleep 1000" } else { "exit 0" }
    );
    vec!["/bin/sh".into(), "-c".into(), script]
}

fn manifest(argv: Vec<String>) -> Manifest {
    let mut m = Manifest::new(APP, "1").unwrap();
    m.declare(
        TaskDeclaration::new("app.Daemon", &["general"])
            .unwrap()
            .with_exec(argv)
            .unwrap(),
    )
    .unwrap();
    m
}

fn open(store: &Path, argv: Vec<String>) -> System {
    System::open(SystemOptions {
        manifest: Some(manifest(argv)),
        store: StoreLocation::File(store.to_owned()),
        clock: Clock::Manual(ManualClock::new(T0).unwrap()),
        simulated: true,
        policy: Policy {
            grace_ms: 300,
            durability: Durability::Normal,
            ..Policy::default()
        },
        ..SystemOptions::default()
    })
    .unwrap()
}

fn register(sys: &System) -> Registration {
    let mut b = Builder::new();
    b.name = Some("daemon".into());
    b.task_entry_point = Some("app.Daemon".into());
    b.set_trigger(Trigger::application());
    sys.register(&b).unwrap()
}

struct Fifos {
    dir: tempfile::TempDir,
}

impl Fifos {
    fn new() -> Fifos {
        let dir = tempfile::tempdir().unwrap();
        for name in ["pids", "go"] {
            nix::unistd::mkfifo(&dir.path().join(name), nix::sys::stat::Mode::S_IRWXU).unwrap();
        }
        Fifos { dir }
    }
    fn pids(&self) -> PathBuf {
        self.dir.path().join("pids")
    }
    fn go(&self) -> PathBuf {
        self.dir.path().join("go")
    }

    /// The daemon the host started, as a pidfd taken while it surely lives (its host waits for
    /// `go`), and the cgroup it is in; then lets the host go on.
    fn daemon(&self, mount: &Path) -> (OwnedFd, PathBuf) {
        let fifo = self.pids();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(std::fs::read_to_string(&fifo).unwrap());
        });
        let pid: i32 = recv(&rx, "the daemon's pid").trim().parse().unwrap();
        let fd = rustix::process::pidfd_open(
            rustix::process::Pid::from_raw(pid).unwrap(),
            rustix::process::PidfdFlags::empty(),
        )
        .expect("the daemon lives: its host waits");
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(
            !String::from_utf8_lossy(&environ).contains("BTB_INSTANCE_ID"),
            "env -i: the daemon carries no marker"
        );
        let own = cgroup.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
        let dir = mount.join(own.trim_start_matches('/'));
        assert!(
            dir.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("btb-"),
            "the daemon is in its host's cgroup: {own}"
        );
        std::fs::write(self.go(), "go\n").unwrap();
        (fd, dir)
    }
}

/// Whether the process of `fd` has ended (its pidfd is readable), waiting `timeout` at most.
fn ends_within(fd: &OwnedFd, timeout: Duration) -> bool {
    let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
    let timeout = rustix::time::Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    rustix::event::poll(&mut fds, Some(&timeout)).is_ok_and(|n| n == 1)
}

/// Asserts the daemon is dead now (killing it if not, so that no test leaves one).
fn assert_dead(daemon: &OwnedFd, when: &str) {
    let dead = ends_within(daemon, Duration::ZERO);
    if !dead {
        let _ = rustix::process::pidfd_send_signal(daemon, rustix::process::Signal::KILL);
    }
    assert!(dead, "the daemon outlived {when}");
}

#[test]
fn a_daemon_that_double_forks_setsids_clears_its_environment_and_ignores_sigterm_dies_when_its_host_exits()
 {
    let Some(mount) = cgroup2() else { return };
    let fifos = Fifos::new();
    let dir = tempfile::tempdir().unwrap();
    let sys = open(
        &dir.path().join("btb.sqlite3"),
        daemonizing_host(&fifos.pids(), &fifos.go(), false, true),
    );
    let reg = register(&sys);
    let done = completions(&reg);
    reg.request(None).unwrap();
    let before_exit = std::time::Instant::now();
    let (daemon, cgroup) = fifos.daemon(&mount);
    let c = recv(&done, "the run's end");
    assert_eq!(c.outcome, TaskOutcome::Succeeded, "{c:?}");
    // SIGTERM, ignored, then SIGKILL once the grace (300 ms) ran out: the run ends after it.
    assert!(before_exit.elapsed() >= Duration::from_millis(300));
    assert_dead(&daemon, "its run");
    assert!(!cgroup.exists(), "{} is removed", cgroup.display());
    sys.close().unwrap();
}

#[test]
fn a_daemon_that_escaped_its_running_host_dies_with_close() {
    let Some(mount) = cgroup2() else { return };
    let fifos = Fifos::new();
    let dir = tempfile::tempdir().unwrap();
    let sys = open(
        &dir.path().join("btb.sqlite3"),
        daemonizing_host(&fifos.pids(), &fifos.go(), true, false),
    );
    let reg = register(&sys);
    reg.request(None).unwrap();
    let (daemon, cgroup) = fifos.daemon(&mount);
    sys.close().unwrap();
    assert_dead(&daemon, "close");
    assert!(!cgroup.exists(), "{} is removed", cgroup.display());
}

#[test]
fn a_daemon_of_a_broker_killed_with_sigkill_dies_before_the_next_broker_runs_anything() {
    let Some(mount) = cgroup2() else { return };
    let fifos = Fifos::new();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("btb.sqlite3");
    // The broker runs in a cgroup of its own below this process's: the hosts' cgroups are made
    // under it, wherever it is.
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    let broker_cgroup = mount
        .join(own.trim_start_matches('/'))
        .join(format!("btb-test-{}", std::process::id()));
    std::fs::create_dir(&broker_cgroup).unwrap();
    let mut broker = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
        .arg(&broker_cgroup)
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "broker_process_runs_a_daemonizing_host",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("BTB_TEST_STORE", &store)
        .env("BTB_TEST_FIFOS", fifos.dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (daemon, cgroup) = fifos.daemon(&mount);
    assert_eq!(cgroup.parent(), Some(broker_cgroup.as_path()));
    broker.kill().unwrap(); // SIGKILL
    broker.wait().unwrap();

    let sys = open(
        &store,
        daemonizing_host(&fifos.pids(), &fifos.go(), true, false),
    );
    assert!(sys.is_broker());
    assert_dead(&daemon, "its broker's death and the next open");
    assert!(!cgroup.exists(), "{} is removed", cgroup.display());
    let history = sys.all_tasks().unwrap().pop().unwrap().history().unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].outcome, TaskOutcome::Failed);
    let message = history[0].message.clone().unwrap();
    assert!(message.contains("was stopped"), "{message}");
    sys.close().unwrap();
    std::fs::remove_dir(&broker_cgroup).unwrap();
}

/// A broker in a process of its own (`BTB_TEST_STORE`), running a daemonizing host that stays
/// (its fifos in `BTB_TEST_FIFOS`), until it is killed.
#[test]
#[ignore = "a broker process started by a_daemon_of_a_broker_killed_…, not a test"]
fn broker_process_runs_a_daemonizing_host() {
    let (Some(store), Some(fifos)) = (
        std::env::var_os("BTB_TEST_STORE"),
        std::env::var_os("BTB_TEST_FIFOS"),
    ) else {
        return;
    };
    let fifos = Path::new(&fifos);
    let sys = open(
        Path::new(&store),
        daemonizing_host(&fifos.join("pids"), &fifos.join("go"), true, true),
    );
    register(&sys).request(None).unwrap();
    loop {
        std::thread::park(); // until killed
    }
}

#[test]
fn without_a_cgroup2_mount_hosts_run_in_the_brokers_cgroup_and_their_group_still_dies() {
    let Some(mount) = cgroup2() else { return };
    // This test binary again, in a mount namespace of its own where no cgroup2 is mounted.
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "/bin/sh", "-c"])
        .arg(r#"umount -l "$0" && exec "$@""#)
        .arg(&mount)
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "broker_process_without_cgroup2",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("BTB_TEST_NO_CGROUP2", "1")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "{text}");
}

/// A broker where no cgroup2 is mounted (`BTB_TEST_NO_CGROUP2`): its host runs in the broker's own
/// cgroup, and what it left in its process group dies when it exits (SPEC §5, without a cgroup).
#[test]
#[ignore = "a broker process started by without_a_cgroup2_mount_…, not a test"]
fn broker_process_without_cgroup2() {
    if std::env::var_os("BTB_TEST_NO_CGROUP2").is_none() {
        return;
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(" - cgroup2 "), "{mounts}");
    let fifos = Fifos::new();
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "sleep 1000 & echo $! > {}; read x < {}; cat /proc/self/cgroup",
        fifos.pids().display(),
        fifos.go().display()
    );
    let sys = open(
        &dir.path().join("btb.sqlite3"),
        vec!["/bin/sh".into(), "-c".into(), script],
    );
    let reg = register(&sys);
    let done = completions(&reg);
    reg.request(None).unwrap();
    let fifo = fifos.pids();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read_to_string(&fifo).unwrap());
    });
    let pid: i32 = recv(&rx, "the grandchild's pid").trim().parse().unwrap();
    let grandchild = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::PidfdFlags::empty(),
    )
    .expect("it lives: its host waits");
    std::fs::write(fifos.go(), "go\n").unwrap();
    let c = recv(&done, "the run's end");
    assert_eq!(c.outcome, TaskOutcome::Succeeded, "{c:?}");
    assert_dead(&grandchild, "its host, in its process group");
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let history = reg.history().unwrap();
    assert_eq!(
        history[0].stdout.as_deref(),
        Some(own.as_str()),
        "no cgroup of its own"
    );
    sys.close().unwrap();
}
