//! `lancet hub`'s workloads and map across nodes, from what two nodes
//! publish through their links (their presence from the loop, their flows
//! from their stores) on a real server.

use super::*;
use crate::fleet::presence::{RunningContainer, RunningWorkload};
use lancet_engine::flows::{FlowCounters, FlowEnd, FlowRow};

pub(super) const D3: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

fn id(c: char) -> String {
    c.to_string().repeat(64)
}

fn container(c: char, workload: &str) -> FlowEnd {
    let name = format!(
        "{}-{c}",
        if workload == D {
            "web"
        } else if workload == D2 {
            "cache"
        } else {
            "db"
        }
    );
    FlowEnd { kind: "container".into(), id: id(c), name, workload: workload.into() }
}

fn external(addr: &str) -> FlowEnd {
    FlowEnd { kind: "external".into(), id: addr.into(), ..Default::default() }
}

fn flow(store: &mut Store, src: FlowEnd, dst: FlowEnd, port: u16, connections: u64) {
    let now = lancet_engine::event::now_ns();
    let counts = FlowCounters { connections, first_ns: now - 1_000_000_000, last_ns: now, ..Default::default() };
    let row = FlowRow { hour_ns: now, src, dst, port, proto: "tcp".into(), counts, verdict: "learning".into(), rule: String::new() };
    store.add_flows(&[row]).unwrap();
    store.flush().unwrap();
}

fn running(workload: &str, image: &str, mode: &str, cs: &[(char, &str)]) -> RunningWorkload {
    let containers: Vec<RunningContainer> = cs
        .iter()
        .map(|(c, addr)| RunningContainer { id: id(*c), name: container(*c, workload).name, addrs: vec![addr.to_string()] })
        .collect();
    RunningWorkload { workload: workload.into(), image: image.into(), mode: mode.into(), count: containers.len() as u32, containers }
}

/// Two nodes as two agents would be: node a runs web (D, web-1 at
/// 10.88.0.5) and a cache (D2, cache-2 at 10.88.0.6); node b runs web
/// (web-3) and a database (D3, db-4 at 10.88.1.2). Node a's web talks to
/// its cache (6379, 3 connections) and to b's database (5432, 7
/// connections), which node b counts too, as inbound from 10.88.0.5. Web
/// is promoted to protect by node a, which also shared its observations.
/// Each node raised an alert.
pub(super) struct TwoNodes {
    _links: [Node; 2],
    _dirs: [tempfile::TempDir; 2],
}

pub(super) fn two_nodes(url: &str) -> TwoNodes {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut stores = dirs.each_ref().map(|d| Store::open(&d.path().join("lancet.db"), StoreOptions::default()).unwrap());
    flow(&mut stores[0], container('1', D), container('2', D2), 6379, 3);
    flow(&mut stores[0], container('1', D), external("10.88.1.2"), 5432, 7);
    flow(&mut stores[1], external("10.88.0.5"), container('4', D3), 5432, 7);
    let mut a = Node::start(url, "a", Some(dirs[0].path()));
    let mut b = Node::start(url, "b", Some(dirs[1].path()));
    connected(&mut a);
    connected(&mut b);
    a.send(ToFleet::Presence(vec![
        running(D, "localhost/web:1", "protect", &[('1', "10.88.0.5")]),
        running(D2, "localhost/cache:1", "learn", &[('2', "10.88.0.6")]),
    ]));
    b.send(ToFleet::Presence(vec![
        running(D, "localhost/web:1", "protect", &[('3', "10.88.1.3")]),
        running(D3, "localhost/db:1", "monitor", &[('4', "10.88.1.2")]),
    ]));
    a.send(ToFleet::Observations { workload: D.into(), yaml: profile_with(D, &["/bin/httpd"]) });
    propose(&mut a, Mode::Protect, None, 1).expect("promoted");
    for (i, store) in stores.iter_mut().enumerate() {
        let node = ["a", "b"][i];
        let json = serde_json::json!({"rule": format!("Drift on {node}"), "priority": "Critical", "output": format!("alert of {node}")});
        store
            .insert_alert(&NewAlert {
                time_ns: lancet_engine::event::now_ns(),
                rule: format!("Drift on {node}"),
                priority: "Critical".into(),
                container_id: id('1'),
                container_name: format!("web-{node}"),
                image: "localhost/web:1".into(),
                workload: D.into(),
                action: "alert".into(),
                enforced: false,
                count: 1,
                json: json.to_string(),
            })
            .unwrap();
        store.flush().unwrap();
    }
    TwoNodes { _links: [a, b], _dirs: dirs }
}

/// Polls `path` on the hub until `done` holds.
pub(super) fn wait_json(hub: &TestHub, path: &str, what: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((200, v)) = hub.try_get(path) {
            if done(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "{what}: {path} is {v:#}");
        }
        assert!(Instant::now() < deadline, "{what}: {path} did not answer");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_hub_shows_workloads_and_the_map_across_nodes() {
    let Some(s) = servers(1) else { return };
    let url = s[0].url();
    let _nodes = two_nodes(&url);
    let hub = TestHub::on(&url);
    let t0 = Instant::now();
    let ws = wait_json(&hub, "/v1/workloads", "web on both nodes, in protect, observed by a", |v| {
        v.as_array().is_some_and(|a| {
            a.iter().any(|w| {
                w["workload"] == D && w["nodes"].as_array().is_some_and(|n| n.len() == 2) && w["observedBy"] == serde_json::json!(["a"])
            })
        })
    });
    println!("fleet: workloads of two nodes on the hub after {:?}", t0.elapsed());
    let by = |k: &str| ws.as_array().unwrap().iter().find(|w| w["workload"] == k).cloned().unwrap_or_default();
    let web = by(D);
    assert_eq!(
        (web["mode"].as_str(), web["image"].as_str(), web["containers"].as_u64()),
        (Some("protect"), Some("localhost/web:1"), Some(2)),
        "{web:#}"
    );
    let on: Vec<(&str, &str, u64)> = web["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["node"].as_str().unwrap(), n["mode"].as_str().unwrap(), n["containers"].as_u64().unwrap()))
        .collect();
    assert_eq!(on, [("a", "protect", 1), ("b", "protect", 1)]);
    assert_eq!(web["nodes"][1]["names"], serde_json::json!(["web-3"]));
    let db = by(D3);
    assert_eq!(
        (db["mode"].clone(), db["nodes"][0]["node"].as_str(), db["nodes"][0]["mode"].as_str()),
        (serde_json::Value::Null, Some("b"), Some("monitor")),
        "{db:#}"
    );
    assert_eq!(by(D2)["nodes"][0]["node"], "a");

    let map = wait_json(&hub, "/v1/map", "both nodes' edges", |v| v["edges"].as_array().is_some_and(|e| e.len() == 2));
    let edges = map["edges"].as_array().unwrap();
    let cross = edges.iter().find(|e| e["port"] == 5432).expect("the edge across nodes");
    // a's connect and b's accept are one edge: a's web to b's database.
    assert_eq!(
        (cross["source"].as_str(), cross["target"].as_str()),
        (Some(format!("c:{}", id('1'))).as_deref(), Some(format!("c:{}", id('4'))).as_deref())
    );
    assert_eq!(cross["src"]["node"], "a");
    assert_eq!(
        (cross["dst"]["node"].as_str(), cross["dst"]["workload"].as_str(), cross["dst"]["name"].as_str()),
        (Some("b"), Some(D3), Some("db-4"))
    );
    assert_eq!(cross["connections"], 7, "counted by both nodes, shown once: {cross}");
    assert_eq!(cross["reportedBy"], serde_json::json!(["a", "b"]));
    let local = edges.iter().find(|e| e["port"] == 6379).unwrap();
    assert_eq!(
        (local["src"]["node"].as_str(), local["dst"]["node"].as_str(), local["connections"].as_u64()),
        (Some("a"), Some("a"), Some(3))
    );
    // Each container sits in its node's box.
    let parent = |id: String| map["nodes"].as_array().unwrap().iter().find(|n| n["id"] == id.as_str()).map(|n| n["parent"].clone());
    assert_eq!(parent(format!("c:{}", id('4'))), Some("n:b".into()));
    assert_eq!(parent(format!("c:{}", id('2'))), Some("n:a".into()));
    assert_eq!(hub.get("/v1/map?x=1").0, 400);
}
