//! Tests that need a network namespace of their own: real netlink (routes, links, kobject
//! uevents) without touching the machine's. `unshare(CLONE_NEWNET)` moves only the calling thread,
//! so each test body runs on a thread of its own; what it opens there (sockets, btb's platform
//! thread, `ip` child processes) lives in the private namespace, which disappears with them.

/// Runs `body` on a new thread in a new network namespace (loopback only, down); a panic in
/// `body` fails the test. Without CAP_NET_ADMIN, says loudly that `test` was skipped and returns
/// `None`.
pub fn in_private_netns<T: Send + 'static>(
    test: &str,
    body: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let test = test.to_owned();
    let thread = std::thread::spawn(move || {
        // SAFETY: NEWNET only (not FILES): no descriptor table is split between threads.
        match unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) } {
            Ok(()) => Some(body()),
            Err(rustix::io::Errno::PERM) => {
                // Straight to fd 2: the test harness swallows eprintln! of a passing test.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "*** SKIPPED: {test} needs a private network namespace (CAP_NET_ADMIN: run as root)"
                );
                None
            }
            Err(e) => panic!("unshare(CLONE_NEWNET): {e}"),
        }
    });
    match thread.join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
