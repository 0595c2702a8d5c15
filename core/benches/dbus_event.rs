//! NetworkManager `PropertiesChanged` → task start latency, next to its limit measured in the same
//! run: a bare zbus subscriber to the same signal, timestamped when it receives it. Both clocks
//! start just before the call that makes python-dbusmock's NetworkManager change `Connectivity`
//! (FULL ↔ NONE, so INTERNET_AVAILABLE flips and NETWORK_STATE_CHANGE fires each time).
//!
//!     cargo bench -p btb-core --bench dbus_event   [BTB_BENCH_SAMPLES=200]
//!
//! Needs dbus-daemon and python-dbusmock (`BTB_DBUSMOCK_PYTHON`; `make bench` sets it up).

mod common;
#[path = "../tests/common/dbus.rs"]
mod dbus;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use btb_core::*;
use common::summary;
use dbus::*;
use zbus::MessageStream;

const DEADLINE: Duration = Duration::from_secs(10);

fn main() {
    let samples: usize = std::env::var("BTB_BENCH_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let Some(mut bus) = TestBus::start("the dbus_event bench") else {
        println!("*** SKIPPED: the dbus_event bench (dbus-daemon or python-dbusmock missing)");
        return;
    };
    bus.mock("networkmanager", NM, None);

    // The limit: a bare subscriber on a thread of its own, as btb's watcher is.
    let (heard_tx, heard) = mpsc::channel::<Instant>();
    let listener = Client::connect(&bus.address);
    let mut stream = zbus::block_on(MessageStream::for_match_rule(
        "type='signal',sender='org.freedesktop.NetworkManager',\
         interface='org.freedesktop.DBus.Properties',member='PropertiesChanged',\
         path='/org/freedesktop/NetworkManager'",
        listener.connection(),
        None,
    ))
    .expect("a subscription");
    std::thread::spawn(move || {
        zbus::block_on(async move {
            while let Some(Ok(_)) = next(&mut stream).await {
                if heard_tx.send(Instant::now()).is_err() {
                    return;
                }
            }
        })
    });

    // btb: a real system on that bus; one task on NETWORK_STATE_CHANGE.
    let mut manifest = Manifest::new("org.example.bench.dbus", "1").unwrap();
    manifest
        .declare(TaskDeclaration::new("bench.Net", &["systemEvent"]).unwrap())
        .unwrap();
    let sys = System::open(SystemOptions {
        manifest: Some(manifest),
        store: StoreLocation::Memory,
        clock: Clock::Real,
        simulated: false,
        platform: PlatformOptions {
            system_bus: Some(bus.address.clone()),
            power_supply_root: "/nonexistent/btb-bench/power_supply".into(),
            ..PlatformOptions::default()
        },
        ..SystemOptions::default()
    })
    .unwrap();
    let (started_tx, started) = mpsc::channel::<Instant>();
    let started_tx = std::sync::Mutex::new(started_tx);
    sys.register_entry_point(
        "bench.Net",
        Some(Handler::Call(std::sync::Arc::new(move |_i: &Instance| {
            let now = Instant::now();
            let _ = started_tx.lock().unwrap().send(now);
        }))),
    )
    .unwrap();
    let mut b = Builder::new();
    b.name = Some("on-network-change".into());
    b.task_entry_point = Some("bench.Net".into());
    b.set_trigger(Trigger::System {
        trigger_type: SystemTriggerType::NetworkStateChange as u32,
        one_shot: false,
    });
    sys.register(&b).unwrap();
    assert_eq!(
        sys.state_source(SystemConditionType::InternetAvailable)
            .unwrap(),
        "networkmanager"
    );

    let control = bus.client();
    let mut task = Vec::with_capacity(samples);
    let mut bare = Vec::with_capacity(samples);
    let warmup = 10;
    for i in 0..warmup + samples {
        let connectivity: u32 = if i % 2 == 0 { 1 } else { 4 }; // NONE, FULL
        let t0 = Instant::now();
        control.call(NM, NM_PATH, MOCK, "SetConnectivity", &(connectivity,));
        let t_bare = heard
            .recv_timeout(DEADLINE)
            .expect("the bare subscriber hears it");
        let t_task = started.recv_timeout(DEADLINE).expect("the task starts");
        // The run and its bookkeeping are over before the next change.
        assert!(sys.wait_idle(DEADLINE).unwrap());
        if i >= warmup {
            bare.push((t_bare - t0).as_secs_f64() * 1e6);
            task.push((t_task - t0).as_secs_f64() * 1e6);
        }
    }
    let (bare50, bare99) = summary("bare zbus subscriber: call → signal", bare);
    let (task50, task99) = summary("btb: call → task start", task);
    println!(
        "RESULT dbus_event: task start p50 {task50:.0} µs p99 {task99:.0} µs; bare subscriber p50 \
         {bare50:.0} µs p99 {bare99:.0} µs; ratio of p50s {:.2} (target <= 2)",
        task50 / bare50
    );
    sys.close().unwrap();
}
