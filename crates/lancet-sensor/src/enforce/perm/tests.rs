//! Root tests of [`PermGroup`] against real podman containers. Each test
//! creates its own containers (removed however it ends) and its own
//! fanotify group.

use super::{FailMode, MarkScope, PermConfig, PermDecision, PermGroup, PermKind, PermRequest, OVERLAYFS_MAGIC};
use crate::fanotify::podman_tests::{ensure_image, podman, Container, IMAGE};
use crate::fanotify::{fanotify_mark, skip_unless_fanotify};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Env var that turns [`perm_child_helper`] into a helper process.
const CHILD_ENV: &str = "LANCET_PERM_CHILD";

fn ready() -> bool {
    if skip_unless_fanotify(libc::FAN_CLASS_CONTENT) {
        return false;
    }
    if podman(&["--version"]).is_err() {
        eprintln!("SKIP: podman not available");
        return false;
    }
    if let Err(e) = ensure_image() {
        eprintln!("SKIP: {e}");
        return false;
    }
    true
}

struct Ctr {
    id: String,
    pid: u32,
    _removed_at_end: Container,
}

impl Ctr {
    fn start(extra: &[&str], cmd: &[&str]) -> Ctr {
        let mut args = vec!["run", "-d"];
        args.extend_from_slice(extra);
        args.push(IMAGE);
        args.extend_from_slice(cmd);
        let id = podman(&args).expect("podman run");
        let removal = Container::adopt(&id);
        let pid = podman(&["inspect", "-f", "{{.State.Pid}}", &id]).unwrap().parse().unwrap();
        Ctr { id, pid, _removed_at_end: removal }
    }

    fn sleeper() -> Ctr {
        Ctr::start(&[], &["sleep", "300"])
    }

    fn root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid))
    }

    fn exec(&self, cmd: &[&str]) -> Output {
        Command::new("podman").args(["exec", &self.id]).args(cmd).stdin(Stdio::null()).output().expect("podman exec")
    }

    fn sh(&self, script: &str) -> Output {
        self.exec(&["sh", "-c", script])
    }

    fn exec_ok(&self, cmd: &[&str]) -> String {
        let o = self.exec(cmd);
        assert!(o.status.success(), "{cmd:?}: {}", text(&o.stderr));
        text(&o.stdout)
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_owned()
}

fn assert_eperm(o: &Output, what: &str) {
    assert!(!o.status.success(), "{what} should have been refused");
    let err = text(&o.stderr);
    // busybox says "Operation not permitted", runc (podman exec) "operation not permitted".
    assert!(err.to_lowercase().contains("operation not permitted"), "{what}: {err}");
}

/// What the decider saw, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    kind: PermKind,
    label: Option<u64>,
    pid: i32,
    dev: u64,
    path: String,
    fs_magic: u64,
}

impl Seen {
    fn of(r: &PermRequest<'_>) -> Seen {
        Seen { kind: r.kind, label: r.label, pid: r.pid, dev: r.dev, path: r.path.to_owned(), fs_magic: r.fs_magic }
    }
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// `group.run` on a thread, stopped and joined on drop.
struct Runner {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    log: Log,
}

impl Runner {
    fn start(group: &PermGroup, mut decide: impl FnMut(&PermRequest<'_>) -> PermDecision + Send + 'static) -> Runner {
        let stop = Arc::new(AtomicBool::new(false));
        let log: Log = Arc::default();
        let (g, s, l) = (group.clone(), stop.clone(), log.clone());
        let thread = std::thread::spawn(move || {
            let mut d = |r: &PermRequest<'_>| {
                l.lock().unwrap().push(Seen::of(r));
                decide(r)
            };
            g.run(&s, &mut d).expect("run");
        });
        Runner { stop, thread: Some(thread), log }
    }

    fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    fn count(&self, kind: PermKind, path: &str) -> usize {
        self.seen().iter().filter(|s| s.kind == kind && s.path == path).count()
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn http_get(port: u16) -> Result<String, String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

fn wait_http(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match http_get(port) {
            Ok(r) if r.starts_with("HTTP/1.") => return r,
            r if Instant::now() > deadline => panic!("httpd on 127.0.0.1:{port} not answering: {r:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn root_exec_in_tmp_denied_while_service_keeps_serving() {
    if !ready() {
        return;
    }
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:8080");
    let web = Ctr::start(&["-p", &publish], &["sh", "-c", "mkdir -p /www && echo hello > /www/index.html; exec httpd -f -p 8080 -h /www"]);
    let other = Ctr::sleeper();
    assert!(wait_http(port).starts_with("HTTP/1.1 200"));
    let merged = PathBuf::from(podman(&["inspect", "-f", "{{.GraphDriver.Data.MergedDir}}", &web.id]).unwrap());

    let group = PermGroup::new(PermConfig::default()).unwrap();
    let root = web.root();
    assert_eq!(group.protect_exec(7, &root).unwrap(), MarkScope::Filesystem);
    // Marking the same root again is a no-op.
    assert_eq!(group.protect_exec(7, &root).unwrap(), MarkScope::Filesystem);
    let runner = Runner::start(&group, |r| {
        if r.kind == PermKind::Exec && r.path.starts_with("/tmp/") {
            PermDecision::DENY
        } else {
            PermDecision::ALLOW
        }
    });

    let o = web.sh("cp /bin/busybox /tmp/ls && /tmp/ls /");
    assert_eperm(&o, "exec of /tmp/ls");
    assert_eq!(web.exec_ok(&["/bin/busybox", "echo", "ok"]), "ok");
    let page = http_get(port).expect("httpd still serving");
    assert!(page.starts_with("HTTP/1.1 200") && page.contains("hello"), "{page}");
    // Another container is not covered by this filesystem mark.
    assert_eq!(text(&other.sh("cp /bin/busybox /tmp/ls && /tmp/ls -d /tmp").stdout), "/tmp");
    // From the host, through /proc/<pid>/root (the container's own mount) …
    let e = Command::new(root.join("tmp/ls")).arg("/").output().expect_err("host exec of the container's /tmp/ls");
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
    // … and through the host's mount of the rootfs: path normalised.
    let mut host = Command::new(merged.join("bin/busybox")).arg("true").spawn().unwrap();
    let host_pid = host.id() as i32;
    assert!(host.wait().unwrap().success());

    let seen = runner.seen();
    drop(runner);
    for s in &seen {
        eprintln!("{s:?}");
    }
    let dev = std::fs::metadata(&root).unwrap().dev();
    let ls = seen.iter().find(|s| s.path == "/tmp/ls").expect("exec of /tmp/ls seen");
    assert_eq!(ls.kind, PermKind::Exec);
    assert_eq!(ls.label, Some(7));
    assert_eq!(ls.dev, dev);
    assert_eq!(ls.fs_magic, OVERLAYFS_MAGIC);
    let via_merged = seen.iter().find(|s| s.pid == host_pid).expect("host exec through merged seen");
    assert_eq!(via_merged.path, "/bin/busybox");
    assert_eq!(via_merged.label, Some(7));
    assert!(seen.iter().all(|s| s.dev == dev && s.label == Some(7)), "only the protected container");
    let st = group.stats();
    eprintln!("stats: {st:?}");
    assert!(st.denied >= 2 && st.allowed >= 2, "{st:?}");
    assert_eq!(st.events, st.allowed + st.denied);
    assert_eq!(st.fail_mode_answers, 0);
    assert!(st.decision_p99_ns > 0 && st.decision_p99_ns >= st.decision_p50_ns, "{st:?}");
    assert!(st.decision_max_ns >= st.decision_p99_ns);

    assert!(group.unprotect(7) >= 1);
    assert!(web.sh("/tmp/ls /").status.success(), "unprotected");
}

#[test]
fn root_remembered_exec_is_not_asked_again_until_modified() {
    if !ready() {
        return;
    }
    let c = Ctr::sleeper();
    c.exec_ok(&["cp", "/bin/busybox", "/tmp/echo"]);
    let group = PermGroup::new(PermConfig::default()).unwrap();
    let root = c.root();
    group.protect_exec(3, &root).unwrap();
    let runner = Runner::start(&group, |_| PermDecision::ALLOW_REMEMBER);
    let exec = PermKind::Exec;
    let x = |c: &Ctr| assert_eq!(c.exec_ok(&["/tmp/echo", "x"]), "x");

    for _ in 0..3 {
        x(&c);
    }
    assert_eq!(runner.count(exec, "/tmp/echo"), 1, "asked once, then the ignore mark answers");
    let remembered = group.stats().remembered;
    assert!(remembered >= 1);

    // Modified in place: the kernel drops the ignore mark.
    c.exec_ok(&["sh", "-c", "cat /bin/busybox > /tmp/echo"]);
    x(&c);
    x(&c);
    assert_eq!(runner.count(exec, "/tmp/echo"), 2, "asked again once after the write");
    // Appending counts as a modification too.
    c.exec_ok(&["sh", "-c", "echo >> /tmp/echo"]);
    x(&c);
    assert_eq!(runner.count(exec, "/tmp/echo"), 3);

    // Removing and re-adding the filesystem mark keeps the inode ignore marks.
    let via = PathBuf::from(format!("/proc/{}/root", c.pid));
    let fs_mark = |flags: u32| fanotify_mark(group.fd(), flags | libc::FAN_MARK_FILESYSTEM, libc::FAN_OPEN_EXEC_PERM, &via).unwrap();
    fs_mark(libc::FAN_MARK_REMOVE);
    fs_mark(libc::FAN_MARK_ADD);
    x(&c);
    assert_eq!(runner.count(exec, "/tmp/echo"), 3, "ignore mark survived the filesystem mark's removal");

    // forget(label) removes them.
    let busybox_before = runner.count(exec, "/bin/busybox");
    assert!(busybox_before >= 1, "cp/sh/cat above exec /bin/busybox");
    assert!(group.forget(3) >= 2, "/tmp/echo and /bin/busybox");
    x(&c);
    assert_eq!(runner.count(exec, "/tmp/echo"), 4, "asked again after forget");
    c.exec_ok(&["/bin/busybox", "true"]);
    assert_eq!(runner.count(exec, "/bin/busybox"), busybox_before + 1);
    // clear_ignores() removes all of them too.
    group.clear_ignores().unwrap();
    x(&c);
    assert_eq!(runner.count(exec, "/tmp/echo"), 5, "asked again after clear_ignores");
    let st = group.stats();
    eprintln!("stats: {st:?}");
    assert_eq!(st.remembered as usize, runner.seen().len());
    assert_eq!(st.errors, 0);
}

/// Re-runs this test binary as a helper process (see [`perm_child_helper`]).
fn helper(mode: &str, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    // The test's path as libtest names it: the module path without the crate.
    let name = format!("{}::perm_child_helper", module_path!().split_once("::").map_or("", |(_, m)| m));
    cmd.args(["--exact", name.as_str(), "--ignored", "--nocapture", "--test-threads=1"]).env(CHILD_ENV, mode).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// `openat2(path, flags)` in a helper process; its errno (0: opened).
fn openat2_in_child(path: &Path, flags: i32) -> i32 {
    let out = helper("openat2", &[("LANCET_PERM_PATH", path.to_str().unwrap()), ("LANCET_PERM_FLAGS", &flags.to_string())])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    // libtest prints "test … ... " before the helper's own output.
    let line = stdout.lines().find_map(|l| l.split_once("ERRNO ").map(|(_, v)| v)).unwrap_or_else(|| panic!("helper: {stdout}"));
    line.trim().parse().unwrap()
}

#[test]
fn root_protected_file_and_write_protected_dir() {
    if !ready() {
        return;
    }
    let c = Ctr::sleeper();
    c.exec_ok(&["sh", "-c", "mkdir /data && echo hi > /data/f && echo keep > /data/k"]);
    let group = PermGroup::new(PermConfig::default()).unwrap();
    let root = c.root();
    assert_eq!(group.protect_files(9, &root, &["/etc/shadow", "/etc/nonexistent"]).unwrap(), 1);
    assert_eq!(group.protect_dir_writes(9, &root, &["/data", "/nonexistent"]).unwrap(), 1);
    let runner = Runner::start(&group, |r| match r.kind {
        PermKind::Open { .. } if r.path == "/etc/shadow" => PermDecision::DENY,
        PermKind::Open { write } if r.path.starts_with("/data/") && write != Some(false) => PermDecision::DENY,
        _ => PermDecision::ALLOW,
    });

    assert_eperm(&c.exec(&["cat", "/etc/shadow"]), "read of /etc/shadow");
    assert!(c.exec_ok(&["cat", "/etc/passwd"]).contains("root:"));
    assert_eq!(c.exec_ok(&["cat", "/data/f"]), "hi");
    assert_eperm(&c.sh("echo x > /data/f"), "write to /data/f");
    assert_eq!(c.exec_ok(&["cat", "/data/f"]), "hi", "unchanged: O_TRUNC comes after the check");
    assert_eperm(&c.sh("echo x >> /data/new"), "create /data/new");
    // The documented limit: the file was created before the permission check.
    assert!(c.sh("test -f /data/new && ! test -s /data/new").status.success(), "empty /data/new left behind");
    // Writes elsewhere are not asked about.
    c.exec_ok(&["sh", "-c", "echo y > /tmp/y"]);

    // openat2 (busybox does not use it): flags read from struct open_how.
    let f = root.join("data/k");
    assert_eq!(openat2_in_child(&f, libc::O_RDONLY), 0);
    assert_eq!(openat2_in_child(&f, libc::O_WRONLY), libc::EPERM);
    assert_eq!(openat2_in_child(&f, libc::O_RDWR), libc::EPERM);

    let seen = runner.seen();
    for s in &seen {
        eprintln!("{s:?}");
    }
    let w =
        |path: &str, write: Option<bool>| seen.iter().any(|s| s.path == path && s.kind == PermKind::Open { write } && s.label == Some(9));
    assert!(w("/etc/shadow", Some(false)));
    assert!(w("/data/f", Some(false)), "cat");
    assert!(w("/data/f", Some(true)), "echo >");
    assert!(w("/data/new", Some(true)), "echo >>");
    assert!(w("/data/k", Some(false)) && w("/data/k", Some(true)), "openat2");
    assert!(!seen.iter().any(|s| s.path == "/etc/passwd" || s.path == "/tmp/y"));
    assert!(seen.iter().all(|s| matches!(s.kind, PermKind::Open { .. })));
    let st = group.stats();
    eprintln!("stats: {st:?}");
    assert_eq!(st.fail_mode_answers, 0);

    // clear_ignores() flushes inode marks and puts the file/dir marks back.
    assert_eq!(group.clear_ignores().unwrap(), 2);
    assert_eperm(&c.exec(&["cat", "/etc/shadow"]), "read of /etc/shadow after clear_ignores");
    assert_eperm(&c.sh("echo x > /data/f"), "write to /data/f after clear_ignores");

    assert_eq!(group.unprotect(9), 2);
    assert_eq!(c.exec_ok(&["cat", "/etc/shadow"]).lines().count(), 2);
    c.exec_ok(&["sh", "-c", "echo x > /data/f"]);
    drop(runner);
}

#[test]
fn root_decider_panic_is_answered_with_the_fail_mode() {
    if !ready() {
        return;
    }
    let c = Ctr::sleeper();
    c.exec_ok(&["cp", "/bin/busybox", "/tmp/echo"]);
    for (mode, allowed) in [(FailMode::Allow, true), (FailMode::Deny, false)] {
        let group = PermGroup::new(PermConfig { fail_mode: mode, ..PermConfig::default() }).unwrap();
        group.protect_exec(1, &c.root()).unwrap();
        let runner = Runner::start(&group, |r| {
            if r.path == "/tmp/echo" {
                panic!("decider bug (expected by the test)");
            }
            PermDecision::ALLOW
        });
        let o = c.exec(&["/tmp/echo", "echo", "p"]);
        if allowed {
            assert!(o.status.success(), "{mode:?}: {}", text(&o.stderr));
        } else {
            assert_eperm(&o, "fail mode deny");
        }
        // The loop goes on after the panic.
        assert_eq!(c.exec_ok(&["/bin/busybox", "echo", "ok"]), "ok");
        let st = group.stats();
        eprintln!("{mode:?}: {st:?}");
        assert_eq!(st.fail_mode_answers, 1, "{mode:?}");
        assert_eq!(st.events, st.allowed + st.denied);
        drop(runner);
    }
}

/// Kill the agent (a helper process owning the group) while an exec waits for
/// its decider: the kernel allows the exec. Then the same in-process: drop the
/// last `PermGroup` while an exec is queued and unread.
#[test]
fn root_pending_exec_is_allowed_when_the_group_goes_away() {
    if !ready() {
        return;
    }
    let c = Ctr::sleeper();
    let root = c.root();

    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut agent = Kill(helper("agent", &[("LANCET_PERM_ROOT", root.to_str().unwrap())]).stdout(Stdio::piped()).spawn().unwrap());
    let (tx, rx) = mpsc::channel();
    let out = agent.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let wait_line = |prefix: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.checked_duration_since(Instant::now()).expect("helper line");
            let l = rx.recv_timeout(left).unwrap_or_else(|_| panic!("no {prefix} line from the helper"));
            // libtest prints "test … ... " before the helper's first line.
            if let Some((_, rest)) = l.split_once(prefix) {
                return format!("{prefix}{rest}");
            }
        }
    };
    wait_line("READY");
    let mut exec = Command::new("podman").args(["exec", &c.id, "/bin/busybox", "echo", "alive"]).stdout(Stdio::piped()).spawn().unwrap();
    assert_eq!(wait_line("PENDING"), "PENDING /bin/busybox");
    std::thread::sleep(Duration::from_millis(300));
    assert!(exec.try_wait().unwrap().is_none(), "exec waits for the (stuck) decider");
    let t = Instant::now();
    drop(agent); // SIGKILL by pid
    let o = exec.wait_with_output().unwrap();
    eprintln!("exec finished {:?} after the agent died", t.elapsed());
    assert!(o.status.success());
    assert_eq!(text(&o.stdout), "alive");

    // In-process: nobody reads; the exec is queued; drop the group.
    let group = PermGroup::new(PermConfig::default()).unwrap();
    group.protect_exec(2, &root).unwrap();
    let mut exec = Command::new("podman").args(["exec", &c.id, "/bin/busybox", "echo", "again"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut pfd = libc::pollfd { fd: group.fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, exclusively borrowed for the call.
    let r = unsafe { libc::poll(&mut pfd, 1, 30_000) };
    assert_eq!(r, 1, "exec event queued");
    std::thread::sleep(Duration::from_millis(200));
    assert!(exec.try_wait().unwrap().is_none(), "exec is waiting for an answer");
    assert_eq!(group.stats().events, 0);
    drop(group);
    let o = exec.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(text(&o.stdout), "again");
}

#[test]
fn root_mount_scope_and_refusals() {
    if !ready() {
        return;
    }
    let c = Ctr::sleeper();
    c.exec_ok(&["cp", "/bin/busybox", "/tmp/true"]);
    let group = PermGroup::new(PermConfig { scope: MarkScope::Mount, ..PermConfig::default() }).unwrap();
    assert_eq!(group.protect_exec(5, &c.root()).unwrap(), MarkScope::Mount);
    let runner = Runner::start(&group, |r| if r.path == "/tmp/true" { PermDecision::DENY } else { PermDecision::ALLOW });
    assert_eperm(&c.exec(&["/tmp/true", "true"]), "mount mark deny");
    assert_eq!(runner.seen().iter().find(|s| s.path == "/tmp/true").unwrap().label, Some(5));
    drop(runner);
    // The host's root filesystem is refused; a missing root is an error.
    let e = group.protect_exec(6, Path::new("/")).unwrap_err();
    assert!(matches!(e, super::FanotifyError::HostFilesystem(_)), "{e}");
    assert!(group.protect_exec(6, Path::new("/proc/999999999/root")).is_err());
    // Unprotecting a container that is gone is quiet.
    drop(c);
    group.unprotect(5);
    assert_eq!(group.stats().errors, 0);
}

/// Helper process modes, selected by `LANCET_PERM_CHILD`:
/// - `agent`: own a group protecting `LANCET_PERM_ROOT`, print `READY`, and
///   on the first event print `PENDING <path>` and hang in the decider.
/// - `openat2`: `openat2(LANCET_PERM_PATH, LANCET_PERM_FLAGS)`, print
///   `ERRNO <n>`.
#[test]
#[ignore = "helper process for the root tests"]
fn perm_child_helper() {
    let Ok(mode) = std::env::var(CHILD_ENV) else { return };
    match mode.as_str() {
        "agent" => {
            let root = std::env::var("LANCET_PERM_ROOT").unwrap();
            let group = PermGroup::new(PermConfig::default()).unwrap();
            group.protect_exec(1, Path::new(&root)).unwrap();
            println!("READY");
            let stop = AtomicBool::new(false);
            group
                .run(&stop, &mut |r| {
                    println!("PENDING {}", r.path);
                    std::io::stdout().flush().unwrap();
                    std::thread::sleep(Duration::from_secs(120));
                    PermDecision::DENY
                })
                .unwrap();
        }
        "openat2" => {
            let path = std::ffi::CString::new(std::env::var("LANCET_PERM_PATH").unwrap()).unwrap();
            let flags: u64 = std::env::var("LANCET_PERM_FLAGS").unwrap().parse().unwrap();
            let how: [u64; 3] = [flags | libc::O_CLOEXEC as u64, 0, 0];
            // SAFETY: `path` is NUL-terminated and `how` a valid 24-byte
            // `struct open_how`, both alive across the call.
            let fd = unsafe { libc::syscall(libc::SYS_openat2, libc::AT_FDCWD, path.as_ptr(), how.as_ptr(), 24usize) };
            let errno = if fd < 0 { std::io::Error::last_os_error().raw_os_error().unwrap_or(-1) } else { 0 };
            if fd >= 0 {
                // SAFETY: `fd` was just returned to us.
                unsafe { libc::close(fd as i32) };
            }
            println!("ERRNO {errno}");
        }
        m => panic!("unknown helper mode {m}"),
    }
}

/// Decision time and exec cost: `sh` loops of `/bin/busybox true` (the full
/// path makes busybox sh fork+exec instead of running the applet in-process)
/// without a group, with a group asking every time, and with remembered
/// (ignore-marked) binaries; 5 interleaved rounds, medians.
/// `cargo test -p lancet-sensor --lib -- --ignored bench_ --nocapture`
#[test]
#[ignore = "benchmark"]
fn bench_exec_latency() {
    if !ready() {
        return;
    }
    let c = Ctr::sleeper();
    const N: u32 = 500;
    // Per-exec cost from the difference of an N-exec and a 0-exec loop, so
    // podman exec's own overhead cancels.
    let per_exec = |c: &Ctr| -> f64 {
        let run = |n: u32| {
            let t = Instant::now();
            c.exec_ok(&["sh", "-c", &format!("for i in $(seq {n}); do /bin/busybox true; done")]);
            t.elapsed().as_secs_f64()
        };
        let empty = run(0);
        (run(N) - empty) / N as f64 * 1e6
    };
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mut none, mut uncached, mut cached) = (Vec::new(), Vec::new(), Vec::new());
    let mut last = None;
    for _ in 0..5 {
        none.push(per_exec(&c));
        for (d, out) in [(PermDecision::ALLOW, &mut uncached), (PermDecision::ALLOW_REMEMBER, &mut cached)] {
            let g = PermGroup::new(PermConfig::default()).unwrap();
            g.protect_exec(1, &c.root()).unwrap();
            let r = Runner::start(&g, move |_| d);
            out.push(per_exec(&c));
            drop(r);
            if d == PermDecision::ALLOW {
                last = Some(g.stats());
            }
        }
    }
    let (n, u, k) = (median(&mut none), median(&mut uncached), median(&mut cached));
    let st = last.unwrap();
    eprintln!("fork+exec of /bin/busybox in the container, median of 5 rounds of {N}:");
    eprintln!("  no group:              {n:7.1} µs/exec");
    eprintln!("  group, asked each time: {u:7.1} µs/exec ({:+.1})", u - n);
    eprintln!("  group, remembered:     {k:7.1} µs/exec ({:+.1})", k - n);
    eprintln!(
        "  lancet's decision time (last uncached round, {} events): p50 {} ns, p99 {} ns, max {} ns",
        st.events, st.decision_p50_ns, st.decision_p99_ns, st.decision_max_ns
    );
}
