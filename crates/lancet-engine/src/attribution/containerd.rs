//! containerd's state, for one container: its task bundle (the OCI spec
//! containerd handed runc, under `/run/containerd`) and its records in
//! containerd's metadata store (`meta.db`, BoltDB, under
//! `/var/lib/containerd`): the image it was made from, its labels, its
//! snapshot, and through the overlayfs snapshotter's own store
//! (`metadata.db`) the snapshot's directory, the upper layer where the
//! container's writes land.
//!
//! Kubernetes (CRI) writes the container's identity into the spec's
//! annotations; `ctr run` writes none, and only `meta.db` says which image a
//! `ctr` container runs. Everything here is written by containerd as root
//! in directories only root may write, and still read as untrusted: bounded
//! files, checked names, no panics.

use super::bolt::BoltDb;
use super::runtimes::{expand_slice, s, str_map, Reader};
use super::{ContainerInfo, OciProcess, PodInfo, Runtime};
use serde_json::Value;
use std::path::PathBuf;

/// Where containerd 1.x keeps its tasks' bundles (shim v2, then v1).
pub(super) const CONTAINERD_TASKS: [&str; 2] =
    ["/run/containerd/io.containerd.runtime.v2.task", "/run/containerd/io.containerd.runtime.v1.linux"];
/// containerd's metadata store (its default root, `/var/lib/containerd`).
const META_DB: &str = "/var/lib/containerd/io.containerd.metadata.v1.bolt/meta.db";
/// The overlayfs snapshotter: its store of snapshot ids, and their
/// directories (`snapshots/<id>/fs`, the upper layer of an active one).
const OVERLAYFS: &str = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs";
/// A manifest of an image's target, read for its config digest (the image
/// id): a manifest is a few KiB.
const MAX_MANIFEST: u64 = 1 << 20;

/// A name containerd would accept for a namespace, container id or snapshot
/// key component that is joined into a path here: no `/`, not `.`/`..`.
fn path_safe(name: &str) -> bool {
    !name.is_empty() && name.len() <= 256 && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

/// A UTF-8 value from a BoltDB record, bounded.
fn text(b: &[u8]) -> Option<String> {
    (b.len() <= 4096).then(|| std::str::from_utf8(b).ok().map(str::to_string)).flatten()
}

/// An unsigned varint (Go's `binary.PutUvarint`), as the snapshotter stores
/// snapshot ids.
fn uvarint(b: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for (i, byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f).checked_shl(7 * i as u32)?;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// What `meta.db` says of one container.
#[derive(Debug, Default, PartialEq, Eq)]
struct MetaRecord {
    image: String,
    labels: Vec<(String, String)>,
    /// The image's manifest digest (`images/<name>/target/digest`).
    image_digest: String,
    /// The snapshotter's key of the container's snapshot
    /// (`snapshots/<snapshotter>/<key>/name`).
    snapshot: Option<(String, String)>,
}

fn meta_record(db: &BoltDb<'_>, ns: &str, id: &str) -> Option<MetaRecord> {
    let (ns, id) = (ns.as_bytes(), id.as_bytes());
    let ctr: [&[u8]; 4] = [b"v1", ns, b"containers", id];
    // A container with no record at all is not containerd's to describe.
    let image = db.get(&ctr, b"image").and_then(text);
    let labels: Vec<(String, String)> =
        db.entries(&[b"v1", ns, b"containers", id, b"labels"], 256).into_iter().filter_map(|(k, v)| Some((text(k)?, text(v)?))).collect();
    let snapshotter = db.get(&ctr, b"snapshotter").and_then(text);
    let key = db.get(&ctr, b"snapshotKey").and_then(text);
    if image.is_none() && labels.is_empty() && key.is_none() {
        return None;
    }
    let image = image.unwrap_or_default();
    let image_digest = (!image.is_empty())
        .then(|| db.get(&[b"v1", ns, b"images", image.as_bytes(), b"target"], b"digest").and_then(text))
        .flatten()
        .unwrap_or_default();
    let snapshot = match (snapshotter, key) {
        (Some(sn), Some(k)) => {
            db.get(&[b"v1", ns, b"snapshots", sn.as_bytes(), k.as_bytes()], b"name").and_then(text).map(|name| (sn, name))
        }
        _ => None,
    };
    Some(MetaRecord { image, labels, image_digest, snapshot })
}

impl Reader {
    pub(super) fn read_containerd(&mut self, id: &str, namespace: Option<&str>) -> Result<Option<ContainerInfo>, String> {
        for tasks in CONTAINERD_TASKS {
            let mut namespaces = self.list_dir(tasks);
            if let Some(ns) = namespace {
                namespaces.retain(|n| n != ns);
                namespaces.insert(0, ns.to_string());
            }
            for ns in namespaces {
                if !path_safe(&ns) || !path_safe(id) {
                    continue;
                }
                let bundle = format!("{tasks}/{ns}/{id}");
                let Some(spec) = self.json(&format!("{bundle}/config.json"))? else { continue };
                return Ok(Some(self.containerd_container(id, &ns, &bundle, &spec)));
            }
        }
        Ok(None)
    }

    /// Every containerd task whose id no cgroup naming scheme recognises
    /// (`ctr run IMAGE web`: cgroup `/<namespace>/web`), with its cgroup
    /// path from its spec, for matching cgroups that nothing else explains.
    /// Tasks with full ids (Kubernetes, nerdctl, Docker) are left out
    /// without reading them: their cgroups name them.
    pub(crate) fn containerd_states(&mut self) -> Vec<ContainerInfo> {
        let mut out = Vec::new();
        for tasks in CONTAINERD_TASKS {
            for ns in self.list_dir(tasks).into_iter().filter(|n| path_safe(n)) {
                for id in self.list_dir(&format!("{tasks}/{ns}")).into_iter().filter(|i| path_safe(i) && !super::cgroup::is_full_id(i)) {
                    let bundle = format!("{tasks}/{ns}/{id}");
                    match self.json(&format!("{bundle}/config.json")) {
                        Ok(Some(spec)) => {
                            let mut c = self.containerd_container(&id, &ns, &bundle, &spec);
                            c.cgroup_path = spec_cgroup(&spec);
                            out.push(c);
                        }
                        Ok(None) => {}
                        Err(e) => tracing::debug!(error = %e, "unreadable containerd task"),
                    }
                }
            }
        }
        out
    }

    fn containerd_container(&mut self, id: &str, ns: &str, bundle: &str, spec: &Value) -> ContainerInfo {
        let ann = str_map(spec.get("annotations"));
        let get = |k: &str| ann.get(k).cloned().unwrap_or_default();
        let is_sandbox = get("io.kubernetes.cri.container-type") == "sandbox";
        let mut c = ContainerInfo {
            id: id.to_string(),
            runtime: Runtime::Containerd,
            process: spec.get("process").and_then(OciProcess::from_spec),
            ..Default::default()
        };
        c.name = if is_sandbox { get("io.kubernetes.cri.sandbox-name") } else { get("io.kubernetes.cri.container-name") };
        if c.name.is_empty() {
            c.name = get("nerdctl/name");
        }
        c.image = get("io.kubernetes.cri.image-name");
        if !get("io.kubernetes.cri.sandbox-name").is_empty() {
            c.pod = Some(PodInfo {
                name: get("io.kubernetes.cri.sandbox-name"),
                namespace: get("io.kubernetes.cri.sandbox-namespace"),
                uid: get("io.kubernetes.cri.sandbox-uid"),
                container_name: if is_sandbox { "POD".into() } else { get("io.kubernetes.cri.container-name") },
            });
        }
        // nerdctl and `ctr run --label` pass a container's labels as
        // annotations; CRI's own annotations are plumbing, not labels.
        c.labels = ann.into_iter().filter(|(k, _)| !k.starts_with("io.kubernetes.cri.")).collect();
        let root = spec.get("root").map(|r| s(r, "path")).unwrap_or_default();
        let merged = if root.is_empty() {
            format!("{bundle}/rootfs")
        } else if root.starts_with('/') {
            root
        } else {
            format!("{bundle}/{root}")
        };
        let mut upper = None;
        if let Some(db) = self.shared_bytes(META_DB) {
            if let Some(rec) = BoltDb::open(&db).and_then(|db| meta_record(&db, ns, id)) {
                if c.image.is_empty() {
                    c.image = rec.image.clone();
                }
                c.image_digest = rec.image_digest.clone();
                for (k, v) in rec.labels {
                    // Kubernetes' labels (io.kubernetes.*, the pod's) are
                    // kept; containerd's own bookkeeping is not.
                    if !k.starts_with("io.containerd.") && !k.starts_with("containerd.io/") {
                        c.labels.entry(k).or_insert(v);
                    }
                }
                upper = rec.snapshot.and_then(|(sn, name)| self.snapshot_upper(&sn, &name));
                if let Some(digest) = rec.image_digest.strip_prefix("sha256:") {
                    c.image_id = self.manifest_config(digest).unwrap_or_default();
                }
            }
        }
        if c.name.is_empty() {
            // `ctr run IMAGE ID`: the id is the only name it has.
            c.name = id.to_string();
        }
        // Where the writes land (and file events are watched): the
        // snapshot's upper directory when the snapshotter says which; else
        // the mounted root, as before this was read.
        c.rootfs_paths.push(upper.unwrap_or_else(|| PathBuf::from(merged)));
        c.pid = self.read_text(&format!("{bundle}/init.pid")).and_then(|t| t.parse().ok()).filter(|p| *p > 0);
        c
    }

    /// The upper directory of an active overlayfs snapshot, from the
    /// snapshotter's own store (`v1/snapshots/<name>/id`).
    fn snapshot_upper(&mut self, snapshotter: &str, name: &str) -> Option<PathBuf> {
        if snapshotter != "overlayfs" {
            return None;
        }
        let db = self.shared_bytes(&format!("{OVERLAYFS}/metadata.db"))?;
        let db = BoltDb::open(&db)?;
        let id = uvarint(db.get(&[b"v1", b"snapshots", name.as_bytes()], b"id")?)?;
        Some(PathBuf::from(format!("{OVERLAYFS}/snapshots/{id}/fs")))
    }

    /// The config digest (image id) in an image manifest from containerd's
    /// content store.
    fn manifest_config(&self, digest: &str) -> Option<String> {
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let path = format!("/var/lib/containerd/io.containerd.content.v1.content/blobs/sha256/{digest}");
        let bytes = super::runtimes::read_limited(&self.host(&path), MAX_MANIFEST).ok()?;
        let m = super::runtimes::bounded_json(&bytes).ok()?;
        let config = m.get("config").map(|c| s(c, "digest")).unwrap_or_default();
        config.starts_with("sha256:").then_some(config)
    }
}

/// A spec's `linux.cgroupsPath` as a cgroup v2 path: absolute as given, or
/// systemd's `slice:prefix:name` expanded as systemd nests it.
fn spec_cgroup(spec: &Value) -> String {
    let path = spec.get("linux").map(|l| s(l, "cgroupsPath")).unwrap_or_default();
    if path.starts_with('/') {
        return path;
    }
    match path.split(':').collect::<Vec<_>>()[..] {
        [slice, prefix, name] => {
            let slice = if slice.is_empty() { "system.slice" } else { slice };
            let unit =
                if name.ends_with(".scope") || name.ends_with(".slice") { name.to_string() } else { format!("{prefix}-{name}.scope") };
            format!("{}/{unit}", expand_slice(slice))
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uvarints_as_go_writes_them() {
        assert_eq!(uvarint(&[0x02]), Some(2));
        assert_eq!(uvarint(&[0xac, 0x02]), Some(300));
        assert_eq!(uvarint(&[0x80]), None, "cut short");
        assert_eq!(uvarint(&[]), None);
        assert_eq!(uvarint(&[0xff; 11]), None, "too long");
    }

    #[test]
    fn cgroup_paths_from_specs() {
        let spec = |p: &str| serde_json::json!({"linux": {"cgroupsPath": p}});
        assert_eq!(spec_cgroup(&spec("/lancet-ctr/web")), "/lancet-ctr/web");
        assert_eq!(spec_cgroup(&spec("system.slice:containerd:web")), "/system.slice/containerd-web.scope");
        assert_eq!(spec_cgroup(&spec("web")), "");
        assert_eq!(spec_cgroup(&serde_json::json!({})), "");
    }

    #[test]
    fn names_joined_into_paths_are_checked() {
        assert!(path_safe("lancet-ctr") && path_safe("web.1"));
        assert!(!path_safe("..") && !path_safe("a/b") && !path_safe("") && !path_safe("."));
    }
}
