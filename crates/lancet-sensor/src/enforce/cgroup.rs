//! Container cgroups: their ids, and the freezer (the "freeze" rung of the
//! response ladder: every process of the container stops, nothing is lost,
//! thaw resumes it).
//!
//! The cgroup v2 freezer (`cgroup.freeze`, 5.2) is used when the cgroup has
//! it; it is part of the v2 core, not a controller, so it works in a hybrid
//! v1 + v2 setup too (verified on these hosts: kernel 6.18, v2 at
//! `/sys/fs/cgroup/unified`, a podman container froze and thawed through
//! `cgroup.freeze` while the v1 freezer hierarchy was also mounted). The v1
//! freezer (`<freezer mount>/<same relative path>/freezer.state`) is the
//! fallback for kernels before 5.2. No unsafe here.

use super::{EnforceError, Result};
use serde::Serialize;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long [`freeze`] and [`thaw`] wait for the kernel to finish.
pub const FREEZE_WAIT: Duration = Duration::from_secs(1);

/// The cgroup v2 id of a cgroup directory: its inode number (what
/// `bpf_get_current_cgroup_id()` returns for its tasks).
pub fn cgroup_id(dir: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(dir)?.ino())
}

/// The cgroup v2 directory of a process (`0::/…` in `/proc/<pid>/cgroup`)
/// under `cgroup2_root`.
pub fn cgroup_of_pid(pid: u32, cgroup2_root: &Path) -> io::Result<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("process {pid} has no cgroup v2 entry")))?;
    Ok(cgroup2_root.join(rel.trim_start_matches('/')))
}

/// Which freezer did the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FreezeBackend {
    /// `cgroup.freeze` (cgroup v2, 5.2).
    V2,
    /// `freezer.state` (cgroup v1 freezer controller).
    V1,
}

fn freeze_err(path: &Path, why: impl Into<String>) -> EnforceError {
    EnforceError::Freeze { path: path.to_path_buf(), why: why.into() }
}

/// Freezes every process of the cgroup v2 directory `dir` and waits (up to
/// [`FREEZE_WAIT`]) until the kernel reports it frozen.
pub fn freeze(dir: &Path) -> Result<FreezeBackend> {
    set_frozen(dir, true)
}

/// Thaws what [`freeze`] froze, and waits until it runs again.
pub fn thaw(dir: &Path) -> Result<FreezeBackend> {
    set_frozen(dir, false)
}

/// Whether the cgroup is frozen now (fully: every task stopped).
pub fn frozen(dir: &Path) -> Result<bool> {
    let events = dir.join("cgroup.events");
    if events.exists() && dir.join("cgroup.freeze").exists() {
        let text = std::fs::read_to_string(&events).map_err(|e| freeze_err(&events, e.to_string()))?;
        return Ok(v2_frozen(&text));
    }
    let state = v1_state_file(dir)?;
    let text = std::fs::read_to_string(&state).map_err(|e| freeze_err(&state, e.to_string()))?;
    Ok(text.trim() == "FROZEN")
}

fn v2_frozen(events: &str) -> bool {
    events.lines().any(|l| l.trim() == "frozen 1")
}

fn set_frozen(dir: &Path, freeze: bool) -> Result<FreezeBackend> {
    if !dir.is_dir() {
        return Err(freeze_err(dir, "no such cgroup"));
    }
    let ctl = dir.join("cgroup.freeze");
    if ctl.exists() {
        std::fs::write(&ctl, if freeze { "1" } else { "0" }).map_err(|e| freeze_err(&ctl, e.to_string()))?;
        let events = dir.join("cgroup.events");
        wait(dir, freeze, || std::fs::read_to_string(&events).map(|t| v2_frozen(&t)).map_err(|e| freeze_err(&events, e.to_string())))?;
        return Ok(FreezeBackend::V2);
    }
    let state = v1_state_file(dir)?;
    std::fs::write(&state, if freeze { "FROZEN" } else { "THAWED" }).map_err(|e| freeze_err(&state, e.to_string()))?;
    wait(dir, freeze, || std::fs::read_to_string(&state).map(|t| t.trim() == "FROZEN").map_err(|e| freeze_err(&state, e.to_string())))?;
    Ok(FreezeBackend::V1)
}

fn wait(dir: &Path, want: bool, mut is_frozen: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + FREEZE_WAIT;
    loop {
        if is_frozen()? == want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let what = if want { "frozen" } else { "thawed" };
            return Err(freeze_err(
                dir,
                format!("not {what} after {FREEZE_WAIT:?} (the kernel goes on trying; a task in an uninterruptible wait delays it)"),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `freezer.state` of the v1 cgroup at the same path as the v2 `dir`.
fn v1_state_file(dir: &Path) -> Result<PathBuf> {
    let direct = dir.join("freezer.state");
    if direct.exists() {
        return Ok(direct);
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| freeze_err(dir, e.to_string()))?;
    let v2_root = crate::probes::cgroup2_mount(&mountinfo)
        .ok_or_else(|| freeze_err(dir, "no cgroup.freeze, and no cgroup v2 mount to find the v1 freezer path from"))?;
    let rel = dir.strip_prefix(&v2_root).map_err(|_| freeze_err(dir, format!("not under the cgroup v2 mount {}", v2_root.display())))?;
    let v1 = v1_freezer_mount(&mountinfo)
        .ok_or_else(|| freeze_err(dir, "no cgroup.freeze (kernel before 5.2?) and no v1 freezer hierarchy mounted"))?;
    let state = v1.join(rel).join("freezer.state");
    if !state.exists() {
        return Err(freeze_err(dir, format!("no cgroup.freeze and no {}", state.display())));
    }
    Ok(state)
}

/// The mount point of the v1 freezer hierarchy in a mountinfo text.
fn v1_freezer_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let mut post = post.split_whitespace();
        if post.next()? != "cgroup" {
            return None;
        }
        let super_opts = post.nth(1)?;
        if !super_opts.split(',').any(|o| o == "freezer") {
            return None;
        }
        Some(PathBuf::from(pre.split_whitespace().nth(4)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_v1_freezer_mount() {
        let mi = "30 25 0:26 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory\n\
                  31 25 0:27 / /sys/fs/cgroup/freezer rw,relatime shared:10 - cgroup cgroup rw,freezer\n\
                  35 25 0:31 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw";
        assert_eq!(v1_freezer_mount(mi), Some(PathBuf::from("/sys/fs/cgroup/freezer")));
        assert_eq!(v1_freezer_mount("35 25 0:31 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw"), None);
    }

    #[test]
    fn reads_frozen_from_cgroup_events() {
        assert!(v2_frozen("populated 1\nfrozen 1\n"));
        assert!(!v2_frozen("populated 1\nfrozen 0\n"));
    }

    #[test]
    fn finds_the_v2_cgroup_of_this_process() {
        let Ok(text) = std::fs::read_to_string("/proc/self/cgroup") else { return };
        if !text.lines().any(|l| l.starts_with("0::")) {
            return;
        }
        let p = cgroup_of_pid(std::process::id(), Path::new("/sys/fs/cgroup/unified")).unwrap();
        assert!(p.starts_with("/sys/fs/cgroup/unified"));
    }
}
