//! Root test against a real podman container: file changes through the
//! overlay upper directory, and a sensitive open through `/proc/<pid>/root`.

use super::{FileChangeWatcher, SensitiveOpenWatcher};
use lancet_engine::event::{Event, EventKind, FileEvent, FileOp};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) use lancet_testkit::podman::{try_podman as podman, Container, BUSYBOX_IMAGE as IMAGE};

/// Build the busybox test image if it is missing (same recipe as the one on
/// these machines).
pub(crate) fn ensure_image() -> Result<(), String> {
    if podman(&["image", "exists", IMAGE]).is_ok() {
        return Ok(());
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("image missing and no busybox to build it")?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let d = dir.path();
    for sub in ["bin", "etc", "tmp"] {
        std::fs::create_dir_all(d.join(sub)).map_err(|e| e.to_string())?;
    }
    std::fs::copy(busybox, d.join("bin/busybox")).map_err(|e| e.to_string())?;
    for app in ["sh", "cat", "echo", "touch", "chmod", "mv", "rm", "sleep"] {
        std::os::unix::fs::symlink("busybox", d.join("bin").join(app)).map_err(|e| e.to_string())?;
    }
    std::fs::write(d.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").map_err(|e| e.to_string())?;
    std::fs::write(d.join("etc/shadow"), "root:*:19000::::::\n").map_err(|e| e.to_string())?;
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!("tar -C {} -c . | podman import - {IMAGE}", d.display()))
        .stdout(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    if !st.success() {
        return Err("podman import failed".into());
    }
    Ok(())
}

fn pidns(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

fn file(e: &Event) -> &FileEvent {
    match &e.kind {
        EventKind::File(f) => f,
        k => panic!("not a file event: {k:?}"),
    }
}

#[test]
fn root_podman_container_file_changes_and_sensitive_open() {
    if crate::fanotify::skip_unless_fanotify(libc::FAN_CLASS_NOTIF | libc::FAN_REPORT_DFID_NAME) {
        return;
    }
    if podman(&["--version"]).is_err() {
        eprintln!("SKIP: podman not available");
        return;
    }
    if let Err(e) = ensure_image() {
        eprintln!("SKIP: {e}");
        return;
    }
    let id = podman(&["run", "-d", "--rm", IMAGE, "sleep", "60"]).expect("podman run");
    let _removed_at_end = Container::adopt(&id);
    let cpid: u32 = podman(&["inspect", "-f", "{{.State.Pid}}", &id]).unwrap().parse().unwrap();
    let upper = PathBuf::from(podman(&["inspect", "-f", "{{.GraphDriver.Data.UpperDir}}", &id]).unwrap());
    let upper = std::fs::canonicalize(&upper).unwrap();
    let cns = pidns(cpid).expect("container pid ns");
    eprintln!("container {id} pid {cpid} upper {}", upper.display());

    let mut changes = FileChangeWatcher::new().unwrap();
    changes.add_filesystem(&upper).unwrap();
    changes.set_path_filter(vec![upper.clone()]);
    let mut opens = SensitiveOpenWatcher::new().unwrap();
    let root = PathBuf::from(format!("/proc/{cpid}/root"));
    let marked = opens.watch_root(&root, 42).unwrap();
    assert!(marked >= 1, "at least /etc/shadow marked");

    // Run the writes and the open; each shell stays alive a little so its pid
    // can be checked against the container's pid namespace.
    let mut writer = Command::new("podman")
        .args(["exec", &id, "sh", "-c"])
        .arg(
            "busybox touch /tmp/x; echo a > /etc/y; busybox chmod +x /tmp/x; \
             busybox mv /tmp/x /tmp/z; busybox rm /tmp/z; exec 3</etc/shadow; sleep 4",
        )
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let cat = Command::new("podman").args(["exec", &id, "cat", "/etc/shadow"]).output().unwrap();
    assert!(cat.status.success());

    let u = |p: &str| format!("{}{p}", upper.display());
    let mut changed: Vec<Event> = Vec::new();
    let mut opened: Vec<(u64, Event)> = Vec::new();
    let mut alive_in_container = std::collections::HashMap::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        changes.read_events(&mut changed).unwrap();
        opens.read_events_labeled(&mut opened).unwrap();
        for e in changed.iter().chain(opened.iter().map(|(_, e)| e)) {
            let pid = e.process.pid;
            alive_in_container.entry(pid).or_insert_with(|| pidns(pid));
        }
        let done = changed.iter().any(|e| file(e).op == FileOp::Delete && file(e).path == u("/tmp/z"))
            && opened.iter().filter(|(_, e)| file(e).path == "/etc/shadow").count() >= 2;
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = writer.kill();
    let _ = writer.wait();

    for e in &changed {
        let f = file(e);
        eprintln!("change pid {} {:?} {} old={:?} dir={}", e.process.pid, f.op, f.path, f.old_path, f.is_dir);
    }
    for (l, e) in &opened {
        let f = file(e);
        eprintln!("open label {l} pid {} {} host={}", e.process.pid, f.path, f.host_path);
    }
    let has = |op: FileOp, path: &str| changed.iter().find(|e| file(e).op == op && file(e).path == path).map(|e| e.process.pid);
    let create_x = has(FileOp::Create, &u("/tmp/x")).expect("create /tmp/x");
    assert!(has(FileOp::Create, &u("/etc/y")).is_some(), "create /etc/y");
    let modify_y = has(FileOp::Modify, &u("/etc/y")).expect("modify /etc/y");
    assert!(has(FileOp::Chmod, &u("/tmp/x")).is_some(), "chmod /tmp/x");
    assert!(
        changed.iter().any(|e| file(e).op == FileOp::Rename
            && file(e).path == u("/tmp/z")
            && file(e).old_path.as_deref() == Some(u("/tmp/x").as_str())),
        "rename /tmp/x -> /tmp/z"
    );
    assert!(has(FileOp::Delete, &u("/tmp/z")).is_some(), "delete /tmp/z");
    for e in &changed {
        // Runtime bookkeeping in short-lived dirs elsewhere may come through
        // unresolved ("?/…"); everything resolved must be in the upper dir.
        let h = &file(e).host_path;
        assert!(h.starts_with('?') || h.starts_with(upper.to_str().unwrap()), "{h}");
        assert_ne!(e.process.pid, std::process::id());
    }
    assert_ne!(create_x, 0);
    // `echo a > /etc/y` is done by the shell itself, alive while it sleeps.
    assert_eq!(
        alive_in_container.get(&modify_y).cloned().flatten().as_ref(),
        Some(&cns),
        "writer pid {modify_y} is in the container's pid namespace"
    );

    let shadow: Vec<&Event> = opened.iter().filter(|(l, e)| *l == 42 && file(e).path == "/etc/shadow").map(|(_, e)| e).collect();
    assert!(shadow.len() >= 2, "cat and the shell's redirect both reported: {opened:?}");
    assert!(
        shadow.iter().any(|e| alive_in_container.get(&e.process.pid).cloned().flatten().as_ref() == Some(&cns)),
        "an opener pid is in the container's pid namespace"
    );
    assert!(!opened.iter().any(|(_, e)| file(e).path == "/etc/passwd"));
    assert!(shadow.iter().all(|e| file(e).host_path == format!("{}/etc/shadow", root.display())));
    assert_eq!(opens.unwatch(42), marked);
    eprintln!("stats: changes {:?} opens {:?}", changes.stats(), opens.stats());
}
