//! `cargo xtask bench`: exec, TCP-connect and file loops inside podman
//! containers, in rounds of one run, each without an agent, with `lancet
//! trace --format json` printing to a pipe, with `lancet run` learning, with
//! `lancet run` monitoring the learned workloads, and with bpftrace printing
//! one line per event of the loop. Prints, per loop and mode, the events
//! handled, the agent's CPU per event (ns from schedstat), the writer's
//! slowdown against no agent in the same round, bpftrace's CPU per printed
//! line and lancet's ratio to it; lost events and peak RSS.

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
    /// `lancet trace`'s stdout, read and counted as a pipe consumer would.
    pub(crate) out: Option<crate::cost::LineCounter>,
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
        let agent = Agent { child, stderr_path: err, out: None };
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
        let mut child = Command::new(lancet)
            .args(["trace", "--format", "json", "--stats", "-c", SRV, "-c", CLI])
            .env("LANCET_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path)?)
            .spawn()
            .context("starting lancet trace")?;
        let out = child.stdout.take().map(crate::cost::LineCounter::start);
        let agent = Agent { child, stderr_path, out };
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

    /// CPU seconds the agent has used so far (every thread's time on the
    /// CPU from schedstat, in ns: `/proc/<pid>/stat` counts 10 ms ticks).
    pub(crate) fn cpu_seconds(&self) -> f64 {
        crate::cost::cpu_ns(self.child.id()) as f64 / 1e9
    }

    /// Stops `lancet run` (SIGTERM, by pid) and waits for it.
    pub(crate) fn stop_term(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).output();
        let _ = self.child.wait();
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

/// Where cargo puts its builds: `CARGO_TARGET_DIR` when set (the bench's
/// release build and its report go there), else the workspace's `target`.
pub(crate) fn target_dir(root: &Path) -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| root.join("target"))
}

/// Who handles the loop's events in a measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No agent: the writer's own time.
    None,
    /// `lancet trace --format json` with its stdout a pipe that is read.
    Trace,
    /// `lancet run`, every workload learning.
    Learn,
    /// `lancet run`, the bench's workloads learned and promoted to monitor.
    Monitor,
    /// bpftrace printing one line per event of the loop, to a pipe.
    Bpftrace,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::None => "no agent",
            Mode::Trace => "trace json",
            Mode::Learn => "run learn",
            Mode::Monitor => "run monitor",
            Mode::Bpftrace => "bpftrace",
        }
    }
}

/// One loop under one mode in one round.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    secs: f64,
    /// Events the agent handled (trace: JSON lines printed; run: its
    /// `lancet_events_total`; bpftrace: lines printed).
    events: u64,
    cpu_ns: u64,
}

/// Runs one loop while `pid` handles its events: the loop's own time, the
/// events counted by `count` and `pid`'s CPU (ns) from before the loop
/// until its events were handled. `settle` waits for that.
fn measure(a: &[&str], pid: u32, mut count: impl FnMut() -> u64, settle: impl FnOnce(&mut dyn FnMut() -> u64)) -> Result<Sample> {
    let c0 = count();
    let cpu0 = crate::cost::cpu_ns(pid);
    let secs = run_loop(a)?;
    settle(&mut count);
    let cpu1 = crate::cost::cpu_ns(pid);
    let c1 = count();
    Ok(Sample { secs, events: c1.saturating_sub(c0), cpu_ns: cpu1.saturating_sub(cpu0) })
}

/// Waits for a count to stop growing: what a reader with any batching
/// delay has drained.
fn settle_count(count: &mut dyn FnMut() -> u64) {
    crate::cost::settle(count, Duration::from_millis(400), Duration::from_secs(20));
}

/// `lancet run`'s counters are read over its API, which costs the agent
/// CPU: instead of asking until they settle, give its loop a fixed second
/// (ten times its longest batching delay) before its CPU is read.
fn settle_run(_: &mut dyn FnMut() -> u64) {
    std::thread::sleep(Duration::from_secs(1));
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let rounds = match args.iter().position(|a| a == "--rounds") {
        Some(i) => args.get(i + 1).context("--rounds N")?.parse()?,
        None if quick => 1,
        None => 5,
    };
    let scale = if quick { 4 } else { 1 };
    sh(Command::new("bash").arg(root.join("scripts/setup.sh"))).context("scripts/setup.sh")?;
    let target = target_dir(root);
    // `--lancet BIN` measures that build (an earlier commit's) instead.
    let lancet = match args.iter().position(|a| a == "--lancet") {
        Some(i) => std::path::PathBuf::from(args.get(i + 1).context("--lancet BIN")?),
        None => {
            eprintln!("bench: building lancet (release)");
            let status = Command::new("cargo").args(["build", "--release", "-p", "lancet"]).current_dir(root).status()?;
            if !status.success() {
                bail!("cargo build failed");
            }
            target.join("release/lancet")
        }
    };
    let work = std::env::temp_dir().join(format!("lancet-bench-{}", std::process::id()));
    let (_fixture, ip) = fixture(root, &work)?;
    let bpftrace = crate::cost::Bpftrace::available();
    if !bpftrace {
        eprintln!("bench: bpftrace is not installed (Debian package bpftrace); its column is left out");
    }

    let n_exec = (3000 / scale).to_string();
    let n_conn = (20000 / scale).to_string();
    let n_files = (20000 / scale).to_string();
    let loops: Vec<(&str, Vec<&str>)> = vec![
        ("exec", vec!["exec", &n_exec, "/bin/true"]),
        ("connect", vec!["connect", &n_conn, &ip, "9000"]),
        // Each file a name of its own: the kernel merges the queued events
        // of one name, so with a few names reused the count of events would
        // depend on how fast the agent reads.
        ("files", vec!["unique", &n_files, "/tmp"]),
    ];
    // Warm caches (page cache, podman exec paths) before measuring.
    for (_, a) in &loops {
        run_loop(a)?;
    }
    // The monitor agent's state: the bench's workloads learned once and
    // promoted (kept in its store across rounds).
    let (learn_dir, monitor_dir) = (work.join("learn"), work.join("monitor"));
    let (learn_api, monitor_api) =
        (learn_dir.join("run/lancet.sock").display().to_string(), monitor_dir.join("run/lancet.sock").display().to_string());
    let pins = format!("/sys/fs/bpf/lancet-bench-{}", std::process::id());
    let flags = ["--pin-dir", pins.as_str()];
    {
        let mut a = Agent::run(&lancet, &monitor_dir, &monitor_api, &flags)?;
        for (_, args) in &loops {
            run_loop(args)?;
        }
        std::thread::sleep(Duration::from_millis(1500));
        for c in [SRV, CLI] {
            sh(Command::new(&lancet).args(["profile", "promote", c, "--to", "monitor", "--api", &monitor_api]))?;
        }
        std::thread::sleep(Duration::from_millis(1500));
        a.stop_term();
    }

    let modes = [Mode::None, Mode::Trace, Mode::Learn, Mode::Monitor, Mode::Bpftrace];
    // samples[loop][mode] over rounds.
    let mut samples: Vec<Vec<Vec<Sample>>> = vec![vec![Vec::new(); modes.len()]; loops.len()];
    let mut lost = 0u64;
    let mut peak_rss = 0u64;
    for round in 0..rounds {
        eprintln!("bench: round {} of {rounds}", round + 1);
        for (li, (_, a)) in loops.iter().enumerate() {
            let secs = run_loop(a)?;
            samples[li][0].push(Sample { secs, ..Sample::default() });
        }
        {
            let agent = Agent::start(&lancet, &work, round)?;
            let pid = agent.child.id();
            for (li, (_, a)) in loops.iter().enumerate() {
                let out = agent.out.as_ref().context("trace's stdout")?;
                samples[li][1].push(measure(a, pid, || out.lines(), settle_count)?);
            }
            let stats = agent.stop()?;
            lost += stats["lost"].as_object().map(|m| m.values().filter_map(|v| v.as_u64()).sum()).unwrap_or(0);
            lost += stats["file_overflows"].as_u64().unwrap_or(0);
            peak_rss = peak_rss.max(stats["max_rss_kib"].as_u64().unwrap_or(0));
        }
        for (mi, dir, api) in [(2, &learn_dir, &learn_api), (3, &monitor_dir, &monitor_api)] {
            let extra: Vec<&str> = if mi == 2 { [flags.as_slice(), &["--mode", "learn"]].concat() } else { flags.to_vec() };
            let mut agent = Agent::run(&lancet, dir, api, &extra)?;
            let pid = agent.child.id();
            let count = || crate::cost::run_counters(api, ["lancet_events_total{"]).map_or(0, |[n]| n);
            for (li, (_, a)) in loops.iter().enumerate() {
                samples[li][mi].push(measure(a, pid, count, settle_run)?);
            }
            if let Some([l, o]) = crate::cost::run_counters(api, ["lancet_events_lost_total{", "lancet_fanotify_overflows_total"]) {
                lost += l + o;
            }
            peak_rss = peak_rss.max(status_kib(pid, "VmHWM:"));
            agent.stop_term();
            let _ = std::fs::remove_dir_all(&pins);
        }
        if bpftrace {
            for (li, (name, a)) in loops.iter().enumerate() {
                let b = crate::cost::Bpftrace::start(crate::cost::bpftrace_program(name), &work.join("bpftrace.err"))?;
                let mut sample = measure(a, b.pid(), || b.lines(), settle_count)?;
                // The lines it still held in its buffer count too (its CPU
                // was read before it flushed them at exit).
                sample.events = b.finish();
                samples[li][4].push(sample);
            }
        }
    }

    let med = |v: &[Sample], f: &dyn Fn(&Sample) -> f64| -> f64 {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        if x.is_empty() {
            return f64::NAN;
        }
        median(&mut x)
    };
    let mut rows = Vec::new();
    for (li, (name, a)) in loops.iter().enumerate() {
        let ops: f64 = a[1].parse().unwrap_or(1.0);
        let base = med(&samples[li][0], &|s| s.secs);
        let bpf_line = med(&samples[li][4], &|s| s.cpu_ns as f64 / 1000.0 / s.events.max(1) as f64);
        for (mi, mode) in modes.iter().enumerate() {
            let v = &samples[li][mi];
            if v.is_empty() {
                continue;
            }
            let secs = med(v, &|s| s.secs);
            let per_event = med(v, &|s| s.cpu_ns as f64 / 1000.0 / s.events.max(1) as f64);
            let agent = !matches!(mode, Mode::None | Mode::Bpftrace);
            rows.push(serde_json::json!({
                "loop": name, "mode": mode.name(), "ops": ops, "secs": secs,
                "slowdown": secs / base,
                "events": med(v, &|s| s.events as f64),
                "cpu_us_per_event": if *mode == Mode::None { serde_json::Value::Null } else { per_event.into() },
                "cpu_us_per_op": if *mode == Mode::None { serde_json::Value::Null } else { med(v, &|s| s.cpu_ns as f64 / 1000.0 / ops).into() },
                "bpftrace_us_per_line": if agent && bpf_line.is_finite() { bpf_line.into() } else { serde_json::Value::Null },
                "ratio_to_bpftrace": if agent && bpf_line.is_finite() { (per_event / bpf_line).into() } else { serde_json::Value::Null },
            }));
        }
    }
    println!(
        "{:<8} {:<12} {:>7} {:>9} {:>9} {:>9} {:>11} {:>9} {:>10} {:>7}",
        "loop", "mode", "ops", "events", "loop s", "slowdown", "agent µs/ev", "µs/op", "bpft µs/l", "ratio"
    );
    let num = |v: &serde_json::Value, prec: usize| v.as_f64().map_or("-".to_string(), |x| format!("{x:.prec$}"));
    for r in &rows {
        println!(
            "{:<8} {:<12} {:>7} {:>9} {:>9} {:>9} {:>11} {:>9} {:>10} {:>7}",
            r["loop"].as_str().unwrap_or(""),
            r["mode"].as_str().unwrap_or(""),
            num(&r["ops"], 0),
            num(&r["events"], 0),
            num(&r["secs"], 3),
            num(&r["slowdown"], 3),
            num(&r["cpu_us_per_event"], 2),
            num(&r["cpu_us_per_op"], 2),
            num(&r["bpftrace_us_per_line"], 2),
            num(&r["ratio_to_bpftrace"], 3),
        );
    }
    println!("lost or overflowed (all agents, all rounds): {lost}; lancet peak RSS: {:.1} MiB", peak_rss as f64 / 1024.0);
    println!("(agent CPU: /proc/<pid>/task/*/schedstat, before the loop to after its events were handled; medians of {rounds} rounds)");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let report = serde_json::json!({ "rounds": rounds, "rows": rows, "lost": lost, "peak_rss_kib": peak_rss, "loadavg": load.trim() });
    let out = target.join("bench.json");
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("load average at the end: {}", load.trim());
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
    let lancet = target_dir(root).join("release/lancet");
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
