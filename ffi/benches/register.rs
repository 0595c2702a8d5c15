//! Registration through the C ABI, next to its physical limit measured in the same run.
//!
//! - `register/ffi_memory`: one registration with a `:memory:` store of 0–10k tasks (target ≤ 10 µs).
//! - `register/ffi_file_{full,normal}`: one durable registration (WAL, synchronous FULL / NORMAL).
//! - `register/raw_insert_commit_{full,normal}`: a prepared rusqlite insert + commit of an
//!   equivalent row into an equivalent table — the limit for the durable path (target: btb ≥ 0.8×
//!   its rate).
//! - `register_10k/ffi_memory`: 10,000 registrations in a loop.

use std::ffi::CString;
use std::hint::black_box;
use std::time::Duration;

use btb::builder::{
    btb_free, btb_new, btb_register_in, btb_set_name, btb_set_task_entry_point, btb_set_trigger,
};
use btb::registration::{btb_registration, btb_registration_free};
use btb::system::{
    btb_manifest_declare, btb_manifest_free, btb_manifest_new, btb_system, btb_system_close,
    btb_system_open, btb_system_options_free, btb_system_options_new,
    btb_system_options_set_durability, btb_system_options_set_manifest,
    btb_system_options_set_store,
};
use btb::trigger::{btb_time_trigger_new, btb_trigger_free};
use btb::{btb_status, builder::btb_builder};
use criterion::{Criterion, criterion_group, criterion_main};

fn ok(status: btb_status) {
    assert_eq!(status, btb_status::BTB_OK, "{:?}", unsafe {
        std::ffi::CStr::from_ptr(btb::error::btb_last_error_message())
    });
}

fn open(store: &str, durability: u32) -> *mut btb_system {
    let mut manifest = std::ptr::null_mut();
    let mut options = std::ptr::null_mut();
    let mut system = std::ptr::null_mut();
    // SAFETY: every pointer passed is a live local, a C string literal or NULL with length 0.
    unsafe {
        let types = [c"timer".as_ptr()];
        ok(btb_manifest_new(
            c"org.example.bench".as_ptr(),
            c"1".as_ptr(),
            &mut manifest,
        ));
        ok(btb_manifest_declare(
            manifest,
            c"bench.Task".as_ptr(),
            types.as_ptr(),
            1,
            std::ptr::null(),
            0,
        ));
        ok(btb_system_options_new(&mut options));
        ok(btb_system_options_set_manifest(options, manifest));
        let store = CString::new(store).unwrap();
        ok(btb_system_options_set_store(options, store.as_ptr()));
        ok(btb_system_options_set_durability(options, durability));
        ok(btb_system_open(options, &mut system));
        ok(btb_system_options_free(options));
        ok(btb_manifest_free(manifest));
    }
    system
}

fn builder() -> *mut btb_builder {
    let mut b = std::ptr::null_mut();
    let mut t = std::ptr::null_mut();
    // SAFETY: the out-pointers are live locals; the strings are C string literals.
    unsafe {
        ok(btb_new(&mut b));
        ok(btb_set_name(b, c"bench-task".as_ptr()));
        ok(btb_set_task_entry_point(b, c"bench.Task".as_ptr()));
        ok(btb_time_trigger_new(15, false, &mut t));
    }
    ok(btb_set_trigger(b, t));
    ok(btb_trigger_free(t));
    b
}

fn register_one(system: *mut btb_system, b: *mut btb_builder) {
    let mut r: *mut btb_registration = std::ptr::null_mut();
    // SAFETY: `r` is a live local.
    ok(unsafe { btb_register_in(system, b, &mut r) });
    ok(btb_registration_free(black_box(r)));
}

/// The raw limit: the same row shape, a prepared insert, one commit per row.
fn raw_connection(path: &std::path::Path, sync: &str) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync};
         CREATE TABLE registrations (seq INTEGER PRIMARY KEY, task_id BLOB NOT NULL UNIQUE,
             name TEXT NOT NULL, entry_point TEXT, group_id TEXT, cancel_on_condition_loss INTEGER NOT NULL,
             is_network_requested INTEGER NOT NULL, trigger TEXT NOT NULL, conditions TEXT NOT NULL,
             registered_at_ms INTEGER NOT NULL, next_due_ms INTEGER, pending_fire INTEGER NOT NULL DEFAULT 0,
             spent INTEGER NOT NULL DEFAULT 0);
         CREATE INDEX registrations_by_group ON registrations(group_id) WHERE group_id IS NOT NULL;"
    ))
    .unwrap();
    conn
}

fn raw_insert(conn: &mut rusqlite::Connection, seq: &mut i64) {
    *seq += 1;
    let tx = conn.transaction().unwrap();
    tx.prepare_cached(
        "INSERT INTO registrations (task_id, seq, name, entry_point, group_id, cancel_on_condition_loss,
             is_network_requested, trigger, conditions, registered_at_ms, next_due_ms)
         VALUES (?1, ?2, ?3, ?4, NULL, 0, 0, ?5, '[]', ?6, ?7)",
    )
    .unwrap()
    .execute(rusqlite::params![
        uuid::Uuid::new_v4().as_bytes(),
        *seq,
        "bench-task",
        "bench.Task",
        r#"{"kind":"time","freshness_minutes":15,"one_shot":false}"#,
        1_900_000_000_000i64 + *seq,
        1_900_000_900_000i64 + *seq,
    ])
    .unwrap();
    tx.commit().unwrap();
}

fn single(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let b = builder();
    let mut group = c.benchmark_group("register");
    group.measurement_time(Duration::from_secs(5));

    // A fresh system every 10,000 registrations: the figure is for a store holding 0–10k tasks,
    // not for whatever size criterion's iteration count would grow it to.
    group.bench_function("ffi_memory", |bench| {
        bench.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let chunk = left.min(10_000);
                let memory = open(":memory:", 0);
                let start = std::time::Instant::now();
                for _ in 0..chunk {
                    register_one(memory, b);
                }
                total += start.elapsed();
                ok(btb_system_close(memory));
                left -= chunk;
            }
            total
        })
    });

    for (durability, sync, label) in [(0u32, "FULL", "full"), (1, "NORMAL", "normal")] {
        let mut conn = raw_connection(&dir.path().join(format!("raw-{label}.sqlite3")), sync);
        let mut seq = 0;
        group.bench_function(format!("raw_insert_commit_{label}"), |bench| {
            bench.iter(|| raw_insert(&mut conn, &mut seq))
        });
        let path = dir.path().join(format!("btb-{label}.sqlite3"));
        let system = open(path.to_str().unwrap(), durability);
        group.bench_function(format!("ffi_file_{label}"), |bench| {
            bench.iter(|| register_one(system, b))
        });
        ok(btb_system_close(system));
    }
    group.finish();
    ok(btb_free(b));
}

fn ten_thousand(c: &mut Criterion) {
    let b = builder();
    let mut group = c.benchmark_group("register_10k");
    group.sample_size(10);
    group.bench_function("ffi_memory", |bench| {
        bench.iter(|| {
            let system = open(":memory:", 0);
            for _ in 0..10_000 {
                register_one(system, b);
            }
            ok(btb_system_close(system));
        })
    });
    group.finish();
    ok(btb_free(b));
}

criterion_group!(benches, single, ten_thousand);
criterion_main!(benches);
