//! Helpers shared by the privileged integration tests.
#![allow(dead_code)]

pub mod world;

use std::path::PathBuf;

use lab::{Lab, LabSpec};

/// Returns false (after printing why) when the test cannot run here.
pub fn privileged(test: &str) -> bool {
    if !lab::is_root() {
        eprintln!("SKIPPED {test}: needs root for namespaces and XDP (CI runs it as root)");
        return false;
    }
    true
}

/// Writes the embedded XDP_PASS object to a file the lab can hand to iproute2.
pub fn pass_object() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gateway-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("xdp-pass.o");
    if !path.exists() {
        std::fs::write(&path, gateway::object::XDP_PASS).expect("write pass object");
    }
    path
}

pub fn lab(prefix: &str, backends: usize) -> Lab {
    Lab::up(LabSpec {
        name: lab::unique_name(prefix),
        backends,
        pass_object: pass_object(),
        server_bin: PathBuf::from(env!("CARGO_BIN_EXE_lab-server")),
    })
    .expect("lab up")
}

/// Runs `f` on a thread that has entered `netns`; setns(2) only affects that thread.
pub fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        use std::os::fd::AsRawFd;
        // SAFETY: a valid namespace fd; CLONE_NEWNET only switches this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}
