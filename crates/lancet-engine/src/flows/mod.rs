//! Container-to-container flows: who talks to whom on this host, how much,
//! and what decided it.
//!
//! The parts, one file each: [`table`] (the bounded aggregation the agent
//! feeds from its event loop, with port-scan summaries), [`graph`] (the
//! map: nodes and edges built from stored hourly rows, rendered as a table,
//! JSON or Graphviz dot) and [`netpol`] (Kubernetes `NetworkPolicy` and
//! `CiliumNetworkPolicy` written from the observed flows).
//!
//! The agent keeps one row per (source, destination, port, protocol) in
//! memory for the current hour and writes what changed to the store every
//! second; the store keeps hourly rollups ([`FlowRow`]), which is what the
//! map and the policy export read. These row types are plain strings so
//! that the store, which knows no lancet type, can keep them as they are.

pub mod graph;
pub mod netpol;
pub mod table;

pub use table::{
    Decider, Endpoint, FlowKey, FlowLimits, FlowStats, FlowTable, NodeId, Observation, Recorded, RuleId, Summary, SummaryCounts, Verdict,
};

use serde::{Deserialize, Serialize};

/// What kind of thing one end of a stored flow is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndKind {
    /// A container on this host (`id` is its full id).
    Container,
    /// This host itself (`id` is the address it was seen with).
    Host,
    /// An address outside the host's containers (`id` is the address).
    External,
    /// Many peers summarised as one (a scan, or a full table).
    Others,
}

impl EndKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EndKind::Container => "container",
            EndKind::Host => "host",
            EndKind::External => "external",
            EndKind::Others => "others",
        }
    }

    pub fn parse(s: &str) -> Option<EndKind> {
        Some(match s {
            "container" => EndKind::Container,
            "host" => EndKind::Host,
            "external" => EndKind::External,
            "others" => EndKind::Others,
            _ => return None,
        })
    }
}

/// One end of a stored flow, with the names it had when it was seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowEnd {
    pub kind: String,
    /// Container id, or address; empty for `others`.
    pub id: String,
    /// Container name; empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The container's workload (profile key); empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub workload: String,
}

impl FlowEnd {
    pub fn kind(&self) -> EndKind {
        EndKind::parse(&self.kind).unwrap_or(EndKind::External)
    }
}

/// What every view of a flow counts (the live table, the hourly rows, the
/// map's edges), over its own span.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowCounters {
    /// Connections established (TCP) or connected (UDP).
    pub connections: u64,
    /// Connection attempts the peer refused or that timed out.
    pub failed: u64,
    /// Connections refused by lancet in protect mode.
    pub refused: u64,
    /// Bytes from source to destination, and back (TCP, from the socket's
    /// own counters at close).
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// First and last observation in the span (0: none yet).
    pub first_ns: u64,
    pub last_ns: u64,
}

impl FlowCounters {
    /// Adds `o`'s counts (saturating) and widens the span to cover both.
    pub fn merge(&mut self, o: &FlowCounters) {
        self.connections = self.connections.saturating_add(o.connections);
        self.failed = self.failed.saturating_add(o.failed);
        self.refused = self.refused.saturating_add(o.refused);
        self.bytes_out = self.bytes_out.saturating_add(o.bytes_out);
        self.bytes_in = self.bytes_in.saturating_add(o.bytes_in);
        if o.first_ns != 0 && (self.first_ns == 0 || o.first_ns < self.first_ns) {
            self.first_ns = o.first_ns;
        }
        self.last_ns = self.last_ns.max(o.last_ns);
    }
}

/// One hourly rollup of a flow, as stored and as the API returns it. The
/// counters are the hour's; the verdict and the rule are the last seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowRow {
    pub hour_ns: u64,
    pub src: FlowEnd,
    pub dst: FlowEnd,
    pub port: u16,
    /// `tcp` or `udp`.
    pub proto: String,
    #[serde(flatten)]
    pub counts: FlowCounters,
    /// [`Verdict`] as a word.
    pub verdict: String,
    /// The profile entry or rule that decided it, in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rule: String,
}

/// A container as the flows name it: what a policy selects it by.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowNode {
    pub id: String,
    pub name: String,
    pub workload: String,
    pub image: String,
    /// Kubernetes namespace, when the container is a pod's.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// The labels the runtime records for it (pod labels for pods).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    pub last_ns: u64,
}
