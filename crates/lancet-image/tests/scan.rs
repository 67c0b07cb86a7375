//! Scans of fixture images built here, in temporary directories: one root
//! filesystem written as a directory, as an OCI layout of two gzip layers
//! (with a whiteout, an opaque directory and an overridden file), as an
//! oci-archive tar and as a `docker save` archive; plus broken variants.
//!
//! JSON reports are compared with checked-in snapshots under
//! `tests/snapshots/`; `LANCET_UPDATE_SNAPSHOTS=1` rewrites them.

use lancet_image::{open, Kind, Report, Rule, ScanOptions, Severity};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const ELF: &[u8] = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0";
const OPENSSH_KEY: &[u8] =
    b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ==\n-----END OPENSSH PRIVATE KEY-----\n";
const RSA_KEY: &[u8] =
    b"-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n-----END RSA PRIVATE KEY-----\n";
const CERT: &[u8] = b"-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUT\n-----END CERTIFICATE-----\n";

#[derive(Clone)]
enum E {
    Dir(&'static str, u32),
    File(&'static str, Vec<u8>, u32),
    Link(&'static str, &'static str),
    Hard(&'static str, &'static str),
    /// A whiteout or opaque marker (layers only).
    Marker(&'static str),
}

fn busybox() -> Vec<u8> {
    [ELF, b"busybox multi-call"].concat()
}

/// The image's final state: what the rootfs directory holds, and what the
/// two layers add up to.
fn final_entries() -> Vec<E> {
    use E::*;
    vec![
        Dir("bin", 0o755),
        Dir("etc", 0o755),
        Dir("etc/ssl", 0o755),
        Dir("lib", 0o755),
        Dir("loop", 0o755),
        Dir("opt", 0o755),
        Dir("opt/tools", 0o755),
        Dir("root", 0o700),
        Dir("root/.aws", 0o755),
        Dir("root/.ssh", 0o700),
        Dir("srv", 0o755),
        Dir("srv/tls", 0o755),
        Dir("usr", 0o755),
        Dir("usr/bin", 0o755),
        Dir("usr/local", 0o755),
        Dir("usr/local/bin", 0o777),
        File("bin/busybox", busybox(), 0o755),
        Hard("bin/wget", "bin/busybox"),
        Link("bin/nc", "busybox"),
        Link("usr/bin/curl", "/bin/busybox"),
        File("bin/sh", b"#!shell v2\n".to_vec(), 0o755),
        File("bin/app", b"#!/bin/sh\necho app\n".to_vec(), 0o755),
        File("lib/libfoo.so", [ELF, b"libfoo"].concat(), 0o644),
        File("usr/bin/su", b"su".to_vec(), 0o4755),
        File("usr/bin/wall", b"wall".to_vec(), 0o2755),
        File("usr/bin/apt-get", b"apt".to_vec(), 0o755),
        File("etc/passwd", b"root:x:0:0::/root:/bin/sh\n".to_vec(), 0o644),
        File("root/.ssh/id_ed25519", OPENSSH_KEY.to_vec(), 0o600),
        File("srv/tls/server.pem", RSA_KEY.to_vec(), 0o600),
        File("etc/ssl/ca.pem", CERT.to_vec(), 0o644),
        File("root/.aws/credentials", b"[default]\naws_secret_access_key = x\n".to_vec(), 0o600),
        Link("loop/a", "b"),
        Link("loop/b", "a"),
        Link("escape", "../../etc/passwd"),
        Link("shadow-link", "/etc/shadow"),
        File("opt/tools/c", b"tool c".to_vec(), 0o755),
    ]
}

/// Lower layer: the final state with an older /bin/sh, without
/// /opt/tools/c, plus two files the upper layer removes.
fn layer1() -> Vec<E> {
    let mut v: Vec<E> = final_entries().into_iter().filter(|e| !matches!(e, E::File("bin/sh", ..) | E::File("opt/tools/c", ..))).collect();
    v.push(E::File("bin/sh", b"#!shell v1\n".to_vec(), 0o755));
    v.push(E::File("opt/tools/a", b"tool a".to_vec(), 0o755));
    v.push(E::File("usr/bin/removed-tool", b"gone".to_vec(), 0o755));
    v
}

/// Upper layer: overrides /bin/sh, deletes removed-tool, makes
/// /opt/tools opaque and adds c.
fn layer2() -> Vec<E> {
    vec![
        E::File("bin/sh", b"#!shell v2\n".to_vec(), 0o755),
        E::Marker("usr/bin/.wh.removed-tool"),
        E::Dir("opt/tools", 0o755),
        E::Marker("opt/tools/.wh..wh..opq"),
        E::File("opt/tools/c", b"tool c".to_vec(), 0o755),
    ]
}

fn write_dir(root: &Path, entries: &[E]) {
    for e in entries {
        match e {
            E::Dir(p, mode) => {
                std::fs::create_dir_all(root.join(p)).expect("mkdir");
                std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(*mode)).expect("chmod");
            }
            E::File(p, data, mode) => {
                std::fs::write(root.join(p), data).expect("write");
                std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(*mode)).expect("chmod");
            }
            E::Link(p, t) => std::os::unix::fs::symlink(t, root.join(p)).expect("symlink"),
            E::Hard(p, t) => std::fs::hard_link(root.join(t), root.join(p)).expect("hard link"),
            E::Marker(_) => unreachable!("markers exist in layers only"),
        }
    }
}

fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).expect("path");
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h
}

/// An uncompressed layer tar, owned by root, with zero mtimes (so its
/// digest never changes).
fn layer_tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::Dir(p, mode) => {
                let mut h = header(&format!("{p}/"), tar::EntryType::Directory, *mode, 0);
                h.set_cksum();
                b.append(&h, &[][..]).expect("append");
            }
            E::File(p, data, mode) => {
                let mut h = header(p, tar::EntryType::Regular, *mode, data.len() as u64);
                h.set_cksum();
                b.append(&h, &data[..]).expect("append");
            }
            E::Link(p, t) | E::Hard(p, t) => {
                let kind = if matches!(e, E::Link(..)) { tar::EntryType::Symlink } else { tar::EntryType::Link };
                let mut h = header(p, kind, 0o777, 0);
                h.set_link_name(t).expect("link");
                h.set_cksum();
                b.append(&h, &[][..]).expect("append");
            }
            E::Marker(p) => {
                let mut h = header(p, tar::EntryType::Regular, 0o644, 0);
                h.set_cksum();
                b.append(&h, &[][..]).expect("append");
            }
        }
    }
    b.into_inner().expect("tar")
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

fn hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex(data))
}

struct Image {
    layers: Vec<Vec<u8>>,
    config: Vec<u8>,
}

fn image() -> Image {
    let layers = vec![layer_tar(&layer1()), layer_tar(&layer2())];
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "DB_PASSWORD=hunter2", "UPLOAD_ID=AKIAIOSFODNN7EXAMPLE", "LANG=C"],
            "Entrypoint": ["/bin/app"],
            "Cmd": ["--serve"],
            "WorkingDir": "/srv",
            "ExposedPorts": {"8080/tcp": {}, "53/udp": {}},
        },
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| digest(l)).collect::<Vec<_>>()},
    }))
    .expect("config");
    Image { layers, config }
}

/// Writes an OCI image layout (gzip layers) into `dir`.
fn write_oci(dir: &Path, img: &Image) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    let put = |data: &[u8]| {
        std::fs::write(blobs.join(hex(data)), data).expect("blob");
        json!({"digest": digest(data), "size": data.len()})
    };
    let mut cfg = put(&img.config);
    cfg["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
    let layers: Vec<Value> = img
        .layers
        .iter()
        .map(|l| {
            let mut d = put(&gz(l));
            d["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip".into();
            d
        })
        .collect();
    let manifest = serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": cfg, "layers": layers}),
    )
    .expect("manifest");
    let mut m = put(&manifest);
    m["mediaType"] = "application/vnd.oci.image.manifest.v1+json".into();
    m["annotations"] = json!({"org.opencontainers.image.ref.name": "localhost/fixture:1"});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [m]})).expect("index"))
        .expect("index");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion": "1.0.0"}"#).expect("layout");
}

/// A tar of the files under `dir` (regular files only, sorted: what
/// `podman save` archives hold), written to `out`.
fn tar_dir(dir: &Path, out: &Path) {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("readdir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut b = tar::Builder::new(std::fs::File::create(out).expect("create"));
    for f in files {
        let data = std::fs::read(&f).expect("read");
        let rel = f.strip_prefix(dir).expect("inside").to_string_lossy().into_owned();
        let mut h = header(&rel, tar::EntryType::Regular, 0o644, data.len() as u64);
        h.set_cksum();
        b.append(&h, &data[..]).expect("append");
    }
    b.finish().expect("finish");
}

/// A `docker save` archive: config, uncompressed layers (the first as
/// `<id>/layer.tar`, a symlink to the real file, as podman writes them).
fn write_docker(out: &Path, img: &Image) {
    let mut b = tar::Builder::new(std::fs::File::create(out).expect("create"));
    let mut add = |name: &str, data: &[u8]| {
        let mut h = header(name, tar::EntryType::Regular, 0o444, data.len() as u64);
        h.set_cksum();
        b.append(&h, data).expect("append");
    };
    let cfg_name = format!("{}.json", hex(&img.config));
    add(&cfg_name, &img.config);
    let l0 = format!("{}.tar", hex(&img.layers[0]));
    add(&l0, &img.layers[0]);
    add("layer2/layer.tar", &img.layers[1]);
    let manifest = serde_json::to_vec(
        &json!([{"Config": cfg_name, "RepoTags": ["localhost/fixture:1"], "Layers": ["aaaa/layer.tar", "layer2/layer.tar"]}]),
    )
    .expect("manifest");
    add("manifest.json", &manifest);
    let mut h = header("aaaa/layer.tar", tar::EntryType::Symlink, 0o777, 0);
    h.set_link_name(format!("../{l0}")).expect("link");
    h.set_cksum();
    b.append(&h, &[][..]).expect("append");
    b.finish().expect("finish");
}

/// The image as an OCI layout directory, an oci-archive and a docker
/// archive under `dir`.
fn forms(dir: &Path, img: &Image) -> (PathBuf, PathBuf, PathBuf) {
    let oci = dir.join("oci");
    write_oci(&oci, img);
    let archive = dir.join("oci.tar");
    tar_dir(&oci, &archive);
    let docker = dir.join("docker.tar");
    write_docker(&docker, img);
    (oci, archive, docker)
}

fn scan(target: &Path) -> Report {
    scan_as(target, None).unwrap_or_else(|e| panic!("scanning {}: {e}", target.display()))
}

fn scan_as(target: &Path, kind: Option<Kind>) -> Result<Report, lancet_image::ScanError> {
    open(target.to_str().expect("utf8"), ScanOptions { kind, ..ScanOptions::default() })?.scan()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

/// Compares the report (with its temporary target path replaced) with
/// `tests/snapshots/<name>.json`.
fn snapshot(name: &str, report: &Report) {
    let mut r = report.clone();
    r.target = format!("<{name}>");
    let text = r.to_json();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots").join(format!("{name}.json"));
    if std::env::var_os("LANCET_UPDATE_SNAPSHOTS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &text).expect("write snapshot");
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (LANCET_UPDATE_SNAPSHOTS=1 writes it)", path.display()));
    if text != want {
        let first = text.lines().zip(want.lines()).position(|(a, b)| a != b).unwrap_or(0);
        panic!(
            "{name}: report differs from {} from line {}:\n got: {:?}\nwant: {:?}\n(LANCET_UPDATE_SNAPSHOTS=1 rewrites it)",
            path.display(),
            first + 1,
            text.lines().nth(first),
            want.lines().nth(first)
        );
    }
}

fn paths(r: &Report) -> Vec<(&str, &str)> {
    r.baseline.executables().iter().map(|f| (f.path.as_str(), f.sha256.as_str())).collect()
}

fn rules(r: &Report) -> Vec<(Rule, Option<&str>)> {
    r.findings.iter().map(|f| (f.rule(), f.path.as_deref())).collect()
}

#[test]
fn oci_layout_applies_layers_whiteouts_and_links() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = image();
    write_oci(dir.path(), &img);
    let r = scan(dir.path());
    assert_eq!(r.kind, Kind::OciDir);
    assert_eq!(r.digest, digest(&img.config));
    assert_eq!(r.image.as_deref(), Some("localhost/fixture:1"));
    let b = &r.baseline;
    let sh = b.lookup("/bin/sh").expect("/bin/sh");
    assert_eq!(sh.sha256, hex(b"#!shell v2\n"), "the upper layer's /bin/sh wins");
    assert!(b.lookup("/usr/bin/removed-tool").is_none(), "whited out");
    assert!(b.lookup("/opt/tools/a").is_none(), "hidden by the opaque directory");
    assert!(b.lookup("/opt/tools/c").is_some());
    assert_eq!(b.lookup("/bin/wget").map(|f| f.sha256.as_str()), Some(hex(&busybox()).as_str()), "hard link");
    assert_eq!(b.lookup("/bin/nc").map(|f| f.path.as_str()), Some("/bin/busybox"), "symlink to an executable");
    assert_eq!(b.lookup("/usr/bin/curl").map(|f| f.path.as_str()), Some("/bin/busybox"), "absolute symlink, resolved in the image");
    assert!(b.lookup("/lib/libfoo.so").is_some(), "ELF without an x bit is executable");
    assert!(b.lookup("/etc/passwd").is_none());
    assert!(b.lookup("/shadow-link").is_none(), "dangling inside the image; the host's /etc/shadow is never looked at");
    let su = b.lookup("/usr/bin/su").expect("su");
    assert!(su.setuid && su.mode.0 == 0o4755 && su.uid == 0);
    assert_eq!((b.entrypoint.clone(), b.cmd.clone()), (vec!["/bin/app".to_string()], vec!["--serve".to_string()]));
    assert_eq!(b.exposed_ports, ["53/udp", "8080/tcp"]);
    assert_eq!(b.env_names, ["DB_PASSWORD", "LANG", "PATH", "UPLOAD_ID"]);
    assert_eq!(b.working_dir.as_deref(), Some("/srv"));

    let got = rules(&r);
    for want in [
        (Rule::PrivateKey, Some("/root/.ssh/id_ed25519")),
        (Rule::PrivateKey, Some("/srv/tls/server.pem")),
        (Rule::CredentialFile, Some("/root/.aws/credentials")),
        (Rule::RunsAsRoot, None),
        (Rule::SetuidRoot, Some("/usr/bin/su")),
        (Rule::SetidBinary, Some("/usr/bin/wall")),
        (Rule::WorldWritablePathDir, Some("/usr/local/bin")),
        (Rule::Shell, Some("/bin/sh")),
        (Rule::Shell, Some("/bin/busybox")),
        (Rule::NetworkTool, Some("/bin/wget")),
        (Rule::NetworkTool, Some("/bin/nc")),
        (Rule::NetworkTool, Some("/usr/bin/curl")),
        (Rule::PackageManager, Some("/usr/bin/apt-get")),
        (Rule::EscapingSymlink, Some("/escape")),
        (Rule::Unscannable, Some("/loop/a")),
    ] {
        assert!(got.contains(&want), "{want:?} missing from {got:#?}");
    }
    assert!(!got.iter().any(|(_, p)| *p == Some("/etc/ssl/ca.pem")), "a certificate is not a key");
    let secrets: Vec<&str> = r.findings.iter().filter(|f| f.rule() == Rule::SecretInEnv).map(|f| f.message.as_str()).collect();
    assert_eq!(secrets.len(), 2, "{secrets:?}");
    let json = r.to_json();
    assert!(!json.contains("hunter2") && !json.contains("AKIAIOSFODNN7EXAMPLE"), "secret values never appear");
    assert!(r.fails(Severity::Critical) && r.fails(Severity::Low));
    assert_eq!(r.summary.findings.critical, 2);
    snapshot("oci-dir", &r);
}

#[test]
fn every_form_of_the_image_gives_the_same_baseline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = image();
    let (oci, archive, docker) = forms(dir.path(), &img);
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir(&rootfs).expect("mkdir");
    write_dir(&rootfs, &final_entries());

    let from_oci = scan(&oci);
    let from_archive = scan(&archive);
    let from_docker = scan(&docker);
    let from_dir = scan(&rootfs);
    assert_eq!((from_archive.kind, from_docker.kind, from_dir.kind), (Kind::OciArchive, Kind::DockerArchive, Kind::Rootfs));
    assert_eq!(from_archive.baseline, from_oci.baseline);
    assert_eq!(from_docker.digest, from_oci.digest, "the config digest names the image in every form");
    assert_eq!(from_docker.manifest_digest, None);
    assert_eq!(from_docker.baseline.executables(), from_oci.baseline.executables());
    assert_eq!(from_docker.baseline.links(), from_oci.baseline.links());
    assert_eq!(from_docker.findings, from_oci.findings);
    assert_eq!(paths(&from_dir), paths(&from_oci), "the directory holds the layers' result");
    assert_eq!(from_dir.baseline.links(), from_oci.baseline.links());
    assert!(from_dir.digest.starts_with("sha256:") && from_dir.digest != from_oci.digest);
    assert_eq!(scan(&rootfs).digest, from_dir.digest, "a directory's digest is stable");
    assert!(!rules(&from_dir).contains(&(Rule::RunsAsRoot, None)), "a bare rootfs does not say who runs it");
    snapshot("oci-archive", &from_archive);
    snapshot("docker-archive", &from_docker);
    if is_root() {
        // Ownership in a directory is whoever created it: root here, as in
        // the layers, so the whole report matches.
        assert_eq!(from_dir.baseline.executables(), from_oci.baseline.executables());
        snapshot("rootfs", &from_dir);
    } else {
        eprintln!("rootfs snapshot SKIPPED: not root, so the fixture files are not owned by uid 0");
    }
}

#[test]
fn sarif_output_is_valid_sarif_2_1_0() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_oci(dir.path(), &image());
    let r = scan(dir.path());
    let sarif = r.to_sarif();
    let schema: Value = serde_json::from_str(include_str!("fixtures/sarif-schema-2.1.0.json")).expect("schema");
    let validator = jsonschema::options().should_validate_formats(true).build(&schema).expect("compile the SARIF schema");
    let errors: Vec<String> = validator.iter_errors(&sarif).map(|e| format!("{} at {}", e, e.instance_path)).collect();
    assert!(errors.is_empty(), "SARIF schema errors:\n{}", errors.join("\n"));

    assert_eq!(sarif["version"], "2.1.0");
    let run = &sarif["runs"][0];
    assert_eq!(run["tool"]["driver"]["name"], "lancet");
    let rules = run["tool"]["driver"]["rules"].as_array().expect("rules");
    let results = run["results"].as_array().expect("results");
    assert_eq!(results.len(), r.findings.len());
    for res in results {
        let i = res["ruleIndex"].as_u64().expect("ruleIndex") as usize;
        assert_eq!(rules[i]["id"], res["ruleId"], "ruleIndex points at its rule");
        let uri = res["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].as_str().expect("uri");
        assert!(!uri.starts_with('/'), "{uri}");
        let sev: f64 = rules[i]["properties"]["security-severity"].as_str().expect("severity").parse().expect("number");
        assert!((0.0..=10.0).contains(&sev));
    }
    let key = results.iter().find(|x| x["ruleId"] == "LANCET-IMG-008").expect("private key result");
    assert_eq!(key["level"], "error");
    assert!(results.iter().any(|x| x["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "srv/tls/server.pem"));

    // And the schema does reject what is not SARIF.
    let mut broken = sarif.clone();
    broken["runs"][0]["results"][0]["level"] = "fatal".into();
    assert!(!validator.is_valid(&broken));
}

#[test]
fn runtime_bundle_config_is_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir(&rootfs).expect("mkdir");
    write_dir(&rootfs, &[E::Dir("bin", 0o755), E::File("bin/app", ELF.to_vec(), 0o755)]);
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/app", "-v"],
            "env": ["PATH=/bin", "API_TOKEN=abc"],
            "cwd": "/",
            "capabilities": {"bounding": ["CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_CHOWN"], "effective": ["CAP_SYS_ADMIN"]},
        },
        "root": {"path": "rootfs", "readonly": false},
        "linux": {"namespaces": [{"type": "mount"}, {"type": "ipc"}, {"type": "uts"}]},
    });
    std::fs::write(dir.path().join("config.json"), serde_json::to_vec(&spec).expect("json")).expect("write");
    let r = scan(dir.path());
    assert_eq!(r.kind, Kind::Bundle);
    assert_eq!(r.baseline.entrypoint, ["/bin/app", "-v"]);
    assert_eq!(r.baseline.user.as_deref(), Some("0:0"));
    assert!(r.baseline.lookup("/bin/app").is_some());
    let msgs: Vec<(Rule, &str)> = r.findings.iter().map(|f| (f.rule(), f.message.as_str())).collect();
    let has = |rule: Rule, needle: &str| msgs.iter().any(|(r, m)| *r == rule && m.contains(needle));
    assert!(has(Rule::PrivilegedCapability, "CAP_SYS_ADMIN"), "{msgs:#?}");
    assert!(has(Rule::AddedCapability, "CAP_NET_ADMIN"), "{msgs:#?}");
    assert!(!msgs.iter().any(|(_, m)| m.contains("CAP_CHOWN")), "a default capability is fine");
    assert!(has(Rule::HostNamespace, "pid") && has(Rule::HostNamespace, "network"), "{msgs:#?}");
    assert!(!has(Rule::HostNamespace, "mount") && !has(Rule::HostNamespace, "ipc"));
    assert!(has(Rule::WritableRootfs, "readonly"));
    assert!(has(Rule::RunsAsRoot, "uid 0"));
    assert!(has(Rule::SecretInEnv, "API_TOKEN") && !r.to_json().contains("abc\""));
}

#[test]
fn unsafe_tar_paths_are_refused_and_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut layer = layer_tar(&[E::Dir("bin", 0o755), E::File("bin/ok", b"ok".to_vec(), 0o755)]);
    // Entries the tar builder refuses to write: patch the names in.
    let mut extra = tar::Builder::new(Vec::new());
    for (name, kind, link) in [
        ("x/../../evil", tar::EntryType::Regular, ""),
        ("/abs/tool", tar::EntryType::Regular, ""),
        ("bin/hl", tar::EntryType::Link, "../../../etc/passwd"),
    ] {
        let mut h = header("placeholder", kind, 0o755, if link.is_empty() { 4 } else { 0 });
        let n = &mut h.as_old_mut().name;
        n.fill(0);
        n[..name.len()].copy_from_slice(name.as_bytes());
        if !link.is_empty() {
            let l = &mut h.as_old_mut().linkname;
            l[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_cksum();
        extra.append(&h, if link.is_empty() { &b"evil"[..] } else { &[][..] }).expect("append");
    }
    let extra = extra.into_inner().expect("tar");
    // Splice: the first archive without its end blocks, then the second.
    let end = layer.len() - 1024;
    layer.truncate(end);
    layer.extend_from_slice(&extra);
    let img = Image {
        config: serde_json::to_vec(&json!({"config": {"User": "1000"}, "rootfs": {"diff_ids": [digest(&layer)]}})).expect("json"),
        layers: vec![layer],
    };
    write_oci(dir.path(), &img);
    let r = scan(dir.path());
    let unsafe_paths: Vec<&str> = r.findings.iter().filter(|f| f.rule() == Rule::UnsafeArchivePath).map(|f| f.message.as_str()).collect();
    assert_eq!(unsafe_paths.len(), 2, "{:#?}", r.findings);
    assert!(unsafe_paths.iter().any(|m| m.contains("x/../../evil")));
    assert!(r.baseline.lookup("/abs/tool").is_some(), "an absolute entry path lands inside the image");
    assert!(r.baseline.lookup("/evil").is_none() && r.baseline.lookup("/bin/hl").is_none());
    assert!(!rules(&r).contains(&(Rule::RunsAsRoot, None)), "user 1000 is not root");
}

/// The ways an image can be broken: each is a clear error naming what and
/// where, never a panic.
#[test]
fn broken_images_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = image();
    let (oci, archive, _) = forms(dir.path(), &img);
    let err = |p: &Path, kind: Option<Kind>| match scan_as(p, kind) {
        Ok(r) => panic!("{} scanned: {} findings", p.display(), r.findings.len()),
        Err(e) => e.to_string(),
    };

    // A truncated oci-archive.
    let bytes = std::fs::read(&archive).expect("read");
    let cut = dir.path().join("cut.tar");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let e = err(&cut, None);
    assert!(e.contains("cut.tar") && (e.contains("truncated") || e.contains("tar archive")), "{e}");

    // Garbage that is not a tar at all.
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, vec![0x5a; 3000]).expect("write");
    let e = err(&junk, None);
    assert!(e.contains("junk.tar"), "{e}");

    // A compressed outer archive.
    let gzipped = dir.path().join("image.tar.gz");
    std::fs::write(&gzipped, gz(&bytes)).expect("write");
    assert!(err(&gzipped, None).contains("decompress it first"));

    // A layer blob with one byte flipped, and one cut short.
    let index: Value = serde_json::from_slice(&std::fs::read(oci.join("index.json")).expect("index")).expect("json");
    let manifest_hex = index["manifests"][0]["digest"].as_str().expect("digest").trim_start_matches("sha256:").to_string();
    let manifest: Value = serde_json::from_slice(&std::fs::read(oci.join("blobs/sha256").join(&manifest_hex)).expect("m")).expect("json");
    let layer_path = oci.join("blobs/sha256").join(manifest["layers"][1]["digest"].as_str().expect("d").trim_start_matches("sha256:"));
    let good = std::fs::read(&layer_path).expect("layer");
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    std::fs::write(&layer_path, &flipped).expect("write");
    let e = err(&oci, None);
    assert!(e.contains("layer sha256:"), "{e}");
    std::fs::write(&layer_path, &good[..good.len() - 20]).expect("write");
    let e = err(&oci, None);
    assert!(e.contains("layer sha256:"), "{e}");
    std::fs::write(&layer_path, &good).expect("restore");

    // A layer that no longer matches its digest but still decodes.
    let other = gz(&layer_tar(&[E::File("bin/sh", b"#!tampered\n".to_vec(), 0o755)]));
    std::fs::write(&layer_path, &other).expect("write");
    let e = err(&oci, None);
    assert!(e.contains("digest mismatch"), "{e}");
    std::fs::write(&layer_path, &good).expect("restore");
    scan(&oci);

    // A docker archive whose layer does not match the config's diff_ids.
    let mut bad = Image { layers: img.layers.clone(), config: img.config.clone() };
    bad.layers[1] = layer_tar(&[E::File("bin/sh", b"#!tampered\n".to_vec(), 0o755)]);
    let docker = dir.path().join("docker.tar");
    write_docker(&docker, &bad);
    assert!(err(&docker, None).contains("digest mismatch"));

    // A tar header promising a terabyte that is not there: read as a
    // stream, never allocated.
    let mut h = header("bin/huge", tar::EntryType::Regular, 0o755, 1 << 40);
    h.set_cksum();
    let mut layer = h.as_bytes().to_vec();
    layer.extend_from_slice(&[0u8; 4096]);
    let huge = dir.path().join("huge");
    write_oci(
        &huge,
        &Image { config: serde_json::to_vec(&json!({"rootfs": {"diff_ids": [digest(&layer)]}})).expect("json"), layers: vec![layer] },
    );
    let e = err(&huge, None);
    assert!(e.contains("bin/huge"), "{e}");

    // Missing blobs, an explicit kind that does not fit, a missing target.
    std::fs::remove_file(oci.join("oci-layout")).expect("rm");
    assert!(err(&oci, Some(Kind::OciDir)).contains("oci-layout"));
    assert!(err(&dir.path().join("rootfs-that-is-not-there"), Some(Kind::Rootfs)).contains("rootfs-that-is-not-there"));
}

#[test]
fn a_rootfs_directory_is_walked_without_following_links() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("rootfs");
    std::fs::create_dir(&root).expect("mkdir");
    write_dir(&root, &final_entries());
    // A link to a directory outside the root: never entered.
    std::os::unix::fs::symlink(env!("CARGO_MANIFEST_DIR"), root.join("outside")).expect("symlink");
    std::os::unix::fs::symlink("/usr/bin", root.join("hostbin")).expect("symlink");
    let unreadable = root.join("usr/bin/locked");
    std::fs::write(&unreadable, b"x").expect("write");
    std::fs::set_permissions(&unreadable, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    let r = scan(&root);
    assert!(r.baseline.executables().iter().all(|f| !f.path.starts_with("/outside") && !f.path.starts_with("/hostbin")));
    assert!(r.baseline.lookup("/hostbin/env").is_none(), "the host's /usr/bin is not the image's");
    assert_eq!(r.baseline.lookup("/bin/wget").map(|f| f.sha256.clone()), Some(hex(&busybox())));
    let got = rules(&r);
    assert!(got.contains(&(Rule::Unscannable, Some("/loop/a"))) && got.contains(&(Rule::EscapingSymlink, Some("/escape"))));
    assert!(
        r.findings.iter().any(|f| f.rule() == Rule::NetworkTool && f.message.contains("/bin/wget (hard link to /bin/busybox)")),
        "{:#?}",
        r.findings
    );
    if is_root() {
        eprintln!("unreadable-file check SKIPPED: root reads mode 000 files");
    } else {
        assert!(got.contains(&(Rule::Unscannable, Some("/usr/bin/locked"))), "{got:#?}");
    }
    // Parallel and single-threaded hashing agree.
    let one =
        open(root.to_str().expect("utf8"), ScanOptions { threads: Some(1), ..ScanOptions::default() }).expect("open").scan().expect("scan");
    assert_eq!(one.baseline, r.baseline);
}
