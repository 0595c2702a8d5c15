//! Resident memory per registration: registers N periodic tasks (default 1,000,000) in a file
//! store, closes it, reopens it (the broker then holds every registration and its timer) and
//! reports the RSS growth per registration.
//!
//!     cargo bench -p btb-core --bench memory   [BTB_BENCH_REGISTRATIONS=1000000]

mod common;

use std::time::Instant;

use btb_core::*;
use common::*;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// In a fresh process (so memory freed by the registering phase cannot be reused): open the store
/// and report the RSS growth.
fn measure(path: &std::path::Path, n: usize) {
    let before = rss_bytes();
    let start = Instant::now();
    let system = open(StoreLocation::File(path.to_owned()), Policy::default());
    let after = rss_bytes();
    assert_eq!(system.all_tasks().unwrap().len(), n);
    println!(
        "fresh process opened the store in {:.1} s; RSS {:.1} MiB -> {:.1} MiB: {:.0} bytes per registration (target <= 1024)",
        start.elapsed().as_secs_f64(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        (after - before) as f64 / n as f64
    );
    system.close().unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--measure") {
        measure(
            std::path::Path::new(&args[i + 1]),
            args[i + 2].parse().unwrap(),
        );
        return;
    }
    let n: usize = std::env::var("BTB_BENCH_REGISTRATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("btb.sqlite3");
    let policy = Policy {
        durability: Durability::Normal,
        ..Policy::default()
    };
    let start = Instant::now();
    {
        let system = open(StoreLocation::File(path.clone()), policy);
        let mut b = Builder::new();
        b.task_entry_point = Some("bench.Timer".into());
        for i in 0..n {
            b.name = Some(format!("periodic-{i}"));
            b.set_trigger(Trigger::Time {
                freshness_minutes: 15 + (i % 1000) as u32,
                one_shot: false,
            });
            system.register(&b).unwrap();
        }
        system.close().unwrap();
    }
    println!(
        "registered {n} periodic tasks in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--measure")
        .arg(&path)
        .arg(n.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}
