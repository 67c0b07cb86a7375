//! End to end, as root: real podman and runc containers, the real BPF probes
//! and fanotify, `lancet trace --format json` as a user would run it.
//! Skipped, with the reason printed, where the host cannot run them.

mod common;

use common::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

fn in_container(v: &serde_json::Value, c: &Container) -> bool {
    str_field(v, "container.name") == c.name
        && str_field(v, "container.full_id") == c.id
        && str_field(v, "container.image.repository") == "localhost/lancet-busybox"
        && str_field(v, "container.type") == "podman"
}

#[test]
fn podman_exec_network_files_and_sensitive_reads_are_attributed() {
    skip_unless_ready!(true);
    let net = Network::create(&unique("lancet-t-net"));
    let srv = Container::start(
        &unique("lancet-t-srv"),
        &["--network", &net.0, "--label", "app=web"],
        &["httpd", "-f", "-p", "8080", "-h", "/www"],
    );
    let cli = Container::start(&unique("lancet-t-cli"), &["--network", &net.0], &["sleep", "300"]);
    let srv_ip = srv.ip();
    let mut trace = Trace::start(&["--event", "all", "-c", &srv.name, "-c", &cli.name]);

    // exec
    assert!(cli.exec(&["id", "-u"]).status.success());
    let ev = trace.wait_for(WAIT, "execve of id", |v| {
        str_field(v, "evt.type") == "execve" && in_container(v, &cli) && str_field(v, "proc.exepath").ends_with("/id")
    });
    assert_eq!(str_field(&ev, "proc.cmdline"), "id -u");
    assert_eq!(ev["rule"], "lancet trace");
    assert!(ev["time"].as_str().unwrap_or("").ends_with('Z'));

    // listen (a second httpd inside the server container)
    assert!(srv.exec(&["httpd", "-p", "9090", "-h", "/www"]).status.success());
    let ev = trace.wait_for(WAIT, "listen on 9090", |v| {
        str_field(v, "evt.type") == "listen" && in_container(v, &srv) && field(v, "fd.sport") == 9090
    });
    assert_eq!(str_field(&ev, "fd.l4proto"), "tcp");

    // connect between two containers on a podman network, and its accept
    let out = cli.exec(&["wget", "-q", "-O", "-", &format!("http://{srv_ip}:8080/index.html")]);
    assert!(out.status.success(), "wget failed: {}", String::from_utf8_lossy(&out.stderr));
    let ev = trace.wait_for(WAIT, "connect to the server", |v| {
        str_field(v, "evt.type") == "connect" && in_container(v, &cli) && str_field(v, "fd.dip") == srv_ip && field(v, "fd.dport") == 8080
    });
    assert_eq!(str_field(&ev, "evt.res"), "SUCCESS");
    assert_eq!(str_field(&ev, "proc.name"), "wget");
    let ev = trace.wait_for(WAIT, "accept in the server", |v| {
        str_field(v, "evt.type") == "accept" && in_container(v, &srv) && field(v, "fd.sport") == 8080
    });
    // httpd listened before lancet started: its owner comes from the
    // start-up socket iterator.
    assert_eq!(str_field(&ev, "proc.name"), "httpd", "{ev}");
    assert_eq!(str_field(&ev, "fd.dip"), cli.ip(), "peer is the client, as IPv4: {ev}");

    // refused connect: nothing listens on 8181
    let _ = cli.exec(&["nc", &srv_ip, "8181"]);
    trace.wait_for(WAIT, "refused connect", |v| {
        str_field(v, "evt.type") == "connect"
            && in_container(v, &cli)
            && field(v, "fd.dport") == 8181
            && str_field(v, "evt.res") == "ECONNREFUSED"
    });

    // file write inside the container's filesystem
    assert!(cli
        .exec(&["sh", "-c", "echo lancet > /tmp/written && chmod 755 /tmp/written && mv /tmp/written /tmp/moved && rm /tmp/moved"])
        .status
        .success());
    trace.wait_for(WAIT, "file create", |v| {
        str_field(v, "evt.type") == "creat" && in_container(v, &cli) && str_field(v, "fd.name") == "/tmp/written"
    });
    trace.wait_for(WAIT, "file write", |v| {
        str_field(v, "evt.type") == "write" && in_container(v, &cli) && str_field(v, "fd.name") == "/tmp/written"
    });
    trace.wait_for(WAIT, "chmod", |v| {
        str_field(v, "evt.type") == "chmod" && in_container(v, &cli) && str_field(v, "fd.name") == "/tmp/written"
    });
    trace.wait_for(WAIT, "rename", |v| {
        str_field(v, "evt.type") == "rename"
            && in_container(v, &cli)
            && str_field(v, "fd.name") == "/tmp/moved"
            && str_field(v, "fs.path.source") == "/tmp/written"
    });
    trace.wait_for(WAIT, "unlink", |v| {
        str_field(v, "evt.type") == "unlink" && in_container(v, &cli) && str_field(v, "fd.name") == "/tmp/moved"
    });

    // sensitive read
    assert!(cli.exec(&["cat", "/etc/shadow"]).status.success());
    let ev = trace.wait_for(WAIT, "open of /etc/shadow", |v| {
        str_field(v, "evt.type") == "open" && in_container(v, &cli) && str_field(v, "fd.name") == "/etc/shadow"
    });
    assert_eq!(str_field(&ev, "proc.name"), "cat");

    // labels come from the runtime's own state
    let ev = trace.wait_for(WAIT, "any server event", |v| in_container(v, &srv));
    assert!(field(&ev, "container.image.digest").as_str().unwrap_or("").starts_with("sha256:"), "{ev}");
}

#[test]
fn runc_container_exec_is_attributed_by_its_cgroup() {
    skip_unless_ready!(false);
    if std::process::Command::new("runc").arg("--version").output().is_err() {
        lancet_testkit::skip("runc is not installed");
        return;
    }
    let id = unique("lancet-t-runc");
    // busybox runs its applets without exec; the container's own init exec
    // (runc execs process.args) is the exec to look for.
    let ctr = RuncContainer::create(&id, "sleep 1; echo lancet > /tmp/runc-file; sleep 30");
    let mut trace = Trace::start(&["-c", &id]);
    ctr.start();
    let ev = trace.wait_for(WAIT, "runc init exec", |v| {
        str_field(v, "evt.type") == "execve" && str_field(v, "container.name") == id && str_field(v, "proc.exepath") == "/bin/sh"
    });
    assert_eq!(str_field(&ev, "container.type"), "runc");
    assert_eq!(str_field(&ev, "proc.cmdline"), "sh -c sleep 1; echo lancet > /tmp/runc-file; sleep 30");
    // A later event in the same cgroup is attributed too (the state file
    // appears after the first exec).
    trace.wait_for(WAIT, "later runc event", |v| str_field(v, "container.name") == id && str_field(v, "evt.type") == "procexit");
}

/// A container started after the agent gets its sensitive-read marks on its
/// own files: they used to be placed through runc init before pivot_root,
/// whose root is the host's, and so went on the host's /etc/shadow.
#[test]
fn sensitive_reads_of_a_container_started_after_the_agent_are_seen() {
    skip_unless_ready!(true);
    let name = unique("lancet-t-late");
    let mut trace = Trace::start(&["-c", &name]);
    let late = Container::start(&name, &[], &["sleep", "300"]);
    std::thread::sleep(Duration::from_secs(4));
    assert!(late.exec(&["cat", "/etc/shadow"]).status.success());
    let ev = trace.wait_for(WAIT, "open of /etc/shadow in a container started after the agent", |v| {
        str_field(v, "evt.type") == "open" && str_field(v, "container.name") == name && str_field(v, "fd.name") == "/etc/shadow"
    });
    assert_eq!(str_field(&ev, "container.full_id"), late.id);
}

/// A process's first writes after its exec carry the name and cgroup the
/// exec gave it, not runc init's (it was runc's init until it exec'd, and
/// its writes used to be handled before the exec record read in the same
/// batch: "creat by runc", cgroup 1, and the daemon took them for the
/// runtime's setup). A process forked in the same batch (busybox runs `cp`
/// without an exec) writes under its parent's name, not an empty one, and
/// before the exec that runs what it wrote.
#[test]
fn writes_right_after_an_exec_carry_the_new_process() {
    skip_unless_ready!(true);
    let c = Container::start(&unique("lancet-t-first"), &[], &["sleep", "300"]);
    let mut trace = Trace::start(&["-c", &c.name]);
    for i in 0..5 {
        // busybox runs its applet by the name it is called by.
        let script = format!("echo x > /tmp/first-{i}; mkdir /tmp/d{i}; cp /bin/busybox /tmp/d{i}/true; /tmp/d{i}/true");
        assert!(c.exec(&["sh", "-c", &script]).status.success());
        let name = format!("/tmp/first-{i}");
        let write = trace.wait_for(WAIT, "the write right after the exec", |v| {
            in_container(v, &c) && str_field(v, "evt.type") == "creat" && str_field(v, "fd.name") == name
        });
        let pid = field(&write, "proc.pid").as_u64();
        let exec = trace.wait_for(WAIT, "the exec of sh", |v| {
            in_container(v, &c) && str_field(v, "evt.type") == "execve" && field(v, "proc.pid").as_u64() == pid
        });
        assert_eq!(str_field(&write, "proc.name"), "sh", "{write}");
        assert_eq!(field(&write, "cgroup.id"), field(&exec, "cgroup.id"), "{write}\n{exec}");
        let copy = format!("/tmp/d{i}/true");
        let write = trace
            .wait_for(WAIT, "the copy", |v| in_container(v, &c) && str_field(v, "evt.type") == "creat" && str_field(v, "fd.name") == copy);
        assert_eq!(str_field(&write, "proc.name"), "sh", "the fork of sh that runs cp: {write}");
        assert_eq!(field(&write, "cgroup.id"), field(&exec, "cgroup.id"), "{write}");
        let run = trace.wait_for(WAIT, "the copy run", |v| {
            in_container(v, &c) && str_field(v, "evt.type") == "execve" && str_field(v, "proc.exepath") == copy
        });
        let seen = |v: &serde_json::Value| trace.seen.iter().position(|s| s == v);
        assert!(seen(&write) < seen(&run), "the copy is seen before it runs");
    }
}
