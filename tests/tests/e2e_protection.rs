//! Source limits end to end: the real agent in the namespace lab, real TCP connections from
//! two client addresses, limits changed by reload.
mod common;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::Command,
    time::Duration,
};

use common::{admin_get, agent::*, scenario::*};
use lab::{
    Lab,
    client::{Conn, tcp_name_from},
};

/// The second client address, added beside the client's own (198.18.0.1).
const SECOND: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 5);

/// `n` new connections from `src` (ports from `first`): how many got an answer. A refused
/// SYN is never answered, so each failure waits the whole (short) timeout.
fn connections(lab: &Lab, src: Ipv4Addr, first: u16, n: u16) -> usize {
    let vip = vip(lab, false);
    client(lab, move || {
        (0..n)
            .filter(|i| {
                let local = SocketAddr::new(IpAddr::V4(src), first + i);
                tcp_name_from(vip, local, Duration::from_millis(300)).is_ok()
            })
            .count()
    })
}

fn protection(lab: &Lab) -> gateway::admin::ProtectionReport {
    let (code, body) = admin_get(&lab.lb.netns, "/protection");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn limits(mode: &str, burst: u32) -> String {
    format!(
        "protection = {{ mode = \"{mode}\", new_flows_per_second = 1, new_flows_burst = {burst} }}"
    )
}

/// One client over its new-flow limit gets refused connections, counted and listed, while
/// a second client's all succeed; a reload that raises the limit lets the first one in
/// again without breaking its established connections; monitor mode forwards everything
/// and counts what it would have dropped.
#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn a_client_over_its_limit_is_refused_and_another_is_not() {
    if !common::privileged("a_client_over_its_limit_is_refused_and_another_is_not") {
        return;
    }
    let _g = common::serial();
    let lab = common::lab("prot", 2);
    lab::run(Command::new("ip").args([
        "-n",
        &lab.client.netns,
        "addr",
        "add",
        &format!("{SECOND}/24"),
        "dev",
        "eth0",
    ]))
    .expect("a second client address");
    let mut cfg = Cfg::new("l2dsr", false, 2);
    // The warm-up opens about 30 connections from the first client: its burst holds them.
    cfg.service_extra = limits("enforce", 60);
    let agent = start(&lab, &cfg, 2);
    let first = lab.client.ipv4;

    // Five long-lived connections from the first client, still within its burst.
    let v = vip(&lab, false);
    let (ask_tx, ask_rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let held = lab::client::in_netns(&lab.client.netns, move || {
        let mut conns: Vec<Conn> = (0..5).map(|_| Conn::open(v).expect("open")).collect();
        ready_tx.send(()).unwrap();
        let mut rounds = Vec::new();
        while ask_rx.recv().is_ok() {
            rounds.push(
                conns
                    .iter_mut()
                    .map(|c| c.ask().map_err(|e| e.to_string()))
                    .collect::<Vec<_>>(),
            );
        }
        rounds
    });
    ready_rx.recv().unwrap();

    let dropped = lb_counter(&lab, "drop_limit_new_flows");
    let ok_first = connections(&lab, first, 31_000, 40);
    let ok_second = connections(&lab, SECOND, 31_000, 15);
    // 60 in the burst, about 35 of them used by now, about one more a second.
    assert!(
        (10..=36).contains(&ok_first),
        "{ok_first} of 40 from the first client got through"
    );
    assert_eq!(ok_second, 15, "the second client was limited too");
    let refused = lb_counter(&lab, "drop_limit_new_flows") - dropped;
    assert!(refused >= (40 - ok_first) as u64, "{refused} SYNs counted");
    let report = protection(&lab);
    let listed: Vec<&str> = report.sources.iter().map(|s| s.prefix.as_str()).collect();
    assert_eq!(listed, [format!("{first}/32")], "{report:?}");
    assert_eq!(report.sources[0].action, "dropped");
    assert!(report.services[0].counters.dropped_new_flows >= refused);
    assert!(
        agent.wait_log(
            &format!("source {first}/32 (service web) is over its limit"),
            Duration::from_secs(3)
        ),
        "{}",
        agent.log_text()
    );
    // `gateway protection` shows the same.
    let (ok, out, err) = gateway_cli_in(&lab.lb.netns, &["protection"]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("{first}/32")), "{out}");

    // A reload raises the limit: the first client gets in again, its established
    // connections never noticed.
    cfg.service_extra = limits("enforce", 1000);
    agent.reload(&cfg.render(&lab));
    assert_eq!(connections(&lab, first, 32_000, 20), 20);
    ask_tx.send(()).unwrap();

    // Monitor mode: a tight limit forwards everything and counts what it would drop.
    let monitored = lb_counter(&lab, "monitor_limit_new_flows");
    cfg.service_extra = limits("monitor", 2);
    agent.reload(&cfg.render(&lab));
    assert_eq!(connections(&lab, SECOND, 33_000, 20), 20);
    assert!(lb_counter(&lab, "monitor_limit_new_flows") - monitored >= 15);
    ask_tx.send(()).unwrap();
    drop(ask_tx);
    let rounds = held.join().unwrap();
    assert_eq!(rounds.len(), 2);
    for answers in rounds {
        assert!(answers.iter().all(|a| a.is_ok()), "{answers:?}");
    }
    agent.stop();
}

/// A few thousand established lab connections on changed table slots, then ten seconds of
/// spoofed SYNs from random sources with the table changed half way: every connection
/// keeps its conntrack entry and its backend, and keeps working; `flood_bypass` counts the
/// flood. The guard's rate (`flood_in_a_lab`) is set so that what it lets into conntrack
/// over the flood (rate x CPUs x 10 s) stays well below the lab's 65,536 entries.
#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn a_syn_flood_leaves_established_connections_alone() {
    if !common::privileged("a_syn_flood_leaves_established_connections_alone") {
        return;
    }
    let _g = common::serial();
    let f = flood_in_a_lab("flood", 2000, Duration::from_secs(10));
    println!("{f:?}");
    assert!(
        f.errors.is_empty(),
        "{:?}",
        &f.errors[..f.errors.len().min(10)]
    );
    assert_eq!(f.same_backend, f.held);
    assert!(
        f.tracked > 500,
        "{} of {} connections tracked",
        f.tracked,
        f.held
    );
    assert_eq!(f.kept, f.tracked, "conntrack entries lost in the flood");
    assert!(f.sent > 100_000, "only {} SYNs sent", f.sent);
    assert!(f.bypassed > 10_000, "flood_bypass {}", f.bypassed);
}
