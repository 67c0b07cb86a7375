//! `cargo xtask bench-map`: what the flow map and the dashboard cost, in one
//! run, against an agent without them (`--baseline-rev REV` built from that
//! commit, or `--baseline BIN`; by default the commit a branch started from,
//! `git merge-base HEAD main`, which on main itself is no baseline at all and
//! is refused), alternating rounds, medians:
//!
//! 1. flow tracking: 10 000 TCP connections a second between two containers
//!    for 10 s; the agent's CPU, today's against this one's;
//! 2. an open dashboard with its live feed: the same load with two headless
//!    Chromium pages open on the agent (the overview, holding the live
//!    alert feed, and the map, which polls every 10 s) against none, with
//!    the same trickle of alerts in both;
//! 3. memory for 100 000 distinct flows (a scan of 100 000 ports of two
//!    containers): the agent's RSS before and after, today's against this
//!    one's, and what the flow table holds (from `/metrics`).
//!
//! The agents run in learn mode, with their own state, socket and (absent)
//! pin directory; the containers and network are this bench's own and are
//! removed at the end.

use crate::bench::{median, status_kib, Agent};
use crate::sh;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = "localhost/lancet-bench-map:latest";
const CHROMIUM: &str = "/usr/bin/chromium";

/// Containers, network and pin paths of this run; removed on drop.
struct Fixture {
    names: Vec<String>,
    net: String,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("podman").args(["rm", "-f", "-t", "0", n]).output();
        }
        let _ = Command::new("podman").args(["network", "rm", "-f", &self.net]).output();
    }
}

struct Setup {
    _fixture: Fixture,
    cli: String,
    srv_ip: String,
    srv2_ip: String,
}

fn ip_of(name: &str) -> Result<String> {
    Ok(sh(Command::new("podman").args(["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name]))?
        .trim()
        .to_string())
}

fn setup(root: &Path, work: &Path) -> Result<Setup> {
    std::fs::create_dir_all(work)?;
    sh(Command::new("gcc").args(["-O2", "-static", "-o"]).arg(work.join("loadgen")).arg(root.join("bench/loadgen.c")))?;
    std::fs::write(work.join("Containerfile"), "FROM localhost/lancet-busybox:test\nCOPY loadgen /loadgen\n")?;
    sh(Command::new("podman").args(["build", "-q", "-t", IMAGE]).arg(work))?;
    let id = std::process::id();
    let (net, srv, srv2, cli) =
        (format!("lancet-bmap-{id}"), format!("lancet-bmap-srv-{id}"), format!("lancet-bmap-srv2-{id}"), format!("lancet-bmap-cli-{id}"));
    let fixture = Fixture { names: vec![srv.clone(), srv2.clone(), cli.clone()], net: net.clone() };
    sh(Command::new("podman").args(["network", "create", &net]))?;
    sh(Command::new("podman").args(["run", "-d", "--name", &srv, "--network", &net, IMAGE, "/loadgen", "serve", "9000"]))?;
    sh(Command::new("podman").args(["run", "-d", "--name", &srv2, "--network", &net, IMAGE, "sleep", "3600"]))?;
    sh(Command::new("podman").args(["run", "-d", "--name", &cli, "--network", &net, IMAGE, "sleep", "3600"]))?;
    Ok(Setup { srv_ip: ip_of(&srv)?, srv2_ip: ip_of(&srv2)?, cli, _fixture: fixture })
}

/// The agent to compare with: built from `rev`, or the merge base with main
/// (sources from `git archive`, so no worktree is made), unless one is given.
fn baseline(root: &Path, target: &Path, given: Option<PathBuf>, rev: Option<&str>) -> Result<PathBuf> {
    if let Some(b) = given {
        return Ok(b);
    }
    let git = |args: &[&str]| -> Result<String> { Ok(sh(Command::new("git").args(args).current_dir(root))?.trim().to_string()) };
    let rev = match rev {
        Some(r) => git(&["rev-parse", "--verify", &format!("{r}^{{commit}}")]).with_context(|| format!("--baseline-rev {r}"))?,
        None => {
            let base = git(&["merge-base", "HEAD", "main"])?;
            if base == git(&["rev-parse", "HEAD"])? {
                bail!("HEAD is on main: name the agent to compare with (--baseline-rev REV or --baseline BIN)");
            }
            base
        }
    };
    let dir = target.join("bench-baseline");
    let src = dir.join(format!("src-{}", &rev[..12]));
    if !src.join("Cargo.toml").exists() {
        std::fs::create_dir_all(&src)?;
        let archive = Command::new("git").args(["archive", &rev]).current_dir(root).stdout(Stdio::piped()).spawn()?;
        let status = Command::new("tar").args(["-x", "-C"]).arg(&src).stdin(archive.stdout.context("git archive")?).status()?;
        if !status.success() {
            bail!("unpacking {rev}");
        }
    }
    eprintln!("bench-map: building today's agent ({}) in release", &rev[..12]);
    let status = Command::new("cargo")
        .args(["build", "--release", "-p", "lancet"])
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .current_dir(&src)
        .status()?;
    if !status.success() {
        bail!("building the baseline failed");
    }
    Ok(dir.join("target/release/lancet"))
}

fn loadgen(cli: &str, args: &[&str]) -> Result<f64> {
    let out = sh(Command::new("podman").args(["exec", cli, "/loadgen"]).args(args))?;
    Ok(out.split_whitespace().nth(2).context("loadgen printed no timing")?.parse()?)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(17_000)
}

/// Starts an agent in a fresh directory: (agent, its TCP API address).
fn agent(bin: &Path, work: &Path, name: &str, listen: bool) -> Result<(Agent, String)> {
    let dir = work.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let api = format!("127.0.0.1:{}", free_port());
    let sock = dir.join("run/lancet.sock").display().to_string();
    let pins = format!("/sys/fs/bpf/lancet-bmap-{}-{name}", std::process::id());
    let mut extra = vec!["--pin-dir".to_string(), pins];
    if listen {
        extra.extend(["--listen".to_string(), api.clone()]);
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let a = Agent::run(bin, &dir, &sock, &extra)?;
    std::thread::sleep(Duration::from_millis(1500));
    Ok((a, api))
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines().find(|l| l.starts_with(series)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(-1.0)
}

fn get(api: &str, path: &str) -> String {
    let out = Command::new("curl").args(["-s", "--max-time", "10", &format!("http://{api}{path}")]).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

/// What one paced load cost the agent.
#[derive(Debug, Clone, Copy)]
struct Cost {
    /// Share of one CPU while the load ran (and drained).
    cpu: f64,
    /// Connections a second achieved.
    rate: f64,
    /// Agent CPU per connection, µs: comparable across rounds whatever the
    /// rate achieved.
    us_per_conn: f64,
}

/// `rate` connections a second for `secs` from two paced loadgen
/// processes in the client container (one alone waits for each
/// connection's close and cannot keep 10 000/s here).
fn paced(a: &Agent, cli: &str, ip: &str, rate: u32, secs: u32) -> Result<Cost> {
    let (half, n) = (rate / 2, rate / 2 * secs);
    let script = format!("/loadgen connect {n} {ip} 9000 {half} & /loadgen connect {n} {ip} 9000 {half}; wait");
    let cpu0 = a.cpu_seconds();
    let out = sh(Command::new("podman").args(["exec", cli, "sh", "-c", &script]))?;
    std::thread::sleep(Duration::from_millis(300));
    let cpu1 = a.cpu_seconds();
    let t = out.lines().filter_map(|l| l.split_whitespace().nth(2)?.parse::<f64>().ok()).fold(0.0, f64::max);
    if t <= 0.0 {
        bail!("loadgen printed no timing: {out}");
    }
    let conns = f64::from(2 * n);
    Ok(Cost { cpu: (cpu1 - cpu0) / t, rate: conns / t, us_per_conn: (cpu1 - cpu0) / conns * 1e6 })
}

/// Open dashboard pages: headless Chromium processes, killed on drop.
struct Pages(Vec<Child>, Vec<PathBuf>);

impl Drop for Pages {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).output();
            let _ = c.wait();
        }
        for d in &self.1 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn open_pages(api: &str, work: &Path) -> Result<(Pages, &'static str)> {
    let urls = [format!("http://{api}/ui/"), format!("http://{api}/ui/map?since=1h")];
    let mut pages = Pages(Vec::new(), Vec::new());
    if Path::new(CHROMIUM).exists() {
        for (i, u) in urls.iter().enumerate() {
            let profile = work.join(format!("chromium-{i}"));
            let child = Command::new(CHROMIUM)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--remote-debugging-port=0",
                ])
                .arg(format!("--user-data-dir={}", profile.display()))
                .arg(u)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            pages.0.push(child);
            pages.1.push(profile);
        }
        std::thread::sleep(Duration::from_secs(4));
        return Ok((pages, "two headless Chromium pages (overview with the live feed, map)"));
    }
    // No browser: the same requests, by hand.
    pages.0.push(Command::new("curl").args(["-s", "-N", &format!("http://{api}/v1/events")]).stdout(Stdio::null()).spawn()?);
    pages.0.push(
        Command::new("sh")
            .args(["-c", &format!("while true; do curl -s -o /dev/null 'http://{api}/v1/map?format=json&since=1h'; sleep 10; done")])
            .spawn()?,
    );
    Ok((pages, "no Chromium: a curl on the live feed and a map fetch every 10 s"))
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let given = args.iter().position(|a| a == "--baseline").and_then(|i| args.get(i + 1)).map(PathBuf::from);
    let rev = args.iter().position(|a| a == "--baseline-rev").and_then(|i| args.get(i + 1)).map(String::as_str);
    let rounds = match args.iter().position(|a| a == "--rounds").and_then(|i| args.get(i + 1)) {
        Some(n) => n.parse().context("--rounds N")?,
        None if quick => 1,
        None => 5,
    };
    let (rate, secs) = (10_000u32, if quick { 4 } else { 10 });
    sh(Command::new("bash").arg(root.join("scripts/setup.sh"))).context("scripts/setup.sh")?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    eprintln!("bench-map: building this agent in release");
    if !Command::new("cargo").args(["build", "--release", "-p", "lancet"]).current_dir(root).status()?.success() {
        bail!("cargo build failed");
    }
    let new = target.join("release/lancet");
    let base = baseline(root, &target, given, rev)?;
    let work = std::env::temp_dir().join(format!("lancet-bench-map-{}", std::process::id()));
    let s = setup(root, &work)?;
    // Warm the paths.
    loadgen(&s.cli, &["connect", "2000", &s.srv_ip, "9000"])?;

    // 1. Flow tracking.
    let (mut base_runs, mut new_runs) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        for (label, bin) in [("base", &base), ("new", &new)] {
            let (a, _) = agent(bin, &work, &format!("{label}-{r}"), false)?;
            let c = paced(&a, &s.cli, &s.srv_ip, rate, secs)?;
            drop(a);
            if label == "base" {
                base_runs.push(c)
            } else {
                new_runs.push(c)
            }
        }
    }
    let m = |v: &[Cost], f: fn(&Cost) -> f64| median(&mut v.iter().map(f).collect::<Vec<_>>());
    let (cb, cn) = (m(&base_runs, |c| c.cpu), m(&new_runs, |c| c.cpu));
    let (ub, un) = (m(&base_runs, |c| c.us_per_conn), m(&new_runs, |c| c.us_per_conn));
    let mut rates: Vec<f64> = base_runs.iter().chain(&new_runs).map(|c| c.rate).collect();

    // 2. An open dashboard with its live feed.
    let trickle = "i=0; while [ $i -lt 40 ]; do echo x > /etc/lancet-bench-$i; i=$((i+1)); sleep 0.25; done; rm -f /etc/lancet-bench-*";
    let (mut closed_runs, mut open_runs) = (Vec::new(), Vec::new());
    let mut how = "";
    for r in 0..rounds {
        for open in [false, true] {
            let (a, api) = agent(&new, &work, &format!("ui-{r}-{open}"), true)?;
            let pages = if open {
                let (p, h) = open_pages(&api, &work)?;
                how = h;
                Some(p)
            } else {
                None
            };
            let alerts = Command::new("podman").args(["exec", &s.cli, "sh", "-c", trickle]).stdout(Stdio::null()).spawn()?;
            let c = paced(&a, &s.cli, &s.srv_ip, rate, secs)?;
            let _ = alerts.wait_with_output();
            drop(pages);
            drop(a);
            if open {
                open_runs.push(c)
            } else {
                closed_runs.push(c)
            }
        }
    }
    let (cc, co) = (m(&closed_runs, |c| c.cpu), m(&open_runs, |c| c.cpu));
    let (uc, uo) = (m(&closed_runs, |c| c.us_per_conn), m(&open_runs, |c| c.us_per_conn));

    // 3. Memory for 100 000 distinct flows.
    let mut mem = Vec::new();
    for (label, bin) in [("base", &base), ("new", &new)] {
        let (a, api) = agent(bin, &work, &format!("mem-{label}"), true)?;
        let pid = a.child.id();
        let before = status_kib(pid, "VmRSS:");
        let t0 = Instant::now();
        loadgen(&s.cli, &["scan", "100000", &s.srv_ip, &s.srv2_ip])?;
        let scan_s = t0.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(3));
        let (after, peak) = (status_kib(pid, "VmRSS:"), status_kib(pid, "VmHWM:"));
        let m = if label == "new" { get(&api, "/metrics") } else { String::new() };
        mem.push(serde_json::json!({
            "agent": label, "rss_before_kib": before, "rss_after_kib": after, "peak_kib": peak, "scan_s": scan_s,
            "flows_tracked": metric(&m, "lancet_flows_tracked "),
            "flows_summarised_scan": metric(&m, "lancet_flows_summarised_total{reason=\"scan\"}"),
            "flows_summarised_full": metric(&m, "lancet_flows_summarised_total{reason=\"full\"}"),
            "flows_dropped": metric(&m, "lancet_flows_dropped_total"),
            "flow_table_bytes_max": metric(&m, "lancet_flow_table_bytes_max"),
            "connect_events": metric(&m, "lancet_events_total{type=\"connect\"}"),
        }));
        drop(a);
    }

    println!("bench-map ({rounds} round(s) each, medians; agent CPU as a share of one CPU)");
    println!("1. flow tracking, {rate} connections/s for {secs} s between two containers (achieved {:.0}/s):", median(&mut rates));
    println!(
        "   today's agent {:.1} % ({ub:.2} µs/connection)   this agent {:.1} % ({un:.2} µs/connection)   ratio {:.3} (per connection {:.3})   ({:+.1} points)",
        cb * 100.0,
        cn * 100.0,
        cn / cb,
        un / ub,
        (cn - cb) * 100.0
    );
    println!("2. dashboard open ({how}), same load plus 4 alerts/s:");
    println!(
        "   closed {:.1} % ({uc:.2} µs/connection)   open {:.1} % ({uo:.2} µs/connection)   ratio {:.3} (per connection {:.3})   ({:+.1} points)",
        cc * 100.0,
        co * 100.0,
        co / cc,
        uo / uc,
        (co - cc) * 100.0
    );
    println!("3. 100 000 distinct flows (a scan of two containers' ports):");
    for m in &mem {
        println!(
            "   {:<5} RSS {:.1} -> {:.1} MiB (peak {:.1}); flows tracked {}, summarised {}+{}, dropped {}, table bound {:.1} MiB",
            m["agent"].as_str().unwrap_or(""),
            m["rss_before_kib"].as_f64().unwrap_or(0.0) / 1024.0,
            m["rss_after_kib"].as_f64().unwrap_or(0.0) / 1024.0,
            m["peak_kib"].as_f64().unwrap_or(0.0) / 1024.0,
            m["flows_tracked"],
            m["flows_summarised_scan"],
            m["flows_summarised_full"],
            m["flows_dropped"],
            m["flow_table_bytes_max"].as_f64().unwrap_or(0.0) / 1048576.0,
        );
    }
    let report = serde_json::json!({
        "rounds": rounds, "rate": rate, "seconds": secs,
        "flow_tracking": {"base_cpu": cb, "new_cpu": cn, "ratio": cn / cb, "base_us_per_conn": ub, "new_us_per_conn": un,
            "base_rounds": base_runs.iter().map(|c| [c.cpu, c.rate, c.us_per_conn]).collect::<Vec<_>>(),
            "new_rounds": new_runs.iter().map(|c| [c.cpu, c.rate, c.us_per_conn]).collect::<Vec<_>>()},
        "dashboard": {"how": how, "closed_cpu": cc, "open_cpu": co, "ratio": co / cc, "closed_us_per_conn": uc, "open_us_per_conn": uo,
            "closed_rounds": closed_runs.iter().map(|c| [c.cpu, c.rate, c.us_per_conn]).collect::<Vec<_>>(),
            "open_rounds": open_runs.iter().map(|c| [c.cpu, c.rate, c.us_per_conn]).collect::<Vec<_>>()},
        "memory": mem,
    });
    let out = target.join("bench-map.json");
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("(written to {})", out.display());
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
