//! `gateway status` without a running agent: needs no root.
use std::process::Command;

#[test]
fn status_without_an_agent_says_so_in_one_line_and_exits_1() {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["status", "--admin", "127.0.0.1:1"])
        .output()
        .expect("run gateway");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        "error: gateway is not running (nothing listens on 127.0.0.1:1)\n"
    );
    assert!(out.stdout.is_empty());
}
