use std::net::IpAddr;

use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteVia},
};

use super::{netlink::*, *};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn neighbour_msg(addr: &str, mac: Option<[u8; 6]>, state: NeighbourState) -> NeighbourMessage {
    let mut n = NeighbourMessage::default();
    let a = ip(addr);
    n.header.family = if a.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    n.header.ifindex = 7;
    n.header.state = state;
    n.attributes.push(NeighbourAttribute::Destination(match a {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }));
    if let Some(m) = mac {
        n.attributes
            .push(NeighbourAttribute::LinkLayerAddress(m.to_vec()));
    }
    n
}

fn route_msg(dst: Option<(&str, u8)>, v6: bool) -> RouteMessage {
    let mut r = RouteMessage::default();
    r.header.address_family = if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    if let Some((d, len)) = dst {
        r.header.destination_prefix_length = len;
        r.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(ip(d))));
    }
    r
}

fn parsed(msgs: Vec<RouteNetlinkMessage>) -> Vec<Event> {
    let mut d = Vec::new();
    for (i, m) in msgs.into_iter().enumerate() {
        d.extend(serialise(i as u32, m));
    }
    let mut out = Vec::new();
    parse(&d, &mut out);
    out
}

const MAC: [u8; 6] = [2, 0xbe, 0, 0, 0, 11];

#[test]
fn neighbour_messages_carry_a_mac_only_when_it_is_usable() {
    let events = parsed(vec![
        RouteNetlinkMessage::NewNeighbour(neighbour_msg(
            "198.18.0.11",
            Some(MAC),
            NeighbourState::Reachable,
        )),
        RouteNetlinkMessage::NewNeighbour(neighbour_msg(
            "fd00::11",
            Some(MAC),
            NeighbourState::Stale,
        )),
        RouteNetlinkMessage::NewNeighbour(neighbour_msg(
            "198.18.0.12",
            None,
            NeighbourState::Incomplete,
        )),
        RouteNetlinkMessage::NewNeighbour(neighbour_msg(
            "198.18.0.13",
            Some(MAC),
            NeighbourState::Failed,
        )),
        RouteNetlinkMessage::DelNeighbour(neighbour_msg(
            "198.18.0.11",
            Some(MAC),
            NeighbourState::Stale,
        )),
    ]);
    let n = |a: &str, mac| Event::Neighbour {
        ifindex: 7,
        addr: ip(a),
        mac,
    };
    assert_eq!(
        events,
        vec![
            n("198.18.0.11", Some(MAC)),
            n("fd00::11", Some(MAC)),
            n("198.18.0.12", None),
            n("198.18.0.13", None),
            n("198.18.0.11", None),
        ]
    );
}

#[test]
fn route_messages_name_the_prefix_they_change() {
    let events = parsed(vec![
        RouteNetlinkMessage::NewRoute(route_msg(Some(("198.18.5.0", 24)), false)),
        RouteNetlinkMessage::DelRoute(route_msg(Some(("fd00:5::", 64)), true)),
        // A default route has no destination attribute.
        RouteNetlinkMessage::NewRoute(route_msg(None, false)),
    ]);
    assert_eq!(
        events,
        vec![
            Event::Routes {
                prefix: ip("198.18.5.0"),
                len: 24
            },
            Event::Routes {
                prefix: ip("fd00:5::"),
                len: 64
            },
            Event::Routes {
                prefix: ip("0.0.0.0"),
                len: 0
            },
        ]
    );
}

#[test]
fn links_addresses_and_rules_move_every_route_and_garbage_asks_for_a_resync() {
    // An RTM_NEWLINK header with an empty body: its type is all that is read.
    let mut link = vec![0u8; 16];
    link[..4].copy_from_slice(&16u32.to_ne_bytes());
    link[4..6].copy_from_slice(&16u16.to_ne_bytes());
    let mut out = Vec::new();
    parse(&link, &mut out);
    assert_eq!(out, vec![Event::AllRoutes]);
    out.clear();
    // A length that runs past the datagram.
    let mut bad = link.clone();
    bad[..4].copy_from_slice(&64u32.to_ne_bytes());
    parse(&bad, &mut out);
    assert_eq!(out, vec![Event::Resync]);
    out.clear();
    // A neighbour message whose body does not decode.
    let mut neigh = link;
    neigh[4..6].copy_from_slice(&28u16.to_ne_bytes());
    parse(&neigh, &mut out);
    assert_eq!(out, vec![Event::Resync]);
}

#[test]
fn route_answers_give_the_device_and_the_router() {
    let mut r = route_msg(Some(("198.18.9.9", 32)), false);
    r.attributes.push(RouteAttribute::Oif(3));
    assert_eq!(
        route_of(&r),
        Ok(Route {
            gateway: None,
            oif: 3
        })
    );
    r.attributes
        .push(RouteAttribute::Gateway(RouteAddress::from(ip(
            "198.18.0.254",
        ))));
    assert_eq!(route_of(&r).unwrap().gateway, Some(ip("198.18.0.254")));
    // IPv4 via an IPv6 router (RFC 5549).
    let mut r = route_msg(Some(("198.18.9.9", 32)), false);
    r.attributes.push(RouteAttribute::Oif(3));
    r.attributes.push(RouteAttribute::Via(RouteVia::Inet6(
        "fe80::1".parse().unwrap(),
    )));
    assert_eq!(
        route_of(&r).unwrap().next_hop(ip("198.18.9.9")),
        ip("fe80::1")
    );
    assert!(route_of(&route_msg(None, false)).is_err());
}

#[test]
fn prefixes_contain_what_they_should() {
    for (addr, prefix, len, inside) in [
        ("198.18.0.11", "198.18.0.0", 24, true),
        ("198.18.1.11", "198.18.0.0", 24, false),
        ("198.18.0.11", "198.18.0.11", 32, true),
        ("198.18.0.12", "198.18.0.11", 32, false),
        ("198.18.0.11", "0.0.0.0", 0, true),
        ("fd00::11", "0.0.0.0", 0, false),
        ("fd00::11", "fd00::", 64, true),
        ("fd00:1::11", "fd00::", 64, false),
        ("fd00::11", "::", 0, true),
        ("fd00::11", "fd00::11", 128, true),
    ] {
        assert_eq!(
            in_prefix(ip(addr), ip(prefix), len),
            inside,
            "{addr} in {prefix}/{len}"
        );
    }
}

fn name(i: u32) -> String {
    format!("if{i}")
}

/// Tables with eth0 = 2 and these routes and neighbours.
fn tables(routes: &[(&str, Result<Route, String>)], neigh: &[(&str, [u8; 6])]) -> Tables {
    let mut t = Tables::default();
    for (a, r) in routes {
        t.routes.insert(ip(a), r.clone());
    }
    for (a, m) in neigh {
        t.apply(Event::Neighbour {
            ifindex: 2,
            addr: ip(a),
            mac: Some(*m),
        });
    }
    t
}

fn on_link() -> Result<Route, String> {
    Ok(Route {
        gateway: None,
        oif: 2,
    })
}

fn via(g: &str, oif: u32) -> Result<Route, String> {
    Ok(Route {
        gateway: Some(ip(g)),
        oif,
    })
}

#[test]
fn answers_follow_the_rules_of_each_mode() {
    let router = [2, 0, 0, 0, 0, 0xfe];
    let mut t = tables(
        &[
            ("198.18.0.11", on_link()),
            ("198.18.0.12", on_link()),
            ("198.18.9.9", via("198.18.0.254", 2)),
            ("198.18.8.8", via("198.18.3.1", 3)),
            ("203.0.113.1", Err("Network is unreachable".into())),
        ],
        &[("198.18.0.11", MAC), ("198.18.0.254", router)],
    );
    let backends = [
        (ip("198.18.0.11"), true),
        (ip("198.18.0.12"), true),
        (ip("198.18.9.9"), false),
        (ip("198.18.8.8"), false),
        (ip("203.0.113.1"), false),
    ];
    let a = t.answer(&backends, "eth0", Some(2), name);
    assert_eq!(a[&ip("198.18.0.11")], Ok(MAC));
    assert_eq!(
        a[&ip("198.18.0.12")],
        Err("no neighbour entry for 198.18.0.12 yet (resolving)".into())
    );
    assert_eq!(a[&ip("198.18.9.9")], Ok(router));
    assert_eq!(
        a[&ip("198.18.8.8")],
        Err("routed via if3, not eth0 where the program runs".into())
    );
    assert_eq!(
        a[&ip("203.0.113.1")],
        Err("no route: Network is unreachable".into())
    );
    assert_eq!(
        t.unresolved.iter().copied().collect::<Vec<_>>(),
        vec![ip("198.18.0.12")]
    );
    // The same routed backend in an l2dsr service cannot be used.
    let a = t.answer(&[(ip("198.18.9.9"), true)], "eth0", Some(2), name);
    assert_eq!(
        a[&ip("198.18.9.9")],
        Err("l2dsr needs the backend on-link, but it is routed via 198.18.0.254".into())
    );
}

#[test]
fn only_changes_of_next_hops_in_use_matter() {
    let mut t = tables(&[("198.18.0.11", on_link())], &[("198.18.0.11", MAC)]);
    let backends = [(ip("198.18.0.11"), false)];
    t.answer(&backends, "eth0", Some(2), name);
    let n = |a: &str, mac| Event::Neighbour {
        ifindex: 2,
        addr: ip(a),
        mac,
    };
    // Another host's entry, the same MAC again, the same address on another interface.
    assert!(!t.apply(n("198.18.0.99", Some([2, 0, 0, 0, 0, 1]))));
    assert!(!t.apply(n("198.18.0.11", Some(MAC))));
    assert!(!t.apply(Event::Neighbour {
        ifindex: 5,
        addr: ip("198.18.0.11"),
        mac: None
    }));
    // The backend's MAC moves: the answer follows.
    let moved = [2, 0xbe, 0, 0, 0, 0x99];
    assert!(t.apply(n("198.18.0.11", Some(moved))));
    assert_eq!(
        t.answer(&backends, "eth0", Some(2), name)[&ip("198.18.0.11")],
        Ok(moved)
    );
    // It fails: the backend waits for it again.
    assert!(t.apply(n("198.18.0.11", None)));
    assert!(
        t.answer(&backends, "eth0", Some(2), name)[&ip("198.18.0.11")]
            .as_ref()
            .is_err_and(|e| e.contains("resolving"))
    );
}

#[test]
fn a_route_change_forgets_only_the_routes_inside_its_prefix() {
    let mut t = tables(
        &[
            ("198.18.0.11", on_link()),
            ("198.18.5.5", via("198.18.0.254", 2)),
            ("fd00::11", on_link()),
        ],
        &[],
    );
    let backends = [
        (ip("198.18.0.11"), false),
        (ip("198.18.5.5"), false),
        (ip("fd00::11"), false),
    ];
    assert!(t.missing(&backends).is_empty());
    assert!(!t.apply(Event::Routes {
        prefix: ip("198.18.7.0"),
        len: 24
    }));
    assert!(t.apply(Event::Routes {
        prefix: ip("198.18.5.0"),
        len: 24
    }));
    assert_eq!(t.missing(&backends), vec![ip("198.18.5.5")]);
    // An IPv4 default route leaves IPv6 alone.
    assert!(t.apply(Event::Routes {
        prefix: ip("0.0.0.0"),
        len: 0
    }));
    assert_eq!(
        t.missing(&backends),
        vec![ip("198.18.0.11"), ip("198.18.5.5")]
    );
    assert!(t.apply(Event::AllRoutes));
    assert_eq!(t.missing(&backends).len(), 3);
    assert!(!t.apply(Event::AllRoutes));
    assert!(t.apply(Event::Resync));
}

/// Runs `f` on a thread of its own in a fresh network namespace (gone when the thread ends,
/// with everything in it); None when that is not allowed here.
fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    std::thread::spawn(move || {
        // SAFETY: unshare(2) moves only this thread into a new network namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            let e = std::io::Error::last_os_error();
            crate::testing::skip(
                "netlink test",
                &format!("cannot create a network namespace ({e}); run as root"),
            );
            return None;
        }
        Some(f())
    })
    .join()
    .expect("test thread")
}

/// `ip ARGS` in the calling thread's namespace (children inherit it).
fn sh_ip(args: &str) {
    let out = std::process::Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_kernel_announces_neighbour_and_route_changes() {
    in_new_netns(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for cmd in [
                "link set lo up",
                "link add v0 type veth peer name v1",
                "addr add 198.18.0.1/24 dev v0",
                "addr add fd00::1/64 dev v0 nodad",
                "link set v0 up",
                "link set v1 up",
            ] {
                sh_ip(cmd);
            }
            let mut r = Resolver::default();
            let b = ip("198.18.0.5");
            let routed = ip("198.18.7.7");
            let b6 = ip("fd00::5");
            let backends = [
                (b, true),
                (routed, false),
                (b6, false),
                (ip("127.0.0.1"), false),
            ];
            let a = r.resolve(&backends, "v0");
            assert!(
                a[&b].as_ref().is_err_and(|e| e.contains("resolving")),
                "{a:?}"
            );
            assert!(
                a[&routed]
                    .as_ref()
                    .is_err_and(|e| e.starts_with("no route")),
                "{a:?}"
            );
            assert_eq!(
                a[&ip("127.0.0.1")],
                Err("routed via lo, not v0 where the program runs".into())
            );
            assert!(r.due(), "a next hop is being resolved");

            // Each change must wake `changed` and move the answer.
            let step = async |r: &mut Resolver, cmd: &str| {
                let t = std::time::Instant::now();
                sh_ip(cmd);
                tokio::time::timeout(Duration::from_secs(2), r.changed())
                    .await
                    .unwrap_or_else(|_| panic!("no event after `ip {cmd}`"));
                let a = r.resolve(&backends, "v0");
                eprintln!("ip {cmd}: answered {:?} later", t.elapsed());
                a
            };
            let a = step(
                &mut r,
                "neigh replace 198.18.0.5 lladdr 02:00:00:00:00:05 dev v0",
            )
            .await;
            assert_eq!(a[&b], Ok([2, 0, 0, 0, 0, 5]));
            let a = step(&mut r, "route add 198.18.7.0/24 via 198.18.0.5").await;
            assert_eq!(a[&routed], Ok([2, 0, 0, 0, 0, 5]));
            let a = step(
                &mut r,
                "neigh replace 198.18.0.5 lladdr 02:00:00:00:00:06 dev v0",
            )
            .await;
            assert_eq!(a[&b], Ok([2, 0, 0, 0, 0, 6]));
            assert_eq!(a[&routed], Ok([2, 0, 0, 0, 0, 6]));
            // l2dsr (on-link only) loses an on-link backend that is routed via a router.
            let a = step(&mut r, "route add 198.18.0.5/32 via 198.18.0.9").await;
            assert!(
                a[&b].as_ref().is_err_and(|e| e.starts_with("l2dsr")),
                "{a:?}"
            );
            let a = step(&mut r, "route del 198.18.0.5/32").await;
            assert_eq!(a[&b], Ok([2, 0, 0, 0, 0, 6]));
            let a = step(&mut r, "route del 198.18.7.0/24").await;
            assert!(
                a[&routed]
                    .as_ref()
                    .is_err_and(|e| e.starts_with("no route")),
                "{a:?}"
            );
            let a = step(
                &mut r,
                "neigh replace fd00::5 lladdr 02:00:00:00:00:07 dev v0",
            )
            .await;
            assert_eq!(a[&b6], Ok([2, 0, 0, 0, 0, 7]));
            // A link going down takes its IPv4 routes without a route message.
            let a = step(&mut r, "link set v0 down").await;
            assert!(a[&b].is_err(), "{a:?}");
        });
    });
}

#[test]
fn ten_thousand_route_lookups_take_milliseconds() {
    in_new_netns(|| {
        sh_ip("link set lo up");
        let mut req = Requests::open().unwrap();
        let addrs: Vec<IpAddr> = (0..10_000u32)
            .map(|i| IpAddr::from([127, 1, (i >> 8) as u8, i as u8]))
            .collect();
        let t = std::time::Instant::now();
        let routes = req.routes(&addrs);
        let took = t.elapsed();
        eprintln!("10,000 route lookups: {took:?}");
        assert_eq!(routes.len(), addrs.len());
        let lo = super::ifindex("lo").unwrap();
        assert!(routes.iter().all(|r| r.as_ref().is_ok_and(|r| r.oif == lo)));
        // Unreachable addresses answer with an error in their own slot.
        let r = req.routes(&[ip("127.0.0.1"), ip("198.18.0.1"), ip("::1")]);
        assert!(r[0].is_ok() && r[2].is_ok(), "{r:?}");
        assert!(
            r[1].as_ref().is_err_and(|e| e.contains("unreachable")),
            "{r:?}"
        );
        assert!(took < Duration::from_secs(2), "{took:?}");
    });
}
