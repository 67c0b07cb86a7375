//! Ring-buffer records to engine events.
//!
//! Records come from the kernel but are still checked: a record shorter than
//! its struct, with an unknown kind, or with lengths that point past its end is
//! reported as a [`DecodeError`] (counted by the caller), never a panic.

use crate::skel::lancet::types;
use lancet_engine::event::{Event, EventKind, ExecEvent, ExitEvent, NetEvent, NetOp, ProcessRef, Protocol, TcpTotals};
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use thiserror::Error;

// SAFETY: the generated ABI structs are `#[repr(C)]` plain old data made only
// of integers and integer arrays; every bit pattern is a valid value, which is
// what `plain::Plain` requires.
unsafe impl plain::Plain for types::lancet_header {}
// SAFETY: as above.
unsafe impl plain::Plain for types::lancet_exec {}
// SAFETY: as above.
unsafe impl plain::Plain for types::lancet_fork {}
// SAFETY: as above.
unsafe impl plain::Plain for types::lancet_exit {}
// SAFETY: as above.
unsafe impl plain::Plain for types::lancet_net {}
// SAFETY: as above.
unsafe impl plain::Plain for types::lancet_cgroup {}

/// Mirrors `enum lancet_kind` in bpf/lancet.h.
pub(crate) mod kind {
    pub const EXEC: u32 = 1;
    pub const FORK: u32 = 2;
    pub const EXIT: u32 = 3;
    pub const CONNECT: u32 = 4;
    pub const ACCEPT: u32 = 5;
    pub const LISTEN: u32 = 6;
    pub const BIND: u32 = 7;
    pub const CLOSE: u32 = 8;
    pub const CGROUP_MKDIR: u32 = 9;
    pub const CGROUP_RMDIR: u32 = 10;
}

const EXEC_ARGS_TRUNCATED: u32 = 1;
const EXEC_CWD_TRUNCATED: u32 = 2;
const EXEC_FILENAME_TRUNCATED: u32 = 4;
const AF_INET6: u16 = 10;
const IPPROTO_UDP: u16 = 17;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than its {need}-byte {what} layout")]
    Truncated { what: &'static str, len: usize, need: usize },
    #[error("record kind {0} is unknown to this build")]
    UnknownKind(u32),
}

/// Converts kernel boot-time stamps to wall-clock time. Computed once: the
/// offset only changes when the wall clock is stepped.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    boot_to_epoch_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        let real = clock_ns(libc::CLOCK_REALTIME);
        let boot = clock_ns(libc::CLOCK_BOOTTIME);
        Clock { boot_to_epoch_ns: real - boot }
    }

    /// For tests: boot time 0 is the given epoch time.
    pub fn with_offset(boot_to_epoch_ns: i128) -> Self {
        Clock { boot_to_epoch_ns }
    }

    pub fn to_epoch_ns(&self, boot_ns: u64) -> u64 {
        (boot_ns as i128 + self.boot_to_epoch_ns).clamp(0, u64::MAX as i128) as u64
    }
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes it.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Reads a `T` from the front of `data`. Records may legally be shorter than
/// `T` only where the layout says so (exec's argv tail), so callers pass
/// `min_len`; bytes past the record are zero.
fn read<T: plain::Plain + Default>(data: &[u8], min_len: usize, what: &'static str) -> Result<T, DecodeError> {
    if data.len() < min_len {
        return Err(DecodeError::Truncated { what, len: data.len(), need: min_len });
    }
    let mut v = T::default();
    let n = data.len().min(size_of::<T>());
    // SAFETY: T is Plain (any bytes are a valid T); we copy at most size_of::<T>() bytes.
    let dst = unsafe { plain::as_mut_bytes(&mut v) };
    dst[..n].copy_from_slice(&data[..n]);
    Ok(v)
}

fn cstr(bytes: &[i8], len: Option<usize>) -> String {
    let n = len.unwrap_or(bytes.len()).min(bytes.len());
    let raw: Vec<u8> = bytes[..n].iter().map(|&b| b as u8).take_while(|&b| b != 0).collect();
    String::from_utf8_lossy(&raw).into_owned()
}

fn process(h: &types::lancet_header) -> ProcessRef {
    ProcessRef { pid: h.pid, tid: h.tid, ppid: h.ppid, uid: h.uid, gid: h.gid, comm: cstr(&h.comm, None), start_ns: 0, runtime: false }
}

/// Splits a NUL-separated argv block. A trailing partial argument (cut by the
/// length limit) is kept.
pub fn split_args(raw: &[u8]) -> Vec<String> {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    if raw.is_empty() {
        return Vec::new();
    }
    raw.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}

/// Joins a relative exec path with the working directory, as the kernel did.
fn absolute(filename: &str, cwd: &str) -> String {
    if filename.starts_with('/') || filename.is_empty() {
        filename.to_string()
    } else {
        let rel = filename.strip_prefix("./").unwrap_or(filename);
        if cwd.ends_with('/') {
            format!("{cwd}{rel}")
        } else {
            format!("{cwd}/{rel}")
        }
    }
}

fn addr(family: u16, bytes: &[u8; 16]) -> IpAddr {
    if family == AF_INET6 {
        // A dual-stack socket talking IPv4 shows ::ffff:a.b.c.d; say a.b.c.d.
        Ipv6Addr::from(*bytes).to_canonical()
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    }
}

/// The host's root directory as the kernel names it (s_dev encoding,
/// inode), to tell from an exec record whether the process was still in the
/// host's root (a container runtime before it enters the container).
fn host_root() -> Option<(u32, u64)> {
    static ROOT: std::sync::OnceLock<Option<(u32, u64)>> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| crate::sys::host_root_id().map(|(dev, ino)| (crate::sys::kernel_dev(dev), ino)))
}

fn net(h: &types::lancet_header, data: &[u8]) -> Result<EventKind, DecodeError> {
    // Records of probes built before the close counters end at `netns`:
    // read as they are, their counters unknown.
    let v1 = std::mem::offset_of!(types::lancet_net, bytes_sent);
    let e: types::lancet_net = read(data, v1, "net")?;
    let op = match h.kind {
        kind::CONNECT => NetOp::Connect,
        kind::ACCEPT => NetOp::Accept,
        kind::LISTEN => NetOp::Listen,
        kind::BIND => NetOp::Bind,
        _ => NetOp::Close,
    };
    Ok(EventKind::Net(NetEvent {
        op,
        proto: if e.protocol == IPPROTO_UDP { Protocol::Udp } else { Protocol::Tcp },
        saddr: addr(e.family, &e.saddr),
        sport: e.sport,
        daddr: addr(e.family, &e.daddr),
        dport: e.dport,
        result: e.result,
        netns: e.netns,
        totals: (h.kind == kind::CLOSE && data.len() >= size_of::<types::lancet_net>()).then_some(TcpTotals {
            bytes_sent: e.bytes_sent,
            bytes_received: e.bytes_received,
            outbound: match e.opened {
                kind::CONNECT => Some(true),
                kind::ACCEPT => Some(false),
                _ => None,
            },
        }),
    }))
}

/// Decodes one record into `ev`, an event slot reused from batch to batch
/// ([`lancet_engine::batch`]): socket, fork and exit records are written in
/// place, the `comm` into the capacity the slot's string has, so the
/// steady stream of a busy service allocates nothing. Execs and cgroup
/// records (strings of every size, far rarer) are decoded whole.
pub fn decode_into(data: &[u8], clock: &Clock, ev: &mut Event) -> Result<(), DecodeError> {
    let h: types::lancet_header = read(data, size_of::<types::lancet_header>(), "header")?;
    let kind = match h.kind {
        kind::FORK => {
            let e: types::lancet_fork = read(data, size_of::<types::lancet_fork>(), "fork")?;
            EventKind::Fork { child_pid: e.child_pid, child_start_ns: e.child_start_ns }
        }
        kind::EXIT => {
            let e: types::lancet_exit = read(data, size_of::<types::lancet_exit>(), "exit")?;
            EventKind::Exit(ExitEvent::from_status(e.exit_code))
        }
        kind::CONNECT | kind::ACCEPT | kind::LISTEN | kind::BIND | kind::CLOSE => net(&h, data)?,
        _ => {
            *ev = decode(data, clock)?;
            return Ok(());
        }
    };
    ev.time_ns = clock.to_epoch_ns(h.ts_ns);
    ev.cgroup_id = h.cgroup_id;
    let p = &mut ev.process;
    (p.pid, p.tid, p.ppid, p.uid, p.gid, p.start_ns, p.runtime) = (h.pid, h.tid, h.ppid, h.uid, h.gid, 0, false);
    cstr_into(&h.comm, &mut p.comm);
    ev.kind = kind;
    Ok(())
}

/// A NUL-terminated C string into `out`, in its capacity (lossy UTF-8).
fn cstr_into(bytes: &[i8], out: &mut String) {
    out.clear();
    let n = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let mut raw = [0u8; 64];
    if n <= raw.len() {
        for (d, &b) in raw.iter_mut().zip(&bytes[..n]) {
            *d = b as u8;
        }
        match std::str::from_utf8(&raw[..n]) {
            Ok(s) => out.push_str(s),
            Err(_) => out.push_str(&String::from_utf8_lossy(&raw[..n])),
        }
    } else {
        out.push_str(&cstr(bytes, None));
    }
}

/// Decodes one ring-buffer record.
pub fn decode(data: &[u8], clock: &Clock) -> Result<Event, DecodeError> {
    let h: types::lancet_header = read(data, size_of::<types::lancet_header>(), "header")?;
    let time_ns = clock.to_epoch_ns(h.ts_ns);
    let mut proc_ = process(&h);
    let kind = match h.kind {
        kind::EXEC => {
            let need = std::mem::offset_of!(types::lancet_exec, args);
            let e: types::lancet_exec = read(data, need, "exec")?;
            proc_.start_ns = e.start_ns;
            let avail = data.len().saturating_sub(need);
            let args_len = (e.args_len as usize).min(avail).min(e.args.len());
            let args: Vec<u8> = e.args[..args_len].iter().map(|&b| b as u8).collect();
            let cwd = cstr(&e.cwd, Some(e.cwd_len as usize));
            let filename = cstr(&e.filename, Some(e.filename_len as usize));
            EventKind::Exec(ExecEvent {
                filename: absolute(&filename, &cwd),
                cwd,
                argv: split_args(&args),
                parent_comm: cstr(&e.pcomm, None),
                parent_exe: None,
                exe_ino: e.exe_ino,
                exe_dev: e.exe_dev,
                // The parent's cgroup, read in the kernel at exec: exact
                // even when the parent is gone by now.
                parent_outside: e.parent_cgroup_id != 0 && h.cgroup_id != 0 && e.parent_cgroup_id != h.cgroup_id,
                exe_nlink: e.exe_nlink,
                exe_fs_magic: e.exe_fs_magic,
                truncated: e.flags & (EXEC_ARGS_TRUNCATED | EXEC_CWD_TRUNCATED | EXEC_FILENAME_TRUNCATED) != 0,
                in_host_root: host_root() == Some((e.root_dev, e.root_ino)),
                in_parent_mnt_ns: e.mnt_ns != 0 && e.mnt_ns == e.parent_mnt_ns,
            })
        }
        kind::FORK => {
            let e: types::lancet_fork = read(data, size_of::<types::lancet_fork>(), "fork")?;
            EventKind::Fork { child_pid: e.child_pid, child_start_ns: e.child_start_ns }
        }
        kind::EXIT => {
            let e: types::lancet_exit = read(data, size_of::<types::lancet_exit>(), "exit")?;
            EventKind::Exit(ExitEvent::from_status(e.exit_code))
        }
        kind::CONNECT | kind::ACCEPT | kind::LISTEN | kind::BIND | kind::CLOSE => net(&h, data)?,
        kind::CGROUP_MKDIR | kind::CGROUP_RMDIR => {
            let need = std::mem::offset_of!(types::lancet_cgroup, path);
            let e: types::lancet_cgroup = read(data, need, "cgroup")?;
            let path = cstr(&e.path, Some(e.path_len as usize));
            if h.kind == kind::CGROUP_MKDIR {
                EventKind::CgroupMkdir { id: e.id, path }
            } else {
                EventKind::CgroupRmdir { id: e.id, path }
            }
        }
        other => return Err(DecodeError::UnknownKind(other)),
    };
    Ok(Event { time_ns, cgroup_id: h.cgroup_id, process: proc_, kind })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn bytes_of<T: plain::Plain>(v: &T) -> Vec<u8> {
        // SAFETY: T is Plain; viewing it as bytes is always valid.
        unsafe { plain::as_bytes(v) }.to_vec()
    }

    fn put(dst: &mut [i8], s: &str) {
        for (d, b) in dst.iter_mut().zip(s.bytes()) {
            *d = b as i8;
        }
    }

    fn header(kind: u32) -> types::lancet_header {
        let mut h =
            types::lancet_header { ts_ns: 1_000, cgroup_id: 42, kind, pid: 7, tid: 8, ppid: 1, uid: 0, gid: 0, ..Default::default() };
        put(&mut h.comm, "sh");
        h
    }

    fn exec_record(args: &[u8]) -> Vec<u8> {
        let mut e = types::lancet_exec { hdr: header(kind::EXEC), ..Default::default() };
        put(&mut e.filename, "id");
        e.filename_len = 2;
        put(&mut e.cwd, "/tmp");
        e.cwd_len = 4;
        put(&mut e.pcomm, "bash");
        for (d, b) in e.args.iter_mut().zip(args) {
            *d = *b as i8;
        }
        e.args_len = args.len() as u16;
        let mut v = bytes_of(&e);
        v.truncate(std::mem::offset_of!(types::lancet_exec, args) + args.len());
        v
    }

    #[test]
    fn exec_is_decoded_with_relative_path_resolved() {
        let ev = decode(&exec_record(b"id\0-u\0"), &Clock::with_offset(5)).unwrap();
        assert_eq!(ev.time_ns, 1_005);
        assert_eq!(ev.cgroup_id, 42);
        assert_eq!(ev.process.comm, "sh");
        match ev.kind {
            EventKind::Exec(x) => {
                assert_eq!(x.filename, "/tmp/id");
                assert_eq!(x.argv, vec!["id", "-u"]);
                assert_eq!(x.parent_comm, "bash");
                assert!(!x.truncated);
            }
            other => panic!("not exec: {other:?}"),
        }
    }

    #[test]
    fn exec_args_len_past_the_record_is_clamped() {
        let mut rec = exec_record(b"ls\0");
        // Claim more argv than the record holds.
        let off = std::mem::offset_of!(types::lancet_exec, args_len);
        rec[off..off + 2].copy_from_slice(&900u16.to_ne_bytes());
        let ev = decode(&rec, &Clock::with_offset(0)).unwrap();
        let EventKind::Exec(x) = ev.kind else { panic!() };
        assert_eq!(x.argv, vec!["ls"]);
    }

    #[test]
    fn truncated_and_unknown_records_are_errors() {
        assert!(matches!(decode(&[0u8; 10], &Clock::with_offset(0)), Err(DecodeError::Truncated { what: "header", .. })));
        let h = bytes_of(&header(kind::CONNECT));
        assert!(matches!(decode(&h, &Clock::with_offset(0)), Err(DecodeError::Truncated { what: "net", .. })));
        let h = bytes_of(&header(99));
        assert_eq!(decode(&h, &Clock::with_offset(0)), Err(DecodeError::UnknownKind(99)));
    }

    #[test]
    fn net_records_carry_addresses_and_ports() {
        let mut n = types::lancet_net { hdr: header(kind::CONNECT), family: 2, protocol: 6, sport: 40000, dport: 80, ..Default::default() };
        n.daddr[..4].copy_from_slice(&[10, 88, 0, 2]);
        n.saddr[..4].copy_from_slice(&[10, 88, 0, 3]);
        n.result = 111;
        let ev = decode(&bytes_of(&n), &Clock::with_offset(0)).unwrap();
        let EventKind::Net(x) = ev.kind else { panic!() };
        assert_eq!(x.op, NetOp::Connect);
        assert_eq!(x.daddr.to_string(), "10.88.0.2");
        assert_eq!(x.dport, 80);
        assert_eq!(x.result, 111);
        let mut n6 = types::lancet_net { hdr: header(kind::LISTEN), family: AF_INET6, protocol: 6, sport: 8080, ..Default::default() };
        n6.saddr[15] = 1;
        let ev = decode(&bytes_of(&n6), &Clock::with_offset(0)).unwrap();
        assert_eq!(ev.kind.evt_type(), "listen");
        let EventKind::Net(x) = ev.kind else { panic!() };
        assert_eq!(x.saddr.to_string(), "::1");
        let mut mapped = types::lancet_net { hdr: header(kind::ACCEPT), family: AF_INET6, protocol: 6, ..Default::default() };
        mapped.daddr[10..16].copy_from_slice(&[0xff, 0xff, 10, 89, 0, 3]);
        let EventKind::Net(x) = decode(&bytes_of(&mapped), &Clock::with_offset(0)).unwrap().kind else { panic!() };
        assert_eq!(x.daddr.to_string(), "10.89.0.3", "v4-mapped addresses read as IPv4");
    }

    #[test]
    fn close_records_carry_their_totals_and_old_ones_still_decode() {
        let mut c = types::lancet_net { hdr: header(kind::CLOSE), family: 2, protocol: 6, sport: 40000, dport: 80, ..Default::default() };
        c.bytes_sent = 120;
        c.bytes_received = 4096;
        c.opened = kind::CONNECT;
        let EventKind::Net(x) = decode(&bytes_of(&c), &Clock::with_offset(0)).unwrap().kind else { panic!() };
        assert_eq!(x.totals, Some(TcpTotals { bytes_sent: 120, bytes_received: 4096, outbound: Some(true) }));
        c.opened = kind::ACCEPT;
        let EventKind::Net(x) = decode(&bytes_of(&c), &Clock::with_offset(0)).unwrap().kind else { panic!() };
        assert_eq!(x.totals.and_then(|t| t.outbound), Some(false));
        // A record of an older probe: no counters, still a close.
        let mut old = bytes_of(&c);
        old.truncate(std::mem::offset_of!(types::lancet_net, bytes_sent));
        let ev = decode(&old, &Clock::with_offset(0)).unwrap();
        let EventKind::Net(x) = ev.kind else { panic!() };
        assert_eq!((x.op, x.dport, x.totals), (NetOp::Close, 80, None));
        // Other records never carry totals.
        let n = types::lancet_net { hdr: header(kind::CONNECT), family: 2, protocol: 6, bytes_sent: 9, ..Default::default() };
        let EventKind::Net(x) = decode(&bytes_of(&n), &Clock::with_offset(0)).unwrap().kind else { panic!() };
        assert_eq!(x.totals, None);
        // Shorter than even the old layout: an error.
        old.truncate(old.len() - 1);
        assert!(matches!(decode(&old, &Clock::with_offset(0)), Err(DecodeError::Truncated { what: "net", .. })));
    }

    /// A service's steady stream of socket records, decoded into reused
    /// slots, allocates nothing (counted on this thread only).
    #[test]
    fn socket_records_decode_in_place_without_allocating() {
        let records: Vec<Vec<u8>> = [kind::CONNECT, kind::ACCEPT, kind::CLOSE, kind::FORK, kind::EXIT]
            .iter()
            .map(|&k| {
                let mut n = types::lancet_net { hdr: header(k), family: 2, protocol: 6, sport: 40000, dport: 80, ..Default::default() };
                n.daddr[..4].copy_from_slice(&[10, 88, 0, 2]);
                let v = bytes_of(&n);
                match k {
                    kind::FORK => v[..size_of::<types::lancet_fork>()].to_vec(),
                    kind::EXIT => v[..size_of::<types::lancet_exit>()].to_vec(),
                    _ => v,
                }
            })
            .collect();
        let clock = Clock::with_offset(0);
        let mut batch = lancet_engine::batch::EventBatch::new();
        use lancet_engine::batch::EventSink;
        let round = |batch: &mut lancet_engine::batch::EventBatch| {
            for _ in 0..100 {
                for r in &records {
                    decode_into(r, &clock, batch.slot()).unwrap();
                }
            }
            batch.clear();
        };
        round(&mut batch);
        let before = crate::alloc_count::thread_allocations();
        round(&mut batch);
        assert_eq!(crate::alloc_count::thread_allocations() - before, 0, "allocations for 500 records");
        // The count sees allocations: decoding into new events allocates.
        let before = crate::alloc_count::thread_allocations();
        let fresh: Vec<Event> = records.iter().map(|r| decode(r, &clock).unwrap()).collect();
        assert!(crate::alloc_count::thread_allocations() - before >= fresh.len() as u64);
        round(&mut batch);
        decode_into(&records[0], &clock, batch.slot()).unwrap();
        assert_eq!(batch.events()[0].kind.evt_type(), "connect");
        assert_eq!(batch.events()[0].process.comm, "sh");
    }

    #[test]
    fn exit_status_splits_code_and_signal() {
        let e = types::lancet_exit { hdr: header(kind::EXIT), exit_code: 3 << 8, _pad: 0 };
        let ev = decode(&bytes_of(&e), &Clock::with_offset(0)).unwrap();
        assert_eq!(ev.kind, EventKind::Exit(ExitEvent { code: Some(3), signal: None }));
        let e = types::lancet_exit { hdr: header(kind::EXIT), exit_code: 9, _pad: 0 };
        let ev = decode(&bytes_of(&e), &Clock::with_offset(0)).unwrap();
        assert_eq!(ev.kind, EventKind::Exit(ExitEvent { code: None, signal: Some(9) }));
    }

    #[test]
    fn split_args_handles_edges() {
        assert!(split_args(b"").is_empty());
        assert_eq!(split_args(b"a\0b"), vec!["a", "b"]);
        assert_eq!(split_args(b"a\0\0"), vec!["a", ""]);
    }
}

#[cfg(test)]
mod prop_tests;
