//! The lifecycle: learn → monitor → protect, when a profile is quiet or
//! ready enough to move on, and what a new image version starts from.

use super::*;

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

pub(super) fn ns(d: Duration) -> u64 {
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

impl Profile {
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
}
