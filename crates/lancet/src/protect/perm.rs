//! The exec and file backends: one fanotify permission group whose events
//! are answered on a thread of their own, from a table the event loop keeps
//! current.

use super::approved::Approved;
use super::host::{content_sha256, resolve_in_root};
use super::host::{in_host_root, on_host, on_host_root_filesystem, reach_root};
use super::{Backend, Enforced, Guarded, ProtectOptions};
use crate::config::FailModeSetting;
use lancet_engine::drift::{normalise_code, program_source, FileFacts, ProgramSource, RAMFS_MAGIC, TMPFS_MAGIC};
use lancet_engine::event::ExecEvent;
use lancet_engine::profile::Profile;
use lancet_engine::response::{
    decide_exec, decide_open, decide_program, DenyReason, ExecMount, ExecRequest, ExecVerdict, OpenRequest, OpenVerdict, ProgramFacts,
};
use lancet_sensor::enforce::{FailMode, PermConfig, PermDecision, PermGroup, PermKind, PermRequest};
use lancet_sensor::fanotify::exec_call;
use lancet_sensor::overlay::{overlay_upper_dir, written_or_unknown};
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
    /// The device of the container's root (its image): a file on any
    /// other device lies on one of its other mounts.
    root_dev: Option<u64>,
    protected_files: HashSet<String>,
}

/// The exec and file backends: one fanotify permission group, answered on a
/// thread of its own.
pub(super) struct PermBackend {
    group: PermGroup,
    table: Arc<RwLock<PermTable>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    protected_files: Vec<String>,
    readonly_dirs: Vec<String>,
    files: bool,
    /// Where the host is mounted (`HOST_ROOT`): overlay upper directories
    /// are host paths.
    host_root: PathBuf,
    /// Containers whose mounts were marked from inside their root (after
    /// `pivot_root`; the hook marks them before, from the host's side).
    pub(super) mounts_tried: HashSet<u64>,
    /// Containers whose root carries the exec mark, with the device of the
    /// root marked (a restart mounts a new root: it needs its own mark).
    exec_marked: HashMap<u64, u64>,
}

/// Files larger than this on a container's other mounts are never hashed
/// (so never approved by content).
const MAX_HASHED: u64 = 64 << 20;

const ALLOW: PermDecision = PermDecision { allow: true, remember: false };

/// Opens in a write-protected directory whose write intent could not be
/// read from the blocked task (it was let through): reported in the stats.
static UNKNOWN_WRITE_INTENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Refusals whose report did not fit the agent's queue: the refusal held
/// (the kernel got its answer), its alert was lost. The permission thread
/// never waits on the event loop, so it counts instead; the daemon turns
/// the count into a summary alert ([`denial_reports_lost`]).
static DENIAL_REPORTS_LOST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many refusal reports were lost since the agent started.
pub(crate) fn denial_reports_lost() -> u64 {
    DENIAL_REPORTS_LOST.load(Ordering::Relaxed)
}

/// Queues a refusal's report for the event loop, or counts it as lost.
fn report(denials: &SyncSender<Enforced>, e: Enforced) {
    if denials.try_send(e).is_err() {
        DENIAL_REPORTS_LOST.fetch_add(1, Ordering::Relaxed);
    }
}
const DENY: PermDecision = PermDecision { allow: false, remember: false };

/// The decision of one permission event. Reads memory, plus one `lstat` in
/// the container's upper layer for uncached execs, and the blocked task's
/// exec arguments for interpreters. When two containers claim one
/// filesystem (never legitimate) the strictest of their answers holds.
fn decide(table: &RwLock<PermTable>, req: &PermRequest<'_>, denials: &SyncSender<Enforced>, code_check: bool) -> PermDecision {
    // A poisoned lock means a writer panicked mid-update; the table is still
    // the best knowledge there is.
    let t = table.read().unwrap_or_else(|e| e.into_inner());
    let labels: &[u64] = match req.label {
        Some(ref l) => std::slice::from_ref(l),
        None => req.labels,
    };
    let mut out: Option<PermDecision> = None;
    for &label in labels {
        let d = decide_for(&t, label, req, denials, code_check);
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

/// The decision of one container (label) on one event: the facts gathered
/// here, the verdict the engine's (`decide_exec`, `decide_program`,
/// `decide_open`).
fn decide_for(t: &PermTable, label: u64, req: &PermRequest<'_>, denials: &SyncSender<Enforced>, code_check: bool) -> PermDecision {
    let deny = |path: &str, reason, argv: Vec<String>| {
        report(denials, Enforced::ExecDenied { label, pid: req.pid, path: path.to_string(), reason, argv });
        DENY
    };
    // Marks of a container no longer guarded are being lifted.
    let Some(e) = t.by_label.get(&label) else { return ALLOW };
    match req.kind {
        PermKind::Exec => {
            let id = (req.dev, req.ino);
            let off_root = match e.root_dev {
                Some(d) => req.dev != d,
                None => req.other_mount,
            };
            let mount = if off_root {
                let tmpfs = matches!(req.fs_magic, TMPFS_MAGIC | RAMFS_MAGIC);
                ExecMount::Other { tmpfs, content_learned: learned_content(e, req) }
            } else {
                ExecMount::Root
            };
            // The layers are asked only for a file that decides by them.
            let on_root_with_path = !off_root && !req.path.is_empty();
            let exec = ExecRequest {
                path: req.path,
                mount,
                interpreter: e.approved.interpreters.contains(&id),
                // Unknown is never taken for "not written".
                in_upper: e.upper.as_deref().filter(|_| on_root_with_path).map(|u| written_or_unknown(u, req.path)),
                in_baseline: e.profile.baseline().filter(|_| on_root_with_path).map(|b| b.lookup(req.path).is_some()),
                written: None,
                in_profile: e.approved.files.contains(&id),
            };
            let shown = if req.path.is_empty() { "<path longer than PATH_MAX>" } else { req.path };
            match decide_exec(&exec) {
                ExecVerdict::Allow { remember } => PermDecision { allow: true, remember },
                ExecVerdict::Deny(reason) => deny(shown, reason, Vec::new()),
                ExecVerdict::JudgeProgram => match judge_program(e, id, req.pid, code_check) {
                    Ok(None) => ALLOW,
                    Ok(Some(r)) => deny(&r.path, r.reason, r.argv),
                    // A task whose exec cannot be read is not let through.
                    Err(()) => deny(req.path, DenyReason::NotInProfile, Vec::new()),
                },
            }
        }
        PermKind::Open { write } => {
            let open = OpenRequest { path: req.path, protected_file: e.protected_files.contains(req.path), write };
            match decide_open(&e.profile, &open) {
                OpenVerdict::Allow => ALLOW,
                OpenVerdict::AllowUnknownIntent => {
                    UNKNOWN_WRITE_INTENT.fetch_add(1, Ordering::Relaxed);
                    ALLOW
                }
                OpenVerdict::Deny => {
                    report(denials, Enforced::OpenDenied { label, pid: req.pid, path: req.path.to_string(), write });
                    DENY
                }
            }
        }
    }
}

/// Whether a file on one of the container's other mounts is an executable
/// its profile learned there with its content hash, and the file being
/// exec'd still has that content (read through the event's own fd).
fn learned_content(e: &PermEntry, req: &PermRequest<'_>) -> bool {
    let Some(want) = e.profile.executable(req.path).and_then(|x| x.sha256.as_deref()) else { return false };
    let Ok(fd) = req.file.try_clone_to_owned() else { return false };
    // The event's fd is opened read-only; reopen it to read from offset 0
    // without moving the task's view (an fd of our own).
    let Ok(file) = std::fs::File::open(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd))) else { return false };
    content_sha256(file, MAX_HASHED).is_some_and(|h| h == want)
}

/// Why an interpreter's program was refused.
struct Refusal {
    /// The file or the interpreter named in the alert.
    path: String,
    reason: DenyReason,
    /// The command line, for the alert (empty when it says nothing more).
    argv: Vec<String>,
}

/// Reads what an approved interpreter file (`id`) was handed from the
/// blocked task's exec, gathers the facts the engine's `decide_program`
/// judges by, and asks it. `Err` when the task's exec cannot be read.
fn judge_program(e: &PermEntry, id: (u64, u64), tid: i32, code_check: bool) -> Result<Option<Refusal>, ()> {
    let call = exec_call(tid).ok_or(())?;
    let cwd =
        std::fs::read_link(format!("/proc/{tid}/cwd")).ok().and_then(|p| p.to_str().map(str::to_string)).unwrap_or_else(|| "/".into());
    let filename = if call.filename.starts_with('/') { call.filename } else { format!("{}/{}", cwd.trim_end_matches('/'), call.filename) };
    let ev = ExecEvent { filename, argv: call.argv, cwd, ..ExecEvent::default() };
    let Some((kind, source)) = program_source(&ev) else { return Ok(None) };
    let facts = match &source {
        ProgramSource::File(target) => ProgramFacts::File {
            off_root: e.root_dev.is_some() && file_dev(tid, target).is_some_and(|d| Some(d) != e.root_dev),
            facts: FileFacts {
                in_upper: e.upper.as_deref().map(|u| written_or_unknown(u, target)),
                in_baseline: e.profile.baseline().map(|b| b.lookup(target).is_some()),
            },
        },
        ProgramSource::Code(code) => {
            ProgramFacts::Code { learned: e.approved.code.get(&id).is_some_and(|c| c.contains(&normalise_code(code))) }
        }
        ProgramSource::Stdin => ProgramFacts::Stdin { learned: e.approved.stdin.contains(&id), terminal: stdin_is_terminal(tid) },
        ProgramSource::Other => ProgramFacts::Other,
    };
    Ok(decide_program(kind, &source, facts, &ev.filename, code_check).map(|(path, reason)| Refusal {
        path: path.to_string(),
        reason,
        argv: ev.argv.clone(),
    }))
}

/// The device of `path` as the container of task `tid` sees it (symlinks
/// resolved inside its root).
fn file_dev(tid: i32, path: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let root = PathBuf::from(format!("/proc/{tid}/root"));
    let inside = resolve_in_root(&root, path)?;
    std::fs::metadata(root.join(inside.trim_start_matches('/'))).ok().map(|m| m.dev())
}

/// Whether the task's standard input is a terminal.
fn stdin_is_terminal(tid: i32) -> bool {
    std::fs::read_link(format!("/proc/{tid}/fd/0"))
        .ok()
        .and_then(|p| p.to_str().map(|p| p.starts_with("/dev/pts/") || p.starts_with("/dev/tty") || p == "/dev/console"))
        .unwrap_or(false)
}

/// Whether a mount (its path in the container and filesystem type) gets
/// exec marks: everything but the kernel's interfaces.
fn guarded_mount(inside: &str, fs_type: &str) -> bool {
    const KERNEL: &[&str] = &[
        "proc",
        "sysfs",
        "cgroup",
        "cgroup2",
        "devpts",
        "mqueue",
        "securityfs",
        "debugfs",
        "tracefs",
        "bpf",
        "binfmt_misc",
        "configfs",
        "fusectl",
        "pstore",
        "nsfs",
    ];
    let under = |d: &str| inside == d || inside.strip_prefix(d).is_some_and(|r| r.starts_with('/'));
    !KERNEL.contains(&fs_type) && !under("/proc") && !under("/sys")
}

impl PermBackend {
    pub(super) fn start(opts: &ProtectOptions, denials: SyncSender<Enforced>) -> Result<PermBackend, String> {
        let fail = match opts.fail_mode {
            FailModeSetting::Allow => FailMode::Allow,
            FailModeSetting::Deny => FailMode::Deny,
        };
        let group = PermGroup::new(PermConfig { fail_mode: fail, ..PermConfig::default() }).map_err(|e| e.to_string())?;
        let table = Arc::new(RwLock::new(PermTable::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let exec_cache = opts.exec_cache;
        let code_check = opts.learned_code_only;
        let thread = {
            let (group, table, stop) = (group.clone(), Arc::clone(&table), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("lancet-perm".into())
                .spawn(move || {
                    let mut decider = |req: &PermRequest<'_>| {
                        let mut d = decide(&table, req, &denials, code_check);
                        d.remember &= exec_cache;
                        d
                    };
                    if let Err(e) = group.run(&stop, &mut decider) {
                        tracing::error!("permission events stopped: {e}; the kernel now allows what was guarded");
                    }
                })
                .map_err(|e| e.to_string())?
        };
        Ok(PermBackend {
            group,
            table,
            stop,
            thread: Some(thread),
            protected_files: opts.protected_files.clone(),
            readonly_dirs: opts.readonly_dirs.clone(),
            files: !(opts.protected_files.is_empty() && opts.readonly_dirs.is_empty()),
            host_root: opts.host_root.clone(),
            mounts_tried: HashSet::new(),
            exec_marked: HashMap::new(),
        })
    }

    /// Puts exec marks on every mount of the container besides its root:
    /// volumes, bind mounts of host directories, tmpfs (`/dev`,
    /// `/dev/shm`, `--tmpfs`), read from its `mountinfo`. From the OCI
    /// hook (before `pivot_root`) the container's mounts lie below the
    /// rootfs path the hook named; afterwards below its own `/`. Mounts
    /// already marked add nothing, so this runs again whenever the
    /// container is applied (other backends may have added mounts).
    /// Kernel interfaces (`/proc`, `/sys`, cgroup, devpts, mqueue) and file
    /// bind mounts (`/etc/hosts`, `/etc/resolv.conf`…) are left alone.
    pub(super) fn mark_mounts(&mut self, g: &Guarded) -> Result<(), String> {
        let root = PathBuf::from(format!("/proc/{}/root", g.pid));
        if !root.exists() {
            return Ok(());
        }
        let pivoted = !in_host_root(g.pid);
        let prefix = if pivoted {
            String::new()
        } else {
            // The host path, symlinks resolved (as mountinfo names it),
            // read under HOST_ROOT and named without it.
            let host = std::fs::canonicalize(on_host(&self.host_root, &g.rootfs)).ok();
            let host = host.as_deref().and_then(|p| p.strip_prefix(&self.host_root).ok()).and_then(Path::to_str);
            match host {
                // A rootfs seen only through /proc: wait for the pivot.
                Some(p) if !g.rootfs.starts_with("/proc") => format!("/{}", p.trim_matches('/')),
                _ => return Ok(()),
            }
        };
        let text = std::fs::read_to_string(format!("/proc/{}/mountinfo", g.pid)).map_err(|e| format!("mounts of {}: {e}", g.pid))?;
        let mut errors = Vec::new();
        for m in lancet_sensor::mountinfo::parse(&text) {
            let inside = if pivoted {
                m.mount_point.as_str()
            } else {
                match m.mount_point.strip_prefix(prefix.as_str()) {
                    Some(rest) if rest.starts_with('/') => rest,
                    _ => continue,
                }
            };
            if inside == "/" || !guarded_mount(inside, &m.fs_type) {
                continue;
            }
            match self.group.protect_exec_mount(g.label, &root, &m.mount_point, m.id) {
                Ok(()) => {}
                // A file bind mount, or a mount gone or covered since.
                Err(lancet_sensor::fanotify::FanotifyError::Open { .. }) => {}
                Err(e) => errors.push(format!("{inside}: {e}")),
            }
        }
        if pivoted {
            self.mounts_tried.insert(g.label);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!("exec marks on mounts: {}", errors.join("; ")))
        }
    }

    /// Decision times, for the Prometheus histogram.
    pub(super) fn decision_histogram(&self) -> lancet_sensor::enforce::DecisionHistogram {
        self.group.decision_histogram()
    }

    pub(super) fn stats(&self) -> serde_json::Value {
        let s = self.group.stats();
        serde_json::json!({
            "events": s.events, "allowed": s.allowed, "denied": s.denied, "remembered": s.remembered,
            "failModeAnswers": s.fail_mode_answers, "overflows": s.overflows, "errors": s.errors,
            "pathless": s.pathless, "unknownWriteIntent": UNKNOWN_WRITE_INTENT.load(Ordering::Relaxed),
            "denialReportsLost": denial_reports_lost(),
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
        // The root as the agent reaches it (the hook names it by its host path).
        let rootfs = reach_root(&self.host_root, &g.rootfs, g.pid);
        // A filesystem mark on the host's own filesystem would put every
        // exec of the host under this container's profile.
        if on_host_root_filesystem(&rootfs) {
            return Err(format!(
                "{} is on the host's root filesystem; exec marks are placed only on a container's own root",
                rootfs.display()
            ));
        }
        let upper = g.upper.clone().or_else(|| overlay_upper_dir(g.pid).map(|u| super::on_host(&self.host_root, &u)));
        let protected: HashSet<String> = self.protected_files.iter().filter(|p| !g.profile.has_sensitive_read(p)).cloned().collect();
        let profile_changed = {
            let t = self.table.read().map_err(|_| "permission table poisoned".to_string())?;
            t.by_label.get(&g.label).is_some_and(|e| !Arc::ptr_eq(&e.profile, &g.profile) || !Arc::ptr_eq(&e.approved, &g.approved))
        };
        {
            let mut t = self.table.write().map_err(|_| "permission table poisoned".to_string())?;
            t.by_label.insert(
                g.label,
                PermEntry {
                    profile: Arc::clone(&g.profile),
                    approved: Arc::clone(&g.approved),
                    upper,
                    root_dev: std::fs::metadata(&rootfs).map(|m| std::os::unix::fs::MetadataExt::dev(&m)).ok(),
                    protected_files: protected.clone(),
                },
            );
        }
        // Approvals of an older profile go; the marks stay in place (never
        // lifted and re-placed: that would leave a window).
        if profile_changed {
            self.group.forget(g.label);
        }
        let root_dev = std::fs::metadata(&rootfs).map(|m| std::os::unix::fs::MetadataExt::dev(&m)).ok();
        if root_dev.is_none() || self.exec_marked.get(&g.label) != root_dev.as_ref() {
            if let Err(e) = self.group.protect_exec(g.label, &rootfs) {
                self.exec_marked.remove(&g.label);
                return Err(format!("exec marks on {}: {e}", rootfs.display()));
            }
            if let Some(dev) = root_dev {
                self.exec_marked.insert(g.label, dev);
            }
        }
        self.mark_mounts(g)?;
        if self.files {
            let files: Vec<&str> = protected.iter().map(String::as_str).collect();
            self.group.protect_files(g.label, &rootfs, &files).map_err(|e| format!("file marks: {e}"))?;
            let dirs: Vec<&str> = self.readonly_dirs.iter().map(String::as_str).collect();
            self.group.protect_dir_writes(g.label, &rootfs, &dirs).map_err(|e| format!("directory marks: {e}"))?;
        }
        Ok(())
    }

    fn release(&mut self, g: &Guarded) {
        let _ = self.group.unprotect(g.label);
        self.exec_marked.remove(&g.label);
        self.mounts_tried.remove(&g.label);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mount_but_the_kernels_interfaces_is_guarded() {
        for (inside, fs) in [("/data", "ext4"), ("/scratch", "tmpfs"), ("/dev", "tmpfs"), ("/dev/shm", "tmpfs"), ("/procfs", "xfs")] {
            assert!(guarded_mount(inside, fs), "{inside} {fs}");
        }
        for (inside, fs) in [
            ("/proc", "proc"),
            ("/proc/sys", "proc"),
            ("/proc/acpi", "tmpfs"),
            ("/sys", "sysfs"),
            ("/sys/fs/cgroup", "cgroup2"),
            ("/dev/pts", "devpts"),
            ("/dev/mqueue", "mqueue"),
        ] {
            assert!(!guarded_mount(inside, fs), "{inside} {fs}");
        }
    }
}
