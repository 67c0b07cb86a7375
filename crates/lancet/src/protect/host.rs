//! Facts about the host and containers' filesystems and namespaces that the
//! backends need: addresses of a network namespace, cgroup ids, paths
//! resolved inside a container's root.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The inode of a process's network namespace (what the probes report as
/// `netns`), None when it cannot be read.
pub fn netns_inode(pid: u32) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/net")).ok().and_then(|m| u32::try_from(m.ino()).ok())
}

/// The IPv4 addresses a process's network namespace owns (its interfaces'
/// local addresses, loopback left out), from `/proc/<pid>/net/fib_trie`:
/// how peers are named after an agent restart, before any traffic is seen.
pub fn netns_addresses(pid: u32) -> Vec<IpAddr> {
    std::fs::read_to_string(format!("/proc/{pid}/net/fib_trie")).map(|t| local_addresses(&t)).unwrap_or_default()
}

fn local_addresses(fib_trie: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut last: Option<std::net::Ipv4Addr> = None;
    for line in fib_trie.lines() {
        let l = line.trim();
        if let Some(ip) = l.strip_prefix("|-- ") {
            last = ip.trim().parse().ok();
        } else if l.contains("/32 host LOCAL") {
            if let Some(ip) = last.filter(|ip| !ip.is_loopback()) {
                if !out.contains(&IpAddr::V4(ip)) {
                    out.push(IpAddr::V4(ip));
                }
            }
        }
    }
    out
}

/// `path` is on the host's root filesystem (the host's, not the agent's own
/// root when it runs in a container). False when either cannot be read.
pub fn on_host_root_filesystem(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), lancet_sensor::sys::host_root_id()) {
        (Ok(m), Some((dev, _))) => m.dev() == dev,
        _ => false,
    }
}

/// A container's root filesystem, named by its host path (the OCI hook's
/// `root.path`), as the agent reaches it. Before `pivot_root` the runtime
/// process `pid` holds it in its mount namespace, which may be the only
/// place it is mounted (containers/storage mounts its layers under a
/// private bind mount, so an agent in a container, with the host's
/// `/var/lib` under `HOST_ROOT`, sees the empty directory below): reached
/// through `/proc/<pid>/root`. After the pivot, where the host path shows
/// only the host's filesystem, the container's own root. Otherwise the
/// host path under `host_root`.
pub fn reach_root(host_root: &Path, rootfs: &Path, pid: u32) -> PathBuf {
    if rootfs.starts_with("/proc") {
        return rootfs.to_path_buf();
    }
    let proc_root = PathBuf::from(format!("/proc/{pid}/root"));
    if in_host_root(pid) {
        return proc_root.join(rootfs.strip_prefix("/").unwrap_or(rootfs));
    }
    let direct = on_host(host_root, rootfs);
    if on_host_root_filesystem(&direct) && proc_root.exists() {
        return proc_root;
    }
    direct
}

/// The identity of a directory: its device and inode.
fn dir_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Whether a process's root directory is the host's own root: the container
/// runtime setting a container up (`runc init` before `pivot_root`, or
/// before it joins the container's mount namespace for an exec). Compared
/// by device *and* inode, so a container process that chroots into a
/// directory of the host's filesystem (a volume) is never mistaken for the
/// runtime. False when the process is gone.
pub fn in_host_root(pid: u32) -> bool {
    let host = lancet_sensor::sys::host_root_id();
    host.is_some() && dir_id(Path::new(&format!("/proc/{pid}/root"))) == host
}

/// A host path (as runtime state and mount options name it) as the agent
/// reaches it: under `host_root` when the agent runs in a container with
/// the host mounted there (`HOST_ROOT=/host`). `/proc` is the agent's own
/// (it shares the host's pid namespace), never prefixed.
pub fn on_host(host_root: &Path, p: &Path) -> std::path::PathBuf {
    if p.starts_with("/proc") {
        return p.to_path_buf();
    }
    host_root.join(p.strip_prefix("/").unwrap_or(p))
}

/// A process's parent (`/proc/<pid>/stat` field 4), None when it is gone.
pub fn ppid_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// A process's mount namespace (its nsfs inode), None when it is gone.
fn mnt_ns(pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/mnt")).ok().map(|m| m.ino())
}

/// For a process no exec record named (it ran before the agent, or its
/// exec was not seen): the runtime setting a container up, judged from
/// /proc as the probes judge an exec. In the host's root, and still in
/// its parent's mount namespace: a container process that chroots into a
/// bind mount of the host's root is in the container's namespace. False
/// when either process is gone.
pub fn runtime_setup_process(pid: u32) -> bool {
    in_host_root(pid) && ppid_of(pid).and_then(mnt_ns).is_some_and(|parent| mnt_ns(pid) == Some(parent))
}

/// The ids (directory inodes) of every cgroup under `root`, `depth` levels
/// deep.
pub(super) fn cgroup_ids(root: &Path, depth: usize) -> HashSet<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut out = HashSet::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, d)) = stack.pop() {
        if let Ok(m) = std::fs::metadata(&dir) {
            out.insert(m.ino());
        }
        if d >= depth {
            continue;
        }
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push((e.path(), d + 1));
                }
            }
        }
    }
    out
}

/// The SHA-256 (hex) of a file's content, when it is at most `max` bytes
/// (what profiles record for executables outside the image).
pub fn content_sha256(file: std::fs::File, max: u64) -> Option<String> {
    use std::io::Read;
    if file.metadata().ok()?.len() > max {
        return None;
    }
    lancet_image::sha256_hex(&mut file.take(max)).ok()
}

/// Resolves `path` inside the container whose root is `root` (e.g.
/// `/proc/<pid>/root`), following symlinks component by component, with
/// absolute targets taken relative to the container's root, never the
/// host's. None when a component is missing or links loop.
pub fn resolve_in_root(root: &Path, path: &str) -> Option<String> {
    let mut pending: Vec<String> = path.split('/').filter(|c| !c.is_empty()).map(str::to_string).rev().collect();
    let mut done: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(comp) = pending.pop() {
        match comp.as_str() {
            "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        let here = root.join(done.iter().map(String::as_str).chain([comp.as_str()]).collect::<Vec<_>>().join("/"));
        let meta = std::fs::symlink_metadata(&here).ok()?;
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return None;
            }
            let target = std::fs::read_link(&here).ok()?;
            let target = target.to_str()?;
            if target.starts_with('/') {
                done.clear();
            }
            pending.extend(target.split('/').filter(|c| !c.is_empty()).map(str::to_string).rev());
        } else {
            done.push(comp);
        }
    }
    Some(format!("/{}", done.join("/")))
}

/// The root a container is guarded through: the one the OCI hook named (a
/// host path), kept from an earlier guard when this one names none (a
/// later sighting's process may be gone by the time it is used); else the
/// root of `pid`, the container's process at hand. An earlier sighting's
/// `/proc/<pid>/root` is never kept: that process may have ended (its root
/// then leads nowhere, and every retry failed the same way, leaving the
/// container without exec marks and its profile's files unapproved) or its
/// pid be another process's now.
pub(super) fn root_to_guard(named: Option<PathBuf>, earlier: Option<&Path>, pid: u32) -> PathBuf {
    named
        .or_else(|| earlier.filter(|r| !r.starts_with("/proc")).map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from(format!("/proc/{pid}/root")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hooks_root_is_kept_a_processs_root_is_not() {
        let hook = Some(PathBuf::from("/var/lib/docker/overlay2/x/merged"));
        assert_eq!(root_to_guard(hook.clone(), Some(Path::new("/proc/7/root")), 9), PathBuf::from("/var/lib/docker/overlay2/x/merged"));
        assert_eq!(root_to_guard(None, hook.as_deref(), 9), PathBuf::from("/var/lib/docker/overlay2/x/merged"), "named earlier");
        // An earlier sighting's process may be gone, or its pid reused.
        assert_eq!(root_to_guard(None, Some(Path::new("/proc/7/root")), 9), PathBuf::from("/proc/9/root"));
        assert_eq!(root_to_guard(None, None, 9), PathBuf::from("/proc/9/root"));
    }

    #[test]
    fn local_addresses_from_fib_trie() {
        let t = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 10.89.0.0\n        /24 link UNICAST\n     |-- 10.89.0.5\n        /32 host LOCAL\n  +-- 127.0.0.0/8 2 0 2\n     |-- 127.0.0.1\n        /32 host LOCAL\nLocal:\n     |-- 10.89.0.5\n        /32 host LOCAL\n";
        assert_eq!(local_addresses(t), vec!["10.89.0.5".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn host_paths_are_joined_with_the_host_root_but_proc_is_not() {
        let host = Path::new("/host");
        assert_eq!(
            on_host(host, Path::new("/var/lib/containers/storage/overlay/x/diff")),
            Path::new("/host/var/lib/containers/storage/overlay/x/diff")
        );
        assert_eq!(on_host(host, Path::new("/proc/42/root")), Path::new("/proc/42/root"));
        assert_eq!(on_host(Path::new("/"), Path::new("/var/lib/x")), Path::new("/var/lib/x"));
    }

    #[test]
    fn resolves_inside_the_root_only() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::fs::write(r.join("usr/bin/busybox"), b"").unwrap();
        std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
        std::os::unix::fs::symlink("busybox", r.join("usr/bin/sleep")).unwrap();
        std::os::unix::fs::symlink("/usr/bin/busybox", r.join("usr/bin/abs")).unwrap();
        std::os::unix::fs::symlink("../../../../etc/passwd", r.join("usr/bin/escape")).unwrap();
        std::os::unix::fs::symlink("loop", r.join("loop")).unwrap();
        assert_eq!(resolve_in_root(r, "/bin/sleep").as_deref(), Some("/usr/bin/busybox"));
        assert_eq!(resolve_in_root(r, "/bin/abs").as_deref(), Some("/usr/bin/busybox"));
        // `..` stops at the container's root; the host's /etc/passwd is not
        // inside it, so the result names a path that does not exist there.
        assert_eq!(resolve_in_root(r, "/bin/escape"), None);
        assert_eq!(resolve_in_root(r, "/loop"), None);
        assert_eq!(resolve_in_root(r, "/missing"), None);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;
        use std::net::Ipv4Addr;

        /// A fib_trie the way the kernel prints one: prefixes, leaves with
        /// their routes, the LOCAL host routes of the interfaces' addresses.
        fn fib_trie(leaves: &[(Ipv4Addr, bool)]) -> String {
            let mut t = String::from("Main:\n  +-- 0.0.0.0/0 3 0 5\n");
            for (ip, local) in leaves {
                t.push_str(&format!("     |-- {ip}\n"));
                t.push_str(if *local { "        /32 host LOCAL\n" } else { "        /24 link UNICAST\n" });
            }
            t
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn any_text_gives_addresses_that_it_names(text in any::<String>()) {
                for ip in local_addresses(&text) {
                    prop_assert!(text.contains(&ip.to_string()));
                }
            }

            #[test]
            fn local_non_loopback_addresses_are_found_once(leaves in proptest::collection::vec((any::<[u8; 4]>().prop_map(Ipv4Addr::from), any::<bool>()), 0..20)) {
                let got = local_addresses(&fib_trie(&leaves));
                let mut want: Vec<IpAddr> = Vec::new();
                for (ip, local) in &leaves {
                    if *local && !ip.is_loopback() && !want.contains(&IpAddr::V4(*ip)) {
                        want.push(IpAddr::V4(*ip));
                    }
                }
                prop_assert_eq!(got, want);
            }

            #[test]
            fn mutated_tries_never_panic(leaves in proptest::collection::vec((any::<[u8; 4]>().prop_map(Ipv4Addr::from), any::<bool>()), 1..8), cut in any::<prop::sample::Index>(), at in any::<prop::sample::Index>(), c in any::<char>()) {
                let mut t: Vec<char> = fib_trie(&leaves).chars().collect();
                let i = at.index(t.len());
                t[i] = c;
                t.truncate(cut.index(t.len() + 1));
                let text: String = t.into_iter().collect();
                let got = local_addresses(&text);
                prop_assert!(got.iter().all(|ip| !ip.is_loopback()));
            }
        }
    }
}
