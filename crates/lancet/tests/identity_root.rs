//! A cgroup's name is not a container (issue 17 item 1). Anyone given a
//! cgroup subtree of their own (systemd delegates one to every user) can
//! name a cgroup after root's container, whose id is in the world-readable
//! `/proc/<pid>/cgroup`, and run programs there. Those programs must not
//! be taken for the container's: learned into its profile, judged as it,
//! or moving its kernel policy.

mod common;

use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The cgroup2 mount (`/sys/fs/cgroup`, or `unified` on a hybrid host).
fn cgroup2_root() -> PathBuf {
    let unified = Path::new("/sys/fs/cgroup/unified");
    if unified.join("cgroup.procs").exists() {
        unified.into()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

/// A cgroup subtree given to `nobody`, as systemd delegates one to a user;
/// removed (after its processes are gone) on drop.
struct Delegated {
    top: PathBuf,
    leaf: PathBuf,
}

impl Delegated {
    fn create(leaf_name: &str) -> Delegated {
        let top = cgroup2_root().join(unique("lancet-deleg"));
        let leaf = top.join(leaf_name);
        std::fs::create_dir_all(&leaf).expect("mkdir cgroup");
        for d in [&top, &leaf] {
            std::os::unix::fs::chown(d, Some(65534), Some(65534)).expect("chown cgroup");
            for f in ["cgroup.procs", "cgroup.subtree_control", "cgroup.threads"] {
                let _ = std::os::unix::fs::chown(d.join(f), Some(65534), Some(65534));
            }
        }
        Delegated { top, leaf }
    }
}

impl Drop for Delegated {
    fn drop(&mut self) {
        if let Ok(pids) = std::fs::read_to_string(self.leaf.join("cgroup.procs")) {
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        let _ = std::fs::remove_dir(&self.leaf);
        let _ = std::fs::remove_dir(&self.top);
    }
}

#[test]
fn a_users_cgroup_named_after_a_container_is_not_the_container() {
    skip_unless_ready!(true);
    if Command::new("setpriv").arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        lancet_testkit::skip("setpriv (util-linux) is missing");
        return;
    }
    let c = Container::start(&unique("lancet-ident"), &[], &["sleep", "300"]);
    let own = std::fs::read_to_string(format!("/proc/{}/cgroup", c.pid())).expect("container cgroup");
    let name = own.lines().find_map(|l| l.strip_prefix("0::")).and_then(|p| p.rsplit('/').next()).expect("cgroup v2 path").to_string();
    assert!(name.contains(&c.id), "the container's cgroup {name} is named after its id");
    let fake = Delegated::create(&name);
    let mut trace = Trace::start(&["--host", "--event", "execve"]);

    // nobody, waiting on stdin, is moved into the cgroup named like the
    // container's (a user would create it in their own subtree), then runs
    // a program there.
    let mut impostor = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "sh", "-c", "read go; exec /bin/busybox echo lancet-impostor"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("setpriv");
    std::fs::write(fake.leaf.join("cgroup.procs"), impostor.id().to_string()).expect("move into the cgroup");
    impostor.stdin.take().expect("stdin").write_all(b"go\n").expect("go");
    assert!(impostor.wait().expect("wait").success());

    let ev = trace.wait_for(Duration::from_secs(15), "the impostor's exec", |v| {
        str_field(v, "proc.exepath") == "/bin/busybox" && str_field(v, "proc.cmdline").contains("lancet-impostor")
    });
    assert_ne!(str_field(&ev, "container.full_id"), c.id, "a user's cgroup was taken for the container: {ev}");
    assert_ne!(str_field(&ev, "container.name"), c.name, "{ev}");
    // The container itself is still itself.
    assert!(c.exec(&["id", "-u"]).status.success());
    let ev = trace.wait_for(Duration::from_secs(15), "the container's exec", |v| {
        str_field(v, "container.full_id") == c.id && str_field(v, "proc.cmdline") == "id -u"
    });
    assert_eq!(str_field(&ev, "container.name"), c.name);
}

/// A chroot into a bind mount of the host's root is not the runtime (issue
/// 17 item 2). `podman exec` starts a process from outside the container;
/// one that then chroots into a `-v /:/host` mount is in the host's root,
/// as `runc init` is before it enters the container, but in the
/// container's mount namespace, not its outside parent's. It is the
/// workload: judged, alerted, never skipped as the runtime's own work.
#[test]
fn a_chroot_into_the_hosts_root_is_not_the_runtime() {
    skip_unless_ready!(true);
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, policies, alerts) = agent_dirs(dir.path());
    let c = Container::start(&unique("lancet-chroot"), &["-v", "/:/host:ro"], &["sleep", "300"]);
    let agent = Agent::start(&state, &policies, &alerts, &[]);
    assert!(c.exec(&["id", "-u"]).status.success());
    std::thread::sleep(Duration::from_millis(1500));
    agent.cli(&["profile", "promote", &c.name, "--to", "monitor"]);
    std::thread::sleep(Duration::from_millis(300));
    let (_, pos) = alerts_since(&alerts, 0);

    let out = c.exec(&["chroot", "/host", "/bin/busybox", "echo", "lancet-escape"]);
    assert!(out.status.success(), "{}", out_text(&out));
    let (found, _) = wait_alerts(&alerts, pos, Duration::from_secs(10), Duration::from_millis(500));
    let escape = found.iter().find(|a| {
        a["output_fields"]["proc.exepath"] == "/bin/busybox"
            && a["output_fields"]["proc.cmdline"].as_str().unwrap_or("").contains("lancet-escape")
    });
    let a = escape.unwrap_or_else(|| panic!("the chroot's exec was taken for the runtime's: no alert; saw {found:?}"));
    assert_eq!(a["output_fields"]["container.name"], c.name.as_str());
    assert_eq!(a["output_fields"]["lancet.would_block"], true, "{a}");
}
