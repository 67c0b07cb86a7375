//! The fleet thread's reports for the hub ([`super::presence`]): the
//! workloads the loop says this node runs, and the flows of the last hour
//! read from the agent's store (read-only, off the loop), each written
//! under this node's own key of the nodes bucket only when it changed,
//! and again after each reconnection.

use super::presence::{self, FlowEdge, FlowsDoc, RunningWorkload, WorkloadsDoc};
use super::refusals::Refusals;
use super::FleetConfig;
use anyhow::{anyhow, Context, Result};
use async_nats::jetstream::kv;
use lancet_store::Store;
use std::time::Duration;

/// Flow rows read from the store per pass at most (hourly rows of the
/// last two hours: far more than the edges sent).
const MAX_ROWS: usize = 20_000;

#[derive(Default)]
pub struct Reports {
    /// The latest from the loop, and what this session wrote.
    presence: Option<Vec<RunningWorkload>>,
    presence_written: Option<Vec<RunningWorkload>>,
    flows_written: Option<Vec<FlowEdge>>,
    store: Option<Store>,
}

/// Writes one key of the nodes bucket; a refusal comes back as
/// [`super::refusals::Refused`].
pub async fn put(nodes: &kv::Store, refusals: &Refusals, key: &str, value: Vec<u8>, timeout: Duration) -> Result<()> {
    let put = async {
        tokio::time::timeout(timeout, nodes.put(key, value.into()))
            .await
            .map_err(|_| anyhow!("writing {key} timed out"))?
            .with_context(|| format!("writing {key}"))
    };
    refusals.race(&format!("$KV.{}.{key}", super::keys::NODES_BUCKET), put).await?;
    Ok(())
}

impl Reports {
    /// A new session: everything is written again.
    pub fn reconnected(&mut self) {
        self.presence_written = None;
        self.flows_written = None;
    }

    pub fn set_presence(&mut self, p: Vec<RunningWorkload>) {
        self.presence = Some(p);
    }

    /// `<node>.workloads`, when it changed.
    pub async fn write_presence(&mut self, cfg: &FleetConfig, nodes: &kv::Store, refusals: &Refusals, timeout: Duration) -> Result<()> {
        let Some(p) = self.presence.as_ref().filter(|p| Some(*p) != self.presence_written.as_ref()) else { return Ok(()) };
        let doc = WorkloadsDoc {
            node: cfg.node.clone(),
            cluster: cfg.cluster.clone(),
            time_ns: lancet_engine::event::now_ns(),
            workloads: p.iter().take(presence::MAX_WORKLOADS).cloned().collect(),
        };
        let Some(bytes) = presence::encode(doc) else { return Ok(()) };
        let key = super::keys::NodeKey::Workloads(cfg.node.clone()).key();
        put(nodes, refusals, &key, bytes, timeout).await?;
        self.presence_written = self.presence.clone();
        Ok(())
    }

    /// `<node>.flows`: the last hour's edges from the store, when they
    /// changed. A store not readable (yet) is not an error.
    pub async fn write_flows(&mut self, cfg: &FleetConfig, nodes: &kv::Store, refusals: &Refusals, timeout: Duration) -> Result<()> {
        let Some(path) = cfg.store.as_ref() else { return Ok(()) };
        if self.store.is_none() {
            match Store::open_read_only(path) {
                Ok(s) => self.store = Some(s),
                Err(e) => {
                    tracing::debug!("fleet: the store is not readable yet for flows: {e}");
                    return Ok(());
                }
            }
        }
        let now = lancet_engine::event::now_ns();
        let rows = match self.store.as_ref().map(|s| s.flows(now.saturating_sub(presence::FLOWS_SPAN_NS), None, MAX_ROWS)) {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                tracing::warn!("fleet: flows not read from the store: {e}");
                self.store = None;
                return Ok(());
            }
            None => return Ok(()),
        };
        let doc = FlowsDoc::from_rows(&cfg.node, &cfg.cluster, now, &rows);
        if self.flows_written.as_ref() == Some(&doc.edges) {
            return Ok(());
        }
        let edges = doc.edges.clone();
        let Some(bytes) = presence::encode(doc) else { return Ok(()) };
        let key = super::keys::NodeKey::Flows(cfg.node.clone()).key();
        put(nodes, refusals, &key, bytes, timeout).await?;
        self.flows_written = Some(edges);
        Ok(())
    }
}
