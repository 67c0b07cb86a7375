//! Property tests of `lancet scan` on images built here at random: layers
//! (plain, gzip, zstd) of any entries — `..` and absolute names, whiteouts
//! and opaque markers, hard links and symlinks to anywhere, devices —
//! as an OCI layout and as a `docker save` archive, then corrupted (layer
//! bytes re-signed so they reach the decoders, index and manifest JSON,
//! whole archives). A scan either succeeds with a report whose every path
//! lies inside the image, or fails with an error; it never panics, never
//! reads through a link, and the two forms of one image agree.

use lancet_image::{open, Kind, Report, ScanError, ScanOptions};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

fn hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex(data))
}

#[derive(Debug, Clone)]
enum Entry {
    Dir(String, u32),
    File(String, Vec<u8>, u32),
    Symlink(String, String),
    Hard(String, String),
    Fifo(String),
}

/// Names as an archive may carry them (at most 100 bytes: the old header).
fn name() -> impl Strategy<Value = String> {
    let comp = prop_oneof![
        6 => proptest::sample::select(vec!["bin", "etc", "usr", "lib", "a", "b", "sh", "busybox", "passwd", "shadow", "id_rsa", ".ssh", "opt"]).prop_map(str::to_string),
        1 => Just("..".to_string()),
        1 => Just(".".to_string()),
        1 => Just(".wh.a".to_string()),
        1 => Just(".wh.bin".to_string()),
        1 => Just(".wh..wh..opq".to_string()),
        1 => "[a-z\u{e9} ]{1,12}",
    ];
    (prop_oneof![Just(""), Just("/"), Just("./")], proptest::collection::vec(comp, 1..5))
        .prop_map(|(lead, c)| format!("{lead}{}", c.join("/")))
        .prop_filter("fits a v7 header", |n| n.len() < 100)
}

fn content() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..64),
        1 => Just(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0busybox".to_vec()),
        1 => Just(b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbg==\n-----END OPENSSH PRIVATE KEY-----\n".to_vec()),
        1 => Just(b"#!/bin/sh\necho hi\n".to_vec()),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    let mode = prop_oneof![Just(0o755u32), Just(0o644), Just(0o4755), Just(0o777), any::<u32>().prop_map(|m| m & 0o7777)];
    let target = prop_oneof![
        name(),
        Just("/etc/shadow".to_string()),
        Just("../../../../../../etc/passwd".to_string()),
        Just("/proc/self/root/etc".to_string()),
        Just(env!("CARGO_MANIFEST_DIR").to_string()),
    ];
    prop_oneof![
        2 => (name(), mode.clone()).prop_map(|(n, m)| Entry::Dir(n, m)),
        4 => (name(), content(), mode).prop_map(|(n, c, m)| Entry::File(n, c, m)),
        2 => (name(), target.clone()).prop_map(|(n, t)| Entry::Symlink(n, t)),
        1 => (name(), target.prop_filter("fits", |t| t.len() < 100)).prop_map(|(n, t)| Entry::Hard(n, t)),
        1 => name().prop_map(Entry::Fifo),
    ]
}

/// A tar header with any name and link name written in (the builder's
/// checks refuse `..`, which is what is being tested).
fn header(name: &str, kind: tar::EntryType, mode: u32, size: u64, link: &str) -> tar::Header {
    let mut h = tar::Header::new_old();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    let old = h.as_old_mut();
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_cksum();
    h
}

fn layer_tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let (h, data): (tar::Header, &[u8]) = match e {
            Entry::Dir(n, m) => (header(n, tar::EntryType::Directory, *m, 0, ""), &[]),
            Entry::File(n, c, m) => (header(n, tar::EntryType::Regular, *m, c.len() as u64, ""), c),
            Entry::Symlink(n, t) => (header(n, tar::EntryType::Symlink, 0o777, 0, t), &[]),
            Entry::Hard(n, t) => (header(n, tar::EntryType::Link, 0o644, 0, t), &[]),
            Entry::Fifo(n) => (header(n, tar::EntryType::Fifo, 0o644, 0, ""), &[]),
        };
        b.append(&h, data).expect("append");
    }
    b.into_inner().expect("tar")
}

#[derive(Debug, Clone, Copy)]
enum Compression {
    Plain,
    Gzip,
    Zstd,
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

/// A zstd frame of raw (stored) blocks: what a zstd decoder must read, and
/// simple enough to write here.
fn zstd(data: &[u8]) -> Vec<u8> {
    let mut f = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38]; // magic; no size or checksum; 128 KiB window
    let chunks: Vec<&[u8]> = if data.is_empty() { vec![&[]] } else { data.chunks(1 << 16).collect() };
    for (i, c) in chunks.iter().enumerate() {
        let last = u32::from(i + 1 == chunks.len());
        let h = last | ((c.len() as u32) << 3);
        f.extend(&h.to_le_bytes()[..3]);
        f.extend_from_slice(c);
    }
    f
}

fn compress(c: Compression, tar: &[u8]) -> Vec<u8> {
    match c {
        Compression::Plain => tar.to_vec(),
        Compression::Gzip => gz(tar),
        Compression::Zstd => zstd(tar),
    }
}

fn compression() -> impl Strategy<Value = Compression> {
    prop_oneof![Just(Compression::Plain), Just(Compression::Gzip), Just(Compression::Zstd)]
}

#[derive(Debug, Clone)]
struct Image {
    layers: Vec<Vec<u8>>,
    config: Vec<u8>,
}

fn image() -> impl Strategy<Value = Image> {
    proptest::collection::vec(proptest::collection::vec(entry(), 0..14), 1..4).prop_map(|layers| {
        let layers: Vec<Vec<u8>> = layers.iter().map(|l| layer_tar(l)).collect();
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/usr/bin:/bin", "API_TOKEN=x"], "Entrypoint": ["/bin/sh"], "User": "0"},
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| digest(l)).collect::<Vec<_>>()},
        }))
        .expect("config");
        Image { layers, config }
    })
}

/// An OCI image layout in `dir`, its layers compressed as asked; returns
/// the stored layer blobs' paths.
fn write_oci(dir: &Path, img: &Image, c: Compression) -> Vec<PathBuf> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    let put = |data: &[u8]| {
        std::fs::write(blobs.join(hex(data)), data).expect("blob");
        json!({"digest": digest(data), "size": data.len(), "mediaType": "application/vnd.oci.image.layer.v1.tar"})
    };
    let cfg = put(&img.config);
    let stored: Vec<Vec<u8>> = img.layers.iter().map(|l| compress(c, l)).collect();
    let layers: Vec<serde_json::Value> = stored.iter().map(|l| put(l)).collect();
    write_manifest(dir, &cfg, &layers);
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion": "1.0.0"}"#).expect("layout");
    stored.iter().map(|l| blobs.join(hex(l))).collect()
}

fn write_manifest(dir: &Path, cfg: &serde_json::Value, layers: &[serde_json::Value]) {
    let blobs = dir.join("blobs/sha256");
    let manifest = serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": cfg, "layers": layers}),
    )
    .expect("m");
    std::fs::write(blobs.join(hex(&manifest)), &manifest).expect("manifest");
    let index = json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(&manifest), "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": "localhost/p:1"}}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).expect("index")).expect("index");
}

/// A `docker save` archive: plain layers, named by digest.
fn docker_archive(img: &Image, manifest: Option<&[u8]>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).expect("path");
        h.set_size(data.len() as u64);
        h.set_mode(0o444);
        h.set_mtime(0);
        h.set_cksum();
        b.append(&h, data).expect("append");
    };
    let cfg = format!("{}.json", hex(&img.config));
    add(&cfg, &img.config);
    let names: Vec<String> = img.layers.iter().map(|l| format!("{}/layer.tar", hex(l))).collect();
    for (n, l) in names.iter().zip(&img.layers) {
        add(n, l);
    }
    let m = serde_json::to_vec(&json!([{"Config": cfg, "RepoTags": ["localhost/p:1"], "Layers": names}])).expect("m");
    add("manifest.json", manifest.unwrap_or(&m));
    b.into_inner().expect("tar")
}

fn scan(target: &Path, kind: Option<Kind>) -> Result<Report, ScanError> {
    open(target.to_str().expect("utf8"), ScanOptions { kind, threads: Some(1), ..ScanOptions::default() })?.scan()
}

/// A path as the scan reports it: absolute, normalised, never climbing.
fn inside(p: &str) -> bool {
    p == "/" || (p.starts_with('/') && !p.ends_with('/') && p[1..].split('/').all(|c| !c.is_empty() && c != "." && c != ".."))
}

fn check(r: &Report) -> Result<(), TestCaseError> {
    for f in r.baseline.executables() {
        prop_assert!(inside(&f.path), "{}", f.path);
    }
    for l in r.baseline.links() {
        prop_assert!(inside(&l.path) && inside(&l.target), "{} -> {}", l.path, l.target);
        prop_assert!(r.baseline.lookup(&l.target).is_some(), "a link resolves to a baseline executable: {}", l.target);
    }
    for f in &r.findings {
        if let Some(p) = &f.path {
            prop_assert!(inside(p), "{:?}", f);
        }
    }
    // (Hard links count once in `files`, but each is an executable path.)
    prop_assert_eq!(r.summary.executables, r.baseline.executables().len() as u64);
    prop_assert_eq!(r.summary.links, r.baseline.links().len() as u64);
    let _ = r.to_json();
    let _ = r.to_sarif();
    Ok(())
}

/// The report without what names the target.
fn comparable(r: &Report) -> (String, Vec<String>) {
    // Only an OCI layout has a manifest digest.
    let mut b = r.baseline.clone();
    b.manifest_digest = None;
    let b = serde_json::to_string(&b).expect("json");
    let mut f: Vec<String> = r.findings.iter().map(|f| format!("{:?} {:?} {}", f.rule(), f.path, f.message)).collect();
    f.sort();
    (b, f)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random images scan, and the OCI layout (any compression) and the
    /// docker archive of one image give the same baseline and findings.
    #[test]
    fn random_images_scan_and_forms_agree(img in image(), c in compression()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let oci = dir.path().join("oci");
        write_oci(&oci, &img, c);
        let archive = dir.path().join("docker.tar");
        std::fs::write(&archive, docker_archive(&img, None)).expect("write");
        let a = scan(&oci, None);
        let b = scan(&archive, None);
        match (&a, &b) {
            (Ok(a), Ok(b)) => {
                check(a)?;
                check(b)?;
                prop_assert_eq!(a.kind, Kind::OciDir);
                prop_assert_eq!(b.kind, Kind::DockerArchive);
                prop_assert_eq!(&a.digest, &b.digest);
                prop_assert_eq!(comparable(a), comparable(b));
                // The same image gives the same bytes.
                let again = scan(&oci, None).expect("rescan");
                prop_assert_eq!(again.to_json(), a.to_json());
            }
            _ => prop_assert!(false, "well-formed images scan: {:?} / {:?}", a.as_ref().err(), b.as_ref().err()),
        }
    }

    /// Layer bytes changed and the manifest re-signed, so the changed
    /// bytes reach the gzip, zstd and tar readers: a report or an error.
    #[test]
    fn corrupted_layers_reach_the_decoders(img in image(), c in compression(), which in any::<Index>(), edits in proptest::collection::vec((any::<Index>(), any::<u8>(), 0u8..3), 1..8)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = write_oci(dir.path(), &img, c);
        let p = &paths[which.index(paths.len())];
        let mut blob = std::fs::read(p).expect("blob");
        for (i, v, op) in edits {
            let at = i.index(blob.len() + 1);
            match op {
                0 if at < blob.len() => blob[at] = v,
                1 => blob.insert(at, v),
                _ => blob.truncate(at),
            }
        }
        // Re-sign: every stored layer under its (new) digest.
        std::fs::write(p, &blob).expect("write");
        let blobs = dir.path().join("blobs/sha256");
        let layers: Vec<serde_json::Value> = paths.iter().map(|q| {
            let b = std::fs::read(q).expect("blob");
            std::fs::write(blobs.join(hex(&b)), &b).expect("blob");
            json!({"digest": digest(&b), "size": b.len()})
        }).collect();
        let cfg = json!({"digest": digest(&img.config), "size": img.config.len()});
        write_manifest(dir.path(), &cfg, &layers);
        if let Ok(r) = scan(dir.path(), None) {
            check(&r)?;
        }
    }

    /// index.json and docker's manifest.json are not covered by any
    /// digest: any change to them is a report or an error.
    #[test]
    fn corrupted_index_and_manifest_json(img in image(), edits in proptest::collection::vec((any::<Index>(), prop_oneof![any::<char>(), proptest::sample::select(vec!['{', '}', '[', ']', '"', ':', ',', '/', '.'])], 0u8..3), 1..6)) {
        let dir = tempfile::tempdir().expect("tempdir");
        write_oci(dir.path(), &img, Compression::Gzip);
        let mutate = |text: &str| {
            let mut c: Vec<char> = text.chars().collect();
            for (i, ch, op) in &edits {
                let at = i.index(c.len() + 1);
                match op {
                    0 if at < c.len() => c[at] = *ch,
                    1 => c.insert(at, *ch),
                    _ => c.truncate(at),
                }
            }
            c.into_iter().collect::<String>()
        };
        let index = std::fs::read_to_string(dir.path().join("index.json")).expect("index");
        std::fs::write(dir.path().join("index.json"), mutate(&index)).expect("write");
        if let Ok(r) = scan(dir.path(), Some(Kind::OciDir)) {
            check(&r)?;
        }
        let names: Vec<String> = img.layers.iter().map(|l| format!("{}/layer.tar", hex(l))).collect();
        let m = serde_json::to_string(&json!([{"Config": format!("{}.json", hex(&img.config)), "RepoTags": ["localhost/p:1"], "Layers": names}])).expect("m");
        let archive = dir.path().join("docker.tar");
        std::fs::write(&archive, docker_archive(&img, Some(mutate(&m).as_bytes()))).expect("write");
        if let Ok(r) = scan(&archive, Some(Kind::DockerArchive)) {
            check(&r)?;
        }
    }

    /// A whole archive with bytes changed anywhere (headers, sizes, the
    /// index): a report or an error.
    #[test]
    fn corrupted_archives(img in image(), edits in proptest::collection::vec((any::<Index>(), any::<u8>(), 0u8..3), 1..10)) {
        let mut a = docker_archive(&img, None);
        for (i, v, op) in edits {
            let at = i.index(a.len() + 1);
            match op {
                0 if at < a.len() => a[at] = v,
                1 => a.insert(at, v),
                _ => a.truncate(at),
            }
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.tar");
        std::fs::write(&p, &a).expect("write");
        for kind in [None, Some(Kind::DockerArchive), Some(Kind::OciArchive)] {
            if let Ok(r) = scan(&p, kind) {
                check(&r)?;
            }
        }
    }

    /// A root filesystem directory with links to everywhere: the walk never
    /// goes through one, so a file only reachable through a link (here a
    /// marker executable outside the root) is never in the report.
    #[test]
    fn rootfs_links_are_never_followed(entries in proptest::collection::vec(entry(), 0..20)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(outside.join("bin")).expect("mkdir");
        let marker = b"\x7fELF\x02\x01\x01\0marker-outside-the-root";
        std::fs::write(outside.join("bin/marker"), marker).expect("write");
        std::fs::set_permissions(outside.join("bin/marker"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).expect("mkdir");
        std::os::unix::fs::symlink(&outside, root.join("out")).expect("symlink");
        std::os::unix::fs::symlink("../outside/bin", root.join("rel")).expect("symlink");
        for e in &entries {
            let n = match e {
                Entry::Dir(n, _) | Entry::File(n, ..) | Entry::Symlink(n, _) | Entry::Hard(n, _) => n,
                Entry::Fifo(_) => continue,
            };
            let Some(p) = inside_without_links(&root, n) else { continue };
            // The leaf never exists (so nothing is followed): mkdir and
            // symlink fail on an existing name, and create_new is O_EXCL.
            let _ = match e {
                Entry::Dir(..) => std::fs::create_dir(&p),
                Entry::File(_, c, _) => std::fs::OpenOptions::new().write(true).create_new(true).open(&p).and_then(|mut f| f.write_all(c)),
                Entry::Symlink(_, t) | Entry::Hard(_, t) => std::os::unix::fs::symlink(t, &p),
                Entry::Fifo(_) => Ok(()),
            };
        }
        let r = scan(&root, Some(Kind::Rootfs)).expect("a directory scans");
        check(&r)?;
        let marker_hash = hex(marker);
        prop_assert!(r.baseline.executables().iter().all(|f| f.sha256 != marker_hash), "a file outside the root was read");
        prop_assert!(r.baseline.executables().iter().all(|f| !f.path.starts_with("/out/") && !f.path.starts_with("/rel/")));
    }
}

/// Where entry `name` goes under `root` when building a directory tree:
/// None unless every component is plain, every directory on the way is a
/// real directory (created here when missing, never reached through a
/// link) and the name itself is still free. The entries include links to
/// the host's /etc and to `/`: writing through one of them, as root, would
/// write the host.
fn inside_without_links(root: &Path, name: &str) -> Option<PathBuf> {
    let comps: Vec<&str> = name.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    let (leaf, dirs) = comps.split_last()?;
    if comps.contains(&"..") {
        return None;
    }
    let mut p = root.to_path_buf();
    for c in dirs {
        p.push(c);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => return None,
            Err(_) => std::fs::create_dir(&p).ok()?,
        }
    }
    p.push(leaf);
    std::fs::symlink_metadata(&p).is_err().then_some(p)
}

/// A blob that is a link to a host file is refused, not read.
#[test]
fn oci_blobs_are_never_read_through_links() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = Image { layers: vec![layer_tar(&[Entry::File("bin/x".into(), b"x".to_vec(), 0o755)])], config: b"{}".to_vec() };
    let img = Image { config: serde_json::to_vec(&json!({"rootfs": {"diff_ids": [digest(&img.layers[0])]}})).expect("json"), ..img };
    let paths = write_oci(dir.path(), &img, Compression::Plain);
    let secret = dir.path().join("host-file");
    std::fs::copy(&paths[0], &secret).expect("copy");
    std::fs::remove_file(&paths[0]).expect("rm");
    std::os::unix::fs::symlink(&secret, &paths[0]).expect("symlink");
    let e = scan(dir.path(), None).expect_err("a linked blob");
    assert!(e.to_string().contains("symlink"), "{e}");
}

/// JSON documents are bounded in bytes (16 MiB); an index of a million
/// manifests is refused, not held whole.
#[test]
fn a_million_manifests_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = Image { layers: vec![layer_tar(&[])], config: b"{}".to_vec() };
    let img = Image { config: serde_json::to_vec(&json!({"rootfs": {"diff_ids": [digest(&img.layers[0])]}})).expect("json"), ..img };
    write_oci(dir.path(), &img, Compression::Plain);
    let index = std::fs::read_to_string(dir.path().join("index.json")).expect("index");
    let many = index.replacen("\"manifests\":[", &format!("\"manifests\":[{}", "{\"digest\":\"\"},".repeat(1 << 20)), 1);
    std::fs::write(dir.path().join("index.json"), many).expect("write");
    let e = scan(dir.path(), None).expect_err("a million manifests");
    assert!(e.to_string().contains("index.json"), "{e}");
}
