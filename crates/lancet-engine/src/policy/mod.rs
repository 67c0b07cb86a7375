//! Policies: YAML rules in a Kubernetes CRD shape that turn events into
//! verdicts (alert, block, kill the process, isolate or freeze the container).
//!
//! ```yaml
//! apiVersion: lancet.dev/v1alpha1
//! kind: Policy
//! metadata: { name: no-shells-in-web }
//! spec:
//!   selector: { images: ["localhost/web*"] }
//!   rules:
//!     - name: shell in web
//!       match: { events: [execve], exe: ["*/sh", "*/bash"] }
//!       action: block
//!       severity: high
//!       tags: [T1059.004]
//! ```
//!
//! Semantics, in one place:
//! - **Selector**: every given field must hold (AND); a list holds when any
//!   of its globs matches (OR). `images` is matched against the image
//!   reference and the image digest, `names` against the runtime's container
//!   name and the pod spec's container name, `namespaces` against the pod
//!   namespace (a container outside Kubernetes has none, so it never matches a
//!   `namespaces` selector), `labels` needs every key present with a value
//!   matching its glob. An empty selector selects every container.
//! - **The host** (events not attributed to a container, including
//!   unattributed ones) is never selected unless the selector says
//!   `host: true`; so the default rules and ordinary policies skip host events.
//! - **Match**: every given condition must hold (AND); lists are OR. A
//!   condition only holds for events that carry its field: `exe`, `args` and
//!   `parent` for `execve`; `paths` and `fileOps` for file events (`paths`
//!   is also tried against a rename's old path); `ports` is the destination
//!   port of a `connect` and the local port of `listen`, `bind` and `accept`;
//!   `cidrs` is the peer of a `connect` or `accept`. A rule whose conditions
//!   can never hold together (e.g. `events: [connect]` with `exe`) is an error.
//! - **Globs**: `*` matches any run of characters *including* `/` (so
//!   `*/nc` matches `/usr/bin/nc`), `?`, `[...]`, `{a,b}` and `**` work as in
//!   globset. `args` is matched against the whole argv joined with spaces
//!   (argv\[0\] included); `parent` against the parent's executable path and
//!   its `comm`.
//! - `notInProfile: true` restricts a rule to events the caller found to
//!   deviate from the workload's profile.
//!
//! Parsing reports every error of a file as `file:line:col: message`: YAML
//! syntax, unknown fields, unknown values and types come from serde_norway
//! with its positions; checks that need the whole policy (globs, CIDRs, rule
//! names, duplicates) run afterwards and are placed by walking the document
//! again with serde_norway to the offending value, so their positions are
//! exactly those the YAML parser assigns.

mod compile;
#[cfg(test)]
mod tests;

pub use compile::{PolicySet, PolicySetError, SharedStr, Tags, Verdict};

use crate::event::{EventKind, FileOp, NetOp};
use crate::profile::{Deviation, Mode, Span};
use schemars::JsonSchema;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// The built-in rules, also an example of the format.
pub const DEFAULT_RULES_YAML: &str = include_str!("default_rules.yaml");
/// File name the built-in rules report in errors.
pub const DEFAULT_RULES_FILE: &str = "default_rules.yaml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ApiVersion {
    #[serde(rename = "lancet.dev/v1alpha1")]
    V1alpha1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Kind {
    Policy,
}

/// One policy document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Policy {
    pub api_version: ApiVersion,
    pub kind: Kind,
    pub metadata: Metadata,
    pub spec: PolicySpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    /// Unique among the policies loaded together.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicySpec {
    /// Which containers the rules apply to; empty = every container.
    #[serde(default, skip_serializing_if = "Selector::is_empty")]
    pub selector: Selector,
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Directories the selected containers write by design, recursively
    /// (absolute paths): writes there are normal life (never alerted), and
    /// one inside the protected set (`/etc/app/conf.d`) stays writable in
    /// protect mode. What an image's entrypoint writes below `/etc` at
    /// start goes here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writable: Vec<String>,
}

/// Fields are ANDed, list entries ORed; every string is a glob.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    /// Globs on the image reference (`repository[:tag]`) or its digest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    /// Globs on the container name (runtime name or pod-spec name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Every key must be present with a value matching the glob.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Globs on the Kubernetes namespace of the pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Also apply to events outside any container (the host, and events that
    /// could not be attributed).
    #[serde(default, skip_serializing_if = "is_false")]
    pub host: bool,
}

impl Selector {
    /// Selects every container (and not the host).
    pub fn is_empty(&self) -> bool {
        self.images.is_empty() && self.names.is_empty() && self.labels.is_empty() && self.namespaces.is_empty() && !self.host
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    /// Unique within its policy; reported as the Falco `rule`.
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(rename = "match")]
    pub matches: Match,
    pub action: Action,
    pub severity: Severity,
    /// MITRE ATT&CK technique ids where they apply, and free-form tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Step up the response ladder when the rule keeps matching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate: Option<Escalation>,
}

/// `after` matches of one rule in one container `within` a window move the
/// response to `to` (e.g. three refused execs in a minute: kill the
/// process). Isolation and freezing end after `expire` (default: the
/// agent's configured expiry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Escalation {
    pub after: u32,
    pub within: Span,
    pub to: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire: Option<Span>,
}

/// Conditions are ANDed, list entries ORed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Match {
    /// Falco `evt.type` names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventType>,
    /// Globs on the executed file (execve).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exe: Vec<String>,
    /// Globs on argv joined with spaces (execve).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Globs on the file path (file events; renames: old or new path).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Destination port of connect; local port of listen, bind, accept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// Networks (or single addresses) of the peer of connect and accept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cidrs: Vec<String>,
    /// Globs on the parent's executable path or comm (execve).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file_ops: Vec<FileOperation>,
    /// Only when the event deviates from the workload's profile.
    #[serde(default, skip_serializing_if = "is_false")]
    pub not_in_profile: bool,
}

impl Match {
    fn is_empty(&self) -> bool {
        *self == Match::default()
    }
}

/// Falco `evt.type` names of the events lancet produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Execve,
    Clone,
    Procexit,
    Connect,
    Accept,
    Listen,
    Bind,
    Close,
    Creat,
    Write,
    Unlink,
    Rename,
    Chmod,
    Open,
    CgroupMkdir,
    CgroupRmdir,
}

impl EventType {
    pub const ALL: [EventType; 16] = [
        EventType::Execve,
        EventType::Clone,
        EventType::Procexit,
        EventType::Connect,
        EventType::Accept,
        EventType::Listen,
        EventType::Bind,
        EventType::Close,
        EventType::Creat,
        EventType::Write,
        EventType::Unlink,
        EventType::Rename,
        EventType::Chmod,
        EventType::Open,
        EventType::CgroupMkdir,
        EventType::CgroupRmdir,
    ];

    pub fn of(kind: &EventKind) -> EventType {
        match kind {
            EventKind::Exec(_) => EventType::Execve,
            EventKind::Fork { .. } => EventType::Clone,
            EventKind::Exit(_) => EventType::Procexit,
            EventKind::Net(n) => match n.op {
                NetOp::Connect => EventType::Connect,
                NetOp::Accept => EventType::Accept,
                NetOp::Listen => EventType::Listen,
                NetOp::Bind => EventType::Bind,
                NetOp::Close => EventType::Close,
            },
            EventKind::File(f) => FileOperation::from(f.op).event_type(),
            EventKind::CgroupMkdir { .. } => EventType::CgroupMkdir,
            EventKind::CgroupRmdir { .. } => EventType::CgroupRmdir,
        }
    }

    /// The Falco name (`execve`, `connect`, …), as [`EventKind::evt_type`].
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Execve => "execve",
            EventType::Clone => "clone",
            EventType::Procexit => "procexit",
            EventType::Connect => "connect",
            EventType::Accept => "accept",
            EventType::Listen => "listen",
            EventType::Bind => "bind",
            EventType::Close => "close",
            EventType::Creat => "creat",
            EventType::Write => "write",
            EventType::Unlink => "unlink",
            EventType::Rename => "rename",
            EventType::Chmod => "chmod",
            EventType::Open => "open",
            EventType::CgroupMkdir => "cgroup_mkdir",
            EventType::CgroupRmdir => "cgroup_rmdir",
        }
    }

    pub(crate) fn bit(self) -> u16 {
        1 << self as u16
    }
}

/// File operations, named as policies write them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FileOperation {
    Create,
    Modify,
    Chmod,
    Delete,
    Rename,
    Open,
}

impl FileOperation {
    pub fn event_type(self) -> EventType {
        match self {
            FileOperation::Create => EventType::Creat,
            FileOperation::Modify => EventType::Write,
            FileOperation::Chmod => EventType::Chmod,
            FileOperation::Delete => EventType::Unlink,
            FileOperation::Rename => EventType::Rename,
            FileOperation::Open => EventType::Open,
        }
    }
}

impl From<FileOp> for FileOperation {
    fn from(op: FileOp) -> Self {
        match op {
            FileOp::Create => FileOperation::Create,
            FileOp::Modify => FileOperation::Modify,
            FileOp::Delete => FileOperation::Delete,
            FileOp::Rename => FileOperation::Rename,
            FileOp::Chmod => FileOperation::Chmod,
            FileOp::Open => FileOperation::Open,
        }
    }
}

/// What a rule asks for, mildest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Record only; no alert.
    Audit,
    Alert,
    /// Refuse the one operation (EPERM).
    Block,
    /// Kill the offending process.
    KillProcess,
    /// Cut the container's network.
    Isolate,
    /// Freeze the container's cgroup.
    Freeze,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Audit => "audit",
            Action::Alert => "alert",
            Action::Block => "block",
            Action::KillProcess => "kill-process",
            Action::Isolate => "isolate",
            Action::Freeze => "freeze",
        }
    }

    /// Needs an enforcement backend (everything but audit and alert).
    pub fn is_enforcing(self) -> bool {
        !matches!(self, Action::Audit | Action::Alert)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// The Falco priority name.
    pub fn priority(self) -> &'static str {
        match self {
            Severity::Low => "Notice",
            Severity::Medium => "Warning",
            Severity::High => "Error",
            Severity::Critical => "Critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is done about a verdict in a mode: `(action taken, would_block)`.
///
/// In learn and monitor nothing is enforced: an enforcing action (block,
/// kill-process, isolate, freeze) is demoted to `alert` and reported as
/// `would_block = true`. In protect the action is returned unchanged (what
/// the enforcement backends should do) with `would_block = false`, since it
/// is not hypothetical; use [`Action::is_enforcing`] on the result to count
/// enforcements. Audit and alert are the same in every mode.
pub fn effective_action(action: Action, mode: Mode) -> (Action, bool) {
    match mode {
        Mode::Protect => (action, false),
        Mode::Learn | Mode::Monitor if action.is_enforcing() => (Action::Alert, true),
        Mode::Learn | Mode::Monitor => (action, false),
    }
}

/// Adds the profile-deviation verdict ([`Verdict::profile_deviation`]) for
/// `deviation` to the verdicts the rules gave an event, when it is due.
///
/// In learn and monitor it is due only when nothing else fired: a rule that
/// names the event says more than "not in the profile", and one alert per
/// event is enough. In protect, a deviation is refused whatever else fired:
/// an alert-only rule that matches (the default "shell in container" rule)
/// must not turn a refusal into a mere alert, so the deviation's block is
/// added unless a verdict that enforces (block or stronger) is already there.
pub fn with_deviation(verdicts: &mut Vec<Verdict>, deviation: Option<&Deviation>, mode: Mode) {
    let Some(d) = deviation else { return };
    let due = match mode {
        Mode::Protect => !verdicts.iter().any(|v| v.action.is_enforcing()),
        Mode::Learn | Mode::Monitor => verdicts.is_empty(),
    };
    if due {
        verdicts.push(Verdict::profile_deviation(d));
    }
}

/// The JSON Schema of a policy document.
pub fn policy_schema() -> serde_json::Value {
    schemars::schema_for!(Policy).to_value()
}

/// The built-in policy (`lancet-defaults`): an empty selector, alert-only
/// rules, most of them independent of profiles.
pub fn default_policy() -> Policy {
    static DEFAULT: std::sync::OnceLock<Policy> = std::sync::OnceLock::new();
    DEFAULT
        .get_or_init(|| match parse_policies(DEFAULT_RULES_YAML, DEFAULT_RULES_FILE) {
            Ok(mut p) if p.len() == 1 => p.remove(0),
            // The file is part of the source and tested; this cannot happen in
            // a build that passed its tests.
            Ok(p) => panic!("{DEFAULT_RULES_FILE}: expected one policy, found {}", p.len()),
            Err(e) => panic!("{DEFAULT_RULES_FILE}: {}", e.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")),
        })
        .clone()
}

/// The built-in rules (those of [`default_policy`]).
pub fn default_rules() -> Vec<Rule> {
    default_policy().spec.rules
}

/// A problem in a policy file. `line` and `column` are 1-based; 0 when the
/// position is unknown (then it displays as `file: message`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)
        }
    }
}

impl PolicyError {
    fn from_yaml(file: &str, text: &str, e: &serde_norway::Error) -> Self {
        let message = e.to_string();
        match (e.location(), crate::yaml_guard::error_position(text, e)) {
            (Some(loc), Some((line, column))) => {
                let suffix = format!(" at line {} column {}", loc.line(), loc.column());
                PolicyError { file: file.into(), line, column, message: message.replacen(&suffix, "", 1) }
            }
            _ => PolicyError { file: file.into(), line: 0, column: 0, message },
        }
    }
}

/// Reads every policy document of a file (`---` separated; empty documents
/// are skipped). Errors: all of them, in file order, each as
/// `file:line:col: message`. A YAML syntax error ends the reading of the file
/// (what follows cannot be trusted), but the documents before it are checked.
pub fn parse_policies(text: &str, file: &str) -> Result<Vec<Policy>, Vec<PolicyError>> {
    // Deep flow nesting costs libyaml quadratic time before serde_norway
    // refuses it, and this reads the text up to three times (see `yaml_guard`).
    if let Some((line, column)) = crate::yaml_guard::too_deep(text) {
        return Err(vec![PolicyError { file: file.into(), line, column, message: crate::yaml_guard::TOO_DEEP.into() }]);
    }
    let mut errors = Vec::new();
    // Pass 1: syntax, and which documents are not empty.
    let mut docs = Vec::new();
    let mut readable = 0;
    for (i, de) in serde_norway::Deserializer::from_str(text).enumerate() {
        match serde_norway::Value::deserialize(de) {
            Ok(serde_norway::Value::Null) => {}
            Ok(_) => docs.push(i),
            Err(e) => {
                errors.push(PolicyError::from_yaml(file, text, &e));
                break;
            }
        }
        readable = i + 1;
    }
    // Pass 2: structure (unknown fields, types, enum values).
    let mut policies = Vec::new();
    for (i, de) in serde_norway::Deserializer::from_str(text).enumerate().take(readable) {
        if !docs.contains(&i) {
            continue;
        }
        match Policy::deserialize(de) {
            Ok(p) => policies.push((i, p)),
            Err(e) => errors.push(PolicyError::from_yaml(file, text, &e)),
        }
    }
    // Pass 3: meaning (globs, CIDRs, names), placed by walking the
    // document to the offending value.
    let mut first_name: HashMap<&str, usize> = HashMap::new();
    for (doc, p) in &policies {
        let mut issues = validate(p);
        if !p.metadata.name.is_empty() {
            if let Some(prev) = first_name.insert(&p.metadata.name, *doc) {
                let at = locate(text, prev, &[Seg::key("metadata"), Seg::key("name")]);
                issues.push(Issue {
                    path: vec![Seg::key("metadata"), Seg::key("name")],
                    message: format!("duplicate policy name {:?}{}", p.metadata.name, first_at(at)),
                });
            }
        }
        for issue in issues {
            let (line, column) = locate(text, *doc, &issue.path).unwrap_or((0, 0));
            errors.push(PolicyError {
                file: file.into(),
                line,
                column,
                message: format!("{}: {}", path_string(&issue.path), issue.message),
            });
        }
    }
    errors.sort_by_key(|e| (e.line == 0, e.line, e.column));
    if errors.is_empty() {
        Ok(policies.into_iter().map(|(_, p)| p).collect())
    } else {
        Err(errors)
    }
}

fn first_at(at: Option<(usize, usize)>) -> String {
    match at {
        Some((l, c)) => format!(" (first defined at {l}:{c})"),
        None => String::new(),
    }
}

/// One step of a path into a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

impl Seg {
    fn key(k: &str) -> Seg {
        Seg::Key(k.to_string())
    }
}

pub(crate) fn path_string(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// A semantic problem at a path.
#[derive(Debug, Clone)]
pub(crate) struct Issue {
    pub path: Vec<Seg>,
    pub message: String,
}

/// Where the value at `path` of document `doc` starts (1-based line and
/// column), found by walking the document with serde_norway and failing on
/// arrival: serde_norway stamps the failure with the node's position.
fn locate(text: &str, doc: usize, path: &[Seg]) -> Option<(usize, usize)> {
    let de = serde_norway::Deserializer::from_str(text).nth(doc)?;
    let err = Locate(path).deserialize(de).err()?;
    crate::yaml_guard::error_position(text, &err)
}

struct Locate<'a>(&'a [Seg]);

const HERE: &str = "lancet: located";

impl<'de> DeserializeSeed<'de> for Locate<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Locate<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("anything")
    }

    // Scalars: arriving at one fails (so it is located); the default visit_*
    // methods fail with `invalid_type`, which is as good.

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Seg::Key(want), rest)) = self.0.split_first() else {
            return Err(serde::de::Error::custom(HERE));
        };
        while let Some(key) = map.next_key::<serde_norway::Value>()? {
            if key.as_str() == Some(want.as_str()) {
                return map.next_value_seed(Locate(rest));
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Seg::Index(want), rest)) = self.0.split_first() else {
            return Err(serde::de::Error::custom(HERE));
        };
        for _ in 0..*want {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        seq.next_element_seed(Locate(rest)).map(|_| ())
    }
}

/// Builds a glob the way rules use them (`*` crosses `/`).
pub(crate) fn glob(pattern: &str) -> Result<globset::Glob, String> {
    if pattern.is_empty() {
        return Err("empty glob".into());
    }
    globset::GlobBuilder::new(pattern)
        .literal_separator(false)
        .backslash_escape(true)
        .build()
        .map_err(|e| format!("invalid glob {pattern:?}: {}", e.kind()))
}

/// A CIDR, or a single address (as /32 or /128).
pub(crate) fn cidr(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<ipnet::IpNet>() {
        return Ok(n);
    }
    s.parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| format!("invalid CIDR {s:?} (expected e.g. 10.0.0.0/8, fd00::/8 or an address)"))
}

/// The events a condition can hold for.
pub(crate) fn domain_exec() -> u16 {
    EventType::Execve.bit()
}
pub(crate) fn domain_file() -> u16 {
    [EventType::Creat, EventType::Write, EventType::Unlink, EventType::Rename, EventType::Chmod, EventType::Open]
        .iter()
        .fold(0, |m, t| m | t.bit())
}
pub(crate) fn domain_ports() -> u16 {
    [EventType::Connect, EventType::Listen, EventType::Bind, EventType::Accept].iter().fold(0, |m, t| m | t.bit())
}
pub(crate) fn domain_peer() -> u16 {
    EventType::Connect.bit() | EventType::Accept.bit()
}

/// The event types a match can hold for (0: none).
pub(crate) fn event_mask(m: &Match) -> u16 {
    let mut mask = u16::MAX;
    if !m.events.is_empty() {
        mask &= m.events.iter().fold(0, |a, t| a | t.bit());
    }
    if !m.file_ops.is_empty() {
        mask &= m.file_ops.iter().fold(0, |a, o| a | o.event_type().bit());
    }
    if !m.exe.is_empty() || !m.args.is_empty() || !m.parent.is_empty() {
        mask &= domain_exec();
    }
    if !m.paths.is_empty() {
        mask &= domain_file();
    }
    if !m.ports.is_empty() {
        mask &= domain_ports();
    }
    if !m.cidrs.is_empty() {
        mask &= domain_peer();
    }
    mask
}

/// Everything that can be wrong in a well-formed policy.
pub(crate) fn validate(p: &Policy) -> Vec<Issue> {
    let mut out = Vec::new();
    let at = |segs: &[Seg]| segs.to_vec();
    let mut issue = |path: Vec<Seg>, message: String| out.push(Issue { path, message });
    if p.metadata.name.trim().is_empty() {
        issue(vec![Seg::key("metadata"), Seg::key("name")], "policy name is empty".into());
    }
    let sel = &p.spec.selector;
    let base = [Seg::key("spec"), Seg::key("selector")];
    for (field, list) in [("images", &sel.images), ("names", &sel.names), ("namespaces", &sel.namespaces)] {
        for (i, g) in list.iter().enumerate() {
            if let Err(m) = glob(g) {
                let mut path = at(&base);
                path.extend([Seg::key(field), Seg::Index(i)]);
                issue(path, m);
            }
        }
    }
    for (k, v) in &sel.labels {
        let mut path = at(&base);
        path.extend([Seg::key("labels"), Seg::Key(k.clone())]);
        if k.is_empty() {
            issue(path, "empty label key".into());
        } else if let Err(m) = glob(v) {
            issue(path, m);
        }
    }
    if p.spec.rules.is_empty() && p.spec.writable.is_empty() {
        issue(vec![Seg::key("spec"), Seg::key("rules")], "a policy needs at least one rule or writable directory".into());
    }
    for (i, d) in p.spec.writable.iter().enumerate() {
        let clean = d.starts_with('/') && !d.contains('\0') && !d.split('/').any(|c| c == "..") && d != "/";
        if !clean {
            issue(
                vec![Seg::key("spec"), Seg::key("writable"), Seg::Index(i)],
                format!("{d:?}: a writable directory is an absolute path below / without `..`"),
            );
        }
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (ri, r) in p.spec.rules.iter().enumerate() {
        let rule = || vec![Seg::key("spec"), Seg::key("rules"), Seg::Index(ri)];
        let field = |f: &str| {
            let mut p = rule();
            p.push(Seg::key(f));
            p
        };
        if r.name.trim().is_empty() {
            issue(field("name"), "rule name is empty".into());
        } else if let Some(prev) = names.insert(r.name.as_str(), ri) {
            issue(field("name"), format!("duplicate rule name {:?} (first used by spec.rules[{prev}])", r.name));
        }
        let m = &r.matches;
        let in_match = |f: &str, i: usize| {
            let mut p = field("match");
            p.extend([Seg::key(f), Seg::Index(i)]);
            p
        };
        if m.is_empty() {
            issue(field("match"), "match has no conditions (it would match every event)".into());
            continue;
        }
        for (name, list) in [("exe", &m.exe), ("args", &m.args), ("paths", &m.paths), ("parent", &m.parent)] {
            for (i, g) in list.iter().enumerate() {
                if let Err(msg) = glob(g) {
                    issue(in_match(name, i), msg);
                }
            }
        }
        for (i, c) in m.cidrs.iter().enumerate() {
            if let Err(msg) = cidr(c) {
                issue(in_match("cidrs", i), msg);
            }
        }
        for (i, port) in m.ports.iter().enumerate() {
            if *port == 0 {
                issue(in_match("ports", i), "port 0 never matches".into());
            }
        }
        if event_mask(m) == 0 {
            let mut used = Vec::new();
            for (name, present) in [
                ("events", !m.events.is_empty()),
                ("fileOps", !m.file_ops.is_empty()),
                ("exe/args/parent (execve only)", !m.exe.is_empty() || !m.args.is_empty() || !m.parent.is_empty()),
                ("paths (file events only)", !m.paths.is_empty()),
                ("ports (connect/listen/bind/accept only)", !m.ports.is_empty()),
                ("cidrs (connect/accept only)", !m.cidrs.is_empty()),
            ] {
                if present {
                    used.push(name);
                }
            }
            issue(field("match"), format!("no event can satisfy these conditions together: {}", used.join(", ")));
        }
    }
    out
}
