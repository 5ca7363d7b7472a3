//! A one-line XDP program that passes everything. Test beds attach it to the peer of a veth
//! on which the balancer runs in native mode: veth only accepts XDP_TX frames into a peer
//! that has an XDP program of its own. It has no maps, so `ip link set ... xdp obj` loads it.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod prog {
    use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

    #[xdp]
    pub fn xdp_pass(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
    }
}

gateway_ebpf::bpf_runtime!();
