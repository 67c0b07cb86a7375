//! The immutability backend: in protect mode a container's filesystem is
//! read-only except the directories its profile learned as written (and its
//! volumes and tmpfs mounts, which are mounts of their own). Writes
//! anywhere else fail in the kernel with EROFS, including the mkdir,
//! rename, chmod, symlink and unlink a fanotify permission event cannot
//! refuse, at no cost per operation. Undone on demote or release without
//! restarting the container.
//!
//! What each container got is kept in memory and in
//! `<state dir>/immutable/<id>.json` with the boot id (mount ids and
//! namespaces do not survive a reboot), so an agent restarted while
//! containers stay read-only can still undo exactly what was done.

use super::{in_host_root, Backend, Guarded};
use lancet_sensor::mounts::{self, Applied, ImmutablePlan, Mode, MountError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where podman and CRI-O keep a container's OCI bundle (default run
/// root): at the OCI hook the runtime still holds every capability, so the
/// container's own are read from its config.
const BUNDLES: &str = "/run/containers/storage/overlay-containers";

/// What one container got.
struct Entry {
    id: String,
    name: String,
    /// The plan applied (without the root, which only says where).
    writable: Vec<String>,
    dev_shm_writable: bool,
    applied: Option<Applied>,
    /// Why immutability does not hold, when it does not.
    not_enforceable: Option<String>,
    error: Option<String>,
}

/// Read-only mounts with writable binds for the learned directories.
pub(super) struct ImmutableBackend {
    availability: Result<(), String>,
    /// Reports the writes the read-only mounts refuse (EROFS), naming the
    /// writer: a syscall-exit program, attached only while some container
    /// is read-only (it costs every syscall on the host ~130–170 ns).
    enforcer: Option<super::SharedEnforcer>,
    /// By label.
    containers: HashMap<u64, Entry>,
    state_dir: PathBuf,
}

impl ImmutableBackend {
    pub(super) fn new(run_dir: &Path, enforcer: Option<super::SharedEnforcer>) -> ImmutableBackend {
        ImmutableBackend {
            availability: mounts::mount_setattr_supported(),
            enforcer,
            containers: HashMap::new(),
            state_dir: run_dir.join("immutable"),
        }
    }

    fn state_file(&self, id: &str) -> PathBuf {
        self.state_dir.join(format!("{id}.json"))
    }

    fn save(&self, id: &str, a: &Applied) {
        let write = std::fs::create_dir_all(&self.state_dir).and_then(|()| serde_json::to_vec(a).map_err(std::io::Error::other)).and_then(
            |bytes| {
                let tmp = self.state_dir.join(format!(".{id}.json.tmp"));
                std::fs::write(&tmp, bytes)?;
                std::fs::rename(&tmp, self.state_file(id))
            },
        );
        if let Err(e) = write {
            tracing::warn!(container = id, "immutability state not saved in {}: {e}", self.state_dir.display());
        }
    }

    fn forget_file(&self, id: &str) {
        let _ = std::fs::remove_file(self.state_file(id));
    }

    /// What an earlier agent applied to this very namespace in this boot
    /// (not to an earlier run of the same container).
    fn load(&self, id: &str, pid: u32) -> Option<Applied> {
        let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(self.state_file(id)).ok()?).ok()?;
        let a: Option<Applied> = serde_json::from_value(doc["applied"].clone()).ok();
        let ns = std::fs::metadata(format!("/proc/{pid}/ns/mnt")).ok().map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        match a {
            Some(a) if doc["bootId"].as_str() == boot_id().as_deref() && ns == Some(a.mnt_ns) => Some(a),
            _ => {
                self.forget_file(id);
                None
            }
        }
    }
}

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|s| s.trim().to_string())
}

/// The plan for a container: its learned written directories stay
/// writable. The runtime's own writable places (`/etc/hosts`,
/// `/etc/resolv.conf`, `/etc/hostname`, `/run/.containerenv`, `/proc`, the
/// device nodes) are mounts of their own or device files, untouched by
/// read-only mounts, so nothing is added for them.
pub(super) fn plan(g: &Guarded, pre_pivot: bool, config: Option<&serde_json::Value>) -> ImmutablePlan {
    let writable: Vec<String> = g.profile.spec().written_dirs.iter().map(|d| d.path.clone()).collect();
    let dev_shm_writable = writable.iter().any(|d| d == "/dev/shm");
    // The runtime creates /dev/console after the hook for a terminal; an
    // unknown config counts as one (see `ImmutablePlan::console`).
    let console = pre_pivot && config.is_none_or(|c| c["process"]["terminal"].as_bool() != Some(false));
    ImmutablePlan { root: pre_pivot.then(|| g.rootfs.clone()), writable, dev_shm_writable, console }
}

/// The container's OCI config, where podman and CRI-O keep it.
fn oci_config(id: &str) -> Option<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(Path::new(BUNDLES).join(id).join("userdata/config.json")).ok()?).ok()
}

/// Whether an OCI config grants `CAP_SYS_ADMIN` (bounding or effective).
fn config_grants_sys_admin(config: &serde_json::Value) -> bool {
    let caps = &config["process"]["capabilities"];
    ["bounding", "effective"].iter().any(|set| caps[set].as_array().is_some_and(|a| a.iter().any(|c| c.as_str() == Some("CAP_SYS_ADMIN"))))
}

/// Whether the container holds `CAP_SYS_ADMIN` (it could then remount
/// itself writable: same user namespace, nothing locked). None when that
/// cannot be told yet (at the hook, without its OCI config).
fn sys_admin(g: &Guarded, pre_pivot: bool, config: Option<&serde_json::Value>) -> Option<bool> {
    if pre_pivot {
        config.map(config_grants_sys_admin)
    } else {
        mounts::has_cap_sys_admin(g.pid).ok()
    }
}

fn describe(e: &MountError) -> String {
    match e {
        MountError::ProcessGone { .. } => "the container's process is gone".into(),
        e => e.to_string(),
    }
}

impl Backend for ImmutableBackend {
    fn name(&self) -> &'static str {
        "immutable (read-only mounts)"
    }

    fn availability(&self) -> Result<(), String> {
        self.availability.clone()
    }

    fn apply(&mut self, g: &Guarded) -> Result<(), String> {
        self.availability.clone()?;
        let pre_pivot = in_host_root(g.pid);
        let config = pre_pivot.then(|| oci_config(&g.id)).flatten();
        let plan = plan(g, pre_pivot, config.as_ref());
        let entry = self.containers.entry(g.label).or_insert_with(|| Entry {
            id: g.id.clone(),
            name: g.name.clone(),
            writable: Vec::new(),
            dev_shm_writable: false,
            applied: None,
            not_enforceable: None,
            error: None,
        });
        if sys_admin(g, pre_pivot, config.as_ref()) == Some(true) {
            let why = "immutability not enforceable (CAP_SYS_ADMIN): the container can remount its filesystem writable".to_string();
            entry.not_enforceable = Some(why.clone());
            return Err(why);
        }
        entry.not_enforceable = None;
        let same = entry.applied.is_some() && entry.writable == plan.writable && entry.dev_shm_writable == plan.dev_shm_writable;
        if same {
            return entry.error.clone().map_or(Ok(()), Err);
        }
        let previous = entry.applied.take();
        let id = entry.id.clone();
        let mut previous = previous.or_else(|| self.load(&id, g.pid));
        let started = std::time::Instant::now();
        let res = match &previous {
            Some(old) => match mounts::update_immutable(g.pid, old, &plan) {
                // A new run of the container (a restart under the same id):
                // what was done to the old one went with it.
                Err(MountError::OtherNamespace { .. }) => {
                    previous = None;
                    mounts::apply_immutable(g.pid, &plan)
                }
                r => r,
            },
            None => mounts::apply_immutable(g.pid, &plan),
        };
        let entry = self.containers.get_mut(&g.label).expect("inserted above");
        entry.writable = plan.writable.clone();
        entry.dev_shm_writable = plan.dev_shm_writable;
        match res {
            Ok(a) => {
                let ms = started.elapsed().as_secs_f64() * 1e3;
                match &a.mode {
                    Mode::Full => {
                        tracing::info!(container = %g.name, writable = ?a.writable, ms, "filesystem read-only except the learned directories")
                    }
                    Mode::Partial { writable_left, writers } => tracing::warn!(
                        container = %g.name, ?writable_left, writers = ?writers.iter().map(|w| format!("{}[{}] {}", w.comm, w.pid, w.path)).collect::<Vec<_>>(),
                        "filesystem partly read-only: files open for writing keep these writable until the next start"
                    ),
                }
                for s in &a.skipped {
                    tracing::warn!(container = %g.name, path = %s.path, "learned directory not made writable: {}", s.reason);
                }
                entry.applied = Some(a);
                entry.error = None;
                let a = entry.applied.clone().expect("just set");
                self.save(&id, &a);
                if let Some(e) = &self.enforcer {
                    if let Err(err) = e.borrow_mut().set_write_reports(g.cgroup_id, true) {
                        tracing::warn!(container = %g.name, "refused writes will not be reported: {err}");
                    }
                }
                Ok(())
            }
            Err(e) => {
                // An update that failed changed nothing: the old state holds.
                entry.applied = previous;
                // Retried by the protector; the plan is compared again then.
                entry.writable.clear();
                let why = describe(&e);
                entry.error = Some(why.clone());
                Err(why)
            }
        }
    }

    fn release(&mut self, g: &Guarded) {
        if let Some(e) = &self.enforcer {
            let _ = e.borrow_mut().set_write_reports(g.cgroup_id, false);
        }
        let Some(entry) = self.containers.remove(&g.label) else { return };
        let Some(applied) = entry.applied else { return };
        let root = in_host_root(g.pid).then(|| g.rootfs.clone());
        match mounts::release_immutable_at(g.pid, &applied, root) {
            Ok(()) => tracing::info!(container = %entry.name, "filesystem writable again"),
            // The container (this run of it) is gone, and with it all there
            // was to undo.
            Err(MountError::ProcessGone { .. }) | Err(MountError::OtherNamespace { .. }) => {}
            Err(e) => {
                // The record stays on disk: what could not be undone is
                // named there for a person or a later agent.
                tracing::warn!(container = %entry.name, "undoing immutability: {e}");
                return;
            }
        }
        self.forget_file(&entry.id);
    }

    fn report(&self) -> Option<serde_json::Value> {
        let mut out: Vec<serde_json::Value> = self
            .containers
            .values()
            .map(|e| {
                let mut v = serde_json::json!({"id": e.id, "name": e.name});
                match (&e.not_enforceable, &e.applied, &e.error) {
                    (Some(why), _, _) => v["mode"] = why.clone().into(),
                    (None, Some(a), err) => {
                        let mut a = serde_json::to_value(a).unwrap_or_default();
                        if let Some(obj) = a.as_object_mut() {
                            // Mount ids are for undoing; people read paths.
                            obj.remove("steps");
                            obj.remove("mntNs");
                        }
                        let applied = e.applied.as_ref().expect("matched");
                        v["readOnly"] = applied.made_read_only().map(|(p, _)| p).collect::<Vec<_>>().into();
                        v["readOnlyBinds"] = applied.added().filter(|(_, _, w)| !w).map(|(p, _, _)| p).collect::<Vec<_>>().into();
                        v["state"] = a;
                        if let Some(err) = err {
                            v["error"] = err.clone().into();
                        }
                    }
                    (None, None, err) => v["error"] = err.clone().unwrap_or_else(|| "not applied yet".into()).into(),
                }
                v
            })
            .collect();
        out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        Some(serde_json::json!({ "containers": out }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lancet_engine::event::{Event, EventKind, FileEvent, FileOp, ProcessRef};
    use lancet_engine::profile::Profile;
    use std::sync::Arc;
    use std::time::Instant;

    fn guarded(written: &[&str]) -> Guarded {
        let mut p = Profile::new("localhost/web:1", "sha256:abc", 1);
        for (i, path) in written.iter().enumerate() {
            let kind = EventKind::File(FileEvent {
                op: FileOp::Create,
                path: path.to_string(),
                old_path: None,
                host_path: String::new(),
                is_dir: false,
            });
            p.observe(&Event { time_ns: 2 + i as u64, cgroup_id: 1, process: ProcessRef::default(), kind }, None, 2 + i as u64);
        }
        Guarded {
            id: "c".repeat(64),
            name: "web".into(),
            workload: "sha256:abc".into(),
            label: 2,
            cgroup_id: 1,
            cgroup_dir: PathBuf::new(),
            pid: 1,
            rootfs: PathBuf::from("/var/lib/containers/storage/overlay/x/merged"),
            upper: None,
            profile: Arc::new(p),
            approved: Arc::new(crate::protect::Approved::default()),
            allow: Vec::new(),
            complete: false,
            applied: Instant::now(),
        }
    }

    #[test]
    fn the_plan_comes_from_the_learned_written_directories() {
        let g = guarded(&["/var/log/nginx/access.log", "/run/nginx.pid", "/dev/shm/sem.x"]);
        let running = plan(&g, false, None);
        let mut w = running.writable.clone();
        w.sort();
        assert_eq!(w, ["/dev/shm", "/run", "/var/log/nginx"]);
        assert!(running.dev_shm_writable);
        assert_eq!((running.root, running.console), (None, false));
        // At the hook: the bundle's root, and /dev/console unless the
        // config says there is no terminal.
        let hook = plan(&g, true, None);
        assert_eq!(hook.root.as_deref(), Some(g.rootfs.as_path()));
        assert!(hook.console);
        assert!(!plan(&g, true, Some(&serde_json::json!({"process": {"terminal": false}}))).console);
        assert!(plan(&g, true, Some(&serde_json::json!({"process": {"terminal": true}}))).console);
        assert!(!plan(&guarded(&["/tmp/x"]), false, None).dev_shm_writable);
    }

    #[test]
    fn sys_admin_from_the_oci_config() {
        let c = serde_json::json!({"process": {"capabilities": {"bounding": ["CAP_CHOWN", "CAP_SYS_ADMIN"], "effective": ["CAP_CHOWN"]}}});
        assert!(config_grants_sys_admin(&c));
        let c = serde_json::json!({"process": {"capabilities": {"bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"]}}});
        assert!(!config_grants_sys_admin(&c));
        assert!(!config_grants_sys_admin(&serde_json::json!({})));
    }
}
