//! Network event → task start latency through the rtnetlink source, next to its limit measured in
//! the same run: a bare observer, one socket in the IPv4 route group woken by the same
//! RTM_NEWROUTE (what `ip monitor route` does).
//!
//! In a private network namespace (needs CAP_NET_ADMIN; says SKIPPED without), each sample adds
//! the default route with a raw RTM_NEWROUTE sent from here (no `ip` process in the measured
//! path), timestamped just before the send. btb: until a task with a SystemTrigger
//! INTERNET_AVAILABLE starts; observer: until it has read the message. Between samples the route
//! is removed and the broker has seen internet go.
//!
//! Both sides pay for waking an idle thread, which on a VM costs a lot more when its vCPU was
//! halted than when it was busy: compare the two within one run, not across runs.
//!
//!     cargo bench -p btb-core --bench netlink_event   [BTB_BENCH_SAMPLES=200]

mod common;

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use btb_core::*;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkBuffer, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// RTMGRP_IPV4_ROUTE.
const IPV4_ROUTE_GROUP: u32 = 0x40;

fn main() {
    let samples = std::env::var("BTB_BENCH_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    std::thread::spawn(move || {
        // SAFETY: NEWNET touches no state shared with other threads (not the fd table).
        match unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) } {
            Ok(()) => run(samples),
            Err(rustix::io::Errno::PERM) => {
                eprintln!("SKIPPED: netlink_event needs CAP_NET_ADMIN (run as root)");
            }
            Err(e) => panic!("unshare(CLONE_NEWNET): {e}"),
        }
    })
    .join()
    .unwrap();
}

fn ip(args: &str) -> String {
    let out = Command::new("ip")
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

/// Sends one route request and waits for the kernel's answer.
fn route_request(socket: &Socket, add: bool, oif: u32) {
    let mut route = RouteMessage::default();
    route.header.address_family = AddressFamily::Inet;
    route.header.table = RouteHeader::RT_TABLE_MAIN;
    route.header.protocol = RouteProtocol::Static;
    route.header.scope = if add {
        RouteScope::Universe
    } else {
        RouteScope::NoWhere
    };
    route.header.kind = RouteType::Unicast;
    route.attributes = vec![
        RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(198, 51, 100, 1))),
        RouteAttribute::Oif(oif),
    ];
    let (message, flags) = if add {
        (
            RouteNetlinkMessage::NewRoute(route),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
    } else {
        (
            RouteNetlinkMessage::DelRoute(route),
            NLM_F_REQUEST | NLM_F_ACK,
        )
    };
    let mut msg = NetlinkMessage::from(message);
    msg.header.flags = flags;
    msg.finalize();
    let mut out = vec![0; msg.buffer_len()];
    msg.serialize(&mut out);
    socket.send(&out, 0).unwrap();
    let mut buf = Vec::with_capacity(4096);
    socket.recv(&mut buf, 0).unwrap();
    match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf)
        .unwrap()
        .payload
    {
        NetlinkPayload::Error(e) if e.code.is_none() => {} // the ACK
        other => panic!("route request refused: {other:?}"),
    }
}

/// The bare observer: a thread reading the IPv4 route group, timestamping each RTM_NEWROUTE.
fn observer() -> mpsc::Receiver<Instant> {
    let mut socket = Socket::new(NETLINK_ROUTE).unwrap();
    socket.bind(&SocketAddr::new(0, IPV4_ROUTE_GROUP)).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::with_capacity(64 * 1024);
        loop {
            buf.clear();
            if socket.recv(&mut buf, 0).is_err() {
                continue;
            }
            let seen = Instant::now();
            let mut rest = &buf[..];
            while let Ok(b) = NetlinkBuffer::new_checked(rest) {
                let len = b.length() as usize;
                if let Ok(NetlinkMessage {
                    payload: NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)),
                    ..
                }) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..len])
                    && r.header.destination_prefix_length == 0
                    && tx.send(seen).is_err()
                {
                    return;
                }
                rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
            }
        }
    });
    rx
}

fn open(started: mpsc::Sender<Instant>) -> System {
    let mut manifest = Manifest::new("org.example.bench.net", "1").unwrap();
    manifest
        .declare(TaskDeclaration::new("bench.Net", &["systemEvent"]).unwrap())
        .unwrap();
    let system = System::open(SystemOptions {
        manifest: Some(manifest),
        store: StoreLocation::Memory,
        clock: Clock::Real,
        simulated: false,
        paused: false,
        ..SystemOptions::default()
    })
    .unwrap();
    let started = Mutex::new(started);
    system
        .register_entry_point(
            "bench.Net",
            Some(Handler::Call(Arc::new(move |_i: &Instance| {
                let now = Instant::now();
                let _ = started.lock().unwrap().send(now);
            }))),
        )
        .unwrap();
    let mut b = Builder::new();
    b.name = Some("on-internet".into());
    b.task_entry_point = Some("bench.Net".into());
    b.set_trigger(Trigger::System {
        trigger_type: SystemTriggerType::InternetAvailable as u32,
        one_shot: false,
    });
    system.register(&b).unwrap();
    system
}

fn wait_state(system: &System, want: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while system
        .state(SystemConditionType::InternetAvailable)
        .unwrap()
        != Some(want)
    {
        assert!(
            Instant::now() < deadline,
            "INTERNET_AVAILABLE never became {want}"
        );
        std::thread::sleep(Duration::from_micros(100));
    }
}

fn run(samples: usize) {
    ip("link set lo up");
    ip("link add veth0 type veth peer name veth1");
    for link in ["veth0", "veth1"] {
        // No IPv6: its address and DAD events would only add noise between samples.
        std::fs::write(format!("/proc/sys/net/ipv6/conf/{link}/disable_ipv6"), "1").unwrap();
    }
    ip("addr add 198.51.100.2/24 dev veth0");
    ip("link set veth1 up");
    ip("link set veth0 up");
    let oif: u32 = ip("-o link show veth0")
        .split(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .expect("the index of veth0");

    let observed = observer();
    let (tx, started) = mpsc::channel();
    let system = open(tx);
    wait_state(&system, false);
    assert_eq!(
        system
            .state_source(SystemConditionType::InternetAvailable)
            .unwrap(),
        "netlink"
    );
    let mut requests = Socket::new(NETLINK_ROUTE).unwrap();
    requests.bind_auto().unwrap();
    requests.connect(&SocketAddr::new(0, 0)).unwrap();

    let warmup = 10;
    let mut btb = Vec::with_capacity(samples);
    let mut bare = Vec::with_capacity(samples);
    for i in 0..warmup + samples {
        // Let every thread go idle, as between real network events.
        std::thread::sleep(Duration::from_millis(2));
        let t0 = Instant::now();
        route_request(&requests, true, oif);
        let seen = observed.recv_timeout(Duration::from_secs(10)).unwrap();
        let ran = started.recv_timeout(Duration::from_secs(10)).unwrap();
        if i >= warmup {
            btb.push((ran - t0).as_secs_f64() * 1e6);
            bare.push((seen - t0).as_secs_f64() * 1e6);
        }
        assert!(system.wait_idle(Duration::from_secs(10)).unwrap());
        route_request(&requests, false, oif);
        wait_state(&system, false);
    }
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("netlink event → start, {samples} samples (the default route added), {cpus} CPUs");
    let (bare50, bare99) = common::summary("bare observer (route group socket reads it)", bare);
    let (btb50, btb99) = common::summary("btb (INTERNET_AVAILABLE task starts)", btb);
    println!(
        "RESULT p50 btb {btb50:.1} µs / observer {bare50:.1} µs = {:.2}×   (p99 {btb99:.1} / {bare99:.1} µs)",
        btb50 / bare50
    );
}
