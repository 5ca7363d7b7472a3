// The program's modules and its entry point, shared by `main.rs` (the balancer) and
// `unchecked.rs` (the same program without packet validation, for the benchmark). Included,
// not a module, so that each binary's `VALIDATE` is the crate's own constant.

#[cfg(target_arch = "bpf")]
mod csum;
#[cfg(target_arch = "bpf")]
mod forward;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod nat;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod protect;
#[cfg(target_arch = "bpf")]
mod reply;
#[cfg(target_arch = "bpf")]
mod select;
#[cfg(target_arch = "bpf")]
mod stats;

#[cfg(target_arch = "bpf")]
mod prog {
    use core::mem::MaybeUninit;

    use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
    use gateway_common::{
        MODE_FULLNAT, PROTO_TCP, STAT_DROP_INTERNAL, STAT_DROP_STALE_BACKEND, STAT_PASS_NOT_VIP,
        STAT_RX_PACKETS,
    };
    use gateway_ebpf::hdr::{TCP_ACK, TCP_SYN};

    use crate::{
        forward,
        maps::{self, BACKEND_STATS, SERVICE_STATS, settings},
        nat, packet,
        parse::{self, KeyBuf, L4, SvcKeyBuf},
        protect,
        select::{self, Track},
        stats::{Verdict, account, count},
    };

    /// Counts every run once, at the exit (as Katran's `balancer_ingress` does): the
    /// packet, and the reason its verdict gives. Inlined into the entry point the macro
    /// writes: as a function of its own it cost every packet a BPF-to-BPF call and return
    /// (~3 ns on the benchmark's machine).
    #[xdp]
    #[inline(always)]
    pub fn gateway(ctx: XdpContext) -> u32 {
        let v = match try_gateway(&ctx) {
            Ok(v) => v,
            Err(reason) => Verdict::pass(reason),
        };
        count(STAT_RX_PACKETS);
        count(v.reason);
        v.action
    }

    /// The full-NAT program, tail-called by `gateway` (`nat::hand_off`); counts its run
    /// the same way. Inlined into its entry point, as `gateway` is.
    #[xdp]
    #[inline(always)]
    pub fn gateway_fullnat(ctx: XdpContext) -> u32 {
        let v = nat::run(&ctx);
        count(STAT_RX_PACKETS);
        count(v.reason);
        v.action
    }

    /// The packet's verdict. `Err(stat)` (from parsing, or no service): pass it to the
    /// stack untouched, for reason `stat`.
    #[inline(always)]
    fn try_gateway(ctx: &XdpContext) -> Result<Verdict, u32> {
        let mut buf = MaybeUninit::<KeyBuf>::uninit();
        // Read once: every stage below takes what it needs from it.
        let s = settings();
        let mut pkt = parse::parse(ctx, s, &mut buf)?;
        // SAFETY: `parse` wrote the whole key before returning Ok.
        let buf = unsafe { buf.assume_init_mut() };
        let relay = pkt.l4 == L4::IcmpError;
        let mut quoted = 0;
        if relay {
            parse::check_icmp(ctx, &mut pkt, buf.key());
            quoted = parse::quoted_flow(ctx, &pkt, buf)?;
        }
        let key = buf.key();
        let skey = SvcKeyBuf::new(buf.dst_words(), key);
        let Some(svc) = maps::service(skey.key()) else {
            // Not a VIP; perhaps a backend's answer to a full-NAT flow.
            if nat::to_pool(key) {
                if let Some(reason) = pkt.refusal(s.checks_off) {
                    return Ok(Verdict::drop(reason));
                }
                nat::hand_off(ctx, &pkt, buf, &nat::ANSWERS, quoted);
                return Ok(Verdict::drop(STAT_DROP_INTERNAL));
            }
            return Err(STAT_PASS_NOT_VIP);
        };
        let svc = &svc;
        // For a VIP: nothing a careful router would drop goes further.
        if let Some(reason) = pkt.refusal(s.checks_off) {
            return Ok(Verdict::drop(reason));
        }
        let track = if relay {
            Track::Relay
        } else if key.proto == PROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
            Track::Syn
        } else {
            Track::Flow
        };
        // Source limits (nothing for a service without them, or an ICMP error).
        let refused = protect::check(svc.id, svc.protect, key, track == Track::Syn, relay);
        if refused != 0 {
            return Ok(Verdict::drop(refused));
        }
        if svc.mode == MODE_FULLNAT {
            // Returns only if the full-NAT program is missing from JUMP.
            nat::hand_off(ctx, &pkt, buf, svc, quoted);
            return Ok(Verdict::drop(STAT_DROP_INTERNAL));
        }
        let bytes = packet::frame_len(ctx) as u64;
        let choice = match select::choose(svc, key, track, s) {
            Ok(c) => c,
            Err(reason) => {
                account(&SERVICE_STATS, svc.id, bytes, false);
                if reason == STAT_DROP_STALE_BACKEND {
                    aya_log_ebpf::error!(
                        ctx,
                        "service {}: its table, or the backend it names, is not in the maps",
                        svc.id
                    );
                }
                return Ok(Verdict::drop(reason));
            }
        };
        let new_flow = choice.new_flow && !relay;
        account(&SERVICE_STATS, svc.id, bytes, new_flow);
        account(&BACKEND_STATS, choice.id, bytes, new_flow);
        let v = forward::send(ctx, &pkt, svc.mode, choice.backend, key, choice.hash, s);
        if v.action != xdp_action::XDP_TX {
            // Rare (no headroom, or an ICMP error too big to encapsulate): worth a log line,
            // which the agent can switch off at load time (`kernel_log`).
            aya_log_ebpf::warn!(
                ctx,
                "service {}: could not forward a packet (see drop_internal, too_big)",
                svc.id
            );
        }
        Ok(v)
    }
}
