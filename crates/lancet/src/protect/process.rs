//! The process backend: kills at exec, in the kernel, what cannot be refused.

use super::{holds, merge_flags, Backend, Guarded, SharedEnforcer};
use lancet_sensor::enforce::{kernel_dev, PolicyFlags};
use std::collections::HashMap;

/// Kills, in the kernel at exec time, what the exec backend cannot refuse:
/// execs from memfds, tmpfs (`/dev/shm`) and deleted files, and direct runs
/// of an ELF loader that was approved only as the interpreter of approved
/// programs (`ld.so FILE` runs FILE without an exec of it).
pub(super) struct ProcessBackend {
    pub(super) enforcer: SharedEnforcer,
    /// The loaders on each cgroup's kill list, to take them off again.
    loaders: HashMap<u64, Vec<(u32, u64)>>,
}

impl ProcessBackend {
    pub(super) fn new(enforcer: SharedEnforcer) -> Self {
        ProcessBackend { enforcer, loaders: HashMap::new() }
    }
}

const KILL_FLAGS: PolicyFlags = PolicyFlags(
    PolicyFlags::KILL_MEMFD_EXEC.bits()
        | PolicyFlags::KILL_TMPFS_EXEC.bits()
        | PolicyFlags::KILL_DELETED_EXEC.bits()
        | PolicyFlags::KILL_EXEC_INO.bits(),
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
        merge_flags(&mut self.enforcer.borrow_mut(), g.cgroup_id, KILL_FLAGS, PolicyFlags::NONE)
    }

    fn release(&mut self, g: &Guarded) {
        let _ = merge_flags(&mut self.enforcer.borrow_mut(), g.cgroup_id, PolicyFlags::NONE, KILL_FLAGS);
        for (dev, ino) in self.loaders.remove(&g.cgroup_id).unwrap_or_default() {
            let _ = self.enforcer.borrow().forget_ino(g.cgroup_id, dev, ino);
        }
    }
}
