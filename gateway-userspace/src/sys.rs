//! Preflight checks on the host, each with an error that says what to do.
use std::{ffi::CString, path::Path};

use thiserror::Error;

/// Where bpffs is expected.
pub const BPFFS: &str = "/sys/fs/bpf";
/// `BPF_FS_MAGIC` from include/uapi/linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PreflightError {
    #[error(
        "gateway must run as root (or with CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON): try `sudo gateway ...`"
    )]
    NotRoot,
    #[error("no such interface `{0}`: check `ip link` and the `interface` setting in [dataplane]")]
    NoInterface(String),
    #[error("bpffs is not mounted at {BPFFS}: run `mount -t bpf bpf {BPFFS}`")]
    NoBpffs,
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The interface's index, if it exists in the current network namespace.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: c is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

pub fn bpffs_mounted(path: &Path) -> bool {
    let Some(c) = path.to_str().and_then(|p| CString::new(p).ok()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is NUL-terminated, st is a valid out-pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// Everything `gateway run` needs before it touches the kernel, checked in the order a
/// user would fix them.
pub fn preflight(interface: &str) -> Result<u32, PreflightError> {
    if !is_root() {
        return Err(PreflightError::NotRoot);
    }
    let idx = ifindex(interface).ok_or_else(|| PreflightError::NoInterface(interface.into()))?;
    if !bpffs_mounted(Path::new(BPFFS)) {
        return Err(PreflightError::NoBpffs);
    }
    Ok(idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_interface_has_no_index() {
        assert_eq!(ifindex("gw-no-such0"), None);
        assert_eq!(ifindex("lo"), Some(1));
    }

    #[test]
    fn a_plain_directory_is_not_bpffs() {
        assert!(!bpffs_mounted(Path::new("/")));
    }
}
