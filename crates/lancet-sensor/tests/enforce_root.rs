//! The kernel enforcement backends on the real kernel, as root, against real
//! podman containers on a podman network each test creates: allow-lists on
//! connect/sendto/bind, audit, isolation (with expiry), adoption of pinned
//! state by a new enforcer, exec kills (memfd, tmpfs, deleted, by inode),
//! the freezer and pid-safe kills. Every test uses its own pin dir; guards
//! remove containers, networks, pins and freezes even when a test fails.

use lancet_sensor::enforce::{
    self, cgroup_of_pid, kill_process, process_start_time, unpin_all, CgPolicy, EnforceConfig, EnforceEvents, EnforceOp, EnforceReason,
    EnforceRecord, Enforcer, NetRule, PolicyFlags, Proto,
};
use lancet_sensor::probes::detect_cgroup2_root;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const IMAGE: &str = "localhost/lancet-busybox:test";

fn skip() -> Option<String> {
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
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{nanos:x}", std::process::id())
}

fn podman(args: &[&str]) -> String {
    let out = Command::new("podman").args(args).output().expect("run podman");
    assert!(out.status.success(), "podman {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
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

struct Network(String);

impl Drop for Network {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["network", "rm", "-f", &self.0]).output();
    }
}

/// A podman container, removed on drop.
struct Ctr {
    name: String,
}

impl Ctr {
    /// Serves "hello-lancet" with httpd on 8080 (foreground) and 8081.
    fn httpd(net: &Network, extra: &[&str]) -> Ctr {
        let name = unique("lancet-enf");
        let mount = format!("{}:/lh:ro", helper_dir().display());
        let mut args = vec!["run", "-d", "--rm", "--name", &name, "--network", &net.0, "-v", &mount];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[
            IMAGE,
            "sh",
            "-c",
            "mkdir -p /www && echo hello-lancet > /www/index.html && httpd -p 8081 -h /www && exec httpd -f -p 8080 -h /www",
        ]);
        podman(&args);
        let c = Ctr { name };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (ok, _) = c.sh("wget -q -O - http://127.0.0.1:8080/ && wget -q -O - http://127.0.0.1:8081/");
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "httpd in {} did not come up", c.name);
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    fn pid(&self) -> u32 {
        podman(&["inspect", "-f", "{{.State.Pid}}", &self.name]).parse().expect("pid")
    }

    fn ip(&self) -> String {
        podman(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", &self.name])
    }

    fn ip6(&self) -> String {
        podman(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}}{{end}}", &self.name])
    }

    fn cgroup_dir(&self) -> PathBuf {
        cgroup_of_pid(self.pid(), &detect_cgroup2_root().expect("cgroup2")).expect("container cgroup")
    }

    fn cgid(&self) -> u64 {
        enforce::cgroup_id(&self.cgroup_dir()).expect("cgroup id")
    }

    fn exec(&self, cmd: &[&str]) -> Output {
        let mut args = vec!["exec", self.name.as_str()];
        args.extend_from_slice(cmd);
        Command::new("podman").args(&args).output().expect("podman exec")
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

impl Drop for Ctr {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rm", "-f", "-t", "0", &self.name]).output();
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
        let net = Network(unique("lancet-enf-net"));
        let mut args = vec!["network", "create"];
        args.extend_from_slice(net_args);
        args.push(&net.0);
        podman(&args);
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
#include <unistd.h>
extern char **environ;
static int fail(const char *what) { printf("error: %s: %s\n", what, strerror(errno)); return 1; }
int main(int argc, char **argv) {
    if (argc < 2) return 2;
    if (!strcmp(argv[1], "alive")) { puts("alive"); return 0; }
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
    NetRule::egress(format!("{ip}/32").parse().unwrap()).port(port).proto(Proto::Tcp)
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
    assert_eq!(rec.proto, Some(Proto::Tcp));
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
    assert_eq!((rec.port, rec.proto), (5353, Some(Proto::Udp)));
    let udp = NetRule::egress(format!("{bip}/32").parse().unwrap()).port(5353).proto(Proto::Udp);
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
    let rule = NetRule::egress(format!("{b6}/128").parse().unwrap()).port(8080).proto(Proto::Tcp);
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
    let bind9000 = NetRule::bind("0.0.0.0/0".parse().unwrap()).port(9000).proto(Proto::Tcp);
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
    let rule = NetRule::egress(format!("{aip}/32").parse().unwrap()).port(8081).proto(Proto::Tcp).during_isolation();
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
    if let Ok(out) = Command::new("bpftool").args(["prog", "show", "name", "enf_exec"]).output() {
        // Programs live only through their links here (the enforcer keeps
        // no fd of the exec program): one loaded program per live link.
        let live = String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("name enf_exec")).count();
        let pinned = std::fs::read_dir("/sys/fs/bpf").unwrap().flatten().filter(|d| d.path().join("link-enf_exec").exists()).count();
        assert_eq!(live, pinned, "enf_exec programs alive vs pinned links");
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
    e.kill_ino(cgid, enforce::kernel_dev(md.dev()), md.ino()).expect("kill_ino");
    let (_, out) = a.sh("/usr/bin/lancet-victim alive; echo rc=$?");
    assert!(out.contains("rc=") && !out.contains("rc=137"), "KILL_EXEC_INO not set yet: {out}");
    e.set_policy(cgid, CgPolicy { flags: kill | PolicyFlags::KILL_EXEC_INO, isolate_until: None }).unwrap();
    let (_, out) = a.sh("/usr/bin/lancet-victim alive; echo rc=$?");
    assert!(out.contains("rc=137") && !out.contains("alive"), "listed inode killed: {out}");
    let (rec, seen) = ev.wait(Duration::from_secs(5), |r| r.reason == EnforceReason::KillIno);
    let rec = rec.unwrap_or_else(|| panic!("no kill-ino record; saw {seen:?}"));
    assert_eq!(rec.ino, md.ino());
    e.forget_ino(cgid, enforce::kernel_dev(md.dev()), md.ino()).unwrap();
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
    assert_eq!(status.len(), 9, "{status:?}");
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
