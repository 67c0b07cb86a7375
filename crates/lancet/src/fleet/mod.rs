//! The fleet: agents on many hosts sharing what they learn through NATS
//! JetStream, built on its KV buckets and streams rather than a protocol of
//! our own.
//!
//! - Profiles per image digest in the KV bucket [`keys::PROFILES_BUCKET`]:
//!   each node writes its own observations under `<digest>.obs.<node>` (one
//!   writer per key: no write races), and every node enforces its own
//!   profile merged with the other nodes' (the engine's `Profile::merge`).
//!   The workload's mode is `<digest>.mode`, changed only by
//!   compare-and-swap on its revision (a promotion that lost the race is a
//!   409), and applied by every node from a KV watch.
//! - Alerts to the stream [`keys::ALERTS_STREAM`], read from the agent's
//!   own store in order ([`alerts`]): the store is the spool while NATS is
//!   away.
//! - A heartbeat per node in [`keys::NODES_BUCKET`], read by `lancet hub`
//!   ([`hub`]).
//!
//! All NATS I/O runs in a thread of its own with its own tokio runtime
//! ([`session`]); the agent's event loop talks to it through two bounded
//! channels and never waits on it ([`Link`]): a node cut off from NATS
//! keeps enforcing what its store holds and catches up when NATS returns.

pub mod alerts;
pub mod auth;
mod cache;
pub mod hub;
mod hub_http;
mod hub_store;
mod hub_ui;
mod hub_view;
pub mod keys;
pub mod presence;
mod refusals;
mod report;
mod session;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod testserver;

use anyhow::{bail, Context, Result};
use lancet_engine::profile::{Mode, Profile};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// `lancet run`'s fleet flags.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct FleetArgs {
    /// Join a fleet through this NATS server (JetStream enabled), e.g.
    /// nats://127.0.0.1:4222. Without it the agent stands alone.
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// This node's name in the fleet (default: the hostname).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// The cluster this node belongs to (default `default`).
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    #[command(flatten)]
    pub security: auth::NatsSecurityArgs,
}

/// What the fleet thread needs.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub url: String,
    pub node: String,
    pub cluster: String,
    /// The agent's store, read (read-only) for the alerts to forward; None:
    /// no alerts are forwarded.
    pub store: Option<PathBuf>,
    /// Where the alert cursor is kept (the agent's state directory).
    pub state_dir: Option<PathBuf>,
    /// `lancet doctor`'s report, sent in the heartbeat once known.
    pub guarantees: Arc<std::sync::OnceLock<serde_json::Value>>,
    /// Who this node is to NATS, and which servers it trusts.
    pub security: auth::NatsSecurity,
}

impl FleetArgs {
    /// The fleet settings (flags first, then the configuration file), or
    /// None without a NATS URL. A name given by hand may hold dots (a
    /// Kubernetes node name, `--node=$(NODE_NAME)` in the DaemonSet), which
    /// become `_`; anything else that is not one token is an error. The
    /// hostname, taken by default, is made into one.
    pub fn config(&self, file: &crate::config::FileConfig, state_dir: &std::path::Path) -> Result<Option<FleetConfig>> {
        let (node, cluster) = (self.node.clone().or(file.node.clone()), self.cluster.clone().or(file.cluster.clone()));
        let Some(url) = self.nats.clone().or(file.nats.clone()) else {
            if node.is_some() || cluster.is_some() {
                bail!("--node and --cluster name this agent in a fleet: give the fleet's NATS server too (--nats URL)");
            }
            if self.security.any() {
                bail!("the --nats-* credentials and certificates are for a fleet: give the fleet's NATS server too (--nats URL)");
            }
            return Ok(None);
        };
        let name = |what: &str, v: String| {
            keys::name_of(&v).ok_or_else(|| anyhow::anyhow!("{what} {v:?}: 1 to {} of A-Z, a-z, 0-9, '_', '-' and '.'", keys::MAX_NAME))
        };
        let node = match node {
            Some(n) => name("--node", n)?,
            None => keys::sanitize_name(&crate::agent::hostname()),
        };
        let cluster = name("--cluster", cluster.unwrap_or_else(|| "default".into()))?;
        let security = self.security.resolve(file)?;
        Ok(Some(FleetConfig {
            url,
            node,
            cluster,
            store: Some(state_dir.join("lancet.db")),
            state_dir: Some(state_dir.to_path_buf()),
            guarantees: Arc::default(),
            security,
        }))
    }
}

/// From the loop to the fleet thread.
#[derive(Debug)]
pub enum ToFleet {
    /// This node's observations of a workload (its profile as YAML): the
    /// latest per workload is written, older ones still queued are dropped.
    Observations { workload: String, yaml: String },
    /// The workloads this node runs now (written to `<node>.workloads`
    /// when it changed).
    Presence(Vec<presence::RunningWorkload>),
    /// Set the workload's mode if its mode key is still at `expected` (None:
    /// if it has none). The answer comes back as [`FromFleet::Proposed`]
    /// with the same `ticket`.
    Propose { workload: String, mode: Mode, expected: Option<u64>, ticket: u64 },
}

/// From the fleet thread to the loop.
#[derive(Debug)]
pub enum FromFleet {
    /// Another node's observations (parsed and checked off the loop).
    Observations { workload: String, node: String, profile: Box<Profile>, bytes: usize },
    /// Another node's observations were deleted.
    ObservationsGone { workload: String, node: String },
    /// The workload's mode in the fleet, at `revision`.
    Mode { workload: String, mode: Mode, revision: u64, by: String },
    /// The result of a [`ToFleet::Propose`]: the new revision, or an HTTP
    /// status and why (409: another change won; 503: NATS unreachable).
    Proposed { workload: String, mode: Mode, ticket: u64, result: std::result::Result<u64, (u16, String)> },
    /// NATS became reachable (true) or not (false).
    Connected(bool),
}

/// Queue lengths between the loop and the fleet thread. The loop only ever
/// `try_send`s: when the queue is full the message waits in the loop's own
/// state for the next second.
const TO_FLEET: usize = 1024;
const FROM_FLEET: usize = 4096;

/// What the fleet thread counts, for `lancet status` (read without
/// waiting).
#[derive(Debug, Default)]
pub struct Counters {
    /// Alerts the stream acknowledged since start.
    pub alerts_sent: AtomicU64,
    /// Alerts pruned from the store before NATS could take them.
    pub alerts_lost: AtomicU64,
    /// The last alert id the stream acknowledged (0: none yet).
    pub alert_cursor: AtomicU64,
    /// Writes NATS refused by its permissions (each kept to try again:
    /// observations stay queued, alerts in the store).
    pub refused: AtomicU64,
    /// Why the link is not connected, or the last write NATS refused;
    /// empty when all is well.
    pub last_error: std::sync::Mutex<String>,
    /// The last refusals, newest last (a heartbeat refused every 2 s must
    /// not hide the observations refused once).
    pub refusals: std::sync::Mutex<std::collections::VecDeque<String>>,
}

/// Refusals `lancet status` shows.
const RECENT_REFUSALS: usize = 8;

impl Counters {
    pub fn record_refusal(&self, e: String) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let mut r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        r.retain(|x| *x != e);
        if r.len() >= RECENT_REFUSALS {
            r.pop_front();
        }
        r.push_back(e.clone());
        drop(r);
        self.set_error(e);
    }

    pub fn recent_refusals(&self) -> Vec<String> {
        self.refusals.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    pub fn set_error(&self, e: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    pub fn error(&self) -> String {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The loop's end of the fleet thread.
pub struct Link {
    pub node: String,
    pub cluster: String,
    pub counters: Arc<Counters>,
    tx: mpsc::Sender<ToFleet>,
    rx: mpsc::Receiver<FromFleet>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Link {
    /// Starts the fleet thread; it connects (and reconnects) by itself.
    /// The credential files are checked first: a seed others can read, or
    /// a missing CA, stops the agent here with the path.
    pub fn start(cfg: FleetConfig) -> Result<Link> {
        cfg.security.check(lancet_sensor::features::euid())?;
        let (tx, to_rx) = mpsc::channel(TO_FLEET);
        let (from_tx, rx) = mpsc::channel(FROM_FLEET);
        let stop = Arc::new(AtomicBool::new(false));
        let (node, cluster) = (cfg.node.clone(), cfg.cluster.clone());
        let thread_stop = Arc::clone(&stop);
        let counters = Arc::new(Counters::default());
        let thread_counters = Arc::clone(&counters);
        let thread = std::thread::Builder::new()
            .name("lancet-fleet".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("fleet: no runtime, the node stays alone: {e}");
                        return;
                    }
                };
                rt.block_on(session::run(cfg, to_rx, from_tx, thread_stop, thread_counters));
            })
            .context("starting the fleet thread")?;
        Ok(Link { node, cluster, counters, tx, rx, stop, thread: Some(thread) })
    }

    /// Hands a message to the fleet thread without waiting: Err(msg) when
    /// its queue is full (or it is gone).
    pub fn send(&self, msg: ToFleet) -> std::result::Result<(), ToFleet> {
        self.tx.try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m) => m,
        })
    }

    /// The next message from the fleet thread, if one is waiting.
    pub fn try_recv(&mut self) -> Option<FromFleet> {
        self.rx.try_recv().ok()
    }
}

impl Drop for Link {
    /// Asks the thread to stop and gives it a moment to write what is
    /// queued; never waits longer than that.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}
