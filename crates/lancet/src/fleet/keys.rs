//! Names and documents on NATS: the buckets, the stream, the keys of the
//! profiles bucket and the values written under them. Everything read from
//! NATS was written by another node, and a node can be compromised: every
//! parser here is bounded and returns `None` (never panics) on anything it
//! does not recognise.

use lancet_engine::profile::{Mode, Profile};
use serde::{Deserialize, Serialize};

/// Per image digest: each node's observations and the workload's mode.
pub const PROFILES_BUCKET: &str = "lancet-profiles";
/// Per node: its heartbeat.
pub const NODES_BUCKET: &str = "lancet-nodes";
/// Every node's alerts.
pub const ALERTS_STREAM: &str = "lancet-alerts";
/// The subjects of [`ALERTS_STREAM`]:
/// `lancet.alerts.<cluster>.<node>.<priority>`.
pub const ALERTS_SUBJECTS: &str = "lancet.alerts.>";

/// The largest observations document written or read (NATS' default
/// max_payload is 1 MiB; a profile at its section bounds stays well under).
pub const MAX_OBSERVATIONS_BYTES: usize = 900 * 1024;
/// The largest mode or heartbeat document read.
pub const MAX_SMALL_DOC_BYTES: usize = 64 * 1024;

/// The longest node or cluster name (a Kubernetes node name's bound).
pub const MAX_NAME: usize = 253;

/// A node or cluster name: 1 to [`MAX_NAME`] of `A-Z a-z 0-9 _ -`, so that
/// it is one token of a KV key or subject and needs no escaping.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A name given by hand as the fleet uses it: a Kubernetes node name (DNS
/// labels joined by `.`, which never hold `_`) has its dots made `_`, so
/// distinct node names stay distinct. None when it still is not valid.
pub fn name_of(given: &str) -> Option<String> {
    let s = given.replace('.', "_");
    valid_name(&s).then_some(s)
}

/// `name` made valid: other characters become `-`, cut to 64, `node` when
/// nothing is left (a hostname like `web.example` becomes `web-example`).
pub fn sanitize_name(name: &str) -> String {
    let s: String = name.chars().take(64).map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '-' }).collect();
    if s.is_empty() {
        "node".into()
    } else {
        s
    }
}

/// The KV token of a workload shared with the fleet: only workloads keyed
/// by an image digest (`sha256:` and 64 hex digits) are, because only a
/// digest names the same image on every node. A rootless workload (its key
/// carries `@uid<n>`) or one keyed by an image name stays local.
pub fn workload_token(workload: &str) -> Option<String> {
    let hex = workload.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())).then(|| format!("sha256-{hex}"))
}

/// The workload of a KV token (the inverse of [`workload_token`]).
pub fn token_workload(token: &str) -> Option<String> {
    let hex = token.strip_prefix("sha256-")?;
    let w = format!("sha256:{hex}");
    workload_token(&w).map(|_| w)
}

/// `<token>.obs.<node>`: what `node` observed of the workload.
pub fn observations_key(workload: &str, node: &str) -> Option<String> {
    Some(format!("{}.obs.{node}", workload_token(workload)?))
}

/// `<token>.mode`: the workload's mode, changed only by compare-and-swap.
pub fn mode_key(workload: &str) -> Option<String> {
    Some(format!("{}.mode", workload_token(workload)?))
}

/// A key of the profiles bucket, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Observations { workload: String, node: String },
    Mode { workload: String },
}

impl Key {
    pub fn parse(key: &str) -> Option<Key> {
        if key.len() > 512 {
            return None;
        }
        let mut parts = key.split('.');
        let workload = token_workload(parts.next()?)?;
        match (parts.next()?, parts.next(), parts.next()) {
            ("mode", None, None) => Some(Key::Mode { workload }),
            ("obs", Some(node), None) if valid_name(node) => Some(Key::Observations { workload, node: node.to_string() }),
            _ => None,
        }
    }
}

/// The value of `<token>.mode`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModeDoc {
    pub mode: String,
    /// The node that made the change.
    pub node: String,
    pub time_ns: u64,
}

impl ModeDoc {
    pub fn new(mode: Mode, node: &str, time_ns: u64) -> ModeDoc {
        ModeDoc { mode: mode.to_string(), node: node.to_string(), time_ns }
    }

    /// The mode and the node that set it, or None for anything else.
    pub fn parse(bytes: &[u8]) -> Option<(Mode, String)> {
        if bytes.len() > MAX_SMALL_DOC_BYTES {
            return None;
        }
        let d: ModeDoc = serde_json::from_slice(bytes).ok()?;
        let mode = d.mode.parse::<Mode>().ok()?;
        valid_name(&d.node).then_some((mode, d.node))
    }
}

/// Another node's observations of `workload`, or None when the document is
/// too large, not a profile, or a profile of another image (a node writing
/// under a digest what it saw of another image would teach that image).
pub fn parse_observations(bytes: &[u8], workload: &str) -> Option<Profile> {
    if bytes.len() > MAX_OBSERVATIONS_BYTES {
        return None;
    }
    let text = std::str::from_utf8(bytes).ok()?;
    let p = Profile::from_yaml(text, "<fleet>").ok()?;
    (p.digest() == workload).then_some(p)
}

/// A node's heartbeat, in [`NODES_BUCKET`] under its name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    pub node: String,
    pub cluster: String,
    /// When it was sent (epoch ns, the node's clock).
    pub time_ns: u64,
    pub version: String,
    /// `lancet doctor`'s guarantees on that node, when known.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub guarantees: serde_json::Value,
}

impl Heartbeat {
    pub fn parse(bytes: &[u8]) -> Option<Heartbeat> {
        if bytes.len() > MAX_SMALL_DOC_BYTES {
            return None;
        }
        let h: Heartbeat = serde_json::from_slice(bytes).ok()?;
        (valid_name(&h.node) && valid_name(&h.cluster)).then_some(h)
    }
}

/// A key of the nodes bucket: a node's heartbeat (`<node>`), the
/// workloads it runs (`<node>.workloads`), its flows (`<node>.flows`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKey {
    Heartbeat(String),
    Workloads(String),
    Flows(String),
}

impl NodeKey {
    pub fn parse(key: &str) -> Option<NodeKey> {
        let (node, what) = match key.split_once('.') {
            None => return valid_name(key).then(|| NodeKey::Heartbeat(key.to_string())),
            Some(x) => x,
        };
        if !valid_name(node) {
            return None;
        }
        match what {
            "workloads" => Some(NodeKey::Workloads(node.to_string())),
            "flows" => Some(NodeKey::Flows(node.to_string())),
            _ => None,
        }
    }

    pub fn key(&self) -> String {
        match self {
            NodeKey::Heartbeat(n) => n.clone(),
            NodeKey::Workloads(n) => format!("{n}.workloads"),
            NodeKey::Flows(n) => format!("{n}.flows"),
        }
    }
}

/// The subject of one alert: `lancet.alerts.<cluster>.<node>.<priority>`,
/// the priority in lower case (`critical`, `warning`, ...; `other` for
/// anything that is not one token).
pub fn alert_subject(cluster: &str, node: &str, priority: &str) -> String {
    let p = priority.to_ascii_lowercase();
    let p = if valid_name(&p) { p } else { "other".into() };
    format!("lancet.alerts.{cluster}.{node}.{p}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn only_digests_are_shared_and_keys_round_trip() {
        let t = workload_token(D).unwrap();
        assert_eq!(token_workload(&t).as_deref(), Some(D));
        assert_eq!(workload_token(&format!("{D}@uid1000")), None, "rootless workloads stay local");
        assert_eq!(workload_token("localhost/web:1"), None);
        assert_eq!(workload_token(&D.to_uppercase().replace("SHA256", "sha256")), None);
        assert_eq!(workload_token("sha256:abc"), None);
        let k = observations_key(D, "node-a").unwrap();
        assert_eq!(Key::parse(&k), Some(Key::Observations { workload: D.into(), node: "node-a".into() }));
        assert_eq!(Key::parse(&mode_key(D).unwrap()), Some(Key::Mode { workload: D.into() }));
        for bad in [
            "",
            "x.mode",
            &format!("{t}.obs"),
            &format!("{t}.obs.a.b"),
            &format!("{t}.obs.a b"),
            &format!("{t}.other"),
            &format!("{t}.mode.x"),
        ] {
            assert_eq!(Key::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn names() {
        assert!(valid_name("node-1_a"));
        assert!(!valid_name("a.b") && !valid_name("") && !valid_name(&"a".repeat(254)) && !valid_name("a*"));
        assert_eq!(name_of("ip-10-0-0-1.ec2.internal").as_deref(), Some("ip-10-0-0-1_ec2_internal"));
        assert_eq!(name_of("a b"), None);
        let long = "n".repeat(MAX_NAME);
        assert_eq!(Key::parse(&observations_key(D, &long).unwrap()), Some(Key::Observations { workload: D.into(), node: long }));
        assert_eq!(sanitize_name("web.example.com"), "web-example-com");
        assert_eq!(sanitize_name(""), "node");
        assert_eq!(alert_subject("prod", "n1", "Critical"), "lancet.alerts.prod.n1.critical");
        assert_eq!(alert_subject("prod", "n1", "a.b"), "lancet.alerts.prod.n1.other");
        for k in [NodeKey::Heartbeat("n1".into()), NodeKey::Workloads("n1".into()), NodeKey::Flows("n-2".into())] {
            assert_eq!(NodeKey::parse(&k.key()), Some(k));
        }
        for bad in ["", "a.b.c", "n1.other", "n 1.flows", "n1.", ".flows"] {
            assert_eq!(NodeKey::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn untrusted_documents_are_refused_not_panicked_on() {
        assert_eq!(ModeDoc::parse(br#"{"mode":"protect","node":"b","timeNs":1}"#), Some((Mode::Protect, "b".into())));
        for bad in [
            &b"{"[..],
            br#"{"mode":"root","node":"b","timeNs":1}"#,
            br#"{"mode":"learn","node":"b.c","timeNs":1}"#,
            br#"{"mode":"learn","node":"b","timeNs":1,"x":1}"#,
        ] {
            assert_eq!(ModeDoc::parse(bad), None);
        }
        assert_eq!(ModeDoc::parse(&vec![b' '; MAX_SMALL_DOC_BYTES + 1]), None);
        let p = Profile::new("img", D, 1);
        let yaml = p.to_yaml().unwrap();
        assert!(parse_observations(yaml.as_bytes(), D).is_some());
        let other = D.replace("0123", "4567");
        assert!(parse_observations(yaml.as_bytes(), &other).is_none(), "a profile of another image");
        assert!(parse_observations(b"\xff\xfe", D).is_none());
        assert!(parse_observations(b"apiVersion: [", D).is_none());
        assert!(parse_observations(&vec![b'#'; MAX_OBSERVATIONS_BYTES + 1], D).is_none());
        assert!(Heartbeat::parse(br#"{"node":"a","cluster":"c","timeNs":1,"version":"0"}"#).is_some());
        assert!(Heartbeat::parse(br#"{"node":"a.b","cluster":"c","timeNs":1,"version":"0"}"#).is_none());
    }
}
