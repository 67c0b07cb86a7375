//! A running container's state as the kernel shows it in `/proc`, turned
//! into the events that would have produced it: what a container that was
//! running before the agent started has already done (its sockets, its
//! processes, the files it wrote) is learned like what it does next, and a
//! profile can be checked against it ("what would protect mode refuse right
//! now?"). The text parsed here comes from a hostile container's kernel
//! objects only indirectly, but is parsed without panics and bounded all
//! the same.

use crate::event::{Event, EventKind, ExecEvent, FileEvent, FileOp, NetEvent, NetOp, ProcessRef, Protocol};
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// At most this many sockets are read from one `/proc/<pid>/net/*` file.
pub const MAX_SOCKETS: usize = 65_536;

/// TCP states as `/proc/net/tcp` numbers them (`include/net/tcp_states.h`).
pub const TCP_ESTABLISHED: u8 = 0x01;
pub const TCP_LISTEN: u8 = 0x0A;
/// An unconnected UDP socket shows as TCP_CLOSE.
pub const UDP_UNCONNECTED: u8 = 0x07;

/// One line of `/proc/<pid>/net/{tcp,tcp6,udp,udp6}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Socket {
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    pub state: u8,
}

/// Parses one `/proc/net/{tcp,udp}[6]` table. Lines that do not parse are
/// skipped; at most [`MAX_SOCKETS`] are returned.
pub fn parse_proc_net(text: &str) -> Vec<Socket> {
    text.lines().skip(1).filter_map(parse_line).take(MAX_SOCKETS).collect()
}

fn parse_line(line: &str) -> Option<Socket> {
    let mut f = line.split_whitespace();
    f.next()?; // "sl:"
    let local = parse_endpoint(f.next()?)?;
    let remote = parse_endpoint(f.next()?)?;
    let state = u8::from_str_radix(f.next()?, 16).ok()?;
    Some(Socket { local, remote, state })
}

/// `0100007F:0050` (IPv4: one 32-bit word in host byte order) or 32 hex
/// digits of IPv6 (four such words), then the port in hex.
fn parse_endpoint(s: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
        // The kernel prints the address's bytes (network order in memory)
        // as one native-endian word: its native bytes are the address.
        Some(w.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b)).to_canonical()
        }
        _ => return None,
    };
    Some((ip, port))
}

fn event(time_ns: u64, cgroup_id: u64, pid: u32, kind: EventKind) -> Event {
    Event { time_ns, cgroup_id, process: ProcessRef { pid, tid: pid, ..ProcessRef::default() }, kind }
}

/// The network events a container's sockets stand for: a listen per TCP
/// listening port, a bind per unconnected UDP port, an accept for each
/// established connection to a listening port (inbound), a connect for the
/// others (outbound) and for connected UDP sockets.
pub fn socket_events(tcp: &[Socket], udp: &[Socket], time_ns: u64, cgroup_id: u64, pid: u32) -> Vec<Event> {
    let listening: HashSet<u16> = tcp.iter().filter(|s| s.state == TCP_LISTEN).map(|s| s.local.1).collect();
    let mut out = Vec::new();
    let mut net = |op, proto, local: (IpAddr, u16), remote: (IpAddr, u16)| {
        out.push(event(
            time_ns,
            cgroup_id,
            pid,
            EventKind::Net(NetEvent {
                op,
                proto,
                saddr: local.0,
                sport: local.1,
                daddr: remote.0,
                dport: remote.1,
                result: 0,
                netns: 0,
                totals: None,
            }),
        ));
    };
    for s in tcp {
        match s.state {
            TCP_LISTEN => net(NetOp::Listen, Protocol::Tcp, s.local, s.remote),
            TCP_ESTABLISHED if listening.contains(&s.local.1) => net(NetOp::Accept, Protocol::Tcp, s.local, s.remote),
            TCP_ESTABLISHED => net(NetOp::Connect, Protocol::Tcp, s.local, s.remote),
            _ => {}
        }
    }
    for s in udp {
        if s.remote.1 != 0 {
            net(NetOp::Connect, Protocol::Udp, s.local, s.remote);
        } else if s.state == UDP_UNCONNECTED && s.local.1 != 0 {
            net(NetOp::Bind, Protocol::Udp, s.local, s.remote);
        }
    }
    out
}

/// A process found running in a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveProcess {
    pub pid: u32,
    /// The file it runs, as the container sees it.
    pub exe: String,
    /// The file it runs, as its parent (in the same container) runs; None
    /// when the parent is outside the container (the runtime started it).
    pub parent_exe: Option<String>,
}

/// The exec event a running process stands for. Its command line is not
/// used: programs rewrite it (`nginx: master process …`), so its arguments
/// are not learned (the event is marked truncated).
pub fn process_event(p: &LiveProcess, time_ns: u64, cgroup_id: u64) -> Event {
    event(
        time_ns,
        cgroup_id,
        p.pid,
        EventKind::Exec(ExecEvent {
            filename: p.exe.clone(),
            argv: vec![p.exe.clone()],
            parent_exe: p.parent_exe.clone(),
            parent_outside: p.parent_exe.is_none(),
            truncated: true,
            ..ExecEvent::default()
        }),
    )
}

/// The exec of a container's first process as the runtime runs it:
/// `filename` is argv\[0\] looked up on the container's `PATH` (as runc
/// does), the arguments are the spec's.
pub fn entrypoint_event(filename: &str, args: &[String], cwd: &str, time_ns: u64, cgroup_id: u64, pid: u32) -> Event {
    event(
        time_ns,
        cgroup_id,
        pid,
        EventKind::Exec(ExecEvent {
            filename: filename.to_string(),
            cwd: cwd.to_string(),
            argv: args.to_vec(),
            parent_outside: true,
            ..ExecEvent::default()
        }),
    )
}

/// A file the container wrote (found in its writable layer), as the event
/// that created it.
pub fn written_event(path: &str, time_ns: u64, cgroup_id: u64, pid: u32) -> Event {
    event(
        time_ns,
        cgroup_id,
        pid,
        EventKind::File(FileEvent { op: FileOp::Create, path: path.to_string(), old_path: None, host_path: String::new(), is_dir: false }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0
   1: 0500590A:0050 0100590A:D431 01 00000000:00000000 00:00000000 00000000     0        0 12346 1 0000000000000000 20 4 30 10 -1
   2: 0500590A:A2B0 0600590A:1F90 01 00000000:00000000 00:00000000 00000000     0        0 12347 1 0000000000000000 20 4 30 10 -1
   3: garbage
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0
   1: 0000000000000000FFFF00000500590A:1F90 0000000000000000FFFF00000100590A:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0
";
    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  1: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 3 2 0 0
  2: 0500590A:C350 0100590A:0035 01 00000000:00000000 00:00000000 00000000     0        0 4 2 0 0
";

    #[test]
    fn parses_proc_net_tables() {
        let t = parse_proc_net(TCP);
        assert_eq!(t.len(), 3, "the garbage line is skipped");
        assert_eq!(
            t[0],
            Socket { local: (Ipv4Addr::UNSPECIFIED.into(), 80), remote: (Ipv4Addr::UNSPECIFIED.into(), 0), state: TCP_LISTEN }
        );
        assert_eq!(t[1].local, ("10.89.0.5".parse().unwrap(), 80));
        assert_eq!(t[1].remote, ("10.89.0.1".parse().unwrap(), 54321));
        let t6 = parse_proc_net(TCP6);
        assert_eq!(t6[0].local, (Ipv6Addr::UNSPECIFIED.into(), 8080));
        assert_eq!(t6[1].local, ("10.89.0.5".parse().unwrap(), 8080), "v4-mapped addresses are IPv4");
        assert_eq!(t6[1].remote.1, 40000);
    }

    #[test]
    fn sockets_become_listens_accepts_connects_and_binds() {
        let tcp = parse_proc_net(TCP);
        let udp = parse_proc_net(UDP);
        let evs = socket_events(&tcp, &udp, 1, 7, 42);
        let ops: Vec<(NetOp, Protocol, u16, u16)> = evs
            .iter()
            .map(|e| match &e.kind {
                EventKind::Net(n) => (n.op, n.proto, n.sport, n.dport),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            ops,
            [
                (NetOp::Listen, Protocol::Tcp, 80, 0),
                (NetOp::Accept, Protocol::Tcp, 80, 54321),
                (NetOp::Connect, Protocol::Tcp, 41648, 8080),
                (NetOp::Bind, Protocol::Udp, 53, 0),
                (NetOp::Connect, Protocol::Udp, 50000, 53),
            ]
        );
        assert!(evs.iter().all(|e| e.cgroup_id == 7 && e.process.pid == 42));
    }

    #[test]
    fn hostile_text_never_panics() {
        for text in
            ["", "\n", "x\n1: :::\n", "h\n0: 0000000G:0050 00000000:0000 0A", "h\n0: 00000000:FFFFF 00000000:0000 0A", "h\n0: 0:0 0:0 ZZ"]
        {
            let _ = parse_proc_net(text);
        }
        let many = format!("h\n{}", "0: 00000000:0050 00000000:0000 0A\n".repeat(MAX_SOCKETS + 5));
        assert_eq!(parse_proc_net(&many).len(), MAX_SOCKETS);
    }
}

#[cfg(test)]
mod prop_tests {
    use super::*;
    use lancet_testkit::mutate::{apply, edits};
    use proptest::prelude::*;

    /// An endpoint as the kernel prints it: the address's bytes read as
    /// native-endian 32-bit words, in hex, then the port.
    fn kernel_endpoint(ip: IpAddr, port: u16) -> String {
        let bytes: Vec<u8> = match ip {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        let words: String = bytes.chunks(4).map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))).collect();
        format!("{words}:{port:04X}")
    }

    fn socket() -> impl Strategy<Value = (IpAddr, u16, IpAddr, u16, u8)> {
        let ip = prop_oneof![any::<[u8; 4]>().prop_map(IpAddr::from), any::<[u8; 16]>().prop_map(IpAddr::from)];
        (ip.clone(), any::<u16>(), ip, any::<u16>(), any::<u8>())
    }

    fn table(socks: &[(IpAddr, u16, IpAddr, u16, u8)]) -> String {
        let mut t = String::from("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n");
        for (i, (l, lp, r, rp, st)) in socks.iter().enumerate() {
            t.push_str(&format!(
                "{i:4}: {} {} {st:02X} 00000000:00000000 00:00000000 00000000     0        0 {} 1 0\n",
                kernel_endpoint(*l, *lp),
                kernel_endpoint(*r, *rp),
                1000 + i
            ));
        }
        t
    }

    /// v4-mapped IPv6 addresses read as IPv4.
    fn canonical(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(a) => a.to_canonical(),
            v4 => v4,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn kernel_tables_read_back(socks in proptest::collection::vec(socket(), 0..40)) {
            // IPv4 and IPv6 sockets live in separate files.
            let v4: Vec<_> = socks.iter().copied().filter(|s| s.0.is_ipv4() == s.2.is_ipv4()).collect();
            let got = parse_proc_net(&table(&v4));
            let want: Vec<Socket> = v4.iter().map(|&(l, lp, r, rp, state)| Socket { local: (canonical(l), lp), remote: (canonical(r), rp), state }).collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn mutated_tables_never_panic(socks in proptest::collection::vec(socket(), 1..10), e in edits(8)) {
            let text = apply(&table(&socks), &e);
            let got = parse_proc_net(&text);
            prop_assert!(got.len() <= text.lines().count().saturating_sub(1));
            let _ = socket_events(&got, &got, 1, 2, 3);
        }

        #[test]
        fn any_text_never_panics(text in any::<String>()) {
            let _ = parse_proc_net(&text);
        }
    }
}
