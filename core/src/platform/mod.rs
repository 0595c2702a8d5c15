//! Where the machine's state comes from (SPEC §6). One file per family of states; each reads the
//! current value (true, false, or unknown) and hears its changes from the real machine:
//!
//! | file | states | source names | hears changes by |
//! |---|---|---|---|
//! | `network.rs` | INTERNET_AVAILABLE | `netlink` | rtnetlink multicast (links, addresses, routes) |
//! | `dbus.rs` | INTERNET_AVAILABLE, FREE_NETWORK_AVAILABLE; ON_AC_POWER, BATTERY_NOT_LOW; USER_PRESENT, SESSION_CONNECTED, DEVICE_IDLE; (resume from sleep; logging off and shutdown; the energy saver of power-profiles-daemon; the sleep inhibitor of `is_network_requested`) | `networkmanager`, `upower`, `logind` | D-Bus signals on the system bus, on its own thread |
//! | `power.rs` | ON_AC_POWER, BATTERY_NOT_LOW | `sysfs` | kobject uevents |
//! | `storage.rs` | STORAGE_NOT_LOW | `statvfs` | read after each store write and broker wake (`broker/storage.rs`) |
//! | `timezone.rs` | (TIME_ZONE_CHANGE) | — | inotify on the localtime link's directory |
//!
//! Several sources may report one state; the one of highest rank that knows it wins
//! ([`Source::rank`]): NetworkManager over netlink, UPower over sysfs. A daemon that leaves the bus
//! reports its states unknown, so the fallback's reading shows through. The simulated source
//! (states the app sets, `source.rs`) replaces all of them in a system opened with `simulated`.
//!
//! Event-driven only: the fd sources share one thread blocked in `poll` with no timeout; the D-Bus
//! sources wait on their connection. An idle broker makes no system calls.

mod call_timer;
pub(crate) mod dbus;
pub(crate) mod network;
pub(crate) mod power;
pub(crate) mod storage;
pub(crate) mod timezone;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use rustix::event::{EventfdFlags, PollFd, PollFlags, eventfd, poll};

use crate::model::{SystemConditionType, SystemTriggerType};

/// Where the platform sources look. Defaults: the real machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformOptions {
    /// The directory of power supplies (default `/sys/class/power_supply`).
    pub power_supply_root: PathBuf,
    /// The local time zone link (default `/etc/localtime`); its directory is watched.
    pub localtime: PathBuf,
    /// The system bus address; `None` = `DBUS_SYSTEM_BUS_ADDRESS` at open, else the standard socket.
    pub system_bus: Option<String>,
    /// Accept kobject uevents from user space, not only from the kernel (tests send their own
    /// inside a private network namespace). A uevent is only a hint to re-read sysfs either way.
    pub accept_user_uevents: bool,
}

impl Default for PlatformOptions {
    fn default() -> Self {
        PlatformOptions {
            power_supply_root: PathBuf::from("/sys/class/power_supply"),
            localtime: PathBuf::from("/etc/localtime"),
            system_bus: None,
            accept_user_uevents: false,
        }
    }
}

/// A reporter of states. Ranks order the sources of one state: the highest that knows it wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Source {
    Netlink,
    Sysfs,
    NetworkManager,
    UPower,
    Logind,
    /// States the app sets (a simulated system has no other source).
    Simulated,
}

impl Source {
    /// The name `system.state_source` returns (SPEC §6).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Source::Netlink => "netlink",
            Source::Sysfs => "sysfs",
            Source::NetworkManager => "networkmanager",
            Source::UPower => "upower",
            Source::Logind => "logind",
            Source::Simulated => "simulated",
        }
    }
}

/// What a source tells the broker.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Heard {
    /// New readings of some states (`None` = now unknown). `initial` for a source's first reading
    /// at start: it sets the states without firing triggers (nothing *changed*). `fires` are
    /// system triggers the source saw beyond what the state changes mean (the broker derives
    /// INTERNET_AVAILABLE, USER_PRESENT, … from the states itself; a source adds, say,
    /// NETWORK_STATE_CHANGE when the default route moved to another link and internet stayed up).
    Report {
        source: Source,
        states: Vec<(SystemConditionType, Option<bool>)>,
        fires: Vec<SystemTriggerType>,
        initial: bool,
    },
    /// The local time zone changed: fire TIME_ZONE_CHANGE and re-plan calendar triggers.
    TimeZoneChanged,
    /// The machine resumed from sleep: run what became due meanwhile, now.
    Resumed,
    /// Our user logs off (their last session closes) or the machine shuts down: cancel every
    /// run with LOGGING_OFF (SPEC §4).
    LoggingOff,
    /// power-profiles-daemon's energy saver went on (`true`) or off: while it is on and the
    /// machine is on battery, runs that need power are canceled with ENERGY_SAVER (SPEC §4).
    EnergySaver(bool),
}

/// Where notes go (the broker, through a weak reference).
pub(crate) type Sink = Arc<dyn Fn(Heard) + Send + Sync>;

/// A source driven by one file descriptor on the platform thread.
pub(crate) trait FdSource: Send {
    /// The descriptor to poll for readability.
    fn fd(&self) -> BorrowedFd<'_>;
    /// Called once, on the opening thread, before polling starts: the first reading (notes with
    /// `initial`). Events that arrive meanwhile wait in the descriptor.
    fn start(&mut self, sink: &Sink);
    /// Called when `fd` is readable: drain it (it is non-blocking) and report what changed.
    fn readable(&mut self, sink: &Sink);
}

/// The platform sources of one open system; dropping it stops them.
pub(crate) struct Platform {
    stop: Arc<OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The D-Bus sources (their own thread), `None` without a system bus.
    bus: Option<dbus::Bus>,
}

impl Platform {
    /// Starts every source that the machine offers; one that cannot start is logged (and its
    /// states read unknown).
    pub(crate) fn open(options: &PlatformOptions, sink: Sink) -> std::io::Result<Platform> {
        let mut sources: Vec<Box<dyn FdSource>> = Vec::new();
        match network::NetlinkNetwork::new() {
            Ok(s) => sources.push(Box::new(s)),
            Err(e) => unavailable("rtnetlink (links, addresses, routes)", e),
        }
        match power::SysfsPower::new(&options.power_supply_root, options.accept_user_uevents) {
            Ok(s) => sources.push(Box::new(s)),
            Err(e) => unavailable("power supplies in sysfs (kobject uevents)", e),
        }
        match timezone::TimeZoneWatch::new(&options.localtime) {
            Ok(s) => sources.push(Box::new(s)),
            Err(e) => unavailable(
                &format!("time zone changes ({})", options.localtime.display()),
                e,
            ),
        }
        let bus = match dbus::Bus::start(options, Arc::clone(&sink)) {
            Ok(bus) => Some(bus),
            Err(e) => {
                unavailable("the system bus", e);
                None
            }
        };
        let mut platform = Platform::start(sources, sink)?;
        platform.bus = bus;
        Ok(platform)
    }

    /// What asks logind for sleep inhibitors for runs of tasks with `is_network_requested`
    /// (SPEC §4); `None` without a bus. Its call blocks for a D-Bus round trip: make it with no
    /// lock held.
    pub(crate) fn inhibitor(&self) -> Option<dbus::Inhibitor> {
        self.bus.as_ref()?.inhibitor()
    }

    /// Starts the given fd sources on one thread, after their first readings (taken here, so
    /// that the states are known when the system's `open` returns). A source that cannot start
    /// was already left out by its constructor (which logged why); none at all starts no thread.
    pub(crate) fn start(
        mut sources: Vec<Box<dyn FdSource>>,
        sink: Sink,
    ) -> std::io::Result<Platform> {
        for s in &mut sources {
            s.start(&sink);
        }
        let stop = Arc::new(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?);
        let thread = if sources.is_empty() {
            None
        } else {
            let stop = Arc::clone(&stop);
            Some(
                std::thread::Builder::new()
                    .name("btb-platform".into())
                    .spawn(move || run(sources, &stop, &sink))?,
            )
        };
        Ok(Platform {
            stop,
            thread,
            bus: None,
        })
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        let _ = rustix::io::write(&*self.stop, &1u64.to_ne_bytes());
        if let Some(t) = self.thread.take()
            && t.thread().id() != std::thread::current().id()
        {
            let _ = t.join();
        }
    }
}

fn run(mut sources: Vec<Box<dyn FdSource>>, stop: &OwnedFd, sink: &Sink) {
    loop {
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd<'_>> = std::iter::once(stop.as_fd())
                .chain(sources.iter().map(|s| s.fd()))
                .map(|fd| PollFd::from_borrowed_fd(fd, PollFlags::IN))
                .collect();
            match poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    log::error!(target: "btb", "the platform sources stopped: poll failed: {e}");
                    return;
                }
            }
            fds.iter().map(|f| !f.revents().is_empty()).collect()
        };
        if ready[0] {
            return;
        }
        for (s, _) in sources
            .iter_mut()
            .zip(&ready[1..])
            .filter(|(_, ready)| **ready)
        {
            s.readable(sink);
        }
    }
}

/// The name of what a condition's state is read from when no source reports it: `statvfs` for
/// storage (read on demand), `unknown` for the rest.
/// The static name of a source named on the wire (what a client hears from its broker).
pub(crate) fn source_named(name: &str) -> &'static str {
    [
        Source::Netlink,
        Source::Sysfs,
        Source::NetworkManager,
        Source::UPower,
        Source::Logind,
        Source::Simulated,
    ]
    .into_iter()
    .map(Source::name)
    .chain([storage::SOURCE])
    .find(|n| *n == name)
    .unwrap_or("unknown")
}

pub(crate) fn unreported_source(condition: SystemConditionType) -> &'static str {
    match condition {
        SystemConditionType::StorageNotLow => storage::SOURCE,
        _ => "unknown",
    }
}

/// Logs a source that cannot start or was lost, once per system and source.
pub(crate) fn unavailable(what: &str, why: impl std::fmt::Display) {
    log::info!(target: "btb", "{what}: unavailable ({why}); the states it gives read unknown");
}
