//! The flow table's memory stays within its stated bound however many
//! distinct flows arrive, and counting a flow allocates nothing: 100 000
//! distinct flows (a scan of many addresses and ports from many sources,
//! and a flood of distinct inbound peers) are recorded under an allocator
//! that counts.
//!
//! The counts are the test thread's own: the harness's threads (its output
//! capture, other tests' threads) allocate when they like, and a
//! process-wide count once failed a fresh machine by four calls.

use lancet_engine::flows::{Endpoint, FlowKey, FlowLimits, FlowTable, Observation, Recorded};
use lancet_engine::profile::Protocol;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr};

struct Counting;

thread_local! {
    // Const-initialised cells without destructors: reading them never
    // allocates, so the allocator may touch them.
    /// Bytes this thread allocated less those it freed (wrapping: a thread
    /// may free what another allocated).
    static LIVE: Cell<usize> = const { Cell::new(0) };
    /// Allocation calls made by this thread.
    static CALLS: Cell<usize> = const { Cell::new(0) };
}

fn live() -> usize {
    LIVE.with(Cell::get)
}

fn calls() -> usize {
    CALLS.with(Cell::get)
}

// SAFETY: forwards to the system allocator unchanged; only counts, in
// thread-local cells that need no allocation (a thread being torn down
// whose cells are gone is simply not counted).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|c| c.set(c.get().wrapping_add(l.size())));
        let _ = CALLS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        let _ = LIVE.try_with(|c| c.set(c.get().wrapping_sub(l.size())));
        // SAFETY: as above.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn a_hundred_thousand_distinct_flows_stay_within_the_bound_without_allocating() {
    let limits = FlowLimits::default();
    // The hasher's process-wide random seed is made once, by the first
    // table: not this table's memory.
    drop(FlowTable::new(FlowLimits { max_rows: 1, summary_rows: 1, scan_new_keys: 1, scan_sources: 1 }));
    let before = live();
    let mut t = FlowTable::new(limits);
    let table_bytes = live().wrapping_sub(before);
    let bound = FlowTable::memory_bound(&limits);
    // The counter sees this thread: the table's own arrays were counted.
    assert!(table_bytes > 0, "the counting allocator saw none of the table's memory");
    assert!(table_bytes <= bound, "the table allocated {table_bytes} bytes, over its bound of {bound}");

    let calls_before = calls();
    let (mut rows, mut summarised, mut dropped) = (0u32, 0u32, 0u32);
    for i in 0..100_000u32 {
        let key = if i % 2 == 0 {
            // 200 containers each scanning addresses and ports.
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            FlowKey { src: Endpoint::Container(i % 200), dst: Endpoint::Ip(ip), port: (i % 60_000) as u16 + 1, proto: Protocol::Tcp }
        } else {
            // Distinct peers flooding 50 containers.
            let ip = IpAddr::V4(Ipv4Addr::from(0xc000_0000 + i));
            FlowKey { src: Endpoint::Ip(ip), dst: Endpoint::Container(1000 + i % 50), port: 443, proto: Protocol::Tcp }
        };
        let o = Observation { time_ns: 1_000_000_000 + i as u64 * 1000, connections: 1, ..Default::default() };
        match t.record(key, &o) {
            Recorded::Row => rows += 1,
            Recorded::Summarised { .. } => summarised += 1,
            Recorded::Dropped => dropped += 1,
        }
    }
    assert_eq!(calls(), calls_before, "recording flows allocated");
    assert_eq!(live().wrapping_sub(before), table_bytes, "memory grew");
    assert!(t.len() <= limits.max_rows + limits.summary_rows);
    let c = t.counters;
    assert_eq!(u64::from(summarised), c.summarised_scan + c.summarised_full);
    assert_eq!(u64::from(dropped), c.dropped);
    assert_eq!(rows + summarised + dropped, 100_000);
    assert!(c.scans > 0 && summarised > 0, "{c:?}");
    println!("100000 flows: {rows} rows, {summarised} summarised, {dropped} dropped; table {table_bytes} bytes, bound {bound}");
}
