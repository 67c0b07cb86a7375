//! Real Docker Engine containers and networks for root tests (Debian's
//! docker.io 20.10, started by `scripts/engines.sh`), removed when their
//! values drop, like [`crate::podman`]'s and made by the same code.

use crate::engine::{engine_types, Engine};
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// Debian's Docker client. `docker` on `PATH` may be another (these machines
/// have a Docker 28 client without an engine in `/usr/local/bin`).
pub const DOCKER: &str = "/usr/bin/docker";

/// The busybox test image, loaded into Docker from podman's by
/// `scripts/setup.sh` (the same image id).
pub const BUSYBOX_IMAGE: &str = crate::podman::BUSYBOX_IMAGE;

/// The bare Debian minbase rootfs, `docker import`ed by `scripts/setup.sh`
/// the way a user would (`CMD ["/bin/bash"]`).
pub const MINBASE_IMAGE: &str = "localhost/lancet-minbase:test";

/// The script that starts containerd and dockerd by hand when they are
/// not answering (idempotent).
pub const ENGINES_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/engines.sh");

/// Runs Docker; its trimmed stdout, or its stderr as the error.
pub fn try_docker(args: &[&str]) -> Result<String, String> {
    Engine::Docker.try_cli(args)
}

/// Runs Docker, which must succeed; its trimmed stdout.
pub fn docker(args: &[&str]) -> String {
    Engine::Docker.cli(args)
}

/// Makes sure containerd and dockerd answer, starting them with
/// [`ENGINES_SCRIPT`] (once per test process) when they do not.
pub fn engines_up() -> Result<(), String> {
    static UP: OnceLock<Result<(), String>> = OnceLock::new();
    UP.get_or_init(|| {
        for (bin, pkg) in [(DOCKER, "docker.io"), ("/usr/bin/ctr", "containerd")] {
            if !Path::new(bin).exists() {
                return Err(format!("{bin} is missing: {pkg} is not installed (scripts/setup.sh installs it)"));
            }
        }
        if try_docker(&["version"]).is_ok() && crate::containerd::try_ctr(&["version"]).is_ok() {
            return Ok(());
        }
        let out = Command::new("bash").arg(ENGINES_SCRIPT).output().map_err(|e| format!("running {ENGINES_SCRIPT}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{ENGINES_SCRIPT} could not start the engines: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
    })
    .clone()
}

/// Why Docker tests cannot run here (engines down and not startable, or a
/// test image missing), or None.
pub fn not_ready(images: &[&str]) -> Option<String> {
    if let Err(e) = engines_up() {
        return Some(e);
    }
    images
        .iter()
        .find(|i| try_docker(&["image", "inspect", "-f", "{{.Id}}", i]).is_err())
        .map(|i| format!("test image {i} is missing in Docker (scripts/setup.sh loads it)"))
}

engine_types!(Engine::Docker, "Docker");
