//! Immutability with read-only mounts on the real kernel, as root, against
//! real podman containers: what is refused (EROFS/EPERM) in the protected
//! set and what keeps working everywhere else, a service that keeps
//! serving with its logs open, carve-outs and plan updates, the
//! container's writable set as read from inside it, the OCI-hook path
//! (before `pivot_root`), and the undo leaving `/proc/<pid>/mountinfo`
//! exactly as it was. Guards
//! remove every container and network a test creates, even when it fails.
//! Prints (does not assert) what apply and release cost and what a
//! create+write+unlink loop costs with and without immutability.

use lancet_engine::write_sets::{protected_dirs, WritableKind};
use lancet_sensor::enforce::{apply_immutable, release_immutable, update_immutable, Applied, ImmutablePlan};
use lancet_sensor::mounts::{has_cap_sys_admin, writable_set, MountError, RunAs};
use lancet_testkit::podman::{podman, unique, Container, Network};
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const BUSYBOX: &str = "localhost/lancet-busybox:test";
const DEBIAN: &str = "localhost/lancet-debian:test";

fn skip(images: &[&str]) -> Option<String> {
    if !lancet_sensor::features::is_root() {
        return Some("not root".into());
    }
    if Command::new("podman").arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        return Some("podman is not installed".into());
    }
    for image in images {
        if !Command::new("podman").args(["image", "exists", image]).status().map(|s| s.success()).unwrap_or(false) {
            return Some(format!("test image {image} missing (scripts/setup.sh builds it)"));
        }
    }
    if let Err(e) = lancet_sensor::mounts::mount_setattr_supported() {
        return Some(e);
    }
    None
}

macro_rules! skip_unless_ready {
    ($($img:expr),*) => {
        if let Some(why) = skip(&[$($img),*]) {
            lancet_testkit::skip(&why);
            return;
        }
    };
}

/// What a test expects of a command in the container.
trait Expect {
    /// Runs `script`, which must succeed; its stdout.
    fn ok(&self, script: &str) -> String;
    /// Runs `script`, which the kernel must refuse with EROFS or EPERM.
    fn refused(&self, script: &str);
}

impl Expect for Container {
    fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(out.status.success(), "`{script}` failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn refused(&self, script: &str) {
        let out = self.sh(script);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "`{script}` was not refused");
        assert!(err.contains("Read-only file system") || err.contains("Operation not permitted"), "`{script}` failed otherwise: {err}");
    }
}

fn mountinfo(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo")
}

/// This thread's and the process's mount namespaces and this thread's
/// root: the mount thread must leave all three alone.
fn own_namespace() -> (String, String, u64) {
    use std::os::unix::fs::MetadataExt;
    let ns = |p: &str| std::fs::read_link(p).expect(p).to_string_lossy().into_owned();
    (ns("/proc/self/ns/mnt"), ns("/proc/thread-self/ns/mnt"), std::fs::metadata("/").expect("/").ino())
}

/// The protected set read-only, `writable` carved out of it.
fn plan(writable: &[&str]) -> ImmutablePlan {
    ImmutablePlan {
        root: None,
        read_only: protected_dirs().map(str::to_string).collect(),
        writable: writable.iter().map(|s| s.to_string()).collect(),
        console: false,
    }
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed().as_secs_f64() * 1e3)
}

/// Writes in the protected set, refused.
fn assert_refused_protected(c: &Container) {
    c.refused("echo x > /etc/lancet-new");
    c.refused("echo x >> /etc/lancet-victim");
    c.refused("echo x > /bin/lancet-new");
    c.refused("echo x > /root/.ssh/authorized_keys");
    c.refused("touch /dev/lancet-new");
    c.refused("chmod u+s /etc/lancet-victim");
    c.refused("rm /etc/lancet-victim");
    c.refused("mv /etc/lancet-victim /etc/lancet-moved");
    c.refused("mkdir /etc/lancet-dir");
    c.refused("ln -s /tmp /etc/lancet-link");
    c.refused("ln /etc/lancet-victim /etc/lancet-hard");
}

#[test]
fn busybox_protected_set_read_only_then_undone() {
    skip_unless_ready!(BUSYBOX);
    let volume = tempfile::tempdir().expect("volume dir");
    let mount = format!("{}:/data", volume.path().display());
    let c = Container::run(&["--name", &unique("lancet-imm-bb"), "--tmpfs", "/scratch", "-v", &mount, BUSYBOX, "sleep", "3600"]);
    c.ok("mkdir -p /root/.ssh /var/lib/app && echo v > /etc/lancet-victim");
    let pid = c.pid();
    let before = mountinfo(pid);
    let ns_before = own_namespace();

    let (a, apply_ms) = timed(|| apply_immutable(pid, &plan(&[])).expect("apply"));
    assert_eq!(own_namespace(), ns_before, "the caller's namespace or root changed");
    assert!(a.skipped.is_empty(), "{:?}", a.skipped);
    assert_eq!(a.read_only, ["/bin", "/etc", "/lib", "/lib64", "/root", "/usr"], "{a:#?}");
    let ro: Vec<&str> = a.made_read_only().map(|(p, _)| p).collect();
    assert_eq!(ro, ["/dev"]);

    assert_refused_protected(&c);
    // Everything else is the service's normal life: data, scratch, new
    // entries at the top, /dev/shm.
    c.ok("echo x > /tmp/ok && cat /tmp/ok && mkdir /tmp/d && mv /tmp/ok /tmp/d/ok && chmod 600 /tmp/d/ok && rm -r /tmp/d");
    c.ok("echo x > /var/lib/app/db && rm /var/lib/app/db && echo x > /lancet-new && rm /lancet-new");
    c.ok("touch /dev/shm/x && rm /dev/shm/x");
    c.ok("echo x > /dev/null && head -c 1 /dev/zero > /dev/null");
    // The runtime's own file binds inside /etc came along writable.
    c.ok("echo '# lancet test' >> /etc/hosts && cat /etc/resolv.conf /etc/hostname /run/.containerenv > /dev/null");
    c.ok("cat /proc/self/status > /dev/null");
    c.ok("echo x > /data/f && rm /data/f && echo x > /scratch/f && rm /scratch/f");
    assert!(c.running());

    let (released, release_ms) = timed(|| release_immutable(pid, &a));
    released.expect("release");
    assert_eq!(own_namespace(), ns_before);
    assert_eq!(mountinfo(pid), before, "mountinfo differs after release");
    c.ok("echo x > /etc/lancet-new && rm /etc/lancet-new /etc/lancet-victim && touch /dev/x && rm /dev/x");
    println!("busybox: apply {apply_ms:.2} ms, release {release_ms:.2} ms ({} steps)", a.steps.len());
}

#[test]
fn the_writable_set_from_inside_the_container() {
    skip_unless_ready!(BUSYBOX);
    let volume = tempfile::tempdir().expect("volume dir");
    let mount = format!("{}:/data", volume.path().display());
    let c = Container::run(&["--tmpfs", "/scratch", "-v", &mount, "-v", "/etc/hostname:/srv/host-file:ro", BUSYBOX, "sleep", "3600"]);
    c.ok("mkdir -p /var/lib/app /var/log/app /etc/app /etc/cron.d /srv/shared && chown 33:33 /var/lib/app /etc/app /etc/cron.d && chmod 1777 /srv/shared && chown 0:33 /var/log/app && chmod 775 /var/log/app && ln -s /etc /var/lib/link");
    let set = writable_set(c.pid(), None, Some(RunAs { uid: 33, gid: 33 })).expect("writable set");
    let kind = |p: &str| set.dirs().iter().find(|d| d.path == p).map(|d| d.kind);
    assert_eq!(kind("/data"), Some(WritableKind::Mount), "{set:#?}");
    assert_eq!(kind("/scratch"), Some(WritableKind::Mount));
    assert_eq!(kind("/var/lib/app"), Some(WritableKind::Owned));
    assert_eq!(kind("/var/log/app"), Some(WritableKind::Owned), "group-writable for the service's group");
    assert_eq!(kind("/srv/shared"), Some(WritableKind::Shared));
    assert_eq!(kind("/tmp"), Some(WritableKind::Shared), "scratch, and 1777 too");
    // A read-only mount, a file bind and a symlink are not writable places.
    assert_eq!(kind("/srv/host-file"), None);
    assert_eq!(kind("/var/lib/link"), None);
    // The service's /etc/app is carved out of the protected set; cron is not.
    let carve: Vec<&str> = set.carve_outs().map(|d| d.path.as_str()).collect();
    assert_eq!(carve, ["/etc/app"]);
    // Run as root: nothing is "owned by the service".
    let root = writable_set(c.pid(), None, None).expect("writable set");
    assert!(!root.dirs().iter().any(|d| d.kind == WritableKind::Owned), "{root:#?}");
}

#[test]
fn gone_process_is_a_clear_error() {
    skip_unless_ready!(BUSYBOX);
    let c = Container::run(&[BUSYBOX, "sleep", "3600"]);
    let pid = c.pid();
    podman(&["rm", "-f", "-t", "0", &c.id]);
    match apply_immutable(pid, &plan(&[])) {
        Err(MountError::ProcessGone { pid: p }) => assert_eq!(p, pid),
        other => panic!("expected ProcessGone, got {other:?}"),
    }
    assert!(matches!(apply_immutable(u32::MAX - 1, &plan(&[])), Err(MountError::ProcessGone { .. })));
}

/// The container's address on `net`.
fn address(c: &Container, net: &Network) -> String {
    podman(&["inspect", "-f", &format!("{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}", net.0), &c.id])
}

/// GET / from the host; the response's status line.
fn http_get(addr: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect_timeout(&format!("{addr}:80").parse().expect("addr"), Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(b"GET / HTTP/1.0\r\nHost: lancet\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        })();
        match attempt {
            Ok(b) if !b.is_empty() => return b.lines().next().unwrap_or_default().to_string(),
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            other => panic!("no answer from {addr}:80: {other:?}"),
        }
    }
}

/// Writes in the protected set of a glibc Debian root, refused; a
/// service's own life, allowed.
fn assert_debian_protected(c: &Container) {
    c.refused("echo x > /etc/lancet-new");
    c.refused("echo x > /usr/bin/lancet-new");
    // /bin is a symlink to usr/bin (merged /usr): refused through it.
    c.refused("echo x > /bin/lancet-new");
    c.refused("echo x > /root/lancet-new");
    c.refused("chmod u+s /usr/bin/env");
    c.refused("rm /etc/nginx/nginx.conf");
    c.refused("echo x >> /var/lib/dpkg/status");
    c.refused("touch /dev/lancet-new");
    c.ok("echo x > /var/log/nginx/lancet && rm /var/log/nginx/lancet && echo x > /run/lancet && rm /run/lancet");
    c.ok("echo x > /var/cache/lancet && rm /var/cache/lancet && echo x > /lancet-new && rm /lancet-new");
}

#[test]
fn nginx_keeps_serving_with_its_logs_open() {
    skip_unless_ready!(DEBIAN);
    let net = Network::create(&unique("lancet-imm"));
    let c = Container::run(&["--network", &net.0, "--name", &unique("lancet-imm-ngx"), DEBIAN]);
    let ip = address(&c, &net);
    assert!(http_get(&ip).contains("200"));
    let pid = c.pid();
    let before = mountinfo(pid);
    let (a, ms) = timed(|| apply_immutable(pid, &plan(&[])).expect("apply"));
    assert!(a.skipped.is_empty(), "{:?}", a.skipped);
    for d in ["/etc", "/usr", "/root", "/var/lib/dpkg", "/var/lib/apt"] {
        assert!(a.read_only.iter().any(|p| p == d), "{d} not read-only: {a:#?}");
    }
    // Its open logs are not in the protected set: nobody keeps a
    // protected file open.
    assert!(a.writers.is_empty(), "{:?}", a.writers);
    assert_debian_protected(&c);
    assert!(http_get(&ip).contains("200"));
    c.ok("test -s /run/nginx.pid && test -s /var/log/nginx/access.log && cat /run/.containerenv >/dev/null");
    assert!(c.running());
    release_immutable(pid, &a).expect("release");
    assert_eq!(mountinfo(pid), before, "mountinfo differs after release");
    c.ok("echo x > /etc/lancet-new && rm /etc/lancet-new");
    assert!(http_get(&ip).contains("200"));
    println!("nginx: apply {ms:.2} ms, {} steps", a.steps.len());
}

#[test]
fn carve_outs_and_plan_updates() {
    skip_unless_ready!(BUSYBOX);
    let c = Container::run(&[BUSYBOX, "sleep", "3600"]);
    c.ok("mkdir -p /etc/app /etc/cron.d && echo v > /etc/lancet-victim && ln -s /etc/cron.d /etc/link");
    let pid = c.pid();
    let before = mountinfo(pid);
    let a = apply_immutable(pid, &plan(&["/etc/app", "/etc/link", "/etc/missing"])).expect("apply");
    assert_eq!(a.writable, ["/etc/app"]);
    // A symlinked carve-out does not redirect a writable bind onto what it
    // points at (cron); a missing one is said.
    let skipped: Vec<&str> = a.skipped.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(skipped, ["/etc/link", "/etc/missing"], "{:?}", a.skipped);
    assert!(a.skipped[0].reason.contains("ELOOP"), "{:?}", a.skipped);
    c.ok("echo x > /etc/app/f");
    c.refused("echo x > /etc/lancet-new");
    c.refused("echo x > /etc/link/x");
    // Unchanged plan: nothing done.
    let same = update_immutable(pid, &a, &plan(&["/etc/app", "/etc/link", "/etc/missing"])).expect("update");
    assert_eq!(same.steps, a.steps);
    // The carve-out dropped: /etc/app is read-only too.
    let b = update_immutable(pid, &a, &plan(&[])).expect("update");
    c.refused("echo x > /etc/app/g");
    c.refused("echo x > /etc/lancet-new");
    // And back.
    let d = update_immutable(pid, &b, &plan(&["/etc/app"])).expect("update");
    c.ok("echo x > /etc/app/g");
    release_immutable(pid, &d).expect("release");
    assert_eq!(mountinfo(pid), before, "mountinfo differs after release");
    c.ok("rm /etc/app/f /etc/app/g && echo x > /etc/lancet-new && rm /etc/lancet-new");
}

#[test]
fn cap_sys_admin_is_detected() {
    skip_unless_ready!(BUSYBOX);
    let plain = Container::run(&[BUSYBOX, "sleep", "3600"]);
    let admin = Container::run(&["--cap-add", "SYS_ADMIN", BUSYBOX, "sleep", "3600"]);
    assert!(!has_cap_sys_admin(plain.pid()).expect("status"));
    assert!(has_cap_sys_admin(admin.pid()).expect("status"));
}

/// The OCI `createRuntime` hook, run by podman as this test binary: the
/// container's process is `runc init` before `pivot_root`, its root the
/// bundle's `root.path` inside its namespace. Does nothing unless run so.
#[test]
fn hook_entry() {
    let Ok(out) = std::env::var("LANCET_MOUNTS_HOOK_OUT") else { return };
    let mut state = String::new();
    std::io::stdin().read_to_string(&mut state).expect("state on stdin");
    let result = (|| -> Result<Applied, String> {
        let state: serde_json::Value = serde_json::from_str(&state).map_err(|e| e.to_string())?;
        let pid = state["pid"].as_u64().ok_or("no pid")? as u32;
        let bundle = Path::new(state["bundle"].as_str().ok_or("no bundle")?).to_path_buf();
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(bundle.join("config.json")).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        let root = config["root"]["path"].as_str().ok_or("no root.path")?;
        let root = if root.starts_with('/') { root.into() } else { bundle.join(root) };
        // Whether the container has a terminal is not looked up: unknown
        // counts as yes.
        let plan = ImmutablePlan { root: Some(root), console: true, ..plan(&[]) };
        apply_immutable(pid, &plan).map_err(|e| e.to_string())
    })();
    let json = match &result {
        Ok(a) => serde_json::json!({"applied": a}),
        Err(e) => serde_json::json!({"error": e}),
    };
    std::fs::write(out, json.to_string()).expect("write the hook's result");
}

/// A hooks directory that runs [`hook_entry`] at `createRuntime`.
struct Hook {
    dir: tempfile::TempDir,
    out: std::path::PathBuf,
}

impl Hook {
    fn new() -> Hook {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("applied.json");
        let exe = std::env::current_exe().expect("test binary");
        let doc = serde_json::json!({
            "version": "1.0.0",
            "hook": {
                "path": exe,
                "args": ["mounts_root", "hook_entry", "--exact", "--nocapture", "--test-threads=1"],
                "env": [format!("LANCET_MOUNTS_HOOK_OUT={}", out.display())],
                "timeout": 20
            },
            "when": {"always": true},
            "stages": ["createRuntime"]
        });
        std::fs::write(dir.path().join("lancet-mounts-test.json"), doc.to_string()).expect("hook file");
        Hook { dir, out }
    }

    fn applied(&self) -> Applied {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&self.out).expect("the hook ran")).expect("json");
        if let Some(e) = v.get("error") {
            panic!("apply at the hook failed: {e}");
        }
        serde_json::from_value(v["applied"].clone()).expect("applied")
    }
}

#[test]
fn applied_at_the_oci_hook_before_pivot_root() {
    skip_unless_ready!(BUSYBOX);
    for tty in [false, true] {
        let hook = Hook::new();
        let name = unique("lancet-imm-hook");
        // Named first, so it is removed even when it fails to start.
        let c = Container::adopt(&name);
        let mut args = vec!["--hooks-dir", hook.dir.path().to_str().expect("utf-8"), "run", "-d", "--name", &name];
        if tty {
            args.push("-t");
        }
        args.extend([BUSYBOX, "sleep", "3600"]);
        let out = Command::new("podman").args(&args).output().expect("podman run");
        assert!(out.status.success(), "tty {tty}: the container did not start: {}", String::from_utf8_lossy(&out.stderr));
        let a = hook.applied();
        assert!(a.read_only.iter().any(|p| p == "/etc"), "{a:#?}");
        assert!(c.running());
        c.refused("echo x > /etc/lancet-new");
        c.refused("echo x > /bin/lancet-new");
        c.refused("touch /dev/lancet-new");
        c.ok("echo x > /tmp/ok && rm /tmp/ok && echo x > /dev/null && echo '# t' >> /etc/hosts && touch /dev/shm/x && rm /dev/shm/x");
        // The runtime opened the /dev/console lancet created and mounted
        // the terminal on it; without a terminal it is a null device.
        c.ok("test -c /dev/console && echo x > /dev/console");
        let pid = c.pid();
        // The same namespace, now pivoted: no root path needed to undo.
        release_immutable(pid, &a).expect("release");
        let mi = mountinfo(pid);
        for (_, id, _) in a.added() {
            assert!(!mi.lines().any(|l| l.starts_with(&format!("{id} "))), "mount {id} is still there:\n{mi}");
        }
        let dev = mi.lines().find(|l| l.split(' ').nth(4) == Some("/dev")).expect("/dev mount");
        assert!(dev.split(' ').nth(5).is_some_and(|o| o.starts_with("rw")), "{dev}");
        c.ok("echo x > /etc/lancet-new && rm /etc/lancet-new && touch /dev/x && rm /dev/x");
        // Without a terminal, the device lancet created is gone again.
        assert_eq!(c.sh("test -e /dev/console").status.success(), tty);
    }
}

/// Median of a create+write+close+unlink loop (µs per iteration) run by
/// python3 inside the container.
fn file_loop(c: &Container, dir: &str, n: u32) -> f64 {
    let script = format!(
        "import os,time\nt=time.perf_counter()\nfor i in range({n}):\n fd=os.open('{dir}/lancet-loop',os.O_CREAT|os.O_WRONLY|os.O_TRUNC,0o644)\n os.write(fd,b'x'*64)\n os.close(fd)\n os.unlink('{dir}/lancet-loop')\nprint((time.perf_counter()-t)*1e6/{n})\n"
    );
    let out = Command::new("podman").args(["exec", &c.id, "python3", "-c", &script]).output().expect("podman exec");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("µs per iteration")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn cost_of_immutability() {
    skip_unless_ready!(DEBIAN);
    let c = Container::run(&["--name", &unique("lancet-imm-cost"), DEBIAN, "sleep", "3600"]);
    let pid = c.pid();
    let before = mountinfo(pid);
    let n = 20_000;
    let (mut plain, mut immutable, mut apply, mut release) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Alternating rounds, so drift on this VM hits both sides alike.
    for _ in 0..5 {
        plain.push(file_loop(&c, "/tmp", n));
        let (a, ms) = timed(|| apply_immutable(pid, &plan(&[])).expect("apply"));
        apply.push(ms);
        immutable.push(file_loop(&c, "/tmp", n));
        c.refused("echo x > /etc/lancet-new");
        let (r, ms) = timed(|| release_immutable(pid, &a));
        r.expect("release");
        release.push(ms);
        assert_eq!(mountinfo(pid), before);
    }
    println!(
        "cost: {n}x create+write+close+unlink in /tmp: {:.1} µs/iter without, {:.1} µs/iter with the protected set read-only (median of {}); apply {:.2} ms, release {:.2} ms (median)",
        median(plain.clone()),
        median(immutable.clone()),
        plain.len(),
        median(apply),
        median(release)
    );
    println!("  rounds without: {plain:.1?}\n  rounds with:    {immutable:.1?}");
}

#[test]
fn release_through_another_process_of_the_container() {
    skip_unless_ready!(BUSYBOX);
    let c = Container::run(&[BUSYBOX, "sleep", "3600"]);
    let pid = c.pid();
    let before = mountinfo(pid);
    // Applied through a process that then ends (an exec), as the daemon may
    // have seen the container through any of its processes.
    let out = Command::new("podman").args(["exec", "-d", &c.id, "sleep", "300"]).output().expect("exec");
    assert!(out.status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    let exec_pid = loop {
        let found = podman(&["top", &c.id, "hpid", "args"])
            .lines()
            .find(|l| l.contains("sleep 300"))
            .and_then(|l| l.split_whitespace().next()?.parse::<u32>().ok());
        if let Some(p) = found {
            break p;
        }
        assert!(Instant::now() < deadline, "the exec'd sleep did not show up");
        std::thread::sleep(Duration::from_millis(100));
    };
    let a = apply_immutable(exec_pid, &plan(&[])).expect("apply");
    c.refused("echo x > /etc/lancet-new");
    assert!(Command::new("kill").args(["-9", &exec_pid.to_string()]).status().expect("kill").success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{exec_pid}/ns")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    release_immutable(exec_pid, &a).expect("release through pid 1");
    assert_eq!(mountinfo(pid), before);
    c.ok("echo x > /etc/lancet-new && rm /etc/lancet-new");
}
