//! `lancet run`: the agent. It learns what each workload (all replicas of one
//! image) normally does into a profile, promotes the profile from learn to
//! monitor (and, if asked, to protect) once it is quiet, and raises one alert,
//! deduplicated and rate limited, when a workload departs from its profile or
//! breaks a policy rule. Profiles, alerts and activity live in the store.

use crate::agent::{hostname, run_loop, AgentOptions};
use crate::api::{self, Reply, Request};
use crate::config::{self, parse_duration, FileConfig};
use anyhow::{bail, Context, Result};
use lancet_engine::alerts::{Admit, AlertKey, AlertLimits, Deduper};
use lancet_engine::attribution::{Attribution, ContainerInfo};
use lancet_engine::event::{Event, EventKind, NetOp};
use lancet_engine::output::{falco_json, summary, Record};
use crate::policy_cmd::read_policies;
use lancet_engine::policy::{effective_action, Policy, PolicySet, Verdict};
use lancet_engine::profile::{Lifecycle, Mode, PeerRef, Profile};
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
        Ok(rd) => rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .collect(),
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
            self.workloads.insert(key.to_string(), Workload { profile, dirty: true, last_deviation: None });
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
        let Attribution::Container(c) = attribution else { return Ok(()) };
        let key = workload_key(c);
        let now = ev.time_ns;
        if !self.containers.contains_key(&c.id) && self.containers.len() < MAX_WORKLOADS * 4 {
            self.containers.insert(c.id.clone(), Arc::clone(c));
        }
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
        let Some(w) = self.workload(&key, c, now) else {
            tracing::debug!(workload = %key, "workload limit reached; not profiled");
            return Ok(());
        };
        let mode = w.profile.mode();
        let deviation = if mode == Mode::Learn {
            if w.profile.observe(ev, peer.as_ref(), now) {
                w.dirty = true;
            }
            None
        } else {
            let d = w.profile.check(ev, peer.as_ref());
            if d.is_some() {
                w.last_deviation = Some(now);
            }
            d
        };
        let mut verdicts = std::mem::take(&mut self.verdicts);
        verdicts.clear();
        self.policies.evaluate(ev, Some(c), deviation.is_some(), &mut verdicts);
        if verdicts.is_empty() {
            if let Some(d) = &deviation {
                verdicts.push(Verdict::profile_deviation(d));
            }
        }
        for v in &verdicts {
            self.alert(ev, c, &key, mode, v)?;
        }
        self.verdicts = verdicts;
        Ok(())
    }

    fn alert(&mut self, ev: &Event, c: &Arc<ContainerInfo>, key: &str, mode: Mode, v: &Verdict) -> Result<()> {
        let subject = summary(ev);
        let akey = AlertKey { rule: v.rule.to_string(), workload: key.to_string(), subject };
        match self.deduper.admit(&akey, ev.time_ns) {
            Admit::New => {}
            Admit::Repeat { .. } | Admit::RateLimited => return Ok(()),
        }
        let (action, would_block) = effective_action(v.action, mode);
        // No enforcement backend is wired yet: what protect mode would
        // enforce is recorded as would-block.
        let would_block = would_block || action.is_enforcing();
        let attribution = Attribution::Container(Arc::clone(c));
        let mut j = falco_json(&Record { event: ev, attribution: &attribution, hostname: &self.hostname }, &v.rule, v.priority());
        j["tags"] = json!(v.tags);
        j["output"] = json!(format!("{} ({})", v.message, j["output"].as_str().unwrap_or("")));
        if let Some(f) = j["output_fields"].as_object_mut() {
            f.insert("lancet.action".into(), json!(action.to_string()));
            f.insert("lancet.enforced".into(), json!(false));
            f.insert("lancet.would_block".into(), json!(would_block));
            f.insert("lancet.mode".into(), json!(mode.to_string()));
            f.insert("lancet.workload".into(), json!(key));
            f.insert("lancet.policy".into(), json!(v.policy));
            f.insert("lancet.count".into(), json!(1));
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
            enforced: false,
            count: 1,
            json: j.to_string(),
        })?;
        self.deduper.set_id(&akey, id);
        Ok(())
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
                w.dirty = true;
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
                w.dirty = true;
                Ok(json!({"workload": key, "mode": mode.to_string()}))
            }
            Request::Reset { workload } => {
                let key = self.find_workload(&workload).ok_or_else(|| not_found(&workload))?;
                let image = self.workloads[&key].profile.image().to_string();
                let mut p = Profile::new(&image, &key, now);
                p.set_mode(Mode::Learn, now);
                self.workloads.insert(key.clone(), Workload { profile: p, dirty: true, last_deviation: None });
                Ok(json!({"workload": key, "mode": "learn"}))
            }
            Request::Import { yaml } => {
                let p = Profile::from_yaml(&yaml, "<import>").map_err(|e| (400u16, e.to_string()))?;
                let key = p.digest().to_string();
                self.workloads.insert(key.clone(), Workload { profile: p, dirty: true, last_deviation: None });
                Ok(json!({"workload": key}))
            }
            Request::Alerts { since_ns, container, limit } => {
                let rows = self
                    .store
                    .alerts(&AlertQuery { since_ns, container, rule: None, limit })
                    .map_err(|e| (500u16, e.to_string()))?;
                Ok(json!(rows.iter().map(crate::manage::alert_json).collect::<Vec<_>>()))
            }
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
    };
    let deadline = args.duration.map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let daemon = std::cell::RefCell::new(&mut daemon);
    run_loop(
        host_root,
        &agent,
        &stop,
        deadline,
        |ev, a| daemon.borrow_mut().on_event(ev, a),
        |_pipeline| {
            let mut d = daemon.borrow_mut();
            inbox.serve(|req| d.answer(req));
            if d.last_second.elapsed() >= Duration::from_secs(1) {
                d.last_second = Instant::now();
                d.every_second(&reload)?;
            }
            Ok(())
        },
    )?;
    // Persist what changed since the last second.
    let mut d = daemon.borrow_mut();
    d.last_second = Instant::now();
    d.every_second(&reload)?;
    Ok(ExitCode::SUCCESS)
}
