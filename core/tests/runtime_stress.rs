//! Stress (issue 3 item 9): 8 threads register, re-register (REPLACE), unregister (with and without
//! cancel_task) and request application triggers for `BTB_STRESS_SECS` seconds (default 10) while
//! tasks run on a small pool — some taking deferrals that two other threads complete, some
//! reporting progress or failure. Then: the system becomes idle within a deadline (no deadlock, no
//! leaked instance), every ALLOWED request of a registration that was never unregistered ran
//! exactly once, every run that started got exactly one completion and one history record with
//! the outcome its run asked for, and the system closes at once.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use btb_core::*;
use common::rt::*;
use uuid::Uuid;

const THREADS: usize = 8;
const COMPLETERS: usize = 2;

fn stress_duration() -> Duration {
    let secs = std::env::var("BTB_STRESS_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(10.0);
    Duration::from_secs_f64(secs.clamp(0.1, 3600.0))
}

/// xorshift64*: a deterministic per-thread generator (no dependency needed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a run does, chosen by its requester and passed in the trigger details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Quick = 0,
    Deferral = 1,
    Progress = 2,
    Fail = 3,
}

impl Mode {
    fn from(n: u64) -> Mode {
        match n % 4 {
            0 => Mode::Quick,
            1 => Mode::Deferral,
            2 => Mode::Progress,
            _ => Mode::Fail,
        }
    }

    fn outcome(self) -> TaskOutcome {
        if self == Mode::Fail {
            TaskOutcome::Failed
        } else {
            TaskOutcome::Succeeded
        }
    }
}

enum ToCompleter {
    Complete(Deferral),
    Stop,
}

#[derive(Default)]
struct Tally {
    /// Run starts: instance id → (task id, seq).
    starts: Mutex<HashMap<Uuid, (Uuid, u64)>>,
    returns: AtomicU64,
    deferrals_taken: AtomicU64,
    deferrals_completed: AtomicU64,
    /// ALLOWED requests per task: seq → mode.
    allowed: Mutex<HashMap<Uuid, BTreeMap<u64, Mode>>>,
    /// Completed-handler calls for stable tasks: instance id → (count, outcome).
    completions: Mutex<HashMap<Uuid, (u32, TaskOutcome)>>,
    progress_reports: AtomicU64,
}

#[test]
fn eight_threads_register_unregister_and_request_while_tasks_run() {
    let duration = stress_duration();
    let test_started = Instant::now();
    let rig = Rig::open(Policy {
        max_concurrent: 6,
        history_limit: 100_000,
        ..policy()
    });
    let tally = Arc::new(Tally::default());
    let (ctx, crx) = mpsc::channel::<ToCompleter>();
    let crx = Arc::new(Mutex::new(crx));

    // One run function for every task (installed over the rig's router).
    {
        let tally = Arc::clone(&tally);
        let ctx = Mutex::new(ctx.clone());
        rig.sys
            .register_entry_point(
                EP,
                Some(Handler::Call(Arc::new(move |i: &Instance| {
                    let details = i.trigger_details().cloned().unwrap_or_default();
                    let seq = details["seq"].as_u64().unwrap();
                    let mode = Mode::from(details["mode"].as_u64().unwrap());
                    let previous = tally
                        .starts
                        .lock()
                        .unwrap()
                        .insert(i.instance_id(), (i.task().task_id(), seq));
                    assert!(previous.is_none(), "an instance started twice");
                    match mode {
                        Mode::Quick => {
                            std::hint::black_box((0..100u64).sum::<u64>());
                        }
                        Mode::Deferral => {
                            let d = i.get_deferral().unwrap();
                            tally.deferrals_taken.fetch_add(1, Ordering::SeqCst);
                            ctx.lock().unwrap().send(ToCompleter::Complete(d)).unwrap();
                        }
                        Mode::Progress => {
                            for p in 1..=5 {
                                i.set_progress(p * 20);
                            }
                        }
                        Mode::Fail => i.report_failure(format!("seq {seq} fails")),
                    }
                    tally.returns.fetch_add(1, Ordering::SeqCst);
                }))),
            )
            .unwrap();
    }

    let completers: Vec<_> = (0..COMPLETERS)
        .map(|_| {
            let crx = Arc::clone(&crx);
            let tally = Arc::clone(&tally);
            std::thread::spawn(move || {
                loop {
                    let msg = crx.lock().unwrap().recv().unwrap();
                    match msg {
                        ToCompleter::Complete(d) => {
                            d.instance().set_progress(77);
                            d.complete().unwrap();
                            tally.deferrals_completed.fetch_add(1, Ordering::SeqCst);
                        }
                        ToCompleter::Stop => return,
                    }
                }
            })
        })
        .collect();

    // Registrations that are never unregistered: their accounting must be exact.
    let mut stable = Vec::new();
    for t in 0..THREADS {
        let (b, _) = app_task(&format!("stable-{t}"));
        let reg = rig.register(&b);
        let tally2 = Arc::clone(&tally);
        reg.add_completed(Arc::new(move |_r: &Registration, c: &Completion| {
            let mut map = tally2.completions.lock().unwrap();
            let e = map.entry(c.instance_id).or_insert((0, c.outcome));
            e.0 += 1;
        }))
        .unwrap();
        let tally3 = Arc::clone(&tally);
        reg.add_progress(Arc::new(move |_r: &Registration, _i, _v| {
            tally3.progress_reports.fetch_add(1, Ordering::SeqCst);
        }))
        .unwrap();
        stable.push(reg);
    }

    let seq = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + duration;
    let ops = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let sys = rig.sys.clone();
            let stable = stable.clone();
            let tally = Arc::clone(&tally);
            let seq = Arc::clone(&seq);
            let ops = Arc::clone(&ops);
            std::thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((t as u64 + 1) * 0x1234_5678_9abc));
                let mut churn: HashMap<String, Registration> = HashMap::new();
                let request = |reg: &Registration, rng: &mut Rng| {
                    let n = seq.fetch_add(1, Ordering::SeqCst);
                    let mode = Mode::from(rng.below(4));
                    let args = serde_json::json!({ "seq": n, "mode": mode as u64 });
                    match reg.request(Some(args)) {
                        Ok(ApplicationTriggerResult::Allowed) => {
                            tally
                                .allowed
                                .lock()
                                .unwrap()
                                .entry(reg.task_id())
                                .or_default()
                                .insert(n, mode);
                        }
                        Ok(ApplicationTriggerResult::CurrentlyRunning) => {}
                        // A churn registration unregistered by this thread a moment ago cannot
                        // be requested any more; anything else is a failure.
                        Ok(other) => panic!("unexpected request result {other:?}"),
                        Err(e) => panic!("request failed: {e}"),
                    }
                };
                while Instant::now() < end {
                    ops.fetch_add(1, Ordering::Relaxed);
                    match rng.below(10) {
                        0..=4 => {
                            let reg = &stable[rng.below(THREADS as u64) as usize];
                            request(reg, &mut rng);
                        }
                        5 | 6 => {
                            let name = format!("churn-{t}-{}", rng.below(3));
                            let (mut b, _) = app_task(&name);
                            b.name_policy = if rng.below(2) == 0 {
                                NamePolicy::Replace as u32
                            } else {
                                NamePolicy::Keep as u32
                            };
                            let reg = sys.register(&b).unwrap();
                            request(&reg, &mut rng);
                            churn.insert(name, reg);
                        }
                        7 => {
                            if let Some(reg) = churn.values().next().cloned() {
                                request(&reg, &mut rng);
                            }
                        }
                        8 => {
                            let key = churn.keys().next().cloned();
                            if let Some(name) = key {
                                let reg = churn.remove(&name).unwrap();
                                reg.unregister(rng.below(2) == 0).unwrap();
                            }
                        }
                        _ => {
                            let listed = sys.all_tasks().unwrap();
                            assert!(listed.len() >= THREADS);
                            let reg = &stable[t];
                            let _ = reg.history().unwrap();
                        }
                    }
                }
                for (_, reg) in churn {
                    reg.unregister(rng.below(2) == 0).unwrap();
                }
            })
        })
        .collect();

    // Each stress thread stops by itself at `end`.
    for w in workers {
        w.join().expect("a stress thread panicked");
    }

    // No deadlock, nothing left running.
    assert!(
        rig.sys.wait_idle(Duration::from_secs(5)).unwrap(),
        "not idle 5 s after the stress stopped"
    );
    for _ in 0..COMPLETERS {
        ctx.send(ToCompleter::Stop).unwrap();
    }
    for c in completers {
        c.join().unwrap();
    }

    let starts = tally.starts.lock().unwrap().clone();
    let allowed = tally.allowed.lock().unwrap().clone();
    let completions = tally.completions.lock().unwrap().clone();
    assert_eq!(
        tally.returns.load(Ordering::SeqCst),
        starts.len() as u64,
        "every started run function returned"
    );
    assert_eq!(
        tally.deferrals_taken.load(Ordering::SeqCst),
        tally.deferrals_completed.load(Ordering::SeqCst)
    );

    let mut stable_runs = 0;
    for reg in &stable {
        let id = reg.task_id();
        let want: BTreeMap<u64, Mode> = allowed.get(&id).cloned().unwrap_or_default();
        let ran: BTreeMap<u64, Uuid> = starts
            .iter()
            .filter(|(_, (task, _))| *task == id)
            .map(|(inst, (_, seq))| (*seq, *inst))
            .collect();
        assert_eq!(
            ran.keys().copied().collect::<BTreeSet<_>>(),
            want.keys().copied().collect::<BTreeSet<_>>(),
            "{}: every ALLOWED request ran exactly once, nothing else ran",
            reg.name()
        );
        let history = reg.history().unwrap();
        assert_eq!(
            history.len(),
            ran.len(),
            "{}: one history record per run",
            reg.name()
        );
        for record in &history {
            let details: serde_json::Value =
                serde_json::from_str(record.trigger_details.as_deref().unwrap()).unwrap();
            let seq = details["seq"].as_u64().unwrap();
            assert_eq!(ran.get(&seq), Some(&record.instance_id));
            let mode = want[&seq];
            assert_eq!(record.outcome, mode.outcome(), "seq {seq} ({mode:?})");
            let (count, outcome) = completions
                .get(&record.instance_id)
                .copied()
                .unwrap_or_else(|| panic!("no completion for seq {seq}"));
            assert_eq!(count, 1, "exactly one completion for seq {seq}");
            assert_eq!(outcome, record.outcome);
        }
        stable_runs += ran.len();
    }
    assert_eq!(
        completions.len(),
        stable_runs,
        "no completion for a run that never started"
    );

    // Registrations that churned: a run only for an ALLOWED request (their pending fires may be
    // dropped by unregister, so at most).
    let churn_allowed: usize = allowed
        .iter()
        .filter(|(id, _)| !stable.iter().any(|r| r.task_id() == **id))
        .map(|(_, m)| m.len())
        .sum();
    let churn_runs = starts.len() - stable_runs;
    assert!(
        churn_runs <= churn_allowed,
        "{churn_runs} > {churn_allowed}"
    );

    let listed: Vec<Uuid> = rig
        .sys
        .all_tasks()
        .unwrap()
        .iter()
        .map(|r| r.task_id())
        .collect();
    assert_eq!(
        listed.into_iter().collect::<BTreeSet<_>>(),
        stable.iter().map(|r| r.task_id()).collect::<BTreeSet<_>>(),
        "every churned registration was unregistered"
    );

    let closing = Instant::now();
    rig.sys.close().unwrap();
    assert!(
        closing.elapsed() < Duration::from_secs(1),
        "close had running instances to wait for: {:?}",
        closing.elapsed()
    );
    eprintln!(
        "stress: {:?}, {} operations, {} runs ({} of stable registrations), {} deferrals, {} progress reports",
        duration,
        ops.load(Ordering::SeqCst),
        starts.len(),
        stable_runs,
        tally.deferrals_completed.load(Ordering::SeqCst),
        tally.progress_reports.load(Ordering::SeqCst)
    );
    assert!(
        stable_runs > 0 && churn_runs > 0,
        "the stress did run tasks"
    );
    assert!(
        test_started.elapsed() < duration + Duration::from_secs(5),
        "took {:?}",
        test_started.elapsed()
    );
}
