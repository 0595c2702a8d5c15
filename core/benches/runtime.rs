//! Application trigger `request` → run-function start latency, next to its limit measured in the
//! same run (a bare condvar hand-off to an idle thread), and the throughput of 100,000 trivial runs.
//!
//!     cargo bench -p btb-core --bench runtime   [BTB_BENCH_SAMPLES=2000] [BTB_BENCH_RUNS=100000]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use btb_core::*;
use common::*;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One idle thread waiting on a condvar; the sample is notify → waiter running.
fn condvar_handoff(samples: usize) -> Vec<f64> {
    let slot = Arc::new((Mutex::new(None::<Instant>), Condvar::new()));
    let (tx, rx) = mpsc::channel::<Instant>();
    let waiter = {
        let slot = Arc::clone(&slot);
        std::thread::spawn(move || {
            loop {
                let mut g = slot.0.lock().unwrap();
                while g.is_none() {
                    g = slot.1.wait(g).unwrap();
                }
                let _sent = g.take().unwrap();
                let woke = Instant::now();
                drop(g);
                if tx.send(woke).is_err() {
                    return;
                }
            }
        })
    };
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        std::thread::sleep(Duration::from_micros(300)); // let the waiter's vCPU go idle
        let t0 = Instant::now();
        *slot.0.lock().unwrap() = Some(t0);
        slot.1.notify_one();
        let t1 = rx.recv().unwrap();
        out.push((t1 - t0).as_secs_f64() * 1e6);
    }
    drop(rx);
    *slot.0.lock().unwrap() = Some(Instant::now());
    slot.1.notify_one();
    waiter.join().unwrap();
    out
}

/// `request` → the run function starts, one run at a time, the worker idle in between.
fn btb_request_latency(samples: usize) -> Vec<f64> {
    btb_request_latency_with(samples, Policy::default())
}

/// The same with no time limit on application-triggered runs: a run start then plans no wake of
/// the broker thread (`wake_broker_by`: the eventfd write that re-arms its timer for the run's
/// limit). The difference between the two is what that wake costs the run start.
fn btb_request_latency_unlimited(samples: usize) -> Vec<f64> {
    let policy = Policy {
        time_limit_seconds: [0; 6],
        ..Policy::default()
    };
    btb_request_latency_with(samples, policy)
}

fn btb_request_latency_with(samples: usize, policy: Policy) -> Vec<f64> {
    let system = open(StoreLocation::Memory, policy);
    let (tx, rx) = mpsc::channel::<Instant>();
    let tx = Mutex::new(tx);
    system
        .register_entry_point(
            "bench.App",
            Some(Handler::Call(Arc::new(move |_i: &Instance| {
                let started = Instant::now();
                let _ = tx.lock().unwrap().send(started);
            }))),
        )
        .unwrap();
    let id = app_task(&system, "latency");
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        std::thread::sleep(Duration::from_micros(300));
        let t0 = Instant::now();
        assert_eq!(
            system.request(&id, None).unwrap(),
            ApplicationTriggerResult::Allowed
        );
        let t1 = rx.recv().unwrap();
        out.push((t1 - t0).as_secs_f64() * 1e6);
        assert!(system.wait_idle(Duration::from_secs(10)).unwrap());
    }
    system.close().unwrap();
    out
}

/// 100,000 trivial runs: 1,024 registrations with application triggers; each completed handler
/// requests its registration again until the total is reached, so the broker always has work
/// queued and no thread spins.
fn throughput(runs: u64) {
    let policy = Policy {
        history_limit: 10,
        ..Policy::default()
    };
    let system = open(StoreLocation::Memory, policy);
    let done = Arc::new(AtomicU64::new(0));
    let requested = Arc::new(AtomicU64::new(0));
    system
        .register_entry_point(
            "bench.App",
            Some(Handler::Call(Arc::new(|_i: &Instance| {}))),
        )
        .unwrap();
    let mut regs = Vec::new();
    for n in 0..1024 {
        let mut b = Builder::new();
        b.name = Some(format!("t{n}"));
        b.task_entry_point = Some("bench.App".into());
        b.set_trigger(Trigger::application());
        let reg = system.register(&b).unwrap();
        let (d, q) = (Arc::clone(&done), Arc::clone(&requested));
        reg.add_completed(Arc::new(move |r: &Registration, _c: &Completion| {
            d.fetch_add(1, Ordering::Relaxed);
            if q.fetch_add(1, Ordering::Relaxed) < runs {
                assert_eq!(r.request(None).unwrap(), ApplicationTriggerResult::Allowed);
            }
        }))
        .unwrap();
        regs.push(reg);
    }
    let start = Instant::now();
    for reg in &regs {
        if requested.fetch_add(1, Ordering::Relaxed) < runs {
            assert_eq!(
                reg.request(None).unwrap(),
                ApplicationTriggerResult::Allowed
            );
        }
    }
    assert!(system.wait_idle(Duration::from_secs(300)).unwrap());
    let elapsed = start.elapsed();
    assert_eq!(done.load(Ordering::Relaxed), runs);
    println!(
        "throughput: {runs} trivial runs in {:.2} s = {:.0} runs/s",
        elapsed.as_secs_f64(),
        runs as f64 / elapsed.as_secs_f64()
    );
    system.close().unwrap();
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list
    }
    let samples = env("BTB_BENCH_SAMPLES", 2000);
    let mut cv = Vec::new();
    let mut btb = Vec::new();
    let mut unlimited = Vec::new();
    // Interleave in blocks so all see the same machine weather.
    for _ in 0..10 {
        cv.extend(condvar_handoff(samples / 10));
        btb.extend(btb_request_latency(samples / 10));
        unlimited.extend(btb_request_latency_unlimited(samples / 10));
    }
    let (cv50, cv99) = summary("condvar hand-off to an idle thread (limit)", cv);
    let (b50, b99) = summary("btb request → run function starts", btb);
    let (u50, u99) = summary("  the same, no time limit (no broker wake)", unlimited);
    println!(
        "ratio btb/condvar: p50 {:.2}x, p99 {:.2}x (targets: p50 <= 2x, p99 <= 5x); \
         with no time limit: p50 {:.2}x, p99 {:.2}x",
        b50 / cv50,
        b99 / cv99,
        u50 / cv50,
        u99 / cv99
    );
    throughput(env("BTB_BENCH_RUNS", 100_000) as u64);
}
