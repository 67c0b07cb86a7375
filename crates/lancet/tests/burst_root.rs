//! Bursts are accounted for exactly, as root, with a real podman
//! container: 50,000 execs and 50,000 file deletes as fast as the container
//! can make them. Every one is either delivered by `lancet trace` or counted
//! as lost (delivered + lost = made), and the agent's memory stays bounded.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const N: usize = 50_000;
/// The agent's peak RSS bound for this burst (its rings and tables are
/// sized at start; the events themselves are not kept).
const MAX_RSS_KIB: u64 = 160 * 1024;

#[test]
fn every_exec_and_delete_of_a_burst_is_delivered_or_counted_lost() {
    skip_unless_ready!(true);
    let dir = tempfile::tempdir().expect("tempdir");
    let loadgen = dir.path().join("loadgen");
    run(Command::new("gcc")
        .args(["-O2", "-static", "-o"])
        .arg(&loadgen)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/loadgen.c")));
    let c = Container::start(&unique("lancet-burst"), &[], &["sleep", "600"]);
    podman(&["cp", loadgen.to_str().unwrap(), &format!("{}:/loadgen", c.id)]);

    let mut trace = Command::new(env!("CARGO_BIN_EXE_lancet"))
        .args(["trace", "--format", "json", "--stats", "--container", &c.name])
        .env("LANCET_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lancet trace");
    let stdout = trace.stdout.take().unwrap();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = {
        let seen = std::sync::Arc::clone(&seen);
        std::thread::spawn(move || {
            let (mut execs, mut deletes) = (0usize, 0usize);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
                let f = &v["output_fields"];
                match f["evt.type"].as_str() {
                    Some("execve") if f["proc.exepath"].as_str().is_some_and(|p| p.ends_with("/true-dyn")) => execs += 1,
                    Some("unlink") if f["fd.name"].as_str().is_some_and(|p| p.starts_with("/tmp/f")) => deletes += 1,
                    _ => {}
                }
                seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            (execs, deletes)
        })
    };
    let stderr = trace.stderr.take().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let logger = std::thread::spawn(move || {
        let mut stats = None;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("lancet is tracing") {
                let _ = ready_tx.send(());
            }
            if line.starts_with('{') {
                stats = serde_json::from_str::<serde_json::Value>(&line).ok();
            } else {
                eprintln!("[lancet] {line}");
            }
        }
        stats
    });
    ready_rx.recv_timeout(Duration::from_secs(60)).expect("lancet trace did not start");

    let o = c.exec(&["/loadgen", "exec", &N.to_string(), "/usr/bin/true-dyn"]);
    assert!(o.status.success(), "exec loop: {}", String::from_utf8_lossy(&o.stderr));
    let o = c.exec(&["/loadgen", "unique", &N.to_string(), "/tmp"]);
    assert!(o.status.success(), "file loop: {}", String::from_utf8_lossy(&o.stderr));
    // The agent may lag the burst (what it has not read waits in the
    // kernel): let it drain until nothing new arrives for 3 s, then stop it
    // (SIGINT: it prints its stats).
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let mut last = (seen.load(std::sync::atomic::Ordering::Relaxed), std::time::Instant::now());
    while last.1.elapsed() < Duration::from_secs(3) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = seen.load(std::sync::atomic::Ordering::Relaxed);
        if now != last.0 {
            last = (now, std::time::Instant::now());
        }
    }
    stop_child(&mut trace, "-INT", Duration::from_secs(30));
    let (execs, deletes) = counter.join().expect("counter");
    let stats = logger.join().expect("logger").expect("lancet printed its stats");
    let lost_exec = stats["lost"]["exec"].as_u64().unwrap_or(0) as usize;
    let overflows = stats["file_overflows"].as_u64().unwrap_or(0);
    let rss = stats["max_rss_kib"].as_u64().unwrap_or(0);
    println!("execs: {N} made, {execs} delivered, {lost_exec} lost; deletes: {N} made, {deletes} delivered, {overflows} queue overflows; peak RSS {rss} KiB");
    // Only this container is traced, but the ring's lost counter is the
    // probe's: other activity on the host may add to it, never subtract.
    assert!(execs <= N, "more execs delivered than made: {execs}");
    assert!(execs + lost_exec >= N, "execs neither delivered nor counted lost: {} of {N}", N - execs - lost_exec);
    if lost_exec == 0 {
        assert_eq!(execs, N, "nothing counted lost, so everything is delivered");
    }
    assert_eq!(overflows, 0, "the file-change queue is unlimited: nothing may overflow");
    assert_eq!(deletes, N, "every delete delivered");
    assert!(rss > 0 && rss < MAX_RSS_KIB, "peak RSS {rss} KiB over the bound {MAX_RSS_KIB} KiB");
}
