//! `gateway`: the command line. It parses and dispatches; the agent is [`gateway::agent`].
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use gateway::{
    admin, agent,
    config::{Config, OnExit, XdpMode},
    pin, preview, report, sys,
};

#[derive(Parser)]
#[command(name = "gateway", version, about = "A layer-4 XDP load balancer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the XDP program, attach it and keep the data plane in step with the config.
    Run {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Overrides `xdp_mode` in the config.
        #[arg(long, value_enum)]
        xdp_mode: Option<XdpMode>,
        /// Print the global counters this often (seconds; 0 = only at exit).
        #[arg(long, default_value_t = 0)]
        stats_interval: u64,
        /// Overrides `on_exit` in the config: `keep` leaves the program attached and its
        /// state pinned for the next agent (hitless restart), `detach` removes both.
        #[arg(long, value_enum)]
        on_exit: Option<OnExit>,
    },
    /// Remove what a stopped agent left pinned: detach the program, drop its maps.
    ///
    /// Established connections are then placed again by the next agent (conntrack is gone),
    /// and until one starts, VIP traffic goes to this host's own stack. With --config and a
    /// `[bgp]` section, every VIP is first withdrawn from BIRD and `bgp.withdraw_wait`
    /// passes before the program goes.
    Stop {
        /// Required: say that the data plane should go.
        #[arg(long)]
        detach: bool,
        /// Take the pin directory from this config (`dataplane.pin_dir`, by default
        /// /sys/fs/bpf/gateway/<interface>).
        #[arg(long, short, value_name = "FILE", conflicts_with_all = ["pin_dir", "interface"])]
        config: Option<PathBuf>,
        /// The pin directory.
        #[arg(long, value_name = "DIR", conflicts_with = "interface")]
        pin_dir: Option<PathBuf>,
        /// The interface (pin directory /sys/fs/bpf/gateway/<interface>).
        #[arg(long, value_name = "IFACE")]
        interface: Option<String>,
    },
    /// Change a backend through the running agent (kept across reloads and restarts until
    /// the config file changes the same field; `gateway status` marks such values).
    #[command(subcommand)]
    Backend(BackendCommand),
    /// Make the running agent re-read its config file (as SIGHUP does), and say if it
    /// was invalid.
    Reload {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Validate a config and print its plan; with --against, what applying it would change.
    ///
    /// Every backend not in maint is assumed healthy. Needs no root and touches no kernel
    /// state; exits 1 when a config is invalid.
    Check {
        /// The configuration file to check.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// The configuration currently running, to compare against.
        #[arg(long, value_name = "RUNNING_FILE")]
        against: Option<PathBuf>,
    },
    /// Show the running agent's data plane, services and backends (from its admin API).
    Status {
        #[command(flatten)]
        api: ApiArgs,
        /// Print the raw JSON of `GET /status`.
        #[arg(long)]
        json: bool,
    },
    /// Show source limits, what they refused, and the sources over a limit now.
    Protection {
        #[command(flatten)]
        api: ApiArgs,
        /// Print the raw JSON of `GET /protection`.
        #[arg(long)]
        json: bool,
    },
    /// Show full-NAT flows: the client behind a SNAT address and port (backends see only
    /// the SNAT address).
    Nat {
        #[command(flatten)]
        api: ApiArgs,
        /// Only flows through this SNAT address, or address:port ([v6]:port).
        #[arg(long)]
        snat: Option<String>,
        /// Only flows from this client address, or address:port.
        #[arg(long)]
        client: Option<String>,
        /// Show at most this many flows (1..=10000).
        #[arg(long, default_value_t = gateway::admin::NAT_LIMIT_DEFAULT)]
        limit: usize,
        /// Print the raw JSON of `GET /nat`.
        #[arg(long)]
        json: bool,
    },
    /// Withdraw this balancer's VIPs from BIRD when its agent is gone (`[bgp]`).
    ///
    /// Runs beside BIRD: when the agent has not answered `/healthz` for `agent_grace`, or
    /// does not answer and its data plane is gone, it empties the VIP routes BIRD reads and
    /// tells BIRD. Runs until SIGINT or SIGTERM.
    BgpGuard {
        /// The agent's configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Helpers for test beds; not part of the stable interface.
    #[command(hide = true, subcommand)]
    Internal(Internal),
}

/// How to reach the running agent's admin API.
#[derive(clap::Args, Clone)]
struct ApiArgs {
    /// Where the agent's admin API listens (`[admin] listen`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9180")]
    admin: SocketAddr,
    /// A file holding the API's bearer token (`[admin] token_file`).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum BackendCommand {
    /// Take new flows again (while healthy).
    Ready(BackendArgs),
    /// Keep established flows, take no new ones.
    Drain(BackendArgs),
    /// Take nothing: established flows are placed on other backends; no health checks.
    Maint(BackendArgs),
    /// Set the backend's weight (1..=10000).
    Weight {
        #[command(flatten)]
        backend: BackendArgs,
        weight: u32,
    },
}

#[derive(clap::Args, Clone)]
struct BackendArgs {
    /// The service's name.
    service: String,
    /// The backend's address.
    addr: std::net::IpAddr,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Subcommand)]
enum Internal {
    /// Write the map-less test-bed objects (for `ip link set ... xdp obj`): xdp_pass to
    /// PASS, xdp_decap to DECAP.
    WriteObjects { pass: PathBuf, decap: PathBuf },
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            config,
            xdp_mode,
            stats_interval,
            on_exit,
        } => run(config, xdp_mode, stats_interval, on_exit),
        Command::Check { config, against } => check(config, against),
        Command::Status { api, json } => status(&api, json),
        Command::Protection { api, json } => protection(&api, json),
        Command::Nat {
            api,
            snat,
            client,
            limit,
            json,
        } => nat(&api, snat, client, limit, json),
        Command::Stop {
            detach,
            config,
            pin_dir,
            interface,
        } => stop(detach, config, pin_dir, interface),
        Command::Backend(cmd) => backend(cmd),
        Command::Reload { api } => reload(&api),
        Command::BgpGuard { config } => {
            let stop = stop_requested();
            gateway::bgp::guard::run(&config, move || {
                stop.load(std::sync::atomic::Ordering::Relaxed)
            })
        }
        Command::Internal(Internal::WriteObjects { pass, decap }) => {
            std::fs::write(&pass, gateway::object::XDP_PASS)
                .and_then(|_| std::fs::write(&decap, gateway::object::XDP_DECAP))
                .context("writing the test-bed objects")
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// A flag that SIGINT or SIGTERM sets (for the commands that run in a plain loop).
fn stop_requested() -> &'static std::sync::atomic::AtomicBool {
    use std::sync::atomic::{AtomicBool, Ordering};
    static STOP: AtomicBool = AtomicBool::new(false);
    extern "C" fn on_signal(_: libc::c_int) {
        STOP.store(true, Ordering::Relaxed);
    }
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    &STOP
}

fn run(
    path: PathBuf,
    xdp_mode: Option<XdpMode>,
    stats_interval: u64,
    on_exit: Option<OnExit>,
) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let options = agent::RunOptions {
        path,
        xdp_mode,
        stats_every: (stats_interval > 0).then(|| Duration::from_secs(stats_interval)),
        on_exit,
    };
    Ok(agent::run(config, options, agent::stop_signals())?)
}

fn stop(
    detach: bool,
    config: Option<PathBuf>,
    pin_dir: Option<PathBuf>,
    interface: Option<String>,
) -> anyhow::Result<()> {
    if !detach {
        anyhow::bail!(
            "`gateway stop` removes the pinned data plane and needs --detach to say so; to stop \
             the agent itself, stop its service (it leaves or removes the data plane as its \
             on_exit says)"
        );
    }
    let dir = match (config, pin_dir, interface) {
        (Some(c), ..) => {
            let config = Config::load(&c)?;
            withdraw_before_detach(&config);
            config.dataplane.pin_dir
        }
        (_, Some(d), _) => d,
        (_, _, Some(i)) => std::path::Path::new(gateway::config::DEFAULT_PIN_ROOT).join(i),
        _ => {
            anyhow::bail!("say which data plane: --config FILE, --pin-dir DIR or --interface IFACE")
        }
    };
    if !sys::is_root() {
        anyhow::bail!("gateway stop --detach must run as root");
    }
    let removed = pin::remove(&dir)?;
    if removed.is_empty() {
        println!("nothing pinned in {}", dir.display());
    } else {
        println!("removed {} from {}", removed.join(", "), dir.display());
    }
    Ok(())
}

/// With `[bgp]`: withdraws every VIP from BIRD and waits `withdraw_wait`, so that the
/// routers stop sending flows before the data plane goes. A BIRD that does not answer has
/// no routes to withdraw; that is only a warning.
fn withdraw_before_detach(config: &Config) {
    let Some(bgp) = &config.bgp else {
        return;
    };
    let paths = gateway::bgp::Paths::new(bgp, &config.dataplane.interface);
    match gateway::bgp::guard::withdraw_all(&paths) {
        Ok(()) => {
            println!(
                "withdrew every VIP from BIRD; waiting {:?} for the routers (bgp.withdraw_wait)",
                bgp.withdraw_wait
            );
            std::thread::sleep(bgp.withdraw_wait);
        }
        Err(e) => eprintln!(
            "warning: withdrawing the VIPs: {}",
            gateway::error::Chain(&e)
        ),
    }
}

fn backend(cmd: BackendCommand) -> anyhow::Result<()> {
    let (b, path, body) = match cmd {
        BackendCommand::Ready(b) => (b, "state", r#"{"state":"ready"}"#.to_string()),
        BackendCommand::Drain(b) => (b, "state", r#"{"state":"drain"}"#.to_string()),
        BackendCommand::Maint(b) => (b, "state", r#"{"state":"maint"}"#.to_string()),
        BackendCommand::Weight { backend, weight } => {
            (backend, "weight", format!(r#"{{"weight":{weight}}}"#))
        }
    };
    let url = format!("/backends/{}/{}/{path}", b.service, b.addr);
    let (code, text) = http(&b.api, "POST", &url, Some(&body))?;
    if code != 200 {
        anyhow::bail!("{}", api_error(code, &text));
    }
    let c: gateway::overrides::Change =
        serde_json::from_str(&text).context("reading the agent's answer")?;
    println!(
        "{} {}: {} {} -> {}{}",
        c.service,
        c.backend,
        c.field,
        c.from,
        c.to,
        if c.source == "api" {
            " (overrides the config file until the file changes it)"
        } else {
            " (the config file's value again)"
        }
    );
    Ok(())
}

fn reload(api: &ApiArgs) -> anyhow::Result<()> {
    let (code, text) = http(api, "POST", "/reload", Some(""))?;
    if code != 200 {
        anyhow::bail!("{}", api_error(code, &text));
    }
    println!("reloaded");
    Ok(())
}

/// The `error` of a JSON error body, else the body.
fn api_error(code: u16, body: &str) -> String {
    let msg = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string());
    match code {
        401 => format!("the agent refused the token: {msg} (pass --token-file)"),
        _ => format!("the agent answered {code}: {msg}"),
    }
}

fn check(path: PathBuf, against: Option<PathBuf>) -> anyhow::Result<()> {
    let next = Config::load(&path)?;
    let running = against
        .map(|p| Config::load(&p).map(|c| (p, c)))
        .transpose()?;
    print!("{}", report::render_plan(&next, &preview::planned(&next)));
    if let Some((running_path, running)) = running {
        println!(
            "\nchanges from {} to {}:",
            running_path.display(),
            path.display()
        );
        print!(
            "{}",
            report::render_change(&preview::change(&running, &next))
        );
    }
    Ok(())
}

/// A request to the admin API through its client: the status code and the body.
fn http(
    api: &ApiArgs,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let auth = match &api.token_file {
        Some(f) => {
            let t = std::fs::read_to_string(f)
                .with_context(|| format!("reading the token file {}", f.display()))?;
            Some(format!("Bearer {}", t.trim()))
        }
        None => None,
    };
    let a = admin::request(api.admin, method, path, auth.as_deref(), body)?;
    Ok((a.code, a.body))
}

fn protection(api: &ApiArgs, json: bool) -> anyhow::Result<()> {
    let (code, body) = http(api, "GET", "/protection", None)?;
    if code != 200 {
        anyhow::bail!("{}", api_error(code, &body));
    }
    if json {
        println!("{}", body.trim_end());
        return Ok(());
    }
    let r: admin::ProtectionReport = serde_json::from_str(&body)
        .with_context(|| format!("reading /protection from {}", api.admin))?;
    print!("{}", report::render_protection(&r));
    Ok(())
}

fn nat(
    api: &ApiArgs,
    snat: Option<String>,
    client: Option<String>,
    limit: usize,
    json: bool,
) -> anyhow::Result<()> {
    let mut query = format!("/nat?limit={limit}");
    for (key, value) in [("snat", snat), ("client", client)] {
        if let Some(v) = value {
            // The API takes the same forms; escaping keeps '&' and '=' out of the query.
            let escaped: String = v
                .bytes()
                .map(|b| match b {
                    b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' | b'.' | b':' | b'[' | b']' => {
                        char::from(b).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            query += &format!("&{key}={escaped}");
        }
    }
    let (code, body) = http(api, "GET", &query, None)?;
    if code != 200 {
        anyhow::bail!("{}", api_error(code, &body));
    }
    if json {
        println!("{}", body.trim_end());
        return Ok(());
    }
    let r: admin::NatReport =
        serde_json::from_str(&body).with_context(|| format!("reading /nat from {}", api.admin))?;
    print!("{}", report::render_nat(&r));
    Ok(())
}

fn status(api: &ApiArgs, json: bool) -> anyhow::Result<()> {
    let addr = api.admin;
    let (code, body) = http(api, "GET", "/status", None)?;
    if code != 200 {
        anyhow::bail!("{}", api_error(code, &body));
    }
    if json {
        println!("{}", body.trim_end());
        return Ok(());
    }
    let snapshot: admin::Snapshot =
        serde_json::from_str(&body).with_context(|| format!("reading the status from {addr}"))?;
    print!("{}", report::render_status(&snapshot));
    Ok(())
}
