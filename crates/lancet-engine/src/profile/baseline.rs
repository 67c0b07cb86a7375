//! An image's baseline: what the image ships that may run — every
//! executable regular file with its content hash, the symlinks that lead to
//! one, and the start-up settings of the image config. `lancet scan` derives
//! it at build time; the agent enforces it at run time (drift: an exec of a
//! file that is not in the baseline, or whose content hash differs).
//!
//! It lives in a profile (`spec.baseline`) so one YAML document carries both
//! what the image is and what its containers were seen doing, and so
//! `lancet profile import` and the baselines directory use one format.

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;

/// Permission bits with setuid, setgid and sticky (`mode & 0o7777`),
/// written as four octal digits (`"4755"`), the way people read modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileMode(pub u32);

impl FileMode {
    pub fn is_setuid(self) -> bool {
        self.0 & 0o4000 != 0
    }

    pub fn is_setgid(self) -> bool {
        self.0 & 0o2000 != 0
    }
}

impl fmt::Display for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0 & 0o7777)
    }
}

impl Serialize for FileMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<str>::deserialize(d)?;
        match u32::from_str_radix(&s, 8) {
            Ok(m) if s.len() == 4 && m <= 0o7777 => Ok(FileMode(m)),
            _ => Err(serde::de::Error::custom(format!("invalid mode {s:?} (four octal digits, e.g. \"0755\")"))),
        }
    }
}

impl JsonSchema for FileMode {
    fn schema_name() -> Cow<'static, str> {
        "FileMode".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "pattern": "^[0-7]{4}$" })
    }
}

/// One executable regular file of the image: any execute bit set, or ELF
/// content (a shared library can be run through the dynamic loader).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BaselineFile {
    /// Absolute path inside the image.
    pub path: String,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
    pub mode: FileMode,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    #[serde(default, skip_serializing_if = "is_false")]
    pub setuid: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub setgid: bool,
}

/// A symlink whose resolution (inside the image) is an executable of the
/// baseline: busybox applets, `/bin/sh -> dash`. Kept so an exec by the
/// link's name finds the file it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BaselineLink {
    pub path: String,
    /// The executable it resolves to (every link followed).
    pub target: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What an image ships that may run, and how it starts.
///
/// `executables` and `links` are kept sorted by path and free of
/// duplicates (sorted on construction and on load), so [`Baseline::lookup`]
/// is a binary search with no index to keep in step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Baseline {
    /// The image's config digest (`sha256:…`): the same whether the image is
    /// read from a registry, an OCI layout, a `docker save` archive or local
    /// storage (manifest digests change when layers are recompressed). For a
    /// bare root filesystem, a SHA-256 over this baseline's executables.
    pub digest: String,
    /// The manifest digest, when the source names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    /// The configured user (`name`, `uid`, `uid:gid`); empty means root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `port/protocol`, e.g. `8080/tcp`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exposed_ports: Vec<String>,
    /// Names of the configured environment variables; values are never kept
    /// (they may be secrets).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "sorted")]
    executables: Vec<BaselineFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "sorted")]
    links: Vec<BaselineLink>,
}

/// Most symlink hops [`Baseline::lookup`] follows through `links` (they are
/// written resolved, so one is normal; a hand-edited chain may have more).
const MAX_LINK_HOPS: usize = 8;

/// Entries kept sorted by path and unique.
trait ByPath {
    const WHAT: &'static str;
    fn path(&self) -> &String;
}

impl ByPath for BaselineFile {
    const WHAT: &'static str = "executable";
    fn path(&self) -> &String {
        &self.path
    }
}

impl ByPath for BaselineLink {
    const WHAT: &'static str = "link";
    fn path(&self) -> &String {
        &self.path
    }
}

/// Loads a list sorted by path; a path listed twice is an error.
fn sorted<'de, D: Deserializer<'de>, T: Deserialize<'de> + ByPath>(d: D) -> Result<Vec<T>, D::Error> {
    let mut v = Vec::<T>::deserialize(d)?;
    v.sort_by(|a, b| a.path().cmp(b.path()));
    if let Some(w) = v.windows(2).find(|w| w[0].path() == w[1].path()) {
        return Err(serde::de::Error::custom(format!("{} {} is listed twice", T::WHAT, w[0].path())));
    }
    Ok(v)
}

impl Baseline {
    /// A baseline for the image with config digest `digest`. Later entries
    /// for the same path replace earlier ones.
    pub fn new(digest: impl Into<String>, executables: Vec<BaselineFile>, links: Vec<BaselineLink>) -> Baseline {
        Baseline { digest: digest.into(), executables: dedup_sorted(executables), links: dedup_sorted(links), ..Baseline::default() }
    }

    /// Executables, sorted by path.
    pub fn executables(&self) -> &[BaselineFile] {
        &self.executables
    }

    /// Symlinks to executables, sorted by path.
    pub fn links(&self) -> &[BaselineLink] {
        &self.links
    }

    /// The executable `path` (absolute, inside the image) runs: the file
    /// itself, or the file a baseline symlink at `path` resolves to. `None`
    /// means the image did not ship it: an exec of it is drift.
    pub fn lookup(&self, path: &str) -> Option<&BaselineFile> {
        let mut p = path;
        for _ in 0..=MAX_LINK_HOPS {
            if let Ok(i) = self.executables.binary_search_by(|f| f.path.as_str().cmp(p)) {
                return Some(&self.executables[i]);
            }
            let i = self.links.binary_search_by(|l| l.path.as_str().cmp(p)).ok()?;
            p = &self.links[i].target;
        }
        None
    }
}

/// Sorts by key, keeping the last of equal keys (stable sort, then keep the
/// final element of each run).
fn dedup_sorted<T: ByPath>(mut v: Vec<T>) -> Vec<T> {
    v.sort_by(|a, b| a.path().cmp(b.path()));
    let mut out: Vec<T> = Vec::with_capacity(v.len());
    for x in v {
        match out.last_mut() {
            Some(last) if last.path() == x.path() => *last = x,
            _ => out.push(x),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, hash: &str) -> BaselineFile {
        BaselineFile { path: path.into(), sha256: hash.into(), mode: FileMode(0o755), size: 3, ..BaselineFile::default() }
    }

    fn sample() -> Baseline {
        Baseline::new(
            "sha256:0123",
            vec![file("/usr/bin/zz", "3"), file("/bin/busybox", "1"), file("/bin/busybox", "2")],
            vec![
                BaselineLink { path: "/bin/sh".into(), target: "/bin/busybox".into() },
                BaselineLink { path: "/bin/loop".into(), target: "/bin/loop".into() },
                BaselineLink { path: "/bin/gone".into(), target: "/bin/missing".into() },
            ],
        )
    }

    #[test]
    fn lookup_finds_files_and_follows_links() {
        let b = sample();
        assert_eq!(b.lookup("/bin/busybox").map(|f| f.sha256.as_str()), Some("2"), "the later entry wins");
        assert_eq!(b.lookup("/usr/bin/zz").map(|f| f.sha256.as_str()), Some("3"));
        assert_eq!(b.lookup("/bin/sh").map(|f| f.path.as_str()), Some("/bin/busybox"));
        assert!(b.lookup("/bin/gone").is_none());
        assert!(b.lookup("/bin/loop").is_none(), "a link loop ends");
        assert!(b.lookup("/tmp/dropped").is_none());
        assert_eq!(b.executables().len(), 2);
    }

    #[test]
    fn mode_is_octal_text_and_round_trips_through_yaml() {
        let mut b = sample();
        b.user = Some("www".into());
        b.env_names = vec!["PATH".into()];
        let mut f = file("/bin/su", "9");
        f.mode = FileMode(0o4755);
        f.setuid = true;
        b = Baseline { executables: dedup_sorted(vec![f]), ..b };
        let yaml = serde_norway::to_string(&b).expect("yaml");
        assert!(yaml.contains("mode: '4755'") || yaml.contains("mode: \"4755\""), "{yaml}");
        assert!(yaml.contains("setuid: true") && !yaml.contains("setgid"), "{yaml}");
        let back: Baseline = serde_norway::from_str(&yaml).expect("read back");
        assert_eq!(back, b);
        assert!(back.lookup("/bin/su").is_some_and(|f| f.mode.is_setuid() && !f.mode.is_setgid()));
    }

    #[test]
    fn a_profile_carries_its_baseline_through_yaml_and_merge() {
        use crate::profile::{Mode, Profile};
        let p = Profile::with_baseline("localhost/x:1", sample(), 1_000);
        assert_eq!((p.digest(), p.mode(), p.image()), ("sha256:0123", Mode::Learn, "localhost/x:1"));
        let back = Profile::from_yaml(&p.to_yaml().expect("yaml"), "p.yaml").expect("read back");
        assert_eq!(back.baseline(), Some(&sample()));
        assert_eq!(back, p);

        let mut learned = Profile::new("localhost/x:1", "sha256:0123", 5);
        assert!(learned.baseline().is_none());
        learned.merge(&back);
        assert_eq!(learned.baseline(), Some(&sample()), "merge takes the other's baseline when it has none");
        let mut other = sample();
        other.user = Some("www".into());
        learned.merge(&Profile::with_baseline("localhost/x:1", other.clone(), 9));
        assert_eq!(learned.baseline(), Some(&sample()), "and keeps its own otherwise");
        learned.set_baseline(Some(other.clone()));
        assert_eq!(learned.baseline(), Some(&other));
    }

    #[test]
    fn loading_sorts_and_refuses_duplicates_and_bad_modes() {
        let unsorted = "digest: sha256:1\nexecutables:\n- {path: /z, sha256: a, mode: '0755', uid: 0, gid: 0, size: 1}\n- {path: /a, sha256: b, mode: '0755', uid: 0, gid: 0, size: 1}\n";
        let b: Baseline = serde_norway::from_str(unsorted).expect("load");
        assert_eq!(b.executables()[0].path, "/a");
        assert!(b.lookup("/z").is_some());
        let twice = unsorted.replace("/z", "/a");
        let e = serde_norway::from_str::<Baseline>(&twice).expect_err("duplicate");
        assert!(e.to_string().contains("listed twice"), "{e}");
        let bad = unsorted.replace("'0755'", "'0799'");
        let e = serde_norway::from_str::<Baseline>(&bad).expect_err("bad mode");
        assert!(e.to_string().contains("invalid mode"), "{e}");
    }
}
