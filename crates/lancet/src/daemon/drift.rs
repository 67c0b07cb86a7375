//! Drift: what runs in a container that did not ship in its image. An exec
//! of a written, modified or made-executable file, from tmpfs or a memfd,
//! of a deleted file, or a file handed to the loader or an interpreter.

use super::Daemon;
use lancet_engine::attribution::ContainerInfo;
use lancet_engine::drift::{classify_exec, classify_indirect, indirect_target, Drift, DriftKind, FileFacts};
use lancet_engine::event::{Event, EventKind, FileOp};

impl Daemon {
    /// Drift of an exec (the file run, or the file handed to the loader or
    /// an interpreter) or of a chmod that made a file executable.
    pub(super) fn drift(&mut self, ev: &Event, c: &ContainerInfo, key: &str) -> Option<Drift> {
        let baseline = self.workloads.map.get(key).and_then(|w| w.profile.baseline());
        let upper = c.upper_dir();
        let facts = |path: &str| FileFacts {
            in_upper: upper.map(|u| lancet_sensor::fanotify::overlay::written_in_container(u, path)),
            in_baseline: baseline.map(|b| b.lookup(path).is_some()),
        };
        match &ev.kind {
            EventKind::Exec(x) => {
                if let Some(d) = classify_exec(x, self.writes.lookup(&c.id, &x.filename), facts(&x.filename)) {
                    return Some(d);
                }
                let (kind, target) = indirect_target(x)?;
                classify_indirect(kind, &target, self.writes.lookup(&c.id, &target), facts(&target))
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
                    origin: self.writes.lookup(&c.id, &f.path).cloned(),
                })
            }
            _ => None,
        }
    }
}
