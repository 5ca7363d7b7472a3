//! Full-NAT through BPF_PROG_TEST_RUN against the real object, with maps filled by the
//! production path (config text, plan, diff, apply): forward and answer rewrites for both
//! families and both protocols (every checksum recomputed by `lab::packet::check`), the
//! mappings they leave, SNAT port exhaustion, a TCP segment without a mapping, a packet to the
//! SNAT pool without one, and what is passed or dropped untranslated.
mod common;

use std::net::IpAddr;

use common::world::*;
use gateway_common::*;
use lab::packet::{self, *};

const SNAT4: &str = "198.18.0.100";
const SNAT6: &str = "fd00::100";

fn vip4() -> IpAddr {
    v4(198, 18, 1, 1)
}
fn vip6() -> IpAddr {
    v6("fd00:1::1")
}
fn client4() -> IpAddr {
    v4(198, 18, 5, 1)
}
fn client6() -> IpAddr {
    v6("fd00:5::1")
}
fn snat(v6: bool) -> IpAddr {
    if v6 {
        SNAT6.parse().unwrap()
    } else {
        SNAT4.parse().unwrap()
    }
}

fn svc(vip: IpAddr, port: u16, proto: u8, backends: Vec<Be>) -> Svc {
    Svc {
        vip,
        port,
        proto,
        mode: MODE_FULLNAT,
        table_size: 257,
        backends,
        protection: None,
    }
}

fn v4_backends() -> Vec<Be> {
    vec![be(v4(198, 18, 0, 11), 11), be(v4(198, 18, 0, 12), 12)]
}
fn v6_backends() -> Vec<Be> {
    vec![be(v6("fd00::11"), 0x11), be(v6("fd00::12"), 0x12)]
}

/// TCP port 80 and UDP port 53, on an IPv4 and an IPv6 VIP.
fn services() -> Vec<Svc> {
    vec![
        svc(vip4(), 80, PROTO_TCP, v4_backends()),
        svc(vip6(), 80, PROTO_TCP, v6_backends()),
        svc(vip4(), 53, PROTO_UDP, v4_backends()),
        svc(vip6(), 53, PROTO_UDP, v6_backends()),
    ]
}

fn pool(ports: &str) -> String {
    format!("snat_v4 = [\"{SNAT4}\"]\nsnat_v6 = [\"{SNAT6}\"]\nsnat_ports = \"{ports}\"")
}

fn world(name: &str, services: &[Svc], ports: &str) -> Option<World> {
    common::privileged(name).then(|| {
        World::with_dataplane(
            services,
            plain_settings(),
            gateway::object::GATEWAY,
            TEST_LOAD,
            &pool(ports),
        )
    })
}

fn stat(w: &World, s: u32) -> u64 {
    w.stats()[s as usize]
}

/// Runs `f`; for XDP_TX, the output frame checked (every checksum recomputed).
fn run(w: &World, f: &Frame) -> (u32, Option<Parsed>) {
    let (v, out) = w.run(&f.bytes());
    let parsed = (v == XDP_TX).then(|| packet::check(&out).expect("a valid frame"));
    (v, parsed)
}

/// A frame of `proto` from `src:sport` to `dst:dport` (TCP with `flags`).
fn frame(proto: u8, src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8) -> Frame {
    if proto == PROTO_TCP {
        tcp(src, dst, sport, dport, flags)
    } else {
        udp(src, dst, sport, dport)
    }
}

/// The backend (by address) a service's table places `key` on.
fn placed_addr(w: &World, s: &Svc, key: &FlowKey) -> IpAddr {
    let id = w.placed(s, key);
    s.backends
        .iter()
        .find(|b| w.ids.backend_id(&format!("s{}", service_index(s)), b.addr) == Some(id))
        .map(|b| b.addr)
        .expect("the placed backend is one of the service's")
}

fn service_index(s: &Svc) -> usize {
    services()
        .iter()
        .position(|x| x.vip == s.vip && x.port == s.port && x.proto == s.proto)
        .expect("one of services()")
}

fn mac_of(s: &Svc, addr: IpAddr) -> [u8; 6] {
    s.backends.iter().find(|b| b.addr == addr).unwrap().mac
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn a_flow_leaves_from_the_pool_and_its_answers_return_from_the_vip() {
    let services = services();
    let Some(w) = world("fullnat_rewrites", &services, "40000-49999") else {
        return;
    };
    for s in &services {
        let six = s.vip.is_ipv6();
        let client = if six { client6() } else { client4() };
        let what = format!("{} {} port {}", s.vip, s.proto, s.port);
        let first = frame(s.proto, client, s.vip, 41000, s.port, TCP_SYN);
        let key = flow_key(client, s.vip, 41000, s.port, s.proto);
        let backend = placed_addr(&w, s, &key);
        let (new, replied) = (stat(&w, STAT_NAT_NEW), stat(&w, STAT_NAT_REPLIED));

        // Towards the backend: from the SNAT address and a port of the range, to the
        // backend on the service's port, at the backend's MAC.
        let (v, out) = run(&w, &first);
        assert_eq!(v, XDP_TX, "{what}: first packet");
        let out = out.unwrap();
        assert_eq!((out.src, out.dst), (snat(six), backend), "{what}");
        let port = out.ports.0;
        assert!((40000..=49999).contains(&port), "{what}: SNAT port {port}");
        assert_eq!(out.ports.1, s.port, "{what}");
        assert_eq!(out.dst_mac, mac_of(s, backend), "{what}");
        assert_eq!(out.src_mac, LB_MAC, "{what}");
        assert_eq!(stat(&w, STAT_NAT_NEW), new + 1, "{what}");

        // Both directions are mapped.
        let entries = w.dp.nat_entries();
        let fwd = entries
            .iter()
            .find(|(k, _)| *k == key)
            .expect("forward entry");
        assert_eq!(fwd.1.dir, NAT_DIR_FORWARD);
        let back_key = flow_key(backend, snat(six), s.port, port, s.proto);
        let back = entries
            .iter()
            .find(|(k, _)| *k == back_key)
            .expect("answer entry");
        assert_eq!(back.1.dir, NAT_DIR_REPLY);

        // The answer: from the VIP to the client, back to the MAC the client's frame came
        // from.
        let mut answer = frame(s.proto, backend, snat(six), s.port, port, TCP_SYN | TCP_ACK);
        answer.src = mac_of(s, backend);
        let (v, out) = run(&w, &answer);
        assert_eq!(v, XDP_TX, "{what}: answer");
        let out = out.unwrap();
        assert_eq!((out.src, out.dst), (s.vip, client), "{what}");
        assert_eq!(out.ports, (s.port, 41000), "{what}");
        assert_eq!(out.dst_mac, CLIENT_MAC, "{what}");
        assert_eq!(out.src_mac, LB_MAC, "{what}");
        assert_eq!(stat(&w, STAT_NAT_REPLIED), replied + 1, "{what}");

        // The client's next packet takes the same mapping.
        let next = frame(s.proto, client, s.vip, 41000, s.port, TCP_ACK);
        let (v, out) = run(&w, &next);
        assert_eq!(v, XDP_TX, "{what}: second packet");
        let out = out.unwrap();
        assert_eq!(
            (out.src, out.dst, out.ports),
            (snat(six), backend, (port, s.port))
        );
        assert_eq!(stat(&w, STAT_NAT_NEW), new + 1, "{what}: no second mapping");
    }
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn an_ipv4_udp_datagram_without_a_checksum_keeps_none() {
    let services = services();
    let Some(w) = world("fullnat_udp_zero", &services, "40000-49999") else {
        return;
    };
    let mut bytes = udp(client4(), vip4(), 41000, 53).bytes();
    // Ethernet 14 + IPv4 20, then the UDP checksum at 6.
    bytes[14 + 20 + 6] = 0;
    bytes[14 + 20 + 7] = 0;
    let (v, out) = w.run(&bytes);
    assert_eq!(v, XDP_TX);
    packet::check(&out).expect("a valid frame");
    assert_eq!(
        &out[14 + 20 + 6..14 + 20 + 8],
        &[0, 0],
        "the checksum stays absent"
    );
    // Its checksummed twin gets a correct checksum after the rewrite (`check` above and
    // in `run` recompute it).
    let (v, _) = run(&w, &udp(client4(), vip4(), 41001, 53));
    assert_eq!(v, XDP_TX);
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn a_tcp_segment_without_a_mapping_never_makes_one() {
    let services = services();
    let Some(w) = world("fullnat_no_mapping", &services, "40000-49999") else {
        return;
    };
    for (client, vip) in [(client4(), vip4()), (client6(), vip6())] {
        let before = stat(&w, STAT_DROP_NAT_NO_MAPPING);
        for flags in [TCP_ACK, TCP_ACK | TCP_PSH, TCP_FIN | TCP_ACK, TCP_RST] {
            let (v, _) = run(&w, &tcp(client, vip, 42000, 80, flags));
            assert_eq!(v, XDP_DROP, "{vip} flags {flags:#x}");
        }
        assert_eq!(stat(&w, STAT_DROP_NAT_NO_MAPPING), before + 4);
    }
    assert!(w.dp.nat_entries().is_empty(), "nothing mapped");
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn a_packet_to_the_pool_without_a_mapping_is_dropped_inside_the_range_only() {
    let services = services();
    let Some(w) = world("fullnat_pool_miss", &services, "40000-49999") else {
        return;
    };
    for six in [false, true] {
        let backend = if six {
            v6("fd00::11")
        } else {
            v4(198, 18, 0, 11)
        };
        let before = stat(&w, STAT_DROP_NAT_REPLY_MISS);
        // In the range: the host would answer with a reset.
        for proto in [PROTO_TCP, PROTO_UDP] {
            let f = frame(proto, backend, snat(six), 80, 40005, TCP_SYN | TCP_ACK);
            assert_eq!(run(&w, &f).0, XDP_DROP, "IPv6 {six} proto {proto}");
        }
        assert_eq!(stat(&w, STAT_DROP_NAT_REPLY_MISS), before + 2);
        // Outside it: the host's own traffic to that address.
        let passed = stat(&w, STAT_PASS_NOT_VIP);
        let f = frame(PROTO_TCP, backend, snat(six), 80, 22, TCP_SYN);
        assert_eq!(run(&w, &f).0, XDP_PASS);
        assert_eq!(stat(&w, STAT_PASS_NOT_VIP), passed + 1);
    }
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn the_seventeenth_flow_to_a_backend_on_a_sixteen_port_range_is_refused() {
    let one = vec![
        svc(vip4(), 80, PROTO_TCP, vec![be(v4(198, 18, 0, 11), 11)]),
        svc(vip6(), 80, PROTO_TCP, vec![be(v6("fd00::11"), 0x11)]),
    ];
    let Some(w) = world("fullnat_exhaustion", &one, "40000-40015") else {
        return;
    };
    for (client, vip) in [(client4(), vip4()), (client6(), vip6())] {
        let mut ports = std::collections::BTreeSet::new();
        for i in 0..16u16 {
            let (v, out) = run(&w, &tcp(client, vip, 43000 + i, 80, TCP_SYN));
            assert_eq!(v, XDP_TX, "{vip}: flow {i}");
            ports.insert(out.unwrap().ports.0);
        }
        assert_eq!(
            ports,
            (40000..=40015).collect(),
            "{vip}: every port used once"
        );
        let before = stat(&w, STAT_DROP_NAT_EXHAUSTED);
        let (v, _) = run(&w, &tcp(client, vip, 43016, 80, TCP_SYN));
        assert_eq!(v, XDP_DROP, "{vip}: the 17th flow");
        assert_eq!(stat(&w, STAT_DROP_NAT_EXHAUSTED), before + 1);
        // A retransmitted SYN of a mapped flow keeps its mapping.
        let (v, _) = run(&w, &tcp(client, vip, 43000, 80, TCP_SYN));
        assert_eq!(v, XDP_TX, "{vip}: a retransmitted SYN");
    }
}

/// The packet an ICMP error in `frame` quotes, checked (its IPv4 header and transport
/// checksums recomputed: the tests quote whole packets).
fn quoted(frame: &[u8], v6: bool) -> Parsed {
    let outer = if v6 { 40 } else { 20 };
    let mut inner = frame[..12].to_vec();
    inner.extend(if v6 { [0x86, 0xdd] } else { [0x08, 0x00] });
    inner.extend(&frame[14 + outer + 8..]);
    packet::check(&inner).expect("a valid quoted packet")
}

/// An ICMP error from `src` to `dst` about `about` (a whole packet): IPv4 frag-needed or
/// IPv6 packet-too-big for TCP, port unreachable for UDP.
fn icmp_error(src: IpAddr, dst: IpAddr, about: Ip) -> Frame {
    let v6 = src.is_ipv6();
    let udp = matches!(about.l4, L4::Udp { .. });
    let (ty, code, rest) = match (v6, udp) {
        (false, false) => (3, 4, [0, 0, 5, 0xdc]),
        (false, true) => (3, 3, [0; 4]),
        (true, false) => (2, 0, [0, 0, 5, 0xdc]),
        (true, true) => (1, 4, [0; 4]),
    };
    Frame::ip(Ip::new(
        src,
        dst,
        L4::Icmp {
            ty,
            code,
            rest,
            body: about.bytes(),
        },
    ))
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn icmp_errors_are_translated_both_ways() {
    let services = services();
    let Some(w) = world("fullnat_icmp", &services, "40000-49999") else {
        return;
    };
    for s in &services {
        let six = s.vip.is_ipv6();
        let client = if six { client6() } else { client4() };
        let what = format!("{} {} port {}", s.vip, s.proto, s.port);
        let (_, out) = run(&w, &frame(s.proto, client, s.vip, 41000, s.port, TCP_SYN));
        let out = out.unwrap();
        let (backend, port) = (out.dst, out.ports.0);
        let payload = |tcp| {
            if tcp {
                L4::Tcp {
                    sport: 0,
                    dport: 0,
                    flags: TCP_ACK,
                    seq: 7,
                    payload: vec![],
                }
            } else {
                L4::Udp {
                    sport: 0,
                    dport: 0,
                    payload: b"pong".to_vec(),
                }
            }
        };
        let with_ports = |l4: L4, a: u16, b: u16| match l4 {
            L4::Tcp {
                flags,
                seq,
                payload,
                ..
            } => L4::Tcp {
                sport: a,
                dport: b,
                flags,
                seq,
                payload,
            },
            L4::Udp { payload, .. } => L4::Udp {
                sport: a,
                dport: b,
                payload,
            },
            other => other,
        };
        let tcp = s.proto == PROTO_TCP;
        let router = if six {
            v6("fd00:9::1")
        } else {
            v4(198, 18, 9, 1)
        };

        // From the client's side: a router could not pass the balancer's answer to the
        // client. It reaches the backend, about the packet the backend sent.
        let answer = Ip::new(s.vip, client, with_ports(payload(tcp), s.port, 41000));
        let relayed = stat(&w, STAT_ICMP_RELAYED);
        let (v, out_bytes) = w.run(&icmp_error(router, s.vip, answer).bytes());
        assert_eq!(v, XDP_TX, "{what}: client side");
        let out = packet::check(&out_bytes).expect("a valid frame");
        assert_eq!((out.src, out.dst), (snat(six), backend), "{what}");
        assert_eq!(out.dst_mac, mac_of(s, backend), "{what}");
        let q = quoted(&out_bytes, six);
        assert_eq!(
            (q.src, q.dst, q.ports),
            (backend, snat(six), (s.port, port)),
            "{what}: the quote is the backend's own packet"
        );
        assert_eq!(stat(&w, STAT_ICMP_RELAYED), relayed + 1);

        // From the backend's side: it could not take the balancer's packet (a closed UDP
        // port, a smaller MTU). It reaches the client, about the packet the client sent.
        let sent = Ip::new(snat(six), backend, with_ports(payload(tcp), port, s.port));
        let (v, out_bytes) = w.run(&icmp_error(backend, snat(six), sent).bytes());
        assert_eq!(v, XDP_TX, "{what}: backend side");
        let out = packet::check(&out_bytes).expect("a valid frame");
        assert_eq!((out.src, out.dst), (s.vip, client), "{what}");
        assert_eq!(out.dst_mac, CLIENT_MAC, "{what}");
        let q = quoted(&out_bytes, six);
        assert_eq!(
            (q.src, q.dst, q.ports),
            (client, s.vip, (41000, s.port)),
            "{what}: the quote is the client's own packet"
        );
    }
    // An error about no full-NAT flow is dropped and counted.
    let stray = Ip::new(vip4(), client4(), with_no_flow());
    let before = stat(&w, STAT_DROP_NAT_UNTRANSLATED);
    assert_eq!(
        run(&w, &icmp_error(v4(198, 18, 9, 1), vip4(), stray)).0,
        XDP_DROP
    );
    assert_eq!(stat(&w, STAT_DROP_NAT_UNTRANSLATED), before + 1);
}

fn with_no_flow() -> L4 {
    L4::Tcp {
        sport: 80,
        dport: 9,
        flags: TCP_ACK,
        seq: 1,
        payload: vec![],
    }
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn a_new_connection_on_a_closed_flows_ports_gets_a_new_mapping() {
    let services = services();
    let Some(w) = world("fullnat_reuse", &services, "40000-49999") else {
        return;
    };
    let s = &services[0];
    let key = flow_key(client4(), vip4(), 44000, 80, PROTO_TCP);
    let backend = placed_addr(&w, s, &key);
    let (_, out) = run(&w, &tcp(client4(), vip4(), 44000, 80, TCP_SYN));
    let port = out.unwrap().ports.0;
    let answer = tcp(backend, snat(false), 80, port, TCP_SYN | TCP_ACK);
    assert_eq!(run(&w, &answer).0, XDP_TX);
    // Established: the backend's reset closes it; a SYN on the same ports is a new
    // connection and makes a new mapping.
    let reset = tcp(backend, snat(false), 80, port, TCP_RST | TCP_ACK);
    assert_eq!(run(&w, &reset).0, XDP_TX);
    let new = stat(&w, STAT_NAT_NEW);
    assert_eq!(
        run(&w, &tcp(client4(), vip4(), 44000, 80, TCP_SYN)).0,
        XDP_TX
    );
    assert_eq!(stat(&w, STAT_NAT_NEW), new + 1);
    assert_eq!(w.dp.nat_entries().len(), 2, "the old pair was replaced");
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn the_full_nat_program_verifies_with_room_to_spare() {
    let services = services();
    let Some(w) = world("fullnat_verifier", &services, "40000-49999") else {
        return;
    };
    let n =
        w.dp.fullnat_program()
            .unwrap()
            .info()
            .unwrap()
            .verified_instruction_count()
            .expect("the kernel reports verified instructions");
    println!("the verifier processed {n} instructions of the full-NAT program");
    assert!(
        n < 400_000,
        "{n} instructions processed: too close to the limit"
    );
}

/// The backend (by address) a frame sent to `placed_addr`'s world went to.
fn backend_of(s: &Svc, out: &Parsed) -> IpAddr {
    s.backends
        .iter()
        .find(|b| b.addr == out.dst)
        .map(|b| b.addr)
        .expect("sent to one of the service's backends")
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn a_reset_to_a_syn_is_kept_from_the_client_and_the_syn_retried_elsewhere() {
    let services = services();
    let Some(w) = world("fullnat_reset_retry", &services, "40000-49999") else {
        return;
    };
    for (i, s) in services
        .iter()
        .enumerate()
        .filter(|(_, s)| s.proto == PROTO_TCP)
    {
        let six = s.vip.is_ipv6();
        let client = if six { client6() } else { client4() };
        let syn = tcp(client, s.vip, 45000, 80, TCP_SYN);
        let (v, out) = run(&w, &syn);
        assert_eq!(v, XDP_TX);
        let out = out.unwrap();
        let first = backend_of(s, &out);
        let id = w.id_in(i, first);
        let hidden = stat(&w, STAT_NAT_RESET_HIDDEN);
        // The backend refuses: its reset does not reach the client.
        let reset = tcp(first, snat(six), 80, out.ports.0, TCP_RST | TCP_ACK);
        assert_eq!(run(&w, &reset).0, XDP_DROP, "{}: reset kept", s.vip);
        assert_eq!(stat(&w, STAT_NAT_RESET_HIDDEN), hidden + 1);
        assert_eq!(w.dp.passive_stats(id).unwrap().refused, 1);
        // The client's SYN retransmission goes to another backend.
        let retried = stat(&w, STAT_NAT_RETRIED);
        let (v, again) = run(&w, &syn);
        assert_eq!(v, XDP_TX);
        let again = again.unwrap();
        let second = backend_of(s, &again);
        assert_ne!(second, first, "{}: retried on the refusing backend", s.vip);
        assert_eq!(stat(&w, STAT_NAT_RETRIED), retried + 1);
        // A second refusal is the client's to see: one retry per connection attempt.
        let reset = tcp(second, snat(six), 80, again.ports.0, TCP_RST | TCP_ACK);
        let (v, out) = run(&w, &reset);
        assert_eq!(v, XDP_TX, "{}: the retry's reset is delivered", s.vip);
        assert_eq!(out.unwrap().dst, client);
        assert_eq!(stat(&w, STAT_NAT_RESET_HIDDEN), hidden + 1);
    }
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn a_syn_left_unanswered_goes_elsewhere_when_the_client_sends_it_again() {
    let services = services();
    let Some(w) = world("fullnat_unanswered", &services, "40000-49999") else {
        return;
    };
    let s = &services[0];
    let syn = tcp(client4(), vip4(), 46000, 80, TCP_SYN);
    let (_, out) = run(&w, &syn);
    let first = backend_of(s, &out.unwrap());
    // The client's retransmission, a second later (its first retransmission timeout).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let retried = stat(&w, STAT_NAT_RETRIED);
    let (v, again) = run(&w, &syn);
    assert_eq!(v, XDP_TX);
    let again = again.unwrap();
    let second = backend_of(s, &again);
    assert_ne!(
        second, first,
        "the retransmission went back to the silent backend"
    );
    assert_eq!(stat(&w, STAT_NAT_RETRIED), retried + 1);
    assert_eq!(w.dp.passive_stats(w.id(first)).unwrap().unanswered, 1);
    // The new backend answers; that counts for it.
    let answer = tcp(second, snat(false), 80, again.ports.0, TCP_SYN | TCP_ACK);
    assert_eq!(run(&w, &answer).0, XDP_TX);
    assert_eq!(w.dp.passive_stats(w.id(second)).unwrap().answered, 1);
}

/// A randomized run of full-NAT traffic (fixed seed): clients' TCP and UDP to the VIPs,
/// backends' answers to the SNAT addresses on mapped and unmapped ports, ICMP errors about
/// both, a share of them with flipped bits or cut short. Invariants: no XDP_ABORTED; a frame
/// sent on either goes to one of the service's backends from a SNAT address, or to a client
/// from a VIP (never back to a backend or the pool); it has valid checksums whenever the
/// input had; nothing is sent on that a
/// router would drop (`packet::router_refusal`).
#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn random_full_nat_traffic_keeps_the_invariants() {
    let services = services();
    let Some(w) = world("fullnat_random", &services, "40000-40063") else {
        return;
    };
    let seed = 0x6675_6c6c_6e61_7431_u64;
    let mut x = seed;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let clients4 = [client4(), v4(198, 18, 5, 2)];
    let clients6 = [client6(), v6("fd00:5::2")];
    let flags = [
        TCP_SYN,
        TCP_SYN | TCP_ACK,
        TCP_ACK,
        TCP_ACK | TCP_PSH,
        TCP_FIN | TCP_ACK,
        TCP_RST,
        TCP_RST | TCP_ACK,
    ];
    let (mut sent, mut dropped, mut passed) = (0, 0, 0);
    for i in 0..20_000u32 {
        let s = &services[(next() % services.len() as u64) as usize];
        let six = s.vip.is_ipv6();
        let client = if six {
            clients6[i as usize % 2]
        } else {
            clients4[i as usize % 2]
        };
        let backend = s.backends[(next() % 2) as usize].addr;
        let cport = 41000 + (next() % 8) as u16;
        let fl = flags[(next() % flags.len() as u64) as usize];
        let mut f = match next() % 4 {
            0 | 1 => frame(s.proto, client, s.vip, cport, s.port, fl),
            2 => {
                let port = 39990 + (next() % 90) as u16;
                frame(s.proto, backend, snat(six), s.port, port, fl)
            }
            _ => {
                let (from, to, about) = if next() % 2 == 0 {
                    let about = frame(s.proto, s.vip, client, s.port, cport, fl).ip.unwrap();
                    (
                        if six {
                            v6("fd00:9::1")
                        } else {
                            v4(198, 18, 9, 1)
                        },
                        s.vip,
                        about,
                    )
                } else {
                    let port = 40000 + (next() % 64) as u16;
                    let about = frame(s.proto, snat(six), backend, port, s.port, fl)
                        .ip
                        .unwrap();
                    (backend, snat(six), about)
                };
                icmp_error(from, to, about)
            }
        };
        f.src = if next() % 2 == 0 {
            CLIENT_MAC
        } else {
            mac_of(s, backend)
        };
        let mut b = f.bytes();
        if next() % 5 == 0 {
            for _ in 0..=next() % 3 {
                let at = (next() % b.len() as u64) as usize;
                b[at] ^= 1 << (next() % 8);
            }
        }
        if next() % 10 == 0 {
            let len = 14 + (next() % (b.len() as u64 - 13)) as usize;
            b.truncate(len);
        }
        let valid_in = packet::check(&b).is_ok();
        let (v, out) = w.run(&b);
        assert_ne!(
            v, XDP_ABORTED,
            "frame {i} (seed {seed:#x}) aborted: {b:02x?}"
        );
        match v {
            XDP_TX => sent += 1,
            XDP_DROP => {
                dropped += 1;
                continue;
            }
            _ => {
                passed += 1;
                continue;
            }
        }
        assert_eq!(
            packet::router_refusal(&b),
            None,
            "frame {i} (seed {seed:#x}) sent on: {b:02x?}"
        );
        let o = match packet::check(&out) {
            Ok(o) => o,
            Err(e) if valid_in => panic!("frame {i} (seed {seed:#x}): {e}: {out:02x?}"),
            Err(_) => continue,
        };
        let to_backend = s.backends.iter().any(|b| b.addr == o.dst) && o.src == snat(six);
        // (Any source may be a client: a flipped bit makes a new one.)
        let to_client =
            o.src == s.vip && o.dst != snat(six) && !s.backends.iter().any(|b| b.addr == o.dst);
        assert!(
            to_backend || to_client,
            "frame {i} (seed {seed:#x}): sent from {} to {}",
            o.src,
            o.dst
        );
    }
    println!("random full-NAT traffic: {sent} sent on, {dropped} dropped, {passed} passed");
    assert!(
        sent > 1000 && dropped > 1000,
        "{sent} sent, {dropped} dropped"
    );
}

/// An LRU map may evict one entry of a pair: the other direction's next packet, in a later
/// second, writes it again (`nat_half_lost`) and the flow goes on.
#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn a_lost_half_of_a_mapping_is_written_again() {
    let services = services();
    let Some(mut w) = world("fullnat_half_lost", &services, "40000-49999") else {
        return;
    };
    let s = &services[0];
    let (_, out) = run(&w, &tcp(client4(), vip4(), 47000, 80, TCP_SYN));
    let out = out.unwrap();
    let (backend, port) = (out.dst, out.ports.0);
    let answer = || tcp(backend, snat(false), 80, port, TCP_SYN | TCP_ACK);
    let client_ack = || tcp(client4(), vip4(), 47000, 80, TCP_ACK);
    assert_eq!(run(&w, &answer()).0, XDP_TX);
    let answer_key = flow_key(backend, snat(false), 80, port, PROTO_TCP);
    let forward_key = flow_key(client4(), vip4(), 47000, 80, PROTO_TCP);

    // The answer entry goes; the client's next packet (in a later second) writes it again.
    w.dp.nat_remove(&answer_key);
    assert_eq!(
        run(&w, &answer()).0,
        XDP_DROP,
        "an answer without its entry"
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let lost = stat(&w, STAT_NAT_HALF_LOST);
    assert_eq!(run(&w, &client_ack()).0, XDP_TX);
    assert_eq!(stat(&w, STAT_NAT_HALF_LOST), lost + 1);
    let (v, out) = run(&w, &answer());
    assert_eq!(v, XDP_TX, "the answer entry is back");
    assert_eq!(out.unwrap().dst_mac, CLIENT_MAC);

    // The forward entry goes; the backend's next packet writes it again.
    w.dp.nat_remove(&forward_key);
    assert_eq!(
        run(&w, &client_ack()).0,
        XDP_DROP,
        "a segment without its mapping"
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(run(&w, &answer()).0, XDP_TX);
    assert_eq!(stat(&w, STAT_NAT_HALF_LOST), lost + 2);
    let (v, out) = run(&w, &client_ack());
    assert_eq!(v, XDP_TX, "the forward entry is back");
    let out = out.unwrap();
    assert_eq!((out.dst, out.ports), (backend, (port, 80)));
    assert_eq!(out.dst_mac, mac_of(s, backend));
}

/// Past `[protection] fullnat_new_flows_per_cpu` new flows get no mapping and are dropped
/// (a flood would otherwise evict established flows' mappings); mapped flows go on.
#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn past_the_full_nat_flood_guard_new_flows_are_dropped_and_mapped_ones_go_on() {
    let services = services();
    if !common::privileged("fullnat_flood_guard") {
        return;
    }
    let settings = Settings {
        nat_flood_window_limit: gateway_common::flood_window_limit(1),
        ..plain_settings()
    };
    let w = World::with_dataplane(
        &services,
        settings,
        gateway::object::GATEWAY,
        TEST_LOAD,
        &pool("40000-49999"),
    );
    assert_eq!(w.settings.nat_flood_window_limit, 1);
    // One new flow per window and CPU: the first is mapped, the next ones (in the same
    // second, on this CPU) are not.
    lab::run_on_cpu(0);
    assert_eq!(
        run(&w, &tcp(client4(), vip4(), 48000, 80, TCP_SYN)).0,
        XDP_TX
    );
    let before = stat(&w, STAT_DROP_NAT_FLOOD);
    let dropped = (1..=5u16)
        .filter(|i| run(&w, &tcp(client4(), vip4(), 48000 + i, 80, TCP_SYN)).0 == XDP_DROP)
        .count();
    lab::run_on_any_cpu();
    assert!(dropped >= 4, "{dropped} of 5 new flows dropped");
    assert_eq!(stat(&w, STAT_DROP_NAT_FLOOD), before + dropped as u64);
    // The mapped flow is untouched.
    let (v, out) = run(&w, &tcp(client4(), vip4(), 48000, 80, TCP_ACK));
    assert_eq!(v, XDP_TX);
    assert_eq!(out.unwrap().src, snat(false));
}

/// A FIN or a reset from either side tells both directions of the mapping (both must age
/// out before its port is free): a FIN makes them `closing` (30 s), a reset `reset` (10 s:
/// no TIME_WAIT follows one). The client's reset matters most: the backend never answers it.
#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn a_fin_or_a_reset_from_either_side_closes_both_directions() {
    let services = services();
    let Some(w) = world("fullnat_closing", &services, "40000-49999") else {
        return;
    };
    let states = |w: &World, client_port: u16| -> Vec<u8> {
        let fwd = flow_key(client4(), vip4(), client_port, 80, PROTO_TCP);
        let entries = w.dp.nat_entries();
        let f = entries
            .iter()
            .find(|(k, _)| *k == fwd)
            .expect("forward entry")
            .1;
        let answer = flow_key(
            gateway::model::ip_of(&f.dst, FAMILY_V4),
            gateway::model::ip_of(&f.src, FAMILY_V4),
            u16::from_be(f.dport_be),
            u16::from_be(f.sport_be),
            PROTO_TCP,
        );
        let a = entries
            .iter()
            .find(|(k, _)| *k == answer)
            .expect("answer entry")
            .1;
        vec![f.state, a.state]
    };
    let open = |port: u16| {
        let (_, out) = run(&w, &tcp(client4(), vip4(), port, 80, TCP_SYN));
        let out = out.unwrap();
        let answer = tcp(out.dst, snat(false), 80, out.ports.0, TCP_SYN | TCP_ACK);
        assert_eq!(run(&w, &answer).0, XDP_TX);
        (out.dst, out.ports.0)
    };
    // The client resets: the backend will not answer, and both directions know.
    open(49000);
    assert_eq!(
        run(&w, &tcp(client4(), vip4(), 49000, 80, TCP_RST)).0,
        XDP_TX
    );
    assert_eq!(states(&w, 49000), [NAT_TCP_RESET, NAT_TCP_RESET]);
    // The client closes with a FIN, the backend then resets; a late FIN changes nothing.
    let (backend, port) = open(49001);
    let fin = tcp(client4(), vip4(), 49001, 80, TCP_FIN | TCP_ACK);
    assert_eq!(run(&w, &fin).0, XDP_TX);
    assert_eq!(states(&w, 49001), [NAT_TCP_CLOSING, NAT_TCP_CLOSING]);
    let reset = tcp(backend, snat(false), 80, port, TCP_RST | TCP_ACK);
    assert_eq!(run(&w, &reset).0, XDP_TX);
    assert_eq!(states(&w, 49001), [NAT_TCP_RESET, NAT_TCP_RESET]);
    assert_eq!(run(&w, &fin).0, XDP_TX);
    assert_eq!(states(&w, 49001), [NAT_TCP_RESET, NAT_TCP_RESET]);
}
