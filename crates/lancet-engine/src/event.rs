//! The event model shared by every source (BPF probes, fanotify) and every
//! consumer (attribution, outputs, later the policy engine).
//!
//! Events carry host-namespace identities (pids, cgroup ids) as the kernel saw
//! them; attribution to containers happens afterwards, so a source never has to
//! know about runtimes.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Now on the wall clock, in ns since the epoch: the clock of every
/// event's `time_ns` and of the store's times (0 before 1970).
pub fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The process that caused an event, as seen from the host pid namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProcessRef {
    /// Thread-group id (what userspace calls the pid).
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Kernel `comm`, at most 15 bytes.
    pub comm: String,
    /// When the process started (its thread group leader's
    /// `start_boottime`, ns since boot; 0 when unknown): with the pid, which
    /// process this was, so a kill after the fact never hits a later process
    /// that reuses the pid.
    pub start_ns: u64,
    /// The container runtime's own process setting a container up (`runc
    /// init` before it enters the container: its root was the host's at
    /// its last exec, or it is a fork of such a process). Set by the
    /// process table; nothing it does is the workload's.
    pub runtime: bool,
}

/// One observation. `time_ns` is wall-clock nanoseconds since the Unix epoch
/// (sources convert from their own clocks once, at decode time).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub time_ns: u64,
    /// cgroup v2 id of the task (or of the socket, for events raised in
    /// softirq context); 0 when the source could not tell.
    pub cgroup_id: u64,
    pub process: ProcessRef,
    pub kind: EventKind,
}

/// An empty slot for sources to fill in place ([`crate::batch`]): a fork of
/// pid 0 at time 0, never reported as such.
impl Default for Event {
    fn default() -> Self {
        Event { time_ns: 0, cgroup_id: 0, process: ProcessRef::default(), kind: EventKind::Fork { child_pid: 0, child_start_ns: 0 } }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    Exec(ExecEvent),
    Fork {
        child_pid: u32,
        /// The child's `start_boottime` (ns since boot; 0 when unknown).
        child_start_ns: u64,
    },
    Exit(ExitEvent),
    Net(NetEvent),
    File(FileEvent),
    /// A cgroup v2 directory appeared; containers come and go with these.
    CgroupMkdir {
        id: u64,
        path: String,
    },
    CgroupRmdir {
        id: u64,
        path: String,
    },
}

impl EventKind {
    /// The Falco `evt.type` name for this event.
    pub fn evt_type(&self) -> &'static str {
        match self {
            EventKind::Exec(_) => "execve",
            EventKind::Fork { .. } => "clone",
            EventKind::Exit(_) => "procexit",
            EventKind::Net(n) => n.op.evt_type(),
            EventKind::File(f) => f.op.evt_type(),
            EventKind::CgroupMkdir { .. } => "cgroup_mkdir",
            EventKind::CgroupRmdir { .. } => "cgroup_rmdir",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExecEvent {
    /// The path handed to execve, resolved against `cwd` when relative.
    pub filename: String,
    /// Working directory, relative to the process's own root (so inside a
    /// container it is the container's view).
    pub cwd: String,
    pub argv: Vec<String>,
    /// Parent `comm` at exec time.
    pub parent_comm: String,
    /// Parent executable path, when userspace knew it.
    pub parent_exe: Option<String>,
    /// The parent runs in another cgroup: the container runtime started this
    /// process (`podman exec`, the container's first process), not the
    /// workload. Which runtime process that is varies from run to run.
    pub parent_outside: bool,
    /// Identity of the file that was executed, for drift checks.
    pub exe_ino: u64,
    pub exe_dev: u32,
    pub exe_nlink: u32,
    pub exe_fs_magic: u64,
    /// Something was cut to fit the record (argv, cwd or filename).
    pub truncated: bool,
    /// The process's root directory was the host's own root at exec (read
    /// in the kernel at exec time, compared by device and inode).
    pub in_host_root: bool,
    /// The process was still in its parent's mount namespace at exec (read
    /// in the kernel): the runtime's `runc init` before it enters the
    /// container. A container process that chroots into a bind mount of
    /// the host's root is in the host's root but in the container's
    /// namespace, not its outside parent's.
    pub in_parent_mnt_ns: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExitEvent {
    /// Exit code when the process exited normally.
    pub code: Option<i32>,
    /// Terminating signal, when it was killed.
    pub signal: Option<i32>,
}

impl ExitEvent {
    /// Split a raw wait status (`task->exit_code`) into code and signal.
    pub fn from_status(status: u32) -> Self {
        let sig = (status & 0x7f) as i32;
        if sig == 0 {
            ExitEvent { code: Some(((status >> 8) & 0xff) as i32), signal: None }
        } else {
            ExitEvent { code: None, signal: Some(sig) }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NetOp {
    Connect,
    Accept,
    Listen,
    Bind,
    Close,
}

impl NetOp {
    pub fn evt_type(self) -> &'static str {
        match self {
            NetOp::Connect => "connect",
            NetOp::Accept => "accept",
            NetOp::Listen => "listen",
            NetOp::Bind => "bind",
            NetOp::Close => "close",
        }
    }
}

/// The transport of a socket event, a profile's flow, a kernel rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetEvent {
    pub op: NetOp,
    pub proto: Protocol,
    /// Local (source) address and port.
    pub saddr: IpAddr,
    pub sport: u16,
    /// Remote (destination) address and port; unspecified for listen/bind.
    pub daddr: IpAddr,
    pub dport: u16,
    /// 0 on success, otherwise a positive errno (e.g. ECONNREFUSED).
    pub result: i32,
    /// Network namespace inode, to tell apart equal addresses in different
    /// namespaces.
    pub netns: u32,
    /// A TCP close's byte counts (None for other records, and for close
    /// records of probes built before they carried them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub totals: Option<TcpTotals>,
}

/// What one TCP connection carried, from the socket's own counters when it
/// started to close (read once per connection, never per packet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TcpTotals {
    /// Bytes the local side wrote.
    pub bytes_sent: u64,
    /// Bytes it received.
    pub bytes_received: u64,
    /// Whether the local side opened the connection (`connect`, true) or
    /// accepted it (false); None when the probe could not tell.
    pub outbound: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileOp {
    Create,
    Modify,
    Delete,
    Rename,
    Chmod,
    /// An open of a path in the sensitive set.
    Open,
}

impl FileOp {
    pub fn evt_type(self) -> &'static str {
        match self {
            FileOp::Create => "creat",
            FileOp::Modify => "write",
            FileOp::Delete => "unlink",
            FileOp::Rename => "rename",
            FileOp::Chmod => "chmod",
            FileOp::Open => "open",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileEvent {
    pub op: FileOp,
    /// Path as the container sees it when the file lies in a container's
    /// filesystem, otherwise the host path.
    pub path: String,
    /// For renames: the old path.
    pub old_path: Option<String>,
    /// The host path the source observed (overlay upper dir, rootfs dir…),
    /// kept so attribution can map it to a container when the pid is gone.
    pub host_path: String,
    pub is_dir: bool,
}
