//! Retention: every table bounded by age and count, pruned once a minute,
//! so the store never grows without bound.

use crate::*;

/// What one [`Store::prune`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PruneStats {
    pub alerts_expired: u64,
    pub alerts_capped: u64,
    pub activity_expired: u64,
    pub profile_versions_dropped: u64,
    pub audit_expired: u64,
    pub audit_capped: u64,
    pub flows_expired: u64,
    pub flows_capped: u64,
}

impl Store {
    /// Applies retention: alerts older than [`StoreOptions::alert_retention`], alerts
    /// beyond [`StoreOptions::max_alerts`] (oldest first), activity older than
    /// [`StoreOptions::activity_retention`], profile versions beyond
    /// [`StoreOptions::profile_history`], audit records beyond
    /// [`StoreOptions::audit_retention`] and [`StoreOptions::max_audit`], flow rollups beyond
    /// [`StoreOptions::flow_retention`] and [`StoreOptions::max_flow_rows`]. Commits. Cheap when there is nothing to do
    /// (index range scans); meant to be called every minute.
    pub fn prune(&mut self, now_ns: u64) -> Result<PruneStats> {
        self.begin_write()?;
        let mut stats = PruneStats::default();
        let alert_cut = now_ns.saturating_sub(dur_ns(self.opts.alert_retention));
        stats.alerts_expired = self.exec("DELETE FROM alerts WHERE last_time_ns < ?1", params![to_i64(alert_cut)])?;
        // ids only grow, so max - min + 1 bounds the count: skip the walk when under the cap.
        let (min, max): (Option<i64>, Option<i64>) = self
            .conn
            .query_row("SELECT (SELECT min(id) FROM alerts), (SELECT max(id) FROM alerts)", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?;
        if let (Some(min), Some(max)) = (min, max) {
            let cap = to_i64(self.opts.max_alerts);
            if max - min + 1 > cap {
                stats.alerts_capped =
                    self.exec("DELETE FROM alerts WHERE id <= (SELECT id FROM alerts ORDER BY id DESC LIMIT 1 OFFSET ?1)", params![cap])?;
            }
        }
        let activity_cut = now_ns.saturating_sub(dur_ns(self.opts.activity_retention));
        let activity_cut = activity_cut - activity_cut % HOUR_NS;
        stats.activity_expired = self.exec("DELETE FROM activity WHERE hour_ns < ?1", params![to_i64(activity_cut)])?;
        let keep = self.opts.profile_history.max(1) as i64;
        stats.profile_versions_dropped = self.exec(
            "DELETE FROM profile_versions WHERE version <=
                 (SELECT p.version FROM profiles p WHERE p.digest = profile_versions.digest) - ?1",
            params![keep],
        )?;
        (stats.audit_expired, stats.audit_capped) = self.prune_audit(now_ns)?;
        (stats.flows_expired, stats.flows_capped) = self.prune_flows(now_ns)?;
        self.pending += 1;
        self.flush()?;
        if stats != PruneStats::default() {
            tracing::info!(?stats, "store pruned");
        }
        Ok(stats)
    }
}
