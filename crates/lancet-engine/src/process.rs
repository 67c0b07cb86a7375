//! A bounded table of live processes, kept from exec/fork/exit events, so an
//! event can name its parent's executable and a fanotify event (which only has
//! a pid) can find its cgroup without a syscall.

use crate::event::{Event, EventKind};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcEntry {
    pub exe: String,
    pub comm: String,
    pub cmdline: Vec<String>,
    pub ppid: u32,
    pub cgroup_id: u64,
    /// When it started (`start_boottime`, ns; 0 when unknown).
    pub start_ns: u64,
    /// The container runtime setting a container up (see
    /// [`ProcessRef::runtime`](crate::event::ProcessRef::runtime)).
    pub runtime: bool,
    /// What a consumer read of this process outside its records (the agent:
    /// whether /proc shows it setting a container up), kept until its next
    /// exec instead of read again at every event; None until asked.
    pub setup: Option<bool>,
}

/// `name` cut as the kernel cuts `comm` (15 bytes), on a character boundary.
fn as_comm(name: &str) -> String {
    let mut end = name.len().min(15);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

/// pid → what we know of it. Bounded: once full, an arbitrary entry makes
/// room, so a fork storm cannot grow the agent.
#[derive(Debug)]
pub struct ProcessTable {
    map: crate::FastMap<u32, ProcEntry>,
    capacity: usize,
    /// Exited in the current batch / the one before. fanotify reports a file
    /// event only when the agent reads it, often after the writer's exit
    /// record, so exited processes stay known for one more batch.
    exited_now: Vec<u32>,
    exited_before: Vec<u32>,
}

impl ProcessTable {
    pub fn new(capacity: usize) -> Self {
        ProcessTable {
            map: crate::FastMap::with_capacity_and_hasher(capacity.min(4096), Default::default()),
            capacity: capacity.max(1),
            exited_now: Vec::new(),
            exited_before: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, pid: u32) -> Option<&ProcEntry> {
        self.map.get(&pid)
    }

    pub fn get_mut(&mut self, pid: u32) -> Option<&mut ProcEntry> {
        self.map.get_mut(&pid)
    }

    pub fn insert(&mut self, pid: u32, entry: ProcEntry) {
        if self.map.len() >= self.capacity && !self.map.contains_key(&pid) {
            if let Some(&victim) = self.map.keys().next() {
                self.map.remove(&victim);
            }
        }
        self.map.insert(pid, entry);
    }

    /// Ends a batch of events: forgets the processes that exited in the
    /// batch before this one.
    pub fn end_batch(&mut self) {
        for pid in self.exited_before.drain(..) {
            self.map.remove(&pid);
        }
        std::mem::swap(&mut self.exited_before, &mut self.exited_now);
    }

    /// What the table knows of an event's process that its record lacks.
    fn fill_known(&self, ev: &mut Event) {
        let p = self.map.get(&ev.process.pid);
        ev.process.runtime = p.is_some_and(|p| p.runtime);
        // The name its exec gave it (see `observe`), when the kernel's is `exe`.
        if let Some(p) = p.filter(|p| ev.process.comm == "exe" && !p.comm.is_empty()) {
            ev.process.comm.clone_from(&p.comm);
        }
        if ev.process.start_ns == 0 {
            ev.process.start_ns = p.map_or(0, |p| p.start_ns);
        }
    }

    /// Updates the table from one event and fills in what the event lacked
    /// (the parent's executable on exec).
    pub fn observe(&mut self, ev: &mut Event) {
        let pid = ev.process.pid;
        match &mut ev.kind {
            EventKind::Exec(x) => {
                let parent = self.map.get(&ev.process.ppid);
                x.parent_exe = parent.map(|p| p.exe.clone()).filter(|e| !e.is_empty());
                // The probe says it from the kernel (exact); the table is
                // the fallback for sources that do not.
                x.parent_outside |= parent.is_some_and(|p| p.cgroup_id != 0 && p.cgroup_id != ev.cgroup_id);
                // Only the runtime starts a process inside a container from
                // outside it while still in the host's root and in the
                // mount namespace of the runtime that forked it. A container
                // process can get the host's root back (a chroot into a
                // `-v /:/host` mount), but not leave the container's mount
                // namespace for its parent's.
                let runtime = x.in_host_root && x.parent_outside && x.in_parent_mnt_ns;
                ev.process.runtime = runtime;
                // A re-exec of /proc/self/exe (busybox's applets) is named
                // `exe` by the kernel: name it what it runs as, as `comm`
                // would be (15 bytes).
                if let Some(name) = crate::drift::reexec_name(x) {
                    ev.process.comm = as_comm(name);
                }
                if ev.process.start_ns == 0 {
                    ev.process.start_ns = self.map.get(&pid).map_or(0, |p| p.start_ns);
                }
                self.insert(
                    pid,
                    ProcEntry {
                        exe: x.filename.clone(),
                        comm: ev.process.comm.clone(),
                        cmdline: x.argv.clone(),
                        ppid: ev.process.ppid,
                        cgroup_id: ev.cgroup_id,
                        start_ns: ev.process.start_ns,
                        runtime,
                        setup: None,
                    },
                );
            }
            EventKind::Fork { child_pid, child_start_ns } => {
                let parent = self.map.get(&pid);
                ev.process.runtime = parent.is_some_and(|p| p.runtime);
                if ev.process.start_ns == 0 {
                    ev.process.start_ns = parent.map_or(0, |p| p.start_ns);
                }
                let mut child = parent.cloned().unwrap_or_else(|| ProcEntry { comm: ev.process.comm.clone(), ..Default::default() });
                child.ppid = pid;
                child.cgroup_id = ev.cgroup_id;
                child.start_ns = *child_start_ns;
                // Read again for the child: what was read of the parent
                // (its root) may differ for it.
                child.setup = None;
                let child_pid = *child_pid;
                self.insert(child_pid, child);
            }
            EventKind::Exit(_) => {
                self.exited_now.push(pid);
                self.fill_known(ev);
            }
            _ => self.fill_known(ev),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ExecEvent, ExitEvent, ProcessRef};

    fn ev(pid: u32, ppid: u32, kind: EventKind) -> Event {
        Event { time_ns: 0, cgroup_id: 9, process: ProcessRef { pid, ppid, comm: "sh".into(), ..Default::default() }, kind }
    }

    #[test]
    fn exec_learns_parent_exe_through_fork() {
        let mut t = ProcessTable::new(16);
        let mut e = ev(10, 1, EventKind::Exec(ExecEvent { filename: "/bin/sh".into(), ..Default::default() }));
        t.observe(&mut e);
        t.observe(&mut ev(10, 1, EventKind::Fork { child_pid: 11, child_start_ns: 0 }));
        let mut child = ev(11, 10, EventKind::Exec(ExecEvent { filename: "/bin/id".into(), ..Default::default() }));
        t.observe(&mut child);
        let EventKind::Exec(x) = &child.kind else { panic!() };
        assert_eq!(x.parent_exe.as_deref(), Some("/bin/sh"));
        assert!(!x.parent_outside, "same cgroup");
        assert_eq!(t.get(11).map(|p| p.cgroup_id), Some(9));
        t.observe(&mut ev(11, 10, EventKind::Exit(ExitEvent { code: Some(0), signal: None })));
        t.end_batch();
        assert!(t.get(11).is_some(), "kept for one more batch");
        t.end_batch();
        assert!(t.get(11).is_none());
    }

    #[test]
    fn a_parent_in_another_cgroup_is_marked_outside() {
        let mut t = ProcessTable::new(16);
        t.insert(50, ProcEntry { exe: "/usr/bin/conmon".into(), cgroup_id: 1, ..Default::default() });
        let mut e = ev(51, 50, EventKind::Exec(ExecEvent { filename: "/bin/cp".into(), ..Default::default() }));
        t.observe(&mut e);
        let EventKind::Exec(x) = &e.kind else { panic!() };
        assert!(x.parent_outside);
        assert_eq!(x.parent_exe.as_deref(), Some("/usr/bin/conmon"), "the real parent is still reported");
    }

    #[test]
    fn the_runtime_is_in_the_hosts_root_and_its_parents_mount_namespace() {
        let mut t = ProcessTable::new(16);
        t.insert(50, ProcEntry { exe: "/usr/bin/runc".into(), cgroup_id: 1, ..Default::default() });
        let exec = |t: &mut ProcessTable, pid, in_parent_mnt_ns| {
            let x = ExecEvent { filename: "/bin/busybox".into(), in_host_root: true, in_parent_mnt_ns, ..Default::default() };
            let mut e = ev(pid, 50, EventKind::Exec(x));
            t.observe(&mut e);
            e.process.runtime
        };
        // runc init, before it enters the container.
        assert!(exec(&mut t, 51, true));
        // A container process chrooted into a bind mount of the host's root:
        // the host's root, but the container's mount namespace.
        assert!(!exec(&mut t, 52, false));
        // What it does next is its own too.
        let mut open = ev(52, 50, EventKind::Exit(ExitEvent { code: Some(0), signal: None }));
        t.observe(&mut open);
        assert!(!open.process.runtime);
        // And the runtime's forks are the runtime's until they exec.
        let mut fork = ev(51, 50, EventKind::Fork { child_pid: 53, child_start_ns: 7 });
        t.observe(&mut fork);
        assert!(fork.process.runtime);
        assert!(t.get(53).is_some_and(|p| p.runtime));
    }

    #[test]
    fn a_reexec_of_proc_self_exe_is_named_what_it_runs_as() {
        let mut t = ProcessTable::new(16);
        let x = ExecEvent {
            filename: "/proc/self/exe".into(),
            argv: vec!["nslookup-with-a-long-name".into(), "x".into()],
            ..Default::default()
        };
        let mut e = ev(20, 1, EventKind::Exec(x));
        e.process.comm = "exe".into();
        t.observe(&mut e);
        assert_eq!(e.process.comm, "nslookup-with-a", "cut as the kernel cuts comm");
        let mut later = ev(20, 1, EventKind::Exit(ExitEvent { code: Some(0), signal: None }));
        later.process.comm = "exe".into();
        t.observe(&mut later);
        assert_eq!(later.process.comm, "nslookup-with-a");
        // Any other exec keeps the kernel's name.
        let mut plain =
            ev(21, 1, EventKind::Exec(ExecEvent { filename: "/bin/exe".into(), argv: vec!["other".into()], ..Default::default() }));
        plain.process.comm = "exe".into();
        t.observe(&mut plain);
        assert_eq!(plain.process.comm, "exe");
    }

    #[test]
    fn start_times_follow_the_process() {
        let mut t = ProcessTable::new(16);
        let mut e = ev(10, 1, EventKind::Exec(ExecEvent { filename: "/bin/sh".into(), ..Default::default() }));
        e.process.start_ns = 1_000;
        t.observe(&mut e);
        // Later events of the pid carry the start its exec recorded.
        let mut fork = ev(10, 1, EventKind::Fork { child_pid: 11, child_start_ns: 2_000 });
        t.observe(&mut fork);
        assert_eq!(fork.process.start_ns, 1_000);
        // The child's own start, from the fork record, through its exec
        // (the exec record carries it too; a missing one is filled in).
        let mut child = ev(11, 10, EventKind::Exec(ExecEvent { filename: "/bin/id".into(), ..Default::default() }));
        t.observe(&mut child);
        assert_eq!(child.process.start_ns, 2_000);
        let mut exit = ev(11, 10, EventKind::Exit(ExitEvent { code: Some(0), signal: None }));
        t.observe(&mut exit);
        assert_eq!(exit.process.start_ns, 2_000);
    }

    #[test]
    fn table_stays_bounded() {
        let mut t = ProcessTable::new(4);
        for pid in 0..100 {
            t.insert(pid, ProcEntry::default());
        }
        assert_eq!(t.len(), 4);
        assert!(t.get(99).is_some());
    }
}
