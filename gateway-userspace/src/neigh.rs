//! L2 next hops of backends, from the kernel's routing and neighbour tables (`ip -j route
//! get`, `ip -j neigh show`). XDP_TX sends a frame back out of the interface it came in
//! on, so a backend is usable only if its route leaves through that interface: directly
//! (l2dsr needs this: the backend must be on the same segment) or via a router (ipip).
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr, UdpSocket},
    process::Command,
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

/// The kernel's route to `addr`.
pub fn route_get(addr: IpAddr) -> Result<Route, String> {
    let text = ip_json(&["route", "get", &addr.to_string()])?;
    parse_route(&text)
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
        let mut out = HashMap::new();
        for (addr, on_link_only) in backends {
            let route = self
                .routes
                .entry(*addr)
                .or_insert_with(|| route_get(*addr))
                .clone();
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
