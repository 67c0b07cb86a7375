//! Workload profiles: what all replicas of one image (keyed by image digest)
//! normally do — executables with their parents and arguments, listening
//! ports, outbound and inbound flows, directories written and sensitive files
//! read — learned from events and kept as YAML in a Kubernetes CRD shape
//! (`apiVersion: lancet.dev/v1alpha1`, `kind: Profile`).
//!
//! A profile goes learn → monitor → protect ([`Lifecycle`] decides when with
//! an injected clock). While learning, [`Profile::observe`] adds what is new;
//! afterwards [`Profile::check`] says what in an event is not in the profile,
//! without allocating when the event is known (a private lookup index, rebuilt
//! on load and kept current by `observe` and `merge`, backs it).
//!
//! `observe` and `check` look at the same things: an event `observe` ignores
//! (a failed connect, a bind to port 0, a delete) is never a deviation, and an
//! event `observe` would learn nothing from is never one either — except once
//! a section is full, when the unlearned entries do deviate.

mod baseline;
#[cfg(test)]
mod tests;
mod time;

pub use baseline::{Baseline, BaselineFile, BaselineLink, FileMode};
pub use time::{parse_duration, parse_rfc3339, Span, Timestamp};

use crate::drift::{normalise_code, ProgramSource};
use crate::event::{Event, EventKind, ExecEvent, FileOp, L4Proto, NetOp};
use crate::write_sets::{anchor, classify_write, collapse, collapsed_anchor, WritableSet, WriteClass};
use ipnet::IpNet;
use schemars::JsonSchema;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// Entries per section (executables, listening, outbound, inbound,
/// writtenDirs, sensitiveReads). A full section learns nothing more: each
/// observation it could not learn is counted in `spec.overflow.<section>`,
/// and events about unlearned entries deviate in `check`.
pub const MAX_ENTRIES: usize = 1024;
/// Distinct parents kept per executable; further parents are counted in
/// `spec.overflow.executables` and not learned.
pub const MAX_PARENTS: usize = 64;
/// Distinct argument lists kept per executable; one more and the executable's
/// arguments become `argsPattern: "*"` (any).
pub const MAX_ARGS_LISTS: usize = 8;
/// Argument lists longer than this (elements), or with an element longer
/// than [`MAX_ARG_BYTES`], are not kept: the executable goes to `argsPattern: "*"`.
pub const MAX_ARGV: usize = 32;
pub const MAX_ARG_BYTES: usize = 256;
/// Distinct run names kept per executable ([`Executable::names`]); further
/// names, and names longer than [`MAX_ARG_BYTES`], are counted in
/// `spec.overflow.executables` and not learned.
pub const MAX_NAMES: usize = 64;
/// Distinct inline code strings kept per interpreter ([`Executable::code`]);
/// further ones, and code longer than [`MAX_CODE_BYTES`] or cut from the
/// exec record, are counted in `spec.overflow.executables` and not learned.
pub const MAX_CODES: usize = 64;
pub const MAX_CODE_BYTES: usize = 1024;

/// The path every exec of `/proc/self/exe` or `/proc/<pid>/exe` is learned
/// under: a multi-call binary re-executing itself (Debian's busybox `sh`
/// runs applets so, with the applet in argv\[0\]). Which file it is depends
/// on the process that made the exec, so it cannot be resolved by path.
pub const SELF_EXE: &str = "/proc/self/exe";

/// The metadata annotation of a [`Profile::successor`] naming the image
/// digest whose profile it started from.
pub const PREVIOUS_DIGEST_ANNOTATION: &str = "lancet.dev/previous-digest";

pub const API_VERSION: &str = "lancet.dev/v1alpha1";

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The document is not valid YAML or not a valid profile, at a known place.
    #[error("{file}:{line}:{column}: {message}")]
    Syntax { file: String, line: usize, column: usize, message: String },
    /// The document is invalid and the parser could not say where (empty
    /// document, duplicate entries…).
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error("serialising profile: {0}")]
    Serialize(String),
}

/// learn → monitor → protect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Record what the workload does; nothing deviates.
    #[default]
    Learn,
    /// Report deviations from the profile; block nothing.
    Monitor,
    /// Deviations are refused where a backend can refuse them.
    Protect,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Learn => "learn",
            Mode::Monitor => "monitor",
            Mode::Protect => "protect",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "learn" => Ok(Mode::Learn),
            "monitor" => Ok(Mode::Monitor),
            "protect" => Ok(Mode::Protect),
            other => Err(format!("unknown mode {other:?} (learn, monitor or protect)")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl From<L4Proto> for Protocol {
    fn from(p: L4Proto) -> Self {
        match p {
            L4Proto::Tcp => Protocol::Tcp,
            L4Proto::Udp => Protocol::Udp,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// The other end of a flow as the caller knows it at event time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerRef {
    /// The destination is a known workload (its profile key or name).
    Workload(String),
    /// Only the address is known.
    Ip(IpAddr),
    /// A DNS name, when the caller knows which name was resolved.
    Host(String),
}

/// The other end of a flow as a profile records it: `{workload: …}`,
/// `{cidr: …}` or `{host: …}`. An observed address is learned as a /32 or
/// /128; a wider CIDR (written by hand) covers every address in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Peer {
    Workload(String),
    Cidr(#[schemars(with = "String")] IpNet),
    Host(String),
}

// Written as a one-key mapping (`workload: web`), the form `Deserialize`
// reads and the schema describes, rather than a YAML tag.
impl Serialize for Peer {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        match self {
            Peer::Workload(w) => m.serialize_entry("workload", w)?,
            Peer::Cidr(n) => m.serialize_entry("cidr", &n.to_string())?,
            Peer::Host(h) => m.serialize_entry("host", h)?,
        }
        m.end()
    }
}

// serde_norway reads externally tagged enums only from YAML tags (`!cidr …`),
// so the one-key mapping is read by hand.
impl<'de> Deserialize<'de> for Peer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Repr {
            workload: Option<String>,
            cidr: Option<IpNet>,
            host: Option<String>,
        }
        match Repr::deserialize(d)? {
            Repr { workload: Some(w), cidr: None, host: None } => Ok(Peer::Workload(w)),
            Repr { workload: None, cidr: Some(n), host: None } => Ok(Peer::Cidr(n)),
            Repr { workload: None, cidr: None, host: Some(h) } => Ok(Peer::Host(h)),
            _ => Err(serde::de::Error::custom("a peer has exactly one of `workload`, `cidr` or `host`")),
        }
    }
}

impl Peer {
    fn key(&self) -> PeerKey<'_> {
        match self {
            Peer::Workload(w) => PeerKey::Workload(w),
            Peer::Host(h) => PeerKey::Host(h),
            Peer::Cidr(n) => PeerKey::Ip(n.addr()),
        }
    }
}

impl From<&PeerRef> for Peer {
    fn from(p: &PeerRef) -> Self {
        PeerKey::from(p).to_peer()
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Workload(w) => write!(f, "workload:{w}"),
            Peer::Host(h) => write!(f, "host:{h}"),
            Peer::Cidr(n) if n.prefix_len() == n.max_prefix_len() => write!(f, "{}", n.addr()),
            Peer::Cidr(n) => write!(f, "{n}"),
        }
    }
}

/// A peer borrowed from an event or a caller, for allocation-free lookups.
#[derive(Debug, Clone, Copy)]
enum PeerKey<'a> {
    Workload(&'a str),
    Host(&'a str),
    Ip(IpAddr),
}

impl<'a> From<&'a PeerRef> for PeerKey<'a> {
    fn from(p: &'a PeerRef) -> Self {
        match p {
            PeerRef::Workload(w) => PeerKey::Workload(w),
            PeerRef::Host(h) => PeerKey::Host(h),
            PeerRef::Ip(ip) => PeerKey::Ip(ip.to_canonical()),
        }
    }
}

impl PeerKey<'_> {
    fn to_peer(self) -> Peer {
        match self {
            PeerKey::Workload(w) => Peer::Workload(w.to_string()),
            PeerKey::Host(h) => Peer::Host(h.to_string()),
            PeerKey::Ip(ip) => Peer::Cidr(IpNet::from(ip)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ApiVersion {
    #[serde(rename = "lancet.dev/v1alpha1")]
    V1alpha1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Kind {
    Profile,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// DNS-1123 name derived from the image ([`profile_name`]).
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Learning {
    /// When learning (re)started.
    pub started: Timestamp,
    /// When something new was last learned.
    pub last_new: Timestamp,
}

/// Observations a full section could not learn (see [`MAX_ENTRIES`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Overflow {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub executables: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub listening: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub outbound: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inbound: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub written_dirs: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sensitive_reads: u64,
}

impl Overflow {
    pub fn is_empty(&self) -> bool {
        *self == Overflow::default()
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// `"*"`: any arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ArgsPattern {
    #[serde(rename = "*")]
    Any,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Executable {
    pub path: String,
    /// Parent executables (or parent `comm` where the path was unknown). An
    /// empty list accepts any parent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<String>,
    /// Names the file was run under (argv\[0\]'s basename) besides its own
    /// basename: the applets of a multi-call binary such as busybox. Empty
    /// for ordinary programs, which are run under their own name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Distinct argument lists seen (without argv\[0\]), while they are few.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_pattern: Option<ArgsPattern>,
    /// For an interpreter: the inline code it was run with (`sh -c CODE`,
    /// `python3 -c CODE`, `perl -e CODE`), whitespace collapsed
    /// ([`normalise_code`](crate::drift::normalise_code)). A shell is
    /// approved with its code: protect mode runs only these strings, so a
    /// learned health check `sh -c 'wget …'` does not approve `sh -c id`.
    /// Kept apart from `args`, which give up at a few lists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub code: Vec<String>,
    /// The interpreter was run with its program on standard input
    /// (`… | sh`, `sh -s`): protect mode lets such runs through only then.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin: bool,
    /// SHA-256 (hex) of the file's content when it lives outside the image
    /// (a volume, a bind mount): nothing there is an image file, so protect
    /// mode runs it only while its content is still this one. Set by the
    /// agent at learn time ([`Profile::set_sha256`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default)]
    pub first_seen: Timestamp,
    #[serde(default)]
    pub last_seen: Timestamp,
    #[serde(default)]
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listen {
    pub port: u16,
    pub protocol: Protocol,
    #[serde(default)]
    pub first_seen: Timestamp,
    #[serde(default)]
    pub last_seen: Timestamp,
    #[serde(default)]
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Flow {
    pub peer: Peer,
    /// Remote port for outbound flows, local port for inbound ones.
    pub port: u16,
    pub protocol: Protocol,
    #[serde(default)]
    pub first_seen: Timestamp,
    #[serde(default)]
    pub last_seen: Timestamp,
    #[serde(default)]
    pub count: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathEntry {
    pub path: String,
    #[serde(default)]
    pub first_seen: Timestamp,
    #[serde(default)]
    pub last_seen: Timestamp,
    #[serde(default)]
    pub count: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfileSpec {
    /// The image reference, for people.
    pub image: String,
    /// The profile's key.
    pub image_digest: String,
    pub mode: Mode,
    /// When the profile entered its current mode.
    pub mode_since: Timestamp,
    pub learning: Learning,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub executables: Vec<Executable>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listening: Vec<Listen>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbound: Vec<Flow>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inbound: Vec<Flow>,
    /// Parent directories of files created, modified or renamed into.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub written_dirs: Vec<PathEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sensitive_reads: Vec<PathEntry>,
    #[serde(default, skip_serializing_if = "Overflow::is_empty")]
    pub overflow: Overflow,
    /// What the image ships (from `lancet scan`), when known: an exec of a
    /// file outside it, or with another content hash, is drift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Baseline>,
}

/// One workload's learned behaviour. Fields are read through accessors so
/// the lookup index cannot go stale.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Profile {
    api_version: ApiVersion,
    kind: Kind,
    metadata: Metadata,
    spec: ProfileSpec,
    #[serde(skip)]
    index: Index,
}

impl PartialEq for Profile {
    fn eq(&self, o: &Self) -> bool {
        self.api_version == o.api_version && self.kind == o.kind && self.metadata == o.metadata && self.spec == o.spec
    }
}

/// What in an event is not in the profile. `NewName`: a known executable
/// run under a name (argv\[0\]) it was never run under, such as another
/// applet of a multi-call binary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Deviation {
    NewExecutable {
        path: String,
    },
    NewParent {
        path: String,
        parent: String,
    },
    NewName {
        path: String,
        name: String,
    },
    /// An interpreter run with inline code (or a program on stdin, code
    /// `<stdin>`) it was never run with.
    NewCode {
        path: String,
        code: String,
    },
    NewListen {
        port: u16,
        proto: Protocol,
    },
    NewOutbound {
        peer: Peer,
        port: u16,
        proto: Protocol,
    },
    NewInbound {
        peer: Peer,
        port: u16,
        proto: Protocol,
    },
    /// A write outside the writable set whose anchor the profile lacks:
    /// allowed, alerted once per anchor per container life.
    NewWrittenDir {
        dir: String,
    },
    NewSensitiveRead {
        path: String,
    },
    /// A write in the protected set (`entry` names which part): refused in
    /// protect mode whatever was learned; no profile entry can allow it
    /// (a policy's `writable` can).
    ProtectedWrite {
        path: String,
        entry: String,
    },
}

impl Deviation {
    /// Stable snake_case name (`new_executable`, …), for rule names and tags.
    pub fn kind(&self) -> &'static str {
        match self {
            Deviation::NewExecutable { .. } => "new_executable",
            Deviation::NewParent { .. } => "new_parent",
            Deviation::NewName { .. } => "new_name",
            Deviation::NewCode { .. } => "new_code",
            Deviation::NewListen { .. } => "new_listen",
            Deviation::NewOutbound { .. } => "new_outbound",
            Deviation::NewInbound { .. } => "new_inbound",
            Deviation::NewWrittenDir { .. } => "new_written_dir",
            Deviation::NewSensitiveRead { .. } => "new_sensitive_read",
            Deviation::ProtectedWrite { .. } => "protected_write",
        }
    }

    /// Whether protect mode refuses it. A write outside both sets is
    /// allowed (and alerted): a service's normal life must go on.
    pub fn refused_in_protect(&self) -> bool {
        !matches!(self, Deviation::NewWrittenDir { .. })
    }
}

impl fmt::Display for Deviation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Deviation::NewExecutable { path } => write!(f, "executable {path} is not in the profile"),
            Deviation::NewParent { path, parent } => write!(f, "{path} started by {parent}, not a parent in the profile"),
            Deviation::NewName { path, name } => write!(f, "{path} run as {name} is not in the profile"),
            Deviation::NewCode { path, code } => write!(f, "{path} run with code {code:?} is not in the profile"),
            Deviation::NewListen { port, proto } => write!(f, "listening on {port}/{proto} is not in the profile"),
            Deviation::NewOutbound { peer, port, proto } => {
                write!(f, "outbound connection to {peer} port {port}/{proto} is not in the profile")
            }
            Deviation::NewInbound { peer, port, proto } => {
                write!(f, "inbound connection from {peer} to port {port}/{proto} is not in the profile")
            }
            Deviation::NewWrittenDir { dir } => write!(f, "writing in {dir} is not in the profile"),
            Deviation::NewSensitiveRead { path } => write!(f, "reading {path} is not in the profile"),
            Deviation::ProtectedWrite { path, entry } => write!(f, "writing {path} ({entry}) is never part of a workload's normal life"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Section {
    Executables,
    Listening,
    Outbound,
    Inbound,
    WrittenDirs,
    SensitiveReads,
    /// The images' baselines (executables shipped), when both profiles
    /// have one: what an image update changed.
    Image,
}

impl Section {
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Executables => "executables",
            Section::Listening => "listening",
            Section::Outbound => "outbound",
            Section::Inbound => "inbound",
            Section::WrittenDirs => "writtenDirs",
            Section::SensitiveReads => "sensitiveReads",
            Section::Image => "image",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Change {
    Added,
    Removed,
    /// In both, with other content (an image executable whose hash differs).
    Changed,
}

/// One entry that `other` has and `self` lacks (added), the reverse
/// (removed), or that differs (changed). Prints as `+ executables: /bin/sh`,
/// `- listening: 8080/tcp`, `+ executables: /bin/httpd <- /bin/sh` (a
/// parent), `+ executables: /proc/self/exe as ls` (a run name),
/// `~ image: /bin/busybox sha256 0123456789ab -> 89abcdef0123`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DiffLine {
    pub section: Section,
    pub change: Change,
    pub entry: String,
}

impl fmt::Display for DiffLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = match self.change {
            Change::Added => '+',
            Change::Removed => '-',
            Change::Changed => '~',
        };
        write!(f, "{sign} {}: {}", self.section.as_str(), self.entry)
    }
}

/// When profiles move on from learn and monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifecycle {
    /// Shortest learning period.
    pub min_learning: Duration,
    /// How long nothing new must have been learned before monitoring.
    pub quiet_period: Duration,
    /// How long a monitored profile must go without a deviation before it
    /// protects; `None`: promotion to protect is manual only.
    pub auto_protect_after: Option<Duration>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle { min_learning: Duration::from_secs(600), quiet_period: Duration::from_secs(300), auto_protect_after: None }
    }
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Lifecycle {
    /// The mode `profile` should move to at `now` (epoch ns), if any.
    /// learn → monitor once it has learned for `min_learning` and learned
    /// nothing new for `quiet_period`; monitor → protect once
    /// `auto_protect_after` is set and no deviation (`last_deviation`, epoch
    /// ns) happened for that long since it entered monitor. Never demotes.
    pub fn next_mode(&self, profile: &Profile, now: u64, last_deviation: Option<u64>) -> Option<Mode> {
        let s = &profile.spec;
        match s.mode {
            Mode::Learn => {
                let learned = now.saturating_sub(s.learning.started.0) >= ns(self.min_learning);
                let quiet = now.saturating_sub(s.learning.last_new.0) >= ns(self.quiet_period);
                (learned && quiet).then_some(Mode::Monitor)
            }
            Mode::Monitor => {
                let after = self.auto_protect_after?;
                let clean_since = s.mode_since.0.max(last_deviation.unwrap_or(0));
                (now.saturating_sub(clean_since) >= ns(after)).then_some(Mode::Protect)
            }
            Mode::Protect => None,
        }
    }
}

/// A DNS-1123 label for `metadata.name` from an image reference:
/// `localhost/web:1` → `localhost-web-1`. Digests are dropped, other
/// characters become `-`, and names longer than 63 get a hash suffix so
/// they stay distinct.
pub fn profile_name(image: &str) -> String {
    let base = image.split('@').next().unwrap_or(image);
    let mut out = String::with_capacity(base.len());
    for c in base.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' };
        if !(c == '-' && (out.is_empty() || out.ends_with('-'))) {
            out.push(c);
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        // A bare digest or nothing usable: name it after the digest.
        let digest = image.rsplit(':').next().unwrap_or("");
        let d: String = digest.chars().filter(|c| c.is_ascii_hexdigit()).take(12).collect::<String>().to_ascii_lowercase();
        return if d.is_empty() { "unnamed".into() } else { format!("sha256-{d}") };
    }
    if out.len() > 63 {
        // FNV-1a of the full reference keeps truncated names apart.
        let h = image.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        out.truncate(54);
        while out.ends_with('-') {
            out.pop();
        }
        out.push_str(&format!("-{:08x}", h as u32));
    }
    out
}

/// The repository of an image reference, without tag or digest:
/// `registry:5000/team/app:2.1@sha256:…` → `registry:5000/team/app`. A port
/// in the registry host is not a tag. Versions of one repository share a
/// profile lineage ([`Profile::successor`]).
pub fn image_repository(image: &str) -> &str {
    crate::output::split_image(image).0
}

/// Short form of a hash for people: its first 12 characters.
fn short_hash(h: &str) -> &str {
    h.char_indices().nth(12).map_or(h, |(i, _)| &h[..i])
}

/// Executables added, removed and changed from baseline `a` to `b` (both
/// sorted by path), as [`Section::Image`] lines.
fn diff_baselines(a: &Baseline, b: &Baseline, out: &mut Vec<DiffLine>) {
    let line = |change, entry: String| DiffLine { section: Section::Image, change, entry };
    let (mut x, mut y) = (a.executables().iter().peekable(), b.executables().iter().peekable());
    loop {
        match (x.peek(), y.peek()) {
            (Some(f), Some(g)) if f.path == g.path => {
                if f.sha256 != g.sha256 {
                    out.push(line(Change::Changed, format!("{} sha256 {} -> {}", f.path, short_hash(&f.sha256), short_hash(&g.sha256))));
                }
                x.next();
                y.next();
            }
            (Some(f), Some(g)) if f.path < g.path => {
                out.push(line(Change::Removed, f.path.clone()));
                x.next();
            }
            (Some(f), None) => {
                out.push(line(Change::Removed, f.path.clone()));
                x.next();
            }
            (_, Some(g)) => {
                out.push(line(Change::Added, g.path.clone()));
                y.next();
            }
            (None, None) => break,
        }
    }
}

/// The JSON Schema of a profile document.
pub fn profile_schema() -> serde_json::Value {
    schemars::schema_for!(Profile).to_value()
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    first: u64,
    last: u64,
    count: u64,
}

impl Seen {
    fn now(now: u64) -> Self {
        Seen { first: now, last: now, count: 1 }
    }
    fn apply(self, first: &mut Timestamp, last: &mut Timestamp, count: &mut u64) {
        first.0 = first.0.min(self.first);
        last.0 = last.0.max(self.last);
        *count = count.saturating_add(self.count);
    }
}

/// What an event can teach a profile, borrowed from the event. An exec's
/// `name` is argv\[0\]'s basename where it differs from the path's.
enum Obs<'a> {
    Exec {
        path: &'a str,
        parent: Option<&'a str>,
        args: Option<&'a [String]>,
        name: Option<&'a str>,
        program: Option<Program>,
    },
    Listen {
        port: u16,
        proto: Protocol,
    },
    Flow {
        inbound: bool,
        peer: PeerKey<'a>,
        port: u16,
        proto: Protocol,
    },
    /// A change at `path` in directory `dir`; `content` when it creates,
    /// writes or renames (a delete or chmod only counts in the protected
    /// set).
    Written {
        path: &'a str,
        dir: &'a str,
        content: bool,
    },
    Sensitive(&'a str),
}

/// The writable set of a container nothing more is known of: scratch.
fn default_writable() -> &'static WritableSet {
    static SET: std::sync::OnceLock<WritableSet> = std::sync::OnceLock::new();
    SET.get_or_init(WritableSet::default)
}

/// The parent a profile records for processes the container runtime
/// started: which runtime process it was (conmon, runc, a shim) is noise.
pub const RUNTIME_PARENT: &str = "<container runtime>";

fn parent_of(x: &ExecEvent) -> Option<&str> {
    if x.parent_outside {
        return Some(RUNTIME_PARENT);
    }
    match x.parent_exe.as_deref() {
        Some(p) if !p.is_empty() => Some(p),
        _ if !x.parent_comm.is_empty() => Some(&x.parent_comm),
        _ => None,
    }
}

/// The directory a path lies in: `/tmp/a` → `/tmp`, `/a` → `/`.
fn parent_dir(path: &str) -> &str {
    let p = path.trim_end_matches('/');
    match p.rfind('/') {
        Some(0) => "/",
        Some(i) => &p[..i],
        None if path.starts_with('/') => "/",
        None => ".",
    }
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The path an exec is learned under: the path given to execve, except that
/// every `/proc/<pid>/exe` is [`SELF_EXE`].
fn exec_path(filename: &str) -> &str {
    let pid = filename.strip_prefix("/proc/").and_then(|r| r.strip_suffix("/exe"));
    match pid {
        Some(p) if p == "self" || (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) => SELF_EXE,
        _ => filename,
    }
}

/// The name a program was run under, when it is not its path's basename:
/// argv\[0\]'s basename, without the leading `-` of a login shell (busybox
/// drops it too when it picks the applet). `None` when argv\[0\] is missing
/// or empty: there is no name to learn or check.
fn run_name<'a>(path: &str, argv: &'a [String]) -> Option<&'a str> {
    // busybox run by its own name runs the applet its next argument names
    // (`busybox true`); the kernel's applet check judges that name, up to
    // four hops, and so is it learned.
    for (hop, arg) in argv.iter().enumerate().take(5) {
        let name = basename(arg);
        let name = name.strip_prefix('-').unwrap_or(name);
        if name == MULTICALL_DISPATCHER && hop < 4 && argv.len() > hop + 1 {
            continue;
        }
        return (!name.is_empty() && name != basename(path)).then_some(name);
    }
    None
}

/// What an interpreter exec is judged with besides its file: its inline
/// code (normalised) or that it reads its program from stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Program {
    Code(String),
    Stdin,
}

/// The code string [`Deviation::NewCode`] names for a program on stdin.
pub const STDIN_CODE: &str = "<stdin>";

fn program_of(x: &ExecEvent) -> Option<Program> {
    if x.truncated {
        // The code may be cut: judged as unknown, neither learned nor a
        // deviation (protect mode reads the whole command line itself).
        return None;
    }
    match crate::drift::program_source(x)?.1 {
        ProgramSource::Code(c) => Some(Program::Code(normalise_code(&c))),
        ProgramSource::Stdin => Some(Program::Stdin),
        _ => None,
    }
}

/// The multi-call binary whose own name means "the next argument is the
/// applet" (the kernel's applet check knows it by the same name).
const MULTICALL_DISPATCHER: &str = "busybox";

fn classify<'a>(ev: &'a Event, peer: Option<&'a PeerRef>) -> Option<Obs<'a>> {
    match &ev.kind {
        EventKind::Exec(x) if !x.filename.is_empty() => {
            let path = exec_path(&x.filename);
            Some(Obs::Exec {
                path,
                parent: parent_of(x),
                args: (!x.truncated).then(|| x.argv.get(1..).unwrap_or(&[])),
                // argv[0] is the first thing in the record: a cut argv still
                // has it whole unless it alone is longer than any name kept.
                name: run_name(path, &x.argv),
                program: program_of(x),
            })
        }
        EventKind::Net(n) if n.result == 0 => {
            let proto = Protocol::from(n.proto);
            let remote = || peer.map(PeerKey::from).unwrap_or(PeerKey::Ip(n.daddr.to_canonical()));
            match n.op {
                NetOp::Listen | NetOp::Bind if n.sport != 0 => Some(Obs::Listen { port: n.sport, proto }),
                // A UDP socket connected to the unspecified address (this
                // host itself) reaches no peer: PostgreSQL does it at every
                // start. Not an outbound peer. (Loopback stays one: a DNS
                // stub listens there.)
                NetOp::Connect if proto == Protocol::Udp && n.daddr.to_canonical().is_unspecified() => None,
                NetOp::Connect if peer.is_some() || !n.daddr.is_unspecified() => {
                    Some(Obs::Flow { inbound: false, peer: remote(), port: n.dport, proto })
                }
                NetOp::Accept => Some(Obs::Flow { inbound: true, peer: remote(), port: n.sport, proto }),
                _ => None,
            }
        }
        EventKind::File(f) if !f.path.is_empty() => match f.op {
            FileOp::Create | FileOp::Modify | FileOp::Rename => {
                Some(Obs::Written { path: &f.path, dir: parent_dir(&f.path), content: true })
            }
            FileOp::Open => Some(Obs::Sensitive(&f.path)),
            FileOp::Delete | FileOp::Chmod => Some(Obs::Written { path: &f.path, dir: parent_dir(&f.path), content: false }),
        },
        _ => None,
    }
}

#[derive(Debug, Clone, Default)]
struct ExecIdx {
    pos: usize,
    parents: HashSet<String>,
    names: HashSet<String>,
    code: HashSet<String>,
}

type PortKey = (u16, Protocol);

#[derive(Debug, Clone, Default)]
struct FlowIndex {
    workloads: HashMap<String, HashMap<PortKey, usize>>,
    hosts: HashMap<String, HashMap<PortKey, usize>>,
    /// Host-prefix CIDRs (single addresses).
    ips: HashMap<(IpAddr, u16, Protocol), usize>,
    /// Wider CIDRs, searched in order when the address is not listed itself.
    nets: Vec<(IpNet, u16, Protocol, usize)>,
}

impl FlowIndex {
    /// The entry covering `peer` (an address may fall in a wider CIDR).
    fn find(&self, peer: PeerKey<'_>, port: u16, proto: Protocol) -> Option<usize> {
        match peer {
            PeerKey::Workload(w) => self.workloads.get(w)?.get(&(port, proto)).copied(),
            PeerKey::Host(h) => self.hosts.get(h)?.get(&(port, proto)).copied(),
            PeerKey::Ip(ip) => self
                .ips
                .get(&(ip, port, proto))
                .copied()
                .or_else(|| self.nets.iter().find(|(n, p, pr, _)| *p == port && *pr == proto && n.contains(&ip)).map(|e| e.3)),
        }
    }

    /// The entry with exactly this peer.
    fn find_exact(&self, peer: &Peer, port: u16, proto: Protocol) -> Option<usize> {
        match peer {
            Peer::Cidr(n) if n.prefix_len() < n.max_prefix_len() => {
                self.nets.iter().find(|(m, p, pr, _)| m == n && *p == port && *pr == proto).map(|e| e.3)
            }
            _ => self.find(peer.key(), port, proto),
        }
    }

    /// False when the entry was already there.
    fn insert(&mut self, peer: &Peer, port: u16, proto: Protocol, pos: usize) -> bool {
        if self.find_exact(peer, port, proto).is_some() {
            return false;
        }
        match peer {
            Peer::Workload(w) => self.workloads.entry(w.clone()).or_default().insert((port, proto), pos).is_none(),
            Peer::Host(h) => self.hosts.entry(h.clone()).or_default().insert((port, proto), pos).is_none(),
            Peer::Cidr(n) if n.prefix_len() == n.max_prefix_len() => self.ips.insert((n.addr(), port, proto), pos).is_none(),
            Peer::Cidr(n) => {
                self.nets.push((*n, port, proto, pos));
                true
            }
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Index {
    exec: HashMap<String, ExecIdx>,
    listen: HashMap<PortKey, usize>,
    outbound: FlowIndex,
    inbound: FlowIndex,
    written: HashMap<String, usize>,
    sensitive: HashMap<String, usize>,
}

impl Index {
    fn build(spec: &ProfileSpec) -> Result<Index, String> {
        let mut ix = Index::default();
        for (pos, e) in spec.executables.iter().enumerate() {
            let parents = e.parents.iter().cloned().collect();
            let names = e.names.iter().cloned().collect();
            let code = e.code.iter().cloned().collect();
            if ix.exec.insert(e.path.clone(), ExecIdx { pos, parents, names, code }).is_some() {
                return Err(format!("executables[{pos}]: {} is listed twice", e.path));
            }
        }
        for (pos, l) in spec.listening.iter().enumerate() {
            if ix.listen.insert((l.port, l.protocol), pos).is_some() {
                return Err(format!("listening[{pos}]: {}/{} is listed twice", l.port, l.protocol));
            }
        }
        for (name, flows, fix) in [("outbound", &spec.outbound, &mut ix.outbound), ("inbound", &spec.inbound, &mut ix.inbound)] {
            for (pos, f) in flows.iter().enumerate() {
                if !fix.insert(&f.peer, f.port, f.protocol, pos) {
                    return Err(format!("{name}[{pos}]: {} {}/{} is listed twice", f.peer, f.port, f.protocol));
                }
            }
        }
        for (name, paths, pix) in
            [("writtenDirs", &spec.written_dirs, &mut ix.written), ("sensitiveReads", &spec.sensitive_reads, &mut ix.sensitive)]
        {
            for (pos, p) in paths.iter().enumerate() {
                if pix.insert(p.path.clone(), pos).is_some() {
                    return Err(format!("{name}[{pos}]: {} is listed twice", p.path));
                }
            }
        }
        Ok(ix)
    }
}

impl Profile {
    /// An empty profile, learning since `now` (epoch ns).
    pub fn new(image: &str, digest: &str, now: u64) -> Profile {
        let t = Timestamp(now);
        Profile {
            api_version: ApiVersion::V1alpha1,
            kind: Kind::Profile,
            metadata: Metadata { name: profile_name(if image.is_empty() { digest } else { image }), ..Metadata::default() },
            spec: ProfileSpec {
                image: image.to_string(),
                image_digest: digest.to_string(),
                mode: Mode::Learn,
                mode_since: t,
                learning: Learning { started: t, last_new: t },
                ..ProfileSpec::default()
            },
            index: Index::default(),
        }
    }

    /// A learning profile for the image with config digest
    /// `baseline.digest`, carrying that baseline (what `lancet scan` writes).
    pub fn with_baseline(image: &str, baseline: Baseline, now: u64) -> Profile {
        let mut p = Profile::new(image, &baseline.digest, now);
        p.spec.baseline = Some(baseline);
        p
    }

    /// The image's baseline, when one was scanned or imported.
    pub fn baseline(&self) -> Option<&Baseline> {
        self.spec.baseline.as_ref()
    }

    /// Sets (or clears) the image's baseline. Only the baseline changes:
    /// the learned sections and the lookup index stay as they are.
    pub fn set_baseline(&mut self, baseline: Option<Baseline>) {
        self.spec.baseline = baseline;
    }

    pub fn mode(&self) -> Mode {
        self.spec.mode
    }

    /// When the profile entered its current mode (epoch ns).
    pub fn mode_since(&self) -> u64 {
        self.spec.mode_since.0
    }

    pub fn image(&self) -> &str {
        &self.spec.image
    }

    pub fn digest(&self) -> &str {
        &self.spec.image_digest
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    pub fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }

    pub fn spec(&self) -> &ProfileSpec {
        &self.spec
    }

    /// Entries over all sections (parents and argument lists not counted).
    pub fn len(&self) -> usize {
        let s = &self.spec;
        s.executables.len() + s.listening.len() + s.outbound.len() + s.inbound.len() + s.written_dirs.len() + s.sensitive_reads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves to `mode` at `now`. Entering learn restarts the learning clock
    /// (`learning.started` and `learning.lastNew`); setting the current mode
    /// again changes nothing.
    pub fn set_mode(&mut self, mode: Mode, now: u64) {
        if mode == self.spec.mode {
            return;
        }
        self.spec.mode = mode;
        self.spec.mode_since = Timestamp(now);
        if mode == Mode::Learn {
            self.spec.learning = Learning { started: Timestamp(now), last_new: Timestamp(now) };
        }
    }

    /// Learns from one event. `peer` names the other end of a connect or
    /// accept when the caller knows it (else the event's remote address is
    /// used). Returns true when something new was learned (and moves
    /// `learning.lastNew` to `now`); otherwise only `lastSeen`/`count` of the
    /// matching entries move.
    pub fn observe(&mut self, ev: &Event, peer: Option<&PeerRef>, now: u64) -> bool {
        self.observe_in(ev, peer, default_writable(), now)
    }

    /// [`observe`](Self::observe) for a container whose writable set is
    /// known: a write in it is learned by the writable directory that holds
    /// it; a write in the protected set is never learned; any other write
    /// by its anchor ([`collapsed_anchor`]).
    pub fn observe_in(&mut self, ev: &Event, peer: Option<&PeerRef>, set: &WritableSet, now: u64) -> bool {
        let Some(obs) = classify(ev, peer) else { return false };
        let seen = Seen::now(now);
        let new = match obs {
            Obs::Exec { path, parent, args, name, program } => {
                let (pos, mut new) = match self.learn_exec(path, seen) {
                    Some(x) => x,
                    None => return false,
                };
                if let Some(p) = parent {
                    new |= self.learn_parent(pos, p, 1);
                }
                if let Some(n) = name {
                    new |= self.learn_name(pos, n, 1);
                }
                if let Some(a) = args {
                    new |= self.learn_args(pos, a);
                }
                if let Some(p) = program {
                    new |= self.learn_program(pos, &p, 1);
                }
                new
            }
            Obs::Listen { port, proto } => self.learn_listen(port, proto, seen),
            Obs::Flow { inbound, peer, port, proto } => {
                let fix = if inbound { &self.index.inbound } else { &self.index.outbound };
                match fix.find(peer, port, proto) {
                    Some(pos) => {
                        let f = &mut self.flows_mut(inbound).0[pos];
                        seen.apply(&mut f.first_seen, &mut f.last_seen, &mut f.count);
                        false
                    }
                    None => self.learn_flow(inbound, peer.to_peer(), port, proto, seen),
                }
            }
            Obs::Written { content: false, .. } => false,
            Obs::Written { path, dir, content: true } => match classify_write(path, set) {
                WriteClass::Protected(_) => false,
                WriteClass::Writable(d) => self.learn_path(Section::WrittenDirs, &d.path, seen),
                WriteClass::Outside => match self.written_anchor(dir) {
                    Some(pos) => {
                        let p = &mut self.spec.written_dirs[pos];
                        seen.apply(&mut p.first_seen, &mut p.last_seen, &mut p.count);
                        false
                    }
                    None => self.learn_path(Section::WrittenDirs, &collapsed_anchor(dir), seen),
                },
            },
            Obs::Sensitive(path) => self.learn_path(Section::SensitiveReads, path, seen),
        };
        if new {
            self.spec.learning.last_new = Timestamp(self.spec.learning.last_new.0.max(now));
        }
        new
    }

    /// Whether the profile lists this executable (the protect-mode exec
    /// check, which runs on the permission-event path: no allocation).
    pub fn has_executable(&self, path: &str) -> bool {
        self.index.exec.contains_key(path)
    }

    /// The learned entry of an executable path.
    pub fn executable(&self, path: &str) -> Option<&Executable> {
        self.index.exec.get(path).map(|i| &self.spec.executables[i.pos])
    }

    /// Whether the interpreter at `path` was learned with this inline code
    /// (already normalised). No allocation.
    pub fn has_code(&self, path: &str, code: &str) -> bool {
        self.index.exec.get(path).is_some_and(|i| i.code.contains(code))
    }

    /// Records the content hash of a learned executable that lives outside
    /// the image (see [`Executable::sha256`]); the newest content wins.
    /// Returns whether it changed.
    pub fn set_sha256(&mut self, path: &str, sha256: &str) -> bool {
        let Some(i) = self.index.exec.get(path) else { return false };
        let e = &mut self.spec.executables[i.pos];
        if e.sha256.as_deref() == Some(sha256) {
            return false;
        }
        e.sha256 = Some(sha256.to_string());
        true
    }

    /// Whether files were learned being written in this directory: it,
    /// or an ancestor, is a learned anchor.
    pub fn has_written_dir(&self, dir: &str) -> bool {
        self.written_anchor(dir).is_some()
    }

    /// Learns a write that lies in the container's writable set, in any
    /// mode: new anchors keep being learned in monitor and protect mode
    /// (nothing there is refused or alerted). Returns whether it was new.
    pub fn learn_writable(&mut self, ev: &Event, set: &WritableSet, now: u64) -> bool {
        match classify(ev, None) {
            Some(Obs::Written { path, content: true, .. }) if matches!(classify_write(path, set), WriteClass::Writable(_)) => {
                self.observe_in(ev, None, set, now)
            }
            _ => false,
        }
    }

    /// The position of the learned anchor that holds `dir`: `dir` itself
    /// or its nearest ancestor, as written or with its varying components
    /// collapsed (`base/16390` is held by `base/*`). Allocates only when
    /// the plain path has no anchor.
    fn written_anchor(&self, dir: &str) -> Option<usize> {
        let ix = &self.index.written;
        if ix.is_empty() {
            return None;
        }
        let lookup = |p: &str| -> Option<usize> {
            let mut cur = p;
            loop {
                if let Some(&pos) = ix.get(cur) {
                    return Some(pos);
                }
                if cur == "/" || cur.is_empty() {
                    return None;
                }
                cur = parent_dir(cur);
            }
        };
        lookup(dir).or_else(|| {
            let collapsed: String = dir.split('/').filter(|c| !c.is_empty()).map(|c| format!("/{}", collapse(c))).collect();
            (collapsed != dir).then(|| lookup(&collapsed)).flatten()
        })
    }

    /// Whether reads of this sensitive path were learned.
    pub fn has_sensitive_read(&self, path: &str) -> bool {
        self.index.sensitive.contains_key(path)
    }

    /// What in `ev` is not in the profile, if anything. Allocates only when
    /// it returns a deviation, or to normalise an interpreter's inline code.
    pub fn check(&self, ev: &Event, peer: Option<&PeerRef>) -> Option<Deviation> {
        self.check_in(ev, peer, default_writable())
    }

    /// [`check`](Self::check) for a container whose writable set is known:
    /// writes in it are normal life; writes in the protected set are
    /// deviations whatever was learned; other writes are deviations when
    /// the profile has no anchor for them.
    pub fn check_in(&self, ev: &Event, peer: Option<&PeerRef>, set: &WritableSet) -> Option<Deviation> {
        let ix = &self.index;
        match classify(ev, peer)? {
            Obs::Exec { path, parent, name, program, .. } => match ix.exec.get(path) {
                None => Some(Deviation::NewExecutable { path: path.to_string() }),
                Some(e) => match (parent, name, program) {
                    (Some(p), _, _) if !e.parents.is_empty() && !e.parents.contains(p) => {
                        Some(Deviation::NewParent { path: path.to_string(), parent: p.to_string() })
                    }
                    (_, Some(n), _) if !e.names.contains(n) => Some(Deviation::NewName { path: path.to_string(), name: n.to_string() }),
                    (_, _, Some(Program::Code(c))) if !e.code.contains(&c) => Some(Deviation::NewCode { path: path.to_string(), code: c }),
                    (_, _, Some(Program::Stdin)) if !self.spec.executables[e.pos].stdin => {
                        Some(Deviation::NewCode { path: path.to_string(), code: STDIN_CODE.to_string() })
                    }
                    _ => None,
                },
            },
            Obs::Listen { port, proto } => (!ix.listen.contains_key(&(port, proto))).then_some(Deviation::NewListen { port, proto }),
            Obs::Flow { inbound, peer, port, proto } => {
                let fix = if inbound { &ix.inbound } else { &ix.outbound };
                if fix.find(peer, port, proto).is_some() {
                    None
                } else if inbound {
                    Some(Deviation::NewInbound { peer: peer.to_peer(), port, proto })
                } else {
                    Some(Deviation::NewOutbound { peer: peer.to_peer(), port, proto })
                }
            }
            Obs::Written { path, dir, content } => match classify_write(path, set) {
                WriteClass::Protected(entry) => Some(Deviation::ProtectedWrite { path: path.to_string(), entry: entry.to_string() }),
                WriteClass::Writable(_) => None,
                WriteClass::Outside if !content || self.written_anchor(dir).is_some() => None,
                WriteClass::Outside => Some(Deviation::NewWrittenDir { dir: anchor(dir, set) }),
            },
            Obs::Sensitive(path) => (!ix.sensitive.contains_key(path)).then(|| Deviation::NewSensitiveRead { path: path.to_string() }),
        }
    }

    /// Adds what `d` found missing to the profile, as an operator's
    /// decision ("add to profile" from an alert): the executable, its
    /// parent or run name, the port, the peer, the directory or the path.
    /// Returns false when it was there already (or its section is full,
    /// which is counted as overflow).
    pub fn allow(&mut self, d: &Deviation, now: u64) -> bool {
        let seen = Seen::now(now);
        let added = match d {
            Deviation::NewExecutable { path } => self.learn_exec(path, seen).is_some_and(|(_, new)| new),
            Deviation::NewParent { path, parent } => match self.learn_exec(path, seen) {
                Some((pos, new)) => self.learn_parent(pos, parent, 1) | new,
                None => false,
            },
            Deviation::NewName { path, name } => match self.learn_exec(path, seen) {
                Some((pos, new)) => self.learn_name(pos, name, 1) | new,
                None => false,
            },
            Deviation::NewCode { path, code } => match self.learn_exec(path, seen) {
                Some((pos, new)) => {
                    let p = if code == STDIN_CODE { Program::Stdin } else { Program::Code(normalise_code(code)) };
                    self.learn_program(pos, &p, 1) | new
                }
                None => false,
            },
            Deviation::NewListen { port, proto } => self.learn_listen(*port, *proto, seen),
            Deviation::NewOutbound { peer, port, proto } => {
                self.index.outbound.find_exact(peer, *port, *proto).is_none() && self.learn_flow(false, peer.clone(), *port, *proto, seen)
            }
            Deviation::NewInbound { peer, port, proto } => {
                self.index.inbound.find_exact(peer, *port, *proto).is_none() && self.learn_flow(true, peer.clone(), *port, *proto, seen)
            }
            Deviation::NewWrittenDir { dir } => self.learn_path(Section::WrittenDirs, dir, seen),
            Deviation::NewSensitiveRead { path } => self.learn_path(Section::SensitiveReads, path, seen),
            // Only a policy's writable entries take a path out of the
            // protected set.
            Deviation::ProtectedWrite { .. } => false,
        };
        if added {
            self.spec.learning.last_new = Timestamp(self.spec.learning.last_new.0.max(now));
        }
        added
    }

    /// The position of the `inbound` or `outbound` entry that covers a flow
    /// with `peer` on `port`, if one does (the flow map names the entry
    /// that allowed a connection). No allocation.
    pub fn flow_entry(&self, inbound: bool, peer: &PeerRef, port: u16, proto: Protocol) -> Option<usize> {
        let fix = if inbound { &self.index.inbound } else { &self.index.outbound };
        fix.find(PeerKey::from(peer), port, proto)
    }

    /// Folds `other` (another replica, or an earlier run) into this profile:
    /// union of entries, earliest `firstSeen`, latest `lastSeen`, summed
    /// counts and overflow. Section bounds still hold: entries that do not
    /// fit are counted as overflow. Mode, metadata and image stay this
    /// profile's; the learning window widens to cover both. The baseline is
    /// this profile's, or `other`'s when this one has none (both come from
    /// the same image).
    pub fn merge(&mut self, other: &Profile) {
        let o = &other.spec;
        if self.spec.baseline.is_none() {
            self.spec.baseline.clone_from(&o.baseline);
        }
        let mut new = false;
        for e in &o.executables {
            let seen = Seen { first: e.first_seen.0, last: e.last_seen.0, count: e.count };
            let Some((pos, n)) = self.learn_exec(&e.path, seen) else { continue };
            new |= n;
            for p in &e.parents {
                new |= self.learn_parent(pos, p, 0);
            }
            for n in &e.names {
                new |= self.learn_name(pos, n, 0);
            }
            if e.args_pattern.is_some() {
                let x = &mut self.spec.executables[pos];
                new |= x.args_pattern.is_none();
                x.args_pattern = Some(ArgsPattern::Any);
                x.args.clear();
            }
            for a in &e.args {
                new |= self.learn_args(pos, a);
            }
            for c in &e.code {
                new |= self.learn_program(pos, &Program::Code(c.clone()), 0);
            }
            if e.stdin {
                new |= self.learn_program(pos, &Program::Stdin, 0);
            }
            if let Some(h) = &e.sha256 {
                let x = &mut self.spec.executables[pos];
                if x.sha256.is_none() {
                    x.sha256 = Some(h.clone());
                }
            }
        }
        for l in &o.listening {
            new |= self.learn_listen(l.port, l.protocol, Seen { first: l.first_seen.0, last: l.last_seen.0, count: l.count });
        }
        for (inbound, flows) in [(false, &o.outbound), (true, &o.inbound)] {
            for f in flows {
                let seen = Seen { first: f.first_seen.0, last: f.last_seen.0, count: f.count };
                let fix = if inbound { &self.index.inbound } else { &self.index.outbound };
                match fix.find_exact(&f.peer, f.port, f.protocol) {
                    Some(pos) => {
                        let x = &mut self.flows_mut(inbound).0[pos];
                        seen.apply(&mut x.first_seen, &mut x.last_seen, &mut x.count);
                    }
                    None => new |= self.learn_flow(inbound, f.peer.clone(), f.port, f.protocol, seen),
                }
            }
        }
        for (section, paths) in [(Section::WrittenDirs, &o.written_dirs), (Section::SensitiveReads, &o.sensitive_reads)] {
            for p in paths {
                new |= self.learn_path(section, &p.path, Seen { first: p.first_seen.0, last: p.last_seen.0, count: p.count });
            }
        }
        let (a, b) = (&mut self.spec.overflow, &o.overflow);
        for (x, y) in [
            (&mut a.executables, b.executables),
            (&mut a.listening, b.listening),
            (&mut a.outbound, b.outbound),
            (&mut a.inbound, b.inbound),
            (&mut a.written_dirs, b.written_dirs),
            (&mut a.sensitive_reads, b.sensitive_reads),
        ] {
            *x = x.saturating_add(y);
        }
        let l = &mut self.spec.learning;
        l.started = l.started.min(o.learning.started);
        if new {
            l.last_new = l.last_new.max(o.learning.last_new);
        }
    }

    /// Entries `other` has that this profile lacks (`Added`) and the reverse
    /// (`Removed`), section by section, sorted. When both profiles carry a
    /// baseline, the last section ([`Section::Image`]) lists the executables
    /// the images ship that were added, removed or changed (another
    /// SHA-256) from this image to `other`'s: what an image update brings,
    /// next to what its workload was seen doing.
    pub fn diff(&self, other: &Profile) -> Vec<DiffLine> {
        let (a, b) = (self.diff_keys(), other.diff_keys());
        let mut out: Vec<DiffLine> = b
            .difference(&a)
            .map(|(section, entry)| DiffLine { section: *section, change: Change::Added, entry: entry.clone() })
            .chain(a.difference(&b).map(|(section, entry)| DiffLine { section: *section, change: Change::Removed, entry: entry.clone() }))
            .collect();
        if let (Some(x), Some(y)) = (self.baseline(), other.baseline()) {
            diff_baselines(x, y, &mut out);
        }
        out.sort_by(|x, y| (x.section, &x.entry, x.change).cmp(&(y.section, &y.entry, y.change)));
        out
    }

    /// Each learned executable's path with the names it is run under: its
    /// own basename, then [`Executable::names`]. What protect mode needs to
    /// tell apart the files that are run under several names (multi-call
    /// binaries) once it has resolved each path to a file.
    ///
    /// The entry [`SELF_EXE`] stands for whichever file re-executed itself,
    /// which only the process that did it knows: its names belong to every
    /// multi-call file (a file two or more of these names reach).
    pub fn run_names(&self) -> impl Iterator<Item = (&str, impl Iterator<Item = &str> + '_)> + '_ {
        self.spec
            .executables
            .iter()
            .map(|e| (e.path.as_str(), std::iter::once(basename(&e.path)).chain(e.names.iter().map(String::as_str))))
    }

    /// Whether protect mode can be switched on without certainly breaking
    /// the workload, judged from the profile alone: `Err` holds one
    /// sentence per reason, each saying what to do. A short or still
    /// running learning period is not a reason by itself (operators may
    /// promote by hand once they know the workload); only gaps that protect
    /// mode would turn into refusals of what the workload was seen doing,
    /// or of how every container of it starts, are.
    pub fn protect_readiness(&self) -> Result<(), Vec<String>> {
        let s = &self.spec;
        let mut why = Vec::new();
        if s.executables.is_empty() {
            why.push("no executables were learned: protect mode would refuse the entrypoint".to_string());
        } else if !s.executables.iter().any(|e| e.parents.is_empty() || e.parents.iter().any(|p| p == RUNTIME_PARENT)) {
            // Every container's first process is started by the runtime; a
            // profile without one learned only what ran later (the agent
            // came up after the container), so the next start would be new.
            why.push(format!(
                "no executable was learned as started by the container runtime (parent {RUNTIME_PARENT}): the entrypoint was never seen, \
                 so protect mode would refuse it at the next start; restart a container of this workload while learning"
            ));
        }
        // Sections protect mode enforces: unlearned execs, parents and run
        // names are refused or killed, unlearned binds and connects refused
        // in the kernel.
        let o = &s.overflow;
        for (section, n) in [("executables", o.executables), ("listening", o.listening), ("outbound", o.outbound)] {
            if n > 0 {
                why.push(format!(
                    "spec.overflow.{section} is {n}: the workload did more than the profile could hold, and protect mode would refuse what was \
                     not learned; stay in monitor, or trim the profile by hand so it names what the workload needs"
                ));
            }
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why)
        }
    }

    /// The profile a new version of the same image repository starts from:
    /// keyed by `digest`, every entry learned for this image (with its
    /// counts and times), this profile's labels and annotations, in monitor
    /// mode since `now` — so the update is neither an empty learning period
    /// (which would accept anything the new image does) nor protected by a
    /// profile it was never checked against. The baseline is left out: the
    /// new image's own comes from its scan. The annotation
    /// [`PREVIOUS_DIGEST_ANNOTATION`] records this profile's digest
    /// ([`Profile::previous_digest`]).
    pub fn successor(&self, image: &str, digest: &str, now: u64) -> Profile {
        let mut p = Profile::new(image, digest, now);
        p.metadata.labels.clone_from(&self.metadata.labels);
        p.metadata.annotations.clone_from(&self.metadata.annotations);
        p.metadata.annotations.insert(PREVIOUS_DIGEST_ANNOTATION.to_string(), self.spec.image_digest.clone());
        p.merge(self);
        p.spec.baseline = None;
        p.set_mode(Mode::Monitor, now);
        p
    }

    /// The image digest this profile was carried over from by
    /// [`Profile::successor`], if it was.
    pub fn previous_digest(&self) -> Option<&str> {
        self.metadata.annotations.get(PREVIOUS_DIGEST_ANNOTATION).map(String::as_str)
    }

    fn diff_keys(&self) -> BTreeSet<(Section, String)> {
        let s = &self.spec;
        let mut k = BTreeSet::new();
        for e in &s.executables {
            k.insert((Section::Executables, e.path.clone()));
            for p in &e.parents {
                k.insert((Section::Executables, format!("{} <- {p}", e.path)));
            }
            for n in &e.names {
                k.insert((Section::Executables, format!("{} as {n}", e.path)));
            }
            for c in &e.code {
                k.insert((Section::Executables, format!("{} -c {c:?}", e.path)));
            }
            if e.stdin {
                k.insert((Section::Executables, format!("{} {STDIN_CODE}", e.path)));
            }
        }
        for l in &s.listening {
            k.insert((Section::Listening, format!("{}/{}", l.port, l.protocol)));
        }
        for (section, flows) in [(Section::Outbound, &s.outbound), (Section::Inbound, &s.inbound)] {
            for f in flows {
                k.insert((section, format!("{} {}/{}", f.peer, f.port, f.protocol)));
            }
        }
        for (section, paths) in [(Section::WrittenDirs, &s.written_dirs), (Section::SensitiveReads, &s.sensitive_reads)] {
            for p in paths {
                k.insert((section, p.path.clone()));
            }
        }
        k
    }

    pub fn to_yaml(&self) -> Result<String, ProfileError> {
        serde_norway::to_string(self).map_err(|e| ProfileError::Serialize(e.to_string()))
    }

    /// Reads a profile document; errors read `file:line:col: message`.
    /// Unknown fields are errors, and so are entries listed twice.
    pub fn from_yaml(text: &str, file_name: &str) -> Result<Profile, ProfileError> {
        // Deep flow nesting costs libyaml quadratic time before serde_norway
        // refuses it; refuse it first (see `yaml_guard`).
        if let Some((line, column)) = crate::yaml_guard::too_deep(text) {
            let message = crate::yaml_guard::TOO_DEEP.to_string();
            return Err(ProfileError::Syntax { file: file_name.to_string(), line, column, message });
        }
        let mut p: Profile = serde_norway::from_str(text).map_err(|e| {
            let message = e.to_string();
            match (e.location(), crate::yaml_guard::error_position(text, &e)) {
                (Some(loc), Some((line, column))) => {
                    let suffix = format!(" at line {} column {}", loc.line(), loc.column());
                    ProfileError::Syntax { file: file_name.to_string(), line, column, message: message.replacen(&suffix, "", 1) }
                }
                _ => ProfileError::Invalid { file: file_name.to_string(), message },
            }
        })?;
        p.index = Index::build(&p.spec).map_err(|m| ProfileError::Invalid { file: file_name.to_string(), message: format!("spec.{m}") })?;
        Ok(p)
    }

    // ---- learning helpers; each keeps the index in step with the spec ----

    /// Finds or adds the executable; `None` when the section is full.
    fn learn_exec(&mut self, path: &str, seen: Seen) -> Option<(usize, bool)> {
        if let Some(i) = self.index.exec.get(path) {
            let e = &mut self.spec.executables[i.pos];
            seen.apply(&mut e.first_seen, &mut e.last_seen, &mut e.count);
            return Some((i.pos, false));
        }
        if self.spec.executables.len() >= MAX_ENTRIES {
            self.spec.overflow.executables = self.spec.overflow.executables.saturating_add(seen.count.max(1));
            return None;
        }
        let pos = self.spec.executables.len();
        self.spec.executables.push(Executable {
            path: path.to_string(),
            first_seen: Timestamp(seen.first),
            last_seen: Timestamp(seen.last),
            count: seen.count,
            ..Executable::default()
        });
        self.index.exec.insert(path.to_string(), ExecIdx { pos, ..ExecIdx::default() });
        Some((pos, true))
    }

    fn learn_parent(&mut self, pos: usize, parent: &str, overflow_count: u64) -> bool {
        let e = &mut self.spec.executables[pos];
        let Some(ix) = self.index.exec.get_mut(&e.path) else { return false };
        if ix.parents.contains(parent) {
            return false;
        }
        if e.parents.len() >= MAX_PARENTS {
            self.spec.overflow.executables = self.spec.overflow.executables.saturating_add(overflow_count.max(1));
            return false;
        }
        e.parents.push(parent.to_string());
        ix.parents.insert(parent.to_string());
        true
    }

    fn learn_name(&mut self, pos: usize, name: &str, overflow_count: u64) -> bool {
        let e = &mut self.spec.executables[pos];
        let Some(ix) = self.index.exec.get_mut(&e.path) else { return false };
        if ix.names.contains(name) {
            return false;
        }
        if e.names.len() >= MAX_NAMES || name.len() > MAX_ARG_BYTES {
            self.spec.overflow.executables = self.spec.overflow.executables.saturating_add(overflow_count.max(1));
            return false;
        }
        e.names.push(name.to_string());
        ix.names.insert(name.to_string());
        true
    }

    /// Learns an interpreter's inline code (normalised) or that it reads
    /// stdin; code past [`MAX_CODES`] or [`MAX_CODE_BYTES`] is overflow.
    fn learn_program(&mut self, pos: usize, program: &Program, overflow_count: u64) -> bool {
        let e = &mut self.spec.executables[pos];
        let Some(ix) = self.index.exec.get_mut(&e.path) else { return false };
        let code = match program {
            Program::Stdin => return !std::mem::replace(&mut e.stdin, true),
            Program::Code(c) => c,
        };
        if ix.code.contains(code) {
            return false;
        }
        if e.code.len() >= MAX_CODES || code.len() > MAX_CODE_BYTES {
            self.spec.overflow.executables = self.spec.overflow.executables.saturating_add(overflow_count.max(1));
            return false;
        }
        e.code.push(code.clone());
        ix.code.insert(code.clone());
        true
    }

    fn learn_args(&mut self, pos: usize, argv: &[String]) -> bool {
        let e = &mut self.spec.executables[pos];
        if e.args_pattern.is_some() || e.args.iter().any(|a| a.as_slice() == argv) {
            return false;
        }
        if e.args.len() >= MAX_ARGS_LISTS || argv.len() > MAX_ARGV || argv.iter().any(|a| a.len() > MAX_ARG_BYTES) {
            e.args.clear();
            e.args_pattern = Some(ArgsPattern::Any);
        } else {
            e.args.push(argv.to_vec());
        }
        true
    }

    fn learn_listen(&mut self, port: u16, proto: Protocol, seen: Seen) -> bool {
        if let Some(&pos) = self.index.listen.get(&(port, proto)) {
            let l = &mut self.spec.listening[pos];
            seen.apply(&mut l.first_seen, &mut l.last_seen, &mut l.count);
            return false;
        }
        if self.spec.listening.len() >= MAX_ENTRIES {
            self.spec.overflow.listening = self.spec.overflow.listening.saturating_add(seen.count.max(1));
            return false;
        }
        self.index.listen.insert((port, proto), self.spec.listening.len());
        self.spec.listening.push(Listen {
            port,
            protocol: proto,
            first_seen: Timestamp(seen.first),
            last_seen: Timestamp(seen.last),
            count: seen.count,
        });
        true
    }

    fn flows_mut(&mut self, inbound: bool) -> (&mut Vec<Flow>, &mut FlowIndex, &mut u64) {
        if inbound {
            (&mut self.spec.inbound, &mut self.index.inbound, &mut self.spec.overflow.inbound)
        } else {
            (&mut self.spec.outbound, &mut self.index.outbound, &mut self.spec.overflow.outbound)
        }
    }

    /// Adds a flow the caller found missing.
    fn learn_flow(&mut self, inbound: bool, peer: Peer, port: u16, protocol: Protocol, seen: Seen) -> bool {
        let (flows, fix, overflow) = self.flows_mut(inbound);
        if flows.len() >= MAX_ENTRIES {
            *overflow = overflow.saturating_add(seen.count.max(1));
            return false;
        }
        fix.insert(&peer, port, protocol, flows.len());
        flows.push(Flow { peer, port, protocol, first_seen: Timestamp(seen.first), last_seen: Timestamp(seen.last), count: seen.count });
        true
    }

    fn learn_path(&mut self, section: Section, path: &str, seen: Seen) -> bool {
        let (paths, pix, overflow) = match section {
            Section::WrittenDirs => (&mut self.spec.written_dirs, &mut self.index.written, &mut self.spec.overflow.written_dirs),
            _ => (&mut self.spec.sensitive_reads, &mut self.index.sensitive, &mut self.spec.overflow.sensitive_reads),
        };
        if let Some(&pos) = pix.get(path) {
            let p = &mut paths[pos];
            seen.apply(&mut p.first_seen, &mut p.last_seen, &mut p.count);
            return false;
        }
        if paths.len() >= MAX_ENTRIES {
            *overflow = overflow.saturating_add(seen.count.max(1));
            return false;
        }
        pix.insert(path.to_string(), paths.len());
        paths.push(PathEntry {
            path: path.to_string(),
            first_seen: Timestamp(seen.first),
            last_seen: Timestamp(seen.last),
            count: seen.count,
        });
        true
    }
}
