//! `cargo xtask setup`: everything a fresh Debian machine lacks for building and testing.
//!
//! Idempotent and quick once done (only file checks and one `rustc +nightly -vV`):
//! - the nightly's `rust-src` (the kernel crate builds `core` itself);
//! - bpf-linker, built against the LLVM that ships inside the installed nightly, into
//!   `~/.cache/gateway/bpf-linker-<nightly version>`; crates.io's default build wants a newer
//!   LLVM than Debian has;
//! - the Debian packages the tests and benches use (iproute2, ethtool, iputils-ping,
//!   util-linux, bpftool, bird2);
//! - bpffs mounted at /sys/fs/bpf.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// What later commands need from the set-up.
pub struct Env {
    pub linker: PathBuf,
}

const BPF_LINKER_VERSION: &str = "0.13.0";
const PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ethtool", "ethtool"),
    ("ping", "iputils-ping"),
    ("nsenter", "util-linux"),
    // The end-to-end bench reads the XDP program's run-time statistics with it.
    ("bpftool", "bpftool"),
    // The routing daemon that announces VIPs (`[bgp]`), and the lab's router.
    ("bird", "bird2"),
    // The status page's browser test: headless Chromium driven over WebDriver.
    ("chromium", "chromium"),
    ("chromedriver", "chromium-driver"),
];

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("gateway")
}

/// Runs the set-up steps that are missing; `verbose` also reports the ones already done.
pub fn ensure(verbose: bool) -> anyhow::Result<Env> {
    let say = |m: &str| {
        if verbose {
            println!("setup: {m}");
        }
    };
    let sysroot = PathBuf::from(
        output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
            .context("the nightly toolchain is required for the kernel crate")?,
    );
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        say("nightly rust-src: present");
    } else {
        println!("setup: installing rust-src for the nightly toolchain");
        crate::status(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    let linker = ensure_bpf_linker(&sysroot, verbose)?;

    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(bin, _)| !on_path(bin))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        say("Debian packages: present");
    } else if is_root() {
        println!("setup: apt-get install {}", missing.join(" "));
        let install = |c: &mut Command| {
            c.env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        if !install(&mut Command::new("apt-get")) {
            crate::status(Command::new("apt-get").args(["update", "-q"]))?;
            if !install(&mut Command::new("apt-get")) {
                bail!("apt-get install {} failed", missing.join(" "));
            }
        }
    } else {
        println!(
            "setup: missing packages {} (install them as root)",
            missing.join(" ")
        );
    }

    if is_root() {
        let mounted = output(Command::new("stat").args(["-f", "-c", "%T", "/sys/fs/bpf"]))
            .map(|t| t == "bpf_fs")
            .unwrap_or(false);
        if mounted {
            say("bpffs: mounted");
        } else {
            println!("setup: mounting bpffs at /sys/fs/bpf");
            crate::status(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
        }
    }
    Ok(Env { linker })
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(bin).is_file()
        || Path::new("/sbin").join(bin).is_file()
}

/// bpf-linker must link against the same LLVM as the nightly that compiles the kernel
/// crate. The nightly ships it as `lib/libLLVM-<major>-rust-<version>.so`; its name gives
/// both the library to link and the bpf-linker feature (`llvm-<major>`).
fn ensure_bpf_linker(sysroot: &Path, verbose: bool) -> anyhow::Result<PathBuf> {
    let lib = std::fs::read_dir(sysroot.join("lib"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .find(|n| n.starts_with("libLLVM-") && n.ends_with(".so"))
        .with_context(|| format!("no libLLVM-*.so in {}/lib", sysroot.display()))?;
    let dylib = lib
        .trim_start_matches("lib")
        .trim_end_matches(".so")
        .to_string();
    let major = dylib
        .trim_start_matches("LLVM-")
        .split('-')
        .next()
        .context("LLVM major version")?
        .to_string();
    let version = output(Command::new("rustc").args(["+nightly", "--version"]))?;
    // "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)" -> "1.97.0-nightly-e50aa6fba"
    let tag: String = version
        .trim_start_matches("rustc ")
        .replace(" (", "-")
        .split_whitespace()
        .next()
        .unwrap_or("unknown")
        .to_string();
    let root = cache_dir().join(format!("bpf-linker-{tag}"));
    let bin = root.join("bin/bpf-linker");
    if bin.is_file() {
        if verbose {
            println!("setup: bpf-linker: {}", bin.display());
        }
        return Ok(bin);
    }
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {major} \
         (about a minute, once)"
    );
    let libdir = sysroot.join("lib");
    let rustflags = format!(
        "-L native={d} -l dylib={dylib} -C link-arg=-Wl,-rpath,{d}",
        d = libdir.display()
    );
    crate::status(
        Command::new("cargo")
            .env("RUSTFLAGS", rustflags)
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{major},no-llvm-linking"))
            .arg("--root")
            .arg(&root),
    )?;
    Ok(bin)
}
