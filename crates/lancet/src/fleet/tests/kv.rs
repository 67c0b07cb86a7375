//! Profiles and modes between nodes: sharing, compare-and-swap, what a
//! compromised node writes, a cluster losing its leader, a node started
//! without NATS, the settings.

use super::*;

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
    // b's watch lost its consumer with the leader: async-nats finds it gone
    // after two missed idle heartbeats (10 s) and makes it again, or the
    // session starts over, once a leader is elected. So b may see the
    // promotion several seconds after a's was acknowledged; what is checked
    // is that it does, not how soon.
    assert_eq!(wait_mode_within(&mut b, r, Duration::from_secs(60)).0, Mode::Learn);
}

/// `--nats`, `--node`, `--cluster` or the configuration file's `nats`,
/// `node`, `cluster`: flags win; a name that is not one token, or a node
/// name without a fleet, is an error; no URL, no fleet.
#[test]
fn fleet_settings_come_from_flags_then_the_file() {
    use crate::fleet::FleetArgs;
    let dir = Path::new("/var/lib/lancet");
    let file: crate::config::FileConfig = serde_norway::from_str("nats: nats://10.0.0.1:4222\nnode: from-file\ncluster: prod\n").unwrap();
    let none = FleetArgs::default();
    let c = none.config(&file, dir).unwrap().unwrap();
    assert_eq!((c.url.as_str(), c.node.as_str(), c.cluster.as_str()), ("nats://10.0.0.1:4222", "from-file", "prod"));
    assert_eq!(c.store.as_deref(), Some(dir.join("lancet.db").as_path()));
    let flags = FleetArgs { nats: Some("nats://127.0.0.1:4222".into()), node: Some("flag".into()), cluster: None, ..Default::default() };
    let c = flags.config(&file, dir).unwrap().unwrap();
    assert_eq!((c.url.as_str(), c.node.as_str(), c.cluster.as_str()), ("nats://127.0.0.1:4222", "flag", "prod"));
    let empty = crate::config::FileConfig::default();
    assert!(none.config(&empty, dir).unwrap().is_none(), "no URL, no fleet");
    let c = FleetArgs { nats: Some("nats://x:1".into()), ..Default::default() }.config(&empty, dir).unwrap().unwrap();
    assert!(keys::valid_name(&c.node) && c.cluster == "default", "the hostname, made a name: {c:?}");
    let lonely = FleetArgs { node: Some("a".into()), ..Default::default() };
    assert!(lonely.config(&empty, dir).unwrap_err().to_string().contains("--nats"));
    let k8s =
        FleetArgs { nats: Some("nats://x:1".into()), node: Some("ip-10-0-0-1.ec2.internal".into()), cluster: None, ..Default::default() };
    assert_eq!(k8s.config(&empty, dir).unwrap().unwrap().node, "ip-10-0-0-1_ec2_internal");
    let bad = FleetArgs { nats: Some("nats://x:1".into()), node: Some("a b".into()), cluster: None, ..Default::default() };
    assert!(bad.config(&empty, dir).is_err());
    // Credentials and certificates: paths, from the flags, then the file.
    let file: crate::config::FileConfig =
        serde_norway::from_str("nats: tls://n:4222\nnatsNkey: /etc/lancet/nats/node.nk\nnatsCa: /etc/lancet/nats/ca.pem\n").unwrap();
    let c = none.config(&file, dir).unwrap().unwrap();
    assert_eq!(c.security.nkey.as_deref(), Some(Path::new("/etc/lancet/nats/node.nk")));
    assert_eq!(c.security.ca.as_deref(), Some(Path::new("/etc/lancet/nats/ca.pem")));
    let flags = FleetArgs {
        security: crate::fleet::auth::NatsSecurityArgs { nats_ca: Some("/flag/ca.pem".into()), ..Default::default() },
        ..Default::default()
    };
    assert_eq!(flags.config(&file, dir).unwrap().unwrap().security.ca.as_deref(), Some(Path::new("/flag/ca.pem")));
    let alone = FleetArgs { security: flags.security.clone(), ..Default::default() };
    assert!(alone.config(&empty, dir).unwrap_err().to_string().contains("--nats URL"));
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
