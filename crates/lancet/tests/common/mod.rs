//! Helpers for root integration tests: real podman and runc containers,
//! a running `lancet` agent, and guards that clean up even when a test fails.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const IMAGE: &str = lancet_testkit::podman::BUSYBOX_IMAGE;

/// Why a root test cannot run here, or None when it can.
pub fn skip_reason(need_podman: bool) -> Option<String> {
    if !lancet_is_root() {
        return Some("not root: BPF and fanotify need CAP_SYS_ADMIN".into());
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some("kernel has no BTF (/sys/kernel/btf/vmlinux)".into());
    }
    if need_podman {
        if Command::new("podman").arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
            return Some("podman is not installed (scripts/setup.sh installs it)".into());
        }
        if !Command::new("podman").args(["image", "exists", IMAGE]).status().map(|s| s.success()).unwrap_or(false) {
            return Some(format!("test image {IMAGE} missing (scripts/setup.sh builds it)"));
        }
    }
    None
}

fn lancet_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

#[macro_export]
macro_rules! skip_unless_ready {
    ($podman:expr) => {
        if let Some(why) = common::skip_reason($podman) {
            lancet_testkit::skip(&why);
            return;
        }
    };
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// An agent's state and policy directories and its (empty) alerts file,
/// made under `dir`: (state, policies, alerts).
pub fn agent_dirs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (state, policies, alerts) = (dir.join("state"), dir.join("policies"), dir.join("alerts.jsonl"));
    for d in [&state, &policies] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(&alerts, "").unwrap();
    (state, policies, alerts)
}

// Each test binary uses a part of what is shared.
#[allow(unused_imports)]
pub use lancet_testkit::podman::{podman, unique, Container, Network};

/// A running `lancet trace --format json`; its stdout lines arrive on a
/// channel. Stopped with SIGINT, by pid, on drop.
pub struct Trace {
    child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<serde_json::Value>,
}

impl Trace {
    pub fn start(args: &[&str]) -> Trace {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lancet"))
            .args(["trace", "--format", "json"])
            .args(args)
            .env("LANCET_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start lancet trace");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[lancet] {line}");
                if line.contains("lancet is tracing") {
                    let _ = ready_tx.send(());
                }
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(60)).expect("lancet trace did not report ready within 60 s");
        Trace { child, lines: rx, seen: Vec::new() }
    }

    /// Waits until an event matching `pred` arrives (or `timeout`), keeping
    /// everything seen for later assertions.
    pub fn wait_for(&mut self, timeout: Duration, what: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let v: serde_json::Value =
                        serde_json::from_str(&line).unwrap_or_else(|e| panic!("trace printed non-JSON {line:?}: {e}"));
                    let hit = pred(&v);
                    self.seen.push(v.clone());
                    if hit {
                        return v;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no {what} event within {timeout:?}; saw {} events:\n{}",
            self.seen.len(),
            self.seen.iter().rev().take(40).map(|v| v["output"].to_string()).collect::<Vec<_>>().join("\n")
        );
    }
}

/// Asks a lancet we started to stop (by its pid, with `signal`), and kills
/// it if it has not exited within `grace`.
pub fn stop_child(child: &mut Child, signal: &str, grace: Duration) {
    let _ = Command::new("kill").args([signal, &child.id().to_string()]).output();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Trace {
    fn drop(&mut self) {
        stop_child(&mut self.child, "-INT", Duration::from_secs(5));
    }
}

pub fn field<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    &v["output_fields"][name]
}

pub fn str_field<'a>(v: &'a serde_json::Value, name: &str) -> &'a str {
    field(v, name).as_str().unwrap_or("")
}

/// A runc bundle with a busybox rootfs, in a temp dir; the container (by
/// id) and its cgroup are removed on drop.
pub struct RuncContainer {
    pub id: String,
    pub dir: tempfile::TempDir,
    pub cgroup: String,
}

impl RuncContainer {
    pub fn create(id: &str, script: &str) -> RuncContainer {
        let dir = tempfile::tempdir().expect("tempdir");
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
            std::fs::create_dir_all(rootfs.join(d)).expect("mkdir");
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("copy busybox");
        for a in ["sh", "id", "cat", "sleep", "echo"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a)).expect("symlink");
        }
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
        std::fs::write(rootfs.join("etc/shadow"), "root:*:19000:0:99999:7:::\n").expect("shadow");
        run(Command::new("runc").arg("spec").current_dir(dir.path()));
        let spec_path = dir.path().join("config.json");
        let mut spec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&spec_path).expect("spec")).expect("json");
        spec["process"]["terminal"] = false.into();
        spec["process"]["args"] = serde_json::json!(["/bin/sh", "-c", script]);
        spec["root"]["readonly"] = false.into();
        let cgroup = format!("/lancet-test/{id}");
        spec["linux"]["cgroupsPath"] = cgroup.clone().into();
        std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec).expect("ser")).expect("write spec");
        RuncContainer { id: id.to_string(), dir, cgroup }
    }

    /// Starts the container detached (`runc run -d`).
    pub fn start(&self) {
        let out = Command::new("runc")
            .args(["run", "-d", &self.id])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("runc run");
        assert!(out.status.success(), "runc run failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn bundle(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for RuncContainer {
    fn drop(&mut self) {
        let _ = Command::new("runc").args(["delete", "-f", &self.id]).output();
        // The container's cgroup, then its parent (shared by the tests, so
        // removed only once empty).
        for cg in [self.cgroup.as_str(), "/lancet-test"] {
            for root in ["unified", "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "systemd", ""] {
                let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/{root}{cg}"));
            }
        }
    }
}

/// A running `lancet run` with its own state, control socket, API port and
/// BPF pin directory; stopped by pid (SIGTERM) and its pins removed on drop.
/// `cli` talks to it over its control socket (as root).
pub struct Agent {
    /// `lancet run` itself, or, for an agent in a container, the attached
    /// `podman run` (which passes SIGTERM on to it).
    pub child: Child,
    /// The agent's container, when it runs as the DaemonSet runs it.
    pub container: Option<AgentContainer>,
    /// The TCP API (read-only without the token in `<state>/api.token`).
    pub api: String,
    /// The control socket: `<state>/../run/lancet.sock`.
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
    args: Vec<String>,
    state: PathBuf,
    policies: PathBuf,
    alerts: PathBuf,
    /// The agent's configuration file's text (empty by default).
    config: String,
}

impl Agent {
    /// [`Agent::start`] with a configuration file of this text.
    pub fn start_with_config(state: &Path, policies: &Path, alerts: &Path, config: &str, extra: &[&str]) -> Agent {
        Agent::start_inner(state, policies, alerts, config, extra, None)
    }

    /// Starts `lancet run --mode learn` (long learning periods) plus `extra`
    /// and waits until it traces.
    pub fn start(state: &Path, policies: &Path, alerts: &Path, extra: &[&str]) -> Agent {
        Agent::start_inner(state, policies, alerts, "", extra, None)
    }

    /// [`Agent::start_with_config`], but the test's binary runs in an image
    /// (`deploy/container/build.sh`) run the way the DaemonSet runs it:
    /// privileged, the host's PID namespace and network, `/sys/fs/bpf`
    /// shared, `/sys/fs/cgroup`, `/proc` at `/host/proc`, the host's `/run`
    /// and `/var/lib` read-only under `/host` (`HOST_ROOT=/host`), a
    /// read-only root and `/tmp` of its own. The test's directory `dir`
    /// (state, policies, alerts, control socket) is mounted at its own path.
    pub fn start_in_container(dir: &Path, state: &Path, policies: &Path, alerts: &Path, config: &str, extra: &[&str]) -> Agent {
        let c = AgentContainer { name: unique("lancet-agent"), image: AgentImage::build(), dir: dir.to_path_buf() };
        Agent::start_inner(state, policies, alerts, config, extra, Some(c))
    }

    fn start_inner(state: &Path, policies: &Path, alerts: &Path, config: &str, extra: &[&str], container: Option<AgentContainer>) -> Agent {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let mut a = Agent {
            child: Command::new("true").spawn().expect("placeholder child"),
            container,
            api: format!("127.0.0.1:{port}"),
            socket: state.parent().unwrap_or(state).join("run").join("lancet.sock"),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/{}", unique("lancet-test"))),
            args: extra.iter().map(|s| s.to_string()).collect(),
            state: state.to_path_buf(),
            policies: policies.to_path_buf(),
            alerts: alerts.to_path_buf(),
            config: config.to_string(),
        };
        let _ = a.child.wait();
        a.spawn();
        a
    }

    /// (Re)starts the agent process with the same settings and pins.
    pub fn spawn(&mut self) {
        // A config file of our own (empty unless given), so the host's
        // /etc/lancet/lancet.yaml plays no part.
        std::fs::write(self.state.join("none.yaml"), &self.config).expect("write config");
        let mut cmd = match &self.container {
            None => Command::new(env!("CARGO_BIN_EXE_lancet")),
            Some(c) => c.run_command(),
        };
        let mut child = cmd
            .args(["run", "--mode", "learn", "--min-learning", "1h", "--quiet-period", "1h", "--listen", &self.api])
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--policy-dir")
            .arg(&self.policies)
            .arg("--alerts")
            .arg(&self.alerts)
            .arg("--config")
            .arg(self.state.join("none.yaml"))
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--socket")
            .arg(&self.socket)
            .args(&self.args)
            .env("LANCET_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start lancet run");
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[lancet] {line}");
                if line.contains("lancet is tracing") {
                    let _ = tx.send(());
                }
            }
        });
        self.child = child;
        rx.recv_timeout(Duration::from_secs(60)).expect("lancet run did not start within 60 s");
    }

    /// Kills the agent with SIGKILL (an agent fault), leaving its pins.
    pub fn kill9(&mut self) {
        if let Some(c) = &self.container {
            // SIGKILL is not passed on by `podman run`: the container's.
            let _ = Command::new("podman").args(["kill", "-s", "KILL", &c.name]).output();
        }
        stop_child(&mut self.child, "-KILL", Duration::from_secs(5));
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.cli_output(args);
        assert!(out.status.success(), "lancet {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the agent reports the container (by id) under
    /// protection.
    pub fn wait_guarded(&self, id: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.cli(&["status"]);
            if st.contains(id) {
                return;
            }
            assert!(Instant::now() < deadline, "container {id} not protected within {timeout:?}: {st}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits up to 15 s until the map of container `name` has, for each
    /// (port, verdict), an edge from container id `src` to `dst` on that
    /// port with that verdict.
    pub fn wait_edge_verdicts(&self, name: &str, src: &str, dst: &str, want: &[(u16, &str)]) {
        let (src, dst) = (format!("c:{src}"), format!("c:{dst}"));
        let t0 = Instant::now();
        loop {
            let out = self.cli(&["map", "--format", "json", "--container", name]);
            let g: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("map JSON: {e}: {out}"));
            let verdict = |port: u16| {
                g["edges"].as_array().and_then(|es| {
                    es.iter()
                        .find(|e| e["source"] == src.as_str() && e["target"] == dst.as_str() && e["port"] == port)
                        .map(|e| e["verdict"].clone())
                })
            };
            if want.iter().all(|(port, v)| verdict(*port) == Some((*v).into())) {
                return;
            }
            assert!(t0.elapsed() < Duration::from_secs(15), "no edges {want:?} of {name}: {out}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    pub fn cli_output(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_lancet")).args(args).arg("--api").arg(&self.socket).output().expect("lancet cli")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        stop_child(&mut self.child, "-TERM", Duration::from_secs(10));
        if let Some(c) = &self.container {
            let _ = Command::new("podman").args(["rm", "-f", "-t", "0", &c.name]).output();
        }
        // Unpinned links detach once no process holds them.
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// The agent's image, built from the test's own binary by
/// `deploy/container/build.sh` (nothing pulled); removed on drop.
pub struct AgentImage(pub String);

impl AgentImage {
    fn build() -> AgentImage {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/container/build.sh");
        let tag = unique("localhost/lancet-test");
        let out = Command::new("bash").arg(&script).arg(env!("CARGO_BIN_EXE_lancet")).arg(&tag).output().expect("run build.sh");
        assert!(out.status.success(), "deploy/container/build.sh: {}", out_text(&out));
        AgentImage(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for AgentImage {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rmi", "-f", &self.0]).output();
    }
}

/// An agent container: its name (removed on drop with the agent), image and
/// the test directory it mounts.
pub struct AgentContainer {
    pub name: String,
    pub image: AgentImage,
    dir: PathBuf,
}

impl AgentContainer {
    /// `podman run` as deploy/kubernetes/daemonset.yaml runs the agent;
    /// the agent's own arguments follow.
    fn run_command(&self) -> Command {
        let dir = self.dir.display().to_string();
        let mut cmd = Command::new("podman");
        cmd.args(["run", "--rm", "--name", &self.name, "--privileged", "--pid=host", "--network=host", "--read-only"])
            .args(["--tmpfs", "/tmp", "-e", "HOST_ROOT=/host", "-e", "LANCET_LOG=info"])
            .args(["-v", "/sys/fs/bpf:/sys/fs/bpf:rshared", "-v", "/sys/fs/cgroup:/sys/fs/cgroup"])
            .args(["-v", "/proc:/host/proc:ro", "-v", "/run:/host/run:ro,rslave", "-v", "/var/lib:/host/var/lib:ro,rslave"])
            .args(["-v", &format!("{dir}:{dir}"), &self.image.0]);
        cmd
    }
}

/// Alerts appended to the file since `from` (a byte offset), parsed.
pub fn alerts_since(path: &Path, from: u64) -> (Vec<serde_json::Value>, u64) {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).expect("alerts file");
    f.seek(SeekFrom::Start(from)).expect("seek");
    let mut text = String::new();
    f.read_to_string(&mut text).expect("read");
    // Only whole lines: the agent may be writing the last one.
    let end = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let v = text[..end].lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).expect("alert JSON")).collect();
    (v, from + end as u64)
}

/// Waits up to `within` for alerts after `from`, then `settle` for more.
pub fn wait_alerts(path: &Path, from: u64, within: Duration, settle: Duration) -> (Vec<serde_json::Value>, u64) {
    let deadline = Instant::now() + within;
    loop {
        let (v, _) = alerts_since(path, from);
        if !v.is_empty() || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(settle);
    alerts_since(path, from)
}

/// Waits up to `within` for an alert after `from` that `pred` accepts (not
/// merely the first alert: another may come first); all alerts seen so far.
pub fn wait_alert_matching(
    path: &Path,
    from: u64,
    within: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> (Vec<serde_json::Value>, u64) {
    let deadline = Instant::now() + within;
    loop {
        let (v, end) = alerts_since(path, from);
        if v.iter().any(&pred) || Instant::now() >= deadline {
            return (v, end);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A command's stdout and stderr together.
pub fn out_text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The podman command with a test's own hooks directory (podman reads the
/// lancet hook from there at every start, restarts included).
pub fn podman_h(hooks: &Path, args: &[&str]) -> std::process::Output {
    Command::new("podman").arg("--hooks-dir").arg(hooks).args(args).output().expect("podman")
}

/// One HTTP GET from the host to a container, by hand (no client needed):
/// Ok on a 200.
pub fn http_get(ip: &str, port: u16) -> Result<(), String> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().map_err(|e| format!("{e}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok();
    s.write_all(format!("GET / HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes()).map_err(|e| format!("send: {e}"))?;
    let mut r = String::new();
    s.read_to_string(&mut r).map_err(|e| format!("read: {e}"))?;
    if r.starts_with("HTTP/1.") && r.contains(" 200 ") {
        Ok(())
    } else {
        Err(format!("bad answer from {addr}: {:?}", r.lines().next()))
    }
}

/// Where the runc wrapper of the tests lives: Docker's runtime
/// `lancet-test` (scripts/setup.sh's daemon.json) and `ctr run
/// --runc-binary` run it.
pub const RUNC_WRAPPER: &str = "/run/lancet-test/runc";

/// The runc wrapper (`lancet hook install-runc`) pointing at an agent's
/// control socket, at [`RUNC_WRAPPER`]; removed on drop.
pub struct RuncWrapper;

impl RuncWrapper {
    pub fn install(agent: &Agent) -> RuncWrapper {
        let out = agent.cli(&["hook", "install-runc", "--path", RUNC_WRAPPER]);
        assert!(out.contains(RUNC_WRAPPER), "{out}");
        RuncWrapper
    }
}

impl Drop for RuncWrapper {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(RUNC_WRAPPER);
    }
}

/// A container entrypoint that drops a binary at its very start and runs it
/// until it fails (at most 20 000 times), then prints `first=<its exit
/// status>`, runs it once more (`rc=<status>`), and prints `ran=<runs>
/// window=<start> <end>` from `/proc/uptime` (the host's clock, 10 ms
/// steps): how long the container ran before its workload's protection
/// reached it. (busybox copied as `/tmp/true` runs its `true` applet.)
pub const RACE_ENTRYPOINT: &str = "s=$(cut -d' ' -f1 /proc/uptime); cp /bin/busybox /tmp/true; n=0; r=0; \
     while [ $n -lt 20000 ]; do /tmp/true 2>/dev/null; r=$?; [ $r = 0 ] || break; n=$((n+1)); done; \
     e=$(cut -d' ' -f1 /proc/uptime); echo first=$r; /tmp/true; echo rc=$?; echo ran=$n window=$s $e";

/// (runs before the refusal, seconds from the first instruction to it)
/// from [`RACE_ENTRYPOINT`]'s output.
pub fn race_window(out: &str) -> Option<(u64, f64)> {
    let line = out.lines().find_map(|l| l.strip_prefix("ran="))?;
    let mut f = line.split([' ', '=']);
    let runs = f.next()?.parse().ok()?;
    let (_, start, end) = (f.next()?, f.next()?.parse::<f64>().ok()?, f.next()?.parse::<f64>().ok()?);
    Some((runs, end - start))
}

/// The start-up race of a runtime, through the runc wrapper and without it:
/// `run(extra args)` starts a container of the protected workload running
/// [`RACE_ENTRYPOINT`] and returns (its output, its id). Through the
/// wrapper (`hooked`: the runtime's arguments for it) the dropped binary is
/// refused at its first exec and the hook handed the container over; then
/// the wrapper is removed, and without it the agent guards the container
/// when it sees its cgroup appear: the binary runs until then. Measured
/// (printed under `engine`'s name), and bounded.
pub fn race_with_and_without_wrapper(
    agent: &Agent,
    wrapper: RuncWrapper,
    engine: &str,
    hooked: &[&str],
    run: impl Fn(&[&str]) -> (String, String),
) {
    let mut through = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        let (text, id) = run(hooked);
        through.push(t0.elapsed().as_millis());
        let (runs, secs) = race_window(&text).unwrap_or_else(|| panic!("no result from the hooked container: {text}"));
        assert!(
            text.contains("first=126") && runs == 0,
            "the hooked container's entrypoint ran unguarded ({runs} runs, {secs:.2} s): {text}"
        );
        if let Err(rows) = handed_over_by_hook(agent, &id, Duration::from_secs(2)) {
            panic!("container {id} was not handed over by the hook: its audit rows {rows}");
        }
    }
    drop(wrapper);
    let (mut windows, mut plain, mut killed) = (Vec::new(), Vec::new(), 0);
    for _ in 0..10 {
        let t0 = Instant::now();
        let (text, id) = run(&[]);
        plain.push(t0.elapsed().as_millis());
        assert!(handed_over_by_hook(agent, &id, Duration::ZERO).is_err(), "no hook without the wrapper");
        let (runs, secs) = race_window(&text).unwrap_or_else(|| panic!("no result from the container: {text}"));
        // Refused at an exec (126), or killed where it already ran when
        // the guard came (137); refused from then on.
        let first_stopped = text.contains("first=126") || text.contains("first=137");
        assert!(first_stopped && text.contains("rc=126"), "not refused ({runs} runs in {secs:.2} s): {text}");
        killed += usize::from(text.contains("first=137"));
        windows.push((runs, secs));
    }
    eprintln!("{engine} without the wrapper: (runs of the dropped binary, seconds from the first instruction to the refusal): {windows:?}");
    eprintln!(
        "{engine} run to exit, ms: through the wrapper {through:?}; without {plain:?}; killed where it ran: {killed} of {}",
        plain.len()
    );
    assert!(windows.iter().all(|(_, s)| *s < 3.0), "the window without the wrapper: {windows:?}");
}

/// Whether the agent's audit log has the OCI hook handing over container
/// `id` successfully (the runc wrapper's hook, not the agent's own sight of
/// the container, guarded it), waiting up to `within` for the row; Err
/// with the hook's rows otherwise.
pub fn handed_over_by_hook(agent: &Agent, id: &str, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        let out = agent.cli(&["audit", "--format", "json"]);
        let rows: Vec<serde_json::Value> = out
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|r| r["action"] == "hook" && r["target"].as_str().is_some_and(|t| t.contains(id)))
            .collect();
        if rows.iter().any(|r| r["result"].as_str().is_some_and(|s| s.starts_with("ok"))) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("{rows:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
