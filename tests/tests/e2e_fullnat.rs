//! Full-NAT end to end: the real `gateway` binary in a lab whose backends hold no VIP, run no
//! decapsulation and have no route to the client (`Lab::make_fullnat`). The scenarios every
//! mode shares (distribution, stickiness through reloads, failover, slow start, drain,
//! backups, UDP) run for full-NAT in `e2e.rs`; these are full-NAT's own.
mod common;

use std::{net::IpAddr, time::Duration};

use common::{agent::*, scenario::*};
use lab::Lab;

fn snat(v6: bool) -> IpAddr {
    let (a4, a6) = lab::snat_addrs(0);
    if v6 { a6.into() } else { a4.into() }
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn backends_see_the_snat_address_and_clients_the_vip() {
    if !common::privileged("backends_see_the_snat_address_and_clients_the_vip") {
        return;
    }
    let _g = common::serial();
    let lab = common::lab("fn", 2);
    for v6 in [false, true] {
        let cfg = Cfg::new("fullnat", v6, 2);
        let agent = start(&lab, &cfg, 2);
        // The backends could not answer the client themselves.
        let client: IpAddr = if v6 {
            lab.client.ipv6.into()
        } else {
            lab.client.ipv4.into()
        };
        for b in &lab.backends {
            let route = lab::ns_exec(&b.netns, &["ip", "route", "get", &client.to_string()]);
            assert!(route.is_err(), "{} has a route to {client}", b.name);
        }
        let v = vip(&lab, v6);
        let (replied, new) = (lb_counter(&lab, "nat_replied"), lb_counter(&lab, "nat_new"));
        let seen = client_side(&lab, move || {
            (0..20)
                .map(|_| {
                    let mut c = Conn::open(v).expect("connect to the VIP");
                    let peer = c.peer().expect("peer");
                    let me = c.local().expect("local");
                    let saw = c.say("peer").expect("peer line");
                    let name = c.ask().expect("ask");
                    (peer, me, saw, name, c)
                })
                .collect::<Vec<_>>()
        });
        for (peer, _, backend_saw, name, _) in &seen {
            assert_eq!(*peer, v, "the client's connection is with the VIP");
            let saw: std::net::SocketAddr = backend_saw.parse().expect("address:port");
            assert_eq!(
                saw.ip(),
                snat(v6),
                "{name} saw the connection come from {backend_saw}"
            );
        }
        let names: std::collections::BTreeSet<&String> = seen.iter().map(|s| &s.3).collect();
        assert_eq!(names.len(), 2, "both backends served: {names:?}");
        // Who is behind the SNAT address and port a backend logged: `gateway nat`.
        let (_, me, saw, name, _) = &seen[7];
        let (ok, out, err) = gateway_cli_in(&lab.lb.netns, &["nat", "--snat", saw, "--json"]);
        assert!(ok, "{out}{err}");
        let r: gateway::admin::NatReport = serde_json::from_str(&out).expect("/nat JSON");
        assert_eq!(r.matched, 1, "{out}");
        let m = &r.mappings[0];
        assert_eq!(
            (m.client.as_str(), m.snat.as_str(), m.service.as_str()),
            (me.to_string().as_str(), saw.as_str(), "web")
        );
        let index: usize = name.trim_start_matches('b').parse().expect("backend name");
        let b = &lab.backends[index - 1];
        let backend_ip: IpAddr = if v6 { b.ipv6.into() } else { b.ipv4.into() };
        assert_eq!(
            m.backend,
            std::net::SocketAddr::new(backend_ip, 80).to_string()
        );
        assert_eq!(m.state, "established");
        let client_ip = me.ip().to_string();
        let (ok, table, err) = gateway_cli_in(&lab.lb.netns, &["nat", "--client", &client_ip]);
        assert!(ok, "{table}{err}");
        assert!(
            table.contains(&me.to_string()) && table.contains(saw.as_str()),
            "{table}"
        );
        drop(seen);
        assert!(lb_counter(&lab, "nat_new") >= new + 20);
        assert!(lb_counter(&lab, "nat_replied") > replied);
        assert!(agent.stop().success());
    }
}

/// A SNAT address removed by a reload drains: the connections that use it keep working
/// (their answers still reach the full-NAT program, though the address is no longer in the
/// config), and new connections get only the addresses the config names.
#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn a_snat_address_removed_by_a_reload_drains_without_breaking_its_flows() {
    let test = "a_snat_address_removed_by_a_reload_drains_without_breaking_its_flows";
    if !common::privileged(test) {
        return;
    }
    let _g = common::serial();
    let lab = common::lab("fd", 2);
    let cfg = Cfg::new("fullnat", false, 2);
    // A second SNAT address on the balancer's interface, as the first is.
    let (first, _) = lab::snat_addrs(0);
    let second = std::net::Ipv4Addr::new(198, 18, 0, 110);
    lab.make_fullnat().expect("full-NAT lab");
    lab::ns_exec(
        &lab.lb.netns,
        &["ip", "addr", "add", &format!("{second}/32"), "dev", "eth0"],
    )
    .expect("second SNAT address");
    let both = cfg.render(&lab).replace(
        &format!("snat_v4 = [\"{first}\"]"),
        &format!("snat_v4 = [\"{first}\", \"{second}\"]"),
    );
    assert!(both.contains(&second.to_string()), "{both}");
    let agent = Agent::start(&lab, &both);
    let v = vip(&lab, false);
    let on = |addr: std::net::Ipv4Addr| {
        let (ok, out, err) = gateway_cli_in(
            &lab.lb.netns,
            &["nat", "--snat", &addr.to_string(), "--json"],
        );
        assert!(ok, "{out}{err}");
        serde_json::from_str::<gateway::admin::NatReport>(&out)
            .expect("/nat JSON")
            .matched
    };
    let mut conns = common::ecmp::Held::open(&lab, false, 30);
    // The config the lab renders names only the first address: the reload removes the
    // second.
    let held = on(second);
    assert!(
        held > 0 && on(first) > 0,
        "30 flows spread over both SNAT addresses: {held} on {second}"
    );

    agent.reload(&cfg.render(&lab));
    assert!(
        agent.wait_log(
            &format!("SNAT address {second} is not in the config"),
            Duration::from_secs(5)
        ),
        "{}",
        agent.log_text()
    );
    let status = common::status_at(&lab.lb.netns, &cfg.admin_listen);
    assert_eq!(status.dataplane.snat_draining, [second.to_string()]);
    let broken = conns.check(&lab);
    assert!(
        broken.is_empty(),
        "after the reload: {broken:#?}\n{}",
        agent.log_text()
    );
    // New connections (their mappings outlive them by 30 s, so /nat still counts them).
    let opened = client_side(&lab, move || {
        (0..20).filter(|_| Conn::open(v).is_ok()).count()
    });
    assert_eq!(opened, 20, "new connections after the reload");
    assert_eq!(
        on(second),
        held,
        "no new connection was given the removed address"
    );
    eprintln!("{test}: {held} held flows on the removed {second} kept working");
    assert!(agent.stop().success());
}

/// Runs `f` in the client's namespace.
fn client_side<T: Send + 'static>(lab: &Lab, f: impl FnOnce() -> T + Send + 'static) -> T {
    client(lab, f)
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn the_seventeenth_concurrent_flow_on_sixteen_ports_is_refused_and_counted() {
    if !common::privileged("the_seventeenth_concurrent_flow_on_sixteen_ports") {
        return;
    }
    let _g = common::serial();
    let lab = common::lab("fx", 1);
    let mut cfg = Cfg::new("fullnat", false, 1);
    cfg.dataplane_extra = "snat_ports = \"40000-40015\"\n".into();
    // No warm-up through the VIP: a closed connection's mapping keeps its port for the
    // closing timeout, and this test needs all 16.
    prepare(&lab, &cfg);
    let agent = Agent::start(&lab, &cfg.render(&lab));
    wait_up(&lab, &agent, &cfg.admin_listen, 1);
    let v = vip(&lab, false);
    let exhausted = lb_counter(&lab, "drop_nat_exhausted");
    let (answers, seventeenth_refused, still) = client(&lab, move || {
        let mut held: Vec<Conn> = (0..16).filter_map(|_| Conn::open(v).ok()).collect();
        let answers = held
            .iter_mut()
            .map(|c| c.ask())
            .filter(Result::is_ok)
            .count();
        let extra = Conn::open(v).is_err();
        let still = held
            .iter_mut()
            .map(|c| c.ask())
            .filter(Result::is_ok)
            .count();
        (answers, extra, still)
    });
    assert_eq!(answers, 16, "16 concurrent flows fit 16 ports");
    assert!(
        seventeenth_refused,
        "the 17th concurrent flow was let through"
    );
    assert_eq!(still, 16, "the held flows kept working");
    assert!(lb_counter(&lab, "drop_nat_exhausted") > exhausted);
    assert!(agent.stop().success());
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn agent_restarts_keep_full_nat_connections() {
    if !common::privileged("agent_restarts_keep_full_nat_connections") {
        return;
    }
    let _g = common::serial();
    let lab = common::lab("fh", 3);
    for v6 in [false, true] {
        let mut cfg = Cfg::new("fullnat", v6, 3);
        cfg.on_exit = "keep";
        let mut agent = start(&lab, &cfg, 3);
        let v = vip(&lab, v6);
        let (tx, rx) = std::sync::mpsc::channel::<&'static str>();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let worker = common::in_netns(&lab.client.netns, move || {
            let mut conns: Vec<(Conn, String)> = (0..30)
                .map(|_| {
                    let mut c = Conn::open(v).expect("open");
                    let name = c.ask().expect("ask");
                    (c, name)
                })
                .collect();
            done_tx.send(()).unwrap();
            let mut errors = Vec::new();
            while let Ok(step) = rx.recv() {
                for (i, (c, name)) in conns.iter_mut().enumerate() {
                    match c.ask() {
                        Ok(n) if &n == name => {}
                        Ok(n) => errors.push(format!("{step}: connection {i} moved {name} -> {n}")),
                        Err(e) => errors.push(format!("{step}: connection {i} on {name}: {e}")),
                    }
                }
                // New connections work too.
                if let Err(e) = Conn::open(v) {
                    errors.push(format!("{step}: a new connection: {e}"));
                }
                done_tx.send(()).unwrap();
            }
            errors
        });
        done_rx.recv().unwrap();
        let check = |what: &'static str| {
            tx.send(what).unwrap();
            done_rx.recv().unwrap();
        };
        for round in 0..3 {
            if round == 1 {
                agent.kill();
            } else {
                assert!(agent.stop().success());
            }
            check(if round == 1 {
                "agent killed"
            } else {
                "agent stopped"
            });
            agent = Agent::start(&lab, &cfg.render(&lab));
            assert!(
                agent.wait_log("adopted the pinned maps", Duration::from_secs(5)),
                "{}",
                agent.log_text()
            );
            check("agent back");
        }
        drop(tx);
        let errors = worker.join().unwrap();
        assert!(
            errors.is_empty(),
            "IPv6 {v6}: {errors:#?}\n{}",
            agent.log_text()
        );
        assert!(agent.stop().success());
        let pin_dir = lab.pin_dir().display().to_string();
        let (ok, out, err) =
            gateway_cli_in(&lab.lb.netns, &["stop", "--detach", "--pin-dir", &pin_dir]);
        assert!(ok, "{out}{err}");
    }
}

/// A backend's server killed under a steady stream of new connections fails none of them to
/// open. The reset its kernel answers a SYN with never reaches the client, whose SYN
/// retransmission (a second later) goes to another backend; the refused SYN also counts as
/// a passive failure, which takes the backend out long before its probes (one a second
/// here, three failures to fall) would. A connection the dying server had already accepted
/// is reset, as behind any balancer: at most the one in flight at the kill.
#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn killing_a_backend_under_new_connections_fails_none() {
    if !common::privileged("killing_a_backend_under_new_connections_fails_none") {
        return;
    }
    let _g = common::serial();
    for v6 in [false, true] {
        let mut lab = common::lab("fk", 3);
        let mut cfg = Cfg::new("fullnat", v6, 3);
        cfg.interval_ms = 1000;
        cfg.fall = 3;
        cfg.health_extra = "passive_fall = 1".into();
        let agent = start(&lab, &cfg, 3);
        let hidden = lb_counter(&lab, "nat_reset_hidden");
        let f = failover_with(&mut lab, v6, Duration::from_secs(3));
        println!(
            "full-NAT IPv6 {v6}: {} of {} new connections failed after the kill ({:?}); resets \
             kept from clients: {}",
            f.failed,
            f.total,
            f.errors,
            lb_counter(&lab, "nat_reset_hidden") - hidden
        );
        assert_eq!(f.failed_before, 0, "{:?}", f.errors);
        let (unopened, in_flight): (Vec<_>, Vec<_>) = f
            .errors
            .iter()
            .partition(|(_, e)| e.starts_with("connect: "));
        assert!(
            unopened.is_empty(),
            "connections that never opened: {unopened:?}"
        );
        assert!(
            in_flight.len() <= 1,
            "opened connections reset: {in_flight:?}"
        );
        assert!(f.other_errors.is_empty(), "{:?}", f.other_errors);
        assert!(
            lb_counter(&lab, "nat_reset_hidden") > hidden,
            "no reset was kept from a client: the kill missed the stream"
        );
        let passive_down = format!(
            "{} DOWN after 1 failure: passive",
            if v6 {
                "[fd00::11]:80"
            } else {
                "198.18.0.11:80"
            }
        );
        assert!(
            agent.wait_log(&passive_down, Duration::from_secs(2)),
            "{}",
            agent.log_text()
        );
        assert!(agent.stop().success());
    }
}

/// Answers to a full-NAT flow go to the next hop the balancer's own routes and neighbours
/// name for the client (`bpf_fib_lookup`, when the flow starts and once a second after),
/// and only without one to the MAC the client's packets came from: a neighbour entry that
/// names another MAC takes new flows' answers there (and the client never sees them);
/// removed, the answers find the client again. (The kernel answers such lookups only for an
/// interface with forwarding on.)
#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn answers_follow_the_balancers_next_hop_to_the_client() {
    if !common::privileged("answers_follow_the_balancers_next_hop_to_the_client") {
        return;
    }
    let _g = common::serial();
    let lab = common::lab("fm", 1);
    // The kernel answers a next-hop lookup only for an interface that forwards.
    lab::ns_exec(
        &lab.lb.netns,
        &["sysctl", "-qw", "net.ipv4.conf.eth0.forwarding=1"],
    )
    .expect("sysctl");
    let cfg = Cfg::new("fullnat", false, 1);
    let agent = start(&lab, &cfg, 1);
    let v = vip(&lab, false);
    let client = lab.client.ipv4.to_string();
    let try_new = |port: u16| {
        common::scenario::client(&lab, move || tcp_name(v, port, Duration::from_millis(1500)))
    };
    assert!(try_new(31000).is_ok(), "a new connection before the change");
    let neigh = |args: &[&str]| {
        let mut a = vec!["ip", "neigh"];
        a.extend_from_slice(args);
        lab::ns_exec(&lab.lb.netns, &a).expect("ip neigh");
    };
    neigh(&[
        "replace",
        &client,
        "lladdr",
        "02:de:ad:be:ef:01",
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    let r = try_new(31001);
    assert!(
        r.is_err(),
        "answers went to the client despite the neighbour entry: {r:?}"
    );
    neigh(&["del", &client, "dev", "eth0"]);
    assert!(
        try_new(31002).is_ok(),
        "a new connection after the entry went"
    );
    assert!(agent.stop().success());
}
