//! The agent's local API, used by the other subcommands (`lancet profile`,
//! `lancet alerts`). HTTP/JSON on a loopback address. Requests are handed to
//! the agent's event loop, which owns every piece of state, and answered from
//! there on its next tick (≤ 100 ms): no state is shared between threads.

use anyhow::{Context, Result};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::Duration;

/// What a client asks of the agent.
#[derive(Debug)]
pub enum Request {
    Profiles,
    Profile {
        workload: String,
    },
    /// `force`: past the readiness check; `dry_run`: only say what the mode
    /// would refuse in the running containers now.
    Promote {
        workload: String,
        mode: String,
        force: bool,
        dry_run: bool,
    },
    Reset {
        workload: String,
    },
    Import {
        yaml: String,
    },
    Alerts {
        since_ns: Option<u64>,
        container: Option<String>,
        limit: usize,
    },
    Containers,
    /// From the OCI hook: a container is being created; put it under its
    /// posture before its first instruction runs.
    Hook {
        state: Value,
    },
    /// Operator response on one container: isolate, freeze or release.
    Respond {
        container: String,
        action: String,
        expire: Option<String>,
    },
    /// Which enforcement backends hold, with their counters.
    Enforcement,
}

/// An answer: a JSON document, or an HTTP status with a message.
pub type Reply = std::result::Result<Value, (u16, String)>;

type Envelope = (Request, SyncSender<Reply>);

/// The loop's side: requests waiting to be answered.
pub struct Inbox {
    rx: Receiver<Envelope>,
}

impl Inbox {
    /// Answers every waiting request with `answer`.
    pub fn serve(&self, mut answer: impl FnMut(Request) -> Reply) {
        while let Ok((req, reply)) = self.rx.try_recv() {
            let _ = reply.send(answer(req));
        }
    }
}

#[derive(Clone)]
struct Ctx {
    tx: SyncSender<Envelope>,
}

async fn ask(ctx: &Ctx, req: Request) -> (StatusCode, Json<Value>) {
    let tx = ctx.tx.clone();
    let res = tokio::task::spawn_blocking(move || {
        let (rtx, rrx) = sync_channel(1);
        tx.send((req, rtx)).map_err(|_| (503u16, "the agent is shutting down".to_string()))?;
        rrx.recv_timeout(Duration::from_secs(5)).map_err(|_| (504u16, "the agent did not answer in 5 s".to_string()))?
    })
    .await
    .unwrap_or_else(|e| Err((500, e.to_string())));
    match res {
        Ok(v) => (StatusCode::OK, Json(v)),
        Err((code, msg)) => {
            (StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), Json(serde_json::json!({ "error": msg })))
        }
    }
}

#[derive(Deserialize)]
struct AlertParams {
    since_ns: Option<u64>,
    container: Option<String>,
    limit: Option<usize>,
}

/// `POST /v1/profiles/{workload}/promote`.
#[derive(Debug, Deserialize)]
struct PromoteBody {
    mode: String,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    dry_run: bool,
}

impl PromoteBody {
    fn into_request(self, workload: String) -> Request {
        Request::Promote { workload, mode: self.mode, force: self.force, dry_run: self.dry_run }
    }
}

/// `POST /v1/containers/{container}/{action}` (the body is optional).
#[derive(Debug, Deserialize, Default)]
struct RespondBody {
    #[serde(rename = "for")]
    expire: Option<String>,
}

impl RespondBody {
    fn into_request(body: Option<RespondBody>, container: String, action: String) -> Request {
        Request::Respond { container, action, expire: body.unwrap_or_default().expire }
    }
}

/// What the OCI hook sends (`POST /v1/hook`, see `hook.rs`): the container
/// being created, its first process, its cgroup (relative to the cgroup2
/// mount) and its root filesystem on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRequest {
    pub id: String,
    pub pid: u32,
    pub cgroup: String,
    pub rootfs: Option<std::path::PathBuf>,
}

impl HookRequest {
    /// Reads the hook's JSON body.
    pub fn from_state(state: &Value) -> std::result::Result<HookRequest, (u16, String)> {
        use std::path::{Component, Path};
        let id = state["id"].as_str().unwrap_or_default().to_string();
        // A pid that is not one is refused: `as u32` made 2^32 + 1 pid 1,
        // and a missing one pid 0, and the container was then guarded
        // through that process's root.
        let pid = state["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .filter(|&p| p > 0)
            .ok_or((400u16, "no pid (or not a pid) in the hook request".to_string()))?;
        let cgroup = state["cgroup"].as_str().ok_or((400u16, "no cgroup in the hook request".to_string()))?.to_string();
        // The cgroup is joined to the cgroup2 mount: `..` would name any
        // directory of the host (and its inode taken as a cgroup id).
        if Path::new(&cgroup).components().any(|c| !matches!(c, Component::RootDir | Component::Normal(_))) {
            return Err((400, format!("cgroup {cgroup:?} is not a path inside the cgroup2 mount")));
        }
        let rootfs = state["rootfs"].as_str().map(std::path::PathBuf::from);
        Ok(HookRequest { id, pid, cgroup, rootfs })
    }
}

/// Starts the API on `addr` in a thread of its own; returns the inbox the
/// event loop answers from.
pub fn serve(addr: SocketAddr) -> Result<Inbox> {
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("listening on {addr} for the local API"))?;
    listener.set_nonblocking(true)?;
    let (tx, rx) = sync_channel::<Envelope>(64);
    let ctx = Ctx { tx };
    let app = Router::new()
        .route("/v1/profiles", get(|State(c): State<Ctx>| async move { ask(&c, Request::Profiles).await }))
        .route(
            "/v1/profiles",
            post(|State(c): State<Ctx>, body: String| async move { ask(&c, Request::Import { yaml: body }).await }),
        )
        .route(
            "/v1/profiles/{workload}",
            get(|State(c): State<Ctx>, UrlPath(w): UrlPath<String>| async move { ask(&c, Request::Profile { workload: w }).await })
                .delete(|State(c): State<Ctx>, UrlPath(w): UrlPath<String>| async move {
                    ask(&c, Request::Reset { workload: w }).await
                }),
        )
        .route(
            "/v1/profiles/{workload}/promote",
            post(|State(c): State<Ctx>, UrlPath(w): UrlPath<String>, Json(b): Json<PromoteBody>| async move {
                ask(&c, b.into_request(w)).await
            }),
        )
        .route(
            "/v1/alerts",
            get(|State(c): State<Ctx>, Query(p): Query<AlertParams>| async move {
                ask(&c, Request::Alerts { since_ns: p.since_ns, container: p.container, limit: p.limit.unwrap_or(1000) }).await
            }),
        )
        .route("/v1/containers", get(|State(c): State<Ctx>| async move { ask(&c, Request::Containers).await }))
        .route(
            "/v1/containers/{container}/{action}",
            post(|State(c): State<Ctx>, UrlPath((container, action)): UrlPath<(String, String)>, body: Option<Json<RespondBody>>| async move {
                ask(&c, RespondBody::into_request(body.map(|Json(b)| b), container, action)).await
            }),
        )
        .route("/v1/hook", post(|State(c): State<Ctx>, Json(state): Json<Value>| async move { ask(&c, Request::Hook { state }).await }))
        .route("/v1/enforcement", get(|State(c): State<Ctx>| async move { ask(&c, Request::Enforcement).await }))
        .with_state(ctx);
    std::thread::Builder::new().name("lancet-api".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!("local API not started: {e}");
                return;
            }
        };
        rt.block_on(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => {
                    if let Err(e) = axum::serve(l, app).await {
                        tracing::error!("local API stopped: {e}");
                    }
                }
                Err(e) => tracing::error!("local API not started: {e}"),
            }
        });
    })?;
    Ok(Inbox { rx })
}

/// The client side, for the CLI subcommands.
pub struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(addr: &str) -> Client {
        Client::with_timeout(addr, Duration::from_secs(10))
    }

    pub fn with_timeout(addr: &str, timeout: Duration) -> Client {
        let agent = ureq::Agent::config_builder().timeout_global(Some(timeout)).http_status_as_error(false).build().into();
        Client { base: format!("http://{addr}"), agent }
    }

    fn check(&self, res: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Value> {
        let mut res =
            res.with_context(|| format!("cannot reach the lancet agent at {} (is `lancet run` running? see --api)", self.base))?;
        let status = res.status();
        let body: Value = res.body_mut().read_json().unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = body["error"].as_str().unwrap_or("unknown error").to_string();
            anyhow::bail!("{msg}");
        }
        Ok(body)
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        self.check(self.agent.get(format!("{}{path}", self.base)).call())
    }

    pub fn delete(&self, path: &str) -> Result<Value> {
        self.check(self.agent.delete(format!("{}{path}", self.base)).call())
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Result<Value> {
        self.check(self.agent.post(format!("{}{path}", self.base)).send_json(body))
    }

    pub fn post_text(&self, path: &str, body: &str) -> Result<Value> {
        self.check(self.agent.post(format!("{}{path}", self.base)).send(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bodies_become_requests() {
        let b: PromoteBody = serde_json::from_slice(br#"{"mode":"protect","force":true}"#).unwrap();
        match b.into_request("web".into()) {
            Request::Promote { workload, mode, force, dry_run } => {
                assert_eq!((workload.as_str(), mode.as_str(), force, dry_run), ("web", "protect", true, false))
            }
            other => panic!("{other:?}"),
        }
        assert!(serde_json::from_slice::<PromoteBody>(br#"{"force":true}"#).is_err(), "mode is required");
        let r: RespondBody = serde_json::from_slice(br#"{"for":"10m"}"#).unwrap();
        match RespondBody::into_request(Some(r), "c".into(), "isolate".into()) {
            Request::Respond { expire, .. } => assert_eq!(expire.as_deref(), Some("10m")),
            other => panic!("{other:?}"),
        }
        match RespondBody::into_request(None, "c".into(), "freeze".into()) {
            Request::Respond { expire, action, .. } => assert_eq!((expire, action.as_str()), (None, "freeze")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hook_bodies() {
        let r =
            HookRequest::from_state(&json!({"id": "abc", "pid": 42, "cgroup": "/libpod_parent/libpod-abc", "rootfs": "/var/lib/x/merged"}))
                .unwrap();
        assert_eq!(
            r,
            HookRequest { id: "abc".into(), pid: 42, cgroup: "/libpod_parent/libpod-abc".into(), rootfs: Some("/var/lib/x/merged".into()) }
        );
        assert_eq!(HookRequest::from_state(&json!({"id": "abc", "pid": 42})).unwrap_err().0, 400, "no cgroup");
        assert_eq!(HookRequest::from_state(&json!({"pid": 1, "cgroup": "/x"})).unwrap().rootfs, None);
        // Not a pid, or a cgroup outside the mount: refused, not truncated or joined.
        for bad in [
            json!({"cgroup": "/x"}),
            json!({"pid": 0, "cgroup": "/x"}),
            json!({"pid": (1u64 << 32) + 1, "cgroup": "/x"}),
            json!({"pid": -1, "cgroup": "/x"}),
            json!({"pid": "7", "cgroup": "/x"}),
            json!({"pid": 7, "cgroup": "/../../etc"}),
            json!({"pid": 7, "cgroup": "a/../../b"}),
            json!({"pid": 7, "cgroup": "./x"}),
        ] {
            assert_eq!(HookRequest::from_state(&bad).map_err(|e| e.0), Err(400), "{bad}");
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                any::<String>().prop_map(Value::from),
                "(/|\\.\\./|\\./|[a-z0-9-]{1,8}/?){0,6}".prop_map(Value::from),
            ];
            leaf.prop_recursive(3, 32, 6, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                    proptest::collection::btree_map(
                        proptest::sample::select(vec!["id", "pid", "cgroup", "rootfs", "mode", "force", "dry_run", "for", "x"])
                            .prop_map(String::from),
                        inner,
                        0..6
                    )
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// Bytes mutated from a valid body: flips, inserts, cuts.
        fn mutated(valid: &'static str) -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6).prop_map(move |edits| {
                let mut b = valid.as_bytes().to_vec();
                for (i, v, op) in edits {
                    let at = i.index(b.len() + 1);
                    match op {
                        0 if at < b.len() => b[at] = v,
                        1 => b.insert(at, v),
                        _ => b.truncate(at),
                    }
                }
                b
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// What axum's Json hands the routes, from any body: a request
            /// or a rejection; an operator response's duration parses or is
            /// refused (never a panic on the agent's loop).
            #[test]
            fn promote_and_respond_bodies(body in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..200),
                mutated(r#"{"mode":"protect","force":false,"dry_run":true}"#),
                mutated(r#"{"for":"10m"}"#),
                json().prop_map(|v| v.to_string().into_bytes()),
            ]) {
                if let Ok(b) = serde_json::from_slice::<PromoteBody>(&body) {
                    let _ = b.into_request("w".into());
                }
                if let Ok(b) = serde_json::from_slice::<RespondBody>(&body) {
                    if let Request::Respond { expire: Some(e), .. } = RespondBody::into_request(Some(b), "c".into(), "isolate".into()) {
                        let _ = crate::config::parse_duration(&e);
                    }
                }
            }

            /// A hook request names a real pid (never a truncated one) and a
            /// cgroup inside the cgroup2 mount (never `..`).
            #[test]
            fn hook_bodies(state in json(), pid in prop_oneof![Just(None), any::<u64>().prop_map(Some), (0u64..100).prop_map(|p| Some(p << 32 | 1))], cgroup in proptest::option::of("(/|\\.\\./|\\./|[a-z0-9-]{1,8}/?){0,6}")) {
                let mut state = state;
                if let (Some(o), Some(p)) = (state.as_object_mut(), pid) {
                    o.insert("pid".into(), p.into());
                }
                if let (Some(o), Some(c)) = (state.as_object_mut(), cgroup) {
                    o.insert("cgroup".into(), c.into());
                }
                if let Ok(r) = HookRequest::from_state(&state) {
                    prop_assert_eq!(Some(u64::from(r.pid)), state["pid"].as_u64(), "the pid asked for");
                    prop_assert!(r.pid > 0);
                    prop_assert!(std::path::Path::new(&r.cgroup).components().all(|c| matches!(c, std::path::Component::RootDir | std::path::Component::Normal(_))), "{:?}", r.cgroup);
                }
            }
        }
    }
}
