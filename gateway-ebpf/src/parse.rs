//! Header parsing: the frame's own headers, and the flow an ICMP error quotes. Every read
//! is bounds-checked against `data_end`; anything the program cannot parse far enough to
//! know it belongs to a service is passed to the stack untouched and counted by layer
//! (`Err(STAT_*)`), so a malformed packet is never forwarded.
//!
//! A packet that parses far enough may still be one a careful router would drop (lengths
//! that disagree, a bad IPv4 checksum, source routing, a martian source, ...). Parsing
//! notes each such defect in `Packet::defects`; whether it matters is decided once the
//! packet is known to be for a VIP (`Packet::refusal`), so that traffic for the host is
//! never judged here.
use core::mem::MaybeUninit;

use aya_ebpf::{helpers::bpf_xdp_load_bytes, programs::XdpContext};
use gateway_common::{
    CHECK_ICMP_CHECKSUM, CHECK_IPV4_CHECKSUM, CHECK_IPV4_OPTIONS, CHECK_IPV6_EXT_ORDER,
    CHECK_LENGTHS, CHECK_MAC, CHECK_MARTIAN_SOURCE, CHECK_SOURCE_ROUTE, CHECK_UDP_ZERO_CHECKSUM,
    FAMILY_V4, FAMILY_V6, FlowKey, MAX_LOCAL_MACS, PROTO_TCP, PROTO_UDP, STAT_DROP_BAD_LENGTH,
    STAT_DROP_ICMP_CHECKSUM, STAT_DROP_IPV4_CHECKSUM, STAT_DROP_IPV4_OPTIONS,
    STAT_DROP_IPV6_EXT_ORDER, STAT_DROP_MARTIAN_SOURCE, STAT_DROP_SOURCE_ROUTE,
    STAT_DROP_TCP_OFFSET, STAT_DROP_UDP_LENGTH, STAT_DROP_UDP_ZERO_CHECKSUM, STAT_FRAGMENT,
    STAT_PARSE_L2, STAT_PARSE_L3, STAT_PARSE_L4, STAT_PASS_NOT_IP, STAT_PASS_NOT_OUR_MAC,
    STAT_PASS_NOT_VIP, ServiceKey, Settings,
};
use gateway_ebpf::hdr::*;

use crate::{
    VALIDATE, csum,
    maps::ZERO,
    packet::{at, copy, frame_len, ld16, rd8, rd16},
};

/// IPv6 extension headers walked before giving up (counted as an L3 parse error).
pub const MAX_EXT_HEADERS: usize = 8;
/// Extension headers walked in the packet an ICMPv6 error quotes.
pub const MAX_QUOTED_EXT_HEADERS: usize = 4;

/// The first validity counter; a defect is noted as bit `stat - FIRST_DEFECT`.
const FIRST_DEFECT: u32 = STAT_DROP_BAD_LENGTH;

/// The defect bit of a validity counter.
#[inline(always)]
const fn defect(stat: u32) -> u32 {
    1 << (stat - FIRST_DEFECT)
}

/// The operator's check (`CHECK_*`) that refuses a defect, by validity counter.
#[inline(always)]
fn check_of(stat: u32) -> u32 {
    match stat {
        STAT_DROP_IPV4_CHECKSUM => CHECK_IPV4_CHECKSUM,
        STAT_DROP_IPV4_OPTIONS => CHECK_IPV4_OPTIONS,
        STAT_DROP_SOURCE_ROUTE => CHECK_SOURCE_ROUTE,
        STAT_DROP_IPV6_EXT_ORDER => CHECK_IPV6_EXT_ORDER,
        STAT_DROP_UDP_ZERO_CHECKSUM => CHECK_UDP_ZERO_CHECKSUM,
        STAT_DROP_MARTIAN_SOURCE => CHECK_MARTIAN_SOURCE,
        STAT_DROP_ICMP_CHECKSUM => CHECK_ICMP_CHECKSUM,
        _ => CHECK_LENGTHS,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp,
    Udp,
    /// An ICMP destination-unreachable / ICMPv6 unreachable or packet-too-big.
    IcmpError,
}

/// A flow key on the stack, written as five 8-byte words. `FlowKey` is only 2-byte aligned
/// and built field by field; the BPF backend then split it into single bytes shuffled
/// through the stack, and zeroed or copied it with calls to byte-wise `memset`/`memcpy`.
#[repr(C)]
pub union KeyBuf {
    words: [u64; 5],
    key: FlowKey,
}
const _: () = assert!(core::mem::size_of::<KeyBuf>() == core::mem::size_of::<FlowKey>());

impl KeyBuf {
    /// A key with ports zero. Addresses are given as two 8-byte halves in memory order.
    #[inline(always)]
    pub fn new(src: [[u8; 8]; 2], dst: [[u8; 8]; 2], proto: u8, family: u8) -> KeyBuf {
        KeyBuf {
            words: [
                u64::from_ne_bytes(src[0]),
                u64::from_ne_bytes(src[1]),
                u64::from_ne_bytes(dst[0]),
                u64::from_ne_bytes(dst[1]),
                // sport_be, dport_be, proto, family, _pad.
                u64::from_ne_bytes([0, 0, 0, 0, proto, family, 0, 0]),
            ],
        }
    }

    #[inline(always)]
    pub fn key(&self) -> &FlowKey {
        // SAFETY: both fields are plain bytes of the same size; any bit pattern is a key.
        unsafe { &self.key }
    }

    #[inline(always)]
    pub fn key_mut(&mut self) -> &mut FlowKey {
        // SAFETY: as in `key`.
        unsafe { &mut self.key }
    }

    /// The key as it lies in memory.
    #[inline(always)]
    pub fn words(&self) -> [u64; 5] {
        // SAFETY: as in `key`.
        unsafe { self.words }
    }

    /// The destination address as two 8-byte words (for the service key).
    #[inline(always)]
    pub fn dst_words(&self) -> [u64; 2] {
        // SAFETY: as in `key`.
        unsafe { [self.words[2], self.words[3]] }
    }
}

/// A service key on the stack, written as words for the same reason as `KeyBuf`.
#[repr(C)]
pub union SvcKeyBuf {
    words: SvcWords,
    key: ServiceKey,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct SvcWords {
    addr: [u64; 2],
    /// port_be, proto, family.
    rest: u32,
}

impl SvcKeyBuf {
    /// The service a flow is addressed to; `dst` is the key's destination as words.
    #[inline(always)]
    pub fn new(dst: [u64; 2], key: &FlowKey) -> SvcKeyBuf {
        let port = key.dport_be.to_ne_bytes();
        SvcKeyBuf {
            words: SvcWords {
                addr: dst,
                rest: u32::from_ne_bytes([port[0], port[1], key.proto, key.family]),
            },
        }
    }

    #[inline(always)]
    pub fn key(&self) -> &ServiceKey {
        // SAFETY: the key's 20 bytes are all written by `new`; any bit pattern is a key.
        unsafe { &self.key }
    }
}

/// An IPv4 address as the two 8-byte halves of a 16-byte key field.
#[inline(always)]
pub fn v4_halves(a: [u8; 4]) -> [[u8; 8]; 2] {
    [[a[0], a[1], a[2], a[3], 0, 0, 0, 0], [0; 8]]
}

/// An IPv6 address (16 bytes of packet at `p + i`) as two 8-byte halves.
#[inline(always)]
pub fn v6_halves(p: *const u8, i: usize) -> [[u8; 8]; 2] {
    [copy(p, i), copy(p, i + 8)]
}

/// What the program needs of a frame besides its flow key. The key is written into the
/// caller's buffer instead of travelling in here: returned by value, the 40 bytes were
/// split into byte-sized pieces and shuffled through the stack on every path.
pub struct Packet {
    /// Ethernet header length: 14, or 18 with one 802.1Q tag.
    pub l2_len: usize,
    /// Offset of the L4 header.
    pub l4_off: usize,
    /// IP packet length according to its header (frames may carry padding after it).
    pub l3_len: u32,
    pub l4: L4,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    pub tcp_flags: u8,
    /// IPv4 TOS / IPv6 traffic class.
    pub tos: u8,
    /// IPv4 don't-fragment bit.
    pub df: bool,
    /// Defects found while parsing, one bit per validity counter (see `defect`).
    pub defects: u32,
    /// The transport's length by the IP header (set for ICMP errors).
    pub l4_len: u32,
}

impl Packet {
    /// The validity counter of the first defect whose check is on (`checks_off` holds the
    /// operator's `CHECK_*` bits), if any: the packet must not be forwarded.
    #[inline(always)]
    pub fn refusal(&self, checks_off: u32) -> Option<u32> {
        if !VALIDATE || self.defects == 0 {
            return None;
        }
        let mut stat = FIRST_DEFECT;
        while stat <= STAT_DROP_ICMP_CHECKSUM {
            if self.defects & defect(stat) != 0 && checks_off & check_of(stat) == 0 {
                return Some(stat);
            }
            stat += 1;
        }
        None
    }
}

/// Whether an IPv4 source is one no packet may carry: "this network" (0/8), loopback
/// (127/8), multicast (224/4), reserved and limited broadcast (240/4).
#[inline(always)]
fn martian_v4(src: [u8; 4]) -> bool {
    src[0] == 0 || src[0] == 127 || src[0] >= 224
}

/// Whether an IPv6 source is one no packet may carry: unspecified, loopback, multicast,
/// IPv4-mapped. `hi`/`lo` are the address's two halves in memory order.
#[inline(always)]
fn martian_v6(hi: [u8; 8], lo: [u8; 8]) -> bool {
    if hi[0] == 0xff {
        return true;
    }
    if u64::from_ne_bytes(hi) != 0 {
        return false;
    }
    let lo_hi = u32::from_ne_bytes([lo[0], lo[1], lo[2], lo[3]]);
    let lo_lo = u32::from_be_bytes([lo[4], lo[5], lo[6], lo[7]]);
    // ::, ::1, and ::ffff:a.b.c.d.
    (lo_hi == 0 && lo_lo <= 1) || lo_hi == u32::from_ne_bytes([0, 0, 0xff, 0xff])
}

/// Defects of an IPv4 header's options (`hlen` > 20): malformed, or source routing.
/// RFC 791: type 0 ends the list, type 1 is one byte, every other option has a length
/// byte of at least 2 that stays within the header.
///
/// The options are copied to the stack and walked byte by byte with the next option's
/// offset as state: a walk over packet memory with the offset as cursor left the verifier
/// a different packet range on every path, and cost most of its instruction budget.
#[inline(always)]
fn ipv4_options(ctx: &XdpContext, l2: usize, hlen: usize) -> u32 {
    let len = hlen.wrapping_sub(IPV4_LEN);
    if len == 0 || len > IPV4_MAX_OPTIONS_LEN {
        return 0;
    }
    // 64 bytes, and the length masked where the verifier sees it: it bounds what the
    // helper may write by the mask (4..=64), not by the compiler's check above.
    let mut opts = [0u8; 64];
    let n = ((core::hint::black_box(len) as u32).wrapping_sub(4) & 0x3c) + 4;
    // SAFETY: the helper writes `n` <= 64 bytes into `opts`.
    let read = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            (l2 + IPV4_LEN) as u32,
            opts.as_mut_ptr() as *mut core::ffi::c_void,
            n,
        )
    };
    if read != 0 {
        return defect(STAT_DROP_IPV4_OPTIONS);
    }
    let mut next = 0;
    let mut i = 0;
    while i < IPV4_MAX_OPTIONS_LEN {
        if i >= len {
            return 0;
        }
        if i == next {
            let ty = opts[i];
            if ty == IPOPT_END {
                return 0;
            }
            if ty == IPOPT_NOP {
                next = i + 1;
            } else {
                let olen = usize::from(*opts.get(i + 1).unwrap_or(&0));
                if i + 1 >= len || olen < 2 || i + olen > len {
                    return defect(STAT_DROP_IPV4_OPTIONS);
                }
                if ty == IPOPT_LSRR || ty == IPOPT_SSRR {
                    return defect(STAT_DROP_SOURCE_ROUTE);
                }
                next = i + olen;
            }
        }
        i += 1;
    }
    0
}

/// Whether an IPv4 header's checksum is right: its 16-bit words sum to 0xffff.
#[inline(always)]
fn ipv4_checksum_ok(ctx: &XdpContext, ip: *const u8, l2: usize, hlen: usize) -> bool {
    // Summed as 16-bit words in the machine's byte order: the one's-complement sum comes
    // out byte-swapped (RFC 1071 2(B)), and 0xffff is 0xffff either way.
    let mut sum = 0u64;
    let mut i = 0;
    while i < IPV4_LEN {
        sum += u64::from(ld16(ip, i));
        i += 2;
    }
    while i < IPV4_LEN + IPV4_MAX_OPTIONS_LEN {
        if i >= hlen {
            break;
        }
        // Options come in 4-byte words.
        let Some(w) = at(ctx, l2 + i, 4) else {
            return false;
        };
        sum += u64::from(ld16(w, 0)) + u64::from(ld16(w, 2));
        i += 4;
    }
    csum::fold(sum) == 0xffff
}

/// Parses the frame and writes its 5-tuple into `buf` (for ICMP: addresses and protocol
/// only, ports zero). On `Ok` the whole key is initialised. `Err(stat)`: pass, count `stat`.
#[inline(always)]
pub fn parse(ctx: &XdpContext, s: &Settings, buf: &mut MaybeUninit<KeyBuf>) -> Result<Packet, u32> {
    let eth = at(ctx, 0, ETH_LEN).ok_or(STAT_PARSE_L2)?;
    let mut ethertype = rd16(eth, ETH_PROTO);
    let mut l2_len = ETH_LEN;
    if ethertype == ETH_P_8021Q {
        let vlan = at(ctx, 0, ETH_LEN + VLAN_LEN).ok_or(STAT_PARSE_L2)?;
        ethertype = rd16(vlan, VLAN_INNER_PROTO);
        l2_len = ETH_LEN + VLAN_LEN;
    }
    if ethertype != ETH_P_IP && ethertype != ETH_P_IPV6 {
        return Err(STAT_PASS_NOT_IP);
    }
    if VALIDATE && !for_us(eth, s) {
        return Err(STAT_PASS_NOT_OUR_MAC);
    }
    let mut pkt = match ethertype {
        ETH_P_IP => parse_v4(ctx, l2_len, buf),
        ETH_P_IPV6 => parse_v6(ctx, l2_len, buf),
        _ => Err(STAT_PASS_NOT_IP),
    }?;
    if VALIDATE {
        pkt.defects = opaque(pkt.defects);
    }
    Ok(pkt)
}

/// `v`, as a number the verifier cannot know. Each defect found makes the defects a
/// different constant on each path through the parser; if a branch on them later made the
/// verifier track them exactly, no two of those paths could share a state and verification
/// would not finish. XOR with a word read from a map (always 0, but to the verifier "some
/// number") gives "some number" on every path, so the parser's paths merge as if the
/// defects were not there. (A store and a load back through a map did the same, at the
/// cost of the load waiting on the store on every packet.)
#[inline(always)]
fn opaque(v: u32) -> u32 {
    match ZERO.get(0) {
        Some(z) => v ^ *z,
        // Cannot happen (one entry, index 0).
        None => v,
    }
}

/// Whether the frame is addressed to one of this host's MACs (when the agent has set any)
/// from a unicast source, or the operator turned the check off. A frame for another host
/// reaches us when a switch floods it or the NIC is promiscuous; forwarding it would
/// duplicate someone else's traffic.
#[inline(always)]
fn for_us(eth: *const u8, s: &Settings) -> bool {
    if s.checks_off & CHECK_MAC != 0 {
        return true;
    }
    if rd8(eth, ETH_SRC) & 1 != 0 {
        return false;
    }
    // Compared as three 2-byte words (the MACs in SETTINGS are 2-byte aligned too).
    let mac = |i: usize, k: usize| ld16(s.macs[i].as_ptr(), k);
    if mac(0, 0) | mac(0, 2) | mac(0, 4) == 0 {
        return true;
    }
    let dst = [ld16(eth, ETH_DST), ld16(eth, ETH_DST + 2), ld16(eth, ETH_DST + 4)];
    let mut i = 0;
    while i < MAX_LOCAL_MACS {
        if mac(i, 0) == dst[0] && mac(i, 2) == dst[1] && mac(i, 4) == dst[2] {
            return true;
        }
        i += 1;
    }
    false
}

/// The IPv4 header length from its first byte, if the version is 4 and IHL at least 5.
#[inline(always)]
fn ipv4_header_len(ver_ihl: u8) -> Option<usize> {
    if ver_ihl >> 4 != 4 || ver_ihl & 0xf < 5 {
        return None;
    }
    Some(usize::from(ver_ihl & 0xf) * 4)
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, l2: usize, buf: &mut MaybeUninit<KeyBuf>) -> Result<Packet, u32> {
    let ip = at(ctx, l2, IPV4_LEN).ok_or(STAT_PARSE_L3)?;
    let hlen = ipv4_header_len(rd8(ip, IPV4_VER_IHL)).ok_or(STAT_PARSE_L3)?;
    let tot_len = usize::from(rd16(ip, IPV4_TOT_LEN));
    if tot_len < hlen || l2 + tot_len > frame_len(ctx) {
        return Err(STAT_PARSE_L3);
    }
    let frag = rd16(ip, IPV4_FRAG_OFF);
    if frag & IPV4_MF_OFFSET != 0 {
        return Err(STAT_FRAGMENT);
    }
    let src: [u8; 4] = copy(ip, IPV4_SRC);
    let mut defects = 0;
    if VALIDATE {
        // Also a packet from its own destination (a "land" attack: from the VIP to itself).
        if martian_v4(src) || src == copy::<4>(ip, IPV4_DST) {
            defects |= defect(STAT_DROP_MARTIAN_SOURCE);
        }
        if !ipv4_checksum_ok(ctx, ip, l2, hlen) {
            defects |= defect(STAT_DROP_IPV4_CHECKSUM);
        }
        if hlen > IPV4_LEN {
            defects |= ipv4_options(ctx, l2, hlen);
        }
    }
    let key = buf
        .write(KeyBuf::new(
            v4_halves(src),
            v4_halves(copy(ip, IPV4_DST)),
            rd8(ip, IPV4_PROTO),
            FAMILY_V4,
        ))
        .key_mut();
    let mut pkt = Packet {
        l2_len: l2,
        l4_off: l2 + hlen,
        l3_len: tot_len as u32,
        l4: L4::Tcp,
        family: FAMILY_V4,
        tcp_flags: 0,
        tos: rd8(ip, IPV4_TOS),
        df: frag & IPV4_DF != 0,
        defects,
        l4_len: 0,
    };
    parse_l4(ctx, &mut pkt, key, PROTO_ICMP, tot_len - hlen)?;
    Ok(pkt)
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, l2: usize, buf: &mut MaybeUninit<KeyBuf>) -> Result<Packet, u32> {
    let ip = at(ctx, l2, IPV6_LEN).ok_or(STAT_PARSE_L3)?;
    let b0 = rd8(ip, IPV6_VER_TC);
    if b0 >> 4 != 6 {
        return Err(STAT_PARSE_L3);
    }
    let payload_len = usize::from(rd16(ip, IPV6_PAYLOAD_LEN));
    if l2 + IPV6_LEN + payload_len > frame_len(ctx) {
        return Err(STAT_PARSE_L3);
    }
    let mut nh = rd8(ip, IPV6_NEXT_HEADER);
    let tos = ((b0 & 0x0f) << 4) | (rd8(ip, IPV6_TC_FLOW) >> 4);
    let src = v6_halves(ip, IPV6_SRC);
    let mut defects = 0;
    if VALIDATE && (martian_v6(src[0], src[1]) || src == v6_halves(ip, IPV6_DST)) {
        defects |= defect(STAT_DROP_MARTIAN_SOURCE);
    }

    let start = l2 + IPV6_LEN;
    let mut off = start;
    let mut i = 0;
    while i < MAX_EXT_HEADERS {
        match nh {
            NH_FRAGMENT => {
                // An atomic fragment (offset 0, no more fragments) is a whole packet
                // (RFC 6946); any other fragment is passed.
                let ext = at(ctx, off, FRAG_LEN).ok_or(STAT_PARSE_L3)?;
                if rd16(ext, FRAG_OFF_M) & FRAG_OFFSET_M_MASK != 0 {
                    return Err(STAT_FRAGMENT);
                }
                nh = rd8(ext, EXT_NEXT_HEADER);
                off += FRAG_LEN;
            }
            NH_HOP_BY_HOP | NH_ROUTING | NH_DEST_OPTS => {
                let ext = at(ctx, off, 4).ok_or(STAT_PARSE_L3)?;
                if VALIDATE && nh == NH_HOP_BY_HOP && i != 0 {
                    defects |= defect(STAT_DROP_IPV6_EXT_ORDER);
                }
                if VALIDATE
                    && nh == NH_ROUTING
                    && (rd8(ext, RH_SEGMENTS_LEFT) != 0 || rd8(ext, RH_TYPE) == RH_TYPE_0)
                {
                    defects |= defect(STAT_DROP_SOURCE_ROUTE);
                }
                nh = rd8(ext, EXT_NEXT_HEADER);
                off += (usize::from(rd8(ext, EXT_LEN)) + 1) * EXT_UNIT;
            }
            _ => break,
        }
        i += 1;
    }
    match nh {
        NH_HOP_BY_HOP | NH_ROUTING | NH_DEST_OPTS | NH_FRAGMENT => return Err(STAT_PARSE_L3),
        _ => {}
    }
    // Zero is a jumbogram's (RFC 2675), never VIP traffic; the extension headers must fit.
    let ext_len = off - start;
    let l4_len = if payload_len == 0 || ext_len > payload_len {
        if VALIDATE {
            defects |= defect(STAT_DROP_BAD_LENGTH);
        }
        0
    } else {
        payload_len - ext_len
    };
    let key = buf
        .write(KeyBuf::new(src, v6_halves(ip, IPV6_DST), nh, FAMILY_V6))
        .key_mut();
    let mut pkt = Packet {
        l2_len: l2,
        l4_off: off,
        l3_len: (IPV6_LEN + payload_len) as u32,
        l4: L4::Tcp,
        family: FAMILY_V6,
        tcp_flags: 0,
        tos,
        df: true,
        defects,
        l4_len: 0,
    };
    parse_l4(ctx, &mut pkt, key, PROTO_ICMPV6, l4_len)?;
    Ok(pkt)
}

#[inline(always)]
/// The transport header: ports, flags and kind into `key` and `pkt`, and its defects
/// against `l4_len`, the transport's length by the IP header.
fn parse_l4(
    ctx: &XdpContext,
    pkt: &mut Packet,
    key: &mut FlowKey,
    icmp_proto: u8,
    l4_len: usize,
) -> Result<(), u32> {
    let off = pkt.l4_off;
    match key.proto {
        PROTO_TCP => {
            let tcp = at(ctx, off, TCP_LEN).ok_or(STAT_PARSE_L4)?;
            key.sport_be = u16::from_ne_bytes(copy(tcp, L4_SPORT));
            key.dport_be = u16::from_ne_bytes(copy(tcp, L4_DPORT));
            pkt.tcp_flags = rd8(tcp, TCP_FLAGS);
            pkt.l4 = L4::Tcp;
            let doff = usize::from(rd8(tcp, TCP_DOFF) >> 4) * 4;
            if VALIDATE {
                if l4_len < TCP_LEN {
                    pkt.defects |= defect(STAT_DROP_BAD_LENGTH);
                } else if doff < TCP_LEN || doff > l4_len {
                    pkt.defects |= defect(STAT_DROP_TCP_OFFSET);
                }
            }
        }
        PROTO_UDP => {
            let udp = at(ctx, off, UDP_LEN).ok_or(STAT_PARSE_L4)?;
            key.sport_be = u16::from_ne_bytes(copy(udp, L4_SPORT));
            key.dport_be = u16::from_ne_bytes(copy(udp, L4_DPORT));
            pkt.l4 = L4::Udp;
            if VALIDATE {
                if l4_len < UDP_LEN {
                    pkt.defects |= defect(STAT_DROP_BAD_LENGTH);
                } else if usize::from(rd16(udp, UDP_LENGTH)) != l4_len {
                    pkt.defects |= defect(STAT_DROP_UDP_LENGTH);
                }
            }
            if VALIDATE && pkt.family == FAMILY_V6 && rd16(udp, UDP_CSUM) == 0 {
                pkt.defects |= defect(STAT_DROP_UDP_ZERO_CHECKSUM);
            }
        }
        p if p == icmp_proto => {
            let icmp = at(ctx, off, ICMP_LEN).ok_or(STAT_PARSE_L4)?;
            let ty = rd8(icmp, ICMP_TYPE);
            // ICMP dest-unreachable (incl. frag-needed) and time-exceeded; ICMPv6
            // unreachable, packet-too-big and time-exceeded.
            let error = if icmp_proto == PROTO_ICMP {
                ty == ICMP_DEST_UNREACH || ty == ICMP_TIME_EXCEEDED
            } else {
                ty == ICMPV6_DEST_UNREACH
                    || ty == ICMPV6_PACKET_TOO_BIG
                    || ty == ICMPV6_TIME_EXCEEDED
            };
            if !error {
                return Err(STAT_PASS_NOT_VIP);
            }
            pkt.l4 = L4::IcmpError;
            pkt.l4_len = l4_len as u32;
            if VALIDATE && l4_len < ICMP_LEN {
                pkt.defects |= defect(STAT_DROP_BAD_LENGTH);
            }
        }
        _ => return Err(STAT_PASS_NOT_VIP),
    }
    Ok(())
}

/// Notes in `pkt` an ICMP error whose checksum is wrong; `key` is the packet's own flow
/// (its addresses make ICMPv6's pseudo-header). Checked apart from parsing, for errors
/// only: a message-long loop inside the parser would be walked for every path through it.
#[inline(always)]
pub fn check_icmp(ctx: &XdpContext, pkt: &mut Packet, key: &FlowKey) {
    let proto = if pkt.family == FAMILY_V4 {
        PROTO_ICMP
    } else {
        PROTO_ICMPV6
    };
    let len = pkt.l4_len as usize;
    if VALIDATE && len >= ICMP_LEN && !icmp_checksum_ok(ctx, pkt.l4_off, len, key, proto) {
        pkt.defects = opaque(pkt.defects | defect(STAT_DROP_ICMP_CHECKSUM));
    }
}

/// Whether an ICMP (or ICMPv6, with its pseudo-header) message of `len` bytes at `off` has
/// the right checksum: its words and the checksum sum to 0xffff (RFC 1071). Summed four
/// bytes at a time, which folds to the same 16-bit sum.
#[inline(always)]
fn icmp_checksum_ok(
    ctx: &XdpContext,
    off: usize,
    len: usize,
    key: &FlowKey,
    icmp_proto: u8,
) -> bool {
    if len > ICMP_MAX_CHECKED {
        return false;
    }
    let mut sum = 0u64;
    if icmp_proto == PROTO_ICMPV6 {
        // Pseudo-header (RFC 8200 8.1): addresses, upper-layer length, next header.
        let mut i = 0;
        while i < 16 {
            sum += u64::from(u16::from_be_bytes([key.src[i], key.src[i + 1]]));
            sum += u64::from(u16::from_be_bytes([key.dst[i], key.dst[i + 1]]));
            i += 2;
        }
        sum += len as u64 + u64::from(PROTO_ICMPV6);
    }
    // Whole 64-byte chunks straight from the packet, then the rest through a zeroed stack
    // buffer (zeros do not change the sum). One path per chunk: a loop that also decided
    // each chunk's length would give the verifier two paths per chunk, 2^20 in all.
    let mut c = 0;
    while c < ICMP_MAX_CHECKED / 64 {
        if (c + 1) * 64 > len {
            break;
        }
        let Some(p) = at(ctx, off + c * 64, 64) else {
            return false;
        };
        let mut w = 0;
        while w < 64 {
            sum += u64::from(u32::from_be_bytes(copy(p, w)));
            w += 4;
        }
        c += 1;
    }
    let rest = len - c * 64;
    if rest > 0 {
        let mut buf = [0u8; 64];
        // 1..=64 where the verifier sees it (see `ipv4_options`).
        let n = ((core::hint::black_box(rest) as u32).wrapping_sub(1) & 63) + 1;
        // SAFETY: the helper writes `n` <= 64 bytes into `buf`.
        let read = unsafe {
            bpf_xdp_load_bytes(
                ctx.ctx,
                (off + c * 64) as u32,
                buf.as_mut_ptr() as *mut core::ffi::c_void,
                n,
            )
        };
        if read != 0 {
            return false;
        }
        let mut w = 0;
        while w < 64 {
            sum += u64::from(u32::from_be_bytes([
                buf[w],
                buf[w + 1],
                buf[w + 2],
                buf[w + 3],
            ]));
            w += 4;
        }
    }
    csum::fold(sum) == 0xffff
}

/// Writes into `buf` the flow (as the client sent it) that an ICMP error is about. The error
/// quotes a packet the backend sent from the VIP to the client, so the quoted source is the
/// VIP. Returns the quoted transport header's offset. On `Err` the key's contents are
/// unspecified.
#[inline(always)]
pub fn quoted_flow(ctx: &XdpContext, pkt: &Packet, buf: &mut KeyBuf) -> Result<usize, u32> {
    let inner = pkt.l4_off + ICMP_LEN;
    let l4;
    let key;
    if pkt.family == FAMILY_V4 {
        let ip = at(ctx, inner, IPV4_LEN).ok_or(STAT_PARSE_L4)?;
        let hlen = ipv4_header_len(rd8(ip, IPV4_VER_IHL)).ok_or(STAT_PARSE_L4)?;
        *buf = KeyBuf::new(
            v4_halves(copy(ip, IPV4_DST)),
            v4_halves(copy(ip, IPV4_SRC)),
            rd8(ip, IPV4_PROTO),
            FAMILY_V4,
        );
        key = buf.key_mut();
        l4 = inner + hlen;
    } else {
        let ip = at(ctx, inner, IPV6_LEN).ok_or(STAT_PARSE_L4)?;
        if rd8(ip, IPV6_VER_TC) >> 4 != 6 {
            return Err(STAT_PARSE_L4);
        }
        // The quote may carry extension headers of its own (the backend's packet).
        let mut nh = rd8(ip, IPV6_NEXT_HEADER);
        let mut off = inner + IPV6_LEN;
        let mut i = 0;
        while i < MAX_QUOTED_EXT_HEADERS {
            match nh {
                NH_HOP_BY_HOP | NH_ROUTING | NH_DEST_OPTS => {
                    let ext = at(ctx, off, 2).ok_or(STAT_PARSE_L4)?;
                    nh = rd8(ext, EXT_NEXT_HEADER);
                    off += (usize::from(rd8(ext, EXT_LEN)) + 1) * EXT_UNIT;
                }
                NH_FRAGMENT => {
                    let ext = at(ctx, off, FRAG_LEN).ok_or(STAT_PARSE_L4)?;
                    // Only a first fragment quotes ports.
                    if rd16(ext, FRAG_OFF_M) & FRAG_OFFSET_MASK != 0 {
                        return Err(STAT_FRAGMENT);
                    }
                    nh = rd8(ext, EXT_NEXT_HEADER);
                    off += FRAG_LEN;
                }
                _ => break,
            }
            i += 1;
        }
        *buf = KeyBuf::new(
            v6_halves(ip, IPV6_DST),
            v6_halves(ip, IPV6_SRC),
            nh,
            FAMILY_V6,
        );
        key = buf.key_mut();
        l4 = off;
    }
    if key.proto != PROTO_TCP && key.proto != PROTO_UDP {
        return Err(STAT_PASS_NOT_VIP);
    }
    // The quote runs from the backend: its source port is the client's destination port.
    let ports = at(ctx, l4, 4).ok_or(STAT_PARSE_L4)?;
    key.dport_be = u16::from_ne_bytes(copy(ports, L4_SPORT));
    key.sport_be = u16::from_ne_bytes(copy(ports, L4_DPORT));
    Ok(l4)
}
