//! Reading container identities out of cgroup v2 paths.
//!
//! Every runtime names the cgroup of a container after the container id, so the
//! path alone (which the kernel hands us with each mkdir, and which a scan of
//! the hierarchy gives us for each id) tells which runtime to ask and for which
//! id. Parsing is pure and total: any string gives an answer, never a panic.

use super::Runtime;

/// What a cgroup path says about the container (if any) that owns it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupMatch {
    /// The runtime the naming scheme belongs to. `None` when the scheme is
    /// shared (e.g. `/kubepods/…/pod<uid>/<id>` is used by containerd, Docker
    /// and CRI-O alike), so every runtime must be asked.
    pub runtime: Option<Runtime>,
    /// The container id (64 hex digits for every scheme recognised here).
    pub container_id: Option<String>,
    /// Kubernetes pod uid, with dashes, when the path is under a pod cgroup.
    pub pod_uid: Option<String>,
    /// Owner of a rootless podman's user manager (`user@<uid>.service`), which
    /// decides where that user's container storage lives.
    pub rootless_uid: Option<u32>,
    /// containerd namespace when the path carries it (nerdctl's cgroupfs
    /// layout `/<namespace>/<id>`).
    pub namespace: Option<String>,
    /// The cgroup belongs to runtime plumbing (conmon), not to a container's
    /// processes, so its events are the host's.
    pub ignore: bool,
    /// The path up to and including the container's own cgroup, so that
    /// sub-cgroups (`…/libpod-<id>/container`, systemd inside the container)
    /// map to the same container and the same cgroup identity.
    pub container_cgroup: Option<String>,
}

/// 64 lowercase hex digits: the only id shape the runtimes generate, and the
/// check that keeps unit names like `docker-compose@x.service` from being read
/// as containers.
pub(crate) fn is_full_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A Kubernetes pod uid: a UUID, written with `_` instead of `-` in systemd
/// slice names. Returned with dashes.
fn pod_uid(s: &str) -> Option<String> {
    let uid: String = s.chars().map(|c| if c == '_' { '-' } else { c }).collect();
    let ok =
        uid.len() == 36 && uid.char_indices().all(|(i, c)| if matches!(i, 8 | 13 | 18 | 23) { c == '-' } else { c.is_ascii_hexdigit() });
    ok.then_some(uid)
}

/// Unit-name prefixes that carry a container id, most specific first
/// (`libpod-conmon-` must win over `libpod-`).
const PREFIXES: &[(&str, Runtime, bool)] = &[
    ("libpod-conmon-", Runtime::Podman, true),
    ("crio-conmon-", Runtime::Crio, true),
    ("libpod-", Runtime::Podman, false),
    ("crio-", Runtime::Crio, false),
    ("cri-containerd-", Runtime::Containerd, false),
    ("nerdctl-", Runtime::Containerd, false),
    ("docker-", Runtime::Docker, false),
];

/// Parses a cgroup v2 path (relative to the cgroup2 mount, as the kernel and
/// `/proc/<pid>/cgroup` report it). `None` means nothing in the path points at
/// a container runtime: the cgroup is the host's.
pub fn parse_cgroup_path(path: &str) -> Option<CgroupMatch> {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let mut m = CgroupMatch::default();
    let mut relevant = false;
    let mut under_libpod_parent = false;
    let mut under_kubepods = false;
    for (i, comp) in comps.iter().enumerate() {
        let unit = comp.strip_suffix(".scope").or_else(|| comp.strip_suffix(".slice")).unwrap_or(comp);
        let prefix_path = || format!("/{}", comps[..=i].join("/"));

        if let Some(uid) = comp.strip_prefix("user@").and_then(|r| r.strip_suffix(".service")) {
            m.rootless_uid = uid.parse().ok();
            continue;
        }
        if *comp == "libpod_parent" {
            under_libpod_parent = true;
            relevant = true;
            m.runtime = Some(Runtime::Podman);
            continue;
        }
        if unit == "kubepods" || unit.starts_with("kubepods-") {
            under_kubepods = true;
            relevant = true;
            // systemd: kubepods-burstable-pod<uid_>.slice / kubepods-pod<uid_>.slice
            if let Some(pos) = unit.rfind("-pod") {
                if let Some(uid) = pod_uid(&unit[pos + 4..]) {
                    m.pod_uid = Some(uid);
                }
            }
            continue;
        }
        if under_kubepods {
            if let Some(uid) = comp.strip_prefix("pod").and_then(pod_uid) {
                m.pod_uid = Some(uid);
                continue;
            }
        }
        if unit.starts_with("machine-libpod_pod_") {
            relevant = true;
            m.runtime = Some(Runtime::Podman);
            continue;
        }
        if *comp == "conmon" && under_libpod_parent {
            m.ignore = true;
            return Some(m);
        }
        if let Some((rest, rt, ignore)) = PREFIXES.iter().find_map(|(p, rt, ig)| unit.strip_prefix(p).map(|r| (r, *rt, *ig))) {
            if is_full_id(rest) {
                m.runtime = Some(rt);
                m.container_id = Some(rest.to_string());
                m.ignore = ignore;
                if !ignore {
                    m.container_cgroup = Some(prefix_path());
                }
                return Some(m);
            }
        }
        if is_full_id(comp) {
            if under_libpod_parent && !under_kubepods {
                // `/libpod_parent/<pod id>/libpod-<ctr id>`: a bare id here is a pod.
                continue;
            }
            if !under_kubepods {
                if i > 0 && comps[i - 1] == "docker" {
                    m.runtime = Some(Runtime::Docker);
                } else if i == 1 {
                    // nerdctl cgroupfs: `/<containerd namespace>/<id>`
                    m.runtime = Some(Runtime::Containerd);
                    m.namespace = Some(comps[0].to_string());
                }
            }
            m.container_id = Some(comp.to_string());
            m.container_cgroup = Some(prefix_path());
            return Some(m);
        }
    }
    relevant.then_some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "2e8bdd302d6f3109f54b92f320cfa00a76d6653727e89863aa6329a9cdbbea02";
    const ID2: &str = "49601d56870be0f626b3625a1fb7672fcafc43012409076af9fbaae86e0338ce";
    const UID: &str = "0d3f1c52-9d1b-4f5e-8a4e-2b7c9e6f1a23";

    struct Case {
        path: String,
        runtime: Option<Runtime>,
        id: Option<&'static str>,
        pod: Option<&'static str>,
        rootless: Option<u32>,
        ns: Option<&'static str>,
        ignore: bool,
        cgroup: Option<String>,
    }

    fn case(path: String, runtime: Option<Runtime>, id: Option<&'static str>) -> Case {
        let cgroup = id.map(|_| path.clone());
        Case { path, runtime, id, pod: None, rootless: None, ns: None, ignore: false, cgroup }
    }

    #[test]
    fn table() {
        use Runtime::*;
        let uid_ = UID.replace('-', "_");
        let mut cases = vec![
            // podman cgroupfs
            case(format!("/libpod_parent/libpod-{ID}"), Some(Podman), Some(ID)),
            Case {
                cgroup: Some(format!("/libpod_parent/libpod-{ID}")),
                ..case(format!("/libpod_parent/libpod-{ID}/container"), Some(Podman), Some(ID))
            },
            Case { ignore: true, cgroup: None, ..case("/libpod_parent/conmon".into(), Some(Podman), None) },
            case(format!("/libpod_parent/{ID2}/libpod-{ID}"), Some(Podman), Some(ID)),
            Case { ignore: true, cgroup: None, ..case(format!("/libpod_parent/{ID2}/conmon"), Some(Podman), None) },
            Case { cgroup: None, ..case(format!("/libpod_parent/{ID2}"), Some(Podman), None) },
            // podman systemd
            case(format!("/machine.slice/libpod-{ID}.scope"), Some(Podman), Some(ID)),
            Case {
                cgroup: Some(format!("/machine.slice/libpod-{ID}.scope")),
                ..case(format!("/machine.slice/libpod-{ID}.scope/container"), Some(Podman), Some(ID))
            },
            case(format!("/machine.slice/machine-libpod_pod_{ID2}.slice/libpod-{ID}.scope"), Some(Podman), Some(ID)),
            Case { ignore: true, cgroup: None, ..case(format!("/machine.slice/libpod-conmon-{ID}.scope"), Some(Podman), Some(ID)) },
            Case {
                rootless: Some(1000),
                ..case(format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"), Some(Podman), Some(ID))
            },
            // docker
            case(format!("/docker/{ID}"), Some(Docker), Some(ID)),
            case(format!("/system.slice/docker-{ID}.scope"), Some(Docker), Some(ID)),
            // kubernetes cgroupfs (runtime ambiguous)
            Case { pod: Some(UID), ..case(format!("/kubepods/burstable/pod{UID}/{ID}"), None, Some(ID)) },
            Case { pod: Some(UID), ..case(format!("/kubepods/besteffort/pod{UID}/{ID}"), None, Some(ID)) },
            Case { pod: Some(UID), ..case(format!("/kubepods/pod{UID}/{ID}"), None, Some(ID)) },
            Case { pod: Some(UID), cgroup: None, ..case(format!("/kubepods/burstable/pod{UID}"), None, None) },
            // kubernetes systemd + containerd
            Case {
                pod: Some(UID),
                ..case(
                    format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"),
                    Some(Containerd),
                    Some(ID),
                )
            },
            Case {
                pod: Some(UID),
                ..case(format!("/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{ID}.scope"), Some(Containerd), Some(ID))
            },
            // nerdctl
            Case { ns: Some("default"), ..case(format!("/default/{ID}"), Some(Containerd), Some(ID)) },
            case(format!("/system.slice/nerdctl-{ID}.scope"), Some(Containerd), Some(ID)),
            // CRI-O
            Case {
                pod: Some(UID),
                ..case(
                    format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/crio-{ID}.scope"),
                    Some(Crio),
                    Some(ID),
                )
            },
            Case { pod: Some(UID), ..case(format!("/kubepods/besteffort/pod{UID}/crio-{ID}"), Some(Crio), Some(ID)) },
            Case {
                pod: Some(UID),
                ignore: true,
                cgroup: None,
                ..case(
                    format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/crio-conmon-{ID}.scope"),
                    Some(Crio),
                    Some(ID),
                )
            },
            // other bare ids (plain runc with a custom cgroupsPath, etc.)
            case(format!("/a/b/{ID}"), None, Some(ID)),
        ];
        // Host cgroups and garbage: no match.
        for p in [
            "/",
            "",
            "/init.scope",
            "/system.slice/sshd.service",
            "/system.slice/docker.service",
            "/system.slice/docker-compose@x.service",
            "/user.slice/user-1000.slice/session-3.scope",
            "/machine.slice/libpod-xyz.scope",
            "/libpod-deadbeef",
            "/lancet-attr-test",
            "//////",
            "/docker/not-an-id",
            "/\u{0}\u{ff}/\u{1F600}",
            "/kubepods-",
            "/kubepods-pod",
        ] {
            let got = parse_cgroup_path(p);
            if p.starts_with("/kubepods") {
                assert!(got.as_ref().is_some_and(|m| m.container_id.is_none()), "{p:?} -> {got:?}");
            } else {
                assert_eq!(got, None, "{p:?}");
            }
        }
        for c in cases.drain(..) {
            let m = parse_cgroup_path(&c.path).unwrap_or_else(|| panic!("no match for {}", c.path));
            assert_eq!(m.runtime, c.runtime, "runtime of {}", c.path);
            assert_eq!(m.container_id.as_deref(), c.id, "id of {}", c.path);
            assert_eq!(m.pod_uid.as_deref(), c.pod, "pod of {}", c.path);
            assert_eq!(m.rootless_uid, c.rootless, "rootless of {}", c.path);
            assert_eq!(m.namespace.as_deref(), c.ns, "ns of {}", c.path);
            assert_eq!(m.ignore, c.ignore, "ignore of {}", c.path);
            assert_eq!(m.container_cgroup, c.cgroup, "cgroup of {}", c.path);
        }
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let alphabet: Vec<char> = "/-_.@0123456789abcdefpodkubeslicscopelibpod_parentcri\u{e9}\u{0}".chars().collect();
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 90) as usize;
            let s: String = (0..len).map(|i| alphabet[((seed >> (i % 60)) as usize + i * 7) % alphabet.len()]).collect();
            let _ = parse_cgroup_path(&s);
            let _ = parse_cgroup_path(&format!("/kubepods/pod{s}/{s}"));
        }
    }
}
