//! fanotify sources: file changes inside container filesystems
//! ([`FileChangeWatcher`]) and opens of sensitive files
//! ([`SensitiveOpenWatcher`]), and the group set-up, marks and event parsing
//! that the permission backend of protect mode
//! ([`crate::enforce::PermGroup`]) shares with them.
//!
//! Both watchers are non-blocking: poll [`FileChangeWatcher::fd`] /
//! [`SensitiveOpenWatcher::fd`] for readability, then call `read_events`, which
//! drains what is queued into a caller-owned `Vec<Event>` through one reused
//! read buffer. fanotify carries no timestamp, so `time_ns` is the wall clock at
//! read time.
//!
//! Events from the agent's own process are dropped. When the kernel queue
//! overflows (16384 events by default) it drops events and queues one
//! `FAN_Q_OVERFLOW`; the watchers count those in their stats and log a warning.

#[cfg(test)]
mod alloc_tests;
mod change;
mod dir_cache;
mod mounts;
mod open;
pub(crate) mod parse;
#[cfg(test)]
pub(crate) mod podman_tests;
#[cfg(test)]
mod prop_tests;
pub(crate) mod syscall;

pub use change::FileChangeWatcher;
pub use open::{SensitiveOpenWatcher, DEFAULT_SENSITIVE_PATHS};
pub use syscall::{exec_call, ExecCall, EXEC_ARGS_MAX, EXEC_ARG_MAX};

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// Errors from the fanotify watchers.
#[derive(Debug, thiserror::Error)]
pub enum FanotifyError {
    /// `fanotify_init` failed. EPERM: no CAP_SYS_ADMIN; EINVAL: the kernel does
    /// not know a requested flag.
    #[error("fanotify_init(flags {flags:#x}): {source}")]
    Init { flags: u32, source: io::Error },
    /// `fanotify_mark` failed (EOPNOTSUPP for a filesystem mark on overlayfs,
    /// EXDEV/ENODEV for filesystems without file handles, ENOSPC for too many
    /// marks).
    #[error("fanotify_mark({path}, mask {mask:#x}): {source}")]
    Mark { path: PathBuf, mask: u64, source: io::Error },
    #[error("opening {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("reading fanotify events: {0}")]
    Read(io::Error),
    /// The bounded bookkeeping for marks is full.
    #[error("too many watched objects (limit {0})")]
    TooManyMarks(usize),
    #[error("path contains a NUL byte: {0}")]
    BadPath(PathBuf),
    /// A filesystem-wide permission mark was asked for on the host's own root
    /// filesystem (every exec on the host would wait for lancet).
    #[error("{0} is on the host's root filesystem; refusing a filesystem-wide permission mark")]
    HostFilesystem(PathBuf),
}

/// Counters kept by each watcher.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FanotifyStats {
    /// Events appended to the output.
    pub events: u64,
    /// `FAN_Q_OVERFLOW` records seen (each means an unknown number of lost events).
    pub overflows: u64,
    /// Events whose object could not be resolved to a path (still emitted for
    /// file changes, with what was known).
    pub resolve_failures: u64,
    /// Events dropped: own pid, filtered out, or malformed.
    pub dropped: u64,
}

/// Largest number of `read(2)` calls per `read_events`, so one busy source
/// cannot starve the caller's loop; the fd stays readable if more is queued.
const MAX_READS_PER_CALL: usize = 64;
/// Read buffer size. An event is at most a few hundred bytes (two handles of
/// up to 128 bytes plus names of up to 255).
const READ_BUF_LEN: usize = 64 * 1024;

use lancet_engine::event::now_ns;

fn cstring(path: &Path) -> Result<CString, FanotifyError> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).map_err(|_| FanotifyError::BadPath(path.to_path_buf()))
}

/// Room a read leaves when the kernel had nothing more to give: more than
/// the largest event (metadata, three file-handle records of up to
/// `MAX_HANDLE_SZ` bytes and two names of up to 255).
const SHORT_READ_ROOM: usize = 4096;

/// Reads what is queued on `fan` without blocking (at most
/// `MAX_READS_PER_CALL` reads into `buf`) and hands each parsed event, with
/// the time it was read, to `handle`. A read that left room for another
/// event emptied the queue: no further read is made to learn that it is
/// empty (one syscall per drain instead of two). Returns how many
/// malformed buffers were skipped, and the read error if one ended the
/// drain.
fn drain(fan: RawFd, buf: &mut [u8], mut handle: impl FnMut(&parse::RawEvent<'_>, u64)) -> (u64, Result<(), FanotifyError>) {
    let mut malformed = 0;
    for _ in 0..MAX_READS_PER_CALL {
        let n = match read_some(fan, buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return (malformed, Err(e)),
        };
        let short = n + SHORT_READ_ROOM <= buf.len();
        let now = now_ns();
        let mut events = parse::events(&buf[..n]);
        while let Some(ev) = events.next_event() {
            match ev {
                Ok(ev) => handle(ev, now),
                Err(e) => {
                    malformed += 1;
                    tracing::warn!(error = %e, "malformed fanotify buffer, rest of this read skipped");
                }
            }
        }
        if short {
            break;
        }
    }
    (malformed, Ok(()))
}

pub(crate) fn fanotify_init(flags: u32, event_f_flags: u32) -> Result<OwnedFd, FanotifyError> {
    // SAFETY: plain syscall wrapper with integer arguments.
    let fd = unsafe { libc::fanotify_init(flags, event_f_flags) };
    if fd < 0 {
        return Err(FanotifyError::Init { flags, source: io::Error::last_os_error() });
    }
    // SAFETY: `fd` was just returned by fanotify_init, is valid and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn fanotify_mark(fan: RawFd, flags: u32, mask: u64, path: &Path) -> Result<(), FanotifyError> {
    let c = cstring(path)?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call; `fan`
    // is a fanotify fd owned by the caller.
    let r = unsafe { libc::fanotify_mark(fan, flags, mask, libc::AT_FDCWD, c.as_ptr()) };
    if r < 0 {
        return Err(FanotifyError::Mark { path: path.to_path_buf(), mask, source: io::Error::last_os_error() });
    }
    Ok(())
}

/// One non-blocking `read(2)` into `buf`. `Ok(0)` means nothing queued.
pub(crate) fn read_some(fd: RawFd, buf: &mut [u8]) -> Result<usize, FanotifyError> {
    loop {
        // SAFETY: `buf` is a valid writable slice of `buf.len()` bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Ok(0),
            _ => return Err(FanotifyError::Read(e)),
        }
    }
}

/// Shared by tests: is this process root with fanotify available?
#[cfg(test)]
pub(crate) fn skip_unless_fanotify(flags: u32) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: not root");
        return true;
    }
    match fanotify_init(flags, libc::O_RDONLY as u32) {
        Ok(_) => false,
        Err(FanotifyError::Init { source, .. }) if matches!(source.raw_os_error(), Some(libc::EPERM) | Some(libc::EINVAL)) => {
            eprintln!("SKIP: fanotify_init refused: {source}");
            true
        }
        Err(e) => panic!("fanotify_init: {e}"),
    }
}
