//! Docker Engine containers end to end, as root: Debian's docker.io 20.10
//! on the system containerd (started by hand, `scripts/engines.sh`), images
//! made locally (`docker load` of podman's busybox image, `docker import` of
//! the Debian minbase rootfs). `lancet trace` shows a Docker container's
//! execs, file writes and connects with its name and image, while a podman
//! container is watched too; a protected Docker container refuses a dropped
//! binary and an unlisted connection while its service keeps serving, and
//! the map shows both.
//!
//! One test at a time: a protecting agent guards every container of the
//! workload it protects, the trace test's included.

mod common;

use common::*;
use lancet_testkit::docker;
use std::time::Duration;

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

const WAIT: Duration = Duration::from_secs(20);

macro_rules! skip_unless_docker {
    ($($img:expr),*) => {
        skip_unless_ready!(true);
        if let Some(why) = docker::not_ready(&[$($img),*]) {
            lancet_testkit::skip(&why);
            return;
        }
    };
}

fn in_docker(v: &serde_json::Value, c: &docker::Container, repository: &str) -> bool {
    str_field(v, "container.name") == c.name
        && str_field(v, "container.full_id") == c.id
        && str_field(v, "container.image.repository") == repository
        && str_field(v, "container.type") == "docker"
}

/// The issue this file began with: a Docker container's execs were
/// attributed in `lancet trace`, its writes (one a second for 8 s) never
/// appeared. A podman container's storage was marked first, and Docker's
/// storage (`/var/lib/docker`, a bind mount of the same disk) could not be
/// resolved through it; see `lancet-sensor`'s `file_changes_root`.
#[test]
fn docker_execs_writes_and_connects_are_attributed_while_podman_is_watched_too() {
    skip_unless_docker!(docker::BUSYBOX_IMAGE, docker::MINBASE_IMAGE);
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    // Running before the trace starts: its storage is marked first.
    let pod = Container::start(&unique("lancet-dk-podman"), &[], &["sleep", "600"]);
    let net = docker::Network::create(&unique("lancet-dk-net"));
    let (writer_name, srv_name, cli_name) = (unique("lancet-dk-writer"), unique("lancet-dk-srv"), unique("lancet-dk-cli"));
    let mut trace = Trace::start(&["--event", "all", "-c", &writer_name, "-c", &srv_name, "-c", &cli_name, "-c", &pod.name]);

    // The reporter's container: the Debian minbase, `docker import`ed,
    // writing once a second for 8 s.
    let writer = docker::Container::start_image(
        &writer_name,
        docker::MINBASE_IMAGE,
        &[],
        &["bash", "-c", "for i in $(seq 8); do date >> /var/log/lancet-$i; sleep 1; done; exec sleep 600"],
    );
    let repo = "localhost/lancet-minbase";
    let ev = trace.wait_for(WAIT, "exec of date in the writer", |v| {
        str_field(v, "evt.type") == "execve" && in_docker(v, &writer, repo) && str_field(v, "proc.exepath") == "/usr/bin/date"
    });
    assert_eq!(str_field(&ev, "container.image"), "localhost/lancet-minbase:test", "{ev}");
    for i in 1..=8 {
        let file = format!("/var/log/lancet-{i}");
        trace.wait_for(WAIT, &format!("write of {file}"), |v| {
            str_field(v, "evt.type") == "write" && in_docker(v, &writer, repo) && str_field(v, "fd.name") == file
        });
    }
    let ev = trace.wait_for(WAIT, "creation of /var/log/lancet-8", |v| {
        str_field(v, "evt.type") == "creat" && in_docker(v, &writer, repo) && str_field(v, "fd.name") == "/var/log/lancet-8"
    });
    assert!(str_field(&ev, "fd.host_path").starts_with("/var/lib/docker/overlay2/"), "{ev}");

    // The podman container's writes are still seen (its storage is
    // another bind mount of the same disk).
    assert!(pod.sh("echo x > /tmp/podman-too").status.success());
    trace.wait_for(WAIT, "write in the podman container", |v| {
        str_field(v, "evt.type") == "write" && str_field(v, "container.name") == pod.name && str_field(v, "fd.name") == "/tmp/podman-too"
    });

    // A connect from one Docker container to another on a Docker network,
    // and its accept.
    let srv = docker::Container::start(&srv_name, &["--network", &net.0], &["httpd", "-f", "-p", "8080", "-h", "/www"]);
    let cli = docker::Container::start(&cli_name, &["--network", &net.0], &["sleep", "600"]);
    let bb = "localhost/lancet-busybox";
    let srv_ip = srv.ip();
    let o = cli.exec(&["timeout", "5", "wget", "-q", "-O", "/dev/null", &format!("http://{srv_ip}:8080/index.html")]);
    assert!(o.status.success(), "wget between Docker containers: {}", out_text(&o));
    let ev = trace.wait_for(WAIT, "connect from the client", |v| {
        str_field(v, "evt.type") == "connect" && in_docker(v, &cli, bb) && str_field(v, "fd.dip") == srv_ip && field(v, "fd.dport") == 8080
    });
    assert_eq!(str_field(&ev, "proc.name"), "wget", "{ev}");
    assert_eq!(str_field(&ev, "evt.res"), "SUCCESS", "{ev}");
    trace.wait_for(WAIT, "accept in the server", |v| {
        str_field(v, "evt.type") == "accept" && in_docker(v, &srv, bb) && field(v, "fd.sport") == 8080
    });
    drop(trace);
}
