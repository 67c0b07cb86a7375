//! Alerts: one Falco-shaped JSON line per verdict, deduplicated (the same
//! rule, workload and subject inside the window is one alert with a count)
//! and rate limited per workload, written to the alerts output and the
//! store. Drift and enforced alerts are never rate-limited away.

use super::Daemon;
use anyhow::Result;
use lancet_engine::alerts::{Admit, AlertKey, Deduper};
use lancet_engine::attribution::{Attribution, ContainerInfo};
use lancet_engine::event::Event;
use lancet_engine::output::{falco_json, summary, Record};
use lancet_engine::policy::{effective_action, Action, Severity, Verdict};
use lancet_engine::profile::Deviation;
use lancet_engine::profile::Mode;
use lancet_engine::verdicts::AlertFields;
use lancet_store::{NewAlert, Store};
use serde_json::json;
use std::io::Write;
use std::sync::Arc;

/// Where alerts go, and what folds their repeats.
pub(super) struct Alerts {
    pub(super) deduper: Deduper,
    pub(super) out: Option<Box<dyn Write>>,
    pub(super) hostname: String,
    /// Verdicts and alerts counted for `/metrics`.
    pub(super) tally: super::metrics::Tally,
    /// The dashboard's live feed: every alert written, as JSON, to whoever
    /// listens (nothing is kept when no one does).
    pub(super) live: Option<tokio::sync::broadcast::Sender<Arc<str>>>,
    /// HTTP (Falcosidekick) and syslog targets, each on a thread of its own.
    pub(super) outputs: crate::outputs::Outputs,
}

/// What protect mode did about one verdict.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    /// The step taken (the rule's, or the ladder's after escalation).
    pub(super) action: Option<Action>,
    pub(super) enforced: bool,
    /// What was done, for `lancet.response`.
    pub(super) note: String,
}

impl Alerts {
    /// Folds counts of repeats whose window closed into their stored alerts.
    pub(super) fn fold_repeats(&mut self, store: &mut Store, now: u64) -> Result<()> {
        for f in self.deduper.expire(now) {
            if let Some(id) = f.id {
                store.update_alert_count(id, f.count, f.last_ns)?;
            }
        }
        Ok(())
    }

    /// Writes one alert, unless it repeats one inside the window or the
    /// workload spent its budget (rate limiting spares drift and what was
    /// enforced).
    #[allow(clippy::too_many_arguments)]
    fn raise(
        &mut self,
        store: &mut Store,
        ev: &Event,
        c: &Arc<ContainerInfo>,
        key: &str,
        mode: Mode,
        v: &Verdict,
        outcome: Outcome,
        deviation: Option<&Deviation>,
    ) -> Result<()> {
        let akey = AlertKey { rule: v.rule.to_string(), workload: key.to_string(), subject: summary(ev) };
        let (rule_action, would_block) = effective_action(v.action, mode);
        // Protect mode refuses a deviation whatever rule fired with it.
        let would_block = would_block || (mode != Mode::Protect && deviation.is_some_and(Deviation::refused_in_protect));
        let action = outcome.action.unwrap_or(rule_action);
        // What was enforced, drift, and high or critical findings are never
        // muted (still deduplicated).
        let rate_limit = !outcome.enforced && v.policy.as_str() != "drift" && v.severity < Severity::High;
        let muted = match self.deduper.admit_with(&akey, ev.time_ns, rate_limit) {
            Admit::New { muted } => muted,
            Admit::Repeat { .. } | Admit::RateLimited => return Ok(()),
        };
        let attribution = Attribution::Container(Arc::clone(c));
        let mut j = falco_json(&Record { event: ev, attribution: &attribution, hostname: &self.hostname }, &v.rule, v.priority());
        j["tags"] = json!(v.tags);
        j["output"] = json!(format!("{} ({})", v.message, j["output"].as_str().unwrap_or("")));
        if let Some(f) = j["output_fields"].as_object_mut() {
            AlertFields {
                action,
                enforced: outcome.enforced,
                would_block,
                mode,
                workload: key,
                policy: &v.policy,
                count: 1,
                muted: (muted > 0).then_some(muted),
                response: (!outcome.note.is_empty()).then_some(outcome.note.as_str()),
                deviation,
            }
            .insert_into(f);
        }
        let id = self.emit(
            store,
            &j,
            NewAlert {
                time_ns: ev.time_ns,
                rule: v.rule.to_string(),
                priority: v.priority().to_string(),
                container_id: c.id.clone(),
                container_name: c.name.clone(),
                image: c.image.clone(),
                workload: key.to_string(),
                action: action.to_string(),
                enforced: outcome.enforced,
                count: 1,
                json: String::new(),
            },
        )?;
        self.deduper.set_id(&akey, id);
        Ok(())
    }

    /// Writes an alert to the output and the store (`row.json` is filled
    /// from `j`); returns its id in the store.
    /// An alert about the host or lancet itself (no container): Falco's
    /// shape, with `container.id` and `container.name` set to `host` as
    /// Falco does for host events. `fields` (an object) adds to the
    /// output fields. Never muted: there are few, and each matters.
    pub(super) fn raise_host(
        &mut self,
        store: &mut Store,
        rule: &str,
        priority: &str,
        tags: &[&str],
        message: &str,
        fields: serde_json::Value,
    ) -> Result<u64> {
        let now = super::now_ns();
        let time = lancet_engine::output::rfc3339_nanos(now);
        let mut f = json!({"evt.time": now, "container.id": "host", "container.name": "host", "lancet.count": 1});
        if let (Some(f), Some(extra)) = (f.as_object_mut(), fields.as_object()) {
            f.extend(extra.clone());
        }
        let j = json!({
            "time": time, "rule": rule, "priority": priority, "source": "lancet", "hostname": self.hostname,
            "tags": tags, "output": format!("{time} {rule}: {message}"), "output_fields": f,
        });
        let row = NewAlert {
            time_ns: now,
            rule: rule.into(),
            priority: priority.into(),
            container_id: "host".into(),
            container_name: "host".into(),
            image: String::new(),
            workload: String::new(),
            action: "alert".into(),
            enforced: false,
            count: 1,
            json: String::new(),
        };
        self.emit(store, &j, row)
    }

    pub(super) fn emit(&mut self, store: &mut Store, j: &serde_json::Value, mut row: NewAlert) -> Result<u64> {
        if let Some(out) = self.out.as_mut() {
            serde_json::to_writer(&mut *out, j)?;
            out.write_all(b"\n")?;
            out.flush()?;
        }
        row.json = j.to_string();
        self.outputs.send(&Arc::from(row.json.as_str()));
        self.tally.alert(&row.priority);
        let id = store.insert_alert(&row)?;
        if let Some(tx) = self.live.as_ref().filter(|tx| tx.receiver_count() > 0) {
            // The feed names the stored alert, for "add to profile".
            let mut with_id = j.clone();
            with_id["id"] = json!(id);
            let _ = tx.send(Arc::from(with_id.to_string()));
        }
        Ok(id)
    }
}

impl Daemon {
    /// Raises the alert of a verdict and, in protect mode, carries out its
    /// step of the response ladder. `done`: what a backend already did in
    /// the kernel (a refused exec, open or connection, a kill at exec).
    /// `deviation`: what the event is missing from its profile, put in the
    /// alerts of the profile's and protect mode's verdicts.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn alert(
        &mut self,
        ev: &Event,
        c: &Arc<ContainerInfo>,
        key: &str,
        mode: Mode,
        v: &Verdict,
        done: Option<Action>,
        deviation: Option<&Deviation>,
    ) -> Result<()> {
        let outcome = match done {
            Some(a) => Outcome { action: Some(a), enforced: true, note: String::new() },
            None => self.respond_in_protect(ev, c, mode, v, deviation),
        };
        let action = outcome.action.unwrap_or(effective_action(v.action, mode).0);
        self.alerts.tally.verdict(action, outcome.enforced);
        // Every alert of the event names what it misses from its profile
        // (a rule's alert stands for the deviation in learn and monitor),
        // except a drift's: drift is never added to a profile.
        let deviation = deviation.filter(|_| v.policy.as_str() != "drift");
        self.alerts.raise(&mut self.store, ev, c, key, mode, v, outcome, deviation)
    }
}
