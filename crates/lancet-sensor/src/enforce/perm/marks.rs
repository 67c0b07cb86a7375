//! Marks: which containers, mounts, files and directories are under a
//! permission event, and the ignore marks that remember an answer.

use super::answer::with_path;
use super::{DevInfo, MarkScope, MountMark, ObjInfo, ObjRef, PermGroup, DIR_MASK, FILE_MASK};
use crate::fanotify::{fanotify_mark, FanotifyError};
use crate::sys::{fstat, mount_id, open_in_root, open_path};
use std::io;
use std::os::fd::AsFd;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;

impl PermGroup {
    /// Asks about every exec of a file on `root`'s filesystem (`root`: a
    /// container's `/proc/<pid>/root`, or its rootfs `merged` dir from a hook
    /// before pid 1 pivoted). Tries a filesystem mark (unless configured for
    /// mount marks) and falls back to a mount mark where the kernel refuses
    /// it; returns which was placed. Refuses the host's root filesystem.
    /// Can be called several times per label (e.g. also for a tmpfs the
    /// container execs from).
    pub fn protect_exec(&self, label: u64, root: &Path) -> Result<MarkScope, FanotifyError> {
        let fd = open_dir(root)?;
        let (dev, magic) = dev_magic(fd.as_raw_fd(), root)?;
        if dev == self.inner.host_root_dev {
            return Err(FanotifyError::HostFilesystem(root.to_path_buf()));
        }
        let mut st = self.lock();
        let scope = match st.devs.get(&dev).and_then(|i| i.exec_scope) {
            Some(s) => s,
            None => self.mark_exec(fd.as_raw_fd(), root)?,
        };
        let info = st.devs.entry(dev).or_default();
        info.exec_scope = Some(scope);
        if !info.exec_owners.contains(&label) {
            info.exec_owners.push(label);
        }
        info.magic = magic;
        add_prefixes(info, dev, root);
        let ls = st.labels.entry(label).or_default();
        if !ls.roots.iter().any(|(p, d)| *d == dev && p == root) {
            ls.roots.push((root.to_path_buf(), dev));
        }
        tracing::debug!(label, root = %root.display(), dev, ?scope, "exec permission mark added");
        Ok(scope)
    }

    /// Asks about every exec of a file on mount `mnt` of a container: the
    /// directory `path` inside `root` (a container's `/proc/<pid>/root`),
    /// resolved without leaving it, must be that mount's root (`mnt` as
    /// `/proc/<pid>/mountinfo` numbers it), so a container that swaps a
    /// directory for a symlink cannot have a host mount marked instead.
    /// Always a mount mark (see the module docs); marking a mount again adds
    /// nothing. Refuses lancet's own root mount.
    pub fn protect_exec_mount(&self, label: u64, root: &Path, path: &str, mnt: u64) -> Result<(), FanotifyError> {
        let fd = open_mount(root, path, mnt)?;
        let (_, magic) = dev_magic(fd.as_raw_fd(), root)?;
        if Some(mnt) == *HOST_ROOT_MOUNT.get_or_init(|| open_dir(crate::sys::host_root_dir()).ok().and_then(|f| mount_id(f.as_fd()).ok())) {
            return Err(FanotifyError::HostFilesystem(root.join(path.trim_start_matches('/'))));
        }
        let mut st = self.lock();
        if !st.mounts.contains_key(&mnt) {
            fanotify_mark(self.fd(), libc::FAN_MARK_ADD | libc::FAN_MARK_MOUNT, libc::FAN_OPEN_EXEC_PERM, &proc_fd(fd.as_raw_fd()))
                .map_err(|e| with_path(e, &root.join(path.trim_start_matches('/'))))?;
        }
        let m = st.mounts.entry(mnt).or_insert(MountMark { owners: Vec::new(), magic });
        if !m.owners.contains(&label) {
            m.owners.push(label);
        }
        let ls = st.labels.entry(label).or_default();
        if !ls.mounts.iter().any(|m| m.2 == mnt) {
            ls.mounts.push((root.to_path_buf(), path.to_owned(), mnt));
        }
        tracing::debug!(label, root = %root.display(), path, mnt, "exec permission mount mark added");
        Ok(())
    }

    pub(super) fn mark_exec(&self, fd: RawFd, root: &Path) -> Result<MarkScope, FanotifyError> {
        let via = proc_fd(fd);
        let mask = libc::FAN_OPEN_EXEC_PERM;
        let fan = self.fd();
        if self.inner.cfg.scope == MarkScope::Filesystem {
            match fanotify_mark(fan, libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM, mask, &via) {
                Ok(()) => return Ok(MarkScope::Filesystem),
                Err(FanotifyError::Mark { source, .. })
                    if matches!(source.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP | libc::EXDEV | libc::ENODEV)) =>
                {
                    tracing::info!(root = %root.display(), error = %source,
                        "filesystem permission mark refused, using a mount mark");
                }
                Err(e) => return Err(with_path(e, root)),
            }
        }
        fanotify_mark(fan, libc::FAN_MARK_ADD | libc::FAN_MARK_MOUNT, mask, &via).map_err(|e| with_path(e, root))?;
        Ok(MarkScope::Mount)
    }

    /// Asks about every open of these files (absolute paths as seen inside
    /// `root`, resolved inside it: symlinks cannot lead out). Missing paths
    /// are skipped; returns how many were marked.
    pub fn protect_files(&self, label: u64, root: &Path, paths: &[&str]) -> Result<usize, FanotifyError> {
        self.protect_objects(label, root, paths, false)
    }

    /// Asks about every open of a direct child of these directories (paths as
    /// seen inside `root`), with the opener's write intent.
    ///
    /// # Write intent
    /// fanotify does not report open flags. While the opener is stopped in
    /// the permission check it is inside its open syscall, so lancet reads
    /// `/proc/<tid>/syscall` (syscall number and raw arguments) and takes the
    /// flags argument of `open`/`openat`/`open_by_handle_at` (`creat` means
    /// write; an exec's open means read), or reads `struct open_how.flags`
    /// from the task's memory for `openat2` (`process_vm_readv`). `O_WRONLY`,
    /// `O_RDWR`, `O_CREAT`, `O_TRUNC` or `O_APPEND` is write intent.
    /// Anything else (io_uring opens, kernel-internal opens, other
    /// architectures' numbers, a 32-bit task) gives `write: None`, and the
    /// decider chooses.
    ///
    /// Limits: it costs an open+read of a proc file per event, so it is meant
    /// for the few marked directories, not for busy ones. `openat2`'s struct
    /// is re-read from user memory, which another thread of the opener could
    /// have changed since the kernel copied it. A file created with `O_CREAT`
    /// already exists when the permission event comes (the check is on open,
    /// after creation), so denying that open leaves an empty file behind;
    /// existing files are left unchanged (`O_TRUNC` happens after the check).
    pub fn protect_dir_writes(&self, label: u64, root: &Path, dirs: &[&str]) -> Result<usize, FanotifyError> {
        self.protect_objects(label, root, dirs, true)
    }

    pub(super) fn protect_objects(&self, label: u64, root: &Path, paths: &[&str], dirs: bool) -> Result<usize, FanotifyError> {
        let root_fd = open_dir(root)?;
        let (root_dev, magic) = dev_magic(root_fd.as_raw_fd(), root)?;
        let mask = if dirs { DIR_MASK } else { FILE_MASK };
        let mut added = 0;
        let mut st = self.lock();
        for &p in paths {
            let fd = match open_in_root(root_fd.as_fd(), p) {
                Ok(fd) => fd,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => continue,
                Err(source) => return Err(FanotifyError::Open { path: root.join(p.trim_start_matches('/')), source }),
            };
            let s = fstat(fd.as_raw_fd()).map_err(|source| FanotifyError::Open { path: root.join(p.trim_start_matches('/')), source })?;
            let is_dir = s.st_mode & libc::S_IFMT == libc::S_IFDIR;
            if is_dir != dirs || (!dirs && s.st_mode & libc::S_IFMT != libc::S_IFREG) {
                tracing::debug!(path = p, dirs, "not a {}; not marked", if dirs { "directory" } else { "file" });
                continue;
            }
            let key = (s.st_dev, s.st_ino);
            let ls = st.labels.entry(label).or_default();
            if ls.objects.iter().any(|o| o.key == key && o.mask == mask) {
                continue;
            }
            fanotify_mark(self.fd(), libc::FAN_MARK_ADD, mask, &proc_fd(fd.as_raw_fd()))
                .map_err(|e| with_path(e, &root.join(p.trim_start_matches('/'))))?;
            ls.objects.push(ObjRef { key, root: root.to_path_buf(), path: p.to_owned(), mask });
            let o = st.objects.entry(key).or_insert(ObjInfo { labels: Vec::new(), mask: 0 });
            o.mask |= mask;
            if !o.labels.contains(&label) {
                o.labels.push(label);
            }
            let info = st.devs.entry(key.0).or_default();
            if !info.other_owners.contains(&label) {
                info.other_owners.push(label);
            }
            if key.0 == root_dev {
                info.magic = magic;
                add_prefixes(info, root_dev, root);
            }
            added += 1;
        }
        Ok(added)
    }

    /// Removes `label`'s marks (exec, files, directories) and its remembered
    /// ignore marks. Marks on a container that is gone went with its
    /// filesystem; those are only forgotten. Returns the marks removed.
    pub fn unprotect(&self, label: u64) -> usize {
        let mut removed = self.forget(label);
        let mut st = self.lock();
        let Some(ls) = st.labels.remove(&label) else {
            return removed;
        };
        for (root, path, mnt) in ls.mounts {
            let Some(m) = st.mounts.get_mut(&mnt) else { continue };
            m.owners.retain(|&l| l != label);
            if !m.owners.is_empty() {
                continue;
            }
            st.mounts.remove(&mnt);
            // Only while `path` still leads to that mount (a container that
            // is gone took its mounts, and their marks, with it).
            let Ok(fd) = open_mount(&root, &path, mnt) else { continue };
            let flags = libc::FAN_MARK_REMOVE | libc::FAN_MARK_MOUNT;
            match fanotify_mark(self.fd(), flags, libc::FAN_OPEN_EXEC_PERM, &proc_fd(fd.as_raw_fd())) {
                Ok(()) => removed += 1,
                Err(e) => tracing::debug!(label, path, error = %e, "removing exec mount mark"),
            }
        }
        for (root, dev) in ls.roots {
            let Some(info) = st.devs.get_mut(&dev) else { continue };
            info.exec_owners.retain(|&l| l != label);
            if !info.exec_owners.is_empty() {
                continue;
            }
            let scope = info.exec_scope.take();
            if info.other_owners.is_empty() {
                st.devs.remove(&dev);
            }
            let flag = match scope {
                Some(MarkScope::Filesystem) => libc::FAN_MARK_FILESYSTEM,
                Some(MarkScope::Mount) => libc::FAN_MARK_MOUNT,
                None => continue,
            };
            // Only while `root` still is that filesystem: a removed
            // container's path may now be a plain directory of the host's.
            let Ok(fd) = open_dir(&root) else { continue };
            if dev_magic(fd.as_raw_fd(), &root).map(|(d, _)| d).ok() != Some(dev) {
                continue;
            }
            match fanotify_mark(self.fd(), libc::FAN_MARK_REMOVE | flag, libc::FAN_OPEN_EXEC_PERM, &proc_fd(fd.as_raw_fd())) {
                Ok(()) => removed += 1,
                Err(e) => tracing::debug!(label, root = %root.display(), error = %e, "removing exec mark"),
            }
        }
        for o in ls.objects {
            if let Some(info) = st.devs.get_mut(&o.key.0) {
                info.other_owners.retain(|&l| l != label);
                if info.other_owners.is_empty() && info.exec_owners.is_empty() {
                    st.devs.remove(&o.key.0);
                }
            }
            let Some(obj) = st.objects.get_mut(&o.key) else { continue };
            obj.labels.retain(|&l| l != label);
            if !obj.labels.is_empty() {
                continue;
            }
            st.objects.remove(&o.key);
            if self.remove_inode_mark(&o.root, &o.path, o.key, libc::FAN_MARK_REMOVE, o.mask) {
                removed += 1;
            }
        }
        removed
    }

    /// Removes the ignore marks remembered for `label` (e.g. after its profile
    /// changed), so the next exec of each is asked about again. A remembered
    /// file that was renamed or replaced since cannot be found by its path;
    /// [`clear_ignores`](Self::clear_ignores) removes those too. Returns the
    /// ignore marks removed.
    pub fn forget(&self, label: u64) -> usize {
        let ignores = {
            let mut st = self.lock();
            let Some(ls) = st.labels.get_mut(&label) else { return 0 };
            let v = std::mem::take(&mut ls.ignores);
            st.remembered -= v.len().min(st.remembered);
            v
        };
        let flag = libc::FAN_MARK_REMOVE | self.inner.ignore_flag.load(Relaxed);
        ignores.iter().filter(|i| i.root.as_ref().is_some_and(|r| self.remove_inode_mark(r, &i.path, i.key, flag, i.mask))).count()
    }

    /// Removes every ignore mark of the group (`FAN_MARK_FLUSH` of inode
    /// marks, which also removes the file and directory marks; those are put
    /// back right away, so for a moment protected files are not asked about).
    /// Returns the file and directory marks put back.
    pub fn clear_ignores(&self) -> Result<usize, FanotifyError> {
        let mut st = self.lock();
        fanotify_mark(self.fd(), libc::FAN_MARK_FLUSH, 0, Path::new("/"))?;
        st.remembered = 0;
        let mut redo = Vec::new();
        for ls in st.labels.values_mut() {
            ls.ignores.clear();
            redo.extend(ls.objects.iter().cloned());
        }
        drop(st);
        let mut n = 0;
        for o in redo {
            let Ok(root_fd) = open_dir(&o.root) else { continue };
            let Ok(fd) = open_in_root(root_fd.as_fd(), &o.path) else { continue };
            if fanotify_mark(self.fd(), libc::FAN_MARK_ADD, o.mask, &proc_fd(fd.as_raw_fd())).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Resolves `path` in `root` and, when it still is inode `key`, applies
    /// `flags`/`mask` to it. Errors are logged (the file may be gone).
    pub(super) fn remove_inode_mark(&self, root: &Path, path: &str, key: (u64, u64), flags: u32, mask: u64) -> bool {
        let Ok(root_fd) = open_dir(root) else { return false };
        let Ok(fd) = open_in_root(root_fd.as_fd(), path) else { return false };
        match fstat(fd.as_raw_fd()) {
            Ok(s) if (s.st_dev, s.st_ino) == key => {}
            _ => return false,
        }
        match fanotify_mark(self.fd(), flags, mask, &proc_fd(fd.as_raw_fd())) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(path, error = %e, "removing mark");
                false
            }
        }
    }
}

pub(super) fn open_dir(root: &Path) -> Result<OwnedFd, FanotifyError> {
    open_path(libc::AT_FDCWD, root, libc::O_DIRECTORY).map_err(|source| FanotifyError::Open { path: root.to_path_buf(), source })
}

/// `/proc/self/fd/N`: marks through it apply to the fd's object (mount and
/// inode), so nothing is resolved twice.
pub(super) fn proc_fd(fd: RawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{fd}"))
}

/// Opens directory `path` inside `root` (never leaving it) when it is the
/// root of mount `mnt`.
pub(super) fn open_mount(root: &Path, path: &str, mnt: u64) -> Result<OwnedFd, FanotifyError> {
    let full = || root.join(path.trim_start_matches('/'));
    let root_fd = open_dir(root)?;
    let fd = open_in_root(root_fd.as_fd(), path).map_err(|source| FanotifyError::Open { path: full(), source })?;
    let st = fstat(fd.as_raw_fd()).map_err(|source| FanotifyError::Open { path: full(), source })?;
    let id = mount_id(fd.as_fd()).map_err(|source| FanotifyError::Open { path: full(), source })?;
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR || id != mnt {
        return Err(FanotifyError::Open { path: full(), source: io::Error::from_raw_os_error(libc::ESTALE) });
    }
    Ok(fd)
}

/// The mount id of lancet's own root (never marked for a container).
static HOST_ROOT_MOUNT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();

/// (st_dev, statfs magic) of an fd.
pub(super) fn dev_magic(fd: RawFd, path: &Path) -> Result<(u64, u64), FanotifyError> {
    let st = fstat(fd).map_err(|source| FanotifyError::Open { path: path.to_path_buf(), source })?;
    // SAFETY: all-zero bytes are a valid `struct statfs` (plain integers).
    let mut sf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `sf` is a valid out-pointer; fstatfs does not retain it. O_PATH
    // fds are accepted by fstatfs.
    let r = unsafe { libc::fstatfs(fd, &mut sf) };
    let magic = if r == 0 { sf.f_type as u64 } else { 0 };
    Ok((st.st_dev, magic))
}

/// Records where filesystem `dev`'s root is reachable from lancet's mount
/// namespace: `root` itself (unless it is a `/proc/<pid>/…` magic link, which
/// `readlink` never returns) and every whole-filesystem mount of `dev`.
pub(super) fn add_prefixes(info: &mut DevInfo, dev: u64, root: &Path) {
    let mut add = |p: &str| {
        let p = p.trim_end_matches('/');
        if !p.is_empty() && !info.prefixes.iter().any(|q| q == p) {
            info.prefixes.push(p.to_owned());
        }
    };
    if let Some(r) = root.to_str().filter(|r| !r.starts_with("/proc/")) {
        add(std::fs::canonicalize(r).ok().as_deref().and_then(Path::to_str).unwrap_or(r));
    }
    if let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") {
        for (mp, mroot) in crate::overlay::mounts_of_dev(&text, dev) {
            if mroot == "/" {
                add(&mp);
            }
        }
    }
    info.prefixes.sort_by_key(|p| std::cmp::Reverse(p.len()));
}

/// Writes into `out` the path as the root sees it: `link` with the first
/// matching host prefix stripped. `readlink` of an fd opened in a container's
/// mount namespace already gives the container-relative path (its mounts are
/// not reachable from lancet's root); one reached through the host's mount of
/// the rootfs gives the host path.
/// Returns whether a prefix was stripped.
pub(crate) fn normalise(link: &[u8], prefixes: &[String], out: &mut String) -> bool {
    out.clear();
    let mut rest = link;
    for p in prefixes {
        let p = p.as_bytes();
        if link.len() > p.len() && link.starts_with(p) && link[p.len()] == b'/' {
            rest = &link[p.len()..];
            break;
        }
        if link == p {
            rest = b"/";
            break;
        }
    }
    match std::str::from_utf8(rest) {
        Ok(s) => out.push_str(s),
        Err(_) => out.push_str(&String::from_utf8_lossy(rest)),
    }
    rest.len() != link.len()
}

/// Whether host path `link` names the file `key` (device, inode).
pub(super) fn same_file(link: &[u8], key: (u64, u64)) -> bool {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(std::ffi::OsStr::from_bytes(link)).is_ok_and(|m| (m.dev(), m.ino()) == key)
}

/// `fanotify_mark(fan, flags, mask, fd, NULL)`: mark the object of an open fd.
pub(super) fn mark_fd(fan: RawFd, flags: u32, mask: u64, fd: RawFd) -> io::Result<()> {
    // SAFETY: integer arguments and a NULL path, which makes the kernel use
    // `fd`'s own object.
    let r = unsafe { libc::fanotify_mark(fan, flags, mask, fd, std::ptr::null()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_paths() {
        let pre = vec!["/var/lib/containers/storage/overlay/abc/merged".to_owned(), "/x".to_owned()];
        let mut s = String::new();
        assert!(!normalise(b"/bin/busybox", &pre, &mut s));
        assert_eq!(s, "/bin/busybox");
        assert!(normalise(b"/var/lib/containers/storage/overlay/abc/merged/tmp/ls", &pre, &mut s));
        assert_eq!(s, "/tmp/ls");
        normalise(b"/var/lib/containers/storage/overlay/abc/merged", &pre, &mut s);
        assert_eq!(s, "/");
        normalise(b"/xy/z", &pre, &mut s);
        assert_eq!(s, "/xy/z", "prefix on a component boundary only");
        normalise(b"/tmp/\xffbad", &[], &mut s);
        assert_eq!(s, "/tmp/\u{fffd}bad");
        normalise(b"/tmp/x (deleted)", &pre, &mut s);
        assert_eq!(s, "/tmp/x (deleted)");
    }

    #[test]
    fn a_stripped_prefix_is_kept_only_for_the_host_file_itself() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("bin/httpd");
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, b"x").unwrap();
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&f).unwrap();
        let link = f.to_str().unwrap().as_bytes();
        assert!(same_file(link, (m.dev(), m.ino())), "the host path of the event's file");
        assert!(!same_file(link, (m.dev(), m.ino() + 1)), "another file at that path: the path was the container's");
        assert!(!same_file(b"/nonexistent/lancet/x", (m.dev(), m.ino())));
    }

    #[test]
    fn mount_ids_are_those_of_mountinfo() {
        let root = open_dir(Path::new("/")).unwrap();
        let id = mount_id(root.as_fd()).unwrap();
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let ours = crate::mountinfo::parse(&text);
        assert!(ours.iter().any(|m| m.id == id && m.mount_point == "/"), "{id} in {text}");
        let proc = open_dir(Path::new("/proc")).unwrap();
        assert_ne!(mount_id(proc.as_fd()).unwrap(), id, "/proc is a mount of its own");
    }
}
