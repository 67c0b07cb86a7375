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
mod check;
mod classify;
mod diff;
mod index;
mod learn;
mod lifecycle;
mod spec;

#[cfg(test)]
mod tests;

mod time;

pub use baseline::{Baseline, BaselineFile, BaselineLink, FileMode};

pub use time::{parse_duration, parse_rfc3339, Span, Timestamp};

pub use check::*;
use classify::*;
pub use classify::{parent_dir, RUNTIME_PARENT, STDIN_CODE};
pub use diff::*;
use index::*;
use learn::*;
pub use lifecycle::*;
pub use spec::*;

use crate::drift::{normalise_code, ProgramSource};

use crate::event::{Event, EventKind, ExecEvent, FileOp, NetOp};

use crate::write_sets::{anchor, classify_write, collapse, collapsed_anchor, WritableSet, WriteClass};

use ipnet::IpNet;

use schemars::JsonSchema;

use serde::ser::SerializeMap;

use serde::{Deserialize, Serialize, Serializer};

use std::collections::{BTreeMap, BTreeSet};

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
}
