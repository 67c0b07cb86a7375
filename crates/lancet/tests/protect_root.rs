//! Protect mode end to end, as root, with real podman containers: a busybox
//! httpd workload is learned, promoted to protect, and then each refusal
//! takes the one operation away while the server keeps answering; the
//! response ladder's kill, isolate and freeze take effect and `lancet
//! release` restores service; an agent killed with SIGKILL under load fails
//! no request, its pinned network rules hold, and its successor resumes.

mod common;

use common::*;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One protecting agent at a time: an agent guards every container of a
/// workload it protects, so two in parallel would guard each other's
/// containers (all tests use one image).
static ONE_AGENT: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Setup {
    _dir: tempfile::TempDir,
    alerts: PathBuf,
    policies: PathBuf,
    srv: Container,
    _peer: Container,
    cli: Container,
    srv_ip: String,
    peer_ip: String,
    hooks: PathBuf,
    // Dropped last: containers first, then the network.
    _net: Network,
}

/// Three containers of one image (one workload): a server, a peer server
/// (8080 learned, 9090 not) and a client. The agent learns them, then the
/// workload is promoted to protect.
fn setup(tag: &str) -> (Setup, Agent) {
    setup_with(tag, false)
}

/// [`setup`], with the agent in a container as the DaemonSet runs it when
/// `in_container`.
fn setup_with(tag: &str, in_container: bool) -> (Setup, Agent) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, policies, alerts) = agent_dirs(dir.path());
    let hooks = dir.path().join("hooks.d");
    std::fs::create_dir_all(&hooks).unwrap();
    let net = Network::create(&unique(&format!("lancet-p{tag}-net")));
    let srv =
        Container::start(&unique(&format!("lancet-p{tag}-srv")), &["--network", &net.0], &["httpd", "-f", "-p", "8080", "-h", "/www"]);
    let peer =
        Container::start(&unique(&format!("lancet-p{tag}-peer")), &["--network", &net.0], &["httpd", "-f", "-p", "8080", "-h", "/www"]);
    let cli = Container::start(&unique(&format!("lancet-p{tag}-cli")), &["--network", &net.0], &["sleep", "600"]);
    assert!(peer.exec(&["httpd", "-p", "9090", "-h", "/www"]).status.success());
    let (srv_ip, peer_ip) = (srv.ip(), peer.ip());
    // Every attempt below is run through `sh -c`: the shell is approved
    // whatever code it is handed, so what is tested is what lies under it
    // (volume_drift_root tests the shell judged with its code).
    let config = "interpreterCode: any\n";
    let agent = if in_container {
        Agent::start_in_container(dir.path(), &state, &policies, &alerts, config, &[])
    } else {
        Agent::start_with_config(&state, &policies, &alerts, config, &[])
    };
    let out = agent.cli(&["hook", "install", "--dir", hooks.to_str().unwrap()]);
    assert!(out.contains("lancet.json"), "{out}");
    let s = Setup { _dir: dir, alerts, policies, srv, _peer: peer, cli, srv_ip, peer_ip, hooks, _net: net };

    // Learn what the workload normally does, including everything the test
    // later does on known terms.
    for _ in 0..3 {
        s.fetch().expect("request while learning");
    }
    for cmd in [
        vec!["wget", "-q", "-O", "/dev/null", &format!("http://{}:8080/index.html", s.peer_ip)],
        vec!["/bin/busybox", "true"],
        vec!["sh", "-c", "true"],
        vec!["sleep", "0"],
        vec!["cat", "/www/index.html"],
        vec!["timeout", "1", "true"],
        // Scratch files in /tmp: writable by design, in any mode.
        vec!["sh", "-c", "echo x > /tmp/learned && rm /tmp/learned"],
    ] {
        let o = s.srv.exec(&cmd);
        assert!(o.status.success(), "{cmd:?} while learning: {}", out_text(&o));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let out = agent.cli(&["profile", "promote", &s.srv.name, "--to", "protect"]);
    assert!(out.contains("protect"), "{out}");
    for id in [&s.srv.id, &s.cli.id, &s._peer.id] {
        agent.wait_guarded(id, Duration::from_secs(10));
    }
    (s, agent)
}

impl Setup {
    /// The server connects to its peer on `port`: Ok, or what it printed.
    fn connect_peer(&self, port: u16) -> Result<(), String> {
        let o = self.srv.exec(&["timeout", "3", "wget", "-q", "-O", "/dev/null", &format!("http://{}:{port}/index.html", self.peer_ip)]);
        if o.status.success() {
            Ok(())
        } else {
            Err(out_text(&o))
        }
    }

    /// The server's connection to the peer's unlearned port 9090 is refused
    /// by the kernel (not merely failed).
    fn unlisted_port_refused(&self) -> bool {
        self.connect_peer(9090).is_err_and(|e| e.contains("not permitted"))
    }

    /// One request from the client to the server, with a deadline.
    fn fetch(&self) -> Result<(), String> {
        let url = format!("http://{}:8080/index.html", self.srv_ip);
        let o = self.cli.exec(&["timeout", "3", "wget", "-q", "-O", "/dev/null", &url]);
        if o.status.success() {
            Ok(())
        } else {
            Err(out_text(&o))
        }
    }
}

fn alerts_for<'a>(v: &'a [serde_json::Value], name: &str) -> Vec<&'a serde_json::Value> {
    v.iter().filter(|a| a["output_fields"]["container.name"] == name).collect()
}

#[test]
fn protect_refuses_the_one_operation_and_the_server_keeps_serving() {
    skip_unless_ready!(true);
    let _one = ONE_AGENT.lock().unwrap_or_else(|p| p.into_inner());
    let (s, agent) = setup("a");
    let (_, mut pos) = alerts_since(&s.alerts, 0);

    // Drift: a binary copied into /tmp is refused; httpd answers.
    let o = s.srv.exec(&["sh", "-c", "cp /bin/busybox /tmp/ls && /tmp/ls /"]);
    assert!(!o.status.success(), "the copied binary ran: {}", out_text(&o));
    assert!(out_text(&o).contains("not permitted"), "{}", out_text(&o));
    s.fetch().expect("httpd answers after a refused exec");
    let (v, p) = wait_alerts(&s.alerts, pos, Duration::from_secs(2), Duration::from_millis(500));
    let a = alerts_for(&v, &s.srv.name);
    let drift = a.iter().find(|a| a["rule"] == "Drift: written").unwrap_or_else(|| panic!("no drift alert: {v:#?}"));
    assert_eq!(drift["output_fields"]["lancet.enforced"], true);
    assert_eq!(drift["output_fields"]["proc.exepath"], "/tmp/ls");
    pos = p;

    // Immutability: in the protected set the kernel refuses every write
    // (EROFS), mkdir and chmod included; elsewhere a write is the
    // service's life (allowed, alerted once per place if unknown); httpd
    // answers, and the agent reports it.
    for script in ["echo x > /etc/lancet-x", "mkdir /etc/new", "chmod u+s /bin/busybox", "touch /root/.profile"] {
        let o = s.srv.exec(&["sh", "-c", script]);
        assert!(!o.status.success() && out_text(&o).contains("Read-only file system"), "`{script}`: {}", out_text(&o));
    }
    for script in ["mkdir /www/new && rmdir /www/new", "touch /dev/shm/x && rm /dev/shm/x"] {
        let o = s.srv.exec(&["sh", "-c", script]);
        assert!(o.status.success(), "`{script}`: {}", out_text(&o));
    }
    s.fetch().expect("httpd answers after refused writes");
    let st: serde_json::Value = serde_json::from_str(&agent.cli(&["status"])).expect("status is JSON");
    let imm = st["backends"].as_array().and_then(|b| b.iter().find(|b| b["backend"].as_str().is_some_and(|n| n.starts_with("immutable"))));
    let mine = imm
        .and_then(|b| b["state"]["containers"].as_array())
        .and_then(|c| c.iter().find(|c| c["name"] == s.srv.name.as_str()))
        .unwrap_or_else(|| panic!("no immutability state for {}: {st:#}", s.srv.name));
    assert!(mine["state"]["readOnly"].as_array().is_some_and(|w| w.iter().any(|d| d == "/etc")), "{mine:#}");

    // Network: a port outside the profile is refused; the learned peer
    // answers.
    assert!(s.unlisted_port_refused(), "connect to 9090: {:?}", s.connect_peer(9090));
    s.connect_peer(8080).expect("the learned flow");
    let (v, p) = wait_alerts(&s.alerts, pos, Duration::from_secs(2), Duration::from_millis(300));
    let a = alerts_for(&v, &s.srv.name);
    assert!(
        a.iter().any(|a| a["rule"] == "Network operation refused" && a["output_fields"]["fd.dport"] == 9090),
        "no alert for the refused connect: {v:#?}"
    );
    pos = p;
    // The map shows both: the refused port red, with what refused it; the
    // learned one allowed by its profile entry.
    let (src, dst) = (format!("c:{}", s.srv.id), format!("c:{}", s._peer.id));
    let t0 = Instant::now();
    let (refused, allowed) = loop {
        let out = agent.cli(&["map", "--format", "json", "--container", &s.srv.name]);
        let g: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("map JSON: {e}: {out}"));
        let edge = |port: u16| {
            g["edges"]
                .as_array()
                .and_then(|es| es.iter().find(|e| e["source"] == src.as_str() && e["target"] == dst.as_str() && e["port"] == port))
                .cloned()
        };
        match (edge(9090), edge(8080)) {
            (Some(r), Some(a)) if r["verdict"] == "refused" && a["verdict"] == "allowed" => break (r, a),
            _ if t0.elapsed() > Duration::from_secs(15) => panic!("no refused and allowed edges of {}: {out}", s.srv.name),
            _ => std::thread::sleep(Duration::from_millis(300)),
        }
    };
    assert!(refused["refused"].as_u64() >= Some(1) && refused["connections"] == 0, "{refused:#}");
    assert!(refused["rule"].as_str().is_some_and(|r| r.contains("network allow-list")), "{refused:#}");
    assert!(allowed["rule"].as_str().is_some_and(|r| r.starts_with("profile outbound[")), "{allowed:#}");

    // A protected file: /etc/shadow is refused, other files read fine.
    let o = s.srv.exec(&["cat", "/etc/shadow"]);
    assert!(!o.status.success(), "/etc/shadow was read: {}", out_text(&o));
    assert!(s.srv.exec(&["cat", "/www/index.html"]).status.success());
    s.fetch().expect("httpd answers after a refused open");

    // kill-process: a rule kills only the offending process.
    std::fs::write(
        s.policies.join("kill.yaml"),
        "apiVersion: lancet.dev/v1alpha1\nkind: Policy\nmetadata: {name: kill-sleepers}\nspec:\n  rules:\n    - name: long sleep\n      match: {events: [execve], exe: [\"*/sleep\"], args: [\"*1000*\"]}\n      action: kill-process\n      severity: high\n",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let t0 = Instant::now();
    let o = s.srv.exec(&["sleep", "1000"]);
    assert!(t0.elapsed() < Duration::from_secs(10), "the sleeper was not killed");
    assert!(!o.status.success(), "sleep 1000 exited normally?");
    s.fetch().expect("httpd answers after the kill");
    let (v, p) = wait_alerts(&s.alerts, pos, Duration::from_secs(2), Duration::from_millis(300));
    let a = alerts_for(&v, &s.srv.name);
    let k = a.iter().find(|a| a["rule"] == "long sleep").unwrap_or_else(|| panic!("no kill alert: {v:#?}"));
    assert_eq!(k["output_fields"]["lancet.action"], "kill-process");
    assert_eq!(k["output_fields"]["lancet.enforced"], true);
    let _ = p;

    // Isolate, then release.
    let out = agent.cli(&["isolate", &s.srv.name, "--for", "60s"]);
    assert!(out.contains("isolated"), "{out}");
    assert!(s.fetch().is_err(), "the isolated server still answered");
    let out = agent.cli(&["release", &s.srv.name]);
    assert!(out.contains("released"), "{out}");
    s.fetch().expect("service restored after release");

    // An expiry past what lancet takes is refused with the reason: the
    // container is not frozen, and the agent answers on (it used to freeze,
    // then panic on the overflow, leaving the container frozen).
    let o = agent.cli_output(&["freeze", &s.srv.name, "--for", "10000000000000000000s"]);
    assert!(!o.status.success(), "a 3e11-year freeze was accepted");
    assert!(out_text(&o).contains("not a duration lancet takes"), "{}", out_text(&o));
    s.fetch().expect("the server is not frozen after a refused freeze");
    assert!(agent.cli(&["status"]).contains(&s.srv.id), "the agent still answers and guards");

    // A cgroup named after the container, made and removed by someone
    // else, does not end the container's protection (its end is matched
    // exactly, by its own cgroup).
    let fake = format!("/sys/fs/cgroup/unified/lancet-fake-{}", s.srv.id);
    if std::fs::create_dir(&fake).is_ok() {
        std::fs::remove_dir(&fake).expect("remove the fake cgroup");
        std::thread::sleep(Duration::from_millis(1500));
        assert!(agent.cli(&["status"]).contains(&s.srv.id), "a fake cgroup's removal lifted the guard");
        let o = s.srv.exec(&["/bin/busybox", "nc", "-h"]);
        assert!(!o.status.success(), "an applet outside the profile ran after the fake cgroup's removal");
    }

    // Freeze, then release.
    let out = agent.cli(&["freeze", &s.srv.name, "--for", "60s"]);
    assert!(out.contains("frozen"), "{out}");
    assert!(s.fetch().is_err(), "the frozen server still answered");
    let out = agent.cli(&["release", &s.srv.name]);
    assert!(out.contains("released"), "{out}");
    s.fetch().expect("service restored after thaw");

    s.hooked_start_is_guarded("pa");
    drop(agent);
}

impl Setup {
    /// Before the first instruction: a container of the protected workload
    /// started through the hook is guarded before its entrypoint runs.
    fn hooked_start_is_guarded(&self, tag: &str) {
        let name = unique(&format!("lancet-{tag}-hooked"));
        let o = Command::new("podman")
            .args(["--hooks-dir", self.hooks.to_str().unwrap(), "run", "--rm", "--name", &name, IMAGE])
            .args(["sh", "-c", "cp /bin/busybox /tmp/x; echo cp=$?; /tmp/x true; echo rc=$?"])
            .stdin(Stdio::null())
            .output()
            .expect("podman run");
        let text = out_text(&o);
        let _ = Command::new("podman").args(["rm", "-f", "-t", "0", &name]).output();
        // Refused at exec (not killed after it ran: that would be rc=137).
        assert!(text.contains("not permitted") && text.contains("rc=126"), "the entrypoint ran unguarded: {text}");
    }
}

#[test]
fn agent_killed_under_load_fails_no_request_and_rules_hold() {
    skip_unless_ready!(true);
    let _one = ONE_AGENT.lock().unwrap_or_else(|p| p.into_inner());
    let (s, mut agent) = setup("b");
    assert!(s.unlisted_port_refused());

    // Load: requests from the client and learned execs in the server, while
    // the agent is killed.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (srv_id, cli_id, url) = (s.srv.id.clone(), s.cli.id.clone(), format!("http://{}:8080/index.html", s.srv_ip));
    let load = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for args in [
                    vec!["exec", cli_id.as_str(), "timeout", "5", "wget", "-q", "-O", "/dev/null", url.as_str()],
                    vec!["exec", srv_id.as_str(), "/bin/busybox", "true"],
                ] {
                    let o = Command::new("podman").args(&args).output().expect("podman exec");
                    if o.status.success() {
                        ok += 1;
                    } else {
                        failed.push(format!("{args:?}: {}", out_text(&o)));
                    }
                }
            }
            (ok, failed)
        })
    };
    let o = s.srv.exec(&["sh", "-c", "cp /bin/busybox /tmp/again"]);
    assert!(o.status.success(), "{}", out_text(&o));
    std::thread::sleep(Duration::from_secs(2));
    agent.kill9();
    // With the agent dead, the pinned network rules still hold.
    assert!(s.unlisted_port_refused(), "network rules did not survive the agent");
    std::thread::sleep(Duration::from_secs(1));
    agent.spawn();
    // The new agent adopts its pins and the running containers at once.
    let restarted = Instant::now();
    let resumed = loop {
        let o = s.srv.exec(&["sh", "-c", "/tmp/again true"]);
        if !o.status.success() && out_text(&o).contains("not permitted") {
            break restarted.elapsed();
        }
        assert!(restarted.elapsed() < Duration::from_secs(5), "enforcement did not resume: {}", out_text(&o));
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("enforcement resumed {} ms after the restarted agent was tracing", resumed.as_millis());
    assert!(resumed < Duration::from_millis(1500), "took {resumed:?} to resume");
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.join().expect("load thread");
    if !failed.is_empty() {
        let st = agent.cli_output(&["status"]);
        panic!(
            "{} of {} operations failed: {failed:#?}\nagent status: {}",
            failed.len(),
            ok as usize + failed.len(),
            String::from_utf8_lossy(&st.stdout)
        );
    }
    assert!(ok >= 6, "too little load ran: {ok}");
    assert!(s.unlisted_port_refused(), "the restarted agent keeps the network rules");
}

/// Issue 18: the agent run as the DaemonSet runs it (in a container, with
/// the host's paths under HOST_ROOT=/host) sees, learns and protects the
/// other containers as the host binary does, and a restart of its container
/// (a rollout: SIGTERM, then a new one) keeps the pinned rules in force
/// while it is away and resumes the rest.
#[test]
fn the_agent_in_a_daemonset_shaped_container_protects_the_same_and_a_restart_keeps_the_pins() {
    skip_unless_ready!(true);
    let _one = ONE_AGENT.lock().unwrap_or_else(|p| p.into_inner());
    let (s, mut agent) = setup_with("c", true);
    let (_, pos) = alerts_since(&s.alerts, 0);

    // Drift: read through /host (the overlay's upper directory), refused.
    let o = s.srv.exec(&["sh", "-c", "cp /bin/busybox /tmp/ls && /tmp/ls /"]);
    assert!(!o.status.success() && out_text(&o).contains("not permitted"), "the copied binary ran: {}", out_text(&o));
    s.fetch().expect("httpd answers after a refused exec");
    let (v, _) = wait_alerts(&s.alerts, pos, Duration::from_secs(3), Duration::from_millis(500));
    let drift = alerts_for(&v, &s.srv.name).into_iter().find(|a| a["rule"] == "Drift: written");
    let drift = drift.unwrap_or_else(|| panic!("no drift alert: {v:#?}"));
    assert_eq!(drift["output_fields"]["lancet.enforced"], true, "{drift:#}");
    assert_eq!(drift["output_fields"]["container.name"], s.srv.name.as_str(), "{drift:#}");
    // Network: the unlisted port refused, the learned one allowed.
    assert!(s.unlisted_port_refused(), "connect to 9090: {:?}", s.connect_peer(9090));
    s.connect_peer(8080).expect("the learned flow");
    // A sensitive file refused, the others read.
    assert!(!s.srv.exec(&["cat", "/etc/shadow"]).status.success(), "/etc/shadow was read");
    assert!(s.srv.exec(&["cat", "/www/index.html"]).status.success());
    // A container started through the hook, which hands it to the agent in
    // its container, is guarded before its first instruction.
    s.hooked_start_is_guarded("pc");
    s.fetch().expect("httpd answers");

    // The agent's container is stopped as a rollout stops it. While no
    // agent runs, the pinned network rules still refuse.
    stop_child(&mut agent.child, "-TERM", Duration::from_secs(20));
    assert!(s.unlisted_port_refused(), "the pinned network rules went with the agent's container");
    s.fetch().expect("httpd answers while the agent is away");
    // Its successor adopts the pins and the running containers.
    agent.spawn();
    let restarted = Instant::now();
    loop {
        let o = s.srv.exec(&["sh", "-c", "/tmp/ls /"]);
        if !o.status.success() && out_text(&o).contains("not permitted") {
            break;
        }
        assert!(restarted.elapsed() < Duration::from_secs(10), "the restarted agent's container does not refuse drift: {}", out_text(&o));
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("drift refused again {} ms after the new agent container was tracing", restarted.elapsed().as_millis());
    assert!(s.unlisted_port_refused(), "the restarted agent keeps the network rules");
    s.connect_peer(8080).expect("the learned flow after the restart");
    s.fetch().expect("httpd answers after the restart");
}
