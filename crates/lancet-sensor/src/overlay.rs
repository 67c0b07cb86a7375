//! Overlay storage helpers for drift decisions: where a container's writable
//! layer is ([`overlay_upper_dir`]) and whether a file in the container was
//! written after it started ([`written_in_container`]).
//!
//! With overlay storage (podman, Docker, containerd) a container's root is an
//! overlayfs whose lower layers are the image and whose upper directory starts
//! empty. Anything created in the container, and any image file modified in it
//! (overlayfs copies it up first), is a regular file in the upper directory;
//! an image file that was never written is not. A deleted file is a whiteout
//! (a 0/0 character device), which is not a regular file either.
//!
//! Also where a container's root filesystem is mounted on the host
//! (`mounts_of_dev`), for the permission backend.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

#[cfg(test)]
use crate::mountinfo::unescape;
use crate::mountinfo::{parse_line, super_option};

/// The upper directory of the overlay mounted at `/` in a mountinfo text (the
/// last such mount wins: it is the one on top).
pub fn upper_dir_from_mountinfo(text: &str) -> Option<PathBuf> {
    text.lines()
        .rev()
        .filter_map(|l| parse_line(l).ok())
        .find(|m| m.mount_point == "/" && m.fs_type == "overlay")
        .and_then(|m| super_option(&m.super_options, "upperdir"))
        .map(PathBuf::from)
}

/// The host path of the upper (writable) directory of the overlay that is
/// process `pid`'s root, from `/proc/<pid>/mountinfo`. `None` when the
/// process is gone or its root is not an overlay with an upper directory
/// (e.g. a read-only rootfs). The path is as the host mount namespace sees it
/// (podman and containerd mount the overlay from the host namespace).
pub fn overlay_upper_dir(pid: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
    upper_dir_from_mountinfo(&text)
}

/// Was `path` (absolute, as seen in the container, e.g. from a
/// [`PermRequest`](crate::enforce::PermRequest)) created or modified after the
/// container started? True when it is a regular file in the overlay's upper
/// directory `upper`. This is the drift test for overlay storage: an
/// executable for which this is true did not come from the image.
///
/// `path` is resolved inside `upper` (symlinks in the upper directory cannot
/// lead out of it, `..` is refused). The final component is not followed.
/// A file that was only chmod'ed or chown'ed was copied up too and counts as
/// written. Costs two `openat` and one `fstat`.
///
/// An error when the answer is not known: the upper directory cannot be
/// opened (the agent runs in a container and the path was not joined with
/// its `HOST_ROOT`, or the container went), the path is not a plain
/// absolute one (`..`: a hostile exec may name its file so), or the lookup
/// failed otherwise. Callers must never take an error for "not written".
pub fn written_in_container(upper: &Path, path: &str) -> io::Result<bool> {
    if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{path:?} is not a plain absolute path")));
    }
    let upper_fd = crate::sys::open_path(libc::AT_FDCWD, upper, libc::O_DIRECTORY)?;
    match regular_in_root(upper_fd.as_fd(), path) {
        // Not in the upper directory (or a directory on the way is not):
        // the image's file.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        r => r,
    }
}

/// [`written_in_container`] for a verdict: a file whose origin cannot be
/// told counts as written, so a failure to read never lets drift run.
pub fn written_or_unknown(upper: &Path, path: &str) -> bool {
    written_in_container(upper, path).unwrap_or(true)
}

/// Is `host_path`, an entry of an overlay upper directory, a copy of an
/// image entry that overlayfs made (copy-up), rather than something the
/// container created? Copy-up records where the copy came from in the
/// `trusted.overlay.origin` xattr (`user.overlay.origin` for rootless
/// overlays); entries created in the container carry none. This tells the
/// directories overlayfs copies up before a file below them is written
/// (`/var`, `/var/log` for a write in `/var/log/nginx`) from a directory the
/// workload made. False when the kernel records no origin (lower layers
/// without file handles), or the entry is gone.
pub fn copied_up(host_path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(host_path.as_os_str().as_bytes()) else { return false };
    [c"trusted.overlay.origin", c"user.overlay.origin"].iter().any(|name| {
        // SAFETY: `path` and `name` are NUL-terminated and outlive the call;
        // a null buffer of size 0 only asks for the value's size.
        unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
    })
}

/// `lstat` of `path` resolved inside `root`: the parent directory is
/// resolved in the root, the final component is not followed.
fn regular_in_root(root: BorrowedFd<'_>, path: &str) -> io::Result<bool> {
    let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
    if name.is_empty() || name == "." {
        return Ok(false);
    }
    let dir = crate::sys::open_in_root(root, if parent.is_empty() { "/" } else { parent })?;
    Ok(crate::sys::stat_at(dir.as_fd(), name, false)?.is_regular())
}

/// Mounts of filesystem `dev` in a mountinfo text, as `(mount_point, root)`.
pub(crate) fn mounts_of_dev(text: &str, dev: u64) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| parse_line(l).ok())
        .filter(|m| libc::makedev(m.dev.0, m.dev.1) == dev)
        .map(|m| (m.mount_point, m.root))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_up_origin_is_recognised() {
        let d = tempfile::tempdir().unwrap();
        let made = d.path().join("made");
        std::fs::create_dir(&made).unwrap();
        assert!(!copied_up(&made));
        assert!(!copied_up(&d.path().join("missing")));
        if !crate::features::is_root() {
            return;
        }
        let copy = d.path().join("copy");
        std::fs::create_dir(&copy).unwrap();
        let path = std::ffi::CString::new(copy.to_str().unwrap()).unwrap();
        // SAFETY: `path`, the name and the value are valid for the call.
        let r = unsafe { libc::lsetxattr(path.as_ptr(), c"trusted.overlay.origin".as_ptr(), b"x".as_ptr().cast(), 1, 0) };
        if r == 0 {
            assert!(copied_up(&copy));
        }
    }

    const PODMAN: &str = "79 51 0:41 / / rw,relatime - overlay overlay rw,lowerdir=/var/lib/containers/storage/overlay/l/UQRW:/var/lib/containers/storage/overlay/l/ABCD,upperdir=/var/lib/containers/storage/overlay/cdc0/diff,workdir=/var/lib/containers/storage/overlay/cdc0/work,uuid=on
80 79 0:44 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
81 79 0:45 / /dev rw,nosuid,noexec - tmpfs tmpfs rw,size=65536k,mode=755
90 79 0:25 /containers/storage/overlay-containers/e10c/userdata/hosts /etc/hosts rw,nosuid,nodev shared:5 master:1 - tmpfs tmpfs rw,size=403204k,mode=755
";

    #[test]
    fn parses_podman_root() {
        assert_eq!(upper_dir_from_mountinfo(PODMAN), Some(PathBuf::from("/var/lib/containers/storage/overlay/cdc0/diff")));
        let m = parse_line(PODMAN.lines().next().unwrap()).unwrap();
        assert_eq!(m.dev, (0, 41));
        assert_eq!(m.fs_type, "overlay");
        assert_eq!(m.root, "/");
        let hosts = parse_line(PODMAN.lines().nth(3).unwrap()).unwrap();
        assert_eq!(hosts.mount_point, "/etc/hosts");
        assert_eq!(hosts.fs_type, "tmpfs");
        assert_eq!(hosts.root, "/containers/storage/overlay-containers/e10c/userdata/hosts");
        assert_eq!(mounts_of_dev(PODMAN, libc::makedev(0, 45)), vec![("/dev".into(), "/".into())]);
    }

    #[test]
    fn escapes_in_paths_and_options() {
        assert_eq!(unescape(r"/a\040b\011c\012d\134e"), "/a b\tc\nd\\e");
        assert_eq!(unescape(r"\054x\075y"), ",x=y");
        // Not an escape: kept.
        assert_eq!(unescape(r"a\9bc\0"), r"a\9bc\0");
        assert_eq!(unescape(r"trail\04"), r"trail\04");
        assert_eq!(unescape(r"\777"), r"\777", "above 0xff: not an escape");
        let line = r"100 1 0:50 / /var/lib/my\040store/m rw - overlay overlay rw,lowerdir=/l,upperdir=/var/lib/my\040store/x\054y\075z/diff,workdir=/w";
        let m = parse_line(line).unwrap();
        assert_eq!(m.mount_point, "/var/lib/my store/m");
        assert_eq!(super_option(&m.super_options, "upperdir").as_deref(), Some("/var/lib/my store/x,y=z/diff"));
        // Mounted at "/" → found.
        let root = r"7 1 0:51 / / rw shared:1 - overlay none rw,upperdir=/u\040p,workdir=/w";
        assert_eq!(upper_dir_from_mountinfo(root), Some(PathBuf::from("/u p")));
    }

    #[test]
    fn no_upper_or_not_overlay() {
        assert_eq!(upper_dir_from_mountinfo("1 0 8:1 / / rw - ext4 /dev/sda1 rw"), None);
        // Read-only overlay (no upperdir).
        assert_eq!(upper_dir_from_mountinfo("1 0 0:9 / / ro - overlay overlay ro,lowerdir=/a:/b"), None);
        // The topmost mount at / wins.
        let two = "1 0 0:9 / / rw - overlay overlay rw,upperdir=/first\n2 1 0:10 / / rw - overlay overlay rw,upperdir=/second\n";
        assert_eq!(upper_dir_from_mountinfo(two), Some(PathBuf::from("/second")));
        for bad in ["", "garbage", "1 2 3 4 5 - x", "a b 0:1 / / - overlay o o", "1 2 0:x / / rw - overlay o o"] {
            assert!(parse_line(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn written_in_container_on_a_fake_upper() {
        let d = tempfile::tempdir().unwrap();
        let up = d.path();
        std::fs::create_dir_all(up.join("tmp")).unwrap();
        std::fs::write(up.join("tmp/ls"), b"x").unwrap();
        std::os::unix::fs::symlink("/", up.join("escape")).unwrap();
        std::os::unix::fs::symlink("ls", up.join("tmp/link")).unwrap();
        let w = |p: &str| written_in_container(up, p).map_err(|e| e.to_string());
        assert_eq!(w("/tmp/ls"), Ok(true));
        assert_eq!(w("/tmp"), Ok(false), "a directory");
        assert_eq!(w("/bin/busybox"), Ok(false), "not in the upper dir");
        assert_eq!(w("/tmp/link"), Ok(false), "final symlink not followed");
        // A symlink in the upper dir stays inside it: /escape/tmp/ls is
        // upper/tmp/ls, never the host's /tmp/ls.
        assert_eq!(w("/escape/tmp/ls"), Ok(true));
        assert_eq!(w("/escape/etc/passwd"), Ok(false));
        // Not known: never "not written".
        assert!(w("tmp/ls").is_err(), "relative");
        assert!(w("/tmp/../tmp/ls").is_err(), "dotdot");
        assert!(written_in_container(Path::new("/nonexistent-upper"), "/tmp/ls").is_err(), "an upper dir that cannot be opened");
        assert!(written_or_unknown(Path::new("/nonexistent-upper"), "/tmp/ls"), "unknown is written, for a verdict");
        assert!(written_or_unknown(up, "/../etc/passwd"), "a path with .. is not taken for the image's");
    }
}
