//! The text the CLI prints: `gateway status`'s tables from a [`Snapshot`], and
//! `gateway check`'s from what [`crate::preview`] computes (a config's plan and the change
//! from a running one). Pure: values in, text out.
use std::{fmt::Write as _, net::IpAddr, time::Duration};

use crate::{
    admin::{NatReport, ProtectionReport, Snapshot},
    config::Config,
    plan::Plan,
    preview::{Change, Difference, Endpoint, Flows, Kept, ServiceChange},
};
use Align::{Left, Right};

/// Said of a service whose table is empty.
const EMPTY_TABLE: &str = "no backend takes new flows: new connections are dropped";

/// `gateway status`: a table per service, laid out like `gateway check`.
pub fn render_status(s: &Snapshot) -> String {
    let d = &s.dataplane;
    let mut out = format!("dataplane  interface {}", d.interface);
    match &d.xdp_mode {
        Some(m) => {
            let _ = write!(out, "  xdp {m}");
        }
        None => out += "  not attached",
    }
    if let Some(id) = d.program_id {
        let _ = write!(out, "  program {id}");
    }
    match d.conntrack_entries {
        Some(n) => {
            let _ = writeln!(out, "  conntrack {n}/{} entries", d.conntrack_capacity);
        }
        None => {
            let _ = writeln!(out, "  conntrack {} entries", d.conntrack_capacity);
        }
    }
    if !d.snat_draining.is_empty() {
        let _ = writeln!(
            out,
            "snat       draining {} (removed from the config; live full-NAT flows still use it)",
            d.snat_draining.join(" ")
        );
    }
    // What the program turned away, by reason (docs/datapath.md), when anything was.
    let refused: Vec<String> = d
        .counters
        .iter()
        .filter(|c| c.value > 0 && (c.name.starts_with("drop_") || c.name == "pass_not_our_mac"))
        .map(|c| format!("{} {}", c.name, c.value))
        .collect();
    if !refused.is_empty() {
        let _ = writeln!(out, "refused    {}", refused.join("  "));
    }
    if let Some(b) = &s.bgp {
        let vips: Vec<String> = b
            .vips
            .iter()
            .map(|v| {
                let word = if v.announced {
                    "announced"
                } else {
                    "withdrawn"
                };
                format!(
                    "{} {word} ({} for {:.0}s)",
                    v.vip, v.reason, v.since_seconds
                )
            })
            .collect();
        let _ = writeln!(out, "bgp        {}", vips.join("  "));
        if let Some(e) = &b.last_error {
            let _ = writeln!(out, "bgp        ERROR ({} so far): {e}", b.errors);
        }
    }
    for svc in &s.services {
        let endpoint = if svc.vip.contains(':') {
            format!("[{}]:{}/{}", svc.vip, svc.port, svc.protocol)
        } else {
            format!("{}:{}/{}", svc.vip, svc.port, svc.protocol)
        };
        let _ = writeln!(
            out,
            "\nservice {}  {endpoint}  {}  table {} slots ({} changed){}  {} packets  {} new flows",
            svc.name,
            svc.mode,
            svc.table_size,
            svc.changed_slots,
            if svc.panic { "  PANIC" } else { "" },
            svc.traffic.packets,
            svc.traffic.new_flows,
        );
        if !svc.protection_mode.is_empty() && svc.protection_mode != "off" {
            let p = &svc.protection;
            let _ = writeln!(
                out,
                "  limits {}: dropped {} new flows, {} packets; monitored {} new flows, {} packets",
                svc.protection_mode,
                p.dropped_new_flows,
                p.dropped_packets,
                p.monitored_new_flows,
                p.monitored_packets
            );
        }
        let rows: Vec<Vec<String>> = svc
            .backends
            .iter()
            .map(|b| {
                let health = match (&b.last_probe, b.health_up) {
                    (Some(p), up) => format!(
                        "{} ({}, {:.1}ms)",
                        if up { "up" } else { "down" },
                        p.reason,
                        p.latency_ms
                    ),
                    (None, true) => "up".into(),
                    (None, false) => "down".into(),
                };
                // Values set through the API rather than the config file are marked `*`.
                let o = b.api_override.as_ref();
                let mark = |set: bool| if set { "*" } else { "" };
                vec![
                    b.address.clone(),
                    format!("{}{}", b.state, mark(o.is_some_and(|o| o.state.is_some()))),
                    format!(
                        "{}{}",
                        b.weight,
                        mark(o.is_some_and(|o| o.weight.is_some()))
                    ),
                    b.slots.to_string(),
                    format!("{:.1}%", b.share),
                    health,
                    b.reason.clone(),
                ]
            })
            .collect();
        if !rows.is_empty() {
            out += &columns(
                &[
                    ("backend", Left),
                    ("state", Left),
                    ("weight", Right),
                    ("slots", Right),
                    ("share", Right),
                    ("health", Left),
                    ("reason", Left),
                ],
                &rows,
                "  ",
            );
        }
    }
    if s.services
        .iter()
        .flat_map(|svc| &svc.backends)
        .any(|b| b.api_override.is_some())
    {
        out += "\n* set through the API (gateway backend ...), overriding the config file\n";
    }
    out
}

/// `gateway check`: `config`'s plan (from [`crate::preview::planned`]), one table per service.
pub fn render_plan(config: &Config, plan: &Plan) -> String {
    let mut out = dataplane_line(config);
    out += "(every backend not in maint assumed healthy)\n";
    for (s, sp) in config.services.iter().zip(&plan.services) {
        let _ = writeln!(
            out,
            "\nservice {}  {}  {}  table {} slots",
            s.name,
            Endpoint::of(s),
            s.mode.as_str(),
            s.table_size
        );
        let rows: Vec<Vec<String>> = sp
            .backends
            .iter()
            .map(|b| {
                vec![
                    b.address.to_string(),
                    b.state_word().to_string(),
                    b.weight.to_string(),
                    yes_no(b.backup).to_string(),
                    b.slots.to_string(),
                    format!("{:.1}%", percent(b.slots, sp.table_size as usize)),
                    b.reason.clone(),
                ]
            })
            .collect();
        if !rows.is_empty() {
            out += &columns(
                &[
                    ("backend", Left),
                    ("state", Left),
                    ("weight", Right),
                    ("backup", Left),
                    ("slots", Right),
                    ("share", Right),
                    ("reason", Left),
                ],
                &rows,
                "  ",
            );
        }
        if s.protection.mode != crate::config::ProtectMode::Off {
            let _ = writeln!(out, "  limits {}", s.protection);
        }
        if s.mode == crate::config::Mode::Fullnat {
            out += &fullnat_capacity(config, s.vip.is_ipv6());
        }
        if sp.empty() {
            let _ = writeln!(out, "  {EMPTY_TABLE}");
        }
    }
    out += &render_announcements(config, plan);
    out
}

/// A full-NAT service's line in `gateway check`: how many flows each of its backends can
/// carry at once (every SNAT address of the VIP's family times the port range).
fn fullnat_capacity(config: &Config, v6: bool) -> String {
    let d = &config.dataplane;
    let (addrs, list): (usize, Vec<String>) = if v6 {
        (
            d.snat_v6.len(),
            d.snat_v6.iter().map(|a| a.to_string()).collect(),
        )
    } else {
        (
            d.snat_v4.len(),
            d.snat_v4.iter().map(|a| a.to_string()).collect(),
        )
    };
    let ports = usize::from(*d.snat_ports.end() - *d.snat_ports.start()) + 1;
    format!(
        "  full-NAT from {} ports {}-{}: {} concurrent flows per backend ({addrs} x {ports}); \
         NAT holds {} flows in all\n",
        list.join(", "),
        d.snat_ports.start(),
        d.snat_ports.end(),
        addrs * ports,
        d.nat_size / 2,
    )
}

/// With `[bgp]`: the sessions, and each VIP's route as it would be announced (a VIP whose
/// services all have empty tables is not).
fn render_announcements(config: &Config, plan: &Plan) -> String {
    let Some(bgp) = &config.bgp else {
        return String::new();
    };
    let neighbors: Vec<String> = bgp
        .neighbors
        .iter()
        .map(|n| format!("{} (AS {})", n.address, n.asn))
        .collect();
    let mut out = format!(
        "\nbgp  AS {}  router id {}  neighbors {}\n",
        bgp.local_as,
        bgp.router_id,
        neighbors.join(", ")
    );
    for (vip, route) in crate::bgp::routes(config) {
        let servable = route.snat
            || config
                .services
                .iter()
                .zip(&plan.services)
                .any(|(s, sp)| s.vip == vip && !sp.empty());
        let len = if vip.is_ipv4() { 32 } else { 128 };
        let mut line = if route.snat {
            format!("  announce {vip}/{len} (SNAT address)")
        } else if servable {
            format!("  announce {vip}/{len}")
        } else {
            format!("  not announced {vip}/{len} (no usable backend)")
        };
        if !route.communities.is_empty() {
            let c: Vec<String> = route.communities.iter().map(|c| c.to_string()).collect();
            let _ = write!(line, "  communities {}", c.join(" "));
        }
        if let Some(m) = route.med {
            let _ = write!(line, "  med {m}");
        }
        out += &line;
        out.push('\n');
    }
    out
}

/// `gateway check --against`: a [`crate::preview::change`] as one line per changed setting (or
/// `dataplane: unchanged`), then one per service: what differs and the share of its table
/// (of new-flow placement) that moves to another backend.
pub fn render_change(change: &Change) -> String {
    let mut out = String::new();
    if !change.settings.iter().any(|s| s.section == "dataplane") {
        out += "dataplane: unchanged\n";
    }
    for s in &change.settings {
        let _ = write!(out, "{}: {} {} -> {}", s.section, s.key, s.old, s.new);
        if let Some(why) = s.restart {
            let _ = write!(out, " (needs a restart: {why})");
        }
        out.push('\n');
    }
    for c in &change.services {
        let (name, line) = match c {
            ServiceChange::Added { service: s, empty } => {
                let n = s.backends.len();
                let mut line = format!(
                    "service added ({}, {}, {n} backend{})",
                    Endpoint::of(s),
                    s.mode.as_str(),
                    plural(n)
                );
                if *empty {
                    line += &format!("; {EMPTY_TABLE}");
                }
                (&s.name, line)
            }
            ServiceChange::Kept(k) => (&k.service.name, kept(k)),
            ServiceChange::Removed(s) => (
                &s.name,
                format!(
                    "service removed ({}): its packets pass to the local stack, unbalanced",
                    Endpoint::of(s)
                ),
            ),
        };
        let _ = writeln!(out, "{name}: {line}");
    }
    out
}

fn dataplane_line(config: &Config) -> String {
    let d = &config.dataplane;
    let mtu = match d.mtu {
        0 => "mtu check off".to_string(),
        m => format!("mtu {m}"),
    };
    format!(
        "dataplane  interface {}  xdp {}  conntrack {} entries  {mtu}\n",
        d.interface, d.xdp_mode, d.conntrack_size
    )
}

/// The report line (after `name: `) for a service in both configs.
fn kept(k: &Kept) -> String {
    if k.unchanged() {
        return "unchanged (0.0% of slots move)".into();
    }
    let mut items: Vec<String> = k.differences.iter().map(difference).collect();
    let flows = match &k.flows {
        Flows::Unbalanced => "flows to the old address are no longer balanced".to_string(),
        Flows::Stay => "new flows only; established flows stay".to_string(),
        Flows::Resized => "the table size changes: established TCP flows are placed again \
                           by the new table; do it in a quiet window"
            .to_string(),
        Flows::PlacedAgain(lost) => format!(
            "established flows stay, except those on {}, which are placed again",
            list(lost)
        ),
    };
    items.push(format!("{:.1}% of slots move ({flows})", k.moved * 100.0));
    let mut line = items.join(", ");
    if k.emptied {
        line += &format!("; {EMPTY_TABLE}");
    }
    line
}

fn difference(d: &Difference) -> String {
    match d {
        Difference::Address(old, new) => format!("address {old} -> {new}"),
        Difference::Mode(old, new) => format!("mode {} -> {}", old.as_str(), new.as_str()),
        Difference::TableSize(old, new) => format!("table {old} -> {new} slots"),
        Difference::Slowstart(old, new) => {
            format!("slowstart {} -> {}", duration(*old), duration(*new))
        }
        Difference::PanicThreshold(old, new) => {
            let t = |t: Option<f64>| t.map_or("off".to_string(), |t| t.to_string());
            format!("panic_threshold {} -> {}", t(*old), t(*new))
        }
        Difference::Health => "health check changed".into(),
        Difference::Limits(old, new) => format!("limits {old} -> {new}"),
        Difference::BackendsAdded(a) => {
            format!("{} backend{} added ({})", a.len(), plural(a.len()), list(a))
        }
        Difference::BackendsRemoved(a) => {
            format!(
                "{} backend{} removed ({})",
                a.len(),
                plural(a.len()),
                list(a)
            )
        }
        Difference::Weight(a, old, new) => format!("weight of {a} {old} -> {new}"),
        Difference::State(a, old, new) => {
            format!("state of {a} {} -> {}", old.as_str(), new.as_str())
        }
        Difference::Backup(a, old, new) => {
            format!("backup of {a} {} -> {}", yes_no(*old), yes_no(*new))
        }
        Difference::BackendHealth(a) => format!("health check of {a} changed"),
    }
}

/// Addresses, comma separated.
fn list(addresses: &[IpAddr]) -> String {
    let words: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
    words.join(", ")
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn duration(d: Duration) -> String {
    if d.is_zero() {
        "off".into()
    } else {
        format!("{d:?}")
    }
}

/// `gateway protection`: each service's limits and counters, then the sources over a
/// limit now.
/// `gateway nat`: one row per full-NAT flow, the client first (what an abuse report about a
/// SNAT address and port needs).
pub fn render_nat(r: &NatReport) -> String {
    if r.mappings.is_empty() {
        return "no full-NAT flow matches\n".to_string();
    }
    let rows: Vec<Vec<String>> = r
        .mappings
        .iter()
        .map(|m| {
            let state = if m.retried {
                format!("{} (retried)", m.state)
            } else {
                m.state.clone()
            };
            vec![
                m.client.clone(),
                m.snat.clone(),
                m.backend.clone(),
                format!("{} {}", m.service, m.protocol),
                state,
                format!("{}s", m.idle_seconds),
            ]
        })
        .collect();
    let header = [
        ("CLIENT", Left),
        ("SNAT", Left),
        ("BACKEND", Left),
        ("SERVICE", Left),
        ("STATE", Left),
        ("IDLE", Right),
    ];
    let mut out = columns(&header, &rows, "");
    if r.matched > r.mappings.len() {
        let _ = writeln!(
            out,
            "{} of {} matching flows shown (--limit)",
            r.mappings.len(),
            r.matched
        );
    }
    out
}

pub fn render_protection(r: &ProtectionReport) -> String {
    let mut out = String::new();
    let guard = match r.flood_new_flows_per_cpu {
        0 => "off".to_string(),
        n => format!("{n} new tracked flows/s per CPU"),
    };
    let _ = writeln!(out, "flood guard  {guard}");
    if !r.allowlist.is_empty() {
        let _ = writeln!(out, "allowlist    {}", r.allowlist.join("  "));
    }
    let rate = |r: Option<u32>, b: Option<u32>| match (r, b) {
        (Some(r), Some(b)) => format!("{r}/s burst {b}"),
        _ => "-".to_string(),
    };
    let rows: Vec<Vec<String>> = r
        .services
        .iter()
        .map(|s| {
            vec![
                s.service.clone(),
                s.mode.clone(),
                rate(s.new_flows_per_second, s.new_flows_burst),
                rate(s.packets_per_second, s.packets_burst),
                format!("/{} /{}", s.prefix_v4, s.prefix_v6),
                format!(
                    "{} / {}",
                    s.counters.dropped_new_flows, s.counters.dropped_packets
                ),
                format!(
                    "{} / {}",
                    s.counters.monitored_new_flows, s.counters.monitored_packets
                ),
            ]
        })
        .collect();
    out += "\n";
    let header = [
        ("SERVICE", Left),
        ("MODE", Left),
        ("NEW FLOWS", Left),
        ("PACKETS", Left),
        ("PREFIX", Left),
        ("DROPPED NEW/PKT", Right),
        ("MONITORED NEW/PKT", Right),
    ];
    out += &columns(&header, &rows, "");
    if r.sources.is_empty() {
        out += "\nno source is over a limit\n";
        return out;
    }
    let rows: Vec<Vec<String>> = r
        .sources
        .iter()
        .map(|s| {
            vec![
                s.prefix.clone(),
                s.service.clone(),
                s.action.clone(),
                format!("{:.0}s", s.limited_for_seconds),
                format!("{:.0}", s.packets_per_second),
                format!("{:.0}", s.refused_per_second),
                s.refused.to_string(),
            ]
        })
        .collect();
    out += "\n";
    let header = [
        ("SOURCE", Left),
        ("SERVICE", Left),
        ("ACTION", Left),
        ("FOR", Right),
        ("PKT/S", Right),
        ("REFUSED/S", Right),
        ("REFUSED", Right),
    ];
    out += &columns(&header, &rows, "");
    out
}

#[derive(Clone, Copy)]
enum Align {
    Left,
    Right,
}

/// Rows under a header, columns padded to their widest cell, two spaces apart.
fn columns(header: &[(&str, Align)], rows: &[Vec<String>], indent: &str) -> String {
    let mut widths: Vec<usize> = header.iter().map(|(h, _)| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let head: Vec<String> = header.iter().map(|(h, _)| h.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&head).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(header)
            .zip(&widths)
            .map(|((cell, (_, align)), w)| match align {
                Left => format!("{cell:<w$}"),
                Right => format!("{cell:>w$}"),
            })
            .collect();
        out += indent;
        out += cells.join("  ").trim_end();
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{preview, testing};

    /// `gateway check`'s plan of `c`.
    fn plan(c: &Config) -> String {
        render_plan(c, &preview::planned(c))
    }

    /// `gateway check --against`'s report of applying `next` over `running`.
    fn change(running: &Config, next: &Config) -> String {
        render_change(&preview::change(running, next))
    }

    fn config(services: &str) -> Config {
        let text = format!("[dataplane]\ninterface = \"eth0\"\n{services}");
        Config::parse(&text, Path::new("x.toml")).expect("valid test config")
    }

    /// A service `name` on 198.18.1.`vip`:80/tcp with one backend per `(last octet, extra
    /// keys)`.
    fn service(name: &str, vip: u8, backends: &[(u8, &str)]) -> String {
        let mut s = format!(
            "[[service]]\nname = \"{name}\"\nvip = \"198.18.1.{vip}\"\nport = 80\n\
             protocol = \"tcp\"\nmode = \"l2dsr\"\ntable_size = 65537\n"
        );
        for (last, extra) in backends {
            s += &format!("[[service.backend]]\naddress = \"198.18.0.{last}\"\n{extra}\n");
        }
        s
    }

    fn three() -> Config {
        config(&service("web", 1, &[(11, ""), (12, ""), (13, "")]))
    }

    /// The share column of the backend ending in `.last`, in percent.
    fn share(report: &str, last: u8) -> f64 {
        let addr = format!("198.18.0.{last} ");
        let line = report
            .lines()
            .find(|l| l.trim_start().starts_with(&addr))
            .unwrap_or_else(|| panic!("no row for {addr}in\n{report}"));
        let cell = line
            .split_whitespace()
            .find(|c| c.ends_with('%'))
            .unwrap_or_else(|| panic!("no share in {line:?}"));
        cell.trim_end_matches('%').parse().unwrap()
    }

    /// The "X% of slots move" figure on the line of service `name`.
    fn moved(report: &str, name: &str) -> f64 {
        let line = report
            .lines()
            .find(|l| l.starts_with(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no line for {name} in\n{report}"));
        let (head, _) = line
            .split_once("% of slots move")
            .unwrap_or_else(|| panic!("no move figure in {line:?}"));
        head.rsplit([' ', '(']).next().unwrap().parse().unwrap()
    }

    #[test]
    fn plan_shows_what_would_be_announced() {
        let text = include_str!("../../examples/gateway-bgp.toml");
        let c = Config::parse(text, std::path::Path::new("gateway-bgp.toml")).unwrap();
        let out = render_plan(&c, &preview::planned(&c));
        assert!(
            out.ends_with(
                "\nbgp  AS 65010  router id 198.18.0.2  neighbors 198.18.0.1 (AS 65000)\n  \
                 announce 198.18.1.1/32  communities 65010:1 65000:80  med 10\n"
            ),
            "{out}"
        );
        // Every backend in maint: the VIP would not be announced.
        let maint = text
            .replace(
                "address = \"198.18.0.12\"",
                "address = \"198.18.0.12\"\nstate = \"maint\"",
            )
            .replace(
                "address = \"198.18.0.11\"",
                "address = \"198.18.0.11\"\nstate = \"maint\"",
            );
        let c = Config::parse(&maint, std::path::Path::new("gateway-bgp.toml")).unwrap();
        let out = render_plan(&c, &preview::planned(&c));
        assert!(
            out.contains("  not announced 198.18.1.1/32 (no usable backend)  communities"),
            "{out}"
        );
        // A SNAT address is announced whatever the backends.
        let snat = maint.replace(
            "[dataplane]\n",
            "[dataplane]\nsnat_v4 = [\"198.18.0.100\"]\n",
        );
        let c = Config::parse(&snat, std::path::Path::new("gateway-bgp.toml")).unwrap();
        let out = render_plan(&c, &preview::planned(&c));
        assert!(
            out.contains("  announce 198.18.0.100/32 (SNAT address)  communities 65010:1\n"),
            "{out}"
        );
    }

    #[test]
    fn plan_shows_each_backend_with_its_share() {
        let c = config(&service(
            "web",
            1,
            &[(11, "weight = 1"), (12, "weight = 1"), (13, "weight = 2")],
        ));
        let out = plan(&c);
        assert!(
            out.starts_with("dataplane  interface eth0  xdp auto"),
            "{out}"
        );
        assert!(out.contains("conntrack 1048576 entries  mtu 1500"), "{out}");
        assert!(
            out.contains("service web  198.18.1.1:80/tcp  l2dsr  table 65537 slots"),
            "{out}"
        );
        for (last, want) in [(11, 25.0), (12, 25.0), (13, 50.0)] {
            let got = share(&out, last);
            assert!((got - want).abs() <= 0.5, "{last}: {got} vs {want}\n{out}");
        }
        assert!(!out.contains(EMPTY_TABLE), "{out}");
    }

    #[test]
    fn plan_columns_line_up_and_show_state_weight_backup_and_reason() {
        let c = config(&service(
            "web",
            1,
            &[
                (11, "weight = 300"),
                (12, "state = \"drain\""),
                (13, "backup = true"),
            ],
        ));
        let out = plan(&c);
        let rows: Vec<&str> = out
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("backend"))
            .take(4)
            .collect();
        assert_eq!(rows.len(), 4, "{out}");
        // Every column starts at the same offset on every row.
        let reason_at = rows[0].find("reason").unwrap();
        assert!(rows[1][reason_at..].starts_with("ready, up"), "{out}");
        assert!(rows[2][reason_at..].starts_with("admin drain"), "{out}");
        assert!(
            rows[3][reason_at..].starts_with("backup: a primary is up"),
            "{out}"
        );
        let words: Vec<Vec<&str>> = rows
            .iter()
            .map(|r| r.split_whitespace().collect())
            .collect();
        assert_eq!(
            words[1][..6],
            ["198.18.0.11", "up", "300", "no", "65537", "100.0%"]
        );
        assert_eq!(
            words[2][..6],
            ["198.18.0.12", "drain", "100", "no", "0", "0.0%"]
        );
        assert_eq!(words[3][3..6], ["yes", "0", "0.0%"]);
    }

    #[test]
    fn plan_warns_when_no_backend_takes_new_flows() {
        let c = config(&format!(
            "{}{}",
            service(
                "web",
                1,
                &[(11, "state = \"maint\""), (12, "state = \"drain\"")]
            ),
            service("none", 2, &[]),
        ));
        let out = plan(&c);
        assert_eq!(out.matches(EMPTY_TABLE).count(), 2, "{out}");
        assert!(out.contains("maint"), "{out}");
    }

    #[test]
    fn removing_one_of_three_equal_backends_moves_about_a_third() {
        let fewer = config(&service("web", 1, &[(11, ""), (12, "")]));
        let out = change(&three(), &fewer);
        let m = moved(&out, "web");
        assert!((30.0..=37.0).contains(&m), "{m}\n{out}");
        assert!(out.contains("1 backend removed (198.18.0.13)"), "{out}");
        assert!(
            out.contains("except those on 198.18.0.13, which are placed again"),
            "{out}"
        );
        assert!(out.contains("dataplane: unchanged"), "{out}");
    }

    #[test]
    fn adding_a_backend_moves_its_share_of_new_flows() {
        let more = config(&service(
            "web",
            1,
            &[(11, ""), (12, ""), (13, ""), (14, "")],
        ));
        let out = change(&three(), &more);
        assert!(out.contains("1 backend added (198.18.0.14)"), "{out}");
        let m = moved(&out, "web");
        assert!((22.0..=30.0).contains(&m), "{m}\n{out}");
        assert!(
            out.contains("(new flows only; established flows stay)"),
            "{out}"
        );
    }

    #[test]
    fn a_new_table_size_says_established_flows_are_placed_again() {
        let text = service("web", 1, &[(11, ""), (12, ""), (13, "")])
            .replace("table_size = 65537", "table_size = 251");
        let out = change(&three(), &config(&text));
        assert!(
            out.contains("the table size changes: established TCP flows are placed again"),
            "{out}"
        );
    }

    #[test]
    fn reweighting_reports_old_and_new_weights() {
        let heavier = config(&service(
            "web",
            1,
            &[(11, "weight = 200"), (12, ""), (13, "")],
        ));
        let out = change(&three(), &heavier);
        assert!(out.contains("weight of 198.18.0.11 100 -> 200"), "{out}");
        // From 1/3 to 1/2 of the table: about a sixth of the slots move to it.
        let m = moved(&out, "web");
        assert!((15.0..=20.0).contains(&m), "{m}\n{out}");
    }

    #[test]
    fn admin_state_and_backup_changes_are_named() {
        let next = config(&service(
            "web",
            1,
            &[(11, "state = \"drain\""), (12, "backup = true"), (13, "")],
        ));
        let out = change(&three(), &next);
        assert!(out.contains("state of 198.18.0.11 ready -> drain"), "{out}");
        assert!(out.contains("backup of 198.18.0.12 no -> yes"), "{out}");
        // The draining backend keeps its flows; the idle backup does not.
        assert!(out.contains("except those on 198.18.0.12,"), "{out}");
        assert!((60.0..=70.0).contains(&moved(&out, "web")), "{out}");
    }

    #[test]
    fn identical_configs_are_unchanged() {
        let out = change(&three(), &three());
        assert_eq!(
            out,
            "dataplane: unchanged\nweb: unchanged (0.0% of slots move)\n"
        );
        assert_eq!(moved(&out, "web"), 0.0);
    }

    #[test]
    fn services_added_and_removed() {
        let two = config(&format!(
            "{}{}",
            service("web", 1, &[(11, ""), (12, ""), (13, "")]),
            service("api", 2, &[(21, "")])
        ));
        let out = change(&three(), &two);
        assert!(
            out.contains("api: service added (198.18.1.2:80/tcp, l2dsr, 1 backend)"),
            "{out}"
        );
        assert!(out.contains("web: unchanged"), "{out}");
        let out = change(&two, &three());
        assert!(
            out.contains("api: service removed (198.18.1.2:80/tcp)"),
            "{out}"
        );
    }

    #[test]
    fn a_service_left_without_backends_says_so() {
        let all_maint = config(&service(
            "web",
            1,
            &[
                (11, "state = \"maint\""),
                (12, "state = \"maint\""),
                (13, "state = \"maint\""),
            ],
        ));
        let out = change(&three(), &all_maint);
        assert_eq!(moved(&out, "web"), 100.0, "{out}");
        assert!(out.contains(&format!("; {EMPTY_TABLE}\n")), "{out}");
        assert!(
            out.contains("except those on 198.18.0.11, 198.18.0.12, 198.18.0.13,"),
            "{out}"
        );
    }

    #[test]
    fn a_new_address_is_named_and_its_old_flows_are_not_promised() {
        let moved_vip = config(&service("web", 9, &[(11, ""), (12, ""), (13, "")]));
        let out = change(&three(), &moved_vip);
        assert!(
            out.contains("web: address 198.18.1.1:80/tcp -> 198.18.1.9:80/tcp, 0.0% of slots move (flows to the old address"),
            "{out}"
        );
    }

    #[test]
    fn a_different_table_size_moves_every_slot() {
        let small = config(
            &service("web", 1, &[(11, ""), (12, ""), (13, "")])
                .replace("table_size = 65537", "table_size = 251"),
        );
        let out = change(&three(), &small);
        assert!(out.contains("table 65537 -> 251 slots"), "{out}");
        assert_eq!(moved(&out, "web"), 100.0, "{out}");
    }

    #[test]
    fn dataplane_changes_say_which_need_a_restart() {
        let a = three();
        let mut b = a.clone();
        b.dataplane.interface = "eth1".into();
        b.dataplane.conntrack_size = 2048;
        b.dataplane.mtu = 9000;
        b.dataplane.kernel_log = crate::config::KernelLog::Debug;
        b.admin.listen = "127.0.0.1:9181".parse().unwrap();
        let out = change(&a, &b);
        assert!(
            out.contains("admin: listen 127.0.0.1:9180 -> 127.0.0.1:9181 (needs a restart"),
            "{out}"
        );
        assert!(
            out.contains("dataplane: interface eth0 -> eth1 (needs a restart"),
            "{out}"
        );
        assert!(
            out.contains("dataplane: conntrack_size 1048576 -> 2048 (needs a restart"),
            "{out}"
        );
        assert!(
            out.contains("dataplane: kernel_log warn -> debug (needs a restart"),
            "{out}"
        );
        assert!(out.contains("dataplane: mtu 1500 -> 9000\n"), "{out}");
        assert!(out.contains("web: unchanged"), "{out}");
    }

    #[test]
    fn status_table() {
        let mut s = testing::snapshot();
        s.services[0].name = "web".into();
        s.dataplane.counters.push(crate::admin::Counter {
            name: "drop_martian_source".into(),
            value: 3,
        });
        s.dataplane.counters.push(crate::admin::Counter {
            name: "drop_tcp_offset".into(),
            value: 0,
        });
        let text = render_status(&s);
        let want = "\
dataplane  interface eth0  xdp native  program 42  conntrack 7/65536 entries
snat       draining 198.18.0.110 (removed from the config; live full-NAT flows still use it)
refused    drop_martian_source 3
bgp        198.18.1.1 announced (servable for 12s)  fd00:1::1 withdrawn (no usable backend for 3s)
bgp        ERROR (3 so far): connecting to BIRD's control socket: refused

service web  198.18.1.1:80/tcp  l2dsr  table 251 slots (7 changed)  10 packets  5 new flows
  limits enforce: dropped 3 new flows, 0 packets; monitored 0 new flows, 0 packets
  backend      state  weight  slots   share  health                            reason
  198.18.0.11  up        100    251  100.0%  up (connected, 0.2ms)             ready, up
  198.18.0.12  down      100      0    0.0%  down (connection refused, 0.2ms)  health check down
";
        assert_eq!(text, want, "\n{text}");
    }

    #[test]
    fn protection_shows_limits_counters_and_the_sources_over_a_limit() {
        let mut r = testing::protection_report();
        let text = render_protection(&r);
        assert!(
            text.contains("flood guard  200000 new tracked flows/s per CPU"),
            "{text}"
        );
        assert!(text.contains("allowlist    198.18.200.0/24"), "{text}");
        let web = text.lines().find(|l| l.starts_with("web ")).expect(&text);
        assert!(
            web.contains("enforce") && web.contains("10/s burst 20"),
            "{web}"
        );
        assert!(web.contains("120 / 0"), "{web}");
        let src = text
            .lines()
            .find(|l| l.starts_with("198.18.0.0/24"))
            .expect(&text);
        assert!(
            src.contains("dropped") && src.contains("390") && src.contains("12s"),
            "{src}"
        );
        r.sources.clear();
        r.flood_new_flows_per_cpu = 0;
        let text = render_protection(&r);
        assert!(text.contains("flood guard  off"), "{text}");
        assert!(text.contains("no source is over a limit"), "{text}");
    }

    #[test]
    fn limits_show_in_the_plan_and_their_changes_in_the_report() {
        let base = service("web", 1, &[(11, ""), (12, "")]);
        let with = |limits: &str, top: &str| {
            let text = base.replacen(
                "mode = \"l2dsr\"",
                &format!("mode = \"l2dsr\"\nprotection = {{ {limits} }}"),
                1,
            );
            config(&format!("{top}\n{text}"))
        };
        let running = with("mode = \"monitor\", new_flows_per_second = 100", "");
        let out = plan(&running);
        assert!(
            out.contains(
                "  limits monitor: new flows 100/s burst 100, packets no limit, per /32 and /64 sources"
            ),
            "{out}"
        );
        let next = with(
            "mode = \"enforce\", new_flows_per_second = 100",
            "[protection]\nallowlist = [\"198.18.9.0/24\"]\nflood_new_flows_per_cpu = 500",
        );
        let out = change(&running, &next);
        assert!(
            out.contains("protection: flood_new_flows_per_cpu 10000 -> 500\n"),
            "{out}"
        );
        assert!(
            out.contains("protection: allowlist [] -> [198.18.9.0/24]\n"),
            "{out}"
        );
        assert!(
            out.contains("web: limits monitor: new flows 100/s burst 100, packets no limit, per /32 and /64 sources -> enforce: "),
            "{out}"
        );
        assert!(!out.contains("needs a restart"), "limits are live: {out}");
    }

    #[test]
    fn check_shows_full_nat_capacity_and_the_pool_changes() {
        let fullnat = service("api", 1, &[(11, ""), (12, "")]).replace("l2dsr", "fullnat");
        let with = |pool: &str| config(&format!("{pool}\n{fullnat}"));
        let running =
            with("snat_v4 = [\"198.18.0.100\", \"198.18.0.101\"]\nsnat_ports = \"20000-20015\"");
        let out = plan(&running);
        assert!(
            out.contains(
                "  full-NAT from 198.18.0.100, 198.18.0.101 ports 20000-20015: 32 concurrent \
                 flows per backend (2 x 16); NAT holds 131072 flows in all\n"
            ),
            "{out}"
        );
        let next = with("snat_v4 = [\"198.18.0.100\"]\nsnat_ports = \"20000-29999\"");
        let out = change(&running, &next);
        assert!(
            out.contains("snat_v4 [198.18.0.100, 198.18.0.101] -> [198.18.0.100]"),
            "{out}"
        );
        assert!(
            out.contains("snat_ports 20000-20015 -> 20000-29999"),
            "{out}"
        );
        assert!(!out.contains("needs a restart"), "the pool is live: {out}");
    }
}
