//! The flow map end to end, as root, with real podman containers and a
//! `lancet run` in learn mode: two containers that talk show up as one
//! edge with its connections and the bytes each way (from the TCP close
//! counters), a connected UDP socket is a flow too, in every format of `lancet map`; the dot output renders with
//! Graphviz; the exported NetworkPolicy validates against the upstream
//! schema; a port scan is summarised, counted and alerted; `/metrics`
//! counts it all without a per-container label; malformed parameters get
//! a 400 with the reason.
//!
//! Other tests may run agents and containers of the same images at the
//! same time: every assertion looks only at the containers made here.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// Bytes httpd serves per request (the body; headers come on top).
const BODY: u64 = 10_000;

fn http(agent: &Agent, path: &str) -> (u16, String) {
    let agent_http: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(10))).build().into();
    let mut r = agent_http.get(&format!("http://{}{path}", agent.api)).call().expect("the agent's TCP API");
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default())
}

fn schema_validator() -> jsonschema::Validator {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/kubernetes");
    let read = |f: &str| -> Value { serde_json::from_str(&std::fs::read_to_string(dir.join(f)).unwrap()).unwrap() };
    let defs = jsonschema::Resource::from_contents(read("_definitions.json")).unwrap();
    jsonschema::options()
        .with_resource("https://kubernetes.io/api/_definitions.json", defs)
        .build(&read("networkpolicy-networking-v1.json"))
        .expect("compile the NetworkPolicy schema")
}

/// The edge from `src` to `dst` on `port` in `lancet map --format json`.
fn edge(agent: &Agent, src: &Container, dst_id: &str, port: u16) -> Option<Value> {
    let out = agent.cli(&["map", "--format", "json", "--container", &src.name]);
    let g: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("map JSON: {e}: {out}"));
    g["edges"].as_array()?.iter().find(|e| e["source"] == format!("c:{}", src.id) && e["target"] == dst_id && e["port"] == port).cloned()
}

fn wait_edge(agent: &Agent, src: &Container, dst_id: &str, port: u16, done: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        if let Some(e) = edge(agent, src, dst_id, port).filter(&done) {
            return e;
        }
        if t0.elapsed() > Duration::from_secs(15) {
            panic!("no edge {} -> {dst_id}:{port} as expected; map:\n{}", src.name, agent.cli(&["map", "--container", &src.name]));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn containers_that_talk_are_an_edge_with_bytes_policies_and_scans_are_summarised() {
    skip_unless_ready!(true);
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, policies, alerts) = agent_dirs(dir.path());
    let agent = Agent::start(&state, &policies, &alerts, &[]);
    let net = Network::create(&unique("lancet-map-net"));
    let srv = Container::start(
        &unique("lancet-map-srv"),
        &["--network", &net.0],
        &["sh", "-c", &format!("head -c {BODY} /dev/zero > /www/big && exec httpd -f -p 8080 -h /www")],
    );
    let cli = Container::start(&unique("lancet-map-cli"), &["--network", &net.0], &["sleep", "600"]);
    let ip = srv.ip();
    std::thread::sleep(Duration::from_millis(500));

    // Five requests: five connections, each a known body back.
    let get = format!("for i in 1 2 3 4 5; do timeout 3 wget -q -O /dev/null http://{ip}:8080/big || exit 1; done");
    let o = cli.exec(&["sh", "-c", &get]);
    assert!(o.status.success(), "wget: {}", String::from_utf8_lossy(&o.stderr));
    let srv_node = format!("c:{}", srv.id);
    let e = wait_edge(&agent, &cli, &srv_node, 8080, |e| e["connections"].as_u64() >= Some(5) && e["bytesIn"].as_u64() >= Some(5 * BODY));
    let (conns, out, inb) = (e["connections"].as_u64().unwrap(), e["bytesOut"].as_u64().unwrap(), e["bytesIn"].as_u64().unwrap());
    assert_eq!(conns, 5, "{e}");
    // The body plus HTTP headers back; a request of a hundred-odd bytes out.
    assert!((5 * BODY..=5 * (BODY + 400)).contains(&inb), "bytes in {inb}: {e}");
    assert!((5 * 40..=5 * 400).contains(&out), "bytes out {out}: {e}");
    assert_eq!(e["verdict"], "learning");
    assert!(e["rule"].as_str().unwrap_or("").starts_with("profile outbound["), "{e}");
    // The accepting side does not count the same connection again.
    let g: Value = serde_json::from_str(&agent.cli(&["map", "--format", "json", "--container", &srv.name])).unwrap();
    let to_srv: u64 = g["edges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["target"] == srv_node && e["port"] == 8080)
        .map(|e| e["connections"].as_u64().unwrap())
        .sum();
    assert_eq!(to_srv, 5, "{g}");

    // Inbound from outside the containers' network: the host itself
    // connects (through the bridge, from its gateway address); the
    // accepting side counts it, with the bytes each way.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect((ip.as_str(), 8080)).expect("connect from the host");
        s.write_all(b"GET /big HTTP/1.0\r\n\r\n").unwrap();
        let mut body = Vec::new();
        s.read_to_end(&mut body).unwrap();
        assert!(body.len() as u64 >= BODY, "{} bytes", body.len());
    }
    let t0 = Instant::now();
    let inbound = loop {
        let g: Value = serde_json::from_str(&agent.cli(&["map", "--format", "json", "--container", &srv.name])).unwrap();
        let found = g["edges"].as_array().and_then(|es| {
            es.iter()
                .find(|e| e["source"].as_str().is_some_and(|s| s.starts_with("host:")) && e["target"] == srv_node && e["port"] == 8080)
                .cloned()
        });
        match found {
            Some(e) if e["bytesIn"].as_u64() >= Some(BODY) => break e,
            _ if t0.elapsed() > Duration::from_secs(15) => panic!("no edge from the host to {}: {g}", srv.name),
            _ => std::thread::sleep(Duration::from_millis(300)),
        }
    };
    assert_eq!(inbound["connections"], 1, "{inbound}");
    assert!(inbound["rule"].as_str().unwrap_or("").starts_with("profile inbound["), "{inbound}");

    // UDP (a connected socket) is a flow too; busybox's nc has no UDP, the
    // Debian test image's Python does.
    const DEBIAN: &str = "localhost/lancet-debian:test";
    if std::process::Command::new("podman").args(["image", "exists", DEBIAN]).status().is_ok_and(|s| s.success()) {
        let name = unique("lancet-map-udp");
        let id = podman(&["run", "-d", "--name", &name, "--network", &net.0, DEBIAN, "sleep", "600"]);
        let udp_cli = Container { id, name };
        let send = format!("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(('{ip}', 5353)); s.send(b'x')");
        let o = udp_cli.exec(&["python3", "-c", &send]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let udp = wait_edge(&agent, &udp_cli, &srv_node, 5353, |e| e["connections"].as_u64() >= Some(1));
        assert_eq!(udp["proto"], "udp", "{udp}");
        // Unconnected sends (`sendto` with an address, as musl's DNS does):
        // a flow too, reported once per peer however many are sent.
        let send = format!(
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor i in range(50): s.sendto(b'x', ('{ip}', 5354))"
        );
        let o = udp_cli.exec(&["python3", "-c", &send]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let sent = wait_edge(&agent, &udp_cli, &srv_node, 5354, |e| e["connections"].as_u64() >= Some(1));
        assert_eq!((&sent["proto"], &sent["connections"]), (&Value::from("udp"), &Value::from(1)), "{sent}");
        // And learned: the sender's profile has the peer (protect mode
        // would refuse what was never learned).
        let profile = agent.cli(&["profile", "show", &udp_cli.name]);
        assert!(profile.contains("port: 5354\n    protocol: udp"), "{profile}");
    } else {
        eprintln!("SKIPPED (UDP flow only): {DEBIAN} is missing (scripts/setup.sh builds it)");
    }

    // Table and dot.
    let table = agent.cli(&["map", "--container", &cli.name]);
    assert!(table.lines().any(|l| l.starts_with(&cli.name) && l.contains(&srv.name) && l.contains("8080/tcp")), "{table}");
    let dot = agent.cli(&["map", "--format", "dot", "--container", &cli.name]);
    assert!(dot.contains(&format!("\"c:{}\" -> \"c:{}\"", cli.id, srv.id)), "{dot}");
    match std::process::Command::new("dot")
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(dot.as_bytes()).unwrap();
            let r = child.wait_with_output().unwrap();
            assert!(r.status.success(), "Graphviz refused the dot output: {}", String::from_utf8_lossy(&r.stderr));
            // SVG writes a hyphen as `&#45;`.
            assert!(String::from_utf8_lossy(&r.stdout).contains(&srv.name.replace('-', "&#45;")), "the server's node in the SVG");
        }
        Err(e) => eprintln!("SKIPPED (dot rendering only): Graphviz's dot is not installed ({e}); scripts/setup.sh installs it"),
    }

    // NetworkPolicy for what was seen, valid by the upstream schema; Cilium's too.
    let v = schema_validator();
    let yaml = agent.cli(&["map", "--export", "networkpolicy", "--container", &cli.name]);
    let docs: Vec<Value> = yaml.split("---\n").filter(|d| !d.trim().is_empty()).map(|d| serde_norway::from_str(d).unwrap()).collect();
    assert!(!docs.is_empty(), "{yaml}");
    for d in &docs {
        let errors: Vec<String> = v.iter_errors(d).map(|e| format!("{e} at {}", e.instance_path)).collect();
        assert!(errors.is_empty(), "{yaml}\n{}", errors.join("\n"));
    }
    assert!(
        docs.iter().any(|d| d["spec"]["egress"].as_array().is_some_and(|e| e.iter().any(|r| r["ports"][0]["port"] == 8080))),
        "an egress rule to port 8080: {yaml}"
    );
    let cilium = agent.cli(&["map", "--export", "cilium", "--container", &cli.name]);
    assert!(cilium.contains("kind: CiliumNetworkPolicy") && cilium.contains("port: '8080'"), "{cilium}");

    // A scan of 300 ports: summarised, counted and alerted.
    let scan = format!("for p in $(seq 20000 20299); do nc {ip} $p </dev/null 2>/dev/null; done; true");
    assert!(cli.exec(&["sh", "-c", &scan]).status.success());
    let others = wait_edge(&agent, &cli, "others", 0, |e| e["failed"].as_u64() > Some(0));
    assert!(others["failed"].as_u64().unwrap() >= 30, "the summary counts the probes past the threshold: {others}");
    let t0 = Instant::now();
    let scan_alert = loop {
        let (v, _) = alerts_since(&alerts, 0);
        if let Some(a) = v.into_iter().find(|a| a["rule"] == "Network scan" && a["output_fields"]["container.name"] == cli.name.as_str()) {
            break a;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no Network scan alert for {}", cli.name);
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(scan_alert["output"].as_str().unwrap().contains("scan"), "{scan_alert}");

    // Metrics: counted, and no per-container label anywhere.
    let (status, m) = http(&agent, "/metrics");
    assert_eq!(status, 200);
    let value = |series: &str| -> f64 {
        m.lines().find(|l| l.starts_with(series)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(-1.0)
    };
    assert!(value("lancet_events_total{type=\"connect\"}") >= 300.0, "{m}");
    assert!(value("lancet_flow_scans_total") >= 1.0, "{m}");
    assert!(value("lancet_flows_summarised_total{reason=\"scan\"}") >= 30.0, "{m}");
    assert!(value("lancet_flows_tracked") >= 2.0, "{m}");
    assert!(value("lancet_resident_memory_bytes") > 1e6 && value("lancet_cpu_seconds_total") > 0.0, "{m}");
    assert!(value("lancet_workloads{mode=\"learn\"}") >= 1.0, "{m}");
    assert!(m.contains("lancet_permission_decision_seconds_bucket{le=\"+Inf\"}"), "{m}");
    for private in [cli.name.as_str(), srv.name.as_str(), &cli.id[..12], &srv.id[..12], "container="] {
        assert!(!m.contains(private), "{private:?} in metrics:\n{m}");
    }

    // Malformed parameters: a 400 with the reason.
    let (status, body) = http(&agent, "/v1/map?since=a-while");
    assert_eq!(status, 400);
    assert!(body.contains("since:"), "{body}");
    let (status, body) = http(&agent, &format!("/v1/map?contianer={}", cli.name));
    assert_eq!(status, 400);
    assert!(body.contains("unknown query parameter"), "{body}");
}
