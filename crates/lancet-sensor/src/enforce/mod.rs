//! Kernel enforcement backends other than fanotify: per-container network
//! allow-lists, network isolation, killing execs that must not run, and (in
//! [`cgroup`] and [`process`]) the cgroup freezer and pid-safe signals.
//!
//! # Design
//!
//! One BPF object (`bpf/enforce.bpf.c`) whose maps and links are **pinned**
//! under a pin dir (default `/sys/fs/bpf/lancet/`), so the rules stay in force
//! while the agent is down or restarting. [`Enforcer::open`] adopts what it
//! finds there: pinned maps are reused before the programs load (their
//! contents, the rules, survive), and each pinned link is pointed at the newly
//! loaded program (`BPF_LINK_UPDATE`, or replaced where a link type cannot be
//! updated), so there is never a moment without enforcement.
//!
//! The socket programs are attached **once, at the cgroup v2 root**, through
//! `bpf_link`s (5.7; links compose with the sensor's own programs and with
//! anyone else's), and find the container by `bpf_get_current_cgroup_id()` in
//! maps keyed by the container's cgroup v2 id (the inode number of its
//! directory). Compared with attaching programs to each container's cgroup
//! this gives per-container allow-lists with one attachment, covers a new
//! container the moment its map entry is written (the OCI hook writes it
//! before the entrypoint runs: there is no attach race), survives the runtime
//! re-creating cgroups, and costs a cgroup without a policy one hash miss per
//! connect/bind/sendmsg. Only the packet filters used for isolation
//! (`cgroup_skb`) are attached per container, and only while it is isolated:
//! a per-packet hash lookup on every cgroup of the host is not worth paying
//! for a rare response.
//!
//! Limitation: policy is looked up by the cgroup of the calling task (or the
//! socket, for packets), so a process a container moves into a nested child
//! cgroup of its own is not covered; runc/podman containers run in one cgroup.
//!
//! | program | hook | minimum kernel |
//! |---|---|---|
//! | `enf_connect4/6` | `cgroup/connect4,6` | 4.17 |
//! | `enf_sendmsg4/6` | `cgroup/sendmsg4,6` (unconnected UDP `sendto`) | 4.18 |
//! | `enf_bind4/6` | `cgroup/bind4,6` | 4.17 |
//! | `enf_exec` | `tp_btf/sched_process_exec` + `bpf_send_signal` | 5.5 (5.3) |
//! | `enf_listen` | `tp_btf/inet_sock_set_state` + `bpf_send_signal` | 5.11 (`bpf_get_current_task_btf`) |
//! | `enf_listen_port` | `tp_btf/signal_deliver` (the port of a killed autobound listener) | 5.11 |
//! | `enf_sys_exit` | `raw_tp/sys_exit`, attached only while a cgroup has REPORT_EROFS | 5.11 |
//! | `enf_skb_in/out` | `cgroup_skb/ingress,egress` per isolated container | 4.10 (`bpf_skb_cgroup_id` 4.18) |
//!
//! Maps: `cg_policy` (hash), `net_allow` (LPM trie, 4.11), `kill_ino` (hash),
//! `multicall` and `applets` (hash), `enforce_events` (ring buffer, 5.8),
//! `enforce_stats` (per-CPU array), pinned; `write_budget` and
//! `listen_pending` (LRU hashes, transient, not pinned). Cgroup links need
//! 5.7; the cgroup v2 freezer 5.2.
//!
//! # Listeners
//!
//! `cgroup/bind4,6` judge explicit binds only: `bind()` to port 0 and
//! `listen()` on an unbound socket take an ephemeral port, and no cgroup hook
//! sees `listen()`. `enf_listen` judges every TCP socket that goes to LISTEN
//! in a container with NET_ENFORCE or NET_AUDIT like a bind of its local
//! address and port (the `Bind` rules; loopback exempt) and SIGKILLs the
//! process that called `listen()` (NET_ENFORCE) or reports it (NET_AUDIT):
//! one [`EnforceOp::Listen`] record with the port. A socket shared with
//! another process before `listen()` stays open there (the record names its
//! inode).
//!
//! # Writes refused by a read-only mount
//!
//! A container whose filesystem protect mode made read-only gets EROFS from
//! every write, and no other hook sees it. [`Enforcer::set_write_reports`]
//! flags the container ([`PolicyFlags::REPORT_EROFS`]); `enf_sys_exit` then
//! sends one [`EnforceOp::WriteRefused`] record per syscall of its tasks that
//! failed with EROFS (the writer, the syscall, its path or fd), at most
//! 64 a second per container (the rest are counted). Any `sys_exit`
//! program puts every syscall of every task on the host on the tracepoint
//! slow path, so the program is attached (pinned as `link-enf_sys_exit`)
//! only while at least one cgroup has the flag, and detached with the last.
//!
//! # Multi-call binaries
//!
//! fanotify's exec permission events name the *file*, so a multi-call binary
//! (busybox: `sh`, `nc`, `wget`, … are one inode, the applet chosen by
//! argv[0]) could only be approved whole. [`Enforcer::set_applets`] lists
//! such a file for a container with the applets it may run; with
//! [`PolicyFlags::KILL_APPLET`] set, `enf_exec` reads argv[0] of every exec
//! of that file from the new image and kills the process before its first
//! instruction when the applet is not listed (also when busybox re-executes
//! itself through `/proc/self/exe` with argv[0] = the applet, or runs
//! `busybox APPLET`). Other execs pay one hash lookup. What no exec hook
//! can see: busybox's `sh` runs its NOFORK applets (`echo`, `true`, `test`,
//! …) in the shell and its NOEXEC applets (`id`, `ls`, `cp`, `rm`, `env`, … in
//! Debian's build) in a forked child without any exec, so an allowed `sh`
//! runs those unchecked.

pub mod cgroup;
mod events;
mod net;
pub mod process;

pub use cgroup::{cgroup_id, cgroup_of_pid, freeze, frozen, thaw, FreezeBackend};
pub use events::{Applet, EnforceEvents, EnforceOp, EnforceReason, EnforceRecord, WriteRefusal};
pub use net::{is_loopback, Direction, NetRule, Proto};
pub use process::{kill_process, process_start_time};

use crate::skel::enforce::{EnforceSkel, EnforceSkelBuilder, OpenEnforceSkel};
use libbpf_rs::query::LinkTypeInfo;
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, MapHandle, OpenObject};
use serde::Serialize;
use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::ops::{BitOr, BitOrAssign};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// Default pin dir (shared/DESIGN.md: pins `/sys/fs/bpf/lancet/`).
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/lancet";

/// The pinned maps, by name (pinned as `<pin dir>/<name>`).
pub const MAP_NAMES: [&str; 7] = ["cg_policy", "net_allow", "kill_ino", "multicall", "applets", "enforce_events", "enforce_stats"];

/// Longest applet name that can be allowed (`LANCET_APPLET_LEN` - 1): the
/// kernel cuts longer names, and a cut name is never allowed.
pub const APPLET_NAME_MAX: usize = 31;
/// Longest dispatcher name (`LANCET_DISPATCHER_LEN` - 1).
pub const DISPATCHER_MAX: usize = 15;
/// busybox's dispatcher: it runs any argv[0] whose basename begins with
/// "busybox" as the applet named by the next argument (`busybox nc …`).
pub const BUSYBOX_DISPATCHER: &str = "busybox";
const APPLET_KEY_LEN: usize = 24 + 32;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const ISOLATE_PREFIX: &str = "isolate-";
const LINK_PREFIX: &str = "link-";

#[derive(Debug, Error)]
pub enum EnforceError {
    #[error("kernel enforcement needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN); running as uid {0}")]
    NotRoot(u32),
    #[error("{path} is not on a BPF filesystem; mount one with `mount -t bpf bpf /sys/fs/bpf`")]
    NoBpffs { path: PathBuf },
    #[error("pin dir {path}: {source}")]
    PinDir { path: PathBuf, source: io::Error },
    #[error("opening the enforcement BPF object: {0}")]
    Open(#[source] libbpf_rs::Error),
    #[error("loading the enforcement programs (maps pinned under {pin_dir}): {source}{hint}")]
    Load { pin_dir: PathBuf, source: libbpf_rs::Error, hint: &'static str },
    #[error("cgroup {path}: {source}")]
    Cgroup { path: PathBuf, source: io::Error },
    #[error("cgroup {path} has id {found}, not the expected {expected}")]
    CgroupMismatch { path: PathBuf, expected: u64, found: u64 },
    #[error("program {program} is not loaded on this kernel: {why}")]
    NotLoaded { program: &'static str, why: String },
    #[error("attaching {program} to {target}: {source}")]
    Attach { program: String, target: PathBuf, source: io::Error },
    #[error("pinning {path}: {source}")]
    Pin { path: PathBuf, source: io::Error },
    #[error("map {map} ({context}): {source}")]
    Map { map: &'static str, context: String, source: libbpf_rs::Error },
    #[error("ring buffer {map}: {source}")]
    RingBuffer { map: PathBuf, source: libbpf_rs::Error },
    #[error("freezing {path}: {why}")]
    Freeze { path: PathBuf, why: String },
    #[error("process {pid} is already gone")]
    ProcessGone { pid: u32 },
    #[error("not permitted to signal process {pid}")]
    NotPermitted { pid: u32 },
    #[error("pid {pid} belongs to another process now (start time {found}, expected {expected})")]
    PidReused { pid: u32, expected: u64, found: u64 },
    #[error("process {pid}: {source}")]
    Process { pid: u32, source: io::Error },
    #[error("applet name {name:?} {why}")]
    AppletName { name: String, why: &'static str },
    #[error("dispatcher {name:?} {why}")]
    Dispatcher { name: String, why: &'static str },
}

/// `LANCET_ESTAT_SLOTS`: the size of the pinned `enforce_stats`.
const STAT_SLOTS: u32 = 32;
/// The counters in use (`LANCET_ESTAT_MAX`).
const STAT_COUNT: usize = 15;
/// The program that reports writes refused with EROFS, and its tracepoint.
const SYS_EXIT_PROGRAM: &str = "enf_sys_exit";

pub type Result<T, E = EnforceError> = std::result::Result<T, E>;

fn map_err(map: &'static str, context: impl Into<String>) -> impl FnOnce(libbpf_rs::Error) -> EnforceError {
    let context = context.into();
    move |source| EnforceError::Map { map, context, source }
}

/// `struct lancet_cg_policy.flags` (bpf/lancet.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, Serialize)]
pub struct PolicyFlags(pub u32);

impl PolicyFlags {
    pub const NONE: PolicyFlags = PolicyFlags(0);
    /// connect/sendmsg/bind must match the allow-list, else EPERM.
    pub const NET_ENFORCE: PolicyFlags = PolicyFlags(1 << 0);
    /// The same check, only reported ([`EnforceRecord::denied`] false).
    pub const NET_AUDIT: PolicyFlags = PolicyFlags(1 << 1);
    /// Deny all network use but the isolation rules; set by [`Enforcer::isolate`].
    pub const ISOLATE: PolicyFlags = PolicyFlags(1 << 2);
    /// SIGKILL a process that execs a memfd.
    pub const KILL_MEMFD_EXEC: PolicyFlags = PolicyFlags(1 << 3);
    /// SIGKILL a process that execs a file on tmpfs or ramfs (`/dev/shm`, …).
    pub const KILL_TMPFS_EXEC: PolicyFlags = PolicyFlags(1 << 4);
    /// SIGKILL a process that execs an unlinked file (nlink 0).
    pub const KILL_DELETED_EXEC: PolicyFlags = PolicyFlags(1 << 5);
    /// SIGKILL a process that execs a file listed with [`Enforcer::kill_ino`].
    pub const KILL_EXEC_INO: PolicyFlags = PolicyFlags(1 << 6);
    /// SIGKILL a process that execs a multi-call file listed with
    /// [`Enforcer::set_applets`] as an applet that is not allowed.
    pub const KILL_APPLET: PolicyFlags = PolicyFlags(1 << 7);
    /// Report syscalls that fail with EROFS (writes refused by a read-only
    /// mount); managed by [`Enforcer::set_write_reports`], which attaches
    /// the program that reads it.
    pub const REPORT_EROFS: PolicyFlags = PolicyFlags(1 << 8);

    pub const fn bits(self) -> u32 {
        self.0
    }

    pub const fn contains(self, other: PolicyFlags) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn without(self, other: PolicyFlags) -> PolicyFlags {
        PolicyFlags(self.0 & !other.0)
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl BitOr for PolicyFlags {
    type Output = PolicyFlags;
    fn bitor(self, rhs: PolicyFlags) -> PolicyFlags {
        PolicyFlags(self.0 | rhs.0)
    }
}

impl BitOrAssign for PolicyFlags {
    fn bitor_assign(&mut self, rhs: PolicyFlags) {
        self.0 |= rhs.0;
    }
}

/// One container's policy. `isolate_until` is relative to now: when
/// setting, the isolation deadline; when read back, the time left
/// (`Some(ZERO)` once passed, `None` for no deadline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct CgPolicy {
    pub flags: PolicyFlags,
    pub isolate_until: Option<Duration>,
}

/// Where the enforcement state lives.
#[derive(Debug, Clone)]
pub struct EnforceConfig {
    /// Directory on bpffs holding the pinned maps and links.
    pub pin_dir: PathBuf,
    /// Host path of the cgroup v2 mount (`/sys/fs/cgroup/unified` in a hybrid setup).
    pub cgroup2_root: PathBuf,
}

impl Default for EnforceConfig {
    fn default() -> Self {
        EnforceConfig {
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            cgroup2_root: crate::probes::detect_cgroup2_root().unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup")),
        }
    }
}

/// Whether one enforcement program holds on this host (for `lancet doctor`).
#[derive(Debug, Clone, Serialize)]
pub struct HookStatus {
    pub program: String,
    pub hook: String,
    pub min_kernel: &'static str,
    /// What it is attached to: the cgroup v2 root, all execs, or isolated
    /// containers only.
    pub target: String,
    /// Loaded, and (for the root hooks) its pinned link is attached now.
    pub holds: bool,
    /// A pinned link existed when the enforcer opened and was taken over:
    /// pointed at the new program (`BPF_LINK_UPDATE`), or, for link types
    /// that cannot change program (the `tp_btf` one), replaced by a new link
    /// attached before the old one was detached.
    pub adopted: bool,
    pub pin: Option<PathBuf>,
    pub error: Option<String>,
}

/// Counters of `enforce_stats`, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EnforceStats {
    pub denied_connect4: u64,
    pub denied_connect6: u64,
    pub denied_sendmsg4: u64,
    pub denied_sendmsg6: u64,
    pub denied_bind4: u64,
    pub denied_bind6: u64,
    /// Operations NET_AUDIT reported but let through.
    pub audited: u64,
    /// Processes killed: execs, and listeners (also in `listen_kills`).
    pub kills: u64,
    /// `bpf_send_signal` refused (e.g. the task was already exiting).
    pub kill_failed: u64,
    pub isolate_dropped_ingress: u64,
    pub isolate_dropped_egress: u64,
    /// Records that did not fit in `enforce_events`.
    pub events_lost: u64,
    /// Writes refused with EROFS that were reported.
    pub write_refused: u64,
    /// ... and those past a container's budget (64 a second), not reported.
    pub write_refused_dropped: u64,
    /// Processes killed for listening on a port not allowed (also in `kills`).
    pub listen_kills: u64,
}

impl EnforceStats {
    /// Operations refused: connect/sendmsg/bind denials and listener kills.
    pub fn denied(&self) -> u64 {
        self.denied_connect4
            + self.denied_connect6
            + self.denied_sendmsg4
            + self.denied_sendmsg6
            + self.denied_bind4
            + self.denied_bind6
            + self.listen_kills
    }
}

/// What each program hooks, and since when the kernel has it.
fn program_info(name: &str) -> (&'static str, HookKind) {
    match name {
        "enf_connect4" | "enf_connect6" | "enf_bind4" | "enf_bind6" => ("4.17", HookKind::Root),
        "enf_sendmsg4" | "enf_sendmsg6" => ("4.18", HookKind::Root),
        "enf_exec" => ("5.5 (tp_btf), 5.3 (bpf_send_signal)", HookKind::Global),
        "enf_listen" | "enf_listen_port" => ("5.11 (bpf_get_current_task_btf), 5.5 (tp_btf)", HookKind::Global),
        SYS_EXIT_PROGRAM => ("5.11 (bpf_get_current_task_btf), 4.17 (raw_tp)", HookKind::OnDemand),
        "enf_skb_in" => ("4.18 (bpf_skb_cgroup_id)", HookKind::Isolation(Skb::Ingress)),
        "enf_skb_out" => ("4.18 (bpf_skb_cgroup_id)", HookKind::Isolation(Skb::Egress)),
        _ => ("?", HookKind::Global),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HookKind {
    /// A cgroup hook attached at the cgroup v2 root.
    Root,
    /// A tracing hook (all tasks).
    Global,
    /// A tracing hook attached only while some cgroup needs it (its cost is
    /// host-wide): `enf_sys_exit`, while a cgroup has REPORT_EROFS.
    OnDemand,
    /// A packet filter attached to a container's cgroup while it is isolated.
    Isolation(Skb),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skb {
    Ingress,
    Egress,
}

impl Skb {
    fn suffix(self) -> &'static str {
        match self {
            Skb::Ingress => "ingress",
            Skb::Egress => "egress",
        }
    }

    fn attach_type(self) -> libbpf_rs::libbpf_sys::bpf_attach_type {
        match self {
            Skb::Ingress => libbpf_rs::libbpf_sys::BPF_CGROUP_INET_INGRESS,
            Skb::Egress => libbpf_rs::libbpf_sys::BPF_CGROUP_INET_EGRESS,
        }
    }
}

/// The loaded enforcement backends. Dropping it leaves everything in force
/// (maps and links are pinned); [`unpin_all`] removes it all.
///
/// The handles are plain fds (`Send + Sync`): the enforcer can live in any
/// thread, and concurrent calls are safe (each map update is atomic in the
/// kernel; read-modify-write of one container's policy is not, so one
/// owner should decide per container).
pub struct Enforcer {
    cfg: EnforceConfig,
    cg_policy: MapHandle,
    net_allow: MapHandle,
    kill_ino: MapHandle,
    multicall: MapHandle,
    applets: MapHandle,
    stats: MapHandle,
    events: MapHandle,
    skb_in: Option<OwnedFd>,
    skb_out: Option<OwnedFd>,
    /// `enf_sys_exit` and its id, attached by [`Enforcer::set_write_reports`].
    sys_exit: Option<(OwnedFd, u32)>,
    /// The root hooks' links (pinned), with their program names.
    links: Vec<(String, Link)>,
    status: Vec<HookStatus>,
}

impl std::fmt::Debug for Enforcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enforcer").field("pin_dir", &self.cfg.pin_dir).field("status", &self.status).finish()
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

/// CLOCK_BOOTTIME in ns: the clock of `bpf_ktime_get_boot_ns()`.
pub fn boot_time_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, exclusively borrowed timespec for the call;
    // CLOCK_BOOTTIME exists on every kernel this code runs on (2.6.39+).
    let r = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if r != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Kernel accounting of BPF program run time (`BPF_ENABLE_STATS`, 5.8),
/// on while this guard lives. Reference-counted by the kernel, so it never
/// turns off statistics someone else (the `kernel.bpf_stats_enabled`
/// sysctl, another guard) turned on. Costs two clock reads per program run
/// while on; for measurements, not for production.
#[derive(Debug)]
pub struct RunTimeStats {
    _fd: OwnedFd,
}

impl RunTimeStats {
    pub fn enable() -> io::Result<RunTimeStats> {
        // SAFETY: plain syscall wrapper without pointers; on success it
        // returns a new fd that nothing else owns.
        let fd = unsafe { libbpf_rs::libbpf_sys::bpf_enable_stats(libbpf_rs::libbpf_sys::BPF_STATS_RUN_TIME) };
        if fd < 0 {
            return Err(io::Error::from_raw_os_error(-fd));
        }
        // SAFETY: `fd` was just returned by the kernel and is owned by no one else.
        Ok(RunTimeStats { _fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }
}

/// What the kernel reports about a loaded program.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProgramRuns {
    /// The program's id (as in `bpftool prog`, and `prog_id` of its links).
    pub id: u32,
    /// Runs and their total time, counted while [`RunTimeStats`] are on.
    pub run_cnt: u64,
    pub run_time_ns: u64,
    /// Instructions the verifier walked to accept it (its complexity).
    pub verified_insns: u32,
}

/// What the kernel says about program `id`, if it is loaded.
fn program_runs(id: u32) -> Option<ProgramRuns> {
    libbpf_rs::query::ProgInfoIter::default().find(|p| p.id == id).map(|p| ProgramRuns {
        id,
        run_cnt: p.run_cnt,
        run_time_ns: p.run_time_ns,
        verified_insns: p.verified_insns,
    })
}

/// The id of the program `fd` refers to.
fn prog_id(fd: &OwnedFd) -> io::Result<u32> {
    let mut info = libbpf_rs::libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of_val(&info) as u32;
    // SAFETY: `fd` is open; `info` is writable memory of `len` bytes for
    // the duration of the call, and the kernel writes at most `len` bytes.
    let r = unsafe { libbpf_rs::libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    if r < 0 {
        return Err(io::Error::from_raw_os_error(-r));
    }
    Ok(info.id)
}

/// `BPF_RAW_TRACEPOINT_OPEN`: attaches a raw_tp program by fd; the result is
/// a link fd (pinnable; it detaches when the last fd and pin are gone).
fn raw_tracepoint_open(prog: &OwnedFd, tracepoint: &std::ffi::CStr) -> io::Result<OwnedFd> {
    // SAFETY: `tracepoint` is NUL-terminated and `prog` open for the
    // duration of the call.
    let fd = unsafe { libbpf_rs::libbpf_sys::bpf_raw_tracepoint_open(tracepoint.as_ptr(), prog.as_raw_fd()) };
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(-fd));
    }
    // SAFETY: the call returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `enforce_stats` as pinned by an agent from before it had
/// LANCET_ESTAT_SLOTS slots cannot be reused (libbpf refuses a map of
/// another size, and the whole load with it): it is unpinned, so that this
/// load pins a new one. Only counters are lost; the programs of the old
/// agent keep their map until their links are replaced.
fn replace_resized_stats(pin_dir: &Path) {
    let path = pin_dir.join("enforce_stats");
    if !path.exists() {
        return;
    }
    match MapHandle::from_pinned_path(&path).and_then(|m| m.info()) {
        Ok(info) if info.info.max_entries == STAT_SLOTS => {}
        Ok(info) => {
            tracing::info!(pin = %path.display(), slots = info.info.max_entries, "enforce_stats has another size: replaced, its counts start again");
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(pin = %path.display(), "removing the old enforce_stats: {e}");
            }
        }
        Err(e) => tracing::warn!(pin = %path.display(), "reading the pinned enforce_stats: {e}"),
    }
}

/// Whether `path` lies on bpffs.
fn on_bpffs(path: &Path) -> io::Result<bool> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut st = MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `c` is a NUL-terminated path and `st` points to writable
    // memory of the size of `struct statfs` for the duration of the call.
    let r = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statfs returned 0, so it filled the struct.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// Creates the pin dir after checking it is (to be) on bpffs.
fn prepare_pin_dir(pin_dir: &Path) -> Result<()> {
    let mut probe = pin_dir;
    while !probe.exists() {
        match probe.parent() {
            Some(p) => probe = p,
            None => break,
        }
    }
    let ok = on_bpffs(probe).map_err(|source| EnforceError::PinDir { path: probe.to_path_buf(), source })?;
    if !ok && probe != pin_dir {
        return Err(EnforceError::NoBpffs { path: pin_dir.to_path_buf() });
    }
    std::fs::create_dir_all(pin_dir).map_err(|source| EnforceError::PinDir { path: pin_dir.to_path_buf(), source })?;
    if !on_bpffs(pin_dir).map_err(|source| EnforceError::PinDir { path: pin_dir.to_path_buf(), source })? {
        return Err(EnforceError::NoBpffs { path: pin_dir.to_path_buf() });
    }
    Ok(())
}

/// One entry per program of the object, nothing known yet.
fn initial_status(cgroup2_root: &Path) -> Result<Vec<HookStatus>> {
    let mut storage = MaybeUninit::uninit();
    let open = open_skel(&mut storage, None, None, &[])?;
    let status = open
        .open_object()
        .progs()
        .map(|p| {
            let program = p.name().to_string_lossy().into_owned();
            let (min_kernel, kind) = program_info(&program);
            let target = match kind {
                HookKind::Root => format!("cgroup v2 root {}", cgroup2_root.display()),
                HookKind::Global if program == "enf_exec" => "every exec".to_string(),
                HookKind::Global if program == "enf_listen" => "every TCP socket going to LISTEN".to_string(),
                HookKind::Global if program == "enf_listen_port" => "every SIGKILL delivered".to_string(),
                HookKind::Global => "all tasks".to_string(),
                HookKind::OnDemand => "every syscall exit, while a cgroup reports refused writes".to_string(),
                HookKind::Isolation(_) => "the cgroup of each isolated container".to_string(),
            };
            HookStatus {
                program,
                hook: p.section().to_string_lossy().into_owned(),
                min_kernel,
                target,
                holds: false,
                adopted: false,
                pin: None,
                error: None,
            }
        })
        .collect();
    Ok(status)
}

/// For `lancet doctor`, without touching any pin or rule: loads the
/// enforcement object with private (empty) maps and attaches each program
/// for an instant at `cgroup2_root` (with empty maps they let everything
/// through). `holds` then says whether that program type works here.
pub fn check(cgroup2_root: &Path) -> Vec<HookStatus> {
    let mut status = match initial_status(cgroup2_root) {
        Ok(s) => s,
        Err(e) => {
            return vec![HookStatus {
                program: "enforce".into(),
                hook: String::new(),
                min_kernel: "?",
                target: String::new(),
                holds: false,
                adopted: false,
                pin: None,
                error: Some(e.to_string()),
            }]
        }
    };
    let uid = euid();
    if uid != 0 {
        for st in status.iter_mut() {
            st.error = Some(EnforceError::NotRoot(uid).to_string());
        }
        return status;
    }
    let (mut first, mut retry) = (MaybeUninit::uninit(), MaybeUninit::uninit());
    let skel = match Enforcer::load(None, &mut first, &mut retry, &mut status) {
        Ok(s) => s,
        Err(e) => {
            for st in status.iter_mut().filter(|s| s.error.is_none()) {
                st.error = Some(e.to_string());
            }
            return status;
        }
    };
    let root = std::fs::File::open(cgroup2_root);
    for prog in skel.object().progs_mut() {
        let name = prog.name().to_string_lossy().into_owned();
        let Some(st) = status.iter_mut().find(|s| s.program == name) else { continue };
        if st.error.is_some() {
            continue;
        }
        let res = match (program_info(&name).1, &root) {
            (HookKind::Global | HookKind::OnDemand, _) => prog.attach(),
            (_, Ok(root)) => prog.attach_cgroup(root.as_raw_fd()),
            (_, Err(e)) => {
                st.error = Some(format!("cgroup v2 root {}: {e}", cgroup2_root.display()));
                continue;
            }
        };
        match res {
            Ok(link) => {
                st.holds = true;
                drop(link);
            }
            Err(e) => st.error = Some(format!("refused at attach: {e}")),
        }
    }
    status
}

/// Whether `pin_dir` is (or would be created) on bpffs; creates nothing.
pub fn check_pin_dir(pin_dir: &Path) -> Result<()> {
    let mut probe = pin_dir;
    while !probe.exists() {
        match probe.parent() {
            Some(p) => probe = p,
            None => break,
        }
    }
    match on_bpffs(probe) {
        Ok(true) => Ok(()),
        Ok(false) => Err(EnforceError::NoBpffs { path: pin_dir.to_path_buf() }),
        Err(source) => Err(EnforceError::PinDir { path: probe.to_path_buf(), source }),
    }
}

fn open_skel<'a>(
    storage: &'a mut MaybeUninit<OpenObject>,
    pin_dir: Option<&Path>,
    only: Option<&str>,
    skip: &[String],
) -> Result<OpenEnforceSkel<'a>> {
    let mut open = EnforceSkelBuilder::default().open(storage).map_err(EnforceError::Open)?;
    if let Some(dir) = pin_dir {
        for mut m in open.open_object_mut().maps_mut() {
            let name = m.name().to_string_lossy().into_owned();
            if MAP_NAMES.contains(&name.as_str()) {
                // Reused when pinned (and compatible), else created and pinned
                // by libbpf at load.
                m.set_pin_path(dir.join(&name)).map_err(EnforceError::Open)?;
            }
        }
    }
    crate::probes::select_programs(open.open_object_mut(), only, skip);
    Ok(open)
}

fn io_err(e: libbpf_rs::Error) -> io::Error {
    io::Error::other(e)
}

/// The cgroup id a cgroup link is attached to (0 once its cgroup is gone),
/// or None for other link types.
fn link_cgroup(link: &Link) -> Option<u64> {
    match link.info().ok()?.info {
        LinkTypeInfo::Cgroup(c) => Some(c.cgroup_id),
        _ => None,
    }
}

/// The link pinned at `path`, if there is one (checked first: libbpf logs
/// a warning for a missing pin).
fn open_link(path: &Path) -> libbpf_rs::Result<Link> {
    if !path.exists() {
        return Err(io::Error::from(io::ErrorKind::NotFound).into());
    }
    Link::open(path)
}

/// Detaches the link pinned at `path` (whoever holds it) and removes the pin.
fn destroy_pinned_link(path: &Path) -> io::Result<()> {
    if let Ok(link) = open_link(path) {
        if let Err(e) = link.detach() {
            tracing::debug!(path = %path.display(), "detaching a pinned link: {e}");
        }
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn pin_link(link: &mut Link, path: &Path) -> Result<()> {
    link.pin(path).map_err(|e| EnforceError::Pin { path: path.to_path_buf(), source: io_err(e) })
}

impl Enforcer {
    /// Loads the enforcement object, adopting the maps and links pinned under
    /// `cfg.pin_dir` (creating what is missing), and attaches the root hooks.
    /// A program this kernel refuses is left out and reported by
    /// [`Enforcer::status`]; the error is for what makes enforcement
    /// impossible (not root, no bpffs, maps that cannot load).
    pub fn open(cfg: EnforceConfig) -> Result<Enforcer> {
        let uid = euid();
        if uid != 0 {
            return Err(EnforceError::NotRoot(uid));
        }
        prepare_pin_dir(&cfg.pin_dir)?;
        let root =
            std::fs::File::open(&cfg.cgroup2_root).map_err(|source| EnforceError::Cgroup { path: cfg.cgroup2_root.clone(), source })?;
        let root_id = root.metadata().map_err(|source| EnforceError::Cgroup { path: cfg.cgroup2_root.clone(), source })?.ino();

        let mut status = initial_status(&cfg.cgroup2_root)?;
        replace_resized_stats(&cfg.pin_dir);

        let (mut first, mut retry) = (MaybeUninit::uninit(), MaybeUninit::uninit());
        let skel = Self::load(Some(&cfg.pin_dir), &mut first, &mut retry, &mut status)?;

        let mut links = Vec::new();
        let mut skb_in = None;
        let mut skb_out = None;
        let mut sys_exit = None;
        for prog in skel.object().progs_mut() {
            let name = prog.name().to_string_lossy().into_owned();
            let Some(st) = status.iter_mut().find(|s| s.program == name) else { continue };
            if st.error.is_some() {
                continue;
            }
            let (_, kind) = program_info(&name);
            match kind {
                HookKind::OnDemand => {
                    // Attached below, when some cgroup wants it.
                    match prog
                        .as_fd()
                        .try_clone_to_owned()
                        .map_err(|e| e.to_string())
                        .and_then(|fd| prog_id(&fd).map(|id| (fd, id)).map_err(|e| format!("reading the program's id: {e}")))
                    {
                        Ok(p) => {
                            st.holds = true;
                            sys_exit = Some(p);
                        }
                        Err(e) => st.error = Some(format!("keeping the program: {e}")),
                    }
                }
                HookKind::Isolation(skb) => {
                    match prog.as_fd().try_clone_to_owned() {
                        Ok(fd) => {
                            st.holds = true;
                            if skb == Skb::Ingress {
                                skb_in = Some(fd);
                            } else {
                                skb_out = Some(fd);
                            }
                        }
                        Err(e) => st.error = Some(format!("keeping the program: {e}")),
                    }
                    // Point the isolations pinned by an earlier agent at
                    // this program.
                    for (path, _) in isolation_pins(&cfg.pin_dir).into_iter().filter(|(_, (_, s))| *s == skb) {
                        match open_link(&path) {
                            Ok(mut l) => {
                                if let Err(e) = l.update_prog(&prog) {
                                    tracing::warn!(pin = %path.display(), "isolation link keeps its old program: {e}");
                                }
                            }
                            Err(e) => tracing::warn!(pin = %path.display(), "opening a pinned isolation link: {e}"),
                        }
                    }
                }
                HookKind::Root | HookKind::Global => {
                    let path = cfg.pin_dir.join(format!("{LINK_PREFIX}{name}"));
                    st.pin = Some(path.clone());
                    let attach = || -> Result<Link> {
                        let r = if kind == HookKind::Root { prog.attach_cgroup(root.as_raw_fd()) } else { prog.attach() };
                        r.map_err(|e| EnforceError::Attach {
                            program: name.clone(),
                            target: if kind == HookKind::Root { cfg.cgroup2_root.clone() } else { PathBuf::from(&st.hook) },
                            source: io_err(e),
                        })
                    };
                    let adopted = match open_link(&path) {
                        Ok(mut old) => {
                            let right_place = kind != HookKind::Root || link_cgroup(&old) == Some(root_id);
                            match right_place.then(|| old.update_prog(&prog)) {
                                Some(Ok(())) => Some(old),
                                other => {
                                    // A tracing link cannot change program, and
                                    // a link may hang off the wrong or a dead
                                    // cgroup: attach anew, then drop the old one.
                                    if let Some(Err(e)) = other {
                                        tracing::debug!(program = %name, "replacing pinned link: {e}");
                                    }
                                    match attach() {
                                        Ok(mut new) => {
                                            let _ = old.detach();
                                            drop(old);
                                            let _ = std::fs::remove_file(&path);
                                            match pin_link(&mut new, &path) {
                                                Ok(()) => {
                                                    links.push((name.clone(), new));
                                                    st.holds = true;
                                                    st.adopted = true;
                                                }
                                                Err(e) => st.error = Some(e.to_string()),
                                            }
                                        }
                                        Err(e) => st.error = Some(e.to_string()),
                                    }
                                    None
                                }
                            }
                        }
                        Err(_) => {
                            match attach().and_then(|mut l| pin_link(&mut l, &path).map(|()| l)) {
                                Ok(l) => {
                                    links.push((name.clone(), l));
                                    st.holds = true;
                                }
                                Err(e) => st.error = Some(e.to_string()),
                            }
                            None
                        }
                    };
                    if let Some(l) = adopted {
                        st.adopted = true;
                        st.holds = true;
                        links.push((name.clone(), l));
                    }
                }
            }
        }
        for st in status.iter().filter(|s| s.error.is_some()) {
            tracing::warn!(program = %st.program, hook = %st.hook, error = ?st.error, "enforcement hook not in force");
        }

        let handle = |name: &'static str| -> Result<MapHandle> {
            let m = skel
                .object()
                .maps()
                .find(|m| m.name().to_string_lossy() == name)
                .ok_or_else(|| EnforceError::Open(io::Error::other(format!("no map {name}")).into()))?;
            MapHandle::try_from(&m).map_err(map_err(name, "keeping a handle"))
        };
        let mut enforcer = Enforcer {
            cg_policy: handle("cg_policy")?,
            net_allow: handle("net_allow")?,
            kill_ino: handle("kill_ino")?,
            multicall: handle("multicall")?,
            applets: handle("applets")?,
            stats: handle("enforce_stats")?,
            events: handle("enforce_events")?,
            skb_in,
            skb_out,
            sys_exit,
            links,
            status,
            cfg,
        };
        // The object closes here; the pinned links, the kept program fds
        // and the map handles hold everything that matters.
        drop(skel);
        enforcer.adopt_write_reports();
        Ok(enforcer)
    }

    /// Loads with the maps pinned; if the kernel refuses some program, finds
    /// which (each on its own, unpinned) and loads the rest (into `retry`).
    fn load<'a>(
        pin_dir: Option<&Path>,
        first: &'a mut MaybeUninit<OpenObject>,
        retry: &'a mut MaybeUninit<OpenObject>,
        status: &mut [HookStatus],
    ) -> Result<EnforceSkel<'a>> {
        let shown = pin_dir.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("(not pinned)"));
        let all_err = match open_skel(first, pin_dir, None, &[])?.load() {
            Ok(skel) => return Ok(skel),
            Err(e) => e,
        };
        tracing::warn!("loading all enforcement programs failed ({all_err}); probing them one by one");
        let mut skip = Vec::new();
        for st in status.iter_mut() {
            let mut s = MaybeUninit::uninit();
            let alone = open_skel(&mut s, None, Some(&st.program), &[])?.load().map(drop);
            if let Err(e) = alone {
                st.error = Some(format!("refused at load: {e}"));
                skip.push(st.program.clone());
            }
        }
        if skip.is_empty() {
            // Every program loads alone: the pinned maps are the problem.
            return Err(EnforceError::Load {
                pin_dir: shown,
                source: all_err,
                hint: " (the pinned maps do not match this build, e.g. left by another lancet version; \
                       `unpin_all` removes them, and the rules in them)",
            });
        }
        if skip.len() == status.len() {
            return Err(EnforceError::Load { pin_dir: shown, source: all_err, hint: "" });
        }
        open_skel(retry, pin_dir, None, &skip)?.load().map_err(|source| EnforceError::Load { pin_dir: shown, source, hint: "" })
    }

    pub fn config(&self) -> &EnforceConfig {
        &self.cfg
    }

    /// Each program, whether it holds now (a root link still attached to the
    /// cgroup v2 root), and why not.
    pub fn status(&self) -> Vec<HookStatus> {
        let mut out = self.status.clone();
        let isolated = isolation_pins(&self.cfg.pin_dir).len() / 2;
        for st in out.iter_mut() {
            match program_info(&st.program).1 {
                HookKind::Root => {
                    if let Some((_, l)) = self.links.iter().find(|(n, _)| *n == st.program) {
                        if link_cgroup(l) == Some(0) {
                            st.holds = false;
                            st.error = Some("the link was detached".into());
                        }
                    }
                }
                HookKind::Isolation(_) => {
                    st.target = format!("the cgroup of each isolated container ({isolated} now)");
                }
                HookKind::OnDemand => {
                    let pin = self.sys_exit_pin();
                    let attached = pin.exists();
                    let flagged = self.write_reports().map(|v| v.len().to_string()).unwrap_or_else(|_| "?".into());
                    st.target = format!(
                        "every syscall exit, while a cgroup reports refused writes ({flagged} now; {})",
                        if attached { "attached" } else { "not attached" }
                    );
                    st.pin = attached.then_some(pin);
                }
                HookKind::Global => {}
            }
        }
        out
    }

    /// The counters, summed over CPUs.
    pub fn stats(&self) -> Result<EnforceStats> {
        let mut v = [0u64; STAT_COUNT];
        for (i, slot) in v.iter_mut().enumerate() {
            let key = (i as u32).to_ne_bytes();
            if let Some(per_cpu) = self.stats.lookup_percpu(&key, MapFlags::ANY).map_err(map_err("enforce_stats", format!("index {i}")))? {
                *slot = per_cpu.iter().filter_map(|b| b.get(..8).and_then(|b| b.try_into().ok())).map(u64::from_ne_bytes).sum();
            }
        }
        Ok(EnforceStats {
            denied_connect4: v[0],
            denied_connect6: v[1],
            denied_sendmsg4: v[2],
            denied_sendmsg6: v[3],
            denied_bind4: v[4],
            denied_bind6: v[5],
            audited: v[6],
            kills: v[7],
            kill_failed: v[8],
            isolate_dropped_ingress: v[9],
            isolate_dropped_egress: v[10],
            events_lost: v[11],
            write_refused: v[12],
            write_refused_dropped: v[13],
            listen_kills: v[14],
        })
    }

    /// Run statistics of the exec program (`enf_exec`) this enforcer
    /// attached, or None when it does not hold.
    pub fn exec_program_runs(&self) -> Result<Option<ProgramRuns>> {
        let Some((_, link)) = self.links.iter().find(|(n, _)| n == "enf_exec") else { return Ok(None) };
        let info = link.info().map_err(map_err("link-enf_exec", "reading the link"))?;
        Ok(program_runs(info.prog_id))
    }

    /// A reader of the denial/kill records. Independent of the enforcer: it
    /// keeps its own handle on the pinned ring.
    pub fn events(&self) -> Result<EnforceEvents> {
        let map = MapHandle::try_from(&self.events).map_err(map_err("enforce_events", "duplicating"))?;
        EnforceEvents::from_map(map, self.cfg.pin_dir.join("enforce_events"))
    }

    // ---- policies ----

    fn read_raw_policy(&self, cgid: u64) -> Result<Option<(u32, u64)>> {
        let v = self.cg_policy.lookup(&cgid.to_ne_bytes(), MapFlags::ANY).map_err(map_err("cg_policy", format!("cgroup {cgid}")))?;
        Ok(v.and_then(|v| {
            let flags = u32::from_ne_bytes(v.get(0..4)?.try_into().ok()?);
            let until = u64::from_ne_bytes(v.get(8..16)?.try_into().ok()?);
            Some((flags, until))
        }))
    }

    fn write_raw_policy(&self, cgid: u64, flags: u32, until_ns: u64) -> Result<()> {
        if flags == 0 {
            return delete(&self.cg_policy, &cgid.to_ne_bytes()).map_err(map_err("cg_policy", format!("cgroup {cgid}")));
        }
        let mut v = [0u8; 16];
        v[0..4].copy_from_slice(&flags.to_ne_bytes());
        v[8..16].copy_from_slice(&until_ns.to_ne_bytes());
        self.cg_policy.update(&cgid.to_ne_bytes(), &v, MapFlags::ANY).map_err(map_err("cg_policy", format!("cgroup {cgid}")))
    }

    /// Sets a container's policy. An isolation in force is kept unless
    /// `policy.flags` has ISOLATE itself (then `isolate_until` is its new
    /// deadline); isolation proper (the packet filters) is [`Enforcer::isolate`].
    /// Empty flags (and no isolation) remove the entry. REPORT_EROFS is
    /// taken as given, like the other flags ([`Enforcer::set_write_reports`]
    /// changes only it), and the program that reads it is attached or
    /// detached to match.
    pub fn set_policy(&self, cgid: u64, policy: CgPolicy) -> Result<()> {
        let old = self.read_raw_policy(cgid)?;
        let mut flags = policy.flags.bits();
        let mut until = 0;
        if policy.flags.contains(PolicyFlags::ISOLATE) {
            until = deadline(policy.isolate_until);
        } else if let Some((old, old_until)) = old {
            if old & PolicyFlags::ISOLATE.bits() != 0 && (old_until == 0 || old_until > boot_time_ns()) {
                flags |= PolicyFlags::ISOLATE.bits();
                until = old_until;
            }
        }
        let reports = PolicyFlags::REPORT_EROFS.bits();
        let had = old.is_some_and(|(f, _)| f & reports != 0);
        let wants = flags & reports != 0;
        if wants && !had {
            self.attach_write_reports()?;
        }
        self.write_raw_policy(cgid, flags, until)?;
        if had && !wants {
            self.sync_write_reports()?;
        }
        Ok(())
    }

    /// A container's policy, or None when it has none.
    pub fn policy(&self, cgid: u64) -> Result<Option<CgPolicy>> {
        Ok(self.read_raw_policy(cgid)?.map(|(flags, until)| CgPolicy {
            flags: PolicyFlags(flags),
            isolate_until: (until != 0).then(|| Duration::from_nanos(until.saturating_sub(boot_time_ns()))),
        }))
    }

    /// The cgroups that have a policy entry (for adoption after a restart).
    pub fn list_cgroups(&self) -> Result<Vec<u64>> {
        let mut v: Vec<u64> =
            self.cg_policy.keys().filter_map(|k| k.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_ne_bytes)).collect();
        v.sort_unstable();
        Ok(v)
    }

    /// Forgets a container: its policy, allow-list, kill list, applet lists
    /// and isolation links (and detaches the write reports' program if it
    /// was the last to want it). Call when it exits.
    pub fn clear(&self, cgid: u64) -> Result<()> {
        self.detach_isolation(cgid);
        let reported = self.read_raw_policy(cgid)?.is_some_and(|(f, _)| f & PolicyFlags::REPORT_EROFS.bits() != 0);
        delete(&self.cg_policy, &cgid.to_ne_bytes()).map_err(map_err("cg_policy", format!("cgroup {cgid}")))?;
        if reported {
            self.sync_write_reports()?;
        }
        self.remove_allow_entries(cgid, &std::collections::HashSet::new())?;
        for k in self.kill_ino.keys().collect::<Vec<_>>() {
            if key_cgid(&k) == Some(cgid) {
                delete(&self.kill_ino, &k).map_err(map_err("kill_ino", format!("cgroup {cgid}")))?;
            }
        }
        self.clear_applets(cgid)
    }

    /// Pins that went missing while this agent runs (someone removed
    /// files under the pin directory) are pinned again from what the agent
    /// holds: the maps, the root hooks' links, and the write reports' link
    /// when some cgroup still wants it. Returns what was repaired, so the
    /// caller can say so. An isolation's link is held by its pin alone: a
    /// removed one is gone (see [`Enforcer::isolation_pinned`]).
    pub fn repair_pins(&mut self) -> Result<Vec<String>> {
        let mut fixed = Vec::new();
        if !self.cfg.pin_dir.is_dir() {
            prepare_pin_dir(&self.cfg.pin_dir)?;
            fixed.push(self.cfg.pin_dir.display().to_string());
        }
        let dir = self.cfg.pin_dir.clone();
        let mut first_error = None;
        let mut pin = |name: String, fd: &dyn AsRawFd, fixed: &mut Vec<String>| {
            let path = dir.join(&name);
            if path.exists() {
                return;
            }
            // The raw call: libbpf refuses to pin a link it pinned before.
            match obj_pin(&fd.as_raw_fd(), &path) {
                Ok(()) => fixed.push(name),
                Err(source) => {
                    first_error.get_or_insert(EnforceError::Pin { path, source });
                }
            }
        };
        for (name, map) in [
            ("cg_policy", &self.cg_policy),
            ("net_allow", &self.net_allow),
            ("kill_ino", &self.kill_ino),
            ("multicall", &self.multicall),
            ("applets", &self.applets),
            ("enforce_stats", &self.stats),
            ("enforce_events", &self.events),
        ] {
            pin(name.to_string(), &map.as_fd(), &mut fixed);
        }
        for (name, link) in &self.links {
            pin(format!("{LINK_PREFIX}{name}"), &link.as_fd(), &mut fixed);
        }
        if let Some(e) = first_error {
            // What was put back is still reported; the rest is tried again.
            tracing::error!("a pin could not be put back: {e}");
        }
        if !self.write_reports()?.is_empty() && !self.write_reports_attached() {
            self.attach_write_reports()?;
            fixed.push(format!("{LINK_PREFIX}{SYS_EXIT_PROGRAM}"));
        }
        Ok(fixed)
    }

    /// Whether the isolation of `cgid` still has its pinned links (a
    /// removed pin lifts the isolation: the link was held by it alone).
    pub fn isolation_pinned(&self, cgid: u64) -> bool {
        [Skb::Ingress, Skb::Egress].iter().all(|&skb| isolation_pin(&self.cfg.pin_dir, cgid, skb).exists())
    }

    /// Removes every entry of cgroups for which `live` says false (gone
    /// while the agent was down). Returns the cgroups removed.
    pub fn gc(&self, live: impl Fn(u64) -> bool) -> Result<Vec<u64>> {
        let mut all: std::collections::BTreeSet<u64> = self.list_cgroups()?.into_iter().collect();
        all.extend(self.net_allow.keys().filter_map(|k| net::key_cgid(&k)));
        all.extend(self.kill_ino.keys().filter_map(|k| key_cgid(&k)));
        all.extend(self.multicall.keys().filter_map(|k| key_cgid(&k)));
        all.extend(self.applets.keys().filter_map(|k| key_cgid(&k)));
        all.extend(isolation_pins(&self.cfg.pin_dir).into_iter().map(|(_, (cgid, _))| cgid));
        let mut removed = Vec::new();
        for cgid in all {
            if !live(cgid) {
                self.clear(cgid)?;
                removed.push(cgid);
            }
        }
        Ok(removed)
    }

    // ---- isolation ----

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

    fn detach_isolation(&self, cgid: u64) {
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

    // ---- writes refused by a read-only mount ----

    /// Turns the reports of `cgid`'s writes refused with EROFS on or off
    /// (the REPORT_EROFS flag; the container's other flags stay). The
    /// program that sends them, `enf_sys_exit`, sees every syscall exit on
    /// the host, so it is attached (pinned as `link-enf_sys_exit`, so it
    /// outlives the agent like the rules) when the first cgroup turns them
    /// on, and detached when the last turns them off, is cleared or
    /// collected. Turning on fails, and changes nothing, when the program
    /// cannot be attached.
    pub fn set_write_reports(&self, cgid: u64, on: bool) -> Result<()> {
        let (flags, until) = self.read_raw_policy(cgid)?.unwrap_or((0, 0));
        let bit = PolicyFlags::REPORT_EROFS.bits();
        if on {
            // The program first: a flag without it would report nothing.
            self.attach_write_reports()?;
            if let Err(e) = self.write_raw_policy(cgid, flags | bit, until) {
                let _ = self.sync_write_reports();
                return Err(e);
            }
            Ok(())
        } else {
            self.write_raw_policy(cgid, flags & !bit, until)?;
            self.sync_write_reports()
        }
    }

    /// The cgroups whose refused writes are reported.
    pub fn write_reports(&self) -> Result<Vec<u64>> {
        let bit = PolicyFlags::REPORT_EROFS.bits();
        let mut v = Vec::new();
        for cgid in self.list_cgroups()? {
            if self.read_raw_policy(cgid)?.is_some_and(|(f, _)| f & bit != 0) {
                v.push(cgid);
            }
        }
        Ok(v)
    }

    /// Whether the write reports' program is attached now (its link is pinned).
    pub fn write_reports_attached(&self) -> bool {
        self.sys_exit_pin().exists()
    }

    /// The write reports' program as loaded by this enforcer (its id, and
    /// its run statistics while [`RunTimeStats`] are on), or None when it
    /// did not load. Whether it is attached: [`Enforcer::write_reports_attached`].
    pub fn write_reports_program(&self) -> Option<ProgramRuns> {
        self.sys_exit.as_ref().and_then(|(_, id)| program_runs(*id))
    }

    fn sys_exit_pin(&self) -> PathBuf {
        self.cfg.pin_dir.join(format!("{LINK_PREFIX}{SYS_EXIT_PROGRAM}"))
    }

    /// Attaches `enf_sys_exit` unless a link is pinned already (ours, or
    /// an earlier agent's not replaced).
    fn attach_write_reports(&self) -> Result<()> {
        let path = self.sys_exit_pin();
        if path.exists() {
            return Ok(());
        }
        let link = self.new_sys_exit_link()?;
        match obj_pin(&link, &path) {
            // Another enforcer on this pin dir was quicker: its link does.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r.map_err(|source| EnforceError::Pin { path, source }),
        }
    }

    fn new_sys_exit_link(&self) -> Result<OwnedFd> {
        let Some((prog, _)) = &self.sys_exit else {
            let why = self.status.iter().find(|s| s.program == SYS_EXIT_PROGRAM).and_then(|s| s.error.clone());
            return Err(EnforceError::NotLoaded { program: SYS_EXIT_PROGRAM, why: why.unwrap_or_default() });
        };
        raw_tracepoint_open(prog, c"sys_exit").map_err(|source| EnforceError::Attach {
            program: SYS_EXIT_PROGRAM.into(),
            target: PathBuf::from("raw_tp/sys_exit"),
            source,
        })
    }

    /// Unpins the link: it goes when no one holds it (the enforcer keeps
    /// no fd of it). A raw tracepoint link cannot be detached while held.
    fn detach_write_reports(&self) {
        let path = self.sys_exit_pin();
        if let Err(e) = destroy_pinned_link(&path) {
            tracing::warn!(pin = %path.display(), "removing the write reports' link: {e}");
        }
    }

    /// Attached exactly while some cgroup has REPORT_EROFS.
    fn sync_write_reports(&self) -> Result<()> {
        if self.write_reports()?.is_empty() {
            self.detach_write_reports();
            Ok(())
        } else {
            self.attach_write_reports()
        }
    }

    /// At open: a link an earlier agent pinned is replaced by one of this
    /// enforcer's program (attached before the old one goes, so no refused
    /// write is missed) while some cgroup wants reports, and removed when
    /// none does; a cgroup flagged with no link pinned gets one.
    fn adopt_write_reports(&mut self) {
        let path = self.sys_exit_pin();
        let had = path.exists();
        let want = match self.write_reports() {
            Ok(v) => !v.is_empty(),
            Err(e) => {
                tracing::warn!("reading which cgroups report refused writes: {e}");
                had
            }
        };
        let res = match (want, had) {
            (true, true) => self.new_sys_exit_link().and_then(|link| {
                let _ = destroy_pinned_link(&path);
                obj_pin(&link, &path).map_err(|source| EnforceError::Pin { path: path.clone(), source })
            }),
            (true, false) => self.attach_write_reports(),
            (false, _) => {
                self.detach_write_reports();
                Ok(())
            }
        };
        if let Some(st) = self.status.iter_mut().find(|s| s.program == SYS_EXIT_PROGRAM) {
            match res {
                Ok(()) => st.adopted = had && want,
                Err(e) => {
                    tracing::warn!("write reports not in force: {e}");
                    st.holds = false;
                    st.error = Some(e.to_string());
                }
            }
        }
    }

    // ---- exec kills ----

    /// Kills, from now on, every exec in `cgid` of the file `dev`/`ino`
    /// (with the KILL_EXEC_INO flag set). `dev` is the kernel's encoding, as
    /// in exec events' `exe_dev`; convert a `stat` st_dev with [`kernel_dev`].
    pub fn kill_ino(&self, cgid: u64, dev: u32, ino: u64) -> Result<()> {
        self.kill_ino
            .update(&kill_key(cgid, dev, ino), &1u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("kill_ino", format!("cgroup {cgid}, dev {dev:#x}, inode {ino}")))
    }

    pub fn forget_ino(&self, cgid: u64, dev: u32, ino: u64) -> Result<()> {
        delete(&self.kill_ino, &kill_key(cgid, dev, ino)).map_err(map_err("kill_ino", format!("cgroup {cgid}, dev {dev:#x}, inode {ino}")))
    }

    // ---- applets of multi-call binaries ----

    /// Makes `dev`/`ino` a multi-call file of `cgid` whose execs (with the
    /// KILL_APPLET flag set) run only as one of `names`, replacing what was
    /// allowed for it before. `dispatcher` is the name under which the file
    /// runs the applet named by its next argument ([`BUSYBOX_DISPATCHER`]
    /// for busybox, None for a binary that has none); a dispatcher alone
    /// (`busybox` without an applet) is never allowed.
    ///
    /// Names are what argv[0] is judged by: basenames (no '/'), at most
    /// [`APPLET_NAME_MAX`] bytes; an empty list lets no applet run. The
    /// update never refuses an applet that stays allowed: new names are
    /// added, then the file is listed, then stale names are removed. On
    /// error nothing was removed (some new names may already be allowed).
    pub fn set_applets(&self, cgid: u64, dev: u32, ino: u64, dispatcher: Option<&str>, names: &[&str]) -> Result<()> {
        let disp = dispatcher_value(dispatcher)?;
        let mut want = std::collections::BTreeSet::new();
        for name in names {
            check_applet_name(name, dispatcher)?;
            want.insert(*name);
        }
        let what = || format!("cgroup {cgid}, dev {dev:#x}, inode {ino}");
        let file = kill_key(cgid, dev, ino);
        let have: Vec<Vec<u8>> = self.applets.keys().filter(|k| k.get(..24) == Some(&file[..])).collect();
        for name in &want {
            self.applets.update(&applet_key(&file, name), &1u32.to_ne_bytes(), MapFlags::ANY).map_err(map_err("applets", what()))?;
        }
        self.multicall.update(&file, &disp, MapFlags::ANY).map_err(map_err("multicall", what()))?;
        for k in have {
            if !want.contains(key_applet_name(&k).as_str()) {
                delete(&self.applets, &k).map_err(map_err("applets", what()))?;
            }
        }
        Ok(())
    }

    /// Stops checking the applets of `dev`/`ino` in `cgid` (every applet of
    /// it runs again) and forgets its list.
    pub fn forget_applets(&self, cgid: u64, dev: u32, ino: u64) -> Result<()> {
        let what = || format!("cgroup {cgid}, dev {dev:#x}, inode {ino}");
        let file = kill_key(cgid, dev, ino);
        // The file first: while its list shrinks, no exec is judged by half of it.
        delete(&self.multicall, &file).map_err(map_err("multicall", what()))?;
        for k in self.applets.keys().filter(|k| k.get(..24) == Some(&file[..])).collect::<Vec<_>>() {
            delete(&self.applets, &k).map_err(map_err("applets", what()))?;
        }
        Ok(())
    }

    /// [`Enforcer::forget_applets`] for every multi-call file of `cgid`.
    pub fn clear_applets(&self, cgid: u64) -> Result<()> {
        for k in self.multicall.keys().filter(|k| key_cgid(k) == Some(cgid)).collect::<Vec<_>>() {
            delete(&self.multicall, &k).map_err(map_err("multicall", format!("cgroup {cgid}")))?;
        }
        for k in self.applets.keys().filter(|k| key_cgid(k) == Some(cgid)).collect::<Vec<_>>() {
            delete(&self.applets, &k).map_err(map_err("applets", format!("cgroup {cgid}")))?;
        }
        Ok(())
    }

    /// The multi-call files of `cgid` with their allowed applets (sorted),
    /// for status and tests. Applets left without their file (by an update
    /// cut short) are not listed.
    pub fn applets(&self, cgid: u64) -> Result<Vec<MulticallFile>> {
        let mut files = Vec::new();
        for k in self.multicall.keys().filter(|k| key_cgid(k) == Some(cgid)) {
            let Some(v) = self.multicall.lookup(&k, MapFlags::ANY).map_err(map_err("multicall", format!("cgroup {cgid}")))? else {
                continue;
            };
            let (Some(ino), Some(dev)) = (
                k.get(8..16).and_then(|b| b.try_into().ok()).map(u64::from_ne_bytes),
                k.get(16..20).and_then(|b| b.try_into().ok()).map(u32::from_ne_bytes),
            ) else {
                continue;
            };
            let dispatcher = nul_padded(&v);
            let mut applets: Vec<String> =
                self.applets.keys().filter(|a| a.get(..24) == k.get(..24)).map(|a| key_applet_name(&a)).collect();
            applets.sort();
            files.push(MulticallFile { dev, ino, dispatcher: (!dispatcher.is_empty()).then_some(dispatcher), applets });
        }
        files.sort_by_key(|f| (f.dev, f.ino));
        Ok(files)
    }
}

/// A multi-call file of one container and the applets it may run as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MulticallFile {
    /// The kernel's dev (as `exe_dev`) and the inode.
    pub dev: u32,
    pub ino: u64,
    pub dispatcher: Option<String>,
    pub applets: Vec<String>,
}

/// Refuses a name the kernel could never match as it is meant: it judges
/// the basename of argv[0], at most [`APPLET_NAME_MAX`] bytes.
fn check_applet_name(name: &str, dispatcher: Option<&str>) -> Result<()> {
    let why = if name.is_empty() {
        "is empty (an empty argv[0] is never allowed)"
    } else if name.len() > APPLET_NAME_MAX {
        "is longer than 31 bytes: the kernel cuts argv[0] there and never allows a cut name"
    } else if name.contains('/') {
        "contains '/': applets are judged by the basename of argv[0]"
    } else if name.contains('\0') {
        "contains a NUL byte"
    } else if dispatcher.is_some_and(|d| name.starts_with(d)) {
        "begins with the dispatcher: such an argv[0] is judged by the next argument, never by itself"
    } else {
        return Ok(());
    };
    Err(EnforceError::AppletName { name: name.to_string(), why })
}

/// The `multicall` value: the dispatcher, NUL-padded.
fn dispatcher_value(dispatcher: Option<&str>) -> Result<[u8; DISPATCHER_MAX + 1]> {
    let mut v = [0u8; DISPATCHER_MAX + 1];
    let Some(d) = dispatcher else { return Ok(v) };
    let why = if d.is_empty() {
        "is empty (use None for a binary without one)"
    } else if d.len() > DISPATCHER_MAX {
        "is longer than 15 bytes"
    } else if d.contains('/') || d.contains('\0') {
        "contains '/' or a NUL byte"
    } else {
        v[..d.len()].copy_from_slice(d.as_bytes());
        return Ok(v);
    };
    Err(EnforceError::Dispatcher { name: d.to_string(), why })
}

/// `struct lancet_applet_key`: the file's key, then the name NUL-padded.
fn applet_key(file: &[u8; 24], name: &str) -> [u8; APPLET_KEY_LEN] {
    let mut k = [0u8; APPLET_KEY_LEN];
    k[..24].copy_from_slice(file);
    k[24..24 + name.len()].copy_from_slice(name.as_bytes());
    k
}

fn key_applet_name(k: &[u8]) -> String {
    nul_padded(k.get(24..).unwrap_or_default())
}

fn nul_padded(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// A `stat` st_dev (userspace dev_t) in the kernel's encoding
/// (`major << 20 | minor`), as BPF sees `inode->i_sb->s_dev`.
pub fn kernel_dev(st_dev: u64) -> u32 {
    let major = libc::major(st_dev);
    let minor = libc::minor(st_dev);
    (major << 20) | (minor & 0xf_ffff)
}

fn kill_key(cgid: u64, dev: u32, ino: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[0..8].copy_from_slice(&cgid.to_ne_bytes());
    k[8..16].copy_from_slice(&ino.to_ne_bytes());
    k[16..20].copy_from_slice(&dev.to_ne_bytes());
    k
}

fn key_cgid(k: &[u8]) -> Option<u64> {
    k.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_ne_bytes)
}

/// Deletes a key; a missing key is fine.
fn delete(map: &MapHandle, key: &[u8]) -> std::result::Result<(), libbpf_rs::Error> {
    match map.delete(key) {
        Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// A deadline `d` from now on the boot clock; 0 (none) for None.
fn deadline(d: Option<Duration>) -> u64 {
    match d {
        None => 0,
        // Saturates: a deadline past the clock's range is "far away", never
        // 0 (which the kernel reads as "no deadline").
        Some(d) => boot_time_ns().saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1)),
    }
}

fn isolation_pin(pin_dir: &Path, cgid: u64, skb: Skb) -> PathBuf {
    pin_dir.join(format!("{ISOLATE_PREFIX}{cgid}-{}", skb.suffix()))
}

/// The isolation links pinned in `pin_dir`: path, cgroup id and direction.
fn isolation_pins(pin_dir: &Path) -> Vec<(PathBuf, (u64, Skb))> {
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
fn link_create(prog: &OwnedFd, cgroup: &std::fs::File, attach: libbpf_rs::libbpf_sys::bpf_attach_type) -> io::Result<OwnedFd> {
    // SAFETY: both fds are open for the duration of the call; a null opts
    // pointer is allowed by libbpf (no options).
    let fd = unsafe { libbpf_rs::libbpf_sys::bpf_link_create(prog.as_raw_fd(), cgroup.as_raw_fd(), attach, std::ptr::null()) };
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(-fd));
    }
    // SAFETY: bpf_link_create returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn obj_pin(fd: &impl AsRawFd, path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: `fd` is open and `c` is a NUL-terminated path, both valid for
    // the duration of the call.
    let r = unsafe { libbpf_rs::libbpf_sys::bpf_obj_pin(fd.as_raw_fd(), c.as_ptr()) };
    if r < 0 {
        return Err(io::Error::from_raw_os_error(-r));
    }
    Ok(())
}

/// Detaches every link pinned under `pin_dir` and removes every pin lancet
/// made there (for uninstall and tests), then the dir when it is empty.
/// A dir that does not exist is fine.
pub fn unpin_all(pin_dir: &Path) -> Result<()> {
    let rd = match std::fs::read_dir(pin_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(EnforceError::PinDir { path: pin_dir.into(), source }),
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let res = if name.starts_with(LINK_PREFIX) || name.starts_with(ISOLATE_PREFIX) {
            destroy_pinned_link(&path)
        } else if MAP_NAMES.contains(&name.as_str()) {
            std::fs::remove_file(&path)
        } else {
            continue;
        };
        res.map_err(|source| EnforceError::Pin { path, source })?;
    }
    match std::fs::remove_dir(pin_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
            tracing::info!(dir = %pin_dir.display(), "pin dir kept: it holds pins lancet did not make");
            Ok(())
        }
        Err(source) => Err(EnforceError::PinDir { path: pin_dir.into(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_dev_encodes_major_and_minor() {
        assert_eq!(kernel_dev(libc::makedev(8, 1)), (8 << 20) | 1);
        assert_eq!(kernel_dev(libc::makedev(0, 0x2f)), 0x2f);
        assert_eq!(kernel_dev(libc::makedev(259, 0x12345)), (259 << 20) | 0x12345);
    }

    #[test]
    fn abi_sizes_match_the_header() {
        use crate::skel::enforce::types;
        assert_eq!(std::mem::size_of::<types::lancet_net_key>(), 32);
        assert_eq!(std::mem::size_of::<types::lancet_kill_key>(), 24);
        assert_eq!(std::mem::size_of::<types::lancet_cg_policy>(), 16);
        assert_eq!(std::mem::size_of::<types::lancet_enforce_event>(), 416);
        // LANCET_ENFORCE_EVENT_SHORT: the size of every record but a write
        // refusal, which alone carries `path`.
        assert_eq!(std::mem::offset_of!(types::lancet_enforce_event, path), 160);
        assert_eq!(std::mem::size_of::<types::lancet_applet_key>(), APPLET_KEY_LEN);
        assert_eq!(std::mem::size_of::<types::lancet_multicall>(), DISPATCHER_MAX + 1);
    }

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

    #[test]
    fn handles_can_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<Enforcer>();
        send::<EnforceEvents>();
    }

    #[test]
    fn applet_names_the_kernel_cannot_match_are_refused() {
        let bb = Some(BUSYBOX_DISPATCHER);
        for ok in ["sh", "nc", "-sh", "s".repeat(31).as_str(), "[["] {
            check_applet_name(ok, bb).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
        for bad in ["", "s".repeat(32).as_str(), "bin/sh", "a\0b", "busybox", "busybox.static"] {
            let e = check_applet_name(bad, bb).expect_err(bad);
            assert!(matches!(e, EnforceError::AppletName { .. }), "{e}");
        }
        check_applet_name("busybox", None).unwrap();
        let long = check_applet_name(&"x".repeat(40), None).unwrap_err().to_string();
        assert!(long.contains("longer than 31 bytes"), "{long}");
    }

    #[test]
    fn applet_keys_and_dispatchers_are_laid_out_as_the_header_says() {
        let file = kill_key(7, 0x80_0001, 42);
        let k = applet_key(&file, "nc");
        assert_eq!(&k[..24], &file[..]);
        assert_eq!(&k[24..27], b"nc\0");
        assert!(k[26..].iter().all(|&b| b == 0));
        assert_eq!(key_cgid(&k), Some(7));
        assert_eq!(key_applet_name(&k), "nc");
        assert_eq!(key_applet_name(&applet_key(&file, &"a".repeat(31))), "a".repeat(31));
        assert_eq!(dispatcher_value(None).unwrap(), [0u8; 16]);
        assert_eq!(&dispatcher_value(Some("busybox")).unwrap()[..8], b"busybox\0");
        assert!(dispatcher_value(Some("")).is_err());
        assert!(dispatcher_value(Some(&"d".repeat(16))).is_err());
    }

    #[test]
    fn policy_flags_compose() {
        let f = PolicyFlags::NET_ENFORCE | PolicyFlags::KILL_MEMFD_EXEC;
        assert!(f.contains(PolicyFlags::NET_ENFORCE));
        assert!(!f.contains(PolicyFlags::ISOLATE));
        assert_eq!(f.without(PolicyFlags::NET_ENFORCE), PolicyFlags::KILL_MEMFD_EXEC);
        assert_eq!(f.bits(), 0b1001);
        assert_eq!(PolicyFlags::REPORT_EROFS.bits(), 1 << 8);
    }
}
