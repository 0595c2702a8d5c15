//! The child's side of an out-of-process host (SPEC §5): a process started by a broker for an
//! `exec` entry point connects to its instance through the socket it inherited (`BTB_HOST_FD`)
//! and gets the `BackgroundTaskInstance` surface: id, task, trigger details, progress, deferrals,
//! failure, and cancellation heard from the broker. A child that never connects still works: its
//! exit status is the outcome.

use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use uuid::Uuid;

use crate::error::{Error, ErrorKind, Result};
use crate::link::Link;
use crate::model::CancellationReason;
use crate::protocol::{self, ToBroker, ToHost};

/// A canceled handler of a host instance: `(instance, reason)`.
pub type HostCanceledFn = Arc<dyn Fn(&HostInstance, CancellationReason) + Send + Sync>;

#[derive(Default)]
struct Life {
    canceled: Option<CancellationReason>,
    handlers: Vec<(u64, HostCanceledFn)>,
    next_token: u64,
    /// The broker closed the socket (it ended the run, or is gone).
    closed: bool,
}

struct Inner {
    instance_id: Uuid,
    network_granted: bool,
    /// The protocol version the broker's welcome named.
    version: u32,
    attempt: u32,
    task_id: Uuid,
    name: String,
    entry_point: String,
    app_id: String,
    trigger_details: Option<serde_json::Value>,
    progress: AtomicU32,
    link: Link,
    life: Mutex<Life>,
    changed: Condvar,
}

/// The instance a host process runs. Cheap to clone; clones share it.
#[derive(Clone)]
pub struct HostInstance(Arc<Inner>);

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

/// Connects to the instance this process was started for: reads the `BTB_*` variables, greets the
/// broker over `BTB_HOST_FD` and waits for its answer. Call it once per process.
pub fn connect() -> Result<HostInstance> {
    let fd_text = var("BTB_HOST_FD")?;
    let fd: RawFd =
        fd_text.parse().ok().filter(|fd| *fd > 2).ok_or_else(|| {
            Error::invalid(format!("BTB_HOST_FD={fd_text:?} is not a descriptor"))
        })?;
    let mut trigger_details = match std::env::var("BTB_TRIGGER_DETAILS") {
        Ok(text) => Some(
            serde_json::from_str(&text)
                .map_err(|e| Error::invalid(format!("BTB_TRIGGER_DETAILS is not JSON: {e}")))?,
        ),
        Err(_) => None,
    };
    let instance_id = uuid_var("BTB_INSTANCE_ID")?;
    let owned = adopt(fd)?;
    let socket = UnixStream::from(owned);
    let mut reader = socket
        .try_clone()
        .map_err(|e| Error::new(ErrorKind::Internal, format!("BTB_HOST_FD: {e}")))?;
    let lost = |e: std::io::Error| {
        Error::new(
            ErrorKind::Internal,
            format!("the broker's instance socket: {e}"),
        )
    };
    protocol::write_frame(
        &mut &socket,
        &ToBroker::Hello {
            version: protocol::VERSION,
            min_version: Some(protocol::MIN_VERSION),
            instance_id,
        },
    )
    .map_err(lost)?;
    // The welcome carries the trigger details that were too large for the environment.
    let (canceled, network_granted, version) =
        match protocol::read_frame_max::<ToHost>(&mut reader, protocol::MAX_REPLY).map_err(lost)? {
            Some(ToHost::Welcome {
                version,
                canceled,
                network_granted,
                trigger_details: large,
            }) => {
                if large.is_some() {
                    trigger_details = large;
                }
                (
                    canceled.map(CancellationReason::from_u32).transpose()?,
                    network_granted,
                    version,
                )
            }
            Some(ToHost::Refused { message }) => return Err(Error::state(message)),
            Some(other) => {
                return Err(Error::state(format!(
                    "the broker answered the hello with {other:?}"
                )));
            }
            None => return Err(Error::state("the broker closed the instance socket")),
        };
    let attempt = std::env::var("BTB_ATTEMPT")
        .ok()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let inner = Arc::new(Inner {
        instance_id,
        network_granted,
        version,
        attempt,
        task_id: uuid_var("BTB_TASK_ID")?,
        name: var("BTB_TASK_NAME")?,
        entry_point: var("BTB_ENTRY_POINT")?,
        app_id: var("BTB_APP_ID")?,
        trigger_details,
        progress: AtomicU32::new(0),
        link: Link::new(socket),
        life: Mutex::new(Life {
            canceled,
            ..Life::default()
        }),
        changed: Condvar::new(),
    });
    let weak = Arc::downgrade(&inner);
    std::thread::Builder::new()
        .name("btb-host".into())
        .spawn(move || listen(reader, weak))
        .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot start a thread: {e}")))?;
    Ok(HostInstance(inner))
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

/// Hears the broker: cancellations until it closes the socket.
fn listen(mut reader: UnixStream, inner: std::sync::Weak<Inner>) {
    loop {
        let message = protocol::read_frame::<ToHost>(&mut reader);
        let Some(inner) = inner.upgrade() else { return };
        let instance = HostInstance(inner);
        match message {
            Ok(Some(ToHost::Canceled { reason })) => {
                let Ok(reason) = CancellationReason::from_u32(reason) else {
                    continue;
                };
                let handlers: Vec<HostCanceledFn> = {
                    let mut life = instance.life();
                    if life.canceled.is_some() {
                        continue;
                    }
                    life.canceled = Some(reason);
                    life.handlers.iter().map(|(_, h)| Arc::clone(h)).collect()
                };
                instance.0.changed.notify_all();
                for h in handlers {
                    h(&instance, reason);
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                instance.life().closed = true;
                instance.0.changed.notify_all();
                return;
            }
        }
    }
}

impl HostInstance {
    fn life(&self) -> std::sync::MutexGuard<'_, Life> {
        self.0.life.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn send(&self, message: ToBroker) {
        self.0.link.send(message);
    }

    pub fn instance_id(&self) -> Uuid {
        self.0.instance_id
    }

    pub fn task_id(&self) -> Uuid {
        self.0.task_id
    }

    /// The registration's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn entry_point(&self) -> &str {
        &self.0.entry_point
    }

    pub fn app_id(&self) -> &str {
        &self.0.app_id
    }

    /// Application trigger arguments (a JSON object), or `None`.
    pub fn trigger_details(&self) -> Option<&serde_json::Value> {
        self.0.trigger_details.as_ref()
    }

    pub fn progress(&self) -> u32 {
        self.0.progress.load(Ordering::Acquire)
    }

    /// Whether the broker holds a sleep inhibitor for this run (`is_network_requested`).
    pub fn is_network_granted(&self) -> bool {
        self.0.network_granted
    }

    /// Sets the progress; each change reaches the registration's progress handlers in the app.
    pub fn set_progress(&self, value: u32) {
        if self.0.progress.swap(value, Ordering::AcqRel) != value {
            self.send(ToBroker::Progress { value });
        }
    }

    /// Which attempt this run is (`BTB_ATTEMPT`; 1, then 2, 3… for retries, SPEC §12).
    pub fn attempt(&self) -> u32 {
        self.0.attempt
    }

    /// Asks for another attempt (SPEC §12), as exiting with status 75 (EX_TEMPFAIL) does:
    /// after `after` instead of the retry policy's delay, `message` kept with the run.
    /// `UNSUPPORTED` with a broker of protocol version 1.
    pub fn request_retry(
        &self,
        after: Option<std::time::Duration>,
        message: Option<String>,
    ) -> Result<()> {
        self.check_version("request_retry")?;
        self.send(ToBroker::Retry {
            after_ms: after.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            message,
        });
        Ok(())
    }

    /// Sets what the run hands back: a JSON object of at most 64 KiB (SPEC §12).
    pub fn set_output(&self, output: &serde_json::Value) -> Result<()> {
        crate::broker::instance::check_output(output)?;
        self.check_version("set_output")?;
        self.send(ToBroker::Output {
            output: output.clone(),
        });
        Ok(())
    }

    fn check_version(&self, what: &str) -> Result<()> {
        if self.0.version < 2 {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{what} needs a broker of protocol version 2; this one speaks version {}",
                    self.0.version
                ),
            ));
        }
        Ok(())
    }

    /// Marks the run as failed with `message`, whatever the exit status (the last report wins).
    pub fn report_failure(&self, message: impl Into<String>) {
        self.send(ToBroker::Failure {
            message: message.into(),
        });
    }

    pub fn canceled(&self) -> bool {
        self.life().canceled.is_some()
    }

    pub fn cancellation_reason(&self) -> Option<CancellationReason> {
        self.life().canceled
    }

    /// Adds a canceled handler (called on the listening thread, at once if already canceled);
    /// returns a token for [`HostInstance::remove_canceled`].
    pub fn add_canceled(&self, handler: HostCanceledFn) -> u64 {
        let mut life = self.life();
        life.next_token += 1;
        let token = life.next_token;
        life.handlers.push((token, Arc::clone(&handler)));
        if let Some(reason) = life.canceled {
            drop(life);
            handler(self, reason);
        }
        token
    }

    pub fn remove_canceled(&self, token: u64) -> bool {
        let mut life = self.life();
        let before = life.handlers.len();
        life.handlers.retain(|(t, _)| *t != token);
        before != life.handlers.len()
    }

    /// A deferral, for code written against the in-process surface. The process is the run: it
    /// ends when the process exits, so a deferral only tells the broker (no run is kept alive).
    pub fn get_deferral(&self) -> HostDeferral {
        self.send(ToBroker::DeferralTaken);
        HostDeferral {
            instance: self.clone(),
            completed: AtomicBool::new(false),
        }
    }

    /// Waits until the instance is canceled (`Some(reason)`) or `timeout` passes (`None`).
    pub fn wait_canceled(&self, timeout: std::time::Duration) -> Option<CancellationReason> {
        let life = self.life();
        let (life, _) = self
            .0
            .changed
            .wait_timeout_while(life, timeout, |l| l.canceled.is_none() && !l.closed)
            .unwrap_or_else(PoisonError::into_inner);
        life.canceled
    }
}

/// A deferral taken in a host process.
pub struct HostDeferral {
    instance: HostInstance,
    completed: AtomicBool,
}

impl HostDeferral {
    /// Completes it; completing it again is `STATE`.
    pub fn complete(&self) -> Result<()> {
        if self.completed.swap(true, Ordering::AcqRel) {
            return Err(Error::state("this deferral was already completed"));
        }
        self.instance.send(ToBroker::DeferralCompleted);
        Ok(())
    }
}
