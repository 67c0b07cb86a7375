//! Alerts in the store: written as raised, their repeat counts folded in
//! later, read back by time, container and rule.

use crate::*;

/// An alert to store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewAlert {
    /// First occurrence.
    pub time_ns: u64,
    pub rule: String,
    pub priority: String,
    /// Full 64-hex container id.
    pub container_id: String,
    pub container_name: String,
    pub image: String,
    /// The workload key (image digest).
    pub workload: String,
    pub action: String,
    pub enforced: bool,
    pub count: u64,
    /// The full Falco-shaped JSON object, stored as is.
    pub json: String,
}

/// A stored alert: what was stored, its id, and when it last repeated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredAlert {
    pub id: u64,
    /// Last occurrence (equal to `time_ns` until [`Store::update_alert_count`]).
    pub last_time_ns: u64,
    #[serde(flatten)]
    pub alert: NewAlert,
}

/// The columns [`alert_row`] reads, in its order.
pub(crate) const ALERT_COLUMNS: &str =
    "id, time_ns, last_time_ns, rule, priority, container_id, container_name, image, workload, action, enforced, count, json";

/// A row of [`ALERT_COLUMNS`] as a [`StoredAlert`].
pub(crate) fn alert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredAlert> {
    Ok(StoredAlert {
        id: to_u64(r.get(0)?),
        last_time_ns: to_u64(r.get(2)?),
        alert: NewAlert {
            time_ns: to_u64(r.get(1)?),
            rule: r.get(3)?,
            priority: r.get(4)?,
            container_id: r.get(5)?,
            container_name: r.get(6)?,
            image: r.get(7)?,
            workload: r.get(8)?,
            action: r.get(9)?,
            enforced: r.get(10)?,
            count: to_u64(r.get(11)?),
            json: r.get(12)?,
        },
    })
}

/// Which alerts [`Store::alerts`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertQuery {
    /// Only alerts whose last occurrence is at or after this time.
    pub since_ns: Option<u64>,
    /// A container name (exact) or a container id prefix.
    pub container: Option<String>,
    /// A rule name (exact).
    pub rule: Option<String>,
    /// At most this many; 0 means no limit.
    pub limit: usize,
}

impl Store {
    /// Stores an alert (in the open batch) and returns its id.
    pub fn insert_alert(&mut self, a: &NewAlert) -> Result<u64> {
        self.begin_write()?;
        self.conn
            .prepare_cached(
                "INSERT INTO alerts (time_ns, last_time_ns, rule, priority, container_id, container_name, image,
                                     workload, action, enforced, count, json)
                 VALUES (?1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    to_i64(a.time_ns),
                    a.rule,
                    a.priority,
                    a.container_id,
                    a.container_name,
                    a.image,
                    a.workload,
                    a.action,
                    a.enforced,
                    to_i64(a.count),
                    a.json,
                ])
            })
            .map_err(|e| self.err(e))?;
        let id = to_u64(self.conn.last_insert_rowid());
        self.end_write()?;
        Ok(id)
    }

    /// Records that a deduplicated alert happened `count` times in all, the last at
    /// `last_time_ns`. Returns false when the alert no longer exists (pruned).
    pub fn update_alert_count(&mut self, id: u64, count: u64, last_time_ns: u64) -> Result<bool> {
        self.begin_write()?;
        let n = self
            .conn
            .prepare_cached("UPDATE alerts SET count = ?2, last_time_ns = max(last_time_ns, ?3) WHERE id = ?1")
            .and_then(|mut s| s.execute(params![to_i64(id), to_i64(count), to_i64(last_time_ns)]))
            .map_err(|e| self.err(e))?;
        self.end_write()?;
        Ok(n > 0)
    }

    /// Alerts matching `q`, newest (by last occurrence) first.
    pub fn alerts(&self, q: &AlertQuery) -> Result<Vec<StoredAlert>> {
        let mut sql = format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE 1");
        let mut args: Vec<Value> = Vec::new();
        if let Some(since) = q.since_ns {
            args.push(Value::Integer(to_i64(since)));
            sql.push_str(&format!(" AND last_time_ns >= ?{}", args.len()));
        }
        if let Some(c) = q.container.as_deref().filter(|c| !c.is_empty()) {
            args.push(Value::Text(c.to_string()));
            let n = args.len();
            sql.push_str(&format!(" AND (container_name = ?{n} OR substr(container_id, 1, length(?{n})) = ?{n})"));
        }
        if let Some(rule) = q.rule.as_deref() {
            args.push(Value::Text(rule.to_string()));
            sql.push_str(&format!(" AND rule = ?{}", args.len()));
        }
        args.push(Value::Integer(if q.limit == 0 { -1 } else { i64::try_from(q.limit).unwrap_or(i64::MAX) }));
        sql.push_str(&format!(" ORDER BY last_time_ns DESC, id DESC LIMIT ?{}", args.len()));
        self.conn
            .prepare_cached(&sql)
            .and_then(|mut s| s.query_map(rusqlite::params_from_iter(args), alert_row)?.collect())
            .map_err(|e| self.err(e))
    }

    /// Alerts whose id is above `after`, in the order they were stored (ids
    /// only grow), at most `limit`: what a forwarder sends in order,
    /// remembering the last id it delivered.
    pub fn alerts_after(&self, after: u64, limit: usize) -> Result<Vec<StoredAlert>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.conn
            .prepare_cached(&format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id > ?1 ORDER BY id LIMIT ?2"))
            .and_then(|mut s| s.query_map(params![to_i64(after), limit], alert_row)?.collect())
            .map_err(|e| self.err(e))
    }

    /// The highest alert id stored, 0 when there is none. Ids are not
    /// reserved: once every alert was pruned (or the store was replaced)
    /// they start again from 1, which a forwarder sees as this going below
    /// its cursor.
    pub fn last_alert_id(&self) -> Result<u64> {
        self.conn.query_row("SELECT coalesce(max(id), 0) FROM alerts", [], |r| r.get::<_, i64>(0)).map(to_u64).map_err(|e| self.err(e))
    }

    /// Number of stored alerts.
    pub fn alert_count(&self) -> Result<u64> {
        self.conn.query_row("SELECT count(*) FROM alerts", [], |r| r.get::<_, i64>(0)).map(to_u64).map_err(|e| self.err(e))
    }
}
