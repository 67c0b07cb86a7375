//! "Immutability, enforced": the protected set of a container's filesystem
//! (code, system configuration, root's home, cron, package databases; see
//! `lancet_engine::write_sets`) made read-only, with the kernel refusing
//! every write there at the syscall (EROFS) while the container runs on and
//! its service writes its data wherever else it likes.
//!
//! How, inside the container's mount namespace ([`super::ns`]):
//! 1. each carve-out (a directory inside a protected one that stays
//!    writable: a service's own `/etc/redis`) gets a writable bind of
//!    itself, a recursive `open_tree` clone moved onto the same directory;
//! 2. each protected directory that exists as a real directory (a symlink
//!    such as `/bin` → `usr/bin` is covered by its target) gets a read-only
//!    bind of itself, a recursive clone made read-only on its top mount
//!    only: the carve-outs of step 1 and the runtime's own file binds below
//!    (`/etc/hosts`, `/etc/resolv.conf`) come along writable;
//! 3. `/dev` is made read-only with `mount_setattr` (device nodes stay
//!    writable: the kernel does not check the mount for them), so no file
//!    can be made there.
//!
//! Binds on top do not care who holds files open below, so this holds in a
//! running container as at its start; a process that already held a
//! protected file open for writing keeps that one descriptor (reported in
//! [`Applied::writers`]). Every change is recorded as a [`Step`]; undoing
//! them in reverse order gives back the mount table as it was.

use crate::mountinfo::MountInfo;
use crate::mounts::ns::{self, Ctx};
use crate::mounts::procfs::{process_in_namespace, writers_on, Writer};
use crate::mounts::MountError;
use crate::sys;
use lancet_engine::write_sets::is_under;
use serde::{Deserialize, Serialize};
use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;

/// What to make read-only, and what to leave writable inside it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImmutablePlan {
    /// The container's root as a path inside its mount namespace, used only
    /// while the given process has not pivoted into it yet (at the OCI
    /// `createRuntime` hook: the bundle's `root.path`, e.g.
    /// `.../overlay/<id>/merged`). Once it has, its own root is used.
    pub root: Option<PathBuf>,
    /// Directories made read-only, as the container sees them (the
    /// protected set's directories; missing ones are skipped).
    pub read_only: Vec<String>,
    /// Directories inside them that stay writable.
    pub writable: Vec<String>,
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

/// A directory of the plan that was not changed, and why.
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
    /// The plan it carried out, cleaned up (see [`normalize_dirs`]): an
    /// update to the same plan changes nothing.
    pub planned_read_only: Vec<String>,
    pub planned_writable: Vec<String>,
    /// The changes, in the order made.
    pub steps: Vec<Step>,
    /// Directories that are read-only now (bound by lancet, or a read-only
    /// mount already).
    pub read_only: Vec<String>,
    /// Carve-outs that are writable (a bind lancet added, or a writable
    /// mount of their own such as a volume).
    pub writable: Vec<String>,
    /// Directories of the plan left as they were.
    pub skipped: Vec<Skipped>,
    /// Processes that held a file open for writing in a protected
    /// directory when it turned read-only: they keep that descriptor.
    pub writers: Vec<Writer>,
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

/// Cleans up directories: absolute paths with no `.`/`..` components and
/// no repeated or trailing slashes, each once, parents first, and none
/// inside another (it is covered by its parent). Returns the directories
/// and the entries refused, with the reason.
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

fn syscall<'a>(op: &'static str, path: &'a str) -> impl FnOnce(io::Error) -> MountError + 'a {
    move |source| MountError::Syscall { op, path: path.to_string(), source }
}

fn errno(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ELOOP) => "a path component is a symlink (ELOOP); it is not followed".into(),
        Some(libc::ENOTDIR) => "not a directory".into(),
        Some(libc::ENOENT) => "does not exist".into(),
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

/// The mount whose mount point is exactly `path`, if one is (a mount of its
/// own, not a directory of its parent's).
fn own_mount<'a>(ctx: &Ctx, mounts: &'a [MountInfo], path: &str) -> io::Result<Option<&'a MountInfo>> {
    let (_, id) = ctx.mount_at(path)?;
    Ok(mounts.iter().find(|m| m.id == id && m.mount_point == path))
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

/// Read-only binds for the plan's protected directories, writable binds
/// for its carve-outs first (a bind made below a read-only one afterwards
/// would be the only way in, and cloning it along is what keeps it
/// writable).
fn apply_in(ctx: &Ctx, plan: &ImmutablePlan) -> Result<Applied, MountError> {
    let mounts = ctx.mounts()?;
    let (read_only, mut skipped) = normalize_dirs(&plan.read_only);
    let (writable, more) = normalize_dirs(&plan.writable);
    skipped.extend(more);
    let mut a = Applied {
        mnt_ns: ctx.mnt_ns,
        planned_read_only: read_only.clone(),
        planned_writable: writable.clone(),
        steps: Vec::new(),
        read_only: Vec::new(),
        writable: Vec::new(),
        skipped,
        writers: Vec::new(),
    };
    // 1. Carve-outs inside a directory about to turn read-only.
    for dir in writable.iter().filter(|d| read_only.iter().any(|p| is_under(d, p) && *d != p)) {
        match own_mount(ctx, &mounts, dir) {
            Err(e) => a.skipped.push(Skipped { path: dir.clone(), reason: errno(&e) }),
            Ok(Some(m)) if m.read_only() => {
                a.skipped.push(Skipped { path: dir.clone(), reason: "a read-only mount of its own, left as it is".into() })
            }
            // A volume: writable already, and carried along by the bind.
            Ok(Some(_)) => a.writable.push(dir.clone()),
            Ok(None) => match bind(ctx, dir, true) {
                Ok(mount_id) => {
                    a.steps.push(Step::Bound { path: dir.clone(), mount_id, writable: true });
                    a.writable.push(dir.clone());
                }
                Err(e) => a.skipped.push(Skipped { path: dir.clone(), reason: e.to_string() }),
            },
        }
    }
    // 2. The protected directories.
    for dir in &read_only {
        let below = match own_mount(ctx, &mounts, dir) {
            // Missing, or a symlink into a directory that is covered itself
            // (`/bin` → `usr/bin`, `/lib64` → `usr/lib64`): nothing to do.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ELOOP | libc::ENOTDIR)) => continue,
            Err(e) => {
                a.skipped.push(Skipped { path: dir.clone(), reason: errno(&e) });
                continue;
            }
            Ok(Some(m)) if m.read_only() => {
                a.read_only.push(dir.clone());
                continue;
            }
            Ok(Some(_)) => {
                // The operator gave the container this directory as a mount
                // of its own: theirs to decide.
                a.skipped.push(Skipped { path: dir.clone(), reason: "a writable mount of its own (a volume), left as it is".into() });
                continue;
            }
            Ok(None) => ctx.mount_at(dir).map(|(_, id)| id).ok(),
        };
        match bind(ctx, dir, false) {
            Ok(mount_id) => {
                a.steps.push(Step::Bound { path: dir.clone(), mount_id, writable: false });
                a.read_only.push(dir.clone());
                if let Some(under) = below {
                    for w in writers_on(ctx.proc.as_fd(), ctx.mnt_ns, under) {
                        if is_under(&w.path, dir) && !a.writable.iter().any(|c| is_under(&w.path, c)) && !a.writers.contains(&w) {
                            a.writers.push(w);
                        }
                    }
                }
            }
            Err(e) => a.skipped.push(Skipped { path: dir.clone(), reason: e.to_string() }),
        }
    }
    // 3. No new files in /dev.
    if let Err(e) = dev_read_only(ctx, &mounts, plan.console, &mut a) {
        let failures = undo(ctx, &a.steps);
        if !failures.is_empty() {
            tracing::warn!(pid = ctx.pid, "rolling back a failed immutability apply left: {}", failures.join("; "));
        }
        return Err(e);
    }
    Ok(a)
}

/// Makes `/dev` read-only when it is a writable mount of its own (creating
/// the runtime's console first at the hook).
fn dev_read_only(ctx: &Ctx, mounts: &[MountInfo], console: bool, a: &mut Applied) -> Result<(), MountError> {
    let Ok(Some(m)) = own_mount(ctx, mounts, "/dev") else { return Ok(()) };
    if m.read_only() {
        return Ok(());
    }
    if console && ctx.pre_pivot {
        create_console(ctx, a)?;
    }
    let (fd, id) = ctx.mount_at("/dev").map_err(syscall("openat2", "/dev"))?;
    if id != m.id {
        return Err(MountError::Changed { path: "/dev".into() });
    }
    sys::set_read_only(fd.as_fd(), true).map_err(syscall("mount_setattr(MOUNT_ATTR_RDONLY)", "/dev"))?;
    a.steps.push(Step::MadeReadOnly { path: "/dev".into(), mount_id: id });
    Ok(())
}

/// Brings an applied state to a new plan. The plan changes rarely (a
/// policy's writable entries, a service directory that appeared): the old
/// state is undone and the new one applied, so for a moment of a few
/// milliseconds the protected directories are writable. An unchanged plan
/// changes nothing.
fn update_in(ctx: &Ctx, old: &Applied, plan: &ImmutablePlan) -> Result<Applied, MountError> {
    if ctx.mnt_ns != old.mnt_ns {
        return Err(MountError::OtherNamespace { pid: ctx.pid, expected: old.mnt_ns, found: ctx.mnt_ns });
    }
    if normalize_dirs(&plan.read_only).0 == old.planned_read_only && normalize_dirs(&plan.writable).0 == old.planned_writable {
        return Ok(old.clone());
    }
    let failures = undo(ctx, &old.steps);
    if !failures.is_empty() {
        return Err(MountError::Undo(failures));
    }
    apply_in(ctx, plan)
}

/// Makes the container of `pid` immutable as `plan` says. Runs on a
/// dedicated thread inside the container's mount namespace; the caller's
/// threads stay where they are. On an error nothing stays changed (every
/// step made is undone), except where undoing failed too (logged).
/// A directory of the plan that cannot be changed is reported in
/// [`Applied::skipped`], not an error.
pub fn apply_immutable(pid: u32, plan: &ImmutablePlan) -> Result<Applied, MountError> {
    let plan = plan.clone();
    ns::run(pid, plan.root.clone(), move |ctx| apply_in(ctx, &plan))
}

/// Moves an applied state to a new plan (see `update_in`).
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
    fn dirs_are_cleaned_deduped_and_nested_ones_dropped() {
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
    }
}
