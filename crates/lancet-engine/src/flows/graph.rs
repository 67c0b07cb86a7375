//! The map: who talks to whom, built from stored hourly flow rows. Nodes
//! are containers (grouped in their workload), the host, external
//! addresses (grouped together) and summaries of many peers; an edge is a
//! (source, destination, port, protocol) with its counters summed over the
//! hours asked for and the verdict and rule last seen. Rendered as a table
//! for people, JSON for programs (and the dashboard, whose cytoscape.js
//! elements it feeds), or Graphviz dot.

use super::{EndKind, FlowCounters, FlowEnd, FlowNode, FlowRow, Verdict};
use crate::output::rfc3339_nanos;
use crate::printable::printable;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

/// A node of the map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// `c:<container id>`, `w:<workload>`, `host:<address>`, `ip:<address>`,
    /// `others`, or the group `external`.
    pub id: String,
    /// `container`, `workload`, `host`, `external`, `others` or `group`.
    pub kind: &'static str,
    pub label: String,
    /// The compound node it sits in: a container's workload, an external
    /// address's `external` group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// A container's or workload's workload key.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub workload: String,
}

/// An edge of the map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Edge {
    pub id: String,
    pub source: String,
    pub target: String,
    pub port: u16,
    pub proto: String,
    #[serde(flatten)]
    pub counts: FlowCounters,
    /// The verdict last seen: `learning`, `allowed`, `unlisted` or `refused`.
    pub verdict: String,
    /// The profile entry or rule that decided it.
    pub rule: String,
}

/// The map over some hours.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

fn node_id(e: &FlowEnd) -> String {
    match e.kind() {
        EndKind::Container => format!("c:{}", e.id),
        EndKind::Host => format!("host:{}", e.id),
        EndKind::External => format!("ip:{}", e.id),
        EndKind::Others => "others".to_string(),
    }
}

/// Whether a flow end is the container `what` names (its name, or an id
/// prefix of at least 3 characters).
fn is_container(e: &FlowEnd, what: &str) -> bool {
    e.kind() == EndKind::Container && (e.name == what || (what.len() >= 3 && e.id.starts_with(what)))
}

fn short(s: &str) -> &str {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    hex.get(..12).unwrap_or(hex)
}

impl Graph {
    /// The map of `rows` (any hours; summed), restricted to edges that
    /// touch `container` when it is given. `nodes` names workloads by
    /// image.
    pub fn build(rows: &[FlowRow], nodes: &[FlowNode], container: Option<&str>) -> Graph {
        let images: HashMap<&str, &str> = nodes.iter().map(|n| (n.workload.as_str(), n.image.as_str())).collect();
        let mut edges: BTreeMap<(String, String, u16, String), Edge> = BTreeMap::new();
        let mut ends: BTreeMap<String, &FlowEnd> = BTreeMap::new();
        for r in rows {
            if let Some(c) = container {
                if !is_container(&r.src, c) && !is_container(&r.dst, c) {
                    continue;
                }
            }
            let (s, d) = (node_id(&r.src), node_id(&r.dst));
            ends.entry(s.clone()).or_insert(&r.src);
            ends.entry(d.clone()).or_insert(&r.dst);
            let e = edges.entry((s.clone(), d.clone(), r.port, r.proto.clone())).or_insert_with(|| Edge {
                id: format!("{s}>{d}:{}/{}", r.port, r.proto),
                source: s,
                target: d,
                port: r.port,
                proto: r.proto.clone(),
                counts: FlowCounters::default(),
                verdict: String::new(),
                rule: String::new(),
            });
            let newest = r.counts.last_ns >= e.counts.last_ns;
            e.counts.merge(&r.counts);
            if newest {
                e.verdict.clone_from(&r.verdict);
                e.rule.clone_from(&r.rule);
            }
        }
        let mut g = Graph::default();
        let mut workloads: BTreeMap<String, ()> = BTreeMap::new();
        let mut external = false;
        for (id, end) in &ends {
            let (kind, label, parent) = match end.kind() {
                EndKind::Container => {
                    let parent = (!end.workload.is_empty()).then(|| format!("w:{}", end.workload));
                    if !end.workload.is_empty() {
                        workloads.insert(end.workload.clone(), ());
                    }
                    let label = if end.name.is_empty() { short(&end.id).to_string() } else { end.name.clone() };
                    ("container", label, parent)
                }
                EndKind::Host => ("host", format!("host {}", end.id), None),
                EndKind::External => {
                    external = true;
                    ("external", end.id.clone(), Some("external".to_string()))
                }
                EndKind::Others => ("others", "many peers (summarised)".to_string(), None),
            };
            g.nodes.push(Node { id: id.clone(), kind, label, parent, workload: end.workload.clone() });
        }
        for w in workloads.keys() {
            let image = images.get(w.as_str()).copied().filter(|i| !i.is_empty());
            let label = match image {
                Some(i) => format!("{i} ({})", short(w)),
                None => short(w).to_string(),
            };
            g.nodes.push(Node { id: format!("w:{w}"), kind: "workload", label, parent: None, workload: w.clone() });
        }
        if external {
            g.nodes.push(Node {
                id: "external".into(),
                kind: "group",
                label: "outside the host".into(),
                parent: None,
                workload: String::new(),
            });
        }
        g.edges = edges.into_values().collect();
        g
    }

    /// Each node's label by its id: one lookup per edge end (a search
    /// per edge would make a large map quadratic).
    pub fn labels(&self) -> std::collections::HashMap<&str, &str> {
        self.nodes.iter().map(|n| (n.id.as_str(), n.label.as_str())).collect()
    }

    /// Aligned columns, busiest edges first.
    pub fn to_table(&self) -> String {
        let labels = self.labels();
        let label_of = |id: &str| labels.get(id).copied().unwrap_or(id).to_string();
        let mut edges: Vec<&Edge> = self.edges.iter().collect();
        edges.sort_by(|a, b| {
            (b.counts.connections + b.counts.failed + b.counts.refused)
                .cmp(&(a.counts.connections + a.counts.failed + a.counts.refused))
                .then(a.id.cmp(&b.id))
        });
        let rows: Vec<[String; 9]> = edges
            .iter()
            .map(|e| {
                [
                    printable(&label_of(&e.source)).into_owned(),
                    printable(&label_of(&e.target)).into_owned(),
                    format!("{}/{}", e.port, e.proto),
                    e.verdict.clone(),
                    e.counts.connections.to_string(),
                    format!("{}/{}", e.counts.failed, e.counts.refused),
                    format!("{}/{}", bytes(e.counts.bytes_out), bytes(e.counts.bytes_in)),
                    rfc3339_nanos(e.counts.last_ns).get(..19).unwrap_or("").replace('T', " "),
                    printable(&e.rule).into_owned(),
                ]
            })
            .collect();
        let head = ["SOURCE", "DESTINATION", "PORT", "VERDICT", "CONNS", "FAILED/REFUSED", "BYTES OUT/IN", "LAST SEEN (UTC)", "DECIDED BY"];
        let mut width = head.map(str::len);
        for r in &rows {
            for (w, c) in width.iter_mut().zip(r.iter()) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: &[&str]| {
            for (i, c) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    out.push_str(c);
                } else {
                    let _ = write!(out, "{c:<w$}  ", w = width[i]);
                }
            }
            out.push('\n');
        };
        line(&mut out, &head);
        for r in &rows {
            let cells: Vec<&str> = r.iter().map(String::as_str).collect();
            line(&mut out, &cells);
        }
        out
    }

    /// Graphviz: containers in a cluster per workload, external addresses
    /// in one, edges green (allowed or learning), orange (not in the
    /// profile) or red (refused), labelled with port and counts.
    pub fn to_dot(&self) -> String {
        let mut out = String::from("digraph lancet {\n  rankdir=LR;\n  node [shape=box, style=rounded, fontname=\"Helvetica\"];\n  edge [fontname=\"Helvetica\", fontsize=10];\n");
        let groups: Vec<&Node> = self.nodes.iter().filter(|n| n.kind == "workload" || n.kind == "group").collect();
        for (i, g) in groups.iter().enumerate() {
            let _ = writeln!(out, "  subgraph cluster_{i} {{\n    label={};\n    style=dashed;", quote(&g.label));
            for n in self.nodes.iter().filter(|n| n.parent.as_deref() == Some(g.id.as_str())) {
                let _ = writeln!(out, "    {} [label={}];", quote(&n.id), quote(&n.label));
            }
            out.push_str("  }\n");
        }
        for n in self.nodes.iter().filter(|n| n.parent.is_none() && n.kind != "workload" && n.kind != "group") {
            let shape = if n.kind == "others" { ", shape=octagon" } else { ", shape=ellipse" };
            let _ = writeln!(out, "  {} [label={}{shape}];", quote(&n.id), quote(&n.label));
        }
        for e in &self.edges {
            let color = match Verdict::parse(&e.verdict) {
                Some(Verdict::Refused) => "red3",
                Some(Verdict::Unlisted) => "darkorange",
                _ => "forestgreen",
            };
            let mut label = format!("{}/{} ×{}", e.port, e.proto, e.counts.connections);
            if e.counts.refused > 0 {
                let _ = write!(label, " refused {}", e.counts.refused);
            }
            let _ = writeln!(
                out,
                "  {} -> {} [label={}, color={color}, fontcolor={color}];",
                quote(&e.source),
                quote(&e.target),
                quote(&label)
            );
        }
        out.push_str("}\n");
        out
    }
}

/// A dot string literal.
fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for ch in s.chars() {
        match ch {
            '"' | '\\' => {
                q.push('\\');
                q.push(ch);
            }
            '\n' | '\r' => q.push(' '),
            _ => q.push(ch),
        }
    }
    q.push('"');
    q
}

/// 1536 → `1.5K`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["", "K", "M", "G", "T"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        n.to_string()
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn end(kind: EndKind, id: &str, name: &str, workload: &str) -> FlowEnd {
        FlowEnd { kind: kind.as_str().into(), id: id.into(), name: name.into(), workload: workload.into() }
    }

    pub(crate) fn row(src: FlowEnd, dst: FlowEnd, port: u16, conns: u64, last: u64, verdict: &str) -> FlowRow {
        FlowRow {
            hour_ns: 0,
            src,
            dst,
            port,
            proto: "tcp".into(),
            counts: FlowCounters {
                connections: conns,
                failed: 0,
                refused: 0,
                bytes_out: 100,
                bytes_in: 2048,
                first_ns: last - 10,
                last_ns: last,
            },
            verdict: verdict.into(),
            rule: format!("rule at {last}"),
        }
    }

    fn sample() -> (Vec<FlowRow>, Vec<FlowNode>) {
        let web = end(EndKind::Container, "aaaa1111", "web-1", "sha256:web");
        let db = end(EndKind::Container, "bbbb2222", "db \"main\"", "sha256:db");
        let ext = end(EndKind::External, "203.0.113.9", "", "");
        let rows = vec![
            row(web.clone(), db.clone(), 5432, 10, 1_000, "allowed"),
            // The same edge in a later hour: summed, the later verdict wins.
            row(web.clone(), db.clone(), 5432, 5, 2_000, "refused"),
            row(ext, web.clone(), 80, 3, 1_500, "unlisted"),
            row(web, end(EndKind::Others, "", "", ""), 0, 700, 1_600, "allowed"),
        ];
        let nodes = vec![FlowNode {
            id: "aaaa1111".into(),
            name: "web-1".into(),
            workload: "sha256:web".into(),
            image: "localhost/web:1".into(),
            ..Default::default()
        }];
        (rows, nodes)
    }

    #[test]
    fn edges_are_summed_over_hours_and_grouped() {
        let (rows, nodes) = sample();
        let g = Graph::build(&rows, &nodes, None);
        assert_eq!(g.edges.len(), 3);
        let e = g.edges.iter().find(|e| e.port == 5432).unwrap();
        assert_eq!((e.counts.connections, e.counts.bytes_in, e.counts.first_ns, e.counts.last_ns), (15, 4096, 990, 2_000));
        assert_eq!((e.verdict.as_str(), e.rule.as_str()), ("refused", "rule at 2000"));
        let web = g.nodes.iter().find(|n| n.id == "c:aaaa1111").unwrap();
        assert_eq!(web.parent.as_deref(), Some("w:sha256:web"));
        let w = g.nodes.iter().find(|n| n.id == "w:sha256:web").unwrap();
        assert_eq!(w.label, "localhost/web:1 (web)");
        let ext = g.nodes.iter().find(|n| n.id == "ip:203.0.113.9").unwrap();
        assert_eq!(ext.parent.as_deref(), Some("external"));
        assert!(g.nodes.iter().any(|n| n.id == "external" && n.kind == "group"));
    }

    #[test]
    fn a_container_filter_keeps_its_edges_only() {
        let (rows, nodes) = sample();
        let g = Graph::build(&rows, &nodes, Some("db \"main\""));
        assert_eq!(g.edges.len(), 1);
        let g = Graph::build(&rows, &nodes, Some("bbb"));
        assert_eq!(g.edges.len(), 1);
        let g = Graph::build(&rows, &nodes, Some("bb"));
        assert!(g.edges.is_empty(), "an id prefix needs 3 characters");
    }

    #[test]
    fn table_and_dot() {
        let (rows, nodes) = sample();
        let g = Graph::build(&rows, &nodes, None);
        let t = g.to_table();
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("SOURCE"));
        assert!(lines[1].starts_with("web-1") && lines[1].contains("many peers"), "busiest first: {t}");
        assert!(t.contains("5432/tcp") && t.contains("refused") && t.contains("200/4.0K"), "{t}");
        let dot = g.to_dot();
        assert!(dot.starts_with("digraph lancet {"));
        assert!(dot.contains("\"db \\\"main\\\"\""), "quotes escaped: {dot}");
        assert!(dot.contains("color=red3"));
        assert!(dot.contains("subgraph cluster_"));
        assert_eq!(dot.matches('{').count(), dot.matches('}').count());
    }

    #[test]
    fn byte_units() {
        assert_eq!(bytes(0), "0");
        assert_eq!(bytes(1023), "1023");
        assert_eq!(bytes(1536), "1.5K");
        assert_eq!(bytes(5 << 30), "5.0G");
    }
}
