//! The states the system bus knows (SPEC §6): NetworkManager (INTERNET_AVAILABLE,
//! FREE_NETWORK_AVAILABLE), UPower (ON_AC_POWER, BATTERY_NOT_LOW) and logind (SESSION_CONNECTED,
//! USER_PRESENT, DEVICE_IDLE; resume from sleep; logging off and shutdown, LOGGING_OFF; the sleep
//! inhibitor of `is_network_requested`), and power-profiles-daemon (its energy saver,
//! ENERGY_SAVER).
//!
//! One thread, `btb-dbus`, runs zbus's own runtime (`zbus::block_on`) for our connections (see
//! [`Bus`]): it reads each daemon's properties when the daemon is (or comes) on the bus, then
//! applies the `PropertiesChanged` signals and logind's session signals as they arrive.
//! Event-driven only: the thread sleeps in the runtime's reactor until the bus sends something,
//! and no timer is ever armed (see `Bus` on timeouts). A daemon that is absent
//! reports nothing (its states stay unknown, or with a fallback's reading: netlink, sysfs); one
//! that leaves the bus reports its states unknown; one that (re)appears is read afresh.
//!
//! Every signal goes through one message stream, so they are handled in the order the bus sent
//! them. Properties are read from the owner's unique name (never the well-known one), so that a
//! read cannot activate a daemon that is not running, and a signal from anyone but the current
//! owner is ignored (a stale one from a previous owner, say).

use std::collections::HashMap;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use zbus::message::Type;
use zbus::{Connection, Message, MessageStream, OwnedObjectPath, OwnedVariant, Variant};

use super::call_timer::CallTimer;
use super::{Heard, PlatformOptions, Sink, Source};
use crate::model::SystemConditionType as C;

const DBUS: &str = "org.freedesktop.DBus";
const DBUS_PATH: &str = "/org/freedesktop/DBus";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";

const NM: &str = "org.freedesktop.NetworkManager";
const NM_PATH: &str = "/org/freedesktop/NetworkManager";

const UPOWER: &str = "org.freedesktop.UPower";
const UPOWER_PATH: &str = "/org/freedesktop/UPower";
const UPOWER_DEVICE: &str = "org.freedesktop.UPower.Device";

const LOGIND: &str = "org.freedesktop.login1";
const LOGIND_PATH: &str = "/org/freedesktop/login1";
const LOGIND_MANAGER: &str = "org.freedesktop.login1.Manager";
const LOGIND_SESSION: &str = "org.freedesktop.login1.Session";

/// How long the watcher waits for a daemon's answer (a daemon that hangs must not freeze the
/// watcher, `call_timer.rs`).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// power-profiles-daemon: since 0.20 under UPower's name, before under its own (0.20 and later
/// own both). The interface name equals the bus name in both.
const PROFILES: &str = "org.freedesktop.UPower.PowerProfiles";
const PROFILES_PATH: &str = "/org/freedesktop/UPower/PowerProfiles";
const HADESS_PROFILES: &str = "net.hadess.PowerProfiles";
const HADESS_PROFILES_PATH: &str = "/net/hadess/PowerProfiles";
/// The `ActiveProfile` that saves energy.
const POWER_SAVER: &str = "power-saver";

/// How long a worker waits for logind to grant a sleep inhibitor.
const INHIBIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `start` waits for the bus to accept us (connect, authenticate, subscribe).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `start` then waits for the first readings of the daemons on the bus.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The signals the watcher hears. `sender` names a well-known name: the bus matches it against
/// whoever owns that name when it sends.
const MATCH_RULES: [&str; 11] = [
    "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',\
     member='NameOwnerChanged',arg0='org.freedesktop.NetworkManager'",
    "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',\
     member='NameOwnerChanged',arg0='org.freedesktop.UPower'",
    "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',\
     member='NameOwnerChanged',arg0='org.freedesktop.login1'",
    "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',\
     member='NameOwnerChanged',arg0='org.freedesktop.UPower.PowerProfiles'",
    "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',\
     member='NameOwnerChanged',arg0='net.hadess.PowerProfiles'",
    "type='signal',sender='org.freedesktop.NetworkManager',\
     interface='org.freedesktop.DBus.Properties',member='PropertiesChanged',\
     path='/org/freedesktop/NetworkManager'",
    // The manager and the display device (whose path `GetDisplayDevice` tells).
    "type='signal',sender='org.freedesktop.UPower',interface='org.freedesktop.DBus.Properties',\
     member='PropertiesChanged',path_namespace='/org/freedesktop/UPower'",
    // The manager and the sessions, which come and go.
    "type='signal',sender='org.freedesktop.login1',interface='org.freedesktop.DBus.Properties',\
     member='PropertiesChanged',path_namespace='/org/freedesktop/login1'",
    // SessionNew, SessionRemoved, PrepareForSleep, PrepareForShutdown.
    "type='signal',sender='org.freedesktop.login1',interface='org.freedesktop.login1.Manager'",
    "type='signal',sender='org.freedesktop.UPower.PowerProfiles',\
     interface='org.freedesktop.DBus.Properties',member='PropertiesChanged',\
     path='/org/freedesktop/UPower/PowerProfiles'",
    "type='signal',sender='net.hadess.PowerProfiles',\
     interface='org.freedesktop.DBus.Properties',member='PropertiesChanged',\
     path='/net/hadess/PowerProfiles'",
];

/// The D-Bus sources of one open system; dropping it stops its thread.
///
/// Two connections, both driven by the `btb-dbus` thread: one hears the signals (a stream the
/// watcher reads), the other makes every method call, the watcher's and the workers' sleep
/// inhibitors. A reply therefore never waits behind unread signals (a stream's queue that is full
/// holds up its connection's reader), and a reply's descriptor goes to its caller alone. No call
/// has a zbus timeout (zbus arms a timer per call that fires, and wakes the thread, seconds after
/// the call is over; an idle broker makes no system calls): the watcher's calls end after
/// `CALL_TIMEOUT` through `btb-dbus-timer` (`call_timer.rs`), armed only while one is in flight,
/// and a worker waits for an inhibitor `INHIBIT_TIMEOUT` at most.
pub(crate) struct Bus {
    /// The calls connection. Let go of first when dropped: a connection still alive when the
    /// thread's `block_on` returns would be handed to a zbus helper thread.
    calls: Option<Connection>,
    stop: Arc<Stop>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The deadlines of the watcher's calls, and their thread (joined after `thread`).
    timer: Arc<CallTimer>,
    timer_thread: Option<std::thread::JoinHandle<()>>,
}

impl Bus {
    /// Connects to the system bus (`options.system_bus`, else `DBUS_SYSTEM_BUS_ADDRESS` read now,
    /// else the standard socket) and watches NetworkManager, UPower and logind; reports through
    /// `sink` (each daemon's first reading with `initial`). Err when there is no bus.
    ///
    /// Returns once the daemons on the bus were read (so a system's states are known when it
    /// opens), or after `READ_TIMEOUT` at most: then the readings arrive later.
    pub(crate) fn start(options: &PlatformOptions, sink: Sink) -> std::io::Result<Bus> {
        let address = options.system_bus.clone();
        let stop = Arc::new(Stop::default());
        let timer = Arc::new(CallTimer::default());
        let timer_thread = timer.start()?;
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        let thread = {
            let stop = Arc::clone(&stop);
            let timer = Arc::clone(&timer);
            std::thread::Builder::new()
                .name("btb-dbus".into())
                .spawn(move || {
                    zbus::block_on(until_stopped(&stop, async move {
                        let connected = async {
                            let stream = subscribe(address.as_deref()).await?;
                            let calls = builder(address.as_deref()).build().await?;
                            zbus::Result::Ok((stream, calls))
                        };
                        let (stream, calls) = match connected.await {
                            Ok(c) => c,
                            Err(e) => {
                                let _ = tx.send(Started::Failed(e));
                                return;
                            }
                        };
                        let _ = tx.send(Started::Connected(calls.clone()));
                        let mut watcher = Watcher::new(calls, sink, timer);
                        watcher.read_all().await;
                        let _ = tx.send(Started::Read);
                        drop(tx);
                        watcher.run(stream).await;
                    }))
                })?
        };
        let mut bus = Bus {
            calls: None,
            stop,
            thread: Some(thread),
            timer,
            timer_thread: Some(timer_thread),
        };
        // On an error `bus` drops on the way out, which stops its thread.
        match rx.recv_timeout(CONNECT_TIMEOUT) {
            Ok(Started::Connected(calls)) => bus.calls = Some(calls),
            Ok(Started::Failed(e)) => return Err(std::io::Error::other(e)),
            Ok(Started::Read) | Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the bus did not accept us within {CONNECT_TIMEOUT:?}"),
                ));
            }
        }
        let _ = rx.recv_timeout(READ_TIMEOUT);
        Ok(bus)
    }

    /// What asks logind for sleep inhibitors, to use with no lock held (the call blocks).
    pub(crate) fn inhibitor(&self) -> Option<Inhibitor> {
        self.calls.clone().map(|conn| Inhibitor { conn })
    }
}

/// Asks logind for sleep inhibitors over the bus's calls connection (a clone: it outlives no
/// `Bus` in use, and calls on it after the bus stopped fail).
pub(crate) struct Inhibitor {
    conn: Connection,
}

impl Inhibitor {
    /// A logind sleep inhibitor, `Inhibit("sleep", who, why, "block")`: the lock lives as long as
    /// the returned descriptor. `None` when logind is absent, refuses or does not answer within
    /// `INHIBIT_TIMEOUT` (logged at debug). Blocks the calling thread for the round trip, which
    /// the `btb-dbus` thread completes: never call it on that thread.
    pub(crate) fn inhibit_sleep(&self, who: &str, why: &str) -> Option<OwnedFd> {
        let conn = &self.conn;
        let args = ("sleep", who, why, "block");
        let call = conn.call_method(
            Some(LOGIND),
            LOGIND_PATH,
            Some(LOGIND_MANAGER),
            "Inhibit",
            &args,
        );
        let reply = wait_at_most(INHIBIT_TIMEOUT, call).unwrap_or_else(|| {
            Err(zbus::Error::InputOutput(Arc::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {INHIBIT_TIMEOUT:?}"),
            ))))
        });
        match reply.and_then(|m| m.body().deserialize::<zbus::OwnedFd>()) {
            Ok(fd) => Some(fd.into()),
            Err(e) => {
                log::debug!(target: "btb", "no sleep inhibitor from logind for {why:?}: {e}");
                None
            }
        }
    }
}

/// Polls `future` on the calling thread until it is done or `timeout` passed (then drops it,
/// which cancels it). For a future whose I/O another thread drives: this one only parks until
/// woken. Unlike a zbus timeout, it leaves no timer behind.
fn wait_at_most<F: Future>(timeout: Duration, future: F) -> Option<F::Output> {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return Some(out);
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        std::thread::park_timeout(left); // woken early by the waker (or spuriously: poll again)
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        drop(self.calls.take());
        self.stop.stop();
        if let Some(t) = self.thread.take()
            && t.thread().id() != std::thread::current().id()
        {
            let _ = t.join();
        }
        self.timer.stop();
        if let Some(t) = self.timer_thread.take() {
            let _ = t.join();
        }
    }
}

/// How far the `btb-dbus` thread got, told to `Bus::start`.
enum Started {
    /// With the connection for `inhibit_sleep`.
    Connected(Connection),
    Failed(zbus::Error),
    /// The daemons on the bus were read (and reported).
    Read,
}

/// A connection to the bus at `address`, else the system bus.
fn builder(address: Option<&str>) -> zbus::connection::Builder<'_> {
    match address {
        Some(a) => zbus::connection::Builder::address(a),
        None => zbus::connection::Builder::system(),
    }
}

/// The signals connection, subscribed, as a stream. The stream exists before the first
/// subscription, so nothing the bus sends afterwards is missed.
async fn subscribe(address: Option<&str>) -> zbus::Result<MessageStream> {
    let conn = builder(address).build().await?;
    let stream = MessageStream::from(&conn);
    for rule in MATCH_RULES {
        conn.call_method(Some(DBUS), DBUS_PATH, Some(DBUS), "AddMatch", &(rule,))
            .await?;
    }
    Ok(stream)
}

/// Tells the `btb-dbus` thread to stop, from any thread.
#[derive(Default)]
struct Stop {
    stopped: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Stop {
    fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        let waker = self
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.stopped.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        *self.waker.lock().unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
        // A stop between the first check and storing the waker found no waker to wake.
        if self.stopped.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// Runs `work` until it ends or `stop` is told; dropping `work` cancels whatever call it waits on.
async fn until_stopped(stop: &Stop, work: impl Future<Output = ()>) {
    let mut work = pin!(work);
    std::future::poll_fn(|cx| {
        if stop.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        work.as_mut().poll(cx)
    })
    .await
}

/// The daemons watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Daemon {
    NetworkManager = 0,
    UPower = 1,
    Logind = 2,
    /// power-profiles-daemon under UPower's name (0.20 and later): energy saver, no state.
    Profiles = 3,
    /// The same daemon under its old name (before 0.20).
    HadessProfiles = 4,
}

/// How many daemons are watched (the length of the watcher's per-daemon arrays).
const DAEMONS: usize = 5;

impl Daemon {
    const ALL: [Daemon; DAEMONS] = [
        Daemon::NetworkManager,
        Daemon::UPower,
        Daemon::Logind,
        Daemon::Profiles,
        Daemon::HadessProfiles,
    ];

    fn name(self) -> &'static str {
        match self {
            Daemon::NetworkManager => NM,
            Daemon::UPower => UPOWER,
            Daemon::Logind => LOGIND,
            Daemon::Profiles => PROFILES,
            Daemon::HadessProfiles => HADESS_PROFILES,
        }
    }

    fn source(self) -> Source {
        match self {
            Daemon::NetworkManager => Source::NetworkManager,
            // power-profiles-daemon reports no state (see `Watcher::report_energy_saver`).
            Daemon::UPower | Daemon::Profiles | Daemon::HadessProfiles => Source::UPower,
            Daemon::Logind => Source::Logind,
        }
    }

    fn conditions(self) -> &'static [C] {
        match self {
            Daemon::NetworkManager => &[C::InternetAvailable, C::FreeNetworkAvailable],
            Daemon::UPower => &[C::OnAcPower, C::BatteryNotLow],
            Daemon::Logind => &[C::SessionConnected, C::UserPresent, C::DeviceIdle],
            Daemon::Profiles | Daemon::HadessProfiles => &[],
        }
    }

    /// power-profiles-daemon's object (path and interface) under this name.
    fn profiles_object(self) -> Option<&'static str> {
        match self {
            Daemon::Profiles => Some(PROFILES_PATH),
            Daemon::HadessProfiles => Some(HADESS_PROFILES_PATH),
            _ => None,
        }
    }
}

/// The properties of one object, as last read or changed.
type Props = HashMap<String, OwnedVariant>;

/// A daemon's readings of its states, as reported.
type Readings = Vec<(C, Option<bool>)>;

/// A property's value: `Ok(None)` when the object has none, `Err(())` when it has one of another
/// type (logged at debug; the state it decides reads unknown).
fn get<T>(props: &Props, name: &str) -> Result<Option<T>, ()>
where
    T: for<'r> TryFrom<&'r Variant<'static>>,
{
    match props.get(name) {
        None => Ok(None),
        Some(v) => T::try_from(v).map(Some).map_err(|_| {
            log::debug!(target: "btb", "D-Bus property {name} has an unexpected type: {v:?}");
        }),
    }
}

/// A boolean property, `default` when absent; `None` when of another type.
fn flag(props: &Props, name: &str, default: bool) -> Option<bool> {
    get::<bool>(props, name).ok().map(|v| v.unwrap_or(default))
}

/// NetworkManager's readings (`NMState`, `NMConnectivityState`, `NMMetered` values): internet
/// when globally connected and the connectivity check passed or is off (UNKNOWN, as on servers);
/// free when, besides, the connection is known not to be metered (UNKNOWN or absent: not free).
fn network_states(nm: &Props) -> [Option<bool>; 2] {
    const CONNECTED_GLOBAL: u32 = 70;
    const UNKNOWN: u32 = 0;
    const FULL: u32 = 4;
    const NO: u32 = 2;
    const GUESS_NO: u32 = 4;
    let internet = (|| {
        let state = get::<u32>(nm, "State").ok()??;
        let connectivity = get::<u32>(nm, "Connectivity").ok()?.unwrap_or(UNKNOWN);
        Some(state == CONNECTED_GLOBAL && matches!(connectivity, FULL | UNKNOWN))
    })();
    let free = internet.and_then(|internet| {
        let metered = get::<u32>(nm, "Metered").ok()?;
        Some(internet && matches!(metered, Some(NO | GUESS_NO)))
    });
    [internet, free]
}

/// UPower's readings: on AC unless on battery; the battery is low when the display device (the
/// combined battery) is present at warning level Low (3) or worse. `display`: `None` when unread.
fn power_states(upower: &Props, display: Option<&Props>) -> [Option<bool>; 2] {
    const LOW: u32 = 3;
    let on_ac = get::<bool>(upower, "OnBattery").ok().flatten().map(|b| !b);
    let not_low = display.and_then(|d| match get::<bool>(d, "IsPresent").ok()?? {
        false => Some(true),
        true => Some(get::<u32>(d, "WarningLevel").ok()?? < LOW),
    });
    [on_ac, not_low]
}

/// logind's readings for the sessions of our user (`None` when unread): connected while one is
/// online or active; present while one is active, not idle and not locked; the device is idle as
/// logind's manager says (all sessions idle).
fn session_states(manager: &Props, sessions: Option<&HashMap<String, Props>>) -> [Option<bool>; 3] {
    let connected = |p: &Props| match get::<String>(p, "State") {
        Ok(Some(state)) => Some(state == "online" || state == "active"),
        Ok(None) => flag(p, "Active", false),
        Err(()) => None,
    };
    let present = |p: &Props| {
        Some(
            flag(p, "Active", false)?
                && !flag(p, "IdleHint", false)?
                && !flag(p, "LockedHint", false)?,
        )
    };
    let any = |f: &dyn Fn(&Props) -> Option<bool>| {
        let mut any = false;
        for p in sessions?.values() {
            any |= f(p)?;
        }
        Some(any)
    };
    [
        any(&connected),
        any(&present),
        get::<bool>(manager, "IdleHint").ok().flatten(),
    ]
}

/// Whether our user is logged in: one of their sessions is not closing (`None` while unread).
/// Its fall to false, the last session closing or removed, is logging off (SPEC §4 LOGGING_OFF).
fn logged_in(sessions: Option<&HashMap<String, Props>>) -> Option<bool> {
    let closing = |p: &Props| matches!(get::<String>(p, "State"), Ok(Some(s)) if s == "closing");
    Some(sessions?.values().any(|p| !closing(p)))
}

/// Whether power-profiles-daemon saves energy: its `ActiveProfile` is `power-saver`.
fn saving_energy(profiles: &Props) -> bool {
    matches!(get::<String>(profiles, "ActiveProfile"), Ok(Some(p)) if p == POWER_SAVER)
}

/// What the watcher knows of the bus.
struct Watcher {
    /// The calls connection.
    conn: Connection,
    /// Ends calls that a daemon does not answer.
    timer: Arc<CallTimer>,
    sink: Sink,
    uid: u32,
    /// The unique name of each daemon's owner (indexed by `Daemon`), `None` while it has none.
    owners: [Option<String>; DAEMONS],
    /// What each daemon last reported (`None`: nothing since it appeared or left).
    reported: [Option<Readings>; DAEMONS],
    /// Daemons whose absence was logged (once per system each).
    logged: [bool; DAEMONS],
    nm: Props,
    upower: Props,
    /// The display device: its path and properties.
    display: Option<(String, Props)>,
    logind: Props,
    /// Our user's sessions by object path; `None` while unread.
    sessions: Option<HashMap<String, Props>>,
    /// Whether our user was logged in at the last reading of the sessions (`logged_in`).
    logged_in: Option<bool>,
    /// power-profiles-daemon's properties under each of its names (`Daemon::Profiles`,
    /// `Daemon::HadessProfiles`).
    profiles: Props,
    hadess_profiles: Props,
    /// The energy saver as last reported.
    energy_saver: bool,
}

impl Watcher {
    fn new(conn: Connection, sink: Sink, timer: Arc<CallTimer>) -> Watcher {
        Watcher {
            conn,
            timer,
            sink,
            uid: rustix::process::getuid().as_raw(),
            owners: Default::default(),
            reported: Default::default(),
            logged: [false; DAEMONS],
            nm: Props::new(),
            upower: Props::new(),
            display: None,
            logind: Props::new(),
            sessions: None,
            logged_in: None,
            profiles: Props::new(),
            hadess_profiles: Props::new(),
            energy_saver: false,
        }
    }

    /// The first reading: each daemon that has an owner now.
    async fn read_all(&mut self) {
        for d in Daemon::ALL {
            let owner = self
                .call(DBUS, DBUS_PATH, DBUS, "GetNameOwner", &(d.name(),))
                .await
                .and_then(|m| m.body().deserialize::<String>());
            match owner {
                Ok(owner) => self.appeared(d, owner, true).await,
                Err(_) => self.absent(d, "not running"),
            }
        }
    }

    /// Handles what the bus sends until the connection closes.
    async fn run(mut self, mut stream: MessageStream) {
        loop {
            match std::future::poll_fn(|cx| {
                futures_core::Stream::poll_next(std::pin::Pin::new(&mut stream), cx)
            })
            .await
            {
                Some(Ok(msg)) => self.on_message(&msg).await,
                Some(Err(e)) => log::debug!(target: "btb", "system bus: {e}"),
                None => break,
            }
        }
        super::unavailable("the system bus", "the connection closed");
        for d in Daemon::ALL {
            self.lost(d);
        }
    }

    async fn call<B>(
        &self,
        destination: &str,
        path: &str,
        interface: &str,
        method: &str,
        body: &B,
    ) -> zbus::Result<Message>
    where
        B: serde::Serialize + zbus::DynamicType,
    {
        let call = self
            .conn
            .call_method(Some(destination), path, Some(interface), method, body);
        match self.timer.within(CALL_TIMEOUT, call).await {
            Some(reply) => reply,
            None => Err(zbus::Error::InputOutput(Arc::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "{destination} did not answer {interface}.{method} within {CALL_TIMEOUT:?}"
                ),
            )))),
        }
    }

    /// Every property of `interface` on `path` of the owner `dest`; empty (so: unknown states)
    /// when the read fails.
    async fn get_all(&self, dest: &str, path: &str, interface: &str) -> Props {
        let reply = self
            .call(dest, path, PROPERTIES, "GetAll", &(interface,))
            .await;
        reply
            .and_then(|m| m.body().deserialize::<Props>())
            .unwrap_or_else(|e| {
                log::debug!(target: "btb", "cannot read {interface} at {path} from {dest}: {e}");
                Props::new()
            })
    }

    fn absent(&mut self, d: Daemon, why: &str) {
        if !std::mem::replace(&mut self.logged[d as usize], true) {
            super::unavailable(&format!("{} on the system bus", d.name()), why);
        }
    }

    /// `d` has an owner (at start, or it started later): read it afresh and report.
    async fn appeared(&mut self, d: Daemon, owner: String, initial: bool) {
        self.owners[d as usize] = Some(owner.clone());
        match d {
            Daemon::NetworkManager => self.nm = self.get_all(&owner, NM_PATH, NM).await,
            Daemon::UPower => {
                self.upower = self.get_all(&owner, UPOWER_PATH, UPOWER).await;
                let path = self
                    .call(&owner, UPOWER_PATH, UPOWER, "GetDisplayDevice", &())
                    .await
                    .and_then(|m| m.body().deserialize::<OwnedObjectPath>());
                self.display = match path {
                    Ok(path) => {
                        let props = self.get_all(&owner, path.as_str(), UPOWER_DEVICE).await;
                        Some((path.as_str().to_owned(), props))
                    }
                    Err(e) => {
                        log::debug!(target: "btb", "UPower has no display device: {e}");
                        None
                    }
                };
            }
            Daemon::Logind => {
                self.logind = self.get_all(&owner, LOGIND_PATH, LOGIND_MANAGER).await;
                self.sessions = self.read_sessions(&owner).await;
                // A new owner's first reading is no logging off, whatever the last one said.
                self.logged_in = None;
            }
            Daemon::Profiles => {
                self.profiles = self.get_all(&owner, PROFILES_PATH, PROFILES).await;
            }
            Daemon::HadessProfiles => {
                self.hadess_profiles = self
                    .get_all(&owner, HADESS_PROFILES_PATH, HADESS_PROFILES)
                    .await;
            }
        }
        self.report(d, initial);
    }

    /// Our user's sessions: `ListSessions` → `a(susso)` (id, uid, user, seat, path).
    async fn read_sessions(&self, owner: &str) -> Option<HashMap<String, Props>> {
        let list = self
            .call(owner, LOGIND_PATH, LOGIND_MANAGER, "ListSessions", &())
            .await
            .and_then(|m| {
                m.body()
                    .deserialize::<Vec<(String, u32, String, String, OwnedObjectPath)>>()
            });
        let list = match list {
            Ok(list) => list,
            Err(e) => {
                log::debug!(target: "btb", "cannot list logind's sessions: {e}");
                return None;
            }
        };
        let mut sessions = HashMap::new();
        for (_, uid, _, _, path) in list {
            if uid == self.uid {
                let props = self.get_all(owner, path.as_str(), LOGIND_SESSION).await;
                sessions.insert(path.as_str().to_owned(), props);
            }
        }
        Some(sessions)
    }

    /// `d` left the bus: its states read unknown (a fallback's reading shows through).
    fn lost(&mut self, d: Daemon) {
        if self.owners[d as usize].take().is_none() {
            return;
        }
        match d {
            Daemon::NetworkManager => self.nm.clear(),
            Daemon::UPower => {
                self.upower.clear();
                self.display = None;
            }
            Daemon::Logind => {
                self.logind.clear();
                self.sessions = None;
                self.logged_in = None;
            }
            Daemon::Profiles => self.profiles.clear(),
            Daemon::HadessProfiles => self.hadess_profiles.clear(),
        }
        if d.profiles_object().is_some() {
            self.report_energy_saver();
            return;
        }
        if self.reported[d as usize].take().is_some() {
            (self.sink)(Heard::Report {
                source: d.source(),
                states: d.conditions().iter().map(|c| (*c, None)).collect(),
                fires: Vec::new(),
                initial: false,
            });
        }
    }

    /// Reports `d`'s states if they changed since its last report (or it is the first).
    fn report(&mut self, d: Daemon, initial: bool) {
        let values: Vec<Option<bool>> = match d {
            Daemon::Profiles | Daemon::HadessProfiles => {
                self.report_energy_saver();
                return;
            }
            Daemon::NetworkManager => network_states(&self.nm).to_vec(),
            Daemon::UPower => {
                power_states(&self.upower, self.display.as_ref().map(|(_, p)| p)).to_vec()
            }
            Daemon::Logind => {
                self.report_logging_off();
                session_states(&self.logind, self.sessions.as_ref()).to_vec()
            }
        };
        let states: Readings = d.conditions().iter().copied().zip(values).collect();
        let last = &mut self.reported[d as usize];
        if last.as_ref() == Some(&states) {
            return; // a property we do not read changed
        }
        *last = Some(states.clone());
        (self.sink)(Heard::Report {
            source: d.source(),
            states,
            fires: Vec::new(),
            initial,
        });
    }

    /// Tells the broker when our user logs off: their last session that was not closing closes
    /// or is removed (not when logind leaves the bus: then nothing is known).
    fn report_logging_off(&mut self) {
        let now = logged_in(self.sessions.as_ref());
        let before = std::mem::replace(&mut self.logged_in, now);
        if before == Some(true) && now == Some(false) {
            (self.sink)(Heard::LoggingOff);
        }
    }

    /// Tells the broker when the energy saver goes on or off: power-profiles-daemon's profile,
    /// read under its newer name while that has an owner, else under the old one; off while
    /// neither runs.
    fn report_energy_saver(&mut self) {
        let on = if self.owners[Daemon::Profiles as usize].is_some() {
            saving_energy(&self.profiles)
        } else if self.owners[Daemon::HadessProfiles as usize].is_some() {
            saving_energy(&self.hadess_profiles)
        } else {
            false
        };
        if std::mem::replace(&mut self.energy_saver, on) != on {
            (self.sink)(Heard::EnergySaver(on));
        }
    }

    async fn on_message(&mut self, msg: &Message) {
        if msg.message_type() != Type::Signal {
            return; // the replies to our AddMatch calls
        }
        let header = msg.header();
        let (Some(sender), Some(path), Some(interface), Some(member)) = (
            header.sender().map(|s| s.as_str()),
            header.path().map(|p| p.as_str()),
            header.interface().map(|i| i.as_str()),
            header.member().map(|m| m.as_str()),
        ) else {
            return;
        };
        if sender == DBUS && interface == DBUS && member == "NameOwnerChanged" {
            let Ok((name, _old, new)) = msg.body().deserialize::<(String, String, String)>() else {
                return;
            };
            let Some(d) = Daemon::ALL.into_iter().find(|d| d.name() == name) else {
                return;
            };
            if new.is_empty() {
                self.absent(d, "it left the system bus");
                self.lost(d);
            } else if self.owners[d as usize].as_deref() != Some(&new) {
                // Came, or replaced without a gap: read afresh (reported if anything changed).
                self.appeared(d, new, false).await;
            }
            return;
        }
        let Some(d) = Daemon::ALL
            .into_iter()
            .find(|d| self.owners[*d as usize].as_deref() == Some(sender))
        else {
            return; // from no daemon we follow (a previous owner's late signal, say)
        };
        match (d, interface, member) {
            (_, PROPERTIES, "PropertiesChanged") => {
                type Changed = (String, Props, Vec<String>);
                match msg.body().deserialize::<Changed>() {
                    Ok((iface, changed, invalidated)) => {
                        self.properties_changed(d, path, &iface, changed, invalidated)
                            .await;
                    }
                    Err(e) => {
                        log::debug!(target: "btb", "bad PropertiesChanged from {sender}: {e}")
                    }
                }
            }
            (Daemon::Logind, LOGIND_MANAGER, "SessionNew") => {
                let Ok((_, session)) = msg.body().deserialize::<(String, OwnedObjectPath)>() else {
                    return;
                };
                let props = self.get_all(sender, session.as_str(), LOGIND_SESSION).await;
                let uid = get::<(u32, OwnedObjectPath)>(&props, "User").ok().flatten();
                if let (Some((uid, _)), Some(sessions)) = (uid, self.sessions.as_mut())
                    && uid == self.uid
                {
                    sessions.insert(session.as_str().to_owned(), props);
                    self.report(d, false);
                }
            }
            (Daemon::Logind, LOGIND_MANAGER, "SessionRemoved") => {
                if let Ok((_, session)) = msg.body().deserialize::<(String, OwnedObjectPath)>()
                    && let Some(sessions) = self.sessions.as_mut()
                    && sessions.remove(session.as_str()).is_some()
                {
                    self.report(d, false);
                }
            }
            (Daemon::Logind, LOGIND_MANAGER, "PrepareForSleep") => {
                // true before suspending, false after resuming.
                if let Ok(false) = msg.body().deserialize::<bool>() {
                    (self.sink)(Heard::Resumed);
                }
            }
            (Daemon::Logind, LOGIND_MANAGER, "PrepareForShutdown") => {
                // true before shutting down (or rebooting): every session is about to end.
                if let Ok(true) = msg.body().deserialize::<bool>() {
                    (self.sink)(Heard::LoggingOff);
                }
            }
            _ => {}
        }
    }

    /// Applies a `PropertiesChanged` of one of the objects we read; a property that was only
    /// invalidated (no value sent) makes us read that object again.
    async fn properties_changed(
        &mut self,
        d: Daemon,
        path: &str,
        interface: &str,
        changed: Props,
        invalidated: Vec<String>,
    ) {
        let owner = self.owners[d as usize].clone().unwrap_or_default();
        let object: Option<&mut Props> = match (d, interface) {
            (Daemon::NetworkManager, NM) if path == NM_PATH => Some(&mut self.nm),
            (Daemon::UPower, UPOWER) if path == UPOWER_PATH => Some(&mut self.upower),
            (Daemon::UPower, UPOWER_DEVICE) => self
                .display
                .as_mut()
                .filter(|(p, _)| p == path)
                .map(|(_, props)| props),
            (Daemon::Logind, LOGIND_MANAGER) if path == LOGIND_PATH => Some(&mut self.logind),
            (Daemon::Logind, LOGIND_SESSION) => {
                self.sessions.as_mut().and_then(|s| s.get_mut(path))
            }
            (Daemon::Profiles, PROFILES) if path == PROFILES_PATH => Some(&mut self.profiles),
            (Daemon::HadessProfiles, HADESS_PROFILES) if path == HADESS_PROFILES_PATH => {
                Some(&mut self.hadess_profiles)
            }
            _ => None,
        };
        let Some(object) = object else {
            return;
        };
        object.extend(changed);
        if !invalidated.is_empty() {
            let fresh = self.get_all(&owner, path, interface).await;
            // Looked up again: the await above let go of the borrow.
            let object = match (d, interface) {
                (Daemon::NetworkManager, _) => Some(&mut self.nm),
                (Daemon::UPower, UPOWER) => Some(&mut self.upower),
                (Daemon::UPower, _) => self.display.as_mut().map(|(_, p)| p),
                (Daemon::Logind, LOGIND_MANAGER) => Some(&mut self.logind),
                (Daemon::Logind, _) => self.sessions.as_mut().and_then(|s| s.get_mut(path)),
                (Daemon::Profiles, _) => Some(&mut self.profiles),
                (Daemon::HadessProfiles, _) => Some(&mut self.hadess_profiles),
            };
            if let Some(object) = object {
                *object = fresh;
            }
        }
        self.report(d, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    /// The names of this process's threads.
    fn threads() -> Vec<String> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .map(|n| n.trim().to_owned())
            .collect()
    }

    /// The threads named `names` that are left once the kernel has reaped what ended: a joined
    /// thread can stay listed in /proc for a moment after `join` returns (its tid is cleared
    /// before the task is released), so this looks again, up to a deadline, before it answers.
    fn left_behind(names: &[&str]) -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let left: Vec<String> = threads()
                .into_iter()
                .filter(|t| names.contains(&t.as_str()))
                .collect();
            if left.is_empty() || std::time::Instant::now() >= deadline {
                return left;
            }
            std::thread::yield_now();
        }
    }

    /// No other test of this binary starts a bus, so the threads named here are this test's.
    #[test]
    fn a_bus_stops_without_leaving_a_thread_behind() {
        let dir = tempfile::tempdir().unwrap();
        let daemon = std::process::Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .arg(format!("--address=unix:path={}/sock", dir.path().display()))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn();
        let Ok(mut daemon) = daemon else {
            eprintln!("SKIPPED: a_bus_stops_without_leaving_a_thread_behind (no dbus-daemon)");
            return;
        };
        let mut address = String::new();
        std::io::BufReader::new(daemon.stdout.take().unwrap())
            .read_line(&mut address)
            .unwrap();
        let notes = Arc::new(Mutex::new(Vec::new()));
        let sink: Sink = {
            let notes = Arc::clone(&notes);
            Arc::new(move |n| notes.lock().unwrap().push(n))
        };
        let options = PlatformOptions {
            system_bus: Some(address.trim().to_owned()),
            ..PlatformOptions::default()
        };
        let bus = Bus::start(&options, sink).unwrap();
        assert!(threads().iter().any(|t| t == "btb-dbus"));
        // From this thread, as a worker would: no logind on this bus.
        let inhibitor = bus.inhibitor().expect("a calls connection");
        assert!(inhibitor.inhibit_sleep("test", "a test").is_none());
        drop(inhibitor);
        assert!(
            !threads().iter().any(|t| t == "zruntime"),
            "a call from another thread needs no zbus thread"
        );
        drop(bus);
        let left = left_behind(&["btb-dbus", "btb-dbus-timer", "zruntime"]);
        assert!(left.is_empty(), "threads left behind: {left:?}");
        assert!(
            notes.lock().unwrap().is_empty(),
            "no daemon on the bus: nothing to report"
        );
        let _ = daemon.kill();
        let _ = daemon.wait();

        // No bus at that address: an error (the caller logs it), and no thread.
        let options = PlatformOptions {
            system_bus: Some(format!("unix:path={}/sock", dir.path().display())),
            ..PlatformOptions::default()
        };
        assert!(Bus::start(&options, Arc::new(|_| {})).is_err());
        assert_eq!(left_behind(&["btb-dbus"]), Vec::<String>::new());
    }

    fn props(values: &[(&str, Variant<'static>)]) -> Props {
        values
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.try_to_owned().unwrap()))
            .collect()
    }

    #[test]
    fn waits_at_most_its_timeout() {
        assert_eq!(wait_at_most(Duration::from_secs(5), async { 7 }), Some(7));
        let started = std::time::Instant::now();
        let never = std::future::pending::<()>();
        assert_eq!(wait_at_most(Duration::from_millis(20), never), None);
        assert!(started.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn network_manager_readings() {
        let nm = |state: u32, connectivity: u32| {
            vec![
                ("State", Variant::from(state)),
                ("Connectivity", Variant::from(connectivity)),
            ]
        };
        let states = |values: &[(&str, Variant<'static>)]| network_states(&props(values));
        assert_eq!(
            states(&nm(70, 4)),
            [Some(true), Some(false)],
            "no Metered: not free"
        );
        assert_eq!(
            states(&nm(70, 0)),
            [Some(true), Some(false)],
            "check off: trust State"
        );
        assert_eq!(states(&nm(70, 1)), [Some(false), Some(false)]);
        assert_eq!(states(&nm(70, 2)), [Some(false), Some(false)], "portal");
        assert_eq!(states(&nm(60, 4)), [Some(false), Some(false)], "site only");
        let mut metered = nm(70, 4);
        metered.push(("Metered", Variant::from(2u32)));
        assert_eq!(states(&metered), [Some(true), Some(true)]);
        metered[2].1 = Variant::from(4u32);
        assert_eq!(states(&metered), [Some(true), Some(true)], "GUESS_NO");
        for not_free in [0u32, 1, 3] {
            metered[2].1 = Variant::from(not_free);
            assert_eq!(states(&metered), [Some(true), Some(false)], "{not_free}");
        }
        metered[2].1 = Variant::from("no");
        assert_eq!(states(&metered), [Some(true), None], "a malformed Metered");
        assert_eq!(
            states(&[("State", Variant::from("up"))]),
            [None, None],
            "a malformed State"
        );
        assert_eq!(states(&[]), [None, None], "nothing read");
    }

    #[test]
    fn upower_readings() {
        let upower = props(&[("OnBattery", Variant::from(true))]);
        let device = |present: bool, level: u32| {
            props(&[
                ("IsPresent", Variant::from(present)),
                ("WarningLevel", Variant::from(level)),
            ])
        };
        assert_eq!(power_states(&upower, None), [Some(false), None]);
        assert_eq!(
            power_states(&upower, Some(&device(false, 4))),
            [Some(false), Some(true)],
            "no battery is never low"
        );
        assert_eq!(
            power_states(&upower, Some(&device(true, 1))),
            [Some(false), Some(true)]
        );
        assert_eq!(
            power_states(&upower, Some(&device(true, 3))),
            [Some(false), Some(false)],
            "Low"
        );
        assert_eq!(
            power_states(&props(&[("OnBattery", Variant::from(1u32))]), None),
            [None, None],
            "a malformed OnBattery"
        );
    }

    #[test]
    fn logind_readings() {
        let session = |active: bool, idle: bool, locked: bool| {
            props(&[
                ("Active", Variant::from(active)),
                ("IdleHint", Variant::from(idle)),
                ("LockedHint", Variant::from(locked)),
                (
                    "State",
                    Variant::from(if active { "active" } else { "online" }),
                ),
            ])
        };
        let manager = props(&[("IdleHint", Variant::from(false))]);
        let of = |list: Vec<Props>| {
            list.into_iter()
                .enumerate()
                .map(|(i, p)| (format!("/s/{i}"), p))
                .collect::<HashMap<_, _>>()
        };
        assert_eq!(session_states(&manager, None), [None, None, Some(false)]);
        assert_eq!(
            session_states(&manager, Some(&of(vec![]))),
            [Some(false), Some(false), Some(false)],
            "no session"
        );
        assert_eq!(
            session_states(&manager, Some(&of(vec![session(true, false, false)]))),
            [Some(true), Some(true), Some(false)]
        );
        assert_eq!(
            session_states(
                &manager,
                Some(&of(vec![
                    session(true, true, false),
                    session(false, false, false)
                ]))
            ),
            [Some(true), Some(false), Some(false)],
            "idle, and a background session"
        );
        assert_eq!(
            session_states(&manager, Some(&of(vec![session(true, false, true)])))[1],
            Some(false),
            "locked"
        );
        let closing = props(&[("State", Variant::from("closing"))]);
        assert_eq!(
            session_states(&manager, Some(&of(vec![closing])))[0],
            Some(false)
        );
        let bad = props(&[("Active", Variant::from("yes"))]);
        assert_eq!(
            session_states(&manager, Some(&of(vec![bad])))[..2],
            [None, None],
            "a malformed session"
        );
    }
}
