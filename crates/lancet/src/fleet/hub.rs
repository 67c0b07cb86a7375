//! `lancet hub`: the fleet's view. It reads every node's heartbeat from the
//! nodes bucket when asked (`GET /v1/nodes`), and follows the alerts stream
//! from its first message into a bounded window in memory, which
//! `GET /v1/alerts` filters (by `since`/`since_ns` and `node`). The stream
//! is the hub's store: a restarted hub reads it again, unless it keeps
//! what it took in a store of its own ([`super::hub_store`]). Where the
//! nodes run workloads and their flows are followed by [`super::hub_view`];
//! the routes, their token, and the dashboard are [`super::hub_http`] and
//! [`super::hub_ui`].
//!
//! What it reads was written by the nodes: each alert must be a JSON object
//! of at most [`MAX_ALERT_BYTES`] with a valid `node`, or it is skipped.

use super::keys;
use super::session;
use anyhow::{Context, Result};
use async_nats::jetstream;
use futures_util::StreamExt;
use serde_json::Value;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Alerts kept in memory, the newest; older ones stay in the stream.
const WINDOW: usize = 50_000;
const MAX_ALERT_BYTES: usize = 64 * 1024;

#[derive(clap::Args, Debug)]
pub struct HubArgs {
    /// A configuration file in the agent's format, for its `nats` and
    /// `nats*` keys (the other keys are the agent's); flags win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// The fleet's NATS server (JetStream), e.g. nats://127.0.0.1:4222.
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// Serve the fleet's API and dashboard here. Loopback by default;
    /// every request needs the hub's token whatever the address.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Keep every alert taken from the stream in a store here, and go on
    /// from where it stopped after a restart (else the hub keeps nothing:
    /// it reads the stream again from its start).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<std::path::PathBuf>,
    /// The hub's token: every request needs it (`Authorization: Bearer`,
    /// or the dashboard's cookie after signing in with it). Created 0600
    /// at the first start, kept after.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_TOKEN_FILE)]
    pub hub_token_file: std::path::PathBuf,
    #[command(flatten)]
    pub security: super::auth::NatsSecurityArgs,
}

/// Where the hub keeps its token unless told otherwise.
pub const DEFAULT_TOKEN_FILE: &str = "/var/lib/lancet/hub.token";

/// Where the hub serves unless told otherwise: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7080";

impl Default for HubArgs {
    fn default() -> HubArgs {
        HubArgs {
            config: None,
            nats: None,
            listen: DEFAULT_LISTEN.parse().expect("a socket address"),
            state_dir: None,
            hub_token_file: DEFAULT_TOKEN_FILE.into(),
            security: Default::default(),
        }
    }
}

type Window = Arc<Mutex<VecDeque<(u64, String, Value)>>>;

#[derive(Clone)]
pub(super) struct Hub {
    pub(super) js: jetstream::Context,
    pub(super) window: Window,
    pub(super) view: super::hub_view::Shared,
    pub(super) token: Arc<crate::api::token::Token>,
}

pub fn run(args: HubArgs) -> Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    crate::install_stop_signals(&stop)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the hub's runtime")?;
    rt.block_on(serve(args, stop))?;
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn serve(args: HubArgs, stop: Arc<AtomicBool>) -> Result<()> {
    let file = match &args.config {
        Some(p) => crate::config::load_file(p, true)?,
        None => crate::config::FileConfig::default(),
    };
    let Some(url) = args.nats.clone().or(file.nats.clone()) else {
        anyhow::bail!("the hub reads the fleet from NATS: give its URL (--nats URL, or `nats:` in --config)");
    };
    let security = args.security.resolve(&file)?;
    let euid = lancet_sensor::features::euid();
    security.check(euid)?;
    let token_file = &args.hub_token_file;
    if let Some(dir) = token_file.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        crate::private::state_dir(dir, euid)?;
    }
    let token = crate::api::token::Token::load_or_create_file(token_file, euid)?;
    let client =
        session::connect(&url, "lancet-hub", &security, None).await.map_err(|e| anyhow::anyhow!(super::auth::explain(&e, &security)))?;
    let js = jetstream::new(client.clone());
    // A hub user that may only read cannot make the stream: it follows it
    // once a node has.
    if let Err(e) = session::ensure_alerts_stream(&js, session::clustered(&client)).await {
        tracing::warn!("hub: the alerts stream is not there yet: {e:#}");
    }
    let hub = Hub { js: js.clone(), window: Arc::default(), view: Arc::default(), token: Arc::new(token) };
    let keep = match &args.state_dir {
        Some(dir) => {
            let k = super::hub_store::Keep::open(dir)?;
            let restored = k.restore(WINDOW)?;
            tracing::info!(alerts = restored.len(), next = k.next_sequence(), dir = %dir.display(), "hub: alerts kept from before");
            hub.window.lock().unwrap_or_else(|p| p.into_inner()).extend(restored);
            Some(k)
        }
        None => None,
    };
    tokio::spawn(follow(js.clone(), Arc::clone(&hub.window), keep));
    tokio::spawn(super::hub_view::follow(js, Arc::clone(&hub.view)));
    let app = super::hub_http::router(hub);
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(listen = %args.listen, nats = %url, "lancet hub is serving");
    eprintln!("lancet hub: serving the fleet on http://{} (its token: {})", args.listen, token_file.display());
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .context("serving")?;
    Ok(())
}

/// Follows the alerts stream into the window (and the store, with
/// `--state-dir`), from its first message or where the store stopped;
/// after an error, again from the last sequence seen.
async fn follow(js: jetstream::Context, window: Window, mut keep: Option<super::hub_store::Keep>) {
    let mut next = keep.as_ref().map_or(1, |k| k.next_sequence());
    loop {
        if let Err(e) = follow_from(&js, &window, &mut next, keep.as_mut()).await {
            tracing::warn!("hub: following the alerts stream: {e:#}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn follow_from(
    js: &jetstream::Context,
    window: &Window,
    next: &mut u64,
    mut keep: Option<&mut super::hub_store::Keep>,
) -> Result<()> {
    let stream = js.get_stream(keys::ALERTS_STREAM).await?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence: *next },
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut pruned = std::time::Instant::now();
    while let Some(m) = messages.next().await {
        let m = m?;
        let seq = m.info().map(|i| i.stream_sequence).unwrap_or(*next);
        *next = seq + 1;
        let Some((node, v)) = parse_alert(&m.payload).filter(|(node, v)| subject_names(&m.subject, node, v)) else {
            tracing::debug!(seq, subject = %m.subject, "hub: alert skipped: not a lancet alert, or not of the node its subject names");
            continue;
        };
        if let Some(k) = keep.as_deref_mut() {
            k.record(seq, &v)?;
            if pruned.elapsed() > Duration::from_secs(60) {
                k.prune()?;
                pruned = std::time::Instant::now();
            }
        }
        let mut w = window.lock().unwrap_or_else(|p| p.into_inner());
        if w.len() >= WINDOW {
            w.pop_front();
        }
        w.push_back((v["time_ns"].as_u64().unwrap_or(0), node, v));
    }
    Ok(())
}

/// Whether the subject (`lancet.alerts.<cluster>.<node>.<priority>`) names
/// the node and cluster the alert says it comes from.
fn subject_names(subject: &str, node: &str, v: &Value) -> bool {
    let t: Vec<&str> = subject.split('.').collect();
    t.len() == 5 && t[3] == node && Some(t[2]) == v["cluster"].as_str()
}

/// A node's alert: a JSON object with a valid `node`, bounded.
pub(super) fn parse_alert(payload: &[u8]) -> Option<(String, Value)> {
    if payload.len() > MAX_ALERT_BYTES {
        return None;
    }
    let v: Value = serde_json::from_slice(payload).ok()?;
    let node = v.get("node")?.as_str().filter(|n| keys::valid_name(n))?.to_string();
    v.is_object().then_some((node, v))
}
