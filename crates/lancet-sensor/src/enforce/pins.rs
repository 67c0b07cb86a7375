//! The pin directory on bpffs: what keeps rules and hooks in force while
//! no agent runs, how pins are checked, put back and removed.

use super::{EnforceError, Enforcer, Result, BPF_FS_MAGIC, ISOLATE_PREFIX, LINK_PREFIX, MAP_NAMES, STAT_SLOTS, SYS_EXIT_PROGRAM};
use libbpf_rs::query::LinkTypeInfo;
use libbpf_rs::{Link, MapCore, MapHandle};
use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `enforce_stats` as pinned by an agent from before it had
/// LANCET_ESTAT_SLOTS slots cannot be reused (libbpf refuses a map of
/// another size, and the whole load with it): it is unpinned, so that this
/// load pins a new one. Only counters are lost; the programs of the old
/// agent keep their map until their links are replaced.
pub(super) fn replace_resized_stats(pin_dir: &Path) {
    let path = pin_dir.join("enforce_stats");
    if !path.exists() {
        return;
    }
    match MapHandle::from_pinned_path(&path).and_then(|m| m.info()) {
        Ok(info) if info.info.max_entries == STAT_SLOTS => {}
        Ok(info) => {
            tracing::info!(pin = %path.display(), slots = info.info.max_entries, "enforce_stats has another size: replaced, its counts start again");
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(pin = %path.display(), "removing the old enforce_stats: {e}");
            }
        }
        Err(e) => tracing::warn!(pin = %path.display(), "reading the pinned enforce_stats: {e}"),
    }
}

/// Whether `path` lies on bpffs.
pub(super) fn on_bpffs(path: &Path) -> io::Result<bool> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut st = MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `c` is a NUL-terminated path and `st` points to writable
    // memory of the size of `struct statfs` for the duration of the call.
    let r = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statfs returned 0, so it filled the struct.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Creates the pin dir after checking it is (to be) on bpffs.
pub(super) fn prepare_pin_dir(pin_dir: &Path) -> Result<()> {
    let mut probe = pin_dir;
    while !probe.exists() {
        match probe.parent() {
            Some(p) => probe = p,
            None => break,
        }
    }
    let ok = on_bpffs(probe).map_err(|source| EnforceError::PinDir { path: probe.to_path_buf(), source })?;
    if !ok && probe != pin_dir {
        return Err(EnforceError::NoBpffs { path: pin_dir.to_path_buf() });
    }
    std::fs::create_dir_all(pin_dir).map_err(|source| EnforceError::PinDir { path: pin_dir.to_path_buf(), source })?;
    if !on_bpffs(pin_dir).map_err(|source| EnforceError::PinDir { path: pin_dir.to_path_buf(), source })? {
        return Err(EnforceError::NoBpffs { path: pin_dir.to_path_buf() });
    }
    Ok(())
}

/// Whether `pin_dir` is (or would be created) on bpffs; creates nothing.
pub fn check_pin_dir(pin_dir: &Path) -> Result<()> {
    let mut probe = pin_dir;
    while !probe.exists() {
        match probe.parent() {
            Some(p) => probe = p,
            None => break,
        }
    }
    match on_bpffs(probe) {
        Ok(true) => Ok(()),
        Ok(false) => Err(EnforceError::NoBpffs { path: pin_dir.to_path_buf() }),
        Err(source) => Err(EnforceError::PinDir { path: probe.to_path_buf(), source }),
    }
}

pub(super) fn io_err(e: libbpf_rs::Error) -> io::Error {
    io::Error::other(e)
}

/// The cgroup id a cgroup link is attached to (0 once its cgroup is gone),
/// or None for other link types.
pub(super) fn link_cgroup(link: &Link) -> Option<u64> {
    match link.info().ok()?.info {
        LinkTypeInfo::Cgroup(c) => Some(c.cgroup_id),
        _ => None,
    }
}

/// The link pinned at `path`, if there is one (checked first: libbpf logs
/// a warning for a missing pin).
pub(super) fn open_link(path: &Path) -> libbpf_rs::Result<Link> {
    if !path.exists() {
        return Err(io::Error::from(io::ErrorKind::NotFound).into());
    }
    Link::open(path)
}

/// Detaches the link pinned at `path` (whoever holds it) and removes the pin.
pub(super) fn destroy_pinned_link(path: &Path) -> io::Result<()> {
    if let Ok(link) = open_link(path) {
        if let Err(e) = link.detach() {
            tracing::debug!(path = %path.display(), "detaching a pinned link: {e}");
        }
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

pub(super) fn pin_link(link: &mut Link, path: &Path) -> Result<()> {
    link.pin(path).map_err(|e| EnforceError::Pin { path: path.to_path_buf(), source: io_err(e) })
}

pub(super) fn obj_pin(fd: &impl AsRawFd, path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: `fd` is open and `c` is a NUL-terminated path, both valid for
    // the duration of the call.
    let r = unsafe { libbpf_rs::libbpf_sys::bpf_obj_pin(fd.as_raw_fd(), c.as_ptr()) };
    if r < 0 {
        return Err(io::Error::from_raw_os_error(-r));
    }
    Ok(())
}

/// Detaches every link pinned under `pin_dir` and removes every pin lancet
/// made there (for uninstall and tests), then the dir when it is empty.
/// A dir that does not exist is fine.
pub fn unpin_all(pin_dir: &Path) -> Result<()> {
    let rd = match std::fs::read_dir(pin_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(EnforceError::PinDir { path: pin_dir.into(), source }),
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let res = if name.starts_with(LINK_PREFIX) || name.starts_with(ISOLATE_PREFIX) {
            destroy_pinned_link(&path)
        } else if MAP_NAMES.contains(&name.as_str()) {
            std::fs::remove_file(&path)
        } else {
            continue;
        };
        res.map_err(|source| EnforceError::Pin { path, source })?;
    }
    match std::fs::remove_dir(pin_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
            tracing::info!(dir = %pin_dir.display(), "pin dir kept: it holds pins lancet did not make");
            Ok(())
        }
        Err(source) => Err(EnforceError::PinDir { path: pin_dir.into(), source }),
    }
}

impl Enforcer {
    /// Pins that went missing while this agent runs (someone removed
    /// files under the pin directory) are pinned again from what the agent
    /// holds: the maps, the root hooks' links, and the write reports' link
    /// when some cgroup still wants it. Returns what was repaired, so the
    /// caller can say so. An isolation's link is held by its pin alone: a
    /// removed one is gone (see [`Enforcer::isolation_pinned`]).
    pub fn repair_pins(&mut self) -> Result<Vec<String>> {
        let mut fixed = Vec::new();
        if !self.cfg.pin_dir.is_dir() {
            prepare_pin_dir(&self.cfg.pin_dir)?;
            fixed.push(self.cfg.pin_dir.display().to_string());
        }
        let dir = self.cfg.pin_dir.clone();
        let mut first_error = None;
        let mut pin = |name: String, fd: &dyn AsRawFd, fixed: &mut Vec<String>| {
            let path = dir.join(&name);
            if path.exists() {
                return;
            }
            // The raw call: libbpf refuses to pin a link it pinned before.
            match obj_pin(&fd.as_raw_fd(), &path) {
                Ok(()) => fixed.push(name),
                Err(source) => {
                    first_error.get_or_insert(EnforceError::Pin { path, source });
                }
            }
        };
        for (name, map) in [
            ("cg_policy", &self.cg_policy),
            ("net_allow", &self.net_allow),
            ("kill_ino", &self.kill_ino),
            ("multicall", &self.multicall),
            ("applets", &self.applets),
            ("enforce_stats", &self.stats),
            ("enforce_events", &self.events),
        ] {
            pin(name.to_string(), &map.as_fd(), &mut fixed);
        }
        for (name, link) in &self.links {
            pin(format!("{LINK_PREFIX}{name}"), &link.as_fd(), &mut fixed);
        }
        if let Some(e) = first_error {
            // What was put back is still reported; the rest is tried again.
            tracing::error!("a pin could not be put back: {e}");
        }
        if !self.write_reports()?.is_empty() && !self.write_reports_attached() {
            self.attach_write_reports()?;
            fixed.push(format!("{LINK_PREFIX}{SYS_EXIT_PROGRAM}"));
        }
        Ok(fixed)
    }
}
