//! Forwarding to the chosen backend: L2 direct server return, or IPIP/IP6IP6 encapsulation.
use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use gateway_common::{
    Backend, ENCAP_V4_OVERHEAD, ENCAP_V6_OVERHEAD, FAMILY_V4, FlowKey, MODE_IPIP,
    STAT_DROP_INTERNAL, STAT_FORWARDED, STAT_TOO_BIG, Settings,
};
use gateway_ebpf::hdr::*;

use crate::{
    csum,
    packet::{at, copy, frame_len_opaque, put},
    parse::{L4, Packet},
    reply,
    stats::Verdict,
};

const OUTER_TTL: u8 = 64;

/// Sends the frame to `b` the way the service's `mode` says: forwarded, answered as too
/// big, or dropped.
/// `hash` is the flow hash; only encapsulation needs it.
#[inline(always)]
pub fn send(
    ctx: &XdpContext,
    pkt: &Packet,
    mode: u8,
    b: &Backend,
    key: &FlowKey,
    hash: u32,
    s: &Settings,
) -> Verdict {
    if mode == MODE_IPIP {
        encap(ctx, pkt, b, key, hash, s)
    } else {
        l2dsr(ctx, b)
    }
}

/// Writes `dst` as the destination MAC and the frame's old destination (our own address)
/// as its source.
#[inline(always)]
pub fn set_macs(ctx: &XdpContext, dst: &[u8; 6]) -> bool {
    let Some(eth) = at(ctx, 0, ETH_LEN) else {
        return false;
    };
    let ours: [u8; ETH_ALEN] = copy(eth, ETH_DST);
    // SAFETY: `eth` covers the Ethernet header.
    unsafe {
        put(eth, ETH_SRC, ours);
        put(eth, ETH_DST, *dst);
    }
    true
}

#[inline(always)]
fn l2dsr(ctx: &XdpContext, b: &Backend) -> Verdict {
    if !set_macs(ctx, &b.mac) {
        return Verdict::drop(STAT_DROP_INTERNAL);
    }
    Verdict::tx(STAT_FORWARDED)
}

/// Grows the head by `by` bytes and moves the L2 header (with its VLAN tag) to the new
/// front. Returns false if the driver has no headroom.
#[inline(always)]
fn push_l2(ctx: &XdpContext, l2_len: usize, by: usize) -> bool {
    // SAFETY: the helper validates the delta against the frame's headroom.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(by as i32)) } != 0 {
        return false;
    }
    if l2_len == ETH_LEN + VLAN_LEN {
        let Some(p) = at(ctx, 0, by + ETH_LEN + VLAN_LEN) else {
            return false;
        };
        let l2: [u8; ETH_LEN + VLAN_LEN] = copy(p, by);
        // SAFETY: `p` covers the destination.
        unsafe { put(p, 0, l2) };
    } else {
        let Some(p) = at(ctx, 0, by + ETH_LEN) else {
            return false;
        };
        let l2: [u8; ETH_LEN] = copy(p, by);
        // SAFETY: `p` covers the destination.
        unsafe { put(p, 0, l2) };
    }
    true
}

#[inline(always)]
fn encap(
    ctx: &XdpContext,
    pkt: &Packet,
    b: &Backend,
    key: &FlowKey,
    hash: u32,
    s: &Settings,
) -> Verdict {
    let v4 = pkt.family == FAMILY_V4;
    let overhead = if v4 {
        ENCAP_V4_OVERHEAD
    } else {
        ENCAP_V6_OVERHEAD
    };
    if s.mtu != 0 && pkt.l3_len + overhead > s.mtu {
        if pkt.l4 == L4::IcmpError {
            // Never answer an ICMP error with another one.
            return Verdict::drop(STAT_TOO_BIG);
        }
        return reply::too_big(ctx, pkt, key, s.mtu - overhead);
    }
    let l2 = pkt.l2_len;
    // Ethernet padding or a trailer after the IP packet must not travel inside the outer
    // packet, whose length says where the inner one ends.
    let excess = frame_len_opaque(ctx).saturating_sub(l2 + pkt.l3_len as usize);
    // SAFETY: the helper validates the delta against the frame.
    if excess > 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, -(excess as i32)) } != 0 {
        return Verdict::drop(STAT_DROP_INTERNAL);
    }
    let ok = if v4 {
        push_l2(ctx, l2, IPV4_LEN) && write_outer_v4(ctx, pkt, b, s, hash)
    } else {
        push_l2(ctx, l2, IPV6_LEN) && write_outer_v6(ctx, pkt, b, s, hash)
    };
    if !ok || !set_macs(ctx, &b.mac) {
        return Verdict::drop(STAT_DROP_INTERNAL);
    }
    Verdict::tx(STAT_FORWARDED)
}

#[inline(always)]
fn write_outer_v4(ctx: &XdpContext, pkt: &Packet, b: &Backend, s: &Settings, hash: u32) -> bool {
    let l2 = pkt.l2_len;
    let Some(ip) = at(ctx, l2, IPV4_LEN) else {
        return false;
    };
    let len = (pkt.l3_len as u16)
        .wrapping_add(IPV4_LEN as u16)
        .to_be_bytes();
    let mut src = s.ipip_src_v4;
    let bits = u32::from(s.ipip_src_v4_vary_bits.min(16));
    if bits > 0 {
        let mask = (1u32 << bits) - 1;
        let base = u32::from_be_bytes(src);
        src = ((base & !mask) | (hash & mask)).to_be_bytes();
    }
    let frag = if pkt.df { IPV4_DF } else { 0 }.to_be_bytes();
    let mut h = [0u8; IPV4_LEN];
    h[IPV4_VER_IHL] = IPV4_VER_IHL_PLAIN;
    h[IPV4_TOS] = pkt.tos;
    h[IPV4_TOT_LEN] = len[0];
    h[IPV4_TOT_LEN + 1] = len[1];
    h[IPV4_FRAG_OFF] = frag[0];
    h[IPV4_FRAG_OFF + 1] = frag[1];
    h[IPV4_TTL] = OUTER_TTL;
    h[IPV4_PROTO] = PROTO_IPIP;
    let mut i = 0;
    while i < 4 {
        h[IPV4_SRC + i] = src[i];
        h[IPV4_DST + i] = b.addr[i];
        i += 1;
    }
    let c = csum::ipv4_header(&h).to_be_bytes();
    h[IPV4_CSUM] = c[0];
    h[IPV4_CSUM + 1] = c[1];
    // SAFETY: `ip` covers the header.
    unsafe { put(ip, 0, h) };
    true
}

/// Writes a 16-byte address to packet memory.
///
/// # Safety
/// `p` must cover 16 writable bytes at an even offset.
#[inline(always)]
unsafe fn write_addr(p: *mut u8, a: &[u8; 16]) {
    // SAFETY: the caller guarantees the range.
    unsafe { put(p, 0, *a) }
}

#[inline(always)]
fn write_outer_v6(ctx: &XdpContext, pkt: &Packet, b: &Backend, s: &Settings, hash: u32) -> bool {
    let l2 = pkt.l2_len;
    let Some(ip) = at(ctx, l2, IPV6_LEN) else {
        return false;
    };
    // Version 6, the inner traffic class, and the flow hash as flow label.
    let first = (6u32 << 28) | (u32::from(pkt.tos) << 20) | (hash & 0x000f_ffff);
    let len = (pkt.l3_len as u16).to_be_bytes();
    let f = first.to_be_bytes();
    // The fields up to the addresses; the first word is version, class and label.
    let mut head = [f[0], f[1], f[2], f[3], 0, 0, 0, 0];
    const _: () = assert!(IPV6_PAYLOAD_LEN == 4 && IPV6_SRC == 8);
    head[IPV6_PAYLOAD_LEN] = len[0];
    head[IPV6_PAYLOAD_LEN + 1] = len[1];
    head[IPV6_NEXT_HEADER] = PROTO_IPV6;
    head[IPV6_HOP_LIMIT] = OUTER_TTL;
    // SAFETY: `ip` covers the header.
    unsafe {
        put(ip, 0, head);
        write_addr(ip.add(IPV6_SRC), &s.ipip_src_v6);
        write_addr(ip.add(IPV6_DST), &b.addr);
    }
    true
}
