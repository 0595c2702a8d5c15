//! Activation (SPEC §12), as Windows activates an app for its in-process background task: a run
//! whose handler no process has, in an app whose manifest says how to start it (`activate`),
//! starts the app — one process for every run that waits — with a clean environment,
//! `BTB_APP_ID`, `BTB_ACTIVATION=1` and `BTB_STORE`. The app opens its system (a client of this
//! broker), offers its handlers, and is handed the runs (`handlers_changed`); it returns from
//! `serve_activation` when nothing is left for it. A run that no process offers a handler for
//! within `policy.activation_timeout_ms` fails, saying so; so does every run that waits when the
//! app cannot be started or exits without offering its handler.
//!
//! The process is started with `posix_spawn` (`btb_os::spawn_clean`: stdio only, no blocked
//! signal, its own process group) and supervised like an `exec` host: a pidfd, a thread
//! (`btb-activation`, owned by the broker's `ThreadSet`) that reaps it; `close` ends it (SIGTERM,
//! SIGKILL after the grace). Unlike a host it has no parent-death signal: it is a client, which
//! outlives its broker like any client (SPEC §10–12).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use rustix::event::{PollFd, PollFlags, poll};
use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};
use uuid::Uuid;

use super::{Broker, State};
use crate::model::{RunRecord, TaskOutcome};
use crate::store::ScheduleChange;

/// The app process started for background work.
pub(crate) struct Activation {
    /// 0 while it is being started.
    pub(crate) pid: u32,
    pidfd: Option<OwnedFd>,
}

impl Activation {
    /// Signals the app (and what it forked into its group).
    pub(crate) fn signal(&self, signal: Signal) {
        if let Some(fd) = &self.pidfd {
            let _ = rustix::process::pidfd_send_signal(fd, signal);
        }
        if let Some(pid) = Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process_group(pid, signal);
        }
    }
}

impl Broker {
    /// Starts the app for the runs that wait for a handler, unless it runs already or the
    /// manifest has no `activate`. Called with no btb lock held (it starts a process).
    pub(super) fn activate(self: &Arc<Self>) {
        let manifest = self.manifest();
        let Some(argv) = manifest.activate() else {
            return;
        };
        {
            let mut st = self.lock();
            if st.activation.is_some() || st.closing {
                return;
            }
            st.activation = Some(Activation {
                pid: 0,
                pidfd: None,
            });
        }
        let mut env: Vec<(&str, std::ffi::OsString)> = super::exec::clean_env();
        env.push(("BTB_APP_ID", self.app_id.as_str().into()));
        env.push(("BTB_ACTIVATION", "1".into()));
        env.push(("BTB_STORE", self.store_path.as_str().into()));
        if let Some(path) = manifest.path() {
            env.push(("BTB_MANIFEST", path.into()));
        }
        let env: Vec<std::ffi::OsString> = env
            .into_iter()
            .map(|(name, value)| {
                let mut pair = std::ffi::OsString::from(format!("{name}="));
                pair.push(value);
                pair
            })
            .collect();
        // A vfork (`posix_spawn`), not a fork of the broker: a fork copies its page tables and is
        // the most of what the broker adds before the app's first instruction. So no
        // parent-death signal (only a forked child can set one): the app is a client, which
        // outlives its broker like any (it takes the store over, SPEC §10–12); stdio only, no
        // signal blocked, its own process group.
        let started = btb_os::spawn_clean(&btb_os::Clean {
            argv,
            env: &env,
            cwd: std::path::Path::new(&self.store_path)
                .parent()
                .filter(|d| !d.as_os_str().is_empty()),
        })
        .and_then(|pid| {
            let pid = u32::try_from(pid).map_err(std::io::Error::other)?;
            let raw = Pid::from_raw(pid as i32).ok_or_else(|| std::io::Error::other("pid 0"))?;
            match rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()) {
                Ok(fd) => Ok((pid, fd)),
                Err(e) => {
                    // Not watched, so not kept (a kernel without pidfds, before 5.3): no app
                    // runs unsupervised, and no zombie is left.
                    let _ = rustix::process::kill_process(raw, rustix::process::Signal::KILL);
                    let _ =
                        rustix::process::waitpid(Some(raw), rustix::process::WaitOptions::empty());
                    Err(e.into())
                }
            }
        });
        // Before the lock (nothing blocks there), long before the app can have connected: its
        // first offer takes the runs it was started for.
        if let (Ok((pid, _)), Some(broadcast)) = (&started, self.broadcast.get()) {
            broadcast.set_activated(*pid);
        }
        let now = self.clock.now_ms();
        let mut st = self.lock();
        match started {
            Ok((pid, fd)) => {
                log::info!(target: "btb", "started the app for background work (pid {pid}): {}", argv.join(" "));
                let watched = fd.try_clone();
                st.activation = Some(Activation {
                    pid,
                    pidfd: Some(fd),
                });
                let shared = Arc::clone(self);
                let spawned = watched.and_then(|fd| {
                    self.threads.spawn("btb-activation", move || {
                        shared.watch_activation(pid, fd);
                    })
                });
                if let Err(e) = spawned {
                    log::error!(target: "btb", "cannot watch the activated app (pid {pid}): {e}");
                }
            }
            Err(e) => {
                st.activation = None;
                let why = format!("cannot start the app to run it ({}): {e}", argv[0]);
                log::error!(target: "btb", "{why}");
                self.fail_parked(&mut st, now, |_| true, |_| why.clone());
            }
        }
    }

    /// Waits for the activated app to exit, reaps it, and fails the runs that still wait for a
    /// handler it never offered.
    fn watch_activation(self: &Arc<Self>, pid: u32, fd: OwnedFd) {
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        while matches!(poll(&mut fds, None), Err(rustix::io::Errno::INTR)) {}
        let status = rustix::process::waitid(WaitId::PidFd(fd.as_fd()), WaitIdOptions::EXITED);
        let status = match status {
            Ok(Some(s)) => match (s.exit_status(), s.terminating_signal()) {
                (Some(code), _) => format!("status {code}"),
                (None, Some(signal)) => format!("signal {signal}"),
                _ => "an unknown status".to_owned(),
            },
            other => format!("an unreadable status ({other:?})"),
        };
        let now = self.clock.now_ms();
        let mut st = self.lock();
        if st.activation.as_ref().is_some_and(|a| a.pid == pid) {
            st.activation = None;
            if let Some(broadcast) = self.broadcast.get() {
                broadcast.set_activated(0);
            }
        }
        log::info!(target: "btb", "the activated app (pid {pid}) exited with {status}");
        self.fail_parked(
            &mut st,
            now,
            |_| true,
            |handler| {
                format!(
                    "the activated app (pid {pid}) exited with {status} without offering {handler}"
                )
            },
        );
        self.changed();
    }

    /// Fails the runs that wait for a handler and that `which` picks: each is recorded as a
    /// failed run (`why`, then the handler it waited for) and its fire let go.
    pub(super) fn fail_parked(
        self: &Arc<Self>,
        st: &mut State,
        now: i64,
        which: impl Fn(&super::Pending) -> bool,
        why: impl Fn(&str) -> String,
    ) {
        let parked: Vec<Uuid> = st
            .pending
            .iter()
            .filter(|(_, p)| p.needs_handler.is_some() && which(p))
            .map(|(id, _)| *id)
            .collect();
        let mut changes = Vec::new();
        let mut failed = Vec::new();
        for task_id in parked {
            let Some(p) = st.unlatch(&task_id) else {
                continue;
            };
            if p.persisted {
                changes.push(ScheduleChange::Pending(task_id, None));
            }
            // The start marker of the run that parked goes with its latch: it never ran.
            let parked = p.parked_run.map(|(id, _)| id);
            if let Some(id) = parked {
                changes.push(ScheduleChange::Unstarted(id));
            }
            let Some(record) = st.registry.get(&task_id).cloned() else {
                continue;
            };
            let message = why(p.needs_handler.as_deref().unwrap_or_default());
            log::info!(target: "btb", "run of {:?} failed: {message}", record.name);
            let run = RunRecord {
                instance_id: parked.unwrap_or_else(Uuid::new_v4),
                task_id,
                trigger_kind: record.trigger.kind(),
                trigger_details: p.details.as_ref().map(|d| d.to_string()),
                started_ms: now,
                ended_ms: now,
                outcome: TaskOutcome::Failed,
                reason: None,
                message: Some(message),
                last_progress: 0,
                stdout: None,
                stderr: None,
                attempt: p.attempt,
                retry_at_ms: None,
                output: None,
            };
            self.announce(st, &run);
            failed.push(run);
        }
        // The latches and markers first: a broker that dies between the two writes has let the
        // fires go (their failed records lost), never kept a fire whose failure is recorded.
        self.commit(st, changes);
        for run in failed {
            self.writer
                .enqueue(super::writer::Write::Run(run, self.policy.history_limit));
        }
    }
}
