//! Protect mode: puts containers whose workload is in protect mode under the
//! enforcement backends, and carries out the response ladder (block, kill
//! the process, isolate, freeze), each isolation and freeze with an expiry.
//!
//! Every backend implements [`Backend`]: whether it holds on this host (and
//! why not), apply to a container, release it, stop. Which backends exist is
//! decided by what the host offers; `lancet doctor` and `GET
//! /v1/enforcement` list them with the reason when one does not hold.
//!
//! Exec and file permission decisions are made on a thread of their own
//! (fanotify permission events must be answered quickly and always), from a
//! table the event loop keeps current. Everything else runs on the loop.

use crate::config::FailModeSetting;
use lancet_engine::attribution::ContainerInfo;
use lancet_engine::profile::Profile;
use lancet_engine::response::{decide_exec, net_allow_list, resolvers, DenyReason, ExecRequest, ExecVerdict, NetAllow};
use lancet_sensor::enforce::{self, EnforceConfig, EnforceEvents, EnforceRecord, Enforcer, NetRule, PolicyFlags};
use lancet_sensor::fanotify::overlay::{overlay_upper_dir, written_in_container};
use lancet_sensor::fanotify::{FailMode, PermConfig, PermDecision, PermGuard, PermKind, PermRequest};
use serde::Serialize;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Settings of protect mode.
#[derive(Debug, Clone)]
pub struct ProtectOptions {
    pub pin_dir: PathBuf,
    pub fail_mode: FailModeSetting,
    /// Approvals become kernel ignore marks.
    pub exec_cache: bool,
    /// How long isolation and freezing last unless a rule says otherwise.
    pub response_expiry: Duration,
    /// Files whose reads are refused unless the profile learned them.
    pub protected_files: Vec<String>,
    /// Directories where opening a file for writing is refused unless the
    /// profile learned writes there.
    pub readonly_dirs: Vec<String>,
}

/// A container under protection.
#[derive(Debug, Clone)]
pub struct Guarded {
    pub id: String,
    pub name: String,
    pub workload: String,
    pub label: u64,
    pub cgroup_id: u64,
    pub cgroup_dir: PathBuf,
    /// A live process in the container (for `/proc/<pid>/root`).
    pub pid: u32,
    /// The root filesystem as the host sees it.
    pub rootfs: PathBuf,
    /// The container's writable layer on the host (overlay upper dir).
    pub upper: Option<PathBuf>,
    pub profile: Arc<Profile>,
    pub allow: Vec<NetAllow>,
    /// Every backend applied without error (else a later sighting retries,
    /// at most every [`RETRY`]).
    pub complete: bool,
    pub applied: Instant,
}

const RETRY: Duration = Duration::from_secs(1);

/// One small trait every enforcement backend implements.
pub trait Backend {
    fn name(&self) -> &'static str;
    /// `Err(reason)` when the backend does not hold on this host.
    fn availability(&self) -> Result<(), String>;
    /// Puts the container under this backend's rules (idempotent: called
    /// again when the profile changes).
    fn apply(&mut self, g: &Guarded) -> Result<(), String>;
    /// Lifts this backend's rules from the container.
    fn release(&mut self, g: &Guarded);
    fn stop(&mut self) {}
}

/// Something an enforcement backend did, to be reported as an alert.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Enforced {
    ExecDenied { label: u64, pid: i32, path: String, reason: DenyReason },
    OpenDenied { label: u64, pid: i32, path: String, write: Option<bool> },
    Kernel(#[serde(skip)] EnforceRecord),
}

/// What the permission thread decides from.
#[derive(Default)]
struct PermTable {
    by_label: HashMap<u64, PermEntry>,
}

struct PermEntry {
    profile: Arc<Profile>,
    /// The profile's executables, each resolved inside the container to
    /// the file it names (fanotify reports files, not the names run).
    executables: HashSet<String>,
    upper: Option<PathBuf>,
    protected_files: HashSet<String>,
}

/// The exec and file backends: one fanotify permission group, answered on a
/// thread of its own.
struct PermBackend {
    guard: PermGuard,
    table: Arc<RwLock<PermTable>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    protected_files: Vec<String>,
    readonly_dirs: Vec<String>,
    files: bool,
    /// Containers whose `/dev/shm` is marked too, and those where it was
    /// tried (once, from a process inside the container's root).
    shm_marked: HashSet<u64>,
    shm_tried: HashSet<u64>,
    /// Containers whose root carries the exec mark.
    exec_marked: HashSet<u64>,
}

/// Labels of a container's `/dev/shm` marks: its own label with this bit.
/// Nothing that ships in an image lives there, so every exec from it is
/// drift.
const SHM_LABEL: u64 = 1 << 63;

/// The decision of one permission event. Reads only memory, plus one
/// `lstat` in the container's upper layer for uncached execs.
fn decide(table: &RwLock<PermTable>, req: &PermRequest<'_>, denials: &SyncSender<Enforced>) -> PermDecision {
    let Ok(t) = table.read() else { return PermDecision { allow: true, remember: false } };
    let Some(label) = req.label else { return PermDecision { allow: true, remember: false } };
    if label & SHM_LABEL != 0 && req.kind == PermKind::Exec && t.by_label.contains_key(&(label & !SHM_LABEL)) {
        let path = if req.path.starts_with("/dev/shm/") { req.path.to_string() } else { format!("/dev/shm{}", req.path) };
        let reason = DenyReason::Drift(lancet_engine::drift::DriftKind::Tmpfs);
        let _ = denials.try_send(Enforced::ExecDenied { label: label & !SHM_LABEL, pid: req.pid, path, reason });
        return PermDecision { allow: false, remember: false };
    }
    let Some(e) = t.by_label.get(&label) else { return PermDecision { allow: true, remember: false } };
    match req.kind {
        PermKind::Exec => {
            let in_upper = e.upper.as_deref().map(|u| written_in_container(u, req.path));
            let in_baseline = e.profile.baseline().map(|b| b.lookup(req.path).is_some());
            let in_profile = e.executables.contains(req.path);
            match decide_exec(&ExecRequest { path: req.path, in_upper, in_baseline, written: None, in_profile }) {
                ExecVerdict::Allow { remember } => PermDecision { allow: true, remember },
                ExecVerdict::Deny(reason) => {
                    let _ = denials.try_send(Enforced::ExecDenied { label, pid: req.pid, path: req.path.to_string(), reason });
                    PermDecision { allow: false, remember: false }
                }
            }
        }
        PermKind::Open { write } => {
            let allowed = if e.protected_files.contains(req.path) {
                e.profile.has_sensitive_read(req.path)
            } else {
                // A write-protected directory: reads pass, writes only where
                // the profile learned them; unknown intent passes (fail open).
                write != Some(true) || e.profile.has_written_dir(parent_dir(req.path))
            };
            if !allowed {
                let _ = denials.try_send(Enforced::OpenDenied { label, pid: req.pid, path: req.path.to_string(), write });
            }
            PermDecision { allow: allowed, remember: false }
        }
    }
}

fn parent_dir(path: &str) -> &str {
    match path.trim_end_matches('/').rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

impl PermBackend {
    fn start(opts: &ProtectOptions, denials: SyncSender<Enforced>) -> Result<PermBackend, String> {
        let fail = match opts.fail_mode {
            FailModeSetting::Allow => FailMode::Allow,
            FailModeSetting::Deny => FailMode::Deny,
        };
        let guard = PermGuard::new(PermConfig { fail_mode: fail, ..PermConfig::default() }).map_err(|e| e.to_string())?;
        let table = Arc::new(RwLock::new(PermTable::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let exec_cache = opts.exec_cache;
        let thread = {
            let (guard, table, stop) = (guard.clone(), Arc::clone(&table), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("lancet-perm".into())
                .spawn(move || {
                    let mut decider = |req: &PermRequest<'_>| {
                        let mut d = decide(&table, req, &denials);
                        d.remember &= exec_cache;
                        d
                    };
                    if let Err(e) = guard.run(&stop, &mut decider) {
                        tracing::error!("permission events stopped: {e}; the kernel now allows what was guarded");
                    }
                })
                .map_err(|e| e.to_string())?
        };
        Ok(PermBackend {
            guard,
            table,
            stop,
            thread: Some(thread),
            protected_files: opts.protected_files.clone(),
            readonly_dirs: opts.readonly_dirs.clone(),
            files: !(opts.protected_files.is_empty() && opts.readonly_dirs.is_empty()),
            shm_marked: HashSet::new(),
            shm_tried: HashSet::new(),
            exec_marked: HashSet::new(),
        })
    }

    fn stats(&self) -> serde_json::Value {
        let s = self.guard.stats();
        serde_json::json!({
            "events": s.events, "allowed": s.allowed, "denied": s.denied, "remembered": s.remembered,
            "failModeAnswers": s.fail_mode_answers, "overflows": s.overflows, "errors": s.errors,
            "decisionP50Ns": s.decision_p50_ns, "decisionP99Ns": s.decision_p99_ns, "decisionMaxNs": s.decision_max_ns,
        })
    }
}

impl Backend for PermBackend {
    fn name(&self) -> &'static str {
        "exec+files (fanotify permission events)"
    }

    fn availability(&self) -> Result<(), String> {
        Ok(())
    }

    fn apply(&mut self, g: &Guarded) -> Result<(), String> {
        // A filesystem mark on the host's own filesystem would put every
        // exec of the host under this container's profile.
        if same_filesystem(&g.rootfs, Path::new("/")) {
            return Err(format!(
                "{} is on the host's root filesystem; exec marks are placed only on a container's own root",
                g.rootfs.display()
            ));
        }
        let upper = g.upper.clone().or_else(|| overlay_upper_dir(g.pid));
        let protected: HashSet<String> = self.protected_files.iter().filter(|p| !g.profile.has_sensitive_read(p)).cloned().collect();
        let profile_changed = {
            let t = self.table.read().map_err(|_| "permission table poisoned".to_string())?;
            t.by_label.get(&g.label).is_some_and(|e| !Arc::ptr_eq(&e.profile, &g.profile))
        };
        {
            let mut t = self.table.write().map_err(|_| "permission table poisoned".to_string())?;
            let root = &g.rootfs;
            let executables = g
                .profile
                .spec()
                .executables
                .iter()
                .flat_map(|e| {
                    let resolved = resolve_in_root(root, &e.path);
                    [Some(e.path.clone()), resolved]
                })
                .flatten()
                .collect();
            t.by_label
                .insert(g.label, PermEntry { profile: Arc::clone(&g.profile), executables, upper, protected_files: protected.clone() });
        }
        // Approvals of an older profile go; the marks stay in place (never
        // lifted and re-placed: that would leave a window).
        if profile_changed {
            self.guard.forget(g.label);
        }
        if self.exec_marked.insert(g.label) {
            if let Err(e) = self.guard.protect_exec(g.label, &g.rootfs) {
                self.exec_marked.remove(&g.label);
                return Err(format!("exec marks on {}: {e}", g.rootfs.display()));
            }
        }
        // The container's own /dev/shm (a tmpfs of its own), seen once the
        // container's processes run inside their root.
        let shm = PathBuf::from(format!("/proc/{}/root/dev/shm", g.pid));
        let proc_root = PathBuf::from(format!("/proc/{}/root", g.pid));
        let pivoted = proc_root.exists() && !same_filesystem(&proc_root, Path::new("/"));
        if pivoted
            && self.shm_tried.insert(g.label)
            && shm.is_dir()
            && !same_filesystem(&shm, &proc_root)
            && !same_filesystem(&shm, Path::new("/dev/shm"))
        {
            match self.guard.protect_exec(g.label | SHM_LABEL, &shm) {
                Ok(_) => {
                    self.shm_marked.insert(g.label);
                }
                Err(e) => tracing::warn!(container = %g.name, "/dev/shm not guarded: {e}"),
            }
        }
        if self.files {
            let files: Vec<&str> = protected.iter().map(String::as_str).collect();
            self.guard.protect_files(g.label, &g.rootfs, &files).map_err(|e| format!("file marks: {e}"))?;
            let dirs: Vec<&str> = self.readonly_dirs.iter().map(String::as_str).collect();
            self.guard.protect_dir_writes(g.label, &g.rootfs, &dirs).map_err(|e| format!("directory marks: {e}"))?;
        }
        Ok(())
    }

    fn release(&mut self, g: &Guarded) {
        let _ = self.guard.unprotect(g.label);
        self.exec_marked.remove(&g.label);
        self.shm_tried.remove(&g.label);
        if self.shm_marked.remove(&g.label) {
            let _ = self.guard.unprotect(g.label | SHM_LABEL);
        }
        if let Ok(mut t) = self.table.write() {
            t.by_label.remove(&g.label);
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The network and process backends share the pinned kernel state.
type SharedEnforcer = Rc<RefCell<Enforcer>>;

fn merge_flags(e: &mut Enforcer, cgid: u64, set: PolicyFlags, clear: PolicyFlags) -> Result<(), String> {
    let mut p = e.policy(cgid).map_err(|e| e.to_string())?.unwrap_or_default();
    p.flags = PolicyFlags((p.flags.bits() & !clear.bits()) | set.bits());
    // The kernel reads the deadline only with the isolate flag.
    p.isolate_until = None;
    if p.flags.is_empty() {
        e.clear(cgid).map_err(|e| e.to_string())
    } else {
        e.set_policy(cgid, p).map_err(|e| e.to_string())
    }
}

/// Per-container allow-lists in cgroup BPF maps (connect, sendmsg, bind).
struct NetBackend {
    enforcer: SharedEnforcer,
}

impl Backend for NetBackend {
    fn name(&self) -> &'static str {
        "network (cgroup connect/sendmsg/bind allow-lists)"
    }

    fn availability(&self) -> Result<(), String> {
        holds(&self.enforcer.borrow(), "connect")
    }

    fn apply(&mut self, g: &Guarded) -> Result<(), String> {
        let mut rules: Vec<NetRule> = g.allow.iter().map(to_rule).collect();
        let mut e = self.enforcer.borrow_mut();
        // Rules already pinned for this container stay: a peer whose address
        // is not known yet (just after a restart) must not lose its flow.
        if let Ok(old) = e.allow_rules(g.cgroup_id) {
            for r in old {
                if !rules.contains(&r) {
                    rules.push(r);
                }
            }
        }
        e.set_allow(g.cgroup_id, &rules).map_err(|e| e.to_string())?;
        merge_flags(&mut e, g.cgroup_id, PolicyFlags::NET_ENFORCE, PolicyFlags::NONE)
    }

    fn release(&mut self, g: &Guarded) {
        let mut e = self.enforcer.borrow_mut();
        let _ = e.set_allow(g.cgroup_id, &[]);
        let _ = merge_flags(&mut e, g.cgroup_id, PolicyFlags::NONE, PolicyFlags::NET_ENFORCE);
    }
}

fn to_rule(a: &NetAllow) -> NetRule {
    NetRule {
        cidr: a.cidr,
        port: a.port,
        proto: a.proto.map(|p| match p {
            lancet_engine::profile::Protocol::Tcp => enforce::Proto::Tcp,
            lancet_engine::profile::Protocol::Udp => enforce::Proto::Udp,
        }),
        dir: if a.bind { enforce::Direction::Bind } else { enforce::Direction::Egress },
        during_isolation: false,
    }
}

/// `Err(why)` unless every enforcement program whose hook names `what`
/// holds.
fn holds(e: &Enforcer, what: &str) -> Result<(), String> {
    let bad: Vec<String> = e
        .status()
        .into_iter()
        .filter(|h| h.hook.contains(what) && !h.holds)
        .map(|h| format!("{}: {}", h.hook, h.error.unwrap_or_else(|| "not attached".into())))
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("; "))
    }
}

/// Kills, in the kernel at exec time, what the exec backend cannot refuse:
/// execs from memfds, tmpfs (`/dev/shm`) and deleted files.
struct ProcessBackend {
    enforcer: SharedEnforcer,
}

const KILL_FLAGS: PolicyFlags =
    PolicyFlags(PolicyFlags::KILL_MEMFD_EXEC.bits() | PolicyFlags::KILL_TMPFS_EXEC.bits() | PolicyFlags::KILL_DELETED_EXEC.bits());

impl Backend for ProcessBackend {
    fn name(&self) -> &'static str {
        "process (bpf_send_signal at exec, pidfd kill)"
    }

    fn availability(&self) -> Result<(), String> {
        holds(&self.enforcer.borrow(), "exec")
    }

    fn apply(&mut self, g: &Guarded) -> Result<(), String> {
        merge_flags(&mut self.enforcer.borrow_mut(), g.cgroup_id, KILL_FLAGS, PolicyFlags::NONE)
    }

    fn release(&mut self, g: &Guarded) {
        let _ = merge_flags(&mut self.enforcer.borrow_mut(), g.cgroup_id, PolicyFlags::NONE, KILL_FLAGS);
    }
}

/// BPF-LSM would refuse execs, opens and connects in the kernel without a
/// userspace round trip; it is reported, not pretended, where the kernel
/// refuses LSM programs.
struct LsmBackend {
    reason: String,
}

impl Backend for LsmBackend {
    fn name(&self) -> &'static str {
        "bpf-lsm"
    }

    fn availability(&self) -> Result<(), String> {
        Err(self.reason.clone())
    }

    fn apply(&mut self, _: &Guarded) -> Result<(), String> {
        Err(self.reason.clone())
    }

    fn release(&mut self, _: &Guarded) {}
}

/// An isolation or freeze in force.
#[derive(Debug, Clone)]
struct Measure {
    until: Instant,
    cgroup_id: u64,
    cgroup_dir: PathBuf,
}

/// A container to put under protection (see [`Protector::guard`]).
pub struct GuardRequest<'a> {
    pub container: &'a ContainerInfo,
    pub workload: &'a str,
    /// A live process in the container.
    pub pid: u32,
    pub cgroup_id: u64,
    /// The cgroup v2 path relative to the mount, when known.
    pub cgroup_rel: Option<&'a str>,
    /// Where the host sees the root filesystem (from the OCI hook); else
    /// `/proc/<pid>/root`.
    pub rootfs: Option<PathBuf>,
    pub profile: Arc<Profile>,
}

/// The protect-mode side of the agent.
pub struct Protector {
    perm: Option<PermBackend>,
    enforcer: Option<SharedEnforcer>,
    records: Option<EnforceEvents>,
    backends: Vec<Box<dyn Backend>>,
    unavailable: Vec<(String, String)>,
    guarded: HashMap<String, Guarded>,
    next_label: u64,
    denials: Receiver<Enforced>,
    isolated: HashMap<String, Measure>,
    frozen: HashMap<String, Measure>,
    cgroup2: PathBuf,
    last_gc: Instant,
    pub counters: Counters,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Counters {
    pub guarded_total: u64,
    pub apply_errors: u64,
    pub kills: u64,
    pub isolations: u64,
    pub freezes: u64,
    pub releases: u64,
}

impl Protector {
    /// Starts every backend the host offers; the others are listed with the
    /// reason. Never fails: protect mode with fewer backends is reported,
    /// monitoring goes on.
    pub fn start(opts: ProtectOptions, cgroup2: &Path, lsm_reason: Option<String>) -> Protector {
        let (tx, rx) = sync_channel(4096);
        let mut unavailable = Vec::new();
        let perm = match PermBackend::start(&opts, tx) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::error!("exec and file protection unavailable: {e}");
                unavailable.push(("exec+files (fanotify permission events)".to_string(), e));
                None
            }
        };
        let enforcer = match Enforcer::open(EnforceConfig { pin_dir: opts.pin_dir.clone(), cgroup2_root: cgroup2.to_path_buf() }) {
            Ok(e) => {
                let adopted = e.list_cgroups().map(|l| l.len()).unwrap_or(0);
                tracing::info!(pins = %opts.pin_dir.display(), adopted, "kernel enforcement loaded");
                Some(Rc::new(RefCell::new(e)))
            }
            Err(e) => {
                let e = format!("{e:#}");
                tracing::error!("network and process enforcement unavailable: {e}");
                unavailable.push(("network+process (cgroup BPF)".to_string(), e));
                None
            }
        };
        let records = enforcer.as_ref().and_then(|e| match e.borrow().events() {
            Ok(r) => Some(r),
            Err(err) => {
                tracing::warn!("kernel enforcement records will not be reported: {err}");
                None
            }
        });
        let mut backends: Vec<Box<dyn Backend>> = Vec::new();
        if let Some(e) = &enforcer {
            backends.push(Box::new(NetBackend { enforcer: Rc::clone(e) }));
            backends.push(Box::new(ProcessBackend { enforcer: Rc::clone(e) }));
        }
        let lsm = LsmBackend { reason: lsm_reason.unwrap_or_else(|| "not built into this agent".into()) };
        unavailable.push((lsm.name().to_string(), lsm.availability().unwrap_err()));
        Protector {
            perm,
            enforcer,
            records,
            backends,
            unavailable,
            guarded: HashMap::new(),
            next_label: 1,
            denials: rx,
            isolated: HashMap::new(),
            frozen: HashMap::new(),
            cgroup2: cgroup2.to_path_buf(),
            last_gc: Instant::now(),
            counters: Counters::default(),
        }
    }

    /// Whether [`Protector::guard`] has work to do for this container: it is
    /// new, its profile changed, a backend failed, or its `/dev/shm` was not
    /// looked at yet.
    pub fn needs_apply(&self, id: &str, profile: &Arc<Profile>) -> bool {
        match self.guarded.get(id) {
            None => true,
            Some(g) => {
                let shm_done = self.perm.as_ref().is_none_or(|p| p.shm_tried.contains(&g.label));
                let settled = g.complete || g.applied.elapsed() < RETRY;
                !(settled && shm_done && Arc::ptr_eq(&g.profile, profile))
            }
        }
    }

    pub fn guarded(&self, id: &str) -> Option<&Guarded> {
        self.guarded.get(id)
    }

    pub fn by_label(&self, label: u64) -> Option<&Guarded> {
        self.guarded.values().find(|g| g.label == label)
    }

    pub fn by_cgroup(&self, cgid: u64) -> Option<&Guarded> {
        self.guarded.values().find(|g| g.cgroup_id == cgid)
    }

    /// Puts a container under protection, or refreshes its rules when its
    /// profile changed. `rootfs`: where the host sees its root filesystem
    /// (from the OCI hook); else `/proc/<pid>/root`.
    pub fn guard(&mut self, req: GuardRequest<'_>, addresses_of: impl Fn(&str) -> Vec<IpAddr>) {
        let GuardRequest { container: c, workload, pid, cgroup_id, cgroup_rel, rootfs, profile } = req;
        if !self.needs_apply(&c.id, &profile) && rootfs.is_none() {
            return;
        }
        let resolv = std::fs::read_to_string(format!("/proc/{pid}/root/etc/resolv.conf")).unwrap_or_default();
        let allow = net_allow_list(&profile, addresses_of, &resolvers(&resolv));
        let label = match self.guarded.get(&c.id) {
            Some(g) => g.label,
            None => {
                self.next_label += 1;
                self.next_label
            }
        };
        let cgroup_dir = match cgroup_rel {
            Some(rel) => self.cgroup2.join(rel.trim_start_matches('/')),
            None => enforce::cgroup_of_pid(pid, &self.cgroup2).unwrap_or_default(),
        };
        let mut g = Guarded {
            id: c.id.clone(),
            name: c.name.clone(),
            workload: workload.to_string(),
            label,
            cgroup_id,
            cgroup_dir,
            pid,
            // Keep the root the hook named: a later sighting's process may be
            // gone by the time it is used.
            rootfs: rootfs
                .or_else(|| self.guarded.get(&c.id).map(|g| g.rootfs.clone()))
                .unwrap_or_else(|| PathBuf::from(format!("/proc/{pid}/root"))),
            upper: c.upper_dir().map(|p| p.to_path_buf()),
            profile,
            allow,
            complete: false,
            applied: Instant::now(),
        };
        let first = !self.guarded.contains_key(&c.id);
        let mut errors = Vec::new();
        if let Some(p) = self.perm.as_mut() {
            if let Err(e) = p.apply(&g) {
                errors.push(format!("{}: {e}", p.name()));
            }
        }
        for b in self.backends.iter_mut() {
            if let Err(e) = b.apply(&g) {
                errors.push(format!("{}: {e}", b.name()));
            }
        }
        g.complete = errors.is_empty();
        if errors.is_empty() {
            tracing::info!(container = %c.name, workload, cgroup_id, "container protected");
        } else {
            self.counters.apply_errors += 1;
            tracing::warn!(container = %c.name, "container partly protected: {}", errors.join("; "));
        }
        if first {
            self.counters.guarded_total += 1;
        }
        self.guarded.insert(c.id.clone(), g);
    }

    /// Lifts every rule from a container (it left protect mode or is gone).
    pub fn unguard(&mut self, id: &str) {
        let Some(g) = self.guarded.remove(id) else { return };
        if let Some(p) = self.perm.as_mut() {
            p.release(&g);
        }
        for b in self.backends.iter_mut() {
            b.release(&g);
        }
        if let Some(e) = &self.enforcer {
            let _ = e.borrow_mut().clear(g.cgroup_id);
        }
        tracing::info!(container = %g.name, "container no longer protected");
    }

    /// Enforcement records waiting to be reported (permission denials, and
    /// the kernel's refusals and kills).
    pub fn drain(&mut self, out: &mut Vec<Enforced>) {
        while let Ok(d) = self.denials.try_recv() {
            out.push(d);
        }
        if let Some(r) = &self.records {
            match r.drain() {
                Ok(recs) => out.extend(recs.into_iter().map(Enforced::Kernel)),
                Err(err) => tracing::warn!("reading kernel enforcement records: {err}"),
            }
        }
    }

    /// Kills one process (pid-reuse safe).
    pub fn kill(&mut self, pid: u32) -> Result<(), String> {
        let start = enforce::process_start_time(pid).map_err(|e| format!("process {pid}: {e}"))?;
        enforce::kill_process(pid, Some(start), libc::SIGKILL).map_err(|e| e.to_string())?;
        self.counters.kills += 1;
        Ok(())
    }

    /// Cuts the container's network until `expire` passes or it is released.
    pub fn isolate(&mut self, id: &str, cgroup_id: u64, cgroup_dir: &Path, expire: Duration) -> Result<(), String> {
        let e = self.enforcer.as_ref().ok_or("network enforcement is not available on this host")?;
        e.borrow_mut().isolate(cgroup_id, cgroup_dir, expire).map_err(|e| e.to_string())?;
        self.isolated.insert(id.to_string(), Measure { until: Instant::now() + expire, cgroup_id, cgroup_dir: cgroup_dir.to_path_buf() });
        self.counters.isolations += 1;
        Ok(())
    }

    /// Freezes every process of the container until `expire` passes or it
    /// is released.
    pub fn freeze(&mut self, id: &str, cgroup_id: u64, cgroup_dir: &Path, expire: Duration) -> Result<(), String> {
        enforce::freeze(cgroup_dir).map_err(|e| e.to_string())?;
        self.frozen.insert(id.to_string(), Measure { until: Instant::now() + expire, cgroup_id, cgroup_dir: cgroup_dir.to_path_buf() });
        self.counters.freezes += 1;
        Ok(())
    }

    /// Undoes isolation and freezing. Returns what was undone.
    pub fn release(&mut self, id: &str) -> Vec<&'static str> {
        let mut done = Vec::new();
        if let Some(m) = self.isolated.remove(id) {
            if let Some(e) = &self.enforcer {
                match e.borrow_mut().release(m.cgroup_id, &m.cgroup_dir) {
                    Ok(()) => done.push("isolation"),
                    Err(err) => tracing::warn!(container = id, "releasing isolation: {err}"),
                }
            }
        }
        if let Some(m) = self.frozen.remove(id) {
            match enforce::thaw(&m.cgroup_dir) {
                Ok(_) => done.push("freeze"),
                Err(err) => tracing::warn!(container = id, "thawing: {err}"),
            }
        }
        if !done.is_empty() {
            self.counters.releases += 1;
        }
        done
    }

    /// Ends measures whose expiry passed.
    pub fn expire(&mut self) {
        let now = Instant::now();
        let due: Vec<String> =
            self.isolated.iter().chain(self.frozen.iter()).filter(|(_, m)| m.until <= now).map(|(id, _)| id.clone()).collect();
        for id in due {
            let done = self.release(&id);
            tracing::info!(container = %id, released = ?done, "response expired");
        }
        if let Some(e) = &self.enforcer {
            let e = e.borrow();
            if let Err(err) = e.expire_isolations() {
                tracing::warn!("expiring isolations: {err}");
            }
            // Entries of cgroups that are gone (containers that ended while
            // the agent was down, too), every half minute.
            if self.last_gc.elapsed() >= Duration::from_secs(30) {
                self.last_gc = Instant::now();
                let existing = cgroup_ids(&self.cgroup2, 6);
                match e.gc(|cgid| existing.contains(&cgid)) {
                    Ok(gone) if !gone.is_empty() => tracing::info!(cgroups = gone.len(), "enforcement entries of ended containers removed"),
                    Ok(_) => {}
                    Err(err) => tracing::warn!("cleaning enforcement maps: {err}"),
                }
            }
        }
    }

    /// Backends and their state, for `GET /v1/enforcement` and doctor.
    pub fn report(&self) -> serde_json::Value {
        let mut holds: Vec<serde_json::Value> = Vec::new();
        if let Some(p) = &self.perm {
            holds.push(serde_json::json!({"backend": p.name(), "holds": true, "stats": p.stats()}));
        }
        for b in &self.backends {
            holds.push(match b.availability() {
                Ok(()) => serde_json::json!({"backend": b.name(), "holds": true}),
                Err(r) => serde_json::json!({"backend": b.name(), "holds": false, "reason": r}),
            });
        }
        for (name, reason) in &self.unavailable {
            holds.push(serde_json::json!({"backend": name, "holds": false, "reason": reason}));
        }
        serde_json::json!({
            "backends": holds,
            "guarded": self.guarded.values().map(|g| serde_json::json!({"id": g.id, "name": g.name, "workload": g.workload, "cgroupId": g.cgroup_id, "cgroup": g.cgroup_dir, "allow": g.allow.len()})).collect::<Vec<_>>(),
            "isolated": self.isolated.keys().collect::<Vec<_>>(),
            "frozen": self.frozen.keys().collect::<Vec<_>>(),
            "counters": self.counters,
            "kernel": self.enforcer.as_ref().and_then(|e| e.borrow().stats().ok()),
            "programs": self.enforcer.as_ref().map(|e| e.borrow().status()),
        })
    }

    pub fn stop(&mut self) {
        if let Some(p) = self.perm.as_mut() {
            p.stop();
        }
        for b in self.backends.iter_mut() {
            b.stop();
        }
    }
}

/// The IPv4 addresses a process's network namespace owns (its interfaces'
/// local addresses, loopback left out), from `/proc/<pid>/net/fib_trie`:
/// how peers are named after an agent restart, before any traffic is seen.
pub fn netns_addresses(pid: u32) -> Vec<IpAddr> {
    std::fs::read_to_string(format!("/proc/{pid}/net/fib_trie")).map(|t| local_addresses(&t)).unwrap_or_default()
}

fn local_addresses(fib_trie: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut last: Option<std::net::Ipv4Addr> = None;
    for line in fib_trie.lines() {
        let l = line.trim();
        if let Some(ip) = l.strip_prefix("|-- ") {
            last = ip.trim().parse().ok();
        } else if l.contains("/32 host LOCAL") {
            if let Some(ip) = last.filter(|ip| !ip.is_loopback()) {
                if !out.contains(&IpAddr::V4(ip)) {
                    out.push(IpAddr::V4(ip));
                }
            }
        }
    }
    out
}

/// Both paths are on one filesystem (same device).
pub fn same_filesystem(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev(),
        _ => false,
    }
}

/// The ids (directory inodes) of every cgroup under `root`, `depth` levels
/// deep.
fn cgroup_ids(root: &Path, depth: usize) -> HashSet<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut out = HashSet::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, d)) = stack.pop() {
        if let Ok(m) = std::fs::metadata(&dir) {
            out.insert(m.ino());
        }
        if d >= depth {
            continue;
        }
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push((e.path(), d + 1));
                }
            }
        }
    }
    out
}

/// Resolves `path` inside the container whose root is `root` (e.g.
/// `/proc/<pid>/root`), following symlinks component by component, with
/// absolute targets taken relative to the container's root, never the
/// host's. None when a component is missing or links loop.
pub fn resolve_in_root(root: &Path, path: &str) -> Option<String> {
    let mut pending: Vec<String> = path.split('/').filter(|c| !c.is_empty()).map(str::to_string).rev().collect();
    let mut done: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(comp) = pending.pop() {
        match comp.as_str() {
            "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        let here = root.join(done.iter().map(String::as_str).chain([comp.as_str()]).collect::<Vec<_>>().join("/"));
        let meta = std::fs::symlink_metadata(&here).ok()?;
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return None;
            }
            let target = std::fs::read_link(&here).ok()?;
            let target = target.to_str()?;
            if target.starts_with('/') {
                done.clear();
            }
            pending.extend(target.split('/').filter(|c| !c.is_empty()).map(str::to_string).rev());
        } else {
            done.push(comp);
        }
    }
    Some(format!("/{}", done.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_addresses_from_fib_trie() {
        let t = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 10.89.0.0\n        /24 link UNICAST\n     |-- 10.89.0.5\n        /32 host LOCAL\n  +-- 127.0.0.0/8 2 0 2\n     |-- 127.0.0.1\n        /32 host LOCAL\nLocal:\n     |-- 10.89.0.5\n        /32 host LOCAL\n";
        assert_eq!(local_addresses(t), vec!["10.89.0.5".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn resolves_inside_the_root_only() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::fs::write(r.join("usr/bin/busybox"), b"").unwrap();
        std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
        std::os::unix::fs::symlink("busybox", r.join("usr/bin/sleep")).unwrap();
        std::os::unix::fs::symlink("/usr/bin/busybox", r.join("usr/bin/abs")).unwrap();
        std::os::unix::fs::symlink("../../../../etc/passwd", r.join("usr/bin/escape")).unwrap();
        std::os::unix::fs::symlink("loop", r.join("loop")).unwrap();
        assert_eq!(resolve_in_root(r, "/bin/sleep").as_deref(), Some("/usr/bin/busybox"));
        assert_eq!(resolve_in_root(r, "/bin/abs").as_deref(), Some("/usr/bin/busybox"));
        // `..` stops at the container's root; the host's /etc/passwd is not
        // inside it, so the result names a path that does not exist there.
        assert_eq!(resolve_in_root(r, "/bin/escape"), None);
        assert_eq!(resolve_in_root(r, "/loop"), None);
        assert_eq!(resolve_in_root(r, "/missing"), None);
    }
}
