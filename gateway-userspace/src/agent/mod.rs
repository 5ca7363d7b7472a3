//! The agent: one control loop that keeps the data plane in step with the configuration,
//! the backends' health and their next hops.
//!
//! Every change - a probe verdict, a MAC learned or lost, a slow-start step, a reload, an
//! API change - goes the same way: `plan` (config + facts -> desired maps), `diff` (applied
//! vs desired), `apply` (the only code that writes maps), in [`Agent::replan`].
//!
//! - this file: [`run`] (load, attach, serve, leave or detach), the [`Agent`] and its loop,
//!   and `replan`;
//! - [`backends`]: the backend registry - probes, health and next hops, the facts of a plan;
//! - [`changes`]: reloads of the config file and the admin API's changes (overrides);
//! - [`status`]: what the agent reports (API answers, the status snapshot, counters);
//! - [`protection`]: the sources over a limit (a look a second, log lines,
//!   `GET /protection`);
//! - [`nat`]: full-NAT's `GET /nat` report, and the drain of SNAT addresses removed from the
//!   config;
//! - [`passive`]: full-NAT backends' SYN answers read from the data plane;
//! - [`announce`]: what goes to the BGP speaker.
//!
//! The agent is generic over the data plane ([`DataplaneOps`]) and the next hops
//! ([`NextHops`]), so its unit tests (`tests.rs`) run over in-memory maps and a fixed
//! neighbour table.
use std::{
    collections::HashMap,
    future::Future,
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use log::{error, info, warn};
use tokio::sync::mpsc;

use crate::{
    admin,
    config::{self, Config, OnExit, XdpMode},
    dataplane::{Dataplane, DataplaneError, DataplaneOps, LoadOptions},
    error::Chain,
    health::{self, CheckId, Prober},
    mapsync::{self, SyncError},
    model::{self, Applied, BackendKey},
    neigh::{NextHops, Resolver},
    overrides::Overrides,
    plan::{self, Ids, Plan, TableCache},
    sys,
};

mod backends;
mod changes;
mod nat;
mod passive;
mod protection;
mod status;

pub use backends::{BackendRecord, PROBE_BUCKETS, fmt_mac};
pub use status::print_stats;

/// How soon a replan whose map write failed is tried again.
const WRITE_RETRY: Duration = Duration::from_secs(1);
/// Transitions kept per backend for status output.
const HISTORY: usize = 16;
/// How often the loop asks whether next hops need work that no netlink event announces
/// (a hop still being resolved is provoked again, the resolver's periodic resync, adopted
/// MACs expiring); changes themselves arrive as events.
const NEIGH_TICK: Duration = Duration::from_secs(1);
/// How often changed table slots are checked for settling (`settle_slots`): a pass reads
/// every active table once, so not every tick; a slot settles up to this much after its
/// idle timeout.
const SETTLE_EVERY: Duration = Duration::from_secs(10);
/// After adopting pinned maps, a next hop still being resolved keeps the MAC the maps had
/// for this long (rather than taking its backend out while the neighbour table warms up).
const ADOPT_GRACE: Duration = Duration::from_secs(10);

/// Why the agent could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Preflight(#[from] sys::PreflightError),
    #[error(transparent)]
    Token(#[from] admin::TokenFileError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("the first plan could not be written to the maps")]
    FirstPlan(#[source] SyncError),
    #[error("{0}")]
    Io(&'static str, #[source] std::io::Error),
}

/// How `gateway run` was asked to run, besides the config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The config file (read again on reload).
    pub path: PathBuf,
    /// Overrides `dataplane.xdp_mode`.
    pub xdp_mode: Option<XdpMode>,
    /// Print the global counters this often.
    pub stats_every: Option<Duration>,
    /// Overrides `dataplane.on_exit`.
    pub on_exit: Option<OnExit>,
}

/// `gateway run`: checks the host, loads (or adopts) and attaches the data plane, runs the
/// agent until `shutdown` resolves, then leaves the data plane pinned or detaches it as
/// `on_exit` says.
pub fn run(
    config: Config,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    tune_allocator();
    let iface = config.dataplane.interface.clone();
    let mode = options.xdp_mode.unwrap_or(config.dataplane.xdp_mode);
    let ifindex = sys::preflight(&iface, &config.dataplane.pin_dir)?;
    let auth = admin::Auth::from_config(&config.admin)?;

    let pin_dir = config.dataplane.pin_dir.clone();
    let mut dp = Dataplane::load_pinned(load_options(&config), &pin_dir)?;
    if dp.adopted() {
        info!("adopting the data plane pinned in {}", pin_dir.display());
    }
    if let Err(e) = dp.attach(ifindex, &iface, mode) {
        // Nothing of ours serves traffic yet; an adopted link keeps its old program.
        if !dp.adopted() {
            let _ = dp.detach();
        }
        return Err(e.into());
    }
    info!(
        "{} services configured; probing backends",
        config.services.len()
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Io("starting the runtime", e))?;
    let mut agent =
        rt.block_on(async { Agent::new(config, options.path, dp, Resolver::default()) });
    agent.auth = auth;
    let result = rt.block_on(agent.serve(shutdown, options.stats_every));
    print_stats(&agent.dp)?;
    match options.on_exit.unwrap_or(agent.config.dataplane.on_exit) {
        OnExit::Detach => {
            if agent.withdraw_all("the agent stops and detaches")
                && let Some(bgp) = &agent.config.bgp
            {
                info!(
                    "waiting {:?} for the routers (bgp.withdraw_wait)",
                    bgp.withdraw_wait
                );
                std::thread::sleep(bgp.withdraw_wait);
            }
            agent.dp.detach()?;
            info!("detached from {iface}");
        }
        OnExit::Keep => {
            agent.dp.keep();
            info!(
                "left the program attached to {iface}, state pinned in {} (on_exit = keep)",
                pin_dir.display()
            );
        }
    }
    result
}

/// Resolves at the first SIGINT or SIGTERM (the agent's shutdown); must be polled inside
/// the runtime.
pub async fn stop_signals() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
            _ = term.recv() => info!("SIGTERM: shutting down"),
        },
        Err(e) => {
            warn!("cannot watch for SIGTERM ({e}); stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
            info!("SIGINT: shutting down");
        }
    }
}

/// Load-time sizes from the config.
pub fn load_options(c: &Config) -> LoadOptions {
    LoadOptions {
        conntrack_size: c.dataplane.conntrack_size,
        max_services: c.dataplane.max_services,
        max_table_size: c.dataplane.max_table_size,
        kernel_log: match c.dataplane.kernel_log {
            config::KernelLog::Off => 0,
            config::KernelLog::Error => 1,
            config::KernelLog::Warn => 2,
            config::KernelLog::Info => 3,
            config::KernelLog::Debug => 4,
        },
        sources_size: c.protection.sources_size,
        nat_size: c.dataplane.nat_size,
    }
}

/// The control loop's state: the running config, the data plane, the backends' records
/// and what was last planned and applied.
pub struct Agent<D = Dataplane, N = Resolver> {
    /// What the agent runs: the file's config with the API's overrides applied, and the
    /// load-time settings of the first one.
    pub config: Config,
    /// The config file as last read.
    pub file_config: Config,
    overrides: Overrides,
    state_file: PathBuf,
    /// Health and next hops of an adopted data plane, used until the agent knows its own.
    seed_up: HashMap<BackendKey, bool>,
    pinned_macs: HashMap<IpAddr, [u8; 6]>,
    /// Probe latencies per service.
    probe_latency: HashMap<String, backends::LatencyHistogram>,
    /// The admin API's token (read at start).
    pub auth: admin::Auth,
    pub path: PathBuf,
    pub dp: D,
    applied: Applied,
    ids: Ids,
    tables: TableCache,
    pub records: HashMap<BackendKey, BackendRecord>,
    macs: HashMap<IpAddr, Result<[u8; 6], String>>,
    hops: N,
    /// Facts about this balancer (its interface's MAC, its addresses), read with the next
    /// hops (`resolve`): at start, on reload and when a link or address changes.
    host: plan::Host,
    prober: Prober,
    events: mpsc::Receiver<health::Event>,
    by_check: HashMap<CheckId, BackendKey>,
    next_check: CheckId,
    started: Instant,
    pub last_plan: Option<Plan>,
    next_step: Option<Duration>,
    /// When the last replan ended and how long it took: health changes wait that long
    /// after it before the next one (see `run`).
    last_replan: Option<(Instant, Duration)>,
    /// Replans that changed the maps, and SIGHUP reloads by outcome (for metrics).
    table_rebuilds: u64,
    reloads_ok: u64,
    reloads_error: u64,
    /// Replans whose map write failed (for metrics), and when the next retry is due.
    map_write_errors: u64,
    retry_at: Option<tokio::time::Instant>,
    /// BGP announcements (`[bgp]`), and when a failed one is tried again.
    pub speaker: Option<crate::bgp::worker::SpeakerThread>,
    /// Every backend has had a first verdict (see `all_checked`).
    checked: bool,
    /// Per service, its table slots still changed after the last settling pass (their TCP
    /// flows go through conntrack), and when the next pass is due.
    pub changed_slots: HashMap<gateway_common::ServiceKey, u32>,
    next_settle: Instant,
    /// The sources over a limit, as of the last look.
    limits: protection::LimitWatch,
    /// Full-NAT backends' passive health: the PASSIVE counts read last.
    passive: passive::PassiveWatch,
    /// SNAT addresses removed from the config that live mappings still use, and when to
    /// look again (see `nat::look_at_snat_draining`).
    snat_draining: std::collections::BTreeSet<IpAddr>,
    next_drain_look: Instant,
}

impl<D: DataplaneOps, N: NextHops> Agent<D, N> {
    /// Takes a loaded (and usually attached) data plane and starts probing. If the data
    /// plane was adopted from pinned maps, the agent starts from what they hold: the same
    /// ids, and each backend's last health, so the first plan changes nothing that works.
    pub fn new(config: Config, path: PathBuf, dp: D, hops: N) -> Agent<D, N> {
        let (tx, rx) = mpsc::channel(4096);
        let state_file = config
            .admin
            .state_file
            .clone()
            .unwrap_or_else(|| Overrides::default_path(&config.dataplane.interface));
        let mut overrides = Overrides::load(&state_file).unwrap_or_else(|e| {
            warn!("ignoring the API state file: {}", Chain(&e));
            Overrides::default()
        });
        for line in overrides.reconcile(&config) {
            warn!("{line}");
        }
        let effective = overrides.apply(&config);
        let (mut applied, mut ids) = (Applied::default(), Ids::default());
        let (mut seed_up, mut pinned_macs) = (HashMap::new(), HashMap::new());
        if dp.adopted() {
            match dp.read_applied() {
                Ok(a) => {
                    ids = Ids::adopt(&effective, &a);
                    for s in &effective.services {
                        for b in &s.backends {
                            let Some(pb) = ids
                                .backend_id(&s.name, b.address)
                                .and_then(|id| a.backends.get(&id))
                            else {
                                continue;
                            };
                            let up = pb.state != gateway_common::BACKEND_DOWN;
                            seed_up.insert(BackendKey::new(&s.name, b.address), up);
                            if up {
                                pinned_macs.insert(b.address, pb.mac);
                            }
                        }
                    }
                    info!(
                        "adopted the pinned maps: {} services, {} backends ({} up)",
                        a.services.len(),
                        a.backends.len(),
                        seed_up.values().filter(|u| **u).count()
                    );
                    applied = a;
                }
                Err(e) => warn!("reading the adopted maps: {}; rewriting them", Chain(&e)),
            }
        }
        let mut agent = Agent {
            config: effective,
            file_config: config,
            overrides,
            state_file,
            seed_up,
            pinned_macs,
            probe_latency: HashMap::new(),
            auth: admin::Auth::default(),
            path,
            dp,
            applied,
            ids,
            tables: TableCache::default(),
            records: HashMap::new(),
            macs: HashMap::new(),
            hops,
            host: plan::Host::default(),
            prober: Prober::new(health::DEFAULT_MAX_IN_FLIGHT, tx),
            events: rx,
            by_check: HashMap::new(),
            next_check: 1,
            started: Instant::now(),
            last_plan: None,
            next_step: None,
            last_replan: None,
            table_rebuilds: 0,
            reloads_ok: 0,
            reloads_error: 0,
            map_write_errors: 0,
            retry_at: None,
            speaker: None,
            checked: false,
            changed_slots: HashMap::new(),
            next_settle: Instant::now(),
            limits: protection::LimitWatch::default(),
            passive: passive::PassiveWatch::default(),
            snat_draining: Default::default(),
            next_drain_look: Instant::now(),
        };
        agent.speaker = crate::bgp::worker::SpeakerThread::start(&agent.config);
        agent.checked = agent.dp.adopted();
        agent.sync_checks();
        agent
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Settles the table slots whose older flows have been idle for `idle_timeout` (see
    /// `gateway_common::Slot`), and records how many stay changed per service. In place:
    /// the applied state (the tables' backends) does not change.
    pub fn settle_slots(&mut self) {
        let idle = u32::try_from(self.config.dataplane.idle_timeout.as_secs()).unwrap_or(u32::MAX);
        for (key, s) in &self.applied.services {
            match self
                .dp
                .settle_slots(s.value.table_offset, s.value.table_size, idle)
            {
                Ok(c) => {
                    if c.settled > 0 {
                        info!(
                            "service {}: {} table slots settled ({} still changed)",
                            s.value.id, c.settled, c.changed
                        );
                    }
                    self.changed_slots.insert(*key, c.changed);
                }
                Err(e) => warn!("settling table slots: {}", Chain(&e)),
            }
        }
        self.changed_slots
            .retain(|k, _| self.applied.services.contains_key(k));
        self.next_settle = Instant::now() + SETTLE_EVERY;
    }

    /// Plans, diffs and applies, and logs services left without backends; a failed map
    /// write does not stop the agent (see `Agent::write_failed`).
    pub fn replan(&mut self, why: &str) {
        match self.try_replan(why) {
            Ok(()) => self.announce(true),
            Err(e) => {
                self.write_failed(why, &e);
                self.announce(false);
            }
        }
    }

    /// The one rule for a map write that fails, whatever asked for it: the agent keeps
    /// running, logs and counts it, takes what the maps now hold as applied (a write may
    /// have stopped half way) and plans again a second later. A caller that asked for a
    /// change (the API) undoes it and answers with the error.
    fn write_failed(&mut self, why: &str, e: &SyncError) {
        self.map_write_errors += 1;
        error!(
            "{why}: writing the maps failed, retrying in {WRITE_RETRY:?}: {}",
            Chain(e)
        );
        self.applied = self.dp.read_applied().unwrap_or_else(|e| {
            warn!("reading the maps back: {}; rewriting them whole", Chain(&e));
            Applied::default()
        });
        self.retry_at = Some(tokio::time::Instant::now() + WRITE_RETRY);
    }

    /// [`Agent::replan`], returning a failed write to the caller.
    fn try_replan(&mut self, why: &str) -> Result<(), SyncError> {
        let started = Instant::now();
        let now = self.now();
        let host = plan::Host {
            snat_draining: self.snat_draining.iter().copied().collect(),
            ..self.host.clone()
        };
        let mut p = plan::plan(
            &self.config,
            &self.facts(),
            &host,
            &mut self.ids,
            &mut self.tables,
            now,
        );
        let (ops, next) = mapsync::diff(&self.applied, &p.desired, self.dp.options().layout())?;
        if !ops.is_empty() {
            mapsync::apply(&ops, &mut self.dp)?;
            self.applied = next;
            self.table_rebuilds += 1;
            info!(
                "{why}: applied {} map updates in {:?}",
                ops.len(),
                started.elapsed()
            );
            let before = self.last_plan.as_ref();
            for s in &p.services {
                let was_empty = before
                    .and_then(|b| b.services.iter().find(|o| o.name == s.name))
                    .is_some_and(|o| o.empty());
                if s.empty() && !was_empty {
                    error!(
                        "service {}: NO BACKEND AVAILABLE - new connections are dropped ({})",
                        s.name,
                        s.reasons()
                    );
                } else if !s.empty() && was_empty {
                    info!("service {}: backends available again", s.name);
                }
                if s.panic {
                    warn!(
                        "service {}: panic mode, spreading over every ready backend",
                        s.name
                    );
                }
            }
        }
        self.next_step = p.next_step;
        // What the maps should hold is now what they hold; the tables stay in the table
        // cache, and a second reference here would keep each old table alive through the
        // next replan.
        p.desired = model::Desired::default();
        self.last_plan = Some(p);
        self.last_replan = Some((Instant::now(), started.elapsed()));
        Ok(())
    }

    /// The earliest time a change of facts (health, next hops) may be planned: a replan's
    /// own duration after the last one ended. With a few backends that is about a
    /// millisecond and changes nothing; with thousands coming up at once, or a storm of
    /// neighbour events, a replan takes tens of milliseconds, and planning after every batch
    /// would starve the probes that share this thread (their timeouts would then fail
    /// healthy backends). This keeps replanning under half the loop's time; changes that
    /// arrive meanwhile go into the same replan.
    fn next_paced_replan(&self) -> Option<Instant> {
        self.last_replan.map(|(ended, took)| ended + took)
    }

    /// Facts changed (`why`): plans now, or leaves it `pending` for the loop's timer when
    /// the last replan was too recent (see `next_paced_replan`).
    fn facts_changed(&mut self, pending: &mut Option<&'static str>, why: &'static str) {
        let why = *pending.get_or_insert(why);
        if self.next_paced_replan().is_none_or(|t| Instant::now() >= t) {
            *pending = None;
            self.replan(why);
        }
    }

    /// Runs the loop until `shutdown` resolves. `stats_every` prints the global counters.
    pub async fn serve(
        &mut self,
        shutdown: impl std::future::Future<Output = ()>,
        stats_every: Option<Duration>,
    ) -> Result<(), RunError> {
        use tokio::signal::unix::{SignalKind, signal};
        let (admin_tx, mut admin_rx) = mpsc::channel(64);
        admin::spawn(self.config.admin.listen, self.auth.clone(), admin_tx).await;
        // Closed when the API could not bind (or stopped): the arm below is then disabled.
        let mut admin_open = true;
        self.resolve();
        let before = self.table_rebuilds;
        // Mappings of adopted maps may use SNAT addresses the config no longer names.
        self.look_at_snat_draining();
        // Before the first plan nothing of this agent's serves: a failure here stops it.
        self.try_replan("start").map_err(RunError::FirstPlan)?;
        if self.table_rebuilds == before {
            info!("start: applied nothing: the adopted maps already match the config");
        }
        self.announce(true);
        let mut hup =
            signal(SignalKind::hangup()).map_err(|e| RunError::Io("watching for SIGHUP", e))?;
        // The program's own log lines (rare events) arrive through a ring buffer.
        let mut klog = match self.dp.take_logger() {
            // SAFETY: the logger owns its ring buffer's fd for as long as the AsyncFd lives.
            Some(l) => match unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(l, tokio::io::Interest::READABLE)
            } {
                Ok(fd) => Some(fd),
                Err(e) => {
                    warn!(
                        "the program's log is unavailable: {}",
                        std::io::Error::from(e)
                    );
                    None
                }
            },
            None => None,
        };
        let mut next_resolve = tokio::time::Instant::now() + NEIGH_TICK;
        // Replans since free memory was last handed back.
        let mut trimmed_at = self.table_rebuilds;
        // Changes of facts not planned yet, and the first one's reason (waiting for
        // `next_paced_replan`).
        let mut pending: Option<&'static str> = None;
        let mut stats = tokio::time::interval(stats_every.unwrap_or(Duration::from_secs(3600)));
        stats.tick().await;
        let mut passive = tokio::time::interval(passive::PASSIVE_TICK);
        passive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tokio::pin!(shutdown);
        loop {
            let step = self
                .next_step
                .map(|t| tokio::time::Instant::from_std(self.started + t));
            let paced_at = pending
                .and(self.next_paced_replan())
                .map(tokio::time::Instant::from_std);
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                Some(ev) = self.events.recv() => {
                    let mut changed = self.on_event(ev);
                    // Drain what else arrived, then plan once.
                    while let Ok(ev) = self.events.try_recv() {
                        changed |= self.on_event(ev);
                    }
                    if changed || pending.is_some() {
                        self.facts_changed(&mut pending, "health change");
                    }
                }
                _ = async { tokio::time::sleep_until(paced_at.unwrap_or_else(tokio::time::Instant::now)).await }, if paced_at.is_some() => {
                    if let Some(why) = pending.take() {
                        self.replan(why);
                    }
                }
                _ = self.hops.changed() => {
                    if self.resolve() {
                        self.facts_changed(&mut pending, "next hops changed");
                    }
                }
                _ = tokio::time::sleep_until(next_resolve) => {
                    if (self.hops.due() || !self.pinned_macs.is_empty()) && self.resolve() {
                        self.facts_changed(&mut pending, "next hops changed");
                    }
                    // The data plane may have gone since: the speaker hears it.
                    self.announce(self.retry_at.is_none());
                    if Instant::now() >= self.next_settle {
                        self.settle_slots();
                    }
                    if !self.snat_draining.is_empty()
                        && Instant::now() >= self.next_drain_look
                        && self.look_at_snat_draining()
                    {
                        self.replan("SNAT address drained");
                    }
                    self.watch_limited();
                    if self.table_rebuilds != trimmed_at {
                        trimmed_at = self.table_rebuilds;
                        release_free_memory();
                    }
                    next_resolve = tokio::time::Instant::now() + NEIGH_TICK;
                }
                _ = async { tokio::time::sleep_until(step.unwrap_or_else(tokio::time::Instant::now)).await }, if step.is_some() => {
                    self.replan("slow start step");
                }
                guard = async { klog.as_mut().expect("guarded").readable_mut().await }, if klog.is_some() => {
                    let mut guard = guard.map_err(|e| RunError::Io("reading the program's log", e))?;
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                _ = async { tokio::time::sleep_until(self.retry_at.unwrap_or_else(tokio::time::Instant::now)).await }, if self.retry_at.is_some() => {
                    self.retry_at = None;
                    self.replan("retry after a failed map write");
                }
                _ = hup.recv() => {
                    let _ = self.reload_counted();
                }
                req = admin_rx.recv(), if admin_open => match req {
                    Some(req) => self.answer(req),
                    None => admin_open = false,
                },
                _ = stats.tick(), if stats_every.is_some() => {
                    print_stats(&self.dp)?;
                }
                _ = passive.tick(), if self.passive.watched => {
                    self.watch_passive();
                }
            }
        }
    }
}

/// Sets the allocator up for an agent whose big buffers (65537-slot tables, a thousand
/// backends' plans) come and go with every replan: with glibc's default, freed blocks of
/// that size stay in the heap and fragment it, so the agent's memory would grow to its
/// worst moment and stay there. A fixed mmap threshold gives such blocks their own
/// mappings, returned to the kernel when freed.
fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes glibc's allocation policy; called before the runtime
    // starts its threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Hands free heap pages back to the kernel (after replans, which free a lot at once).
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases memory the allocator holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests;

mod announce;
