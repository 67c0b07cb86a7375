//! `lancet scan` from the command line: exit codes CI relies on, output
//! files, and (as root, with podman) the same image read as a podman
//! reference and as `podman save` archives.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

fn lancet(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lancet")).args(args).output().expect("run lancet")
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// A small root filesystem: a shell, and optionally a private key.
fn rootfs(dir: &Path, with_key: bool) -> std::path::PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).expect("mkdir");
    std::fs::write(root.join("bin/sh"), b"\x7fELF fake shell").expect("write");
    std::fs::set_permissions(root.join("bin/sh"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    if with_key {
        std::fs::write(root.join("id_rsa"), b"-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----\n").expect("write");
    }
    root
}

#[test]
fn usage_errors_and_unreadable_targets_exit_2() {
    for (args, needle) in [
        (vec!["scan"], "TARGET"),
        (vec!["scan", "--no-such-flag", "x"], "--no-such-flag"),
        (vec!["scan", "x", "--fail-on", "extreme"], "unknown severity"),
        (vec!["scan", "x", "--format", "xml"], "xml"),
        (vec!["scan", "x", "--kind", "tarball"], "unknown kind"),
        (vec!["scan", "/nonexistent-lancet-dir", "--kind", "rootfs"], "/nonexistent-lancet-dir"),
        (vec!["scan", "/nonexistent-lancet-target"], "no such file or directory"),
    ] {
        let o = lancet(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {needle:?} not in {}", stderr(&o));
        assert!(o.stdout.is_empty(), "{args:?} printed a report");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let junk = dir.path().join("image.tar");
    std::fs::write(&junk, vec![7u8; 4096]).expect("write");
    let o = lancet(&["scan", s(&junk)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).starts_with("lancet: error: ") && stderr(&o).contains("image.tar"), "{}", stderr(&o));

    let o = lancet(&["scan", "--help"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("--fail-on"));
}

#[test]
fn fail_on_gates_and_outputs_are_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = rootfs(dir.path(), true);
    let report = dir.path().join("out/report.json");
    std::fs::create_dir_all(report.parent().expect("parent")).expect("mkdir");
    let profile = dir.path().join("profile.yaml");
    let baselines = dir.path().join("baselines");
    let o = lancet(&[
        "scan",
        s(&root),
        "--format",
        "json",
        "--output",
        s(&report),
        "--profile-out",
        s(&profile),
        "--baselines-dir",
        s(&baselines),
        "--fail-on",
        "critical",
    ]);
    assert_eq!(o.status.code(), Some(1), "a private key is critical: {}", stderr(&o));
    assert!(o.stdout.is_empty(), "the report went to --output");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("json");
    assert_eq!(v["kind"], "rootfs");
    assert_eq!(v["summary"]["findings"]["critical"], 1);
    let digest = v["digest"].as_str().expect("digest");
    let p = lancet_engine::profile::Profile::from_yaml(&std::fs::read_to_string(&profile).expect("profile"), "profile.yaml")
        .expect("profile parses");
    assert_eq!(p.digest(), digest);
    assert_eq!(p.baseline().and_then(|b| b.lookup("/bin/sh")).map(|f| f.mode.to_string()), Some("0755".into()));
    let in_dir = baselines.join(format!("{}.yaml", digest.replace(':', "-")));
    assert_eq!(std::fs::read(&in_dir).expect("baselines dir entry"), std::fs::read(&profile).expect("profile"));

    let clean = tempfile::tempdir().expect("tempdir");
    let root = rootfs(clean.path(), false);
    let o = lancet(&["scan", s(&root), "--fail-on", "high"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("LANCET-IMG-004") && table.contains("/bin/sh") && table.contains("1 executables"), "{table}");
    let o = lancet(&["scan", s(&root), "--fail-on", "medium", "--format", "sarif"]);
    assert_eq!(o.status.code(), Some(1), "a shell is medium");
    let sarif: serde_json::Value = serde_json::from_slice(&o.stdout).expect("sarif json");
    assert_eq!(sarif["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"], "bin/sh");
}

#[test]
fn a_closed_stdout_is_a_normal_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("rootfs");
    std::fs::create_dir(&root).expect("mkdir");
    // Enough executables that the JSON report overflows a pipe buffer.
    for i in 0..3000 {
        let p = root.join(format!("tool-{i:04}"));
        std::fs::write(&p, format!("#!/bin/sh\necho {i}\n")).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_lancet"))
        .args(["scan", s(&root), "--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("error"), "{}", stderr(&out));
}

fn sha256sum(path: &str) -> String {
    common::run(Command::new("sha256sum").arg(path)).split_whitespace().next().expect("hash").to_string()
}

fn scan_json(target: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["scan", target, "--format", "json"];
    args.extend_from_slice(extra);
    let o = lancet(&args);
    assert!(o.status.success(), "scan {target}: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("json report")
}

fn executables(v: &serde_json::Value) -> Vec<(String, String)> {
    v["baseline"]["executables"]
        .as_array()
        .expect("executables")
        .iter()
        .map(|f| (f["path"].as_str().unwrap_or("").to_string(), f["sha256"].as_str().unwrap_or("").to_string()))
        .collect()
}

fn mounted_images() -> String {
    common::podman(&["image", "mount"])
}

#[test]
fn podman_image_and_its_archives_give_one_baseline() {
    skip_unless_ready!(true);
    let dir = tempfile::tempdir().expect("tempdir");
    let oci = dir.path().join("oci.tar");
    let docker = dir.path().join("docker.tar");
    common::podman(&["save", "--format", "oci-archive", "-o", s(&oci), common::IMAGE]);
    common::podman(&["save", "--format", "docker-archive", "-o", s(&docker), common::IMAGE]);
    let mounts_before = mounted_images();

    let from_ref = scan_json(common::IMAGE, &[]);
    assert_eq!(mounted_images(), mounts_before, "the image is unmounted after the scan");
    let from_oci = scan_json(s(&oci), &[]);
    let from_docker = scan_json(s(&docker), &[]);
    assert_eq!(
        (from_ref["kind"].as_str(), from_oci["kind"].as_str(), from_docker["kind"].as_str()),
        (Some("podman"), Some("oci-archive"), Some("docker-archive"))
    );
    let id = common::podman(&["image", "inspect", "--format", "{{.Id}}", common::IMAGE]);
    for v in [&from_ref, &from_oci, &from_docker] {
        assert_eq!(v["digest"].as_str(), Some(format!("sha256:{id}").as_str()), "config digest");
    }
    let exes = executables(&from_ref);
    assert_eq!(executables(&from_oci), exes);
    assert_eq!(executables(&from_docker), exes);
    assert_eq!(from_oci["baseline"]["links"], from_ref["baseline"]["links"]);
    let busybox = exes.iter().find(|(p, _)| p == "/bin/busybox").expect("/bin/busybox in the baseline");
    assert_eq!(busybox.1, sha256sum("/bin/busybox"));
    let links = from_ref["baseline"]["links"].as_array().expect("links");
    assert!(links.iter().any(|l| l["path"] == "/bin/sh" && l["target"] == "/bin/busybox"), "applets lead to busybox");
    assert_eq!(from_ref["baseline"]["cmd"], serde_json::json!(["/bin/sh"]));

    // Runs as root, ships a shell: --fail-on high fails the build.
    let o = lancet(&["scan", common::IMAGE, "--fail-on", "high"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("LANCET-IMG-001"));
    assert_eq!(mounted_images(), mounts_before);

    // The cache is keyed by digest: a second scan reads the entry back.
    let cache = dir.path().join("cache");
    scan_json(s(&oci), &["--cache-dir", s(&cache)]);
    let entry = cache.join(format!("sha256-{id}.json"));
    let mut cached: serde_json::Value = serde_json::from_slice(&std::fs::read(&entry).expect("cache entry")).expect("json");
    cached["report"]["findings"][0]["message"] = "from the cache".into();
    std::fs::write(&entry, serde_json::to_vec(&cached).expect("json")).expect("write");
    let again = scan_json(s(&docker), &["--cache-dir", s(&cache)]);
    assert_eq!(again["findings"][0]["message"], "from the cache", "same digest, cached report");
    assert_eq!(again["target"].as_str(), Some(s(&docker)));
}
