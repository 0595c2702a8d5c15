//! SPEC §7 durability: "Killing the process at any instant loses no acknowledged registration and
//! leaves no half-registration."
//!
//! The test re-executes its own binary as a writer (`child_writer`, active only when
//! `BTB_TEST_DURABILITY_STORE` is set): it registers tasks in a loop and prints `ACK <task id> <n>`
//! after each `register` returns. The parent reads the pipe and, after a given number of ACKs,
//! SIGKILLs it — at whatever point of a registration the writer happens to be — then opens the
//! store and checks every ACKed registration, field by field, and the file's integrity.
//! No sleeps: everything is driven by the pipe, under a deadline.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use btb_core::{
    Builder, Durability, ManualClock, Policy, StoreLocation, System, SystemConditionType,
    SystemTriggerType, TaskGroup, TaskRecord, Trigger,
};
use common::*;
use uuid::Uuid;

const STORE_VAR: &str = "BTB_TEST_DURABILITY_STORE";
const MODE_VAR: &str = "BTB_TEST_DURABILITY_MODE";
/// Each test's own app id (its broker's control socket is named after it).
const APP_VAR: &str = "BTB_TEST_DURABILITY_APP";
/// A writer that is never killed stops here (the parent then fails).
const WRITER_LIMIT: u64 = 100_000;
const DEADLINE: Duration = Duration::from_secs(180);

/// The n-th registration of the writer; the parent rebuilds it to check what was stored.
fn nth_builder(n: u64) -> Builder {
    let mut b = Builder::new();
    b.name = Some(format!("task-{n:06}"));
    b.task_entry_point = (!n.is_multiple_of(5)).then(|| "app.All".to_owned());
    if n.is_multiple_of(3) {
        b.task_group = Some(TaskGroup {
            id: format!("g{}", n % 7),
            name: format!("Group {} ✓", n % 7),
        });
    }
    b.cancel_on_condition_loss = n % 2 == 1;
    b.is_network_requested = n % 3 == 1;
    let trigger_type = 1 + (n % 15) as u32;
    b.set_trigger(match n % 6 {
        0 => Trigger::Time {
            freshness_minutes: 15 + (n % 100) as u32,
            one_shot: n.is_multiple_of(4),
        },
        1 => Trigger::Maintenance {
            freshness_minutes: 43_200 - (n % 1000) as u32,
            one_shot: false,
        },
        2 => Trigger::System {
            trigger_type,
            one_shot: trigger_type != SystemTriggerType::ControlChannelReset as u32,
        },
        3 => Trigger::Application {
            id: Uuid::from_u128(u128::from(n) + 1),
        },
        4 => Trigger::CustomEvent {
            trigger_id: format!("evt-{n}"),
            recurrence: (n % 2) as u32,
        },
        _ => Trigger::Calendar {
            expression: format!("*-*-* {:02}:{:02}", n % 24, n % 60),
        },
    });
    use SystemConditionType as C;
    let conditions: &[C] = match n % 4 {
        0 => &[],
        1 => &[C::OnAcPower],
        2 => &[C::InternetAvailable, C::BatteryNotLow],
        _ => &[C::UserPresent, C::SessionConnected, C::StorageNotLow],
    };
    for c in conditions {
        b.add_condition(*c as u32);
    }
    b
}

fn registered_at(n: u64) -> i64 {
    T0 + n as i64 + 1
}

fn open(path: &Path, app_id: &str, durability: Durability, clock: &ManualClock) -> System {
    let policy = Policy {
        durability,
        ..Policy::default()
    };
    let system = System::open(btb_core::SystemOptions {
        manifest: Some(common::manifest_for(app_id)),
        ..options(StoreLocation::File(path.to_owned()), clock, policy)
    })
    .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    // Every fifth task has no entry point.
    system
        .set_background_activated(None, Some(noop_handler()))
        .unwrap();
    system
}

/// The writer: a child process of the SIGKILL tests (ignored when the suite runs; they run it
/// with `--ignored --exact child_writer` and `BTB_TEST_DURABILITY_STORE` set).
#[test]
#[ignore = "a child process of the sigkill tests"]
fn child_writer() {
    let Some(path) = std::env::var_os(STORE_VAR) else {
        return;
    };
    let durability = match std::env::var(MODE_VAR).as_deref() {
        Ok("normal") => Durability::Normal,
        _ => Durability::Full,
    };
    let clock = ManualClock::new(T0).unwrap();
    let app_id = std::env::var(APP_VAR).unwrap_or_else(|_| common::APP_ID.to_owned());
    let system = open(Path::new(&path), &app_id, durability, &clock);
    let mut out = std::io::stdout().lock();
    for n in 0..WRITER_LIMIT {
        clock.advance_ms(1).unwrap();
        let r = system.register(&nth_builder(n)).unwrap();
        // One write per line (below PIPE_BUF, so atomic), flushed before the next register.
        let line = format!("ACK {} {n}\n", r.task_id());
        if out
            .write_all(line.as_bytes())
            .and_then(|_| out.flush())
            .is_err()
        {
            return; // the parent is gone
        }
    }
}

/// Kills and reaps the writer whatever happens to the test.
struct Writer(Child);

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn check_record(r: &TaskRecord, n: u64) {
    let b = nth_builder(n);
    let what = format!("registration {n} ({})", r.task_id);
    assert_eq!(Some(&r.name), b.name.as_ref(), "{what}");
    assert_eq!(r.task_entry_point, b.task_entry_point, "{what}");
    assert_eq!(r.task_group, b.task_group, "{what}: group (row) incomplete");
    assert_eq!(
        r.cancel_on_condition_loss, b.cancel_on_condition_loss,
        "{what}"
    );
    assert_eq!(r.is_network_requested, b.is_network_requested, "{what}");
    assert_eq!(Some(&r.trigger.described()), b.trigger.as_ref(), "{what}");
    let raw: Vec<u32> = r.conditions.iter().map(|c| *c as u32).collect();
    assert_eq!(raw, b.conditions, "{what}");
    assert_eq!(r.registered_at_ms, registered_at(n), "{what}");
    let due = match &r.trigger.described() {
        Trigger::Calendar { expression } => btb_core::calendar::CalendarSpec::parse(expression)
            .unwrap()
            .next_after(registered_at(n), &btb_core::calendar::system_time_zone()),
        other => other
            .freshness_minutes()
            .map(|f| registered_at(n) + i64::from(f) * 60_000),
    };
    assert_eq!(r.next_due_ms, due, "{what}");
}

fn kill_writer_and_check(kill_after: usize, mode: &str) {
    let app_id = format!("org.example.durability.{mode}{kill_after}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("btb.sqlite3");
    let mut writer = Writer(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "child_writer",
                "--ignored",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(STORE_VAR, &path)
            .env(MODE_VAR, mode)
            .env(APP_VAR, &app_id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = writer.0.stdout.take().unwrap();
    let mut stderr = writer.0.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout);
        loop {
            let mut line = String::new();
            match lines.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });

    let deadline = Instant::now() + DEADLINE;
    let mut acked: Vec<(Uuid, u64)> = Vec::new();
    let mut killed = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "deadline: {} ACKs after {DEADLINE:?} (killed: {killed})",
                acked.len()
            ),
        };
        // libtest's "test child_writer ... " has no newline, so the first ACK shares its line.
        // A line cut short by the kill (no newline) is not an acknowledgement.
        let ack = line
            .find("ACK ")
            .and_then(|at| line[at + 4..].strip_suffix('\n'));
        if let Some(ack) = ack {
            let (id, n) = ack.split_once(' ').expect("malformed ACK");
            acked.push((id.parse().unwrap(), n.parse().unwrap()));
            if acked.len() == 1 {
                // Another process opening the store while the writer holds it becomes a client
                // of the writer's broker, and sees what it acknowledged.
                let clock = ManualClock::new(T0).unwrap();
                let other = open(&path, &app_id, Durability::Full, &clock);
                assert!(!other.is_broker());
                assert_eq!(other.broker_pid(), writer.0.id());
                assert!(other.find(&acked[0].0).is_ok());
                drop(other); // before the kill: a client would take the store over
            }
        }
        if !killed && acked.len() >= kill_after {
            writer.0.kill().unwrap(); // SIGKILL
            killed = true;
            // Keep reading: ACKs already in the pipe were acknowledged before the kill.
        }
    }
    reader.join().unwrap();
    let status = writer.0.wait().unwrap();
    let stderr = stderr.join().unwrap();
    assert!(
        killed,
        "the writer stopped after {} ACKs without being killed ({status}); stderr:\n{stderr}",
        acked.len()
    );
    assert_eq!(
        status.signal(),
        Some(9),
        "not killed by SIGKILL: {status}; stderr:\n{stderr}"
    );
    assert!(acked.len() >= kill_after);
    let ns: Vec<u64> = acked.iter().map(|(_, n)| *n).collect();
    assert_eq!(
        ns,
        (0..acked.len() as u64).collect::<Vec<_>>(),
        "ACKs out of order"
    );

    // The store opens (the kill released the lock) and loads every row without error.
    let clock = ManualClock::new(T0).unwrap();
    let system = open(&path, &app_id, Durability::Full, &clock);
    assert!(system.is_broker());
    let stored = everything(&system);
    eprintln!(
        "{mode}: killed after {kill_after} ACKs read; {} ACKs in all, {} stored",
        acked.len(),
        stored.len()
    );
    let by_id: HashMap<Uuid, &TaskRecord> =
        stored.iter().map(|r| (r.task_id(), r.record())).collect();
    for (id, n) in &acked {
        let r = by_id
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged registration {n} ({id}) was lost"));
        check_record(r, *n);
    }
    // At most the one registration in flight at the kill committed without its ACK being read,
    // and it is complete too.
    assert!(
        stored.len() == acked.len() || stored.len() == acked.len() + 1,
        "{} stored for {} ACKs",
        stored.len(),
        acked.len()
    );
    for (i, r) in stored.iter().enumerate() {
        check_record(r.record(), i as u64);
    }
    let groups: BTreeSet<String> = system
        .all_task_groups()
        .unwrap()
        .into_iter()
        .map(|g| g.id)
        .collect();
    let used: BTreeSet<String> = stored
        .iter()
        .filter_map(|r| r.task_group().map(|g| g.id.clone()))
        .collect();
    assert_eq!(groups, used);
    // The store keeps working after the crash.
    clock.advance_ms(stored.len() as i64 + 1).unwrap();
    let next = system.register(&nth_builder(stored.len() as u64)).unwrap();
    check_record(next.record(), stored.len() as u64);
    system.close().unwrap();

    // And the file itself is sound.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let orphans: i64 = conn
        .query_row(
            "SELECT count(*) FROM registrations r
             WHERE r.group_id IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM task_groups g WHERE g.id = r.group_id)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(orphans, 0, "a registration lost its group row");
}

#[test]
fn sigkill_after_200_acks_loses_nothing() {
    kill_writer_and_check(200, "full");
}

#[test]
fn sigkill_after_333_acks_loses_nothing() {
    kill_writer_and_check(333, "full");
}

#[test]
fn sigkill_after_517_acks_loses_nothing() {
    kill_writer_and_check(517, "full");
}

#[test]
fn sigkill_with_synchronous_normal_loses_nothing() {
    // NORMAL trades power-loss durability only; a process crash must still lose nothing.
    kill_writer_and_check(250, "normal");
}
