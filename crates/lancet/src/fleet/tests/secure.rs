//! Credentials and TLS against real servers: the fleet's CA (and mutual
//! TLS), nkey users, and the per-node permissions of the shipped example
//! (deploy/nats/lancet-authorization.conf), which a node's link reports
//! when NATS refuses a write rather than losing it.

use super::*;
use crate::fleet::auth::{NatsSecurity, NatsSecurityArgs};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// The example permissions, as shipped.
const AUTHORIZATION: &str = include_str!("../../../../../deploy/nats/lancet-authorization.conf");

fn file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

fn configured(text: &str, files: &[(&str, &str)], env: &[(&str, &str)]) -> Option<Server> {
    let s = testserver::start_configured(text, files, env);
    if s.is_none() {
        lancet_testkit::skip("nats-server is not installed (scripts/setup.sh installs it under /opt/lancet-fleet-tools)");
    }
    s
}

fn node_cfg(url: &str, node: &str, cluster: &str, security: NatsSecurity, state: Option<&Path>) -> FleetConfig {
    FleetConfig { cluster: cluster.into(), security, ..cfg(url, node, state) }
}

/// The link's `lastError` once `pred` holds for it, within 20 s.
fn wait_error(link: &Link, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let e = link.counters.error();
        if pred(&e) {
            return e;
        }
        assert!(Instant::now() < deadline, "{}: no {what} within 20 s; lastError {e:?}", link.node);
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn never_connected(n: &mut Node) {
    while let Some(m) = n.link.try_recv() {
        assert!(!matches!(m, FromFleet::Connected(true)), "{} joined", n.link.node);
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as
/// PEM files (keys 0600).
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn pki(dir: &Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "lancet test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |name: &str, san: Option<SanType>| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.subject_alt_names.extend(san);
        (p.signed_by(&key, &ca).unwrap().pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf("localhost", Some(SanType::IpAddress("127.0.0.1".parse().unwrap())));
    let (client_cert, client_key) = leaf("node-a", None);
    Pki {
        ca: file(dir, "ca.pem", &ca.pem(), 0o644),
        server_cert: file(dir, "server.pem", &server_cert, 0o644),
        server_key: file(dir, "server.key", &server_key, 0o600),
        client_cert: file(dir, "client.pem", &client_cert, 0o644),
        client_key: file(dir, "client.key", &client_key, 0o600),
    }
}

/// A server with TLS: a node without the fleet's CA is refused with an
/// error that says so and never joins; with it (and a `tls://` URL) it
/// joins. A server that verifies clients refuses a node without a client
/// certificate and takes one with it.
#[test]
fn tls_needs_the_fleets_ca_and_mutual_tls_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let tls = format!("tls {{ cert_file: \"{}\", key_file: \"{}\", timeout: 2 }}", pki.server_cert.display(), pki.server_key.display());
    let Some(server) = configured(&tls, &[], &[]) else { return };
    let mut bare = Node::start_with(node_cfg(&server.url(), "a", "test", NatsSecurity::default(), None));
    let e = wait_error(&bare.link, "TLS error", |e| !e.is_empty());
    assert!(e.contains("--nats-ca") && e.contains("certificate"), "{e}");
    never_connected(&mut bare);
    let with_ca = NatsSecurity { ca: Some(pki.ca.clone()), ..Default::default() };
    let mut good = Node::start_with(node_cfg(&format!("tls://127.0.0.1:{}", server.port), "b", "test", with_ca.clone(), None));
    connected(&mut good);
    assert_eq!(good.link.counters.error(), "");
    never_connected(&mut bare);

    let mutual = format!(
        "tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\", verify: true, timeout: 2 }}",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca.display()
    );
    let Some(server) = configured(&mutual, &[], &[]) else { return };
    let mut no_cert = Node::start_with(node_cfg(&server.url(), "c", "test", with_ca.clone(), None));
    let e = wait_error(&no_cert.link, "refusal", |e| !e.is_empty());
    assert!(e.contains("connecting to"), "{e}");
    never_connected(&mut no_cert);
    let with_cert = NatsSecurity { cert: Some(pki.client_cert), key: Some(pki.client_key), ..with_ca };
    let mut mtls = Node::start_with(node_cfg(&server.url(), "d", "test", with_cert, None));
    connected(&mut mtls);
}

/// A server that lists users by nkey: the node with the user's seed joins;
/// a node with another seed is refused, and says so.
#[test]
fn an_nkey_user_joins_and_a_wrong_seed_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let user = nkeys::KeyPair::new_user();
    let conf = format!("authorization {{ users = [ {{ nkey: {} }} ] }}", user.public_key());
    let Some(server) = configured(&conf, &[], &[]) else { return };
    let seed = file(dir.path(), "a.nk", &format!("{}\n", user.seed().unwrap()), 0o600);
    let wrong = file(dir.path(), "wrong.nk", &nkeys::KeyPair::new_user().seed().unwrap(), 0o400);
    let mut good = Node::start_with(node_cfg(&server.url(), "a", "test", NatsSecurity { nkey: Some(seed), ..Default::default() }, None));
    connected(&mut good);
    let mut bad = Node::start_with(node_cfg(&server.url(), "b", "test", NatsSecurity { nkey: Some(wrong), ..Default::default() }, None));
    let e = wait_error(&bad.link, "refusal", |e| !e.is_empty());
    assert!(e.to_ascii_lowercase().contains("authorization violation") && e.contains("--nats-nkey"), "{e}");
    never_connected(&mut bad);
}

/// A seed file others may read stops the link at start, naming the file.
#[test]
fn a_world_readable_seed_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let seed = file(dir.path(), "node.nk", &nkeys::KeyPair::new_user().seed().unwrap(), 0o644);
    let cfg = node_cfg("nats://127.0.0.1:1", "a", "test", NatsSecurity { nkey: Some(seed.clone()), ..Default::default() }, None);
    let e = format!("{:#}", Link::start(cfg).err().expect("refused"));
    assert!(e.contains(&seed.display().to_string()) && e.contains("group or others"), "{e}");
    // The hub refuses it the same way.
    let args = crate::fleet::hub::HubArgs {
        nats: Some("nats://127.0.0.1:1".into()),
        security: NatsSecurityArgs { nats_nkey: Some(seed.clone()), ..Default::default() },
        hub_token_file: dir.path().join("hub.token"),
        ..Default::default()
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let e = format!("{:#}", runtime().block_on(crate::fleet::hub::serve(args, stop)).unwrap_err());
    assert!(e.contains(&seed.display().to_string()), "{e}");
}

/// The shipped per-node permissions on a real server: nodes `node-a` and
/// `node-b` share observations, promote and forward alerts as usual, and
/// the hub reads them; node a's seed cannot write node b's observations,
/// heartbeat or alerts (an agent of node a calling itself `node-b`): NATS
/// refuses each, and the link says so and keeps what it could not write
/// (the observations queued, the alert in its store, the cursor before
/// it). The hub's user cannot write at all.
#[test]
fn per_node_permissions_refuse_writing_another_nodes_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, hub) = (nkeys::KeyPair::new_user(), nkeys::KeyPair::new_user(), nkeys::KeyPair::new_user());
    let env = [("LANCET_NKEY_NODE_A", a.public_key()), ("LANCET_NKEY_NODE_B", b.public_key()), ("LANCET_NKEY_HUB", hub.public_key())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let Some(server) = configured("include \"lancet-authorization.conf\"", &[("lancet-authorization.conf", AUTHORIZATION)], &env) else {
        return;
    };
    let url = server.url();
    let seed = |name: &str, k: &nkeys::KeyPair| file(dir.path(), name, &k.seed().unwrap(), 0o600);
    let (seed_a, seed_b, seed_hub) = (seed("a.nk", &a), seed("b.nk", &b), seed("hub.nk", &hub));
    let as_user = |p: &PathBuf| NatsSecurity { nkey: Some(p.clone()), ..Default::default() };
    let states: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut stores: Vec<Store> =
        states.iter().map(|d| Store::open(&d.path().join("lancet.db"), StoreOptions::default()).unwrap()).collect();

    // As allowed: observations, a promotion, an alert, heartbeats.
    let mut na = Node::start_with(node_cfg(&url, "node-a", "prod", as_user(&seed_a), Some(states[0].path())));
    let mut nb = Node::start_with(node_cfg(&url, "node-b", "prod", as_user(&seed_b), Some(states[1].path())));
    connected(&mut na);
    connected(&mut nb);
    na.send(ToFleet::Observations { workload: D.into(), yaml: profile_with(D, &["/bin/a"]) });
    wait_for(
        &mut nb,
        Duration::from_secs(15),
        "node-a's observations",
        |m| matches!(m, FromFleet::Observations { node, .. } if node == "node-a"),
    );
    let rev = propose(&mut na, Mode::Monitor, None, 1).expect("node-a may change a mode");
    wait_mode(&mut nb, rev);
    alert(&mut stores[0], 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while na.link.counters.alerts_sent.load(std::sync::atomic::Ordering::Relaxed) < 1 {
        assert!(Instant::now() < deadline, "node-a's alert was not sent: {}", na.link.counters.error());
        std::thread::sleep(Duration::from_millis(20));
    }

    // Node a's seed, calling itself node-b.
    alert(&mut stores[2], 1);
    let mut forged = Node::start_with(node_cfg(&url, "node-b", "prod", as_user(&seed_a), Some(states[2].path())));
    connected(&mut forged);
    forged.send(ToFleet::Observations { workload: D2.into(), yaml: profile_with(D2, &["/bin/forged"]) });
    let deadline = Instant::now() + Duration::from_secs(20);
    let wanted = [".obs.node-b", "$KV.lancet-nodes.node-b", "lancet.alerts.prod.node-b."];
    let seen = loop {
        let seen = forged.link.counters.recent_refusals();
        if wanted.iter().all(|w| seen.iter().any(|e| e.contains(w))) {
            break seen;
        }
        assert!(Instant::now() < deadline, "not every refusal was reported: {seen:#?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(forged.link.counters.error().contains("Permissions Violation"), "lastError");
    assert!(seen.iter().all(|e| e.contains("Permissions Violation")), "{seen:#?}");
    let c = &forged.link.counters;
    assert!(c.refused.load(std::sync::atomic::Ordering::Relaxed) >= 3);
    assert_eq!(c.alert_cursor.load(std::sync::atomic::Ordering::Relaxed), 0, "the refused alert waits in the store");
    assert_eq!(c.alerts_sent.load(std::sync::atomic::Ordering::Relaxed), 0);
    // Still connected: a refusal is not a lost connection.
    let none = wait_for_none(&mut forged, Duration::from_millis(300), |m| matches!(m, FromFleet::Connected(false)));
    assert!(none, "a refusal ended the session");

    // The hub reads everything with its own user, and writes nothing.
    let hub_server = TestHub::start(crate::fleet::hub::HubArgs {
        nats: Some(url.clone()),
        security: NatsSecurityArgs { nats_nkey: Some(seed_hub.clone()), ..Default::default() },
        ..Default::default()
    });
    let get = |path: &str| hub_server.try_get(path).map(|(_, v)| v);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let nodes = get("/v1/nodes").unwrap_or_default();
        let alerts = get("/v1/alerts").unwrap_or_default();
        let names: Vec<&str> = nodes.as_array().map(|a| a.iter().filter_map(|n| n["name"].as_str()).collect()).unwrap_or_default();
        let from: Vec<&str> = alerts.as_array().map(|a| a.iter().filter_map(|n| n["node"].as_str()).collect()).unwrap_or_default();
        if names == ["node-a", "node-b"] && from == ["node-a"] {
            break;
        }
        assert!(Instant::now() < deadline, "the hub shows nodes {names:?} and alerts of {from:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    runtime().block_on(async {
        let client = async_nats::ConnectOptions::with_nkey(hub.seed().unwrap()).connect(url.as_str()).await.unwrap();
        let js = jetstream::new(client.clone());
        let nodes = js.get_key_value(keys::NODES_BUCKET).await.unwrap();
        let put = tokio::time::timeout(Duration::from_secs(3), nodes.put("hub", "x".into())).await;
        assert!(!matches!(put, Ok(Ok(_))), "the hub's user wrote a key");
        let profiles = js.get_key_value(PROFILES_BUCKET).await.unwrap();
        let forged_key = keys::observations_key(D2, "node-b").unwrap();
        assert_eq!(profiles.get(&forged_key).await.unwrap(), None, "node-b's key was written by node-a's seed");
        assert_eq!(nodes.get("hub").await.unwrap(), None);
    });
}

/// True when no message `pred` accepts arrives within `d` (the others stay
/// in the backlog).
fn wait_for_none(n: &mut Node, d: Duration, pred: impl Fn(&FromFleet) -> bool) -> bool {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline {
        while let Some(m) = n.link.try_recv() {
            if pred(&m) {
                return false;
            }
            n.backlog.push_back(m);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Base64url without padding, as JWTs are written.
fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A NATS JWT (v2) of `claims` about `subject`, signed by `issuer`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let header = b64url(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": format!("{:x}", lancet_engine::event::now_ns()), "iat": 1_700_000_000u64,
        "iss": issuer.public_key(), "name": name, "sub": subject, "nats": nats,
    });
    let body = format!("{header}.{}", b64url(claims.to_string().as_bytes()));
    let sig = issuer.sign(body.as_bytes()).unwrap();
    format!("{body}.{}", b64url(&sig))
}

/// A server in operator mode (JWTs, as `nsc` sets one up): a node with its
/// user's `.creds` file joins (JetStream included); the same file readable
/// by others is refused at start; a user of an account the server does
/// not know is refused by the server.
#[test]
fn a_creds_file_user_joins_an_operator_mode_server() {
    let dir = tempfile::tempdir().unwrap();
    let (operator, account, user) = (nkeys::KeyPair::new_operator(), nkeys::KeyPair::new_account(), nkeys::KeyPair::new_user());
    let op_jwt = jwt(&operator, &operator.public_key(), "lancet-test", serde_json::json!({"type": "operator", "version": 2}));
    let unlimited = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
    });
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "fleet",
        serde_json::json!({"limits": unlimited, "default_permissions": {"pub": {}, "sub": {}}, "type": "account", "version": 2}),
    );
    let creds = |signer: &nkeys::KeyPair, u: &nkeys::KeyPair| {
        let user_jwt = jwt(
            signer,
            &u.public_key(),
            "node-a",
            serde_json::json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2}),
        );
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            u.seed().unwrap()
        )
    };
    // JetStream needs the server's own (system) account.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = jwt(&operator, &system.public_key(), "SYS", serde_json::json!({"type": "account", "version": 2}));
    let conf = format!(
        "operator: \"{op_jwt}\"\nsystem_account: {sys}\nresolver: MEMORY\nresolver_preload: {{ {acc}: \"{account_jwt}\", {sys}: \"{system_jwt}\" }}",
        acc = account.public_key(),
        sys = system.public_key()
    );
    let Some(server) = configured(&conf, &[], &[]) else { return };
    let good = file(dir.path(), "node.creds", &creds(&account, &user), 0o600);
    let mut a =
        Node::start_with(node_cfg(&server.url(), "a", "test", NatsSecurity { creds: Some(good.clone()), ..Default::default() }, None));
    connected(&mut a);
    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = node_cfg(&server.url(), "b", "test", NatsSecurity { creds: Some(good.clone()), ..Default::default() }, None);
    let e = format!("{:#}", Link::start(cfg).err().expect("a readable creds file is refused"));
    assert!(e.contains(&good.display().to_string()) && e.contains("credentials file"), "{e}");
    let stranger = file(dir.path(), "stranger.creds", &creds(&nkeys::KeyPair::new_account(), &nkeys::KeyPair::new_user()), 0o600);
    let mut c = Node::start_with(node_cfg(&server.url(), "c", "test", NatsSecurity { creds: Some(stranger), ..Default::default() }, None));
    let e = wait_error(&c.link, "refusal", |e| !e.is_empty());
    assert!(e.to_ascii_lowercase().contains("authorization violation"), "{e}");
    never_connected(&mut c);
}
