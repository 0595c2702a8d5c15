//! ON_AC_POWER and BATTERY_NOT_LOW from `/sys/class/power_supply` (SPEC §6), the fallback when
//! UPower is not on the bus. Re-read whenever a kobject uevent of the `power_supply` subsystem
//! arrives: the uevent is only a hint (its keys may be partial), so a forged one costs a re-read
//! and nothing else. No udevd needed: the kernel multicasts uevents on netlink group 1.
//!
//! The rule is systemd's `on_ac_power()`: AC when any non-battery supply is online; else battery
//! when a system battery is discharging; else — no supplies at all, a server or a VM — AC.
//! The battery is low when not on AC and every present system battery is at most 20 % (or says
//! `Low` / `Critical`), UPower's default warning level.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_KOBJECT_UEVENT};

use super::{FdSource, Heard, Sink, Source};
use crate::model::SystemConditionType;

/// The kernel's multicast group of kobject uevents.
const KERNEL_UEVENTS: u32 = 1;
/// A battery at or below this capacity is low (UPower's default `PercentageLow`).
const LOW_PERCENT: u32 = 20;

/// What the power supplies under a root say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Power {
    pub(crate) on_ac: bool,
    pub(crate) battery_not_low: bool,
}

fn attr(dir: &Path, name: &str) -> Option<String> {
    crate::files::read_regular(&dir.join(name))
        .ok()
        .map(|s| String::from_utf8_lossy(&s).trim().to_owned())
}

/// Reads the supplies under `root`; `None` when the root cannot be read (no sysfs).
pub(crate) fn read(root: &Path) -> Option<Power> {
    let mut any_online = false;
    let mut discharging = false;
    let mut batteries = 0;
    let mut low_batteries = 0;
    for entry in std::fs::read_dir(root).ok()?.flatten() {
        let dir = entry.path();
        let Some(kind) = attr(&dir, "type") else {
            continue;
        };
        if kind != "Battery" {
            if attr(&dir, "online").and_then(|v| v.parse::<u32>().ok()) > Some(0) {
                any_online = true;
            }
            continue;
        }
        // A peripheral's battery (a mouse's) says nothing about the machine.
        if attr(&dir, "scope").as_deref() == Some("Device")
            || attr(&dir, "present").as_deref() == Some("0")
        {
            continue;
        }
        batteries += 1;
        discharging |= attr(&dir, "status").as_deref() == Some("Discharging");
        let capacity_low = attr(&dir, "capacity")
            .and_then(|v| v.parse::<u32>().ok())
            .is_some_and(|c| c <= LOW_PERCENT);
        let level_low = matches!(
            attr(&dir, "capacity_level").as_deref(),
            Some("Low" | "Critical")
        );
        if capacity_low || level_low {
            low_batteries += 1;
        }
    }
    let on_ac = any_online || !discharging;
    Some(Power {
        on_ac,
        battery_not_low: on_ac || batteries == 0 || low_batteries < batteries,
    })
}

/// Whether a uevent (`ACTION@DEVPATH\0KEY=VALUE\0…`) from netlink port `from` says a power
/// supply changed: the kernel's (port 0) always, user space's only when accepted.
fn is_power_hint(uevent: &[u8], from: u32, accept_user_uevents: bool) -> bool {
    (from == 0 || accept_user_uevents)
        && uevent
            .split(|b| *b == 0)
            .any(|kv| kv == b"SUBSYSTEM=power_supply")
}

/// The sysfs power source on the platform thread.
pub(crate) struct SysfsPower {
    socket: Socket,
    root: PathBuf,
    accept_user_uevents: bool,
}

impl SysfsPower {
    /// Binds the uevent socket. `accept_user_uevents`: also re-read on uevents sent by user space
    /// (tests send them in a private network namespace); the kernel's are always heard.
    pub(crate) fn new(root: &Path, accept_user_uevents: bool) -> std::io::Result<SysfsPower> {
        let mut socket = Socket::new(NETLINK_KOBJECT_UEVENT)?;
        socket.bind(&SocketAddr::new(0, KERNEL_UEVENTS))?;
        socket.set_non_blocking(true)?;
        Ok(SysfsPower {
            socket,
            root: root.to_owned(),
            accept_user_uevents,
        })
    }

    fn report(&self, sink: &Sink, initial: bool) {
        let power = read(&self.root);
        sink(Heard::Report {
            source: Source::Sysfs,
            states: vec![
                (SystemConditionType::OnAcPower, power.map(|p| p.on_ac)),
                (
                    SystemConditionType::BatteryNotLow,
                    power.map(|p| p.battery_not_low),
                ),
            ],
            fires: Vec::new(),
            initial,
        });
    }
}

impl FdSource for SysfsPower {
    fn fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    fn start(&mut self, sink: &Sink) {
        self.report(sink, true);
    }

    fn readable(&mut self, sink: &Sink) {
        let mut ours = false;
        let mut buf = Vec::with_capacity(8192);
        loop {
            buf.clear();
            match self.socket.recv_from(&mut buf, 0) {
                Ok((_, from)) => {
                    ours |= is_power_hint(&buf, from.port_number(), self.accept_user_uevents);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break, // WouldBlock: drained (ENOBUFS: lost some; re-read covers it)
            }
        }
        if ours {
            self.report(sink, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supply(root: &Path, name: &str, attrs: &[(&str, &str)]) {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (k, v) in attrs {
            std::fs::write(dir.join(k), format!("{v}\n")).unwrap();
        }
    }

    #[test]
    fn only_power_supply_uevents_are_hints() {
        let power = b"change@/devices/x/power_supply/AC\0ACTION=change\0SUBSYSTEM=power_supply\0";
        let mem = b"change@/devices/virtual/mem/null\0ACTION=change\0SUBSYSTEM=mem\0";
        let lookalike = b"change@/x\0DEVPATH=/SUBSYSTEM=power_supply\0SUBSYSTEM=mem\0";
        assert!(is_power_hint(power, 0, false));
        assert!(!is_power_hint(power, 4242, false), "forged by user space");
        assert!(is_power_hint(power, 4242, true));
        assert!(!is_power_hint(mem, 0, true));
        assert!(!is_power_hint(lookalike, 0, true));
        assert!(!is_power_hint(b"", 0, true));
    }

    #[test]
    fn systemd_on_ac_power_rule() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        assert_eq!(read(&root.join("missing")), None, "no sysfs: unknown");
        let ac = |on_ac, battery_not_low| {
            Some(Power {
                on_ac,
                battery_not_low,
            })
        };
        assert_eq!(read(root), ac(true, true), "no supplies: a server, on AC");
        supply(
            root,
            "BAT0",
            &[
                ("type", "Battery"),
                ("status", "Discharging"),
                ("capacity", "55"),
            ],
        );
        assert_eq!(read(root), ac(false, true));
        std::fs::write(root.join("BAT0/capacity"), "20\n").unwrap();
        assert_eq!(read(root), ac(false, false), "20 % is low");
        supply(
            root,
            "hidpp_battery_0",
            &[
                ("type", "Battery"),
                ("scope", "Device"),
                ("status", "Discharging"),
                ("capacity", "90"),
            ],
        );
        assert_eq!(
            read(root),
            ac(false, false),
            "a mouse's battery does not count"
        );
        supply(root, "AC", &[("type", "Mains"), ("online", "1")]);
        assert_eq!(read(root), ac(true, true), "on AC the battery is not low");
        std::fs::write(root.join("AC/online"), "0\n").unwrap();
        std::fs::write(root.join("BAT0/status"), "Full\n").unwrap();
        assert_eq!(
            read(root),
            ac(true, true),
            "unplugged but not discharging: AC"
        );
    }
}
