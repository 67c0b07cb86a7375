use super::*;
use crate::fanotify::parse::build;
use lancet_engine::event::{EventKind, FileEvent};
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn under_and_join() {
    assert!(under(b"/a/b", b"/a"));
    assert!(under(b"/a", b"/a"));
    assert!(!under(b"/ab", b"/a"));
    assert!(under(b"/x", b"/"));
    let join = |d: &str, n: &[u8]| {
        let mut s = "stale".to_string();
        join_into(&mut s, d, n);
        s
    };
    let unknown = |n: Option<&[u8]>| {
        let mut s = "stale".to_string();
        unknown_path(n, &mut s);
        s
    };
    assert_eq!(join("/a", b"b"), "/a/b");
    assert_eq!(join("/", b"b"), "/b");
    assert_eq!(join("/a", b"."), "/a");
    assert_eq!(join("/a", b"\xffx"), "/a/\u{fffd}x");
    assert_eq!(unknown(Some(b"n")), "?/n");
    assert_eq!(unknown(Some(b".")), "?");
    assert_eq!(unknown(None), "?");
}

#[test]
fn dir_cache_is_bounded_and_keeps_referenced() {
    let mut c = DirCache::new(4);
    for i in 0..4u8 {
        c.insert(vec![i].into(), format!("/d{i}"), Place::Under);
    }
    assert!(c.get(&[0]).is_some());
    c.insert(vec![9].into(), "/d9".into(), Place::Under);
    assert_eq!(c.len(), 4);
    assert!(c.get(&[0]).is_some(), "referenced entry survived");
    assert!(c.get(&[1]).is_none(), "first unreferenced entry evicted");
    for i in 10..100u8 {
        c.insert(vec![i].into(), String::new(), Place::Outside);
    }
    assert_eq!(c.len(), 4);
}

/// Handling of parsed events without a kernel: overflow, own pid,
/// unresolvable handles.
#[test]
fn handle_overflow_own_pid_and_unresolvable() {
    let Ok(mut w) = FileChangeWatcher::new() else {
        eprintln!("SKIP: fanotify_init not permitted");
        return;
    };
    let mut out = Vec::new();
    let buf = [
        build::event(libc::FAN_Q_OVERFLOW, -1, 0, &[]),
        build::event(
            libc::FAN_CREATE,
            -1,
            w.own_pid,
            &[build::fid_info(libc::FAN_EVENT_INFO_TYPE_DFID_NAME, [1, 1], 1, &[1; 8], Some("mine"))],
        ),
        build::event(libc::FAN_DELETE, -1, 4242, &[build::fid_info(libc::FAN_EVENT_INFO_TYPE_DFID_NAME, [1, 1], 1, &[1; 8], Some("gone"))]),
    ]
    .concat();
    let mut events = super::super::parse::events(&buf);
    while let Some(ev) = events.next_event() {
        w.handle(ev.unwrap(), 1, &mut out);
    }
    assert_eq!(w.stats.overflows, 1);
    assert_eq!(w.stats.resolve_failures, 1);
    assert_eq!(out.len(), 1);
    let EventKind::File(f) = &out[0].kind else { panic!() };
    assert_eq!(f.op, FileOp::Delete);
    assert_eq!(f.path, "?/gone");
    assert_eq!(out[0].process.pid, 4242);
}

/// Collect file events until `done(events)` or timeout.
pub(crate) fn collect_until(
    w: &mut FileChangeWatcher,
    timeout: Duration,
    mut done: impl FnMut(&[FileEvent]) -> bool,
) -> Vec<(u32, FileEvent)> {
    let start = Instant::now();
    let mut all = Vec::new();
    let mut files = Vec::new();
    loop {
        let mut out = Vec::new();
        w.read_events(&mut out).expect("read_events");
        for e in out {
            if let EventKind::File(f) = e.kind {
                files.push(f.clone());
                all.push((e.process.pid, f));
            }
        }
        if done(&files) || start.elapsed() > timeout {
            return all;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn has(evs: &[FileEvent], op: FileOp, path: &str) -> bool {
    evs.iter().any(|e| e.op == op && e.path == path)
}

#[test]
fn root_file_changes_in_tempdir() {
    let flags = libc::FAN_CLASS_NOTIF | libc::FAN_REPORT_DFID_NAME;
    if crate::fanotify::skip_unless_fanotify(flags) {
        return;
    }
    let dir = tempfile::Builder::new().prefix("lancet-fan").tempdir_in("/var/tmp").unwrap();
    let d = std::fs::canonicalize(dir.path()).unwrap();
    let other = tempfile::Builder::new().prefix("lancet-fan-other").tempdir_in("/var/tmp").unwrap();
    let mut w = FileChangeWatcher::new().unwrap();
    w.add_filesystem(&d).unwrap();
    w.set_path_filter(vec![d.clone()]);
    eprintln!("FAN_RENAME in use: {}", w.uses_fan_rename());
    let script = format!(
        "cd {d} && : > a && echo hi > b && chmod 0700 b && mv b c && mkdir sub keep && chmod 0700 keep && echo x > sub/f && rm a && rm -r sub && echo no > {o}/outside",
        d = d.display(),
        o = other.path().display()
    );
    let mut child = Command::new("sh").arg("-c").arg(&script).spawn().unwrap();
    let pid = child.id();
    assert!(child.wait().unwrap().success());
    let p = |n: &str| format!("{}/{n}", d.display());
    let evs = collect_until(&mut w, Duration::from_secs(5), |evs| {
        has(evs, FileOp::Delete, &p("sub")) || evs.iter().any(|e| e.op == FileOp::Delete && e.is_dir)
    });
    for (pid, e) in &evs {
        eprintln!("{pid} {:?} {} old={:?} dir={}", e.op, e.path, e.old_path, e.is_dir);
    }
    let files: Vec<FileEvent> = evs.iter().map(|(_, f)| f.clone()).collect();
    assert!(has(&files, FileOp::Create, &p("a")));
    assert!(has(&files, FileOp::Modify, &p("a")), "close-write on ': > a'");
    assert!(has(&files, FileOp::Create, &p("b")));
    assert!(has(&files, FileOp::Modify, &p("b")));
    assert!(has(&files, FileOp::Chmod, &p("b")));
    assert!(files.iter().any(|e| e.op == FileOp::Rename && e.path == p("c") && e.old_path.as_deref() == Some(p("b").as_str())));
    assert!(files.iter().any(|e| e.op == FileOp::Create && e.path == p("sub") && e.is_dir));
    assert!(files.iter().any(|e| e.op == FileOp::Chmod && e.path == p("keep") && e.is_dir), "chmod of a dir");
    assert!(has(&files, FileOp::Delete, &p("a")));
    assert!(files.iter().any(|e| e.op == FileOp::Delete && e.is_dir && (e.path == p("sub"))));
    // sub/f: created and deleted; its dir may be gone before we resolve it.
    assert!(files.iter().any(|e| e.op == FileOp::Create && (e.path == p("sub/f") || e.path == "?/f")));
    assert!(!files.iter().any(|e| e.path.contains("outside")), "filter must drop the other dir");
    assert!(evs.iter().all(|(p, _)| *p != std::process::id()));
    // Every process here is a child of our `sh`: either sh itself or a
    // direct child of it (mv, chmod, rm, mkdir).
    assert!(evs.iter().any(|(p, _)| *p == pid), "sh's own redirects carry its pid");
    assert!(files.iter().all(|e| e.host_path == e.path));
    assert_eq!(w.stats().overflows, 0, "queue overflowed (host too busy?)");
}
