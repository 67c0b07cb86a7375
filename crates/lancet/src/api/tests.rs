//! The API as a client sees it, without root and without probes: the real
//! listeners and routes (TCP and the control socket), with the event
//! loop's side played by a thread that answers from fixed data. Covers the
//! map and its renderings, the policy export, metrics, the dashboard's
//! pages and assets, the live feed, checked query parameters (400 with the
//! reason) and who may change what (the token over TCP).

use super::{serve, token::Token, ApiConfig, Feeds, Request};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

struct Harness {
    base: String,
    live: tokio::sync::broadcast::Sender<Arc<str>>,
    stop: Arc<AtomicBool>,
    /// The loop's heartbeat, and a switch that makes the loop stop beating.
    heartbeat: Arc<std::sync::atomic::AtomicU64>,
    stuck: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The agent's store as the reads find it: two flows, the container they
/// name, one alert (with markup in its rule, for the dashboard's escaping).
fn seed_store(db: &std::path::Path) {
    use lancet_engine::flows::{FlowCounters, FlowEnd, FlowRow};
    let mut store = lancet_store::Store::open(db, lancet_store::StoreOptions::default()).unwrap();
    let web = FlowEnd { kind: "container".into(), id: "aaaa0000".into(), name: "web-1".into(), workload: "sha256:web".into() };
    let db_end = FlowEnd { kind: "container".into(), id: "bbbb0000".into(), name: "db-1".into(), workload: "sha256:db".into() };
    let counts = |connections, failed, bytes_out, bytes_in| FlowCounters {
        connections,
        failed,
        refused: 0,
        bytes_out,
        bytes_in,
        first_ns: *NOW - 2_000,
        last_ns: *NOW - 1_000,
    };
    store
        .add_flows(&[
            FlowRow {
                hour_ns: *NOW,
                src: web.clone(),
                dst: db_end,
                port: 5432,
                proto: "tcp".into(),
                counts: counts(12, 1, 1200, 9000),
                verdict: "allowed".into(),
                rule: "profile outbound[0]: workload:sha256:db 5432/tcp".into(),
            },
            FlowRow {
                hour_ns: *NOW,
                src: FlowEnd { kind: "external".into(), id: "203.0.113.9".into(), ..Default::default() },
                dst: web,
                port: 443,
                proto: "tcp".into(),
                counts: counts(3, 0, 10, 20),
                verdict: "unlisted".into(),
                rule: "not in the profile's inbound list".into(),
            },
        ])
        .unwrap();
    store
        .put_flow_nodes(&[lancet_store::FlowNodeRecord {
            id: "aaaa0000".into(),
            name: "web-1".into(),
            workload: "sha256:web".into(),
            image: "localhost/web:1".into(),
            namespace: String::new(),
            labels: r#"{"app":"web"}"#.into(),
            last_ns: *NOW - 1_000,
        }])
        .unwrap();
    let alert = json!({"time": "2026-11-30T10:00:00.000000000Z", "rule": "Shell <b>", "priority": "Warning", "output": "x",
        "output_fields": {"container.name": "web-1", "lancet.action": "alert", "lancet.deviation": {"type": "new_executable", "path": "/bin/sh"}}});
    for _ in 0..7 {
        store
            .insert_alert(&lancet_store::NewAlert {
                time_ns: *NOW - 500,
                rule: "Shell <b>".into(),
                priority: "Warning".into(),
                container_id: "aaaa0000".into(),
                container_name: "web-1".into(),
                image: "localhost/web:1".into(),
                workload: "sha256:web".into(),
                action: "alert".into(),
                enforced: false,
                count: 1,
                json: alert.to_string(),
            })
            .unwrap();
    }
    store.flush().unwrap();
}

/// Now, for the seeded rows (the reads look back an hour by default).
static NOW: std::sync::LazyLock<u64> = std::sync::LazyLock::new(lancet_engine::event::now_ns);

/// The loop's answers.
fn answer(r: Request) -> super::Reply {
    match r {
        Request::Metrics => Ok(Value::String("# TYPE lancet_flows_tracked gauge\nlancet_flows_tracked 2\n# EOF\n".into())),
        Request::Overview => {
            Ok(json!({"hostname": "h", "version": "0", "defaultMode": "learn", "containers": 1, "flowsTracked": 2, "alertWindowHours": 24,
            "workloads": [{"workload": "sha256:web", "image": "<script>alert(1)</script>", "mode": "learn", "entries": 3, "baseline": false,
                "containers": [{"id": "aaaa0000", "name": "web-1"}], "alerts": 1, "drift": 0, "lastAlertNs": 5, "notReady": []}]}))
        }
        Request::Review { workload } if workload == "sha256:web" => {
            Ok(json!({"workload": "sha256:web", "image": "localhost/web:1", "mode": "monitor",
            "modeSince": 1, "learningStarted": 1, "lastNew": 1, "notReady": [], "executables": [{"path": "/bin/web", "parents": [], "names": [],
            "inImage": true, "firstSeen": 1, "lastSeen": 2, "count": 3}], "listening": [], "outbound": [], "inbound": [], "writtenDirs": [],
            "sensitiveReads": [], "baselineDiff": null}))
        }
        Request::Review { workload } => Err((404, format!("no workload matches {workload:?}"))),
        Request::AddToProfile { alert } => Ok(json!({"workload": "sha256:web", "added": true, "alert": alert})),
        Request::Refused { status, reason, .. } => Err((status, reason)),
        other => Err((500, format!("unexpected {other:?}"))),
    }
}

fn start() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("lancet.db");
    seed_store(&db);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (live, _) = tokio::sync::broadcast::channel(16);
    // Beaten now, as the agent does before its loop first goes round: a
    // request may come before the loop's thread first runs.
    let heartbeat = Arc::new(std::sync::atomic::AtomicU64::new(lancet_engine::event::now_ns()));
    let doctor = Arc::new(OnceLock::new());
    let _ = doctor.set(json!({"kernel": "6.18", "guarantees": [{"name": "exec monitoring", "area": "monitoring", "holds": true, "detail": "tp_btf"}], "problems": []}));
    let inbox = serve(ApiConfig {
        socket: dir.path().join("run/lancet.sock"),
        read_group: None,
        listen: Some(format!("127.0.0.1:{port}").parse().unwrap()),
        token: Token::from_hex(TOKEN),
        host_root: "/".into(),
        euid: lancet_sensor::features::euid(),
        feeds: Feeds { live: live.clone(), doctor, heartbeat: Arc::clone(&heartbeat) },
        store: db,
    })
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (s, beat, stuck) = (Arc::clone(&stop), Arc::clone(&heartbeat), Arc::new(AtomicBool::new(false)));
    let stuck_loop = Arc::clone(&stuck);
    std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            if !stuck_loop.load(Ordering::Relaxed) {
                beat.store(lancet_engine::event::now_ns(), Ordering::Relaxed);
            }
            inbox.serve(|call, r| r.send(answer(call.request)));
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let h = Harness { base: format!("http://127.0.0.1:{port}"), live, stop, heartbeat, stuck, _dir: dir };
    // Wait for the listener.
    let t0 = Instant::now();
    while std::net::TcpStream::connect(h.base.trim_start_matches("http://")).is_err() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    h
}

struct Got {
    status: u16,
    ctype: String,
    headers: Vec<(String, String)>,
    body: String,
}

fn req(h: &Harness, method: &str, path: &str, auth: Option<&str>) -> Got {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(10))).build().into();
    let url = format!("{}{path}", h.base);
    let res = match (method, auth) {
        ("GET", _) => agent.get(&url).call(),
        (_, Some(a)) => agent.post(&url).header("Authorization", a).send_empty(),
        (_, None) => agent.post(&url).send_empty(),
    };
    let mut res = res.unwrap();
    let headers = res.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect();
    let ctype = res.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    Got { status: res.status().as_u16(), ctype, headers, body: res.body_mut().read_to_string().unwrap_or_default() }
}

fn error_of(g: &Got) -> String {
    serde_json::from_str::<Value>(&g.body).ok().and_then(|v| v["error"].as_str().map(str::to_string)).unwrap_or_default()
}

#[test]
fn the_map_in_every_format() {
    let h = start();
    let g = req(&h, "GET", "/v1/map?format=json&since=2h", None);
    assert_eq!(g.status, 200, "{}", g.body);
    let v: Value = serde_json::from_str(&g.body).unwrap();
    assert_eq!(v["edges"].as_array().unwrap().len(), 2);
    assert!(v["nodes"].as_array().unwrap().iter().any(|n| n["id"] == "w:sha256:web" && n["kind"] == "workload"));
    let g = req(&h, "GET", "/v1/map?format=table", None);
    assert!(g.ctype.starts_with("text/plain") && g.body.contains("web-1") && g.body.contains("5432/tcp"), "{}", g.body);
    let g = req(&h, "GET", "/v1/map?format=dot&container=web-1", None);
    assert!(g.ctype.starts_with("text/vnd.graphviz") && g.body.starts_with("digraph lancet {"), "{}", g.body);
    let g = req(&h, "GET", "/v1/map/export?format=networkpolicy", None);
    assert_eq!(g.status, 200);
    assert!(g.body.contains("kind: NetworkPolicy") && g.body.contains("app: web"), "{}", g.body);
    let g = req(&h, "GET", "/v1/map/export?format=cilium", None);
    assert!(g.body.contains("kind: CiliumNetworkPolicy"), "{}", g.body);
    let g = req(&h, "GET", "/v1/flows?since_ns=0&limit=5", None);
    assert_eq!(serde_json::from_str::<Value>(&g.body).unwrap()["rows"].as_array().unwrap().len(), 2);
}

#[test]
fn unknown_or_malformed_parameters_are_a_400_with_the_reason() {
    let h = start();
    for (path, reason) in [
        ("/v1/map?format=xml", "format: expected one of json, table, dot, got \"xml\""),
        ("/v1/map?contianer=web", "unknown query parameter \"contianer\""),
        ("/v1/map?since=soon", "since:"),
        ("/v1/map/export?format=dot", "expected one of networkpolicy, cilium"),
        ("/v1/flows?limit=abc", "limit: expected a whole number"),
        ("/v1/flows?limit=999999999", "limit: at most"),
        ("/v1/flows?limit=0", "limit: at least 1"),
        ("/v1/alerts?limit=0", "limit: at least 1"),
        ("/v1/alerts?since=1h&since_ns=3", "not both"),
        ("/v1/audit?verbose=1", "unknown query parameter \"verbose\""),
        ("/metrics?x=1", "this endpoint takes: none"),
        ("/v1/events?x=1", "unknown query parameter"),
        ("/ui/map?since=%GG", "percent-escape"),
    ] {
        let g = req(&h, "GET", path, None);
        assert_eq!(g.status, 400, "{path}: {}", g.body);
        assert!(error_of(&g).contains(reason), "{path}: {:?} lacks {reason:?}", error_of(&g));
    }
    // What a form without JavaScript sends for blank fields: not given.
    for path in ["/ui/map?since=&container=", "/ui/alerts?since=&container=", "/v1/alerts?container="] {
        assert_eq!(req(&h, "GET", path, None).status, 200, "{path}");
    }
}

#[test]
fn metrics_are_openmetrics_text() {
    let h = start();
    let g = req(&h, "GET", "/metrics", None);
    assert_eq!(g.status, 200);
    assert!(g.ctype.starts_with("application/openmetrics-text"), "{}", g.ctype);
    assert!(g.body.contains("lancet_flows_tracked 2"));
}

#[test]
fn changes_over_tcp_need_the_token() {
    let h = start();
    let g = req(&h, "POST", "/v1/alerts/7/add-to-profile", None);
    assert_eq!(g.status, 401, "{}", g.body);
    let g = req(&h, "POST", "/v1/alerts/7/add-to-profile", Some(&format!("Bearer {}", "ff".repeat(32))));
    assert_eq!(g.status, 403);
    let g = req(&h, "POST", "/v1/alerts/7/add-to-profile", Some(&format!("Bearer {TOKEN}")));
    assert_eq!(g.status, 200, "{}", g.body);
    assert_eq!(serde_json::from_str::<Value>(&g.body).unwrap()["alert"], 7);
    let g = req(&h, "POST", "/v1/alerts/seven/add-to-profile", Some(&format!("Bearer {TOKEN}")));
    assert_eq!(g.status, 400);
    assert!(error_of(&g).contains("expected a whole number"));
}

#[test]
fn the_dashboard_pages_are_complete_html_and_escaped() {
    let h = start();
    let g = req(&h, "GET", "/ui/", None);
    assert_eq!(g.status, 200);
    assert!(g.ctype.starts_with("text/html"));
    let csp = g.headers.iter().find(|(k, _)| k == "content-security-policy").map(|(_, v)| v.clone()).unwrap_or_default();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(g.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && !g.body.contains("<script>alert(1)"), "the image name is escaped");
    assert!(
        g.body.contains("<table id=\"workloads\"") && g.body.contains("<table id=\"guarantees\"") && g.body.contains("exec monitoring")
    );
    assert!(g.body.contains("data-alert=\"7\""), "an alert with a deviation can be added to the profile");
    assert!(g.body.contains("Shell &lt;b&gt;"));
    let g = req(&h, "GET", "/ui/map?since=1h", None);
    assert!(g.body.contains("<table id=\"edges\"") && g.body.contains("5432/tcp") && g.body.contains("verdict-unlisted"), "{}", g.body);
    assert!(g.body.contains(env!("LANCET_CYTOSCAPE_SRI")), "the graph library is loaded with its integrity hash");
    let g = req(&h, "GET", "/ui/workloads/sha256%3Aweb", None);
    assert_eq!(g.status, 200, "{}", g.body);
    assert!(g.body.contains("<table id=\"executables\"") && g.body.contains("/bin/web") && g.body.contains("data-mode=\"protect\""));
    let g = req(&h, "GET", "/ui/workloads/nope", None);
    assert_eq!(g.status, 404);
    let g = req(&h, "GET", "/ui/alerts?since=1h", None);
    assert!(g.body.contains("<table id=\"alerts\""));
    let g = req(&h, "GET", "/", None);
    assert_eq!(g.status, 200, "the root redirects to the dashboard");
    assert!(g.body.contains("<table id=\"workloads\""));
}

#[test]
fn the_embedded_graph_library_is_the_pinned_one() {
    use sha2::Digest;
    let sha256_hex = |b: &[u8]| sha2::Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect::<String>();
    let h = start();
    let g = req(&h, "GET", "/ui/static/cytoscape.min.js", None);
    assert_eq!(g.status, 200);
    assert!(g.ctype.starts_with("text/javascript"));
    assert_eq!(sha256_hex(g.body.as_bytes()), "71fa9ebec21a7ca2c40cff6aacc30d1f6464e363662ad4b2c197e1adc770cd94");
    let g = req(&h, "GET", "/ui/static/app.js", None);
    assert!(g.body.contains("EventSource"));
}

#[test]
fn the_live_feed_streams_alerts_as_they_are_written() {
    let h = start();
    let mut s = std::net::TcpStream::connect(h.base.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /v1/events HTTP/1.1\r\nHost: lancet\r\nAccept: text/event-stream\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let mut seen = String::new();
    let mut line = String::new();
    // The head, then the `open` event.
    while !seen.contains("event: open") {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "closed early: {seen}");
        seen.push_str(&line);
    }
    assert!(seen.contains("text/event-stream"), "{seen}");
    let alert = json!({"id": 9, "rule": "Network scan", "output_fields": {"container.name": "web-1"}}).to_string();
    h.live.send(Arc::from(alert.as_str())).unwrap();
    let t0 = Instant::now();
    while !seen.contains("Network scan") && t0.elapsed() < Duration::from_secs(10) {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        seen.push_str(&line);
    }
    assert!(seen.contains("event: alert") && seen.contains(&format!("data: {alert}")), "{seen}");
}

#[test]
fn healthz_follows_the_loop_not_the_queue() {
    let h = start();
    let g = req(&h, "GET", "/healthz", None);
    assert_eq!(g.status, 200, "{}", g.body);
    // A loop silent for more than 10 s is stuck: the probe fails.
    h.stuck.store(true, Ordering::Relaxed);
    h.heartbeat.store(lancet_engine::event::now_ns() - 11_000_000_000, Ordering::Relaxed);
    let g = req(&h, "GET", "/healthz", None);
    assert_eq!(g.status, 503, "{}", g.body);
    assert!(g.body.contains("loop_silent_ms"), "{}", g.body);
    h.stuck.store(false, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(req(&h, "GET", "/healthz", None).status, 200);
}
