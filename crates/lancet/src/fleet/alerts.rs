//! Alerts to the fleet's stream, from the agent's own store: the store
//! already keeps every alert, in order, bounded (`maxAlerts`, retention),
//! so it is the spool while NATS is away. The forwarder remembers the last
//! alert id the stream acknowledged (`fleet-alerts.cursor` in the state
//! directory) and sends what follows, in id order, each with the message id
//! `<node>-<id>-<time>`: JetStream drops a copy sent again within its
//! duplicate window (a crash between the ack and the cursor's write), so
//! each alert arrives once. Alerts pruned from the store before NATS came
//! back are lost, and counted. A repeat folded into an alert after it was
//! sent (its count) is not sent again.

use super::keys;
use super::FleetConfig;
use anyhow::{anyhow, Context, Result};
use async_nats::jetstream;
use lancet_store::Store;
use std::path::PathBuf;
use std::time::Duration;

/// How often the store is read for alerts to send.
pub const EVERY: Duration = Duration::from_millis(50);
/// Alerts sent per pass: a backlog drains at ~4 000 a second without
/// holding the fleet thread for long.
const BATCH: usize = 200;
/// The largest alert document sent whole (the hub reads up to 64 KiB).
const MAX_ALERT_BYTES: usize = 60 * 1024;

pub struct Forwarder {
    store_path: PathBuf,
    cursor_path: PathBuf,
    store: Option<Store>,
    /// The last alert id the stream acknowledged.
    pub cursor: u64,
    node: String,
    cluster: String,
    /// Alerts acknowledged by the stream since start.
    pub sent: u64,
    /// Alerts the store pruned before they could be sent.
    pub lost: u64,
}

impl Forwarder {
    /// None when the agent has no store to read (tests of the KV part).
    pub fn new(cfg: &FleetConfig) -> Option<Forwarder> {
        let (store_path, dir) = (cfg.store.clone()?, cfg.state_dir.clone()?);
        let cursor_path = dir.join("fleet-alerts.cursor");
        let cursor = std::fs::read_to_string(&cursor_path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        Some(Forwarder {
            store_path,
            cursor_path,
            store: None,
            cursor,
            node: cfg.node.clone(),
            cluster: cfg.cluster.clone(),
            sent: 0,
            lost: 0,
        })
    }

    fn save_cursor(&self) -> Result<()> {
        let tmp = self.cursor_path.with_extension("cursor.tmp");
        std::fs::write(&tmp, self.cursor.to_string()).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.cursor_path).with_context(|| format!("renaming to {}", self.cursor_path.display()))
    }

    /// Sends the alerts after the cursor, in order, up to [`BATCH`]; the
    /// cursor moves past each one the stream acknowledged. An error means
    /// NATS is unreachable (the session starts again); a store not there
    /// yet is not an error.
    /// A publish NATS refused by permission ends the pass with
    /// [`super::refusals::Refused`]; the cursor stays before it.
    pub async fn forward(&mut self, js: &jetstream::Context, refusals: &super::refusals::Refusals) -> Result<usize> {
        if self.store.is_none() {
            match Store::open_read_only(&self.store_path) {
                Ok(s) => self.store = Some(s),
                Err(e) => {
                    tracing::debug!("fleet: the store is not readable yet: {e}");
                    return Ok(0);
                }
            }
        }
        let Some(store) = self.store.as_ref() else { return Ok(0) };
        let rows = match store.alerts_after(self.cursor, BATCH) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("fleet: alerts not read from the store: {e}");
                self.store = None;
                return Ok(0);
            }
        };
        if rows.is_empty() {
            // Every alert pruned, or a new store: ids start again.
            if store.last_alert_id().map(|last| last < self.cursor).unwrap_or(false) {
                tracing::info!(cursor = self.cursor, "fleet: the store's alert ids start again; forwarding from the first");
                self.cursor = 0;
                self.save_cursor()?;
            }
            return Ok(0);
        }
        if rows[0].id > self.cursor + 1 && self.cursor > 0 {
            let gap = rows[0].id - self.cursor - 1;
            self.lost += gap;
            tracing::warn!(lost = gap, "fleet: alerts pruned from the store before NATS could take them");
        }
        // Published one after another on one connection: they reach the
        // stream in this order; the acks are awaited in the same order.
        let mut acks = Vec::with_capacity(rows.len());
        for a in &rows {
            let subject = keys::alert_subject(&self.cluster, &self.node, &a.alert.priority);
            let mut body = serde_json::to_vec(&self.document(a))?;
            if body.len() > MAX_ALERT_BYTES {
                // Never larger than NATS takes (or the hub reads): one
                // alert too large must not stop the ones after it.
                body = serde_json::to_vec(&serde_json::json!({
                    "rule": a.alert.rule, "priority": a.alert.priority, "source": "lancet",
                    "time": lancet_engine::output::rfc3339_nanos(a.alert.time_ns), "time_ns": a.alert.time_ns,
                    "node": self.node, "cluster": self.cluster, "lancet_id": a.id, "lancet_truncated": true,
                }))?;
            }
            let msg = jetstream::message::PublishMessage::build()
                .message_id(format!("{}-{}-{}", self.node, a.id, a.alert.time_ns))
                .payload(body.into());
            match js.send_publish(subject.clone(), msg).await {
                Ok(ack) => acks.push((a.id, subject, ack)),
                Err(e) => {
                    self.settle(acks, refusals).await?;
                    return Err(anyhow!("publishing alert {}: {e}", a.id));
                }
            }
        }
        let n = acks.len();
        self.settle(acks, refusals).await?;
        Ok(n)
    }

    /// Awaits the acks in order; the cursor moves to the last one before
    /// the first failure.
    async fn settle(
        &mut self,
        acks: Vec<(u64, String, jetstream::context::PublishAckFuture)>,
        refusals: &super::refusals::Refusals,
    ) -> Result<()> {
        let before = self.cursor;
        let mut failed = None;
        for (id, subject, ack) in acks {
            let waited = tokio::select! {
                r = tokio::time::timeout(Duration::from_secs(3), ack) => r,
                refused = refusals.of(&subject) => {
                    failed = Some(anyhow::Error::new(refused).context(format!("alert {id} to {subject}")));
                    break;
                }
            };
            match waited {
                Ok(Ok(_)) => {
                    self.cursor = id;
                    self.sent += 1;
                }
                Ok(Err(e)) => {
                    failed = Some(anyhow!("alert {id} not acknowledged: {e}"));
                    break;
                }
                Err(_) => {
                    failed = Some(anyhow!("alert {id} not acknowledged in 3 s"));
                    break;
                }
            }
        }
        if self.cursor != before {
            self.save_cursor()?;
        }
        failed.map_or(Ok(()), Err)
    }

    /// The alert as the stream carries it: the agent's Falco-shaped JSON
    /// with `node`, `cluster` and the store's `id` added.
    fn document(&self, a: &lancet_store::StoredAlert) -> serde_json::Value {
        let mut v: serde_json::Value = serde_json::from_str(&a.alert.json).unwrap_or_else(|_| {
            serde_json::json!({
                "time": lancet_engine::output::rfc3339_nanos(a.alert.time_ns),
                "rule": a.alert.rule,
                "priority": a.alert.priority,
                "source": "lancet",
                "output_fields": {"container.id": a.alert.container_id, "container.name": a.alert.container_name},
            })
        });
        if let Some(o) = v.as_object_mut() {
            o.insert("node".into(), self.node.clone().into());
            o.insert("cluster".into(), self.cluster.clone().into());
            o.insert("lancet_id".into(), a.id.into());
            o.insert("time_ns".into(), a.alert.time_ns.into());
        }
        v
    }
}
