//! The records of the `enforce_events` ring, decoded without trusting
//! them: one per denied (or, with NET_AUDIT, would-be-denied)
//! connect/sendmsg/bind, per exec kill (with, for an applet of a multi-call
//! binary, the applet's name), per listener killed or reported, and per
//! write refused by a read-only mount (with the syscall and its path). The
//! ring is pinned, so a record may come from an older agent's programs.

use super::Result;
use crate::decode::Clock;
use crate::skel::enforce::types;
use lancet_engine::event::{Event, EventKind, ExecEvent, FileEvent, FileOp, NetEvent, NetOp, ProcessRef, Protocol};
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

// SAFETY: the generated ABI structs are `#[repr(C)]` plain old data made only
// of integers and integer arrays; every bit pattern is a valid value, which is
// what `plain::Plain` requires.
unsafe impl plain::Plain for types::lancet_enforce_event {}

const KIND_ENFORCE: u32 = 64;
/// Records written before `applet` was added to the struct (by the programs
/// of an older agent, still in the pinned ring when this one starts) are
/// this long; they are read with `applet` all zero.
const SIZE_BEFORE_APPLET: usize = 112;
const WR_PATH: u16 = 1 << 0;
const WR_PATH_UNREADABLE: u16 = 1 << 1;
const WR_PATH_CUT: u16 = 1 << 2;
const WR_FD: u16 = 1 << 3;
const WR_COMPAT: u16 = 1 << 4;
/// `LANCET_APPLET_CUT`: the last byte of a name cut to fit.
const APPLET_CUT: u8 = 0xff;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EnforceOp {
    Connect4,
    Connect6,
    Sendmsg4,
    Sendmsg6,
    Bind4,
    Bind6,
    ExecKill,
    /// A syscall failed with EROFS ([`EnforceRecord::write`] says which).
    WriteRefused,
    /// A TCP socket went to LISTEN on a port the container may not bind.
    Listen,
}

impl EnforceOp {
    fn from_raw(v: u32) -> Option<EnforceOp> {
        Some(match v {
            1 => EnforceOp::Connect4,
            2 => EnforceOp::Connect6,
            3 => EnforceOp::Sendmsg4,
            4 => EnforceOp::Sendmsg6,
            5 => EnforceOp::Bind4,
            6 => EnforceOp::Bind6,
            7 => EnforceOp::ExecKill,
            8 => EnforceOp::WriteRefused,
            9 => EnforceOp::Listen,
            _ => return None,
        })
    }

    /// The syscall, as Falco's `evt.type` names it.
    pub fn evt_type(self) -> &'static str {
        match self {
            EnforceOp::Connect4 | EnforceOp::Connect6 => "connect",
            EnforceOp::Sendmsg4 | EnforceOp::Sendmsg6 => "sendto",
            EnforceOp::Bind4 | EnforceOp::Bind6 => "bind",
            EnforceOp::ExecKill => "execve",
            EnforceOp::WriteRefused => "write",
            EnforceOp::Listen => "listen",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EnforceReason {
    /// No allow rule matched.
    NotAllowed,
    /// The container is isolated.
    Isolated,
    /// The exec'd file was a memfd.
    Memfd,
    /// The exec'd file was on tmpfs/ramfs.
    Tmpfs,
    /// The exec'd file had no links left.
    Deleted,
    /// The exec'd file is in the kill list.
    KillIno,
    /// The exec'd file is a multi-call binary and the applet it was run as
    /// is not allowed ([`EnforceRecord::applet`] names it).
    Applet,
    /// The write met a read-only mount (EROFS).
    ReadOnly,
}

impl EnforceReason {
    fn from_raw(v: u32) -> Option<EnforceReason> {
        Some(match v {
            1 => EnforceReason::NotAllowed,
            2 => EnforceReason::Isolated,
            3 => EnforceReason::Memfd,
            4 => EnforceReason::Tmpfs,
            5 => EnforceReason::Deleted,
            6 => EnforceReason::KillIno,
            7 => EnforceReason::Applet,
            8 => EnforceReason::ReadOnly,
            _ => return None,
        })
    }
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnforceRecord {
    /// Wall-clock time, ns since the epoch.
    pub time_ns: u64,
    /// `bpf_ktime_get_boot_ns()` when it happened.
    pub boot_ns: u64,
    /// cgroup v2 id of the process (the container's).
    pub cgroup_id: u64,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub op: EnforceOp,
    pub reason: EnforceReason,
    /// Socket ops: the protocol (None for others than TCP/UDP or exec kills).
    pub proto: Option<Protocol>,
    pub proto_num: u16,
    /// Socket ops: the peer (connect, sendto) or local (bind, listen)
    /// address; v4-mapped addresses are given as IPv4.
    pub addr: Option<IpAddr>,
    /// The peer's or local port; for a listener, 0 when it was reported
    /// before `listen()` picked its ephemeral port (NET_AUDIT).
    pub port: u16,
    /// Exec kills: the file's inode and the kernel's dev (as `exe_dev`).
    /// Listeners: the socket's inode (as in `/proc/net/tcp`).
    pub ino: u64,
    pub dev: u32,
    /// True when the operation was refused or the process killed; false for
    /// NET_AUDIT reports (and a kill the kernel could not deliver).
    pub denied: bool,
    /// Applet kills ([`EnforceReason::Applet`]): what ran and as what.
    pub applet: Option<Applet>,
    /// Write refusals ([`EnforceOp::WriteRefused`]): the syscall and what
    /// it was to write.
    pub write: Option<WriteRefusal>,
}

/// A syscall refused with EROFS, as the kernel saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriteRefusal {
    /// Its number: x86_64's, or i386's when `compat`.
    pub syscall: i32,
    /// An i386 syscall (its arguments are not read).
    pub compat: bool,
    /// The path argument as the task passed it (relative to `fd` when not
    /// absolute); for rename*, link* and symlink* the new name. None when
    /// the syscall has none (fd-based ones) or it could not be read.
    pub path: Option<String>,
    /// The syscall has a path argument that could not be read.
    pub path_unreadable: bool,
    /// The path filled the 255 bytes the kernel keeps: it may be cut.
    pub path_cut: bool,
    /// The fd argument: the directory of a relative path for *at()
    /// syscalls (-100, AT_FDCWD, for the cwd), the file for fd-based ones.
    pub fd: Option<i32>,
}

const AT_FDCWD: i32 = -100;

impl WriteRefusal {
    /// The syscall's name, for the x86_64 numbers lancet knows.
    pub fn syscall_name(&self) -> Option<&'static str> {
        if self.compat {
            return None;
        }
        Some(match self.syscall {
            1 => "write",
            2 => "open",
            16 => "ioctl",
            18 => "pwrite64",
            20 => "writev",
            76 => "truncate",
            77 => "ftruncate",
            82 => "rename",
            83 => "mkdir",
            84 => "rmdir",
            85 => "creat",
            86 => "link",
            87 => "unlink",
            88 => "symlink",
            90 => "chmod",
            91 => "fchmod",
            92 => "chown",
            93 => "fchown",
            94 => "lchown",
            132 => "utime",
            133 => "mknod",
            165 => "mount",
            188 => "setxattr",
            189 => "lsetxattr",
            190 => "fsetxattr",
            197 => "removexattr",
            198 => "lremovexattr",
            199 => "fremovexattr",
            235 => "utimes",
            257 => "openat",
            258 => "mkdirat",
            259 => "mknodat",
            260 => "fchownat",
            261 => "futimesat",
            263 => "unlinkat",
            264 => "renameat",
            265 => "linkat",
            266 => "symlinkat",
            268 => "fchmodat",
            280 => "utimensat",
            285 => "fallocate",
            296 => "pwritev",
            316 => "renameat2",
            328 => "pwritev2",
            437 => "openat2",
            452 => "fchmodat2",
            463 => "setxattrat",
            466 => "removexattrat",
            469 => "file_setattr",
            _ => return None,
        })
    }

    /// The syscall as Falco's `evt.type` would name it: its name, or
    /// `syscall_N` (`ia32_syscall_N`).
    pub fn evt_type(&self) -> String {
        match self.syscall_name() {
            Some(n) => n.to_string(),
            None if self.compat => format!("ia32_syscall_{}", self.syscall),
            None => format!("syscall_{}", self.syscall),
        }
    }

    /// What the syscall was to do to the file. open() may have been meant
    /// to create it or only to write: Modify.
    pub fn file_op(&self) -> FileOp {
        match self.syscall_name() {
            Some("creat" | "mkdir" | "mkdirat" | "mknod" | "mknodat" | "symlink" | "symlinkat" | "link" | "linkat") => FileOp::Create,
            Some("unlink" | "unlinkat" | "rmdir") => FileOp::Delete,
            Some("rename" | "renameat" | "renameat2") => FileOp::Rename,
            Some("chmod" | "fchmod" | "fchmodat" | "fchmodat2") => FileOp::Chmod,
            _ => FileOp::Modify,
        }
    }

    /// The target is a directory (mkdir, rmdir; unlinkat's AT_REMOVEDIR is
    /// not kept).
    pub fn is_dir(&self) -> bool {
        matches!(self.syscall_name(), Some("mkdir" | "mkdirat" | "rmdir"))
    }

    /// The path to show: as passed, or, with none, the fd it was written
    /// through (`fd 3`), or the syscall.
    pub fn shown_path(&self) -> String {
        match (&self.path, self.fd) {
            (Some(p), _) => p.clone(),
            (None, Some(fd)) => format!("fd {fd}"),
            (None, None) => format!("({})", self.evt_type()),
        }
    }

    /// The absolute path as task `pid` sees it, looked up now in /proc:
    /// a relative path joined to its directory (`/proc/PID/cwd`, or the
    /// dirfd's `/proc/PID/fd/N`), a path-less syscall's fd resolved
    /// (`/proc/PID/fd/N`). Best effort: the task may have moved on, closed
    /// the fd or exited (None then).
    pub fn resolve(&self, pid: u32) -> Option<String> {
        let link = |what: String| std::fs::read_link(format!("/proc/{pid}/{what}")).ok().map(|p| p.display().to_string());
        match (&self.path, self.fd) {
            (Some(p), _) if p.starts_with('/') => Some(p.clone()),
            (Some(p), fd) => {
                let dir = match fd {
                    Some(fd) if fd != AT_FDCWD => link(format!("fd/{fd}"))?,
                    _ => link("cwd".into())?,
                };
                if p.is_empty() {
                    // AT_EMPTY_PATH: the fd is the file.
                    return Some(dir);
                }
                Some(format!("{}/{p}", dir.trim_end_matches('/')))
            }
            (None, Some(fd)) if fd >= 0 => link(format!("fd/{fd}")),
            _ => None,
        }
    }
}

/// The applet an exec of a multi-call binary was killed for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applet {
    /// As the kernel judged it: the basename of argv[0] (or, after the
    /// dispatcher, of the next argument), at most 31 bytes. Empty when
    /// argv[0] was empty, could not be read, or was longer than the scan.
    pub name: String,
    /// The name was longer than 31 bytes and is cut here (no allowed name
    /// is that long, so it could not have been allowed).
    pub cut: bool,
    /// The exec'd file's own name (its directory entry, so the target of
    /// the symlink it was run through), at most 15 bytes.
    pub file: String,
}

impl std::fmt::Display for Applet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.name.is_empty(), self.cut) {
            (true, _) => f.write_str("(empty or unreadable argv[0])"),
            (false, true) => write!(f, "{}...", self.name),
            (false, false) => f.write_str(&self.name),
        }
    }
}

impl EnforceRecord {
    /// The engine event this record stands for: the exec the kernel killed
    /// (its file named by what it was, since an exec killed at its first
    /// instruction has no path worth trusting), or the network operation
    /// refused or audited, with `evt.res` EPERM (a listener killed: EPERM,
    /// reported only: 0), or the file a write refused by a read-only
    /// mount was meant for (as the task named it: see
    /// [`WriteRefusal::resolve`] for relative paths; `FileEvent` has no
    /// result, so the refusal is in the record's op and reason).
    pub fn to_event(&self) -> Event {
        let process = ProcessRef { pid: self.pid, tid: self.tid, ppid: self.ppid, comm: self.comm.clone(), ..Default::default() };
        let kind = match self.op {
            EnforceOp::WriteRefused => {
                let w = self.write.clone().unwrap_or(WriteRefusal {
                    syscall: -1,
                    compat: false,
                    path: None,
                    path_unreadable: false,
                    path_cut: false,
                    fd: None,
                });
                EventKind::File(FileEvent {
                    op: w.file_op(),
                    path: w.shown_path(),
                    old_path: None,
                    host_path: String::new(),
                    is_dir: w.is_dir(),
                })
            }
            EnforceOp::Listen => {
                let any: IpAddr = Ipv4Addr::UNSPECIFIED.into();
                EventKind::Net(NetEvent {
                    op: NetOp::Listen,
                    proto: Protocol::Tcp,
                    saddr: self.addr.unwrap_or(any),
                    sport: self.port,
                    daddr: if self.addr.is_some_and(|a| a.is_ipv6()) { Ipv6Addr::UNSPECIFIED.into() } else { any },
                    dport: 0,
                    result: if self.denied { libc::EPERM } else { 0 },
                    netns: 0,
                    totals: None,
                })
            }
            EnforceOp::ExecKill if self.reason == EnforceReason::Applet => {
                // The exec ran the file as another program: name the applet
                // (argv[0]) and the file it is an applet of.
                let applet = self.applet.clone().unwrap_or(Applet { name: String::new(), cut: false, file: String::new() });
                let file = if applet.file.is_empty() { "a multi-call binary" } else { applet.file.as_str() };
                let path = format!("applet {applet} of {file} (inode {}), killed at exec", self.ino);
                EventKind::Exec(ExecEvent {
                    filename: path,
                    cwd: String::new(),
                    argv: vec![applet.to_string()],
                    parent_comm: String::new(),
                    parent_exe: None,
                    parent_outside: false,
                    exe_ino: self.ino,
                    exe_dev: self.dev,
                    exe_nlink: 1,
                    exe_fs_magic: 0,
                    truncated: applet.cut,
                    in_host_root: false,
                    in_parent_mnt_ns: false,
                })
            }
            EnforceOp::ExecKill => {
                let what = match self.reason {
                    EnforceReason::Memfd => "memfd",
                    EnforceReason::Deleted => "deleted file",
                    EnforceReason::KillIno => "loader run directly",
                    _ => "tmpfs file",
                };
                let path = format!("{what} run as {} (inode {}), killed at exec", self.comm, self.ino);
                EventKind::Exec(ExecEvent {
                    filename: path.clone(),
                    cwd: String::new(),
                    argv: vec![path],
                    parent_comm: String::new(),
                    parent_exe: None,
                    parent_outside: false,
                    exe_ino: self.ino,
                    exe_dev: self.dev,
                    exe_nlink: u32::from(self.reason != EnforceReason::Deleted),
                    exe_fs_magic: 0,
                    truncated: false,
                    in_host_root: false,
                    in_parent_mnt_ns: false,
                })
            }
            op => {
                let bind = matches!(op, EnforceOp::Bind4 | EnforceOp::Bind6);
                let v6 = matches!(op, EnforceOp::Connect6 | EnforceOp::Sendmsg6 | EnforceOp::Bind6);
                let any: IpAddr = if v6 { Ipv6Addr::UNSPECIFIED.into() } else { Ipv4Addr::UNSPECIFIED.into() };
                let addr = self.addr.unwrap_or(any);
                EventKind::Net(NetEvent {
                    op: if bind { NetOp::Bind } else { NetOp::Connect },
                    proto: if self.proto == Some(Protocol::Udp) { Protocol::Udp } else { Protocol::Tcp },
                    saddr: if bind { addr } else { any },
                    sport: if bind { self.port } else { 0 },
                    daddr: if bind { any } else { addr },
                    dport: if bind { 0 } else { self.port },
                    result: if self.denied { libc::EPERM } else { 0 },
                    netns: 0,
                    totals: None,
                })
            }
        };
        Event { time_ns: self.time_ns, cgroup_id: self.cgroup_id, process, kind }
    }
}

/// Why a record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record of {0} bytes is shorter than lancet_enforce_event")]
    Truncated(usize),
    #[error("record kind {0} is not an enforcement record")]
    Kind(u32),
    #[error("unknown op {0} or reason {1}")]
    Unknown(u32, u32),
}

fn cstr(bytes: &[i8]) -> String {
    let b: Vec<u8> = bytes.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&b).into_owned()
}

/// `applet` of an applet kill: the name, and whether the kernel cut it.
fn applet_name(bytes: &[i8]) -> (String, bool) {
    let cut = bytes.last().is_some_and(|&c| c as u8 == APPLET_CUT);
    let body = if cut { &bytes[..bytes.len() - 1] } else { bytes };
    (cstr(body), cut)
}

/// `addr` of an applet kill: the file's name, NUL-padded.
fn file_name(bytes: &[u8]) -> String {
    let b: Vec<u8> = bytes.iter().take_while(|&&c| c != 0).copied().collect();
    String::from_utf8_lossy(&b).into_owned()
}

/// Decodes one raw record.
pub fn decode_record(data: &[u8], clock: &Clock) -> Result<EnforceRecord, RecordError> {
    if data.len() < SIZE_BEFORE_APPLET {
        return Err(RecordError::Truncated(data.len()));
    }
    // Zero-extended: a record from before `applet` existed reads as none.
    let mut full = [0u8; std::mem::size_of::<types::lancet_enforce_event>()];
    let n = data.len().min(full.len());
    full[..n].copy_from_slice(&data[..n]);
    let mut e = types::lancet_enforce_event::default();
    plain::copy_from_bytes(&mut e, &full).map_err(|_| RecordError::Truncated(data.len()))?;
    if e.hdr.kind != KIND_ENFORCE {
        return Err(RecordError::Kind(e.hdr.kind));
    }
    let (Some(op), Some(reason)) = (EnforceOp::from_raw(e.op), EnforceReason::from_raw(e.reason)) else {
        return Err(RecordError::Unknown(e.op, e.reason));
    };
    let applet = (reason == EnforceReason::Applet).then(|| {
        let (name, cut) = applet_name(&e.applet);
        Applet { name, cut, file: file_name(&e.addr) }
    });
    let write = (op == EnforceOp::WriteRefused).then(|| {
        let f = e.wr_flags;
        // A short record (cut by its size) has no path to give.
        let have = data.len() >= full.len();
        let len = usize::from(e.path_len).min(e.path.len());
        let readable = f & WR_PATH != 0 && f & WR_PATH_UNREADABLE == 0 && have;
        WriteRefusal {
            syscall: e.syscall,
            compat: f & WR_COMPAT != 0,
            path: readable.then(|| {
                let b: Vec<u8> = e.path[..len].iter().map(|&c| c as u8).collect();
                String::from_utf8_lossy(&b).into_owned()
            }),
            path_unreadable: f & WR_PATH_UNREADABLE != 0 || (f & WR_PATH != 0 && !have),
            path_cut: f & WR_PATH_CUT != 0,
            fd: (f & WR_FD != 0).then_some(e.fd),
        }
    });
    let addr = match e.family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::new(e.addr[12], e.addr[13], e.addr[14], e.addr[15]))),
        AF_INET6 => Some(Ipv6Addr::from(e.addr).to_canonical()),
        _ => None,
    };
    Ok(EnforceRecord {
        time_ns: clock.to_epoch_ns(e.hdr.ts_ns),
        boot_ns: e.hdr.ts_ns,
        cgroup_id: e.hdr.cgroup_id,
        pid: e.hdr.pid,
        tid: e.hdr.tid,
        ppid: e.hdr.ppid,
        uid: e.hdr.uid,
        gid: e.hdr.gid,
        comm: cstr(&e.hdr.comm),
        op,
        reason,
        proto: match e.proto {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            _ => None,
        },
        proto_num: e.proto,
        addr,
        port: e.port,
        ino: e.ino,
        dev: e.dev,
        denied: e.denied != 0,
        applet,
        write,
    })
}

#[cfg(test)]
mod tests;
