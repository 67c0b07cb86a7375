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

/// The slot of an event's type in [`EVENT_TYPES`] (a match, not a string
/// search: this runs for every event).
pub(crate) fn index(k: &EventKind) -> usize {
    use lancet_engine::event::{FileOp, NetOp};
    match k {
        EventKind::Exec(_) => 0,
        EventKind::Fork { .. } => 1,
        EventKind::Exit(_) => 2,
        EventKind::Net(n) => match n.op {
            NetOp::Connect => 3,
            NetOp::Accept => 4,
            NetOp::Listen => 5,
            NetOp::Bind => 6,
            NetOp::Close => 7,
        },
        EventKind::File(f) => match f.op {
            FileOp::Create => 8,
            FileOp::Modify => 9,
            FileOp::Delete => 10,
            FileOp::Rename => 11,
            FileOp::Chmod => 12,
            FileOp::Open => 13,
        },
        EventKind::CgroupMkdir { .. } => 14,
        EventKind::CgroupRmdir { .. } => 15,
    }
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
        // Every slot is named by its type's own evt.type.
        use lancet_engine::event::{FileEvent, FileOp, NetEvent, NetOp, Protocol};
        let net = |op| {
            EventKind::Net(NetEvent {
                op,
                proto: Protocol::Tcp,
                saddr: [0u8; 4].into(),
                sport: 0,
                daddr: [0u8; 4].into(),
                dport: 0,
                result: 0,
                netns: 0,
                totals: None,
            })
        };
        let file = |op| EventKind::File(FileEvent { op, path: String::new(), old_path: None, host_path: String::new(), is_dir: false });
        let kinds = [
            EventKind::Exec(Default::default()),
            EventKind::Fork { child_pid: 1, child_start_ns: 0 },
            EventKind::Exit(ExitEvent { code: None, signal: None }),
            net(NetOp::Connect),
            net(NetOp::Accept),
            net(NetOp::Listen),
            net(NetOp::Bind),
            net(NetOp::Close),
            file(FileOp::Create),
            file(FileOp::Modify),
            file(FileOp::Delete),
            file(FileOp::Rename),
            file(FileOp::Chmod),
            file(FileOp::Open),
            EventKind::CgroupMkdir { id: 1, path: String::new() },
            EventKind::CgroupRmdir { id: 1, path: String::new() },
        ];
        for k in &kinds {
            assert_eq!(EVENT_TYPES[index(k)], k.evt_type());
        }
    }
}
