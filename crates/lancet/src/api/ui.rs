//! The dashboard: pages rendered by the agent, complete as HTML tables
//! (so a browser without JavaScript, or `curl`, gets everything there is
//! to read), enhanced by `/ui/static/app.js` with the live alert feed, the
//! graph of the map (cytoscape.js, embedded and pinned) and the buttons
//! that change things. Reading needs nothing beyond reaching the API;
//! changes go to the same API routes as the CLI's and need what they need
//! (root on the control socket, the bearer token over TCP).
//!
//! Pages: `/ui/` (host guarantees, workloads, live alerts), `/ui/map`,
//! `/ui/alerts`, `/ui/workloads/{workload}` (profile review).

use super::html::{esc, page, seg, short, table, time, Cell, Tab};
use super::params::{Bad, Params};
use super::routes::{call, error, now_ns, Ctx, C};
use super::Request;
use axum::extract::{Extension, Path as UrlPath, RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use lancet_engine::flows::graph::{bytes, Graph};
use lancet_engine::flows::{FlowNode, FlowRow};
use serde_json::Value;
use std::fmt::Write;

pub(crate) const APP_JS: &str = include_str!("../../assets/app.js");
pub(crate) const APP_CSS: &str = include_str!("../../assets/app.css");
pub(crate) const CYTOSCAPE: &str = include_str!("../../assets/cytoscape-3.35.0.min.js");

fn reply(r: Result<Response, Bad>) -> Response {
    r.unwrap_or_else(|(c, m)| error(c, &m))
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

fn mode_pill(mode: &str) -> String {
    format!("<span class=\"pill mode-{m}\">{m}</span>", m = esc(mode))
}

/// Buttons to move a workload to the other modes (JavaScript only).
fn mode_buttons(workload: &str, mode: &str) -> String {
    ["learn", "monitor", "protect"]
        .iter()
        .filter(|m| **m != mode)
        .map(|m| {
            let verb = if (mode, *m) == ("protect", "monitor") || *m == "learn" { "demote to" } else { "promote to" };
            format!("<button type=\"button\" class=\"js-only\" data-workload=\"{}\" data-mode=\"{m}\">{verb} {m}</button> ", esc(workload))
        })
        .collect()
}

fn alert_rows(alerts: &[Value]) -> Vec<(String, Vec<Cell>)> {
    alerts
        .iter()
        .map(|a| {
            let f = &a["output_fields"];
            let add = match (f.get("lancet.deviation").filter(|d| !d.is_null()), a["id"].as_u64()) {
                (Some(_), Some(id)) => format!("<button type=\"button\" class=\"js-only\" data-alert=\"{id}\">add to profile</button>"),
                _ => String::new(),
            };
            let prio = s(a, "priority");
            let attrs =
                format!(" data-rule=\"{}\" data-container=\"{}\"", esc(s(a, "rule")), esc(f["container.name"].as_str().unwrap_or("")));
            let cells = vec![
                Cell::text(&s(a, "time").replace('T', " ").chars().take(19).collect::<String>()),
                Cell::html(format!("<span class=\"prio-{}\">{}</span>", esc(prio), esc(prio))),
                Cell::text(f["container.name"].as_str().unwrap_or("")),
                Cell::text(s(a, "rule")),
                Cell::text(f["lancet.action"].as_str().unwrap_or("")),
                Cell::text(s(a, "output")),
                Cell::html(add),
            ];
            (attrs, cells)
        })
        .collect()
}

const ALERT_HEAD: [&str; 7] = ["Time (UTC)", "Priority", "Container", "Rule", "Action", "What", ""];

fn guarantees(doctor: &Value) -> String {
    let Some(list) = doctor["guarantees"].as_array() else {
        return "<p class=\"muted\" id=\"guarantees-pending\">The host's checks (<code>lancet doctor</code>) are still running; reload in a moment.</p>".into();
    };
    let rows = list
        .iter()
        .map(|g| {
            let holds = g["holds"].as_bool() == Some(true);
            (
                String::new(),
                vec![
                    Cell::text(s(g, "name")),
                    Cell::text(s(g, "area")),
                    Cell::html(if holds {
                        "<span class=\"holds\">holds</span>".into()
                    } else {
                        "<span class=\"fails\">does not hold</span>".into()
                    }),
                    Cell::text(s(g, "detail")),
                ],
            )
        })
        .collect();
    let mut o = table("guarantees", &["Guarantee", "Area", "", "By / why not"], rows, "none reported");
    let problems: Vec<&str> = doctor["problems"].as_array().map(|p| p.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    if !problems.is_empty() {
        o.push_str("<ul>");
        for p in problems {
            let _ = write!(o, "<li>{}</li>", esc(p));
        }
        o.push_str("</ul>");
    }
    let _ = write!(o, "<p class=\"meta\">Kernel {}.</p>", esc(s(doctor, "kernel")));
    o
}

async fn overview_page(ctx: Ctx, caller: super::Caller, q: Option<String>) -> Result<Response, Bad> {
    Params::parse(q.as_deref(), &[])?;
    let o = super::views::overview(&ctx, caller).await?;
    let alerts = call(&ctx, caller, Request::Alerts { since_ns: None, container: None, limit: 20 }).await?;
    let alerts = alerts.as_array().cloned().unwrap_or_default();
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>{}</h1><p class=\"meta\">lancet {} · default mode {} · {} live containers · {} flows tracked this hour</p>",
        esc(s(&o, "hostname")),
        esc(s(&o, "version")),
        mode_pill(s(&o, "defaultMode")),
        o["containers"].as_u64().unwrap_or(0),
        o["flowsTracked"].as_u64().unwrap_or(0),
    );
    body.push_str("<h2>Host guarantees</h2>");
    body.push_str(&guarantees(&o["doctor"]));
    let _ = write!(body, "<h2>Workloads</h2><p class=\"meta\">Alerts and drift over the last {} hours.</p>", o["alertWindowHours"]);
    let rows = o["workloads"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .map(|w| {
                    let key = s(w, "workload");
                    let names: Vec<String> =
                        w["containers"].as_array().map(|c| c.iter().map(|c| esc(s(c, "name"))).collect()).unwrap_or_default();
                    let drift = w["drift"].as_u64().unwrap_or(0);
                    let drift_cell = if drift > 0 {
                        Cell::html(format!("<span class=\"fails\">{drift} drift</span>"))
                    } else if w["baseline"].as_bool() == Some(true) {
                        Cell::html("<span class=\"holds\">none</span>".into())
                    } else {
                        Cell::html("none <span class=\"muted\">(no image baseline)</span>".into())
                    };
                    let mode = s(w, "mode");
                    (
                        format!(" data-workload=\"{}\"", esc(key)),
                        vec![
                            Cell::html(format!("<a href=\"/ui/workloads/{}\">{}</a>", seg(key), esc(short(key)))),
                            Cell::text(s(w, "image")),
                            Cell::html(mode_pill(mode)).class("mode"),
                            Cell::html(names.join(", ")),
                            Cell::num(w["entries"].as_u64().unwrap_or(0)),
                            Cell::num(w["alerts"].as_u64().unwrap_or(0)),
                            drift_cell,
                            Cell::text(&time(w["lastAlertNs"].as_u64().unwrap_or(0))),
                            Cell::html(mode_buttons(key, mode)),
                        ],
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    body.push_str(&table(
        "workloads",
        &["Workload", "Image", "Mode", "Containers", "Profile entries", "Alerts", "Drift", "Last alert (UTC)", ""],
        rows,
        "no workload seen yet",
    ));
    body.push_str("<h2>Alerts <span id=\"live-state\" class=\"muted js-only\">connecting…</span></h2>");
    body.push_str(&table("live", &ALERT_HEAD, alert_rows(&alerts), "no alert yet"));
    Ok(page("overview", Tab::Overview, &body, false))
}

async fn alerts_page(ctx: Ctx, caller: super::Caller, q: Option<String>) -> Result<Response, Bad> {
    let p = Params::parse(q.as_deref(), &["since", "container"])?;
    let container = p.text("container")?;
    let since_ns = p.since_ns(now_ns())?;
    let alerts = call(&ctx, caller, Request::Alerts { since_ns, container: container.clone(), limit: 500 }).await?;
    let alerts = alerts.as_array().cloned().unwrap_or_default();
    let mut body = String::from("<h1>Alerts</h1>");
    let _ = write!(
        body,
        "<form class=\"filter\" method=\"get\" action=\"/ui/alerts\"><label>since<input name=\"since\" value=\"{}\" placeholder=\"1h\"></label>\
         <label>container<input name=\"container\" value=\"{}\"></label><button>Show</button></form>",
        esc(p.str("since").unwrap_or("")),
        esc(container.as_deref().unwrap_or("")),
    );
    body.push_str(&table("alerts", &ALERT_HEAD, alert_rows(&alerts), "no alert matches"));
    Ok(page("alerts", Tab::Alerts, &body, false))
}

async fn map_page(ctx: Ctx, caller: super::Caller, q: Option<String>) -> Result<Response, Bad> {
    let p = Params::parse(q.as_deref(), &["since", "container"])?;
    let container = p.text("container")?;
    let since = p.str("since").unwrap_or("1h").to_string();
    let since_ns = p.since_ns(now_ns())?.unwrap_or_else(|| now_ns().saturating_sub(3_600_000_000_000));
    let v = call(&ctx, caller, Request::Flows { since_ns, container: container.clone(), limit: 200_000 }).await?;
    let rows: Vec<FlowRow> = serde_json::from_value(v["rows"].clone()).map_err(|e| (500, e.to_string()))?;
    let nodes: Vec<FlowNode> = serde_json::from_value(v["nodes"].clone()).map_err(|e| (500, e.to_string()))?;
    let g = Graph::build(&rows, &nodes, container.as_deref());
    let labels = g.labels();
    let label = |id: &str| labels.get(id).copied().unwrap_or(id).to_string();
    let mut src = format!("/v1/map?format=json&since={}", seg(&since));
    if let Some(c) = &container {
        let _ = write!(src, "&container={}", seg(c));
    }
    let mut body = String::from("<h1>Who talks to whom</h1>");
    let _ = write!(
        body,
        "<form class=\"filter\" method=\"get\" action=\"/ui/map\"><label>since<input name=\"since\" value=\"{}\"></label>\
         <label>container<input name=\"container\" value=\"{}\"></label><button>Show</button></form>\
         <p class=\"legend muted\"><span class=\"verdict-allowed\">━ allowed or learning</span><span class=\"verdict-unlisted\">━ not in the profile</span>\
         <span class=\"verdict-refused\">━ refused</span> · click an edge for its connections and what decided it</p>\
         <div class=\"layout\"><div id=\"map\" data-src=\"{}\"></div><div id=\"edge-details\"><p class=\"muted\">Click an edge.</p></div></div>",
        esc(&since),
        esc(container.as_deref().unwrap_or("")),
        esc(&src),
    );
    let mut edges: Vec<_> = g.edges.iter().collect();
    edges.sort_by(|a, b| b.counts.connections.cmp(&a.counts.connections).then(a.id.cmp(&b.id)));
    let rows = edges
        .iter()
        .map(|e| {
            let class = match e.verdict.as_str() {
                "refused" => "verdict-refused",
                "unlisted" => "verdict-unlisted",
                "allowed" => "verdict-allowed",
                _ => "verdict-learning",
            };
            (
                format!(
                    " data-edge=\"{}\" data-source=\"{}\" data-target=\"{}\"",
                    esc(&e.id),
                    esc(&label(&e.source)),
                    esc(&label(&e.target))
                ),
                vec![
                    Cell::text(&label(&e.source)),
                    Cell::text(&label(&e.target)),
                    Cell::text(&format!("{}/{}", e.port, e.proto)),
                    Cell::text(&e.verdict).class(class),
                    Cell::num(e.counts.connections),
                    Cell::text(&format!("{} / {}", e.counts.failed, e.counts.refused)),
                    Cell::text(&format!("{} / {}", bytes(e.counts.bytes_out), bytes(e.counts.bytes_in))),
                    Cell::text(&time(e.counts.last_ns)),
                    Cell::text(&e.rule),
                ],
            )
        })
        .collect();
    body.push_str("<h2>Flows</h2>");
    body.push_str(&table(
        "edges",
        &["From", "To", "Port", "Verdict", "Connections", "Failed / refused", "Bytes out / in", "Last seen (UTC)", "Decided by"],
        rows,
        "no flow in this window",
    ));
    Ok(page("map", Tab::Map, &body, true))
}

fn seen_cells(e: &Value) -> [Cell; 3] {
    [
        Cell::text(&time(e["firstSeen"].as_u64().unwrap_or(0))),
        Cell::text(&time(e["lastSeen"].as_u64().unwrap_or(0))),
        Cell::num(e["count"].as_u64().unwrap_or(0)),
    ]
}

fn section(title: &str, id: &str, entries: &Value, first: &[&str], cells: impl Fn(&Value) -> Vec<Cell>) -> String {
    let mut head: Vec<&str> = first.to_vec();
    head.extend(["First seen (UTC)", "Last seen (UTC)", "Count"]);
    let rows = entries
        .as_array()
        .map(|list| {
            list.iter()
                .map(|e| {
                    let mut c = cells(e);
                    c.extend(seen_cells(e));
                    (String::new(), c)
                })
                .collect()
        })
        .unwrap_or_default();
    format!("<h2>{}</h2>{}", esc(title), table(id, &head, rows, "none"))
}

async fn review_page(ctx: Ctx, caller: super::Caller, workload: String, q: Option<String>) -> Result<Response, Bad> {
    Params::parse(q.as_deref(), &[])?;
    let r = call(&ctx, caller, Request::Review { workload }).await?;
    let key = s(&r, "workload");
    let mode = s(&r, "mode");
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>{}</h1><p class=\"meta\">workload <code>{}</code> · <span id=\"mode\">{}</span> since {} · learning since {}, last new entry {}</p><p>{}</p>",
        esc(s(&r, "image")),
        esc(key),
        mode_pill(mode),
        esc(&time(r["modeSince"].as_u64().unwrap_or(0))),
        esc(&time(r["learningStarted"].as_u64().unwrap_or(0))),
        esc(&time(r["lastNew"].as_u64().unwrap_or(0))),
        mode_buttons(key, mode),
    );
    if let Some(nr) = r["notReady"].as_array().filter(|n| !n.is_empty()) {
        body.push_str("<p>Not ready for protect mode:</p><ul>");
        for n in nr {
            let _ = write!(body, "<li>{}</li>", esc(n.as_str().unwrap_or("")));
        }
        body.push_str("</ul>");
    }
    body.push_str("<h2>Against the image's baseline</h2>");
    match r["baselineDiff"].as_object() {
        None => body
            .push_str("<p class=\"muted\">No baseline is known for this image (<code>lancet scan --baselines-dir</code> makes one).</p>"),
        Some(d) => {
            let added: Vec<String> = d["notInImage"]
                .as_array()
                .map(|a| a.iter().map(|p| format!("<code>{}</code>", esc(p.as_str().unwrap_or("")))).collect())
                .unwrap_or_default();
            let _ = write!(
                body,
                "<p>Image <code>{}</code>: {} executables, {} never run.</p><p id=\"not-in-image\">Run but not in the image: {}</p>",
                esc(short(d["imageDigest"].as_str().unwrap_or(""))),
                d["imageExecutables"],
                d["neverRun"],
                if added.is_empty() {
                    "<span class=\"holds\">none</span>".to_string()
                } else {
                    format!("<span class=\"fails\">{}</span>", added.join(", "))
                },
            );
        }
    }
    body.push_str(&section("Executables", "executables", &r["executables"], &["Path", "Parents", "Names", "In image"], |e| {
        let list = |k: &str| e[k].as_array().map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default();
        let in_image = match e["inImage"].as_bool() {
            Some(true) => "yes",
            Some(false) => "no",
            None => "",
        };
        vec![
            Cell::html(format!("<code>{}</code>", esc(s(e, "path")))),
            Cell::text(&list("parents")),
            Cell::text(&list("names")),
            Cell::text(in_image),
        ]
    }));
    body.push_str(&section("Listening", "listening", &r["listening"], &["Port"], |e| {
        vec![Cell::text(&format!("{}/{}", e["port"], s(e, "protocol")))]
    }));
    for (title, id, k) in [("Outbound", "outbound", "outbound"), ("Inbound", "inbound", "inbound")] {
        body.push_str(&section(title, id, &r[k], &["Peer", "Port"], |e| {
            vec![Cell::text(s(e, "peer")), Cell::text(&format!("{}/{}", e["port"], s(e, "protocol")))]
        }));
    }
    body.push_str(&section("Written directories", "written", &r["writtenDirs"], &["Directory"], |e| {
        vec![Cell::html(format!("<code>{}</code>", esc(s(e, "path"))))]
    }));
    body.push_str(&section("Sensitive reads", "sensitive", &r["sensitiveReads"], &["Path"], |e| {
        vec![Cell::html(format!("<code>{}</code>", esc(s(e, "path"))))]
    }));
    Ok(page(&format!("workload {}", short(key)), Tab::Overview, &body, false))
}

pub(crate) fn asset(ctype: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, ctype), (header::CACHE_CONTROL, "public, max-age=3600"), (header::X_CONTENT_TYPE_OPTIONS, "nosniff")], body)
        .into_response()
}

pub(super) fn routes() -> Router<Ctx> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route(
            "/ui/",
            get(|State(c): State<Ctx>, Extension(k): C, RawQuery(q): RawQuery| async move { reply(overview_page(c, k, q).await) }),
        )
        .route(
            "/ui/alerts",
            get(|State(c): State<Ctx>, Extension(k): C, RawQuery(q): RawQuery| async move { reply(alerts_page(c, k, q).await) }),
        )
        .route("/ui/map", get(|State(c): State<Ctx>, Extension(k): C, RawQuery(q): RawQuery| async move { reply(map_page(c, k, q).await) }))
        .route(
            "/ui/workloads/{workload}",
            get(|State(c): State<Ctx>, Extension(k): C, UrlPath(w): UrlPath<String>, RawQuery(q): RawQuery| async move {
                reply(review_page(c, k, w, q).await)
            }),
        )
        .route("/ui/static/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/ui/static/app.css", get(|| async { asset("text/css; charset=utf-8", APP_CSS) }))
        .route("/ui/static/cytoscape.min.js", get(|| async { asset("text/javascript; charset=utf-8", CYTOSCAPE) }))
}
