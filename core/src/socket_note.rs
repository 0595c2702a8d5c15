//! Where a store's broker listens, noted beside the store (`<canonical store>.socket`): a process
//! that finds the store held and no broker at *its* socket path reads the note, and when the
//! broker listens elsewhere — the two processes see different `XDG_RUNTIME_DIR`s (§10) — it fails
//! at once, naming both places, instead of waiting for a broker it can never reach.

use std::path::{Path, PathBuf};

/// The note of the store whose canonical path is `canonical_store`.
pub(crate) fn note_path(canonical_store: &str) -> PathBuf {
    PathBuf::from(format!("{canonical_store}.socket"))
}

/// Notes the socket the broker of `canonical_store` listens on (or, with `None`, that it
/// listens on none). Best effort: without the note a client waits as it always did.
pub(crate) fn write(canonical_store: &str, socket: Option<&Path>) {
    let path = note_path(canonical_store);
    let written = match socket {
        Some(socket) => {
            let tmp = PathBuf::from(format!("{}.tmp", path.display()));
            std::fs::write(&tmp, socket.as_os_str().as_encoded_bytes())
                .and_then(|()| std::fs::rename(&tmp, &path))
        }
        None => std::fs::remove_file(&path).or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(e)
            }
        }),
    };
    if let Err(e) = written {
        log::debug!(target: "btb", "cannot note the control socket beside the store in {}: {e}", path.display());
    }
}

/// The socket the broker of `canonical_store` noted, when it differs from `ours`.
pub(crate) fn elsewhere(canonical_store: &str, ours: &Path) -> Option<PathBuf> {
    let noted = std::fs::read(note_path(canonical_store)).ok()?;
    let noted = PathBuf::from(String::from_utf8(noted).ok()?);
    (noted != ours).then_some(noted)
}
