//! Every kernel-side enforcement of protect mode, in one place:
//!
//! | file | what the kernel refuses or does |
//! |---|---|
//! | [`perm`](PermGroup) | fanotify permission events: execs of files not in the profile, opens of protected files, writes into watched directories (the task waits for the answer) |
//! | `immutable` | read-only binds of the protected directories inside the container's mount namespace (EROFS at the syscall) |
//! | `loader`, `pins`, `status` | the BPF object below: loading, adopting pins across agent restarts, what holds on this kernel |
//! | `maps`, `net` | per-container policy flags, network allow-lists and files whose exec kills |
//! | `isolation` | packet filters that cut one container off the network |
//! | `write_reports` | reports of writes refused by the read-only binds |
//! | `applets` | the applets a multi-call binary (busybox) may run as |
//! | `events`, `records` | the pinned ring of denials and kills, and its records |
//! | [`cgroup`], [`process`] | the cgroup freezer and pid-safe signals |
//!
//! The binary's `protect` module decides *what* to enforce per container
//! (from the engine's verdicts); this module only carries it into the
//! kernel.
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

mod applets;
pub mod cgroup;
mod events;
mod immutable;
mod isolation;
mod loader;
mod maps;
mod net;
pub(crate) mod perm;
mod pins;
pub mod process;
mod records;
mod status;
mod write_reports;

pub use applets::MulticallFile;
pub use cgroup::{cgroup_id, cgroup_of_pid, freeze, frozen, thaw, FreezeBackend};
pub use events::EnforceEvents;
pub use immutable::{
    apply_immutable, normalize_dirs, release_immutable, release_immutable_at, update_immutable, Applied, ImmutablePlan, Skipped, Step,
};
pub use net::{is_loopback, Direction, NetRule, Protocol};
pub use perm::{
    DecisionHistogram, FailMode, MarkScope, PermConfig, PermDecision, PermGroup, PermKind, PermRequest, PermStats, OVERLAYFS_MAGIC,
};
pub use pins::{check_pin_dir, unpin_all};
pub use process::{kill_process, process_start_time, start_ns_of_ticks, start_ticks};
pub use records::{Applet, EnforceOp, EnforceReason, EnforceRecord, WriteRefusal};
pub use status::{check, HookStatus, ProgramRuns, RunTimeStats};

use libbpf_rs::{Link, MapCore, MapHandle};
use serde::Serialize;
use std::io;
use std::ops::{BitOr, BitOrAssign};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn handles_can_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<Enforcer>();
        send::<EnforceEvents>();
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
