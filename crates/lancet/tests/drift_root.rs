//! Drift end to end, as root, with a real podman container: the image is
//! scanned (`lancet scan --baselines-dir`), the agent learns the workload,
//! and then each way of running something the image did not ship is
//! reported in monitor mode (naming the file, and the writer where it was
//! seen) and refused or killed in protect mode while httpd keeps serving.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

/// Runs `script` in the container with `sh -c` and waits for the drift
/// alert it should raise; returns it.
fn expect_drift(srv: &Container, alerts: &Path, pos: &mut u64, script: &str, rule: &str) -> serde_json::Value {
    let o = srv.exec(&["sh", "-c", script]);
    let (v, p) = wait_alerts(alerts, *pos, Duration::from_secs(3), Duration::from_millis(400));
    *pos = p;
    let mine: Vec<&serde_json::Value> = v.iter().filter(|a| a["output_fields"]["container.name"] == srv.name.as_str()).collect();
    mine.iter()
        .find(|a| a["rule"] == rule)
        .map(|a| (*a).clone())
        .unwrap_or_else(|| panic!("no {rule:?} alert for `{script}` ({}): {mine:#?}", out_text(&o)))
}

fn fetch(cli: &Container, ip: &str) {
    let o = cli.exec(&["timeout", "3", "wget", "-q", "-O", "/dev/null", &format!("http://{ip}:8080/index.html")]);
    assert!(o.status.success(), "httpd stopped answering: {} {:?}", out_text(&o), o.status);
}

#[test]
fn every_drift_path_is_reported_then_refused_and_httpd_keeps_serving() {
    skip_unless_ready!(true);
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, policies, alerts) = agent_dirs(dir.path());
    // Shift left: the image's baseline, where the agent picks it up.
    let scan = std::process::Command::new(env!("CARGO_BIN_EXE_lancet"))
        .args(["scan", IMAGE, "--format", "json", "--baselines-dir"])
        .arg(state.join("baselines"))
        .output()
        .expect("lancet scan");
    assert!(scan.status.success(), "scan: {}", out_text(&scan));

    let net = Network::create(&unique("lancet-d-net"));
    // /dev/shm and a scratch tmpfs that allow exec (podman's default
    // /dev/shm is noexec).
    let srv = Container::start(
        &unique("lancet-d-srv"),
        &["--network", &net.0, "--tmpfs", "/dev/shm:rw,exec,mode=1777", "--tmpfs", "/scratch:rw,exec,mode=1777"],
        &["httpd", "-f", "-p", "8080", "-h", "/www"],
    );
    let cli = Container::start(&unique("lancet-d-cli"), &["--network", &net.0], &["sleep", "600"]);
    let ip = srv.ip();
    // Every attempt below is run through `sh -c`: the shell is approved
    // whatever code it is handed, so what is tested is what lies under it
    // (volume_drift_root tests the shell judged with its code).
    let agent = Agent::start_with_config(&state, &policies, &alerts, "interpreterCode: any\n", &[]);
    for _ in 0..3 {
        fetch(&cli, &ip);
    }
    for cmd in [
        vec!["sh", "-c", "true"],
        vec!["timeout", "1", "true"],
        vec!["sh", "-c", "/usr/local/bin/memfd-exec /bin/busybox true; true"],
        // Files written where the workload writes: /tmp and /www stay
        // writable in protect mode, so refusing the execs below is the exec
        // backend's work, not the read-only root's.
        vec!["sh", "-c", "echo x > /tmp/learned && echo x > /www/learned && rm /tmp/learned /www/learned"],
    ] {
        assert!(srv.exec(&cmd).status.success());
    }
    std::thread::sleep(Duration::from_millis(1500));
    agent.cli(&["profile", "promote", &srv.name, "--to", "monitor"]);
    std::thread::sleep(Duration::from_millis(300));
    let (_, mut pos) = alerts_since(&alerts, 0);

    // Monitor: each drift path raises its alert, nothing is refused.
    let a = expect_drift(&srv, &alerts, &mut pos, "cp /bin/busybox /tmp/ls && /tmp/ls /", "Drift: written");
    assert_eq!(a["output_fields"]["proc.exepath"], "/tmp/ls");
    assert_eq!(a["output_fields"]["lancet.would_block"], true);
    assert!(a["output"].as_str().unwrap().contains("by "), "the writer is named: {a}");
    expect_drift(
        &srv,
        &alerts,
        &mut pos,
        "printf '#!/bin/sh\\necho hi\\n' > /dev/shm/x.sh && chmod +x /dev/shm/x.sh && /dev/shm/x.sh",
        "Drift: tmpfs",
    );
    expect_drift(&srv, &alerts, &mut pos, "cp /bin/busybox /scratch/bb && /scratch/bb true", "Drift: tmpfs");
    expect_drift(&srv, &alerts, &mut pos, "/usr/local/bin/memfd-exec /bin/busybox echo memfd", "Drift: memfd");
    let a = expect_drift(&srv, &alerts, &mut pos, "cp /bin/busybox /usr/bin/true-dyn && /usr/bin/true-dyn", "Drift: modified");
    assert_eq!(a["output_fields"]["proc.exepath"], "/usr/bin/true-dyn");
    expect_drift(
        &srv,
        &alerts,
        &mut pos,
        "cp /lib64/ld-linux-x86-64.so.2 /tmp/ld.so; cp /bin/busybox /tmp/t; /lib64/ld-linux-x86-64.so.2 /tmp/t true; true",
        "Drift: loader",
    );
    expect_drift(&srv, &alerts, &mut pos, "printf 'echo hi\\n' > /tmp/s.sh && /bin/sh /tmp/s.sh", "Drift: interpreter");
    expect_drift(&srv, &alerts, &mut pos, "echo 'echo hi' > /www/run && chmod +x /www/run", "Drift: made_executable");
    fetch(&cli, &ip);

    // Protect: the same paths are refused (or the process killed where an
    // exec cannot be refused), and httpd keeps answering.
    agent.cli(&["profile", "promote", &srv.name, "--to", "protect"]);
    std::thread::sleep(Duration::from_millis(1500));
    for (script, what) in [
        ("cp /bin/busybox /tmp/ls2 && /tmp/ls2 /; echo rc=$?", "copied binary"),
        ("cp /bin/busybox /usr/bin/true-dyn; /usr/bin/true-dyn; echo rc=$?", "overwritten image binary"),
        ("echo 'echo hi' > /www/run2 && chmod +x /www/run2 && /www/run2; echo rc=$?", "file made executable"),
        // The script written before, in monitor mode, is refused at exec.
        ("/dev/shm/x.sh; echo rc=$?", "script in /dev/shm"),
        // /dev/shm is scratch, writable by design: a script written there
        // now is refused at exec all the same.
        (
            "printf '#!/bin/sh\\necho ran\\n' > /dev/shm/y.sh && chmod +x /dev/shm/y.sh && /dev/shm/y.sh; echo rc=$?",
            "new script in /dev/shm",
        ),
    ] {
        let o = srv.exec(&["sh", "-c", script]);
        let text = out_text(&o);
        assert!(text.contains("not permitted") && text.contains("rc=126"), "{what} was not refused: {text}");
        fetch(&cli, &ip);
    }
    // Writing in the protected set is refused by the kernel before
    // anything could run (immutability).
    for script in ["cp /bin/busybox /usr/bin/true-dyn2", "echo x > /etc/x", "echo x > /bin/x"] {
        let o = srv.exec(&["sh", "-c", script]);
        assert!(!o.status.success() && out_text(&o).contains("Read-only file system"), "`{script}`: {}", out_text(&o));
    }
    // A tmpfs mount: its exec marks refuse the exec; a memfd (no file to
    // refuse at all): the kernel kills the process at exec.
    let o = srv.exec(&["sh", "-c", "cp /bin/busybox /scratch/bb2; /scratch/bb2 echo ran; echo rc=$?"]);
    let text = out_text(&o);
    assert!(text.contains("not permitted") && text.contains("rc=126") && !text.contains("ran\n"), "tmpfs exec was not refused: {text}");
    let o = srv.exec(&["sh", "-c", "/usr/local/bin/memfd-exec /bin/busybox echo ran; echo rc=$?"]);
    let text = out_text(&o);
    assert!(text.contains("rc=137") && !text.contains("ran\n"), "memfd exec was not killed: {text}");
    fetch(&cli, &ip);
    let (v, _) = wait_alerts(&alerts, pos, Duration::from_secs(2), Duration::from_millis(500));
    let memfd: Vec<_> = v.iter().filter(|a| a["rule"] == "Drift: memfd").collect();
    assert!(!memfd.is_empty() && memfd.iter().all(|a| a["output_fields"]["lancet.enforced"] == true), "{v:#?}");
    drop(agent);
}
