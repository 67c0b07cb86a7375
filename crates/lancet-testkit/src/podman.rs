//! Real podman containers and networks for root tests, each removed when
//! its value drops (also when the test panics), and names that never
//! collide between parallel tests or with leftovers of earlier runs.

use std::process::{Command, Output};

/// The busybox test image `scripts/setup.sh` builds locally (never pulled).
pub const BUSYBOX_IMAGE: &str = "localhost/lancet-busybox:test";

/// `prefix-<pid>-<nanos>`: unique per test process and call.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{nanos:x}", std::process::id())
}

/// Runs podman; its trimmed stdout, or its stderr as the error.
pub fn try_podman(args: &[&str]) -> Result<String, String> {
    let out = Command::new("podman").args(args).output().map_err(|e| format!("running podman: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!("podman {args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Runs podman, which must succeed; its trimmed stdout.
pub fn podman(args: &[&str]) -> String {
    try_podman(args).unwrap_or_else(|e| panic!("{e}"))
}

/// A podman container, removed (`rm -f`) when dropped.
#[derive(Debug)]
pub struct Container {
    /// The id podman printed, or the name for an adopted container.
    pub id: String,
    pub name: String,
}

impl Container {
    /// `podman run -d --name NAME EXTRA… BUSYBOX_IMAGE CMD…`.
    pub fn start(name: &str, extra: &[&str], cmd: &[&str]) -> Container {
        Self::start_image(name, BUSYBOX_IMAGE, extra, cmd)
    }

    /// `podman run -d --name NAME EXTRA… IMAGE CMD…`.
    pub fn start_image(name: &str, image: &str, extra: &[&str], cmd: &[&str]) -> Container {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(extra);
        args.push(image);
        args.extend_from_slice(cmd);
        // Removed on drop even if `run` fails half-way (created, not started).
        let mut c = Container::adopt(name);
        c.id = podman(&args);
        c
    }

    /// `podman run -d ARGS…` (the name, if any, among `args`).
    pub fn run(args: &[&str]) -> Container {
        let mut all = vec!["run", "-d"];
        all.extend_from_slice(args);
        let id = podman(&all);
        let name = try_podman(&["inspect", "-f", "{{.Name}}", &id]).unwrap_or_else(|_| id.clone());
        Container { id, name }
    }

    /// A container made some other way, now removed on drop.
    pub fn adopt(name: &str) -> Container {
        Container { id: name.to_string(), name: name.to_string() }
    }

    pub fn exec(&self, cmd: &[&str]) -> Output {
        let mut args = vec!["exec", self.id.as_str()];
        args.extend_from_slice(cmd);
        Command::new("podman").args(&args).output().expect("podman exec")
    }

    /// `sh -c SCRIPT` in the container.
    pub fn sh(&self, script: &str) -> Output {
        self.exec(&["sh", "-c", script])
    }

    pub fn pid(&self) -> u32 {
        podman(&["inspect", "-f", "{{.State.Pid}}", &self.id]).parse().expect("pid")
    }

    pub fn running(&self) -> bool {
        podman(&["inspect", "-f", "{{.State.Running}}", &self.id]) == "true"
    }

    /// Its IPv4 address on its (first) network.
    pub fn ip(&self) -> String {
        podman(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", &self.id])
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rm", "-f", "-t", "0", &self.id]).output();
    }
}

/// A podman network, removed when dropped (declare it before the
/// containers on it, so they drop first).
#[derive(Debug)]
pub struct Network(pub String);

impl Network {
    pub fn create(name: &str) -> Network {
        podman(&["network", "create", name]);
        Network(name.to_string())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["network", "rm", "-f", &self.0]).output();
    }
}
