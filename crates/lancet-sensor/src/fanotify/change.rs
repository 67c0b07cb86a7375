//! [`FileChangeWatcher`]: create / modify / delete / rename / chmod anywhere on
//! whole filesystems, reported with directory file handles + names
//! (`FAN_REPORT_DFID_NAME`) and resolved to host paths.

use super::dir_cache::DirCache;
use super::mounts::{under, Mounts, Resolved};
use super::parse::{FidRecord, RawEvent};
use super::READ_BUF_LEN;
use super::{fanotify_init, fanotify_mark, now_ns, FanotifyError, FanotifyStats};
use lancet_engine::batch::EventSink;
use lancet_engine::event::FileOp;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Directory-handle → path cache size.
const DIR_CACHE_CAP: usize = 4096;

/// Watches whole filesystems for file changes.
///
/// # What it costs
/// A `FAN_MARK_FILESYSTEM` mark makes **every** create, delete, rename,
/// attribute change and close-after-write on that filesystem, by any process on
/// the host, allocate and queue an event for us (a few hundred bytes each until
/// read), and every event costs us a `read` share plus, for a directory not in
/// the cache, an `open_by_handle_at` + `readlink` + `close`. Reads and opens
/// without write are not reported and cost the writers nothing extra. Mark the
/// filesystem that holds the containers' overlay upper directories (e.g. the one
/// under `/var/lib/containers/storage`); overlayfs itself refuses filesystem
/// marks (EOPNOTSUPP). If that filesystem is also the host root, host activity
/// (package managers, builds, logs) is queued too and dropped here by the path
/// filter; when it outruns us the queue overflows (counted in
/// [`FanotifyStats::overflows`]).
///
/// # Ops
/// * `Create`: `FAN_CREATE` (files, dirs with `is_dir`, symlinks, nodes).
/// * `Modify`: `FAN_CLOSE_WRITE`: one event per write session (open for write
///   … close), not per `write(2)`; a file opened for write and closed without
///   writing is reported too. A new file written by a shell redirect gives
///   `Create` then `Modify`.
/// * `Delete`: `FAN_DELETE`.
/// * `Rename`: `FAN_RENAME` (one event with old and new dir+name); on kernels
///   older than 5.17 `FAN_MOVED_FROM`/`FAN_MOVED_TO` paired by order and pid.
/// * `Chmod`: `FAN_ATTRIB`. fanotify does not say which attribute changed, so
///   chown, utimes (`touch` of an existing file), setxattr and link-count
///   changes are reported as `Chmod` too; a consumer that needs certainty must
///   stat the file.
///
/// Events on a directory itself (chmod of a dir) come with the directory's own
/// handle and the name `"."`, and are reported with the directory's path.
///
/// Events whose directory handle no longer resolves (directory deleted before
/// we read the event) are still emitted, with path `"?/<name>"` (or `"?"`), and
/// counted in `resolve_failures`; the path filter cannot judge them, so they
/// pass it (see [`FileChangeWatcher::set_emit_unresolved`]).
///
/// With a path filter, a rename from outside the filtered trees into them is
/// reported as `Create` (this is how overlayfs copy-up looks: the copy is built
/// in the work dir and renamed into the upper dir), and a rename out of them as
/// `Delete`.
pub struct FileChangeWatcher {
    fan: OwnedFd,
    rename_mode: RenameMode,
    filesystems: Vec<Filesystem>,
    cache: DirCache,
    /// Prefixes as bytes, without trailing '/'. Empty: no filtering.
    filter: Vec<Vec<u8>>,
    buf: Vec<u8>,
    /// Scratch for building aligned `struct file_handle`s.
    handle_buf: Vec<u32>,
    /// Scratch for building cache keys.
    key_buf: Vec<u8>,
    /// Scratch for the paths of the event being handled.
    path_buf: String,
    old_buf: String,
    own_pid: i32,
    emit_unresolved: bool,
    pending_from: Option<PendingMove>,
    /// (pid, position) of the execs seen in the last read: see
    /// [`FileChangeWatcher::exec_marks`].
    exec_marks: Vec<(u32, usize)>,
    stats: FanotifyStats,
}

/// Exec marks kept per read; past it a read's later execs are not marked
/// (their processes' next writes are handled in stream order).
const MAX_EXEC_MARKS: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RenameMode {
    FanRename,
    MovedPair,
}

struct Filesystem {
    fsid: [i32; 2],
    /// The mounts of it that watched paths lie on, to resolve handles
    /// through (see [`Mounts`]).
    mounts: Mounts,
    path: PathBuf,
}

struct PendingMove {
    pid: i32,
    path: String,
    is_dir: bool,
}

/// Where a directory lies relative to the path filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    /// At or under a prefix: everything in it passes.
    Under,
    /// A proper ancestor of a prefix: only the entry that is the prefix passes.
    Ancestor,
    /// Elsewhere: nothing passes.
    Outside,
}

const MARK_MASK_BASE: u64 =
    libc::FAN_CREATE | libc::FAN_DELETE | libc::FAN_ATTRIB | libc::FAN_CLOSE_WRITE | libc::FAN_OPEN_EXEC | libc::FAN_ONDIR;

impl FileChangeWatcher {
    /// Create the fanotify group (`FAN_CLASS_NOTIF | FAN_REPORT_DFID_NAME`).
    /// Needs CAP_SYS_ADMIN (init) and CAP_DAC_READ_SEARCH
    /// (`open_by_handle_at`).
    ///
    /// Not `FAN_REPORT_FID`: with the object's own handle in each record, a
    /// file's `FAN_CLOSE_WRITE` (handle: the file) differs from its
    /// `FAN_CREATE`/`FAN_DELETE` (handle: the directory), so the kernel cannot
    /// merge them. With the directory and name alone, the events of one name
    /// by one process still queued are one record: a file created, written
    /// and deleted is one record of 60 bytes instead of three of 200 bytes
    /// in all (the third, the link-count `FAN_ATTRIB` of the unlinked file,
    /// carried no name and was only counted; without `FAN_REPORT_FID` the
    /// kernel does not queue it). Measured on kernel 6.18. A merged record is
    /// reported in the order create, write, chmod, delete.
    pub fn new() -> Result<Self, FanotifyError> {
        // An unlimited queue: a burst the agent cannot keep up with waits in
        // the kernel instead of being dropped unannounced-by-count (an
        // overflow says only that something was lost, not how much). The
        // queue's memory is charged to the agent's cgroup; past its limit
        // the kernel drops and queues an overflow, which is counted.
        let flags = libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK | libc::FAN_REPORT_DFID_NAME | libc::FAN_UNLIMITED_QUEUE;
        let fan = fanotify_init(flags, (libc::O_RDONLY | libc::O_CLOEXEC) as u32)?;
        Ok(FileChangeWatcher {
            fan,
            rename_mode: RenameMode::FanRename,
            filesystems: Vec::new(),
            cache: DirCache::new(DIR_CACHE_CAP),
            filter: Vec::new(),
            buf: vec![0; READ_BUF_LEN],
            handle_buf: vec![0; (8 + libc::MAX_HANDLE_SZ as usize) / 4],
            key_buf: Vec::with_capacity(16 + libc::MAX_HANDLE_SZ as usize),
            path_buf: String::with_capacity(256),
            old_buf: String::with_capacity(256),
            own_pid: std::process::id() as i32,
            emit_unresolved: true,
            pending_from: None,
            exec_marks: Vec::new(),
            stats: FanotifyStats::default(),
        })
    }

    /// The fanotify fd, to poll for readability.
    pub fn fd(&self) -> RawFd {
        self.fan.as_raw_fd()
    }

    pub fn stats(&self) -> FanotifyStats {
        self.stats
    }

    /// Whether renames come as single `FAN_RENAME` events (kernel ≥ 5.17) rather
    /// than paired `FAN_MOVED_FROM`/`FAN_MOVED_TO`.
    pub fn uses_fan_rename(&self) -> bool {
        self.rename_mode == RenameMode::FanRename
    }

    /// Put a `FAN_MARK_FILESYSTEM` mark on the filesystem holding `path`, and
    /// keep an fd on it to resolve file handles. The filesystem is marked
    /// once; a path on another mount of it (a bind mount: each runtime's
    /// storage may be one) is kept as a further way to resolve handles.
    pub fn add_filesystem(&mut self, path: &Path) -> Result<(), FanotifyError> {
        let mount_fd = open_rdonly(path)?;
        let fsid = fsid_of(mount_fd.as_raw_fd()).map_err(|source| FanotifyError::Open { path: path.into(), source })?;
        if let Some(fs) = self.filesystems.iter_mut().find(|f| f.fsid == fsid) {
            if fs.mounts.add(mount_fd) {
                // Directories placed Outside may resolve now.
                self.cache.clear();
            }
            return Ok(());
        }
        let flags = libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM;
        if self.rename_mode == RenameMode::FanRename {
            match fanotify_mark(self.fan.as_raw_fd(), flags, MARK_MASK_BASE | libc::FAN_RENAME, path) {
                Ok(()) => {}
                Err(FanotifyError::Mark { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) && self.filesystems.is_empty() => {
                    tracing::info!("FAN_RENAME not supported, pairing FAN_MOVED_FROM/FAN_MOVED_TO");
                    self.rename_mode = RenameMode::MovedPair;
                }
                Err(e) => return Err(e),
            }
        }
        if self.rename_mode == RenameMode::MovedPair {
            fanotify_mark(self.fan.as_raw_fd(), flags, MARK_MASK_BASE | libc::FAN_MOVE, path)?;
        }
        tracing::debug!(path = %path.display(), ?fsid, "fanotify filesystem mark added");
        self.filesystems.push(Filesystem { fsid, mounts: Mounts::new(mount_fd), path: path.to_path_buf() });
        Ok(())
    }

    /// Remove the filesystem mark for the filesystem holding `path`.
    pub fn remove_filesystem(&mut self, path: &Path) -> Result<(), FanotifyError> {
        let fd = open_rdonly(path)?;
        let fsid = fsid_of(fd.as_raw_fd()).map_err(|source| FanotifyError::Open { path: path.into(), source })?;
        let Some(i) = self.filesystems.iter().position(|f| f.fsid == fsid) else {
            return Ok(());
        };
        let mask = MARK_MASK_BASE | if self.rename_mode == RenameMode::FanRename { libc::FAN_RENAME } else { libc::FAN_MOVE };
        let fs = self.filesystems.remove(i);
        fanotify_mark(self.fan.as_raw_fd(), libc::FAN_MARK_REMOVE | libc::FAN_MARK_FILESYSTEM, mask, &fs.path)?;
        self.cache.clear();
        Ok(())
    }

    /// Only emit events whose resolved host path lies under one of `prefixes`
    /// (an empty list emits everything). Compared component-wise as strings,
    /// so pass canonical paths.
    pub fn set_path_filter(&mut self, prefixes: Vec<PathBuf>) {
        self.filter = prefixes
            .iter()
            .map(|p| {
                let mut b = p.as_os_str().as_bytes().to_vec();
                while b.len() > 1 && b.last() == Some(&b'/') {
                    b.pop();
                }
                b
            })
            .collect();
        // Places are computed against the filter at insert time.
        self.cache.clear();
    }

    /// Whether events whose directory no longer resolves are emitted (as
    /// `"?/<name>"`, default) or only counted. They bypass the path filter, so
    /// on a busy shared filesystem (runtimes create and delete short-lived
    /// directories all the time) turning this off cuts noise, at the price of
    /// missing changes in directories a container deletes right away.
    pub fn set_emit_unresolved(&mut self, emit: bool) {
        self.emit_unresolved = emit;
    }

    /// Drain queued events into `out` without blocking; returns how many were
    /// appended. Into an [`lancet_engine::batch::EventBatch`] the events are
    /// written in place: a steady stream allocates nothing.
    pub fn read_events<S: EventSink>(&mut self, out: &mut S) -> Result<usize, FanotifyError> {
        let before = out.count();
        self.exec_marks.clear();
        let mut buf = std::mem::take(&mut self.buf);
        let (malformed, res) = super::drain(self.fan.as_raw_fd(), &mut buf, |ev, now| self.handle(ev, now, out));
        self.stats.dropped += malformed;
        self.buf = buf;
        self.flush_pending(now_ns(), out);
        let added = out.count() - before;
        self.stats.events += added as u64;
        res.map(|()| added)
    }

    /// Where, in the last [`read_events`](Self::read_events), a process
    /// started an exec (`FAN_OPEN_EXEC`: `execve` opened its program, or
    /// the program's loader or interpreter): (pid, how many events `out`
    /// held then). The queue orders a process's writes and its exec
    /// exactly, which the probes' exec records, read from another buffer,
    /// cannot (see `lancet_engine::exec_order`). An exec merged by the
    /// kernel into an earlier record of the same name and process (a file
    /// written and run by one process) is marked after that record's events.
    pub fn exec_marks(&self) -> &[(u32, usize)] {
        &self.exec_marks
    }

    pub(super) fn handle<S: EventSink>(&mut self, ev: &RawEvent<'_>, now: u64, out: &mut S) {
        // Paths are built in two scratch strings kept across events.
        let (mut path, mut old) = (std::mem::take(&mut self.path_buf), std::mem::take(&mut self.old_buf));
        self.handle_with(ev, now, out, &mut path, &mut old);
        (self.path_buf, self.old_buf) = (path, old);
        if ev.mask & libc::FAN_OPEN_EXEC != 0 && ev.pid > 0 && ev.pid != self.own_pid && self.exec_marks.len() < MAX_EXEC_MARKS {
            self.exec_marks.push((ev.pid as u32, out.count()));
        }
    }

    fn handle_with<S: EventSink>(&mut self, ev: &RawEvent<'_>, now: u64, out: &mut S, path: &mut String, old: &mut String) {
        if ev.fd >= 0 {
            // Not expected in fid mode; never leak it.
            // SAFETY: the kernel handed us this fd with the event; nobody else owns it.
            drop(unsafe { OwnedFd::from_raw_fd(ev.fd) });
        }
        if ev.mask & libc::FAN_Q_OVERFLOW != 0 {
            self.stats.overflows += 1;
            tracing::warn!("fanotify queue overflow: file-change events were lost");
            return;
        }
        if ev.pid == self.own_pid {
            self.stats.dropped += 1;
            return;
        }
        let pid = ev.pid.max(0) as u32;
        let is_dir = ev.mask & libc::FAN_ONDIR != 0;
        if ev.mask & libc::FAN_RENAME != 0 {
            let old_ok = match &ev.old_dfid_name {
                Some(r) => self.resolve(r, old),
                None => {
                    unknown_path(None, old);
                    Place::Under
                }
            };
            let new_ok = match &ev.new_dfid_name {
                Some(r) => self.resolve(r, path),
                None => {
                    unknown_path(None, path);
                    Place::Under
                }
            };
            // Directory renames move every cached path below them.
            if is_dir {
                self.cache.clear();
            }
            let unresolved = old.starts_with('?') || path.starts_with('?');
            match (self.passes(old_ok, old), self.passes(new_ok, path)) {
                (false, false) => self.stats.dropped += 1,
                _ if unresolved && !self.emit_unresolved => self.stats.dropped += 1,
                (true, true) => out.slot().set_file(now, pid, FileOp::Rename, path, Some(old), is_dir),
                // Moved in from outside the filter (e.g. overlayfs copy-up
                // renames from its work dir into the upper dir): a creation.
                (false, true) => out.slot().set_file(now, pid, FileOp::Create, path, None, is_dir),
                // Moved out of the filtered tree: gone from it.
                (true, false) => out.slot().set_file(now, pid, FileOp::Delete, old, None, is_dir),
            }
        }
        let ops = ev.mask
            & (libc::FAN_CREATE | libc::FAN_CLOSE_WRITE | libc::FAN_ATTRIB | libc::FAN_MOVED_FROM | libc::FAN_MOVED_TO | libc::FAN_DELETE);
        if ops == 0 {
            return;
        }
        let Some(dir) = &ev.dfid_name else {
            // Every event of this group names its directory; a record
            // without one is malformed.
            self.stats.resolve_failures += 1;
            self.stats.dropped += 1;
            return;
        };
        let place = self.resolve(dir, path);
        if !self.passes(place, path) || (!self.emit_unresolved && path.starts_with('?')) {
            self.stats.dropped += 1;
            return;
        }
        if ev.mask & libc::FAN_CREATE != 0 {
            out.slot().set_file(now, pid, FileOp::Create, path, None, is_dir);
        }
        if ev.mask & libc::FAN_CLOSE_WRITE != 0 && !is_dir {
            out.slot().set_file(now, pid, FileOp::Modify, path, None, is_dir);
        }
        if ev.mask & libc::FAN_ATTRIB != 0 {
            out.slot().set_file(now, pid, FileOp::Chmod, path, None, is_dir);
        }
        if ev.mask & libc::FAN_MOVED_FROM != 0 {
            self.flush_pending(now, out);
            self.pending_from = Some(PendingMove { pid: ev.pid, path: path.clone(), is_dir });
        }
        if ev.mask & libc::FAN_MOVED_TO != 0 {
            let from = match self.pending_from.take() {
                Some(p) if p.pid == ev.pid => Some(p.path),
                other => {
                    self.pending_from = other;
                    self.flush_pending(now, out);
                    None
                }
            };
            if is_dir {
                self.cache.clear();
            }
            out.slot().set_file(now, pid, FileOp::Rename, path, from.as_deref(), is_dir);
        }
        if ev.mask & libc::FAN_DELETE != 0 {
            if is_dir {
                self.cache.clear();
            }
            out.slot().set_file(now, pid, FileOp::Delete, path, None, is_dir);
        }
    }

    /// A `FAN_MOVED_FROM` whose `FAN_MOVED_TO` did not follow (moved off the
    /// watched filesystem or out of the batch): reported as a rename with the
    /// old path only.
    fn flush_pending<S: EventSink>(&mut self, now: u64, out: &mut S) {
        if let Some(p) = self.pending_from.take() {
            out.slot().set_file(now, p.pid.max(0) as u32, FileOp::Rename, &p.path, Some(&p.path), p.is_dir);
        }
    }

    fn passes(&self, place: Place, path: &str) -> bool {
        match place {
            Place::Under => true,
            Place::Outside => false,
            Place::Ancestor => self.filter.iter().any(|p| under(path.as_bytes(), p)),
        }
    }

    /// Resolve a dir handle + name to a host path (written into `into`), and
    /// place the directory against the filter. Unresolvable → `"?/<name>"`,
    /// placed `Under`.
    fn resolve(&mut self, rec: &FidRecord<'_>, into: &mut String) -> Place {
        let name = rec.name.unwrap_or(b"");
        self.key_buf.clear();
        self.key_buf.extend_from_slice(&rec.fsid[0].to_ne_bytes());
        self.key_buf.extend_from_slice(&rec.fsid[1].to_ne_bytes());
        self.key_buf.extend_from_slice(&rec.handle_type.to_ne_bytes());
        self.key_buf.extend_from_slice(rec.handle);
        if let Some((d, place)) = self.cache.get(&self.key_buf) {
            join_into(into, d, name);
            return place;
        }
        match self.open_handle(rec) {
            Ok(Resolved::Path(d, deleted)) => {
                let place = self.place(d.as_bytes());
                join_into(into, &d, name);
                if !deleted {
                    self.cache.insert(self.key_buf.as_slice().into(), d, place);
                }
                place
            }
            // On no mount a watched directory lies on: outside them all.
            Ok(Resolved::Outside) => {
                self.cache.insert(self.key_buf.as_slice().into(), String::new(), Place::Outside);
                join_into(into, "", name);
                Place::Outside
            }
            Err(e) => {
                self.stats.resolve_failures += 1;
                tracing::trace!(error = %e, "fanotify dir handle did not resolve");
                unknown_path(Some(name), into);
                Place::Under
            }
        }
    }

    fn place(&self, dir: &[u8]) -> Place {
        place_in(&self.filter, dir)
    }

    /// `open_by_handle_at(O_PATH)` + readlink, through the mounts of the
    /// event's filesystem (see [`Mounts::resolve`]); a path the filter
    /// takes is preferred.
    fn open_handle(&mut self, rec: &FidRecord<'_>) -> io::Result<Resolved> {
        if rec.handle.len() > libc::MAX_HANDLE_SZ as usize {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // Lay out `struct file_handle` in the u32-aligned scratch buffer.
        self.handle_buf[0] = rec.handle.len() as u32;
        self.handle_buf[1] = rec.handle_type as u32;
        for (word, chunk) in self.handle_buf[2..].iter_mut().zip(rec.handle.chunks(4)) {
            let mut b = [0u8; 4];
            b[..chunk.len()].copy_from_slice(chunk);
            *word = u32::from_ne_bytes(b);
        }
        let fs = self
            .filesystems
            .iter()
            .find(|f| f.fsid == rec.fsid)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "event from an unmarked filesystem"))?;
        let filter = &self.filter;
        fs.mounts.resolve(&mut self.handle_buf, |p| place_in(filter, p.as_bytes()) != Place::Outside)
    }
}

#[cfg(test)]
impl FileChangeWatcher {
    /// Tests: the directory of this handle known as `dir`, as after its
    /// first event (the path filter places it).
    pub(super) fn remember_dir(&mut self, fsid: [i32; 2], handle_type: i32, handle: &[u8], dir: &str) {
        let key: Vec<u8> = [&fsid[0].to_ne_bytes()[..], &fsid[1].to_ne_bytes(), &handle_type.to_ne_bytes(), handle].concat();
        let place = self.place(dir.as_bytes());
        self.cache.insert(key.into(), dir.to_string(), place);
    }
}

impl AsFd for FileChangeWatcher {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fan.as_fd()
    }
}

/// Where a directory lies relative to the filter's prefixes (an empty
/// filter takes everything).
fn place_in(filter: &[Vec<u8>], dir: &[u8]) -> Place {
    if filter.is_empty() {
        return Place::Under;
    }
    let mut place = Place::Outside;
    for p in filter {
        if under(dir, p) {
            return Place::Under;
        }
        if under(p, dir) {
            place = Place::Ancestor;
        }
    }
    place
}

/// `dir/name` into `into` (`dir` alone for no name or `.`).
fn join_into(into: &mut String, dir: &str, name: &[u8]) {
    into.clear();
    into.push_str(dir);
    if name.is_empty() || name == b"." {
        return;
    }
    if !dir.ends_with('/') {
        into.push('/');
    }
    push_lossy(into, name);
}

fn push_lossy(into: &mut String, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => into.push_str(s),
        Err(_) => into.push_str(&String::from_utf8_lossy(bytes)),
    }
}

/// `"?/<name>"` (or `"?"`) into `into`: a path whose directory is unknown.
fn unknown_path(name: Option<&[u8]>, into: &mut String) {
    into.clear();
    into.push('?');
    if let Some(n) = name.filter(|n| !n.is_empty() && *n != b".") {
        into.push('/');
        push_lossy(into, n);
    }
}

fn open_rdonly(path: &Path) -> Result<OwnedFd, FanotifyError> {
    let c = super::cstring(path)?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY) };
    if fd < 0 {
        return Err(FanotifyError::Open { path: path.into(), source: io::Error::last_os_error() });
    }
    // SAFETY: `fd` was just returned to us and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The filesystem id fanotify reports in fid records (`statfs.f_fsid`).
fn fsid_of(fd: RawFd) -> io::Result<[i32; 2]> {
    // SAFETY: all-zero bytes are a valid `struct statfs` (plain integers).
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer for the duration of the call.
    if unsafe { libc::fstatfs(fd, &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // `fsid_t` keeps its two ints private; it is exactly `int __val[2]`.
    const _: () = assert!(std::mem::size_of::<libc::fsid_t>() == 8);
    // SAFETY: `f_fsid` is an initialised 8-byte `fsid_t` (`int __val[2]`);
    // reading it unaligned as `[i32; 2]` reads exactly those bytes.
    Ok(unsafe { std::ptr::addr_of!(st.f_fsid).cast::<[i32; 2]>().read_unaligned() })
}

#[cfg(test)]
mod tests;
