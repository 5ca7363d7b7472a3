//! A loaded (not attached) data plane with services and backends written through the
//! production path (Maglev tables, `sync::diff`, `sync::apply`), and a way to run frames
//! through it with BPF_PROG_TEST_RUN.
#![allow(dead_code)]

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use aya::programs::{TestRun, TestRunOptions};
use gateway::{
    dataplane::{Dataplane, LoadOptions},
    maglev,
    sync::{self, Applied, Desired, DesiredService},
};
use gateway_common::{BACKEND_UP, Backend, FlowKey, ServiceKey, Settings, hash::flow_hash};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

#[derive(Debug, Clone)]
pub struct Be {
    pub addr: IpAddr,
    pub mac: [u8; 6],
    pub state: u8,
    pub weight: u32,
}

pub fn be(addr: IpAddr, last: u8) -> Be {
    Be {
        addr,
        mac: [0x02, 0xbe, 0, 0, 0, last],
        state: BACKEND_UP,
        weight: 1,
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
}

pub use gateway::plan::{addr16, family};

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
    /// Backend ids per (service index, address): a backend's state is per service.
    pub ids: BTreeMap<(usize, IpAddr), u32>,
    pub tables: BTreeMap<ServiceKey, Arc<Vec<u32>>>,
    pub settings: Settings,
}

pub const TEST_LOAD: LoadOptions = LoadOptions {
    conntrack_size: 65536,
    max_services: 16,
    max_table_size: 65537,
    kernel_log: 0,
};

impl World {
    pub fn new(services: &[Svc], settings: Settings) -> World {
        let dp = Dataplane::load(TEST_LOAD).expect("load the XDP object");
        let mut w = World {
            dp,
            applied: Applied::default(),
            ids: BTreeMap::new(),
            tables: BTreeMap::new(),
            settings,
        };
        w.set(services);
        w
    }

    /// Makes the maps describe `services` (diff and apply, as the agent does).
    pub fn set(&mut self, services: &[Svc]) {
        let mut d = Desired {
            settings: self.settings,
            ..Desired::default()
        };
        for (i, s) in services.iter().enumerate() {
            let mut entries = Vec::new();
            for b in &s.backends {
                let next = self.ids.len() as u32 + 1;
                let id = *self.ids.entry((i, b.addr)).or_insert(next);
                d.backends.insert(
                    id,
                    Backend {
                        addr: addr16(b.addr),
                        mac: b.mac,
                        family: family(b.addr),
                        state: b.state,
                        service: i as u32,
                        _pad: 0,
                    },
                );
                if b.state == BACKEND_UP {
                    entries.push(maglev::Entry {
                        key: addr16(b.addr),
                        id,
                        weight: b.weight,
                    });
                }
            }
            let table = Arc::new(maglev::build(&entries, s.table_size));
            self.tables.insert(service_key(s), table.clone());
            d.services
                .insert(service_key(s), DesiredService::new(i as u32, s.mode, table));
        }
        let (ops, next) = sync::diff(&self.applied, &d, TEST_LOAD.layout()).expect("diff");
        sync::apply(&ops, &mut self.dp).expect("apply");
        self.applied = next;
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

    /// The backend id the table places `key` on (what the kernel must choose for a new flow).
    pub fn placed(&self, svc: &Svc, key: &FlowKey) -> u32 {
        let t = &self.tables[&service_key(svc)];
        t[(flow_hash(key) % t.len() as u32) as usize]
    }

    /// The id of `addr` in the first service.
    pub fn id(&self, addr: IpAddr) -> u32 {
        self.id_in(0, addr)
    }

    pub fn id_in(&self, service: usize, addr: IpAddr) -> u32 {
        self.ids[&(service, addr)]
    }
}
