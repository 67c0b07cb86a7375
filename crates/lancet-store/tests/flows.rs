//! Flow rollups: deltas summed into their hour, the latest verdict kept,
//! nodes refreshed, retention by age and by count (oldest hours first,
//! never the current one), a store of schema 2 migrated; alert counts per
//! workload and alerts by id.

use lancet_engine::flows::{FlowCounters, FlowEnd, FlowRow};
use lancet_store::{FlowNodeRecord, NewAlert, Store, StoreOptions, HOUR_NS};

const S: u64 = 1_000_000_000;
const T0: u64 = 1_764_300_000 * S - (1_764_300_000 * S) % HOUR_NS;

fn end(kind: &str, id: &str, name: &str) -> FlowEnd {
    FlowEnd {
        kind: kind.into(),
        id: id.into(),
        name: name.into(),
        workload: if kind == "container" { format!("w-{id}") } else { String::new() },
    }
}

fn delta(t: u64, src: &str, dst: &str, port: u16, conns: u64, verdict: &str) -> FlowRow {
    FlowRow {
        hour_ns: t,
        src: end("container", src, &format!("{src}-name")),
        dst: end("external", dst, ""),
        port,
        proto: "tcp".into(),
        counts: FlowCounters {
            connections: conns,
            failed: 1,
            refused: 0,
            bytes_out: 10 * conns,
            bytes_in: 100 * conns,
            first_ns: t,
            last_ns: t + 5,
        },
        verdict: verdict.into(),
        rule: format!("{verdict} rule"),
    }
}

#[test]
fn deltas_are_summed_into_their_hour() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(&dir.path().join("lancet.db"), StoreOptions::default()).unwrap();
    s.add_flows(&[delta(T0 + 10 * S, "a", "1.2.3.4", 80, 3, "allowed"), delta(T0 + 20 * S, "a", "1.2.3.4", 443, 1, "allowed")]).unwrap();
    // Later in the same hour, then an earlier observation arriving late.
    s.add_flows(&[delta(T0 + 30 * S, "a", "1.2.3.4", 80, 2, "unlisted")]).unwrap();
    s.add_flows(&[delta(T0 + S, "a", "1.2.3.4", 80, 1, "learning")]).unwrap();
    // The next hour is a row of its own.
    s.add_flows(&[delta(T0 + HOUR_NS + S, "a", "1.2.3.4", 80, 7, "refused")]).unwrap();
    s.flush().unwrap();
    let rows = s.flows(T0, None, 0).unwrap();
    assert_eq!(rows.len(), 3);
    // Newest hour first.
    assert_eq!(rows[0].hour_ns, T0 + HOUR_NS);
    let r = &rows[1];
    assert_eq!((r.hour_ns, r.port, r.counts.connections, r.counts.failed, r.counts.bytes_out, r.counts.bytes_in), (T0, 80, 6, 3, 60, 600));
    assert_eq!((r.counts.first_ns, r.counts.last_ns), (T0 + S, T0 + 30 * S + 5));
    assert_eq!((r.verdict.as_str(), r.rule.as_str()), ("unlisted", "unlisted rule"), "the latest observation's verdict");
    assert_eq!(r.src.name, "a-name");
    assert_eq!(rows[2].port, 443);
    // Only rows seen since a time.
    assert_eq!(s.flows(T0 + HOUR_NS, None, 0).unwrap().len(), 1);
    let newest = s.flows(T0, None, 2).unwrap();
    assert_eq!(newest.iter().map(|r| r.hour_ns).collect::<Vec<_>>(), [T0 + HOUR_NS, T0], "a limit cuts the oldest");
    // Rows of one container, by name or id prefix, before the limit.
    assert_eq!(s.flows(T0, Some("a-name"), 0).unwrap().len(), 3);
    assert_eq!(s.flows(T0, Some("other"), 0).unwrap().len(), 0);
    assert_eq!(s.flows(T0, Some("a-name"), 1).unwrap().len(), 1);
    // A reader in another connection sees what was committed.
    let r = Store::open_read_only(s.path()).unwrap();
    assert_eq!(r.flows(0, None, 0).unwrap().len(), 3);
}

#[test]
fn nodes_are_refreshed() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(&dir.path().join("lancet.db"), StoreOptions::default()).unwrap();
    let n = FlowNodeRecord {
        id: "c1".into(),
        name: "web".into(),
        workload: "w".into(),
        image: "img:1".into(),
        namespace: String::new(),
        labels: "{}".into(),
        last_ns: T0,
    };
    s.put_flow_nodes(std::slice::from_ref(&n)).unwrap();
    s.put_flow_nodes(&[FlowNodeRecord { name: "web-renamed".into(), last_ns: T0 - 5, ..n.clone() }]).unwrap();
    let got = s.flow_nodes().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].name.as_str(), got[0].last_ns), ("web-renamed", T0));
}

#[test]
fn retention_by_age_and_count() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions { flow_retention: std::time::Duration::from_secs(3 * 3600), max_flow_rows: 4, ..StoreOptions::default() };
    let mut s = Store::open(&dir.path().join("lancet.db"), opts).unwrap();
    let now = T0 + 10 * HOUR_NS + 60 * S;
    // Two rows in each of hours 0..=10.
    for h in 0..=10u64 {
        s.add_flows(&[delta(T0 + h * HOUR_NS, "a", "1.1.1.1", 1, 1, "allowed"), delta(T0 + h * HOUR_NS, "b", "1.1.1.1", 1, 1, "allowed")])
            .unwrap();
    }
    s.put_flow_nodes(&[FlowNodeRecord { id: "old".into(), last_ns: T0, labels: "{}".into(), ..Default::default() }]).unwrap();
    let stats = s.prune(now).unwrap();
    // Hours 7..=10 are within 3 h of `now` (rounded down to its hour): 8
    // rows, over the cap of 4, so hours 7 and 8 go too.
    assert_eq!(stats.flows_expired, 14);
    assert_eq!(stats.flows_capped, 4);
    let hours: Vec<u64> = s.flows(0, None, 0).unwrap().iter().map(|r| (r.hour_ns - T0) / HOUR_NS).collect();
    assert_eq!(hours, vec![10, 10, 9, 9]);
    assert!(s.flow_nodes().unwrap().is_empty(), "nodes not seen within the retention go too");
    // The current hour is never dropped for the cap.
    for p in 0..10u16 {
        s.add_flows(&[delta(now, "c", "2.2.2.2", p, 1, "allowed")]).unwrap();
    }
    let stats = s.prune(now).unwrap();
    assert_eq!(stats.flows_capped, 2, "hour 9 only");
    assert_eq!(s.flows(0, None, 0).unwrap().len(), 12);
}

#[test]
fn a_store_of_the_previous_schema_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lancet.db");
    {
        let mut s = Store::open(&path, StoreOptions::default()).unwrap();
        s.add_flows(&[delta(T0, "a", "1.1.1.1", 1, 1, "allowed")]).unwrap();
        s.close().unwrap();
    }
    // Take it back to schema 2: drop what migration 3 made.
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("DROP TABLE flows; DROP TABLE flow_nodes; PRAGMA user_version = 2;").unwrap();
    }
    let s = Store::open(&path, StoreOptions::default()).unwrap();
    assert!(s.flows(0, None, 0).unwrap().is_empty());
}

#[test]
fn alert_counts_per_workload_and_alerts_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(&dir.path().join("lancet.db"), StoreOptions::default()).unwrap();
    let mut ids = Vec::new();
    for (t, rule, w, count) in
        [(T0, "Drift: written", "w1", 1), (T0 + S, "Shell", "w1", 3), (T0 + 2 * S, "Shell", "w2", 1), (T0 - HOUR_NS, "Old", "w1", 9)]
    {
        let a = NewAlert {
            time_ns: t,
            rule: rule.into(),
            priority: "Warning".into(),
            container_id: "c".into(),
            container_name: "c".into(),
            image: "i".into(),
            workload: w.into(),
            action: "alert".into(),
            enforced: false,
            count,
            json: format!("{{\"rule\":\"{rule}\"}}"),
        };
        ids.push(s.insert_alert(&a).unwrap());
    }
    let c = s.alert_counts(T0).unwrap();
    assert_eq!(c.len(), 2);
    assert_eq!((c[0].workload.as_str(), c[0].total, c[0].drift, c[0].last_ns), ("w1", 4, 1, T0 + S));
    assert_eq!((c[1].workload.as_str(), c[1].total, c[1].drift), ("w2", 1, 0));
    let a = s.alert(ids[1]).unwrap().unwrap();
    assert_eq!((a.alert.rule.as_str(), a.alert.count), ("Shell", 3));
    assert!(s.alert(9999).unwrap().is_none());
}
