//! `cargo xtask bench-protect`: the exec, connect and file loops of `bench`
//! with `lancet run` in protect mode against no agent, in one run.
//!
//! The workload (server and client containers of one image) is learned
//! once, promoted to protect, and then every round measures the loop with
//! no agent and no pins, and with the agent protecting both containers
//! (fanotify exec marks with approvals cached in the kernel, cgroup BPF
//! allow-lists, kill-at-exec flags). One more loop runs with the kernel
//! cache off (`execCache: false`), so every exec is a permission round trip
//! through lancet: its extra time per exec is the uncached (first-exec)
//! cost. lancet's own time per decision comes from its permission stats.

use crate::bench::{fixture, median, run_loop, Agent, CLI, SRV};
use crate::sh;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn stop(agent: &mut Agent) {
    let _ = Command::new("kill").args(["-TERM", &agent.child.id().to_string()]).output();
    let _ = agent.child.wait();
}

/// Waits until the agent reports both containers under protection.
fn wait_guarded(lancet: &Path, api: &str) -> Result<serde_json::Value> {
    let t0 = Instant::now();
    loop {
        if let Ok(out) = sh(Command::new(lancet).args(["status", "--api", api])) {
            let v: serde_json::Value = serde_json::from_str(&out)?;
            let names: Vec<&str> = v["guarded"].as_array().into_iter().flatten().filter_map(|g| g["name"].as_str()).collect();
            if names.contains(&SRV) && names.contains(&CLI) {
                return Ok(v);
            }
        }
        if t0.elapsed() > Duration::from_secs(20) {
            bail!("the containers were not protected within 20 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let rounds = if quick { 1 } else { 5 };
    let scale = if quick { 4 } else { 1 };
    sh(Command::new("bash").arg(root.join("scripts/setup.sh"))).context("scripts/setup.sh")?;
    eprintln!("bench-protect: building lancet (release)");
    if !Command::new("cargo").args(["build", "--release", "-p", "lancet"]).current_dir(root).status()?.success() {
        bail!("cargo build failed");
    }
    let lancet = root.join("target/release/lancet");
    let work = std::env::temp_dir().join(format!("lancet-bench-protect-{}", std::process::id()));
    let (_fixture, ip) = fixture(root, &work)?;
    let pins = format!("/sys/fs/bpf/lancet-bench-{}", std::process::id());
    let unpin = || {
        let _ = std::fs::remove_dir_all(&pins);
    };
    let api = work.join("run").join("lancet.sock").display().to_string();
    let flags = ["--pin-dir", pins.as_str()];

    let n_exec = (3000 / scale).to_string();
    let n_conn = (20000 / scale).to_string();
    let n_files = (20000 / scale).to_string();
    let loops: Vec<(&str, Vec<&str>)> = vec![
        ("exec", vec!["exec", &n_exec, "/bin/true"]),
        ("connect", vec!["connect", &n_conn, &ip, "9000"]),
        ("files", vec!["files", &n_files, "/tmp"]),
    ];

    // Learn, then promote the workload to protect (kept in the store).
    let mut agent = Agent::run(&lancet, &work, &api, &flags)?;
    for (_, a) in &loops {
        run_loop(a)?;
    }
    std::thread::sleep(Duration::from_millis(1500));
    sh(Command::new(&lancet).args(["profile", "promote", SRV, "--to", "protect", "--api", &api]))?;
    std::thread::sleep(Duration::from_millis(1500));
    stop(&mut agent);
    unpin();

    // The agent's config file (`Agent::run` passes work/none.yaml).
    let config = work.join("none.yaml");
    let mut rows = Vec::new();
    let mut decision = (0u64, 0u64, 0u64);
    let mut runs: Vec<(&str, &Vec<&str>, bool)> = loops.iter().map(|(n, a)| (*n, a, true)).collect();
    runs.push(("exec-uncached", &loops[0].1, false));
    for (name, a, cache) in runs {
        let (mut base, mut with, mut cpu, mut perm_events) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            base.push(run_loop(a)?);
            std::fs::write(&config, if cache { "" } else { "execCache: false\n" })?;
            let mut agent = Agent::run(&lancet, &work, &api, &flags)?;
            wait_guarded(&lancet, &api)?;
            let cpu0 = agent.cpu_seconds();
            let secs = run_loop(a)?;
            cpu.push((agent.cpu_seconds() - cpu0) / secs);
            with.push(secs);
            let st: serde_json::Value = serde_json::from_str(&sh(Command::new(&lancet).args(["status", "--api", &api]))?)?;
            if let Some(s) = st["backends"].as_array().into_iter().flatten().find_map(|b| b.get("stats")) {
                perm_events.push(s["events"].as_u64().unwrap_or(0) as f64);
                if !cache {
                    decision = (
                        s["decisionP50Ns"].as_u64().unwrap_or(0),
                        s["decisionP99Ns"].as_u64().unwrap_or(0),
                        s["events"].as_u64().unwrap_or(0),
                    );
                }
            }
            stop(&mut agent);
            unpin();
        }
        let (b, w) = (median(&mut base), median(&mut with));
        let ops: f64 = a[1].parse().unwrap_or(1.0);
        rows.push(serde_json::json!({
            "loop": name, "ops": a[1], "baseline_s": b, "lancet_s": w, "ratio": w / b,
            "extra_us_per_op": (w - b) / ops * 1e6, "lancet_cpu_per_loop_s": median(&mut cpu),
            "permission_events": if perm_events.is_empty() { 0.0 } else { median(&mut perm_events) },
        }));
    }
    println!(
        "{:<14} {:>7} {:>11} {:>11} {:>7} {:>13} {:>11} {:>12}",
        "loop (protect)", "ops", "no agent s", "lancet s", "ratio", "extra µs/op", "lancet cpu", "perm events"
    );
    for r in &rows {
        println!(
            "{:<14} {:>7} {:>11.3} {:>11.3} {:>7.3} {:>13.1} {:>10.0}% {:>12.0}",
            r["loop"].as_str().unwrap_or(""),
            r["ops"].as_str().unwrap_or(""),
            r["baseline_s"].as_f64().unwrap_or(0.0),
            r["lancet_s"].as_f64().unwrap_or(0.0),
            r["ratio"].as_f64().unwrap_or(0.0),
            r["extra_us_per_op"].as_f64().unwrap_or(0.0),
            r["lancet_cpu_per_loop_s"].as_f64().unwrap_or(0.0) * 100.0,
            r["permission_events"].as_f64().unwrap_or(0.0)
        );
    }
    println!(
        "lancet's own time per permission decision (uncached loop, {} decisions): p50 {:.2} µs, p99 {:.2} µs",
        decision.2,
        decision.0 as f64 / 1000.0,
        decision.1 as f64 / 1000.0
    );
    let report = serde_json::json!({
        "rounds": rounds, "loops": rows,
        "decision_p50_ns": decision.0, "decision_p99_ns": decision.1, "decisions": decision.2,
    });
    let out = root.join("target/bench-protect.json");
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("(written to {})", out.display());
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
