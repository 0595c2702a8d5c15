//! The per-app control socket (`btb_core::control`): custom events across processes, the framed
//! protocol's refusals, concurrent connections, and who may connect.
//!
//! `XDG_RUNTIME_DIR` is process-global, so every test takes `ENV` and points it at a private temp
//! dir for its whole run. Tests that need a second process re-execute this test binary with
//! `--exact <test> --nocapture` and `CHILD_ROLE` set; the child does its part at the top of the same
//! test function and prints `CHILD <result>` lines for the parent to check.

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use btb_core::ErrorKind;
use btb_core::control::{ControlListener, Handler, Reply, Request, signal_event, socket_path};
use btb_core::protocol;

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

type Callback = Handler;

/// A handler that forwards each signalled event name to the returned receiver.
fn channel_callback() -> (Callback, Receiver<String>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let cb: Callback = Arc::new(move |request: Request| match request {
        Request::Signal { name } => {
            let _ = tx.lock().unwrap().send(name);
            Reply::Fired { count: 1 }
        }
        _ => Reply::Done,
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

/// A hello of this protocol version, as bytes.
fn hello() -> Vec<u8> {
    protocol::encode(&Request::Hello {
        version: protocol::VERSION,
        min_version: None,
        keep_alive: false,
    })
}

/// Sends raw bytes over a new connection (ignoring a send error: the broker may have answered and
/// closed first) and returns the broker's replies until it closes.
fn raw_exchange(path: &Path, bytes: &[u8], close_write: bool) -> Vec<Reply> {
    let mut stream = UnixStream::connect(path).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let _ = stream.write_all(bytes);
    if close_write {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    let mut replies = Vec::new();
    while let Ok(Some(reply)) = protocol::read_frame::<Reply>(&mut stream) {
        replies.push(reply);
    }
    replies
}

/// The message of the last reply, which must be an error.
fn refusal(replies: &[Reply]) -> String {
    match replies.last() {
        Some(Reply::Error { kind, message }) => format!("{kind}: {message}"),
        other => panic!("not an error: {other:?} (all: {replies:?})"),
    }
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

    // Without XDG_RUNTIME_DIR: logind's /run/user/<uid> when it is ours, else the state directory
    // — never a name in a shared directory that another user could create first.
    let uid = rustix::process::getuid().as_raw();
    let run_user = PathBuf::from(format!("/run/user/{uid}"));
    let state = rt.path().join("state");
    let fallback = if std::fs::metadata(&run_user)
        .is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == uid && m.is_dir())
    {
        run_user.join("btb").join(format!("{APP}.sock"))
    } else {
        state.join("btb/run").join(format!("{APP}.sock"))
    };
    // SAFETY: `ENV` is held (by `rt`).
    unsafe {
        std::env::remove_var("XDG_RUNTIME_DIR");
        std::env::set_var("XDG_STATE_HOME", &state);
    }
    assert_eq!(socket_path(APP).unwrap(), fallback);
    // A relative XDG_RUNTIME_DIR is ignored, as the XDG spec says.
    unsafe { std::env::set_var("XDG_RUNTIME_DIR", "relative/dir") };
    assert_eq!(socket_path(APP).unwrap(), fallback);
    // A fresh account has no state directory yet: a broker makes it, private, and listens.
    if fallback.starts_with(&state) {
        let (cb, rx) = channel_callback();
        let listener = ControlListener::bind(APP, cb).unwrap();
        assert_eq!(listener.path(), fallback);
        assert_eq!(mode(&state.join("btb/run")), 0o700);
        signal_event(APP, "found").unwrap();
        assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), "found");
    }
    unsafe {
        std::env::set_var("XDG_RUNTIME_DIR", rt.path());
        std::env::remove_var("XDG_STATE_HOME");
    }

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
    let listener = ControlListener::bind(APP, cb).unwrap();
    assert_eq!(listener.path(), socket_path(APP).unwrap());

    let longest = "é".repeat(128); // 256 bytes
    for name in ["battery-report", "with spaces", "ünïcödé", longest.as_str()] {
        signal_event(APP, name).unwrap();
        // The handler ran before the reply came back: the event is already there.
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
    let _listener = ControlListener::bind(APP, cb).unwrap();
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
    let listener = ControlListener::bind(APP, cb).unwrap();
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
    let e = ControlListener::bind(APP, cb.clone()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Policy);
    assert!(
        e.message().contains("0755") && e.message().contains(&*dir.to_string_lossy()),
        "{}",
        e.message()
    );

    chmod(&dir, 0o700);
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    let e = ControlListener::bind(APP, cb.clone()).unwrap_err();
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
    let e = ControlListener::bind(APP, cb.clone()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Policy);
    assert!(e.message().contains("not a directory"), "{}", e.message());
    std::fs::remove_file(&dir).unwrap();

    // A missing XDG_RUNTIME_DIR is not created for us.
    // SAFETY: `ENV` is held (by `rt`).
    unsafe { std::env::set_var("XDG_RUNTIME_DIR", rt.path().join("missing")) };
    let e = ControlListener::bind(APP, cb.clone()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::State);
    assert!(e.message().contains("XDG_RUNTIME_DIR"), "{}", e.message());
    unsafe { std::env::set_var("XDG_RUNTIME_DIR", rt.path()) };

    // And with a sane directory, it binds.
    drop(ControlListener::bind(APP, cb).unwrap());
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
    let first = ControlListener::bind(APP, cb.clone()).unwrap();
    let e = ControlListener::bind(APP, cb.clone()).unwrap_err();
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
    let e = ControlListener::bind(APP, cb).unwrap_err();
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
    let listener = ControlListener::bind(APP, cb.clone()).unwrap();
    // (Comparing inodes proves nothing: tmpfs hands the freed inode number straight back.)
    assert_eq!(mode(&path), 0o600);
    signal_event(APP, "after-restart").unwrap();
    assert_eq!(rx.try_recv().unwrap(), "after-restart");
    drop(listener);

    // Something that is not a socket is never removed.
    std::fs::write(&path, "precious").unwrap();
    let e = ControlListener::bind(APP, cb).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::State);
    assert!(e.message().contains("not a socket"), "{}", e.message());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
}

#[test]
fn bad_names_and_malformed_frames_are_rejected() {
    let _rt = RuntimeDir::new();
    let (cb, rx) = channel_callback();
    let listener = ControlListener::bind(APP, cb).unwrap();

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

    // Server side: frames written by hand.
    let path = listener.path();
    let signal = |name: &str| protocol::encode(&Request::Signal { name: name.into() });
    let with_hello = |frame: Vec<u8>| [hello(), frame].concat();
    let cases: Vec<(Vec<u8>, bool, &str)> = vec![
        (
            signal("x"),
            false,
            "INVALID_ARGUMENT: the first request must be a hello",
        ),
        (
            protocol::encode(&Request::Hello {
                version: 99,
                min_version: Some(98),
                keep_alive: false,
            }),
            false,
            "UNSUPPORTED: control protocol: no protocol version in common: this build speaks versions 1–2, the peer versions 98–99",
        ),
        (
            with_hello(signal("")),
            false,
            "INVALID_ARGUMENT: event name is empty",
        ),
        (
            with_hello(signal("a\u{1}b")),
            false,
            "INVALID_ARGUMENT: event name \"a\\u{1}b\" contains a control character",
        ),
        (
            with_hello(vec![0, 0, 0, 3, 0xff, 0xfe, b'{']),
            false,
            "INVALID_ARGUMENT: a bad frame: ",
        ),
        // The old line protocol: its first bytes read as a length far over the limit.
        (
            b"signal x\n".to_vec(),
            false,
            "INVALID_ARGUMENT: a frame of 1936287598 bytes is over the limit of 65536",
        ),
    ];
    for (bytes, _, want) in &cases {
        // Half-closed after sending: the broker answers what it got, then closes.
        let got = refusal(&raw_exchange(path, bytes, true));
        assert!(got.starts_with(want), "{bytes:?}: {got}");
    }
    let long = with_hello(signal(&"y".repeat(257)));
    assert_eq!(
        refusal(&raw_exchange(path, &long, true)),
        "INVALID_ARGUMENT: event name is 257 bytes long; the limit is 256 bytes"
    );
    // A frame cut short by a half-close: no reply to a request that never arrived.
    let cut = with_hello(signal("fine"));
    assert_eq!(
        raw_exchange(path, &cut[..cut.len() - 2], true),
        [Reply::Hello {
            version: protocol::VERSION,
            pid: std::process::id(),
            app_id: APP.into(),
            store: None,
        }]
    );
    assert!(rx.try_recv().is_err(), "no bad name may reach the callback");

    // Well-formed frames work, several on one connection, and the listener survived all of the
    // above.
    let replies = raw_exchange(
        path,
        &[hello(), signal("fine"), signal("again")].concat(),
        true,
    );
    assert_eq!(replies.len(), 3, "{replies:?}");
    assert_eq!(replies[1], Reply::Fired { count: 1 });
    assert_eq!(rx.try_recv().unwrap(), "fine");
    assert_eq!(rx.try_recv().unwrap(), "again");
}

#[test]
fn silent_and_slow_clients_do_not_block_the_others() {
    let _rt = RuntimeDir::new();
    let (cb, rx) = channel_callback();
    let listener = ControlListener::bind(APP, cb).unwrap();

    // 1,000 connections that say nothing, some half a frame, some half-closed.
    let mut idle = Vec::new();
    for i in 0..1000 {
        let mut s = UnixStream::connect(listener.path()).unwrap();
        match i % 3 {
            0 => {}
            1 => s.write_all(&hello()[..3]).unwrap(),
            _ => s.shutdown(std::net::Shutdown::Write).unwrap(),
        }
        idle.push(s);
    }
    // Served at once, not after the others time out.
    let start = Instant::now();
    signal_event(APP, "after-the-silent-ones").unwrap();
    assert!(
        start.elapsed() < protocol_idle(),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), "after-the-silent-ones");
    drop(idle);
    signal_event(APP, "after-they-left").unwrap();
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), "after-they-left");
}

#[test]
fn a_version_1_client_is_served_and_requests_it_cannot_know_leave_its_connection_up() {
    let _rt = RuntimeDir::new();
    let (cb, rx) = channel_callback();
    let listener = ControlListener::bind(APP, cb).unwrap();
    // A hello exactly as version 1 builds wrote it.
    let v1_hello = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v1/request_hello.json"),
    )
    .unwrap();
    let v1_hello: serde_json::Value = serde_json::from_slice(&v1_hello).unwrap();
    let frames = [
        protocol::encode(&v1_hello),
        protocol::encode(&serde_json::json!({"type": "teleport", "to": "mars"})),
        protocol::encode(&serde_json::json!({"type": "signal", "name": 7})),
        protocol::encode(&serde_json::json!({"type": "signal", "name": "ok", "urgency": "high"})),
    ]
    .concat();
    let replies = raw_exchange(listener.path(), &frames, true);
    assert_eq!(replies.len(), 4, "{replies:?}");
    assert!(
        matches!(replies[0], Reply::Hello { version: 1, .. }),
        "the version both speak: {:?}",
        replies[0]
    );
    assert_eq!(
        refusal(&replies[..2]),
        "UNSUPPORTED: this broker (protocol versions 1–2) does not know this request"
    );
    let unreadable = refusal(&replies[..3]);
    assert!(
        unreadable.starts_with("INVALID_ARGUMENT: a message this build cannot take: invalid type"),
        "{unreadable}"
    );
    assert_eq!(
        replies[3],
        Reply::Fired { count: 1 },
        "an unknown field is ignored"
    );
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), "ok");
}

fn protocol_idle() -> Duration {
    btb_core::control::IDLE_TIMEOUT
}

#[test]
fn an_idle_connection_is_closed_but_a_client_processs_kept_one_is_not() {
    let _rt = RuntimeDir::new();
    let (cb, rx) = channel_callback();
    let listener = ControlListener::bind(APP, cb).unwrap();
    let greeted = |keep_alive: bool| {
        let mut s = UnixStream::connect(listener.path()).unwrap();
        s.write_all(&protocol::encode(&Request::Hello {
            version: protocol::VERSION,
            min_version: None,
            keep_alive,
        }))
        .unwrap();
        s.set_read_timeout(Some(protocol_idle() + DEADLINE))
            .unwrap();
        let hello = protocol::read_frame::<Reply>(&mut s).unwrap();
        assert!(matches!(hello, Some(Reply::Hello { .. })), "{hello:?}");
        s
    };
    let (mut plain, mut kept) = (greeted(false), greeted(true));
    // The plain one is told, then closed, once it has been idle for the idle timeout.
    match protocol::read_frame::<Reply>(&mut plain).unwrap() {
        Some(Reply::Error { kind, message }) => {
            assert_eq!(kind, "STATE");
            assert!(message.contains("no complete request"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(protocol::read_frame::<Reply>(&mut plain).unwrap(), None);
    // The kept one, idle as long, still serves.
    protocol::write_frame(
        &mut kept,
        &Request::Signal {
            name: "still-here".into(),
        },
    )
    .unwrap();
    assert_eq!(
        protocol::read_frame::<Reply>(&mut kept).unwrap(),
        Some(Reply::Fired { count: 1 })
    );
    assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), "still-here");
}

#[test]
fn a_panicking_callback_is_an_internal_error() {
    let _rt = RuntimeDir::new();
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let cb: Callback = Arc::new(move |request: Request| {
        if let Request::Signal { name } = request {
            assert_ne!(name, "boom", "test panic in the callback");
            let _ = tx.lock().unwrap().send(name);
        }
        Reply::Fired { count: 1 }
    });
    let _listener = ControlListener::bind(APP, cb).unwrap();
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
            let _ = stream.write_all(&hello());
            let reply = protocol::read_frame::<Reply>(&mut stream);
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
#[ignore = "needs root: cargo test -p btb-core --test control -- --ignored peer_uid_is_checked"]
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
    let listener = ControlListener::bind(APP, cb).unwrap();
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
    assert_eq!(
        lines[0],
        "reply Ok(Some(Error { kind: \"POLICY\", message: \"not your broker\" }))"
    );
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
    let listener = ControlListener::bind(APP, cb.clone()).unwrap();
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
    let again = ControlListener::bind(APP, cb).unwrap();
    signal_event(APP, "again").unwrap();
    assert_eq!(rx.try_recv().unwrap(), "again");
    drop(again);
    assert!(!path.exists());
}
