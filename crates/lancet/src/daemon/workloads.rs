//! Workloads (every container of one image, keyed by image digest) and the
//! live containers that belong to them: profiles loaded from the store or
//! started afresh, each container's cgroup and a live process, which
//! address belongs to which workload (to name container peers), and the
//! activity counters flushed to the store each second.

use super::numbers::{ContainerNo, Numbers};
use crate::agent::trusted_pid;
use anyhow::Result;
use lancet_engine::attribution::{ContainerInfo, LastContainer};
use lancet_engine::event::{Event, EventKind, NetOp};
use lancet_engine::profile::{image_repository, Baseline, Lifecycle, Mode, PeerRef, Profile};
use lancet_engine::FastMap;
use lancet_store::Store;
use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

/// One workload's profile and its bookkeeping.
pub(super) struct Workload {
    /// What this node learned (and the workload's mode): what it stores,
    /// and in a fleet what it shares.
    pub(super) profile: Profile,
    /// In a fleet, the other nodes' observations of the same image.
    remote: Vec<Arc<Profile>>,
    /// `profile` merged with `remote`, made when first needed after a
    /// change of either: what is enforced ([`Workload::enforced`]).
    view: Option<Profile>,
    /// Changed since this node's observations were last shared.
    pub(super) fleet_dirty: bool,
    /// Changed since it was last written to the store.
    pub(super) dirty: bool,
    pub(super) last_deviation: Option<u64>,
    /// When one of its containers was last seen doing something.
    last_used: u64,
    /// A snapshot for the enforcement backends, taken when first needed
    /// after a change (protect-mode profiles change rarely: import, promote).
    shared: Option<Arc<Profile>>,
    /// Unique to this profile's current content (a new number at every
    /// change, never reused): what the flow map's cached verdicts are
    /// checked against.
    pub(super) generation: u64,
    /// Its containers' events by kind ([`ACTIVITY_KINDS`]) since the last
    /// flush to the store.
    activity: [u64; 3],
}

/// The next [`Workload::generation`].
fn next_generation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Workload {
    pub(super) fn new(profile: Profile) -> Self {
        Workload {
            profile,
            remote: Vec::new(),
            view: None,
            fleet_dirty: true,
            dirty: true,
            last_deviation: None,
            last_used: 0,
            shared: None,
            generation: next_generation(),
            activity: [0; 3],
        }
    }

    pub(super) fn changed(&mut self) {
        self.dirty = true;
        self.fleet_dirty = true;
        self.view = None;
        self.shared = None;
        self.generation = next_generation();
    }

    /// The profile this node checks and enforces: its own, merged with the
    /// other nodes' observations when it is in a fleet. The merge is the
    /// engine's (union of entries), so another node's learning widens what
    /// is allowed here exactly as a replica's would on this node.
    pub(super) fn enforced(&mut self) -> &Profile {
        if self.remote.is_empty() {
            return &self.profile;
        }
        let (own, remote) = (&self.profile, &self.remote);
        self.view.get_or_insert_with(|| {
            let mut v = own.clone();
            for r in remote {
                v.merge(r);
            }
            v
        })
    }

    /// The other nodes' observations changed. When what is enforced stays
    /// the same (a node shared its profile again with only counts and
    /// times new), the containers are not put under a new profile: that
    /// would re-apply every backend for nothing.
    pub(super) fn set_remote(&mut self, remote: Vec<Arc<Profile>>) {
        let before = if self.remote.is_empty() { Some(self.profile.clone()) } else { self.view.take() };
        self.remote = remote;
        self.view = None;
        if before.is_some_and(|b| self.enforced().same_rules(&b)) {
            return;
        }
        self.shared = None;
        self.generation = next_generation();
    }

    /// A change that no enforcement backend reads (an anchor of the
    /// writable set learned in monitor or protect mode): stored, but the
    /// containers are not put under a new profile for it. Re-applying every
    /// backend at each new data directory would cost a re-guard per write
    /// burst and reopen approvals for nothing.
    pub(super) fn changed_for_the_record(&mut self) {
        self.dirty = true;
        self.fleet_dirty = true;
        self.view = None;
    }

    /// Counts an event of one of its containers.
    pub(super) fn count(&mut self, kind: &EventKind) {
        let i = match kind {
            EventKind::Exec(_) => 0,
            EventKind::Net(_) => 1,
            EventKind::File(_) => 2,
            _ => return,
        };
        self.activity[i] += 1;
    }

    pub(super) fn shared(&mut self) -> Arc<Profile> {
        if let Some(s) = &self.shared {
            return Arc::clone(s);
        }
        let p = Arc::new(self.enforced().clone());
        self.shared = Some(Arc::clone(&p));
        p
    }
}

/// What the daemon knows of a live container beyond its attribution.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Live {
    pub(super) cgroup_id: u64,
    /// The last process seen in it.
    pub(super) pid: u32,
}

/// The kinds of activity counted per workload ([`Workload::count`]).
const ACTIVITY_KINDS: [&str; 3] = ["exec", "net", "file"];
const MAX_IP_OWNERS: usize = 65_536;
const MAX_WORKLOADS: usize = 4096;
const MAX_CONTAINERS: usize = MAX_WORKLOADS * 4;

/// Every workload and live container the daemon follows.
pub(super) struct Workloads {
    /// By key. Found by position where a key was looked up once already
    /// (the position stays until a workload is removed).
    pub(super) map: indexmap::IndexMap<String, Workload, lancet_engine::FastHasher>,
    pub(super) containers: FastMap<String, Arc<ContainerInfo>>,
    /// Every container's number, the key of the per-container tables.
    pub(super) numbers: Numbers,
    /// The containers seen running, by number.
    live: FastMap<ContainerNo, Live>,
    /// The container [`get_or_load`](Self::get_or_load) was last asked
    /// for, with its workload's position: a burst of one container's
    /// events finds its workload without hashing the key. Forgotten when a
    /// workload is removed (positions move).
    hot: LastContainer<usize>,
    /// Container addresses seen as the local side of their own sockets, to
    /// name container peers by workload.
    ip_owners: FastMap<IpAddr, Arc<str>>,
    /// Image baselines from `lancet scan`, by config and manifest digest.
    baselines: HashMap<String, Baseline>,
    /// The mode of a workload seen for the first time.
    default_mode: Mode,
    /// Containers whose image is a new version of a profiled one, with the
    /// previous version's key: reported once each.
    pub(super) updates: Vec<(Arc<ContainerInfo>, String)>,
    /// Workloads not tracked because every slot had a live container.
    pub(super) over_bound: u64,
    /// The host's network namespace: the addresses of a container that
    /// shares it are the host's, never its own.
    host_netns: Option<u32>,
    /// In a fleet: the modes the fleet decided, and the other nodes'
    /// observations ([`super::fleet`]).
    pub(super) fleet: Option<super::fleet::FleetBook>,
}

/// The profile key of a container: its image digest where the runtime knows
/// it, else its image id, else its image name. A rootless container's key
/// carries its owner: its metadata is the user's to write, so it can claim
/// any digest, and must never join (teach, or be guarded as) a workload of
/// another user or of root.
/// Borrowed where it can be: this runs for every event.
pub fn workload_key(c: &ContainerInfo) -> Cow<'_, str> {
    let key = match [&c.image_digest, &c.image_id, &c.image].into_iter().find(|s| !s.is_empty()) {
        Some(k) => Cow::Borrowed(k.as_str()),
        None => Cow::Owned(format!("container:{}", c.id)),
    };
    match c.owner_uid {
        Some(uid) => Cow::Owned(format!("{key}@uid{uid}")),
        None => key,
    }
}

impl Workloads {
    pub(super) fn new(default_mode: Mode, baselines: HashMap<String, Baseline>) -> Self {
        Workloads {
            map: Default::default(),
            containers: FastMap::default(),
            numbers: Numbers::new(MAX_CONTAINERS),
            live: FastMap::default(),
            hot: LastContainer::default(),
            ip_owners: FastMap::default(),
            baselines,
            default_mode,
            updates: Vec::new(),
            over_bound: 0,
            host_netns: crate::protect::netns_inode(1),
            fleet: None,
        }
    }

    /// The profile of the most recent other version of `image`'s repository
    /// (followed in memory, else stored), if there is one with anything
    /// learned.
    fn previous_version(&self, store: &Store, key: &str, image: &str) -> Option<Profile> {
        let repo = image_repository(image);
        if repo.is_empty() {
            return None;
        }
        let live =
            self.map.iter().filter(|(k, w)| k.as_str() != key && image_repository(w.profile.image()) == repo && !w.profile.is_empty());
        if let Some((_, w)) = live.max_by_key(|(_, w)| w.profile.mode_since()) {
            return Some(w.profile.clone());
        }
        let stored = store.list_profiles().ok()?;
        let best = stored.iter().filter(|p| p.digest != key && image_repository(&p.image) == repo).max_by_key(|p| p.updated_ns)?;
        let doc = store.profile(&best.digest).ok()??;
        Profile::from_yaml(&doc.document, &best.digest).ok().filter(|p| !p.is_empty())
    }

    /// The workload's state, loaded from the store or started afresh. At
    /// `MAX_WORKLOADS` an idle workload (no live container) makes room; None
    /// when every tracked workload has a live container (counted: memory
    /// stays bounded, and the caller alerts).
    pub(super) fn get_or_load(&mut self, store: &mut Store, key: &str, c: &Arc<ContainerInfo>, now: u64) -> Option<&mut Workload> {
        let i = match self.hot.get(c) {
            Some(i) => i,
            None => {
                let i = match self.map.get_index_of(key) {
                    Some(i) => i,
                    None => self.load(store, key, c, now)?,
                };
                self.hot.set(c, i);
                i
            }
        };
        let w = &mut self.map[i];
        w.last_used = now;
        Some(w)
    }

    /// [`get_or_load`](Self::get_or_load) of a workload not in memory: its
    /// position once loaded.
    fn load(&mut self, store: &mut Store, key: &str, c: &ContainerInfo, now: u64) -> Option<usize> {
        if self.map.len() >= MAX_WORKLOADS && !self.evict_one(store, now) {
            self.over_bound += 1;
            return None;
        }
        let mut profile = match store.profile(key) {
            Ok(Some(stored)) => Profile::from_yaml(&stored.document, key).unwrap_or_else(|e| {
                tracing::warn!(workload = key, "stored profile unreadable, starting afresh: {e}");
                Profile::new(&c.image, key, now)
            }),
            _ => match self.previous_version(store, key, &c.image) {
                // A new version of an image already profiled starts from
                // what the old one learned, in monitor mode.
                Some(prev) => {
                    tracing::info!(workload = key, previous = prev.digest(), image = %c.image, "image updated; the new version starts from the previous profile in monitor mode");
                    self.updates.push((Arc::new(c.clone()), prev.digest().to_string()));
                    prev.successor(&c.image, key, now)
                }
                None => {
                    let mut p = Profile::new(&c.image, key, now);
                    p.set_mode(self.default_mode, now);
                    p
                }
            },
        };
        if profile.baseline().is_none() {
            let id = format!("sha256:{}", c.image_id.trim_start_matches("sha256:"));
            if let Some(b) = self.baselines.get(&id).or_else(|| self.baselines.get(&c.image_digest)) {
                profile.set_baseline(Some(b.clone()));
            }
        }
        let mut w = Workload::new(profile);
        if let Some(f) = &self.fleet {
            f.join(key, &mut w, now);
        }
        Some(self.map.insert_full(key.to_string(), w).0)
    }

    /// Forgets the least recently used workload that has no live container,
    /// after writing its profile to the store (where it stays). False when
    /// there is none.
    fn evict_one(&mut self, store: &mut Store, now: u64) -> bool {
        let live: std::collections::HashSet<String> =
            self.containers.values().filter(|c| self.is_live(&c.id)).map(|c| workload_key(c).into_owned()).collect();
        let Some(key) =
            self.map.iter().filter(|(k, _)| !live.contains(k.as_str())).min_by_key(|(_, w)| w.last_used).map(|(k, _)| k.clone())
        else {
            return false;
        };
        if let Some(w) = self.map.get(&key) {
            if w.dirty {
                if let Err(e) =
                    store.put_profile(&key, w.profile.image(), &w.profile.mode().to_string(), &w.profile.to_yaml().unwrap_or_default(), now)
                {
                    tracing::warn!(workload = %key, "profile not saved before eviction; kept: {e}");
                    return false;
                }
            }
        }
        self.map.swap_remove(&key);
        self.hot.clear();
        self.ip_owners.retain(|_, w| **w != *key);
        tracing::debug!(workload = %key, "idle workload evicted from memory (its profile stays in the store)");
        true
    }

    /// A container ended: it is forgotten (its workload stays until it is
    /// evicted as idle). Its number, for the other per-container tables.
    pub(super) fn container_gone(&mut self, id: &str) -> Option<ContainerNo> {
        self.containers.remove(id);
        let n = self.numbers.forget(id)?;
        self.live.remove(&n);
        Some(n)
    }

    /// What is known of container `id` running, if it was seen running.
    pub(super) fn live(&self, id: &str) -> Option<Live> {
        self.live.get(&self.numbers.get(id)?).copied()
    }

    pub(super) fn is_live(&self, id: &str) -> bool {
        self.live(id).is_some()
    }

    /// How many containers were seen running.
    pub(super) fn live_count(&self) -> usize {
        self.live.len()
    }

    /// Container `c` runs as `live` (false when the table is full).
    pub(super) fn set_live(&mut self, c: &Arc<ContainerInfo>, live: Live) -> bool {
        let Some(n) = self.numbers.number(c) else { return false };
        self.live.insert(n, live);
        true
    }

    pub(super) fn peer(&self, ip: IpAddr) -> PeerRef {
        match self.ip_owners.get(&ip) {
            Some(w) => PeerRef::Workload(w.clone()),
            None => PeerRef::Ip(ip),
        }
    }

    /// The addresses the containers of workload `w` were seen with.
    pub(super) fn addresses_of(&self, w: &str) -> Vec<IpAddr> {
        self.ip_owners.iter().filter(|(_, o)| &***o == w).map(|(ip, _)| *ip).collect()
    }

    /// Books one event of container `c` (number `n`): the container, its
    /// cgroup and a live process, its own address. Returns the peer of a
    /// connect or accept, named by workload where known.
    pub(super) fn note(&mut self, ev: &Event, c: &Arc<ContainerInfo>, n: Option<ContainerNo>, key: &str) -> Option<PeerRef> {
        // A live container is known: one look-up per event, not two.
        let names_its_process = ev.cgroup_id != 0 && ev.process.pid != 0;
        let live = match n {
            Some(n) if names_its_process => self.live.get_mut(&n),
            _ => None,
        };
        if let Some(l) = live {
            l.cgroup_id = ev.cgroup_id;
            l.pid = ev.process.pid;
        } else {
            if !self.containers.contains_key(&c.id) && self.containers.len() < MAX_CONTAINERS {
                self.containers.insert(c.id.clone(), Arc::clone(c));
            }
            if let Some(n) = n.filter(|_| names_its_process) {
                self.live.insert(n, Live { cgroup_id: ev.cgroup_id, pid: ev.process.pid });
            }
        }
        let EventKind::Net(n) = &ev.kind else { return None };
        let known = self.ip_owners.get(&n.saddr).is_some_and(|w| &**w == key) || Some(n.netns) == self.host_netns;
        if !known && !n.saddr.is_unspecified() && !n.saddr.is_loopback() && self.ip_owners.len() < MAX_IP_OWNERS {
            self.ip_owners.insert(n.saddr, key.into());
        }
        match n.op {
            NetOp::Connect | NetOp::Accept => Some(self.peer(n.daddr)),
            _ => None,
        }
    }

    /// The one running container `what` names: its full id; else its name,
    /// root's container first (a rootless user's container may take any
    /// name, root's among them); else a unique id prefix (at least 3
    /// characters). A name or prefix that fits more than one is an error
    /// listing them (409), never the first one found; nothing is a 404.
    pub(super) fn resolve(&self, what: &str) -> Result<&Arc<ContainerInfo>, (u16, String)> {
        if let Some(c) = self.containers.get(what) {
            return Ok(c);
        }
        let mut named: Vec<&Arc<ContainerInfo>> = self.containers.values().filter(|c| c.name == what).collect();
        if !named.is_empty() {
            let roots: Vec<&Arc<ContainerInfo>> = named.iter().copied().filter(|c| c.owner_uid.is_none()).collect();
            match (roots.len(), named.len()) {
                (1, _) => return Ok(roots[0]),
                (0, 1) => return Ok(named[0]),
                _ => return Err(ambiguous(what, "name", &mut named)),
            }
        }
        if what.len() >= 3 {
            let mut by_id: Vec<&Arc<ContainerInfo>> = self.containers.values().filter(|c| c.id.starts_with(what)).collect();
            match by_id.len() {
                0 => {}
                1 => return Ok(by_id[0]),
                _ => return Err(ambiguous(what, "id prefix", &mut by_id)),
            }
        }
        Err((404, format!("no running container matches {what:?}")))
    }

    /// The workload named by its key, a container's name or id (as
    /// [`resolve`](Self::resolve) finds it), or an image reference.
    pub(super) fn find(&self, what: &str) -> Result<String, (u16, String)> {
        if self.map.contains_key(what) {
            return Ok(what.to_string());
        }
        match self.resolve(what) {
            Ok(c) => return Ok(workload_key(c).into_owned()),
            Err((409, why)) => return Err((409, why)),
            Err(_) => {}
        }
        self.map
            .iter()
            .find(|(_, w)| w.profile.image() == what)
            .map(|(k, _)| k.clone())
            .ok_or_else(|| (404, format!("no workload, container or image matches {what:?}")))
    }

    /// A container that ran before the agent: its cgroup, a live process,
    /// its addresses and its workload are known at once. A workload that is
    /// learning (or has learned nothing yet) learns what the container has
    /// already done: its first process as the runtime ran it, its running
    /// processes, its sockets, the directories it wrote.
    pub(super) fn adopt(&mut self, store: &mut Store, cgroup2: &Path, host_root: &Path, c: Arc<ContainerInfo>, now: u64) {
        let dir = cgroup2.join(c.cgroup_path.trim_start_matches('/'));
        // The runtime's record of the init pid, else any process in the
        // container's cgroup.
        let pid = trusted_pid(&c).or_else(|| std::fs::read_to_string(dir.join("cgroup.procs")).ok()?.lines().next()?.trim().parse().ok());
        if let (Some(cgid), Some(pid)) = (lancet_sensor::enforce::cgroup_id(&dir).ok(), pid) {
            self.set_live(&c, Live { cgroup_id: cgid, pid });
        }
        let key = workload_key(&c).into_owned();
        if let Some(pid) = pid {
            for ip in crate::protect::netns_addresses(pid) {
                if self.ip_owners.len() < MAX_IP_OWNERS {
                    self.ip_owners.insert(ip, key.as_str().into());
                }
            }
        }
        self.containers.insert(c.id.clone(), Arc::clone(&c));
        let Some(w) = self.get_or_load(store, &key, &c, now) else { return };
        if w.profile.mode() != Mode::Learn && !w.profile.is_empty() {
            return;
        }
        let Some(cgid) = self.live(&c.id).map(|l| l.cgroup_id) else { return };
        let events = super::seed::live_events(&c, host_root, &dir, cgid, now);
        let mut learned = 0;
        let n = self.numbers.number(&c);
        for ev in &events {
            let peer = self.note(ev, &c, n, &key);
            if let Some(w) = self.map.get_mut(&key) {
                w.count(&ev.kind);
                if w.profile.observe(ev, peer.as_ref(), now) {
                    learned += 1;
                    w.changed();
                }
            }
        }
        tracing::info!(container = %c.name, workload = %key, events = events.len(), learned, "learned what the running container already does");
    }

    /// Once a second: promote quiet profiles, write what changed, flush
    /// the activity counters.
    pub(super) fn persist(&mut self, store: &mut Store, lifecycle: &Lifecycle, now: u64) -> Result<()> {
        for (key, w) in self.map.iter_mut() {
            if let Some(next) = lifecycle.next_mode(&w.profile, now, w.last_deviation) {
                match self.fleet.as_mut() {
                    // The fleet decides a shared workload's mode: proposed,
                    // applied when the fleet says so.
                    Some(f) if f.shares(key) => f.propose_later(key, next),
                    _ => {
                        tracing::info!(workload = %key, from = %w.profile.mode(), to = %next, "profile promoted");
                        w.profile.set_mode(next, now);
                        w.changed();
                    }
                }
            }
            if w.dirty {
                store.put_profile(key, w.profile.image(), &w.profile.mode().to_string(), &w.profile.to_yaml()?, now)?;
                w.dirty = false;
            }
        }
        for (key, w) in self.map.iter_mut() {
            for (kind, n) in ACTIVITY_KINDS.iter().zip(std::mem::take(&mut w.activity)).filter(|(_, n)| *n > 0) {
                store.bump_activity(key, kind, n, now)?;
            }
        }
        Ok(())
    }
}

/// Baselines written by `lancet scan --baselines-dir`: one profile document
/// per image, keyed by its baseline's digest. Unreadable files are skipped
/// with a warning.
pub(super) fn load_baselines(dir: &Path) -> HashMap<String, Baseline> {
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

/// The error for a name or prefix that fits several containers: each
/// named with its id and owner.
fn ambiguous(what: &str, by: &str, cs: &mut [&Arc<ContainerInfo>]) -> (u16, String) {
    cs.sort_by(|a, b| a.id.cmp(&b.id));
    let list: Vec<String> = cs
        .iter()
        .map(|c| {
            let owner = c.owner_uid.map_or("root".to_string(), |u| format!("uid {u}"));
            format!("{} ({}, {owner})", c.short_id(), c.name)
        })
        .collect();
    (409, format!("{by} {what:?} matches {} containers: {}; name one by its id", cs.len(), list.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lancet_store::StoreOptions;

    #[test]
    fn a_name_or_prefix_means_one_container_or_an_error() {
        let mut w = Workloads::new(Mode::Learn, HashMap::new());
        let mut add = |id: &str, name: &str, owner: Option<u32>| {
            let c = ContainerInfo { id: id.into(), name: name.into(), owner_uid: owner, ..Default::default() };
            w.containers.insert(id.into(), Arc::new(c));
        };
        add(&"a".repeat(64), "web", None);
        add(&format!("ab{}", "0".repeat(62)), "web", Some(1000));
        add(&format!("c{}", "1".repeat(63)), "db", Some(1000));
        add(&format!("c{}", "2".repeat(63)), "db", Some(1001));
        // Root's "web" wins over a rootless user's container of that name.
        assert_eq!(w.resolve("web").unwrap().owner_uid, None);
        // Two rootless "db": an error naming both, never the first found.
        let (code, why) = w.resolve("db").unwrap_err();
        assert_eq!(code, 409);
        assert!(why.contains("c11111111111") && why.contains("c22222222222") && why.contains("uid 1001"), "{why}");
        // An id prefix must be unique; a full id always is.
        assert_eq!(w.resolve("abc").unwrap_err().0, 404);
        assert_eq!(w.resolve("aaa").unwrap().owner_uid, None);
        assert_eq!(w.resolve("ab0").unwrap().owner_uid, Some(1000));
        assert_eq!(w.resolve("c1").unwrap_err().0, 404, "a prefix shorter than 3");
        assert_eq!(w.resolve("c11").unwrap().owner_uid, Some(1000));
        let (code, why) = w.resolve("a").map(|_| ()).unwrap_err();
        assert_eq!(code, 404, "{why}");
        assert_eq!(w.resolve(&"a".repeat(64)).unwrap().name, "web");
        assert_eq!(w.find("db").unwrap_err().0, 409);
    }

    fn container(id: &str, digest: &str) -> ContainerInfo {
        ContainerInfo { id: id.into(), name: id.into(), image: "img".into(), image_digest: digest.into(), ..Default::default() }
    }

    #[test]
    fn idle_workloads_make_room_and_live_ones_never_do() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("lancet.db"), StoreOptions::default()).unwrap();
        let mut w = Workloads::new(Mode::Learn, HashMap::new());
        let mut last = None;
        for i in 0..MAX_WORKLOADS {
            let c = Arc::new(container(&format!("c{i}"), &format!("sha256:{i}")));
            assert!(w.get_or_load(&mut store, &format!("sha256:{i}"), &c, i as u64).is_some());
            last = Some(c);
        }
        // Every workload idle (no live container): the least recently used
        // goes, after its profile was written to the store.
        let c = container("new", "sha256:new");
        assert!(w.get_or_load(&mut store, "sha256:new", &Arc::new(c), 1_000_000).is_some());
        assert!(!w.map.contains_key("sha256:0"));
        // The removal moved the last workload to the removed one's place:
        // the container asked for just before still finds its own.
        let last = last.unwrap();
        let key = format!("sha256:{}", MAX_WORKLOADS - 1);
        assert_eq!(w.get_or_load(&mut store, &key, &last, 1_000_001).unwrap().profile.digest(), key);
        assert_eq!(w.get_or_load(&mut store, &key, &last, 1_000_002).unwrap().profile.digest(), key);
        assert!(store.profile("sha256:0").unwrap().is_some(), "the evicted profile stays in the store");
        assert_eq!(w.map.len(), MAX_WORKLOADS);

        // Every workload live: nothing is evicted, the new one is counted.
        let keys: Vec<String> = w.map.keys().cloned().collect();
        for (i, k) in keys.iter().enumerate() {
            let id = format!("live{i}");
            let c = Arc::new(container(&id, k));
            w.containers.insert(id, Arc::clone(&c));
            assert!(w.set_live(&c, Live { cgroup_id: i as u64 + 1, pid: 1 }));
        }
        let c = container("over", "sha256:over");
        assert!(w.get_or_load(&mut store, "sha256:over", &Arc::new(c), 2_000_000).is_none());
        assert_eq!(w.over_bound, 1);
        assert_eq!(w.map.len(), MAX_WORKLOADS);
    }
}
