//! The steady state of a file event and of a socket record, past the
//! sensor (whose own part is counted in `lancet-sensor`): attribution,
//! the daemon's learning (learn mode) or checks (monitor mode), and the
//! `lancet trace` JSON line, allocate nothing per event. The container is
//! the podman fixture of `lancet-engine`, attributed from its files in a
//! temporary host root; allocations are counted on this test's thread only
//! (`lancet_sensor::alloc_count`), since the harness's other threads
//! allocate at any time.

use super::tests::Harness;
use super::workloads::workload_key;
use crate::agent::Pipeline;
use lancet_engine::attribution::{Attribution, AttributionConfig, Attributor};
use lancet_engine::batch::{set_str, EventBatch, EventSink};
use lancet_engine::event::{EventKind, FileOp, NetEvent, NetOp, Protocol, TcpTotals};
use lancet_engine::json_line::JsonLines;
use lancet_engine::output::Record;
use lancet_engine::process::ProcEntry;
use lancet_engine::profile::Mode;
use lancet_sensor::alloc_count::thread_allocations;
use lancet_testkit::copy_tree;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const T1: &str = "2e8bdd302d6f3109f54b92f320cfa00a76d6653727e89863aa6329a9cdbbea02";
/// The fixture's other container (the same image: the same workload).
const PROBE: &str = "49601d56870be0f626b3625a1fb7672fcafc43012409076af9fbaae86e0338ce";
/// The fixture container's overlay upper directory.
const UPPER: &str = "/var/lib/containers/storage/overlay/749c1ce0e70e633d7898507105456ba0e3d833bbf389a399563a89dfeb984633/diff";
/// Pids no process has (`/proc/<pid>` lookups find nothing): one in each
/// container.
const PID: u32 = u32::MAX - 9;
const PROBE_PID: u32 = u32::MAX - 10;

struct Setup {
    pipeline: Pipeline,
    harness: Harness,
    host: tempfile::TempDir,
    cgroup_id: u64,
    probe_cgroup_id: u64,
}

/// A host root holding podman's state for container `t1`, its cgroup, the
/// pipeline that attributes to it and a daemon in learn mode; `PID` is a
/// process of the container in the process table (as its exec left it).
fn setup() -> Setup {
    let host = tempfile::tempdir().unwrap();
    copy_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../lancet-engine/tests/fixtures/podman"), host.path());
    let cg_root = host.path().join("sys/fs/cgroup/unified");
    let cg = cg_root.join(format!("libpod_parent/libpod-{T1}"));
    std::fs::create_dir_all(&cg).unwrap();
    let cgroup_id = std::fs::metadata(&cg).unwrap().ino();
    let probe_cg = cg_root.join(format!("libpod_parent/libpod-{PROBE}"));
    std::fs::create_dir_all(&probe_cg).unwrap();
    let probe_cgroup_id = std::fs::metadata(&probe_cg).unwrap().ino();
    let mut attributor = Attributor::new(AttributionConfig {
        host_root: host.path().to_path_buf(),
        cgroup2_root: Some(cg_root.clone()),
        cache_capacity: 64,
    })
    .unwrap();
    let existing = attributor.scan().unwrap();
    assert!(existing.iter().any(|c| c.id == T1), "the fixture's container is found");
    let mut pipeline = Pipeline::new(attributor, cg_root, host.path(), existing);
    pipeline.procs.insert(PID, ProcEntry { exe: "/loadgen".into(), comm: "loadgen".into(), cgroup_id, ppid: 1, ..Default::default() });
    let probe = ProcEntry { exe: "/loadgen".into(), comm: "loadgen".into(), cgroup_id: probe_cgroup_id, ppid: 1, ..Default::default() };
    pipeline.procs.insert(PROBE_PID, probe);
    Setup { pipeline, harness: Harness::new(), host, cgroup_id, probe_cgroup_id }
}

/// Events handled end to end, as the loop and `lancet trace` handle them;
/// `fill` writes event `i` into its (reused) slot.
fn handle(s: &mut Setup, batch: &mut EventBatch, lines: &mut JsonLines, n: usize, fill: &dyn Fn(usize, &mut lancet_engine::Event)) {
    for i in 0..n {
        fill(i, batch.slot());
    }
    for ev in batch.events_mut() {
        let a = s.pipeline.attribute(ev);
        assert!(matches!(&a, Attribution::Container(c) if c.id == T1 || c.id == PROBE), "attributed to its container: {a:?}");
        s.pipeline.counters.note(&ev.kind);
        s.harness.daemon.on_event(ev, &a, &mut s.pipeline.procs).unwrap();
        lines.push(&Record { event: ev, attribution: &a, hostname: "h" }, "lancet trace", "Informational");
        lines.clear();
    }
    batch.clear();
}

/// Allocations of the fewest of three runs of `n` events, after a warm-up
/// run: the daemon checks once a second which process a container's is
/// (reading /proc), and such a check may fall in one run.
fn fewest(s: &mut Setup, n: usize, fill: &dyn Fn(usize, &mut lancet_engine::Event)) -> u64 {
    let (mut batch, mut lines) = (EventBatch::new(), JsonLines::new());
    handle(s, &mut batch, &mut lines, n, fill);
    (0..3)
        .map(|_| {
            let before = thread_allocations();
            handle(s, &mut batch, &mut lines, n, fill);
            thread_allocations() - before
        })
        .min()
        .unwrap_or(u64::MAX)
}

fn set_mode(s: &mut Setup, mode: Mode) {
    let c = s.pipeline.attributor.find(T1).unwrap();
    let key = workload_key(&c).into_owned();
    s.harness.daemon.workloads.map.get_mut(&key).expect("the workload was seen").profile.set_mode(mode, 1);
}

#[test]
fn a_steady_stream_of_file_events_allocates_nothing() {
    let mut s = setup();
    // 64 files created, written and deleted, again and again (the bench's
    // file loop), seen by fanotify in the upper directory.
    let paths: Vec<String> = (0..64).map(|i| format!("{}{UPPER}/tmp/f{i}", s.host.path().display())).collect();
    let fill = |i: usize, ev: &mut lancet_engine::Event| {
        let op = [FileOp::Create, FileOp::Modify, FileOp::Delete][i % 3];
        ev.set_file(1_800_000_000_000_000_000 + i as u64 * 1000, PID, op, &paths[i / 3 % 64], None, false);
    };
    for mode in [Mode::Learn, Mode::Monitor] {
        if mode == Mode::Monitor {
            set_mode(&mut s, mode);
        }
        let n = fewest(&mut s, 64 * 3 * 4, &fill);
        assert_eq!(n, 0, "{n} allocations for {} file events in {mode:?} mode", 64 * 3 * 4);
    }
    // What was handled is what the container saw.
    let mut batch = EventBatch::new();
    fill(1, batch.slot());
    let ev = &mut batch.events_mut()[0];
    s.pipeline.attribute(ev);
    let EventKind::File(f) = &ev.kind else { panic!("a file event") };
    assert_eq!((f.op, f.path.as_str()), (FileOp::Modify, "/tmp/f0"));
    assert_eq!(ev.process.comm, "loadgen");
}

/// The events of one merged fanotify record (one process, one name) take
/// the first one's attribution; another process, another cgroup, another
/// name or the end of the batch attributes afresh.
#[test]
fn the_events_of_one_name_by_one_process_are_attributed_as_the_first() {
    let mut s = setup();
    let root = s.host.path().display().to_string();
    let host = |name: &str| format!("{root}{UPPER}/tmp/{name}");
    let mut ev = lancet_engine::Event::default();
    let mut attribute = |s: &mut Setup, pid: u32, op: FileOp, path: &str| {
        ev.set_file(1, pid, op, path, None, false);
        let a = s.pipeline.attribute(&mut ev);
        let EventKind::File(f) = &ev.kind else { panic!("a file event") };
        let Attribution::Container(c) = a else { panic!("attributed: {a:?}") };
        (c.id.clone(), f.path.clone())
    };
    let t1 = (T1.to_string(), "/tmp/a".to_string());
    assert_eq!(attribute(&mut s, PID, FileOp::Create, &host("a")), t1);
    assert_eq!(attribute(&mut s, PID, FileOp::Modify, &host("a")), t1, "the same name again");
    assert_eq!(attribute(&mut s, PID, FileOp::Delete, &host("b")).1, "/tmp/b", "another name");
    // The other container's process writing the same host path (a shared
    // volume): its own cgroup names it, not the previous event's.
    assert_eq!(attribute(&mut s, PROBE_PID, FileOp::Modify, &host("b")).0, PROBE);
    // The process moved to another cgroup: the same name is looked up again.
    s.pipeline.procs.get_mut(PID).unwrap().cgroup_id = s.probe_cgroup_id;
    assert_eq!(attribute(&mut s, PID, FileOp::Modify, &host("b")).0, PROBE);
    s.pipeline.procs.get_mut(PID).unwrap().cgroup_id = s.cgroup_id;
    assert_eq!(attribute(&mut s, PID, FileOp::Modify, &host("b")).0, T1);
    s.pipeline.end_batch();
    assert_eq!(attribute(&mut s, PID, FileOp::Modify, &host("b")), (T1.to_string(), "/tmp/b".to_string()));
}

/// A file of a name of its own each time (the bench's file loop): once the
/// drift write log holds its bound of paths, the entry it forgets makes
/// room for the new one in its own strings (after one more round of the
/// log, by when each of them has grown to the length of the paths).
#[test]
fn new_files_all_the_time_allocate_nothing_once_the_write_log_is_full() {
    let mut s = setup();
    let per_run = 64 * 3;
    let files = 2 * super::WRITE_LOG_PER_CONTAINER + 8 * per_run;
    let paths: Vec<String> = (0..files).map(|i| format!("{}{UPPER}/tmp/u{i}", s.host.path().display())).collect();
    let next = std::cell::Cell::new(0usize);
    let fill = |i: usize, ev: &mut lancet_engine::Event| {
        let op = [FileOp::Create, FileOp::Modify, FileOp::Delete][i % 3];
        let n = next.get();
        ev.set_file(1_800_000_000_000_000_000 + n as u64, PID, op, &paths[n / 3 % files], None, false);
        next.set(n + 1);
    };
    let (mut batch, mut lines) = (EventBatch::new(), JsonLines::new());
    // Fill the log, and go round it once more.
    while next.get() < 3 * 2 * super::WRITE_LOG_PER_CONTAINER {
        handle(&mut s, &mut batch, &mut lines, per_run, &fill);
    }
    let n = fewest(&mut s, per_run, &fill);
    assert_eq!(n, 0, "{n} allocations for {per_run} events of new files");
}

#[test]
fn a_steady_stream_of_socket_records_allocates_nothing() {
    let mut s = setup();
    let (client_cg, server_cg) = (s.cgroup_id, s.probe_cgroup_id);
    let (client, server) = ("10.89.0.5".parse().unwrap(), "10.89.0.4".parse().unwrap());
    // The bench's connect loop: a client in t1 connects to a server in the
    // other container (a peer known as a workload), each side closes with
    // its byte counts.
    let fill = |i: usize, ev: &mut lancet_engine::Event| {
        ev.time_ns = 1_800_000_000_000_000_000 + i as u64 * 1000;
        let port = 40_000 + (i / 4 % 1000) as u16;
        let (pid, cg, op, (saddr, sport), (daddr, dport), outbound) = match i % 4 {
            0 => (PID, client_cg, NetOp::Connect, (client, port), (server, 9000), true),
            1 => (PROBE_PID, server_cg, NetOp::Accept, (server, 9000), (client, port), false),
            2 => (PID, client_cg, NetOp::Close, (client, port), (server, 9000), true),
            _ => (PROBE_PID, server_cg, NetOp::Close, (server, 9000), (client, port), false),
        };
        ev.cgroup_id = cg;
        ev.process.reset_to_pid(pid);
        set_str(&mut ev.process.comm, "loadgen");
        let totals = (op == NetOp::Close).then_some(TcpTotals { bytes_sent: 10, bytes_received: 20, outbound: Some(outbound) });
        let netns = if outbound { 4026532000 } else { 4026532001 };
        ev.kind = EventKind::Net(NetEvent { op, proto: Protocol::Tcp, saddr, sport, daddr, dport, result: 0, netns, totals });
    };
    for mode in [Mode::Learn, Mode::Monitor] {
        if mode == Mode::Monitor {
            set_mode(&mut s, mode);
        }
        let n = fewest(&mut s, 800, &fill);
        assert_eq!(n, 0, "{n} allocations for 800 socket records in {mode:?} mode");
    }
    // The connects' peer was named as a workload (the path that cloned
    // its name for every connection).
    assert!(matches!(s.harness.daemon.workloads.peer(server), lancet_engine::profile::PeerRef::Workload(_)));
}
