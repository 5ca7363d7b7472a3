//! Announcing the VIPs over BGP through BIRD 2 (`[bgp]`): what to announce, when, and how
//! BIRD is told.
//!
//! BIRD runs beside the agent (its own systemd unit, or the lab's namespace) with the
//! configuration this module writes: `bird.conf` holds the BGP sessions and includes
//! `vips.conf`, which holds one static route per announced VIP. A change of VIPs rewrites
//! only `vips.conf` and asks BIRD to reread its configuration over the control socket
//! (`configure`): BIRD diffs its static routes and sends the updates without restarting a
//! session. A restarted agent writes the same files, so a hitless restart changes nothing
//! the routers see.
//!
//! Whether a VIP may be announced is the agent's call: the program forwards, the maps are
//! synced, every backend has been checked since a fresh start, and the VIP has a usable
//! backend. [`Announcer`] damps that with `announce_after` and `withdraw_after`; the
//! [`Speaker`] writes the files and talks to BIRD, on its own thread ([`worker`]) so that
//! a slow BIRD never holds up the agent's loop.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::config::{BgpConfig, Community, Config};

pub mod bird;
pub mod guard;
pub mod worker;

/// The files of one balancer's BIRD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub dir: PathBuf,
    /// `bird -c`.
    pub conf: PathBuf,
    /// The static routes `bird.conf` includes.
    pub vips: PathBuf,
    /// `bird -s`.
    pub socket: PathBuf,
}

impl Paths {
    pub fn new(bgp: &BgpConfig, interface: &str) -> Paths {
        let dir = bgp
            .bird_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/run/gateway/bird-{interface}")));
        Paths {
            conf: dir.join("bird.conf"),
            vips: dir.join("vips.conf"),
            socket: bgp
                .bird_socket
                .clone()
                .unwrap_or_else(|| dir.join("bird.ctl")),
            dir,
        }
    }
}

/// A VIP's route, or a SNAT address's: the attributes its services give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub vip: IpAddr,
    /// `[bgp] communities`, then the services' own, without repeats.
    pub communities: Vec<Community>,
    pub med: Option<u32>,
    /// A full-NAT SNAT address (`[dataplane] snat_v4` / `snat_v6`, with `[bgp]
    /// announce_snat`), not a VIP: servable while the data plane forwards, whatever the
    /// backends, since it carries the answers of flows this balancer already mapped.
    pub snat: bool,
}

/// Every VIP of the config with its route's attributes, and the SNAT addresses when they
/// are announced (empty without `[bgp]`).
pub fn routes(config: &Config) -> BTreeMap<IpAddr, Route> {
    let mut out: BTreeMap<IpAddr, Route> = BTreeMap::new();
    let Some(bgp) = &config.bgp else {
        return out;
    };
    if bgp.announce_snat {
        for a in config.dataplane.snat_addrs() {
            out.insert(
                a,
                Route {
                    vip: a,
                    communities: bgp.communities.clone(),
                    med: None,
                    snat: true,
                },
            );
        }
    }
    for s in &config.services {
        let r = out.entry(s.vip).or_insert_with(|| Route {
            vip: s.vip,
            communities: bgp.communities.clone(),
            med: s.med,
            snat: false,
        });
        for c in &s.communities {
            if !r.communities.contains(c) {
                r.communities.push(*c);
            }
        }
    }
    out
}

/// The static protocols' names: the BGP sessions export only what they hold.
const STATIC_V4: &str = "gateway_vips4";
const STATIC_V6: &str = "gateway_vips6";

/// `bird.conf`: the router id, one BGP session per neighbor exporting the VIP routes of its
/// family (and of the other family where a next hop for it is set), importing nothing.
pub fn bird_conf(bgp: &BgpConfig, paths: &Paths) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(
        w,
        "# Written by gateway from its config ([bgp]); edits are overwritten.\n\
         router id {};\n\
         log stderr all;\n\n\
         protocol device {{ }}\n\n\
         include \"{}\";\n",
        bgp.router_id,
        paths.vips.display()
    );
    for (i, n) in bgp.neighbors.iter().enumerate() {
        let _ = writeln!(w, "protocol bgp neighbor{} {{", i + 1);
        let _ = writeln!(w, "  local as {};", bgp.local_as);
        let _ = writeln!(w, "  neighbor {} as {};", n.address, n.asn);
        if let Some(p) = &n.password {
            let _ = writeln!(w, "  password \"{p}\";");
        }
        let _ = writeln!(w, "  hold time {};", n.hold_time.as_secs());
        let _ = writeln!(w, "  keepalive time {};", n.keepalive.as_secs());
        // A refused or reset session is retried within seconds, not BIRD's minutes.
        let _ = writeln!(w, "  connect retry time 2;\n  error wait time 1, 10;");
        let v4 = n.address.is_ipv4() || bgp.next_hop_v4.is_some();
        let v6 = n.address.is_ipv6() || bgp.next_hop_v6.is_some();
        let channels = [
            ("ipv4", v4, STATIC_V4, bgp.next_hop_v4.map(IpAddr::V4)),
            ("ipv6", v6, STATIC_V6, bgp.next_hop_v6.map(IpAddr::V6)),
        ];
        for (family, on, proto, hop) in channels {
            if !on {
                continue;
            }
            let hop = match hop {
                Some(a) => format!("next hop address {a}"),
                None => "next hop self".to_string(),
            };
            let _ = writeln!(
                w,
                "  {family} {{ import none; export where proto = \"{proto}\"; {hop}; }};"
            );
        }
        let _ = writeln!(w, "}}\n");
    }
    s
}

/// `vips.conf`: a static protocol per family with one route per announced VIP, carrying
/// its communities and MED. BIRD rereads it on `configure` without touching the sessions.
pub fn vips_conf<'a>(announced: impl IntoIterator<Item = &'a Route>) -> String {
    let (mut v4, mut v6) = (String::new(), String::new());
    for r in announced {
        let (out, len) = match r.vip {
            IpAddr::V4(_) => (&mut v4, 32),
            IpAddr::V6(_) => (&mut v6, 128),
        };
        let mut attrs = String::new();
        for c in &r.communities {
            let _ = match c {
                Community::Standard(a, b) => write!(attrs, " bgp_community.add(({a},{b}));"),
                Community::Large(a, b, c) => {
                    write!(attrs, " bgp_large_community.add(({a},{b},{c}));")
                }
            };
        }
        if let Some(m) = r.med {
            let _ = write!(attrs, " bgp_med = {m};");
        }
        let _ = writeln!(out, "  route {}/{len} blackhole {{{attrs} }};", r.vip);
    }
    format!(
        "# Written by gateway: the VIPs it announces. Edits are overwritten.\n\
         protocol static {STATIC_V4} {{\n  ipv4;\n{v4}}}\n\n\
         protocol static {STATIC_V6} {{\n  ipv6;\n{v6}}}\n"
    )
}

/// The VIPs a `vips.conf` written by [`vips_conf`] announces: what BIRD was last told, read
/// back by a restarted agent so that it does not withdraw and re-announce them.
pub fn announced_in(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("route "))
        .filter_map(|l| l.split('/').next()?.parse().ok())
        .collect()
}

/// Why a VIP may not be announced (the announcer's input, per VIP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unservable {
    /// No service on the VIP has a usable backend.
    NoBackend,
    /// The maps could not be written (the data plane may not match the config).
    NotSynced,
    /// The program cannot forward: the interface is down, or the program detached.
    DataPlaneGone,
    /// The agent started on fresh maps and has not heard every backend's first verdict:
    /// its table may still differ from the other balancers'.
    NotChecked,
}

impl Unservable {
    pub fn as_str(self) -> &'static str {
        match self {
            Unservable::NoBackend => "no usable backend",
            Unservable::NotSynced => "maps not synced",
            Unservable::DataPlaneGone => "data plane gone (interface down or program detached)",
            Unservable::NotChecked => "backends not checked yet",
        }
    }
}

/// One VIP as the announcer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VipState {
    pub announced: bool,
    /// `Ok` while servable; since `since`.
    pub servable: Result<(), Unservable>,
    pub since: Instant,
}

/// Decides which VIPs are announced, with hysteresis: a VIP is announced once it has been
/// servable for `announce_after`, withdrawn once unservable for `withdraw_after`.
#[derive(Debug, Clone)]
pub struct Announcer {
    pub announce_after: Duration,
    pub withdraw_after: Duration,
    vips: BTreeMap<IpAddr, VipState>,
}

impl Announcer {
    /// `already`: VIPs BIRD announces now (from the last `vips.conf`); they stay announced
    /// until the first update says otherwise, and are not delayed by `announce_after`.
    pub fn new(bgp: &BgpConfig, already: &[IpAddr], now: Instant) -> Announcer {
        let vips = already
            .iter()
            .map(|v| {
                let s = VipState {
                    announced: true,
                    servable: Ok(()),
                    since: now,
                };
                (*v, s)
            })
            .collect();
        Announcer {
            announce_after: bgp.announce_after,
            withdraw_after: bgp.withdraw_after,
            vips,
        }
    }

    /// Takes each VIP's servability now; returns whether the announced set changed. VIPs
    /// no longer in `servable` are withdrawn at once (their services were removed).
    pub fn update(
        &mut self,
        servable: &BTreeMap<IpAddr, Result<(), Unservable>>,
        now: Instant,
    ) -> bool {
        let before: Vec<IpAddr> = self.announced().collect();
        self.vips.retain(|v, _| servable.contains_key(v));
        for (vip, s) in servable {
            let st = self.vips.entry(*vip).or_insert(VipState {
                announced: false,
                servable: *s,
                since: now,
            });
            if st.servable.is_ok() != s.is_ok() {
                st.since = now;
            }
            st.servable = *s;
            let held = now.saturating_duration_since(st.since);
            match (st.announced, s.is_ok()) {
                (false, true) if held >= self.announce_after => st.announced = true,
                (true, false) if held >= self.withdraw_after => st.announced = false,
                _ => {}
            }
        }
        let after: Vec<IpAddr> = self.announced().collect();
        before != after
    }

    /// When an update could next change something (a VIP's hold ends).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.vips
            .values()
            .filter_map(|s| match (s.announced, s.servable.is_ok()) {
                (false, true) => Some(s.since + self.announce_after),
                (true, false) => Some(s.since + self.withdraw_after),
                _ => None,
            })
            .min()
    }

    pub fn announced(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.vips
            .iter()
            .filter(|(_, s)| s.announced)
            .map(|(v, _)| *v)
    }

    pub fn states(&self) -> &BTreeMap<IpAddr, VipState> {
        &self.vips
    }
}

/// How long a command to BIRD may take (a `configure` of these files takes BIRD a few
/// milliseconds); a timed-out command is counted and sent again, which BIRD takes calmly.
const BIRD_TIMEOUT: Duration = Duration::from_millis(250);

/// The agent's side of BGP: the announcer, the files BIRD reads, and what BIRD was told.
#[derive(Debug)]
pub struct Speaker {
    pub paths: Paths,
    pub announcer: Announcer,
    routes: BTreeMap<IpAddr, Route>,
    /// The `bird.conf` and `vips.conf` last written and accepted by BIRD (`None`: not yet,
    /// or BIRD has not confirmed them).
    told: Option<(String, String)>,
    /// Failed writes or BIRD commands (for metrics), and the last one's message.
    pub errors: u64,
    pub last_error: Option<String>,
}

impl Speaker {
    /// For `config` (which has `[bgp]`); VIPs in an existing `vips.conf` count as
    /// announced, so a restarted agent neither withdraws nor delays them.
    pub fn new(config: &Config, now: Instant) -> Option<Speaker> {
        let bgp = config.bgp.as_ref()?;
        let paths = Paths::new(bgp, &config.dataplane.interface);
        let already = std::fs::read_to_string(&paths.vips)
            .map(|t| announced_in(&t))
            .unwrap_or_default();
        Some(Speaker {
            announcer: Announcer::new(bgp, &already, now),
            routes: routes(config),
            paths,
            told: None,
            errors: 0,
            last_error: None,
        })
    }

    /// A reloaded config: new routes and timers (the announcer keeps its VIPs' state).
    pub fn reconfigure(&mut self, config: &Config) {
        if let Some(bgp) = &config.bgp {
            self.paths = Paths::new(bgp, &config.dataplane.interface);
            self.announcer.announce_after = bgp.announce_after;
            self.announcer.withdraw_after = bgp.withdraw_after;
        }
        self.routes = routes(config);
    }

    /// Takes each VIP's servability now and, if what BIRD should announce differs from
    /// what it was told, writes the files and asks BIRD to reread them. Returns the
    /// announced VIPs when BIRD was told something new.
    pub fn update(
        &mut self,
        bgp: &BgpConfig,
        servable: &BTreeMap<IpAddr, Result<(), Unservable>>,
        now: Instant,
    ) -> Result<Option<Vec<IpAddr>>, SpeakerError> {
        self.announcer.update(servable, now);
        let announced: Vec<IpAddr> = self.announcer.announced().collect();
        let conf = bird_conf(bgp, &self.paths);
        // An address the agent calls servable that the config does not name is a SNAT
        // address still draining (`agent::nat`): a SNAT route.
        let routes: Vec<Route> = announced
            .iter()
            .map(|v| {
                self.routes.get(v).cloned().unwrap_or_else(|| Route {
                    vip: *v,
                    communities: bgp.communities.clone(),
                    med: None,
                    snat: true,
                })
            })
            .collect();
        let vips = vips_conf(&routes);
        if self.told.as_ref() == Some(&(conf.clone(), vips.clone())) {
            return Ok(None);
        }
        let result = self.tell(&conf, &vips);
        match &result {
            Ok(()) => {
                self.told = Some((conf, vips));
                self.last_error = None;
            }
            Err(e) => {
                self.errors += 1;
                self.last_error = Some(crate::error::Chain(e).to_string());
            }
        }
        result.map(|()| Some(announced))
    }

    /// Asks BIRD whether it is up (`show status`) when it was told everything: a BIRD that
    /// died is noticed and counted, and told everything again once it answers.
    pub fn heartbeat(&mut self) -> Result<(), SpeakerError> {
        let Some((_, vips)) = &self.told else {
            return Ok(());
        };
        // Rewritten by someone else (`gateway bgp-guard` while this agent hung): tell again.
        if std::fs::read_to_string(&self.paths.vips).ok().as_ref() != Some(vips) {
            self.told = None;
            return Ok(());
        }
        if let Err(e) = bird::command(&self.paths.socket, "show status", BIRD_TIMEOUT) {
            let e = SpeakerError::from(e);
            self.told = None;
            self.errors += 1;
            self.last_error = Some(crate::error::Chain(&e).to_string());
            return Err(e);
        }
        Ok(())
    }

    /// Whether BIRD accepted the current files (and answered since).
    pub fn in_step(&self) -> bool {
        self.told.is_some()
    }

    fn tell(&self, conf: &str, vips: &str) -> Result<(), SpeakerError> {
        let write = |path: &Path, text: &str| {
            std::fs::create_dir_all(&self.paths.dir)
                .and_then(|()| write_atomically(path, text))
                .map_err(|source| SpeakerError::Write {
                    path: path.to_path_buf(),
                    source,
                })
        };
        write(&self.paths.conf, conf)?;
        write(&self.paths.vips, vips)?;
        bird::command(&self.paths.socket, "configure", BIRD_TIMEOUT)?;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("asking BIRD to reread its configuration")]
    Bird(#[from] bird::BirdError),
}

/// Writes `text` to `path` through a temporary file and a rename, so BIRD never reads half
/// a file.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests;
