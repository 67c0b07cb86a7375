//! `lancet audit`: who changed what through the agent, from its audit log
//! (a read: root, or the socket's read group).

use crate::api::Client;
use crate::config::parse_duration;
use crate::Format;
use anyhow::{bail, Result};
use lancet_engine::output::rfc3339_nanos;
use lancet_engine::printable::printable;
use serde_json::Value;
use std::io::Write;
use std::process::ExitCode;

fn opt(v: &Value) -> String {
    v.as_u64().map(|n| n.to_string()).unwrap_or_else(|| "-".into())
}

pub fn run(api: &str, since: Option<&str>, format: Format) -> Result<ExitCode> {
    let mut q = vec!["limit=1000".to_string()];
    if let Some(s) = since {
        let d = parse_duration(s)?;
        let now = lancet_engine::event::now_ns();
        q.push(format!("since_ns={}", now.saturating_sub(d.as_nanos() as u64)));
    }
    let v = Client::new(api).get(&format!("/v1/audit?{}", q.join("&")))?;
    let Some(rows) = v.as_array() else { bail!("the agent answered with no audit list") };
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => {
            for r in rows {
                serde_json::to_writer(&mut out, r)?;
                writeln!(out)?;
            }
        }
        Format::Table => {
            writeln!(out, "{:<30} {:>6} {:>8} {:<7} {:<20} {:<24} RESULT", "TIME", "UID", "PID", "CHANNEL", "ACTION", "TARGET")?;
            for r in rows {
                writeln!(
                    out,
                    "{:<30} {:>6} {:>8} {:<7} {:<20} {:<24} {}",
                    r["time_ns"].as_u64().map(rfc3339_nanos).unwrap_or_default(),
                    opt(&r["uid"]),
                    opt(&r["pid"]),
                    printable(r["channel"].as_str().unwrap_or("")),
                    printable(r["action"].as_str().unwrap_or("")),
                    printable(r["target"].as_str().unwrap_or("")),
                    printable(r["result"].as_str().unwrap_or("")),
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
