//! Network policy from what was learned: Kubernetes `NetworkPolicy`
//! (networking.k8s.io/v1) or `CiliumNetworkPolicy` (cilium.io/v2), one per
//! workload that had flows, with an ingress rule per peer that connected
//! to it and an egress rule per peer it connected to, each with the ports
//! seen. Container peers are selected by their pod labels (the labels the
//! runtime records, without the runtime's own), in their namespace when it
//! differs; the host and external addresses by `ipBlock` (Cilium: the
//! `host` entity and `toCIDR`/`fromCIDR`). Summaries of many peers (scans)
//! are not turned into rules; the document says how many were left out.
//!
//! Both directions are always listed (`policyTypes: [Ingress, Egress]`):
//! a workload that received nothing gets no ingress rule, which denies all
//! inbound traffic. That is what was observed; review before applying.

use super::{EndKind, FlowEnd, FlowNode, FlowRow};
use crate::printable::printable;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Which policy dialect to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Kubernetes,
    Cilium,
}

/// A peer of a workload, as a policy names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Peer {
    Workload(String),
    Host(String),
    Cidr(String),
}

/// What one workload did.
#[derive(Debug, Default)]
struct Seen {
    ingress: BTreeMap<Peer, BTreeSet<(String, u16)>>,
    egress: BTreeMap<Peer, BTreeSet<(String, u16)>>,
    summarised: u64,
}

/// Label keys the runtimes set for themselves: not a pod's labels.
fn runtime_label(key: &str) -> bool {
    const PREFIXES: [&str; 10] = [
        "io.kubernetes.",
        "io.podman.",
        "io.buildah.",
        "io.containers.",
        "io.cri-containerd.",
        "org.opencontainers.",
        "com.docker.",
        "io.container.manager",
        "annotation.",
        "nerdctl/",
    ];
    PREFIXES.iter().any(|p| key.starts_with(p))
        || matches!(key, "maintainer" | "description" | "vendor" | "version" | "name" | "summary" | "license")
}

/// A valid Kubernetes label value (≤ 63, alphanumeric ends, `-_.` inside).
fn label_value_ok(v: &str) -> bool {
    v.len() <= 63
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && v.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && v.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
}

/// A valid label key: an optional DNS-subdomain prefix and `/`, then a
/// name like a value (not empty).
fn label_key_ok(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty() && p.len() <= 253 && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
    });
    prefix_ok && !name.is_empty() && label_value_ok(name)
}

/// `localhost/web-app:1.2` → `web-app`, cut to fit a DNS label.
fn dns_label(s: &str) -> String {
    let base = s.rsplit('/').next().unwrap_or(s);
    let base = base.split([':', '@']).next().unwrap_or(base);
    let mut out: String = base.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    out.truncate(40);
    let out = out.trim_matches('-').to_string();
    if out.is_empty() {
        "workload".to_string()
    } else {
        out
    }
}

fn short_digest(w: &str) -> String {
    let hex: String = w.strip_prefix("sha256:").unwrap_or(w).chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    hex.to_ascii_lowercase().chars().take(8).collect()
}

/// How a workload's pods are selected, its namespace, and whether the
/// labels are lancet's stand-in (no pod labels were known).
struct Identity {
    name: String,
    namespace: String,
    labels: BTreeMap<String, String>,
    stand_in: bool,
}

fn identity(workload: &str, nodes: &[FlowNode]) -> Identity {
    let mine: Vec<&FlowNode> = nodes.iter().filter(|n| n.workload == workload).collect();
    let image = mine.iter().map(|n| n.image.as_str()).find(|i| !i.is_empty()).unwrap_or("");
    let namespace = mine.iter().map(|n| n.namespace.as_str()).find(|n| !n.is_empty()).unwrap_or("").to_string();
    let labels: BTreeMap<String, String> = mine
        .iter()
        .max_by_key(|n| n.last_ns)
        .map(|n| {
            n.labels
                .iter()
                .filter(|(k, v)| !runtime_label(k) && label_key_ok(k) && label_value_ok(v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let app = dns_label(if image.is_empty() { workload } else { image });
    let name = format!("lancet-{app}-{}", short_digest(workload));
    if labels.is_empty() {
        let labels = BTreeMap::from([("app.kubernetes.io/name".to_string(), app)]);
        return Identity { name, namespace, labels, stand_in: true };
    }
    Identity { name, namespace, labels, stand_in: false }
}

fn peer_of(end: &FlowEnd) -> Option<Peer> {
    match end.kind() {
        EndKind::Container if !end.workload.is_empty() => Some(Peer::Workload(end.workload.clone())),
        EndKind::Container | EndKind::Others => None,
        EndKind::Host => Some(Peer::Host(end.id.clone())),
        EndKind::External => Some(Peer::Cidr(end.id.clone())),
    }
}

fn cidr(addr: &str) -> String {
    if addr.contains('/') {
        addr.to_string()
    } else if addr.contains(':') {
        format!("{addr}/128")
    } else {
        format!("{addr}/32")
    }
}

fn collect(rows: &[FlowRow]) -> BTreeMap<String, Seen> {
    let mut by: BTreeMap<String, Seen> = BTreeMap::new();
    for r in rows {
        // Only what was let through is a rule: a refused or failed-only
        // flow is not.
        if r.counts.connections == 0 {
            continue;
        }
        let port = (r.proto.to_ascii_uppercase(), r.port);
        if r.src.kind() == EndKind::Container && !r.src.workload.is_empty() {
            let s = by.entry(r.src.workload.clone()).or_default();
            match peer_of(&r.dst) {
                Some(p) if r.port != 0 => {
                    s.egress.entry(p).or_default().insert(port.clone());
                }
                _ => s.summarised += r.counts.connections,
            }
        }
        if r.dst.kind() == EndKind::Container && !r.dst.workload.is_empty() {
            let s = by.entry(r.dst.workload.clone()).or_default();
            match peer_of(&r.src) {
                Some(p) if r.port != 0 => {
                    s.ingress.entry(p).or_default().insert(port);
                }
                _ => s.summarised += r.counts.connections,
            }
        }
    }
    by
}

fn match_labels(labels: &BTreeMap<String, String>) -> Value {
    json!({ "matchLabels": labels })
}

/// The policy documents, in workload order, each with the comment lines
/// to print above it.
pub fn policies(rows: &[FlowRow], nodes: &[FlowNode], dialect: Dialect) -> Vec<(Vec<String>, Value)> {
    let seen = collect(rows);
    let ids: BTreeMap<&str, Identity> = {
        let mut all: BTreeSet<&str> = seen.keys().map(String::as_str).collect();
        for s in seen.values() {
            for p in s.ingress.keys().chain(s.egress.keys()) {
                if let Peer::Workload(w) = p {
                    all.insert(w);
                }
            }
        }
        all.into_iter().map(|w| (w, identity(w, nodes))).collect()
    };
    let mut out = Vec::new();
    for (w, s) in &seen {
        let me = &ids[w.as_str()];
        let mut comments = vec![format!("lancet: observed flows of workload {w}")];
        if me.stand_in {
            comments.push(format!(
                "lancet: no pod labels were known for this workload; label its pods {} or edit the selectors",
                me.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
            ));
        }
        if s.summarised > 0 {
            comments.push(format!(
                "lancet: {} connections to or from many peers (a scan, or more flows than tracked) are not turned into rules",
                s.summarised
            ));
        }
        let doc = match dialect {
            Dialect::Kubernetes => kubernetes(me, s, &ids),
            Dialect::Cilium => cilium(me, s, &ids),
        };
        out.push((comments, doc));
    }
    out
}

fn metadata(me: &Identity) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(me.name));
    if !me.namespace.is_empty() {
        m.insert("namespace".into(), json!(me.namespace));
    }
    m.insert("labels".into(), json!({"app.kubernetes.io/managed-by": "lancet"}));
    Value::Object(m)
}

fn kubernetes(me: &Identity, s: &Seen, ids: &BTreeMap<&str, Identity>) -> Value {
    let peer = |p: &Peer| -> Value {
        match p {
            Peer::Workload(w) => {
                let other = &ids[w.as_str()];
                let mut v = json!({ "podSelector": match_labels(&other.labels) });
                if !other.namespace.is_empty() && other.namespace != me.namespace {
                    v["namespaceSelector"] = json!({"matchLabels": {"kubernetes.io/metadata.name": other.namespace}});
                }
                v
            }
            Peer::Host(a) | Peer::Cidr(a) => json!({ "ipBlock": { "cidr": cidr(a) } }),
        }
    };
    let ports =
        |set: &BTreeSet<(String, u16)>| -> Value { set.iter().map(|(proto, port)| json!({"protocol": proto, "port": port})).collect() };
    let ingress: Vec<Value> = s.ingress.iter().map(|(p, set)| json!({"from": [peer(p)], "ports": ports(set)})).collect();
    let egress: Vec<Value> = s.egress.iter().map(|(p, set)| json!({"to": [peer(p)], "ports": ports(set)})).collect();
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(me),
        "spec": {
            "podSelector": match_labels(&me.labels),
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        }
    })
}

fn cilium(me: &Identity, s: &Seen, ids: &BTreeMap<&str, Identity>) -> Value {
    let ports = |set: &BTreeSet<(String, u16)>| -> Value {
        json!([{ "ports": set.iter().map(|(proto, port)| json!({"port": port.to_string(), "protocol": proto})).collect::<Vec<_>>() }])
    };
    let rule = |p: &Peer, set: &BTreeSet<(String, u16)>, inbound: bool| -> Value {
        let (eps, ents, cidrs) =
            if inbound { ("fromEndpoints", "fromEntities", "fromCIDR") } else { ("toEndpoints", "toEntities", "toCIDR") };
        let mut r = Map::new();
        match p {
            Peer::Workload(w) => {
                let other = &ids[w.as_str()];
                let mut labels = other.labels.clone();
                if !other.namespace.is_empty() && other.namespace != me.namespace {
                    labels.insert("k8s:io.kubernetes.pod.namespace".into(), other.namespace.clone());
                }
                r.insert(eps.into(), json!([match_labels(&labels)]));
            }
            Peer::Host(_) => {
                r.insert(ents.into(), json!(["host"]));
            }
            Peer::Cidr(a) => {
                r.insert(cidrs.into(), json!([cidr(a)]));
            }
        }
        r.insert("toPorts".into(), ports(set));
        Value::Object(r)
    };
    let mut spec = Map::new();
    spec.insert("endpointSelector".into(), match_labels(&me.labels));
    // In Cilium an empty list leaves the direction unenforced; one empty
    // rule (`[{}]`) is its "deny all": what a direction with no observed
    // flow gets, as in the Kubernetes dialect.
    let list = |rules: Vec<Value>| if rules.is_empty() { json!([{}]) } else { Value::Array(rules) };
    spec.insert("ingress".into(), list(s.ingress.iter().map(|(p, set)| rule(p, set, true)).collect()));
    spec.insert("egress".into(), list(s.egress.iter().map(|(p, set)| rule(p, set, false)).collect()));
    json!({
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": metadata(me),
        "spec": Value::Object(spec),
    })
}

/// The documents as one YAML stream (`---` between documents), comments
/// above each. Comments carry names and digests a rootless user wrote:
/// every character a YAML reader could take for a line break (control
/// characters, U+0085, U+2028, U+2029) is escaped, so a comment can never
/// end early and add a document of its own.
pub fn to_yaml(docs: &[(Vec<String>, Value)]) -> Result<String, serde_norway::Error> {
    let mut out = String::new();
    for (comments, doc) in docs {
        out.push_str("---\n");
        for c in comments {
            out.push_str("# ");
            out.push_str(&yaml_comment(c));
            out.push('\n');
        }
        out.push_str(&serde_norway::to_string(doc)?);
    }
    Ok(out)
}

/// `c` safe inside one YAML comment line.
fn yaml_comment(c: &str) -> String {
    let mut out = String::with_capacity(c.len());
    for ch in printable(c).chars() {
        match ch {
            '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{{{:x}}}", ch as u32)),
            ch => out.push(ch),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::FlowCounters;

    #[test]
    fn a_comment_cannot_add_a_document() {
        let doc = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "a"}});
        for evil in
            ["sha256:aa\n---\nkind: Namespace", "x\rkind: Namespace", "x\u{85}kind: Namespace", "x\u{2028}kind: Namespace", "x\u{2029}---"]
        {
            let yaml = to_yaml(&[(vec![format!("lancet: observed flows of workload {evil}")], doc.clone())]).unwrap();
            let docs: Vec<Value> =
                serde_norway::Deserializer::from_str(&yaml).map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap()).collect();
            assert_eq!(docs, vec![doc.clone()], "{evil:?} gave:\n{yaml}");
            assert_eq!(yaml.lines().filter(|l| l.starts_with('#')).count(), 1, "{yaml}");
        }
    }

    fn end(kind: EndKind, id: &str, workload: &str) -> FlowEnd {
        FlowEnd { kind: kind.as_str().into(), id: id.into(), name: id.into(), workload: workload.into() }
    }

    fn row(src: FlowEnd, dst: FlowEnd, port: u16, proto: &str) -> FlowRow {
        FlowRow {
            src,
            dst,
            port,
            proto: proto.into(),
            counts: FlowCounters { connections: 2, ..Default::default() },
            verdict: "allowed".into(),
            ..Default::default()
        }
    }

    pub(crate) fn sample() -> (Vec<FlowRow>, Vec<FlowNode>) {
        let web = end(EndKind::Container, "w1", "sha256:aaaa");
        let db = end(EndKind::Container, "d1", "sha256:bbbb");
        let rows = vec![
            row(web.clone(), db.clone(), 5432, "tcp"),
            row(web.clone(), end(EndKind::External, "198.51.100.7", ""), 443, "tcp"),
            row(web.clone(), end(EndKind::Host, "10.88.0.1", ""), 53, "udp"),
            row(end(EndKind::External, "2001:db8::5", ""), web.clone(), 8080, "tcp"),
            row(web.clone(), end(EndKind::Others, "", ""), 0, "tcp"),
            FlowRow {
                counts: FlowCounters { refused: 3, ..Default::default() },
                ..row(db.clone(), end(EndKind::External, "192.0.2.1", ""), 25, "tcp")
            },
        ];
        let nodes = vec![
            FlowNode {
                id: "w1".into(),
                workload: "sha256:aaaa".into(),
                image: "registry.example/shop/web:2".into(),
                namespace: "shop".into(),
                labels: BTreeMap::from([
                    ("app".to_string(), "web".to_string()),
                    ("io.kubernetes.pod.name".to_string(), "web-5d8".to_string()),
                    ("note".to_string(), "not a label value!".to_string()),
                ]),
                ..Default::default()
            },
            FlowNode {
                id: "d1".into(),
                workload: "sha256:bbbb".into(),
                image: "localhost/postgres:16".into(),
                namespace: "data".into(),
                ..Default::default()
            },
        ];
        (rows, nodes)
    }

    #[test]
    fn kubernetes_policies_per_workload() {
        let (rows, nodes) = sample();
        let docs = policies(&rows, &nodes, Dialect::Kubernetes);
        assert_eq!(docs.len(), 2);
        let (comments, web) = &docs[0];
        assert_eq!(web["metadata"]["name"], "lancet-web-aaaa");
        assert_eq!(web["metadata"]["namespace"], "shop");
        assert_eq!(web["spec"]["podSelector"], json!({"matchLabels": {"app": "web"}}), "runtime and invalid labels left out");
        let egress = web["spec"]["egress"].as_array().unwrap();
        assert_eq!(egress.len(), 3);
        assert!(egress.contains(&json!({"to": [{"ipBlock": {"cidr": "198.51.100.7/32"}}], "ports": [{"protocol": "TCP", "port": 443}]})));
        assert!(egress.contains(&json!({"to": [{"ipBlock": {"cidr": "10.88.0.1/32"}}], "ports": [{"protocol": "UDP", "port": 53}]})));
        let to_db = json!({"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "postgres"}}, "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "data"}}}], "ports": [{"protocol": "TCP", "port": 5432}]});
        assert!(egress.contains(&to_db), "{egress:?}");
        assert_eq!(
            web["spec"]["ingress"],
            json!([{"from": [{"ipBlock": {"cidr": "2001:db8::5/128"}}], "ports": [{"protocol": "TCP", "port": 8080}]}])
        );
        assert!(comments.iter().any(|c| c.contains("2 connections to or from many peers")), "{comments:?}");
        let (comments, db) = &docs[1];
        assert!(comments.iter().any(|c| c.contains("app.kubernetes.io/name=postgres")));
        assert_eq!(db["spec"]["egress"], json!([]), "a refused flow is no rule");
        assert_eq!(db["spec"]["ingress"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn cilium_policies_per_workload() {
        let (rows, nodes) = sample();
        let docs = policies(&rows, &nodes, Dialect::Cilium);
        let web = &docs[0].1;
        assert_eq!(web["kind"], "CiliumNetworkPolicy");
        assert_eq!(web["spec"]["endpointSelector"], json!({"matchLabels": {"app": "web"}}));
        let egress = web["spec"]["egress"].as_array().unwrap();
        assert!(egress.contains(&json!({"toEntities": ["host"], "toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}]}]})));
        assert!(egress.contains(&json!({"toCIDR": ["198.51.100.7/32"], "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]})));
        assert!(egress.iter().any(|r| r["toEndpoints"][0]["matchLabels"]["k8s:io.kubernetes.pod.namespace"] == "data"));
        // The database received from the web workload but sent nothing:
        // egress denied with Cilium's empty rule.
        assert_eq!(docs[1].1["spec"]["egress"], json!([{}]));
        let yaml = to_yaml(&docs).unwrap();
        assert_eq!(yaml.matches("---\n").count(), 2);
        assert!(yaml.contains("# lancet: observed flows of workload sha256:aaaa"));
        for doc in yaml.split("---\n").skip(1) {
            let v: serde_json::Value = serde_norway::from_str(doc).unwrap();
            assert_eq!(v["apiVersion"], "cilium.io/v2");
        }
    }

    #[test]
    fn labels_and_names() {
        assert!(label_key_ok("app.kubernetes.io/name") && label_key_ok("app"));
        assert!(!label_key_ok("Bad/x") && !label_key_ok("x/") && !label_key_ok(""));
        assert!(label_value_ok("") && label_value_ok("a-b.c_d") && !label_value_ok("-a") && !label_value_ok("a b"));
        assert_eq!(dns_label("localhost/My_App:1"), "my-app");
        assert_eq!(dns_label("sha256:abc"), "sha256");
        assert_eq!(dns_label("::"), "workload");
    }
}
