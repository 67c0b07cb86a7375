//! Fixture-tree tests: each runtime's state laid out as the runtime lays it
//! out (committed under `tests/fixtures/<runtime>/`, the podman one copied
//! from a live podman 4.3.1 host), copied into a temp dir that stands for `/`,
//! plus a fake cgroup2 tree whose directory inodes play the cgroup ids.

use super::*;
use lancet_testkit::copy_tree;
use std::os::unix::fs::MetadataExt;

pub(super) const T1: &str = "2e8bdd302d6f3109f54b92f320cfa00a76d6653727e89863aa6329a9cdbbea02";
pub(super) const PROBE: &str = "49601d56870be0f626b3625a1fb7672fcafc43012409076af9fbaae86e0338ce";
pub(super) const UID: &str = "0d3f1c52-9d1b-4f5e-8a4e-2b7c9e6f1a23";

/// A host root with the fixtures of `runtimes` and a cgroup2 tree.
pub(super) struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    pub(super) fn new(runtimes: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for rt in runtimes {
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rt);
            copy_tree(&src, dir.path());
        }
        std::fs::create_dir_all(dir.path().join("sys/fs/cgroup/unified")).unwrap();
        Host { dir }
    }
    pub(super) fn root(&self) -> &Path {
        self.dir.path()
    }
    pub(super) fn cg_root(&self) -> PathBuf {
        self.root().join("sys/fs/cgroup/unified")
    }
    /// Creates a cgroup dir and returns its id (inode).
    pub(super) fn cgroup(&self, path: &str) -> u64 {
        let p = self.cg_root().join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&p).unwrap();
        std::fs::metadata(&p).unwrap().ino()
    }
    pub(super) fn write(&self, host_path: &str, text: &str) {
        let p = self.root().join(host_path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    pub(super) fn attributor(&self) -> Attributor {
        self.attributor_cap(64)
    }
    pub(super) fn attributor_cap(&self, cap: usize) -> Attributor {
        Attributor::new(AttributionConfig { host_root: self.root().to_path_buf(), cgroup2_root: Some(self.cg_root()), cache_capacity: cap })
            .unwrap()
    }
}

fn container(a: Attribution) -> Arc<ContainerInfo> {
    match a {
        Attribution::Container(c) => c,
        other => panic!("expected a container, got {other:?}"),
    }
}

fn unknown_reason(a: Attribution) -> String {
    match a {
        Attribution::Unknown { reason, .. } => reason,
        other => panic!("expected Unknown, got {other:?}"),
    }
}

#[test]
fn podman_real_layout() {
    let h = Host::new(&["podman"]);
    let t1 = h.cgroup(&format!("/libpod_parent/libpod-{T1}"));
    let t1_sub = h.cgroup(&format!("/libpod_parent/libpod-{T1}/container"));
    let probe = h.cgroup(&format!("/libpod_parent/libpod-{PROBE}"));
    let conmon = h.cgroup("/libpod_parent/conmon");
    let sshd = h.cgroup("/system.slice/sshd.service");
    let mut a = h.attributor();
    let found = a.scan().unwrap();
    assert_eq!(found.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["lancet-attr-probe", "t1"]);

    let c = container(a.attribute(t1));
    assert_eq!(c.id, T1);
    assert_eq!(c.short_id(), "2e8bdd302d6f");
    assert_eq!(c.runtime, Runtime::Podman);
    assert_eq!(c.name, "t1");
    assert_eq!(c.image, "localhost/lancet-busybox:test");
    assert_eq!(c.image_id, "402854d84859e760e1084c3effeabfabdfe77099b296f29a1cb8eba5a4d4f441");
    assert_eq!(c.image_digest, "sha256:0f369bda6419665410d1b4bde6bf225ac68fedb2d7c559696d463d1378b46828");
    assert_eq!(c.labels, BTreeMap::from([("app".to_string(), "demo".to_string())]));
    assert_eq!(c.pod, None);
    assert_eq!(c.cgroup_path, format!("/libpod_parent/libpod-{T1}"));
    assert_eq!(c.pid, Some(3977), "pid from libpod's bolt state");
    let proc_ = c.process.as_ref().expect("the OCI spec's process");
    assert_eq!(proc_.args, ["httpd", "-f", "-p", "8080", "-h", "/www"]);
    assert_eq!(proc_.cwd, "/");
    let upper = PathBuf::from("/var/lib/containers/storage/overlay/749c1ce0e70e633d7898507105456ba0e3d833bbf389a399563a89dfeb984633/diff");
    assert_eq!(c.rootfs_paths, vec![upper.clone()]);
    // Its network from libpod's state (netavark's answer at start), not
    // from anything inside the container.
    assert_eq!(c.network.mode, NetMode::Bridge);
    assert_eq!(c.network.networks, ["podman"]);
    assert_eq!(c.network.gateways, ["10.88.0.1".parse::<std::net::IpAddr>().unwrap()]);
    assert!(c.network.dns_servers.is_empty());

    let p = container(a.attribute(probe));
    assert_eq!(p.name, "lancet-attr-probe");
    assert_eq!(p.labels.get("app").map(String::as_str), Some("lancetprobe"));
    assert_eq!(p.labels.get("tier").map(String::as_str), Some("test"));

    assert_eq!(container(a.attribute(t1_sub)).id, T1, "a sub-cgroup belongs to its container");
    assert_eq!(a.attribute(conmon), Attribution::Host);
    assert_eq!(a.attribute(sshd), Attribution::Host);
    let root_id = std::fs::metadata(h.cg_root()).unwrap().ino();
    assert_eq!(a.attribute(root_id), Attribution::Host);

    let (hc, inside) = a.container_for_host_path(&upper.join("etc/passwd")).unwrap();
    assert_eq!((hc.id.as_str(), inside.as_str()), (T1, "/etc/passwd"));
    assert_eq!(a.container_for_host_path(&upper).unwrap().1, "/");
    assert!(a.container_for_host_path(Path::new("/var/lib/containers/storage/overlay/other/diff/x")).is_none());

    assert_eq!(a.find("t1").unwrap().id, T1);
    assert_eq!(a.find("2e8bdd302d6f").unwrap().id, T1);
    assert_eq!(a.find(T1).unwrap().id, T1);
    assert_eq!(a.find("496").unwrap().id, PROBE);
    assert!(a.find("2e").is_none(), "too short a prefix");
    assert!(a.find("nope").is_none());
    assert_eq!(a.containers().count(), 2);

    // The sub-cgroup going away is not the container going away.
    assert!(a.on_cgroup_rmdir(t1_sub, &format!("/libpod_parent/libpod-{T1}/container")).is_none());
    let gone = a.on_cgroup_rmdir(t1, &format!("/libpod_parent/libpod-{T1}")).unwrap();
    assert_eq!(gone.id, T1);
    assert_eq!(a.containers().count(), 1);
    assert!(a.container_for_host_path(&upper.join("etc/passwd")).is_none());
    // … and it comes back with a new cgroup.
    let back = a.on_cgroup_mkdir(4_000_000_001, &format!("/libpod_parent/libpod-{T1}")).unwrap();
    assert_eq!(back.name, "t1");
    assert_eq!(container(a.attribute(4_000_000_001)).id, T1);
    assert!(a.on_cgroup_mkdir(4_000_000_002, &format!("/libpod_parent/libpod-conmon-{T1}")).is_none());
    assert_eq!(a.attribute(4_000_000_002), Attribution::Host);
}

#[test]
fn podman_systemd_and_rootless_layouts() {
    let h = Host::new(&[]);
    // Rootless: storage under the user's home, found through /etc/passwd.
    h.write("/etc/passwd", "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000:Alice:/home/alice:/bin/bash\n");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/podman/var/lib/containers/storage");
    copy_tree(&src, &h.root().join("home/alice/.local/share/containers/storage"));
    let rootless = h.cgroup(&format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{T1}.scope"));
    let mut a = h.attributor();
    let c = container(a.attribute(rootless));
    assert_eq!(c.name, "t1");
    assert_eq!(c.labels.get("app").map(String::as_str), Some("demo"));
    assert_eq!(
        c.rootfs_paths[0],
        PathBuf::from(
            "/home/alice/.local/share/containers/storage/overlay/749c1ce0e70e633d7898507105456ba0e3d833bbf389a399563a89dfeb984633/diff"
        )
    );
    // systemd cgroup manager, inner cgroup of the container.
    let h2 = Host::new(&["podman"]);
    let scope = h2.cgroup(&format!("/machine.slice/libpod-{PROBE}.scope/container"));
    let conmon = h2.cgroup(&format!("/machine.slice/libpod-conmon-{PROBE}.scope"));
    let mut a2 = h2.attributor();
    let c = container(a2.attribute(scope));
    assert_eq!(c.name, "lancet-attr-probe");
    assert_eq!(c.cgroup_path, format!("/machine.slice/libpod-{PROBE}.scope"));
    assert_eq!(a2.attribute(conmon), Attribution::Host);
}

#[test]
fn a_user_cgroup_named_after_a_rootful_container_is_not_that_container() {
    // root's podman runs t1; user 1000 names a cgroup of their own after it.
    let h = Host::new(&["podman", "docker"]);
    h.write("/etc/passwd", "root:x:0:0:root:/root:/bin/bash\nmallory:x:1000:1000::/home/mallory:/bin/sh\n");
    let user = "/user.slice/user-1000.slice/user@1000.service/user.slice";
    let fake = h.cgroup(&format!("{user}/libpod-{T1}.scope"));
    let fake_docker = h.cgroup(&format!("{user}/docker-{DID}.scope"));
    let real = h.cgroup(&format!("/libpod_parent/libpod-{T1}"));
    let mut a = h.attributor();
    assert!(unknown_reason(a.attribute(fake)).contains("rootless"));
    assert!(matches!(a.attribute(fake_docker), Attribution::Unknown { .. }));
    assert_eq!(container(a.attribute(real)).name, "t1");
}

pub(super) const DID: &str = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa99887766554433221100";
const IMG: &str = "sha256:6c4e6b8f1d2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c";
const DIG: &str = "sha256:1f2e3d4c5b6a79880011223344556677889900aabbccddeeff00112233445566";

#[test]
fn docker_layouts() {
    let h = Host::new(&["docker"]);
    let web = h.cgroup(&format!("/system.slice/docker-{DID}.scope"));
    let kd = "5e".repeat(32);
    let k8s = h.cgroup(&format!("/kubepods/burstable/pod{UID}/{kd}"));
    let mut a = h.attributor();
    assert_eq!(a.scan().unwrap().len(), 2);
    let c = container(a.attribute(web));
    assert_eq!(c.runtime, Runtime::Docker);
    assert_eq!(c.name, "web");
    assert_eq!(c.process.as_ref().map(|p| p.args.clone()), Some(vec!["nginx".to_string(), "-g".into(), "daemon off;".into()]));
    assert_eq!(c.image, "nginx:1.25");
    assert_eq!(c.image_id, IMG);
    assert_eq!(c.image_digest, DIG);
    assert_eq!(c.labels.get("com.example.team").map(String::as_str), Some("web"));
    assert_eq!(c.pid, Some(4242));
    assert_eq!(c.pod, None);
    let upper = PathBuf::from("/var/lib/docker/overlay2/9d8c7b6a5f4e3d2c1b0a99887766554433221100ffeeddccbbaa998877665544/diff");
    assert_eq!(c.rootfs_paths, vec![upper.clone()]);
    assert_eq!(a.container_for_host_path(&upper.join("usr/bin/curl")).unwrap().1, "/usr/bin/curl");

    let k = container(a.attribute(k8s));
    assert_eq!(k.runtime, Runtime::Docker);
    let pod = k.pod.clone().unwrap();
    assert_eq!(
        (pod.name.as_str(), pod.namespace.as_str(), pod.uid.as_str(), pod.container_name.as_str()),
        ("frontend-7d9f", "shop", UID, "app")
    );
    assert!(k.rootfs_paths.is_empty(), "no mount-id file: best effort");

    // The cgroupfs docker layout resolves the same container.
    let h2 = Host::new(&["docker"]);
    let d = h2.cgroup(&format!("/docker/{DID}"));
    assert_eq!(container(h2.attributor().attribute(d)).name, "web");
}

#[test]
fn containerd_cri_and_nerdctl() {
    let h = Host::new(&["containerd"]);
    let cid = "c0".repeat(32);
    let sid = "5a".repeat(32);
    let nid = "ab".repeat(32);
    let uid_ = UID.replace('-', "_");
    let api = h.cgroup(&format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{cid}.scope"));
    let pause = h.cgroup(&format!("/kubepods/burstable/pod{UID}/{sid}"));
    let cache = h.cgroup(&format!("/default/{nid}"));
    let mut a = h.attributor();
    assert_eq!(a.scan().unwrap().len(), 3);

    let c = container(a.attribute(api));
    assert_eq!(c.runtime, Runtime::Containerd);
    assert_eq!(c.name, "api");
    assert_eq!(c.image, "registry.example/shop/api:2.1");
    assert_eq!(c.pid, Some(6161));
    let pod = c.pod.clone().unwrap();
    assert_eq!(
        (pod.name.as_str(), pod.namespace.as_str(), pod.uid.as_str(), pod.container_name.as_str()),
        ("api-6c5d8", "shop", UID, "api")
    );
    assert!(c.labels.is_empty(), "CRI annotations are not labels");
    let rootfs = PathBuf::from(format!("/run/containerd/io.containerd.runtime.v2.task/k8s.io/{cid}/rootfs"));
    assert_eq!(c.rootfs_paths, vec![rootfs.clone()]);
    assert_eq!(a.container_for_host_path(&rootfs.join("app")).unwrap().1, "/app");

    let p = container(a.attribute(pause));
    assert_eq!(p.name, "api-6c5d8");
    assert_eq!(p.pod.as_ref().unwrap().container_name, "POD");

    let n = container(a.attribute(cache));
    assert_eq!(n.name, "cache");
    assert_eq!(n.labels.get("com.example.role").map(String::as_str), Some("cache"));
    assert_eq!(n.pid, Some(7171));
    assert_eq!(n.pod, None);
    assert_eq!(a.find("cache").unwrap().id, nid);

    let h2 = Host::new(&["containerd"]);
    let sysd = h2.cgroup(&format!("/system.slice/nerdctl-{nid}.scope"));
    assert_eq!(container(h2.attributor().attribute(sysd)).name, "cache");
}

#[test]
fn crio_layouts() {
    let h = Host::new(&["crio"]);
    let rid = "c7".repeat(32);
    let uid_ = UID.replace('-', "_");
    let slice = format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice");
    let web = h.cgroup(&format!("{slice}/crio-{rid}.scope"));
    let conmon = h.cgroup(&format!("{slice}/crio-conmon-{rid}.scope"));
    let mut a = h.attributor();
    let found = a.scan().unwrap();
    assert_eq!(found.len(), 1);
    let c = container(a.attribute(web));
    assert_eq!(c.runtime, Runtime::Crio);
    assert_eq!(c.name, "web");
    assert_eq!(c.image, "quay.io/example/web:3");
    assert_eq!(c.image_id, "e2".repeat(32));
    assert_eq!(c.image_digest, format!("sha256:{}", "9f".repeat(32)));
    assert_eq!(c.labels.get("io.kubernetes.pod.name").map(String::as_str), Some("web-5b7f"));
    let pod = c.pod.clone().unwrap();
    assert_eq!(
        (pod.name.as_str(), pod.namespace.as_str(), pod.uid.as_str(), pod.container_name.as_str()),
        ("web-5b7f", "shop", UID, "web")
    );
    assert_eq!(c.pid, Some(8181), "pid from runc's state");
    assert_eq!(c.rootfs_paths, vec![PathBuf::from(format!("/var/lib/containers/storage/overlay/{}/diff", "d1".repeat(32)))]);
    assert_eq!(a.attribute(conmon), Attribution::Host);

    let h2 = Host::new(&["crio"]);
    let fs = h2.cgroup(&format!("/kubepods/besteffort/pod{UID}/crio-{rid}"));
    assert_eq!(container(h2.attributor().attribute(fs)).name, "web");
}

#[test]
fn plain_runc_by_cgroup_path() {
    let h = Host::new(&["runc"]);
    let top = h.cgroup("/lancet-attr-test");
    let sub = h.cgroup("/lancet-attr-test/worker");
    let sysd = h.cgroup("/machine.slice/machine-lancet.slice/runc-sysd-ctr.scope");
    let other = h.cgroup("/lancet-attr-testing");
    let mut a = h.attributor();
    let found = a.scan().unwrap();
    assert_eq!(found.len(), 2, "{found:?}");
    let c = container(a.attribute(top));
    assert_eq!(c.runtime, Runtime::Runc);
    assert_eq!(c.id, "lancet-attr-test-ctr");
    assert_eq!(c.name, "lancet-attr-test-ctr");
    assert_eq!(c.pid, Some(9191));
    assert_eq!(c.cgroup_path, "/lancet-attr-test");
    assert_eq!(c.labels.get("bundle").map(String::as_str), Some("/srv/bundles/attr-test"));
    assert_eq!(container(a.attribute(sub)).id, "lancet-attr-test-ctr");
    assert_eq!(container(a.attribute(sysd)).id, "sysd-ctr");
    assert_eq!(a.attribute(other), Attribution::Host, "a prefix match must end at a path component");
    let (_, inside) = a.container_for_host_path(Path::new("/srv/bundles/attr-test/rootfs/bin/sh")).unwrap();
    assert_eq!(inside, "/bin/sh");
    assert_eq!(a.on_cgroup_rmdir(top, "/lancet-attr-test").unwrap().id, "lancet-attr-test-ctr");
}

#[test]
fn a_state_file_naming_another_container_does_not_make_the_cgroup_that_container() {
    let other = "ab".repeat(32);
    let h = Host::new(&["docker", "runc"]);
    let cfg = format!("/var/lib/docker/containers/{DID}/config.v2.json");
    let text = std::fs::read_to_string(h.root().join(cfg.trim_start_matches('/'))).unwrap();
    h.write(&cfg, &text.replacen(&format!("\"ID\": \"{DID}\""), &format!("\"ID\": \"{other}\""), 1));
    let d = h.cgroup(&format!("/system.slice/docker-{DID}.scope"));
    let st = "/run/runc/lancet-attr-test-ctr/state.json";
    let text = std::fs::read_to_string(h.root().join(st.trim_start_matches('/'))).unwrap();
    h.write(st, &text.replacen("\"id\": \"lancet-attr-test-ctr\"", "\"id\": \"sysd-ctr\"", 1));
    let r = h.cgroup("/lancet-attr-test");
    let mut a = h.attributor();
    assert_eq!(container(a.attribute(d)).id, DID);
    assert_eq!(container(a.attribute(r)).id, "lancet-attr-test-ctr");
}

#[test]
fn negative_results_expire_so_late_metadata_is_picked_up() {
    let h = Host::new(&[]);
    let path = format!("/system.slice/docker-{DID}.scope");
    let id = h.cgroup(&path);
    let mut a = h.attributor();
    let t0 = Instant::now();
    assert!(a.on_cgroup_mkdir_at(id, &path, t0).is_none());
    let reason = unknown_reason(a.attribute_at(id, t0));
    assert!(reason.contains(DID), "{reason}");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/docker");
    copy_tree(&src, h.root());
    // Within the TTL the negative answer stands (no re-read)…
    assert!(matches!(a.attribute_at(id, t0 + Duration::from_millis(500)), Attribution::Unknown { .. }));
    // …after it, the files are read again.
    assert_eq!(container(a.attribute_at(id, t0 + Duration::from_secs(2))).name, "web");
}

#[test]
fn malformed_state_gives_unknown_or_partial_info() {
    let h = Host::new(&["podman"]);
    let cpath = "/var/lib/containers/storage/overlay-containers/containers.json";
    let good = std::fs::read_to_string(h.root().join(cpath.trim_start_matches('/'))).unwrap();
    // Truncated containers.json.
    h.write(cpath, &good[..good.len() / 2]);
    let path = format!("/libpod_parent/libpod-{T1}");
    let id = h.cgroup(&path);
    let mut a = h.attributor();
    let t0 = Instant::now();
    let reason = unknown_reason(a.attribute_at(id, t0));
    assert!(reason.contains("containers.json"), "{reason}");
    // containers.json not an array.
    h.write(cpath, "{\"id\": 1}");
    assert!(reason_of(&mut a, id, t0 + Duration::from_secs(2)).contains("no podman runtime state"));
    // metadata string that is not JSON; corrupt bolt db; images.json garbage.
    let bad_meta = good.replace("\"metadata\":\"{", "\"metadata\":\"not json{");
    assert_ne!(bad_meta, good);
    h.write(cpath, &bad_meta);
    h.write("/var/lib/containers/storage/libpod/bolt_state.db", "garbage");
    h.write("/var/lib/containers/storage/overlay-images/images.json", "[{\"id\":");
    let c = container(a.attribute_at(id, t0 + Duration::from_secs(4)));
    assert_eq!(c.name, "t1");
    assert_eq!(c.image_id, "402854d84859e760e1084c3effeabfabdfe77099b296f29a1cb8eba5a4d4f441");
    assert_eq!(c.image, "", "image name lived in the broken metadata");
    assert_eq!(c.image_digest, "");
    assert!(c.labels.is_empty());
    assert_eq!(c.network, NetworkFacts::default(), "no network facts from a corrupt state");
}

#[test]
fn podman_networks_from_the_record_and_netavark_files() {
    use super::bolt::writer::{Val, Writer};
    let h = Host::new(&["podman"]);
    let b = |s: &str| s.as_bytes().to_vec();
    // T1 on two networks, before its state was written (no netavark answer
    // yet), with a `--dns`; the probe joined T1's namespace.
    let t1 = Val::Bucket(vec![
        (b("config"), Val::Bytes(b(r#"{"networkMode":"bridge","createNetNS":true,"dnsServer":["192.0.2.53"]}"#))),
        (b("networks"), Val::Bucket(vec![(b("app"), Val::Bytes(b("{}"))), (b("podman"), Val::Bytes(b("{}")))])),
    ]);
    let probe = Val::Bucket(vec![(b("config"), Val::Bytes(b(&format!(r#"{{"netNsCtr":"{T1}","createNetNS":false}}"#))))]);
    let db = Writer::new(4096).finish(&[(b("ctr"), Val::Bucket(vec![(b(T1), t1), (b(PROBE), probe)]))], true);
    let db_path = h.root().join("var/lib/containers/storage/libpod/bolt_state.db");
    std::fs::write(&db_path, db).unwrap();
    h.write("/etc/containers/networks/app.json", r#"{"name": "app", "subnets": [{"subnet": "10.89.3.0/24", "gateway": "10.89.3.1"}]}"#);
    let t1_cg = h.cgroup(&format!("/libpod_parent/libpod-{T1}"));
    let probe_cg = h.cgroup(&format!("/libpod_parent/libpod-{PROBE}"));
    let mut a = h.attributor();
    let c = container(a.attribute(t1_cg));
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    assert_eq!(c.network.mode, NetMode::Bridge);
    assert_eq!(c.network.networks, ["app", "podman"]);
    assert_eq!(c.network.gateways, [ip("10.89.3.1"), ip("10.88.0.1")], "app's file, and podman's default network");
    assert_eq!(c.network.dns_servers, [ip("192.0.2.53")]);
    assert_eq!(container(a.attribute(probe_cg)).network, c.network, "the namespace it joined");

    // A network file naming another network, and one that is a FIFO: no
    // gateway, no hang.
    h.write("/etc/containers/networks/app.json", r#"{"name": "other", "subnets": [{"gateway": "10.89.3.1"}]}"#);
    let mut a = h.attributor();
    assert_eq!(container(a.attribute(t1_cg)).network.gateways, [ip("10.88.0.1")]);
    let fifo = h.root().join("etc/containers/networks/app.json");
    std::fs::remove_file(&fifo).unwrap();
    if std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success()) {
        let mut a = h.attributor();
        assert_eq!(container(a.attribute(t1_cg)).network.gateways, [ip("10.88.0.1")]);
    }
}

fn reason_of(a: &mut Attributor, id: u64, now: Instant) -> String {
    unknown_reason(a.attribute_at(id, now))
}

#[test]
fn vanished_and_garbage_files_never_panic() {
    let h = Host::new(&["docker", "runc", "containerd"]);
    // Docker config garbage, secondary files missing.
    h.write(&format!("/var/lib/docker/containers/{DID}/config.v2.json"), "\u{0}\u{1}{{{");
    let d = h.cgroup(&format!("/docker/{DID}"));
    std::fs::remove_file(h.root().join("var/lib/docker/image/overlay2/repositories.json")).unwrap();
    let kd = "5e".repeat(32);
    let k = h.cgroup(&format!("/kubepods/pod{UID}/{kd}"));
    // runc state that is not JSON; a bundle config that is JSON but the wrong shape.
    h.write("/run/runc/broken/state.json", "[1,2");
    h.write(&format!("/run/containerd/io.containerd.runtime.v2.task/k8s.io/{}/config.json", "c0".repeat(32)), "[\"annotations\"]");
    let cd = h.cgroup(&format!("/kubepods/pod{UID}/{}", "c0".repeat(32)));
    let host = h.cgroup("/some/host/group");
    let mut a = h.attributor();
    let found = a.scan().unwrap();
    assert!(found.iter().all(|c| c.id != DID));
    assert!(unknown_reason(a.attribute(d)).contains("config.v2.json"));
    let kc = container(a.attribute(k));
    assert_eq!(kc.image_digest, "", "repositories.json vanished: no digest, still a container");
    let c = container(a.attribute(cd));
    // No name in the spec: named by its id, as `ctr` names containers.
    assert_eq!((c.runtime, c.name.as_str()), (Runtime::Containerd, "c0".repeat(32).as_str()));
    assert_eq!(a.attribute(host), Attribution::Host);
    // An id never seen: Unknown without a path.
    match a.attribute(u64::MAX - 7) {
        Attribution::Unknown { cgroup_path: None, .. } => {}
        other => panic!("{other:?}"),
    }
    assert!(matches!(a.attribute(0), Attribution::Unknown { .. }));
    // A container dir removed after the scan: the cached answer stands, a
    // new cgroup for it is Unknown.
    std::fs::remove_dir_all(h.root().join(format!("var/lib/docker/containers/{kd}"))).unwrap();
    assert_eq!(container(a.attribute(k)).id, kd);
    a.on_cgroup_rmdir(k, &format!("/kubepods/pod{UID}/{kd}"));
    assert!(a.on_cgroup_mkdir(k + 1_000_000, &format!("/kubepods/pod{UID}/{kd}")).is_none());
    assert!(matches!(a.attribute(k + 1_000_000), Attribution::Unknown { .. }));
    // Garbage paths from the kernel.
    for p in ["", "no-leading-slash", "/\u{0}", &"/x".repeat(5000)] {
        assert!(a.on_cgroup_mkdir(42, p).is_none());
        a.on_cgroup_rmdir(42, p);
    }
}

#[test]
fn caches_are_bounded() {
    let h = Host::new(&["podman"]);
    let mut a = h.attributor_cap(16);
    for i in 0..500u64 {
        a.on_cgroup_mkdir(1_000 + i, &format!("/system.slice/unit-{i}.service"));
        let _ = a.attribute(1_000 + i);
        let _ = a.attribute(1_000_000 + i); // misses: negative entries
    }
    assert!(a.paths.len() <= 16);
    assert!(a.results.len() <= 16);
    assert!(a.negative.len() <= 16);
    assert!(a.paths.order.len() <= 2 * 16 + 64 + 1);
    let t1 = h.cgroup(&format!("/libpod_parent/libpod-{T1}"));
    a.on_cgroup_mkdir(t1, &format!("/libpod_parent/libpod-{T1}")).unwrap();
    assert_eq!(container(a.attribute(t1)).name, "t1");
}

/// A user names a cgroup of their own after root's container (its id is in
/// the world-readable /proc/<pid>/cgroup): their processes there are not
/// the container's, whether the container is known already or not.
#[test]
fn a_users_cgroup_named_after_roots_container_is_not_it() {
    let h = Host::new(&["podman"]);
    h.write("/etc/passwd", "root:x:0:0:root:/root:/bin/bash\nmallory:x:1000:1000::/home/mallory:/bin/sh\n");
    let real = h.cgroup(&format!("/libpod_parent/libpod-{T1}"));
    let fake = h.cgroup(&format!("/user.slice/user-1000.slice/user@1000.service/app.slice/libpod-{T1}.scope"));
    // Not known yet: the user's cgroup is looked up first.
    let mut a = h.attributor();
    let why = unknown_reason(a.attribute(fake));
    assert!(why.contains("uid 1000"), "{why}");
    assert_eq!(container(a.attribute(real)).id, T1);
    // Known: the cached container is not handed to the user's cgroup either.
    let mut a = h.attributor();
    assert_eq!(container(a.attribute(real)).id, T1);
    let why = unknown_reason(a.attribute(fake));
    assert!(why.contains("user's manager") || why.contains("uid 1000"), "{why}");
    assert_eq!(container(a.attribute(real)).cgroup_path, format!("/libpod_parent/libpod-{T1}"));
}

/// The same, with a cgroup delegated to a user outside any user manager
/// (a chowned subtree): its directory is the user's, so it is not root's
/// container. Needs root, to give the directory away.
#[test]
fn root_a_delegated_cgroup_named_after_roots_container_is_not_it() {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1) != 0 {
        lancet_testkit::skip("not root: a cgroup directory cannot be given to another user");
        return;
    }
    let h = Host::new(&["podman"]);
    let real = h.cgroup(&format!("/libpod_parent/libpod-{T1}"));
    let delegated = h.cg_root().join("delegated");
    let fake = h.cgroup(&format!("/delegated/libpod-{T1}"));
    for d in [delegated.clone(), delegated.join(format!("libpod-{T1}"))] {
        std::os::unix::fs::chown(&d, Some(1000), Some(1000)).unwrap();
    }
    let mut a = h.attributor();
    assert_eq!(container(a.attribute(real)).id, T1);
    let why = unknown_reason(a.attribute(fake));
    assert!(why.contains("belongs to uid 1000"), "{why}");
    let mut a = h.attributor();
    let why = unknown_reason(a.attribute(fake));
    assert!(why.contains("belongs to uid 1000"), "{why}");
}

#[test]
fn cgroup2_root_detection() {
    let h = Host::new(&[]);
    h.write("/proc/self/mountinfo", "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n");
    let a = Attributor::new(AttributionConfig { host_root: h.root().into(), cgroup2_root: None, cache_capacity: 8 }).unwrap();
    assert_eq!(a.cgroup2_root(), h.cg_root());
    let empty = tempfile::tempdir().unwrap();
    assert!(Attributor::new(AttributionConfig { host_root: empty.path().into(), cgroup2_root: None, cache_capacity: 8 }).is_err());
    std::fs::create_dir_all(empty.path().join("sys/fs/cgroup")).unwrap();
    let a = Attributor::new(AttributionConfig { host_root: empty.path().into(), cgroup2_root: None, cache_capacity: 8 }).unwrap();
    assert_eq!(a.cgroup2_root(), empty.path().join("sys/fs/cgroup"));
}

#[test]
fn runtime_names_serialize_lowercase() {
    assert_eq!(serde_json::to_string(&Runtime::Crio).unwrap(), "\"crio\"");
    assert_eq!(Runtime::Containerd.to_string(), "containerd");
    let c = ContainerInfo { id: "abc".into(), ..Default::default() };
    assert_eq!(c.short_id(), "abc");
}

#[test]
fn real_podman_host() {
    let is_root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false);
    if !is_root {
        println!("skipped: not root");
        return;
    }
    let has_image = std::process::Command::new("podman")
        .args(["image", "exists", "localhost/lancet-busybox:test"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !has_image {
        println!("skipped: podman or image localhost/lancet-busybox:test absent");
        return;
    }
    let out = std::process::Command::new("podman")
        .args(["run", "-d", "--label", "lancet.test=attribution", "--label", "tier=probe", "localhost/lancet-busybox:test", "sleep", "120"])
        .output()
        .unwrap();
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || id.len() != 64 {
        println!("skipped: podman run failed: {}", String::from_utf8_lossy(&out.stderr));
        return;
    }
    let _removed_at_end = lancet_testkit::podman::Container::adopt(&id);
    let mut a = Attributor::new(AttributionConfig::default()).unwrap();
    let found = a.scan().unwrap();
    let c = found.iter().find(|c| c.id == id).unwrap_or_else(|| panic!("{id} not among {found:?}"));
    assert_eq!(c.runtime, Runtime::Podman);
    assert_eq!(c.image, "localhost/lancet-busybox:test");
    assert!(c.image_digest.starts_with("sha256:"), "{c:?}");
    assert_eq!(c.labels.get("lancet.test").map(String::as_str), Some("attribution"));
    assert_eq!(c.labels.get("tier").map(String::as_str), Some("probe"));
    let pid = c.pid.expect("init pid");
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let v2 = cg.lines().find_map(|l| l.strip_prefix("0::")).unwrap().to_string();
    let ino = std::fs::metadata(a.cgroup2_root().join(v2.trim_start_matches('/'))).unwrap().ino();
    assert_eq!(container(a.attribute(ino)).id, id);
    let upper = &c.rootfs_paths[0];
    assert!(upper.is_dir(), "overlay upper dir {upper:?} exists on the host");
    // The network as podman reports it.
    let fmt = "{{range $n, $v := .NetworkSettings.Networks}}{{$n}} {{$v.Gateway}}{{end}}";
    let out = std::process::Command::new("podman").args(["inspect", "-f", fmt, &id]).output().unwrap();
    let inspect = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (net, gw) = inspect.split_once(' ').unwrap_or_else(|| panic!("podman inspect: {inspect:?}"));
    assert_eq!(c.network.networks, [net], "{:?}", c.network);
    assert_eq!(c.network.gateways, [gw.parse::<std::net::IpAddr>().unwrap()], "{:?}", c.network);
    assert_eq!(c.network.mode, NetMode::Bridge);
    assert_eq!(a.container_for_host_path(&upper.join("tmp/x")).unwrap().1, "/tmp/x");
}

/// `ctr run --label app=web localhost/lancet-busybox:test web` on
/// containerd 1.6.20 (the fixture's task bundle and both BoltDB stores are
/// copies from that host): the id is no hex id, so no cgroup naming scheme
/// names it, and its spec carries no image; the cgroup `/lancet-ctr/web` is
/// matched by the task's own cgroupsPath, and meta.db and the overlayfs
/// snapshotter's store say the image, its digest and id, and where the
/// container's writes land.
#[test]
fn containerd_ctr_run_from_its_metadata_stores() {
    let h = Host::new(&["containerd-ctr"]);
    let cg = h.cgroup("/lancet-ctr/web");
    let other = h.cgroup("/lancet-ctr/gone");
    let mut a = h.attributor();
    assert_eq!(a.scan().unwrap().len(), 1);
    let c = container(a.attribute(cg));
    assert_eq!((c.runtime, c.id.as_str(), c.name.as_str()), (Runtime::Containerd, "web", "web"));
    assert_eq!(c.image, "localhost/lancet-busybox:test");
    assert_eq!(c.image_digest, "sha256:f3d5f9fd5b922c01625ff366d4598214a01687bacbbc192cdf1fd956d8504127");
    assert_eq!(c.image_id, "sha256:00be0d1b87fedcc7223e3919d7304cf84d1fabb8b9d81bf0c1e7a9804cc63379", "the manifest's config");
    assert_eq!(c.labels.get("app").map(String::as_str), Some("web"));
    assert!(!c.labels.keys().any(|k| k.starts_with("containerd.io/") || k.starts_with("io.containerd.")), "{:?}", c.labels);
    assert_eq!(c.cgroup_path, "/lancet-ctr/web");
    assert_eq!(c.pid, Some(4242));
    let upper = PathBuf::from("/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/4/fs");
    assert_eq!(c.rootfs_paths, vec![upper.clone()]);
    assert_eq!(c.upper_dir(), Some(upper.as_path()));
    assert_eq!(a.container_for_host_path(&upper.join("tmp/x")).unwrap().1, "/tmp/x");
    assert_eq!(a.attribute(other), Attribution::Host, "a cgroup no task names");

    // Without the stores (a host where containerd's root is elsewhere):
    // named after its id, its root the mounted bundle rootfs, as before.
    std::fs::remove_dir_all(h.root().join("var/lib/containerd")).unwrap();
    let mut a = h.attributor();
    let c = container(a.attribute(cg));
    assert_eq!((c.name.as_str(), c.image.as_str()), ("web", ""));
    assert_eq!(c.rootfs_paths, vec![PathBuf::from("/run/containerd/io.containerd.runtime.v2.task/lancet-ctr/web/rootfs")]);
    assert_eq!(c.upper_dir(), None);
}
