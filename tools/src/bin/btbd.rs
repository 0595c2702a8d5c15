//! `btbd`: a broker with no app code (SPEC §10), for apps whose tasks are `exec` entry points, so
//! that they run while the app is closed. systemd starts it as a user unit
//! (`contrib/systemd/btbd@.service`, instance = app id).
//!
//! It holds the app's store and runs what becomes due; `btbctl` talks to it through the control
//! socket. SIGTERM or SIGINT: running instances are canceled with `TERMINATING`, given their grace,
//! and btbd exits 0. A bad manifest, or a store another broker holds, exits 1 with the reason.
//! Logs go to stderr (the journal, under systemd); `RUST_LOG` sets the level (default `info`).
//!
//! btbd is a child subreaper (SPEC §5, "Under btbd"): what its exec hosts orphan (a daemon's double
//! fork) becomes its child, is reaped when it exits, and is stopped when btbd exits (`orphans`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use btb_core::{Manifest, StoreLocation, System, SystemOptions};
use clap::{CommandFactory, Parser};
use nix::sys::signal::{SigSet, Signal};

#[derive(Parser)]
#[command(
    name = "btbd",
    version,
    about = "A btb broker with no app code: runs an app's exec tasks while the app is closed",
    long_about = "A btb broker with no app code: runs an app's exec tasks while the app is closed.\n\
                  It holds the app's store and runs what becomes due; btbctl and the app's own \
                  processes talk to it through its control socket. systemd runs it as the user \
                  unit btbd@APP_ID.service (btbctl enable installs the manifest and enables it). \
                  It prints \"btbd: ready\" on stdout once it serves."
)]
struct Cli {
    /// The app's manifest (TOML).
    #[arg(long, value_name = "PATH", required = true)]
    manifest: Option<PathBuf>,
    /// The app's store, if not at the default location ($XDG_STATE_HOME/btb/<app_id>/btb.sqlite3).
    #[arg(long, value_name = "PATH")]
    store: Option<PathBuf>,
    /// Write the manual page btbd.8 into DIR and exit (for packagers: make install, the .deb).
    #[arg(long, value_name = "DIR", hide = true, exclusive = true)]
    generate_man: Option<PathBuf>,
}

/// The manual page: clap's sections, then what clap does not describe.
fn generate_man(dir: &Path) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(Cli::command()).section("8");
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    page.extend_from_slice(MAN_EXTRA.as_bytes());
    man.render_version_section(&mut page)?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(man.get_filename()), page)
}

const MAN_EXTRA: &str = r#".SH SIGNALS
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Running task instances are canceled with reason TERMINATING and given their grace period (5 s); then btbd exits 0.
.SH "EXIT STATUS"
.TP
\fB0\fR
Stopped by SIGTERM or SIGINT.
.TP
\fB1\fR
A bad manifest, a store another broker holds, or a failure closing the store; the reason is on stderr.
.TP
\fB2\fR
A usage error.
.SH ENVIRONMENT
.TP
\fBRUST_LOG\fR
The log level of the lines btbd writes on stderr (default \fBinfo\fR).
.TP
\fBXDG_STATE_HOME\fR
The default store: \fI$XDG_STATE_HOME/btb/APP_ID/btb.sqlite3\fR (\fI~/.local/state\fR when unset).
.TP
\fBXDG_RUNTIME_DIR\fR
Where btbd listens for btbctl and the app's processes (its control socket).
.SH FILES
.TP
\fI~/.local/share/btb/APP_ID/manifest.toml\fR
The manifest \fBbtbd@APP_ID.service\fR passes to btbd; \fBbtbctl enable\fR installs it there.
.TP
\fI/usr/lib/systemd/user/btbd@.service\fR
The systemd user unit (instance = app id): \fBsystemctl \-\-user enable \-\-now btbd@APP_ID.service\fR.
.SH "SEE ALSO"
\fBbtbctl\fR(1), \fBsystemd.unit\fR(5), \fBjournalctl\fR(1)
"#;

fn main() -> ExitCode {
    // Before any thread starts (btb's threads inherit the mask): SIGTERM and SIGINT wait for
    // `sigwait` below instead of killing the process, so close runs.
    // SIGCHLD too: an orphan that exits is reaped here (`orphans`).
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGCHLD);
    if let Err(e) = signals.thread_block() {
        eprintln!("btbd: cannot block SIGTERM, SIGINT and SIGCHLD: {e}");
        return ExitCode::from(1);
    }
    let cli = Cli::parse(); // usage errors exit 2
    if let Some(dir) = &cli.generate_man {
        return match generate_man(dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!(
                    "btbd: cannot write the man page into {}: {e}",
                    dir.display()
                );
                ExitCode::from(1)
            }
        };
    }
    let manifest = cli.manifest.expect("clap requires --manifest");
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        log::warn!(target: "btbd", "cannot become a child subreaper ({e}): what exec hosts orphan goes to init");
    }

    let manifest = match Manifest::load(&manifest) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("btbd: {}", e.message());
            return ExitCode::from(1);
        }
    };
    let app_id = manifest.app_id().to_owned();
    let store = cli
        .store
        .map_or(StoreLocation::Default, StoreLocation::File);
    // Paused: nothing runs until btbd knows it can be reached.
    let system = match System::open(SystemOptions {
        manifest: Some(manifest),
        store,
        paused: true,
        ..SystemOptions::default()
    }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("btbd: {}", e.message());
            return ExitCode::from(1);
        }
    };
    if !system.is_broker() {
        // Another process's broker holds the store: btbd exists to be the broker, not a client.
        eprintln!(
            "btbd: store {} is in use by another btb system (the broker in pid {}); stop it, or give btbd another store",
            system.store_path(),
            system.broker_pid()
        );
        return ExitCode::from(1);
    }
    // A broker the app's processes and btbctl cannot reach would run tasks no one can see or
    // request: refuse to run, saying why.
    let socket = match system.control_socket() {
        Ok(path) => path,
        Err(e) => {
            eprintln!(
                "btbd: no control socket, so the app's processes and btbctl could not reach this broker: {}",
                e.message()
            );
            let _ = system.close();
            return ExitCode::from(1);
        }
    };
    if let Err(e) = system.start() {
        eprintln!("btbd: {}", e.message());
        return ExitCode::from(1);
    }
    let registrations = system.all_tasks().map_or(0, |t| t.len());
    log::info!(
        target: "btbd",
        "broker of {app_id:?} (pid {}): {registrations} registration(s), store {}, socket {}",
        std::process::id(),
        system.store_path(),
        socket.display()
    );
    println!("btbd: ready"); // for supervisors and tests that wait for it

    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => orphans::reap(),
            Ok(signal) => {
                log::info!(
                    target: "btbd",
                    "{}: canceling running tasks (TERMINATING) and closing",
                    signal.as_str()
                );
                break;
            }
            Err(e) => {
                log::error!(target: "btbd", "waiting for a signal failed ({e}): closing");
                break;
            }
        }
    }
    let closed = system.close();
    orphans::stop(std::time::Duration::from_millis(u64::from(
        btb_core::Policy::default().grace_ms,
    )));
    match closed {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("btbd: closing: {}", e.message());
            ExitCode::from(1)
        }
    }
}

/// btbd as a child subreaper (`PR_SET_CHILD_SUBREAPER`): a process orphaned below it — a
/// descendant of an exec host whose parent exited, a daemon's double fork — becomes its child
/// instead of init's.
///
/// Which children are orphans: the kernel gives an orphan to the subreaper's first live thread,
/// the main thread, and btbd's main thread starts no process (hosts and the activated app are
/// started, supervised and reaped through their pidfds by btb's worker threads). So the main
/// thread's children are orphans and nothing else, and waiting with `__WNOTHREAD` (only the
/// calling thread's children) never reaps a host that a worker waits on. (A thread's children go
/// to the main thread when that thread ends; btb's workers end only in `close`, after which the
/// main thread reaps again only once btb's threads are joined and have reaped theirs.)
mod orphans {
    use std::os::fd::OwnedFd;
    use std::time::{Duration, Instant};

    use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
    use rustix::process::{Pid, PidfdFlags, Signal};

    /// Reaps the orphans that exited (on SIGCHLD: one may stand for several).
    pub(super) fn reap() {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::__WNOTHREAD;
        loop {
            match waitid(Id::All, flags) {
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return,
                Ok(status) => {
                    log::debug!(target: "btbd", "reaped an orphan: {status:?}");
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    log::error!(target: "btbd", "reaping orphans: {e}");
                    return;
                }
            }
        }
    }

    /// The orphans alive now (the main thread's children, from /proc), as pidfds. A pid listed
    /// there is an unreaped child of this thread, which only this thread reaps: it names that
    /// child until then.
    fn alive() -> Vec<OwnedFd> {
        let me = std::process::id();
        std::fs::read_to_string(format!("/proc/{me}/task/{me}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| Pid::from_raw(p.parse().ok()?))
            .filter_map(|pid| rustix::process::pidfd_open(pid, PidfdFlags::empty()).ok())
            .filter(|fd| !exited(fd, None))
            .collect()
    }

    /// Whether the process of a pidfd has exited, waiting until `deadline` at most.
    fn exited(fd: &OwnedFd, deadline: Option<Instant>) -> bool {
        let left = deadline.map_or(Duration::ZERO, |d| {
            d.saturating_duration_since(Instant::now())
        });
        let timeout = rustix::time::Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
        loop {
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(n) => return n > 0,
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => return true,
            }
        }
    }

    /// At exit (after close): the orphans still alive get SIGTERM, and SIGKILL after `grace`;
    /// then all are reaped. Nothing an exec host orphaned outlives btbd.
    pub(super) fn stop(grace: Duration) {
        for signal in [Signal::TERM, Signal::KILL] {
            let alive = alive();
            if alive.is_empty() {
                break;
            }
            log::info!(target: "btbd", "{} process(es) orphaned by exec hosts still run: {signal:?}", alive.len());
            for fd in &alive {
                let _ = rustix::process::pidfd_send_signal(fd, signal);
            }
            let deadline = Instant::now() + grace;
            for fd in &alive {
                exited(fd, Some(deadline));
            }
        }
        reap();
    }
}
