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

mod alerts;
mod hub;
mod hub_browser;
mod hub_fleet;
mod kv;
mod secure;

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
        security: Default::default(),
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
        Node::start_with(cfg(url, node, state))
    }

    fn start_with(cfg: FleetConfig) -> Node {
        let _ = tracing_subscriber::fmt().with_env_filter("lancet=info").with_test_writer().try_init();
        Node { link: Link::start(cfg).unwrap(), backlog: Default::default() }
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
    wait_mode_within(link, revision, Duration::from_secs(15))
}

fn wait_mode_within(link: &mut Node, revision: u64, timeout: Duration) -> (Mode, String) {
    match wait_for(link, timeout, "mode", |m| matches!(m, FromFleet::Mode { revision: r, .. } if *r == revision)) {
        FromFleet::Mode { mode, by, .. } => (mode, by),
        _ => unreachable!(),
    }
}

/// `lancet hub` on a loopback port with a token of its own (in a
/// temporary directory), stopped on drop.
struct TestHub {
    port: u16,
    token: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl TestHub {
    /// `args` with a free loopback port and the token file set here.
    fn start(mut args: crate::fleet::hub::HubArgs) -> TestHub {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        args.listen = format!("127.0.0.1:{port}").parse().unwrap();
        args.hub_token_file = dir.path().join("hub.token");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let token_file = args.hub_token_file.clone();
        let thread = std::thread::spawn(move || runtime().block_on(crate::fleet::hub::serve(args, thread_stop)).unwrap());
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline && !thread.is_finished(), "the hub did not listen within 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        let token = std::fs::read_to_string(token_file).unwrap().trim().to_string();
        TestHub { port, token, stop, thread: Some(thread), _dir: dir }
    }

    fn on(url: &str) -> TestHub {
        TestHub::start(crate::fleet::hub::HubArgs { nats: Some(url.into()), ..Default::default() })
    }

    /// GET with the token: the status and the JSON (null when none).
    fn try_get(&self, path: &str) -> Option<(u16, serde_json::Value)> {
        self.request(path, Some(&self.token)).map(|(s, body)| (s, serde_json::from_str(&body).unwrap_or_default()))
    }

    fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.try_get(path).expect("the hub answers")
    }

    /// GET with this token (or none): the status and the body.
    fn request(&self, path: &str, token: Option<&str>) -> Option<(u16, String)> {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut req = agent.get(&format!("http://127.0.0.1:{}{path}", self.port));
        if let Some(t) = token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let mut r = req.call().ok()?;
        Some((r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default()))
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
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
