//! Alerts seen per workload (the dashboard's workload list) and one alert
//! by its id ("add to profile" from an alert).

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use crate::{alert_row, to_i64, to_u64, Result, Store, StoredAlert, ALERT_COLUMNS};

/// A workload's alerts since some time, repeats included.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AlertCount {
    pub workload: String,
    pub total: u64,
    /// Of which drift (`Drift: …` rules).
    pub drift: u64,
    pub last_ns: u64,
}

impl Store {
    /// Alerts per workload whose last occurrence is at or after `since_ns`
    /// (counting repeats folded into one alert).
    pub fn alert_counts(&self, since_ns: u64) -> Result<Vec<AlertCount>> {
        self.conn
            .prepare_cached(
                "SELECT workload, sum(count), sum(CASE WHEN rule LIKE 'Drift:%' THEN count ELSE 0 END), max(last_time_ns)
                 FROM alerts WHERE last_time_ns >= ?1 GROUP BY workload ORDER BY workload",
            )
            .and_then(|mut s| {
                s.query_map(params![to_i64(since_ns)], |r| {
                    Ok(AlertCount { workload: r.get(0)?, total: to_u64(r.get(1)?), drift: to_u64(r.get(2)?), last_ns: to_u64(r.get(3)?) })
                })?
                .collect()
            })
            .map_err(|e| self.err(e))
    }

    /// The alert with this id, if it is still stored.
    pub fn alert(&self, id: u64) -> Result<Option<StoredAlert>> {
        self.conn
            .prepare_cached(&format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = ?1"))
            .and_then(|mut s| s.query_row(params![to_i64(id)], alert_row).optional())
            .map_err(|e| self.err(e))
    }
}
