//! A container's writable set, read from inside its mount namespace: the
//! mounts the runtime gave it (volumes, binds, tmpfs) and the directories
//! its service user owns or that are world-writable with the sticky bit
//! (see `lancet_engine::write_sets` for what the set means).
//!
//! Everything here is the container's to shape (its root may hold
//! symlinks, odd names, thousands of entries): paths are opened with
//! `RESOLVE_IN_ROOT` and no symlink is followed, listings are bounded, and
//! what cannot be read is left out. Leaving a directory out only makes the
//! set smaller; the protected set is judged apart, so nothing found here
//! can open it (only a mount can, and mounts are the runtime's).

use super::ns::{self, Ctx};
use super::MountError;
use crate::mountinfo::MountInfo;
use crate::sys;
use lancet_engine::write_sets::{WritableKind, WritableSet};
use std::os::fd::AsFd;
use std::path::PathBuf;

/// The user a container's service runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// The directories whose direct subdirectories are looked at for owned and
/// shared ones: where services keep data, logs, caches, run state and
/// their own configuration.
const CANDIDATE_PARENTS: [&str; 12] =
    ["/", "/var", "/var/lib", "/var/log", "/var/cache", "/var/spool", "/var/www", "/run", "/srv", "/opt", "/home", "/etc"];

/// Entries looked at per candidate directory.
const MAX_ENTRIES_PER_DIR: usize = 512;

/// Filesystems that are the kernel's or the runtime's, never data.
const NOT_DATA: [&str; 11] =
    ["proc", "sysfs", "cgroup", "cgroup2", "devpts", "mqueue", "securityfs", "debugfs", "tracefs", "bpf", "fusectl"];

/// The writable set of the container of `pid`. `root` is the container's
/// root as a path inside its namespace, needed only while `pid` has not
/// pivoted into it yet (the OCI hook). `run_as` is who its service runs as
/// (None or root: no owned directories).
pub fn writable_set(pid: u32, root: Option<PathBuf>, run_as: Option<RunAs>) -> Result<WritableSet, MountError> {
    ns::run(pid, root, move |ctx| Ok(collect(ctx, run_as)))
}

fn collect(ctx: &Ctx, run_as: Option<RunAs>) -> WritableSet {
    let mut set = WritableSet::default();
    if let Ok(mounts) = ctx.mounts() {
        for m in mounts.iter().filter(|m| is_data_mount(m)) {
            // A file bind (`/etc/hosts`) is not a directory to write in.
            let dir = sys::stat_at(ctx.root.as_fd(), m.mount_point.trim_start_matches('/'), false).is_ok_and(|s| s.is_dir());
            if dir {
                set.add(&m.mount_point, WritableKind::Mount);
            }
        }
    }
    let run_as = run_as.filter(|r| r.uid != 0);
    for parent in CANDIDATE_PARENTS {
        let Ok(dir) = sys::open_dir_for_listing(ctx.root.as_fd(), parent) else { continue };
        let Ok(mut names) = sys::list_dir(&dir) else { continue };
        names.sort();
        names.truncate(MAX_ENTRIES_PER_DIR);
        for name in names {
            let Ok(st) = sys::stat_at(dir.as_fd(), &name, false) else { continue };
            if let Some(kind) = kind_of(&st, run_as) {
                let path = if parent == "/" { format!("/{name}") } else { format!("{parent}/{name}") };
                set.add(&path, kind);
            }
        }
    }
    set
}

/// A mount the container may write in: not the root, not read-only, not
/// the kernel's or the runtime's own (`/proc`, `/sys`, `/dev` and its
/// pseudo-terminals).
fn is_data_mount(m: &MountInfo) -> bool {
    let system = ["/proc", "/sys", "/dev"].iter().any(|p| m.mount_point == *p || m.mount_point.starts_with(&format!("{p}/")));
    m.mount_point != "/" && !m.read_only() && !NOT_DATA.contains(&m.fs_type.as_str()) && (!system || m.mount_point == "/dev/shm")
}

/// Why a directory is writable by design, if it is: world-writable with
/// the sticky bit (`/tmp`-like), or writable by the service's user, as
/// owner or through its group.
fn kind_of(st: &sys::Stat, run_as: Option<RunAs>) -> Option<WritableKind> {
    if !st.is_dir() {
        return None;
    }
    if st.mode & 0o1002 == 0o1002 {
        return Some(WritableKind::Shared);
    }
    let r = run_as?;
    let owner = st.uid == r.uid && st.mode & 0o200 != 0;
    let group = st.gid == r.gid && st.mode & 0o020 != 0;
    (owner || group).then_some(WritableKind::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(mode: u32, uid: u32, gid: u32) -> sys::Stat {
        sys::Stat { mode: libc::S_IFDIR | mode, dev: 1, ino: 2, rdev: 0, uid, gid }
    }

    #[test]
    fn owned_and_shared_directories() {
        let redis = Some(RunAs { uid: 100, gid: 101 });
        assert_eq!(kind_of(&st(0o750, 100, 101), redis), Some(WritableKind::Owned));
        // /var/log/postgresql: root:postgres 1775, through the group.
        assert_eq!(kind_of(&st(0o1775, 0, 101), redis), Some(WritableKind::Owned));
        assert_eq!(kind_of(&st(0o1777, 0, 0), None), Some(WritableKind::Shared));
        // Owned but not writable by its owner; another user's; root's.
        assert_eq!(kind_of(&st(0o555, 100, 0), redis), None);
        assert_eq!(kind_of(&st(0o755, 33, 33), redis), None);
        assert_eq!(kind_of(&st(0o755, 0, 0), Some(RunAs { uid: 0, gid: 0 }).filter(|r| r.uid != 0)), None);
        // World-writable without the sticky bit is not by design.
        assert_eq!(kind_of(&st(0o777, 0, 0), None), None);
        let mut file = st(0o1777, 0, 0);
        file.mode = libc::S_IFREG | 0o1777;
        assert_eq!(kind_of(&file, None), None);
    }

    #[test]
    fn data_mounts() {
        let m = |point: &str, fs: &str, opts: &str| MountInfo {
            id: 1,
            parent: 0,
            dev: (0, 1),
            root: "/".into(),
            mount_point: point.into(),
            options: opts.into(),
            fs_type: fs.into(),
            source: "x".into(),
            super_options: String::new(),
        };
        assert!(is_data_mount(&m("/data", "ext4", "rw")));
        assert!(is_data_mount(&m("/scratch", "tmpfs", "rw,nosuid")));
        assert!(is_data_mount(&m("/dev/shm", "tmpfs", "rw")));
        assert!(!is_data_mount(&m("/", "overlay", "rw")));
        assert!(!is_data_mount(&m("/run/secrets", "ext4", "ro")));
        assert!(!is_data_mount(&m("/proc", "proc", "rw")));
        assert!(!is_data_mount(&m("/dev", "tmpfs", "rw")));
        assert!(!is_data_mount(&m("/dev/mqueue", "mqueue", "rw")));
        assert!(!is_data_mount(&m("/sys/fs/cgroup", "cgroup2", "rw")));
        // A prefix of a name is not the directory.
        assert!(is_data_mount(&m("/devices", "tmpfs", "rw")));
    }
}
