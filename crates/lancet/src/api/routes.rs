//! The API's routes. Every request arrives with its [`Caller`] (put there by
//! the listener's guard, see `server.rs`) and is handed to the event loop;
//! the OCI hook's claim is checked here first.

use super::access::{self, Refusal};
use super::hook_identity::{HookClaim, Verifier};
use super::params::Params;
use super::reads::{Reads, MAX_ROWS};
use super::{Call, Caller, Envelope, Request};
use axum::extract::{Extension, Path as UrlPath, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Refused changes recorded in the audit log: a burst of this many, then
/// one per [`REFUSAL_EVERY`] (the rest only logged), so that nobody can
/// flood the store by being refused.
const REFUSAL_BURST: f64 = 20.0;
const REFUSAL_EVERY: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub(super) struct Ctx {
    pub(super) tx: SyncSender<Envelope>,
    /// The OCI hook's own queue, answered first.
    hook_tx: SyncSender<Envelope>,
    /// Reads answered off the loop.
    reads: Arc<Reads>,
    pub(super) verifier: Arc<Verifier>,
    refusals: Arc<Mutex<(f64, Instant)>>,
    /// The live alert feed.
    pub(super) live: tokio::sync::broadcast::Sender<Arc<str>>,
    /// `lancet doctor`'s report, once it has run (at the agent's start).
    pub(super) doctor: Arc<std::sync::OnceLock<serde_json::Value>>,
    heartbeat: Arc<std::sync::atomic::AtomicU64>,
}

impl Ctx {
    pub(super) fn new(
        tx: SyncSender<Envelope>,
        hook_tx: SyncSender<Envelope>,
        reads: Reads,
        verifier: Verifier,
        feeds: super::Feeds,
    ) -> Ctx {
        Ctx {
            tx,
            hook_tx,
            reads: Arc::new(reads),
            verifier: Arc::new(verifier),
            refusals: Arc::new(Mutex::new((REFUSAL_BURST, Instant::now()))),
            live: feeds.live,
            doctor: feeds.doctor,
            heartbeat: feeds.heartbeat,
        }
    }

    /// Logs a refused change and, within the budget, records it in the
    /// audit log (the answer is not awaited).
    pub(super) fn refused(&self, caller: Caller, method: &str, path: &str, r: &Refusal) {
        let (action, target) = control_of(method, path);
        self.refused_as(caller, action, target, r);
    }

    /// [`Ctx::refused`] with the action and target named by the caller.
    fn refused_as(&self, caller: Caller, action: String, target: String, r: &Refusal) {
        let record = {
            let mut b = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
            let refill = b.1.elapsed().as_secs_f64() / REFUSAL_EVERY.as_secs_f64();
            *b = ((b.0 + refill).min(REFUSAL_BURST), Instant::now());
            if b.0 >= 1.0 {
                b.0 -= 1.0;
                true
            } else {
                false
            }
        };
        tracing::warn!(
            channel = %caller.channel,
            uid = ?caller.uid,
            pid = ?caller.pid,
            status = r.status,
            recorded = record,
            "control request refused: {action} {target}: {}",
            r.reason
        );
        if record {
            let request = Request::Refused { action, target, status: r.status, reason: r.reason.clone() };
            let (rtx, _rrx) = sync_channel(1);
            let _ = self.tx.try_send((Call { caller, request }, rtx));
        }
    }
}

/// The control action a request path names, for refusals: (action, target).
pub(super) fn control_of(method: &str, path: &str) -> (String, String) {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let decode = |s: &str| percent_decode(s);
    match (method, parts.as_slice()) {
        ("POST", ["v1", "profiles"]) => ("import".into(), "profile".into()),
        ("POST", ["v1", "profiles", w, "promote"]) => ("promote".into(), decode(w)),
        ("DELETE", ["v1", "profiles", w]) => ("reset".into(), decode(w)),
        ("POST", ["v1", "containers", c, a]) => (decode(a), decode(c)),
        ("POST", ["v1", "hook"]) => ("hook".into(), String::new()),
        ("POST", ["v1", "alerts", id, "add-to-profile"]) => ("add to profile".into(), format!("alert {}", decode(id))),
        _ => (format!("{method} {path}"), String::new()),
    }
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn error(status: u16, msg: &str) -> Response {
    (StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), Json(serde_json::json!({ "error": msg }))).into_response()
}

/// Hands a request to the event loop (the hook's to its own queue) and
/// waits for its answer; a read the store answers alone is answered here.
pub(super) async fn call(ctx: &Ctx, caller: Caller, request: Request) -> super::Reply {
    if Reads::answers(&request) {
        return ctx.reads.answer(request).await;
    }
    let tx = if matches!(request, Request::Hook { .. }) { ctx.hook_tx.clone() } else { ctx.tx.clone() };
    tokio::task::spawn_blocking(move || {
        let (rtx, rrx) = sync_channel(1);
        tx.send((Call { caller, request }, rtx)).map_err(|_| (503u16, "the agent is shutting down".to_string()))?;
        rrx.recv_timeout(Duration::from_secs(5)).map_err(|_| (504u16, "the agent did not answer in 5 s".to_string()))?
    })
    .await
    .unwrap_or_else(|e| Err((500, e.to_string())))
}

pub(super) async fn ask(ctx: &Ctx, caller: Caller, request: Request) -> Response {
    match call(ctx, caller, request).await {
        Ok(v) => (StatusCode::OK, Json(v)).into_response(),
        Err((code, msg)) => error(code, &msg),
    }
}

pub(super) use lancet_engine::event::now_ns;

/// `GET /v1/alerts?since|since_ns&container&limit`.
async fn alerts(ctx: Ctx, caller: Caller, query: Option<String>) -> Response {
    let p = match Params::parse(query.as_deref(), &["since", "since_ns", "container", "limit"]) {
        Ok(p) => p,
        Err((c, m)) => return error(c, &m),
    };
    let req = (|| {
        Ok::<_, (u16, String)>(Request::Alerts {
            since_ns: p.since_ns(now_ns())?,
            container: p.text("container")?,
            limit: p.limit("limit", MAX_ROWS)?.unwrap_or(1000),
        })
    })();
    match req {
        Ok(r) => ask(&ctx, caller, r).await,
        Err((c, m)) => error(c, &m),
    }
}

/// `GET /v1/audit?since|since_ns&limit`.
async fn audit(ctx: Ctx, caller: Caller, query: Option<String>) -> Response {
    let p = match Params::parse(query.as_deref(), &["since", "since_ns", "limit"]) {
        Ok(p) => p,
        Err((c, m)) => return error(c, &m),
    };
    let req = (|| {
        Ok::<_, (u16, String)>(Request::Audit { since_ns: p.since_ns(now_ns())?, limit: p.limit("limit", MAX_ROWS)?.unwrap_or(1000) })
    })();
    match req {
        Ok(r) => ask(&ctx, caller, r).await,
        Err((c, m)) => error(c, &m),
    }
}

#[derive(Deserialize)]
struct PromoteBody {
    mode: String,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    revision: Option<u64>,
}

#[derive(Deserialize, Default)]
struct RespondBody {
    #[serde(rename = "for")]
    expire: Option<String>,
}

pub(super) type C = Extension<Caller>;

/// The OCI hook: the claim is checked against the peer and the runtime's
/// state before the loop sees it.
async fn hook(ctx: Ctx, Extension(caller): C, Json(claim): Json<HookClaim>) -> Response {
    let refuse = |r: Refusal| {
        ctx.refused_as(caller, "hook".into(), claim.id.clone(), &r);
        error(r.status, &r.reason)
    };
    let hook_pid = match access::hook(caller.channel, caller.uid, caller.pid) {
        Ok(p) => p,
        Err(r) => return refuse(r),
    };
    let verifier = Arc::clone(&ctx.verifier);
    let id = claim.id.clone();
    let c = claim.clone();
    let checked = tokio::task::spawn_blocking(move || verifier.verify(hook_pid, &c)).await.unwrap_or_else(|e| Err(e.to_string()));
    match checked {
        Ok(identity) => ask(&ctx, caller, Request::Hook { identity }).await,
        Err(reason) => refuse(Refusal { status: 403, reason: format!("hook refused for container {id:?}: {reason}") }),
    }
}

/// Every route, with the loop's channel as state.
pub(super) fn router(ctx: Ctx) -> Router {
    Router::new()
        .route("/v1/profiles", get(|State(c): State<Ctx>, Extension(k): C| async move { ask(&c, k, Request::Profiles).await }))
        .route(
            "/v1/profiles",
            post(|State(c): State<Ctx>, Extension(k): C, body: String| async move { ask(&c, k, Request::Import { yaml: body }).await }),
        )
        .route(
            "/v1/profiles/{workload}",
            get(|State(c): State<Ctx>, Extension(k): C, UrlPath(w): UrlPath<String>| async move {
                ask(&c, k, Request::Profile { workload: w }).await
            })
            .delete(|State(c): State<Ctx>, Extension(k): C, UrlPath(w): UrlPath<String>| async move {
                ask(&c, k, Request::Reset { workload: w }).await
            }),
        )
        .route(
            "/v1/profiles/{workload}/promote",
            post(|State(c): State<Ctx>, Extension(k): C, UrlPath(w): UrlPath<String>, Json(b): Json<PromoteBody>| async move {
                ask(&c, k, Request::Promote { workload: w, mode: b.mode, force: b.force, dry_run: b.dry_run, revision: b.revision }).await
            }),
        )
        .route("/v1/alerts", get(|State(c): State<Ctx>, Extension(k): C, RawQuery(q): RawQuery| alerts(c, k, q)))
        .route("/v1/audit", get(|State(c): State<Ctx>, Extension(k): C, RawQuery(q): RawQuery| audit(c, k, q)))
        .route("/v1/containers", get(|State(c): State<Ctx>, Extension(k): C| async move { ask(&c, k, Request::Containers).await }))
        .route(
            "/v1/containers/{container}/{action}",
            post(
                |State(c): State<Ctx>,
                 Extension(k): C,
                 UrlPath((container, action)): UrlPath<(String, String)>,
                 body: Option<Json<RespondBody>>| async move {
                    let expire = body.map(|Json(b)| b).unwrap_or_default().expire;
                    ask(&c, k, Request::Respond { container, action, expire }).await
                },
            ),
        )
        .route("/v1/hook", post(|State(c): State<Ctx>, k: C, claim: Json<HookClaim>| async move { hook(c, k, claim).await }))
        .route("/v1/enforcement", get(|State(c): State<Ctx>, Extension(k): C| async move { ask(&c, k, Request::Enforcement).await }))
        .route("/healthz", get(|State(c): State<Ctx>| async move { healthz(&c) }))
        .merge(super::views::routes())
        .merge(super::ui::routes())
        .with_state(ctx)
}

/// `GET /healthz`: 200 while the event loop goes round (it beats every
/// tick, at least every 100 ms), 503 once it has been silent for 10 s.
/// Answered here, never by the loop, so no queue of requests can fail it
/// and a stuck loop cannot pass it. For liveness and readiness probes.
fn healthz(ctx: &Ctx) -> Response {
    let last = ctx.heartbeat.load(std::sync::atomic::Ordering::Relaxed);
    let silent_ns = now_ns().saturating_sub(last);
    let body = serde_json::json!({ "loop_silent_ms": silent_ns / 1_000_000 });
    if last != 0 && silent_ns < super::HEALTHY_WITHIN_NS {
        (StatusCode::OK, Json(body)).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_paths_name_their_action() {
        assert_eq!(control_of("POST", "/v1/profiles/web%2Fx/promote"), ("promote".into(), "web/x".into()));
        assert_eq!(control_of("DELETE", "/v1/profiles/web"), ("reset".into(), "web".into()));
        assert_eq!(control_of("POST", "/v1/profiles"), ("import".into(), "profile".into()));
        assert_eq!(control_of("POST", "/v1/containers/c1/isolate"), ("isolate".into(), "c1".into()));
        assert_eq!(control_of("POST", "/v1/hook"), ("hook".into(), String::new()));
        assert_eq!(control_of("POST", "/v1/alerts/12/add-to-profile"), ("add to profile".into(), "alert 12".into()));
        assert_eq!(control_of("PUT", "/v1/x"), ("PUT /v1/x".into(), String::new()));
        assert_eq!(percent_decode("a%zz%4"), "a%zz%4");
    }
}
