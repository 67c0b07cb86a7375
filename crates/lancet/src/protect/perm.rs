//! The exec and file backends: one fanotify permission group whose events
//! are answered on a thread of their own, from a table the event loop keeps
//! current.

use super::approved::Approved;
use super::host::{in_host_root, same_filesystem};
use super::{Backend, Enforced, Guarded, ProtectOptions};
use crate::config::FailModeSetting;
use lancet_engine::drift::{classify_indirect, indirect_target, Drift, DriftKind, FileFacts};
use lancet_engine::event::ExecEvent;
use lancet_engine::profile::Profile;
use lancet_engine::response::{decide_exec, DenyReason, ExecRequest, ExecVerdict};
use lancet_sensor::fanotify::overlay::{overlay_upper_dir, written_in_container};
use lancet_sensor::fanotify::{exec_call, FailMode, PermConfig, PermDecision, PermGuard, PermKind, PermRequest};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, RwLock};

/// What the permission thread decides from.
#[derive(Default)]
struct PermTable {
    by_label: HashMap<u64, PermEntry>,
}

struct PermEntry {
    profile: Arc<Profile>,
    /// What the container may run, by file identity.
    approved: Arc<Approved>,
    upper: Option<PathBuf>,
    protected_files: HashSet<String>,
}

/// The exec and file backends: one fanotify permission group, answered on a
/// thread of its own.
pub(super) struct PermBackend {
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
    pub(super) shm_tried: HashSet<u64>,
    /// Containers whose root carries the exec mark, with the device of the
    /// root marked (a restart mounts a new root: it needs its own mark).
    exec_marked: HashMap<u64, u64>,
}

/// Labels of a container's `/dev/shm` marks: its own label with this bit.
/// Nothing that ships in an image lives there, so every exec from it is
/// drift.
const SHM_LABEL: u64 = 1 << 63;

const ALLOW: PermDecision = PermDecision { allow: true, remember: false };

/// Opens in a write-protected directory whose write intent could not be
/// read from the blocked task (it was let through): reported in the stats.
static UNKNOWN_WRITE_INTENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
const DENY: PermDecision = PermDecision { allow: false, remember: false };

/// The decision of one permission event. Reads memory, plus one `lstat` in
/// the container's upper layer for uncached execs, and the blocked task's
/// exec arguments for interpreters. When two containers claim one
/// filesystem (never legitimate) the strictest of their answers holds.
fn decide(table: &RwLock<PermTable>, req: &PermRequest<'_>, denials: &SyncSender<Enforced>) -> PermDecision {
    // A poisoned lock means a writer panicked mid-update; the table is still
    // the best knowledge there is.
    let t = table.read().unwrap_or_else(|e| e.into_inner());
    let labels: &[u64] = match req.label {
        Some(ref l) => std::slice::from_ref(l),
        None => req.labels,
    };
    let mut out: Option<PermDecision> = None;
    for &label in labels {
        let d = decide_for(&t, label, req, denials);
        out = Some(match out {
            None => d,
            Some(o) => PermDecision { allow: o.allow && d.allow, remember: o.remember && d.remember },
        });
        if !d.allow {
            break;
        }
    }
    out.unwrap_or(ALLOW)
}

/// The decision of one container (label) on one event.
fn decide_for(t: &PermTable, label: u64, req: &PermRequest<'_>, denials: &SyncSender<Enforced>) -> PermDecision {
    let deny = |path: &str, reason| {
        let _ = denials.try_send(Enforced::ExecDenied { label: label & !SHM_LABEL, pid: req.pid, path: path.to_string(), reason });
        DENY
    };
    if label & SHM_LABEL != 0 && req.kind == PermKind::Exec && t.by_label.contains_key(&(label & !SHM_LABEL)) {
        let path = if req.path.starts_with("/dev/shm/") { req.path.to_string() } else { format!("/dev/shm{}", req.path) };
        return deny(&path, DenyReason::Drift(DriftKind::Tmpfs));
    }
    // Marks of a container no longer guarded are being lifted.
    let Some(e) = t.by_label.get(&label) else { return ALLOW };
    match req.kind {
        PermKind::Exec => {
            let id = (req.dev, req.ino);
            let in_profile = e.approved.files.contains(&id);
            let interpreter = e.approved.interpreters.contains(&id);
            if req.path.is_empty() {
                // No path (longer than PATH_MAX): the file's identity alone
                // decides; an interpreter's operand cannot be placed.
                return if in_profile && !interpreter { ALLOW } else { deny("<path longer than PATH_MAX>", DenyReason::NotInProfile) };
            }
            let in_upper = e.upper.as_deref().map(|u| written_in_container(u, req.path));
            let in_baseline = e.profile.baseline().map(|b| b.lookup(req.path).is_some());
            match decide_exec(&ExecRequest { path: req.path, in_upper, in_baseline, written: None, in_profile }) {
                ExecVerdict::Allow { .. } if interpreter => match script_drift(e, req.pid) {
                    Ok(None) => ALLOW,
                    Ok(Some(d)) => deny(&d.path, DenyReason::Drift(d.kind)),
                    // A task whose exec cannot be read is not let through.
                    Err(()) => deny(req.path, DenyReason::NotInProfile),
                },
                ExecVerdict::Allow { remember } => PermDecision { allow: true, remember },
                ExecVerdict::Deny(reason) => deny(req.path, reason),
            }
        }
        PermKind::Open { write } => {
            let allowed = if e.protected_files.contains(req.path) {
                e.profile.has_sensitive_read(req.path)
            } else {
                // A write-protected directory: reads pass, writes only where
                // the profile learned them; unknown intent passes (fail open,
                // counted).
                if write.is_none() {
                    UNKNOWN_WRITE_INTENT.fetch_add(1, Ordering::Relaxed);
                }
                write != Some(true) || e.profile.has_written_dir(parent_dir(req.path))
            };
            if !allowed {
                let _ = denials.try_send(Enforced::OpenDenied { label, pid: req.pid, path: req.path.to_string(), write });
            }
            if allowed {
                ALLOW
            } else {
                DENY
            }
        }
    }
}

/// The script an interpreter exec is handed (`sh FILE`, `python3 FILE`),
/// read from the blocked task's arguments, when it drifted from the image
/// (written in the container, on tmpfs, or not in the baseline). `Err`
/// when the task's exec cannot be read.
fn script_drift(e: &PermEntry, tid: i32) -> Result<Option<Drift>, ()> {
    let call = exec_call(tid).ok_or(())?;
    let cwd =
        std::fs::read_link(format!("/proc/{tid}/cwd")).ok().and_then(|p| p.to_str().map(str::to_string)).unwrap_or_else(|| "/".into());
    let filename = if call.filename.starts_with('/') { call.filename } else { format!("{}/{}", cwd.trim_end_matches('/'), call.filename) };
    let ev = ExecEvent { filename, argv: call.argv, cwd, ..ExecEvent::default() };
    let Some((kind, target)) = indirect_target(&ev) else { return Ok(None) };
    let facts = FileFacts {
        in_upper: e.upper.as_deref().map(|u| written_in_container(u, &target)),
        in_baseline: e.profile.baseline().map(|b| b.lookup(&target).is_some()),
    };
    Ok(classify_indirect(kind, &target, None, facts))
}

fn parent_dir(path: &str) -> &str {
    match path.trim_end_matches('/').rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

impl PermBackend {
    pub(super) fn start(opts: &ProtectOptions, denials: SyncSender<Enforced>) -> Result<PermBackend, String> {
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
            exec_marked: HashMap::new(),
        })
    }

    /// Decision times, for the Prometheus histogram.
    pub(super) fn decision_histogram(&self) -> lancet_sensor::fanotify::DecisionHistogram {
        self.guard.decision_histogram()
    }

    pub(super) fn stats(&self) -> serde_json::Value {
        let s = self.guard.stats();
        serde_json::json!({
            "events": s.events, "allowed": s.allowed, "denied": s.denied, "remembered": s.remembered,
            "failModeAnswers": s.fail_mode_answers, "overflows": s.overflows, "errors": s.errors,
            "pathless": s.pathless, "unknownWriteIntent": UNKNOWN_WRITE_INTENT.load(Ordering::Relaxed),
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
            t.by_label.get(&g.label).is_some_and(|e| !Arc::ptr_eq(&e.profile, &g.profile) || !Arc::ptr_eq(&e.approved, &g.approved))
        };
        {
            let mut t = self.table.write().map_err(|_| "permission table poisoned".to_string())?;
            t.by_label.insert(
                g.label,
                PermEntry { profile: Arc::clone(&g.profile), approved: Arc::clone(&g.approved), upper, protected_files: protected.clone() },
            );
        }
        // Approvals of an older profile go; the marks stay in place (never
        // lifted and re-placed: that would leave a window).
        if profile_changed {
            self.guard.forget(g.label);
        }
        let root_dev = std::fs::metadata(&g.rootfs).map(|m| std::os::unix::fs::MetadataExt::dev(&m)).ok();
        if root_dev.is_none() || self.exec_marked.get(&g.label) != root_dev.as_ref() {
            if let Err(e) = self.guard.protect_exec(g.label, &g.rootfs) {
                self.exec_marked.remove(&g.label);
                return Err(format!("exec marks on {}: {e}", g.rootfs.display()));
            }
            if let Some(dev) = root_dev {
                self.exec_marked.insert(g.label, dev);
            }
        }
        // The container's own /dev/shm (a tmpfs of its own), seen once the
        // container's processes run inside their root.
        let shm = PathBuf::from(format!("/proc/{}/root/dev/shm", g.pid));
        let proc_root = PathBuf::from(format!("/proc/{}/root", g.pid));
        let pivoted = proc_root.exists() && !in_host_root(g.pid);
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
