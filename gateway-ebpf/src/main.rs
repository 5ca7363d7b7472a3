//! The gateway XDP program: parse, find the service, choose a backend (conntrack, then the
//! Maglev table), forward by L2 DSR or IPIP, count everything.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod csum;
#[cfg(target_arch = "bpf")]
mod forward;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod reply;
#[cfg(target_arch = "bpf")]
mod select;

#[cfg(target_arch = "bpf")]
mod prog {
    use core::mem::MaybeUninit;

    use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
    use gateway_common::{
        PROTO_TCP, STAT_FORWARDED, STAT_ICMP_RELAYED, STAT_PASS_NOT_VIP, STAT_RX_PACKETS,
    };

    use gateway_ebpf::hdr::{TCP_ACK, TCP_SYN};

    use crate::{
        forward,
        maps::{BACKEND_STATS, SERVICE_STATS, SERVICES, account, count},
        packet,
        parse::{self, KeyBuf, L4, SvcKeyBuf},
        select::{self, Track},
    };

    #[xdp]
    pub fn gateway(ctx: XdpContext) -> u32 {
        count(STAT_RX_PACKETS);
        match try_gateway(&ctx) {
            Ok(action) => action,
            Err(stat) => {
                count(stat);
                xdp_action::XDP_PASS
            }
        }
    }

    /// `Err(stat)`: pass the packet to the stack and count `stat`.
    #[inline(always)]
    fn try_gateway(ctx: &XdpContext) -> Result<u32, u32> {
        let mut buf = MaybeUninit::<KeyBuf>::uninit();
        let pkt = parse::parse(ctx, &mut buf)?;
        // SAFETY: `parse` wrote the whole key before returning Ok.
        let buf = unsafe { buf.assume_init_mut() };
        let relay = pkt.l4 == L4::IcmpError;
        if relay {
            parse::quoted_flow(ctx, &pkt, buf)?;
        }
        let key = buf.key();
        let skey = SvcKeyBuf::new(buf.dst_words(), key);
        // SAFETY: a map value stays valid for the rest of this program run (RCU).
        let svc = unsafe { SERVICES.get(skey.key()) }.ok_or(STAT_PASS_NOT_VIP)?;
        let track = if relay {
            Track::Relay
        } else if key.proto == PROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
            Track::Syn
        } else {
            Track::Flow
        };
        let bytes = packet::frame_len(ctx) as u64;
        let Some(choice) = select::choose(svc, key, track) else {
            account(&SERVICE_STATS, svc.id, bytes, false);
            return Ok(xdp_action::XDP_DROP);
        };
        let new_flow = choice.new_flow && !relay;
        account(&SERVICE_STATS, svc.id, bytes, new_flow);
        account(&BACKEND_STATS, choice.id, bytes, new_flow);
        if relay {
            count(STAT_ICMP_RELAYED);
        }
        let action = forward::send(ctx, &pkt, svc.mode, choice.backend, key, choice.hash);
        if action == xdp_action::XDP_TX {
            count(STAT_FORWARDED);
        } else {
            // Rare (no headroom, or an ICMP error too big to encapsulate): worth a log line,
            // which the agent can switch off at load time (`kernel_log`).
            aya_log_ebpf::warn!(
                ctx,
                "service {}: could not forward a packet (see drop_internal, too_big)",
                svc.id
            );
        }
        Ok(action)
    }
}

gateway_ebpf::bpf_runtime!();
