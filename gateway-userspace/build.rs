//! Builds the kernel object with aya-build (a nested nightly cargo build of `gateway-ebpf`)
//! and leaves it in OUT_DIR, where `src/object.rs` embeds it. A plain stable `cargo build`
//! therefore never ships a stale object.
//!
//! The linker is found in this order: `CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER`, the cache
//! that `cargo xtask setup` fills (`$XDG_CACHE_HOME/gateway` or `~/.cache/gateway`), `PATH`.
use std::{env, path::PathBuf};

use anyhow::{Context as _, bail};

const LINKER_ENV: &str = "CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER";

fn cached_linker() -> Option<PathBuf> {
    let cache = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?
        .join("gateway");
    // The newest bpf-linker built for some nightly; xtask setup names the directory after the
    // nightly's version and rebuilds it when the nightly changes.
    let mut found: Vec<PathBuf> = std::fs::read_dir(&cache)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin/bpf-linker"))
        .filter(|p| p.is_file())
        .collect();
    found.sort_by_key(|p| p.metadata().and_then(|m| m.modified()).ok());
    found.pop()
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={LINKER_ENV}");
    println!("cargo:rerun-if-env-changed=XDG_CACHE_HOME");
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?)
        .parent()
        .context("workspace root")?
        .to_path_buf();
    let common = root.join("gateway-common");
    println!("cargo:rerun-if-changed={}", common.display());

    if env::var_os("AYA_BUILD_SKIP").is_none() && env::var_os(LINKER_ENV).is_none() {
        match cached_linker() {
            // SAFETY: build scripts are single-threaded at this point.
            Some(linker) => unsafe { env::set_var(LINKER_ENV, linker) },
            None if which_in_path("bpf-linker") => {}
            None => bail!(
                "bpf-linker not found (neither ${LINKER_ENV}, ~/.cache/gateway nor PATH): \
                 run `cargo xtask setup` once"
            ),
        }
    }

    let ebpf = root.join("gateway-ebpf");
    let ebpf = ebpf.to_str().context("non-UTF-8 workspace path")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "gateway-ebpf",
            root_dir: ebpf,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}

fn which_in_path(name: &str) -> bool {
    env::var_os("PATH")
        .map(|p| env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}
