//! Pinned state on bpffs: the maps and the XDP link live in one directory
//! (`/sys/fs/bpf/gateway/<interface>` by default), so that the data plane keeps forwarding
//! while no agent runs and the next agent adopts it instead of starting empty.
//!
//! The directory is root-only (0700; the kernel creates pinned objects 0600). `META` says
//! which map layout the directory holds ([`gateway_common::LAYOUT_VERSION`]) and the sizes
//! the maps were created with.
use std::{
    ffi::CString,
    os::{
        fd::{FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::PermissionsExt},
    },
    path::{Path, PathBuf},
};

use aya::maps::{Array, Map, MapData};
use gateway_common::{LAYOUT_VERSION, MAP_JUMP, MAP_META, MAP_NAMES, META_MAGIC, Meta};
use thiserror::Error;

/// The pinned XDP link's file name in the directory.
pub const LINK: &str = "link";

#[derive(Debug, Error)]
pub enum PinError {
    #[error(
        "pinned state in {dir} has map layout {found}, this gateway uses layout {expected}; \
         remove it with `gateway stop --detach --pin-dir {dir}` (established connections are \
         then placed again) and start again"
    )]
    Layout {
        dir: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error(
        "pinned state in {dir} is incomplete ({what}); remove it with \
         `gateway stop --detach --pin-dir {dir}` and start again"
    )]
    Broken { dir: PathBuf, what: String },
    #[error("{what} {}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> PinError + 'a {
    move |source| PinError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` (and its parents) and makes it root-only.
pub fn prepare(dir: &Path) -> Result<(), PinError> {
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io("restricting", dir))
}

/// The META entry of a pinned directory: None when nothing is pinned there, an error when
/// something is but it cannot be adopted.
pub fn read_meta(dir: &Path) -> Result<Option<Meta>, PinError> {
    let path = dir.join(MAP_META);
    if !path.exists() {
        let leftovers: Vec<String> = MAP_NAMES
            .iter()
            .chain([&LINK, &MAP_JUMP])
            .filter(|n| dir.join(n).exists())
            .map(|n| n.to_string())
            .collect();
        if leftovers.is_empty() {
            return Ok(None);
        }
        return Err(PinError::Broken {
            dir: dir.to_path_buf(),
            what: format!("no {MAP_META}, but {}", leftovers.join(", ")),
        });
    }
    let broken = |what: String| PinError::Broken {
        dir: dir.to_path_buf(),
        what,
    };
    let data = MapData::from_pin(&path).map_err(|e| broken(format!("opening {MAP_META}: {e}")))?;
    let meta: Array<MapData, Meta> = Array::try_from(Map::Array(data))
        .map_err(|e| broken(format!("{MAP_META} is not the expected map: {e}")))?;
    let m = meta
        .get(&0, 0)
        .map_err(|e| broken(format!("reading {MAP_META}: {e}")))?;
    if m.magic != META_MAGIC {
        return Err(broken(format!("{MAP_META} was never written")));
    }
    if m.layout_version != LAYOUT_VERSION {
        return Err(PinError::Layout {
            dir: dir.to_path_buf(),
            found: m.layout_version,
            expected: LAYOUT_VERSION,
        });
    }
    for name in MAP_NAMES {
        if !dir.join(name).exists() {
            return Err(broken(format!("map {name} is missing")));
        }
    }
    Ok(Some(m))
}

/// Writes META into a freshly created directory's map.
pub fn write_meta(map: &mut Array<MapData, Meta>, meta: Meta) -> Result<(), aya::maps::MapError> {
    map.set(0, meta, 0)
}

/// Detaches the pinned link (even if a running agent still holds it open) and removes
/// every pinned object and the directory. Returns what was removed.
pub fn remove(dir: &Path) -> Result<Vec<String>, PinError> {
    let mut removed = Vec::new();
    let link = dir.join(LINK);
    if link.exists() {
        // Removing the pin alone would leave the program attached for as long as some
        // process holds the link open; BPF_LINK_DETACH ends it for every holder.
        match obj_get(&link) {
            Ok(fd) => {
                if let Err(e) = link_detach(&fd) {
                    log::warn!("detaching the link pinned at {}: {e}", link.display());
                }
            }
            Err(e) => log::warn!("opening the link pinned at {}: {e}", link.display()),
        }
        std::fs::remove_file(&link).map_err(io("removing", &link))?;
        removed.push(LINK.to_string());
    }
    for name in MAP_NAMES.iter().chain([&MAP_JUMP]) {
        let p = dir.join(name);
        if p.exists() {
            std::fs::remove_file(&p).map_err(io("removing", &p))?;
            removed.push(name.to_string());
        }
    }
    if dir.exists() {
        std::fs::remove_dir(dir).map_err(io("removing", dir))?;
    }
    Ok(removed)
}

// bpf(2) commands (include/uapi/linux/bpf.h).
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;

fn bpf(cmd: libc::c_long, attr: &mut [u64; 3]) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-padded bpf_attr prefix of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr) as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A new file descriptor for the object pinned at `path`.
fn obj_get(path: &Path) -> std::io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // bpf_attr.obj_get: pathname (u64), bpf_fd (u32), file_flags (u32), path_fd (s32).
    let mut attr = [c.as_ptr() as u64, 0, 0];
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Detaches a link from its hook for every holder (kernel 5.9+).
fn link_detach(fd: &OwnedFd) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // bpf_attr.link_detach: link_fd (u32).
    let mut attr = [fd.as_raw_fd() as u32 as u64, 0, 0];
    bpf(BPF_LINK_DETACH, &mut attr).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_directory_holds_nothing() {
        let dir = std::env::temp_dir().join(format!("gateway-pin-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(read_meta(&dir).unwrap().is_none());
        std::fs::write(dir.join("SERVICES"), b"").unwrap();
        let e = read_meta(&dir).unwrap_err().to_string();
        assert!(e.contains("no META, but SERVICES"), "{e}");
        assert!(e.contains("gateway stop --detach --pin-dir"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
