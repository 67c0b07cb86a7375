//! The verdicts lancet raises itself, besides the policies' rules and the
//! profile's deviations ([`Verdict::profile_deviation`]): drift, what a
//! backend enforced in the kernel, a scan, a command line too long to
//! inspect. And the `lancet.*` fields every alert carries, typed, so the
//! binary only fills them in.

use crate::drift::Drift;
use crate::policy::{Action, Severity, Verdict};
use crate::profile::{Deviation, Mode};
use serde::Serialize;
use std::net::IpAddr;

fn verdict(rule: &str, policy: &str, severity: Severity, action: Action, tags: &[&str], message: String) -> Verdict {
    Verdict {
        rule: rule.into(),
        policy: policy.into(),
        severity,
        action,
        tags: tags.iter().map(|t| t.to_string()).collect::<Vec<_>>().into(),
        message,
        escalate: None,
    }
}

/// A drift: a block (refused in protect mode, reported as would-block
/// elsewhere), never rate-limited (its policy is `drift`).
pub fn drift(d: &Drift) -> Verdict {
    let rule = format!("Drift: {}", d.kind);
    let kind = d.kind.to_string();
    verdict(&rule, "drift", Severity::High, Action::Block, &["drift", "T1105", &kind], d.to_string())
}

/// What a backend enforced on its own: policy `protect`, action block.
pub fn enforced(rule: &str, severity: Severity, message: String, tags: &[&str]) -> Verdict {
    verdict(rule, "protect", severity, Action::Block, tags, message)
}

/// A read of a protected file, or a write into a write-protected
/// directory, refused by the permission backend.
pub fn protected_access_refused(path: &str, write: bool) -> Verdict {
    let what = if write { "write to a read-only path" } else { "read of a protected file" };
    enforced("Protected file access refused", Severity::High, format!("{what} refused: {path}"), &["protect", "T1005"])
}

/// A write that failed with EROFS on the read-only binds: it already
/// failed; the alert names the writer.
pub fn write_refused(what: &str, path: &str, comm: &str, pid: u32) -> Verdict {
    enforced(
        "Write refused by the read-only filesystem",
        Severity::High,
        format!("{what} of {path} by {comm} (pid {pid}) refused: read-only (the protected set, or a read-only mount of the container's)"),
        &["protect", "immutable", "T1565"],
    )
}

/// A TCP listener on a port the container may not listen on: killed when
/// enforced, reported when only audited. The action says which.
pub fn listener_refused(port: u16, killed: bool, isolated: bool) -> (Verdict, Action) {
    let port = if port == 0 { "an ephemeral port".to_string() } else { format!("port {port}") };
    let done = if killed { "killed" } else { "reported" };
    let v =
        enforced("Listener not allowed", Severity::High, format!("listen on {port} {done} ({})", why(isolated)), &["protect", "network"]);
    (v, if killed { Action::KillProcess } else { Action::Alert })
}

/// A connect, sendmsg or bind refused in the kernel (or, audited only,
/// reported). The action says which.
pub fn network_refused(bind: bool, peer: Option<IpAddr>, port: u16, denied: bool, isolated: bool) -> (Verdict, Action) {
    let why = why(isolated);
    let what = match (bind, peer) {
        (true, _) => format!("bind to port {port} refused ({why})"),
        (false, Some(a)) => format!("connection to {a}:{port} refused ({why})"),
        (false, None) => format!("connection to port {port} refused ({why})"),
    };
    let v = enforced("Network operation refused", Severity::Medium, what, &["protect", "network"]);
    (v, if denied { Action::Block } else { Action::Alert })
}

fn why(isolated: bool) -> &'static str {
    if isolated {
        "the container is isolated"
    } else {
        "not in the allow-list"
    }
}

/// A scan: a source that opened more new flows in a minute than the flow
/// table keeps rows for (`outbound`), or a container that many new peers
/// connected to. The flows go on being counted, summarised.
pub fn scan(outbound: bool, name: &str, threshold: u32) -> Verdict {
    let message = if outbound {
        format!("{name} opened more than {threshold} new flows (peers or ports) within a minute, as a port or address scan does; its further new flows are counted in one summary row")
    } else {
        format!(
            "more than {threshold} new peers connected to {name} within a minute; further new ones are counted in one summary row per port"
        )
    };
    verdict("Network scan", "lancet", Severity::Medium, Action::Alert, &["network", "scan", "T1046"], message)
}

/// An exec whose command line the probe cut (1 KiB) and whose process
/// ended before the rest could be read: what rules look for in its tail
/// could hide there, so that is said, not assumed away.
pub fn command_line_too_long(filename: &str) -> Verdict {
    verdict(
        "Command line too long to inspect",
        "lancet",
        Severity::Medium,
        Action::Alert,
        &["lancet", "evasion", "T1027"],
        format!("the command line of {filename} is longer than 1 KiB and its process ended before it could be read whole"),
    )
}

/// The `lancet.*` output fields of a container's alert (Falco's
/// `output_fields` carry them beside `container.*`, `proc.*`, …).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertFields<'a> {
    /// The step taken: the rule's (after the mode), or the ladder's.
    #[serde(rename = "lancet.action")]
    pub action: Action,
    /// Something was done in the kernel or to the process.
    #[serde(rename = "lancet.enforced")]
    pub enforced: bool,
    /// Protect mode would have refused it (in learn or monitor mode).
    #[serde(rename = "lancet.would_block")]
    pub would_block: bool,
    #[serde(rename = "lancet.mode")]
    pub mode: Mode,
    #[serde(rename = "lancet.workload")]
    pub workload: &'a str,
    #[serde(rename = "lancet.policy")]
    pub policy: &'a str,
    /// 1 when raised; the store folds later repeats into it.
    #[serde(rename = "lancet.count")]
    pub count: u64,
    /// Alerts of this rule and workload muted since the last one.
    #[serde(rename = "lancet.muted", skip_serializing_if = "Option::is_none")]
    pub muted: Option<u64>,
    /// What was done, in words.
    #[serde(rename = "lancet.response", skip_serializing_if = "Option::is_none")]
    pub response: Option<&'a str>,
    /// What the event is missing from its profile: what "add to profile" adds.
    #[serde(rename = "lancet.deviation", skip_serializing_if = "Option::is_none")]
    pub deviation: Option<&'a Deviation>,
}

impl AlertFields<'_> {
    /// Adds the fields to an alert's `output_fields` object.
    pub fn insert_into(&self, output_fields: &mut serde_json::Map<String, serde_json::Value>) {
        if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(self) {
            output_fields.extend(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::DriftKind;

    #[test]
    fn drift_blocks_and_names_its_kind() {
        let v = drift(&Drift { kind: DriftKind::Written, path: "/tmp/x".into(), origin: None });
        assert_eq!((v.policy.as_ref(), v.action, v.severity), ("drift", Action::Block, Severity::High));
        assert!(v.rule.starts_with("Drift: "), "{}", v.rule);
        assert!(v.message.contains("/tmp/x"), "{}", v.message);
    }

    #[test]
    fn kernel_refusals_say_what_and_why() {
        let (v, a) = network_refused(false, Some("192.0.2.7".parse().unwrap()), 25, true, false);
        assert_eq!(a, Action::Block);
        assert_eq!(v.message, "connection to 192.0.2.7:25 refused (not in the allow-list)");
        let (v, a) = network_refused(true, None, 8080, false, true);
        assert_eq!(a, Action::Alert);
        assert_eq!(v.message, "bind to port 8080 refused (the container is isolated)");
        let (v, a) = listener_refused(0, true, false);
        assert_eq!(a, Action::KillProcess);
        assert_eq!(v.message, "listen on an ephemeral port killed (not in the allow-list)");
        assert!(protected_access_refused("/etc/shadow", false).message.contains("read of a protected file refused: /etc/shadow"));
        assert!(write_refused("unlinkat", "/etc/x", "rm", 7).message.starts_with("unlinkat of /etc/x by rm (pid 7) refused"));
    }

    #[test]
    fn alert_fields_are_named_as_falco_consumers_read_them() {
        let d = Deviation::NewExecutable { path: "/bin/nc".into() };
        let f = AlertFields {
            action: Action::Block,
            enforced: true,
            would_block: false,
            mode: Mode::Protect,
            workload: "sha256:ab",
            policy: "profile",
            count: 1,
            muted: None,
            response: Some("exec refused"),
            deviation: Some(&d),
        };
        let mut m = serde_json::Map::new();
        f.insert_into(&mut m);
        assert_eq!(m["lancet.action"], "block");
        assert_eq!(m["lancet.mode"], "protect");
        assert_eq!(m["lancet.enforced"], true);
        assert_eq!(m["lancet.count"], 1);
        assert_eq!(m["lancet.response"], "exec refused");
        assert_eq!(m["lancet.deviation"]["path"], "/bin/nc");
        assert!(!m.contains_key("lancet.muted"));
    }
}
