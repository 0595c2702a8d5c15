//! Trigger → exec host start (SPEC §5), next to its limit in the same run: a bare `posix_spawn` of
//! the same binary. The child is this bench binary run with `--child-stamp`: it prints
//! CLOCK_MONOTONIC at the start of `main` and exits, so both paths include the same exec and
//! process start-up, and differ only by what the broker adds (dispatch, worker, socket pair,
//! environment, process group, pipes, pidfd).
//!
//!   cargo bench -p btb-core --bench exec_spawn [-- N]

mod common;

use std::ffi::CString;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::mpsc;

use btb_core::*;
use common::summary;

fn now_ns() -> i128 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec)
}

fn stamp_of(text: &str) -> i128 {
    text.trim()
        .parse()
        .expect("the child printed its start time")
}

/// A bare `posix_spawn` of `exe --child-stamp` with stdout to a pipe: request → child `main`.
fn posix_spawn_once(exe: &CString) -> f64 {
    use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, posix_spawn};
    let (r, w) = nix::unistd::pipe().unwrap();
    let mut actions = PosixSpawnFileActions::init().unwrap();
    actions.add_dup2(w.as_raw_fd(), 1).unwrap();
    let attr = PosixSpawnAttr::init().unwrap();
    let args = [exe.clone(), CString::new("--child-stamp").unwrap()];
    let env: [CString; 0] = [];
    let t0 = now_ns();
    let pid = posix_spawn(exe.as_c_str(), &actions, &attr, &args, &env).unwrap();
    drop(w);
    let mut out = String::new();
    std::fs::File::from(r).read_to_string(&mut out).unwrap();
    nix::sys::wait::waitpid(pid, None).unwrap();
    (stamp_of(&out) - t0) as f64 / 1000.0
}

fn main() {
    if std::env::args().any(|a| a == "--child-stamp") {
        println!("{}", now_ns());
        return;
    }
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(300);
    let exe = std::env::current_exe().unwrap();
    let mut manifest = Manifest::new("org.example.bench.exec", "1").unwrap();
    manifest
        .declare(
            TaskDeclaration::new("bench.Exec", &["general"])
                .unwrap()
                .with_exec(vec![exe.display().to_string(), "--child-stamp".into()])
                .unwrap(),
        )
        .unwrap();
    let sys = System::open(SystemOptions {
        manifest: Some(manifest),
        store: StoreLocation::Memory,
        simulated: true,
        ..SystemOptions::default()
    })
    .unwrap();
    let mut b = Builder::new();
    b.name = Some("exec".into());
    b.task_entry_point = Some("bench.Exec".into());
    b.set_trigger(Trigger::application());
    let reg = sys.register(&b).unwrap();
    let (tx, rx) = mpsc::channel();
    reg.add_completed(Arc::new(move |_: &Registration, c: &Completion| {
        let _ = tx.send(c.outcome);
    }))
    .unwrap();

    let exe_c = CString::new(exe.display().to_string()).unwrap();
    let (mut broker, mut bare) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n + 20 {
        // Interleaved, so that both see the same machine.
        let t0 = now_ns();
        reg.request(None).unwrap();
        assert_eq!(rx.recv().unwrap(), TaskOutcome::Succeeded);
        let run = reg.history().unwrap().pop().unwrap();
        let broker_us = (stamp_of(run.stdout.as_deref().unwrap()) - t0) as f64 / 1000.0;
        let bare_us = posix_spawn_once(&exe_c);
        if i >= 20 {
            broker.push(broker_us);
            bare.push(bare_us);
        }
    }
    println!("trigger -> exec host main(), {n} runs each (µs):");
    let (b50, b99) = summary("btb request -> child main (exec host)", broker);
    let (s50, s99) = summary("posix_spawn -> child main (limit)", bare);
    println!(
        "RESULT exec start: btb p50 {b50:.0} µs p99 {b99:.0} µs; posix_spawn p50 {s50:.0} µs p99 {s99:.0} µs; ratio p50 {:.2}x (target <= 1.5x)",
        b50 / s50
    );
    sys.close().unwrap();
}
