//! `lancet run`: the agent. It learns what each workload (all replicas of one
//! image) normally does into a profile, promotes the profile from learn to
//! monitor (and, if asked, to protect) once it is quiet, and raises one alert,
//! deduplicated and rate limited, when a workload departs from its profile or
//! breaks a policy rule. Profiles, alerts and activity live in the store.
//!
//! The daemon's parts, one file each: [`workloads`] (profiles and live
//! containers), [`drift`], [`alerts`], [`guarding`] (protect mode and the
//! response ladder), [`answers`] (the local API), [`control`] (the control
//! plane: every API call, with the audit log), [`policies`] and
//! [`settings`].

mod alerts;
#[cfg(test)]
mod alloc_tests;
mod answers;
mod control;
mod drift;
mod fleet;
mod flows;
mod guarding;
mod metrics;
mod numbers;
mod policies;
mod seed;
mod settings;
#[cfg(test)]
mod tests;
mod views;
mod workloads;
mod write_sets;

pub use settings::RunArgs;
pub(crate) use views::flows_json;
pub(crate) use write_sets::run_as;

use crate::agent::{hostname, run_loop};
use crate::api::{self, ApiConfig};
use alerts::Alerts;
use anyhow::{Context, Result};
use guarding::{runtime_setup, Guarding};
use lancet_engine::alerts::{AlertLimits, Deduper};
use lancet_engine::attribution::Attribution;
use lancet_engine::drift::{WriteLog, HUGETLBFS_MAGIC, RAMFS_MAGIC, TMPFS_MAGIC};
use lancet_engine::event::{Event, EventKind, FileOp};
use lancet_engine::policy::{with_deviation, Verdict};
use lancet_engine::process::ProcessTable;
use lancet_engine::profile::{Deviation, Mode};
use lancet_store::{Store, StoreOptions};
use policies::Policies;
use settings::Settings;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use workloads::{load_baselines, workload_key, Workloads};

pub(crate) use lancet_engine::event::now_ns;

/// How many containers' recent writes the drift checks remember.
const WRITE_LOG_CONTAINERS: usize = 4096;
/// How many recent writes per container.
const WRITE_LOG_PER_CONTAINER: usize = 4096;

struct Daemon {
    settings: Settings,
    store: Store,
    policies: Policies,
    workloads: Workloads,
    /// Recent writes per container: how a drifted file got there.
    writes: WriteLog,
    /// Where each container writes by design, and the anchors outside it
    /// alerted in its current life.
    write_sets: write_sets::WriteSets,
    alerts: Alerts,
    guarding: Guarding,
    /// Who talks to whom: the flow map's table.
    flows: flows::Flows,
    /// Reused buffer of one event's verdicts.
    verdicts: Vec<Verdict>,
    /// Lost refusal reports already alerted (see `report_lost_denials`).
    denials_lost_reported: u64,
    last_second: Instant,
    last_prune: Instant,
    /// In a fleet (`--nats`): the link to the fleet thread.
    fleet: Option<fleet::Fleet>,
}

impl Daemon {
    /// `protect_at_start`: load the enforcement backends now (rules pinned
    /// by an earlier run are adopted at once); else when first needed.
    #[allow(clippy::too_many_arguments)]
    fn new(
        settings: Settings,
        store: Store,
        policies: Policies,
        out: Option<Box<dyn Write>>,
        live: Option<tokio::sync::broadcast::Sender<Arc<str>>>,
        outputs: crate::outputs::Outputs,
        baselines: std::collections::HashMap<String, lancet_engine::profile::Baseline>,
        cgroup2: PathBuf,
        protect_at_start: bool,
    ) -> Daemon {
        Daemon {
            alerts: Alerts {
                deduper: Deduper::new(AlertLimits { dedupe_window: settings.dedupe_window, ..AlertLimits::default() }),
                out,
                hostname: hostname(),
                tally: Default::default(),
                live,
                outputs,
            },
            guarding: Guarding::new(settings.protect.clone(), cgroup2, protect_at_start),
            workloads: Workloads::new(settings.mode, baselines),
            settings,
            store,
            policies,
            writes: WriteLog::new(WRITE_LOG_PER_CONTAINER, WRITE_LOG_CONTAINERS),
            write_sets: write_sets::WriteSets::default(),
            flows: flows::Flows::new(),
            verdicts: Vec::new(),
            denials_lost_reported: 0,
            last_second: Instant::now(),
            last_prune: Instant::now(),
            fleet: None,
        }
    }

    fn on_event(&mut self, ev: &Event, attribution: &Attribution, procs: &mut ProcessTable) -> Result<()> {
        let Attribution::Container(c) = attribution else { return Ok(()) };
        if !self.settings.follows(c) {
            return Ok(());
        }
        match ev.kind {
            // The container's own cgroup went (removed by the runtime, from
            // the host): the pipeline matched it exactly (see
            // `Pipeline::attribute`).
            EventKind::CgroupRmdir { id, .. } => {
                // A restart may already run under the same path (its hook
                // seen first): only the end of the run we know ends it.
                let current = lancet_sensor::enforce::cgroup_id(&self.guarding.cgroup_dir(c)).ok();
                if current.is_none_or(|now| now == id) {
                    self.container_gone(&c.id);
                }
                return Ok(());
            }
            EventKind::CgroupMkdir { .. } => return Ok(()),
            _ => {}
        }
        if runtime_setup(ev, procs) || copied_up_directory(ev) {
            // The runtime's own work inside the container's cgroup, or
            // overlayfs's: nothing of it is the workload's.
            return Ok(());
        }
        let key = workload_key(c);
        let now = ev.time_ns;
        let n = self.workloads.numbers.number(c);
        let peer = self.workloads.note(ev, c, n, &key);
        if let Some(n) = n {
            self.writes.record(n, ev);
        }
        let drift = self.drift(ev, c, n, &key);
        // Writes are judged against the container's own writable set.
        let set = match &ev.kind {
            EventKind::File(f) if f.op != FileOp::Open => {
                let workloads = &self.workloads;
                let live_pid = || workloads.live(&c.id).map_or(0, |l| l.pid);
                Some(self.write_sets.set_for(c, n, live_pid, now, self.policies.set.writable_for(c)))
            }
            _ => None,
        };
        let Some(w) = self.workloads.get_or_load(&mut self.store, &key, c, now) else {
            return self.over_bound(ev, c, &key);
        };
        w.count(&ev.kind);
        let mode = w.profile.mode();
        let deviation = if mode == Mode::Learn {
            // What drifted from the image is never learned as normal.
            let learned = drift.is_none()
                && match &set {
                    Some(set) => w.profile.observe_in(ev, peer.as_ref(), set, now),
                    None => w.profile.observe(ev, peer.as_ref(), now),
                };
            if learned {
                w.changed();
            }
            None
        } else {
            let d = match &set {
                // New anchors of the writable set keep being learned; a
                // write in the set is not checked again.
                Some(set) => match drift.is_none().then(|| w.profile.learn_writable(ev, set, now)).flatten() {
                    Some(new) => {
                        if new {
                            w.changed_for_the_record();
                        }
                        None
                    }
                    None => w.enforced().check_in(ev, peer.as_ref(), set),
                },
                None => w.enforced().check(ev, peer.as_ref()),
            };
            // A write outside both sets: once per anchor per container life.
            let d = match d {
                Some(Deviation::NewWrittenDir { dir }) if !self.write_sets.first_alert(n, &dir) => None,
                d => d,
            };
            if d.is_some() {
                w.last_deviation = Some(now);
            }
            d
        };
        let scan = match &ev.kind {
            EventKind::Net(n) => {
                let generation = w.generation;
                self.flows.on_net(now, ev.process.pid, c, &key, n, Some((w.enforced(), generation)), peer.as_ref())
            }
            EventKind::Exec(_) => {
                self.flows.see(c, &key, ev.process.pid);
                None
            }
            _ => None,
        };
        if mode == Mode::Protect {
            self.ensure_guarded(c, &key);
        }
        if mode == Mode::Learn && drift.is_none() {
            self.learn_content(ev, c, &key);
        }
        // What the kernel kills at exec in a protected container is reported
        // from its own record, not twice.
        let killed_in_kernel = mode == Mode::Protect
            && match &ev.kind {
                EventKind::Exec(x) => {
                    x.exe_nlink == 0
                        || matches!(x.exe_fs_magic, TMPFS_MAGIC | RAMFS_MAGIC | HUGETLBFS_MAGIC)
                        || self.guarding.kills_loader(&c.id, x.exe_dev, x.exe_ino)
                }
                _ => false,
            }
            && self.guarding.is_guarded(&c.id);
        if killed_in_kernel {
            return Ok(());
        }
        let mut verdicts = std::mem::take(&mut self.verdicts);
        verdicts.clear();
        if let Some(d) = &drift {
            verdicts.push(lancet_engine::verdicts::drift(d));
        }
        if let EventKind::Exec(x) = &ev.kind {
            // The probe keeps 1 KiB of argv; the agent reads the rest back
            // unless the process already went. A cut command line could hide
            // what rules look for in its tail: that is said, not assumed away.
            if x.truncated && x.argv.iter().map(|a| a.len() + 1).sum::<usize>() >= 1000 {
                verdicts.push(lancet_engine::verdicts::command_line_too_long(&x.filename));
            }
        }
        if let Some(s) = scan {
            verdicts.push(lancet_engine::verdicts::scan(s.outbound, &c.name, self.flows.table.limits().scan_new_keys));
        }
        self.policies.set.evaluate(ev, Some(c), deviation.is_some(), &mut verdicts);
        // In protect mode a deviation is always refused; a matching
        // alert-only rule adds its alert, never removes the block.
        with_deviation(&mut verdicts, deviation.as_ref(), mode);
        let done = verdicts.iter().try_for_each(|v| self.alert(ev, c, &key, mode, v, None, deviation.as_ref()));
        self.verdicts = verdicts;
        done
    }

    /// One alert per container that came up with a new version of a
    /// profiled image.
    fn report_image_updates(&mut self) -> Result<()> {
        for (c, previous) in std::mem::take(&mut self.workloads.updates) {
            let key = workload_key(&c).into_owned();
            let mode = self.workloads.map.get(&key).map(|w| w.profile.mode()).unwrap_or(Mode::Monitor);
            let cgroup_id = self.workloads.live(&c.id).map(|l| l.cgroup_id).unwrap_or(0);
            let ev = Event {
                time_ns: now_ns(),
                cgroup_id,
                process: lancet_engine::event::ProcessRef::default(),
                kind: EventKind::CgroupMkdir { id: cgroup_id, path: c.cgroup_path.clone() },
            };
            let v = Verdict {
                rule: "Image updated".into(),
                policy: "profile".into(),
                severity: lancet_engine::policy::Severity::Low,
                action: lancet_engine::policy::Action::Alert,
                tags: vec!["image_update".to_string()].into(),
                message: format!(
                    "{} runs a new version of {} ({key}, was {previous}): it starts from the previous profile in monitor mode; `lancet profile diff {previous} {key}` shows what changed",
                    c.name, c.image
                ),
                escalate: None,
            };
            self.alert(&ev, &c, &key, mode, &v, None, None)?;
        }
        Ok(())
    }

    /// A container whose workload cannot be tracked: every slot holds a
    /// workload with live containers. It is alerted (and counted); with
    /// protect as the default mode it is guarded with nothing approved:
    /// protect fails closed, never open.
    fn over_bound(&mut self, ev: &Event, c: &Arc<lancet_engine::attribution::ContainerInfo>, key: &str) -> Result<()> {
        let mode = self.settings.mode;
        if mode == Mode::Protect {
            let mut empty = lancet_engine::profile::Profile::new(&c.image, key, ev.time_ns);
            empty.set_mode(Mode::Protect, ev.time_ns);
            self.ensure_guarded_with(c, key, Arc::new(empty));
        }
        let v = Verdict {
            rule: "Workload table full".into(),
            policy: "lancet".into(),
            severity: lancet_engine::policy::Severity::High,
            action: lancet_engine::policy::Action::Alert,
            tags: vec!["lancet".to_string(), "bound".to_string()].into(),
            message: format!(
                "{} workloads with live containers are tracked; {key} is not profiled ({})",
                self.workloads.map.len(),
                if mode == Mode::Protect { "guarded with nothing approved" } else { "not learned or checked" }
            ),
            escalate: None,
        };
        self.alert(ev, c, key, mode, &v, None, None)
    }

    /// One summary alert a second at most for refusals whose reports were
    /// lost (the agent's queue was full): the refusals held, and this says
    /// how many were not reported one by one.
    fn report_lost_denials(&mut self) -> Result<()> {
        let lost = crate::protect::denial_reports_lost();
        if lost <= self.denials_lost_reported {
            return Ok(());
        }
        let new = lost - self.denials_lost_reported;
        self.denials_lost_reported = lost;
        let message = format!(
            "{new} refusals held in the kernel were not reported one by one (the agent's report queue was full); {lost} since start"
        );
        self.alerts.raise_host(
            &mut self.store,
            "lancet refusal reports lost",
            "Warning",
            &["lancet", "lost"],
            &message,
            serde_json::json!({"lancet.lost": new, "lancet.lost_total": lost}),
        )?;
        Ok(())
    }

    /// One alert for lancet's kernel state removed under it (and put back).
    fn report_tampering(&mut self) -> Result<()> {
        let Some(p) = self.guarding.protector.as_mut() else { return Ok(()) };
        if p.tampered.is_empty() {
            return Ok(());
        }
        let fixed = std::mem::take(&mut p.tampered);
        let message =
            format!("removed from {} while the agent ran, pinned again: {}", self.settings.protect.pin_dir.display(), fixed.join(", "));
        self.alerts.raise_host(
            &mut self.store,
            "lancet enforcement pins removed",
            "Critical",
            &["lancet", "tamper", "T1562"],
            &message,
            serde_json::json!({"lancet.repaired": fixed}),
        )?;
        Ok(())
    }

    fn container_gone(&mut self, id: &str) {
        self.guarding.forget(id);
        if let Some(n) = self.workloads.container_gone(id) {
            self.writes.forget_container(n);
            self.write_sets.forget(n);
        }
    }

    /// Containers that ran before the agent: known at once, so protect-mode
    /// workloads are guarded on the first tick, not at their next event.
    fn adopt(&mut self, existing: Vec<Arc<lancet_engine::attribution::ContainerInfo>>) {
        let now = now_ns();
        for c in existing.into_iter().filter(|c| self.settings.follows(c)) {
            self.flows.see(&c, &workload_key(&c), c.pid.unwrap_or(0));
            self.workloads.adopt(&mut self.store, &self.guarding.cgroup2, &self.settings.protect.host_root, c, now);
        }
        self.sync_protection();
    }

    /// Once a second: fold repeats, promote quiet profiles, persist, reload
    /// policies when their files changed.
    fn every_second(&mut self, reload: &AtomicBool) -> Result<()> {
        let now = now_ns();
        self.alerts.fold_repeats(&mut self.store, now)?;
        self.report_image_updates()?;
        self.workloads.persist(&mut self.store, &self.settings.lifecycle, now)?;
        self.fleet_every_second();
        self.flows.persist(&mut self.store, &self.workloads, now)?;
        self.store.flush()?;
        self.sync_protection();
        self.report_tampering()?;
        self.report_lost_denials()?;
        if self.policies.reload_if_changed(reload.swap(false, Ordering::Relaxed)) {
            self.write_sets.policies_changed();
        }
        if self.last_prune.elapsed() > Duration::from_secs(60) {
            self.store.prune(now)?;
            self.last_prune = Instant::now();
        }
        Ok(())
    }
}

pub fn run(host_root: &Path, args: RunArgs) -> Result<ExitCode> {
    let settings = settings::settings(&args, host_root)?;
    let euid = lancet_sensor::features::euid();
    crate::private::state_dir(&settings.state_dir, euid)?;
    let db = settings.state_dir.join("lancet.db");
    let store = Store::open(&db, StoreOptions::default()).with_context(|| format!("opening the store {}", db.display()))?;
    let policies = Policies::load(&settings.policy_dir).map_err(anyhow::Error::msg)?;
    let out: Option<Box<dyn Write>> = match settings.alerts.as_deref() {
        None => None,
        Some("-") => Some(Box::new(std::io::stdout())),
        Some(path) => Some(Box::new(crate::private::open_alerts(Path::new(path), euid)?)),
    };
    let read_group = match settings.read_group.as_deref() {
        None => None,
        Some(g) => {
            let etc_group = std::fs::read_to_string(host_root.join("etc/group")).unwrap_or_default();
            Some(api::access::resolve_group(g, &etc_group).with_context(|| format!("readGroup {g:?}: no such group"))?)
        }
    };
    // Created at the first start and kept, so a TCP client can be given it
    // before `--listen` is turned on.
    let token = api::token::Token::load_or_create(&settings.state_dir, euid)?;
    // The dashboard's live feed, and the host's guarantees (probed once,
    // off the loop: loading test programs takes a moment).
    let (live, _) = tokio::sync::broadcast::channel::<Arc<str>>(256);
    let heartbeat = Arc::new(std::sync::atomic::AtomicU64::new(now_ns()));
    let doctor = Arc::new(std::sync::OnceLock::new());
    {
        let (doctor, host_root) = (Arc::clone(&doctor), host_root.to_path_buf());
        std::thread::Builder::new().name("lancet-doctor".into()).spawn(move || {
            let r = crate::doctor::report(&host_root);
            let _ = doctor.set(serde_json::to_value(&r).unwrap_or_default());
        })?;
    }
    let inbox = api::serve(ApiConfig {
        socket: settings.socket.clone(),
        read_group,
        listen: settings.listen,
        token: Some(token),
        host_root: host_root.to_path_buf(),
        euid,
        feeds: api::Feeds { live: live.clone(), doctor: Arc::clone(&doctor), heartbeat: Arc::clone(&heartbeat) },
        store: db.clone(),
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    let signals = crate::signals::watch(Arc::clone(&stop), Arc::clone(&reload))?;
    let socket = settings.socket.clone();
    let agent = settings.agent.clone();
    let cgroup2 = lancet_sensor::probes::detect_cgroup2_root().unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"));
    let baselines = load_baselines(&settings.state_dir.join("baselines"));
    // Pins from an earlier run, protect as the default, or a stored profile
    // in protect mode: load enforcement now, so rules are adopted at once.
    let protect_at_start = settings.mode == Mode::Protect
        || settings.protect.pin_dir.exists()
        || store.list_profiles().map(|l| l.iter().any(|p| p.mode == "protect")).unwrap_or(false);
    let fleet = settings.fleet.clone();
    let outputs = crate::outputs::Outputs::start(&settings.outputs, &hostname()).context("starting the alert outputs")?;
    let mut daemon = Daemon::new(settings, store, policies, out, Some(live.clone()), outputs, baselines, cgroup2, protect_at_start);
    if let Some(mut cfg) = fleet {
        cfg.guarantees = Arc::clone(&doctor);
        tracing::info!(nats = %cfg.url, node = %cfg.node, cluster = %cfg.cluster, "joining the fleet");
        daemon.fleet = Some(fleet::Fleet::new(crate::fleet::Link::start(cfg)?));
        daemon.workloads.fleet = Some(fleet::FleetBook::default());
    }
    let deadline = args.duration.map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let daemon = std::cell::RefCell::new(&mut daemon);
    run_loop(
        host_root,
        &agent,
        &stop,
        deadline,
        |ev, a, procs| daemon.borrow_mut().on_event(ev, a, procs),
        |pipeline| {
            let mut d = daemon.borrow_mut();
            if !pipeline.existing.is_empty() {
                d.adopt(std::mem::take(&mut pipeline.existing));
            }
            heartbeat.store(now_ns(), Ordering::Relaxed);
            // The fleet's news first, so the answers below already see it.
            d.fleet_tick();
            inbox.serve(|call, responder| d.on_call(call, responder, pipeline));
            d.drain_enforced()?;
            // The API's readers see what is committed.
            d.store.flush_if_older(Duration::from_millis(100))?;
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
    if let Some(p) = d.guarding.protector.as_mut() {
        p.stop();
    }
    drop(signals);
    api::remove_socket(&socket);
    Ok(ExitCode::SUCCESS)
}

/// overlayfs copying an image directory into the container's upper layer
/// before a file below it is written (`/var`, `/var/log` for a write in
/// `/var/log/nginx`): not a write of the workload's (the write below is an
/// event of its own). Learned, it would make the parent, often `/`, a
/// written directory, and protect mode would then leave the whole root
/// writable.
fn copied_up_directory(ev: &Event) -> bool {
    matches!(&ev.kind, EventKind::File(f) if f.is_dir && f.op == FileOp::Create && !f.host_path.is_empty()
        && lancet_sensor::overlay::copied_up(Path::new(&f.host_path)))
}
