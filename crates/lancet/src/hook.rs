//! The OCI hook: closes the race between a container's start and its
//! protection. Runtimes that read `hooks.d` (podman, CRI-O) run
//! `lancet hook oci` at the `createRuntime` stage: the container's cgroup
//! exists and its root filesystem is mounted, but its entrypoint has not run
//! one instruction yet. The hook hands the container to the agent, which
//! places the exec marks, network maps and kill flags of the container's
//! posture, and only then answers; the runtime waits for the hook.
//!
//! The hook talks to the agent over its control socket (`--api`, root
//! only) and sends only the container id, pid and bundle the runtime gave
//! it; the agent checks them against the hook's own process and the
//! runtime's state (`api::hook_identity`).
//!
//! The hook never blocks a container because of lancet: when the agent does
//! not answer within its timeout the hook says so on stderr and exits 0, and
//! the agent arms the container when it next sees it.

mod runc;

use crate::api::Client;
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Subcommand, Debug)]
pub enum HookCmd {
    /// Run as an OCI hook (reads the container state on stdin).
    Oci {
        /// How long to wait for the agent.
        #[arg(long, default_value = "8s", value_name = "DURATION")]
        timeout: String,
    },
    /// Write the hooks.d entry that makes podman and CRI-O call lancet.
    /// The default is the directory podman reads when `containers.conf`
    /// names none (podman 4.3 does not read `/etc/containers/oci/hooks.d`
    /// unless `hooks_dir` or `--hooks-dir` says so; CRI-O reads both).
    Install {
        #[arg(long, default_value = "/usr/share/containers/oci/hooks.d", value_name = "DIR")]
        dir: PathBuf,
    },
    /// Remove the hooks.d entry.
    Uninstall {
        #[arg(long, default_value = "/usr/share/containers/oci/hooks.d", value_name = "DIR")]
        dir: PathBuf,
    },
    /// Run as runc for runtimes that read no hooks.d (Docker, containerd):
    /// adds the hook to the spec of a `create` or `run`, then executes runc
    /// with the same arguments. Called by the script `install-runc` writes.
    Runc {
        /// The real runc.
        #[arg(long, default_value = "/usr/sbin/runc", value_name = "PATH")]
        runc: PathBuf,
        /// runc's arguments, after `--`.
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<std::ffi::OsString>,
    },
    /// Write the runc wrapper script that Docker (a `runtimes` entry in
    /// daemon.json) or containerd (runc's `BinaryName`, `ctr run
    /// --runc-binary`) is told to run instead of runc.
    InstallRunc {
        #[arg(long, default_value = "/usr/local/sbin/lancet-runc", value_name = "PATH")]
        path: PathBuf,
        /// The real runc the wrapper executes.
        #[arg(long, default_value = "/usr/sbin/runc", value_name = "PATH")]
        runc: PathBuf,
    },
}

pub const HOOK_FILE: &str = "lancet.json";

pub fn run(api: &str, cmd: HookCmd) -> Result<ExitCode> {
    match cmd {
        HookCmd::Oci { timeout } => {
            let timeout = crate::config::parse_duration(&timeout)?;
            let mut input = String::new();
            std::io::stdin().read_to_string(&mut input).context("reading the container state from stdin")?;
            if let Err(e) = oci(api, &input, timeout) {
                // Fail open: lancet must never stop a container from starting.
                eprintln!("lancet hook: container not handed to the agent: {e:#}");
            }
            Ok(ExitCode::SUCCESS)
        }
        HookCmd::Install { dir } => {
            let exe = std::env::current_exe().context("finding lancet's own path")?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let path = dir.join(HOOK_FILE);
            let doc = hook_document(&exe, &absolute_api(api)?);
            std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n").with_context(|| format!("writing {}", path.display()))?;
            println!("installed {}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        HookCmd::Runc { runc, args } => {
            runc::run(api, &runc, args)?;
            Ok(ExitCode::FAILURE)
        }
        HookCmd::InstallRunc { path, runc } => {
            use std::os::unix::fs::PermissionsExt;
            let exe = std::env::current_exe().context("finding lancet's own path")?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            std::fs::write(&path, runc::script(&exe, &absolute_api(api)?, &runc)).with_context(|| format!("writing {}", path.display()))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("making {} executable", path.display()))?;
            println!("installed {}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        HookCmd::Uninstall { dir } => {
            let path = dir.join(HOOK_FILE);
            match std::fs::remove_file(&path) {
                Ok(()) => println!("removed {}", path.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => println!("{} was not installed", path.display()),
                Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The API as the hook must name it: the runtime runs the hook from the
/// bundle, so a relative socket path would not lead back here.
fn absolute_api(api: &str) -> Result<String> {
    Ok(match api.strip_prefix("unix:").unwrap_or(api) {
        p if crate::api::client_is_socket(p) && !Path::new(p).is_absolute() => std::env::current_dir()?.join(p).display().to_string(),
        _ => api.to_string(),
    })
}

/// The hooks.d entry (format 1.0.0, as podman and CRI-O read it).
pub fn hook_document(exe: &Path, api: &str) -> Value {
    json!({
        "version": "1.0.0",
        "hook": {
            "path": exe,
            "args": ["lancet", "--api", api, "hook", "oci"],
            "timeout": 10
        },
        "when": { "always": true },
        "stages": ["createRuntime"]
    })
}

/// What the hook tells the agent: what the runtime gave it, nothing it
/// derived. The agent establishes the container's cgroup and root
/// filesystem itself, from the peer and the runtime's state (see
/// `api::hook_identity`).
#[derive(Debug, PartialEq, Eq)]
pub struct HookInfo {
    pub id: String,
    pub pid: u32,
    /// The bundle directory (absolute), as the runtime named it.
    pub bundle: String,
}

/// Reads the OCI state (`id`, `pid`, `bundle`).
pub fn parse_state(state: &str) -> Result<HookInfo> {
    let v: Value = serde_json::from_str(state).context("the container state on stdin is not JSON")?;
    let id = v["id"].as_str().context("the container state has no id")?.to_string();
    let pid = v["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).filter(|&p| p > 0).context("the container state has no pid")?;
    let bundle = v["bundle"].as_str().context("the container state has no bundle")?.to_string();
    Ok(HookInfo { id, pid, bundle })
}

fn oci(api: &str, state: &str, timeout: Duration) -> Result<()> {
    let info = parse_state(state)?;
    let client = Client::with_timeout(api, timeout);
    client.post_json("/v1/hook", &json!({ "id": info.id, "pid": info.pid, "bundle": info.bundle }))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_and_bundle() {
        let state = json!({"ociVersion":"1.0.2","id":"abc","status":"creating","pid":42,"bundle":"/run/x/abc/userdata","rootfs":"/evil"});
        let info = parse_state(&state.to_string()).unwrap();
        assert_eq!(info, HookInfo { id: "abc".into(), pid: 42, bundle: "/run/x/abc/userdata".into() });
    }

    #[test]
    fn bad_state_is_a_clear_error() {
        assert!(format!("{:#}", parse_state("nope").unwrap_err()).contains("not JSON"));
        assert!(format!("{:#}", parse_state(r#"{"id":"a","pid":0,"bundle":"/x"}"#).unwrap_err()).contains("no pid"));
        assert!(format!("{:#}", parse_state(r#"{"id":"a","pid":1}"#).unwrap_err()).contains("no bundle"));
    }

    #[test]
    fn document_shape() {
        let d = hook_document(Path::new("/usr/bin/lancet"), "/run/lancet/lancet.sock");
        assert_eq!(d["version"], "1.0.0");
        assert_eq!(d["stages"][0], "createRuntime");
        assert_eq!(d["hook"]["args"][4], "oci");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        const CONFIG: &str = r#"{"ociVersion":"1.0.2","process":{"args":["httpd","-f"],"cwd":"/"},"root":{"path":"rootfs","readonly":false},"hostname":"web"}"#;

        /// A valid JSON text changed by character flips, inserts and cuts.
        fn mutate(text: &str, edits: &[(prop::sample::Index, char, u8)]) -> String {
            let mut c: Vec<char> = text.chars().collect();
            for (i, ch, op) in edits {
                let at = i.index(c.len() + 1);
                match op {
                    0 if at < c.len() => c[at] = *ch,
                    1 => c.insert(at, *ch),
                    _ => c.truncate(at),
                }
            }
            c.into_iter().collect()
        }

        fn edits() -> impl Strategy<Value = Vec<(prop::sample::Index, char, u8)>> {
            proptest::collection::vec(
                (
                    any::<prop::sample::Index>(),
                    prop_oneof![any::<char>(), proptest::sample::select(vec!['{', '}', '"', ':', ',', '[', ']', '/'])],
                    0u8..3,
                ),
                0..6,
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn any_text_on_stdin_never_panics(text in any::<String>()) {
                let _ = parse_state(&text);
            }
        }

        /// The runtime's state (and a bundle config.json beside it), changed
        /// at random: an error, or what the state says (a real pid, the id,
        /// the bundle as named).
        #[test]
        fn states_and_bundle_configs() {
            let dir = tempfile::tempdir().unwrap();
            let bundle = dir.path().to_path_buf();
            let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(128));
            let pid = prop_oneof![
                any::<u64>().prop_map(Value::from),
                (1u64..100_000).prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                Just(Value::from("1")),
                Just(Value::Null)
            ];
            let id = prop_oneof![any::<String>().prop_map(Value::from), Just(Value::from(1)), Just(Value::Null)];
            runner
                .run(&(edits(), pid, id, any::<bool>()), |(e, pid, id, here)| {
                    let config = mutate(CONFIG, &e);
                    std::fs::write(bundle.join("config.json"), &config).unwrap();
                    let b = if here { json!(bundle) } else { json!("/nonexistent-lancet-bundle") };
                    let state = json!({"ociVersion": "1.0.2", "id": id, "status": "creating", "pid": pid, "bundle": b});
                    // The hook reads only the state; the agent reads the
                    // bundle itself (never trusting the hook's word for it).
                    if let Ok(info) = parse_state(&state.to_string()) {
                        prop_assert_eq!(Some(u64::from(info.pid)), pid.as_u64());
                        prop_assert!(info.pid > 0);
                        prop_assert_eq!(Some(info.id.as_str()), id.as_str());
                        prop_assert_eq!(Some(info.bundle.as_str()), b.as_str());
                    }
                    Ok(())
                })
                .unwrap();
        }
    }
}
