//! `gateway bgp-guard`: withdraws a balancer's VIPs when its agent is gone.
//!
//! The agent announces and withdraws while it runs; nothing of it is left to do so when it
//! has died or hangs, and BIRD would go on announcing VIPs that a dead data plane may not
//! serve. The guard runs beside BIRD (its own systemd unit, `packaging/`), asks the agent's
//! `/healthz` four times a second and looks at the data plane itself: when the agent has
//! not answered for `agent_grace` (longer than a restart takes), or has not answered and the
//! data plane is gone (the pinned link removed, the interface down), it empties `vips.conf`
//! and tells BIRD. A hitless restart (`on_exit = "keep"`) stays within the grace and changes
//! nothing. Once the agent answers again it owns the announcements: it notices the emptied
//! file and announces again (after `announce_after`).
use std::{
    path::Path,
    time::{Duration, Instant},
};

use log::{error, info, warn};

use super::{Paths, SpeakerError, bird, vips_conf, write_atomically};
use crate::{admin, config::Config, pin, sys};

/// How often the guard looks.
pub const PERIOD: Duration = Duration::from_millis(250);
/// How long one `/healthz` may take.
const HEALTHZ_TIMEOUT: Duration = Duration::from_millis(200);

/// The guard's decision, one observation at a time.
#[derive(Debug)]
pub struct Guard {
    pub grace: Duration,
    silent_since: Option<Instant>,
    withdrawn: bool,
}

impl Guard {
    pub fn new(grace: Duration) -> Guard {
        Guard {
            grace,
            silent_since: None,
            withdrawn: false,
        }
    }

    /// Takes what was seen at `now`; returns why every VIP must be withdrawn, once, when
    /// that becomes true.
    pub fn step(&mut self, agent_ok: bool, dataplane_ok: bool, now: Instant) -> Option<String> {
        if agent_ok {
            self.silent_since = None;
            self.withdrawn = false;
            return None;
        }
        let since = *self.silent_since.get_or_insert(now);
        if self.withdrawn {
            return None;
        }
        let silent = now.saturating_duration_since(since);
        let why = if !dataplane_ok {
            format!("the agent does not answer and the data plane is gone ({silent:?})")
        } else if silent >= self.grace {
            format!(
                "the agent has not answered for {silent:?} (agent_grace {:?})",
                self.grace
            )
        } else {
            return None;
        };
        self.withdrawn = true;
        Some(why)
    }
}

/// Whether the agent's admin API answers `/healthz` with 200 within `HEALTHZ_TIMEOUT`.
fn agent_answers(config: &Config) -> bool {
    admin::request_within(
        config.admin.listen,
        "GET",
        "/healthz",
        None,
        None,
        HEALTHZ_TIMEOUT,
    )
    .is_ok_and(|a| a.code == 200)
}

/// Whether the data plane can forward: its link still pinned, the interface up.
fn dataplane_present(config: &Config) -> bool {
    config.dataplane.pin_dir.join(pin::LINK).exists()
        && sys::interface_up(&config.dataplane.interface)
}

/// Empties `vips.conf` and asks BIRD to reread it.
pub fn withdraw_all(paths: &Paths) -> Result<(), SpeakerError> {
    write_atomically(&paths.vips, &vips_conf([])).map_err(|source| SpeakerError::Write {
        path: paths.vips.clone(),
        source,
    })?;
    bird::command(&paths.socket, "configure", Duration::from_secs(2))?;
    Ok(())
}

/// Runs the guard for the config at `path` until `stop` says so.
pub fn run(path: &Path, stop: impl Fn() -> bool) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let Some(bgp) = &config.bgp else {
        anyhow::bail!("{} has no [bgp] section: nothing to guard", path.display());
    };
    let paths = Paths::new(bgp, &config.dataplane.interface);
    let mut guard = Guard::new(bgp.agent_grace);
    info!(
        "guarding the VIPs in {} for the agent at {} (agent_grace {:?})",
        paths.vips.display(),
        config.admin.listen,
        bgp.agent_grace
    );
    let mut pending: Option<String> = None;
    while !stop() {
        let started = Instant::now();
        let agent_ok = agent_answers(&config);
        if let Some(why) = guard.step(agent_ok, dataplane_present(&config), Instant::now()) {
            warn!("withdrawing every VIP: {why}");
            pending = Some(why);
        }
        if agent_ok {
            pending = None;
        }
        // Until BIRD has it (it may be restarting too), try again every period.
        if let Some(why) = &pending {
            match withdraw_all(&paths) {
                Ok(()) => {
                    info!("withdrew every VIP ({why})");
                    pending = None;
                }
                Err(e) => error!("withdrawing every VIP: {}", crate::error::Chain(&e)),
            }
        }
        std::thread::sleep(PERIOD.saturating_sub(started.elapsed()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_within_the_grace_withdraws_nothing() {
        let t0 = Instant::now();
        let mut g = Guard::new(Duration::from_secs(10));
        assert_eq!(g.step(true, true, t0), None);
        assert_eq!(g.step(false, true, t0 + Duration::from_secs(1)), None);
        assert_eq!(g.step(false, true, t0 + Duration::from_secs(9)), None);
        assert_eq!(g.step(true, true, t0 + Duration::from_secs(10)), None);
        // The silence starts over.
        assert_eq!(g.step(false, true, t0 + Duration::from_secs(12)), None);
        assert_eq!(g.step(false, true, t0 + Duration::from_secs(21)), None);
        let why = g.step(false, true, t0 + Duration::from_secs(22)).unwrap();
        assert!(why.contains("has not answered for 10s"), "{why}");
        // Once.
        assert_eq!(g.step(false, true, t0 + Duration::from_secs(30)), None);
        // Back: and a later silence is judged afresh.
        assert_eq!(g.step(true, true, t0 + Duration::from_secs(31)), None);
        assert_eq!(g.step(false, true, t0 + Duration::from_secs(32)), None);
    }

    #[test]
    fn a_silent_agent_whose_data_plane_is_gone_is_withdrawn_at_once() {
        let t0 = Instant::now();
        let mut g = Guard::new(Duration::from_secs(10));
        // The agent itself handles a gone data plane while it answers.
        assert_eq!(g.step(true, false, t0), None);
        let why = g
            .step(false, false, t0 + Duration::from_millis(250))
            .unwrap();
        assert!(why.contains("data plane is gone"), "{why}");
    }
}
