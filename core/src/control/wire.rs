//! The control protocol's messages (SPEC §10): what a client asks ([`Request`]), what the
//! broker answers or pushes ([`Reply`]), and their parts. Framing is `protocol.rs`'s.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::{
    ApplicationTriggerResult, BackgroundWorkCostValue, Builder, RunRecord, SystemConditionType,
    SystemTriggerType, TaskGroup, TaskRecord,
};
use crate::protocol;
use crate::{Completion, Error};

/// The longest event name, in bytes (as a custom event trigger id).
pub const MAX_NAME: usize = 256;

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
    /// The process was started by the broker for background work (`activate`, SPEC §12) and
    /// does not serve yet: it takes the runs it was started for before its handlers are
    /// registered, and runs each once its handler is (an optional field of version 2). The
    /// broker honours it only from the process it started.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub activated: bool,
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
