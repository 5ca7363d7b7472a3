//! Replies the program makes itself: a packet too big to encapsulate is turned into an
//! ICMP frag-needed / ICMPv6 packet-too-big answer to its sender.
use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use gateway_common::{FAMILY_V6, FlowKey, STAT_DROP_INTERNAL, STAT_TOO_BIG};
use gateway_ebpf::hdr::*;

use crate::{
    csum,
    packet::{at, copy, frame_len, frame_len_opaque, put},
    parse::Packet,
    stats::Verdict,
};

/// Bytes of the offending packet quoted in a too-big answer: its headers and first payload
/// bytes, enough for the client to find the socket (RFC 792 asks for header + 8 bytes,
/// RFC 4443 for as much as fits in 1280).
pub const QUOTE_LEN: usize = 128;
const REPLY_TTL: u8 = 64;

/// Turns the frame into an ICMP too-big answer to its sender, from the VIP, quoting its
/// start; `mtu` is the largest inner packet the path takes; `key` is the frame's own flow.
#[inline(always)]
pub fn too_big(ctx: &XdpContext, pkt: &Packet, key: &FlowKey, mtu: u32) -> Verdict {
    if rewrite_too_big(ctx, pkt, key, mtu) {
        Verdict::tx(STAT_TOO_BIG)
    } else {
        Verdict::drop(STAT_DROP_INTERNAL)
    }
}

/// The rewrite itself; false if the frame could not be reshaped. A separate BPF function:
/// it is rare, and keeping it out of line keeps the hot path's stack small. It returns a
/// plain bool, which BPF returns in a register.
#[inline(never)]
fn rewrite_too_big(ctx: &XdpContext, pkt: &Packet, key: &FlowKey, mtu: u32) -> bool {
    if pkt.family == FAMILY_V6 {
        too_big_v6(ctx, pkt, key, mtu)
    } else {
        too_big_v4(ctx, pkt, key, mtu)
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
    let dst: [u8; ETH_ALEN] = copy(p, hdr + ETH_DST);
    let src: [u8; ETH_ALEN] = copy(p, hdr + ETH_SRC);
    let rest: [u8; 2 + VLAN_LEN] = copy(p, hdr + ETH_PROTO);
    // SAFETY: `p` covers the first 18 bytes; with a VLAN tag `rest` is the tag and the
    // inner ethertype, without it the ethertype and 4 bytes that the IP header overwrites.
    unsafe {
        put(p, ETH_DST, src);
        put(p, ETH_SRC, dst);
        if l2 == ETH_LEN + VLAN_LEN {
            put(p, ETH_PROTO, rest);
        } else {
            put(p, ETH_PROTO, [rest[0], rest[1]]);
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
    // From the VIP (the flow's destination) to the client.
    let (client, vip) = (&key.src, &key.dst);
    let mut h = [0u8; IPV4_LEN];
    h[IPV4_VER_IHL] = IPV4_VER_IHL_PLAIN;
    h[IPV4_TOT_LEN..IPV4_TOT_LEN + 2].copy_from_slice(&len);
    h[IPV4_TTL] = REPLY_TTL;
    h[IPV4_PROTO] = PROTO_ICMP;
    h[IPV4_SRC..IPV4_SRC + 4].copy_from_slice(&vip[..4]);
    h[IPV4_DST..IPV4_DST + 4].copy_from_slice(&client[..4]);
    let sum = csum::ipv4_header(&h).to_be_bytes();
    h[IPV4_CSUM..IPV4_CSUM + 2].copy_from_slice(&sum);
    let m = (mtu.min(0xffff) as u16).to_be_bytes();
    let mut icmp = [0u8; ICMP_LEN];
    icmp[ICMP_TYPE] = ICMP_DEST_UNREACH;
    icmp[ICMP_CODE] = ICMP_FRAG_NEEDED;
    icmp[ICMP_NEXT_HOP_MTU..ICMP_NEXT_HOP_MTU + 2].copy_from_slice(&m);
    // SAFETY: `ip` covers the headers and the quote.
    unsafe {
        put(ip, 0, h);
        put(ip, IPV4_LEN, icmp);
        let sum = !csum::fold(csum::partial(
            ip.add(IPV4_LEN),
            (ICMP_LEN + QUOTE_LEN) as u32,
            0,
        ));
        core::ptr::write_unaligned(ip.add(IPV4_LEN + ICMP_CSUM) as *mut u16, sum);
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
    // Version 6, traffic class and flow label zero; the fields up to the addresses.
    let mut head = [0u8; IPV6_SRC];
    head[IPV6_VER_TC] = 0x60;
    head[IPV6_PAYLOAD_LEN..IPV6_PAYLOAD_LEN + 2].copy_from_slice(&plen.to_be_bytes());
    head[IPV6_NEXT_HEADER] = PROTO_ICMPV6;
    head[IPV6_HOP_LIMIT] = REPLY_TTL;
    let mut icmp = [0u8; ICMP_LEN];
    icmp[ICMP_TYPE] = ICMPV6_PACKET_TOO_BIG;
    icmp[ICMPV6_MTU..ICMPV6_MTU + 4].copy_from_slice(&mtu.to_be_bytes());
    // SAFETY: `ip` covers the headers and the quote.
    unsafe {
        put(ip, 0, head);
        // From the VIP (the flow's destination) to the client.
        put(ip, IPV6_SRC, key.dst);
        put(ip, IPV6_DST, key.src);
        put(ip, IPV6_LEN, icmp);
        // Pseudo-header: addresses, upper-layer length, next header (RFC 8200 8.1); the
        // two constants are added in the byte order the memory sums use.
        let mut sum = csum::partial(ip.add(IPV6_SRC), 32, 0);
        sum += csum::partial(ip.add(IPV6_LEN), u32::from(plen), 0);
        sum += u64::from(plen.to_be()) + u64::from(u16::from(PROTO_ICMPV6).to_be());
        core::ptr::write_unaligned(ip.add(IPV6_LEN + ICMP_CSUM) as *mut u16, !csum::fold(sum));
    }
    true
}
