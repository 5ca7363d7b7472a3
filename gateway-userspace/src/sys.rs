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
    #[error(
        "pin_dir {} is not on a bpffs ({} is not one): mount one with `mount -t bpf bpf {BPFFS}`, or set dataplane.pin_dir to a directory on a mounted bpffs",
        .pin_dir.display(),
        .checked.display()
    )]
    NoBpffs {
        pin_dir: std::path::PathBuf,
        /// The nearest existing directory of `pin_dir`, whose filesystem was checked.
        checked: std::path::PathBuf,
    },
}

/// Seconds of CLOCK_MONOTONIC: the clock the program stamps table slots with
/// (`bpf_ktime_get_coarse_ns`, the same clock read coarsely).
pub fn monotonic_secs() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes only `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u32
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

/// Whether `pin_dir` is (or, once created, will be) on a bpffs: the filesystem of its
/// nearest existing directory. Any bpffs will do, not only the one at [`BPFFS`]
/// (`ip netns exec` remounts /sys, and with it hides that one).
pub fn check_pin_dir(pin_dir: &Path) -> Result<(), PreflightError> {
    let checked = pin_dir
        .ancestors()
        .find(|p| p.is_dir())
        .unwrap_or(Path::new("/"));
    if bpffs_mounted(checked) {
        Ok(())
    } else {
        Err(PreflightError::NoBpffs {
            pin_dir: pin_dir.to_path_buf(),
            checked: checked.to_path_buf(),
        })
    }
}

/// Everything `gateway run` needs before it touches the kernel, checked in the order a
/// user would fix them.
pub fn preflight(interface: &str, pin_dir: &Path) -> Result<u32, PreflightError> {
    if !is_root() {
        return Err(PreflightError::NotRoot);
    }
    let idx = ifindex(interface).ok_or_else(|| PreflightError::NoInterface(interface.into()))?;
    check_pin_dir(pin_dir)?;
    Ok(idx)
}

/// `ioctl(req)` on a socket for interface `iface`, which answers for the socket's network
/// namespace (sysfs would show whichever namespace /sys was mounted in, and `nsenter` does
/// not remount it). None if the name is not an interface name or the call fails.
fn interface_ioctl(iface: &str, req: libc::Ioctl) -> Option<libc::ifreq> {
    let name = iface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: a plain socket, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: the SIOCGIF* requests read the NUL-terminated name and write into `ifr`.
    let rc = unsafe { libc::ioctl(fd, req, &mut ifr) };
    // SAFETY: `fd` is ours.
    unsafe { libc::close(fd) };
    (rc == 0).then_some(ifr)
}

/// The Ethernet MAC address of `iface` in this process's network namespace (SIOCGIFHWADDR).
/// None for an interface that is missing or not Ethernet.
pub fn interface_mac(iface: &str) -> Option<[u8; 6]> {
    let ifr = interface_ioctl(iface, libc::SIOCGIFHWADDR)?;
    // SAFETY: on success the union holds the hardware address.
    let addr = unsafe { ifr.ifr_ifru.ifru_hwaddr };
    if addr.sa_family != libc::ARPHRD_ETHER {
        return None;
    }
    let mut mac = [0u8; 6];
    for (m, b) in mac.iter_mut().zip(addr.sa_data.iter()) {
        *m = *b as u8;
    }
    (mac != [0; 6]).then_some(mac)
}

/// Whether `iface` exists in this process's network namespace, is up and has a carrier
/// (IFF_UP and IFF_RUNNING, SIOCGIFFLAGS).
pub fn interface_up(iface: &str) -> bool {
    let Some(ifr) = interface_ioctl(iface, libc::SIOCGIFFLAGS) else {
        return false;
    };
    // SAFETY: on success the union holds the flags.
    let flags = i32::from(unsafe { ifr.ifr_ifru.ifru_flags });
    let want = libc::IFF_UP | libc::IFF_RUNNING;
    flags & want == want
}

/// This host's addresses in this process's network namespace (getifaddrs), sorted.
pub fn host_addresses() -> Vec<std::net::IpAddr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut p = list;
    while !p.is_null() {
        // SAFETY: a node of the list getifaddrs returned.
        let ifa = unsafe { &*p };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: a sockaddr whose family says which kind it is.
            match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
                libc::AF_INET => {
                    // SAFETY: an AF_INET sockaddr is a sockaddr_in.
                    let a = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    out.push(std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)).into());
                }
                libc::AF_INET6 => {
                    // SAFETY: an AF_INET6 sockaddr is a sockaddr_in6.
                    let a = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    out.push(std::net::Ipv6Addr::from(a.sin6_addr.s6_addr).into());
                }
                _ => {}
            }
        }
        p = ifa.ifa_next;
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(list) };
    out.sort();
    out.dedup();
    out
}

/// The first executable `name` on `PATH` (BIRD's `bird`, for example).
pub fn find_program(name: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
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
        let dir = std::env::temp_dir().join("gateway-no-bpffs/eth0");
        let err = check_pin_dir(&dir).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("pin_dir {} is not on a bpffs", dir.display())),
            "{err}"
        );
    }

    /// A pin_dir on a bpffs mounted elsewhere than /sys/fs/bpf is enough.
    #[test]
    fn any_bpffs_holds_the_pins() {
        if !is_root() {
            crate::testing::skip("any_bpffs_holds_the_pins", "mounting a bpffs needs root");
            return;
        }
        let mnt = std::env::temp_dir().join(format!("gateway-bpffs-{}", std::process::id()));
        std::fs::create_dir_all(&mnt).unwrap();
        let c = CString::new(mnt.to_str().unwrap()).unwrap();
        // SAFETY: valid NUL-terminated strings; the mount is undone below.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                c.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "mount bpffs: {}", std::io::Error::last_os_error());
        let result = check_pin_dir(&mnt.join("gateway/eth0"));
        // SAFETY: as above.
        unsafe { libc::umount(c.as_ptr()) };
        let _ = std::fs::remove_dir(&mnt);
        result.unwrap();
    }

    #[test]
    fn only_an_ethernet_interface_has_a_mac() {
        assert_eq!(interface_mac("lo"), None, "loopback is not Ethernet");
        assert_eq!(interface_mac("gw-no-such0"), None);
        assert_eq!(interface_mac(""), None);
        assert!(interface_up("lo"), "loopback is up and running");
        assert!(!interface_up("gw-no-such0"));
        assert!(!interface_up(""));
    }

    #[test]
    fn the_host_has_its_loopback_address() {
        let a = host_addresses();
        assert!(a.contains(&"127.0.0.1".parse().unwrap()), "{a:?}");
    }
}
