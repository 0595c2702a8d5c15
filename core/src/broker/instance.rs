//! One run of a registration (`IBackgroundTaskInstance`): id, progress, trigger details,
//! deferrals, cancellation, and how it ends. The broker (`runtime.rs`) creates and finishes them.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use uuid::Uuid;

use super::Broker;
use super::backend::Backend;
use super::registration::Registration;
use crate::error::{Error, Result};
use crate::model::{CancellationReason, TaskOutcome};

/// A run function: what executes an instance (an entry point's handler, a group's or the system's
/// background-activated handler). It reports failure with [`Instance::report_failure`]; a panic is
/// a failure too.
pub type RunFn = Arc<dyn Fn(&Instance) + Send + Sync>;

/// How a task is executed.
#[derive(Clone)]
pub enum Handler {
    /// Called on a btb worker thread.
    Call(RunFn),
    /// Delivered through the system's pull queue (`next_event`): the host runs it on its own
    /// thread and then calls [`Instance::finish_run`].
    Queued,
}

/// A canceled handler: `(instance, reason)`.
pub type CanceledFn = Arc<dyn Fn(&Instance, CancellationReason) + Send + Sync>;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Completion {
    pub instance_id: Uuid,
    pub outcome: TaskOutcome,
    /// Failure message, or the reason spelled out for a cancellation.
    pub message: Option<String>,
    pub reason: Option<CancellationReason>,
    pub last_progress: u32,
    /// Which attempt ended (1-based).
    #[serde(default = "crate::model::first_attempt")]
    pub attempt: u32,
    /// With outcome `RETRY`: when the next attempt is due (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at_ms: Option<i64>,
    /// What the run handed back (a JSON object), if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
}

/// The largest output a run may hand back, as JSON text.
pub const MAX_OUTPUT: usize = 64 * 1024;

/// A run's request for another attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RetryRequest {
    /// Instead of the policy's delay.
    pub(crate) after_ms: Option<u64>,
    pub(crate) message: Option<String>,
}

impl Completion {
    /// `Ok` when the run succeeded, else an error describing the failure or cancellation
    /// (Windows `CheckResult`).
    pub fn check_result(&self) -> Result<()> {
        match self.outcome {
            TaskOutcome::Succeeded => Ok(()),
            _ => Err(Error::new(
                crate::ErrorKind::State,
                self.message
                    .clone()
                    .unwrap_or_else(|| self.outcome.name().to_owned()),
            )),
        }
    }
}

#[derive(Default)]
pub(crate) struct Life {
    pub(crate) deferrals: u32,
    pub(crate) run_returned: bool,
    pub(crate) failure: Option<String>,
    pub(crate) canceled: Option<CancellationReason>,
    pub(crate) canceled_handlers: Vec<(u64, CanceledFn)>,
    pub(crate) next_token: u64,
    /// Completed or abandoned: nothing it does counts any more.
    pub(crate) done: bool,
    /// Handed to a host through the pull queue (so its cancellation is queued too).
    pub(crate) queued: bool,
    /// A worker runs it and has not come back from it (counted in `State::busy_workers` until
    /// it does, or until the instance is abandoned).
    pub(crate) on_worker: bool,
    /// The host process running it (an `exec` entry point), until that process has exited.
    pub(crate) child: Option<super::exec::Child>,
    /// A worker is starting its host process: `child` is not there yet, but will be.
    pub(crate) starting_host: bool,
    /// It ran in this client process, whose run file goes once its record is committed.
    pub(crate) client_run_file: Option<u32>,
    /// What the host process wrote: the ends of its stdout and stderr.
    pub(crate) output: Option<(Option<String>, Option<String>)>,
    /// The sleep inhibitor held for the run (`is_network_requested`); closed when it ends.
    pub(crate) inhibitor: Option<std::os::fd::OwnedFd>,
    /// The run asked for another attempt (the last request wins).
    pub(crate) retry: Option<RetryRequest>,
    /// What the run handed back: a JSON object, as text.
    pub(crate) result: Option<String>,
}

impl Life {
    /// The canceled handlers added so far, to call with no lock held.
    pub(crate) fn canceled_handler_list(&self) -> Vec<CanceledFn> {
        self.canceled_handlers
            .iter()
            .map(|(_, h)| Arc::clone(h))
            .collect()
    }
}

/// What a run reports about how it ends (the last report of each kind wins).
pub(crate) enum Report<'a> {
    Failure(&'a str),
    Retry(&'a RetryRequest),
    /// A JSON object, checked already.
    Output(&'a serde_json::Value),
}

/// Where an instance reports what it does: this process's broker (`impl RunSink for Broker`), or
/// — for a run this process executes for another process's broker — the
/// [`Link`](crate::link::Link) to that broker: a run handed to a client, or an exec host's
/// (`host::HostSink`). What the run reports (failure, output, retry) is kept in its [`Life`];
/// the broker and a client's link read it there when the run has finished.
pub(crate) trait RunSink: Send + Sync {
    /// The run reported how it ends, before it is kept in its `Life`. Nothing to do where the
    /// run's end reads it there; an exec host, whose run ends when its process exits, tells
    /// its broker at once. `Err`: not taken (it is not kept either).
    fn reported(&self, _report: Report<'_>) -> Result<()> {
        Ok(())
    }
    /// Whether the run may say its run function returned (`Instance::finish_run`): an exec
    /// host's run ends with its process instead.
    fn check_finish_run(&self) -> Result<()> {
        Ok(())
    }
    /// The progress changed to `value`.
    fn progress(&self, instance: &Instance, value: u32);
    /// A deferral was taken (`true`) or completed (`false`).
    fn deferral(&self, taken: bool);
    /// Calls canceled handlers on a btb thread.
    fn canceled(&self, instance: &Instance, handlers: Vec<CanceledFn>, reason: CancellationReason);
    /// The run function returned and every deferral completed.
    fn finished(self: Arc<Self>, instance: &Instance);
}

impl RunSink for Broker {
    fn progress(&self, instance: &Instance, value: u32) {
        self.progress_changed(instance, value);
    }

    fn deferral(&self, _taken: bool) {}

    fn canceled(&self, instance: &Instance, handlers: Vec<CanceledFn>, reason: CancellationReason) {
        self.notify_canceled(instance, handlers, reason);
    }

    fn finished(self: Arc<Self>, instance: &Instance) {
        self.complete(instance);
    }
}

/// The instance protocol (SPEC §5), as an exec host speaks it too.
impl RunSink for crate::link::Link {
    fn progress(&self, _instance: &Instance, value: u32) {
        self.send(crate::protocol::ToBroker::Progress { value });
    }

    fn deferral(&self, taken: bool) {
        self.send(if taken {
            crate::protocol::ToBroker::DeferralTaken
        } else {
            crate::protocol::ToBroker::DeferralCompleted
        });
    }

    /// On the thread that heard the cancellation — the run's own reader, owned by the client and
    /// joined when the run ends (the broker's notifier is in another process): no thread per
    /// cancellation.
    fn canceled(&self, instance: &Instance, handlers: Vec<CanceledFn>, reason: CancellationReason) {
        for handler in handlers {
            let _call = super::AppCall::enter();
            if let Err(panic) =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(instance, reason)))
            {
                log::error!(target: "btb", "a canceled handler panicked: {}", super::panic_message(&panic));
            }
        }
    }

    fn finished(self: Arc<Self>, instance: &Instance) {
        let (failure, retry, output) = {
            let mut life = instance.life();
            if life.done {
                return;
            }
            life.done = true;
            (
                life.failure.clone(),
                life.retry.clone(),
                life.result.clone(),
            )
        };
        let mut word = Vec::new();
        if let Some(output) = output.and_then(|t| serde_json::from_str(&t).ok()) {
            word.push(crate::protocol::ToBroker::Output { output });
        }
        if let Some(r) = retry {
            word.push(crate::protocol::ToBroker::Retry {
                after_ms: r.after_ms,
                message: r.message,
            });
        }
        if let Some(message) = failure {
            word.push(crate::protocol::ToBroker::Failure { message });
        }
        // The last word of this run; the connection may serve the next one (the broker hangs up
        // a connection it will not use again).
        word.push(crate::protocol::ToBroker::Finished);
        self.last_word(word);
    }
}

pub(crate) struct Inner {
    pub(crate) id: Uuid,
    pub(crate) sink: Arc<dyn RunSink>,
    pub(crate) task: Registration,
    pub(crate) trigger_details: Option<serde_json::Value>,
    pub(crate) started_ms: i64,
    pub(crate) attempt: u32,
    pub(crate) progress: AtomicU32,
    pub(crate) network_granted: AtomicBool,
    pub(crate) life: Mutex<Life>,
}

/// One run of a registered task. Cheap to clone; clones share the run.
#[derive(Clone)]
pub struct Instance(pub(crate) Arc<Inner>);

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("instance_id", &self.0.id)
            .field("task", &self.0.task.name())
            .finish()
    }
}

impl PartialEq for Instance {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Instance {
    /// A run of `record` in `broker`.
    pub(crate) fn new(
        broker: &Arc<Broker>,
        record: Arc<crate::model::TaskRecord>,
        trigger_details: Option<serde_json::Value>,
        started_ms: i64,
        attempt: u32,
    ) -> Instance {
        Self::with_id(
            broker,
            new_instance_id(),
            record,
            trigger_details,
            started_ms,
            attempt,
        )
    }

    /// A run of this broker under a given id (a parked run resumes under its own).
    pub(crate) fn with_id(
        broker: &Arc<Broker>,
        id: Uuid,
        record: Arc<crate::model::TaskRecord>,
        trigger_details: Option<serde_json::Value>,
        started_ms: i64,
        attempt: u32,
    ) -> Instance {
        let home: Arc<dyn Backend> = Arc::clone(broker) as Arc<dyn Backend>;
        Self::with_sink(
            id,
            Registration::new(home, record),
            trigger_details,
            started_ms,
            attempt,
            Arc::clone(broker) as Arc<dyn RunSink>,
        )
    }

    /// An instance with a given id (a run handed over by a broker has the broker's id).
    pub(crate) fn with_sink(
        id: Uuid,
        task: Registration,
        trigger_details: Option<serde_json::Value>,
        started_ms: i64,
        attempt: u32,
        sink: Arc<dyn RunSink>,
    ) -> Instance {
        Instance(Arc::new(Inner {
            id,
            sink,
            task,
            trigger_details,
            started_ms,
            attempt,
            progress: AtomicU32::new(0),
            network_granted: AtomicBool::new(false),
            life: Mutex::new(Life::default()),
        }))
    }

    pub(crate) fn life(&self) -> MutexGuard<'_, Life> {
        self.0.life.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn instance_id(&self) -> Uuid {
        self.0.id
    }

    /// The registration this is a run of.
    pub fn task(&self) -> &Registration {
        &self.0.task
    }

    /// Application trigger arguments (a JSON object), or `None` for other triggers.
    pub fn trigger_details(&self) -> Option<&serde_json::Value> {
        self.0.trigger_details.as_ref()
    }

    pub fn started_ms(&self) -> i64 {
        self.0.started_ms
    }

    /// Which attempt this run is: 1, then 2, 3… for retries (SPEC §12).
    pub fn attempt(&self) -> u32 {
        self.0.attempt
    }

    /// Asks for another attempt when this run ends (SPEC §12): after `after` (instead of the
    /// retry policy's delay; the default policy's when the task has none), with `message` kept
    /// in the run's record. The run still ends as it would; its record says `RETRY`.
    ///
    /// In an exec host it reaches the broker at once (as exiting with status 75 does);
    /// `UNSUPPORTED` there when the broker speaks protocol version 1.
    pub fn request_retry(
        &self,
        after: Option<std::time::Duration>,
        message: Option<String>,
    ) -> Result<()> {
        let retry = RetryRequest {
            after_ms: after.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            message,
        };
        self.0.sink.reported(Report::Retry(&retry))?;
        self.life().retry = Some(retry);
        Ok(())
    }

    /// Sets what the run hands back (SPEC §12): a JSON object of at most 64 KiB, kept with the
    /// run's record and given to completed handlers. The last one set wins. In an exec host it
    /// reaches the broker at once; `UNSUPPORTED` there when the broker speaks protocol version 1.
    pub fn set_output(&self, output: &serde_json::Value) -> Result<()> {
        let text = check_output(output)?;
        self.0.sink.reported(Report::Output(output))?;
        self.life().result = Some(text);
        Ok(())
    }

    /// What the run set with [`Instance::set_output`], if anything.
    pub fn output(&self) -> Option<serde_json::Value> {
        self.life()
            .result
            .as_deref()
            .and_then(|t| serde_json::from_str(t).ok())
    }

    pub fn progress(&self) -> u32 {
        self.0.progress.load(Ordering::Acquire)
    }

    /// Sets the progress; each change reaches the registration's progress handlers.
    pub fn set_progress(&self, value: u32) {
        if self.0.progress.swap(value, Ordering::AcqRel) != value && !self.life().done {
            self.0.sink.progress(self, value);
        }
    }

    /// Times resource policy suspended the task. btb never suspends a task: always 0.
    pub fn suspended_count(&self) -> u32 {
        0
    }

    /// Whether the broker holds a sleep inhibitor for this run (`is_network_requested`).
    pub fn is_network_granted(&self) -> bool {
        self.0.network_granted.load(Ordering::Acquire)
    }

    pub fn canceled(&self) -> bool {
        self.life().canceled.is_some()
    }

    pub fn cancellation_reason(&self) -> Option<CancellationReason> {
        self.life().canceled
    }

    /// Takes a deferral: the instance completes only when every deferral is completed (and the run
    /// function has returned). Deferrals do not extend time limits.
    pub fn get_deferral(&self) -> Result<Deferral> {
        let mut life = self.life();
        if life.done {
            return Err(Error::state(format!(
                "instance {} has already completed",
                self.0.id
            )));
        }
        life.deferrals += 1;
        drop(life);
        self.0.sink.deferral(true);
        Ok(Deferral {
            instance: self.clone(),
            completed: AtomicBool::new(false),
        })
    }

    /// Adds a canceled handler (called on a btb thread, at once if already canceled); returns a
    /// token for [`Instance::remove_canceled`].
    pub fn add_canceled(&self, handler: CanceledFn) -> u64 {
        let mut life = self.life();
        life.next_token += 1;
        let token = life.next_token;
        life.canceled_handlers.push((token, Arc::clone(&handler)));
        if let Some(reason) = life.canceled {
            drop(life);
            self.call_canceled(vec![handler], reason);
        }
        token
    }

    /// Calls canceled handlers on a btb thread (see [`RunSink::canceled`]).
    fn call_canceled(&self, handlers: Vec<CanceledFn>, reason: CancellationReason) {
        self.0.sink.canceled(self, handlers, reason);
    }

    /// The broker canceled a run handed to this client process (its reader thread calls this).
    pub(crate) fn canceled_by_broker(&self, reason: CancellationReason) {
        let mut life = self.life();
        if life.canceled.is_some() || life.done {
            return;
        }
        life.canceled = Some(reason);
        let handlers = life.canceled_handler_list();
        drop(life);
        self.call_canceled(handlers, reason);
    }

    /// The run and its deferrals are over: the broker records it (or, for a run handed to this
    /// client, hears how it ended).
    fn complete_run(&self) {
        Arc::clone(&self.0.sink).finished(self);
    }

    /// Removes a canceled handler; `false` if the token is unknown.
    pub fn remove_canceled(&self, token: u64) -> bool {
        let mut life = self.life();
        let before = life.canceled_handlers.len();
        life.canceled_handlers.retain(|(t, _)| *t != token);
        before != life.canceled_handlers.len()
    }

    /// Waits until the run is canceled (`Some(reason)`) or `timeout` passes (`None`): for a run
    /// function, or an exec host's main thread, that has nothing else to wait for.
    pub fn wait_canceled(&self, timeout: std::time::Duration) -> Option<CancellationReason> {
        // A canceled handler that wakes this thread, for the length of the wait.
        let woken = Arc::new((Mutex::new(None), std::sync::Condvar::new()));
        let waking = Arc::clone(&woken);
        let token = self.add_canceled(Arc::new(move |_: &Instance, reason| {
            *waking.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
            waking.1.notify_all();
        }));
        let heard = woken.0.lock().unwrap_or_else(|p| p.into_inner());
        let (heard, _) = woken
            .1
            .wait_timeout_while(heard, timeout, |r| r.is_none())
            .unwrap_or_else(|p| p.into_inner());
        let reason = *heard;
        drop(heard);
        self.remove_canceled(token);
        reason
    }

    /// Marks the run as failed with `message` (the run still ends when it returns and its
    /// deferrals complete). The last report wins.
    pub fn report_failure(&self, message: impl Into<String>) {
        let message = message.into();
        // A failure is always taken: only retries and output depend on the broker's version.
        let _ = self.0.sink.reported(Report::Failure(&message));
        self.life().failure = Some(message);
    }

    /// Whether a failure has been reported for this run.
    pub fn failed(&self) -> bool {
        self.life().failure.is_some()
    }

    /// Tells btb the run function returned (for queued instances run by a host; btb calls it
    /// itself after a run function). Calling it twice is `STATE`.
    pub fn finish_run(&self) -> Result<()> {
        self.0.sink.check_finish_run()?;
        let mut life = self.life();
        if life.run_returned {
            return Err(Error::state(format!(
                "instance {} already finished its run",
                self.0.id
            )));
        }
        life.run_returned = true;
        let complete = life.deferrals == 0 && !life.done;
        drop(life);
        if complete {
            self.complete_run();
        }
        Ok(())
    }
}

/// Keeps an instance alive after its run function returns, until completed.
pub struct Deferral {
    instance: Instance,
    completed: AtomicBool,
}

impl Deferral {
    /// Completes the deferral; completing it again is `STATE`.
    pub fn complete(&self) -> Result<()> {
        if self.completed.swap(true, Ordering::AcqRel) {
            return Err(Error::state("this deferral was already completed"));
        }
        let mut life = self.instance.life();
        life.deferrals -= 1;
        let complete = life.deferrals == 0 && life.run_returned && !life.done;
        drop(life);
        self.instance.0.sink.deferral(false);
        if complete {
            self.instance.complete_run();
        }
        Ok(())
    }

    pub fn instance(&self) -> &Instance {
        &self.instance
    }
}

/// A random (version 4) id for a new run, from this thread's fast generator: unique, not secret
/// (ids are not capabilities: the control socket is the app user's own), and without the
/// `getrandom` system call of `Uuid::new_v4` on the path of every run's start.
///
/// The generator is seeded from the OS (`Uuid::new_v4`) at a thread's first id and again after a
/// fork: a forked child would otherwise go on with its parent's sequence, and a child that opens
/// the parent's store once the parent closed it would give its runs the ids the parent's next
/// runs had (and the store keeps one record per id).
///
/// The generator is btb's own (not fastrand's per-thread global, which an app on the same thread
/// may seed: its ids would repeat across processes).
fn new_instance_id() -> Uuid {
    thread_local!(static IDS: std::cell::RefCell<(Option<u64>, fastrand::Rng)> =
        const { std::cell::RefCell::new((None, fastrand::Rng::with_seed(0))) });
    let forks = btb_os::forks();
    IDS.with_borrow_mut(|(seeded_at, rng)| {
        if *seeded_at != Some(forks) {
            rng.seed(Uuid::new_v4().as_u64_pair().0);
            *seeded_at = Some(forks);
        }
        uuid::Builder::from_random_bytes(rng.u128(..).to_le_bytes()).into_uuid()
    })
}

/// Checks what a run hands back: a JSON object of at most [`MAX_OUTPUT`] bytes; returns its text.
pub(crate) fn check_output(output: &serde_json::Value) -> Result<String> {
    if !output.is_object() {
        return Err(Error::invalid(format!(
            "a run's output must be a JSON object, not {}",
            match output {
                serde_json::Value::Null => "null",
                serde_json::Value::Bool(_) => "a boolean",
                serde_json::Value::Number(_) => "a number",
                serde_json::Value::String(_) => "a string",
                serde_json::Value::Array(_) => "an array",
                serde_json::Value::Object(_) => "an object",
            }
        )));
    }
    let text = output.to_string();
    if text.len() > MAX_OUTPUT {
        return Err(Error::invalid(format!(
            "a run's output is {} bytes as JSON; the limit is {MAX_OUTPUT} bytes",
            text.len()
        )));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_distinct_version_4_uuids_on_every_thread() {
        let ids: Vec<Uuid> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..10_000).map(|_| new_instance_id()).collect::<Vec<_>>()))
                .collect();
            threads
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .collect()
        });
        assert!(
            ids.iter()
                .all(|id| id.get_version_num() == 4 && id.get_variant() == uuid::Variant::RFC4122)
        );
        let distinct: std::collections::HashSet<&Uuid> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }
}
