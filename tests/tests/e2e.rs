//! End to end: the real `gateway` binary with a real config in a namespace lab, real TCP and
//! UDP from the client namespace to the VIP, answered by the backends directly (l2dsr), after
//! decapsulation (ipip), or back through the balancer (fullnat, backends without the VIP
//! or a route to the client), over IPv4 and IPv6.
mod common;

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use common::{admin_get, agent::*, metric_sum, scenario::*};
use lab::{Lab, SERVER_PORT};

const TIMEOUT: Duration = Duration::from_millis(500);

/// `n` new connections from source ports `first..`: backend name -> count, and failures.
fn spread(lab: &Lab, v6: bool, first: u16, n: u16) -> (BTreeMap<String, usize>, usize) {
    let vip = vip(lab, v6);
    client(lab, move || {
        let mut seen = BTreeMap::new();
        let mut failed = 0;
        for p in first..first + n {
            match tcp_name(vip, p, TIMEOUT) {
                Ok(name) => *seen.entry(name).or_insert(0) += 1,
                Err(e) => {
                    failed += 1;
                    eprintln!("connection from port {p}: {e}");
                }
            }
        }
        (seen, failed)
    })
}

/// Each backend's share of the flows `seen` is its weight's share, within what chance
/// allows: the flows' slots are as good as random, so a backend's count is binomial and
/// may be 4 standard deviations off (1 in 16,000), plus 1% for the Maglev table's own
/// rounding. A weighting that is not followed is far outside that: an equal split of
/// 12,000 flows under weights 1:2:3 puts b1 100% over.
fn assert_shares(seen: &BTreeMap<String, usize>, weights: &[(&str, f64)]) {
    let total: usize = seen.values().sum();
    let wsum: f64 = weights.iter().map(|w| w.1).sum();
    for (name, w) in weights {
        let p = w / wsum;
        let want = total as f64 * p;
        let tolerance = 4.0 * (total as f64 * p * (1.0 - p)).sqrt() / want + 0.01;
        let got = *seen.get(*name).unwrap_or(&0) as f64;
        let err = (got - want).abs() / want;
        assert!(
            err <= tolerance,
            "{name}: {got} of {total}, want {want:.0} ({:.1}% off, {:.1}% allowed): {seen:?}",
            err * 100.0,
            tolerance * 100.0
        );
    }
}

/// Deterministic source ports make the placement reproducible: the same ports hash to the
/// same slots on every run.
const CONNECTIONS: u16 = 12_000;

fn distribution(mode: &'static str, v6: bool) {
    let name = format!("distribution_{mode}_{}", if v6 { "v6" } else { "v4" });
    if !common::privileged(&name) {
        return;
    }
    let _g = common::serial();
    let lab = common::lab("d", 3);
    let mut cfg = Cfg::new(mode, v6, 3);
    let agent = start(&lab, &cfg, 3);

    let (seen, failed) = spread(&lab, v6, 20_000, CONNECTIONS);
    println!("{name} equal weights: {seen:?}, {failed} failed");
    assert_eq!(failed, 0);
    assert_shares(&seen, &[("b1", 1.0), ("b2", 1.0), ("b3", 1.0)]);

    cfg.backends = vec![
        Some("weight = 100".into()),
        Some("weight = 200".into()),
        Some("weight = 300".into()),
    ];
    agent.reload(&cfg.render(&lab));
    let (seen, failed) = spread(&lab, v6, 40_000, CONNECTIONS);
    println!("{name} weights 1:2:3: {seen:?}, {failed} failed");
    assert_eq!(failed, 0);
    assert_shares(&seen, &[("b1", 1.0), ("b2", 2.0), ("b3", 3.0)]);
    assert!(agent.stop().success());
}

// ---------------------------------------------------------------------------------------
// Stickiness, failover, recovery, drain, backup, UDP, the host's own traffic, bad configs.

/// The log name of backend `i`'s health check target, e.g. `198.18.0.11:80`.
fn target(lab: &Lab, i: usize, v6: bool) -> String {
    let b = &lab.backends[i];
    let ip: std::net::IpAddr = if v6 { b.ipv6.into() } else { b.ipv4.into() };
    SocketAddr::new(ip, SERVER_PORT).to_string()
}

/// Each scenario runs for every forwarding mode and both address families.
macro_rules! matrix {
    ($name:ident) => {
        mod $name {
            fn run(mode: &'static str, v6: bool) {
                let name = format!(
                    "{}_{mode}_{}",
                    stringify!($name),
                    if v6 { "v6" } else { "v4" }
                );
                if super::common::privileged(&name) {
                    super::$name(mode, v6);
                }
            }
            #[test]
            #[ignore = "privileged: run by `cargo xtask test`"]
            fn l2dsr_v4() {
                run("l2dsr", false);
            }
            #[test]
            #[ignore = "privileged: run by `cargo xtask test`"]
            fn l2dsr_v6() {
                run("l2dsr", true);
            }
            #[test]
            #[ignore = "privileged: run by `cargo xtask test`"]
            fn ipip_v4() {
                run("ipip", false);
            }
            #[test]
            #[ignore = "privileged: run by `cargo xtask test`"]
            fn ipip_v6() {
                run("ipip", true);
            }
            #[test]
            #[ignore = "privileged: run by `cargo xtask test`"]
            fn fullnat_v4() {
                run("fullnat", false);
            }
            #[test]
            #[ignore = "privileged: run by `cargo xtask test`"]
            fn fullnat_v6() {
                run("fullnat", true);
            }
        }
    };
}

matrix!(distribution);
matrix!(stickiness);
matrix!(failover);
matrix!(recovery_with_slow_start);
matrix!(drain_keeps_established_connections);
matrix!(backup_takes_over_only_while_no_primary_is_up);
matrix!(udp_spreads_and_sticks_per_flow);
matrix!(a_silent_backend_fails_at_the_timeout);

fn label(mode: &str, v6: bool) -> String {
    format!("{mode}/{}", if v6 { "IPv6" } else { "IPv4" })
}

fn stickiness(mode: &'static str, v6: bool) {
    let _g = common::serial();
    let lab = common::lab("s", 4);
    let mut cfg = Cfg::new(mode, v6, 4);
    cfg.backends = vec![Some(String::new()), Some(String::new()), None, None];
    let agent = start(&lab, &cfg, 2);
    let v = vip(&lab, v6);
    let (tx, rx) = std::sync::mpsc::channel::<&'static str>();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let worker = common::in_netns(&lab.client.netns, move || {
        let mut conns: Vec<(Conn, String)> = (0..50)
            .map(|_| {
                let mut c = Conn::open(v).expect("open");
                let name = c.ask().expect("ask");
                (c, name)
            })
            .collect();
        let first: Vec<String> = conns.iter().map(|c| c.1.clone()).collect();
        done_tx.send(first).unwrap();
        let mut errors = Vec::new();
        while let Ok(step) = rx.recv() {
            for (i, (c, name)) in conns.iter_mut().enumerate() {
                match c.ask() {
                    Ok(n) if &n == name => {}
                    Ok(n) => {
                        errors.push(format!("{step}: connection {i} moved from {name} to {n}"))
                    }
                    Err(e) => errors.push(format!("{step}: connection {i} on {name}: {e}")),
                }
            }
            done_tx.send(vec![]).unwrap();
        }
        errors
    });
    let first = done_rx.recv().unwrap();
    assert!(first.iter().all(|n| n == "b1" || n == "b2"));
    let mut step = |what: &'static str, backends: Vec<Option<String>>| {
        cfg.backends = backends;
        agent.reload(&cfg.render(&lab));
        tx.send(what).unwrap();
        done_rx.recv().unwrap();
    };
    step("add b3 and b4", vec![Some(String::new()); 4]);
    step(
        "reweight b1 and b3",
        vec![
            Some("weight = 1000".into()),
            Some(String::new()),
            Some("weight = 5".into()),
            Some(String::new()),
        ],
    );
    step(
        "remove b3",
        vec![
            Some("weight = 1000".into()),
            Some(String::new()),
            None,
            Some(String::new()),
        ],
    );
    drop(tx);
    let errors = worker.join().unwrap();
    assert!(errors.is_empty(), "{}: {errors:#?}", label(mode, v6));
    // New connections do see the changes: b4 takes some once it is up.
    let b4_up = format!("{} UP after", target(&lab, 3, v6));
    assert!(
        agent.wait_log(&b4_up, Duration::from_secs(3)),
        "{}",
        agent.log_text()
    );
    std::thread::sleep(Duration::from_millis(1200));
    let (seen, failed) = spread(&lab, v6, 30_000, 300);
    assert_eq!(failed, 0);
    assert!(
        seen.contains_key("b4") && !seen.contains_key("b3"),
        "{seen:?}"
    );
}

/// New connections fail only until health checking takes the dead backend out; long-lived
/// connections to the other backends never see an error.
fn failover(mode: &'static str, v6: bool) {
    let _g = common::serial();
    let mut lab = common::lab("f", 3);
    let cfg = Cfg::new(mode, v6, 3);
    let agent = start(&lab, &cfg, 3);
    let f = common::scenario::failover(&mut lab, v6);
    assert!(
        f.other_errors.is_empty(),
        "connections to other backends broke: {:?}",
        f.other_errors
    );
    assert_eq!(
        f.failed_before, 0,
        "failures before the kill: {:?}",
        f.errors
    );
    assert!(
        agent.wait_log("DOWN after 2 failures", Duration::from_secs(2)),
        "{}",
        agent.log_text()
    );
    println!(
        "failover {}: new connections failing for {} ms after the kill ({} failed of {})",
        label(mode, v6),
        f.took.as_millis(),
        f.failed,
        f.total
    );
    // A few ms for the table to flip, the rest slack for a busy machine.
    let bound = cfg.probe_bound() + Duration::from_millis(200);
    assert!(
        f.took <= bound,
        "failover took {:?} > {bound:?}; failed connections: {:?}",
        f.took,
        f.errors
    );
}

/// A backend that answers nothing at all (its address removed: no SYN-ACK, no reset) goes
/// down when its checks time out, and comes back once it answers again.
fn a_silent_backend_fails_at_the_timeout(mode: &'static str, v6: bool) {
    let _g = common::serial();
    let lab = common::lab("t", 2);
    let cfg = Cfg::new(mode, v6, 2);
    let agent = start(&lab, &cfg, 2);
    let b = &lab.backends[0];
    let cidr = if v6 {
        format!("{}/64", b.ipv6)
    } else {
        format!("{}/24", b.ipv4)
    };
    let addr = |op: &str| {
        let mut args = vec!["ip", "addr", op, cidr.as_str(), "dev", "eth0"];
        if v6 {
            args.push("nodad");
        }
        lab::ns_exec(&b.netns, &args).unwrap();
    };
    addr("del");
    let down = format!(
        "{} DOWN after {} failures: timeout after {}ms",
        target(&lab, 0, v6),
        cfg.fall,
        cfg.interval_ms
    );
    assert!(
        agent.wait_log(&down, cfg.probe_bound() + Duration::from_secs(1))
            && agent.wait_log_then(&down, "health change: applied", Duration::from_secs(3)),
        "{}",
        agent.log_text()
    );
    let (seen, failed) = spread(&lab, v6, 26_000, 100);
    assert_eq!(failed, 0, "{seen:?}");
    assert!(!seen.contains_key("b1"), "{seen:?}");

    addr("add");
    let up = format!("{} UP after", target(&lab, 0, v6));
    assert!(
        agent.wait_log_count(&up, 2, Duration::from_secs(5)),
        "{}",
        agent.log_text()
    );
}

/// Without CAP_NET_RAW the agent cannot open raw sockets: it says so, and its TCP checks
/// make full connections instead, which judge live and dead backends the same.
#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn without_cap_net_raw_tcp_checks_connect() {
    if !common::privileged("without_cap_net_raw_tcp_checks_connect") {
        return;
    }
    let _g = common::serial();
    let mut lab = common::lab("n", 2);
    let cfg = Cfg::new("l2dsr", false, 2);
    // Out of the bounding set and the inherited and ambient sets: root's capabilities after
    // exec come from both.
    let no_raw = [
        "setpriv",
        "--bounding-set",
        "-net_raw",
        "--inh-caps",
        "-net_raw",
        "--ambient-caps",
        "-net_raw",
        "--",
    ];
    let agent = Agent::start_via(&lab, &cfg.render(&lab), &no_raw);
    assert!(
        agent.wait_log(
            "TCP checks will make full connections",
            Duration::from_secs(1)
        ),
        "{}",
        agent.log_text()
    );
    wait_up(&lab, &agent, &cfg.admin_listen, 2);
    let status = common::status_at(&lab.lb.netns, &cfg.admin_listen);
    let reasons: Vec<_> = status.services[0]
        .backends
        .iter()
        .map(|b| {
            b.last_probe
                .as_ref()
                .map(|p| p.reason.clone())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(reasons, ["connected", "connected"], "{status:#?}");
    lab.stop_server(0).unwrap();
    let down = format!(
        "{} DOWN after {} failures: connection refused",
        target(&lab, 0, false),
        cfg.fall
    );
    assert!(
        agent.wait_log(&down, cfg.probe_bound() + Duration::from_secs(1)),
        "{}",
        agent.log_text()
    );
}

fn recovery_with_slow_start(mode: &'static str, v6: bool) {
    let _g = common::serial();
    let mut lab = common::lab("r", 3);
    let mut cfg = Cfg::new(mode, v6, 3);
    cfg.service_extra = "slowstart = \"4s\"".into();
    let agent = start(&lab, &cfg, 3);
    lab.stop_server(0).unwrap();
    assert!(agent.wait_log("DOWN after", Duration::from_secs(3)));
    let (seen, _) = spread(&lab, v6, 20_000, 300);
    assert!(!seen.contains_key("b1"), "{seen:?}");
    let up = format!("{} UP after", target(&lab, 0, v6));
    let ups = agent.count_log(&up);
    lab.start_server_again(0).unwrap();
    assert!(agent.wait_log_count(&up, ups + 1, Duration::from_secs(3)));
    assert!(agent.wait_log_then(&up, "health change: applied", Duration::from_secs(3)));
    let share = |seen: &BTreeMap<String, usize>| {
        *seen.get("b1").unwrap_or(&0) as f64 / seen.values().sum::<usize>().max(1) as f64
    };
    let mut shares = Vec::new();
    for (i, first) in [21_000u16, 22_000, 23_000, 24_000, 25_000]
        .iter()
        .enumerate()
    {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(1000));
        }
        let (seen, failed) = spread(&lab, v6, *first, 600);
        assert_eq!(failed, 0);
        shares.push(share(&seen));
    }
    println!(
        "{}: b1's share of new connections during slow start, once a second: {shares:.3?}",
        label(mode, v6)
    );
    // Each sample is 600 connections: a share carries about 2 points of noise.
    assert!(shares[0] < 0.15, "starts small: {shares:?}");
    assert!(
        shares[1] < shares[4] && shares[0] < shares[3],
        "grows: {shares:?}"
    );
    assert!(
        (shares[4] - 1.0 / 3.0).abs() < 0.08,
        "ends at its full share: {shares:?}"
    );
}

fn drain_keeps_established_connections(mode: &'static str, v6: bool) {
    let _g = common::serial();
    let lab = common::lab("dr", 2);
    let mut cfg = Cfg::new(mode, v6, 2);
    let agent = start(&lab, &cfg, 2);
    let v = vip(&lab, v6);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let worker = common::in_netns(&lab.client.netns, move || {
        let mut on_b1 = Vec::new();
        while on_b1.len() < 5 {
            let mut c = Conn::open(v).expect("open");
            if c.ask().expect("ask") == "b1" {
                on_b1.push(c);
            }
        }
        ready_tx.send(()).unwrap();
        rx.recv().unwrap();
        on_b1
            .iter_mut()
            .map(|c| c.ask().map_err(|e| e.to_string()))
            .collect::<Vec<_>>()
    });
    ready_rx.recv().unwrap();
    cfg.backends = vec![Some("state = \"drain\"".into()), Some(String::new())];
    agent.reload(&cfg.render(&lab));
    let (seen, failed) = spread(&lab, v6, 30_000, 300);
    assert_eq!(failed, 0);
    assert_eq!(
        seen.get("b1"),
        None,
        "a draining backend got new connections: {seen:?}"
    );
    tx.send(()).unwrap();
    let answers = worker.join().unwrap();
    assert!(
        answers.iter().all(|a| a.as_deref() == Ok("b1")),
        "{answers:?}"
    );
    // The slots b1's connections used changed (b1 is their previous backend), and the
    // agent's settling pass (every 10 s) reports them; they stay for `idle_timeout`.
    if mode == "l2dsr" && !v6 {
        let changed = || {
            let (_, body) = common::admin_get(&lab.lb.netns, "/status");
            let s: gateway::admin::Snapshot = serde_json::from_str(&body).expect("status");
            s.services[0].changed_slots
        };
        lab::wait_for("changed slots in /status", Duration::from_secs(15), || {
            changed() > 0
        })
        .expect("changed slots reported");
    }
}

fn backup_takes_over_only_while_no_primary_is_up(mode: &'static str, v6: bool) {
    let _g = common::serial();
    let mut lab = common::lab("bk", 3);
    let mut cfg = Cfg::new(mode, v6, 3);
    cfg.backends = vec![
        Some(String::new()),
        Some(String::new()),
        Some("backup = true".into()),
    ];
    let agent = start(&lab, &cfg, 3);
    let (seen, _) = spread(&lab, v6, 20_000, 300);
    assert!(
        !seen.contains_key("b3"),
        "backup used while primaries are up: {seen:?}"
    );
    lab.stop_server(0).unwrap();
    lab.stop_server(1).unwrap();
    assert!(agent.wait_log_count("DOWN after", 2, Duration::from_secs(3)));
    let second_down = format!("{} DOWN after", target(&lab, 1, v6));
    let first_down = format!("{} DOWN after", target(&lab, 0, v6));
    let last_down = if agent.log_text().find(&second_down) > agent.log_text().find(&first_down) {
        second_down
    } else {
        first_down
    };
    assert!(agent.wait_log_then(&last_down, "health change: applied", Duration::from_secs(3)));
    let (seen, failed) = spread(&lab, v6, 21_000, 300);
    assert_eq!((seen.get("b3"), failed), (Some(&300), 0), "{seen:?}");
    let up = format!("{} UP after", target(&lab, 0, v6));
    let ups = agent.count_log(&up);
    lab.start_server_again(0).unwrap();
    assert!(agent.wait_log_count(&up, ups + 1, Duration::from_secs(3)));
    assert!(
        agent.wait_log_then(&up, "health change: applied", Duration::from_secs(3)),
        "{}",
        agent.log_text()
    );
    let (seen, failed) = spread(&lab, v6, 22_000, 300);
    assert_eq!(
        (seen.get("b1"), failed),
        (Some(&300), 0),
        "new flows go back to the primary: {seen:?}"
    );
}

fn udp_spreads_and_sticks_per_flow(mode: &'static str, v6: bool) {
    let _g = common::serial();
    let lab = common::lab("u", 3);
    let mut cfg = Cfg::new(mode, v6, 3);
    cfg.protocol = "udp";
    let agent = start_udp(&lab, &cfg);
    let v = vip(&lab, v6);
    let first = client(&lab, move || udp_names(v, 20_000..23_000));
    let mut seen = BTreeMap::new();
    for r in &first {
        *seen.entry(r.clone().expect("udp answer")).or_insert(0usize) += 1;
    }
    assert_shares(&seen, &[("b1", 1.0), ("b2", 1.0), ("b3", 1.0)]);
    // The same 5-tuples again, after the table changed: each stays on its backend.
    cfg.backends = vec![
        Some("weight = 1000".into()),
        Some(String::new()),
        Some(String::new()),
    ];
    agent.reload(&cfg.render(&lab));
    let again = client(&lab, move || udp_names(v, 20_000..23_000));
    assert_eq!(first, again, "UDP flows moved after a table change");
}

/// One request per source port; stops early after 20 failures so a broken path fails fast.
fn udp_names(v: SocketAddr, ports: std::ops::Range<u16>) -> Vec<Result<String, String>> {
    let mut out = Vec::new();
    let mut failures = 0;
    for p in ports {
        let r = udp_name(v, p, TIMEOUT).map_err(|e| e.to_string());
        failures += usize::from(r.is_err());
        out.push(r);
        if failures > 20 {
            break;
        }
    }
    out
}

fn start_udp(lab: &Lab, cfg: &Cfg) -> Agent {
    prepare(lab, cfg);
    let agent = Agent::start(lab, &cfg.render(lab));
    wait_up(lab, &agent, &cfg.admin_listen, 3);
    let v = vip(lab, cfg.v6);
    client(lab, move || {
        (0..30).for_each(|i| drop(udp_name(v, 61_000 + i, Duration::from_secs(2))))
    });
    agent
}

/// Sends `frames` out of the client's eth0 as they are (an AF_PACKET socket), `times` each.
fn send_raw(lab: &Lab, frames: Vec<Vec<u8>>, times: usize) {
    client(lab, move || {
        let mut raw = lab::client::RawSender::open("eth0").expect("AF_PACKET socket");
        for f in &frames {
            for _ in 0..times {
                assert!(raw.send(f), "{}", std::io::Error::last_os_error());
            }
        }
    });
}

/// Frames a careful router would not forward, sent on the wire from the client's segment
/// (the golden tests send such frames through BPF_PROG_TEST_RUN): to another host's MAC
/// (a flooding switch delivers those to the balancer too), from the VIP itself, from the
/// balancer's own address. The balancer turns each away with its counted reason.
#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn frames_a_router_would_drop_are_turned_away_on_the_wire() {
    use lab::packet::{TCP_SYN, tcp};
    if !common::privileged("frames_a_router_would_drop_are_turned_away_on_the_wire") {
        return;
    }
    let _g = common::serial();
    let lab = common::lab("raw", 1);
    let _agent = start(&lab, &Cfg::new("l2dsr", false, 1), 1);
    let (lb_mac, client_mac) = (eth0_mac(&lab.lb.netns), eth0_mac(&lab.client.netns));
    let vip = lab.vip(false);
    let frame = |src: std::net::IpAddr, dst_mac: [u8; 6], sport: u16| {
        let mut f = tcp(src, vip, sport, 80, TCP_SYN);
        f.dst = dst_mac;
        f.src = client_mac;
        f.bytes()
    };
    let other_host = [0x02, 0, 0, 0, 0, 0x99];
    let (martian, not_ours) = (
        lb_counter(&lab, "drop_martian_source"),
        lb_counter(&lab, "pass_not_our_mac"),
    );
    send_raw(
        &lab,
        vec![
            frame(lab.client.ipv4.into(), other_host, 30_001),
            frame(vip, lb_mac, 30_002),
            frame(lab.lb.ipv4.into(), lb_mac, 30_003),
        ],
        5,
    );
    lab::wait_for("the counters", Duration::from_secs(3), || {
        lb_counter(&lab, "drop_martian_source") >= martian + 10
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // Five from the VIP, five from the balancer's own address, nothing else.
    assert_eq!(lb_counter(&lab, "drop_martian_source") - martian, 10);
    // Five to another host's MAC (neighbour discovery's multicast may add some).
    assert!(lb_counter(&lab, "pass_not_our_mac") - not_ours >= 5);
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn the_balancer_host_stays_reachable() {
    if !common::privileged("the_balancer_host_stays_reachable") {
        return;
    }
    let _g = common::serial();
    let lab = common::lab("h", 1);
    let _agent = start(&lab, &Cfg::new("l2dsr", false, 1), 1);
    // A TCP service on the balancer's own address, next to the attached program.
    let mut own = lab::ns_command(&lab.lb.netns, lab::target_bin("lab-server").unwrap())
        .args(["--name", "balancer-host", "--port", "8080"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(own.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let host4 = SocketAddr::new(lab.lb.ipv4.into(), 8080);
    let host6 = SocketAddr::new(lab.lb.ipv6.into(), 8080);
    let got = client(&lab, move || {
        (
            tcp_name(host4, 0, Duration::from_secs(2)).map_err(|e| e.to_string()),
            tcp_name(host6, 0, Duration::from_secs(2)).map_err(|e| e.to_string()),
        )
    });
    let _ = own.kill();
    let _ = own.wait();
    assert_eq!(
        got,
        (Ok("balancer-host".into()), Ok("balancer-host".into()))
    );
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn a_bad_config_attaches_nothing_and_a_killed_agent_leaves_a_working_interface() {
    if !common::privileged("a_bad_config_attaches_nothing") {
        return;
    }
    let _g = common::serial();
    let lab = common::lab("k", 2);
    let dir = lab_dir(&lab);
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        Cfg::new("l2dsr", false, 2)
            .render(&lab)
            .replace("port = 80", "port = 80\nprot = 1"),
    )
    .unwrap();
    let out = lab::ns_command(&lab.lb.netns, gateway_bin())
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:") && err.contains("prot"), "{err}");
    let link = lab::run(std::process::Command::new("ip").args([
        "-n",
        &lab.lb.netns,
        "link",
        "show",
        "eth0",
    ]))
    .unwrap();
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("xdp"),
        "attached despite a bad config"
    );

    let cfg = Cfg::new("l2dsr", false, 2);
    let agent = start(&lab, &cfg, 2);
    agent.kill();
    // The program stays attached (pinned), the host answers, and a new agent adopts the
    // data plane and serves.
    assert!(xdp_attached(&lab), "a crash detached the program");
    let host = SocketAddr::new(lab.lb.ipv4.into(), 22);
    let _ = host;
    let ping = lab::run(
        lab::ns_command(&lab.client.netns, "ping")
            .args(["-c", "2", "-i", "0.1", "-W", "2"])
            .arg(lab.lb.ipv4.to_string()),
    );
    assert!(ping.is_ok(), "balancer unreachable after SIGKILL: {ping:?}");
    let agent = Agent::start(&lab, &cfg.render(&lab));
    assert!(
        agent.wait_log(
            "adopted the pinned maps: 1 services, 2 backends (2 up)",
            Duration::from_secs(2)
        ),
        "{}",
        agent.log_text()
    );
    let (seen, failed) = spread(&lab, false, 20_000, 200);
    assert_eq!(failed, 0, "{seen:?}");
    assert!(agent.stop().success());
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn the_admin_api_and_gateway_status_report_live_state() {
    if !common::privileged("the_admin_api_and_gateway_status_report_live_state") {
        return;
    }
    let _g = common::serial();
    let lab = common::lab("a", 3);
    let agent = start(&lab, &Cfg::new("l2dsr", false, 3), 3);
    let (seen, failed) = spread(&lab, false, 20_000, 200);
    assert_eq!(failed, 0, "{seen:?}");
    let ns = lab.lb.netns.clone();

    assert_eq!(admin_get(&ns, "/healthz"), (200, r#"{"ok":true}"#.into()));
    assert_eq!(admin_get(&ns, "/readyz").0, 200);

    let (code, body) = admin_get(&ns, "/status");
    assert_eq!(code, 200, "{body}");
    let status: gateway::admin::Snapshot = serde_json::from_str(&body).unwrap();
    let backends = &status.services[0].backends;
    assert_eq!(backends.len(), 3, "{body}");
    for b in backends {
        assert_eq!(b.state, "up", "{b:?}");
        assert!(b.health_up, "{b:?}");
    }
    let shares: f64 = backends.iter().map(|b| b.share).sum();
    assert!(
        (shares - 100.0).abs() < 0.1,
        "shares sum to {shares}: {body}"
    );
    assert_eq!(
        status.dataplane.xdp_mode.as_deref(),
        Some("native"),
        "{body}"
    );
    // Conntrack is read and written only on changed table slots: a settled table tracks
    // nothing, so the count is whatever changes left (but it is reported).
    assert!(status.dataplane.conntrack_entries.is_some(), "{body}");

    // Counters against traffic sent now: every connection is one SYN, one new flow on the
    // backend that answered it.
    let (_, before) = admin_get(&ns, "/metrics");
    let (seen2, failed) = spread(&lab, false, 21_000, 150);
    assert_eq!(failed, 0, "{seen2:?}");
    let (_, after) = admin_get(&ns, "/metrics");
    let delta = |metric: &str, labels: &str| {
        metric_sum(&after, metric, labels) - metric_sum(&before, metric, labels)
    };
    // Each packet to the VIP was placed one way: a settled slot, or conntrack on a changed
    // one; at least SYN, ACK and request per connection.
    let placed: u64 = [
        "table_steady",
        "conntrack_miss_syn",
        "conntrack_hit",
        "conntrack_miss_non_syn",
        "slot_previous",
    ]
    .iter()
    .map(|r| delta("gateway_packets_total", &format!("reason=\"{r}\"")))
    .sum();
    assert!(placed >= 3 * 150, "{placed} packets placed");
    assert_eq!(delta("gateway_service_new_flows_total", ""), 150);
    for (i, b) in lab.backends.iter().enumerate() {
        let name = format!("b{}", i + 1);
        let label = format!("backend=\"{}\"", b.ipv4);
        let conns = seen2.get(&name).copied().unwrap_or(0) as u64;
        assert_eq!(
            delta("gateway_backend_new_flows_total", &label),
            conns,
            "{name}"
        );
        // SYN, ACK, request, RST at least.
        assert!(
            delta("gateway_backend_packets_total", &label) >= 3 * conns,
            "{name}"
        );
    }
    assert!(
        metric_sum(&after, "gateway_probe_duration_seconds_count", "") > 0,
        "{after}"
    );

    let (code, metrics) = admin_get(&ns, "/metrics");
    assert_eq!(code, 200, "{metrics}");
    let to_backends = metric_sum(&metrics, "gateway_backend_packets_total", "");
    assert!(
        to_backends >= 400,
        "{to_backends} packets to backends:\n{metrics}"
    );
    let steady = metric_sum(
        &metrics,
        "gateway_packets_total",
        r#"reason="table_steady""#,
    );
    assert!(
        steady >= 200,
        "{steady} packets placed by settled slots:\n{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "gateway_backend_up", ""),
        3,
        "{metrics}"
    );

    let (code, body) = admin_get(&ns, "/nope");
    assert_eq!(code, 404);
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(err["error"].is_string(), "{body}");

    let out = lab::ns_command(&lab.lb.netns, gateway_bin())
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for b in &lab.backends {
        assert!(
            text.contains(&b.ipv4.to_string()),
            "{} missing:\n{text}",
            b.ipv4
        );
    }
    println!("{text}");
    assert!(agent.stop().success());
}

/// Long-lived connections to the VIP, each asked for its backend on every `check`: any
/// error or move is recorded.
struct LiveConns {
    tx: std::sync::mpsc::Sender<usize>,
    done: std::sync::mpsc::Receiver<(usize, Vec<String>)>,
    worker: std::thread::JoinHandle<Vec<String>>,
}

impl LiveConns {
    fn open(lab: &Lab, v6: bool, n: usize) -> LiveConns {
        let v = vip(lab, v6);
        let (tx, rx) = std::sync::mpsc::channel::<usize>();
        let (done_tx, done) = std::sync::mpsc::channel();
        let worker = common::in_netns(&lab.client.netns, move || {
            let mut conns: Vec<(Conn, String)> = (0..n)
                .map(|_| {
                    let mut c = Conn::open(v).expect("open");
                    let name = c.ask().expect("ask");
                    (c, name)
                })
                .collect();
            done_tx
                .send((0, conns.iter().map(|c| c.1.clone()).collect()))
                .unwrap();
            let mut errors = Vec::new();
            let mut asked = 0;
            while let Ok(step) = rx.recv() {
                for (i, (c, name)) in conns.iter_mut().enumerate() {
                    match c.ask() {
                        Ok(got) if &got == name => asked += 1,
                        Ok(got) => errors
                            .push(format!("step {step}: connection {i} moved {name} -> {got}")),
                        Err(e) => {
                            errors.push(format!("step {step}: connection {i} on {name}: {e}"))
                        }
                    }
                }
                done_tx.send((asked, vec![])).unwrap();
            }
            errors
        });
        let live = LiveConns { tx, done, worker };
        live.done.recv().expect("connections opened");
        live
    }

    /// Asks every connection once; the answers so far.
    fn check(&self, step: usize) -> usize {
        self.tx.send(step).unwrap();
        self.done.recv().unwrap().0
    }

    /// Closes the connections; every error seen.
    fn finish(self) -> Vec<String> {
        drop(self.tx);
        self.worker.join().unwrap()
    }
}

/// Whether an XDP program is attached to the balancer's eth0.
fn xdp_attached(lab: &Lab) -> bool {
    let out = lab::run(std::process::Command::new("ip").args([
        "-n",
        &lab.lb.netns,
        "link",
        "show",
        "eth0",
    ]))
    .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

/// Runs `gateway ARGS` in the balancer's namespace: exit success, stdout, stderr.
fn gateway_cli(lab: &Lab, args: &[&str]) -> (bool, String, String) {
    gateway_cli_in(&lab.lb.netns, args)
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn ten_agent_restarts_one_a_crash_break_no_connection() {
    if !common::privileged("ten_agent_restarts_one_a_crash_break_no_connection") {
        return;
    }
    let _g = common::serial();
    let lab = common::lab("h", 3);
    let mut cfg = Cfg::new("l2dsr", false, 3);
    cfg.on_exit = "keep";
    let mut agent = start(&lab, &cfg, 3);
    let live = LiveConns::open(&lab, false, 60);
    let mut step = 0;
    let mut exercise = |what: &str| {
        step += 1;
        let asked = live.check(step);
        eprintln!("{what}: {asked} answers so far");
    };
    let mut new_conn_port = 40_000;
    for round in 0..10 {
        if round == 4 {
            agent.kill();
        } else {
            let status = agent.stop();
            assert!(status.success(), "round {round}: agent exited {status}");
        }
        // No agent: the pinned program keeps forwarding old and new connections.
        assert!(
            xdp_attached(&lab),
            "round {round}: detached while the agent is away"
        );
        exercise(&format!("round {round}, agent away"));
        let (seen, failed) = spread(&lab, false, new_conn_port, 30);
        new_conn_port += 30;
        assert_eq!(
            failed, 0,
            "round {round}: new connections without an agent: {seen:?}"
        );
        agent = Agent::start(&lab, &cfg.render(&lab));
        assert!(
            agent.wait_log("adopted the pinned maps", Duration::from_secs(5)),
            "round {round}: did not adopt:\n{}",
            agent.log_text()
        );
        // The adopted backends start up: a few probe intervals bring no transition.
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(agent.count_log("DOWN after"), 0, "{}", agent.log_text());
        exercise(&format!("round {round}, agent back"));
    }
    let errors = live.finish();
    assert!(errors.is_empty(), "{errors:#?}\n{}", agent.log_text());
    assert_eq!(agent.count_log("NO BACKEND"), 0, "{}", agent.log_text());

    // `gateway stop --detach` removes the program and the pinned state.
    let config = agent.config.display().to_string();
    assert!(agent.stop().success());
    assert!(xdp_attached(&lab));
    let pin_dir = lab.pin_dir().display().to_string();

    // Pinned state is root's alone.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&lab.pin_dir()), 0o700);
    for e in std::fs::read_dir(lab.pin_dir()).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }

    // Maps of another layout are refused with the command that resets them, and left alone.
    let meta_path = lab.pin_dir().join(gateway_common::MAP_META);
    let set_layout = |v: u32| {
        let data = aya::maps::MapData::from_pin(&meta_path).unwrap();
        let mut meta: aya::maps::Array<_, gateway_common::Meta> =
            aya::maps::Array::try_from(aya::maps::Map::Array(data)).unwrap();
        let mut m = meta.get(&0, 0).unwrap();
        m.layout_version = v;
        meta.set(0, m, 0).unwrap();
    };
    set_layout(gateway_common::LAYOUT_VERSION + 1);
    let (ok, out, err) = gateway_cli(&lab, &["run", "--config", &config]);
    assert!(!ok, "started on another layout: {out}{err}");
    assert!(
        err.contains(&format!(
            "has map layout {}, this gateway uses layout {}",
            gateway_common::LAYOUT_VERSION + 1,
            gateway_common::LAYOUT_VERSION
        )) && err.contains(&format!("gateway stop --detach --pin-dir {pin_dir}")),
        "{err}"
    );
    assert!(
        xdp_attached(&lab),
        "a refused start must leave the running data plane alone"
    );
    let (seen, failed) = spread(&lab, false, new_conn_port, 30);
    assert_eq!(failed, 0, "{seen:?}");
    let (ok, out, err) = gateway_cli(&lab, &["stop", "--detach", "--pin-dir", &pin_dir]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("removed link"), "{out}");
    assert!(!xdp_attached(&lab), "still attached after stop --detach");
    assert!(!lab.pin_dir().exists());
    let (ok, out, _) = gateway_cli(&lab, &["stop", "--detach", "--pin-dir", &pin_dir]);
    assert!(ok && out.contains("nothing pinned"), "{out}");
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn backend_commands_reload_and_the_token_through_the_cli() {
    if !common::privileged("backend_commands_reload_and_the_token_through_the_cli") {
        return;
    }
    let _g = common::serial();
    let lab = common::lab("c", 3);
    let dir = lab_dir(&lab);
    let _ = std::fs::remove_file(dir.join("overrides.json"));
    let token = dir.join("token");
    std::fs::write(&token, "t0ken-for-the-lab\n").unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let admin = format!("{}:9180", lab.lb.ipv4);
    let mut cfg = Cfg::new("l2dsr", false, 3);
    // Not loopback: writes need the token.
    cfg.admin_listen = admin.clone();
    cfg.admin_extra = format!("token_file = \"{}\"", token.display());
    cfg.on_exit = "keep";
    let mut agent = start(&lab, &cfg, 3);
    let tok = token.display().to_string();
    let api = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--admin", &admin, "--token-file", &tok]);
        gateway_cli(&lab, &all)
    };
    let b1 = lab.backends[0].ipv4.to_string();
    let b3 = lab.backends[2].ipv4.to_string();
    let live = LiveConns::open(&lab, false, 30);

    // Without the token a write is refused; reads are open (token_for_reads is off).
    let (ok, _, err) = gateway_cli(&lab, &["backend", "drain", "web", &b1, "--admin", &admin]);
    assert!(!ok && err.contains("refused the token"), "{err}");
    let (ok, out, err) = gateway_cli(&lab, &["status", "--admin", &admin]);
    assert!(ok, "{out}{err}");

    let (ok, out, err) = api(&["backend", "drain", "web", &b1]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("state ready -> drain (overrides"), "{out}");
    let (seen, failed) = spread(&lab, false, 20_000, 150);
    assert_eq!(failed, 0);
    assert!(!seen.contains_key("b1") && seen.len() == 2, "{seen:?}");
    assert_eq!(
        live.check(1),
        30,
        "drained b1's connections must keep working"
    );
    let (_, out, _) = api(&["status"]);
    assert!(out.contains("drain*"), "{out}");

    // Bad requests: clear errors, nothing changes.
    for (args, want) in [
        (
            vec!["backend", "drain", "web", "198.18.0.99"],
            "has no backend 198.18.0.99",
        ),
        (
            vec!["backend", "drain", "nope", &b1],
            "no service named \"nope\"",
        ),
        (
            vec!["backend", "weight", "web", &b1, "0"],
            "outside 1..=10000",
        ),
    ] {
        let (ok, out, err) = api(&args);
        assert!(!ok && err.contains(want), "{args:?}: {out}{err}");
    }
    let (ok, _, err) = gateway_cli(&lab, &["status", "--admin", "127.0.0.1:1"]);
    assert!(!ok && err.contains("gateway is not running"), "{err}");

    // An API weight, then a reload whose file changes that weight: the file wins. The drain
    // (a field the file did not touch) stays.
    let (ok, out, err) = api(&["backend", "weight", "web", &b3, "1000"]);
    assert!(ok, "{out}{err}");
    cfg.backends = vec![
        Some(String::new()),
        Some(String::new()),
        Some("weight = 50".into()),
    ];
    std::fs::write(&agent.config, cfg.render(&lab)).unwrap();
    let (ok, out, err) = api(&["reload"]);
    assert!(ok, "{out}{err}");
    assert!(
        agent.wait_log("the file changed weight 100 -> 50", Duration::from_secs(3)),
        "{}",
        agent.log_text()
    );
    let (_, status, _) = api(&["status", "--json"]);
    let v: gateway::admin::Snapshot = serde_json::from_str(&status).unwrap();
    let backends = &v.services[0].backends;
    assert_eq!(backends[2].weight, 50, "{status}");
    assert_eq!(backends[0].state, "drain", "{status}");

    // A broken file: the reload fails with the error, the old config keeps serving.
    std::fs::write(
        &agent.config,
        cfg.render(&lab).replace("port = 80", "port = 0"),
    )
    .unwrap();
    let (ok, out, err) = api(&["reload"]);
    assert!(!ok && err.contains("port"), "{out}{err}");
    let (seen, failed) = spread(&lab, false, 21_000, 100);
    assert_eq!(failed, 0);
    assert!(!seen.contains_key("b1"), "{seen:?}");
    std::fs::write(&agent.config, cfg.render(&lab)).unwrap();
    assert!(
        agent.wait_log("reload failed", Duration::from_secs(2)),
        "{}",
        agent.log_text()
    );

    // The drain survives a restart (kept in the state file).
    assert!(agent.stop().success());
    agent = Agent::start(&lab, &cfg.render(&lab));
    let (_, out, _) = api(&["status"]);
    assert!(out.contains("drain*"), "{out}");
    let (ok, out, err) = api(&["backend", "ready", "web", &b1]);
    assert!(
        ok && out.contains("(the config file's value again)"),
        "{out}{err}"
    );
    assert_eq!(live.check(2), 60);
    let errors = live.finish();
    assert!(errors.is_empty(), "{errors:#?}");
    std::thread::sleep(Duration::from_millis(300));
    let (seen, failed) = spread(&lab, false, 22_000, 150);
    assert_eq!(failed, 0);
    assert!(seen.contains_key("b1"), "{seen:?}");
    assert!(agent.stop().success());
}

/// A map write that fails behind an API change (BACKENDS frozen with `bpftool map freeze`,
/// so the kernel refuses every update from user space) is answered with an error and
/// undone; the agent keeps running, counts it, and keeps serving with what it had.
#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn a_failed_map_write_is_an_api_error_and_the_agent_keeps_running() {
    if !common::privileged("a_failed_map_write_is_an_api_error_and_the_agent_keeps_running") {
        return;
    }
    let _g = common::serial();
    let lab = common::lab("w", 2);
    let _ = std::fs::remove_file(lab_dir(&lab).join("overrides.json"));
    let cfg = Cfg::new("l2dsr", false, 2);
    let agent = start(&lab, &cfg, 2);
    let admin = cfg.admin_listen.clone();
    let backends = lab.pin_dir().join("BACKENDS");
    let out = lab::run(
        std::process::Command::new("bpftool")
            .args(["map", "freeze", "pinned"])
            .arg(&backends),
    );
    assert!(out.is_ok(), "bpftool map freeze: {out:?}");

    let b1 = lab.backends[0].ipv4.to_string();
    let (ok, out, err) = gateway_cli(&lab, &["backend", "drain", "web", &b1, "--admin", &admin]);
    assert!(!ok, "{out}{err}");
    assert!(
        err.contains("answered 500") && err.contains("the change was undone"),
        "{err}"
    );
    // Still running and serving; nothing changed, and the failure is counted.
    let (code, _) = common::admin_get_at(&lab.lb.netns, &admin, "/healthz");
    assert_eq!(code, 200);
    let status = common::status_at(&lab.lb.netns, &admin);
    assert_eq!(status.services[0].backends[0].state, "up", "{status:#?}");
    assert!(status.map_write_errors >= 1, "{status:#?}");
    let (seen, failed) = spread(&lab, false, 20_000, 60);
    assert_eq!(failed, 0);
    assert_eq!(seen.len(), 2, "{seen:?}");
    let (_, metrics) = common::admin_get_at(&lab.lb.netns, &admin, "/metrics");
    assert!(
        metric_sum(&metrics, "gateway_map_write_errors_total", "") >= 1,
        "{metrics}"
    );
    assert!(agent.count_log("writing the maps failed") >= 1);
    agent.stop();
}
