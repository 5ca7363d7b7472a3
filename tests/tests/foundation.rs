//! The foundation: the lab builds and tears down, the program loads into a lab namespace in
//! native mode, sees real packets, and the `gateway` binary attaches and detaches cleanly.
mod common;

use std::{
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use gateway::{config::XdpMode, dataplane::Dataplane, sys};
use gateway_common::STAT_RX_PACKETS;

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn program_counts_real_packets_in_a_lab_namespace() {
    if !common::privileged("program_counts_real_packets_in_a_lab_namespace") {
        return;
    }
    let lab = common::lab("f", 1);
    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let agent = common::in_netns(&lab.lb.netns, move || {
        let mut dp = Dataplane::load(Default::default()).expect("load");
        let idx = sys::ifindex("eth0").expect("eth0 in lb namespace");
        let mode = dp
            .attach(idx, "eth0", XdpMode::Native)
            .expect("attach native");
        let before = dp.global_stats().expect("stats")[STAT_RX_PACKETS as usize];
        ready_tx.send(mode).unwrap();
        done_rx.recv().unwrap();
        let after = dp.global_stats().expect("stats")[STAT_RX_PACKETS as usize];
        dp.detach().expect("detach");
        after - before
    });
    let mode = ready_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("agent ready");
    assert_eq!(mode.to_string(), "native");

    // The program passes everything, so the balancer host stays reachable.
    let out = lab::ns_command(&lab.client.netns, "ping")
        .args(["-c", "10", "-i", "0.05", "-W", "2"])
        .arg(lab.lb.ipv4.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ping failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    done_tx.send(()).unwrap();
    let counted = agent.join().expect("agent thread");
    // 10 echo requests, plus any ARP and neighbour traffic.
    assert!(counted >= 10, "counted only {counted} packets");
    assert!(counted < 1000, "counted {counted} packets for 10 pings");
}

fn gateway_bin() -> std::path::PathBuf {
    lab::target_bin("gateway").expect("gateway binary")
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn gateway_run_attaches_and_detaches_on_sigint() {
    if !common::privileged("gateway_run_attaches_and_detaches_on_sigint") {
        return;
    }
    let lab = common::lab("r", 1);
    let dir = tempdir();
    let cfg = dir.join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[dataplane]\ninterface = \"eth0\"\nxdp_mode = \"native\"\npin_dir = \"{}\"\n",
            lab.pin_dir().display()
        ),
    )
    .unwrap();
    let child = lab::ns_command(&lab.lb.netns, gateway_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let lb = lab.lb.netns.clone();
    lab::wait_for("xdp attached", Duration::from_secs(20), || {
        xdp_attached(&lb)
    })
    .unwrap();
    let ping = lab::ns_command(&lab.client.netns, "ping")
        .args(["-c", "5", "-i", "0.05", "-W", "2"])
        .arg(lab.lb.ipv4.to_string())
        .output()
        .unwrap();
    assert!(ping.status.success());
    // SAFETY: signalling our own child by PID.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let rx: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("stats rx_packets="))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no stats line in {stdout:?}"));
    assert!(rx >= 5, "rx_packets={rx}");
    assert!(!xdp_attached(&lb), "program still attached after SIGINT");
    assert!(
        !lab.pin_dir().exists(),
        "pinned state left in {} after SIGINT with on_exit = detach",
        lab.pin_dir().display()
    );
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn gateway_run_explains_a_missing_interface_in_one_line() {
    if !common::privileged("gateway_run_explains_a_missing_interface_in_one_line") {
        return;
    }
    let dir = tempdir();
    let cfg = dir.join("gateway.toml");
    std::fs::write(&cfg, "[dataplane]\ninterface = \"gw-nosuch0\"\n").unwrap();
    let out = Command::new(gateway_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no such interface `gw-nosuch0`"), "{err}");
}

fn xdp_attached(netns: &str) -> bool {
    let out = Command::new("ip")
        .args(["-n", netns, "link", "show", "eth0"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

/// A scratch directory, removed when the test ends (also when it panics).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn join(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> TempDir {
    let d = std::env::temp_dir().join(format!(
        "gateway-t-{}-{}",
        std::process::id(),
        lab::unique_name("d")
    ));
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

#[test]
#[ignore = "privileged: run by `cargo xtask test`"]
fn gateway_run_explains_missing_root_and_missing_bpffs_in_one_line() {
    if !common::privileged("gateway_run_explains_missing_root_and_missing_bpffs_in_one_line") {
        return;
    }
    let dir = tempdir();
    let cfg = dir.join("gateway.toml");
    std::fs::write(&cfg, "[dataplane]\ninterface = \"lo\"\n").unwrap();
    let one_line_error = |out: std::process::Output, want: &str| {
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(want), "{err}");
    };
    // Not root: an unprivileged user.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(gateway_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    one_line_error(out, "must run as root");
    // No bpffs: a private mount namespace where /sys/fs/bpf is unmounted.
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("umount /sys/fs/bpf 2>/dev/null; exec \"$0\" run --config \"$1\"")
        .arg(gateway_bin())
        .arg(&cfg)
        .output()
        .unwrap();
    one_line_error(
        out,
        "pin_dir /sys/fs/bpf/gateway/lo is not on a bpffs (/sys/fs/bpf is not one): mount one \
         with `mount -t bpf bpf /sys/fs/bpf`",
    );
}
