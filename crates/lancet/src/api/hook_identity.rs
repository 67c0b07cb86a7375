//! The OCI hook's container, established by the agent from the peer and the
//! runtime's state, never from the request body alone.
//!
//! The hook (`lancet hook oci`, run by the runtime at `createRuntime`) sends
//! what the runtime gave it: the container id, its first process's pid and
//! the bundle directory. The agent accepts them only when:
//! 1. the peer is uid 0 on the control socket (see [`super::access::hook`]);
//! 2. the claimed pid and the hook itself are children of the same live
//!    runtime process: the parent of the peer's pid (SO_PEERCRED) equals the
//!    parent of the claimed pid (runc starts the container's init with
//!    `CLONE_PARENT`, so it is the child of the `runc create` that runs the
//!    hooks), and that parent is not init (pid 1: both reparented);
//! 3. the claimed pid's cgroup (its `0::` line, read here) names the
//!    container id, as every runtime's layout does (`libpod-<id>`,
//!    `crio-<id>`, `…/<id>`);
//! 4. the bundle is where a known runtime keeps its containers' state
//!    (podman and CRI-O: `{/run,/var/lib}/containers/storage/<driver>-containers/<id>/userdata`;
//!    containerd: `/run/containerd/io.containerd.runtime.v2.task/<ns>/<id>`,
//!    also under `/run/docker/containerd/daemon`), with this id, reached
//!    through no symbolic link, and its `config.json` is a regular file of
//!    the agent's owner that no one else may write; the root filesystem is
//!    that file's `root.path`.
//!
//! Anything else is a 403 with the reason (and a log line). The reads go
//! through [`Verifier`]'s roots, so tests lay out fake `/proc` trees.

use serde::Deserialize;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

/// A container handed over by the hook, as the agent established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookIdentity {
    /// The container id (checked against its cgroup and its bundle).
    pub id: String,
    /// The container's first process.
    pub pid: u32,
    /// Its cgroup v2 path (from `/proc/<pid>/cgroup`).
    pub cgroup: String,
    /// The root filesystem as mounted on the host (from the bundle's
    /// `config.json`, read by the agent).
    pub rootfs: PathBuf,
    /// The runtime process that ran the hook.
    pub runtime_pid: u32,
}

/// What the hook claims (the OCI state's `id`, `pid` and `bundle`).
#[derive(Debug, Clone, Deserialize)]
pub struct HookClaim {
    pub id: String,
    pub pid: u32,
    pub bundle: String,
}

/// Where the facts are read: `/proc` and the host's root (tests use fake
/// trees), and the uid that must own the runtime's files.
#[derive(Debug, Clone)]
pub struct Verifier {
    pub proc_root: PathBuf,
    pub host_root: PathBuf,
    pub trusted_owner: u32,
}

/// The parent pid in `/proc/<pid>/stat` (after the command name, which may
/// hold spaces and parentheses).
pub fn parse_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The cgroup v2 path in `/proc/<pid>/cgroup`.
pub fn parse_cgroup_v2(text: &str) -> Option<String> {
    text.lines().find_map(|l| l.strip_prefix("0::")).map(|s| s.trim().to_string())
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && !id.starts_with('.') && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn valid_name(s: &str) -> bool {
    valid_id(s)
}

/// Whether `bundle` is a runtime state directory of container `id` in a
/// known layout. The path must be absolute and plain (no `.`, `..` or
/// empty components).
pub fn known_bundle(bundle: &str, id: &str) -> bool {
    let p = Path::new(bundle);
    if !p.is_absolute() || bundle.contains("//") || bundle.ends_with('/') {
        return false;
    }
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(s) => match s.to_str() {
                Some(s) => parts.push(s),
                None => return false,
            },
            _ => return false,
        }
    }
    match parts.as_slice() {
        // podman, CRI-O (containers/storage): <runroot or graphroot>/<driver>-containers/<id>/userdata
        ["run", "containers", "storage", d, i, "userdata"] | ["var", "lib", "containers", "storage", d, i, "userdata"] => {
            *i == id && d.strip_suffix("-containers").is_some_and(|drv| !drv.is_empty() && drv.bytes().all(|b| b.is_ascii_alphanumeric()))
        }
        // containerd's v2 shims (Kubernetes, nerdctl), and docker's own containerd.
        ["run", "containerd", "io.containerd.runtime.v2.task", ns, i]
        | ["run", "docker", "containerd", "daemon", "io.containerd.runtime.v2.task", ns, i] => *i == id && valid_name(ns),
        _ => false,
    }
}

impl Verifier {
    /// The live system: `/proc`, `host_root`, files owned by root.
    pub fn system(host_root: &Path) -> Verifier {
        Verifier { proc_root: PathBuf::from("/proc"), host_root: host_root.to_path_buf(), trusted_owner: 0 }
    }

    fn proc_file(&self, pid: u32, name: &str) -> Option<String> {
        std::fs::read_to_string(self.proc_root.join(pid.to_string()).join(name)).ok()
    }

    fn ppid(&self, pid: u32) -> Option<u32> {
        self.proc_file(pid, "stat").as_deref().and_then(parse_ppid)
    }

    fn host_path(&self, p: &Path) -> PathBuf {
        self.host_root.join(p.strip_prefix("/").unwrap_or(p))
    }

    /// Checks the hook's claim against the peer (`hook_pid`, from
    /// SO_PEERCRED) and the runtime's state. The error is the reason.
    pub fn verify(&self, hook_pid: u32, claim: &HookClaim) -> Result<HookIdentity, String> {
        let (id, pid) = (claim.id.as_str(), claim.pid);
        if !valid_id(id) {
            return Err(format!("container id {id:?} is not a valid id"));
        }
        if pid == 0 || pid == hook_pid {
            return Err(format!("pid {pid} cannot be the container's process"));
        }
        let runtime = self.ppid(hook_pid).ok_or_else(|| format!("the hook's process {hook_pid} is gone"))?;
        if runtime <= 1 {
            return Err(format!("the hook's process {hook_pid} has no runtime parent (parent {runtime})"));
        }
        let parent = self.ppid(pid).ok_or_else(|| format!("the container process {pid} does not exist"))?;
        if parent != runtime {
            return Err(format!(
                "process {pid} is not a child of the runtime process {runtime} that ran the hook (its parent is {parent})"
            ));
        }
        let cgroup = self
            .proc_file(pid, "cgroup")
            .as_deref()
            .and_then(parse_cgroup_v2)
            .ok_or_else(|| format!("the cgroup v2 of process {pid} is unknown"))?;
        if !cgroup.contains(id) {
            return Err(format!("the cgroup {cgroup} of process {pid} does not name container {id}"));
        }
        if !known_bundle(&claim.bundle, id) {
            return Err(format!("the bundle {} is not a known runtime state directory of container {id}", claim.bundle));
        }
        let rootfs = self.rootfs(Path::new(&claim.bundle))?;
        Ok(HookIdentity { id: id.to_string(), pid, cgroup, rootfs, runtime_pid: runtime })
    }

    /// The root filesystem named by the bundle's `config.json`, read
    /// without following links, from a file only the trusted owner wrote.
    fn rootfs(&self, bundle: &Path) -> Result<PathBuf, String> {
        let dir = self.host_path(bundle);
        match std::fs::canonicalize(&dir) {
            Ok(c) if c == dir => {}
            Ok(c) => return Err(format!("the bundle {} leads elsewhere ({}) through a symbolic link", bundle.display(), c.display())),
            Err(e) => return Err(format!("the bundle {}: {e}", bundle.display())),
        }
        let path = dir.join("config.json");
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let m = f.metadata().map_err(|e| format!("{}: {e}", path.display()))?;
        if !m.file_type().is_file() || m.uid() != self.trusted_owner || m.mode() & 0o022 != 0 {
            return Err(format!("{} is not a runtime's file (owner uid {}, mode {:o})", path.display(), m.uid(), m.mode() & 0o7777));
        }
        let mut text = String::new();
        f.by_ref().take(16 << 20).read_to_string(&mut text).map_err(|e| format!("{}: {e}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
        let root = v["root"]["path"].as_str().unwrap_or("rootfs");
        let rootfs = if Path::new(root).is_absolute() { PathBuf::from(root) } else { bundle.join(root) };
        if rootfs.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
            return Err(format!("the root {} in {} is not a plain path", rootfs.display(), path.display()));
        }
        Ok(rootfs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const ID: &str = "4f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c";
    const BUNDLE: &str =
        "/run/containers/storage/overlay-containers/4f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c/userdata";

    /// A fake host: /proc entries for a runtime (100), its hook (200), the
    /// container's init (300), an unrelated process (400, child of 1), and
    /// the bundle with its config.json.
    struct Host {
        dir: tempfile::TempDir,
        v: Verifier,
    }

    fn proc_entry(root: &Path, pid: u32, comm: &str, ppid: u32, cgroup: &str) {
        let d = root.join("proc").join(pid.to_string());
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("stat"), format!("{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 0 0\n")).unwrap();
        std::fs::write(d.join("cgroup"), format!("12:pids:/x\n1:name=systemd:/y\n0::{cgroup}\n")).unwrap();
    }

    fn host() -> Host {
        let dir = tempfile::tempdir().unwrap();
        // The bundle must be reached through no symbolic link: no link in
        // the temporary directory's own path either.
        let r = &std::fs::canonicalize(dir.path()).unwrap();
        let cg = format!("/libpod_parent/libpod-{ID}");
        proc_entry(r, 100, "runc", 50, "/");
        proc_entry(r, 200, "lancet", 100, "/");
        proc_entry(r, 300, "runc:[2:INIT]", 100, &cg);
        proc_entry(r, 400, "sh) S 100 (evil", 1, &cg);
        let b = r.join("host").join(BUNDLE.trim_start_matches('/'));
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(b.join("config.json"), r#"{"root":{"path":"/var/lib/containers/storage/overlay/abc/merged"}}"#).unwrap();
        let owner = std::fs::metadata(b.join("config.json")).unwrap().uid();
        let v = Verifier { proc_root: r.join("proc"), host_root: r.join("host"), trusted_owner: owner };
        Host { dir, v }
    }

    fn claim(pid: u32, bundle: &str) -> HookClaim {
        HookClaim { id: ID.into(), pid, bundle: bundle.into() }
    }

    #[test]
    fn stat_and_cgroup_parsing() {
        assert_eq!(parse_ppid("300 (runc:[2:INIT]) S 100 300 300 0"), Some(100));
        assert_eq!(parse_ppid("400 (sh) S 100 (evil) R 7 1"), Some(7), "the last ')' ends the name");
        assert_eq!(parse_ppid("garbage"), None);
        assert_eq!(parse_cgroup_v2("1:cpu:/a\n0::/libpod_parent/libpod-x\n"), Some("/libpod_parent/libpod-x".into()));
        assert_eq!(parse_cgroup_v2("1:cpu:/a\n"), None);
    }

    #[test]
    fn known_bundle_layouts() {
        assert!(known_bundle(BUNDLE, ID));
        assert!(known_bundle(&format!("/var/lib/containers/storage/vfs-containers/{ID}/userdata"), ID));
        assert!(known_bundle(&format!("/run/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}"), ID));
        assert!(known_bundle(&format!("/run/docker/containerd/daemon/io.containerd.runtime.v2.task/moby/{ID}"), ID));
        for bad in [
            format!("/tmp/{ID}/userdata"),
            format!("/run/containers/storage/overlay-containers/{ID}/userdata/../../../../tmp"),
            format!("/run/containers/storage/overlay-containers/{ID}//userdata"),
            "/run/containers/storage/overlay-containers/other/userdata".to_string(),
            format!("/run/containers/storage/-containers/{ID}/userdata"),
            format!("/run/containers/storage/overlay/{ID}/userdata"),
            format!("run/containers/storage/overlay-containers/{ID}/userdata"),
            format!("/run/containerd/io.containerd.runtime.v2.task/../{ID}"),
        ] {
            assert!(!known_bundle(&bad, ID), "{bad}");
        }
    }

    #[test]
    fn a_sound_claim_gives_the_identity_from_the_host() {
        let h = host();
        let id = h.v.verify(200, &claim(300, BUNDLE)).unwrap();
        assert_eq!(id.id, ID);
        assert_eq!(id.pid, 300);
        assert_eq!(id.runtime_pid, 100);
        assert_eq!(id.cgroup, format!("/libpod_parent/libpod-{ID}"));
        assert_eq!(id.rootfs, PathBuf::from("/var/lib/containers/storage/overlay/abc/merged"));

        // A relative root is relative to the bundle.
        let cfg = h.v.host_root.join(BUNDLE.trim_start_matches('/')).join("config.json");
        std::fs::write(&cfg, r#"{"root":{"path":"rootfs"}}"#).unwrap();
        assert_eq!(h.v.verify(200, &claim(300, BUNDLE)).unwrap().rootfs, Path::new(BUNDLE).join("rootfs"));
    }

    #[test]
    fn a_pid_of_another_parent_is_refused() {
        let h = host();
        let e = h.v.verify(200, &claim(400, BUNDLE)).unwrap_err();
        assert!(e.contains("not a child of the runtime process 100"), "{e}");
        assert!(h.v.verify(200, &claim(999, BUNDLE)).unwrap_err().contains("does not exist"));
        assert!(h.v.verify(999, &claim(300, BUNDLE)).unwrap_err().contains("hook's process 999 is gone"));
        assert!(h.v.verify(200, &claim(200, BUNDLE)).unwrap_err().contains("cannot be the container's process"));
        // Both reparented to init: no runtime binds them.
        proc_entry(h.dir.path(), 201, "lancet", 1, "/");
        proc_entry(h.dir.path(), 301, "sh", 1, &format!("/libpod-{ID}"));
        assert!(h.v.verify(201, &claim(301, BUNDLE)).unwrap_err().contains("no runtime parent"));
    }

    #[test]
    fn a_cgroup_or_bundle_of_another_container_is_refused() {
        let h = host();
        proc_entry(h.dir.path(), 301, "runc:[2:INIT]", 100, "/libpod_parent/libpod-other");
        let e = h.v.verify(200, &claim(301, BUNDLE)).unwrap_err();
        assert!(e.contains("does not name container"), "{e}");
        let e = h.v.verify(200, &claim(300, "/tmp/planted")).unwrap_err();
        assert!(e.contains("not a known runtime state directory"), "{e}");
        let e = h.v.verify(200, &HookClaim { id: "../x".into(), pid: 300, bundle: BUNDLE.into() }).unwrap_err();
        assert!(e.contains("not a valid id"), "{e}");
    }

    #[test]
    fn a_planted_or_linked_config_is_refused() {
        let h = host();
        let b = h.v.host_root.join(BUNDLE.trim_start_matches('/'));
        let cfg = b.join("config.json");
        // Writable by others.
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(h.v.verify(200, &claim(300, BUNDLE)).unwrap_err().contains("is not a runtime's file"));
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
        // Owned by someone else.
        let other = Verifier { trusted_owner: h.v.trusted_owner + 1, ..h.v.clone() };
        assert!(other.verify(200, &claim(300, BUNDLE)).unwrap_err().contains("is not a runtime's file"));
        // A symlinked config.json.
        let planted = h.dir.path().join("planted.json");
        std::fs::write(&planted, r#"{"root":{"path":"/tmp/evil"}}"#).unwrap();
        std::fs::remove_file(&cfg).unwrap();
        std::os::unix::fs::symlink(&planted, &cfg).unwrap();
        assert!(h.v.verify(200, &claim(300, BUNDLE)).is_err());
        // A bundle directory that is a symlink to a planted one.
        std::fs::remove_file(&cfg).unwrap();
        std::fs::remove_dir(&b).unwrap();
        let elsewhere = h.dir.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("config.json"), r#"{"root":{"path":"/tmp/evil"}}"#).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &b).unwrap();
        let e = h.v.verify(200, &claim(300, BUNDLE)).unwrap_err();
        assert!(e.contains("through a symbolic link"), "{e}");
    }
}
