//! `gateway`: the agent and its command line.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use gateway::{
    admin,
    agent::{self, Agent},
    check,
    config::{Config, XdpMode},
    dataplane::Dataplane,
    sys,
};
use log::info;

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
        /// Where the agent's admin API listens (`[admin] listen`).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9180")]
        admin: SocketAddr,
        /// Print the raw JSON of `GET /status`.
        #[arg(long)]
        json: bool,
    },
    /// Helpers for test beds; not part of the stable interface.
    #[command(hide = true, subcommand)]
    Internal(Internal),
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
        } => run(config, xdp_mode, stats_interval),
        Command::Check { config, against } => check(config, against),
        Command::Status { admin, json } => status(admin, json),
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

fn run(path: PathBuf, mode: Option<XdpMode>, stats_interval: u64) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let iface = config.dataplane.interface.clone();
    let mode = mode.unwrap_or(config.dataplane.xdp_mode);
    let ifindex = sys::preflight(&iface)?;

    let mut dp = Dataplane::load(agent::load_options(&config))?;
    dp.attach(ifindex, &iface, mode)?;
    info!(
        "{} services configured; probing backends",
        config.services.len()
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let mut agent = rt.block_on(async { Agent::new(config, path.clone(), dp) });
    let result = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let shutdown = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
                _ = term.recv() => info!("SIGTERM: shutting down"),
            }
        };
        let every = (stats_interval > 0).then(|| Duration::from_secs(stats_interval));
        agent.run(shutdown, every).await
    });
    agent::print_stats(&agent.dp)?;
    agent.dp.detach()?;
    info!("detached from {iface}");
    result
}

fn check(path: PathBuf, against: Option<PathBuf>) -> anyhow::Result<()> {
    let next = Config::load(&path)?;
    let running = against
        .map(|p| Config::load(&p).map(|c| (p, c)))
        .transpose()?;
    print!("{}", check::render_plan(&next));
    if let Some((running_path, running)) = running {
        println!(
            "\nchanges from {} to {}:",
            running_path.display(),
            path.display()
        );
        print!("{}", check::render_change(&running, &next));
    }
    Ok(())
}

/// A plain HTTP/1.1 GET: the status code and the body.
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|_| anyhow::anyhow!("gateway is not running (nothing listens on {addr})"))?;
    stream.set_read_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer from {addr}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{addr} did not answer with HTTP"))?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("{addr} did not answer with HTTP"))?;
    Ok((code, body.to_string()))
}

fn status(addr: SocketAddr, json: bool) -> anyhow::Result<()> {
    let (code, body) = http_get(addr, "/status")?;
    if code != 200 {
        anyhow::bail!("{addr} answered {code}: {}", body.trim());
    }
    if json {
        println!("{}", body.trim_end());
        return Ok(());
    }
    let snapshot: admin::Snapshot =
        serde_json::from_str(&body).with_context(|| format!("reading the status from {addr}"))?;
    print!("{}", admin::render_status(&snapshot));
    Ok(())
}
