//! Helpers shared by the privileged integration tests.
#![allow(dead_code)]

pub mod agent;
pub mod scenario;
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

/// Writes an embedded map-less object to a file the lab can hand to iproute2.
fn object_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gateway-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    if !path.exists() {
        std::fs::write(&path, bytes).expect("write object");
    }
    path
}

pub fn lab(prefix: &str, backends: usize) -> Lab {
    Lab::up(LabSpec {
        name: lab::unique_name(prefix),
        backends,
        pass_object: object_file("xdp-pass.o", gateway::object::XDP_PASS),
        decap_object: object_file("xdp-decap.o", gateway::object::XDP_DECAP),
        server_bin: PathBuf::from(env!("CARGO_BIN_EXE_lab-server")),
    })
    .expect("lab up")
}

#[allow(unused_imports)]
pub use lab::client::in_netns;
