//! The one place lancet makes the file and mount system calls that libc
//! has no safe wrapper for: `openat2` (5.6), `fstat`/`fstatat`/`statx`,
//! `readlinkat`, and the new mount API (`open_tree`, `move_mount`,
//! `mount_setattr`, 5.2–5.12). The libc crate has the syscall numbers but
//! not every wrapper or struct, so the structs are defined here as the
//! kernel's uapi headers lay them out.
//!
//! Paths inside a container are untrusted: they are resolved only by
//! `openat2` with `RESOLVE_IN_ROOT` (absolute symlinks and `..` stay in the
//! container's root), never walked by the host.

use std::ffi::{CStr, CString, OsString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// `struct open_how` (linux/openat2.h). Defined here because libc's is
/// `#[non_exhaustive]` and cannot be built outside it.
#[repr(C)]
#[derive(Debug, Default)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `struct mount_attr` (linux/mount.h), `MOUNT_ATTR_SIZE_VER0`.
#[repr(C)]
#[derive(Debug, Default)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

// linux/mount.h and linux/openat2.h; the same values on every architecture.
const OPEN_TREE_CLONE: libc::c_uint = 0x1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const RESOLVE_IN_ROOT: u64 = 0x10;

/// How container paths are resolved: inside `root` (absolute symlinks and
/// `..` cannot leave it), and no symlink at all, so a learned directory that
/// is a symlink (`/symlinkdir -> /etc`) fails with ELOOP instead of
/// redirecting a bind mount.
const CONTAINER_RESOLVE: u64 = RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `openat2(root, path, how)`; `path` is relative to `root` (a leading `/`
/// also means `root` under `RESOLVE_IN_ROOT`).
fn openat2(root: BorrowedFd<'_>, path: &str, flags: libc::c_int, resolve: u64) -> io::Result<OwnedFd> {
    let c = cstring(if path.is_empty() { "." } else { path })?;
    let how = OpenHow { flags: (flags | libc::O_CLOEXEC) as u64, mode: 0, resolve };
    // SAFETY: `c` is a NUL-terminated string and `how` a valid open_how that
    // both outlive the call; the size passed is the struct's size.
    let fd = check(unsafe {
        libc::syscall(libc::SYS_openat2, root.as_raw_fd(), c.as_ptr(), &how as *const OpenHow, std::mem::size_of::<OpenHow>())
    })?;
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Opens `path` (absolute, as seen inside the container) relative to the
/// container root `root` with `O_PATH`, never leaving the root: symlinks
/// are followed inside it (`RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`). On
/// kernels without openat2 (< 5.6) a component-by-component walk that
/// refuses every symlink and `..`.
pub(crate) fn open_in_root(root: BorrowedFd<'_>, path: &str) -> io::Result<OwnedFd> {
    let rel = path.trim_start_matches('/');
    match openat2(root, rel, libc::O_PATH, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {}
        r => return r,
    }
    let mut cur: Option<OwnedFd> = None;
    for comp in rel.split('/').filter(|c| !c.is_empty() && *c != ".") {
        if comp == ".." {
            return Err(io::Error::from_raw_os_error(libc::EXDEV));
        }
        let dir = cur.as_ref().map_or(root.as_raw_fd(), |f| f.as_raw_fd());
        let next = open_path(dir, comp, libc::O_NOFOLLOW)?;
        if fstat(next.as_raw_fd())?.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(io::Error::from_raw_os_error(libc::ELOOP));
        }
        cur = Some(next);
    }
    match cur {
        Some(f) => Ok(f),
        None => open_path(root.as_raw_fd(), ".", 0),
    }
}

/// `openat(dirfd, path, O_PATH | O_CLOEXEC | extra)`: for host paths
/// (`AT_FDCWD`) and single components.
pub(crate) fn open_path(dirfd: RawFd, path: impl AsRef<std::path::Path>, extra: libc::c_int) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_ref().as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let fd = unsafe { libc::openat(dirfd, c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC | extra) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned to us and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fstat(fd)`.
pub(crate) fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: all-zero bytes are a valid `struct stat` (plain integers).
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer; fstat does not retain it.
    let r = unsafe { libc::fstat(fd, &mut st) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// When `fd` is a pipe, asks the kernel for a buffer of `bytes` (rounded
/// up to pages; capped by `/proc/sys/fs/pipe-max-size` for a process
/// without CAP_SYS_RESOURCE). Returns the pipe's capacity, or None when
/// `fd` is not a pipe. A writer that hands a pipe many KiB at a time
/// blocks, and wakes its reader, less often in a larger one.
pub fn grow_pipe(fd: RawFd, bytes: usize) -> io::Result<Option<usize>> {
    if fstat(fd)?.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return Ok(None);
    }
    let want = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: F_SETPIPE_SZ takes an int and touches no memory of ours.
    if unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, want) } < 0 {
        // Over the limit (EPERM) or busy (EBUSY): keep what it has.
        tracing::debug!(fd, bytes, "pipe not grown: {}", io::Error::last_os_error());
    }
    // SAFETY: as above; F_GETPIPE_SZ only returns the size.
    let size = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
    if size < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Some(size as usize))
}

/// `readlink(/proc/self/fd/N)`: the path of an open fd as seen from our root.
pub(crate) fn fd_path(fd: RawFd) -> io::Result<String> {
    let p = std::fs::read_link(format!("/proc/self/fd/{fd}"))?;
    Ok(p.to_string_lossy().into_owned())
}

/// A `stat` st_dev (userspace dev_t) in the kernel's encoding
/// (`major << 20 | minor`), as BPF sees `inode->i_sb->s_dev`.
/// The host's root directory (device, inode): the root of the host's init,
/// `/proc/1/root`, not the agent's own `/`. An agent run in a container
/// (the DaemonSet, with the host's PID namespace) has its image's root as
/// `/`: compared with that, the runtime before `pivot_root` and the host's
/// own processes would not look like the host's. Read once.
///
/// When init's root cannot be read (an init in a more privileged user
/// namespace, as in some sandboxes), the root of the agent's parent: in a
/// container that is the runtime's shim (conmon, containerd-shim), which is
/// in the host's root; on the host it is a process there too (systemd, a
/// shell). The agent's own `/` only when neither can be read.
pub fn host_root_id() -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    static ROOT: std::sync::OnceLock<Option<(u64, u64)>> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| std::fs::metadata(host_root_dir()).ok().map(|m| (m.dev(), m.ino())))
}

/// The host's root directory as the agent reaches it (see [`host_root_id`]):
/// `/proc/1/root`, `/proc/<parent>/root` or `/`, the first readable.
pub fn host_root_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let parent = PathBuf::from(format!("/proc/{}/root", std::os::unix::process::parent_id()));
        [PathBuf::from("/proc/1/root"), parent].into_iter().find(|p| std::fs::metadata(p).is_ok()).unwrap_or_else(|| {
            tracing::warn!("neither init's nor the parent's root can be read: the agent's own root is taken for the host's");
            PathBuf::from("/")
        })
    })
}

pub fn kernel_dev(st_dev: u64) -> u32 {
    let major = libc::major(st_dev);
    let minor = libc::minor(st_dev);
    (major << 20) | (minor & 0xf_ffff)
}

/// Opens the directory `path` inside the container root `root` as an
/// `O_PATH` handle (the topmost mount there, if something is mounted on it).
pub(crate) fn open_dir_in(root: BorrowedFd<'_>, path: &str) -> io::Result<OwnedFd> {
    openat2(root, path, libc::O_PATH | libc::O_DIRECTORY, CONTAINER_RESOLVE)
}

/// Opens the directory `path` inside `root` for reading its entries.
pub(crate) fn open_dir_for_listing(root: BorrowedFd<'_>, path: &str) -> io::Result<OwnedFd> {
    openat2(root, path, libc::O_RDONLY | libc::O_DIRECTORY, CONTAINER_RESOLVE)
}

/// Opens a file of the host's procfs (`dir` is an fd of `/proc`) for
/// reading. Symlinks such as `thread-self` are followed: procfs is the
/// kernel's, not the container's.
pub(crate) fn open_proc_file(proc: BorrowedFd<'_>, path: &str) -> io::Result<std::fs::File> {
    let c = cstring(path)?;
    // SAFETY: `c` is NUL-terminated and outlives the call.
    let fd = unsafe { libc::openat(proc.as_raw_fd(), c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Opens a directory of the host's procfs for listing.
pub(crate) fn open_proc_dir(proc: BorrowedFd<'_>, path: &str) -> io::Result<OwnedFd> {
    let c = cstring(path)?;
    // SAFETY: `c` is NUL-terminated and outlives the call.
    let fd = unsafe { libc::openat(proc.as_raw_fd(), c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a directory by a host path (`O_PATH`).
pub(crate) fn open_host_dir(path: &str) -> io::Result<OwnedFd> {
    let c = cstring(path)?;
    // SAFETY: `c` is NUL-terminated and outlives the call.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a host file for reading (`O_RDONLY`), e.g. a namespace file.
pub(crate) fn open_host_file(path: &str) -> io::Result<OwnedFd> {
    let c = cstring(path)?;
    // SAFETY: `c` is NUL-terminated and outlives the call.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `readlinkat(dir, path)`.
pub(crate) fn read_link_at(dir: BorrowedFd<'_>, path: &str) -> io::Result<String> {
    let c = cstring(path)?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: `c` is NUL-terminated; `buf` is writable for `buf.len()` bytes.
    let n = unsafe { libc::readlinkat(dir.as_raw_fd(), c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// What `fstatat` says about a file, without following a last symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    pub(crate) mode: u32,
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    /// The device a device file stands for.
    pub(crate) rdev: u64,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

impl Stat {
    pub(crate) fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
    pub(crate) fn is_regular(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }
}

/// `fstatat(dir, name, flags)`; `name` empty means `dir` itself.
pub(crate) fn stat_at(dir: BorrowedFd<'_>, name: &str, follow: bool) -> io::Result<Stat> {
    let c = cstring(name)?;
    let mut flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
    if name.is_empty() {
        flags |= libc::AT_EMPTY_PATH;
    }
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `c` is NUL-terminated; `st` is writable memory of the right
    // size, initialised by the kernel when the call succeeds.
    let r = unsafe { libc::fstatat(dir.as_raw_fd(), c.as_ptr(), st.as_mut_ptr(), flags) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatat succeeded, so it filled `st`.
    let st = unsafe { st.assume_init() };
    Ok(Stat { mode: st.st_mode, dev: st.st_dev, ino: st.st_ino, rdev: st.st_rdev, uid: st.st_uid, gid: st.st_gid })
}

/// The id of the mount `fd` is on (`statx` `STATX_MNT_ID`, 5.8), the same
/// number as `/proc/<pid>/mountinfo`'s first field and fdinfo's `mnt_id`.
pub fn mount_id(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut stx = MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: the empty path is NUL-terminated; `stx` is writable memory of
    // the right size.
    let r = unsafe { libc::statx(fd.as_raw_fd(), c"".as_ptr(), libc::AT_EMPTY_PATH, libc::STATX_MNT_ID, stx.as_mut_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statx succeeded (and the memory was zeroed before).
    let stx = unsafe { stx.assume_init() };
    if stx.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "statx does not report mount ids on this kernel"));
    }
    Ok(stx.stx_mnt_id)
}

/// A detached copy of the mount tree at `dir` (`open_tree(OPEN_TREE_CLONE |
/// AT_RECURSIVE)`): recursive, so mounts below it (`/run/.containerenv`
/// under `/run`) stay visible once the copy is mounted on top.
pub(crate) fn clone_tree(dir: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let flags =
        OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_RECURSIVE as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint;
    // SAFETY: the empty path is NUL-terminated; flags are plain integers.
    let fd = check(unsafe { libc::syscall(libc::SYS_open_tree, dir.as_raw_fd(), c"".as_ptr(), flags) })?;
    // SAFETY: open_tree returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Sets or clears `MOUNT_ATTR_RDONLY` on the one mount `fd` is the root of
/// (never recursive: volumes, `/proc` and the runtime's file binds below
/// keep their own flags). EBUSY when a file on it is open for writing.
pub(crate) fn set_read_only(fd: BorrowedFd<'_>, read_only: bool) -> io::Result<()> {
    let attr = if read_only {
        MountAttr { attr_set: MOUNT_ATTR_RDONLY, ..MountAttr::default() }
    } else {
        MountAttr { attr_clr: MOUNT_ATTR_RDONLY, ..MountAttr::default() }
    };
    // SAFETY: the empty path is NUL-terminated; `attr` is a valid
    // mount_attr that outlives the call, and its size is passed.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    Ok(())
}

/// Mounts the detached tree `tree` on the directory `target`
/// (`move_mount` with both paths empty: no path is walked again).
pub(crate) fn move_onto(tree: BorrowedFd<'_>, target: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: both paths are empty NUL-terminated strings; flags are plain.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    })?;
    Ok(())
}

/// Lazily unmounts the mount whose root `fd` is (and everything mounted
/// below it): `umount2` has no fd form, so the thread's working directory
/// is moved there and `"."` is unmounted. The caller's thread must own its
/// fs state (`unshare(CLONE_FS)`); the working directory goes back to `/`.
pub(crate) fn detach(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fchdir takes an fd by value.
    if unsafe { libc::fchdir(fd.as_raw_fd()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: "." is a NUL-terminated string.
    let r = unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) };
    let err = io::Error::last_os_error();
    // SAFETY: "/" is a NUL-terminated string.
    unsafe { libc::chdir(c"/".as_ptr()) };
    if r < 0 {
        return Err(err);
    }
    Ok(())
}

/// Gives the calling thread its own root and working directory
/// (`unshare(CLONE_FS)`, which `setns(CLONE_NEWNS)` needs in a
/// multi-threaded process) and moves it into the mount namespace `ns`. Only
/// ever called on a dedicated thread that ends afterwards.
pub(crate) fn enter_mount_namespace(ns: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: unshare takes flags by value; CLONE_FS affects this thread only.
    if unsafe { libc::unshare(libc::CLONE_FS) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: setns takes an fd and flags by value.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `dir` the calling thread's root and working directory (the thread
/// owns its fs state after [`enter_mount_namespace`]).
pub(crate) fn chroot_to(dir: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fchdir takes an fd by value; "." and "/" are NUL-terminated.
    unsafe {
        if libc::fchdir(dir.as_raw_fd()) < 0 || libc::chroot(c".".as_ptr()) < 0 || libc::chdir(c"/".as_ptr()) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The device numbers of `/dev/null` (1:3).
pub(crate) fn null_device() -> u64 {
    libc::makedev(1, 3)
}

/// Creates `name` in `dir` as a character device standing for `/dev/null`
/// (mode 0600).
pub(crate) fn mknod_null_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let c = cstring(name)?;
    // SAFETY: `c` is NUL-terminated and outlives the call; the mode and
    // device are plain integers.
    if unsafe { libc::mknodat(dir.as_raw_fd(), c.as_ptr(), libc::S_IFCHR | 0o600, null_device()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `unlinkat(dir, name, 0)`.
pub(crate) fn unlink_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let c = cstring(name)?;
    // SAFETY: `c` is NUL-terminated and outlives the call.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The names in the directory `dir` (opened for reading), `.` and `..` left
/// out.
pub(crate) fn list_dir(dir: &OwnedFd) -> io::Result<Vec<String>> {
    // fdopendir takes ownership of the descriptor it is given; give it a
    // duplicate so `dir` stays the caller's.
    let dup = dir.try_clone()?;
    let raw = std::os::fd::IntoRawFd::into_raw_fd(dup);
    // SAFETY: `raw` is an open directory descriptor we own; on success the
    // DIR stream owns it and closedir closes it.
    let stream = unsafe { libc::fdopendir(raw) };
    if stream.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so `raw` is still ours to close.
        unsafe { libc::close(raw) };
        return Err(e);
    }
    let mut names = Vec::new();
    loop {
        // SAFETY: `stream` is a valid DIR stream until closedir below.
        let ent = unsafe { libc::readdir(stream) };
        if ent.is_null() {
            break;
        }
        // SAFETY: readdir returned a valid dirent whose d_name is a
        // NUL-terminated string, valid until the next readdir call.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        let name = OsString::from_vec(name.to_bytes().to_vec()).to_string_lossy().into_owned();
        if name != "." && name != ".." {
            names.push(name);
        }
    }
    // SAFETY: `stream` is valid and closed exactly once.
    unsafe { libc::closedir(stream) };
    Ok(names)
}

/// Whether this kernel has `mount_setattr` (5.12): asked with a bad fd, it
/// answers EBADF when it exists and ENOSYS when it does not.
pub fn mount_setattr_supported() -> Result<(), String> {
    // SAFETY: a null path and attr with fd -1 are rejected before any memory
    // is read.
    let r =
        unsafe { libc::syscall(libc::SYS_mount_setattr, -1, std::ptr::null::<libc::c_char>(), 0, std::ptr::null::<MountAttr>(), 0usize) };
    let e = io::Error::last_os_error();
    match (r, e.raw_os_error()) {
        (_, Some(libc::ENOSYS)) => Err("this kernel has no mount_setattr (Linux 5.12 or later is needed)".into()),
        (_, Some(libc::EPERM)) => Err("mount_setattr is not permitted here (seccomp, or no CAP_SYS_ADMIN)".into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn kernel_dev_encodes_major_and_minor() {
        assert_eq!(kernel_dev(libc::makedev(8, 1)), (8 << 20) | 1);
        assert_eq!(kernel_dev(libc::makedev(0, 0x2f)), 0x2f);
        assert_eq!(kernel_dev(libc::makedev(259, 0x12345)), (259 << 20) | 0x12345);
    }

    #[test]
    fn paths_resolve_inside_the_root_only() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/passwd"), b"root").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../../etc", d.path().join("up")).unwrap();
        let root = open_path(libc::AT_FDCWD, d.path(), libc::O_DIRECTORY).unwrap();
        let ours = |p: &str| {
            let fd = open_in_root(root.as_fd(), p).unwrap();
            fd_path(fd.as_raw_fd()).unwrap()
        };
        let inside = d.path().join("etc/passwd").to_string_lossy().into_owned();
        // An absolute link and a climb out both land inside the root.
        assert_eq!(ours("/abs"), inside);
        assert_eq!(ours("up/passwd"), inside);
        assert_eq!(ours("/"), d.path().to_string_lossy());
        assert!(open_in_root(root.as_fd(), "/missing").is_err());
        assert!(open_in_root(root.as_fd(), "a\0b").is_err());
    }
}
