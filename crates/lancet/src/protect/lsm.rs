//! BPF-LSM: listed with the reason it does not hold, never pretended.

use super::{Backend, Guarded};

/// BPF-LSM would refuse execs, opens and connects in the kernel without a
/// userspace round trip; it is reported, not pretended, where the kernel
/// refuses LSM programs.
pub(super) struct LsmBackend {
    pub(super) reason: String,
}

impl Backend for LsmBackend {
    fn name(&self) -> &'static str {
        "bpf-lsm"
    }

    fn availability(&self) -> Result<(), String> {
        Err(self.reason.clone())
    }

    fn apply(&mut self, _: &Guarded) -> Result<(), String> {
        Err(self.reason.clone())
    }

    fn release(&mut self, _: &Guarded) {}
}
