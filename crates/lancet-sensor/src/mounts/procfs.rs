//! What `/proc` says about a container's processes that decides how
//! immutability can be enforced: which files are open for writing on a
//! mount (they make `mount_setattr(RDONLY)` fail with EBUSY), and whether
//! the container holds `CAP_SYS_ADMIN` (then it could remount itself
//! writable, and nothing lancet does is enforceable).

use crate::sys;
use serde::{Deserialize, Serialize};
use std::io::{self, Read};
use std::os::fd::BorrowedFd;

/// The `CAP_SYS_ADMIN` capability bit (linux/capability.h).
pub const CAP_SYS_ADMIN: u32 = 21;

/// The fields of `/proc/<pid>/fdinfo/<fd>` that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdInfo {
    /// Open flags (`O_WRONLY`, `O_RDWR`…), printed in octal by the kernel.
    pub flags: u32,
    /// The mount the file was opened through.
    pub mnt_id: u64,
}

impl FdInfo {
    /// Opened for writing.
    pub fn writes(&self) -> bool {
        matches!(self.flags & libc::O_ACCMODE as u32, f if f == libc::O_WRONLY as u32 || f == libc::O_RDWR as u32)
    }
}

/// Parses `fdinfo` text; None when `flags` or `mnt_id` is missing or bad.
pub fn parse_fdinfo(text: &str) -> Option<FdInfo> {
    let mut flags = None;
    let mut mnt_id = None;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else { continue };
        match k {
            "flags" => flags = u32::from_str_radix(v.trim(), 8).ok(),
            "mnt_id" => mnt_id = v.trim().parse().ok(),
            _ => {}
        }
    }
    Some(FdInfo { flags: flags?, mnt_id: mnt_id? })
}

/// The effective and bounding capability sets from `/proc/<pid>/status`.
pub fn parse_capabilities(status: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| u64::from_str_radix(v.trim_start_matches(':').trim(), 16).ok())
    };
    Some((field("CapEff")?, field("CapBnd")?))
}

/// Whether a process has `CAP_SYS_ADMIN` in its effective or bounding set:
/// such a container can remount its own root writable (the mounts are in
/// its own user namespace, nothing is locked), so read-only mounts do not
/// bind it. Note: the container runtime (`runc init` at the OCI hook) has
/// every capability until it drops them for the container's process.
pub fn has_cap_sys_admin(pid: u32) -> io::Result<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let (eff, bnd) = parse_capabilities(&status).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no CapEff/CapBnd"))?;
    Ok((eff | bnd) & (1 << CAP_SYS_ADMIN) != 0)
}

/// A process holding a regular file open for writing on a mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Writer {
    /// Host pid.
    pub pid: u32,
    pub comm: String,
    /// The file, as the container sees it.
    pub path: String,
}

/// A process (the lowest pid) in the mount namespace `mnt_ns` (nsfs
/// inode) that has entered the container's root: who to work through when
/// the process lancet knew is gone but the container is not.
pub fn process_in_namespace(mnt_ns: u64) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let host = crate::sys::host_root_id()?;
    let mut pids: Vec<u32> = std::fs::read_dir("/proc").ok()?.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
    pids.sort_unstable();
    pids.into_iter().find(|pid| {
        let ns = std::fs::metadata(format!("/proc/{pid}/ns/mnt")).map(|m| m.ino());
        let root = std::fs::metadata(format!("/proc/{pid}/root"));
        ns.ok() == Some(mnt_ns) && root.is_ok_and(|r| (r.dev(), r.ino()) != host)
    })
}

fn read_small(proc: BorrowedFd<'_>, path: &str) -> io::Result<String> {
    let mut s = String::new();
    sys::open_proc_file(proc, path)?.take(64 * 1024).read_to_string(&mut s)?;
    Ok(s)
}

/// Every process in the mount namespace `mnt_ns` (nsfs inode) with a
/// regular file open for writing through mount `mnt_id`. `proc` is an fd
/// of the host's `/proc`; paths are read as the calling thread sees them
/// (inside the container after it chrooted there). Processes that exit
/// while being read are skipped.
pub(crate) fn writers_on(proc: BorrowedFd<'_>, mnt_ns: u64, mnt_id: u64) -> Vec<Writer> {
    let mut out = Vec::new();
    let Ok(list) = sys::open_proc_dir(proc, ".") else { return out };
    let Ok(pids) = sys::list_dir(&list) else { return out };
    for pid in pids.iter().filter_map(|p| p.parse::<u32>().ok()) {
        if sys::stat_at(proc, &format!("{pid}/ns/mnt"), true).map(|s| s.ino).ok() != Some(mnt_ns) {
            continue;
        }
        let Ok(dir) = sys::open_proc_dir(proc, &format!("{pid}/fdinfo")) else { continue };
        let Ok(fds) = sys::list_dir(&dir) else { continue };
        let comm = read_small(proc, &format!("{pid}/comm")).map(|c| c.trim_end().to_string()).unwrap_or_default();
        for fd in fds {
            let Some(info) = read_small(proc, &format!("{pid}/fdinfo/{fd}")).ok().and_then(|t| parse_fdinfo(&t)) else { continue };
            if !info.writes() || info.mnt_id != mnt_id {
                continue;
            }
            if !sys::stat_at(proc, &format!("{pid}/fd/{fd}"), true).is_ok_and(|s| s.is_regular()) {
                continue;
            }
            let path = sys::read_link_at(proc, &format!("{pid}/fd/{fd}")).unwrap_or_default();
            let w = Writer { pid, comm: comm.clone(), path };
            // The same file on several descriptors (stderr and the error
            // log) is one writer.
            if !out.contains(&w) {
                out.push(w);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fdinfo_of_a_log_file() {
        let t = "pos:\t1234\nflags:\t02102001\nmnt_id:\t106\nino:\t5555\n";
        let i = parse_fdinfo(t).unwrap();
        assert_eq!(i, FdInfo { flags: 0o2102001, mnt_id: 106 });
        assert!(i.writes());
        assert!(!parse_fdinfo("pos:\t0\nflags:\t0100000\nmnt_id:\t7\n").unwrap().writes());
        assert!(parse_fdinfo("pos:\t0\nflags:\t02\nmnt_id:\t7\n").unwrap().writes());
        assert_eq!(parse_fdinfo("pos:\t0\nflags:\t9\nmnt_id:\t7\n"), None);
        assert_eq!(parse_fdinfo("pos:\t0\nflags:\t02\n"), None);
        // eventfd/epoll lines after the common ones are ignored.
        assert!(parse_fdinfo("pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1\neventfd-count: 0\ntfd: 5 events: 19 data: 5\n").is_some());
    }

    #[test]
    fn capabilities() {
        let s =
            "Name:\tsleep\nCapInh:\t0000000000000000\nCapPrm:\t00000000800405fb\nCapEff:\t00000000800405fb\nCapBnd:\t00000000800405fb\n";
        let (e, b) = parse_capabilities(s).unwrap();
        assert_eq!((e, b), (0x800405fb, 0x800405fb));
        assert_eq!((e | b) & (1 << CAP_SYS_ADMIN), 0);
        let privileged = "CapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n";
        assert_ne!(parse_capabilities(privileged).unwrap().0 & (1 << CAP_SYS_ADMIN), 0);
        assert_eq!(parse_capabilities("CapEff:\tzz\nCapBnd:\t0\n"), None);
        assert!(has_cap_sys_admin(std::process::id()).is_ok());
    }

    proptest! {
        #[test]
        fn fdinfo_never_panics(text in ".{0,300}") {
            let _ = parse_fdinfo(&text);
            let _ = parse_capabilities(&text);
        }

        #[test]
        fn fdinfo_round_trip(flags in 0u32..0o7777777, mnt in any::<u64>(), pos in any::<u64>()) {
            let t = format!("pos:\t{pos}\nflags:\t{flags:o}\nmnt_id:\t{mnt}\nino:\t1\n");
            prop_assert_eq!(parse_fdinfo(&t), Some(FdInfo { flags, mnt_id: mnt }));
        }
    }
}
