//! Out-of-process hosts (SPEC §4, §5): an entry point declared with `exec` in the manifest runs as
//! a child process, supervised by the worker that started it.
//!
//! - Started with no shell, a clean environment plus the `BTB_*` variables, the app's state
//!   directory as working directory, stdin `/dev/null`, stdout and stderr captured (the last
//!   [`OUTPUT_TAIL`] bytes of each are kept with the run), and one socket inherited as fd 3
//!   (`BTB_HOST_FD`) that carries the instance protocol (`protocol.rs`).
//! - In a process group of its own, so that signals and the final sweep reach what it forks.
//! - The worker waits on a pidfd, the two pipes and the socket in one `poll`: no polling loop, no
//!   thread per stream. When the child exits, the rest of its group is killed (a task leaves no
//!   grandchildren behind), then the child is reaped — in that order, so that its pid (the group's
//!   id) cannot be reused while a signal may still be sent to it.
//! - Cancellation sends the reason over the socket; when the grace runs out the broker sends
//!   SIGTERM, and SIGKILL after a second grace (`timers.rs`, and `close` in `mod.rs`): to the
//!   host through its pidfd, to its group, and to its descendants found under it in /proc.
//! - Between fork and exec (`confine`): every descriptor above fd 3 is closed at exec, and the
//!   child dies with the broker's process (SIGKILL as its parent-death signal). While it runs it
//!   is recorded beside the store; a broker that opens the store after one died stops what is left
//!   of its hosts and records their runs before anything runs (`stop_orphans`).
//! - Where the broker can make one, in a cgroup of its own (`cgroup.rs`), entered before its
//!   exec: at the run's end everything left in it, wherever it went, is terminated, then killed.
//!
//! A run that no handler of this process can take goes to a client process of the broker that
//! offers one (`run_in_client`): on a connection the client keeps ready (the run starts with
//! `ToHost::Run`), or on one it attaches for the run; either speaks the same instance protocol,
//! ending with `Finished`. It is supervised like a host process, without a process to signal:
//! after the grace it is abandoned, as in-process.

use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;

use command_fds::{CommandFdExt, FdMapping};
use std::process::{Command, Stdio};
use std::sync::Arc;

use rustix::event::{PollFd, PollFlags, poll};
use rustix::process::{Pid, Signal, WaitId, WaitIdOptions, WaitIdStatus};

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::cgroup::Cgroup;
use super::{Broker, Instance};
use crate::model::{RunRecord, TaskOutcome};
use crate::protocol::{self, Decoder, ToBroker, ToHost};

/// How much of each of stdout and stderr is kept: the last 64 KiB.
pub(crate) const OUTPUT_TAIL: usize = 64 * 1024;
/// The descriptor number of the instance socket in the child (`BTB_HOST_FD`).
const HOST_FD: i32 = 3;
/// The largest trigger details passed in the environment (`BTB_TRIGGER_DETAILS`), in bytes;
/// larger ones come in the welcome.
const DETAILS_IN_ENV: usize = 16 * 1024;
/// The largest welcome written at once under the instance's lock (a few small frames always fit
/// a socket's buffer); a larger one is written by the supervisor, outside it.
const WELCOME_INLINE: usize = 16 * 1024;
/// Lines of stderr quoted in a failure message.
const STDERR_LINES: usize = 5;

/// A running host process, as the rest of the broker sees it (in the instance's `Life`, until the
/// process has exited).
pub(crate) struct Child {
    /// The child's pid (also its process group's id) and a pidfd of it; `None` for a run in a
    /// client process of the broker (nothing to signal). The child is not reaped while it is
    /// here: its pid, and so its group's id, name it and nothing else.
    process: Option<(Pid, OwnedFd)>,
    /// The host's cgroup, where one could be made (`cgroup.rs`): everything it forks is in it.
    cgroup: Option<Arc<Cgroup>>,
    /// The broker's end of the instance socket (non-blocking).
    socket: UnixStream,
    /// The child said hello: cancellations go over the socket from now on.
    pub(crate) greeted: bool,
    /// A client process said the run ended (`Finished`).
    finished: bool,
    /// Trigger details too large for the host's environment: the welcome carries them.
    large_details: bool,
    /// A welcome too large for one non-blocking write, for the supervisor to write outside the
    /// instance's lock: the frame, whether it carries the cancellation, the socket.
    welcome: Option<(Vec<u8>, bool, UnixStream)>,
}

impl Child {
    /// A run in a client process of the broker, on `socket`; `greeted` when the run was started
    /// on a connection the client keeps ready (no hello comes).
    fn in_client(socket: UnixStream, greeted: bool) -> Child {
        Child {
            process: None,
            cgroup: None,
            socket,
            greeted,
            finished: false,
            large_details: false,
            welcome: None,
        }
    }

    /// Signals the host and everything it forked: its descendants found under it now (wherever
    /// they went: another process group, another session), the host itself through its pidfd
    /// (even if it left its group), and its process group (what its exited children left in it).
    /// In a cgroup, everything in it instead, which is all of that (`cgroup.kill` for SIGKILL):
    /// each process gets the signal once (a host whose SIGTERM trap ran would hear a second one).
    pub(crate) fn signal(&self, signal: Signal) {
        if let Some(cgroup) = &self.cgroup {
            // SIGKILL reaches the host through its pidfd too, at once, as without a cgroup.
            if let Some((_, pidfd)) = &self.process
                && signal == Signal::KILL
            {
                let _ = rustix::process::pidfd_send_signal(pidfd, signal);
            }
            cgroup.signal(signal);
            return;
        }
        if let Some((pid, pidfd)) = &self.process {
            // Descendants first: once the host is gone, they are no longer found under it.
            for descendant in descendants(*pid) {
                let _ = rustix::process::pidfd_send_signal(&descendant, signal);
            }
            let _ = rustix::process::pidfd_send_signal(pidfd, signal);
            let _ = rustix::process::kill_process_group(*pid, signal);
        }
    }

    /// A host process (not a run in a client process).
    pub(crate) fn is_process(&self) -> bool {
        self.process.is_some()
    }

    /// Ends the connection (a run abandoned in a client process: its supervisor stops reading).
    pub(crate) fn hang_up(&self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }

    /// Sends a message without blocking (the socket is non-blocking), best effort: the broker
    /// sends two small frames at most, which fit any socket buffer, and a host that never reads
    /// hears the signals that follow.
    pub(crate) fn send(&self, message: &ToHost) {
        self.send_frame(&protocol::encode(message));
    }

    fn send_frame(&self, frame: &[u8]) {
        use std::io::Write;
        let _ = (&self.socket).write_all(frame);
    }
}

/// The last `OUTPUT_TAIL` bytes of a stream.
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
        if self.0.len() > 2 * OUTPUT_TAIL {
            self.0.drain(..self.0.len() - OUTPUT_TAIL);
        }
    }

    fn into_text(mut self) -> Option<String> {
        if self.0.len() > OUTPUT_TAIL {
            self.0.drain(..self.0.len() - OUTPUT_TAIL);
        }
        (!self.0.is_empty()).then(|| String::from_utf8_lossy(&self.0).into_owned())
    }
}

/// A descriptor the supervisor reads until its end.
struct Stream {
    fd: Option<OwnedFd>,
}

impl Stream {
    /// Reads what is there without blocking; `false` at the end of the stream.
    fn read_into(&mut self, sink: &mut dyn FnMut(&[u8])) -> bool {
        let Some(fd) = &self.fd else { return false };
        let mut buf = [0u8; 16 * 1024];
        loop {
            match rustix::io::read(fd, &mut buf) {
                Ok(0) => {
                    self.fd = None;
                    return false;
                }
                Ok(n) => sink(&buf[..n]),
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => return true,
                Err(_) => {
                    self.fd = None;
                    return false;
                }
            }
        }
    }
}

fn nonblocking(fd: &impl AsFd) -> std::io::Result<()> {
    rustix::io::ioctl_fionbio(fd, true)?;
    Ok(())
}

impl Broker {
    /// Runs an instance in a child process and supervises it to its end; the caller finishes the
    /// run when this returns.
    pub(super) fn run_exec(self: &Arc<Self>, instance: &Instance, argv: &[String]) {
        {
            let mut life = instance.life();
            if life.done {
                return; // abandoned before it started: nothing to run
            }
            // Its grace, should it run out meanwhile, waits for the process (`timers.rs`).
            life.starting_host = true;
        }
        match self.spawn_host(instance, argv) {
            Ok((pidfd, stdout, stderr)) => self.supervise(instance, pidfd, stdout, stderr),
            Err(e) => instance.report_failure(format!("cannot start {:?}: {e}", argv[0])),
        }
    }

    fn spawn_host(
        &self,
        instance: &Instance,
        argv: &[String],
    ) -> std::io::Result<(OwnedFd, OwnedFd, OwnedFd)> {
        let (broker_end, host_end) = UnixStream::pair()?;
        let task = instance.task();
        let mut cmd = command(argv);
        cmd.env("BTB_INSTANCE_ID", instance.instance_id().to_string())
            .env("BTB_TASK_ID", task.task_id().to_string())
            .env("BTB_TASK_NAME", task.name())
            .env(
                "BTB_ENTRY_POINT",
                task.task_entry_point().unwrap_or_default(),
            )
            .env("BTB_APP_ID", self.app_id.as_str())
            .env("BTB_ATTEMPT", instance.attempt().to_string())
            .env("BTB_HOST_FD", HOST_FD.to_string());
        // Small details in the environment; large ones (an environment string is limited to
        // 128 KiB, and the environment and arguments together) in the welcome.
        let mut large_details = false;
        if let Some(details) = instance.trigger_details() {
            let text = details.to_string();
            if text.len() <= DETAILS_IN_ENV {
                cmd.env("BTB_TRIGGER_DETAILS", text);
            } else {
                large_details = true;
            }
        }
        let cwd = if self.storage_dir.is_dir() {
            self.storage_dir.as_path()
        } else {
            std::path::Path::new("/")
        };
        cmd.current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        cmd.fd_mappings(vec![FdMapping {
            parent_fd: OwnedFd::from(host_end),
            child_fd: HOST_FD,
        }])
        .map_err(std::io::Error::other)?;
        // Where one can be made, a cgroup of its own, which the child enters before its exec.
        let cgroup = Cgroup::prepare(instance.instance_id()).map(Arc::new);
        let cgroup_path = cgroup.as_ref().map(|c| c.path());
        // After the fd mappings: fd 3 is in place when it runs.
        confine(
            &mut cmd,
            HOST_FD,
            cgroup.as_ref().and_then(|c| c.procs_fd()),
        );
        // Recorded before it starts (it is found by its instance id and its cgroup,
        // `stop_orphans`), then again with its pid once it has one.
        let durable = self.durable();
        if durable {
            self.record_host(instance, None, cgroup_path);
        }
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                if durable {
                    self.forget_host(instance);
                }
                let Some(cgroup) = &cgroup else {
                    return Err(e);
                };
                cgroup.remove();
                // The child may have failed to enter it: say which cgroup.
                let what = format!("{e} (its cgroup: {})", cgroup.path().display());
                return Err(std::io::Error::new(e.kind(), what));
            }
        };
        drop(cmd); // closes the parent's copy of the host's end
        let pid = Pid::from_child(&child);
        // The child is ours and not reaped until `supervise` says so: its pid is stable.
        let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
        if durable {
            self.record_host(instance, Some(pid), cgroup_path);
        }
        let stdout = OwnedFd::from(child.stdout.take().expect("piped"));
        let stderr = OwnedFd::from(child.stderr.take().expect("piped"));
        nonblocking(&stdout)?;
        nonblocking(&stderr)?;
        nonblocking(&broker_end)?;
        let child = Child {
            process: Some((pid, pidfd.try_clone()?)),
            cgroup,
            socket: broker_end,
            greeted: false,
            finished: false,
            large_details,
            welcome: None,
        };
        let mut life = instance.life();
        life.starting_host = false;
        if life.done {
            // Abandoned while it started (its system closed): no process outlives its run.
            child.signal(Signal::KILL);
        }
        life.child = Some(child);
        drop(life);
        self.host_started(instance);
        // `child` (std's handle) is dropped without waiting: `supervise` reaps through the pidfd.
        Ok((pidfd, stdout, stderr))
    }

    fn supervise(
        self: &Arc<Self>,
        instance: &Instance,
        pidfd: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    ) {
        let socket = instance
            .life()
            .child
            .as_ref()
            .and_then(|c| c.socket.try_clone().ok());
        let mut streams = [
            Stream { fd: Some(stdout) },
            Stream { fd: Some(stderr) },
            Stream {
                fd: socket.map(OwnedFd::from),
            },
        ];
        let (mut out, mut err) = (Tail::default(), Tail::default());
        let mut decoder = Decoder::default();
        loop {
            let mut fds = vec![PollFd::new(&pidfd, PollFlags::IN)];
            let open: Vec<usize> = (0..3).filter(|i| streams[*i].fd.is_some()).collect();
            for i in &open {
                let fd = streams[*i].fd.as_ref().expect("open");
                fds.push(PollFd::new(fd, PollFlags::IN));
            }
            match poll(&mut fds, None) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    log::error!(target: "btb", "supervising a host process: poll failed: {e}");
                    break;
                }
            }
            let exited = !fds[0].revents().is_empty();
            let ready: Vec<usize> = open
                .iter()
                .zip(&fds[1..])
                .filter(|(_, f)| !f.revents().is_empty())
                .map(|(i, _)| *i)
                .collect();
            drop(fds);
            for i in ready {
                self.read_stream(instance, i, &mut streams, &mut out, &mut err, &mut decoder);
            }
            let welcome = instance
                .life()
                .child
                .as_mut()
                .and_then(|c| c.welcome.take());
            if let Some((frame, canceled, socket)) = welcome {
                welcome_outside_lock(instance, &frame, canceled, &socket, &pidfd);
            }
            if exited {
                break;
            }
        }
        let status = rustix::process::waitid(
            WaitId::PidFd(pidfd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
        );
        // What is left in its cgroup: SIGTERM, then SIGKILL after the grace — while the child is
        // still in the instance, so that a close or a time limit meanwhile reaches it too.
        let cgroup = instance
            .life()
            .child
            .as_ref()
            .and_then(|c| c.cgroup.clone());
        if let Some(cgroup) = &cgroup {
            cgroup.end(std::time::Duration::from_millis(u64::from(
                self.policy.grace_ms,
            )));
        }
        // No signal may reach the group once the child is reaped (its pid could be reused): take
        // it out of the instance first, then sweep the group, then reap.
        let child = instance.life().child.take();
        if let Some(child) = &child {
            child.signal(Signal::KILL);
        }
        let _ = rustix::process::waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED);
        if let Some(cgroup) = &cgroup {
            cgroup.remove();
        }
        if self.durable() {
            self.forget_host(instance); // nothing of it runs any more
        }
        // What the group wrote before it ended (its writers are gone: these reads end).
        for i in 0..3 {
            self.read_stream(instance, i, &mut streams, &mut out, &mut err, &mut decoder);
        }
        let stderr_text = err.into_text();
        match status {
            // EX_TEMPFAIL: the host asks for another attempt, as `request_retry` (SPEC §12).
            Ok(Some(status)) if status.exit_status() == Some(EX_TEMPFAIL) => {
                let mut life = instance.life();
                if life.retry.is_none() {
                    life.retry = Some(super::instance::RetryRequest {
                        after_ms: None,
                        message: Some(format!(
                            "the host process exited with status {EX_TEMPFAIL} (EX_TEMPFAIL)"
                        )),
                    });
                }
            }
            Ok(Some(status)) => {
                if let Some(failure) = failure(&status, stderr_text.as_deref()) {
                    instance.report_failure(failure);
                }
            }
            other => instance.report_failure(format!(
                "the host process ended, but its status cannot be read: {other:?}"
            )),
        }
        instance.life().output = Some((out.into_text(), stderr_text));
    }

    fn read_stream(
        self: &Arc<Self>,
        instance: &Instance,
        i: usize,
        streams: &mut [Stream; 3],
        out: &mut Tail,
        err: &mut Tail,
        decoder: &mut Decoder,
    ) {
        match i {
            0 => {
                streams[0].read_into(&mut |b| out.push(b));
            }
            1 => {
                streams[1].read_into(&mut |b| err.push(b));
            }
            _ => {
                if streams[2].fd.is_none() {
                    return; // closed: nothing more is heard (a bad frame is reported once)
                }
                streams[2].read_into(&mut |b| decoder.push(b));
                match self.hear_frames(instance, decoder) {
                    Ok(true) => {}
                    Ok(false) => streams[2].fd = None,
                    Err(e) => {
                        log::warn!(target: "btb", "instance {}: the host sent {e}; its socket is closed", instance.instance_id());
                        streams[2].fd = None;
                        // Our end is closed, not only unread: a host that goes on writing gets
                        // EPIPE instead of blocking, and its exit status decides.
                        if let Some(child) = instance.life().child.as_ref() {
                            child.hang_up();
                        }
                    }
                }
            }
        }
    }

    /// Applies the whole messages received so far: `Ok(false)` when the connection must be
    /// closed (a refused hello, the end of a run), `Err` for a bad frame.
    fn hear_frames(&self, instance: &Instance, decoder: &mut Decoder) -> std::io::Result<bool> {
        while let Some(message) = decoder.next_message::<ToBroker>()? {
            if !self.host_said(instance, message) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Applies one message from a host; `false` when the socket must be closed.
    fn host_said(&self, instance: &Instance, message: ToBroker) -> bool {
        match message {
            ToBroker::Hello {
                version,
                min_version,
                instance_id,
            } => {
                let mut life = instance.life();
                let canceled = life.canceled.map(|r| r as u32);
                let Some(child) = life.child.as_mut() else {
                    return false;
                };
                let negotiated = protocol::negotiate(min_version, version);
                let refusal = if let Err(e) = &negotiated {
                    Some(format!("instance protocol: {e}"))
                } else if instance_id != instance.instance_id() {
                    Some(format!(
                        "the host names instance {instance_id}; this socket is for {}",
                        instance.instance_id()
                    ))
                } else {
                    None
                };
                if let Some(message) = refusal {
                    log::warn!(target: "btb", "instance {}: {message}", instance.instance_id());
                    child.send(&ToHost::Refused { message });
                    return false;
                }
                // Under the instance's lock, like `cancel_task`: a cancellation is either in the
                // welcome or sent after it, never lost between.
                let version = negotiated.unwrap_or(protocol::VERSION);
                let welcome = ToHost::Welcome {
                    version,
                    canceled,
                    network_granted: instance.is_network_granted(),
                    trigger_details: child
                        .large_details
                        .then(|| instance.trigger_details().cloned())
                        .flatten(),
                    // To an exec host (a client has it with the run), in version 2: a version 1
                    // host refuses fields it does not know.
                    task: (child.process.is_some() && version >= 2)
                        .then(|| Box::new(instance.task().record().clone())),
                };
                let frame = protocol::encode(&welcome);
                if child.large_details || frame.len() > WELCOME_INLINE {
                    // Too large to write here: the supervisor writes it, then greets.
                    if let Ok(socket) = child.socket.try_clone() {
                        child.welcome = Some((frame, canceled.is_some(), socket));
                    }
                } else {
                    child.greeted = true;
                    child.send_frame(&frame);
                }
            }
            ToBroker::Progress { value } => instance.set_progress(value),
            ToBroker::Failure { message } => instance.report_failure(message),
            // The process is the run: it ends when the process exits, deferrals or not. A client
            // process says when its run (with its deferrals) is over.
            ToBroker::DeferralTaken | ToBroker::DeferralCompleted => {}
            ToBroker::Unknown => {} // a notice of a newer host
            ToBroker::Retry { after_ms, message } => {
                instance.life().retry = Some(super::instance::RetryRequest { after_ms, message });
            }
            ToBroker::Output { output } => {
                if let Err(e) = instance.set_output(&output) {
                    log::warn!(target: "btb", "instance {}: {}", instance.instance_id(), e.message());
                }
            }
            ToBroker::Finished => {
                if let Some(child) = instance.life().child.as_mut() {
                    child.finished = true;
                }
                return false;
            }
        }
        true
    }

    /// Starts an instance on a connection that client process `pid` keeps ready, if it has one
    /// that is still open: the connection to supervise it on (`None`: it has none, or the
    /// instance was abandoned meanwhile). `starts`: the client says hello before it runs it
    /// (until then, a cancellation waits for the welcome).
    fn start_on_ready(
        &self,
        broadcast: &crate::control::Broadcast,
        instance: &Instance,
        pid: u32,
        starts: bool,
    ) -> Option<(UnixStream, Decoder)> {
        use std::io::Write;
        while let Some((socket, decoder)) = broadcast.take_ready(pid) {
            let Ok(reader) = socket.try_clone() else {
                continue;
            };
            // Under the instance's lock, like `cancel_task`: a cancellation is in the message
            // or sent after it.
            let mut life = instance.life();
            if life.done {
                return None;
            }
            let run = ToHost::Run {
                run: handed_run(instance),
                canceled: life.canceled.map(|r| r as u32),
                network_granted: instance.is_network_granted(),
            };
            if (&socket).write_all(&protocol::encode(&run)).is_err() {
                continue; // that connection's process is gone (or stuck): the next one
            }
            life.child = Some(Child::in_client(socket, !starts));
            return Some((reader, decoder));
        }
        None
    }

    /// Hands a run that no handler here can take to a client process that offers one (`fit`: 2
    /// a handler by name, 1 also through a resolver), and supervises it there; `Err(why)` when
    /// no client can take it (nothing was tried).
    ///
    /// Which client: see [`crate::control::Broadcast::pick`] (healthy ones first, round robin).
    /// A client must start the run within [`crate::control::START_TIMEOUT`] (its hello on a ready
    /// connection, or its attach): one that does not (stopped, stuck) has it taken back — the
    /// broker hangs up, so its late hello finds no run — and the run goes to another client that
    /// offers to run it; when there is none, it keeps waiting for this one.
    pub(super) fn run_in_client(
        self: &Arc<Self>,
        instance: &Instance,
        fit: u8,
    ) -> std::result::Result<(), String> {
        use crate::control::{START_TIMEOUT, Start};
        use std::sync::mpsc::RecvTimeoutError;
        let Some(broadcast) = self.broadcast.get() else {
            return Err(
                "and no client process can reach this broker (it has no control socket)".into(),
            );
        };
        let record = instance.task().record();
        let entry_point = record.task_entry_point.as_deref();
        let group = record.task_group.as_ref().map(|g| g.id.as_str());
        // Whether a healthy client other than `pid` could take the run (a run is not bounced
        // between clients that are all stalled: it waits for the one it was handed to).
        let another = |pid: u32| {
            broadcast
                .pick(entry_point, group, fit, &[pid])
                .0
                .is_some_and(|other| !other.stalled)
        };
        // Clients that let this run's start deadline pass.
        let mut besides: Vec<u32> = Vec::new();
        loop {
            let (picked, asked) = broadcast.pick(entry_point, group, fit, &besides);
            let Some(picked) = picked else {
                if besides.is_empty() {
                    return Err(format!(
                        "and in the {asked} client process(es) of this broker (pid {}): none offers one",
                        std::process::id()
                    ));
                }
                besides.clear(); // the other clients went away meanwhile: those again
                continue;
            };
            let pid = picked.pid;
            if instance.life().done {
                return Ok(()); // abandoned before it started
            }
            // On presumption (the app started for it, before it offers the handler): one run at
            // a time, on its ready connection; another waits, parked, for the app's offer.
            let one_at_a_time = || {
                format!(
                    "and the app started for background work (pid {pid}) takes one run at a time \
                     until it offers the handler"
                )
            };
            if picked.presumed && !broadcast.presume() {
                return Err(one_at_a_time());
            }
            let _presumed = Unpresume(picked.presumed.then_some(broadcast));
            broadcast.handing(pid);
            let mut hand = Some(Hand {
                broadcast,
                pid,
                start: Start::Dropped,
            });
            // A connection the client keeps ready: the run starts with one message on it (and,
            // from a client that says so, its hello).
            if let Some(ready) = self.start_on_ready(broadcast, instance, pid, picked.starts) {
                let start_by = if picked.starts {
                    Some(std::time::Instant::now() + START_TIMEOUT)
                } else {
                    if let Some(h) = hand.as_mut() {
                        h.start = Start::Started;
                    }
                    hand = None; // an older client says no hello: started now
                    None
                };
                let over = self.supervise_in_client(instance, ready, pid, true, start_by, &mut |started| {
                    if started {
                        if let Some(mut h) = hand.take() {
                            h.start = Start::Started;
                        }
                        return false;
                    }
                    if !another(pid) {
                        return false; // no other client: the run waits for this one
                    }
                    let mut life = instance.life();
                    if life.child.as_ref().is_none_or(|c| c.greeted) {
                        return false;
                    }
                    if let Some(child) = life.child.take() {
                        child.hang_up(); // its late hello finds the end
                    }
                    drop(life);
                    if let Some(h) = hand.as_mut() {
                        h.start = Start::Missed;
                    }
                    log::warn!(target: "btb", "instance {}: the client process (pid {pid}) did not start it within {} s: it goes to another client", instance.instance_id(), START_TIMEOUT.as_secs());
                    true
                });
                drop(hand);
                if over {
                    return Ok(());
                }
                besides.push(pid);
                continue;
            }
            if instance.life().done {
                return Ok(()); // abandoned meanwhile
            }
            if picked.presumed {
                return Err(one_at_a_time()); // its ready connection went meanwhile
            }
            let attached = broadcast.hand_run(
                picked.conn,
                instance.instance_id(),
                &crate::control::Reply::Run {
                    run: handed_run(instance),
                },
            );
            let handed_at = std::time::Instant::now();
            let mut wait = START_TIMEOUT;
            let got = loop {
                match attached.recv_timeout(wait) {
                    Ok(got) => break Some(got),
                    Err(RecvTimeoutError::Disconnected) => break None, // the client went away
                    Err(RecvTimeoutError::Timeout) if wait == START_TIMEOUT && another(pid) => {
                        // Dropping the receiver refuses a late attach: the client sees the end.
                        broadcast.cancel_hand(&instance.instance_id());
                        if let Some(h) = hand.as_mut() {
                            h.start = Start::Missed;
                        }
                        besides.push(pid);
                        log::warn!(target: "btb", "instance {}: the client process (pid {pid}) did not take it within {} s: it goes to another client", instance.instance_id(), START_TIMEOUT.as_secs());
                        break None;
                    }
                    Err(RecvTimeoutError::Timeout)
                        if handed_at.elapsed() < crate::control::IDLE_TIMEOUT =>
                    {
                        wait = crate::control::IDLE_TIMEOUT.saturating_sub(handed_at.elapsed());
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        broadcast.cancel_hand(&instance.instance_id());
                        self.drop_unstarted_run_file(instance, pid);
                        instance.report_failure(format!(
                            "the client process (pid {pid}) it was handed to did not take it within {} s",
                            crate::control::IDLE_TIMEOUT.as_secs()
                        ));
                        return Ok(());
                    }
                }
            };
            let Some((socket, decoder)) = got else {
                self.drop_unstarted_run_file(instance, pid);
                continue; // the next client
            };
            if let Some(mut h) = hand.take() {
                h.start = Start::Started;
            }
            let Ok(reader) = socket.try_clone() else {
                instance.report_failure("cannot supervise the run in the client process");
                return Ok(());
            };
            {
                let mut life = instance.life();
                if life.done {
                    return Ok(()); // abandoned meanwhile: dropping the socket tells the client
                }
                life.child = Some(Child::in_client(socket, false));
            }
            self.supervise_in_client(instance, (reader, decoder), pid, false, None, &mut |_| {
                false
            });
            return Ok(());
        }
    }

    /// Supervises a run in client process `pid` on `reader` until it ends; `reusable`: a ready
    /// connection, given back for the next run when this one finished. Until the client says
    /// hello, `start_by` (if any) is its deadline: `starting(false)` is then asked whether the
    /// run was taken back (and `false` is returned at once); `starting(true)` tells that it
    /// started. `true` when the run is over (or was abandoned).
    fn supervise_in_client(
        &self,
        instance: &Instance,
        (reader, mut decoder): (UnixStream, Decoder),
        pid: u32,
        reusable: bool,
        mut start_by: Option<std::time::Instant>,
        starting: &mut dyn FnMut(bool) -> bool,
    ) -> bool {
        let mut stream = Stream {
            fd: Some(OwnedFd::from(reader)),
        };
        // Frames first, then wait: the client's hello came with its attach and is in `decoder`.
        let mut garbled = None;
        loop {
            match self.hear_frames(instance, &mut decoder) {
                Ok(true) => {}
                Ok(false) => stream.fd = None,
                Err(e) => {
                    garbled = Some(e);
                    stream.fd = None;
                }
            }
            if start_by.is_some() && instance.life().child.as_ref().is_some_and(|c| c.greeted) {
                start_by = None;
                starting(true);
            }
            let Some(fd) = &stream.fd else { break };
            let now = std::time::Instant::now();
            if start_by.is_some_and(|d| d <= now) {
                if starting(false) {
                    // Taken back (the client is not welcomed: it never runs it): another
                    // client gets it.
                    self.drop_unstarted_run_file(instance, pid);
                    return false;
                }
                start_by = None; // no other client: it waits for this one
            }
            let timeout = start_by.map(|d| {
                let left = d.saturating_duration_since(now);
                rustix::time::Timespec {
                    tv_sec: left.as_secs() as i64,
                    tv_nsec: i64::from(left.subsec_nanos()),
                }
            });
            let mut fds = [PollFd::new(fd, PollFlags::IN)];
            match poll(&mut fds, timeout.as_ref()) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    log::error!(target: "btb", "supervising a run in a client: poll failed: {e}");
                    break;
                }
            }
            stream.read_into(&mut |b| decoder.push(b));
        }
        let child = instance.life().child.take();
        if let Some(child) = child.filter(|c| c.finished) {
            if reusable && let Some(broadcast) = self.broadcast.get() {
                broadcast.give_back_ready(pid, child.socket, decoder);
            }
        } else if !instance.life().done {
            instance.report_failure(match garbled {
                Some(e) => format!(
                    "the client process (pid {pid}) that ran it sent {e}; its connection was closed"
                ),
                None => format!(
                    "the client process (pid {pid}) that ran it went away before the run ended"
                ),
            });
        }
        // Heard (or gone): its file goes once the run's record is committed (`pool.rs`).
        instance.life().client_run_file = Some(pid);
        true
    }

    /// Removes the run file of `instance` in client process `pid`, which never started the run
    /// there (taken back, or never attached): a file left behind would tell a next broker that
    /// the run was handed (`runfile.rs`).
    fn drop_unstarted_run_file(&self, instance: &Instance, pid: u32) {
        if let Some(dir) = &self.run_files {
            crate::runfile::remove(dir, instance.instance_id(), pid);
        }
    }

    /// A run that ended in a client process (recorded already): its run file goes once its
    /// record (and every write before it, the hand-over's included) is committed — until then
    /// the file is what tells a next broker that the run was handed and how it ended (SPEC §11).
    /// A writer that stops without committing leaves it for that broker.
    pub(super) fn forget_client_run_file(&self, instance: &Instance) {
        let Some(pid) = instance.life().client_run_file.take() else {
            return;
        };
        if let Some(dir) = &self.run_files {
            let path = crate::runfile::path(dir, instance.instance_id(), pid);
            self.writer.enqueue(super::writer::Write::Forget(path));
        }
    }
}

/// Gives the hand-over on presumption back when a run that held it is settled.
struct Unpresume<'a>(Option<&'a crate::control::Broadcast>);

impl Drop for Unpresume<'_> {
    fn drop(&mut self) {
        if let Some(broadcast) = self.0 {
            broadcast.unpresume();
        }
    }
}

/// A run handed to a client process, settled (`Broadcast::settle`) when dropped: whether the
/// client started it.
struct Hand<'a> {
    broadcast: &'a crate::control::Broadcast,
    pid: u32,
    start: crate::control::Start,
}

impl Drop for Hand<'_> {
    fn drop(&mut self) {
        self.broadcast.settle(self.pid, self.start);
    }
}

/// A host process as recorded beside the store while it runs (`<store>.hosts/<instance id>`):
/// a broker that opens the store after this one died finds it, stops what is left of it and
/// records its run (`stop_orphans`).
#[derive(Serialize, Deserialize)]
struct HostFile {
    pid: i32,
    /// Its start time (field 22 of `/proc/<pid>/stat`): with the pid, it names this process and
    /// no later one that gets the same pid.
    start: u64,
    /// The process of the broker that started it.
    broker_pid: u32,
    /// Its cgroup, if it has one (`cgroup.rs`): everything it forked is in it.
    #[serde(default)]
    cgroup: Option<PathBuf>,
    /// The run as it will be recorded (its end is filled in then).
    run: RunRecord,
}

/// The directory of the live hosts of a store's broker.
fn hosts_dir(store_path: &str) -> PathBuf {
    PathBuf::from(format!("{store_path}.hosts"))
}

/// A process's start time (field 22 of its stat), in clock ticks since boot.
fn start_time(pid: Pid) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

impl Broker {
    /// Records a host that just started beside the store (see [`HostFile`]). Best effort: a host
    /// that cannot be recorded still runs (and dies with this process, `confine`).
    fn record_host(&self, instance: &Instance, pid: Option<Pid>, cgroup: Option<&std::path::Path>) {
        let host = HostFile {
            cgroup: cgroup.map(ToOwned::to_owned),
            pid: pid.map_or(0, |p| p.as_raw_nonzero().get()),
            start: pid.and_then(start_time).unwrap_or(0),
            broker_pid: self.pid,
            run: RunRecord {
                instance_id: instance.instance_id(),
                task_id: instance.task().task_id(),
                trigger_kind: instance.task().trigger().kind(),
                trigger_details: instance.trigger_details().map(|d| d.to_string()),
                started_ms: instance.started_ms(),
                ended_ms: instance.started_ms(),
                outcome: TaskOutcome::Failed,
                reason: None,
                message: None,
                last_progress: 0,
                stdout: None,
                stderr: None,
                attempt: instance.attempt(),
                retry_at_ms: None,
                output: None,
            },
        };
        let dir = hosts_dir(&self.store_path);
        let name = instance.instance_id().to_string();
        let written = std::fs::create_dir_all(&dir).and_then(|()| {
            // Whole or not at all: a broker that dies while writing leaves a `.tmp`, never half
            // a record.
            let tmp = dir.join(format!("{name}.tmp"));
            std::fs::write(
                &tmp,
                serde_json::to_vec(&host).map_err(std::io::Error::other)?,
            )?;
            std::fs::rename(&tmp, dir.join(&name))
        });
        if let Err(e) = written {
            log::warn!(target: "btb", "instance {name}: cannot record its host process in {}: {e}", dir.display());
        }
    }

    /// Removes the record of a host of which nothing runs any more.
    fn forget_host(&self, instance: &Instance) {
        let _ = std::fs::remove_file(
            hosts_dir(&self.store_path).join(instance.instance_id().to_string()),
        );
    }
}

/// Stops what is left of the hosts of a broker of this store that died (SPEC §5), before the
/// store runs anything, and records their runs (as failed: the broker that ran it died). Called
/// by the broker that opens the store (it holds the store's lock: the broker that recorded them
/// is gone). What is left: the host itself (its pid and start time), every process whose
/// environment names its instance (`BTB_INSTANCE_ID`: what it forked, in any group or session),
/// and while the host lives, its process group. They get SIGTERM, and SIGKILL after the grace.
///
/// Returns the retries that the runs' retry policies ask for (SPEC §12), to latch.
pub(crate) fn stop_orphans(
    store: &mut crate::store::Store,
    registry: &crate::registry::Registry,
    policy: &crate::policy::Policy,
    now_ms: i64,
) -> Vec<(uuid::Uuid, crate::store::Latched)> {
    let mut retries = Vec::new();
    if store.path() == ":memory:" {
        return retries;
    }
    let dir = hosts_dir(store.path());
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return retries;
    };
    let mut orphans = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let host = std::fs::read(&path)
            .ok()
            .filter(|_| path.extension().is_none())
            .and_then(|b| serde_json::from_slice::<HostFile>(&b).ok());
        match host {
            Some(host) => orphans.push((path, host)),
            None => {
                let _ = std::fs::remove_file(&path); // a record never finished
            }
        }
    }
    if orphans.is_empty() {
        return retries;
    }
    let left = leftovers(&orphans);
    // A host's cgroup holds everything it forked, whatever became of it.
    let cgroups: Vec<Option<Cgroup>> = orphans
        .iter()
        .map(|(_, h)| h.cgroup.as_deref().and_then(Cgroup::open))
        .collect();
    let populated: Vec<bool> = cgroups
        .iter()
        .map(|c| c.as_ref().is_some_and(|c| !c.is_empty()))
        .collect();
    let grace = std::time::Duration::from_millis(u64::from(policy.grace_ms));
    for signal in [Signal::TERM, Signal::KILL] {
        let alive: Vec<&OwnedFd> = left.iter().flatten().filter(|f| !exited(f, None)).collect();
        let full: Vec<&Cgroup> = cgroups.iter().flatten().filter(|c| !c.is_empty()).collect();
        if alive.is_empty() && full.is_empty() {
            break;
        }
        for fd in &alive {
            let _ = rustix::process::pidfd_send_signal(fd, signal);
        }
        for cgroup in &full {
            cgroup.signal(signal);
        }
        let deadline = std::time::Instant::now() + grace;
        for fd in alive {
            exited(fd, Some(deadline));
        }
        for cgroup in full {
            cgroup.wait_empty(deadline);
        }
    }
    for cgroup in cgroups.iter().flatten() {
        cgroup.remove();
    }
    for (((path, host), left), populated) in orphans.into_iter().zip(left).zip(populated) {
        let mut run = host.run;
        run.ended_ms = now_ms.max(run.started_ms);
        let pid = if host.pid == 0 {
            String::new() // it died starting it
        } else {
            format!(" (pid {})", host.pid)
        };
        let why = format!(
            "the broker that ran it (pid {}) died; its host{pid} {}",
            host.broker_pid,
            if left.is_empty() && !populated {
                "had ended with it"
            } else {
                "was stopped"
            }
        );
        let (outcome, message, retry_at_ms, retry) = super::retry::cut_off(
            registry.get(&run.task_id).and_then(|r| r.retry_policy),
            run.attempt,
            run.trigger_details.clone(),
            now_ms,
            &why,
        );
        run.outcome = outcome;
        run.message = Some(message);
        run.retry_at_ms = retry_at_ms;
        log::warn!(target: "btb", "instance {}: {}", run.instance_id, run.message.as_deref().unwrap_or_default());
        // The record and the retry's latch in one transaction: a broker that dies next loses
        // neither (SPEC §11).
        let latch: Vec<crate::store::ScheduleChange> = retry
            .iter()
            .map(|next| crate::store::ScheduleChange::RetryUnlessPending(run.task_id, next.clone()))
            .collect();
        if registry.contains(&run.task_id)
            && let Err(e) = store.write_batch(&latch, &[(run.clone(), policy.history_limit)])
        {
            log::error!(target: "btb", "{e}");
            continue; // recorded by the next broker of the store, then
        }
        if let Some(next) = retry
            && registry.contains(&run.task_id)
        {
            retries.push((run.task_id, next));
        }
        let _ = std::fs::remove_file(path);
    }
    retries
}

/// For each recorded host, pidfds of what is left of it (see [`stop_orphans`]).
fn leftovers(orphans: &[(PathBuf, HostFile)]) -> Vec<Vec<OwnedFd>> {
    let mut left: Vec<Vec<OwnedFd>> = orphans.iter().map(|_| Vec::new()).collect();
    let hosts_alive: Vec<bool> = orphans
        .iter()
        .map(|(_, h)| {
            Pid::from_raw(h.pid).is_some_and(|pid| h.start != 0 && start_time(pid) == Some(h.start))
        })
        .collect();
    let markers: Vec<Vec<u8>> = orphans
        .iter()
        .map(|(_, h)| format!("BTB_INSTANCE_ID={}", h.run.instance_id).into_bytes())
        .collect();
    let me = rustix::process::getpid();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return left;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse().ok())
            .and_then(Pid::from_raw)
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) else {
            continue;
        };
        // Read after the pidfd was taken, and kept only if that process still lives: then what
        // was read is its own, not a later process's with the same pid.
        let Some(fields) = stat_fields(pid) else {
            continue;
        };
        let environ =
            std::fs::read(format!("/proc/{}/environ", pid.as_raw_nonzero())).unwrap_or_default();
        if exited(&fd, None) {
            continue;
        }
        let start: Option<u64> = fields.get(19).and_then(|f| f.parse().ok());
        let group: Option<i32> = fields.get(2).and_then(|f| f.parse().ok());
        let found = orphans.iter().enumerate().find(|(i, (_, h))| {
            (pid.as_raw_nonzero().get() == h.pid && start == Some(h.start) && h.start != 0)
                || environ.split(|b| *b == 0).any(|v| v == markers[*i])
                || (hosts_alive[*i] && group == Some(h.pid))
        });
        if let Some((i, _)) = found {
            left[i].push(fd);
        }
    }
    left
}

/// Whether the process of a pidfd has exited, waiting until `deadline` at most (`None`: not at
/// all).
fn exited(fd: &OwnedFd, deadline: Option<std::time::Instant>) -> bool {
    crate::pidfd::ended_by(fd, deadline).unwrap_or(true)
}

/// Arranges what the child does between fork and exec (SPEC §5; `btb_os::confine`): descriptors
/// above `keep_through` closed at exec, no signal blocked, SIGKILL when the supervising thread's
/// process dies; first, with `into_cgroup` (the `cgroup.procs` of the host's cgroup, `cgroup.rs`,
/// kept open by the caller until the spawn returns), into its cgroup.
pub(super) fn confine(cmd: &mut Command, keep_through: i32, into_cgroup: Option<RawFd>) {
    btb_os::confine(cmd, keep_through, into_cgroup);
}

/// Writes a welcome too large for one non-blocking write, outside the instance's lock (the
/// supervisor is not reading the host's output meanwhile: a host reads its welcome right after
/// its hello), until the host exits; then greets: a cancellation that came meanwhile is sent
/// after it.
fn welcome_outside_lock(
    instance: &Instance,
    frame: &[u8],
    canceled_in_it: bool,
    socket: &UnixStream,
    pidfd: &OwnedFd,
) {
    let mut rest = frame;
    while !rest.is_empty() {
        match rustix::io::write(socket, rest) {
            Ok(n) => rest = &rest[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => {
                let mut fds = [
                    PollFd::new(socket, PollFlags::OUT),
                    PollFd::new(pidfd, PollFlags::IN),
                ];
                match poll(&mut fds, None) {
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(_) => return,
                }
                if !fds[1].revents().is_empty() {
                    return; // it exited
                }
            }
            Err(_) => return,
        }
    }
    let mut life = instance.life();
    let canceled = life.canceled;
    if let Some(child) = life.child.as_mut() {
        child.greeted = true;
        if let Some(reason) = canceled.filter(|_| !canceled_in_it) {
            child.send(&ToHost::Canceled {
                reason: reason as u32,
            });
        }
    }
}

/// The pids of the children of `pid` (of all its threads), from `/proc/<pid>/task/*/children`.
fn children_of(pid: Pid) -> Vec<Pid> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", pid.as_raw_nonzero())) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .filter_map(Pid::from_raw),
        );
    }
    out
}

/// The fields of `/proc/<pid>/stat` after the command name (field 3, the state, is the first).
pub(super) fn stat_fields(pid: Pid) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero())).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The parent of a process (field 4 of its stat).
fn parent_of(pid: Pid) -> Option<Pid> {
    stat_fields(pid)?
        .get(1)?
        .parse()
        .ok()
        .and_then(Pid::from_raw)
}

/// Pidfds of the live descendants of `root` (bounded: a host that forks without end is not
/// followed forever). Each pid read from /proc becomes a pidfd, then its parent is checked
/// again: a pid reused between the two reads is not taken for a descendant.
fn descendants(root: Pid) -> Vec<OwnedFd> {
    const MOST: usize = 4096;
    let mut found = Vec::new();
    let mut parents = vec![root];
    while let Some(parent) = parents.pop() {
        for child in children_of(parent) {
            let Ok(fd) = rustix::process::pidfd_open(child, rustix::process::PidfdFlags::empty())
            else {
                continue; // gone meanwhile
            };
            if parent_of(child) != Some(parent) {
                continue;
            }
            parents.push(child);
            found.push(fd);
            if found.len() >= MOST {
                return found;
            }
        }
    }
    found
}

/// What a client process needs to start `instance`.
fn handed_run(instance: &Instance) -> Box<protocol::HandedRun> {
    Box::new(protocol::HandedRun {
        instance_id: instance.instance_id(),
        task: instance.task().record().clone(),
        trigger_details: instance.trigger_details().cloned(),
        started_ms: instance.started_ms(),
        attempt: instance.attempt(),
    })
}

/// A command btb starts (an `exec` host, the activated app): no shell, and a clean environment —
/// what any program expects (as systemd gives a service), nothing else of the app's.
pub(super) fn command(argv: &[String]) -> Command {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).env_clear().envs(clean_env());
    cmd
}

/// The environment a process that btb starts gets (before its own `BTB_*` variables): a fixed
/// `PATH` and the broker's `HOME`, `USER`, `LOGNAME`, `LANG`, `XDG_RUNTIME_DIR` and `TZ`.
pub(super) fn clean_env() -> Vec<(&'static str, std::ffi::OsString)> {
    let mut env = vec![("PATH", "/usr/local/bin:/usr/bin:/bin".into())];
    for name in ["HOME", "USER", "LOGNAME", "LANG", "XDG_RUNTIME_DIR", "TZ"] {
        if let Some(v) = std::env::var_os(name) {
            env.push((name, v));
        }
    }
    env
}

/// The exit status with which a host asks for another attempt (`sysexits.h`).
const EX_TEMPFAIL: i32 = 75;

/// The failure a wait status means (`None`: exit 0), with the end of stderr.
fn failure(status: &WaitIdStatus, stderr: Option<&str>) -> Option<String> {
    let what = if let Some(code) = status.exit_status() {
        if code == 0 {
            return None;
        }
        format!("the host process exited with status {code}")
    } else if let Some(signal) = status.terminating_signal() {
        let name = nix::sys::signal::Signal::try_from(signal)
            .map_or("a signal", nix::sys::signal::Signal::as_str);
        format!("the host process was killed by {name} ({signal})")
    } else {
        "the host process ended abnormally".to_owned()
    };
    let tail = stderr
        .map(|text| {
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            lines[lines.len().saturating_sub(STDERR_LINES)..].join("\n")
        })
        .filter(|t| !t.is_empty());
    Some(match tail {
        Some(tail) => format!("{what}; stderr ends with:\n{tail}"),
        None => what,
    })
}
