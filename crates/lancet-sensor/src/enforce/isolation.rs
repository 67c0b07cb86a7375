//! Network isolation of one container: packet filters attached to its
//! cgroup while it is isolated, with a deadline the kernel keeps even if
//! the agent dies.

use super::pins::{destroy_pinned_link, link_cgroup, obj_pin, open_link};
use super::{boot_time_ns, cgroup_id, deadline, EnforceError, Enforcer, PolicyFlags, Result, ISOLATE_PREFIX};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Skb {
    Ingress,
    Egress,
}

impl Skb {
    pub(super) fn suffix(self) -> &'static str {
        match self {
            Skb::Ingress => "ingress",
            Skb::Egress => "egress",
        }
    }

    pub(super) fn attach_type(self) -> libbpf_rs::libbpf_sys::bpf_attach_type {
        match self {
            Skb::Ingress => libbpf_rs::libbpf_sys::BPF_CGROUP_INET_INGRESS,
            Skb::Egress => libbpf_rs::libbpf_sys::BPF_CGROUP_INET_EGRESS,
        }
    }
}

impl Enforcer {
    /// Whether the isolation of `cgid` still has its pinned links (a
    /// removed pin lifts the isolation: the link was held by it alone).
    pub fn isolation_pinned(&self, cgid: u64) -> bool {
        [Skb::Ingress, Skb::Egress].iter().all(|&skb| isolation_pin(&self.cfg.pin_dir, cgid, skb).exists())
    }

    /// Cuts a container off the network for `until` (in the kernel: its
    /// deadline holds even if the agent dies): connect/sendmsg/bind fail
    /// with EPERM and its packets are dropped, except loopback and the
    /// rules marked `during_isolation`. Attaches the packet filters to
    /// `cgroup_dir` (which must be the cgroup of `cgid`), pinned as
    /// `isolate-<cgid>-ingress|egress`. Extends an isolation in force.
    /// On error the policy flag may already be set; [`Enforcer::release`] undoes it.
    pub fn isolate(&self, cgid: u64, cgroup_dir: &Path, until: Duration) -> Result<()> {
        let found = cgroup_id(cgroup_dir).map_err(|source| EnforceError::Cgroup { path: cgroup_dir.into(), source })?;
        if found != cgid {
            return Err(EnforceError::CgroupMismatch { path: cgroup_dir.into(), expected: cgid, found });
        }
        let old = self.read_raw_policy(cgid)?.map(|(f, _)| f).unwrap_or(0);
        self.write_raw_policy(cgid, old | PolicyFlags::ISOLATE.bits(), deadline(Some(until)))?;
        let dir = std::fs::File::open(cgroup_dir).map_err(|source| EnforceError::Cgroup { path: cgroup_dir.into(), source })?;
        for (skb, prog) in [(Skb::Ingress, &self.skb_in), (Skb::Egress, &self.skb_out)] {
            let program = if skb == Skb::Ingress { "enf_skb_in" } else { "enf_skb_out" };
            let Some(prog) = prog else {
                let why = self.status.iter().find(|s| s.program == program).and_then(|s| s.error.clone());
                return Err(EnforceError::NotLoaded { program, why: why.unwrap_or_default() });
            };
            let path = isolation_pin(&self.cfg.pin_dir, cgid, skb);
            if let Ok(l) = open_link(&path) {
                if link_cgroup(&l) == Some(cgid) {
                    continue;
                }
                drop(l);
                destroy_pinned_link(&path).map_err(|source| EnforceError::Pin { path: path.clone(), source })?;
            }
            let link = link_create(prog, &dir, skb.attach_type()).map_err(|source| EnforceError::Attach {
                program: program.into(),
                target: cgroup_dir.into(),
                source,
            })?;
            obj_pin(&link, &path).map_err(|source| EnforceError::Pin { path: path.clone(), source })?;
        }
        Ok(())
    }

    /// Ends a container's isolation now: clears the flag and detaches and
    /// unpins its packet filters. Harmless when it is not isolated.
    pub fn release(&self, cgid: u64, cgroup_dir: &Path) -> Result<()> {
        if let Some((flags, _)) = self.read_raw_policy(cgid)? {
            self.write_raw_policy(cgid, flags & !PolicyFlags::ISOLATE.bits(), 0)?;
        }
        tracing::debug!(cgid, dir = %cgroup_dir.display(), "isolation released");
        self.detach_isolation(cgid);
        Ok(())
    }

    pub(super) fn detach_isolation(&self, cgid: u64) {
        for skb in [Skb::Ingress, Skb::Egress] {
            let path = isolation_pin(&self.cfg.pin_dir, cgid, skb);
            if let Err(e) = destroy_pinned_link(&path) {
                tracing::warn!(pin = %path.display(), "removing an isolation link: {e}");
            }
        }
    }

    /// The kernel already ignores an isolation past its deadline; this
    /// removes the flag and the packet filters of those (and filters left
    /// without an isolation). Returns the cgroups released.
    pub fn expire_isolations(&self) -> Result<Vec<u64>> {
        let now = boot_time_ns();
        let mut released = Vec::new();
        for cgid in self.list_cgroups()? {
            if let Some((flags, until)) = self.read_raw_policy(cgid)? {
                if flags & PolicyFlags::ISOLATE.bits() != 0 && until != 0 && until <= now {
                    self.write_raw_policy(cgid, flags & !PolicyFlags::ISOLATE.bits(), 0)?;
                    self.detach_isolation(cgid);
                    released.push(cgid);
                }
            }
        }
        for (_, (cgid, _)) in isolation_pins(&self.cfg.pin_dir) {
            if released.contains(&cgid) {
                continue;
            }
            let active = matches!(self.read_raw_policy(cgid)?,
                Some((f, u)) if f & PolicyFlags::ISOLATE.bits() != 0 && (u == 0 || u > now));
            if !active {
                self.detach_isolation(cgid);
                released.push(cgid);
            }
        }
        Ok(released)
    }

    /// Containers isolated now, with the time left (None: no deadline).
    pub fn isolations(&self) -> Result<Vec<(u64, Option<Duration>)>> {
        let now = boot_time_ns();
        let mut out = Vec::new();
        for cgid in self.list_cgroups()? {
            if let Some((f, u)) = self.read_raw_policy(cgid)? {
                if f & PolicyFlags::ISOLATE.bits() != 0 && (u == 0 || u > now) {
                    out.push((cgid, (u != 0).then(|| Duration::from_nanos(u - now))));
                }
            }
        }
        Ok(out)
    }
}

pub(super) fn isolation_pin(pin_dir: &Path, cgid: u64, skb: Skb) -> PathBuf {
    pin_dir.join(format!("{ISOLATE_PREFIX}{cgid}-{}", skb.suffix()))
}

/// The isolation links pinned in `pin_dir`: path, cgroup id and direction.
pub(super) fn isolation_pins(pin_dir: &Path) -> Vec<(PathBuf, (u64, Skb))> {
    let Ok(rd) = std::fs::read_dir(pin_dir) else { return Vec::new() };
    rd.filter_map(|e| {
        let e = e.ok()?;
        let name = e.file_name().to_string_lossy().into_owned();
        let rest = name.strip_prefix(ISOLATE_PREFIX)?;
        let (id, dir) = rest.split_once('-')?;
        let skb = match dir {
            "ingress" => Skb::Ingress,
            "egress" => Skb::Egress,
            _ => return None,
        };
        Some((e.path(), (id.parse().ok()?, skb)))
    })
    .collect()
}

/// `BPF_LINK_CREATE` for a cgroup program we hold by fd.
pub(super) fn link_create(prog: &OwnedFd, cgroup: &std::fs::File, attach: libbpf_rs::libbpf_sys::bpf_attach_type) -> io::Result<OwnedFd> {
    // SAFETY: both fds are open for the duration of the call; a null opts
    // pointer is allowed by libbpf (no options).
    let fd = unsafe { libbpf_rs::libbpf_sys::bpf_link_create(prog.as_raw_fd(), cgroup.as_raw_fd(), attach, std::ptr::null()) };
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(-fd));
    }
    // SAFETY: bpf_link_create returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolation_pins_are_parsed() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["isolate-42-ingress", "isolate-42-egress", "isolate-x-ingress", "link-enf_exec", "isolate-7-sideways"] {
            std::fs::write(dir.path().join(n), b"").unwrap();
        }
        let mut got: Vec<(u64, &str)> = isolation_pins(dir.path()).into_iter().map(|(_, (c, s))| (c, s.suffix())).collect();
        got.sort();
        assert_eq!(got, vec![(42, "egress"), (42, "ingress")]);
    }
}
