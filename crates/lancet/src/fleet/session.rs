//! The fleet thread's work: connect to NATS, make sure the buckets and the
//! alerts stream exist, then at once write this node's observations, answer
//! proposals with compare-and-swap, pass the other nodes' observations and
//! the modes from a KV watch to the loop (parsed and checked here, off the
//! loop), forward alerts and beat the heart. When the connection goes the
//! session ends and a new one starts after a pause; meanwhile observations
//! wait here (the latest per workload) and proposals are refused with 503.

use super::alerts::Forwarder;
use super::cache::Cache;
use super::keys::{self, Heartbeat, Key, ModeDoc};
use super::refusals::{Refusals, Refused};
use super::{Counters, FleetConfig, FromFleet, ToFleet};
use anyhow::{anyhow, bail, Context, Result};
use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How often the heartbeat is written.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// How long one KV or stream operation may take before NATS counts as
/// unreachable.
const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long alerts wait after NATS refused one before they are tried again.
const REFUSED_PAUSE: Duration = Duration::from_secs(5);
/// Workloads whose observations can wait for NATS at once (the loop's own
/// bound on workloads).
const MAX_PENDING: usize = 4096;

/// What outlives one connection.
struct State {
    cfg: FleetConfig,
    /// Observations not yet written, the latest per workload.
    pending: HashMap<String, String>,
    connected: bool,
    alerts: Option<Forwarder>,
    /// The other nodes' values on this node's disk.
    cache: Option<Cache>,
    counters: Arc<Counters>,
    /// Writes NATS refused by permission, from the connection's events.
    refusals: Arc<Refusals>,
    /// Alerts wait until then after NATS refused one (they stay in the
    /// store; the session goes on).
    alerts_paused_until: Option<tokio::time::Instant>,
    /// Where this node runs workloads, and its flows, for the hub.
    reports: super::report::Reports,
}

impl State {
    fn queue(&mut self, workload: String, yaml: String) {
        if self.pending.len() >= MAX_PENDING && !self.pending.contains_key(&workload) {
            tracing::warn!(%workload, "fleet: too many observations waiting for NATS; this one is dropped until it changes again");
            return;
        }
        self.pending.insert(workload, yaml);
    }

    /// A write NATS refused by permission: counted and said (in the log and
    /// `lancet status`'s `lastError`), never taken for a lost connection.
    fn refused(&self, what: &str, e: &anyhow::Error) {
        let msg = format!("{what}: {e:#}");
        tracing::warn!("fleet: {msg}");
        self.counters.record_refusal(msg);
    }

    /// A write of this node's keys that NATS may refuse: a refusal is
    /// reported and the session goes on; any other error ends it.
    fn refusal_is_fine(&self, what: &str, r: Result<()>) -> Result<()> {
        match r {
            Err(e) if e.downcast_ref::<Refused>().is_some() => {
                self.refused(what, &e);
                Ok(())
            }
            r => r,
        }
    }

    /// Writes this node's observations of `workload`; they stay queued when
    /// the write fails. Err only when NATS is unreachable.
    async fn write_observations(&mut self, profiles: &kv::Store, workload: String, yaml: String) -> Result<()> {
        match put_observations(profiles, &self.refusals, &self.cfg.node, &workload, &yaml).await {
            Ok(()) => Ok(()),
            Err(e) if e.downcast_ref::<Refused>().is_some() => {
                self.refused(&format!("the observations of {workload} were not shared (kept to try again)"), &e);
                self.queue(workload, yaml);
                Ok(())
            }
            Err(e) => {
                self.queue(workload, yaml);
                Err(e)
            }
        }
    }
}

/// The fleet thread's body: sessions until `stop` or the loop goes.
pub(super) async fn run(
    cfg: FleetConfig,
    mut rx: mpsc::Receiver<ToFleet>,
    tx: mpsc::Sender<FromFleet>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
) {
    let alerts = Forwarder::new(&cfg);
    if let Some(f) = &alerts {
        counters.alert_cursor.store(f.cursor, Ordering::Relaxed);
    }
    let mut cache = cfg.state_dir.as_deref().and_then(Cache::open);
    // What the other nodes said before this start, before NATS is tried:
    // enforced at once, NATS or not.
    for m in cache.as_mut().map(Cache::load).unwrap_or_default() {
        if tx.send(m).await.is_err() {
            return;
        }
    }
    let mut st = State {
        cfg,
        pending: HashMap::new(),
        connected: false,
        alerts,
        cache,
        counters,
        refusals: Arc::default(),
        alerts_paused_until: None,
        reports: Default::default(),
    };
    let mut pause = Duration::from_millis(250);
    loop {
        match session(&mut st, &mut rx, &tx, &stop).await {
            Ok(()) => return,
            Err(e) => {
                if st.connected {
                    st.connected = false;
                    let _ = tx.send(FromFleet::Connected(false)).await;
                    pause = Duration::from_millis(250);
                }
                let why = super::auth::explain(&e, &st.cfg.security);
                tracing::warn!(url = %st.cfg.url, "fleet: NATS unreachable, enforcing from the local store meanwhile: {why}");
                st.counters.set_error(why);
            }
        }
        // Offline: keep answering the loop until the next try.
        let until = tokio::time::Instant::now() + pause;
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let tick = tokio::time::sleep_until(until.min(tokio::time::Instant::now() + Duration::from_millis(100)));
            tokio::pin!(tick);
            tokio::select! {
                m = rx.recv() => match m {
                    None => return,
                    Some(ToFleet::Observations { workload, yaml }) => st.queue(workload, yaml),
                    Some(ToFleet::Presence(p)) => st.reports.set_presence(p),
                    Some(ToFleet::Propose { workload, mode, ticket, .. }) => {
                        let result = Err((503, format!("the fleet's NATS ({}) is unreachable: the mode was not changed", st.cfg.url)));
                        let _ = tx.send(FromFleet::Proposed { workload, mode, ticket, result }).await;
                    }
                },
                _ = &mut tick => if tokio::time::Instant::now() >= until { break },
            }
        }
        pause = (pause * 2).min(Duration::from_secs(4));
    }
}

/// 3 replicas on a cluster that can hold them, else 1.
async fn ensure_kv(js: &jetstream::Context, bucket: &str, history: i64, clustered: bool) -> Result<kv::Store> {
    if let Ok(s) = js.get_key_value(bucket).await {
        return Ok(s);
    }
    let config = |num_replicas| kv::Config { bucket: bucket.to_string(), history, num_replicas, ..Default::default() };
    if clustered {
        match js.create_key_value(config(3)).await {
            Ok(s) => return Ok(s),
            Err(e) => tracing::warn!(bucket, "fleet: a bucket of 3 replicas could not be made, trying 1: {e}"),
        }
    }
    js.create_key_value(config(1)).await.with_context(|| format!("making the KV bucket {bucket}"))
}

/// The alerts stream: `lancet.alerts.>`, duplicates (by message id) dropped
/// within 10 minutes, at most a million alerts kept.
pub(super) async fn ensure_alerts_stream(js: &jetstream::Context, clustered: bool) -> Result<jetstream::stream::Stream> {
    if let Ok(s) = js.get_stream(keys::ALERTS_STREAM).await {
        return Ok(s);
    }
    let config = |num_replicas| jetstream::stream::Config {
        name: keys::ALERTS_STREAM.to_string(),
        subjects: vec![keys::ALERTS_SUBJECTS.to_string()],
        duplicate_window: Duration::from_secs(600),
        max_messages: 1_000_000,
        num_replicas,
        ..Default::default()
    };
    if clustered {
        match js.get_or_create_stream(config(3)).await {
            Ok(s) => return Ok(s),
            Err(e) => tracing::warn!("fleet: an alerts stream of 3 replicas could not be made, trying 1: {e}"),
        }
    }
    js.get_or_create_stream(config(1)).await.context("making the alerts stream")
}

/// Connects with the timeouts the fleet uses, as the user and with the
/// certificates `security` names. `url` may list several servers of a
/// cluster, comma separated; the client picks one, and moves to another
/// when it goes. Permission refusals the server sends go to `refusals`.
pub(super) async fn connect(
    url: &str,
    name: &str,
    security: &super::auth::NatsSecurity,
    refusals: Option<Arc<Refusals>>,
) -> Result<async_nats::Client> {
    let servers: Vec<&str> = url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let mut options =
        async_nats::ConnectOptions::new().name(name).connection_timeout(Duration::from_secs(2)).request_timeout(Some(OP_TIMEOUT));
    if let Some(r) = refusals {
        options = options.event_callback(move |event| {
            let r = Arc::clone(&r);
            async move {
                if let async_nats::Event::ServerError(e) = &event {
                    r.server_error(&e.to_string());
                }
            }
        });
    }
    let options = security.apply(options, url).await?;
    let client = options.connect(servers).await.with_context(|| format!("connecting to {url}"))?;
    Ok(client)
}

/// Whether the server is part of a cluster (3 replicas make sense).
pub(super) fn clustered(client: &async_nats::Client) -> bool {
    let info = client.server_info();
    info.cluster.is_some() || !info.connect_urls.is_empty()
}

async fn session(st: &mut State, rx: &mut mpsc::Receiver<ToFleet>, tx: &mpsc::Sender<FromFleet>, stop: &AtomicBool) -> Result<()> {
    let client = connect(&st.cfg.url, &format!("lancet-{}", st.cfg.node), &st.cfg.security, Some(Arc::clone(&st.refusals))).await?;
    let js = jetstream::new(client.clone());
    let clustered = clustered(&client);
    let profiles = ensure_kv(&js, keys::PROFILES_BUCKET, 4, clustered).await?;
    let nodes = ensure_kv(&js, keys::NODES_BUCKET, 1, clustered).await?;
    ensure_alerts_stream(&js, clustered).await?;
    // The current value of every key first, then each change.
    let mut watch = profiles.watch_with_history(">").await.context("watching the profiles bucket")?;
    for (workload, yaml) in std::mem::take(&mut st.pending) {
        st.write_observations(&profiles, workload, yaml).await?;
    }
    st.connected = true;
    st.counters.set_error(String::new());
    st.reports.reconnected();
    let _ = tx.send(FromFleet::Connected(true)).await;
    tracing::info!(url = %st.cfg.url, node = %st.cfg.node, cluster = %st.cfg.cluster, clustered, "fleet: joined");
    let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
    let mut health = tokio::time::interval(Duration::from_millis(200));
    // The store is read for new alerts 20 times a second (one indexed
    // query each): an alert reaches the stream ~50 ms after it is committed.
    let mut forward = tokio::time::interval(super::alerts::EVERY);
    let mut flows = tokio::time::interval(super::presence::FLOWS_EVERY);
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                None => return Ok(()),
                Some(ToFleet::Observations { workload, yaml }) => st.write_observations(&profiles, workload, yaml).await?,
                Some(ToFleet::Presence(p)) => {
                    st.reports.set_presence(p);
                    let r = st.reports.write_presence(&st.cfg, &nodes, &st.refusals, OP_TIMEOUT).await;
                    st.refusal_is_fine("where this node runs workloads was not written", r)?;
                }
                Some(ToFleet::Propose { workload, mode, expected, ticket }) => {
                    let subject = keys::mode_key(&workload).map(|k| format!("$KV.{}.{k}", keys::PROFILES_BUCKET)).unwrap_or_default();
                    let result = tokio::select! {
                        r = propose(&profiles, &st.cfg.node, &workload, mode, expected) => r,
                        refused = st.refusals.of(&subject) => Err((403u16, format!("the mode was not changed: {refused}"))),
                    };
                    let lost = matches!(result, Err((503, _)));
                    let _ = tx.send(FromFleet::Proposed { workload, mode, ticket, result }).await;
                    if lost {
                        bail!("a proposal timed out");
                    }
                }
            },
            e = watch.next() => match e {
                None => bail!("the profiles watch ended"),
                Some(Err(e)) => bail!("the profiles watch failed: {e}"),
                Some(Ok(entry)) => {
                    if let Some(msg) = on_entry(&entry, &st.cfg.node) {
                        if let Some(c) = st.cache.as_mut() {
                            match &msg {
                                FromFleet::Observations { .. } => c.put(&entry.key, &entry.value, None),
                                FromFleet::ObservationsGone { .. } => c.remove(&entry.key),
                                FromFleet::Mode { revision, .. } => c.put(&entry.key, &entry.value, Some(*revision)),
                                _ => {}
                            }
                        }
                        let _ = tx.send(msg).await;
                    }
                }
            },
            _ = heartbeat.tick() => {
                let hb = Heartbeat {
                    node: st.cfg.node.clone(),
                    cluster: st.cfg.cluster.clone(),
                    time_ns: lancet_engine::event::now_ns(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    guarantees: st.cfg.guarantees.get().map(guarantees_of).unwrap_or_default(),
                };
                let doc = serde_json::to_vec(&hb)?;
                let r = super::report::put(&nodes, &st.refusals, &st.cfg.node, doc, OP_TIMEOUT).await;
                st.refusal_is_fine("the heartbeat was not written", r)?;
                // Written again after a refusal or a reconnection.
                let r = st.reports.write_presence(&st.cfg, &nodes, &st.refusals, OP_TIMEOUT).await;
                st.refusal_is_fine("where this node runs workloads was not written", r)?;
            },
            _ = flows.tick() => {
                let r = st.reports.write_flows(&st.cfg, &nodes, &st.refusals, OP_TIMEOUT).await;
                st.refusal_is_fine("this node's flows were not written", r)?;
            },
            _ = health.tick() => {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                if client.connection_state() != async_nats::connection::State::Connected {
                    bail!("the connection to NATS was lost");
                }
            },
            _ = forward.tick() => {
                if st.alerts_paused_until.is_some_and(|t| tokio::time::Instant::now() < t) {
                    continue;
                }
                if let Some(f) = st.alerts.as_mut() {
                    let done = f.forward(&js, &st.refusals).await;
                    st.counters.alerts_sent.store(f.sent, Ordering::Relaxed);
                    st.counters.alerts_lost.store(f.lost, Ordering::Relaxed);
                    st.counters.alert_cursor.store(f.cursor, Ordering::Relaxed);
                    match done {
                        Err(e) if e.downcast_ref::<Refused>().is_some() => {
                            // They stay in the store, from the cursor on.
                            st.refused("alerts were not sent (they wait in the store)", &e);
                            st.alerts_paused_until = Some(tokio::time::Instant::now() + REFUSED_PAUSE);
                        }
                        r => { r?; }
                    }
                }
            },
        }
    }
}

/// What of `lancet doctor`'s report the heartbeat carries: its guarantees
/// (or the whole report when it has no such field), bounded.
fn guarantees_of(report: &serde_json::Value) -> serde_json::Value {
    let v = report.get("guarantees").cloned().unwrap_or_else(|| report.clone());
    if serde_json::to_vec(&v).map(|b| b.len()).unwrap_or(usize::MAX) > keys::MAX_SMALL_DOC_BYTES / 2 {
        return serde_json::Value::Null;
    }
    v
}

async fn put_observations(profiles: &kv::Store, refusals: &Refusals, node: &str, workload: &str, yaml: &str) -> Result<()> {
    let Some(key) = keys::observations_key(workload, node) else { return Ok(()) };
    if yaml.len() > keys::MAX_OBSERVATIONS_BYTES {
        tracing::warn!(%workload, bytes = yaml.len(), "fleet: observations too large to share; kept on this node");
        return Ok(());
    }
    let put = async {
        tokio::time::timeout(OP_TIMEOUT, profiles.put(&key, yaml.to_string().into()))
            .await
            .map_err(|_| anyhow!("writing {key} timed out"))?
            .with_context(|| format!("writing {key}"))
    };
    refusals.race(&format!("$KV.{}.{key}", keys::PROFILES_BUCKET), put).await?;
    Ok(())
}

/// The compare-and-swap of a workload's mode key.
async fn propose(
    profiles: &kv::Store,
    node: &str,
    workload: &str,
    mode: lancet_engine::profile::Mode,
    expected: Option<u64>,
) -> std::result::Result<u64, (u16, String)> {
    let key = keys::mode_key(workload).ok_or_else(|| (400u16, format!("{workload} is not shared with the fleet")))?;
    let doc = serde_json::to_vec(&ModeDoc::new(mode, node, lancet_engine::event::now_ns())).map_err(|e| (500u16, e.to_string()))?;
    let conflict = || (409u16, format!("{workload}: its mode was changed meanwhile by another promotion; yours was not applied"));
    let done = match expected {
        Some(rev) => tokio::time::timeout(OP_TIMEOUT, profiles.update(&key, doc.into(), rev)).await.map(|r| {
            r.map_err(|e| {
                if e.kind() == kv::UpdateErrorKind::WrongLastRevision || wrong_revision(&e) {
                    conflict()
                } else {
                    (503u16, format!("NATS: {e}"))
                }
            })
        }),
        None => tokio::time::timeout(OP_TIMEOUT, profiles.create(&key, doc.into())).await.map(|r| {
            r.map_err(|e| {
                if e.kind() == kv::CreateErrorKind::AlreadyExists || wrong_revision(&e) {
                    conflict()
                } else {
                    (503u16, format!("NATS: {e}"))
                }
            })
        }),
    };
    done.unwrap_or_else(|_| Err((503u16, "NATS did not answer in time: the mode was not changed".into())))
}

/// A compare-and-swap that lost: JetStream's "wrong last sequence", which a
/// clustered stream reports with another code (10164) than a single server
/// (10071), and the client library names only the latter.
fn wrong_revision(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(x) = cur {
        let text = x.to_string();
        if text.contains("wrong last sequence") || text.contains("error code 10071") || text.contains("error code 10164") {
            return true;
        }
        cur = x.source();
    }
    false
}

/// One change of the profiles bucket as the loop's message; None for our
/// own observations, keys we do not know and documents that do not parse
/// (each logged: another node wrote them).
fn on_entry(entry: &kv::Entry, own_node: &str) -> Option<FromFleet> {
    let Some(key) = Key::parse(&entry.key) else {
        tracing::debug!(key = %entry.key, "fleet: unknown key ignored");
        return None;
    };
    let gone = matches!(entry.operation, kv::Operation::Delete | kv::Operation::Purge);
    match key {
        Key::Observations { node, .. } if node == own_node => None,
        Key::Observations { workload, node } if gone => Some(FromFleet::ObservationsGone { workload, node }),
        Key::Observations { workload, node } => match keys::parse_observations(&entry.value, &workload) {
            Some(p) => Some(FromFleet::Observations { workload, node, profile: Box::new(p), bytes: entry.value.len() }),
            None => {
                tracing::warn!(key = %entry.key, bytes = entry.value.len(), "fleet: observations refused: not a profile of that image");
                None
            }
        },
        Key::Mode { .. } if gone => None,
        Key::Mode { workload } => match ModeDoc::parse(&entry.value) {
            Some((mode, by)) => Some(FromFleet::Mode { workload, mode, revision: entry.revision, by }),
            None => {
                tracing::warn!(key = %entry.key, "fleet: mode document refused");
                None
            }
        },
    }
}
