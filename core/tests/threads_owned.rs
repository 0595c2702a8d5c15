//! Threads owned and joined (docs/threading.md): `close` returns within the grace plus a fixed
//! margin even when a handler blocks, and open/close cycles leave no thread and no descriptor
//! behind. Alone in its binary: it counts the threads and descriptors of the process.

mod common;

use std::sync::mpsc;
use std::time::Duration;

use btb_core::*;
use common::rt::*;

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

/// The count of `dir`, looked at again (up to a deadline) until it is `want`: a joined thread can
/// stay listed in /proc for a moment after `join` returns (its tid is cleared before the kernel
/// releases the task).
fn settled(dir: &str, want: usize) -> usize {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let n = count(dir);
        if n == want || std::time::Instant::now() >= deadline {
            return n;
        }
        std::thread::yield_now();
    }
}

/// One test at a time: both count the process's threads.
static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn close_returns_within_the_grace_when_a_completed_handler_blocks() {
    let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    let grace = Duration::from_millis(200);
    let rig = Rig::open(Policy {
        grace_ms: grace.as_millis() as u32,
        ..policy()
    });
    let (b, trigger) = app_task("blocks");
    let reg = rig.register(&b);
    let gate = Gate::new();
    let (entered, in_handler) = mpsc::channel();
    let entered = std::sync::Mutex::new(entered);
    let g = gate.clone();
    reg.add_completed(std::sync::Arc::new(
        move |_: &Registration, _: &Completion| {
            let _ = entered.lock().unwrap().send(());
            g.wait(); // blocks until the test opens it, long after close
        },
    ))
    .unwrap();
    rig.sys.request(&trigger, None).unwrap();
    recv(&in_handler, "the completed handler to be called");

    let (closed, done) = mpsc::channel();
    let sys = rig.sys.clone();
    std::thread::spawn(move || {
        let _ = closed.send(sys.close());
    });
    // Grace + the 1 s margin, with room for a loaded machine; a close that joined the notifier
    // would wait for the gate (30 s).
    let result = done
        .recv_timeout(grace + Duration::from_secs(1) + DEADLINE)
        .expect("close waited for a blocked completed handler");
    assert!(result.is_ok(), "{result:?}");
    gate.open();
}

#[test]
fn open_close_cycles_leave_no_thread_and_no_descriptor_behind() {
    let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0).unwrap();
    let cycle = |n: usize| {
        let sys = open_file(
            &dir.path().join("btb.sqlite3"),
            "org.example.threads",
            "1",
            &clock,
            Policy {
                durability: Durability::Normal,
                ..policy()
            },
        );
        let rig = Rig::attach(sys, clock.clone());
        if n == 0 {
            rig.register(&app_task("t").0);
        }
        let trigger = match rig.sys.all_tasks().unwrap()[0].trigger() {
            Trigger::Application { id } => id,
            other => panic!("{other:?}"),
        };
        rig.sys.request(&trigger, None).unwrap(); // a worker runs it
        rig.next_start();
        rig.idle();
        rig.sys.close().unwrap();
    };
    cycle(0); // warm-up: the first open makes files and one-time state
    let (threads, fds) = (count("/proc/self/task"), count("/proc/self/fd"));
    for n in 1..=300 {
        cycle(n);
    }
    assert_eq!(
        settled("/proc/self/task", threads),
        threads,
        "threads after 300 cycles"
    );
    assert_eq!(count("/proc/self/fd"), fds, "descriptors after 300 cycles");
}
