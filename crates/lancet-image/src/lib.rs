//! lancet-image: reads a container image, or a root filesystem, and
//! derives its **baseline** (every executable it ships, with content
//! hashes, and how it starts) and **findings** (risky contents and
//! settings, each under a stable rule id). `lancet scan` is built on it;
//! the agent enforces the baseline at run time.
//!
//! Targets: a root filesystem directory, an OCI runtime bundle, an OCI
//! image layout (directory or `oci-archive` tar), a `docker save` image
//! (archive or directory), or an image in podman's local storage. Layers
//! are streamed once each and never extracted; directories are walked
//! without following a single symlink. See [`open`].
#![forbid(unsafe_code)]

mod config;
mod error;
mod findings;
mod hash;
mod image;
mod layers;
mod report;
mod rootfs;
mod tree;

pub use error::ScanError;
pub use findings::{parse_severity, Finding, Rule, Severity};
pub use report::{Report, SeverityCounts, Summary};

use config::{RuntimeSpec, StartConfig};
use error::io_ctx;
use hash::{Meter, Scratch};

/// The SHA-256 (lowercase hex, as baselines record it) of everything `r`
/// yields: the scan's own hashing, for the agent to hash a file the same
/// way at run time.
pub fn sha256_hex(r: &mut dyn std::io::Read) -> std::io::Result<String> {
    let c = hash::hash_reader(r, u64::MAX, &mut Scratch::default(), &Meter::default())?;
    Ok(hash::hex(&c.sha256))
}
use image::{Blobs, DirBlobs, ImagePlan, PodmanImage, PodmanMount, TarBlobs};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tree::Tree;

/// What a target is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A root filesystem directory.
    #[default]
    Rootfs,
    /// An OCI runtime bundle: `config.json` and its root filesystem.
    Bundle,
    /// An OCI image layout directory (`oci-layout`, `index.json`, `blobs/`).
    OciDir,
    /// An OCI image layout in a tar archive (`podman save --format oci-archive`).
    OciArchive,
    /// A `docker save` archive (`manifest.json`, config, layer tars).
    DockerArchive,
    /// A `docker save` archive unpacked into a directory.
    DockerDir,
    /// An image in podman's local storage, by reference or id.
    Podman,
}

impl Kind {
    pub const ALL: [Kind; 7] =
        [Kind::Rootfs, Kind::Bundle, Kind::OciDir, Kind::OciArchive, Kind::DockerArchive, Kind::DockerDir, Kind::Podman];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Rootfs => "rootfs",
            Kind::Bundle => "bundle",
            Kind::OciDir => "oci-dir",
            Kind::OciArchive => "oci-archive",
            Kind::DockerArchive => "docker-archive",
            Kind::DockerDir => "docker-dir",
            Kind::Podman => "podman",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Kind::ALL.iter().copied().find(|k| k.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
            format!("unknown kind {s:?} ({})", names.join(", "))
        })
    }
}

/// How to scan.
#[derive(Clone, Default)]
pub struct ScanOptions {
    /// The target's kind; detected when `None`.
    pub kind: Option<Kind>,
    /// Called with the number of bytes hashed, as they are hashed (from
    /// several threads).
    pub progress: Option<Arc<dyn Fn(u64) + Send + Sync>>,
    /// Hashing threads for directories; `available_parallelism` when `None`.
    pub threads: Option<usize>,
}

enum Source {
    Rootfs(PathBuf),
    Bundle { rootfs: PathBuf, spec: Box<RuntimeSpec> },
    Image { blobs: Box<dyn Blobs>, plan: ImagePlan },
    Podman(PodmanImage),
}

/// A target whose kind is known and whose config has been read (so its
/// digest is known for images), ready to [`Opened::scan`].
pub struct Opened {
    target: String,
    kind: Kind,
    source: Source,
    options: ScanOptions,
}

/// Identifies `target` (detecting its kind unless `options.kind` says) and
/// reads its index, manifest and config. A path that does not exist is
/// taken as a podman image reference.
pub fn open(target: &str, options: ScanOptions) -> Result<Opened, ScanError> {
    let path = Path::new(target);
    let kind = match options.kind {
        Some(k) => k,
        None => detect(target, path)?,
    };
    tracing::debug!(%target, %kind, "opening");
    let source = match kind {
        Kind::Rootfs => Source::Rootfs(path.to_path_buf()),
        Kind::Bundle => {
            let cfg = path.join("config.json");
            let text = std::fs::read(&cfg).map_err(io_ctx(cfg.display()))?;
            let spec: RuntimeSpec = serde_json::from_slice(&text).map_err(|e| ScanError::format(cfg.display(), e))?;
            let root = spec.root.as_ref().map(|r| r.path.as_str()).filter(|p| !p.is_empty()).unwrap_or("rootfs");
            Source::Bundle { rootfs: path.join(root), spec: Box::new(spec) }
        }
        Kind::OciDir | Kind::DockerDir => {
            let blobs = DirBlobs::new(path);
            let plan = if kind == Kind::OciDir { image::oci_plan(&blobs)? } else { image::docker_plan(&blobs)? };
            Source::Image { blobs: Box::new(blobs), plan }
        }
        Kind::OciArchive | Kind::DockerArchive => {
            let blobs = TarBlobs::index(path)?;
            let plan = if kind == Kind::OciArchive { image::oci_plan(&blobs)? } else { image::docker_plan(&blobs)? };
            Source::Image { blobs: Box::new(blobs), plan }
        }
        Kind::Podman => Source::Podman(image::podman_inspect(target)?),
    };
    Ok(Opened { target: target.to_string(), kind, source, options })
}

fn detect(target: &str, path: &Path) -> Result<Kind, ScanError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Not a path: an image reference for podman, if podman has it.
            return match image::podman_inspect(target) {
                Ok(_) => Ok(Kind::Podman),
                Err(pe) => Err(ScanError::Target {
                    target: target.into(),
                    message: format!("no such file or directory, and not an image podman knows ({pe})"),
                }),
            };
        }
        Err(e) => return Err(io_ctx(target)(e)),
    };
    if meta.is_dir() {
        let has = |n: &str| path.join(n).is_file();
        return Ok(if has("oci-layout") {
            Kind::OciDir
        } else if has("manifest.json") {
            Kind::DockerDir
        } else if has("config.json") && is_runtime_spec(&path.join("config.json")) {
            Kind::Bundle
        } else {
            Kind::Rootfs
        });
    }
    let blobs = TarBlobs::index(path)?;
    if blobs.exists("oci-layout") && blobs.exists("index.json") {
        Ok(Kind::OciArchive)
    } else if blobs.exists("manifest.json") {
        Ok(Kind::DockerArchive)
    } else {
        Err(ScanError::Target {
            target: target.into(),
            message:
                "a tar archive that is neither an OCI image layout nor a `docker save` image (for a root filesystem, scan its directory)"
                    .into(),
        })
    }
}

fn is_runtime_spec(p: &Path) -> bool {
    std::fs::read(p).ok().and_then(|b| serde_json::from_slice::<RuntimeSpec>(&b).ok()).is_some_and(|s| s.oci_version.is_some())
}

impl Opened {
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The image's config digest, when known before scanning (images; a
    /// root filesystem's digest is computed from its baseline).
    pub fn digest(&self) -> Option<String> {
        match &self.source {
            Source::Image { plan, .. } => Some(plan.config_digest.clone()),
            Source::Podman(img) => Some(podman_config_digest(img)),
            Source::Rootfs(_) | Source::Bundle { .. } => None,
        }
    }

    /// Reads the whole target and builds the report.
    pub fn scan(self) -> Result<Report, ScanError> {
        let meter = Meter::new(self.options.progress.clone());
        let threads = self.options.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
        let mut findings = Vec::new();
        let mut meta = report::Meta { target: self.target, kind: self.kind, ..report::Meta::default() };
        let (tree, start, runtime) = match self.source {
            Source::Rootfs(dir) => (rootfs::read(&dir, threads, &meter, &mut findings)?, None, None),
            Source::Bundle { rootfs, spec } => {
                let tree = rootfs::read(&rootfs, threads, &meter, &mut findings)?;
                (tree, Some(StartConfig::from(&*spec)), Some(*spec))
            }
            Source::Image { blobs, plan } => {
                let tree = read_layers(&*blobs, &plan, &meter, &mut findings)?;
                meta.digest = Some(plan.config_digest);
                meta.manifest_digest = plan.manifest_digest;
                meta.image = plan.name;
                (tree, Some(plan.start), None)
            }
            Source::Podman(img) => {
                let (tree, digest) = scan_podman(&meta.target, &img, threads, &meter, &mut findings)?;
                meta.digest = Some(digest);
                meta.manifest_digest = img.digest.clone().filter(|d| !d.is_empty());
                meta.image = Some(meta.target.clone());
                (tree, Some(img.config.as_ref().map(StartConfig::from).unwrap_or_default()), None)
            }
        };
        Ok(report::build(meta, &tree, start, runtime.as_ref(), findings))
    }
}

fn podman_config_digest(img: &PodmanImage) -> String {
    if img.id.starts_with("sha256:") {
        img.id.clone()
    } else {
        format!("sha256:{}", img.id)
    }
}

fn read_layers(blobs: &dyn Blobs, plan: &ImagePlan, meter: &Meter, findings: &mut Vec<Finding>) -> Result<Tree, ScanError> {
    let mut tree = Tree::default();
    let mut scratch = Scratch::default();
    for (blob, name, expect) in &plan.layers {
        let mut r = blobs.open(blob)?;
        layers::apply_blob(&mut tree, &mut r, name, expect, &mut scratch, meter, findings)?;
    }
    Ok(tree)
}

/// A podman image is read through `podman image mount` (as root): no copy
/// of the image is made, and the merged root filesystem is hashed in
/// parallel like any directory. Without the privileges to mount (rootless
/// podman), the image is exported with `podman save --format oci-archive`
/// into a temporary directory, removed afterwards, and read as an archive;
/// that costs a copy and a recompression of every layer.
fn scan_podman(
    target: &str,
    img: &PodmanImage,
    threads: usize,
    meter: &Meter,
    findings: &mut Vec<Finding>,
) -> Result<(Tree, String), ScanError> {
    let digest = podman_config_digest(img);
    match PodmanMount::mount(&img.id) {
        Ok(m) => {
            let tree = rootfs::read(&m.path, threads, meter, findings);
            drop(m);
            Ok((tree?, digest))
        }
        Err(e) => {
            tracing::info!(image = %target, error = %e, "cannot mount the image; exporting it with podman save instead");
            let dir = tempfile::Builder::new().prefix("lancet-scan-").tempdir().map_err(io_ctx("creating a temporary directory"))?;
            let archive = dir.path().join("image.tar");
            let archive_s = archive.to_string_lossy().into_owned();
            image::podman(&["save", "--format", "oci-archive", "-o", &archive_s, &img.id])?;
            let blobs = TarBlobs::index(&archive)?;
            let plan = image::oci_plan(&blobs)?;
            if plan.config_digest != digest {
                return Err(ScanError::Digest { context: format!("podman save {target}"), expected: digest, actual: plan.config_digest });
            }
            Ok((read_layers(&blobs, &plan, meter, findings)?, digest))
        }
    }
}
