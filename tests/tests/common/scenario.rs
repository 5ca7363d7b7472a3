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
    let vip = vip(lab, v6);
    // Every backend, including backups that get no traffic yet, learns the client's address
    // from a direct exchange.
    let direct: Vec<SocketAddr> = lab
        .backends
        .iter()
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
pub fn start(lab: &Lab, cfg: &Cfg, up: usize) -> Agent {
    let agent = Agent::start(lab, &cfg.render(lab));
    wait_up(lab, &agent, &cfg.admin_listen, up);
    warm_up(lab, cfg.v6);
    agent
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
}

/// A steady stream of new connections (one at a time, from source ports 40000 up) while
/// backend b1's server dies 700-950 ms in; the stream runs for 3 s in all. Six long-lived
/// connections to the other backends are asked again after every new connection.
pub fn failover(lab: &mut Lab, v6: bool) -> Failover {
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
            let r = tcp_name(v, port, Duration::from_millis(300));
            if let Err(e) = &r {
                errors.push((port, e.to_string()));
            }
            log.push((Instant::now(), r.is_ok()));
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
        .filter(|(t, ok)| *t >= killed && !ok)
        .map(|(t, _)| *t)
        .collect();
    let last = after.iter().copied().max().unwrap_or(killed);
    let mut seen = vec![killed];
    seen.extend(
        log.iter()
            .map(|(t, _)| *t)
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
        failed_before: log.iter().filter(|(t, ok)| *t < killed && !ok).count(),
        other_errors,
        errors,
        max_gap,
    }
}
