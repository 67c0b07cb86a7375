//! Real podman containers and networks for root tests, each removed when
//! its value drops (also when the test panics), and names that never
//! collide between parallel tests or with leftovers of earlier runs.

use crate::engine::{engine_types, Engine};

/// The busybox test image `scripts/setup.sh` builds locally (never pulled).
pub const BUSYBOX_IMAGE: &str = "localhost/lancet-busybox:test";

/// `prefix-<pid>-<nanos>`: unique per test process and call.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{nanos:x}", std::process::id())
}

/// Runs podman; its trimmed stdout, or its stderr as the error.
pub fn try_podman(args: &[&str]) -> Result<String, String> {
    Engine::Podman.try_cli(args)
}

/// Runs podman, which must succeed; its trimmed stdout.
pub fn podman(args: &[&str]) -> String {
    Engine::Podman.cli(args)
}

engine_types!(Engine::Podman, "podman");
