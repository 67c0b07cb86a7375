//! The API's routes for the flow map, metrics and the dashboard's data:
//! `/v1/flows`, `/v1/map`, `/v1/map/export`, `/metrics`, `/v1/overview`,
//! `/v1/profiles/{w}/review`, `POST /v1/alerts/{id}/add-to-profile` and the
//! live alert feed `/v1/events` (server-sent events). Query parameters are
//! checked ([`Params`]): anything unknown or malformed is a 400 with the
//! reason. Maps and policies are rendered here, on the API's thread, from
//! the rows the event loop hands over.

use super::params::{Bad, Params};
use super::routes::{ask, call, error, now_ns, Ctx, C};
use super::Request;
use crate::map_cmd::{render, MapFormat, Rendering};
use axum::extract::{Extension, Path as UrlPath, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use lancet_engine::flows::netpol::Dialect;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// Live feeds open at once over TCP (anyone who reaches `--listen` may read)
/// and over the socket (root and the read group), at most: each channel has
/// its own, so that TCP readers holding every feed never lock the host's
/// operators out.
const MAX_TCP_FEEDS: usize = 24;
const MAX_UNIX_FEEDS: usize = 8;
/// Rows a map or an export reads at most.
const MAP_ROWS: usize = 200_000;

static TCP_FEEDS_OPEN: AtomicUsize = AtomicUsize::new(0);
static UNIX_FEEDS_OPEN: AtomicUsize = AtomicUsize::new(0);

fn reply(r: Result<Response, Bad>) -> Response {
    r.unwrap_or_else(|(c, m)| error(c, &m))
}

/// The default window of maps: the last hour.
fn since_or_hour(p: &Params) -> Result<u64, Bad> {
    Ok(p.since_ns(now_ns())?.unwrap_or_else(|| now_ns().saturating_sub(3_600_000_000_000)))
}

async fn flows(ctx: Ctx, caller: super::Caller, q: Option<String>) -> Response {
    reply(
        async {
            let p = Params::parse(q.as_deref(), &["since", "since_ns", "container", "limit"])?;
            let req = Request::Flows {
                since_ns: since_or_hour(&p)?,
                container: p.text("container")?,
                limit: p.limit("limit", MAP_ROWS as u64)?.unwrap_or(10_000),
            };
            Ok(ask(&ctx, caller, req).await)
        }
        .await,
    )
}

/// `/v1/map?format=json|table|dot` and `/v1/map/export?format=networkpolicy|cilium`.
async fn map(ctx: Ctx, caller: super::Caller, q: Option<String>, export: bool) -> Response {
    reply(
        async {
            let p = Params::parse(q.as_deref(), &["since", "since_ns", "container", "format"])?;
            let what = if export {
                match p.choice("format", &["networkpolicy", "cilium"])? {
                    Some("cilium") => Rendering::Export(Dialect::Cilium),
                    _ => Rendering::Export(Dialect::Kubernetes),
                }
            } else {
                Rendering::Map(match p.choice("format", &["json", "table", "dot"])? {
                    Some("table") => MapFormat::Table,
                    Some("dot") => MapFormat::Dot,
                    _ => MapFormat::Json,
                })
            };
            let container = p.text("container")?;
            let v =
                call(&ctx, caller, Request::Flows { since_ns: since_or_hour(&p)?, container: container.clone(), limit: MAP_ROWS }).await?;
            let (ctype, body) = render(&v, container.as_deref(), what).map_err(|e| (500, e))?;
            Ok(([(header::CONTENT_TYPE, ctype)], body).into_response())
        }
        .await,
    )
}

async fn metrics(ctx: Ctx, caller: super::Caller, q: Option<String>) -> Response {
    reply(
        async {
            Params::parse(q.as_deref(), &[])?;
            let v = call(&ctx, caller, Request::Metrics).await?;
            let text = v.as_str().unwrap_or_default().to_string();
            Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response())
        }
        .await,
    )
}

/// The loop's overview plus the doctor's report (null until it ran).
pub(super) async fn overview(ctx: &Ctx, caller: super::Caller) -> Result<serde_json::Value, Bad> {
    let mut v = call(ctx, caller, Request::Overview).await?;
    v["doctor"] = ctx.doctor.get().cloned().unwrap_or(serde_json::Value::Null);
    Ok(v)
}

/// One open live feed; counted while it lasts.
struct FeedSlot(&'static AtomicUsize);

impl FeedSlot {
    /// One of `max` feeds counted by `open`, if one is free.
    fn take(open: &'static AtomicUsize, max: usize) -> Option<FeedSlot> {
        if open.fetch_add(1, Ordering::Relaxed) >= max {
            open.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(FeedSlot(open))
    }
}

impl Drop for FeedSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `GET /v1/events`: every alert the agent writes from now on, as an
/// `alert` event whose data is the alert's JSON (with its store `id`); a
/// `lagged` event says how many a slow reader missed. A comment every 15 s
/// keeps proxies from closing it.
async fn events(ctx: Ctx, caller: super::Caller, q: Option<String>) -> Response {
    if let Err((c, m)) = Params::parse(q.as_deref(), &[]) {
        return error(c, &m);
    }
    let (open, max) = match caller.channel {
        super::Channel::Tcp => (&TCP_FEEDS_OPEN, MAX_TCP_FEEDS),
        super::Channel::Unix => (&UNIX_FEEDS_OPEN, MAX_UNIX_FEEDS),
    };
    let Some(slot) = FeedSlot::take(open, max) else {
        return error(503, &format!("{max} live feeds are open already over {}", caller.channel));
    };
    let rx = ctx.live.subscribe();
    let stream = futures_util::stream::unfold((rx, slot), |(mut rx, slot)| async move {
        let ev = match rx.recv().await {
            Ok(msg) => Event::default().event("alert").data(&*msg),
            Err(RecvError::Lagged(n)) => Event::default().event("lagged").data(n.to_string()),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok::<_, std::convert::Infallible>(ev), (rx, slot)))
    });
    // The first event tells the page the feed is open.
    let hello = futures_util::stream::once(async { Ok(Event::default().event("open").data("lancet")) });
    use futures_util::StreamExt;
    Sse::new(hello.chain(stream)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

pub(super) fn routes() -> Router<Ctx> {
    Router::new()
        .route("/v1/flows", get(|State(c): State<Ctx>, Extension(k): C, RawQuery(q): RawQuery| flows(c, k, q)))
        .route("/v1/map", get(|State(c): State<Ctx>, Extension(k): C, RawQuery(q): RawQuery| map(c, k, q, false)))
        .route("/v1/map/export", get(|State(c): State<Ctx>, Extension(k): C, RawQuery(q): RawQuery| map(c, k, q, true)))
        .route("/metrics", get(|State(c): State<Ctx>, Extension(k): C, RawQuery(q): RawQuery| metrics(c, k, q)))
        .route("/v1/events", get(|State(c): State<Ctx>, Extension(k): C, RawQuery(q): RawQuery| events(c, k, q)))
        .route(
            "/v1/overview",
            get(|State(c): State<Ctx>, Extension(k): C, RawQuery(q): RawQuery| async move {
                reply(
                    async {
                        Params::parse(q.as_deref(), &[])?;
                        Ok((StatusCode::OK, axum::Json(overview(&c, k).await?)).into_response())
                    }
                    .await,
                )
            }),
        )
        .route(
            "/v1/profiles/{workload}/review",
            get(|State(c): State<Ctx>, Extension(k): C, UrlPath(w): UrlPath<String>| async move {
                ask(&c, k, Request::Review { workload: w }).await
            }),
        )
        .route(
            "/v1/alerts/{id}/add-to-profile",
            post(|State(c): State<Ctx>, Extension(k): C, UrlPath(id): UrlPath<String>| async move {
                match id.parse::<u64>() {
                    Ok(alert) => ask(&c, k, Request::AddToProfile { alert }).await,
                    Err(_) => error(400, &format!("alert id: expected a whole number, got {id:?}")),
                }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feeds_are_counted_per_channel_and_given_back() {
        static OPEN: AtomicUsize = AtomicUsize::new(0);
        let a = FeedSlot::take(&OPEN, 2).unwrap();
        let _b = FeedSlot::take(&OPEN, 2).unwrap();
        assert!(FeedSlot::take(&OPEN, 2).is_none(), "full");
        assert_eq!(OPEN.load(Ordering::Relaxed), 2, "a refused take gives its count back");
        drop(a);
        assert!(FeedSlot::take(&OPEN, 2).is_some(), "a closed feed frees its slot");
        // The socket's feeds are a pool of their own.
        assert!(FeedSlot::take(&UNIX_FEEDS_OPEN, MAX_UNIX_FEEDS).is_some());
    }
}
