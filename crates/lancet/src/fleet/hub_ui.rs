//! The fleet's dashboard, served by `lancet hub` at `/`: the nodes with
//! their last heartbeat and guarantees, the workloads across nodes with
//! their mode and where they run, the alerts of every node (filtered by
//! node and time), and the map across nodes. The agent's look and its
//! files (`/ui/static/`: the style, the script that draws the map with
//! cytoscape.js, embedded and pinned), nothing from elsewhere; every value
//! escaped (the nodes wrote them), complete as tables without JavaScript.

use super::hub::Hub;
use crate::api::html::{esc, html_response, short, table, time, Cell};
use crate::api::params::Params;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::fmt::Write;

/// Alerts shown at most.
const ALERTS: usize = 500;

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

fn pill(mode: &str) -> String {
    format!("<span class=\"pill mode-{m}\">{m}</span>", m = esc(mode))
}

/// The page around `body`; `graph`: load the map's script.
fn page(title: &str, body: &str, graph: bool) -> Response {
    let nav = if graph {
        "<nav><a href=\"#nodes-h\">Nodes</a><a href=\"#workloads-h\">Workloads</a><a href=\"#map-section\">Map</a><a href=\"#alerts-h\">Alerts</a></nav>"
    } else {
        ""
    };
    let scripts = if graph {
        format!(
            "<script src=\"/ui/static/cytoscape.min.js\" integrity=\"{}\" crossorigin=\"anonymous\"></script><script src=\"/ui/static/app.js\"></script>",
            env!("LANCET_CYTOSCAPE_SRI")
        )
    } else {
        String::new()
    };
    html_response(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>lancet hub · {}</title><link rel=\"stylesheet\" href=\"/ui/static/app.css\"></head><body>\
         <header><span class=\"brand\">lancet hub</span>{nav}</header><main>{body}</main><div id=\"flash\" role=\"status\"></div>{scripts}</body></html>\n",
        esc(title)
    ))
}

/// The sign-in form (the token, posted once; the hub answers with its
/// cookie), with `why` a request was refused.
pub(super) fn login_page(status: StatusCode, why: Option<&str>) -> Response {
    let mut body = String::from("<h1>Sign in to the fleet</h1>");
    if let Some(w) = why {
        let _ = write!(body, "<p id=\"refused\" class=\"fails\">{}</p>", esc(w));
    }
    body.push_str(
        "<form class=\"filter\" method=\"post\" action=\"/login\"><label>the hub's token (its --hub-token-file)\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"off\" size=\"66\"></label>\
         <button id=\"sign-in\">Sign in</button></form>",
    );
    (status, page("sign in", &body, false)).into_response()
}

fn nodes_table(nodes: &Value) -> String {
    let rows = nodes
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| {
                    let g = n["guarantees"].as_array().cloned().unwrap_or_default();
                    let failing: Vec<&str> = g.iter().filter(|x| x["holds"].as_bool() == Some(false)).map(|x| s(x, "name")).collect();
                    let guarantees = if g.is_empty() {
                        "<span class=\"muted\">not reported</span>".to_string()
                    } else if failing.is_empty() {
                        format!("<span class=\"holds\">all {} hold</span>", g.len())
                    } else {
                        format!("<span class=\"fails\">{} of {} do not hold:</span> {}", failing.len(), g.len(), esc(&failing.join(", ")))
                    };
                    let age = n["ageSeconds"].as_f64().unwrap_or(0.0);
                    (
                        format!(" data-node=\"{}\"", esc(s(n, "name"))),
                        vec![
                            Cell::text(s(n, "name")),
                            Cell::text(s(n, "cluster")),
                            Cell::text(&time(n["lastHeartbeatNs"].as_u64().unwrap_or(0))),
                            Cell::html(if age > 10.0 { format!("<span class=\"fails\">{age:.0} s</span>") } else { format!("{age:.0} s") })
                                .class("num"),
                            Cell::text(s(n, "version")),
                            Cell::html(guarantees),
                        ],
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    table("nodes", &["Node", "Cluster", "Last heartbeat (UTC)", "Age", "Version", "Guarantees"], rows, "no node has joined")
}

fn workloads_table(workloads: &Value) -> String {
    let rows = workloads
        .as_array()
        .map(|a| {
            a.iter()
                .map(|w| {
                    let on = w["nodes"].as_array().cloned().unwrap_or_default();
                    let running: Vec<String> = on
                        .iter()
                        .map(|n| {
                            let names: Vec<&str> =
                                n["names"].as_array().map(|x| x.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
                            format!(
                                "<span class=\"on-node\" data-node=\"{}\">{} {} ×{} <span class=\"muted\">{}</span></span>",
                                esc(s(n, "node")),
                                esc(s(n, "node")),
                                pill(s(n, "mode")),
                                n["containers"].as_u64().unwrap_or(0),
                                esc(&names.join(", "))
                            )
                        })
                        .collect();
                    let node_names: Vec<&str> = on.iter().map(|n| s(n, "node")).collect();
                    let observed: Vec<&str> =
                        w["observedBy"].as_array().map(|x| x.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
                    let mode = match w["mode"].as_str() {
                        Some(m) => format!("{} <span class=\"muted\">rev {}</span>", pill(m), w["modeRevision"].as_u64().unwrap_or(0)),
                        None if w["shared"].as_bool() == Some(true) => "<span class=\"muted\">each node its own</span>".into(),
                        None => "<span class=\"muted\">not shared</span>".into(),
                    };
                    (
                        format!(" data-workload=\"{}\" data-nodes=\"{}\"", esc(s(w, "workload")), esc(&node_names.join(" "))),
                        vec![
                            Cell::html(format!("<code title=\"{}\">{}</code>", esc(s(w, "workload")), esc(short(s(w, "workload"))))),
                            Cell::text(s(w, "image")),
                            Cell::html(mode).class("mode"),
                            Cell::html(running.join("<br>")).class("running"),
                            Cell::num(w["containers"].as_u64().unwrap_or(0)),
                            Cell::text(&observed.join(", ")),
                        ],
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    table(
        "workloads",
        &["Workload", "Image", "Fleet mode", "Running on (mode, containers)", "Containers", "Observed by"],
        rows,
        "no workload reported",
    )
}

/// One end of an edge, for people: `node / name (workload)`.
fn end_text(e: &Value) -> String {
    let name = s(e, "name");
    let w = short(s(e, "workload"));
    match e["node"].as_str() {
        Some(n) if !w.is_empty() => format!("{n} / {name} ({w})"),
        Some(n) => format!("{n} / {name}"),
        None => name.to_string(),
    }
}

fn edges_table(map: &Value) -> String {
    let rows = map["edges"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    let class = match s(e, "verdict") {
                        "refused" => "verdict-refused",
                        "unlisted" => "verdict-unlisted",
                        _ => "verdict-allowed",
                    };
                    let by: Vec<&str> =
                        e["reportedBy"].as_array().map(|x| x.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
                    (
                        format!(
                            " data-edge=\"{}\" data-source=\"{}\" data-target=\"{}\" data-source-node=\"{}\" data-target-node=\"{}\"",
                            esc(s(e, "id")),
                            esc(s(&e["src"], "name")),
                            esc(s(&e["dst"], "name")),
                            esc(s(&e["src"], "node")),
                            esc(s(&e["dst"], "node"))
                        ),
                        vec![
                            Cell::text(&end_text(&e["src"])),
                            Cell::text(&end_text(&e["dst"])),
                            Cell::text(&format!("{}/{}", e["port"], s(e, "proto"))),
                            Cell::text(s(e, "verdict")).class(class),
                            Cell::num(e["connections"].as_u64().unwrap_or(0)),
                            Cell::text(&time(e["lastNs"].as_u64().unwrap_or(0))),
                            Cell::text(&by.join(", ")),
                        ],
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    table(
        "edges",
        &["From (node / container)", "To", "Port", "Verdict", "Connections", "Last seen (UTC)", "Reported by"],
        rows,
        "no flow reported in the last hour",
    )
}

fn alerts_table(alerts: &[Value]) -> String {
    let rows = alerts
        .iter()
        .rev()
        .map(|a| {
            let f = &a["output_fields"];
            let prio = s(a, "priority");
            (
                format!(" data-node=\"{}\" data-rule=\"{}\"", esc(s(a, "node")), esc(s(a, "rule"))),
                vec![
                    Cell::text(&time(a["time_ns"].as_u64().unwrap_or(0))),
                    Cell::text(s(a, "node")),
                    Cell::html(format!("<span class=\"prio-{p}\">{p}</span>", p = esc(prio))),
                    Cell::text(s(a, "rule")),
                    Cell::text(s(f, "container.name")),
                    Cell::text(s(a, "output")),
                ],
            )
        })
        .collect();
    table("alerts", &["Time (UTC)", "Node", "Priority", "Rule", "Container", "Output"], rows, "no alert matches")
}

/// `GET /?node=…&since=…`: the whole dashboard; the alerts filtered.
pub(super) async fn dashboard(State(hub): State<Hub>, RawQuery(q): RawQuery) -> Response {
    let p = match Params::parse(q.as_deref(), &["node", "since"]) {
        Ok(p) => p,
        Err((c, m)) => return super::hub_http::error(c, &m),
    };
    let (node, since) = match (p.text("node"), p.since_ns(lancet_engine::event::now_ns())) {
        (Ok(n), Ok(s)) => (n.filter(|n| !n.is_empty()), s.unwrap_or(0)),
        (Err((c, m)), _) | (_, Err((c, m))) => return super::hub_http::error(c, &m),
    };
    let nodes = super::hub_http::list_nodes(&hub.js).await.unwrap_or_else(|e| {
        tracing::warn!("hub: nodes not read: {e:#}");
        Value::Array(Vec::new())
    });
    let view = hub.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let (workloads, map) = (view.workloads_json(), serde_json::to_value(view.map(super::hub_view::MAP_EDGES)).unwrap_or_default());
    let alerts = super::hub_http::select_alerts(&hub, since, node.as_deref(), ALERTS);
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>Fleet</h1><p class=\"meta\">{} nodes · {} workloads · {} flows in the last hour{} · lancet {}</p>",
        nodes.as_array().map_or(0, Vec::len),
        workloads.as_array().map_or(0, Vec::len),
        map["totalEdges"].as_u64().unwrap_or(0),
        if map["truncated"].as_bool() == Some(true) { " (the busiest shown)" } else { "" },
        env!("CARGO_PKG_VERSION")
    );
    let _ = write!(body, "<h2 id=\"nodes-h\">Nodes</h2>{}", nodes_table(&nodes));
    let _ = write!(body, "<h2 id=\"workloads-h\">Workloads</h2>{}", workloads_table(&workloads));
    body.push_str(
        "<h2 id=\"map-section\">Map across nodes</h2><p class=\"legend muted\"><span class=\"verdict-allowed\">━ allowed or learning</span>\
         <span class=\"verdict-unlisted\">━ not in the profile</span><span class=\"verdict-refused\">━ refused</span> · \
         each box is a node; click an edge for its counts</p>\
         <div class=\"layout\"><div id=\"map\" data-src=\"/v1/map\"></div><div id=\"edge-details\"><p class=\"muted\">Click an edge.</p></div></div>",
    );
    body.push_str(&edges_table(&map));
    let options: String = nodes
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| {
                    let name = s(n, "name");
                    let sel = if node.as_deref() == Some(name) { " selected" } else { "" };
                    format!("<option value=\"{v}\"{sel}>{v}</option>", v = esc(name))
                })
                .collect()
        })
        .unwrap_or_default();
    let _ = write!(
        body,
        "<h2 id=\"alerts-h\">Alerts</h2><form id=\"alert-filter\" class=\"filter\" method=\"get\" action=\"/\">\
         <label>node<select id=\"filter-node\" name=\"node\"><option value=\"\">every node</option>{options}</select></label>\
         <label>since<input name=\"since\" value=\"{}\" placeholder=\"1h\"></label><button id=\"filter-show\">Show</button></form>{}",
        esc(p.str("since").unwrap_or("")),
        alerts_table(&alerts)
    );
    page("fleet", &body, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What the nodes wrote is escaped, and the guarantees are summed up.
    #[test]
    fn node_written_values_are_escaped_and_guarantees_summed() {
        let nodes = json!([{"name": "a", "cluster": "c", "lastHeartbeatNs": 1, "ageSeconds": 30.0, "version": "<b>0.1</b>",
            "guarantees": [{"name": "exec <refused>", "holds": false}, {"name": "drift", "holds": true}]}]);
        let t = nodes_table(&nodes);
        assert!(t.contains("1 of 2 do not hold:</span> exec &lt;refused&gt;"), "{t}");
        assert!(t.contains("&lt;b&gt;0.1&lt;/b&gt;") && !t.contains("<b>0.1"), "{t}");
        assert!(t.contains("<span class=\"fails\">30 s</span>"), "an old heartbeat stands out: {t}");
        let w = json!([{"workload": "w\"><script>", "image": "<img>", "mode": null, "shared": false, "containers": 1,
            "nodes": [{"node": "a", "mode": "learn", "containers": 1, "names": ["<x>"]}], "observedBy": []}]);
        let t = workloads_table(&w);
        assert!(!t.contains("<script>") && !t.contains("<img>") && !t.contains("<x>") && t.contains("not shared"), "{t}");
    }
}
