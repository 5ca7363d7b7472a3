//! ICMP: relaying errors about VIP flows to the backend that owns the flow, and answering
//! packets too big to encapsulate with frag-needed / packet-too-big.
use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use gateway_common::{
    FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP, STAT_DROP_INTERNAL, STAT_PARSE_L4,
    STAT_PASS_NOT_VIP, STAT_TOO_BIG,
};

use crate::{
    csum,
    maps::count,
    parse::{
        ETH_LEN, IPV4_LEN, IPV6_LEN, KeyBuf, Packet, VLAN_LEN, at, copy, frame_len,
        frame_len_opaque, rd8, v4_halves, v6_halves,
    },
};

const ICMP_LEN: usize = 8;
/// Bytes of the offending packet quoted in a too-big answer: its headers and first payload
/// bytes, enough for the client to find the socket (RFC 792 asks for header + 8 bytes,
/// RFC 4443 for as much as fits in 1280).
pub const QUOTE_LEN: usize = 128;
const REPLY_TTL: u8 = 64;

/// Writes into `key` the flow (as the client sent it) that an ICMP error is about. The error
/// quotes a packet the backend sent from the VIP to the client, so the quoted source is the
/// VIP. On `Err` the key's contents are unspecified.
#[inline(always)]
pub fn quoted_flow(ctx: &XdpContext, pkt: &Packet, buf: &mut KeyBuf) -> Result<(), u32> {
    let inner = pkt.l4_off + ICMP_LEN;
    let l4;
    let key;
    if pkt.family == FAMILY_V4 {
        let ip = at(ctx, inner, IPV4_LEN).ok_or(STAT_PARSE_L4)?;
        let ver_ihl = rd8(ip, 0);
        if ver_ihl >> 4 != 4 || ver_ihl & 0xf < 5 {
            return Err(STAT_PARSE_L4);
        }
        *buf = KeyBuf::new(
            v4_halves(copy(ip, 16)),
            v4_halves(copy(ip, 12)),
            rd8(ip, 9),
            FAMILY_V4,
        );
        key = buf.key_mut();
        l4 = inner + usize::from(ver_ihl & 0xf) * 4;
    } else {
        let ip = at(ctx, inner, IPV6_LEN).ok_or(STAT_PARSE_L4)?;
        if rd8(ip, 0) >> 4 != 6 {
            return Err(STAT_PARSE_L4);
        }
        *buf = KeyBuf::new(v6_halves(ip, 24), v6_halves(ip, 8), rd8(ip, 6), FAMILY_V6);
        key = buf.key_mut();
        l4 = inner + IPV6_LEN;
    }
    if key.proto != PROTO_TCP && key.proto != PROTO_UDP {
        return Err(STAT_PASS_NOT_VIP);
    }
    let ports = at(ctx, l4, 4).ok_or(STAT_PARSE_L4)?;
    key.dport_be = u16::from_ne_bytes(copy(ports, 0));
    key.sport_be = u16::from_ne_bytes(copy(ports, 2));
    Ok(())
}

/// Turns the frame into an ICMP too-big answer to its sender, from the VIP, quoting its
/// start; `mtu` is the largest inner packet the path takes; `key` is the frame's own flow.
/// A separate BPF function: it is rare, and keeping it out of line keeps the hot path's
/// stack small.
#[inline(never)]
pub fn too_big(ctx: &XdpContext, pkt: &Packet, key: &FlowKey, mtu: u32) -> u32 {
    let ok = if pkt.family == FAMILY_V6 {
        too_big_v6(ctx, pkt, key, mtu)
    } else {
        too_big_v4(ctx, pkt, key, mtu)
    };
    if ok {
        count(STAT_TOO_BIG);
        xdp_action::XDP_TX
    } else {
        count(STAT_DROP_INTERNAL);
        xdp_action::XDP_DROP
    }
}

/// Makes room for `hdr` bytes of new headers after L2, keeps `QUOTE_LEN` bytes of the old
/// IP packet after them, and writes the L2 header back with its MACs swapped.
#[inline(always)]
fn reshape(ctx: &XdpContext, l2: usize, hdr: usize) -> bool {
    if frame_len(ctx) < l2 + QUOTE_LEN {
        return false;
    }
    // SAFETY: the helper validates the delta against the frame's headroom.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(hdr as i32)) } != 0 {
        return false;
    }
    let want = (l2 + hdr + QUOTE_LEN) as i32;
    let delta = want - frame_len_opaque(ctx) as i32;
    // SAFETY: as above; the delta only shrinks the frame.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return false;
    }
    let Some(p) = at(ctx, 0, hdr + ETH_LEN + VLAN_LEN) else {
        return false;
    };
    let dst: [u8; 6] = copy(p, hdr);
    let src: [u8; 6] = copy(p, hdr + 6);
    let rest: [u8; 2 + VLAN_LEN] = copy(p, hdr + 12);
    // SAFETY: `p` covers the first 18 bytes; with a VLAN tag `rest` is the tag and the
    // inner ethertype, without it the ethertype and 4 bytes that the IP header overwrites.
    unsafe {
        core::ptr::write_unaligned(p as *mut [u8; 6], src);
        core::ptr::write_unaligned(p.add(6) as *mut [u8; 6], dst);
        if l2 == ETH_LEN + VLAN_LEN {
            core::ptr::write_unaligned(p.add(12) as *mut [u8; 2 + VLAN_LEN], rest);
        } else {
            core::ptr::write_unaligned(p.add(12) as *mut [u8; 2], [rest[0], rest[1]]);
        }
    }
    true
}

#[inline(always)]
fn too_big_v4(ctx: &XdpContext, pkt: &Packet, key: &FlowKey, mtu: u32) -> bool {
    let l2 = pkt.l2_len;
    let hdr = IPV4_LEN + ICMP_LEN;
    if !reshape(ctx, l2, hdr) {
        return false;
    }
    let Some(ip) = at(ctx, l2, hdr + QUOTE_LEN) else {
        return false;
    };
    let len = ((hdr + QUOTE_LEN) as u16).to_be_bytes();
    let (c, v) = (&key.src, &key.dst);
    let mut h: [u8; 20] = [
        0x45, 0, len[0], len[1], 0, 0, 0, 0, REPLY_TTL, 1, 0, 0, v[0], v[1], v[2], v[3], c[0],
        c[1], c[2], c[3],
    ];
    let sum = csum::ipv4_header(&h).to_be_bytes();
    h[10] = sum[0];
    h[11] = sum[1];
    let m = (mtu.min(0xffff) as u16).to_be_bytes();
    // Destination unreachable, fragmentation needed, next-hop MTU.
    let icmp: [u8; 8] = [3, 4, 0, 0, 0, 0, m[0], m[1]];
    // SAFETY: `ip` covers the headers and the quote.
    unsafe {
        core::ptr::write_unaligned(ip as *mut [u8; 20], h);
        core::ptr::write_unaligned(ip.add(IPV4_LEN) as *mut [u8; 8], icmp);
        let sum = !csum::fold(csum::partial(
            ip.add(IPV4_LEN),
            (ICMP_LEN + QUOTE_LEN) as u32,
            0,
        ));
        core::ptr::write_unaligned(ip.add(IPV4_LEN + 2) as *mut u16, sum);
    }
    true
}

#[inline(always)]
fn too_big_v6(ctx: &XdpContext, pkt: &Packet, key: &FlowKey, mtu: u32) -> bool {
    let l2 = pkt.l2_len;
    let hdr = IPV6_LEN + ICMP_LEN;
    if !reshape(ctx, l2, hdr) {
        return false;
    }
    let Some(ip) = at(ctx, l2, hdr + QUOTE_LEN) else {
        return false;
    };
    let plen = (ICMP_LEN + QUOTE_LEN) as u16;
    let l = plen.to_be_bytes();
    let head: [u8; 8] = [0x60, 0, 0, 0, l[0], l[1], 58, REPLY_TTL];
    let m = mtu.to_be_bytes();
    // Packet too big, MTU.
    let icmp: [u8; 8] = [2, 0, 0, 0, m[0], m[1], m[2], m[3]];
    // SAFETY: `ip` covers the headers and the quote.
    unsafe {
        core::ptr::write_unaligned(ip as *mut [u8; 8], head);
        core::ptr::write_unaligned(ip.add(8) as *mut [u8; 16], key.dst);
        core::ptr::write_unaligned(ip.add(24) as *mut [u8; 16], key.src);
        core::ptr::write_unaligned(ip.add(IPV6_LEN) as *mut [u8; 8], icmp);
        // Pseudo-header: addresses, upper-layer length, next header (RFC 8200 8.1); the
        // two constants are added in the byte order the memory sums use.
        let mut sum = csum::partial(ip.add(8), 32, 0);
        sum += csum::partial(ip.add(IPV6_LEN), u32::from(plen), 0);
        sum += u64::from(plen.to_be()) + u64::from(58u16.to_be());
        core::ptr::write_unaligned(ip.add(IPV6_LEN + 2) as *mut u16, !csum::fold(sum));
    }
    true
}
