//! Drift off the image root and interpreters judged with their code, as
//! root, with real podman containers of the busybox and the glibc Debian
//! images. A container with a host directory bind-mounted at `/data` and a
//! tmpfs at `/scratch` runs before the agent, is learned with a shell
//! health check, and promoted to protect. Then a binary or script on either
//! mount is refused before it runs (`sh FILE` and `sh -e FILE` too), the
//! learned shell refuses code it never ran (`sh -c id`, a program on
//! stdin) while the learned health check still runs, the service keeps
//! serving, and each refusal raises an alert naming the file or command.
//! The same holds for a container started after the agent (through the OCI
//! hook) and after `podman restart`.

mod common;

use common::*;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One protecting agent at a time (they would guard each other's
/// containers of the same image).
static ONE_AGENT: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Case {
    key: &'static str,
    image: &'static str,
    cmd: &'static [&'static str],
    port: u16,
    health: &'static str,
}

const BUSYBOX: Case = Case {
    key: "busybox",
    image: "localhost/lancet-busybox:test",
    cmd: &["httpd", "-f", "-p", "80", "-h", "/www"],
    port: 80,
    health: "wget -q -O - http://127.0.0.1:80/ >/dev/null",
};

const DEBIAN: Case =
    Case { key: "debian", image: "localhost/lancet-debian:test", cmd: &[], port: 80, health: "curl -fsS http://127.0.0.1/ >/dev/null" };

fn serves(c: &Container, port: u16) {
    let ip = c.ip();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match http_get(&ip, port) {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => panic!("{} stopped serving: {e}", c.name),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Starts a container of `case` with `data` at `/data` and an exec-able
/// tmpfs at `/scratch`.
fn start(case: &Case, hooks: &Path, data: &Path) -> Container {
    let name = unique(&format!("lancet-v-{}", case.key));
    let vol = format!("{}:/data", data.display());
    let mut args = vec!["run", "-d", "--name", &name, "-v", &vol, "--tmpfs", "/scratch:rw,exec,mode=1777", case.image];
    args.extend_from_slice(case.cmd);
    let o = podman_h(hooks, &args);
    assert!(o.status.success(), "podman run {}: {}", case.image, out_text(&o));
    Container { id: String::from_utf8_lossy(&o.stdout).trim().to_string(), name }
}

/// Puts a binary and a script on the container's `/data` (the host
/// directory) and `/scratch` (through its root), as an attacker who can
/// write there would.
fn plant(c: &Container, data: &Path) {
    std::fs::copy("/bin/busybox", data.join("busybox")).expect("copy busybox to the volume");
    std::fs::write(data.join("s.sh"), "echo PAYLOAD\n").expect("script");
    let scratch = std::path::PathBuf::from(format!("/proc/{}/root/scratch", c.pid()));
    std::fs::copy("/bin/busybox", scratch.join("busybox")).expect("copy busybox to the tmpfs");
    std::fs::write(scratch.join("s.sh"), "echo PAYLOAD\n").expect("script");
}

/// `podman exec` with `input` on its standard input (not a terminal).
fn exec_stdin(c: &Container, cmd: &[&str], input: &str) -> std::process::Output {
    let mut child = Command::new("podman")
        .args(["exec", "-i", &c.id])
        .args(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("podman exec -i");
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
    child.wait_with_output().expect("podman exec -i")
}

/// Every attempt is refused before its payload, the learned check runs,
/// the service serves. Returns the attempts' descriptions.
fn attack(case: &Case, c: &Container) {
    for (what, cmd) in [
        ("binary on the volume", vec!["/data/busybox", "echo", "PAYLOAD"]),
        ("binary on the tmpfs", vec!["/scratch/busybox", "echo", "PAYLOAD"]),
        ("script on the volume handed to sh", vec!["sh", "/data/s.sh"]),
        ("script on the volume handed to sh -e", vec!["sh", "-e", "/data/s.sh"]),
        ("script on the tmpfs handed to sh", vec!["sh", "/scratch/s.sh"]),
        ("code the shell never ran", vec!["sh", "-c", "echo PAYLOAD"]),
        ("sh -c id", vec!["sh", "-c", "id"]),
    ] {
        let o = c.exec(&cmd);
        let text = out_text(&o);
        assert!(!o.status.success() && !text.contains("PAYLOAD") && !text.contains("uid="), "{what} ran on {}: {text}", case.key);
    }
    let o = exec_stdin(c, &["sh"], "echo PAYLOAD\n");
    assert!(!o.status.success() && !out_text(&o).contains("PAYLOAD"), "a program on stdin ran on {}: {}", case.key, out_text(&o));
    let o = c.exec(&["sh", "-c", case.health]);
    assert!(o.status.success(), "the learned health check was refused on {}: {}", case.key, out_text(&o));
    serves(c, case.port);
}

fn alerts_of(alerts: &Path, from: u64, name: &str) -> Vec<serde_json::Value> {
    let (v, _) = wait_alerts(alerts, from, Duration::from_secs(3), Duration::from_millis(800));
    v.into_iter().filter(|a| a["output_fields"]["container.name"] == name).collect()
}

fn volume_drift_is_refused_and_shells_run_only_learned_code(case: &Case) {
    skip_unless_ready!(true);
    if !Command::new("podman").args(["image", "exists", case.image]).status().map(|s| s.success()).unwrap_or(false) {
        lancet_testkit::skip(&format!("test image {} missing (scripts/setup.sh builds it)", case.image));
        return;
    }
    let _one = ONE_AGENT.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, policies, alerts) = agent_dirs(dir.path());
    let hooks = dir.path().join("hooks.d");
    std::fs::create_dir_all(&hooks).unwrap();
    let (data, data2) = (dir.path().join("data"), dir.path().join("data2"));
    for d in [&data, &data2] {
        std::fs::create_dir_all(d).unwrap();
    }
    // Running before the agent.
    let c = start(case, &hooks, &data);
    serves(&c, case.port);
    let agent = Agent::start(&state, &policies, &alerts, &[]);
    let out = agent.cli(&["hook", "install", "--dir", hooks.to_str().unwrap()]);
    assert!(out.contains("lancet.json"), "{out}");
    for _ in 0..3 {
        let o = c.exec(&["sh", "-c", case.health]);
        assert!(o.status.success(), "health check while learning: {}", out_text(&o));
        serves(&c, case.port);
    }
    std::thread::sleep(Duration::from_millis(1500));
    let profile = agent.cli(&["profile", "show", &c.name]);
    assert!(profile.contains("code:"), "the health check's code is learned:\n{profile}");
    let out = agent.cli(&["profile", "promote", &c.name, "--to", "protect"]);
    assert!(out.contains("protect"), "{out}");
    agent.wait_guarded(&c.id, Duration::from_secs(15));
    plant(&c, &data);
    let (_, pos) = alerts_since(&alerts, 0);

    attack(case, &c);
    let mine = alerts_of(&alerts, pos, &c.name);
    let has = |rule: &str, what: &str| {
        mine.iter().any(|a| a["rule"] == rule && a["output"].as_str().is_some_and(|o| o.contains(what)))
            && mine.iter().all(|a| a["output_fields"]["lancet.enforced"] == true || a["rule"] != rule)
    };
    for (rule, what) in [
        ("Drift: volume", "/data/busybox"),
        ("Drift: tmpfs", "/scratch/busybox"),
        ("Drift: interpreter", "/data/s.sh"),
        ("Drift: interpreter", "/scratch/s.sh"),
        ("profile deviation: new_code", "\"id\""),
        ("profile deviation: new_code", "\"echo PAYLOAD\""),
        ("profile deviation: new_code", "<stdin>"),
    ] {
        assert!(has(rule, what), "no enforced {rule:?} alert naming {what} on {}:\n{mine:#?}", case.key);
    }
    // The host's own execs from the volume's directory are not the
    // container's business.
    let o = Command::new(data.join("busybox")).args(["echo", "host"]).output().expect("host exec");
    assert!(o.status.success() && out_text(&o).contains("host"), "the host's exec from the bind-mounted directory: {}", out_text(&o));

    // Started after the agent, through the OCI hook.
    let c2 = start(case, &hooks, &data2);
    agent.wait_guarded(&c2.id, Duration::from_secs(15));
    serves(&c2, case.port);
    plant(&c2, &data2);
    attack(case, &c2);

    // A restart: a new root and new mounts, marked again.
    let o = podman_h(&hooks, &["restart", "-t", "2", &c.id]);
    assert!(o.status.success(), "podman restart: {}", out_text(&o));
    std::thread::sleep(Duration::from_millis(500));
    agent.wait_guarded(&c.id, Duration::from_secs(15));
    serves(&c, case.port);
    plant(&c, &data);
    attack(case, &c);
    drop(c2);
    drop(c);
    drop(agent);
}

#[test]
fn busybox_volume_drift_is_refused_and_shells_run_only_learned_code() {
    volume_drift_is_refused_and_shells_run_only_learned_code(&BUSYBOX);
}

#[test]
fn debian_volume_drift_is_refused_and_shells_run_only_learned_code() {
    volume_drift_is_refused_and_shells_run_only_learned_code(&DEBIAN);
}
