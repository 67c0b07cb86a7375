//! Real containerd containers for root tests, run with `ctr` (Debian's
//! containerd 1.6, started by `scripts/engines.sh`) in a namespace of the
//! tests' own, each removed with its task and snapshot when its value drops.
//! A container's id is its name (`ctr run IMAGE ID`); its cgroup is
//! `/<namespace>/<id>`, as `ctr` makes it. For a network, give it a
//! [`crate::netns::Netns`] to join.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The containerd namespace of the tests (`scripts/setup.sh` imports the
/// test image into it).
pub const NAMESPACE: &str = "lancet-ctr";

/// The busybox test image, imported into [`NAMESPACE`] from podman's by
/// `scripts/setup.sh`.
pub const BUSYBOX_IMAGE: &str = crate::podman::BUSYBOX_IMAGE;

/// Runs `ctr -n NAMESPACE ARGS…`; its trimmed stdout, or its stderr as the
/// error.
pub fn try_ctr(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ctr").args(["-n", NAMESPACE]).args(args).output().map_err(|e| format!("running ctr: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!("ctr {args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Runs `ctr -n NAMESPACE ARGS…`, which must succeed; its trimmed stdout.
pub fn ctr(args: &[&str]) -> String {
    try_ctr(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Why containerd tests cannot run here (engines down and not startable,
/// or a test image missing), or None.
pub fn not_ready(images: &[&str]) -> Option<String> {
    if let Err(e) = crate::docker::engines_up() {
        return Some(e);
    }
    let list = match try_ctr(&["images", "ls", "-q"]) {
        Ok(l) => l,
        Err(e) => return Some(e),
    };
    images
        .iter()
        .find(|i| !list.lines().any(|l| l.trim() == **i))
        .map(|i| format!("test image {i} is missing in containerd's namespace {NAMESPACE} (scripts/setup.sh imports it)"))
}

/// A containerd container with a running task, removed (task killed and
/// deleted, container and snapshot deleted) when dropped.
#[derive(Debug)]
pub struct Container {
    /// Its id, which is also its name.
    pub id: String,
    pub name: String,
}

impl Container {
    /// `ctr run -d --null-io EXTRA… IMAGE ID CMD…` (EXTRA: `--with-ns
    /// network:<path>`, `--label k=v`, `--runc-binary <path>`…).
    pub fn start(id: &str, image: &str, extra: &[&str], cmd: &[&str]) -> Container {
        // Removed on drop even if `run` fails half-way.
        let c = Container { id: id.to_string(), name: id.to_string() };
        let mut args = vec!["run", "-d", "--null-io"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[image, id]);
        args.extend_from_slice(cmd);
        ctr(&args);
        c
    }

    /// `ctr task exec` of `cmd` in the container (its exit status is the
    /// process's).
    pub fn exec(&self, cmd: &[&str]) -> Output {
        let exec_id = crate::podman::unique("exec");
        Command::new("ctr")
            .args(["-n", NAMESPACE, "task", "exec", "--exec-id", &exec_id, &self.id])
            .args(cmd)
            .output()
            .expect("ctr task exec")
    }

    /// `sh -c SCRIPT` in the container.
    pub fn sh(&self, script: &str) -> Output {
        self.exec(&["sh", "-c", script])
    }

    /// The host pid of the task's first process.
    pub fn pid(&self) -> u32 {
        self.task_field(1).and_then(|p| p.parse().ok()).expect("the task's pid")
    }

    pub fn running(&self) -> bool {
        self.task_field(2).as_deref() == Some("RUNNING")
    }

    /// A column of the task's line in `ctr task ls` (TASK PID STATUS).
    fn task_field(&self, column: usize) -> Option<String> {
        let list = try_ctr(&["task", "ls"]).ok()?;
        list.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.first() == Some(&self.id.as_str()))?
            .get(column)
            .map(|s| s.to_string())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = try_ctr(&["task", "kill", "-s", "SIGKILL", &self.id]);
        // `task delete` refuses a task that has not stopped yet.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = try_ctr(&["task", "delete", "-f", &self.id]);
        let _ = try_ctr(&["containers", "delete", &self.id]);
    }
}
