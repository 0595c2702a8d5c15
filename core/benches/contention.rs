//! The broker while another thread registers durably (SPEC §7: `synchronous=FULL`, every register
//! returns after its fsync): `request` → run-function start, and `Instance::set_progress`, next to
//! the limit measured in the same run — one raw SQLite insert+commit on the same file system, the
//! time a caller waits if it queues behind one registration's commit.
//!
//!     cargo bench -p btb-core --bench contention   [BTB_BENCH_SAMPLES=1000]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use btb_core::*;
use common::*;

fn samples() -> usize {
    std::env::var("BTB_BENCH_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

/// One raw rusqlite insert+commit with `synchronous=FULL` in WAL mode (the limit).
fn raw_commit(dir: &std::path::Path, n: usize) -> Vec<f64> {
    let conn = rusqlite::Connection::open(dir.join("raw.sqlite3")).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);",
    )
    .unwrap();
    (0..n)
        .map(|i| {
            let t0 = Instant::now();
            conn.execute("INSERT INTO t(v) VALUES (?1)", [format!("row {i}")])
                .unwrap();
            t0.elapsed().as_secs_f64() * 1e6
        })
        .collect()
}

/// Starts a thread registering durably in a loop until `stop`; returns how many it registered.
fn registering(system: &System, stop: &Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let system = system.clone();
    let stop = Arc::clone(stop);
    std::thread::spawn(move || {
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            let mut b = Builder::new();
            b.name = Some(format!("bulk{n}"));
            b.task_entry_point = Some("bench.Timer".into());
            b.set_trigger(Trigger::Time {
                freshness_minutes: 15,
                one_shot: false,
            });
            system.register(&b).unwrap();
            n += 1;
        }
        n
    })
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n = samples();
    let dir = tempfile::tempdir_in(std::env::current_dir().unwrap()).unwrap();
    let limit = raw_commit(dir.path(), n);

    let system = open(
        StoreLocation::File(dir.path().join("btb.sqlite3")),
        Policy::default(),
    );
    let (tx, rx) = mpsc::channel::<(Instant, Instance)>();
    let tx = Mutex::new(tx);
    let progress_us = Arc::new(Mutex::new(Vec::<f64>::new()));
    let progress_calls = Arc::new(AtomicU64::new(0));
    {
        let progress_us = Arc::clone(&progress_us);
        let calls = Arc::clone(&progress_calls);
        system
            .register_entry_point(
                "bench.App",
                Some(Handler::Call(Arc::new(move |i: &Instance| {
                    let started = Instant::now();
                    // A few progress reports per run, each timed on its own.
                    let mut times = Vec::with_capacity(4);
                    for p in [25, 50, 75, 100] {
                        let t0 = Instant::now();
                        i.set_progress(p);
                        times.push(t0.elapsed().as_secs_f64() * 1e6);
                    }
                    calls.fetch_add(4, Ordering::Relaxed);
                    progress_us.lock().unwrap().extend(times);
                    let _ = tx.lock().unwrap().send((started, i.clone()));
                }))),
            )
            .unwrap();
    }
    let id = app_task(&system, "latency");

    let stop = Arc::new(AtomicBool::new(false));
    let writer = registering(&system, &stop);
    let mut start_us = Vec::with_capacity(n);
    for _ in 0..n {
        std::thread::sleep(Duration::from_micros(300));
        let t0 = Instant::now();
        assert_eq!(
            system.request(&id, None).unwrap(),
            ApplicationTriggerResult::Allowed
        );
        let (started, _instance) = rx.recv().unwrap();
        start_us.push((started - t0).as_secs_f64() * 1e6);
        assert!(system.wait_idle(Duration::from_secs(30)).unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let registered = writer.join().unwrap();
    system.close().unwrap();

    println!("while another thread registered {registered} tasks durably (synchronous=FULL):");
    let (l50, l99) = summary("raw SQLite insert+commit, FULL (limit)", limit);
    let (s50, s99) = summary("btb request → run function starts", start_us);
    let progress = std::mem::take(&mut *progress_us.lock().unwrap());
    let (p50, p99) = summary("btb set_progress returns", progress);
    println!(
        "ratio to one commit: start p50 {:.2}x p99 {:.2}x; set_progress p50 {:.3}x p99 {:.3}x \
         (below 1x: callers do not wait for the disk)",
        s50 / l50,
        s99 / l99,
        p50 / l50,
        p99 / l99
    );
}
