//! Attribution: which container (and image, and pod) an event belongs to.
//!
//! BPF reports a cgroup v2 id with every event; fanotify reports host paths.
//! Neither says "container", so this module keeps two maps, filled from the
//! cgroup2 hierarchy and from what the runtimes write to disk:
//! cgroup id → cgroup path → container, and overlay upper dir → container.
//!
//! Everything is read under `host_root`, so a fixture tree (or a host mounted
//! into the agent's own container) stands in for `/`. Nothing here talks to a
//! runtime's API socket: those may be absent, slow, or the thing being
//! attacked, while their state files are always there and cheap to read.
//!
//! The hot path (`attribute` for a cgroup already seen) is a hash lookup and an
//! `Arc` clone. Misses re-read only the one container's files, and failures are
//! remembered for a short while ([`NEGATIVE_TTL`]) so a burst of events from a
//! container whose metadata is not written yet costs one read per TTL, yet the
//! container is attributed as soon as its files appear.

mod bolt;
mod cgroup;
mod containerd;
mod last;
mod network;
mod runtimes;

pub use cgroup::{parse_cgroup_path, CgroupMatch};
pub use last::LastContainer;
pub use network::{network_name_ok, NetMode, NetworkFacts};
pub(crate) use runtimes::read_limited;

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a failed attribution is believed before the files are read again.
/// Short, because the usual cause is a container still being set up.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(1);

/// Caps a cgroup tree walk, so a pathological hierarchy cannot stall the agent.
const MAX_WALK_DIRS: usize = 200_000;
const MAX_WALK_DEPTH: usize = 64;

/// `Runc` is the default because a bare OCI runtime is the least that can be
/// said of any container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Podman,
    Docker,
    Containerd,
    Crio,
    #[default]
    Runc,
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Runtime::Podman => "podman",
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::Crio => "crio",
            Runtime::Runc => "runc",
        })
    }
}

/// The command a container's runtime starts in it (its entrypoint and cmd,
/// as the OCI spec's `process` has them), so a container that was running
/// before the agent can still have its first exec learned, and restarted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciProcess {
    /// argv, argv\[0\] as given (the runtime looks it up on `PATH`).
    pub args: Vec<String>,
    /// The `PATH` of the process's environment, when set.
    pub path_env: Option<String>,
    /// Working directory inside the container.
    pub cwd: String,
}

/// At most this many arguments, each at most [`MAX_ARG_LEN`] bytes, are
/// kept from a runtime's record: it is written by whoever made the image.
pub const MAX_ARGS: usize = 256;
pub const MAX_ARG_LEN: usize = 4096;

/// `s` cut to at most `max` bytes, at a character boundary. (Counting
/// characters, as this did, let a string of 4-byte characters keep four
/// times the bound.)
fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

impl OciProcess {
    /// The `process` object of an OCI runtime spec (bounded).
    pub fn from_spec(process: &serde_json::Value) -> Option<OciProcess> {
        let args: Vec<String> =
            process.get("args")?.as_array()?.iter().take(MAX_ARGS).filter_map(|a| a.as_str()).map(|a| cut(a, MAX_ARG_LEN)).collect();
        if args.is_empty() {
            return None;
        }
        let path_env = process
            .get("env")
            .and_then(|e| e.as_array())
            .and_then(|e| e.iter().filter_map(|v| v.as_str()).find_map(|v| v.strip_prefix("PATH=")))
            .map(|p| cut(p, MAX_ARG_LEN));
        let cwd = cut(process.get("cwd").and_then(|c| c.as_str()).unwrap_or("/"), MAX_ARG_LEN);
        Some(OciProcess { args, path_env, cwd })
    }
}

/// The Kubernetes identity of a container, when it runs in a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// The container's name in the pod spec (not the runtime's name for it).
    pub container_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    /// Full id (64 hex for every runtime but plain runc, where it is whatever
    /// id runc was given).
    pub id: String,
    pub runtime: Runtime,
    pub name: String,
    /// `repository[:tag]` as the runtime records it; empty when unknown.
    pub image: String,
    /// Image (config) id as the runtime records it; empty when unknown.
    pub image_id: String,
    /// `sha256:…` manifest / repo digest; empty when unknown. Profiles are
    /// keyed by it, because a tag can move and an id differs between hosts.
    pub image_digest: String,
    pub labels: BTreeMap<String, String>,
    pub pod: Option<PodInfo>,
    /// The container's own cgroup, relative to the cgroup2 mount.
    pub cgroup_path: String,
    /// Host paths (without the `host_root` prefix) where the container's
    /// writes land: the overlay upper dir, a runc rootfs dir. File events are
    /// attributed by these when the writing process is already gone.
    pub rootfs_paths: Vec<PathBuf>,
    /// Host pid of the container's init, when the runtime records it.
    pub pid: Option<u32>,
    /// What the runtime runs as the container's first process.
    pub process: Option<OciProcess>,
    /// A rootless container's owner (its cgroup is in that user's slice and
    /// its metadata in files the user can write): its claims (image digest,
    /// pid) are trusted only for that user's own containers.
    pub owner_uid: Option<u32>,
    /// Its network as the runtime recorded it: where protect mode's
    /// default DNS servers come from (never the container's own
    /// `/etc/resolv.conf`, which it can write).
    #[serde(default)]
    pub network: NetworkFacts,
}

impl ContainerInfo {
    /// The 12-character id people and `podman ps`/`docker ps` use.
    pub fn short_id(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }

    /// The overlay upper directory, where everything the container wrote
    /// since it started lives: `…/diff` (podman, CRI-O, Docker's overlay2),
    /// `…/snapshots/<id>/fs` (containerd's overlayfs snapshotter); None for
    /// a plain rootfs directory (runc bundles), where image files and
    /// writes cannot be told apart.
    pub fn upper_dir(&self) -> Option<&std::path::Path> {
        let snapshot = |p: &std::path::Path| {
            p.ends_with("fs") && p.parent().and_then(std::path::Path::parent).is_some_and(|d| d.ends_with("snapshots"))
        };
        self.rootfs_paths.iter().find(|p| p.ends_with("diff") || snapshot(p)).map(|p| p.as_path())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Attribution {
    Host,
    Container(Arc<ContainerInfo>),
    /// Kept raw rather than guessed: an event we cannot place must still be
    /// reported, and the reason tells an operator what to fix.
    Unknown {
        cgroup_id: u64,
        cgroup_path: Option<String>,
        reason: String,
    },
}

#[derive(Debug, Clone)]
pub struct AttributionConfig {
    /// Prefix for every host path read (`/` on a real host).
    pub host_root: PathBuf,
    /// The cgroup2 mount as a path on *this* machine (used as is, not joined
    /// with `host_root`). `None`: detected from `<host_root>/proc/self/mountinfo`,
    /// falling back to `<host_root>/sys/fs/cgroup/unified`, then
    /// `<host_root>/sys/fs/cgroup`.
    pub cgroup2_root: Option<PathBuf>,
    /// Bound of every cache (cgroup ids, results, containers).
    pub cache_capacity: usize,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        AttributionConfig { host_root: PathBuf::from("/"), cgroup2_root: None, cache_capacity: 4096 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AttributionError {
    #[error("no cgroup v2 hierarchy found under {0}")]
    NoCgroup2(PathBuf),
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A map that forgets its oldest entries beyond a capacity. FIFO rather than
/// LRU: cheaper on the hot path, and what matters is the bound.
#[derive(Debug)]
struct Bounded<K, V> {
    map: crate::FastMap<K, (V, u64)>,
    order: VecDeque<(K, u64)>,
    cap: usize,
    gen: u64,
}

impl<K: Eq + Hash + Clone, V> Bounded<K, V> {
    fn new(cap: usize) -> Self {
        Bounded { map: crate::FastMap::default(), order: VecDeque::new(), cap: cap.max(1), gen: 0 }
    }
    fn get<Q: Hash + Eq + ?Sized>(&self, k: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
    {
        self.map.get(k).map(|(v, _)| v)
    }
    fn insert(&mut self, k: K, v: V) {
        self.gen += 1;
        self.map.insert(k.clone(), (v, self.gen));
        self.order.push_back((k, self.gen));
        while self.map.len() > self.cap {
            let Some((old, g)) = self.order.pop_front() else { break };
            if self.map.get(&old).is_some_and(|(_, mg)| *mg == g) {
                self.map.remove(&old);
            }
        }
        if self.order.len() > 2 * self.cap + 64 {
            let map = &self.map;
            self.order.retain(|(k, g)| map.get(k).is_some_and(|(_, mg)| mg == g));
        }
    }
    fn remove(&mut self, k: &K) -> Option<V> {
        self.map.remove(k).map(|(v, _)| v)
    }
    fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }
    fn values(&self) -> impl Iterator<Item = &V> {
        self.map.values().map(|(v, _)| v)
    }
    fn len(&self) -> usize {
        self.map.len()
    }
}

pub struct Attributor {
    cgroup2_root: PathBuf,
    reader: runtimes::Reader,
    cap: usize,
    /// cgroup id → path relative to the cgroup2 root.
    paths: Bounded<u64, String>,
    /// cgroup id → Host or Container.
    results: Bounded<u64, Attribution>,
    /// cgroup id → (retry after, Unknown).
    negative: Bounded<u64, (Instant, Attribution)>,
    containers: Bounded<String, Arc<ContainerInfo>>,
    /// rootfs path → container id; entries of evicted containers are skipped
    /// on lookup and swept when the map grows.
    by_rootfs: rootfs_index::RootfsIndex,
    /// Plain runc containers and containerd tasks with ids of their own
    /// choosing (`ctr run`), by cgroup path, refreshed at most once per TTL.
    runc_index: Option<(Instant, Vec<Arc<ContainerInfo>>)>,
    last_walk: Option<Instant>,
    /// cgroup id → when its mkdir was seen. A young cgroup that no runtime
    /// names may still become a plain runc container: runc writes its
    /// state.json while the container's first processes already run.
    born: Bounded<u64, Instant>,
}

/// How long a new cgroup stays "young" (see `Attributor::born`).
const YOUNG: Duration = Duration::from_secs(2);

impl fmt::Debug for Attributor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attributor")
            .field("cgroup2_root", &self.cgroup2_root)
            .field("cgroups", &self.paths.len())
            .field("containers", &self.containers.len())
            .finish()
    }
}

/// Finds the cgroup2 mount the way the kernel tells it, then the two places
/// distributions put it.
fn detect_cgroup2(host_root: &Path) -> Result<PathBuf, AttributionError> {
    let mountinfo = host_root.join("proc/self/mountinfo");
    if let Ok(text) = std::fs::read_to_string(&mountinfo) {
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else { continue };
            if right.split_whitespace().next() != Some("cgroup2") {
                continue;
            }
            if let Some(mp) = left.split_whitespace().nth(4) {
                let mp = mp.replace("\\040", " ");
                let p = host_root.join(mp.trim_start_matches('/'));
                if p.is_dir() {
                    return Ok(p);
                }
            }
        }
    }
    for cand in ["sys/fs/cgroup/unified", "sys/fs/cgroup"] {
        let p = host_root.join(cand);
        if p.is_dir() {
            return Ok(p);
        }
    }
    Err(AttributionError::NoCgroup2(host_root.to_path_buf()))
}

impl Attributor {
    pub fn new(cfg: AttributionConfig) -> Result<Self, AttributionError> {
        let cgroup2_root = match &cfg.cgroup2_root {
            Some(p) if p.is_dir() => p.clone(),
            Some(p) => return Err(AttributionError::NoCgroup2(p.clone())),
            None => detect_cgroup2(&cfg.host_root)?,
        };
        // runc records cgroup paths as host paths of the mount; it needs the
        // mount as the host sees it to turn them back into cgroup paths.
        let mount_on_host = match cgroup2_root.strip_prefix(&cfg.host_root) {
            Ok(rel) if cfg.host_root != Path::new("/") => Path::new("/").join(rel),
            _ => cgroup2_root.clone(),
        };
        let cap = cfg.cache_capacity.max(16);
        Ok(Attributor {
            reader: runtimes::Reader::new(cfg.host_root.clone(), mount_on_host),
            cgroup2_root,
            cap,
            paths: Bounded::new(cap),
            results: Bounded::new(cap),
            negative: Bounded::new(cap),
            containers: Bounded::new(cap),
            by_rootfs: rootfs_index::RootfsIndex::default(),
            runc_index: None,
            born: Bounded::new(cap),
            last_walk: None,
        })
    }

    /// The cgroup2 mount being walked (a path on this machine).
    pub fn cgroup2_root(&self) -> &Path {
        &self.cgroup2_root
    }

    /// Walks the hierarchy and records id → path for every cgroup.
    fn walk(&mut self, now: Instant) -> Result<Vec<(u64, String)>, AttributionError> {
        use std::os::unix::fs::MetadataExt;
        self.last_walk = Some(now);
        let root_meta =
            std::fs::metadata(&self.cgroup2_root).map_err(|source| AttributionError::Io { path: self.cgroup2_root.clone(), source })?;
        let mut out = vec![(root_meta.ino(), "/".to_string())];
        let mut stack = vec![(self.cgroup2_root.clone(), String::new(), 0usize)];
        while let Some((dir, rel, depth)) = stack.pop() {
            // A cgroup removed under our feet is normal; skip it.
            let Ok(rd) = std::fs::read_dir(&dir) else { continue };
            for entry in rd.flatten() {
                if out.len() >= MAX_WALK_DIRS {
                    tracing::warn!(limit = MAX_WALK_DIRS, "cgroup walk stopped at its limit");
                    break;
                }
                let Ok(ft) = entry.file_type() else { continue };
                if !ft.is_dir() {
                    continue;
                }
                let Ok(meta) = entry.metadata() else { continue };
                let child_rel = format!("{rel}/{}", entry.file_name().to_string_lossy());
                out.push((meta.ino(), child_rel.clone()));
                if depth + 1 < MAX_WALK_DEPTH {
                    stack.push((entry.path(), child_rel, depth + 1));
                }
            }
        }
        for (id, p) in &out {
            self.paths.insert(*id, p.clone());
        }
        Ok(out)
    }

    /// Walks the cgroup2 tree once, records every cgroup id, and resolves the
    /// containers found. Containers not found any more are forgotten.
    pub fn scan(&mut self) -> Result<Vec<Arc<ContainerInfo>>, AttributionError> {
        self.scan_at(Instant::now())
    }

    /// [`scan`](Self::scan) with an explicit clock, for tests.
    pub fn scan_at(&mut self, now: Instant) -> Result<Vec<Arc<ContainerInfo>>, AttributionError> {
        let cgroups = self.walk(now)?;
        self.results.clear();
        self.negative.clear();
        self.runc_index = None;
        self.containers.clear();
        self.by_rootfs.clear();
        self.reader.forget_changed_files();
        let mut found: Vec<Arc<ContainerInfo>> = Vec::new();
        for (id, path) in cgroups {
            if let Attribution::Container(c) = self.resolve_and_remember(id, &path, now) {
                if !found.iter().any(|f| f.id == c.id) {
                    found.push(c);
                }
            }
        }
        found.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        tracing::debug!(containers = found.len(), "cgroup2 scan done");
        Ok(found)
    }

    /// Attribution of a cgroup id, as reported by `bpf_get_current_cgroup_id`.
    pub fn attribute(&mut self, cgroup_id: u64) -> Attribution {
        // The common case first, without reading the clock.
        if let Some(a) = self.results.get(&cgroup_id) {
            return a.clone();
        }
        self.attribute_at(cgroup_id, Instant::now())
    }

    /// [`attribute`](Self::attribute) with an explicit clock, so tests can step
    /// past the negative-cache TTL without sleeping.
    pub fn attribute_at(&mut self, cgroup_id: u64, now: Instant) -> Attribution {
        if let Some(a) = self.results.get(&cgroup_id) {
            return a.clone();
        }
        if let Some((retry_after, a)) = self.negative.get(&cgroup_id) {
            if now < *retry_after {
                return a.clone();
            }
        }
        if cgroup_id == 0 {
            return Attribution::Unknown { cgroup_id, cgroup_path: None, reason: "event carries no cgroup id".into() };
        }
        if self.paths.get(&cgroup_id).is_none() {
            // Ids only map to paths by walking; do so at most once per TTL.
            let stale = self.last_walk.is_none_or(|t| now.saturating_duration_since(t) >= NEGATIVE_TTL);
            if stale {
                if let Err(e) = self.walk(now) {
                    tracing::debug!(error = %e, "cgroup walk failed");
                }
            }
        }
        match self.paths.get(&cgroup_id).cloned() {
            Some(path) => self.resolve_and_remember(cgroup_id, &path, now),
            None => {
                let a = Attribution::Unknown {
                    cgroup_id,
                    cgroup_path: None,
                    reason: "cgroup id not found in the cgroup2 hierarchy (removed, or not yet walked)".into(),
                };
                self.remember(cgroup_id, a.clone(), false, now);
                a
            }
        }
    }

    fn resolve_and_remember(&mut self, id: u64, path: &str, now: Instant) -> Attribution {
        let a = self.resolve_path(id, path, now);
        // A cgroup no runtime names is "host" only for now: a plain runc
        // container writes its state.json after its first processes run in
        // the cgroup, so such a cgroup is looked at again after the TTL.
        let settled = match &a {
            Attribution::Container(_) => true,
            Attribution::Unknown { .. } => false,
            Attribution::Host => path == "/" || parse_cgroup_path(path).is_some(),
        };
        if !settled && matches!(a, Attribution::Host) && self.is_young(id, now) {
            // Not cached at all: the next event looks again.
            self.results.remove(&id);
            self.negative.remove(&id);
            return a;
        }
        self.remember(id, a.clone(), settled, now);
        a
    }

    /// Caches a result: settled ones until the cgroup goes, the others for
    /// [`NEGATIVE_TTL`].
    fn remember(&mut self, id: u64, a: Attribution, settled: bool, now: Instant) {
        if settled {
            self.negative.remove(&id);
            self.results.insert(id, a);
        } else {
            self.results.remove(&id);
            self.negative.insert(id, (now + NEGATIVE_TTL, a));
        }
    }

    fn insert_container(&mut self, info: ContainerInfo) -> Arc<ContainerInfo> {
        if let Some(old) = self.containers.get(&info.id) {
            if **old == info {
                return Arc::clone(old);
            }
        }
        let c = Arc::new(info);
        for p in &c.rootfs_paths {
            self.by_rootfs.insert(&p.to_string_lossy(), &c.id);
        }
        self.containers.insert(c.id.clone(), Arc::clone(&c));
        if self.by_rootfs.len() > 4 * self.cap {
            let containers = &self.containers;
            self.by_rootfs.retain(|id| containers.get(id).is_some());
        }
        c
    }

    /// Host, a container, or Unknown for one cgroup path. Reads files only
    /// for a container not known yet.
    fn resolve_path(&mut self, cgroup_id: u64, path: &str, now: Instant) -> Attribution {
        let m = parse_cgroup_path(path);
        if let Some(m) = &m {
            if m.ignore {
                return Attribution::Host;
            }
            if let Some(id) = &m.container_id {
                if let Some(c) = self.containers.get(id) {
                    let c = Arc::clone(c);
                    return match self.named_by_its_owner(path, m, &c) {
                        Ok(()) => Attribution::Container(c),
                        Err(reason) => Attribution::Unknown { cgroup_id, cgroup_path: Some(path.to_string()), reason },
                    };
                }
                let cg = m.container_cgroup.clone().unwrap_or_else(|| path.to_string());
                return match self.reader.read_container(id, m).and_then(|info| self.named_by_its_owner(path, m, &info).map(|()| info)) {
                    Ok(mut info) => {
                        info.cgroup_path = cg;
                        Attribution::Container(self.insert_container(info))
                    }
                    Err(reason) => {
                        tracing::debug!(cgroup_id, path, %reason, "container not attributable yet");
                        Attribution::Unknown { cgroup_id, cgroup_path: Some(path.to_string()), reason }
                    }
                };
            }
        }
        // No runtime naming scheme: a plain runc container with its own
        // cgroupsPath, or the host.
        if let Some(c) = self.runc_for_path(cgroup_id, path, now) {
            return Attribution::Container(c);
        }
        Attribution::Host
    }

    /// A cgroup is named after a container (`libpod-<id>.scope`, …), but a
    /// name is not an identity: anyone with a delegated cgroup subtree (an
    /// unprivileged user's systemd manager, a rootless runtime) can make
    /// one named after root's container, read from the world-readable
    /// `/proc/<pid>/cgroup`, and run programs there. Such a cgroup is the
    /// container only when its directory belongs to whoever may create the
    /// container's cgroups: the owner of the cgroup2 root (root) for a
    /// rootful container, or that or the container's own user for a
    /// rootless one; and a rootful container is never found under a user's
    /// manager (`user@<uid>.service`).
    fn named_by_its_owner(&self, path: &str, m: &CgroupMatch, c: &ContainerInfo) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        if m.rootless_uid != c.owner_uid {
            let under = m.rootless_uid.map_or("outside any user's manager".to_string(), |u| format!("under uid {u}'s manager"));
            return Err(format!("cgroup {path} is named after container {} but lies {under}", c.id));
        }
        let owner = |p: &Path| std::fs::metadata(p).map(|md| md.uid()).map_err(|e| format!("cgroup {}: {e}", p.display()));
        let root_owner = owner(&self.cgroup2_root)?;
        let found = owner(&self.cgroup2_root.join(path.trim_start_matches('/')))?;
        if found == root_owner || c.owner_uid == Some(found) {
            return Ok(());
        }
        Err(format!("cgroup {path} is named after container {} but belongs to uid {found}, who cannot make its cgroups", c.id))
    }

    fn is_young(&self, id: u64, now: Instant) -> bool {
        self.born.get(&id).is_some_and(|b| now.saturating_duration_since(*b) < YOUNG)
    }

    fn runc_for_path(&mut self, id: u64, path: &str, now: Instant) -> Option<Arc<ContainerInfo>> {
        // runc's state files are cached by mtime, so a refresh for a young
        // cgroup costs a directory listing and a stat per container.
        let fresh =
            !self.is_young(id, now) && self.runc_index.as_ref().is_some_and(|(t, _)| now.saturating_duration_since(*t) < NEGATIVE_TTL);
        if !fresh {
            let mut list: Vec<Arc<ContainerInfo>> = self.reader.runc_states().into_iter().map(Arc::new).collect();
            list.extend(self.reader.containerd_states().into_iter().map(Arc::new));
            self.runc_index = Some((now, list));
        }
        let (_, list) = self.runc_index.as_ref()?;
        let hit = list
            .iter()
            .filter(|c| !c.cgroup_path.is_empty() && c.cgroup_path != "/")
            .find(|c| path == c.cgroup_path || path.strip_prefix(c.cgroup_path.as_str()).is_some_and(|rest| rest.starts_with('/')))?;
        let info = (**hit).clone();
        if let Some(known) = self.containers.get(&info.id) {
            return Some(Arc::clone(known));
        }
        Some(self.insert_container(info))
    }

    /// A cgroup appeared. If it is a container's, its metadata is read now
    /// (the runtimes write it before creating the cgroup), so the first event
    /// from the container is already a cache hit.
    pub fn on_cgroup_mkdir(&mut self, id: u64, path: &str) -> Option<Arc<ContainerInfo>> {
        self.on_cgroup_mkdir_at(id, path, Instant::now())
    }

    pub fn on_cgroup_mkdir_at(&mut self, id: u64, path: &str, now: Instant) -> Option<Arc<ContainerInfo>> {
        self.paths.insert(id, path.to_string());
        self.born.insert(id, now);
        self.results.remove(&id);
        self.negative.remove(&id);
        match self.resolve_and_remember(id, path, now) {
            Attribution::Container(c) => Some(c),
            _ => None,
        }
    }

    /// A cgroup went away. Returns the container when it was the container's
    /// own cgroup (not a sub-cgroup), so callers can drop per-container state.
    pub fn on_cgroup_rmdir(&mut self, id: u64, path: &str) -> Option<Arc<ContainerInfo>> {
        self.paths.remove(&id);
        self.negative.remove(&id);
        let cached = self.results.remove(&id);
        let c = match cached {
            Some(Attribution::Container(c)) => Some(c),
            _ => parse_cgroup_path(path).and_then(|m| m.container_id).and_then(|cid| self.containers.get(&cid).cloned()),
        }?;
        if c.cgroup_path != path {
            return None;
        }
        self.containers.remove(&c.id);
        for p in &c.rootfs_paths {
            self.by_rootfs.remove(&p.to_string_lossy(), &c.id);
        }
        if let Some((_, list)) = self.runc_index.as_mut() {
            list.retain(|r| r.id != c.id);
        }
        Some(c)
    }

    /// Which container's filesystem a host path lies in, and the path as the
    /// container sees it. `host_path` is without the `host_root` prefix.
    pub fn container_for_host_path(&self, host_path: &Path) -> Option<(Arc<ContainerInfo>, String)> {
        let s = host_path.to_str()?;
        let (c, inside) = self.container_for_host_str(s)?;
        Some((c, if inside.is_empty() { "/".to_string() } else { s[inside].to_string() }))
    }

    /// [`container_for_host_path`](Self::container_for_host_path) without
    /// allocating: the container, and where in `host_path` the path as the
    /// container sees it lies (an empty range: the container's `/`).
    pub fn container_for_host_str(&self, host_path: &str) -> Option<(Arc<ContainerInfo>, std::ops::Range<usize>)> {
        let path = host_path.trim_end_matches('/');
        let (id, end) = self.by_rootfs.find(path)?;
        self.containers.get(id).map(|c| (Arc::clone(c), end..path.len()))
    }

    pub fn containers(&self) -> impl Iterator<Item = &Arc<ContainerInfo>> {
        self.containers.values()
    }

    /// By name, full id, or an unambiguous id prefix of at least 3 characters
    /// (what people type after reading a 12-character id).
    pub fn find(&self, name_or_id: &str) -> Option<Arc<ContainerInfo>> {
        if name_or_id.is_empty() {
            return None;
        }
        if let Some(c) = self.containers.get(&name_or_id.to_string()) {
            return Some(Arc::clone(c));
        }
        if let Some(c) = self.containers.values().find(|c| c.name == name_or_id) {
            return Some(Arc::clone(c));
        }
        if name_or_id.len() < 3 {
            return None;
        }
        let mut hits = self.containers.values().filter(|c| c.id.starts_with(name_or_id));
        let first = hits.next()?;
        hits.next().is_none().then(|| Arc::clone(first))
    }
}

mod rootfs_index;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod oci_process_tests {
    use super::*;

    #[test]
    fn process_from_spec_is_bounded() {
        let long = "x".repeat(MAX_ARG_LEN * 2);
        let args: Vec<String> = (0..MAX_ARGS + 10).map(|_| long.clone()).collect();
        let p = OciProcess::from_spec(&serde_json::json!({"args": args, "env": ["A=1", "PATH=/bin:/usr/bin"], "cwd": "/srv"})).unwrap();
        assert_eq!(p.args.len(), MAX_ARGS);
        assert!(p.args.iter().all(|a| a.len() == MAX_ARG_LEN));
        assert_eq!(p.path_env.as_deref(), Some("/bin:/usr/bin"));
        assert_eq!(p.cwd, "/srv");
        assert_eq!(OciProcess::from_spec(&serde_json::json!({"args": []})), None);
        assert_eq!(OciProcess::from_spec(&serde_json::json!({"args": "sh"})), None);
        assert_eq!(OciProcess::from_spec(&serde_json::json!(null)), None);
        // The bound is in bytes, cut at a character boundary.
        let p = OciProcess::from_spec(&serde_json::json!({"args": ["é".repeat(MAX_ARG_LEN)], "cwd": "€".repeat(MAX_ARG_LEN)})).unwrap();
        assert_eq!(p.args[0].len(), MAX_ARG_LEN);
        assert_eq!(p.cwd.len(), MAX_ARG_LEN - MAX_ARG_LEN % 3);
    }
}
