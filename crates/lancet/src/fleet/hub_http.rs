//! `lancet hub`'s routes, and who may use them: every request needs the
//! hub's token, as the agent's TCP API needs its token for a change; the
//! hub shows what every node saw, so reads are guarded too. An API client
//! sends `Authorization: Bearer <token>`; a browser signs in once at
//! `/login` with the token and gets it back as an `HttpOnly`,
//! `SameSite=Strict` cookie. Open without it: `/healthz`, the sign-in page
//! and the dashboard's static files (the same for every hub).
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the dashboard ([`super::hub_ui`]) |
//! | `GET /v1/nodes` | every node's last heartbeat |
//! | `GET /v1/alerts?since=…&node=…&limit=…` | the newest alerts |
//! | `GET /v1/workloads` | workloads across nodes ([`super::hub_view`]) |
//! | `GET /v1/map?limit=…` | the map across nodes (the busiest edges) |

use super::hub::Hub;
use super::keys::{self, Heartbeat};
use crate::api::params::Params;
use anyhow::Result;
use async_nats::jetstream;
use axum::body::Bytes;
use axum::extract::{RawQuery, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::StreamExt;
use serde_json::{json, Value};

/// The dashboard's cookie.
pub(super) const COOKIE: &str = "lancet_hub";
/// Nodes listed at most.
const MAX_NODES: usize = 10_000;

pub(super) fn router(hub: Hub) -> Router {
    use crate::api::ui::{asset, APP_CSS, APP_JS, CYTOSCAPE};
    Router::new()
        .route("/", get(super::hub_ui::dashboard))
        .route("/login", get(|| async { super::hub_ui::login_page(StatusCode::OK, None) }).post(login))
        .route("/v1/nodes", get(nodes))
        .route("/v1/alerts", get(alerts))
        .route("/v1/workloads", get(workloads))
        .route("/v1/map", get(map))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/ui/static/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/ui/static/app.css", get(|| async { asset("text/css; charset=utf-8", APP_CSS) }))
        .route("/ui/static/cytoscape.min.js", get(|| async { asset("text/javascript; charset=utf-8", CYTOSCAPE) }))
        .layer(middleware::from_fn_with_state(hub.clone(), authorize))
        .with_state(hub)
}

/// The token a request presents: its bearer token, else the cookie's.
fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(h) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        return h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")).map(str::trim);
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

async fn authorize(State(hub): State<Hub>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path == "/healthz" || path == "/login" || path.starts_with("/ui/static/") {
        return next.run(req).await;
    }
    let (status, why) = match presented(req.headers()) {
        Some(t) if hub.token.matches(t) => return next.run(req).await,
        Some(_) => (StatusCode::FORBIDDEN, "permission denied: the token does not match the hub's"),
        None => (
            StatusCode::UNAUTHORIZED,
            "permission denied: the hub needs its token (`Authorization: Bearer <token>`, the token in the hub's --hub-token-file)",
        ),
    };
    if path.starts_with("/v1/") {
        return (status, Json(json!({"error": why}))).into_response();
    }
    super::hub_ui::login_page(status, Some(why))
}

/// `POST /login` (a form with `token`): the cookie, then the dashboard.
async fn login(State(hub): State<Hub>, body: Bytes) -> Response {
    let text = std::str::from_utf8(&body[..body.len().min(4096)]).unwrap_or("");
    let token = text.split('&').find_map(|kv| kv.strip_prefix("token=")).unwrap_or("").replace('+', " ");
    if !hub.token.matches(&token) {
        return super::hub_ui::login_page(StatusCode::FORBIDDEN, Some("that is not the hub's token"));
    }
    let cookie = format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200", hub.token.as_str());
    (StatusCode::SEE_OTHER, [(header::SET_COOKIE, cookie), (header::LOCATION, "/".to_string())]).into_response()
}

pub(super) fn error(status: u16, msg: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, Json(json!({"error": msg}))).into_response()
}

/// `GET /v1/nodes`: every node's last heartbeat, by name.
async fn nodes(State(hub): State<Hub>) -> Response {
    match list_nodes(&hub.js).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => error(503, &format!("the nodes bucket could not be read: {e:#}")),
    }
}

pub(super) async fn list_nodes(js: &jetstream::Context) -> Result<Value> {
    let kv = match js.get_key_value(keys::NODES_BUCKET).await {
        Ok(kv) => kv,
        // No node ever joined.
        Err(_) => return Ok(json!([])),
    };
    let now = lancet_engine::event::now_ns();
    // Heartbeats only: a node's other keys hold a dot.
    let mut names: Vec<String> =
        kv.keys().await?.filter_map(|k| async move { k.ok().filter(|k| !k.contains('.')) }).take(MAX_NODES).collect().await;
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let Some(bytes) = kv.get(&name).await? else { continue };
        let Some(h) = Heartbeat::parse(&bytes).filter(|h| h.node == name) else { continue };
        out.push(json!({
            "name": h.node,
            "cluster": h.cluster,
            "lastHeartbeat": lancet_engine::output::rfc3339_nanos(h.time_ns),
            "lastHeartbeatNs": h.time_ns,
            "ageSeconds": now.saturating_sub(h.time_ns) as f64 / 1e9,
            "version": h.version,
            "guarantees": h.guarantees,
        }));
    }
    Ok(Value::Array(out))
}

/// The newest `limit` alerts at or after `since` (of `node`, or every
/// node's), oldest first.
pub(super) fn select_alerts(hub: &Hub, since: u64, node: Option<&str>, limit: usize) -> Vec<Value> {
    let w = hub.window.lock().unwrap_or_else(|p| p.into_inner());
    let mut out: Vec<Value> =
        w.iter().rev().filter(|(t, n, _)| *t >= since && node.is_none_or(|x| x == n)).take(limit).map(|(_, _, v)| v.clone()).collect();
    out.reverse();
    out
}

/// `GET /v1/alerts?since=…|since_ns=…&node=…&limit=…`: the newest alerts
/// of every node (or of one), oldest first, each with its `node`.
async fn alerts(State(hub): State<Hub>, RawQuery(q): RawQuery) -> Response {
    let p = match Params::parse(q.as_deref(), &["since", "since_ns", "node", "limit"]) {
        Ok(p) => p,
        Err((s, m)) => return error(s, &m),
    };
    let (since, node, limit) = match (p.since_ns(lancet_engine::event::now_ns()), p.text("node"), p.limit("limit", 10_000)) {
        (Ok(s), Ok(n), Ok(l)) => (s.unwrap_or(0), n, l.unwrap_or(1000)),
        (Err((s, m)), _, _) | (_, Err((s, m)), _) | (_, _, Err((s, m))) => return error(s, &m),
    };
    Json(json!(select_alerts(&hub, since, node.as_deref(), limit))).into_response()
}

/// `GET /v1/workloads`: workloads across nodes, with where they run, in
/// which mode, and who shared observations of them.
async fn workloads(State(hub): State<Hub>, RawQuery(q): RawQuery) -> Response {
    if let Err((s, m)) = Params::parse(q.as_deref(), &[]) {
        return error(s, &m);
    }
    let view = hub.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Json(view.workloads_json()).into_response()
}

/// `GET /v1/map?limit=N`: every node's flows of the last hour as one
/// graph, the busiest `limit` edges (default 2 000, at most 100 000).
async fn map(State(hub): State<Hub>, RawQuery(q): RawQuery) -> Response {
    use super::hub_view::{MAP_EDGES, MAX_MAP_EDGES};
    let limit = match Params::parse(q.as_deref(), &["limit"]).and_then(|p| p.limit("limit", MAX_MAP_EDGES as u64)) {
        Ok(l) => l.unwrap_or(MAP_EDGES),
        Err((s, m)) => return error(s, &m),
    };
    let view = hub.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Json(view.map(limit)).into_response()
}
