//! The kernel enforcement backends on the real kernel, as root, against real
//! podman containers on a podman network each test creates: allow-lists on
//! connect/sendto/bind, audit, isolation (with expiry), adoption of pinned
//! state by a new enforcer, exec kills (memfd, tmpfs, deleted, by inode),
//! the freezer and pid-safe kills. The applet checks of multi-call binaries
//! run busybox from a cgroup of the test's own instead (no podman needed).
//! Every test uses its own pin dir; guards remove containers, networks,
//! cgroups, pins and freezes even when a test fails.

use lancet_sensor::enforce::{
    self, cgroup_of_pid, kill_process, process_start_time, unpin_all, CgPolicy, EnforceConfig, EnforceEvents, EnforceOp, EnforceReason,
    EnforceRecord, Enforcer, MulticallFile, NetRule, PolicyFlags, Protocol, BUSYBOX_DISPATCHER,
};
use lancet_sensor::probes::detect_cgroup2_root;
use lancet_testkit::podman::{podman, unique, Container, Network};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const IMAGE: &str = lancet_testkit::podman::BUSYBOX_IMAGE;

/// Why the kernel-only tests cannot run here (they need no podman).
fn skip_kernel() -> Option<String> {
    if !lancet_sensor::features::is_root() {
        return Some("not root".into());
    }
    if lancet_sensor::features::btf_path().is_none() {
        return Some("no kernel BTF".into());
    }
    if detect_cgroup2_root().is_none() {
        return Some("no cgroup v2 mount".into());
    }
    if !Path::new("/sys/fs/bpf").is_dir() {
        return Some("no /sys/fs/bpf".into());
    }
    None
}

fn skip() -> Option<String> {
    if let Some(why) = skip_kernel() {
        return Some(why);
    }
    if Command::new("podman").arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        return Some("podman is not installed".into());
    }
    if !Command::new("podman").args(["image", "exists", IMAGE]).status().map(|s| s.success()).unwrap_or(false) {
        return Some(format!("test image {IMAGE} missing (scripts/setup.sh builds it)"));
    }
    None
}

macro_rules! skip_unless_ready {
    () => {
        if let Some(why) = skip() {
            lancet_testkit::skip(&why);
            return;
        }
    };
}

/// Removes the pin dir (detaching every pinned link) when dropped.
struct Pins(PathBuf);

impl Pins {
    fn new() -> Pins {
        Pins(PathBuf::from(format!("/sys/fs/bpf/{}", unique("lancet-test"))))
    }
    fn config(&self) -> EnforceConfig {
        EnforceConfig { pin_dir: self.0.clone(), cgroup2_root: detect_cgroup2_root().expect("cgroup2") }
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        if let Err(e) = unpin_all(&self.0) {
            eprintln!("unpin_all({}): {e}", self.0.display());
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test container (removed on drop) with what these tests ask of it.
struct Ctr(Container);

impl Ctr {
    /// Serves "hello-lancet" with httpd on 8080 (foreground) and 8081.
    fn httpd(net: &Network, extra: &[&str]) -> Ctr {
        let name = unique("lancet-enf");
        let mount = format!("{}:/lh:ro", helper_dir().display());
        let mut args = vec!["--rm", "--network", &net.0, "-v", &mount];
        args.extend_from_slice(extra);
        let c = Ctr(Container::start_image(
            &name,
            IMAGE,
            &args,
            &["sh", "-c", "mkdir -p /www && echo hello-lancet > /www/index.html && httpd -p 8081 -h /www && exec httpd -f -p 8080 -h /www"],
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (ok, _) = c.sh("wget -q -O - http://127.0.0.1:8080/ && wget -q -O - http://127.0.0.1:8081/");
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "httpd in {} did not come up", c.0.name);
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    fn pid(&self) -> u32 {
        self.0.pid()
    }

    fn ip(&self) -> String {
        self.0.ip()
    }

    fn ip6(&self) -> String {
        podman(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}}{{end}}", &self.0.id])
    }

    fn cgroup_dir(&self) -> PathBuf {
        cgroup_of_pid(self.pid(), &detect_cgroup2_root().expect("cgroup2")).expect("container cgroup")
    }

    fn cgid(&self) -> u64 {
        enforce::cgroup_id(&self.cgroup_dir()).expect("cgroup id")
    }

    fn exec(&self, cmd: &[&str]) -> Output {
        self.0.exec(cmd)
    }

    /// Runs a shell script in the container: success and stdout+stderr.
    fn sh(&self, script: &str) -> (bool, String) {
        let out = self.exec(&["sh", "-c", script]);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// An HTTP GET from this container, given up after `secs`.
    fn get(&self, ip: &str, port: u16, secs: u32) -> (bool, String) {
        self.sh(&format!("timeout {secs} wget -q -O - http://{ip}:{port}/ 2>&1"))
    }
}

/// Two containers A and B on a fresh podman network, and a pin dir.
/// Fields drop in order: containers, network, pins.
struct Env {
    a: Ctr,
    b: Ctr,
    _net: Network,
    pins: Pins,
}

impl Env {
    fn new(extra_a: &[&str]) -> Env {
        Env::on_network(&[], extra_a)
    }

    fn on_network(net_args: &[&str], extra_a: &[&str]) -> Env {
        let pins = Pins::new();
        let name = unique("lancet-enf-net");
        let mut args = vec!["network", "create"];
        args.extend_from_slice(net_args);
        args.push(&name);
        podman(&args);
        let net = Network(name);
        let b = Ctr::httpd(&net, &[]);
        let a = Ctr::httpd(&net, extra_a);
        Env { a, b, _net: net, pins }
    }

    fn enforcer(&self) -> Enforcer {
        let e = Enforcer::open(self.pins.config()).expect("open enforcer");
        for st in e.status() {
            assert!(st.holds, "{} ({}) does not hold: {:?}", st.program, st.hook, st.error);
        }
        e
    }
}

/// A static helper binary (memfd exec, sendto, bind), built once.
fn helper_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("enforce-helper");
        std::fs::create_dir_all(&dir).expect("helper dir");
        let src = dir.join("helper.c");
        std::fs::write(&src, HELPER_C).expect("write helper.c");
        let out = Command::new("cc").args(["-static", "-O2", "-o"]).arg(dir.join("helper")).arg(&src).output().expect("run cc");
        assert!(out.status.success(), "building the helper: {}", String::from_utf8_lossy(&out.stderr));
        dir
    })
}

const HELPER_C: &str = r#"
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
extern char **environ;
static int fail(const char *what) { printf("error: %s: %s\n", what, strerror(errno)); return 1; }
/* Moves this process into the cgroup whose cgroup.procs is `procs`. */
static int join(const char *procs) {
    char b[32];
    int fd = open(procs, O_WRONLY), n = snprintf(b, sizeof b, "%d\n", getpid());
    int r = fd >= 0 && write(fd, b, n) == n ? 0 : -1;
    if (fd >= 0) close(fd);
    return r;
}
int main(int argc, char **argv) {
    if (argc < 2) return 2;
    if (!strcmp(argv[1], "alive")) { puts("alive"); return 0; }
    if (!strcmp(argv[1], "noop")) return 0;
    /* cgexec PROCS PATH --argv ARGV0 ARGS... | --no-argv: exec PATH from
     * inside the cgroup with exactly that argv (none at all: argc 0). */
    if (!strcmp(argv[1], "cgexec") && argc >= 5) {
        char *none[] = { NULL };
        if (join(argv[2])) return fail("cgroup.procs");
        fflush(stdout);
        execve(argv[3], strcmp(argv[4], "--no-argv") ? argv + 5 : none, environ);
        return fail("execve");
    }
    /* bench PROCS N PATH ARGV0 ARGS...: from inside the cgroup, N times
     * vfork, exec and wait (each must exit 0); prints the ns it took. */
    if (!strcmp(argv[1], "bench") && argc >= 6) {
        struct timespec a, b;
        long n = atol(argv[3]);
        if (join(argv[2])) return fail("cgroup.procs");
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (long i = 0; i < n; i++) {
            int st;
            pid_t p = vfork();
            if (p < 0) return fail("vfork");
            if (p == 0) { execve(argv[4], argv + 5, environ); _exit(127); }
            if (waitpid(p, &st, 0) < 0) return fail("waitpid");
            if (!WIFEXITED(st) || WEXITSTATUS(st)) { printf("error: exec %ld: wait status %#x\n", i, st); return 1; }
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        printf("ns=%lld\n", (long long)(b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec));
        return 0;
    }
    /* listen PROCS ADDR PORT bind|nobind: from inside the cgroup, a TCP
     * socket (IPv6 when ADDR has a ':') bound to ADDR:PORT (bind) or not
     * (nobind: listen() picks the port), then listen(); says the port after
     * each step. */
    if (!strcmp(argv[1], "listen") && argc == 6) {
        int v6 = strchr(argv[3], ':') != NULL, one = 1;
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        if (join(argv[2])) return fail("cgroup.procs");
        int s = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
        if (s < 0) return fail("socket");
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (!strcmp(argv[5], "bind")) {
            struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[4])) };
            struct sockaddr_in6 a6 = { .sin6_family = AF_INET6, .sin6_port = htons(atoi(argv[4])) };
            if (v6 ? inet_pton(AF_INET6, argv[3], &a6.sin6_addr) != 1 : inet_pton(AF_INET, argv[3], &a.sin_addr) != 1) return 2;
            if (v6 ? bind(s, (struct sockaddr *)&a6, sizeof a6) : bind(s, (struct sockaddr *)&a, sizeof a)) return fail("bind");
            if (getsockname(s, (struct sockaddr *)&ss, &len)) return fail("getsockname");
            printf("bound %d\n", ntohs(((struct sockaddr_in *)&ss)->sin_port));
            fflush(stdout);
        }
        if (listen(s, 8)) return fail("listen");
        len = sizeof ss;
        if (getsockname(s, (struct sockaddr *)&ss, &len)) return fail("getsockname");
        printf("listening %d\n", ntohs(((struct sockaddr_in *)&ss)->sin_port));
        return 0;
    }
    /* erofs N PATH: N opens of PATH for writing, each of which must fail
     * with EROFS; prints how many did and the ns it took. */
    if (!strcmp(argv[1], "erofs") && argc == 4) {
        struct timespec a, b;
        long n = atol(argv[2]), refused = 0;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (long i = 0; i < n; i++) {
            int fd = open(argv[3], O_WRONLY | O_CREAT, 0644);
            if (fd >= 0) { close(fd); return fail("open succeeded"); }
            refused += errno == EROFS;
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        printf("refused=%ld ns=%lld\n", refused, (long long)(b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec));
        return 0;
    }
    /* syscalls N: N getppid() syscalls; prints the ns they took. */
    if (!strcmp(argv[1], "syscalls") && argc == 3) {
        struct timespec a, b;
        long n = atol(argv[2]);
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (long i = 0; i < n; i++)
            syscall(SYS_getppid);
        clock_gettime(CLOCK_MONOTONIC, &b);
        printf("ns=%lld\n", (long long)(b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec));
        return 0;
    }
    if (!strcmp(argv[1], "memfd-exec")) {
        int src = open("/proc/self/exe", O_RDONLY);
        int mfd = memfd_create("lancet-test", 0);
        if (src < 0 || mfd < 0) return fail("memfd");
        char buf[65536]; ssize_t n;
        while ((n = read(src, buf, sizeof buf)) > 0)
            if (write(mfd, buf, n) != n) return fail("write");
        char *args[] = { "memfd-child", "alive", NULL };
        fflush(stdout);
        fexecve(mfd, args, environ);
        return fail("fexecve");
    }
    if (!strcmp(argv[1], "sendto") && argc == 4) {
        int s = socket(AF_INET, SOCK_DGRAM, 0);
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[3])) };
        inet_pton(AF_INET, argv[2], &a.sin_addr);
        if (sendto(s, "x", 1, 0, (struct sockaddr *)&a, sizeof a) < 0) return fail("sendto");
        puts("sent"); return 0;
    }
    if (!strcmp(argv[1], "bind") && argc == 4) {
        int s = socket(AF_INET, strcmp(argv[2], "udp") ? SOCK_STREAM : SOCK_DGRAM, 0);
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[3])) };
        if (bind(s, (struct sockaddr *)&a, sizeof a) < 0) return fail("bind");
        puts("bound"); return 0;
    }
    return 2;
}
"#;

/// Records read from `enforce_events`, kept until a test asks for them.
struct Records {
    ev: EnforceEvents,
    pending: Vec<EnforceRecord>,
}

impl Records {
    fn new(e: &Enforcer) -> Records {
        Records { ev: e.events().expect("events"), pending: Vec::new() }
    }

    /// Takes the first record that matches, waiting up to `timeout`.
    fn wait(&mut self, timeout: Duration, pred: impl Fn(&EnforceRecord) -> bool) -> (Option<EnforceRecord>, Vec<EnforceRecord>) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.pending.iter().position(&pred) {
                return (Some(self.pending.remove(i)), self.pending.clone());
            }
            if Instant::now() >= deadline {
                return (None, self.pending.clone());
            }
            self.pending.extend(self.ev.poll(Duration::from_millis(100)).expect("poll"));
        }
    }

    /// Everything not taken yet.
    fn rest(&mut self) -> Vec<EnforceRecord> {
        self.pending.extend(self.ev.drain().expect("drain"));
        std::mem::take(&mut self.pending)
    }
}

fn port_rule(ip: &str, port: u16) -> NetRule {
    NetRule::egress(format!("{ip}/32").parse().unwrap()).port(port).proto(Protocol::Tcp)
}

fn enforce_policy() -> CgPolicy {
    CgPolicy { flags: PolicyFlags::NET_ENFORCE, isolate_until: None }
}

#[test]
fn allow_list_permits_only_the_listed_peer_port_and_reports_the_rest() {
    skip_unless_ready!();
    let env = Env::new(&[]);
    let e = env.enforcer();
    let mut ev = Records::new(&e);
    let (a, b, bip) = (&env.a, &env.b, env.b.ip());
    let cgid = a.cgid();
    assert!(b.get(&env.a.ip(), 8081, 5).0, "no policy yet: B reaches A");

    e.set_allow(cgid, &[port_rule(&bip, 8080)]).expect("allow");
    e.set_policy(cgid, enforce_policy()).expect("policy");
    assert_eq!(e.policy(cgid).unwrap().unwrap().flags, PolicyFlags::NET_ENFORCE);

    let (ok, out) = a.get(&bip, 8080, 5);
    assert!(ok && out.contains("hello-lancet"), "allowed peer port: {out}");
    let (ok, out) = a.get(&bip, 8081, 5);
    assert!(!ok && out.contains("Operation not permitted"), "not allowed: {out}");
    let (ok, out) = a.get("127.0.0.1", 8081, 5);
    assert!(ok && out.contains("hello-lancet"), "loopback is always allowed: {out}");
    // An IPv6 socket to the v4-mapped address goes through connect6 and
    // matches the IPv4 rule.
    let (ok, out) = a.get(&format!("[::ffff:{bip}]"), 8080, 5);
    assert!(ok && out.contains("hello-lancet"), "v4-mapped allowed: {out}");
    let (ok, out) = a.get(&format!("[::ffff:{bip}]"), 8081, 5);
    assert!(!ok && out.contains("Operation not permitted"), "v4-mapped not allowed: {out}");
    let (rec, seen) = ev.wait(Duration::from_secs(5), |r| r.op == EnforceOp::Connect4);
    let rec = rec.unwrap_or_else(|| panic!("no connect4 record; saw {seen:?}"));
    assert_eq!((rec.cgroup_id, rec.port, rec.reason, rec.denied), (cgid, 8081, EnforceReason::NotAllowed, true));
    assert_eq!(rec.addr.unwrap().to_string(), bip);
    assert_eq!(rec.proto, Some(Protocol::Tcp));
    assert_eq!(rec.comm, "wget");
    let (rec, seen) = ev.wait(Duration::from_secs(5), |r| r.op == EnforceOp::Connect6);
    let rec = rec.unwrap_or_else(|| panic!("no connect6 record; saw {seen:?}"));
    assert_eq!((rec.port, rec.addr.unwrap().to_string()), (8081, bip.clone()));
    // Exactly one record for each denied connect.
    std::thread::sleep(Duration::from_millis(200));
    let rest = ev.rest();
    assert!(rest.iter().all(|r| r.op != EnforceOp::Connect4 && r.op != EnforceOp::Connect6), "one record per denial: {rest:?}");

    // UDP sendto without connect goes through cgroup/sendmsg4.
    let (ok, out) = a.sh(&format!("/lh/helper sendto {bip} 5353"));
    assert!(!ok && out.contains("Operation not permitted"), "sendto not allowed: {out}");
    let (rec, seen) = ev.wait(Duration::from_secs(5), |r| r.op == EnforceOp::Sendmsg4);
    let rec = rec.unwrap_or_else(|| panic!("no sendmsg4 record; saw {seen:?}"));
    assert_eq!((rec.port, rec.proto), (5353, Some(Protocol::Udp)));
    let udp = NetRule::egress(format!("{bip}/32").parse().unwrap()).port(5353).proto(Protocol::Udp);
    e.set_allow(cgid, &[port_rule(&bip, 8080), udp.clone()]).expect("allow udp");
    let (ok, out) = a.sh(&format!("/lh/helper sendto {bip} 5353"));
    assert!(ok && out.contains("sent"), "sendto allowed: {out}");
    let (ok, out) = a.sh(&format!("/lh/helper sendto {bip} 5354"));
    assert!(!ok, "another UDP port is not: {out}");

    // Replacing the list drops what is no longer in it.
    e.set_allow(cgid, std::slice::from_ref(&udp)).expect("replace");
    assert_eq!(e.allow_rules(cgid).unwrap(), vec![udp]);
    assert!(!a.get(&bip, 8080, 5).0, "8080 no longer allowed");

    let st = e.stats().expect("stats");
    assert!(st.denied_connect4 >= 2 && st.denied_sendmsg4 >= 2, "{st:?}");
    // B has no policy and is not affected.
    assert!(b.get(&env.a.ip(), 8081, 5).0);
    e.clear(cgid).expect("clear");
    assert!(e.policy(cgid).unwrap().is_none() && e.allow_rules(cgid).unwrap().is_empty());
    assert!(a.get(&bip, 8081, 5).0, "cleared: A reaches B:8081 again");
}

#[test]
fn ipv6_rules_connects_and_isolation_hold() {
    skip_unless_ready!();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let subnet = format!("fd00:1a4c:{:x}::/64", nanos & 0xffff);
    let env = Env::on_network(&["--ipv6", "--subnet", &subnet], &[]);
    let e = env.enforcer();
    let mut ev = Records::new(&e);
    let (a, b, b6) = (&env.a, &env.b, env.b.ip6());
    assert!(b6.contains(':'), "B has an IPv6 address: {b6:?}");
    let cgid = a.cgid();
    let rule = NetRule::egress(format!("{b6}/128").parse().unwrap()).port(8080).proto(Protocol::Tcp);
    e.set_allow(cgid, std::slice::from_ref(&rule)).expect("allow");
    e.set_policy(cgid, enforce_policy()).expect("policy");
    assert_eq!(e.allow_rules(cgid).unwrap(), vec![rule]);
    let (ok, out) = a.get(&format!("[{b6}]"), 8080, 5);
    assert!(ok && out.contains("hello-lancet"), "allowed v6 peer: {out}");
    let (ok, out) = a.get(&format!("[{b6}]"), 8081, 5);
    assert!(!ok && out.contains("Operation not permitted"), "v6 not allowed: {out}");
    let (ok, out) = a.get("[::1]", 8081, 5);
    assert!(ok, "::1 is always allowed: {out}");
    let (rec, seen) = ev.wait(Duration::from_secs(5), |r| r.op == EnforceOp::Connect6);
    let rec = rec.unwrap_or_else(|| panic!("no connect6 record; saw {seen:?}"));
    assert_eq!((rec.port, rec.addr.unwrap().to_string(), rec.cgroup_id), (8081, b6.clone(), cgid));

    // Isolation drops IPv6 packets too.
    e.clear(cgid).unwrap();
    let (bcg, bdir) = (b.cgid(), b.cgroup_dir());
    e.isolate(bcg, &bdir, Duration::from_secs(60)).expect("isolate");
    assert!(!a.get(&format!("[{b6}]"), 8080, 3).0, "isolated over IPv6");
    e.release(bcg, &bdir).unwrap();
    assert!(a.get(&format!("[{b6}]"), 8080, 5).0, "released");
}

#[test]
fn bind_is_allowed_only_on_listed_ports_and_audit_only_reports() {
    skip_unless_ready!();
    let env = Env::new(&[]);
    let e = env.enforcer();
    let mut ev = Records::new(&e);
    let (a, bip) = (&env.a, env.b.ip());
    let cgid = a.cgid();
    let bind9000 = NetRule::bind("0.0.0.0/0".parse().unwrap()).port(9000).proto(Protocol::Tcp);
    e.set_allow(cgid, &[bind9000, port_rule(&bip, 8080)]).expect("allow");
    e.set_policy(cgid, enforce_policy()).expect("policy");
    let (ok, out) = a.sh("/lh/helper bind tcp 9000");
    assert!(ok && out.contains("bound"), "allowed bind: {out}");
    let (ok, out) = a.sh("/lh/helper bind tcp 9001");
    assert!(!ok && out.contains("Operation not permitted"), "bind to another port: {out}");
    let (ok, out) = a.sh("/lh/helper bind udp 9000");
    assert!(!ok && out.contains("Operation not permitted"), "rule is TCP only: {out}");
    let (ok, out) = a.sh("/lh/helper bind tcp 0");
    assert!(ok, "ephemeral bind: {out}");
    let (rec, seen) = ev.wait(Duration::from_secs(5), |r| r.op == EnforceOp::Bind4 && r.port == 9001);
    assert!(rec.is_some_and(|r| r.denied && r.cgroup_id == cgid), "bind record; saw {seen:?}");

    // Audit: the same check, reported, never denied.
    e.set_policy(cgid, CgPolicy { flags: PolicyFlags::NET_AUDIT, isolate_until: None }).expect("audit");
    let (ok, out) = a.get(&bip, 8081, 5);
    assert!(ok && out.contains("hello-lancet"), "audit does not deny: {out}");
    let (rec, seen) = ev.wait(Duration::from_secs(5), |r| r.op == EnforceOp::Connect4);
    let rec = rec.unwrap_or_else(|| panic!("no audit record; saw {seen:?}"));
    assert_eq!((rec.port, rec.denied, rec.cgroup_id), (8081, false, cgid));
    assert!(e.stats().unwrap().audited >= 1);
}

#[test]
fn isolation_cuts_the_container_off_until_released_or_expired() {
    skip_unless_ready!();
    let env = Env::new(&[]);
    let e = env.enforcer();
    let (a, b, aip, bip) = (&env.a, &env.b, env.a.ip(), env.b.ip());
    let (cgid, dir) = (b.cgid(), b.cgroup_dir());
    assert!(a.get(&bip, 8080, 5).0);

    e.isolate(cgid, &dir, Duration::from_secs(60)).expect("isolate");
    let p = e.policy(cgid).unwrap().expect("policy");
    assert!(p.flags.contains(PolicyFlags::ISOLATE) && p.isolate_until.unwrap() > Duration::from_secs(50));
    let (ok, out) = a.get(&bip, 8080, 3);
    assert!(!ok, "isolated B must not answer A: {out}");
    let (ok, out) = b.get(&aip, 8080, 3);
    assert!(!ok && out.contains("Operation not permitted"), "isolated B cannot connect out: {out}");
    let (ok, out) = b.get("127.0.0.1", 8080, 3);
    assert!(ok, "B's own loopback keeps working: {out}");
    assert!(e.stats().unwrap().isolate_dropped_ingress >= 1);
    assert_eq!(e.isolations().unwrap().len(), 1);

    e.release(cgid, &dir).expect("release");
    assert!(e.policy(cgid).unwrap().is_none(), "nothing else was set: the entry goes");
    let (ok, out) = a.get(&bip, 8080, 5);
    assert!(ok && out.contains("hello-lancet"), "released: {out}");
    assert!(std::fs::read_dir(&env.pins.0).unwrap().flatten().all(|f| !f.file_name().to_string_lossy().starts_with("isolate-")));

    // An isolation rule lets one peer through; the deadline ends it by itself.
    let rule = NetRule::egress(format!("{aip}/32").parse().unwrap()).port(8081).proto(Protocol::Tcp).during_isolation();
    e.set_allow(cgid, &[rule]).expect("allow during isolation");
    e.isolate(cgid, &dir, Duration::from_secs(3)).expect("isolate 3 s");
    let start = Instant::now();
    assert!(b.get(&aip, 8081, 2).0, "the isolation rule holds");
    assert!(!b.get(&aip, 8080, 2).0, "other ports do not");
    assert!(!a.get(&bip, 8080, 1).0, "inbound is dropped");
    if let Some(left) = Duration::from_millis(3300).checked_sub(start.elapsed()) {
        std::thread::sleep(left);
    }
    let (ok, out) = a.get(&bip, 8080, 5);
    assert!(ok, "expired in the kernel, links still attached: {out}");
    assert_eq!(e.expire_isolations().unwrap(), vec![cgid]);
    assert!(e.policy(cgid).unwrap().is_none());
    assert!(e.isolations().unwrap().is_empty());
}

#[test]
fn a_new_enforcer_adopts_the_pinned_rules_and_links() {
    skip_unless_ready!();
    let env = Env::new(&[]);
    let (a, b, bip) = (&env.a, &env.b, env.b.ip());
    let (cgid, bcg, bdir) = (a.cgid(), b.cgid(), b.cgroup_dir());
    {
        let e = env.enforcer();
        assert!(e.status().iter().all(|s| !s.adopted));
        e.set_allow(cgid, &[port_rule(&bip, 8080)]).expect("allow");
        e.set_policy(cgid, enforce_policy()).expect("policy");
        e.isolate(bcg, &bdir, Duration::from_secs(120)).expect("isolate B");
        assert!(!a.get(&bip, 8081, 5).0);
    }
    // The agent is gone: the rules are not.
    let (ok, out) = a.get(&bip, 8081, 5);
    assert!(!ok && out.contains("Operation not permitted"), "still enforced with no enforcer: {out}");
    assert!(!a.get(&bip, 8080, 2).0, "B still isolated");

    let e = env.enforcer();
    for st in e.status() {
        if st.pin.is_some() {
            assert!(st.adopted, "{} was not adopted", st.program);
        }
    }
    let mut listed = e.list_cgroups().unwrap();
    listed.sort();
    let mut want = vec![cgid, bcg];
    want.sort();
    assert_eq!(listed, want);
    assert_eq!(e.allow_rules(cgid).unwrap(), vec![port_rule(&bip, 8080)]);
    assert!(!a.get(&bip, 8081, 5).0, "still enforced after adoption");
    e.release(bcg, &bdir).expect("release B");
    e.set_allow(cgid, &[port_rule(&bip, 8080), port_rule(&bip, 8081)]).expect("update");
    let (ok, out) = a.get(&bip, 8081, 5);
    assert!(ok && out.contains("hello-lancet"), "updated rules hold: {out}");
    // The replaced tp_btf link is gone: one enf_exec link per pin dir on
    // the host that holds one (other pin dirs may exist; none are ours).
    // Programs live only through their links here (the enforcer keeps no
    // fd of the exec program): one loaded program per live link. Another
    // agent on the host may be between loading its program and pinning its
    // link: the count must settle, not hold at every instant.
    let count = || -> Option<(usize, usize)> {
        let out = Command::new("bpftool").args(["prog", "show", "name", "enf_exec"]).output().ok()?;
        let live = String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("name enf_exec")).count();
        let pinned = std::fs::read_dir("/sys/fs/bpf").unwrap().flatten().filter(|d| d.path().join("link-enf_exec").exists()).count();
        Some((live, pinned))
    };
    if let Some(mut seen) = count() {
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen.0 != seen.1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            seen = count().unwrap_or(seen);
        }
        assert_eq!(seen.0, seen.1, "enf_exec programs alive vs pinned links");
    }
    // gc drops a cgroup that no longer exists.
    e.set_policy(999_999_999, enforce_policy()).unwrap();
    assert_eq!(e.gc(|id| id != 999_999_999).unwrap(), vec![999_999_999]);
}

#[test]
fn execs_of_memfd_tmpfs_deleted_and_listed_files_are_killed() {
    skip_unless_ready!();
    let env = Env::new(&["--tmpfs", "/dev/shm:rw,exec,size=16m"]);
    let e = env.enforcer();
    let mut ev = Records::new(&e);
    let a = &env.a;
    let cgid = a.cgid();

    let (ok, out) = a.sh("/lh/helper memfd-exec");
    assert!(ok && out.contains("alive"), "without a policy a memfd runs: {out}");
    let (ok, out) = a.sh("cp /bin/busybox /dev/shm/busybox && /dev/shm/busybox echo alive");
    assert!(ok && out.contains("alive"), "without a policy /dev/shm runs: {out}");

    let kill = PolicyFlags::KILL_MEMFD_EXEC | PolicyFlags::KILL_TMPFS_EXEC | PolicyFlags::KILL_DELETED_EXEC;
    e.set_policy(cgid, CgPolicy { flags: kill, isolate_until: None }).expect("policy");

    let (_, out) = a.sh("/lh/helper memfd-exec; echo rc=$?");
    assert!(out.contains("rc=137") && !out.contains("alive"), "memfd exec killed: {out}");
    let (rec, seen) = ev.wait(Duration::from_secs(5), |r| r.reason == EnforceReason::Memfd);
    let rec = rec.unwrap_or_else(|| panic!("no memfd record; saw {seen:?}"));
    assert_eq!((rec.op, rec.cgroup_id, rec.denied), (EnforceOp::ExecKill, cgid, true));

    let (_, out) = a.sh("/dev/shm/busybox echo alive; echo rc=$?");
    assert!(out.contains("rc=137") && !out.contains("alive"), "tmpfs exec killed: {out}");
    let (rec, seen) = ev.wait(Duration::from_secs(5), |r| r.reason == EnforceReason::Tmpfs);
    assert!(rec.is_some_and(|r| r.comm == "busybox"), "tmpfs record; saw {seen:?}");

    let (_, out) = a.sh("cp /lh/helper /tmp/h && exec 3</tmp/h && rm /tmp/h && /proc/self/fd/3 alive; echo rc=$?");
    assert!(out.contains("rc=137") && !out.contains("alive"), "deleted exec killed: {out}");
    let (rec, seen) = ev.wait(Duration::from_secs(5), |r| r.reason == EnforceReason::Deleted);
    assert!(rec.is_some(), "deleted record; saw {seen:?}");

    // The container and its service go on.
    let (ok, out) = a.get("127.0.0.1", 8080, 5);
    assert!(ok && out.contains("hello-lancet"), "httpd keeps serving: {out}");
    let (ok, out) = a.sh("/bin/busybox echo alive");
    assert!(ok && out.contains("alive"), "image files run: {out}");

    // By inode: a file in the container's own (overlay) filesystem.
    let (ok, out) = a.sh("cp /lh/helper /usr/bin/lancet-victim");
    assert!(ok, "copy victim: {out}");
    let host_path = PathBuf::from(format!("/proc/{}/root/usr/bin/lancet-victim", a.pid()));
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(&host_path).expect("stat victim");
    e.kill_ino(cgid, lancet_sensor::sys::kernel_dev(md.dev()), md.ino()).expect("kill_ino");
    let (_, out) = a.sh("/usr/bin/lancet-victim alive; echo rc=$?");
    assert!(out.contains("rc=") && !out.contains("rc=137"), "KILL_EXEC_INO not set yet: {out}");
    e.set_policy(cgid, CgPolicy { flags: kill | PolicyFlags::KILL_EXEC_INO, isolate_until: None }).unwrap();
    let (_, out) = a.sh("/usr/bin/lancet-victim alive; echo rc=$?");
    assert!(out.contains("rc=137") && !out.contains("alive"), "listed inode killed: {out}");
    let (rec, seen) = ev.wait(Duration::from_secs(5), |r| r.reason == EnforceReason::KillIno);
    let rec = rec.unwrap_or_else(|| panic!("no kill-ino record; saw {seen:?}"));
    assert_eq!(rec.ino, md.ino());
    e.forget_ino(cgid, lancet_sensor::sys::kernel_dev(md.dev()), md.ino()).unwrap();
    let (ok, out) = a.sh("/usr/bin/lancet-victim alive");
    assert!(ok && out.contains("alive"), "forgotten inode runs: {out}");
    assert!(e.stats().unwrap().kills >= 4);
}

/// Thaws on drop, so a failed test never leaves a frozen container.
struct Thaw(PathBuf);

impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = enforce::thaw(&self.0);
    }
}

#[test]
fn freeze_stops_the_container_and_thaw_resumes_it() {
    skip_unless_ready!();
    let env = Env::new(&[]);
    let (a, b, bip) = (&env.a, &env.b, env.b.ip());
    let dir = b.cgroup_dir();
    let _thaw = Thaw(dir.clone());
    assert!(!enforce::frozen(&dir).unwrap());
    let backend = enforce::freeze(&dir).expect("freeze");
    eprintln!("froze with {backend:?}");
    assert!(enforce::frozen(&dir).unwrap());
    let (ok, out) = a.get(&bip, 8080, 3);
    assert!(!ok, "frozen httpd does not answer: {out}");
    enforce::thaw(&dir).expect("thaw");
    assert!(!enforce::frozen(&dir).unwrap());
    let (ok, out) = a.get(&bip, 8080, 5);
    assert!(ok && out.contains("hello-lancet"), "thawed: {out}");
}

#[test]
fn kill_process_kills_only_the_target() {
    skip_unless_ready!();
    let env = Env::new(&[]);
    let a = &env.a;
    a.exec(&["sh", "-c", "sleep 1001 & sleep 1002 & true"]);
    let procs = |want: &str| -> Vec<u32> {
        let text = std::fs::read_to_string(a.cgroup_dir().join("cgroup.procs")).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(want))
                    .unwrap_or(false)
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while procs("sleep 100").len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let target = *procs("sleep 1001").first().expect("sleep 1001");
    let other = *procs("sleep 1002").first().expect("sleep 1002");
    let start = process_start_time(target).unwrap();
    assert!(matches!(kill_process(target, Some(start.wrapping_add(7)), libc::SIGKILL), Err(enforce::EnforceError::PidReused { .. })));
    kill_process(target, Some(start), libc::SIGKILL).expect("kill");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !procs("sleep 1001").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(procs("sleep 1001").is_empty(), "target gone");
    assert_eq!(procs("sleep 1002"), vec![other], "the other process lives");
    assert!(a.get("127.0.0.1", 8080, 5).0, "httpd lives");
    assert!(matches!(kill_process(target, Some(start), libc::SIGKILL), Err(enforce::EnforceError::ProcessGone { .. })));
}

#[test]
fn check_reports_every_hook_without_pinning_anything() {
    skip_unless_ready!();
    let before: Vec<_> = std::fs::read_dir("/sys/fs/bpf").unwrap().flatten().map(|e| e.path()).collect();
    let status = enforce::check(&detect_cgroup2_root().unwrap());
    assert_eq!(status.len(), 12, "{status:?}");
    for st in &status {
        assert!(st.holds, "{} ({}): {:?}", st.program, st.hook, st.error);
        assert!(st.pin.is_none());
    }
    let after: Vec<_> = std::fs::read_dir("/sys/fs/bpf").unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(before.len(), after.len());
    enforce::check_pin_dir(Path::new("/sys/fs/bpf/lancet-not-created")).expect("bpffs");
    assert!(!Path::new("/sys/fs/bpf/lancet-not-created").exists());
}

#[test]
fn open_reports_a_pin_dir_off_bpffs() {
    skip_unless_ready!();
    let dir = tempfile::tempdir().unwrap();
    let cfg = EnforceConfig { pin_dir: dir.path().join("pins"), cgroup2_root: detect_cgroup2_root().unwrap() };
    match Enforcer::open(cfg) {
        Err(enforce::EnforceError::NoBpffs { path }) => assert_eq!(path, dir.path().join("pins")),
        other => panic!("expected NoBpffs, got {other:?}"),
    }
}

/// An agent from before `enforce_stats` had 32 slots pinned one of 12: the
/// new one replaces it (its counts start again) instead of failing to load.
#[test]
fn a_pinned_stats_map_of_the_old_size_is_replaced() {
    if let Some(why) = skip_kernel() {
        lancet_testkit::skip(&why);
        return;
    }
    let pins = Pins::new();
    std::fs::create_dir_all(&pins.0).expect("pin dir");
    let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
        ..Default::default()
    };
    let mut old = libbpf_rs::MapHandle::create(libbpf_rs::MapType::PercpuArray, Some("enforce_stats"), 4, 8, 12, &opts).expect("old map");
    old.pin(pins.0.join("enforce_stats")).expect("pin old map");
    drop(old);
    let e = Enforcer::open(pins.config()).expect("open over the old stats map");
    use libbpf_rs::MapCore;
    let m = libbpf_rs::MapHandle::from_pinned_path(pins.0.join("enforce_stats")).expect("pinned");
    assert_eq!(m.info().expect("info").info.max_entries, 32);
    assert_eq!(e.stats().unwrap(), enforce::EnforceStats::default());
}

// ---- applets of multi-call binaries: busybox run from a cgroup of our own ----

const BUSYBOX: &str = "/bin/busybox";

fn skip_applets() -> Option<String> {
    skip_kernel().or_else(|| (!Path::new(BUSYBOX).is_file()).then(|| format!("{BUSYBOX} missing (busybox-static)")))
}

macro_rules! skip_unless_applets_ready {
    () => {
        if let Some(why) = skip_applets() {
            lancet_testkit::skip(&why);
            return;
        }
    };
}

/// A cgroup v2 directory of the test's own under the v2 root; on drop what
/// still runs in it is killed and the directory removed.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new(tag: &str) -> TestCgroup {
        let dir = detect_cgroup2_root().expect("cgroup2").join(unique(&format!("lancet-test-{tag}")));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        TestCgroup(dir)
    }

    fn id(&self) -> u64 {
        enforce::cgroup_id(&self.0).expect("cgroup id")
    }

    fn procs(&self) -> PathBuf {
        self.0.join("cgroup.procs")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(self.procs()).is_ok_and(|p| !p.trim().is_empty()) && Instant::now() < deadline {
            let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Err(e) = std::fs::remove_dir(&self.0) {
            eprintln!("rmdir {}: {e}", self.0.display());
        }
    }
}

/// A copy of busybox (an inode of its own) with applet symlinks to it, in a
/// temp dir on disk (not tmpfs: the other kill flags must not apply).
struct Busybox {
    dir: tempfile::TempDir,
    dev: u32,
    ino: u64,
}

impl Busybox {
    fn new(applets: &[&str]) -> Busybox {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::Builder::new().prefix("lancet-bb").tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
        let bin = dir.path().join("busybox");
        std::fs::copy(BUSYBOX, &bin).expect("copy busybox");
        for a in applets {
            std::os::unix::fs::symlink("busybox", dir.path().join(a)).expect("symlink");
        }
        let md = std::fs::metadata(&bin).expect("stat busybox");
        Busybox { dev: lancet_sensor::sys::kernel_dev(md.dev()), ino: md.ino(), dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// Execs `path` from inside `cg` with exactly `argv` (None: argc 0); the
/// pid, which the exec keeps, and the output.
fn exec_in(cg: &TestCgroup, path: &str, argv: Option<&[String]>) -> (u32, Output) {
    let mut cmd = Command::new(helper_dir().join("helper"));
    cmd.arg("cgexec").arg(cg.procs()).arg(path);
    match argv {
        Some(a) => cmd.arg("--argv").args(a),
        None => cmd.arg("--no-argv"),
    };
    let child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("run helper");
    let pid = child.id();
    (pid, child.wait_with_output().expect("wait helper"))
}

fn killed(o: &Output) -> bool {
    use std::os::unix::process::ExitStatusExt;
    o.status.signal() == Some(libc::SIGKILL)
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn exec_holds(e: &Enforcer) {
    let st = e.status().into_iter().find(|s| s.program == "enf_exec").expect("enf_exec status");
    assert!(st.holds, "enf_exec does not hold: {:?}", st.error);
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// 31 bytes: the longest name that can be allowed.
const NAME31: &str = "shabcdefghijklmnopqrstuvwxyz012";

/// An exec to be refused: what it is, the path, argv (None: argc 0), and
/// the applet the record must name, cut or not.
type Refused<'a> = (&'a str, &'a str, Option<Vec<String>>, String, bool);

const KILL_FILES: PolicyFlags =
    PolicyFlags(PolicyFlags::KILL_MEMFD_EXEC.0 | PolicyFlags::KILL_TMPFS_EXEC.0 | PolicyFlags::KILL_DELETED_EXEC.0);

#[test]
fn multicall_applets_are_judged_by_argv0_and_killed_in_the_kernel() {
    skip_unless_applets_ready!();
    assert_eq!(NAME31.len(), 31);
    let pins = Pins::new();
    let bb = Busybox::new(&["sh", "echo", "nc", "id"]);
    let (on, off) = (TestCgroup::new("applet-on"), TestCgroup::new("applet-off"));
    let e = Enforcer::open(pins.config()).expect("open enforcer");
    exec_holds(&e);
    let mut ev = Records::new(&e);
    let allowed = ["sh", "echo", NAME31];
    for cg in [&on, &off] {
        e.set_applets(cg.id(), bb.dev, bb.ino, Some(BUSYBOX_DISPATCHER), &allowed).expect("set_applets");
    }
    e.set_policy(on.id(), CgPolicy { flags: PolicyFlags::KILL_APPLET, isolate_until: None }).expect("policy");
    // The other kill flags only: the lists alone change nothing.
    e.set_policy(off.id(), CgPolicy { flags: KILL_FILES, isolate_until: None }).expect("policy");
    let mut want: Vec<String> = args(&allowed);
    want.sort();
    let listed = e.applets(on.id()).unwrap();
    assert_eq!(listed, vec![MulticallFile { dev: bb.dev, ino: bb.ino, dispatcher: Some("busybox".into()), applets: want }]);

    let (sh, busybox, echo, nc, id) = (bb.path("sh"), bb.path("busybox"), bb.path("echo"), bb.path("nc"), bb.path("id"));
    // Allowed: judged by argv[0] (its basename, after a login shell's '-'),
    // or after the dispatcher by the next argument; never by the path.
    let many_slashes = format!("//{}sh", "dir/".repeat(60));
    let ok_cases: Vec<(&str, &str, Vec<String>)> = vec![
        ("sh -c", &sh, args(&["sh", "-c", "echo ok"])),
        ("echo", &echo, args(&["echo", "ok"])),
        ("a 242-byte path of 61 slashes", &sh, vec![many_slashes, "-c".into(), "echo ok".into()]),
        ("a login shell", &sh, args(&["-sh", "-c", "echo ok"])),
        ("busybox echo", &busybox, args(&["busybox", "echo", "ok"])),
        ("three dispatcher hops", &busybox, args(&["busybox", "busybox", "busybox", "echo", "ok"])),
        ("/proc/self/exe as echo", &sh, args(&["sh", "-c", "env echo ok"])),
        ("the nc symlink run as sh", &nc, args(&["sh", "-c", "echo ok"])),
    ];
    for (what, path, argv) in &ok_cases {
        let (_, out) = exec_in(&on, path, Some(argv));
        assert!(out.status.success() && text(&out).contains("ok"), "{what}: {:?} {}", out.status, text(&out));
    }
    // 31 bytes is not cut: allowed (busybox knows no such applet: 127).
    let (_, out) = exec_in(&on, &sh, Some(&args(&[NAME31])));
    assert!(!killed(&out) && out.status.code() == Some(127), "31-byte name: {:?} {}", out.status, text(&out));

    let sh40 = format!("sh{}", "x".repeat(38));
    let allowed40 = format!("{NAME31}123456789");
    let beyond_scan = format!("{}sh", "a/".repeat(2100));
    let kill_cases: Vec<Refused> = vec![
        ("nc", &nc, Some(args(&["nc"])), "nc".into(), false),
        ("id", &id, Some(args(&["id"])), "id".into(), false),
        ("40 bytes starting with sh", &sh, Some(vec![sh40.clone(), "-c".into(), "echo ok".into()]), sh40[..31].into(), true),
        ("40 bytes starting with an allowed 31-byte name", &sh, Some(vec![allowed40]), NAME31.into(), true),
        ("a 40-byte basename after a path", &sh, Some(vec![format!("/usr/bin/{sh40}")]), sh40[..31].into(), true),
        ("a 200-byte basename", &sh, Some(vec![format!("/x/{}", "s".repeat(200))]), "s".repeat(31), true),
        ("an empty argv[0]", &sh, Some(args(&["", "-c", "echo ok"])), String::new(), false),
        ("no argv at all", &sh, None, String::new(), false),
        ("busybox nc", &busybox, Some(args(&["busybox", "nc", "-h"])), "nc".into(), false),
        ("busybox alone", &busybox, Some(args(&["busybox"])), "busybox".into(), false),
        (
            "four dispatcher hops",
            &busybox,
            Some(args(&["busybox", "busybox", "busybox", "busybox", "echo", "ok"])),
            "busybox".into(),
            false,
        ),
        ("a path with many slashes", &sh, Some(args(&["////nc"])), "nc".into(), false),
        ("a login-shell dash", &sh, Some(args(&["-nc"])), "nc".into(), false),
        ("a path ending in /", &sh, Some(args(&["sh/", "-c", "echo ok"])), String::new(), false),
        ("argv[0] longer than the 4 KiB scan", &sh, Some(vec![beyond_scan, "-c".into(), "echo ok".into()]), String::new(), false),
    ];
    let mut kills = 0;
    for (what, path, argv, name, cut) in &kill_cases {
        let (pid, out) = exec_in(&on, path, argv.as_deref());
        assert!(killed(&out) && !text(&out).contains("ok"), "{what}: not killed: {:?} {}", out.status, text(&out));
        kills += 1;
        let (rec, seen) = ev.wait(Duration::from_secs(5), |r| r.pid == pid);
        let rec = rec.unwrap_or_else(|| panic!("{what}: no record; saw {seen:?}"));
        assert_eq!((rec.op, rec.reason, rec.cgroup_id, rec.denied), (EnforceOp::ExecKill, EnforceReason::Applet, on.id(), true), "{what}");
        assert_eq!((rec.ino, rec.dev), (bb.ino, bb.dev), "{what}");
        let applet = rec.applet.clone().unwrap_or_else(|| panic!("{what}: no applet in {rec:?}"));
        assert_eq!((&applet.name, applet.cut, applet.file.as_str()), (name, *cut, "busybox"), "{what}");
        if *what == "nc" {
            match rec.to_event().kind {
                lancet_engine::event::EventKind::Exec(x) => {
                    assert_eq!(x.filename, format!("applet nc of busybox (inode {}), killed at exec", bb.ino));
                    assert_eq!(x.argv, vec!["nc".to_string()]);
                }
                other => panic!("not an exec event: {other:?}"),
            }
        }
    }

    // A hard link is the same inode: judged the same, named by its own entry.
    let wget = bb.path("wget");
    std::fs::hard_link(&busybox, &wget).expect("hard link");
    let (_, out) = exec_in(&on, &wget, Some(&args(&["sh", "-c", "echo ok"])));
    assert!(out.status.success() && text(&out).contains("ok"), "hard link run as sh: {}", text(&out));
    let (pid, out) = exec_in(&on, &wget, Some(&args(&["wget"])));
    assert!(killed(&out), "hard link run as wget: {}", text(&out));
    kills += 1;
    let (rec, seen) = ev.wait(Duration::from_secs(5), |r| r.pid == pid);
    let applet = rec.and_then(|r| r.applet).unwrap_or_else(|| panic!("no record for the hard link; saw {seen:?}"));
    assert_eq!((applet.name.as_str(), applet.file.as_str()), ("wget", "wget"));

    // busybox's sh runs applets by re-executing /proc/self/exe with argv[0]
    // = the applet (here through env, which sh runs without an exec).
    let (_, out) = exec_in(&on, &sh, Some(&args(&["sh", "-c", "env id; echo rc=$?"])));
    let t = text(&out);
    assert!(out.status.success() && t.contains("rc=137") && !t.contains("uid="), "/proc/self/exe as id: {t}");
    kills += 1;
    let (rec, seen) = ev.wait(Duration::from_secs(5), |r| r.applet.as_ref().is_some_and(|a| a.name == "id") && r.comm == "exe");
    let rec = rec.unwrap_or_else(|| panic!("no record of the /proc/self/exe re-exec; saw {seen:?}"));
    assert_eq!((rec.cgroup_id, rec.ino), (on.id(), bb.ino));

    // Without the flag the same execs run.
    for (what, path, argv, _, _) in &kill_cases {
        let (_, out) = exec_in(&off, path, argv.as_deref());
        assert!(!killed(&out), "{what} killed without KILL_APPLET: {}", text(&out));
    }
    let (_, out) = exec_in(&off, &sh, Some(&args(&["sh", "-c", "env id"])));
    assert!(out.status.success() && text(&out).contains("uid="), "id without KILL_APPLET: {}", text(&out));
    std::thread::sleep(Duration::from_millis(200));
    let rest = ev.rest();
    assert!(rest.iter().all(|r| r.reason != EnforceReason::Applet), "no other applet kill: {rest:?}");
    assert!(e.stats().unwrap().kills >= kills, "{:?}", e.stats());

    // Replacing the list: what stays allowed is never refused meanwhile.
    let nc = (bb.path("nc"), args(&["nc", "-h"]));
    e.set_applets(on.id(), bb.dev, bb.ino, Some(BUSYBOX_DISPATCHER), &["sh", "echo", "nc"]).expect("add nc");
    let (_, out) = exec_in(&on, &nc.0, Some(&nc.1));
    assert!(!killed(&out), "nc allowed now: {}", text(&out));
    assert_eq!(e.applets(on.id()).unwrap()[0].applets, args(&["echo", "nc", "sh"]));
    let too_long = "n".repeat(32);
    match e.set_applets(on.id(), bb.dev, bb.ino, Some(BUSYBOX_DISPATCHER), &["sh", &too_long]) {
        Err(enforce::EnforceError::AppletName { name, .. }) => assert_eq!(name, too_long),
        other => panic!("a 32-byte name must be refused: {other:?}"),
    }
    assert_eq!(e.applets(on.id()).unwrap()[0].applets, args(&["echo", "nc", "sh"]), "a refused update changes nothing");
    e.set_applets(on.id(), bb.dev, bb.ino, Some(BUSYBOX_DISPATCHER), &["sh", "echo"]).expect("drop nc");
    assert!(killed(&exec_in(&on, &nc.0, Some(&nc.1)).1), "nc refused again");
    assert_eq!(e.applets(on.id()).unwrap()[0].applets, args(&["echo", "sh"]));

    // Forgetting the file ends the check; clearing forgets every file.
    e.forget_applets(on.id(), bb.dev, bb.ino).expect("forget");
    assert!(!killed(&exec_in(&on, &nc.0, Some(&nc.1)).1), "nc runs once the file is forgotten");
    assert!(e.applets(on.id()).unwrap().is_empty());
    e.clear_applets(off.id()).expect("clear_applets");
    assert!(e.applets(off.id()).unwrap().is_empty());
}

#[test]
fn applet_lists_outlive_the_agent_are_adopted_and_collected_with_their_cgroup() {
    skip_unless_applets_ready!();
    let pins = Pins::new();
    let bb = Busybox::new(&["sh", "nc"]);
    let cg = TestCgroup::new("applet-adopt");
    let nc = (bb.path("nc"), args(&["nc", "-h"]));
    {
        let e = Enforcer::open(pins.config()).expect("open enforcer");
        e.set_applets(cg.id(), bb.dev, bb.ino, Some(BUSYBOX_DISPATCHER), &["sh"]).expect("set_applets");
        e.set_policy(cg.id(), CgPolicy { flags: PolicyFlags::KILL_APPLET, isolate_until: None }).expect("policy");
    }
    // No enforcer now: the pinned maps and link still kill.
    let (pid, out) = exec_in(&cg, &nc.0, Some(&nc.1));
    assert!(killed(&out), "killed with the agent gone: {}", text(&out));

    let e = Enforcer::open(pins.config()).expect("reopen enforcer");
    exec_holds(&e);
    assert!(e.status().iter().find(|s| s.program == "enf_exec").is_some_and(|s| s.adopted), "enf_exec link adopted");
    let listed = e.applets(cg.id()).unwrap();
    assert_eq!(listed, vec![MulticallFile { dev: bb.dev, ino: bb.ino, dispatcher: Some("busybox".into()), applets: args(&["sh"]) }]);
    let mut ev = Records::new(&e);
    let (rec, seen) = ev.wait(Duration::from_secs(5), |r| r.pid == pid);
    assert!(rec.is_some_and(|r| r.applet.is_some_and(|a| a.name == "nc")), "the kill while no agent ran waited in the ring; saw {seen:?}");
    let (pid, out) = exec_in(&cg, &nc.0, Some(&nc.1));
    assert!(killed(&out), "killed after adoption: {}", text(&out));
    let (rec, seen) = ev.wait(Duration::from_secs(5), |r| r.pid == pid);
    assert!(rec.is_some_and(|r| r.reason == EnforceReason::Applet), "record after adoption; saw {seen:?}");
    let (_, out) = exec_in(&cg, &bb.path("sh"), Some(&args(&["sh", "-c", "echo ok"])));
    assert!(out.status.success() && text(&out).contains("ok"), "sh still allowed: {}", text(&out));

    // A cgroup that is gone loses its lists at gc; clear() drops them too.
    let gone = 999_999_997;
    e.set_applets(gone, bb.dev, bb.ino, None, &["sh"]).unwrap();
    assert_eq!(e.gc(|id| id != gone).unwrap(), vec![gone]);
    assert!(e.applets(gone).unwrap().is_empty());
    assert_eq!(e.applets(cg.id()).unwrap().len(), 1, "a live cgroup keeps its lists");
    e.clear(cg.id()).unwrap();
    assert!(e.applets(cg.id()).unwrap().is_empty());
    assert!(!killed(&exec_in(&cg, &nc.0, Some(&nc.1)).1), "cleared: nc runs");
}

/// Median of `v` (sorted in place).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// What the applet check costs per exec: wall time of vfork+exec+wait loops
/// in a cgroup and the exec program's own run time (BPF run-time stats),
/// for a non-multicall exec and an allowed applet, with no policy, with the
/// file kill flags, and with KILL_APPLET added. Printed, never asserted
/// (run with --nocapture to see it); every exec must run to its end.
#[test]
fn applet_check_cost_per_exec() {
    skip_unless_applets_ready!();
    const N: u64 = 400;
    const ROUNDS: usize = 5;
    let pins = Pins::new();
    let bb = Busybox::new(&["true"]);
    let cg = TestCgroup::new("applet-bench");
    let e = Enforcer::open(pins.config()).expect("open enforcer");
    exec_holds(&e);
    e.set_applets(cg.id(), bb.dev, bb.ino, Some(BUSYBOX_DISPATCHER), &["true", "sh"]).expect("set_applets");
    let _stats = enforce::RunTimeStats::enable().expect("BPF_ENABLE_STATS");
    let helper = helper_dir().join("helper").display().to_string();
    let targets = [
        ("non-multicall exec (static helper)", helper.clone(), args(&["helper", "noop"])),
        ("allowed applet (busybox as true)", bb.path("true"), args(&["true"])),
    ];
    let configs =
        [("no policy", PolicyFlags::NONE), ("memfd|tmpfs|deleted", KILL_FILES), ("+ KILL_APPLET", KILL_FILES | PolicyFlags::KILL_APPLET)];
    let runs = e.exec_program_runs().unwrap().expect("enf_exec runs");
    eprintln!("enf_exec: {} instructions verified; {N} execs per run, {ROUNDS} rounds, medians:", runs.verified_insns);
    for (target, path, argv) in &targets {
        let mut wall = vec![Vec::new(); configs.len()];
        let mut prog = vec![Vec::new(); configs.len()];
        let mut foreign = 0u64;
        for _ in 0..ROUNDS {
            for (i, (_, flags)) in configs.iter().enumerate() {
                e.set_policy(cg.id(), CgPolicy { flags: *flags, isolate_until: None }).expect("policy");
                let before = e.exec_program_runs().unwrap().expect("runs");
                let out =
                    Command::new(&helper).arg("bench").arg(cg.procs()).arg(N.to_string()).arg(path).args(argv).output().expect("bench");
                let after = e.exec_program_runs().unwrap().expect("runs");
                let t = text(&out);
                assert!(out.status.success(), "{target}: {t}");
                let ns: f64 = t.trim().strip_prefix("ns=").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("bench said {t}"));
                let (cnt, time) = (after.run_cnt - before.run_cnt, after.run_time_ns - before.run_time_ns);
                foreign += cnt.saturating_sub(N);
                wall[i].push(ns / N as f64 / 1000.0);
                prog[i].push(time as f64 / cnt.max(1) as f64);
            }
        }
        let min: Vec<f64> = wall.iter().map(|v| v.iter().copied().fold(f64::INFINITY, f64::min)).collect();
        let w: Vec<f64> = wall.iter_mut().map(|v| median(v)).collect();
        let p: Vec<f64> = prog.iter_mut().map(|v| median(v)).collect();
        eprintln!("{target}:");
        for (i, (name, _)) in configs.iter().enumerate() {
            eprintln!(
                "  {name:<22} wall {:>7.1} us/exec (min {:>7.1}, x{:.3} of no policy)   enf_exec {:>6.0} ns/run",
                w[i],
                min[i],
                w[i] / w[0],
                p[i]
            );
        }
        eprintln!(
            "  KILL_APPLET adds {:+.0} ns/run in the program, wall x{:.3} of the file flags alone ({foreign} runs of other execs on the host in the windows)",
            p[2] - p[1],
            w[2] / w[1]
        );
    }
}

// ---- listeners on ports a container may not listen on ----

/// `helper listen` from inside `cg`: its pid and output.
fn listen_in(cg: &TestCgroup, addr: &str, port: u16, mode: &str) -> (u32, Output) {
    let child = Command::new(helper_dir().join("helper"))
        .arg("listen")
        .arg(cg.procs())
        .args([addr, &port.to_string(), mode])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run helper");
    let pid = child.id();
    (pid, child.wait_with_output().expect("wait helper"))
}

/// The port a `helper listen` said it got at `step` ("bound" or "listening").
fn said_port(o: &Output, step: &str) -> Option<u16> {
    text(o).lines().find_map(|l| l.strip_prefix(step)?.trim().parse().ok())
}

fn ephemeral_range() -> (u16, u16) {
    let r = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").expect("ip_local_port_range");
    let mut it = r.split_whitespace().map(|n| n.parse::<u16>().expect("port"));
    (it.next().expect("low"), it.next().expect("high"))
}

fn listen_holds(e: &Enforcer) {
    for name in ["enf_listen", "enf_listen_port"] {
        let st = e.status().into_iter().find(|s| s.program == name).unwrap_or_else(|| panic!("{name} status"));
        assert!(st.holds, "{name} does not hold: {:?}", st.error);
    }
}

#[test]
fn listeners_on_ports_not_allowed_are_killed_and_reported() {
    skip_unless_applets_ready!();
    let pins = Pins::new();
    let (on, off) = (TestCgroup::new("listen-on"), TestCgroup::new("listen-off"));
    let e = Enforcer::open(pins.config()).expect("open enforcer");
    listen_holds(&e);
    let mut ev = Records::new(&e);
    let (low, high) = ephemeral_range();
    // A port below the ephemeral range, allowed for binds (and so listens).
    let allowed = 20000 + (std::process::id() % 10000) as u16;
    assert!(allowed < low);
    let rule = NetRule::bind("0.0.0.0/0".parse().unwrap()).port(allowed).proto(Protocol::Tcp);
    e.set_allow(on.id(), &[rule]).expect("allow");
    e.set_policy(on.id(), enforce_policy()).expect("policy");
    let before = e.stats().unwrap();

    // The allowed port listens.
    let (_, out) = listen_in(&on, "0.0.0.0", allowed, "bind");
    assert!(out.status.success() && said_port(&out, "listening ") == Some(allowed), "allowed port: {}", text(&out));
    // bind(0) passes the bind hook, listen() on the port it got does not.
    let (pid, out) = listen_in(&on, "0.0.0.0", 0, "bind");
    let bound = said_port(&out, "bound ").unwrap_or_else(|| panic!("bind(0): {}", text(&out)));
    assert!(killed(&out) && said_port(&out, "listening ").is_none(), "bind(0)+listen: not killed: {:?} {}", out.status, text(&out));
    let (rec, seen) = ev.wait(Duration::from_secs(5), |r| r.pid == pid);
    let rec = rec.unwrap_or_else(|| panic!("bind(0)+listen: no record; saw {seen:?}"));
    assert_eq!((rec.op, rec.reason, rec.cgroup_id, rec.denied), (EnforceOp::Listen, EnforceReason::NotAllowed, on.id(), true));
    assert_eq!((rec.port, rec.addr, rec.proto), (bound, Some("0.0.0.0".parse().unwrap()), Some(Protocol::Tcp)));
    assert!(rec.ino != 0, "the socket's inode: {rec:?}");
    match rec.to_event().kind {
        lancet_engine::event::EventKind::Net(n) => {
            assert_eq!((n.op, n.sport, n.dport, n.result), (lancet_engine::event::NetOp::Listen, bound, 0, libc::EPERM));
            assert_eq!(n.saddr, "0.0.0.0".parse::<std::net::IpAddr>().unwrap());
        }
        other => panic!("not a net event: {other:?}"),
    }
    // listen() without bind() picks an ephemeral port itself, after the
    // state change: the record waits for the SIGKILL's delivery to get it.
    let (pid, out) = listen_in(&on, "0.0.0.0", 0, "nobind");
    assert!(killed(&out) && said_port(&out, "listening ").is_none(), "listen without bind: not killed: {}", text(&out));
    let (rec, seen) = ev.wait(Duration::from_secs(5), |r| r.pid == pid);
    let rec = rec.unwrap_or_else(|| panic!("listen without bind: no record; saw {seen:?}"));
    assert_eq!((rec.op, rec.denied, rec.cgroup_id), (EnforceOp::Listen, true, on.id()));
    assert!((low..=high).contains(&rec.port), "the ephemeral port listen() picked: {}", rec.port);
    eprintln!("listen() without bind: killed, recorded with port {} (range {low}-{high})", rec.port);
    // IPv6: the same, and ::1 is loopback.
    let (pid, out) = listen_in(&on, "::", 0, "bind");
    let bound6 = said_port(&out, "bound ").unwrap_or_else(|| panic!("bind(::, 0): {}", text(&out)));
    assert!(killed(&out), "IPv6 bind(0)+listen: not killed: {}", text(&out));
    let (rec, seen) = ev.wait(Duration::from_secs(5), |r| r.pid == pid);
    let rec = rec.unwrap_or_else(|| panic!("IPv6: no record; saw {seen:?}"));
    assert_eq!((rec.port, rec.addr), (bound6, Some("::".parse().unwrap())));
    // Loopback listeners are exempt, as loopback binds are.
    for addr in ["127.0.0.1", "::1"] {
        let (_, out) = listen_in(&on, addr, 0, "bind");
        assert!(out.status.success() && said_port(&out, "listening ").is_some(), "{addr}: {:?} {}", out.status, text(&out));
    }
    let after = e.stats().unwrap();
    assert_eq!(after.listen_kills - before.listen_kills, 3, "{after:?}");
    assert!(after.kills - before.kills >= 3);

    // Outside the flagged cgroup nothing happens.
    for (addr, mode) in [("0.0.0.0", "bind"), ("0.0.0.0", "nobind"), ("::", "bind")] {
        let (_, out) = listen_in(&off, addr, 0, mode);
        assert!(out.status.success() && said_port(&out, "listening ").is_some(), "unflagged {addr} {mode}: {}", text(&out));
    }

    // Audit only: reported, not killed. A listener without bind() is
    // reported before its port is picked: port 0.
    e.set_policy(on.id(), CgPolicy { flags: PolicyFlags::NET_AUDIT, isolate_until: None }).expect("audit");
    let (pid, out) = listen_in(&on, "0.0.0.0", 0, "bind");
    let port = said_port(&out, "listening ").unwrap_or_else(|| panic!("audit: {:?} {}", out.status, text(&out)));
    let (rec, seen) = ev.wait(Duration::from_secs(5), |r| r.pid == pid);
    let rec = rec.unwrap_or_else(|| panic!("audit: no record; saw {seen:?}"));
    assert_eq!((rec.op, rec.denied, rec.port), (EnforceOp::Listen, false, port));
    let (pid, out) = listen_in(&on, "0.0.0.0", 0, "nobind");
    assert!(out.status.success(), "audit, no bind: {}", text(&out));
    let (rec, seen) = ev.wait(Duration::from_secs(5), |r| r.pid == pid);
    let rec = rec.unwrap_or_else(|| panic!("audit, no bind: no record; saw {seen:?}"));
    assert_eq!((rec.op, rec.denied, rec.port), (EnforceOp::Listen, false, 0));
    std::thread::sleep(Duration::from_millis(200));
    let rest = ev.rest();
    assert!(rest.iter().all(|r| r.cgroup_id != off.id()), "records from the unflagged cgroup: {rest:?}");
    assert_eq!(e.stats().unwrap().listen_kills, after.listen_kills, "audit kills nothing");
}

// ---- writes refused by a read-only mount (EROFS) ----

const UNSHARE: &str = "/usr/bin/unshare";

fn skip_erofs() -> Option<String> {
    skip_kernel().or_else(|| (!Path::new(UNSHARE).is_file()).then(|| format!("{UNSHARE} missing (util-linux)")))
}

macro_rules! skip_unless_erofs_ready {
    () => {
        if let Some(why) = skip_erofs() {
            lancet_testkit::skip(&why);
            return;
        }
    };
}

/// A directory on disk with two files, `existing` and `victim`.
fn ro_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("lancet-ro").tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    for f in ["existing", "victim"] {
        std::fs::write(dir.path().join(f), b"x").expect("write");
    }
    dir
}

/// Runs `script` with sh from inside `cg`, in a private mount namespace
/// where `dir` is bind-mounted read-only onto itself (as protect mode
/// makes a container's root read-only in its own namespace). The host's
/// view of `dir` stays writable. The pid (kept by the execs) and output.
fn run_read_only(cg: &TestCgroup, dir: &Path, script: &str) -> (u32, Output) {
    let d = dir.display();
    let full = format!("mount --bind -o ro {d} {d} || exit 99; {script}");
    let child = Command::new(helper_dir().join("helper"))
        .arg("cgexec")
        .arg(cg.procs())
        .arg(UNSHARE)
        .args(["--argv", "unshare", "-m", "--propagation", "private", "sh", "-c", &full])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run helper");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait helper");
    assert_ne!(out.status.code(), Some(99), "the read-only bind mount: {}", text(&out));
    (pid, out)
}

/// The shell commands of the test, the comm each runs as, the syscalls
/// it may refuse with (glibc may pick the *at() form), and the path.
fn refused_writes(d: &str) -> Vec<(String, &'static str, &'static [&'static str], String)> {
    vec![
        (format!("touch {d}/new"), "touch", &["openat", "open", "creat"], format!("{d}/new")),
        (format!("mkdir {d}/dir"), "mkdir", &["mkdir", "mkdirat"], format!("{d}/dir")),
        (format!("sh -c 'echo x > {d}/f'"), "sh", &["openat", "open"], format!("{d}/f")),
        (format!("chmod 600 {d}/existing"), "chmod", &["fchmodat", "fchmodat2", "chmod"], format!("{d}/existing")),
        (format!("rm -f {d}/victim"), "rm", &["unlinkat", "unlink"], format!("{d}/victim")),
        (format!("mv {d}/existing {d}/moved"), "mv", &["renameat2", "renameat", "rename"], format!("{d}/moved")),
    ]
}

fn links_of_program(id: u32) -> usize {
    libbpf_rs::query::LinkInfoIter::default().filter(|l| l.prog_id == id).count()
}

#[test]
fn writes_refused_by_a_read_only_mount_are_reported_with_the_writer() {
    skip_unless_erofs_ready!();
    let pins = Pins::new();
    let (on, off) = (TestCgroup::new("erofs-on"), TestCgroup::new("erofs-off"));
    let dir = ro_dir();
    let d = dir.path().display().to_string();
    let e = Enforcer::open(pins.config()).expect("open enforcer");
    let prog = e.write_reports_program().expect("enf_sys_exit loaded");
    let st = e.status().into_iter().find(|s| s.program == "enf_sys_exit").expect("status");
    assert!(st.holds && st.pin.is_none(), "loaded, not attached: {st:?}");
    assert!(!e.write_reports_attached() && links_of_program(prog.id) == 0, "no cgroup reports: not attached");

    e.set_write_reports(on.id(), true).expect("reports on");
    assert!(e.write_reports_attached() && links_of_program(prog.id) == 1, "attached for the first cgroup");
    assert_eq!(e.write_reports().unwrap(), vec![on.id()]);
    assert_eq!(e.policy(on.id()).unwrap().map(|p| p.flags), Some(PolicyFlags::REPORT_EROFS));
    let mut ev = Records::new(&e);
    let before = e.stats().unwrap();

    let cases = refused_writes(&d);
    let script: Vec<String> = cases.iter().map(|(cmd, ..)| cmd.clone()).collect();
    let (_, out) = run_read_only(&on, dir.path(), &script.join("; "));
    let t = text(&out);
    assert_eq!(t.matches("Read-only file system").count(), cases.len(), "every write refused: {t}");
    std::thread::sleep(Duration::from_millis(300));
    let mut got = ev.rest();
    for (cmd, comm, syscalls, path) in &cases {
        let mine: Vec<EnforceRecord> = got.iter().filter(|r| r.comm == *comm).cloned().collect();
        assert_eq!(mine.len(), 1, "{cmd}: one record, got {mine:?}");
        let r = &mine[0];
        assert_eq!((r.op, r.reason, r.denied, r.cgroup_id), (EnforceOp::WriteRefused, EnforceReason::ReadOnly, true, on.id()), "{cmd}");
        let w = r.write.clone().unwrap_or_else(|| panic!("{cmd}: no write in {r:?}"));
        let name = w.syscall_name().unwrap_or("?");
        assert!(syscalls.contains(&name), "{cmd}: syscall {name} ({}) not one of {syscalls:?}", w.syscall);
        assert_eq!(w.path.as_deref(), Some(path.as_str()), "{cmd}");
        assert!(!w.path_cut && !w.path_unreadable && !w.compat, "{cmd}: {w:?}");
        match r.to_event().kind {
            lancet_engine::event::EventKind::File(f) => {
                assert_eq!((f.path.as_str(), f.op), (path.as_str(), w.file_op()), "{cmd}");
                eprintln!("{cmd:<60} -> {name} {:?} {}", f.op, f.path);
            }
            other => panic!("{cmd}: not a file event: {other:?}"),
        }
        got.retain(|x| x.comm != *comm);
    }
    assert!(got.is_empty(), "no other records: {got:?}");
    assert_eq!(e.stats().unwrap().write_refused - before.write_refused, cases.len() as u64);

    // A relative path is kept as passed, with its directory fd (AT_FDCWD).
    let (_, out) = run_read_only(&on, dir.path(), &format!("cd {d} && touch rel"));
    assert!(text(&out).contains("Read-only file system"), "{}", text(&out));
    let (rec, seen) = ev.wait(Duration::from_secs(5), |r| r.comm == "touch");
    let w = rec.and_then(|r| r.write).unwrap_or_else(|| panic!("relative touch: no record; saw {seen:?}"));
    assert_eq!((w.path.as_deref(), w.fd), (Some("rel"), Some(-100)));

    // The same writes from a cgroup without the flag: refused, not reported.
    let (_, out) = run_read_only(&off, dir.path(), &script.join("; "));
    assert_eq!(text(&out).matches("Read-only file system").count(), cases.len(), "{}", text(&out));
    std::thread::sleep(Duration::from_millis(300));
    let rest = ev.rest();
    assert!(rest.is_empty(), "nothing from the unflagged cgroup: {rest:?}");

    // A loop of refused writes: at most the budget (64 a second) is sent,
    // the rest counted as dropped.
    let before = e.stats().unwrap();
    let helper = helper_dir().join("helper").display().to_string();
    let n = 2000u64;
    let (pid, out) = run_read_only(&on, dir.path(), &format!("exec {helper} erofs {n} {d}/loop"));
    let t = text(&out);
    assert!(t.contains(&format!("refused={n} ")), "{t}");
    let ns: u64 = t.split("ns=").nth(1).and_then(|v| v.trim().parse().ok()).unwrap_or_else(|| panic!("{t}"));
    std::thread::sleep(Duration::from_millis(300));
    let sent = ev.rest().iter().filter(|r| r.pid == pid).count() as u64;
    let after = e.stats().unwrap();
    let dropped = after.write_refused_dropped - before.write_refused_dropped;
    // The loop spans at most ns/1e9 + 2 one-second windows.
    let windows = ns / 1_000_000_000 + 2;
    eprintln!("{n} refused writes in {:.1} ms: {sent} reported, {dropped} dropped", ns as f64 / 1e6);
    assert!((1..=64 * windows).contains(&sent), "{sent} records over {windows} windows");
    assert_eq!(sent + dropped, n, "every refused write reported or counted");
    assert_eq!(after.write_refused - before.write_refused, sent);

    // The second cgroup keeps the program attached; the last one to go
    // (by clear, gc, set_policy or set_write_reports) detaches it.
    e.set_write_reports(off.id(), true).expect("off on");
    e.set_write_reports(on.id(), false).expect("on off");
    assert!(e.policy(on.id()).unwrap().is_none(), "no other flag: the entry goes");
    assert!(e.write_reports_attached(), "still wanted by the other cgroup");
    e.clear(off.id()).expect("clear");
    assert!(!e.write_reports_attached() && links_of_program(prog.id) == 0, "cleared the last: detached");
    e.set_policy(on.id(), CgPolicy { flags: PolicyFlags::REPORT_EROFS | PolicyFlags::NET_AUDIT, isolate_until: None }).expect("policy");
    assert!(e.write_reports_attached(), "set_policy with the flag attaches");
    e.set_policy(on.id(), CgPolicy { flags: PolicyFlags::NET_AUDIT, isolate_until: None }).expect("policy");
    assert!(!e.write_reports_attached() && links_of_program(prog.id) == 0, "set_policy without it detaches");
    let gone = 999_999_995;
    e.set_write_reports(gone, true).expect("gone on");
    assert!(e.write_reports_attached());
    assert_eq!(e.gc(|id| id != gone).unwrap(), vec![gone]);
    assert!(!e.write_reports_attached() && links_of_program(prog.id) == 0, "gc of the last: detached");
    let (_, out) = run_read_only(&on, dir.path(), &format!("touch {d}/after"));
    assert!(text(&out).contains("Read-only file system"));
    std::thread::sleep(Duration::from_millis(300));
    let rest = ev.rest();
    assert!(rest.is_empty(), "detached: nothing reported: {rest:?}");
}

#[test]
fn write_reports_outlive_the_agent_and_are_adopted() {
    skip_unless_erofs_ready!();
    let pins = Pins::new();
    let cg = TestCgroup::new("erofs-adopt");
    let dir = ro_dir();
    let d = dir.path().display().to_string();
    let old = {
        let e = Enforcer::open(pins.config()).expect("open enforcer");
        e.set_write_reports(cg.id(), true).expect("reports on");
        e.write_reports_program().expect("loaded").id
    };
    // No agent: the pinned link still reports, into the pinned ring.
    assert_eq!(links_of_program(old), 1);
    let (pid, _) = run_read_only(&cg, dir.path(), &format!("exec touch {d}/while-away"));

    let e = Enforcer::open(pins.config()).expect("reopen enforcer");
    let st = e.status().into_iter().find(|s| s.program == "enf_sys_exit").expect("status");
    assert!(st.holds && st.adopted && st.pin.is_some(), "adopted: {st:?}");
    let new = e.write_reports_program().expect("loaded").id;
    assert_ne!(old, new);
    assert_eq!((links_of_program(old), links_of_program(new)), (0, 1), "the old link replaced by one of the new program");
    let mut ev = Records::new(&e);
    let (rec, seen) = ev.wait(Duration::from_secs(5), |r| r.pid == pid);
    let w = rec.and_then(|r| r.write).unwrap_or_else(|| panic!("the write while no agent ran: no record; saw {seen:?}"));
    assert_eq!(w.path, Some(format!("{d}/while-away")));
    let (pid, _) = run_read_only(&cg, dir.path(), &format!("exec touch {d}/after-adoption"));
    let (rec, seen) = ev.wait(Duration::from_secs(5), |r| r.pid == pid);
    assert!(rec.is_some_and(|r| r.op == EnforceOp::WriteRefused), "after adoption; saw {seen:?}");

    // A link pinned while no cgroup has the flag any more (the entry went
    // behind the agent's back, e.g. it died between the two): the next
    // enforcer detaches it at open.
    drop(e);
    use libbpf_rs::MapCore;
    let cg_policy = libbpf_rs::MapHandle::from_pinned_path(pins.0.join("cg_policy")).expect("pinned cg_policy");
    cg_policy.delete(&cg.id().to_ne_bytes()).expect("delete the entry");
    assert_eq!(links_of_program(new), 1);
    let e = Enforcer::open(pins.config()).expect("reopen");
    assert!(!e.write_reports_attached() && links_of_program(new) == 0, "stale link removed");
    assert!(e.status().into_iter().find(|s| s.program == "enf_sys_exit").is_some_and(|s| s.holds && !s.adopted && s.pin.is_none()));
}

/// What `enf_sys_exit` costs every syscall on the host: a tight loop of
/// getppid() in a process outside any flagged cgroup, with the program
/// detached, attached (one cgroup flagged, elsewhere), and detached again.
/// Printed, never asserted (run with --nocapture).
#[test]
fn write_reports_cost_per_syscall() {
    skip_unless_erofs_ready!();
    const N: u64 = 2_000_000;
    const ROUNDS: usize = 7;
    let pins = Pins::new();
    let flagged = TestCgroup::new("erofs-cost");
    let e = Enforcer::open(pins.config()).expect("open enforcer");
    let helper = helper_dir().join("helper");
    let run = || -> f64 {
        let out = Command::new(&helper).args(["syscalls", &N.to_string()]).output().expect("helper");
        let t = text(&out);
        let ns: f64 = t.trim().strip_prefix("ns=").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{t}"));
        ns / N as f64
    };
    let phases = ["detached", "attached", "detached again"];
    let mut ns = vec![Vec::new(); phases.len()];
    for _ in 0..ROUNDS {
        for (i, phase) in phases.iter().enumerate() {
            e.set_write_reports(flagged.id(), *phase == "attached").expect("set_write_reports");
            assert_eq!(e.write_reports_attached(), *phase == "attached");
            ns[i].push(run());
        }
    }
    let m: Vec<f64> = ns.iter_mut().map(|v| median(v)).collect();
    eprintln!("getppid() outside any flagged cgroup, {N} calls x {ROUNDS} rounds, median ns/syscall:");
    for (i, phase) in phases.iter().enumerate() {
        eprintln!("  enf_sys_exit {phase:<15} {:>7.1} ns/syscall", m[i]);
    }
    eprintln!("  attached costs {:+.1} ns per syscall of every task on the host", m[1] - (m[0] + m[2]) / 2.0);
    // The program's own share, from the kernel's run-time statistics.
    e.set_write_reports(flagged.id(), true).expect("on");
    let stats = enforce::RunTimeStats::enable().expect("BPF_ENABLE_STATS");
    let a = e.write_reports_program().expect("runs");
    let with_stats = run();
    let b = e.write_reports_program().expect("runs");
    drop(stats);
    let (cnt, time) = (b.run_cnt - a.run_cnt, b.run_time_ns - a.run_time_ns);
    eprintln!(
        "  enf_sys_exit itself: {:.1} ns/run over {cnt} runs ({} instructions verified; loop {with_stats:.1} ns/syscall with run-time stats on)",
        time as f64 / cnt.max(1) as f64,
        a.verified_insns
    );
    e.set_write_reports(flagged.id(), false).expect("off");
}
