//! The control plane's side of the daemon: every API call is answered here,
//! and every change (a mode, a profile, a response, a container handed over
//! by the OCI hook) and every refused attempt is recorded in the store's
//! audit log with who asked (uid, pid, channel). Changes of mode, profile
//! or response also raise a `lancet control action` alert (Notice; a refused
//! attempt raises `lancet control action refused`, Warning) through the
//! alerts output. Those alerts concern the agent, not a container: they keep
//! Falco's shape with `container.id` and `container.name` set to `host`, as
//! Falco does for events outside containers, unless the action names a
//! container (isolate, freeze, release), whose fields they then carry.
//! They are neither deduplicated nor rate limited (each change is kept);
//! refusals are rate limited before they get here (`api::routes`).

use super::fleet::Promotion;
use super::{now_ns, Daemon};
use crate::agent::Pipeline;
use crate::api::{Call, Caller, Reply, Request, Responder};
use anyhow::Result;
use lancet_engine::output::rfc3339_nanos;
use lancet_store::{NewAlert, NewAudit};
use serde_json::json;

/// One control action, as recorded.
struct Control<'a> {
    caller: &'a Caller,
    action: &'a str,
    target: String,
    result: String,
    refused: bool,
}

/// The audit log's result of a reply.
fn result_of(reply: &Reply) -> (String, bool) {
    match reply {
        Ok(_) => ("ok".into(), false),
        Err((code @ (401 | 403), msg)) => (format!("refused ({code}): {msg}"), true),
        Err((code, msg)) => (format!("failed ({code}): {msg}"), false),
    }
}

impl Daemon {
    /// Answers one API call (a promotion in a fleet when the fleet has);
    /// records it when it is a control action.
    pub(super) fn on_call(&mut self, call: Call, responder: Responder, pipeline: &mut Pipeline) {
        let Call { caller, request } = call;
        let control = request.control_action();
        let is_hook = matches!(request, Request::Hook { .. });
        let follow = match &request {
            Request::Reset { .. } | Request::Import { .. } => self.fleet.is_some(),
            _ => false,
        };
        let reply = match request {
            Request::Hook { identity } => self.on_hook(&identity, pipeline),
            Request::Refused { status, reason, .. } => Err((status, reason)),
            Request::Metrics => Ok(serde_json::Value::String(self.metrics(pipeline))),
            Request::Promote { workload, mode, force, dry_run: false, revision } => {
                match self.fleet_promote(&workload, &mode, force, revision) {
                    Promotion::Sent(ticket) => return self.wait_for_fleet(ticket, caller, control, responder),
                    Promotion::Refused(reply) => reply,
                    Promotion::Local => self.answer(Request::Promote { workload, mode, force, dry_run: false, revision }),
                }
            }
            other => self.answer(other),
        };
        if let (true, Some(key)) = (follow, reply.as_ref().ok().and_then(|v| v["workload"].as_str())) {
            let key = key.to_string();
            self.fleet_follow(&key);
        }
        self.finish_call(caller, control, is_hook, &reply);
        responder.send(reply);
    }

    /// Records a control action once its reply is known.
    pub(super) fn finish_call(&mut self, caller: Caller, control: Option<(String, String)>, is_hook: bool, reply: &Reply) {
        if let Some((action, target)) = control {
            let (result, refused) = result_of(reply);
            // The name asked for, and the workload it resolved to.
            let target = match reply.as_ref().ok().and_then(|v| v["workload"].as_str()) {
                Some(w) if w != target => format!("{target} ({w})"),
                _ => target,
            };
            let c = Control { caller: &caller, action: &action, target, result, refused };
            // A change raises an alert; a hook hand-over is routine (audit only);
            // a failure that changed nothing (404, 409) is only audited.
            let alert = !is_hook && (refused || reply.is_ok());
            if let Err(e) = self.record_control(&c, alert) {
                tracing::error!("control action not recorded: {e:#}");
            }
        }
    }

    fn record_control(&mut self, c: &Control<'_>, alert: bool) -> Result<()> {
        let now = now_ns();
        let who = match (c.caller.uid, c.caller.pid) {
            (Some(uid), Some(pid)) => format!("uid {uid} pid {pid}"),
            (Some(uid), None) => format!("uid {uid}"),
            _ => "a token holder".to_string(),
        };
        tracing::info!(
            channel = %c.caller.channel,
            uid = ?c.caller.uid,
            pid = ?c.caller.pid,
            "control action {} {}: {}",
            c.action,
            c.target,
            c.result
        );
        self.store.insert_audit(&NewAudit {
            time_ns: now,
            uid: c.caller.uid,
            pid: c.caller.pid,
            channel: c.caller.channel.to_string(),
            action: c.action.to_string(),
            target: c.target.clone(),
            result: c.result.clone(),
        })?;
        if !alert {
            return Ok(());
        }
        let (rule, priority) = if c.refused { ("lancet control action refused", "Warning") } else { ("lancet control action", "Notice") };
        let time = rfc3339_nanos(now);
        let mut fields = json!({
            "evt.time": now,
            "evt.type": "lancet_control",
            "user.uid": c.caller.uid,
            "proc.pid": c.caller.pid,
            "container.id": "host",
            "container.name": "host",
            "lancet.channel": c.caller.channel.to_string(),
            "lancet.control.action": c.action,
            "lancet.control.target": c.target,
            "lancet.control.result": c.result,
            "lancet.count": 1,
        });
        let container = matches!(c.action, "isolate" | "freeze" | "release")
            .then(|| self.workloads.resolve(c.target.split(' ').next().unwrap_or_default()).ok().cloned())
            .flatten();
        if let (Some(ct), Some(f)) = (&container, fields.as_object_mut()) {
            f.insert("container.id".into(), json!(ct.short_id()));
            f.insert("container.full_id".into(), json!(ct.id));
            f.insert("container.name".into(), json!(ct.name));
            f.insert("container.image.repository".into(), json!(ct.image));
        }
        let j = json!({
            "time": time,
            "rule": rule,
            "priority": priority,
            "source": "lancet",
            "hostname": self.alerts.hostname,
            "tags": ["lancet", "control"],
            "output": format!("{time} {rule}: {} {} by {who} over {}: {}", c.action, c.target, c.caller.channel, c.result),
            "output_fields": fields,
        });
        let row = NewAlert {
            time_ns: now,
            rule: rule.into(),
            priority: priority.into(),
            container_id: container.as_ref().map_or_else(|| "host".to_string(), |ct| ct.id.clone()),
            container_name: container.as_ref().map_or_else(|| "host".to_string(), |ct| ct.name.clone()),
            image: container.as_ref().map(|ct| ct.image.clone()).unwrap_or_default(),
            workload: String::new(),
            action: "alert".into(),
            enforced: false,
            count: 1,
            json: String::new(),
        };
        self.alerts.emit(&mut self.store, &j, row)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results() {
        assert_eq!(result_of(&Ok(json!({}))), ("ok".into(), false));
        assert_eq!(result_of(&Err((403, "no".into()))), ("refused (403): no".into(), true));
        assert_eq!(result_of(&Err((401, "token".into()))), ("refused (401): token".into(), true));
        assert_eq!(result_of(&Err((404, "none".into()))), ("failed (404): none".into(), false));
    }
}
