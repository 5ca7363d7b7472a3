//! The half-open TCP check: send a SYN from a raw socket, pass on the SYN-ACK, fail on a
//! reset or on silence.
//!
//! A full connect tells the prober nothing more: `connect(2)` succeeds the moment the
//! SYN-ACK arrives, before the final ACK is even sent, and a backend's application is not
//! involved in either case (its kernel completes handshakes on its own). What the full
//! connect adds is cost on both ends: the prober's socket and its state machine, a fourth
//! packet, and on the backend a child socket that is created, queued for `accept(2)`, and
//! torn down by the prober's reset (and logged by servers that log connections). Over one
//! veth pair at 10,000 probes a second, where the sender is billed for both ends' kernel
//! work, a bare loop of half-open probes cost 16% of a core in system time and one of
//! connects-and-resets 44% (measured by hand on this project's health bench bed; the bench
//! itself, `cargo xtask bench health`, measures the agent).
//!
//! The exchange: the SYN leaves from one of a few source ports that the prober holds bound
//! (and never listens on), so no local connection can use them; the backend answers with a
//! SYN-ACK (or a reset if nothing listens); the prober's kernel, finding no socket for the
//! SYN-ACK, answers it with a reset, which frees the backend's half-open entry. A raw
//! socket receives a copy of every TCP segment, so a socket filter passes only segments to
//! the held ports. A reply is matched by (backend, port, our port, acknowledged sequence).
//!
//! It needs CAP_NET_RAW; without it (or without IPv6), checks fall back to full connects.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Probe, ProbeFuture, ProbeResult, TcpProbe, io_reason, timeout_reason};

/// Source ports held for probes. Each check takes them in turn, and no two probes in flight
/// share a four-tuple (checks of one target in several services). A four-tuple's SYN always
/// carries the same sequence number: should the prober's reset of an earlier attempt be
/// lost (a firewall dropping it), the backend still holds that attempt in SYN-RECV for up
/// to a minute, and answers a SYN with the same sequence number with its SYN-ACK again,
/// where a new one would get no answer (checked by hand with tcpdump: a retransmitted SYN
/// got the SYN-ACK at once, one with another sequence number nothing).
const PORTS: usize = 8;

/// Replies read in one go before the reader lets other tasks run.
const READ_BUDGET: usize = 256;

/// TCP header flags.
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// The SYN sent: a 20-byte header and one option, MSS 1460 (what a real client's SYN
/// carries at least; some middleboxes drop SYNs without options).
const SYN_LEN: usize = 24;

/// Receive buffer of each raw socket: replies arrive in bursts of one grid step's probes
/// (about a hundred at 10,000 checks a second), each a few hundred bytes of buffer.
const RCVBUF: usize = 1 << 20;

/// What a backend answered to a SYN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// SYN-ACK: something listens.
    Accepted,
    /// Reset: nothing listens on the port.
    Refused,
}

/// A probe's four-tuple: the backend, its port, and our port.
type Tuple = (IpAddr, u16, u16);

/// Probes in flight by four-tuple: the sequence number of the SYN, and who waits.
type Pending = Arc<Mutex<HashMap<Tuple, (u32, oneshot::Sender<Answer>)>>>;

/// Counts for tests and diagnostics.
#[derive(Debug, Default)]
struct Counts {
    /// Segments read that answered a probe in flight.
    matched: AtomicU64,
    /// Segments read that answered nothing in flight (late, or not ours).
    unmatched: AtomicU64,
}

/// The raw sockets, held ports and probes in flight shared by every half-open check of one
/// prober. Dropping the last reference stops its reader tasks.
#[derive(Debug)]
pub struct SynSockets {
    v4: Arc<AsyncFd<Socket>>,
    /// `None` where IPv6 is unavailable: IPv6 checks then connect.
    v6: Option<Arc<AsyncFd<Socket>>>,
    ports: Vec<u16>,
    /// The sockets that hold `ports` (bound, never listening: a SYN-ACK to them finds no
    /// socket, so the kernel resets it).
    _held: Vec<Socket>,
    pending: Pending,
    /// Kept for the tests, which check that the filter keeps other traffic out.
    #[cfg_attr(not(test), allow(dead_code))]
    counts: Arc<Counts>,
    next: AtomicU64,
    /// Keys the sequence numbers and the checks' first turns (per agent: unpredictable).
    keys: std::collections::hash_map::RandomState,
    readers: Vec<JoinHandle<()>>,
}

impl Drop for SynSockets {
    fn drop(&mut self) {
        for r in &self.readers {
            r.abort();
        }
    }
}

impl SynSockets {
    /// Opens the raw sockets and holds the source ports; must run within a Tokio runtime.
    /// Fails without CAP_NET_RAW.
    pub fn open() -> io::Result<Arc<Self>> {
        let mut held = Vec::with_capacity(PORTS);
        let mut ports = Vec::with_capacity(PORTS);
        for _ in 0..PORTS {
            let s = hold_port()?;
            ports.push(s.local_addr()?.as_socket().map_or(0, |a| a.port()));
            held.push(s);
        }
        let pending: Pending = Arc::default();
        let counts = Arc::new(Counts::default());
        let v4 = Arc::new(register(raw_socket(false, &ports)?)?);
        let v6 = match raw_socket(true, &ports) {
            Ok(s) => Some(Arc::new(register(s)?)),
            Err(e) => {
                log::info!("IPv6 TCP checks will connect (no raw IPv6 socket: {e})");
                None
            }
        };
        let mut readers = vec![tokio::spawn(read_replies(
            Arc::clone(&v4),
            false,
            Arc::clone(&pending),
            Arc::clone(&counts),
        ))];
        if let Some(v6) = &v6 {
            readers.push(tokio::spawn(read_replies(
                Arc::clone(v6),
                true,
                Arc::clone(&pending),
                Arc::clone(&counts),
            )));
        }
        Ok(Arc::new(Self {
            v4,
            v6,
            ports,
            _held: held,
            pending,
            counts,
            next: AtomicU64::new(0),
            keys: Default::default(),
            readers,
        }))
    }

    /// The raw socket for a target's family, if there is one.
    fn socket(&self, v6: bool) -> Option<&Arc<AsyncFd<Socket>>> {
        if v6 { self.v6.as_ref() } else { Some(&self.v4) }
    }

    /// A random number.
    fn random(&self) -> u32 {
        self.keys
            .hash_one(self.next.fetch_add(1, Ordering::Relaxed)) as u32
    }

    /// Registers a probe of `target`: from the first held port, starting at the check's
    /// `turn`, whose four-tuple no probe in flight uses (moving the turn past it). Returns
    /// the four-tuple and the SYN's sequence number, or `None` if every port is in use.
    fn claim(
        &self,
        target: SocketAddr,
        turn: &AtomicU32,
        waiter: oneshot::Sender<Answer>,
    ) -> Option<(Tuple, u32)> {
        let first = turn.load(Ordering::Relaxed) as usize;
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let n = self.ports.len();
        let i = (0..n).find(|i| {
            let port = self.ports[(first + i) % n];
            !pending.contains_key(&(target.ip(), target.port(), port))
        })?;
        let tuple = (target.ip(), target.port(), self.ports[(first + i) % n]);
        // Keyed per agent, so unpredictable off-path (nobody can forge an answer), and the
        // same for every SYN of this four-tuple (see PORTS).
        let seq = self.keys.hash_one(tuple) as u32;
        pending.insert(tuple, (seq, waiter));
        turn.store(((first + i + 1) % n) as u32, Ordering::Relaxed);
        Some((tuple, seq))
    }
}

/// Registers a socket with the runtime.
fn register(s: Socket) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: the AsyncFd owns the socket, so its descriptor stays open and the same for
    // the AsyncFd's whole life.
    unsafe { AsyncFd::register(s) }.map_err(|e| e.into_parts().1)
}

/// A TCP socket bound to a free port and left unconnected: the port is ours, and no
/// connect(2) on this host will pick it as its source port. Dual-stack where IPv6 exists.
fn hold_port() -> io::Result<Socket> {
    if let Ok(s) = Socket::new(Domain::IPV6, Type::STREAM, None) {
        s.set_only_v6(false)?;
        if s.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)).into())
            .is_ok()
        {
            return Ok(s);
        }
    }
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())?;
    Ok(s)
}

/// A non-blocking raw TCP socket for one family that receives only segments to `ports`.
fn raw_socket(v6: bool, ports: &[u16]) -> io::Result<Socket> {
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    let s = Socket::new(domain, Type::RAW.nonblocking(), Some(Protocol::TCP))?;
    if v6 {
        // The kernel fills in the TCP checksum (pseudo-header included) at this offset.
        setsockopt_int(&s, libc::IPPROTO_IPV6, libc::IPV6_CHECKSUM, 16)?;
    }
    attach_filter(&s, &port_filter(v6, ports))?;
    // Segments that arrived between socket(2) and the filter passed no filter: drop them.
    let mut buf = [MaybeUninit::<u8>::uninit(); 64];
    while s.recv(&mut buf).is_ok() {}
    if setsockopt_int(&s, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF as i32).is_err() {
        s.set_recv_buffer_size(RCVBUF)?;
    }
    Ok(s)
}

fn setsockopt_int(s: &Socket, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: an int option with its true size, on a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A classic BPF program that keeps a segment only if its destination port is one of
/// `ports`. An IPv4 raw socket's filter sees the IP header first (the TCP header follows
/// at 4 * IHL); an IPv6 raw socket's sees the TCP header.
fn port_filter(v6: bool, ports: &[u16]) -> Vec<libc::sock_filter> {
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let mut prog = Vec::new();
    if v6 {
        prog.push(op(libc::BPF_LD | libc::BPF_H | libc::BPF_ABS, 0, 0, 2));
    } else {
        // X = 4 * (IHL), then the destination port two bytes into the TCP header.
        prog.push(op(libc::BPF_LDX | libc::BPF_B | libc::BPF_MSH, 0, 0, 0));
        prog.push(op(libc::BPF_LD | libc::BPF_H | libc::BPF_IND, 0, 0, 2));
    }
    let n = ports.len();
    for (i, port) in ports.iter().enumerate() {
        // On a match jump over the remaining tests and the reject to the accept.
        let jt = (n - i) as u8;
        prog.push(op(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            jt,
            0,
            (*port).into(),
        ));
    }
    prog.push(op(libc::BPF_RET | libc::BPF_K, 0, 0, 0));
    prog.push(op(libc::BPF_RET | libc::BPF_K, 0, 0, u32::MAX));
    prog
}

fn attach_filter(s: &Socket, prog: &[libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: the program outlives the call (the kernel copies it).
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&raw const fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads the segments that pass the filter and answers the probes they belong to.
async fn read_replies(fd: Arc<AsyncFd<Socket>>, v6: bool, pending: Pending, counts: Arc<Counts>) {
    let mut buf = [MaybeUninit::<u8>::uninit(); 128];
    loop {
        let Ok(mut ready) = fd.readable().await else {
            return;
        };
        for reads in 0.. {
            if reads == READ_BUDGET {
                // Still readable (the readiness is kept): come back after the others ran.
                drop(ready);
                tokio::task::yield_now().await;
                break;
            }
            let read = ready.try_io(|s| s.get_ref().recv_from(&mut buf));
            let (n, from) = match read {
                Ok(Ok(r)) => r,
                // Not readable any more: wait for the next wake-up.
                Err(_would_block) => break,
                // Nothing a read can fail with here is worth stopping for.
                Ok(Err(_)) => continue,
            };
            // SAFETY: recv_from initialised the first `n` bytes (at most the buffer).
            let data = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
            let Some((tuple, seq, answer)) =
                parse_reply(data, from.as_socket().map(|a| a.ip()), v6)
            else {
                counts.unmatched.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let waiter = {
                let mut pending = pending.lock().unwrap_or_else(|e| e.into_inner());
                match pending.get(&tuple) {
                    Some((s, _)) if *s == seq => pending.remove(&tuple).map(|(_, tx)| tx),
                    _ => None,
                }
            };
            match waiter {
                Some(tx) => {
                    counts.matched.fetch_add(1, Ordering::Relaxed);
                    let _ = tx.send(answer);
                }
                None => {
                    counts.unmatched.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The probe a received segment answers, and how. `data` starts at the IPv4 header for
/// IPv4 and at the TCP header for IPv6 (where `from` gives the source). Anything else, from
/// a plain ACK to a truncated header, is no answer.
fn parse_reply(data: &[u8], from: Option<IpAddr>, v6: bool) -> Option<(Tuple, u32, Answer)> {
    let (src, tcp) = if v6 {
        (from?, data)
    } else {
        let ihl = usize::from(*data.first()? & 0x0f) * 4;
        if data[0] >> 4 != 4 || ihl < 20 || data.get(9) != Some(&6) {
            return None;
        }
        let src: [u8; 4] = data.get(12..16)?.try_into().ok()?;
        (IpAddr::from(src), data.get(ihl..)?)
    };
    let tcp = tcp.get(..20)?;
    let be16 = |i: usize| u16::from_be_bytes([tcp[i], tcp[i + 1]]);
    let ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
    let flags = tcp[13];
    let answer = if flags & RST != 0 && flags & ACK != 0 {
        Answer::Refused
    } else if flags & (SYN | ACK | FIN | RST) == SYN | ACK {
        Answer::Accepted
    } else {
        return None;
    };
    Some(((src, be16(0), be16(2)), ack.wrapping_sub(1), answer))
}

/// A SYN from `src_port` to `dst` with sequence number `seq`. For IPv4 the checksum is
/// computed over the pseudo-header with `src`; for IPv6 (`src` is `None`) the kernel fills
/// it in.
fn syn_segment(src: Option<Ipv4Addr>, dst: SocketAddr, src_port: u16, seq: u32) -> [u8; SYN_LEN] {
    let mut s = [0u8; SYN_LEN];
    s[0..2].copy_from_slice(&src_port.to_be_bytes());
    s[2..4].copy_from_slice(&dst.port().to_be_bytes());
    s[4..8].copy_from_slice(&seq.to_be_bytes());
    s[12] = ((SYN_LEN / 4) as u8) << 4;
    s[13] = SYN;
    s[14..16].copy_from_slice(&64240u16.to_be_bytes());
    s[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]); // MSS 1460
    if let (Some(src), IpAddr::V4(dst)) = (src, dst.ip()) {
        let sum = tcp_sum_v4(src, dst, &s);
        s[16..18].copy_from_slice(&(!sum).to_be_bytes());
    }
    s
}

/// The folded one's-complement sum of a TCP segment of even length and its IPv4
/// pseudo-header (RFC 793): the checksum is its complement, and a segment whose checksum
/// is right sums to 0xffff.
fn tcp_sum_v4(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> u16 {
    let mut sum = 6 + segment.len() as u32;
    for pair in [&src.octets()[..], &dst.octets()[..], segment]
        .into_iter()
        .flat_map(|b| b.chunks(2))
    {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The local address the kernel would send from to reach `dst` (a connected UDP socket's
/// name: no packet is sent).
fn source_for(dst: SocketAddr) -> io::Result<Ipv4Addr> {
    let udp = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    udp.connect(&dst.into())?;
    match udp.local_addr()?.as_socket().map(|a| a.ip()) {
        Some(IpAddr::V4(a)) => Ok(a),
        _ => Err(io::Error::from(io::ErrorKind::AddrNotAvailable)),
    }
}

/// Sends an IPv4 segment to `dst` from `src`. The kernel builds the IP header, but left
/// to itself it would pick the source by its own route lookup, which can differ from the
/// one `source_for` made (multipath routes hash ports and protocol; policy routing may
/// match them), and the TCP checksum covers the source: so the source is given with
/// IP_PKTINFO (a source no longer local fails the send).
fn send_v4(s: &Socket, segment: &[u8], dst: Ipv4Addr, src: Ipv4Addr) -> io::Result<()> {
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(dst).to_be(),
        },
        sin_zero: [0; 8],
    };
    let info = libc::in_pktinfo {
        ipi_ifindex: 0,
        ipi_spec_dst: libc::in_addr {
            s_addr: u32::from(src).to_be(),
        },
        ipi_addr: libc::in_addr { s_addr: 0 },
    };
    let mut iov = libc::iovec {
        iov_base: segment.as_ptr().cast_mut().cast(),
        iov_len: segment.len(),
    };
    // Room for one control message, aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: every pointer in the header points at a live local of the size given, the
    // control buffer is aligned and larger than CMSG_SPACE(in_pktinfo) (32 bytes), and
    // CMSG_FIRSTHDR of a buffer that size is non-null.
    let rc = unsafe {
        let space = libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as usize;
        debug_assert!(space <= size_of_val(&control));
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&raw const to).cast_mut().cast();
        msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::IPPROTO_IP;
        (*cmsg).cmsg_type = libc::IP_PKTINFO;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in_pktinfo>(), info);
        libc::sendmsg(s.as_raw_fd(), &msg, 0)
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Removes a probe's entry when the probe ends, however it ends (answered, timed out or
/// aborted with its check), unless a later probe already holds the four-tuple.
struct InFlight<'a> {
    pending: &'a Pending,
    tuple: Tuple,
    seq: u32,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending
            .get(&self.tuple)
            .is_some_and(|(s, _)| *s == self.seq)
        {
            pending.remove(&self.tuple);
        }
    }
}

/// Passes when the target answers a SYN with a SYN-ACK within the timeout; one per check.
/// Targets of a family without a raw socket are checked with `fallback`.
#[derive(Debug)]
pub struct SynProbe {
    sockets: Arc<SynSockets>,
    fallback: TcpProbe,
    /// The IPv4 source for this check's target (0 until known), looked up again after a
    /// probe fails to send or times out: a changed route may have changed it.
    source: AtomicU32,
    /// Where the next probe starts looking for a free held port.
    turn: AtomicU32,
}

impl SynProbe {
    /// A probe sending from `sockets`; `fallback` serves families they lack.
    pub fn new(sockets: Arc<SynSockets>, fallback: TcpProbe) -> Self {
        let turn = sockets.random() % PORTS as u32;
        Self {
            sockets,
            fallback,
            source: AtomicU32::new(0),
            turn: AtomicU32::new(turn),
        }
    }

    async fn send(
        &self,
        fd: &AsyncFd<Socket>,
        target: SocketAddr,
        port: u16,
        seq: u32,
    ) -> io::Result<()> {
        match target.ip() {
            IpAddr::V4(dst) => {
                let mut known = self.source.load(Ordering::Relaxed);
                if known == 0 {
                    known = source_for(target)?.into();
                    self.source.store(known, Ordering::Relaxed);
                }
                let src = Ipv4Addr::from(known);
                let segment = syn_segment(Some(src), target, port, seq);
                fd.async_io(Interest::WRITABLE, |s| send_v4(s, &segment, dst, src))
                    .await
            }
            IpAddr::V6(_) => {
                let segment = syn_segment(None, target, port, seq);
                // Raw sockets take no port in the address (the IPv6 one rejects one).
                let to = SockAddr::from(SocketAddr::new(target.ip(), 0));
                fd.async_io(Interest::WRITABLE, |s| s.send_to(&segment, &to))
                    .await
                    .map(drop)
            }
        }
    }
}

impl Probe for SynProbe {
    fn probe(&self, target: SocketAddr, timeout: Duration) -> ProbeFuture<'_> {
        Box::pin(async move {
            let Some(fd) = self.sockets.socket(target.is_ipv6()) else {
                return self.fallback.probe(target, timeout).await;
            };
            let start = Instant::now();
            let (tx, rx) = oneshot::channel();
            let Some((tuple, seq)) = self.sockets.claim(target, &self.turn, tx) else {
                // As many probes of this target in flight as held ports: this one connects.
                return self.fallback.probe(target, timeout).await;
            };
            let _in_flight = InFlight {
                pending: &self.sockets.pending,
                tuple,
                seq,
            };
            let exchange = async {
                self.send(fd, target, tuple.2, seq).await?;
                rx.await.map_err(|_| io::Error::other("prober stopped"))
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(Ok(Answer::Accepted)) => ProbeResult::pass(start.elapsed(), "SYN-ACK"),
                Ok(Ok(Answer::Refused)) => ProbeResult::fail(start.elapsed(), "connection refused"),
                Ok(Err(e)) => {
                    self.source.store(0, Ordering::Relaxed);
                    ProbeResult::fail(start.elapsed(), io_reason(&e))
                }
                Err(_) => {
                    self.source.store(0, Ordering::Relaxed);
                    ProbeResult::fail(timeout, timeout_reason(timeout))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::SocketPool;
    use tokio::net::TcpListener;

    const TIMEOUT: Duration = Duration::from_secs(2);

    fn reply_v4(src: [u8; 4], sport: u16, dport: u16, ack: u32, flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[9] = 6;
        p[12..16].copy_from_slice(&src);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p[28..32].copy_from_slice(&ack.to_be_bytes());
        p[33] = flags;
        p
    }

    #[test]
    fn replies_are_parsed_and_everything_else_is_ignored() {
        let src = IpAddr::from([198, 18, 0, 11]);
        let tuple = (src, 80, 40000);
        type Case = (&'static str, Vec<u8>, Option<(Tuple, u32, Answer)>);
        let cases: [Case; 8] = [
            (
                "syn-ack",
                reply_v4([198, 18, 0, 11], 80, 40000, 1000, SYN | ACK),
                Some((tuple, 999, Answer::Accepted)),
            ),
            (
                "reset",
                reply_v4([198, 18, 0, 11], 80, 40000, 1000, RST | ACK),
                Some((tuple, 999, Answer::Refused)),
            ),
            (
                "plain ack",
                reply_v4([198, 18, 0, 11], 80, 40000, 1000, ACK),
                None,
            ),
            (
                "bare syn",
                reply_v4([198, 18, 0, 11], 80, 40000, 1000, SYN),
                None,
            ),
            (
                "reset without ack",
                reply_v4([198, 18, 0, 11], 80, 40000, 1000, RST),
                None,
            ),
            (
                "truncated",
                reply_v4([198, 18, 0, 11], 80, 40000, 1000, SYN | ACK)[..30].to_vec(),
                None,
            ),
            ("empty", vec![], None),
            (
                "not tcp",
                {
                    let mut p = reply_v4([198, 18, 0, 11], 80, 40000, 1000, SYN | ACK);
                    p[9] = 17;
                    p
                },
                None,
            ),
        ];
        for (name, packet, want) in cases {
            assert_eq!(parse_reply(&packet, None, false), want, "{name}");
        }
        // IPv4 options move the TCP header.
        let mut opts = reply_v4([198, 18, 0, 11], 80, 40000, 1000, SYN | ACK);
        opts[0] = 0x46;
        opts.splice(20..20, [1, 1, 1, 1]);
        assert_eq!(
            parse_reply(&opts, None, false),
            Some((tuple, 999, Answer::Accepted))
        );
        // A bad header length is no answer, not a panic.
        let mut bad = reply_v4([198, 18, 0, 11], 80, 40000, 1000, SYN | ACK);
        bad[0] = 0x4f;
        assert_eq!(parse_reply(&bad, None, false), None);
        // IPv6: the segment alone, the source from the socket.
        let v6: IpAddr = "fd00::11".parse().unwrap();
        let seg = reply_v4([0; 4], 80, 40000, 1000, SYN | ACK)[20..].to_vec();
        assert_eq!(
            parse_reply(&seg, Some(v6), true),
            Some(((v6, 80, 40000), 999, Answer::Accepted))
        );
        assert_eq!(parse_reply(&seg, None, true), None);
    }

    #[test]
    fn syn_checksum_matches_an_independent_computation() {
        // 10.0.0.1:40000 -> 10.0.0.2:80, seq 1: the checksum worked out separately (RFC 1071
        // over pseudo-header and segment, in another language) and checked on the wire
        // (`tcpdump -vv` reports the lab's probe SYNs "cksum ... (correct)").
        let s = syn_segment(
            Some(Ipv4Addr::new(10, 0, 0, 1)),
            "10.0.0.2:80".parse().unwrap(),
            40000,
            1,
        );
        assert_eq!(u16::from_be_bytes([s[16], s[17]]), 0xeca1);
    }

    #[test]
    fn syn_checksum_verifies() {
        let (src, dst) = (Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 64, 1));
        for (port, seq) in [(40000, 0), (1, u32::MAX), (65535, 0x1234_5678)] {
            let s = syn_segment(Some(src), SocketAddr::from((dst, 9000)), port, seq);
            assert_eq!(tcp_sum_v4(src, dst, &s), 0xffff, "port {port} seq {seq}");
            assert_eq!(s[13], SYN);
            assert_eq!(u32::from_be_bytes(s[4..8].try_into().unwrap()), seq);
        }
    }

    /// The shared sockets, or `None` (with the reason printed) without CAP_NET_RAW.
    fn open() -> Option<Arc<SynSockets>> {
        match SynSockets::open() {
            Ok(s) => Some(s),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                eprintln!("skipped: raw sockets need CAP_NET_RAW ({e})");
                None
            }
            Err(e) => panic!("opening raw sockets: {e}"),
        }
    }

    fn probe(sockets: &Arc<SynSockets>) -> SynProbe {
        SynProbe::new(Arc::clone(sockets), TcpProbe::new(SocketPool::new(4)))
    }

    /// A live listener passes without a connection ever reaching accept; a closed port is
    /// refused; both families; and unrelated TCP traffic never reaches the raw sockets.
    #[tokio::test]
    async fn half_open_probes_judge_live_and_closed_ports() {
        let Some(sockets) = open() else { return };
        let p = probe(&sockets);
        let mut listeners = vec![TcpListener::bind("127.0.0.1:0").await.unwrap()];
        match TcpListener::bind("[::1]:0").await {
            Ok(l) if sockets.v6.is_some() => listeners.push(l),
            other => eprintln!("no IPv6 here ({other:?}): IPv4 only"),
        }
        for listener in &listeners {
            let target = listener.local_addr().unwrap();
            for _ in 0..3 {
                let r = p.probe(target, TIMEOUT).await;
                assert!(r.ok, "{target}: {r:?}");
                assert_eq!(r.reason, "SYN-ACK");
            }
            // Nothing completed a handshake: there is nothing to accept.
            let accepted =
                tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
            assert!(accepted.is_err(), "{target}: a probe made a connection");
        }
        // Ordinary traffic, including to the same listener, is filtered out in the kernel.
        let target = listeners[0].local_addr().unwrap();
        let _conn = tokio::net::TcpStream::connect(target).await.unwrap();
        let _ = listeners[0].accept().await.unwrap();
        let matched = sockets.counts.matched.load(Ordering::Relaxed);
        for listener in listeners {
            let target = listener.local_addr().unwrap();
            drop(listener);
            let r = p.probe(target, TIMEOUT).await;
            assert!(!r.ok, "{target}: {r:?}");
            assert_eq!(r.reason, "connection refused", "{target}");
        }
        let counts = &sockets.counts;
        assert!(counts.matched.load(Ordering::Relaxed) > matched);
        assert_eq!(counts.unmatched.load(Ordering::Relaxed), 0);
        assert!(sockets.pending.lock().unwrap().is_empty());
    }

    /// Many probes at once, to several listeners from every held port, each answered by
    /// its own reply.
    #[tokio::test]
    async fn concurrent_probes_are_matched_to_their_replies() {
        let Some(sockets) = open() else { return };
        let mut targets = Vec::new();
        let mut listeners = Vec::new();
        for _ in 0..4 {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            targets.push(l.local_addr().unwrap());
            listeners.push(l);
        }
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let probes: Vec<_> = (0..200).map(|_| probe(&sockets)).collect();
        let runs = probes.iter().enumerate().map(|(i, p)| {
            let target = if i % 5 == 4 { closed } else { targets[i % 4] };
            async move { (target, p.probe(target, TIMEOUT).await) }
        });
        let results = futures_join_all(runs).await;
        for (target, r) in results {
            assert_eq!(r.ok, target != closed, "{target}: {r:?}");
        }
        assert!(sockets.pending.lock().unwrap().is_empty());
    }

    /// Checks of one target running at once never share a four-tuple: each takes a held
    /// port no other probe in flight uses, and past that many the probe connects instead.
    #[tokio::test]
    async fn probes_of_one_target_at_once_take_distinct_ports() {
        let Some(sockets) = open() else { return };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();
        let probes: Vec<_> = (0..PORTS + 3).map(|_| probe(&sockets)).collect();
        let results = futures_join_all(probes.iter().map(|p| p.probe(target, TIMEOUT))).await;
        let mut reasons: Vec<_> = results.iter().map(|r| r.reason.to_string()).collect();
        reasons.sort();
        let mut want = vec!["SYN-ACK".to_owned(); PORTS];
        want.extend(vec!["connected".to_owned(); 3]);
        want.sort();
        assert_eq!(reasons, want, "{results:?}");
        // One check alone walks the ports in turn.
        let p = probe(&sockets);
        let mut used = std::collections::BTreeSet::new();
        for _ in 0..PORTS {
            let before = p.turn.load(Ordering::Relaxed);
            assert!(p.probe(target, TIMEOUT).await.ok);
            used.insert(before);
        }
        assert_eq!(used.len(), PORTS, "{used:?}");
        assert!(sockets.pending.lock().unwrap().is_empty());
    }

    /// Every SYN of a four-tuple carries the same sequence number, and different four-tuples
    /// different ones.
    #[tokio::test]
    async fn a_four_tuple_always_carries_the_same_sequence_number() {
        let Some(sockets) = open() else { return };
        let target: SocketAddr = "198.18.0.11:80".parse().unwrap();
        let turn = AtomicU32::new(0);
        let mut seen = HashMap::new();
        for _ in 0..3 * PORTS {
            let (tx, _rx) = oneshot::channel();
            let (tuple, seq) = sockets.claim(target, &turn, tx).unwrap();
            sockets.pending.lock().unwrap().remove(&tuple);
            if let Some(before) = seen.insert(tuple, seq) {
                assert_eq!(before, seq, "{tuple:?}");
            }
        }
        assert_eq!(seen.len(), PORTS);
        let distinct: std::collections::HashSet<_> = seen.values().collect();
        assert_eq!(distinct.len(), PORTS);
    }

    /// Runs futures concurrently on this task (no extra crate for one test).
    async fn futures_join_all<F: std::future::Future>(
        futs: impl Iterator<Item = F>,
    ) -> Vec<F::Output> {
        let mut set = Vec::new();
        for f in futs {
            set.push(Box::pin(f));
        }
        let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut done = true;
            for (i, f) in set.iter_mut().enumerate() {
                if out[i].is_none() {
                    match f.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => out[i] = Some(v),
                        std::task::Poll::Pending => done = false,
                    }
                }
            }
            if done {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await;
        out.into_iter().map(Option::unwrap).collect()
    }
}
