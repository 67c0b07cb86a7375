//! Project chores: `cargo xtask vmlinux` regenerates bpf/vmlinux.h from the
//! running kernel's BTF; `cargo xtask bench` measures lancet against no agent
//! on the same host, in one run; `bench-map` measures the flow map and
//! the dashboard against today's agent.
#![forbid(unsafe_code)]

mod bench;
mod bench_map;
mod bench_protect;
mod bench_scan;
mod cost;

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Runs a command, failing with its stderr when it fails.
pub fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn vmlinux() -> Result<()> {
    let header = sh(Command::new("bpftool").args(["btf", "dump", "file", "/sys/kernel/btf/vmlinux", "format", "c"]))
        .context("bpftool (Debian package bpftool) dumps the kernel's BTF")?;
    let path = root().join("bpf/vmlinux.h");
    std::fs::write(&path, header).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let res = match args.first().map(String::as_str) {
        Some("vmlinux") => vmlinux(),
        Some("bench") => bench::run(&root(), &args[1..]),
        Some("bench-rss") => bench::rss(&root()),
        Some("bench-protect") => bench_protect::run(&root(), &args[1..]),
        Some("bench-scan") => bench_scan::run(&root(), &args[1..]),
        Some("bench-map") => bench_map::run(&root(), &args[1..]),
        _ => {
            eprintln!("usage: cargo xtask vmlinux | bench [--quick] [--rounds N] [--lancet BIN] | bench-protect [--quick] | bench-rss | bench-scan [--size-mib N] | bench-map [--quick] [--rounds N] [--baseline-rev REV | --baseline BIN]");
            std::process::exit(64);
        }
    };
    if let Err(e) = res {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}
