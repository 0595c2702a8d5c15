//! Run files (SPEC §11): how a run handed to a client process outlives its broker without running
//! twice at once. The client that runs it holds `<store>.runs/<instance id>.<pid>` locked
//! (`flock`) from before its hello until the run has said its last word, and writes that last
//! word — the run's final frames of the instance protocol (output, retry, failure, `Finished`) —
//! into the file before it sends them. The kernel drops the lock however the client ends.
//!
//! A broker that opens the store after one died ([`probe`]) tells from these files whether a run
//! that the dead broker started still runs in a client (a file is locked: the task counts as
//! running until it is not), ended there (its last word is in the file: recorded as the client
//! said), or is gone (recorded as cut off by the broker's death). The live broker removes a run's
//! files once it has heard its end.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};
use uuid::Uuid;

/// The directory of a store's run files (`store` canonical, as clients and brokers both name it).
pub(crate) fn dir(store: &str) -> PathBuf {
    PathBuf::from(format!("{store}.runs"))
}

/// A run file held by the client process that runs the instance.
pub(crate) struct RunFile {
    file: File,
    path: PathBuf,
}

impl RunFile {
    /// Creates and locks this process's file for `instance_id`, before it says hello for the run.
    pub(crate) fn claim(store: &str, instance_id: Uuid) -> std::io::Result<RunFile> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let dir = dir(store);
        let path = path(&dir, instance_id, std::process::id());
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&path)
        };
        // The directory is made once, by the first run that finds it missing (not on every run).
        let file = match open() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)?;
                open()?
            }
            other => other?,
        };
        // Our own new file: only a broker probing it holds it, and only for a moment.
        flock(&file, FlockOperation::LockExclusive)?;
        Ok(RunFile { file, path })
    }

    /// Writes the run's last word (encoded frames) before it is sent: a broker that dies before
    /// it hears them finds them here. Not synced: the client process outliving its broker is
    /// what this is for; a machine crash ends both.
    pub(crate) fn last_word(&mut self, frames: &[u8]) {
        let written = self
            .file
            .rewind()
            .and_then(|()| self.file.set_len(0))
            .and_then(|()| self.file.write_all(frames));
        if let Err(e) = written {
            log::warn!(target: "btb", "cannot write the end of the run to {}: {e}", self.path.display());
        }
    }

    /// The run was never started here (not welcomed): nothing to find.
    pub(crate) fn discard(file: Option<RunFile>) {
        if let Some(file) = file {
            let _ = std::fs::remove_file(&file.path);
        }
    }
}

/// What a broker finds of a run in the run files.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// No file: no client process ran it (or its end was recorded).
    Nothing,
    /// A client process still holds it: the run goes on there.
    Running,
    /// Its client let go of it; the last word it wrote (empty if it wrote none: it died, or
    /// was never welcomed).
    Ended(Vec<u8>),
}

/// Looks for `instance_id`'s run files in `dir`; those let go of are read (the first with a last
/// word wins). They are not removed: the caller removes them once what it found is committed
/// ([`sweep`]) — a broker that dies before that finds them again.
pub(crate) fn probe(dir: &Path, instance_id: Uuid) -> Found {
    let prefix = format!("{instance_id}.");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Found::Nothing;
    };
    let mut found = Found::Nothing;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_str().is_some_and(|n| n.starts_with(&prefix)) {
            continue;
        }
        let path = entry.path();
        let Ok(mut file) = File::open(&path) else {
            continue; // removed meanwhile
        };
        if flock(&file, FlockOperation::NonBlockingLockShared).is_err() {
            found = Found::Running;
            continue;
        }
        let mut word = Vec::new();
        let _ = file.read_to_end(&mut word);
        match &found {
            Found::Running => {}
            Found::Ended(w) if !w.is_empty() => {}
            _ => found = Found::Ended(word),
        }
    }
    found
}

/// The run file of `instance_id` in client process `pid`.
pub(crate) fn path(dir: &Path, instance_id: Uuid, pid: u32) -> PathBuf {
    dir.join(format!("{instance_id}.{pid}"))
}

/// Removes the run file of `instance_id` in client process `pid`.
pub(crate) fn remove(dir: &Path, instance_id: Uuid, pid: u32) {
    let _ = std::fs::remove_file(path(dir, instance_id, pid));
}

/// Removes the files of runs no broker waits for (their records were written, or their runs
/// never started) that no process holds.
pub(crate) fn sweep(dir: &Path, live: &dyn Fn(Uuid) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.split('.').next())
            .and_then(|id| Uuid::parse_str(id).ok())
        else {
            continue;
        };
        if live(id) {
            continue;
        }
        if let Ok(file) = File::open(entry.path())
            && flock(&file, FlockOperation::NonBlockingLockShared).is_ok()
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
