//! The scan's result and its three renderings: JSON (the whole report,
//! sorted, no timestamps: the same image gives the same bytes), SARIF 2.1.0
//! for code-scanning services, and an aligned table for people.

use crate::config::{RuntimeSpec, StartConfig};
use crate::findings::{self, sarif_level, security_severity, Finding, Rule, Severity};
use crate::tree::{NodeKind, Tree};
use crate::Kind;
use lancet_engine::profile::{Baseline, BaselineFile, BaselineLink, FileMode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// Counts of findings per severity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeverityCounts {
    pub critical: u64,
    pub high: u64,
    pub medium: u64,
    pub low: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Summary {
    /// Regular files in the final tree (hard links count once).
    pub files: u64,
    /// Their total size.
    pub bytes: u64,
    pub executables: u64,
    /// Symlinks that lead to an executable.
    pub links: u64,
    pub findings: SeverityCounts,
}

/// Everything `lancet scan` reports about one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Report {
    /// The target as given.
    pub target: String,
    pub kind: Kind,
    /// The image reference the source names, when it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Config digest (images), or a digest of the baseline (directories).
    pub digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
    pub baseline: Baseline,
    pub findings: Vec<Finding>,
    pub summary: Summary,
}

#[derive(Debug, Default)]
pub(crate) struct Meta {
    pub target: String,
    pub kind: Kind,
    pub image: Option<String>,
    pub digest: Option<String>,
    pub manifest_digest: Option<String>,
}

pub(crate) fn build(meta: Meta, tree: &Tree, start: Option<StartConfig>, runtime: Option<&RuntimeSpec>, mut found: Vec<Finding>) -> Report {
    let mut files = Vec::new();
    let mut links = Vec::new();
    let mut summary = Summary::default();
    for (path, node) in tree.iter() {
        match &node.kind {
            NodeKind::File { content, hardlink_of } => {
                if hardlink_of.is_none() {
                    summary.files += 1;
                    summary.bytes += content.size;
                }
                if node.is_executable() {
                    files.push(BaselineFile {
                        path: path.clone(),
                        sha256: crate::hash::hex(&content.sha256),
                        mode: FileMode(node.mode),
                        uid: node.uid,
                        gid: node.gid,
                        size: content.size,
                        setuid: FileMode(node.mode).is_setuid(),
                        setgid: FileMode(node.mode).is_setgid(),
                    });
                }
            }
            NodeKind::Symlink(_) => {
                if let Ok(real) = tree.resolve(path) {
                    if tree.get(&real).is_some_and(|n| n.is_executable()) {
                        links.push(BaselineLink { path: path.clone(), target: real });
                    }
                }
            }
            _ => {}
        }
    }
    let has_config = start.is_some();
    let start = start.unwrap_or_default();
    findings::evaluate(tree, &start, has_config, runtime, &mut found);
    Finding::sort(&mut found);
    for f in &found {
        let c = &mut summary.findings;
        *match f.severity {
            Severity::Critical => &mut c.critical,
            Severity::High => &mut c.high,
            Severity::Medium => &mut c.medium,
            Severity::Low => &mut c.low,
        } += 1;
    }
    summary.executables = files.len() as u64;
    summary.links = links.len() as u64;
    let mut baseline = Baseline::new(String::new(), files, links);
    baseline.digest = meta.digest.clone().unwrap_or_else(|| baseline_digest(&baseline));
    baseline.manifest_digest = meta.manifest_digest.clone();
    baseline.entrypoint = start.entrypoint.clone();
    baseline.cmd = start.cmd.clone();
    baseline.user = start.user.clone();
    baseline.working_dir = start.working_dir.clone();
    baseline.exposed_ports = start.exposed_ports.clone();
    baseline.exposed_ports.sort();
    baseline.env_names = start.env_names();
    Report {
        target: meta.target,
        kind: meta.kind,
        image: meta.image,
        digest: baseline.digest.clone(),
        manifest_digest: meta.manifest_digest,
        baseline,
        findings: found,
        summary,
    }
}

/// A root filesystem has no config digest: name it by what it ships, so
/// the same tree always gets the same digest.
fn baseline_digest(b: &Baseline) -> String {
    let mut h = Sha256::new();
    h.update(b"lancet-baseline-v1\n");
    for f in b.executables() {
        h.update(format!("{}\0{}\0{}\0{}\0{}\n", f.path, f.sha256, f.mode, f.uid, f.gid).as_bytes());
    }
    for l in b.links() {
        h.update(format!("{}\0->{}\n", l.path, l.target).as_bytes());
    }
    format!("sha256:{}", crate::hash::hex(&h.finalize()))
}

impl Report {
    /// Whether any finding is at `level` or above (`--fail-on`).
    pub fn fails(&self, level: Severity) -> bool {
        self.findings.iter().any(|f| f.severity >= level)
    }

    /// The report as pretty JSON, with a final newline.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"serialising the report: {e}\"}}"));
        s.push('\n');
        s
    }

    /// SARIF 2.1.0: one run, every rule listed (so `ruleIndex` is stable
    /// across scans), one result per finding located at its path inside the
    /// image; findings about the configuration point at the target.
    pub fn to_sarif(&self) -> Value {
        let rules: Vec<Value> = Rule::ALL
            .iter()
            .map(|r| {
                json!({
                    "id": r.id(),
                    "name": r.name(),
                    "shortDescription": {"text": r.title()},
                    "fullDescription": {"text": r.help()},
                    "help": {"text": r.help()},
                    "defaultConfiguration": {"level": sarif_level(r.severity())},
                    "properties": {
                        "security-severity": security_severity(r.severity()),
                        "precision": "high",
                        "tags": ["security", "container"],
                    },
                })
            })
            .collect();
        let results: Vec<Value> = self
            .findings
            .iter()
            .map(|f| {
                let rule = f.rule();
                let index = Rule::ALL.iter().position(|r| *r == rule).unwrap_or(0);
                let uri = match &f.path {
                    Some(p) => uri_escape(p.trim_start_matches('/')),
                    None => uri_escape(self.target.trim_start_matches('/')),
                };
                json!({
                    "ruleId": rule.id(),
                    "ruleIndex": index,
                    "level": sarif_level(f.severity),
                    "message": {"text": f.message},
                    "locations": [{"physicalLocation": {"artifactLocation": {"uri": uri}}}],
                    "partialFingerprints": {"lancetFinding/v1": crate::hash::digest_of(format!("{}\0{}\0{}", rule.id(), f.path.as_deref().unwrap_or(""), f.message).as_bytes())},
                })
            })
            .collect();
        json!({
            "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
            "version": "2.1.0",
            "runs": [{
                "tool": {"driver": {
                    "name": "lancet",
                    "version": env!("CARGO_PKG_VERSION"),
                    "informationUri": "https://example.invalid/lancet",
                    "rules": rules,
                }},
                "automationDetails": {"id": format!("lancet-scan/{}/", self.digest)},
                "results": results,
                "properties": {"target": self.target, "kind": self.kind, "digest": self.digest},
            }],
        })
    }

    /// Aligned columns for people: findings, then a summary.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let rows: Vec<[&str; 4]> = self
            .findings
            .iter()
            .map(|f| [f.severity.as_str(), f.rule().id(), f.path.as_deref().unwrap_or("-"), f.message.as_str()])
            .collect();
        if rows.is_empty() {
            out.push_str("no findings\n");
        } else {
            let header = ["SEVERITY", "RULE", "PATH", "FINDING"];
            let mut w = header.map(str::len);
            for r in &rows {
                for (i, c) in r.iter().enumerate().take(3) {
                    w[i] = w[i].max(c.chars().count());
                }
            }
            for r in std::iter::once(&header).chain(&rows) {
                let _ = writeln!(out, "{:<w0$}  {:<w1$}  {:<w2$}  {}", r[0], r[1], r[2], r[3], w0 = w[0], w1 = w[1], w2 = w[2]);
            }
        }
        let s = &self.summary;
        let c = &s.findings;
        let _ = writeln!(out, "\n{} ({})  digest {}", self.target, self.kind, self.digest);
        let _ = writeln!(out, "baseline: {} executables, {} links to them; {} files, {} bytes", s.executables, s.links, s.files, s.bytes);
        let _ = writeln!(out, "findings: {} critical, {} high, {} medium, {} low", c.critical, c.high, c.medium, c.low);
        out
    }
}

/// Percent-encodes what may not appear in a URI path (RFC 3986), keeping
/// `/` and the usual path characters.
fn uri_escape(p: &str) -> String {
    let mut s = String::with_capacity(p.len());
    for b in p.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/!$&'()*+,;=:@".contains(&b) {
            s.push(b as char);
        } else {
            let _ = write!(s, "%{b:02X}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_are_escaped() {
        assert_eq!(uri_escape("usr/bin/a b%"), "usr/bin/a%20b%25");
        assert_eq!(uri_escape("localhost/img:tag"), "localhost/img:tag");
    }
}
