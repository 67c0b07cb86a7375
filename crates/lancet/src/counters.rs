//! What the event loop counts for `/metrics`: events by type (Falco's
//! `evt.type` names, a fixed set: no per-container label), records lost
//! in the kernel per probe, undecodable records, fanotify overflows and
//! events no container claimed. Plain integers, bumped on the loop's own
//! thread; read there when metrics are asked for.

use lancet_engine::event::EventKind;

/// Every `evt.type` an event can have, in the order of
/// [`LoopCounters::events`].
pub const EVENT_TYPES: [&str; 16] = [
    "execve",
    "clone",
    "procexit",
    "connect",
    "accept",
    "listen",
    "bind",
    "close",
    "creat",
    "write",
    "unlink",
    "rename",
    "chmod",
    "open",
    "cgroup_mkdir",
    "cgroup_rmdir",
];

fn index(k: &EventKind) -> usize {
    let t = k.evt_type();
    EVENT_TYPES.iter().position(|x| *x == t).unwrap_or(0)
}

#[derive(Debug, Clone, Default)]
pub struct LoopCounters {
    pub events: [u64; EVENT_TYPES.len()],
    pub decode_errors: u64,
    /// Events whose cgroup no runtime claimed.
    pub unknown_attribution: u64,
    /// Records dropped in the kernel (ring buffer full), per probe.
    pub lost: Vec<(&'static str, u64)>,
    /// fanotify queue overflows (file changes, sensitive opens).
    pub file_overflows: u64,
}

impl LoopCounters {
    pub fn note(&mut self, k: &EventKind) {
        self.events[index(k)] += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lancet_engine::event::ExitEvent;

    #[test]
    fn every_type_has_a_slot() {
        let mut c = LoopCounters::default();
        c.note(&EventKind::Exit(ExitEvent { code: Some(0), signal: None }));
        c.note(&EventKind::CgroupRmdir { id: 1, path: String::new() });
        assert_eq!((c.events[2], c.events[15]), (1, 1));
        assert_eq!(EVENT_TYPES.iter().collect::<std::collections::HashSet<_>>().len(), EVENT_TYPES.len());
    }
}
