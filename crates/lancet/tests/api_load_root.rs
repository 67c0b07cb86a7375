//! Readers cannot starve the agent (issue 17 item 8). Anyone who reaches
//! the TCP API may read; reads of thousands of alerts used to run on the
//! event loop, so a flood of them delayed the OCI hook's hand-over past its
//! timeout and a container of a protected workload started unguarded. Now
//! reads run off the loop, bounded, and the hook has a queue of its own.

mod common;

use common::*;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Alerts in the store before the agent starts (each read returns 10 000).
const ALERTS: usize = 20_000;
const READERS: usize = 256;

/// The store of a busy agent: many alerts, each with a full JSON object.
fn seed(state: &std::path::Path) {
    let mut store = lancet_store::Store::open(&state.join("lancet.db"), lancet_store::StoreOptions::default()).expect("store");
    let now = lancet_engine::event::now_ns();
    let fields: serde_json::Map<String, serde_json::Value> =
        (0..24).map(|i| (format!("proc.field{i}"), serde_json::json!("x".repeat(40)))).collect();
    let json = serde_json::json!({"rule": "Seeded", "priority": "Warning", "output": "seeded alert", "output_fields": fields}).to_string();
    for i in 0..ALERTS as u64 {
        store
            .insert_alert(&lancet_store::NewAlert {
                time_ns: now - 1_000_000 * i,
                rule: "Seeded".into(),
                priority: "Warning".into(),
                container_id: "c0".repeat(32),
                container_name: "seeded".into(),
                image: "localhost/seeded:1".into(),
                workload: "sha256:seeded".into(),
                action: "alert".into(),
                enforced: false,
                count: 1,
                json: json.clone(),
            })
            .expect("insert");
    }
    store.flush().expect("flush");
}

/// One GET over a fresh connection: the status, or None when it failed.
fn get(addr: &str, path: &str) -> Option<u16> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(120))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: lancet\r\nConnection: close\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    let status = std::str::from_utf8(&head[9..12]).ok()?.parse().ok()?;
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    Some(status)
}

#[test]
fn a_flood_of_reads_never_delays_the_hook() {
    skip_unless_ready!(true);
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, policies, alerts) = agent_dirs(dir.path());
    seed(&state);
    let hooks = dir.path().join("hooks.d");
    std::fs::create_dir_all(&hooks).expect("hooks dir");
    let c = Container::start(&unique("lancet-load"), &[], &["sleep", "600"]);
    let agent = Agent::start_with_config(&state, &policies, &alerts, "interpreterCode: any\n", &[]);
    agent.cli(&["hook", "install", "--dir", hooks.to_str().expect("utf-8")]);
    for cmd in [vec!["sh", "-c", "true"], vec!["cp", "/bin/busybox", "/tmp/y"], vec!["echo", "rc"]] {
        assert!(c.exec(&cmd).status.success());
    }
    std::thread::sleep(Duration::from_millis(1500));
    agent.cli(&["profile", "promote", &c.name, "--to", "protect", "--force"]);

    // A read asking for more than a read may return is refused at once.
    assert_eq!(get(&agent.api, "/v1/alerts?limit=100000"), Some(400));

    // The flood: 256 readers, each asking for 10 000 alerts, over and over.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, busy, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (api, stop, ok, busy, failed) = (agent.api.clone(), stop.clone(), ok.clone(), busy.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match get(&api, "/v1/alerts?limit=10000") {
                        Some(200) => ok.fetch_add(1, Ordering::Relaxed),
                        Some(503) => busy.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));

    // Containers of the protected workload started through the hook meanwhile:
    // each is guarded before its entrypoint runs (the drop is refused at
    // exec, 126; unguarded it would run, 0).
    let mut waits = Vec::new();
    for i in 0..3 {
        let name = unique(&format!("lancet-load-hooked{i}"));
        let t0 = Instant::now();
        let o = Command::new("podman")
            .args(["--hooks-dir", hooks.to_str().expect("utf-8"), "run", "--rm", "--name", &name, IMAGE])
            .args(["sh", "-c", "cp /bin/busybox /tmp/x; /tmp/x true; echo rc=$?"])
            .stdin(Stdio::null())
            .output()
            .expect("podman run");
        waits.push(t0.elapsed());
        let text = out_text(&o);
        let _ = Command::new("podman").args(["rm", "-f", "-t", "0", &name]).output();
        assert!(text.contains("rc=126"), "container {i} started unguarded under the read flood: {text}");
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("reader");
    }
    let (ok, busy, failed) = (ok.load(Ordering::Relaxed), busy.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("reads: {ok} answered, {busy} told busy (503), {failed} failed; hooked starts took {waits:?}");
    assert!(ok > 0, "reads were answered during the flood");
    // A read that got no HTTP answer at all was a connection the kernel's
    // accept queue dropped under 256 clients on a loaded machine (seen:
    // 10 of 2851), never one the agent held: at most 1 %.
    assert!(failed * 100 <= ok + busy + failed, "reads without an answer: {failed} of {}", ok + busy + failed);
    // The agent still answers, and still sees.
    assert!(agent.cli(&["profile", "list"]).contains("protect"));
}
