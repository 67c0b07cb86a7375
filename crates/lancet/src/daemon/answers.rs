//! Answers to the local API: profiles (list, show, promote, reset,
//! import), alerts, containers, enforcement status and operator responses
//! (isolate, freeze, release).

use super::workloads::{workload_key, Workload};
use super::{now_ns, Daemon};
use crate::api::{Reply, Request};
use crate::config::parse_duration;
use lancet_engine::profile::{Mode, Profile};
use serde_json::json;

impl Daemon {
    pub(super) fn answer(&mut self, req: Request) -> Reply {
        let not_found = |w: &str| (404u16, format!("no workload, container or image matches {w:?}"));
        let now = now_ns();
        match req {
            Request::Profiles => Ok(json!(self
                .workloads
                .map
                .iter()
                .map(|(k, w)| {
                    let revision = self.workloads.fleet.as_ref().and_then(|f| f.modes.get(k)).map(|(_, r)| *r);
                    json!({"workload": k, "image": w.profile.image(), "mode": w.profile.mode().to_string(), "entries": w.profile.len(), "revision": revision})
                })
                .collect::<Vec<_>>())),
            Request::Profile { workload } => {
                let key = self.workloads.find(&workload)?;
                let w = &self.workloads.map[&key];
                Ok(json!({"workload": key, "yaml": w.profile.to_yaml().map_err(|e| (500u16, e.to_string()))?}))
            }
            Request::Promote { workload, mode, force, dry_run, revision } => {
                let key = self.workloads.find(&workload)?;
                if revision.is_some() && !dry_run {
                    return Err((400u16, format!("{key}: a revision applies to a workload shared with a fleet (`lancet run --nats`)")));
                }
                let mode = mode.parse::<Mode>().map_err(|e| (400u16, e))?;
                if dry_run {
                    return Ok(self.dry_run(&key, mode, now));
                }
                let w = self.workloads.map.get_mut(&key).ok_or_else(|| not_found(&workload))?;
                if mode == Mode::Protect && !force {
                    if let Err(reasons) = w.enforced().protect_readiness() {
                        return Err((409u16, format!("{key} is not ready for protect mode: {} (--force to promote anyway)", reasons.join("; "))));
                    }
                }
                w.profile.set_mode(mode, now);
                w.changed();
                Ok(json!({"workload": key, "mode": mode.to_string()}))
            }
            Request::Reset { workload } => {
                let key = self.workloads.find(&workload)?;
                let image = self.workloads.map[&key].profile.image().to_string();
                let mut p = Profile::new(&image, &key, now);
                p.set_mode(Mode::Learn, now);
                self.workloads.replace(&key, Workload::new(p));
                Ok(json!({"workload": key, "mode": "learn"}))
            }
            Request::Import { yaml } => {
                let p = Profile::from_yaml(&yaml, "<import>").map_err(|e| (400u16, e.to_string()))?;
                // `lancet scan` keys its profile by config digest; runtimes
                // that know the manifest digest key the workload by that.
                let manifest = p.baseline().and_then(|b| b.manifest_digest.clone());
                let key = manifest
                    .filter(|m| self.workloads.map.contains_key(m) || self.workloads.containers.values().any(|c| c.image_digest == *m))
                    .unwrap_or_else(|| p.digest().to_string());
                self.workloads.replace(&key, Workload::new(p));
                Ok(json!({"workload": key}))
            }
            Request::Hook { .. } | Request::Refused { .. } | Request::Metrics => {
                Err((500u16, "hook, metrics and refused requests are answered by `on_call`".to_string()))
            }
            Request::Alerts { .. } | Request::Audit { .. } | Request::Flows { .. } => {
                Err((500u16, "alerts, audit and flows are read by the API from the store, off the loop".to_string()))
            }
            Request::Overview => self.overview(),
            Request::Review { workload } => self.review(&workload),
            Request::AddToProfile { alert } => self.add_to_profile(alert),
            Request::Respond { container, action, expire } => self.respond(&container, &action, expire),
            Request::Enforcement => {
                let mut v = match &self.guarding.protector {
                    Some(p) => p.report(),
                    None => json!({"backends": [], "note": "no workload is in protect mode; enforcement is not loaded"}),
                };
                if let (Some(f), Some(o)) = (&self.fleet, v.as_object_mut()) {
                    let mut status = f.status();
                    if let (Some(b), Some(s)) = (&self.workloads.fleet, status.as_object_mut()) {
                        s.insert("observationsRefused".into(), json!(b.refused));
                        // Alerts in the store the stream has not taken yet
                        // (the spool while NATS is away).
                        let last = self.store.last_alert_id().unwrap_or(0);
                        let cursor = s.get("alertCursor").and_then(|v| v.as_u64()).unwrap_or(0);
                        s.insert("alertsWaiting".into(), json!(last.saturating_sub(cursor)));
                    }
                    o.insert("fleet".into(), status);
                }
                Ok(v)
            }
            Request::Containers => Ok(json!(self
                .workloads
                .containers
                .values()
                .map(|c| json!({"id": c.id, "name": c.name, "image": c.image, "workload": workload_key(c)}))
                .collect::<Vec<_>>())),
        }
    }

    /// What the workload's running containers are doing now that `mode`
    /// would refuse (its profile's deviations), what its recent life did
    /// that `mode` would refuse (monitor's would-block alerts of the last
    /// day, folded by rule and subject), and why the profile is not ready
    /// for protect mode, if it is not. Changes nothing.
    fn dry_run(&mut self, key: &str, mode: Mode, now: u64) -> serde_json::Value {
        let containers: Vec<_> =
            self.workloads.containers.values().filter(|c| workload_key(c) == key && self.workloads.is_live(&c.id)).cloned().collect();
        let mut refused = Vec::new();
        for c in &containers {
            let Some(cgid) = self.workloads.live(&c.id).map(|l| l.cgroup_id) else { continue };
            let mut seen = std::collections::HashSet::new();
            for ev in super::seed::live_events(c, &self.settings.protect.host_root, &self.guarding.cgroup_dir(c), cgid, now) {
                let peer = match &ev.kind {
                    lancet_engine::event::EventKind::Net(n) => Some(self.workloads.peer(n.daddr)),
                    _ => None,
                };
                let Some(w) = self.workloads.map.get_mut(key) else { break };
                if let Some(d) = w.enforced().check(&ev, peer.as_ref()) {
                    let what = d.to_string();
                    if seen.insert(what.clone()) {
                        refused.push(json!({"container": c.name, "what": what}));
                    }
                }
            }
        }
        let not_ready = match (mode, self.workloads.map.get_mut(key).map(|w| w.enforced().protect_readiness())) {
            (Mode::Protect, Some(Err(reasons))) => reasons,
            _ => Vec::new(),
        };
        let recent = if mode == Mode::Protect { self.recent_would_block(key, now) } else { Vec::new() };
        json!({"workload": key, "mode": mode.to_string(), "containers": containers.len(), "wouldRefuse": refused, "recentlyWouldRefuse": recent, "notReady": not_ready})
    }

    /// The workload's alerts of the last day that protect mode would have
    /// enforced (`lancet.would_block`), one entry per rule and subject with
    /// how often and when last; at most [`RECENT_MAX`].
    fn recent_would_block(&self, key: &str, now: u64) -> Vec<serde_json::Value> {
        const DAY_NS: u64 = 86_400 * 1_000_000_000;
        const RECENT_MAX: usize = 50;
        let q = lancet_store::AlertQuery { since_ns: Some(now.saturating_sub(DAY_NS)), container: None, rule: None, limit: 5000 };
        let rows = match self.store.alerts(&q) {
            Ok(r) => r,
            Err(e) => return vec![json!({"rule": "(the store could not be read)", "what": format!("{e:#}")})],
        };
        let mut out: Vec<serde_json::Value> = Vec::new();
        for a in rows.iter().filter(|a| a.alert.workload == key && !a.alert.enforced) {
            let Ok(j) = serde_json::from_str::<serde_json::Value>(&a.alert.json) else { continue };
            if j["output_fields"]["lancet.would_block"] != true {
                continue;
            }
            let what = j["output"].as_str().unwrap_or("").split(" (").next().unwrap_or("").to_string();
            match out.iter().position(|e| e["rule"] == a.alert.rule.as_str() && e["what"] == what.as_str()) {
                Some(i) => {
                    let e = &mut out[i];
                    e["count"] = json!(e["count"].as_u64().unwrap_or(0) + a.alert.count);
                    if e["lastNs"].as_u64().unwrap_or(0) < a.last_time_ns {
                        e["lastNs"] = json!(a.last_time_ns);
                    }
                }
                None if out.len() < RECENT_MAX => out
                    .push(json!({"rule": a.alert.rule, "what": what, "count": a.alert.count, "lastNs": a.last_time_ns, "container": a.alert.container_name})),
                None => {}
            }
        }
        out
    }

    /// An operator's isolate, freeze or release of one container.
    fn respond(&mut self, container: &str, action: &str, expire: Option<String>) -> Reply {
        let c = self.workloads.resolve(container).cloned()?;
        let expire = match expire {
            Some(e) => parse_duration(&e).map_err(|e| (400u16, format!("{e:#}")))?,
            None => self.guarding.opts.response_expiry,
        };
        let live = self.workloads.live(&c.id).unwrap_or_default();
        let dir = self.guarding.cgroup_dir(&c);
        let p = self.guarding.protector();
        let cgid = if live.cgroup_id != 0 { live.cgroup_id } else { lancet_sensor::enforce::cgroup_id(&dir).ok().unwrap_or(0) };
        let message = match action {
            "isolate" => p.isolate(&c.id, cgid, &dir, expire).map(|()| format!("{} isolated for {}s", c.name, expire.as_secs())),
            "freeze" => p.freeze(&c.id, cgid, &dir, expire).map(|()| format!("{} frozen for {}s", c.name, expire.as_secs())),
            "release" => {
                let done = p.release(&c.id);
                Ok(if done.is_empty() {
                    format!("{} was neither isolated nor frozen", c.name)
                } else {
                    format!("{} released ({})", c.name, done.join(", "))
                })
            }
            other => return Err((404u16, format!("unknown action {other:?} (isolate, freeze or release)"))),
        }
        .map_err(|e| (500u16, e))?;
        tracing::info!(container = %c.name, action, "operator response");
        Ok(json!({"container": c.id, "action": action, "message": message}))
    }
}
