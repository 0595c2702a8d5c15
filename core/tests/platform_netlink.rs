//! SPEC §6, INTERNET_AVAILABLE from rtnetlink, against the real kernel: each test moves one thread
//! into a private network namespace, builds links and routes there with iproute2, and opens a
//! system reading the platform from that thread (its netlink sockets belong to the namespace of
//! the thread that creates them). Needs CAP_NET_ADMIN; without it each test says SKIPPED.

mod common;

use std::process::{Command, Stdio};
use std::time::Instant;

use btb_core::*;
use common::rt::*;

const NET: SystemConditionType = SystemConditionType::InternetAvailable;

/// Runs `body` in a private network namespace (`common::netns`).
fn in_netns(test: &str, body: impl FnOnce() + Send + 'static) {
    common::netns::in_private_netns(test, body);
}

fn ip_command() -> Command {
    let path = std::path::Path::new("/usr/sbin/ip");
    Command::new(if path.exists() {
        path.as_os_str()
    } else {
        "ip".as_ref()
    })
}

/// Runs `ip ARGS` (in the calling thread's namespace) and returns its output; fails the test if
/// `ip` fails.
#[track_caller]
fn ip(args: &str) -> String {
    let out = ip_command()
        .args(args.split_whitespace())
        .output()
        .expect("cannot run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs many `ip` commands in one process (`ip -batch -`), so their events come in a burst.
#[track_caller]
fn ip_batch(commands: &str) {
    use std::io::Write;
    let mut child = ip_command()
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("cannot run ip (iproute2)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(commands.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "ip -batch failed");
}

/// `lo` up and veth0 (198.51.100.2/24) ↔ veth1, both up: a link with carrier, no default route.
/// Without `ipv6` the pair has no IPv6 at all, so no IPv6 route message can stand in for the
/// IPv4 events that the kernel does not send (a route-only listener would miss the changes).
fn veth(ipv6: bool) {
    ip("link set lo up");
    ip("link add veth0 type veth peer name veth1");
    if !ipv6 {
        for link in ["veth0", "veth1"] {
            // /proc/sys/net shows the namespace of the thread that opens it.
            std::fs::write(format!("/proc/sys/net/ipv6/conf/{link}/disable_ipv6"), "1").unwrap();
        }
    }
    ip("addr add 198.51.100.2/24 dev veth0");
    ip("link set veth1 up");
    ip("link set veth0 up");
    if !ipv6 {
        assert_eq!(ip("-6 addr show dev veth0"), "", "IPv6 is off on veth0");
    }
}

const DEFAULT_V4: &str = "route add default via 198.51.100.1 dev veth0";

/// A system on the real platform (a manual clock for the rest), started.
fn open_real() -> Rig {
    let clock = ManualClock::new(T0).unwrap();
    let mut opts = options(
        "org.example.netlink",
        "1",
        StoreLocation::Memory,
        &clock,
        policy(),
    );
    opts.simulated = false;
    Rig::attach(System::open(opts).unwrap(), clock)
}

/// Waits until the broker reads INTERNET_AVAILABLE as `want` (reached on the platform thread),
/// then checks that netlink is what says so.
#[track_caller]
fn wait_internet(rig: &Rig, want: bool) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let now = rig.sys.state(NET).unwrap();
        if now == Some(want) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "INTERNET_AVAILABLE stayed {now:?} for {DEADLINE:?}, expected Some({want})"
        );
        std::thread::yield_now();
    }
    assert_eq!(rig.sys.state_source(NET).unwrap(), "netlink");
    assert_eq!(
        rig.sys
            .state(SystemConditionType::InternetNotAvailable)
            .unwrap(),
        Some(!want)
    );
}

/// The names of the next `n` starts, sorted.
#[track_caller]
fn starts(rig: &Rig, n: usize) -> Vec<String> {
    let mut names: Vec<String> = (0..n).map(|_| rig.next_start().name).collect();
    names.sort();
    names
}

#[test]
fn a_default_route_makes_internet_available_and_runs_what_waited_for_it() {
    in_netns(
        "a_default_route_makes_internet_available_and_runs_what_waited_for_it",
        || {
            veth(false);
            let rig = open_real();
            wait_internet(&rig, false);
            let (mut b, id) = app_task("latched");
            b.add_condition(NET as u32);
            rig.register(&b);
            rig.register(&task(
                "on-internet",
                system(SystemTriggerType::InternetAvailable, false),
            ));
            rig.register(&task(
                "on-change",
                system(SystemTriggerType::NetworkStateChange, false),
            ));
            assert_eq!(
                rig.sys.request(&id, None).unwrap(),
                ApplicationTriggerResult::Allowed
            );
            rig.idle();
            rig.no_start(); // latched: no internet yet

            ip(DEFAULT_V4);
            assert_eq!(
                starts(&rig, 3),
                ["latched", "on-change", "on-internet"],
                "the latched run and both triggers"
            );
            wait_internet(&rig, true);
            rig.idle();
            rig.no_start();
        },
    );
}

#[test]
fn a_link_going_down_flushes_the_route_silently_and_cancels_on_condition_loss() {
    in_netns(
        "a_link_going_down_flushes_the_route_silently_and_cancels_on_condition_loss",
        || {
            veth(false);
            ip(DEFAULT_V4);
            let rig = open_real();
            wait_internet(&rig, true);
            let (mut b, id) = app_task("fragile");
            b.add_condition(NET as u32);
            b.cancel_on_condition_loss = true;
            let fragile = rig.register(&b);
            let done = completions(&fragile);
            let (tx, started) = std::sync::mpsc::channel();
            let tx = std::sync::Mutex::new(tx);
            rig.router.on("fragile", move |i: &Instance| {
                let gate = Gate::new();
                let g = gate.clone();
                i.add_canceled(std::sync::Arc::new(move |_i: &Instance, _r| g.open()));
                tx.lock().unwrap().send(i.clone()).unwrap();
                assert!(gate.wait(), "never canceled");
            });
            rig.sys.request(&id, None).unwrap();
            let instance = recv(&started, "the fragile run");

            // The kernel flushes the IPv4 default route with the link and sends no RTM_DELROUTE
            // for it (only RTM_NEWLINK and address messages).
            ip("link set veth0 down");
            assert_eq!(ip("route show default"), "", "the route went with the link");
            wait_internet(&rig, false);
            assert_eq!(
                instance.cancellation_reason(),
                Some(CancellationReason::ConditionLoss)
            );
            let c = recv(&done, "the fragile completion");
            assert_eq!(c.outcome, TaskOutcome::Canceled);
            assert_eq!(c.reason, Some(CancellationReason::ConditionLoss));
        },
    );
}

#[test]
fn a_carrier_coming_and_going_under_the_route_is_heard() {
    in_netns(
        "a_carrier_coming_and_going_under_the_route_is_heard",
        || {
            veth(false);
            ip("link set veth1 down"); // the peer: veth0 has no carrier
            ip(DEFAULT_V4);
            let rig = open_real();
            wait_internet(&rig, false);
            rig.register(&task(
                "on-internet",
                system(SystemTriggerType::InternetAvailable, false),
            ));

            // The carrier comes: only RTM_NEWLINK says so.
            ip("link set veth1 up");
            assert_eq!(rig.next_start().name, "on-internet");
            wait_internet(&rig, true);

            // And goes: the kernel keeps the route, marked linkdown, and sends RTM_NEWLINK only.
            ip("link set veth1 down");
            wait_internet(&rig, false);
            assert!(
                ip("route show default").contains("linkdown"),
                "the kernel keeps the route, marked linkdown"
            );
            rig.idle();
            rig.no_start();
        },
    );
}

#[test]
fn an_ipv6_default_route_alone_is_internet() {
    in_netns("an_ipv6_default_route_alone_is_internet", || {
        veth(true);
        let rig = open_real();
        wait_internet(&rig, false);
        rig.register(&task(
            "on-change",
            system(SystemTriggerType::NetworkStateChange, false),
        ));

        ip("-6 route add default dev veth0");
        assert_eq!(rig.next_start().name, "on-change");
        wait_internet(&rig, true);
        ip("-6 route del default dev veth0");
        assert_eq!(rig.next_start().name, "on-change");
        wait_internet(&rig, false);
        rig.idle();
        rig.no_start();
    });
}

#[test]
fn moving_the_default_route_to_another_link_is_a_network_state_change() {
    in_netns(
        "moving_the_default_route_to_another_link_is_a_network_state_change",
        || {
            veth(false);
            ip("link add veth2 type veth peer name veth3");
            ip("addr add 203.0.113.2/24 dev veth2");
            ip("link set veth3 up");
            ip("link set veth2 up");
            ip(DEFAULT_V4);
            let rig = open_real();
            wait_internet(&rig, true);
            rig.register(&task(
                "on-internet",
                system(SystemTriggerType::InternetAvailable, false),
            ));
            rig.register(&task(
                "on-change",
                system(SystemTriggerType::NetworkStateChange, false),
            ));

            ip("route replace default via 203.0.113.1 dev veth2");
            assert_eq!(rig.next_start().name, "on-change");
            rig.idle();
            rig.no_start(); // internet never went away: INTERNET_AVAILABLE did not fire
            assert_eq!(rig.sys.state(NET).unwrap(), Some(true));

            // Addresses coming and going on the links is no network change.
            ip("addr add 203.0.113.3/24 dev veth2");
            ip("addr del 203.0.113.3/24 dev veth2");
            ip("link set veth0 down");
            ip("link set veth0 up");
            wait_internet(&rig, true);
            rig.idle();
            rig.no_start();
        },
    );
}

#[test]
fn a_burst_of_changes_and_foreign_messages_leaves_the_right_state() {
    in_netns(
        "a_burst_of_changes_and_foreign_messages_leaves_the_right_state",
        || {
            veth(false);
            ip(DEFAULT_V4);
            let rig = open_real();
            wait_internet(&rig, true);
            rig.register(&task(
                "on-change",
                system(SystemTriggerType::NetworkStateChange, false),
            ));

            // Junk sent to the link/address/route groups by a user-space socket (root may): the
            // source must ignore it (not from the kernel) and carry on.
            let mut junk = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE).unwrap();
            junk.bind_auto().unwrap();
            let groups = netlink_sys::SocketAddr::new(0, 0x551);
            junk.send_to(&[0xff; 7], &groups, 0).unwrap();
            let mut bogus = [0u8; 16]; // a header of an unknown type, which the kernel refuses
            bogus[..4].copy_from_slice(&16u32.to_ne_bytes());
            bogus[4..6].copy_from_slice(&0xfffeu16.to_ne_bytes());
            junk.send_to(&bogus, &groups, 0).unwrap();

            // 200 addresses added and removed, then the default route goes: hundreds of events
            // at once (the group socket may overflow), one state change at the end.
            let mut batch = String::new();
            for i in 0..200 {
                batch += &format!(
                    "address add 10.0.{}.{}/32 dev veth0\n",
                    i / 100,
                    i % 100 + 1
                );
            }
            for i in 0..200 {
                batch += &format!(
                    "address del 10.0.{}.{}/32 dev veth0\n",
                    i / 100,
                    i % 100 + 1
                );
            }
            batch += "route del default\n";
            ip_batch(&batch);
            wait_internet(&rig, false);
            assert_eq!(rig.next_start().name, "on-change");
            rig.idle();
            rig.no_start();

            // Still listening.
            ip(DEFAULT_V4);
            assert_eq!(rig.next_start().name, "on-change");
            wait_internet(&rig, true);
        },
    );
}
