//! The worker pool and the pull queue (SPEC §4): workers are spawned on demand, at most
//! `max_concurrent` busy; each job's entry point is resolved in the order of SPEC §4; a job whose
//! handler is `Queued` goes to the pull queue for a host to run on its own thread.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use super::{AppCall, Broker, Handler, Instance, ON_BTB_THREAD, panic_message};
use crate::model::CancellationReason;

/// An entry of the pull queue (`System::next_event`).
#[derive(Debug, Clone)]
pub enum Event {
    /// Run this instance on the host's thread, then call `Instance::finish_run`.
    Run(Instance),
    /// A queued instance was canceled: stop it and finish the run.
    Canceled(Instance, CancellationReason),
}

/// A run for a worker, with the numbers of the store writes it waits for (`writer.rs`).
pub(super) struct Job {
    pub(super) instance: Instance,
    /// Before it is handed to a client process: its start marker, its one-shot spent, its
    /// latch taken. A run that waited for a handler needs only its park's write here (its
    /// marker kept, marked parked): recovery tells from the run files whether it was handed
    /// (SPEC §11, `retry.rs`), so the hand-over waits for no second commit.
    pub(super) handed_after: u64,
    /// Before it runs in this process or an `exec` host (no run file says it started there):
    /// every write its dispatch queued.
    pub(super) after: u64,
}

impl Broker {
    pub(super) fn spawn_worker(self: &Arc<Self>) {
        let shared = Arc::clone(self);
        if let Err(e) = self
            .threads
            .spawn("btb-worker", move || shared.worker_loop())
        {
            log::error!(target: "btb", "cannot start a worker thread: {e}");
        }
    }

    pub(super) fn worker_loop(self: &Arc<Self>) {
        ON_BTB_THREAD.with(|f| f.set(true));
        let mut done: Option<Instance> = None;
        loop {
            let mut st = self.lock();
            if let Some(instance) = done.take() {
                // Back from a job, having let go of everything else it held: only now does the
                // worker stop counting for `wait_idle` (unless its instance was abandoned).
                let mut life = instance.life();
                if std::mem::take(&mut life.on_worker) {
                    st.busy_workers -= 1;
                    self.changed();
                }
            }
            let Job {
                instance,
                handed_after,
                after,
            } = loop {
                if st.stopping {
                    return;
                }
                if let Some(job) = st.jobs.pop_front() {
                    st.busy_workers += 1;
                    job.instance.life().on_worker = true;
                    break job;
                }
                st.idle_workers += 1;
                st = st.wait(&self.work_cv);
                st.idle_workers -= 1;
            };
            drop(st);
            let job = instance.clone();
            // A run that no process can take (SPEC §12) starts the app now, while its start record
            // is committed: the app's start-up overlaps the fsync. It is handed only after that
            // commit, like any run (§11), and parks below if no handler came meanwhile.
            // The manifest in force for this run (servicing may replace it meanwhile).
            let manifest = self.manifest();
            if self.activates_for(&manifest, &instance) {
                self.activate();
            }
            // Unlocked: the writes this run depends on (its one-shot spent, its latch taken). A
            // failing store holds the run here until they are committed (fail-stop, SPEC §7).
            if !self.writer.wait_done(handed_after) {
                not_started(&instance);
                done = Some(job);
                continue;
            }
            if instance.task().record().is_network_requested {
                self.inhibit_sleep(&instance);
            }

            // SPEC §4: an executable declared in the manifest comes first.
            let exec = instance
                .task()
                .task_entry_point()
                .and_then(|ep| manifest.find(ep).and_then(|d| d.exec.clone()));
            if let Some(argv) = exec {
                if !self.writer.wait_done(after) {
                    not_started(&instance);
                    done = Some(job);
                    continue;
                }
                self.run_exec(&instance, &argv);
                let _ = instance.finish_run();
                done = Some(job);
                continue;
            }
            let resolved = match self.resolve_anywhere(&instance) {
                Ok(Some(_)) if !self.writer.wait_done(after) => {
                    not_started(&instance);
                    done = Some(job);
                    continue;
                }
                resolved => resolved,
            };
            match resolved {
                Ok(Some(Handler::Call(run))) => {
                    let call = AppCall::enter();
                    let result = catch_unwind(AssertUnwindSafe(|| run(&instance)));
                    drop(call);
                    if let Err(panic) = result {
                        instance.report_failure(format!(
                            "the run function panicked: {}",
                            panic_message(&panic)
                        ));
                    }
                    let _ = instance.finish_run();
                }
                Ok(None) => {
                    // It ran in a client process, which reported how it ended.
                    let _ = instance.finish_run();
                    self.forget_client_run_file(&instance);
                }
                Ok(Some(Handler::Queued)) => {
                    // Under the state lock, like `cancel_task`: RUN always precedes CANCELED.
                    let mut st = self.lock();
                    let mut life = instance.life();
                    life.queued = true;
                    let canceled = life.canceled;
                    drop(life);
                    st.events.push_back(Event::Run(instance.clone()));
                    if let Some(reason) = canceled {
                        st.events.push_back(Event::Canceled(instance, reason));
                    }
                    self.changed();
                }
                Err(message) => {
                    // No handler anywhere: the run waits for a process that has one — unless this
                    // process has a resolver, which tried and failed (an app's bug, SPEC §12).
                    let resolver = self.handlers().resolver.is_some();
                    if resolver || !self.park(&instance, &message) {
                        instance.report_failure(message);
                        let _ = instance.finish_run();
                    } else {
                        self.activate(); // when the manifest says how to start the app
                    }
                }
            }
            done = Some(job);
        }
    }

    /// Whether a run will wait for a handler that only the app started by `activate` can offer:
    /// the manifest has `activate`, and nothing can run it now — no `exec` host, no handler here
    /// (nor a resolver, which fails it instead), no client process's offer.
    pub(super) fn activates_for(
        &self,
        manifest: &crate::manifest::Manifest,
        instance: &Instance,
    ) -> bool {
        if manifest.activate().is_none() {
            return false;
        }
        let record = instance.task().record();
        let exec = record
            .task_entry_point
            .as_deref()
            .and_then(|ep| manifest.find(ep))
            .is_some_and(|d| d.exec.is_some());
        if exec || self.handlers().resolver.is_some() {
            return false;
        }
        !self.has_handler(record)
    }

    /// `is_network_requested` (SPEC §4): holds a logind sleep inhibitor for the run, and says so
    /// in the instance. Called on the worker before the run starts, with no btb lock held: it
    /// waits for a D-Bus round trip, which the platform's `btb-dbus` thread reads, and that thread
    /// takes the state lock to report. `finish` closes the inhibitor, however the run ends.
    fn inhibit_sleep(&self, instance: &Instance) {
        let why = format!("background task {}", instance.task().name());
        // The platform lock only to take the inhibitor: the call waits with no lock held, so a
        // logind that does not answer delays this run alone (not other runs, nor `close`).
        let inhibitor = self
            .platform
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|p| p.inhibitor());
        let fd = inhibitor.and_then(|i| i.inhibit_sleep(self.app_id.as_str(), &why));
        let Some(fd) = fd else {
            return; // no logind (or a simulated system): not granted
        };
        let mut life = instance.life();
        if !life.done {
            life.inhibitor = Some(fd);
            instance
                .0
                .network_granted
                .store(true, std::sync::atomic::Ordering::Release);
        } // else it ended meanwhile (abandoned, closed): `fd` closes here
    }

    /// Entry point resolution for in-process runs, SPEC §4 order (after a manifest `exec`, which
    /// the worker checks first).
    /// Where a run goes (SPEC §4 after a manifest `exec`, and §10): a handler of this process
    /// registered under its name, else one of a client process (which runs it there: `None`),
    /// else this process's resolver, else a client's. A handler by name anywhere comes before an
    /// import guess. `Err` says where it looked.
    fn resolve_anywhere(
        self: &Arc<Self>,
        instance: &Instance,
    ) -> std::result::Result<Option<Handler>, String> {
        let record = instance.task().record();
        if let Ok(handler) = resolve(&self.handlers, record, false) {
            return Ok(Some(handler));
        }
        if self.run_in_client(instance, 2).is_ok() {
            return Ok(None);
        }
        match resolve(&self.handlers, record, true) {
            Ok(handler) => Ok(Some(handler)),
            Err(message) => match self.run_in_client(instance, 1) {
                Ok(()) => Ok(None),
                Err(elsewhere) => Err(format!("{message}, {elsewhere}")),
            },
        }
    }
}

/// A run that never started: the store could not be written before the system closed.
fn not_started(instance: &Instance) {
    instance.report_failure(
        "the run did not start: the store could not be written before the system closed",
    );
    let _ = instance.finish_run();
}

/// Finds what runs a task among one process's handlers (SPEC §4 order, after a manifest `exec`);
/// `Err` says what was looked for. The resolver is called with no lock held.
/// `use_resolver`: also ask the resolver (an import guess) for an entry point without a handler.
pub(crate) fn resolve(
    handlers: &std::sync::RwLock<super::Handlers>,
    record: &crate::model::TaskRecord,
    use_resolver: bool,
) -> std::result::Result<Handler, String> {
    let handlers = handlers.read().unwrap_or_else(|p| p.into_inner());
    match &record.task_entry_point {
        Some(ep) => {
            if let Some(h) = handlers.entry_points.get(ep) {
                return Ok(h.clone());
            }
            let resolver = handlers.resolver.clone().filter(|_| use_resolver);
            drop(handlers);
            let has_resolver = resolver.is_some();
            let found = resolver.and_then(|r| {
                let _call = AppCall::enter();
                r(ep)
            });
            if let Some(found) = found {
                return Ok(found);
            }
            Err(format!(
                "no handler for entry point {ep:?}: looked for a manifest exec host, an in-process \
                     handler registered under that name{}",
                if has_resolver {
                    " and an importable module path"
                } else {
                    ""
                }
            ))
        }
        None => {
            let group = record.task_group.as_ref().map(|g| g.id.clone());
            if let Some(h) = group
                .clone()
                .and_then(|g| handlers.activation.get(&Some(g)).cloned())
            {
                return Ok(h);
            }
            // The group's own handlers, wherever they were added (objects bound by use).
            if let Some(h) = group.as_deref().and_then(super::groups::handler) {
                return Ok(Handler::Call(h));
            }
            if let Some(h) = handlers.activation.get(&None) {
                return Ok(h.clone());
            }
            Err(format!(
                "task {:?} has no entry point and no background-activated handler is set{}",
                record.name,
                group
                    .map(|g| format!(" for task group {g:?} or the system"))
                    .unwrap_or_else(|| " for the system".into())
            ))
        }
    }
}
