//! The child's side of an out-of-process host (SPEC §5): a process started by a broker for an
//! `exec` entry point connects to its instance through the socket it inherited (`BTB_HOST_FD`)
//! and gets the same [`Instance`] a run function gets in the broker's process or in a client:
//! id, task, trigger details, progress, deferrals, failure, retry, output, and cancellation heard
//! from the broker. A child that never connects still works: its exit status is the outcome.
//!
//! What differs is behind the instance, in two small types: [`HostSink`], where it reports — the
//! process *is* the run (its exit ends it; it never says `Finished`), so a failure, a retry or an
//! output reaches the broker at once — and [`Detached`], the backend of its registration, which
//! answers every call that needs the app's system `UNSUPPORTED` (the app's process makes them).

use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use uuid::Uuid;

use crate::broker::backend::Backend;
use crate::broker::handlers::Handlers;
use crate::broker::instance::{CanceledFn, Report, RunSink};
use crate::broker::{Event, Instance, Registration};
use crate::clock::Clock;
use crate::control::Filter;
use crate::error::{Error, ErrorKind, Result};
use crate::link::Link;
use crate::manifest::Manifest;
use crate::model::{
    ApplicationTriggerResult, BackgroundWorkCostValue, Builder, CancellationReason, RunRecord,
    SystemConditionType, SystemTriggerType, TaskGroup, TaskRecord, TaskTrigger,
};
use crate::policy::Policy;
use crate::protocol::{self, ToBroker, ToHost};

fn var(name: &str) -> Result<String> {
    std::env::var(name).map_err(|_| {
        Error::state(format!(
            "{name} is not set: this process was not started by a btb broker for an exec entry point"
        ))
    })
}

fn uuid_var(name: &str) -> Result<Uuid> {
    let text = var(name)?;
    Uuid::parse_str(&text).map_err(|e| Error::invalid(format!("{name}={text:?}: {e}")))
}

/// What the broker's welcome said.
struct Welcome {
    version: u32,
    canceled: Option<CancellationReason>,
    network_granted: bool,
    trigger_details: Option<serde_json::Value>,
    task: Option<TaskRecord>,
}

/// Connects to the instance this process was started for: reads the `BTB_*` variables, greets the
/// broker over `BTB_HOST_FD` and waits for its answer. Call it once per process.
pub fn connect() -> Result<Instance> {
    let fd_text = var("BTB_HOST_FD")?;
    let fd: RawFd =
        fd_text.parse().ok().filter(|fd| *fd > 2).ok_or_else(|| {
            Error::invalid(format!("BTB_HOST_FD={fd_text:?} is not a descriptor"))
        })?;
    let env_details = match std::env::var("BTB_TRIGGER_DETAILS") {
        Ok(text) => Some(
            serde_json::from_str(&text)
                .map_err(|e| Error::invalid(format!("BTB_TRIGGER_DETAILS is not JSON: {e}")))?,
        ),
        Err(_) => None,
    };
    let instance_id = uuid_var("BTB_INSTANCE_ID")?;
    let app_id = var("BTB_APP_ID")?;
    let socket = UnixStream::from(adopt(fd)?);
    let mut reader = socket
        .try_clone()
        .map_err(|e| Error::new(ErrorKind::Internal, format!("BTB_HOST_FD: {e}")))?;
    let welcome = greet(&socket, &mut reader, instance_id)?;
    // A broker that sends no task (an older one) leaves it to the environment.
    let record = match welcome.task {
        Some(record) => record,
        None => record_from_env()?,
    };
    let attempt = std::env::var("BTB_ATTEMPT")
        .ok()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let backend: Arc<dyn Backend> = Arc::new(Detached::new(&app_id)?);
    let instance = Instance::with_sink(
        instance_id,
        Registration::new(backend, Arc::new(record)),
        // The welcome carries the trigger details that were too large for the environment.
        welcome.trigger_details.or(env_details),
        crate::clock::Clock::Real.now_ms(),
        attempt,
        Arc::new(HostSink {
            link: Link::new(socket),
            version: welcome.version,
        }),
    );
    instance.0.network_granted.store(
        welcome.network_granted,
        std::sync::atomic::Ordering::Release,
    );
    if let Some(reason) = welcome.canceled {
        instance.canceled_by_broker(reason);
    }
    // Hears cancellations until the broker hangs up (when the process exits, at the latest);
    // it holds the instance weakly, and lives as long as the process needs it: not joined.
    let weak = Arc::downgrade(&instance.0);
    std::thread::Builder::new()
        .name("btb-host".into())
        .spawn(move || {
            crate::link::hear_cancellations(&mut reader, |reason| {
                if let Some(inner) = weak.upgrade() {
                    Instance(inner).canceled_by_broker(reason);
                }
            });
        })
        .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot start a thread: {e}")))?;
    Ok(instance)
}

/// Says hello and reads the broker's answer.
fn greet(socket: &UnixStream, reader: &mut UnixStream, instance_id: Uuid) -> Result<Welcome> {
    let lost = |e: std::io::Error| {
        Error::new(
            ErrorKind::Internal,
            format!("the broker's instance socket: {e}"),
        )
    };
    protocol::write_frame(
        &mut &*socket,
        &ToBroker::Hello {
            version: protocol::VERSION,
            min_version: Some(protocol::MIN_VERSION),
            instance_id,
        },
    )
    .map_err(lost)?;
    match protocol::read_frame_max::<ToHost>(reader, protocol::MAX_REPLY).map_err(lost)? {
        Some(ToHost::Welcome {
            version,
            canceled,
            network_granted,
            trigger_details,
            task,
        }) => Ok(Welcome {
            version,
            canceled: canceled.map(CancellationReason::from_u32).transpose()?,
            network_granted,
            trigger_details,
            task: task.map(|t| *t),
        }),
        Some(ToHost::Refused { message }) => Err(Error::state(message)),
        Some(other) => Err(Error::state(format!(
            "the broker answered the hello with {other:?}"
        ))),
        None => Err(Error::state("the broker closed the instance socket")),
    }
}

/// The task as the environment names it, for a broker whose welcome does not carry it: id, name
/// and entry point; its trigger is not told, and stands as an application trigger with the nil
/// id (SPEC §5).
fn record_from_env() -> Result<TaskRecord> {
    Ok(TaskRecord {
        task_id: uuid_var("BTB_TASK_ID")?,
        name: var("BTB_TASK_NAME")?,
        task_entry_point: Some(var("BTB_ENTRY_POINT")?),
        task_group: None,
        cancel_on_condition_loss: false,
        is_network_requested: false,
        trigger: TaskTrigger::Application { id: Uuid::nil() },
        conditions: Vec::new(),
        registered_at_ms: 0,
        next_due_ms: None,
        seq: 0,
        retry_policy: None,
    })
}

/// Takes ownership of the inherited descriptor, once per process (`btb_os::adopt_inherited`).
fn adopt(fd: RawFd) -> Result<OwnedFd> {
    btb_os::adopt_inherited(fd).map_err(|refused| match refused {
        btb_os::Refused::Again => Error::state(
            "this process already connected to its instance (connect once, share the instance)",
        ),
        btb_os::Refused::NotSocket(what) => Error::invalid(format!(
            "BTB_HOST_FD={fd} is not an inherited socket ({what})"
        )),
    })
}

/// Where an exec host's instance reports: the instance protocol over its inherited socket, as a
/// client's handed run speaks it ([`Link`]: one writer, one trimming rule), except that the
/// process is the run — what it reports about its end goes out at once, and its exit ends it.
struct HostSink {
    link: Link,
    /// The protocol version the broker's welcome named.
    version: u32,
}

impl HostSink {
    fn check_version(&self, what: &str) -> Result<()> {
        if self.version < 2 {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{what} needs a broker of protocol version 2; this one speaks version {}",
                    self.version
                ),
            ));
        }
        Ok(())
    }
}

impl RunSink for HostSink {
    fn progress(&self, instance: &Instance, value: u32) {
        self.link.progress(instance, value);
    }

    /// The process is the run: a deferral keeps nothing alive; the broker only hears of it.
    fn deferral(&self, taken: bool) {
        self.link.deferral(taken);
    }

    /// On the `btb-host` thread, which heard the cancellation.
    fn canceled(&self, instance: &Instance, handlers: Vec<CanceledFn>, reason: CancellationReason) {
        self.link.canceled(instance, handlers, reason);
    }

    /// Never called: the run's function is the process, which says nothing when it ends.
    fn finished(self: Arc<Self>, _instance: &Instance) {}

    fn reported(&self, report: Report<'_>) -> Result<()> {
        let message = match report {
            Report::Failure(message) => ToBroker::Failure {
                message: message.to_owned(),
            },
            Report::Retry(retry) => {
                self.check_version("request_retry")?;
                ToBroker::Retry {
                    after_ms: retry.after_ms,
                    message: retry.message.clone(),
                }
            }
            Report::Output(output) => {
                self.check_version("set_output")?;
                ToBroker::Output {
                    output: output.clone(),
                }
            }
        };
        self.link.send(message);
        Ok(())
    }

    fn check_finish_run(&self) -> Result<()> {
        Err(Error::state(
            "an exec host's run ends when its process exits (finish_run is for instances taken \
             from the pull queue)",
        ))
    }
}

/// The backend of an exec host's registration: the host runs one instance of it and has no
/// system of its own — registering, listing, requesting, handlers and the rest are the app's
/// process's to do, so each of them answers `UNSUPPORTED` saying so.
struct Detached {
    app_id: String,
    /// The app id and nothing declared: the host knows only its own task.
    manifest: Arc<Manifest>,
    policy: Policy,
    clock: Clock,
    /// Always empty.
    handlers: RwLock<Handlers>,
    /// The broker that started this process (its parent).
    broker_pid: u32,
}

impl Detached {
    fn new(app_id: &str) -> Result<Detached> {
        Ok(Detached {
            app_id: app_id.to_owned(),
            manifest: Arc::new(Manifest::new(app_id, "")?),
            policy: Policy::default(),
            clock: Clock::Real,
            handlers: RwLock::default(),
            broker_pid: std::os::unix::process::parent_id(),
        })
    }
}

/// What a registration call answers in an exec host.
fn unsupported(what: &str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!(
            "an exec host cannot {what}: it runs one instance of its task; the app's process does"
        ),
    )
}

impl Backend for Detached {
    fn current(self: Arc<Self>) -> Arc<dyn Backend> {
        self
    }
    fn is_broker(&self) -> bool {
        false
    }
    fn close(self: Arc<Self>) -> Result<()> {
        Ok(())
    }
    fn manifest(&self) -> Arc<Manifest> {
        Arc::clone(&self.manifest)
    }
    fn app_id(&self) -> &str {
        &self.app_id
    }
    fn policy(&self) -> &Policy {
        &self.policy
    }
    fn clock(&self) -> &Clock {
        &self.clock
    }
    fn is_simulated(&self) -> bool {
        false
    }
    fn store_path(&self) -> &str {
        ""
    }
    fn control_socket(&self) -> Result<PathBuf> {
        Err(unsupported("reach the broker's control socket"))
    }
    fn broker_pid(&self) -> u32 {
        self.broker_pid
    }
    fn is_closed(&self) -> bool {
        false
    }
    /// Every call that goes through the system (adding handlers among them) stops here.
    fn check(&self) -> Result<()> {
        Err(unsupported(
            "use the app's system (add handlers, register, request)",
        ))
    }
    fn start(self: Arc<Self>) -> Result<()> {
        Err(unsupported("start a system"))
    }
    fn handler_table(&self) -> &RwLock<Handlers> {
        &self.handlers
    }
    fn offer(self: Arc<Self>) {}
    fn register(self: Arc<Self>, _builder: &Builder) -> Result<Arc<TaskRecord>> {
        Err(unsupported("register a task"))
    }
    fn unregister(self: Arc<Self>, _task_id: &Uuid, _cancel_task: bool) -> Result<()> {
        Err(unsupported("unregister a task"))
    }
    fn list(self: Arc<Self>, _filter: Filter) -> Result<Vec<Arc<TaskRecord>>> {
        Err(unsupported("list registrations"))
    }
    fn all_task_groups(self: Arc<Self>) -> Result<Vec<TaskGroup>> {
        Err(unsupported("list task groups"))
    }
    fn history(self: Arc<Self>, _task_id: &Uuid) -> Result<Vec<RunRecord>> {
        Err(unsupported("read a task's history"))
    }
    fn due(self: Arc<Self>, _task_id: &Uuid) -> Result<(Option<i64>, bool)> {
        Err(unsupported("tell when a task is due"))
    }
    fn request(
        self: Arc<Self>,
        _trigger_id: &Uuid,
        _arguments: Option<serde_json::Value>,
    ) -> Result<ApplicationTriggerResult> {
        Err(unsupported("request a run"))
    }
    fn holds_application_trigger(&self, _id: &Uuid) -> bool {
        false
    }
    fn raise_event(self: Arc<Self>, _event: SystemTriggerType) -> Result<usize> {
        Err(unsupported("raise an event"))
    }
    fn signal_event(self: Arc<Self>, _name: &str) -> Result<usize> {
        Err(unsupported("signal an event"))
    }
    fn set_state(self: Arc<Self>, _condition: SystemConditionType, _value: bool) -> Result<()> {
        Err(unsupported("set a condition's state"))
    }
    fn state(self: Arc<Self>, _condition: SystemConditionType) -> Result<Option<bool>> {
        Err(unsupported("read a condition's state"))
    }
    fn state_source(self: Arc<Self>, _condition: SystemConditionType) -> Result<&'static str> {
        Err(unsupported("read a condition's source"))
    }
    fn background_work_cost(self: Arc<Self>) -> Result<Option<BackgroundWorkCostValue>> {
        Err(unsupported("read the background work cost"))
    }
    fn wait_idle(&self, _timeout: Duration) -> Result<bool> {
        Err(unsupported("wait for the system to be idle"))
    }
    fn next_event(&self, _timeout: Duration) -> Result<Option<Event>> {
        Err(unsupported("take events from the pull queue"))
    }
    fn serve_activation(self: Arc<Self>, _timeout: Duration) -> Result<bool> {
        Err(unsupported("serve an activation"))
    }
    fn service(self: Arc<Self>, _manifest: Manifest) -> Result<bool> {
        Err(unsupported("service the app"))
    }
    fn uninstall(self: Arc<Self>) -> Result<usize> {
        Err(unsupported("uninstall the app"))
    }
}
