//! `btbd`: a broker with no app code (SPEC §10), for apps whose tasks are `exec` entry points, so
//! that they run while the app is closed. systemd starts it as a user unit
//! (`contrib/systemd/btbd@.service`, instance = app id).
//!
//! It holds the app's store and runs what becomes due; `btbctl` talks to it through the control
//! socket. SIGTERM or SIGINT: running instances are canceled with `TERMINATING`, given their grace,
//! and btbd exits 0. SIGHUP, or the manifest file changing: btbd re-reads it, and a new `version`
//! services the app (runs canceled with `SERVICING_UPDATE`, the new manifest taken,
//! `SERVICING_COMPLETE` fired). The store removed (`btbctl uninstall`): btbd closes and exits 0.
//! A bad manifest, or a store another broker holds, exits 1 with the reason.
//! Logs go to stderr (the journal, under systemd); `RUST_LOG` sets the level (default `info`).
//!
//! btbd is a child subreaper (SPEC §5, "Under btbd"): what its exec hosts orphan (a daemon's double
//! fork) becomes its child, is reaped when it exits, and is stopped when btbd exits (`orphans.rs`).

mod orphans;
mod watch;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use btb_core::{Manifest, StoreLocation, System, SystemOptions};
use clap::{CommandFactory, Parser};
use watch::{Wake, Watch};

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
.TP
\fBSIGHUP\fR
Re-read the manifest (as when its file changes). A new \fBversion\fR services the app: running task instances are canceled with reason SERVICING_UPDATE, btbd takes the new manifest, and the SERVICING_COMPLETE system trigger fires. A manifest that does not load, or of the same version, changes nothing (logged).
.SH FILES WATCHED
.TP
The manifest
Written in place or replaced by a rename: re-read, as on SIGHUP.
.TP
The store
Removed (\fBbtbctl uninstall\fR): btbd closes and exits 0.
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
    // Before any thread starts (btb's threads inherit the mask): SIGTERM, SIGINT, SIGHUP and
    // SIGCHLD are read from a signalfd below instead of killing the process, so close runs (and
    // an orphan that exits is reaped, `orphans.rs`).
    let signals = watch::signals();
    if let Err(e) = signals.thread_block() {
        eprintln!("btbd: cannot block SIGTERM, SIGINT, SIGHUP and SIGCHLD: {e}");
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
    let manifest_path = cli.manifest.expect("clap requires --manifest");
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        log::warn!(target: "btbd", "cannot become a child subreaper ({e}): what exec hosts orphan goes to init");
    }

    let manifest = match Manifest::load(&manifest_path) {
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
    // Watched before btbd says it is ready: a change from then on is never missed.
    let mut watch = match Watch::new(&signals, &manifest_path, Path::new(system.store_path())) {
        Ok(w) => w,
        Err(e) => {
            eprintln!(
                "btbd: cannot watch the manifest {} and the store {}: {e}",
                manifest_path.display(),
                system.store_path()
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
        match watch.next() {
            Ok(Wake::Stop(signal)) => {
                log::info!(
                    target: "btbd",
                    "{}: canceling running tasks (TERMINATING) and closing",
                    signal.as_str()
                );
                break;
            }
            Ok(Wake::ChildExited) => orphans::reap(),
            Ok(Wake::Reload) => reload(&system, &manifest_path, "SIGHUP"),
            Ok(Wake::ManifestChanged) => reload(&system, &manifest_path, "the manifest changed"),
            Ok(Wake::StoreRemoved) => {
                log::info!(
                    target: "btbd",
                    "the store {} was removed (the app was uninstalled): closing",
                    system.store_path()
                );
                break;
            }
            Err(e) => {
                log::error!(target: "btbd", "waiting for a signal or a file failed ({e}): closing");
                break;
            }
        }
    }
    let closed = system.close();
    orphans::stop(std::time::Duration::from_millis(u64::from(
        system.policy().grace_ms,
    )));
    match closed {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("btbd: closing: {}", e.message());
            ExitCode::from(1)
        }
    }
}

/// Re-reads the manifest and services the app when its version changed (SPEC §10). A manifest
/// that does not load (half written, say) changes nothing: the next change is read again.
fn reload(system: &System, path: &Path, why: &str) {
    let manifest = match Manifest::load(path) {
        Ok(m) => m,
        Err(e) => {
            log::error!(target: "btbd", "{why}: the manifest does not load, keeping the one in force: {}", e.message());
            return;
        }
    };
    let version = manifest.version().to_owned();
    match system.service(manifest) {
        Ok(true) => log::info!(
            target: "btbd",
            "{why}: serviced to version {version:?} (running tasks canceled with SERVICING_UPDATE; SERVICING_COMPLETE fired)"
        ),
        Ok(false) => log::info!(
            target: "btbd",
            "{why}: version {version:?} unchanged; nothing to do (raise the version to service the app)"
        ),
        Err(e) => log::error!(target: "btbd", "{why}: cannot service the app: {}", e.message()),
    }
}
