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

/// Cloned (cheaply: the documents are shared) by each request, which
/// works on its copy without holding the watch up.
#[derive(Default, Clone)]
pub struct View {
    workloads: BTreeMap<String, (Arc<WorkloadsDoc>, usize)>,
    flows: BTreeMap<String, (Arc<FlowsDoc>, usize)>,
    bytes: usize,
    /// The fleet's mode per workload: (mode, revision, by).
    modes: BTreeMap<String, (String, u64, String)>,
    observers: BTreeMap<String, BTreeSet<String>>,
    /// Documents refused (not parsing, or over the bounds).
    pub refused: u64,
}

pub type Shared = Arc<Mutex<View>>;

fn put<T>(map: &mut BTreeMap<String, (Arc<T>, usize)>, bytes: &mut usize, node: &str, doc: T, size: usize) -> bool {
    let old = map.get(node).map_or(0, |(_, b)| *b);
    if *bytes - old + size > MAX_BYTES || (old == 0 && !map.contains_key(node) && map.len() >= MAX_NODES) {
        return false;
    }
    *bytes = *bytes - old + size;
    map.insert(node.to_string(), (Arc::new(doc), size));
    true
}

fn remove<T>(map: &mut BTreeMap<String, (Arc<T>, usize)>, bytes: &mut usize, node: &str) {
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
    /// At most `limit` edges, the busiest (and the nodes they name).
    pub fn map(&self, limit: usize) -> FleetMap<'_> {
        // Addresses of containers, as their nodes say; one claimed by two
        // containers is drawn as an address, never guessed.
        type Claim<'a> = Option<(&'a str, &'a super::presence::RunningContainer, &'a str)>;
        let mut at: HashMap<&str, Claim<'_>> = HashMap::new();
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
        let mut nodes: BTreeMap<String, MapNode<'_>> = BTreeMap::new();
        let mut edges: BTreeMap<(String, String, u16, &str), MapEdge<'_>> = BTreeMap::new();
        for (node, (doc, _)) in &self.flows {
            let node = node.as_str();
            for e in &doc.edges {
                let src = end(node, &e.src, &at);
                let dst = end(node, &e.dst, &at);
                for side in [&src, &dst] {
                    if let Some(n) = side.node {
                        nodes.entry(format!("n:{n}")).or_insert_with(|| MapNode {
                            id: format!("n:{n}"),
                            kind: "node",
                            label: format!("node {n}"),
                            parent: None,
                            workload: "",
                            node: Some(n),
                        });
                    }
                    nodes.entry(side.id.clone()).or_insert_with(|| MapNode {
                        id: side.id.clone(),
                        kind: side.kind,
                        label: side.name.to_string(),
                        parent: side.node.map(|n| format!("n:{n}")),
                        workload: side.workload,
                        node: side.node,
                    });
                }
                let key = (src.id.clone(), dst.id.clone(), e.port, e.proto.as_str());
                let slot = edges.entry(key).or_insert_with(|| MapEdge {
                    id: String::new(),
                    source: src.id.clone(),
                    target: dst.id.clone(),
                    port: e.port,
                    proto: &e.proto,
                    counts: FlowCounters::default(),
                    verdict: &e.verdict,
                    rule: "",
                    src,
                    dst,
                    reported_by: BTreeSet::new(),
                });
                // Both ends' nodes may count the same connections: the
                // larger count, not the sum.
                let c = &mut slot.counts;
                if e.counts.last_ns >= c.last_ns {
                    slot.verdict = &e.verdict;
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
                slot.reported_by.insert(node);
            }
        }
        let total = edges.len();
        let mut edges: Vec<MapEdge<'_>> = edges.into_values().collect();
        if total > limit {
            edges.sort_by(|a, b| b.counts.connections.cmp(&a.counts.connections).then(b.counts.last_ns.cmp(&a.counts.last_ns)));
            edges.truncate(limit);
            let named: BTreeSet<&str> = edges.iter().flat_map(|e| [e.source.as_str(), e.target.as_str()]).collect();
            let parents: BTreeSet<String> =
                nodes.values().filter(|n| named.contains(n.id.as_str())).filter_map(|n| n.parent.clone()).collect();
            nodes.retain(|id, _| named.contains(id.as_str()) || parents.contains(id));
        }
        for (i, e) in edges.iter_mut().enumerate() {
            e.id = format!("e{i}");
        }
        FleetMap { nodes: nodes.into_values().collect(), truncated: total > edges.len(), total_edges: total, edges }
    }
}

/// The map across nodes, as `GET /v1/map` serves it.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetMap<'a> {
    pub nodes: Vec<MapNode<'a>>,
    pub edges: Vec<MapEdge<'a>>,
    /// Edges in the fleet, and whether only the busiest are here.
    pub total_edges: usize,
    pub truncated: bool,
}

/// Edges `GET /v1/map` gives unless asked (`limit`), and at most.
pub const MAP_EDGES: usize = 2_000;
pub const MAX_MAP_EDGES: usize = 100_000;

#[derive(serde::Serialize)]
pub struct MapNode<'a> {
    id: String,
    kind: &'static str,
    label: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent: Option<String>,
    workload: &'a str,
    node: Option<&'a str>,
}

/// One end of an edge, resolved across nodes.
#[derive(serde::Serialize)]
pub struct Side<'a> {
    node: Option<&'a str>,
    kind: &'static str,
    name: std::borrow::Cow<'a, str>,
    workload: &'a str,
    id: String,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MapEdge<'a> {
    id: String,
    source: String,
    target: String,
    port: u16,
    proto: &'a str,
    #[serde(flatten)]
    counts: FlowCounters,
    verdict: &'a str,
    rule: &'static str,
    src: Side<'a>,
    dst: Side<'a>,
    reported_by: BTreeSet<&'a str>,
}

/// An end as `reporter` saw it, put on the container another node says
/// has that address when one does.
fn end<'a>(
    reporter: &'a str,
    e: &'a FlowEnd,
    at: &HashMap<&str, Option<(&'a str, &'a super::presence::RunningContainer, &'a str)>>,
) -> Side<'a> {
    use lancet_engine::flows::EndKind;
    use std::borrow::Cow;
    let local = |id: String, kind, name: Cow<'a, str>, workload| Side { node: Some(reporter), kind, name, workload, id };
    match e.kind() {
        EndKind::Container => local(format!("c:{}", e.id), "container", Cow::Borrowed(e.name.as_str()), e.workload.as_str()),
        EndKind::Host => local(format!("h:{reporter}"), "host", Cow::Owned(format!("{reporter} (host)")), ""),
        EndKind::Others => local(format!("o:{reporter}"), "others", Cow::Borrowed("others"), ""),
        EndKind::External => match at.get(e.id.as_str()) {
            Some(Some((n, c, w))) => {
                Side { node: Some(n), kind: "container", name: Cow::Borrowed(c.name.as_str()), workload: w, id: format!("c:{}", c.id) }
            }
            _ => Side { node: None, kind: "external", name: Cow::Borrowed(e.id.as_str()), workload: "", id: format!("x:{}", e.id) },
        },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::presence::{encode, FlowEdge, RunningContainer, RunningWorkload, MAX_EDGES};

    fn workloads(node: &str, addr: &str, n: usize) -> Vec<u8> {
        let workloads = (0..n)
            .map(|i| RunningWorkload {
                workload: format!("sha256:{i:064x}"),
                image: format!("localhost/app-{i}:1"),
                mode: "monitor".into(),
                count: 1,
                containers: vec![RunningContainer { id: format!("{node}-{i}"), name: format!("app-{i}"), addrs: vec![addr.into()] }],
            })
            .collect();
        encode(WorkloadsDoc { node: node.into(), cluster: "c".into(), time_ns: 1, workloads }).unwrap()
    }

    fn flows(node: &str, to: &str, n: usize) -> Vec<u8> {
        let edges = (0..n)
            .map(|i| FlowEdge {
                src: FlowEnd { kind: "container".into(), id: format!("{node}-{i}"), name: format!("app-{i}"), workload: "w".into() },
                dst: FlowEnd { kind: "external".into(), id: to.into(), ..Default::default() },
                port: 1000 + i as u16,
                proto: "tcp".into(),
                counts: FlowCounters { connections: 1, first_ns: 1, last_ns: 2, ..Default::default() },
                verdict: "allowed".into(),
            })
            .collect();
        encode(FlowsDoc { node: node.into(), cluster: "c".into(), time_ns: 1, edges, truncated: false }).unwrap()
    }

    #[test]
    fn an_address_two_nodes_claim_is_not_guessed() {
        let mut v = View::default();
        v.on_node_entry("a.workloads", &workloads("a", "10.0.0.1", 1), false);
        v.on_node_entry("b.workloads", &workloads("b", "10.0.0.2", 1), false);
        v.on_node_entry("c.flows", &flows("c", "10.0.0.1", 1), false);
        assert_eq!(serde_json::to_value(v.map(MAP_EDGES)).unwrap()["edges"][0]["dst"]["node"], "a", "one claim: that container");
        v.on_node_entry("b.workloads", &workloads("b", "10.0.0.1", 1), false);
        let m = serde_json::to_value(v.map(MAP_EDGES)).unwrap();
        assert_eq!((m["edges"][0]["target"].as_str(), m["edges"][0]["dst"]["node"].clone()), (Some("x:10.0.0.1"), Value::Null));
        // Gone: no longer drawn.
        v.on_node_entry("c.flows", b"", true);
        assert_eq!(serde_json::to_value(v.map(MAP_EDGES)).unwrap()["edges"], json!([]));
    }

    #[test]
    fn documents_that_do_not_check_out_are_refused() {
        let mut v = View::default();
        v.on_node_entry("a.workloads", &workloads("b", "10.0.0.1", 1), false);
        v.on_node_entry("a.flows", b"{not json", false);
        v.on_node_entry("a.workloads", &vec![b' '; crate::fleet::presence::MAX_DOC_BYTES + 1], false);
        v.on_mode_entry(&format!("sha256-{}.mode", "1".repeat(64)), br#"{"mode":"root","node":"a","timeNs":1}"#, 3, false);
        assert_eq!(v.refused, 4);
        assert_eq!(v.workloads_json(), json!([]));
        v.on_mode_entry(&format!("sha256-{}.mode", "1".repeat(64)), br#"{"mode":"protect","node":"a","timeNs":1}"#, 3, false);
        v.set_observers([format!("sha256-{}.obs.b", "1".repeat(64)), "junk".to_string()]);
        let w = v.workloads_json();
        assert_eq!(
            (w[0]["mode"].as_str(), w[0]["modeRevision"].as_u64(), w[0]["observedBy"].clone()),
            (Some("protect"), Some(3), json!(["b"]))
        );
    }

    /// The cost of the hub's views for 64 nodes at their bounds (500 edges
    /// and 100 workloads each), printed.
    #[test]
    fn the_views_of_64_full_nodes_are_measured() {
        let mut v = View::default();
        let mut bytes = 0;
        for n in 0..64 {
            let node = format!("n{n}");
            let (w, f) = (workloads(&node, &format!("10.1.{n}.1"), 100), flows(&node, &format!("10.1.{}.1", (n + 1) % 64), MAX_EDGES));
            bytes += w.len() + f.len();
            v.on_node_entry(&format!("{node}.workloads"), &w, false);
            v.on_node_entry(&format!("{node}.flows"), &f, false);
        }
        assert_eq!(v.refused, 0);
        // What a request does: copy the view, build the map, serialise it.
        let t = std::time::Instant::now();
        let body = serde_json::to_vec(&v.clone().map(MAX_MAP_EDGES)).unwrap();
        let map_took = t.elapsed();
        let m: Value = serde_json::from_slice(&body).unwrap();
        let t = std::time::Instant::now();
        let w = v.workloads_json();
        let workloads_took = t.elapsed();
        assert_eq!(m["edges"].as_array().unwrap().len(), 64 * MAX_EDGES);
        assert_eq!(w.as_array().unwrap().len(), 100);
        // What the dashboard asks for: the busiest edges and their nodes only.
        let t = std::time::Instant::now();
        let small_body = serde_json::to_vec(&v.clone().map(MAP_EDGES)).unwrap();
        let small_took = t.elapsed();
        let small: Value = serde_json::from_slice(&small_body).unwrap();
        assert_eq!((small["edges"].as_array().unwrap().len(), small["truncated"].as_bool()), (MAP_EDGES, Some(true)));
        assert_eq!(small["totalEdges"], 64 * MAX_EDGES);
        let ids: BTreeSet<&str> = small["nodes"].as_array().unwrap().iter().filter_map(|n| n["id"].as_str()).collect();
        assert!(small["edges"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| ids.contains(e["source"].as_str().unwrap()) && ids.contains(e["target"].as_str().unwrap())));
        assert!(ids.len() < m["nodes"].as_array().unwrap().len());
        println!(
            "hub: 64 nodes, {} KiB of documents: /v1/map of {} edges in {map_took:?} ({} KiB of JSON), of the busiest {MAP_EDGES} in {small_took:?} ({} KiB), /v1/workloads in {workloads_took:?}",
            bytes / 1024,
            64 * MAX_EDGES,
            body.len() / 1024,
            small_body.len() / 1024
        );
    }
}
