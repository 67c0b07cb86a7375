//! The fleet against real `nats-server` processes (JetStream, loopback
//! ports), without root: two or three [`Link`]s as nodes, each with its own
//! fleet thread, exactly as `lancet run --nats` starts them. Skipped, saying
//! why, only where no server binary is installed (`scripts/setup.sh`
//! installs one).

use super::keys::{self, PROFILES_BUCKET};
use super::testserver::{self, Server};
use super::{FleetConfig, FromFleet, Link, ToFleet};
use async_nats::jetstream;
use futures_util::StreamExt;
use lancet_engine::profile::{Deviation, Mode, Profile};
use lancet_store::{NewAlert, Store, StoreOptions};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const D: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn servers(n: usize) -> Option<Vec<Server>> {
    let s = testserver::start(n);
    if s.is_none() {
        lancet_testkit::skip("nats-server is not installed (scripts/setup.sh installs it under /opt/lancet-fleet-tools)");
    }
    s
}

fn cfg(url: &str, node: &str, state: Option<&Path>) -> FleetConfig {
    FleetConfig {
        url: url.into(),
        node: node.into(),
        cluster: "test".into(),
        store: state.map(|d| d.join("lancet.db")),
        state_dir: state.map(Path::to_path_buf),
        guarantees: Arc::default(),
    }
}

/// A node under test: its link, and what it received that no wait has
/// taken yet (a mode can arrive before the answer to the proposal that
/// made it).
struct Node {
    link: Link,
    backlog: std::collections::VecDeque<FromFleet>,
}

impl Node {
    fn start(url: &str, node: &str, state: Option<&Path>) -> Node {
        let _ = tracing_subscriber::fmt().with_env_filter("lancet=info").with_test_writer().try_init();
        Node { link: Link::start(cfg(url, node, state)).unwrap(), backlog: Default::default() }
    }

    fn send(&self, m: ToFleet) {
        self.link.send(m).expect("queued");
    }
}

/// The first message `pred` accepts within `timeout`, from the backlog
/// first; the others stay in the backlog.
fn wait_for(n: &mut Node, timeout: Duration, what: &str, mut pred: impl FnMut(&FromFleet) -> bool) -> FromFleet {
    if let Some(i) = n.backlog.iter().position(&mut pred) {
        return n.backlog.remove(i).unwrap();
    }
    let deadline = Instant::now() + timeout;
    loop {
        while let Some(m) = n.link.try_recv() {
            if pred(&m) {
                return m;
            }
            n.backlog.push_back(m);
        }
        assert!(Instant::now() < deadline, "{} got no {what} within {timeout:?}", n.link.node);
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn connected(link: &mut Node) {
    wait_for(link, Duration::from_secs(60), "connection", |m| matches!(m, FromFleet::Connected(true)));
}

fn profile_with(digest: &str, exes: &[&str]) -> String {
    let mut p = Profile::new("localhost/web:1", digest, 1_800_000_000_000_000_000);
    for e in exes {
        p.allow(&Deviation::NewExecutable { path: e.to_string() }, 1_800_000_000_000_000_000);
    }
    p.to_yaml().unwrap()
}

fn propose(link: &mut Node, mode: Mode, expected: Option<u64>, ticket: u64) -> Result<u64, (u16, String)> {
    link.send(ToFleet::Propose { workload: D.into(), mode, expected, ticket });
    match wait_for(link, Duration::from_secs(15), "proposal answer", |m| matches!(m, FromFleet::Proposed { ticket: t, .. } if *t == ticket))
    {
        FromFleet::Proposed { result, .. } => result,
        _ => unreachable!(),
    }
}

fn wait_mode(link: &mut Node, revision: u64) -> (Mode, String) {
    match wait_for(link, Duration::from_secs(15), "mode", |m| matches!(m, FromFleet::Mode { revision: r, .. } if *r == revision)) {
        FromFleet::Mode { mode, by, .. } => (mode, by),
        _ => unreachable!(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn nodes_share_observations_and_change_modes_by_compare_and_swap() {
    let Some(s) = servers(1) else { return };
    let (mut a, mut b) = (Node::start(&s[0].url(), "a", None), Node::start(&s[0].url(), "b", None));
    connected(&mut a);
    connected(&mut b);
    a.send(ToFleet::Observations { workload: D.into(), yaml: profile_with(D, &["/usr/sbin/httpd"]) });
    match wait_for(&mut b, Duration::from_secs(10), "a's observations", |m| matches!(m, FromFleet::Observations { .. })) {
        FromFleet::Observations { workload, node, profile, .. } => {
            assert_eq!((workload.as_str(), node.as_str()), (D, "a"));
            assert!(profile.has_executable("/usr/sbin/httpd"));
        }
        _ => unreachable!(),
    }
    // A workload not keyed by a digest is never shared.
    a.send(ToFleet::Observations { workload: "localhost/web:1".into(), yaml: profile_with(D, &["/x"]) });
    // The first mode: created; a second creation loses.
    let r1 = propose(&mut b, Mode::Protect, None, 1).expect("the first promotion wins");
    assert_eq!(wait_mode(&mut a, r1), (Mode::Protect, "b".to_string()));
    let lost = propose(&mut a, Mode::Monitor, None, 2).unwrap_err();
    assert_eq!(lost.0, 409, "{lost:?}");
    // From the revision seen: wins; from an old one: loses.
    let r2 = propose(&mut a, Mode::Monitor, Some(r1), 3).expect("from the current revision");
    assert_eq!(wait_mode(&mut b, r2), (Mode::Monitor, "a".to_string()));
    assert_eq!(propose(&mut b, Mode::Learn, Some(r1), 4).unwrap_err().0, 409);
    // Our own observations never come back; the unshared workload never
    // reached the bucket.
    let keys: Vec<String> = runtime().block_on(async {
        let js = jetstream::new(async_nats::connect(s[0].url()).await.unwrap());
        let kv = js.get_key_value(PROFILES_BUCKET).await.unwrap();
        kv.keys().await.unwrap().filter_map(|k| async move { k.ok() }).collect().await
    });
    let mut keys = keys;
    keys.sort();
    assert_eq!(keys, [keys::mode_key(D).unwrap(), keys::observations_key(D, "a").unwrap()]);
    assert!(std::iter::from_fn(|| a.link.try_recv()).chain(a.backlog.drain(..)).all(|m| !matches!(m, FromFleet::Observations { .. })));
}

/// Two nodes promote the same workload from the same revision at the same
/// moment, 20 times: each time exactly one wins and the other gets 409.
#[test]
fn of_two_concurrent_promotions_exactly_one_wins() {
    let Some(s) = servers(1) else { return };
    let (mut a, mut b) = (Node::start(&s[0].url(), "a", None), Node::start(&s[0].url(), "b", None));
    connected(&mut a);
    connected(&mut b);
    let mut rev = propose(&mut a, Mode::Learn, None, 1).unwrap();
    for round in 0..20u64 {
        let (ta, tb) = (100 + 2 * round, 101 + 2 * round);
        a.send(ToFleet::Propose { workload: D.into(), mode: Mode::Monitor, expected: Some(rev), ticket: ta });
        b.send(ToFleet::Propose { workload: D.into(), mode: Mode::Protect, expected: Some(rev), ticket: tb });
        let answer = |l: &mut Node, t: u64| match wait_for(
            l,
            Duration::from_secs(10),
            "answer",
            |m| matches!(m, FromFleet::Proposed { ticket, .. } if *ticket == t),
        ) {
            FromFleet::Proposed { result, .. } => result,
            _ => unreachable!(),
        };
        let (ra, rb) = (answer(&mut a, ta), answer(&mut b, tb));
        match (&ra, &rb) {
            (Ok(r), Err((409, _))) | (Err((409, _)), Ok(r)) => rev = *r,
            other => panic!("round {round}: not exactly one winner: {other:?}"),
        }
        // Both learn the winner.
        let winner = if ra.is_ok() { Mode::Monitor } else { Mode::Protect };
        assert_eq!(wait_mode(&mut a, rev).0, winner);
        assert_eq!(wait_mode(&mut b, rev).0, winner);
    }
}

/// 100 promotions on node a: the time until node b's fleet thread hands
/// the new mode to b's loop (the loop applies it at its next tick).
#[test]
fn promotion_propagation_is_measured_over_100_promotions() {
    let Some(s) = servers(1) else { return };
    let (mut a, mut b) = (Node::start(&s[0].url(), "a", None), Node::start(&s[0].url(), "b", None));
    connected(&mut a);
    connected(&mut b);
    let mut rev = None;
    let mut took = Vec::new();
    for i in 0..100u64 {
        let mode = if i % 2 == 0 { Mode::Protect } else { Mode::Monitor };
        let t0 = Instant::now();
        let r = propose(&mut a, mode, rev, i + 1).unwrap();
        assert_eq!(wait_mode(&mut b, r).0, mode);
        took.push(t0.elapsed());
        rev = Some(r);
    }
    took.sort();
    let (p50, p99) = (took[49], took[98]);
    println!("fleet: promotion propagation node a -> node b over 100 promotions: p50 {p50:?}, p99 {p99:?}, max {:?}", took[99]);
    assert!(p99 < Duration::from_secs(5), "p99 {p99:?}");
}

/// What another (compromised) node writes into the bucket is parsed off
/// the loop, bounded, and refused when it is not a profile of the image its
/// key names, not a mode, or not a key of ours; the valid value after it
/// still arrives.
#[test]
fn values_from_other_nodes_are_checked_before_the_loop_sees_them() {
    let Some(s) = servers(1) else { return };
    let mut b = Node::start(&s[0].url(), "b", None);
    connected(&mut b);
    let tok = keys::workload_token(D).unwrap();
    runtime().block_on(async {
        let js = jetstream::new(async_nats::connect(s[0].url()).await.unwrap());
        let kv = js.get_key_value(PROFILES_BUCKET).await.unwrap();
        let puts: Vec<(String, Vec<u8>)> = vec![
            (format!("{tok}.obs.evil1"), b"apiVersion: [".to_vec()),
            (format!("{tok}.obs.evil2"), profile_with(D2, &["/bin/sh"]).into_bytes()),
            (format!("{tok}.obs.evil3"), vec![b'#'; keys::MAX_OBSERVATIONS_BYTES + 1]),
            (format!("{tok}.obs.evil4"), vec![0xff, 0xfe, 0x00]),
            (format!("{tok}.mode"), br#"{"mode":"root","node":"evil","timeNs":1}"#.to_vec()),
            (format!("{tok}.mode"), br#"{"mode":"learn","node":"ev.il","timeNs":1}"#.to_vec()),
            ("unrelated.key".to_string(), b"x".to_vec()),
            (format!("{tok}.obs.good"), profile_with(D, &["/bin/ok"]).into_bytes()),
        ];
        for (k, v) in puts {
            kv.put(&k, v.into()).await.unwrap();
        }
    });
    let mut seen = Vec::new();
    wait_for(&mut b, Duration::from_secs(10), "the good observations", |m| {
        seen.push(format!("{m:?}").chars().take(120).collect::<String>());
        matches!(m, FromFleet::Observations { node, .. } if node == "good")
    });
    let bad: Vec<&String> = seen.iter().filter(|m| m.contains("evil") || m.starts_with("Mode")).collect();
    assert!(bad.is_empty(), "refused values reached the loop: {bad:?}");
}

fn alert(store: &mut Store, i: u64) {
    let json = serde_json::json!({"rule": format!("rule {i}"), "priority": "Warning", "output": format!("alert {i}")}).to_string();
    store
        .insert_alert(&NewAlert {
            time_ns: 1_800_000_000_000_000_000 + i,
            rule: format!("rule {i}"),
            priority: if i % 2 == 0 { "Warning".into() } else { "Critical".into() },
            container_id: "c".repeat(64),
            container_name: "web".into(),
            image: "img".into(),
            workload: D.into(),
            action: "alert".into(),
            enforced: false,
            count: 1,
            json,
        })
        .unwrap();
    store.flush().unwrap();
}

/// Every message of the alerts stream, in stream order.
fn stream_alerts(url: &str) -> Vec<(String, serde_json::Value)> {
    try_stream_alerts(url).expect("the alerts stream is readable")
}

/// [`stream_alerts`], or None while the stream cannot be read (a cluster
/// electing a leader).
fn try_stream_alerts(url: &str) -> Option<Vec<(String, serde_json::Value)>> {
    runtime().block_on(async {
        let js = jetstream::new(async_nats::connect(url).await.ok()?);
        let stream = js.get_stream(keys::ALERTS_STREAM).await.ok()?;
        let consumer = stream.create_consumer(jetstream::consumer::pull::OrderedConfig::default()).await.ok()?;
        let mut msgs = consumer.messages().await.ok()?;
        let mut out = Vec::new();
        while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(500), msgs.next()).await {
            out.push((m.subject.to_string(), serde_json::from_slice(&m.payload).ok()?));
        }
        Some(out)
    })
}

fn wait_stream(url: &str, n: usize) -> Vec<(String, serde_json::Value)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = stream_alerts(url);
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// NATS goes away: the node keeps its alerts in its store, queues its
/// observations, refuses promotions (503); NATS comes back: every alert
/// arrives once, in order, with node and cluster, and the other node gets
/// the observations. A restarted forwarder sends nothing twice.
#[test]
fn while_nats_is_down_alerts_wait_in_the_store_and_arrive_once_in_order() {
    let Some(mut s) = servers(1) else { return };
    let url = s[0].url();
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("lancet.db"), StoreOptions::default()).unwrap();
    for i in 1..=3 {
        alert(&mut store, i);
    }
    let mut a = Node::start(&url, "a", Some(dir.path()));
    let mut b = Node::start(&url, "b", None);
    connected(&mut a);
    connected(&mut b);
    assert_eq!(wait_stream(&url, 3).len(), 3);

    s[0].stop();
    wait_for(&mut a, Duration::from_secs(10), "disconnection", |m| matches!(m, FromFleet::Connected(false)));
    for i in 4..=8 {
        alert(&mut store, i);
    }
    a.send(ToFleet::Observations { workload: D.into(), yaml: profile_with(D, &["/offline/learned"]) });
    let refused = propose(&mut a, Mode::Protect, None, 9).unwrap_err();
    assert_eq!(refused.0, 503, "{refused:?}");

    s[0].start();
    connected(&mut a);
    match wait_for(&mut b, Duration::from_secs(30), "observations queued while down", |m| matches!(m, FromFleet::Observations { .. })) {
        FromFleet::Observations { profile, .. } => assert!(profile.has_executable("/offline/learned")),
        _ => unreachable!(),
    }
    let got = wait_stream(&url, 8);
    let ids: Vec<u64> = got.iter().map(|(_, v)| v["lancet_id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (1..=8).collect::<Vec<_>>(), "once each, in order");
    let counted = |n: &Node| n.link.counters.alert_cursor.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(counted(&a), 8, "the cursor status shows");
    for (subject, v) in &got {
        let i = v["lancet_id"].as_u64().unwrap();
        let prio = if i % 2 == 0 { "warning" } else { "critical" };
        assert_eq!(subject, &format!("lancet.alerts.test.a.{prio}"));
        assert_eq!((v["node"].as_str(), v["cluster"].as_str()), (Some("a"), Some("test")));
        assert_eq!(v["rule"], format!("rule {i}"));
    }
    // A new forwarder (an agent restart) starts from the saved cursor.
    drop(a);
    let mut a = Node::start(&url, "a", Some(dir.path()));
    connected(&mut a);
    alert(&mut store, 9);
    let got = wait_stream(&url, 9);
    let ids: Vec<u64> = got.iter().map(|(_, v)| v["lancet_id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (1..=9).collect::<Vec<_>>());
}

/// A 3-node cluster: the bucket has 3 replicas; the server leading the
/// bucket's stream is killed; no promotion acknowledged before is lost,
/// and promotions go on (after the new leader is elected) and reach the
/// other node.
#[test]
fn a_three_node_cluster_keeps_every_promotion_when_its_leader_dies() {
    let Some(mut s) = servers(3) else { return };
    let url = testserver::urls(&s);
    let (mut a, mut b) = (Node::start(&url, "a", None), Node::start(&url, "b", None));
    connected(&mut a);
    connected(&mut b);
    let mut rev = None;
    let mut last = Mode::Learn;
    for i in 0..5u64 {
        last = if i % 2 == 0 { Mode::Protect } else { Mode::Monitor };
        rev = Some(propose(&mut a, last, rev, i + 1).unwrap());
    }
    let first = s[0].url();
    let (replicas, leader) = runtime().block_on(async {
        let js = jetstream::new(async_nats::connect(first).await.unwrap());
        let mut st = js.get_stream(format!("KV_{PROFILES_BUCKET}")).await.unwrap();
        let info = st.info().await.unwrap();
        (info.config.num_replicas, info.cluster.as_ref().and_then(|c| c.leader.clone()).unwrap_or_default())
    });
    assert_eq!(replicas, 3);
    let victim = leader.strip_prefix('n').and_then(|n| n.parse::<usize>().ok()).filter(|i| *i < 3);
    let victim = victim.unwrap_or_else(|| panic!("the bucket's leader {leader:?} is not one of n0, n1, n2"));
    s[victim].stop();
    let alive = s.iter().find(|x| x.port != s[victim].port).unwrap().url();
    // Nothing acknowledged was lost.
    let stored = runtime().block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let js = jetstream::new(async_nats::connect(alive.as_str()).await.unwrap());
            if let Ok(kv) = js.get_key_value(PROFILES_BUCKET).await {
                if let Ok(Some(e)) = kv.entry(keys::mode_key(D).unwrap()).await {
                    return (e.revision, keys::ModeDoc::parse(&e.value));
                }
            }
            assert!(Instant::now() < deadline, "the bucket was not readable after the leader died");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    assert_eq!(stored, (rev.unwrap(), Some((last, "a".to_string()))));
    // Promotions go on once a new leader is elected (503 meanwhile).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ticket = 100;
    let r = loop {
        ticket += 1;
        match propose(&mut a, Mode::Learn, rev, ticket) {
            Ok(r) => break r,
            Err((503, _)) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(500)),
            Err(e) => panic!("promotion after the leader died: {e:?}"),
        }
    };
    assert_eq!(wait_mode(&mut b, r).0, Mode::Learn);
}

/// A 3-node cluster: the alerts stream has 3 replicas; the server leading
/// it is killed while a node forwards: every alert, before and after,
/// arrives once and in order.
#[test]
fn a_three_node_cluster_loses_no_alert_when_the_streams_leader_dies() {
    let Some(mut s) = servers(3) else { return };
    let url = testserver::urls(&s);
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("lancet.db"), StoreOptions::default()).unwrap();
    let mut a = Node::start(&url, "a", Some(dir.path()));
    connected(&mut a);
    for i in 1..=3 {
        alert(&mut store, i);
    }
    assert_eq!(wait_stream(&s[0].url(), 3).len(), 3);
    let first = s[0].url();
    let (replicas, leader) = runtime().block_on(async {
        let js = jetstream::new(async_nats::connect(first).await.unwrap());
        let mut st = js.get_stream(keys::ALERTS_STREAM).await.unwrap();
        let info = st.info().await.unwrap();
        (info.config.num_replicas, info.cluster.as_ref().and_then(|c| c.leader.clone()).unwrap_or_default())
    });
    assert_eq!(replicas, 3);
    let victim = leader.strip_prefix('n').and_then(|n| n.parse::<usize>().ok()).filter(|i| *i < 3);
    let victim = victim.unwrap_or_else(|| panic!("the stream's leader {leader:?} is not one of n0, n1, n2"));
    s[victim].stop();
    for i in 4..=6 {
        alert(&mut store, i);
    }
    let alive = s.iter().find(|x| x.port != s[victim].port).unwrap().url();
    let deadline = Instant::now() + Duration::from_secs(60);
    let got = loop {
        let got = try_stream_alerts(&alive).unwrap_or_default();
        if got.len() >= 6 || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let ids: Vec<u64> = got.iter().map(|(_, v)| v["lancet_id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (1..=6).collect::<Vec<_>>(), "once each, in order, across the leader's death");
}

/// `lancet hub`'s API on a real server: every node's heartbeat, and every
/// node's alerts with `node`, filtered by node and time; a bad parameter
/// is a 400.
#[test]
fn the_hub_lists_nodes_and_their_alerts() {
    let Some(s) = servers(1) else { return };
    let url = s[0].url();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut stores = [dir_a.path(), dir_b.path()].map(|d| Store::open(&d.join("lancet.db"), StoreOptions::default()).unwrap());
    let mut a = Node::start(&url, "a", Some(dir_a.path()));
    let mut b = Node::start(&url, "b", Some(dir_b.path()));
    connected(&mut a);
    connected(&mut b);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hub = {
        let (stop, args) = (
            Arc::clone(&stop),
            super::hub::HubArgs { nats: url.clone(), listen: format!("127.0.0.1:{port}").parse().unwrap(), state_dir: None },
        );
        std::thread::spawn(move || runtime().block_on(super::hub::serve(args, stop)).unwrap())
    };
    let try_get = |path: &str| -> Option<(u16, serde_json::Value)> {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut r = agent.get(&format!("http://127.0.0.1:{port}{path}")).call().ok()?;
        Some((r.status().as_u16(), r.body_mut().read_json().unwrap_or_default()))
    };
    let get = |path: &str| try_get(path).expect("the hub answers");
    let deadline = Instant::now() + Duration::from_secs(20);
    let nodes = loop {
        let got = try_get("/v1/nodes");
        if let Some((200, v)) = got.filter(|(_, v)| v.as_array().is_some_and(|a| a.len() == 2)) {
            break v;
        }
        assert!(Instant::now() < deadline, "the hub did not list both nodes within 20 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    let now = lancet_engine::event::now_ns();
    for (n, name) in nodes.as_array().unwrap().iter().zip(["a", "b"]) {
        assert_eq!((n["name"].as_str(), n["cluster"].as_str()), (Some(name), Some("test")), "{nodes}");
        let age = now.saturating_sub(n["lastHeartbeatNs"].as_u64().unwrap());
        assert!(age < 10_000_000_000, "the last heartbeat is {age} ns old");
        assert!(n["lastHeartbeat"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
    // Alerts of both nodes, now (so `since=1h` takes them).
    for (i, store) in stores.iter_mut().enumerate() {
        for j in 0..3u64 {
            let rule = format!("rule {i}.{j}");
            let json = serde_json::json!({"rule": rule, "priority": "Warning"}).to_string();
            store
                .insert_alert(&NewAlert {
                    time_ns: lancet_engine::event::now_ns(),
                    rule,
                    priority: "Warning".into(),
                    container_id: "c".repeat(64),
                    container_name: "web".into(),
                    image: "img".into(),
                    workload: D.into(),
                    action: "alert".into(),
                    enforced: false,
                    count: 1,
                    json,
                })
                .unwrap();
        }
        store.flush().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, all) = get("/v1/alerts?since=1h");
        assert_eq!(status, 200);
        if all.as_array().unwrap().len() == 6 {
            break;
        }
        assert!(Instant::now() < deadline, "the hub did not show the 6 alerts: {all}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A message whose subject names another node than its body is not shown.
    runtime().block_on(async {
        let js = jetstream::new(async_nats::connect(url.as_str()).await.unwrap());
        let forged = serde_json::json!({"rule": "forged", "node": "a", "cluster": "test", "time_ns": lancet_engine::event::now_ns()});
        js.publish("lancet.alerts.test.b.warning", forged.to_string().into()).await.unwrap().await.unwrap();
    });
    let (_, only_b) = get("/v1/alerts?node=b");
    let rules: Vec<&str> = only_b.as_array().unwrap().iter().map(|v| v["rule"].as_str().unwrap()).collect();
    assert_eq!(rules, ["rule 1.0", "rule 1.1", "rule 1.2"]);
    assert!(only_b.as_array().unwrap().iter().all(|v| v["node"] == "b" && v["cluster"] == "test"));
    let (_, none) = get(&format!("/v1/alerts?since_ns={}", lancet_engine::event::now_ns() + 60_000_000_000));
    assert_eq!(none, serde_json::json!([]));
    // End-to-end latency: stored on node a (committed, as the agent's loop
    // commits at least every 100 ms) until the hub serves it.
    let mut took = Vec::new();
    for i in 0..20u64 {
        let rule = format!("latency {i}");
        let t0 = Instant::now();
        let json = serde_json::json!({"rule": rule, "priority": "Notice"}).to_string();
        stores[0]
            .insert_alert(&NewAlert {
                time_ns: lancet_engine::event::now_ns(),
                rule: rule.clone(),
                priority: "Notice".into(),
                container_id: "c".repeat(64),
                container_name: "web".into(),
                image: "img".into(),
                workload: D.into(),
                action: "alert".into(),
                enforced: false,
                count: 1,
                json,
            })
            .unwrap();
        stores[0].flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !get("/v1/alerts?node=a&limit=5").1.as_array().unwrap().iter().any(|v| v["rule"] == rule.as_str()) {
            assert!(Instant::now() < deadline, "{rule} did not reach the hub in 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        took.push(t0.elapsed());
    }
    took.sort();
    println!("fleet: alert latency node store -> hub API over 20 alerts: p50 {:?}, max {:?}", took[9], took[19]);
    // Published before the 20 above, so taken by the hub by now: the forged
    // message is not shown under either node.
    let (_, all) = get("/v1/alerts?since=1h");
    assert_eq!(all.as_array().unwrap().len(), 26, "{all}");
    assert!(all.as_array().unwrap().iter().all(|v| v["rule"] != "forged"), "{all}");
    assert_eq!(get("/v1/alerts?nod=b").0, 400, "an unknown parameter");
    assert_eq!(get("/v1/alerts?since=yesterday").0, 400);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    hub.join().unwrap();
}

/// `lancet hub --state-dir`: alerts taken from the stream are kept; a
/// restarted hub shows them even after the stream dropped them (purged
/// here), goes on from where it stopped, and shows none twice.
#[test]
fn a_hub_with_a_state_dir_keeps_what_it_took_across_a_restart() {
    let Some(s) = servers(1) else { return };
    let url = s[0].url();
    let (dir_a, hub_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut store = Store::open(&dir_a.path().join("lancet.db"), StoreOptions::default()).unwrap();
    let mut a = Node::start(&url, "a", Some(dir_a.path()));
    connected(&mut a);
    let start_hub = || {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let args = super::hub::HubArgs {
            nats: url.clone(),
            listen: format!("127.0.0.1:{port}").parse().unwrap(),
            state_dir: Some(hub_dir.path().join("hub")),
        };
        let thread_stop = Arc::clone(&stop);
        let t = std::thread::spawn(move || runtime().block_on(super::hub::serve(args, thread_stop)).unwrap());
        (port, stop, t)
    };
    let ids = |port: u16, n: usize| -> Vec<u64> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = ureq::get(&format!("http://127.0.0.1:{port}/v1/alerts"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_json::<serde_json::Value>().ok())
                .map(|v| v.as_array().unwrap().iter().map(|a| a["lancet_id"].as_u64().unwrap()).collect::<Vec<_>>())
                .unwrap_or_default();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    for i in 1..=3 {
        alert(&mut store, i);
    }
    let (port, stop, t) = start_hub();
    assert_eq!(ids(port, 3), [1, 2, 3]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    t.join().unwrap();
    runtime().block_on(async {
        let js = jetstream::new(async_nats::connect(url.as_str()).await.unwrap());
        js.get_stream(keys::ALERTS_STREAM).await.unwrap().purge().await.unwrap();
    });
    for i in 4..=5 {
        alert(&mut store, i);
    }
    let (port, stop, t) = start_hub();
    let got = ids(port, 5);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ids(port, 5), got, "nothing more arrived");
    assert_eq!(got, [1, 2, 3, 4, 5], "kept ones from the store, new ones from the stream, none twice");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    t.join().unwrap();
}

/// `--nats`, `--node`, `--cluster` or the configuration file's `nats`,
/// `node`, `cluster`: flags win; a name that is not one token, or a node
/// name without a fleet, is an error; no URL, no fleet.
#[test]
fn fleet_settings_come_from_flags_then_the_file() {
    use super::FleetArgs;
    let dir = Path::new("/var/lib/lancet");
    let file: crate::config::FileConfig = serde_norway::from_str("nats: nats://10.0.0.1:4222\nnode: from-file\ncluster: prod\n").unwrap();
    let none = FleetArgs::default();
    let c = none.config(&file, dir).unwrap().unwrap();
    assert_eq!((c.url.as_str(), c.node.as_str(), c.cluster.as_str()), ("nats://10.0.0.1:4222", "from-file", "prod"));
    assert_eq!(c.store.as_deref(), Some(dir.join("lancet.db").as_path()));
    let flags = FleetArgs { nats: Some("nats://127.0.0.1:4222".into()), node: Some("flag".into()), cluster: None };
    let c = flags.config(&file, dir).unwrap().unwrap();
    assert_eq!((c.url.as_str(), c.node.as_str(), c.cluster.as_str()), ("nats://127.0.0.1:4222", "flag", "prod"));
    let empty = crate::config::FileConfig::default();
    assert!(none.config(&empty, dir).unwrap().is_none(), "no URL, no fleet");
    let c = FleetArgs { nats: Some("nats://x:1".into()), ..Default::default() }.config(&empty, dir).unwrap().unwrap();
    assert!(keys::valid_name(&c.node) && c.cluster == "default", "the hostname, made a name: {c:?}");
    let lonely = FleetArgs { node: Some("a".into()), ..Default::default() };
    assert!(lonely.config(&empty, dir).unwrap_err().to_string().contains("--nats"));
    let k8s = FleetArgs { nats: Some("nats://x:1".into()), node: Some("ip-10-0-0-1.ec2.internal".into()), cluster: None };
    assert_eq!(k8s.config(&empty, dir).unwrap().unwrap().node, "ip-10-0-0-1_ec2_internal");
    let bad = FleetArgs { nats: Some("nats://x:1".into()), node: Some("a b".into()), cluster: None };
    assert!(bad.config(&empty, dir).is_err());
}

/// An alert too large to send whole is sent cut (its rule, priority, node,
/// id), and the ones after it still go.
#[test]
fn an_oversized_alert_is_sent_cut_and_the_next_ones_still_go() {
    let Some(s) = servers(1) else { return };
    let url = s[0].url();
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("lancet.db"), StoreOptions::default()).unwrap();
    let big = serde_json::json!({"rule": "big", "priority": "Warning", "output": "x".repeat(2 << 20)}).to_string();
    store
        .insert_alert(&NewAlert {
            time_ns: 1,
            rule: "big".into(),
            priority: "Warning".into(),
            container_id: "c".repeat(64),
            container_name: "web".into(),
            image: "img".into(),
            workload: D.into(),
            action: "alert".into(),
            enforced: false,
            count: 1,
            json: big,
        })
        .unwrap();
    store.flush().unwrap();
    alert(&mut store, 2);
    let mut a = Node::start(&url, "a", Some(dir.path()));
    connected(&mut a);
    let got = wait_stream(&url, 2);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!((got[0].1["rule"].as_str(), got[0].1["lancet_truncated"].as_bool()), (Some("big"), Some(true)));
    assert_eq!(got[1].1["rule"], "rule 2");
}

/// What the other nodes said is kept on the node's disk: an agent started
/// again while NATS is away gets the other nodes' observations and the
/// fleet's modes before NATS is tried; a cached file that is not a valid
/// value is refused.
#[test]
fn a_node_started_without_nats_has_what_the_others_said() {
    let Some(mut s) = servers(1) else { return };
    let url = s[0].url();
    let dir = tempfile::tempdir().unwrap();
    let mut a = Node::start(&url, "a", None);
    let mut b = Node::start(&url, "b", Some(dir.path()));
    connected(&mut a);
    connected(&mut b);
    a.send(ToFleet::Observations { workload: D.into(), yaml: profile_with(D, &["/only/on/a"]) });
    let rev = propose(&mut a, Mode::Protect, None, 1).unwrap();
    wait_mode(&mut b, rev);
    wait_for(&mut b, Duration::from_secs(10), "a's observations", |m| matches!(m, FromFleet::Observations { .. }));
    drop(b);
    s[0].stop();
    let tok = keys::workload_token(D).unwrap();
    std::fs::write(dir.path().join("fleet").join(format!("{tok}.obs.evil")), "apiVersion: [").unwrap();
    std::fs::write(dir.path().join("fleet").join("not-a-key"), "x").unwrap();
    let mut b = Node::start(&url, "b", Some(dir.path()));
    let got = wait_for(&mut b, Duration::from_secs(5), "cached observations", |m| matches!(m, FromFleet::Observations { .. }));
    match got {
        FromFleet::Observations { node, profile, .. } => assert!(node == "a" && profile.has_executable("/only/on/a")),
        _ => unreachable!(),
    }
    assert_eq!(wait_mode(&mut b, rev), (Mode::Protect, "a".to_string()));
    std::thread::sleep(Duration::from_millis(300));
    let rest: Vec<String> = std::iter::from_fn(|| b.link.try_recv()).chain(b.backlog.drain(..)).map(|m| format!("{m:?}")).collect();
    assert!(rest.iter().all(|m| !m.contains("evil") && !m.starts_with("Connected(true")), "{rest:?}");
}
