//! `lancet hub`: nodes and alerts, and its state directory.

use super::*;

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
    let hub = TestHub::on(&url);
    let try_get = |path: &str| hub.try_get(path);
    let get = |path: &str| hub.get(path);
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
    // Without the token, or with another, nothing is shown.
    for path in ["/v1/nodes", "/v1/alerts", "/v1/workloads", "/v1/map", "/"] {
        let (status, body) = hub.request(path, None).unwrap();
        assert_eq!(status, 401, "{path} without the token: {body}");
        assert!(!body.contains("rule 1.0") && !body.contains("\"a\""), "{path} leaked: {body}");
        assert_eq!(hub.request(path, Some(&"ab".repeat(32))).unwrap().0, 403, "{path} with another token");
    }
    assert_eq!(hub.request("/healthz", None).unwrap().0, 200);
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
        TestHub::start(crate::fleet::hub::HubArgs {
            nats: Some(url.clone()),
            state_dir: Some(hub_dir.path().join("hub")),
            ..Default::default()
        })
    };
    let ids = |hub: &TestHub, n: usize| -> Vec<u64> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = hub
                .try_get("/v1/alerts")
                .and_then(|(_, v)| v.as_array().map(|a| a.iter().map(|a| a["lancet_id"].as_u64().unwrap()).collect::<Vec<_>>()))
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
    let hub = start_hub();
    assert_eq!(ids(&hub, 3), [1, 2, 3]);
    drop(hub);
    runtime().block_on(async {
        let js = jetstream::new(async_nats::connect(url.as_str()).await.unwrap());
        js.get_stream(keys::ALERTS_STREAM).await.unwrap().purge().await.unwrap();
    });
    for i in 4..=5 {
        alert(&mut store, i);
    }
    let hub = start_hub();
    let got = ids(&hub, 5);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ids(&hub, 5), got, "nothing more arrived");
    assert_eq!(got, [1, 2, 3, 4, 5], "kept ones from the store, new ones from the stream, none twice");
}
