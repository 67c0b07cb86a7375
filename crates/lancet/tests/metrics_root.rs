//! A real Prometheus (Debian's) scrapes a running agent's `/metrics`, and
//! a query returns lancet's series: the exposition is read by the tool
//! users run, not by a parser of our own.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn prometheus() -> Option<&'static str> {
    ["/usr/bin/prometheus", "/usr/local/bin/prometheus"].into_iter().find(|p| std::path::Path::new(p).exists())
}

/// One GET to Prometheus's HTTP API: the body, or None.
fn get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    // HTTP/1.0: the answer comes whole, not chunked.
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

#[test]
fn prometheus_scrapes_the_agents_metrics() {
    skip_unless_ready!(false);
    let Some(bin) = prometheus() else {
        lancet_testkit::skip("prometheus is not installed (scripts/setup.sh installs it)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, policies, alerts) = agent_dirs(dir.path());
    let agent = Agent::start(&state, &policies, &alerts, &[]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let conf = dir.path().join("prometheus.yml");
    std::fs::write(
        &conf,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: lancet\n    static_configs:\n      - targets: ['{}']\n",
            agent.api
        ),
    )
    .expect("config");
    let mut prom = Command::new(bin)
        .arg(format!("--config.file={}", conf.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    // Some events to count.
    for _ in 0..3 {
        let _ = Command::new("true").status();
    }
    let query = "/api/v1/query?query=lancet_events_total";
    let t0 = Instant::now();
    let mut last = String::new();
    let found = loop {
        if let Some(body) = get(port, query) {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let series = v["data"]["result"].as_array().cloned().unwrap_or_default();
            if v["status"] == "success" && !series.is_empty() {
                break Some(series);
            }
            last = body;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let up = get(port, "/api/v1/query?query=up").unwrap_or_default();
    let _ = prom.kill();
    let _ = prom.wait();
    drop(agent);
    let series = found.unwrap_or_else(|| panic!("Prometheus never had lancet_events_total; last answer: {last}; up: {up}"));
    assert!(series.iter().all(|s| s["metric"]["job"] == "lancet"), "{series:?}");
    assert!(series.iter().any(|s| s["metric"]["type"].is_string()), "the series carry their labels: {series:?}");
    assert!(up.contains("\"1\""), "the scrape target is up: {up}");
}
