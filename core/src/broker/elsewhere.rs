//! Runs that go on elsewhere (SPEC §11): a run that a broker of this store handed to a client
//! process, and that the client still runs after that broker died. The broker that opens the
//! store next finds it by its run file (`runfile.rs`, [`super::retry::recover_cut_off`]): its
//! task counts as running — a fire latches, nothing starts it again — until the client lets go of
//! the file. Then the run is recorded as the client said it ended (the last word it wrote there),
//! or as cut off by the broker's death when it said nothing (it died too).
//!
//! `btb-elsewhere` waits for that: inotify on the run files' directory (a client closing or
//! removing its file) and an eventfd for `close`, in one `poll` without a timeout. It exists only
//! while such runs do, and is owned and joined like every thread of the broker.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::event::{EventfdFlags, PollFd, PollFlags, eventfd, poll};
use rustix::fs::inotify::{self, CreateFlags, WatchFlags};

use super::{Broker, State};
use crate::model::{RetryPolicy, RunRecord, TaskOutcome};
use crate::protocol::{Decoder, ToBroker};
use crate::runfile::Found;
use crate::store::{Latched, RunStart};

/// A run that goes on in a client process of a broker that died.
pub(crate) struct Elsewhere {
    pub(crate) start: RunStart,
}

/// The last word a client wrote in a run file, if it wrote one that ends the run.
struct LastWord {
    failure: Option<String>,
    retry: Option<(Option<u64>, Option<String>)>,
    output: Option<String>,
}

fn last_word(bytes: &[u8]) -> Option<LastWord> {
    let mut decoder = Decoder::default();
    decoder.push(bytes);
    let mut word = LastWord {
        failure: None,
        retry: None,
        output: None,
    };
    while let Ok(Some(message)) = decoder.next_message::<ToBroker>() {
        match message {
            ToBroker::Failure { message } => word.failure = Some(message),
            ToBroker::Retry { after_ms, message } => word.retry = Some((after_ms, message)),
            ToBroker::Output { output } => word.output = Some(output.to_string()),
            ToBroker::Finished => return Some(word),
            _ => {}
        }
    }
    None
}

/// How a run that its broker's death cut off is recorded, from what was found of it, and the
/// retry to latch that its policy (or its own request) asks for.
pub(crate) fn record_of(
    start: &RunStart,
    found: &Found,
    policy: Option<RetryPolicy>,
    now: i64,
) -> (RunRecord, Option<Latched>) {
    let mut run = RunRecord {
        instance_id: start.instance_id,
        task_id: start.task_id,
        trigger_kind: start.trigger_kind,
        trigger_details: start.trigger_details.clone(),
        started_ms: start.started_ms,
        ended_ms: now.max(start.started_ms),
        outcome: TaskOutcome::Failed,
        reason: None,
        message: None,
        last_progress: 0,
        stdout: None,
        stderr: None,
        attempt: start.attempt,
        retry_at_ms: None,
        output: None,
    };
    let word = match found {
        Found::Ended(bytes) => last_word(bytes),
        Found::Nothing | Found::Running => None,
    };
    let Some(word) = word else {
        let why = match found {
            Found::Ended(_) => {
                "the broker died during the run, and the client process that ran it ended without finishing it"
            }
            _ => "the broker died during the run",
        };
        let (outcome, message, retry_at_ms, retry) = super::retry::cut_off(
            policy,
            start.attempt,
            start.trigger_details.clone(),
            now,
            why,
        );
        run.outcome = outcome;
        run.message = Some(message);
        run.retry_at_ms = retry_at_ms;
        return (run, retry);
    };
    run.output = word.output;
    let wanted = word.retry.is_some()
        || (word.failure.is_some() && policy.is_some_and(|p| p.retry_on_failure));
    let said = word
        .retry
        .as_ref()
        .and_then(|(_, m)| m.clone())
        .or(word.failure.clone());
    if wanted {
        let policy = policy.unwrap_or_default();
        let after_ms = word.retry.and_then(|(after, _)| after);
        let Some(at) = super::retry::next_attempt_at(&policy, start.attempt, after_ms, now) else {
            run.outcome = TaskOutcome::Failed;
            run.message = Some(super::retry::gave_up(start.attempt, said.as_deref()));
            return (run, None);
        };
        run.outcome = TaskOutcome::Retry;
        run.message = said;
        run.retry_at_ms = Some(at);
        let next = Latched {
            details: start.trigger_details.clone(),
            attempt: start.attempt + 1,
            not_before: Some(at),
        };
        return (run, Some(next));
    }
    match word.failure {
        Some(m) => {
            run.outcome = TaskOutcome::Failed;
            run.message = Some(m);
        }
        None => run.outcome = TaskOutcome::Succeeded,
    }
    (run, None)
}

impl State {
    /// Whether a run of `task_id` goes on in a client process of a broker that died.
    pub(crate) fn runs_elsewhere(&self, task_id: &uuid::Uuid) -> bool {
        self.elsewhere.contains_key(task_id)
    }

    /// When the run of `task_id` that goes on elsewhere started.
    pub(crate) fn elsewhere_since(&self, task_id: &uuid::Uuid) -> Option<i64> {
        self.elsewhere.get(task_id).map(|e| e.start.started_ms)
    }

    /// Tells `btb-elsewhere` to end (at close).
    pub(super) fn stop_elsewhere(&mut self) {
        if let Some(stop) = self.elsewhere_stop.take() {
            let _ = rustix::io::write(&*stop, &1u64.to_ne_bytes());
        }
    }
}

impl Broker {
    /// Counts `runs` as running until their clients let go of them (at open, before anything
    /// runs), and starts `btb-elsewhere` to hear when they do.
    pub(crate) fn watch_elsewhere(self: &Arc<Self>, dir: PathBuf, runs: Vec<RunStart>) {
        if runs.is_empty() {
            return;
        }
        let watched = (|| -> rustix::io::Result<(OwnedFd, OwnedFd)> {
            let inotify = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
            inotify::add_watch(
                &inotify,
                &dir,
                WatchFlags::CLOSE_WRITE | WatchFlags::DELETE | WatchFlags::DELETE_SELF,
            )?;
            let stop = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
            Ok((inotify, stop))
        })();
        let mut st = self.lock();
        for start in runs {
            log::warn!(
                target: "btb",
                "instance {} of task {}: its broker died, and a client process still runs it: the task counts as running until that ends",
                start.instance_id,
                start.task_id
            );
            st.elsewhere.insert(start.task_id, Elsewhere { start });
        }
        let (inotify, stop) = match watched {
            Ok(fds) => fds,
            Err(e) => {
                // Without a watch the runs are found ended at the next open instead.
                log::error!(target: "btb", "cannot watch the run files in {}: {e}", dir.display());
                return;
            }
        };
        let stop = Arc::new(stop);
        st.elsewhere_stop = Some(Arc::clone(&stop));
        drop(st);
        let weak = Arc::downgrade(self);
        let spawned = self.threads.spawn("btb-elsewhere", move || {
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
            loop {
                let Some(broker) = weak.upgrade() else { return };
                if broker.settle_elsewhere(&dir) == 0 {
                    return;
                }
                drop(broker);
                let mut fds = [
                    PollFd::new(&inotify, PollFlags::IN),
                    PollFd::new(&*stop, PollFlags::IN),
                ];
                if let Err(e) = poll(&mut fds, None)
                    && e != rustix::io::Errno::INTR
                {
                    log::error!(target: "btb", "btb-elsewhere: {e}");
                    return;
                }
                if fds[1].revents().contains(PollFlags::IN) {
                    return; // closing
                }
                let mut reader = inotify::Reader::new(&inotify, &mut buf);
                while reader.next().is_ok() {} // which file does not matter: all are probed
            }
        });
        if let Err(e) = spawned {
            log::error!(target: "btb", "cannot start the thread that waits for runs in client processes: {e}");
        }
    }

    /// Records the runs that went on elsewhere and have ended; returns how many still go on.
    fn settle_elsewhere(self: &Arc<Self>, dir: &Path) -> usize {
        let watched: Vec<RunStart> = {
            let st = self.lock();
            if st.stopping {
                return 0;
            }
            st.elsewhere.values().map(|e| e.start.clone()).collect()
        };
        // The files are read with no lock held.
        let ended: Vec<(RunStart, Found)> = watched
            .into_iter()
            .map(|start| {
                let found = crate::runfile::probe(dir, start.instance_id);
                (start, found)
            })
            .filter(|(_, found)| *found != Found::Running)
            .collect();
        let mut st = self.lock();
        let now = self.clock.now_ms();
        let mut settled = std::collections::HashSet::new();
        for (start, found) in ended {
            if st.elsewhere.remove(&start.task_id).is_none() {
                continue;
            }
            settled.insert(start.instance_id);
            let task_id = start.task_id;
            let policy = st.registry.get(&task_id).and_then(|r| r.retry_policy);
            let (run, retry) = record_of(&start, &found, policy, now);
            log::info!(
                target: "btb",
                "run {} of task {task_id}, which went on in a client process after its broker died, ended {}{}",
                run.instance_id,
                run.outcome.name(),
                run.message.as_deref().map_or(String::new(), |m| format!(": {m}"))
            );
            if !st.registry.contains(&task_id) {
                continue; // unregistered meanwhile: its marker went with it
            }
            if let Some(next) = retry
                && !st.pending.contains_key(&task_id)
            {
                let at = next.not_before;
                let details = next.details.and_then(|d| serde_json::from_str(&d).ok());
                st.latch(task_id, details, false, next.attempt, at);
                st.unpersisted.push(task_id);
                let mut changes = Vec::new();
                st.persist_latches(&mut changes);
                self.commit(&mut st, changes);
                if let Some(at) = at {
                    st.wake_broker_by(at, &self.waker);
                }
            }
            self.announce(&mut st, &run);
            // Also drops the run's marker.
            self.writer
                .enqueue(super::writer::Write::Run(run, self.policy.history_limit));
        }
        let left = st.elsewhere.len();
        if left == 0 {
            st.elsewhere_stop = None;
        }
        self.changed();
        self.dispatch(&mut st, now);
        let written = self.writer.last();
        drop(st);
        // Their files go once their records are committed: a broker that dies before finds them.
        // Not waited for through a failing store (a close would have to abandon this thread):
        // the files stay for the next broker then.
        if !settled.is_empty() && self.writer.wait_committed(written).is_ok() {
            crate::runfile::sweep(dir, &|id| !settled.contains(&id));
        }
        left
    }
}
