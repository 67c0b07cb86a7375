//! Behaviour of the store: persistence, WAL, profile versions, alerts, activity,
//! retention, corruption handling, concurrency with read-only openers, durability
//! across SIGKILL of a writer process.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lancet_store::{AlertQuery, AuditQuery, NewAlert, NewAudit, Store, StoreError, StoreOptions, HOUR_NS, SCHEMA_VERSION};

const S: u64 = 1_000_000_000;
const T0: u64 = 1_764_300_000 * S;

fn db(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("state").join("lancet.db")
}

fn open(path: &Path) -> Store {
    Store::open(path, StoreOptions::default()).expect("open store")
}

fn id(n: u32) -> String {
    format!("{n:02x}{}", "ab".repeat(31))
}

fn alert(time_ns: u64, rule: &str, container: u32) -> NewAlert {
    let json = serde_json::json!({
        "time": time_ns.to_string(),
        "rule": rule,
        "priority": "Warning",
        "output": format!("{rule} in c{container}"),
        "tags": ["lancet"],
        "output_fields": {"container.id": id(container)[..12], "container.name": format!("c{container}")},
    });
    NewAlert {
        time_ns,
        rule: rule.to_string(),
        priority: "Warning".into(),
        container_id: id(container),
        container_name: format!("c{container}"),
        image: "docker.io/library/nginx:1.27".into(),
        workload: "sha256:aaaa".into(),
        action: "alert".into(),
        enforced: container % 2 == 0,
        count: 1,
        json: json.to_string(),
    }
}

#[test]
fn open_creates_then_reopens_with_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let mut s = open(&path);
    assert!(path.exists(), "the store and its directory are created");
    assert_eq!(s.journal_mode().unwrap(), "wal");
    s.put_profile("sha256:aaaa", "nginx", "learn", "spec: {}\n", T0).unwrap();
    let a = s.insert_alert(&alert(T0, "Drift", 1)).unwrap();
    s.bump_activity("sha256:aaaa", "exec", 3, T0).unwrap();
    s.close().unwrap();

    let s = open(&path);
    assert_eq!(s.journal_mode().unwrap(), "wal", "WAL is persistent");
    assert_eq!(s.profile("sha256:aaaa").unwrap().unwrap().document, "spec: {}\n");
    let alerts = s.alerts(&AlertQuery::default()).unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].id, a);
    assert_eq!(alerts[0].alert.rule, "Drift");
    let j: serde_json::Value = serde_json::from_str(&alerts[0].alert.json).unwrap();
    assert_eq!(j["output_fields"]["container.name"], "c1");
    assert_eq!(s.activity("sha256:aaaa", T0).unwrap().len(), 1);
}

#[test]
fn pragmas_are_set() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let _s = open(&path);
    // Look from a second, plain connection at what is persistent.
    let c = rusqlite::Connection::open(&path).unwrap();
    let mode: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    let v: u32 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(v, SCHEMA_VERSION);
}

#[test]
fn drop_without_close_keeps_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    {
        let opts = StoreOptions { flush_interval: Duration::from_secs(3600), ..StoreOptions::default() };
        let mut s = Store::open(&path, opts).unwrap();
        s.insert_alert(&alert(T0, "Drift", 1)).unwrap();
        s.put_profile("sha256:aaaa", "nginx", "learn", "a", T0).unwrap();
        assert_eq!(s.pending(), 2, "batched, not yet committed");
        // dropped here, without flush() or close()
    }
    let s = Store::open_read_only(&path).unwrap();
    assert_eq!(s.alert_count().unwrap(), 1);
    assert!(s.profile("sha256:aaaa").unwrap().is_some());
}

#[test]
fn profile_versions_change_only_with_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&db(&dir));
    let d = "sha256:1111";
    assert_eq!(s.profile(d).unwrap(), None);
    assert_eq!(s.put_profile(d, "nginx", "learn", "doc-a", T0).unwrap(), 1);
    assert_eq!(s.put_profile(d, "nginx", "learn", "doc-a", T0 + S).unwrap(), 1, "same document, same version");
    let p = s.profile(d).unwrap().unwrap();
    assert_eq!((p.version, p.updated_ns), (1, T0), "an identical put changes nothing");
    assert_eq!(s.put_profile(d, "nginx", "learn", "doc-b", T0 + 2 * S).unwrap(), 2);
    assert_eq!(s.put_profile(d, "nginx", "learn", "doc-a", T0 + 3 * S).unwrap(), 3, "back to a, still a new version");
    // Mode change with the same document: head updated, no new version.
    assert_eq!(s.put_profile(d, "nginx", "monitor", "doc-a", T0 + 4 * S).unwrap(), 3);
    let p = s.profile(d).unwrap().unwrap();
    assert_eq!((p.mode.as_str(), p.version, p.document.as_str(), p.updated_ns), ("monitor", 3, "doc-a", T0 + 4 * S));

    let h = s.profile_history(d, 0).unwrap();
    assert_eq!(h.iter().map(|p| p.version).collect::<Vec<_>>(), vec![3, 2, 1], "newest first");
    assert_eq!(h.iter().map(|p| p.document.as_str()).collect::<Vec<_>>(), vec!["doc-a", "doc-b", "doc-a"]);
    assert_eq!(h[1].updated_ns, T0 + 2 * S);
    assert_eq!(s.profile_history(d, 2).unwrap().len(), 2);

    s.put_profile("sha256:0000", "redis", "protect", "r", T0).unwrap();
    let list = s.list_profiles().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!((list[0].digest.as_str(), list[0].mode.as_str(), list[0].version), ("sha256:0000", "protect", 1));
    assert_eq!((list[1].digest.as_str(), list[1].mode.as_str(), list[1].version), (d, "monitor", 3));

    assert!(s.delete_profile(d).unwrap());
    assert!(!s.delete_profile(d).unwrap());
    assert_eq!(s.profile(d).unwrap(), None);
    assert!(s.profile_history(d, 0).unwrap().is_empty(), "history goes with the profile");
    assert_eq!(s.put_profile(d, "nginx", "learn", "fresh", T0).unwrap(), 1, "a reset starts again");
    assert!(s.put_profile("", "x", "learn", "x", T0).is_err());
}

#[test]
fn profile_history_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let mut s = Store::open(&path, StoreOptions { profile_history: 3, ..StoreOptions::default() }).unwrap();
    for i in 0..7u64 {
        assert_eq!(s.put_profile("sha256:b", "img", "learn", &format!("doc-{i}"), T0 + i).unwrap(), i + 1);
    }
    let h = s.profile_history("sha256:b", 0).unwrap();
    assert_eq!(h.iter().map(|p| p.version).collect::<Vec<_>>(), vec![7, 6, 5]);
    assert_eq!(s.profile("sha256:b").unwrap().unwrap().document, "doc-6");
    s.close().unwrap();

    // Lowering the bound takes effect at the next prune.
    let mut s = Store::open(&path, StoreOptions { profile_history: 1, ..StoreOptions::default() }).unwrap();
    let stats = s.prune(T0).unwrap();
    assert_eq!(stats.profile_versions_dropped, 2);
    assert_eq!(s.profile_history("sha256:b", 0).unwrap().len(), 1);
    assert_eq!(s.profile("sha256:b").unwrap().unwrap().version, 7);
}

#[test]
fn alert_queries_filter_order_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&db(&dir));
    for i in 0..30u32 {
        let rule = if i % 3 == 0 { "Drift" } else { "Unexpected connect" };
        s.insert_alert(&alert(T0 + u64::from(i) * S, rule, i % 5)).unwrap();
    }
    s.flush().unwrap();
    let all = s.alerts(&AlertQuery::default()).unwrap();
    assert_eq!(all.len(), 30);
    assert!(all.windows(2).all(|w| w[0].last_time_ns >= w[1].last_time_ns), "newest first");
    assert_eq!(all[0].alert.time_ns, T0 + 29 * S);

    let q = |since_ns, container: Option<&str>, rule: Option<&str>, limit| AlertQuery {
        since_ns,
        container: container.map(str::to_string),
        rule: rule.map(str::to_string),
        limit,
    };
    assert_eq!(s.alerts(&q(None, None, None, 7)).unwrap().len(), 7);
    assert_eq!(s.alerts(&q(Some(T0 + 20 * S), None, None, 0)).unwrap().len(), 10);
    let by_name = s.alerts(&q(None, Some("c3"), None, 0)).unwrap();
    assert_eq!(by_name.len(), 6);
    assert!(by_name.iter().all(|a| a.alert.container_name == "c3"));
    let by_id = s.alerts(&q(None, Some(&id(3)[..12]), None, 0)).unwrap();
    assert_eq!(by_id, by_name, "a 12-hex id prefix selects the same container");
    assert_eq!(s.alerts(&q(None, Some(&id(3)), None, 0)).unwrap().len(), 6, "full id");
    assert!(s.alerts(&q(None, Some("c9"), None, 0)).unwrap().is_empty());
    let drift = s.alerts(&q(None, None, Some("Drift"), 0)).unwrap();
    assert_eq!(drift.len(), 10);
    let combined = s.alerts(&q(Some(T0 + 10 * S), Some("c0"), Some("Drift"), 1)).unwrap();
    // c0 and Drift: i multiple of 15 -> 0, 15; since 10 s -> 15 only.
    assert_eq!(combined.len(), 1);
    assert_eq!(combined[0].alert.time_ns, T0 + 15 * S);
    assert!(combined[0].alert.enforced, "even containers were enforced");
    assert!(!by_name[0].alert.enforced);
}

#[test]
fn deduplicated_alert_count_update() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&db(&dir));
    let first = s.insert_alert(&alert(T0, "Drift", 1)).unwrap();
    let second = s.insert_alert(&alert(T0 + S, "Drift", 2)).unwrap();
    assert!(s.update_alert_count(first, 42, T0 + 10 * S).unwrap());
    assert!(!s.update_alert_count(9_999, 1, T0).unwrap(), "an unknown id is reported, not an error");
    s.flush().unwrap();
    let all = s.alerts(&AlertQuery::default()).unwrap();
    assert_eq!(all[0].id, first, "ordered by last occurrence");
    assert_eq!((all[0].alert.count, all[0].alert.time_ns, all[0].last_time_ns), (42, T0, T0 + 10 * S));
    assert_eq!((all[1].id, all[1].alert.count), (second, 1));
    // An older last time never moves it backwards.
    s.update_alert_count(first, 43, T0 + 5 * S).unwrap();
    assert_eq!(s.alerts(&AlertQuery::default()).unwrap()[0].last_time_ns, T0 + 10 * S);
}

#[test]
fn activity_is_aggregated_per_hour() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&db(&dir));
    let h0 = T0 - T0 % HOUR_NS;
    s.bump_activity("sha256:a", "exec", 2, h0 + 5 * S).unwrap();
    s.bump_activity("sha256:a", "exec", 3, h0 + 3000 * S).unwrap();
    s.bump_activity("sha256:a", "net", 1, h0 + 10 * S).unwrap();
    s.bump_activity("sha256:a", "exec", 7, h0 + HOUR_NS + S).unwrap();
    s.bump_activity("sha256:b", "file", 1, h0).unwrap();
    s.bump_activity("sha256:a", "file", 0, h0).unwrap();
    let a = s.activity("sha256:a", h0).unwrap();
    let got: Vec<_> = a.iter().map(|b| (b.hour_ns, b.kind.as_str(), b.count)).collect();
    assert_eq!(got, vec![(h0, "exec", 5), (h0, "net", 1), (h0 + HOUR_NS, "exec", 7)]);
    // `since` inside the second hour selects that bucket whole.
    assert_eq!(s.activity("sha256:a", h0 + HOUR_NS + 100 * S).unwrap().len(), 1);
    assert!(s.bump_activity("sha256:a", "", 1, h0).is_err());
}

#[test]
fn prune_by_age_and_by_count() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        alert_retention: Duration::from_secs(3600),
        max_alerts: 10,
        activity_retention: Duration::from_secs(2 * 3600),
        ..StoreOptions::default()
    };
    let mut s = Store::open(&db(&dir), opts).unwrap();
    let now = T0 + 10 * HOUR_NS;
    let old = s.insert_alert(&alert(now - 2 * HOUR_NS, "Old", 1)).unwrap();
    let old_but_repeating = s.insert_alert(&alert(now - 3 * HOUR_NS, "Repeat", 1)).unwrap();
    s.update_alert_count(old_but_repeating, 9, now - 60 * S).unwrap();
    for i in 0..5 {
        s.insert_alert(&alert(now - i * S, "Recent", 2)).unwrap();
    }
    s.bump_activity("sha256:a", "exec", 1, now - 5 * HOUR_NS).unwrap();
    s.bump_activity("sha256:a", "exec", 1, now).unwrap();
    let stats = s.prune(now).unwrap();
    assert_eq!(stats.alerts_expired, 1);
    assert_eq!(stats.alerts_capped, 0);
    assert_eq!(stats.activity_expired, 1);
    let ids: Vec<u64> = s.alerts(&AlertQuery::default()).unwrap().iter().map(|a| a.id).collect();
    assert!(!ids.contains(&old));
    assert!(ids.contains(&old_but_repeating), "age counts from the last occurrence");
    assert_eq!(s.pending(), 0, "prune commits");

    for i in 0..20 {
        s.insert_alert(&alert(now + i * S, "Flood", 3)).unwrap();
    }
    let newest = s.alerts(&AlertQuery { limit: 10, ..AlertQuery::default() }).unwrap();
    let stats = s.prune(now + 20 * S).unwrap();
    assert_eq!(stats.alerts_capped, 16);
    assert_eq!(s.alert_count().unwrap(), 10);
    assert_eq!(s.alerts(&AlertQuery::default()).unwrap(), newest, "the newest are kept");
    assert_eq!(s.prune(now + 20 * S).unwrap(), Default::default(), "nothing left to do");
}

#[test]
fn batches_commit_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let opts = StoreOptions { max_batch: 10, flush_interval: Duration::from_secs(3600), ..StoreOptions::default() };
    let mut w = Store::open(&path, opts).unwrap();
    for i in 0..25 {
        w.insert_alert(&alert(T0 + i, "X", 1)).unwrap();
    }
    assert_eq!(w.pending(), 5);
    let r = Store::open_read_only(&path).unwrap();
    assert_eq!(r.alert_count().unwrap(), 20, "two full batches committed by themselves");
}

#[test]
fn reader_sees_committed_data_while_the_writer_holds_the_db() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    assert!(matches!(Store::open_read_only(&path), Err(StoreError::NotFound { .. })));
    let opts = StoreOptions { flush_interval: Duration::from_secs(3600), ..StoreOptions::default() };
    let mut w = Store::open(&path, opts).unwrap();
    w.put_profile("sha256:a", "nginx", "learn", "v1", T0).unwrap();
    w.insert_alert(&alert(T0, "Drift", 1)).unwrap();
    w.flush().unwrap();
    // The writer now holds an open write transaction with more in it.
    w.insert_alert(&alert(T0 + S, "Drift", 1)).unwrap();
    w.put_profile("sha256:a", "nginx", "learn", "v2", T0 + S).unwrap();

    let mut r = Store::open_read_only(&path).unwrap();
    assert!(r.is_read_only());
    assert_eq!(r.alert_count().unwrap(), 1, "only committed data is visible");
    assert_eq!(r.profile("sha256:a").unwrap().unwrap().document, "v1");
    assert!(matches!(r.insert_alert(&alert(T0, "X", 1)), Err(StoreError::ReadOnly { .. })));
    assert!(matches!(r.prune(T0), Err(StoreError::ReadOnly { .. })));

    w.flush().unwrap();
    assert_eq!(r.alert_count().unwrap(), 2, "the reader sees the next commit");
    assert_eq!(r.profile("sha256:a").unwrap().unwrap().version, 2);

    // A second read-write opener (a CLI edit) gets its turn once the batch is flushed.
    w.insert_alert(&alert(T0 + 2 * S, "Drift", 1)).unwrap();
    w.flush().unwrap();
    let mut cli = Store::open(&path, StoreOptions::default()).unwrap();
    assert!(cli.delete_profile("sha256:a").unwrap());
    cli.close().unwrap();
    assert_eq!(w.profile("sha256:a").unwrap(), None);
    assert_eq!(r.alert_count().unwrap(), 3);
}

fn assert_move_aside_hint(e: &StoreError, path: &Path) {
    let msg = e.to_string();
    let p = path.display();
    let hint = format!("move {p} aside (e.g. `mv {p} {p}.corrupt`) and start again; lancet will create a fresh store");
    assert!(msg.contains(&hint), "message lacks the way out: {msg}");
}

#[test]
fn random_bytes_are_corrupt_with_a_way_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // Deterministic pseudo-random bytes (xorshift).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&path, &bytes).unwrap();
    let e = Store::open(&path, StoreOptions::default()).unwrap_err();
    assert!(e.is_corrupt(), "{e:?}");
    assert_move_aside_hint(&e, &path);
    eprintln!("random bytes: {e}");
    let e = Store::open_read_only(&path).unwrap_err();
    assert!(e.is_corrupt(), "{e:?}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "the damaged file is left as it was");

    // The way out works.
    let aside = Store::move_aside(&path).unwrap();
    assert!(aside.exists() && !path.exists());
    let s = open(&path);
    assert_eq!(s.alert_count().unwrap(), 0);
}

fn fill(path: &Path, n: u64) {
    let mut s = open(path);
    for i in 0..n {
        s.insert_alert(&alert(T0 + i, "Fill", (i % 7) as u32)).unwrap();
        s.put_profile(&format!("sha256:{:04}", i % 50), "img", "learn", &"x".repeat(200 + i as usize % 50), T0 + i).unwrap();
    }
    s.close().unwrap();
}

#[test]
fn truncated_db_gives_a_clean_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    fill(&path, 2_000);
    let full = std::fs::read(&path).unwrap();
    assert!(!path.with_extension("db-wal").exists(), "close checkpoints the WAL away");
    let half_pages = full.len() / 2 / 4096 * 4096;
    for cut in [full.len() / 2, half_pages, full.len() - 4096, full.len() - 4096 + 100, 4096 + 7, 60] {
        std::fs::write(&path, &full[..cut]).unwrap();
        match Store::open(&path, StoreOptions::default()) {
            Err(e) => {
                eprintln!("truncated to {cut} of {}: {e}", full.len());
                assert!(e.is_corrupt(), "{e:?}");
                assert_move_aside_hint(&e, &path);
            }
            Ok(s) => panic!("a store truncated to {cut} of {} bytes opened: {s:?}", full.len()),
        }
    }
}

#[test]
fn damaged_pages_are_found_by_quick_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    fill(&path, 2_000);
    let mut bytes = std::fs::read(&path).unwrap();
    // Scribble over the b-tree page headers and cell pointers of pages 2..=12, keeping
    // the length and the file header intact.
    for page in 1..12 {
        let at = page * 4096;
        bytes[at..at + 64].iter_mut().enumerate().for_each(|(i, b)| *b = 0xA5 ^ i as u8);
    }
    std::fs::write(&path, &bytes).unwrap();
    let e = Store::open(&path, StoreOptions::default()).unwrap_err();
    eprintln!("damaged pages: {e}");
    assert!(e.is_corrupt(), "{e:?}");
    assert_move_aside_hint(&e, &path);
}

#[test]
fn foreign_or_incomplete_databases_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE something_else (x)").unwrap();
    }
    let e = Store::open(&path, StoreOptions::default()).unwrap_err();
    assert!(e.is_corrupt() && e.to_string().contains("not a lancet store"), "{e}");

    std::fs::remove_file(&path).unwrap();
    open(&path).close().unwrap();
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("DROP TABLE activity").unwrap();
    }
    let e = Store::open(&path, StoreOptions::default()).unwrap_err();
    assert!(e.is_corrupt() && e.to_string().contains("`activity` is missing"), "{e}");
}

#[test]
fn newer_schema_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let mut s = open(&path);
    s.insert_alert(&alert(T0, "Drift", 1)).unwrap();
    s.close().unwrap();
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
    }
    let e = Store::open(&path, StoreOptions::default()).unwrap_err();
    let msg = e.to_string();
    eprintln!("newer schema: {msg}");
    assert!(matches!(e, StoreError::SchemaTooNew { found, supported, .. } if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION));
    assert!(msg.contains("newer than this build supports"), "{msg}");
    assert_move_aside_hint(&e, &path);
    assert!(matches!(Store::open_read_only(&path), Err(StoreError::SchemaTooNew { .. })));
    // Not touched: the newer lancet can still use it.
    let c = rusqlite::Connection::open(&path).unwrap();
    let n: i64 = c.query_row("SELECT count(*) FROM alerts", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 1);
}

#[test]
fn move_aside_renames_db_wal_and_shm() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    open(&path).close().unwrap();
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    let shm = PathBuf::from(format!("{}-shm", path.display()));
    std::fs::write(&wal, b"wal").unwrap();
    std::fs::write(&shm, b"shm").unwrap();
    let aside = Store::move_aside(&path).unwrap();
    assert!(!path.exists() && !wal.exists() && !shm.exists());
    let name = aside.file_name().unwrap().to_str().unwrap().to_string();
    assert!(name.starts_with("lancet.db.corrupt-"), "{name}");
    let suffix = name.strip_prefix("lancet.db").unwrap();
    let dir_of = path.parent().unwrap();
    assert_eq!(std::fs::read(dir_of.join(format!("lancet.db-wal{suffix}"))).unwrap(), b"wal");
    assert_eq!(std::fs::read(dir_of.join(format!("lancet.db-shm{suffix}"))).unwrap(), b"shm");
    assert!(aside.exists());

    // Twice in the same second: no clobbering.
    open(&path).close().unwrap();
    let again = Store::move_aside(&path).unwrap();
    assert_ne!(again, aside);
    assert!(again.exists() && aside.exists());
    assert!(Store::move_aside(&path).is_err(), "nothing to move");
}

#[test]
fn orphaned_wal_is_not_replayed_into_a_fresh_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    // A real store with data still in its WAL, then only the database is moved away
    // (what an operator following a plain `mv` might do).
    let opts = StoreOptions::default();
    let mut s = Store::open(&path, opts).unwrap();
    s.insert_alert(&alert(T0, "Drift", 1)).unwrap();
    s.flush().unwrap();
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    let wal_copy = std::fs::read(&wal).unwrap();
    drop(s);
    std::fs::rename(&path, dir.path().join("elsewhere.db")).unwrap();
    std::fs::write(&wal, &wal_copy).unwrap();
    let s = open(&path);
    assert_eq!(s.alert_count().unwrap(), 0);
    let orphans = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains("-wal.orphan-"))
        .count();
    assert_eq!(orphans, 1);
}

/// Child half of `sigkill_loses_only_the_unflushed_batch`: does nothing unless the
/// parent set `LANCET_STORE_CHILD_DB`.
#[test]
fn child_writer_for_sigkill() {
    let Some(path) = std::env::var_os("LANCET_STORE_CHILD_DB") else {
        return;
    };
    let opts = StoreOptions { flush_interval: Duration::from_secs(3600), ..StoreOptions::default() };
    let mut s = Store::open(Path::new(&path), opts).unwrap();
    for i in 0..100 {
        s.insert_alert(&alert(T0 + i, "Flushed", 1)).unwrap();
    }
    s.put_profile("sha256:k", "img", "learn", "flushed", T0).unwrap();
    s.flush().unwrap();
    for i in 0..50 {
        s.insert_alert(&alert(T0 + 1000 + i, "Unflushed", 1)).unwrap();
    }
    s.put_profile("sha256:k", "img", "learn", "unflushed", T0 + 1).unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY").unwrap();
    out.flush().unwrap();
    std::thread::sleep(Duration::from_secs(60));
    panic!("the parent should have killed this process");
}

#[test]
fn sigkill_loses_only_the_unflushed_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child_writer_for_sigkill", "--exact", "--nocapture", "--test-threads=1"])
        .env("LANCET_STORE_CHILD_DB", &path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines.by_ref().map_while(Result::ok).any(|l| l.trim().ends_with("READY")); // libtest prints "test name ... " first
    assert!(ready, "the child did not get ready");
    child.kill().unwrap(); // SIGKILL: no destructor, no commit
    let status = child.wait().unwrap();
    assert!(!status.success());

    let r = Store::open_read_only(&path).unwrap();
    assert_eq!(r.alert_count().unwrap(), 100, "flushed writes survive, the open batch is gone");
    assert_eq!(r.profile("sha256:k").unwrap().unwrap().document, "flushed");
    drop(r);
    // And the writer can take over and continue.
    let mut w = open(&path);
    w.insert_alert(&alert(T0 + 5000, "After", 1)).unwrap();
    w.flush().unwrap();
    assert_eq!(w.alert_count().unwrap(), 101);
}

#[test]
fn measure_insert_rate() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let mut s = open(&path);
    let sample = alert(T0, "Unexpected process spawned", 1);
    let n = 50_000u64;
    let started = Instant::now();
    let mut last_flush = Instant::now();
    for i in 0..n {
        let mut a = sample.clone();
        a.time_ns = T0 + i;
        s.insert_alert(&a).unwrap();
        if last_flush.elapsed() >= Duration::from_millis(200) {
            s.flush().unwrap();
            last_flush = Instant::now();
        }
    }
    s.flush().unwrap();
    let batched = n as f64 / started.elapsed().as_secs_f64();

    let m = 2_000u64;
    let started = Instant::now();
    for i in 0..m {
        let mut a = sample.clone();
        a.time_ns = T0 + n + i;
        s.insert_alert(&a).unwrap();
        s.flush().unwrap();
    }
    let per_write = m as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let stats = s.prune(T0 + n + m).unwrap();
    let prune_first = started.elapsed();
    let started = Instant::now();
    s.prune(T0 + n + m).unwrap();
    let prune_idle = started.elapsed();
    eprintln!(
        "insert rate: batched {batched:.0} alerts/s ({} B json each); commit per write {per_write:.0} alerts/s; \
         prune with {} alerts and nothing to drop: first {prune_first:?}, then {prune_idle:?} ({stats:?})",
        sample.json.len(),
        s.alert_count().unwrap()
    );
    let started = Instant::now();
    let rows = s.alerts(&AlertQuery { limit: 100, container: Some("c1".into()), ..AlertQuery::default() }).unwrap();
    eprintln!("query newest 100 of c1 among {} alerts: {:?}", n + m, started.elapsed());
    assert_eq!(rows.len(), 100);
    s.close().unwrap();
    let started = Instant::now();
    let s = open(&path);
    eprintln!("open with quick_check of {} KiB: {:?}", std::fs::metadata(&path).unwrap().len() / 1024, started.elapsed());
    drop(s);
}

fn audit_row(time_ns: u64, uid: Option<u32>, action: &str) -> NewAudit {
    NewAudit {
        time_ns,
        uid,
        pid: uid.map(|u| u + 1000),
        channel: if uid.is_some() { "unix" } else { "tcp" }.into(),
        action: action.into(),
        target: "web".into(),
        result: "ok".into(),
    }
}

#[test]
fn audit_records_round_trip_newest_first_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let mut s = open(&path);
    s.insert_audit(&audit_row(T0, Some(0), "promote")).unwrap();
    s.insert_audit(&audit_row(T0 + S, None, "reset")).unwrap();
    s.insert_audit(&NewAudit { result: "refused (403): needs root".into(), ..audit_row(T0 + 2 * S, Some(65534), "import") }).unwrap();
    s.close().unwrap();
    let s = Store::open_read_only(&path).unwrap();
    let all = s.audit(&AuditQuery::default()).unwrap();
    assert_eq!(all.iter().map(|a| a.action.as_str()).collect::<Vec<_>>(), ["import", "reset", "promote"]);
    assert_eq!(all[0].uid, Some(65534));
    assert_eq!(all[0].pid, Some(66534));
    assert!(all[0].result.starts_with("refused (403)"));
    assert_eq!((all[1].uid, all[1].pid, all[1].channel.as_str()), (None, None, "tcp"), "TCP callers have no uid");
    assert_eq!((all[2].uid, all[2].channel.as_str(), all[2].target.as_str()), (Some(0), "unix", "web"));
    let recent = s.audit(&AuditQuery { since_ns: Some(T0 + S), limit: 0 }).unwrap();
    assert_eq!(recent.len(), 2);
    assert_eq!(s.audit(&AuditQuery { since_ns: None, limit: 1 }).unwrap(), all[..1]);
}

#[test]
fn audit_retention_by_age_and_by_count() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions { audit_retention: Duration::from_secs(3600), max_audit: 5, ..StoreOptions::default() };
    let mut s = Store::open(&db(&dir), opts).unwrap();
    let now = T0 + 10 * HOUR_NS;
    s.insert_audit(&audit_row(now - 2 * HOUR_NS, Some(0), "old")).unwrap();
    for i in 0..8 {
        s.insert_audit(&audit_row(now - 10 * S + i * S, Some(0), &format!("recent{i}"))).unwrap();
    }
    let stats = s.prune(now).unwrap();
    assert_eq!(stats.audit_expired, 1);
    assert_eq!(stats.audit_capped, 3);
    let kept: Vec<String> = s.audit(&AuditQuery::default()).unwrap().into_iter().map(|a| a.action).collect();
    assert_eq!(kept, ["recent7", "recent6", "recent5", "recent4", "recent3"], "the newest are kept");
    assert_eq!(s.prune(now).unwrap(), Default::default(), "nothing left to do");
}

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o7777
}

#[test]
fn store_files_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let mut s = open(&path);
    s.insert_alert(&alert(T0, "Drift", 1)).unwrap();
    s.flush().unwrap();
    assert_eq!(mode_of(path.parent().unwrap()), 0o700, "a state directory the store creates");
    for ext in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{ext}", path.display()));
        assert_eq!(mode_of(&p), 0o600, "{}", p.display());
    }
    s.close().unwrap();

    // A store left world-readable by an older lancet is tightened at open.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let s = open(&path);
    assert_eq!(mode_of(&path), 0o600);
    drop(s);
}

#[test]
fn a_store_path_that_is_a_symlink_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let elsewhere = dir.path().join("elsewhere.db");
    std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
    let e = Store::open(&path, StoreOptions::default()).unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
    assert!(!elsewhere.exists(), "nothing was created through the link");
}

/// What the fleet's forwarder reads: alerts after an id, in the order they
/// were stored (not by time), at most a limit; the last id, which goes
/// below a cursor once every alert was pruned and ids start again.
#[test]
fn alerts_after_an_id_come_in_id_order_and_ids_can_start_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&db(&dir));
    assert_eq!(s.last_alert_id().unwrap(), 0);
    // Stored out of time order: the id order is the order they were raised.
    let ids: Vec<u64> =
        [T0 + 5 * S, T0, T0 + 2 * S].iter().enumerate().map(|(i, t)| s.insert_alert(&alert(*t, &format!("r{i}"), 1)).unwrap()).collect();
    s.flush().unwrap();
    let after = |s: &Store, id, n| s.alerts_after(id, n).unwrap().iter().map(|a| a.alert.rule.clone()).collect::<Vec<_>>();
    assert_eq!(after(&s, 0, 10), ["r0", "r1", "r2"]);
    assert_eq!(after(&s, ids[0], 10), ["r1", "r2"]);
    assert_eq!(after(&s, ids[0], 1), ["r1"]);
    assert!(after(&s, ids[2], 10).is_empty());
    assert_eq!(s.last_alert_id().unwrap(), ids[2]);
    // Everything pruned (retention): the next alert's id is not above the
    // last one a forwarder saw.
    s.prune(T0 + 400 * 24 * 3600 * S).unwrap();
    let again = s.insert_alert(&alert(T0 + 400 * 24 * 3600 * S, "new", 1)).unwrap();
    s.flush().unwrap();
    assert!(again <= ids[2], "ids start again: {again}");
    assert_eq!(s.last_alert_id().unwrap(), again);
}
