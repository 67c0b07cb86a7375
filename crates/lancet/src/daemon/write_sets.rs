//! Each live container's writable set (see `lancet_engine::write_sets`),
//! read once per container life from inside its mount namespace, and the
//! anchors outside it already alerted in that life: a write outside both
//! sets is alerted once per anchor per container life, not per file.

use super::numbers::ContainerNo;
use crate::agent::trusted_pid;
use lancet_engine::attribution::ContainerInfo;
use lancet_engine::write_sets::{WritableKind, WritableSet};
use lancet_sensor::mounts::{self, RunAs};
use std::collections::HashSet;
use std::time::Duration;

/// Anchors remembered as alerted per container life; past it each new
/// anchor is still alerted (and deduplicated by the alert pipeline).
const MAX_ALERTED: usize = 1024;
/// A set that could not be read (the process went mid-lookup) is tried
/// again after this long; until then the default set (scratch) holds.
const RETRY: Duration = Duration::from_secs(2);
/// How long the container's process found for a set stays believed: a
/// restart (another process, another life) is seen within this. (Its
/// cgroup's removal, the usual sign, forgets the set at once.)
const PID_CHECK: Duration = Duration::from_secs(1);

struct ContainerWrites {
    /// The process the set was read through: another one means another
    /// run of the container (a restart), whose life starts afresh.
    pid: u32,
    set: WritableSet,
    /// Read for real (not the default after a failure).
    complete: bool,
    /// When it was read (an event's time, ns since the epoch).
    read_at: u64,
    /// When the container's process was last checked to be `pid` (the same).
    pid_checked_at: u64,
    alerted: HashSet<String>,
}

#[derive(Default)]
pub(super) struct WriteSets {
    /// By container number.
    map: lancet_engine::FastMap<ContainerNo, ContainerWrites>,
    /// The set last read for a container without a number (every number
    /// taken): lent to the caller like a remembered one, read again at
    /// the container's next write.
    unnumbered: WritableSet,
}

impl WriteSets {
    /// The writable set of container `c` (number `n`, None when every
    /// number is taken), whose live process `live_pid` says (0 when none
    /// is known; asked only when the set is checked again), with the
    /// directories its policies declare.
    /// Read on first use, again for a new run and after a policy reload.
    /// `now` is the event's time (ns since the epoch): the clock is not
    /// read per write (a clock that steps back only delays a re-check).
    pub(super) fn set_for<'a>(
        &mut self,
        c: &ContainerInfo,
        n: Option<ContainerNo>,
        live_pid: impl FnOnce() -> u32,
        now: u64,
        declared: impl Iterator<Item = &'a str>,
    ) -> &WritableSet {
        let since = |at: u64| Duration::from_nanos(now.saturating_sub(at));
        // The container's process now (asked of /proc: only when needed).
        let pid_now = || trusted_pid(c).unwrap_or_else(live_pid);
        let Some(n) = n else {
            self.unnumbered = read_with(pid_now(), declared).0;
            return &self.unnumbered;
        };
        // The process to read the set through, when it must be read again.
        let stale = match self.map.get_mut(&n) {
            Some(w) => {
                let fresh = w.complete || since(w.read_at) < RETRY;
                // Which process is the container's is asked of /proc at
                // most once per PID_CHECK, not at every write.
                if fresh && since(w.pid_checked_at) < PID_CHECK {
                    None
                } else {
                    let pid = pid_now();
                    if fresh && (w.pid == pid || pid == 0) {
                        w.pid_checked_at = now;
                        None
                    } else {
                        Some(pid)
                    }
                }
            }
            None => Some(pid_now()),
        };
        if let Some(pid) = stale {
            let (set, complete) = read_with(pid, declared);
            // The anchors alerted stay for the same life (a re-read after
            // a failure or a policy reload), not for a new run.
            let alerted = match self.map.remove(&n) {
                Some(w) if w.pid == pid => w.alerted,
                _ => HashSet::new(),
            };
            self.map.insert(n, ContainerWrites { pid, set, complete, read_at: now, pid_checked_at: now, alerted });
        }
        &self.map[&n].set
    }

    /// Whether `anchor` is alerted for the first time in this container's
    /// life (and remembers it).
    pub(super) fn first_alert(&mut self, n: Option<ContainerNo>, anchor: &str) -> bool {
        let Some(w) = n.and_then(|n| self.map.get_mut(&n)) else { return true };
        if w.alerted.contains(anchor) {
            return false;
        }
        if w.alerted.len() < MAX_ALERTED {
            w.alerted.insert(anchor.to_string());
        }
        true
    }

    /// Policies changed: every set is read again at its next use (the
    /// anchors alerted stay: it is the same container life).
    pub(super) fn policies_changed(&mut self) {
        for w in self.map.values_mut() {
            w.complete = false;
            w.read_at = 0;
            w.pid_checked_at = 0;
        }
    }

    pub(super) fn forget(&mut self, n: ContainerNo) {
        self.map.remove(&n);
    }
}

/// The set read through process `pid`, with the directories declared, and
/// whether it was read (else it is the default set).
fn read_with<'a>(pid: u32, declared: impl Iterator<Item = &'a str>) -> (WritableSet, bool) {
    let (mut set, complete) = match read(pid) {
        Some(s) => (s, true),
        None => (WritableSet::default(), false),
    };
    for d in declared {
        set.add(d, WritableKind::Policy);
    }
    (set, complete)
}

/// Reads the set through process `pid`; None when it cannot be read.
fn read(pid: u32) -> Option<WritableSet> {
    if pid == 0 {
        return None;
    }
    match mounts::writable_set(pid, None, run_as(pid)) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::debug!(pid, "writable set not read: {e}");
            None
        }
    }
}

/// Who the container's service runs as: the real uid and gid of its
/// process (`/proc/<pid>/status`).
pub(crate) fn run_as(pid: u32) -> Option<RunAs> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_ids(&status)
}

fn parse_ids(status: &str) -> Option<RunAs> {
    let first = |key: &str| -> Option<u32> { status.lines().find_map(|l| l.strip_prefix(key))?.split_whitespace().next()?.parse().ok() };
    Some(RunAs { uid: first("Uid:")?, gid: first("Gid:")? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_from_proc_status() {
        let s = "Name:\tredis-server\nUid:\t100\t100\t100\t100\nGid:\t101\t101\t101\t101\n";
        assert_eq!(parse_ids(s), Some(RunAs { uid: 100, gid: 101 }));
        assert_eq!(parse_ids("Uid:\tx\nGid:\t1\n"), None);
        assert_eq!(parse_ids(""), None);
    }

    #[test]
    fn anchors_are_alerted_once_per_life() {
        let mut w = WriteSets::default();
        let c = ContainerInfo { id: "c".repeat(64), ..Default::default() };
        let n = Some(7);
        // No process: the default set, not remembered as complete.
        let set = w.set_for(&c, n, || 0, 1_800_000_000_000_000_000, ["/srv/app"].into_iter());
        assert_eq!(set.covering("/srv/app/x").map(|d| d.kind), Some(WritableKind::Policy));
        assert!(set.covering("/tmp/x").is_some());
        assert!(w.first_alert(n, "/srv/www"));
        assert!(!w.first_alert(n, "/srv/www"));
        assert!(w.first_alert(n, "/srv/other"));
        w.forget(7);
        assert!(w.first_alert(n, "/srv/www"), "a container not followed alerts");
        // Without a number (every one taken): the set all the same.
        let set = w.set_for(&c, None, || 0, 1_800_000_000_000_000_000, ["/srv/app"].into_iter());
        assert_eq!(set.covering("/srv/app/x").map(|d| d.kind), Some(WritableKind::Policy));
        assert!(w.first_alert(None, "/srv/www") && w.first_alert(None, "/srv/www"));
    }
}
