//! Two agents as two nodes of a fleet on this one kernel, as root, with a
//! real 3-server NATS cluster (JetStream) on loopback ports: each agent
//! has its own state, pins, socket and API and follows only the
//! containers labelled for it (`--only-label`), so no container is guarded
//! by both. A workload learned on node a and promoted once there is
//! enforced on node b's container of the same image; of two concurrent
//! promotions from the same revision exactly one wins; promotion
//! propagation is measured.

mod common;
// Its configured servers (TLS, users) are for the unit tests.
#[allow(dead_code)]
#[path = "../src/fleet/testserver.rs"]
mod testserver;

use common::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// The tests of this file start agents: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One GET of the agent's TCP API (reads need no token), as JSON.
fn get_json(addr: &str, path: &str) -> serde_json::Value {
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    let body = r.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("GET {path}: {e}: {r}"))
}

/// The workload's mode and fleet revision on one agent.
fn mode_of(agent: &Agent, workload: &str) -> (String, Option<u64>) {
    let v = get_json(&agent.api, "/v1/profiles");
    let p = v.as_array().and_then(|a| a.iter().find(|p| p["workload"] == workload)).cloned().unwrap_or_default();
    (p["mode"].as_str().unwrap_or("").to_string(), p["revision"].as_u64())
}

fn wait_mode(agent: &Agent, workload: &str, mode: &str, within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        if mode_of(agent, workload).0 == mode {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < within, "{workload} not in {mode} mode within {within:?}: {:?}", mode_of(agent, workload));
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn wait_connected(agent: &Agent) {
    wait_fleet(agent, true);
}

fn wait_fleet(agent: &Agent, connected: bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = get_json(&agent.api, "/v1/enforcement");
        if v["fleet"]["connected"] == connected {
            return;
        }
        assert!(Instant::now() < deadline, "the agent's fleet link is not connected={connected} within 60 s: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A dropped binary on `c`: refused.
fn dropped_binary_refused(c: &Container, node: &str) {
    let o = c.exec(&["sh", "-c", "cp /bin/busybox /tmp/ls && /tmp/ls /"]);
    assert!(
        !o.status.success() && out_text(&o).contains("not permitted"),
        "the dropped binary was not refused on {node} ({}): {}",
        o.status,
        out_text(&o)
    );
}

#[test]
fn a_workload_promoted_once_on_one_node_is_enforced_on_the_other() {
    skip_unless_ready!(true);
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut nats) = testserver::start(3) else {
        lancet_testkit::skip("nats-server is not installed (scripts/setup.sh installs it under /opt/lancet-fleet-tools)");
        return;
    };
    let url = testserver::urls(&nats);
    let dir = tempfile::tempdir().expect("tempdir");
    let tag = unique("fleet");
    let start = |node: &str| {
        let d = dir.path().join(node);
        let (state, policies, alerts) = agent_dirs(&d);
        let label = format!("lancet.test.node={tag}-{node}");
        let extra = ["--nats", url.as_str(), "--node", node, "--cluster", "test", "--only-label", label.as_str()];
        (Agent::start_with_config(&state, &policies, &alerts, "interpreterCode: any\n", &extra), alerts, label)
    };
    let (a, _alerts_a, label_a) = start("a");
    let (mut b, alerts_b, label_b) = start("b");
    wait_connected(&a);
    wait_connected(&b);
    let httpd = ["httpd", "-f", "-p", "8080", "-h", "/www"];
    let ca = Container::start(&unique("lancet-fa"), &["--label", &label_a], &httpd);
    let cb = Container::start(&unique("lancet-fb"), &["--label", &label_b], &httpd);

    // Node a learns the workload (what protect_root's workload does).
    for cmd in [
        vec!["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/index.html"],
        vec!["/bin/busybox", "true"],
        vec!["sh", "-c", "true"],
        vec!["cat", "/www/index.html"],
        vec!["sh", "-c", "echo x > /tmp/learned && rm /tmp/learned"],
    ] {
        let o = ca.exec(&cmd);
        assert!(o.status.success(), "{cmd:?} while learning: {}", out_text(&o));
    }
    let workload = a.cli(&["profile", "list"]);
    let key = workload.lines().find(|l| l.contains("lancet-busybox")).and_then(|l| l.split_whitespace().next()).expect("a's workload");
    let key = key.to_string();
    assert!(b.cli(&["profile", "list"]).contains(&key), "the same image is the same workload on b");
    assert!(!b.cli(&["profile", "show", &cb.name]).contains("/bin/cat"), "b never saw cat itself");
    // Each agent follows only its own container.
    assert!(!a.cli(&["profile", "show", &ca.name]).is_empty());
    assert_eq!(b.cli_output(&["isolate", &ca.name, "--for", "1s"]).status.code(), Some(1), "b does not know a's container");
    std::thread::sleep(Duration::from_millis(2500));

    // One promotion, on a: b's container is guarded within 5 s.
    let t0 = Instant::now();
    let out = a.cli(&["profile", "promote", &ca.name, "--to", "protect"]);
    assert!(out.contains("protect"), "{out}");
    b.wait_guarded(&cb.id, Duration::from_secs(5));
    let enforced_in = t0.elapsed();
    println!("fleet: promoted on a, b's container guarded after {enforced_in:?}");
    a.wait_guarded(&ca.id, Duration::from_secs(5));
    assert!(!get_json(&a.api, "/v1/enforcement").to_string().contains(&cb.id), "a guards b's container");
    assert!(!get_json(&b.api, "/v1/enforcement").to_string().contains(&ca.id), "b guards a's container");

    // b refuses the technique, and allows what only a learned.
    let o = cb.exec(&["cat", "/www/index.html"]);
    assert!(o.status.success(), "what a learned is refused on b: {}", out_text(&o));
    let (_, pos) = alerts_since(&alerts_b, 0);
    dropped_binary_refused(&cb, "b");
    let (v, _) = wait_alerts(&alerts_b, pos, Duration::from_secs(3), Duration::from_millis(300));
    assert!(
        v.iter().any(|x| x["rule"] == "Drift: written" && x["output_fields"]["lancet.enforced"] == true && x["hostname"].is_string()),
        "no enforced drift alert on b: {v:#?}"
    );
    assert!(cb.exec(&["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/index.html"]).status.success(), "b's server serves");

    // NATS away: both nodes keep enforcing, a promotion is refused; b
    // restarted meanwhile enforces from its store; NATS back, both rejoin.
    for n in nats.iter_mut() {
        n.stop();
    }
    wait_fleet(&a, false);
    wait_fleet(&b, false);
    dropped_binary_refused(&ca, "a without NATS");
    dropped_binary_refused(&cb, "b without NATS");
    let o = a.cli_output(&["profile", "promote", &key, "--to", "monitor"]);
    assert!(!o.status.success() && out_text(&o).contains("unreachable"), "a promotion without NATS: {}", out_text(&o));
    // The alerts raised meanwhile wait in b's store (counted): a control
    // action's alert (the drift above repeats an alert already sent, which
    // is folded into it, not a new one).
    b.cli(&["release", &cb.name]);
    std::thread::sleep(Duration::from_millis(500));
    let waiting = get_json(&b.api, "/v1/enforcement")["fleet"]["alertsWaiting"].as_u64().unwrap_or(0);
    assert!(waiting >= 1, "no alert waits for NATS on b: {}", get_json(&b.api, "/v1/enforcement")["fleet"]);
    b.kill9();
    b.spawn();
    b.wait_guarded(&cb.id, Duration::from_secs(10));
    dropped_binary_refused(&cb, "b restarted without NATS");
    for n in nats.iter_mut() {
        n.start();
    }
    wait_connected(&a);
    wait_connected(&b);
    assert_eq!(mode_of(&b, &key).0, "protect");
    // ... and are sent once NATS is back.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let f = get_json(&b.api, "/v1/enforcement")["fleet"].clone();
        if f["alertsWaiting"] == 0 && f["alertCursor"].as_u64() > Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "b's alerts were not sent after NATS came back: {f}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Two promotions from the same revision at once, one on each node:
    // exactly one wins, the other is a conflict, both nodes end in the
    // winner's mode.
    let deadline = Instant::now() + Duration::from_secs(10);
    let rev = loop {
        let (ra, rb) = (mode_of(&a, &key).1, mode_of(&b, &key).1);
        match (ra, rb) {
            (Some(x), Some(y)) if x == y => break x,
            _ => assert!(Instant::now() < deadline, "a and b do not see the same revision: {ra:?} {rb:?}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let rev_s = rev.to_string();
    let (oa, ob) = std::thread::scope(|s| {
        let ta = s.spawn(|| a.cli_output(&["profile", "promote", &key, "--to", "monitor", "--revision", &rev_s]));
        let tb = s.spawn(|| b.cli_output(&["profile", "promote", &key, "--to", "learn", "--revision", &rev_s]));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    let winner = match (oa.status.success(), ob.status.success()) {
        (true, false) => {
            assert!(out_text(&ob).contains("changed meanwhile"), "{}", out_text(&ob));
            "monitor"
        }
        (false, true) => {
            assert!(out_text(&oa).contains("changed meanwhile"), "{}", out_text(&oa));
            "learn"
        }
        _ => panic!("not exactly one winner: a {} / b {}", out_text(&oa), out_text(&ob)),
    };
    wait_mode(&a, &key, winner, Duration::from_secs(5));
    wait_mode(&b, &key, winner, Duration::from_secs(5));

    // 100 promotions on a (learn and monitor in turn): how long until b's
    // API shows the new mode.
    let mut took = Vec::new();
    let mut now = winner;
    for _ in 0..100 {
        let to = if now == "monitor" { "learn" } else { "monitor" };
        now = to;
        let t0 = Instant::now();
        a.cli(&["profile", "promote", &key, "--to", to]);
        wait_mode(&b, &key, to, Duration::from_secs(5));
        took.push(t0.elapsed());
    }
    took.sort();
    println!(
        "fleet: promotion propagation (CLI on a -> mode on b's API) over 100 promotions: p50 {:?}, p99 {:?}, max {:?}",
        took[49], took[98], took[99]
    );
    assert!(took[98] < Duration::from_secs(5));
}

/// CPU time (user + system, clock ticks) and RSS (KiB) of a process.
fn cost(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap();
    (ticks, rss)
}

/// What joining a fleet costs an agent at rest (one container of its own,
/// idle): CPU over 20 s and RSS, with and without `--nats`. Printed, and
/// bounded loosely (the fleet thread must not spin).
#[test]
fn what_the_fleet_costs_an_idle_agent() {
    skip_unless_ready!(true);
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(nats) = testserver::start(1) else {
        lancet_testkit::skip("nats-server is not installed (scripts/setup.sh installs it under /opt/lancet-fleet-tools)");
        return;
    };
    let tag = unique("cost");
    let label = format!("lancet.test.node={tag}");
    let c = Container::start(&unique("lancet-fc"), &["--label", &label], &["httpd", "-f", "-p", "8080", "-h", "/www"]);
    let mut results = Vec::new();
    for with_nats in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (state, policies, alerts) = agent_dirs(dir.path());
        let url = nats[0].url();
        let mut extra = vec!["--only-label", label.as_str()];
        if with_nats {
            extra.extend(["--nats", url.as_str(), "--node", "cost"]);
        }
        let agent = Agent::start(&state, &policies, &alerts, &extra);
        if with_nats {
            wait_connected(&agent);
        }
        assert!(c.exec(&["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/index.html"]).status.success());
        std::thread::sleep(Duration::from_secs(3));
        let (t0, _) = cost(agent.child.id());
        std::thread::sleep(Duration::from_secs(20));
        let (t1, rss) = cost(agent.child.id());
        let cpu = (t1 - t0) as f64 / 100.0 / 20.0 * 100.0;
        println!(
            "fleet: idle agent {} NATS: CPU {cpu:.2} % of a core over 20 s, RSS {} MiB",
            if with_nats { "with" } else { "without" },
            rss / 1024
        );
        results.push((cpu, rss));
    }
    assert!(results[1].0 < results[0].0 + 5.0, "the fleet thread costs more than 5 % of a core at rest: {results:?}");
}

/// `lancet hub`, stopped by its pid on drop.
struct Hub(std::process::Child);

impl Drop for Hub {
    fn drop(&mut self) {
        stop_child(&mut self.0, "-TERM", Duration::from_secs(5));
    }
}

/// One GET of the hub with its token, as JSON.
fn hub_get(addr: &str, token: &str, path: &str) -> Option<serde_json::Value> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n").ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    serde_json::from_str(r.split_once("\r\n\r\n")?.1).ok()
}

/// Two agents as two nodes, a container of each on one network; node a's
/// client fetches from node b's server. Neither agent knows the other's
/// container (each sees an address), yet the hub draws one edge from a's
/// client to b's server, each end with its node and workload, counted
/// once though both nodes report it; its workloads show the image on both
/// nodes.
#[test]
fn the_hub_maps_a_connection_between_containers_of_two_nodes() {
    skip_unless_ready!(true);
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(nats) = testserver::start(1) else {
        lancet_testkit::skip("nats-server is not installed (scripts/setup.sh installs it under /opt/lancet-fleet-tools)");
        return;
    };
    let url = nats[0].url();
    let dir = tempfile::tempdir().expect("tempdir");
    let tag = unique("fmap");
    let start = |node: &str| {
        let (state, policies, alerts) = agent_dirs(&dir.path().join(node));
        let label = format!("lancet.test.node={tag}-{node}");
        let extra = ["--nats", url.as_str(), "--node", node, "--cluster", "test", "--only-label", label.as_str()];
        (Agent::start(&state, &policies, &alerts, &extra), label)
    };
    let (a, label_a) = start("a");
    let (b, label_b) = start("b");
    wait_connected(&a);
    wait_connected(&b);
    let net = Network::create(&unique("lancet-fmap-net"));
    let srv = Container::start(
        &unique("lancet-fmap-srv"),
        &["--label", &label_b, "--network", &net.0],
        &["httpd", "-f", "-p", "8080", "-h", "/www"],
    );
    let cli = Container::start(&unique("lancet-fmap-cli"), &["--label", &label_a, "--network", &net.0], &["sleep", "600"]);
    std::thread::sleep(Duration::from_millis(500));
    let script = format!("for i in 1 2 3; do timeout 3 wget -q -O /dev/null http://{}:8080/index.html; done; true", srv.ip());
    assert!(cli.exec(&["sh", "-c", &script]).status.success());

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let token_file = dir.path().join("hub.token");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_lancet"))
        .args(["hub", "--nats", &url, "--listen", &addr, "--hub-token-file"])
        .arg(&token_file)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("lancet hub");
    let _hub = Hub(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !token_file.exists() || std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "the hub did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let token = std::fs::read_to_string(&token_file).unwrap().trim().to_string();
    let t0 = Instant::now();
    let edge = loop {
        let map = hub_get(&addr, &token, "/v1/map").unwrap_or_default();
        let found = map["edges"].as_array().and_then(|e| {
            e.iter().find(|e| e["src"]["name"] == cli.name.as_str() && e["dst"]["name"] == srv.name.as_str() && e["port"] == 8080).cloned()
        });
        if let Some(e) = found.filter(|e| e["reportedBy"].as_array().is_some_and(|r| r.len() == 2)) {
            break e;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no edge from a's client to b's server on the hub within 60 s: {map:#}");
        std::thread::sleep(Duration::from_millis(500));
    };
    println!("fleet: the connection between two nodes' containers on the hub's map after {:?}", t0.elapsed());
    assert_eq!((edge["src"]["node"].as_str(), edge["dst"]["node"].as_str()), (Some("a"), Some("b")), "{edge:#}");
    assert_eq!(edge["connections"], 3, "counted once, though both nodes report it: {edge:#}");
    assert!(edge["src"]["workload"].as_str().is_some_and(|w| w.starts_with("sha256:")), "{edge:#}");
    assert_eq!(edge["src"]["workload"], edge["dst"]["workload"], "the same image on both nodes");
    let workloads = hub_get(&addr, &token, "/v1/workloads").unwrap();
    let w = workloads.as_array().unwrap().iter().find(|w| w["workload"] == edge["src"]["workload"]).expect("the workload");
    let nodes: Vec<&str> = w["nodes"].as_array().unwrap().iter().filter_map(|n| n["node"].as_str()).collect();
    assert_eq!(nodes, ["a", "b"], "{w:#}");
    assert!(hub_get(&addr, "00", "/v1/map").is_some_and(|v| v["error"].is_string()), "a wrong token is refused");
}
