//! `cargo xtask bench-scan`: how fast `lancet scan` hashes a large root
//! filesystem, against `sha256sum` over the same files on the same host.
//!
//! The tree is generated (a fixed mix of small, medium and large files,
//! a fifth of them executable, ≥ 1 GiB in all), read once to warm the page
//! cache (dropping caches between runs is not safe here), then
//! `lancet scan DIR --format json` and `find DIR -type f -print0 | xargs -0
//! -P2 -n 256 sha256sum` run alternately, three times each; medians are
//! compared. `lancet scan` reads and hashes every regular file (the
//! executable test needs the ELF magic of every file and the secret sniff
//! the content of small ones), so both sides hash exactly the same bytes.
//! `-n 256` keeps both of sha256sum's workers busy; without it xargs packs
//! thousands of files into one command line and leaves a core idle.

use crate::bench::median;
use crate::sh;
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const ROUNDS: usize = 3;

/// Removes the generated tree, also when the bench fails.
struct TempTree(PathBuf);

impl Drop for TempTree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A deterministic byte stream (xorshift64*), so every run hashes the same
/// content.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Writes files until `total` bytes: 70 % of files 1–64 KiB, 25 % 64 KiB–
/// 1 MiB, 5 % 1–32 MiB, spread over nested directories.
fn generate(dir: &Path, total: u64) -> Result<(u64, u64)> {
    let mut rng = Noise(0x9e37_79b9_7f4a_7c15);
    let mut buf = vec![0u8; 1 << 20];
    let (mut bytes, mut files) = (0u64, 0u64);
    while bytes < total {
        let pick = rng.next() % 100;
        let size = match pick {
            0..=69 => 1024 + rng.next() % (63 * 1024),
            70..=94 => (64 << 10) + rng.next() % (960 << 10),
            _ => (1 << 20) + rng.next() % (31 << 20),
        };
        let sub = dir.join(format!("d{:02}/e{:02}", files % 37, files % 11));
        std::fs::create_dir_all(&sub)?;
        let path = sub.join(format!("f{files:06}"));
        let mut f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            rng.fill(&mut buf[..n]);
            f.write_all(&buf[..n])?;
            left -= n as u64;
        }
        if rng.next() % 5 < 1 {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
        bytes += size;
        files += 1;
    }
    Ok((bytes, files))
}

/// Reads every file once, so both tools start from a warm page cache.
fn warm(dir: &Path) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            } else {
                let mut f = std::fs::File::open(e.path())?;
                while f.read(&mut buf)? > 0 {}
            }
        }
    }
    Ok(())
}

fn timed(cmd: &mut Command) -> Result<f64> {
    let t = Instant::now();
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output().with_context(|| format!("running {cmd:?}"))?;
    let secs = t.elapsed().as_secs_f64();
    // lancet scan exits 1 when it has findings (none expected here, but
    // only 2 means it could not scan).
    if out.status.code() != Some(0) && out.status.code() != Some(1) {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(secs)
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let mib: u64 = match args.iter().position(|a| a == "--size-mib") {
        Some(i) => args.get(i + 1).context("--size-mib needs a number")?.parse().context("--size-mib")?,
        None => 1024,
    };
    eprintln!("bench-scan: building lancet (release)");
    let status = Command::new("cargo").args(["build", "--release", "-p", "lancet"]).current_dir(root).status()?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let lancet = crate::bench::target_dir(root).join("release/lancet");
    let tree = TempTree(std::env::temp_dir().join(format!("lancet-bench-scan-{}", std::process::id())));
    eprintln!("bench-scan: writing {mib} MiB of files under {}", tree.0.display());
    let (bytes, files) = generate(&tree.0, mib << 20)?;
    warm(&tree.0)?;
    let dir = tree.0.to_str().context("temp dir is not UTF-8")?;
    let nproc = sh(&mut Command::new("nproc"))?.trim().to_string();
    let find = format!("find '{dir}' -type f -print0 | xargs -0 -P2 -n 256 sha256sum");
    let (mut scan, mut sum) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        scan.push(timed(Command::new(&lancet).args(["scan", dir, "--format", "json"]))?);
        sum.push(timed(Command::new("bash").args(["-c", &find]))?);
        eprintln!("bench-scan: round {} lancet {:.3} s, sha256sum {:.3} s", round + 1, scan[round], sum[round]);
    }
    let (s, h) = (median(&mut scan), median(&mut sum));
    let mb = bytes as f64 / 1e6;
    println!("files: {files}, {:.0} MB, {nproc} CPUs, warm page cache, median of {ROUNDS}", mb);
    println!("lancet scan --format json         {:.3} s  {:>7.0} MB/s", s, mb / s);
    println!("find | xargs -P2 -n 256 sha256sum {:.3} s  {:>7.0} MB/s", h, mb / h);
    println!("ratio (lancet time / sha256sum time): {:.2} (target <= 1.5)", s / h);
    println!(
        "{}",
        serde_json::json!({"files": files, "bytes": bytes, "lancet_s": s, "sha256sum_s": h, "lancet_mb_s": mb / s, "sha256sum_mb_s": mb / h, "ratio": s / h})
    );
    Ok(())
}
