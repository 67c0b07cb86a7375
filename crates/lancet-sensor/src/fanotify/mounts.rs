//! The mounts through which a watched filesystem's file handles become paths.
//!
//! fanotify reports a change as a file handle on a filesystem. The handle
//! becomes a path with `open_by_handle_at(mount_fd, …)` and a readlink of
//! the result, and that path is built within the mount `mount_fd` lies on.
//! One filesystem is often mounted several times: on a host with one disk,
//! containers/storage bind-mounts `/var/lib/containers/storage/overlay`
//! onto itself and dockerd does the same with `/var/lib/docker`, while
//! containerd's snapshots stay on the root mount. A handle opened through a
//! mount that does not hold it reads back as `/` (seen on 6.18), so when
//! one descriptor served the whole filesystem, every change in a runtime's
//! storage other than the first one marked was dropped as outside every
//! container (a Docker container's writes never appeared while a podman
//! container was watched). A filesystem therefore keeps one descriptor per
//! mount that a watched directory lies on, and a handle is resolved through
//! the mounts in turn until one holds it.

use crate::mountinfo;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// Mounts kept per filesystem: a host has a mount or two per runtime's
/// storage; past this, directories on further mounts are resolved through
/// the mounts already kept (and their changes may be missed).
const MAX_MOUNTS: usize = 32;

/// One mount of the filesystem, reached through a watched directory on it.
struct Mount {
    fd: OwnedFd,
    /// Its id (`STATX_MNT_ID`), when the kernel reports one.
    id: Option<u64>,
    /// Where it is mounted, as this process sees it; `/` when unknown
    /// (then every path read through it is taken as it reads).
    point: Vec<u8>,
}

/// What a handle resolved to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Resolved {
    /// Its path, and whether the object is already deleted.
    Path(String, bool),
    /// It opened, but no kept mount holds it: it lies outside every watched
    /// mount, so outside every watched directory.
    Outside,
}

/// The mounts of one filesystem that watched directories lie on.
pub(super) struct Mounts {
    list: Vec<Mount>,
}

impl Mounts {
    /// The mounts of a filesystem first reached through `fd`.
    pub(super) fn new(fd: OwnedFd) -> Self {
        let mut m = Mounts { list: Vec::new() };
        m.add(fd);
        m
    }

    /// Keeps `fd` (a watched directory) as the way into its mount, unless
    /// that mount is kept already. True when it was added.
    pub(super) fn add(&mut self, fd: OwnedFd) -> bool {
        let id = crate::sys::mount_id(fd.as_fd()).ok();
        if id.is_some() && self.list.iter().any(|m| m.id == id) {
            return false;
        }
        if self.list.len() >= MAX_MOUNTS {
            tracing::warn!(limit = MAX_MOUNTS, "fanotify: too many mounts of one filesystem; not keeping another");
            return false;
        }
        let point = id.and_then(mount_point).unwrap_or_else(|| b"/".to_vec());
        tracing::debug!(mount = ?id, point = %String::from_utf8_lossy(&point), "fanotify: resolving handles through another mount");
        self.list.push(Mount { fd, id, point });
        true
    }

    /// Opens the handle (`handle`, a laid-out `struct file_handle`) through
    /// each mount in turn. A path read through a mount that holds the
    /// object lies below that mount's point; the first such path that
    /// `wanted` accepts wins, else the first such path at all. An error
    /// when the handle opened through no mount (ESTALE: deleted).
    pub(super) fn resolve(&self, handle: &mut [u32], mut wanted: impl FnMut(&str) -> bool) -> io::Result<Resolved> {
        let mut first: Option<(String, bool)> = None;
        let mut opened = false;
        let mut err = None;
        for m in &self.list {
            let fd = match open_by_handle(&m.fd, handle) {
                Ok(fd) => fd,
                Err(e) => {
                    err = Some(e);
                    continue;
                }
            };
            opened = true;
            let (path, deleted) = match path_of(&fd) {
                Ok(p) => p,
                Err(e) => {
                    err = Some(e);
                    continue;
                }
            };
            if !under(path.as_bytes(), &m.point) {
                continue;
            }
            if wanted(&path) {
                return Ok(Resolved::Path(path, deleted));
            }
            first.get_or_insert((path, deleted));
        }
        match (first, opened, err) {
            (Some((p, d)), _, _) => Ok(Resolved::Path(p, d)),
            (None, true, _) => Ok(Resolved::Outside),
            (None, false, Some(e)) => Err(e),
            (None, false, None) => Err(io::Error::new(io::ErrorKind::NotFound, "no mount to open the handle through")),
        }
    }
}

/// The path of an open object, and whether it is already deleted.
fn path_of(fd: &OwnedFd) -> io::Result<(String, bool)> {
    let mut p = crate::sys::fd_path(fd.as_raw_fd())?;
    let deleted = p.ends_with(" (deleted)");
    if deleted {
        p.truncate(p.len() - " (deleted)".len());
    }
    Ok((p, deleted))
}

/// Where mount `id` is mounted, from this process's mountinfo.
fn mount_point(id: u64) -> Option<Vec<u8>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    point_in(&text, id)
}

fn point_in(mountinfo: &str, id: u64) -> Option<Vec<u8>> {
    mountinfo.lines().filter_map(|l| mountinfo::parse_line(l).ok()).find(|m| m.id == id).map(|m| m.mount_point.into_bytes())
}

/// `path` equals `prefix` or lies below it (component-wise).
pub(super) fn under(path: &[u8], prefix: &[u8]) -> bool {
    if prefix == b"/" {
        return path.first() == Some(&b'/');
    }
    path.starts_with(prefix) && (path.len() == prefix.len() || path[prefix.len()] == b'/')
}

/// `open_by_handle_at(mount, handle, O_PATH)`. `handle` holds a laid-out
/// `struct file_handle`: `handle_bytes`, `handle_type`, then the opaque
/// bytes, with `handle_bytes` no more than what follows in the slice.
fn open_by_handle(mount: &OwnedFd, handle: &mut [u32]) -> io::Result<OwnedFd> {
    let fits = handle.len() >= 2 && (handle[0] as usize).div_ceil(4) <= handle.len() - 2;
    if !fits {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: `handle` is a live, 4-byte aligned `struct file_handle` whose
    // `handle_bytes` bytes of `f_handle` lie within the slice (checked
    // above); the kernel only reads it.
    let fd = unsafe {
        libc::open_by_handle_at(mount.as_raw_fd(), handle.as_mut_ptr().cast::<libc::file_handle>(), libc::O_PATH | libc::O_CLOEXEC)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned to us by the kernel and is owned by
    // nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_by_id_from_mountinfo() {
        let text = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
                    46 27 254:0 /var/lib/docker /var/lib/docker rw,relatime shared:3 - ext4 /dev/vda rw\n\
                    47 27 254:0 /x /var/lib/my\\040store rw - ext4 /dev/vda rw\n\
                    garbage line\n";
        assert_eq!(point_in(text, 46).as_deref(), Some(&b"/var/lib/docker"[..]));
        assert_eq!(point_in(text, 47).as_deref(), Some(&b"/var/lib/my store"[..]));
        assert_eq!(point_in(text, 27).as_deref(), Some(&b"/"[..]));
        assert_eq!(point_in(text, 99), None);
    }

    #[test]
    fn under_is_component_wise() {
        assert!(under(b"/var/lib/docker/overlay2", b"/var/lib/docker"));
        assert!(under(b"/var/lib/docker", b"/var/lib/docker"));
        assert!(!under(b"/var/lib/docker2/x", b"/var/lib/docker"));
        // What a handle outside the mount reads back as.
        assert!(!under(b"/", b"/var/lib/docker"));
        assert!(under(b"/anything", b"/"));
        assert!(!under(b"?/x", b"/"));
    }
}
