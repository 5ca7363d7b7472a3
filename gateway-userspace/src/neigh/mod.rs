//! L2 next hops of backends, from the kernel's routing and neighbour tables, read over
//! rtnetlink. XDP_TX sends a frame back out of the interface it came in on, so a backend is
//! usable only if its route leaves through that interface: directly (l2dsr needs this: the
//! backend must be on the same segment) or via a router (ipip).
//!
//! The [`Resolver`] keeps the neighbour table (one dump, then kept current by neighbour
//! events) and each backend's route (one kernel lookup, kept until a route, rule, link or
//! address event may have changed it). The agent's loop waits on [`Resolver::changed`],
//! which returns when an event touches a next hop or a route in use; it then calls
//! [`Resolver::resolve`] and replans if the answer differs. `netlink` holds the sockets and
//! the wire format; [`Tables`] the state and every decision, without a kernel.
use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use log::warn;
use netlink_sys::Socket;
use tokio::io::unix::AsyncFd;

mod netlink;

pub use netlink::Event;

/// How often the tables are read again whole although no event said so. Events are the
/// source of truth and a lost one is noticed (the socket reports ENOBUFS and the tables are
/// read again at once); this is for changes the kernel does not announce at all, such as an
/// IPv6 redirect or a next-hop object's group being rebalanced. With 10,000 backends a
/// resync costs about 10,000 route lookups: tens of milliseconds a minute.
const RESYNC: Duration = Duration::from_secs(60);
/// Event datagrams read per wake-up, so that a storm of neighbour events cannot hold the
/// control loop; the rest is read on the next turn.
const DRAIN_MAX: usize = 1024;

/// Where packets for a backend go next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The router, or None when the backend is on-link.
    pub gateway: Option<IpAddr>,
    /// The interface the route leaves through.
    pub oif: u32,
}

impl Route {
    /// The address whose MAC the frame must carry.
    pub fn next_hop(&self, backend: IpAddr) -> IpAddr {
        self.gateway.unwrap_or(backend)
    }
}

/// Whether `addr` lies inside `prefix/len` (of the same family).
pub fn in_prefix(addr: IpAddr, prefix: IpAddr, len: u8) -> bool {
    let (a, p, bits) = match (addr, prefix) {
        (IpAddr::V4(a), IpAddr::V4(p)) => (u128::from(a.to_bits()), u128::from(p.to_bits()), 32),
        (IpAddr::V6(a), IpAddr::V6(p)) => (a.to_bits(), p.to_bits(), 128),
        _ => return false,
    };
    let len = u32::from(len).min(bits);
    len == 0 || (a ^ p) >> (bits - len) == 0
}

/// What the resolver knows, and how each event and each backend is judged.
#[derive(Debug, Default)]
pub struct Tables {
    /// Usable neighbour entries: (interface, address) -> MAC.
    neigh: HashMap<(u32, IpAddr), [u8; 6]>,
    /// Each backend's route as the kernel answered it; removed when a change may move it.
    routes: HashMap<IpAddr, Result<Route, String>>,
    /// Next hops of the last answer: only changes of these matter.
    hops: HashSet<(u32, IpAddr)>,
    /// Next hops of the last answer that have no MAC yet.
    unresolved: HashSet<IpAddr>,
    /// Events were lost: everything must be read again.
    resync: bool,
}

impl Tables {
    /// Takes in one event; returns whether some backend's answer may change.
    pub fn apply(&mut self, e: Event) -> bool {
        match e {
            Event::Neighbour { ifindex, addr, mac } => {
                let key = (ifindex, addr);
                let old = match mac {
                    Some(m) => self.neigh.insert(key, m),
                    None => self.neigh.remove(&key),
                };
                old != mac && self.hops.contains(&key)
            }
            Event::Routes { prefix, len } => {
                let before = self.routes.len();
                self.routes.retain(|a, _| !in_prefix(*a, prefix, len));
                self.routes.len() != before
            }
            Event::AllRoutes => {
                let any = !self.routes.is_empty();
                self.routes.clear();
                any
            }
            Event::Resync => {
                self.resync = true;
                true
            }
        }
    }

    /// Backends whose route must be looked up, each once.
    pub fn missing(&self, backends: &[(IpAddr, bool)]) -> Vec<IpAddr> {
        let mut m: Vec<IpAddr> = backends
            .iter()
            .map(|(a, _)| *a)
            .filter(|a| !self.routes.contains_key(a))
            .collect();
        m.sort_unstable();
        m.dedup();
        m
    }

    /// The MAC to use for each backend, or why there is none. `on_link_only` holds the
    /// backends of l2dsr services; `iface` (index `ifindex`) is the interface the program
    /// is attached to; `name_of` names other interfaces for the reasons.
    pub fn answer(
        &mut self,
        backends: &[(IpAddr, bool)],
        iface: &str,
        ifindex: Option<u32>,
        name_of: impl Fn(u32) -> String,
    ) -> HashMap<IpAddr, Result<[u8; 6], String>> {
        self.hops.clear();
        self.unresolved.clear();
        let mut out = HashMap::with_capacity(backends.len());
        for (addr, on_link_only) in backends {
            let result = match self.routes.get(addr) {
                None => Err("no route: not looked up yet".to_string()),
                Some(Err(e)) => Err(format!("no route: {e}")),
                Some(Ok(r)) if Some(r.oif) != ifindex => Err(format!(
                    "routed via {}, not {iface} where the program runs",
                    name_of(r.oif)
                )),
                Some(Ok(Route {
                    gateway: Some(g), ..
                })) if *on_link_only => Err(format!(
                    "l2dsr needs the backend on-link, but it is routed via {g}"
                )),
                Some(Ok(r)) => {
                    let hop = r.next_hop(*addr);
                    self.hops.insert((r.oif, hop));
                    match self.neigh.get(&(r.oif, hop)) {
                        Some(mac) => Ok(*mac),
                        None => {
                            self.unresolved.insert(hop);
                            Err(format!("no neighbour entry for {hop} yet (resolving)"))
                        }
                    }
                }
            };
            out.insert(*addr, result);
        }
        out
    }
}

/// Makes the kernel resolve `addr` by sending it one datagram (to the discard port).
pub fn trigger(addr: IpAddr) {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse()
    } else {
        "[::]:0".parse()
    }
    .expect("literal address");
    if let Ok(s) = UdpSocket::bind(bind) {
        let _ = s.send_to(b"", SocketAddr::new(addr, 9));
    }
}

fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: if_nametoindex reads a NUL-terminated string that outlives the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

fn ifname(index: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes, NUL included, into `buf`.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("interface #{index}");
    }
    // SAFETY: on success `buf` holds a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// The agent's two sockets: requests are answered in place, events wake the loop.
struct Netlink {
    requests: netlink::Requests,
    events: AsyncFd<Socket>,
}

impl Netlink {
    fn open() -> std::io::Result<Netlink> {
        // Subscribed before anything is read, so that no change falls between a read and
        // the events that follow it.
        // SAFETY: the socket owns its fd for as long as the AsyncFd that holds it lives.
        let events = unsafe { AsyncFd::register(netlink::event_socket()?) }?;
        Ok(Netlink {
            requests: netlink::Requests::open()?,
            events,
        })
    }
}

/// What the agent asks of next hops: [`Resolver`] answers from the kernel; the agent's
/// unit tests use a fixed table (`testing::FixedHops`).
pub trait NextHops {
    /// The MAC to use for each backend, or why there is none. The flag says the backend
    /// must be on-link (l2dsr); `iface` is the interface the program is attached to.
    fn resolve(
        &mut self,
        backends: &[(IpAddr, bool)],
        iface: &str,
    ) -> HashMap<IpAddr, Result<[u8; 6], String>>;
    /// Forgets what may be out of date (after a config reload).
    fn flush_routes(&mut self);
    /// Whether `resolve` has work that no `changed` will announce.
    fn due(&self) -> bool;
    /// Returns when an answer of `resolve` may have changed (cancel-safe).
    fn changed(&mut self) -> impl std::future::Future<Output = ()>;
}

/// Keeps the kernel's routes and neighbours for the agent (see the module's doc).
#[derive(Default)]
pub struct Resolver {
    tables: Tables,
    /// Opened by the first `resolve` (inside the agent's runtime); dropped after an error,
    /// and opened again by the next `resolve`.
    nl: Option<Netlink>,
    /// When the tables were last read whole.
    synced: Option<Instant>,
    buf: Vec<u8>,
}

impl Resolver {
    /// Opens the sockets if needed and reads the neighbour table whole; forgets the routes.
    fn sync(&mut self) -> Result<(), String> {
        let nl = match &mut self.nl {
            Some(nl) => nl,
            None => self
                .nl
                .insert(Netlink::open().map_err(|e| format!("opening rtnetlink: {e}"))?),
        };
        let dump = match nl.requests.neighbours() {
            Ok(d) => d,
            Err(e) => {
                self.nl = None;
                return Err(format!("reading the neighbour table: {e}"));
            }
        };
        self.tables.neigh.clear();
        self.tables.routes.clear();
        self.tables.resync = false;
        for e in dump {
            self.tables.apply(e);
        }
        self.synced = Some(Instant::now());
        Ok(())
    }
}

impl NextHops for Resolver {
    /// Reads everything again at the next `resolve` (after a config reload).
    fn flush_routes(&mut self) {
        self.tables.resync = true;
    }

    /// Whether `resolve` has work that no event will announce: next hops to provoke again,
    /// a resync that fell due, or sockets to open again.
    fn due(&self) -> bool {
        !self.tables.unresolved.is_empty()
            || self.tables.resync
            || self.nl.is_none()
            || self.synced.is_none_or(|t| t.elapsed() >= RESYNC)
    }

    /// The MAC to use for each backend, or why there is none. `on_link_only` holds the
    /// backends of l2dsr services; `iface` is the interface the program is attached to.
    /// Next hops without a MAC are provoked into resolution (a datagram to them).
    fn resolve(
        &mut self,
        backends: &[(IpAddr, bool)],
        iface: &str,
    ) -> HashMap<IpAddr, Result<[u8; 6], String>> {
        let stale = self.tables.resync
            || self.nl.is_none()
            || self.synced.is_none_or(|t| t.elapsed() >= RESYNC);
        if stale && let Err(e) = self.sync() {
            warn!("next hops: {e}");
            return backends.iter().map(|(a, _)| (*a, Err(e.clone()))).collect();
        }
        let nl = self.nl.as_mut().expect("opened by sync");
        let missing = self.tables.missing(backends);
        if !missing.is_empty() {
            let found = nl.requests.routes(&missing);
            self.tables.routes.extend(missing.into_iter().zip(found));
        }
        let out = self.tables.answer(backends, iface, ifindex(iface), ifname);
        for hop in &self.tables.unresolved {
            trigger(*hop);
        }
        out
    }

    /// Waits until an event may change some backend's answer (cancel-safe: events are
    /// applied before it returns, and it waits only when it applied none that matter).
    /// Pends forever while the sockets are closed; `due` then asks for a `resolve`.
    async fn changed(&mut self) {
        if self.buf.is_empty() {
            self.buf = vec![0; netlink::EVENT_BUF];
        }
        loop {
            let Some(nl) = &self.nl else {
                return std::future::pending().await;
            };
            let mut events = Vec::new();
            let failed = match nl.events.readable().await {
                Ok(mut guard) => {
                    match netlink::drain(guard.get_inner(), &mut self.buf, DRAIN_MAX, &mut events) {
                        Ok(true) => {
                            guard.clear_ready();
                            None
                        }
                        Ok(false) => None,
                        Err(e) => Some(e),
                    }
                }
                Err(e) => Some(e),
            };
            if let Some(e) = failed {
                warn!("next hops: reading rtnetlink events: {e}; opening it again");
                self.nl = None;
                return;
            }
            let mut relevant = false;
            for e in events {
                relevant |= self.tables.apply(e);
            }
            if relevant {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
