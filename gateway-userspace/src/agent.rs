//! The agent: one control loop that keeps the data plane in step with the configuration,
//! the backends' health and their next hops.
//!
//! Every change - a probe verdict, a MAC learned or lost, a slow-start step, a reload - goes
//! the same way: `plan` (config + facts -> desired maps), `diff` (applied vs desired),
//! `apply` (the only code that writes maps).
use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use log::{error, info, warn};
use tokio::sync::mpsc;

use crate::{
    admin,
    config::{self, AdminState, Config, Mode},
    dataplane::{Dataplane, DataplaneOps, LoadOptions},
    health::{self, CheckId, CheckSpec, Prober},
    mapsync::{self, Applied},
    neigh::Resolver,
    overrides::{BackendChange, Change, Overrides},
    plan::{self, BackendFacts, Facts, Ids, Plan, TableCache},
};

/// How soon a replan whose map write failed is tried again.
const WRITE_RETRY: Duration = Duration::from_secs(1);
/// Transitions kept per backend for status output.
const HISTORY: usize = 16;
/// How often the loop asks whether next hops need work that no netlink event announces
/// (a hop still being resolved is provoked again, the resolver's periodic resync, adopted
/// MACs expiring); changes themselves arrive as events.
const NEIGH_TICK: Duration = Duration::from_secs(1);
/// After adopting pinned maps, a next hop still being resolved keeps the MAC the maps had
/// for this long (rather than taking its backend out while the neighbour table warms up).
const ADOPT_GRACE: Duration = Duration::from_secs(10);
/// Upper bounds (seconds) of the probe latency histogram's buckets.
pub const PROBE_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

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
    }
}

/// What the agent knows about one backend of one service.
#[derive(Debug, Clone)]
pub struct BackendRecord {
    pub up: bool,
    /// Seen up since the agent started: a later rise is a recovery (slow start), the first
    /// one is not.
    pub was_up: bool,
    pub up_since: Option<Duration>,
    pub last: Option<health::ProbeResult>,
    pub transitions: VecDeque<String>,
    /// Every transition since the agent started (`transitions` keeps only the last few).
    pub transitions_total: u64,
    check: Option<(CheckId, CheckSpec)>,
}

pub struct Agent<D = Dataplane> {
    /// What the agent runs: the file's config with the API's overrides applied, and the
    /// load-time settings of the first one.
    pub config: Config,
    /// The config file as last read.
    pub file_config: Config,
    overrides: Overrides,
    state_file: PathBuf,
    /// Health and next hops of an adopted data plane, used until the agent knows its own.
    seed_up: HashMap<(String, IpAddr), bool>,
    pinned_macs: HashMap<IpAddr, [u8; 6]>,
    /// Probe latencies per service: bucket counts (non-cumulative), sum and count.
    probe_latency: HashMap<String, ([u64; PROBE_BUCKETS.len() + 1], f64)>,
    /// The admin API's token (read at start).
    pub auth: admin::Auth,
    pub path: PathBuf,
    pub dp: D,
    applied: Applied,
    ids: Ids,
    tables: TableCache,
    pub records: HashMap<(String, IpAddr), BackendRecord>,
    macs: HashMap<IpAddr, Result<[u8; 6], String>>,
    resolver: Resolver,
    prober: Prober,
    events: mpsc::Receiver<health::Event>,
    by_check: HashMap<CheckId, (String, IpAddr)>,
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
}

impl<D: DataplaneOps> Agent<D> {
    /// Takes a loaded (and usually attached) data plane and starts probing. If the data
    /// plane was adopted from pinned maps, the agent starts from what they hold: the same
    /// ids, and each backend's last health, so the first plan changes nothing that works.
    pub fn new(config: Config, path: PathBuf, dp: D) -> Agent<D> {
        let (tx, rx) = mpsc::channel(4096);
        let state_file = config
            .admin
            .state_file
            .clone()
            .unwrap_or_else(|| Overrides::default_path(&config.dataplane.interface));
        let mut overrides = Overrides::load(&state_file).unwrap_or_else(|e| {
            warn!("ignoring the API state file: {e}");
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
                            seed_up.insert((s.name.clone(), b.address), up);
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
                Err(e) => warn!("reading the adopted maps: {e}; rewriting them"),
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
            resolver: Resolver::default(),
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
        };
        agent.sync_checks();
        agent
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Starts, updates and stops probes so they match the config.
    fn sync_checks(&mut self) {
        let mut wanted: HashMap<(String, IpAddr), Option<CheckSpec>> = HashMap::new();
        for s in &self.config.services {
            for b in &s.backends {
                // Neither maint nor kind none (see CheckSpec::new) is probed.
                let spec = if b.state == AdminState::Maint {
                    None
                } else {
                    CheckSpec::new(b.address, b.health.clone())
                };
                wanted.insert((s.name.clone(), b.address), spec);
            }
        }
        // Gone, or no longer probed.
        let stale: Vec<(String, IpAddr)> = self
            .records
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for k in stale {
            if let Some(r) = self.records.remove(&k)
                && let Some((id, _)) = r.check
            {
                self.prober.remove(id);
                self.by_check.remove(&id);
            }
        }
        for (key, spec) in wanted {
            let initial_up = spec.as_ref().is_none_or(|s| s.check().initial_up);
            let rec = self
                .records
                .entry(key.clone())
                .or_insert_with(|| BackendRecord {
                    up: initial_up,
                    was_up: initial_up,
                    up_since: None,
                    last: None,
                    transitions: VecDeque::new(),
                    transitions_total: 0,
                    check: None,
                });
            match (spec, rec.check.take()) {
                (None, Some((id, _))) => {
                    self.prober.remove(id);
                    self.by_check.remove(&id);
                    // Unprobed backends (kind none, or maint) count as up; maint is
                    // kept out by its admin state.
                    rec.up = true;
                }
                (None, None) => rec.up = true,
                (Some(spec), Some((id, old))) => {
                    if spec != old {
                        self.prober.update(id, spec.clone());
                    }
                    rec.check = Some((id, spec));
                }
                (Some(spec), None) => {
                    let id = self.next_check;
                    self.next_check += 1;
                    // An adopted backend starts where the last agent left it.
                    let mut first = spec.clone();
                    if let Some(up) = self.seed_up.remove(&key) {
                        first = first.starting(up);
                        rec.was_up = up;
                    }
                    rec.up = first.check().initial_up;
                    rec.up_since = None;
                    self.prober.add(id, first);
                    self.by_check.insert(id, key.clone());
                    rec.check = Some((id, spec));
                }
            }
        }
    }

    fn facts(&self) -> Facts {
        self.records
            .iter()
            .map(|(k, r)| {
                let mac = self
                    .macs
                    .get(&k.1)
                    .cloned()
                    .unwrap_or_else(|| Err("next hop not resolved yet".into()));
                (
                    k.clone(),
                    BackendFacts {
                        up: r.up,
                        up_since: r.up_since,
                        mac,
                    },
                )
            })
            .collect()
    }

    /// Plans, diffs and applies, and logs services left without backends; a failed map
    /// write does not stop the agent (see `Agent::write_failed`).
    pub fn replan(&mut self, why: &str) {
        if let Err(e) = self.try_replan(why) {
            self.write_failed(why, &e);
        }
    }

    /// The one rule for a map write that fails, whatever asked for it: the agent keeps
    /// running, logs and counts it, takes what the maps now hold as applied (a write may
    /// have stopped half way) and plans again a second later. A caller that asked for a
    /// change (the API) undoes it and answers with the error.
    fn write_failed(&mut self, why: &str, e: &anyhow::Error) {
        self.map_write_errors += 1;
        error!("{why}: writing the maps failed, retrying in {WRITE_RETRY:?}: {e:#}");
        self.applied = self.dp.read_applied().unwrap_or_else(|e| {
            warn!("reading the maps back: {e}; rewriting them whole");
            Applied::default()
        });
        self.retry_at = Some(tokio::time::Instant::now() + WRITE_RETRY);
    }

    /// [`Agent::replan`], returning a failed write to the caller.
    fn try_replan(&mut self, why: &str) -> anyhow::Result<()> {
        let started = Instant::now();
        let now = self.now();
        let mut p = plan::plan(
            &self.config,
            &self.facts(),
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
        p.desired = mapsync::Desired::default();
        self.last_plan = Some(p);
        self.last_replan = Some((Instant::now(), started.elapsed()));
        Ok(())
    }

    /// The earliest time a health change may be planned: a replan's own duration after the
    /// last one ended. With a few backends that is about a millisecond and changes nothing;
    /// with thousands coming up at once a replan takes tens of milliseconds, and planning
    /// after every batch of results would starve the probes that share this thread (their
    /// timeouts would then fail healthy backends). This keeps replanning under half the
    /// loop's time; results that arrive meanwhile go into the same replan.
    fn next_health_replan(&self) -> Option<Instant> {
        self.last_replan.map(|(ended, took)| ended + took)
    }

    fn resolve(&mut self) -> bool {
        let backends: Vec<(IpAddr, bool)> = self
            .config
            .services
            .iter()
            .flat_map(|s| {
                s.backends
                    .iter()
                    .map(move |b| (b.address, s.mode == Mode::L2dsr))
            })
            .collect();
        let mut macs = self
            .resolver
            .resolve(&backends, &self.config.dataplane.interface);
        if !self.pinned_macs.is_empty() {
            if self.now() > ADOPT_GRACE {
                self.pinned_macs.clear();
            }
            for (addr, m) in macs.iter_mut() {
                if m.is_err()
                    && let Some(pinned) = self.pinned_macs.get(addr)
                {
                    *m = Ok(*pinned);
                }
            }
        }
        let changed = macs != self.macs;
        for (addr, m) in &macs {
            let old = self.macs.get(addr);
            match (old, m) {
                (Some(Ok(a)), Ok(b)) if a != b => {
                    info!("backend {addr}: next hop MAC changed to {}", fmt_mac(b))
                }
                (Some(Ok(_)), Err(e)) => warn!("backend {addr}: next hop lost: {e}"),
                _ => {}
            }
        }
        self.macs = macs;
        changed
    }

    /// Takes in one probe result (thousands a second at scale: no allocation unless the
    /// state changes or the service is new to the histogram).
    fn on_event(&mut self, ev: health::Event) -> bool {
        let now = self.now();
        let Some(key) = self.by_check.get(&ev.id) else {
            return false;
        };
        let Some(rec) = self.records.get_mut(key) else {
            return false;
        };
        let changed = rec.up != ev.up;
        if let Some(t) = &ev.transition {
            let line = format!("{} {}", key.0, t.describe(ev.target, &ev.result.reason));
            info!("{line}");
            rec.transitions.push_back(line);
            rec.transitions_total += 1;
            if rec.transitions.len() > HISTORY {
                rec.transitions.pop_front();
            }
        }
        if changed && ev.up && rec.was_up {
            rec.up_since = Some(now);
        }
        rec.was_up |= ev.up;
        rec.up = ev.up;
        if !self.probe_latency.contains_key(&key.0) {
            self.probe_latency
                .insert(key.0.clone(), ([0; PROBE_BUCKETS.len() + 1], 0.0));
        }
        let h = self.probe_latency.get_mut(&key.0).expect("inserted above");
        let secs = ev.result.latency.as_secs_f64();
        let bucket = PROBE_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(PROBE_BUCKETS.len());
        h.0[bucket] += 1;
        h.1 += secs;
        rec.last = Some(ev.result);
        changed
    }

    /// Recomputes the running config from the file and the overrides; settings fixed at
    /// load time keep their old values until a restart.
    fn set_effective(&mut self) {
        let next = self.overrides.apply(&self.file_config);
        self.config = config::LoadTime::keep_running(&self.config, next);
    }

    fn save_overrides(&self) {
        if let Err(e) = self.overrides.save(&self.state_file) {
            error!("saving API changes (they apply, but will not survive a restart): {e}");
        }
    }

    /// Makes the overrides (`replaced` by these, if given) the running config's: saved,
    /// applied over the file, checks in step.
    fn take_overrides(&mut self, replaced: Option<Overrides>) {
        if let Some(o) = replaced {
            self.overrides = o;
        }
        self.save_overrides();
        self.set_effective();
        self.sync_checks();
    }

    /// An admin API change of one backend: recorded as an override, then planned and
    /// applied like any other change. If the maps cannot be written the change is undone
    /// and the error returned.
    pub fn api_change(
        &mut self,
        service: &str,
        addr: IpAddr,
        change: BackendChange,
    ) -> Result<Change, admin::ChangeError> {
        let before = self.overrides.clone();
        let c = self
            .overrides
            .set(&self.file_config, service, addr, change)?;
        self.save_overrides();
        self.set_effective();
        self.sync_checks();
        let why = format!(
            "api: {} {} {} {} -> {}",
            c.service, c.backend, c.field, c.from, c.to
        );
        info!("{why}");
        if let Err(e) = self.try_replan(&why) {
            self.write_failed(&why, &e);
            self.take_overrides(Some(before));
            return Err(admin::ChangeError::Apply(format!("{e:#}")));
        }
        Ok(c)
    }

    /// Re-reads the config file. An invalid file changes nothing (the error is returned);
    /// settings fixed at load time keep their old values until a restart. API overrides are
    /// kept unless the file changed the same field (see [`crate::overrides`]).
    pub fn reload(&mut self) -> anyhow::Result<()> {
        let next = Config::load(&self.path)?;
        let fixed: Vec<&str> = config::LoadTime::changed(&self.config, &next)
            .iter()
            .map(|s| s.key)
            .collect();
        if !fixed.is_empty() {
            warn!("reload: {} take effect at the next start", fixed.join(", "));
        }
        let mut overrides = self.overrides.clone();
        for line in overrides.reconcile(&next) {
            warn!("reload: {line}");
        }
        self.file_config = next;
        if overrides != self.overrides {
            self.overrides = overrides;
            self.save_overrides();
        }
        self.set_effective();
        self.resolver.flush_routes();
        self.sync_checks();
        self.resolve();
        self.replan("reload");
        info!("reloaded {}", self.path.display());
        Ok(())
    }

    /// A reload with its outcome counted and logged; the error is returned to the caller.
    pub fn reload_counted(&mut self) -> Result<(), String> {
        match self.reload() {
            Ok(()) => {
                self.reloads_ok += 1;
                Ok(())
            }
            Err(e) => {
                self.reloads_error += 1;
                let e = format!("{e:#}");
                error!("reload failed, keeping the running config: {e}");
                Err(e)
            }
        }
    }

    /// Runs until `shutdown` resolves. `stats_every` prints the global counters.
    pub async fn run(
        &mut self,
        shutdown: impl std::future::Future<Output = ()>,
        stats_every: Option<Duration>,
    ) -> anyhow::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let (admin_tx, mut admin_rx) = mpsc::channel(64);
        admin::spawn(self.config.admin.listen, self.auth.clone(), admin_tx).await;
        // Closed when the API could not bind (or stopped): the arm below is then disabled.
        let mut admin_open = true;
        self.resolve();
        let before = self.table_rebuilds;
        // Before the first plan nothing of this agent's serves: a failure here stops it.
        self.try_replan("start")?;
        if self.table_rebuilds == before {
            info!("start: applied nothing: the adopted maps already match the config");
        }
        let mut hup = signal(SignalKind::hangup())?;
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
        // Health changes not planned yet (waiting for `next_health_replan`).
        let mut health_pending = false;
        let mut stats = tokio::time::interval(stats_every.unwrap_or(Duration::from_secs(3600)));
        stats.tick().await;
        tokio::pin!(shutdown);
        loop {
            let step = self
                .next_step
                .map(|t| tokio::time::Instant::from_std(self.started + t));
            let health_at = health_pending
                .then(|| self.next_health_replan())
                .flatten()
                .map(tokio::time::Instant::from_std);
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                Some(ev) = self.events.recv() => {
                    let mut changed = self.on_event(ev);
                    // Drain what else arrived, then plan once.
                    while let Ok(ev) = self.events.try_recv() {
                        changed |= self.on_event(ev);
                    }
                    health_pending |= changed;
                    if health_pending
                        && self.next_health_replan().is_none_or(|t| Instant::now() >= t)
                    {
                        health_pending = false;
                        self.replan("health change");
                    }
                }
                _ = async { tokio::time::sleep_until(health_at.unwrap_or_else(tokio::time::Instant::now)).await }, if health_at.is_some() => {
                    health_pending = false;
                    self.replan("health change");
                }
                _ = self.resolver.changed() => {
                    if self.resolve() {
                        self.replan("next hops changed");
                    }
                }
                _ = tokio::time::sleep_until(next_resolve) => {
                    if (self.resolver.due() || !self.pinned_macs.is_empty()) && self.resolve() {
                        self.replan("next hops changed");
                    }
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
                    let mut guard = guard?;
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
            }
        }
    }
}

impl<D: DataplaneOps> Agent<D> {
    /// Answers an admin API request; a dropped reply (the client went away) is fine.
    fn answer(&mut self, req: admin::Request) {
        match req {
            admin::Request::Change {
                service,
                addr,
                change,
                reply,
            } => {
                let _ = reply.send(self.api_change(&service, addr, change));
            }
            admin::Request::Reload(reply) => {
                let _ = reply.send(self.reload_counted());
            }
            admin::Request::Ready(reply) => {
                let _ = reply.send(self.last_plan.is_some());
            }
            admin::Request::Snapshot { conntrack, reply } => {
                let _ = reply.send(self.snapshot(conntrack).map_err(|e| format!("{e:#}")));
            }
        }
    }

    /// The state the admin API reports, with the counters read now; `conntrack` also
    /// counts the tracked flows (a walk over the whole map).
    pub fn snapshot(&self, conntrack: bool) -> anyhow::Result<admin::Snapshot> {
        let counters = gateway_common::STAT_NAMES
            .iter()
            .zip(self.dp.global_stats()?)
            .map(|(n, v)| admin::Counter {
                name: n.to_string(),
                value: v,
            })
            .collect();
        let traffic = |t: gateway_common::TrafficStats| admin::Traffic {
            packets: t.packets,
            bytes: t.bytes,
            new_flows: t.new_flows,
        };
        let mut services = Vec::new();
        let planned = self.last_plan.as_ref().map_or(&[][..], |p| &p.services[..]);
        for sp in planned {
            let Some(sc) = self.config.services.iter().find(|s| s.name == sp.name) else {
                continue;
            };
            let mut backends = Vec::new();
            for b in &sp.backends {
                let rec = self.records.get(&(sp.name.clone(), b.address));
                backends.push(admin::BackendStatus {
                    address: b.address.to_string(),
                    id: b.id,
                    state: b.state_word().to_string(),
                    reason: b.reason.clone(),
                    weight: b.weight,
                    effective_weight: b.effective_weight,
                    backup: b.backup,
                    slots: b.slots,
                    share: if sp.table_size == 0 {
                        0.0
                    } else {
                        b.slots as f64 * 100.0 / f64::from(sp.table_size)
                    },
                    health_up: b.health_up,
                    last_probe: rec
                        .and_then(|r| r.last.as_ref())
                        .map(|p| admin::ProbeStatus {
                            ok: p.ok,
                            reason: p.reason.to_string(),
                            latency_ms: p.latency.as_secs_f64() * 1000.0,
                        }),
                    transitions: rec
                        .map(|r| r.transitions.iter().cloned().collect())
                        .unwrap_or_default(),
                    transitions_total: rec.map_or(0, |r| r.transitions_total),
                    traffic: traffic(self.dp.backend_stats(b.id)?),
                    api_override: self.overrides.get(&sp.name, b.address).cloned(),
                });
            }
            services.push(admin::ServiceStatus {
                name: sp.name.clone(),
                vip: sc.vip.to_string(),
                port: sc.port,
                protocol: sc.protocol.to_string(),
                mode: sc.mode.to_string(),
                table_size: sp.table_size,
                panic: sp.panic,
                traffic: traffic(self.dp.service_stats(sp.id)?),
                backends,
            });
        }
        Ok(admin::Snapshot {
            dataplane: admin::DataplaneStatus {
                interface: self.config.dataplane.interface.clone(),
                xdp_mode: self.dp.attached_mode().map(|m| m.to_string()),
                program_id: self.dp.program_id(),
                conntrack_entries: conntrack.then(|| self.dp.conntrack_len()),
                conntrack_capacity: self.dp.options().conntrack_size,
                counters,
            },
            services,
            table_rebuilds: self.table_rebuilds,
            reloads_ok: self.reloads_ok,
            reloads_error: self.reloads_error,
            map_write_errors: self.map_write_errors,
            probe_latency: {
                let mut v: Vec<admin::LatencyHistogram> = self
                    .probe_latency
                    .iter()
                    .map(|(svc, (counts, sum))| admin::LatencyHistogram {
                        service: svc.clone(),
                        le: PROBE_BUCKETS.to_vec(),
                        counts: counts.to_vec(),
                        sum_seconds: *sum,
                    })
                    .collect();
                v.sort_by(|a, b| a.service.cmp(&b.service));
                v
            },
        })
    }
}

/// Sets the allocator up for an agent whose big buffers (65537-slot tables, a thousand
/// backends' plans) come and go with every replan: with glibc's default, freed blocks of
/// that size stay in the heap and fragment it, so the agent's memory would grow to its
/// worst moment and stay there. A fixed mmap threshold gives such blocks their own
/// mappings, returned to the kernel when freed.
pub fn tune_allocator() {
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

pub fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Prints the global counters as one `stats name=value ...` line.
pub fn print_stats(dp: &impl DataplaneOps) -> anyhow::Result<()> {
    let stats = dp.global_stats()?;
    let line: Vec<String> = gateway_common::STAT_NAMES
        .iter()
        .zip(&stats)
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    println!("stats {}", line.join(" "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use gateway_common::{BACKEND_DRAIN, BACKEND_UP};

    use super::*;
    use crate::{config::AdminState, testing::FakeDataplane};

    const B1: &str = "198.18.0.11";
    const B2: &str = "198.18.0.12";

    /// An agent over in-memory maps: one l2dsr service, two unprobed backends whose next
    /// hops are known, first plan applied.
    fn agent(dir: &std::path::Path) -> Agent<FakeDataplane> {
        let text = format!(
            "[dataplane]\ninterface = \"eth0\"\n[admin]\nstate_file = \"{}\"\n\
             [[service]]\nname = \"web\"\nvip = \"198.18.1.1\"\nport = 80\n\
             protocol = \"tcp\"\nmode = \"l2dsr\"\n[service.health]\nkind = \"none\"\n\
             [[service.backend]]\naddress = \"{B1}\"\n[[service.backend]]\naddress = \"{B2}\"\n",
            dir.join("overrides.json").display()
        );
        let config = Config::parse(&text, std::path::Path::new("t.toml")).unwrap();
        let dp = FakeDataplane {
            options: load_options(&config),
            ..FakeDataplane::default()
        };
        let mut a = Agent::new(config, dir.join("t.toml"), dp);
        for (i, b) in [B1, B2].iter().enumerate() {
            a.macs
                .insert(b.parse().unwrap(), Ok([2, 0, 0, 0, 0, i as u8]));
        }
        a.try_replan("start").unwrap();
        a
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("gateway-agent-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// The state byte of the backend at `addr` in the maps.
    fn state_in_maps(a: &Agent<FakeDataplane>, addr: &str) -> u8 {
        let addr: IpAddr = addr.parse().unwrap();
        let key = crate::plan::addr16(addr);
        a.dp.maps
            .backends
            .values()
            .find(|b| b.addr == key)
            .map(|b| b.state)
            .expect("backend in the maps")
    }

    #[tokio::test]
    async fn an_api_change_reaches_the_maps_and_survives_in_the_state_file() {
        let dir = scratch("change");
        let mut a = agent(&dir);
        assert_eq!(state_in_maps(&a, B1), BACKEND_UP);
        let c = a
            .api_change(
                "web",
                B1.parse().unwrap(),
                BackendChange::State(AdminState::Drain),
            )
            .unwrap();
        assert_eq!((c.from.as_str(), c.to.as_str()), ("ready", "drain"));
        assert_eq!(state_in_maps(&a, B1), BACKEND_DRAIN);
        assert_eq!(state_in_maps(&a, B2), BACKEND_UP);
        let saved = std::fs::read_to_string(dir.join("overrides.json")).unwrap();
        assert!(saved.contains("drain"), "{saved}");
        // Back to the file's value: the override goes.
        a.api_change(
            "web",
            B1.parse().unwrap(),
            BackendChange::State(AdminState::Ready),
        )
        .unwrap();
        assert_eq!(state_in_maps(&a, B1), BACKEND_UP);
        assert!(a.overrides.get("web", B1.parse().unwrap()).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The one rule for a failed map write: the API change is undone and answered with an
    /// error, the failure counted and a retry planned; the agent goes on.
    #[tokio::test]
    async fn an_api_change_that_cannot_be_written_is_undone() {
        let dir = scratch("fail");
        let mut a = agent(&dir);
        a.dp.fail_writes = true;
        let r = a.api_change(
            "web",
            B1.parse().unwrap(),
            BackendChange::State(AdminState::Drain),
        );
        assert!(matches!(r, Err(admin::ChangeError::Apply(_))), "{r:?}");
        assert_eq!(a.map_write_errors, 1);
        assert!(a.retry_at.is_some());
        assert!(a.overrides.get("web", B1.parse().unwrap()).is_none());
        let b1 = &a.config.services[0].backends[0];
        assert_eq!(b1.state, AdminState::Ready);
        assert_eq!(state_in_maps(&a, B1), BACKEND_UP);
        // A refused change is not a write failure.
        let r = a.api_change("nope", B1.parse().unwrap(), BackendChange::Weight(5));
        assert!(matches!(r, Err(admin::ChangeError::Refused(_))), "{r:?}");
        assert_eq!(a.map_write_errors, 1);
        // Once the maps take writes again, the retry rewrites them and changes work.
        a.dp.fail_writes = false;
        a.replan("retry after a failed map write");
        a.api_change(
            "web",
            B1.parse().unwrap(),
            BackendChange::State(AdminState::Drain),
        )
        .unwrap();
        assert_eq!(state_in_maps(&a, B1), BACKEND_DRAIN);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
