//! Event storage reused from batch to batch.
//!
//! The agent's loop reads every source into one batch, handles it and starts
//! the next. An event's strings (a file's path, a process's `comm`) would be
//! allocated for each event and freed after it; here a source fills the next
//! slot in place instead, so the strings keep their capacity and a steady
//! stream of one kind of event allocates nothing.

use crate::event::{Event, EventKind, FileEvent, FileOp, ProcessRef};

/// Where a source writes events: a plain `Vec` (each event new), or an
/// [`EventBatch`] (slots reused).
pub trait EventSink {
    /// The next event to fill. What it holds is the previous content of the
    /// slot: the source overwrites every field.
    fn slot(&mut self) -> &mut Event;
    /// Gives back the slot last taken (the source found nothing to report).
    fn unclaim(&mut self);
    /// Events held.
    fn count(&self) -> usize;
}

impl EventSink for Vec<Event> {
    fn slot(&mut self) -> &mut Event {
        self.push(Event::default());
        let last = self.len() - 1;
        &mut self[last]
    }

    fn unclaim(&mut self) {
        self.pop();
    }

    fn count(&self) -> usize {
        self.len()
    }
}

/// A batch of events whose slots outlive the batch. Bounded: past
/// [`EventBatch::KEEP_BURST`] slots, what a burst grew is freed when the
/// batch ends; past [`EventBatch::KEEP`], once
/// [`EventBatch::SHRINK_AFTER`] batches in a row needed no more than
/// `KEEP` (bursts recur: the agent busy for a moment, the queue behind it
/// holds several times `KEEP`; freeing the slots at each burst's end made
/// the next one allocate its events' strings afresh, a tenth of `trace`'s
/// CPU on a file loop).
#[derive(Debug, Default)]
pub struct EventBatch {
    slots: Vec<Event>,
    len: usize,
    /// Batches in a row that needed no more than [`Self::KEEP`] slots.
    small: u32,
}

impl EventBatch {
    /// Slots kept across batches (a burst may use more; they are freed).
    pub const KEEP: usize = 4096;
    /// Slots a burst may leave for the next one (about 7 MiB of file events
    /// and their strings: 224 bytes each and some 200 of paths).
    pub const KEEP_BURST: usize = 16_384;
    /// Batches in a row within [`Self::KEEP`] after which a burst's slots
    /// are freed (10 s to 100 s: the loop ends a batch 10 to 100 times a
    /// second).
    pub const SHRINK_AFTER: u32 = 1000;

    pub fn new() -> Self {
        EventBatch::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn events(&self) -> &[Event] {
        &self.slots[..self.len]
    }

    pub fn events_mut(&mut self) -> &mut [Event] {
        &mut self.slots[..self.len]
    }

    /// Ends the batch; its slots stay for the next (see [`EventBatch`]).
    pub fn clear(&mut self) {
        self.small = if self.len > Self::KEEP { 0 } else { self.small.saturating_add(1) };
        self.len = 0;
        let keep = if self.small >= Self::SHRINK_AFTER { Self::KEEP } else { Self::KEEP_BURST };
        if self.slots.len() > keep {
            self.slots.truncate(keep);
            self.slots.shrink_to(keep);
        }
    }
}

impl EventSink for EventBatch {
    fn slot(&mut self) -> &mut Event {
        if self.len == self.slots.len() {
            self.slots.push(Event::default());
        }
        self.len += 1;
        &mut self.slots[self.len - 1]
    }

    fn unclaim(&mut self) {
        self.len = self.len.saturating_sub(1);
    }

    fn count(&self) -> usize {
        self.len
    }
}

/// `dst` set to `src`, in the capacity it has.
pub fn set_str(dst: &mut String, src: &str) {
    dst.clear();
    dst.push_str(src);
}

impl ProcessRef {
    /// Only `pid` known (a fanotify event): the rest cleared, `comm` kept
    /// as an empty string of the capacity it had.
    pub fn reset_to_pid(&mut self, pid: u32) {
        self.pid = pid;
        self.tid = 0;
        self.ppid = 0;
        self.uid = 0;
        self.gid = 0;
        self.comm.clear();
        self.start_ns = 0;
        self.runtime = false;
    }
}

impl Event {
    /// Makes this (reused) event a file event of process `pid`, seen at
    /// host path `path` (the container's view is set by attribution),
    /// keeping the strings' capacity when it was a file event already.
    pub fn set_file(&mut self, time_ns: u64, pid: u32, op: FileOp, path: &str, old_path: Option<&str>, is_dir: bool) {
        self.time_ns = time_ns;
        self.cgroup_id = 0;
        self.process.reset_to_pid(pid);
        if !matches!(self.kind, EventKind::File(_)) {
            self.kind = EventKind::File(FileEvent { op, path: String::new(), old_path: None, host_path: String::new(), is_dir });
        }
        if let EventKind::File(f) = &mut self.kind {
            f.op = op;
            f.is_dir = is_dir;
            set_str(&mut f.path, path);
            set_str(&mut f.host_path, path);
            match old_path {
                Some(old) => set_str(f.old_path.get_or_insert_with(String::new), old),
                None => f.old_path = None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_and_bounded() {
        let mut b = EventBatch::new();
        b.slot().set_file(1, 10, FileOp::Create, "/var/lib/x/diff/tmp/a", None, false);
        b.slot().set_file(2, 11, FileOp::Rename, "/b", Some("/a"), false);
        assert_eq!(b.len(), 2);
        let cap = match &b.events()[0].kind {
            EventKind::File(f) => f.path.capacity(),
            _ => panic!("not a file event"),
        };
        b.clear();
        assert!(b.is_empty());
        b.slot().set_file(3, 12, FileOp::Delete, "/c", None, true);
        let EventKind::File(f) = &b.events()[0].kind else { panic!("not a file event") };
        assert_eq!(
            (f.op, f.path.as_str(), f.host_path.as_str(), f.old_path.as_deref(), f.is_dir),
            (FileOp::Delete, "/c", "/c", None, true)
        );
        assert_eq!(f.path.capacity(), cap, "the slot's string was kept");
        assert_eq!(b.events()[0].process.pid, 12);
        // A burst grows the slots; they stay for the next burst, and what
        // is past the bound goes once batches stayed small for long enough.
        b.clear();
        for _ in 0..EventBatch::KEEP + 10 {
            b.slot();
        }
        b.clear();
        assert_eq!(b.slots.len(), EventBatch::KEEP + 10);
        for _ in 1..EventBatch::SHRINK_AFTER {
            b.slot();
            b.clear();
        }
        assert_eq!(b.slots.len(), EventBatch::KEEP + 10, "not yet");
        b.clear();
        assert!(b.slots.len() <= EventBatch::KEEP);
        // A burst past what may stay loses the rest at once.
        for _ in 0..EventBatch::KEEP_BURST + 10 {
            b.slot();
        }
        b.clear();
        assert_eq!(b.slots.len(), EventBatch::KEEP_BURST);
        // A slot given back is not an event.
        b.slot();
        b.unclaim();
        assert!(b.is_empty());
    }

    #[test]
    fn a_vec_is_a_sink_too() {
        let mut v: Vec<Event> = Vec::new();
        v.slot().set_file(1, 2, FileOp::Modify, "/x", None, false);
        v.slot();
        v.unclaim();
        assert_eq!(v.count(), 1);
        assert_eq!(v[0].kind.evt_type(), "write");
    }
}
