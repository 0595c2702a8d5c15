//! Client mode (SPEC §10) next to in-process, in the same run (interleaved blocks):
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
/// The in-process system's app: it runs beside the other broker, so it must not answer at the
/// same control socket.
const APP_LOCAL: &str = "org.example.bench.client.local";
/// Each comparison runs in this many interleaved blocks, so that all cases see the same machine
/// (fsync latency on a shared disk varies by 10× within seconds).
const BLOCKS: usize = 10;

fn now_ns() -> i128 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec)
}

fn manifest(app: &str) -> Manifest {
    let mut m = Manifest::new(app, "1").unwrap();
    for ep in ["bench.Here", "bench.There"] {
        m.declare(TaskDeclaration::new(ep, &["general"]).unwrap())
            .unwrap();
    }
    m
}

fn open(app: &str, path: &Path, durability: Durability) -> System {
    System::open(SystemOptions {
        manifest: Some(manifest(app)),
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

/// Durable registrations, one at a time: µs each. `block` keeps the names of each call apart.
fn registrations(system: &System, block: usize, n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let b = builder(&format!("r{block}.{i}"), "bench.Here");
            let t = Instant::now();
            system.register(&b).unwrap();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect()
}

/// A registration whose run ends are heard (a completed handler), so that each request can
/// follow the end of the previous run.
struct Probe {
    registration: Registration,
    done: mpsc::Receiver<()>,
}

impl Probe {
    fn new(registration: Registration) -> Probe {
        let (done_tx, done) = mpsc::channel();
        registration
            .add_completed(Arc::new(move |_, _| {
                let _ = done_tx.send(());
            }))
            .unwrap();
        Probe { registration, done }
    }

    /// `request` → run start, `n` times: µs each. `started` waits for the run's start stamp.
    fn request_to_start(&self, n: usize, started: impl Fn() -> i128) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let t0 = now_ns();
                assert_eq!(
                    self.registration.request(None).unwrap(),
                    ApplicationTriggerResult::Allowed
                );
                let latency = (started() - t0) as f64 / 1000.0;
                self.done.recv().unwrap();
                latency
            })
            .collect()
    }
}

/// A run function here that stamps its start; the registration that runs it.
fn stamped_here(system: &System) -> (Probe, mpsc::Receiver<i128>) {
    let (tx, rx) = mpsc::channel::<i128>();
    system
        .register_entry_point(
            "bench.Here",
            Some(Handler::Call(Arc::new(move |_| {
                let _ = tx.send(now_ns());
            }))),
        )
        .unwrap();
    let registration = system.register(&builder("here", "bench.Here")).unwrap();
    (Probe::new(registration), rx)
}

fn broker(store: &str, durability: &str) {
    let durability = match durability {
        "full" => Durability::Full,
        _ => Durability::Normal,
    };
    let system = open(APP, Path::new(store), durability);
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
        println!(
            "store durability {}:",
            durability_arg(durability).to_uppercase()
        );
        compare(n, durability);
    }
}

fn compare(n: usize, durability: Durability) {
    let dir = tempfile::tempdir().unwrap();
    // In-process: this process is the broker.
    let local = open(APP_LOCAL, &dir.path().join("local.sqlite3"), durability);
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
    let client = open(APP, &store, durability);
    assert!(!client.is_broker());

    let (local_here, local_stamps) = stamped_here(&local);
    let (client_here, client_stamps) = stamped_here(&client);
    let there = Probe::new(client.register(&builder("there", "bench.There")).unwrap());
    let lines = std::sync::Mutex::new(lines);
    let per_block = n.div_ceil(BLOCKS);
    let mut samples: [Vec<f64>; 5] = Default::default();
    for block in 0..BLOCKS {
        samples[0].extend(registrations(&local, block, per_block));
        samples[1].extend(registrations(&client, block, per_block));
        samples[2].extend(local_here.request_to_start(per_block, || local_stamps.recv().unwrap()));
        samples[3]
            .extend(client_here.request_to_start(per_block, || client_stamps.recv().unwrap()));
        samples[4].extend(there.request_to_start(per_block, || {
            let line = lines.lock().unwrap().next().unwrap().unwrap();
            line.parse().unwrap()
        }));
    }
    let [reg_local, reg_client, req_local, req_client, req_there] = samples;
    let reg_local = summary("register, in-process (durable)", reg_local);
    let reg_client = summary("register, from a client process", reg_client);
    let req_local = summary("request → run start, in-process", req_local);
    let req_client = summary("request → run start, client's own run fn", req_client);
    let req_there = summary("request → run start, client → broker's fn", req_there);
    client.close().unwrap();
    local.close().unwrap();
    drop(child.stdin.take());
    child.wait().unwrap();

    println!(
        "ratios (p50): register client/in-process {:.2}×; request→start client(own fn)/in-process {:.2}× (target <= 2×), client→broker fn/in-process {:.2}×",
        reg_client.0 / reg_local.0,
        req_client.0 / req_local.0,
        req_there.0 / req_local.0
    );
    println!(
        "ratios (p99): request→start client(own fn)/in-process {:.2}×, client→broker fn/in-process {:.2}×",
        req_client.1 / req_local.1,
        req_there.1 / req_local.1
    );
}
