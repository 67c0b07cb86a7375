//! The control plane end to end, as root, with a `lancet run` in learn mode
//! and no containers of ours: changes over the control socket need root
//! (the read group may only read), changes over TCP need the bearer token,
//! the OCI hook's claims are checked, every change and refusal is in
//! `lancet audit` and the alerts file with who made it, and the agent's
//! files are private.

mod common;

use common::*;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn lancet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lancet")).args(args).output().expect("lancet")
}

/// The CLI as nobody:nogroup, no other groups.
fn as_nobody(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_lancet"))
        .args(args)
        .output()
        .expect("setpriv (util-linux)")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).mode() & 0o7777
}

#[test]
fn control_plane_needs_root_or_the_token_and_records_who() {
    skip_unless_ready!(false);
    let dir = tempfile::tempdir().expect("tempdir");
    // nobody must reach the socket's directory to be refused by the agent
    // (rather than by the file system).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (state, policies, alerts) = agent_dirs(dir.path());
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&alerts, std::fs::Permissions::from_mode(0o644)).unwrap();
    let agent = Agent::start(&state, &policies, &alerts, &["--read-group", "nogroup"]);
    let sock = agent.socket.to_str().unwrap().to_string();

    // Private files, and the socket for root and the read group.
    assert_eq!(mode(&state), 0o700, "state directory");
    for f in ["lancet.db", "lancet.db-wal", "lancet.db-shm", "api.token"] {
        assert_eq!(mode(&state.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&alerts), 0o600, "alerts file");
    let m = std::fs::symlink_metadata(&agent.socket).unwrap();
    assert!(m.file_type().is_socket());
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o660, 0, 65534), "socket: root, group nogroup");
    let run = agent.socket.parent().unwrap();
    assert_eq!((mode(run), std::fs::metadata(run).unwrap().gid()), (0o750, 65534), "socket directory");

    // A small profile to steer: the baseline of a directory.
    let img = dir.path().join("img");
    std::fs::create_dir_all(img.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", img.join("bin/busybox")).unwrap();
    let profile = dir.path().join("p.yaml");
    let o = lancet(&["scan", img.to_str().unwrap(), "--profile-out", profile.to_str().unwrap()]);
    assert!(o.status.success(), "scan: {}", text(&o));
    std::fs::set_permissions(&profile, std::fs::Permissions::from_mode(0o644)).unwrap();

    // Root over the socket: import, promote, reset.
    let out = agent.cli(&["profile", "import", profile.to_str().unwrap()]);
    let key = out.trim().strip_prefix("imported profile for ").unwrap_or_else(|| panic!("{out}")).to_string();
    let out = agent.cli(&["profile", "promote", &key, "--to", "monitor"]);
    assert!(out.contains("is now in monitor mode"), "{out}");
    let o = agent.cli_output(&["profile", "promote", "no-such-workload", "--to", "learn"]);
    assert!(!o.status.success() && text(&o).contains("no workload, container or image matches"), "{}", text(&o));

    // nobody (group nogroup, the read group): reads, but no change.
    let o = as_nobody(&["profile", "list", "--api", &sock]);
    assert!(o.status.success(), "the read group reads: {}", text(&o));
    assert!(text(&o).contains(&key), "{}", text(&o));
    let o = as_nobody(&["profile", "promote", &key, "--to", "learn", "--api", &sock]);
    assert_eq!(o.status.code(), Some(1));
    let e = text(&o);
    assert!(e.contains("permission denied") && e.contains("needs root (or group nogroup for reading)"), "{e}");
    assert!(!e.contains("HTTP") && !e.contains("status"), "no HTTP noise: {e}");
    let shown = agent.cli(&["profile", "show", &key]);
    assert!(shown.contains("mode: monitor"), "nobody changed nothing: {shown}");
    // nobody in no read group: not even reads.
    let o = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=daemon", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_lancet"))
        .args(["profile", "list", "--api", &sock])
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("permission denied"), "{}", text(&o));

    // TCP: reads for anyone; changes with the token only.
    let o = as_nobody(&["profile", "list", "--api", &agent.api]);
    assert!(o.status.success() && text(&o).contains(&key), "read over TCP: {}", text(&o));
    let promote_tcp =
        |token_file: &str| lancet(&["profile", "promote", &key, "--to", "learn", "--api", &agent.api, "--token-file", token_file]);
    let o = promote_tcp("/nonexistent/api.token");
    assert!(!o.status.success());
    assert!(text(&o).contains("needs `Authorization: Bearer <token>`"), "401 without the token: {}", text(&o));
    let wrong = dir.path().join("wrong.token");
    std::fs::write(&wrong, format!("{}\n", "0".repeat(64))).unwrap();
    let o = promote_tcp(wrong.to_str().unwrap());
    assert!(!o.status.success() && text(&o).contains("does not match"), "403 with a wrong token: {}", text(&o));
    let o = promote_tcp(state.join("api.token").to_str().unwrap());
    assert!(o.status.success() && text(&o).contains("is now in learn mode"), "with the token: {}", text(&o));
    let out = agent.cli(&["profile", "reset", &key]);
    assert!(out.contains("is learning again"), "{out}");

    // The hook: a claim that does not check out is refused, and the hook
    // still exits 0 (it never blocks a container).
    let mut hook = Command::new(env!("CARGO_BIN_EXE_lancet"))
        .args(["--api", &sock, "hook", "oci"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let claim = serde_json::json!({"id": "lancet-ctl-fake", "pid": std::process::id(), "bundle": "/tmp/planted", "rootfs": "/tmp/evil"});
    use std::io::Write;
    hook.stdin.take().unwrap().write_all(claim.to_string().as_bytes()).unwrap();
    let o = hook.wait_with_output().unwrap();
    assert!(o.status.success());
    assert!(text(&o).contains("hook refused for container \"lancet-ctl-fake\""), "{}", text(&o));

    // The audit log: every change and refusal, with who.
    std::thread::sleep(Duration::from_millis(300));
    let out = agent.cli(&["audit", "--since", "1h", "--format", "json"]);
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    let find = |action: &str, pred: &dyn Fn(&serde_json::Value) -> bool| {
        rows.iter().find(|r| r["action"] == action && pred(r)).cloned().unwrap_or_else(|| panic!("no {action} in {rows:#?}"))
    };
    let r = find("import", &|r| r["result"] == "ok");
    assert_eq!((r["uid"].as_u64(), r["channel"].as_str()), (Some(0), Some("unix")));
    assert!(r["pid"].as_u64().is_some_and(|p| p > 0));
    assert!(r["target"].as_str().unwrap().contains(&key));
    find("promote to monitor", &|r| r["uid"] == 0 && r["result"] == "ok");
    find("promote to learn", &|r| r["uid"] == 0 && r["result"].as_str().unwrap().starts_with("failed (404)"));
    find("promote", &|r| r["uid"] == 65534 && r["result"].as_str().unwrap().starts_with("refused (403)"));
    find("promote to learn", &|r| r["channel"] == "tcp" && r["uid"].is_null() && r["result"] == "ok");
    find("promote", &|r| r["channel"] == "tcp" && r["result"].as_str().unwrap().starts_with("refused (401)"));
    find("reset", &|r| r["uid"] == 0 && r["result"] == "ok");
    find("hook", &|r| {
        r["uid"] == 0 && r["target"] == "lancet-ctl-fake" && r["result"].as_str().unwrap().contains("not a child of the runtime")
    });
    // The read group may read the audit log too.
    let o = as_nobody(&["audit", "--api", &sock]);
    assert!(o.status.success() && text(&o).contains("promote to monitor"), "{}", text(&o));

    // The alerts file: one alert per change, with the uid; refusals too.
    let (v, _) = alerts_since(&alerts, 0);
    let control: Vec<_> = v.iter().filter(|a| a["rule"].as_str().unwrap_or("").starts_with("lancet control action")).collect();
    let has = |rule: &str, action: &str, uid: Option<u64>| {
        control.iter().any(|a| {
            a["rule"] == rule && a["output_fields"]["lancet.control.action"] == action && a["output_fields"]["user.uid"].as_u64() == uid
        })
    };
    assert!(has("lancet control action", "import", Some(0)), "{control:#?}");
    assert!(has("lancet control action", "promote to monitor", Some(0)), "{control:#?}");
    assert!(has("lancet control action", "promote to learn", None), "the TCP change: {control:#?}");
    assert!(has("lancet control action", "reset", Some(0)), "{control:#?}");
    assert!(has("lancet control action refused", "promote", Some(65534)), "{control:#?}");
    let a = control.iter().find(|a| a["rule"] == "lancet control action").unwrap();
    assert_eq!(a["priority"], "Notice");
    assert_eq!(a["output_fields"]["container.id"], "host");
    assert_eq!(a["output_fields"]["lancet.channel"], "unix");
    assert!(a["output_fields"]["proc.pid"].as_u64().is_some());
    assert!(!control.iter().any(|a| a["output_fields"]["lancet.control.result"].as_str().unwrap_or("").starts_with("failed")));
}

#[test]
fn a_symlinked_alerts_file_or_a_foreign_socket_path_stops_the_agent_at_start() {
    skip_unless_ready!(false);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::write(dir.path().join("target"), "").unwrap();
    std::os::unix::fs::symlink(dir.path().join("target"), dir.path().join("alerts.jsonl")).unwrap();
    std::fs::write(dir.path().join("none.yaml"), "").unwrap();
    let run = |alerts: &Path, socket: &Path| {
        Command::new(env!("CARGO_BIN_EXE_lancet"))
            .args(["run", "--duration", "1", "--state-dir"])
            .arg(&state)
            .arg("--policy-dir")
            .arg(dir.path())
            .arg("--config")
            .arg(dir.path().join("none.yaml"))
            .arg("--alerts")
            .arg(alerts)
            .arg("--socket")
            .arg(socket)
            .output()
            .unwrap()
    };
    let sock = dir.path().join("run").join("lancet.sock");
    let o = run(&dir.path().join("alerts.jsonl"), &sock);
    assert!(!o.status.success());
    assert!(text(&o).contains("is a symbolic link"), "{}", text(&o));
    // A regular file where the socket goes is not removed.
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    std::fs::set_permissions(sock.parent().unwrap(), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(&sock, "mine").unwrap();
    let o = run(&dir.path().join("alerts2.jsonl"), &sock);
    assert!(!o.status.success());
    assert!(text(&o).contains("is not a socket lancet owns"), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(&sock).unwrap(), "mine");
}

/// A runc container whose bundle sits where containerd keeps its tasks'
/// state, in a namespace directory of the test's own (containerd may be
/// running: only what the test made is removed, never containerd's own),
/// with `lancet hook oci` as its createRuntime hook. Removed, with its
/// cgroups and the directories the test made, on drop.
struct HookedRunc {
    id: String,
    made: std::path::PathBuf,
}

impl Drop for HookedRunc {
    fn drop(&mut self) {
        let _ = Command::new("runc").args(["delete", "-f", &self.id]).output();
        for cg in [format!("/lancet-test/{}", self.id), "/lancet-test".to_string()] {
            for root in ["unified", "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "systemd", ""] {
                let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/{root}{cg}"));
            }
        }
        let _ = std::fs::remove_dir_all(&self.made);
    }
}

#[test]
fn the_hook_run_by_a_real_runtime_is_accepted_from_its_state() {
    skip_unless_ready!(false);
    if Command::new("runc").arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        lancet_testkit::skip("runc is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, policies, alerts) = agent_dirs(dir.path());
    let agent = Agent::start(&state, &policies, &alerts, &[]);
    let sock = agent.socket.to_str().unwrap().to_string();

    let id = unique("lancet-ctl-hook");
    let namespace = Path::new("/run/containerd/io.containerd.runtime.v2.task").join(unique("lancet-test"));
    // The highest directory on the way that does not exist yet: the test's.
    let made = namespace.ancestors().take_while(|p| !p.exists()).last().expect("a fresh namespace directory").to_path_buf();
    let c = HookedRunc { id: id.clone(), made };
    let bundle = namespace.join(&id);
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/true")).unwrap();
    run(Command::new("runc").arg("spec").current_dir(&bundle));
    let spec_path = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&spec_path).unwrap()).unwrap();
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["/bin/true"]);
    spec["linux"]["cgroupsPath"] = format!("/lancet-test/{id}").into();
    spec["hooks"] = serde_json::json!({"createRuntime": [{
        "path": env!("CARGO_BIN_EXE_lancet"),
        "args": ["lancet", "--api", &sock, "hook", "oci"],
        "timeout": 10
    }]});
    std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    let out = Command::new("runc").args(["run", &c.id]).current_dir(&bundle).stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "runc run: {}", text(&out));
    assert!(!text(&out).contains("hook refused"), "{}", text(&out));

    std::thread::sleep(Duration::from_millis(300));
    let out = agent.cli(&["audit", "--format", "json"]);
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    let hook = rows.iter().find(|r| r["action"] == "hook").unwrap_or_else(|| panic!("no hook record: {rows:#?}"));
    // The container as named, and the workload it resolved to if that
    // differs (`<id> (container:<id>)` for an image-less runc container).
    let target = hook["target"].as_str().unwrap_or_default();
    assert!(target == id || target.starts_with(&format!("{id} (")), "{hook:#?}");
    assert_eq!(hook["result"], "ok", "{hook:#?}");
    assert_eq!(hook["uid"], 0);

    // The same bundle claimed for a process the runtime did not start
    // (ours), by a hook that is no runtime's child: refused.
    let mut forged = Command::new(env!("CARGO_BIN_EXE_lancet"))
        .args(["--api", &sock, "hook", "oci"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let claim = serde_json::json!({"id": id, "pid": std::process::id(), "bundle": bundle});
    use std::io::Write;
    forged.stdin.take().unwrap().write_all(claim.to_string().as_bytes()).unwrap();
    let o = forged.wait_with_output().unwrap();
    assert!(o.status.success(), "the hook never fails a start");
    assert!(text(&o).contains("not a child of the runtime process"), "{}", text(&o));
}

#[test]
fn a_signal_from_a_non_root_sender_is_logged_with_its_uid() {
    skip_unless_ready!(false);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("none.yaml"), "").unwrap();
    let log = dir.path().join("run.err");
    let pins = format!("/sys/fs/bpf/{}", unique("lancet-test"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_lancet"))
        .args(["run", "--mode", "learn", "--duration", "60", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg("--policy-dir")
        .arg(dir.path())
        .arg("--config")
        .arg(dir.path().join("none.yaml"))
        .arg("--socket")
        .arg(dir.path().join("run").join("lancet.sock"))
        .arg("--pin-dir")
        .arg(&pins)
        .env("LANCET_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("lancet is tracing") {
        assert!(t0.elapsed() < Duration::from_secs(60), "did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Real uid nobody, effective uid root (so the kernel lets it through):
    // the signal carries si_uid 65534.
    let pid = child.id().to_string();
    let o = Command::new("setpriv").args(["--ruid=65534", "--", "kill", "-HUP", &pid]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let t0 = std::time::Instant::now();
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("signal SIGHUP from uid 65534 pid") {
        assert!(t0.elapsed() < Duration::from_secs(5), "not logged: {}", std::fs::read_to_string(&log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(50));
    }
    stop_child(&mut child, "-TERM", Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&pins);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("WARN") && text.contains("signal SIGHUP from uid 65534 pid"), "{text}");
    assert!(!text.contains("signal SIGTERM from"), "root's own signals are not warnings: {text}");
    assert!(!dir.path().join("run").join("lancet.sock").exists(), "the socket is removed at a normal stop");
}
