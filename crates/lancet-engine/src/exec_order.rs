//! The order in which a batch's events are handled, so that a process's
//! file events are told apart before and after its exec.
//!
//! A batch holds the file-change watcher's events first, then the probes'
//! records (execs among them). File events name only a pid: their process's
//! name, cgroup and whether it is still the container runtime come from the
//! process table, which an exec record updates. Handled in stream order, the
//! writes a process makes right after its exec (`podman exec c sh -c 'echo
//! x > f'`: `sh` is runc's init until its exec) would carry the identity it
//! had before, and the runtime's, whose setup writes are not the workload's.
//! Handling every exec first is no better: the runtime's own setup writes
//! before the exec would then look like the workload's.
//!
//! fanotify orders them exactly: the watcher also asks for `FAN_OPEN_EXEC`,
//! queued when `execve` opens the program, in the same queue as the
//! process's writes. Its file events after that mark are handled right after
//! its exec record; everything else keeps its place, so a file written (by
//! another process, or by this one before its exec) is still seen before an
//! exec that runs it, which drift reports rely on to name the writer.
//!
//! A process born in the batch (a shell's fork running a builtin applet, as
//! busybox runs `cp`) is not in the table until its fork record is handled:
//! its file events follow that record, which comes before any exec that
//! runs what it wrote.

use crate::event::{Event, EventKind};

/// Reused from batch to batch: a steady stream of file events without execs
/// or forks costs one check per batch and allocates nothing.
#[derive(Debug, Default)]
pub struct ExecOrder {
    order: Vec<u32>,
    /// Per pid with an exec mark: its current group (`-1`: before any mark)
    /// and whether one of its events came since its last mark.
    marked: crate::FastMap<u32, (i32, bool)>,
    /// File events moved behind an exec: (pid, group, index).
    deferred: Vec<(u32, i32, u32)>,
    /// Per marked pid: exec records in the rest of the batch, then seen.
    execs: crate::FastMap<u32, (u32, u32)>,
    /// Per file event: moved, and not yet placed.
    moved: Vec<bool>,
    /// Pids marked in the last batch whose exec record was not in it.
    carried: Vec<u32>,
    /// Pids forked in this batch (by the probes' records).
    forked: crate::FastSet<u32>,
}

/// Pids carried from one batch to the next at most.
const MAX_CARRIED: usize = 1024;

impl ExecOrder {
    pub fn new() -> Self {
        ExecOrder::default()
    }

    /// The order to handle `events` in, or None to handle them as they are.
    /// `files`: how many of the first events came from the file-change
    /// watcher; `marks`: (pid, position) of each exec it saw, the position
    /// being how many of its events came before the mark.
    ///
    /// Consecutive marks of one pid with none of its events between are one
    /// exec (a dynamic program's loader and a script's interpreter are
    /// opened for exec too). The k-th group of a pid's events goes after its
    /// k-th exec record; when the counts differ (an exec that failed after
    /// opening its program, a record in an earlier batch), the rest go after
    /// its last exec record, or at the end of the batch when it has none.
    ///
    /// An exec is marked when `execve` opens the program and recorded by the
    /// probe once it has replaced the process: the mark may come in one
    /// batch and the record in the next. A pid marked without a record is
    /// carried into the next batch (once), as marked before its first event.
    pub fn compute(&mut self, events: &[Event], files: usize, marks: &[(u32, usize)]) -> Option<&[u32]> {
        let files = files.min(events.len());
        self.marked.clear();
        for pid in self.carried.drain(..) {
            self.marked.insert(pid, (0, false));
        }
        self.forked.clear();
        if files > 0 {
            for ev in &events[files..] {
                if let EventKind::Fork { child_pid, .. } = ev.kind {
                    self.forked.insert(child_pid);
                }
            }
        }
        if marks.is_empty() && self.marked.is_empty() && self.forked.is_empty() {
            return None;
        }
        self.deferred.clear();
        let mut m = 0;
        let mark = |marked: &mut crate::FastMap<u32, (i32, bool)>, pid: u32| {
            let group = marked.entry(pid).or_insert((-1, true));
            if group.1 {
                *group = (group.0 + 1, false);
            }
        };
        for (i, ev) in events[..files].iter().enumerate() {
            while m < marks.len() && marks[m].1 <= i {
                mark(&mut self.marked, marks[m].0);
                m += 1;
            }
            let pid = ev.process.pid;
            let group = match self.marked.get_mut(&pid) {
                Some(group) => {
                    group.1 = true;
                    group.0
                }
                None => -1,
            };
            // Group -1 (before any exec): behind the fork record when the
            // process was born in this batch, else in place.
            if group >= 0 || self.forked.contains(&pid) {
                self.deferred.push((pid, group, i as u32));
            }
        }
        for &(pid, _) in &marks[m..] {
            mark(&mut self.marked, pid);
        }
        self.execs.clear();
        for ev in &events[files..] {
            if matches!(ev.kind, EventKind::Exec(_)) && self.marked.contains_key(&ev.process.pid) {
                self.execs.entry(ev.process.pid).or_insert((0, 0)).0 += 1;
            }
        }
        self.carried.extend(marks.iter().map(|m| m.0).filter(|pid| !self.execs.contains_key(pid)));
        self.carried.sort_unstable();
        self.carried.dedup();
        self.carried.truncate(MAX_CARRIED);
        if self.deferred.is_empty() {
            return None;
        }
        // By pid, then group, then place: a pid's group is one range.
        self.deferred.sort_unstable();
        self.moved.clear();
        self.moved.resize(files, false);
        for d in &self.deferred {
            self.moved[d.2 as usize] = true;
        }
        self.order.clear();
        self.order.extend((0..files as u32).filter(|&i| !self.moved[i as usize]));
        for (i, ev) in events.iter().enumerate().skip(files) {
            self.order.push(i as u32);
            let (pid, from, to) = match ev.kind {
                EventKind::Fork { child_pid, .. } => (child_pid, -1, -1),
                EventKind::Exec(_) => {
                    let pid = ev.process.pid;
                    let Some((total, seen)) = self.execs.get_mut(&pid) else { continue };
                    let k = *seen as i32;
                    *seen += 1;
                    // The last exec record takes every group left.
                    (pid, k, if *seen == *total { i32::MAX } else { k })
                }
                _ => continue,
            };
            let a = self.deferred.partition_point(|d| (d.0, d.1) < (pid, from));
            let b = self.deferred.partition_point(|d| (d.0, d.1) <= (pid, to));
            // Each once (a pid forked twice in a batch is one range).
            for d in &self.deferred[a..b] {
                if std::mem::take(&mut self.moved[d.2 as usize]) {
                    self.order.push(d.2);
                }
            }
        }
        // Exec groups of a pid without an exec record here: its record came
        // in an earlier batch (the table already has what it ran), or none
        // will come.
        let rest = self.order.len();
        self.order.extend((0..files as u32).filter(|&i| self.moved[i as usize]));
        self.order[rest..].sort_unstable();
        Some(&self.order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ExecEvent, FileOp, ProcessRef};

    fn file(pid: u32, path: &str) -> Event {
        let mut ev = Event { process: ProcessRef { pid, ..Default::default() }, ..Default::default() };
        ev.set_file(1, pid, FileOp::Create, path, None, false);
        ev
    }

    fn exec(pid: u32, filename: &str) -> Event {
        Event {
            process: ProcessRef { pid, ..Default::default() },
            kind: EventKind::Exec(ExecEvent { filename: filename.into(), ..Default::default() }),
            ..Default::default()
        }
    }

    fn order(events: &[Event], files: usize, marks: &[(u32, usize)]) -> Vec<u32> {
        let mut o = ExecOrder::new();
        let got = o.compute(events, files, marks).map(<[u32]>::to_vec).unwrap_or_else(|| (0..events.len() as u32).collect());
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..events.len() as u32).collect::<Vec<_>>(), "every event once: {got:?}");
        got
    }

    #[test]
    fn writes_after_an_exec_mark_follow_the_exec_record() {
        // runc init (7) writes its setup, execs sh, which writes /tmp/x;
        // another process (8) writes meanwhile.
        let evs = [file(7, "/etc/hosts"), file(8, "/var/log/a"), file(7, "/tmp/x"), exec(7, "/bin/sh")];
        assert_eq!(order(&evs, 3, &[(7, 2)]), [0, 1, 3, 2]);
        // The mark before 8's write: 8's write keeps its place.
        assert_eq!(order(&evs, 3, &[(7, 1)]), [0, 1, 3, 2]);
    }

    #[test]
    fn nothing_moves_without_a_mark_or_without_later_writes() {
        let mut o = ExecOrder::new();
        let evs = [file(7, "/a"), exec(7, "/bin/sh")];
        assert!(o.compute(&evs, 1, &[]).is_none());
        assert!(o.compute(&evs, 1, &[(7, 1)]).is_none(), "the mark after its last write");
        assert!(o.compute(&evs, 1, &[(9, 0)]).is_none(), "another pid's exec");
    }

    #[test]
    fn a_file_written_then_run_is_seen_before_the_exec() {
        // cp (5) writes /tmp/t; sh (6) runs it: nothing of 5 moves.
        let evs = [file(5, "/tmp/t"), exec(6, "/tmp/t")];
        assert_eq!(order(&evs, 1, &[(6, 1)]), [0, 1]);
        // A process writing a file and running it itself: the write and the
        // exec's open merged into one record, marked after the write.
        let evs = [file(5, "/tmp/t"), exec(5, "/tmp/t")];
        assert_eq!(order(&evs, 1, &[(5, 1)]), [0, 1]);
    }

    #[test]
    fn each_exec_takes_the_writes_that_followed_its_mark() {
        // sh execs a dynamic program (program and loader marked), which
        // writes, then execs another, which writes.
        let evs = [file(7, "/a"), file(7, "/b"), file(7, "/c"), exec(7, "/bin/one"), exec(7, "/bin/two")];
        assert_eq!(order(&evs, 3, &[(7, 1), (7, 1), (7, 2), (7, 2)]), [0, 3, 1, 4, 2]);
        // One exec record only (the first came in an earlier batch): the
        // groups it lacks go after the last exec record.
        let evs = [file(7, "/a"), file(7, "/b"), exec(7, "/bin/two")];
        assert_eq!(order(&evs, 2, &[(7, 0), (7, 1)]), [2, 0, 1]);
        // No exec record at all: at the end, after the other sources.
        let evs = [file(7, "/a"), file(8, "/b"), exec(9, "/bin/x")];
        assert_eq!(order(&evs, 2, &[(7, 0)]), [1, 2, 0]);
    }

    #[test]
    fn a_mark_whose_record_comes_in_the_next_batch_is_carried_once() {
        let mut o = ExecOrder::new();
        // Batch 1: runc init (7) opens sh for exec; its record is not there yet.
        let one = [file(8, "/a"), exec(9, "/bin/x")];
        assert!(o.compute(&one, 1, &[(7, 1)]).is_none());
        // Batch 2: sh's first write, then the record of its exec.
        let two = [file(7, "/tmp/x1"), file(8, "/b"), exec(7, "/bin/sh")];
        assert_eq!(o.compute(&two, 2, &[]).map(<[u32]>::to_vec), Some(vec![1, 2, 0]));
        // Batch 3: nothing carried any more.
        let three = [file(7, "/tmp/x2"), exec(7, "/bin/sh")];
        assert!(o.compute(&three, 1, &[]).is_none());
        // A mark with its record in the same batch is not carried.
        let four = [file(5, "/c"), exec(6, "/bin/y")];
        assert!(o.compute(&four, 1, &[(6, 1)]).is_none());
        assert!(o.compute(&[file(6, "/d"), exec(6, "/bin/y")], 1, &[]).is_none());
    }

    #[test]
    fn a_process_born_in_the_batch_writes_after_its_fork_record() {
        let fork = |parent: u32, child: u32| Event {
            process: ProcessRef { pid: parent, ..Default::default() },
            kind: EventKind::Fork { child_pid: child, child_start_ns: 1 },
            ..Default::default()
        };
        // sh (7) forks cp (8), which writes /tmp/lg; sh runs it.
        let evs = [file(8, "/tmp/lg"), file(9, "/x"), fork(7, 8), exec(7, "/tmp/lg")];
        assert_eq!(order(&evs, 2, &[(7, 2)]), [1, 2, 0, 3]);
        // Forked, then exec-marked: before the mark behind the fork, after
        // it behind the exec.
        let evs = [file(8, "/a"), file(8, "/b"), fork(7, 8), exec(8, "/bin/cat")];
        assert_eq!(order(&evs, 2, &[(8, 1)]), [2, 0, 3, 1]);
        // A fork with nothing of the child's among the file events.
        let evs = [file(9, "/x"), fork(7, 8)];
        assert_eq!(order(&evs, 1, &[]), [0, 1]);
    }

    #[test]
    fn marks_past_the_file_events_and_out_of_range_counts_are_harmless() {
        let evs = [file(7, "/a"), exec(7, "/bin/sh")];
        assert_eq!(order(&evs, 1, &[(7, 0), (7, 99)]), [1, 0]);
        assert_eq!(order(&evs, 0, &[(7, 0)]), [0, 1]);
        // More file events claimed than the batch holds: clamped.
        assert_eq!(order(&evs, 5, &[(7, 0)]), [0, 1]);
    }

    proptest::proptest! {
        /// Whatever the batch and the marks: every event once, the other
        /// sources in their order, and an unmarked pid's writes in theirs.
        #[test]
        fn a_permutation_that_moves_only_marked_writes(
            files in proptest::collection::vec(1u32..5, 0..12),
            rest in proptest::collection::vec((1u32..5, 0u8..3), 0..8),
            mut marks in proptest::collection::vec((1u32..4, 0usize..14), 0..6),
        ) {
            marks.sort_by_key(|m| m.1);
            let mut evs: Vec<Event> = files.iter().map(|&p| file(p, "/f")).collect();
            evs.extend(rest.iter().map(|&(p, kind)| match kind {
                0 => file(p, "/g"),
                1 => exec(p, "/x"),
                _ => Event { kind: EventKind::Fork { child_pid: p, child_start_ns: 1 }, ..Default::default() },
            }));
            let got = order(&evs, files.len(), &marks);
            let pos = |i: usize| got.iter().position(|&x| x as usize == i).unwrap();
            for i in files.len()..evs.len() {
                for j in i + 1..evs.len() {
                    proptest::prop_assert!(pos(i) < pos(j), "the other sources keep their order: {got:?}");
                }
            }
            for i in 0..files.len() {
                for j in i + 1..files.len() {
                    if files[i] == files[j] && files[i] == 4 && !rest.contains(&(4, 2)) {
                        proptest::prop_assert!(pos(i) < pos(j), "unmarked, unforked pid 4: {got:?}");
                    }
                }
            }
        }
    }
}
