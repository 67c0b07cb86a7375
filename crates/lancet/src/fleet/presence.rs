//! What a node tells the hub besides its heartbeat, each under its own key
//! of the nodes bucket (so NATS permissions can give each node its own):
//!
//! - `<node>.workloads`: the workloads it runs now, each with the mode it
//!   enforces, its containers (at most [`MAX_CONTAINERS_LISTED`] named,
//!   all counted) and their addresses (what lets the hub put a flow that
//!   leaves one node on the container of another). Written when it
//!   changed, at most every [`PRESENCE_EVERY`].
//! - `<node>.flows`: its flow edges of the last hour, summed over the
//!   store's hourly rows, the busiest [`MAX_EDGES`] first. Written when
//!   they changed, at most every [`FLOWS_EVERY`].
//!
//! Both are bounded on the writer ([`encode`], at most [`MAX_DOC_BYTES`])
//! and parsed with the same bounds on the hub, which must not trust them:
//! a node can be compromised.

use super::keys::valid_name;
use lancet_engine::flows::{EndKind, FlowCounters, FlowEnd, FlowRow};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

/// The largest document written or read.
pub const MAX_DOC_BYTES: usize = 256 * 1024;
pub const MAX_WORKLOADS: usize = 1000;
pub const MAX_CONTAINERS_LISTED: usize = 32;
pub const MAX_ADDRS: usize = 4;
pub const MAX_EDGES: usize = 500;
/// The longest text field (a workload key, an image, an address).
const MAX_TEXT: usize = 512;
/// How often a changed presence is written at most.
pub const PRESENCE_EVERY: Duration = Duration::from_secs(5);
/// How often the flows are read from the store and, when changed, written.
pub const FLOWS_EVERY: Duration = Duration::from_secs(10);
/// The flows summed: the last hour's.
pub const FLOWS_SPAN_NS: u64 = 3_600_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunningContainer {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub addrs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunningWorkload {
    pub workload: String,
    pub image: String,
    /// The mode this node enforces for it.
    pub mode: String,
    /// Its containers running on the node (all of them).
    pub count: u32,
    pub containers: Vec<RunningContainer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadsDoc {
    pub node: String,
    pub cluster: String,
    pub time_ns: u64,
    pub workloads: Vec<RunningWorkload>,
}

/// One edge of a node's flows over the last hour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowEdge {
    pub src: FlowEnd,
    pub dst: FlowEnd,
    pub port: u16,
    pub proto: String,
    #[serde(flatten)]
    pub counts: FlowCounters,
    pub verdict: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlowsDoc {
    pub node: String,
    pub cluster: String,
    pub time_ns: u64,
    pub edges: Vec<FlowEdge>,
    /// More edges than were sent.
    #[serde(default)]
    pub truncated: bool,
}

fn text_ok(s: &str, max: usize) -> bool {
    s.len() <= max && !s.chars().any(char::is_control)
}

fn end_ok(e: &FlowEnd) -> bool {
    EndKind::parse(&e.kind).is_some() && text_ok(&e.id, MAX_TEXT) && text_ok(&e.name, MAX_TEXT) && text_ok(&e.workload, MAX_TEXT)
}

impl WorkloadsDoc {
    /// The document `node` wrote under its key, or None when it is larger
    /// than the bounds, does not parse exactly, or names another node.
    pub fn parse(bytes: &[u8], node: &str) -> Option<WorkloadsDoc> {
        if bytes.len() > MAX_DOC_BYTES {
            return None;
        }
        let d: WorkloadsDoc = serde_json::from_slice(bytes).ok()?;
        let ok = d.node == node
            && valid_name(&d.cluster)
            && d.workloads.len() <= MAX_WORKLOADS
            && d.workloads.iter().all(|w| {
                !w.workload.is_empty()
                    && text_ok(&w.workload, MAX_TEXT)
                    && text_ok(&w.image, MAX_TEXT)
                    && w.mode.parse::<lancet_engine::profile::Mode>().is_ok()
                    && w.containers.len() <= MAX_CONTAINERS_LISTED
                    && w.containers.iter().all(|c| {
                        text_ok(&c.id, 128)
                            && text_ok(&c.name, MAX_TEXT)
                            && c.addrs.len() <= MAX_ADDRS
                            && c.addrs.iter().all(|a| a.parse::<std::net::IpAddr>().is_ok())
                    })
            });
        ok.then_some(d)
    }
}

impl FlowsDoc {
    /// As [`WorkloadsDoc::parse`], for `<node>.flows`.
    pub fn parse(bytes: &[u8], node: &str) -> Option<FlowsDoc> {
        if bytes.len() > MAX_DOC_BYTES {
            return None;
        }
        let d: FlowsDoc = serde_json::from_slice(bytes).ok()?;
        let ok = d.node == node
            && valid_name(&d.cluster)
            && d.edges.len() <= MAX_EDGES
            && d.edges
                .iter()
                .all(|e| end_ok(&e.src) && end_ok(&e.dst) && matches!(e.proto.as_str(), "tcp" | "udp") && text_ok(&e.verdict, 32));
        ok.then_some(d)
    }

    /// A node's edges from its store's hourly rows (those of the last hour
    /// and the one before may name the same flow: they are summed), the
    /// busiest first, at most [`MAX_EDGES`].
    pub fn from_rows(node: &str, cluster: &str, time_ns: u64, rows: &[FlowRow]) -> FlowsDoc {
        let mut by: HashMap<(String, String, String, String, u16, String), FlowEdge> = HashMap::new();
        for r in rows {
            let k = (r.src.kind.clone(), r.src.id.clone(), r.dst.kind.clone(), r.dst.id.clone(), r.port, r.proto.clone());
            let newer = by.get(&k).is_none_or(|e| r.counts.last_ns >= e.counts.last_ns);
            let e = by.entry(k).or_insert_with(|| FlowEdge {
                src: r.src.clone(),
                dst: r.dst.clone(),
                port: r.port,
                proto: r.proto.clone(),
                counts: FlowCounters::default(),
                verdict: r.verdict.clone(),
            });
            e.counts.merge(&r.counts);
            if newer {
                (e.src, e.dst, e.verdict) = (r.src.clone(), r.dst.clone(), r.verdict.clone());
            }
        }
        let mut edges: Vec<FlowEdge> = by.into_values().collect();
        edges.sort_by(|a, b| {
            b.counts.connections.cmp(&a.counts.connections).then(b.counts.last_ns.cmp(&a.counts.last_ns)).then(a.dst.id.cmp(&b.dst.id))
        });
        let truncated = edges.len() > MAX_EDGES;
        edges.truncate(MAX_EDGES);
        FlowsDoc { node: node.into(), cluster: cluster.into(), time_ns, edges, truncated }
    }
}

/// A document as written: JSON of at most [`MAX_DOC_BYTES`], the tail of
/// its list dropped (and `truncated`) when it is larger.
pub trait Bounded: Serialize {
    /// Drops the last item; false when there is none left.
    fn shrink(&mut self) -> bool;
}

impl Bounded for WorkloadsDoc {
    fn shrink(&mut self) -> bool {
        self.workloads.pop().is_some()
    }
}

impl Bounded for FlowsDoc {
    fn shrink(&mut self) -> bool {
        self.truncated = true;
        self.edges.pop().is_some()
    }
}

pub fn encode<T: Bounded>(mut doc: T) -> Option<Vec<u8>> {
    loop {
        let bytes = serde_json::to_vec(&doc).ok()?;
        if bytes.len() <= MAX_DOC_BYTES {
            return Some(bytes);
        }
        if !doc.shrink() {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(kind: &str, id: &str, name: &str) -> FlowEnd {
        FlowEnd { kind: kind.into(), id: id.into(), name: name.into(), workload: if name.is_empty() { "" } else { "w" }.into() }
    }

    fn row(hour: u64, src: FlowEnd, dst: FlowEnd, connections: u64, last_ns: u64) -> FlowRow {
        FlowRow {
            hour_ns: hour,
            src,
            dst,
            port: 80,
            proto: "tcp".into(),
            counts: FlowCounters { connections, last_ns, first_ns: 1, ..Default::default() },
            verdict: "learning".into(),
            rule: String::new(),
        }
    }

    #[test]
    fn rows_of_two_hours_are_one_edge_and_the_busiest_come_first() {
        let (a, b, x) = (end("container", "aa", "web"), end("container", "bb", "db"), end("external", "10.0.0.9", ""));
        let rows = [row(0, a.clone(), b.clone(), 3, 10), row(1, a.clone(), b.clone(), 4, 20), row(1, a.clone(), x.clone(), 9, 15)];
        let d = FlowsDoc::from_rows("n1", "c", 30, &rows);
        assert_eq!(d.edges.len(), 2);
        assert_eq!((d.edges[0].dst.id.as_str(), d.edges[0].counts.connections), ("10.0.0.9", 9));
        assert_eq!((d.edges[1].counts.connections, d.edges[1].counts.last_ns), (7, 20));
        let bytes = encode(d.clone()).unwrap();
        assert_eq!(FlowsDoc::parse(&bytes, "n1"), Some(d));
        assert_eq!(FlowsDoc::parse(&bytes, "n2"), None, "another node's key");
    }

    #[test]
    fn documents_from_nodes_are_bounded_and_checked() {
        let c = RunningContainer { id: "a".repeat(64), name: "web".into(), addrs: vec!["10.88.0.2".into()] };
        let w = RunningWorkload { workload: "sha256:1".into(), image: "img".into(), mode: "protect".into(), count: 1, containers: vec![c] };
        let doc = WorkloadsDoc { node: "n1".into(), cluster: "c".into(), time_ns: 1, workloads: vec![w.clone()] };
        let ok = encode(doc.clone()).unwrap();
        assert_eq!(WorkloadsDoc::parse(&ok, "n1"), Some(doc.clone()));
        let mut bad = doc.clone();
        bad.workloads[0].mode = "root".into();
        assert_eq!(WorkloadsDoc::parse(&serde_json::to_vec(&bad).unwrap(), "n1"), None);
        let mut bad = doc.clone();
        bad.workloads[0].containers[0].addrs = vec!["not an address".into()];
        assert_eq!(WorkloadsDoc::parse(&serde_json::to_vec(&bad).unwrap(), "n1"), None);
        let mut bad = doc.clone();
        bad.workloads[0].image = "a\u{1b}[31m".into();
        assert_eq!(WorkloadsDoc::parse(&serde_json::to_vec(&bad).unwrap(), "n1"), None, "control characters");
        assert_eq!(WorkloadsDoc::parse(br#"{"node":"n1","cluster":"c","timeNs":1,"workloads":[],"x":1}"#, "n1"), None);
        assert_eq!(WorkloadsDoc::parse(&vec![b' '; MAX_DOC_BYTES + 1], "n1"), None);
        // Too many for one document: cut to fit, never refused whole.
        let long = RunningWorkload { image: "i".repeat(MAX_TEXT), ..w };
        let many = WorkloadsDoc { workloads: vec![long; MAX_WORKLOADS], ..doc };
        let cut = encode(many).unwrap();
        assert!(cut.len() <= MAX_DOC_BYTES);
        let back = WorkloadsDoc::parse(&cut, "n1").expect("a cut document parses");
        assert!(back.workloads.len() <= MAX_WORKLOADS && !back.workloads.is_empty());
    }
}
