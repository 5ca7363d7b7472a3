//! Header parsing. Every read is bounds-checked against `data_end`; anything the program
//! cannot parse far enough to know it belongs to a service is passed to the stack untouched
//! and counted by layer (`Err(STAT_*)`), so a malformed packet is never forwarded.
use aya_ebpf::programs::XdpContext;
use gateway_common::{
    FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP, STAT_FRAGMENT, STAT_PARSE_L2,
    STAT_PARSE_L3, STAT_PARSE_L4, STAT_PASS_NOT_IP, STAT_PASS_NOT_VIP,
};

pub const ETH_LEN: usize = 14;
pub const VLAN_LEN: usize = 4;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const IPV4_LEN: usize = 20;
pub const IPV6_LEN: usize = 40;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;
/// IPv6 extension headers walked before giving up (counted as an L3 parse error).
pub const MAX_EXT_HEADERS: usize = 4;
const NH_HOP_BY_HOP: u8 = 0;
const NH_ROUTING: u8 = 43;
const NH_FRAGMENT: u8 = 44;
const NH_DEST_OPTS: u8 = 60;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// Offsets are masked to this: no header the program reads lies further in (Ethernet, VLAN,
/// IPv6 and four extension headers of at most 2 KiB each). The mask gives the verifier a
/// bound it cannot lose when the compiler spills an offset.
const OFF_MASK: usize = 0x3fff;

/// `len` bytes at `off` from the start of the frame, if the frame has them.
#[inline(always)]
pub fn at(ctx: &XdpContext, off: usize, len: usize) -> Option<*mut u8> {
    let off = off & OFF_MASK;
    let start = ctx.data();
    if start + off + len > ctx.data_end() {
        return None;
    }
    Some((start + off) as *mut u8)
}

/// Frame length in bytes.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

/// Frame length as a plain number. The compiler would otherwise fold `n - frame_len` into
/// `(n + data) - data_end`, arithmetic on `data_end` that the verifier rejects.
#[inline(always)]
pub fn frame_len_opaque(ctx: &XdpContext) -> usize {
    core::hint::black_box(ctx.data_end() - ctx.data())
}

#[inline(always)]
pub fn rd8(p: *const u8, i: usize) -> u8 {
    // SAFETY: callers obtained `p` from `at` with a length covering `i`.
    unsafe { *p.add(i) }
}

#[inline(always)]
pub fn rd16(p: *const u8, i: usize) -> u16 {
    u16::from_be_bytes([rd8(p, i), rd8(p, i + 1)])
}

#[inline(always)]
pub fn copy<const N: usize>(p: *const u8, i: usize) -> [u8; N] {
    // SAFETY: as for `rd8`; unaligned because packet fields are.
    unsafe { core::ptr::read_unaligned(p.add(i) as *const [u8; N]) }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp,
    Udp,
    /// An ICMP destination-unreachable / ICMPv6 unreachable or packet-too-big.
    IcmpError,
}

pub struct Packet {
    /// Ethernet header length: 14, or 18 with one 802.1Q tag.
    pub l2_len: usize,
    /// Offset of the L4 header.
    pub l4_off: usize,
    /// IP packet length according to its header (frames may carry padding after it).
    pub l3_len: u32,
    pub l4: L4,
    /// The 5-tuple (for ICMP: addresses and protocol only).
    pub key: FlowKey,
    pub tcp_flags: u8,
    /// IPv4 TOS / IPv6 traffic class.
    pub tos: u8,
    /// IPv4 don't-fragment bit.
    pub df: bool,
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Packet, u32> {
    let eth = at(ctx, 0, ETH_LEN).ok_or(STAT_PARSE_L2)?;
    let mut ethertype = rd16(eth, 12);
    let mut l2_len = ETH_LEN;
    if ethertype == ETH_P_8021Q {
        let vlan = at(ctx, 0, ETH_LEN + VLAN_LEN).ok_or(STAT_PARSE_L2)?;
        ethertype = rd16(vlan, 16);
        l2_len = ETH_LEN + VLAN_LEN;
    }
    match ethertype {
        ETH_P_IP => parse_v4(ctx, l2_len),
        ETH_P_IPV6 => parse_v6(ctx, l2_len),
        _ => Err(STAT_PASS_NOT_IP),
    }
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, l2: usize) -> Result<Packet, u32> {
    let ip = at(ctx, l2, IPV4_LEN).ok_or(STAT_PARSE_L3)?;
    let ver_ihl = rd8(ip, 0);
    if ver_ihl >> 4 != 4 || ver_ihl & 0xf < 5 {
        return Err(STAT_PARSE_L3);
    }
    let hlen = usize::from(ver_ihl & 0xf) * 4;
    let tot_len = usize::from(rd16(ip, 2));
    if tot_len < hlen || l2 + tot_len > frame_len(ctx) {
        return Err(STAT_PARSE_L3);
    }
    let frag = rd16(ip, 6);
    let mut key = FlowKey {
        family: FAMILY_V4,
        proto: rd8(ip, 9),
        ..FlowKey::default()
    };
    let src: [u8; 4] = copy(ip, 12);
    let dst: [u8; 4] = copy(ip, 16);
    key.src[..4].copy_from_slice(&src);
    key.dst[..4].copy_from_slice(&dst);
    if frag & 0x3fff != 0 {
        // More-fragments set or a non-zero offset.
        return Err(STAT_FRAGMENT);
    }
    let mut pkt = Packet {
        l2_len: l2,
        l4_off: l2 + hlen,
        l3_len: tot_len as u32,
        l4: L4::Tcp,
        key,
        tcp_flags: 0,
        tos: rd8(ip, 1),
        df: frag & 0x4000 != 0,
    };
    parse_l4(ctx, &mut pkt, PROTO_ICMP)?;
    Ok(pkt)
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, l2: usize) -> Result<Packet, u32> {
    let ip = at(ctx, l2, IPV6_LEN).ok_or(STAT_PARSE_L3)?;
    let b0 = rd8(ip, 0);
    if b0 >> 4 != 6 {
        return Err(STAT_PARSE_L3);
    }
    let payload_len = usize::from(rd16(ip, 4));
    if l2 + IPV6_LEN + payload_len > frame_len(ctx) {
        return Err(STAT_PARSE_L3);
    }
    let mut nh = rd8(ip, 6);
    let key = FlowKey {
        family: FAMILY_V6,
        src: copy(ip, 8),
        dst: copy(ip, 24),
        ..FlowKey::default()
    };
    let tos = ((b0 & 0x0f) << 4) | (rd8(ip, 1) >> 4);

    let mut off = l2 + IPV6_LEN;
    let mut i = 0;
    while i < MAX_EXT_HEADERS {
        match nh {
            NH_FRAGMENT => return Err(STAT_FRAGMENT),
            NH_HOP_BY_HOP | NH_ROUTING | NH_DEST_OPTS => {
                let ext = at(ctx, off, 2).ok_or(STAT_PARSE_L3)?;
                nh = rd8(ext, 0);
                off += (usize::from(rd8(ext, 1)) + 1) * 8;
            }
            _ => break,
        }
        i += 1;
    }
    match nh {
        NH_FRAGMENT => return Err(STAT_FRAGMENT),
        NH_HOP_BY_HOP | NH_ROUTING | NH_DEST_OPTS => return Err(STAT_PARSE_L3),
        _ => {}
    }
    let mut pkt = Packet {
        l2_len: l2,
        l4_off: off,
        l3_len: (IPV6_LEN + payload_len) as u32,
        l4: L4::Tcp,
        key: FlowKey { proto: nh, ..key },
        tcp_flags: 0,
        tos,
        df: true,
    };
    parse_l4(ctx, &mut pkt, PROTO_ICMPV6)?;
    Ok(pkt)
}

#[inline(always)]
fn parse_l4(ctx: &XdpContext, pkt: &mut Packet, icmp_proto: u8) -> Result<(), u32> {
    let off = pkt.l4_off;
    match pkt.key.proto {
        PROTO_TCP => {
            let tcp = at(ctx, off, 20).ok_or(STAT_PARSE_L4)?;
            pkt.key.sport_be = u16::from_ne_bytes(copy(tcp, 0));
            pkt.key.dport_be = u16::from_ne_bytes(copy(tcp, 2));
            pkt.tcp_flags = rd8(tcp, 13);
            pkt.l4 = L4::Tcp;
        }
        PROTO_UDP => {
            let udp = at(ctx, off, 8).ok_or(STAT_PARSE_L4)?;
            pkt.key.sport_be = u16::from_ne_bytes(copy(udp, 0));
            pkt.key.dport_be = u16::from_ne_bytes(copy(udp, 2));
            pkt.l4 = L4::Udp;
        }
        p if p == icmp_proto => {
            let icmp = at(ctx, off, 8).ok_or(STAT_PARSE_L4)?;
            let ty = rd8(icmp, 0);
            // ICMP dest-unreachable (incl. frag-needed); ICMPv6 unreachable, packet-too-big.
            let error = if icmp_proto == PROTO_ICMP {
                ty == 3
            } else {
                ty == 1 || ty == 2
            };
            if !error {
                return Err(STAT_PASS_NOT_VIP);
            }
            pkt.l4 = L4::IcmpError;
        }
        _ => return Err(STAT_PASS_NOT_VIP),
    }
    Ok(())
}
