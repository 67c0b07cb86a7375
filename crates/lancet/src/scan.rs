//! `lancet scan TARGET`: the CI step. Reads an image (or a root
//! filesystem), prints its findings as a table, JSON or SARIF, writes its
//! baseline as a profile for the agent, and gates the pipeline with
//! `--fail-on`.
//!
//! Exit codes are what CI scripts branch on: 0 no finding at or above
//! `--fail-on` (or no `--fail-on`), 1 there is one, 2 the scan could not be
//! done (bad arguments, unreadable target). The arguments are parsed here,
//! not by the top-level parser, so that usage errors exit 2 like any other
//! failure to scan, rather than lancet's usual 64: a gate must not read
//! "could not scan" as "found something".

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use lancet_engine::profile::Profile;
use lancet_image::{Kind, Report, ScanOptions, Severity};
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum ScanFormat {
    Table,
    Json,
    Sarif,
}

/// Derive an image's baseline and risky findings.
#[derive(Parser, Debug)]
#[command(
    name = "lancet scan",
    version,
    about = "Derive an image's baseline (executables with content hashes, entrypoint, ports) and risky findings, for CI."
)]
struct ScanArgs {
    /// A root filesystem or OCI bundle directory, an OCI layout (directory
    /// or oci-archive tar), a docker save archive, or a podman image
    /// reference.
    target: String,
    #[arg(long, value_enum, default_value_t = ScanFormat::Table)]
    format: ScanFormat,
    /// Write the report here instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
    /// Write the baseline as a profile (YAML, for `lancet profile import`).
    #[arg(long, value_name = "FILE")]
    profile_out: Option<PathBuf>,
    /// Write the baseline profile as DIR/<digest>.yaml (`:` as `-`), the
    /// layout the agent reads from /var/lib/lancet/baselines.
    #[arg(long, value_name = "DIR")]
    baselines_dir: Option<PathBuf>,
    /// Exit 1 when a finding is at or above this severity.
    #[arg(long, value_name = "low|medium|high|critical", value_parser = lancet_image::parse_severity)]
    fail_on: Option<Severity>,
    /// The target's kind, instead of detecting it.
    #[arg(long, value_name = "rootfs|bundle|oci-dir|oci-archive|docker-archive|docker-dir|podman")]
    kind: Option<Kind>,
    /// Reuse (and keep) reports by image digest in this directory.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

/// Runs `lancet scan` with its arguments (after `scan`). Never returns an
/// error: failures print here and exit 2.
pub fn run(raw: &[String]) -> Result<ExitCode> {
    let args = match ScanArgs::try_parse_from(std::iter::once("lancet scan").chain(raw.iter().map(String::as_str))) {
        Ok(a) => a,
        Err(e) => {
            // Help and version go to stdout and succeed.
            let _ = e.print();
            return Ok(if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS });
        }
    };
    match scan(&args) {
        Ok(code) => Ok(code),
        Err(e) if crate::is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("lancet: error: {e:#}");
            Ok(ExitCode::from(2))
        }
    }
}

fn scan(args: &ScanArgs) -> Result<ExitCode> {
    let bar = io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} {bytes} hashed ({bytes_per_sec}, {elapsed})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.set_message(format!("scanning {}", args.target));
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        bar
    });
    let progress: Option<Arc<dyn Fn(u64) + Send + Sync>> =
        bar.clone().map(|b| Arc::new(move |n| b.inc(n)) as Arc<dyn Fn(u64) + Send + Sync>);
    // lancet-image errors name the target, file and entry themselves.
    let opened = lancet_image::open(&args.target, ScanOptions { kind: args.kind, progress, threads: None })?;
    let cache = match (&args.cache_dir, opened.digest()) {
        (Some(dir), Some(digest)) => Some(dir.join(format!("{}.json", file_stem(&digest)))),
        _ => None,
    };
    let report = match cache.as_deref().and_then(|p| read_cache(p, &args.target)) {
        Some(r) => r,
        None => {
            let r = opened.scan()?;
            if let Some(p) = &cache {
                write_cache(p, &r)?;
            }
            r
        }
    };
    if let Some(b) = &bar {
        b.finish_and_clear();
    }

    let text = match args.format {
        ScanFormat::Table => report.to_table(),
        ScanFormat::Json => report.to_json(),
        ScanFormat::Sarif => {
            let mut s = serde_json::to_string_pretty(&report.to_sarif()).context("serialising SARIF")?;
            s.push('\n');
            s
        }
    };
    match &args.output {
        Some(p) => write_file(p, text.as_bytes())?,
        None => {
            let mut out = io::stdout().lock();
            out.write_all(text.as_bytes()).context("writing the report")?;
            out.flush().context("writing the report")?;
        }
    }
    if args.profile_out.is_some() || args.baselines_dir.is_some() {
        let yaml = baseline_profile(&report)?;
        if let Some(p) = &args.profile_out {
            write_file(p, yaml.as_bytes())?;
        }
        if let Some(dir) = &args.baselines_dir {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            write_file(&dir.join(format!("{}.yaml", file_stem(&report.digest))), yaml.as_bytes())?;
        }
    }
    Ok(match args.fail_on {
        Some(level) if report.fails(level) => ExitCode::from(1),
        _ => ExitCode::SUCCESS,
    })
}

/// `sha256:ab…` → `sha256-ab…`: one name on every filesystem.
fn file_stem(digest: &str) -> String {
    digest.replace(':', "-")
}

/// The baseline as a learning profile keyed by the image's config digest.
fn baseline_profile(report: &Report) -> Result<String> {
    let now = lancet_engine::event::now_ns();
    let image = report.image.as_deref().unwrap_or(&report.target);
    Profile::with_baseline(image, report.baseline.clone(), now).to_yaml().context("writing the baseline profile")
}

/// Writes through a temporary file and a rename, so the agent (or a
/// second CI job) never reads half a file.
fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("writing {}", path.display()))?;
    tmp.write_all(bytes).with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path).map_err(|e| e.error).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A cached report is used only when the same lancet version wrote it
/// (rules change between versions).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct CacheEntry {
    lancet_version: String,
    report: Report,
}

fn read_cache(path: &Path, target: &str) -> Option<Report> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice::<CacheEntry>(&bytes) {
        Ok(c) if c.lancet_version == env!("CARGO_PKG_VERSION") => {
            tracing::info!(cache = %path.display(), "reusing the cached report");
            let mut r = c.report;
            r.target = target.to_string();
            Some(r)
        }
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(cache = %path.display(), error = %e, "ignoring an unreadable cache entry");
            None
        }
    }
}

fn write_cache(path: &Path, report: &Report) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let entry = CacheEntry { lancet_version: env!("CARGO_PKG_VERSION").to_string(), report: report.clone() };
    write_file(path, &serde_json::to_vec(&entry).context("serialising the cache entry")?)
}
