//! Compiled policies and their evaluation (the hot path).
//!
//! Rules are indexed by event type, so an event visits only the rules that
//! can match it; conditions are checked cheapest first (flags, bit masks,
//! ports, addresses, then globs). Nothing is allocated unless a rule matches:
//! the one string that has to be built (argv joined with spaces, for `args`)
//! goes into a reused thread-local buffer.

use super::{cidr, default_policy, event_mask, glob, path_string, validate, Action, EventType, FileOperation, Policy, Severity};
use crate::attribution::ContainerInfo;
use crate::event::{Event, EventKind, ExecEvent, NetOp};
use crate::profile::Deviation;
use globset::{GlobMatcher, GlobSet, GlobSetBuilder};
use ipnet::IpNet;
use serde::{Serialize, Serializer};
use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// A cheaply cloned, immutable string (rule and policy names).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SharedStr(Arc<str>);

impl SharedStr {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for SharedStr {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for SharedStr {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for SharedStr {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for SharedStr {
    fn from(s: &str) -> Self {
        SharedStr(Arc::from(s))
    }
}

impl PartialEq<str> for SharedStr {
    fn eq(&self, o: &str) -> bool {
        &*self.0 == o
    }
}

impl PartialEq<&str> for SharedStr {
    fn eq(&self, o: &&str) -> bool {
        &*self.0 == *o
    }
}

impl fmt::Display for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for SharedStr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A rule's tags, shared between its verdicts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tags(Arc<[String]>);

impl Deref for Tags {
    type Target = [String];
    fn deref(&self) -> &[String] {
        &self.0
    }
}

impl Serialize for Tags {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter())
    }
}

impl From<Vec<String>> for Tags {
    fn from(v: Vec<String>) -> Self {
        Tags(v.into())
    }
}

/// A rule that matched an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// The rule's name (Falco `rule`).
    pub rule: SharedStr,
    /// The policy's `metadata.name` (`lancet-defaults` for built-in rules,
    /// `profile` for profile deviations).
    pub policy: SharedStr,
    pub severity: Severity,
    /// The rule's action, before the mode is applied ([`super::effective_action`]).
    pub action: Action,
    pub tags: Tags,
    /// `<description or rule name>: <what happened>`.
    pub message: String,
    pub escalate: Option<super::Escalation>,
}

impl Verdict {
    /// The Falco priority (`Notice`, `Warning`, `Error`, `Critical`).
    pub fn priority(&self) -> &'static str {
        self.severity.priority()
    }

    /// The verdict for an event that no rule matched but that deviates from
    /// the workload's profile: rule `profile deviation: <kind>`, policy
    /// `profile`, severity medium (high for a protected write), action
    /// block (so protect mode refuses it and the other modes report it as
    /// would-block), except a write outside both write sets, which protect
    /// mode allows: alert.
    pub fn profile_deviation(d: &Deviation) -> Verdict {
        Verdict {
            rule: SharedStr::from(format!("profile deviation: {}", d.kind()).as_str()),
            policy: SharedStr::from("profile"),
            severity: if matches!(d, Deviation::ProtectedWrite { .. }) { Severity::High } else { Severity::Medium },
            // What protect mode does with it: a write outside both sets is
            // allowed and only alerted.
            action: if d.refused_in_protect() { Action::Block } else { Action::Alert },
            tags: Tags::from(vec!["profile".to_string(), "drift".to_string(), d.kind().to_string()]),
            message: d.to_string(),
            escalate: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicySetError {
    #[error("policy {0:?} is defined more than once")]
    DuplicatePolicy(String),
    #[error("policy {policy:?}: {message}")]
    Invalid { policy: String, message: String },
}

#[derive(Debug)]
struct CompiledSelector {
    /// Empty container selector: every container matches.
    any_container: bool,
    host: bool,
    images: Option<GlobSet>,
    names: Option<GlobSet>,
    namespaces: Option<GlobSet>,
    labels: Vec<(String, GlobMatcher)>,
}

impl CompiledSelector {
    fn matches(&self, c: Option<&ContainerInfo>) -> bool {
        let Some(c) = c else { return self.host };
        if self.any_container {
            return true;
        }
        if let Some(g) = &self.images {
            if !(g.is_match(&c.image) || (!c.image_digest.is_empty() && g.is_match(&c.image_digest))) {
                return false;
            }
        }
        if let Some(g) = &self.names {
            let pod_name = c.pod.as_ref().map(|p| p.container_name.as_str()).filter(|n| !n.is_empty());
            if !(g.is_match(&c.name) || pod_name.is_some_and(|n| g.is_match(n))) {
                return false;
            }
        }
        if let Some(g) = &self.namespaces {
            if !c.pod.as_ref().is_some_and(|p| g.is_match(&p.namespace)) {
                return false;
            }
        }
        self.labels.iter().all(|(k, g)| c.labels.get(k).is_some_and(|v| g.is_match(v)))
    }
}

#[derive(Debug)]
struct CompiledRule {
    name: SharedStr,
    policy: usize,
    headline: Box<str>,
    severity: Severity,
    action: Action,
    tags: Tags,
    escalate: Option<super::Escalation>,
    not_in_profile: bool,
    /// Bit per [`FileOperation`] event type; 0 = any.
    file_ops: u16,
    exe: Option<GlobSet>,
    args: Option<GlobSet>,
    parent: Option<GlobSet>,
    paths: Option<GlobSet>,
    /// What every path `paths` matches starts or ends with, when each of
    /// its globs has a literal start or end: checked first, so the globs
    /// run only for a path that can match (every file event meets the write
    /// rules; few are below `/etc` or `/bin`, or a shell history).
    path_anchors: Option<PathAnchors>,
    ports: Box<[u16]>,
    cidrs: Box<[IpNet]>,
}

thread_local! {
    /// argv joined with spaces, reused across events.
    static JOINED: RefCell<String> = const { RefCell::new(String::new()) };
}

fn join_args(buf: &mut String, x: &ExecEvent) {
    buf.clear();
    for (i, a) in x.argv.iter().enumerate() {
        if i > 0 {
            buf.push(' ');
        }
        buf.push_str(a);
    }
}

impl CompiledRule {
    /// The event conditions (the selector and the profile flag are checked
    /// by the caller). `joined`: whether the thread-local buffer already
    /// holds this event's argv.
    fn matches(&self, ev: &Event, joined: &mut bool) -> bool {
        match &ev.kind {
            EventKind::Exec(x) => {
                if let Some(g) = &self.exe {
                    if !g.is_match(&x.filename) {
                        return false;
                    }
                }
                if let Some(g) = &self.parent {
                    let exe = x.parent_exe.as_deref().is_some_and(|p| g.is_match(p));
                    if !exe && !g.is_match(&x.parent_comm) {
                        return false;
                    }
                }
                if let Some(g) = &self.args {
                    let hit = JOINED.with(|b| match b.try_borrow_mut() {
                        Ok(mut buf) => {
                            if !*joined {
                                join_args(&mut buf, x);
                                *joined = true;
                            }
                            g.is_match(buf.as_str())
                        }
                        // Re-entered (cannot happen in practice): allocate.
                        Err(_) => g.is_match(x.argv.join(" ")),
                    });
                    if !hit {
                        return false;
                    }
                }
                true
            }
            EventKind::File(f) => {
                if self.file_ops != 0 && self.file_ops & EventType::of(&ev.kind).bit() == 0 {
                    return false;
                }
                if let Some(g) = &self.paths {
                    let may = |p: &str| self.path_anchors.as_ref().is_none_or(|a| a.may_match(p));
                    let hit = |p: &str| may(p) && g.is_match(p);
                    if !(hit(&f.path) || f.old_path.as_deref().is_some_and(hit)) {
                        return false;
                    }
                }
                true
            }
            EventKind::Net(n) => {
                if !self.ports.is_empty() {
                    let port = match n.op {
                        NetOp::Connect => n.dport,
                        _ => n.sport,
                    };
                    if !self.ports.contains(&port) {
                        return false;
                    }
                }
                if !self.cidrs.is_empty() && !self.cidrs.iter().any(|c| c.contains(&n.daddr)) {
                    return false;
                }
                true
            }
            // Only `events` (already applied by the index) and
            // `notInProfile` can hold for the others.
            _ => true,
        }
    }
}

/// Policies compiled for evaluation. Cheap to share (`Arc<PolicySet>`);
/// build a new one to reload.
#[derive(Debug)]
pub struct PolicySet {
    policies: Vec<(SharedStr, CompiledSelector)>,
    /// Each policy's writable directories, by the index in `policies`.
    writable: Vec<Vec<String>>,
    rules: Vec<CompiledRule>,
    /// Rule indices per [`EventType`], in load order.
    by_type: [Vec<u32>; EventType::ALL.len()],
}

/// Each glob's literal start (up to its first special character, `\\`
/// included) or, for one that starts with a special character, its
/// literal end (after its last): None when a glob has neither, as `*` or
/// `/var/**` alone would.
pub(super) fn literal_anchors(list: &[String]) -> Option<PathAnchors> {
    if list.is_empty() {
        return None;
    }
    let (mut prefixes, mut suffixes) = (Vec::new(), Vec::new());
    for g in list {
        let start = &g[..g.find(['*', '?', '[', '{', '\\']).unwrap_or(g.len())];
        let end = &g[g.rfind(['*', '?', ']', '}', '\\']).map_or(0, |i| i + 1)..];
        match (start.is_empty(), end.is_empty()) {
            (false, _) => prefixes.push(Box::<str>::from(start)),
            (true, false) => suffixes.push(Box::<str>::from(end)),
            (true, true) => return None,
        }
    }
    // Every prefix is "/" and more: its second byte tells most paths apart
    // (a write in `/tmp` meets the 15 prefixes of the binary directories).
    let mut second = [0u64; 4];
    match prefixes.iter().all(|p| p.len() >= 2) {
        true => prefixes.iter().for_each(|p| second[p.as_bytes()[1] as usize / 64] |= 1 << (p.as_bytes()[1] % 64)),
        false => second = [u64::MAX; 4],
    }
    Some(PathAnchors { prefixes: prefixes.into(), suffixes: suffixes.into(), second })
}

/// What every path a rule's globs match starts or ends with.
#[derive(Debug)]
pub(super) struct PathAnchors {
    pub(super) prefixes: Box<[Box<str>]>,
    /// Of the globs that start with a special character.
    pub(super) suffixes: Box<[Box<str>]>,
    /// The second bytes of the prefixes, as a set (all bits when a prefix
    /// is one byte long): one test passes over most paths.
    second: [u64; 4],
}

impl PathAnchors {
    pub(super) fn may_match(&self, p: &str) -> bool {
        let by_start = match p.as_bytes().get(1) {
            Some(&b) if self.second[b as usize / 64] & (1 << (b % 64)) == 0 => false,
            _ => self.prefixes.iter().any(|x| p.starts_with(&**x)),
        };
        by_start || self.suffixes.iter().any(|x| p.ends_with(&**x))
    }
}

fn globset(list: &[String]) -> Result<Option<GlobSet>, String> {
    if list.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for g in list {
        b.add(glob(g)?);
    }
    b.build().map(Some).map_err(|e| e.to_string())
}

impl PolicySet {
    /// The writable directories policies declare for container `c`.
    pub fn writable_for<'a>(&'a self, c: &'a ContainerInfo) -> impl Iterator<Item = &'a str> + 'a {
        self.policies
            .iter()
            .zip(&self.writable)
            .filter(|((_, sel), _)| sel.matches(Some(c)))
            .flat_map(|(_, w)| w.iter().map(String::as_str))
    }

    /// Compiles `policies`, after the built-in ones when `with_defaults`.
    /// Policy names must be unique (the built-in policy is
    /// `lancet-defaults`); every policy is validated as [`super::parse_policies`]
    /// does, so policies built in code are held to the same rules.
    pub fn new(policies: Vec<Policy>, with_defaults: bool) -> Result<Self, PolicySetError> {
        let mut all = Vec::with_capacity(policies.len() + 1);
        if with_defaults {
            all.push(default_policy());
        }
        all.extend(policies);
        let mut set = PolicySet { policies: Vec::new(), writable: Vec::new(), rules: Vec::new(), by_type: Default::default() };
        let mut seen = HashSet::new();
        for p in &all {
            if !seen.insert(p.metadata.name.as_str()) {
                return Err(PolicySetError::DuplicatePolicy(p.metadata.name.clone()));
            }
            let invalid = |message: String| PolicySetError::Invalid { policy: p.metadata.name.clone(), message };
            if let Some(issue) = validate(p).into_iter().next() {
                return Err(invalid(format!("{}: {}", path_string(&issue.path), issue.message)));
            }
            let s = &p.spec.selector;
            let mut labels = Vec::new();
            for (k, v) in &s.labels {
                labels.push((k.clone(), glob(v).map_err(invalid)?.compile_matcher()));
            }
            let selector = CompiledSelector {
                any_container: s.images.is_empty() && s.names.is_empty() && s.namespaces.is_empty() && s.labels.is_empty(),
                host: s.host,
                images: globset(&s.images).map_err(invalid)?,
                names: globset(&s.names).map_err(invalid)?,
                namespaces: globset(&s.namespaces).map_err(invalid)?,
                labels,
            };
            let policy = set.policies.len();
            set.policies.push((SharedStr::from(p.metadata.name.as_str()), selector));
            set.writable.push(p.spec.writable.clone());
            for r in &p.spec.rules {
                let m = &r.matches;
                let cidrs = m.cidrs.iter().map(|c| cidr(c)).collect::<Result<Vec<_>, _>>().map_err(invalid)?;
                if let Some(e) = &r.escalate {
                    if e.after == 0 || e.within.0.is_zero() || !e.to.is_enforcing() {
                        return Err(invalid(format!(
                            "rule {:?}: escalate needs after >= 1, a non-zero window and an enforcing step (block, kill-process, isolate, freeze)",
                            r.name
                        )));
                    }
                }
                let rule = CompiledRule {
                    name: SharedStr::from(r.name.as_str()),
                    policy,
                    headline: if r.description.trim().is_empty() { r.name.as_str() } else { r.description.trim() }.into(),
                    severity: r.severity,
                    action: r.action,
                    tags: Tags::from(r.tags.clone()),
                    escalate: r.escalate,
                    not_in_profile: m.not_in_profile,
                    file_ops: m.file_ops.iter().fold(0, |a, o: &FileOperation| a | o.event_type().bit()),
                    exe: globset(&m.exe).map_err(invalid)?,
                    args: globset(&m.args).map_err(invalid)?,
                    parent: globset(&m.parent).map_err(invalid)?,
                    paths: globset(&m.paths).map_err(invalid)?,
                    path_anchors: literal_anchors(&m.paths),
                    ports: m.ports.clone().into(),
                    cidrs: cidrs.into(),
                };
                let idx = u32::try_from(set.rules.len()).map_err(|_| invalid("too many rules".into()))?;
                let mask = event_mask(m);
                for t in EventType::ALL {
                    if mask & t.bit() != 0 {
                        set.by_type[t as usize].push(idx);
                    }
                }
                set.rules.push(rule);
            }
        }
        tracing::debug!(policies = set.policies.len(), rules = set.rules.len(), "policies compiled");
        Ok(set)
    }

    #[cfg(test)]
    pub(crate) fn by_type_len(&self, t: EventType) -> usize {
        self.by_type[t as usize].len()
    }

    /// Number of compiled rules (built-in ones included).
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Names of the loaded policies, in load order.
    pub fn policy_names(&self) -> impl Iterator<Item = &str> {
        self.policies.iter().map(|(n, _)| n.as_str())
    }

    /// Appends a verdict to `out` for every rule that matches `ev`, in load
    /// order. `container`: the event's container, `None` for the host or an
    /// unattributed event (then only `host: true` policies apply).
    /// `deviates_from_profile`: the caller's profile check found the event
    /// new (rules with `notInProfile: true` need it).
    pub fn evaluate(&self, ev: &Event, container: Option<&ContainerInfo>, deviates_from_profile: bool, out: &mut Vec<Verdict>) {
        let candidates = &self.by_type[EventType::of(&ev.kind) as usize];
        if candidates.is_empty() {
            return;
        }
        // Selector results of the first 64 policies, computed once each.
        let (mut known, mut selected) = (0u64, 0u64);
        let mut joined = false;
        for &i in candidates {
            let r = &self.rules[i as usize];
            if r.not_in_profile && !deviates_from_profile {
                continue;
            }
            let sel = if r.policy < 64 {
                let bit = 1u64 << r.policy;
                if known & bit == 0 {
                    known |= bit;
                    if self.policies[r.policy].1.matches(container) {
                        selected |= bit;
                    }
                }
                selected & bit != 0
            } else {
                self.policies[r.policy].1.matches(container)
            };
            if !sel || !r.matches(ev, &mut joined) {
                continue;
            }
            out.push(Verdict {
                rule: r.name.clone(),
                policy: self.policies[r.policy].0.clone(),
                severity: r.severity,
                action: r.action,
                tags: r.tags.clone(),
                message: format!("{}: {}", r.headline, crate::output::summary(ev)),
                escalate: r.escalate,
            });
        }
    }
}
