//! `gateway check`: what a configuration would do, and what applying it over a running one
//! would change, without root or the kernel.
//!
//! Both reports come from the real planner ([`plan::plan`]) with every backend not in
//! `maint` assumed healthy ([`plan::assume_all_up`]): they show the operator's intent, not
//! the live health of the backends.
use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use gateway_common::{BACKEND_DRAIN, BACKEND_UP};

use crate::{
    config::{BackendConfig, Config, LoadTime, ServiceConfig},
    plan::{self, Ids, Plan, ServicePlan, TableCache},
};
use Align::{Left, Right};

/// Said of a service whose table is empty.
const EMPTY_TABLE: &str = "no backend takes new flows: new connections are dropped";

/// The plan for `config`, one table per service, every backend not in `maint` assumed up.
pub fn render_plan(config: &Config) -> String {
    let plan = planned(config);
    let mut out = dataplane_line(config);
    out += "(every backend not in maint assumed healthy)\n";
    for (s, sp) in config.services.iter().zip(&plan.services) {
        let _ = writeln!(
            out,
            "\nservice {}  {}  {}  table {} slots",
            s.name,
            endpoint(s),
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
        if sp.empty() {
            let _ = writeln!(out, "  {EMPTY_TABLE}");
        }
    }
    out
}

/// What applying `next` over `running` would do: data-plane settings, services added and
/// removed, and per service the backend changes and the share of its table (of new-flow
/// placement) that moves to another backend.
pub fn render_change(running: &Config, next: &Config) -> String {
    let mut out = String::new();
    let settings = setting_changes(running, next);
    if !settings.iter().any(|l| l.starts_with("dataplane:")) {
        out += "dataplane: unchanged\n";
    }
    for line in settings {
        let _ = writeln!(out, "{line}");
    }

    let (old_plan, new_plan) = (planned(running), planned(next));
    let old_by_name: HashMap<&str, (&ServiceConfig, &ServicePlan)> = running
        .services
        .iter()
        .zip(&old_plan.services)
        .map(|(s, p)| (s.name.as_str(), (s, p)))
        .collect();
    for (s, sp) in next.services.iter().zip(&new_plan.services) {
        let line = match old_by_name.get(s.name.as_str()) {
            Some((old, old_sp)) => service_change(old, old_sp, &old_plan, s, sp, &new_plan),
            None => {
                let n = s.backends.len();
                let mut line = format!(
                    "service added ({}, {}, {n} backend{})",
                    endpoint(s),
                    s.mode.as_str(),
                    plural(n)
                );
                if sp.empty() {
                    line += &format!("; {EMPTY_TABLE}");
                }
                line
            }
        };
        let _ = writeln!(out, "{}: {line}", s.name);
    }
    for s in &running.services {
        if !next.services.iter().any(|n| n.name == s.name) {
            let _ = writeln!(
                out,
                "{}: service removed ({}): its packets pass to the local stack, unbalanced",
                s.name,
                endpoint(s)
            );
        }
    }
    out
}

/// The plan the agent would make with every backend up, from fresh ids and tables.
fn planned(config: &Config) -> Plan {
    plan::plan(
        config,
        &plan::assume_all_up(config),
        &mut Ids::default(),
        &mut TableCache::default(),
        Duration::ZERO,
    )
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

/// One line per changed data-plane or admin setting, prefixed with its section.
fn setting_changes(running: &Config, next: &Config) -> Vec<String> {
    let (a, b) = (&running.dataplane, &next.dataplane);
    let mut out: Vec<String> = LoadTime::changed(running, next)
        .iter()
        .map(|s| {
            let (section, key) = s.key.split_once('.').unwrap_or(("", s.key));
            format!(
                "{section}: {key} {} -> {} (needs a restart: {})",
                (s.show)(running),
                (s.show)(next),
                s.why
            )
        })
        .collect();
    let mut live = |name: &str, old: String, new: String| {
        if old != new {
            out.push(format!("{name} {old} -> {new}"));
        }
    };
    let opt = |a: Option<_>| a.map_or("none".to_string(), |a: IpAddr| a.to_string());
    live("dataplane: mtu", a.mtu.to_string(), b.mtu.to_string());
    live(
        "dataplane: ipip_source_v4",
        opt(a.ipip_source_v4.map(IpAddr::V4)),
        opt(b.ipip_source_v4.map(IpAddr::V4)),
    );
    live(
        "dataplane: ipip_source_v4_vary_bits",
        a.ipip_source_v4_vary_bits.to_string(),
        b.ipip_source_v4_vary_bits.to_string(),
    );
    live(
        "dataplane: ipip_source_v6",
        opt(a.ipip_source_v6.map(IpAddr::V6)),
        opt(b.ipip_source_v6.map(IpAddr::V6)),
    );
    live(
        "dataplane: on_exit",
        a.on_exit.to_string(),
        b.on_exit.to_string(),
    );
    out
}

/// The report line (after `name: `) for a service present in both configs.
fn service_change(
    old: &ServiceConfig,
    old_sp: &ServicePlan,
    old_plan: &Plan,
    new: &ServiceConfig,
    new_sp: &ServicePlan,
    new_plan: &Plan,
) -> String {
    let mut items = Vec::new();
    let moved_address = endpoint(old) != endpoint(new);
    if moved_address {
        items.push(format!("address {} -> {}", endpoint(old), endpoint(new)));
    }
    if old.mode != new.mode {
        items.push(format!(
            "mode {} -> {}",
            old.mode.as_str(),
            new.mode.as_str()
        ));
    }
    if old.table_size != new.table_size {
        items.push(format!(
            "table {} -> {} slots",
            old.table_size, new.table_size
        ));
    }
    if old.slowstart != new.slowstart {
        items.push(format!(
            "slowstart {} -> {}",
            duration(old.slowstart),
            duration(new.slowstart)
        ));
    }
    if old.panic_threshold != new.panic_threshold {
        let t = |t: Option<f64>| t.map_or("off".to_string(), |t| t.to_string());
        items.push(format!(
            "panic_threshold {} -> {}",
            t(old.panic_threshold),
            t(new.panic_threshold)
        ));
    }
    let health_changed = old.health != new.health;
    if health_changed {
        items.push("health check changed".into());
    }

    fn find(list: &[BackendConfig], a: IpAddr) -> Option<&BackendConfig> {
        list.iter().find(|b| b.address == a)
    }
    let added: Vec<String> = new
        .backends
        .iter()
        .filter(|b| find(&old.backends, b.address).is_none())
        .map(|b| b.address.to_string())
        .collect();
    let removed: Vec<String> = old
        .backends
        .iter()
        .filter(|b| find(&new.backends, b.address).is_none())
        .map(|b| b.address.to_string())
        .collect();
    for (list, verb) in [(&added, "added"), (&removed, "removed")] {
        if !list.is_empty() {
            items.push(format!(
                "{} backend{} {verb} ({})",
                list.len(),
                plural(list.len()),
                list.join(", ")
            ));
        }
    }
    for b in &new.backends {
        let Some(o) = find(&old.backends, b.address) else {
            continue;
        };
        let a = b.address;
        if o.weight != b.weight {
            items.push(format!("weight of {a} {} -> {}", o.weight, b.weight));
        }
        if o.state != b.state {
            items.push(format!(
                "state of {a} {} -> {}",
                o.state.as_str(),
                b.state.as_str()
            ));
        }
        if o.backup != b.backup {
            items.push(format!(
                "backup of {a} {} -> {}",
                yes_no(o.backup),
                yes_no(b.backup)
            ));
        }
        // A changed service check changes every backend's; name only backends' own changes.
        if !health_changed && o.health != b.health {
            items.push(format!("health check of {a} changed"));
        }
    }

    let moved = moved_share(
        &slot_addresses(old_plan, old_sp),
        &slot_addresses(new_plan, new_sp),
    );
    if items.is_empty() && moved == 0.0 {
        return "unchanged (0.0% of slots move)".into();
    }
    // Established flows follow conntrack while their backend stays up or draining; flows of
    // a backend that leaves (removed, maint, an idle backup) are placed again.
    let keeps = |s: u8| s == BACKEND_UP || s == BACKEND_DRAIN;
    let still: HashSet<IpAddr> = new_sp
        .backends
        .iter()
        .filter(|b| keeps(b.kernel_state))
        .map(|b| b.address)
        .collect();
    let lost: Vec<String> = old_sp
        .backends
        .iter()
        .filter(|b| keeps(b.kernel_state) && !still.contains(&b.address))
        .map(|b| b.address.to_string())
        .collect();
    let flows = if moved_address {
        "flows to the old address are no longer balanced".to_string()
    } else if lost.is_empty() {
        "new flows only; established flows stay".to_string()
    } else {
        format!(
            "established flows stay, except those on {}, which are placed again",
            lost.join(", ")
        )
    };
    items.push(format!("{:.1}% of slots move ({flows})", moved * 100.0));
    let mut line = items.join(", ");
    if new_sp.empty() && !old_sp.empty() {
        line += &format!("; {EMPTY_TABLE}");
    }
    line
}

/// Each slot of the service's table as the backend address it names (None: no backend).
/// Ids are per plan; addresses are what a slot means across plans.
fn slot_addresses(plan: &Plan, sp: &ServicePlan) -> Vec<Option<IpAddr>> {
    let by_id: HashMap<u32, IpAddr> = sp.backends.iter().map(|b| (b.id, b.address)).collect();
    plan.desired
        .services
        .get(&sp.key)
        .map(|d| d.table.iter().map(|id| by_id.get(id).copied()).collect())
        .unwrap_or_default()
}

/// The fraction of slots that name another backend; all of them when the sizes differ.
fn moved_share(old: &[Option<IpAddr>], new: &[Option<IpAddr>]) -> f64 {
    if old.len() != new.len() {
        return 1.0;
    }
    if old.is_empty() {
        return 0.0;
    }
    let moved = old.iter().zip(new).filter(|(a, b)| a != b).count();
    moved as f64 / old.len() as f64
}

fn endpoint(s: &ServiceConfig) -> String {
    format!("{}/{}", SocketAddr::new(s.vip, s.port), s.protocol)
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

#[derive(Clone, Copy)]
pub(crate) enum Align {
    Left,
    Right,
}

/// Rows under a header, columns padded to their widest cell, two spaces apart.
pub(crate) fn columns(header: &[(&str, Align)], rows: &[Vec<String>], indent: &str) -> String {
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
    fn plan_shows_each_backend_with_its_share() {
        let c = config(&service(
            "web",
            1,
            &[(11, "weight = 1"), (12, "weight = 1"), (13, "weight = 2")],
        ));
        let out = render_plan(&c);
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
        let out = render_plan(&c);
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
        let out = render_plan(&c);
        assert_eq!(out.matches(EMPTY_TABLE).count(), 2, "{out}");
        assert!(out.contains("maint"), "{out}");
    }

    #[test]
    fn removing_one_of_three_equal_backends_moves_about_a_third() {
        let fewer = config(&service("web", 1, &[(11, ""), (12, "")]));
        let out = render_change(&three(), &fewer);
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
        let out = render_change(&three(), &more);
        assert!(out.contains("1 backend added (198.18.0.14)"), "{out}");
        let m = moved(&out, "web");
        assert!((22.0..=30.0).contains(&m), "{m}\n{out}");
        assert!(
            out.contains("(new flows only; established flows stay)"),
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
        let out = render_change(&three(), &heavier);
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
        let out = render_change(&three(), &next);
        assert!(out.contains("state of 198.18.0.11 ready -> drain"), "{out}");
        assert!(out.contains("backup of 198.18.0.12 no -> yes"), "{out}");
        // The draining backend keeps its flows; the idle backup does not.
        assert!(out.contains("except those on 198.18.0.12,"), "{out}");
        assert!((60.0..=70.0).contains(&moved(&out, "web")), "{out}");
    }

    #[test]
    fn identical_configs_are_unchanged() {
        let out = render_change(&three(), &three());
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
        let out = render_change(&three(), &two);
        assert!(
            out.contains("api: service added (198.18.1.2:80/tcp, l2dsr, 1 backend)"),
            "{out}"
        );
        assert!(out.contains("web: unchanged"), "{out}");
        let out = render_change(&two, &three());
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
        let out = render_change(&three(), &all_maint);
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
        let out = render_change(&three(), &moved_vip);
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
        let out = render_change(&three(), &small);
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
        let out = render_change(&a, &b);
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
}
