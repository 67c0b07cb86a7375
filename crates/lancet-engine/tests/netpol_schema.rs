//! `NetworkPolicy` documents written from flows validate against the
//! upstream Kubernetes JSON schema shipped in `schemas/kubernetes/`
//! (networking.k8s.io/v1, Kubernetes 1.37, strict: no unknown field), for
//! every kind of peer lancet writes; and the validator does catch a
//! broken document, so the check can fail.

use lancet_engine::flows::netpol::{policies, to_yaml, Dialect};
use lancet_engine::flows::{EndKind, FlowCounters, FlowEnd, FlowNode, FlowRow};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn schemas() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas/kubernetes")
}

fn validator() -> jsonschema::Validator {
    let read = |f: &str| -> Value { serde_json::from_str(&std::fs::read_to_string(schemas().join(f)).unwrap()).unwrap() };
    let defs = jsonschema::Resource::from_contents(read("_definitions.json")).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .with_resource("https://kubernetes.io/api/_definitions.json", defs)
        .build(&read("networkpolicy-networking-v1.json"))
        .expect("compile the NetworkPolicy schema")
}

fn end(kind: EndKind, id: &str, workload: &str) -> FlowEnd {
    FlowEnd { kind: kind.as_str().into(), id: id.into(), name: format!("{id}-name"), workload: workload.into() }
}

fn row(src: FlowEnd, dst: FlowEnd, port: u16, proto: &str) -> FlowRow {
    FlowRow {
        src,
        dst,
        port,
        proto: proto.into(),
        counts: FlowCounters { connections: 1, ..Default::default() },
        verdict: "allowed".into(),
        ..Default::default()
    }
}

fn sample() -> (Vec<FlowRow>, Vec<FlowNode>) {
    let web = end(EndKind::Container, "c1", "sha256:1111");
    let api = end(EndKind::Container, "c2", "sha256:2222");
    let db = end(EndKind::Container, "c3", "sha256:3333");
    let rows = vec![
        row(web.clone(), api.clone(), 8080, "tcp"),
        row(api.clone(), db.clone(), 5432, "tcp"),
        row(api.clone(), end(EndKind::External, "203.0.113.4", ""), 443, "tcp"),
        row(api.clone(), end(EndKind::Host, "10.88.0.1", ""), 53, "udp"),
        row(end(EndKind::External, "2001:db8::1", ""), web.clone(), 443, "tcp"),
        row(end(EndKind::Host, "10.88.0.1", ""), web.clone(), 80, "tcp"),
        row(web.clone(), end(EndKind::Others, "", ""), 0, "tcp"),
        row(db.clone(), db.clone(), 5432, "tcp"),
    ];
    let node = |id: &str, w: &str, image: &str, ns: &str, labels: &[(&str, &str)]| FlowNode {
        id: id.into(),
        name: id.into(),
        workload: w.into(),
        image: image.into(),
        namespace: ns.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        last_ns: 1,
    };
    let nodes = vec![
        node(
            "c1",
            "sha256:1111",
            "localhost/shop-web:3",
            "shop",
            &[("app", "web"), ("tier", "front"), ("io.kubernetes.pod.name", "web-1")],
        ),
        node("c2", "sha256:2222", "localhost/api:1", "shop", &[("app.kubernetes.io/name", "api")]),
        node("c3", "sha256:3333", "docker.io/library/postgres:16", "", &[("maintainer", "someone <x@y>")]),
    ];
    (rows, nodes)
}

#[test]
fn every_document_validates_against_the_upstream_schema() {
    let v = validator();
    let (rows, nodes) = sample();
    let docs = policies(&rows, &nodes, Dialect::Kubernetes);
    assert_eq!(docs.len(), 3);
    // Through YAML, as `lancet map --export networkpolicy` prints it.
    let yaml = to_yaml(&docs).unwrap();
    let parsed: Vec<Value> = yaml.split("---\n").skip(1).map(|d| serde_norway::from_str(d).unwrap()).collect();
    assert_eq!(parsed.len(), 3);
    for doc in &parsed {
        let errors: Vec<String> = v.iter_errors(doc).map(|e| format!("{e} at {}", e.instance_path)).collect();
        assert!(errors.is_empty(), "{}:\n{}", doc["metadata"]["name"], errors.join("\n"));
    }
}

#[test]
fn the_schema_check_catches_broken_documents() {
    let v = validator();
    let (rows, nodes) = sample();
    let mut doc = policies(&rows, &nodes, Dialect::Kubernetes).remove(0).1;
    assert!(v.is_valid(&doc));
    doc["spec"]["ingress"][0]["ports"][0]["protocol"] = json!(6);
    assert!(!v.is_valid(&doc), "a numeric protocol is refused");
    let mut doc2 = policies(&rows, &nodes, Dialect::Kubernetes).remove(0).1;
    doc2["spec"]["egress"][0]["to"][0]["ipBlok"] = json!({"cidr": "1.2.3.4/32"});
    assert!(!v.is_valid(&doc2), "an unknown field is refused (strict schema)");
    let mut doc3 = policies(&rows, &nodes, Dialect::Kubernetes).remove(0).1;
    doc3["kind"] = json!("NetworkPolicies");
    assert!(!v.is_valid(&doc3));
}
