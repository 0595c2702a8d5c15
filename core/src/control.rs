//! The control socket (SPEC §10): how other processes of the same user reach a running broker —
//! `btbctl`, `signal_event`, and (later) client processes of the app.
//!
//! A running broker listens on a Unix stream socket, `$XDG_RUNTIME_DIR/btb/<app_id>.sock`. The
//! protocol is frames of `protocol.rs` (4-byte length, JSON, bounded): the client's first frame is
//! [`Request::Hello`] with the range of protocol versions it speaks, answered by [`Reply::Hello`]
//! with the version both speak (or an error naming both ranges, and the connection is closed);
//! then any number of requests, one reply each. A request of a type this build does not know is
//! answered `UNSUPPORTED`, one it cannot read `INVALID_ARGUMENT`; the connection stays up.
//!
//! One thread serves every connection with `poll`: a slow, silent or half-closed peer holds only
//! its own connection, which is closed after [`IDLE_TIMEOUT`] without a complete request. No
//! timer runs while no connection is open.
//!
//! Security: the directory is `0700` and must be ours, the socket `0600`; on top of that the broker
//! checks each peer's uid (`SO_PEERCRED`) and answers "not your broker" to anyone else, and the
//! client checks that the socket is served by its own uid before it sends anything.
//!
//! One listener per app: `bind` takes an exclusive lock on `<app_id>.sock.lock` beside the socket
//! for the listener's lifetime, so two brokers starting at once cannot both remove and rebind the
//! socket. The lock file stays after `Drop` (removing a lock file races with its next taker).

use std::fs::{self, DirBuilder};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, poll};
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType, sockopt};
use serde::{Deserialize, Serialize};

use crate::model::{
    ApplicationTriggerResult, BackgroundWorkCostValue, Builder, RunRecord, SystemConditionType,
    SystemTriggerType, TaskGroup, TaskRecord,
};
use crate::protocol::{self, Decoder};
use crate::{Completion, Error, ErrorKind, Result};
use uuid::Uuid;

/// The longest event name, in bytes (as a custom event trigger id).
pub const MAX_NAME: usize = 256;
/// How long the broker waits for a connection's next complete request before closing it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client waits for a reply.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client process has to start a run handed to it (its hello, or its attach) before
/// the broker gives the run to another client that offers to run it (if there is one).
pub const START_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections served at once; more are answered "busy" and closed.
pub const MAX_CONNECTIONS: usize = 4096;
/// Replies queued for a peer that does not read: past this, the connection is dropped.
const MAX_QUEUED: usize = 2 * protocol::MAX_REPLY;

/// `sockaddr_un.sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Reply to a peer of another uid.
const NOT_YOUR_BROKER: &str = "not your broker";

/// `$XDG_RUNTIME_DIR/btb/<app_id>.sock`. Without XDG_RUNTIME_DIR: `/run/user/<uid>/btb/` when
/// that runtime directory exists and is ours, else `$XDG_STATE_HOME/btb/run/` (by default
/// `~/.local/state/btb/run/`) — places no other user can create first, never a guessable name in
/// a shared directory such as `/tmp` (SPEC §10).
///
/// An empty or relative `XDG_RUNTIME_DIR` counts as unset (the XDG base directory spec requires an
/// absolute path). The app id must be a reverse-DNS name (as the manifest requires) and the whole
/// path must fit a Unix socket address (107 bytes).
pub fn socket_path(app_id: &str) -> Result<PathBuf> {
    check_app_id(app_id)?;
    let path = socket_dir()?.0.join(format!("{app_id}.sock"));
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(Error::invalid(format!(
            "control socket path {} for app {app_id:?} is {len} bytes long; a Unix socket path holds at most {MAX_SOCKET_PATH} bytes (use a shorter XDG_RUNTIME_DIR)",
            path.display()
        )));
    }
    Ok(path)
}

/// The directory holding the sockets (not created here), and whether its parents may be created
/// with it (in the state directory, which a fresh account may not have yet).
fn socket_dir() -> Result<(PathBuf, bool)> {
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|dir| dir.is_absolute())
    };
    if let Some(dir) = absolute("XDG_RUNTIME_DIR") {
        return Ok((dir.join("btb"), false));
    }
    // logind's runtime directory, when this user has one: made by root for us alone.
    let run_user = PathBuf::from(format!("/run/user/{}", our_uid()));
    if fs::symlink_metadata(&run_user).is_ok_and(|m| m.is_dir() && m.uid() == our_uid()) {
        return Ok((run_user.join("btb"), false));
    }
    let state = match absolute("XDG_STATE_HOME") {
        Some(dir) => dir,
        None => match absolute("HOME") {
            Some(home) => home.join(".local/state"),
            None => {
                return Err(Error::state(
                    "no place for the control socket: none of XDG_RUNTIME_DIR, /run/user/<uid>, XDG_STATE_HOME or HOME is there",
                ));
            }
        },
    };
    Ok((state.join("btb").join("run"), true))
}

fn our_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

use crate::manifest::check_app_id;

/// Event names: 1–256 bytes of UTF-8 without control characters (so one fits one line).
pub(crate) fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("event name is empty".to_owned());
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "event name is {} bytes long; the limit is {MAX_NAME} bytes",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("event name {name:?} contains a control character"));
    }
    Ok(())
}

/// Creates the socket directory `0700` if missing; refuses one that is not a real directory, not
/// ours, or accessible to group or others.
fn ensure_private_dir(dir: &Path) -> Result<()> {
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {
            // The umask may have taken bits away; make it exactly 0700.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::state(format!("cannot chmod 0700 {}: {e}", dir.display())))?;
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Error::state(format!(
                "cannot create the control socket directory {}: its parent does not exist (is XDG_RUNTIME_DIR set to a real directory?)",
                dir.display()
            )));
        }
        Err(e) => {
            return Err(Error::state(format!(
                "cannot create the control socket directory {}: {e}",
                dir.display()
            )));
        }
    }
    let meta = fs::symlink_metadata(dir)
        .map_err(|e| Error::state(format!("cannot inspect {}: {e}", dir.display())))?;
    if !meta.file_type().is_dir() {
        return Err(Error::new(
            ErrorKind::Policy,
            format!(
                "control socket directory {} is not a directory (a symlink or a file): refusing it",
                dir.display()
            ),
        ));
    }
    let uid = our_uid();
    if meta.uid() != uid {
        return Err(Error::new(
            ErrorKind::Policy,
            format!(
                "control socket directory {} belongs to uid {}, not to us (uid {uid}): refusing it",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(Error::new(
            ErrorKind::Policy,
            format!(
                "control socket directory {} has mode {mode:04o}; it must not be accessible to group or others (chmod 0700 it): refusing it",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Connects with a bound wait: a Unix `connect` blocks while the listener's backlog is full, for at
/// most the socket's send timeout.
fn connect_with_timeout(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let fd: OwnedFd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    sockopt::set_socket_timeout(&fd, sockopt::Timeout::Send, Some(timeout))?;
    let addr = SocketAddrUnix::new(path)?;
    rustix::net::connect(&fd, &addr)?;
    Ok(UnixStream::from(fd))
}

/// Whether the process that listens at the other end of `stream` is exiting: it ends within
/// [`EXIT_WAIT`] (waited for through a pidfd, not by polling).
fn exiting(stream: &UnixStream) -> bool {
    let Ok(cred) = sockopt::socket_peercred(stream) else {
        return false;
    };
    match rustix::process::pidfd_open(cred.pid, rustix::process::PidfdFlags::empty()) {
        Ok(pidfd) => {
            let mut fds = [rustix::event::PollFd::new(
                &pidfd,
                rustix::event::PollFlags::IN,
            )];
            let timeout = rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: EXIT_WAIT.as_nanos() as i64,
            };
            matches!(rustix::event::poll(&mut fds, Some(&timeout)), Ok(n) if n > 0)
        }
        Err(e) => e == rustix::io::Errno::SRCH,
    }
}

/// How long a broker that binds the control socket waits for the previous one to finish dying.
const EXIT_WAIT: Duration = Duration::from_millis(500);

/// The uid of the process at the other end of a connected Unix socket.
fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    Ok(sockopt::socket_peercred(stream)?.uid.as_raw())
}

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// The first frame of a connection: the versions the client speaks (`min_version`..=
    /// `version`). `keep_alive`: the connection of a client process, which it keeps open between
    /// requests (it has no idle deadline).
    Hello {
        version: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_version: Option<u32>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        keep_alive: bool,
    },
    /// Fire this system's custom-event triggers named `name`.
    Signal {
        name: String,
    },
    List,
    /// TASK is a name or a task id.
    Show {
        task: String,
    },
    History {
        task: String,
    },
    /// Fire the task as if its trigger fired; `ignore_conditions` runs it even if they do not hold.
    /// `details`: the trigger details the run sees (as an application trigger's arguments).
    /// `keep`: a one-shot is not spent by this run (it runs even if spent already).
    Run {
        task: String,
        ignore_conditions: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        details: Option<serde_json::Value>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        keep: bool,
    },
    /// `cancel_task` (default true, as `btbctl unregister`): cancel a running instance with `ABORT`.
    Unregister {
        task: String,
        #[serde(default = "yes")]
        cancel_task: bool,
    },
    Doctor,
    // Client mode (SPEC §10): what a client process of the app asks its broker.
    /// Validate and register a builder. `activation`: the client has a background-activated
    /// handler for the builder's group (or the system's), which validation asks about.
    Register {
        builder: Builder,
        activation: bool,
    },
    Registrations {
        filter: Filter,
    },
    Groups,
    /// The full run records of a task, oldest first.
    RunHistory {
        task_id: Uuid,
    },
    /// Fire application trigger `trigger_id` with optional arguments (a JSON object).
    Request {
        trigger_id: Uuid,
        arguments: Option<serde_json::Value>,
    },
    Raise {
        event: SystemTriggerType,
    },
    /// Set a state of a simulated source.
    SetState {
        condition: SystemConditionType,
        value: bool,
    },
    StateOf {
        condition: SystemConditionType,
    },
    WorkCost,
    /// When a task is next due, and whether its one-shot trigger is spent.
    Due {
        task_id: Uuid,
    },
    /// Turn this connection into a feed of [`Reply::Progress`] and [`Reply::Completed`] notices
    /// and of [`Reply::Run`]s handed to this client (answered `Done` first). It has no idle
    /// deadline; from then on the client sends only [`Request::Offer`]s on it.
    Subscribe,
    /// On a feed, unanswered: the entry points and activation handlers this client process can
    /// run (each offer replaces the last). The broker hands it runs it cannot run itself.
    Offer {
        offer: Offer,
    },
    /// Unanswered: this connection of a client process waits for a run handed to it; the
    /// broker starts one on it with `ToHost::Run` (the instance protocol from then on).
    Ready,
    /// Attach this connection to a run handed to this client ([`Reply::Run`]). Unanswered: what
    /// follows it (from the client's hello on) is the instance protocol (`protocol.rs`) of that
    /// run, spoken with the broker's worker that supervises it.
    Attach {
        instance_id: Uuid,
    },
    /// Version 2: how many runs a process with this offer is still to serve — runs that wait for
    /// a handler it offers, and runs of such tasks going now (`System::serve_activation`).
    Waiting {
        offer: Offer,
    },
    /// Version 2 (`btbctl uninstall`): cancel every run with `UNINSTALL`, unregister every task,
    /// remove the store and the control socket ([`Reply::Uninstalled`]).
    Uninstall,
    /// A request of a newer version: answered `UNSUPPORTED`.
    #[serde(other)]
    Unknown,
}

/// What a client process can run ([`Request::Offer`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// Entry points with a registered handler.
    pub entry_points: Vec<String>,
    /// Background-activated handlers: `None` the system's, `Some(id)` a group's.
    pub activation: Vec<Option<String>>,
    /// It resolves other entry points itself (Python imports `package.module:function`).
    pub resolver: bool,
    /// It says hello on a ready connection before it runs what the broker starts there
    /// (`ToHost::Run`), and runs it only once welcomed: the broker may then take back a run the
    /// client does not start in time ([`START_TIMEOUT`]) and give it to another client.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub starts: bool,
}

impl Offer {
    /// Whether this offer covers a task with this entry point (or none) and group, and how
    /// well: 2 a handler by name, 1 only through a resolver, 0 not at all.
    pub fn covers(&self, entry_point: Option<&str>, group: Option<&str>) -> u8 {
        match entry_point {
            Some(ep) if self.entry_points.iter().any(|e| e == ep) => 2,
            Some(_) => u8::from(self.resolver),
            None => {
                let group = group.map(str::to_owned);
                if group.is_some() && self.activation.contains(&group)
                    || self.activation.contains(&None)
                {
                    2
                } else {
                    0
                }
            }
        }
    }
}

impl Request {
    /// Whether the request only reads: asking again after a broker went away mid-call is safe.
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            Request::List
                | Request::Show { .. }
                | Request::History { .. }
                | Request::Doctor
                | Request::Registrations { .. }
                | Request::Groups
                | Request::RunHistory { .. }
                | Request::StateOf { .. }
                | Request::WorkCost
                | Request::Due { .. }
                | Request::Waiting { .. }
        )
    }
}

fn yes() -> bool {
    true
}

/// Which registrations [`Request::Registrations`] lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Filter {
    /// Outside any task group (`all_tasks`).
    Ungrouped,
    Group {
        id: String,
    },
    Task {
        task_id: Uuid,
    },
}

/// The broker's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// `version`: the one both sides speak (the highest in both ranges).
    Hello {
        version: u32,
        pid: u32,
        app_id: String,
        /// The canonical path of the store the broker holds (`None`: a listener without one).
        #[serde(default)]
        store: Option<String>,
    },
    Done,
    /// How many registrations a signal fired.
    Fired {
        count: usize,
    },
    Tasks {
        tasks: Vec<crate::view::TaskView>,
    },
    Task {
        task: Box<crate::view::TaskView>,
    },
    Runs {
        runs: Vec<crate::view::RunView>,
    },
    Doctor {
        states: std::collections::BTreeMap<String, crate::view::StateView>,
        broker: Option<u32>,
        /// Why the broker's store cannot be written now (runs are held, SPEC §11), if so.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        store_error: Option<String>,
    },
    Registered {
        record: TaskRecord,
    },
    Registrations {
        records: Vec<TaskRecord>,
    },
    Groups {
        groups: Vec<TaskGroup>,
    },
    History {
        runs: Vec<RunRecord>,
    },
    Requested {
        result: ApplicationTriggerResult,
    },
    StateOf {
        state: Option<bool>,
        source: String,
    },
    WorkCost {
        cost: Option<BackgroundWorkCostValue>,
    },
    Due {
        next_due_ms: Option<i64>,
        spent: bool,
    },
    /// How many runs are left for a process with that offer ([`Request::Waiting`]).
    Waiting {
        runs: usize,
    },
    /// Pushed to subscribers: an instance of `task_id` reported progress.
    Progress {
        task_id: Uuid,
        instance_id: Uuid,
        value: u32,
    },
    /// Pushed to subscribers: an instance of `task_id` ended.
    Completed {
        task_id: Uuid,
        completion: Completion,
    },
    /// Pushed to one subscriber: run this instance here (attach a connection for it with
    /// [`Request::Attach`]).
    Run {
        run: Box<protocol::HandedRun>,
    },
    /// Version 2: [`Request::Uninstall`] is done; `tasks` were registered.
    Uninstalled {
        tasks: usize,
    },
    /// `kind`: an `ErrorKind` name (`NOT_FOUND`, …).
    Error {
        kind: String,
        message: String,
    },
    /// A reply or notice of a newer version (a notice is ignored; a reply is unexpected).
    #[serde(other)]
    Unknown,
}

impl Reply {
    pub fn error(e: &Error) -> Reply {
        Reply::Error {
            kind: e.kind().name().to_owned(),
            message: e.message().to_owned(),
        }
    }
}

/// Serves one request (called on the listener's thread; a panic is answered as `INTERNAL`).
pub type Handler = Arc<dyn Fn(Request) -> Reply + Send + Sync>;

/// Notices for subscribed connections ([`Request::Subscribe`]), sent from any thread; what the
/// subscribed clients offer to run; and the runs waiting for a client to attach.
pub struct Broadcast {
    /// Frames for every subscriber (`None`) or for one connection.
    queue: std::sync::Mutex<Vec<(Option<u64>, Vec<u8>)>>,
    /// Wakes the serving thread to hand the queue out.
    wake: OwnedFd,
    subscribers: std::sync::atomic::AtomicUsize,
    /// By connection: the client's pid and offer.
    offers: std::sync::Mutex<std::collections::HashMap<u64, (u32, Offer)>>,
    /// Runs handed to a client, waiting for its connection.
    /// (By the connection it was handed to: dropping the sender tells the waiting worker that
    /// the client went away.)
    attaching: std::sync::Mutex<std::collections::HashMap<Uuid, (u64, Attached)>>,
    /// By client pid: connections waiting for a run ([`Request::Ready`]).
    ready: std::sync::Mutex<std::collections::HashMap<u32, Vec<(UnixStream, Decoder)>>>,
    /// Called (on the serving thread, no lock held) when a client offers what it can run: runs
    /// that wait for a handler are tried again.
    on_offer: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// By client pid: how it took the runs handed to it (which client the next run goes to).
    health: std::sync::Mutex<std::collections::HashMap<u32, Health>>,
    /// Counts runs handed to clients (round robin: the client handed one least recently first).
    hands: std::sync::atomic::AtomicU64,
}

/// How a client process took the runs handed to it.
#[derive(Default, Clone, Copy)]
struct Health {
    /// When it was last handed a run (a value of `Broadcast::hands`).
    last_hand: u64,
    /// Runs handed to it that it has not started yet.
    unstarted: usize,
    /// It let a start deadline pass and has shown no sign of life since (a new ready connection,
    /// an offer, a run started).
    stalled: bool,
}

/// How a run handed to a client ended its start ([`Broadcast::settle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The client started it (its hello or attach came).
    Started,
    /// The client let the start deadline pass: the run was taken back.
    Missed,
    /// The run ended otherwise before it started (abandoned, or the client went away).
    Dropped,
}

/// The client [`Broadcast::pick`] chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Picked {
    /// Its feed connection.
    pub conn: u64,
    pub pid: u32,
    /// It says hello before it runs a run started on a ready connection ([`Offer::starts`]).
    pub starts: bool,
    /// It let a start deadline pass and showed no sign of life since.
    pub stalled: bool,
}

/// Where a client's connection for a run goes: the connection and the bytes it sent after its
/// `Attach` request (the start of the instance protocol).
pub type Attached = std::sync::mpsc::Sender<(UnixStream, Decoder)>;

fn locked<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Broadcast {
    /// Sets what is called when a client offers what it can run (once).
    pub fn set_on_offer(&self, f: Box<dyn Fn() + Send + Sync>) {
        let _ = self.on_offer.set(f);
    }

    /// Queues `notice` for every subscriber (nothing, and no wake-up, while there is none).
    pub fn send(&self, notice: &Reply) {
        if self.subscribers.load(std::sync::atomic::Ordering::Acquire) == 0 {
            return;
        }
        locked(&self.queue).push((None, protocol::encode(notice)));
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }

    /// The subscribed client that can run a task best, at least as well as `fit` (see
    /// [`Offer::covers`]), leaving out the processes in `besides`: among those that fit best,
    /// one that has not let a start deadline pass, then one with the fewest runs handed to it
    /// and not started, then the one handed a run least recently (round robin), then the
    /// longest-connected. Its connection, pid and whether it starts runs ([`Offer::starts`]);
    /// also how many clients there are.
    pub fn pick(
        &self,
        entry_point: Option<&str>,
        group: Option<&str>,
        fit: u8,
        besides: &[u32],
    ) -> (Option<Picked>, usize) {
        let offers = locked(&self.offers);
        let health = locked(&self.health);
        let best = offers
            .iter()
            .filter(|(_, (pid, _))| !besides.contains(pid))
            .map(|(conn, (pid, offer))| {
                let h = health.get(pid).copied().unwrap_or_default();
                (
                    (
                        offer.covers(entry_point, group),
                        !h.stalled,
                        std::cmp::Reverse(h.unstarted),
                        std::cmp::Reverse(h.last_hand),
                        std::cmp::Reverse(*conn),
                    ),
                    Picked {
                        conn: *conn,
                        pid: *pid,
                        starts: offer.starts,
                        stalled: h.stalled,
                    },
                )
            })
            .filter(|(rank, _)| rank.0 >= fit.max(1))
            .max_by_key(|(rank, _)| *rank)
            .map(|(_, picked)| picked);
        (best, offers.len())
    }

    /// A run is being handed to client process `pid` (settle it with [`Broadcast::settle`]).
    pub fn handing(&self, pid: u32) {
        let hand = self.hands.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
        let mut health = locked(&self.health);
        let h = health.entry(pid).or_default();
        h.last_hand = hand;
        h.unstarted += 1;
    }

    /// How a run handed to client process `pid` ended its start.
    pub fn settle(&self, pid: u32, start: Start) {
        let mut health = locked(&self.health);
        if let Some(h) = health.get_mut(&pid) {
            h.unstarted = h.unstarted.saturating_sub(1);
            match start {
                Start::Started => h.stalled = false,
                Start::Missed => h.stalled = true,
                Start::Dropped => {}
            }
        }
    }

    /// Client process `pid` showed a sign of life (a new ready connection, an offer).
    fn alive(&self, pid: u32) {
        if let Some(h) = locked(&self.health).get_mut(&pid) {
            h.stalled = false;
        }
    }

    /// Hands a run to the client on connection `conn`; the connection it attaches for the run
    /// arrives on the returned channel, which is disconnected if that client goes away first.
    pub fn hand_run(
        &self,
        conn: u64,
        instance_id: Uuid,
        run: &Reply,
    ) -> std::sync::mpsc::Receiver<(UnixStream, Decoder)> {
        let (tx, rx) = std::sync::mpsc::channel();
        locked(&self.attaching).insert(instance_id, (conn, tx));
        locked(&self.queue).push((Some(conn), protocol::encode(run)));
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
        rx
    }

    /// A connection that client process `pid` keeps ready for a run, if it has one.
    pub fn take_ready(&self, pid: u32) -> Option<(UnixStream, Decoder)> {
        locked(&self.ready).get_mut(&pid)?.pop()
    }

    /// Takes back a ready connection whose run finished, for the next run — if its client
    /// process still offers anything (else it is dropped: the client sees the end).
    pub fn give_back_ready(&self, pid: u32, stream: UnixStream, decoder: Decoder) {
        let offers = locked(&self.offers);
        if offers.values().any(|(p, _)| *p == pid) {
            locked(&self.ready)
                .entry(pid)
                .or_default()
                .push((stream, decoder));
        }
    }

    /// Forgets a run no client attached to.
    pub fn cancel_hand(&self, instance_id: &Uuid) {
        locked(&self.attaching).remove(instance_id);
    }

    /// Whether any connection subscribed.
    pub fn has_subscribers(&self) -> bool {
        self.subscribers.load(std::sync::atomic::Ordering::Acquire) > 0
    }
}

/// Listens on one app's control socket and serves it on one thread until dropped.
///
/// The handler runs on the listener's thread, one request at a time: keep it short (hand work to
/// the broker and return). It must not drop the listener.
pub struct ControlListener {
    path: PathBuf,
    app_id: String,
    /// Wakes the serving thread to stop.
    stop: Arc<OwnedFd>,
    broadcast: Arc<Broadcast>,
    thread: Option<JoinHandle<()>>,
    /// Device and inode of the socket file we bound, so `Drop` removes only our own file.
    socket_id: (u64, u64),
    /// Holds the exclusive `flock` on `<app_id>.sock.lock`; released (closed) last in `Drop`.
    _lock: crate::lockfile::FileLock,
}

impl std::fmt::Debug for ControlListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlListener")
            .field("app_id", &self.app_id)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ControlListener {
    /// Binds `socket_path(app_id)` and starts the listener thread.
    ///
    /// Errors: a bad app id → `InvalidArgument`; a socket directory that is not ours or is
    /// group/other-accessible → `Policy`; another live broker for the app → `State`; any other
    /// failure to create, lock or bind → `State`, naming the path.
    pub fn bind(app_id: &str, handler: Handler) -> Result<ControlListener> {
        Self::bind_for_store(app_id, None, handler)
    }

    /// As [`ControlListener::bind`], for the broker of a store: its hello names `store` (a
    /// canonical path), so that a client checks it reached the broker of its own store.
    pub fn bind_for_store(
        app_id: &str,
        store: Option<String>,
        handler: Handler,
    ) -> Result<ControlListener> {
        let path = socket_path(app_id)?;
        let dir = path.parent().expect("a socket path always has a directory");
        if socket_dir()?.1
            && let Some(parent) = dir.parent()
        {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| Error::state(format!("cannot create {}: {e}", parent.display())))?;
        }
        ensure_private_dir(dir)?;

        let already = || {
            Error::state(format!(
                "another btb broker for app {app_id:?} is already listening on {}",
                path.display()
            ))
        };

        let mut lock_path = path.clone().into_os_string();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let lock = match crate::lockfile::FileLock::open(&lock_path) {
            Ok(lock) => lock,
            Err(e @ crate::lockfile::LockError::Held { .. }) => {
                return Err(Error::state(format!(
                    "another btb broker{} for app {app_id:?} is already listening on {}",
                    e.holder(),
                    path.display()
                )));
            }
            Err(crate::lockfile::LockError::Io(e)) => {
                return Err(Error::state(format!(
                    "cannot lock {}: {e}",
                    lock_path.display()
                )));
            }
        };

        // Under the lock, a socket file left behind is stale unless something still answers on it
        // (a broker that does not take the lock).
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() => {
                match connect_with_timeout(&path, Duration::from_secs(1)) {
                    // A broker that is dying (its store lock and this lock already released)
                    // still answers until the kernel closes its socket: it is stale then.
                    Ok(s) if !exiting(&s) => return Err(already()),
                    Ok(_) => {
                        fs::remove_file(&path)
                            .or_else(ignore_not_found)
                            .map_err(|e| {
                                Error::state(format!(
                                    "cannot remove the stale socket {}: {e}",
                                    path.display()
                                ))
                            })?;
                    }
                    // Connecting timed out: the backlog is full, so someone is alive there.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(already()),
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        fs::remove_file(&path)
                            .or_else(ignore_not_found)
                            .map_err(|e| {
                                Error::state(format!(
                                    "cannot remove the stale socket {}: {e}",
                                    path.display()
                                ))
                            })?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(Error::state(format!(
                            "cannot probe the existing socket {}: {e}",
                            path.display()
                        )));
                    }
                }
            }
            Ok(_) => {
                return Err(Error::state(format!(
                    "{} exists and is not a socket: refusing to replace it",
                    path.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::state(format!(
                    "cannot inspect {}: {e}",
                    path.display()
                )));
            }
        }

        let listener = UnixListener::bind(&path)
            .map_err(|e| Error::state(format!("cannot bind {}: {e}", path.display())))?;
        let cleanup = |e: Error| {
            let _ = fs::remove_file(&path);
            e
        };
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(|e| {
            cleanup(Error::state(format!(
                "cannot chmod 0600 {}: {e}",
                path.display()
            )))
        })?;
        let meta = fs::symlink_metadata(&path).map_err(|e| {
            cleanup(Error::state(format!(
                "cannot inspect {}: {e}",
                path.display()
            )))
        })?;
        let socket_id = (meta.dev(), meta.ino());
        listener.set_nonblocking(true).map_err(|e| {
            cleanup(Error::state(format!(
                "cannot make {} non-blocking: {e}",
                path.display()
            )))
        })?;
        let stop = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .map(Arc::new)
        .map_err(|e| cleanup(Error::state(format!("cannot create an eventfd: {e}"))))?;
        let broadcast = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .map(|wake| {
            Arc::new(Broadcast {
                queue: std::sync::Mutex::new(Vec::new()),
                wake,
                subscribers: 0.into(),
                offers: Default::default(),
                attaching: Default::default(),
                ready: Default::default(),
                on_offer: Default::default(),
                health: Default::default(),
                hands: 0.into(),
            })
        })
        .map_err(|e| cleanup(Error::state(format!("cannot create an eventfd: {e}"))))?;

        let thread = {
            let stop = Arc::clone(&stop);
            let hello = Reply::Hello {
                version: protocol::VERSION,
                pid: std::process::id(),
                app_id: app_id.to_owned(),
                store,
            };
            let server = Server::new(listener, handler, app_id.to_owned(), hello, &broadcast);
            std::thread::Builder::new()
                .name("btb-control".to_owned())
                .spawn(move || server.run(&stop))
                .map_err(|e| {
                    cleanup(Error::state(format!(
                        "cannot start the listener thread for {}: {e}",
                        path.display()
                    )))
                })?
        };

        Ok(ControlListener {
            path,
            app_id: app_id.to_owned(),
            stop,
            broadcast,
            thread: Some(thread),
            socket_id,
            _lock: lock,
        })
    }

    /// The socket this listener is bound to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where notices for subscribed clients go.
    pub fn broadcast(&self) -> Arc<Broadcast> {
        Arc::clone(&self.broadcast)
    }
}

impl Drop for ControlListener {
    fn drop(&mut self) {
        let _ = rustix::io::write(&*self.stop, &1u64.to_ne_bytes());
        // Clients waiting on a ready connection hear the end.
        drop(std::mem::take(&mut *locked(&self.broadcast.ready)));
        if let Some(thread) = self.thread.take() {
            // Joining from the listener thread itself (the callback dropped us) would deadlock.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
        // Remove the socket file only if it is still the one we bound, while still holding the lock.
        if let Ok(meta) = fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.socket_id
        {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn ignore_not_found(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// One connection being served.
struct Conn {
    /// Names the connection in [`Broadcast`] (offers, runs handed to it).
    id: u64,
    /// The peer's pid.
    pid: u32,
    /// Attached to this run ([`Request::Attach`]): handed over to the broker.
    attach: Option<Uuid>,
    /// Waiting for a run ([`Request::Ready`]): handed over to the broker.
    ready: bool,
    stream: UnixStream,
    decoder: Decoder,
    /// Reply bytes not written yet.
    out: Vec<u8>,
    greeted: bool,
    /// A notice feed ([`Request::Subscribe`]).
    subscribed: bool,
    /// A client process's request connection: no idle deadline between requests.
    keep_alive: bool,
    /// Close once `out` is written.
    closing: bool,
    /// When it is closed if no complete request arrives (or, closing, if `out` is not written);
    /// none for a subscriber that is up to date.
    deadline: Option<Instant>,
}

impl Conn {
    fn reply(&mut self, reply: &Reply) {
        self.out.extend_from_slice(&protocol::encode(reply));
    }

    fn refuse(&mut self, kind: ErrorKind, message: String) {
        self.reply(&Reply::Error {
            kind: kind.name().to_owned(),
            message,
        });
        self.closing = true;
    }
}

/// The serving thread: the listening socket and every connection in one `poll`.
struct Server {
    listener: UnixListener,
    handler: Handler,
    app_id: String,
    hello: Reply,
    broadcast: Arc<Broadcast>,
    uid: u32,
    conns: Vec<Conn>,
    next_id: u64,
}

impl Server {
    fn new(
        listener: UnixListener,
        handler: Handler,
        app_id: String,
        hello: Reply,
        broadcast: &Arc<Broadcast>,
    ) -> Server {
        Server {
            listener,
            handler,
            app_id,
            hello,
            broadcast: Arc::clone(broadcast),
            uid: our_uid(),
            conns: Vec::new(),
            next_id: 0,
        }
    }

    fn run(mut self, stop: &OwnedFd) {
        loop {
            let now = Instant::now();
            // A deadline only while connections are open: an idle broker sleeps without one.
            let timeout = self.conns.iter().filter_map(|c| c.deadline).min().map(|d| {
                let left = d.saturating_duration_since(now);
                rustix::time::Timespec {
                    tv_sec: left.as_secs() as i64,
                    tv_nsec: i64::from(left.subsec_nanos()),
                }
            });
            let (stopped, accept, notices, ready) = {
                let mut fds = vec![
                    PollFd::new(stop, PollFlags::IN),
                    PollFd::new(&self.listener, PollFlags::IN),
                    PollFd::new(&self.broadcast.wake, PollFlags::IN),
                ];
                for c in &self.conns {
                    // A closing connection is only written to: polling it for input would wake
                    // this thread again and again for bytes it will not read (or for the end
                    // of a half-closed peer's stream) while its replies wait for the peer.
                    let mut flags = if c.closing {
                        PollFlags::empty()
                    } else {
                        PollFlags::IN
                    };
                    if !c.out.is_empty() {
                        flags |= PollFlags::OUT;
                    }
                    fds.push(PollFd::from_borrowed_fd(c.stream.as_fd(), flags));
                }
                match poll(&mut fds, timeout.as_ref()) {
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(e) => {
                        log::error!(target: "btb", "the control socket stopped: poll failed: {e}");
                        return;
                    }
                }
                let ready: Vec<PollFlags> = fds[3..].iter().map(PollFd::revents).collect();
                (
                    !fds[0].revents().is_empty(),
                    !fds[1].revents().is_empty(),
                    !fds[2].revents().is_empty(),
                    ready,
                )
            };
            if stopped {
                return;
            }
            if notices {
                self.hand_out_notices(Instant::now());
            }
            for (i, flags) in ready.iter().enumerate() {
                if flags.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
                    self.read(i);
                }
            }
            if accept {
                self.accept();
            }
            self.flush_and_reap(Instant::now());
        }
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // WouldBlock: all taken. Out of descriptors: the pending ones wait for the next
                // readiness (connections closing free some).
                Err(_) => return,
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            self.next_id += 1;
            let pid = sockopt::socket_peercred(&stream)
                .map_or(0, |c| c.pid.as_raw_nonzero().get() as u32);
            let mut conn = Conn {
                id: self.next_id,
                pid,
                attach: None,
                ready: false,
                stream,
                decoder: Decoder::default(),
                out: Vec::new(),
                greeted: false,
                subscribed: false,
                keep_alive: false,
                closing: false,
                deadline: Some(Instant::now() + IDLE_TIMEOUT),
            };
            match peer_uid(&conn.stream) {
                Ok(peer) if peer == self.uid => {}
                _ => conn.refuse(ErrorKind::Policy, NOT_YOUR_BROKER.to_owned()),
            }
            if self.conns.len() >= MAX_CONNECTIONS {
                conn.refuse(
                    ErrorKind::State,
                    format!("the broker serves {MAX_CONNECTIONS} connections already; try again"),
                );
            }
            self.conns.push(conn);
        }
    }

    fn read(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        if conn.closing {
            return;
        }
        let mut buf = [0u8; 16 * 1024];
        loop {
            match (&conn.stream).read(&mut buf) {
                Ok(0) => {
                    // The peer is done sending (maybe half-closed, still reading its replies).
                    conn.closing = true;
                    break;
                }
                Ok(n) => conn.decoder.push(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    conn.closing = true;
                    conn.out.clear();
                    return;
                }
            }
        }
        loop {
            let conn = &mut self.conns[i];
            match conn.decoder.next_framed::<Request>() {
                Ok(Some(protocol::Framed::Unreadable(e))) if conn.greeted => {
                    // A whole frame: the stream is still in step, so only this request fails.
                    conn.reply(&Reply::error(&Error::invalid(e)));
                }
                Ok(Some(protocol::Framed::Unreadable(e))) => {
                    conn.refuse(ErrorKind::InvalidArgument, e);
                    return;
                }
                Ok(Some(protocol::Framed::Message(request))) => {
                    conn.deadline = (!conn.keep_alive).then(|| Instant::now() + IDLE_TIMEOUT);
                    let Some(reply) = self.serve(i, request) else {
                        let conn = &self.conns[i];
                        if conn.attach.is_some() || conn.ready {
                            return; // what follows is the instance protocol, not requests
                        }
                        continue;
                    };
                    let conn = &mut self.conns[i];
                    conn.reply(&reply);
                    if conn.out.len() > MAX_QUEUED {
                        conn.out.clear();
                        conn.closing = true;
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    conn.refuse(ErrorKind::InvalidArgument, format!("{e}"));
                    return;
                }
            }
        }
    }

    /// Serves one request; `None` for one that is not answered (an offer).
    fn serve(&mut self, i: usize, request: Request) -> Option<Reply> {
        let conn = &mut self.conns[i];
        if request == Request::Unknown && conn.greeted {
            // A newer client's: a notice on a feed is ignored, a request is answered.
            return (!conn.subscribed).then(|| {
                Reply::error(&Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "this broker (protocol versions {}–{}) does not know this request",
                        protocol::MIN_VERSION,
                        protocol::VERSION
                    ),
                ))
            });
        }
        if conn.subscribed
            && let Request::Offer { offer } = request
        {
            locked(&self.broadcast.offers).insert(conn.id, (conn.pid, offer));
            self.broadcast.alive(conn.pid);
            if let Some(on_offer) = self.broadcast.on_offer.get() {
                on_offer();
            }
            return None;
        }
        if conn.greeted
            && !conn.subscribed
            && let Request::Attach { instance_id } = request
        {
            conn.attach = Some(instance_id);
            return None;
        }
        if conn.greeted && !conn.subscribed && request == Request::Ready {
            conn.ready = true;
            return None;
        }
        Some(self.serve_answered(i, request))
    }

    fn serve_answered(&mut self, i: usize, request: Request) -> Reply {
        let conn = &mut self.conns[i];
        if !conn.greeted {
            return match request {
                Request::Hello {
                    version,
                    min_version,
                    keep_alive,
                } => match protocol::negotiate(min_version, version) {
                    Ok(chosen) => {
                        conn.greeted = true;
                        conn.keep_alive = keep_alive;
                        if keep_alive {
                            conn.deadline = None;
                        }
                        let mut hello = self.hello.clone();
                        if let Reply::Hello { version, .. } = &mut hello {
                            *version = chosen;
                        }
                        hello
                    }
                    Err(e) => {
                        conn.closing = true;
                        Reply::error(&Error::new(
                            ErrorKind::Unsupported,
                            format!("control protocol: {e}"),
                        ))
                    }
                },
                _ => {
                    conn.closing = true;
                    Reply::error(&Error::invalid("the first request must be a hello"))
                }
            };
        }
        if conn.subscribed {
            // A feed only carries notices: a request on it is a confused client.
            conn.closing = true;
            return Reply::error(&Error::invalid("a subscribed connection takes no requests"));
        }
        if request == Request::Subscribe {
            conn.subscribed = true;
            conn.deadline = None;
            self.broadcast
                .subscribers
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            return Reply::Done;
        }
        if let Request::Signal { name } = &request
            && let Err(why) = check_name(name)
        {
            return Reply::error(&Error::invalid(why));
        }
        let handler = Arc::clone(&self.handler);
        let describe = format!("{request:?}");
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(request))).unwrap_or_else(
            |_| {
                Reply::error(&Error::new(
                    ErrorKind::Internal,
                    format!(
                        "internal: the broker of app {:?} failed handling {describe}",
                        self.app_id
                    ),
                ))
            },
        )
    }

    /// Appends the queued notices to every subscriber's output; a subscriber that fell more
    /// than [`MAX_QUEUED`] bytes behind is dropped (its client sees the end of its feed).
    fn hand_out_notices(&mut self, now: Instant) {
        let mut count = [0u8; 8];
        let _ = rustix::io::read(&self.broadcast.wake, &mut count);
        let frames = std::mem::take(&mut *locked(&self.broadcast.queue));
        for (to, bytes) in frames {
            let mut reached = false;
            for c in self
                .conns
                .iter_mut()
                .filter(|c| c.subscribed && !c.closing && to.is_none_or(|id| id == c.id))
            {
                reached = true;
                c.out.extend_from_slice(&bytes);
                // A subscriber that does not read within the idle timeout is dropped too.
                c.deadline.get_or_insert(now + IDLE_TIMEOUT);
                if c.out.len() > MAX_QUEUED {
                    c.out.clear();
                    c.closing = true;
                }
            }
            if let Some(gone) = to.filter(|_| !reached) {
                // A run handed to a client that left meanwhile: its worker hears so at once.
                locked(&self.broadcast.attaching).retain(|_, (conn, _)| *conn != gone);
            }
        }
    }

    /// Writes what can be written; closes what is done, expired or broken.
    fn flush_and_reap(&mut self, now: Instant) {
        let broadcast = Arc::clone(&self.broadcast);
        let unsubscribe = |c: &Conn| {
            if c.subscribed {
                broadcast
                    .subscribers
                    .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                // Together: a worker told that its client is gone finds no offer of it left.
                let mut offers = locked(&broadcast.offers);
                offers.remove(&c.id);
                locked(&broadcast.attaching).retain(|_, (conn, _)| *conn != c.id);
                locked(&broadcast.ready).remove(&c.pid);
                if !offers.values().any(|(pid, _)| *pid == c.pid) {
                    locked(&broadcast.health).remove(&c.pid);
                }
                drop(offers);
            }
        };
        let mut attached = Vec::new();
        self.conns.retain_mut(|c| {
            let mut keep = Self::flush_one(c, now);
            if keep && c.ready {
                if let Ok(stream) = c.stream.try_clone() {
                    let rest = std::mem::take(&mut c.decoder);
                    locked(&broadcast.ready)
                        .entry(c.pid)
                        .or_default()
                        .push((stream, rest));
                    broadcast.alive(c.pid);
                }
                return false; // handed over (the clone); this copy closes
            }
            if keep
                && c.out.is_empty()
                && let Some(instance_id) = c.attach
            {
                let rest = std::mem::take(&mut c.decoder);
                attached.push((instance_id, c.stream.try_clone(), rest));
                keep = false; // handed over (the clone) below; this copy closes
            }
            if !keep {
                unsubscribe(c);
            }
            keep
        });
        for (instance_id, stream, rest) in attached {
            let waiting = locked(&broadcast.attaching).remove(&instance_id);
            if let (Some((_, tx)), Ok(stream)) = (waiting, stream) {
                let _ = tx.send((stream, rest));
            } // else no run waits for it (given up, or never handed): the client sees the end
        }
    }

    fn flush_one(c: &mut Conn, now: Instant) -> bool {
        {
            while !c.out.is_empty() {
                match (&c.stream).write(&c.out) {
                    Ok(n) => {
                        c.out.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => return false,
                }
            }
            if c.closing && c.out.is_empty() {
                // Half-close first so the client reads our reply before any reset.
                let _ = c.stream.shutdown(std::net::Shutdown::Write);
                return false;
            }
            if c.subscribed && c.out.is_empty() {
                c.deadline = None; // up to date: a feed may stay quiet for ever
            }
            if c.deadline.is_some_and(|d| d <= now) {
                if c.closing || c.subscribed {
                    return false; // a peer that does not read what it asked for
                }
                c.refuse(
                    ErrorKind::State,
                    format!(
                        "no complete request within {} s: closing the connection",
                        IDLE_TIMEOUT.as_secs()
                    ),
                );
                c.deadline = Some(now + IDLE_TIMEOUT);
            }
            true
        }
    }
}

/// A connection to a running broker (`btbctl`, `signal_event`).
pub struct Client {
    stream: UnixStream,
    app_id: String,
    /// The broker's process id.
    pub broker_pid: u32,
    /// The canonical path of the store the broker holds, as its hello named it.
    pub broker_store: Option<String>,
}

impl Client {
    /// Connects to the broker of `app_id` and greets it. `NotFound` when none runs; `Policy` for
    /// a socket that another user serves or that we cannot reach; `State` when it does not answer.
    pub fn connect(app_id: &str) -> Result<Client> {
        Self::connect_with(app_id, false)
    }

    /// As [`Client::connect`], for a connection kept open between requests (a client process's):
    /// the broker does not close it when it is idle.
    pub fn connect_kept(app_id: &str) -> Result<Client> {
        Self::connect_with(app_id, true)
    }

    fn connect_with(app_id: &str, keep_alive: bool) -> Result<Client> {
        let path = socket_path(app_id)?;
        let shown = path.display();
        let stream = match connect_with_timeout(&path, CLIENT_TIMEOUT) {
            Ok(stream) => stream,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("no running btb broker for app {app_id:?} (socket {shown})"),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(Error::new(
                    ErrorKind::Policy,
                    format!(
                        "cannot reach the btb broker for app {app_id:?}: permission denied on socket {shown} (a broker of another user?)"
                    ),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(Error::state(format!(
                    "the btb broker for app {app_id:?} did not accept a connection within {} s (socket {shown})",
                    CLIENT_TIMEOUT.as_secs()
                )));
            }
            Err(e) => {
                return Err(Error::state(format!(
                    "cannot connect to the btb broker for app {app_id:?} (socket {shown}): {e}"
                )));
            }
        };
        // Send nothing to a socket that someone else serves.
        let uid = our_uid();
        match peer_uid(&stream) {
            Ok(peer) if peer == uid => {}
            Ok(peer) => {
                return Err(Error::new(
                    ErrorKind::Policy,
                    format!(
                        "socket {shown} for app {app_id:?} is served by uid {peer}, not by us (uid {uid})"
                    ),
                ));
            }
            Err(e) => {
                return Err(Error::state(format!(
                    "cannot check who serves socket {shown} for app {app_id:?}: {e}"
                )));
            }
        }
        let mut client = Client {
            stream,
            app_id: app_id.to_owned(),
            broker_pid: 0,
            broker_store: None,
        };
        match client.call(&Request::Hello {
            version: protocol::VERSION,
            min_version: Some(protocol::MIN_VERSION),
            keep_alive,
        })? {
            Reply::Hello { pid, store, .. } => {
                client.broker_pid = pid;
                client.broker_store = store;
            }
            other => return Err(client.unexpected(&other)),
        }
        Ok(client)
    }

    /// Turns this connection into a feed of notices ([`Request::Subscribe`]).
    pub fn subscribe(mut self) -> Result<Subscription> {
        match self.call(&Request::Subscribe)? {
            Reply::Done => {}
            other => return Err(self.unexpected(&other)),
        }
        self.stream
            .set_read_timeout(None)
            .map_err(|e| Error::state(format!("cannot make the feed blocking: {e}")))?;
        Ok(Subscription {
            stream: self.stream,
        })
    }

    /// The connection itself (after [`Request::Attach`]: for the instance protocol), with no
    /// read timeout and the client's write timeout.
    pub fn into_stream(self) -> io::Result<UnixStream> {
        self.stream.set_read_timeout(None)?;
        self.stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
        Ok(self.stream)
    }

    /// An error for a reply that does not answer the request.
    fn unexpected(&self, reply: &Reply) -> Error {
        Error::state(format!(
            "the btb broker for app {:?} answered {reply:?}",
            self.app_id
        ))
    }

    /// Sends a request and waits (at most [`CLIENT_TIMEOUT`]) for its reply; an error reply is
    /// returned as the error it names.
    pub fn call(&mut self, request: &Request) -> Result<Reply> {
        self.exchange(request)
            .unwrap_or_else(|failure| Err(failure.error))
    }

    /// As [`Client::call`], telling a broken exchange (the outer error) from an answer.
    pub fn exchange(&mut self, request: &Request) -> std::result::Result<Result<Reply>, Failure> {
        let pid = self.broker_pid;
        let broken = |delivered: bool, what: String| Failure {
            delivered,
            timed_out: false,
            unreadable: false,
            pid,
            error: Error::state(format!(
                "talking to the btb broker for app {:?}: {what}",
                self.app_id
            )),
        };
        self.stream
            .set_write_timeout(Some(CLIENT_TIMEOUT))
            .and_then(|()| self.stream.set_read_timeout(Some(CLIENT_TIMEOUT)))
            .map_err(|e| broken(false, e.to_string()))?;
        // Even if sending failed, the broker may have answered (and closed) first: read its reply.
        let sent = protocol::write_frame(&mut self.stream, request);
        let reply = match (
            protocol::read_frame_max::<Reply>(&mut self.stream, protocol::MAX_REPLY),
            sent,
        ) {
            (Ok(Some(reply)), _) => reply,
            (_, Err(e)) => return Err(broken(false, format!("cannot send: {e}"))),
            (Ok(None), Ok(())) => {
                return Err(broken(
                    true,
                    "the broker closed the connection without a reply".into(),
                ));
            }
            (Err(e), Ok(()))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(Failure {
                    timed_out: true,
                    ..broken(
                        true,
                        format!(
                            "no reply within {} s (the broker is stopped or stuck; the connection \
                             was dropped)",
                            CLIENT_TIMEOUT.as_secs()
                        ),
                    )
                });
            }
            (Err(e), Ok(())) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(Failure {
                    unreadable: true,
                    ..broken(true, format!("cannot read the reply: {e}"))
                });
            }
            (Err(e), Ok(())) => return Err(broken(true, format!("cannot read the reply: {e}"))),
        };
        Ok(match reply {
            Reply::Error { kind, message } => Err(Error::new(ErrorKind::named(&kind), message)),
            reply => Ok(reply),
        })
    }
}

/// A broken exchange with a broker.
#[derive(Debug)]
pub struct Failure {
    /// The request was sent (the broker may have acted on it).
    pub delivered: bool,
    /// No reply came in time: the broker is there but did not answer (stopped, stuck). Its
    /// connection is out of step and must be dropped; its feed says whether it is gone.
    pub timed_out: bool,
    /// The broker answered, but its reply cannot be read (over the limit, not JSON): the
    /// connection is out of step and must be dropped; asking again would get the same.
    pub unreadable: bool,
    /// The broker's process id.
    pub pid: u32,
    pub error: Error,
}

/// A connection that receives the broker's notices ([`Reply::Progress`], [`Reply::Completed`]).
pub struct Subscription {
    stream: UnixStream,
}

impl Subscription {
    /// Waits for the next notice; `None` when the feed ends (the broker closed, died, or dropped
    /// us for not reading, or [`Subscription::stopper`] was used).
    pub fn next_notice(&mut self) -> Option<Reply> {
        protocol::read_frame_max::<Reply>(&mut self.stream, protocol::MAX_REPLY)
            .ok()
            .flatten()
    }

    /// A clone of the feed's socket: to send [`Request::Offer`]s on it, and to end the feed
    /// from another thread (`shutdown`).
    pub fn socket(&self) -> io::Result<UnixStream> {
        self.stream.try_clone()
    }
}

/// Signals a custom event to the running broker of `app_id` (any process of the same user).
///
/// Errors: a bad app id or name → `InvalidArgument`; no broker listening → `NotFound`; a socket not
/// reachable for us or served by another uid, or the broker's "not your broker" → `Policy`; other
/// refusals as the broker names them; no answer in time or a broken exchange → `State`.
pub fn signal_event(app_id: &str, name: &str) -> Result<()> {
    check_name(name).map_err(|why| Error::invalid(format!("{why} (app {app_id:?})")))?;
    let mut client = Client::connect(app_id)?;
    match client.call(&Request::Signal {
        name: name.to_owned(),
    }) {
        Ok(Reply::Fired { .. } | Reply::Done) => Ok(()),
        Ok(other) => Err(client.unexpected(&other)),
        Err(e) => Err(Error::new(
            e.kind(),
            format!(
                "the btb broker for app {app_id:?} refused event {name:?}: {}",
                e.message()
            ),
        )),
    }
}
