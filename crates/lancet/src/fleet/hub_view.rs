//! The hub's view of the fleet besides heartbeats and alerts: what each
//! node says it runs (`<node>.workloads`) and its flows (`<node>.flows`),
//! followed with a watch of the nodes bucket; the fleet's modes (a watch of
//! the profiles bucket's `*.mode` keys); and which nodes shared
//! observations of each image (the bucket's keys, listed every
//! [`OBSERVERS_EVERY`]). Every value is parsed with the bounds of
//! [`super::presence`] and kept within [`MAX_BYTES`]: the nodes wrote them.
//!
//! From it: the workloads across nodes (`GET /v1/workloads`) and the map
//! across nodes (`GET /v1/map`), where a flow from one node to an address
//! that another node says one of its containers has is drawn to that
//! container.

use super::keys::{self, Key, ModeDoc, NodeKey};
use super::presence::{FlowsDoc, WorkloadsDoc};
use anyhow::{anyhow, Result};
use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use lancet_engine::flows::{FlowCounters, FlowEnd};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Nodes whose documents are kept.
const MAX_NODES: usize = 10_000;
/// Bytes of documents kept at most.
const MAX_BYTES: usize = 256 << 20;
/// Workloads whose fleet mode is kept, and (workload, node) observations.
const MAX_MODES: usize = 100_000;
const MAX_OBSERVERS: usize = 200_000;
pub const OBSERVERS_EVERY: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct View {
    workloads: BTreeMap<String, (WorkloadsDoc, usize)>,
    flows: BTreeMap<String, (FlowsDoc, usize)>,
    bytes: usize,
    /// The fleet's mode per workload: (mode, revision, by).
    modes: BTreeMap<String, (String, u64, String)>,
    observers: BTreeMap<String, BTreeSet<String>>,
    /// Documents refused (not parsing, or over the bounds).
    pub refused: u64,
}

pub type Shared = Arc<Mutex<View>>;

fn put<T>(map: &mut BTreeMap<String, (T, usize)>, bytes: &mut usize, node: &str, doc: T, size: usize) -> bool {
    let old = map.get(node).map_or(0, |(_, b)| *b);
    if *bytes - old + size > MAX_BYTES || (old == 0 && !map.contains_key(node) && map.len() >= MAX_NODES) {
        return false;
    }
    *bytes = *bytes - old + size;
    map.insert(node.to_string(), (doc, size));
    true
}

fn remove<T>(map: &mut BTreeMap<String, (T, usize)>, bytes: &mut usize, node: &str) {
    if let Some((_, b)) = map.remove(node) {
        *bytes -= b;
    }
}

impl View {
    /// A change of the nodes bucket.
    pub fn on_node_entry(&mut self, key: &str, value: &[u8], gone: bool) {
        match NodeKey::parse(key) {
            Some(NodeKey::Workloads(n)) if gone => remove(&mut self.workloads, &mut self.bytes, &n),
            Some(NodeKey::Flows(n)) if gone => remove(&mut self.flows, &mut self.bytes, &n),
            Some(NodeKey::Workloads(n)) => {
                let kept = WorkloadsDoc::parse(value, &n).is_some_and(|d| put(&mut self.workloads, &mut self.bytes, &n, d, value.len()));
                self.refused += u64::from(!kept);
            }
            Some(NodeKey::Flows(n)) => {
                let kept = FlowsDoc::parse(value, &n).is_some_and(|d| put(&mut self.flows, &mut self.bytes, &n, d, value.len()));
                self.refused += u64::from(!kept);
            }
            // Heartbeats are read when asked (`GET /v1/nodes`).
            Some(NodeKey::Heartbeat(_)) | None => {}
        }
    }

    /// A change of a `<image>.mode` key.
    pub fn on_mode_entry(&mut self, key: &str, value: &[u8], revision: u64, gone: bool) {
        let Some(Key::Mode { workload }) = Key::parse(key) else { return };
        if gone {
            self.modes.remove(&workload);
            return;
        }
        match ModeDoc::parse(value) {
            Some((mode, by)) if self.modes.len() < MAX_MODES || self.modes.contains_key(&workload) => {
                self.modes.insert(workload, (mode.to_string(), revision, by));
            }
            _ => self.refused += 1,
        }
    }

    /// The profiles bucket's keys: which node shared observations of which
    /// image.
    pub fn set_observers(&mut self, keys: impl IntoIterator<Item = String>) {
        let mut o: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for k in keys.into_iter().take(MAX_OBSERVERS) {
            if let Some(Key::Observations { workload, node }) = Key::parse(&k) {
                o.entry(workload).or_default().insert(node);
            }
        }
        self.observers = o;
    }

    /// `GET /v1/workloads`: every workload a node runs, or the fleet has a
    /// mode or observations for, with where it runs and in which mode.
    pub fn workloads_json(&self) -> Value {
        let mut running: BTreeMap<&str, Vec<(&str, &super::presence::RunningWorkload)>> = BTreeMap::new();
        for (node, (doc, _)) in &self.workloads {
            for w in &doc.workloads {
                running.entry(w.workload.as_str()).or_default().push((node.as_str(), w));
            }
        }
        let keys: BTreeSet<&str> =
            running.keys().copied().chain(self.modes.keys().map(String::as_str)).chain(self.observers.keys().map(String::as_str)).collect();
        let out: Vec<Value> = keys
            .into_iter()
            .map(|k| {
                let on = running.get(k).map(Vec::as_slice).unwrap_or_default();
                let mode = self.modes.get(k);
                json!({
                    "workload": k,
                    "image": on.first().map_or("", |(_, w)| w.image.as_str()),
                    "shared": keys::workload_token(k).is_some(),
                    "mode": mode.map(|m| &m.0),
                    "modeRevision": mode.map(|m| m.1),
                    "modeBy": mode.map(|m| &m.2),
                    "containers": on.iter().map(|(_, w)| u64::from(w.count)).sum::<u64>(),
                    "nodes": on.iter().map(|(n, w)| json!({
                        "node": n,
                        "mode": w.mode,
                        "containers": w.count,
                        "names": w.containers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                    "observedBy": self.observers.get(k).map(|s| s.iter().collect::<Vec<_>>()).unwrap_or_default(),
                })
            })
            .collect();
        Value::Array(out)
    }

    /// `GET /v1/map`: the flows of every node as one graph, in the shape
    /// the agent's map takes (nodes with a `parent`, edges with counts),
    /// each fleet node a compound node around its containers; each edge
    /// also names its ends (`src`, `dst`: node, kind, name, workload) and
    /// the nodes that reported it.
    pub fn map_json(&self) -> Value {
        // Addresses of containers, as their nodes say; one claimed by two
        // nodes is drawn as an address, never guessed.
        let mut at: HashMap<&str, Option<(&str, &super::presence::RunningContainer, &str)>> = HashMap::new();
        for (node, (doc, _)) in &self.workloads {
            for w in &doc.workloads {
                for c in &w.containers {
                    for a in &c.addrs {
                        at.entry(a.as_str())
                            .and_modify(|e| {
                                if e.is_some_and(|(n, x, _)| n != node || x.id != c.id) {
                                    *e = None;
                                }
                            })
                            .or_insert(Some((node.as_str(), c, w.workload.as_str())));
                    }
                }
            }
        }
        let mut nodes: BTreeMap<String, Value> = BTreeMap::new();
        let mut end = |reporter: &str, e: &FlowEnd| -> (String, Value) {
            let (id, kind, label, node, workload) = match e.kind() {
                lancet_engine::flows::EndKind::Container => {
                    (format!("c:{}", e.id), "container", e.name.clone(), Some(reporter.to_string()), e.workload.clone())
                }
                lancet_engine::flows::EndKind::Host => {
                    (format!("h:{reporter}"), "host", format!("{reporter} (host)"), Some(reporter.to_string()), String::new())
                }
                lancet_engine::flows::EndKind::Others => {
                    (format!("o:{reporter}"), "others", "others".to_string(), Some(reporter.to_string()), String::new())
                }
                lancet_engine::flows::EndKind::External => match at.get(e.id.as_str()) {
                    Some(Some((n, c, w))) => (format!("c:{}", c.id), "container", c.name.clone(), Some(n.to_string()), w.to_string()),
                    _ => (format!("x:{}", e.id), "external", e.id.clone(), None, String::new()),
                },
            };
            if let Some(n) = &node {
                nodes
                    .entry(format!("n:{n}"))
                    .or_insert_with(|| json!({"id": format!("n:{n}"), "kind": "node", "label": format!("node {n}")}));
            }
            let v = json!({"id": id, "kind": kind, "label": label, "parent": node.as_ref().map(|n| format!("n:{n}")), "workload": workload, "node": node});
            nodes.insert(id.clone(), v.clone());
            (id, v)
        };
        type EdgeKey = (String, String, u16, String);
        let mut edges: BTreeMap<EdgeKey, (FlowCounters, String, Value, Value, BTreeSet<String>)> = BTreeMap::new();
        for (node, (doc, _)) in &self.flows {
            for e in &doc.edges {
                let (s, sv) = end(node, &e.src);
                let (d, dv) = end(node, &e.dst);
                let slot = edges
                    .entry((s, d, e.port, e.proto.clone()))
                    .or_insert_with(|| (FlowCounters::default(), e.verdict.clone(), sv, dv, BTreeSet::new()));
                // Both ends' nodes may count the same connections: the
                // larger count, not the sum.
                let c = &mut slot.0;
                if e.counts.last_ns >= c.last_ns {
                    slot.1 = e.verdict.clone();
                }
                c.connections = c.connections.max(e.counts.connections);
                c.failed = c.failed.max(e.counts.failed);
                c.refused = c.refused.max(e.counts.refused);
                c.bytes_out = c.bytes_out.max(e.counts.bytes_out);
                c.bytes_in = c.bytes_in.max(e.counts.bytes_in);
                if e.counts.first_ns != 0 && (c.first_ns == 0 || e.counts.first_ns < c.first_ns) {
                    c.first_ns = e.counts.first_ns;
                }
                c.last_ns = c.last_ns.max(e.counts.last_ns);
                slot.4.insert(node.clone());
            }
        }
        let side = |v: &Value| json!({"node": v["node"], "kind": v["kind"], "name": v["label"], "workload": v["workload"], "id": v["id"]});
        let edges: Vec<Value> = edges
            .into_iter()
            .enumerate()
            .map(|(i, ((s, d, port, proto), (c, verdict, sv, dv, by)))| {
                json!({
                    "id": format!("e{i}"), "source": s, "target": d, "port": port, "proto": proto,
                    "connections": c.connections, "failed": c.failed, "refused": c.refused,
                    "bytesOut": c.bytes_out, "bytesIn": c.bytes_in, "firstNs": c.first_ns, "lastNs": c.last_ns,
                    "verdict": verdict, "rule": "", "src": side(&sv), "dst": side(&dv), "reportedBy": by,
                })
            })
            .collect();
        json!({"nodes": nodes.into_values().collect::<Vec<_>>(), "edges": edges})
    }
}

/// Follows the buckets into `view`, starting again after any error (the
/// buckets may not exist until a node joins).
pub async fn follow(js: jetstream::Context, view: Shared) {
    loop {
        if let Err(e) = follow_once(&js, &view).await {
            tracing::debug!("hub: following the nodes and modes: {e:#}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn gone(op: kv::Operation) -> bool {
    matches!(op, kv::Operation::Delete | kv::Operation::Purge)
}

async fn follow_once(js: &jetstream::Context, view: &Shared) -> Result<()> {
    let nodes = js.get_key_value(keys::NODES_BUCKET).await?;
    let profiles = js.get_key_value(keys::PROFILES_BUCKET).await?;
    let mut node_watch = nodes.watch_with_history(">").await?;
    let mut mode_watch = profiles.watch_with_history("*.mode").await?;
    *view.lock().unwrap_or_else(|p| p.into_inner()) = View::default();
    let mut observers = tokio::time::interval(OBSERVERS_EVERY);
    loop {
        tokio::select! {
            e = node_watch.next() => {
                let e = e.ok_or_else(|| anyhow!("the nodes watch ended"))??;
                view.lock().unwrap_or_else(|p| p.into_inner()).on_node_entry(&e.key, &e.value, gone(e.operation));
            }
            e = mode_watch.next() => {
                let e = e.ok_or_else(|| anyhow!("the modes watch ended"))??;
                view.lock().unwrap_or_else(|p| p.into_inner()).on_mode_entry(&e.key, &e.value, e.revision, gone(e.operation));
            }
            _ = observers.tick() => {
                let keys: Vec<String> = profiles.keys().await?.take(MAX_OBSERVERS).filter_map(|k| async move { k.ok() }).collect().await;
                view.lock().unwrap_or_else(|p| p.into_inner()).set_observers(keys);
            }
        }
    }
}
