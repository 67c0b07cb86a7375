//! `lancet profile …` and `lancet alerts`: talk to the running agent through
//! its local API.

use crate::api::Client;
use crate::config::parse_duration;
use crate::Format;
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use lancet_engine::output::rfc3339_nanos;
use lancet_engine::printable::printable;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum ProfileCmd {
    /// Every workload's profile: mode and size.
    List,
    /// One profile as YAML. WORKLOAD: a running container's name or id, an
    /// image reference, or an image digest.
    Show { workload: String },
    /// What B has that A lacks and the reverse.
    Diff { a: String, b: String },
    /// The profile as YAML on stdout (for `lancet profile import`).
    Export { workload: String },
    /// Load a profile from a YAML file (replaces the workload's profile).
    Import { file: PathBuf },
    /// Set a workload's mode. Protect is refused for a profile too thin to
    /// protect safely (the reasons are printed) unless --force.
    Promote {
        workload: String,
        #[arg(long, value_parser = ["learn", "monitor", "protect"])]
        to: String,
        /// Change nothing: list what the workload's running containers are
        /// doing now that the mode would refuse (exit 1 if anything).
        #[arg(long)]
        dry_run: bool,
        /// Promote even when the profile looks too thin to protect.
        #[arg(long)]
        force: bool,
        /// In a fleet: only if the workload's mode is still at this
        /// revision (as `GET /v1/profiles` shows it); a
        /// change made meanwhile elsewhere makes this one fail (409).
        #[arg(long, value_name = "N")]
        revision: Option<u64>,
    },
    /// Forget what was learned; the workload starts learning again.
    Reset { workload: String },
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

pub fn profile(api: &str, cmd: ProfileCmd) -> Result<ExitCode> {
    let c = Client::new(api);
    let mut out = std::io::stdout().lock();
    match cmd {
        ProfileCmd::List => {
            let v = c.get("/v1/profiles")?;
            writeln!(out, "{:<72} {:<8} {:>7}  IMAGE", "WORKLOAD", "MODE", "ENTRIES")?;
            for p in v.as_array().into_iter().flatten() {
                writeln!(
                    out,
                    "{:<72} {:<8} {:>7}  {}",
                    printable(p["workload"].as_str().unwrap_or("")),
                    printable(p["mode"].as_str().unwrap_or("")),
                    p["entries"].as_u64().unwrap_or(0),
                    printable(p["image"].as_str().unwrap_or(""))
                )?;
            }
        }
        ProfileCmd::Show { workload } | ProfileCmd::Export { workload } => {
            let v = c.get(&format!("/v1/profiles/{}", enc(&workload)))?;
            write!(out, "{}", v["yaml"].as_str().unwrap_or(""))?;
        }
        ProfileCmd::Diff { a, b } => {
            let ya = c.get(&format!("/v1/profiles/{}", enc(&a)))?;
            let yb = c.get(&format!("/v1/profiles/{}", enc(&b)))?;
            let pa = lancet_engine::profile::Profile::from_yaml(ya["yaml"].as_str().unwrap_or(""), &a)?;
            let pb = lancet_engine::profile::Profile::from_yaml(yb["yaml"].as_str().unwrap_or(""), &b)?;
            let lines = pa.diff(&pb);
            for l in &lines {
                writeln!(out, "{l}")?;
            }
            return Ok(if lines.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) });
        }
        ProfileCmd::Import { file } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            // Check locally first: errors point into the user's file.
            lancet_engine::profile::Profile::from_yaml(&text, &file.display().to_string())?;
            let v = c.post_text("/v1/profiles", &text)?;
            writeln!(out, "imported profile for {}", v["workload"].as_str().unwrap_or("?"))?;
        }
        ProfileCmd::Promote { workload, to, dry_run, force, revision } => {
            let body = json!({ "mode": to, "force": force, "dry_run": dry_run, "revision": revision });
            let v = c.post_json(&format!("/v1/profiles/{}/promote", enc(&workload)), &body)?;
            let name = v["workload"].as_str().unwrap_or("?");
            if !dry_run {
                writeln!(out, "{name} is now in {} mode", v["mode"].as_str().unwrap_or("?"))?;
                return Ok(ExitCode::SUCCESS);
            }
            let not_ready = v["notReady"].as_array().cloned().unwrap_or_default();
            for r in &not_ready {
                writeln!(out, "not ready: {}", r.as_str().unwrap_or(""))?;
            }
            let refused = v["wouldRefuse"].as_array().cloned().unwrap_or_default();
            for r in &refused {
                writeln!(out, "{:<24} {}", printable(r["container"].as_str().unwrap_or("")), printable(r["what"].as_str().unwrap_or("")))?;
            }
            let recent = v["recentlyWouldRefuse"].as_array().cloned().unwrap_or_default();
            for r in &recent {
                writeln!(
                    out,
                    "{:<24} {} ({}, {}x in the last day)",
                    printable(r["container"].as_str().unwrap_or("")),
                    printable(r["what"].as_str().unwrap_or("")),
                    r["rule"].as_str().unwrap_or(""),
                    r["count"].as_u64().unwrap_or(0)
                )?;
            }
            writeln!(
                out,
                "{name}: {} thing(s) its {} running container(s) do now, and {} its last day did, would be refused in {to} mode",
                refused.len(),
                v["containers"].as_u64().unwrap_or(0),
                recent.len()
            )?;
            let clean = refused.is_empty() && not_ready.is_empty() && recent.is_empty();
            return Ok(if clean { ExitCode::SUCCESS } else { ExitCode::from(1) });
        }
        ProfileCmd::Reset { workload } => {
            let v = c.delete(&format!("/v1/profiles/{}", enc(&workload)))?;
            writeln!(out, "{} is learning again", v["workload"].as_str().unwrap_or("?"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Alerts from the store itself, for when no agent is running.
fn alerts_from_store(state_dir: &Path, since_ns: Option<u64>, container: Option<&str>) -> Result<Vec<Value>> {
    let db = state_dir.join("lancet.db");
    let store = lancet_store::Store::open_read_only(&db).with_context(|| format!("reading the store {}", db.display()))?;
    let rows = store.alerts(&lancet_store::AlertQuery { since_ns, container: container.map(str::to_string), rule: None, limit: 1000 })?;
    Ok(rows.iter().map(alert_json).collect())
}

/// A stored alert as JSON, with the repeats folded into it since it was
/// raised as `lancet.count`, and its id in the store (`id`, what "add to
/// profile" names).
pub fn alert_json(a: &lancet_store::StoredAlert) -> Value {
    let mut v = serde_json::from_str::<Value>(&a.alert.json).unwrap_or(Value::Null);
    if let Some(f) = v.get_mut("output_fields").and_then(Value::as_object_mut) {
        f.insert("lancet.count".into(), json!(a.alert.count));
    }
    if let Some(o) = v.as_object_mut() {
        o.insert("id".into(), json!(a.id));
    }
    v
}

pub fn alerts(api: &str, state_dir: &Path, since: Option<&str>, container: Option<&str>, format: Format) -> Result<ExitCode> {
    let mut q = vec!["limit=1000".to_string()];
    let since_ns = match since {
        Some(s) => {
            let d = parse_duration(s)?;
            let now = lancet_engine::event::now_ns();
            Some(now.saturating_sub(d.as_nanos() as u64))
        }
        None => None,
    };
    if let Some(t) = since_ns {
        q.push(format!("since_ns={t}"));
    }
    if let Some(c) = container {
        q.push(format!("container={}", enc(c)));
    }
    let rows = match Client::new(api).get(&format!("/v1/alerts?{}", q.join("&"))) {
        Ok(v) => match v.as_array() {
            Some(rows) => rows.clone(),
            None => bail!("the agent answered with no alert list"),
        },
        // Only when no agent answers: a refusal is the answer.
        Err(e) if state_dir.join("lancet.db").exists() && format!("{e:#}").contains("cannot reach the lancet agent") => {
            tracing::info!("agent not reachable ({e:#}); reading the store");
            alerts_from_store(state_dir, since_ns, container)?
        }
        Err(e) => return Err(e),
    };
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => {
            for r in &rows {
                serde_json::to_writer(&mut out, r)?;
                writeln!(out)?;
            }
        }
        Format::Table => {
            writeln!(out, "{:<30} {:<9} {:<18} {:<36} {:<10} OUTPUT", "TIME", "PRIORITY", "CONTAINER", "RULE", "ACTION")?;
            for r in &rows {
                let f = &r["output_fields"];
                let t = f["evt.time"].as_u64().map(rfc3339_nanos).unwrap_or_default();
                writeln!(
                    out,
                    "{:<30} {:<9} {:<18} {:<36} {:<10} {}",
                    t,
                    printable(r["priority"].as_str().unwrap_or("")),
                    printable(f["container.name"].as_str().unwrap_or("")),
                    printable(r["rule"].as_str().unwrap_or("")),
                    printable(f["lancet.action"].as_str().unwrap_or("")),
                    printable(r["output"].as_str().unwrap_or("")),
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `lancet isolate|freeze|release CONTAINER`: asks the running agent, which
/// owns the pinned enforcement state and the expiry timers.
pub fn respond(api: &str, container: &str, action: &str, expire: Option<&str>) -> Result<ExitCode> {
    if let Some(e) = expire {
        parse_duration(e)?;
    }
    let body = match expire {
        Some(e) => json!({ "for": e }),
        None => json!({}),
    };
    let v = Client::new(api).post_json(&format!("/v1/containers/{}/{action}", enc(container)), &body)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", v["message"].as_str().unwrap_or(&v.to_string()))?;
    Ok(ExitCode::SUCCESS)
}
