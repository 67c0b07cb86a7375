use super::*;
use crate::event::{ExecEvent, FileEvent, NetEvent, ProcessRef};
use std::net::{Ipv4Addr, Ipv6Addr};

const T0: u64 = 1_764_336_540_123_456_789; // 2025-11-28T13:29:00.123456789Z
const SEC: u64 = 1_000_000_000;
const MIN: u64 = 60 * SEC;

fn ev(kind: EventKind) -> Event {
    Event { time_ns: T0, cgroup_id: 7, process: ProcessRef { pid: 10, comm: "x".into(), ..ProcessRef::default() }, kind }
}

fn exec(path: &str, parent: &str, args: &[&str]) -> Event {
    let mut argv = vec![path.rsplit('/').next().unwrap_or(path).to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    ev(EventKind::Exec(ExecEvent {
        filename: path.into(),
        cwd: "/".into(),
        argv,
        parent_comm: "comm".into(),
        parent_exe: Some(parent.into()),
        ..ExecEvent::default()
    }))
}

fn net(op: NetOp, proto: Protocol, local: (IpAddr, u16), remote: (IpAddr, u16), result: i32) -> Event {
    ev(EventKind::Net(NetEvent {
        op,
        proto,
        saddr: local.0,
        sport: local.1,
        daddr: remote.0,
        dport: remote.1,
        result,
        netns: 1,
        totals: None,
    }))
}

fn ip4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

const ANY: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
const ME: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 88, 0, 2));

fn listen(port: u16) -> Event {
    net(NetOp::Listen, Protocol::Tcp, (ANY, port), (ANY, 0), 0)
}

fn connect(ip: IpAddr, port: u16, proto: Protocol) -> Event {
    net(NetOp::Connect, proto, (ME, 40000), (ip, port), 0)
}

fn accept(ip: IpAddr, port: u16) -> Event {
    net(NetOp::Accept, Protocol::Tcp, (ME, port), (ip, 51000), 0)
}

fn file(op: FileOp, path: &str) -> Event {
    ev(EventKind::File(FileEvent { op, path: path.into(), old_path: None, host_path: format!("/upper{path}"), is_dir: false }))
}

fn new_profile() -> Profile {
    Profile::new("localhost/web:1", "sha256:abcdef0123456789", T0)
}

/// A profile that has seen one of everything.
fn learned() -> Profile {
    let mut p = new_profile();
    let web = PeerRef::Workload("sha256:db".into());
    assert!(p.observe(&exec("/bin/httpd", "/bin/sh", &["-f", "-p", "8080"]), None, T0 + SEC));
    assert!(p.observe(&listen(8080), None, T0 + SEC));
    assert!(p.observe(&connect(ip4(10, 88, 0, 3), 5432, Protocol::Tcp), Some(&web), T0 + SEC));
    assert!(p.observe(&connect(ip4(10, 88, 0, 1), 53, Protocol::Udp), None, T0 + SEC));
    assert!(p.observe(&accept(ip4(10, 88, 0, 9), 8080), None, T0 + SEC));
    assert!(p.observe(&file(FileOp::Create, "/tmp/upload.1"), None, T0 + SEC));
    assert!(p.observe(&file(FileOp::Open, "/etc/shadow"), None, T0 + SEC));
    p
}

#[test]
fn new_profile_is_learning_and_named() {
    let p = new_profile();
    assert_eq!(p.mode(), Mode::Learn);
    assert_eq!(p.name(), "localhost-web-1");
    assert_eq!(p.digest(), "sha256:abcdef0123456789");
    assert_eq!(p.image(), "localhost/web:1");
    assert!(p.is_empty());
    assert_eq!(p.spec().learning.started.ns(), T0);
}

#[test]
fn learns_each_section() {
    let p = learned();
    let s = p.spec();
    assert_eq!(s.executables.len(), 1);
    let e = &s.executables[0];
    assert_eq!((e.path.as_str(), e.parents.as_slice(), e.count), ("/bin/httpd", &["/bin/sh".to_string()][..], 1));
    assert_eq!(e.args, vec![vec!["-f".to_string(), "-p".into(), "8080".into()]]);
    assert_eq!((s.listening[0].port, s.listening[0].protocol), (8080, Protocol::Tcp));
    assert_eq!(s.outbound[0].peer, Peer::Workload("sha256:db".into()));
    assert_eq!((s.outbound[0].port, s.outbound[0].protocol), (5432, Protocol::Tcp));
    assert_eq!(s.outbound[1].peer, Peer::Cidr("10.88.0.1/32".parse().unwrap()));
    assert_eq!((s.outbound[1].port, s.outbound[1].protocol), (53, Protocol::Udp));
    assert_eq!(s.inbound[0].peer, Peer::Cidr("10.88.0.9/32".parse().unwrap()));
    assert_eq!(s.inbound[0].port, 8080);
    assert_eq!(s.written_dirs[0].path, "/tmp");
    assert_eq!(s.sensitive_reads[0].path, "/etc/shadow");
    assert_eq!(p.len(), 7);
    assert_eq!(s.learning.last_new.ns(), T0 + SEC);
}

#[test]
fn known_things_are_not_relearned_but_counted() {
    let mut p = learned();
    let web = PeerRef::Workload("sha256:db".into());
    let t = T0 + 2 * SEC;
    assert!(!p.observe(&exec("/bin/httpd", "/bin/sh", &["-f", "-p", "8080"]), None, t));
    assert!(!p.observe(&listen(8080), None, t));
    assert!(!p.observe(&connect(ip4(10, 88, 0, 3), 5432, Protocol::Tcp), Some(&web), t));
    assert!(!p.observe(&connect(ip4(10, 88, 0, 1), 53, Protocol::Udp), None, t));
    assert!(!p.observe(&accept(ip4(10, 88, 0, 9), 8080), None, t));
    assert!(!p.observe(&file(FileOp::Modify, "/tmp/other"), None, t));
    assert!(!p.observe(&file(FileOp::Open, "/etc/shadow"), None, t));
    let s = p.spec();
    assert_eq!(s.learning.last_new.ns(), T0 + SEC, "nothing new, lastNew unchanged");
    for (first, last, count) in [
        (s.executables[0].first_seen, s.executables[0].last_seen, s.executables[0].count),
        (s.listening[0].first_seen, s.listening[0].last_seen, s.listening[0].count),
        (s.outbound[0].first_seen, s.outbound[0].last_seen, s.outbound[0].count),
        (s.outbound[1].first_seen, s.outbound[1].last_seen, s.outbound[1].count),
        (s.inbound[0].first_seen, s.inbound[0].last_seen, s.inbound[0].count),
        (s.written_dirs[0].first_seen, s.written_dirs[0].last_seen, s.written_dirs[0].count),
        (s.sensitive_reads[0].first_seen, s.sensitive_reads[0].last_seen, s.sensitive_reads[0].count),
    ] {
        assert_eq!((first.ns(), last.ns(), count), (T0 + SEC, t, 2));
    }
    assert_eq!(p.len(), 7);
}

#[test]
fn ignored_events_teach_nothing_and_never_deviate() {
    let mut p = new_profile();
    let ignored = [
        ev(EventKind::Fork { child_pid: 3, child_start_ns: 0 }),
        ev(EventKind::Exit(crate::event::ExitEvent { code: Some(0), signal: None })),
        ev(EventKind::CgroupMkdir { id: 1, path: "/x".into() }),
        net(NetOp::Close, Protocol::Tcp, (ME, 1), (ME, 2), 0),
        net(NetOp::Connect, Protocol::Tcp, (ME, 1), (ip4(1, 2, 3, 4), 80), 111), // refused
        net(NetOp::Bind, Protocol::Udp, (ANY, 0), (ANY, 0), 0),                  // ephemeral
        file(FileOp::Delete, "/tmp/x"),
        file(FileOp::Chmod, "/tmp/x"),
    ];
    for e in &ignored {
        assert!(!p.observe(e, None, T0), "{e:?}");
        assert_eq!(p.check(e, None), None, "{e:?}");
    }
    assert!(p.is_empty());
}

#[test]
fn parents_and_args() {
    let mut p = new_profile();
    assert!(p.observe(&exec("/bin/sh", "/usr/bin/runc", &["-c", "a"]), None, T0));
    assert!(p.observe(&exec("/bin/sh", "/bin/httpd", &["-c", "a"]), None, T0), "new parent");
    assert!(p.observe(&exec("/bin/sh", "/bin/httpd", &["-c", "b"]), None, T0), "new args");
    assert!(!p.observe(&exec("/bin/sh", "/bin/httpd", &["-c", "b"]), None, T0));
    // parent_comm stands in when the parent's path is unknown.
    let mut e = exec("/bin/sh", "", &["-c", "a"]);
    if let EventKind::Exec(x) = &mut e.kind {
        x.parent_exe = None;
        x.parent_comm = "cron".into();
    }
    assert!(p.observe(&e, None, T0));
    assert_eq!(p.spec().executables[0].parents, ["/usr/bin/runc", "/bin/httpd", "cron"]);
    for i in 0..MAX_ARGS_LISTS {
        p.observe(&exec("/bin/sh", "/bin/httpd", &["-c", &format!("cmd{i}")]), None, T0);
    }
    let x = &p.spec().executables[0];
    assert_eq!(x.args_pattern, Some(ArgsPattern::Any));
    assert!(x.args.is_empty());
    // Any args now; what is new is the shell's code.
    assert!(p.observe(&exec("/bin/sh", "/bin/httpd", &["-c", "anything"]), None, T0));
    assert!(p.spec().executables[0].code.iter().any(|c| c == "anything"));
    assert!(!p.observe(&exec("/bin/sh", "/bin/httpd", &["-c", "anything"]), None, T0));
    // Over-long argument lists go straight to the pattern.
    let long: Vec<String> = (0..=MAX_ARGV).map(|i| i.to_string()).collect();
    let long: Vec<&str> = long.iter().map(String::as_str).collect();
    assert!(p.observe(&exec("/bin/env", "/bin/sh", &long), None, T0));
    assert_eq!(p.spec().executables[1].args_pattern, Some(ArgsPattern::Any));
}

#[test]
fn sections_are_bounded() {
    let mut p = new_profile();
    // Names without digits: digit runs are collapsed in anchors.
    let name = |i: usize| -> String { (0..3).map(|k| char::from(b'a' + ((i / 26usize.pow(k)) % 26) as u8)).collect() };
    for i in 0..MAX_ENTRIES {
        assert!(p.observe(&file(FileOp::Create, &format!("/data/d{}/f", name(i))), None, T0));
    }
    assert!(!p.observe(&file(FileOp::Create, "/data/more/f"), None, T0 + SEC));
    assert!(!p.observe(&file(FileOp::Create, "/data/more2/f"), None, T0 + SEC));
    assert_eq!(p.spec().written_dirs.len(), MAX_ENTRIES);
    assert_eq!(p.spec().overflow.written_dirs, 2);
    assert_eq!(p.spec().learning.last_new.ns(), T0, "overflow is not learning");
    // Known entries still count; unlearned ones deviate.
    assert!(!p.observe(&file(FileOp::Create, &format!("/data/d{}/g", name(0))), None, T0 + SEC));
    assert_eq!(p.spec().written_dirs[0].count, 2);
    assert_eq!(p.check(&file(FileOp::Create, "/data/more/f"), None), Some(Deviation::NewWrittenDir { dir: "/data/more".into() }));
    // Other sections are unaffected.
    assert!(p.observe(&listen(80), None, T0));
    // Overflow survives YAML.
    let q = Profile::from_yaml(&p.to_yaml().unwrap(), "p.yaml").unwrap();
    assert_eq!(q.spec().overflow.written_dirs, 2);

    let mut p = new_profile();
    for port in 1..=MAX_ENTRIES as u16 {
        p.observe(&connect(ME, port, Protocol::Tcp), None, T0);
    }
    assert!(!p.observe(&connect(ME, 9999, Protocol::Tcp), None, T0));
    assert_eq!(p.spec().overflow.outbound, 1);
    for i in 0..MAX_PARENTS + 1 {
        p.observe(&exec("/bin/sh", &format!("/p{i}"), &[]), None, T0);
    }
    assert_eq!(p.spec().executables[0].parents.len(), MAX_PARENTS);
    assert_eq!(p.spec().overflow.executables, 1);
}

#[test]
fn check_known_events() {
    let p = learned();
    let web = PeerRef::Workload("sha256:db".into());
    assert_eq!(p.check(&exec("/bin/httpd", "/bin/sh", &["other", "args"]), None), None);
    assert_eq!(p.check(&listen(8080), None), None);
    assert_eq!(p.check(&net(NetOp::Bind, Protocol::Tcp, (ANY, 8080), (ANY, 0), 0), None), None);
    assert_eq!(p.check(&connect(ip4(10, 88, 0, 3), 5432, Protocol::Tcp), Some(&web)), None);
    assert_eq!(p.check(&connect(ip4(10, 88, 0, 1), 53, Protocol::Udp), None), None);
    assert_eq!(p.check(&connect(ip4(10, 88, 0, 1), 53, Protocol::Udp), Some(&PeerRef::Ip(ip4(10, 88, 0, 1)))), None);
    // A v4-mapped v6 address is the same peer.
    let mapped = IpAddr::V6(Ipv4Addr::new(10, 88, 0, 1).to_ipv6_mapped());
    assert_eq!(p.check(&connect(mapped, 53, Protocol::Udp), None), None);
    assert_eq!(p.check(&accept(ip4(10, 88, 0, 9), 8080), None), None);
    assert_eq!(p.check(&file(FileOp::Rename, "/tmp/x"), None), None);
    assert_eq!(p.check(&file(FileOp::Open, "/etc/shadow"), None), None);
}

#[test]
fn check_reports_each_deviation() {
    let p = learned();
    let web = PeerRef::Workload("sha256:db".into());
    let cases: Vec<(Event, Option<PeerRef>, Deviation)> = vec![
        (exec("/bin/nc", "/bin/sh", &[]), None, Deviation::NewExecutable { path: "/bin/nc".into() }),
        (exec("/bin/httpd", "/bin/bash", &[]), None, Deviation::NewParent { path: "/bin/httpd".into(), parent: "/bin/bash".into() }),
        (exec_as("/bin/httpd", "nginx", "/bin/sh"), None, Deviation::NewName { path: "/bin/httpd".into(), name: "nginx".into() }),
        (listen(4444), None, Deviation::NewListen { port: 4444, proto: Protocol::Tcp }),
        (net(NetOp::Listen, Protocol::Udp, (ANY, 8080), (ANY, 0), 0), None, Deviation::NewListen { port: 8080, proto: Protocol::Udp }),
        (
            connect(ip4(10, 88, 0, 3), 22, Protocol::Tcp),
            Some(web.clone()),
            Deviation::NewOutbound { peer: Peer::Workload("sha256:db".into()), port: 22, proto: Protocol::Tcp },
        ),
        (
            connect(ip4(203, 0, 113, 5), 443, Protocol::Tcp),
            None,
            Deviation::NewOutbound { peer: Peer::Cidr("203.0.113.5/32".parse().unwrap()), port: 443, proto: Protocol::Tcp },
        ),
        (
            connect(IpAddr::V6(Ipv6Addr::LOCALHOST), 53, Protocol::Udp),
            None,
            Deviation::NewOutbound { peer: Peer::Cidr("::1/128".parse().unwrap()), port: 53, proto: Protocol::Udp },
        ),
        (
            connect(ip4(10, 88, 0, 1), 53, Protocol::Udp),
            Some(PeerRef::Host("evil.example".into())),
            Deviation::NewOutbound { peer: Peer::Host("evil.example".into()), port: 53, proto: Protocol::Udp },
        ),
        (
            accept(ip4(10, 88, 0, 10), 8080),
            None,
            Deviation::NewInbound { peer: Peer::Cidr("10.88.0.10/32".parse().unwrap()), port: 8080, proto: Protocol::Tcp },
        ),
        (
            accept(ip4(10, 88, 0, 9), 8080),
            Some(web.clone()),
            Deviation::NewInbound { peer: Peer::Workload("sha256:db".into()), port: 8080, proto: Protocol::Tcp },
        ),
        (file(FileOp::Create, "/srv/www/x"), None, Deviation::NewWrittenDir { dir: "/srv/www".into() }),
        (file(FileOp::Modify, "/x"), None, Deviation::NewWrittenDir { dir: "/".into() }),
        (file(FileOp::Open, "/etc/sudoers"), None, Deviation::NewSensitiveRead { path: "/etc/sudoers".into() }),
    ];
    for (e, peer, want) in cases {
        let got = p.check(&e, peer.as_ref());
        assert_eq!(got.as_ref(), Some(&want), "{e:?}");
        assert!(!want.to_string().is_empty());
        assert!(want.kind().starts_with("new_"));
        // What deviates is exactly what observe would learn.
        let mut q = p.clone();
        assert!(q.observe(&e, peer.as_ref(), T0 + MIN), "{e:?}");
        assert_eq!(q.check(&e, peer.as_ref()), None, "{e:?}");
    }
    let d = Deviation::NewOutbound { peer: Peer::Cidr("203.0.113.5/32".parse().unwrap()), port: 443, proto: Protocol::Tcp };
    assert_eq!(d.to_string(), "outbound connection to 203.0.113.5 port 443/tcp is not in the profile");
    assert_eq!(
        serde_json::to_value(&d).unwrap(),
        serde_json::json!({"type": "new_outbound", "peer": {"cidr": "203.0.113.5/32"}, "port": 443, "proto": "tcp"})
    );
}

#[test]
fn wider_cidrs_and_any_parent_written_by_hand() {
    let yaml = format!(
        "apiVersion: lancet.dev/v1alpha1
kind: Profile
metadata:
  name: web
spec:
  image: web
  imageDigest: sha256:1
  mode: monitor
  modeSince: {t}
  learning: {{started: {t}, lastNew: {t}}}
  executables:
  - path: /bin/ls
  outbound:
  - peer: {{cidr: 10.0.0.0/24}}
    port: 53
    protocol: udp
",
        t = Timestamp(T0)
    );
    let mut p = Profile::from_yaml(&yaml, "hand.yaml").unwrap();
    assert_eq!(p.check(&exec("/bin/ls", "/anything", &[]), None), None, "no parents listed: any parent");
    assert_eq!(p.check(&connect(ip4(10, 0, 0, 77), 53, Protocol::Udp), None), None);
    assert!(p.check(&connect(ip4(10, 0, 1, 77), 53, Protocol::Udp), None).is_some());
    assert!(p.check(&connect(ip4(10, 0, 0, 77), 54, Protocol::Udp), None).is_some());
    // Observing an address inside the CIDR counts against the CIDR entry.
    assert!(!p.observe(&connect(ip4(10, 0, 0, 5), 53, Protocol::Udp), None, T0 + SEC));
    assert_eq!(p.spec().outbound.len(), 1);
    assert_eq!(p.spec().outbound[0].count, 1);
}

#[test]
fn merge_replicas() {
    let mut a = learned();
    let mut b = Profile::new("localhost/web:1", "sha256:abcdef0123456789", T0 - MIN);
    assert!(b.observe(&exec("/bin/httpd", "/bin/sh", &["-f", "-p", "8080"]), None, T0 - 30 * SEC));
    assert!(!b.observe(&exec("/bin/httpd", "/bin/sh", &["-f", "-p", "8080"]), None, T0 + MIN));
    assert!(b.observe(&exec("/bin/httpd", "/usr/bin/tini", &["-f"]), None, T0 + MIN));
    assert!(b.observe(&listen(9090), None, T0 + MIN));
    assert!(b.observe(&connect(ip4(10, 88, 0, 1), 53, Protocol::Udp), None, T0 + 2 * MIN));
    assert!(b.observe(&file(FileOp::Open, "/etc/passwd"), None, T0 + MIN));
    b.spec.overflow.inbound = 3;
    let before = a.clone();
    a.merge(&b);
    let s = a.spec();
    let e = &s.executables[0];
    assert_eq!((e.first_seen.ns(), e.last_seen.ns(), e.count), (T0 - 30 * SEC, T0 + MIN, 4));
    assert_eq!(e.parents, ["/bin/sh", "/usr/bin/tini"]);
    assert_eq!(e.args.len(), 2);
    assert_eq!(s.listening.len(), 2);
    assert_eq!(s.outbound.len(), 2);
    let dns = &s.outbound[1];
    assert_eq!((dns.first_seen.ns(), dns.last_seen.ns(), dns.count), (T0 + SEC, T0 + 2 * MIN, 2));
    assert_eq!(s.sensitive_reads.len(), 2);
    assert_eq!(s.overflow.inbound, 3);
    assert_eq!(s.learning.started.ns(), T0 - MIN);
    assert_eq!(s.learning.last_new.ns(), T0 + 2 * MIN);
    assert_eq!(a.mode(), Mode::Learn);
    // The index follows the merge.
    assert_eq!(a.check(&listen(9090), None), None);
    assert_eq!(a.check(&exec("/bin/httpd", "/usr/bin/tini", &[]), None), None);
    assert_eq!(before.check(&listen(9090), None), Some(Deviation::NewListen { port: 9090, proto: Protocol::Tcp }));
    // Merging is idempotent on entries; counts add up.
    let n = a.len();
    let copy = a.clone();
    a.merge(&copy);
    assert_eq!(a.len(), n);
    assert_eq!(a.spec().executables[0].count, 8);
    // "*" wins.
    let mut c = new_profile();
    for i in 0..=MAX_ARGS_LISTS {
        c.observe(&exec("/bin/httpd", "/bin/sh", &[&i.to_string()]), None, T0);
    }
    a.merge(&c);
    assert_eq!(a.spec().executables[0].args_pattern, Some(ArgsPattern::Any));
}

#[test]
fn diff_lists_added_and_removed() {
    let a = learned();
    let mut b = a.clone();
    b.observe(&exec("/bin/httpd", "/usr/bin/tini", &[]), None, T0);
    b.observe(&listen(9090), None, T0);
    b.observe(&connect(ip4(1, 1, 1, 1), 53, Protocol::Udp), None, T0);
    let mut c = new_profile();
    c.merge(&b); // the same entries, learned through merge
    let lines: Vec<String> = a.diff(&b).iter().map(ToString::to_string).collect();
    assert_eq!(lines, ["+ executables: /bin/httpd <- /usr/bin/tini", "+ listening: 9090/tcp", "+ outbound: 1.1.1.1 53/udp"]);
    let back: Vec<String> = b.diff(&a).iter().map(ToString::to_string).collect();
    assert_eq!(back, ["- executables: /bin/httpd <- /usr/bin/tini", "- listening: 9090/tcp", "- outbound: 1.1.1.1 53/udp"]);
    assert!(a.diff(&a.clone()).is_empty());
    assert!(b.diff(&c).is_empty());
    let empty = new_profile();
    let all = a.diff(&empty);
    assert_eq!(all.len(), 8);
    assert!(all.iter().all(|l| l.change == Change::Removed));
    assert!(all.iter().any(|l| l.to_string() == "- outbound: workload:sha256:db 5432/tcp"));
    assert!(all.iter().any(|l| l.to_string() == "- writtenDirs: /tmp"));
    assert!(all.iter().any(|l| l.to_string() == "- sensitiveReads: /etc/shadow"));
    assert!(all.iter().any(|l| l.to_string() == "- inbound: 10.88.0.9 8080/tcp"));
}

#[test]
fn yaml_round_trip() {
    let mut p = learned();
    p.metadata_mut().labels.insert("team".into(), "web".into());
    let mut c = new_profile();
    for i in 0..=MAX_ARGS_LISTS {
        c.observe(&exec("/bin/sh", "/bin/httpd", &[&i.to_string()]), None, T0);
    }
    p.merge(&c);
    p.observe(&accept(IpAddr::V6("fd00::5".parse().unwrap()), 8080), Some(&PeerRef::Host("lb.local".into())), T0 + 7);
    p.set_mode(Mode::Monitor, T0 + 999);
    let text = p.to_yaml().unwrap();
    for needle in [
        "apiVersion: lancet.dev/v1alpha1",
        "kind: Profile",
        "name: localhost-web-1",
        "imageDigest: sha256:abcdef0123456789",
        "mode: monitor",
        "modeSince: 2025-11-28T13:29:00.123457788Z",
        "workload: sha256:db",
        "cidr: 10.88.0.1/32",
        "host: lb.local",
        "argsPattern: '*'",
        "writtenDirs:",
        "sensitiveReads:",
        "lastNew:",
        "firstSeen:",
    ] {
        assert!(text.contains(needle), "{needle:?} missing in\n{text}");
    }
    let q = Profile::from_yaml(&text, "p.yaml").unwrap();
    assert_eq!(q, p);
    assert_eq!(q.to_yaml().unwrap(), text);
    // The index is rebuilt on load.
    assert_eq!(q.check(&listen(8080), None), None);
    assert_eq!(q.check(&exec("/bin/httpd", "/bin/sh", &[]), None), None);
    assert!(q.check(&listen(1), None).is_some());
    // And JSON (the API) carries the same document.
    let j = serde_json::to_value(&p).unwrap();
    assert_eq!(j["spec"]["outbound"][0]["peer"]["workload"], "sha256:db");
    assert_eq!(j["apiVersion"], "lancet.dev/v1alpha1");
}

#[test]
fn timestamps_round_trip_exactly() {
    for t in [0, 1, T0, 951_782_400_000_000_001, 4_102_444_799_999_999_999] {
        let s = Timestamp(t).to_string();
        assert_eq!(parse_rfc3339(&s), Ok(t), "{s}");
    }
    assert_eq!(parse_rfc3339("2025-11-28T13:29:00Z"), Ok(T0 - 123_456_789));
    assert_eq!(parse_rfc3339("2025-11-28T14:29:00.5+01:00"), Ok(T0 - 123_456_789 + 500_000_000));
    assert_eq!(parse_rfc3339("2025-11-28T12:29:00-01:00"), Ok(T0 - 123_456_789));
    for bad in [
        "",
        "2025-11-28",
        "2025-13-01T00:00:00Z",
        "2025-02-29T00:00:00Z",
        "1969-12-31T23:59:59Z",
        "2025-11-28T13:29:00",
        "2025-11-28T13:29:00.Z",
        "2025-11-28T13:29:00.1234567890Z",
        "２025-11-28T13:29:00Z",
        // A multi-byte character across the offsets the fields are cut at.
        "2026-11-28T13:29:0é00Z",
        "2026-11-28T13:29:00é",
        "2026-11-28T13:29:00+0é:00",
    ] {
        assert!(parse_rfc3339(bad).is_err(), "{bad:?}");
    }
}

fn err(text: &str) -> ProfileError {
    Profile::from_yaml(text, "bad.yaml").unwrap_err()
}

#[test]
fn unknown_fields_are_errors_with_position() {
    let mut text = learned().to_yaml().unwrap();
    text = text.replacen("  - path: /bin/httpd\n", "  - path: /bin/httpd\n    colour: red\n", 1);
    let line = text.lines().position(|l| l.contains("colour")).unwrap() + 1;
    match err(&text) {
        ProfileError::Syntax { file, line: l, column, message } => {
            assert_eq!(file, "bad.yaml");
            assert_eq!(l, line);
            assert_eq!(column, 5);
            assert!(message.contains("unknown field `colour`"), "{message}");
            assert!(!message.contains(" at line "), "{message}");
        }
        e => panic!("{e:?}"),
    }
    let e = err(&text).to_string();
    assert!(e.starts_with(&format!("bad.yaml:{line}:5: ")), "{e}");
    // Top level, metadata and the peer mapping refuse strangers too.
    let good = learned().to_yaml().unwrap();
    for (from, to) in [
        ("kind: Profile\n", "kind: Profile\nstatus: {}\n"),
        ("  name: localhost-web-1\n", "  name: localhost-web-1\n  uid: x\n"),
        ("workload: sha256:db", "workload: sha256:db\n      cidr: 1.2.3.4/32"),
        ("kind: Profile", "kind: Policy"),
        ("apiVersion: lancet.dev/v1alpha1", "apiVersion: lancet.dev/v2"),
        ("mode: learn", "mode: enforce"),
        ("protocol: tcp", "protocol: sctp"),
        ("started: ", "started: yesterday-"),
    ] {
        assert!(good.contains(from), "{from}");
        let e = err(&good.replacen(from, to, 1));
        assert!(matches!(e, ProfileError::Syntax { line, .. } if line > 0), "{from} -> {to}: {e}");
    }
}

#[test]
fn malformed_yaml_is_an_error_not_a_panic() {
    match err("apiVersion: lancet.dev/v1alpha1\nkind: Profile\nspec: [unclosed\n") {
        ProfileError::Syntax { line, column, .. } => assert!(line >= 3 && column >= 1),
        e => panic!("{e:?}"),
    }
    // Scanner errors (an unterminated quote) have a position too.
    match err("apiVersion: lancet.dev/v1alpha1\nkind: Profile\nmetadata: {name: 'web}\n") {
        ProfileError::Syntax { line, .. } => assert!(line >= 3),
        e => panic!("{e:?}"),
    }
    let e = err("a: b\n  c: d\n").to_string();
    assert!(e.starts_with("bad.yaml:"), "{e}");
    for text in ["", "---\n", "- 1\n", "\t\u{0}", "spec: &a [*a]", "kind: Profile\nkind: Profile\n"] {
        let e = err(text).to_string();
        assert!(e.starts_with("bad.yaml"), "{text:?}: {e}");
    }
    // Entries listed twice are refused.
    let mut text = learned().to_yaml().unwrap();
    let exec_block: String = {
        let start = text.find("  - path: /bin/httpd").unwrap();
        let end = text[start..].find("  listening:").map(|i| start + i).unwrap_or(text.len());
        text[start..end].to_string()
    };
    let end = text.find("  listening:").unwrap();
    text.insert_str(end, &exec_block);
    let e = err(&text).to_string();
    assert!(e.contains("listed twice"), "{e}");
}

#[test]
fn schema_describes_the_document() {
    let s = profile_schema();
    let text = s.to_string();
    assert_eq!(s["title"], "Profile");
    assert_eq!(s["additionalProperties"], false);
    for needle in ["imageDigest", "writtenDirs", "sensitiveReads", "argsPattern", "date-time", "lancet.dev/v1alpha1", "cidr"] {
        assert!(text.contains(needle), "{needle} missing in schema");
    }
    assert!(s["properties"].get("index").is_none());
}

#[test]
fn profile_names() {
    assert_eq!(profile_name("localhost/web:1"), "localhost-web-1");
    assert_eq!(profile_name("Registry.Example:5000/team/App_Server:v1.2@sha256:abcd"), "registry-example-5000-team-app-server-v1-2");
    assert_eq!(profile_name("sha256:ABCDEF0123456789ffff"), "sha256-abcdef0123456789ffff");
    assert_eq!(profile_name("@@@"), "unnamed");
    let long = format!("registry/{}", "x".repeat(100));
    let n = profile_name(&long);
    assert!(n.len() <= 63 && !n.ends_with('-'), "{n}");
    assert_ne!(n, profile_name(&format!("registry/{}", "x".repeat(101))));
    for image in ["a/b:c", "-x-", "UP", long.as_str()] {
        let n = profile_name(image);
        assert!(n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'), "{n}");
        assert!(!n.starts_with('-') && !n.ends_with('-'), "{n}");
    }
}

#[test]
fn modes_parse_and_print() {
    for m in [Mode::Learn, Mode::Monitor, Mode::Protect] {
        assert_eq!(m.to_string().parse::<Mode>(), Ok(m));
    }
    assert!("enforce".parse::<Mode>().is_err());
}

#[test]
fn promotion_to_monitor_waits_for_minimum_and_quiet() {
    let lc = Lifecycle::default();
    assert_eq!((lc.min_learning, lc.quiet_period, lc.auto_protect_after), (Duration::from_secs(600), Duration::from_secs(300), None));
    let mut p = new_profile();
    // Too early: nothing new since start, but minimum not reached.
    assert_eq!(lc.next_mode(&p, T0 + 9 * MIN, None), None);
    assert_eq!(lc.next_mode(&p, T0 + 10 * MIN, None), Some(Mode::Monitor));
    // Noisy: something new 4 minutes ago.
    p.observe(&listen(80), None, T0 + 8 * MIN);
    assert_eq!(lc.next_mode(&p, T0 + 12 * MIN, None), None);
    // Re-seeing known things does not reset the quiet clock.
    p.observe(&listen(80), None, T0 + 12 * MIN);
    assert_eq!(lc.next_mode(&p, T0 + 13 * MIN, None), Some(Mode::Monitor));
    // A clock behind the profile never promotes.
    assert_eq!(lc.next_mode(&p, T0, None), None);
    // Default: monitor stays monitor.
    p.set_mode(Mode::Monitor, T0 + 13 * MIN);
    assert_eq!(p.mode_since(), T0 + 13 * MIN);
    assert_eq!(lc.next_mode(&p, T0 + 1000 * MIN, None), None);
}

#[test]
fn auto_protect_after_a_clean_period() {
    let lc = Lifecycle { auto_protect_after: Some(Duration::from_secs(3600)), ..Lifecycle::default() };
    let mut p = new_profile();
    let entered = T0 + 20 * MIN;
    p.set_mode(Mode::Monitor, entered);
    let hour = 60 * MIN;
    assert_eq!(lc.next_mode(&p, entered + hour - 1, None), None);
    assert_eq!(lc.next_mode(&p, entered + hour, None), Some(Mode::Protect));
    // A deviation before monitor started does not count.
    assert_eq!(lc.next_mode(&p, entered + hour, Some(T0)), Some(Mode::Protect));
    // One during monitor restarts the clock.
    assert_eq!(lc.next_mode(&p, entered + hour, Some(entered + 10 * MIN)), None);
    assert_eq!(lc.next_mode(&p, entered + 70 * MIN, Some(entered + 10 * MIN)), Some(Mode::Protect));
    p.set_mode(Mode::Protect, entered + hour);
    assert_eq!(lc.next_mode(&p, u64::MAX, None), None);
}

#[test]
fn manual_modes() {
    let mut p = new_profile();
    p.set_mode(Mode::Protect, T0 + 5);
    assert_eq!((p.mode(), p.mode_since()), (Mode::Protect, T0 + 5));
    p.set_mode(Mode::Protect, T0 + 9);
    assert_eq!(p.mode_since(), T0 + 5, "same mode keeps its start");
    // Back to learn restarts learning.
    p.set_mode(Mode::Learn, T0 + 100 * MIN);
    assert_eq!(p.spec().learning.started.ns(), T0 + 100 * MIN);
    let lc = Lifecycle::default();
    assert_eq!(lc.next_mode(&p, T0 + 105 * MIN, None), None);
    assert_eq!(lc.next_mode(&p, T0 + 110 * MIN, None), Some(Mode::Monitor));
}

#[test]
fn runtime_started_processes_share_one_parent_whatever_runtime_process_it_was() {
    let outside = |parent: &str| {
        let mut e = exec("/bin/cp", parent, &["/a", "/b"]);
        if let EventKind::Exec(x) = &mut e.kind {
            x.parent_outside = true;
        }
        e
    };
    let mut p = Profile::new("img", "sha256:1", T0);
    assert!(p.observe(&outside("/usr/bin/conmon"), None, T0));
    assert_eq!(p.check(&outside("/usr/sbin/runc"), None), None, "another runtime process is the same parent");
    assert!(p.to_yaml().unwrap().contains(RUNTIME_PARENT));
    // A parent inside the container is still told apart.
    assert!(matches!(p.check(&exec("/bin/cp", "/bin/sh", &["/a", "/b"]), None), Some(Deviation::NewParent { .. })));
}

/// An exec whose argv[0] is `argv0` (a busybox applet, a re-exec).
fn exec_as(path: &str, argv0: &str, parent: &str) -> Event {
    let mut e = exec(path, parent, &[]);
    if let EventKind::Exec(x) = &mut e.kind {
        x.argv[0] = argv0.to_string();
    }
    e
}

#[test]
fn run_names_are_learned_only_when_they_differ_from_the_path() {
    let mut p = new_profile();
    assert!(p.observe(&exec("/bin/sh", RUNTIME_PARENT, &["-c", "ls"]), None, T0));
    assert!(p.observe(&exec_as("/bin/sh", "/bin/sh", "/bin/sh"), None, T0), "a new parent, no name");
    assert!(!p.observe(&exec_as("/bin/sh", "-sh", "/bin/sh"), None, T0), "a login shell is run as itself");
    assert!(!p.observe(&exec_as("/bin/sh", "", "/bin/sh"), None, T0), "no argv[0]: no name");
    let mut empty = exec("/bin/sh", "/bin/sh", &[]);
    if let EventKind::Exec(x) = &mut empty.kind {
        x.argv.clear();
    }
    assert!(!p.observe(&empty, None, T0));
    assert_eq!(p.check(&empty, None), None);
    assert!(p.spec().executables[0].names.is_empty());
    assert!(!p.to_yaml().unwrap().contains("names"), "ordinary profiles do not change");

    // A multi-call binary run under another name learns it.
    assert!(p.observe(&exec_as("/bin/busybox", "ls", "/bin/sh"), None, T0));
    assert!(!p.observe(&exec_as("/bin/busybox", "/usr/bin/ls", "/bin/sh"), None, T0), "the basename counts");
    assert!(p.observe(&exec_as("/bin/busybox", "wget", "/bin/sh"), None, T0 + SEC));
    let bb = &p.spec().executables[1];
    assert_eq!((bb.path.as_str(), bb.names.as_slice()), ("/bin/busybox", &["ls".to_string(), "wget".to_string()][..]));
    assert_eq!(p.spec().learning.last_new.ns(), T0 + SEC, "a new name is something new");
}

#[test]
fn re_execs_of_the_own_file_are_learned_under_proc_self_exe() {
    let mut p = new_profile();
    assert!(p.observe(&exec_as("/proc/self/exe", "ls", "/bin/sh"), None, T0));
    assert!(p.observe(&exec_as("/proc/4711/exe", "cat", "/bin/sh"), None, T0));
    assert!(!p.observe(&exec_as("/proc/1/exe", "ls", "/bin/sh"), None, T0));
    assert_eq!(p.spec().executables.len(), 1);
    let e = &p.spec().executables[0];
    assert_eq!((e.path.as_str(), e.names.as_slice(), e.count), (SELF_EXE, &["ls".to_string(), "cat".to_string()][..], 3));
    assert!(p.has_executable(SELF_EXE));
    assert_eq!(p.check(&exec_as("/proc/99/exe", "cat", "/bin/sh"), None), None);
    assert_eq!(
        p.check(&exec_as("/proc/self/exe", "nc", "/bin/sh"), None),
        Some(Deviation::NewName { path: SELF_EXE.into(), name: "nc".into() })
    );
    // Only `self` and pids are the process's own file.
    for other in ["/proc/x1/exe", "/proc//exe", "/proc/self/exe/x", "/proc/12/exe2", "/proc/self/fd/3", "/proc/thread-self/exe"] {
        assert_eq!(p.check(&exec_as(other, "ls", "/bin/sh"), None), Some(Deviation::NewExecutable { path: other.into() }), "{other}");
    }
    let y = p.to_yaml().unwrap();
    assert!(y.contains("path: /proc/self/exe") && y.contains("names:\n    - ls\n    - cat\n"), "{y}");
}

#[test]
fn check_reports_a_new_name() {
    let mut p = new_profile();
    p.observe(&exec_as("/bin/busybox", "ls", RUNTIME_PARENT), None, T0);
    assert_eq!(p.check(&exec_as("/bin/busybox", "ls", RUNTIME_PARENT), None), None);
    assert_eq!(p.check(&exec_as("/bin/busybox", "busybox", RUNTIME_PARENT), None), None, "its own name");
    let d = p.check(&exec_as("/bin/busybox", "nc", RUNTIME_PARENT), None).expect("a new applet");
    assert_eq!(d, Deviation::NewName { path: "/bin/busybox".into(), name: "nc".into() });
    assert_eq!(d.kind(), "new_name");
    assert_eq!(d.to_string(), "/bin/busybox run as nc is not in the profile");
    assert_eq!(serde_json::to_value(&d).unwrap(), serde_json::json!({"type": "new_name", "path": "/bin/busybox", "name": "nc"}));
    // A new parent is reported first.
    assert!(matches!(p.check(&exec_as("/bin/busybox", "nc", "/bin/evil"), None), Some(Deviation::NewParent { .. })));
}

#[test]
fn run_names_are_bounded_and_what_is_not_learned_deviates() {
    let mut p = new_profile();
    for i in 0..MAX_NAMES {
        assert!(p.observe(&exec_as("/bin/busybox", &format!("applet{i}"), "/bin/sh"), None, T0));
    }
    assert!(!p.observe(&exec_as("/bin/busybox", "one-more", "/bin/sh"), None, T0));
    let long = "x".repeat(MAX_ARG_BYTES + 1);
    let mut q = new_profile();
    assert!(q.observe(&exec_as("/bin/busybox", "ls", "/bin/sh"), None, T0));
    assert!(!q.observe(&exec_as("/bin/busybox", &long, "/bin/sh"), None, T0));
    for (p, name) in [(&p, "one-more"), (&q, long.as_str())] {
        assert_eq!(p.spec().overflow.executables, 1);
        assert_eq!(
            p.check(&exec_as("/bin/busybox", name, "/bin/sh"), None),
            Some(Deviation::NewName { path: "/bin/busybox".into(), name: name.into() })
        );
    }
    assert_eq!(p.spec().executables[0].names.len(), MAX_NAMES);
}

#[test]
fn run_names_survive_yaml_merge_and_diff() {
    let mut a = new_profile();
    a.observe(&exec_as("/proc/self/exe", "ls", "/bin/sh"), None, T0);
    let q = Profile::from_yaml(&a.to_yaml().unwrap(), "p.yaml").unwrap();
    assert_eq!(q, a);
    assert_eq!(q.check(&exec_as("/proc/self/exe", "ls", "/bin/sh"), None), None, "the index is rebuilt with names");
    assert!(q.check(&exec_as("/proc/self/exe", "cat", "/bin/sh"), None).is_some());
    let mut b = new_profile();
    b.observe(&exec_as("/proc/self/exe", "cat", "/bin/sh"), None, T0);
    let mut m = a.clone();
    m.merge(&b);
    assert_eq!(m.spec().executables[0].names, ["ls", "cat"]);
    assert_eq!(m.check(&exec_as("/proc/self/exe", "cat", "/bin/sh"), None), None);
    let lines: Vec<String> = a.diff(&m).iter().map(ToString::to_string).collect();
    assert_eq!(lines, ["+ executables: /proc/self/exe as cat"]);
}

#[test]
fn run_names_list_each_path_with_its_basename_first() {
    let mut p = new_profile();
    p.observe(&exec("/usr/sbin/nginx", RUNTIME_PARENT, &[]), None, T0);
    p.observe(&exec_as("/bin/busybox", "ls", "/usr/sbin/nginx"), None, T0);
    p.observe(&exec_as("/proc/self/exe", "cat", "/bin/busybox"), None, T0);
    let all: Vec<(&str, Vec<&str>)> = p.run_names().map(|(path, names)| (path, names.collect())).collect();
    assert_eq!(all, [("/usr/sbin/nginx", vec!["nginx"]), ("/bin/busybox", vec!["busybox", "ls"]), (SELF_EXE, vec!["exe", "cat"])]);
}

#[test]
fn protect_readiness_names_what_would_break() {
    let empty = new_profile();
    assert_eq!(empty.protect_readiness(), Err(vec!["no executables were learned: protect mode would refuse the entrypoint".to_string()]));
    // Network only: still nothing may run.
    let mut net_only = new_profile();
    net_only.observe(&listen(80), None, T0);
    assert_eq!(net_only.protect_readiness().unwrap_err().len(), 1);

    // Seen only after start (the agent came up later): the entrypoint is unknown.
    let late = learned();
    let why = late.protect_readiness().unwrap_err();
    assert_eq!(why.len(), 1, "{why:?}");
    assert!(why[0].contains("started by the container runtime") && why[0].contains("restart"), "{}", why[0]);

    let mut ready = learned();
    assert!(ready.observe(&exec("/bin/sh", RUNTIME_PARENT, &["-c", "httpd"]), None, T0));
    assert_eq!(ready.protect_readiness(), Ok(()));
    // Learning for a second is no reason by itself: operators may promote by hand.
    let mut quick = Profile::new("img", "sha256:1", T0);
    quick.observe(&exec("/app", RUNTIME_PARENT, &[]), None, T0 + 1);
    assert_eq!(quick.protect_readiness(), Ok(()));
    // A hand-written entry without parents accepts the runtime too.
    let mut any = new_profile();
    any.merge(
        &Profile::from_yaml(&any.to_yaml().unwrap().replace("spec:\n", "spec:\n  executables:\n  - path: /app\n"), "h.yaml").unwrap(),
    );
    assert_eq!(any.protect_readiness(), Ok(()));

    // Full sections that protect enforces.
    let mut full = ready.clone();
    full.spec.overflow.executables = 3;
    full.spec.overflow.outbound = 1;
    full.spec.overflow.written_dirs = 9; // not refused by default: no reason
    let why = full.protect_readiness().unwrap_err();
    assert_eq!(why.len(), 2, "{why:?}");
    assert!(why[0].starts_with("spec.overflow.executables is 3: "), "{}", why[0]);
    assert!(why[1].starts_with("spec.overflow.outbound is 1: "), "{}", why[1]);
}

#[test]
fn image_repositories() {
    for (image, repo) in [
        ("localhost/app:1", "localhost/app"),
        ("registry:5000/team/app:2.1@sha256:0123abcd", "registry:5000/team/app"),
        ("registry:5000/team/app", "registry:5000/team/app"),
        ("registry:5000/app@sha256:0123", "registry:5000/app"),
        ("app", "app"),
        ("app:latest", "app"),
        ("docker.io/library/nginx:1.27-alpine", "docker.io/library/nginx"),
        ("", ""),
    ] {
        assert_eq!(image_repository(image), repo, "{image}");
    }
}

#[test]
fn a_new_image_version_starts_from_the_previous_profile_in_monitor() {
    use crate::profile::baseline::{BaselineFile, FileMode};
    let mut old = learned();
    old.observe(&exec_as("/proc/self/exe", "ls", "/bin/sh"), None, T0 + SEC);
    old.metadata_mut().labels.insert("team".into(), "web".into());
    old.set_baseline(Some(Baseline::new(
        "sha256:abcdef0123456789",
        vec![BaselineFile { path: "/bin/httpd".into(), sha256: "1".into(), mode: FileMode(0o755), ..BaselineFile::default() }],
        vec![],
    )));
    old.set_mode(Mode::Protect, T0 + MIN);
    let now = T0 + 60 * MIN;
    let new = old.successor("localhost/web:2", "sha256:feedface", now);
    assert_eq!((new.image(), new.digest(), new.name()), ("localhost/web:2", "sha256:feedface", "localhost-web-2"));
    assert_eq!((new.mode(), new.mode_since()), (Mode::Monitor, now));
    assert_eq!(new.previous_digest(), Some("sha256:abcdef0123456789"));
    assert_eq!(old.previous_digest(), None);
    assert_eq!(new.metadata().labels.get("team").map(String::as_str), Some("web"));
    assert!(new.baseline().is_none(), "the new image's baseline comes from its own scan");
    assert_eq!(new.spec().executables, old.spec().executables, "every entry, counts and times included");
    assert_eq!((new.spec().listening.clone(), new.spec().outbound.clone()), (old.spec().listening.clone(), old.spec().outbound.clone()));
    assert_eq!(new.len(), old.len());
    // It checks like the old one.
    assert_eq!(new.check(&exec("/bin/httpd", "/bin/sh", &[]), None), None);
    assert_eq!(new.check(&exec_as("/proc/self/exe", "ls", "/bin/sh"), None), None);
    assert!(new.check(&listen(4444), None).is_some());
    // And goes through YAML (the annotation is ordinary metadata).
    let text = new.to_yaml().unwrap();
    assert!(text.contains("lancet.dev/previous-digest: sha256:abcdef0123456789"), "{text}");
    let back = Profile::from_yaml(&text, "p.yaml").unwrap();
    assert_eq!(back, new);
    assert_eq!(back.previous_digest(), Some("sha256:abcdef0123456789"));
    // A successor of a successor names its own predecessor.
    assert_eq!(back.successor("localhost/web:3", "sha256:3", now + 1).previous_digest(), Some("sha256:feedface"));
}

#[test]
fn diff_shows_what_an_image_update_changed() {
    use crate::profile::baseline::{BaselineFile, FileMode};
    let f =
        |path: &str, hash: &str| BaselineFile { path: path.into(), sha256: hash.into(), mode: FileMode(0o755), ..BaselineFile::default() };
    let old_img =
        Baseline::new("sha256:1", vec![f("/bin/busybox", "0123456789abcdef0123"), f("/usr/bin/wget", "aa"), f("/bin/same", "bb")], vec![]);
    let new_img = Baseline::new(
        "sha256:2",
        vec![f("/bin/busybox", "89abcdef0123456789ab"), f("/usr/bin/curl", "cc"), f("/bin/same", "bb"), f("/z", "é-not-hex-but-short")],
        vec![],
    );
    let mut a = learned();
    a.set_baseline(Some(old_img.clone()));
    let mut b = a.successor("localhost/web:2", "sha256:2", T0);
    b.set_baseline(Some(new_img));
    b.observe(&listen(9090), None, T0);
    let lines: Vec<String> = a.diff(&b).iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "+ listening: 9090/tcp",
            "~ image: /bin/busybox sha256 0123456789ab -> 89abcdef0123",
            "+ image: /usr/bin/curl",
            "- image: /usr/bin/wget",
            "+ image: /z",
        ]
    );
    // Without a baseline on either side there is no image section.
    let mut c = b.clone();
    c.set_baseline(None);
    assert!(a.diff(&c).iter().all(|l| l.section != Section::Image));
    let mut same = a.clone();
    same.set_baseline(Some(old_img));
    assert!(a.diff(&same).is_empty());
}

#[test]
fn deep_flow_nesting_is_refused_before_the_parser_pays_for_it() {
    // 64 KiB of `{a: ` cost libyaml ~2 s (quadratic), and imports are
    // answered on the agent's loop: refused at once, located.
    let text = format!("spec: {}", "{a: ".repeat(16_000));
    let t = std::time::Instant::now();
    match err(&text) {
        ProfileError::Syntax { line, column, message, .. } => {
            assert_eq!((line, column), (1, 7 + 4 * 128));
            assert!(message.contains("nested more than 128 levels"), "{message}");
        }
        e => panic!("{e:?}"),
    }
    assert!(t.elapsed() < std::time::Duration::from_millis(500), "{:?}", t.elapsed());
    // Brackets in scalars are text: a profile of `[` executables reads.
    let mut p = new_profile();
    for i in 0..200 {
        p.observe(&exec(&format!("/usr/bin/[{i}"), "/bin/sh", &["[", &"[\n".repeat(40)]), None, T0);
    }
    assert_eq!(Profile::from_yaml(&p.to_yaml().unwrap(), "p.yaml").unwrap(), p);
}

// ---------- property tests: profile documents are outside data ----------

mod props {
    use super::*;
    use lancet_testkit::mutate::{apply, edits, yamlish};
    use proptest::prelude::*;

    fn path() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "(/[a-z0-9._-]{1,8}){1,4}",
            1 => any::<String>().prop_map(|s| format!("/{s}")),
            1 => (1usize..600).prop_map(|n| format!("/{}", "p".repeat(n))),
        ]
    }

    fn ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![any::<[u8; 4]>().prop_map(IpAddr::from), any::<[u8; 16]>().prop_map(IpAddr::from)]
    }

    fn proto() -> impl Strategy<Value = Protocol> {
        prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)]
    }

    fn peer() -> impl Strategy<Value = Option<PeerRef>> {
        prop_oneof![
            Just(None),
            "sha256:[0-9a-f]{4}".prop_map(|w| Some(PeerRef::Workload(w.into()))),
            "[a-z]{1,8}\\.local".prop_map(|h| Some(PeerRef::Host(h))),
            ip().prop_map(|i| Some(PeerRef::Ip(i))),
        ]
    }

    /// One observation of any kind, with its peer.
    fn observation() -> impl Strategy<Value = (Event, Option<PeerRef>)> {
        let file_op =
            proptest::sample::select(vec![FileOp::Create, FileOp::Modify, FileOp::Delete, FileOp::Rename, FileOp::Chmod, FileOp::Open]);
        prop_oneof![
            (
                path(),
                path(),
                prop_oneof![4 => proptest::collection::vec(any::<String>(), 0..6), 1 => proptest::collection::vec("[a-z]{0,300}", 30..40)],
                proptest::option::of("[a-z]{1,40}")
            )
                .prop_map(|(p, parent, args, argv0)| {
                    let mut e = exec(&p, &parent, &args.iter().map(String::as_str).collect::<Vec<_>>());
                    if let (EventKind::Exec(x), Some(a0)) = (&mut e.kind, argv0) {
                        x.argv[0] = a0;
                    }
                    (e, None)
                }),
            any::<u16>().prop_map(|p| (listen(p), None)),
            (ip(), any::<u16>(), proto(), peer()).prop_map(|(i, p, pr, peer)| (connect(i, p, pr), peer)),
            (ip(), any::<u16>(), peer()).prop_map(|(i, p, peer)| (accept(i, p), peer)),
            (file_op, path()).prop_map(|(op, p)| (file(op, &p), None)),
        ]
    }

    fn check_error(e: &ProfileError, file: &str, text: &str) -> Result<(), TestCaseError> {
        let shown = e.to_string();
        match e {
            ProfileError::Syntax { line, column, .. } => {
                prop_assert!(shown.starts_with(&format!("{file}:{line}:{column}: ")), "{}", shown);
                prop_assert!(*line >= 1 && *line <= text.lines().count() + 1, "line {} of {}", line, text.lines().count());
                prop_assert!(*column >= 1, "{}", shown);
            }
            ProfileError::Invalid { .. } => prop_assert!(shown.starts_with(&format!("{file}: ")), "{}", shown),
            ProfileError::Serialize(_) => prop_assert!(false, "a parse error reported as serialising: {}", shown),
        }
        Ok(())
    }

    /// A profile that has seen one of everything, in YAML.
    fn real_profile_yaml() -> String {
        let mut p = learned();
        p.observe(&exec("/bin/busybox", "/bin/sh", &[]), None, T0 + 2 * SEC);
        p.observe(&exec_as("/bin/busybox", "nc", "/bin/sh"), None, T0 + 2 * SEC);
        p.set_mode(Mode::Monitor, T0 + 3 * SEC);
        p.to_yaml().unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever was learned is within the documented bounds, reads back
        /// as the same profile and gives the same verdicts.
        #[test]
        fn learned_profiles_round_trip(obs in proptest::collection::vec(observation(), 0..32)) {
            let mut p = new_profile();
            for (i, (e, peer)) in obs.iter().enumerate() {
                p.observe(e, peer.as_ref(), T0 + i as u64 * SEC);
            }
            let s = p.spec();
            for len in [s.executables.len(), s.listening.len(), s.outbound.len(), s.inbound.len(), s.written_dirs.len(), s.sensitive_reads.len()] {
                prop_assert!(len <= MAX_ENTRIES);
            }
            for x in &s.executables {
                prop_assert!(x.parents.len() <= MAX_PARENTS && x.names.len() <= MAX_NAMES && x.args.len() <= MAX_ARGS_LISTS);
                prop_assert!(x.names.iter().all(|n| n.len() <= MAX_ARG_BYTES));
                prop_assert!(x.args.iter().all(|a| a.len() <= MAX_ARGV && a.iter().all(|s| s.len() <= MAX_ARG_BYTES)));
            }
            let text = p.to_yaml().unwrap();
            let q = Profile::from_yaml(&text, "p.yaml").unwrap_or_else(|e| panic!("{e}\n{text}"));
            prop_assert_eq!(&q, &p);
            prop_assert_eq!(q.to_yaml().unwrap(), text);
            for (e, peer) in &obs {
                prop_assert_eq!(q.check(e, peer.as_ref()), p.check(e, peer.as_ref()));
            }
        }

        /// A real profile changed at random: a profile or a located error.
        /// What is accepted is a profile that writes and reads back the same.
        #[test]
        fn mutated_profiles_are_profiles_or_located_errors(e in edits(6)) {
            let text = apply(&real_profile_yaml(), &e);
            match Profile::from_yaml(&text, "m.yaml") {
                Ok(p) => {
                    let again = p.to_yaml().unwrap();
                    let q = Profile::from_yaml(&again, "again.yaml").unwrap_or_else(|e| panic!("{e}\n{again}"));
                    prop_assert_eq!(q, p);
                }
                Err(err) => check_error(&err, "m.yaml", &text)?,
            }
        }

        #[test]
        fn arbitrary_text_is_a_located_error(text in yamlish()) {
            if let Err(e) = Profile::from_yaml(&text, "x.yaml") {
                check_error(&e, "x.yaml", &text)?;
            }
        }
    }

    #[test]
    fn deep_nesting_aliases_and_huge_values_are_errors_not_crashes() {
        let good = real_profile_yaml();
        let bomb = {
            let mut s = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
            for i in 1..12 {
                s.push_str(&format!(
                    "{}: &{} [*{}, *{}, *{}, *{}, *{}, *{}, *{}, *{}, *{}, *{}]\n",
                    (b'a' + i) as char,
                    (b'a' + i) as char,
                    (b'a' + i - 1) as char,
                    (b'a' + i - 1) as char,
                    (b'a' + i - 1) as char,
                    (b'a' + i - 1) as char,
                    (b'a' + i - 1) as char,
                    (b'a' + i - 1) as char,
                    (b'a' + i - 1) as char,
                    (b'a' + i - 1) as char,
                    (b'a' + i - 1) as char,
                    (b'a' + i - 1) as char
                ));
            }
            s
        };
        let cases = [
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
            format!("spec: {}", "{a: ".repeat(50_000)),
            format!("spec:\n{}", (0..20_000).map(|i| format!("{}- x\n", " ".repeat(i % 200))).collect::<String>()),
            bomb,
            good.replacen("count: 1", "count: 99999999999999999999999999", 1),
            good.replacen("port: 8080", "port: 65536", 1),
            good.replacen("port: 8080", "port: -1", 1),
        ];
        for text in &cases {
            let started = std::time::Instant::now();
            let e = Profile::from_yaml(text, "big.yaml").unwrap_err();
            assert!(e.to_string().starts_with("big.yaml"), "{e}");
            assert!(started.elapsed() < std::time::Duration::from_secs(10), "{e}: took {:?}", started.elapsed());
        }
        // A 4 MB path is a (big) profile, read without trouble.
        let long = good.replacen("path: /bin/httpd", &format!("path: /{}", "x".repeat(4 << 20)), 1);
        let p = Profile::from_yaml(&long, "long.yaml").unwrap();
        assert_eq!(p.spec().executables.iter().map(|x| x.path.len()).max(), Some((4 << 20) + 1));
    }
}

#[test]
fn busybox_run_by_its_own_name_learns_the_applet_it_runs() {
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(super::run_name("/bin/busybox", &v(&["busybox", "true"])), Some("true"));
    assert_eq!(super::run_name("/bin/busybox", &v(&["/bin/busybox", "busybox", "nc"])), Some("nc"));
    assert_eq!(super::run_name("/bin/busybox", &v(&["busybox"])), None, "its own name only");
    assert_eq!(super::run_name("/bin/busybox", &v(&["-sh"])), Some("sh"));
    assert_eq!(super::run_name("/bin/sh", &v(&["sh", "busybox"])), None, "only argv[0] dispatches");
}

#[test]
fn deviations_can_be_allowed_and_round_trip_as_json() {
    let mut p = Profile::new("img", "sha256:x", 1);
    p.set_mode(Mode::Monitor, 1);
    let devs = [
        Deviation::NewExecutable { path: "/bin/extra".into() },
        Deviation::NewParent { path: "/bin/extra".into(), parent: "/bin/sh".into() },
        Deviation::NewName { path: "/bin/busybox".into(), name: "wget".into() },
        Deviation::NewListen { port: 8080, proto: Protocol::Tcp },
        Deviation::NewOutbound { peer: Peer::Cidr("10.0.0.9/32".parse().unwrap()), port: 5432, proto: Protocol::Tcp },
        Deviation::NewInbound { peer: Peer::Workload("sha256:web".into()), port: 80, proto: Protocol::Tcp },
        Deviation::NewWrittenDir { dir: "/var/cache".into() },
        Deviation::NewSensitiveRead { path: "/etc/shadow".into() },
    ];
    for d in &devs {
        let json = serde_json::to_string(d).unwrap();
        let back: Deviation = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, d, "{json}");
        assert!(p.allow(d, 10), "{d:?} added");
        assert!(!p.allow(d, 11), "{d:?} added twice");
    }
    let yaml = p.to_yaml().unwrap();
    let p = Profile::from_yaml(&yaml, "t").unwrap();
    assert!(p.has_executable("/bin/extra"));
    assert!(p.has_written_dir("/var/cache") && p.has_sensitive_read("/etc/shadow"));
    let web = PeerRef::Workload("sha256:web".into());
    assert_eq!(p.flow_entry(true, &web, 80, Protocol::Tcp), Some(0));
    assert_eq!(p.flow_entry(false, &PeerRef::Ip("10.0.0.9".parse().unwrap()), 5432, Protocol::Tcp), Some(0));
    assert_eq!(p.flow_entry(false, &web, 80, Protocol::Tcp), None);
}

// ---------- writes: the writable and protected sets ----------

#[test]
fn a_services_writes_fold_into_anchors() {
    let mut p = new_profile();
    // PostgreSQL's first minute: a database directory, the WAL, stats.
    for path in [
        "/var/lib/postgresql/15/main/base/16384/1259",
        "/var/lib/postgresql/15/main/pg_wal/000000010000000000000001",
        "/var/lib/postgresql/15/main/pg_stat_tmp/global.stat",
        "/var/log/postgresql/postgresql-15-main.log",
    ] {
        p.observe(&file(FileOp::Create, path), None, T0);
    }
    let dirs: Vec<&str> = p.spec().written_dirs.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(dirs, ["/var/lib/postgresql/15", "/var/log/postgresql"]);
    // Its second day: a new database, a sort spilling to temp files, a
    // table rewritten by VACUUM FULL: all held by the anchors.
    for path in [
        "/var/lib/postgresql/15/main/base/16390/2619",
        "/var/lib/postgresql/15/main/base/pgsql_tmp/pgsql_tmp1234.0",
        "/var/lib/postgresql/15/main/global/pg_control",
    ] {
        assert_eq!(p.check(&file(FileOp::Create, path), None), None, "{path}");
    }
    // An anchor learned by an older agent, exactly: its subdirectories,
    // and numbered ones collapsed, are held too.
    let mut q = new_profile();
    q.allow(&Deviation::NewWrittenDir { dir: "/www/uploads/*".into() }, T0);
    assert_eq!(q.check(&file(FileOp::Create, "/www/uploads/20261206/a.png"), None), None);
    assert_eq!(q.check(&file(FileOp::Create, "/www/uploads/20261207/x/b.png"), None), None);
    assert_eq!(q.check(&file(FileOp::Create, "/www/static/a.css"), None), Some(Deviation::NewWrittenDir { dir: "/www/static".into() }));
}

#[test]
fn protected_writes_are_never_learned_and_always_deviate() {
    let mut p = new_profile();
    for (op, path, entry) in [
        (FileOp::Create, "/usr/bin/x", "system files"),
        (FileOp::Modify, "/etc/passwd", "accounts and authentication"),
        (FileOp::Create, "/etc/cron.d/job", "cron"),
        (FileOp::Create, "/var/lib/redis/.ssh/authorized_keys", "ssh keys"),
        (FileOp::Delete, "/etc/ld.so.preload", "dynamic loader"),
        (FileOp::Chmod, "/usr/local/bin/tool", "system files"),
    ] {
        let e = file(op, path);
        assert!(!p.observe(&e, None, T0), "{path} learned");
        let want = Deviation::ProtectedWrite { path: path.into(), entry: entry.into() };
        assert_eq!(p.check(&e, None).as_ref(), Some(&want), "{path}");
        assert!(want.refused_in_protect());
        assert!(!p.allow(&want, T0), "a protected write cannot be added to a profile");
    }
    assert!(p.spec().written_dirs.is_empty());
    // Even an anchor learned above it does not open it.
    p.allow(&Deviation::NewWrittenDir { dir: "/var/lib/redis".into() }, T0);
    assert!(matches!(p.check(&file(FileOp::Create, "/var/lib/redis/.ssh/k"), None), Some(Deviation::ProtectedWrite { .. })));
    // Deletes and chmods outside the protected set are nobody's business.
    assert_eq!(p.check(&file(FileOp::Delete, "/srv/x/y"), None), None);
    assert!(!Deviation::NewWrittenDir { dir: "/srv".into() }.refused_in_protect());
}

#[test]
fn the_containers_writable_set_is_normal_life_and_learned_in_any_mode() {
    use crate::write_sets::{WritableKind, WritableSet};
    let mut set = WritableSet::default();
    set.add("/var/lib/redis", WritableKind::Owned);
    set.add("/data", WritableKind::Mount);
    set.add("/etc/redis", WritableKind::Owned);
    let mut p = new_profile();
    p.set_mode(Mode::Protect, T0);
    let paths =
        ["/var/lib/redis/temp-167.rdb", "/var/lib/redis/appendonlydir/a.aof", "/data/x", "/etc/redis/redis.conf", "/run/redis/redis.pid"];
    for path in paths {
        let e = file(FileOp::Create, path);
        assert_eq!(p.check_in(&e, None, &set), None, "{path}");
        // Without the container's set, the same write is a deviation
        // (scratch excepted).
        assert_eq!(p.check(&e, None).is_some(), !path.starts_with("/run/"), "{path}");
    }
    for path in paths {
        assert!(p.learn_writable(&file(FileOp::Create, path), &set, T0).is_some(), "{path} is in the set");
    }
    let dirs: Vec<&str> = p.spec().written_dirs.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(dirs, ["/var/lib/redis", "/data", "/etc/redis", "/run"]);
    // Outside the set nothing is learned by learn_writable.
    assert_eq!(p.learn_writable(&file(FileOp::Create, "/srv/www/x"), &set, T0), None);
    assert_eq!(p.learn_writable(&file(FileOp::Create, "/etc/passwd"), &set, T0), None);
    assert!(matches!(p.check_in(&file(FileOp::Create, "/etc/cron.d/x"), None, &set), Some(Deviation::ProtectedWrite { .. })));
}

#[test]
fn a_udp_connect_to_the_unspecified_address_is_not_an_outbound_peer() {
    let p = new_profile();
    for addr in ["0.0.0.0", "::", "::ffff:0.0.0.0"] {
        let e = connect(addr.parse().unwrap(), 5432, Protocol::Udp);
        let peer = PeerRef::Ip(addr.parse().unwrap());
        assert_eq!(p.check(&e, Some(&peer)), None, "{addr}");
    }
    // Elsewhere it is one (loopback too: a DNS stub listens there).
    assert!(p.check(&connect("10.88.0.9".parse().unwrap(), 53, Protocol::Udp), None).is_some());
    assert!(p.check(&connect("127.0.0.53".parse().unwrap(), 53, Protocol::Udp), None).is_some());
    assert!(p.check(&connect("127.0.0.1".parse().unwrap(), 8080, Protocol::Tcp), None).is_some());
}

#[test]
fn interpreters_are_learned_with_their_code() {
    let mut p = Profile::new("img", "sha256:x", T0);
    let health = exec("/bin/sh", "/usr/bin/conmon", &["-c", "wget  -q -O -\n http://127.0.0.1/"]);
    assert!(p.observe(&health, None, T0));
    let e = p.executable("/bin/sh").unwrap();
    assert_eq!(e.code, ["wget -q -O - http://127.0.0.1/"], "whitespace collapsed");
    assert!(p.has_code("/bin/sh", "wget -q -O - http://127.0.0.1/"));
    assert!(!p.observe(&health, None, T0), "the same code");
    p.set_mode(Mode::Monitor, T0 + MIN);
    assert_eq!(p.check(&health, None), None);
    assert_eq!(p.check(&exec("/bin/sh", "/usr/bin/conmon", &["-c", " wget -q -O - http://127.0.0.1/"]), None), None, "reflowed");
    // Other code through the learned shell deviates, and so does a program
    // on stdin; a script operand is a file (drift decides), not code.
    let id = exec("/bin/sh", "/usr/bin/conmon", &["-c", "id"]);
    let d = p.check(&id, None).unwrap();
    assert_eq!(d, Deviation::NewCode { path: "/bin/sh".into(), code: "id".into() });
    assert_eq!(d.to_string(), "/bin/sh run with code \"id\" is not in the profile");
    assert_eq!(p.check(&exec("/bin/sh", "/usr/bin/conmon", &[]), None).unwrap().kind(), "new_code");
    assert_eq!(p.check(&exec("/bin/sh", "/usr/bin/conmon", &["-e", "/app/run.sh"]), None), None);
    // A cut record says nothing about its code.
    let mut cut = id.clone();
    if let EventKind::Exec(x) = &mut cut.kind {
        x.truncated = true;
    }
    assert_eq!(p.check(&cut, None), None);
    // "Add to profile" from the alert.
    assert!(p.allow(&d, T0 + 2 * MIN));
    assert!(p.allow(&Deviation::NewCode { path: "/bin/sh".into(), code: STDIN_CODE.into() }, T0 + 2 * MIN));
    assert_eq!(p.check(&id, None), None);
    assert!(p.executable("/bin/sh").unwrap().stdin);
    // Non-interpreters keep no code.
    let mut q = Profile::new("img", "sha256:x", T0);
    q.observe(&exec("/usr/sbin/nginx", "/usr/bin/conmon", &["-c", "/etc/nginx.conf"]), None, T0);
    assert!(q.executable("/usr/sbin/nginx").unwrap().code.is_empty());
}

#[test]
fn learned_code_is_bounded_and_survives_yaml_and_merge() {
    let mut p = Profile::new("img", "sha256:x", T0);
    for i in 0..MAX_CODES + 3 {
        p.observe(&exec("/bin/sh", "/usr/bin/conmon", &["-c", &format!("echo {i}")]), None, T0);
    }
    p.observe(&exec("/bin/sh", "/usr/bin/conmon", &["-c", &"x".repeat(MAX_CODE_BYTES + 1)]), None, T0);
    assert_eq!(p.executable("/bin/sh").unwrap().code.len(), MAX_CODES);
    assert_eq!(p.spec().overflow.executables, 4, "three past the count, one too long");
    p.observe(&exec("/bin/sh", "/usr/bin/conmon", &["-s"]), None, T0);
    p.observe(&exec("/data/tool", "/usr/bin/conmon", &[]), None, T0);
    assert!(p.set_sha256("/data/tool", "ab12"));
    assert!(!p.set_sha256("/data/tool", "ab12"));
    assert!(!p.set_sha256("/nope", "ab12"));
    let y = p.to_yaml().unwrap();
    assert!(y.contains("stdin: true") && y.contains("sha256: ab12") && y.contains("- echo 0"), "{y}");
    let back = Profile::from_yaml(&y, "p.yaml").unwrap();
    assert_eq!(back, p);
    assert!(back.has_code("/bin/sh", "echo 5"));
    let mut m = Profile::new("img", "sha256:x", T0);
    m.merge(&back);
    assert!(m.has_code("/bin/sh", "echo 63") && m.executable("/bin/sh").unwrap().stdin);
    assert_eq!(m.executable("/data/tool").unwrap().sha256.as_deref(), Some("ab12"));
    let diff = Profile::new("img", "sha256:x", T0).diff(&m);
    assert!(diff.iter().any(|l| l.entry == "/bin/sh -c \"echo 1\""), "{diff:?}");
}

#[test]
fn a_relative_or_odd_path_ends_the_anchor_walk() {
    // A container that writes below PATH_MAX gets events with relative or
    // cut paths: checking them must end (it once spun the agent's loop).
    let mut p = new_profile();
    p.allow(&Deviation::NewWrittenDir { dir: "/var/log/nginx".into() }, T0);
    for path in ["dd/x", "x", ".", "./a/b", "", "//", "d/../x", "dddd/dddd/e"] {
        let e = file(FileOp::Create, path);
        let _ = p.check(&e, None);
        assert!(!p.has_written_dir(path), "{path:?}");
    }
    assert!(p.has_written_dir("/var/log/nginx/x"));
}

/// Counts, times, the learning clock and overflow do not make two profiles
/// differ in what they allow; an entry, a parent or the mode does.
#[test]
fn same_rules_ignores_counts_and_times_only() {
    let t = 1_800_000_000_000_000_000;
    let mut p = Profile::new("img", "sha256:aa", t);
    p.allow(&Deviation::NewExecutable { path: "/bin/a".into() }, t);
    let mut q = p.clone();
    q.merge(&p);
    q.spec.learning.started = Timestamp(1);
    q.spec.overflow.executables = 3;
    assert_ne!(p, q, "counts and times differ");
    assert!(p.same_rules(&q));
    let mut r = q.clone();
    r.allow(&Deviation::NewParent { path: "/bin/a".into(), parent: "/bin/sh".into() }, t);
    assert!(!p.same_rules(&r), "a parent more");
    let mut m = q.clone();
    m.set_mode(Mode::Protect, t);
    assert!(!p.same_rules(&m), "another mode");
}
