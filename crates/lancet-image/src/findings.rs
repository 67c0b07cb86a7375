//! Risky things an image ships or is configured to do, each under a stable
//! rule id so CI gates, SARIF consumers and suppressions keep working
//! across releases. A rule's severity is fixed, so `--fail-on` and code
//! scanning always agree about a finding.

use crate::config::{RuntimeSpec, StartConfig};
use crate::hash::Pem;
use crate::tree::{basename, escapes_root, NodeKind, ResolveError, Tree};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeSet;

pub use lancet_engine::policy::Severity;

/// Reads a severity name (`--fail-on`).
pub fn parse_severity(s: &str) -> Result<Severity, String> {
    [Severity::Low, Severity::Medium, Severity::High, Severity::Critical]
        .into_iter()
        .find(|v| v.as_str() == s)
        .ok_or_else(|| format!("unknown severity {s:?} (low, medium, high or critical)"))
}

/// SARIF `level`: what code-scanning services show as error, warning or
/// note.
pub fn sarif_level(s: Severity) -> &'static str {
    match s {
        Severity::Critical | Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low => "note",
    }
}

/// SARIF `properties.security-severity` (CVSS-like, 0–10): code-scanning
/// services bucket it into critical ≥ 9, high ≥ 7, medium ≥ 4, low.
pub fn security_severity(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "9.5",
        Severity::High => "8.0",
        Severity::Medium => "5.5",
        Severity::Low => "2.0",
    }
}

macro_rules! rules {
    ($($v:ident = $id:literal, $name:literal, $sev:ident, $title:literal, $help:literal;)*) => {
        /// Every check the scan makes.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Rule { $($v),* }

        impl Rule {
            pub const ALL: &'static [Rule] = &[$(Rule::$v),*];

            /// Stable id, `LANCET-IMG-NNN`.
            pub fn id(self) -> &'static str {
                match self { $(Rule::$v => $id),* }
            }

            /// PascalCase name (SARIF `rules[].name`).
            pub fn name(self) -> &'static str {
                match self { $(Rule::$v => $name),* }
            }

            pub fn severity(self) -> Severity {
                match self { $(Rule::$v => Severity::$sev),* }
            }

            /// One line: what was found.
            pub fn title(self) -> &'static str {
                match self { $(Rule::$v => $title),* }
            }

            /// Why it matters and what to do.
            pub fn help(self) -> &'static str {
                match self { $(Rule::$v => $help),* }
            }
        }
    };
}

rules! {
    RunsAsRoot = "LANCET-IMG-001", "RunsAsRoot", High, "Container runs as root",
        "Processes run as uid 0 unless the user is set; a compromise then starts with root inside the container. Set USER to an unprivileged uid.";
    SetuidRoot = "LANCET-IMG-002", "SetuidRoot", High, "Setuid-root executable",
        "A setuid binary owned by root lets any process in the container become root through it. Remove the bit (chmod u-s) unless it is needed.";
    SetidBinary = "LANCET-IMG-003", "SetidBinary", Medium, "Setuid or setgid executable",
        "Set-id binaries change identity when run; each one is a privilege-escalation path. Remove the bits unless they are needed.";
    Shell = "LANCET-IMG-004", "Shell", Medium, "Shell on PATH",
        "A shell lets an intruder run arbitrary commands. Images that do not need one (distroless, scratch) leave it out.";
    PackageManager = "LANCET-IMG-005", "PackageManager", Medium, "Package manager on PATH",
        "A package manager lets an intruder install tools at run time. Remove it from the final image (multi-stage builds).";
    NetworkTool = "LANCET-IMG-006", "NetworkTool", Medium, "Network tool on PATH",
        "curl, wget, netcat, socat and the like download payloads and open reverse shells. Leave them out of production images.";
    WorldWritablePathDir = "LANCET-IMG-007", "WorldWritablePathDir", High, "World-writable directory on PATH",
        "Any user can place an executable in a world-writable PATH directory and have it run under a trusted name. Remove o+w.";
    PrivateKey = "LANCET-IMG-008", "PrivateKey", Critical, "Private key in the image",
        "Anyone who can pull the image can read the key. Mount keys at run time (secrets), never bake them into layers.";
    CredentialFile = "LANCET-IMG-009", "CredentialFile", High, "Credential file in the image",
        "Files such as id_rsa, .aws/credentials, .docker/config.json and .netrc hold credentials readable by anyone who pulls the image. Remove them and rotate what they held.";
    SecretInEnv = "LANCET-IMG-010", "SecretInEnv", High, "Secret in the image environment",
        "Environment variables in the image config are visible to anyone who inspects the image. Pass secrets at run time.";
    PrivilegedCapability = "LANCET-IMG-011", "PrivilegedCapability", Critical, "Privileged capability granted",
        "CAP_SYS_ADMIN and similar capabilities are close to full root on the host. Drop them.";
    AddedCapability = "LANCET-IMG-012", "AddedCapability", Medium, "Capability beyond the runtime defaults",
        "Each capability beyond the usual container defaults widens what a compromised process can do. Drop what is not needed.";
    HostNamespace = "LANCET-IMG-013", "HostNamespace", High, "Host namespace shared",
        "Without its own pid, network, ipc or mount namespace the container sees and can reach the host's. Give it its own.";
    WritableRootfs = "LANCET-IMG-014", "WritableRootfs", Low, "Root filesystem is writable",
        "A read-only root filesystem stops an intruder from dropping tools into the image's directories. Set root.readonly: true.";
    UnsafeArchivePath = "LANCET-IMG-015", "UnsafeArchivePath", High, "Layer entry climbs out of the image root",
        "A tar entry or hard link whose path climbs above the root (`..`) would write outside the target when naively extracted; it was ignored.";
    EscapingSymlink = "LANCET-IMG-016", "EscapingSymlink", Low, "Symlink climbs above the image root",
        "Inside the container `..` stops at the root, but tools that follow this link on the host reach the host's files.";
    Unscannable = "LANCET-IMG-017", "Unscannable", Low, "Entry could not be scanned",
        "The baseline may be incomplete: the entry could not be read or resolved.";
}

impl Rule {
    pub fn from_id(id: &str) -> Option<Rule> {
        Rule::ALL.iter().copied().find(|r| r.id() == id)
    }
}

impl Serialize for Rule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.id())
    }
}

impl<'de> Deserialize<'de> for Rule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let id = String::deserialize(d)?;
        Rule::from_id(&id).ok_or_else(|| serde::de::Error::custom(format!("unknown rule id {id:?}")))
    }
}

/// One finding. `path` is absolute inside the image when the finding is
/// about a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Finding {
    pub rule_id: Rule,
    pub severity: Severity,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl Finding {
    pub fn new(rule: Rule, path: Option<String>, message: impl Into<String>) -> Finding {
        Finding { rule_id: rule, severity: rule.severity(), message: message.into(), path }
    }

    pub fn rule(&self) -> Rule {
        self.rule_id
    }

    /// Most severe first, then by rule, path and message: a stable order.
    pub fn sort(findings: &mut Vec<Finding>) {
        findings.sort_by(|a, b| {
            b.severity.cmp(&a.severity).then_with(|| (a.rule_id, &a.path, &a.message).cmp(&(b.rule_id, &b.path, &b.message)))
        });
        findings.dedup();
    }
}

const SHELLS: &[&str] = &["sh", "bash", "ash", "dash", "zsh", "ksh", "mksh", "csh", "tcsh", "fish", "hush", "busybox", "toybox"];
const PACKAGE_MANAGERS: &[&str] = &["apt", "apt-get", "dpkg", "apk", "yum", "dnf", "microdnf", "rpm", "zypper", "pip", "pip3"];
const NETWORK_TOOLS: &[&str] = &["curl", "wget", "nc", "ncat", "netcat", "socat", "telnet", "ssh", "nmap", "ftp", "tftp"];
const SSH_KEYS: &[&str] = &["id_rsa", "id_dsa", "id_ecdsa", "id_ed25519", "id_ecdsa_sk", "id_ed25519_sk"];
const CREDENTIAL_SUFFIXES: &[&str] = &["/.aws/credentials", "/.docker/config.json", "/.netrc", "/.git-credentials"];
/// Capabilities that amount to root on the host, or close to it.
const PRIVILEGED_CAPS: &[&str] = &[
    "CAP_SYS_ADMIN",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_PTRACE",
    "CAP_DAC_READ_SEARCH",
    "CAP_BPF",
    "CAP_PERFMON",
    "CAP_SYS_BOOT",
    "CAP_MAC_ADMIN",
    "CAP_MAC_OVERRIDE",
];
/// Docker's and podman's default capability sets (their union).
const DEFAULT_CAPS: &[&str] = &[
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
];
const SECRET_NAME_PARTS: &[&str] =
    &["PASSWORD", "PASSWD", "SECRET", "TOKEN", "API_KEY", "APIKEY", "PRIVATE_KEY", "ACCESS_KEY", "CREDENTIAL"];

/// What the tool kind of an executable's name is, if any.
fn tool_rule(name: &str) -> Option<Rule> {
    if SHELLS.contains(&name) {
        Some(Rule::Shell)
    } else if PACKAGE_MANAGERS.contains(&name) || name.strip_prefix("pip3.").is_some_and(|v| v.bytes().all(|b| b.is_ascii_digit())) {
        Some(Rule::PackageManager)
    } else if NETWORK_TOOLS.contains(&name) {
        Some(Rule::NetworkTool)
    } else {
        None
    }
}

/// Whether a configured user means root (empty is root).
pub fn is_root_user(user: Option<&str>) -> bool {
    let u = user.unwrap_or("").split(':').next().unwrap_or("");
    u.is_empty() || u == "0" || u == "root"
}

/// An AWS access key id (`AKIA…`/`ASIA…` and 16 more upper-case
/// alphanumerics) anywhere in `v`.
fn has_aws_key(v: &str) -> bool {
    let b = v.as_bytes();
    (0..b.len().saturating_sub(19)).any(|i| {
        (b[i..].starts_with(b"AKIA") || b[i..].starts_with(b"ASIA"))
            && b[i + 4..i + 20].iter().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
    })
}

/// The checks on the merged tree and the configs. `has_image_config`:
/// whether the target had an image or runtime config at all (a bare rootfs
/// does not say which user it runs as).
pub fn evaluate(tree: &Tree, start: &StartConfig, has_config: bool, runtime: Option<&RuntimeSpec>, out: &mut Vec<Finding>) {
    files(tree, out);
    path_checks(tree, start, out);
    env_checks(start, out);
    if let Some(rt) = runtime {
        runtime_checks(rt, out);
    } else if has_config && is_root_user(start.user.as_deref()) {
        let who = start.user.as_deref().unwrap_or("");
        let msg = if who.is_empty() {
            "no user is set, so the container runs as root".to_string()
        } else {
            format!("the image runs as user {who:?} (root)")
        };
        out.push(Finding::new(Rule::RunsAsRoot, None, msg));
    }
}

fn files(tree: &Tree, out: &mut Vec<Finding>) {
    for (path, node) in tree.iter() {
        match &node.kind {
            NodeKind::File { content, .. } => {
                if node.is_executable() && node.mode & 0o6000 != 0 {
                    let bits = match (node.mode & 0o4000 != 0, node.mode & 0o2000 != 0) {
                        (true, true) => "setuid and setgid",
                        (true, false) => "setuid",
                        _ => "setgid",
                    };
                    let rule = if node.mode & 0o4000 != 0 && node.uid == 0 { Rule::SetuidRoot } else { Rule::SetidBinary };
                    out.push(Finding::new(
                        rule,
                        Some(path.clone()),
                        format!("{path} is {bits} (mode {:04o}, owner {}:{})", node.mode, node.uid, node.gid),
                    ));
                }
                if content.pem == Pem::PrivateKey {
                    out.push(Finding::new(Rule::PrivateKey, Some(path.clone()), format!("{path} holds a PEM private key")));
                } else if content.size > 0 {
                    let name = basename(path);
                    let what = if SSH_KEYS.contains(&name) {
                        Some("an SSH private key file")
                    } else if CREDENTIAL_SUFFIXES.iter().any(|s| path.ends_with(s)) {
                        Some("a credentials file")
                    } else if name.ends_with(".key") && content.pem == Pem::None {
                        Some("a key file")
                    } else {
                        None
                    };
                    if let Some(what) = what {
                        out.push(Finding::new(Rule::CredentialFile, Some(path.clone()), format!("{path} looks like {what}")));
                    }
                }
            }
            NodeKind::Symlink(target) => {
                if escapes_root(path, target) {
                    out.push(Finding::new(
                        Rule::EscapingSymlink,
                        Some(path.clone()),
                        format!("{path} -> {target} climbs above the image root"),
                    ));
                }
                if tree.resolve(path) == Err(ResolveError::Loop) {
                    out.push(Finding::new(Rule::Unscannable, Some(path.clone()), format!("{path} -> {target}: symlink loop")));
                }
            }
            _ => {}
        }
    }
}

fn path_checks(tree: &Tree, start: &StartConfig, out: &mut Vec<Finding>) {
    let mut dirs = BTreeSet::new();
    for d in start.path_dirs() {
        if let Ok(real) = tree.resolve(&d) {
            dirs.insert(real);
        }
    }
    for dir in &dirs {
        if let Some(n) = tree.get(dir) {
            if n.kind == NodeKind::Dir && n.mode & 0o002 != 0 {
                out.push(Finding::new(
                    Rule::WorldWritablePathDir,
                    Some(dir.clone()),
                    format!("{dir} is on PATH and world-writable (mode {:04o})", n.mode),
                ));
            }
        }
        for (path, node) in tree.children(dir) {
            let Some(rule) = tool_rule(basename(path)) else { continue };
            let via = match &node.kind {
                NodeKind::File { hardlink_of, .. } if node.is_executable() => hardlink_of.as_ref().map(|t| format!(" (hard link to {t})")),
                NodeKind::Symlink(_) => match tree.resolve(path) {
                    Ok(real) if tree.get(&real).is_some_and(|n| n.is_executable()) => Some(format!(" (-> {real})")),
                    _ => continue,
                },
                _ => continue,
            };
            let kind = match rule {
                Rule::Shell if basename(path) == "busybox" || basename(path) == "toybox" => "multi-call binary with a shell",
                Rule::Shell => "shell",
                Rule::PackageManager => "package manager",
                _ => "network tool",
            };
            out.push(Finding::new(rule, Some(path.clone()), format!("{kind} {path}{}", via.unwrap_or_default())));
        }
    }
}

fn env_checks(start: &StartConfig, out: &mut Vec<Finding>) {
    for e in &start.env {
        let (name, value) = e.split_once('=').unwrap_or((e, ""));
        if value.is_empty() {
            continue;
        }
        let upper = name.to_ascii_uppercase();
        let by_name = SECRET_NAME_PARTS.iter().any(|p| upper.contains(p));
        let aws = has_aws_key(value);
        if by_name || aws {
            let why = if aws { "holds what looks like an AWS access key id" } else { "has a secret-like name and a value" };
            out.push(Finding::new(Rule::SecretInEnv, None, format!("environment variable {name} {why} (value redacted)")));
        }
    }
}

fn runtime_checks(rt: &RuntimeSpec, out: &mut Vec<Finding>) {
    let process = rt.process.clone().unwrap_or_default();
    if process.user.as_ref().map(|u| u.uid).unwrap_or(0) == 0 {
        out.push(Finding::new(Rule::RunsAsRoot, None, "the runtime config runs the process as uid 0"));
    }
    let caps = process.capabilities.unwrap_or_default();
    let all: BTreeSet<&String> =
        caps.bounding.iter().chain(&caps.effective).chain(&caps.permitted).chain(&caps.inheritable).chain(&caps.ambient).collect();
    for cap in all {
        if PRIVILEGED_CAPS.contains(&cap.as_str()) {
            out.push(Finding::new(Rule::PrivilegedCapability, None, format!("the runtime config grants {cap}")));
        } else if !DEFAULT_CAPS.contains(&cap.as_str()) {
            out.push(Finding::new(Rule::AddedCapability, None, format!("the runtime config grants {cap}, beyond the usual defaults")));
        }
    }
    let namespaces = rt.linux.as_ref().and_then(|l| l.namespaces.clone()).unwrap_or_default();
    for ns in ["pid", "network", "ipc", "mount"] {
        match namespaces.iter().find(|n| n.kind == ns) {
            None => out.push(Finding::new(Rule::HostNamespace, None, format!("no {ns} namespace: the container shares the host's"))),
            Some(n) if n.path.as_deref().is_some_and(|p| p.starts_with("/proc/1/")) => {
                out.push(Finding::new(Rule::HostNamespace, None, format!("the {ns} namespace is joined from pid 1 (the host's)")))
            }
            Some(_) => {}
        }
    }
    if !rt.root.as_ref().and_then(|r| r.readonly).unwrap_or(false) {
        out.push(Finding::new(Rule::WritableRootfs, None, "root.readonly is not true"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_ids_are_unique_and_round_trip() {
        let ids: BTreeSet<&str> = Rule::ALL.iter().map(|r| r.id()).collect();
        assert_eq!(ids.len(), Rule::ALL.len());
        for r in Rule::ALL {
            assert_eq!(Rule::from_id(r.id()), Some(*r));
        }
    }

    #[test]
    fn users_and_secrets() {
        for root in [None, Some(""), Some("0"), Some("root"), Some("0:0"), Some("root:www")] {
            assert!(is_root_user(root), "{root:?}");
        }
        for user in ["www", "1000", "1000:1000", "nobody"] {
            assert!(!is_root_user(Some(user)), "{user}");
        }
        assert!(has_aws_key("x AKIAIOSFODNN7EXAMPLE y"));
        assert!(!has_aws_key("AKIAshort"));
        let start = StartConfig {
            env: vec!["DB_PASSWORD=hunter2".into(), "EMPTY_TOKEN=".into(), "X=AKIAIOSFODNN7EXAMPLE".into(), "HOME=/root".into()],
            ..StartConfig::default()
        };
        let mut out = Vec::new();
        env_checks(&start, &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out.iter().all(|f| !f.message.contains("hunter2") && !f.message.contains("AKIAIOSFODNN7EXAMPLE")));
    }

    #[test]
    fn tool_names() {
        assert_eq!(tool_rule("sh"), Some(Rule::Shell));
        assert_eq!(tool_rule("pip3.11"), Some(Rule::PackageManager));
        assert_eq!(tool_rule("pip3.x"), None);
        assert_eq!(tool_rule("nc"), Some(Rule::NetworkTool));
        assert_eq!(tool_rule("ls"), None);
    }
}
