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

    const ETH: usize = 14;

    #[xdp]
    pub fn xdp_decap(ctx: XdpContext) -> u32 {
        let start = ctx.data();
        if start + ETH + 40 > ctx.data_end() {
            return xdp_action::XDP_PASS;
        }
        let p = start as *const u8;
        // SAFETY: 54 bytes are in bounds.
        let (et0, et1, b0, proto4, nh6) = unsafe {
            (
                *p.add(12),
                *p.add(13),
                *p.add(ETH),
                *p.add(ETH + 9),
                *p.add(ETH + 6),
            )
        };
        let outer = match (et0, et1) {
            (0x08, 0x00) if b0 == 0x45 && proto4 == 4 => 20,
            (0x86, 0xdd) if b0 >> 4 == 6 && nh6 == 41 => 40,
            _ => return xdp_action::XDP_PASS,
        };
        // SAFETY: in bounds (checked above); the Ethernet header moves forward over the
        // outer IP header, then the head follows it.
        unsafe {
            let eth = core::ptr::read_unaligned(p as *const [u8; ETH]);
            core::ptr::write_unaligned(p.add(outer) as *mut [u8; ETH], eth);
            if bpf_xdp_adjust_head(ctx.ctx, outer as i32) != 0 {
                return xdp_action::XDP_DROP;
            }
        }
        xdp_action::XDP_PASS
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 4] = *b"GPL\0";
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
