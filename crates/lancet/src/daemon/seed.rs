//! What a container that was already running when the agent started has
//! done so far, read from the host: its first process as the runtime ran
//! it (the OCI spec), its running processes, its sockets, and the
//! directories it wrote (its overlay upper layer records every write since
//! it started). Learned like live events, so a container that predates the
//! agent can be restarted in protect mode; checked against the profile for
//! `lancet profile promote --dry-run`.

use lancet_engine::attribution::ContainerInfo;
use lancet_engine::event::Event;
use lancet_engine::live::{entrypoint_event, parse_proc_net, process_event, socket_events, written_event, LiveProcess};
use lancet_sensor::overlay::{copied_up, written_or_unknown};
use std::collections::{BTreeSet, HashSet};
use std::path::Path;

/// Bounds on what is read from one container.
const MAX_PROCESSES: usize = 4096;
const MAX_UPPER_ENTRIES: usize = 20_000;
const MAX_UPPER_DEPTH: usize = 32;
/// runc's `PATH` when the spec sets none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The events a running container stands for. `cgroup_dir`: its cgroup on
/// the host; `cgroup_id`: that cgroup's id.
pub(super) fn live_events(c: &ContainerInfo, host_root: &Path, cgroup_dir: &Path, cgroup_id: u64, now: u64) -> Vec<Event> {
    let pids = cgroup_pids(cgroup_dir);
    let Some(&first) = pids.first() else { return Vec::new() };
    // The init process when the runtime recorded it and it is still there.
    let pid = c.pid.filter(|p| pids.contains(p)).unwrap_or(first);
    let root = format!("/proc/{pid}/root");
    let mut out = Vec::new();
    if let Some(p) = &c.process {
        if let Some(exe) = look_path(Path::new(&root), &p.args[0], p.path_env.as_deref().unwrap_or(DEFAULT_PATH), &p.cwd) {
            out.push(entrypoint_event(&exe, &p.args, &p.cwd, now, cgroup_id, pid));
        }
    }
    let ours: HashSet<u32> = pids.iter().copied().collect();
    let upper = c.upper_dir().map(|u| crate::protect::on_host(host_root, u));
    let upper = upper.as_deref();
    for &p in &pids {
        // A process running a file the container wrote is drift: never
        // learned as normal.
        match live_process(p, &ours) {
            // Unknown counts as written: never learned as normal.
            Some(lp) if !upper.is_some_and(|u| written_or_unknown(u, &lp.exe)) => out.push(process_event(&lp, now, cgroup_id)),
            Some(lp) => {
                tracing::warn!(container = %c.name, pid = p, exe = %lp.exe, "a running process runs a file the container wrote; not learned")
            }
            None => {}
        }
    }
    let read = |f: &str| parse_proc_net(&std::fs::read_to_string(format!("/proc/{pid}/net/{f}")).unwrap_or_default());
    let tcp: Vec<_> = read("tcp").into_iter().chain(read("tcp6")).collect();
    let udp: Vec<_> = read("udp").into_iter().chain(read("udp6")).collect();
    out.extend(socket_events(&tcp, &udp, now, cgroup_id, pid));
    if let Some(upper) = upper {
        let mounts = mount_targets(pid);
        for path in written_files(upper, &mounts) {
            out.push(written_event(&path, now, cgroup_id, pid));
        }
    }
    out
}

/// The processes in a cgroup and its children (bounded).
fn cgroup_pids(dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = stack.pop() {
        if let Ok(t) = std::fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(t.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if depth < 4 {
            if let Ok(rd) = std::fs::read_dir(&d) {
                stack.extend(rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| (e.path(), depth + 1)));
            }
        }
        if out.len() >= MAX_PROCESSES {
            out.truncate(MAX_PROCESSES);
            break;
        }
    }
    out
}

/// A running process: its executable as the container sees it, and its
/// parent's when the parent is in the container too. None for a process
/// running a deleted file (that is drift, never learned) or one that went.
fn live_process(pid: u32, container: &HashSet<u32>) -> Option<LiveProcess> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?.to_str()?.to_string();
    if exe.ends_with(" (deleted)") || !exe.starts_with('/') {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ppid: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
    let parent_exe = container
        .contains(&ppid)
        .then(|| std::fs::read_link(format!("/proc/{ppid}/exe")).ok().and_then(|p| p.to_str().map(str::to_string)))
        .flatten();
    Some(LiveProcess { pid, exe, parent_exe })
}

/// argv\[0\] as runc's `exec.LookPath` finds it: a name with a slash is
/// used as given (relative to `cwd`); otherwise the first `PATH` directory
/// holding an executable file of that name, joined (not resolved). Looked
/// up inside the container's root, following its symlinks inside it.
fn look_path(root: &Path, arg0: &str, path_env: &str, cwd: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    if arg0.is_empty() {
        return None;
    }
    if arg0.contains('/') {
        return Some(if arg0.starts_with('/') { arg0.to_string() } else { format!("{}/{arg0}", cwd.trim_end_matches('/')) });
    }
    path_env.split(':').filter(|d| d.starts_with('/')).find_map(|dir| {
        let candidate = format!("{}/{arg0}", dir.trim_end_matches('/'));
        let resolved = crate::protect::resolve_in_root(root, &candidate)?;
        let meta = std::fs::metadata(root.join(resolved.trim_start_matches('/'))).ok()?;
        (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then_some(candidate)
    })
}

/// Where the container's mounts are, as it sees them (`/etc/hosts`,
/// `/run/.containerenv`, `/dev`…): the runtime put placeholders for them in
/// the writable layer, which the workload never wrote.
fn mount_targets(pid: u32) -> HashSet<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    lancet_sensor::mountinfo::parse(&text).into_iter().map(|m| m.mount_point).collect()
}

/// podman's `/etc/mtab -> /proc/mounts`, made in every container it
/// creates: the runtime's, not a write of the workload's (learned, it would
/// make `/etc` a written directory, and writable in protect mode).
fn runtime_mtab(path: &str, host: &Path) -> bool {
    path == "/etc/mtab"
        && std::fs::read_link(host).is_ok_and(|t| matches!(t.to_str(), Some("/proc/mounts" | "/proc/self/mounts" | "../proc/self/mounts")))
}

/// The files (and whiteouts of deleted files) in the writable layer, as
/// container paths, one per directory written (which is what a profile
/// learns), leaving out the runtime's mount placeholders. Bounded; never
/// follows a symlink.
fn written_files(upper: &Path, mounts: &HashSet<String>) -> Vec<String> {
    written_files_within(upper, mounts, MAX_UPPER_ENTRIES)
}

/// [`written_files`] reading at most `max_entries` directory entries.
fn written_files_within(upper: &Path, mounts: &HashSet<String>, max_entries: usize) -> Vec<String> {
    let mut dirs = BTreeSet::new();
    let mut stack = vec![(upper.to_path_buf(), String::new(), 0usize)];
    let mut seen = 0usize;
    'walk: while let Some((host, inside, depth)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&host) else { continue };
        for e in rd.flatten() {
            seen += 1;
            if seen > max_entries {
                tracing::debug!(upper = %upper.display(), "writable layer larger than {max_entries} entries; the rest is not read");
                // What was read is still reduced to one file per directory
                // (returning it as it was gave every file: 20,000 events).
                break 'walk;
            }
            let Some(name) = e.file_name().to_str().map(str::to_string) else { continue };
            let path = format!("{inside}/{name}");
            if mounts.contains(&path) || runtime_mtab(&path, &e.path()) {
                continue;
            }
            match e.file_type() {
                Ok(t) if t.is_dir() => {
                    // A directory the workload made (nginx's
                    // /var/lib/nginx/body): its parent was written. Not one
                    // overlayfs copied up for a write below it, nor one the
                    // runtime made to hold a mount point.
                    // Never one directly below `/`: that would learn the
                    // root itself as written.
                    let holds_mount = mounts.iter().any(|m| m.starts_with(&path) && m.as_bytes().get(path.len()) == Some(&b'/'));
                    if depth > 0 && !holds_mount && !copied_up(&e.path()) {
                        dirs.insert(path.clone());
                    }
                    if depth < MAX_UPPER_DEPTH {
                        stack.push((e.path(), path, depth + 1));
                    }
                }
                Ok(_) => {
                    dirs.insert(path);
                }
                Err(_) => {}
            }
        }
    }
    // One file per directory is enough to learn the directory.
    let mut by_dir = std::collections::BTreeMap::new();
    for p in dirs {
        let dir = p.rsplit_once('/').map(|(d, _)| d.to_string()).unwrap_or_default();
        by_dir.entry(dir).or_insert(p);
    }
    by_dir.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn look_path_like_runc() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("bin")).unwrap();
        std::fs::create_dir_all(r.join("usr/sbin")).unwrap();
        std::fs::write(r.join("bin/busybox"), b"").unwrap();
        std::fs::set_permissions(r.join("bin/busybox"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("busybox", r.join("bin/httpd")).unwrap();
        std::fs::write(r.join("usr/sbin/data"), b"").unwrap();
        let path = "/usr/local/bin:/usr/sbin:/bin";
        assert_eq!(look_path(r, "httpd", path, "/").as_deref(), Some("/bin/httpd"), "joined, not resolved");
        assert_eq!(look_path(r, "data", path, "/"), None, "not executable");
        assert_eq!(look_path(r, "/opt/app", path, "/").as_deref(), Some("/opt/app"));
        assert_eq!(look_path(r, "./run", path, "/srv").as_deref(), Some("/srv/./run"));
        assert_eq!(look_path(r, "", path, "/"), None);
    }

    #[test]
    fn directories_the_workload_made_are_writes_those_holding_mounts_are_not() {
        let d = tempfile::tempdir().unwrap();
        let u = d.path();
        std::fs::create_dir_all(u.join("var/lib/nginx/body")).unwrap();
        std::fs::create_dir_all(u.join("run/secrets")).unwrap();
        let mounts: HashSet<String> = ["/run/secrets/x"].iter().map(|s| s.to_string()).collect();
        let got = written_files(u, &mounts);
        assert!(got.contains(&"/var/lib/nginx/body".to_string()), "{got:?}");
        assert!(!got.iter().any(|p| p == "/run" || p == "/run/secrets"), "runtime mount holders: {got:?}");
    }

    #[test]
    fn writable_layer_without_mount_placeholders() {
        let d = tempfile::tempdir().unwrap();
        let u = d.path();
        for f in ["etc/hosts", "run/.containerenv", "run/nginx.pid", "var/log/nginx/access.log", "var/log/nginx/error.log"] {
            std::fs::create_dir_all(u.join(f).parent().unwrap()).unwrap();
            std::fs::write(u.join(f), b"").unwrap();
        }
        std::fs::create_dir_all(u.join("dev")).unwrap();
        std::os::unix::fs::symlink("/proc/mounts", u.join("etc/mtab")).unwrap();
        let mounts: HashSet<String> = ["/etc/hosts", "/run/.containerenv", "/dev"].iter().map(|s| s.to_string()).collect();
        // A plain directory has no overlay origin xattrs, so /var/log and
        // /var/log/nginx count as made by the workload here (in an overlay
        // /var/log is a copy-up and is left out); /var is below `/`.
        assert_eq!(written_files(u, &mounts), ["/run/nginx.pid", "/var/log", "/var/log/nginx", "/var/log/nginx/access.log"]);
        // An mtab the workload wrote itself is its write.
        std::fs::remove_file(u.join("etc/mtab")).unwrap();
        std::fs::write(u.join("etc/mtab"), b"").unwrap();
        assert_eq!(written_files(u, &mounts), ["/etc/mtab", "/run/nginx.pid", "/var/log", "/var/log/nginx", "/var/log/nginx/access.log"]);
    }

    #[test]
    fn a_layer_past_the_bound_still_gives_one_file_per_directory() {
        let d = tempfile::tempdir().unwrap();
        for dir in 0..4 {
            let p = d.path().join(format!("data/{dir}"));
            std::fs::create_dir_all(&p).unwrap();
            for f in 0..30 {
                std::fs::write(p.join(f.to_string()), b"").unwrap();
            }
        }
        let out = written_files_within(d.path(), &HashSet::new(), 100);
        // At most one file per data directory, and the data directories
        // themselves (made here, not overlay copy-ups): one for `/data`.
        assert!(!out.is_empty() && out.len() <= 4 + 1, "{} files", out.len());
    }

    mod props {
        use super::*;

        fn files(root: &Path) -> usize {
            std::fs::read_dir(root)
                .map(|rd| rd.flatten().map(|e| if e.file_type().is_ok_and(|t| t.is_dir()) { files(&e.path()) } else { 1 }).sum())
                .unwrap_or(0)
        }

        /// A writable layer larger than MAX_UPPER_ENTRIES, deeper than
        /// MAX_UPPER_DEPTH, with links out of it: bounded, inside, unfollowed.
        #[test]
        fn written_files_are_bounded_and_never_follow_links() {
            let d = tempfile::tempdir().unwrap();
            let upper = d.path().join("upper");
            let outside = d.path().join("outside");
            std::fs::create_dir_all(outside.join("secret")).unwrap();
            std::fs::write(outside.join("secret/key"), b"x").unwrap();
            // Links to a directory and a file outside the layer.
            std::fs::create_dir_all(upper.join("etc")).unwrap();
            std::os::unix::fs::symlink(&outside, upper.join("etc/escape")).unwrap();
            std::os::unix::fs::symlink("../../outside/secret", upper.join("etc/rel")).unwrap();
            // Deeper than the walk goes.
            let mut deep = upper.join("deep");
            for i in 0..MAX_UPPER_DEPTH + 5 {
                deep = deep.join(format!("d{i}"));
            }
            std::fs::create_dir_all(&deep).unwrap();
            std::fs::write(deep.join("f"), b"").unwrap();
            // More entries than it reads (a bound of 150 here).
            for dir in 0..4 {
                let p = upper.join(format!("data/{dir}"));
                std::fs::create_dir_all(&p).unwrap();
                for f in 0..40 {
                    std::fs::write(p.join(format!("{f}")), b"").unwrap();
                }
            }
            assert!(files(&upper) > 150);
            for out in [written_files(&upper, &HashSet::new()), written_files_within(&upper, &HashSet::new(), 150)] {
                // One per directory written: the four data directories, /etc,
                // and the directories made (no overlay origin here) along
                // /data and the deep chain, which the walk cuts at its depth.
                assert!(out.len() <= 4 + 2 + 1 + MAX_UPPER_DEPTH, "one per directory: {out:?}");
                assert!(out.iter().all(|p| p.starts_with('/') && !p.contains("/../") && !p.contains("secret")), "{out:?}");
                assert!(out.iter().all(|p| p.split('/').count() <= MAX_UPPER_DEPTH + 2), "{out:?}");
                let dirs: HashSet<&str> = out.iter().map(|p| p.rsplit_once('/').map_or("", |(d, _)| d)).collect();
                assert_eq!(dirs.len(), out.len());
            }
            // The links are files of the layer (learned as /etc), never walked.
            assert!(
                written_files(&upper, &HashSet::new()).contains(&"/etc/escape".to_string())
                    || written_files(&upper, &HashSet::new()).contains(&"/etc/rel".to_string())
            );
        }
    }
}
