//! The half-open check's sockets: the raw sockets that send SYNs and receive the replies
//! (behind a socket filter), the bound sockets that hold the source ports, and the route
//! lookup that names the source. No probe logic here: that is in the parent module.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;

use socket2::{Domain, MsgHdr, Protocol, SockAddr, SockFilter, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Receive buffer of each raw socket: replies arrive in bursts of one grid step's probes
/// (about a hundred at 10,000 checks a second), each a few hundred bytes of buffer.
const RCVBUF: usize = 1 << 20;

/// Bytes read of each segment: the IPv4 header with options (at most 60) and the TCP
/// header without them, with room to spare.
const READ_LEN: usize = 128;

/// A non-blocking raw TCP socket of one family, registered with the runtime, that
/// receives only segments to the held ports.
#[derive(Debug)]
pub(super) struct RawSocket {
    fd: AsyncFd<Socket>,
}

impl RawSocket {
    /// Opens the socket for IPv6 (`v6`) or IPv4 and lets only segments to `ports` reach it;
    /// must run within a Tokio runtime. Fails without CAP_NET_RAW.
    pub(super) fn open(v6: bool, ports: &[u16]) -> io::Result<Self> {
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        let s = Socket::new(domain, Type::RAW.nonblocking(), Some(Protocol::TCP))?;
        if v6 {
            // The kernel fills in the TCP checksum (pseudo-header included) at this offset.
            setsockopt_int(&s, libc::IPPROTO_IPV6, libc::IPV6_CHECKSUM, 16)?;
        }
        s.attach_filter(&port_filter(v6, ports))?;
        // Segments that arrived between socket(2) and the filter passed no filter: drop them.
        let mut buf = [MaybeUninit::<u8>::uninit(); 64];
        while s.recv(&mut buf).is_ok() {}
        if setsockopt_int(&s, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF as i32).is_err() {
            s.set_recv_buffer_size(RCVBUF)?;
        }
        // SAFETY: the AsyncFd owns the socket, so its descriptor stays open and the same for
        // the AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register(s) }.map_err(|e| e.into_parts().1)?;
        Ok(Self { fd })
    }

    /// Sends an IPv4 segment to `dst` from `src`. The kernel builds the IP header, but left
    /// to itself it would pick the source by its own route lookup, which can differ from
    /// the one [`source_for`] made (multipath routes hash ports and protocol; policy routing
    /// may match them), and the TCP checksum covers the source: so the source is given with
    /// IP_PKTINFO (a source no longer local fails the send).
    pub(super) async fn send_v4(
        &self,
        segment: &[u8],
        dst: Ipv4Addr,
        src: Ipv4Addr,
    ) -> io::Result<()> {
        // Raw sockets take no port in the address.
        let to = SockAddr::from(SocketAddr::from((dst, 0)));
        let control = pktinfo(src);
        let bufs = [IoSlice::new(segment)];
        // Built at each try: a MsgHdr holds raw pointers, which must not live across
        // an await of this (Send) future.
        self.fd
            .async_io(Interest::WRITABLE, |s| {
                let msg = MsgHdr::new()
                    .with_addr(&to)
                    .with_buffers(&bufs)
                    .with_control(&control.0);
                s.sendmsg(&msg, 0)
            })
            .await
            .map(drop)
    }

    /// Sends an IPv6 segment to `dst`; the kernel picks the source and fills in the
    /// checksum.
    pub(super) async fn send_v6(&self, segment: &[u8], dst: Ipv6Addr) -> io::Result<()> {
        // Raw sockets take no port in the address (the IPv6 one rejects one).
        let to = SockAddr::from(SocketAddr::from((dst, 0)));
        self.fd
            .async_io(Interest::WRITABLE, |s| s.send_to(segment, &to))
            .await
            .map(drop)
    }

    /// Waits until segments are queued, then reads up to `budget` of them, passing each
    /// (from the IPv4 header for IPv4, from the TCP header for IPv6) with its source to
    /// `on_segment`. Returns whether the budget ran out, in which case more may be queued
    /// (the readiness is kept: the next call does not wait); an error only if the socket
    /// can no longer be polled.
    pub(super) async fn recv_some(
        &self,
        budget: usize,
        mut on_segment: impl FnMut(&[u8], Option<IpAddr>),
    ) -> io::Result<bool> {
        let mut buf = [MaybeUninit::<u8>::uninit(); READ_LEN];
        let mut ready = self.fd.readable().await?;
        for _ in 0..budget {
            let (n, from) = match ready.try_io(|s| s.get_ref().recv_from(&mut buf)) {
                Ok(Ok(r)) => r,
                // Not readable any more: wait for the next wake-up.
                Err(_would_block) => return Ok(false),
                // Nothing a read can fail with here is worth stopping for.
                Ok(Err(_)) => continue,
            };
            // SAFETY: recv_from initialised the first `n` bytes (at most the buffer).
            let data = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
            on_segment(data, from.as_socket().map(|a| a.ip()));
        }
        Ok(true)
    }
}

/// A TCP socket bound to a free port and left unconnected: the port is ours, and no
/// connect(2) on this host will pick it as its source port. Dual-stack where IPv6 exists.
/// Returns the socket and its port.
pub(super) fn hold_port() -> io::Result<(Socket, u16)> {
    let bound = || {
        if let Ok(s) = Socket::new(Domain::IPV6, Type::STREAM, None) {
            s.set_only_v6(false)?;
            if s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)).into())
                .is_ok()
            {
                return Ok(s);
            }
        }
        let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())?;
        io::Result::Ok(s)
    };
    let s = bound()?;
    let port = s.local_addr()?.as_socket().map_or(0, |a| a.port());
    Ok((s, port))
}

/// The local address the kernel would send from to reach `dst` (a connected UDP socket's
/// name: no packet is sent).
pub(super) fn source_for(dst: SocketAddr) -> io::Result<Ipv4Addr> {
    let udp = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    udp.connect(&dst.into())?;
    match udp.local_addr()?.as_socket().map(|a| a.ip()) {
        Some(IpAddr::V4(a)) => Ok(a),
        _ => Err(io::Error::from(io::ErrorKind::AddrNotAvailable)),
    }
}

/// An int option that socket2 has no setter for (IPV6_CHECKSUM, SO_RCVBUFFORCE).
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
fn port_filter(v6: bool, ports: &[u16]) -> Vec<SockFilter> {
    let op = |code: u32, jt: u8, jf: u8, k: u32| SockFilter::new(code as u16, jt, jf, k);
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

/// The size of the IP_PKTINFO payload.
const PKTINFO_LEN: usize = size_of::<libc::in_pktinfo>();
/// The length of an IP_PKTINFO control message (header and payload, `cmsg_len`).
// SAFETY: CMSG_LEN is arithmetic on the length given.
const PKTINFO_CMSG_LEN: usize = unsafe { libc::CMSG_LEN(PKTINFO_LEN as u32) } as usize;
/// The room one IP_PKTINFO control message takes, with its trailing padding.
// SAFETY: CMSG_SPACE is arithmetic on the length given.
const PKTINFO_SPACE: usize = unsafe { libc::CMSG_SPACE(PKTINFO_LEN as u32) } as usize;

/// A control buffer holding one control message, aligned for its `cmsghdr`.
#[repr(C, align(8))]
struct Control([u8; PKTINFO_SPACE]);

const _: () = assert!(align_of::<libc::cmsghdr>() <= align_of::<Control>());

/// The control message that makes `src` a datagram's source (IP_PKTINFO's `ipi_spec_dst`,
/// see ip(7)).
fn pktinfo(src: Ipv4Addr) -> Control {
    let mut control = Control([0; PKTINFO_SPACE]);
    let info = libc::in_pktinfo {
        ipi_ifindex: 0,
        ipi_spec_dst: libc::in_addr {
            s_addr: u32::from(src).to_be(),
        },
        ipi_addr: libc::in_addr { s_addr: 0 },
    };
    let header = control.0.as_mut_ptr().cast::<libc::cmsghdr>();
    // SAFETY: the buffer is aligned for cmsghdr and PKTINFO_SPACE bytes long: room for the
    // header and, at CMSG_LEN(0), the payload. Field writes leave the zeroed padding alone.
    unsafe {
        (*header).cmsg_len = PKTINFO_CMSG_LEN as _;
        (*header).cmsg_level = libc::IPPROTO_IP;
        (*header).cmsg_type = libc::IP_PKTINFO;
        let data = control.0.as_mut_ptr().add(PKTINFO_CMSG_LEN - PKTINFO_LEN);
        std::ptr::write_unaligned(data.cast::<libc::in_pktinfo>(), info);
    }
    control
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::wire::{syn_segment, tcp_sum_v4};
    use super::*;

    /// A SYN sent with a source leaves from that source, not the one the kernel's route
    /// would pick, with a checksum that verifies; a source that is not local fails the send.
    #[tokio::test]
    async fn a_segment_leaves_from_the_source_given() {
        // The SYN goes to a held port, so that it passes the filter, and gets a reset.
        let (_held, port) = hold_port().unwrap();
        let raw = match RawSocket::open(false, &[port]) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                crate::testing::skip(
                    "raw socket test",
                    &format!("raw sockets need CAP_NET_RAW ({e})"),
                );
                return;
            }
            Err(e) => panic!("opening a raw socket: {e}"),
        };
        let (src, dst) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::LOCALHOST);
        assert_eq!(source_for((dst, port).into()).unwrap(), dst);
        let segment = syn_segment(Some(src), (dst, port).into(), 40000, 1);
        raw.send_v4(&segment, dst, src).await.unwrap();

        let mut seen = None;
        tokio::time::timeout(Duration::from_secs(2), async {
            while seen.is_none() {
                raw.recv_some(16, |data, _| {
                    let ihl = usize::from(data[0] & 0x0f) * 4;
                    if data.get(ihl..ihl + 2) == Some(&40000u16.to_be_bytes()[..]) {
                        seen = Some(data.to_vec());
                    }
                })
                .await
                .unwrap();
            }
        })
        .await
        .expect("the SYN came back over loopback");
        let seen = seen.unwrap();
        assert_eq!(seen[12..16], src.octets());
        let ihl = usize::from(seen[0] & 0x0f) * 4;
        assert_eq!(tcp_sum_v4(src, dst, &seen[ihl..]), 0xffff);

        let elsewhere = Ipv4Addr::new(192, 0, 2, 1);
        let segment = syn_segment(Some(elsewhere), (dst, port).into(), 40000, 1);
        assert!(raw.send_v4(&segment, dst, elsewhere).await.is_err());
    }
}
