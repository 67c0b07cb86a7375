//! `lancet trace`: the sensor's events, attributed to containers, as a live
//! stream.

use crate::agent::{hostname, run_loop, AgentOptions};
use crate::Format;
use anyhow::{bail, Result};
use lancet_engine::attribution::{Attribution, ContainerInfo};
use lancet_engine::json_line::JsonLines;
use lancet_engine::output::{table_header, table_row, Record};
use std::collections::HashSet;
use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::counters::EVENT_TYPES;

/// The pipe `lancet trace` asks for when its stdout is one (the default
/// limit of `/proc/sys/fs/pipe-max-size` for an unprivileged process).
const PIPE_BYTES: usize = 1 << 20;
/// JSON written out in chunks of at most this much (half the pipe).
const FLUSH_BYTES: usize = 512 << 10;

/// Shown unless asked for: frequent and rarely interesting on their own.
const QUIET_TYPES: &[&str] = &["clone", "cgroup_mkdir", "cgroup_rmdir"];

#[derive(clap::Args, Debug)]
pub struct TraceArgs {
    /// Only these containers (name, full id or id prefix). Repeatable.
    #[arg(long = "container", short = 'c', value_name = "NAME|ID")]
    containers: Vec<String>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Also show processes outside containers.
    #[arg(long)]
    host: bool,
    /// Only these event types (`all` for every type, including clone and
    /// cgroup events). Repeatable.
    #[arg(long = "event", short = 'e', value_name = "TYPE")]
    events: Vec<String>,
    /// Paths whose opens are reported (replaces the default set). Repeatable.
    #[arg(long = "sensitive-path", value_name = "PATH")]
    sensitive: Vec<String>,
    /// Do not watch file changes (saves the fanotify filesystem mark).
    #[arg(long)]
    no_files: bool,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Print the pipeline's counters as JSON to stderr on exit.
    #[arg(long)]
    stats: bool,
    /// Ring buffer size in MiB (a power of two).
    #[arg(long, default_value_t = 8, value_name = "MIB")]
    ring_mb: u32,
}

fn parse_events(list: &[String]) -> Result<HashSet<&'static str>> {
    if list.is_empty() {
        return Ok(EVENT_TYPES.iter().copied().filter(|t| !QUIET_TYPES.contains(t)).collect());
    }
    let mut set = HashSet::new();
    for item in list.iter().flat_map(|s| s.split(',')) {
        let item = item.trim();
        if item == "all" {
            set.extend(EVENT_TYPES.iter().copied());
            continue;
        }
        match EVENT_TYPES.iter().find(|t| **t == item) {
            Some(t) => {
                set.insert(*t);
            }
            None => bail!("unknown event type {item:?}; known: all, {}", EVENT_TYPES.join(", ")),
        }
    }
    Ok(set)
}

fn selected(sel: &[String], c: &ContainerInfo) -> bool {
    sel.is_empty() || sel.iter().any(|s| c.name == *s || (s.len() >= 3 && c.id.starts_with(s.as_str())))
}

pub fn run(host_root: &Path, args: TraceArgs) -> Result<ExitCode> {
    let types = parse_events(&args.events)?;
    let stop = Arc::new(AtomicBool::new(false));
    crate::install_stop_signals(&stop)?;
    let host = hostname();
    // Which types are shown, by their slot in EVENT_TYPES: an array look-up
    // per event, not a hash of the type's name.
    let mut shown = [false; EVENT_TYPES.len()];
    for (i, t) in EVENT_TYPES.iter().enumerate() {
        shown[i] = types.contains(t);
    }
    let mut out = io::stdout().lock();
    // To a pipe, JSON goes out in writes of up to FLUSH_BYTES: in a pipe
    // of the default 64 KiB each write blocked until the reader had taken
    // the last, and woke it (a fifth of the agent's CPU on a file loop).
    let grown = lancet_sensor::sys::grow_pipe(std::os::fd::AsRawFd::as_raw_fd(&io::stdout()), PIPE_BYTES);
    let flush_at = match grown {
        Ok(Some(size)) => (size / 2).clamp(16 << 10, FLUSH_BYTES),
        _ => FLUSH_BYTES,
    };
    let table = std::cell::RefCell::new(Vec::<u8>::new());
    if args.format == Format::Table {
        writeln!(out, "{}", table_header())?;
        out.flush()?;
    }
    // JSON lines are written into one reused buffer, handed to stdout once
    // a batch (or when `flush_at` bytes are waiting), in one write.
    let lines = std::cell::RefCell::new(JsonLines::new());
    let opts = AgentOptions { ring_mb: args.ring_mb, files: !args.no_files, sensitive: args.sensitive.clone(), host_sensitive: args.host };
    let deadline = args.duration.map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let mut emitted = 0u64;
    let write_out = |out: &mut io::StdoutLock<'_>, lines: &mut JsonLines| -> io::Result<()> {
        out.write_all(lines.bytes())?;
        lines.clear();
        Ok(())
    };
    let out = std::cell::RefCell::new(out);
    let mut stats = run_loop(
        host_root,
        &opts,
        &stop,
        deadline,
        |ev, attribution, _| {
            let show = match attribution {
                Attribution::Container(c) => selected(&args.containers, c),
                Attribution::Host => args.host && args.containers.is_empty(),
                Attribution::Unknown { .. } => args.containers.is_empty(),
            };
            if !show || !shown[crate::counters::index(&ev.kind)] {
                return Ok(());
            }
            let record = Record { event: ev, attribution, hostname: &host };
            match args.format {
                Format::Json => {
                    let mut lines = lines.borrow_mut();
                    lines.push(&record, "lancet trace", "Informational");
                    if lines.len() >= flush_at {
                        write_out(&mut out.borrow_mut(), &mut lines)?;
                    }
                }
                Format::Table => {
                    let mut t = table.borrow_mut();
                    writeln!(t, "{}", table_row(&record))?;
                    if t.len() >= 64 * 1024 {
                        out.borrow_mut().write_all(&t)?;
                        t.clear();
                    }
                }
            }
            emitted += 1;
            Ok(())
        },
        |_| {
            let mut out = out.borrow_mut();
            write_out(&mut out, &mut lines.borrow_mut())?;
            let mut t = table.borrow_mut();
            out.write_all(&t)?;
            t.clear();
            Ok(out.flush()?)
        },
    )?;
    let mut out = out.borrow_mut();
    write_out(&mut out, &mut lines.borrow_mut())?;
    out.write_all(&table.borrow())?;
    out.flush()?;
    drop(out);
    stats.emitted = emitted;
    if args.stats {
        eprintln!("{}", serde_json::to_string(&stats)?);
    }
    Ok(ExitCode::SUCCESS)
}
