//! `lancet map`: who talks to whom, from the running agent (or, when none
//! answers, read-only from its store), as a table, JSON or Graphviz dot;
//! `--export networkpolicy|cilium` writes policy YAML for the observed
//! flows instead. The rendering is shared with the API's `/v1/map`.

use crate::api::Client;
use crate::config::parse_duration;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use lancet_engine::flows::graph::Graph;
use lancet_engine::flows::netpol::{self, Dialect};
use lancet_engine::flows::{FlowNode, FlowRow};
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum MapFormat {
    Table,
    Json,
    Dot,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Export {
    /// Kubernetes NetworkPolicy (networking.k8s.io/v1).
    Networkpolicy,
    /// CiliumNetworkPolicy (cilium.io/v2).
    Cilium,
}

#[derive(Args, Debug)]
pub struct MapArgs {
    /// Flows seen within this long (e.g. 30m, 1h, 7d).
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    since: String,
    /// Only flows to or from this container (name or id prefix).
    #[arg(long, value_name = "NAME|ID")]
    container: Option<String>,
    #[arg(long, value_enum, default_value_t = MapFormat::Table)]
    format: MapFormat,
    /// Write network policy for the observed flows instead of the map
    /// (YAML; a --format with it is an error, not ignored).
    #[arg(long, value_enum, conflicts_with = "format")]
    export: Option<Export>,
    /// Where to read flows when no agent answers on --api.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/lancet")]
    state_dir: PathBuf,
}

/// What a map request renders to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rendering {
    Map(MapFormat),
    Export(Dialect),
}

/// Renders `{rows, nodes}` (the agent's `/v1/flows` answer): (content
/// type, body).
pub fn render(flows: &Value, container: Option<&str>, what: Rendering) -> Result<(&'static str, String), String> {
    let rows: Vec<FlowRow> = serde_json::from_value(flows["rows"].clone()).map_err(|e| format!("flow rows: {e}"))?;
    let nodes: Vec<FlowNode> = serde_json::from_value(flows["nodes"].clone()).map_err(|e| format!("flow nodes: {e}"))?;
    Ok(match what {
        Rendering::Map(f) => {
            let g = Graph::build(&rows, &nodes, container);
            match f {
                MapFormat::Table => ("text/plain; charset=utf-8", g.to_table()),
                MapFormat::Dot => ("text/vnd.graphviz; charset=utf-8", g.to_dot()),
                MapFormat::Json => ("application/json", serde_json::to_string_pretty(&g).map_err(|e| e.to_string())?),
            }
        }
        Rendering::Export(d) => {
            let docs = netpol::policies(&rows, &nodes, d);
            ("application/yaml; charset=utf-8", netpol::to_yaml(&docs).map_err(|e| e.to_string())?)
        }
    })
}

pub fn run(api: &str, args: MapArgs) -> Result<ExitCode> {
    let d = parse_duration(&args.since).with_context(|| format!("--since {:?}", args.since))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64;
    let since_ns = now.saturating_sub(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let mut path = format!("/v1/flows?since_ns={since_ns}&limit=200000");
    if let Some(c) = &args.container {
        path.push_str(&format!("&container={}", crate::api::seg(c)));
    }
    let flows = match Client::new(api).get(&path) {
        Ok(v) => v,
        // Only when no agent answers: a refusal is the answer.
        Err(e) if args.state_dir.join("lancet.db").exists() && format!("{e:#}").contains("cannot reach the lancet agent") => {
            tracing::info!("agent not reachable ({e:#}); reading the store");
            let store = lancet_store::Store::open_read_only(&args.state_dir.join("lancet.db"))?;
            crate::daemon::flows_json(&store, since_ns, args.container.as_deref(), 200_000).map_err(anyhow::Error::msg)?
        }
        Err(e) => return Err(e),
    };
    let what = match args.export {
        Some(Export::Networkpolicy) => Rendering::Export(Dialect::Kubernetes),
        Some(Export::Cilium) => Rendering::Export(Dialect::Cilium),
        None => Rendering::Map(args.format),
    };
    let (_, body) = render(&flows, args.container.as_deref(), what).map_err(anyhow::Error::msg)?;
    if body.trim().is_empty() && args.export.is_some() {
        bail!("no flows were seen within {} (nothing to write a policy from)", args.since);
    }
    let mut out = std::io::stdout().lock();
    out.write_all(body.as_bytes())?;
    if !body.ends_with('\n') {
        writeln!(out)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
