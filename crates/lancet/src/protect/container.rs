//! The container backend: the last rungs of the ladder, isolate (every
//! packet dropped but loopback and flows marked for isolation, in the
//! kernel) and freeze (cgroup v2 freezer). Each measure carries an expiry;
//! an isolation's expiry also holds in the kernel if the agent is gone.

use super::SharedEnforcer;
use lancet_sensor::enforce;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The longest isolation or freeze lancet puts in force. A longer one is
/// refused with this bound in the message: an expiry must end.
pub const MAX_RESPONSE_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// An isolation or freeze in force.
#[derive(Debug, Clone)]
struct Measure {
    until: Instant,
    cgroup_id: u64,
    cgroup_dir: PathBuf,
}

/// Isolations and freezes in force, by container id.
#[derive(Debug, Default)]
pub(super) struct Containment {
    isolated: HashMap<String, Measure>,
    frozen: HashMap<String, Measure>,
}

/// When a measure of `expire` taken now ends, or why it cannot be taken.
fn until(expire: Duration) -> Result<Instant, String> {
    if expire.is_zero() || expire > MAX_RESPONSE_EXPIRY {
        return Err(format!(
            "expiry {}s is outside 1s..={}s (7 days): isolation and freezing always end",
            expire.as_secs(),
            MAX_RESPONSE_EXPIRY.as_secs()
        ));
    }
    Instant::now().checked_add(expire).ok_or_else(|| format!("expiry {}s overflows the clock", expire.as_secs()))
}

impl Containment {
    pub(super) fn isolate(
        &mut self,
        enforcer: Option<&SharedEnforcer>,
        id: &str,
        cgroup_id: u64,
        cgroup_dir: &Path,
        expire: Duration,
    ) -> Result<(), String> {
        let until = until(expire)?;
        let e = enforcer.ok_or("network enforcement is not available on this host")?;
        e.borrow_mut().isolate(cgroup_id, cgroup_dir, expire).map_err(|e| e.to_string())?;
        self.isolated.insert(id.to_string(), Measure { until, cgroup_id, cgroup_dir: cgroup_dir.to_path_buf() });
        Ok(())
    }

    pub(super) fn freeze(&mut self, id: &str, cgroup_id: u64, cgroup_dir: &Path, expire: Duration) -> Result<(), String> {
        let until = until(expire)?;
        enforce::freeze(cgroup_dir).map_err(|e| e.to_string())?;
        self.frozen.insert(id.to_string(), Measure { until, cgroup_id, cgroup_dir: cgroup_dir.to_path_buf() });
        Ok(())
    }

    /// Undoes isolation and freezing of one container; returns what was
    /// undone.
    pub(super) fn release(&mut self, enforcer: Option<&SharedEnforcer>, id: &str) -> Vec<&'static str> {
        let mut done = Vec::new();
        if let Some(m) = self.isolated.remove(id) {
            if let Some(e) = enforcer {
                match e.borrow_mut().release(m.cgroup_id, &m.cgroup_dir) {
                    Ok(()) => done.push("isolation"),
                    Err(err) => tracing::warn!(container = id, "releasing isolation: {err}"),
                }
            }
        }
        if let Some(m) = self.frozen.remove(id) {
            match enforce::thaw(&m.cgroup_dir) {
                Ok(_) => done.push("freeze"),
                Err(err) => tracing::warn!(container = id, "thawing: {err}"),
            }
        }
        done
    }

    /// Containers with a measure whose expiry passed.
    pub(super) fn due(&self, now: Instant) -> Vec<String> {
        self.isolated.iter().chain(self.frozen.iter()).filter(|(_, m)| m.until <= now).map(|(id, _)| id.clone()).collect()
    }

    /// Isolations in force: container id, cgroup id, cgroup directory, and
    /// the time left.
    pub(super) fn isolations(&self, now: Instant) -> Vec<(String, u64, PathBuf, Duration)> {
        self.isolated
            .iter()
            .map(|(id, m)| (id.clone(), m.cgroup_id, m.cgroup_dir.clone(), m.until.saturating_duration_since(now)))
            .collect()
    }

    pub(super) fn isolated(&self) -> Vec<&str> {
        self.isolated.keys().map(String::as_str).collect()
    }

    pub(super) fn frozen(&self) -> Vec<&str> {
        self.frozen.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_bounded() {
        assert!(until(Duration::from_secs(60)).is_ok());
        assert!(until(MAX_RESPONSE_EXPIRY).is_ok());
        let e = until(Duration::from_secs(10_000_000_000_000_000_000)).unwrap_err();
        assert!(e.contains("outside"), "{e}");
        assert!(until(Duration::ZERO).is_err());
    }
}
