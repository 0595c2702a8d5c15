//! Custom events across processes: the per-app control socket (`btb_core::signal`).
//!
//! `XDG_RUNTIME_DIR` is process-global, so every test takes `ENV` and points it at a private temp
//! dir for its whole run. Tests that need a second process re-execute this test binary with
//! `--exact <test> --nocapture` and `CHILD_ROLE` set; the child does its part at the top of the same
//! test function and prints `CHILD <result>` lines for the parent to check.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use btb_core::ErrorKind;
use btb_core::signal::{SignalListener, signal_event, socket_path};

const APP: &str = "org.example.btbsignal";
/// The longest any test waits for something that should happen at once.
const DEADLINE: Duration = Duration::from_secs(10);
/// Tells a re-executed test binary which part to play.
const CHILD_ROLE: &str = "BTB_SIGNAL_TEST_CHILD_ROLE";
const NOBODY: u32 = 65534;

static ENV: Mutex<()> = Mutex::new(());

/// A private `XDG_RUNTIME_DIR` for the duration of one test.
struct RuntimeDir {
    dir: tempfile::TempDir,
    _guard: MutexGuard<'static, ()>,
}

impl RuntimeDir {
    fn new() -> RuntimeDir {
        let guard = ENV.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: every test that reads or writes the environment holds `ENV`.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", dir.path()) };
        RuntimeDir { dir, _guard: guard }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn btb_dir(&self) -> PathBuf {
        self.dir.path().join("btb")
    }
}

type Callback = Arc<dyn Fn(&str) + Send + Sync>;

/// A callback that forwards each event name to the returned receiver.
fn channel_callback() -> (Callback, Receiver<String>) {
    let (tx, rx) = mpsc::channel();
    let cb: Callback = Arc::new(move |name: &str| {
        let _ = tx.send(name.to_owned());
    });
    (cb, rx)
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Sends raw bytes over a new connection (ignoring a send error: the broker may have answered and
/// closed first) and returns the broker's reply line.
fn raw_exchange(path: &Path, bytes: &[u8], close_write: bool) -> String {
    let mut stream = UnixStream::connect(path).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let _ = stream.write_all(bytes);
    if close_write {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).unwrap();
    reply
}

/// Re-executes this test binary to run `test` as `role`, optionally as another user, and returns the
/// child's `CHILD …` lines.
fn run_child(
    exe: &Path,
    test: &str,
    role: &str,
    runtime_dir: &Path,
    uid: Option<u32>,
) -> Vec<String> {
    let mut cmd = Command::new(exe);
    cmd.args([
        test,
        "--include-ignored",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ROLE, role)
    .env("XDG_RUNTIME_DIR", runtime_dir)
    .current_dir("/");
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child {test} as {role} failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = stdout
        .lines()
        // libtest prints `test <name> ... ` before the test's own output, on the same line.
        .filter_map(|l| {
            l.find("CHILD ")
                .map(|at| l[at + "CHILD ".len()..].to_owned())
        })
        .collect();
    assert!(
        !lines.is_empty(),
        "child {test} as {role} printed no result:\n{stdout}"
    );
    lines
}

fn describe(result: btb_core::Result<()>) -> String {
    match result {
        Ok(()) => "ok".to_owned(),
        Err(e) => format!("err {:?} {}", e.kind(), e.message()),
    }
}

#[test]
fn socket_path_layout() {
    let rt = RuntimeDir::new();
    assert_eq!(
        socket_path(APP).unwrap(),
        rt.path().join("btb").join(format!("{APP}.sock"))
    );

    let uid = rustix::process::getuid().as_raw();
    // SAFETY: `ENV` is held (by `rt`).
    unsafe { std::env::remove_var("XDG_RUNTIME_DIR") };
    assert_eq!(
        socket_path(APP).unwrap(),
        PathBuf::from(format!("/tmp/btb-{uid}/{APP}.sock"))
    );
    // A relative XDG_RUNTIME_DIR is ignored, as the XDG spec says.
    unsafe { std::env::set_var("XDG_RUNTIME_DIR", "relative/dir") };
    assert_eq!(
        socket_path(APP).unwrap(),
        PathBuf::from(format!("/tmp/btb-{uid}/{APP}.sock"))
    );
    unsafe { std::env::set_var("XDG_RUNTIME_DIR", rt.path()) };

    for bad in [
        "",
        "notes",
        "../etc.passwd",
        "a/b.c",
        "a..b",
        ".a.b",
        "a.b ",
        "a.-b",
        "a.b\n",
    ] {
        let e = socket_path(bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad:?}");
        assert!(e.message().contains("app id"), "{}", e.message());
    }
    let long = format!("org.{}", "x".repeat(120));
    let e = socket_path(&long).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.message().contains("107 bytes"), "{}", e.message());
}

#[test]
fn in_process_signal_reaches_callback() {
    let _rt = RuntimeDir::new();
    let (cb, rx) = channel_callback();
    let listener = SignalListener::bind(APP, cb).unwrap();
    assert_eq!(listener.path(), socket_path(APP).unwrap());

    let longest = "é".repeat(128); // 256 bytes
    for name in ["battery-report", "with spaces", "ünïcödé", longest.as_str()] {
        signal_event(APP, name).unwrap();
        // The callback ran before `ok` came back: the event is already there.
        assert_eq!(rx.try_recv().unwrap(), name);
    }
    assert!(rx.try_recv().is_err());
}

#[test]
fn two_processes() {
    const TEST: &str = "two_processes";
    if std::env::var_os(CHILD_ROLE).is_some() {
        println!(
            "CHILD {}",
            describe(signal_event(APP, "from-another-process"))
        );
        return;
    }
    let rt = RuntimeDir::new();
    let (cb, rx) = channel_callback();
    let _listener = SignalListener::bind(APP, cb).unwrap();
    let exe = std::env::current_exe().unwrap();

    let lines = run_child(&exe, TEST, "client", rt.path(), None);
    assert_eq!(lines, ["ok"]);
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), "from-another-process");
    assert!(rx.try_recv().is_err());
}

#[test]
fn socket_is_0600_and_dir_0700() {
    let rt = RuntimeDir::new();
    let (cb, _rx) = channel_callback();
    let listener = SignalListener::bind(APP, cb).unwrap();
    let meta = std::fs::symlink_metadata(listener.path()).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(mode(listener.path()), 0o600);
    assert_eq!(mode(&rt.btb_dir()), 0o700);
    let lock = rt.btb_dir().join(format!("{APP}.sock.lock"));
    assert_eq!(mode(&lock), 0o600);
}

#[test]
fn unsafe_socket_dir_is_refused() {
    let rt = RuntimeDir::new();
    let (cb, _rx) = channel_callback();
    let dir = rt.btb_dir();

    std::fs::create_dir(&dir).unwrap();
    chmod(&dir, 0o755);
    let e = SignalListener::bind(APP, cb.clone()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Policy);
    assert!(
        e.message().contains("0755") && e.message().contains(&*dir.to_string_lossy()),
        "{}",
        e.message()
    );

    chmod(&dir, 0o700);
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    let e = SignalListener::bind(APP, cb.clone()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Policy);
    assert!(
        e.message().contains("belongs to uid 65534"),
        "{}",
        e.message()
    );
    std::fs::remove_dir(&dir).unwrap();

    let elsewhere = rt.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    chmod(&elsewhere, 0o700);
    std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
    let e = SignalListener::bind(APP, cb.clone()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Policy);
    assert!(e.message().contains("not a directory"), "{}", e.message());
    std::fs::remove_file(&dir).unwrap();

    // A missing XDG_RUNTIME_DIR is not created for us.
    // SAFETY: `ENV` is held (by `rt`).
    unsafe { std::env::set_var("XDG_RUNTIME_DIR", rt.path().join("missing")) };
    let e = SignalListener::bind(APP, cb.clone()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::State);
    assert!(e.message().contains("XDG_RUNTIME_DIR"), "{}", e.message());
    unsafe { std::env::set_var("XDG_RUNTIME_DIR", rt.path()) };

    // And with a sane directory, it binds.
    drop(SignalListener::bind(APP, cb).unwrap());
}

#[test]
fn no_broker_is_not_found() {
    let _rt = RuntimeDir::new();
    let e = signal_event(APP, "anything").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let path = socket_path(APP).unwrap();
    assert_eq!(
        e.message(),
        format!(
            "no running btb broker for app \"{APP}\" (socket {})",
            path.display()
        )
    );

    // A stale socket file (its broker died) is the same: nobody answers.
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    assert_eq!(
        signal_event(APP, "anything").unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn a_second_live_listener_is_refused() {
    let _rt = RuntimeDir::new();
    let (cb, rx) = channel_callback();
    let first = SignalListener::bind(APP, cb.clone()).unwrap();
    let e = SignalListener::bind(APP, cb.clone()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::State);
    assert!(
        e.message().contains("already listening")
            && e.message().contains(&*first.path().to_string_lossy()),
        "{}",
        e.message()
    );
    // The first one is untouched.
    signal_event(APP, "still-there").unwrap();
    assert_eq!(rx.try_recv().unwrap(), "still-there");
    let path = first.path().to_owned();
    drop(first);

    // Something live on the path that does not take btb's lock is detected by connecting.
    let foreign = UnixListener::bind(&path).unwrap();
    let e = SignalListener::bind(APP, cb).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::State);
    assert!(e.message().contains("already listening"), "{}", e.message());
    assert!(path.exists(), "a live socket must not be removed");
    drop(foreign);
}

#[test]
fn a_stale_socket_is_replaced() {
    let rt = RuntimeDir::new();
    let path = socket_path(APP).unwrap();
    std::fs::create_dir(rt.btb_dir()).unwrap();
    chmod(&rt.btb_dir(), 0o700);
    drop(UnixListener::bind(&path).unwrap()); // a broker that died without cleaning up
    chmod(&path, 0o644);
    assert!(UnixStream::connect(&path).is_err());

    let (cb, rx) = channel_callback();
    let listener = SignalListener::bind(APP, cb.clone()).unwrap();
    // (Comparing inodes proves nothing: tmpfs hands the freed inode number straight back.)
    assert_eq!(mode(&path), 0o600);
    signal_event(APP, "after-restart").unwrap();
    assert_eq!(rx.try_recv().unwrap(), "after-restart");
    drop(listener);

    // Something that is not a socket is never removed.
    std::fs::write(&path, "precious").unwrap();
    let e = SignalListener::bind(APP, cb).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::State);
    assert!(e.message().contains("not a socket"), "{}", e.message());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
}

#[test]
fn bad_names_and_malformed_lines_are_rejected() {
    let _rt = RuntimeDir::new();
    let (cb, rx) = channel_callback();
    let listener = SignalListener::bind(APP, cb).unwrap();

    // Client side: refused before connecting.
    let too_long = "x".repeat(257);
    for bad in [
        "",
        too_long.as_str(),
        "two\nlines",
        "tab\there",
        "bell\u{7}",
        "del\u{7f}",
        "c1\u{85}",
    ] {
        let e = signal_event(APP, bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad:?}");
        assert!(
            e.message().contains("event name") && e.message().contains(APP),
            "{}",
            e.message()
        );
    }

    // Server side: raw lines written by hand.
    let path = listener.path();
    let cases: &[(&[u8], bool, &str)] = &[
        (b"signal \n", false, "err event name is empty\n"),
        (
            b"signal a\x01b\n",
            false,
            "err event name \"a\\u{1}b\" contains a control character\n",
        ),
        (
            b"signal a\tb\n",
            false,
            "err event name \"a\\tb\" contains a control character\n",
        ),
        (b"hello\n", false, "err unknown command\n"),
        (b"signal\n", false, "err unknown command\n"),
        (b"SIGNAL x\n", false, "err unknown command\n"),
        (b"signal \xff\xfe\n", false, "err line is not valid UTF-8\n"),
        (b"signal x", true, "err incomplete line (no newline)\n"),
    ];
    for (bytes, close_write, want) in cases {
        assert_eq!(raw_exchange(path, bytes, *close_write), *want, "{bytes:?}");
    }
    let long = format!("signal {}\n", "y".repeat(257));
    assert_eq!(
        raw_exchange(path, long.as_bytes(), false),
        "err event name is 257 bytes long; the limit is 256 bytes\n"
    );
    let huge = format!("signal {}\n", "z".repeat(2000));
    assert_eq!(
        raw_exchange(path, huge.as_bytes(), false),
        "err line too long (the limit is 1024 bytes)\n"
    );
    assert!(rx.try_recv().is_err(), "no bad name may reach the callback");

    // A well-formed raw line works, and the listener survived all of the above.
    assert_eq!(raw_exchange(path, b"signal fine\n", false), "ok\n");
    assert_eq!(rx.try_recv().unwrap(), "fine");
}

#[test]
fn a_silent_client_does_not_block_the_next() {
    let _rt = RuntimeDir::new();
    let (cb, rx) = channel_callback();
    let listener = SignalListener::bind(APP, cb).unwrap();

    let mut silent = UnixStream::connect(listener.path()).unwrap();
    let start = Instant::now();
    // The broker gives the silent client 2 s, then serves this one; the client waits up to 5 s.
    signal_event(APP, "after-the-silent-one").unwrap();
    let took = start.elapsed();
    assert!(took < DEADLINE, "took {took:?}");
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), "after-the-silent-one");

    silent.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut reply = String::new();
    silent.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "err no command within 2 s\n");
}

#[test]
fn a_panicking_callback_is_an_internal_error() {
    let _rt = RuntimeDir::new();
    let (tx, rx) = mpsc::channel();
    let cb: Callback = Arc::new(move |name: &str| {
        assert_ne!(name, "boom", "test panic in the callback");
        let _ = tx.send(name.to_owned());
    });
    let _listener = SignalListener::bind(APP, cb).unwrap();
    let e = signal_event(APP, "boom").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Internal);
    assert!(e.message().contains("boom"), "{}", e.message());
    signal_event(APP, "after").unwrap();
    assert_eq!(rx.try_recv().unwrap(), "after");
}

/// Runs in the child as uid 65534: reports what a raw connection and `signal_event` get.
fn intruder() {
    let path = socket_path(APP).unwrap();
    match UnixStream::connect(&path) {
        Err(e) => println!("CHILD connect {:?}", e.kind()),
        Ok(mut stream) => {
            stream.set_read_timeout(Some(DEADLINE)).unwrap();
            let _ = stream.write_all(b"signal intruder\n");
            let mut reply = String::new();
            BufReader::new(stream).read_line(&mut reply).unwrap();
            println!("CHILD reply {reply:?}");
        }
    }
    println!(
        "CHILD signal_event {}",
        describe(signal_event(APP, "intruder"))
    );
}

/// Root only (it starts a process as nobody), so opt-in: `make test` runs it when root, else it
/// is reported as ignored with this reason.
#[test]
#[ignore = "needs root: cargo test -p btb-core --test signal -- --ignored peer_uid_is_checked"]
fn peer_uid_is_checked() {
    const TEST: &str = "peer_uid_is_checked";
    if std::env::var_os(CHILD_ROLE).is_some() {
        intruder();
        return;
    }
    let rt = RuntimeDir::new();
    assert_eq!(
        rustix::process::getuid().as_raw(),
        0,
        "peer_uid_is_checked needs root (it starts a process as nobody)"
    );
    let (cb, rx) = channel_callback();
    let listener = SignalListener::bind(APP, cb).unwrap();
    let dir = rt.btb_dir();
    let sock = listener.path().to_owned();

    // Run a copy of this binary from a place nobody can reach, whatever the target directory is.
    let bin_dir = tempfile::tempdir().unwrap();
    chmod(bin_dir.path(), 0o755);
    let exe = bin_dir.path().join("signal-test");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    chmod(&exe, 0o755);

    // Let nobody traverse the runtime dir itself, so each of btb's own layers is what stops it.
    chmod(rt.path(), 0o711);
    let nobody = |what: &str| {
        let lines = run_child(&exe, TEST, "intruder", rt.path(), Some(NOBODY));
        eprintln!("{what}: {lines:?}");
        lines
    };

    // As bound: the 0700 directory keeps nobody out.
    assert_eq!(mode(&dir), 0o700);
    let lines = nobody("dir 0700");
    assert_eq!(lines[0], "connect PermissionDenied");
    assert!(
        lines[1].starts_with("signal_event err Policy ") && lines[1].contains("permission denied"),
        "{lines:?}"
    );

    // Even with the directory open for search, the 0600 socket keeps nobody out.
    chmod(&dir, 0o711);
    let lines = nobody("dir 0711, socket 0600");
    assert_eq!(lines[0], "connect PermissionDenied");
    assert!(
        lines[1].starts_with("signal_event err Policy "),
        "{lines:?}"
    );

    // With both opened up, the peer uid check refuses nobody; nobody's client refuses root's socket.
    chmod(&sock, 0o666);
    let lines = nobody("dir 0711, socket 0666");
    assert_eq!(lines[0], "reply \"err not your broker\\n\"");
    assert!(
        lines[1].starts_with("signal_event err Policy ")
            && lines[1].contains("is served by uid 0, not by us (uid 65534)"),
        "{lines:?}"
    );
    assert!(
        rx.try_recv().is_err(),
        "an intruder's signal reached the callback"
    );

    chmod(&sock, 0o600);
    chmod(&dir, 0o700);
    // The listener still serves its own user.
    signal_event(APP, "mine").unwrap();
    assert_eq!(rx.try_recv().unwrap(), "mine");
}

#[test]
fn drop_removes_the_socket_and_joins_the_thread() {
    let _rt = RuntimeDir::new();
    let (cb, rx) = channel_callback();
    let listener = SignalListener::bind(APP, cb.clone()).unwrap();
    let path = listener.path().to_owned();
    assert_eq!(
        Arc::strong_count(&cb),
        2,
        "the listener thread holds the callback"
    );
    signal_event(APP, "before-drop").unwrap();
    assert_eq!(rx.try_recv().unwrap(), "before-drop");

    drop(listener);
    // Joined: the thread (and with it its clone of the callback) is gone once drop returns.
    assert_eq!(Arc::strong_count(&cb), 1);
    assert!(!path.exists());
    assert_eq!(
        signal_event(APP, "after-drop").unwrap_err().kind(),
        ErrorKind::NotFound
    );

    // The lock went with it: a new broker binds at once.
    let again = SignalListener::bind(APP, cb).unwrap();
    signal_event(APP, "again").unwrap();
    assert_eq!(rx.try_recv().unwrap(), "again");
    drop(again);
    assert!(!path.exists());
}
