//! The rtnetlink wire: a request socket for dumps and route lookups, and an event socket
//! subscribed to the changes that move a backend's next hop.
//!
//! Requests never wait on the network: the kernel builds its answers while it handles the
//! `send` (route lookups and dumps read tables, they send nothing), so the replies are
//! queued before `recv` is called. The request socket still has a receive timeout, so that
//! a reply the kernel could not queue costs a bounded wait instead of the control loop.
use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, RawFd},
    time::Duration,
};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteVia},
};
use netlink_sys::{Socket, protocols::NETLINK_ROUTE};

use super::Route;

// Message types the resolver reads by type alone (<linux/rtnetlink.h>; netlink-packet-route
// does not decode next-hop objects).
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;
const RTM_NEWNEXTHOP: u16 = 104;
const RTM_DELNEXTHOP: u16 = 105;

/// Groups the event socket joins. Neighbours and routes are the facts themselves; rules and
/// next-hop objects change route lookups without a route message; links and addresses too:
/// IPv4 removes the routes of a device that goes down, or of an address that goes away,
/// without sending RTM_DELROUTE (`fib_sync_down_dev`, `fib_del_ifaddr` in
/// net/ipv4/fib_semantics.c and fib_frontend.c).
const GROUPS: [u32; 9] = [
    libc::RTNLGRP_NEIGH,
    libc::RTNLGRP_IPV4_ROUTE,
    libc::RTNLGRP_IPV6_ROUTE,
    libc::RTNLGRP_IPV4_RULE,
    libc::RTNLGRP_IPV6_RULE,
    libc::RTNLGRP_NEXTHOP,
    libc::RTNLGRP_LINK,
    libc::RTNLGRP_IPV4_IFADDR,
    libc::RTNLGRP_IPV6_IFADDR,
];

/// Route lookups sent in one `send`. Each answer takes about a kilobyte of the socket's
/// receive buffer until it is read; 64 stay well inside the default 208 KiB.
const WINDOW: usize = 64;
/// Receive buffer for one datagram: dumps fill up to 32 KiB per datagram
/// (`netlink_dump` caps its allocation there).
const RECV_BUF: usize = 64 * 1024;
/// How long a request waits for an answer the kernel must already have queued.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The event socket's receive buffer (requested; the kernel caps it at `rmem_max` unless
/// the agent may force it). Overflows are noticed (ENOBUFS) and answered with a resync.
const EVENT_RCVBUF: usize = 4 << 20;

/// What one rtnetlink message means to the resolver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A neighbour entry: its MAC when usable, None when gone, failed or still resolving.
    Neighbour {
        ifindex: u32,
        addr: IpAddr,
        mac: Option<[u8; 6]>,
    },
    /// Lookups of addresses inside `prefix/len` may answer differently now.
    Routes { prefix: IpAddr, len: u8 },
    /// Any lookup may answer differently now (rules, links, addresses, next-hop objects).
    AllRoutes,
    /// Events were lost (the socket's buffer overflowed) or could not be read: the resolver
    /// must read the tables again.
    Resync,
}

/// Decodes the messages of one datagram into `out`.
pub fn parse(datagram: &[u8], out: &mut Vec<Event>) {
    for msg in messages(datagram) {
        match msg {
            Ok((kind, bytes)) => {
                if let Some(e) = event(kind, bytes) {
                    out.push(e);
                }
            }
            Err(()) => out.push(Event::Resync),
        }
    }
}

/// Splits a datagram into its messages: (type, bytes of the whole message).
fn messages(mut d: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), ()>> {
    std::iter::from_fn(move || {
        if d.is_empty() {
            return None;
        }
        let len = d
            .get(..4)
            .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")) as usize);
        let kind = d
            .get(4..6)
            .map(|b| u16::from_ne_bytes(b.try_into().expect("2 bytes")));
        match (len, kind) {
            (Some(len), Some(kind)) if len >= 16 && len <= d.len() => {
                let msg = &d[..len];
                d = &d[len.next_multiple_of(4).min(d.len())..];
                Some(Ok((kind, msg)))
            }
            _ => {
                d = &[];
                Some(Err(()))
            }
        }
    })
}

fn event(kind: u16, bytes: &[u8]) -> Option<Event> {
    match kind {
        RTM_NEWLINK | RTM_DELLINK | RTM_NEWADDR | RTM_DELADDR | RTM_NEWRULE | RTM_DELRULE
        | RTM_NEWNEXTHOP | RTM_DELNEXTHOP => Some(Event::AllRoutes),
        RTM_NEWNEIGH | RTM_DELNEIGH | RTM_NEWROUTE | RTM_DELROUTE => {
            let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) else {
                return Some(Event::Resync);
            };
            match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n)) => {
                    neighbour(&n, false)
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelNeighbour(n)) => {
                    neighbour(&n, true)
                }
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r),
                ) => route_prefix(&r),
                _ => None,
            }
        }
        _ => None,
    }
}

fn neighbour(n: &NeighbourMessage, deleted: bool) -> Option<Event> {
    let addr = n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    })?;
    // The state is one NUD_* bit; INCOMPLETE (0x01) and FAILED (0x20) carry no usable MAC.
    let state = u16::from(n.header.state);
    let usable = !deleted && state & (0x01 | 0x20) == 0;
    let mac = n
        .attributes
        .iter()
        .find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(l) => <[u8; 6]>::try_from(l.as_slice()).ok(),
            _ => None,
        })
        .filter(|_| usable);
    Some(Event::Neighbour {
        ifindex: n.header.ifindex,
        addr,
        mac,
    })
}

fn route_prefix(r: &RouteMessage) -> Option<Event> {
    let unspecified = match r.header.address_family {
        AddressFamily::Inet => IpAddr::from([0u8; 4]),
        AddressFamily::Inet6 => IpAddr::from([0u8; 16]),
        _ => return None,
    };
    let prefix = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
            _ => None,
        })
        .unwrap_or(unspecified);
    Some(Event::Routes {
        prefix,
        len: r.header.destination_prefix_length,
    })
}

/// The next hop in the kernel's answer to a route lookup.
pub fn route_of(r: &RouteMessage) -> Result<Route, String> {
    let mut route = Route {
        gateway: None,
        oif: 0,
    };
    for a in &r.attributes {
        match a {
            RouteAttribute::Oif(i) => route.oif = *i,
            RouteAttribute::Gateway(RouteAddress::Inet(g))
            | RouteAttribute::Via(RouteVia::Inet(g)) => route.gateway = Some(IpAddr::V4(*g)),
            RouteAttribute::Gateway(RouteAddress::Inet6(g))
            | RouteAttribute::Via(RouteVia::Inet6(g)) => route.gateway = Some(IpAddr::V6(*g)),
            _ => {}
        }
    }
    if route.oif == 0 {
        return Err("route without a device".into());
    }
    Ok(route)
}

fn header(flags: u16, seq: u32) -> NetlinkHeader {
    let mut h = NetlinkHeader::default();
    h.flags = flags;
    h.sequence_number = seq;
    h
}

/// Appends one serialised request to `buf`.
fn push(buf: &mut Vec<u8>, header: NetlinkHeader, msg: RouteNetlinkMessage) {
    let mut m = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    m.finalize();
    let at = buf.len();
    buf.resize(at + m.buffer_len(), 0);
    m.serialize(&mut buf[at..]);
}

/// The `ip route get ADDR` request.
fn route_request(addr: IpAddr) -> RouteNetlinkMessage {
    let mut m = RouteMessage::default();
    (m.header.address_family, m.header.destination_prefix_length) = match addr {
        IpAddr::V4(_) => (AddressFamily::Inet, 32),
        IpAddr::V6(_) => (AddressFamily::Inet6, 128),
    };
    m.attributes.push(RouteAttribute::Destination(addr.into()));
    RouteNetlinkMessage::GetRoute(m)
}

fn errno(code: i32) -> String {
    io::Error::from_raw_os_error(-code).to_string()
}

fn set_int_opt(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: setsockopt reads `size_of::<i32>()` bytes from a live local.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The socket that asks the kernel: dumps and route lookups.
pub struct Requests {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Requests {
    pub fn open() -> io::Result<Requests> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        let t = libc::timeval {
            tv_sec: REQUEST_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: setsockopt reads one timeval from a live local.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const t).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Requests {
            sock,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn recv(&mut self) -> io::Result<usize> {
        let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
        Ok(n.min(self.buf.len()))
    }

    /// Every neighbour entry of every interface (IPv4 and IPv6), as events. A dump that a
    /// concurrent change interrupted is read again (the events that follow it are applied
    /// on top, so a consistent dump is all that is needed).
    pub fn neighbours(&mut self) -> io::Result<Vec<Event>> {
        for _ in 0..3 {
            let seq = self.next_seq();
            let mut req = Vec::new();
            push(
                &mut req,
                header(NLM_F_REQUEST | NLM_F_DUMP, seq),
                RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()),
            );
            self.sock.send(&req, 0)?;
            let mut out = Vec::new();
            let mut interrupted = false;
            'dump: loop {
                let n = self.recv()?;
                for msg in messages(&self.buf[..n]) {
                    let Ok((kind, bytes)) = msg else {
                        return Err(io::Error::other("undecodable neighbour dump"));
                    };
                    let h =
                        NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).map(|m| m.header);
                    if h.as_ref().is_ok_and(|h| h.sequence_number != seq) {
                        continue;
                    }
                    interrupted |= h.is_ok_and(|h| h.flags & NLM_F_DUMP_INTR != 0);
                    match kind {
                        NLMSG_DONE => break 'dump,
                        NLMSG_ERROR => {
                            let code = bytes
                                .get(16..20)
                                .map_or(0, |b| i32::from_ne_bytes(b.try_into().expect("4")));
                            return Err(io::Error::from_raw_os_error(-code));
                        }
                        NLMSG_NOOP => {}
                        _ => {
                            if let Some(e @ Event::Neighbour { .. }) = event(kind, bytes) {
                                out.push(e);
                            }
                        }
                    }
                }
            }
            if !interrupted {
                return Ok(out);
            }
        }
        Err(io::Error::other(
            "the neighbour dump was interrupted three times",
        ))
    }

    /// The kernel's route to each of `addrs` (`ip route get`, policy routing included), in
    /// order. Lookups go [`WINDOW`] to a `send`: tens of thousands take tens of milliseconds.
    pub fn routes(&mut self, addrs: &[IpAddr]) -> Vec<Result<Route, String>> {
        let mut out = Vec::with_capacity(addrs.len());
        for chunk in addrs.chunks(WINDOW) {
            let first = self.seq.wrapping_add(1);
            let mut req = Vec::with_capacity(chunk.len() * 40);
            for a in chunk {
                let seq = self.next_seq();
                push(&mut req, header(NLM_F_REQUEST, seq), route_request(*a));
            }
            let mut got: Vec<Option<Result<Route, String>>> = vec![None; chunk.len()];
            let mut failed = self.sock.send(&req, 0).err();
            let mut left = if failed.is_some() { 0 } else { chunk.len() };
            while left > 0 {
                let n = match self.recv() {
                    Ok(n) => n,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                };
                for (_, bytes) in messages(&self.buf[..n]).flatten() {
                    let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) else {
                        continue;
                    };
                    // Answers to an earlier batch that timed out fall outside this one.
                    let Some(slot) =
                        got.get_mut(m.header.sequence_number.wrapping_sub(first) as usize)
                    else {
                        continue;
                    };
                    let answer = match m.payload {
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) => {
                            route_of(&r)
                        }
                        NetlinkPayload::Error(e) => Err(errno(e.raw_code())),
                        _ => continue,
                    };
                    if slot.replace(answer).is_none() {
                        left -= 1;
                    }
                }
            }
            out.extend(got.into_iter().map(|g| {
                g.unwrap_or_else(|| {
                    Err(match &failed {
                        Some(e) => format!("asking the kernel: {e}"),
                        None => "no answer from the kernel".to_string(),
                    })
                })
            }));
        }
        out
    }
}

/// A non-blocking socket subscribed to [`GROUPS`].
pub fn event_socket() -> io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    // Forcing the size needs CAP_NET_ADMIN; without it the kernel caps SO_RCVBUF instead.
    if set_int_opt(
        sock.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        EVENT_RCVBUF as i32,
    )
    .is_err()
    {
        sock.set_rx_buf_sz(EVENT_RCVBUF)?;
    }
    sock.bind_auto()?;
    for g in GROUPS {
        sock.add_membership(g)?;
    }
    sock.set_non_blocking(true)?;
    Ok(sock)
}

/// Reads what the event socket holds without waiting, into `out`: at most `max`
/// datagrams. Returns whether it emptied the socket.
pub fn drain(sock: &Socket, buf: &mut [u8], max: usize, out: &mut Vec<Event>) -> io::Result<bool> {
    for _ in 0..max {
        match sock.recv(&mut &mut buf[..], 0) {
            Ok(n) => parse(&buf[..n.min(buf.len())], out),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            // The kernel dropped events: the tables must be read again.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => out.push(Event::Resync),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// The event socket's receive buffer size.
pub const EVENT_BUF: usize = RECV_BUF;

#[cfg(test)]
pub(super) fn serialise(seq: u32, msg: RouteNetlinkMessage) -> Vec<u8> {
    let mut buf = Vec::new();
    push(&mut buf, header(0, seq), msg);
    buf
}
