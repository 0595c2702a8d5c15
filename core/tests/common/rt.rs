//! Helpers for the runtime tests (`runtime_*.rs`, as `common::rt`): a system on a manual clock with a simulated
//! source, a run-function router keyed by task name, gates that block run functions until the test
//! releases them, and channel-based waits with deadlines (no sleeps anywhere).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use btb_core::{
    Builder, CancellationReason, Clock, Completion, Handler, Instance, Manifest, ManualClock,
    Policy, Registration, RunFn, StoreLocation, System, SystemOptions, TaskDeclaration, Trigger,
};
use uuid::Uuid;

pub use super::T0;
pub const SEC: i64 = 1_000;
pub const MIN: i64 = 60_000;
/// How long any single wait of a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Entry points declared by [`manifest`]: every one may use every trigger btb has.
pub const EP: &str = "app.All";
/// Declared, but no handler is ever registered for it.
pub const EP_UNHANDLED: &str = "app.Unhandled";
/// Declared; tests register a handler (or a resolver answer) for it as they need.
pub const EP_OTHER: &str = "app.Other";

pub fn manifest(app_id: &str, version: &str) -> Manifest {
    let mut m = Manifest::new(app_id, version).unwrap();
    for ep in [EP, EP_UNHANDLED, EP_OTHER] {
        m.declare(TaskDeclaration::new(ep, &["general", "systemEvent", "timer"]).unwrap())
            .unwrap();
    }
    m
}

/// A test policy: 1-minute minimum freshness, exact timers (window 0), 4 slots, default limits.
pub fn policy() -> Policy {
    Policy {
        min_freshness_minutes: 1,
        timer_window_seconds: 0,
        max_concurrent: 4,
        ..Policy::default()
    }
}

pub fn options(
    app_id: &str,
    version: &str,
    store: StoreLocation,
    clock: &ManualClock,
    policy: Policy,
) -> SystemOptions {
    SystemOptions {
        manifest: Some(manifest(app_id, version)),
        store,
        clock: Clock::Manual(clock.clone()),
        simulated: true,
        policy,
        // Started by `Rig::attach` once the router is installed, so runs due at open find it.
        paused: true,
        ..SystemOptions::default()
    }
}

/// One observed start of a run function.
#[derive(Debug, Clone)]
pub struct Run {
    pub name: String,
    pub task_id: Uuid,
    pub instance_id: Uuid,
    /// `Instance::started_ms` (the broker's clock when it started the instance).
    pub started_ms: i64,
    pub details: Option<serde_json::Value>,
}

type Behaviour = Arc<dyn Fn(&Instance) + Send + Sync>;

/// The run function registered for [`EP`]: records each start, sends it on a channel, then runs
/// the behaviour registered for the task's name (none = return at once, i.e. succeed).
#[derive(Clone)]
pub struct Router {
    behaviours: Arc<Mutex<HashMap<String, Behaviour>>>,
    log: Arc<Mutex<Vec<Run>>>,
    starts: Sender<Run>,
}

impl Router {
    pub fn new() -> (Router, Receiver<Run>) {
        let (tx, rx) = mpsc::channel();
        (
            Router {
                behaviours: Arc::default(),
                log: Arc::default(),
                starts: tx,
            },
            rx,
        )
    }

    pub fn handler(&self) -> Handler {
        let me = self.clone();
        Handler::Call(Arc::new(move |i: &Instance| me.run(i)))
    }

    pub fn run(&self, i: &Instance) {
        let run = Run {
            name: i.task().name().to_owned(),
            task_id: i.task().task_id(),
            instance_id: i.instance_id(),
            started_ms: i.started_ms(),
            details: i.trigger_details().cloned(),
        };
        self.log.lock().unwrap().push(run.clone());
        let _ = self.starts.send(run);
        let behaviour = self
            .behaviours
            .lock()
            .unwrap()
            .get(i.task().name())
            .cloned();
        if let Some(b) = behaviour {
            b(i);
        }
    }

    /// What the run function does for tasks named `name` (after recording the start).
    pub fn on(&self, name: &str, f: impl Fn(&Instance) + Send + Sync + 'static) {
        self.behaviours
            .lock()
            .unwrap()
            .insert(name.to_owned(), Arc::new(f));
    }

    /// Every start so far, in order.
    pub fn runs(&self) -> Vec<Run> {
        self.log.lock().unwrap().clone()
    }

    pub fn runs_of(&self, name: &str) -> Vec<Run> {
        self.runs().into_iter().filter(|r| r.name == name).collect()
    }

    pub fn count(&self, name: &str) -> usize {
        self.runs_of(name).len()
    }
}

/// An open system on a manual clock with the router installed for [`EP`].
pub struct Rig {
    pub sys: System,
    pub clock: ManualClock,
    pub router: Router,
    pub starts: Receiver<Run>,
}

impl Rig {
    pub fn open(policy: Policy) -> Rig {
        let clock = ManualClock::new(T0).unwrap();
        let sys = System::open(options(
            "org.example.rt",
            "1",
            StoreLocation::Memory,
            &clock,
            policy,
        ))
        .unwrap();
        Rig::attach(sys, clock)
    }

    /// A real (non-simulated) system on the private system bus at `bus_address`: no sysfs power
    /// supplies (so power states come from UPower alone), a manual clock, the rig's router.
    pub fn on_bus(bus_address: &str, app_id: &str, policy: Policy) -> Rig {
        let clock = ManualClock::new(T0).unwrap();
        let mut opts = options(app_id, "1", StoreLocation::Memory, &clock, policy);
        opts.simulated = false;
        opts.platform = btb_core::PlatformOptions {
            system_bus: Some(bus_address.to_owned()),
            power_supply_root: "/nonexistent/btb-test/power_supply".into(),
            ..btb_core::PlatformOptions::default()
        };
        Rig::attach(System::open(opts).unwrap(), clock)
    }

    /// Installs a fresh router on an already opened system.
    pub fn attach(sys: System, clock: ManualClock) -> Rig {
        let (router, starts) = Router::new();
        sys.register_entry_point(EP, Some(router.handler()))
            .unwrap();
        sys.start().unwrap();
        Rig {
            sys,
            clock,
            router,
            starts,
        }
    }

    pub fn register(&self, b: &Builder) -> Registration {
        self.sys.register(b).unwrap()
    }

    pub fn advance(&self, ms: i64) {
        self.clock.advance_ms(ms).unwrap();
    }

    /// Advances and waits until the broker has done everything the new time asks for.
    pub fn advance_idle(&self, ms: i64) {
        self.advance(ms);
        self.idle();
    }

    #[track_caller]
    pub fn idle(&self) {
        assert!(
            self.sys.wait_idle(DEADLINE).unwrap(),
            "the system did not become idle within {DEADLINE:?}"
        );
    }

    /// The next start of a run function (fails the test after [`DEADLINE`]).
    #[track_caller]
    pub fn next_start(&self) -> Run {
        recv(&self.starts, "a run function to start")
    }

    /// Asserts that no run function started (call after `idle`).
    #[track_caller]
    pub fn no_start(&self) {
        if let Ok(run) = self.starts.try_recv() {
            panic!("unexpected run: {run:?}");
        }
    }
}

/// Receives with [`DEADLINE`]; the test fails naming `what` on timeout.
#[track_caller]
pub fn recv<T>(rx: &Receiver<T>, what: &str) -> T {
    match rx.recv_timeout(DEADLINE) {
        Ok(v) => v,
        Err(RecvTimeoutError::Timeout) => panic!("timed out after {DEADLINE:?} waiting for {what}"),
        Err(RecvTimeoutError::Disconnected) => panic!("channel closed waiting for {what}"),
    }
}

/// Asserts nothing is waiting on `rx`.
#[track_caller]
pub fn none<T: std::fmt::Debug>(rx: &Receiver<T>, what: &str) {
    if let Ok(v) = rx.try_recv() {
        panic!("unexpected {what}: {v:?}");
    }
}

/// A latch that run functions wait on until the test opens it (bounded by a safety timeout so a
/// failing test cannot hang the suite forever).
#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    pub fn new() -> Gate {
        Gate::default()
    }

    pub fn open(&self) {
        *self.0.0.lock().unwrap() = true;
        self.0.1.notify_all();
    }

    /// Waits until opened; `false` if the safety timeout (30 s) ran out.
    pub fn wait(&self) -> bool {
        let guard = self.0.0.lock().unwrap();
        let (guard, _) = self
            .0
            .1
            .wait_timeout_while(guard, Duration::from_secs(30), |open| !*open)
            .unwrap();
        *guard
    }

    pub fn is_open(&self) -> bool {
        *self.0.0.lock().unwrap()
    }
}

/// A channel of the completions of one registration.
pub fn completions(reg: &Registration) -> Receiver<Completion> {
    let (tx, rx) = mpsc::channel();
    reg.add_completed(Arc::new(move |_r: &Registration, c: &Completion| {
        let _ = tx.send(c.clone());
    }))
    .unwrap();
    rx
}

/// A canceled handler that sends the reason (and the instance id) on a channel.
pub fn on_canceled(i: &Instance) -> Receiver<(Uuid, CancellationReason)> {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    i.add_canceled(Arc::new(move |inst: &Instance, reason| {
        let _ = tx.lock().unwrap().send((inst.instance_id(), reason));
    }));
    rx
}

/// A builder for a task named `name` with entry point [`EP`] and `trigger`.
pub fn task(name: &str, trigger: Trigger) -> Builder {
    let mut b = Builder::new();
    b.name = Some(name.to_owned());
    b.task_entry_point = Some(EP.to_owned());
    b.set_trigger(trigger);
    b
}

pub fn time(freshness_minutes: u32, one_shot: bool) -> Trigger {
    Trigger::Time {
        freshness_minutes,
        one_shot,
    }
}

pub fn system(t: btb_core::SystemTriggerType, one_shot: bool) -> Trigger {
    Trigger::System {
        trigger_type: t as u32,
        one_shot,
    }
}

/// An application-trigger task; returns the builder and the trigger id to `request`.
pub fn app_task(name: &str) -> (Builder, Uuid) {
    let trigger = Trigger::application();
    let Trigger::Application { id } = trigger else {
        unreachable!()
    };
    (task(name, trigger), id)
}

/// A run function body that blocks on `gate` (used with `Router::on`).
pub fn blocking(gate: &Gate) -> impl Fn(&Instance) + Send + Sync + 'static {
    let gate = gate.clone();
    move |_i: &Instance| {
        assert!(gate.wait(), "gate never opened");
    }
}

/// Opens a system on a store file with the given app id, manifest version, clock and policy.
pub fn open_file(
    path: &Path,
    app_id: &str,
    version: &str,
    clock: &ManualClock,
    policy: Policy,
) -> System {
    System::open(options(
        app_id,
        version,
        StoreLocation::File(path.to_owned()),
        clock,
        policy,
    ))
    .unwrap()
}

pub fn runfn(f: impl Fn(&Instance) + Send + Sync + 'static) -> RunFn {
    Arc::new(f)
}
