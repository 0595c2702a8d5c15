//! Uninstalling an app (SPEC §10 `btbctl uninstall`): what remains of it on disk once every task
//! is unregistered — the store with SQLite's files beside it, and the control socket's files —
//! is removed. A running broker does it itself (`System::uninstall`); without one, btbctl does
//! it with [`uninstall_store`].

use std::io;
use std::path::{Path, PathBuf};

use crate::policy::Durability;
use crate::store::{Store, StoreLocation};
use crate::{Error, Result};

/// `path` with `suffix` appended to its last component.
fn with(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The files of the store at `path`: the database, SQLite's write-ahead log, shared memory and
/// rollback journal, and btb's notes beside it (named after the canonical path): its lock and
/// where its broker listens.
fn store_files(path: &Path, canonical: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = ["", "-wal", "-shm", "-journal"]
        .iter()
        .map(|s| with(path, s))
        .collect();
    files.push(with(canonical, ".lock"));
    files.push(crate::socket_note::note_path(&canonical.to_string_lossy()));
    files
}

/// The directories beside the store at `path`: the run files of clients (`.runs`, by the
/// canonical path) and the records of live exec hosts (`.hosts`).
fn store_dirs(path: &Path, canonical: &Path) -> [PathBuf; 2] {
    [
        crate::runfile::dir(&canonical.to_string_lossy()),
        with(path, ".hosts"),
    ]
}

/// Removes the store at `path` and the files and directories beside it; one already gone is no
/// error.
pub fn remove_store_files(path: &Path) -> Result<()> {
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    for dir in store_dirs(path, &canonical) {
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(Error::store(
                    &dir.display().to_string(),
                    format!("cannot remove it: {e}"),
                ));
            }
            _ => {}
        }
    }
    for file in store_files(path, &canonical) {
        remove(&file)?;
    }
    Ok(())
}

/// Removes the control socket of `app_id` and its lock file. A broker that still listens keeps
/// its descriptor, but no process can reach it by the path any more.
pub fn remove_control_socket(app_id: &str) -> Result<()> {
    let socket = crate::control::socket_path(app_id)?;
    remove(&socket)?;
    let mut lock = socket.into_os_string();
    lock.push(".lock");
    remove(Path::new(&lock))
}

fn remove(file: &Path) -> Result<()> {
    match std::fs::remove_file(file) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::store(
            &file.display().to_string(),
            format!("cannot remove it: {e}"),
        )),
    }
}

/// Uninstalls an app whose broker does not run: unregisters every task of the store at `path`
/// (holding its lock, as a broker would), then removes the store and the control socket's files.
/// Returns how many tasks were registered. A store another process holds is an error (its broker
/// is asked instead).
pub fn uninstall_store(path: &Path, app_id: &str) -> Result<usize> {
    let count = {
        let mut store = Store::open(
            &StoreLocation::File(path.to_owned()),
            app_id,
            Durability::Full,
        )?;
        let tasks = store.load()?;
        for t in &tasks {
            store.delete(&t.record.task_id)?;
        }
        tasks.len()
    };
    remove_store_files(path)?;
    remove_control_socket(app_id)?;
    Ok(count)
}
