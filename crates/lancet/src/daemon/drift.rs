//! Drift: what runs in a container that did not ship in its image. An exec
//! of a written, modified or made-executable file, from tmpfs or a memfd,
//! of a deleted file, or a file handed to the loader or an interpreter.

use super::numbers::ContainerNo;
use super::Daemon;
use lancet_engine::attribution::ContainerInfo;
use lancet_engine::drift::{classify_exec, classify_indirect, indirect_target, Drift, DriftKind, FileFacts};
use lancet_engine::event::{Event, EventKind, FileOp};

impl Daemon {
    /// Drift of an exec (the file run, or the file handed to the loader or
    /// an interpreter) or of a chmod that made a file executable.
    pub(super) fn drift(&mut self, ev: &Event, c: &ContainerInfo, n: Option<ContainerNo>, key: &str) -> Option<Drift> {
        if !matches!(&ev.kind, EventKind::Exec(_)) && !matches!(&ev.kind, EventKind::File(f) if f.op == FileOp::Chmod && !f.is_dir) {
            return None;
        }
        let baseline = self.workloads.map.get(key).and_then(|w| w.profile.baseline());
        let upper = c.upper_dir().map(|u| crate::protect::on_host(&self.settings.protect.host_root, u));
        // Unknown (the upper dir unreadable, a path with `..`) is never
        // taken for "not written".
        let facts = |path: &str| FileFacts {
            in_upper: upper.as_deref().map(|u| lancet_sensor::overlay::written_or_unknown(u, path)),
            in_baseline: baseline.map(|b| b.lookup(path).is_some()),
        };
        let written = |path: &str| self.writes.lookup(n?, path);
        match &ev.kind {
            EventKind::Exec(x) => {
                if let Some(d) = classify_exec(x, written(&x.filename).as_ref(), facts(&x.filename)) {
                    return Some(d);
                }
                let (kind, target) = indirect_target(x)?;
                classify_indirect(kind, &target, written(&target).as_ref(), facts(&target))
            }
            EventKind::File(f) if f.op == FileOp::Chmod && !f.is_dir => {
                use std::os::unix::fs::PermissionsExt;
                // Never the target of a symlink, and only a regular file
                // runs: a unix socket or FIFO made 0777 (PostgreSQL's
                // `.s.PGSQL.5432`) is not an executable.
                let meta = std::fs::symlink_metadata(&f.host_path).ok()?;
                let mode = meta.permissions().mode();
                let shipped_executable = baseline.and_then(|b| b.lookup(&f.path)).is_some();
                (meta.file_type().is_file() && mode & 0o111 != 0 && !shipped_executable).then(|| Drift {
                    kind: DriftKind::MadeExecutable,
                    path: f.path.clone(),
                    origin: written(&f.path),
                })
            }
            _ => None,
        }
    }

    /// While learning: the content hash of an executable run from one of
    /// the container's mounts other than its image root (a volume, an
    /// emptyDir), once, so that protect mode can run it while its content
    /// is unchanged. Files over 64 MiB are not hashed.
    pub(super) fn learn_content(&mut self, ev: &Event, c: &ContainerInfo, key: &str) {
        use std::os::unix::fs::MetadataExt;
        const MAX: u64 = 64 << 20;
        let EventKind::Exec(x) = &ev.kind else { return };
        let Some(live) = self.workloads.live(&c.id) else { return };
        let Some(w) = self.workloads.map.get_mut(key) else { return };
        if w.profile.executable(&x.filename).is_none_or(|e| e.sha256.is_some()) {
            return;
        }
        let root = std::path::PathBuf::from(format!("/proc/{}/root", live.pid));
        let Ok(root_dev) = std::fs::metadata(&root).map(|m| m.dev()) else { return };
        if x.exe_dev == lancet_sensor::sys::kernel_dev(root_dev) {
            return;
        }
        let Some(inside) = crate::protect::resolve_in_root(&root, &x.filename) else { return };
        let Ok(file) = std::fs::File::open(root.join(inside.trim_start_matches('/'))) else { return };
        match file.metadata() {
            Ok(m) if m.dev() != root_dev && m.ino() == x.exe_ino => {}
            _ => return,
        }
        if let Some(h) = crate::protect::content_sha256(file, MAX) {
            if w.profile.set_sha256(&x.filename, &h) {
                tracing::info!(container = %c.name, path = %x.filename, "executable outside the image learned by content");
                w.changed();
            }
        }
    }
}
