//! The settings fixed when the agent starts. A reload keeps their running values until the
//! next start; this one list is what the agent copies back after a reload, what its reload
//! warning names and what `gateway check` marks as "needs a restart".
use super::types::Config;

/// One setting that only a restart changes.
pub struct LoadTime {
    /// The key as written in the file (`dataplane.conntrack_size`).
    pub key: &'static str,
    /// Why a running agent cannot change it.
    pub why: &'static str,
    /// The value as `gateway check` prints it.
    pub show: fn(&Config) -> String,
    /// Copies the running value into a freshly loaded config.
    keep: fn(&mut Config, &Config),
}

const ATTACHED: &str = "the program stays attached where it was";
const SIZED: &str = "map sizes are fixed when the program is loaded";
const LOADED: &str = "set when the program is loaded";
const LISTENING: &str = "the admin API keeps its listener and token";

/// A setting by its place in [`Config`], which is also its key in the file.
macro_rules! load_time {
    ($why:expr, $section:ident . $field:ident, $show:expr) => {
        LoadTime {
            key: concat!(stringify!($section), ".", stringify!($field)),
            why: $why,
            show: |c| $show(&c.$section.$field),
            keep: |next, running| next.$section.$field = running.$section.$field.clone(),
        }
    };
}

fn text<T: std::fmt::Display>(v: &T) -> String {
    v.to_string()
}
fn path(p: &std::path::Path) -> String {
    p.display().to_string()
}
fn opt_path(p: &Option<std::path::PathBuf>) -> String {
    p.as_deref().map_or_else(|| "none".to_string(), path)
}

impl LoadTime {
    /// Every setting fixed at start, in the order reports list them.
    pub const ALL: &[LoadTime] = &[
        load_time!(ATTACHED, dataplane.interface, text),
        load_time!(ATTACHED, dataplane.xdp_mode, text),
        load_time!(ATTACHED, dataplane.pin_dir, path),
        load_time!(SIZED, dataplane.conntrack_size, text),
        load_time!(SIZED, dataplane.max_services, text),
        load_time!(SIZED, dataplane.max_table_size, text),
        load_time!(SIZED, protection.sources_size, text),
        load_time!(SIZED, dataplane.nat_size, text),
        load_time!(LOADED, dataplane.kernel_log, text),
        load_time!(LISTENING, admin.listen, text),
        load_time!(LISTENING, admin.token_file, opt_path),
        load_time!(LISTENING, admin.token_for_reads, text),
        load_time!(LISTENING, admin.state_file, opt_path),
    ];

    /// The settings whose value differs between `running` and `next`.
    pub fn changed(running: &Config, next: &Config) -> Vec<&'static LoadTime> {
        Self::ALL
            .iter()
            .filter(|s| (s.show)(running) != (s.show)(next))
            .collect()
    }

    /// `next` with every load-time setting taken from `running`.
    pub fn keep_running(running: &Config, mut next: Config) -> Config {
        for s in Self::ALL {
            (s.keep)(&mut next, running);
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../examples/gateway.toml");

    fn example() -> Config {
        Config::parse(EXAMPLE, std::path::Path::new("x.toml")).expect("example")
    }

    #[test]
    fn every_load_time_setting_is_seen_and_kept() {
        let running = example();
        let mut next = example();
        next.dataplane.interface = "eth9".into();
        next.dataplane.xdp_mode = crate::config::XdpMode::Generic;
        next.dataplane.pin_dir = "/sys/fs/bpf/other".into();
        next.dataplane.conntrack_size += 1;
        next.dataplane.max_services += 1;
        next.dataplane.max_table_size = 7;
        next.protection.sources_size += 1;
        next.dataplane.nat_size += 1;
        next.dataplane.kernel_log = crate::config::KernelLog::Debug;
        next.admin.listen = "127.0.0.1:1".parse().unwrap();
        next.admin.token_file = Some("/etc/t".into());
        next.admin.token_for_reads = !running.admin.token_for_reads;
        next.admin.state_file = Some("/run/s".into());
        next.dataplane.mtu = 1400; // live: not listed, not kept
        let keys: Vec<&str> = LoadTime::changed(&running, &next)
            .iter()
            .map(|s| s.key)
            .collect();
        let all: Vec<&str> = LoadTime::ALL.iter().map(|s| s.key).collect();
        assert_eq!(keys, all);
        let kept = LoadTime::keep_running(&running, next);
        assert!(LoadTime::changed(&running, &kept).is_empty());
        assert_eq!(kept.dataplane.mtu, 1400);
    }
}
