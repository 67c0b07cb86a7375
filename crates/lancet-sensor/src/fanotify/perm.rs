//! [`PermGuard`]: the fanotify permission backend of protect mode. The kernel
//! stops a task that execs a file on a protected container root, or opens a
//! protected file, until lancet answers allow or deny; a denied task gets
//! `EPERM` ("Operation not permitted") and the container goes on.
//!
//! # How it is used
//! One fanotify group (`FAN_CLASS_CONTENT`) per agent. Marks are added and
//! removed from any thread through a shared [`PermGuard`] (it is a cheap
//! clone of one `Arc`) while one thread runs [`PermGuard::run`], which reads
//! the events, asks a decider, and answers each one.
//!
//! - [`protect_exec`](PermGuard::protect_exec): `FAN_OPEN_EXEC_PERM` on a
//!   container's root filesystem. Each podman/containerd overlay root is its
//!   own superblock, so a `FAN_MARK_FILESYSTEM` mark covers exactly that
//!   container (verified on kernel 6.18 / podman 4.3: execs in a second
//!   container and on the host produce no event). The root's `st_dev` maps
//!   each event to its label with the one `fstat` of the event fd needed for
//!   (dev, ino) anyway.
//! - [`protect_exec_mount`](PermGuard::protect_exec_mount):
//!   `FAN_OPEN_EXEC_PERM` on one mount of a container besides its root (a
//!   volume, a bind mount of a host directory, a tmpfs). Always a mount
//!   mark: a bind mount shares the host's filesystem, and a filesystem mark
//!   there would put the host's own execs under the container's verdicts.
//!   Events on such mounts are mapped to their label by mount id (`statx`
//!   `STATX_MNT_ID` of the event fd), since one host filesystem may be
//!   mounted into several containers.
//! - [`protect_files`](PermGuard::protect_files): `FAN_OPEN_PERM` inode marks
//!   on single files (`/etc/shadow`).
//! - [`protect_dir_writes`](PermGuard::protect_dir_writes):
//!   `FAN_OPEN_PERM | FAN_EVENT_ON_CHILD` on directories; the decider gets the
//!   opener's write intent (see [Write intent](#write-intent)).
//!
//! # Cost
//! A marked exec costs a round trip to userspace (~12–17 µs same CPU,
//! ~110–130 µs across CPUs, plus the decider). When the decider answers
//! [`PermDecision::ALLOW_REMEMBER`], an *ignore mark* is put on that inode
//! for that event type, so later execs of the same binary never leave the
//! kernel. The ignore mark is added without `FAN_MARK_IGNORED_SURV_MODIFY`:
//! the kernel drops it when the file is modified (a write or truncate through
//! any path), and the next exec is asked about again (verified).
//! Removing and re-adding the filesystem mark does *not* drop ignore marks
//! (they are inode marks of their own; verified): when a profile changes, use
//! [`forget`](PermGuard::forget) (per label, re-resolves the remembered paths)
//! or [`clear_ignores`](PermGuard::clear_ignores) (all labels, complete).
//!
//! # Agent faults
//! Every event read is answered: the decider runs under `catch_unwind`, and a
//! panic, an event that cannot be resolved (`fstat`/`readlink` failed) or a
//! malformed read buffer is answered with the configured [`FailMode`] and
//! counted in [`PermStats::fail_mode_answers`]. When the agent dies (or drops
//! the last `PermGuard`) the kernel closes the group: it answers every pending
//! permission event with allow, removes all marks, and nothing further waits
//! for lancet — a crashed agent never wedges a container (verified with
//! SIGKILL while an exec was waiting for the decider). Protection is off
//! until the agent is back, and so is its fail mode.
//!
//! The queue is created with `FAN_UNLIMITED_QUEUE`: with a bounded queue the
//! kernel silently *allows* a permission event that does not fit. Memory stays
//! bounded anyway, since each pending permission event holds a stopped task.
//!
//! # Not covered
//! Execs from other mounts of the container unless each is marked with
//! `protect_exec_mount`; `memfd` execs (kernel-internal mount) are not seen.
//! Events of lancet's own threads are allowed without asking the decider, so
//! the agent cannot deadlock on itself.

use super::parse::{self, RawEvent};
use super::syscall::{u32_at, write_intent, PathBuf32};
use super::{fanotify_init, fanotify_mark, fstat, FanotifyError};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// `OVERLAYFS_SUPER_MAGIC` (statfs `f_type`).
pub const OVERLAYFS_MAGIC: u64 = 0x794c_7630;

/// Events read per `read(2)`: each holds an open fd until answered, so this
/// bounds the fds in flight (a failed fd open makes the kernel deny).
const READ_BATCH: usize = 64;
/// Upper bound on remembered inodes (ignore marks) per group. The kernel's
/// per-user mark limit is `/proc/sys/fs/fanotify/max_user_marks`.
const MAX_REMEMBERED: usize = 65_536;
/// How often `run` looks at its stop flag.
const POLL_MS: i32 = 100;
const PATH_MAX: usize = libc::PATH_MAX as usize;

/// How to answer when lancet cannot decide (decider panic, event that cannot
/// be resolved, malformed buffer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FailMode {
    /// Let the operation proceed (availability first).
    #[default]
    Allow,
    /// Refuse it with EPERM.
    Deny,
}

/// Which kind of exec mark [`PermGuard::protect_exec`] placed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MarkScope {
    /// `FAN_MARK_FILESYSTEM`: the superblock, whichever mount (the container's
    /// `/`, the host's `merged` dir, `/proc/<pid>/root`) a file is reached
    /// through. Falls back to a mount mark where the kernel refuses it.
    #[default]
    Filesystem,
    /// `FAN_MARK_MOUNT`: only the mount `root` is on. Mark
    /// `/proc/<pid>/root` (the container's own mount): the host's mount of
    /// the rootfs `merged` dir is a different mount, and execs inside the
    /// container do not go through it.
    Mount,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct PermConfig {
    pub fail_mode: FailMode,
    /// Preferred exec mark kind.
    pub scope: MarkScope,
}

/// What a stopped task is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermKind {
    /// `execve` of a file on a protected root (`FAN_OPEN_EXEC_PERM`).
    Exec,
    /// `open` of a protected file or of a child of a write-protected
    /// directory (`FAN_OPEN_PERM`), with the write intent when known.
    Open { write: Option<bool> },
}

/// One permission event, as handed to the decider. Borrows lancet's reused
/// buffers: copy what you keep.
#[derive(Debug, Clone, Copy)]
pub struct PermRequest<'a> {
    pub kind: PermKind,
    /// Label given at mark time (e.g. the container's cgroup id); `None` when
    /// the file's filesystem is not uniquely one label's.
    pub label: Option<u64>,
    /// Every label with marks on the file's filesystem: more than one when
    /// two containers claim one root (never legitimate; a decider should
    /// then answer as the strictest of them would).
    pub labels: &'a [u64],
    /// The task's thread id in lancet's pid namespace (`FAN_REPORT_TID`;
    /// equals the process id for single-threaded processes; `/proc/<pid>/`
    /// works with either).
    pub pid: i32,
    pub dev: u64,
    pub ino: u64,
    /// The path as the container sees it (`/tmp/ls`). A file deleted since it
    /// was opened ends in ` (deleted)`. Empty when the kernel could not give
    /// one (longer than PATH_MAX): decide by `dev`/`ino` then.
    pub path: &'a str,
    /// The statfs magic of the root the file is on, recorded at mark time
    /// ([`OVERLAYFS_MAGIC`] for overlay roots); 0 when unknown.
    pub fs_magic: u64,
    /// The event came through a mount mark ([`PermGuard::protect_exec_mount`]):
    /// the file is on one of the container's other mounts, not its root.
    pub other_mount: bool,
    /// The file being opened, read-only (to hash its content): the very
    /// file the task gets, not one found again by path.
    pub file: BorrowedFd<'a>,
}

/// The decider's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PermDecision {
    pub allow: bool,
    /// With `allow`: never ask again about this inode and event type (for
    /// every process, whatever the open flags) until it is modified, or
    /// [`forget`](PermGuard::forget) / [`clear_ignores`](PermGuard::clear_ignores).
    pub remember: bool,
}

impl PermDecision {
    pub const ALLOW: PermDecision = PermDecision { allow: true, remember: false };
    pub const ALLOW_REMEMBER: PermDecision = PermDecision { allow: true, remember: true };
    pub const DENY: PermDecision = PermDecision { allow: false, remember: false };
}

/// Counters since the guard was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PermStats {
    /// Permission events read (each answered exactly once).
    pub events: u64,
    pub allowed: u64,
    pub denied: u64,
    /// Ignore marks added for remembered decisions.
    pub remembered: u64,
    /// Events answered with the fail mode (decider panic, unresolvable event,
    /// malformed buffer); included in `allowed`/`denied`.
    pub fail_mode_answers: u64,
    /// `FAN_Q_OVERFLOW` records (not expected: the queue is unlimited).
    pub overflows: u64,
    /// Events of lancet's own threads, allowed without the decider.
    pub own: u64,
    /// Events whose file had no path the kernel could give (longer than
    /// PATH_MAX): decided by inode, with an empty path.
    pub pathless: u64,
    /// Read, response-write, ignore-mark and parse failures.
    pub errors: u64,
    /// lancet's own time per decision (after `read` to before the response
    /// `write`: fstat, readlink, lookup, decider), from a log2 histogram with
    /// 8 sub-buckets per power of two (upper bucket bound, within 12.5 %).
    pub decision_p50_ns: u64,
    pub decision_p99_ns: u64,
    pub decision_max_ns: u64,
}

/// The permission group. Clones share it; the group (and every mark) goes
/// when the last clone is dropped, and the kernel then allows whatever was
/// still pending.
#[derive(Clone)]
pub struct PermGuard {
    inner: Arc<Inner>,
}

struct Inner {
    fan: OwnedFd,
    cfg: PermConfig,
    own_pid: i32,
    host_root_dev: u64,
    state: Mutex<State>,
    /// `FAN_MARK_IGNORE` (6.0+) or `FAN_MARK_IGNORED_MASK` on older kernels.
    ignore_flag: AtomicU32,
    c: Counters,
    hist: Histogram,
}

#[derive(Default)]
struct Counters {
    events: AtomicU64,
    allowed: AtomicU64,
    denied: AtomicU64,
    remembered: AtomicU64,
    fail: AtomicU64,
    overflows: AtomicU64,
    own: AtomicU64,
    errors: AtomicU64,
    pathless: AtomicU64,
}

#[derive(Default)]
struct State {
    labels: HashMap<u64, LabelState>,
    devs: HashMap<u64, DevInfo>,
    /// Exec mount marks: mount id → labels and the statfs magic.
    mounts: HashMap<u64, MountMark>,
    /// Marked files and directories: (dev, ino) → labels and mask.
    objects: HashMap<(u64, u64), ObjInfo>,
    remembered: usize,
}

struct MountMark {
    owners: Vec<u64>,
    magic: u64,
}

#[derive(Default)]
struct LabelState {
    roots: Vec<(PathBuf, u64)>,
    /// Exec mount marks: the root and path marked through, and the mount id.
    mounts: Vec<(PathBuf, String, u64)>,
    objects: Vec<ObjRef>,
    ignores: Vec<Ignored>,
}

#[derive(Default)]
struct DevInfo {
    /// Labels with an exec mark on this filesystem (normally one).
    exec_owners: Vec<u64>,
    exec_scope: Option<MarkScope>,
    /// Labels with file or directory marks on it.
    other_owners: Vec<u64>,
    /// Host paths at which this filesystem's root is reachable from lancet's
    /// mount namespace (the overlay's `merged` dir, a root given at mark time),
    /// longest first: stripped from `readlink` results.
    prefixes: Vec<String>,
    magic: u64,
}

impl DevInfo {
    fn label(&self) -> Option<u64> {
        match (self.exec_owners.as_slice(), self.other_owners.as_slice()) {
            ([l], _) => Some(*l),
            ([], [l]) => Some(*l),
            _ => None,
        }
    }
}

struct ObjInfo {
    labels: Vec<u64>,
    mask: u64,
}

#[derive(Clone)]
struct ObjRef {
    key: (u64, u64),
    root: PathBuf,
    path: String,
    mask: u64,
}

struct Ignored {
    key: (u64, u64),
    root: Option<PathBuf>,
    path: String,
    mask: u64,
}

const FILE_MASK: u64 = libc::FAN_OPEN_PERM;
const DIR_MASK: u64 = libc::FAN_OPEN_PERM | libc::FAN_EVENT_ON_CHILD;

impl PermGuard {
    /// Creates the group (`FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK |
    /// FAN_UNLIMITED_QUEUE | FAN_REPORT_TID`). Needs CAP_SYS_ADMIN.
    pub fn new(cfg: PermConfig) -> Result<Self, FanotifyError> {
        let fan = fanotify_init(
            libc::FAN_CLASS_CONTENT | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK | libc::FAN_UNLIMITED_QUEUE | libc::FAN_REPORT_TID,
            (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as u32,
        )?;
        let host_root_dev = std::fs::metadata("/").map(|m| std::os::unix::fs::MetadataExt::dev(&m)).unwrap_or(u64::MAX);
        Ok(PermGuard {
            inner: Arc::new(Inner {
                fan,
                cfg,
                own_pid: std::process::id() as i32,
                host_root_dev,
                state: Mutex::new(State::default()),
                ignore_flag: AtomicU32::new(libc::FAN_MARK_IGNORE),
                c: Counters::default(),
                hist: Histogram::default(),
            }),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.inner.fan.as_raw_fd()
    }

    /// Asks about every exec of a file on `root`'s filesystem (`root`: a
    /// container's `/proc/<pid>/root`, or its rootfs `merged` dir from a hook
    /// before pid 1 pivoted). Tries a filesystem mark (unless configured for
    /// mount marks) and falls back to a mount mark where the kernel refuses
    /// it; returns which was placed. Refuses the host's root filesystem.
    /// Can be called several times per label (e.g. also for a tmpfs the
    /// container execs from).
    pub fn protect_exec(&self, label: u64, root: &Path) -> Result<MarkScope, FanotifyError> {
        let fd = open_dir(root)?;
        let (dev, magic) = dev_magic(fd.as_raw_fd(), root)?;
        if dev == self.inner.host_root_dev {
            return Err(FanotifyError::HostFilesystem(root.to_path_buf()));
        }
        let mut st = self.lock();
        let scope = match st.devs.get(&dev).and_then(|i| i.exec_scope) {
            Some(s) => s,
            None => self.mark_exec(fd.as_raw_fd(), root)?,
        };
        let info = st.devs.entry(dev).or_default();
        info.exec_scope = Some(scope);
        if !info.exec_owners.contains(&label) {
            info.exec_owners.push(label);
        }
        info.magic = magic;
        add_prefixes(info, dev, root);
        let ls = st.labels.entry(label).or_default();
        if !ls.roots.iter().any(|(p, d)| *d == dev && p == root) {
            ls.roots.push((root.to_path_buf(), dev));
        }
        tracing::debug!(label, root = %root.display(), dev, ?scope, "exec permission mark added");
        Ok(scope)
    }

    /// Asks about every exec of a file on mount `mnt` of a container: the
    /// directory `path` inside `root` (a container's `/proc/<pid>/root`),
    /// resolved without leaving it, must be that mount's root (`mnt` as
    /// `/proc/<pid>/mountinfo` numbers it), so a container that swaps a
    /// directory for a symlink cannot have a host mount marked instead.
    /// Always a mount mark (see the module docs); marking a mount again adds
    /// nothing. Refuses lancet's own root mount.
    pub fn protect_exec_mount(&self, label: u64, root: &Path, path: &str, mnt: u64) -> Result<(), FanotifyError> {
        let fd = open_mount(root, path, mnt)?;
        let (_, magic) = dev_magic(fd.as_raw_fd(), root)?;
        if Some(mnt) == *HOST_ROOT_MOUNT.get_or_init(|| open_dir(Path::new("/")).ok().and_then(|f| mount_id(f.as_raw_fd()).ok())) {
            return Err(FanotifyError::HostFilesystem(root.join(path.trim_start_matches('/'))));
        }
        let mut st = self.lock();
        if !st.mounts.contains_key(&mnt) {
            fanotify_mark(self.fd(), libc::FAN_MARK_ADD | libc::FAN_MARK_MOUNT, libc::FAN_OPEN_EXEC_PERM, &proc_fd(fd.as_raw_fd()))
                .map_err(|e| with_path(e, &root.join(path.trim_start_matches('/'))))?;
        }
        let m = st.mounts.entry(mnt).or_insert(MountMark { owners: Vec::new(), magic });
        if !m.owners.contains(&label) {
            m.owners.push(label);
        }
        let ls = st.labels.entry(label).or_default();
        if !ls.mounts.iter().any(|m| m.2 == mnt) {
            ls.mounts.push((root.to_path_buf(), path.to_owned(), mnt));
        }
        tracing::debug!(label, root = %root.display(), path, mnt, "exec permission mount mark added");
        Ok(())
    }

    fn mark_exec(&self, fd: RawFd, root: &Path) -> Result<MarkScope, FanotifyError> {
        let via = proc_fd(fd);
        let mask = libc::FAN_OPEN_EXEC_PERM;
        let fan = self.fd();
        if self.inner.cfg.scope == MarkScope::Filesystem {
            match fanotify_mark(fan, libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM, mask, &via) {
                Ok(()) => return Ok(MarkScope::Filesystem),
                Err(FanotifyError::Mark { source, .. })
                    if matches!(source.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP | libc::EXDEV | libc::ENODEV)) =>
                {
                    tracing::info!(root = %root.display(), error = %source,
                        "filesystem permission mark refused, using a mount mark");
                }
                Err(e) => return Err(with_path(e, root)),
            }
        }
        fanotify_mark(fan, libc::FAN_MARK_ADD | libc::FAN_MARK_MOUNT, mask, &via).map_err(|e| with_path(e, root))?;
        Ok(MarkScope::Mount)
    }

    /// Asks about every open of these files (absolute paths as seen inside
    /// `root`, resolved inside it: symlinks cannot lead out). Missing paths
    /// are skipped; returns how many were marked.
    pub fn protect_files(&self, label: u64, root: &Path, paths: &[&str]) -> Result<usize, FanotifyError> {
        self.protect_objects(label, root, paths, false)
    }

    /// Asks about every open of a direct child of these directories (paths as
    /// seen inside `root`), with the opener's write intent.
    ///
    /// # Write intent
    /// fanotify does not report open flags. While the opener is stopped in
    /// the permission check it is inside its open syscall, so lancet reads
    /// `/proc/<tid>/syscall` (syscall number and raw arguments) and takes the
    /// flags argument of `open`/`openat`/`open_by_handle_at` (`creat` means
    /// write; an exec's open means read), or reads `struct open_how.flags`
    /// from the task's memory for `openat2` (`process_vm_readv`). `O_WRONLY`,
    /// `O_RDWR`, `O_CREAT`, `O_TRUNC` or `O_APPEND` is write intent.
    /// Anything else (io_uring opens, kernel-internal opens, other
    /// architectures' numbers, a 32-bit task) gives `write: None`, and the
    /// decider chooses.
    ///
    /// Limits: it costs an open+read of a proc file per event, so it is meant
    /// for the few marked directories, not for busy ones. `openat2`'s struct
    /// is re-read from user memory, which another thread of the opener could
    /// have changed since the kernel copied it. A file created with `O_CREAT`
    /// already exists when the permission event comes (the check is on open,
    /// after creation), so denying that open leaves an empty file behind;
    /// existing files are left unchanged (`O_TRUNC` happens after the check).
    pub fn protect_dir_writes(&self, label: u64, root: &Path, dirs: &[&str]) -> Result<usize, FanotifyError> {
        self.protect_objects(label, root, dirs, true)
    }

    fn protect_objects(&self, label: u64, root: &Path, paths: &[&str], dirs: bool) -> Result<usize, FanotifyError> {
        let root_fd = open_dir(root)?;
        let (root_dev, magic) = dev_magic(root_fd.as_raw_fd(), root)?;
        let mask = if dirs { DIR_MASK } else { FILE_MASK };
        let mut added = 0;
        let mut st = self.lock();
        for &p in paths {
            let fd = match super::open::open_in_root(root_fd.as_raw_fd(), p) {
                Ok(fd) => fd,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => continue,
                Err(source) => return Err(FanotifyError::Open { path: root.join(p.trim_start_matches('/')), source }),
            };
            let s = fstat(fd.as_raw_fd()).map_err(|source| FanotifyError::Open { path: root.join(p.trim_start_matches('/')), source })?;
            let is_dir = s.st_mode & libc::S_IFMT == libc::S_IFDIR;
            if is_dir != dirs || (!dirs && s.st_mode & libc::S_IFMT != libc::S_IFREG) {
                tracing::debug!(path = p, dirs, "not a {}; not marked", if dirs { "directory" } else { "file" });
                continue;
            }
            let key = (s.st_dev, s.st_ino);
            let ls = st.labels.entry(label).or_default();
            if ls.objects.iter().any(|o| o.key == key && o.mask == mask) {
                continue;
            }
            fanotify_mark(self.fd(), libc::FAN_MARK_ADD, mask, &proc_fd(fd.as_raw_fd()))
                .map_err(|e| with_path(e, &root.join(p.trim_start_matches('/'))))?;
            ls.objects.push(ObjRef { key, root: root.to_path_buf(), path: p.to_owned(), mask });
            let o = st.objects.entry(key).or_insert(ObjInfo { labels: Vec::new(), mask: 0 });
            o.mask |= mask;
            if !o.labels.contains(&label) {
                o.labels.push(label);
            }
            let info = st.devs.entry(key.0).or_default();
            if !info.other_owners.contains(&label) {
                info.other_owners.push(label);
            }
            if key.0 == root_dev {
                info.magic = magic;
                add_prefixes(info, root_dev, root);
            }
            added += 1;
        }
        Ok(added)
    }

    /// Removes `label`'s marks (exec, files, directories) and its remembered
    /// ignore marks. Marks on a container that is gone went with its
    /// filesystem; those are only forgotten. Returns the marks removed.
    pub fn unprotect(&self, label: u64) -> usize {
        let mut removed = self.forget(label);
        let mut st = self.lock();
        let Some(ls) = st.labels.remove(&label) else {
            return removed;
        };
        for (root, path, mnt) in ls.mounts {
            let Some(m) = st.mounts.get_mut(&mnt) else { continue };
            m.owners.retain(|&l| l != label);
            if !m.owners.is_empty() {
                continue;
            }
            st.mounts.remove(&mnt);
            // Only while `path` still leads to that mount (a container that
            // is gone took its mounts, and their marks, with it).
            let Ok(fd) = open_mount(&root, &path, mnt) else { continue };
            let flags = libc::FAN_MARK_REMOVE | libc::FAN_MARK_MOUNT;
            match fanotify_mark(self.fd(), flags, libc::FAN_OPEN_EXEC_PERM, &proc_fd(fd.as_raw_fd())) {
                Ok(()) => removed += 1,
                Err(e) => tracing::debug!(label, path, error = %e, "removing exec mount mark"),
            }
        }
        for (root, dev) in ls.roots {
            let Some(info) = st.devs.get_mut(&dev) else { continue };
            info.exec_owners.retain(|&l| l != label);
            if !info.exec_owners.is_empty() {
                continue;
            }
            let scope = info.exec_scope.take();
            if info.other_owners.is_empty() {
                st.devs.remove(&dev);
            }
            let flag = match scope {
                Some(MarkScope::Filesystem) => libc::FAN_MARK_FILESYSTEM,
                Some(MarkScope::Mount) => libc::FAN_MARK_MOUNT,
                None => continue,
            };
            // Only while `root` still is that filesystem: a removed
            // container's path may now be a plain directory of the host's.
            let Ok(fd) = open_dir(&root) else { continue };
            if dev_magic(fd.as_raw_fd(), &root).map(|(d, _)| d).ok() != Some(dev) {
                continue;
            }
            match fanotify_mark(self.fd(), libc::FAN_MARK_REMOVE | flag, libc::FAN_OPEN_EXEC_PERM, &proc_fd(fd.as_raw_fd())) {
                Ok(()) => removed += 1,
                Err(e) => tracing::debug!(label, root = %root.display(), error = %e, "removing exec mark"),
            }
        }
        for o in ls.objects {
            if let Some(info) = st.devs.get_mut(&o.key.0) {
                info.other_owners.retain(|&l| l != label);
                if info.other_owners.is_empty() && info.exec_owners.is_empty() {
                    st.devs.remove(&o.key.0);
                }
            }
            let Some(obj) = st.objects.get_mut(&o.key) else { continue };
            obj.labels.retain(|&l| l != label);
            if !obj.labels.is_empty() {
                continue;
            }
            st.objects.remove(&o.key);
            if self.remove_inode_mark(&o.root, &o.path, o.key, libc::FAN_MARK_REMOVE, o.mask) {
                removed += 1;
            }
        }
        removed
    }

    /// Removes the ignore marks remembered for `label` (e.g. after its profile
    /// changed), so the next exec of each is asked about again. A remembered
    /// file that was renamed or replaced since cannot be found by its path;
    /// [`clear_ignores`](Self::clear_ignores) removes those too. Returns the
    /// ignore marks removed.
    pub fn forget(&self, label: u64) -> usize {
        let ignores = {
            let mut st = self.lock();
            let Some(ls) = st.labels.get_mut(&label) else { return 0 };
            let v = std::mem::take(&mut ls.ignores);
            st.remembered -= v.len().min(st.remembered);
            v
        };
        let flag = libc::FAN_MARK_REMOVE | self.inner.ignore_flag.load(Relaxed);
        ignores.iter().filter(|i| i.root.as_ref().is_some_and(|r| self.remove_inode_mark(r, &i.path, i.key, flag, i.mask))).count()
    }

    /// Removes every ignore mark of the group (`FAN_MARK_FLUSH` of inode
    /// marks, which also removes the file and directory marks; those are put
    /// back right away, so for a moment protected files are not asked about).
    /// Returns the file and directory marks put back.
    pub fn clear_ignores(&self) -> Result<usize, FanotifyError> {
        let mut st = self.lock();
        fanotify_mark(self.fd(), libc::FAN_MARK_FLUSH, 0, Path::new("/"))?;
        st.remembered = 0;
        let mut redo = Vec::new();
        for ls in st.labels.values_mut() {
            ls.ignores.clear();
            redo.extend(ls.objects.iter().cloned());
        }
        drop(st);
        let mut n = 0;
        for o in redo {
            let Ok(root_fd) = open_dir(&o.root) else { continue };
            let Ok(fd) = super::open::open_in_root(root_fd.as_raw_fd(), &o.path) else { continue };
            if fanotify_mark(self.fd(), libc::FAN_MARK_ADD, o.mask, &proc_fd(fd.as_raw_fd())).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Resolves `path` in `root` and, when it still is inode `key`, applies
    /// `flags`/`mask` to it. Errors are logged (the file may be gone).
    fn remove_inode_mark(&self, root: &Path, path: &str, key: (u64, u64), flags: u32, mask: u64) -> bool {
        let Ok(root_fd) = open_dir(root) else { return false };
        let Ok(fd) = super::open::open_in_root(root_fd.as_raw_fd(), path) else { return false };
        match fstat(fd.as_raw_fd()) {
            Ok(s) if (s.st_dev, s.st_ino) == key => {}
            _ => return false,
        }
        match fanotify_mark(self.fd(), flags, mask, &proc_fd(fd.as_raw_fd())) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(path, error = %e, "removing mark");
                false
            }
        }
    }

    pub fn stats(&self) -> PermStats {
        let c = &self.inner.c;
        let (p50, p99) = (self.inner.hist.quantile(0.50), self.inner.hist.quantile(0.99));
        PermStats {
            events: c.events.load(Relaxed),
            allowed: c.allowed.load(Relaxed),
            denied: c.denied.load(Relaxed),
            remembered: c.remembered.load(Relaxed),
            fail_mode_answers: c.fail.load(Relaxed),
            overflows: c.overflows.load(Relaxed),
            own: c.own.load(Relaxed),
            pathless: c.pathless.load(Relaxed),
            errors: c.errors.load(Relaxed),
            decision_p50_ns: p50,
            decision_p99_ns: p99,
            decision_max_ns: self.inner.hist.max.load(Relaxed),
        }
    }

    /// The decision-time histogram at power-of-two edges from 1 µs
    /// (`2^10 - 1` ns) to 134 ms (`2^27 - 1` ns).
    pub fn decision_histogram(&self) -> DecisionHistogram {
        self.inner.hist.octaves(10, 27)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain bookkeeping behind;
        // keep going with it rather than stop answering events.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads and answers permission events until `stop` is set (checked at
    /// least every 100 ms). Returns an error only when the group itself fails
    /// (e.g. a bad fd); transient read errors are counted and retried. Events
    /// still queued when it returns wait for the next `run`, or are allowed by
    /// the kernel when the last `PermGuard` is dropped.
    ///
    /// No allocation per event: one read buffer and one path buffer are
    /// reused (remembering an inode records its path).
    pub fn run<F>(&self, stop: &AtomicBool, decider: &mut F) -> Result<(), FanotifyError>
    where
        F: FnMut(&PermRequest<'_>) -> PermDecision,
    {
        let mut buf = vec![0u8; READ_BATCH * parse::METADATA_LEN];
        let mut scratch = Scratch { link: vec![0; PATH_MAX + 1], norm: String::with_capacity(PATH_MAX), labels: Vec::with_capacity(4) };
        let fan = self.fd();
        while !stop.load(Relaxed) {
            let mut pfd = libc::pollfd { fd: fan, events: libc::POLLIN, revents: 0 };
            // SAFETY: `pfd` is one valid pollfd, exclusively borrowed for the call.
            let r = unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
            if r <= 0 {
                continue; // timeout or EINTR
            }
            let n = match super::read_some(fan, &mut buf) {
                Ok(n) => n,
                Err(FanotifyError::Read(e))
                    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOENT)) =>
                {
                    // The kernel denied the event it could not open an fd for.
                    self.inner.c.errors.fetch_add(1, Relaxed);
                    tracing::warn!(error = %e, "reading permission events");
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.handle_buffer(&buf[..n], decider, &mut scratch);
        }
        Ok(())
    }

    fn handle_buffer<F>(&self, buf: &[u8], decider: &mut F, scratch: &mut Scratch)
    where
        F: FnMut(&PermRequest<'_>) -> PermDecision,
    {
        let mut off = 0;
        for ev in parse::events(buf) {
            match ev {
                Ok(ev) => {
                    off += u32_at(buf, off).unwrap_or(0) as usize;
                    self.handle_event(&ev, decider, scratch);
                }
                Err(e) => {
                    // Cannot locate events from here on. This group never
                    // gets info records, so each event is exactly one
                    // metadata struct: answer every fd that is there.
                    self.inner.c.errors.fetch_add(1, Relaxed);
                    tracing::error!(error = %e, "malformed permission event buffer; answering with the fail mode");
                    let mut at = off;
                    while at + parse::METADATA_LEN <= buf.len() {
                        if let Some(fd) = u32_at(buf, at + 16).map(|v| v as i32).filter(|&fd| fd >= 0) {
                            // SAFETY: the kernel put this fd in the event
                            // record for us; nobody else owns it.
                            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                            self.inner.c.events.fetch_add(1, Relaxed);
                            self.inner.c.fail.fetch_add(1, Relaxed);
                            self.respond(fd.as_raw_fd(), self.fail_allow());
                        }
                        at += parse::METADATA_LEN;
                    }
                    break;
                }
            }
        }
    }

    fn fail_allow(&self) -> bool {
        self.inner.cfg.fail_mode == FailMode::Allow
    }

    fn handle_event<F>(&self, ev: &RawEvent<'_>, decider: &mut F, scratch: &mut Scratch)
    where
        F: FnMut(&PermRequest<'_>) -> PermDecision,
    {
        let t0 = Instant::now();
        let c = &self.inner.c;
        if ev.mask & libc::FAN_Q_OVERFLOW != 0 {
            c.overflows.fetch_add(1, Relaxed);
            tracing::warn!("fanotify permission queue overflow");
            return;
        }
        if ev.fd < 0 {
            c.errors.fetch_add(1, Relaxed);
            return; // nothing to answer
        }
        // SAFETY: the kernel handed us this fd with the event; nobody else
        // owns it. It is closed after the response is written.
        let fd = unsafe { OwnedFd::from_raw_fd(ev.fd) };
        c.events.fetch_add(1, Relaxed);
        let outcome = catch_unwind(AssertUnwindSafe(|| self.decide(ev, fd.as_fd(), decider, scratch)));
        let allow = match outcome {
            Ok(Ok(allow)) => allow,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, pid = ev.pid, "permission event not resolvable; answering with the fail mode");
                c.fail.fetch_add(1, Relaxed);
                self.fail_allow()
            }
            Err(_) => {
                tracing::error!(pid = ev.pid, "permission decider panicked; answering with the fail mode");
                c.fail.fetch_add(1, Relaxed);
                self.fail_allow()
            }
        };
        self.inner.hist.record(t0.elapsed().as_nanos() as u64);
        self.respond(fd.as_raw_fd(), allow);
        drop(fd);
    }

    /// Resolves the event, asks the decider, adds the ignore mark when asked
    /// to remember. Returns whether to allow.
    fn decide<F>(&self, ev: &RawEvent<'_>, fd: BorrowedFd<'_>, decider: &mut F, scratch: &mut Scratch) -> io::Result<bool>
    where
        F: FnMut(&PermRequest<'_>) -> PermDecision,
    {
        if self.is_own_thread(ev.pid) {
            self.inner.c.own.fetch_add(1, Relaxed);
            return Ok(true);
        }
        let st = fstat(fd.as_raw_fd())?;
        let key = (st.st_dev, st.st_ino);
        // A path the kernel cannot give (longer than PATH_MAX, built from
        // deep directories) leaves the decision to the inode: `path` is
        // empty, never a reason to answer with the fail mode.
        let link: &[u8] = match readlink_fd(fd.as_raw_fd(), &mut scratch.link) {
            Ok(l) => l,
            Err(e) => {
                self.inner.c.pathless.fetch_add(1, Relaxed);
                tracing::debug!(error = %e, pid = ev.pid, "no path for a permission event; deciding by inode");
                &[]
            }
        };
        let exec = ev.mask & libc::FAN_OPEN_EXEC_PERM != 0;
        let event_mask = if exec { libc::FAN_OPEN_EXEC_PERM } else { libc::FAN_OPEN_PERM };
        // A file on a filesystem the container's root mark does not cover
        // came through a mount mark: which one, by mount id.
        let mount = {
            let state = self.lock();
            let root_marked = state.devs.get(&key.0).is_some_and(|i| i.exec_scope == Some(MarkScope::Filesystem));
            if exec && !root_marked && !state.mounts.is_empty() {
                drop(state);
                mount_id(fd.as_raw_fd()).ok()
            } else {
                None
            }
        };
        let (label, fs_magic, other_mount) = {
            let state = self.lock();
            let info = state.devs.get(&key.0);
            scratch.labels.clear();
            if let Some(m) = mount.and_then(|id| state.mounts.get(&id)) {
                scratch.labels.extend(&m.owners);
                let label = match m.owners.as_slice() {
                    [l] => Some(*l),
                    _ => None,
                };
                // Opened in the container's mount namespace: the path is
                // already the container's.
                normalise(link, &[], &mut scratch.norm);
                (label, m.magic, true)
            } else {
                if let Some(i) = info {
                    scratch.labels.extend(if i.exec_owners.is_empty() { &i.other_owners } else { &i.exec_owners });
                }
                let label = state
                    .objects
                    .get(&key)
                    .and_then(|o| match o.labels.as_slice() {
                        [l] => Some(*l),
                        _ => None,
                    })
                    .or_else(|| info.and_then(DevInfo::label));
                let stripped = normalise(link, info.map_or(&[][..], |i| &i.prefixes[..]), &mut scratch.norm);
                // A host prefix stripped from a path that is not the event's file
                // on the host was part of a path inside the container (a
                // directory the container made to look like the host's rootfs):
                // keep the whole path.
                if stripped && !same_file(link, key) {
                    scratch.norm.clear();
                    scratch.norm.push_str(&String::from_utf8_lossy(link));
                }
                (label, info.map_or(0, |i| i.magic), false)
            }
        };
        let kind = if exec { PermKind::Exec } else { PermKind::Open { write: write_intent(ev.pid) } };
        let req = PermRequest {
            kind,
            label,
            labels: &scratch.labels,
            pid: ev.pid,
            dev: key.0,
            ino: key.1,
            path: &scratch.norm,
            fs_magic,
            other_mount,
            file: fd,
        };
        let d = decider(&req);
        if d.allow && d.remember {
            self.remember(fd, event_mask, label, key, &scratch.norm);
        }
        Ok(d.allow)
    }

    /// Adds an ignore mark for `mask` on the inode of the event fd.
    fn remember(&self, fd: BorrowedFd<'_>, mask: u64, label: Option<u64>, key: (u64, u64), path: &str) {
        let mut st = self.lock();
        if st.remembered >= MAX_REMEMBERED {
            self.inner.c.errors.fetch_add(1, Relaxed);
            return;
        }
        let mut flag = self.inner.ignore_flag.load(Relaxed);
        let mut r = mark_fd(self.fd(), libc::FAN_MARK_ADD | flag, mask, fd.as_raw_fd());
        if flag == libc::FAN_MARK_IGNORE && r.as_ref().err().and_then(io::Error::raw_os_error) == Some(libc::EINVAL) {
            // Kernel before 6.0: the legacy ignored mask does the same here.
            flag = libc::FAN_MARK_IGNORED_MASK;
            self.inner.ignore_flag.store(flag, Relaxed);
            r = mark_fd(self.fd(), libc::FAN_MARK_ADD | flag, mask, fd.as_raw_fd());
        }
        if let Err(e) = r {
            self.inner.c.errors.fetch_add(1, Relaxed);
            tracing::warn!(path, error = %e, "adding ignore mark");
            return;
        }
        self.inner.c.remembered.fetch_add(1, Relaxed);
        st.remembered += 1;
        let Some(label) = label else { return };
        let root = {
            let state = &*st;
            let ls = state.labels.get(&label);
            ls.and_then(|ls| ls.roots.iter().find(|(_, d)| *d == key.0).map(|(p, _)| p.clone()))
                .or_else(|| ls.and_then(|ls| ls.objects.iter().find(|o| o.key.0 == key.0).map(|o| o.root.clone())))
        };
        st.labels.entry(label).or_default().ignores.push(Ignored { key, root, path: path.to_owned(), mask });
    }

    fn respond(&self, fd: RawFd, allow: bool) {
        let c = &self.inner.c;
        if allow {
            c.allowed.fetch_add(1, Relaxed);
        } else {
            c.denied.fetch_add(1, Relaxed);
        }
        let resp = libc::fanotify_response { fd, response: if allow { libc::FAN_ALLOW } else { libc::FAN_DENY } };
        loop {
            // SAFETY: `resp` is a valid `struct fanotify_response` that lives
            // across the call; the kernel only reads `size_of` bytes of it.
            let n = unsafe {
                libc::write(self.fd(), (&resp as *const libc::fanotify_response).cast(), std::mem::size_of::<libc::fanotify_response>())
            };
            if n >= 0 {
                return;
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            c.errors.fetch_add(1, Relaxed);
            tracing::error!(error = %e, "writing fanotify permission response");
            return;
        }
    }

    /// Is `tid` a thread of this process? (`tgkill(own_pid, tid, 0)`.)
    fn is_own_thread(&self, tid: i32) -> bool {
        if tid == self.inner.own_pid {
            return true;
        }
        // SAFETY: signal 0 only checks that `tid` is a thread of our process.
        unsafe { libc::syscall(libc::SYS_tgkill, self.inner.own_pid, tid, 0) == 0 }
    }
}

impl AsFd for PermGuard {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.fan.as_fd()
    }
}

struct Scratch {
    link: Vec<u8>,
    norm: String,
    labels: Vec<u64>,
}

fn with_path(e: FanotifyError, path: &Path) -> FanotifyError {
    match e {
        FanotifyError::Mark { mask, source, .. } => FanotifyError::Mark { path: path.to_path_buf(), mask, source },
        e => e,
    }
}

fn open_dir(root: &Path) -> Result<OwnedFd, FanotifyError> {
    super::open::open_path(libc::AT_FDCWD, root, libc::O_DIRECTORY)
        .map_err(|source| FanotifyError::Open { path: root.to_path_buf(), source })
}

/// `/proc/self/fd/N`: marks through it apply to the fd's object (mount and
/// inode), so nothing is resolved twice.
fn proc_fd(fd: RawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{fd}"))
}

/// The id of the mount an fd is on (`statx` `STATX_MNT_ID`, Linux 5.8+),
/// as `/proc/<pid>/mountinfo` numbers mounts.
pub fn mount_id(fd: RawFd) -> io::Result<u64> {
    // SAFETY: all-zero bytes are a valid `struct statx` (plain integers).
    let mut sx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: an empty NUL-terminated path with AT_EMPTY_PATH names `fd`
    // itself; `sx` is a valid out-pointer the kernel does not retain.
    let r = unsafe { libc::statx(fd, c"".as_ptr(), libc::AT_EMPTY_PATH, libc::STATX_MNT_ID, &mut sx) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if sx.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(io::Error::from_raw_os_error(libc::ENOSYS));
    }
    Ok(sx.stx_mnt_id)
}

/// Opens directory `path` inside `root` (never leaving it) when it is the
/// root of mount `mnt`.
fn open_mount(root: &Path, path: &str, mnt: u64) -> Result<OwnedFd, FanotifyError> {
    let full = || root.join(path.trim_start_matches('/'));
    let root_fd = open_dir(root)?;
    let fd = super::open::open_in_root(root_fd.as_raw_fd(), path).map_err(|source| FanotifyError::Open { path: full(), source })?;
    let st = fstat(fd.as_raw_fd()).map_err(|source| FanotifyError::Open { path: full(), source })?;
    let id = mount_id(fd.as_raw_fd()).map_err(|source| FanotifyError::Open { path: full(), source })?;
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR || id != mnt {
        return Err(FanotifyError::Open { path: full(), source: io::Error::from_raw_os_error(libc::ESTALE) });
    }
    Ok(fd)
}

/// The mount id of lancet's own root (never marked for a container).
static HOST_ROOT_MOUNT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();

/// (st_dev, statfs magic) of an fd.
fn dev_magic(fd: RawFd, path: &Path) -> Result<(u64, u64), FanotifyError> {
    let st = fstat(fd).map_err(|source| FanotifyError::Open { path: path.to_path_buf(), source })?;
    // SAFETY: all-zero bytes are a valid `struct statfs` (plain integers).
    let mut sf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `sf` is a valid out-pointer; fstatfs does not retain it. O_PATH
    // fds are accepted by fstatfs.
    let r = unsafe { libc::fstatfs(fd, &mut sf) };
    let magic = if r == 0 { sf.f_type as u64 } else { 0 };
    Ok((st.st_dev, magic))
}

/// Records where filesystem `dev`'s root is reachable from lancet's mount
/// namespace: `root` itself (unless it is a `/proc/<pid>/…` magic link, which
/// `readlink` never returns) and every whole-filesystem mount of `dev`.
fn add_prefixes(info: &mut DevInfo, dev: u64, root: &Path) {
    let mut add = |p: &str| {
        let p = p.trim_end_matches('/');
        if !p.is_empty() && !info.prefixes.iter().any(|q| q == p) {
            info.prefixes.push(p.to_owned());
        }
    };
    if let Some(r) = root.to_str().filter(|r| !r.starts_with("/proc/")) {
        add(std::fs::canonicalize(r).ok().as_deref().and_then(Path::to_str).unwrap_or(r));
    }
    if let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") {
        for (mp, mroot) in super::overlay::mounts_of_dev(&text, dev) {
            if mroot == "/" {
                add(&mp);
            }
        }
    }
    info.prefixes.sort_by_key(|p| std::cmp::Reverse(p.len()));
}

/// Writes into `out` the path as the root sees it: `link` with the first
/// matching host prefix stripped. `readlink` of an fd opened in a container's
/// mount namespace already gives the container-relative path (its mounts are
/// not reachable from lancet's root); one reached through the host's mount of
/// the rootfs gives the host path.
/// Returns whether a prefix was stripped.
pub(crate) fn normalise(link: &[u8], prefixes: &[String], out: &mut String) -> bool {
    out.clear();
    let mut rest = link;
    for p in prefixes {
        let p = p.as_bytes();
        if link.len() > p.len() && link.starts_with(p) && link[p.len()] == b'/' {
            rest = &link[p.len()..];
            break;
        }
        if link == p {
            rest = b"/";
            break;
        }
    }
    match std::str::from_utf8(rest) {
        Ok(s) => out.push_str(s),
        Err(_) => out.push_str(&String::from_utf8_lossy(rest)),
    }
    rest.len() != link.len()
}

/// Whether host path `link` names the file `key` (device, inode).
fn same_file(link: &[u8], key: (u64, u64)) -> bool {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(std::ffi::OsStr::from_bytes(link)).is_ok_and(|m| (m.dev(), m.ino()) == key)
}

/// `fanotify_mark(fan, flags, mask, fd, NULL)`: mark the object of an open fd.
fn mark_fd(fan: RawFd, flags: u32, mask: u64, fd: RawFd) -> io::Result<()> {
    // SAFETY: integer arguments and a NULL path, which makes the kernel use
    // `fd`'s own object.
    let r = unsafe { libc::fanotify_mark(fan, flags, mask, fd, std::ptr::null()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `readlink("/proc/self/fd/<fd>")` into `buf`, without allocating.
fn readlink_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<&[u8]> {
    let mut p = PathBuf32::new(b"/proc/self/fd/");
    p.num(fd as u64);
    let p = p.finish(b"")?;
    // SAFETY: `p` is NUL-terminated; `buf` is writable for `buf.len()` bytes.
    let n = unsafe { libc::readlink(p.as_ptr().cast(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(&buf[..n as usize])
}

// ---- Decision-time histogram ----

/// Exact buckets below this value (ns).
const HIST_LINEAR: usize = 16;
/// Sub-buckets per power of two above it.
const HIST_SUB: usize = 8;
const HIST_BUCKETS: usize = HIST_LINEAR + (64 - 4) * HIST_SUB;

/// Fixed-size log2 histogram (8 sub-buckets per octave) of nanoseconds;
/// lock-free, no allocation.
pub(crate) struct Histogram {
    buckets: [AtomicU64; HIST_BUCKETS],
    max: AtomicU64,
    /// Sum of every value, for the Prometheus histogram's `_sum`.
    sum: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { buckets: std::array::from_fn(|_| AtomicU64::new(0)), max: AtomicU64::new(0), sum: AtomicU64::new(0) }
    }
}

/// The decision-time histogram with power-of-two bounds, for Prometheus:
/// `buckets[i] = (bound, count)` counts the decisions that took at most
/// `bound` ns (cumulative), where each bound is `2^k - 1` ns: the log2
/// histogram's own octave edges, so every count is exact.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecisionHistogram {
    pub buckets: Vec<(u64, u64)>,
    pub count: u64,
    pub sum_ns: u64,
}

impl Histogram {
    fn index(v: u64) -> usize {
        if v < HIST_LINEAR as u64 {
            return v as usize;
        }
        let msb = 63 - v.leading_zeros() as usize; // >= 4
        let sub = ((v >> (msb - 3)) & 7) as usize;
        HIST_LINEAR + (msb - 4) * HIST_SUB + sub
    }

    /// Largest value that lands in bucket `i`.
    fn upper(i: usize) -> u64 {
        if i < HIST_LINEAR {
            return i as u64;
        }
        let msb = 4 + (i - HIST_LINEAR) / HIST_SUB;
        let sub = ((i - HIST_LINEAR) % HIST_SUB) as u64;
        let lower = (8 + sub) << (msb - 3);
        lower.saturating_add((1u64 << (msb - 3)) - 1)
    }

    pub(crate) fn record(&self, ns: u64) {
        self.buckets[Self::index(ns)].fetch_add(1, Relaxed);
        self.max.fetch_max(ns, Relaxed);
        self.sum.fetch_add(ns, Relaxed);
    }

    /// Cumulative counts at the octave edges `2^k - 1` ns for k in
    /// `from..=to` (see [`DecisionHistogram`]).
    pub(crate) fn octaves(&self, from: u32, to: u32) -> DecisionHistogram {
        let counts: [u64; HIST_BUCKETS] = std::array::from_fn(|i| self.buckets[i].load(Relaxed));
        let mut out = DecisionHistogram { count: counts.iter().sum(), sum_ns: self.sum.load(Relaxed), buckets: Vec::new() };
        for k in from..=to.min(63) {
            let bound = (1u64 << k) - 1;
            let cum = counts.iter().enumerate().filter(|(i, _)| Self::upper(*i) <= bound).map(|(_, c)| c).sum();
            out.buckets.push((bound, cum));
        }
        out
    }

    /// The `q` quantile (upper bound of its bucket, at most the max); 0 when
    /// empty.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        let counts: [u64; HIST_BUCKETS] = std::array::from_fn(|i| self.buckets[i].load(Relaxed));
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let target = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut cum = 0;
        for (i, c) in counts.iter().enumerate() {
            cum += c;
            if cum >= target {
                return Self::upper(i).min(self.max.load(Relaxed));
            }
        }
        self.max.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_paths() {
        let pre = vec!["/var/lib/containers/storage/overlay/abc/merged".to_owned(), "/x".to_owned()];
        let mut s = String::new();
        assert!(!normalise(b"/bin/busybox", &pre, &mut s));
        assert_eq!(s, "/bin/busybox");
        assert!(normalise(b"/var/lib/containers/storage/overlay/abc/merged/tmp/ls", &pre, &mut s));
        assert_eq!(s, "/tmp/ls");
        normalise(b"/var/lib/containers/storage/overlay/abc/merged", &pre, &mut s);
        assert_eq!(s, "/");
        normalise(b"/xy/z", &pre, &mut s);
        assert_eq!(s, "/xy/z", "prefix on a component boundary only");
        normalise(b"/tmp/\xffbad", &[], &mut s);
        assert_eq!(s, "/tmp/\u{fffd}bad");
        normalise(b"/tmp/x (deleted)", &pre, &mut s);
        assert_eq!(s, "/tmp/x (deleted)");
    }

    #[test]
    fn a_stripped_prefix_is_kept_only_for_the_host_file_itself() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("bin/httpd");
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, b"x").unwrap();
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&f).unwrap();
        let link = f.to_str().unwrap().as_bytes();
        assert!(same_file(link, (m.dev(), m.ino())), "the host path of the event's file");
        assert!(!same_file(link, (m.dev(), m.ino() + 1)), "another file at that path: the path was the container's");
        assert!(!same_file(b"/nonexistent/lancet/x", (m.dev(), m.ino())));
    }

    #[test]
    fn mount_ids_are_those_of_mountinfo() {
        let root = open_dir(Path::new("/")).unwrap();
        let id = mount_id(root.as_raw_fd()).unwrap();
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let ours = crate::mounts::mountinfo::parse(&text);
        assert!(ours.iter().any(|m| m.id == id && m.mount_point == "/"), "{id} in {text}");
        let proc = open_dir(Path::new("/proc")).unwrap();
        assert_ne!(mount_id(proc.as_raw_fd()).unwrap(), id, "/proc is a mount of its own");
    }

    #[test]
    fn histogram_buckets_and_quantiles() {
        for v in [0u64, 1, 15, 16, 17, 31, 32, 100, 1000, 12_345, 1 << 40, u64::MAX] {
            let i = Histogram::index(v);
            assert!(i < HIST_BUCKETS, "{v}");
            assert!(Histogram::upper(i) >= v, "{v}: upper {}", Histogram::upper(i));
            if i > 0 {
                assert!(Histogram::upper(i - 1) < v, "{v}: previous upper {}", Histogram::upper(i - 1));
            }
            // Within 12.5 % above 16.
            if v >= 16 {
                assert!((Histogram::upper(i) - v) as f64 <= v as f64 / 8.0, "{v}");
            }
        }
        let h = Histogram::default();
        // Octave edges count exactly: 3 values under 1023 ns, 1 over.
        let o = Histogram::default();
        for v in [5, 1000, 1023, 1024] {
            o.record(v);
        }
        let d = o.octaves(10, 11);
        assert_eq!(d.buckets, vec![(1023, 3), (2047, 4)]);
        assert_eq!((d.count, d.sum_ns), (4, 3052));
        assert_eq!(h.quantile(0.5), 0);
        for _ in 0..98 {
            h.record(10_000);
        }
        h.record(1_000_000);
        h.record(5_000_000);
        let p50 = h.quantile(0.5);
        assert!((10_000..=11_250).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99);
        assert!((1_000_000..=1_125_000).contains(&p99), "{p99}");
        assert_eq!(h.quantile(1.0), 5_000_000);
        assert_eq!(h.max.load(Relaxed), 5_000_000);
    }
}
