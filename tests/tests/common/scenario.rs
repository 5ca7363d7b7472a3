//! Scenarios shared by the end-to-end tests and the benchmarks: starting the agent on a warm
//! lab, and the failover measurement (a backend's server dies under a stream of new
//! connections).
#![allow(dead_code)]

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use lab::{Lab, SERVER_PORT};

use super::agent::{Agent, Cfg, Conn, tcp_name};

pub fn vip(lab: &Lab, v6: bool) -> SocketAddr {
    SocketAddr::new(lab.vip(v6), SERVER_PORT)
}

/// Runs `f` in the client namespace.
pub fn client<T: Send + 'static>(lab: &Lab, f: impl FnOnce() -> T + Send + 'static) -> T {
    lab::client::in_netns(&lab.client.netns, f)
        .join()
        .expect("client thread")
}

/// Fills the neighbour caches of client, balancer and backends (the first IPv6 exchanges
/// wait for neighbour discovery longer than the tests' short timeouts).
pub fn warm_up(lab: &Lab, v6: bool) {
    warm_up_as(lab, v6, true)
}

/// [`warm_up`]; `direct`: whether backends can reach the client (not in a full-NAT lab).
pub fn warm_up_as(lab: &Lab, v6: bool, direct: bool) {
    let vip = vip(lab, v6);
    // Every backend, including backups that get no traffic yet, learns the client's address
    // from a direct exchange.
    let direct: Vec<SocketAddr> = lab
        .backends
        .iter()
        .filter(|_| direct)
        .map(|b| {
            let ip: std::net::IpAddr = if v6 { b.ipv6.into() } else { b.ipv4.into() };
            SocketAddr::new(ip, SERVER_PORT)
        })
        .collect();
    let ok = client(lab, move || {
        for (i, d) in direct.iter().enumerate() {
            let _ = tcp_name(*d, 59_000 + i as u16, Duration::from_secs(3));
        }
        (0..30)
            .filter(|i| tcp_name(vip, 60_000 + i, Duration::from_secs(3)).is_ok())
            .count()
    });
    assert!(ok > 0, "nothing answered during warm-up");
}

/// Starts the agent with `cfg`, waits until `up` backends are up in the maps, warms up.
/// A full-NAT config makes the lab one of full-NAT backends first ([`Lab::make_fullnat`]).
pub fn start(lab: &Lab, cfg: &Cfg, up: usize) -> Agent {
    prepare(lab, cfg);
    let agent = Agent::start(lab, &cfg.render(lab));
    wait_up(lab, &agent, &cfg.admin_listen, up);
    warm_up_as(lab, cfg.v6, cfg.mode != "fullnat");
    agent
}

/// Makes the lab fit `cfg`'s mode (full-NAT backends hold no VIP and cannot reach the
/// client).
pub fn prepare(lab: &Lab, cfg: &Cfg) {
    if cfg.mode == "fullnat" {
        lab.make_fullnat().expect("full-NAT lab");
    }
}

/// Waits until `up` backends passed their checks and the maps say so. A transition is
/// logged when the result arrives and the replan that writes it may follow a few
/// milliseconds later (replans are paced by their own cost), or may write nothing (a
/// backup while the primaries are up): so the agent's last plan, which is what the maps
/// hold, is read from `/status` (served on `admin`) until it counts `up` backends up (its
/// `health_up` is the health it planned with) with a known next hop.
pub fn wait_up(lab: &Lab, agent: &Agent, admin: &str, up: usize) {
    assert!(
        agent.wait_log_count("UP after", up, Duration::from_secs(10)),
        "{}",
        agent.log_text()
    );
    let start = Instant::now();
    let mut status = None;
    while start.elapsed() < Duration::from_secs(5) {
        let s = super::status_at(&lab.lb.netns, admin);
        let planned = s
            .services
            .iter()
            .flat_map(|s| &s.backends)
            .filter(|b| b.health_up && !b.reason.starts_with("next hop unknown"))
            .count();
        status = Some(s);
        if planned >= up {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!(
        "the last plan has fewer than {up} backends up: {status:#?}\n{}",
        agent.log_text()
    );
}

/// What one failover run saw.
pub struct Failover {
    /// From the kill to the last new connection that failed (zero if none failed).
    pub took: Duration,
    /// New connections that failed after the kill, and all new connections.
    pub failed: usize,
    pub total: usize,
    /// New connections that failed before the kill (must be none).
    pub failed_before: usize,
    /// Errors on long-lived connections to the backends that stayed up (must be none).
    pub other_errors: Vec<String>,
    /// Source port and error of every failed new connection.
    pub errors: Vec<(u16, String)>,
    /// The longest pause between new connections in the 300 ms after the kill: how finely
    /// `took` is sampled (a busy machine can stall the client thread).
    pub max_gap: Duration,
    /// The longest new connection (connect to answer) that ended after the kill.
    pub slowest: Duration,
}

/// A steady stream of new connections (one at a time, from source ports 40000 up) while
/// backend b1's server dies 700-950 ms in; the stream runs for 3 s in all. Six long-lived
/// connections to the other backends are asked again after every new connection.
pub fn failover(lab: &mut Lab, v6: bool) -> Failover {
    failover_with(lab, v6, Duration::from_millis(300))
}

/// [`failover`] with each new connection given `connect` to complete (full-NAT's retried
/// SYNs complete after the client's one-second retransmission).
pub fn failover_with(lab: &mut Lab, v6: bool, connect: Duration) -> Failover {
    let v = vip(lab, v6);
    let stop_at = Instant::now() + Duration::from_secs(3);
    let stream = lab::client::in_netns(&lab.client.netns, move || {
        // Long-lived connections on b2 and b3.
        let mut others = Vec::new();
        while others.len() < 6 {
            let mut c = Conn::open(v).expect("open");
            let n = c.ask().expect("ask");
            if n != "b1" {
                others.push((c, n));
            }
        }
        let mut log = Vec::new();
        let mut errors = Vec::new();
        let mut other_errors = Vec::new();
        let mut port = 40_000u16;
        while Instant::now() < stop_at {
            let began = Instant::now();
            let r = tcp_name(v, port, connect);
            if let Err(e) = &r {
                errors.push((port, e.to_string()));
            }
            log.push((Instant::now(), r.is_ok(), began.elapsed()));
            port += 1;
            for (c, n) in others.iter_mut() {
                match c.ask() {
                    Ok(got) if &got == n => {}
                    other => other_errors.push(format!("{n}: {other:?}")),
                }
            }
        }
        (log, errors, other_errors)
    });
    // Checks run on a fixed period, so a fixed delay after the agent came up would kill at
    // about the same point of the check cycle every run: a random extra delay of up to
    // 250 ms (more than two cycles of the tests' 100 ms checks) spreads the kills over it.
    use std::hash::BuildHasher as _;
    let spread = std::collections::hash_map::RandomState::new().hash_one(0u8) % 250;
    std::thread::sleep(Duration::from_millis(700 + spread));
    let killed = Instant::now();
    lab.stop_server(0).expect("stop b1's server");
    let (log, errors, other_errors) = stream.join().expect("client thread");
    let after: Vec<Instant> = log
        .iter()
        .filter(|(t, ok, _)| *t >= killed && !ok)
        .map(|(t, _, _)| *t)
        .collect();
    let slowest = log
        .iter()
        .filter(|(t, _, _)| *t >= killed)
        .map(|(_, _, d)| *d)
        .max()
        .unwrap_or_default();
    let last = after.iter().copied().max().unwrap_or(killed);
    let mut seen = vec![killed];
    seen.extend(
        log.iter()
            .map(|(t, _, _)| *t)
            .filter(|t| *t >= killed && *t <= killed + Duration::from_millis(300)),
    );
    let max_gap = seen
        .windows(2)
        .map(|w| w[1].saturating_duration_since(w[0]))
        .max()
        .unwrap_or_default();
    Failover {
        took: last.saturating_duration_since(killed),
        failed: after.len(),
        total: log.len(),
        failed_before: log.iter().filter(|(t, ok, _)| *t < killed && !ok).count(),
        other_errors,
        errors,
        max_gap,
        slowest,
    }
}

/// What a SYN flood through the lab did to the connections held across it.
#[derive(Debug)]
pub struct Flood {
    /// Connections held open through the flood, and those of them the balancer tracked
    /// (their table slot changed) before it.
    pub held: usize,
    pub tracked: usize,
    /// Of the tracked, those whose conntrack entry (same backend) was still there after.
    pub kept: usize,
    /// Connections answered after the flood by the backend that answered before it, and
    /// the errors of the others.
    pub same_backend: usize,
    pub errors: Vec<String>,
    /// Spoofed SYNs sent, and the packets the balancer's program saw per second.
    pub sent: u64,
    pub seen_per_second: f64,
    /// `flood_bypass` during the flood.
    pub bypassed: u64,
    /// The agent's CPU during the flood, in CPUs (1.0: one core busy).
    pub agent_cpu: f64,
    pub took: Duration,
}

/// The MAC of eth0 in `netns`.
pub fn eth0_mac(netns: &str) -> [u8; 6] {
    lab::client::in_netns(netns, || gateway::sys::interface_mac("eth0"))
        .join()
        .unwrap()
        .expect("eth0's MAC")
}

/// A global counter of the balancer's program, from its `/status`.
pub fn lb_counter(lab: &Lab, name: &str) -> u64 {
    super::status_at(&lab.lb.netns, "127.0.0.1:9180")
        .dataplane
        .counters
        .iter()
        .find(|c| c.name == name)
        .map_or(0, |c| c.value)
}

/// Holds `conns` connections from the client, drains backend b2 (so the table slots its
/// connections use change and each connection's next packet gets a conntrack entry),
/// then floods the VIP with spoofed SYNs from random sources (an AF_PACKET socket in the
/// client's namespace, as fast as it sends) for `length`, adding backend b3 half way (a
/// table change during the flood); then asks every held connection again. `cfg` is the
/// agent's config with b3 left out (`backends[2] = None`); `extra` is appended to every
/// config written (a `[protection]` section).
pub fn syn_flood(
    lab: &Lab,
    agent: &Agent,
    cfg: &mut Cfg,
    extra: &str,
    conns: usize,
    length: Duration,
) -> Flood {
    use std::sync::mpsc::channel;
    let v = vip(lab, false);
    // Asked with `true`, the connections answer 100 at a time, 150 ms apart, so that the
    // entries they make after the drain stay within the guard's rate.
    let (ask_tx, ask_rx) = channel::<bool>();
    let (ans_tx, ans_rx) = channel::<Vec<(u16, Result<String, String>)>>();
    let holder = lab::client::in_netns(&lab.client.netns, move || {
        let mut held: Vec<Conn> = (0..conns)
            .map(|i| Conn::open(v).unwrap_or_else(|e| panic!("connection {i}: {e}")))
            .collect();
        while let Ok(paced) = ask_rx.recv() {
            let mut answers = Vec::new();
            for (i, c) in held.iter_mut().enumerate() {
                if paced && i % 100 == 99 {
                    std::thread::sleep(Duration::from_millis(150));
                }
                answers.push((c.local_port(), c.ask().map_err(|e| e.to_string())));
            }
            ans_tx.send(answers).unwrap();
        }
    });
    let ask = |paced: bool| {
        ask_tx.send(paced).unwrap();
        ans_rx.recv().expect("the held connections' answers")
    };
    let first = ask(false);
    cfg.backends[1] = Some("state = \"drain\"".into());
    agent.reload(&(cfg.render(lab) + extra));
    let before = ask(true);
    assert!(
        first.iter().zip(&before).all(|(a, b)| a == b),
        "a drain moved held connections"
    );
    let client: std::net::IpAddr = lab.client.ipv4.into();
    let entries = conntrack_of(lab);
    let key = |port: u16| gateway_common::FlowKey {
        src: gateway::model::addr16(client),
        dst: gateway::model::addr16(v.ip()),
        sport_be: port.to_be(),
        dport_be: v.port().to_be(),
        proto: gateway_common::PROTO_TCP,
        family: gateway_common::FAMILY_V4,
        _pad: [0; 2],
    };
    let tracked: Vec<(u16, u32)> = before
        .iter()
        .filter_map(|(port, _)| entries(&key(*port)).map(|b| (*port, b)))
        .collect();

    let (lb_mac, client_mac) = (eth0_mac(&lab.lb.netns), eth0_mac(&lab.client.netns));
    let (seen0, bypass0) = (
        lb_counter(lab, "rx_packets"),
        lb_counter(lab, "flood_bypass"),
    );
    let pid = agent.pid().to_string();
    let cpu0 = super::procfs::proc_ticks(&pid);
    let started = Instant::now();
    let flood = lab::client::in_netns(&lab.client.netns, move || {
        send_spoofed_syns(lb_mac, client_mac, v, length)
    });
    std::thread::sleep(length / 2);
    cfg.backends[2] = Some(String::new());
    agent.reload(&(cfg.render(lab) + extra));
    let sent = flood.join().expect("the flood");
    let took = started.elapsed();
    let agent_cpu = (super::procfs::proc_ticks(&pid) - cpu0) as f64
        / super::procfs::clock_ticks()
        / took.as_secs_f64();
    let seen = lb_counter(lab, "rx_packets") - seen0;
    let bypassed = lb_counter(lab, "flood_bypass") - bypass0;

    let kept = tracked
        .iter()
        .filter(|(port, b)| entries(&key(*port)) == Some(*b))
        .count();
    let after = ask(false);
    drop(ask_tx);
    holder.join().expect("the holder");
    let mut errors = Vec::new();
    let mut same_backend = 0;
    for ((port, a), (_, b)) in before.iter().zip(&after) {
        match (a, b) {
            (Ok(x), Ok(y)) if x == y => same_backend += 1,
            _ => errors.push(format!("port {port}: {a:?} before, {b:?} after")),
        }
    }
    Flood {
        held: conns,
        tracked: tracked.len(),
        kept,
        same_backend,
        errors,
        sent,
        seen_per_second: seen as f64 / took.as_secs_f64(),
        bypassed,
        agent_cpu,
        took,
    }
}

/// The flood test's set-up in a fresh lab (`prefix`, three backends): the agent with a
/// 251-slot table (the connections use most slots, and the drain changes about half), b3
/// left out until the flood, the guard at 1,000 new tracked flows/s per CPU; then
/// [`syn_flood`] with `conns` connections for `length`.
pub fn flood_in_a_lab(prefix: &str, conns: usize, length: Duration) -> Flood {
    let lab = super::lab(prefix, 3);
    let mut cfg = Cfg::new("l2dsr", false, 3);
    cfg.service_extra = "table_size = 251".into();
    cfg.backends[2] = None;
    let extra = "\n[protection]\nflood_new_flows_per_cpu = 1000\n";
    let agent = Agent::start(&lab, &(cfg.render(&lab) + extra));
    wait_up(&lab, &agent, &cfg.admin_listen, 2);
    warm_up(&lab, false);
    let f = syn_flood(&lab, &agent, &mut cfg, extra, conns, length);
    agent.stop();
    f
}

/// A reader of the balancer's pinned CONNTRACK: a flow's backend id, if tracked.
fn conntrack_of(lab: &Lab) -> impl Fn(&gateway_common::FlowKey) -> Option<u32> {
    let path = super::agent::pin_dir_of(lab, 0).join(gateway_common::MAP_CONNTRACK);
    let data = aya::maps::MapData::from_pin(&path).expect("the pinned CONNTRACK");
    let map: aya::maps::HashMap<_, gateway_common::FlowKey, gateway_common::FlowValue> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(data)).expect("CONNTRACK");
    move |k| map.get(k, 0).ok().map(|v| v.backend)
}

/// Spoofed SYNs to `vip` from 198.19.x.y (a new source address and port each), framed for
/// the balancer's MAC, out of this namespace's eth0 for `length`; how many were sent.
fn send_spoofed_syns(
    lb_mac: [u8; 6],
    client_mac: [u8; 6],
    vip: SocketAddr,
    length: Duration,
) -> u64 {
    use lab::packet::{TCP_SYN, spoof_syn, tcp, v4};
    let mut f = tcp(v4(198, 19, 0, 1), vip.ip(), 1024, vip.port(), TCP_SYN);
    f.dst = lb_mac;
    f.src = client_mac;
    let mut frame = f.bytes();
    let deadline = Instant::now() + length;
    let mut sent = 0u64;
    let mut raw = lab::client::RawSender::open("eth0").expect("AF_PACKET socket");
    while Instant::now() < deadline {
        for _ in 0..256 {
            spoof_syn(&mut frame, sent as u32);
            if raw.send(&frame) {
                sent += 1;
            }
        }
    }
    sent
}
