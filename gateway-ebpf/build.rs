//! Rebuild the object when the linker changes (e.g. after `cargo xtask setup` rebuilt it).
fn main() {
    if let Ok(linker) = std::env::var("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER") {
        println!("cargo:rerun-if-changed={linker}");
    } else if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER");
}
