//! Image sources: an OCI image layout or a `docker save` image, either as
//! a directory or as a tar archive, and images in podman's local storage.
//!
//! Archives are indexed once (names, offsets, sizes; `docker save` links
//! resolved) and each blob is then read in place with positioned reads, so
//! nothing is extracted and layers can be read in manifest order whatever
//! their order in the archive. Every blob is checked against the digest
//! that names it while it streams.

use crate::config::{ContainerConfig, ImageConfig, StartConfig};
use crate::error::{io_ctx, ScanError};
use crate::hash::digest_of;
use crate::layers::Expect;
use crate::tree::{normalize, parent};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Largest JSON document (index, manifest, config) read into memory.
const MAX_JSON: u64 = 16 << 20;
/// Values (scalars, arrays, objects, members) one such document may hold.
/// Its bytes are bounded, but 16 MiB of `{"digest":""},` is a million
/// descriptors, ~120 MiB once parsed; a real index, manifest or config
/// holds hundreds to a few thousand.
const MAX_JSON_VALUES: usize = 1 << 18;
/// Links followed inside an archive (`docker save` writes one level).
const MAX_ARCHIVE_LINKS: usize = 8;

/// Named blobs inside an image directory or archive.
pub trait Blobs {
    /// Opens `name` (relative to the image root) for streaming.
    fn open(&self, name: &str) -> Result<Box<dyn Read + '_>, ScanError>;
    fn exists(&self, name: &str) -> bool;
    /// For messages.
    fn describe(&self) -> String;
}

/// An image laid out in a directory. Nothing inside it is followed through
/// a symlink: a blob that is a link (possibly to somewhere else on the
/// host) is an error.
pub struct DirBlobs {
    root: PathBuf,
}

impl DirBlobs {
    pub fn new(root: &Path) -> DirBlobs {
        DirBlobs { root: root.to_path_buf() }
    }

    fn path(&self, name: &str) -> Result<PathBuf, ScanError> {
        let norm =
            normalize(name).ok_or_else(|| ScanError::format(self.describe(), format!("blob name {name:?} climbs out of the image")))?;
        let mut p = self.root.clone();
        for c in norm.split('/').filter(|c| !c.is_empty()) {
            p.push(c);
            let m = fs::symlink_metadata(&p).map_err(io_ctx(p.display()))?;
            if m.file_type().is_symlink() {
                return Err(ScanError::format(p.display(), "is a symlink; blobs are not read through links"));
            }
        }
        Ok(p)
    }
}

impl Blobs for DirBlobs {
    fn open(&self, name: &str) -> Result<Box<dyn Read + '_>, ScanError> {
        let p = self.path(name)?;
        let f = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(&p).map_err(io_ctx(p.display()))?;
        if !f.metadata().map_err(io_ctx(p.display()))?.is_file() {
            return Err(ScanError::format(p.display(), "not a regular file"));
        }
        Ok(Box::new(f))
    }

    fn exists(&self, name: &str) -> bool {
        self.path(name).map(|p| p.is_file()).unwrap_or(false)
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}

enum TarItem {
    Data {
        offset: u64,
        size: u64,
    },
    /// Another entry, by normalised name.
    Link(String),
}

/// A tar archive indexed by entry name; blobs are read in place.
pub struct TarBlobs {
    path: PathBuf,
    file: File,
    items: HashMap<String, TarItem>,
}

impl TarBlobs {
    /// Reads every header of the archive once (seeking over the data).
    pub fn index(path: &Path) -> Result<TarBlobs, ScanError> {
        let file = File::open(path).map_err(io_ctx(path.display()))?;
        let len = file.metadata().map_err(io_ctx(path.display()))?.len();
        let mut magic = [0u8; 4];
        let n = file.read_at(&mut magic, 0).map_err(io_ctx(path.display()))?;
        if n >= 2 && (magic[..2] == [0x1f, 0x8b] || magic == [0x28, 0xb5, 0x2f, 0xfd]) {
            return Err(ScanError::format(
                path.display(),
                "a compressed archive: decompress it first (image archives from `podman save`/`docker save` are plain tar)",
            ));
        }
        let bad = |m: String| ScanError::format(path.display(), m);
        let mut items = HashMap::new();
        let mut ar = tar::Archive::new(&file);
        for entry in ar.entries_with_seek().map_err(|e| bad(format!("not a tar archive: {e}")))? {
            let e = entry.map_err(|e| bad(format!("not a valid tar archive (truncated or corrupt): {e}")))?;
            let raw = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let Some(name) = normalize(&raw) else {
                tracing::warn!(archive = %path.display(), entry = %raw, "archive entry climbs out of the root; ignored");
                continue;
            };
            let link = || e.link_name_bytes().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
            let item = match e.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let (offset, size) = (e.raw_file_position(), e.size());
                    if offset.saturating_add(size) > len {
                        return Err(bad(format!("truncated: entry {raw} ends past the end of the archive")));
                    }
                    TarItem::Data { offset, size }
                }
                tar::EntryType::Symlink => {
                    let t = link();
                    let joined = if t.starts_with('/') { t } else { format!("{}/{t}", parent(&name)) };
                    match normalize(&joined) {
                        Some(t) => TarItem::Link(t),
                        None => continue,
                    }
                }
                tar::EntryType::Link => match normalize(&link()) {
                    Some(t) => TarItem::Link(t),
                    None => continue,
                },
                _ => continue,
            };
            items.insert(name, item);
        }
        if items.is_empty() {
            return Err(bad("not a tar archive, or an empty one".into()));
        }
        Ok(TarBlobs { path: path.to_path_buf(), file, items })
    }

    fn find(&self, name: &str) -> Option<(u64, u64)> {
        let mut n = normalize(name)?;
        for _ in 0..=MAX_ARCHIVE_LINKS {
            match self.items.get(&n)? {
                TarItem::Data { offset, size } => return Some((*offset, *size)),
                TarItem::Link(t) => n = t.clone(),
            }
        }
        None
    }
}

impl Blobs for TarBlobs {
    fn open(&self, name: &str) -> Result<Box<dyn Read + '_>, ScanError> {
        let (offset, size) =
            self.find(name).ok_or_else(|| ScanError::format(self.describe(), format!("{name} is missing from the archive")))?;
        Ok(Box::new(ReadAt { file: &self.file, pos: offset, end: offset + size }))
    }

    fn exists(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// A window of a file read with `pread`, so several can be open at once.
struct ReadAt<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (self.end - self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "archive ends inside an entry"));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// What to read from an image: its config and its layers in order.
#[derive(Debug, Clone)]
pub struct ImagePlan {
    /// `sha256:…` of the config blob.
    pub config_digest: String,
    pub manifest_digest: Option<String>,
    /// The image reference the source names, if any.
    pub name: Option<String>,
    pub start: StartConfig,
    /// Blob name, display name, expected digest.
    pub layers: Vec<(String, String, Expect)>,
}

fn read_all(blobs: &dyn Blobs, name: &str) -> Result<Vec<u8>, ScanError> {
    let mut buf = Vec::new();
    blobs.open(name)?.take(MAX_JSON + 1).read_to_end(&mut buf).map_err(io_ctx(format!("{}: {name}", blobs.describe())))?;
    if buf.len() as u64 > MAX_JSON {
        return Err(ScanError::format(blobs.describe(), format!("{name} is larger than {} MiB", MAX_JSON >> 20)));
    }
    Ok(buf)
}

fn parse<T: serde::de::DeserializeOwned>(blobs: &dyn Blobs, name: &str, bytes: &[u8]) -> Result<T, ScanError> {
    let err = |e| ScanError::format(format!("{}: {name}", blobs.describe()), e);
    // Counted first, without building anything, so a document of too many
    // values is refused before it is parsed into structs.
    count_values(bytes, MAX_JSON_VALUES).map_err(err)?;
    serde_json::from_slice(bytes).map_err(err)
}

/// Checks that `bytes` is one JSON document of at most `max` values
/// (object members count too), allocating nothing for them.
fn count_values(bytes: &[u8], max: usize) -> Result<(), serde_json::Error> {
    use serde::de::DeserializeSeed;
    let left = std::cell::Cell::new(max);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    Count(&left).deserialize(&mut de)?;
    de.end()
}

#[derive(Clone, Copy)]
struct Count<'a>(&'a std::cell::Cell<usize>);

impl Count<'_> {
    fn take<E: serde::de::Error>(self) -> Result<(), E> {
        match self.0.get() {
            0 => Err(E::custom("too many values")),
            n => {
                self.0.set(n - 1);
                Ok(())
            }
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Count<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Count<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.take()
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.take()
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.take()
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.take()
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        self.take()
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.take()
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.take()?;
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.take()?;
        while map.next_key_seed(self)?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
    }
}

/// `blobs/sha256/<hex>` for a `sha256:<hex>` digest.
fn blob_name(digest: &str) -> Result<String, ScanError> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => {
            Ok(format!("blobs/sha256/{hex}"))
        }
        _ => Err(ScanError::format(digest, "unsupported digest (lancet reads sha256 digests)")),
    }
}

/// Reads a blob by digest and checks it.
fn verified(blobs: &dyn Blobs, digest: &str) -> Result<Vec<u8>, ScanError> {
    let name = blob_name(digest)?;
    let bytes = read_all(blobs, &name)?;
    let actual = digest_of(&bytes);
    if actual != digest {
        return Err(ScanError::Digest { context: format!("{}: {name}", blobs.describe()), expected: digest.into(), actual });
    }
    Ok(bytes)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: Option<String>,
    digest: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Debug, Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The manifest to read from an index: the only one, else the one for
/// this host's platform, else the first (with a warning).
fn pick(blobs: &dyn Blobs, list: &[Descriptor]) -> Result<Descriptor, ScanError> {
    let arch = host_arch();
    let chosen = match list {
        [] => return Err(ScanError::format(blobs.describe(), "index.json lists no manifest")),
        [one] => one,
        many => many.iter().find(|d| d.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == arch)).unwrap_or_else(|| {
            tracing::warn!(source = %blobs.describe(), count = many.len(), "several manifests and none for this platform; reading the first");
            &many[0]
        }),
    };
    Ok(chosen.clone())
}

const INDEX_TYPES: [&str; 2] = ["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];

/// Reads an OCI image layout: `index.json` → manifest (through nested
/// indexes) → config and layers.
pub fn oci_plan(blobs: &dyn Blobs) -> Result<ImagePlan, ScanError> {
    if !blobs.exists("oci-layout") {
        return Err(ScanError::format(blobs.describe(), "no oci-layout file: not an OCI image layout"));
    }
    let index: Index = parse(blobs, "index.json", &read_all(blobs, "index.json")?)?;
    let mut desc = pick(blobs, &index.manifests)?;
    let mut name = desc.annotations.get("org.opencontainers.image.ref.name").cloned();
    for _ in 0..4 {
        let bytes = verified(blobs, &desc.digest)?;
        let m: Manifest = parse(blobs, &desc.digest, &bytes)?;
        let is_index =
            desc.media_type.as_deref().is_some_and(|t| INDEX_TYPES.contains(&t)) || (m.config.is_none() && m.manifests.is_some());
        if is_index {
            desc = pick(blobs, m.manifests.as_deref().unwrap_or_default())?;
            name = name.or_else(|| desc.annotations.get("org.opencontainers.image.ref.name").cloned());
            continue;
        }
        let config =
            m.config.ok_or_else(|| ScanError::format(format!("{}: {}", blobs.describe(), desc.digest), "manifest has no config"))?;
        let cfg: ImageConfig = parse(blobs, &config.digest, &verified(blobs, &config.digest)?)?;
        let layers = m
            .layers
            .iter()
            .map(|l| Ok((blob_name(&l.digest)?, l.digest.clone(), Expect::Stored(l.digest.clone()))))
            .collect::<Result<Vec<_>, ScanError>>()?;
        return Ok(ImagePlan {
            config_digest: config.digest,
            manifest_digest: Some(desc.digest),
            name,
            start: cfg.config.as_ref().map(StartConfig::from).unwrap_or_default(),
            layers,
        });
    }
    Err(ScanError::format(blobs.describe(), "indexes nested more than 4 deep"))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Reads a `docker save` image: `manifest.json` → config and layer tars,
/// checked against the config's `rootfs.diff_ids`.
pub fn docker_plan(blobs: &dyn Blobs) -> Result<ImagePlan, ScanError> {
    let list: Vec<DockerManifest> = parse(blobs, "manifest.json", &read_all(blobs, "manifest.json")?)?;
    let m = match list.as_slice() {
        [] => return Err(ScanError::format(blobs.describe(), "manifest.json lists no image")),
        [one] => one,
        [first, ..] => {
            tracing::warn!(source = %blobs.describe(), count = list.len(), "several images in one archive; reading the first");
            first
        }
    };
    let bytes = read_all(blobs, &m.config)?;
    let digest = digest_of(&bytes);
    // The config is named by its digest (`<hex>.json`, or a blob path).
    let named = m.config.trim_end_matches(".json").rsplit('/').next().unwrap_or("");
    if named.len() == 64 && named.bytes().all(|b| b.is_ascii_hexdigit()) && format!("sha256:{named}") != digest {
        return Err(ScanError::Digest {
            context: format!("{}: {}", blobs.describe(), m.config),
            expected: format!("sha256:{named}"),
            actual: digest,
        });
    }
    let cfg: ImageConfig = parse(blobs, &m.config, &bytes)?;
    let diff_ids = cfg.rootfs.as_ref().map(|r| r.diff_ids.clone()).unwrap_or_default();
    if diff_ids.len() != m.layers.len() {
        return Err(ScanError::format(
            format!("{}: {}", blobs.describe(), m.config),
            format!("config lists {} layers, manifest.json {}", diff_ids.len(), m.layers.len()),
        ));
    }
    let layers = m.layers.iter().zip(diff_ids).map(|(l, d)| (l.clone(), l.clone(), Expect::Uncompressed(d))).collect();
    Ok(ImagePlan {
        config_digest: digest,
        manifest_digest: None,
        name: m.repo_tags.as_ref().and_then(|t| t.first().cloned()),
        start: cfg.config.as_ref().map(StartConfig::from).unwrap_or_default(),
        layers,
    })
}

/// Runs podman, returning its stdout.
pub fn podman(args: &[&str]) -> Result<String, ScanError> {
    let shown = args.join(" ");
    let out = Command::new("podman").args(args).output().map_err(|e| ScanError::Podman {
        args: shown.clone(),
        message: if e.kind() == io::ErrorKind::NotFound { "podman is not installed".into() } else { e.to_string() },
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(ScanError::Podman { args: shown, message: if err.is_empty() { out.status.to_string() } else { err } });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PodmanImage {
    pub id: String,
    #[serde(default)]
    pub digest: Option<String>,
    #[serde(default)]
    pub config: Option<ContainerConfig>,
}

/// `podman image inspect` of one image.
pub fn podman_inspect(reference: &str) -> Result<PodmanImage, ScanError> {
    let out = podman(&["image", "inspect", reference])?;
    let mut list: Vec<PodmanImage> =
        serde_json::from_str(&out).map_err(|e| ScanError::format(format!("podman image inspect {reference}"), e))?;
    if list.len() != 1 {
        return Err(ScanError::format(format!("podman image inspect {reference}"), format!("{} images, expected one", list.len())));
    }
    Ok(list.remove(0))
}

/// An image mounted with `podman image mount`, unmounted when dropped
/// (also when the scan fails half way).
pub struct PodmanMount {
    id: String,
    pub path: PathBuf,
}

impl PodmanMount {
    pub fn mount(id: &str) -> Result<PodmanMount, ScanError> {
        let path = podman(&["image", "mount", id])?;
        if path.is_empty() {
            return Err(ScanError::Podman { args: format!("image mount {id}"), message: "printed no mount point".into() });
        }
        Ok(PodmanMount { id: id.to_string(), path: PathBuf::from(path) })
    }
}

impl Drop for PodmanMount {
    fn drop(&mut self) {
        if let Err(e) = podman(&["image", "unmount", &self.id]) {
            tracing::warn!(image = %self.id, error = %e, "unmounting the scanned image failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_documents_are_counted_before_they_are_parsed() {
        assert!(count_values(br#"{"a": [1, -2, 3.5, "x\n", null, true, {"b": {}}], "c": ""}"#, 14).is_ok());
        assert!(count_values(br#"{"a": [1, -2, 3.5, "x\n", null, true, {"b": {}}], "c": ""}"#, 13).is_err());
        assert!(count_values(b"[1] 2", 10).is_err(), "one document");
        let many = format!(r#"{{"manifests":[{}{{"digest":""}}]}}"#, r#"{"digest":""},"#.repeat(MAX_JSON_VALUES));
        assert!(count_values(many.as_bytes(), MAX_JSON_VALUES).unwrap_err().to_string().contains("too many values"));
        // Each descriptor is 3 values: 10,000 of them are fine.
        let some = format!(r#"{{"manifests":[{}{{"digest":""}}]}}"#, r#"{"digest":""},"#.repeat(10_000));
        assert!(count_values(some.as_bytes(), MAX_JSON_VALUES).is_ok());
    }
}
