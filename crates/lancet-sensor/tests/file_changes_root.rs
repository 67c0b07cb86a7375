//! File changes on one filesystem reached through several mounts of it, as
//! root, on the real kernel. The runtimes lay their storage out this way on
//! a host with one disk: containers/storage bind-mounts
//! `/var/lib/containers/storage/overlay` onto itself, dockerd
//! `/var/lib/docker`, and containerd's snapshots stay on the root mount.
//! One filesystem mark sees every container's writes, but a file handle
//! resolves to a path only through a mount that holds it: resolved through
//! another bind mount, the kernel answers `/`, and the write is lost (a
//! Docker container's writes never appeared while a podman container's
//! storage was marked first). Each mount below stands for one runtime's
//! storage; every one must be reported with its own path whichever was
//! marked first. The bind mounts are the test's own, under a temporary
//! directory, and are unmounted however the test ends.

use lancet_engine::event::{Event, EventKind, FileOp};
use lancet_sensor::fanotify::FileChangeWatcher;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A directory bind-mounted onto itself, unmounted on drop.
struct SelfBind(PathBuf);

impl SelfBind {
    fn new(dir: &Path) -> Result<SelfBind, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let out = Command::new("mount").arg("--bind").arg(dir).arg(dir).output().map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount --bind {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(SelfBind(dir.to_path_buf()))
    }
}

impl Drop for SelfBind {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
    }
}

fn skip_reason() -> Option<String> {
    if !lancet_sensor::features::is_root() {
        return Some("not root: fanotify filesystem marks and bind mounts need CAP_SYS_ADMIN".into());
    }
    None
}

/// Writes `file` from a child process (the watcher drops its own events),
/// then waits until the watcher reports its creation and write.
fn written(w: &mut FileChangeWatcher, file: &Path, seen: &mut Vec<Event>) -> Result<(), String> {
    let st = Command::new("sh").arg("-c").arg("echo lancet > \"$1\"").arg("sh").arg(file).status().map_err(|e| e.to_string())?;
    assert!(st.success(), "writing {}", file.display());
    let want = file.to_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        w.read_events(seen).map_err(|e| e.to_string())?;
        let has =
            |op: FileOp| seen.iter().any(|e| matches!(&e.kind, EventKind::File(f) if f.op == op && f.path == want && f.host_path == want));
        if has(FileOp::Create) && has(FileOp::Modify) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let got: Vec<String> = seen
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::File(f) => Some(format!("{:?} {}", f.op, f.path)),
            _ => None,
        })
        .collect();
    Err(format!("no create and write of {want}; saw {got:?}"))
}

#[test]
fn writes_under_every_bind_mount_of_one_filesystem_are_reported_with_their_paths() {
    if let Some(why) = skip_reason() {
        lancet_testkit::skip(&why);
        return;
    }
    // /var/tmp: on the host's disk here, like the runtimes' storage.
    let base = tempfile::Builder::new().prefix("lancet-binds-").tempdir_in("/var/tmp").expect("tempdir");
    // Two runtimes' storage, each a bind mount of its own, and a third
    // directory on the plain mount (containerd's snapshots).
    let podman = SelfBind::new(&base.path().join("containers-overlay")).expect("bind mount");
    let docker = SelfBind::new(&base.path().join("docker")).expect("bind mount");
    let plain = base.path().join("containerd");
    let uppers: Vec<PathBuf> = [&podman.0, &docker.0, &plain].iter().map(|d| d.join("c1").join("diff")).collect();
    for u in &uppers {
        std::fs::create_dir_all(u).unwrap();
    }
    // Each order of marking: the first marked used to decide how every
    // later container's handles were resolved.
    for first in 0..uppers.len() {
        let order: Vec<&PathBuf> = uppers.iter().cycle().skip(first).take(uppers.len()).collect();
        let mut w = FileChangeWatcher::new().expect("fanotify");
        for u in &order {
            w.add_filesystem(u).unwrap_or_else(|e| panic!("mark {}: {e}", u.display()));
        }
        w.set_path_filter(order.iter().map(|u| (*u).clone()).collect());
        // Changes in directories deleted before they are read (the host's
        // builds, anywhere on this disk) cannot be placed and would pass
        // the filter as `?/<name>`: only placed paths are judged here.
        w.set_emit_unresolved(false);
        let mut seen = Vec::new();
        for (i, u) in order.iter().enumerate() {
            let file = u.join(format!("written-{first}-{i}"));
            if let Err(e) = written(&mut w, &file, &mut seen) {
                panic!("marked first: {}; {e}", order[0].display());
            }
        }
        // Nothing outside the armed directories is reported, whichever
        // mount it is reached through.
        let outside = base.path().join("docker").join("elsewhere");
        std::fs::create_dir_all(&outside).unwrap();
        let _ = Command::new("sh").arg("-c").arg("echo x > \"$1\"").arg("sh").arg(outside.join("f")).status();
        std::thread::sleep(Duration::from_millis(200));
        seen.clear();
        w.read_events(&mut seen).unwrap();
        let leaked: Vec<String> = seen
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::File(f) if !uppers.iter().any(|u| Path::new(&f.path).starts_with(u)) => Some(f.path.clone()),
                _ => None,
            })
            .collect();
        assert!(leaked.is_empty(), "reported outside the filter: {leaked:?}");
    }
    drop(podman);
    drop(docker);
}
