//! The process backend: kills at exec, in the kernel, what cannot be refused.

use super::{holds, merge_flags, Backend, Guarded, SharedEnforcer};
use lancet_sensor::enforce::PolicyFlags;

/// Kills, in the kernel at exec time, what the exec backend cannot refuse:
/// execs from memfds, tmpfs (`/dev/shm`) and deleted files.
pub(super) struct ProcessBackend {
    pub(super) enforcer: SharedEnforcer,
}

const KILL_FLAGS: PolicyFlags =
    PolicyFlags(PolicyFlags::KILL_MEMFD_EXEC.bits() | PolicyFlags::KILL_TMPFS_EXEC.bits() | PolicyFlags::KILL_DELETED_EXEC.bits());

impl Backend for ProcessBackend {
    fn name(&self) -> &'static str {
        "process (bpf_send_signal at exec, pidfd kill)"
    }

    fn availability(&self) -> Result<(), String> {
        holds(&self.enforcer.borrow(), "exec")
    }

    fn apply(&mut self, g: &Guarded) -> Result<(), String> {
        merge_flags(&mut self.enforcer.borrow_mut(), g.cgroup_id, KILL_FLAGS, PolicyFlags::NONE)
    }

    fn release(&mut self, g: &Guarded) {
        let _ = merge_flags(&mut self.enforcer.borrow_mut(), g.cgroup_id, PolicyFlags::NONE, KILL_FLAGS);
    }
}
