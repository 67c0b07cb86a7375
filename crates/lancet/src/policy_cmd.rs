//! `lancet policy check` and `lancet policy test`: offline, no agent needed.

use anyhow::{Context, Result};
use clap::Subcommand;
use lancet_engine::policy::{effective_action, parse_policies, PolicySet};
use lancet_engine::profile::{Mode, PeerRef, Profile};
use lancet_engine::replay::from_falco_json;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Validate policy files; every error as `file:line:col: message`.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Replay recorded `lancet trace --format json` output through policies:
    /// what would have alerted or been blocked.
    Test {
        #[arg(long = "policy", required = true)]
        policies: Vec<PathBuf>,
        #[arg(long)]
        events: PathBuf,
        /// A profile to judge `notInProfile` rules and deviations against.
        #[arg(long)]
        profile: Option<PathBuf>,
        /// Mode to judge actions in.
        #[arg(long, default_value = "monitor", value_parser = ["learn", "monitor", "protect"])]
        mode: String,
        /// Leave out the built-in default rules.
        #[arg(long)]
        no_defaults: bool,
    },
}

/// Parses policy files; returns what parsed and every error, each as
/// `file:line:col: message`.
pub fn read_policies(files: &[PathBuf]) -> (Vec<lancet_engine::policy::Policy>, Vec<String>) {
    let (mut ok, mut errors) = (Vec::new(), Vec::new());
    for f in files {
        match std::fs::read_to_string(f) {
            Ok(text) => match parse_policies(&text, &f.display().to_string()) {
                Ok(p) => ok.extend(p),
                Err(es) => errors.extend(es.iter().map(|e| e.to_string())),
            },
            Err(e) => errors.push(format!("{}: {e}", f.display())),
        }
    }
    (ok, errors)
}

pub fn run(cmd: PolicyCmd) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match cmd {
        PolicyCmd::Check { files } => {
            let (policies, errors) = read_policies(&files);
            let mut errors = errors;
            if errors.is_empty() {
                if let Err(e) = PolicySet::new(policies, false) {
                    errors.push(e.to_string());
                }
            }
            for e in &errors {
                eprintln!("{e}");
            }
            if errors.is_empty() {
                writeln!(out, "{} file(s) ok", files.len())?;
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::from(1))
            }
        }
        PolicyCmd::Test { policies, events, profile, mode, no_defaults } => {
            let (ps, errors) = read_policies(&policies);
            if !errors.is_empty() {
                for e in &errors {
                    eprintln!("{e}");
                }
                return Ok(ExitCode::from(1));
            }
            let set = PolicySet::new(ps, !no_defaults).map_err(|e| anyhow::anyhow!("{e}"))?;
            let profile = match &profile {
                Some(p) => Some(Profile::from_yaml(
                    &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
                    &p.display().to_string(),
                )?),
                None => None,
            };
            let mode: Mode = mode.parse().map_err(anyhow::Error::msg)?;
            let file = std::fs::File::open(&events).with_context(|| format!("opening {}", events.display()))?;
            let (mut n, mut alerts, mut blocks, mut bad) = (0u64, 0u64, 0u64, 0u64);
            let mut verdicts = Vec::new();
            for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                let (ev, container) = match from_falco_json(&line) {
                    Ok(x) => x,
                    Err(e) => {
                        bad += 1;
                        eprintln!("{}:{}: skipped: {e}", events.display(), i + 1);
                        continue;
                    }
                };
                n += 1;
                let peer = match &ev.kind {
                    lancet_engine::event::EventKind::Net(x) => Some(PeerRef::Ip(x.daddr)),
                    _ => None,
                };
                let deviation = profile.as_ref().and_then(|p| p.check(&ev, peer.as_ref()));
                verdicts.clear();
                set.evaluate(&ev, container.as_ref(), deviation.is_some(), &mut verdicts);
                lancet_engine::policy::with_deviation(&mut verdicts, deviation.as_ref(), mode);
                for v in &verdicts {
                    let (action, would_block) = effective_action(v.action, mode);
                    let would_block = would_block || action.is_enforcing();
                    alerts += 1;
                    if would_block {
                        blocks += 1;
                    }
                    writeln!(
                        out,
                        "{}:{}: {} [{}] {}{} — {}",
                        events.display(),
                        i + 1,
                        v.rule,
                        v.priority(),
                        action,
                        if would_block { " (would block)" } else { "" },
                        v.message
                    )?;
                }
            }
            writeln!(out, "{n} events replayed, {alerts} alerts, {blocks} would block, {bad} lines skipped")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
