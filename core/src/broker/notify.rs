//! The notifier thread: calls progress, completed and canceled handlers, in order, one at a time,
//! with no lock held; a panicking handler is logged and the next one still runs.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use uuid::Uuid;

use super::registration::Registration;
use super::{
    AppCall, Broker, CanceledFn, CompletedFn, Completion, Instance, ON_BTB_THREAD, panic_message,
};
use crate::model::CancellationReason;

/// Notes queued past which progress is coalesced per instance (`progress_changed`): handlers
/// that keep within it see every change, in order (SPEC §4).
const COALESCE_FROM: usize = 4096;

/// Work for the notifier thread.
pub(crate) enum Note {
    Progress(Registration, Uuid, u32),
    /// With the completed handlers registered when the run ended. (A handler that reads the
    /// history sees the run: `history` first waits for the writes queued before it.)
    Completed(Registration, Completion, Vec<(u64, CompletedFn)>),
    Canceled(Instance, Vec<CanceledFn>, CancellationReason),
}

impl Broker {
    /// Tells the completed handlers (and clients' feeds) of a run recorded without an instance of
    /// this broker: cut off by a broker's death, gone on in a client (`elsewhere.rs`), or failed
    /// while it waited for a handler (`activation.rs`) — as of any run that ends.
    pub(crate) fn announce(self: &Arc<Self>, st: &mut super::State, run: &crate::model::RunRecord) {
        let task_id = run.task_id;
        let handlers = self.handlers().completed.get(&task_id).cloned();
        if handlers.is_none() && !self.has_subscribers() {
            return;
        }
        let Some(record) = st.registry.get(&task_id).cloned() else {
            return;
        };
        let completion = Completion {
            instance_id: run.instance_id,
            outcome: run.outcome,
            message: run.message.clone(),
            reason: None,
            last_progress: 0,
            attempt: run.attempt,
            retry_at_ms: run.retry_at_ms,
            output: run
                .output
                .as_deref()
                .and_then(|o| serde_json::from_str(o).ok()),
        };
        let task = super::registration::Registration::new(
            Arc::clone(self) as Arc<dyn super::backend::Backend>,
            record,
        );
        st.notes.push_back(Note::Completed(
            task,
            completion,
            handlers.unwrap_or_default(),
        ));
        self.notify_cv.notify_one();
    }

    pub(crate) fn notify_canceled(
        &self,
        instance: &Instance,
        handlers: Vec<CanceledFn>,
        reason: CancellationReason,
    ) {
        let mut st = self.lock();
        st.notes
            .push_back(Note::Canceled(instance.clone(), handlers, reason));
        self.notify_cv.notify_one();
    }

    /// Queues a progress change. Once the handlers fall behind ([`COALESCE_FROM`] notes queued)
    /// it is coalesced per instance: a value not yet delivered is replaced by the newer one, so a
    /// run — or a host process — that reports progress faster than the handlers take it cannot
    /// grow the queue past that, and handlers see its latest value (the queue is bounded by the
    /// runs going, not by how often they report). Handlers that keep up see every value. An
    /// instance's progress still comes before its end: nothing is queued for it after that.
    pub(crate) fn progress_changed(&self, instance: &Instance, value: u32) {
        let mut st = self.lock();
        let id = instance.instance_id();
        if st.notes.len() >= COALESCE_FROM {
            let queued = st.notes.iter_mut().rev().find_map(|n| match n {
                Note::Progress(_, queued, v) if *queued == id => Some(v),
                _ => None,
            });
            if let Some(v) = queued {
                *v = value;
                return;
            }
        }
        st.notes
            .push_back(Note::Progress(instance.task().clone(), id, value));
        self.notify_cv.notify_one();
    }

    pub(super) fn notifier_loop(self: &Arc<Self>) {
        ON_BTB_THREAD.with(|f| f.set(true));
        let mut st = self.lock();
        loop {
            if st.closed && st.close_by.is_some_and(|by| Instant::now() >= by) {
                // Past the time `close` waits for us (a handler blocked past the grace): what is
                // left would call app code after `close` returned.
                let left = st.notes.len();
                if left > 0 {
                    log::warn!(target: "btb", "closed with {left} handler call(s) not made");
                }
                st.notes.clear();
                return;
            }
            let Some(note) = st.notes.pop_front() else {
                if st.stopping {
                    return;
                }
                st = st.wait(&self.notify_cv);
                continue;
            };
            st.notifying = true;
            drop(st);
            self.deliver(note);
            st = self.lock();
            st.notifying = false;
            self.changed();
        }
    }

    pub(super) fn deliver(&self, note: Note) {
        let call = |f: &dyn Fn()| {
            let _call = AppCall::enter();
            if let Err(panic) = catch_unwind(AssertUnwindSafe(f)) {
                log::error!(target: "btb", "a handler panicked: {}", panic_message(&panic));
            }
        };
        match note {
            Note::Progress(registration, instance_id, value) => {
                let list = self.handlers_for(|h| h.progress.get(&registration.task_id()).cloned());
                for (_, handler) in list {
                    call(&|| handler(&registration, instance_id, value));
                }
                if let Some(b) = self.broadcast.get() {
                    b.send(&crate::control::Reply::Progress {
                        task_id: registration.task_id(),
                        instance_id,
                        value,
                    });
                }
            }
            Note::Completed(registration, completion, handlers) => {
                for (_, handler) in handlers {
                    call(&|| handler(&registration, &completion));
                }
                // Client processes hear of it after this process's handlers, in the same order
                // as every note.
                if let Some(b) = self.broadcast.get() {
                    b.send(&crate::control::Reply::Completed {
                        task_id: registration.task_id(),
                        completion,
                    });
                }
            }
            Note::Canceled(instance, handlers, reason) => {
                for handler in handlers {
                    call(&|| handler(&instance, reason));
                }
            }
        }
    }

    pub(super) fn handlers_for<T>(
        &self,
        pick: impl FnOnce(&super::Handlers) -> Option<Vec<T>>,
    ) -> Vec<T> {
        pick(&self.handlers.read().unwrap_or_else(|p| p.into_inner())).unwrap_or_default()
    }
}
