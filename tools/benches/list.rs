//! `btbctl list` wall time on a store of 10,000 tasks (SPEC §10), through a running broker and
//! from the store alone, next to the floor of any btbctl call: `btbctl --version` (process start).
//!
//!   cargo bench -p btb-tools --bench list [-- RUNS]

use std::process::Command;
use std::time::Instant;

use btb_core::*;

const TASKS: usize = 10_000;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Runs btbctl `runs` times; p50 and p99 wall time in ms.
fn time(label: &str, runs: usize, args: &[&str], env: &std::path::Path) -> (f64, f64) {
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_btbctl"))
            .args(args)
            .env("XDG_RUNTIME_DIR", env)
            .output()
            .unwrap();
        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (p50, p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
    println!("{label:<44} n={runs:<4} p50 {p50:>8.1} ms   p99 {p99:>8.1} ms");
    (p50, p99)
}

fn main() {
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    std::fs::create_dir(&run_dir).unwrap();
    // SAFETY: single-threaded so far; the broker opened below reads it.
    unsafe { std::env::set_var("XDG_RUNTIME_DIR", &run_dir) };
    let store = dir.path().join("btb.sqlite3");
    let app = "org.example.bench.list";
    let mut m = Manifest::new(app, "1").unwrap();
    m.declare(TaskDeclaration::new("app.Run", &["general", "timer"]).unwrap())
        .unwrap();
    let sys = System::open(SystemOptions {
        manifest: Some(m),
        store: StoreLocation::File(store.clone()),
        simulated: true,
        policy: Policy {
            durability: Durability::Normal,
            ..Policy::default()
        },
        ..SystemOptions::default()
    })
    .unwrap();
    for i in 0..TASKS {
        let mut b = Builder::new();
        b.name = Some(format!("task-{i:05}"));
        b.task_entry_point = Some("app.Run".into());
        b.set_trigger(if i % 2 == 0 {
            Trigger::Time {
                freshness_minutes: 15 + (i % 100) as u32,
                one_shot: false,
            }
        } else {
            Trigger::application()
        });
        sys.register(&b).unwrap();
    }
    let store_arg = store.display().to_string();
    let base = ["--app", app, "--store", store_arg.as_str()];
    println!("btbctl on a store of {TASKS} tasks (wall time, process start included):");
    let (floor, _) = time(
        "btbctl --version (process start)",
        runs,
        &["--version"],
        &run_dir,
    );
    let args = |extra: &[&'static str]| [&base[..], extra].concat();
    let (live, live99) = time(
        "btbctl list (running broker)",
        runs,
        &args(&["list"]),
        &run_dir,
    );
    let (live_json, _) = time(
        "btbctl list --json (running broker)",
        runs,
        &args(&["list", "--json"]),
        &run_dir,
    );
    sys.close().unwrap();
    let (offline, offline99) = time(
        "btbctl list (store alone)",
        runs,
        &args(&["list"]),
        &run_dir,
    );
    println!(
        "RESULT btbctl list, {TASKS} tasks: broker p50 {live:.1} ms p99 {live99:.1} ms (--json {live_json:.1} ms); \
         store alone p50 {offline:.1} ms p99 {offline99:.1} ms; process start {floor:.1} ms"
    );
}
