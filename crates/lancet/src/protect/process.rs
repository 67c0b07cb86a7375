//! The process backend: kills at exec, in the kernel, what cannot be refused.

use super::{holds, merge_flags, Backend, Guarded, SharedEnforcer};
use lancet_sensor::enforce::{PolicyFlags, APPLET_NAME_MAX, BUSYBOX_DISPATCHER};
use lancet_sensor::sys::kernel_dev;
use std::collections::HashMap;

/// Kills, in the kernel at exec time, what the exec backend cannot refuse:
/// execs from memfds, tmpfs (`/dev/shm`) and deleted files; direct runs of
/// an ELF loader that was approved only as the interpreter of approved
/// programs (`ld.so FILE` runs FILE without an exec of it); and a file
/// reached under several names (a busybox applet) run under a name the
/// profile does not have (fanotify sees only the file, the kernel's exec
/// hook sees argv\[0\]).
pub(super) struct ProcessBackend {
    pub(super) enforcer: SharedEnforcer,
    /// The loaders on each cgroup's kill list, to take them off again.
    loaders: HashMap<u64, Vec<(u32, u64)>>,
    /// The multi-call files with name lists, per cgroup.
    multicall: HashMap<u64, Vec<(u32, u64)>>,
}

impl ProcessBackend {
    pub(super) fn new(enforcer: SharedEnforcer) -> Self {
        ProcessBackend { enforcer, loaders: HashMap::new(), multicall: HashMap::new() }
    }

    /// Puts each multi-call file's allowed names in the kernel; takes the
    /// lists of files no longer approved away.
    fn set_applets(&mut self, g: &Guarded) -> Result<(), String> {
        let e = self.enforcer.borrow();
        let mut files = Vec::new();
        for (file, names) in &g.approved.applets {
            let dispatcher = (file.path.rsplit('/').next() == Some(BUSYBOX_DISPATCHER)).then_some(BUSYBOX_DISPATCHER);
            let names: Vec<&str> = names
                .iter()
                .map(String::as_str)
                .filter(|n| {
                    // A name this long can never be matched safely, and the
                    // dispatcher's own name is judged by what follows it.
                    let ok = n.len() <= APPLET_NAME_MAX && !n.contains('/') && dispatcher.is_none_or(|d| !n.starts_with(d));
                    if !ok {
                        tracing::debug!(container = %g.name, file = %file.path, name = n, "name left out of the kernel applet list");
                    }
                    ok
                })
                .collect();
            let dev = kernel_dev(file.dev);
            e.set_applets(g.cgroup_id, dev, file.ino, dispatcher, &names).map_err(|e| e.to_string())?;
            files.push((dev, file.ino));
        }
        if let Some(old) = self.multicall.insert(g.cgroup_id, files.clone()) {
            for (dev, ino) in old.into_iter().filter(|o| !files.contains(o)) {
                let _ = e.forget_applets(g.cgroup_id, dev, ino);
            }
        }
        Ok(())
    }
}

const KILL_FLAGS: PolicyFlags = PolicyFlags(
    PolicyFlags::KILL_MEMFD_EXEC.bits()
        | PolicyFlags::KILL_TMPFS_EXEC.bits()
        | PolicyFlags::KILL_DELETED_EXEC.bits()
        | PolicyFlags::KILL_EXEC_INO.bits()
        | PolicyFlags::KILL_APPLET.bits(),
);

impl Backend for ProcessBackend {
    fn name(&self) -> &'static str {
        "process (bpf_send_signal at exec, pidfd kill)"
    }

    fn availability(&self) -> Result<(), String> {
        holds(&self.enforcer.borrow(), "exec")
    }

    fn apply(&mut self, g: &Guarded) -> Result<(), String> {
        let e = self.enforcer.borrow();
        let want: Vec<(u32, u64)> = g.approved.loaders.iter().map(|l| (kernel_dev(l.dev), l.ino)).collect();
        for &(dev, ino) in &want {
            e.kill_ino(g.cgroup_id, dev, ino).map_err(|e| e.to_string())?;
        }
        if let Some(old) = self.loaders.insert(g.cgroup_id, want.clone()) {
            for (dev, ino) in old.into_iter().filter(|o| !want.contains(o)) {
                let _ = e.forget_ino(g.cgroup_id, dev, ino);
            }
        }
        drop(e);
        self.set_applets(g)?;
        merge_flags(&mut self.enforcer.borrow_mut(), g.cgroup_id, KILL_FLAGS, PolicyFlags::NONE)
    }

    fn release(&mut self, g: &Guarded) {
        let _ = merge_flags(&mut self.enforcer.borrow_mut(), g.cgroup_id, PolicyFlags::NONE, KILL_FLAGS);
        for (dev, ino) in self.loaders.remove(&g.cgroup_id).unwrap_or_default() {
            let _ = self.enforcer.borrow().forget_ino(g.cgroup_id, dev, ino);
        }
        self.multicall.remove(&g.cgroup_id);
        let _ = self.enforcer.borrow().clear_applets(g.cgroup_id);
    }
}
