//! The loop's side of the fleet ([`crate::fleet`]): what the other nodes
//! observed and the modes the fleet decided, applied to the workloads;
//! this node's observations handed to the fleet thread once a second; and
//! promotions (API, CLI, dashboard, the lifecycle) proposed as a
//! compare-and-swap, the API's caller answered when the fleet has. Nothing
//! here waits on NATS: messages are taken with `try_recv` and given with
//! `try_send`, and what does not fit waits for the next second.

use super::workloads::{Workload, Workloads};
use super::{now_ns, Daemon};
use crate::api::{Caller, Reply, Responder};
use crate::fleet::presence::{RunningContainer, RunningWorkload, MAX_ADDRS, MAX_CONTAINERS_LISTED, MAX_WORKLOADS, PRESENCE_EVERY};
use crate::fleet::{keys, FromFleet, Link, ToFleet};
use lancet_engine::profile::{Mode, Profile};
use lancet_store::Store;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Other nodes per workload whose observations are kept.
const MAX_NODES_PER_WORKLOAD: usize = 64;
/// The other nodes' observations kept at most, as their documents' bytes:
/// a compromised node cannot make this agent hold more.
const MAX_REMOTE_BYTES: usize = 128 << 20;
/// Messages from the fleet thread taken per tick.
const PER_TICK: usize = 256;
/// A promotion's caller waits this long at most (the API gives up at 5 s).
const WAIT_FOR_FLEET: Duration = Duration::from_secs(5);

/// What the workloads know of the fleet.
#[derive(Default)]
pub(super) struct FleetBook {
    /// The mode the fleet decided per workload, at its revision.
    pub(super) modes: HashMap<String, (Mode, u64)>,
    /// The other nodes' observations, per workload and node, with the size
    /// of the document each came in.
    remote: HashMap<String, BTreeMap<String, (Arc<Profile>, usize)>>,
    remote_bytes: usize,
    /// Lifecycle promotions to propose at the next second.
    proposals: Vec<(String, Mode)>,
    /// Observations refused for the bounds above.
    pub(super) refused: u64,
}

impl FleetBook {
    /// Whether a workload is shared with the fleet (keyed by digest).
    pub(super) fn shares(&self, key: &str) -> bool {
        keys::workload_token(key).is_some()
    }

    pub(super) fn propose_later(&mut self, key: &str, mode: Mode) {
        if self.proposals.len() < 4096 && !self.proposals.iter().any(|(k, _)| k == key) {
            self.proposals.push((key.to_string(), mode));
        }
    }

    fn remote_of(&self, key: &str) -> Vec<Arc<Profile>> {
        self.remote.get(key).map(|m| m.values().map(|(p, _)| Arc::clone(p)).collect()).unwrap_or_default()
    }

    /// A workload loaded on this node takes the fleet's observations and
    /// mode.
    pub(super) fn join(&self, key: &str, w: &mut Workload, now: u64) {
        let remote = self.remote_of(key);
        if !remote.is_empty() {
            w.set_remote(remote);
        }
        if let Some((mode, _)) = self.modes.get(key) {
            w.profile.set_mode(*mode, now);
        }
    }

    /// False when the bounds refuse it.
    fn put_remote(&mut self, key: &str, node: &str, p: Arc<Profile>, bytes: usize) -> bool {
        let old = self.remote.get(key).and_then(|m| m.get(node)).map_or(0, |(_, b)| *b);
        let nodes = self.remote.get(key).map_or(0, |m| m.len());
        if self.remote_bytes - old + bytes > MAX_REMOTE_BYTES || (old == 0 && nodes >= MAX_NODES_PER_WORKLOAD) {
            self.refused += 1;
            return false;
        }
        self.remote_bytes = self.remote_bytes - old + bytes;
        self.remote.entry(key.to_string()).or_default().insert(node.to_string(), (p, bytes));
        true
    }

    fn remove_remote(&mut self, key: &str, node: &str) -> bool {
        let Some(m) = self.remote.get_mut(key) else { return false };
        let Some((_, b)) = m.remove(node) else { return false };
        self.remote_bytes -= b;
        if m.is_empty() {
            self.remote.remove(key);
        }
        true
    }
}

impl Workloads {
    /// A workload's profile replaced (reset, import): in a fleet it keeps
    /// the other nodes' observations in what it enforces (its mode is the
    /// one just given; the caller proposes it to the fleet).
    pub(super) fn replace(&mut self, key: &str, mut w: Workload) {
        if let Some(f) = &self.fleet {
            let remote = f.remote_of(key);
            if !remote.is_empty() {
                w.set_remote(remote);
            }
        }
        self.map.insert(key.to_string(), w);
    }

    /// The other nodes' observations of `key` changed: a loaded workload
    /// enforces the new merge from now on.
    fn remote_changed(&mut self, key: &str) {
        let Some(f) = &self.fleet else { return };
        let remote = f.remote_of(key);
        if let Some(w) = self.map.get_mut(key) {
            w.set_remote(remote);
        }
    }

    /// The fleet's mode for `key`: applied to the loaded workload, or to its
    /// stored profile (so a restart without NATS enforces it too). True
    /// when a loaded workload's mode changed.
    pub(super) fn apply_fleet_mode(&mut self, store: &mut Store, key: &str, mode: Mode, revision: u64, now: u64) -> bool {
        let Some(f) = self.fleet.as_mut() else { return false };
        if f.modes.get(key).is_some_and(|(_, r)| *r > revision) {
            return false;
        }
        f.modes.insert(key.to_string(), (mode, revision));
        if let Some(w) = self.map.get_mut(key) {
            if w.profile.mode() == mode {
                return false;
            }
            let shared_before = w.fleet_dirty;
            w.profile.set_mode(mode, now);
            w.changed();
            // A mode is not an observation: nothing new to share.
            w.fleet_dirty = shared_before;
            return true;
        }
        if let Ok(Some(stored)) = store.profile(key) {
            if stored.mode != mode.to_string() {
                if let Ok(mut p) = Profile::from_yaml(&stored.document, key) {
                    p.set_mode(mode, now);
                    let saved = p
                        .to_yaml()
                        .map_err(|e| e.to_string())
                        .and_then(|doc| store.put_profile(key, p.image(), &mode.to_string(), &doc, now).map_err(|e| e.to_string()));
                    if let Err(e) = saved {
                        tracing::warn!(workload = key, "fleet: mode not written to the stored profile: {e}");
                    }
                }
            }
        }
        false
    }
}

/// A promotion's caller, waiting for the fleet's answer.
struct Waiting {
    caller: Caller,
    control: Option<(String, String)>,
    responder: Responder,
    since: Instant,
}

/// The loop's fleet state.
pub(super) struct Fleet {
    link: Link,
    next_ticket: u64,
    /// API promotions waiting, by ticket.
    waiting: HashMap<u64, Waiting>,
    /// Proposals in flight (any origin), by workload: a lifecycle promotion
    /// is not proposed again while one is.
    in_flight: HashMap<String, u64>,
    pub(super) connected: bool,
    /// The workloads this node runs, as last handed to the fleet thread,
    /// and when they were last looked at.
    presence: Option<Vec<RunningWorkload>>,
    presence_at: Option<Instant>,
}

impl Fleet {
    pub(super) fn new(link: Link) -> Fleet {
        Fleet {
            link,
            next_ticket: 1,
            waiting: HashMap::new(),
            in_flight: HashMap::new(),
            connected: false,
            presence: None,
            presence_at: None,
        }
    }

    /// For `lancet status`: this node in the fleet, and whether NATS is
    /// reachable now.
    pub(super) fn status(&self) -> serde_json::Value {
        let c = &self.link.counters;
        let n = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        json!({
            "node": self.link.node,
            "cluster": self.link.cluster,
            "connected": self.connected,
            "waiting": self.waiting.len(),
            "alertsSent": n(&c.alerts_sent),
            "alertsLost": n(&c.alerts_lost),
            "alertCursor": n(&c.alert_cursor),
            "refusedByNats": n(&c.refused),
            "lastError": c.error(),
            "refusals": c.recent_refusals(),
        })
    }

    /// Whether a proposal for `workload` waits for its answer.
    #[cfg(test)]
    pub(super) fn in_flight(&self, workload: &str) -> bool {
        self.in_flight.contains_key(workload)
    }

    fn propose(&mut self, workload: &str, mode: Mode, expected: Option<u64>) -> Option<u64> {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let msg = ToFleet::Propose { workload: workload.to_string(), mode, expected, ticket };
        self.link.send(msg).ok()?;
        self.in_flight.insert(workload.to_string(), ticket);
        Some(ticket)
    }
}

/// What [`Daemon::fleet_promote`] did.
pub(super) enum Promotion {
    /// Not a fleet matter (no fleet, or the workload is not shared).
    Local,
    /// Proposed; the caller is answered when the fleet is.
    Sent(u64),
    Refused(Reply),
}

impl Daemon {
    /// A promotion of a shared workload: a compare-and-swap of its mode key
    /// from the revision this node last saw. Checks first what a local
    /// promotion checks (the mode, protect readiness of what is enforced).
    pub(super) fn fleet_promote(&mut self, workload: &str, mode: &str, force: bool, revision: Option<u64>) -> Promotion {
        if self.fleet.is_none() {
            return Promotion::Local;
        }
        let key = match self.workloads.find(workload) {
            Ok(k) => k,
            Err(e) => return Promotion::Refused(Err(e)),
        };
        let Some(expected) = self.workloads.fleet.as_ref().filter(|f| f.shares(&key)).map(|f| f.modes.get(&key).map(|(_, r)| *r)) else {
            return Promotion::Local;
        };
        let expected = revision.or(expected);
        let mode = match mode.parse::<Mode>() {
            Ok(m) => m,
            Err(e) => return Promotion::Refused(Err((400, e))),
        };
        if mode == Mode::Protect && !force {
            if let Some(Err(reasons)) = self.workloads.map.get_mut(&key).map(|w| w.enforced().protect_readiness()) {
                return Promotion::Refused(Err((
                    409,
                    format!("{key} is not ready for protect mode: {} (--force to promote anyway)", reasons.join("; ")),
                )));
            }
        }
        let Some(fleet) = self.fleet.as_mut() else { return Promotion::Local };
        match fleet.propose(&key, mode, expected) {
            Some(t) => Promotion::Sent(t),
            None => Promotion::Refused(Err((503, "the fleet thread is busy or gone: the mode was not changed".into()))),
        }
    }

    /// The workloads with a live container here, each with the mode this
    /// node enforces, its containers and their addresses (bounded as the
    /// document that carries them).
    pub(super) fn presence(&self) -> Vec<RunningWorkload> {
        let addresses = self.flows.addresses_by_container();
        let mut by: BTreeMap<String, Vec<&Arc<lancet_engine::attribution::ContainerInfo>>> = BTreeMap::new();
        for c in self.workloads.containers.values().filter(|c| self.workloads.is_live(&c.id)) {
            by.entry(super::workloads::workload_key(c).into_owned()).or_default().push(c);
        }
        by.into_iter()
            .take(MAX_WORKLOADS)
            .map(|(key, mut cs)| {
                cs.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
                let w = self.workloads.map.get(&key);
                RunningWorkload {
                    image: w.map(|w| w.profile.image().to_string()).unwrap_or_else(|| cs[0].image.clone()),
                    mode: w.map_or(self.settings.mode, |w| w.profile.mode()).to_string(),
                    count: cs.len() as u32,
                    containers: cs
                        .iter()
                        .take(MAX_CONTAINERS_LISTED)
                        .map(|c| RunningContainer {
                            id: c.id.clone(),
                            name: c.name.clone(),
                            addrs: addresses
                                .get(c.id.as_str())
                                .map(|a| a.iter().take(MAX_ADDRS).map(|ip| ip.to_string()).collect())
                                .unwrap_or_default(),
                        })
                        .collect(),
                    workload: key,
                }
            })
            .collect()
    }

    /// Keeps `call`'s caller waiting for proposal `ticket`.
    pub(super) fn wait_for_fleet(&mut self, ticket: u64, caller: Caller, control: Option<(String, String)>, responder: Responder) {
        if let Some(f) = self.fleet.as_mut() {
            f.waiting.insert(ticket, Waiting { caller, control, responder, since: Instant::now() });
        }
    }

    /// After a reset or an import of a shared workload, the fleet follows
    /// the mode it now has (proposed like any other change).
    pub(super) fn fleet_follow(&mut self, key: &str) {
        let Some(mode) = self.workloads.map.get(key).map(|w| w.profile.mode()) else { return };
        let Some(expected) = self.workloads.fleet.as_ref().filter(|f| f.shares(key)).map(|f| f.modes.get(key).map(|(_, r)| *r)) else {
            return;
        };
        if let Some(f) = self.fleet.as_mut() {
            f.propose(key, mode, expected);
        }
    }

    /// Each tick: what the fleet thread sent, applied. Containers follow
    /// at once when a mode or a merged profile changed.
    pub(super) fn fleet_tick(&mut self) {
        let mut touched = false;
        for _ in 0..PER_TICK {
            let Some(msg) = self.fleet.as_mut().and_then(|f| f.link.try_recv()) else { break };
            touched |= self.on_fleet(msg);
        }
        if touched {
            self.sync_protection();
        }
    }

    pub(super) fn on_fleet(&mut self, msg: FromFleet) -> bool {
        let now = now_ns();
        match msg {
            FromFleet::Observations { workload, node, profile, bytes } => {
                let Some(book) = self.workloads.fleet.as_mut() else { return false };
                if !book.put_remote(&workload, &node, Arc::from(profile), bytes) {
                    tracing::warn!(%workload, %node, bytes, "fleet: observations not kept: over the bounds");
                    return false;
                }
                tracing::debug!(%workload, %node, "fleet: another node's observations");
                self.workloads.remote_changed(&workload);
                true
            }
            FromFleet::ObservationsGone { workload, node } => {
                let removed = self.workloads.fleet.as_mut().is_some_and(|b| b.remove_remote(&workload, &node));
                if removed {
                    self.workloads.remote_changed(&workload);
                }
                removed
            }
            FromFleet::Mode { workload, mode, revision, by } => {
                let changed = self.workloads.apply_fleet_mode(&mut self.store, &workload, mode, revision, now);
                if changed {
                    tracing::info!(%workload, %mode, revision, by = %by, "fleet: mode applied");
                }
                changed
            }
            FromFleet::Proposed { workload, mode, ticket, result } => self.on_proposed(&workload, mode, ticket, result, now),
            FromFleet::Connected(up) => {
                if let Some(f) = self.fleet.as_mut() {
                    f.connected = up;
                }
                false
            }
        }
    }

    /// A proposal's answer. Won: applied here at once (the watch brings the
    /// same revision later). Lost: the fleet's mode stays, and is put back
    /// here if a local change (reset, import) had moved away from it.
    fn on_proposed(&mut self, workload: &str, mode: Mode, ticket: u64, result: Result<u64, (u16, String)>, now: u64) -> bool {
        let waiting = self.fleet.as_mut().and_then(|f| {
            if f.in_flight.get(workload) == Some(&ticket) {
                f.in_flight.remove(workload);
            }
            f.waiting.remove(&ticket)
        });
        let touched = match &result {
            Ok(rev) => {
                tracing::info!(%workload, %mode, revision = rev, "fleet: mode changed");
                self.workloads.apply_fleet_mode(&mut self.store, workload, mode, *rev, now)
            }
            Err((status, why)) => {
                // A caller is told; the lifecycle tries again each second
                // while NATS is away: not worth a line each time.
                if waiting.is_some() {
                    tracing::info!(%workload, %mode, status, "fleet: mode not changed: {why}");
                } else {
                    tracing::debug!(%workload, %mode, status, "fleet: mode not changed: {why}");
                }
                match self.workloads.fleet.as_ref().and_then(|f| f.modes.get(workload)).copied() {
                    Some((m, rev)) => {
                        // Forget the revision so the same one applies again.
                        if let Some(f) = self.workloads.fleet.as_mut() {
                            f.modes.remove(workload);
                        }
                        self.workloads.apply_fleet_mode(&mut self.store, workload, m, rev, now)
                    }
                    None => false,
                }
            }
        };
        if let Some(w) = waiting {
            let reply: Reply = result.map(|rev| json!({"workload": workload, "mode": mode.to_string(), "revision": rev}));
            self.finish_call(w.caller, w.control, false, &reply);
            w.responder.send(reply);
        }
        touched
    }

    /// Once a second: this node's changed observations to the fleet, the
    /// lifecycle's promotions proposed, callers waiting too long let go.
    pub(super) fn fleet_every_second(&mut self) {
        let due = self.fleet.as_ref().is_some_and(|f| f.presence_at.is_none_or(|t| t.elapsed() >= PRESENCE_EVERY));
        let presence = due.then(|| self.presence());
        let Some(fleet) = self.fleet.as_mut() else { return };
        if let Some(p) = presence {
            fleet.presence_at = Some(Instant::now());
            if fleet.presence.as_ref() != Some(&p) && fleet.link.send(ToFleet::Presence(p.clone())).is_ok() {
                fleet.presence = Some(p);
            }
        }
        for (key, w) in self.workloads.map.iter_mut().filter(|(k, w)| w.fleet_dirty && keys::workload_token(k).is_some()) {
            let yaml = match w.profile.to_yaml() {
                Ok(y) => y,
                Err(e) => {
                    tracing::warn!(workload = %key, "fleet: observations not serialised: {e}");
                    continue;
                }
            };
            if fleet.link.send(ToFleet::Observations { workload: key.clone(), yaml }).is_err() {
                break;
            }
            w.fleet_dirty = false;
        }
        let proposals = self.workloads.fleet.as_mut().map(|b| std::mem::take(&mut b.proposals)).unwrap_or_default();
        for (key, mode) in proposals {
            if fleet.in_flight.contains_key(&key) {
                continue;
            }
            let expected = self.workloads.fleet.as_ref().and_then(|b| b.modes.get(&key)).map(|(_, r)| *r);
            tracing::debug!(workload = %key, to = %mode, "fleet: the lifecycle proposes a promotion");
            fleet.propose(&key, mode, expected);
        }
        let stale: Vec<u64> = fleet.waiting.iter().filter(|(_, w)| w.since.elapsed() > WAIT_FOR_FLEET).map(|(t, _)| *t).collect();
        for t in stale {
            if let Some(w) = fleet.waiting.remove(&t) {
                w.responder.send(Err((504, "the fleet did not answer in time: the mode may or may not have changed".into())));
            }
        }
    }
}
