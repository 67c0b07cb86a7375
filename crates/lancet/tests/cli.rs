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
        eprintln!("SKIPPED: needs root and setpriv to drop to an unprivileged user");
        return;
    };
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("needs root"), "{}", stderr(&o));
}

#[test]
fn doctor_without_privileges_reports_and_fails() {
    let Some(o) = as_nobody(&["doctor", "--format", "json"]) else {
        eprintln!("SKIPPED: needs root and setpriv to drop to an unprivileged user");
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
        eprintln!("SKIPPED: not root");
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
