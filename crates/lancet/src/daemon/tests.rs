//! The agent's decisions without root: events in, the profile learned and
//! the alerts written out. A real store in a temporary directory; no
//! kernel, no container (the events name a process that does not exist,
//! so nothing is read from `/proc`), no enforcement backend (protect mode
//! would load them; these tests stay in learn and monitor).

use super::policies::Policies;
use super::settings::Settings;
use super::workloads::workload_key;
use super::Daemon;
use crate::agent::AgentOptions;
use crate::protect::ProtectOptions;
use lancet_engine::attribution::{Attribution, ContainerInfo};
use lancet_engine::event::{Event, EventKind, ExecEvent, FileEvent, FileOp, ProcessRef};
use lancet_engine::process::ProcessTable;
use lancet_engine::profile::{Lifecycle, Mode};
use lancet_store::{Store, StoreOptions};
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A pid no process has: `/proc/<pid>` lookups find nothing.
const NO_PID: u32 = u32::MAX - 7;

/// The alerts output, shared with the test.
#[derive(Clone, Default)]
struct Out(Arc<Mutex<Vec<u8>>>);

impl Write for Out {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Out {
    /// Every alert written since the last call.
    fn take(&self) -> Vec<Value> {
        let bytes = std::mem::take(&mut *self.0.lock().unwrap());
        String::from_utf8(bytes).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

pub(super) struct Harness {
    pub(super) daemon: Daemon,
    out: Out,
    pub(super) c: Arc<ContainerInfo>,
    now: u64,
    _dir: tempfile::TempDir,
}

impl Harness {
    pub(super) fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let policy_dir = dir.path().join("policies");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(&policy_dir).unwrap();
        let settings = Settings {
            mode: Mode::Learn,
            state_dir: state.clone(),
            policy_dir: policy_dir.clone(),
            alerts: None,
            listen: None,
            socket: dir.path().join("lancet.sock"),
            read_group: None,
            lifecycle: Lifecycle::default(),
            dedupe_window: Duration::from_secs(60),
            agent: AgentOptions { ring_mb: 1, files: true, sensitive: Vec::new(), host_sensitive: false },
            protect: ProtectOptions {
                pin_dir: dir.path().join("pins"),
                fail_mode: Default::default(),
                exec_cache: true,
                learned_code_only: true,
                response_expiry: Duration::from_secs(900),
                protected_files: Vec::new(),
                readonly_dirs: Vec::new(),
                state_dir: state.clone(),
                host_root: "/".into(),
                dns_servers: Vec::new(),
            },
            only_label: None,
            fleet: None,
            outputs: Default::default(),
        };
        let store = Store::open(&state.join("lancet.db"), StoreOptions::default()).unwrap();
        let policies = Policies::load(&policy_dir).unwrap();
        let out = Out::default();
        let daemon = Daemon::new(
            settings,
            store,
            policies,
            Some(Box::new(out.clone())),
            None,
            Default::default(),
            Default::default(),
            Path::new("/nonexistent-cgroup2").into(),
            false,
        );
        let c = Arc::new(ContainerInfo {
            id: "a1".repeat(32),
            name: "web".into(),
            image: "localhost/web:1".into(),
            image_digest: format!("sha256:{}", "b2".repeat(32)),
            cgroup_path: "/machine.slice/libpod-test.scope".into(),
            ..Default::default()
        });
        Harness { daemon, out, c, now: 1_800_000_000_000_000_000, _dir: dir }
    }

    fn event(&mut self, kind: EventKind) -> Event {
        self.now += 1_000_000;
        Event {
            time_ns: self.now,
            cgroup_id: 42,
            process: ProcessRef { pid: NO_PID, tid: NO_PID, ppid: NO_PID - 1, comm: "sh".into(), ..Default::default() },
            kind,
        }
    }

    fn feed(&mut self, kind: EventKind) {
        let ev = self.event(kind);
        self.daemon.on_event(&ev, &Attribution::Container(Arc::clone(&self.c)), &mut ProcessTable::new(16)).unwrap();
    }

    fn exec(&mut self, path: &str) {
        self.feed(EventKind::Exec(ExecEvent {
            filename: path.into(),
            cwd: "/".into(),
            argv: vec![path.rsplit('/').next().unwrap().into()],
            parent_comm: "sh".into(),
            exe_ino: 7,
            exe_dev: 9,
            exe_nlink: 1,
            exe_fs_magic: lancet_engine::drift::OVERLAYFS_MAGIC,
            ..Default::default()
        }));
    }

    fn write(&mut self, op: FileOp, path: &str) {
        self.feed(EventKind::File(FileEvent { op, path: path.into(), old_path: None, host_path: String::new(), is_dir: false }));
    }

    fn set_mode(&mut self, mode: Mode) {
        let key = workload_key(&self.c).into_owned();
        let now = self.now;
        self.daemon.workloads.map.get_mut(&key).expect("the workload was seen").profile.set_mode(mode, now);
    }

    fn profile_has_executable(&self, path: &str) -> bool {
        self.daemon.workloads.map[workload_key(&self.c).as_ref()].profile.has_executable(path)
    }
}

fn rules(alerts: &[Value]) -> Vec<&str> {
    alerts.iter().map(|a| a["rule"].as_str().unwrap()).collect()
}

#[test]
fn learned_behaviour_is_quiet_and_what_is_new_alerts_in_monitor() {
    let mut h = Harness::new();
    h.exec("/usr/sbin/httpd");
    h.write(FileOp::Create, "/var/log/httpd/access.log");
    assert!(h.out.take().is_empty(), "learning raises nothing");
    assert!(h.profile_has_executable("/usr/sbin/httpd"));

    h.set_mode(Mode::Monitor);
    h.exec("/usr/sbin/httpd");
    h.write(FileOp::Modify, "/var/log/httpd/access.log");
    assert!(h.out.take().is_empty(), "what was learned is normal");

    h.exec("/usr/local/bin/report");
    let alerts = h.out.take();
    assert_eq!(rules(&alerts), ["profile deviation: new_executable"]);
    let f = &alerts[0]["output_fields"];
    assert_eq!(f["lancet.policy"], "profile");
    assert_eq!(f["lancet.would_block"], true);
    assert_eq!(f["lancet.deviation"]["path"], "/usr/local/bin/report", "what 'add to profile' adds");

    // A rule that names the event speaks for it, and still says that
    // protect mode would refuse it, and what "add to profile" adds.
    h.exec("/usr/bin/nc");
    let alerts = h.out.take();
    assert_eq!(rules(&alerts), ["Netcat or socat run not in profile"]);
    let f = &alerts[0]["output_fields"];
    assert_eq!(f["lancet.policy"], "lancet-defaults");
    assert_eq!(f["lancet.mode"], "monitor");
    assert_eq!(f["lancet.would_block"], true);
    assert_eq!(f["lancet.enforced"], false);
    assert_eq!(f["lancet.workload"], h.c.image_digest.as_str());
    assert_eq!(f["lancet.deviation"]["path"], "/usr/bin/nc", "what 'add to profile' adds");
    assert_eq!(f["container.name"], "web");
    // Monitor mode learns nothing.
    assert!(!h.profile_has_executable("/usr/bin/nc"));
}

#[test]
fn a_file_written_then_run_is_drift_in_every_mode_and_never_learned() {
    let mut h = Harness::new();
    h.write(FileOp::Create, "/tmp/payload");
    h.exec("/tmp/payload");
    let alerts = h.out.take();
    assert_eq!(rules(&alerts), ["Drift: written"], "{alerts:?}");
    assert_eq!(alerts[0]["output_fields"]["lancet.policy"], "drift");
    assert_eq!(alerts[0]["output_fields"]["lancet.mode"], "learn");
    assert!(!h.profile_has_executable("/tmp/payload"), "drift is never learned as normal");
}

#[test]
fn writes_are_judged_by_the_write_sets() {
    let mut h = Harness::new();
    h.exec("/usr/sbin/httpd");
    h.set_mode(Mode::Monitor);
    // Scratch space is writable by design: nothing to say.
    h.write(FileOp::Create, "/tmp/session-1");
    assert!(h.out.take().is_empty());
    // The protected set: high, and refused in protect mode.
    h.write(FileOp::Create, "/var/lib/dpkg/status-new");
    let alerts = h.out.take();
    assert_eq!(rules(&alerts), ["profile deviation: protected_write"]);
    assert_eq!(alerts[0]["priority"], "Error");
    assert_eq!(alerts[0]["output_fields"]["lancet.would_block"], true);
    // The default rule about /etc speaks for a write there, and says that
    // protect mode would refuse it.
    h.write(FileOp::Create, "/etc/cron.d/job");
    let alerts = h.out.take();
    assert_eq!(rules(&alerts), ["Write below etc"]);
    assert_eq!(alerts[0]["output_fields"]["lancet.would_block"], true);
    assert_eq!(alerts[0]["output_fields"]["lancet.deviation"]["type"], "protected_write");
    // Outside both sets: alerted once per anchor per container life, and
    // protect mode would allow it.
    h.write(FileOp::Create, "/srv/cache/a");
    h.write(FileOp::Create, "/srv/cache/b");
    let alerts = h.out.take();
    assert_eq!(rules(&alerts), ["profile deviation: new_written_dir"], "{alerts:?}");
    assert_eq!(alerts[0]["output_fields"]["lancet.would_block"], false);
}

#[test]
fn the_runtimes_own_work_is_nobodys() {
    let mut h = Harness::new();
    h.exec("/usr/sbin/httpd");
    h.set_mode(Mode::Monitor);
    let mut ev = h.event(EventKind::Exec(ExecEvent { filename: "/usr/bin/runc".into(), ..Default::default() }));
    ev.process.runtime = true;
    h.daemon.on_event(&ev, &Attribution::Container(Arc::clone(&h.c)), &mut ProcessTable::new(16)).unwrap();
    assert!(h.out.take().is_empty(), "runc setting the container up is not the workload");
}

#[test]
fn host_events_are_not_a_containers() {
    let mut h = Harness::new();
    let ev = h.event(EventKind::Exec(ExecEvent { filename: "/usr/bin/nc".into(), ..Default::default() }));
    h.daemon.on_event(&ev, &Attribution::Host, &mut ProcessTable::new(16)).unwrap();
    assert!(h.out.take().is_empty());
    assert!(h.daemon.workloads.map.is_empty());
}

/// In a fleet, what another node learned of the same image is allowed
/// here (the engine's merge), the fleet's mode is the workload's, an older
/// revision of it changes nothing, and observations withdrawn stop counting.
/// Nothing of the other node's is learned into this node's own profile.
#[test]
fn in_a_fleet_another_nodes_observations_and_the_fleets_mode_are_enforced() {
    use super::fleet::FleetBook;
    use crate::fleet::FromFleet;
    let mut h = Harness::new();
    h.daemon.workloads.fleet = Some(FleetBook::default());
    h.exec("/usr/sbin/httpd");
    let key = workload_key(&h.c).into_owned();
    let mut b = Harness::new();
    b.exec("/usr/local/bin/report");
    let theirs = b.daemon.workloads.map[&key].profile.clone();
    assert!(h.daemon.on_fleet(FromFleet::Observations { workload: key.clone(), node: "b".into(), profile: Box::new(theirs), bytes: 100 }));
    assert!(h.daemon.on_fleet(FromFleet::Mode { workload: key.clone(), mode: Mode::Monitor, revision: 3, by: "b".into() }));
    assert_eq!(h.daemon.workloads.map[&key].profile.mode(), Mode::Monitor);
    h.exec("/usr/local/bin/report");
    h.exec("/usr/sbin/httpd");
    assert!(h.out.take().is_empty(), "what node b learned is normal here too");
    h.exec("/usr/bin/top");
    assert_eq!(rules(&h.out.take()), ["profile deviation: new_executable"]);
    assert!(!h.profile_has_executable("/usr/local/bin/report"), "the own profile keeps only what this node saw");
    // A stale revision (delivered late) does not undo a newer decision.
    assert!(!h.daemon.on_fleet(FromFleet::Mode { workload: key.clone(), mode: Mode::Learn, revision: 2, by: "c".into() }));
    assert_eq!(h.daemon.workloads.map[&key].profile.mode(), Mode::Monitor);
    // Node b's observations deleted: its executables deviate again.
    assert!(h.daemon.on_fleet(FromFleet::ObservationsGone { workload: key.clone(), node: "b".into() }));
    h.exec("/usr/local/bin/report");
    assert_eq!(rules(&h.out.take()), ["profile deviation: new_executable"]);
}

/// A workload first seen on this node after the fleet decided its mode and
/// another node shared what it learned starts from both.
#[test]
fn in_a_fleet_a_workload_new_here_starts_from_the_fleet() {
    use super::fleet::FleetBook;
    use crate::fleet::FromFleet;
    let mut h = Harness::new();
    h.daemon.workloads.fleet = Some(FleetBook::default());
    let key = workload_key(&h.c).into_owned();
    let mut b = Harness::new();
    b.exec("/usr/sbin/httpd");
    let theirs = b.daemon.workloads.map[&key].profile.clone();
    h.daemon.on_fleet(FromFleet::Observations { workload: key.clone(), node: "b".into(), profile: Box::new(theirs), bytes: 100 });
    h.daemon.on_fleet(FromFleet::Mode { workload: key.clone(), mode: Mode::Monitor, revision: 7, by: "b".into() });
    assert!(h.daemon.workloads.map.is_empty(), "not loaded here yet");
    h.exec("/usr/sbin/httpd");
    assert!(h.out.take().is_empty(), "learned on b, so normal here");
    assert_eq!(h.daemon.workloads.map[&key].profile.mode(), Mode::Monitor);
    h.exec("/usr/bin/nc.x");
    assert_eq!(rules(&h.out.take()), ["profile deviation: new_executable"]);
}

/// A reset (or an import) in a fleet replaces this node's own profile only:
/// what the other nodes observed still counts in what is enforced.
#[test]
fn in_a_fleet_a_reset_keeps_the_other_nodes_observations() {
    use super::fleet::FleetBook;
    use crate::fleet::FromFleet;
    let mut h = Harness::new();
    h.daemon.workloads.fleet = Some(FleetBook::default());
    h.exec("/usr/sbin/httpd");
    let key = workload_key(&h.c).into_owned();
    let mut b = Harness::new();
    b.exec("/usr/local/bin/report");
    let theirs = b.daemon.workloads.map[&key].profile.clone();
    h.daemon.on_fleet(FromFleet::Observations { workload: key.clone(), node: "b".into(), profile: Box::new(theirs), bytes: 100 });
    h.daemon.answer(crate::api::Request::Reset { workload: key.clone() }).unwrap();
    assert!(!h.profile_has_executable("/usr/sbin/httpd"), "this node's own profile was reset");
    h.set_mode(Mode::Monitor);
    h.exec("/usr/local/bin/report");
    assert!(h.out.take().is_empty(), "node b's observations still count");
    h.exec("/usr/sbin/httpd");
    assert_eq!(rules(&h.out.take()), ["profile deviation: new_executable"]);
}

/// In a fleet the lifecycle does not promote a shared workload by itself:
/// it proposes the promotion to the fleet (here unreachable: answered 503),
/// and the workload stays in its mode until the fleet says otherwise.
#[test]
fn in_a_fleet_the_lifecycle_proposes_and_does_not_promote_alone() {
    use super::fleet::{Fleet, FleetBook};
    use crate::fleet::{FleetConfig, FromFleet, Link};
    let mut h = Harness::new();
    h.daemon.workloads.fleet = Some(FleetBook::default());
    let cfg = FleetConfig {
        url: "nats://127.0.0.1:1".into(),
        node: "a".into(),
        cluster: "c".into(),
        store: None,
        state_dir: None,
        guarantees: Arc::default(),
        security: Default::default(),
    };
    h.daemon.fleet = Some(Fleet::new(Link::start(cfg).unwrap()));
    h.daemon.settings.lifecycle = Lifecycle { min_learning: Duration::ZERO, quiet_period: Duration::ZERO, auto_protect_after: None };
    h.exec("/usr/sbin/httpd");
    let key = workload_key(&h.c).into_owned();
    let reload = std::sync::atomic::AtomicBool::new(false);
    h.daemon.every_second(&reload).unwrap();
    assert_eq!(h.daemon.workloads.map[&key].profile.mode(), Mode::Learn, "not promoted alone");
    assert!(h.daemon.fleet.as_ref().unwrap().in_flight(&key), "proposed");
    // NATS is unreachable: the fleet thread refuses it, nothing changes.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h.daemon.fleet.as_ref().unwrap().in_flight(&key) {
        h.daemon.fleet_tick();
        assert!(std::time::Instant::now() < deadline, "the proposal was never answered");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(h.daemon.workloads.map[&key].profile.mode(), Mode::Learn);
    // The fleet's decision is what moves it.
    h.daemon.on_fleet(FromFleet::Mode { workload: key.clone(), mode: Mode::Monitor, revision: 1, by: "b".into() });
    assert_eq!(h.daemon.workloads.map[&key].profile.mode(), Mode::Monitor);
}

/// Another node sharing its profile again with only counts and times new
/// leaves the enforced profile as it is (no re-apply of the backends);
/// with a new entry it changes.
#[test]
fn in_a_fleet_the_same_observations_again_change_nothing_enforced() {
    use super::fleet::FleetBook;
    use crate::fleet::FromFleet;
    let mut h = Harness::new();
    h.daemon.workloads.fleet = Some(FleetBook::default());
    h.exec("/usr/sbin/httpd");
    let key = workload_key(&h.c).into_owned();
    let mut b = Harness::new();
    b.exec("/usr/local/bin/report");
    let send = |h: &mut Harness, p: &lancet_engine::profile::Profile| {
        h.daemon.on_fleet(FromFleet::Observations { workload: key.clone(), node: "b".into(), profile: Box::new(p.clone()), bytes: 100 });
    };
    send(&mut h, &b.daemon.workloads.map[&key].profile);
    let generation = |h: &mut Harness| h.daemon.workloads.map.get_mut(&key).unwrap().generation;
    let (g1, s1) = (generation(&mut h), h.daemon.workloads.map.get_mut(&key).unwrap().shared());
    b.exec("/usr/local/bin/report");
    send(&mut h, &b.daemon.workloads.map[&key].profile);
    assert_eq!(generation(&mut h), g1, "the same entries, seen once more");
    assert!(Arc::ptr_eq(&s1, &h.daemon.workloads.map.get_mut(&key).unwrap().shared()), "the backends' snapshot is kept");
    b.exec("/usr/bin/new");
    send(&mut h, &b.daemon.workloads.map[&key].profile);
    assert_ne!(generation(&mut h), g1, "a new entry");
    h.set_mode(Mode::Monitor);
    h.exec("/usr/bin/new");
    assert!(h.out.take().is_empty(), "the new entry is enforced");
}

/// What a node tells the hub it runs: each workload with a live container,
/// the mode this node enforces and its containers.
#[test]
fn in_a_fleet_the_node_reports_the_workloads_it_runs() {
    let mut h = Harness::new();
    assert!(h.daemon.presence().is_empty(), "nothing runs yet");
    h.exec("/usr/sbin/httpd");
    let key = workload_key(&h.c).into_owned();
    let p = h.daemon.presence();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(
        (p[0].workload.as_str(), p[0].image.as_str(), p[0].mode.as_str(), p[0].count),
        (key.as_str(), "localhost/web:1", "learn", 1)
    );
    assert_eq!(p[0].containers[0].name, "web");
    h.set_mode(Mode::Protect);
    assert_eq!(h.daemon.presence()[0].mode, "protect");
}
