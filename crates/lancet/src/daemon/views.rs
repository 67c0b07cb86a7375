//! The answers behind the map and the dashboard: flow rollups, the
//! workloads at a glance (mode, drift, alert counts), one workload's
//! profile for review (entries with first and last seen, and what differs
//! from the image's baseline), and "add to profile" from an alert.

use super::workloads::workload_key;
use super::{now_ns, Daemon};
use crate::api::Reply;
use lancet_engine::flows::{FlowNode, FlowRow};
use lancet_engine::profile::{Deviation, Timestamp};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};

/// Alert counts cover this long.
const ALERT_WINDOW_NS: u64 = 24 * 3_600_000_000_000;
/// Baseline executables never run that a review lists by name.
const UNUSED_LISTED: usize = 200;

/// `{rows, nodes}`: the rollups since `since_ns` (touching `container`
/// when given) and the containers they name.
pub(crate) fn flows_json(store: &lancet_store::Store, since_ns: u64, container: Option<&str>, limit: usize) -> Result<Value, String> {
    let rows: Vec<FlowRow> = store.flows(since_ns, container, limit).map_err(|e| e.to_string())?;
    let named: HashSet<&str> = rows.iter().flat_map(|r| [r.src.id.as_str(), r.dst.id.as_str()]).collect();
    let nodes: Vec<FlowNode> = store
        .flow_nodes()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|n| named.contains(n.id.as_str()))
        .map(|n| FlowNode {
            labels: serde_json::from_str::<BTreeMap<String, String>>(&n.labels).unwrap_or_default(),
            id: n.id,
            name: n.name,
            workload: n.workload,
            image: n.image,
            namespace: n.namespace,
            last_ns: n.last_ns,
        })
        .collect();
    Ok(json!({ "rows": rows, "nodes": nodes }))
}

fn seen(first: Timestamp, last: Timestamp, count: u64) -> Value {
    json!({"firstSeen": first.0, "lastSeen": last.0, "count": count})
}

impl Daemon {
    /// The workloads at a glance: mode, live containers, profile size,
    /// whether an image baseline is known, alerts and drift in the last
    /// day; and the host's numbers.
    pub(super) fn overview(&self) -> Reply {
        let now = now_ns();
        let counts = self.store.alert_counts(now.saturating_sub(ALERT_WINDOW_NS)).map_err(|e| (500u16, e.to_string()))?;
        let mut containers: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for c in self.workloads.containers.values().filter(|c| self.workloads.is_live(&c.id)) {
            containers.entry(workload_key(c).into_owned()).or_default().push(json!({"id": c.id, "name": c.name}));
        }
        let mut workloads: Vec<Value> = self
            .workloads
            .map
            .iter()
            .map(|(k, w)| {
                let p = &w.profile;
                let a = counts.iter().find(|a| &a.workload == k);
                let ready = p.protect_readiness().err().unwrap_or_default();
                json!({
                    "workload": k,
                    "image": p.image(),
                    "mode": p.mode().to_string(),
                    "modeSince": p.mode_since(),
                    "entries": p.len(),
                    "baseline": p.baseline().is_some(),
                    "containers": containers.get(k).cloned().unwrap_or_default(),
                    "alerts": a.map_or(0, |a| a.total),
                    "drift": a.map_or(0, |a| a.drift),
                    "lastAlertNs": a.map(|a| a.last_ns),
                    "lastDeviationNs": w.last_deviation,
                    "notReady": ready,
                })
            })
            .collect();
        workloads.sort_by(|a, b| a["image"].as_str().cmp(&b["image"].as_str()).then(a["workload"].as_str().cmp(&b["workload"].as_str())));
        Ok(json!({
            "hostname": self.alerts.hostname,
            "version": env!("CARGO_PKG_VERSION"),
            "defaultMode": self.settings.mode.to_string(),
            "workloads": workloads,
            "containers": self.workloads.live_count(),
            "flowsTracked": self.flows.table.len(),
            "alertWindowHours": ALERT_WINDOW_NS / 3_600_000_000_000,
        }))
    }

    /// One workload's profile for review: every entry with when it was
    /// first and last seen, and the diff against its image's baseline.
    pub(super) fn review(&self, what: &str) -> Reply {
        let key = self.workloads.find(what)?;
        let w = &self.workloads.map[&key];
        let p = &w.profile;
        let s = p.spec();
        let baseline = p.baseline();
        let executables: Vec<Value> = s
            .executables
            .iter()
            .map(|e| {
                let mut v = seen(e.first_seen, e.last_seen, e.count);
                v["path"] = json!(e.path);
                v["parents"] = json!(e.parents);
                v["names"] = json!(e.names);
                v["inImage"] = json!(baseline.map(|b| b.lookup(&e.path).is_some()));
                v
            })
            .collect();
        let flows = |list: &[lancet_engine::profile::Flow]| -> Vec<Value> {
            list.iter()
                .map(|f| {
                    let mut v = seen(f.first_seen, f.last_seen, f.count);
                    v["peer"] = json!(f.peer.to_string());
                    v["port"] = json!(f.port);
                    v["protocol"] = json!(f.protocol.to_string());
                    v
                })
                .collect()
        };
        let paths = |list: &[lancet_engine::profile::PathEntry]| -> Vec<Value> {
            list.iter()
                .map(|e| {
                    let mut v = seen(e.first_seen, e.last_seen, e.count);
                    v["path"] = json!(e.path);
                    v
                })
                .collect()
        };
        let listening: Vec<Value> = s
            .listening
            .iter()
            .map(|l| {
                let mut v = seen(l.first_seen, l.last_seen, l.count);
                v["port"] = json!(l.port);
                v["protocol"] = json!(l.protocol.to_string());
                v
            })
            .collect();
        let diff = baseline.map(|b| {
            let run: HashSet<&str> = s.executables.iter().map(|e| e.path.as_str()).collect();
            let added: Vec<&str> = s.executables.iter().filter(|e| b.lookup(&e.path).is_none()).map(|e| e.path.as_str()).collect();
            let unused: Vec<&str> = b.executables().iter().map(|f| f.path.as_str()).filter(|p| !run.contains(p)).collect();
            json!({
                "imageDigest": b.digest,
                "notInImage": added,
                "imageExecutables": b.executables().len(),
                "neverRun": unused.len(),
                "neverRunListed": unused.iter().take(UNUSED_LISTED).collect::<Vec<_>>(),
            })
        });
        Ok(json!({
            "workload": key,
            "image": p.image(),
            "mode": p.mode().to_string(),
            "modeSince": p.mode_since(),
            "learningStarted": s.learning.started.0,
            "lastNew": s.learning.last_new.0,
            "notReady": p.protect_readiness().err().unwrap_or_default(),
            "executables": executables,
            "listening": listening,
            "outbound": flows(&s.outbound),
            "inbound": flows(&s.inbound),
            "writtenDirs": paths(&s.written_dirs),
            "sensitiveReads": paths(&s.sensitive_reads),
            "baselineDiff": diff,
        }))
    }

    /// Adds what alert `id` found missing to its workload's profile.
    pub(super) fn add_to_profile(&mut self, id: u64) -> Reply {
        let a = self
            .store
            .alert(id)
            .map_err(|e| (500u16, e.to_string()))?
            .ok_or_else(|| (404u16, format!("no alert {id} (it may have been pruned)")))?;
        let j: Value = serde_json::from_str(&a.alert.json).map_err(|e| (500u16, format!("alert {id} is not JSON: {e}")))?;
        let d = j["output_fields"].get("lancet.deviation").cloned().filter(|v| !v.is_null()).ok_or_else(|| {
            (409u16, format!("alert {id} ({}) is not about something missing from a profile; there is nothing to add", a.alert.rule))
        })?;
        let d: Deviation = serde_json::from_value(d).map_err(|e| (500u16, format!("alert {id}'s deviation is unreadable: {e}")))?;
        let key = if self.workloads.map.contains_key(&a.alert.workload) {
            a.alert.workload.clone()
        } else {
            self.workloads.find(&a.alert.container_name).unwrap_or_default()
        };
        let w = self.workloads.map.get_mut(&key).ok_or_else(|| (404u16, format!("workload {} is not loaded", a.alert.workload)))?;
        let added = w.profile.allow(&d, now_ns());
        if added {
            w.changed();
        }
        Ok(json!({"workload": key, "added": added, "entry": d.to_string().replace(" is not in the profile", ""), "alert": id}))
    }
}
