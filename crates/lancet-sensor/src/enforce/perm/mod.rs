//! [`PermGroup`]: the fanotify permission backend of protect mode. The kernel
//! stops a task that execs a file on a protected container root, or opens a
//! protected file, until lancet answers allow or deny; a denied task gets
//! `EPERM` ("Operation not permitted") and the container goes on.
//!
//! # How it is used
//! One fanotify group (`FAN_CLASS_CONTENT`) per agent. Marks are added and
//! removed from any thread through a shared [`PermGroup`] (it is a cheap
//! clone of one `Arc`) while one thread runs [`PermGroup::run`], which reads
//! the events, asks a decider, and answers each one.
//!
//! - [`protect_exec`](PermGroup::protect_exec): `FAN_OPEN_EXEC_PERM` on a
//!   container's root filesystem. Each podman/containerd overlay root is its
//!   own superblock, so a `FAN_MARK_FILESYSTEM` mark covers exactly that
//!   container (verified on kernel 6.18 / podman 4.3: execs in a second
//!   container and on the host produce no event). The root's `st_dev` maps
//!   each event to its label with the one `fstat` of the event fd needed for
//!   (dev, ino) anyway.
//! - [`protect_exec_mount`](PermGroup::protect_exec_mount):
//!   `FAN_OPEN_EXEC_PERM` on one mount of a container besides its root (a
//!   volume, a bind mount of a host directory, a tmpfs). Always a mount
//!   mark: a bind mount shares the host's filesystem, and a filesystem mark
//!   there would put the host's own execs under the container's verdicts.
//!   Events on such mounts are mapped to their label by mount id (`statx`
//!   `STATX_MNT_ID` of the event fd), since one host filesystem may be
//!   mounted into several containers.
//! - [`protect_files`](PermGroup::protect_files): `FAN_OPEN_PERM` inode marks
//!   on single files (`/etc/shadow`).
//! - [`protect_dir_writes`](PermGroup::protect_dir_writes):
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
//! [`forget`](PermGroup::forget) (per label, re-resolves the remembered paths)
//! or [`clear_ignores`](PermGroup::clear_ignores) (all labels, complete).
//!
//! # Agent faults
//! Every event read is answered: the decider runs under `catch_unwind`, and a
//! panic, an event that cannot be resolved (`fstat`/`readlink` failed) or a
//! malformed read buffer is answered with the configured [`FailMode`] and
//! counted in [`PermStats::fail_mode_answers`]. When the agent dies (or drops
//! the last `PermGroup`) the kernel closes the group: it answers every pending
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

mod answer;
mod histogram;
mod marks;
#[cfg(test)]
mod tests;

pub use histogram::DecisionHistogram;
#[cfg(test)]
pub(crate) use marks::normalise;

use crate::fanotify::{fanotify_init, FanotifyError};
use histogram::Histogram;
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

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

/// Which kind of exec mark [`PermGroup::protect_exec`] placed.
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
    /// The event came through a mount mark ([`PermGroup::protect_exec_mount`]):
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
    /// [`forget`](PermGroup::forget) / [`clear_ignores`](PermGroup::clear_ignores).
    pub remember: bool,
}

impl PermDecision {
    pub const ALLOW: PermDecision = PermDecision { allow: true, remember: false };
    pub const ALLOW_REMEMBER: PermDecision = PermDecision { allow: true, remember: true };
    pub const DENY: PermDecision = PermDecision { allow: false, remember: false };
}

/// Counters since the group was created.
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
pub struct PermGroup {
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

impl PermGroup {
    /// Creates the group (`FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK |
    /// FAN_UNLIMITED_QUEUE | FAN_REPORT_TID`). Needs CAP_SYS_ADMIN.
    pub fn new(cfg: PermConfig) -> Result<Self, FanotifyError> {
        let fan = fanotify_init(
            libc::FAN_CLASS_CONTENT | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK | libc::FAN_UNLIMITED_QUEUE | libc::FAN_REPORT_TID,
            (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as u32,
        )?;
        let host_root_dev = crate::sys::host_root_id().map_or(u64::MAX, |(dev, _)| dev);
        Ok(PermGroup {
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
}

impl AsFd for PermGroup {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.fan.as_fd()
    }
}
