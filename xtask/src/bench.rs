//! `cargo xtask bench`: exec, TCP-connect and file loops inside podman
//! containers, each without an agent and with `lancet trace` running, in
//! alternating rounds of one run. Prints slowdown ratios, the event rate the
//! pipeline sustained, lost events and lancet's peak RSS.

use crate::sh;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = "localhost/lancet-bench:latest";
const NET: &str = "lancet-bench-net";
pub(crate) const SRV: &str = "lancet-bench-srv";
pub(crate) const CLI: &str = "lancet-bench-cli";

/// Containers and the network the bench made; removed on drop, whatever
/// happened.
pub(crate) struct Fixture;

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rm", "-f", "-t", "0", SRV, CLI]).output();
        let _ = Command::new("podman").args(["network", "rm", "-f", NET]).output();
    }
}

/// A running `lancet trace` or `lancet run`, stopped with SIGINT (by its
/// pid) on drop.
pub(crate) struct Agent {
    pub(crate) child: Child,
    stderr_path: std::path::PathBuf,
}

impl Agent {
    /// Starts `lancet run` with its state, policies and (empty) config in
    /// `work`, its control socket at `api` (a path; the CLI talks to it as
    /// root), plus `extra` flags, and waits until it traces.
    pub(crate) fn run(lancet: &Path, work: &Path, api: &str, extra: &[&str]) -> Result<Agent> {
        std::fs::create_dir_all(work.join("policies"))?;
        if !work.join("none.yaml").exists() {
            std::fs::write(work.join("none.yaml"), "")?;
        }
        let err = work.join("run.err");
        let child = Command::new(lancet)
            .args(["run", "--socket", api, "--config"])
            .arg(work.join("none.yaml"))
            .arg("--state-dir")
            .arg(work.join("state"))
            .arg("--policy-dir")
            .arg(work.join("policies"))
            .args(extra)
            .env("LANCET_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err)?)
            .spawn()?;
        let agent = Agent { child, stderr_path: err };
        let t0 = Instant::now();
        loop {
            let text = std::fs::read_to_string(&agent.stderr_path).unwrap_or_default();
            if text.contains("lancet is tracing") {
                return Ok(agent);
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("lancet run did not start: {text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start(lancet: &Path, dir: &Path, round: usize) -> Result<Agent> {
        let stderr_path = dir.join(format!("lancet-{round}.err"));
        let child = Command::new(lancet)
            .args(["trace", "--format", "json", "--stats", "-c", SRV, "-c", CLI])
            .env("LANCET_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path)?)
            .spawn()
            .context("starting lancet trace")?;
        let agent = Agent { child, stderr_path };
        let t0 = Instant::now();
        loop {
            let text = std::fs::read_to_string(&agent.stderr_path).unwrap_or_default();
            if text.contains("lancet is tracing") {
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("lancet trace did not start: {text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(agent)
    }

    /// CPU seconds (user + system) the agent has used so far.
    pub(crate) fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<u64> = rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse().ok()).collect();
        f.iter().sum::<u64>() as f64 / 100.0
    }

    /// Stops the agent and returns its `--stats` JSON.
    fn stop(mut self) -> Result<serde_json::Value> {
        sh(Command::new("kill").args(["-INT", &self.child.id().to_string()]))?;
        self.child.wait()?;
        let text = std::fs::read_to_string(&self.stderr_path)?;
        let line = text.lines().rev().find(|l| l.starts_with('{')).context("lancet printed no stats")?;
        Ok(serde_json::from_str(line)?)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).output();
            let _ = self.child.wait();
        }
    }
}

/// Builds the load generator image and starts the server and client
/// containers on their own network; returns the guard that removes them and
/// the server's address.
pub(crate) fn fixture(root: &Path, work: &Path) -> Result<(Fixture, String)> {
    std::fs::create_dir_all(work)?;
    sh(Command::new("gcc").args(["-O2", "-static", "-o"]).arg(work.join("loadgen")).arg(root.join("bench/loadgen.c")))?;
    std::fs::write(work.join("Containerfile"), "FROM localhost/lancet-busybox:test\nCOPY loadgen /loadgen\n")?;
    sh(Command::new("podman").args(["build", "-q", "-t", IMAGE]).arg(work))?;
    let fixture = Fixture;
    let _ = Command::new("podman").args(["rm", "-f", "-t", "0", SRV, CLI]).output();
    let _ = Command::new("podman").args(["network", "rm", "-f", NET]).output();
    sh(Command::new("podman").args(["network", "create", NET]))?;
    sh(Command::new("podman").args(["run", "-d", "--name", SRV, "--network", NET, IMAGE, "/loadgen", "serve", "9000"]))?;
    sh(Command::new("podman").args(["run", "-d", "--name", CLI, "--network", NET, IMAGE, "sleep", "3600"]))?;
    let ip = sh(Command::new("podman").args(["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", SRV]))?
        .trim()
        .to_string();
    Ok((fixture, ip))
}

/// Runs one loop in the client container; returns its own timing (seconds).
pub(crate) fn run_loop(args: &[&str]) -> Result<f64> {
    run_loop_in(CLI, args)
}

/// One loadgen loop in `container`; its own timing of the loop, in seconds.
pub(crate) fn run_loop_in(container: &str, args: &[&str]) -> Result<f64> {
    let mut cmd = Command::new("podman");
    cmd.args(["exec", container, "/loadgen"]).args(args);
    let out = sh(&mut cmd)?;
    let secs = out.split_whitespace().nth(2).context("loadgen printed no timing")?;
    Ok(secs.parse()?)
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let rounds = if quick { 1 } else { 5 };
    let scale = if quick { 4 } else { 1 };
    sh(Command::new("bash").arg(root.join("scripts/setup.sh"))).context("scripts/setup.sh")?;
    eprintln!("bench: building lancet (release)");
    let status = Command::new("cargo").args(["build", "--release", "-p", "lancet"]).current_dir(root).status()?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let lancet = root.join("target/release/lancet");
    let work = std::env::temp_dir().join(format!("lancet-bench-{}", std::process::id()));
    let (_fixture, ip) = fixture(root, &work)?;

    let n_exec = (3000 / scale).to_string();
    let n_conn = (20000 / scale).to_string();
    let n_files = (20000 / scale).to_string();
    let loops: Vec<(&str, Vec<&str>)> = vec![
        ("exec", vec!["exec", &n_exec, "/bin/true"]),
        ("connect", vec!["connect", &n_conn, &ip, "9000"]),
        ("files", vec!["files", &n_files, "/tmp"]),
    ];
    // Warm caches (page cache, podman exec paths) before measuring.
    for (_, a) in &loops {
        run_loop(a)?;
    }
    let mut rows = Vec::new();
    let mut peak_rss = 0u64;
    for (name, a) in &loops {
        let (mut base, mut with, mut rates, mut cpu) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut lost = 0u64;
        for round in 0..rounds {
            base.push(run_loop(a)?);
            let agent = Agent::start(&lancet, &work, round)?;
            let cpu0 = agent.cpu_seconds();
            let secs = run_loop(a)?;
            // Let the reader drain what the loop queued before stopping.
            std::thread::sleep(Duration::from_millis(300));
            let cpu1 = agent.cpu_seconds();
            let stats = agent.stop()?;
            with.push(secs);
            let records = stats["records"].as_u64().unwrap_or(0) as f64;
            rates.push(records / secs);
            // lancet's CPU while the loop ran (and drained), per second of loop.
            cpu.push((cpu1 - cpu0) / secs);
            lost += stats["lost"].as_object().map(|m| m.values().filter_map(|v| v.as_u64()).sum()).unwrap_or(0);
            lost += stats["file_overflows"].as_u64().unwrap_or(0);
            peak_rss = peak_rss.max(stats["max_rss_kib"].as_u64().unwrap_or(0));
        }
        let (b, w) = (median(&mut base), median(&mut with));
        rows.push(serde_json::json!({
            "loop": name, "ops": a[1], "baseline_s": b, "lancet_s": w,
            "ratio": w / b, "events_per_s": median(&mut rates), "lost": lost,
            "lancet_cpu_per_loop_s": median(&mut cpu),
        }));
    }
    println!(
        "{:<8} {:>8} {:>12} {:>12} {:>8} {:>12} {:>6} {:>12}",
        "loop", "ops", "no agent s", "lancet s", "ratio", "events/s", "lost", "lancet cpu"
    );
    for r in &rows {
        println!(
            "{:<8} {:>8} {:>12.3} {:>12.3} {:>8.3} {:>12.0} {:>6} {:>11.0}%",
            r["loop"].as_str().unwrap_or(""),
            r["ops"].as_str().unwrap_or(""),
            r["baseline_s"].as_f64().unwrap_or(0.0),
            r["lancet_s"].as_f64().unwrap_or(0.0),
            r["ratio"].as_f64().unwrap_or(0.0),
            r["events_per_s"].as_f64().unwrap_or(0.0),
            r["lost"].as_u64().unwrap_or(0),
            r["lancet_cpu_per_loop_s"].as_f64().unwrap_or(0.0) * 100.0
        );
    }
    println!("lancet peak RSS: {:.1} MiB", peak_rss as f64 / 1024.0);
    let report = serde_json::json!({ "rounds": rounds, "loops": rows, "peak_rss_kib": peak_rss });
    let out = root.join("target/bench.json");
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("(written to {})", out.display());
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// A profile the size of a real service (40 executables, 60 outbound flows,
/// 30 inbound peers, 20 written directories), for image number `n`.
fn realistic_profile(n: usize) -> Result<String> {
    use lancet_engine::event::{Event, EventKind, ExecEvent, FileEvent, FileOp, NetEvent, NetOp, ProcessRef, Protocol};
    use lancet_engine::profile::{PeerRef, Profile};
    let ev = |kind| Event { time_ns: 1, cgroup_id: 1, process: ProcessRef::default(), kind };
    let mut p = Profile::new(&format!("registry.example/team/service{n}:1.0"), &format!("sha256:{n:064x}"), 1);
    for i in 0..40 {
        p.observe(
            &ev(EventKind::Exec(ExecEvent {
                filename: format!("/usr/bin/tool{i}"),
                argv: vec![format!("tool{i}"), "--serve".into()],
                parent_exe: Some("/usr/bin/supervisor".into()),
                ..Default::default()
            })),
            None,
            1,
        );
    }
    for i in 0..90u32 {
        let ip: std::net::IpAddr = format!("10.{}.{}.{}", 80 + i / 60, i / 16, i % 250).parse()?;
        let op = if i < 60 { NetOp::Connect } else { NetOp::Accept };
        let e = ev(EventKind::Net(NetEvent {
            op,
            proto: Protocol::Tcp,
            saddr: "10.88.0.5".parse()?,
            sport: 8080,
            daddr: ip,
            dport: if i < 60 { 5432 } else { 8080 },
            result: 0,
            netns: 1,
            totals: None,
        }));
        p.observe(&e, Some(&PeerRef::Ip(ip)), 1);
    }
    for i in 0..20 {
        p.observe(
            &ev(EventKind::File(FileEvent {
                op: FileOp::Modify,
                path: format!("/var/cache/app/shard{i}/data.bin"),
                old_path: None,
                host_path: String::new(),
                is_dir: false,
            })),
            None,
            1,
        );
    }
    Ok(p.to_yaml()?)
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`), 0 when unreadable.
pub(crate) fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `cargo xtask bench-rss`: the agent's memory holding 50 profiled workloads
/// of realistic size, with its probes and watchers running.
pub fn rss(root: &Path) -> Result<()> {
    sh(Command::new("bash").arg(root.join("scripts/setup.sh"))).context("scripts/setup.sh")?;
    let status = Command::new("cargo").args(["build", "--release", "-p", "lancet"]).current_dir(root).status()?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let lancet = root.join("target/release/lancet");
    let work = std::env::temp_dir().join(format!("lancet-bench-rss-{}", std::process::id()));
    let api = work.join("run").join("lancet.sock").display().to_string();
    let mut agent = Agent::run(&lancet, &work, &api, &[])?;
    let pid = agent.child.id();
    let idle = status_kib(pid, "VmRSS:");
    for n in 0..50 {
        let f = work.join(format!("p{n}.yaml"));
        std::fs::write(&f, realistic_profile(n)?)?;
        sh(Command::new(&lancet).args(["profile", "import", "--api", &api]).arg(&f))?;
    }
    // Let the agent persist them (once a second) and settle.
    std::thread::sleep(Duration::from_secs(3));
    let listed = sh(Command::new(&lancet).args(["profile", "list", "--api", &api]))?;
    let profiles = listed.lines().count().saturating_sub(1);
    let (rss, hwm) = (status_kib(pid, "VmRSS:"), status_kib(pid, "VmHWM:"));
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).output();
    let _ = agent.child.wait();
    println!(
        "lancet run RSS: idle {:.1} MiB; with {profiles} profiled workloads {:.1} MiB (peak {:.1} MiB)",
        idle as f64 / 1024.0,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
