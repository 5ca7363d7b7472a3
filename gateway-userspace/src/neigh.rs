//! L2 next hops of backends, from the kernel's routing and neighbour tables (`ip -j route
//! get` for all backends in one `ip -batch`, `ip -j neigh show`). XDP_TX sends a frame back out of the interface it came in
//! on, so a backend is usable only if its route leaves through that interface: directly
//! (l2dsr needs this: the backend must be on the same segment) or via a router (ipip).
use std::{
    collections::HashMap,
    io::Write as _,
    net::{IpAddr, SocketAddr, UdpSocket},
    process::{Command, Stdio},
};

use serde::Deserialize;

/// Where packets for a backend go next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The router, or None when the backend is on-link.
    pub gateway: Option<IpAddr>,
    pub dev: String,
}

impl Route {
    /// The address whose MAC the frame must carry.
    pub fn next_hop(&self, backend: IpAddr) -> IpAddr {
        self.gateway.unwrap_or(backend)
    }
}

#[derive(Deserialize)]
struct RouteJson {
    gateway: Option<IpAddr>,
    dev: Option<String>,
}

#[derive(Deserialize)]
struct NeighJson {
    dst: IpAddr,
    lladdr: Option<String>,
    #[serde(default)]
    state: Vec<String>,
}

fn ip_json(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .arg("-j")
        .args(args)
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The kernel's routes to `addrs`, in order, from one `ip` process (one per address
/// would cost seconds of process start-up for thousands of backends).
pub fn routes_get(addrs: &[IpAddr]) -> Vec<Result<Route, String>> {
    if addrs.is_empty() {
        return Vec::new();
    }
    let script: String = addrs.iter().map(|a| format!("route get {a}\n")).collect();
    let run = || -> Result<std::process::Output, String> {
        let mut child = Command::new("ip")
            .args(["-j", "-force", "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("running ip: {e}"))?;
        // Written from a thread: ip answers while it reads, and a full stdout pipe would
        // otherwise stall both sides.
        let mut stdin = child.stdin.take().expect("piped");
        let writer = std::thread::spawn(move || stdin.write_all(script.as_bytes()));
        let out = child
            .wait_with_output()
            .map_err(|e| format!("running ip: {e}"))?;
        let _ = writer.join();
        Ok(out)
    };
    match run() {
        Ok(out) => parse_batch(
            addrs.len(),
            &String::from_utf8_lossy(&out.stdout),
            &String::from_utf8_lossy(&out.stderr),
        ),
        Err(e) => vec![Err(e); addrs.len()],
    }
}

/// Splits the output of `ip -j -force -batch` with `n` `route get` commands into one result
/// per command. A command that succeeded printed one JSON line; one that failed printed
/// nothing there and its error then `Command failed -:LINE` on stderr.
pub fn parse_batch(n: usize, stdout: &str, stderr: &str) -> Vec<Result<Route, String>> {
    let mut failed: HashMap<usize, String> = HashMap::new();
    let mut last_error = String::new();
    for line in stderr.lines() {
        match line
            .strip_prefix("Command failed -:")
            .and_then(|l| l.trim().parse::<usize>().ok())
        {
            Some(no) => {
                failed.insert(no, std::mem::take(&mut last_error));
            }
            None => last_error = line.trim().to_string(),
        }
    }
    let mut answers = stdout.lines().filter(|l| !l.trim().is_empty());
    (1..=n)
        .map(|no| match failed.remove(&no) {
            Some(e) if e.is_empty() => Err("ip route get failed".to_string()),
            Some(e) => Err(e),
            None => answers
                .next()
                .ok_or_else(|| "ip route get printed nothing".to_string())
                .and_then(parse_route),
        })
        .collect()
}

pub fn parse_route(text: &str) -> Result<Route, String> {
    let routes: Vec<RouteJson> =
        serde_json::from_str(text).map_err(|e| format!("parsing `ip -j route get`: {e}"))?;
    let r = routes.into_iter().next().ok_or("no route")?;
    Ok(Route {
        gateway: r.gateway,
        dev: r.dev.ok_or("route without a device")?,
    })
}

/// Resolved neighbours (address -> MAC); incomplete and failed entries are left out.
pub fn neighbours() -> Result<HashMap<IpAddr, [u8; 6]>, String> {
    parse_neighbours(&ip_json(&["neigh", "show"])?)
}

pub fn parse_neighbours(text: &str) -> Result<HashMap<IpAddr, [u8; 6]>, String> {
    let entries: Vec<NeighJson> =
        serde_json::from_str(text).map_err(|e| format!("parsing `ip -j neigh show`: {e}"))?;
    Ok(entries
        .into_iter()
        .filter(|n| !n.state.iter().any(|s| s == "FAILED" || s == "INCOMPLETE"))
        .filter_map(|n| Some((n.dst, parse_mac(n.lladdr.as_deref()?)?)))
        .collect())
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Makes the kernel resolve `addr` by sending it one datagram (to the discard port).
pub fn trigger(addr: IpAddr) {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse()
    } else {
        "[::]:0".parse()
    }
    .expect("literal address");
    if let Ok(s) = UdpSocket::bind(bind) {
        let _ = s.send_to(b"", SocketAddr::new(addr, 9));
    }
}

/// Keeps routes (which rarely change) and resolves MACs on each call.
#[derive(Debug, Default)]
pub struct Resolver {
    routes: HashMap<IpAddr, Result<Route, String>>,
}

impl Resolver {
    /// Forgets cached routes (after a config reload or periodically).
    pub fn flush_routes(&mut self) {
        self.routes.clear();
    }

    /// The MAC to use for each backend, or why there is none. `on_link_only` holds the
    /// backends of l2dsr services; `iface` is the interface the program is attached to.
    pub fn resolve(
        &mut self,
        backends: &[(IpAddr, bool)],
        iface: &str,
    ) -> HashMap<IpAddr, Result<[u8; 6], String>> {
        let neigh = neighbours();
        let mut missing: Vec<IpAddr> = backends
            .iter()
            .map(|(a, _)| *a)
            .filter(|a| !self.routes.contains_key(a))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        let found = routes_get(&missing);
        self.routes.extend(missing.into_iter().zip(found));
        let mut out = HashMap::new();
        for (addr, on_link_only) in backends {
            let route = self.routes[addr].clone();
            let result = match (route, &neigh) {
                (Err(e), _) => Err(format!("no route: {e}")),
                (Ok(r), _) if r.dev != iface => Err(format!(
                    "routed via {}, not {iface} where the program runs",
                    r.dev
                )),
                (Ok(r), _) if *on_link_only && r.gateway.is_some() => Err(format!(
                    "l2dsr needs the backend on-link, but it is routed via {}",
                    r.gateway.map(|g| g.to_string()).unwrap_or_default()
                )),
                (Ok(_), Err(e)) => Err(e.clone()),
                (Ok(r), Ok(n)) => {
                    let hop = r.next_hop(*addr);
                    match n.get(&hop) {
                        Some(mac) => Ok(*mac),
                        None => {
                            trigger(hop);
                            Err(format!("no neighbour entry for {hop} yet (resolving)"))
                        }
                    }
                }
            };
            out.insert(*addr, result);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_routes_on_link_and_via_a_router() {
        let r = parse_route(r#"[{"dst":"198.18.0.11","dev":"eth0","prefsrc":"198.18.0.2","flags":[],"uid":0,"cache":[]}]"#).unwrap();
        assert_eq!(
            r,
            Route {
                gateway: None,
                dev: "eth0".into()
            }
        );
        let r = parse_route(
            r#"[{"dst":"203.0.113.5","gateway":"198.18.0.254","dev":"eth1","flags":[]}]"#,
        )
        .unwrap();
        assert_eq!(
            r.next_hop("203.0.113.5".parse().unwrap()),
            "198.18.0.254".parse::<IpAddr>().unwrap()
        );
        assert!(parse_route("[]").is_err());
        assert!(parse_route("not json").is_err());
    }

    #[test]
    fn a_batch_maps_answers_and_errors_back_to_their_commands() {
        let stdout = concat!(
            r#"[{"dst":"198.18.0.11","dev":"eth0","flags":[]}]"#,
            "\n",
            r#"[{"dst":"198.18.9.9","gateway":"198.18.0.254","dev":"eth0","flags":[]}]"#,
            "\n"
        );
        let stderr = "RTNETLINK answers: Network is unreachable\nCommand failed -:2\n";
        let r = parse_batch(3, stdout, stderr);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].as_ref().unwrap().gateway, None);
        assert_eq!(
            r[1].as_ref().unwrap_err(),
            "RTNETLINK answers: Network is unreachable"
        );
        assert_eq!(
            r[2].as_ref().unwrap().gateway,
            Some("198.18.0.254".parse().unwrap())
        );
        // Fewer answers than commands (ip died): the rest are errors, not misattributed.
        let r = parse_batch(3, "", "");
        assert!(r.iter().all(Result::is_err));
    }

    #[test]
    fn the_real_ip_answers_a_batch_in_order() {
        let r = routes_get(&["127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap()]);
        if r.iter()
            .any(|r| r.as_ref().is_err_and(|e| e.starts_with("running ip")))
        {
            eprintln!("skipped: no `ip` here ({r:?})");
            return;
        }
        assert_eq!(r.len(), 2);
        for r in r {
            assert_eq!(r.unwrap().dev, "lo");
        }
    }

    #[test]
    fn parses_neighbours_and_skips_unresolved_ones() {
        let text = r#"[
            {"dst":"198.18.0.11","dev":"eth0","lladdr":"02:be:00:00:00:0b","state":["REACHABLE"]},
            {"dst":"198.18.0.12","dev":"eth0","state":["FAILED"]},
            {"dst":"198.18.0.13","dev":"eth0","lladdr":"02:be:00:00:00:0d","state":["INCOMPLETE"]},
            {"dst":"fd00::11","dev":"eth0","lladdr":"02:be:00:00:00:11","router":null,"state":["STALE"]}
        ]"#;
        let n = parse_neighbours(text).unwrap();
        assert_eq!(n.len(), 2);
        assert_eq!(
            n[&"198.18.0.11".parse::<IpAddr>().unwrap()],
            [2, 0xbe, 0, 0, 0, 11]
        );
        assert!(n.contains_key(&"fd00::11".parse::<IpAddr>().unwrap()));
        assert_eq!(parse_mac("02:be:00:00:00"), None);
        assert_eq!(parse_mac("02:be:00:00:00:0b:01"), None);
    }
}
