//! The agent's event loop, shared by `lancet trace` and `lancet run`: load
//! the probes and fanotify watchers, follow containers as they come and go,
//! attribute every event, and hand each attributed event to the caller.
//! Everything runs on one thread, multiplexed with poll(2): no locks on the
//! event path.

use anyhow::{bail, Context, Result};
use lancet_engine::attribution::{Attribution, AttributionConfig, Attributor, ContainerInfo, LastContainer};
use lancet_engine::batch::{set_str, EventBatch, EventSink};
use lancet_engine::event::{Event, EventKind, FileEvent};
use lancet_engine::process::ProcessTable;
use lancet_sensor::fanotify::{FileChangeWatcher, SensitiveOpenWatcher, DEFAULT_SENSITIVE_PATHS};
use lancet_sensor::probes::{detect_cgroup2_root, PROBE_NAMES};
use lancet_sensor::{decode_into, Clock, Poller, Sensor, SensorConfig};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the loop watches, from the command line or the config file.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub ring_mb: u32,
    pub files: bool,
    /// Paths whose opens are reported; empty = the default set.
    pub sensitive: Vec<String>,
    /// Also watch the host's own sensitive paths.
    pub host_sensitive: bool,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Stats {
    pub records: u64,
    pub decode_errors: u64,
    pub emitted: u64,
    pub unknown_attribution: u64,
    pub lost: HashMap<&'static str, u64>,
    pub file_events: u64,
    pub file_overflows: u64,
    pub open_events: u64,
    pub open_overflows: u64,
    pub containers_seen: usize,
    pub seconds: f64,
    /// CPU time lancet itself used (user + system).
    pub cpu_seconds: f64,
    pub max_rss_kib: u64,
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// The cgroup v2 id of a live process: the inode of its cgroup directory.
fn cgroup_id_of_pid(cgroup2: &Path, pid: u32) -> Option<u64> {
    let dir = lancet_sensor::enforce::cgroup_of_pid(pid, cgroup2).ok()?;
    lancet_sensor::enforce::cgroup_id(&dir).ok()
}

/// CPU time (user + system) this process used, from /proc/self/stat.
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the parenthesised comm; utime and stime are the 14th and
    // 15th fields overall, in clock ticks (USER_HZ, 100 on Linux).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}

/// Peak resident set size of this process, from /proc/self/status.
pub fn max_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()))
        .unwrap_or(0)
}

/// What is watched for one container.
struct Armed {
    label: u64,
    paths: Vec<PathBuf>,
    /// Sensitive-path marks are in place (needs a live pid in the container).
    opens: bool,
    last_try: Instant,
    /// The container's name and a process last seen in it, to try the marks
    /// again on the next tick while they are not in place (a container just
    /// started may do nothing more for a long while).
    name: String,
    pid: Option<u32>,
}

/// Container filesystems and sensitive-path watches follow the containers:
/// armed on the first sight of a container, disarmed when its cgroup goes.
struct Watches {
    files: Option<FileChangeWatcher>,
    opens: Option<SensitiveOpenWatcher>,
    host_root: PathBuf,
    armed: lancet_engine::FastMap<String, Armed>,
    next_label: u64,
    /// The container the last event came from, when it was armed in full
    /// (its sensitive paths marked): its next events need nothing here, not
    /// even a look-up by id.
    settled: LastContainer<()>,
}

/// The loop handles a stream of events at most once per window: after a
/// batch, the next waits until the window has passed, so a container
/// writing 50 000 files a second costs one wake-up (a `poll`, a `read` per
/// source, the tick) per window, not per event. What it adds to an event's
/// latency is at most this; permission events are answered on their own
/// thread, and the API is served on the loop's tick (100 ms at most) anyway.
const BATCH_WINDOW: Duration = Duration::from_millis(10);

/// How often a container whose processes all vanished before we could mark
/// its root is tried again.
const ARM_RETRY: Duration = Duration::from_millis(100);

impl Watches {
    fn rebuild_filter(&mut self) {
        if let Some(f) = self.files.as_mut() {
            let prefixes = self.armed.values().flat_map(|a| a.paths.iter().cloned()).collect();
            f.set_path_filter(prefixes);
        }
    }

    /// Marks the sensitive paths under a live process's root.
    fn watch_opens(&mut self, label: u64, name: &str, pid: Option<u32>) -> bool {
        let (Some(o), Some(pid)) = (self.opens.as_mut(), pid) else { return false };
        // A process still in the host's root (runc init before pivot_root)
        // would put the marks on the host's own files: wait for one inside.
        if crate::protect::in_host_root(pid) {
            return false;
        }
        match o.watch_root(Path::new(&format!("/proc/{pid}/root")), label) {
            Ok(n) => {
                tracing::debug!(container = %name, marks = n, "sensitive paths watched");
                true
            }
            Err(e) => {
                tracing::debug!(container = %name, pid, "sensitive paths not watched yet: {e}");
                false
            }
        }
    }

    fn arm(&mut self, c: &Arc<ContainerInfo>, pid: Option<u32>) {
        if self.settled.get(c).is_some() {
            return;
        }
        if let Some(a) = self.armed.get_mut(&c.id) {
            if pid.is_some() {
                a.pid = pid;
            }
            if a.opens {
                // Its pid is kept only to try the marks again.
                self.settled.set(c, ());
                return;
            }
            if a.last_try.elapsed() < ARM_RETRY {
                return;
            }
            let label = a.label;
            let ok = self.watch_opens(label, &c.name, pid.or_else(|| trusted_pid(c)));
            if let Some(a) = self.armed.get_mut(&c.id) {
                a.opens = ok;
                a.last_try = Instant::now();
            }
            return;
        }
        let paths: Vec<PathBuf> = c.rootfs_paths.iter().map(|p| self.host_root.join(p.strip_prefix("/").unwrap_or(p))).collect();
        if let Some(f) = self.files.as_mut() {
            for p in &paths {
                if let Err(e) = f.add_filesystem(p) {
                    tracing::warn!(container = %c.name, path = %p.display(), "file changes not watched: {e}");
                }
            }
        }
        let label = self.next_label;
        self.next_label += 1;
        let opens = self.watch_opens(label, &c.name, trusted_pid(c).or(pid)) || self.watch_opens(label, &c.name, pid);
        self.armed.insert(c.id.clone(), Armed { label, paths, opens, last_try: Instant::now(), name: c.name.clone(), pid });
        self.rebuild_filter();
    }

    /// Tries again, once a tick, the sensitive-path marks of containers
    /// whose process was still the runtime's (outside the container's root)
    /// when they were first seen.
    fn retry_pending(&mut self) {
        let due: Vec<(String, u64, String, u32)> = self
            .armed
            .iter()
            .filter(|(_, a)| !a.opens && a.last_try.elapsed() >= ARM_RETRY)
            .filter_map(|(id, a)| Some((id.clone(), a.label, a.name.clone(), a.pid?)))
            .collect();
        for (id, label, name, pid) in due {
            let ok = self.watch_opens(label, &name, Some(pid));
            if let Some(a) = self.armed.get_mut(&id) {
                a.opens = ok;
                a.last_try = Instant::now();
            }
        }
    }

    fn disarm(&mut self, id: &str) {
        self.settled.clear();
        if let Some(a) = self.armed.remove(id) {
            if let Some(o) = self.opens.as_mut() {
                o.unwatch(a.label);
            }
            self.rebuild_filter();
        }
    }
}

/// Turns raw events into attributed records.
pub struct Pipeline {
    pub attributor: Attributor,
    pub procs: ProcessTable,
    pub cgroup2: PathBuf,
    /// The host root the agent reads the host under, as a string.
    host_root_str: String,
    /// Containers found at start, for the caller to take on its first tick.
    pub existing: Vec<Arc<ContainerInfo>>,
    /// Events by type and what was lost, for metrics.
    pub counters: crate::counters::LoopCounters,
    /// The last file event's attribution, for the next event of the same
    /// name by the same process (see [`SameName`]).
    same_name: SameName,
}

/// The kernel merges a name's queued events into one record (created,
/// written, deleted), which becomes consecutive events of one process on
/// one path: the second and third are attributed as the first was, without
/// looking its path and cgroup up again. Valid only between consecutive
/// events of one batch: any other event, and the end of the batch (the
/// tick changes what the attributor knows), forgets it.
#[derive(Default)]
struct SameName {
    pid: u32,
    cgroup_id: u64,
    host_path: String,
    /// The path as the container sees it.
    path: String,
    /// The first event's attribution; None once forgotten.
    attribution: Option<Attribution>,
}

impl SameName {
    fn matches(&self, ev: &Event) -> bool {
        self.attribution.is_some()
            && ev.process.pid == self.pid
            && ev.cgroup_id == self.cgroup_id
            && matches!(&ev.kind, EventKind::File(f) if f.old_path.is_none() && f.host_path == self.host_path)
    }
}

impl Pipeline {
    pub fn new(attributor: Attributor, cgroup2: PathBuf, host_root: &Path, existing: Vec<Arc<ContainerInfo>>) -> Pipeline {
        Pipeline {
            attributor,
            procs: ProcessTable::new(65_536),
            cgroup2,
            host_root_str: host_root.to_string_lossy().into_owned(),
            existing,
            counters: Default::default(),
            same_name: SameName::default(),
        }
    }

    /// The batch's events are handled: what is remembered between
    /// consecutive events goes.
    pub fn end_batch(&mut self) {
        self.procs.end_batch();
        self.same_name.attribution = None;
    }

    /// Attribution of one event, rewriting file paths to the container's view.
    pub fn attribute(&mut self, ev: &mut Event) -> Attribution {
        if let EventKind::Exec(x) = &mut ev.kind {
            complete_argv(ev.process.pid, x);
        }
        self.procs.observe(ev);
        if ev.cgroup_id == 0 {
            ev.cgroup_id = self
                .procs
                .get(ev.process.pid)
                .map(|p| p.cgroup_id)
                .filter(|&id| id != 0)
                .or_else(|| cgroup_id_of_pid(&self.cgroup2, ev.process.pid))
                .unwrap_or(0);
        }
        let mut ended = None;
        match &mut ev.kind {
            EventKind::CgroupMkdir { id, path } => {
                self.attributor.on_cgroup_mkdir(*id, path);
            }
            EventKind::CgroupRmdir { id, path } => {
                ended = self.attributor.on_cgroup_rmdir(*id, path);
            }
            _ => {}
        }
        if ev.process.comm.is_empty() {
            // fanotify reports only a pid.
            if let Some(p) = self.procs.get(ev.process.pid) {
                ev.process.comm.clone_from(&p.comm);
                ev.process.ppid = p.ppid;
            }
        }
        if self.same_name.matches(ev) {
            if let (EventKind::File(f), Some(a)) = (&mut ev.kind, &self.same_name.attribution) {
                set_str(&mut f.path, &self.same_name.path);
                return a.clone();
            }
        }
        // Any other event forgets it (a cgroup's removal among them).
        self.same_name.attribution = None;
        // The removal of a container's own cgroup (matched exactly by the
        // attributor, never by a name a user could give a cgroup of their
        // own) is attributed to the container that ended.
        if let Some(c) = ended {
            return Attribution::Container(c);
        }
        let mut attribution = if ev.cgroup_id == 0 { Attribution::Host } else { self.attributor.attribute(ev.cgroup_id) };
        if let EventKind::File(FileEvent { path, host_path, old_path, .. }) = &mut ev.kind {
            // The path as the container sees it, written over the host path
            // the source gave, in the string's own capacity.
            let host = on_host(&self.host_root_str, host_path);
            if let Some((c, inside)) = self.attributor.container_for_host_str(host) {
                let shift = host_path.len() - host.len();
                set_str(path, if inside.is_empty() { "/" } else { &host_path[shift + inside.start..shift + inside.end] });
                if let Some(old) = old_path.as_mut() {
                    let host_old = on_host(&self.host_root_str, old);
                    let shift = old.len() - host_old.len();
                    if let Some((_, inside)) = self.attributor.container_for_host_str(host_old) {
                        if inside.is_empty() {
                            set_str(old, "/");
                        } else {
                            old.truncate(shift + inside.end);
                            old.drain(..shift + inside.start);
                        }
                    }
                }
                if !matches!(attribution, Attribution::Container(_)) {
                    attribution = Attribution::Container(c);
                }
            }
            if old_path.is_none() {
                let m = &mut self.same_name;
                (m.pid, m.cgroup_id) = (ev.process.pid, ev.cgroup_id);
                set_str(&mut m.host_path, host_path);
                set_str(&mut m.path, path);
                m.attribution = Some(attribution.clone());
            }
        }
        attribution
    }
}

/// A host path as the host sees it: `path` without the `host_root` prefix
/// the agent reads the host under (`/` unless it runs in a container with
/// the host mounted), compared by whole components.
fn on_host<'p>(host_root: &str, path: &'p str) -> &'p str {
    let root = host_root.trim_end_matches('/');
    if root.is_empty() {
        return path;
    }
    match path.strip_prefix(root) {
        Some("") => "/",
        Some(rest) if rest.starts_with('/') => rest,
        _ => path,
    }
}

/// Runs until `stop` is set or `deadline` passes. `on_event` sees every
/// attributed event, with the process table (where a caller may keep what
/// it learned of a process until its next exec); `on_tick` runs after each
/// batch (at least every 100 ms).
pub fn run_loop(
    host_root: &Path,
    opts: &AgentOptions,
    stop: &Arc<AtomicBool>,
    deadline: Option<Instant>,
    mut on_event: impl FnMut(&Event, &Attribution, &mut ProcessTable) -> Result<()>,
    mut on_tick: impl FnMut(&mut Pipeline) -> Result<()>,
) -> Result<Stats> {
    if !opts.ring_mb.is_power_of_two() || opts.ring_mb > 1024 {
        bail!("--ring-mb must be a power of two up to 1024, not {}", opts.ring_mb);
    }
    if !lancet_sensor::features::is_root() {
        bail!("lancet needs root (CAP_SYS_ADMIN, CAP_BPF, CAP_PERFMON) to load BPF probes and use fanotify");
    }
    let cgroup2 = detect_cgroup2_root().context("no cgroup v2 hierarchy is mounted; containers cannot be told apart")?;
    let mut attributor = Attributor::new(AttributionConfig {
        host_root: host_root.to_path_buf(),
        cgroup2_root: Some(cgroup2.clone()),
        cache_capacity: 4096,
    })
    .context("setting up container attribution")?;
    let existing = attributor.scan().context("scanning running containers")?;
    tracing::info!(containers = existing.len(), "containers found at start");

    let sensor = Sensor::load(&SensorConfig { ring_bytes: opts.ring_mb << 20, cgroup2_root: cgroup2.clone(), ..SensorConfig::default() })
        .context("loading the BPF probes")?;
    let files =
        if opts.files { FileChangeWatcher::new().map_err(|e| tracing::warn!("file changes will not be reported: {e}")).ok() } else { None };
    let sensitive: Vec<String> =
        if opts.sensitive.is_empty() { DEFAULT_SENSITIVE_PATHS.iter().map(|s| s.to_string()).collect() } else { opts.sensitive.clone() };
    let mut opens =
        SensitiveOpenWatcher::with_paths(sensitive).map_err(|e| tracing::warn!("sensitive reads will not be reported: {e}")).ok();
    if let (Some(o), true) = (opens.as_mut(), opts.host_sensitive) {
        if let Err(e) = o.watch_root(Path::new("/"), u64::MAX) {
            tracing::warn!("host sensitive paths not watched: {e}");
        }
    }
    let mut watches = Watches {
        files,
        opens,
        host_root: host_root.to_path_buf(),
        armed: Default::default(),
        next_label: 0,
        settled: LastContainer::default(),
    };
    for c in &existing {
        watches.arm(c, None);
    }

    let clock = Clock::now();
    // One batch for every source, its events' storage reused from batch to
    // batch (see `lancet_engine::batch`).
    let batch: Rc<RefCell<EventBatch>> = Rc::new(RefCell::new(EventBatch::new()));
    let decode_errors = Rc::new(std::cell::Cell::new(0u64));
    let reader = {
        let batch = Rc::clone(&batch);
        let errors = Rc::clone(&decode_errors);
        sensor.ring_buffer(move |data| {
            let mut b = batch.borrow_mut();
            if let Err(e) = decode_into(data, &clock, b.slot()) {
                b.unclaim();
                errors.set(errors.get() + 1);
                tracing::debug!("undecodable record: {e}");
            }
            0
        })?
    };

    let mut pipeline = Pipeline::new(attributor, cgroup2, host_root, existing.clone());
    let mut counted = Instant::now();
    seed_processes(&mut pipeline);
    tracing::info!(probes = sensor.attached(), containers = watches.armed.len(), "lancet is tracing");
    let started = Instant::now();
    let mut stats = Stats::default();
    // Sources: the ring buffer's epoll fd (bit 0), then the file-change and
    // sensitive-open fanotify groups, each when there.
    let mut fds = vec![reader.epoll_fd()];
    let files_bit = watches.files.as_ref().map(|f| {
        fds.push(f.fd());
        1u32 << (fds.len() - 1)
    });
    let opens_bit = watches.opens.as_ref().map(|o| {
        fds.push(o.fd());
        1u32 << (fds.len() - 1)
    });
    let mut poller = Poller::new(&fds);
    let mut exec_order = lancet_engine::exec_order::ExecOrder::new();
    let mut files_quiet = false;
    let mut last_drain = Instant::now() - BATCH_WINDOW;
    while !stop.load(Ordering::Relaxed) && deadline.map(|d| Instant::now() < d).unwrap_or(true) {
        let ready = poller.wait(Duration::from_millis(100)).context("waiting for events")?;
        if ready != 0 {
            // A stream of events is handled once a window, not once an
            // event: what arrives meanwhile waits in the kernel's queues.
            let since = last_drain.elapsed();
            if since < BATCH_WINDOW {
                std::thread::sleep(BATCH_WINDOW - since);
            }
        }
        last_drain = Instant::now();
        // File changes first: a file written and then run shows up in both
        // sources at once, and drift reports name the writer only if the
        // write is seen before the exec. A process's own writes after its
        // exec are then moved behind its exec record (`exec_order`).
        let mut marked = false;
        if let (Some(f), Some(bit)) = (watches.files.as_mut(), files_bit) {
            if ready & bit != 0 || files_quiet {
                if let Err(e) = f.read_events(&mut *batch.borrow_mut()) {
                    tracing::warn!("reading file events: {e}");
                }
                marked = true;
                // A read of exec marks alone (execs, on the host or in a
                // container, with no write): the queue is not watched until
                // another source or the tick wakes the loop, and is read
                // then. Otherwise every exec would wake the loop, up to a
                // hundred times a second, where the probes' exec records
                // wake it only past a fill level.
                files_quiet = batch.borrow().is_empty() && !f.exec_marks().is_empty();
                poller.watch(bit, !files_quiet);
            }
        }
        let files = batch.borrow().len();
        // The probes wake the reader only past a fill level: the ring is
        // consumed at every turn (no syscall when it is empty).
        reader.consume()?;
        if let (Some(o), Some(bit)) = (watches.opens.as_mut(), opens_bit) {
            if ready & bit != 0 {
                if let Err(e) = o.read_events(&mut *batch.borrow_mut()) {
                    tracing::warn!("reading open events: {e}");
                }
            }
        }
        let mut events = batch.borrow_mut();
        stats.records += events.len() as u64;
        let marks = watches.files.as_ref().filter(|_| marked).map_or(&[][..], |f| f.exec_marks());
        let order = exec_order.compute(events.events(), files, marks);
        let n = events.len();
        for k in 0..n {
            let i = order.map_or(k, |o| o[k] as usize);
            let ev = &mut events.events_mut()[i];
            let attribution = pipeline.attribute(ev);
            pipeline.counters.note(&ev.kind);
            match (&attribution, &ev.kind) {
                (Attribution::Container(c), EventKind::CgroupRmdir { .. }) => watches.disarm(&c.id),
                (Attribution::Container(c), _) => watches.arm(c, Some(ev.process.pid)),
                (Attribution::Unknown { .. }, _) => stats.unknown_attribution += 1,
                _ => {}
            }
            on_event(ev, &attribution, &mut pipeline.procs)?;
        }
        events.clear();
        drop(events);
        pipeline.end_batch();
        watches.retry_pending();
        if counted.elapsed() >= Duration::from_secs(1) {
            counted = Instant::now();
            let c = &mut pipeline.counters;
            c.decode_errors = decode_errors.get();
            c.unknown_attribution = stats.unknown_attribution;
            if let Ok(lost) = sensor.lost() {
                c.lost = PROBE_NAMES.iter().copied().zip(lost).collect();
            }
            c.file_overflows =
                watches.files.as_ref().map_or(0, |f| f.stats().overflows) + watches.opens.as_ref().map_or(0, |o| o.stats().overflows);
        }
        on_tick(&mut pipeline)?;
    }
    stats.decode_errors = decode_errors.get();
    if let Ok(lost) = sensor.lost() {
        stats.lost = PROBE_NAMES.iter().copied().zip(lost).collect();
    }
    if let Some(f) = &watches.files {
        let s = f.stats();
        stats.file_events = s.events;
        stats.file_overflows = s.overflows;
    }
    if let Some(o) = &watches.opens {
        let s = o.stats();
        stats.open_events = s.events;
        stats.open_overflows = s.overflows;
    }
    stats.containers_seen = watches.armed.len();
    stats.seconds = started.elapsed().as_secs_f64();
    stats.max_rss_kib = max_rss_kib();
    stats.cpu_seconds = cpu_seconds();
    Ok(stats)
}

/// Processes that ran before the agent: their executables and cgroups, so
/// the first events of old processes still name their parents.
fn seed_processes(p: &mut Pipeline) {
    let Ok(dir) = std::fs::read_dir("/proc") else { return };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let exe = std::fs::read_link(entry.path().join("exe")).map(|p| p.display().to_string()).unwrap_or_default();
        let comm = std::fs::read_to_string(entry.path().join("comm")).map(|s| s.trim().to_string()).unwrap_or_default();
        let cgroup_id = cgroup_id_of_pid(&p.cgroup2, pid).unwrap_or(0);
        let ppid = crate::protect::ppid_of(pid).unwrap_or(0);
        // A runtime caught setting a container up: in the host's root and
        // its parent's mount namespace, in a cgroup other than its parent's.
        let runtime = crate::protect::runtime_setup_process(pid) && cgroup_id_of_pid(&p.cgroup2, ppid).is_some_and(|c| c != cgroup_id);
        let start_ns = lancet_sensor::enforce::process_start_time(pid).map_or(0, lancet_sensor::enforce::start_ns_of_ticks);
        p.procs.insert(pid, lancet_engine::process::ProcEntry { exe, comm, cgroup_id, ppid, start_ns, runtime, ..Default::default() });
    }
}

/// Bytes of argv the exec probe keeps (`LANCET_ARGS_MAX` in `bpf/lancet.h`).
const PROBE_ARGS_MAX: usize = 1024;
/// How much of a longer command line is read back from `/proc`.
const FULL_ARGS_MAX: usize = 64 * 1024;

/// An exec whose argv the probe had to cut (padding a command line past
/// 1 KiB must not hide its tail from rules): the whole command line is read
/// from `/proc/<pid>/cmdline` when the process still runs the same program
/// (its recorded arguments are a prefix of it). Otherwise it stays marked
/// truncated, which the daemon reports.
fn complete_argv(pid: u32, x: &mut lancet_engine::event::ExecEvent) {
    let kept: usize = x.argv.iter().map(|a| a.len() + 1).sum();
    if !x.truncated || kept + 8 < PROBE_ARGS_MAX {
        return;
    }
    use std::io::Read;
    let Ok(f) = std::fs::File::open(format!("/proc/{pid}/cmdline")) else { return };
    let mut buf = Vec::with_capacity(4096);
    if f.take(FULL_ARGS_MAX as u64 + 1).read_to_end(&mut buf).is_err() || buf.len() > FULL_ARGS_MAX {
        return;
    }
    let full: Vec<String> = buf.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let mut full = full;
    if full.last().is_some_and(String::is_empty) {
        full.pop();
    }
    let n = x.argv.len();
    let prefix_ok = n > 0 && full.len() >= n && x.argv[..n - 1] == full[..n - 1] && full[n - 1].starts_with(x.argv[n - 1].as_str());
    if prefix_ok {
        x.argv = full;
        x.truncated = false;
    }
}

/// The runtime's record of a container's init pid, when that process is
/// alive and in the container's own cgroup (a record the runtime's user can
/// write may name any process).
pub fn trusted_pid(c: &ContainerInfo) -> Option<u32> {
    let pid = c.pid?;
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let own = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let inside = own == c.cgroup_path || own.strip_prefix(c.cgroup_path.as_str()).is_some_and(|rest| rest.starts_with('/'));
    (!c.cgroup_path.is_empty() && inside).then_some(pid)
}

#[cfg(test)]
mod argv_tests {
    use super::*;
    use lancet_engine::event::ExecEvent;

    #[test]
    fn a_cut_command_line_is_read_back_whole_while_the_process_runs() {
        let pad = "p".repeat(1500);
        let mut child = std::process::Command::new("sh").args(["-c", "sleep 30", &pad, "tail-marker"]).spawn().expect("sh");
        // What the probe would have kept: 1 KiB, the last argument cut.
        let mut x = ExecEvent {
            argv: vec!["sh".into(), "-c".into(), "sleep 30".into(), pad[..1005].to_string()],
            truncated: true,
            ..ExecEvent::default()
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        complete_argv(child.id(), &mut x);
        assert_eq!(x.argv.last().map(String::as_str), Some("tail-marker"));
        assert!(!x.truncated);
        // Another program's command line is not taken for it.
        let mut other = ExecEvent { argv: vec!["nginx".into(), "x".repeat(1020)], truncated: true, ..ExecEvent::default() };
        complete_argv(child.id(), &mut other);
        assert!(other.truncated);
        let _ = child.kill();
        let _ = child.wait();
        // Gone: stays truncated.
        complete_argv(child.id(), &mut other);
        assert!(other.truncated);
    }
}
