//! Running the real `gateway` binary inside a lab's balancer namespace, and talking to the
//! VIP from the client namespace.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Read},
    net::IpAddr,
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lab::Lab;

/// The agent process; killed by PID when dropped.
pub struct Agent {
    child: Option<Child>,
    pub log: Arc<Mutex<Vec<String>>>,
    pub config: std::path::PathBuf,
}

/// A scratch directory for lab `lab`'s configs, tokens and state files: it outlives agent
/// restarts and goes with the lab.
pub fn lab_dir(lab: &Lab) -> std::path::PathBuf {
    lab.scratch_dir()
}

pub fn gateway_bin() -> std::path::PathBuf {
    lab::target_bin("gateway").expect("gateway binary (cargo build --bins)")
}

impl Agent {
    /// Starts `gateway run` in the balancer namespace with `config` and waits until its first
    /// plan is applied.
    pub fn start(lab: &Lab, config: &str) -> Agent {
        Agent::start_via(lab, config, &[])
    }

    /// [`Agent::start`] through `wrapper`, a command that execs the rest (e.g. `setpriv`
    /// with its options), so that the agent keeps its PID.
    pub fn start_via(lab: &Lab, config: &str, wrapper: &[&str]) -> Agent {
        let dir = lab_dir(lab);
        let path = dir.join("gateway.toml");
        std::fs::write(&path, config).unwrap();
        let a = Agent::spawn_via(lab, &path, wrapper);
        assert!(
            a.wait_log("start: applied", Duration::from_secs(20)),
            "agent did not start:\n{}",
            a.log_text()
        );
        a
    }

    /// Starts the agent without waiting for anything.
    pub fn spawn(lab: &Lab, path: &std::path::Path) -> Agent {
        Agent::spawn_via(lab, path, &[])
    }

    fn spawn_via(lab: &Lab, path: &std::path::Path, wrapper: &[&str]) -> Agent {
        Agent::spawn_in(&lab.lb.netns, path, wrapper)
    }

    /// Starts `gateway run` with the config `text` (written to `path`) on balancer `i` of a
    /// scale-out lab and waits until its first plan is applied.
    pub fn start_on(lab: &Lab, i: usize, path: &std::path::Path, text: &str) -> Agent {
        std::fs::write(path, text).unwrap();
        let a = Agent::spawn_in(&lab.lbs[i].netns, path, &[]);
        assert!(
            a.wait_log("start: applied", Duration::from_secs(20)),
            "agent on {} did not start:\n{}",
            lab.lbs[i].name,
            a.log_text()
        );
        a
    }

    fn spawn_in(netns: &str, path: &std::path::Path, wrapper: &[&str]) -> Agent {
        let mut cmd = match wrapper.split_first() {
            Some((program, options)) => {
                let mut c = lab::ns_command(netns, program);
                c.args(options).arg(gateway_bin());
                c
            }
            None => lab::ns_command(netns, gateway_bin()),
        };
        let mut child = cmd
            .args(["run", "--stats-interval", "1", "--config"])
            .arg(path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gateway");
        let log = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if std::env::var_os("GATEWAY_TEST_VERBOSE").is_some() {
                        eprintln!("  agent| {line}");
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        Agent {
            child: Some(child),
            log,
            config: path.to_path_buf(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn count_log(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until a log line contains `needle` (counting from the start of the log).
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_log_count(needle, 1, timeout)
    }

    pub fn wait_log_count(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.count_log(needle) >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Waits until the last line containing `first` is followed by a line containing `then`
    /// (e.g. a health transition and the map update it caused).
    pub fn wait_log_then(&self, first: &str, then: &str, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            {
                let log = self.log.lock().unwrap();
                if let Some(i) = log.iter().rposition(|l| l.contains(first))
                    && log[i + 1..].iter().any(|l| l.contains(then))
                {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Rewrites the config and sends SIGHUP; waits for the reload to be applied.
    pub fn reload(&self, config: &str) {
        let n = self.count_log("reloaded ");
        std::fs::write(&self.config, config).unwrap();
        self.signal(libc::SIGHUP);
        assert!(
            self.wait_log_count("reloaded ", n + 1, Duration::from_secs(10)),
            "no reload:\n{}",
            self.log_text()
        );
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        self.child.take().unwrap().wait().unwrap()
    }

    /// SIGKILL and wait, as a crash would end it.
    pub fn kill(mut self) {
        let mut c = self.child.take().unwrap();
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A config for a lab: one service on the lab's VIP, port 80, with the lab's backends.
pub struct Cfg {
    pub mode: &'static str,
    pub v6: bool,
    pub protocol: &'static str,
    /// Extra lines for the service (e.g. `slowstart = "2s"`).
    pub service_extra: String,
    /// Per backend: extra lines (weight, state, backup), or None to leave it out.
    pub backends: Vec<Option<String>>,
    pub interval_ms: u64,
    pub fall: u32,
    pub rise: u32,
    /// `dataplane.on_exit`.
    pub on_exit: &'static str,
    /// `admin.listen` (inside the balancer's namespace).
    pub admin_listen: String,
    /// Extra `[admin]` lines (token_file, token_for_reads).
    pub admin_extra: String,
    /// Extra `[bgp]` lines in the scale-out lab (agent_grace, ...).
    pub bgp_extra: String,
    /// Extra `[dataplane]` lines (`snat_ports`, ...; `fullnat` adds the SNAT addresses).
    pub dataplane_extra: String,
    /// Extra `[service.health]` lines (`passive_fall`, ...).
    pub health_extra: String,
}

impl Cfg {
    pub fn new(mode: &'static str, v6: bool, n: usize) -> Cfg {
        Cfg {
            mode,
            v6,
            protocol: "tcp",
            service_extra: String::new(),
            backends: vec![Some(String::new()); n],
            interval_ms: 100,
            fall: 2,
            rise: 1,
            on_exit: "detach",
            admin_listen: "127.0.0.1:9180".into(),
            admin_extra: String::new(),
            bgp_extra: String::new(),
            dataplane_extra: String::new(),
            health_extra: String::new(),
        }
    }

    /// How long health checking may take to call a dead backend down: `fall` failed checks
    /// `interval` apart, the last one allowed its whole timeout (`render` sets timeout =
    /// interval).
    pub fn probe_bound(&self) -> Duration {
        Duration::from_millis(u64::from(self.fall) * self.interval_ms + self.interval_ms)
    }

    pub fn render(&self, lab: &Lab) -> String {
        self.render_on(lab, 0)
    }

    /// The config of balancer `i` (its own addresses, pin directory and state file); in the
    /// scale-out lab with `[bgp]` towards the router, and its BIRD's files in
    /// [`bird_dir`].
    pub fn render_on(&self, lab: &Lab, i: usize) -> String {
        let lb = &lab.lbs[i];
        let mut s = self.render_with(
            lab,
            lb,
            &pin_dir_of(lab, i),
            &lab_dir(lab).join(format!("overrides-{i}.json")),
        );
        if lab.router.is_some() {
            s += &format!(
                "\n[bgp]\nlocal_as = {}\nrouter_id = \"{}\"\nannounce_after = \"0s\"\n\
                 bird_dir = \"{}\"\n{}\n\
                 [[bgp.neighbor]]\naddress = \"198.18.0.1\"\nas = {}\nhold_time = \"3s\"\n\
                 [[bgp.neighbor]]\naddress = \"fd00::1\"\nas = {}\nhold_time = \"3s\"\n",
                lab::BALANCER_AS,
                lb.ipv4,
                bird_dir(lab, i).display(),
                self.bgp_extra,
                lab::ROUTER_AS,
                lab::ROUTER_AS,
            );
        }
        s
    }

    fn render_with(
        &self,
        lab: &Lab,
        lb: &lab::Node,
        pin_dir: &std::path::Path,
        state_file: &std::path::Path,
    ) -> String {
        let vip = lab.vip(self.v6);
        let snat = if self.mode == "fullnat" {
            let i = lab.lbs.iter().position(|l| l.name == lb.name).unwrap_or(0);
            let (a4, a6) = lab::snat_addrs(i);
            format!(
                "snat_v4 = [\"{a4}\"]\nsnat_v6 = [\"{a6}\"]\n{}",
                self.dataplane_extra
            )
        } else {
            self.dataplane_extra.clone()
        };
        let mut s = format!(
            "[dataplane]\ninterface = \"eth0\"\nxdp_mode = \"native\"\nconntrack_size = 65536\n\
             ipip_source_v4 = \"{}\"\nipip_source_v6 = \"{}\"\npin_dir = \"{}\"\non_exit = \"{}\"\n{snat}\n\
             [admin]\nlisten = \"{}\"\nstate_file = \"{}\"\n{}\n\
             [[service]]\nname = \"web\"\nvip = \"{vip}\"\nport = 80\nprotocol = \"{}\"\nmode = \"{}\"\n{}\n\
             [service.health]\nkind = \"tcp\"\ninterval = \"{}ms\"\ntimeout = \"{}ms\"\nfall = {}\nrise = {}\njitter = 0.0\n{}\n",
            lb.ipv4,
            lb.ipv6,
            pin_dir.display(),
            self.on_exit,
            self.admin_listen,
            state_file.display(),
            self.admin_extra,
            self.protocol,
            self.mode,
            self.service_extra,
            self.interval_ms,
            self.interval_ms,
            self.fall,
            self.rise,
            self.health_extra
        );
        for (b, extra) in lab.backends.iter().zip(&self.backends) {
            if let Some(extra) = extra {
                let addr: IpAddr = if self.v6 {
                    b.ipv6.into()
                } else {
                    b.ipv4.into()
                };
                s += &format!("\n[[service.backend]]\naddress = \"{addr}\"\n{extra}\n");
            }
        }
        s
    }
}

/// Runs `gateway ARGS` inside `netns`: whether it succeeded, its stdout and its stderr.
pub fn gateway_cli_in(netns: &str, args: &[&str]) -> (bool, String, String) {
    let out = lab::ns_command(netns, gateway_bin())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Where balancer `i` pins its maps: the lab's pin directory, or in the scale-out lab a
/// directory per balancer inside it (removed with the lab either way).
pub fn pin_dir_of(lab: &Lab, i: usize) -> std::path::PathBuf {
    if lab.router.is_none() {
        lab.pin_dir()
    } else {
        lab.pin_dir().join(format!("lb{}", i + 1))
    }
}

/// Balancer `i`'s BIRD directory (`bgp.bird_dir`): its `bird.conf`, `vips.conf`, socket.
pub fn bird_dir(lab: &Lab, i: usize) -> std::path::PathBuf {
    lab_dir(lab).join(format!("bird-lb{}", i + 1))
}

/// Starts balancer `i`'s BIRD once its agent has written the files.
pub fn start_balancer_bird(lab: &Lab, i: usize) -> std::process::Child {
    let dir = bird_dir(lab, i);
    lab::wait_for("the agent's bird.conf", Duration::from_secs(10), || {
        dir.join("bird.conf").is_file() && dir.join("vips.conf").is_file()
    })
    .unwrap();
    lab::start_bird(
        &lab.lbs[i].netns,
        &dir.join("bird.conf"),
        &dir.join("bird.ctl"),
    )
    .unwrap()
}

#[allow(unused_imports)]
pub use lab::client::*;
