//! The agent's flow table: one row per (source, destination, port,
//! protocol) for the current hour, fed from the event loop.
//!
//! The table is allocated once, at its full size, when it is made: keys
//! are small `Copy` values (containers by number, addresses inline), so a
//! connection costs one hash lookup and never an allocation, and memory
//! cannot grow past [`FlowTable::memory_bound`] whatever arrives.
//!
//! A source that opens more than [`FlowLimits::scan_new_keys`] new flows a
//! minute (a port or address scan), or any new flow once the table is full,
//! is summarised: its further new flows are counted in one row per source
//! (outbound, to [`Endpoint::Others`], port 0) or per destination and port
//! (inbound, from [`Endpoint::Others`]) instead of a row each. Nothing is
//! dropped silently: what is summarised, and what even the summary rows had
//! no room for, is counted ([`FlowCounters`]), and the first summarised flow
//! of a scan is reported to the caller so that it can raise an alert.

use super::FlowCounters;
use crate::profile::Protocol;
use ahash::RandomState;
use std::collections::HashMap;
use std::net::IpAddr;

/// A local container, by the number the caller gave it.
pub type NodeId = u32;

/// A rule, by the number the caller gave it (for what is not in the
/// profile: a policy rule, a resolver allowed by default).
pub type RuleId = u32;

/// One end of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// A container on this host.
    Container(NodeId),
    /// The host itself, at one of its own addresses.
    Host(IpAddr),
    /// An address that belongs to no container of this host.
    Ip(IpAddr),
    /// Many peers summarised as one.
    Others,
}

/// What a row is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Who opened the connection.
    pub src: Endpoint,
    /// Who accepted it.
    pub dst: Endpoint,
    /// The destination port.
    pub port: u16,
    pub proto: Protocol,
}

impl FlowKey {
    /// The local container whose flow this is, and whether it is outbound
    /// from it: the source when the source is a container, else the
    /// destination.
    pub fn local(&self) -> (Endpoint, bool) {
        match self.src {
            Endpoint::Container(_) => (self.src, true),
            _ => (self.dst, false),
        }
    }

    /// The row a new flow of this key is counted in when it is summarised.
    fn summary(&self) -> FlowKey {
        match self.local() {
            (local, true) => FlowKey { src: local, dst: Endpoint::Others, port: 0, proto: self.proto },
            (local, false) => FlowKey { src: Endpoint::Others, dst: local, port: self.port, proto: self.proto },
        }
    }
}

/// How a flow was judged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// The deciding workload is learning: allowed, and learned.
    #[default]
    Learning,
    /// Allowed by a profile entry or a rule.
    Allowed,
    /// Not in the profile: alerted in monitor mode, refused in protect mode.
    Unlisted,
    /// Refused by lancet in protect mode.
    Refused,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Learning => "learning",
            Verdict::Allowed => "allowed",
            Verdict::Unlisted => "unlisted",
            Verdict::Refused => "refused",
        }
    }

    pub fn parse(s: &str) -> Option<Verdict> {
        Some(match s {
            "learning" => Verdict::Learning,
            "allowed" => Verdict::Allowed,
            "unlisted" => Verdict::Unlisted,
            "refused" => Verdict::Refused,
            _ => return None,
        })
    }
}

/// What decided a verdict, kept as numbers and put into words only when
/// rows are written out (once a second, not once a connection).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Decider {
    #[default]
    None,
    /// The deciding workload's profile entry: its `inbound` or `outbound`
    /// list, by position.
    Entry { inbound: bool, index: u32 },
    /// No entry of the profile covers it.
    NotInProfile { inbound: bool },
    /// Refused by the kernel's allow-list (`isolated`: the container was
    /// isolated).
    AllowList { isolated: bool },
    /// A rule the caller numbered.
    Rule(RuleId),
}

/// A row's counters since it was last drained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Since the last drain.
    pub counts: FlowCounters,
    pub verdict: Verdict,
    pub decider: Decider,
    dirty: bool,
}

/// One observation of a flow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observation {
    pub time_ns: u64,
    pub connections: u64,
    pub failed: u64,
    pub refused: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// None keeps the row's verdict (a close record judges nothing).
    pub verdict: Option<(Verdict, Decider)>,
}

impl FlowStats {
    fn add(&mut self, o: &Observation) {
        self.counts.merge(&FlowCounters {
            connections: o.connections,
            failed: o.failed,
            refused: o.refused,
            bytes_out: o.bytes_out,
            bytes_in: o.bytes_in,
            first_ns: o.time_ns,
            last_ns: o.time_ns,
        });
        if let Some((v, d)) = o.verdict {
            self.verdict = v;
            self.decider = d;
        }
        self.dirty = true;
    }
}

/// The table's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowLimits {
    /// Rows of their own.
    pub max_rows: usize,
    /// Summary rows, beyond `max_rows`.
    pub summary_rows: usize,
    /// New flows a minute from one local container (either direction)
    /// past which its new flows are summarised.
    pub scan_new_keys: u32,
    /// Local containers whose new flows are counted for scans.
    pub scan_sources: usize,
}

impl Default for FlowLimits {
    fn default() -> Self {
        FlowLimits { max_rows: 16_384, summary_rows: 1024, scan_new_keys: 256, scan_sources: 4096 }
    }
}

/// Why a new flow went to a summary row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    Scan,
    Full,
}

/// Where an observation went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Row,
    /// Counted in a summary row. `scan_started`: this local container just
    /// went past the scan threshold (once per scan window).
    Summarised {
        why: Summary,
        scan_started: bool,
    },
    /// Not even a summary row had room; only counted.
    Dropped,
}

/// What was summarised or dropped since the table was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SummaryCounts {
    /// New flows counted in a summary row because their source scanned.
    pub summarised_scan: u64,
    /// New flows counted in a summary row because the table was full.
    pub summarised_full: u64,
    /// New flows with no row and no summary row: only counted here.
    pub dropped: u64,
    /// Scans seen (a local container past the threshold in a window).
    pub scans: u64,
}

const SCAN_WINDOW_NS: u64 = 60_000_000_000;
const HOUR_NS: u64 = 3_600_000_000_000;

#[derive(Debug, Clone, Copy)]
struct Window {
    start_ns: u64,
    new_keys: u32,
    summarising: bool,
}

/// The flow table. See the module documentation.
#[derive(Debug)]
pub struct FlowTable {
    limits: FlowLimits,
    rows: HashMap<FlowKey, FlowStats, RandomState>,
    /// Rows that are not summaries.
    regular: usize,
    scans: HashMap<(Endpoint, bool), Window, RandomState>,
    hour_ns: u64,
    pub counters: SummaryCounts,
}

impl FlowTable {
    /// A table with all its memory allocated now (see [`memory_bound`]).
    ///
    /// [`memory_bound`]: FlowTable::memory_bound
    pub fn new(limits: FlowLimits) -> FlowTable {
        FlowTable {
            rows: HashMap::with_capacity_and_hasher(limits.max_rows + limits.summary_rows, RandomState::new()),
            scans: HashMap::with_capacity_and_hasher(limits.scan_sources, RandomState::new()),
            regular: 0,
            hour_ns: 0,
            limits,
            counters: SummaryCounts::default(),
        }
    }

    /// Rows held now (summaries included): the `flows tracked` metric.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn limits(&self) -> FlowLimits {
        self.limits
    }

    /// An upper bound of the bytes the table's maps allocate, however many
    /// distinct flows arrive: hashbrown's buckets (a power of two at least
    /// 8/7 of the capacity) times an entry plus its control byte, plus one
    /// group of control bytes.
    pub fn memory_bound(limits: &FlowLimits) -> usize {
        fn map_bytes(capacity: usize, entry: usize) -> usize {
            let buckets = (capacity.saturating_mul(8) / 7 + 1).next_power_of_two();
            buckets * (entry + 1) + 16
        }
        map_bytes(limits.max_rows + limits.summary_rows, std::mem::size_of::<(FlowKey, FlowStats)>())
            + map_bytes(limits.scan_sources, std::mem::size_of::<((Endpoint, bool), Window)>())
    }

    /// Whether `key` has a row of its own this hour.
    pub fn has_row(&self, key: &FlowKey) -> bool {
        self.rows.contains_key(key)
    }

    /// Counts one observation. No allocation: the maps were sized when the
    /// table was made, and an insert happens only below that size.
    pub fn record(&mut self, key: FlowKey, o: &Observation) -> Recorded {
        if let Some(s) = self.rows.get_mut(&key) {
            s.add(o);
            return Recorded::Row;
        }
        let (scanning, scan_started) = self.note_new_key(key.local(), o.time_ns);
        if !scanning && self.regular < self.limits.max_rows {
            let mut s = FlowStats::default();
            s.add(o);
            self.rows.insert(key, s);
            self.regular += 1;
            return Recorded::Row;
        }
        let why = if scanning { Summary::Scan } else { Summary::Full };
        let summary = key.summary();
        let summary_rows = self.rows.len() - self.regular;
        match self.rows.get_mut(&summary) {
            Some(s) => s.add(o),
            None if summary_rows < self.limits.summary_rows => {
                let mut s = FlowStats::default();
                s.add(o);
                self.rows.insert(summary, s);
            }
            None => {
                self.counters.dropped += 1;
                return Recorded::Dropped;
            }
        }
        match why {
            Summary::Scan => self.counters.summarised_scan += 1,
            Summary::Full => self.counters.summarised_full += 1,
        }
        Recorded::Summarised { why, scan_started }
    }

    /// Books a new key for its local container's scan window: (whether it
    /// is scanning now, whether it just started).
    fn note_new_key(&mut self, local: (Endpoint, bool), now: u64) -> (bool, bool) {
        if !self.scans.contains_key(&local) && self.scans.len() >= self.limits.scan_sources {
            self.scans.retain(|_, w| now.saturating_sub(w.start_ns) < SCAN_WINDOW_NS);
            if self.scans.len() >= self.limits.scan_sources {
                return (false, false);
            }
        }
        let w = self.scans.entry(local).or_insert(Window { start_ns: now, new_keys: 0, summarising: false });
        if now.saturating_sub(w.start_ns) >= SCAN_WINDOW_NS {
            *w = Window { start_ns: now, new_keys: 0, summarising: false };
        }
        w.new_keys = w.new_keys.saturating_add(1);
        if !w.summarising && w.new_keys > self.limits.scan_new_keys {
            w.summarising = true;
            self.counters.scans += 1;
            return (true, true);
        }
        (w.summarising, false)
    }

    /// Hands every row that changed since the last drain to `out` (its
    /// counters since then) and zeroes them. When `now` is in a later hour
    /// than the rows, the table is emptied after the drain: the store keeps
    /// the hour, memory keeps only the current one; it returns true then.
    pub fn drain(&mut self, now: u64, mut out: impl FnMut(&FlowKey, &FlowStats)) -> bool {
        for (k, s) in self.rows.iter_mut() {
            if s.dirty {
                out(k, s);
                let (verdict, decider) = (s.verdict, s.decider);
                *s = FlowStats { verdict, decider, ..FlowStats::default() };
            }
        }
        let hour = now - now % HOUR_NS;
        if hour == self.hour_ns {
            return false;
        }
        let rolled = self.hour_ns != 0;
        if rolled {
            // clear() keeps the allocation: nothing is allocated again.
            self.rows.clear();
            self.regular = 0;
            self.scans.clear();
        }
        self.hour_ns = hour;
        rolled
    }

    /// Whether any row refers to this container (the caller may reuse its
    /// number only when none does).
    pub fn mentions(&self, node: NodeId) -> bool {
        let c = Endpoint::Container(node);
        self.rows.keys().any(|k| k.src == c || k.dst == c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
    }

    fn conn(t: u64) -> Observation {
        Observation {
            time_ns: t,
            connections: 1,
            verdict: Some((Verdict::Allowed, Decider::Entry { inbound: false, index: 0 })),
            ..Default::default()
        }
    }

    fn out_key(src: NodeId, dst: IpAddr, port: u16) -> FlowKey {
        FlowKey { src: Endpoint::Container(src), dst: Endpoint::Ip(dst), port, proto: Protocol::Tcp }
    }

    #[test]
    fn repeated_connections_share_a_row_and_drain_once() {
        let mut t = FlowTable::new(FlowLimits::default());
        let k = FlowKey { src: Endpoint::Container(1), dst: Endpoint::Container(2), port: 80, proto: Protocol::Tcp };
        let t0 = 10 * HOUR_NS + 5;
        for i in 0..1000 {
            assert_eq!(t.record(k, &conn(t0 + i)), Recorded::Row);
        }
        t.record(k, &Observation { time_ns: t0 + 2000, bytes_out: 10, bytes_in: 20, ..Default::default() });
        assert_eq!(t.len(), 1);
        let mut seen = Vec::new();
        t.drain(t0 + 3000, |k, s| seen.push((*k, *s)));
        assert_eq!(seen.len(), 1);
        let s = seen[0].1;
        assert_eq!(
            (s.counts.connections, s.counts.bytes_out, s.counts.bytes_in, s.counts.first_ns, s.counts.last_ns),
            (1000, 10, 20, t0, t0 + 2000)
        );
        assert_eq!(s.verdict, Verdict::Allowed, "a close record keeps the verdict");
        // Nothing changed: nothing to drain; the row stays for the hour.
        let mut n = 0;
        t.drain(t0 + 4000, |_, _| n += 1);
        assert_eq!((n, t.len()), (0, 1));
        // A later hour: drained, then forgotten.
        t.record(k, &conn(t0 + 5000));
        assert!(t.drain(t0 + HOUR_NS, |_, s| n += s.counts.connections as usize));
        assert_eq!((n, t.len()), (1, 0));
    }

    #[test]
    fn a_scan_is_summarised_counted_and_reported_once() {
        let limits = FlowLimits { scan_new_keys: 10, ..FlowLimits::default() };
        let mut t = FlowTable::new(limits);
        let mut started = 0;
        for port in 1..=1000u16 {
            match t.record(out_key(7, ip(1), port), &conn(1_000 + port as u64)) {
                Recorded::Row => assert!(port <= 10, "port {port} got a row of its own"),
                Recorded::Summarised { why: Summary::Scan, scan_started } => started += scan_started as u32,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(started, 1);
        assert_eq!(t.counters.scans, 1);
        assert_eq!(t.counters.summarised_scan, 990);
        assert_eq!(t.len(), 11, "ten rows and one summary");
        let summary = FlowKey { src: Endpoint::Container(7), dst: Endpoint::Others, port: 0, proto: Protocol::Tcp };
        let mut got = None;
        t.drain(2_000, |k, s| {
            if *k == summary {
                got = Some(s.counts.connections)
            }
        });
        assert_eq!(got, Some(990));
        // Another container is not affected, and a known flow of the
        // scanner still counts in its own row.
        assert_eq!(t.record(out_key(8, ip(1), 1), &conn(3_000)), Recorded::Row);
        assert_eq!(t.record(out_key(7, ip(1), 5), &conn(3_000)), Recorded::Row);
        // A minute later the window starts again.
        assert_eq!(t.record(out_key(7, ip(2), 1), &conn(1_000 + SCAN_WINDOW_NS + 1)), Recorded::Row);
    }

    #[test]
    fn inbound_floods_keep_the_port_in_their_summary() {
        let limits = FlowLimits { scan_new_keys: 5, ..FlowLimits::default() };
        let mut t = FlowTable::new(limits);
        for n in 0..100 {
            let k = FlowKey { src: Endpoint::Ip(ip(n)), dst: Endpoint::Container(3), port: 443, proto: Protocol::Tcp };
            t.record(k, &conn(10 + n as u64));
        }
        let summary = FlowKey { src: Endpoint::Others, dst: Endpoint::Container(3), port: 443, proto: Protocol::Tcp };
        let mut got = 0;
        t.drain(1_000, |k, s| {
            if *k == summary {
                got = s.counts.connections
            }
        });
        assert_eq!(got, 95);
    }

    #[test]
    fn a_full_table_summarises_then_counts_what_has_no_room() {
        let limits = FlowLimits { max_rows: 100, summary_rows: 3, scan_new_keys: u32::MAX, scan_sources: 16 };
        let mut t = FlowTable::new(limits);
        for n in 0..100 {
            assert_eq!(t.record(out_key(1, ip(n), 80), &conn(1)), Recorded::Row);
        }
        for src in 1..=5 {
            let r = t.record(out_key(src, ip(1000), 80), &conn(2));
            if src <= 3 {
                assert_eq!(r, Recorded::Summarised { why: Summary::Full, scan_started: false });
            } else {
                assert_eq!(r, Recorded::Dropped);
            }
        }
        assert_eq!(t.len(), 103);
        assert_eq!((t.counters.summarised_full, t.counters.dropped), (3, 2));
    }

    #[test]
    fn many_scanning_sources_keep_the_tracker_bounded() {
        let limits = FlowLimits { max_rows: 1000, summary_rows: 10, scan_new_keys: 3, scan_sources: 4 };
        let mut t = FlowTable::new(limits);
        for src in 0..50u32 {
            for port in 0..10u16 {
                t.record(out_key(src, ip(src), port), &conn(src as u64));
            }
        }
        assert!(t.scans.len() <= 4);
        assert!(t.len() <= 1010);
        let total = t.counters.summarised_scan + t.counters.summarised_full + t.counters.dropped;
        assert!(total > 0);
    }

    #[test]
    fn the_bound_covers_the_allocation() {
        let limits = FlowLimits::default();
        let t = FlowTable::new(limits);
        let allocated = t.rows.capacity() * (std::mem::size_of::<(FlowKey, FlowStats)>() + 1)
            + t.scans.capacity() * (std::mem::size_of::<((Endpoint, bool), Window)>() + 1);
        assert!(allocated <= FlowTable::memory_bound(&limits), "{allocated} > {}", FlowTable::memory_bound(&limits));
        // About 5 MiB for 17 408 rows.
        assert!(FlowTable::memory_bound(&limits) < 6 << 20, "{}", FlowTable::memory_bound(&limits));
    }

    #[test]
    fn mentions_finds_a_container_on_either_side() {
        let mut t = FlowTable::new(FlowLimits::default());
        t.record(FlowKey { src: Endpoint::Ip(ip(1)), dst: Endpoint::Container(4), port: 1, proto: Protocol::Udp }, &conn(1));
        assert!(t.mentions(4));
        assert!(!t.mentions(5));
    }
}
