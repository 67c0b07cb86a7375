//! Guarding: containers of protect-mode workloads are put under the
//! enforcement backends (and taken out when their workload leaves protect
//! mode or they end), the response ladder's steps are carried out, and what
//! the backends enforced on their own is reported as alerts.

use super::alerts::Outcome;
use super::workloads::{workload_key, Live, Workload};
use super::{now_ns, Daemon};
use crate::agent::Pipeline;
use crate::api::{HookIdentity, Reply};
use crate::protect::{in_host_root, runtime_setup_process, Enforced, GuardRequest, ProtectOptions, Protector};
use anyhow::Result;
use lancet_engine::attribution::{Attribution, ContainerInfo};
use lancet_engine::drift::{normalise_code, program_source, Drift, DriftKind, ProgramSource};
use lancet_engine::event::{Event, EventKind, ExecEvent, FileEvent, FileOp, ProcessRef};
use lancet_engine::policy::{Action, Verdict};
use lancet_engine::process::ProcessTable;
use lancet_engine::profile::{Deviation, Mode, Peer, Protocol, STDIN_CODE};
use lancet_engine::response::{DenyReason, Ladder};
use lancet_engine::verdicts;
use lancet_sensor::enforce::{EnforceOp, EnforceReason, EnforceRecord};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The protect-mode side of the daemon.
pub(super) struct Guarding {
    pub(super) opts: ProtectOptions,
    /// Started when the first workload enters protect mode (or at start
    /// when pins exist or the default mode is protect).
    pub(super) protector: Option<Protector>,
    pub(super) cgroup2: PathBuf,
    lsm_reason: Option<String>,
    ladder: Ladder,
    /// Reused buffer of what the backends reported since the last tick.
    enforced: Vec<Enforced>,
}

impl Guarding {
    pub(super) fn new(opts: ProtectOptions, cgroup2: PathBuf, start_now: bool) -> Self {
        let lsm_reason = Some(lsm_unavailable_reason());
        let protector = start_now.then(|| Protector::start(opts.clone(), &cgroup2, lsm_reason.clone()));
        Guarding { ladder: Ladder::new(opts.response_expiry, 65_536), opts, protector, cgroup2, lsm_reason, enforced: Vec::new() }
    }

    /// The protector, started the first time it is needed.
    pub(super) fn protector(&mut self) -> &mut Protector {
        let (opts, cgroup2, lsm) = (&self.opts, &self.cgroup2, &self.lsm_reason);
        self.protector.get_or_insert_with(|| Protector::start(opts.clone(), cgroup2, lsm.clone()))
    }

    /// The container is under the backends.
    pub(super) fn is_guarded(&self, id: &str) -> bool {
        self.protector.as_ref().is_some_and(|p| p.guarded(id).is_some())
    }

    /// The kernel kills a direct exec of this file in the container (a
    /// loader approved only as an interpreter). `dev` in the kernel's
    /// encoding, as exec events carry it.
    pub(super) fn kills_loader(&self, id: &str, dev: u32, ino: u64) -> bool {
        let Some(g) = self.protector.as_ref().and_then(|p| p.guarded(id)) else { return false };
        g.approved.loaders.iter().any(|l| l.ino == ino && lancet_sensor::sys::kernel_dev(l.dev) == dev)
    }

    /// A container ended: its rules, measures and counters go.
    pub(super) fn forget(&mut self, id: &str) {
        if let Some(p) = self.protector.as_mut() {
            p.release(id);
            p.unguard(id);
        }
        self.ladder.forget_container(id);
    }

    /// The cgroup directory of a container, from its attribution.
    pub(super) fn cgroup_dir(&self, c: &ContainerInfo) -> PathBuf {
        self.cgroup2.join(c.cgroup_path.trim_start_matches('/'))
    }
}

impl Daemon {
    /// Hands a container to the protector, naming workload peers by the
    /// addresses their containers were seen with.
    fn guard(&mut self, req: GuardRequest<'_>) {
        let workloads = &self.workloads;
        self.guarding.protector().guard(req, |w| workloads.addresses_of(w));
    }

    /// Puts a container of a protect-mode workload under the backends.
    pub(super) fn ensure_guarded(&mut self, c: &ContainerInfo, key: &str) {
        let Some(profile) = self.workloads.map.get_mut(key).map(Workload::shared) else { return };
        self.ensure_guarded_with(c, key, profile);
    }

    /// Puts a container under the backends with `profile`.
    pub(super) fn ensure_guarded_with(&mut self, c: &ContainerInfo, key: &str, profile: Arc<lancet_engine::profile::Profile>) {
        let Some(live) = self.workloads.live(&c.id) else { return };
        if live.cgroup_id == 0 {
            return;
        }
        if !self.guarding.protector().needs_apply(&c.id, &profile) {
            return;
        }
        // The runtime's record of the container's init, else the oldest
        // process of its cgroup: the last process seen may be gone (an exec
        // that ended while the container idles, when a promotion comes from
        // another node), or go before its root is used.
        let pid = crate::agent::trusted_pid(c).or_else(|| first_in_cgroup(&self.guarding.cgroup_dir(c))).unwrap_or(live.pid);
        // A process that has not entered the container's root yet (runc
        // init before pivot_root) shows the host's root: wait for the OCI
        // hook or a later event.
        if !Path::new(&format!("/proc/{pid}/root")).exists() || in_host_root(pid) {
            return;
        }
        let rel = (!c.cgroup_path.is_empty()).then_some(c.cgroup_path.as_str());
        let writable = self.policies.set.writable_for(c).map(str::to_string).collect();
        self.guard(GuardRequest {
            container: c,
            workload: key,
            pid,
            cgroup_id: live.cgroup_id,
            cgroup_rel: rel,
            rootfs: None,
            profile,
            writable,
        });
    }

    /// Containers follow their workload's mode: into protection when it is
    /// protect, out of it otherwise; expired responses end.
    pub(super) fn sync_protection(&mut self) {
        let ids: Vec<Arc<ContainerInfo>> = self.workloads.containers.values().cloned().collect();
        for c in ids {
            if !self.workloads.is_live(&c.id) {
                continue;
            }
            let key = workload_key(&c).into_owned();
            let protect = self.workloads.map.get(&key).is_some_and(|w| w.profile.mode() == Mode::Protect);
            if protect {
                self.ensure_guarded(&c, &key);
            } else if let Some(p) = self.guarding.protector.as_mut() {
                if p.guarded(&c.id).is_some() {
                    p.unguard(&c.id);
                }
            }
        }
        if let Some(p) = self.guarding.protector.as_mut() {
            p.expire();
        }
    }

    /// In protect mode, the ladder's step for an enforcing verdict on a
    /// guarded container, carried out. Nothing elsewhere.
    pub(super) fn respond_in_protect(
        &mut self,
        ev: &Event,
        c: &ContainerInfo,
        mode: Mode,
        v: &Verdict,
        deviation: Option<&Deviation>,
    ) -> Outcome {
        if mode != Mode::Protect || !v.action.is_enforcing() || !self.guarding.is_guarded(&c.id) || runtime_setup_now(ev) {
            return Outcome::default();
        }
        // An interpreter's code is judged by the exec backend before the
        // interpreter's first instruction; one that got this far was let
        // through there (a terminal on stdin, or `interpreterCode: any`):
        // reported, never killed after the fact.
        if matches!(deviation, Some(Deviation::NewCode { .. })) && v.rule.as_ref() == "profile deviation: new_code" {
            return Outcome::default();
        }
        let r = self.guarding.ladder.respond(&c.id, v, ev.time_ns);
        let (enforced, mut note) = self.carry_out(ev, c, r.action, r.expire);
        if r.escalated {
            note = format!("escalated by rule; {note}");
        }
        Outcome { action: Some(r.action), enforced, note }
    }

    /// One step of the ladder on an event that already happened (the
    /// kernel-side refusals report through [`Enforced`]): a block that can
    /// no longer refuse an exec kills that process; kill-process kills the
    /// event's process; isolate and freeze act on the container. Returns
    /// (enforced, what was done).
    fn carry_out(&mut self, ev: &Event, c: &ContainerInfo, action: Action, expire: Option<Duration>) -> (bool, String) {
        let live = self.workloads.live(&c.id).unwrap_or_default();
        let cgroup_dir = self.guarding.cgroup_dir(c);
        let expire = expire.unwrap_or(self.guarding.opts.response_expiry);
        let Some(p) = self.guarding.protector.as_mut() else { return (false, "no enforcement backend is running".into()) };
        let res = match action {
            Action::Block if matches!(ev.kind, EventKind::Exec(_)) => p
                .kill(ev.process.pid, ev.process.start_ns)
                .map(|()| format!("exec could not be refused in time; process {} killed", ev.process.pid)),
            // File and network events report what already happened; their
            // refusals come from the backends in the kernel path.
            Action::Block => return (false, String::new()),
            Action::KillProcess => p.kill(ev.process.pid, ev.process.start_ns).map(|()| format!("process {} killed", ev.process.pid)),
            Action::Isolate => {
                p.isolate(&c.id, live.cgroup_id, &cgroup_dir, expire).map(|()| format!("network isolated for {}s", expire.as_secs()))
            }
            Action::Freeze => p.freeze(&c.id, live.cgroup_id, &cgroup_dir, expire).map(|()| format!("frozen for {}s", expire.as_secs())),
            Action::Audit | Action::Alert => Ok(String::new()),
        };
        match res {
            Ok(n) => (true, n),
            Err(e) => {
                tracing::warn!(container = %c.name, %action, "response not carried out: {e}");
                (false, e)
            }
        }
    }

    /// Reports what the backends enforced on their own.
    fn on_enforced(&mut self, e: Enforced) -> Result<()> {
        let Some(p) = self.guarding.protector.as_ref() else { return Ok(()) };
        let (id, ev, v, done) = match &e {
            Enforced::ExecDenied { label, pid, path, reason, argv } => {
                let Some(g) = p.by_label(*label) else { return Ok(()) };
                let origin = self.workloads.numbers.get(&g.id).and_then(|n| self.writes.lookup(n, path));
                let ev = synthetic_exec(*pid, g.cgroup_id, path, argv);
                let v = match reason {
                    DenyReason::Drift(k) => verdicts::drift(&Drift { kind: *k, path: path.clone(), origin }),
                    DenyReason::NotInProfile => Verdict::profile_deviation(&Deviation::NewExecutable { path: path.clone() }),
                    DenyReason::UnlearnedCode => {
                        let code = match &ev.kind {
                            EventKind::Exec(x) => match program_source(x) {
                                Some((_, ProgramSource::Code(c))) => normalise_code(&c),
                                _ => STDIN_CODE.to_string(),
                            },
                            _ => STDIN_CODE.to_string(),
                        };
                        Verdict::profile_deviation(&Deviation::NewCode { path: path.clone(), code })
                    }
                };
                (g.id.clone(), ev, v, Action::Block)
            }
            Enforced::OpenDenied { label, pid, path, write } => {
                let Some(g) = p.by_label(*label) else { return Ok(()) };
                let op = if *write == Some(true) { FileOp::Modify } else { FileOp::Open };
                let ev = Event {
                    time_ns: now_ns(),
                    cgroup_id: g.cgroup_id,
                    process: process_ref(*pid as u32),
                    kind: EventKind::File(FileEvent { op, path: path.clone(), old_path: None, host_path: String::new(), is_dir: false }),
                };
                (g.id.clone(), ev, verdicts::protected_access_refused(path, op == FileOp::Modify), Action::Block)
            }
            Enforced::Kernel(r) => {
                let Some(g) = p.by_cgroup(r.cgroup_id) else { return Ok(()) };
                let (v, done) = kernel_verdict(r);
                (g.id.clone(), r.to_event(), v, done)
            }
        };
        let Some(c) = self.workloads.containers.get(&id).cloned() else { return Ok(()) };
        let key = workload_key(&c).into_owned();
        let mode = self.workloads.map.get(&key).map(|w| w.profile.mode()).unwrap_or(Mode::Protect);
        self.alerts.tally.backend = Some(match &e {
            Enforced::ExecDenied { .. } | Enforced::OpenDenied { .. } => "fanotify",
            Enforced::Kernel(r) => match r.op {
                EnforceOp::ExecKill => "bpf-exec",
                EnforceOp::WriteRefused => "immutable",
                _ => "cgroup-bpf",
            },
        });
        let mut deviation = None;
        if let Enforced::Kernel(r) = &e {
            // A refused connection is a flow of the map too.
            let connect = matches!(r.op, EnforceOp::Connect4 | EnforceOp::Connect6 | EnforceOp::Sendmsg4 | EnforceOp::Sendmsg6);
            if let (true, true, Some(addr)) = (connect, r.denied, r.addr) {
                self.flows.on_refused(&c, &key, r);
                if r.reason != EnforceReason::Isolated {
                    let proto = r.proto.unwrap_or(Protocol::Tcp);
                    let peer = Peer::from(&self.workloads.peer(addr));
                    deviation = Some(Deviation::NewOutbound { peer, port: r.port, proto });
                }
            }
        }
        self.alert(&ev, &c, &key, mode, &v, Some(done), deviation.as_ref())
    }

    /// Reports what the backends did since the last tick.
    pub(super) fn drain_enforced(&mut self) -> Result<()> {
        let Some(p) = self.guarding.protector.as_mut() else { return Ok(()) };
        let mut batch = std::mem::take(&mut self.guarding.enforced);
        p.drain(&mut batch);
        for e in batch.drain(..) {
            self.on_enforced(e)?;
        }
        self.guarding.enforced = batch;
        Ok(())
    }

    /// From the OCI hook, before the container's first instruction: attribute
    /// it and put it under its workload's posture (the default mode for a
    /// workload without a profile). Answers only when that is done. The
    /// identity was established by the API from the peer and the runtime's
    /// state (`api::hook_identity`), never taken from the request body.
    pub(super) fn on_hook(&mut self, identity: &HookIdentity, pipeline: &mut Pipeline) -> Reply {
        let (id, pid, rel) = (identity.id.as_str(), identity.pid, identity.cgroup.as_str());
        let dir = self.guarding.cgroup2.join(rel.trim_start_matches('/'));
        let cgid = lancet_sensor::enforce::cgroup_id(&dir).ok().ok_or_else(|| (404u16, format!("cgroup {} is gone", dir.display())))?;
        let c = match pipeline.attributor.attribute(cgid) {
            Attribution::Container(c) => c,
            _ => return Ok(json!({"id": id, "posture": "unknown container; not guarded"})),
        };
        if c.id != id {
            tracing::warn!(claimed = id, attributed = %c.id, "hook refused: its cgroup belongs to another container");
            return Err((403u16, format!("hook refused: the cgroup of process {pid} belongs to container {}, not {id}", c.short_id())));
        }
        if !self.settings.follows(&c) {
            return Ok(json!({"id": id, "posture": "not followed by this agent (--only-label)"}));
        }
        if !self.workloads.containers.contains_key(&c.id) {
            self.workloads.containers.insert(c.id.clone(), Arc::clone(&c));
        }
        self.workloads.set_live(&c, Live { cgroup_id: cgid, pid });
        let key = workload_key(&c).into_owned();
        let now = now_ns();
        let Some(w) = self.workloads.get_or_load(&mut self.store, &key, &c, now) else {
            return Ok(json!({"id": id, "posture": "workload limit reached"}));
        };
        let mode = w.profile.mode();
        if mode == Mode::Protect {
            let rootfs = Some(identity.rootfs.clone());
            let profile = w.shared();
            let writable = self.policies.set.writable_for(&c).map(str::to_string).collect();
            self.guard(GuardRequest {
                container: &c,
                workload: &key,
                pid,
                cgroup_id: cgid,
                cgroup_rel: Some(rel),
                rootfs,
                profile,
                writable,
            });
        }
        tracing::info!(container = %c.name, workload = %key, %mode, "container handed over by the OCI hook");
        Ok(json!({"id": c.id, "workload": key, "posture": mode.to_string()}))
    }
}

fn process_ref(pid: u32) -> ProcessRef {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|s| s.trim().to_string()).unwrap_or_default();
    ProcessRef { pid, tid: pid, comm, ..Default::default() }
}

/// An exec the kernel refused never reaches the exec probe; the alert
/// describes the attempt (with its command line when it was read).
fn synthetic_exec(pid: i32, cgroup_id: u64, path: &str, argv: &[String]) -> Event {
    Event {
        time_ns: now_ns(),
        cgroup_id,
        process: process_ref(pid as u32),
        kind: EventKind::Exec(ExecEvent {
            filename: path.to_string(),
            cwd: String::new(),
            argv: if argv.is_empty() { vec![path.to_string()] } else { argv.to_vec() },
            parent_comm: String::new(),
            parent_exe: None,
            parent_outside: false,
            exe_ino: 0,
            exe_dev: 0,
            exe_nlink: 1,
            exe_fs_magic: 0,
            truncated: false,
            in_host_root: false,
            in_parent_mnt_ns: false,
        }),
    }
}

/// The verdict of a kernel enforcement record and what the kernel did.
fn kernel_verdict(r: &EnforceRecord) -> (Verdict, Action) {
    if let (EnforceOp::ExecKill, Some(a)) = (r.op, &r.applet) {
        // A name the profile never ran this file under: a deviation, not
        // drift (the file is the image's).
        let d = Deviation::NewName { path: a.file.clone(), name: a.to_string() };
        return (Verdict::profile_deviation(&d), Action::KillProcess);
    }
    if r.op == EnforceOp::ExecKill {
        let kind = match r.reason {
            EnforceReason::Memfd => DriftKind::Memfd,
            EnforceReason::Tmpfs => DriftKind::Tmpfs,
            EnforceReason::Deleted => DriftKind::Deleted,
            // The kill list holds loaders approved only as interpreters.
            EnforceReason::KillIno => DriftKind::Loader,
            _ => DriftKind::Written,
        };
        let path = match r.to_event().kind {
            EventKind::Exec(x) => x.filename,
            _ => String::new(),
        };
        return (verdicts::drift(&Drift { kind, path, origin: None }), Action::KillProcess);
    }
    if r.op == EnforceOp::WriteRefused {
        // The write already failed (EROFS): the alert names the writer.
        let w = r.write.as_ref();
        let what = w.map(|w| w.evt_type()).unwrap_or_else(|| "write".into());
        let path = match r.to_event().kind {
            EventKind::File(f) => f.path,
            _ => String::new(),
        };
        return (verdicts::write_refused(&what, &path, &r.comm, r.pid), Action::Block);
    }
    let isolated = r.reason == EnforceReason::Isolated;
    if r.op == EnforceOp::Listen {
        return verdicts::listener_refused(r.port, r.denied, isolated);
    }
    let bind = matches!(r.op, EnforceOp::Bind4 | EnforceOp::Bind6);
    verdicts::network_refused(bind, r.addr, r.port, r.denied, isolated)
}

/// Why the BPF-LSM backend does not hold here (it is not pretended).
fn lsm_unavailable_reason() -> String {
    use lancet_sensor::features::{active_lsms, lockdown};
    match (lockdown(), active_lsms()) {
        (Some(l), _) if l != "none" => format!("kernel lockdown={l}: BPF-LSM programs are refused at load (see `lancet doctor`)"),
        (_, Some(lsms)) if !lsms.iter().any(|l| l == "bpf") => {
            format!("bpf is not an active LSM ({}); boot with lsm=...,bpf", lsms.join(","))
        }
        (_, None) => "securityfs is not mounted, so the active LSMs are unknown; `lancet doctor` probes LSM program loads".into(),
        _ => "this kernel allows BPF-LSM, but lancet's LSM programs are not built yet; fanotify and cgroup BPF enforce instead".into(),
    }
}

/// [`runtime_setup`] read from /proc now (no table at hand: the rare paths
/// of a verdict).
fn runtime_setup_now(ev: &Event) -> bool {
    ev.process.runtime || (!matches!(ev.kind, EventKind::Exec(_)) && runtime_setup_process(ev.process.pid))
}

/// The process is still the container runtime setting the container up
/// (`runc init` before it enters the container: its root was the host's at
/// its last exec, read in the kernel, and it was started from outside the
/// container; see [`ProcessRef::runtime`]). What it runs (runc re-executes
/// itself from a memfd) and writes (mount points, `/etc/hosts`) is neither
/// drift nor the workload's: it is never learned, judged or killed. A file
/// or network event of a process the table does not know is the runtime's
/// when the process is in the host's root right now.
///
/// [`ProcessRef::runtime`]: lancet_engine::event::ProcessRef::runtime
///
/// For a process the table knows, what /proc says is read once and kept
/// until its next exec (a `statx` of `/proc/<pid>/root` per event was the
/// largest cost of a file event): a process's root changes without an
/// exec only through `chroot`/`pivot_root`, and the runtime's own
/// `pivot_root` into the container is followed by its exec of the
/// container's process, which starts a new entry.
pub(super) fn runtime_setup(ev: &Event, procs: &mut ProcessTable) -> bool {
    if ev.process.runtime {
        return true;
    }
    if matches!(ev.kind, EventKind::Exec(_)) {
        return false;
    }
    let pid = ev.process.pid;
    match procs.get_mut(pid) {
        Some(p) => *p.setup.get_or_insert_with(|| runtime_setup_process(pid)),
        None => runtime_setup_process(pid),
    }
}

/// The first process listed in the cgroup `dir`: the oldest as a rule (a
/// cgroup lists its processes in the order they joined), so the
/// container's init rather than the last process an event came from, which
/// may be a short-lived exec gone before its root is used (then the
/// container's root was not found, and drift ran unrefused until a retry).
/// None when the cgroup cannot be read or is empty.
fn first_in_cgroup(dir: &Path) -> Option<u32> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    procs.lines().find_map(|l| l.trim().parse::<u32>().ok())
}
