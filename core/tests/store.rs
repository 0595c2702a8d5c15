//! SPEC §7 with real SQLite files in temporary directories: round trips across reopen, file and
//! directory modes, WAL, corrupt / foreign / newer-schema / damaged files (a Store error naming the
//! path, and the file left byte-for-byte untouched), forward migration, one system per store.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use btb_core::store::SCHEMA_VERSION;
use btb_core::{
    Durability, ErrorKind, ManualClock, Policy, StoreLocation, System, SystemConditionType,
    SystemTriggerType, TaskRecord, Trigger,
};
use common::*;
use rusqlite::{Connection, OpenFlags};

fn store_in(dir: &Path) -> PathBuf {
    dir.join("btb.sqlite3")
}

fn records(system: &System) -> Vec<TaskRecord> {
    everything(system)
        .iter()
        .map(|r| r.record().clone())
        .collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every file of a directory and its bytes, except the lock file (creating that next to a file is
/// not writing to it).
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| !e.file_name().to_string_lossy().ends_with(".lock"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Opening `path` must fail with a Store error that names it (and every needle), and must leave
/// the directory exactly as it was.
#[track_caller]
fn refused_untouched(path: &Path, needles: &[&str]) -> String {
    let dir = path.parent().unwrap();
    let before = snapshot(dir);
    assert!(before.contains_key("btb.sqlite3"));
    let shown = path.display().to_string();
    let mut all = vec![shown.as_str()];
    all.extend_from_slice(needles);
    let err = expect_err(file_system(path), ErrorKind::Store, &all);
    assert_eq!(
        snapshot(dir),
        before,
        "a refused store was modified ({})",
        err.message()
    );
    // And again: the refusal is stable, nothing was "repaired" the first time.
    let again = expect_err(file_system(path), ErrorKind::Store, &all);
    assert_eq!(again.message(), err.message());
    assert_eq!(snapshot(dir), before);
    err.message().to_owned()
}

/// A store with a couple of registrations, closed.
fn make_store(dir: &Path) -> PathBuf {
    let path = store_in(dir);
    let system = file_system(&path).unwrap();
    system.register(&builder("one")).unwrap();
    let mut b = builder("two");
    b.task_group = Some(group("g", "G"));
    system.register(&b).unwrap();
    system.close().unwrap();
    path
}

#[test]
fn reopening_sees_every_field_of_every_registration() {
    use SystemConditionType as C;
    let dir = tempfile::tempdir().unwrap();
    let path = store_in(dir.path());
    let clock = ManualClock::new(T0).unwrap();
    let open = |durability| {
        let policy = Policy {
            durability,
            ..Policy::default()
        };
        System::open(options(StoreLocation::File(path.clone()), &clock, policy)).unwrap()
    };
    let system = open(Durability::Full);
    assert_eq!(system.store_path(), path.display().to_string());
    system
        .set_background_activated(None, Some(noop_handler()))
        .unwrap();
    let app_trigger = Trigger::application();
    let mut cases: Vec<btb_core::Builder> = Vec::new();
    {
        let mut b = builder(&"ñ".repeat(128));
        b.task_entry_point = Some("app.Timer".into());
        b.set_trigger(Trigger::Time {
            freshness_minutes: 20,
            one_shot: true,
        });
        b.cancel_on_condition_loss = true;
        b.is_network_requested = true;
        for c in [C::OnAcPower, C::InternetAvailable, C::UserPresent] {
            b.add_condition(c as u32);
        }
        cases.push(b);
    }
    {
        let mut b = builder("maintenance");
        b.task_entry_point = Some("app.General".into());
        b.task_group = Some(group("g.one", "Group One"));
        b.set_trigger(Trigger::Maintenance {
            freshness_minutes: 43_200,
            one_shot: false,
        });
        b.cancel_on_condition_loss = true;
        cases.push(b);
    }
    {
        let mut b = builder("system");
        b.task_entry_point = Some("app.SystemEvent".into());
        b.task_group = Some(group("g.one", "Group One"));
        b.set_trigger(Trigger::System {
            trigger_type: SystemTriggerType::PowerStateChange as u32,
            one_shot: true,
        });
        b.is_network_requested = true;
        b.add_condition(C::SessionDisconnected as u32);
        cases.push(b);
    }
    {
        let mut b = builder("application");
        b.task_entry_point = Some("app.General".into());
        b.task_group = Some(group("g.two", "Ĝroup two ✓"));
        b.set_trigger(app_trigger.clone());
        cases.push(b);
    }
    {
        let mut b = builder("custom");
        b.task_entry_point = Some("app.SystemEvent".into());
        b.set_trigger(Trigger::CustomEvent {
            trigger_id: "evt-ü/1 \"quoted\"".into(),
            recurrence: 0,
        });
        cases.push(b);
    }
    {
        let mut b = builder("calendar, no entry point");
        b.task_entry_point = None;
        b.set_trigger(Trigger::Calendar {
            expression: "Mon..Fri *-*-* 09:30".into(),
        });
        for c in [
            C::BatteryNotLow,
            C::StorageNotLow,
            C::DeviceIdle,
            C::FreeNetworkAvailable,
        ] {
            b.add_condition(c as u32);
        }
        b.add_condition(C::BackgroundWorkCostNotHigh as u32);
        cases.push(b);
    }
    for b in &cases {
        clock.advance_ms(1_001).unwrap();
        system.register(b).unwrap();
    }
    let before = records(&system);
    let groups = system.all_task_groups().unwrap();
    assert_eq!(before.len(), cases.len());
    assert_eq!(groups.len(), 2);
    system.close().unwrap();

    // Reopened (no activation handler needed to load a task without entry point).
    let system = open(Durability::Normal);
    assert_eq!(records(&system), before);
    assert_eq!(system.all_task_groups().unwrap(), groups);
    assert_eq!(system.task_group("g.two").unwrap().name, "Ĝroup two ✓");
    assert_eq!(system.all_tasks().unwrap().len(), 3);
    assert_eq!(system.group_tasks("g.one").unwrap().len(), 2);
    let app = before.iter().find(|r| r.name == "application").unwrap();
    assert_eq!(
        app.trigger.described(),
        app_trigger,
        "the application trigger keeps its id"
    );
    let first = &before[0];
    assert_eq!(first.next_due_ms, Some(T0 + 1_001 + 20 * 60_000));
    assert_eq!(
        first.conditions,
        vec![C::OnAcPower, C::InternetAvailable, C::UserPresent]
    );
    // Every builder field made it, field by field.
    for (b, r) in cases.iter().zip(&before) {
        assert_eq!(Some(&r.name), b.name.as_ref());
        assert_eq!(r.task_entry_point, b.task_entry_point);
        assert_eq!(r.task_group, b.task_group);
        assert_eq!(r.cancel_on_condition_loss, b.cancel_on_condition_loss);
        assert_eq!(r.is_network_requested, b.is_network_requested);
        assert_eq!(Some(&r.trigger.described()), b.trigger.as_ref());
        let raw: Vec<u32> = r.conditions.iter().map(|c| *c as u32).collect();
        assert_eq!(raw, b.conditions);
    }

    // New registrations continue after the loaded ones.
    let late = system.register(&builder("late")).unwrap();
    assert!(before.iter().all(|r| r.seq < late.record().seq));
    assert_eq!(system.all_tasks().unwrap().last().unwrap(), &late);
    system.close().unwrap();
    let system = open(Durability::Full);
    assert_eq!(records(&system).len(), cases.len() + 1);
}

#[test]
fn unregister_and_replace_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_in(dir.path());
    let system = file_system(&path).unwrap();
    let gone = system.register(&builder("gone")).unwrap();
    let mut b = builder("grouped");
    b.task_group = Some(group("lib", "Lib"));
    let grouped = system.register(&b).unwrap();
    let old = system.register(&builder("replaced")).unwrap();
    let mut r = builder("replaced");
    r.name_policy = btb_core::NamePolicy::Replace as u32;
    r.set_trigger(time(99));
    let new = system.register(&r).unwrap();
    gone.unregister(false).unwrap();
    grouped.unregister(true).unwrap();
    system.close().unwrap();

    let system = file_system(&path).unwrap();
    let ids: Vec<_> = everything(&system).iter().map(|r| r.task_id()).collect();
    assert_eq!(ids, vec![new.task_id()]);
    assert!(system.find(&old.task_id()).is_err());
    assert_eq!(system.find(&new.task_id()).unwrap().trigger(), time(99));
    assert!(
        system.all_task_groups().unwrap().is_empty(),
        "the group outlived its last task"
    );
    system.close().unwrap();

    // Also in the file itself: no orphan group row.
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let groups: i64 = conn
        .query_row("SELECT count(*) FROM task_groups", [], |r| r.get(0))
        .unwrap();
    assert_eq!(groups, 0);
}

#[test]
fn a_new_store_is_private_and_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    // Two directory levels that do not exist yet.
    let path = dir.path().join("a").join("b").join("btb.sqlite3");
    let system = file_system(&path).unwrap();
    system.register(&builder("x")).unwrap();
    assert_eq!(mode(&dir.path().join("a")), 0o700);
    assert_eq!(mode(&dir.path().join("a/b")), 0o700);
    assert_eq!(mode(&path), 0o600);
    let sibling = |suffix: &str| {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        PathBuf::from(p)
    };
    for extra in ["-wal", "-shm", ".lock"] {
        let p = sibling(extra);
        assert!(
            p.exists(),
            "{} missing while the store is open",
            p.display()
        );
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }

    // WAL is persistent, so a second connection sees it; so does the file header
    // (bytes 18 and 19 are 2 for WAL).
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let journal: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
    drop(conn);
    system.close().unwrap();
    let header = std::fs::read(&path).unwrap();
    assert_eq!(&header[..16], b"SQLite format 3\0");
    assert_eq!((header[18], header[19]), (2, 2), "not in WAL mode");
}

#[test]
fn an_existing_directory_keeps_its_mode() {
    // "0700 when created": btb does not chmod a directory it did not create.
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    file_system(&shared.join("btb.sqlite3")).unwrap();
    assert_eq!(mode(&shared), 0o755);
    assert_eq!(mode(&shared.join("btb.sqlite3")), 0o600);
}

#[test]
fn garbage_is_a_store_error_naming_the_path_and_is_left_untouched() {
    let mut random = Vec::with_capacity(16_384);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..16_384 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        random.push((x >> 24) as u8);
    }
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("one byte", vec![b'x']),
        (
            "text",
            b"this is not a database, it is a shopping list\n".to_vec(),
        ),
        ("random 16 KiB", random.clone()),
        ("zeros 8 KiB", vec![0u8; 8192]),
    ];
    for (what, bytes) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = store_in(dir.path());
        std::fs::write(&path, &bytes).unwrap();
        let message = refused_untouched(&path, &["not a SQLite database"]);
        assert!(message.contains("left untouched"), "{what}: {message}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{what}");
    }
}

#[test]
fn a_store_with_a_valid_header_and_garbage_pages_is_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = make_store(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 4096);
    for (i, b) in bytes.iter_mut().enumerate().skip(100) {
        *b = (i * 7 % 251) as u8;
    }
    std::fs::write(&path, &bytes).unwrap();
    refused_untouched(&path, &[]);
}

#[test]
fn a_store_truncated_to_its_first_page_is_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = make_store(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    let page = u16::from_be_bytes([bytes[16], bytes[17]]) as usize;
    assert!(bytes.len() > page);
    std::fs::write(&path, &bytes[..page]).unwrap();
    refused_untouched(&path, &[]);
}

#[test]
fn a_sqlite_database_that_is_not_a_btb_store_is_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_in(dir.path());
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
             INSERT INTO notes (body) VALUES ('keep me');",
        )
        .unwrap();
    }
    let message = refused_untouched(&path, &["not a btb store"]);
    assert!(message.contains("left untouched"), "{message}");
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let journal: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(journal, "delete", "btb switched a foreign database to WAL");
}

#[test]
fn a_newer_schema_is_a_store_error_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = make_store(dir.path());
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute("UPDATE btb_schema SET version = ?1", [SCHEMA_VERSION + 1])
            .unwrap();
    }
    let message = refused_untouched(
        &path,
        &[
            &format!("schema version {}", SCHEMA_VERSION + 1),
            &format!("({SCHEMA_VERSION})"),
            "newer",
        ],
    );
    assert!(message.contains("left untouched"), "{message}");
    // Much newer, too.
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute("UPDATE btb_schema SET version = 1000", [])
            .unwrap();
    }
    refused_untouched(&path, &["schema version 1000"]);
}

#[test]
fn a_row_that_cannot_be_decoded_is_a_store_error_naming_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let path = make_store(dir.path());
    let id: uuid::Uuid = {
        let conn = Connection::open(&path).unwrap();
        let raw: Vec<u8> = conn
            .query_row(
                "SELECT task_id FROM registrations WHERE name = 'two'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        conn.execute(
            "UPDATE registrations SET trigger = '{\"kind\":\"warp_drive\"}' WHERE name = 'two'",
            [],
        )
        .unwrap();
        uuid::Uuid::from_slice(&raw).unwrap()
    };
    refused_untouched(&path, &["decode the trigger", &id.to_string()]);
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute(
            "UPDATE registrations SET trigger = '{\"kind\":\"application\",\"id\":\"00000000-0000-0000-0000-000000000001\"}',
                                      conditions = '[1, 999]' WHERE name = 'two'",
            [],
        )
        .unwrap();
    }
    refused_untouched(&path, &["decode the conditions", &id.to_string(), "999"]);
}

#[test]
fn an_empty_file_becomes_a_store_at_the_current_schema() {
    // A zero-length file is an empty database, not a corrupt one: it is migrated from scratch.
    let dir = tempfile::tempdir().unwrap();
    let path = store_in(dir.path());
    std::fs::write(&path, b"").unwrap();
    let system = file_system(&path).unwrap();
    let r = system.register(&builder("x")).unwrap();
    system.close().unwrap();
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let versions: Vec<i64> = conn
        .prepare("SELECT version FROM btb_schema")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(versions, vec![SCHEMA_VERSION]);
    drop(conn);
    let system = file_system(&path).unwrap();
    assert_eq!(system.find(&r.task_id()).unwrap().record(), r.record());
}

#[test]
fn a_second_system_on_a_store_is_a_client_of_the_first() {
    const APP: &str = "org.example.store.second";
    let dir = tempfile::tempdir().unwrap();
    let path = store_in(dir.path());
    let first = file_system_as(APP, &path).unwrap();
    assert!(first.is_broker());
    let a = first.register(&builder("a")).unwrap();
    let second = file_system_as(APP, &path).unwrap();
    assert!(!second.is_broker());
    assert_eq!(second.broker_pid(), std::process::id());
    // Both see and change the same registrations, through the one broker.
    let b = second.register(&builder("b")).unwrap();
    let ids =
        |s: &System| -> Vec<_> { s.all_tasks().unwrap().iter().map(|r| r.task_id()).collect() };
    assert_eq!(ids(&first), vec![a.task_id(), b.task_id()]);
    assert_eq!(ids(&second), ids(&first));
    // Validation errors are the broker's, word for word.
    let mut bad = builder("bad");
    bad.task_entry_point = Some("app.Undeclared".into());
    let (here, there) = (
        first.register(&bad).unwrap_err(),
        second.register(&bad).unwrap_err(),
    );
    assert_eq!(
        (here.kind(), here.message()),
        (there.kind(), there.message())
    );
    // The broker closes: the client takes the store over and keeps everything.
    first.close().unwrap();
    assert_eq!(ids(&second), vec![a.task_id(), b.task_id()]);
    assert!(second.is_broker());
    // A third system is now the client of the second.
    let third = file_system_as(APP, &path).unwrap();
    assert!(!third.is_broker());
    assert_eq!(ids(&third), ids(&second));
    drop(third);
    drop(second);
    // Dropping the last handle released the store: the next one is its broker.
    assert!(file_system_as(APP, &path).unwrap().is_broker());
}

#[test]
fn a_directory_where_the_file_should_be_is_a_store_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_in(dir.path());
    std::fs::create_dir(&path).unwrap();
    expect_err(
        file_system(&path),
        ErrorKind::Store,
        &[&path.display().to_string()],
    );
    assert!(path.is_dir());
    assert_eq!(std::fs::read_dir(&path).unwrap().count(), 0);
}

#[test]
fn every_path_to_a_store_meets_its_one_broker() {
    const APP: &str = "org.example.store.paths";
    let dir = tempfile::tempdir().unwrap();
    let path = make_store(dir.path());
    let first = file_system_as(APP, &path).unwrap();
    let a = first.register(&builder("a")).unwrap();
    // A symlink to the file, and the file through a symlinked directory.
    let link = dir.path().join("alias.sqlite3");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    let dir_link = dir.path().join("dir-alias");
    std::os::unix::fs::symlink(dir.path(), &dir_link).unwrap();
    for alias in [link.clone(), dir_link.join("btb.sqlite3")] {
        let other = file_system_as(APP, &alias).unwrap();
        assert!(!other.is_broker(), "{}", alias.display());
        assert_eq!(other.broker_pid(), std::process::id());
        assert!(other.find(&a.task_id()).is_ok());
    }
    drop(first);
    // Once the broker is gone, any path opens the same registrations.
    let second = file_system(&link).unwrap();
    assert!(
        second.find(&a.task_id()).is_ok(),
        "the alias opened another store"
    );
}

#[test]
fn a_hard_linked_store_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = make_store(dir.path());
    std::fs::hard_link(&path, dir.path().join("second-name.sqlite3")).unwrap();
    refused_untouched(&path, &["2 hard links", "left untouched"]);
}

/// Runs `script` in a real Python process with `path` as `sys.argv[1]`; returns once it printed
/// its first line (the child keeps running until its stdin closes).
fn python_holding(path: &Path, script: &str) -> std::process::Child {
    use std::io::BufRead;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "holding", "{line}");
    child
}

#[test]
fn a_store_locked_by_another_process_says_so_not_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = make_store(dir.path());
    let mut holder = python_holding(
        &path,
        "import sqlite3, sys\n\
         c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
         c.execute('PRAGMA locking_mode=EXCLUSIVE'); c.execute('BEGIN EXCLUSIVE')\n\
         print('holding', flush=True); sys.stdin.read()",
    );
    let err = refused_untouched(
        &path,
        &[
            "locked by another process",
            &format!("(pid {})", holder.id()),
        ],
    );
    assert!(!err.contains("corrupt"), "{err}");
    drop(holder.stdin.take());
    holder.wait().unwrap();
    file_system(&path).unwrap();
}

/// The child half of `a_store_in_a_read_only_directory_says_so` (run by it, as an unprivileged
/// user when the tests run as root: root writes to read-only directories).
#[test]
#[ignore = "a child process of a_store_in_a_read_only_directory_says_so"]
fn read_only_directory_child() {
    let path = PathBuf::from(std::env::var_os("BTB_TEST_STORE").unwrap());
    let err = expect_err(
        file_system(&path),
        ErrorKind::Store,
        &[
            "is not writable",
            &path.parent().unwrap().display().to_string(),
        ],
    );
    assert!(!err.message().contains("corrupt"), "{}", err.message());
}

#[test]
fn a_store_in_a_read_only_directory_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = make_store(dir.path());
    let before = snapshot(dir.path());
    let root = rustix::process::getuid().is_root();
    let mut child = std::process::Command::new(if root { "setpriv" } else { "env" });
    if root {
        // The directory stays root's (0755); the store and the temporary root become nobody's.
        let nobody = 65534;
        for p in [&path, dir.path()] {
            std::os::unix::fs::chown(p, Some(nobody), Some(nobody)).unwrap();
        }
        let sub = dir.path().join("ro");
        std::fs::create_dir(&sub).unwrap();
        std::fs::rename(&path, sub.join("btb.sqlite3")).unwrap();
        child.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
        child.env("BTB_TEST_STORE", sub.join("btb.sqlite3"));
    } else {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
        child.env("BTB_TEST_STORE", &path);
    }
    let status = child
        .arg(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "read_only_directory_child",
            "--quiet",
        ])
        .status()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(status.success(), "the child saw another error");
    if !root {
        assert_eq!(snapshot(dir.path()), before, "the refused open wrote");
    }
}

/// A store of schema 4 (before runs could be parked, SPEC §11) opens: migrated to the current
/// schema, a run that started there reads as not parked — recovered as any cut-off run — and a
/// marker can be marked parked and handed.
#[test]
fn a_schema_4_store_with_a_started_run_is_migrated_and_its_run_is_not_parked() {
    let dir = tempfile::tempdir().unwrap();
    let path = make_store(dir.path());
    let instance = uuid::Uuid::new_v4();
    {
        // Schema 4 is the current one without `runs_started.parked`.
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "ALTER TABLE runs_started DROP COLUMN parked; UPDATE btb_schema SET version = 4;",
        )
        .unwrap();
        let task: Vec<u8> = conn
            .query_row("SELECT task_id FROM registrations LIMIT 1", [], |r| {
                r.get(0)
            })
            .unwrap();
        conn.execute(
            "INSERT INTO runs_started
                 (instance_id, task_id, attempt, started_ms, trigger_kind, trigger_details)
             VALUES (?1, ?2, 1, 5, 0, NULL)",
            rusqlite::params![instance.as_bytes().to_vec(), task],
        )
        .unwrap();
    }
    let mut store = btb_core::Store::open(
        &btb_core::StoreLocation::File(path.clone()),
        APP_ID,
        btb_core::Durability::Full,
    )
    .unwrap();
    let started = store.started_runs().unwrap();
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].instance_id, instance);
    assert!(!started[0].parked);
    use btb_core::store::ScheduleChange::Parked;
    store.write_batch(&[Parked(instance, true)], &[]).unwrap();
    assert!(store.started_runs().unwrap()[0].parked);
    store.write_batch(&[Parked(instance, false)], &[]).unwrap();
    assert!(!store.started_runs().unwrap()[0].parked);
    drop(store);
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let version: i64 = conn
        .query_row("SELECT version FROM btb_schema", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
}
