//! The OCI hook for runtimes that read no `hooks.d`: Docker Engine and
//! containerd (Kubernetes, `ctr`, nerdctl) run runc through containerd's
//! shim and put no hook of lancet's into a container's spec. Set as their
//! runc (Docker: a `runtimes` entry in `daemon.json`; containerd's CRI:
//! the runc options' `BinaryName`; `ctr run --runc-binary`), a small script
//! runs `lancet hook runc -- <runc's arguments>`: on `create` and `run` it
//! adds lancet's hook to the bundle's `config.json` at the `createRuntime`
//! stage, exactly as podman would from `hooks.d`, then executes the real
//! runc with the same arguments, descriptors and environment. The
//! container's cgroup and root exist when runc runs the hook, its entrypoint
//! has not run, and the agent verifies what the hook says as it does for
//! podman's (`api::hook_identity`).
//!
//! Like the hook, the wrapper never stops a container because of lancet:
//! when the spec cannot be read or written it says so on stderr and runs
//! runc on the spec as it was.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// runc's global options that take a value (runc 1.1): the command is the
/// first argument that is neither one of these, its value, nor a flag.
const GLOBAL_WITH_VALUE: [&str; 5] = ["--root", "--log", "--log-format", "--criu", "--rootless"];

/// The bundle a `runc create` or `runc run` is given (`--bundle`/`-b`, in
/// either form; the working directory when absent), or None for any other
/// command, which the wrapper passes through untouched.
pub fn bundle_of(args: &[OsString]) -> Option<PathBuf> {
    let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap_or("")).collect();
    let mut i = 0;
    while i < args.len() {
        let a = args[i];
        if GLOBAL_WITH_VALUE.contains(&a) {
            i += 2;
            continue;
        }
        if a.starts_with('-') {
            i += 1;
            continue;
        }
        break;
    }
    if !matches!(args.get(i), Some(&"create") | Some(&"run")) {
        return None;
    }
    let rest = &args[i + 1..];
    for (j, a) in rest.iter().enumerate() {
        if *a == "--" {
            break;
        }
        if let Some(v) = a.strip_prefix("--bundle=").or_else(|| a.strip_prefix("-b=")) {
            return Some(PathBuf::from(v));
        }
        if *a == "--bundle" || *a == "-b" {
            return rest.get(j + 1).map(PathBuf::from);
        }
    }
    Some(PathBuf::from("."))
}

/// Adds `hook` to the spec's `hooks.createRuntime`, unless an entry with the
/// same path and arguments is there already. False when nothing changed.
pub fn add_hook(spec: &mut Value, hook: &Value) -> Result<bool> {
    let Some(obj) = spec.as_object_mut() else { bail!("the spec is not a JSON object") };
    let hooks = obj.entry("hooks").or_insert_with(|| json!({}));
    let Some(hooks) = hooks.as_object_mut() else { bail!("the spec's hooks are not an object") };
    let stage = hooks.entry("createRuntime").or_insert_with(|| json!([]));
    let Some(stage) = stage.as_array_mut() else { bail!("the spec's createRuntime hooks are not a list") };
    if stage.iter().any(|h| h["path"] == hook["path"] && h["args"] == hook["args"]) {
        return Ok(false);
    }
    stage.push(hook.clone());
    Ok(true)
}

/// The hook entry: `lancet --api API hook oci`, as `hooks.d` names it.
fn hook_entry(exe: &Path, api: &str) -> Value {
    let doc = super::hook_document(exe, api);
    doc["hook"].clone()
}

/// Rewrites `<bundle>/config.json` with lancet's hook: a new file beside it
/// (same mode), renamed over it.
fn hook_bundle(bundle: &Path, hook: &Value) -> Result<()> {
    let path = bundle.join("config.json");
    let meta = std::fs::symlink_metadata(&path).with_context(|| format!("reading {}", path.display()))?;
    if !meta.file_type().is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut spec: Value = serde_json::from_slice(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    if !add_hook(&mut spec, hook).with_context(|| format!("in {}", path.display()))? {
        return Ok(());
    }
    let tmp = bundle.join(".config.json.lancet");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(meta.permissions().mode() & 0o7777)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    let written = f.write_all(&serde_json::to_vec(&spec)?).and_then(|()| f.sync_all());
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, &path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("replacing {}", path.display()));
    }
    Ok(())
}

/// `lancet hook runc`: hooks the bundle of a create or run, then becomes
/// runc. Returns only when runc could not be executed.
pub fn run(api: &str, runc: &Path, args: Vec<OsString>) -> Result<()> {
    if let Some(bundle) = bundle_of(&args) {
        let hooked =
            std::env::current_exe().context("finding lancet's own path").and_then(|exe| hook_bundle(&bundle, &hook_entry(&exe, api)));
        if let Err(e) = hooked {
            // Fail open: the container starts, unguarded until the agent
            // sees it.
            eprintln!("lancet hook runc: container not handed to the agent: {e:#}");
        }
    }
    let e = std::process::Command::new(runc).arg0("runc").args(&args).exec();
    Err(e).with_context(|| format!("executing {}", runc.display()))
}

/// The wrapper script `lancet hook install-runc` writes: the runtime calls
/// it with runc's arguments.
pub fn script(exe: &Path, api: &str, runc: &Path) -> String {
    let q = |s: &OsStr| format!("'{}'", s.to_string_lossy().replace('\'', r"'\''"));
    format!(
        "#!/bin/sh\n# Written by `lancet hook install-runc`: runc for Docker and containerd, with lancet's\n# OCI hook added to each container's spec (see lancet's docs/runtimes.md).\nexec {} --api {} hook runc --runc {} -- \"$@\"\n",
        q(exe.as_os_str()),
        q(OsStr::new(api)),
        q(runc.as_os_str())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_bundle_of_a_create_as_containerds_shim_calls_runc() {
        let shim = [
            "--root",
            "/run/containerd/runc/moby",
            "--log",
            "/run/containerd/io.containerd.runtime.v2.task/moby/abc/log.json",
            "--log-format",
            "json",
            "create",
            "--bundle",
            "/run/containerd/io.containerd.runtime.v2.task/moby/abc",
            "--pid-file",
            "/run/containerd/io.containerd.runtime.v2.task/moby/abc/init.pid",
            "abc",
        ];
        assert_eq!(bundle_of(&args(&shim)), Some(PathBuf::from("/run/containerd/io.containerd.runtime.v2.task/moby/abc")));
        assert_eq!(bundle_of(&args(&["--systemd-cgroup", "run", "-b=/b", "x"])), Some(PathBuf::from("/b")));
        assert_eq!(bundle_of(&args(&["create", "x"])), Some(PathBuf::from(".")), "runc's default: the working directory");
        for other in [&["--root", "/r", "start", "abc"][..], &["state", "create"], &["--log", "create", "delete", "abc"], &[]] {
            assert_eq!(bundle_of(&args(other)), None, "{other:?}");
        }
    }

    #[test]
    fn the_hook_is_added_once_beside_the_specs_own() {
        let hook = hook_entry(Path::new("/usr/bin/lancet"), "/run/lancet/lancet.sock");
        let mut spec = json!({"ociVersion": "1.0.2", "hooks": {"createRuntime": [{"path": "/bin/other"}], "poststop": []}});
        assert!(add_hook(&mut spec, &hook).unwrap());
        assert!(!add_hook(&mut spec, &hook).unwrap(), "a second time changes nothing");
        let stage = spec["hooks"]["createRuntime"].as_array().unwrap();
        assert_eq!(stage.len(), 2);
        assert_eq!(stage[1]["args"], json!(["lancet", "--api", "/run/lancet/lancet.sock", "hook", "oci"]));
        let mut bare = json!({"process": {}});
        assert!(add_hook(&mut bare, &hook).unwrap());
        assert_eq!(bare["hooks"]["createRuntime"][0]["path"], "/usr/bin/lancet");
        for bad in [json!([]), json!({"hooks": []}), json!({"hooks": {"createRuntime": {}}})] {
            assert!(add_hook(&mut bad.clone(), &hook).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bundle_is_rewritten_with_its_mode_and_a_bad_one_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join("config.json");
        std::fs::write(&cfg, r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"}}"#).unwrap();
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
        let hook = hook_entry(Path::new("/usr/bin/lancet"), "/s");
        hook_bundle(d.path(), &hook).unwrap();
        let v: Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
        assert_eq!(v["hooks"]["createRuntime"][0]["args"][4], "oci");
        assert_eq!(v["root"]["path"], "rootfs");
        assert_eq!(std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o7777, 0o600);
        assert!(!d.path().join(".config.json.lancet").exists());
        std::fs::write(&cfg, "not json").unwrap();
        assert!(hook_bundle(d.path(), &hook).is_err());
        assert_eq!(std::fs::read_to_string(&cfg).unwrap(), "not json", "left as it was");
        assert!(hook_bundle(&d.path().join("missing"), &hook).is_err());
    }

    #[test]
    fn the_script_quotes_what_it_is_given() {
        let s = script(Path::new("/opt/it's/lancet"), "/run/lancet/lancet.sock", Path::new("/usr/sbin/runc"));
        assert!(s.starts_with("#!/bin/sh\n"), "{s}");
        assert!(s.contains(r"exec '/opt/it'\''s/lancet' --api '/run/lancet/lancet.sock' hook runc --runc '/usr/sbin/runc' -- "), "{s}");
        assert!(s.ends_with("-- \"$@\"\n"), "{s}");
    }
}
