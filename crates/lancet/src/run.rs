//! `lancet run`: the agent. It learns what each workload (all replicas of one
//! image) normally does into a profile, promotes the profile from learn to
//! monitor (and, if asked, to protect) once it is quiet, and raises one alert,
//! deduplicated and rate limited, when a workload departs from its profile or
//! breaks a policy rule. Profiles, alerts and activity live in the store.

use crate::agent::{hostname, run_loop, AgentOptions, Pipeline};
use crate::api::{self, Reply, Request};
use crate::config::{self, parse_duration, FileConfig};
use crate::policy_cmd::read_policies;
use crate::protect::{Enforced, GuardRequest, ProtectOptions, Protector};
use anyhow::{bail, Context, Result};
use lancet_engine::alerts::{Admit, AlertKey, AlertLimits, Deduper};
use lancet_engine::attribution::{Attribution, ContainerInfo};
use lancet_engine::drift::{
    classify_exec, classify_indirect, indirect_target, Drift, DriftKind, FileFacts, WriteLog, HUGETLBFS_MAGIC, RAMFS_MAGIC, TMPFS_MAGIC,
};
use lancet_engine::event::{Event, EventKind, ExecEvent, FileEvent, FileOp, L4Proto, NetEvent, NetOp, ProcessRef};
use lancet_engine::output::{falco_json, summary, Record};
use lancet_engine::policy::{effective_action, Policy, PolicySet, Verdict};
use lancet_engine::policy::{Action, Severity};
use lancet_engine::profile::Deviation;
use lancet_engine::profile::{Lifecycle, Mode, PeerRef, Profile};
use lancet_engine::response::{DenyReason, Ladder};
use lancet_sensor::enforce::{EnforceOp, EnforceReason, EnforceRecord};
use lancet_store::{AlertQuery, NewAlert, Store, StoreOptions};
use serde_json::json;
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Configuration file; flags given here win over it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Mode for workloads without a profile of their own.
    #[arg(long, value_parser = ["learn", "monitor", "protect"])]
    mode: Option<String>,
    /// Where the store lives (default /var/lib/lancet).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Policy files (*.yaml) (default /etc/lancet/policies.d).
    #[arg(long, value_name = "DIR")]
    policy_dir: Option<PathBuf>,
    /// Alerts as JSON lines to this file, or `-` for stdout.
    #[arg(long, value_name = "FILE|-")]
    alerts: Option<String>,
    /// Address of the local API used by `lancet profile` and `lancet alerts`.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Learn at least this long before promoting (e.g. 10m).
    #[arg(long, value_name = "DURATION")]
    min_learning: Option<String>,
    /// Promote once nothing new was learned for this long (e.g. 5m).
    #[arg(long, value_name = "DURATION")]
    quiet_period: Option<String>,
    /// Promote monitor → protect after this long without a deviation.
    #[arg(long, value_name = "DURATION")]
    auto_protect_after: Option<String>,
    /// Where pinned BPF maps and links live (default /sys/fs/bpf/lancet).
    #[arg(long, value_name = "DIR")]
    pin_dir: Option<PathBuf>,
    /// Stop after this many seconds (for tests and benchmarks).
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
}

/// Settings after flags, file and defaults are merged.
#[derive(Debug)]
pub struct Settings {
    pub mode: Mode,
    pub state_dir: PathBuf,
    pub policy_dir: PathBuf,
    pub alerts: Option<String>,
    pub listen: SocketAddr,
    pub lifecycle: Lifecycle,
    pub dedupe_window: Duration,
    pub agent: AgentOptions,
    pub protect: ProtectOptions,
}

pub fn settings(args: &RunArgs) -> Result<Settings> {
    let (path, explicit) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(config::DEFAULT_CONFIG), false),
    };
    let file: FileConfig = config::load_file(&path, explicit)?;
    let dur = |flag: &Option<String>, file: &Option<String>, default: Option<Duration>| -> Result<Option<Duration>> {
        match flag.as_ref().or(file.as_ref()) {
            Some(s) => Ok(Some(parse_duration(s)?)),
            None => Ok(default),
        }
    };
    let defaults = Lifecycle::default();
    let lifecycle = Lifecycle {
        min_learning: dur(&args.min_learning, &file.min_learning, Some(defaults.min_learning))?.unwrap_or(defaults.min_learning),
        quiet_period: dur(&args.quiet_period, &file.quiet_period, Some(defaults.quiet_period))?.unwrap_or(defaults.quiet_period),
        auto_protect_after: dur(&args.auto_protect_after, &file.auto_protect_after, defaults.auto_protect_after)?,
    };
    Ok(Settings {
        mode: args.mode.as_deref().or(file.mode.as_deref()).unwrap_or("learn").parse::<Mode>().map_err(anyhow::Error::msg)?,
        state_dir: args.state_dir.clone().or(file.state_dir).unwrap_or_else(|| PathBuf::from("/var/lib/lancet")),
        policy_dir: args.policy_dir.clone().or(file.policy_dir).unwrap_or_else(|| PathBuf::from("/etc/lancet/policies.d")),
        alerts: args.alerts.clone().or(file.alerts),
        listen: args.listen.or(file.listen).unwrap_or_else(|| config::DEFAULT_API.parse().expect("valid default")),
        lifecycle,
        dedupe_window: dur(&None, &file.dedupe_window, Some(Duration::from_secs(60)))?.unwrap_or(Duration::from_secs(60)),
        agent: AgentOptions {
            ring_mb: file.ring_mb.unwrap_or(8),
            files: file.files.unwrap_or(true),
            sensitive: file.sensitive_paths.unwrap_or_default(),
            host_sensitive: false,
        },
        protect: ProtectOptions {
            pin_dir: args.pin_dir.clone().or(file.pin_dir).unwrap_or_else(|| PathBuf::from(config::DEFAULT_PIN_DIR)),
            fail_mode: file.fail_mode.unwrap_or_default(),
            exec_cache: file.exec_cache.unwrap_or(true),
            response_expiry: dur(&None, &file.response_expiry, Some(Duration::from_secs(900)))?.unwrap_or(Duration::from_secs(900)),
            protected_files: file
                .protected_files
                .unwrap_or_else(|| config::DEFAULT_PROTECTED_FILES.iter().map(|s| s.to_string()).collect()),
            readonly_dirs: file.readonly_dirs.unwrap_or_default(),
        },
    })
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// The profile key of a container: its image digest where the runtime knows
/// it, else its image id, else its image name.
/// Borrowed where it can be: this runs for every event.
pub fn workload_key(c: &ContainerInfo) -> Cow<'_, str> {
    match [&c.image_digest, &c.image_id, &c.image].into_iter().find(|s| !s.is_empty()) {
        Some(k) => Cow::Borrowed(k.as_str()),
        None => Cow::Owned(format!("container:{}", c.id)),
    }
}

/// Reads every `*.yaml`/`*.yml` in the policy directory. All errors of all
/// files are returned (each `file:line:col: message`).
pub fn load_policy_dir(dir: &Path) -> std::result::Result<Vec<Policy>, Vec<String>> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => {
            rd.flatten().map(|e| e.path()).filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))).collect()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(vec![format!("{}: {e}", dir.display())]),
    };
    files.sort();
    match read_policies(&files) {
        (policies, errors) if errors.is_empty() => Ok(policies),
        (_, errors) => Err(errors),
    }
}

/// A fingerprint of the policy directory (names, sizes, mtimes), to notice
/// edits without inotify.
fn dir_stamp(dir: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let m = e.metadata().ok()?;
                    Some((e.path(), m.len(), m.modified().ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

struct Workload {
    profile: Profile,
    dirty: bool,
    last_deviation: Option<u64>,
    /// A snapshot for the enforcement backends, taken when first needed
    /// after a change (protect-mode profiles change rarely: import, promote).
    shared: Option<Arc<Profile>>,
}

impl Workload {
    fn new(profile: Profile) -> Self {
        Workload { profile, dirty: true, last_deviation: None, shared: None }
    }

    fn changed(&mut self) {
        self.dirty = true;
        self.shared = None;
    }

    fn shared(&mut self) -> Arc<Profile> {
        Arc::clone(self.shared.get_or_insert_with(|| Arc::new(self.profile.clone())))
    }
}

/// What the daemon knows of a live container beyond its attribution.
#[derive(Debug, Clone, Copy, Default)]
struct Live {
    cgroup_id: u64,
    /// The last process seen in it.
    pid: u32,
}

struct Daemon {
    settings: Settings,
    store: Store,
    policies: PolicySet,
    policy_stamp: Vec<(PathBuf, u64, SystemTime)>,
    workloads: HashMap<String, Workload>,
    /// Container addresses seen as the local side of their own sockets, to
    /// name container peers by workload.
    ip_owners: HashMap<IpAddr, String>,
    deduper: Deduper,
    out: Option<Box<dyn Write>>,
    hostname: String,
    verdicts: Vec<Verdict>,
    last_second: Instant,
    last_prune: Instant,
    containers: HashMap<String, Arc<ContainerInfo>>,
    /// Events per workload and kind ([`ACTIVITY_KINDS`]) since the last
    /// flush to the store.
    activity: HashMap<String, [u64; 3]>,
    live: HashMap<String, Live>,
    writes: WriteLog,
    ladder: Ladder,
    /// Started when the first workload enters protect mode (or at start
    /// when pins exist or the default mode is protect).
    protector: Option<Protector>,
    cgroup2: PathBuf,
    lsm_reason: Option<String>,
    enforced: Vec<Enforced>,
    /// Image baselines from `lancet scan`, by config digest.
    baselines: HashMap<String, lancet_engine::profile::Baseline>,
}

const ACTIVITY_KINDS: [&str; 3] = ["exec", "net", "file"];
const MAX_IP_OWNERS: usize = 65_536;
const MAX_WORKLOADS: usize = 4096;

impl Daemon {
    /// The workload's state, loaded from the store or started afresh; None
    /// once `MAX_WORKLOADS` are tracked (memory stays bounded).
    fn workload(&mut self, key: &str, c: &ContainerInfo, now: u64) -> Option<&mut Workload> {
        if !self.workloads.contains_key(key) && self.workloads.len() < MAX_WORKLOADS {
            let profile = match self.store.profile(key) {
                Ok(Some(stored)) => Profile::from_yaml(&stored.document, key).unwrap_or_else(|e| {
                    tracing::warn!(workload = key, "stored profile unreadable, starting afresh: {e}");
                    Profile::new(&c.image, key, now)
                }),
                _ => {
                    let mut p = Profile::new(&c.image, key, now);
                    p.set_mode(self.settings.mode, now);
                    p
                }
            };
            let mut profile = profile;
            if profile.baseline().is_none() {
                let id = format!("sha256:{}", c.image_id.trim_start_matches("sha256:"));
                if let Some(b) = self.baselines.get(&id).or_else(|| self.baselines.get(&c.image_digest)) {
                    profile.set_baseline(Some(b.clone()));
                }
            }
            self.workloads.insert(key.to_string(), Workload::new(profile));
        }
        self.workloads.get_mut(key)
    }

    fn peer(&self, ip: IpAddr) -> PeerRef {
        match self.ip_owners.get(&ip) {
            Some(w) => PeerRef::Workload(w.clone()),
            None => PeerRef::Ip(ip),
        }
    }

    fn on_event(&mut self, ev: &Event, attribution: &Attribution) -> Result<()> {
        if let EventKind::CgroupRmdir { path, .. } = &ev.kind {
            let gone: Vec<String> = self.live.keys().filter(|id| path.contains(id.as_str())).cloned().collect();
            for id in gone {
                self.container_gone(&id);
            }
        }
        let Attribution::Container(c) = attribution else { return Ok(()) };
        let key = workload_key(c);
        let now = ev.time_ns;
        if !self.containers.contains_key(&c.id) && self.containers.len() < MAX_WORKLOADS * 4 {
            self.containers.insert(c.id.clone(), Arc::clone(c));
        }
        if ev.cgroup_id != 0 && ev.process.pid != 0 {
            if let Some(l) = self.live.get_mut(&c.id) {
                l.cgroup_id = ev.cgroup_id;
                l.pid = ev.process.pid;
            } else if self.live.len() < MAX_WORKLOADS * 4 {
                self.live.insert(c.id.clone(), Live { cgroup_id: ev.cgroup_id, pid: ev.process.pid });
            }
        }
        self.writes.record(&c.id, ev);
        let peer = match &ev.kind {
            EventKind::Net(n) => {
                let known = self.ip_owners.get(&n.saddr).is_some_and(|w| *w == *key);
                if !known && !n.saddr.is_unspecified() && !n.saddr.is_loopback() && self.ip_owners.len() < MAX_IP_OWNERS {
                    self.ip_owners.insert(n.saddr, key.to_string());
                }
                match n.op {
                    NetOp::Connect | NetOp::Accept => Some(self.peer(n.daddr)),
                    _ => None,
                }
            }
            _ => None,
        };
        let kind = match &ev.kind {
            EventKind::Exec(_) => Some(0),
            EventKind::Net(_) => Some(1),
            EventKind::File(_) => Some(2),
            _ => None,
        };
        if let Some(kind) = kind {
            if let Some(n) = self.activity.get_mut(key.as_ref()) {
                n[kind] += 1;
            } else if self.activity.len() < MAX_WORKLOADS {
                let mut n = [0; 3];
                n[kind] = 1;
                self.activity.insert(key.to_string(), n);
            }
        }
        let drift = self.drift(ev, c, &key).filter(|_| !runtime_setup(ev.process.pid));
        let Some(w) = self.workload(&key, c, now) else {
            tracing::debug!(workload = %key, "workload limit reached; not profiled");
            return Ok(());
        };
        let mode = w.profile.mode();
        let deviation = if mode == Mode::Learn {
            // What drifted from the image is never learned as normal.
            if drift.is_none() && w.profile.observe(ev, peer.as_ref(), now) {
                w.changed();
            }
            None
        } else {
            let d = w.profile.check(ev, peer.as_ref());
            if d.is_some() {
                w.last_deviation = Some(now);
            }
            d
        };
        if mode == Mode::Protect {
            self.ensure_guarded(c, &key);
        }
        let mut verdicts = std::mem::take(&mut self.verdicts);
        verdicts.clear();
        // What the kernel kills at exec in a protected container is reported
        // from its own record, not twice.
        let killed_in_kernel = mode == Mode::Protect
            && matches!(ev.kind, EventKind::Exec(ref x) if x.exe_nlink == 0 || matches!(x.exe_fs_magic, TMPFS_MAGIC | RAMFS_MAGIC | HUGETLBFS_MAGIC))
            && self.protector.as_ref().is_some_and(|p| p.guarded(&c.id).is_some());
        if killed_in_kernel {
            return Ok(());
        }
        if let Some(d) = &drift {
            verdicts.push(drift_verdict(d));
        }
        self.policies.evaluate(ev, Some(c), deviation.is_some(), &mut verdicts);
        if verdicts.is_empty() {
            if let Some(d) = &deviation {
                verdicts.push(Verdict::profile_deviation(d));
            }
        }
        for v in &verdicts {
            self.alert(ev, c, &key, mode, v, None)?;
        }
        self.verdicts = verdicts;
        Ok(())
    }

    /// Drift of an exec (the file run, or the file handed to the loader or
    /// an interpreter) or of a chmod that made a file executable.
    fn drift(&mut self, ev: &Event, c: &ContainerInfo, key: &str) -> Option<Drift> {
        let baseline = self.workloads.get(key).and_then(|w| w.profile.baseline());
        let upper = c.upper_dir();
        let facts = |path: &str| FileFacts {
            in_upper: upper.map(|u| lancet_sensor::fanotify::overlay::written_in_container(u, path)),
            in_baseline: baseline.map(|b| b.lookup(path).is_some()),
        };
        match &ev.kind {
            EventKind::Exec(x) => {
                if let Some(d) = classify_exec(x, self.writes.lookup(&c.id, &x.filename), facts(&x.filename)) {
                    return Some(d);
                }
                let (kind, target) = indirect_target(x)?;
                classify_indirect(kind, &target, self.writes.lookup(&c.id, &target), facts(&target))
            }
            EventKind::File(f) if f.op == FileOp::Chmod && !f.is_dir => {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&f.host_path).ok()?.permissions().mode();
                let shipped_executable = baseline.and_then(|b| b.lookup(&f.path)).is_some();
                (mode & 0o111 != 0 && !shipped_executable).then(|| Drift {
                    kind: DriftKind::MadeExecutable,
                    path: f.path.clone(),
                    origin: self.writes.lookup(&c.id, &f.path).cloned(),
                })
            }
            _ => None,
        }
    }

    /// The protect-mode side, started the first time it is needed.
    fn protector(&mut self) -> &mut Protector {
        let (opts, cgroup2, lsm) = (&self.settings.protect, &self.cgroup2, &self.lsm_reason);
        self.protector.get_or_insert_with(|| Protector::start(opts.clone(), cgroup2, lsm.clone()))
    }

    /// Hands a container to the protector, naming workload peers by the
    /// addresses their containers were seen with.
    fn guard(&mut self, req: GuardRequest<'_>) {
        self.protector();
        let ip_owners = &self.ip_owners;
        let addresses_of = |w: &str| ip_owners.iter().filter(|(_, o)| o.as_str() == w).map(|(ip, _)| *ip).collect::<Vec<IpAddr>>();
        if let Some(p) = self.protector.as_mut() {
            p.guard(req, addresses_of);
        }
    }

    /// Puts a container of a protect-mode workload under the backends.
    fn ensure_guarded(&mut self, c: &ContainerInfo, key: &str) {
        let Some(live) = self.live.get(&c.id).copied() else { return };
        if live.cgroup_id == 0 {
            return;
        }
        let Some(profile) = self.workloads.get_mut(key).map(Workload::shared) else { return };
        if !self.protector().needs_apply(&c.id, &profile) {
            return;
        }
        let pid = c.pid.filter(|p| Path::new(&format!("/proc/{p}")).exists()).unwrap_or(live.pid);
        // A process that has not entered the container's root yet (runc
        // init before pivot_root) shows the host's root: wait for the OCI
        // hook or a later event.
        if !Path::new(&format!("/proc/{pid}/root")).exists() || runtime_setup(pid) {
            return;
        }
        let rel = (!c.cgroup_path.is_empty()).then_some(c.cgroup_path.as_str());
        self.guard(GuardRequest { container: c, workload: key, pid, cgroup_id: live.cgroup_id, cgroup_rel: rel, rootfs: None, profile });
    }

    fn container_gone(&mut self, id: &str) {
        if let Some(p) = self.protector.as_mut() {
            p.release(id);
            p.unguard(id);
        }
        self.writes.forget_container(id);
        self.ladder.forget_container(id);
        self.live.remove(id);
    }

    /// Raises the alert of a verdict and, in protect mode, carries out its
    /// step of the response ladder. `done`: what a backend already did in
    /// the kernel (a refused exec, open or connection, a kill at exec).
    fn alert(&mut self, ev: &Event, c: &Arc<ContainerInfo>, key: &str, mode: Mode, v: &Verdict, done: Option<Action>) -> Result<()> {
        let subject = summary(ev);
        let akey = AlertKey { rule: v.rule.to_string(), workload: key.to_string(), subject };
        let (mut action, would_block) = effective_action(v.action, mode);
        let mut enforced = false;
        let mut note = String::new();
        if let Some(a) = done {
            action = a;
            enforced = true;
        } else if mode == Mode::Protect
            && action.is_enforcing()
            && self.protector.as_ref().is_some_and(|p| p.guarded(&c.id).is_some())
            && !runtime_setup(ev.process.pid)
        {
            let r = self.ladder.respond(&c.id, v, ev.time_ns);
            action = r.action;
            (enforced, note) = self.carry_out(ev, c, r.action, r.expire);
            if r.escalated {
                note = format!("escalated by rule; {note}");
            }
        }
        let rate_limit = !enforced && v.policy.as_str() != "drift";
        match self.deduper.admit_with(&akey, ev.time_ns, rate_limit) {
            Admit::New => {}
            Admit::Repeat { .. } | Admit::RateLimited => return Ok(()),
        }
        let attribution = Attribution::Container(Arc::clone(c));
        let mut j = falco_json(&Record { event: ev, attribution: &attribution, hostname: &self.hostname }, &v.rule, v.priority());
        j["tags"] = json!(v.tags);
        j["output"] = json!(format!("{} ({})", v.message, j["output"].as_str().unwrap_or("")));
        if let Some(f) = j["output_fields"].as_object_mut() {
            f.insert("lancet.action".into(), json!(action.to_string()));
            f.insert("lancet.enforced".into(), json!(enforced));
            f.insert("lancet.would_block".into(), json!(would_block));
            f.insert("lancet.mode".into(), json!(mode.to_string()));
            f.insert("lancet.workload".into(), json!(key));
            f.insert("lancet.policy".into(), json!(v.policy));
            f.insert("lancet.count".into(), json!(1));
            if !note.is_empty() {
                f.insert("lancet.response".into(), json!(note));
            }
        }
        if let Some(out) = self.out.as_mut() {
            serde_json::to_writer(&mut *out, &j)?;
            out.write_all(b"\n")?;
            out.flush()?;
        }
        let id = self.store.insert_alert(&NewAlert {
            time_ns: ev.time_ns,
            rule: v.rule.to_string(),
            priority: v.priority().to_string(),
            container_id: c.id.clone(),
            container_name: c.name.clone(),
            image: c.image.clone(),
            workload: key.to_string(),
            action: action.to_string(),
            enforced,
            count: 1,
            json: j.to_string(),
        })?;
        self.deduper.set_id(&akey, id);
        Ok(())
    }

    /// One step of the ladder on an event that already happened (the
    /// kernel-side refusals report through [`Enforced`]): a block that can
    /// no longer refuse an exec kills that process; kill-process kills the
    /// event's process; isolate and freeze act on the container. Returns
    /// (enforced, what was done).
    fn carry_out(&mut self, ev: &Event, c: &ContainerInfo, action: Action, expire: Option<Duration>) -> (bool, String) {
        let Some(p) = self.protector.as_mut() else { return (false, "no enforcement backend is running".into()) };
        let live = self.live.get(&c.id).copied().unwrap_or_default();
        let cgroup_dir = self.cgroup2.join(c.cgroup_path.trim_start_matches('/'));
        let expire = expire.unwrap_or(self.settings.protect.response_expiry);
        let res = match action {
            Action::Block if matches!(ev.kind, EventKind::Exec(_)) => {
                p.kill(ev.process.pid).map(|()| format!("exec could not be refused in time; process {} killed", ev.process.pid))
            }
            // File and network events report what already happened; their
            // refusals come from the backends in the kernel path.
            Action::Block => return (false, String::new()),
            Action::KillProcess => p.kill(ev.process.pid).map(|()| format!("process {} killed", ev.process.pid)),
            Action::Isolate => {
                p.isolate(&c.id, live.cgroup_id, &cgroup_dir, expire).map(|()| format!("network isolated for {}s", expire.as_secs()))
            }
            Action::Freeze => p.freeze(&c.id, live.cgroup_id, &cgroup_dir, expire).map(|()| format!("frozen for {}s", expire.as_secs())),
            Action::Audit | Action::Alert => Ok(String::new()),
        };
        match res {
            Ok(n) => (true, n),
            Err(e) => {
                tracing::warn!(container = %c.name, %action, "response not carried out: {e}");
                (false, e)
            }
        }
    }

    /// Reports what the backends enforced on their own.
    fn on_enforced(&mut self, e: Enforced) -> Result<()> {
        let Some(p) = self.protector.as_ref() else { return Ok(()) };
        let (id, ev, v, done) = match &e {
            Enforced::ExecDenied { label, pid, path, reason } => {
                let Some(g) = p.by_label(*label) else { return Ok(()) };
                let origin = self.writes.lookup(&g.id, path).cloned();
                let ev = synthetic_exec(*pid, g.cgroup_id, path);
                let v = match reason {
                    DenyReason::Drift(k) => drift_verdict(&Drift { kind: *k, path: path.clone(), origin }),
                    DenyReason::NotInProfile => Verdict::profile_deviation(&Deviation::NewExecutable { path: path.clone() }),
                };
                (g.id.clone(), ev, v, Action::Block)
            }
            Enforced::OpenDenied { label, pid, path, write } => {
                let Some(g) = p.by_label(*label) else { return Ok(()) };
                let op = if *write == Some(true) { FileOp::Modify } else { FileOp::Open };
                let ev = Event {
                    time_ns: now_ns(),
                    cgroup_id: g.cgroup_id,
                    process: process_ref(*pid as u32),
                    kind: EventKind::File(FileEvent { op, path: path.clone(), old_path: None, host_path: String::new(), is_dir: false }),
                };
                let what = if op == FileOp::Modify { "write to a read-only path" } else { "read of a protected file" };
                let v = enforced_verdict(
                    "Protected file access refused",
                    Severity::High,
                    format!("{what} refused: {path}"),
                    &["protect", "T1005"],
                );
                (g.id.clone(), ev, v, Action::Block)
            }
            Enforced::Kernel(r) => {
                let Some(g) = p.by_cgroup(r.cgroup_id) else { return Ok(()) };
                let (ev, v, done) = kernel_record(r);
                (g.id.clone(), ev, v, done)
            }
        };
        let Some(c) = self.containers.get(&id).cloned() else { return Ok(()) };
        let key = workload_key(&c).into_owned();
        let mode = self.workloads.get(&key).map(|w| w.profile.mode()).unwrap_or(Mode::Protect);
        self.alert(&ev, &c, &key, mode, &v, Some(done))
    }

    /// Once a second: fold repeats, promote quiet profiles, persist, reload
    /// policies when their files changed.
    fn every_second(&mut self, reload: &AtomicBool) -> Result<()> {
        let now = now_ns();
        for f in self.deduper.expire(now) {
            if let Some(id) = f.id {
                self.store.update_alert_count(id, f.count, f.last_ns)?;
            }
        }
        for (key, w) in self.workloads.iter_mut() {
            if let Some(next) = self.settings.lifecycle.next_mode(&w.profile, now, w.last_deviation) {
                tracing::info!(workload = %key, from = %w.profile.mode(), to = %next, "profile promoted");
                w.profile.set_mode(next, now);
                w.changed();
            }
            if w.dirty {
                self.store.put_profile(key, w.profile.image(), &w.profile.mode().to_string(), &w.profile.to_yaml()?, now)?;
                w.dirty = false;
            }
        }
        for (key, counts) in self.activity.drain() {
            for (kind, n) in ACTIVITY_KINDS.iter().zip(counts).filter(|(_, n)| *n > 0) {
                self.store.bump_activity(&key, kind, n, now)?;
            }
        }
        self.store.flush()?;
        self.sync_protection();
        let stamp = dir_stamp(&self.settings.policy_dir);
        if reload.swap(false, Ordering::Relaxed) || stamp != self.policy_stamp {
            self.policy_stamp = stamp;
            self.reload_policies();
        }
        if self.last_prune.elapsed() > Duration::from_secs(60) {
            self.store.prune(now)?;
            self.last_prune = Instant::now();
        }
        Ok(())
    }

    /// Containers that ran before the agent: known at once, so protect-mode
    /// workloads are guarded on the first tick, not at their next event.
    fn adopt(&mut self, existing: Vec<Arc<ContainerInfo>>) {
        for c in existing {
            let dir = self.cgroup2.join(c.cgroup_path.trim_start_matches('/'));
            // The runtime's record of the init pid, else any process in the
            // container's cgroup.
            let pid = c
                .pid
                .filter(|p| Path::new(&format!("/proc/{p}")).exists())
                .or_else(|| std::fs::read_to_string(dir.join("cgroup.procs")).ok()?.lines().next()?.trim().parse().ok());
            if let (Some(cgid), Some(pid)) = (lancet_sensor::enforce::cgroup_id(&dir).ok(), pid) {
                self.live.insert(c.id.clone(), Live { cgroup_id: cgid, pid });
            }
            let key = workload_key(&c).into_owned();
            if let Some(pid) = pid {
                for ip in crate::protect::netns_addresses(pid) {
                    if self.ip_owners.len() < MAX_IP_OWNERS {
                        self.ip_owners.insert(ip, key.clone());
                    }
                }
            }
            self.workload(&key, &c, now_ns());
            self.containers.insert(c.id.clone(), c);
        }
        self.sync_protection();
    }

    /// Containers follow their workload's mode: into protection when it is
    /// protect, out of it otherwise; expired responses end.
    fn sync_protection(&mut self) {
        let ids: Vec<Arc<ContainerInfo>> = self.containers.values().cloned().collect();
        for c in ids {
            if !self.live.contains_key(&c.id) {
                continue;
            }
            let key = workload_key(&c).into_owned();
            let protect = self.workloads.get(&key).is_some_and(|w| w.profile.mode() == Mode::Protect);
            if protect {
                self.ensure_guarded(&c, &key);
            } else if let Some(p) = self.protector.as_mut() {
                if p.guarded(&c.id).is_some() {
                    p.unguard(&c.id);
                }
            }
        }
        if let Some(p) = self.protector.as_mut() {
            p.expire();
        }
    }

    /// Reports what the backends did since the last tick.
    fn drain_enforced(&mut self) -> Result<()> {
        let Some(p) = self.protector.as_mut() else { return Ok(()) };
        let mut batch = std::mem::take(&mut self.enforced);
        p.drain(&mut batch);
        for e in batch.drain(..) {
            self.on_enforced(e)?;
        }
        self.enforced = batch;
        Ok(())
    }

    /// From the OCI hook, before the container's first instruction: attribute
    /// it and put it under its workload's posture (the default mode for a
    /// workload without a profile). Answers only when that is done.
    fn on_hook(&mut self, state: &serde_json::Value, pipeline: &mut Pipeline) -> Reply {
        let id = state["id"].as_str().unwrap_or_default();
        let pid = state["pid"].as_u64().unwrap_or(0) as u32;
        let rel = state["cgroup"].as_str().ok_or((400u16, "no cgroup in the hook request".to_string()))?;
        let dir = self.cgroup2.join(rel.trim_start_matches('/'));
        let cgid = lancet_sensor::enforce::cgroup_id(&dir).ok().ok_or_else(|| (404u16, format!("cgroup {} is gone", dir.display())))?;
        let c = match pipeline.attributor.attribute(cgid) {
            Attribution::Container(c) => c,
            _ => return Ok(json!({"id": id, "posture": "unknown container; not guarded"})),
        };
        if !self.containers.contains_key(&c.id) {
            self.containers.insert(c.id.clone(), Arc::clone(&c));
        }
        self.live.insert(c.id.clone(), Live { cgroup_id: cgid, pid });
        let key = workload_key(&c).into_owned();
        let now = now_ns();
        let Some(w) = self.workload(&key, &c, now) else { return Ok(json!({"id": id, "posture": "workload limit reached"})) };
        let mode = w.profile.mode();
        if mode == Mode::Protect {
            let rootfs = state["rootfs"].as_str().map(PathBuf::from);
            let Some(profile) = self.workloads.get_mut(&key).map(Workload::shared) else { return Ok(json!({})) };
            self.guard(GuardRequest { container: &c, workload: &key, pid, cgroup_id: cgid, cgroup_rel: Some(rel), rootfs, profile });
        }
        tracing::info!(container = %c.name, workload = %key, %mode, "container handed over by the OCI hook");
        Ok(json!({"id": c.id, "workload": key, "posture": mode.to_string()}))
    }

    fn respond(&mut self, container: &str, action: &str, expire: Option<String>) -> Reply {
        let c = self
            .containers
            .values()
            .find(|c| c.name == container || (container.len() >= 3 && c.id.starts_with(container)))
            .cloned()
            .ok_or_else(|| (404u16, format!("no running container matches {container:?}")))?;
        let expire = match expire {
            Some(e) => parse_duration(&e).map_err(|e| (400u16, format!("{e:#}")))?,
            None => self.settings.protect.response_expiry,
        };
        let live = self.live.get(&c.id).copied().unwrap_or_default();
        let dir = self.cgroup2.join(c.cgroup_path.trim_start_matches('/'));
        let p = self.protector();
        let cgid = if live.cgroup_id != 0 { live.cgroup_id } else { lancet_sensor::enforce::cgroup_id(&dir).ok().unwrap_or(0) };
        let message = match action {
            "isolate" => p.isolate(&c.id, cgid, &dir, expire).map(|()| format!("{} isolated for {}s", c.name, expire.as_secs())),
            "freeze" => p.freeze(&c.id, cgid, &dir, expire).map(|()| format!("{} frozen for {}s", c.name, expire.as_secs())),
            "release" => {
                let done = p.release(&c.id);
                Ok(if done.is_empty() {
                    format!("{} was neither isolated nor frozen", c.name)
                } else {
                    format!("{} released ({})", c.name, done.join(", "))
                })
            }
            other => return Err((404u16, format!("unknown action {other:?} (isolate, freeze or release)"))),
        }
        .map_err(|e| (500u16, e))?;
        tracing::info!(container = %c.name, action, "operator response");
        Ok(json!({"container": c.id, "action": action, "message": message}))
    }

    /// An invalid policy never replaces the running set.
    fn reload_policies(&mut self) {
        match load_policy_dir(&self.settings.policy_dir).map(|p| PolicySet::new(p, true)) {
            Ok(Ok(set)) => {
                self.policies = set;
                tracing::info!(dir = %self.settings.policy_dir.display(), "policies reloaded");
            }
            Ok(Err(e)) => tracing::error!("policies not reloaded, the previous ones stay in force: {e}"),
            Err(errors) => {
                for e in errors {
                    tracing::error!("{e}");
                }
                tracing::error!("policies not reloaded, the previous ones stay in force");
            }
        }
    }

    fn find_workload(&self, what: &str) -> Option<String> {
        if self.workloads.contains_key(what) {
            return Some(what.to_string());
        }
        if let Some(c) = self.containers.values().find(|c| c.name == what || (what.len() >= 3 && c.id.starts_with(what))) {
            return Some(workload_key(c).into_owned());
        }
        self.workloads.iter().find(|(_, w)| w.profile.image() == what).map(|(k, _)| k.clone())
    }

    fn answer(&mut self, req: Request) -> Reply {
        let not_found = |w: &str| (404u16, format!("no workload, container or image matches {w:?}"));
        let now = now_ns();
        match req {
            Request::Profiles => Ok(json!(self
                .workloads
                .iter()
                .map(|(k, w)| json!({"workload": k, "image": w.profile.image(), "mode": w.profile.mode().to_string(), "entries": w.profile.len()}))
                .collect::<Vec<_>>())),
            Request::Profile { workload } => {
                let key = self.find_workload(&workload).ok_or_else(|| not_found(&workload))?;
                let w = &self.workloads[&key];
                Ok(json!({"workload": key, "yaml": w.profile.to_yaml().map_err(|e| (500u16, e.to_string()))?}))
            }
            Request::Promote { workload, mode } => {
                let key = self.find_workload(&workload).ok_or_else(|| not_found(&workload))?;
                let mode = mode.parse::<Mode>().map_err(|e| (400u16, e))?;
                let w = self.workloads.get_mut(&key).ok_or_else(|| not_found(&workload))?;
                w.profile.set_mode(mode, now);
                w.changed();
                Ok(json!({"workload": key, "mode": mode.to_string()}))
            }
            Request::Reset { workload } => {
                let key = self.find_workload(&workload).ok_or_else(|| not_found(&workload))?;
                let image = self.workloads[&key].profile.image().to_string();
                let mut p = Profile::new(&image, &key, now);
                p.set_mode(Mode::Learn, now);
                self.workloads.insert(key.clone(), Workload::new(p));
                Ok(json!({"workload": key, "mode": "learn"}))
            }
            Request::Import { yaml } => {
                let p = Profile::from_yaml(&yaml, "<import>").map_err(|e| (400u16, e.to_string()))?;
                // `lancet scan` keys its profile by config digest; runtimes
                // that know the manifest digest key the workload by that.
                let manifest = p.baseline().and_then(|b| b.manifest_digest.clone());
                let key = manifest
                    .filter(|m| self.workloads.contains_key(m) || self.containers.values().any(|c| c.image_digest == *m))
                    .unwrap_or_else(|| p.digest().to_string());
                self.workloads.insert(key.clone(), Workload::new(p));
                Ok(json!({"workload": key}))
            }
            Request::Alerts { since_ns, container, limit } => {
                let rows = self
                    .store
                    .alerts(&AlertQuery { since_ns, container, rule: None, limit })
                    .map_err(|e| (500u16, e.to_string()))?;
                Ok(json!(rows.iter().map(crate::manage::alert_json).collect::<Vec<_>>()))
            }
            Request::Hook { .. } => Err((500u16, "hook requests are answered with the pipeline".to_string())),
            Request::Respond { container, action, expire } => self.respond(&container, &action, expire),
            Request::Enforcement => Ok(match &self.protector {
                Some(p) => p.report(),
                None => json!({"backends": [], "note": "no workload is in protect mode; enforcement is not loaded"}),
            }),
            Request::Containers => Ok(json!(self.containers.values().map(|c| json!({"id": c.id, "name": c.name, "image": c.image, "workload": workload_key(c)})).collect::<Vec<_>>())),
        }
    }
}

pub fn run(host_root: &Path, args: RunArgs) -> Result<ExitCode> {
    let settings = settings(&args)?;
    std::fs::create_dir_all(&settings.state_dir).with_context(|| format!("creating {}", settings.state_dir.display()))?;
    let db = settings.state_dir.join("lancet.db");
    let store = Store::open(&db, StoreOptions::default()).with_context(|| format!("opening the store {}", db.display()))?;
    let policies = match load_policy_dir(&settings.policy_dir) {
        Ok(p) => PolicySet::new(p, true).map_err(|e| anyhow::anyhow!("{e}"))?,
        Err(errors) => bail!("invalid policies:\n{}", errors.join("\n")),
    };
    let out: Option<Box<dyn Write>> = match settings.alerts.as_deref() {
        None => None,
        Some("-") => Some(Box::new(std::io::stdout())),
        Some(path) => Some(Box::new(
            std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("opening the alerts file {path}"))?,
        )),
    };
    let inbox = api::serve(settings.listen)?;
    let stop = Arc::new(AtomicBool::new(false));
    crate::install_stop_signals(&stop)?;
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&reload)).context("installing the SIGHUP handler")?;
    let agent = settings.agent.clone();
    let cgroup2 = lancet_sensor::probes::detect_cgroup2_root().unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"));
    let baselines = load_baselines(&settings.state_dir.join("baselines"));
    let lsm_reason = Some(lsm_unavailable_reason());
    // Pins from an earlier run, protect as the default, or a stored profile
    // in protect mode: load enforcement now, so rules are adopted at once.
    let protect_at_start = settings.mode == Mode::Protect
        || settings.protect.pin_dir.exists()
        || store.list_profiles().map(|l| l.iter().any(|p| p.mode == "protect")).unwrap_or(false);
    let protector = protect_at_start.then(|| Protector::start(settings.protect.clone(), &cgroup2, lsm_reason.clone()));
    let mut daemon = Daemon {
        policy_stamp: dir_stamp(&settings.policy_dir),
        deduper: Deduper::new(AlertLimits { dedupe_window: settings.dedupe_window, ..AlertLimits::default() }),
        settings,
        store,
        policies,
        workloads: HashMap::new(),
        ip_owners: HashMap::new(),
        out,
        hostname: hostname(),
        verdicts: Vec::new(),
        last_second: Instant::now(),
        last_prune: Instant::now(),
        containers: HashMap::new(),
        activity: HashMap::new(),
        live: HashMap::new(),
        writes: WriteLog::new(4096, MAX_WORKLOADS),
        ladder: Ladder::new(Duration::from_secs(900), 65_536),
        protector,
        cgroup2,
        lsm_reason,
        enforced: Vec::new(),
        baselines,
    };
    let deadline = args.duration.map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let daemon = std::cell::RefCell::new(&mut daemon);
    run_loop(
        host_root,
        &agent,
        &stop,
        deadline,
        |ev, a| daemon.borrow_mut().on_event(ev, a),
        |pipeline| {
            let mut d = daemon.borrow_mut();
            if !pipeline.existing.is_empty() {
                d.adopt(std::mem::take(&mut pipeline.existing));
            }
            inbox.serve(|req| match req {
                Request::Hook { state } => d.on_hook(&state, pipeline),
                other => d.answer(other),
            });
            d.drain_enforced()?;
            if d.last_second.elapsed() >= Duration::from_secs(1) {
                d.last_second = Instant::now();
                d.every_second(&reload)?;
            }
            Ok(())
        },
    )?;
    // Persist what changed since the last second. Pinned network rules and
    // isolations stay in force; fanotify marks go with our group.
    let mut d = daemon.borrow_mut();
    d.last_second = Instant::now();
    d.every_second(&reload)?;
    if let Some(p) = d.protector.as_mut() {
        p.stop();
    }
    Ok(ExitCode::SUCCESS)
}

fn process_ref(pid: u32) -> ProcessRef {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|s| s.trim().to_string()).unwrap_or_default();
    ProcessRef { pid, tid: pid, comm, ..Default::default() }
}

/// An exec the kernel refused never reaches the exec probe; the alert
/// describes the attempt.
fn synthetic_exec(pid: i32, cgroup_id: u64, path: &str) -> Event {
    Event {
        time_ns: now_ns(),
        cgroup_id,
        process: process_ref(pid as u32),
        kind: EventKind::Exec(ExecEvent {
            filename: path.to_string(),
            cwd: String::new(),
            argv: vec![path.to_string()],
            parent_comm: String::new(),
            parent_exe: None,
            parent_outside: false,
            exe_ino: 0,
            exe_dev: 0,
            exe_nlink: 1,
            exe_fs_magic: 0,
            truncated: false,
        }),
    }
}

fn enforced_verdict(rule: &str, severity: Severity, message: String, tags: &[&str]) -> Verdict {
    Verdict {
        rule: rule.into(),
        policy: "protect".into(),
        severity,
        action: Action::Block,
        tags: tags.iter().map(|t| t.to_string()).collect::<Vec<_>>().into(),
        message,
        escalate: None,
    }
}

/// The verdict of a drift: a block (refused in protect mode, reported as
/// would-block elsewhere).
fn drift_verdict(d: &Drift) -> Verdict {
    Verdict {
        rule: format!("Drift: {}", d.kind).as_str().into(),
        policy: "drift".into(),
        severity: Severity::High,
        action: Action::Block,
        tags: vec!["drift".to_string(), "T1105".to_string(), d.kind.to_string()].into(),
        message: d.to_string(),
        escalate: None,
    }
}

/// A kernel enforcement record as an event, its verdict and what was done.
fn kernel_record(r: &EnforceRecord) -> (Event, Verdict, Action) {
    let process = ProcessRef { pid: r.pid, tid: r.tid, comm: r.comm.clone(), ..Default::default() };
    if r.op == EnforceOp::ExecKill {
        let kind = match r.reason {
            EnforceReason::Memfd => DriftKind::Memfd,
            EnforceReason::Tmpfs => DriftKind::Tmpfs,
            EnforceReason::Deleted => DriftKind::Deleted,
            _ => DriftKind::Written,
        };
        let what = match kind {
            DriftKind::Memfd => "memfd",
            DriftKind::Deleted => "deleted file",
            _ => "tmpfs file",
        };
        let path = format!("{what} run as {} (inode {}), killed at exec", r.comm, r.ino);
        let mut ev = synthetic_exec(r.pid as i32, r.cgroup_id, &path);
        ev.process = process;
        return (ev, drift_verdict(&Drift { kind, path, origin: None }), Action::KillProcess);
    }
    let bind = matches!(r.op, EnforceOp::Bind4 | EnforceOp::Bind6);
    let addr = r.addr.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let any: IpAddr = if addr.is_ipv4() { std::net::Ipv4Addr::UNSPECIFIED.into() } else { std::net::Ipv6Addr::UNSPECIFIED.into() };
    let net = NetEvent {
        op: if bind { NetOp::Bind } else { NetOp::Connect },
        proto: if r.proto == Some(lancet_sensor::enforce::Proto::Udp) { L4Proto::Udp } else { L4Proto::Tcp },
        saddr: any,
        sport: if bind { r.port } else { 0 },
        daddr: if bind { any } else { addr },
        dport: if bind { 0 } else { r.port },
        result: libc::EPERM,
        netns: 0,
    };
    let ev = Event { time_ns: now_ns(), cgroup_id: r.cgroup_id, process, kind: EventKind::Net(net) };
    let why = if r.reason == EnforceReason::Isolated { "the container is isolated" } else { "not in the allow-list" };
    let what =
        if bind { format!("bind to port {} refused ({why})", r.port) } else { format!("connection to {addr}:{} refused ({why})", r.port) };
    let v = enforced_verdict("Network operation refused", Severity::Medium, what, &["protect", "network"]);
    (ev, v, if r.denied { Action::Block } else { Action::Alert })
}

/// Why the BPF-LSM backend does not hold here (it is not pretended).
fn lsm_unavailable_reason() -> String {
    use lancet_sensor::features::{active_lsms, lockdown};
    match (lockdown(), active_lsms()) {
        (Some(l), _) if l != "none" => format!("kernel lockdown={l}: BPF-LSM programs are refused at load (see `lancet doctor`)"),
        (_, Some(lsms)) if !lsms.iter().any(|l| l == "bpf") => {
            format!("bpf is not an active LSM ({}); boot with lsm=...,bpf", lsms.join(","))
        }
        (_, None) => "securityfs is not mounted, so the active LSMs are unknown; `lancet doctor` probes LSM program loads".into(),
        _ => "this kernel allows BPF-LSM, but lancet's LSM programs are not built yet; fanotify and cgroup BPF enforce instead".into(),
    }
}

/// Baselines written by `lancet scan --baselines-dir`: one profile document
/// per image, keyed by its baseline's digest. Unreadable files are skipped
/// with a warning.
fn load_baselines(dir: &Path) -> HashMap<String, lancet_engine::profile::Baseline> {
    let mut out = HashMap::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd.flatten() {
        let path = e.path();
        if !matches!(path.extension().and_then(|x| x.to_str()), Some("yaml" | "yml")) {
            continue;
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(err) => {
                tracing::warn!(file = %path.display(), "baseline not read: {err}");
                continue;
            }
        };
        match Profile::from_yaml(&text, &path.display().to_string()) {
            Ok(p) => match p.baseline() {
                Some(b) => {
                    // Runtimes name images by config or by manifest digest.
                    if let Some(m) = &b.manifest_digest {
                        out.insert(m.clone(), b.clone());
                    }
                    out.insert(b.digest.clone(), b.clone());
                }
                None => tracing::warn!(file = %path.display(), "no baseline in this profile document"),
            },
            Err(err) => tracing::warn!("baseline not read: {err}"),
        }
    }
    tracing::info!(baselines = out.len(), dir = %dir.display(), "image baselines loaded");
    out
}

/// The process is still the container runtime setting the container up
/// (`runc init` before `pivot_root`: its root is the host's). What it runs
/// (runc re-executes itself from a memfd) is neither drift nor the
/// workload's, and must never be killed.
fn runtime_setup(pid: u32) -> bool {
    crate::protect::same_filesystem(Path::new(&format!("/proc/{pid}/root")), Path::new("/"))
}
