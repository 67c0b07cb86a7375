//! The audit log: one row per mutating request made to the agent (a change of
//! mode, profile or response, a container handed over by the OCI hook) or
//! refused, with who made it and through which channel. Kept like alerts:
//! bounded by age ([`StoreOptions::audit_retention`]) and count
//! ([`StoreOptions::max_audit`]) by [`Store::prune`].
//!
//! [`StoreOptions::audit_retention`]: crate::StoreOptions::audit_retention
//! [`StoreOptions::max_audit`]: crate::StoreOptions::max_audit

use rusqlite::params;
use serde::Serialize;

use crate::{dur_ns, to_i64, to_u64, Result, Store};

/// One audit record to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAudit {
    pub time_ns: u64,
    /// The peer's uid (Unix socket), or None when unknown (TCP).
    pub uid: Option<u32>,
    /// The peer's pid (Unix socket), or None when unknown (TCP).
    pub pid: Option<u32>,
    /// `unix` or `tcp`.
    pub channel: String,
    /// `promote`, `import`, `reset`, `isolate`, `freeze`, `release`, `hook`…
    pub action: String,
    /// The workload, container or profile the action was about.
    pub target: String,
    /// `ok`, or what went wrong (`refused (403): …`, `failed (404): …`).
    pub result: String,
}

/// A stored audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    pub id: u64,
    pub time_ns: u64,
    pub uid: Option<u32>,
    pub pid: Option<u32>,
    pub channel: String,
    pub action: String,
    pub target: String,
    pub result: String,
}

/// Which records [`Store::audit`] returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only records at or after this time.
    pub since_ns: Option<u64>,
    /// At most this many; 0 means no limit.
    pub limit: usize,
}

impl Store {
    /// Appends one audit record; returns its id. Batched like every write.
    pub fn insert_audit(&mut self, a: &NewAudit) -> Result<u64> {
        self.begin_write()?;
        self.conn
            .prepare_cached(
                "INSERT INTO audit (time_ns, uid, pid, channel, action, target, result)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut s| s.execute(params![to_i64(a.time_ns), a.uid, a.pid, a.channel, a.action, a.target, a.result]))
            .map_err(|e| self.err(e))?;
        let id = to_u64(self.conn.last_insert_rowid());
        self.end_write()?;
        Ok(id)
    }

    /// Audit records matching `q`, newest first.
    pub fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>> {
        let since = to_i64(q.since_ns.unwrap_or(0));
        let limit = if q.limit == 0 { -1 } else { i64::try_from(q.limit).unwrap_or(i64::MAX) };
        self.conn
            .prepare_cached(
                "SELECT id, time_ns, uid, pid, channel, action, target, result FROM audit
                 WHERE time_ns >= ?1 ORDER BY time_ns DESC, id DESC LIMIT ?2",
            )
            .and_then(|mut s| {
                s.query_map(params![since, limit], |r| {
                    Ok(AuditRecord {
                        id: to_u64(r.get(0)?),
                        time_ns: to_u64(r.get(1)?),
                        uid: r.get(2)?,
                        pid: r.get(3)?,
                        channel: r.get(4)?,
                        action: r.get(5)?,
                        target: r.get(6)?,
                        result: r.get(7)?,
                    })
                })?
                .collect()
            })
            .map_err(|e| self.err(e))
    }

    /// Retention of the audit log, inside [`Store::prune`]'s transaction:
    /// returns (expired by age, dropped over the cap).
    pub(crate) fn prune_audit(&mut self, now_ns: u64) -> Result<(u64, u64)> {
        let cut = now_ns.saturating_sub(dur_ns(self.opts.audit_retention));
        let expired = self.exec("DELETE FROM audit WHERE time_ns < ?1", params![to_i64(cut)])?;
        let (min, max): (Option<i64>, Option<i64>) = self
            .conn
            .query_row("SELECT (SELECT min(id) FROM audit), (SELECT max(id) FROM audit)", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?;
        let mut capped = 0;
        if let (Some(min), Some(max)) = (min, max) {
            let cap = to_i64(self.opts.max_audit);
            if max - min + 1 > cap {
                capped =
                    self.exec("DELETE FROM audit WHERE id <= (SELECT id FROM audit ORDER BY id DESC LIMIT 1 OFFSET ?1)", params![cap])?;
            }
        }
        Ok((expired, capped))
    }
}
