//! A loaded (not attached) data plane whose maps are filled by the production path: a real
//! `Config` (parsed from the text an operator would write), facts standing in for health
//! checks and neighbour lookups, `plan::plan`, then `mapsync::diff` and `mapsync::apply`, as the
//! agent's `replan` does. Frames run through it with BPF_PROG_TEST_RUN.
#![allow(dead_code)]

use std::{fmt::Write as _, net::IpAddr, path::Path, time::Duration};

use aya::programs::{TestRun, TestRunOptions, Xdp};
use gateway::{
    config::{AdminState, Config},
    dataplane::{Dataplane, LoadOptions},
    mapsync,
    model::{Applied, BackendKey, Desired},
    plan::{self, BackendFacts, Facts, Ids, TableCache},
};
use gateway_common::{
    FlowKey, MODE_FULLNAT, MODE_IPIP, MODE_L2DSR, PROTO_TCP, PROTO_UDP, ServiceKey, Settings,
    hash::{flow_hash, slot_of},
};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// A backend as the planner sees it: its config (weight, admin state) and its facts (probe
/// verdict, next-hop MAC).
#[derive(Debug, Clone)]
pub struct Be {
    pub addr: IpAddr,
    /// The L2 next hop the neighbour lookup would give.
    pub mac: [u8; 6],
    pub weight: u32,
    pub admin: AdminState,
    /// The health checks' verdict.
    pub up: bool,
}

/// A ready, healthy backend of weight 1.
pub fn be(addr: IpAddr, last: u8) -> Be {
    Be {
        addr,
        mac: [0x02, 0xbe, 0, 0, 0, last],
        weight: 1,
        admin: AdminState::Ready,
        up: true,
    }
}

#[derive(Debug, Clone)]
pub struct Svc {
    pub vip: IpAddr,
    pub port: u16,
    pub proto: u8,
    pub mode: u8,
    pub table_size: u32,
    pub backends: Vec<Be>,
    /// `[service.protection]`'s keys (`mode = "enforce"`, ...), if any.
    pub protection: Option<String>,
}

pub use gateway::model::{addr16, family};

pub fn service_key(s: &Svc) -> ServiceKey {
    ServiceKey {
        addr: addr16(s.vip),
        port_be: s.port.to_be(),
        proto: s.proto,
        family: family(s.vip),
    }
}

pub fn flow_key(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, proto: u8) -> FlowKey {
    FlowKey {
        src: addr16(src),
        dst: addr16(dst),
        sport_be: sport.to_be(),
        dport_be: dport.to_be(),
        proto,
        family: family(dst),
        _pad: [0; 2],
    }
}

pub struct World {
    pub dp: Dataplane,
    pub applied: Applied,
    /// The planner's ids, kept from one `set` to the next as the agent keeps them.
    pub ids: Ids,
    tables: TableCache,
    /// What the last `set` planned (its tables say where new flows go).
    pub desired: Desired,
    pub settings: Settings,
    /// Extra `[protection]` keys (see `config_text`).
    pub protection: String,
    /// Extra `[dataplane]` keys (the SNAT pool).
    pub dataplane: String,
}

pub const TEST_LOAD: LoadOptions = LoadOptions {
    conntrack_size: 65536,
    max_services: 16,
    max_table_size: 65537,
    kernel_log: 0,
    sources_size: gateway_common::DEFAULT_SOURCES_SIZE,
    nat_size: 4096,
};

/// Service `i` of a world is named `s{i}`: ids follow a service by name, so a test's
/// services keep their ids across `set` as long as they keep their place in the list.
fn service_name(i: usize) -> String {
    format!("s{i}")
}

/// The balancer host's own addresses in the golden world: no client uses them.
pub const HOST_ADDRESSES: [&str; 2] = ["198.18.0.250", "fd00::250"];

/// The config text an operator would write for `services` and `settings`.
/// `protection` holds extra `[protection]` keys (the allowlist, default limits); the flood
/// guard's rate is the one `settings.flood_window_limit` comes from.
pub fn config_text(
    services: &[Svc],
    settings: &Settings,
    protection: &str,
    dataplane: &str,
) -> String {
    let mut t = String::new();
    let d = |t: &mut String, line: String| writeln!(t, "{line}").unwrap();
    d(&mut t, "[dataplane]".into());
    d(&mut t, dataplane.to_string());
    d(&mut t, "interface = \"lo\"".into());
    d(
        &mut t,
        format!("conntrack_size = {}", TEST_LOAD.conntrack_size),
    );
    d(&mut t, format!("max_services = {}", TEST_LOAD.max_services));
    d(
        &mut t,
        format!("max_table_size = {}", TEST_LOAD.max_table_size),
    );
    d(&mut t, format!("mtu = {}", settings.mtu));
    if settings.ipip_src_v4 != [0; 4] {
        let a = std::net::Ipv4Addr::from(settings.ipip_src_v4);
        d(&mut t, format!("ipip_source_v4 = \"{a}\""));
    }
    let bits = settings.ipip_src_v4_vary_bits;
    d(&mut t, format!("ipip_source_v4_vary_bits = {bits}"));
    if settings.ipip_src_v6 != [0; 16] {
        let a = std::net::Ipv6Addr::from(settings.ipip_src_v6);
        d(&mut t, format!("ipip_source_v6 = \"{a}\""));
    }
    let skipped: Vec<String> = gateway_common::CHECK_NAMES
        .iter()
        .filter(|(bit, _)| settings.checks_off & bit != 0)
        .map(|(_, name)| format!("\"{name}\""))
        .collect();
    d(&mut t, format!("skip_checks = [{}]", skipped.join(", ")));
    let macs: Vec<String> = settings
        .macs
        .iter()
        .skip(1)
        .filter(|m| **m != [0; 6])
        .map(|m| format!("\"{}\"", gateway::agent::fmt_mac(m)))
        .collect();
    d(&mut t, format!("extra_macs = [{}]", macs.join(", ")));
    d(&mut t, "[protection]".into());
    let window = 1u64 << gateway_common::FLOOD_WINDOW_SHIFT;
    let flood = (u64::from(settings.flood_window_limit) * 1_000_000_000).div_ceil(window);
    d(&mut t, format!("flood_new_flows_per_cpu = {flood}"));
    let nat = (u64::from(settings.nat_flood_window_limit) * 1_000_000_000).div_ceil(window);
    d(&mut t, format!("fullnat_new_flows_per_cpu = {nat}"));
    d(&mut t, protection.to_string());
    for (i, s) in services.iter().enumerate() {
        let protocol = match s.proto {
            PROTO_TCP => "tcp",
            PROTO_UDP => "udp",
            p => panic!("protocol {p}"),
        };
        let mode = match s.mode {
            MODE_L2DSR => "l2dsr",
            MODE_IPIP => "ipip",
            MODE_FULLNAT => "fullnat",
            m => panic!("mode {m}"),
        };
        d(&mut t, "[[service]]".into());
        d(&mut t, format!("name = \"{}\"", service_name(i)));
        d(&mut t, format!("vip = \"{}\"", s.vip));
        d(&mut t, format!("port = {}", s.port));
        d(&mut t, format!("protocol = \"{protocol}\""));
        d(&mut t, format!("mode = \"{mode}\""));
        d(&mut t, format!("table_size = {}", s.table_size));
        d(&mut t, "health = { kind = \"none\" }".into());
        if let Some(p) = &s.protection {
            d(&mut t, format!("protection = {{ {p} }}"));
        }
        for b in &s.backends {
            let state = match b.admin {
                AdminState::Ready => "ready",
                AdminState::Drain => "drain",
                AdminState::Maint => "maint",
            };
            d(&mut t, "[[service.backend]]".into());
            d(&mut t, format!("address = \"{}\"", b.addr));
            d(&mut t, format!("weight = {}", b.weight));
            d(&mut t, format!("state = \"{state}\""));
        }
    }
    t
}

/// What the health checks and neighbour lookups would report for `services`.
pub fn facts(services: &[Svc]) -> Facts {
    let mut f = Facts::new();
    for (i, s) in services.iter().enumerate() {
        for b in &s.backends {
            f.insert(
                BackendKey::new(service_name(i), b.addr),
                BackendFacts {
                    up: b.up,
                    up_since: None,
                    mac: Ok(b.mac),
                },
            );
        }
    }
    f
}

impl World {
    pub fn new(services: &[Svc], settings: Settings) -> World {
        World::with_object(services, settings, gateway::object::GATEWAY)
    }

    /// A world running another build of the program (`gateway::object`).
    pub fn with_object(services: &[Svc], settings: Settings, object: &[u8]) -> World {
        World::with_load(services, settings, object, TEST_LOAD)
    }

    /// A world with other map sizes (`load.max_services` and `max_table_size` must stay
    /// `TEST_LOAD`'s: the config text names those).
    pub fn with_load(
        services: &[Svc],
        settings: Settings,
        object: &[u8],
        load: LoadOptions,
    ) -> World {
        World::with_dataplane(services, settings, object, load, "")
    }

    /// A world whose config has extra `[dataplane]` keys (`snat_v4 = [...]`).
    pub fn with_dataplane(
        services: &[Svc],
        settings: Settings,
        object: &[u8],
        load: LoadOptions,
        dataplane: &str,
    ) -> World {
        let dp = Dataplane::load_object(load, object).expect("load the XDP object");
        let mut w = World {
            dp,
            applied: Applied::default(),
            ids: Ids::default(),
            tables: TableCache::default(),
            desired: Desired::default(),
            settings,
            protection: String::new(),
            dataplane: dataplane.to_string(),
        };
        w.set(services);
        w
    }

    /// Makes the maps describe `services`: config, plan, diff and apply, as the agent does.
    pub fn set(&mut self, services: &[Svc]) {
        let text = config_text(services, &self.settings, &self.protection, &self.dataplane);
        let config =
            Config::parse(&text, Path::new("world.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let p = plan::plan(
            &config,
            &facts(services),
            &plan::Host {
                interface_mac: Some(self.settings.macs[0]).filter(|m| *m != [0; 6]),
                addresses: HOST_ADDRESSES.iter().map(|a| a.parse().unwrap()).collect(),
                snat_draining: Vec::new(),
            },
            &mut self.ids,
            &mut self.tables,
            Duration::ZERO,
        );
        assert_eq!(
            p.desired.settings, self.settings,
            "settings through the config"
        );
        let (ops, next) =
            mapsync::diff(&self.applied, &p.desired, TEST_LOAD.layout()).expect("diff");
        mapsync::apply(&ops, &mut self.dp).expect("apply");
        self.applied = next;
        self.desired = p.desired;
    }

    /// Runs one frame: (verdict, output frame).
    pub fn run(&self, input: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; 4096];
        let prog = self.dp.program().expect("program");
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut out),
                repeat: 1,
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    pub fn stats(&self) -> Vec<u64> {
        self.dp.global_stats().expect("stats")
    }

    /// The backend id the planned table places `key` on (what the kernel must choose for a
    /// new flow).
    pub fn placed(&self, svc: &Svc, key: &FlowKey) -> u32 {
        let t = &self.desired.services[&service_key(svc)].table;
        t[slot_of(flow_hash(key), t.len() as u32) as usize]
    }

    /// The slot of `svc`'s active table that `key` hashes to, as the kernel holds it.
    pub fn slot(&self, svc: &Svc, key: &FlowKey) -> gateway_common::Slot {
        let v = self.applied.services[&service_key(svc)].value;
        let at = v.table_offset + slot_of(flow_hash(key), v.table_size);
        self.dp.read_table(at, 1)[0]
    }

    /// Settles `svc`'s changed slots that have been idle for `idle` seconds, as the agent's
    /// periodic pass does.
    pub fn settle(&mut self, svc: &Svc, idle: u32) -> gateway::model::SlotCounts {
        let v = self.applied.services[&service_key(svc)].value;
        mapsync::MapWriter::settle_slots(&mut self.dp, v.table_offset, v.table_size, idle)
            .expect("settle")
    }

    /// The id of `addr` in the first service.
    pub fn id(&self, addr: IpAddr) -> u32 {
        self.id_in(0, addr)
    }

    pub fn id_in(&self, service: usize, addr: IpAddr) -> u32 {
        self.ids
            .backend_id(&service_name(service), addr)
            .unwrap_or_else(|| panic!("no id for {addr} in service {service}"))
    }
}

/// One BPF_PROG_TEST_RUN of `p` on `frame` (`repeat = 1`: with more the kernel reruns the
/// program on the already-rewritten buffer): the verdict and the kernel's duration.
pub fn run_once(p: &Xdp, frame: &[u8], out: &mut [u8]) -> (u32, Duration) {
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(out),
            repeat: 1,
            ..Default::default()
        })
        .expect("test run");
    (r.return_value, r.duration)
}

/// Settings with every packet check on, an MTU of 1500, no encapsulation sources,
/// no MACs and no flood guard: for worlds that test something else.
pub fn plain_settings() -> Settings {
    Settings {
        mtu: 1500,
        ..Settings::default()
    }
}
