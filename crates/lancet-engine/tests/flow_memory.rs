//! The flow table's memory stays within its stated bound however many
//! distinct flows arrive, and counting a flow allocates nothing: 100 000
//! distinct flows (a scan of many addresses and ports from many sources,
//! and a flood of distinct inbound peers) are recorded under an allocator
//! that counts.

use lancet_engine::flows::{Endpoint, FlowKey, FlowLimits, FlowTable, Observation, Recorded};
use lancet_engine::profile::Protocol;
use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static CALLS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Relaxed);
        CALLS.fetch_add(1, Relaxed);
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Relaxed);
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
    let before = LIVE.load(Relaxed);
    let mut t = FlowTable::new(limits);
    let table_bytes = LIVE.load(Relaxed) - before;
    let bound = FlowTable::memory_bound(&limits);
    assert!(table_bytes <= bound, "the table allocated {table_bytes} bytes, over its bound of {bound}");

    let calls = CALLS.load(Relaxed);
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
    assert_eq!(CALLS.load(Relaxed), calls, "recording flows allocated");
    assert_eq!(LIVE.load(Relaxed) - before, table_bytes, "memory grew");
    assert!(t.len() <= limits.max_rows + limits.summary_rows);
    let c = t.counters;
    assert_eq!(u64::from(summarised), c.summarised_scan + c.summarised_full);
    assert_eq!(u64::from(dropped), c.dropped);
    assert_eq!(rows + summarised + dropped, 100_000);
    assert!(c.scans > 0 && summarised > 0, "{c:?}");
    println!("100000 flows: {rows} rows, {summarised} summarised, {dropped} dropped; table {table_bytes} bytes, bound {bound}");
}
