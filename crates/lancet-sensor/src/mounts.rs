//! Working inside a container's mount namespace: what its mounts are, what
//! it can write, and who holds files open for writing. Immutability (the
//! read-only binds built on this) is in [`crate::enforce`].
//!
//! - [`procfs`]: writers (files open for writing on a mount) and
//!   `CAP_SYS_ADMIN`;
//! - `ns`: the dedicated thread that works inside a container's mount
//!   namespace;
//! - `writable`: the container's writable set (its mounts, the
//!   directories its service user owns).

pub(crate) mod ns;
pub mod procfs;
mod writable;

pub use crate::mountinfo::MountInfo;
pub use crate::sys::mount_setattr_supported;
pub use procfs::{has_cap_sys_admin, process_in_namespace, Writer};
pub use writable::{writable_set, RunAs};

use std::io;
use std::path::PathBuf;

/// Why immutability could not be applied or undone.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The process (and with it, usually, the container) is gone.
    #[error("process {pid} is gone")]
    ProcessGone { pid: u32 },
    #[error("entering the mount namespace of process {pid} ({what}): {source}")]
    Namespace { pid: u32, what: String, source: io::Error },
    /// The process is the runtime before `pivot_root` and no container root
    /// path was given.
    #[error("process {pid} has not entered its container root yet, and no root path was given")]
    NoRoot { pid: u32 },
    #[error("container root {path}: {source}")]
    Root { path: PathBuf, source: io::Error },
    /// A safety stop: the root found is the host's own.
    #[error("refusing to change mounts: the root of process {pid} is the host's root")]
    HostRoot { pid: u32 },
    /// The process now lives in another mount namespace (the container was
    /// restarted, or the pid reused).
    #[error("process {pid} is in mount namespace mnt:[{found}], not mnt:[{expected}] that lancet changed")]
    OtherNamespace { pid: u32, expected: u64, found: u64 },
    /// A mount changed under lancet while it worked.
    #[error("the mount at {path} changed while it was being made read-only")]
    Changed { path: String },
    #[error("{op} {path}: {source}")]
    Syscall { op: &'static str, path: String, source: io::Error },
    #[error("reading mountinfo: {0}")]
    MountInfo(io::Error),
    #[error("{0}")]
    Thread(String),
    /// Some changes could not be undone (each named).
    #[error("could not undo every change: {}", .0.join("; "))]
    Undo(Vec<String>),
}
