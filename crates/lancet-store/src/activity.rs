//! Hourly activity per workload: what the dashboard's sparklines and a
//! promotion's "recent life" read.

use crate::*;

/// One hourly activity counter of a workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActivityBucket {
    /// Start of the hour (ns since the epoch, a multiple of [`HOUR_NS`]).
    pub hour_ns: u64,
    /// `exec`, `net`, `file`, ...
    pub kind: String,
    pub count: u64,
}

impl Store {
    /// Adds `n` events of `kind` (`exec`, `net`, `file`) to the hour bucket of `now_ns`
    /// for workload `digest`.
    pub fn bump_activity(&mut self, digest: &str, kind: &str, n: u64, now_ns: u64) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        if kind.is_empty() {
            return Err(StoreError::Invalid("an activity kind must not be empty".into()));
        }
        self.begin_write()?;
        let hour = now_ns - now_ns % HOUR_NS;
        self.conn
            .prepare_cached(
                "INSERT INTO activity (digest, hour_ns, kind, n) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (digest, hour_ns, kind) DO UPDATE SET n = n + excluded.n",
            )
            .and_then(|mut s| s.execute(params![digest, to_i64(hour), kind, to_i64(n)]))
            .map_err(|e| self.err(e))?;
        self.end_write()
    }

    /// The activity buckets of `digest` from the hour that holds `since_ns` on, oldest
    /// first, then by kind.
    pub fn activity(&self, digest: &str, since_ns: u64) -> Result<Vec<ActivityBucket>> {
        let from = since_ns - since_ns % HOUR_NS;
        self.conn
            .prepare_cached("SELECT hour_ns, kind, n FROM activity WHERE digest = ?1 AND hour_ns >= ?2 ORDER BY hour_ns, kind")
            .and_then(|mut s| {
                s.query_map(params![digest, to_i64(from)], |r| {
                    Ok(ActivityBucket { hour_ns: to_u64(r.get(0)?), kind: r.get(1)?, count: to_u64(r.get(2)?) })
                })?
                .collect()
            })
            .map_err(|e| self.err(e))
    }
}
