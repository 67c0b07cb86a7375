//! Working inside a container's mount namespace from a multi-threaded
//! agent. Mount changes must be made from inside the namespace (from the
//! host, `open_tree`/`mount_setattr` on `/proc/<pid>/root/...` give EINVAL),
//! and `setns(CLONE_NEWNS)` is refused in a multi-threaded process unless
//! the calling thread first unshares its fs state. So each job gets a
//! dedicated, short-lived thread (never a pooled one, whose root and
//! namespace would leak into later work): it unshares `CLONE_FS`, enters
//! the namespace, makes the container's root its own root, does the job and
//! ends. The agent's other threads stay in the host's namespace.

use super::MountError;
use crate::mountinfo::{self, MountInfo};
use crate::sys;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

/// A thread inside the container's mount namespace, chrooted to its root.
pub(crate) struct Ctx {
    pub(crate) pid: u32,
    /// The host's `/proc` (opened before entering): the container's own
    /// procfs shows another pid namespace.
    pub(crate) proc: OwnedFd,
    /// The container's root; paths are resolved under it only.
    pub(crate) root: OwnedFd,
    /// The mount namespace (nsfs inode), as `mnt:[N]` names it.
    pub(crate) mnt_ns: u64,
    /// The process is the runtime before `pivot_root` (the OCI hook).
    pub(crate) pre_pivot: bool,
}

fn gone_or(pid: u32, what: &str, e: io::Error) -> MountError {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ESRCH) => MountError::ProcessGone { pid },
        _ => MountError::Namespace { pid, what: what.to_string(), source: e },
    }
}

impl Ctx {
    /// Enters the mount namespace of `pid` and makes the container's root
    /// the thread's root: the process's own root once it has pivoted into
    /// it; `root` (a path inside the namespace, e.g. the bundle's `merged`
    /// directory) while the process is still the runtime before
    /// `pivot_root` (at the OCI `createRuntime` hook). Only on a thread of
    /// its own ([`run`]).
    fn enter(pid: u32, root: Option<&Path>) -> Result<Ctx, MountError> {
        let host_proc = sys::open_host_dir("/proc").map_err(|e| MountError::Namespace { pid, what: "/proc".into(), source: e })?;
        let ns = sys::open_host_file(&format!("/proc/{pid}/ns/mnt")).map_err(|e| gone_or(pid, "ns/mnt", e))?;
        let proc_root = sys::open_host_dir(&format!("/proc/{pid}/root")).map_err(|e| gone_or(pid, "root", e))?;
        let mnt_ns = sys::stat_at(ns.as_fd(), "", true).map_err(|e| gone_or(pid, "ns/mnt", e))?.ino;
        // The host's root, not the agent's (in a container they differ).
        let host_id = sys::host_root_id().ok_or_else(|| MountError::Namespace {
            pid,
            what: "/proc/1/root".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        sys::enter_mount_namespace(ns.as_fd()).map_err(|e| MountError::Namespace { pid, what: "setns".into(), source: e })?;
        // Before `pivot_root` the runtime's root is still the host's (the
        // namespace's copy of it, same device and inode); the container's
        // root is then a directory inside it. Afterwards the process's root
        // is the container's.
        let proc_root_id = sys::stat_at(proc_root.as_fd(), "", true).map_err(|e| gone_or(pid, "root", e))?;
        let pre_pivot = (proc_root_id.dev, proc_root_id.ino) == host_id;
        let root_fd = match (pre_pivot, root) {
            (false, _) => proc_root,
            (true, Some(p)) => {
                sys::open_host_dir(&p.to_string_lossy()).map_err(|e| MountError::Root { path: p.to_path_buf(), source: e })?
            }
            (true, None) => return Err(MountError::NoRoot { pid }),
        };
        let r = sys::stat_at(root_fd.as_fd(), "", true).map_err(|e| gone_or(pid, "root", e))?;
        if (r.dev, r.ino) == host_id {
            return Err(MountError::HostRoot { pid });
        }
        sys::chroot_to(root_fd.as_fd()).map_err(|e| MountError::Namespace { pid, what: "chroot".into(), source: e })?;
        // The topmost mount at the root directory, as every path walk
        // inside the container starts from it.
        let root = sys::open_host_dir("/").map_err(|e| MountError::Namespace { pid, what: "container root".into(), source: e })?;
        Ok(Ctx { pid, proc: host_proc, root, mnt_ns, pre_pivot })
    }

    /// The namespace's mounts as the container sees them (mounts outside
    /// its root are not listed).
    pub(crate) fn mounts(&self) -> Result<Vec<MountInfo>, MountError> {
        let mut text = String::new();
        sys::open_proc_file(self.proc.as_fd(), "thread-self/mountinfo")
            .and_then(|mut f| f.read_to_string(&mut text))
            .map_err(MountError::MountInfo)?;
        Ok(mountinfo::parse(&text))
    }

    /// Opens a directory inside the container (no symlink followed).
    pub(crate) fn open(&self, path: &str) -> io::Result<OwnedFd> {
        sys::open_dir_in(self.root.as_fd(), path)
    }

    /// Opens a directory inside the container and names the mount that is
    /// on top there.
    pub(crate) fn mount_at(&self, path: &str) -> io::Result<(OwnedFd, u64)> {
        let fd = self.open(path)?;
        let id = sys::mount_id(fd.as_fd())?;
        Ok((fd, id))
    }
}

/// Runs `job` on a new thread inside the mount namespace of `pid`, with the
/// container's root as its root (see [`Ctx::enter`]), and returns its
/// result. The thread ends with the job, so its namespace and root go with
/// it.
pub(crate) fn run<T, F>(pid: u32, root: Option<PathBuf>, job: F) -> Result<T, MountError>
where
    T: Send + 'static,
    F: FnOnce(&Ctx) -> Result<T, MountError> + Send + 'static,
{
    let handle = std::thread::Builder::new()
        .name("lancet-mounts".into())
        .spawn(move || {
            let ctx = Ctx::enter(pid, root.as_deref())?;
            job(&ctx)
        })
        .map_err(|e| MountError::Thread(format!("spawning the mount thread: {e}")))?;
    handle.join().map_err(|_| MountError::Thread("the mount thread panicked".into()))?
}
