//! The [`Speaker`] on a thread of its own: the agent's loop hands it each VIP's
//! servability and never waits for BIRD (a hung BIRD would otherwise hold up the loop, and
//! with it the health checks, for a command's whole timeout).
//!
//! The thread applies the latest servability it was given (older ones still queued are
//! skipped), asks BIRD how it is once a second when there is nothing new to tell, retries
//! what failed, and publishes what it knows in a [`View`] that the agent's status reads.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{Arc, Mutex, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use log::{error, info};

use super::{Speaker, Unservable, VipState};
use crate::config::{BgpConfig, Config};

/// How often the thread looks without being asked: BIRD still answers, a failure is retried,
/// a hold has ended.
pub const TICK: Duration = Duration::from_secs(1);

/// Each VIP's servability now.
pub type Servable = BTreeMap<IpAddr, Result<(), Unservable>>;

/// What the speaker thread knows, for `/status` and `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub socket: String,
    pub errors: u64,
    pub last_error: Option<String>,
    pub states: BTreeMap<IpAddr, VipState>,
    /// BIRD has the current files.
    pub in_step: bool,
}

enum Msg {
    Servable(Servable),
    Config(Box<Config>),
    /// Withdraw every VIP now; answers whether BIRD was told.
    WithdrawAll(mpsc::Sender<bool>),
    /// Answers once every message before it has been handled.
    Barrier(mpsc::Sender<()>),
}

pub struct SpeakerThread {
    tx: Option<mpsc::Sender<Msg>>,
    view: Arc<Mutex<View>>,
    handle: Option<JoinHandle<()>>,
}

impl SpeakerThread {
    /// Starts the thread for `config` (`None` without `[bgp]`).
    pub fn start(config: &Config) -> Option<SpeakerThread> {
        let sp = Speaker::new(config, Instant::now())?;
        let bgp = config.bgp.clone()?;
        let view = Arc::new(Mutex::new(View {
            socket: sp.paths.socket.display().to_string(),
            states: sp.announcer.states().clone(),
            ..View::default()
        }));
        let (tx, rx) = mpsc::channel();
        let shared = view.clone();
        let handle = std::thread::Builder::new()
            .name("bgp".into())
            .spawn(move || run(sp, bgp, &rx, &shared))
            .ok()?;
        Some(SpeakerThread {
            tx: Some(tx),
            view,
            handle: Some(handle),
        })
    }

    fn send(&self, m: Msg) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(m);
        }
    }

    /// Hands over each VIP's servability (does not wait).
    pub fn servable(&self, s: Servable) {
        self.send(Msg::Servable(s));
    }

    /// A reloaded config: routes, timers, sessions.
    pub fn reconfigure(&self, config: &Config) {
        self.send(Msg::Config(Box::new(config.clone())));
    }

    /// Withdraws every VIP and waits (at most `timeout`) for BIRD to have been told;
    /// whether it was.
    pub fn withdraw_all(&self, timeout: Duration) -> bool {
        let (tx, rx) = mpsc::channel();
        self.send(Msg::WithdrawAll(tx));
        rx.recv_timeout(timeout).unwrap_or(false)
    }

    /// Waits until everything sent before has been handled (for tests, and before a view
    /// that must reflect them).
    pub fn barrier(&self) {
        let (tx, rx) = mpsc::channel();
        self.send(Msg::Barrier(tx));
        let _ = rx.recv_timeout(Duration::from_secs(10));
    }

    pub fn view(&self) -> View {
        self.view.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Drop for SpeakerThread {
    fn drop(&mut self) {
        // Closing the channel ends the thread.
        self.tx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run(mut sp: Speaker, mut bgp: BgpConfig, rx: &mpsc::Receiver<Msg>, view: &Mutex<View>) {
    let mut servable: Option<Servable> = None;
    let mut failing = false;
    let mut last_look = Instant::now();
    loop {
        let now = Instant::now();
        let wait = sp
            .announcer
            .next_deadline()
            .map_or(TICK, |d| d.saturating_duration_since(now))
            .min(TICK.saturating_sub(now.saturating_duration_since(last_look)));
        let mut barriers = Vec::new();
        let mut withdraw: Vec<mpsc::Sender<bool>> = Vec::new();
        match rx.recv_timeout(wait) {
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Ok(first) => {
                // Everything queued, in order; only the latest servability counts.
                for m in std::iter::once(first).chain(rx.try_iter()) {
                    match m {
                        Msg::Servable(s) => servable = Some(s),
                        Msg::Config(c) => {
                            sp.reconfigure(&c);
                            if let Some(b) = c.bgp {
                                bgp = b;
                            }
                        }
                        Msg::WithdrawAll(reply) => withdraw.push(reply),
                        Msg::Barrier(reply) => barriers.push(reply),
                    }
                }
            }
        }
        if !withdraw.is_empty() {
            servable = Some(Servable::new());
            sp.announcer.withdraw_after = Duration::ZERO;
        }
        let look = last_look.elapsed() >= TICK;
        if look {
            last_look = Instant::now();
        }
        if let Some(s) = &servable {
            let told = step(&mut sp, &bgp, s, look, &mut failing);
            for reply in withdraw {
                if told {
                    info!("bgp: withdrew every VIP");
                }
                let _ = reply.send(told);
            }
        }
        if let Ok(mut v) = view.lock() {
            v.errors = sp.errors;
            v.last_error = sp.last_error.clone();
            v.states = sp.announcer.states().clone();
            v.in_step = sp.in_step();
            v.socket = sp.paths.socket.display().to_string();
        }
        for b in barriers {
            let _ = b.send(());
        }
    }
}

/// One turn: tell BIRD what changed, or (when `look`) ask how it is. Returns whether BIRD
/// has the current files.
fn step(sp: &mut Speaker, bgp: &BgpConfig, s: &Servable, look: bool, failing: &mut bool) -> bool {
    let result = match sp.update(bgp, s, Instant::now()) {
        Ok(Some(vips)) => {
            let list: Vec<String> = vips.iter().map(IpAddr::to_string).collect();
            info!("bgp: announcing [{}]", list.join(", "));
            for (vip, st) in sp.announcer.states() {
                if let Err(why) = st.servable {
                    info!("bgp: {vip} not announced: {}", why.as_str());
                }
            }
            Ok(())
        }
        Ok(None) if look => sp.heartbeat(),
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {
            if *failing && sp.in_step() {
                info!("bgp: BIRD answers again and has the current routes");
                *failing = false;
            }
        }
        // Logged when it starts failing, not every second while it does (counted).
        Err(e) if !*failing => {
            *failing = true;
            error!(
                "bgp: {} (retrying every {TICK:?}; balancing goes on)",
                crate::error::Chain(&e)
            );
        }
        Err(_) => {}
    }
    sp.in_step()
}
