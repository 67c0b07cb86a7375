//! The immutability backend: in protect mode a container's protected set
//! (code, system configuration, root's home, cron, package databases; see
//! `lancet_engine::write_sets`) is read-only, except the directories inside
//! it that are the service's own (`/etc/redis` owned by the redis user) or
//! the operator's mounts. Writes there fail in the kernel with EROFS,
//! including the mkdir, rename, chmod, symlink and unlink a fanotify
//! permission event cannot refuse, at no cost per operation. Everything
//! else stays writable: a service's data, logs, caches and run state are
//! its normal life. Undone on demote or release without restarting the
//! container.
//!
//! What each container got is kept in memory and in
//! `<state dir>/immutable/<id>.json` with the boot id (mount ids and
//! namespaces do not survive a reboot), so an agent restarted while
//! containers stay read-only can still undo exactly what was done.

use super::{in_host_root, Backend, Guarded};
use lancet_engine::write_sets::{protected_dirs, WritableKind};
use lancet_sensor::enforce::{self, Applied, ImmutablePlan};
use lancet_sensor::mounts::{self, MountError, RunAs};
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
    /// The carve-outs of the plan applied (the rest of a plan is fixed).
    writable: Vec<String>,
    applied: Option<Applied>,
    /// Why immutability does not hold, when it does not.
    not_enforceable: Option<String>,
    error: Option<String>,
}

/// Read-only binds of the protected directories, with writable binds for
/// the carve-outs inside them.
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

/// The plan for a container: the protected directories read-only, the
/// carve-outs of its writable set inside them writable. The runtime's own
/// writable places (`/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`,
/// `/run/.containerenv`, `/proc`, the device nodes) are mounts of their own
/// or device files, untouched by read-only binds, so nothing is added for
/// them.
pub(super) fn plan(g: &Guarded, pre_pivot: bool, config: Option<&serde_json::Value>, carve_outs: Vec<String>) -> ImmutablePlan {
    // The runtime creates /dev/console after the hook for a terminal; an
    // unknown config counts as one (see `ImmutablePlan::console`).
    let console = pre_pivot && config.is_none_or(|c| c["process"]["terminal"].as_bool() != Some(false));
    ImmutablePlan {
        root: pre_pivot.then(|| g.rootfs.clone()),
        read_only: protected_dirs().map(str::to_string).collect(),
        writable: carve_outs,
        console,
    }
}

/// The directories inside the protected set that stay writable: read from
/// the container (its mounts, what its service user owns) and declared by
/// its policies. At the hook the user comes from the OCI config (the
/// process is still the runtime's).
fn carve_outs(g: &Guarded, pre_pivot: bool, config: Option<&serde_json::Value>) -> Result<Vec<String>, MountError> {
    let run_as = if pre_pivot {
        config.and_then(|c| {
            let u = &c["process"]["user"];
            Some(RunAs { uid: u32::try_from(u["uid"].as_u64()?).ok()?, gid: u32::try_from(u["gid"].as_u64().unwrap_or(0)).ok()? })
        })
    } else {
        crate::daemon::run_as(g.pid)
    };
    let mut set = mounts::writable_set(g.pid, pre_pivot.then(|| g.rootfs.clone()), run_as)?;
    for d in &g.writable {
        set.add(d, WritableKind::Policy);
    }
    Ok(set.carve_outs().map(|d| d.path.clone()).collect())
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
        let carve = match carve_outs(g, pre_pivot, config.as_ref()) {
            Ok(c) => c,
            Err(e) => return Err(format!("reading the container's writable directories: {}", describe(&e))),
        };
        let plan = plan(g, pre_pivot, config.as_ref(), carve);
        let entry = self.containers.entry(g.label).or_insert_with(|| Entry {
            id: g.id.clone(),
            name: g.name.clone(),
            writable: Vec::new(),
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
        let same = entry.applied.is_some() && entry.writable == plan.writable;
        if same {
            return entry.error.clone().map_or(Ok(()), Err);
        }
        let previous = entry.applied.take();
        let id = entry.id.clone();
        let mut previous = previous.or_else(|| self.load(&id, g.pid));
        let started = std::time::Instant::now();
        let res = match &previous {
            Some(old) => match enforce::update_immutable(g.pid, old, &plan) {
                // A new run of the container (a restart under the same id):
                // what was done to the old one went with it.
                Err(MountError::OtherNamespace { .. }) => {
                    previous = None;
                    enforce::apply_immutable(g.pid, &plan)
                }
                r => r,
            },
            None => enforce::apply_immutable(g.pid, &plan),
        };
        let entry = self.containers.get_mut(&g.label).expect("inserted above");
        entry.writable = plan.writable.clone();
        match res {
            Ok(a) => {
                let ms = started.elapsed().as_secs_f64() * 1e3;
                tracing::info!(container = %g.name, read_only = ?a.read_only, writable = ?a.writable, ms, "protected directories read-only");
                if !a.writers.is_empty() {
                    tracing::warn!(
                        container = %g.name, writers = ?a.writers.iter().map(|w| format!("{}[{}] {}", w.comm, w.pid, w.path)).collect::<Vec<_>>(),
                        "files open for writing in protected directories keep those descriptors"
                    );
                }
                for s in &a.skipped {
                    tracing::warn!(container = %g.name, path = %s.path, "left as it is: {}", s.reason);
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
        match enforce::release_immutable_at(g.pid, &applied, root) {
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
    use lancet_engine::profile::Profile;
    use std::sync::Arc;
    use std::time::Instant;

    fn guarded() -> Guarded {
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
            profile: Arc::new(Profile::new("localhost/web:1", "sha256:abc", 1)),
            approved: Arc::new(crate::protect::Approved::default()),
            allow: Default::default(),
            writable: Vec::new(),
            complete: false,
            applied: Instant::now(),
        }
    }

    #[test]
    fn the_plan_is_the_protected_set_with_its_carve_outs() {
        let g = guarded();
        let running = plan(&g, false, None, vec!["/etc/redis".into()]);
        for d in ["/usr", "/etc", "/root", "/var/spool/cron", "/var/lib/dpkg"] {
            assert!(running.read_only.iter().any(|p| p == d), "{d}");
        }
        // Data, logs and run state are not in it: a service's normal life.
        for d in ["/var/lib/redis", "/var/log", "/run", "/tmp", "/dev/shm", "/"] {
            assert!(!running.read_only.iter().any(|p| p == d), "{d}");
        }
        assert_eq!(running.writable, ["/etc/redis"]);
        assert_eq!((running.root, running.console), (None, false));
        // At the hook: the bundle's root, and /dev/console unless the
        // config says there is no terminal.
        let hook = plan(&g, true, None, Vec::new());
        assert_eq!(hook.root.as_deref(), Some(g.rootfs.as_path()));
        assert!(hook.console);
        assert!(!plan(&g, true, Some(&serde_json::json!({"process": {"terminal": false}})), Vec::new()).console);
        assert!(plan(&g, true, Some(&serde_json::json!({"process": {"terminal": true}})), Vec::new()).console);
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
