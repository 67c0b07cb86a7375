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
use lancet_engine::dns;
use lancet_engine::profile::Profile;
use lancet_engine::response::{net_allow_list, AllowList, DenyReason};
use lancet_sensor::enforce::{self, EnforceConfig, EnforceEvents, EnforceRecord, Enforcer, PolicyFlags};
use serde::Serialize;
use std::cell::RefCell;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use container::Containment;
use host::{cgroup_ids, root_to_guard};
pub use host::{content_sha256, in_host_root, netns_addresses, netns_inode, on_host, ppid_of, resolve_in_root, runtime_setup_process};
use immutable::ImmutableBackend;
use lsm::LsmBackend;
use network::NetBackend;
use perm::PermBackend;
use process::ProcessBackend;

mod approved;
pub use approved::Approved;
pub(crate) use perm::denial_reports_lost;
mod container;
mod host;
mod immutable;
mod lsm;
mod network;
mod perm;
mod process;

/// Settings of protect mode.
#[derive(Debug, Clone)]
pub struct ProtectOptions {
    pub pin_dir: PathBuf,
    pub fail_mode: FailModeSetting,
    /// Approvals become kernel ignore marks.
    pub exec_cache: bool,
    /// Interpreters run only the inline code (and stdin programs) their
    /// profile learned (config `interpreterCode: learned`).
    pub learned_code_only: bool,
    /// How long isolation and freezing last unless a rule says otherwise.
    pub response_expiry: Duration,
    /// Files whose reads are refused unless the profile learned them.
    pub protected_files: Vec<String>,
    /// Directories where opening a file for writing is refused unless the
    /// profile learned writes there.
    pub readonly_dirs: Vec<String>,
    /// The agent's state directory: what immutability changed in each
    /// container is kept there (per boot), so that a restarted agent can
    /// still undo it.
    pub state_dir: PathBuf,
    /// Where the host's files are (`/`, or the host mounted into the
    /// agent's container): its resolv.conf names the DNS servers every
    /// container may reach.
    pub host_root: PathBuf,
    /// DNS servers every protected container may reach besides those its
    /// runtime and the host configure (config `dnsServers`).
    pub dns_servers: Vec<IpAddr>,
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
    /// What it may execute, by file identity (from the profile and its
    /// root).
    pub approved: Arc<Approved>,
    pub allow: AllowList,
    /// Directories its policies declare writable: carved out of the
    /// read-only protected set.
    pub writable: Vec<String>,
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
    /// What the backend holds per container, for `GET /v1/enforcement`,
    /// when there is more to say than whether it holds.
    fn report(&self) -> Option<serde_json::Value> {
        None
    }
}

/// Something an enforcement backend did, to be reported as an alert.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Enforced {
    /// `argv`: the command line when it was read (interpreters), else empty.
    ExecDenied {
        label: u64,
        pid: i32,
        path: String,
        reason: DenyReason,
        argv: Vec<String>,
    },
    OpenDenied {
        label: u64,
        pid: i32,
        path: String,
        write: Option<bool>,
    },
    Kernel(#[serde(skip)] EnforceRecord),
}

/// The network and process backends share the pinned kernel state.
pub(super) type SharedEnforcer = Rc<RefCell<Enforcer>>;

pub(super) fn merge_flags(e: &mut Enforcer, cgid: u64, set: PolicyFlags, clear: PolicyFlags) -> Result<(), String> {
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

/// `Err(why)` unless every enforcement program whose hook names `what`
/// holds.
pub(super) fn holds(e: &Enforcer, what: &str) -> Result<(), String> {
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
    /// Directories its policies declare writable (`spec.writable`).
    pub writable: Vec<String>,
}

/// The protect-mode side of the agent.
pub struct Protector {
    perm: Option<PermBackend>,
    enforcer: Option<SharedEnforcer>,
    records: Option<EnforceEvents>,
    backends: Vec<Box<dyn Backend>>,
    unavailable: Vec<(String, String)>,
    guarded: lancet_engine::FastMap<String, Guarded>,
    next_label: u64,
    denials: Receiver<Enforced>,
    containment: Containment,
    cgroup2: PathBuf,
    host_root: PathBuf,
    dns_servers: Vec<IpAddr>,
    last_gc: Instant,
    pub counters: Counters,
    /// Pins found removed and put back since the daemon last looked.
    pub tampered: Vec<String>,
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
            backends.push(Box::new(ProcessBackend::new(Rc::clone(e))));
        }
        let immutable = ImmutableBackend::new(&opts.state_dir, enforcer.as_ref().map(Rc::clone));
        match immutable.availability() {
            Ok(()) => backends.push(Box::new(immutable)),
            Err(e) => unavailable.push((immutable.name().to_string(), e)),
        }
        let lsm = LsmBackend { reason: lsm_reason.unwrap_or_else(|| "not built into this agent".into()) };
        unavailable.push((lsm.name().to_string(), lsm.availability().unwrap_err()));
        Protector {
            perm,
            enforcer,
            records,
            backends,
            unavailable,
            guarded: Default::default(),
            next_label: 1,
            denials: rx,
            containment: Containment::default(),
            cgroup2: cgroup2.to_path_buf(),
            host_root: opts.host_root.clone(),
            dns_servers: opts.dns_servers.clone(),
            last_gc: Instant::now(),
            counters: Counters::default(),
            tampered: Vec::new(),
        }
    }

    /// Whether [`Protector::guard`] has work to do for this container: it is
    /// new, its profile changed, a backend failed, or its mounts were not
    /// looked at from inside its root yet.
    pub fn needs_apply(&self, id: &str, profile: &Arc<Profile>) -> bool {
        match self.guarded.get(id) {
            None => true,
            Some(g) => {
                let mounts_done = self.perm.as_ref().is_none_or(|p| p.mounts_tried.contains(&g.label));
                // A partial guard whose process is gone is tried again at
                // once: that process going is the likely failure (its root
                // could not be reached), and a new one is at hand.
                let gone = !Path::new(&format!("/proc/{}", g.pid)).exists();
                let settled = g.complete || (g.applied.elapsed() < RETRY && !gone);
                !(settled && mounts_done && Arc::ptr_eq(&g.profile, profile))
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
        let GuardRequest { container: c, workload, pid, cgroup_id, cgroup_rel, rootfs, profile, writable } = req;
        // A new run of the container (a restart under the same id, whose
        // old cgroup's end may not have been seen yet): everything of the
        // old run goes first, its marks, lists and approvals with it (the
        // new root is a new filesystem, its files new inodes).
        if self.guarded.get(&c.id).is_some_and(|g| g.cgroup_id != cgroup_id) {
            self.unguard(&c.id);
        }
        if !self.needs_apply(&c.id, &profile) && rootfs.is_none() {
            return;
        }
        // DNS servers from the runtime's record, the host's resolver
        // configuration and lancet's own, never from the container's
        // /etc/resolv.conf: the container can write that file (issue 17).
        let mut configured = dns::host_resolvers(&self.host_root);
        configured.extend_from_slice(&self.dns_servers);
        let resolvers = dns::trusted_resolvers(&c.network, &configured);
        let allow = net_allow_list(&profile, addresses_of, &resolvers);
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
        let rootfs = root_to_guard(rootfs, self.guarded.get(&c.id).map(|g| g.rootfs.as_path()), pid);
        let approved = match self.guarded.get(&c.id) {
            Some(old) if Arc::ptr_eq(&old.profile, &profile) && old.rootfs == rootfs && old.cgroup_id == cgroup_id => {
                Arc::clone(&old.approved)
            }
            _ => {
                let a = approved::approve(&profile, &host::reach_root(&self.host_root, &rootfs, pid), self.enforcer.is_some());
                if !a.missing.is_empty() {
                    tracing::info!(container = %c.name, missing = ?a.missing, "profile executables not found in this container");
                }
                Arc::new(a)
            }
        };
        let mut g = Guarded {
            id: c.id.clone(),
            name: c.name.clone(),
            workload: workload.to_string(),
            label,
            cgroup_id,
            cgroup_dir,
            pid,
            rootfs,
            upper: c.upper_dir().map(|p| on_host(&self.host_root, p)),
            profile,
            approved,
            allow,
            writable,
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
        // Mounts the other backends added (immutability's binds) get their
        // exec marks too.
        if let Some(p) = self.perm.as_mut() {
            if let Err(e) = p.mark_mounts(&g) {
                errors.push(format!("{}: {e}", p.name()));
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

    /// Kills `pid` if it is still the process that started at `start_ns`
    /// (as its event recorded it, `ProcessRef::start_ns`): a process that
    /// reused the pid since is left alone. With no recorded start (0) the
    /// process found now is the one killed.
    pub fn kill(&mut self, pid: u32, start_ns: u64) -> Result<(), String> {
        let start = match start_ns {
            0 => enforce::process_start_time(pid).map_err(|e| format!("process {pid}: {e}"))?,
            ns => enforce::start_ticks(ns),
        };
        enforce::kill_process(pid, Some(start), libc::SIGKILL).map_err(|e| e.to_string())?;
        self.counters.kills += 1;
        Ok(())
    }

    /// Cuts the container's network until `expire` passes or it is released.
    pub fn isolate(&mut self, id: &str, cgroup_id: u64, cgroup_dir: &Path, expire: Duration) -> Result<(), String> {
        self.containment.isolate(self.enforcer.as_ref(), id, cgroup_id, cgroup_dir, expire)?;
        self.counters.isolations += 1;
        Ok(())
    }

    /// Freezes every process of the container until `expire` passes or it
    /// is released.
    pub fn freeze(&mut self, id: &str, cgroup_id: u64, cgroup_dir: &Path, expire: Duration) -> Result<(), String> {
        self.containment.freeze(id, cgroup_id, cgroup_dir, expire)?;
        self.counters.freezes += 1;
        Ok(())
    }

    /// Undoes isolation and freezing. Returns what was undone.
    pub fn release(&mut self, id: &str) -> Vec<&'static str> {
        let done = self.containment.release(self.enforcer.as_ref(), id);
        if !done.is_empty() {
            self.counters.releases += 1;
        }
        done
    }

    /// Ends measures whose expiry passed, and collects the kernel entries
    /// of cgroups that are gone.
    pub fn expire(&mut self) {
        for id in self.containment.due(Instant::now()) {
            let done = self.release(&id);
            tracing::info!(container = %id, released = ?done, "response expired");
        }
        self.repair();
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

    /// Puts back what was removed under the pin directory while the agent
    /// runs (maps, links, the isolations in force), and notes it in
    /// [`Protector::tampered`] for an alert.
    fn repair(&mut self) {
        let Some(e) = &self.enforcer else { return };
        match e.borrow_mut().repair_pins() {
            Ok(fixed) if !fixed.is_empty() => {
                tracing::warn!(pins = ?fixed, "lancet's pins were removed while it runs; pinned again");
                self.tampered.extend(fixed);
            }
            Ok(_) => {}
            Err(err) => tracing::error!("lancet's pins were removed and could not be put back: {err}"),
        }
        for (id, cgid, dir, left) in self.containment.isolations(Instant::now()) {
            if left.is_zero() || e.borrow().isolation_pinned(cgid) {
                continue;
            }
            match e.borrow_mut().isolate(cgid, &dir, left) {
                Ok(()) => self.tampered.push(format!("isolation of {id}")),
                Err(err) => tracing::error!(container = %id, "an isolation's pins were removed and it could not be put back: {err}"),
            }
        }
    }

    /// The permission guard's decision times (None when it is not
    /// running).
    pub fn decision_histogram(&self) -> Option<lancet_sensor::enforce::DecisionHistogram> {
        self.perm.as_ref().map(|p| p.decision_histogram())
    }

    /// Backends and their state, for `GET /v1/enforcement` and doctor.
    pub fn report(&self) -> serde_json::Value {
        let mut holds: Vec<serde_json::Value> = Vec::new();
        if let Some(p) = &self.perm {
            holds.push(serde_json::json!({"backend": p.name(), "holds": true, "stats": p.stats()}));
        }
        for b in &self.backends {
            let mut h = match b.availability() {
                Ok(()) => serde_json::json!({"backend": b.name(), "holds": true}),
                Err(r) => serde_json::json!({"backend": b.name(), "holds": false, "reason": r}),
            };
            if let Some(state) = b.report() {
                h["state"] = state;
            }
            holds.push(h);
        }
        for (name, reason) in &self.unavailable {
            holds.push(serde_json::json!({"backend": name, "holds": false, "reason": reason}));
        }
        serde_json::json!({
            "backends": holds,
            "guarded": self.guarded.values().map(|g| serde_json::json!({"id": g.id, "name": g.name, "workload": g.workload, "cgroupId": g.cgroup_id, "cgroup": g.cgroup_dir, "allow": g.allow.rules.len()})).collect::<Vec<_>>(),
            "isolated": self.containment.isolated(),
            "frozen": self.containment.frozen(),
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
