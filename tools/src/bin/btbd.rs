//! `btbd`: a broker with no app code (SPEC §10), for apps whose tasks are `exec` entry points, so
//! that they run while the app is closed. systemd starts it as a user unit
//! (`contrib/systemd/btbd@.service`, instance = app id).
//!
//! It holds the app's store and runs what becomes due; `btbctl` talks to it through the control
//! socket. SIGTERM or SIGINT: running instances are canceled with `TERMINATING`, given their grace,
//! and btbd exits 0. A bad manifest, or a store another broker holds, exits 1 with the reason.
//! Logs go to stderr (the journal, under systemd); `RUST_LOG` sets the level (default `info`).

use std::path::PathBuf;
use std::process::ExitCode;

use btb_core::{Manifest, StoreLocation, System, SystemOptions};
use clap::Parser;
use nix::sys::signal::{SigSet, Signal};

#[derive(Parser)]
#[command(
    name = "btbd",
    version,
    about = "A btb broker with no app code: runs an app's exec tasks while the app is closed"
)]
struct Cli {
    /// The app's manifest (TOML).
    #[arg(long, value_name = "PATH")]
    manifest: PathBuf,
    /// The app's store, if not at the default location ($XDG_STATE_HOME/btb/<app_id>/btb.sqlite3).
    #[arg(long, value_name = "PATH")]
    store: Option<PathBuf>,
}

fn main() -> ExitCode {
    // Before any thread starts (btb's threads inherit the mask): SIGTERM and SIGINT wait for
    // `sigwait` below instead of killing the process, so close runs.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    if let Err(e) = signals.thread_block() {
        eprintln!("btbd: cannot block SIGTERM and SIGINT: {e}");
        return ExitCode::from(1);
    }
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    let manifest = match Manifest::load(&cli.manifest) {
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

    match signals.wait() {
        Ok(signal) => log::info!(
            target: "btbd",
            "{}: canceling running tasks (TERMINATING) and closing",
            signal.as_str()
        ),
        Err(e) => log::error!(target: "btbd", "waiting for a signal failed ({e}): closing"),
    }
    match system.close() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("btbd: closing: {}", e.message());
            ExitCode::from(1)
        }
    }
}
