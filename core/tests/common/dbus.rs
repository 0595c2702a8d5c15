//! A private "system" bus for the D-Bus platform tests (`platform_dbus.rs`, the `dbus_event`
//! bench): a real `dbus-daemon`, python-dbusmock daemons on it (the `networkmanager`, `upower` and
//! `logind` templates) and a zbus client to drive them. Everything started is killed and reaped
//! when the [`TestBus`] drops. Every wait has a deadline; nothing sleeps.
//!
//! python-dbusmock needs dbus-python, which pip cannot build here: `make test` makes a venv on
//! Debian's python3 (with `python3-dbus`) and names its python in `BTB_DBUSMOCK_PYTHON`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use zbus::{Connection, Message, MessageStream, Variant};

/// How long a daemon may take to start (python-dbusmock imports take a few hundred ms).
pub const START_DEADLINE: Duration = Duration::from_secs(20);

pub const NM: &str = "org.freedesktop.NetworkManager";
pub const NM_PATH: &str = "/org/freedesktop/NetworkManager";
pub const UPOWER: &str = "org.freedesktop.UPower";
pub const UPOWER_PATH: &str = "/org/freedesktop/UPower";
pub const LOGIND: &str = "org.freedesktop.login1";
pub const LOGIND_PATH: &str = "/org/freedesktop/login1";
pub const LOGIND_MANAGER: &str = "org.freedesktop.login1.Manager";
pub const LOGIND_SESSION: &str = "org.freedesktop.login1.Session";
pub const MOCK: &str = "org.freedesktop.DBus.Mock";
pub const PROPERTIES: &str = "org.freedesktop.DBus.Properties";

/// Runs `f` on a thread of its own and waits at most `deadline` for it; panics naming `what`
/// when it takes longer (the thread is left behind: the test is failing anyway).
pub fn within<T: Send + 'static>(
    deadline: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(deadline)
        .unwrap_or_else(|e| panic!("{what}: not done within {deadline:?} ({e})"))
}

/// The python with python-dbusmock: `BTB_DBUSMOCK_PYTHON`, else the venv `make test` makes.
fn dbusmock_python() -> Option<PathBuf> {
    let python = std::env::var_os("BTB_DBUSMOCK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-dbusmock/bin/python")
        });
    let ok = Command::new(&python)
        .args(["-c", "import dbusmock"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(python)
}

fn have_dbus_daemon() -> bool {
    Command::new("dbus-daemon")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A private bus and the mocks on it.
pub struct TestBus {
    dir: tempfile::TempDir,
    daemon: Child,
    /// The bus address, for `PlatformOptions::system_bus`.
    pub address: String,
    python: Option<PathBuf>,
    mocks: Vec<(String, Child)>,
    client: Client,
}

impl TestBus {
    /// A bus with mocks to come; `None` (and a SKIPPED line) without dbus-daemon or dbusmock.
    pub fn start(test: &str) -> Option<TestBus> {
        let python = dbusmock_python();
        if python.is_none() {
            eprintln!(
                "SKIPPED: {test} (python-dbusmock not found: set BTB_DBUSMOCK_PYTHON or run \
                 `make test`, which sets it up)"
            );
            return None;
        }
        TestBus::start_bare(test).map(|mut bus| {
            bus.python = python;
            bus
        })
    }

    /// A bus for tests that need no mock; `None` (and a SKIPPED line) without dbus-daemon.
    pub fn start_bare(test: &str) -> Option<TestBus> {
        if !have_dbus_daemon() {
            eprintln!(
                "SKIPPED: {test} (dbus-daemon not found: apt-get install dbus-daemon; make test \
                 sets it up)"
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut daemon = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .arg(format!(
                "--address=unix:path={}",
                dir.path().join("sock").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()) // "Failed to set fd limit" without CAP_SYS_RESOURCE
            .spawn()
            .expect("dbus-daemon starts");
        let stdout = daemon.stdout.take().unwrap();
        let address = within(
            START_DEADLINE,
            "dbus-daemon prints its address",
            move || {
                let mut line = String::new();
                BufReader::new(stdout).read_line(&mut line).unwrap();
                line.trim().to_owned()
            },
        );
        assert!(address.starts_with("unix:"), "dbus-daemon said {address:?}");
        let client = Client::connect(&address);
        Some(TestBus {
            dir,
            daemon,
            address,
            python: None,
            mocks: Vec::new(),
            client,
        })
    }

    /// A client on the bus (cheap to clone; usable from any thread).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Starts `python -m dbusmock --system --template <template>` (with `-p <parameters>`) and
    /// waits until it owns `name`.
    pub fn mock(&mut self, template: &str, name: &str, parameters: Option<&str>) {
        let python = self
            .python
            .clone()
            .expect("a bus started with TestBus::start");
        // Subscribed before the mock starts: its NameOwnerChanged cannot be missed.
        let appeared = self.client.name_owner_changes(name);
        let log = std::fs::File::create(self.dir.path().join(format!("{template}.log"))).unwrap();
        let mut cmd = Command::new(python);
        cmd.args(["-m", "dbusmock", "--system", "--template", template]);
        if let Some(p) = parameters {
            cmd.args(["-p", p]);
        }
        let child = cmd
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.address)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("python-dbusmock starts");
        self.mocks.push((name.to_owned(), child));
        let client = self.client.clone();
        let owned = name.to_owned();
        within(
            START_DEADLINE,
            &format!("{template} mock owns {name}"),
            move || client.wait_owned(&owned, appeared),
        );
    }

    /// Kills the mock that owns `name` and waits until the bus says it is gone.
    pub fn kill_mock(&mut self, name: &str) {
        let i = self
            .mocks
            .iter()
            .position(|(n, _)| n == name)
            .expect("a running mock");
        let gone = self.client.name_owner_changes(name);
        let (_, mut child) = self.mocks.remove(i);
        child.kill().unwrap();
        child.wait().unwrap();
        let client = self.client.clone();
        let owned = name.to_owned();
        within(
            START_DEADLINE,
            &format!("{name} leaves the bus"),
            move || client.wait_gone(&owned, gone),
        );
    }
}

impl Drop for TestBus {
    fn drop(&mut self) {
        for (_, child) in &mut self.mocks {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// A zbus connection to the test bus, to drive the mocks.
#[derive(Clone)]
pub struct Client {
    conn: Connection,
}

impl Client {
    pub fn connect(address: &str) -> Client {
        let address = address.to_owned();
        let conn = within(START_DEADLINE, "a client connects to the bus", move || {
            zbus::block_on(zbus::connection::Builder::address(address.as_str()).build())
                .expect("the test bus accepts a client")
        });
        Client { conn }
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Calls a method and returns the reply; panics on an error reply.
    #[track_caller]
    pub fn call<B>(&self, dest: &str, path: &str, iface: &str, method: &str, body: &B) -> Message
    where
        B: serde::Serialize + zbus::DynamicType,
    {
        zbus::block_on(
            self.conn
                .call_method(Some(dest), path, Some(iface), method, body),
        )
        .unwrap_or_else(|e| panic!("{dest} {path} {iface}.{method}: {e}"))
    }

    /// `org.freedesktop.DBus.Properties.Set` (the mocks emit `PropertiesChanged`).
    #[track_caller]
    pub fn set(&self, dest: &str, path: &str, iface: &str, name: &str, value: Variant<'_>) {
        self.call(dest, path, PROPERTIES, "Set", &(iface, name, value));
    }

    /// Emits a signal from a mock's object at `path` (`Mock.EmitSignal`).
    #[track_caller]
    pub fn emit(
        &self,
        dest: &str,
        path: &str,
        iface: &str,
        name: &str,
        sig: &str,
        args: Vec<Variant<'_>>,
    ) {
        self.call(dest, path, MOCK, "EmitSignal", &(iface, name, sig, args));
    }

    /// logind's inhibitors: (what, who, why, mode, uid, pid).
    pub fn list_inhibitors(&self) -> Vec<(String, String, String, String, u32, u32)> {
        self.call(LOGIND, LOGIND_PATH, LOGIND_MANAGER, "ListInhibitors", &())
            .body()
            .deserialize()
            .unwrap()
    }

    /// Adds a logind session of `uid` and announces it (`SessionNew`, which `AddSession` does not
    /// emit); returns its object path.
    pub fn add_session(&self, id: &str, uid: u32, active: bool) -> String {
        let path: String = self
            .call(
                LOGIND,
                LOGIND_PATH,
                MOCK,
                "AddSession",
                &(id, "seat0", uid, "tester", active),
            )
            .body()
            .deserialize()
            .unwrap();
        let object = zbus::ObjectPath::try_from(path.as_str()).unwrap();
        self.emit(
            LOGIND,
            LOGIND_PATH,
            LOGIND_MANAGER,
            "SessionNew",
            "so",
            vec![Variant::from(id), Variant::from(object)],
        );
        path
    }

    /// Removes a logind session and announces it (`SessionRemoved`).
    pub fn remove_session(&self, id: &str, path: &str) {
        self.call(LOGIND, LOGIND_PATH, MOCK, "RemoveObject", &(path,));
        let object = zbus::ObjectPath::try_from(path).unwrap();
        self.emit(
            LOGIND,
            LOGIND_PATH,
            LOGIND_MANAGER,
            "SessionRemoved",
            "so",
            vec![Variant::from(id), Variant::from(object)],
        );
    }

    /// A stream of `NameOwnerChanged` for `name` (subscribe before causing the change).
    fn name_owner_changes(&self, name: &str) -> MessageStream {
        let rule = format!(
            "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',\
             member='NameOwnerChanged',arg0='{name}'"
        );
        zbus::block_on(MessageStream::for_match_rule(
            rule.as_str(),
            &self.conn,
            None,
        ))
        .expect("a subscription to NameOwnerChanged")
    }

    fn has_owner(&self, name: &str) -> bool {
        self.call(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "NameHasOwner",
            &(name,),
        )
        .body()
        .deserialize()
        .unwrap()
    }

    fn wait_owned(&self, name: &str, mut changes: MessageStream) {
        if self.has_owner(name) {
            return;
        }
        while let Some(msg) = zbus::block_on(next(&mut changes)) {
            let (_, _, new): (String, String, String) = msg.unwrap().body().deserialize().unwrap();
            if !new.is_empty() {
                return;
            }
        }
        panic!("the bus closed before {name} appeared");
    }

    fn wait_gone(&self, name: &str, mut changes: MessageStream) {
        if !self.has_owner(name) {
            return;
        }
        while let Some(msg) = zbus::block_on(next(&mut changes)) {
            let (_, _, new): (String, String, String) = msg.unwrap().body().deserialize().unwrap();
            if new.is_empty() {
                return;
            }
        }
        panic!("the bus closed before {name} left");
    }
}

/// The next message of a stream (`None` once the connection closed).
pub async fn next(stream: &mut MessageStream) -> Option<zbus::Result<Message>> {
    std::future::poll_fn(|cx| futures_core::Stream::poll_next(std::pin::Pin::new(&mut *stream), cx))
        .await
}
