//! Readers of each runtime's on-disk state.
//!
//! Each reader answers for one container id: `Ok(None)` when the id is not
//! that runtime's (its main state file is absent), `Err(reason)` when it is
//! but nothing usable could be read, and otherwise a `ContainerInfo` with every
//! field that could be read — secondary files (image lists, label stores) are
//! best effort, because a container dying or being created between two reads
//! is normal and a partial answer is better than none.

use super::bolt::BoltDb;
use super::cgroup::CgroupMatch;
use super::network;
use super::{ContainerInfo, OciProcess, PodInfo, Runtime};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// Larger state files than this are not what a runtime writes; refuse them
/// rather than read an arbitrary amount into memory.
const MAX_JSON: u64 = 64 << 20;
const MAX_BOLT: u64 = 256 << 20;
/// JSON values (scalars, arrays, objects, object members) kept from one
/// document: the bytes are bounded by [`MAX_JSON`], but parsed whole a
/// document of `[0,0,…]` is ~16 times its size in memory (1 GiB for 64
/// MiB). A containers.json entry is ~20 values, so this is ~13,000
/// containers, and at most ~25 MiB parsed.
const MAX_JSON_VALUES: usize = 1 << 18;
/// Shared files (containers.json, images.json…) kept parsed between reads.
const MAX_SHARED: usize = 32;
const MAX_LIST: usize = 4096;

const CONTAINERS_STORAGE: &str = "/var/lib/containers/storage";
/// Where root's netavark network configurations live (a rootless user's
/// are under their graph root, `networks/`).
const NETAVARK_NETWORKS: &str = "/etc/containers/networks";
const CONTAINERS_RUN: &str = "/run/containers/storage";
const DOCKER_ROOT: &str = "/var/lib/docker";
const RUNC_ROOT: &str = "/run/runc";

struct Shared<T> {
    mtime: Option<SystemTime>,
    len: u64,
    value: Arc<T>,
}

pub(crate) struct Reader {
    host_root: PathBuf,
    /// The cgroup2 mount as host paths in runc's state name it.
    cgroup2_mount: PathBuf,
    json: HashMap<PathBuf, Shared<Value>>,
    bytes: HashMap<PathBuf, Shared<Vec<u8>>>,
}

/// `O_NONBLOCK` (the same on every Linux architecture lancet builds for;
/// the engine does not link libc).
const O_NONBLOCK: i32 = 0o4000;

/// Parses a JSON document keeping at most [`MAX_JSON_VALUES`] values;
/// past that it is an error, not a bigger allocation.
pub(super) fn bounded_json(bytes: &[u8]) -> Result<Value, String> {
    use serde::de::DeserializeSeed;
    let left = std::cell::Cell::new(MAX_JSON_VALUES);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = Budget(&left).deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(v)
}

/// Builds a `Value` like serde_json's own visitor, counting every value
/// (and object member) against the budget before keeping it.
#[derive(Clone, Copy)]
struct Budget<'a>(&'a std::cell::Cell<usize>);

impl Budget<'_> {
    fn take<E: serde::de::Error>(self) -> Result<(), E> {
        match self.0.get() {
            0 => Err(E::custom(format_args!("too many values (more than {MAX_JSON_VALUES})"))),
            n => {
                self.0.set(n - 1);
                Ok(())
            }
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Budget<'_> {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Budget<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Value, E> {
        self.take()?;
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Value, E> {
        self.take()?;
        Ok(Value::from(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
        self.take()?;
        Ok(Value::from(v))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        self.take()?;
        Ok(Value::from(v))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        self.take()?;
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Value, E> {
        self.take()?;
        Ok(Value::String(v))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        self.take()?;
        Ok(Value::Null)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        serde::de::DeserializeSeed::deserialize(self, d)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.take()?;
        let mut v = Vec::new();
        while let Some(x) = seq.next_element_seed(self)? {
            v.push(x);
        }
        Ok(Value::Array(v))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.take()?;
        let mut m = serde_json::Map::new();
        while let Some(k) = map.next_key::<String>()? {
            self.take()?;
            let v = map.next_value_seed(self)?;
            m.insert(k, v);
        }
        Ok(Value::Object(m))
    }
}

/// At most `max` bytes of a regular file.
pub(crate) fn read_limited(p: &Path, max: u64) -> Result<Vec<u8>, std::io::Error> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking, and regular files only: a rootless user's storage
    // is theirs, and opening a FIFO they put there blocked forever.
    let f = std::fs::OpenOptions::new().read(true).custom_flags(O_NONBLOCK).open(p)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut buf = Vec::new();
    f.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(std::io::Error::other("file too large"));
    }
    Ok(buf)
}

pub(super) fn s(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or_default().to_string()
}

pub(super) fn str_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|o| o.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string()))).collect())
        .unwrap_or_default()
}

fn pod_from(m: &BTreeMap<String, String>, name: &str, ns: &str, uid: &str, ctr: &str) -> Option<PodInfo> {
    let get = |k: &str| m.get(k).cloned().unwrap_or_default();
    let p = PodInfo { name: get(name), namespace: get(ns), uid: get(uid), container_name: get(ctr) };
    (!p.name.is_empty() || !p.uid.is_empty()).then_some(p)
}

fn nonempty(a: String, b: impl FnOnce() -> String) -> String {
    if a.is_empty() {
        b()
    } else {
        a
    }
}

/// Expands a systemd slice name the way systemd nests it:
/// `a-b.slice` lives in `/a.slice/a-b.slice`.
pub(super) fn expand_slice(slice: &str) -> String {
    let base = slice.strip_suffix(".slice").unwrap_or(slice);
    if base.is_empty() || base == "-" {
        return String::new();
    }
    let mut out = String::new();
    let mut acc = String::new();
    for part in base.split('-') {
        if !acc.is_empty() {
            acc.push('-');
        }
        acc.push_str(part);
        out.push('/');
        out.push_str(&acc);
        out.push_str(".slice");
    }
    out
}

impl Reader {
    pub(crate) fn new(host_root: PathBuf, cgroup2_mount: PathBuf) -> Self {
        Reader { host_root, cgroup2_mount, json: HashMap::new(), bytes: HashMap::new() }
    }

    /// A host path under the host root.
    pub(super) fn host(&self, p: impl AsRef<Path>) -> PathBuf {
        let p = p.as_ref();
        self.host_root.join(p.strip_prefix("/").unwrap_or(p))
    }

    /// Reads and parses a per-container JSON file (not cached: it is read
    /// once per container).
    pub(super) fn json(&self, host_path: &str) -> Result<Option<Value>, String> {
        let p = self.host(host_path);
        match read_limited(&p, MAX_JSON) {
            Ok(b) => bounded_json(&b).map(Some).map_err(|e| format!("{host_path}: {e}")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{host_path}: {e}")),
        }
    }

    fn changed<T>(cached: Option<&Shared<T>>, meta: &std::fs::Metadata) -> bool {
        cached.is_none_or(|c| c.mtime != meta.modified().ok() || c.len != meta.len())
    }

    /// A JSON file shared by all containers of a runtime, re-parsed only when
    /// its mtime or size changed.
    fn shared_json(&mut self, host_path: &str) -> Result<Option<Arc<Value>>, String> {
        let p = self.host(host_path);
        let meta = match std::fs::metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{host_path}: {e}")),
        };
        if !Self::changed(self.json.get(&p), &meta) {
            return Ok(self.json.get(&p).map(|c| Arc::clone(&c.value)));
        }
        let b = read_limited(&p, MAX_JSON).map_err(|e| format!("{host_path}: {e}"))?;
        let v: Value = bounded_json(&b).map_err(|e| format!("{host_path}: {e}"))?;
        let v = Arc::new(v);
        if self.json.len() >= MAX_SHARED {
            self.json.clear();
        }
        self.json.insert(p, Shared { mtime: meta.modified().ok(), len: meta.len(), value: Arc::clone(&v) });
        Ok(Some(v))
    }

    pub(super) fn shared_bytes(&mut self, host_path: &str) -> Option<Arc<Vec<u8>>> {
        let p = self.host(host_path);
        let meta = std::fs::metadata(&p).ok()?;
        if !Self::changed(self.bytes.get(&p), &meta) {
            return self.bytes.get(&p).map(|c| Arc::clone(&c.value));
        }
        let b = Arc::new(read_limited(&p, MAX_BOLT).ok()?);
        if self.bytes.len() >= MAX_SHARED {
            self.bytes.clear();
        }
        self.bytes.insert(p, Shared { mtime: meta.modified().ok(), len: meta.len(), value: Arc::clone(&b) });
        Some(b)
    }

    /// Drops cached shared files, so a full scan sees the disk as it is even
    /// when a file changed within the mtime granularity.
    pub(crate) fn forget_changed_files(&mut self) {
        self.json.clear();
        self.bytes.clear();
    }

    pub(super) fn read_text(&self, host_path: &str) -> Option<String> {
        let b = read_limited(&self.host(host_path), 1 << 20).ok()?;
        Some(String::from_utf8_lossy(&b).trim().to_string())
    }

    pub(super) fn list_dir(&self, host_path: &str) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(self.host(host_path)) else { return Vec::new() };
        let mut v: Vec<String> = rd.flatten().take(MAX_LIST).filter_map(|e| e.file_name().to_str().map(str::to_string)).collect();
        v.sort();
        v
    }

    /// Reads one container, asking the runtime the cgroup path names first
    /// and the others after (a kubepods path does not say which CRI runtime).
    pub(crate) fn read_container(&mut self, id: &str, m: &CgroupMatch) -> Result<ContainerInfo, String> {
        // A cgroup under a user's own systemd manager (user@<uid>.service)
        // is theirs to create and name: only their own storage may say which
        // container it is. Asking root's state too let a user name a cgroup
        // after a rootful container and be taken for it (its workload then
        // learning, and later allowing, what the user's processes did).
        if let Some(uid) = m.rootless_uid {
            return match self.read_storage(id, m)? {
                Some(info) => Ok(info),
                None => Err(format!("no rootless podman state of uid {uid} for container {id}")),
            };
        }
        let mut order = vec![Runtime::Containerd, Runtime::Crio, Runtime::Docker, Runtime::Runc];
        if let Some(rt) = m.runtime {
            let rt = if rt == Runtime::Podman { Runtime::Crio } else { rt };
            order.retain(|r| *r != rt);
            order.insert(0, rt);
        }
        let mut errors = Vec::new();
        for rt in order {
            let r = match rt {
                Runtime::Podman | Runtime::Crio => self.read_storage(id, m),
                Runtime::Docker => self.read_docker(id),
                Runtime::Containerd => self.read_containerd(id, m.namespace.as_deref()),
                Runtime::Runc => self.read_runc_by_id(id),
            };
            match r {
                Ok(Some(info)) => return Ok(info),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            let rt = m.runtime.map(|r| format!("{r} ")).unwrap_or_default();
            Err(format!("no {rt}runtime state found for container {id}"))
        } else {
            Err(errors.join("; "))
        }
    }

    /// Home directory of a uid, from the host's passwd file.
    fn home_of(&self, uid: u32) -> Option<String> {
        let text = self.read_text("/etc/passwd")?;
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 6 && f[2].parse() == Ok(uid)).then(|| f[5].to_string())
        })
    }

    /// containers/storage (podman and CRI-O share it).
    fn read_storage(&mut self, id: &str, m: &CgroupMatch) -> Result<Option<ContainerInfo>, String> {
        let mut roots: Vec<(String, String, String)> = Vec::new(); // (graph root, run root, runc root)
        if let Some(uid) = m.rootless_uid {
            if let Some(home) = self.home_of(uid) {
                roots.push((
                    format!("{}/.local/share/containers/storage", home.trim_end_matches('/')),
                    format!("/run/user/{uid}/containers"),
                    format!("/run/user/{uid}/runc"),
                ));
            }
        }
        if m.rootless_uid.is_none() {
            roots.push((CONTAINERS_STORAGE.into(), CONTAINERS_RUN.into(), RUNC_ROOT.into()));
        }
        let mut err = None;
        for (graph, run, runc) in roots {
            let list = match self.shared_json(&format!("{graph}/overlay-containers/containers.json")) {
                Ok(Some(l)) => l,
                Ok(None) => continue,
                Err(e) => {
                    err = Some(e);
                    continue;
                }
            };
            let Some(entry) = list.as_array().and_then(|a| a.iter().find(|c| c.get("id").and_then(Value::as_str) == Some(id))) else {
                continue;
            };
            return Ok(Some(self.storage_container(id, entry, m, &graph, &run, &runc)));
        }
        match err {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    fn storage_container(&mut self, id: &str, entry: &Value, m: &CgroupMatch, graph: &str, run: &str, runc: &str) -> ContainerInfo {
        let mut c = ContainerInfo { id: id.to_string(), runtime: Runtime::Podman, owner_uid: m.rootless_uid, ..Default::default() };
        // `metadata` is a JSON document inside a JSON string.
        let meta: Value =
            entry.get("metadata").and_then(Value::as_str).and_then(|s| bounded_json(s.as_bytes()).ok()).unwrap_or(Value::Null);
        c.name = entry
            .get("names")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| s(&meta, "name"));
        c.image = s(&meta, "image-name");
        c.image_id = nonempty(s(entry, "image"), || s(&meta, "image-id"));
        let layer = s(entry, "layer");
        if !layer.is_empty() && !layer.contains('/') && layer != ".." {
            c.rootfs_paths.push(PathBuf::from(format!("{graph}/overlay/{layer}/diff")));
        }
        if let Ok(Some(images)) = self.shared_json(&format!("{graph}/overlay-images/images.json")) {
            if let Some(img) = images.as_array().and_then(|a| a.iter().find(|i| !c.image_id.is_empty() && s(i, "id") == c.image_id)) {
                c.image_digest = s(img, "digest");
                if c.image.is_empty() {
                    c.image = img
                        .get("names")
                        .and_then(Value::as_array)
                        .and_then(|a| a.first())
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                }
            }
        }
        // The OCI spec: podman marks its containers, CRI-O writes the
        // Kubernetes identity into annotations.
        let spec =
            [graph, run].iter().find_map(|root| self.json(&format!("{root}/overlay-containers/{id}/userdata/config.json")).ok().flatten());
        let ann = str_map(spec.as_ref().and_then(|s| s.get("annotations")));
        c.process = spec.as_ref().and_then(|s| s.get("process")).and_then(OciProcess::from_spec);
        let is_crio = ann.contains_key("io.kubernetes.cri-o.ContainerName")
            || ann.contains_key("io.kubernetes.pod.name")
            || meta.get("pod-name").is_some();
        let is_podman = ann.get("io.container.manager").map(String::as_str) == Some("libpod");
        c.runtime = if is_podman {
            Runtime::Podman
        } else if is_crio || m.runtime == Some(Runtime::Crio) {
            Runtime::Crio
        } else {
            Runtime::Podman
        };
        if c.runtime == Runtime::Crio {
            if let Some(n) = ann.get("io.kubernetes.container.name").or_else(|| ann.get("io.kubernetes.cri-o.ContainerName")) {
                c.name = n.clone();
            }
            if let Some(i) = ann.get("io.kubernetes.cri-o.ImageName").filter(|s| !s.is_empty()) {
                c.image = i.clone();
            }
            if c.image_id.is_empty() {
                c.image_id = ann.get("io.kubernetes.cri-o.ImageRef").cloned().unwrap_or_default();
            }
            if let Some(l) = ann.get("io.kubernetes.cri-o.Labels") {
                c.labels = bounded_json(l.as_bytes()).map(|v| str_map(Some(&v))).unwrap_or_default();
            }
            c.pod = pod_from(
                &ann,
                "io.kubernetes.pod.name",
                "io.kubernetes.pod.namespace",
                "io.kubernetes.pod.uid",
                "io.kubernetes.container.name",
            )
            .or_else(|| {
                let name = s(&meta, "pod-name");
                (!name.is_empty()).then(|| PodInfo {
                    name,
                    namespace: String::new(),
                    uid: m.pod_uid.clone().unwrap_or_default(),
                    container_name: s(&meta, "metadata-name"),
                })
            });
        } else {
            // podman 4.x keeps labels only in its BoltDB (5.x may use db.sql,
            // SQLite, which is not read here).
            if let Some(db) = self.shared_bytes(&format!("{graph}/libpod/bolt_state.db")) {
                if let Some(bdb) = BoltDb::open(&db) {
                    let state = bdb.get(&[b"ctr", id.as_bytes()], b"state").and_then(|st| bounded_json(st).ok());
                    if let Some(cfg) = bdb.get(&[b"ctr", id.as_bytes()], b"config") {
                        if let Ok(v) = bounded_json(cfg) {
                            c.labels = str_map(v.get("labels"));
                            if c.image.is_empty() {
                                c.image = nonempty(s(&v, "rootfsImageName"), || s(&v, "RawImageName"));
                            }
                            let net_dir = if m.rootless_uid.is_some() { format!("{graph}/networks") } else { NETAVARK_NETWORKS.into() };
                            c.network = self.podman_network(&bdb, id, &v, state.as_ref(), &net_dir);
                        }
                    }
                    if let Some(v) = &state {
                        c.pid = v.get("pid").and_then(Value::as_u64).and_then(|p| u32::try_from(p).ok()).filter(|p| *p > 0);
                    }
                }
            }
        }
        if c.pid.is_none() {
            c.pid = self
                .read_text(&format!("{run}/overlay-containers/{id}/userdata/pidfile"))
                .and_then(|t| t.parse().ok())
                .filter(|p| *p > 0)
                .or_else(|| self.runc_pid(runc, id));
        }
        c
    }

    fn runc_pid(&self, runc_root: &str, id: &str) -> Option<u32> {
        let st = self.json(&format!("{runc_root}/{id}/state.json")).ok()??;
        st.get("init_process_pid").and_then(Value::as_u64).and_then(|p| u32::try_from(p).ok()).filter(|p| *p > 0)
    }

    fn read_docker(&mut self, id: &str) -> Result<Option<ContainerInfo>, String> {
        let Some(v) = self.json(&format!("{DOCKER_ROOT}/containers/{id}/config.v2.json"))? else { return Ok(None) };
        let cfg = v.get("Config").cloned().unwrap_or(Value::Null);
        let mut c = ContainerInfo {
            // The id the cgroup and the file's directory name, not the
            // file's own `ID`: a file that disagrees must not make this
            // cgroup another container (and its profile apply here).
            id: id.to_string(),
            runtime: Runtime::Docker,
            name: s(&v, "Name").trim_start_matches('/').to_string(),
            image: s(&cfg, "Image"),
            image_id: s(&v, "Image"),
            labels: str_map(cfg.get("Labels")),
            ..Default::default()
        };
        c.pid = v.get("State").and_then(|st| st.get("Pid")).and_then(Value::as_u64).and_then(|p| u32::try_from(p).ok()).filter(|p| *p > 0);
        let hostconfig = self.json(&format!("{DOCKER_ROOT}/containers/{id}/hostconfig.json")).ok().flatten();
        c.network = network::docker(&v, hostconfig.as_ref());
        // Docker records the resolved command as Path + Args.
        let mut args = vec![v.get("Path").cloned().unwrap_or(Value::Null)];
        args.extend(v.get("Args").and_then(Value::as_array).cloned().unwrap_or_default());
        let env = cfg.get("Env").cloned().unwrap_or(Value::Null);
        c.process =
            OciProcess::from_spec(&serde_json::json!({"args": args, "env": env, "cwd": nonempty(s(&cfg, "WorkingDir"), || "/".into())}));
        c.pod = pod_from(
            &c.labels,
            "io.kubernetes.pod.name",
            "io.kubernetes.pod.namespace",
            "io.kubernetes.pod.uid",
            "io.kubernetes.container.name",
        );
        let driver = nonempty(s(&v, "Driver"), || "overlay2".into());
        if driver.contains('/') || driver == ".." {
            return Ok(Some(c));
        }
        // The repo digest is the `name@sha256:…` key pointing at our image id.
        if let Ok(Some(repos)) = self.shared_json(&format!("{DOCKER_ROOT}/image/{driver}/repositories.json")) {
            let tags = repos.get("Repositories").and_then(Value::as_object);
            let digest =
                tags.into_iter().flat_map(|r| r.values()).filter_map(Value::as_object).flat_map(|m| m.iter()).find_map(|(k, v)| {
                    (v.as_str() == Some(c.image_id.as_str())).then(|| k.split_once('@').map(|(_, d)| d.to_string())).flatten()
                });
            c.image_digest = digest.unwrap_or_default();
        }
        if let Some(mount) = self.read_text(&format!("{DOCKER_ROOT}/image/{driver}/layerdb/mounts/{id}/mount-id")) {
            if !mount.is_empty() && !mount.contains('/') && mount != ".." {
                c.rootfs_paths.push(PathBuf::from(format!("{DOCKER_ROOT}/{driver}/{mount}/diff")));
            }
        }
        Ok(Some(c))
    }

    fn read_runc_by_id(&mut self, id: &str) -> Result<Option<ContainerInfo>, String> {
        if id.contains('/') || id == ".." || id.is_empty() {
            return Ok(None);
        }
        Ok(self.json(&format!("{RUNC_ROOT}/{id}/state.json"))?.map(|st| self.runc_container(id, &st)))
    }

    /// Every plain runc container, for matching cgroup paths no naming scheme
    /// explains.
    pub(crate) fn runc_states(&mut self) -> Vec<ContainerInfo> {
        let mut out = Vec::new();
        for id in self.list_dir(RUNC_ROOT) {
            match self.json(&format!("{RUNC_ROOT}/{id}/state.json")) {
                Ok(Some(st)) => out.push(self.runc_container(&id, &st)),
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "unreadable runc state"),
            }
        }
        out
    }

    fn runc_container(&self, id: &str, st: &Value) -> ContainerInfo {
        let cfg = st.get("config").cloned().unwrap_or(Value::Null);
        // The state's directory names the container, as for docker: not the
        // file's own `id`.
        let mut c = ContainerInfo { id: id.to_string(), runtime: Runtime::Runc, ..Default::default() };
        c.name = c.id.clone();
        for l in cfg.get("labels").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            c.labels.insert(k.to_string(), v.to_string());
        }
        let rootfs = s(&cfg, "rootfs");
        if !rootfs.is_empty() {
            c.rootfs_paths.push(PathBuf::from(rootfs));
        }
        c.pid = st.get("init_process_pid").and_then(Value::as_u64).and_then(|p| u32::try_from(p).ok()).filter(|p| *p > 0);
        c.cgroup_path = self.runc_cgroup(st, &cfg);
        c
    }

    /// The container's cgroup v2 path: from the unified entry of
    /// `cgroup_paths` (a host path of the mount), else from the configured
    /// `cgroupsPath` (which systemd-driven runc writes as `slice:prefix:name`).
    fn runc_cgroup(&self, st: &Value, cfg: &Value) -> String {
        if let Some(unified) = st.get("cgroup_paths").and_then(|p| p.get("")).and_then(Value::as_str) {
            let p = Path::new(unified);
            let mounts = [self.cgroup2_mount.as_path(), Path::new("/sys/fs/cgroup/unified"), Path::new("/sys/fs/cgroup")];
            for mnt in mounts {
                if let Ok(rel) = p.strip_prefix(mnt) {
                    return format!("/{}", rel.to_string_lossy());
                }
            }
        }
        let cg = cfg.get("cgroups").cloned().unwrap_or(Value::Null);
        let path = s(&cg, "path");
        if path.starts_with('/') {
            return path;
        }
        let parts: Vec<&str> = path.split(':').collect();
        if let [slice, prefix, name] = parts[..] {
            let slice = if slice.is_empty() { "system.slice" } else { slice };
            let unit =
                if name.ends_with(".scope") || name.ends_with(".slice") { name.to_string() } else { format!("{prefix}-{name}.scope") };
            return format!("{}/{unit}", expand_slice(slice));
        }
        let parent = s(&cg, "parent");
        let name = s(&cg, "name");
        if !name.is_empty() {
            return format!("/{}/{}", parent.trim_matches('/'), name).replace("//", "/");
        }
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_files_must_be_regular_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"{}").unwrap();
        assert_eq!(read_limited(&d.path().join("f"), 10).unwrap(), b"{}");
        assert!(read_limited(d.path(), 10).is_err(), "a directory");
        let fifo = d.path().join("fifo");
        if std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success()) {
            // Opening it blocking would wait for a writer forever.
            assert!(read_limited(&fifo, 10).unwrap_err().to_string().contains("not a regular file"));
        }
    }

    #[test]
    fn json_documents_are_read_within_a_value_budget() {
        let v = bounded_json(br#"{"a": [1, -2, 3.5, "x", null, true, {"b": {}}], "c": ""}"#).unwrap();
        assert_eq!(v, serde_json::json!({"a": [1, -2, 3.5, "x", null, true, {"b": {}}], "c": ""}));
        assert!(bounded_json(b"[1] 2").is_err(), "trailing data");
        assert!(bounded_json(b"").is_err());
        let just = format!("[{}0]", "0,".repeat(MAX_JSON_VALUES - 2));
        assert_eq!(bounded_json(just.as_bytes()).unwrap().as_array().map(Vec::len), Some(MAX_JSON_VALUES - 1));
        let over = format!("[{}0]", "0,".repeat(MAX_JSON_VALUES));
        assert!(bounded_json(over.as_bytes()).unwrap_err().contains("too many values"));
        let keys = format!("{{{}\"z\":0}}", (0..MAX_JSON_VALUES / 2).map(|i| format!("\"{i}\":0,")).collect::<String>());
        assert!(bounded_json(keys.as_bytes()).unwrap_err().contains("too many values"), "members count too");
        assert!(bounded_json(format!("{}{}", "[".repeat(200), "]".repeat(200)).as_bytes()).is_err(), "serde_json's depth limit holds");
    }

    #[test]
    fn slices_expand_like_systemd() {
        assert_eq!(expand_slice("system.slice"), "/system.slice");
        assert_eq!(expand_slice("machine-foo.slice"), "/machine.slice/machine-foo.slice");
        assert_eq!(expand_slice("-.slice"), "");
        assert_eq!(expand_slice(""), "");
    }
}
