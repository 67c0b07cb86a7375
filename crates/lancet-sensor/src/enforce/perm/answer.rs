//! Answering: the one thread that reads permission events, asks the
//! decider, answers each event (always, whatever fails) and remembers
//! allowed files with ignore marks.

use super::marks::{mark_fd, normalise, same_file};
use super::{
    DevInfo, FailMode, Ignored, MarkScope, PermDecision, PermGroup, PermKind, PermRequest, MAX_REMEMBERED, PATH_MAX, POLL_MS, READ_BATCH,
};
use crate::fanotify::parse::{self, RawEvent};
use crate::fanotify::syscall::{write_intent, PathBuf32};
use crate::fanotify::{read_some, FanotifyError};
use crate::sys::{fstat, mount_id};
use lancet_engine::bytes::u32_ne;
use std::io;
use std::os::fd::AsFd;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Instant;

impl PermGroup {
    /// Reads and answers permission events until `stop` is set (checked at
    /// least every 100 ms). Returns an error only when the group itself fails
    /// (e.g. a bad fd); transient read errors are counted and retried. Events
    /// still queued when it returns wait for the next `run`, or are allowed by
    /// the kernel when the last `PermGroup` is dropped.
    ///
    /// No allocation per event: one read buffer and one path buffer are
    /// reused (remembering an inode records its path).
    pub fn run<F>(&self, stop: &AtomicBool, decider: &mut F) -> Result<(), FanotifyError>
    where
        F: FnMut(&PermRequest<'_>) -> PermDecision,
    {
        let mut buf = vec![0u8; READ_BATCH * parse::METADATA_LEN];
        let mut scratch = Scratch { link: vec![0; PATH_MAX + 1], norm: String::with_capacity(PATH_MAX), labels: Vec::with_capacity(4) };
        let fan = self.fd();
        while !stop.load(Relaxed) {
            let mut pfd = libc::pollfd { fd: fan, events: libc::POLLIN, revents: 0 };
            // SAFETY: `pfd` is one valid pollfd, exclusively borrowed for the call.
            let r = unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
            if r <= 0 {
                continue; // timeout or EINTR
            }
            let n = match read_some(fan, &mut buf) {
                Ok(n) => n,
                Err(FanotifyError::Read(e))
                    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOENT)) =>
                {
                    // The kernel denied the event it could not open an fd for.
                    self.inner.c.errors.fetch_add(1, Relaxed);
                    tracing::warn!(error = %e, "reading permission events");
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.handle_buffer(&buf[..n], decider, &mut scratch);
        }
        Ok(())
    }

    pub(super) fn handle_buffer<F>(&self, buf: &[u8], decider: &mut F, scratch: &mut Scratch)
    where
        F: FnMut(&PermRequest<'_>) -> PermDecision,
    {
        let mut off = 0;
        let mut events = parse::events(buf);
        while let Some(ev) = events.next_event() {
            match ev {
                Ok(ev) => {
                    off += u32_ne(buf, off).unwrap_or(0) as usize;
                    self.handle_event(ev, decider, scratch);
                }
                Err(e) => {
                    // Cannot locate events from here on. This group never
                    // gets info records, so each event is exactly one
                    // metadata struct: answer every fd that is there.
                    self.inner.c.errors.fetch_add(1, Relaxed);
                    tracing::error!(error = %e, "malformed permission event buffer; answering with the fail mode");
                    let mut at = off;
                    while at + parse::METADATA_LEN <= buf.len() {
                        if let Some(fd) = u32_ne(buf, at + 16).map(|v| v as i32).filter(|&fd| fd >= 0) {
                            // SAFETY: the kernel put this fd in the event
                            // record for us; nobody else owns it.
                            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                            self.inner.c.events.fetch_add(1, Relaxed);
                            self.inner.c.fail.fetch_add(1, Relaxed);
                            self.respond(fd.as_raw_fd(), self.fail_allow());
                        }
                        at += parse::METADATA_LEN;
                    }
                    break;
                }
            }
        }
    }

    pub(super) fn fail_allow(&self) -> bool {
        self.inner.cfg.fail_mode == FailMode::Allow
    }

    pub(super) fn handle_event<F>(&self, ev: &RawEvent<'_>, decider: &mut F, scratch: &mut Scratch)
    where
        F: FnMut(&PermRequest<'_>) -> PermDecision,
    {
        let t0 = Instant::now();
        let c = &self.inner.c;
        if ev.mask & libc::FAN_Q_OVERFLOW != 0 {
            c.overflows.fetch_add(1, Relaxed);
            tracing::warn!("fanotify permission queue overflow");
            return;
        }
        if ev.fd < 0 {
            c.errors.fetch_add(1, Relaxed);
            return; // nothing to answer
        }
        // SAFETY: the kernel handed us this fd with the event; nobody else
        // owns it. It is closed after the response is written.
        let fd = unsafe { OwnedFd::from_raw_fd(ev.fd) };
        c.events.fetch_add(1, Relaxed);
        let outcome = catch_unwind(AssertUnwindSafe(|| self.decide(ev, fd.as_fd(), decider, scratch)));
        let allow = match outcome {
            Ok(Ok(allow)) => allow,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, pid = ev.pid, "permission event not resolvable; answering with the fail mode");
                c.fail.fetch_add(1, Relaxed);
                self.fail_allow()
            }
            Err(_) => {
                tracing::error!(pid = ev.pid, "permission decider panicked; answering with the fail mode");
                c.fail.fetch_add(1, Relaxed);
                self.fail_allow()
            }
        };
        self.inner.hist.record(t0.elapsed().as_nanos() as u64);
        self.respond(fd.as_raw_fd(), allow);
        drop(fd);
    }

    /// Resolves the event, asks the decider, adds the ignore mark when asked
    /// to remember. Returns whether to allow.
    pub(super) fn decide<F>(&self, ev: &RawEvent<'_>, fd: BorrowedFd<'_>, decider: &mut F, scratch: &mut Scratch) -> io::Result<bool>
    where
        F: FnMut(&PermRequest<'_>) -> PermDecision,
    {
        if self.is_own_thread(ev.pid) {
            self.inner.c.own.fetch_add(1, Relaxed);
            return Ok(true);
        }
        let st = fstat(fd.as_raw_fd())?;
        let key = (st.st_dev, st.st_ino);
        // A path the kernel cannot give (longer than PATH_MAX, built from
        // deep directories) leaves the decision to the inode: `path` is
        // empty, never a reason to answer with the fail mode.
        let link: &[u8] = match readlink_fd(fd.as_raw_fd(), &mut scratch.link) {
            Ok(l) => l,
            Err(e) => {
                self.inner.c.pathless.fetch_add(1, Relaxed);
                tracing::debug!(error = %e, pid = ev.pid, "no path for a permission event; deciding by inode");
                &[]
            }
        };
        let exec = ev.mask & libc::FAN_OPEN_EXEC_PERM != 0;
        let event_mask = if exec { libc::FAN_OPEN_EXEC_PERM } else { libc::FAN_OPEN_PERM };
        // A file on a filesystem the container's root mark does not cover
        // came through a mount mark: which one, by mount id.
        let mount = {
            let state = self.lock();
            let root_marked = state.devs.get(&key.0).is_some_and(|i| i.exec_scope == Some(MarkScope::Filesystem));
            if exec && !root_marked && !state.mounts.is_empty() {
                drop(state);
                mount_id(fd.as_fd()).ok()
            } else {
                None
            }
        };
        let (label, fs_magic, other_mount) = {
            let state = self.lock();
            let info = state.devs.get(&key.0);
            scratch.labels.clear();
            if let Some(m) = mount.and_then(|id| state.mounts.get(&id)) {
                scratch.labels.extend(&m.owners);
                let label = match m.owners.as_slice() {
                    [l] => Some(*l),
                    _ => None,
                };
                // Opened in the container's mount namespace: the path is
                // already the container's.
                normalise(link, &[], &mut scratch.norm);
                (label, m.magic, true)
            } else {
                if let Some(i) = info {
                    scratch.labels.extend(if i.exec_owners.is_empty() { &i.other_owners } else { &i.exec_owners });
                }
                let label = state
                    .objects
                    .get(&key)
                    .and_then(|o| match o.labels.as_slice() {
                        [l] => Some(*l),
                        _ => None,
                    })
                    .or_else(|| info.and_then(DevInfo::label));
                let stripped = normalise(link, info.map_or(&[][..], |i| &i.prefixes[..]), &mut scratch.norm);
                // A host prefix stripped from a path that is not the event's file
                // on the host was part of a path inside the container (a
                // directory the container made to look like the host's rootfs):
                // keep the whole path.
                if stripped && !same_file(link, key) {
                    scratch.norm.clear();
                    scratch.norm.push_str(&String::from_utf8_lossy(link));
                }
                (label, info.map_or(0, |i| i.magic), false)
            }
        };
        let kind = if exec { PermKind::Exec } else { PermKind::Open { write: write_intent(ev.pid) } };
        let req = PermRequest {
            kind,
            label,
            labels: &scratch.labels,
            pid: ev.pid,
            dev: key.0,
            ino: key.1,
            path: &scratch.norm,
            fs_magic,
            other_mount,
            file: fd,
        };
        let d = decider(&req);
        if d.allow && d.remember {
            self.remember(fd, event_mask, label, key, &scratch.norm);
        }
        Ok(d.allow)
    }

    /// Adds an ignore mark for `mask` on the inode of the event fd.
    pub(super) fn remember(&self, fd: BorrowedFd<'_>, mask: u64, label: Option<u64>, key: (u64, u64), path: &str) {
        let mut st = self.lock();
        if st.remembered >= MAX_REMEMBERED {
            self.inner.c.errors.fetch_add(1, Relaxed);
            return;
        }
        let mut flag = self.inner.ignore_flag.load(Relaxed);
        let mut r = mark_fd(self.fd(), libc::FAN_MARK_ADD | flag, mask, fd.as_raw_fd());
        if flag == libc::FAN_MARK_IGNORE && r.as_ref().err().and_then(io::Error::raw_os_error) == Some(libc::EINVAL) {
            // Kernel before 6.0: the legacy ignored mask does the same here.
            flag = libc::FAN_MARK_IGNORED_MASK;
            self.inner.ignore_flag.store(flag, Relaxed);
            r = mark_fd(self.fd(), libc::FAN_MARK_ADD | flag, mask, fd.as_raw_fd());
        }
        if let Err(e) = r {
            self.inner.c.errors.fetch_add(1, Relaxed);
            tracing::warn!(path, error = %e, "adding ignore mark");
            return;
        }
        self.inner.c.remembered.fetch_add(1, Relaxed);
        st.remembered += 1;
        let Some(label) = label else { return };
        let root = {
            let state = &*st;
            let ls = state.labels.get(&label);
            ls.and_then(|ls| ls.roots.iter().find(|(_, d)| *d == key.0).map(|(p, _)| p.clone()))
                .or_else(|| ls.and_then(|ls| ls.objects.iter().find(|o| o.key.0 == key.0).map(|o| o.root.clone())))
        };
        st.labels.entry(label).or_default().ignores.push(Ignored { key, root, path: path.to_owned(), mask });
    }

    pub(super) fn respond(&self, fd: RawFd, allow: bool) {
        let c = &self.inner.c;
        if allow {
            c.allowed.fetch_add(1, Relaxed);
        } else {
            c.denied.fetch_add(1, Relaxed);
        }
        let resp = libc::fanotify_response { fd, response: if allow { libc::FAN_ALLOW } else { libc::FAN_DENY } };
        loop {
            // SAFETY: `resp` is a valid `struct fanotify_response` that lives
            // across the call; the kernel only reads `size_of` bytes of it.
            let n = unsafe {
                libc::write(self.fd(), (&resp as *const libc::fanotify_response).cast(), std::mem::size_of::<libc::fanotify_response>())
            };
            if n >= 0 {
                return;
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            c.errors.fetch_add(1, Relaxed);
            tracing::error!(error = %e, "writing fanotify permission response");
            return;
        }
    }

    /// Is `tid` a thread of this process? (`tgkill(own_pid, tid, 0)`.)
    pub(super) fn is_own_thread(&self, tid: i32) -> bool {
        if tid == self.inner.own_pid {
            return true;
        }
        // SAFETY: signal 0 only checks that `tid` is a thread of our process.
        unsafe { libc::syscall(libc::SYS_tgkill, self.inner.own_pid, tid, 0) == 0 }
    }
}

pub(super) struct Scratch {
    link: Vec<u8>,
    norm: String,
    labels: Vec<u64>,
}

pub(super) fn with_path(e: FanotifyError, path: &Path) -> FanotifyError {
    match e {
        FanotifyError::Mark { mask, source, .. } => FanotifyError::Mark { path: path.to_path_buf(), mask, source },
        e => e,
    }
}

/// `readlink("/proc/self/fd/<fd>")` into `buf`, without allocating.
pub(super) fn readlink_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<&[u8]> {
    let mut p = PathBuf32::new(b"/proc/self/fd/");
    p.num(fd as u64);
    let p = p.finish(b"")?;
    // SAFETY: `p` is NUL-terminated; `buf` is writable for `buf.len()` bytes.
    let n = unsafe { libc::readlink(p.as_ptr().cast(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(&buf[..n as usize])
}

// ---- Decision-time histogram ----
