//! Protection through BPF_PROG_TEST_RUN against the real object, with maps filled by the
//! production path (config text, plan, diff, apply): per-source limits, the allowlist,
//! monitor mode, prefixes, reloads, and the conntrack flood guard.
mod common;

use std::net::IpAddr;

use common::world::*;
use gateway::config::AdminState;
use gateway_common::*;
use lab::packet::{self, *};

fn vip4() -> IpAddr {
    v4(198, 18, 1, 1)
}
fn vip6() -> IpAddr {
    v6("fd00:1::1")
}
fn b1() -> Be {
    be(v4(198, 18, 0, 11), 11)
}
fn b2() -> Be {
    be(v4(198, 18, 0, 12), 12)
}
fn b3() -> Be {
    be(v4(198, 18, 0, 13), 13)
}
fn b1v6() -> Be {
    be(v6("fd00::11"), 0x11)
}

fn svc(vip: IpAddr, backends: Vec<Be>, protection: Option<&str>) -> Svc {
    Svc {
        vip,
        port: 80,
        proto: PROTO_TCP,
        mode: MODE_L2DSR,
        table_size: 257,
        backends,
        protection: protection.map(str::to_string),
    }
}

/// A v4 and a v6 service under the same limits.
fn limited(protection: &str) -> Vec<Svc> {
    vec![
        svc(vip4(), vec![b1(), b2()], Some(protection)),
        svc(vip6(), vec![b1v6()], Some(protection)),
    ]
}

fn world(name: &str, services: &[Svc], protection: &str) -> Option<World> {
    if !common::privileged(name) {
        return None;
    }
    let mut w = World::new(&services_without_limits(services), plain_settings());
    w.protection = protection.to_string();
    w.set(services);
    Some(w)
}

fn services_without_limits(services: &[Svc]) -> Vec<Svc> {
    services
        .iter()
        .map(|s| Svc {
            protection: None,
            backends: s.backends.clone(),
            ..*s
        })
        .collect()
}

fn stat(w: &World, s: u32) -> u64 {
    w.stats()[s as usize]
}

fn verdict(w: &World, f: &Frame) -> u32 {
    let (v, out) = w.run(&f.bytes());
    if v == XDP_TX {
        packet::check(&out).expect("a valid frame");
    }
    v
}

fn syn(src: IpAddr, vip: IpAddr, sport: u16) -> Frame {
    tcp(src, vip, sport, 80, TCP_SYN)
}

/// The protection counters of the port-80 TCP service on `vip`.
fn protect_stats(w: &World, vip: IpAddr) -> ProtectStats {
    let id = w.applied.services[&service_key(&svc(vip, vec![], None))]
        .value
        .id;
    w.dp.protect_stats(id).expect("PROTECT_STATS")
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn a_source_past_its_new_flow_burst_is_dropped_and_others_are_not() {
    let services = limited("mode = \"enforce\", new_flows_per_second = 1, new_flows_burst = 3");
    let Some(w) = world("new_flow_limit", &services, "") else {
        return;
    };
    let a = v4(198, 18, 0, 1);
    let b = v4(198, 18, 0, 2);
    let dropped = stat(&w, STAT_DROP_LIMIT_NEW_FLOWS);
    for port in 40000..40003 {
        assert_eq!(
            verdict(&w, &syn(a, vip4(), port)),
            XDP_TX,
            "within the burst"
        );
    }
    assert_eq!(
        verdict(&w, &syn(a, vip4(), 40003)),
        XDP_DROP,
        "past the burst"
    );
    assert_eq!(stat(&w, STAT_DROP_LIMIT_NEW_FLOWS), dropped + 1);
    assert_eq!(protect_stats(&w, vip4()).drop_new_flows, 1);
    // Its established flows' packets are not new flows: they pass.
    let ack = tcp(a, vip4(), 40000, 80, TCP_ACK);
    assert_eq!(verdict(&w, &ack), XDP_TX);
    // Another source has its own bucket.
    for port in 40000..40003 {
        assert_eq!(verdict(&w, &syn(b, vip4(), port)), XDP_TX, "another source");
    }
    // The refused source is listed, by its prefix.
    let limited = w.dp.limited();
    assert_eq!(limited.len(), 1, "{limited:?}");
    assert_eq!(limited[0].key.addr[..4], [198, 18, 0, 1]);
    assert_eq!(limited[0].key.prefix, 32);
    let bucket = limited[0].bucket.expect("its bucket");
    assert_eq!(
        (bucket.packets, bucket.new_flows, bucket.refused),
        (5, 4, 1),
        "{bucket:?}"
    );
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn ipv6_sources_share_a_bucket_per_prefix() {
    let services = limited("mode = \"enforce\", new_flows_per_second = 1, new_flows_burst = 3");
    let Some(w) = world("v6_prefix", &services, "") else {
        return;
    };
    // Three flows from two addresses of one /64 use its burst ...
    assert_eq!(verdict(&w, &syn(v6("fd00::1"), vip6(), 1000)), XDP_TX);
    assert_eq!(verdict(&w, &syn(v6("fd00::1"), vip6(), 1001)), XDP_TX);
    assert_eq!(verdict(&w, &syn(v6("fd00::2"), vip6(), 1000)), XDP_TX);
    // ... so a third address of it is refused, and one of the next /64 is not.
    assert_eq!(verdict(&w, &syn(v6("fd00::3:1"), vip6(), 1000)), XDP_DROP);
    assert_eq!(verdict(&w, &syn(v6("fd00:0:0:1::1"), vip6(), 1000)), XDP_TX);
    assert_eq!(protect_stats(&w, vip6()).drop_new_flows, 1);
    let limited = w.dp.limited();
    assert_eq!(limited.len(), 1, "{limited:?}");
    assert_eq!(limited[0].key.prefix, 64);
    assert_eq!(limited[0].key.addr, addr16(v6("fd00::")));
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn a_packet_limit_counts_every_packet() {
    let services = limited("mode = \"enforce\", packets_per_second = 5");
    let Some(w) = world("packet_limit", &services, "") else {
        return;
    };
    let a = v4(198, 18, 0, 1);
    for i in 0..5 {
        let f = tcp(a, vip4(), 40000, 80, if i == 0 { TCP_SYN } else { TCP_ACK });
        assert_eq!(verdict(&w, &f), XDP_TX, "packet {i}");
    }
    let dropped = stat(&w, STAT_DROP_LIMIT_PACKETS);
    assert_eq!(verdict(&w, &tcp(a, vip4(), 40000, 80, TCP_ACK)), XDP_DROP);
    assert_eq!(stat(&w, STAT_DROP_LIMIT_PACKETS), dropped + 1);
    assert_eq!(protect_stats(&w, vip4()).drop_packets, 1);
    assert_eq!(protect_stats(&w, vip4()).drop_new_flows, 0);
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn allowlisted_sources_are_never_limited() {
    let services = limited("mode = \"enforce\", new_flows_per_second = 1, new_flows_burst = 2");
    let allow = "allowlist = [\"198.18.9.0/24\", \"fd00:9::/32\"]";
    let Some(w) = world("allowlist", &services, allow) else {
        return;
    };
    let allowed = stat(&w, STAT_LIMIT_ALLOWLISTED);
    for port in 0..10 {
        assert_eq!(
            verdict(&w, &syn(v4(198, 18, 9, 7), vip4(), 1000 + port)),
            XDP_TX
        );
        assert_eq!(
            verdict(&w, &syn(v6("fd00:9:1::7"), vip6(), 1000 + port)),
            XDP_TX
        );
    }
    assert_eq!(stat(&w, STAT_LIMIT_ALLOWLISTED), allowed + 16);
    // Just outside the prefix: limited.
    for port in 0..2 {
        assert_eq!(
            verdict(&w, &syn(v4(198, 18, 10, 7), vip4(), 1000 + port)),
            XDP_TX
        );
    }
    assert_eq!(
        verdict(&w, &syn(v4(198, 18, 10, 7), vip4(), 1002)),
        XDP_DROP
    );
    assert!(w.dp.limited().iter().all(|l| l.key.addr[2] == 10));
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn monitor_mode_counts_what_it_would_drop_and_forwards_it() {
    let services = limited("mode = \"monitor\", new_flows_per_second = 1, new_flows_burst = 2");
    let Some(w) = world("monitor", &services, "") else {
        return;
    };
    let (monitored, dropped) = (
        stat(&w, STAT_MONITOR_LIMIT_NEW_FLOWS),
        stat(&w, STAT_DROP_LIMIT_NEW_FLOWS),
    );
    for port in 0..10 {
        assert_eq!(
            verdict(&w, &syn(v4(198, 18, 0, 1), vip4(), 1000 + port)),
            XDP_TX
        );
    }
    assert_eq!(stat(&w, STAT_MONITOR_LIMIT_NEW_FLOWS), monitored + 8);
    assert_eq!(stat(&w, STAT_DROP_LIMIT_NEW_FLOWS), dropped);
    let s = protect_stats(&w, vip4());
    assert_eq!((s.monitor_new_flows, s.drop_new_flows), (8, 0));
    assert_eq!(w.dp.limited().len(), 1, "monitored sources are listed too");
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn a_reload_that_raises_the_limit_takes_effect_at_once() {
    let services = limited("mode = \"enforce\", new_flows_per_second = 1, new_flows_burst = 2");
    let Some(mut w) = world("raise", &services, "") else {
        return;
    };
    let a = v4(198, 18, 0, 1);
    assert_eq!(verdict(&w, &syn(a, vip4(), 1000)), XDP_TX);
    assert_eq!(verdict(&w, &syn(a, vip4(), 1001)), XDP_TX);
    assert_eq!(verdict(&w, &syn(a, vip4(), 1002)), XDP_DROP);
    w.set(&limited(
        "mode = \"enforce\", new_flows_per_second = 1, new_flows_burst = 10",
    ));
    for port in 1002..1010 {
        assert_eq!(verdict(&w, &syn(a, vip4(), port)), XDP_TX, "port {port}");
    }
    // And turning protection off stops limiting at once.
    w.set(&limited(
        "mode = \"off\", new_flows_per_second = 1, new_flows_burst = 1",
    ));
    for port in 1010..1020 {
        assert_eq!(verdict(&w, &syn(a, vip4(), port)), XDP_TX, "port {port}");
    }
}

// ---------------------------------------------------------------------------------------
// The flood guard

fn drain(mut b: Be) -> Be {
    b.admin = AdminState::Drain;
    b
}

/// The n-th spoofed source of a flood: distinct, outside every address the world uses.
fn spoofed(n: u32) -> IpAddr {
    let [_, b, c, d] = n.to_be_bytes();
    v4(198, 19 ^ (b & 1), c, d.max(1))
}

/// Established flows on changed slots keep their conntrack entries (and backends) through
/// a SYN flood several times the conntrack size, with the table changed mid-flood; without
/// the guard the same flood evicts them.
fn flood(name: &str, guard: bool) -> Option<(usize, usize, u64)> {
    if !common::privileged(name) {
        return None;
    }
    let load = gateway::dataplane::LoadOptions {
        conntrack_size: 4096,
        ..TEST_LOAD
    };
    let before = vec![svc(vip4(), vec![b1(), b2()], None)];
    let mut w = World::with_load(&before, plain_settings(), gateway::object::GATEWAY, load);
    // 400 established flows (handshake done: settled slots, no entries).
    let flows: Vec<(IpAddr, u16)> = (0..400u16)
        .map(|i| (v4(198, 18, 0, 1 + (i % 200) as u8), 20000 + i))
        .collect();
    let ack = |(src, sport): (IpAddr, u16)| tcp(src, vip4(), sport, 80, TCP_ACK);
    // Entries live on the LRU list of the CPU that made them, and a flood arrives on every
    // CPU: flows and flood take turns on each CPU.
    let mut mac_of = Vec::new();
    for (i, &(src, sport)) in flows.iter().enumerate() {
        lab::run_on_cpu(i);
        let (v, out) = w.run(&syn(src, vip4(), sport).bytes());
        assert_eq!(v, XDP_TX);
        mac_of.push(<[u8; 6]>::try_from(&out[0..6]).unwrap());
    }
    // b2 drains: its used slots change (previous b2); each flow's next packet records
    // where it goes.
    let drained = vec![svc(vip4(), vec![b1(), drain(b2())], None)];
    w.set(&drained);
    for (i, (f, mac)) in flows.iter().zip(&mac_of).enumerate() {
        lab::run_on_cpu(i);
        let (v, out) = w.run(&ack(*f).bytes());
        assert_eq!(v, XDP_TX);
        assert_eq!(&out[0..6], mac, "{f:?} before the flood");
    }
    let key = |(src, sport): (IpAddr, u16)| flow_key(src, vip4(), sport, 80, PROTO_TCP);
    let tracked: Vec<FlowKey> = flows
        .iter()
        .map(|f| key(*f))
        .filter(|k| w.dp.conntrack_get(k).is_some())
        .collect();
    assert!(tracked.len() > 100, "{} flows tracked", tracked.len());
    // The guard at 10 inserts per window per CPU, or none.
    w.settings.flood_window_limit = if guard { 10 } else { 0 };
    w.set(&drained);
    let bypass = stat(&w, STAT_FLOOD_BYPASS);
    let total = 3 * 4096 * 4;
    for n in 0..total {
        if n == total / 2 {
            // The table changes mid-flood: b3 joins.
            w.set(&[svc(vip4(), vec![b1(), drain(b2()), b3()], None)]);
        }
        if n % 1024 == 0 {
            lab::run_on_cpu((n / 1024) as usize);
        }
        let f = (spoofed(n), 1024 + (n % 60000) as u16);
        let (v, out) = w.run(&syn(f.0, vip4(), f.1).bytes());
        assert_eq!(v, XDP_TX);
        if n % 997 == 0 {
            // A flow begun in the flood stays on one backend without an entry.
            let (v2, out2) = w.run(&ack(f).bytes());
            assert_eq!((v2, &out2[0..6]), (XDP_TX, &out[0..6]), "flood flow {n}");
        }
    }
    lab::run_on_any_cpu();
    let bypassed = stat(&w, STAT_FLOOD_BYPASS) - bypass;
    let kept = tracked
        .iter()
        .filter(|k| w.dp.conntrack_get(k).is_some())
        .count();
    // Every flow still reaches its backend.
    let mut same = 0;
    for (f, mac) in flows.iter().zip(&mac_of) {
        let (v, out) = w.run(&ack(*f).bytes());
        if v == XDP_TX && &out[0..6] == mac {
            same += 1;
        }
    }
    if guard {
        assert_eq!(same, flows.len(), "flows that kept their backend");
    }
    Some((tracked.len() - kept, flows.len() - same, bypassed))
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn the_flood_guard_keeps_established_entries_through_a_syn_flood() {
    let Some((lost, moved, bypassed)) = flood("flood_guard", true) else {
        return;
    };
    println!("with the guard: {lost} entries lost, {moved} flows moved, {bypassed} bypassed");
    assert_eq!((lost, moved), (0, 0));
    assert!(
        bypassed > 10_000,
        "{bypassed} flood SYNs bypassed conntrack"
    );
    // The control: without the guard the flood evicts them (so the test can fail).
    let (lost, _, bypassed) = flood("flood_guard_off", false).unwrap();
    println!("without: {lost} entries lost, {bypassed} bypassed");
    assert!(lost > 0, "the flood evicted nothing: it proves nothing");
    assert_eq!(bypassed, 0);
}
