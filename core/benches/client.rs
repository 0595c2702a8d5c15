//! Client mode (SPEC §10) next to in-process, in the same run:
//! - a durable registration from a client process (over the control socket) vs in the broker's
//!   own process;
//! - `request` → run start: in-process; from a client whose own run function runs the task (the
//!   broker hands the run back over the socket); from a client to a run function in the broker
//!   process (its start time read from a pipe, CLOCK_MONOTONIC on both sides).
//!
//! The broker of the client cases is this bench binary run with `--broker STORE DURABILITY`.
//! Everything runs twice: with the store's default durability (`synchronous=FULL`: each run
//! start waits for an fsync, in both cases), then with `synchronous=NORMAL` (no fsync), which
//! leaves only what client mode adds — the socket hops between the processes.
//!
//!   cargo bench -p btb-core --bench client [-- N]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::Instant;

use btb_core::*;
use common::summary;

const APP: &str = "org.example.bench.client";

fn now_ns() -> i128 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec)
}

fn manifest() -> Manifest {
    let mut m = Manifest::new(APP, "1").unwrap();
    for ep in ["bench.Here", "bench.There"] {
        m.declare(TaskDeclaration::new(ep, &["general"]).unwrap())
            .unwrap();
    }
    m
}

fn open(path: &Path, durability: Durability) -> System {
    System::open(SystemOptions {
        manifest: Some(manifest()),
        store: StoreLocation::File(path.to_owned()),
        simulated: true,
        policy: Policy {
            durability,
            ..Policy::default()
        },
        ..SystemOptions::default()
    })
    .unwrap()
}

fn durability_arg(d: Durability) -> &'static str {
    match d {
        Durability::Full => "full",
        Durability::Normal => "normal",
    }
}

fn builder(name: &str, entry_point: &str) -> Builder {
    let mut b = Builder::new();
    b.name = Some(name.into());
    b.task_entry_point = Some(entry_point.into());
    b.set_trigger(Trigger::application());
    b
}

/// Durable registrations, one at a time: µs each.
fn registrations(system: &System, n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let b = builder(&format!("r{i}"), "bench.Here");
            let t = Instant::now();
            system.register(&b).unwrap();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect()
}

/// `request` → run start, `n` times: µs each. `started` waits for the run's start stamp; each
/// request follows the end of the previous run (heard through a completed handler).
fn request_to_start(registration: &Registration, n: usize, started: impl Fn() -> i128) -> Vec<f64> {
    let (done_tx, done) = mpsc::channel();
    registration
        .add_completed(Arc::new(move |_, _| {
            let _ = done_tx.send(());
        }))
        .unwrap();
    (0..n)
        .map(|_| {
            let t0 = now_ns();
            assert_eq!(
                registration.request(None).unwrap(),
                ApplicationTriggerResult::Allowed
            );
            let latency = (started() - t0) as f64 / 1000.0;
            done.recv().unwrap();
            latency
        })
        .collect()
}

/// A run function here that stamps its start; the registration that runs it.
fn stamped_here(system: &System) -> (Registration, mpsc::Receiver<i128>) {
    let (tx, rx) = mpsc::channel::<i128>();
    system
        .register_entry_point(
            "bench.Here",
            Some(Handler::Call(Arc::new(move |_| {
                let _ = tx.send(now_ns());
            }))),
        )
        .unwrap();
    (system.register(&builder("here", "bench.Here")).unwrap(), rx)
}

fn broker(store: &str, durability: &str) {
    let durability = match durability {
        "full" => Durability::Full,
        _ => Durability::Normal,
    };
    let system = open(Path::new(store), durability);
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    system
        .register_entry_point(
            "bench.There",
            Some(Handler::Call(Arc::new(move |_| {
                let mut out = out.lock().unwrap();
                writeln!(out, "{}", now_ns()).unwrap();
                out.flush().unwrap();
            }))),
        )
        .unwrap();
    println!("ready");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    system.close().unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--broker") {
        broker(&args[at + 1], &args[at + 2]);
        return;
    }
    let n: usize = args
        .iter()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(300);
    for durability in [Durability::Full, Durability::Normal] {
        println!("store durability {}:", durability_arg(durability).to_uppercase());
        compare(n, durability);
    }
}

fn compare(n: usize, durability: Durability) {
    let dir = tempfile::tempdir().unwrap();

    // In-process: this process is the broker.
    let local = open(&dir.path().join("local.sqlite3"), durability);
    let reg_local = summary("register, in-process (durable)", registrations(&local, n));
    let (here, stamps) = stamped_here(&local);
    let req_local = summary(
        "request → run start, in-process",
        request_to_start(&here, n, || stamps.recv().unwrap()),
    );
    local.close().unwrap();

    // A client of a broker in another process.
    let store = dir.path().join("shared.sqlite3");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("--broker")
        .arg(&store)
        .arg(durability_arg(durability))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let client = open(&store, durability);
    assert!(!client.is_broker());
    let reg_client = summary("register, from a client process", registrations(&client, n));
    let (here, stamps) = stamped_here(&client);
    let req_client = summary(
        "request → run start, client's own run fn",
        request_to_start(&here, n, || stamps.recv().unwrap()),
    );
    let there = client.register(&builder("there", "bench.There")).unwrap();
    let lines = std::sync::Mutex::new(lines);
    let req_there = summary(
        "request → run start, client → broker's fn",
        request_to_start(&there, n, || {
            let line = lines.lock().unwrap().next().unwrap().unwrap();
            line.parse().unwrap()
        }),
    );
    client.close().unwrap();
    drop(child.stdin.take());
    child.wait().unwrap();

    println!(
        "ratios (p50): register client/in-process {:.2}×; request→start client(own fn)/in-process {:.2}×, client→broker fn/in-process {:.2}×",
        reg_client.0 / reg_local.0,
        req_client.0 / req_local.0,
        req_there.0 / req_local.0
    );
}
