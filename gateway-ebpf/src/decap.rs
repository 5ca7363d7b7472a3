//! `xdp_decap`: strips an outer IPv4 (protocol 4, IPIP) or IPv6 (next header 41, IP6IP6)
//! header and passes the inner packet to the stack, as a backend's `ipip` / `ip6tnl` device
//! would. Test beds use it on backends because CI kernels may be built without those
//! tunnel drivers; production backends use the kernel's devices (see docs/operations.md).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{
        bindings::xdp_action, helpers::bpf_xdp_adjust_head, macros::xdp, programs::XdpContext,
    };
    use gateway_ebpf::hdr::{
        ETH_LEN, ETH_P_IP, ETH_P_IPV6, ETH_PROTO, IPV4_LEN, IPV4_PROTO, IPV4_VER_IHL,
        IPV4_VER_IHL_PLAIN, IPV6_LEN, IPV6_NEXT_HEADER, IPV6_VER_TC, PROTO_IPIP, PROTO_IPV6,
    };

    #[xdp]
    pub fn xdp_decap(ctx: XdpContext) -> u32 {
        let start = ctx.data();
        if start + ETH_LEN + IPV6_LEN > ctx.data_end() {
            return xdp_action::XDP_PASS;
        }
        let p = start as *const u8;
        let ip = ETH_LEN;
        // SAFETY: an Ethernet and an IPv6 header's worth of bytes are in bounds.
        let (ethertype, b0, proto4, nh6) = unsafe {
            (
                u16::from_be_bytes([*p.add(ETH_PROTO), *p.add(ETH_PROTO + 1)]),
                *p.add(ip + IPV4_VER_IHL),
                *p.add(ip + IPV4_PROTO),
                *p.add(ip + IPV6_NEXT_HEADER),
            )
        };
        let outer = match ethertype {
            ETH_P_IP if b0 == IPV4_VER_IHL_PLAIN && proto4 == PROTO_IPIP => IPV4_LEN,
            ETH_P_IPV6 if b0 >> 4 == 6 && nh6 == PROTO_IPV6 => IPV6_LEN,
            _ => return xdp_action::XDP_PASS,
        };
        // IPV4_VER_IHL and IPV6_VER_TC are the same byte: the version nibble.
        const _: () = assert!(IPV4_VER_IHL == IPV6_VER_TC);
        // SAFETY: in bounds (checked above); the Ethernet header moves forward over the
        // outer IP header, then the head follows it.
        unsafe {
            let eth = core::ptr::read_unaligned(p as *const [u8; ETH_LEN]);
            core::ptr::write_unaligned(p.add(outer) as *mut [u8; ETH_LEN], eth);
            if bpf_xdp_adjust_head(ctx.ctx, outer as i32) != 0 {
                return xdp_action::XDP_DROP;
            }
        }
        xdp_action::XDP_PASS
    }
}

gateway_ebpf::bpf_runtime!();
