//! The fast writer against the serde one: the same bytes for every kind of
//! event and attribution, strings that need escaping included.

use super::*;
use crate::attribution::Runtime;
use crate::event::{ExecEvent, ExitEvent, FileEvent, NetEvent, ProcessRef, Protocol, TcpTotals};
use crate::output::write_falco_json;

fn container(labels: bool, pod: bool) -> Attribution {
    let mut c = ContainerInfo {
        id: "2e8bdd302d6f3109f54b92f320cfa00a76d6653727e89863aa6329a9cdbbea02".into(),
        runtime: Runtime::Podman,
        name: "we\"b\u{1}".into(),
        image: "registry:5000/team/web:1.2".into(),
        image_id: "sha256:aa".into(),
        image_digest: "sha256:0f36".into(),
        ..Default::default()
    };
    if labels {
        c.labels.insert("app".into(), "shop".into());
        c.labels.insert("a\\b".into(), "é\n".into());
    }
    if pod {
        c.pod = Some(PodInfo { name: "web-7d".into(), namespace: "shop".into(), uid: "u-1".into(), container_name: "web".into() });
    }
    Attribution::Container(Arc::new(c))
}

fn event(kind: EventKind) -> Event {
    Event {
        time_ns: 1_795_873_138_000_000_001,
        cgroup_id: 7,
        process: ProcessRef { pid: 10, tid: 11, ppid: 1, uid: 33, gid: 34, comm: "s\th".into(), start_ns: 0, runtime: false },
        kind,
    }
}

fn kinds() -> Vec<EventKind> {
    let net = |op, result| {
        EventKind::Net(NetEvent {
            op,
            proto: Protocol::Tcp,
            saddr: "10.0.0.2".parse().unwrap(),
            sport: 40000,
            daddr: "fd00::3".parse().unwrap(),
            dport: 8080,
            result,
            netns: 1,
            totals: Some(TcpTotals { bytes_sent: 1, bytes_received: 2, outbound: Some(true) }),
        })
    };
    let ends = |op, proto, saddr: &str, sport, daddr: &str, dport| {
        let (saddr, daddr) = (saddr.parse().unwrap(), daddr.parse().unwrap());
        EventKind::Net(NetEvent { op, proto, saddr, sport, daddr, dport, result: 0, netns: 1, totals: None })
    };
    let file = |op, path: &str, old: Option<&str>| {
        EventKind::File(FileEvent {
            op,
            path: path.into(),
            old_path: old.map(str::to_string),
            host_path: format!("/var/lib/x/diff{path}"),
            is_dir: false,
        })
    };
    vec![
        EventKind::Exec(ExecEvent {
            filename: "/bin/i\"d".into(),
            cwd: "/".into(),
            argv: vec!["id".into(), "-u".into(), "x\\y\u{7f}".into()],
            parent_comm: "bash".into(),
            parent_exe: Some("/bin/bash".into()),
            exe_ino: 99,
            truncated: true,
            ..Default::default()
        }),
        EventKind::Exec(ExecEvent { filename: "/bin/true".into(), argv: vec!["true".into()], ..Default::default() }),
        EventKind::Exec(ExecEvent::default()),
        EventKind::Fork { child_pid: 12, child_start_ns: 5 },
        EventKind::Exit(ExitEvent { code: Some(-3), signal: None }),
        EventKind::Exit(ExitEvent { code: None, signal: Some(9) }),
        EventKind::Exit(ExitEvent { code: None, signal: None }),
        net(NetOp::Connect, 0),
        net(NetOp::Connect, 111),
        net(NetOp::Accept, 4242),
        net(NetOp::Listen, 0),
        net(NetOp::Bind, 13),
        net(NetOp::Close, 0),
        file(FileOp::Create, "/tmp/a b", None),
        file(FileOp::Modify, "/tmp/\u{1b}[31m", None),
        file(FileOp::Delete, "/x", None),
        file(FileOp::Rename, "/tmp/new", Some("/tmp/old")),
        file(FileOp::Chmod, "noslash", None),
        file(FileOp::Open, "/etc/shadow", None),
        // A host path that does not end with the container's path.
        EventKind::File(FileEvent {
            op: FileOp::Modify,
            path: "/etc/a\"b".into(),
            old_path: None,
            host_path: "/proc/1/root/etc/\\b".into(),
            is_dir: false,
        }),
        EventKind::CgroupMkdir { id: 3, path: "/libpod_parent/libpod-abc".into() },
        EventKind::CgroupRmdir { id: 3, path: "/x".into() },
        // Both ends of one family, each written once and copied.
        ends(NetOp::Connect, Protocol::Udp, "192.168.100.254", 0, "0.0.0.0", 65535),
        ends(NetOp::Close, Protocol::Tcp, "::ffff:10.0.0.1", 9, "2001:db8::1", 10),
    ]
}

fn attributions() -> Vec<Attribution> {
    vec![
        Attribution::Host,
        Attribution::Unknown { cgroup_id: 9, cgroup_path: Some("/a/\"b".into()), reason: "not yet".into() },
        Attribution::Unknown { cgroup_id: 9, cgroup_path: None, reason: "gone".into() },
        container(false, false),
        container(true, true),
        Attribution::Container(Arc::new(ContainerInfo { id: "short".into(), runtime: Runtime::Crio, ..Default::default() })),
    ]
}

/// `lines` writes for `r` the line serde writes.
fn assert_as_serde(lines: &mut JsonLines, r: &Record<'_>, rule: &str, priority: &str) {
    let mut want = Vec::new();
    write_falco_json(&mut want, r, rule, priority).unwrap();
    want.push(b'\n');
    lines.clear();
    lines.push(r, rule, priority);
    assert_eq!(String::from_utf8_lossy(lines.bytes()), String::from_utf8_lossy(&want), "{:?}", r.event.kind);
}

#[test]
fn the_same_bytes_as_serde_for_every_kind_and_attribution() {
    let mut lines = JsonLines::new();
    for a in attributions() {
        for (i, kind) in kinds().into_iter().enumerate() {
            let mut ev = event(kind);
            // Times across seconds, and the same second again.
            ev.time_ns += (i as u64 / 3) * 1_000_000_000 + i as u64 * 7;
            assert_as_serde(&mut lines, &Record { event: &ev, attribution: &a, hostname: "h\"ost" }, "lancet trace", "Informational");
        }
    }
    // `evt.time` around the first second, where it has no second digits.
    for t in [0, 7, 999_999_999, 1_000_000_000, 1_000_000_001, 10_000_000_000, 1_795_873_138_000_000_000] {
        let ev = Event { time_ns: t, ..event(kinds().remove(0)) };
        assert_as_serde(&mut lines, &Record { event: &ev, attribution: &Attribution::Host, hostname: "h" }, "r", "p");
    }
}

#[test]
fn a_process_field_that_differs_from_the_last_line_is_written_anew() {
    let mut lines = JsonLines::new();
    let base = event(kinds().swap_remove(13));
    let changes: [&dyn Fn(&mut Event); 8] = [
        &|_| {},
        &|e| e.process.pid += 1,
        &|e| e.process.tid += 1,
        &|e| e.process.ppid += 1,
        &|e| e.process.uid += 1,
        &|e| e.process.gid += 1,
        &|e| e.cgroup_id += 1,
        &|e| e.process.comm.push('x'),
    ];
    let a = container(false, false);
    // Each line differs from the one before in one field (or, the second
    // time, in none).
    let mut ev = base;
    for change in changes {
        change(&mut ev);
        for _ in 0..2 {
            assert_as_serde(&mut lines, &Record { event: &ev, attribution: &a, hostname: "h" }, "r", "p");
        }
    }
}

#[test]
fn processes_in_turn_each_get_their_own_fields() {
    // Four processes (differing in one key field each) in an order that
    // alternates two, brings a third in and goes back to one evicted.
    let mut lines = JsonLines::new();
    let a = container(false, false);
    let procs: Vec<Event> = (0..4u32)
        .map(|i| {
            let mut ev = event(kinds().swap_remove(13));
            match i {
                1 => ev.process.pid += 1,
                2 => ev.cgroup_id += 1,
                3 => ev.process.comm.push('x'),
                _ => {}
            }
            ev
        })
        .collect();
    for i in [0, 1, 0, 1, 1, 2, 0, 2, 1, 0, 1, 3, 3, 0, 2, 3, 1, 0, 0, 1] {
        assert_as_serde(&mut lines, &Record { event: &procs[i], attribution: &a, hostname: "h" }, "r", "p");
    }
}

#[test]
fn time_is_formatted_from_the_cached_second() {
    let mut lines = JsonLines::new();
    assert_eq!(&lines.time(0), b"1970-01-01T00:00:00.000000000Z");
    assert_eq!(&lines.time(1_795_873_138_089_530_083), b"2026-11-28T13:38:58.089530083Z");
    assert_eq!(&lines.time(1_795_873_138_000_000_007), b"2026-11-28T13:38:58.000000007Z");
    assert_eq!(&lines.time(951_782_400_000_000_001), b"2000-02-29T00:00:00.000000001Z");
}

#[test]
fn the_container_cache_is_bounded() {
    let mut lines = JsonLines::new();
    let ev = event(EventKind::Fork { child_pid: 1, child_start_ns: 0 });
    for _ in 0..MAX_CONTAINERS + 5 {
        let a = container(false, false);
        lines.push(&Record { event: &ev, attribution: &a, hostname: "h" }, "r", "p");
        lines.clear();
    }
    assert!(lines.containers.len() <= MAX_CONTAINERS);
}

#[test]
fn integers_are_written_as_display_writes_them() {
    let powers = (0..20).flat_map(|k| [10u64.pow(k) - 1, 10u64.pow(k)]);
    for v in [0u64, 1, 11, 101, 65535, 1_800_000_000_000_000_000, u64::MAX].into_iter().chain(powers) {
        // After what the line holds already.
        let mut b = b"{\"x\":".to_vec();
        super::uint(&mut b, v);
        assert_eq!(String::from_utf8(b).unwrap(), format!("{{\"x\":{v}"));
    }
    let mut b = Vec::new();
    super::int(&mut b, i64::MIN);
    assert_eq!(String::from_utf8(b).unwrap(), i64::MIN.to_string());
}

proptest::proptest! {
    /// Every byte that needs escaping is found wherever it lies in a
    /// string (in an 8-byte word or in the tail), and the escaped text is
    /// serde_json's.
    #[test]
    fn strings_are_escaped_as_serde_escapes_them(
        prefix in "[a-z/é.-]{0,20}",
        c in proptest::char::range('\u{0}', '\u{7f}'),
        suffix in "[a-z/é.-]{0,20}",
    ) {
        let s = format!("{prefix}{c}{suffix}");
        let mut b = Vec::new();
        super::escape(&mut b, &s);
        let want = serde_json::to_string(&s).unwrap();
        proptest::prop_assert_eq!(String::from_utf8(b).unwrap(), &want[1..want.len() - 1]);
    }
}
