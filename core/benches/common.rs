//! Shared by the custom-harness benches: percentiles and a system factory.

#![allow(dead_code)]

use btb_core::*;

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub fn summary(name: &str, mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (p50, p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
    println!(
        "{name:<44} n={:<7} p50 {:>9.2} µs   p99 {:>9.2} µs",
        samples.len(),
        p50,
        p99
    );
    (p50, p99)
}

pub fn manifest() -> Manifest {
    let mut m = Manifest::new("org.example.bench", "1").unwrap();
    m.declare(TaskDeclaration::new("bench.App", &["general"]).unwrap())
        .unwrap();
    m.declare(TaskDeclaration::new("bench.Timer", &["timer"]).unwrap())
        .unwrap();
    m
}

pub fn open(store: StoreLocation, policy: Policy) -> System {
    System::open(SystemOptions {
        manifest: Some(manifest()),
        store,
        clock: Clock::Real,
        simulated: true,
        policy,
        paused: false,
        ..SystemOptions::default()
    })
    .unwrap()
}

/// Registers a task with a new application trigger on `bench.App`; returns the trigger's id.
pub fn app_task(system: &System, name: &str) -> uuid::Uuid {
    let trigger = Trigger::application();
    let Trigger::Application { id } = trigger else {
        unreachable!()
    };
    let mut b = Builder::new();
    b.name = Some(name.into());
    b.task_entry_point = Some("bench.App".into());
    b.set_trigger(trigger);
    system.register(&b).unwrap();
    id
}
