//! INTERNET_AVAILABLE from rtnetlink (SPEC §6), the fallback when NetworkManager is not on the
//! bus: available ⇔ a default route of the main table (IPv4 or IPv6, unicast, not `linkdown`)
//! leaves through a link that is up and has carrier (`IFF_UP` and `IFF_LOWER_UP`/`IFF_RUNNING`).
//! netlink cannot tell a metered network from a free one, so FREE_NETWORK_AVAILABLE is left to
//! NetworkManager (unknown without it).
//!
//! Why not follow the route messages themselves (as GLib does): the kernel flushes IPv4 routes
//! without RTM_DELROUTE when their link goes down or loses its last address, and a carrier loss
//! keeps the route (marked `linkdown`) and sends only RTM_NEWLINK. So any message of the link,
//! address or route groups is only a hint: drain them all, then dump the routes afresh and
//! recompute, once per wake-up. Link flags are the exception: the kernel does announce every
//! change of them (RTM_NEWLINK), so they are kept from the messages, and dumped only at start and
//! after messages were lost. The dumps go over a second, private socket, so that their replies
//! never interleave with the multicast stream.

use std::collections::{BTreeSet, HashSet};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer, NetlinkMessage,
    NetlinkPayload, ParseableParametrized,
};
use netlink_packet_route::link::{
    LinkAttribute, LinkExtentMask, LinkFlags, LinkHeader, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteNextHopFlags, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::{FdSource, Heard, Sink, Source};
use crate::model::{SystemConditionType, SystemTriggerType};

/// RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE
/// (netlink-sys has no names for the legacy group bits).
const GROUPS: u32 = 0x1 | 0x10 | 0x40 | 0x100 | 0x400;

/// Message types of <linux/rtnetlink.h> (netlink-packet-route keeps its own private).
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWROUTE: u16 = 24;

/// The netlink source of INTERNET_AVAILABLE on the platform thread.
pub(crate) struct NetlinkNetwork {
    /// Bound to the groups, non-blocking: polled by the platform thread, read only as a hint.
    events: Socket,
    /// Not in any group, blocking: sends requests and reads their replies to the end.
    requests: Socket,
    seq: u32,
    buf: Vec<u8>,
    /// The links that are up with a carrier. The kernel sends RTM_NEWLINK on every change of a
    /// link's flags (and RTM_DELLINK when it goes), so the group socket keeps this true; `None`
    /// until dumped, and again once messages were lost (the socket overflowed).
    carrier: Option<HashSet<u32>>,
    /// The links that carry a usable default route, as last reported (`None`: unknown).
    last: Option<BTreeSet<u32>>,
}

impl NetlinkNetwork {
    /// Opens both sockets in the calling thread's network namespace (a socket stays in the
    /// namespace it was created in, whichever thread reads it later).
    pub(crate) fn new() -> io::Result<NetlinkNetwork> {
        let mut events = Socket::new(NETLINK_ROUTE)?;
        events.bind(&SocketAddr::new(0, GROUPS))?;
        events.set_non_blocking(true)?;
        let mut requests = Socket::new(NETLINK_ROUTE)?;
        requests.bind_auto()?;
        // Lets the kernel filter dumps (the main table only); older kernels ignore the filter.
        let _ = requests.set_netlink_get_strict_chk(true);
        // Connected to the kernel: the kernel refuses unicasts to it from anyone else.
        requests.connect(&SocketAddr::new(0, 0))?;
        Ok(NetlinkNetwork {
            events,
            requests,
            seq: 0,
            buf: Vec::with_capacity(8192),
            carrier: None,
            last: None,
        })
    }

    /// The links that carry a usable default route now; `None` when the kernel cannot be asked.
    fn read(&mut self) -> Option<BTreeSet<u32>> {
        match self.try_read() {
            Ok(links) => Some(links),
            Err(e) => {
                log::warn!(target: "btb", "rtnetlink request failed ({e}): INTERNET_AVAILABLE reads unknown");
                None
            }
        }
    }

    /// Dumps the routes (and the links, when their flags are not known) and keeps the default
    /// routes' links that have a carrier. Links are not dumped each time: the kernel's
    /// description of a link is costly to build (dumping 3 links cost ~20 µs here, as much as the
    /// route dump and the broker's work together), and a host may have hundreds of links
    /// (containers' veths).
    fn try_read(&mut self) -> io::Result<BTreeSet<u32>> {
        if self.carrier.is_none() {
            // Stats are of no use here: spare the kernel collecting them.
            let mut links = LinkMessage::default();
            links
                .attributes
                .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
            let mut carrier = HashSet::new();
            self.ask(RouteNetlinkMessage::GetLink(links), |kind, payload| {
                apply_link(&mut carrier, kind, payload);
            })?;
            self.carrier = Some(carrier);
        }
        // The kernel keeps to the main table when the socket asks for strict checks (4.20+);
        // `default_links_in` checks the table anyway.
        let mut routes = RouteMessage::default();
        routes.header.table = RouteHeader::RT_TABLE_MAIN;
        let mut links = BTreeSet::new();
        self.ask(RouteNetlinkMessage::GetRoute(routes), |kind, payload| {
            links.extend(default_links_in(kind, payload));
        })?;
        links.retain(|i| self.carrier.as_ref().is_some_and(|c| c.contains(i)));
        Ok(links)
    }

    /// Sends one dump request (all families) and hands each reply (its type and payload) to
    /// `each`, up to NLMSG_DONE.
    /// A dump the kernel marks interrupted (NLM_F_DUMP_INTR) is used as it is: the change that
    /// interrupted it also reached the group socket, so another recompute follows.
    fn ask(
        &mut self,
        request: RouteNetlinkMessage,
        mut each: impl FnMut(u16, &[u8]),
    ) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut msg = NetlinkMessage::from(request);
        msg.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        msg.header.sequence_number = self.seq;
        msg.finalize();
        let mut out = vec![0; msg.buffer_len()];
        msg.serialize(&mut out);
        self.requests.send(&out, 0)?;
        loop {
            if self.recv_whole()?.port_number() == 0
                && absorb(&self.buf, self.seq, &mut each)? == Step::Done
            {
                return Ok(());
            }
        }
    }

    /// Reads one datagram of the request socket into `buf`, whole: its length first
    /// (MSG_PEEK | MSG_TRUNC), so that no reply is ever cut short.
    fn recv_whole(&mut self) -> io::Result<SocketAddr> {
        let peek = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::TRUNC;
        loop {
            let mut nothing: &mut [u8] = &mut [];
            let len = match self.requests.recv(&mut nothing, peek.bits() as i32) {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.buf.clear();
            self.buf.reserve(len);
            match self.requests.recv_from(&mut self.buf, 0) {
                Ok((_, from)) => return Ok(from),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn report(&self, sink: &Sink, fires: Vec<SystemTriggerType>, initial: bool) {
        log::debug!(target: "btb", "rtnetlink: default routes on usable links {:?}", self.last);
        sink(Heard::Report {
            source: Source::Netlink,
            states: vec![(
                SystemConditionType::InternetAvailable,
                self.last.as_ref().map(|links| !links.is_empty()),
            )],
            fires,
            initial,
        });
    }
}

/// Applies a RTM_NEWLINK or RTM_DELLINK (of a dump or of the group socket) to the set of links
/// with a carrier. Only the header (index, flags) matters; parsing all of a link's attributes too
/// doubled the cost of a link dump.
fn apply_link(carrier: &mut HashSet<u32>, kind: u16, payload: &[u8]) {
    if kind != RTM_NEWLINK && kind != RTM_DELLINK {
        return;
    }
    match LinkHeader::parse(payload) {
        Ok(h) if kind == RTM_NEWLINK && has_carrier(h.flags) => {
            carrier.insert(h.index);
        }
        Ok(h) => {
            carrier.remove(&h.index);
        }
        Err(e) => log::debug!(target: "btb", "rtnetlink: skipped a link: {e}"),
    }
}

/// The links of a RTM_NEWROUTE payload if it is a usable default route (`default_route_links`).
fn default_links_in(kind: u16, payload: &[u8]) -> Vec<u32> {
    // Most routes are not defaults: the header tells, before the attributes are parsed.
    if kind != RTM_NEWROUTE
        || !RouteHeader::parse(payload).is_ok_and(|h| h.destination_prefix_length == 0)
    {
        return Vec::new();
    }
    match RouteNetlinkMessage::parse_with_param(payload, kind) {
        Ok(RouteNetlinkMessage::NewRoute(route)) => default_route_links(&route),
        Ok(_) => Vec::new(),
        Err(e) => {
            log::debug!(target: "btb", "rtnetlink: skipped a route: {e}");
            Vec::new()
        }
    }
}

/// Up, and the lower layer says there is a carrier.
fn has_carrier(flags: LinkFlags) -> bool {
    flags.contains(LinkFlags::Up) && flags.intersects(LinkFlags::LowerUp | LinkFlags::Running)
}

/// The output links of `route` if it is a usable default route of the main table: unicast (not
/// unreachable, blackhole…), IPv4 or IPv6, not `linkdown` or dead; of a multipath route, every
/// next hop that is not. A route through a nexthop object (RTA_NH_ID) names no link and does not
/// count.
fn default_route_links(route: &RouteMessage) -> Vec<u32> {
    let h = &route.header;
    // Tables above 255 live in RTA_TABLE (the header then says RT_TABLE_COMPAT).
    let table = route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(h.table));
    let down = RouteFlags::Linkdown | RouteFlags::Dead;
    if h.destination_prefix_length != 0
        || table != u32::from(RouteHeader::RT_TABLE_MAIN)
        || h.kind != RouteType::Unicast
        || !matches!(h.address_family, AddressFamily::Inet | AddressFamily::Inet6)
        || h.flags.intersects(down)
    {
        return Vec::new();
    }
    let hop_down = RouteNextHopFlags::Linkdown | RouteNextHopFlags::Dead;
    let mut links = Vec::new();
    for a in &route.attributes {
        match a {
            RouteAttribute::Oif(i) => links.push(*i),
            RouteAttribute::MultiPath(hops) => links.extend(
                hops.iter()
                    .filter(|hop| !hop.flags.intersects(hop_down))
                    .map(|hop| hop.interface_index),
            ),
            _ => {}
        }
    }
    links
}

#[derive(Debug, PartialEq, Eq)]
enum Step {
    More,
    Done,
}

/// The messages of one datagram, in order; stops where the framing breaks.
fn messages(datagram: &[u8]) -> impl Iterator<Item = NetlinkBuffer<&[u8]>> {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let len = match NetlinkBuffer::new_checked(rest) {
            Ok(b) => b.length() as usize,
            Err(e) => {
                log::debug!(target: "btb", "rtnetlink: dropped the rest of a datagram: {e}");
                return None;
            }
        };
        let message = &rest[..len];
        // Messages are 4-byte aligned; the last one's padding may be missing.
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some(NetlinkBuffer::new(message))
    })
}

/// Takes the messages of one dump datagram: replies to request `seq` go to `each` (type,
/// payload); others (late replies to an earlier request) are dropped. `Done` at NLMSG_DONE or
/// NLMSG_ERROR.
fn absorb(datagram: &[u8], seq: u32, each: &mut impl FnMut(u16, &[u8])) -> io::Result<Step> {
    for m in messages(datagram) {
        let kind = m.message_type();
        if m.sequence_number() != seq {
            continue;
        }
        if kind != NLMSG_DONE && kind != NLMSG_ERROR {
            each(kind, m.payload());
            continue;
        }
        return match NetlinkMessage::<RouteNetlinkMessage>::deserialize(m.into_inner())
            .map(|m| m.payload)
        {
            Ok(NetlinkPayload::Done(done)) if done.code != 0 => {
                Err(io::Error::from_raw_os_error(done.code.saturating_neg()))
            }
            Ok(NetlinkPayload::Error(e)) if e.code.is_some() => Err(e.to_io()),
            Err(e) if kind == NLMSG_ERROR => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            // DONE, even one that does not parse; an ACK.
            _ => Ok(Step::Done),
        };
    }
    Ok(Step::More)
}

impl FdSource for NetlinkNetwork {
    fn fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }

    fn start(&mut self, sink: &Sink) {
        self.last = self.read();
        self.report(sink, Vec::new(), true);
    }

    fn readable(&mut self, sink: &Sink) {
        let mut heard = false;
        // New default routes only (no replacement, no deletion, no link or address change): the
        // set of links can only grow, by those routes' links, and no dump is needed to know it.
        // The common "the network came up" event then costs no round trip to the kernel.
        let mut only_added = true;
        let mut added = BTreeSet::new();
        loop {
            self.buf.clear();
            let trunc = rustix::net::RecvFlags::TRUNC.bits() as i32;
            match self.events.recv_from(&mut self.buf, trunc) {
                // Only the kernel (port 0) speaks for the kernel.
                Ok((_, from)) if from.port_number() != 0 => {}
                Ok((len, _)) => {
                    heard = true;
                    if len > self.buf.len() {
                        self.carrier = None; // cut short: dump the links again
                    } else if let Some(carrier) = &mut self.carrier {
                        for m in messages(&self.buf) {
                            let kind = m.message_type();
                            apply_link(carrier, kind, m.payload());
                            if kind == RTM_NEWROUTE
                                && m.flags() & netlink_packet_core::NLM_F_REPLACE == 0
                            {
                                added.extend(
                                    default_links_in(kind, m.payload())
                                        .into_iter()
                                        .filter(|i| carrier.contains(i)),
                                );
                            } else {
                                only_added = false;
                            }
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The socket overflowed and messages were lost: the dumps make up for them.
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOBUFS.raw_os_error()) => {
                    heard = true;
                    self.carrier = None;
                }
                Err(_) => break, // WouldBlock: drained
            }
        }
        if !heard {
            return;
        }
        let now = match &self.last {
            Some(last) if only_added && self.carrier.is_some() => {
                Some(last.union(&added).copied().collect())
            }
            _ => self.read(),
        };
        if now == self.last {
            return;
        }
        // Internet stayed up but now leaves through other links: the broker sees no value change,
        // so the source names the network change itself.
        let moved =
            matches!((&self.last, &now), (Some(a), Some(b)) if !a.is_empty() && !b.is_empty());
        self.last = now;
        let fires = if moved {
            vec![SystemTriggerType::NetworkStateChange]
        } else {
            Vec::new()
        };
        self.report(sink, fires, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{DoneMessage, ErrorMessage, NLM_F_MULTIPART};
    use netlink_packet_route::route::{RouteAddress, RouteNextHop};
    use std::net::Ipv4Addr;

    fn route(
        family: AddressFamily,
        dst_len: u8,
        table: u8,
        kind: RouteType,
        attrs: Vec<RouteAttribute>,
    ) -> RouteMessage {
        let mut r = RouteMessage::default();
        r.header.address_family = family;
        r.header.destination_prefix_length = dst_len;
        r.header.table = table;
        r.header.kind = kind;
        r.attributes = attrs;
        r
    }

    fn v4_default(oif: u32) -> RouteMessage {
        route(
            AddressFamily::Inet,
            0,
            254,
            RouteType::Unicast,
            vec![
                RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(198, 51, 100, 1))),
                RouteAttribute::Oif(oif),
            ],
        )
    }

    #[test]
    fn which_routes_are_usable_defaults() {
        use AddressFamily::*;
        use RouteAttribute::*;
        assert_eq!(default_route_links(&v4_default(3)), [3]);
        let v6 = route(Inet6, 0, 254, RouteType::Unicast, vec![Oif(4)]);
        assert_eq!(default_route_links(&v6), [4]);
        let subnet = route(Inet, 24, 254, RouteType::Unicast, vec![Oif(3)]);
        assert_eq!(default_route_links(&subnet), [0u32; 0], "not a default");
        let local = route(Inet, 0, 255, RouteType::Unicast, vec![Oif(3)]);
        assert_eq!(default_route_links(&local), [0u32; 0], "not the main table");
        let unreachable = route(Inet6, 0, 254, RouteType::Unreachable, vec![Oif(1)]);
        assert_eq!(default_route_links(&unreachable), [0u32; 0]);
        let mut linkdown = v4_default(3);
        linkdown.header.flags = RouteFlags::Onlink | RouteFlags::Linkdown;
        assert_eq!(default_route_links(&linkdown), [0u32; 0]);
        // Table 254 given as RTA_TABLE while the header says RT_TABLE_COMPAT (252).
        let compat = route(Inet, 0, 252, RouteType::Unicast, vec![Table(254), Oif(5)]);
        assert_eq!(default_route_links(&compat), [5]);
        let hop = |flags, interface_index| {
            let mut h = RouteNextHop::default();
            h.flags = flags;
            h.interface_index = interface_index;
            h
        };
        let multipath = route(
            Inet,
            0,
            254,
            RouteType::Unicast,
            vec![MultiPath(vec![
                hop(RouteNextHopFlags::Linkdown, 6),
                hop(RouteNextHopFlags::Onlink, 7),
            ])],
        );
        assert_eq!(
            default_route_links(&multipath),
            [7],
            "any next hop that is up"
        );
        let nexthop_object = route(Inet, 0, 254, RouteType::Unicast, vec![NhId(9)]);
        assert_eq!(default_route_links(&nexthop_object), [0u32; 0]);
    }

    #[test]
    fn carrier_needs_up_and_lower_up_or_running() {
        assert!(has_carrier(LinkFlags::Up | LinkFlags::LowerUp));
        assert!(has_carrier(LinkFlags::Up | LinkFlags::Running));
        assert!(!has_carrier(LinkFlags::Up | LinkFlags::Broadcast));
        assert!(!has_carrier(LinkFlags::LowerUp | LinkFlags::Running));
    }

    fn bytes(seq: u32, payload: NetlinkPayload<RouteNetlinkMessage>) -> Vec<u8> {
        let mut m = NetlinkMessage::new(Default::default(), payload);
        m.header.flags = NLM_F_MULTIPART;
        m.header.sequence_number = seq;
        m.finalize();
        let mut out = vec![0; m.buffer_len()];
        m.serialize(&mut out);
        out
    }

    /// A dump reply as the kernel frames it: a link, a default route, a route of an earlier
    /// request, then DONE.
    fn datagram() -> Vec<u8> {
        let mut link = LinkMessage::default();
        link.header.index = 3;
        link.header.flags = LinkFlags::Up | LinkFlags::LowerUp;
        let mut d = bytes(
            7,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)),
        );
        d.extend(bytes(
            7,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(v4_default(3))),
        ));
        d.extend(bytes(
            6,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(v4_default(4))),
        ));
        d.extend(bytes(7, NetlinkPayload::Done(DoneMessage::default())));
        d
    }

    #[test]
    fn a_dump_datagram_is_taken_message_by_message() {
        let mut carrier = HashSet::new();
        let mut defaults = Vec::new();
        let step = absorb(&datagram(), 7, &mut |kind, payload| {
            apply_link(&mut carrier, kind, payload);
            defaults.extend(default_links_in(kind, payload));
        })
        .unwrap();
        assert_eq!(step, Step::Done);
        assert_eq!(carrier, HashSet::from([3]));
        assert_eq!(defaults, [3], "the reply to request 6 (link 4) is dropped");

        let mut done = DoneMessage::default();
        done.code = -rustix::io::Errno::NOMEM.raw_os_error();
        let failed = bytes(7, NetlinkPayload::Done(done));
        assert_eq!(
            absorb(&failed, 7, &mut |_, _| {})
                .unwrap_err()
                .raw_os_error(),
            Some(rustix::io::Errno::NOMEM.raw_os_error()),
            "a dump that failed"
        );
        let mut busy = ErrorMessage::default();
        busy.code = std::num::NonZeroI32::new(-rustix::io::Errno::BUSY.raw_os_error());
        let busy = bytes(7, NetlinkPayload::Error(busy));
        assert_eq!(
            absorb(&busy, 7, &mut |_, _| {}).unwrap_err().raw_os_error(),
            Some(rustix::io::Errno::BUSY.raw_os_error()),
            "a request refused"
        );
    }

    #[test]
    fn link_messages_keep_the_set_of_links_with_a_carrier() {
        let link = |kind, index, flags| {
            let mut l = LinkMessage::default();
            l.header.index = index;
            l.header.flags = flags;
            let message = if kind == RTM_NEWLINK {
                RouteNetlinkMessage::NewLink(l)
            } else {
                RouteNetlinkMessage::DelLink(l)
            };
            bytes(0, NetlinkPayload::InnerMessage(message))
        };
        let mut carrier = HashSet::from([2]);
        let mut apply = |datagram: Vec<u8>| {
            for m in messages(&datagram) {
                apply_link(&mut carrier, m.message_type(), m.payload());
            }
        };
        apply(link(RTM_NEWLINK, 3, LinkFlags::Up | LinkFlags::LowerUp));
        apply(link(RTM_NEWLINK, 4, LinkFlags::Up | LinkFlags::Running));
        apply(link(RTM_NEWLINK, 2, LinkFlags::Up)); // carrier lost
        let mut two = link(RTM_DELLINK, 4, LinkFlags::empty());
        two.extend(link(RTM_NEWLINK, 5, LinkFlags::Up | LinkFlags::LowerUp));
        apply(two); // two messages in one datagram
        apply(vec![0xff; 7]); // not even a header
        assert_eq!(carrier, HashSet::from([3, 5]));
    }

    /// Runs a datagram through everything that reads one.
    fn read_all(datagram: &[u8]) {
        let mut carrier = HashSet::new();
        let _ = absorb(datagram, 7, &mut |kind, payload| {
            apply_link(&mut carrier, kind, payload);
            let _ = default_links_in(kind, payload);
        });
        for m in messages(datagram) {
            apply_link(&mut carrier, m.message_type(), m.payload());
        }
    }

    #[test]
    fn broken_datagrams_are_skipped_without_panicking() {
        let good = datagram();
        // Every truncation, and every byte replaced by each of a few values.
        for end in 0..good.len() {
            read_all(&good[..end]);
        }
        for at in 0..good.len() {
            for value in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[at] = value;
                read_all(&bad);
            }
        }
        // Pseudo-random noise, behind a valid header too (a fixed LCG: a failure reproduces).
        let mut x: u32 = 0x2545_f491;
        for round in 0..4000 {
            let mut noise: Vec<u8> = (0..96)
                .map(|_| {
                    x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (x >> 24) as u8
                })
                .collect();
            if round % 2 == 0 {
                noise[..4].copy_from_slice(&96u32.to_ne_bytes());
                let kind = if round % 4 == 0 {
                    RTM_NEWROUTE
                } else {
                    RTM_NEWLINK
                };
                noise[4..6].copy_from_slice(&kind.to_ne_bytes());
                noise[8..12].copy_from_slice(&7u32.to_ne_bytes());
                noise[17] = 0; // a default route, so that its attributes are parsed
            }
            read_all(&noise);
        }
    }
}
