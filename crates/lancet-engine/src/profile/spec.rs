//! The profile document as YAML carries it: the CRD envelope, the spec
//! sections and their entries, peers and protocols, and reading and writing
//! it (a profile is shared, exported and imported as this text).

use super::*;

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

pub use crate::event::Protocol;

/// The other end of a flow as the caller knows it at event time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerRef {
    /// The destination is a known workload (its profile key or name),
    /// shared: the agent names the peer of every connection by it.
    Workload(std::sync::Arc<str>),
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
    pub(super) fn key(&self) -> PeerKey<'_> {
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

pub(super) fn is_zero(v: &u64) -> bool {
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

/// The JSON Schema of a profile document.
pub fn profile_schema() -> serde_json::Value {
    schemars::schema_for!(Profile).to_value()
}

impl Profile {
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
}
