//! [`SensitiveOpenWatcher`]: opens of a small set of sensitive paths, per
//! container root, with inode marks (classic fd-reporting fanotify).

use super::parse::RawEvent;
use super::READ_BUF_LEN;
use super::{fanotify_init, fanotify_mark, FanotifyError, FanotifyStats};
use crate::sys::{fd_path, fstat, open_in_root, open_path};
use lancet_engine::event::{Event, EventKind, FileEvent, FileOp, ProcessRef};
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// Paths whose opens are reported by default, as seen inside a root. A `*` in
/// the last component is a glob over that directory's entries (at watch time).
/// Directories report opens of their direct children (and of themselves).
///
/// The Kubernetes service-account directory holds symlinks into a
/// timestamped `..data` directory, so `..data` is watched too; kubelet swaps
/// `..data` when it rotates the token, after which the root must be re-watched
/// (`unwatch` + `watch_root`) to follow it.
pub const DEFAULT_SENSITIVE_PATHS: &[&str] = &[
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/security/opasswd",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/root/.ssh",
    "/etc/ssh/ssh_host_*_key",
    "/etc/kubernetes/pki",
    "/etc/kubernetes/admin.conf",
    "/var/lib/kubelet/pki",
    "/run/secrets/kubernetes.io/serviceaccount",
    "/run/secrets/kubernetes.io/serviceaccount/..data",
    "/var/run/secrets/kubernetes.io/serviceaccount",
    "/var/run/secrets/kubernetes.io/serviceaccount/..data",
];

/// Upper bound on watched objects (the kernel's default per-user limit on
/// fanotify marks is larger; this bounds our own bookkeeping).
const MAX_WATCHED: usize = 65_536;

/// Reports opens of sensitive files and of the direct children of sensitive
/// directories, inside any number of roots (`/` for the host,
/// `/proc/<pid>/root` for a container).
///
/// # What it costs
/// Inode marks cost nothing on the rest of the system: only an `open(2)` of a
/// marked inode (or, for a marked directory, of one of its direct children)
/// queues an event. For each reported open the kernel also opens the file once
/// more, read-only, to hand us an fd, and we `fstat` + `readlink` + `close` it.
/// Every mark pins its inode in memory until it is removed or the filesystem
/// (e.g. a container's overlay) is unmounted, at which point the kernel drops
/// the marks by itself.
///
/// Events carry the in-root path (`/etc/shadow`), a host path to it
/// (`<root>/etc/shadow`, e.g. `/proc/<pid>/root/etc/shadow`) and the opener's
/// host pid (tgid).
/// [`Event::cgroup_id`] is 0; the root's label is available through
/// [`SensitiveOpenWatcher::read_events_labeled`].
pub struct SensitiveOpenWatcher {
    fan: OwnedFd,
    paths: Vec<String>,
    /// (st_dev, st_ino) → what it is, per label.
    objects: HashMap<(u64, u64), Vec<Watched>>,
    /// Marked directories, to place events on their children.
    dirs: Vec<DirMark>,
    roots: HashMap<u64, RootInfo>,
    buf: Vec<u8>,
    own_pid: i32,
    stats: FanotifyStats,
}

#[derive(Debug, Clone)]
struct Watched {
    label: u64,
    path: String,
    is_dir: bool,
}

#[derive(Debug, Clone)]
struct DirMark {
    dev: u64,
    ino: u64,
    label: u64,
    path: String,
}

struct RootInfo {
    root: PathBuf,
    objects: Vec<(u64, u64)>,
}

const FILE_MASK: u64 = libc::FAN_OPEN;
const DIR_MASK: u64 = libc::FAN_OPEN | libc::FAN_EVENT_ON_CHILD | libc::FAN_ONDIR;

impl SensitiveOpenWatcher {
    /// A watcher over [`DEFAULT_SENSITIVE_PATHS`].
    pub fn new() -> Result<Self, FanotifyError> {
        Self::with_paths(DEFAULT_SENSITIVE_PATHS.iter().map(|s| s.to_string()).collect())
    }

    /// A watcher over `paths` (absolute, as seen inside a root; `*` allowed in
    /// the last component).
    pub fn with_paths(paths: Vec<String>) -> Result<Self, FanotifyError> {
        let fan = fanotify_init(
            libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK | libc::FAN_UNLIMITED_QUEUE,
            (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as u32,
        )?;
        Ok(SensitiveOpenWatcher {
            fan,
            paths,
            objects: HashMap::new(),
            dirs: Vec::new(),
            roots: HashMap::new(),
            buf: vec![0; READ_BUF_LEN],
            own_pid: std::process::id() as i32,
            stats: FanotifyStats::default(),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fan.as_raw_fd()
    }

    pub fn stats(&self) -> FanotifyStats {
        self.stats
    }

    /// Mark every sensitive path that exists under `root`, remembering them
    /// under `label` (e.g. the container's cgroup id). Paths are resolved inside
    /// `root` (`openat2(RESOLVE_IN_ROOT)`: absolute symlinks and `..` stay in
    /// it); missing paths are skipped. Returns the number of objects marked.
    pub fn watch_root(&mut self, root: &Path, label: u64) -> Result<usize, FanotifyError> {
        let root_fd =
            open_path(libc::AT_FDCWD, root, libc::O_DIRECTORY).map_err(|source| FanotifyError::Open { path: root.into(), source })?;
        let mut targets = Vec::new();
        for p in &self.paths {
            let (dir, last) = match p.rsplit_once('/') {
                Some((d, l)) => (if d.is_empty() { "/" } else { d }, l),
                None => continue,
            };
            if !last.contains('*') {
                targets.push(p.clone());
                continue;
            }
            // Glob over the directory's entries, listed through its fd.
            let Ok(dfd) = open_in_root(root_fd.as_fd(), dir) else {
                continue;
            };
            let Ok(rd) = std::fs::read_dir(format!("/proc/self/fd/{}", dfd.as_raw_fd())) else {
                continue;
            };
            for ent in rd.flatten() {
                let name = ent.file_name().to_string_lossy().into_owned();
                if glob_match(last, &name) {
                    targets.push(format!("{}/{name}", dir.trim_end_matches('/')));
                }
            }
        }
        let mut added = 0;
        for path in targets {
            let fd = match open_in_root(root_fd.as_fd(), &path) {
                Ok(fd) => fd,
                Err(e) => {
                    if e.raw_os_error() != Some(libc::ENOENT) && e.raw_os_error() != Some(libc::ENOTDIR) {
                        tracing::debug!(root = %root.display(), path, error = %e, "sensitive path not watchable");
                    }
                    continue;
                }
            };
            let st = fstat(fd.as_raw_fd()).map_err(|source| FanotifyError::Open { path: path.clone().into(), source })?;
            let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            if !is_dir && st.st_mode & libc::S_IFMT != libc::S_IFREG {
                continue;
            }
            let key = (st.st_dev, st.st_ino);
            if self.objects.get(&key).is_some_and(|l| l.iter().any(|w| w.label == label)) {
                continue; // e.g. /var/run → /run: same inode, already marked.
            }
            if self.objects.len() >= MAX_WATCHED {
                return Err(FanotifyError::TooManyMarks(MAX_WATCHED));
            }
            let mask = if is_dir { DIR_MASK } else { FILE_MASK };
            let proc_path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
            if let Err(e) = fanotify_mark(self.fan.as_raw_fd(), libc::FAN_MARK_ADD, mask, &proc_path) {
                return Err(match e {
                    FanotifyError::Mark { mask, source, .. } => {
                        FanotifyError::Mark { path: root.join(path.trim_start_matches('/')), mask, source }
                    }
                    e => e,
                });
            }
            self.objects.entry(key).or_default().push(Watched { label, path: path.clone(), is_dir });
            if is_dir {
                self.dirs.push(DirMark { dev: key.0, ino: key.1, label, path });
            }
            self.roots.entry(label).or_insert_with(|| RootInfo { root: root.to_path_buf(), objects: Vec::new() }).objects.push(key);
            added += 1;
        }
        tracing::debug!(root = %root.display(), label, added, "sensitive-open marks added");
        Ok(added)
    }

    /// Forget `label` and remove its marks (where the root is still reachable;
    /// marks on a filesystem that is gone went with it). Returns how many
    /// objects were forgotten.
    pub fn unwatch(&mut self, label: u64) -> usize {
        let Some(info) = self.roots.remove(&label) else {
            return 0;
        };
        self.dirs.retain(|d| d.label != label);
        let root_fd = open_path(libc::AT_FDCWD, &info.root, libc::O_DIRECTORY).ok();
        let mut n = 0;
        for key in info.objects {
            let Some(list) = self.objects.get_mut(&key) else {
                continue;
            };
            let Some(i) = list.iter().position(|w| w.label == label) else {
                continue;
            };
            let w = list.remove(i);
            n += 1;
            if !list.is_empty() {
                continue; // Another root still wants this inode.
            }
            self.objects.remove(&key);
            let Some(rfd) = &root_fd else { continue };
            let Ok(fd) = open_in_root(rfd.as_fd(), &w.path) else {
                continue;
            };
            match fstat(fd.as_raw_fd()) {
                Ok(st) if (st.st_dev, st.st_ino) == key => {}
                _ => continue, // Replaced since; the old inode's mark dies with it.
            }
            let mask = if w.is_dir { DIR_MASK } else { FILE_MASK };
            let proc_path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
            if let Err(e) = fanotify_mark(self.fan.as_raw_fd(), libc::FAN_MARK_REMOVE, mask, &proc_path) {
                tracing::debug!(label, path = w.path, error = %e, "removing sensitive-open mark");
            }
        }
        n
    }

    /// Number of objects currently marked for `label`.
    pub fn watched(&self, label: u64) -> usize {
        self.roots.get(&label).map_or(0, |r| r.objects.len())
    }

    /// Drain queued opens into `out` without blocking; returns how many were
    /// appended.
    pub fn read_events<S: lancet_engine::batch::EventSink>(&mut self, out: &mut S) -> Result<usize, FanotifyError> {
        self.read_inner(&mut |_, e| *out.slot() = e)
    }

    /// Like [`read_events`](Self::read_events), with the label of the root the
    /// opened path was watched under. An inode watched under several labels
    /// yields one event per label.
    pub fn read_events_labeled(&mut self, out: &mut Vec<(u64, Event)>) -> Result<usize, FanotifyError> {
        self.read_inner(&mut |l, e| out.push((l, e)))
    }

    fn read_inner(&mut self, emit: &mut dyn FnMut(u64, Event)) -> Result<usize, FanotifyError> {
        let mut buf = std::mem::take(&mut self.buf);
        let mut added = 0;
        let (malformed, res) = super::drain(self.fan.as_raw_fd(), &mut buf, |ev, now| added += self.handle(ev, now, emit));
        self.stats.dropped += malformed;
        self.buf = buf;
        self.stats.events += added as u64;
        res.map(|()| added)
    }

    fn handle(&mut self, ev: &RawEvent<'_>, now: u64, emit: &mut dyn FnMut(u64, Event)) -> usize {
        // Take ownership first so the fd is closed on every path.
        let fd = (ev.fd >= 0).then(|| {
            // SAFETY: the kernel handed us this fd with the event; nobody else owns it.
            unsafe { OwnedFd::from_raw_fd(ev.fd) }
        });
        if ev.mask & libc::FAN_Q_OVERFLOW != 0 {
            self.stats.overflows += 1;
            tracing::warn!("fanotify queue overflow: sensitive-open events were lost");
            return 0;
        }
        if ev.pid == self.own_pid || ev.mask & libc::FAN_OPEN == 0 {
            self.stats.dropped += 1;
            return 0;
        }
        let Some(fd) = fd else {
            self.stats.resolve_failures += 1;
            return 0;
        };
        let st = match fstat(fd.as_raw_fd()) {
            Ok(st) => st,
            Err(_) => {
                self.stats.resolve_failures += 1;
                return 0;
            }
        };
        let host_path = fd_path(fd.as_raw_fd()).unwrap_or_default();
        let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        let pid = ev.pid.max(0) as u32;
        let key = (st.st_dev, st.st_ino);
        let mut n = 0;
        if let Some(list) = self.objects.get(&key) {
            for w in list {
                let host = self.host_path(w.label, &w.path).unwrap_or_else(|| host_path.clone());
                emit(w.label, open_event(now, pid, w.path.clone(), host, is_dir));
                n += 1;
            }
            return n;
        }
        // A child of a marked directory: find the directory.
        let (parent, name) = match host_path.rsplit_once('/') {
            Some((p, n)) => (if p.is_empty() { "/" } else { p }, n),
            None => ("", host_path.as_str()),
        };
        let parent_key = std::fs::metadata(parent).ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino())
        });
        let mut matched: Vec<&DirMark> = self.dirs.iter().filter(|d| d.dev == st.st_dev && parent_key == Some((d.dev, d.ino))).collect();
        if matched.is_empty() {
            // Parent not reachable from our mount namespace: match by suffix.
            matched = self.dirs.iter().filter(|d| d.dev == st.st_dev && ends_with_path(parent, &d.path)).collect();
        }
        if matched.is_empty() {
            self.stats.resolve_failures += 1;
            emit(0, open_event(now, pid, host_path.clone(), host_path, is_dir));
            return 1;
        }
        for d in matched {
            let path = format!("{}/{name}", d.path.trim_end_matches('/'));
            let host = self.host_path(d.label, &path).unwrap_or_else(|| host_path.clone());
            emit(d.label, open_event(now, pid, path, host, is_dir));
            n += 1;
        }
        n
    }

    /// `<root>/<path>`: reachable from the host while the root exists (the
    /// event fd's own path is often mount-relative for a container, e.g. a
    /// bare `/etc/shadow`, since the overlay is mounted in another namespace).
    fn host_path(&self, label: u64, path: &str) -> Option<String> {
        let root = &self.roots.get(&label)?.root;
        let r = root.to_string_lossy();
        Some(format!("{}{path}", r.trim_end_matches('/')))
    }
}

impl AsFd for SensitiveOpenWatcher {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fan.as_fd()
    }
}

fn open_event(now: u64, pid: u32, path: String, host_path: String, is_dir: bool) -> Event {
    Event {
        time_ns: now,
        cgroup_id: 0,
        process: ProcessRef { pid, ..ProcessRef::default() },
        kind: EventKind::File(FileEvent { op: FileOp::Open, path, old_path: None, host_path, is_dir }),
    }
}

/// `path` ends with the absolute path `suffix`, on a component boundary.
fn ends_with_path(path: &str, suffix: &str) -> bool {
    let suffix = suffix.trim_end_matches('/');
    if suffix.is_empty() {
        return true;
    }
    path.ends_with(suffix) && {
        let rest = &path[..path.len() - suffix.len()];
        rest.is_empty() || rest.ends_with('/') || suffix.starts_with('/')
    }
}

/// Minimal glob: `*` matches any run of characters.
fn glob_match(pat: &str, s: &str) -> bool {
    let parts: Vec<&str> = pat.split('*').collect();
    if parts.len() == 1 {
        return pat == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || s.len() < first.len() + last.len() || !s.ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    #[test]
    fn glob_and_suffix() {
        assert!(glob_match("ssh_host_*_key", "ssh_host_ed25519_key"));
        assert!(!glob_match("ssh_host_*_key", "ssh_host_ed25519_key.pub"));
        assert!(glob_match("a", "a"));
        assert!(!glob_match("a*b*c", "acb"));
        assert!(glob_match("a*b*c", "a1b2c"));
        assert!(ends_with_path("/var/lib/x/merged/etc/sudoers.d", "/etc/sudoers.d"));
        assert!(ends_with_path("/etc/sudoers.d", "/etc/sudoers.d"));
        assert!(!ends_with_path("/etc/sudoers.dx", "/etc/sudoers.d"));
    }

    pub(crate) fn collect_opens(
        w: &mut SensitiveOpenWatcher,
        timeout: Duration,
        mut done: impl FnMut(&[(u64, Event)]) -> bool,
    ) -> Vec<(u64, Event)> {
        let start = Instant::now();
        let mut all = Vec::new();
        loop {
            w.read_events_labeled(&mut all).expect("read_events");
            if done(&all) || start.elapsed() > timeout {
                return all;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn file(e: &Event) -> &FileEvent {
        match &e.kind {
            EventKind::File(f) => f,
            k => panic!("not a file event: {k:?}"),
        }
    }

    #[test]
    fn root_sensitive_open_in_temp_root() {
        if crate::fanotify::skip_unless_fanotify(libc::FAN_CLASS_NOTIF) {
            return;
        }
        let root = tempfile::Builder::new().prefix("lancet-open").tempdir_in("/var/tmp").unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("etc/sudoers.d")).unwrap();
        std::fs::create_dir_all(r.join("etc/ssh")).unwrap();
        std::fs::write(r.join("etc/shadow"), "root:*:1::::::\n").unwrap();
        std::fs::write(r.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        std::fs::write(r.join("etc/sudoers.d/admins"), "x\n").unwrap();
        std::fs::write(r.join("etc/ssh/ssh_host_ed25519_key"), "k\n").unwrap();
        std::fs::write(r.join("etc/ssh/ssh_host_ed25519_key.pub"), "k\n").unwrap();
        // A symlink escaping the root must resolve inside it (→ missing), not
        // to the host's /etc/gshadow.
        std::os::unix::fs::symlink("/../../../../etc/gshadow", r.join("etc/gshadow")).unwrap();

        let mut w = SensitiveOpenWatcher::new().unwrap();
        let n = w.watch_root(r, 7).unwrap();
        // shadow, sudoers.d, ssh_host_ed25519_key.
        assert_eq!(n, 3, "marked objects");
        assert_eq!(w.watched(7), 3);
        // Our own opens are dropped.
        let _ = std::fs::read(r.join("etc/shadow")).unwrap();

        let run = |args: &[&Path]| {
            let mut c = Command::new("cat").args(args).stdout(std::process::Stdio::null()).spawn().unwrap();
            let pid = c.id();
            assert!(c.wait().unwrap().success());
            pid
        };
        let pid_shadow = run(&[&r.join("etc/shadow")]);
        let pid_passwd = run(&[&r.join("etc/passwd")]);
        let pid_child = run(&[&r.join("etc/sudoers.d/admins"), &r.join("etc/ssh/ssh_host_ed25519_key.pub")]);
        let pid_key = run(&[&r.join("etc/ssh/ssh_host_ed25519_key")]);
        let evs = collect_opens(&mut w, Duration::from_secs(3), |evs| evs.iter().any(|(_, e)| e.process.pid == pid_key));
        for (l, e) in &evs {
            eprintln!("label {l} pid {} {:?}", e.process.pid, file(e));
        }
        let find = |pid: u32, path: &str| evs.iter().find(|(_, e)| e.process.pid == pid && file(e).path == path);
        let (label, e) = find(pid_shadow, "/etc/shadow").expect("open of /etc/shadow reported");
        assert_eq!(*label, 7);
        assert_eq!(file(e).op, FileOp::Open);
        assert_eq!(file(e).host_path, r.join("etc/shadow").to_str().unwrap());
        assert!(find(pid_child, "/etc/sudoers.d/admins").is_some(), "child of a marked dir");
        assert!(find(pid_key, "/etc/ssh/ssh_host_ed25519_key").is_some(), "globbed host key");
        assert!(!evs.iter().any(|(_, e)| e.process.pid == pid_passwd), "passwd is not sensitive");
        assert!(!evs.iter().any(|(_, e)| file(e).path.ends_with(".pub")));
        assert!(!evs.iter().any(|(_, e)| e.process.pid == std::process::id()), "own opens dropped");

        // After unwatch, opens are no longer reported.
        assert_eq!(w.unwatch(7), 3);
        assert_eq!(w.watched(7), 0);
        let mut rest = Vec::new();
        w.read_events(&mut rest).unwrap();
        let pid2 = run(&[&r.join("etc/shadow")]);
        std::thread::sleep(Duration::from_millis(100));
        rest.clear();
        w.read_events(&mut rest).unwrap();
        assert!(!rest.iter().any(|e| e.process.pid == pid2), "unwatched root still reported: {rest:?}");
    }
}
