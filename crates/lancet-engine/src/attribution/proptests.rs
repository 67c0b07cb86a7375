//! Property tests of everything attribution reads: the runtimes' state
//! files (JSON, podman's BoltDB), cgroup paths and OCI process specs.
//! Much of it is writable by someone lancet does not trust (a rootless
//! user owns their podman storage and BoltDB; the image author writes the
//! process spec; any cgroup-delegated user names cgroups): it must parse
//! without panics, in bounded memory, and never name a container other
//! than the one the cgroup says.

use super::bolt::writer::{Val, Writer};
use super::bolt::BoltDb;
use super::tests::{Host, DID, T1, UID};
use super::*;
use lancet_testkit::mutate::{apply, apply_bytes, byte_edits, edits};
use proptest::prelude::*;
use std::collections::BTreeMap as Map;

// ---------- BoltDB ----------

fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Re-signs both meta pages (as a writer that knows the format would), so
/// corruption elsewhere reaches the tree instead of failing the checksum.
fn resign(db: &mut [u8], page_size: usize) {
    for page in [0, page_size] {
        let m = page + 16;
        if let Some(meta) = db.get_mut(m..m + 64) {
            let sum = fnv1a64(&meta[..56]);
            meta[56..].copy_from_slice(&sum.to_le_bytes());
        }
    }
}

/// A bucket tree: keys sorted and unique (BTreeMap), values or buckets.
#[derive(Debug, Clone)]
enum Tree {
    Bytes(Vec<u8>),
    Bucket(Map<Vec<u8>, Tree>),
}

fn tree() -> impl Strategy<Value = Map<Vec<u8>, Tree>> {
    let leaf = prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Tree::Bytes),
        1 => (1usize..9000).prop_map(|n| Tree::Bytes(vec![b'v'; n])),
    ];
    let node = leaf.prop_recursive(3, 64, 6, |inner| {
        proptest::collection::btree_map(proptest::collection::vec(any::<u8>(), 1..12), inner, 0..6).prop_map(Tree::Bucket)
    });
    proptest::collection::btree_map(proptest::collection::vec(any::<u8>(), 1..12), node, 1..6)
}

fn to_val(m: &Map<Vec<u8>, Tree>) -> Vec<(Vec<u8>, Val)> {
    m.iter()
        .map(|(k, v)| {
            let v = match v {
                Tree::Bytes(b) => Val::Bytes(b.clone()),
                Tree::Bucket(c) => Val::Bucket(to_val(c)),
            };
            (k.clone(), v)
        })
        .collect()
}

/// A value with the bucket path leading to it, and its key.
type Leaf<'a> = (Vec<&'a [u8]>, &'a [u8], &'a [u8]);

/// Every value with the bucket path leading to it.
fn leaves<'a>(m: &'a Map<Vec<u8>, Tree>, path: &mut Vec<&'a [u8]>, out: &mut Vec<Leaf<'a>>) {
    for (k, v) in m {
        match v {
            Tree::Bytes(b) => out.push((path.clone(), k, b)),
            Tree::Bucket(c) => {
                path.push(k);
                leaves(c, path, out);
                path.pop();
            }
        }
    }
}

fn sample_db() -> Vec<u8> {
    let cfg = br#"{"labels":{"app":"demo"},"rootfsImageName":"localhost/x:1"}"#.to_vec();
    let ctr = Val::Bucket(vec![
        (
            T1.as_bytes().to_vec(),
            Val::Bucket(vec![(b"config".to_vec(), Val::Bytes(cfg)), (b"state".to_vec(), Val::Bytes(br#"{"pid":42}"#.to_vec()))]),
        ),
        (b"x".repeat(64), Val::Bucket(vec![(b"config".to_vec(), Val::Bytes(vec![b'{'; 5000]))])),
        (b"y".repeat(64), Val::Bucket(vec![(b"config".to_vec(), Val::Bytes(b"{}".to_vec()))])),
    ]);
    Writer::new(4096)
        .finish(&[(b"all-ctrs".to_vec(), Val::Bucket(vec![(T1.as_bytes().to_vec(), Val::Bytes(vec![]))])), (b"ctr".to_vec(), ctr)], true)
}

fn exercise(db: &BoltDb<'_>) -> Result<(), TestCaseError> {
    let _ = db.get(&[b"ctr", T1.as_bytes()], b"config");
    let _ = db.get(&[b"ctr", T1.as_bytes()], b"state");
    let _ = db.get(&[], b"ctr");
    for max in [0, 1, 10] {
        prop_assert!(db.entries(&[b"ctr"], max).len() <= max);
        prop_assert!(db.entries(&[b"ctr", T1.as_bytes()], max).len() <= max);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn bolt_arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..20_000)) {
        if let Some(db) = BoltDb::open(&data) {
            exercise(&db)?;
        }
    }

    /// A real database corrupted anywhere, meta pages re-signed so the
    /// corruption reaches the pages the lookups walk.
    #[test]
    fn bolt_mutated_databases_never_panic(e in byte_edits(12), page_size_claim in prop_oneof![Just(None), Just(Some(0u32)), Just(Some(1u32)), any::<u32>().prop_map(Some)]) {
        let mut db = apply_bytes(&sample_db(), &e);
        if let Some(ps) = page_size_claim {
            if db.len() >= 28 {
                db[24..28].copy_from_slice(&ps.to_le_bytes());
            }
        }
        resign(&mut db, 4096);
        if let Some(b) = BoltDb::open(&db) {
            exercise(&b)?;
        }
    }

    /// Whatever is written is found, nothing else is.
    #[test]
    fn bolt_written_trees_read_back(t in tree(), inline in any::<bool>(), page_size in prop_oneof![Just(4096usize), Just(8192)]) {
        let file = Writer::new(page_size).finish(&to_val(&t), inline);
        let db = BoltDb::open(&file).expect("a database we wrote opens");
        let mut all = Vec::new();
        leaves(&t, &mut Vec::new(), &mut all);
        for (path, k, v) in &all {
            prop_assert_eq!(db.get(path, k), Some(*v), "{:?} {:?}", path, k);
            let mut missing = k.to_vec();
            missing.push(0);
            if !t.contains_key(&missing) || !path.is_empty() {
                prop_assert_eq!(db.get(path, &missing).is_some(), false);
            }
        }
        for (k, v) in &t {
            if let Tree::Bucket(c) = v {
                let plain = c.values().filter(|x| matches!(x, Tree::Bytes(_))).count();
                prop_assert_eq!(db.entries(&[k], usize::MAX).len(), plain);
                prop_assert!(db.entries(&[k], 1).len() <= 1);
            }
        }
    }
}

/// A branch page whose thousands of children all name one leaf of 65535
/// elements: listing a bucket must stop at `max` items (and a work
/// budget), not collect hundreds of millions of them.
#[test]
fn bolt_fan_out_is_bounded() {
    const PS: usize = 4096;
    let page_header = |id: u64, flags: u16, count: u16, overflow: u32| {
        let mut h = id.to_le_bytes().to_vec();
        h.extend(flags.to_le_bytes());
        h.extend(count.to_le_bytes());
        h.extend(overflow.to_le_bytes());
        h
    };
    // Leaf (page 3): 65535 elements, all naming one key/value at the end.
    let n = u16::MAX as usize;
    let data_at = 16 + n * 16;
    let mut leaf = Vec::with_capacity(data_at + 2);
    for i in 0..n {
        let pos = (data_at - (16 + i * 16)) as u32;
        leaf.extend(0u32.to_le_bytes());
        leaf.extend(pos.to_le_bytes());
        leaf.extend(1u32.to_le_bytes());
        leaf.extend(1u32.to_le_bytes());
    }
    leaf.extend(b"kv");
    let leaf_pages = (16 + leaf.len()).div_ceil(PS);
    let mut leaf_page = page_header(3, 0x02, n as u16, (leaf_pages - 1) as u32);
    leaf_page.extend(leaf);
    leaf_page.resize(leaf_pages * PS, 0);
    // Branch (the root): 250 elements, each a child pointer to the leaf.
    let root = 3 + leaf_pages as u64;
    let m = 250usize;
    let mut branch = Vec::new();
    for i in 0..m {
        let pos = (16 + m * 16 - (16 + i * 16)) as u32;
        branch.extend(pos.to_le_bytes());
        branch.extend(1u32.to_le_bytes());
        branch.extend(3u64.to_le_bytes());
    }
    branch.extend(b"k");
    let mut branch_page = page_header(root, 0x01, m as u16, 0);
    branch_page.extend(branch);
    branch_page.resize(PS, 0);
    let mut file = Vec::new();
    for (i, txid) in [(0u64, 2u64), (1, 3)] {
        let mut p = page_header(i, 0x04, 0, 0);
        let mut meta = Vec::new();
        meta.extend(0xED0C_DAEDu32.to_le_bytes());
        meta.extend(2u32.to_le_bytes());
        meta.extend((PS as u32).to_le_bytes());
        meta.extend(0u32.to_le_bytes());
        meta.extend(root.to_le_bytes());
        meta.extend(0u64.to_le_bytes());
        meta.extend(2u64.to_le_bytes());
        meta.extend((root + 1).to_le_bytes());
        meta.extend(txid.to_le_bytes());
        meta.extend(fnv1a64(&meta).to_le_bytes());
        p.extend(meta);
        p.resize(PS, 0);
        file.extend(p);
    }
    file.extend(vec![0u8; PS]);
    file.extend(leaf_page);
    file.extend(branch_page);
    let db = BoltDb::open(&file).unwrap();
    assert_eq!(db.get(&[], b"k"), Some(&b"v"[..]), "the crafted tree is read");
    let t = std::time::Instant::now();
    assert_eq!(db.entries(&[], 100).len(), 100);
    assert!(db.entries(&[], usize::MAX).len() <= 1 << 20, "a work budget bounds a listing");
    assert!(t.elapsed() < std::time::Duration::from_secs(10), "{:?}", t.elapsed());
}

// ---------- cgroup paths ----------

fn real_paths() -> Vec<String> {
    let uid_ = UID.replace('-', "_");
    vec![
        format!("/libpod_parent/libpod-{T1}"),
        format!("/libpod_parent/libpod-{T1}/container"),
        "/libpod_parent/conmon".to_string(),
        format!("/machine.slice/libpod-{T1}.scope"),
        format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{T1}.scope"),
        format!("/system.slice/docker-{DID}.scope"),
        format!("/docker/{DID}"),
        format!("/kubepods/burstable/pod{UID}/{DID}"),
        format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{T1}.scope"),
        format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/crio-conmon-{T1}.scope"),
        format!("/default/{T1}"),
        format!("/system.slice/nerdctl-{T1}.scope"),
        "/system.slice/sshd.service".to_string(),
    ]
}

fn check_match(path: &str, m: &CgroupMatch) -> Result<(), TestCaseError> {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    if let Some(id) = &m.container_id {
        prop_assert!(cgroup::is_full_id(id), "{:?}", id);
        prop_assert!(comps.iter().any(|c| c.contains(id.as_str())), "the id is in the path");
    }
    if let Some(cg) = &m.container_cgroup {
        prop_assert!(m.container_id.is_some());
        let joined = format!("/{}", comps.join("/"));
        prop_assert!(joined == *cg || joined.starts_with(&format!("{cg}/")), "{} is not a prefix of {}", cg, joined);
        prop_assert!(cg.ends_with(m.container_id.as_deref().unwrap_or("")) || cg.contains(m.container_id.as_deref().unwrap_or("")));
    }
    if let Some(u) = &m.pod_uid {
        prop_assert_eq!(u.len(), 36);
    }
    if m.namespace.is_some() {
        prop_assert_eq!(m.runtime, Some(Runtime::Containerd));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn cgroup_any_text_never_panics(path in any::<String>()) {
        if let Some(m) = parse_cgroup_path(&path) {
            check_match(&path, &m)?;
        }
    }

    #[test]
    fn cgroup_mutated_real_paths(i in any::<prop::sample::Index>(), e in edits(4)) {
        let paths = real_paths();
        let path = apply(&paths[i.index(paths.len())], &e);
        if let Some(m) = parse_cgroup_path(&path) {
            check_match(&path, &m)?;
        }
    }

    /// Every scheme gives back the id it was built with.
    #[test]
    fn cgroup_schemes_name_their_container(id in "[0-9a-f]{64}", prefix in "(/[a-z0-9_.-]{1,10}){0,3}", scheme in 0usize..5, sub in proptest::option::of("[a-z]{1,8}")) {
        let (unit, rt) = match scheme {
            0 => (format!("libpod-{id}.scope"), Runtime::Podman),
            1 => (format!("crio-{id}.scope"), Runtime::Crio),
            2 => (format!("docker-{id}.scope"), Runtime::Docker),
            3 => (format!("cri-containerd-{id}.scope"), Runtime::Containerd),
            _ => (format!("nerdctl-{id}.scope"), Runtime::Containerd),
        };
        // A prefix that itself looks like a scheme would win; keep it plain.
        prop_assume!(parse_cgroup_path(&prefix).is_none() && !prefix.contains("kubepods") && !prefix.contains("libpod"));
        let own = format!("{prefix}/{unit}");
        let path = match &sub { Some(s) => format!("{own}/{s}"), None => own.clone() };
        let m = parse_cgroup_path(&path).expect("a container path");
        prop_assert_eq!(m.container_id.as_deref(), Some(id.as_str()));
        prop_assert_eq!(m.runtime, Some(rt));
        prop_assert_eq!(m.container_cgroup.as_deref(), Some(own.as_str()));
    }
}

// ---------- OCI process specs ----------

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        any::<String>().prop_map(serde_json::Value::from),
        (1usize..3000, any::<char>()).prop_map(|(n, c)| serde_json::Value::from(c.to_string().repeat(n))),
        "PATH=[/a-z:]{0,20}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 48, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("args".to_string()),
                    Just("env".to_string()),
                    Just("cwd".to_string()),
                    "[a-z]{1,4}".prop_map(String::from)
                ],
                inner,
                0..5
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A `process` object: mostly shaped like one, with long, multi-byte and
/// many arguments; sometimes any JSON at all.
fn process_spec() -> impl Strategy<Value = serde_json::Value> {
    let arg = prop_oneof![
        3 => any::<String>().prop_map(serde_json::Value::from),
        1 => (1usize..6000, any::<char>()).prop_map(|(n, c)| serde_json::Value::from(c.to_string().repeat(n))),
        1 => json_value(),
    ];
    let many = proptest::collection::vec(any::<String>().prop_map(serde_json::Value::from), 250..300);
    let args = prop_oneof![9 => proptest::collection::vec(arg.clone(), 0..24), 1 => many];
    let shaped = (args, proptest::collection::vec(arg.clone(), 0..4), arg)
        .prop_map(|(args, env, cwd)| serde_json::json!({"args": args, "env": env, "cwd": cwd}));
    prop_oneof![3 => shaped, 1 => json_value()]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Whatever the image author put in the spec, the process kept is
    /// within the documented bounds (bytes, not characters).
    #[test]
    fn oci_process_is_bounded(v in process_spec()) {
        if let Some(p) = OciProcess::from_spec(&v) {
            prop_assert!(!p.args.is_empty() && p.args.len() <= MAX_ARGS);
            prop_assert!(p.args.iter().all(|a| a.len() <= MAX_ARG_LEN), "{:?}", p.args.iter().map(String::len).max());
            prop_assert!(p.cwd.len() <= MAX_ARG_LEN);
            prop_assert!(p.path_env.as_ref().is_none_or(|x| x.len() <= MAX_ARG_LEN));
        }
    }
}

#[test]
fn oci_process_bounds_are_bytes() {
    let wide = "é".repeat(MAX_ARG_LEN);
    let p = OciProcess::from_spec(
        &serde_json::json!({"args": [wide, "x"], "cwd": "€".repeat(MAX_ARG_LEN), "env": [format!("PATH={}", "ü".repeat(MAX_ARG_LEN))]}),
    )
    .unwrap();
    assert!(p.args[0] == "é".repeat(MAX_ARG_LEN / 2), "cut at a character boundary within the bound: {} bytes", p.args[0].len());
    assert!(p.cwd.len() <= MAX_ARG_LEN && p.cwd.chars().all(|c| c == '€'));
    assert_eq!(p.path_env.map(|x| x.len()), Some(MAX_ARG_LEN));
}

// ---------- runtime state files ----------

/// One runtime's fixture, the file of it to corrupt, and the cgroup of
/// the container that file describes.
struct Case {
    fixture: &'static str,
    file: String,
    cgroup: String,
    id: String,
}

fn cases() -> Vec<Case> {
    let uid_ = UID.replace('-', "_");
    let crio = "c7".repeat(32);
    let cd = "c0".repeat(32);
    let storage = "/var/lib/containers/storage";
    vec![
        Case {
            fixture: "podman",
            file: format!("{storage}/overlay-containers/containers.json"),
            cgroup: format!("/libpod_parent/libpod-{T1}"),
            id: T1.into(),
        },
        Case {
            fixture: "podman",
            file: format!("{storage}/overlay-containers/{T1}/userdata/config.json"),
            cgroup: format!("/libpod_parent/libpod-{T1}"),
            id: T1.into(),
        },
        Case {
            fixture: "podman",
            file: format!("{storage}/overlay-images/images.json"),
            cgroup: format!("/libpod_parent/libpod-{T1}"),
            id: T1.into(),
        },
        Case {
            fixture: "docker",
            file: format!("/var/lib/docker/containers/{DID}/config.v2.json"),
            cgroup: format!("/system.slice/docker-{DID}.scope"),
            id: DID.into(),
        },
        Case {
            fixture: "docker",
            file: "/var/lib/docker/image/overlay2/repositories.json".into(),
            cgroup: format!("/docker/{DID}"),
            id: DID.into(),
        },
        Case {
            fixture: "containerd",
            file: format!("/run/containerd/io.containerd.runtime.v2.task/k8s.io/{cd}/config.json"),
            cgroup: format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{cd}.scope"),
            id: cd.clone(),
        },
        Case {
            fixture: "crio",
            file: format!("/run/containers/storage/overlay-containers/{crio}/userdata/config.json"),
            cgroup: format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/crio-{crio}.scope"),
            id: crio.clone(),
        },
        Case {
            fixture: "runc",
            file: "/run/runc/lancet-attr-test-ctr/state.json".into(),
            cgroup: "/lancet-attr-test".into(),
            id: "lancet-attr-test-ctr".into(),
        },
    ]
}

/// What attribution says of `cgroup` on `host`; a container is only ever
/// the one the cgroup names.
fn attribute_checked(h: &Host, cgroup: &str, id: &str) -> Result<Attribution, TestCaseError> {
    let cg = h.cgroup(cgroup);
    let mut a = h.attributor();
    let _ = a.scan();
    let got = a.attribute(cg);
    if let Attribution::Container(c) = &got {
        prop_assert_eq!(&c.id, id);
        prop_assert!(c.process.as_ref().is_none_or(|p| p.args.len() <= MAX_ARGS && p.args.iter().all(|x| x.len() <= MAX_ARG_LEN)));
    }
    Ok(got)
}

#[test]
fn mutated_runtime_files_give_the_container_or_unknown() {
    for case in cases() {
        let h = Host::new(&[case.fixture]);
        let path = h.root().join(case.file.trim_start_matches('/'));
        let good = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(40));
        runner
            .run(&edits(6), |e| {
                std::fs::write(&path, apply(&good, &e)).unwrap();
                attribute_checked(&h, &case.cgroup, &case.id)?;
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{}: {e}", case.file));
    }
}

#[test]
fn mutated_bolt_state_gives_the_container() {
    let h = Host::new(&["podman"]);
    let path = h.root().join("var/lib/containers/storage/libpod/bolt_state.db");
    let good = std::fs::read(&path).unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
    runner
        .run(&byte_edits(12), |e| {
            let mut db = apply_bytes(&good, &e);
            resign(&mut db, 4096);
            std::fs::write(&path, &db).unwrap();
            // The container is podman's whatever its BoltDB holds: the
            // labels and pid are best effort.
            match attribute_checked(&h, &format!("/libpod_parent/libpod-{T1}"), T1)? {
                Attribution::Container(_) => Ok(()),
                other => Err(TestCaseError::fail(format!("{other:?}"))),
            }
        })
        .unwrap();
}

/// A rootless user's storage is theirs to write: a containers.json of a
/// million values, a JSON document in a string of one, and a config of
/// millions of arguments are refused or cut, not held whole.
#[test]
fn huge_state_files_are_refused_not_held() {
    let h = Host::new(&["podman"]);
    let list = "var/lib/containers/storage/overlay-containers/containers.json";
    let good = std::fs::read_to_string(h.root().join(list)).unwrap();
    let filler = format!("[{}", "0,".repeat(1 << 20));
    for text in [good.replacen('[', &filler, 1), good.replacen('[', &format!("[{}", "{},".repeat(1 << 20)), 1)] {
        h.write(&format!("/{list}"), &text);
        match attribute_checked(&h, &format!("/libpod_parent/libpod-{T1}"), T1).unwrap() {
            Attribution::Unknown { reason, .. } => assert!(reason.contains("too many values"), "{reason}"),
            other => panic!("a million-value containers.json was read whole: {other:?}"),
        }
    }
    h.write(&format!("/{list}"), &good);
    let cfg = format!("var/lib/containers/storage/overlay-containers/{T1}/userdata/config.json");
    let args: Vec<String> = (0..(1 << 19)).map(|i| i.to_string()).collect();
    h.write(&format!("/{cfg}"), &serde_json::json!({"process": {"args": args}}).to_string());
    let c = match attribute_checked(&h, &format!("/libpod_parent/libpod-{T1}"), T1).unwrap() {
        Attribution::Container(c) => c,
        other => panic!("{other:?}"),
    };
    assert_eq!(c.process, None, "a spec of half a million arguments is not read");
    // Larger than MAX_JSON: not read at all.
    let f = std::fs::File::create(h.root().join(&cfg)).unwrap();
    f.set_len(65 << 20).unwrap();
    let c = match attribute_checked(&h, &format!("/libpod_parent/libpod-{T1}"), T1).unwrap() {
        Attribution::Container(c) => c,
        other => panic!("{other:?}"),
    };
    assert_eq!(c.process, None);
}

/// A FIFO where a state file should be (a rootless user can put one in
/// their storage) must not block attribution forever.
#[test]
fn a_fifo_for_a_state_file_does_not_hang() {
    let h = Host::new(&["podman"]);
    let list = h.root().join("var/lib/containers/storage/overlay-containers/containers.json");
    std::fs::remove_file(&list).unwrap();
    let st = std::process::Command::new("mkfifo").arg(&list).status();
    if !st.is_ok_and(|s| s.success()) {
        eprintln!("SKIP: mkfifo unavailable");
        return;
    }
    let cg = h.cgroup(&format!("/libpod_parent/libpod-{T1}"));
    let mut a = h.attributor();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(a.attribute(cg));
    });
    match rx.recv_timeout(std::time::Duration::from_secs(10)) {
        Ok(Attribution::Unknown { .. }) => {}
        Ok(other) => panic!("{other:?}"),
        Err(_) => {
            // Unblock the reader so the thread can end, then fail.
            let _ = std::fs::OpenOptions::new().write(true).open(&list);
            panic!("attribution blocked on a FIFO");
        }
    }
}
