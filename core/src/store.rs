//! The embedded store (SPEC §7): one SQLite file per app id, WAL, a schema version with forward
//! migrations, `synchronous=FULL` by default. A corrupt, foreign or newer-schema file is an error
//! naming its path and is never written to. One system at a time holds a store (an exclusive POSIX
//! record lock on the database file, `lockfile.rs`), so a second system — through any path to the
//! file, in any process — gets a clear error instead of a second scheduler.

use std::fs::DirBuilder;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::lockfile::{FileLock, LockError};
use crate::model::{
    CancellationReason, RetryPolicy, RunRecord, SystemConditionType, TaskGroup, TaskOutcome,
    TaskRecord, TaskTrigger, Trigger, TriggerKind,
};
use crate::policy::Durability;

/// Where a system keeps its registrations.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreLocation {
    /// `$XDG_STATE_HOME/btb/<app_id>/btb.sqlite3` (`~/.local/state` when unset).
    #[default]
    Default,
    /// Ephemeral, in memory (`":memory:"`).
    Memory,
    /// This SQLite file.
    File(PathBuf),
}

impl StoreLocation {
    /// `":memory:"` → memory, anything else → that file.
    pub fn parse(text: &str) -> StoreLocation {
        if text == ":memory:" {
            StoreLocation::Memory
        } else {
            StoreLocation::File(PathBuf::from(text))
        }
    }

    /// The default file for an app id. A relative `XDG_STATE_HOME` is ignored, as the XDG Base
    /// Directory spec requires (the store would otherwise move with the working directory).
    pub fn default_path(app_id: &str) -> Result<PathBuf> {
        let xdg = std::env::var_os("XDG_STATE_HOME").filter(|v| Path::new(v).is_absolute());
        let base = match xdg {
            Some(dir) => PathBuf::from(dir),
            None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
                Some(home) => PathBuf::from(home).join(".local/state"),
                None => {
                    return Err(Error::new(
                        crate::ErrorKind::Store,
                        "neither XDG_STATE_HOME nor HOME is set: cannot place the default store; pass a store path",
                    ));
                }
            },
        };
        Ok(base.join("btb").join(app_id).join("btb.sqlite3"))
    }
}

/// One change to a registration's scheduling state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleChange {
    NextDue(Uuid, Option<i64>),
    Spent(Uuid),
    /// A latched fire set (`Some`) or cleared (`None`).
    Pending(Uuid, Option<Latched>),
    /// A run started: kept until its record is written, so that a run cut off by the broker's
    /// death is found at the next open (SPEC §11).
    Started(RunStart),
    /// A run that started did not run after all (it waits for a handler, SPEC §12).
    Unstarted(Uuid),
    /// A run's start marker marked parked (`true`: it waits for a handler, its fire latched
    /// again, and will be handed under the same instance id without a new marker) or handed
    /// (`false`: it left the wait). Recovery tells a parked run that was never handed from one
    /// that was by its run files (`broker/retry.rs`).
    Parked(Uuid, bool),
    /// A retry latched unless a fire is latched already (that one runs instead, SPEC §12).
    RetryUnlessPending(Uuid, Latched),
}

/// A latched fire as stored: its trigger details (JSON), which attempt it is, and, for a retry,
/// the instant before which it does not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latched {
    pub details: Option<String>,
    pub attempt: u32,
    pub not_before: Option<i64>,
}

/// A run that started and has no record yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunStart {
    pub instance_id: Uuid,
    pub task_id: Uuid,
    pub attempt: u32,
    pub started_ms: i64,
    pub trigger_kind: TriggerKind,
    pub trigger_details: Option<String>,
    /// It waits for a handler (`ScheduleChange::Parked`), its fire latched again.
    pub parked: bool,
}

/// The newest schema this build knows.
pub const SCHEMA_VERSION: i64 = 5;

/// Forward migrations: `MIGRATIONS[n]` takes a store from version `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE task_groups (
    id   TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL
);
CREATE TABLE registrations (
    seq                      INTEGER PRIMARY KEY,
    task_id                  BLOB NOT NULL UNIQUE,
    name                     TEXT NOT NULL,
    entry_point              TEXT,
    group_id                 TEXT REFERENCES task_groups(id),
    cancel_on_condition_loss INTEGER NOT NULL,
    is_network_requested     INTEGER NOT NULL,
    trigger                  TEXT NOT NULL,
    conditions               TEXT NOT NULL,
    registered_at_ms         INTEGER NOT NULL,
    next_due_ms              INTEGER,
    pending_fire             INTEGER NOT NULL DEFAULT 0,
    spent                    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX registrations_by_group ON registrations(group_id) WHERE group_id IS NOT NULL;
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
"#,
    r#"
ALTER TABLE registrations ADD COLUMN pending_details TEXT;
CREATE TABLE run_history (
    seq             INTEGER PRIMARY KEY,
    instance_id     BLOB NOT NULL UNIQUE,
    task_id         BLOB NOT NULL,
    trigger_kind    INTEGER NOT NULL,
    trigger_details TEXT,
    started_ms      INTEGER NOT NULL,
    ended_ms        INTEGER NOT NULL,
    outcome         INTEGER NOT NULL,
    reason          INTEGER,
    message         TEXT,
    last_progress   INTEGER NOT NULL
);
CREATE INDEX run_history_by_task ON run_history(task_id, seq);
"#,
    r#"
ALTER TABLE run_history ADD COLUMN stdout TEXT;
ALTER TABLE run_history ADD COLUMN stderr TEXT;
"#,
    r#"
ALTER TABLE registrations ADD COLUMN retry_policy TEXT;
ALTER TABLE registrations ADD COLUMN pending_attempt INTEGER NOT NULL DEFAULT 1;
ALTER TABLE registrations ADD COLUMN pending_not_before INTEGER;
ALTER TABLE run_history ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1;
ALTER TABLE run_history ADD COLUMN retry_at_ms INTEGER;
ALTER TABLE run_history ADD COLUMN output TEXT;
CREATE TABLE runs_started (
    instance_id     BLOB PRIMARY KEY NOT NULL,
    task_id         BLOB NOT NULL,
    attempt         INTEGER NOT NULL,
    started_ms      INTEGER NOT NULL,
    trigger_kind    INTEGER NOT NULL,
    trigger_details TEXT
);
"#,
    r#"
ALTER TABLE runs_started ADD COLUMN parked INTEGER NOT NULL DEFAULT 0;
"#,
];

/// A record as loaded: the registration, its spent flag and its latched fire.
#[derive(Debug, Clone)]
pub struct StoredTask {
    pub record: TaskRecord,
    pub spent: bool,
    /// A latched fire waiting for its conditions (or, a retry, for its time).
    pub pending: Option<Latched>,
}

pub struct Store {
    conn: Connection,
    path: String,
    // Held for the store's lifetime (declared after `conn`, so dropped after it).
    _lock: Option<FileLock>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// A store file whose lock another system holds (its broker may serve this process as a client).
#[derive(Debug)]
pub(crate) struct Held {
    /// The store's canonical path (what its broker names in its hello).
    pub(crate) canonical: PathBuf,
    /// The error `open` gives for it.
    pub(crate) error: Error,
}

impl Store {
    /// Opens (creating if needed) the store for `app_id`.
    pub fn open(location: &StoreLocation, app_id: &str, durability: Durability) -> Result<Store> {
        Self::try_open(location, app_id, durability)?.map_err(|held| held.error)
    }

    /// Opens the store, or says that another system holds it.
    pub(crate) fn try_open(
        location: &StoreLocation,
        app_id: &str,
        durability: Durability,
    ) -> Result<std::result::Result<Store, Held>> {
        Ok(Ok(match location {
            StoreLocation::Memory => {
                let conn = Connection::open_in_memory().map_err(|e| Error::store(":memory:", e))?;
                let mut store = Store {
                    conn,
                    path: ":memory:".into(),
                    _lock: None,
                };
                store.prepare(durability)?;
                store
            }
            StoreLocation::Default => {
                let path = StoreLocation::default_path(app_id)?;
                return Self::open_file(&path, durability);
            }
            StoreLocation::File(path) => return Self::open_file(path, durability),
        }))
    }

    fn open_file(path: &Path, durability: Durability) -> Result<std::result::Result<Store, Held>> {
        let shown = path.display().to_string();
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.exists() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| {
                    Error::store(
                        &shown,
                        format!("cannot create directory {}: {e}", dir.display()),
                    )
                })?;
        }
        // SQLite creates `-wal` and `-shm` files beside the store: say so now rather than let a
        // read-only directory surface later as an unreadable database.
        if let Err(e) = rustix::fs::access(dir, rustix::fs::Access::WRITE_OK) {
            return Err(Error::store(
                &shown,
                format!(
                    "cannot be used: its directory {} is not writable ({}); btb keeps its \
                     write-ahead log beside the store",
                    dir.display(),
                    std::io::Error::from(e)
                ),
            ));
        }
        // Create the file (0600) if missing; read its head and link count through this descriptor.
        let file = crate::lockfile::open_private(path).map_err(|e| {
            Error::store(
                &shown,
                format!("cannot be opened for reading and writing: {e}"),
            )
        })?;
        // SQLite takes a 1-byte file for an empty database (a work-around in its unix VFS) and would
        // overwrite it: a non-empty file must start with the SQLite header.
        let mut head = Vec::with_capacity(16);
        (&file)
            .take(16)
            .read_to_end(&mut head)
            .map_err(|e| Error::store(&shown, format!("cannot read: {e}")))?;
        if !head.is_empty() && head != b"SQLite format 3\0" {
            return Err(Error::store(
                &shown,
                "is corrupt or not a SQLite database (no SQLite header); left untouched",
            ));
        }
        // The lock and SQLite's write-ahead log are found by path: every path to the store must
        // lead to one name. Symlinks do (the canonical path); hard links cannot, and SQLite warns
        // that they corrupt databases (its WAL is named after the path used).
        let links = file
            .metadata()
            .map_err(|e| Error::store(&shown, format!("cannot inspect: {e}")))?
            .nlink();
        if links > 1 {
            return Err(Error::store(
                &shown,
                format!(
                    "has {links} hard links; a store must have one (SQLite names its write-ahead \
                     log after the path, so two names for one database corrupt it): remove the \
                     other links or copy the file; left untouched"
                ),
            ));
        }
        drop(file);
        let canonical = std::fs::canonicalize(path)
            .map_err(|e| Error::store(&shown, format!("cannot resolve its path: {e}")))?;
        let mut lock_path = canonical.clone().into_os_string();
        lock_path.push(".lock");
        let lock = match FileLock::open(Path::new(&lock_path)) {
            Ok(lock) => lock,
            Err(held @ LockError::Held { .. }) => {
                return Ok(Err(Held {
                    error: Error::store(
                        &shown,
                        format!(
                            "is in use by another btb system{}; one system at a time may open a \
                             store (close the other one, or give this one another store)",
                            held.holder()
                        ),
                    ),
                    canonical,
                }));
            }
            Err(LockError::Io(e)) => {
                return Err(Error::store(
                    &shown,
                    format!("cannot lock {}: {e}", Path::new(&lock_path).display()),
                ));
            }
        };
        let conn = Connection::open_with_flags(
            &canonical,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| Error::store(&shown, format!("cannot open: {e}")))?;
        let mut store = Store {
            conn,
            path: shown,
            _lock: Some(lock),
        };
        store.prepare(durability)?;
        Ok(Ok(store))
    }

    /// Opens an existing store to read it while no broker holds it (`btbctl` without a broker):
    /// read-only, without the lock, changing nothing. `NotFound` when there is no store at `path`;
    /// `STORE` for one of another schema version than this build's (the app migrates it).
    pub fn open_read_only(path: &Path) -> Result<Store> {
        let shown = path.display().to_string();
        if !path.exists() {
            return Err(Error::new(
                crate::ErrorKind::NotFound,
                format!("no btb store at {shown}: nothing was registered there"),
            ));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| Error::store(&shown, format!("cannot open: {e}")))?;
        let store = Store {
            conn,
            path: shown.clone(),
            _lock: None,
        };
        let version: i64 = store
            .conn
            .query_row("SELECT version FROM btb_schema", [], |r| r.get(0))
            .map_err(|e| store.unreadable(e))?;
        if version != SCHEMA_VERSION {
            return Err(Error::store(
                &shown,
                format!(
                    "has schema version {version}; this btb reads {SCHEMA_VERSION} (open the store \
                     with the app, or with a btb of its version)"
                ),
            ));
        }
        Ok(store)
    }

    /// What a failed first read of the file means: busy (another process holds SQLite's lock),
    /// not writable, or really not a database.
    fn unreadable(&self, e: rusqlite::Error) -> Error {
        use rusqlite::ErrorCode as C;
        let code = e.sqlite_error_code();
        let why = match code {
            Some(C::DatabaseBusy | C::DatabaseLocked) => {
                // SQLite's locks are POSIX locks on the database file: ask the kernel who holds one.
                let pid = std::fs::File::open(&self.path)
                    .ok()
                    .and_then(|f| crate::lockfile::holder(&f, 0, 0));
                format!(
                    "is locked by another process{} that is not a btb broker of it ({e}); \
                     left untouched",
                    pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
                )
            }
            Some(C::CannotOpen | C::ReadOnly | C::PermissionDenied) => {
                format!("cannot be opened for writing ({e}); left untouched")
            }
            Some(C::NotADatabase | C::DatabaseCorrupt) => {
                format!("is corrupt or not a SQLite database ({e}); left untouched")
            }
            _ => format!("cannot be read ({e}); left untouched"),
        };
        Error::store(&self.path, why)
    }

    /// Checks what the file is before changing anything, then sets pragmas and migrates.
    fn prepare(&mut self, durability: Durability) -> Result<()> {
        let path = self.path.clone();
        let tables: Vec<String> = (|| -> rusqlite::Result<Vec<String>> {
            let mut stmt = self
                .conn
                .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")?;
            stmt.query_map([], |r| r.get(0))?.collect()
        })()
        .map_err(|e| self.unreadable(e))?;
        let version = if tables.iter().any(|t| t == "btb_schema") {
            self.conn
                .query_row("SELECT version FROM btb_schema", [], |r| r.get::<_, i64>(0))
                .map_err(|e| {
                    Error::store(
                        &path,
                        format!("has an unreadable schema version ({e}); left untouched"),
                    )
                })?
        } else if tables.is_empty() {
            0
        } else {
            return Err(Error::store(
                &path,
                "is a SQLite database but not a btb store (no btb_schema table); left untouched",
            ));
        };
        if version > SCHEMA_VERSION {
            return Err(Error::store(
                &path,
                format!(
                    "has schema version {version}, newer than this btb knows ({SCHEMA_VERSION}); \
                     left untouched — use a newer btb"
                ),
            ));
        }
        let sync = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        let pragmas = format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA foreign_keys = ON;"
        );
        self.conn
            .execute_batch(&pragmas)
            .map_err(|e| Error::store(&path, format!("cannot configure: {e}")))?;
        self.conn
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| Error::store(&path, e))?;
        if version < SCHEMA_VERSION {
            self.migrate(version)?;
        }
        Ok(())
    }

    fn migrate(&mut self, from: i64) -> Result<()> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction()
            .map_err(|e| Error::store(&path, format!("cannot migrate: {e}")))?;
        if from == 0 {
            tx.execute_batch(
                "CREATE TABLE IF NOT EXISTS btb_schema (version INTEGER NOT NULL);
                 INSERT INTO btb_schema SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM btb_schema);",
            )
            .map_err(|e| Error::store(&path, format!("cannot migrate: {e}")))?;
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
            tx.execute_batch(sql)
                .and_then(|_| tx.execute("UPDATE btb_schema SET version = ?1", [i as i64 + 1]))
                .map_err(|e| {
                    Error::store(&path, format!("cannot migrate to schema {}: {e}", i + 1))
                })?;
        }
        tx.commit()
            .map_err(|e| Error::store(&path, format!("cannot migrate: {e}")))
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::store(&self.path, format!("cannot {what}: {e}"))
    }

    /// Inserts a registration (creating its group if new) and removes `replaced`, in one
    /// transaction. Returns after the commit.
    pub fn insert(&mut self, record: &TaskRecord, replaced: &[Uuid]) -> Result<()> {
        let trigger = serde_json::to_string(&record.trigger.described())
            .map_err(|e| self.err("encode trigger", e))?;
        let conditions: Vec<u32> = record.conditions.iter().map(|c| *c as u32).collect();
        let conditions =
            serde_json::to_string(&conditions).map_err(|e| self.err("encode conditions", e))?;
        let retry = record
            .retry_policy
            .map(|p| serde_json::to_string(&p))
            .transpose()
            .map_err(|e| self.err("encode the retry policy", e))?;
        let path = self.path.clone();
        let fail =
            |e: rusqlite::Error| Error::store(&path, format!("cannot write registration: {e}"));
        write_tx(&self.conn, |tx| {
            for id in replaced {
                delete_in(tx, id)?;
            }
            if let Some(group) = &record.task_group {
                tx.prepare_cached(
                    "INSERT INTO task_groups (id, name) VALUES (?1, ?2) ON CONFLICT(id) DO NOTHING",
                )
                .and_then(|mut s| s.execute(params![group.id, group.name]))?;
            }
            tx.prepare_cached(
                "INSERT INTO registrations (task_id, seq, name, entry_point, group_id,
                 cancel_on_condition_loss, is_network_requested, trigger, conditions,
                 registered_at_ms, next_due_ms, retry_policy)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    record.task_id.as_bytes(),
                    record.seq,
                    record.name,
                    record.task_entry_point,
                    record.task_group.as_ref().map(|g| &g.id),
                    record.cancel_on_condition_loss,
                    record.is_network_requested,
                    trigger,
                    conditions,
                    record.registered_at_ms,
                    record.next_due_ms,
                    retry,
                ])
            })?;
            Ok(())
        })
        .map_err(fail)
    }

    /// Removes a registration (and its group when it was the group's last). `false` if absent.
    pub fn delete(&mut self, task_id: &Uuid) -> Result<bool> {
        let path = self.path.clone();
        let fail =
            |e: rusqlite::Error| Error::store(&path, format!("cannot remove registration: {e}"));
        write_tx(&self.conn, |tx| delete_in(tx, task_id)).map_err(fail)
    }

    /// Every registration in registration order.
    pub fn load(&self) -> Result<Vec<StoredTask>> {
        let fail = |e: rusqlite::Error| self.err("read registrations", e);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT r.task_id, r.seq, r.name, r.entry_point, r.group_id, g.name,
                        r.cancel_on_condition_loss, r.is_network_requested, r.trigger, r.conditions,
                        r.registered_at_ms, r.next_due_ms, r.spent, r.pending_fire, r.pending_details,
                        r.retry_policy, r.pending_attempt, r.pending_not_before
                 FROM registrations r LEFT JOIN task_groups g ON g.id = r.group_id
                 ORDER BY r.seq",
            )
            .map_err(fail)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, bool>(6)?,
                    r.get::<_, bool>(7)?,
                    r.get::<_, String>(8)?,
                    r.get::<_, String>(9)?,
                    r.get::<_, i64>(10)?,
                    r.get::<_, Option<i64>>(11)?,
                    r.get::<_, bool>(12)?,
                    r.get::<_, bool>(13)?,
                    (
                        r.get::<_, Option<String>>(14)?,
                        r.get::<_, Option<String>>(15)?,
                        r.get::<_, u32>(16)?,
                        r.get::<_, Option<i64>>(17)?,
                    ),
                ))
            })
            .map_err(fail)?;
        let mut out = Vec::new();
        for row in rows {
            let (
                id,
                seq,
                name,
                ep,
                gid,
                gname,
                col,
                net,
                trig,
                conds,
                at,
                due,
                spent,
                pending,
                (details, retry, attempt, not_before),
            ) = row.map_err(fail)?;
            let retry_policy = retry
                .map(|p| serde_json::from_str::<RetryPolicy>(&p))
                .transpose()
                .map_err(|e| self.err("decode a retry policy", e))?;
            let task_id = Uuid::from_slice(&id).map_err(|e| self.err("read a task id", e))?;
            let trigger = serde_json::from_str::<Trigger>(&trig)
                .map_err(|e| e.to_string())
                .and_then(|t| TaskTrigger::from_trigger(&t).map_err(|e| e.to_string()))
                .map_err(|e| self.err(&format!("decode the trigger of task {task_id}"), e))?;
            let raw: Vec<u32> = serde_json::from_str(&conds)
                .map_err(|e| self.err(&format!("decode the conditions of task {task_id}"), e))?;
            let conditions = raw
                .into_iter()
                .map(SystemConditionType::from_u32)
                .collect::<Result<Vec<_>>>()
                .map_err(|e| self.err(&format!("decode the conditions of task {task_id}"), e))?;
            out.push(StoredTask {
                record: TaskRecord {
                    task_id,
                    name,
                    task_entry_point: ep,
                    task_group: gid.map(|id| TaskGroup {
                        name: gname.unwrap_or_else(|| id.clone()),
                        id,
                    }),
                    cancel_on_condition_loss: col,
                    is_network_requested: net,
                    trigger,
                    conditions,
                    registered_at_ms: at,
                    next_due_ms: due,
                    seq,
                    retry_policy,
                },
                spent,
                pending: pending.then_some(Latched {
                    details,
                    attempt: attempt.max(1),
                    not_before,
                }),
            });
        }
        Ok(out)
    }

    /// Applies scheduler changes in one transaction: next due times, spent flags, latched fires
    /// (`Some(details)` sets, `None` clears).
    pub fn update_schedule(&mut self, changes: &[ScheduleChange]) -> Result<()> {
        self.write_batch(changes, &[])
    }

    /// Records a finished run, keeping the last `limit` runs of its registration.
    pub fn insert_run(&mut self, run: &RunRecord, limit: u32) -> Result<()> {
        self.write_batch(&[], &[(run.clone(), limit)])
    }

    /// Scheduler changes and run records (each with its history limit) in one transaction: one
    /// flush for all of them.
    pub fn write_batch(
        &mut self,
        changes: &[ScheduleChange],
        runs: &[(RunRecord, u32)],
    ) -> Result<()> {
        if changes.is_empty() && runs.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let fail = |e: rusqlite::Error| Error::store(&path, format!("cannot write: {e}"));
        write_tx(&self.conn, |tx| {
            for change in changes {
                schedule_in(tx, change)?;
            }
            for (run, limit) in runs {
                run_in(tx, run, *limit)?;
            }
            Ok(())
        })
        .map_err(fail)
    }

    /// The outcome of each registration's last recorded run (one query for all: `btbctl list`).
    pub fn last_outcomes(&self) -> Result<std::collections::HashMap<Uuid, TaskOutcome>> {
        let fail = |e: rusqlite::Error| self.err("read the run history", e);
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT task_id, outcome FROM run_history
                 WHERE seq IN (SELECT MAX(seq) FROM run_history GROUP BY task_id)",
            )
            .map_err(fail)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, u32>(1)?)))
            .map_err(fail)?;
        let mut out = std::collections::HashMap::new();
        for row in rows {
            let (id, outcome) = row.map_err(fail)?;
            if let (Ok(id), Ok(outcome)) = (Uuid::from_slice(&id), TaskOutcome::from_u32(outcome)) {
                out.insert(id, outcome);
            }
        }
        Ok(out)
    }

    /// The recorded runs of a task, oldest first.
    pub fn history(&self, task_id: &Uuid) -> Result<Vec<RunRecord>> {
        let fail = |e: rusqlite::Error| self.err("read the run history", e);
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT instance_id, trigger_kind, trigger_details, started_ms, ended_ms, outcome,
                        reason, message, last_progress, stdout, stderr, attempt, retry_at_ms, output
                 FROM run_history WHERE task_id = ?1 ORDER BY seq",
            )
            .map_err(fail)?;
        let rows = stmt
            .query_map([task_id.as_bytes()], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, u32>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, u32>(5)?,
                    r.get::<_, Option<u32>>(6)?,
                    r.get::<_, Option<String>>(7)?,
                    r.get::<_, u32>(8)?,
                    (
                        r.get::<_, Option<String>>(9)?,
                        r.get::<_, Option<String>>(10)?,
                        r.get::<_, u32>(11)?,
                        r.get::<_, Option<i64>>(12)?,
                        r.get::<_, Option<String>>(13)?,
                    ),
                ))
            })
            .map_err(fail)?;
        let mut out = Vec::new();
        for row in rows {
            let (
                id,
                kind,
                details,
                started,
                ended,
                outcome,
                reason,
                message,
                progress,
                (stdout, stderr, attempt, retry_at_ms, output),
            ) = row.map_err(fail)?;
            let bad = |e: Error| self.err("decode the run history", e);
            out.push(RunRecord {
                instance_id: Uuid::from_slice(&id)
                    .map_err(|e| self.err("decode the run history", e))?,
                task_id: *task_id,
                trigger_kind: TriggerKind::from_u32(kind).map_err(bad)?,
                trigger_details: details,
                started_ms: started,
                ended_ms: ended,
                outcome: TaskOutcome::from_u32(outcome).map_err(bad)?,
                reason: reason
                    .map(CancellationReason::from_u32)
                    .transpose()
                    .map_err(bad)?,
                message,
                last_progress: progress,
                stdout,
                stderr,
                attempt,
                retry_at_ms,
                output,
            });
        }
        Ok(out)
    }

    /// Runs that started and have no record: the broker that ran them died during them.
    pub fn started_runs(&self) -> Result<Vec<RunStart>> {
        let fail = |e: rusqlite::Error| self.err("read the runs that started", e);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT instance_id, task_id, attempt, started_ms, trigger_kind, trigger_details,
                     parked
                 FROM runs_started ORDER BY started_ms",
            )
            .map_err(fail)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, u32>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, u32>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, bool>(6)?,
                ))
            })
            .map_err(fail)?;
        let mut out = Vec::new();
        for row in rows {
            let (instance, task, attempt, started_ms, kind, trigger_details, parked) =
                row.map_err(fail)?;
            let bad = |e: String| self.err("decode a run that started", e);
            out.push(RunStart {
                instance_id: Uuid::from_slice(&instance).map_err(|e| bad(e.to_string()))?,
                task_id: Uuid::from_slice(&task).map_err(|e| bad(e.to_string()))?,
                attempt,
                started_ms,
                trigger_kind: TriggerKind::from_u32(kind).map_err(|e| bad(e.message().into()))?,
                trigger_details,
                parked,
            });
        }
        Ok(out)
    }

    pub fn get_meta(&self, key: &str) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.err("read metadata", e))
    }

    pub fn set_meta(&mut self, key: &str, value: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [key, value],
            )
            .map(|_| ())
            .map_err(|e| self.err("write metadata", e))
    }
}

/// Runs `body` in a write transaction and commits it; on any error rolls back. `BEGIN IMMEDIATE` /
/// `COMMIT` are cached statements: `Connection::transaction` re-parses them on every call, which
/// was a fifth of the cost of an in-memory registration.
fn write_tx<T>(
    conn: &Connection,
    body: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
    let result = body(conn).and_then(|value| {
        conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(value)
    });
    if result.is_err() && !conn.is_autocommit() {
        let _ = conn
            .prepare_cached("ROLLBACK")
            .and_then(|mut s| s.execute([]));
    }
    result
}

fn schedule_in(tx: &Connection, change: &ScheduleChange) -> rusqlite::Result<usize> {
    match change {
        ScheduleChange::NextDue(id, due) => tx
            .prepare_cached("UPDATE registrations SET next_due_ms = ?2 WHERE task_id = ?1")?
            .execute(params![id.as_bytes(), due]),
        ScheduleChange::Spent(id) => tx
            .prepare_cached("UPDATE registrations SET spent = 1 WHERE task_id = ?1")?
            .execute(params![id.as_bytes()]),
        ScheduleChange::Pending(id, Some(l)) => tx
            .prepare_cached(
                "UPDATE registrations SET pending_fire = 1, pending_details = ?2,
                     pending_attempt = ?3, pending_not_before = ?4 WHERE task_id = ?1",
            )?
            .execute(params![id.as_bytes(), l.details, l.attempt, l.not_before]),
        ScheduleChange::Pending(id, None) => tx
            .prepare_cached(
                "UPDATE registrations SET pending_fire = 0, pending_details = NULL,
                     pending_attempt = 1, pending_not_before = NULL WHERE task_id = ?1",
            )?
            .execute(params![id.as_bytes()]),
        ScheduleChange::RetryUnlessPending(id, l) => tx
            .prepare_cached(
                "UPDATE registrations SET pending_fire = 1, pending_details = ?2,
                     pending_attempt = ?3, pending_not_before = ?4
                 WHERE task_id = ?1 AND pending_fire = 0",
            )?
            .execute(params![id.as_bytes(), l.details, l.attempt, l.not_before]),
        ScheduleChange::Unstarted(id) => tx
            .prepare_cached("DELETE FROM runs_started WHERE instance_id = ?1")?
            .execute([id.as_bytes()]),
        ScheduleChange::Parked(id, parked) => tx
            .prepare_cached("UPDATE runs_started SET parked = ?2 WHERE instance_id = ?1")?
            .execute(params![id.as_bytes(), parked]),
        ScheduleChange::Started(r) => tx
            .prepare_cached(
                "INSERT OR REPLACE INTO runs_started
                     (instance_id, task_id, attempt, started_ms, trigger_kind, trigger_details,
                      parked)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                r.instance_id.as_bytes(),
                r.task_id.as_bytes(),
                r.attempt,
                r.started_ms,
                r.trigger_kind as u32,
                r.trigger_details,
                r.parked
            ]),
    }
}

/// Inserts a run record (only while its registration exists: a record queued before an
/// unregistration is not left behind) and keeps the last `limit` of its registration.
/// Keeps the last `?3` runs of task `?1` up to run `?2`.
///
/// `CAST(?1 AS BLOB)`, not `?1`, in the subquery: with a bare parameter compared to an indexed
/// column under ORDER BY … LIMIT, SQLite marks the statement to be prepared again at each new
/// binding (≈ 75,000 instructions, more than the rest of a run's write), which a cached statement
/// is meant to avoid; the cast keeps the same index search.
const TRIM_HISTORY: &str = "DELETE FROM run_history WHERE task_id = ?1 AND seq <= (
     SELECT seq FROM run_history WHERE task_id = CAST(?1 AS BLOB) AND seq <= ?2
     ORDER BY seq DESC LIMIT 1 OFFSET ?3)";

fn run_in(tx: &Connection, run: &RunRecord, limit: u32) -> rusqlite::Result<()> {
    let inserted = tx
        .prepare_cached(
            "INSERT INTO run_history (instance_id, task_id, trigger_kind, trigger_details,
                 started_ms, ended_ms, outcome, reason, message, last_progress, stdout, stderr,
                 attempt, retry_at_ms, output)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15
             WHERE EXISTS (SELECT 1 FROM registrations WHERE task_id = ?2)
             ON CONFLICT(instance_id) DO NOTHING",
        )?
        .execute(params![
            run.instance_id.as_bytes(),
            run.task_id.as_bytes(),
            run.trigger_kind as u32,
            run.trigger_details,
            run.started_ms,
            run.ended_ms,
            run.outcome as u32,
            run.reason.map(|r| r as u32),
            run.message,
            run.last_progress,
            run.stdout,
            run.stderr,
            run.attempt,
            run.retry_at_ms,
            run.output,
        ])?;
    // Its start marker goes with it: the run ended, whoever recorded it.
    tx.prepare_cached("DELETE FROM runs_started WHERE instance_id = ?1")?
        .execute([run.instance_id.as_bytes()])?;
    if inserted == 0 {
        return Ok(());
    }
    let seq = tx.last_insert_rowid();
    tx.prepare_cached(TRIM_HISTORY)?
        .execute(params![run.task_id.as_bytes(), seq, limit])?;
    Ok(())
}

fn delete_in(tx: &Connection, task_id: &Uuid) -> rusqlite::Result<bool> {
    let group: Option<Option<String>> = tx
        .prepare_cached("DELETE FROM registrations WHERE task_id = ?1 RETURNING group_id")?
        .query_row([task_id.as_bytes()], |r| r.get(0))
        .optional()?;
    let Some(group) = group else { return Ok(false) };
    tx.prepare_cached("DELETE FROM run_history WHERE task_id = ?1")?
        .execute([task_id.as_bytes()])?;
    tx.prepare_cached("DELETE FROM runs_started WHERE task_id = ?1")?
        .execute([task_id.as_bytes()])?;
    if let Some(gid) = group {
        tx.prepare_cached(
            "DELETE FROM task_groups WHERE id = ?1
             AND NOT EXISTS (SELECT 1 FROM registrations WHERE group_id = ?1)",
        )?
        .execute([gid])?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(task_id: Uuid, n: i64) -> RunRecord {
        RunRecord {
            instance_id: Uuid::new_v4(),
            task_id,
            trigger_kind: TriggerKind::Application,
            trigger_details: None,
            started_ms: n,
            ended_ms: n,
            outcome: TaskOutcome::Succeeded,
            reason: None,
            message: None,
            last_progress: 0,
            stdout: None,
            stderr: None,
            attempt: 1,
            retry_at_ms: None,
            output: None,
        }
    }

    /// The history is trimmed to its limit by a cached statement that SQLite does not prepare
    /// again for each run (it did, for each of them, before the cast in `TRIM_HISTORY`).
    #[test]
    fn trimming_the_history_keeps_its_prepared_statement() {
        let mut store =
            Store::open(&StoreLocation::Memory, "org.example.trim", Durability::Full).unwrap();
        let record = TaskRecord {
            task_id: Uuid::new_v4(),
            name: "trimmed".into(),
            task_entry_point: Some("app.Trim".into()),
            task_group: None,
            cancel_on_condition_loss: false,
            is_network_requested: false,
            trigger: TaskTrigger::Application { id: Uuid::new_v4() },
            conditions: Vec::new(),
            registered_at_ms: 0,
            next_due_ms: None,
            seq: 1,
            retry_policy: None,
        };
        store.insert(&record, &[]).unwrap();
        for n in 0..50 {
            store.insert_run(&run(record.task_id, n), 10).unwrap();
        }
        let kept = store.history(&record.task_id).unwrap();
        assert_eq!(
            kept.iter().map(|r| r.started_ms).collect::<Vec<_>>(),
            (40..50).collect::<Vec<_>>()
        );
        let reprepared = store
            .conn
            .prepare_cached(TRIM_HISTORY)
            .unwrap()
            .get_status(rusqlite::StatementStatus::RePrepare);
        assert_eq!(
            reprepared, 0,
            "the trimming statement was prepared again {reprepared} times"
        );
    }
}
