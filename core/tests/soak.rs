//! The soak (issue 16 item 4; `make soak`, docs/soak.md): many client processes registering,
//! requesting and disconnecting, `exec` hosts and handed runs, while the broker process is
//! SIGKILLed every `SOAK_KILL_SECS` and a client takes the store over. It is not part of
//! `make test`: it runs for minutes (`SOAK_SECS`, default 180) with `SOAK_CLIENTS` (default 50)
//! clients, in release mode, with
//! `cargo test --release -p btb-core --test soak -- --ignored --nocapture`.
//!
//! The orchestrator (the ignored test `soak`) runs this binary again as the other processes (the
//! role in `BTB_SOAK_ROLE`): one broker with no handlers (so that its runs are handed to clients),
//! then the clients. Each client writes every call that was *acknowledged* to its own journal
//! (one fsync'd line each, after the call returned): registrations (`R`), fires (`F`, a unique
//! fire id in the trigger details), and retirements (`C` checked, `U` unregistering, `D` done).
//! Every run — in-process in a client, or an `exec` host — takes an exclusive `flock` on a file
//! named after its registration for as long as it runs (the kernel drops it when its process dies,
//! however it dies), writes `OVERLAP` if another run of that registration holds it, and logs its
//! start (instance, task, attempt, details) and end.
//!
//! At the end the orchestrator stops the load, lets the clients drain (every acknowledged fire
//! recorded), closes everything, opens the store itself and checks: every acknowledged
//! registration that was not unregistered exists; every acknowledged fire has exactly one run
//! record (or a retry chain `1..n` whose last link is final, or one replaced by a later fire as
//! SPEC §12 says); no fire's attempt started or was recorded twice; no one-shot ran twice; no run
//! overlapped another of its registration. It samples the broker process's (and the clients')
//! VmRSS, open fds and threads every 2 s and fails when, after warm-up, the median of the last
//! third exceeds 1.5 × that of the first third (plus a small absolute slack).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use btb_core::{
    Builder, Clock, Handler, Instance, Manifest, Policy, RetryPolicy, RunRecord, StoreLocation,
    System, SystemOptions, SystemTriggerType, TaskOutcome, Trigger,
};
use uuid::Uuid;

const ROLE: &str = "BTB_SOAK_ROLE";
const DIR: &str = "BTB_SOAK_DIR";
const INDEX: &str = "BTB_SOAK_INDEX";
const GENERATION: &str = "BTB_SOAK_GEN";
/// Entry points with an in-process handler: client `i` offers `soak.H{i % HANDLERS}` and
/// registers tasks on any of them, so most runs are handed to another process.
const HANDLERS: usize = 8;
/// App registrations a client keeps at once (older ones are checked and unregistered).
const RING: usize = 4;
/// Fires after which a registration is retired (its history stays far below the store's bound).
const RETIRE_AFTER: usize = 6;
const SAMPLE_EVERY: Duration = Duration::from_secs(2);

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// xorshift64*: load pacing and choices only.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        Rng((u64::from(std::process::id()) << 32) ^ now_ms() as u64 | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

fn append(path: &Path, line: &str) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    f.write_all(format!("{line}\n").as_bytes()).unwrap();
}

// ------------------------------------------------------------------------------------------------
// The store, manifest and policy every process uses.

fn policy() -> Policy {
    Policy {
        max_concurrent: 8,
        ..Policy::default()
    }
}

fn options(dir: &Path, paused: bool) -> SystemOptions {
    SystemOptions {
        manifest: Some(Manifest::load(dir.join("manifest.toml")).unwrap()),
        store: StoreLocation::File(dir.join("btb.sqlite3")),
        clock: Clock::Real,
        simulated: true,
        policy: policy(),
        paused,
        ..SystemOptions::default()
    }
}

fn write_manifest(dir: &Path) {
    let d = dir.display();
    let mut m = format!(
        "app_id = \"org.example.soak.p{}\"\nversion = \"1.0\"\n",
        std::process::id()
    );
    for h in 0..HANDLERS {
        m += &format!(
            "\n[[task]]\nentry_point = \"soak.H{h}\"\ntypes = [\"general\", \"systemEvent\"]\n"
        );
    }
    // The host holds its registration's lock for as long as it (or what it left behind) runs.
    let script = format!(
        "exec 9>>{d}/locks/$BTB_TASK_ID; \
         flock -n 9 || echo \"OVERLAP exec $BTB_TASK_ID $BTB_INSTANCE_ID $$\" >> {d}/overlaps; \
         echo \"S $BTB_INSTANCE_ID $BTB_TASK_ID $BTB_ATTEMPT $$ $BTB_TRIGGER_DETAILS\" >> {d}/runs/exec.log; \
         sleep 0.1; \
         echo \"E $BTB_INSTANCE_ID\" >> {d}/runs/exec.log"
    );
    m += &format!(
        "\n[[task]]\nentry_point = \"soak.Exec\"\ntypes = [\"general\"]\nexec = [\"/bin/sh\", \"-c\", '{script}']\n"
    );
    std::fs::write(dir.join("manifest.toml"), m).unwrap();
}

/// Who holds the store's broker lock (`fcntl(F_GETLK)` on `<store>.lock`), if anyone.
fn lock_holder(dir: &Path) -> Option<u32> {
    let f = File::open(dir.join("btb.sqlite3.lock")).ok()?;
    // SAFETY: a zeroed `flock` is a valid value; F_GETLK fills it in.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as _;
    fl.l_whence = libc::SEEK_SET as _;
    fl.l_start = 0;
    fl.l_len = 0;
    // SAFETY: a valid descriptor and a valid `flock` out-pointer.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) };
    (r == 0 && i32::from(fl.l_type) != libc::F_UNLCK).then_some(fl.l_pid as u32)
}

// ------------------------------------------------------------------------------------------------
// Runs: the handler every client offers.

fn handler(dir: PathBuf) -> Handler {
    Handler::Call(Arc::new(move |i: &Instance| {
        let task = i.task().task_id();
        let lock = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("locks").join(task.to_string()))
            .unwrap();
        // SAFETY: a valid descriptor.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            append(
                &dir.join("overlaps"),
                &format!(
                    "OVERLAP handed {task} {} {}",
                    i.instance_id(),
                    std::process::id()
                ),
            );
        }
        let log = dir
            .join("runs")
            .join(format!("p{}.log", std::process::id()));
        let details = i
            .trigger_details()
            .map_or_else(|| "null".to_owned(), |d| d.to_string());
        append(
            &log,
            &format!(
                "S {} {task} {} {} {details}",
                i.instance_id(),
                i.attempt(),
                std::process::id()
            ),
        );
        // Long enough that a run is often in flight in a client when its broker is killed.
        std::thread::sleep(Rng::new().millis(50, 400));
        append(&log, &format!("E {}", i.instance_id()));
        drop(lock);
    }))
}

// ------------------------------------------------------------------------------------------------
// Journals.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Handed,
    Exec,
    OneShot,
}

#[derive(Debug)]
struct TaskInfo {
    task_id: Uuid,
    trigger_id: Option<Uuid>,
    kind: Kind,
    fires: Vec<String>,
    checked: Option<Tally>,
    unregistering: bool,
    unregistered: bool,
}

#[derive(Default)]
struct Journal {
    tasks: Vec<TaskInfo>,
    by_id: HashMap<Uuid, usize>,
    bad: Vec<String>,
}

impl Journal {
    fn load(path: &Path) -> Journal {
        let mut j = Journal::default();
        let Ok(text) = std::fs::read_to_string(path) else {
            return j;
        };
        for line in text.split_inclusive('\n') {
            // A line cut by a SIGKILL mid-write (no newline) is not an acknowledgement.
            let Some(line) = line.strip_suffix('\n') else {
                continue;
            };
            let w: Vec<&str> = line.split(' ').collect();
            let id = |k: usize| w.get(k).and_then(|s| Uuid::parse_str(s).ok());
            match w[0] {
                "R" if w.len() == 4 => {
                    let (Some(task_id), kind) = (id(1), w[3]) else {
                        continue;
                    };
                    let kind = match kind {
                        "H" => Kind::Handed,
                        "X" => Kind::Exec,
                        _ => Kind::OneShot,
                    };
                    j.by_id.insert(task_id, j.tasks.len());
                    j.tasks.push(TaskInfo {
                        task_id,
                        trigger_id: id(2),
                        kind,
                        fires: Vec::new(),
                        checked: None,
                        unregistering: false,
                        unregistered: false,
                    });
                }
                "F" if w.len() == 3 => {
                    if let Some(&t) = id(1).and_then(|i| j.by_id.get(&i)) {
                        j.tasks[t].fires.push(w[2].to_owned());
                    }
                }
                "C" if w.len() == 8 => {
                    if let Some(&t) = id(1).and_then(|i| j.by_id.get(&i)) {
                        let n: Vec<usize> = w[2..].iter().map(|v| v.parse().unwrap()).collect();
                        j.tasks[t].checked = Some(Tally {
                            fires: n[0],
                            records: n[1],
                            retried: n[2],
                            replaced: n[3],
                            unacknowledged: n[4],
                            cut_off: n[5],
                            ..Tally::default()
                        });
                    }
                }
                "U" if w.len() == 2 => {
                    if let Some(&t) = id(1).and_then(|i| j.by_id.get(&i)) {
                        j.tasks[t].unregistering = true;
                    }
                }
                "D" if w.len() == 2 => {
                    if let Some(&t) = id(1).and_then(|i| j.by_id.get(&i)) {
                        j.tasks[t].unregistered = true;
                    }
                }
                "BAD" => j.bad.push(line.to_owned()),
                _ => {}
            }
        }
        j
    }
}

/// An append-only journal: a line is written and fsync'd only after the call it records was
/// acknowledged.
struct JournalFile(File);

impl JournalFile {
    fn open(path: &Path) -> JournalFile {
        JournalFile(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap(),
        )
    }
    fn note(&mut self, line: &str) {
        self.0.write_all(format!("{line}\n").as_bytes()).unwrap();
        self.0.sync_data().unwrap();
    }
}

// ------------------------------------------------------------------------------------------------
// The check of one registration's acknowledged fires against its run records (used by clients
// before they unregister one, and by the final check).

#[derive(Default, Debug)]
struct Tally {
    fires: usize,
    records: usize,
    retried: usize,
    replaced: usize,
    unacknowledged: usize,
    /// Runs recorded as cut off by their broker's death.
    cut_off: usize,
    pending: Vec<String>,
    problems: Vec<String>,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.fires += other.fires;
        self.records += other.records;
        self.retried += other.retried;
        self.replaced += other.replaced;
        self.unacknowledged += other.unacknowledged;
        self.cut_off += other.cut_off;
    }
}

fn fire_of(r: &RunRecord) -> Option<String> {
    let details: serde_json::Value = serde_json::from_str(r.trigger_details.as_deref()?).ok()?;
    Some(details.get("fire")?.as_str()?.to_owned())
}

fn check_task(task: &TaskInfo, records: &[RunRecord]) -> Tally {
    let mut t = Tally {
        records: records.len(),
        cut_off: records
            .iter()
            .filter(|r| r.message.as_deref().is_some_and(|m| m.contains("died")))
            .count(),
        ..Tally::default()
    };
    let mut by_fire: BTreeMap<String, Vec<&RunRecord>> = BTreeMap::new();
    for r in records {
        if let Some(f) = fire_of(r) {
            by_fire.entry(f).or_default().push(r);
        }
    }
    if task.kind == Kind::OneShot {
        if records.len() > 1 {
            t.problems.push(format!(
                "TWICE: one-shot {} has {} run records",
                task.task_id,
                records.len()
            ));
        }
        return t;
    }
    // Every fire seen (acknowledged or not): its attempts are 1..=n, each once.
    for (fire, recs) in &by_fire {
        let mut attempts: Vec<u32> = recs.iter().map(|r| r.attempt).collect();
        attempts.sort_unstable();
        let expected: Vec<u32> = (1..=attempts.len() as u32).collect();
        if attempts != expected {
            t.problems.push(format!(
                "TWICE: fire {fire} of {} has records of attempts {attempts:?}: {:?}",
                task.task_id,
                recs.iter()
                    .map(|r| (r.instance_id, r.outcome.name(), r.message.clone()))
                    .collect::<Vec<_>>()
            ));
        }
        if recs
            .iter()
            .filter(|r| r.outcome != TaskOutcome::Retry)
            .count()
            > 1
        {
            t.problems.push(format!(
                "TWICE: fire {fire} of {} has more than one final record",
                task.task_id
            ));
        }
        if !task.fires.contains(fire) {
            t.unacknowledged += 1;
        }
    }
    for (k, fire) in task.fires.iter().enumerate() {
        t.fires += 1;
        let Some(recs) = by_fire.get(fire) else {
            t.pending.push(fire.clone());
            continue;
        };
        let last = recs.iter().max_by_key(|r| r.attempt).unwrap();
        if recs.len() > 1 {
            t.retried += 1;
        }
        if last.outcome == TaskOutcome::Retry {
            // A new fire while a retry waits replaces it (SPEC §12).
            if task.fires[k + 1..].iter().any(|f| by_fire.contains_key(f)) {
                t.replaced += 1;
            } else {
                t.pending.push(fire.clone());
            }
        }
    }
    t
}

// ------------------------------------------------------------------------------------------------
// The broker process: opens the store first, with no handlers, and serves until killed.

fn broker_role(dir: &Path) {
    let system = System::open(options(dir, false)).unwrap();
    assert!(system.is_broker(), "the first process is not the broker");
    println!("SOAK READY {}", std::process::id());
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    system.close().unwrap();
}

// ------------------------------------------------------------------------------------------------
// A client process.

fn open_client(dir: &Path, entry_point: &str) -> System {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match System::open(options(dir, false)) {
            Ok(system) => {
                system
                    .register_entry_point(entry_point, Some(handler(dir.to_owned())))
                    .unwrap();
                return system;
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!(
                    "soak client {}: open failed, again: {e}",
                    std::process::id()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("soak client {}: cannot open: {e}", std::process::id()),
        }
    }
}

struct Client {
    dir: PathBuf,
    index: u64,
    generation: u64,
    journal: Journal,
    file: JournalFile,
    rng: Rng,
    counter: u64,
    errors: u64,
}

impl Client {
    fn live(&self, kind: Option<Kind>) -> Vec<usize> {
        (0..self.journal.tasks.len())
            .filter(|&k| {
                let t = &self.journal.tasks[k];
                !t.unregistering
                    && kind.is_none_or(|want| (t.kind == Kind::OneShot) == (want == Kind::OneShot))
            })
            .collect()
    }

    fn register(&mut self, system: &System, kind: Kind) {
        let mut b = Builder::new();
        self.counter += 1;
        b.name = Some(format!(
            "c{}g{}r{}",
            self.index, self.generation, self.counter
        ));
        let (trigger, letter) = match kind {
            Kind::OneShot => (
                Trigger::System {
                    trigger_type: SystemTriggerType::TimeZoneChange as u32,
                    one_shot: true,
                },
                "O",
            ),
            Kind::Exec => (Trigger::application(), "X"),
            Kind::Handed => (Trigger::application(), "H"),
        };
        b.task_entry_point = Some(match kind {
            Kind::Exec => "soak.Exec".to_owned(),
            _ => format!("soak.H{}", self.rng.below(HANDLERS as u64)),
        });
        let trigger_id = match &trigger {
            Trigger::Application { id } => id.to_string(),
            _ => "-".to_owned(),
        };
        b.set_trigger(trigger);
        // A quarter of the app tasks retry a run cut off by its broker's death (SPEC §12).
        if kind != Kind::OneShot && self.rng.below(4) == 0 {
            b.retry_policy = Some(RetryPolicy {
                initial_delay_ms: 10_000,
                max_attempts: Some(3),
                ..RetryPolicy::default()
            });
        }
        match system.register(&b) {
            Ok(r) => {
                let task_id = r.task_id();
                self.file
                    .note(&format!("R {task_id} {trigger_id} {letter}"));
                self.journal.by_id.insert(task_id, self.journal.tasks.len());
                self.journal.tasks.push(TaskInfo {
                    task_id,
                    trigger_id: Uuid::parse_str(&trigger_id).ok(),
                    kind,
                    fires: Vec::new(),
                    checked: None,
                    unregistering: false,
                    unregistered: false,
                });
            }
            Err(e) => self.failed("register", &e),
        }
    }

    fn failed(&mut self, what: &str, e: &btb_core::Error) {
        self.errors += 1;
        if self.errors % 50 == 1 {
            eprintln!(
                "soak client {} (pid {}): {what}: {e} ({} errors so far)",
                self.index,
                std::process::id(),
                self.errors
            );
        }
    }

    fn request(&mut self, system: &System, k: usize) {
        let t = &self.journal.tasks[k];
        let Some(trigger_id) = t.trigger_id else {
            return;
        };
        if t.fires.len() >= 3 * RETIRE_AFTER {
            return; // retiring waits for its runs; no more fires meanwhile
        }
        self.counter += 1;
        let fire = format!("c{}g{}n{}", self.index, self.generation, self.counter);
        let task_id = t.task_id;
        match system.request(&trigger_id, Some(serde_json::json!({ "fire": fire }))) {
            Ok(btb_core::ApplicationTriggerResult::Allowed) => {
                self.file.note(&format!("F {task_id} {fire}"));
                self.journal.tasks[k].fires.push(fire);
            }
            Ok(_) => {} // running or pending: not queued, nothing acknowledged
            Err(e) => self.failed("request", &e),
        }
    }

    /// Checks a registration's runs against its acknowledged fires and, once each is recorded,
    /// unregisters it. `false` while some fire still waits for its record.
    fn retire(&mut self, system: &System, k: usize) -> bool {
        let task_id = self.journal.tasks[k].task_id;
        let records = match system.history(&task_id) {
            Ok(r) => r,
            Err(e) => {
                self.failed("history", &e);
                return false;
            }
        };
        let tally = check_task(&self.journal.tasks[k], &records);
        if !tally.pending.is_empty() {
            return false;
        }
        for p in &tally.problems {
            self.file.note(&format!("BAD {p}"));
        }
        self.file.note(&format!(
            "C {task_id} {} {} {} {} {} {}",
            tally.fires,
            tally.records,
            tally.retried,
            tally.replaced,
            tally.unacknowledged,
            tally.cut_off
        ));
        self.journal.tasks[k].checked = Some(tally);
        self.file.note(&format!("U {task_id}"));
        self.journal.tasks[k].unregistering = true;
        match system.unregister(&task_id, false) {
            Ok(()) => {
                self.file.note(&format!("D {task_id}"));
                self.journal.tasks[k].unregistered = true;
            }
            Err(e) => self.failed("unregister", &e),
        }
        true
    }

    fn step(&mut self, system: &System) {
        let apps = self.live(Some(Kind::Handed));
        let shots = self.live(Some(Kind::OneShot));
        let roll = self.rng.below(100);
        if apps.len() < RING {
            let kind = if self.rng.below(4) == 0 {
                Kind::Exec
            } else {
                Kind::Handed
            };
            self.register(system, kind);
        } else if roll < 75 {
            let k = apps[self.rng.below(apps.len() as u64) as usize];
            self.request(system, k);
        } else if roll < 88 {
            // Retire the registration with the most fires, if it has enough.
            let k = *apps
                .iter()
                .max_by_key(|&&k| self.journal.tasks[k].fires.len())
                .unwrap();
            if self.journal.tasks[k].fires.len() >= RETIRE_AFTER {
                self.retire(system, k);
            }
        } else if roll < 93 {
            if shots.len() < 2 {
                self.register(system, Kind::OneShot);
            } else {
                self.retire(system, shots[0]);
            }
        } else if let Err(e) = system.raise_event(SystemTriggerType::TimeZoneChange) {
            self.failed("raise_event", &e);
        }
    }

    /// Waits until every acknowledged fire of this client's live registrations is recorded.
    fn drain(&mut self, system: &System, deadline: Instant) -> usize {
        loop {
            let mut pending = 0;
            for k in self.live(Some(Kind::Handed)) {
                let task_id = self.journal.tasks[k].task_id;
                match system.history(&task_id) {
                    Ok(records) => {
                        pending += check_task(&self.journal.tasks[k], &records).pending.len();
                    }
                    Err(e) => {
                        self.failed("history", &e);
                        pending += 1;
                    }
                }
            }
            if pending == 0 || Instant::now() >= deadline {
                return pending;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn client_role(dir: &Path) {
    let index = env_num(INDEX, 0);
    let generation = env_num(GENERATION, 0);
    let path = dir.join("journal").join(format!("c{index}.log"));
    let journal = Journal::load(&path);
    let mut client = Client {
        dir: dir.to_owned(),
        index,
        generation,
        journal,
        file: JournalFile::open(&path),
        rng: Rng::new(),
        counter: 0,
        errors: 0,
    };
    // Orders from the orchestrator on stdin: "stop" (no more load; drain), "exit".
    let stop = Arc::new(AtomicBool::new(false));
    let (exit_tx, exit_rx) = mpsc::channel::<()>();
    {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                match line.as_deref() {
                    Ok("stop") => stop.store(true, Ordering::Release),
                    Ok("exit") => break,
                    _ => {}
                }
            }
            stop.store(true, Ordering::Release);
            let _ = exit_tx.send(());
        });
    }
    let entry_point = format!("soak.H{}", index as usize % HANDLERS);
    let mut system = open_client(&client.dir, &entry_point);
    let mut reopen_at = Instant::now() + client.rng.millis(10_000, 40_000);
    while !stop.load(Ordering::Acquire) {
        if Instant::now() >= reopen_at {
            // Disconnect (a client that became the broker hands the store on) and come back.
            if let Err(e) = system.close() {
                client.failed("close", &e);
            }
            system = open_client(&client.dir, &entry_point);
            reopen_at = Instant::now() + client.rng.millis(10_000, 40_000);
        }
        client.step(&system);
        let pause = client.rng.millis(100, 400);
        std::thread::sleep(pause);
    }
    let pending = client.drain(&system, Instant::now() + Duration::from_secs(120));
    println!(
        "SOAK DRAINED {index} pending {pending} errors {}",
        client.errors
    );
    let _ = exit_rx.recv();
    system.close().unwrap();
}

// ------------------------------------------------------------------------------------------------
// The orchestrator.

struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    /// `Some(i)`: client `i`; `None`: the first broker.
    index: Option<u64>,
}

impl Proc {
    fn tell(&mut self, what: &str) {
        if let Some(s) = self.stdin.as_mut() {
            let _ = writeln!(s, "{what}");
            let _ = s.flush();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn spawn(
    dir: &Path,
    role: &str,
    index: u64,
    generation: u64,
    lines: &mpsc::Sender<String>,
) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "soak",
            "--ignored",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, role)
        .env(DIR, dir)
        .env(INDEX, index.to_string())
        .env(GENERATION, generation.to_string())
        .env("XDG_RUNTIME_DIR", dir.join("run"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let tx = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if let Some(at) = line.find("SOAK ") {
                let _ = tx.send(line[at..].to_owned());
            }
        }
    });
    child
}

#[derive(Clone, Copy, Default)]
struct Sample {
    rss_kib: u64,
    fds: u64,
    threads: u64,
}

fn sample(pid: u32) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Sample {
        rss_kib: field("VmRSS:")?,
        fds,
        threads: field("Threads:")?,
    })
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    if v.is_empty() { 0 } else { v[v.len() / 2] }
}

/// min / median / max of a series, and whether its last third (after warm-up) grew past
/// 1.5 × its first third plus `slack`.
fn flat(name: &str, series: &[u64], slack: u64, problems: &mut Vec<String>) -> String {
    if series.len() < 6 {
        return format!("{name}: too few samples ({})", series.len());
    }
    let third = series.len() / 3;
    let first = median(series[..third].to_vec());
    let last = median(series[series.len() - third..].to_vec());
    if last * 2 > first * 3 + slack * 2 {
        problems.push(format!(
            "GROWTH: {name}: median of the last third {last} > 1.5 × the first third's {first} (+{slack})"
        ));
    }
    format!(
        "{name}: min {} median {} max {} (first third {first}, last third {last})",
        series.iter().min().unwrap(),
        median(series.to_vec()),
        series.iter().max().unwrap()
    )
}

#[test]
#[ignore = "the soak: minutes long; run by `make soak`"]
fn soak() {
    if let Some(role) = std::env::var_os(ROLE) {
        let dir = PathBuf::from(std::env::var_os(DIR).unwrap());
        match role.to_str() {
            Some("broker") => broker_role(&dir),
            Some("client") => client_role(&dir),
            other => panic!("unknown role {other:?}"),
        }
        return;
    }
    let secs = env_num("SOAK_SECS", 180);
    let clients = env_num("SOAK_CLIENTS", 50);
    let kill_every = Duration::from_secs(env_num("SOAK_KILL_SECS", 30));
    let warm_up = Duration::from_secs(env_num("SOAK_WARMUP_SECS", (secs / 5).max(20)));
    let base = std::env::temp_dir().join(format!("btb-soak-{}", std::process::id()));
    std::fs::create_dir_all(&base).unwrap();
    let dir = base.canonicalize().unwrap();
    for sub in ["run", "journal", "runs", "locks"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::set_permissions(
        dir.join("run"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    write_manifest(&dir);
    // The final check opens the store here: its control socket goes beside the others.
    // SAFETY: no other thread of this process reads the environment now (the children's get
    // it explicitly too).
    unsafe { std::env::set_var("XDG_RUNTIME_DIR", dir.join("run")) };
    println!(
        "soak: {secs} s, {clients} clients, the broker SIGKILLed every {} s; in {}",
        kill_every.as_secs(),
        dir.display()
    );

    let (tx, lines) = mpsc::channel::<String>();
    let started = Instant::now();
    let mut procs: Vec<Proc> = Vec::new();
    let mut first = spawn(&dir, "broker", 0, 0, &tx);
    let first_stdin = first.stdin.take();
    procs.push(Proc {
        child: first,
        stdin: first_stdin,
        index: None,
    });
    let ready = lines
        .recv_timeout(Duration::from_secs(30))
        .expect("the broker is not ready");
    assert!(ready.starts_with("SOAK READY"), "{ready}");
    let mut generation: HashMap<u64, u64> = HashMap::new();
    let start_client = |i: u64, g: u64, procs: &mut Vec<Proc>| {
        let mut c = spawn(&dir, "client", i, g, &tx);
        let stdin = c.stdin.take();
        procs.push(Proc {
            child: c,
            stdin,
            index: Some(i),
        });
    };
    for i in 0..clients {
        generation.insert(i, 0);
        start_client(i, 0, &mut procs);
    }

    let mut problems: Vec<String> = Vec::new();
    let mut kills = 0u64;
    let mut takeovers = 0u64;
    let mut takeover_ms: Vec<u64> = Vec::new();
    let mut broker_samples: Vec<Sample> = Vec::new();
    let mut client_samples: Vec<Sample> = Vec::new();
    let mut brokers_seen: HashSet<u32> = HashSet::new();
    let mut next_kill = started + kill_every;
    let mut next_sample = started + SAMPLE_EVERY;
    let end = started + Duration::from_secs(secs);
    while Instant::now() < end {
        let now = Instant::now();
        // Restart clients that died (a crash is a failure; the load goes on).
        let mut dead = Vec::new();
        for (k, p) in procs.iter_mut().enumerate() {
            if let Ok(Some(status)) = p.child.try_wait() {
                dead.push(k);
                if p.index.is_some() {
                    problems.push(format!("CRASH: client {:?} exited: {status}", p.index));
                }
            }
        }
        for k in dead.into_iter().rev() {
            let p = procs.remove(k);
            if let Some(i) = p.index {
                let g = generation.get_mut(&i).unwrap();
                *g += 1;
                let g = *g;
                start_client(i, g, &mut procs);
            }
        }
        if now >= next_sample {
            next_sample += SAMPLE_EVERY;
            let holder = lock_holder(&dir);
            if let Some(pid) = holder {
                brokers_seen.insert(pid);
                if now > started + warm_up
                    && let Some(s) = sample(pid)
                {
                    broker_samples.push(s);
                }
            }
            if now > started + warm_up {
                let all: Vec<Sample> = procs
                    .iter()
                    .filter(|p| p.index.is_some() && Some(p.child.id()) != holder)
                    .filter_map(|p| sample(p.child.id()))
                    .collect();
                client_samples.push(Sample {
                    rss_kib: median(all.iter().map(|s| s.rss_kib).collect()),
                    fds: median(all.iter().map(|s| s.fds).collect()),
                    threads: median(all.iter().map(|s| s.threads).collect()),
                });
            }
        }
        if now >= next_kill {
            next_kill += kill_every;
            if let Some(pid) = lock_holder(&dir)
                && let Some(k) = procs.iter().position(|p| p.child.id() == pid)
            {
                let mut p = procs.remove(k);
                p.child.kill().unwrap(); // SIGKILL
                p.child.wait().unwrap();
                let killed_at = Instant::now();
                kills += 1;
                if let Some(i) = p.index {
                    let g = generation.get_mut(&i).unwrap();
                    *g += 1;
                    let g = *g;
                    start_client(i, g, &mut procs);
                }
                // A client takes the store over (deadline, checked on the lock itself).
                let deadline = killed_at + Duration::from_secs(30);
                loop {
                    match lock_holder(&dir) {
                        Some(new) if new != pid => {
                            takeovers += 1;
                            takeover_ms.push(killed_at.elapsed().as_millis() as u64);
                            break;
                        }
                        _ if Instant::now() >= deadline => {
                            problems.push(format!(
                                "NO TAKEOVER: nobody took the store over within 30 s of killing pid {pid}"
                            ));
                            break;
                        }
                        _ => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                println!(
                    "soak: {:>4} s: killed the broker (pid {pid}); taken over in {} ms",
                    started.elapsed().as_secs(),
                    takeover_ms.last().copied().unwrap_or(0)
                );
            } else {
                println!("soak: no broker to kill (not one of ours)");
            }
        }
        std::thread::sleep(Duration::from_millis(50)); // pacing of the loop
    }

    // Stop the load, let every client drain, then close everything.
    println!(
        "soak: {} s: stopping the load; draining",
        started.elapsed().as_secs()
    );
    for p in &mut procs {
        p.tell("stop");
    }
    let live_clients = procs.iter().filter(|p| p.index.is_some()).count();
    let mut drained = 0;
    let mut pending_at_end = 0u64;
    let mut client_errors = 0u64;
    let deadline = Instant::now() + Duration::from_secs(180);
    while drained < live_clients {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.starts_with("SOAK DRAINED") => {
                drained += 1;
                let w: Vec<&str> = line.split(' ').collect();
                pending_at_end += w[4].parse::<u64>().unwrap_or(0);
                client_errors += w[6].parse::<u64>().unwrap_or(0);
            }
            Ok(_) => {}
            Err(_) => {
                problems.push(format!(
                    "DRAIN: only {drained} of {live_clients} clients drained within 180 s"
                ));
                break;
            }
        }
    }
    for p in &mut procs {
        p.tell("exit");
        drop(p.stdin.take());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for p in &mut procs {
        loop {
            match p.child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        problems.push(format!("EXIT: {:?} exited {status}", p.index));
                    }
                    break;
                }
                _ if Instant::now() >= deadline => {
                    problems.push(format!("EXIT: {:?} did not exit within 60 s", p.index));
                    let _ = p.child.kill();
                    let _ = p.child.wait();
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    drop(procs);
    let elapsed = started.elapsed();

    // The check, on the store itself.
    let system = System::open(options(&dir, true)).unwrap();
    assert!(system.is_broker());
    let mut journals = Vec::new();
    for i in 0..clients {
        journals.push(Journal::load(
            &dir.join("journal").join(format!("c{i}.log")),
        ));
    }
    let present: HashSet<Uuid> = system
        .all_tasks()
        .unwrap()
        .iter()
        .map(|r| r.task_id())
        .collect();
    let mut total = Tally::default();
    let (mut registrations, mut unregistered, mut one_shots, mut one_shot_runs) = (0, 0, 0, 0);
    let mut by_clients = Tally::default();
    let mut one_shot_ids = HashSet::new();
    for j in &journals {
        problems.extend(j.bad.iter().cloned());
        for t in &j.tasks {
            registrations += 1;
            if t.kind == Kind::OneShot {
                one_shots += 1;
                one_shot_ids.insert(t.task_id);
            }
            if t.unregistered {
                unregistered += 1;
            }
            if let Some(checked) = &t.checked {
                by_clients.add(checked);
                if !present.contains(&t.task_id) {
                    continue;
                }
            } else if !present.contains(&t.task_id) {
                if !t.unregistering {
                    problems.push(format!("LOST registration {}", t.task_id));
                }
                continue;
            }
            let records = system.history(&t.task_id).unwrap();
            let tally = check_task(t, &records);
            if t.kind == Kind::OneShot {
                one_shot_runs += records.len();
            }
            if t.checked.is_some() {
                // Checked by its client before an unregister that failed: checked again.
                problems.extend(tally.problems);
                continue;
            }
            for fire in &tally.pending {
                problems.push(format!("LOST fire {fire} of {}", t.task_id));
            }
            total.add(&tally);
            problems.extend(tally.problems);
        }
    }
    let outcomes = {
        let mut o: BTreeMap<&str, usize> = BTreeMap::new();
        for r in system.all_tasks().unwrap() {
            for rec in r.history().unwrap() {
                *o.entry(rec.outcome.name()).or_default() += 1;
            }
        }
        o
    };
    system.close().unwrap();

    // The run logs: no attempt of a fire started twice; no one-shot ran twice.
    let mut starts: HashMap<(String, String, String), usize> = HashMap::new();
    let mut shot_starts: HashMap<String, usize> = HashMap::new();
    let mut logged_starts = 0;
    for entry in std::fs::read_dir(dir.join("runs")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            let w: Vec<&str> = line.splitn(6, ' ').collect();
            if w[0] != "S" || w.len() < 6 {
                continue;
            }
            logged_starts += 1;
            let fire = serde_json::from_str::<serde_json::Value>(w[5])
                .ok()
                .and_then(|d| d.get("fire").and_then(|f| f.as_str().map(str::to_owned)))
                .unwrap_or_default();
            if let Ok(task) = Uuid::parse_str(w[2])
                && one_shot_ids.contains(&task)
            {
                *shot_starts.entry(w[2].to_owned()).or_default() += 1;
            }
            if !fire.is_empty() {
                *starts
                    .entry((w[2].to_owned(), fire, w[3].to_owned()))
                    .or_default() += 1;
            }
        }
    }
    for ((task, fire, attempt), n) in &starts {
        if *n > 1 {
            problems.push(format!(
                "TWICE: attempt {attempt} of fire {fire} of {task} started {n} times"
            ));
        }
    }
    for (task, n) in &shot_starts {
        if *n > 1 {
            problems.push(format!("TWICE: one-shot {task} started {n} times"));
        }
    }
    let overlaps = std::fs::read_to_string(dir.join("overlaps")).unwrap_or_default();
    for line in overlaps.lines() {
        problems.push(format!("TWICE AT ONCE: {line}"));
    }

    let mut report = vec![
        format!(
            "soak: {:.0} s (load {secs} s), {clients} clients, {kills} kills, {takeovers} takeovers \
             (median {} ms, max {} ms), {} brokers in all",
            elapsed.as_secs_f64(),
            median(takeover_ms.clone()),
            takeover_ms.iter().max().copied().unwrap_or(0),
            brokers_seen.len()
        ),
        format!(
            "registrations acknowledged {registrations} ({one_shots} one-shots, {unregistered} \
             unregistered after their check); fires acknowledged {} ({} checked by their clients \
             before unregistering, {} at the end), all recorded: {} run records ({} cut off by \
             their broker's death), {} fires retried, {} replaced by a later fire, {} \
             unacknowledged fires ran",
            by_clients.fires + total.fires,
            by_clients.fires,
            total.fires,
            by_clients.records + total.records,
            by_clients.cut_off + total.cut_off,
            by_clients.retried + total.retried,
            by_clients.replaced + total.replaced,
            by_clients.unacknowledged + total.unacknowledged
        ),
        format!(
            "runs started (run logs) {logged_starts}; one-shot runs {one_shot_runs}; outcomes at \
             the end {outcomes:?}; fires pending when the drain ended {pending_at_end}; client \
             call errors (broker gone mid-call) {client_errors}"
        ),
    ];
    let mut growth = Vec::new();
    report.push(flat(
        "broker RSS KiB",
        &broker_samples.iter().map(|s| s.rss_kib).collect::<Vec<_>>(),
        8 * 1024,
        &mut growth,
    ));
    report.push(flat(
        "broker fds",
        &broker_samples.iter().map(|s| s.fds).collect::<Vec<_>>(),
        16,
        &mut growth,
    ));
    report.push(flat(
        "broker threads",
        &broker_samples.iter().map(|s| s.threads).collect::<Vec<_>>(),
        16,
        &mut growth,
    ));
    report.push(flat(
        "client RSS KiB (median over clients)",
        &client_samples.iter().map(|s| s.rss_kib).collect::<Vec<_>>(),
        4 * 1024,
        &mut growth,
    ));
    report.push(flat(
        "client fds (median)",
        &client_samples.iter().map(|s| s.fds).collect::<Vec<_>>(),
        8,
        &mut growth,
    ));
    report.push(flat(
        "client threads (median)",
        &client_samples.iter().map(|s| s.threads).collect::<Vec<_>>(),
        8,
        &mut growth,
    ));
    problems.extend(growth);
    for line in &report {
        println!("{line}");
    }
    let lost = problems.iter().filter(|p| p.starts_with("LOST")).count();
    let twice = problems.iter().filter(|p| p.starts_with("TWICE")).count();
    println!("soak: {lost} lost, {twice} twice");
    if problems.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        for p in problems.iter().take(50) {
            println!("  {p}");
        }
        panic!(
            "the soak found {} problem(s) ({lost} lost, {twice} twice); its files are kept in {}",
            problems.len(),
            dir.display()
        );
    }
}
