//! `cargo xtask bench sync`: from a probe verdict to the maps updated. The agent's path for a
//! health change - `plan` (a new Maglev table), `diff`, `apply` into a loaded program's maps -
//! timed for one backend flipping down and up, on a 65537-slot table.
//!
//! Output: a Markdown table on stdout, also written to `$GATEWAY_BENCH_OUT` if set.
use std::{fmt::Write as _, path::Path, time::Instant};

use gateway::{
    agent::load_options,
    config::Config,
    dataplane::Dataplane,
    mapsync,
    model::{Applied, BackendKey},
    plan::{self, Ids, TableCache},
};

const FLIPS: usize = 101;

fn config(backends: usize) -> Config {
    let mut text = String::from(
        "[dataplane]\ninterface = \"eth0\"\n\n[[service]]\nname = \"web\"\nvip = \"198.18.1.1\"\n\
         port = 80\nprotocol = \"tcp\"\nmode = \"l2dsr\"\n",
    );
    for i in 0..backends {
        text += &format!(
            "\n[[service.backend]]\naddress = \"198.18.{}.{}\"\n",
            10 + i / 200,
            1 + i % 200
        );
    }
    Config::parse(&text, Path::new("bench.toml")).expect("bench config")
}

fn main() {
    if !lab::is_root() {
        eprintln!(
            "bench sync: needs root (loads the XDP program); run `cargo xtask bench sync` as root"
        );
        std::process::exit(1);
    }
    let mut md = String::from(
        "| backends | table slots | median us | p90 us | max us | target |\n|---|---|---|---|---|---|\n",
    );
    for n in [3usize, 100, 1000] {
        let c = config(n);
        let mut dp = Dataplane::load(load_options(&c)).expect("load");
        let mut facts = plan::assume_all_up(&c);
        let mut ids = Ids::default();
        let mut tables = TableCache::default();
        let mut applied = Applied::default();
        let layout = dp.options().layout();
        let first = c.services[0].backends[0].address;
        let mut times = Vec::new();
        for i in 0..FLIPS {
            facts.get_mut(&BackendKey::new("web", first)).unwrap().up = i % 2 == 1;
            let t = Instant::now();
            let p = plan::plan(
                &c,
                &facts,
                &plan::Host::default(),
                &mut ids,
                &mut tables,
                std::time::Duration::ZERO,
            );
            let (ops, next) = mapsync::diff(&applied, &p.desired, layout).expect("diff");
            mapsync::apply(&ops, &mut dp).expect("apply");
            applied = next;
            if i > 0 {
                times.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let med = times[times.len() / 2];
        let p90 = times[times.len() * 9 / 10];
        let max = times[times.len() - 1];
        let target = if med < 5000.0 {
            "< 5 ms (met)"
        } else {
            "< 5 ms (MISSED)"
        };
        writeln!(
            md,
            "| {n} | 65537 | {med:.0} | {p90:.0} | {max:.0} | {target} |"
        )
        .unwrap();
    }
    writeln!(md, "\n{} health flips per row (one backend down, then up again); each timed from the verdict to the last map write: `plan` (new Maglev table), `diff`, `apply` (table written through the mmapped TABLES map, then the service entry flipped).", FLIPS - 1).unwrap();
    print!("{md}");
    if let Ok(path) = std::env::var("GATEWAY_BENCH_OUT") {
        std::fs::write(&path, &md).expect("write bench output");
    }
}
