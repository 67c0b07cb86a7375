//! Events evaluated per second per core by the engine's hot path: the profile
//! check and the policy rules (defaults included), against a profile of
//! realistic size, for the events a steady workload produces.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lancet_engine::attribution::{Attribution, ContainerInfo};
use lancet_engine::event::{Event, EventKind, ExecEvent, FileEvent, FileOp, NetEvent, NetOp, ProcessRef, Protocol};
use lancet_engine::json_line::JsonLines;
use lancet_engine::policy::PolicySet;
use lancet_engine::profile::{PeerRef, Profile};
use std::hint::black_box;
use std::net::IpAddr;

fn ev(pid: u32, kind: EventKind) -> Event {
    Event {
        time_ns: 1,
        cgroup_id: 7,
        process: ProcessRef { pid, tid: pid, ppid: 1, uid: 0, gid: 0, comm: "app".into(), start_ns: 0, runtime: false },
        kind,
    }
}

fn exec(path: &str, parent: &str) -> Event {
    ev(
        10,
        EventKind::Exec(ExecEvent {
            filename: path.into(),
            argv: vec![path.rsplit('/').next().unwrap_or(path).into(), "--serve".into()],
            parent_comm: parent.rsplit('/').next().unwrap_or(parent).into(),
            parent_exe: Some(parent.into()),
            cwd: "/".into(),
            ..Default::default()
        }),
    )
}

fn net(op: NetOp, ip: IpAddr, port: u16) -> Event {
    ev(
        11,
        EventKind::Net(NetEvent {
            op,
            proto: Protocol::Tcp,
            saddr: "10.88.0.5".parse().unwrap(),
            sport: 8080,
            daddr: ip,
            dport: port,
            result: 0,
            netns: 1,
            totals: None,
        }),
    )
}

fn file(op: FileOp, path: &str) -> Event {
    ev(12, EventKind::File(FileEvent { op, path: path.into(), old_path: None, host_path: String::new(), is_dir: false }))
}

/// A profile the size of a real service: 40 executables, 60 outbound
/// flows, 30 inbound peers, 20 written directories.
fn workload() -> (Profile, Vec<(Event, Option<PeerRef>)>) {
    let mut p = Profile::new("registry.example/shop/web:1.4", "sha256:0f36", 0);
    let mut steady = Vec::new();
    for i in 0..40 {
        let e = exec(&format!("/usr/bin/tool{i}"), "/usr/bin/supervisor");
        p.observe(&e, None, 1);
        steady.push((e, None));
    }
    for i in 0..60u8 {
        let ip: IpAddr = format!("10.89.{}.{}", i / 16, i).parse().unwrap();
        let e = net(NetOp::Connect, ip, 5432 + u16::from(i % 4));
        let peer = Some(PeerRef::Ip(ip));
        p.observe(&e, peer.as_ref(), 1);
        steady.push((e, peer));
    }
    for i in 0..30u8 {
        let ip: IpAddr = format!("10.90.0.{i}").parse().unwrap();
        let e = net(NetOp::Accept, ip, 8080);
        let peer = Some(PeerRef::Ip(ip));
        p.observe(&e, peer.as_ref(), 1);
        steady.push((e, peer));
    }
    for i in 0..20 {
        let e = file(FileOp::Modify, &format!("/var/cache/app/shard{i}/data.bin"));
        p.observe(&e, None, 1);
        steady.push((e, None));
    }
    (p, steady)
}

fn bench(c: &mut Criterion) {
    let (profile, steady) = workload();
    let policies = PolicySet::new(Vec::new(), true).expect("default rules compile");
    let container =
        ContainerInfo { id: "a".repeat(64), name: "web-1".into(), image: "registry.example/shop/web:1.4".into(), ..Default::default() };
    let mut verdicts = Vec::new();
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(steady.len() as u64));
    g.bench_function("profile check + default policies, steady workload", |b| {
        b.iter(|| {
            for (e, peer) in &steady {
                let d = profile.check(black_box(e), peer.as_ref());
                verdicts.clear();
                policies.evaluate(e, Some(&container), d.is_some(), &mut verdicts);
                black_box(&verdicts);
            }
        })
    });
    g.finish();
    // `lancet trace --format json`: one Falco line per file event of one
    // process writing new names, as the file loop of `cargo xtask bench`.
    let attribution = Attribution::Container(std::sync::Arc::new(container));
    let writes: Vec<Event> = (0..1000)
        .map(|i| {
            let path = format!("/tmp/f{i}");
            let host_path = format!("/var/lib/containers/storage/overlay/{}/diff{path}", "b".repeat(64));
            let mut e = ev(42, EventKind::File(FileEvent { op: FileOp::Create, path, old_path: None, host_path, is_dir: false }));
            e.time_ns = 1_800_000_000_000_000_000 + i;
            e
        })
        .collect();
    let mut lines = JsonLines::new();
    let mut g = c.benchmark_group("output");
    g.throughput(Throughput::Elements(writes.len() as u64));
    g.bench_function("Falco JSON line, file events of one process", |b| {
        b.iter(|| push_lines(&mut lines, writes.iter().map(|e| (e, &attribution))))
    });
    // One per socket record of the connect loop: the client's connect and
    // close and the server's accept and close, two processes in turn.
    let named = |id: char, name: &str| {
        Attribution::Container(std::sync::Arc::new(ContainerInfo {
            id: id.to_string().repeat(64),
            name: name.into(),
            image: "localhost/loadgen:1".into(),
            ..Default::default()
        }))
    };
    let (client, server) = (named('c', "client"), named('d', "server"));
    let sockets: Vec<(Event, &Attribution)> = (0..1000u16)
        .flat_map(|i| {
            let port = 30_000 + i;
            let (c, s): (IpAddr, IpAddr) = ("10.89.0.3".parse().unwrap(), "10.89.0.2".parse().unwrap());
            let rec = |pid, op, saddr, sport, daddr, dport| {
                let mut e = ev(
                    pid,
                    EventKind::Net(NetEvent { op, proto: Protocol::Tcp, saddr, sport, daddr, dport, result: 0, netns: 1, totals: None }),
                );
                e.time_ns = 1_800_000_000_000_000_000 + u64::from(i);
                e
            };
            [
                (rec(42, NetOp::Connect, c, port, s, 9000), &client),
                (rec(17, NetOp::Accept, s, 9000, c, port), &server),
                (rec(17, NetOp::Close, s, 9000, c, port), &server),
                (rec(42, NetOp::Close, c, port, s, 9000), &client),
            ]
        })
        .collect();
    g.throughput(Throughput::Elements(sockets.len() as u64));
    g.bench_function("Falco JSON line, socket records of a client and its server", |b| {
        b.iter(|| push_lines(&mut lines, sockets.iter().map(|(e, a)| (e, *a))))
    });
    g.finish();
}

/// One `trace` line per record into `lines`, as the agent writes them.
fn push_lines<'a>(lines: &mut JsonLines, records: impl Iterator<Item = (&'a Event, &'a Attribution)>) {
    lines.clear();
    for (e, a) in records {
        let r = lancet_engine::output::Record { event: black_box(e), attribution: a, hostname: "node-1" };
        lines.push(&r, "lancet trace", "Informational");
    }
    black_box(lines.bytes());
}

criterion_group!(benches, bench);
criterion_main!(benches);
