//! Reading the files that options name (a TZif file, a sysfs attribute): only regular files, so
//! that a FIFO or a device given as a path never blocks a system (SPEC §11). Below every module
//! that reads such a file (`platform/`, `calendar.rs`).

/// Reads a file the platform options name (a TZif file, a sysfs attribute) — only when it is a
/// regular file: opened non-blocking and checked before reading, so that a FIFO or a device
/// given as a path can never block the system (opening a FIFO for reading waits for a writer).
pub(crate) fn read_regular(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}
