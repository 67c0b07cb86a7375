//! `cargo xtask bench-protect`: the exec, connect and file loops of `bench`
//! with `lancet run` in protect mode against no agent, in one run, on the
//! busybox image and on the glibc Debian image (an exec loop of a learned
//! dynamic program, whose ELF loader the kernel also opens with exec
//! intent, and a write loop in a learned directory of a read-only root).
//!
//! The workloads are learned once. Every round then measures each loop with
//! no agent, and with the agent protecting the containers (fanotify exec
//! marks with approvals cached in the kernel, cgroup BPF allow-lists,
//! kill-at-exec flags, the read-only root); the workloads are demoted before
//! the agent stops, so the no-agent rounds run on writable roots. One more
//! loop per image runs with the kernel cache off (`execCache: false`), so
//! every exec is a permission round trip through lancet: its extra time per
//! exec is the uncached (first-exec) cost. lancet's own time per decision
//! comes from its permission stats.

use crate::bench::{fixture, median, run_loop_in, Agent, CLI, SRV};
use crate::sh;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const DEB_IMAGE: &str = "localhost/lancet-bench-deb:latest";
const DEB: &str = "lancet-bench-deb";

/// The glibc container; removed on drop.
struct GlibcFixture;

impl Drop for GlibcFixture {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rm", "-f", "-t", "0", DEB]).output();
    }
}

/// The Debian image with the load generator, and one container of it.
fn glibc_fixture(work: &Path) -> Result<GlibcFixture> {
    std::fs::write(work.join("Containerfile.deb"), "FROM localhost/lancet-debian:test\nCOPY loadgen /loadgen\n")?;
    sh(Command::new("podman").args(["build", "-q", "-t", DEB_IMAGE, "-f"]).arg(work.join("Containerfile.deb")).arg(work))?;
    let _ = Command::new("podman").args(["rm", "-f", "-t", "0", DEB]).output();
    sh(Command::new("podman").args(["run", "-d", "--name", DEB, DEB_IMAGE, "sleep", "3600"]))?;
    Ok(GlibcFixture)
}

/// A pin directory of this run, removed on drop.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn stop(agent: &mut Agent) {
    let _ = Command::new("kill").args(["-TERM", &agent.child.id().to_string()]).output();
    let _ = agent.child.wait();
}

/// The names of the containers the agent reports under protection.
fn guarded(lancet: &Path, api: &str) -> Result<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(&sh(Command::new(lancet).args(["status", "--api", api]))?)?;
    Ok(v["guarded"].as_array().into_iter().flatten().filter_map(|g| g["name"].as_str().map(str::to_string)).collect())
}

/// Waits until the agent reports all of `names` under protection (or, with
/// `want` false, none of them).
fn wait_guarded(lancet: &Path, api: &str, names: &[&str], want: bool) -> Result<()> {
    let t0 = Instant::now();
    loop {
        if let Ok(g) = guarded(lancet, api) {
            if names.iter().all(|n| g.iter().any(|x| x == n) == want) {
                return Ok(());
            }
        }
        if t0.elapsed() > Duration::from_secs(20) {
            bail!("the containers were not {} within 20 s", if want { "protected" } else { "released" });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn promote(lancet: &Path, api: &str, mode: &str) -> Result<()> {
    for c in [SRV, DEB] {
        sh(Command::new(lancet).args(["profile", "promote", c, "--to", mode, "--api", api]))?;
    }
    Ok(())
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
    let lancet = crate::bench::target_dir(root).join("release/lancet");
    let work = std::env::temp_dir().join(format!("lancet-bench-protect-{}", std::process::id()));
    let (_fixture, ip) = fixture(root, &work)?;
    let _glibc = glibc_fixture(&work)?;
    let pins = format!("/sys/fs/bpf/lancet-bench-{}", std::process::id());
    let unpin = || {
        let _ = std::fs::remove_dir_all(&pins);
    };
    // The pins go on every way out, an error too (declared before any
    // agent, so dropped after it has stopped).
    let _pins = PinDir(PathBuf::from(&pins));
    let api = work.join("run").join("lancet.sock").display().to_string();
    let flags = ["--pin-dir", pins.as_str()];

    let n_exec = (3000 / scale).to_string();
    let n_conn = (20000 / scale).to_string();
    let n_files = (20000 / scale).to_string();
    let loops: Vec<(&str, &str, Vec<&str>)> = vec![
        ("exec", CLI, vec!["exec", &n_exec, "/bin/true"]),
        ("connect", CLI, vec!["connect", &n_conn, &ip, "9000"]),
        ("files", CLI, vec!["files", &n_files, "/tmp"]),
        ("glibc exec", DEB, vec!["exec", &n_exec, "/usr/bin/true"]),
        ("glibc files", DEB, vec!["files", &n_files, "/var/tmp"]),
    ];
    let containers = [SRV, CLI, DEB];

    // Learn (kept in the store); every round promotes and demotes.
    let mut agent = Agent::run(&lancet, &work, &api, &flags)?;
    for (_, c, a) in &loops {
        run_loop_in(c, a)?;
    }
    std::thread::sleep(Duration::from_millis(1500));
    promote(&lancet, &api, "monitor")?;
    std::thread::sleep(Duration::from_millis(1500));
    stop(&mut agent);
    unpin();

    // The agent's config file (`Agent::run` passes work/none.yaml).
    let config = work.join("none.yaml");
    let mut rows = Vec::new();
    let mut decision = (0u64, 0u64, 0u64);
    let mut runs: Vec<(&str, &str, &Vec<&str>, bool)> = loops.iter().map(|(n, c, a)| (*n, *c, a, true)).collect();
    runs.push(("exec-uncached", CLI, &loops[0].2, false));
    runs.push(("glibc exec-uncached", DEB, &loops[3].2, false));
    let mut decisions = Vec::new();
    for (name, container, a, cache) in runs {
        let (mut base, mut with, mut cpu, mut perm_events) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut cpu_per_op = Vec::new();
        let ops: f64 = a[1].parse().unwrap_or(1.0);
        for _ in 0..rounds {
            base.push(run_loop_in(container, a)?);
            std::fs::write(&config, if cache { "" } else { "execCache: false\n" })?;
            let mut agent = Agent::run(&lancet, &work, &api, &flags)?;
            promote(&lancet, &api, "protect")?;
            wait_guarded(&lancet, &api, &containers, true)?;
            let cpu0 = agent.cpu_seconds();
            let secs = run_loop_in(container, a)?;
            cpu.push((agent.cpu_seconds() - cpu0) / secs);
            cpu_per_op.push((agent.cpu_seconds() - cpu0) / ops * 1e6);
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
            // Lift the read-only root and the rest before the agent goes,
            // so the next no-agent round is really without lancet.
            promote(&lancet, &api, "monitor")?;
            wait_guarded(&lancet, &api, &containers, false)?;
            stop(&mut agent);
            unpin();
        }
        if !cache {
            decisions.push(serde_json::json!({"loop": name, "p50_ns": decision.0, "p99_ns": decision.1, "decisions": decision.2}));
        }
        let (b, w) = (median(&mut base), median(&mut with));
        rows.push(serde_json::json!({
            "agent_us_per_op": median(&mut cpu_per_op),
            "loop": name, "ops": a[1], "baseline_s": b, "lancet_s": w, "ratio": w / b,
            "extra_us_per_op": (w - b) / ops * 1e6, "lancet_cpu_per_loop_s": median(&mut cpu),
            "permission_events": if perm_events.is_empty() { 0.0 } else { median(&mut perm_events) },
        }));
    }
    println!(
        "{:<20} {:>7} {:>11} {:>11} {:>7} {:>13} {:>11} {:>12} {:>14}",
        "loop (protect)", "ops", "no agent s", "lancet s", "ratio", "extra µs/op", "lancet cpu", "perm events", "agent µs/op"
    );
    for r in &rows {
        println!(
            "{:<20} {:>7} {:>11.3} {:>11.3} {:>7.3} {:>13.1} {:>10.0}% {:>12.0} {:>14.2}",
            r["loop"].as_str().unwrap_or(""),
            r["ops"].as_str().unwrap_or(""),
            r["baseline_s"].as_f64().unwrap_or(0.0),
            r["lancet_s"].as_f64().unwrap_or(0.0),
            r["ratio"].as_f64().unwrap_or(0.0),
            r["extra_us_per_op"].as_f64().unwrap_or(0.0),
            r["lancet_cpu_per_loop_s"].as_f64().unwrap_or(0.0) * 100.0,
            r["permission_events"].as_f64().unwrap_or(0.0),
            r["agent_us_per_op"].as_f64().unwrap_or(0.0)
        );
    }
    for d in &decisions {
        println!(
            "lancet's own time per permission decision ({}, {} decisions): p50 {:.2} µs, p99 {:.2} µs",
            d["loop"].as_str().unwrap_or(""),
            d["decisions"],
            d["p50_ns"].as_f64().unwrap_or(0.0) / 1000.0,
            d["p99_ns"].as_f64().unwrap_or(0.0) / 1000.0
        );
    }
    let report = serde_json::json!({ "rounds": rounds, "loops": rows, "decisions": decisions });
    let out = crate::bench::target_dir(root).join("bench-protect.json");
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("(written to {})", out.display());
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
