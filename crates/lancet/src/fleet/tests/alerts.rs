//! Alerts to the stream: spooled while NATS is away, once and in order,
//! across a cluster leader's death, an oversized one.

use super::*;

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
