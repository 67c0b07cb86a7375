//! "Immutability, enforced": a container's filesystem made read-only except
//! the directories its profile learned as written, with the kernel refusing
//! every other write at the syscall (EROFS) while the container runs on.
//!
//! How, inside the container's mount namespace ([`super::ns`]):
//! 1. each learned directory gets a writable bind of itself (a recursive
//!    `open_tree` clone, so the runtime's file binds below it stay visible,
//!    moved onto the same directory) — before step 2, because a bind made
//!    afterwards would inherit read-only;
//! 2. `/`, `/dev` and `/dev/shm` are made read-only with `mount_setattr`,
//!    one mount each, never recursively: volumes, tmpfs mounts, `/proc` and
//!    the `/etc/hosts`-style binds keep their flags, and device nodes stay
//!    writable (the kernel does not check the mount for them);
//! 3. when a process holds a file open for writing on the root mount (a
//!    running nginx and its logs), the kernel refuses 2 with EBUSY; then
//!    every directory directly under `/` that is not learned and not a
//!    mount of its own gets a read-only bind of itself instead (a recursive
//!    copy: the writable binds of step 1 below it come along, so an
//!    ancestor such as `/var` turns read-only but `/var/log/nginx` stays
//!    writable), and what stays writable (new entries directly in `/`) is
//!    reported with the writers.
//!
//! Every change is recorded as a [`Step`]; undoing them in reverse order
//! gives back the mount table as it was.

use super::mountinfo::{self, MountInfo};
use super::ns::{self, Ctx};
use super::procfs::{process_in_namespace, writers_on, Writer};
use super::{sys, MountError};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;

/// What to make immutable, and what to leave writable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImmutablePlan {
    /// The container's root as a path inside its mount namespace, used only
    /// while the given process has not pivoted into it yet (at the OCI
    /// `createRuntime` hook: the bundle's `root.path`, e.g.
    /// `.../overlay/<id>/merged`). Once it has, its own root is used.
    pub root: Option<PathBuf>,
    /// Directories that stay writable, as the container sees them (the
    /// profile's learned written directories).
    pub writable: Vec<String>,
    /// Leave the container's `/dev/shm` writable.
    pub dev_shm_writable: bool,
    /// Before `pivot_root` only: the runtime will open `/dev/console` for
    /// writing after the hook (the OCI process has a terminal; unknown
    /// counts as yes). On a read-only `/dev` it could not create that file,
    /// so lancet creates it first, as a character device standing for
    /// `/dev/null` that the runtime opens harmlessly and then mounts the
    /// terminal on.
    pub console: bool,
}

/// One change lancet made to the container's mounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Step {
    /// An existing mount made read-only; undone by clearing the flag.
    #[serde(rename_all = "camelCase")]
    MadeReadOnly { path: String, mount_id: u64 },
    /// A copy of the tree at `path` mounted on top of it, writable or
    /// read-only; undone by detaching it.
    #[serde(rename_all = "camelCase")]
    Bound { path: String, mount_id: u64, writable: bool },
    /// A `/dev/null` character device created at `path` for the runtime
    /// (see [`ImmutablePlan::console`]); undone by removing it, unless the
    /// runtime mounted something on it.
    CreatedDevice { path: String },
}

impl Step {
    /// The mount changed or added, if any.
    pub fn mount_id(&self) -> Option<u64> {
        match self {
            Step::MadeReadOnly { mount_id, .. } | Step::Bound { mount_id, .. } => Some(*mount_id),
            Step::CreatedDevice { .. } => None,
        }
    }

    pub fn path(&self) -> &str {
        match self {
            Step::MadeReadOnly { path, .. } | Step::Bound { path, .. } | Step::CreatedDevice { path } => path,
        }
    }
}

/// How far immutability holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "camelCase")]
pub enum Mode {
    /// Everything but the writable directories refuses writes.
    Full,
    /// Some places stay writable until the container's next start, because
    /// files open for writing kept their mount from turning read-only.
    #[serde(rename_all = "camelCase")]
    Partial {
        /// Directories whose direct entries (files, and new
        /// subdirectories) stay writable (`/`); their existing
        /// subdirectories are read-only unless learned. A mount named on its
        /// own (`/dev`), or a directory that could not be bound, stays
        /// writable as a whole.
        writable_left: Vec<String>,
        /// Who held files open for writing there.
        writers: Vec<Writer>,
    },
}

/// A learned directory that could not be made writable, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// What [`apply_immutable`] did: enough to report it and to undo it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    /// The mount namespace changed (`mnt:[N]`); undoing it anywhere else is
    /// refused.
    pub mnt_ns: u64,
    /// The plan's writable directories, cleaned up (see [`normalize_dirs`]).
    pub learned: Vec<String>,
    pub dev_shm_writable: bool,
    /// The changes, in the order made.
    pub steps: Vec<Step>,
    pub mode: Mode,
    /// Learned directories that are writable (through a bind lancet added,
    /// or on a writable mount of their own such as a volume).
    pub writable: Vec<String>,
    /// Learned directories that are not.
    pub skipped: Vec<Skipped>,
    /// Learned directories lancet created (they did not exist yet).
    pub created: Vec<String>,
}

impl Applied {
    /// Mount ids lancet made read-only.
    pub fn made_read_only(&self) -> impl Iterator<Item = (&str, u64)> {
        self.steps.iter().filter_map(|s| match s {
            Step::MadeReadOnly { path, mount_id } => Some((path.as_str(), *mount_id)),
            _ => None,
        })
    }

    /// Mounts lancet added.
    pub fn added(&self) -> impl Iterator<Item = (&str, u64, bool)> {
        self.steps.iter().filter_map(|s| match s {
            Step::Bound { path, mount_id, writable } => Some((path.as_str(), *mount_id, *writable)),
            _ => None,
        })
    }
}

/// Cleans up learned directories: absolute paths with no `.`/`..`
/// components and no repeated or trailing slashes, each once, parents
/// first, and none inside another (it is writable with its parent).
/// Returns the directories and the entries refused, with the reason.
pub fn normalize_dirs(dirs: &[String]) -> (Vec<String>, Vec<Skipped>) {
    let mut clean: Vec<String> = Vec::new();
    let mut skipped = Vec::new();
    for d in dirs {
        let comps: Vec<&str> = d.split('/').filter(|c| !c.is_empty()).collect();
        if !d.starts_with('/') || comps.iter().any(|c| *c == "." || *c == "..") || d.contains('\0') {
            skipped.push(Skipped { path: d.clone(), reason: "not a clean absolute path".into() });
            continue;
        }
        clean.push(format!("/{}", comps.join("/")));
    }
    clean.sort_by(|a, b| depth(a).cmp(&depth(b)).then_with(|| a.cmp(b)));
    clean.dedup();
    let mut out: Vec<String> = Vec::new();
    for d in clean {
        if !out.iter().any(|p| is_under(&d, p)) {
            out.push(d);
        }
    }
    (out, skipped)
}

fn depth(p: &str) -> usize {
    p.split('/').filter(|c| !c.is_empty()).count()
}

/// `path` is `dir` or inside it.
fn is_under(path: &str, dir: &str) -> bool {
    dir == "/" || path == dir || (path.starts_with(dir) && path.as_bytes().get(dir.len()) == Some(&b'/'))
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

fn syscall<'a>(op: &'static str, path: &'a str) -> impl FnOnce(io::Error) -> MountError + 'a {
    move |source| MountError::Syscall { op, path: path.to_string(), source }
}

fn errno(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ELOOP) => "a path component is a symlink (ELOOP); it is not followed".into(),
        Some(libc::ENOTDIR) => "not a directory".into(),
        _ => e.to_string(),
    }
}

/// Puts a copy of the tree at `path` on top of it, writable or read-only.
/// Returns the new mount's id. If it fails midway the detached copy is
/// dropped with its descriptor: nothing is left behind.
fn bind(ctx: &Ctx, path: &str, writable: bool) -> Result<u64, MountError> {
    let fd = ctx.open(path).map_err(syscall("openat2", path))?;
    let copy = sys::clone_tree(fd.as_fd()).map_err(syscall("open_tree(OPEN_TREE_CLONE)", path))?;
    sys::set_read_only(copy.as_fd(), !writable).map_err(syscall("mount_setattr", path))?;
    sys::move_onto(copy.as_fd(), fd.as_fd()).map_err(syscall("move_mount", path))?;
    let (_, id) = ctx.mount_at(path).map_err(syscall("statx", path))?;
    Ok(id)
}

/// Creates `dir` and its missing parents inside the container (mode 0755,
/// no symlink followed).
fn create_dirs(ctx: &Ctx, dir: &str) -> io::Result<()> {
    let mut cur = String::from("/");
    for comp in dir.split('/').filter(|c| !c.is_empty()) {
        let next = join(&cur, comp);
        match ctx.open(&next) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let parent = ctx.open(&cur)?;
                match sys::mkdir_at(parent.as_fd(), comp, 0o755) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
        cur = next;
    }
    Ok(())
}

/// The mounts lancet turns read-only (`/`, `/dev`, `/dev/shm`), where they
/// are writable mounts of their own and not learned as writable.
#[derive(Debug)]
struct Target {
    path: &'static str,
    id: u64,
}

fn targets(ctx: &Ctx, mounts: &[MountInfo], ours: &HashSet<u64>, a: &mut Applied) -> Result<Vec<Target>, MountError> {
    let mut out = Vec::new();
    let (_, root_id) = ctx.mount_at("/").map_err(syscall("statx", "/"))?;
    for path in ["/", "/dev", "/dev/shm"] {
        let Ok((_, id)) = ctx.mount_at(path) else { continue };
        let Some(m) = mounts.iter().find(|m| m.id == id) else { continue };
        // Only the mount whose root this is (not a directory of the root
        // mount), and not one made read-only by someone else (`podman
        // --read-only`): that one stays as it is, learned or not.
        if (path != "/" && id == root_id) || m.mount_point != path || (m.read_only() && !ours.contains(&id)) {
            continue;
        }
        if a.learned.iter().any(|d| d == path) || (path == "/dev/shm" && a.dev_shm_writable) {
            if !a.writable.iter().any(|w| w == path) {
                a.writable.push(path.to_string());
            }
            continue;
        }
        if !m.read_only() {
            out.push(Target { path, id });
        }
    }
    Ok(out)
}

/// Makes the learned directory `dir` writable: a writable bind of itself
/// when it lies on a mount lancet makes (or made) read-only (`eligible`);
/// nothing when it is on a writable mount of its own. Failures are recorded
/// in `a.skipped`, never fatal.
fn bind_learned(ctx: &Ctx, mounts: &[MountInfo], dir: &str, eligible: &HashSet<u64>, a: &mut Applied) {
    if dir == "/" {
        // Handled as a whole by `targets`.
        if !a.writable.iter().any(|w| w == "/") {
            a.skipped.push(Skipped { path: dir.to_string(), reason: "the root is a read-only mount lancet leaves as it is".into() });
        }
        return;
    }
    let fd = match ctx.open(dir) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => match create_dirs(ctx, dir).and_then(|()| ctx.open(dir)) {
            Ok(fd) => {
                a.created.push(dir.to_string());
                fd
            }
            Err(e) if e.raw_os_error() == Some(libc::EROFS) => {
                let reason = "does not exist, and the read-only root cannot get it now (it is created at the next start)".into();
                a.skipped.push(Skipped { path: dir.to_string(), reason });
                return;
            }
            Err(e) => {
                a.skipped
                    .push(Skipped { path: dir.to_string(), reason: format!("does not exist and could not be created: {}", errno(&e)) });
                return;
            }
        },
        Err(e) => {
            a.skipped.push(Skipped { path: dir.to_string(), reason: errno(&e) });
            return;
        }
    };
    let id = match sys::mount_id(fd.as_fd()) {
        Ok(id) => id,
        Err(e) => {
            a.skipped.push(Skipped { path: dir.to_string(), reason: e.to_string() });
            return;
        }
    };
    if !eligible.contains(&id) {
        match mounts.iter().find(|m| m.id == id) {
            Some(m) if m.read_only() => {
                let reason = format!("on the read-only mount at {}, which lancet leaves as it is", m.mount_point);
                a.skipped.push(Skipped { path: dir.to_string(), reason });
            }
            _ => a.writable.push(dir.to_string()),
        }
        return;
    }
    match bind(ctx, dir, true) {
        Ok(mount_id) => {
            a.steps.push(Step::Bound { path: dir.to_string(), mount_id, writable: true });
            a.writable.push(dir.to_string());
        }
        Err(e) => a.skipped.push(Skipped { path: dir.to_string(), reason: e.to_string() }),
    }
}

/// The fallback when the root mount cannot turn read-only: a read-only bind
/// on every directory directly under `/` that is not learned and not a mount
/// of its own. An ancestor of learned directories (`/var` for
/// `/var/log/nginx`) gets one too: the bind is a recursive copy, so the
/// writable binds of the learned directories below come along (they are
/// made first). Only new entries directly in `/` stay writable; `left` gets
/// `/`, and any directory that could not be bound.
fn walk(ctx: &Ctx, learned: &[String], steps: &mut Vec<Step>, left: &mut Vec<String>) {
    left.push("/".to_string());
    let (dfd, did) = match ctx.mount_at("/") {
        Ok(x) => x,
        Err(e) => {
            left.push(format!("/ (as a whole: {})", errno(&e)));
            return;
        }
    };
    let names = match sys::open_dir_for_listing(ctx.root.as_fd(), "/").and_then(|l| sys::list_dir(&l)) {
        Ok(mut n) => {
            n.sort();
            n
        }
        Err(e) => {
            left.push(format!("/ (as a whole: {})", errno(&e)));
            return;
        }
    };
    for name in names {
        let child = join("/", &name);
        if !sys::stat_at(dfd.as_fd(), &name, false).is_ok_and(|s| s.is_dir()) || learned.iter().any(|l| l == &child) {
            continue;
        }
        let Ok((_, cid)) = ctx.mount_at(&child) else { continue };
        if cid != did {
            // A mount of its own: a volume, /proc, /dev, a bind of lancet's.
            continue;
        }
        match bind(ctx, &child, false) {
            Ok(mount_id) => steps.push(Step::Bound { path: child, mount_id, writable: false }),
            Err(e) => left.push(format!("{child} (as a whole: {e})")),
        }
    }
}

/// Undoes `steps` in reverse order. Returns what could not be undone.
fn undo(ctx: &Ctx, steps: &[Step]) -> Vec<String> {
    let mut failures = Vec::new();
    for step in steps.iter().rev() {
        let path = step.path();
        let Some(id) = step.mount_id() else {
            if let Err(e) = remove_device(ctx, path) {
                failures.push(e);
            }
            continue;
        };
        let res = match ctx.mount_at(path) {
            Ok((fd, top)) if top == id => match step {
                Step::Bound { .. } => sys::detach(fd.as_fd()).map_err(|e| format!("{path}: detaching mount {id}: {e}")),
                _ => sys::set_read_only(fd.as_fd(), false).map_err(|e| format!("{path}: clearing read-only: {e}")),
            },
            other => {
                // Not on top there (or the path is gone): fine if the mount
                // is gone too (detached with a parent lancet removed).
                let still = ctx.mounts().map(|m| m.iter().any(|m| m.id == id)).unwrap_or(true);
                match (still, other) {
                    (false, _) => Ok(()),
                    (true, Err(e)) => Err(format!("{path}: mount {id} cannot be reached: {}", errno(&e))),
                    (true, Ok(_)) => Err(format!("{path}: mount {id} is no longer on top there; left in place")),
                }
            }
        };
        if let Err(e) = res {
            failures.push(e);
        }
    }
    failures
}

/// Removes the device [`create_console`] made, unless something is
/// mounted on it now (the runtime's terminal) or it is no longer that
/// device.
fn remove_device(ctx: &Ctx, path: &str) -> Result<(), String> {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("/", path));
    let Ok(dfd) = ctx.open(if dir.is_empty() { "/" } else { dir }) else { return Ok(()) };
    match sys::stat_at(dfd.as_fd(), name, false) {
        Ok(st) if st.mode & libc::S_IFMT == libc::S_IFCHR && st.rdev == sys::null_device() => match sys::unlink_at(dfd.as_fd(), name) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
            Err(e) => Err(format!("{path}: removing the device lancet created: {e}")),
        },
        _ => Ok(()),
    }
}

/// Before `pivot_root`, when the runtime will open `/dev/console` after
/// the hook: creates it now, while `/dev` is writable (see
/// [`ImmutablePlan::console`]).
fn create_console(ctx: &Ctx, a: &mut Applied) -> Result<(), MountError> {
    let dev = ctx.open("/dev").map_err(syscall("openat2", "/dev"))?;
    match sys::stat_at(dev.as_fd(), "console", false) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            sys::mknod_null_at(dev.as_fd(), "console").map_err(syscall("mknodat", "/dev/console"))?;
            a.steps.push(Step::CreatedDevice { path: "/dev/console".into() });
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Read-only attempts on the targets; EBUSY on `/` means the fallback.
fn make_read_only(ctx: &Ctx, targets: &[Target], learned: &[String], console: bool, a: &mut Applied) -> Result<(), MountError> {
    let mut left = Vec::new();
    let mut writers = Vec::new();
    for t in targets {
        if t.path == "/dev" && console && ctx.pre_pivot {
            create_console(ctx, a)?;
        }
        let (fd, id) = ctx.mount_at(t.path).map_err(syscall("openat2", t.path))?;
        if id != t.id {
            return Err(MountError::Changed { path: t.path.to_string() });
        }
        match sys::set_read_only(fd.as_fd(), true) {
            Ok(()) => a.steps.push(Step::MadeReadOnly { path: t.path.to_string(), mount_id: id }),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                writers.extend(writers_on(ctx.proc.as_fd(), ctx.mnt_ns, id));
                if t.path == "/" {
                    walk(ctx, learned, &mut a.steps, &mut left);
                } else {
                    left.push(t.path.to_string());
                }
            }
            Err(e) => return Err(MountError::Syscall { op: "mount_setattr(MOUNT_ATTR_RDONLY)", path: t.path.to_string(), source: e }),
        }
    }
    a.mode = if left.is_empty() { Mode::Full } else { Mode::Partial { writable_left: left, writers } };
    Ok(())
}

fn apply_in(ctx: &Ctx, plan: &ImmutablePlan) -> Result<Applied, MountError> {
    let mounts = ctx.mounts()?;
    let (learned, skipped) = normalize_dirs(&plan.writable);
    let dev_shm_writable = plan.dev_shm_writable || learned.iter().any(|d| d == "/dev/shm");
    let mut a = Applied {
        mnt_ns: ctx.mnt_ns,
        learned: learned.clone(),
        dev_shm_writable,
        steps: Vec::new(),
        mode: Mode::Full,
        writable: Vec::new(),
        skipped,
        created: Vec::new(),
    };
    let targets = targets(ctx, &mounts, &HashSet::new(), &mut a)?;
    let eligible: HashSet<u64> = targets.iter().map(|t| t.id).collect();
    for dir in &learned {
        bind_learned(ctx, &mounts, dir, &eligible, &mut a);
    }
    if let Err(e) = make_read_only(ctx, &targets, &learned, plan.console, &mut a) {
        let failures = undo(ctx, &a.steps);
        if !failures.is_empty() {
            tracing::warn!(pid = ctx.pid, "rolling back a failed immutability apply left: {}", failures.join("; "));
        }
        return Err(e);
    }
    Ok(a)
}

/// Brings an applied state to a new plan without a moment where the
/// container is more writable than both: new writable binds first, then old
/// ones dropped, then read-only again where needed (and the root retried,
/// which upgrades a partial state once the writers are gone).
fn update_in(ctx: &Ctx, old: &Applied, plan: &ImmutablePlan) -> Result<Applied, MountError> {
    if ctx.mnt_ns != old.mnt_ns {
        return Err(MountError::OtherNamespace { pid: ctx.pid, expected: old.mnt_ns, found: ctx.mnt_ns });
    }
    let (learned, skipped) = normalize_dirs(&plan.writable);
    let dev_shm_writable = plan.dev_shm_writable || learned.iter().any(|d| d == "/dev/shm");
    let mut a = Applied { learned: learned.clone(), dev_shm_writable, writable: Vec::new(), skipped, ..old.clone() };
    let mounts = ctx.mounts()?;
    let ours: HashSet<u64> = old.steps.iter().filter_map(Step::mount_id).collect();
    // Mounts a learned directory may sit on: the ones made read-only (now
    // or before) and lancet's own binds.
    let fresh_targets = targets(ctx, &mounts, &ours, &mut a)?;
    let mut eligible: HashSet<u64> = fresh_targets.iter().map(|t| t.id).collect();
    eligible.extend(ours.iter().copied());
    let visible = |path: &str, id: u64| ctx.mount_at(path).is_ok_and(|(_, top)| top == id);

    // 1. Writable binds for the newly learned directories. A recursive
    // copy also copies lancet's binds below; those copies go (the new
    // bind makes everything below writable).
    for dir in &learned {
        if writable_bind_on_top(ctx, dir, &a.steps).is_some() {
            a.writable.push(dir.clone());
            continue;
        }
        let before = a.steps.len();
        bind_learned(ctx, &mounts, dir, &eligible, &mut a);
        if let Some(Step::Bound { mount_id: new, .. }) = a.steps.get(before) {
            drop_copies_below(ctx, dir, *new, &a.steps);
        }
    }
    // 2. Writable binds of directories no longer learned go, newest first
    // (a bind hidden under a newer one shows once that one is gone). What
    // is on top may be a copy of one, carried into a read-only bind of an
    // ancestor: it goes, and the recorded original stays (hidden) until the
    // release.
    let unlearned: Vec<String> = a
        .steps
        .iter()
        .rev()
        .filter_map(|s| match s {
            Step::Bound { path, writable: true, .. } if !learned.iter().any(|l| l == path) => Some(path.clone()),
            _ => None,
        })
        .collect();
    for path in unlearned {
        while let Some(top) = writable_bind_on_top(ctx, &path, &a.steps) {
            match ctx.mount_at(&path).and_then(|(fd, id)| if id == top { sys::detach(fd.as_fd()) } else { Ok(()) }) {
                Ok(()) => a.steps.retain(|s| s.mount_id() != Some(top)),
                Err(e) => {
                    tracing::warn!(pid = ctx.pid, path, "dropping a writable bind: {e}");
                    break;
                }
            }
        }
    }
    // 3. Mounts now learned as a whole (`/`, `/dev`, `/dev/shm`) turn
    // writable again.
    let mut kept = Vec::new();
    for s in std::mem::take(&mut a.steps).into_iter().rev() {
        if let Step::MadeReadOnly { path, mount_id } = &s {
            if a.writable.iter().any(|w| w == path) && visible(path, *mount_id) {
                match ctx.mount_at(path).and_then(|(fd, _)| sys::set_read_only(fd.as_fd(), false)) {
                    Ok(()) => continue,
                    Err(e) => tracing::warn!(pid = ctx.pid, path, "making a learned mount writable again: {e}"),
                }
            }
        }
        kept.push(s);
    }
    kept.reverse();
    a.steps = kept;
    // 4. Read-only where it is not yet: targets lancet has not made
    // read-only (the root after a partial apply: retried).
    let done: HashSet<&str> = a.made_read_only().map(|(p, _)| p).collect::<Vec<_>>().into_iter().collect();
    let todo: Vec<Target> = fresh_targets.into_iter().filter(|t| !done.contains(t.path)).collect();
    let mut partial = Applied { steps: Vec::new(), ..a.clone() };
    make_read_only(ctx, &todo, &learned, plan.console, &mut partial).unwrap_or_else(|e| {
        partial.mode = Mode::Partial { writable_left: vec![format!("(read-only step failed: {e})")], writers: Vec::new() };
    });
    a.steps.extend(partial.steps);
    // A root that stays writable keeps its fallback binds from before; the
    // walk above added the ones the new plan needs.
    let root_ro = a.made_read_only().any(|(p, _)| p == "/");
    a.mode = match partial.mode {
        Mode::Full if root_ro || learned.iter().any(|l| l == "/") => Mode::Full,
        Mode::Full => old.mode.clone(),
        m => m,
    };
    Ok(a)
}

/// The id of the mount on top at `dir` when it is a writable bind of
/// lancet's there: one it recorded, or a copy of one that a recursive clone
/// carried (same mount point, not recorded).
fn writable_bind_on_top(ctx: &Ctx, dir: &str, steps: &[Step]) -> Option<u64> {
    if !steps.iter().any(|s| matches!(s, Step::Bound { path, writable: true, .. } if path == dir)) {
        return None;
    }
    let (_, top) = ctx.mount_at(dir).ok()?;
    let mounts = ctx.mounts().ok()?;
    let m = mounts.iter().find(|m| m.id == top)?;
    (m.mount_point == dir && !m.read_only()).then_some(top)
}

/// Detaches the copies of lancet's binds that a recursive clone carried
/// into the new bind at `dir` (mount `new`), shallowest first.
fn drop_copies_below(ctx: &Ctx, dir: &str, new: u64, steps: &[Step]) {
    let Ok(mounts) = ctx.mounts() else { return };
    let ids: HashSet<u64> = steps.iter().filter_map(Step::mount_id).collect();
    let paths: HashSet<&str> = steps.iter().filter(|s| matches!(s, Step::Bound { .. })).map(Step::path).collect();
    let mut copies: Vec<&MountInfo> = mountinfo::mounts_below(&mounts, dir)
        .filter(|m| paths.contains(m.mount_point.as_str()) && !ids.contains(&m.id) && descends_from(&mounts, m, new))
        .collect();
    copies.sort_by_key(|m| depth(&m.mount_point));
    for m in copies {
        if let Ok((fd, top)) = ctx.mount_at(&m.mount_point) {
            if top == m.id {
                if let Err(e) = sys::detach(fd.as_fd()) {
                    tracing::warn!(pid = ctx.pid, path = %m.mount_point, "dropping a copied bind: {e}");
                }
            }
        }
    }
}

fn descends_from(mounts: &[MountInfo], m: &MountInfo, ancestor: u64) -> bool {
    let mut cur = m.parent;
    for _ in 0..mounts.len() {
        if cur == ancestor {
            return true;
        }
        match mounts.iter().find(|x| x.id == cur) {
            Some(p) if p.parent != p.id => cur = p.parent,
            _ => return false,
        }
    }
    false
}

/// Makes the container of `pid` immutable as `plan` says. Runs on a
/// dedicated thread inside the container's mount namespace; the caller's
/// threads stay where they are. On an error nothing stays changed (every
/// step made is undone), except where undoing failed too (logged).
/// A learned directory that cannot be made writable is reported in
/// [`Applied::skipped`], not an error.
pub fn apply_immutable(pid: u32, plan: &ImmutablePlan) -> Result<Applied, MountError> {
    let plan = plan.clone();
    ns::run(pid, plan.root.clone(), move |ctx| apply_in(ctx, &plan))
}

/// Moves an applied state to a new plan (the profile changed) without
/// leaving the container writable in between; also retries the read-only
/// root of a partial state. On an error nothing was changed.
pub fn update_immutable(pid: u32, applied: &Applied, plan: &ImmutablePlan) -> Result<Applied, MountError> {
    let (old, plan) = (applied.clone(), plan.clone());
    ns::run(pid, plan.root.clone(), move |ctx| update_in(ctx, &old, &plan))
}

/// Undoes everything [`apply_immutable`] (and later updates) did, in
/// reverse order, without restarting the container: lancet's mounts are
/// detached, and the mounts it made read-only are writable again.
/// When `pid` is gone (or another process now) but the container is not,
/// another process of the namespace is used. `ProcessGone` means the
/// container is gone, and with it everything to undo.
pub fn release_immutable(pid: u32, applied: &Applied) -> Result<(), MountError> {
    release_immutable_at(pid, applied, None)
}

/// [`release_immutable`] for a process that may still be before its
/// `pivot_root` (the container root given as a path inside the namespace).
pub fn release_immutable_at(pid: u32, applied: &Applied, root: Option<PathBuf>) -> Result<(), MountError> {
    match release_in(pid, applied, root) {
        // The process lancet knew ended, or the pid names another process
        // now, while the container lives on: undo through another of its
        // processes.
        Err(MountError::ProcessGone { .. } | MountError::OtherNamespace { .. }) => match process_in_namespace(applied.mnt_ns) {
            Some(other) if other != pid => release_in(other, applied, None),
            _ => Err(MountError::ProcessGone { pid }),
        },
        r => r,
    }
}

fn release_in(pid: u32, applied: &Applied, root: Option<PathBuf>) -> Result<(), MountError> {
    let steps = applied.steps.clone();
    let expected = applied.mnt_ns;
    ns::run(pid, root, move |ctx| {
        if ctx.mnt_ns != expected {
            return Err(MountError::OtherNamespace { pid: ctx.pid, expected, found: ctx.mnt_ns });
        }
        let failures = undo(ctx, &steps);
        if failures.is_empty() {
            Ok(())
        } else {
            Err(MountError::Undo(failures))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn learned_dirs_are_cleaned_deduped_and_nested_ones_dropped() {
        let (dirs, skipped) = normalize_dirs(&s(&[
            "/var/log/nginx/",
            "/var/log/nginx",
            "//run",
            "/var/lib/nginx/body",
            "/var/lib/nginx",
            "/run/nginx",
            "tmp",
            "/a/../etc",
            "/tmp",
        ]));
        assert_eq!(dirs, s(&["/run", "/tmp", "/var/lib/nginx", "/var/log/nginx"]));
        assert_eq!(skipped.iter().map(|x| x.path.as_str()).collect::<Vec<_>>(), ["tmp", "/a/../etc"]);
        let (dirs, _) = normalize_dirs(&s(&["/x", "/", "/y"]));
        assert_eq!(dirs, s(&["/"]));
        // A sibling sharing a prefix is not inside.
        let (dirs, _) = normalize_dirs(&s(&["/var/log", "/var/logs"]));
        assert_eq!(dirs, s(&["/var/log", "/var/logs"]));
    }

    #[test]
    fn paths() {
        assert!(is_under("/var/log", "/var"));
        assert!(is_under("/var", "/var"));
        assert!(!is_under("/variable", "/var"));
        assert!(is_under("/anything", "/"));
        assert_eq!(join("/", "etc"), "/etc");
        assert_eq!(join("/etc", "ssl"), "/etc/ssl");
    }

    #[test]
    fn copies_are_found_by_ancestry() {
        let m = mountinfo::parse("1 0 0:1 / / rw - overlay o rw\n5 1 0:1 /var /var rw - overlay o rw\n6 5 0:1 /var/spool /var/spool ro - overlay o rw\n7 1 0:1 /etc /etc ro - overlay o rw\n");
        assert!(descends_from(&m, &m[2], 5));
        assert!(descends_from(&m, &m[2], 1));
        assert!(!descends_from(&m, &m[3], 5));
        // A parent loop ends.
        let l = mountinfo::parse("1 2 0:1 / / rw - o o rw\n2 1 0:1 / /x rw - o o rw\n");
        assert!(!descends_from(&l, &l[0], 9));
    }
}
